//! Path-stable, header-versioned API: `Accept: application/vnd.connectsoft.integration.v1+json`.
//! `application/json`, wildcards or no `Accept` get the current major; other versions get 406.

use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::problem::Problem;

pub const MEDIA_TYPE_V1: &str = "application/vnd.connectsoft.integration.v1+json";

/// Whether an `Accept` header value admits the v1 media type.
pub fn accepts_v1(accept: &str) -> bool {
    accept.split(',').any(|range| {
        let mut params = range.split(';');
        let media = params.next().unwrap_or("").trim().to_ascii_lowercase();
        let refused = params.any(|p| {
            let p = p.trim().replace(' ', "");
            p.strip_prefix("q=").is_some_and(|q| q.parse::<f32>().is_ok_and(|q| q <= 0.0))
        });
        !refused && matches!(media.as_str(), MEDIA_TYPE_V1 | "application/json" | "application/*" | "*/*")
    })
}

/// Middleware: refuses unsupported versions and labels JSON answers with the versioned type.
pub async fn negotiate_version(request: Request, next: Next) -> Response {
    let accept =
        request.headers().get_all(header::ACCEPT).iter().filter_map(|v| v.to_str().ok()).collect::<Vec<_>>().join(",");
    if !accept.trim().is_empty() && !accepts_v1(&accept) {
        return Problem::new(
            StatusCode::NOT_ACCEPTABLE,
            "not-acceptable",
            "Not acceptable",
            format!("this server speaks {MEDIA_TYPE_V1} (or application/json); Accept was {accept}"),
        )
        .into_response();
    }
    let mut response = next.run(request).await;
    let is_plain_json =
        response.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if is_plain_json {
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(MEDIA_TYPE_V1));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_json_and_wildcards_are_accepted() {
        for ok in [
            MEDIA_TYPE_V1,
            "application/json",
            "*/*",
            "application/*",
            "text/html, application/json;q=0.5",
            "application/vnd.connectsoft.integration.v1+json; charset=utf-8",
        ] {
            assert!(accepts_v1(ok), "{ok}");
        }
    }

    #[test]
    fn other_versions_and_types_are_not() {
        for bad in [
            "application/vnd.connectsoft.integration.v2+json",
            "application/vnd.connectsoft.integration.v0+json",
            "text/html",
            "application/json;q=0",
        ] {
            assert!(!accepts_v1(bad), "{bad}");
        }
    }
}
