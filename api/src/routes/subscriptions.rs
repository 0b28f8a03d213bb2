use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use connectors::egress::check_webhook_endpoint;
use domain::ids;
use domain::subscription::{CreateWebhookSubscription, DeliverySettings};
use store::SecretUse;

use crate::Shared;
use crate::bodies::{
    CreateSubscriptionRequest, ENDPOINT_URL_MAX, SubscriptionCreatedResponse, SubscriptionResponse, outbound_url_error,
};
use crate::extract::{Authorized, JsonBody};
use crate::operations as op;
use crate::problem::Problem;
use crate::respond::{Accepted, ok_json, run_command};
use crate::routes::{context_of, require_tenants_secret};

pub fn router() -> Router<Shared> {
    Router::new()
        .route("/webhooks/subscriptions", post(create))
        .route("/webhooks/subscriptions/{subscription_id}", get(get_subscription))
}

async fn create(
    caller: Authorized<op::CreateSubscription>,
    State(app): State<Shared>,
    headers: HeaderMap,
    body: JsonBody<CreateSubscriptionRequest>,
) -> Result<Response, Problem> {
    let request = body.value;
    caller.check_tenant(request.tenant_id.as_deref())?;
    if request.endpoint_url.chars().count() > ENDPOINT_URL_MAX {
        return Err(Problem::invalid_field("endpointUrl", format!("must be at most {ENDPOINT_URL_MAX} characters")));
    }
    // SSRF: https only (plain http for allow-listed hosts), no private, loopback, link-local,
    // CGNAT, multicast or metadata address unless allow-listed. Names are checked again when
    // each delivery connects.
    let allow = &app.settings.webhook_egress_allow;
    check_webhook_endpoint(&request.endpoint_url, allow)
        .map_err(|reason| Problem::invalid_field("endpointUrl", reason))?;
    if let Some(reason) = outbound_url_error(&request.endpoint_url, allow) {
        return Err(Problem::invalid_field("endpointUrl", reason));
    }
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
            require_tenants_secret(
                &app,
                &ctx.tenant_id,
                "signingSecretRef",
                &request.signing_secret_ref,
                SecretUse::Send,
            )
            .await?;
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

/// The subscription a creation's `Location` names, in the caller's tenant only (another
/// tenant's is 404). The read model holds the signing secret's `kv://` ref, never its value,
/// and only the ref is answered.
async fn get_subscription(
    caller: Authorized<op::GetSubscription>,
    State(app): State<Shared>,
    Path(subscription_id): Path<String>,
) -> Result<Response, Problem> {
    let view = app
        .read_models
        .subscription(&caller.0.tenant_id, &subscription_id)
        .await?
        .ok_or_else(|| Problem::not_found(format!("subscription {subscription_id} not found")))?;
    Ok(ok_json(&SubscriptionResponse {
        subscription_id: view.subscription_id,
        tenant_id: view.tenant_id,
        project_id: view.project_id,
        event_type: view.event_type,
        endpoint_url: view.endpoint_url,
        signing_secret_ref: view.signing_secret_ref,
        active: view.active,
        status: view.status,
        created_at: view.created_at,
        max_in_flight: view.delivery.max_in_flight,
        rate_limit_per_second: view.delivery.rate_limit_per_second,
        strict_ordering: view.delivery.strict_ordering,
        deactivation_reason: view.deactivation_reason,
        deactivated_at: view.deactivated_at,
    }))
}
