//! JSON Web Keys (RFC 7517, 7518 and 8037): the one parser of every key set the engine reads,
//! the identity provider's that verifies bearer tokens (`api::auth`) and the providers' that
//! verify JWS deliveries ([`crate::jws`]).
//!
//! Each usable key is pinned to one signature algorithm by its type and curve, and a declared
//! `alg` must agree with them: a token or a delivery cannot choose how it is verified. Keys that
//! cannot verify a signature (encryption keys, private keys, RSA moduli under 2048 bits, other
//! types and curves) are skipped with the reason, so one odd key does not fail a whole set.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;

/// RSA keys under 2048 bits are no longer considered safe (NIST SP 800-131A).
const MIN_RSA_MODULUS_BYTES: usize = 256;

/// The signature algorithms a public key may verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    Rs256,
    Rs384,
    Rs512,
    Es256,
    EdDsa,
}

impl Algorithm {
    /// The JOSE name (`alg`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Rs256 => "RS256",
            Self::Rs384 => "RS384",
            Self::Rs512 => "RS512",
            Self::Es256 => "ES256",
            Self::EdDsa => "EdDSA",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        [Self::Rs256, Self::Rs384, Self::Rs512, Self::Es256, Self::EdDsa].into_iter().find(|a| a.name() == name)
    }
}

/// A public key's numbers, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyMaterial {
    /// Modulus and exponent, big-endian without leading zeros.
    Rsa { n: Vec<u8>, e: Vec<u8> },
    /// A P-256 point's coordinates, 32 bytes each.
    P256 { x: Vec<u8>, y: Vec<u8> },
    /// An Ed25519 public key, 32 bytes.
    Ed25519 { x: Vec<u8> },
}

/// One usable public signing key of a key set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicJwk {
    pub kid: Option<String>,
    pub algorithm: Algorithm,
    pub material: KeyMaterial,
}

/// A key set's usable keys in document order, and why each other key was skipped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParsedSet {
    pub keys: Vec<PublicJwk>,
    pub skipped: Vec<String>,
}

/// Reads a JWKS document (`{"keys": [...]}`). Only a document that is not a key set is an error;
/// what to do with a set without a usable key is the caller's to say.
pub fn parse_set(document: &[u8]) -> Result<ParsedSet, String> {
    let document: Value = serde_json::from_slice(document).map_err(|e| format!("not a JWKS document: {e}"))?;
    let keys = document.get("keys").and_then(Value::as_array).ok_or("not a JWKS document: no keys array")?;
    let mut parsed = ParsedSet::default();
    for (index, jwk) in keys.iter().enumerate() {
        match parse_key(jwk) {
            Ok(key) => parsed.keys.push(key),
            Err(reason) => {
                let kid = jwk.get("kid").and_then(Value::as_str).unwrap_or("(none)");
                parsed.skipped.push(format!("key {index} (kid {kid}): {reason}"));
            }
        }
    }
    Ok(parsed)
}

/// One key, pinned to its algorithm, or why it cannot verify signatures.
fn parse_key(jwk: &Value) -> Result<PublicJwk, String> {
    let text = |name: &str| jwk.get(name).and_then(Value::as_str);
    let bytes = |name: &str| -> Result<Vec<u8>, String> {
        let text = text(name).ok_or_else(|| format!("missing {name}"))?;
        URL_SAFE_NO_PAD.decode(text).map_err(|_| format!("{name} is not base64url"))
    };
    if text("use").is_some_and(|u| u != "sig") {
        return Err("not a signature key (use)".into());
    }
    if let Some(ops) = jwk.get("key_ops").and_then(Value::as_array)
        && !ops.iter().any(|op| op == "verify")
    {
        return Err("not a verification key (key_ops)".into());
    }
    if jwk.get("d").is_some() {
        return Err("a private key has no place in a public key set".into());
    }
    let declared = text("alg");
    let kty = text("kty").ok_or("missing kty")?;
    let (algorithm, material) = match (kty, text("crv")) {
        ("RSA", _) => {
            let algorithm = match declared {
                None => Algorithm::Rs256,
                Some(alg @ ("RS256" | "RS384" | "RS512")) => Algorithm::from_name(alg).unwrap_or(Algorithm::Rs256),
                Some(other) => return Err(format!("alg {other} does not fit an RSA key")),
            };
            let (n, e) = (strip_leading_zeros(bytes("n")?), strip_leading_zeros(bytes("e")?));
            if n.len() < MIN_RSA_MODULUS_BYTES {
                return Err("RSA modulus shorter than 2048 bits".into());
            }
            if e.is_empty() {
                return Err("RSA exponent is zero".into());
            }
            (algorithm, KeyMaterial::Rsa { n, e })
        }
        ("EC", Some("P-256")) => {
            if declared.is_some_and(|alg| alg != "ES256") {
                return Err("a P-256 key is only for ES256".into());
            }
            let (x, y) = (bytes("x")?, bytes("y")?);
            if x.len() != 32 || y.len() != 32 {
                return Err("P-256 coordinates must be 32 bytes".into());
            }
            (Algorithm::Es256, KeyMaterial::P256 { x, y })
        }
        ("OKP", Some("Ed25519")) => {
            // "Ed25519" is the fully-specified name from RFC 9864.
            if declared.is_some_and(|alg| alg != "EdDSA" && alg != "Ed25519") {
                return Err("an Ed25519 key is only for EdDSA".into());
            }
            let x = bytes("x")?;
            if x.len() != 32 {
                return Err("an Ed25519 public key must be 32 bytes".into());
            }
            (Algorithm::EdDsa, KeyMaterial::Ed25519 { x })
        }
        (kty, crv) => return Err(format!("unsupported key type {kty} {}", crv.unwrap_or_default())),
    };
    Ok(PublicJwk { kid: text("kid").map(String::from), algorithm, material })
}

