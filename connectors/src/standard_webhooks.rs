//! Standard Webhooks (standardwebhooks.com; Svix and others): `webhook-id`, `webhook-timestamp`
//! and `webhook-signature`, a space-separated list of `v1,<base64 HMAC-SHA256>` (symmetric
//! secret `whsec_<base64>`) and `v1a,<base64 Ed25519>` (public key `whpk_<base64>`) signatures
//! over `{id}.{timestamp}.{raw body}`. Any one valid signature verifies.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::{hmac, signature};

use crate::signature::SignedRequest;
use crate::signature::{KeyIndex, SignatureError, check_timestamp, hmac_of, parse_unix_seconds, verify_hmac};

pub const ID_HEADER: &str = "webhook-id";
pub const TIMESTAMP_HEADER: &str = "webhook-timestamp";
pub const SIGNATURE_HEADER: &str = "webhook-signature";
/// Prefix of a symmetric secret (base64 of the HMAC key).
pub const SECRET_PREFIX: &str = "whsec_";
/// Prefix of an Ed25519 public key (base64 of its 32 bytes).
pub const PUBLIC_KEY_PREFIX: &str = "whpk_";
/// More signatures than this in one header are refused, bounding the work per request.
const MAX_SIGNATURES: usize = 16;

/// One entry of the `webhook-signature` list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signature {
    /// `v1,`: HMAC-SHA256, 32 bytes.
    V1(Vec<u8>),
    /// `v1a,`: Ed25519, 64 bytes.
    V1a(Vec<u8>),
}

/// The known signatures of a `webhook-signature` header; entries of unknown versions are skipped.
pub fn parse_signature_header(header: &str) -> Result<Vec<Signature>, SignatureError> {
    let mut signatures = Vec::new();
    for (count, entry) in header.split(' ').filter(|e| !e.is_empty()).enumerate() {
        if count >= MAX_SIGNATURES {
            return Err(SignatureError::Malformed("too many signatures"));
        }
        let (version, encoded) =
            entry.split_once(',').ok_or(SignatureError::Malformed("a signature is not version,base64"))?;
        let decode = || STANDARD.decode(encoded).map_err(|_| SignatureError::Malformed("a signature is not base64"));
        match version {
            "v1" => {
                let bytes = decode()?;
                if bytes.len() != 32 {
                    return Err(SignatureError::Malformed("a v1 signature is not 32 bytes"));
                }
                signatures.push(Signature::V1(bytes));
            }
            "v1a" => {
                let bytes = decode()?;
                if bytes.len() != 64 {
                    return Err(SignatureError::Malformed("a v1a signature is not 64 bytes"));
                }
                signatures.push(Signature::V1a(bytes));
            }
            _ => {}
        }
    }
    if signatures.is_empty() {
        return Err(SignatureError::Malformed("no v1 or v1a signature"));
    }
    Ok(signatures)
}

/// A secret as stored in the vault: `whsec_<base64>` (or bare base64) for HMAC, `whpk_<base64>`
/// for an Ed25519 public key. `None` when it is neither (it then verifies nothing).
#[derive(Debug, PartialEq, Eq)]
enum Key {
    Hmac(Vec<u8>),
    Ed25519(Vec<u8>),
}

fn key_of(secret: &[u8]) -> Option<Key> {
    let text = std::str::from_utf8(secret).ok()?.trim();
    if let Some(public) = text.strip_prefix(PUBLIC_KEY_PREFIX) {
        let bytes = STANDARD.decode(public).ok()?;
        return (bytes.len() == 32).then_some(Key::Ed25519(bytes));
    }
    let encoded = text.strip_prefix(SECRET_PREFIX).unwrap_or(text);
    STANDARD.decode(encoded).ok().filter(|k| !k.is_empty()).map(Key::Hmac)
}

pub fn verify(request: &SignedRequest<'_>, secrets: &[&[u8]]) -> Result<KeyIndex, SignatureError> {
    let header = request.headers.get(SIGNATURE_HEADER).ok_or(SignatureError::Missing)?;
    let id = request.headers.get(ID_HEADER).ok_or(SignatureError::Missing)?;
    let timestamp_text = request.headers.get(TIMESTAMP_HEADER).ok_or(SignatureError::Missing)?;
    if id.is_empty() || id.len() > 256 {
        return Err(SignatureError::Malformed("webhook-id must be 1 to 256 characters"));
    }
    let timestamp = parse_unix_seconds(timestamp_text)?;
    let signatures = parse_signature_header(header)?;
    let t = timestamp.to_string();
    let parts: [&[u8]; 5] = [id.as_bytes(), b".", t.as_bytes(), b".", request.body];
    let keys: Vec<Option<Key>> = secrets.iter().map(|s| key_of(s)).collect();
    let index = keys
        .iter()
        .enumerate()
        .find_map(|(index, key)| {
            let matched = signatures.iter().any(|signature| match (key, signature) {
                (Some(Key::Hmac(secret)), Signature::V1(tag)) => {
                    verify_hmac(hmac::HMAC_SHA256, &[secret], &parts, tag).is_some()
                }
                (Some(Key::Ed25519(public)), Signature::V1a(sig)) => {
                    let message = parts.concat();
                    signature::UnparsedPublicKey::new(&signature::ED25519, public).verify(&message, sig).is_ok()
                }
                _ => false,
            });
            matched.then_some(index)
        })
        .ok_or(SignatureError::Mismatch)?;
    check_timestamp(timestamp, request.now, request.tolerance_seconds)?;
    Ok(index)
}

