//! GitHub webhooks: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw body>` and the
//! mapping of GitHub events to normalized integration event types.

use ring::hmac;
use serde_json::Value;

use crate::SignatureError;

pub const SIGNATURE_HEADER: &str = "x-hub-signature-256";
pub const PROVIDER: &str = "github";

/// The type given to events no rule matches; they are accepted, not dropped.
pub const FALLBACK_EVENT_TYPE: &str = "ProviderEventReceived";

/// Checks `header` against the HMAC-SHA256 of the raw `body` under `secret`, in constant time.
pub fn verify_signature(secret: &[u8], body: &[u8], header: Option<&str>) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let hex_digest = header.trim().strip_prefix("sha256=").ok_or(SignatureError::Malformed("expected sha256=<hex>"))?;
    let expected = hex::decode(hex_digest).map_err(|_| SignatureError::Malformed("the digest is not hex"))?;
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    // ring's verify compares in constant time.
    hmac::verify(&key, body, &expected).map_err(|_| SignatureError::Mismatch)
}

/// The header value GitHub would send for `body` signed with `secret`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    format!("sha256={}", hex::encode(hmac::sign(&key, body).as_ref()))
}

/// The normalized type of a GitHub event, decided from the signed payload.
///
/// `payload` is either GitHub's native body (`pull_request.merged`) or the condensed envelope
/// payload of the spec (`merged` at the top); both are read.
pub fn normalize(event_name: &str, payload: &Value) -> String {
    let action = payload.get("action").and_then(Value::as_str).unwrap_or("");
    let merged = payload
        .get("merged")
        .or_else(|| payload.get("pull_request").and_then(|pr| pr.get("merged")))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let normalized = match (event_name, action) {
        ("pull_request", "closed") if merged => "PullRequestMerged",
        ("pull_request", "closed") => "PullRequestClosed",
        ("pull_request", "opened") => "PullRequestOpened",
        ("push", _) => "CodePushed",
        ("release", "published") => "ReleasePublished",
        _ => FALLBACK_EVENT_TYPE,
    };
    normalized.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The example from GitHub's "Validating webhook deliveries" documentation.
    #[test]
    fn githubs_documented_test_vector_verifies() {
        let secret = b"It's a Secret to Everybody";
        let body = b"Hello, World!";
        let header = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert_eq!(sign(secret, body), header);
        assert_eq!(verify_signature(secret, body, Some(header)), Ok(()));
    }

    #[test]
    fn wrong_missing_or_malformed_signatures_are_refused() {
        let header = sign(b"secret", b"body");
        assert_eq!(verify_signature(b"other", b"body", Some(&header)), Err(SignatureError::Mismatch));
        assert_eq!(verify_signature(b"secret", b"body!", Some(&header)), Err(SignatureError::Mismatch));
        assert_eq!(verify_signature(b"secret", b"body", None), Err(SignatureError::Missing));
        assert!(matches!(verify_signature(b"secret", b"body", Some("sha1=00")), Err(SignatureError::Malformed(_))));
        assert!(matches!(verify_signature(b"secret", b"body", Some("sha256=zz")), Err(SignatureError::Malformed(_))));
    }

    #[test]
    fn a_pull_request_is_merged_only_when_the_body_says_so() {
        assert_eq!(normalize("pull_request", &json!({"action": "closed", "merged": true})), "PullRequestMerged");
        assert_eq!(
            normalize("pull_request", &json!({"action": "closed", "pull_request": {"merged": true}})),
            "PullRequestMerged"
        );
        assert_eq!(normalize("pull_request", &json!({"action": "closed", "merged": false})), "PullRequestClosed");
        assert_eq!(normalize("pull_request", &json!({"action": "opened"})), "PullRequestOpened");
        assert_eq!(normalize("issues", &json!({"action": "opened"})), FALLBACK_EVENT_TYPE);
    }
}
