//! Every request runs under a trace id: taken from an incoming W3C `traceparent`, or new.
//! It is answered in `X-Trace-Id` on every response and in the bodies the spec shows it in.
//!
//! The request's span (`request`) carries it as the `trace_id` field, so every log line of the
//! request names it. When the binary exports traces over OpenTelemetry, the span is the
//! server span of the trace: its parent is the caller's `traceparent`, and without one the
//! trace id is the one OpenTelemetry gave the span, so logs, responses and exported traces
//! agree on one id.

use axum::extract::{MatchedPath, Request};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use opentelemetry::trace::{SpanContext, SpanId, Status, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

tokio::task_local! {
    static TRACE_ID: String;
}

pub const TRACE_ID_HEADER: &str = "x-trace-id";
/// The name of the span every request runs in (log formatters and filters look for it).
pub const REQUEST_SPAN: &str = "request";

/// The trace id of the request being served (a fresh one outside a request).
pub fn current_trace_id() -> String {
    TRACE_ID.try_with(Clone::clone).unwrap_or_else(|_| format_trace_id(&new_w3c_trace_id()))
}

/// The trace id of the request being served, if this task serves one.
pub fn request_trace_id() -> Option<String> {
    TRACE_ID.try_with(Clone::clone).ok()
}

/// Our trace ids are the W3C trace id with the spec's `trace-` prefix.
pub fn format_trace_id(w3c: &str) -> String {
    format!("trace-{w3c}")
}

fn new_w3c_trace_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// The parts of a valid W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: String,
    pub parent_id: String,
    pub flags: u8,
}

/// Parses a W3C `traceparent`; `None` when it is not valid (it is then ignored).
pub fn parse_traceparent(value: &str) -> Option<TraceParent> {
    let mut parts = value.trim().split('-');
    let (version, trace, parent, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let valid = hex(version, 2)
        && version != "ff"
        && hex(trace, 32)
        && trace.bytes().any(|b| b != b'0')
        && hex(parent, 16)
        && parent.bytes().any(|b| b != b'0')
        && hex(flags, 2)
        && (version != "00" || parts.next().is_none());
    valid.then(|| TraceParent {
        trace_id: trace.to_string(),
        parent_id: parent.to_string(),
        flags: u8::from_str_radix(flags, 16).unwrap_or(0),
    })
}

/// The trace id of a W3C `traceparent`, if it is valid.
pub fn trace_id_from_traceparent(value: &str) -> Option<String> {
    parse_traceparent(value).map(|parent| parent.trace_id)
}

/// The caller's span as an OpenTelemetry parent.
fn remote_parent(parent: &TraceParent) -> Option<opentelemetry::Context> {
    let trace_id = TraceId::from_hex(&parent.trace_id).ok()?;
    let span_id = SpanId::from_hex(&parent.parent_id).ok()?;
    let context = SpanContext::new(trace_id, span_id, TraceFlags::new(parent.flags), true, TraceState::default());
    Some(opentelemetry::Context::new().with_remote_span_context(context))
}

/// Middleware: runs the request in its span and task-local trace id, answers the id in a
/// header, and logs the request's outcome (at debug: `/metrics` counts them all anyway).
pub async fn with_trace_id(request: Request, next: Next) -> Response {
    let parent = request.headers().get("traceparent").and_then(|v| v.to_str().ok()).and_then(parse_traceparent);
    // The route template, never the raw path, names the span (ids stay out of span names).
    let route = request.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned());
    let method = request.method().clone();
    let span = tracing::info_span!(
        REQUEST_SPAN,
        trace_id = tracing::field::Empty,
        method = %method,
        path = %request.uri().path(),
        "otel.name" = %format!("{method} {}", route.as_deref().unwrap_or("unmatched")),
        "otel.kind" = "server",
    );
    if let Some(context) = parent.as_ref().and_then(remote_parent) {
        // Fails only when no OpenTelemetry layer is installed: nothing to parent then.
        let _ = span.set_parent(context);
    }
    // With OpenTelemetry on, the span's trace id (the caller's, or a new one); else ours.
    let exported = span.context().span().span_context().trace_id();
    let w3c = if exported == TraceId::INVALID {
        parent.map_or_else(new_w3c_trace_id, |parent| parent.trace_id)
    } else {
        format!("{exported:032x}")
    };
    let trace_id = format_trace_id(&w3c);
    span.record("trace_id", trace_id.as_str());
    // OpenTelemetry's semantic attributes go to the exported span only (not to every log line).
    span.set_attribute("http.request.method", method.to_string());
    if let Some(route) = route {
        span.set_attribute("http.route", route);
    }
    let mut response = TRACE_ID.scope(trace_id.clone(), next.run(request).instrument(span.clone())).await;
    let status = response.status();
    span.set_attribute("http.response.status_code", i64::from(status.as_u16()));
    if status.is_server_error() {
        span.set_status(Status::error(status.to_string()));
    }
    span.in_scope(|| tracing::debug!(status = status.as_u16(), "request answered"));
    if let Ok(v) = HeaderValue::from_str(&trace_id) {
        response.headers_mut().insert(TRACE_ID_HEADER, v);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_traceparents_give_their_trace_id() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(trace_id_from_traceparent(tp).as_deref(), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
    }

    #[test]
    fn a_traceparent_gives_its_parent_span_and_flags() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let parent = parse_traceparent(tp).unwrap();
        assert_eq!(parent.parent_id, "00f067aa0ba902b7");
        assert_eq!(parent.flags, 1);
        let context = remote_parent(&parent).unwrap();
        assert_eq!(format!("{:032x}", context.span().span_context().trace_id()), parent.trace_id);
    }

    #[test]
    fn invalid_traceparents_are_ignored() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert_eq!(trace_id_from_traceparent(bad), None, "{bad}");
        }
    }
}