fn strip_leading_zeros(mut bytes: Vec<u8>) -> Vec<u8> {
    let zeros = bytes.iter().take_while(|b| **b == 0).count();
    bytes.drain(..zeros);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    #[test]
    fn each_key_is_pinned_to_the_algorithm_its_type_and_curve_allow() {
        let n = b64(&[0xc5; 256]);
        let rsa = |alg: Option<&str>| {
            let mut jwk = json!({"kty": "RSA", "kid": "r", "n": n, "e": "AQAB"});
            if let Some(alg) = alg {
                jwk["alg"] = json!(alg);
            }
            parse_key(&jwk).map(|k| k.algorithm)
        };
        assert_eq!(rsa(None), Ok(Algorithm::Rs256));
        assert_eq!(rsa(Some("RS512")), Ok(Algorithm::Rs512));
        assert!(rsa(Some("ES256")).is_err());
        let ec = json!({"kty": "EC", "crv": "P-256", "x": b64(&[1; 32]), "y": b64(&[2; 32]), "alg": "ES256"});
        assert_eq!(parse_key(&ec).map(|k| k.algorithm), Ok(Algorithm::Es256));
        let ed = json!({"kty": "OKP", "crv": "Ed25519", "x": b64(&[3; 32]), "alg": "Ed25519"});
        assert_eq!(parse_key(&ed).map(|k| k.algorithm), Ok(Algorithm::EdDsa));
    }

    #[test]
    fn keys_that_cannot_verify_are_skipped_with_their_reason() {
        let document = json!({"keys": [
            {"kty": "OKP", "crv": "Ed25519", "kid": "ok", "x": b64(&[3; 32])},
            {"kty": "RSA", "kid": "short", "n": b64(&[0xff; 64]), "e": "AQAB"},
            {"kty": "RSA", "kid": "enc", "use": "enc", "n": b64(&[0xff; 256]), "e": "AQAB"},
            {"kty": "EC", "crv": "P-256", "kid": "sign-only", "key_ops": ["sign"], "x": b64(&[1; 32]), "y": b64(&[2; 32])},
            {"kty": "EC", "crv": "P-256", "kid": "private", "d": "AA", "x": b64(&[1; 32]), "y": b64(&[2; 32])},
            {"kty": "EC", "crv": "P-384", "kid": "p384", "x": "AA", "y": "AA"},
            {"kty": "oct", "kid": "hmac", "k": "AAAA"},
            {"kid": "no-kty"},
        ]});
        let parsed = parse_set(document.to_string().as_bytes()).unwrap();
        assert_eq!(parsed.keys.iter().map(|k| k.kid.as_deref()).collect::<Vec<_>>(), [Some("ok")]);
        assert_eq!(parsed.skipped.len(), 7, "{:?}", parsed.skipped);
        assert!(parsed.skipped[0].contains("kid short") && parsed.skipped[0].contains("2048 bits"));
        assert!(parse_set(b"nope").is_err());
        assert!(parse_set(br#"{"keys": []}"#).unwrap().keys.is_empty());
    }
}
