//! Shopify: `X-Shopify-Hmac-Sha256: <base64 HMAC-SHA256 of the raw body>` under the app's client
//! secret; the topic in `X-Shopify-Topic` and the delivery id in `X-Shopify-Webhook-Id` (not
//! signed).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::hmac;

use crate::signature::SignedRequest;
use crate::signature::{KeyIndex, SignatureError, hmac_of, require_sha256_length, verify_hmac};

pub const SIGNATURE_HEADER: &str = "x-shopify-hmac-sha256";
pub const TOPIC_HEADER: &str = "x-shopify-topic";
pub const WEBHOOK_ID_HEADER: &str = "x-shopify-webhook-id";

/// The 32-byte digest of an `X-Shopify-Hmac-Sha256` value.
pub fn parse_signature_header(header: &str) -> Result<Vec<u8>, SignatureError> {
    let digest = STANDARD.decode(header.trim()).map_err(|_| SignatureError::Malformed("the digest is not base64"))?;
    require_sha256_length(digest)
}

pub fn verify(request: &SignedRequest<'_>, secrets: &[&[u8]]) -> Result<KeyIndex, SignatureError> {
    let header = request.headers.get(SIGNATURE_HEADER).ok_or(SignatureError::Missing)?;
    let expected = parse_signature_header(header)?;
    verify_hmac(hmac::HMAC_SHA256, secrets, &[request.body], &expected).ok_or(SignatureError::Mismatch)
}

/// The header value Shopify would send for `body` under `secret`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    STANDARD.encode(hmac_of(hmac::HMAC_SHA256, secret, &[body]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signature::Headers;

    /// Shopify documents the computation (base64 of the HMAC-SHA256 of the raw body under the
    /// client secret) without a published vector; this is that computation done independently
    /// with `ring` and `base64`, on a body in Shopify's documented `orders/create` shape.
    #[test]
    fn the_documented_computation_verifies() {
        let secret = b"shpss_0123456789abcdef0123456789abcdef";
        let body = br#"{"id":820982911946154508,"email":"jon@example.com","line_items":[]}"#;
        let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
        let reference = STANDARD.encode(hmac::sign(&key, body).as_ref());
        assert_eq!(sign(secret, body), reference);
        let headers = Headers::from_pairs([(SIGNATURE_HEADER, reference.as_str())]);
        let request = SignedRequest { headers: &headers, body, url: "", now: 0, tolerance_seconds: 300 };
        assert_eq!(verify(&request, &[secret]), Ok(0));
        assert_eq!(verify(&request, &[b"other"]), Err(SignatureError::Mismatch));
        let tampered = SignedRequest { body: b"{}", ..request };
        assert_eq!(verify(&tampered, &[secret]), Err(SignatureError::Mismatch));
    }

    #[test]
    fn malformed_headers_are_refused() {
        for bad in ["", "not base64!", "AAAA"] {
            assert!(matches!(parse_signature_header(bad), Err(SignatureError::Malformed(_))), "{bad}");
        }
    }
}
