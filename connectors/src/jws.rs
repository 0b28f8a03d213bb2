//! JWS deliveries: the body is a compact JWS (`header.payload.signature`, RFC 7515) signed RS256,
//! RS384, RS512, ES256 or EdDSA by the provider, whose public keys come from its JSON Web Key Set (named by the
//! connection's configuration). The algorithm is pinned by the key: a JWS cannot pick `none`,
//! HS256 or another key type. The delivery is the JWS payload.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use serde_json::Value;

use crate::jwk::{self, KeyMaterial};
pub use crate::jwk::{Algorithm, PublicJwk};
use crate::signature::SignedRequest;
use crate::signature::{SignatureError, check_timestamp};

/// A compact JWS longer than this is refused before decoding (the body limit applies too).
const MAX_JWS_BYTES: usize = 1024 * 1024;

/// The usable signing keys of a provider's JWKS, read by the engine's one JWK parser
/// ([`crate::jwk`]): each pinned to one algorithm by its type and curve.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JwkSet {
    pub keys: Vec<PublicJwk>,
}

impl JwkSet {
    pub fn parse(json: &[u8]) -> Result<Self, String> {
        let parsed = jwk::parse_set(json)?;
        if parsed.keys.is_empty() {
            return Err(format!("the JWKS holds no usable signing key ({})", parsed.skipped.join("; ")));
        }
        Ok(Self { keys: parsed.keys })
    }

    /// Whether a key has this `kid` (to decide whether a refetch could help).
    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }
}

/// The parts of a compact JWS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompactJws {
    pub algorithm: Algorithm,
    pub kid: Option<String>,
    /// `BASE64URL(header) "." BASE64URL(payload)`: what the signature covers.
    pub signing_input: String,
    pub payload: Vec<u8>,
    pub signature: Vec<u8>,
}

/// Parses a compact JWS (surrounding whitespace ignored). Refuses unsupported algorithms,
/// `crit` headers and unencoded (`b64: false`) payloads.
pub fn parse_compact(text: &[u8]) -> Result<CompactJws, SignatureError> {
    if text.len() > MAX_JWS_BYTES {
        return Err(SignatureError::Malformed("the JWS is too large"));
    }
    let text = std::str::from_utf8(text).map_err(|_| SignatureError::Malformed("the JWS is not text"))?.trim();
    if text.is_empty() {
        return Err(SignatureError::Missing);
    }
    let mut parts = text.split('.');
    let (Some(header), Some(payload), Some(signature), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SignatureError::Malformed("a compact JWS has three dot-separated parts"));
    };
    let decode =
        |part: &str| URL_SAFE_NO_PAD.decode(part).map_err(|_| SignatureError::Malformed("a part is not base64url"));
    let header_json: Value =
        serde_json::from_slice(&decode(header)?).map_err(|_| SignatureError::Malformed("the header is not JSON"))?;
    if header_json.get("crit").is_some() || header_json.get("b64").is_some_and(|b| b != &Value::Bool(true)) {
        return Err(SignatureError::Malformed("unsupported JWS header parameters"));
    }
    let algorithm = header_json
        .get("alg")
        .and_then(Value::as_str)
        .and_then(Algorithm::from_name)
        .ok_or(SignatureError::Malformed("the algorithm must be RS256, RS384, RS512, ES256 or EdDSA"))?;
    let kid = match header_json.get("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid.clone()),
        Some(_) => return Err(SignatureError::Malformed("kid is not a string")),
    };
    Ok(CompactJws {
        algorithm,
        kid,
        signing_input: format!("{header}.{payload}"),
        payload: decode(payload)?,
        signature: decode(signature)?,
    })
}

/// Verifies the body as a compact JWS with a key of `keys` and returns its payload. A JWS
/// naming a `kid` is checked with that key only; one without is tried with every key of its
/// algorithm. `exp` (if present) must not have passed and `iat` (if present) must be within
/// the tolerance.
pub fn verify(request: &SignedRequest<'_>, keys: &JwkSet) -> Result<Vec<u8>, SignatureError> {
    let jws = parse_compact(request.body)?;
    let candidates: Vec<&PublicJwk> = keys
        .keys
        .iter()
        .filter(|k| jws.kid.is_none() || k.kid == jws.kid)
        .filter(|k| k.algorithm == jws.algorithm)
        .collect();
    if candidates.is_empty() {
        return Err(SignatureError::UnknownKey("no key of the provider's JWKS has this kid and algorithm"));
    }
    let message = jws.signing_input.as_bytes();
    let verified = candidates.iter().any(|key| verifies(key, message, &jws.signature));
    if !verified {
        return Err(SignatureError::Mismatch);
    }
    if let Ok(claims) = serde_json::from_slice::<Value>(&jws.payload) {
        if let Some(exp) = claims.get("exp").and_then(Value::as_i64)
            && request.now > exp
        {
            return Err(SignatureError::Stale { tolerance_seconds: request.tolerance_seconds });
        }
        if let Some(iat) = claims.get("iat").and_then(Value::as_i64) {
            check_timestamp(iat, request.now, request.tolerance_seconds)?;
        }
    }
    Ok(jws.payload)
}

