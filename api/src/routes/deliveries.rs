//! `POST /webhooks/deliveries`: authenticated by the provider's signature over the raw body,
//! not by a bearer token. Fail closed: anything unverifiable is refused and nothing is stored.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use axum::routing::post;
use commands::CommandContext;
use connectors::github;
use domain::delivery::AcceptDelivery;
use domain::secret_ref::SecretRef;
use domain::{Actor, ids};
use serde::Deserialize;

use crate::AppState;
use crate::bodies::{DeliveryAcceptedResponse, InboundDeliveryRequest, require_text};
use crate::extract::{DeliveriesIngest, Scope, authenticate_header, json_bytes, parse_json};
use crate::problem::Problem;
use crate::respond::{Accepted, run_command};
use crate::trace::current_trace_id;

pub const PROVIDER_HEADER: &str = "x-cs-provider";
pub const CONNECTION_HEADER: &str = "x-cs-connection";

pub fn router() -> Router<AppState> {
    Router::new().route("/webhooks/deliveries", post(ingest))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Target {
    connection_id: Option<String>,
}

fn rejected(detail: &str) -> Problem {
    Problem::new(StatusCode::UNAUTHORIZED, "signature-rejected", "Unauthorized", detail)
        .with_header(header::WWW_AUTHENTICATE, "HMAC realm=\"webhooks\"")
}

async fn ingest(
    State(app): State<AppState>,
    Query(target): Query<Target>,
    headers: HeaderMap,
    request: Request,
) -> Result<Response, Problem> {
    let header_text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    let provider =
        header_text(PROVIDER_HEADER).ok_or_else(|| Problem::bad_request("the X-CS-Provider header is required"))?;
    if provider != github::PROVIDER {
        return Err(Problem::bad_request(format!("provider {provider} is not supported for inbound webhooks")));
    }
    let connection_id = target
        .connection_id
        .or_else(|| header_text(CONNECTION_HEADER).map(String::from))
        .ok_or_else(|| Problem::bad_request("name the target connection with ?connectionId= or X-CS-Connection"))?;
    // A bearer token is optional here, but one that is sent must be valid and scoped.
    let bearer = match headers.get(header::AUTHORIZATION) {
        Some(h) => Some(authenticate_header(&app, Some(h), DeliveriesIngest::NAME).await?),
        None => None,
    };

    // Unknown connection, foreign provider, no secret: all the same 401, so nothing leaks.
    let connection =
        app.read_models.connection_by_id(&connection_id).await?.ok_or_else(|| rejected("unknown connection"))?;
    if connection.provider_id != ids::provider_id(provider) {
        return Err(rejected("the connection does not belong to this provider"));
    }
    if bearer.as_ref().is_some_and(|p| p.tenant_id != connection.tenant_id) {
        return Err(rejected("unknown connection"));
    }
    let secret_ref = connection
        .configuration
        .get("webhookSecretRef")
        .and_then(|v| v.as_str())
        .and_then(|r| SecretRef::parse(r).ok())
        .ok_or_else(|| rejected("the connection has no webhook secret"))?;
    let raw = json_bytes(request, &()).await?;
    let secret = app.vault.get(&secret_ref).await.map_err(|e| {
        tracing::warn!(connection_id, error = %e, "webhook secret unavailable");
        rejected("the connection's webhook secret is unavailable")
    })?;
    // Verified over the raw bytes, before anything in the body is read.
    github::verify_signature(&secret.value, &raw, header_text(github::SIGNATURE_HEADER))
        .map_err(|e| rejected(&e.to_string()))?;
    let request: InboundDeliveryRequest = parse_json(&raw)?;
    let mut errors = Vec::new();
    require_text(&mut errors, "providerDeliveryId", &request.provider_delivery_id, 256);
    require_text(&mut errors, "eventName", &request.event_name, 128);
    if !errors.is_empty() {
        return Err(Problem::invalid(errors));
    }
    let normalized_event_type = github::normalize(&request.event_name, &request.payload);
    let actor = Actor { subject: format!("webhook:{provider}"), client_id: None };
    let ctx = CommandContext::new(connection.tenant_id.clone(), current_trace_id(), actor);
    run_command(&app, &ctx.tenant_id, "ingest-delivery", &headers, &raw, ids::DELIVERY, |delivery_id| async {
        let command = AcceptDelivery {
            delivery_id,
            tenant_id: ctx.tenant_id.clone(),
            connection_id: connection.connection_id.clone(),
            provider: provider.to_string(),
            provider_delivery_id: request.provider_delivery_id,
            event_name: request.event_name,
            normalized_event_type,
            payload_digest: payload_digest(&raw),
            received_at: app.commands.now(),
        };
        let outcome = app.commands.accept_delivery(&ctx, command).await?;
        let e = outcome.accepted;
        let response = DeliveryAcceptedResponse {
            delivery_id: e.delivery_id,
            status: "Accepted".into(),
            normalized_event_type: e.normalized_event_type,
            trace_id: ctx.trace_id.clone(),
        };
        Ok(Accepted::new(StatusCode::ACCEPTED, None, &response, outcome.last_position))
    })
    .await
}

fn payload_digest(raw: &Bytes) -> String {
    format!("sha256:{}", hex::encode(ring::digest::digest(&ring::digest::SHA256, raw)))
}
