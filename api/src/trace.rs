//! Every request runs under a trace id: taken from an incoming W3C `traceparent`, or new.
//! It is answered in `X-Trace-Id` on every response and in the bodies the spec shows it in.

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

tokio::task_local! {
    static TRACE_ID: String;
}

pub const TRACE_ID_HEADER: &str = "x-trace-id";

/// The trace id of the request being served (a fresh one outside a request).
pub fn current_trace_id() -> String {
    TRACE_ID.try_with(Clone::clone).unwrap_or_else(|_| format_trace_id(&new_w3c_trace_id()))
}

/// Our trace ids are the W3C trace id with the spec's `trace-` prefix.
pub fn format_trace_id(w3c: &str) -> String {
    format!("trace-{w3c}")
}

fn new_w3c_trace_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// The trace id of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`), if it is valid.
pub fn trace_id_from_traceparent(value: &str) -> Option<String> {
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
    valid.then(|| trace.to_string())
}

/// Middleware: sets the trace id for the request's task and span, and answers it in a header.
pub async fn with_trace_id(request: Request, next: Next) -> Response {
    let w3c = request
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(trace_id_from_traceparent)
        .unwrap_or_else(new_w3c_trace_id);
    let trace_id = format_trace_id(&w3c);
    let span =
        tracing::info_span!("request", trace_id = %trace_id, method = %request.method(), path = %request.uri().path());
    let mut response = TRACE_ID.scope(trace_id.clone(), next.run(request).instrument(span)).await;
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
