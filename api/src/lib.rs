//! The REST surface: seven public endpoints, authentication, versioning, problem documents.
//!
//! - [`router`] assembles everything; [`AppState`] is what handlers share.
//! - [`routes`]: one router per resource. [`bodies`]: the request and response bodies.
//! - [`auth`]: bearer tokens (JWKS or a dev secret). [`extract`]: checked JSON and scopes.
//! - [`trace`], [`versioning`], [`problem`]: cross-cutting layers every response goes through.
//! - [`load`]: the count of requests in flight, which background work reads to give way.
//! - [`openapi`]: the OpenAPI 3.1 document and the bodies' JSON Schemas.
#![forbid(unsafe_code)]
// `Problem` is the error answer itself, built once per failed request: boxing it would only
// add an allocation to every error path.
#![allow(clippy::result_large_err)]

pub mod auth;
pub mod bodies;
pub mod extract;
pub mod load;
pub mod metrics;
pub mod openapi;
pub mod operations;
pub mod problem;
pub mod readiness;
pub mod respond;
pub mod routes;
pub mod server;
pub mod strict;
pub mod tls;
pub mod trace;
pub mod versioning;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use commands::Commands;
use commands::idempotency::Idempotency;
use connectors::key_sets::ProviderKeySets;
use projections::{Projections, ReadModels};
use serde_json::json;
use store::EventStore;
use tower_http::catch_panic::CatchPanicLayer;

use crate::auth::Authenticator;
use crate::problem::{PROBLEM_JSON, Problem};

/// Limits and timeouts of the HTTP surface.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// Larger request bodies are refused with 413.
    pub max_body_bytes: usize,
    /// How long a POST waits for the read models to show its effect before answering.
    pub read_your_writes_timeout: Duration,
    /// Inbound webhooks: how far a signed timestamp may be from now, either way.
    pub webhook_timestamp_tolerance: Duration,
    /// Inbound webhooks: how long after a secret rotation the previous secret still verifies.
    pub webhook_secret_grace: Duration,
    /// Inbound webhooks: the normalization rule table, loaded at start.
    pub normalization_rules: Arc<connectors::normalization::RuleTable>,
    /// What `GET /metrics` renders; without it the endpoint answers 404.
    pub metrics: Option<metrics::Exposition>,
    /// Outbound webhooks: hosts and addresses endpoints may use although not public.
    pub webhook_egress_allow: Arc<connectors::egress::EgressAllowList>,
    /// How far behind the store the read models may be while `/readyz` still answers 200.
    pub readiness: readiness::ReadinessLimits,
    /// Counts the requests being answered; background work reads it to give way.
    pub in_flight: load::InFlight,
}

impl Default for ApiSettings {
    fn default() -> Self {
        Self {
            max_body_bytes: 256 * 1024,
            read_your_writes_timeout: Duration::from_secs(5),
            webhook_timestamp_tolerance: Duration::from_secs(300),
            webhook_secret_grace: Duration::from_secs(24 * 3600),
            normalization_rules: Arc::new(connectors::normalization::RuleTable::default_rules()),
            metrics: None,
            webhook_egress_allow: Arc::default(),
            readiness: readiness::ReadinessLimits::default(),
            in_flight: load::InFlight::default(),
        }
    }
}

/// What every handler shares. The router holds it behind one `Arc` ([`Shared`]).
#[derive(Clone)]
pub struct AppState {
    pub commands: Commands,
    pub read_models: ReadModels,
    pub projections: Projections,
    pub auth: Authenticator,
    pub vault: store::Vaults,
    pub idempotency: Idempotency,
    pub store: Arc<dyn EventStore>,
    /// The providers' key sets JWS deliveries are verified with.
    pub provider_key_sets: Arc<ProviderKeySets>,
    pub settings: ApiSettings,
}

/// The router's state: [`AppState`] behind one `Arc`, so each extractor of each request clones a
/// pointer, not the two dozen `Arc`s inside (cloning and dropping those was 9% of the engine's
/// samples under `GET` load).
pub type Shared = Arc<AppState>;

/// The whole HTTP surface.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .merge(routes::connections::router())
        .merge(routes::providers::router())
        .merge(routes::subscriptions::router())
        .merge(routes::deliveries::router())
        .merge(routes::runs::router())
        .merge(routes::credentials::router())
        .merge(routes::audit::router())
        .layer(middleware::from_fn(versioning::negotiate_version));
    Router::new()
        .merge(api)
        .route("/healthz", get(healthz))
        .route("/readyz", get(readiness::readyz))
        .route("/openapi.json", get(openapi_json))
        .route("/metrics", get(metrics::metrics_endpoint))
        .fallback(unknown_route)
        .layer(DefaultBodyLimit::max(state.settings.max_body_bytes))
        .layer(middleware::from_fn(problem_for_bare_errors))
        .layer(CatchPanicLayer::custom(|_| Problem::internal(&"a handler panicked").into_response()))
        .layer(middleware::from_fn_with_state(state.settings.max_body_bytes, strict::refuse_ambiguous_requests))
        .layer(middleware::from_fn(metrics::record_http))
        .layer(middleware::from_fn(trace::with_trace_id))
        .layer(middleware::from_fn_with_state(state.settings.in_flight.clone(), load::count_in_flight))
        .with_state(Arc::new(state))
}

async fn healthz() -> Response {
    axum::Json(json!({ "status": "alive" })).into_response()
}

async fn openapi_json() -> Response {
    axum::Json(openapi::document()).into_response()
}

async fn unknown_route(request: Request) -> Problem {
    Problem::not_found(format!("no route for {} {}", request.method(), request.uri().path()))
}

/// Errors produced below our handlers (405 from the router, 413 from a limit) come with an
/// empty or plain body; answer them as problem documents too, keeping their headers (`Allow`).
async fn problem_for_bare_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_problem =
        response.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(PROBLEM_JSON.as_bytes()));
    if !(status.is_client_error() || status.is_server_error()) || is_problem {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    // Keep what the layer said (e.g. which path parameter was bad), within reason.
    let said = axum::body::to_bytes(body, 1024).await.ok().map(|b| String::from_utf8_lossy(&b).trim().to_string());
    let detail = |fallback: &str| said.clone().filter(|s| !s.is_empty()).unwrap_or_else(|| fallback.to_string());
    let problem = match status {
        StatusCode::METHOD_NOT_ALLOWED => Problem::new(
            status,
            "method-not-allowed",
            "Method not allowed",
            detail("this route does not accept that method"),
        ),
        StatusCode::PAYLOAD_TOO_LARGE => {
            Problem::new(status, "payload-too-large", "Payload too large", detail("the body is too large"))
        }
        s if s.is_server_error() => Problem::internal(&format!("bare {s} from a layer: {}", detail(""))),
        s => Problem::new(s, "error", s.canonical_reason().unwrap_or("Error"), detail(&s.to_string())),
    };
    let fresh = problem.into_response();
    parts.headers.insert(header::CONTENT_TYPE, fresh.headers()[header::CONTENT_TYPE].clone());
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::new(fresh.into_body()))
}
