//! What every inbound verifier shares: the request it verifies, the refusal reasons,
//! constant-time comparisons and the timestamp window. The verifiers depend on this module and
//! `inbound` depends on them, never the other way.

use std::collections::BTreeMap;

use ring::hmac;
use subtle::ConstantTimeEq;
use thiserror::Error;

/// Request headers by lower-case name (the first value of a repeated header).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(BTreeMap<String, String>);

impl Headers {
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut map = BTreeMap::new();
        for (name, value) in pairs {
            map.entry(name.to_ascii_lowercase()).or_insert_with(|| value.to_string());
        }
        Self(map)
    }

    /// The trimmed value of a header.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(|v| v.trim())
    }
}

/// A request as the gateway received it, with what verification needs.
#[derive(Debug, Clone, Copy)]
pub struct SignedRequest<'a> {
    pub headers: &'a Headers,
    /// The raw body, exactly as received.
    pub body: &'a [u8],
    /// The URL the vendor called (Twilio signs it).
    pub url: &'a str,
    /// Unix seconds now.
    pub now: i64,
    /// How far a signed timestamp may be from `now`, either way.
    pub tolerance_seconds: u64,
}

/// Why an inbound signature was refused. Callers answer 401 and store nothing.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SignatureError {
    #[error("the signature header is missing")]
    Missing,
    #[error("the signature header is malformed: {0}")]
    Malformed(&'static str),
    #[error("the signature does not match the body")]
    Mismatch,
    /// The signed timestamp is further from now than the tolerance allows (a replay, or a
    /// badly wrong clock).
    #[error("the signed timestamp is outside the tolerance of {tolerance_seconds} s")]
    Stale { tolerance_seconds: u64 },
    /// A JWS names a key the provider's key set does not hold, or one that may not sign with
    /// the algorithm the JWS names.
    #[error("the signing key is not in the provider's key set: {0}")]
    UnknownKey(&'static str),
}

impl SignatureError {
    /// The reason, as the label of the rejection counter.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Missing => "missing_signature",
            Self::Malformed(_) => "malformed_signature",
            Self::Mismatch => "signature_mismatch",
            Self::Stale { .. } => "timestamp_out_of_tolerance",
            Self::UnknownKey(_) => "unknown_signing_key",
        }
    }
}

/// Which of the candidate secrets verified: 0 is the current one, 1 the previous one.
pub type KeyIndex = usize;

/// Checks an HMAC `tag` over the concatenation of `parts` against every secret in turn (current
/// first); ring's `verify` compares in constant time. Returns the index of the secret that matched.
pub(crate) fn verify_hmac(
    algorithm: hmac::Algorithm,
    secrets: &[&[u8]],
    parts: &[&[u8]],
    tag: &[u8],
) -> Option<KeyIndex> {
    secrets.iter().position(|secret| {
        let key = hmac::Key::new(algorithm, secret);
        let mut context = hmac::Context::with_key(&key);
        for part in parts {
            context.update(part);
        }
        // Recomputing and comparing with `subtle` keeps the comparison constant-time while
        // hashing the parts without concatenating them into a copy of the body.
        bool::from(context.sign().as_ref().ct_eq(tag))
    })
}

/// The HMAC of the concatenation of `parts`: what a vendor puts (encoded) in its header.
pub(crate) fn hmac_of(algorithm: hmac::Algorithm, secret: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let key = hmac::Key::new(algorithm, secret);
    let mut context = hmac::Context::with_key(&key);
    for part in parts {
        context.update(part);
    }
    context.sign().as_ref().to_vec()
}

/// Constant-time equality of two byte strings (their lengths are not secret).
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    bool::from(a.ct_eq(b))
}

/// Refuses a signed Unix timestamp (seconds) further than `tolerance_seconds` from `now`,
/// in either direction.
pub(crate) fn check_timestamp(timestamp: i64, now: i64, tolerance_seconds: u64) -> Result<(), SignatureError> {
    let distance = now.abs_diff(timestamp);
    if distance > tolerance_seconds {
        return Err(SignatureError::Stale { tolerance_seconds });
    }
    Ok(())
}

/// Parses a Unix timestamp in seconds: ASCII digits only (no sign, no spaces), at most 12 of them.
pub(crate) fn parse_unix_seconds(text: &str) -> Result<i64, SignatureError> {
    let text = text.trim();
    if text.is_empty() || text.len() > 12 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SignatureError::Malformed("the timestamp is not a Unix time in seconds"));
    }
    text.parse().map_err(|_| SignatureError::Malformed("the timestamp is not a Unix time in seconds"))
}

/// A SHA-256 digest given as `{prefix}<hex>` (`sha256=` for GitHub, `v0=` for Slack);
/// `expected` names that shape in the refusal.
pub fn parse_prefixed_hex_digest(
    header: &str,
    prefix: &str,
    expected: &'static str,
) -> Result<Vec<u8>, SignatureError> {
    let hex_digest = header.trim().strip_prefix(prefix).ok_or(SignatureError::Malformed(expected))?;
    let digest = hex::decode(hex_digest).map_err(|_| SignatureError::Malformed("the digest is not hex"))?;
    require_sha256_length(digest)
}

/// The digest, if it has SHA-256's 32 bytes.
pub fn require_sha256_length(digest: Vec<u8>) -> Result<Vec<u8>, SignatureError> {
    if digest.len() != 32 {
        return Err(SignatureError::Malformed("the digest is not 32 bytes"));
    }
    Ok(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_outside_the_window_are_stale_in_both_directions() {
        assert_eq!(check_timestamp(1000, 1300, 300), Ok(()));
        assert_eq!(check_timestamp(1600, 1300, 300), Ok(()));
        assert_eq!(check_timestamp(999, 1300, 300), Err(SignatureError::Stale { tolerance_seconds: 300 }));
        assert_eq!(check_timestamp(1601, 1300, 300), Err(SignatureError::Stale { tolerance_seconds: 300 }));
        assert_eq!(check_timestamp(i64::MIN, i64::MAX, 300), Err(SignatureError::Stale { tolerance_seconds: 300 }));
    }

    #[test]
    fn timestamps_are_plain_digits() {
        assert_eq!(parse_unix_seconds("1614265330"), Ok(1614265330));
        for bad in ["", "-1", "+5", "1e9", "12 34", "9999999999999", "0x10"] {
            assert!(parse_unix_seconds(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_matching_secret_is_named_current_first() {
        let tag = hmac_of(hmac::HMAC_SHA256, b"old", &[b"a", b"b"]);
        assert_eq!(verify_hmac(hmac::HMAC_SHA256, &[b"new", b"old"], &[b"ab"], &tag), Some(1));
        assert_eq!(verify_hmac(hmac::HMAC_SHA256, &[b"old", b"new"], &[b"a", b"b"], &tag), Some(0));
        assert_eq!(verify_hmac(hmac::HMAC_SHA256, &[b"new"], &[b"ab"], &tag), None);
        assert_eq!(verify_hmac(hmac::HMAC_SHA256, &[], &[b"ab"], &tag), None);
    }
}
