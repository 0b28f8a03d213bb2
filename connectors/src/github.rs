//! GitHub: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw body>`; the event in
//! `X-GitHub-Event`, the delivery id in `X-GitHub-Delivery` (neither is signed, so rules decide
//! from the signed body).

use ring::hmac;

use crate::signature::SignedRequest;
use crate::signature::{KeyIndex, SignatureError, hmac_of, parse_prefixed_hex_digest, verify_hmac};

pub const SIGNATURE_HEADER: &str = "x-hub-signature-256";
pub const EVENT_HEADER: &str = "x-github-event";
pub const DELIVERY_HEADER: &str = "x-github-delivery";
pub const PROVIDER: &str = "github";

/// The 32-byte digest of an `X-Hub-Signature-256` value.
pub fn parse_signature_header(header: &str) -> Result<Vec<u8>, SignatureError> {
    parse_prefixed_hex_digest(header, "sha256=", "expected sha256=<hex>")
}

/// Checks the header against the HMAC-SHA256 of the raw body under each secret, in constant time.
pub fn verify(request: &SignedRequest<'_>, secrets: &[&[u8]]) -> Result<KeyIndex, SignatureError> {
    let header = request.headers.get(SIGNATURE_HEADER).ok_or(SignatureError::Missing)?;
    let expected = parse_signature_header(header)?;
    verify_hmac(hmac::HMAC_SHA256, secrets, &[request.body], &expected).ok_or(SignatureError::Mismatch)
}

/// The header value GitHub would send for `body` signed with `secret`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    format!("sha256={}", hex::encode(hmac_of(hmac::HMAC_SHA256, secret, &[body])))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signature::{Headers, SignedRequest};

    fn request<'a>(headers: &'a Headers, body: &'a [u8]) -> SignedRequest<'a> {
        SignedRequest { headers, body, url: "", now: 0, tolerance_seconds: 300 }
    }

    /// The example from GitHub's "Validating webhook deliveries" documentation.
    #[test]
    fn githubs_documented_test_vector_verifies() {
        let secret = b"It's a Secret to Everybody";
        let body = b"Hello, World!";
        let header = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert_eq!(sign(secret, body), header);
        let headers = Headers::from_pairs([(SIGNATURE_HEADER, header)]);
        assert_eq!(verify(&request(&headers, body), &[secret]), Ok(0));
        assert_eq!(verify(&request(&headers, body), &[b"new secret", secret]), Ok(1));
    }

    #[test]
    fn wrong_missing_or_malformed_signatures_are_refused() {
        let header = sign(b"secret", b"body");
        let headers = Headers::from_pairs([(SIGNATURE_HEADER, header.as_str())]);
        assert_eq!(verify(&request(&headers, b"body"), &[b"other"]), Err(SignatureError::Mismatch));
        assert_eq!(verify(&request(&headers, b"body!"), &[b"secret"]), Err(SignatureError::Mismatch));
        assert_eq!(verify(&request(&Headers::default(), b"body"), &[b"secret"]), Err(SignatureError::Missing));
        for bad in ["sha1=00", "sha256=zz", "sha256=00", ""] {
            let headers = Headers::from_pairs([(SIGNATURE_HEADER, bad)]);
            assert!(matches!(verify(&request(&headers, b"body"), &[b"secret"]), Err(SignatureError::Malformed(_))));
        }
    }
}
