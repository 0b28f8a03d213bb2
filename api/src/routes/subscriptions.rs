use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::post;
use connectors::egress::check_webhook_endpoint;
use domain::ids;
use domain::subscription::{CreateWebhookSubscription, DeliverySettings};

use crate::AppState;
use crate::bodies::{CreateSubscriptionRequest, SubscriptionCreatedResponse};
use crate::extract::{Authorized, JsonBody, SubscriptionsWrite};
use crate::problem::Problem;
use crate::respond::{Accepted, run_command};
use crate::routes::context_of;

pub fn router() -> Router<AppState> {
    Router::new().route("/webhooks/subscriptions", post(create))
}

async fn create(
    caller: Authorized<SubscriptionsWrite>,
    State(app): State<AppState>,
    headers: HeaderMap,
    body: JsonBody<CreateSubscriptionRequest>,
) -> Result<Response, Problem> {
    let request = body.value;
    caller.check_tenant(request.tenant_id.as_deref())?;
    if request.endpoint_url.len() > 2048 {
        return Err(Problem::invalid_field("endpointUrl", "must be at most 2048 characters"));
    }
    // SSRF: https only (plain http for allow-listed hosts), no private, loopback, link-local,
    // CGNAT, multicast or metadata address unless allow-listed. Names are checked again when
    // each delivery connects.
    check_webhook_endpoint(&request.endpoint_url, &app.settings.webhook_egress_allow)
        .map_err(|reason| Problem::invalid_field("endpointUrl", reason))?;
    let delivery = DeliverySettings {
        max_in_flight: request.max_in_flight.unwrap_or(DeliverySettings::default().max_in_flight),
        rate_limit_per_second: request.rate_limit_per_second,
        strict_ordering: request.strict_ordering,
    };
    let ctx = context_of(&caller.0);
    run_command(
        &app,
        &ctx.tenant_id,
        "create-subscription",
        &headers,
        &body.raw,
        ids::SUBSCRIPTION,
        |subscription_id| async {
            let command = CreateWebhookSubscription {
                subscription_id,
                tenant_id: ctx.tenant_id.clone(),
                project_id: request.project_id,
                event_type: request.event_type,
                endpoint_url: request.endpoint_url,
                signing_secret_ref: request.signing_secret_ref,
                active: request.active,
                created_at: app.commands.now(),
                delivery,
            };
            let outcome = app.commands.create_subscription(&ctx, command).await?;
            let e = outcome.created;
            let location = format!("/webhooks/subscriptions/{}", e.subscription_id);
            let response = SubscriptionCreatedResponse {
                subscription_id: e.subscription_id,
                status: if e.active { "Active" } else { "Inactive" }.into(),
                event_type: e.event_type,
                created_at: e.created_at,
            };
            Ok(Accepted::new(StatusCode::CREATED, Some(location), &response, outcome.last_position))
        },
    )
    .await
}
