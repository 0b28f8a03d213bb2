//! Requests read one way only: what a lenient parser would settle by picking one of two
//! values (the first `Authorization` header, the last of a repeated query parameter) is refused
//! instead, and a body declared larger than the limit is refused before any of it is read or
//! any token is checked.

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::problem::Problem;

/// Query parameters that may be given more than once: each adds values (the audit API's
/// `type`). Any other parameter named twice is refused.
const REPEATABLE_QUERY_PARAMETERS: [&str; 1] = ["type"];

/// Refuses, before anything else runs: a second `Authorization` header (400), a query parameter
/// named twice (400), a `Content-Length` over `max_body_bytes` (413).
pub async fn refuse_ambiguous_requests(State(max_body_bytes): State<usize>, request: Request, next: Next) -> Response {
    match ambiguity(&request, max_body_bytes) {
        // Refused before its body is read: the connection cannot carry another request, and
        // the client must know not to reuse it.
        Some(problem) => problem.with_header(header::CONNECTION, "close").into_response(),
        None => next.run(request).await,
    }
}

fn ambiguity(request: &Request, max_body_bytes: usize) -> Option<Problem> {
    let headers = request.headers();
    if headers.get_all(header::AUTHORIZATION).iter().nth(1).is_some() {
        return Some(Problem::bad_request("a request carries at most one Authorization header"));
    }
    let declared = headers.get_all(header::CONTENT_LENGTH).iter().map(|v| v.to_str().ok()?.parse::<u64>().ok());
    for length in declared {
        match length {
            Some(n) if n > max_body_bytes as u64 => {
                return Some(Problem::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload-too-large",
                    "Payload too large",
                    format!("the body is larger than {max_body_bytes} bytes"),
                ));
            }
            Some(_) => {}
            None => return Some(Problem::bad_request("Content-Length must be a number of bytes")),
        }
    }
    let query = request.uri().query().unwrap_or_default();
    let mut seen: Vec<std::borrow::Cow<'_, str>> = Vec::new();
    for (name, _) in form_urlencoded::parse(query.as_bytes()) {
        if seen.contains(&name) && !REPEATABLE_QUERY_PARAMETERS.contains(&name.as_ref()) {
            return Some(Problem::bad_request(format!("query parameter {name} is given more than once")));
        }
        seen.push(name);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(uri: &str, headers: &[(&str, &str)]) -> Request {
        let mut builder = Request::builder().uri(uri);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(axum::body::Body::empty()).unwrap()
    }

    fn status(request: &Request) -> Option<StatusCode> {
        ambiguity(request, 1024).map(|problem| problem.into_response().status())
    }

    #[test]
    fn two_authorization_headers_are_refused() {
        let twice = request("/x", &[("authorization", "Bearer a"), ("authorization", "Bearer b")]);
        assert_eq!(status(&twice), Some(StatusCode::BAD_REQUEST));
        assert_eq!(status(&request("/x", &[("authorization", "Bearer a")])), None);
    }

    #[test]
    fn a_query_parameter_named_twice_is_refused_unless_it_adds_values() {
        assert_eq!(status(&request("/x?connectionId=a&connectionId=b", &[])), Some(StatusCode::BAD_REQUEST));
        assert_eq!(status(&request("/x?connection%49d=a&connectionId=b", &[])), Some(StatusCode::BAD_REQUEST));
        assert_eq!(status(&request("/x?type=A&type=B&limit=2", &[])), None);
        assert_eq!(status(&request("/x?from=1&limit=2", &[])), None);
    }

    #[test]
    fn a_declared_body_over_the_limit_is_refused_before_it_is_read() {
        assert_eq!(status(&request("/x", &[("content-length", "1025")])), Some(StatusCode::PAYLOAD_TOO_LARGE));
        assert_eq!(status(&request("/x", &[("content-length", "1024")])), None);
        assert_eq!(status(&request("/x", &[("content-length", "lots")])), Some(StatusCode::BAD_REQUEST));
    }
}
