//! GitLab: the webhook's secret token is sent as is in `X-Gitlab-Token` (GitLab signs nothing);
//! it is compared in constant time. The event kind is the body's `object_kind`, the delivery id
//! `X-Gitlab-Event-UUID`.

use ring::digest;

use crate::signature::SignedRequest;
use crate::signature::{KeyIndex, SignatureError, constant_time_eq};

pub const TOKEN_HEADER: &str = "x-gitlab-token";
pub const EVENT_UUID_HEADER: &str = "x-gitlab-event-uuid";
pub const EVENT_HEADER: &str = "x-gitlab-event";

/// Compares the SHA-256 digests of the token and of each secret, so neither the content nor
/// the length of the secret shows in the time the comparison takes.
pub fn verify(request: &SignedRequest<'_>, secrets: &[&[u8]]) -> Result<KeyIndex, SignatureError> {
    let token = request.headers.get(TOKEN_HEADER).ok_or(SignatureError::Missing)?;
    if token.is_empty() {
        return Err(SignatureError::Malformed("the token is empty"));
    }
    let presented = digest::digest(&digest::SHA256, token.as_bytes());
    secrets
        .iter()
        .position(|secret| {
            let expected = digest::digest(&digest::SHA256, secret);
            constant_time_eq(presented.as_ref(), expected.as_ref())
        })
        .ok_or(SignatureError::Mismatch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signature::Headers;

    #[test]
    fn the_token_must_equal_a_secret() {
        let headers = Headers::from_pairs([(TOKEN_HEADER, "glwt-secret-token")]);
        let request = SignedRequest { headers: &headers, body: b"{}", url: "", now: 0, tolerance_seconds: 300 };
        assert_eq!(verify(&request, &[b"glwt-secret-token"]), Ok(0));
        assert_eq!(verify(&request, &[b"rotated", b"glwt-secret-token"]), Ok(1));
        assert_eq!(verify(&request, &[b"glwt-secret-token-longer"]), Err(SignatureError::Mismatch));
        assert_eq!(verify(&request, &[b"glwt-secret-toke"]), Err(SignatureError::Mismatch));
        let none = Headers::default();
        assert_eq!(verify(&SignedRequest { headers: &none, ..request }, &[b"x"]), Err(SignatureError::Missing));
    }
}
