//! Slack: `X-Slack-Signature: v0=<hex HMAC-SHA256 of "v0:{timestamp}:{raw body}">` under the
//! app's signing secret, with the timestamp in `X-Slack-Request-Timestamp`.

use ring::hmac;
use serde_json::Value;

use crate::signature::SignedRequest;
use crate::signature::{
    KeyIndex, SignatureError, check_timestamp, hmac_of, parse_prefixed_hex_digest, parse_unix_seconds, verify_hmac,
};

pub const SIGNATURE_HEADER: &str = "x-slack-signature";
pub const TIMESTAMP_HEADER: &str = "x-slack-request-timestamp";

/// The 32-byte digest of an `X-Slack-Signature` value.
pub fn parse_signature_header(header: &str) -> Result<Vec<u8>, SignatureError> {
    parse_prefixed_hex_digest(header, "v0=", "expected v0=<hex>")
}

pub fn verify(request: &SignedRequest<'_>, secrets: &[&[u8]]) -> Result<KeyIndex, SignatureError> {
    let header = request.headers.get(SIGNATURE_HEADER).ok_or(SignatureError::Missing)?;
    let timestamp_text = request.headers.get(TIMESTAMP_HEADER).ok_or(SignatureError::Missing)?;
    let timestamp = parse_unix_seconds(timestamp_text)?;
    let expected = parse_signature_header(header)?;
    let t = timestamp.to_string();
    let index = verify_hmac(hmac::HMAC_SHA256, secrets, &[b"v0:", t.as_bytes(), b":", request.body], &expected)
        .ok_or(SignatureError::Mismatch)?;
    check_timestamp(timestamp, request.now, request.tolerance_seconds)?;
    Ok(index)
}

/// The `X-Slack-Signature` Slack would send.
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let t = timestamp.to_string();
    format!("v0={}", hex::encode(hmac_of(hmac::HMAC_SHA256, secret, &[b"v0:", t.as_bytes(), b":", body])))
}

/// The challenge of a signed `url_verification` request, which Slack expects echoed back when
/// an Events API URL is configured. Such a request is not a delivery.
pub fn url_verification_challenge(payload: &Value) -> Option<&str> {
    (payload.get("type").and_then(Value::as_str) == Some("url_verification"))
        .then(|| payload.get("challenge").and_then(Value::as_str))
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signature::Headers;

    /// The worked example of Slack's "Verifying requests from Slack" guide.
    const SECRET: &[u8] = b"8f742231b10e8888abcd99yyyzzz85a5";
    const TIMESTAMP: i64 = 1_531_420_618;
    const BODY: &[u8] = b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
    const SIGNATURE: &str = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";

    fn headers(signature: &str, timestamp: &str) -> Headers {
        Headers::from_pairs([(SIGNATURE_HEADER, signature), (TIMESTAMP_HEADER, timestamp)])
    }

    #[test]
    fn slacks_documented_example_verifies() {
        assert_eq!(sign(SECRET, TIMESTAMP, BODY), SIGNATURE);
        let headers = headers(SIGNATURE, "1531420618");
        let request =
            SignedRequest { headers: &headers, body: BODY, url: "", now: TIMESTAMP + 60, tolerance_seconds: 300 };
        assert_eq!(verify(&request, &[SECRET]), Ok(0));
        assert_eq!(verify(&request, &[b"rotated", SECRET]), Ok(1));
        let late = SignedRequest { now: TIMESTAMP + 301, ..request };
        assert_eq!(verify(&late, &[SECRET]), Err(SignatureError::Stale { tolerance_seconds: 300 }));
        let tampered = SignedRequest { body: b"token=x", ..request };
        assert_eq!(verify(&tampered, &[SECRET]), Err(SignatureError::Mismatch));
    }

    #[test]
    fn missing_or_malformed_headers_are_refused() {
        let only_signature = Headers::from_pairs([(SIGNATURE_HEADER, SIGNATURE)]);
        let request =
            SignedRequest { headers: &only_signature, body: BODY, url: "", now: TIMESTAMP, tolerance_seconds: 300 };
        assert_eq!(verify(&request, &[SECRET]), Err(SignatureError::Missing));
        for (signature, timestamp) in [("v1=00", "1531420618"), ("v0=zz", "1531420618"), (SIGNATURE, "soon")] {
            let headers = headers(signature, timestamp);
            assert!(matches!(
                verify(&SignedRequest { headers: &headers, ..request }, &[SECRET]),
                Err(SignatureError::Malformed(_))
            ));
        }
    }

    #[test]
    fn url_verification_is_recognised() {
        let v = serde_json::json!({"type": "url_verification", "challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P", "token": "x"});
        assert_eq!(url_verification_challenge(&v), Some("3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"));
        assert_eq!(url_verification_challenge(&serde_json::json!({"type": "event_callback"})), None);
    }
}