/// A `v1,` signature of the message under a `whsec_` secret.
pub fn sign_v1(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Option<String> {
    let Some(Key::Hmac(key)) = key_of(secret.as_bytes()) else { return None };
    let t = timestamp.to_string();
    let tag = hmac_of(hmac::HMAC_SHA256, &key, &[id.as_bytes(), b".", t.as_bytes(), b".", body]);
    Some(format!("v1,{}", STANDARD.encode(tag)))
}

/// A `v1a,` signature of the message with an Ed25519 key pair.
pub fn sign_v1a(key_pair: &signature::Ed25519KeyPair, id: &str, timestamp: i64, body: &[u8]) -> String {
    let message = [id.as_bytes(), b".", timestamp.to_string().as_bytes(), b".", body].concat();
    format!("v1a,{}", STANDARD.encode(key_pair.sign(&message).as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signature::Headers;
    use ring::signature::KeyPair;

    /// The test vector of the Standard Webhooks specification (and Svix's libraries).
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TIMESTAMP: i64 = 1_614_265_330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn headers(signature: &str) -> Headers {
        Headers::from_pairs([(ID_HEADER, ID), (TIMESTAMP_HEADER, "1614265330"), (SIGNATURE_HEADER, signature)])
    }

    fn request<'a>(headers: &'a Headers, now: i64) -> SignedRequest<'a> {
        SignedRequest { headers, body: BODY, url: "", now, tolerance_seconds: 300 }
    }

    #[test]
    fn the_specifications_vector_verifies() {
        assert_eq!(sign_v1(SECRET, ID, TIMESTAMP, BODY).as_deref(), Some(SIGNATURE));
        let headers = headers(SIGNATURE);
        assert_eq!(verify(&request(&headers, TIMESTAMP), &[SECRET.as_bytes()]), Ok(0));
        // The secret without its prefix is the same key.
        assert_eq!(verify(&request(&headers, TIMESTAMP), &[b"MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]), Ok(0));
        assert_eq!(
            verify(&request(&headers, TIMESTAMP + 301), &[SECRET.as_bytes()]),
            Err(SignatureError::Stale { tolerance_seconds: 300 })
        );
    }

    #[test]
    fn one_valid_signature_among_several_verifies() {
        let other = "v1,".to_string() + &STANDARD.encode([7u8; 32]);
        let list = format!("v2,zzz {other} {SIGNATURE}");
        let headers = headers(&list);
        assert_eq!(verify(&request(&headers, TIMESTAMP), &[b"whsec_AAAA", SECRET.as_bytes()]), Ok(1));
        let only_other = headers_with(&other);
        assert_eq!(verify(&request(&only_other, TIMESTAMP), &[SECRET.as_bytes()]), Err(SignatureError::Mismatch));
    }

    fn headers_with(signature: &str) -> Headers {
        headers(signature)
    }

    /// `v1a` has no published vector; the reference is RFC 8032's first Ed25519 test key
    /// (section 7.1, TEST 1), whose public key is checked against the RFC before use.
    #[test]
    fn ed25519_v1a_signatures_verify_with_the_public_key() {
        let seed = hex::decode("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60").unwrap();
        let pair = signature::Ed25519KeyPair::from_seed_unchecked(&seed).unwrap();
        assert_eq!(
            hex::encode(pair.public_key().as_ref()),
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
        );
        // RFC 8032 TEST 1: the signature of the empty message.
        assert_eq!(
            hex::encode(pair.sign(b"").as_ref()),
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
        );
        let public = format!("{PUBLIC_KEY_PREFIX}{}", STANDARD.encode(pair.public_key().as_ref()));
        let v1a = sign_v1a(&pair, ID, TIMESTAMP, BODY);
        let headers = headers(&format!("{SIGNATURE} {v1a}"));
        assert_eq!(verify(&request(&headers, TIMESTAMP), &[public.as_bytes()]), Ok(0));
        let forged = headers_with(&format!("v1a,{}", STANDARD.encode([1u8; 64])));
        assert_eq!(verify(&request(&forged, TIMESTAMP), &[public.as_bytes()]), Err(SignatureError::Mismatch));
        // A symmetric secret never accepts a v1a, nor a public key a v1.
        let only_v1a = headers_with(&v1a);
        assert_eq!(verify(&request(&only_v1a, TIMESTAMP), &[SECRET.as_bytes()]), Err(SignatureError::Mismatch));
        let only_v1 = headers_with(SIGNATURE);
        assert_eq!(verify(&request(&only_v1, TIMESTAMP), &[public.as_bytes()]), Err(SignatureError::Mismatch));
    }

    #[test]
    fn missing_or_malformed_headers_are_refused() {
        let no_id = Headers::from_pairs([(TIMESTAMP_HEADER, "1614265330"), (SIGNATURE_HEADER, SIGNATURE)]);
        assert_eq!(verify(&request(&no_id, TIMESTAMP), &[SECRET.as_bytes()]), Err(SignatureError::Missing));
        for bad in ["", "v1", "v1,@@@", "v1,AAAA", "v1a,AAAA", "v9,AAAA"] {
            assert!(matches!(parse_signature_header(bad), Err(SignatureError::Malformed(_))), "{bad}");
        }
        let many = vec![SIGNATURE; 17].join(" ");
        assert!(matches!(parse_signature_header(&many), Err(SignatureError::Malformed(_))));
    }
}