/// Whether `signature` over `message` verifies with `key`, by the algorithm the key is pinned to.
fn verifies(key: &PublicJwk, message: &[u8], signature: &[u8]) -> bool {
    let rsa = |params, n, e| RsaPublicKeyComponents { n, e }.verify(params, message, signature).is_ok();
    match (key.algorithm, &key.material) {
        (Algorithm::Rs256, KeyMaterial::Rsa { n, e }) => rsa(&signature::RSA_PKCS1_2048_8192_SHA256, n, e),
        (Algorithm::Rs384, KeyMaterial::Rsa { n, e }) => rsa(&signature::RSA_PKCS1_2048_8192_SHA384, n, e),
        (Algorithm::Rs512, KeyMaterial::Rsa { n, e }) => rsa(&signature::RSA_PKCS1_2048_8192_SHA512, n, e),
        (Algorithm::Es256, KeyMaterial::P256 { x, y }) => {
            // The uncompressed point, `04 || x || y` (the parser checked both are 32 bytes).
            let mut point = [4u8; 65];
            point[1..33].copy_from_slice(x);
            point[33..].copy_from_slice(y);
            UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point).verify(message, signature).is_ok()
        }
        (Algorithm::EdDsa, KeyMaterial::Ed25519 { x }) => {
            UnparsedPublicKey::new(&signature::ED25519, x).verify(message, signature).is_ok()
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signature::Headers;
    use serde_json::json;

    // RFC 7515, Appendix A.2 (RS256) and A.3 (ES256): the keys and the signed example.
    const A2_N: &str = "ofgWCuLjybRlzo0tZWJjNiuSfb4p4fAkd_wWJcyQoTbji9k0l8W26mPddxHmfHQp-Vaw-4qPCJrcS2mJPMEzP1Pt0Bm4d4QlL-yRT-SFd2lZS-pCgNMsD1W_YpRPEwOWvG6b32690r2jZ47soMZo9wGzjb_7OMg0LOL-bSf63kpaSHSXndS5z5rexMdbBYUsLA9e-KXBdQOS-UTo7WTBEMa2R2CapHg665xsmtdVMTBQY4uDZlxvb3qCo5ZwKh9kG4LT6_I5IhlJH7aGhyxXFvUK-DWNmoudF8NAco9_h9iaGNj8q2ethFkMLs91kzk2PAcDTW9gb54h4FRWyuXpoQ";
    const A2_JWS: &str = "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.cC4hiUPoj9Eetdgtv3hF80EGrhuB__dzERat0XF9g2VtQgr9PJbu3XOiZj5RZmh7AAuHIm4Bh-0Qc_lF5YKt_O8W2Fp5jujGbds9uJdbF9CUAr7t1dnZcAcQjbKBYNX4BAynRFdiuB--f_nZLgrnbyTyWzO75vRK5h6xBArLIARNPvkSjtQBMHlb1L07Qe7K0GarZRmB_eSN9383LcOLn6_dO--xi12jzDwusC-eOkHWEsqtFZESc6BfI7noOPqvhJ1phCnvWh6IeYI2w9QOYEUipUTI8np6LbgGY9Fs98rqVt5AXLIhWkWywlVmtVrBp0igcN_IoypGlUPQGe77Rw";
    const A3_X: &str = "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU";
    const A3_Y: &str = "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0";
    const A3_JWS: &str = "eyJhbGciOiJFUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSApmWQxfKTUJqPP3-Kg6NU1Q";
    /// The examples' `exp`: a moment before it, the examples are fresh.
    const BEFORE_EXP: i64 = 1_300_819_000;

    fn rfc_keys() -> JwkSet {
        JwkSet::parse(
            json!({"keys": [
                {"kty": "RSA", "kid": "a2", "n": A2_N, "e": "AQAB"},
                {"kty": "EC", "crv": "P-256", "kid": "a3", "x": A3_X, "y": A3_Y},
            ]})
            .to_string()
            .as_bytes(),
        )
        .unwrap()
    }

    fn request(body: &[u8], now: i64) -> SignedRequest<'_> {
        static NO_HEADERS: std::sync::OnceLock<Headers> = std::sync::OnceLock::new();
        SignedRequest { headers: NO_HEADERS.get_or_init(Headers::default), body, url: "", now, tolerance_seconds: 300 }
    }

    #[test]
    fn the_rfc_7515_examples_verify_with_their_keys() {
        let keys = rfc_keys();
        let payload = verify(&request(A2_JWS.as_bytes(), BEFORE_EXP), &keys).unwrap();
        assert_eq!(payload, b"{\"iss\":\"joe\",\r\n \"exp\":1300819380,\r\n \"http://example.com/is_root\":true}");
        assert_eq!(verify(&request(A3_JWS.as_bytes(), BEFORE_EXP), &keys).unwrap(), payload);
        // After `exp` the same JWS is stale.
        assert!(matches!(verify(&request(A2_JWS.as_bytes(), 1_300_819_381), &keys), Err(SignatureError::Stale { .. })));
    }

    #[test]
    fn a_changed_payload_or_a_foreign_key_is_refused() {
        let keys = rfc_keys();
        let mut parts: Vec<&str> = A3_JWS.split('.').collect();
        let forged_payload = URL_SAFE_NO_PAD.encode(br#"{"iss":"mallory"}"#);
        parts[1] = &forged_payload;
        assert_eq!(verify(&request(parts.join(".").as_bytes(), BEFORE_EXP), &keys), Err(SignatureError::Mismatch));
        let only_ec = JwkSet { keys: keys.keys.iter().filter(|k| k.kid.as_deref() == Some("a3")).cloned().collect() };
        assert!(matches!(
            verify(&request(A2_JWS.as_bytes(), BEFORE_EXP), &only_ec),
            Err(SignatureError::UnknownKey(_))
        ));
    }

    #[test]
    fn the_algorithm_is_pinned_by_the_key() {
        let keys = rfc_keys();
        let none = format!("{}.{}.", URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#), URL_SAFE_NO_PAD.encode(b"{}"));
        assert!(matches!(verify(&request(none.as_bytes(), 0), &keys), Err(SignatureError::Malformed(_))));
        let hs = format!("{}.{}.AAAA", URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256"}"#), URL_SAFE_NO_PAD.encode(b"{}"));
        assert!(matches!(verify(&request(hs.as_bytes(), 0), &keys), Err(SignatureError::Malformed(_))));
        // An RS256 header naming the EC key's kid finds no key.
        let mut parts: Vec<String> = A2_JWS.split('.').map(String::from).collect();
        parts[0] = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","kid":"a3"}"#);
        assert!(matches!(
            verify(&request(parts.join(".").as_bytes(), BEFORE_EXP), &keys),
            Err(SignatureError::UnknownKey(_))
        ));
        let crit = format!("{}.e30.AAAA", URL_SAFE_NO_PAD.encode(br#"{"alg":"ES256","crit":["x"]}"#));
        assert!(matches!(parse_compact(crit.as_bytes()), Err(SignatureError::Malformed(_))));
    }

    #[test]
    fn an_ed25519_key_verifies_eddsa_and_nothing_else() {
        use ring::signature::{Ed25519KeyPair, KeyPair};
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let x = URL_SAFE_NO_PAD.encode(pair.public_key().as_ref());
        let keys = JwkSet::parse(
            json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": x}]}).to_string().as_bytes(),
        )
        .unwrap();
        let sign = |header: &str| {
            let input = format!("{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(br#"{"type":"ping"}"#));
            format!("{input}.{}", URL_SAFE_NO_PAD.encode(pair.sign(input.as_bytes())))
        };
        let jws = sign(r#"{"alg":"EdDSA","kid":"ed"}"#);
        assert_eq!(verify(&request(jws.as_bytes(), 0), &keys).unwrap(), br#"{"type":"ping"}"#);
        let claimed_es256 = sign(r#"{"alg":"ES256","kid":"ed"}"#);
        assert!(matches!(verify(&request(claimed_es256.as_bytes(), 0), &keys), Err(SignatureError::UnknownKey(_))));
    }

    #[test]
    fn jwks_keep_only_usable_signing_keys() {
        let set = json!({"keys": [
            {"kty": "RSA", "n": "AQAB", "e": "AQAB"},
            {"kty": "EC", "crv": "P-384", "x": A3_X, "y": A3_Y},
            {"kty": "EC", "crv": "P-256", "x": A3_X, "y": A3_Y, "use": "enc"},
            {"kty": "EC", "crv": "P-256", "x": A3_X, "y": A3_Y, "alg": "RS256"},
            {"kty": "oct", "k": "AAAA"},
            {"kty": "EC", "crv": "P-256", "x": A3_X, "y": A3_Y, "alg": "ES256", "kid": "ok"},
        ]});
        let keys = JwkSet::parse(set.to_string().as_bytes()).unwrap();
        assert_eq!(keys.keys.len(), 1);
        assert!(keys.has_kid("ok"));
        assert!(JwkSet::parse(br#"{"keys": []}"#).is_err());
        assert!(JwkSet::parse(b"nope").is_err());
    }

    #[test]
    fn malformed_compact_serializations_are_refused() {
        for bad in [&b""[..], b"a.b", b"a.b.c.d", b"!.!.!", b"e30.e30.AAAA", b"\xff.a.b"] {
            assert!(parse_compact(bad).is_err(), "{bad:?}");
        }
    }
}
