//! Why the gateway refuses a delivery: the problem document it answers with and the reason it
//! is counted under.

use axum::http::{StatusCode, header};
use connectors::inbound::Refused;

use crate::problem::Problem;

/// A refused delivery: the answer and the reason it is counted under.
pub(super) struct Refusal {
    pub(super) reason: &'static str,
    pub(super) problem: Problem,
}

impl Refusal {
    pub(super) fn new(reason: &'static str, problem: Problem) -> Self {
        Self { reason, problem }
    }

    /// 401 with a challenge naming the header that should have carried the proof.
    pub(super) fn unauthorized(reason: &'static str, detail: impl Into<String>) -> Self {
        let problem = Problem::new(StatusCode::UNAUTHORIZED, "signature-rejected", "Unauthorized", detail)
            .with_header(header::WWW_AUTHENTICATE, "HMAC realm=\"webhooks\"");
        Self::new(reason, problem)
    }

    pub(super) fn bad_request(reason: &'static str, detail: impl Into<String>) -> Self {
        Self::new(reason, Problem::bad_request(detail))
    }
}

impl From<Refused> for Refusal {
    fn from(refused: Refused) -> Self {
        match refused {
            Refused::MediaType { .. } => Self::new(
                "unsupported_media_type",
                Problem::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported-media-type",
                    "Unsupported media type",
                    refused.to_string(),
                ),
            ),
            Refused::Signature(e) => Self::unauthorized(e.reason(), e.to_string()),
            Refused::Shape(e) => Self::bad_request("malformed_body", e.0),
        }
    }
}

/// 413: the body is over `--max-body-bytes`.
pub(super) fn too_large(limit: usize) -> Refusal {
    Refusal::new(
        "payload_too_large",
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
            "Payload too large",
            format!("the body is larger than {limit} bytes"),
        ),
    )
}
