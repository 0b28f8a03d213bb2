//! Prometheus metrics of the HTTP surface: a layer that counts and times every request by its
//! route template and status, and `GET /metrics`, which measures the lags at scrape time and
//! renders the process's recorder.
//!
//! The metrics go through the `metrics` facade; the binary installs the Prometheus recorder and
//! hands its renderer over in [`crate::ApiSettings::metrics`]. Without one, `/metrics` is 404.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use projections::projectors::ALL;

use crate::problem::Problem;
use crate::{AppState, Shared};

/// Requests answered, by `method`, `route` (the route template) and `status`.
pub const HTTP_REQUESTS: &str = "http_requests_total";
/// Time from the request's arrival to its response head, by `method`, `route` and `status`.
pub const HTTP_REQUEST_DURATION: &str = "http_request_duration_seconds";
/// Events a read model has not applied yet (store head minus its checkpoint), by `projection`.
pub const PROJECTION_LAG: &str = "projection_lag_events";
/// The global position of the newest stored event.
pub const STORE_HEAD: &str = "event_store_head_position";
/// The `route` label of requests no route matched: raw paths are unbounded and may carry ids.
pub const UNMATCHED_ROUTE: &str = "unmatched";
/// The content type of the Prometheus text exposition format.
pub const EXPOSITION_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Renders the exposition: the binary's Prometheus recorder, after it measured what it
/// measures at scrape time (e.g. the relay's lag).
#[async_trait]
pub trait MetricsExposition: Send + Sync {
    async fn render(&self) -> String;
}

/// The renderer `/metrics` answers with (in [`crate::ApiSettings::metrics`]).
#[derive(Clone)]
pub struct Exposition(pub Arc<dyn MetricsExposition>);

impl std::fmt::Debug for Exposition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Exposition(..)")
    }
}

/// Middleware: counts and times the request under its route template (never the raw path).
/// Runs inside the router, where the matched route is known, and outside the panic catcher,
/// so a panic is counted as the 500 it is answered with.
pub async fn record_http(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| UNMATCHED_ROUTE.to_owned(), |path| path.as_str().to_owned());
    let method = method_label(request.method());
    let started = Instant::now();
    let response = next.run(request).await;
    let labels = [("method", method.to_owned()), ("route", route), ("status", response.status().as_str().to_owned())];
    metrics::counter!(HTTP_REQUESTS, &labels).increment(1);
    metrics::histogram!(HTTP_REQUEST_DURATION, &labels).record(started.elapsed().as_secs_f64());
    response
}

/// The method as a label: the standard ones, anything else as `other` (methods are free text).
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// `GET /metrics`: the Prometheus text exposition. Unauthenticated like every scrape target:
/// it holds counts and positions, never tenants' data; keep it off public networks.
pub async fn metrics_endpoint(State(app): State<Shared>) -> Response {
    let Some(exposition) = app.settings.metrics.clone() else {
        return Problem::not_found("metrics are not enabled in this process").into_response();
    };
    measure_projection_lag(&app).await;
    let mut response = exposition.0.render().await.into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(EXPOSITION_CONTENT_TYPE));
    response
}

/// Sets the store head and each projection's lag behind it. A failure to read either leaves
/// the previous values (a scrape must not fail because the store is busy) and is logged.
async fn measure_projection_lag(app: &AppState) {
    let head = match app.store.head_position().await {
        Ok(head) => head,
        Err(error) => {
            tracing::warn!(%error, "metrics: cannot read the store head");
            return;
        }
    };
    metrics::gauge!(STORE_HEAD).set(head as f64);
    let checkpoints = match app.read_models.checkpoints().await {
        Ok(checkpoints) => checkpoints,
        Err(error) => {
            tracing::warn!(%error, "metrics: cannot read the projections' checkpoints");
            return;
        }
    };
    // Every projection is reported, including one that has no checkpoint yet (it is at 0).
    for projection in ALL {
        let position = checkpoints.iter().find(|(name, _)| name == projection.name).map_or(0, |(_, p)| *p);
        metrics::gauge!(PROJECTION_LAG, "projection" => projection.name).set(head.saturating_sub(position) as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_methods_share_one_label() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::from_bytes(b"BREW").unwrap()), "other");
    }
}
