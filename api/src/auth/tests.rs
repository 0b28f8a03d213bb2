//! The authenticator's tests: real keys (the fixtures' RSA pair, generated EC and Ed25519 keys),
//! key sets served over loopback HTTP, and every rejection RFC 6750 names.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::routing::get;
use jsonwebtoken::jwk::Jwk;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair};
use serde_json::{Value, json};

use super::*;

const ISSUER: &str = "https://idp.example.test/";
const AUDIENCE: &str = "integration-engine";
const TENANT: &str = "connectsoft";
const DEV_SECRET: &[u8] = b"dev-secret-that-is-32-bytes-long";
const RSA_PRIVATE_PEM: &[u8] = include_bytes!("../../../fixtures/keys/rsa-2048-test-only-private.pem");
const RSA_PUBLIC_PEM: &[u8] = include_bytes!("../../../fixtures/keys/rsa-2048-test-only-public.pem");

/// A signing key and the public JWK that verifies it.
struct TestKey {
    kid: String,
    algorithm: Algorithm,
    encoding_key: EncodingKey,
    jwk: Value,
}

impl TestKey {
    fn rsa(kid: &str) -> Self {
        let encoding_key = EncodingKey::from_rsa_pem(RSA_PRIVATE_PEM).unwrap();
        let jwk = serde_json::to_value(Jwk::from_encoding_key(&encoding_key, Algorithm::RS256).unwrap()).unwrap();
        Self::new(kid, Algorithm::RS256, encoding_key, jwk)
    }

    fn es256(kid: &str) -> Self {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
        // An uncompressed SEC1 point: 0x04 || x || y.
        let point = pair.public_key().as_ref();
        let jwk = json!({
            "kty": "EC",
            "crv": "P-256",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..]),
        });
        Self::new(kid, Algorithm::ES256, EncodingKey::from_ec_der(pkcs8.as_ref()), jwk)
    }

    fn ed25519(kid: &str) -> Self {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let jwk = json!({
            "kty": "OKP",
            "crv": "Ed25519",
            "x": URL_SAFE_NO_PAD.encode(pair.public_key().as_ref()),
        });
        Self::new(kid, Algorithm::EdDSA, EncodingKey::from_ed_der(pkcs8.as_ref()), jwk)
    }

    fn new(kid: &str, algorithm: Algorithm, encoding_key: EncodingKey, mut jwk: Value) -> Self {
        jwk["kid"] = json!(kid);
        jwk["use"] = json!("sig");
        Self { kid: kid.to_owned(), algorithm, encoding_key, jwk }
    }

    fn sign(&self, claims: &Value) -> String {
        self.sign_as(self.algorithm, &self.kid, claims)
    }

    fn sign_as(&self, algorithm: Algorithm, kid: &str, claims: &Value) -> String {
        let mut header = Header::new(algorithm);
        header.kid = Some(kid.to_owned());
        jsonwebtoken::encode(&header, claims, &self.encoding_key).unwrap()
    }
}

fn jwks_json(keys: &[&TestKey]) -> String {
    json!({ "keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() }).to_string()
}

/// Valid claims, with `overrides` merged in; an override of `null` removes the claim.
fn claims(overrides: Value) -> Value {
    let now = unix_now();
    let mut claims = json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "client-42",
        "client_id": "reporting-service",
        "tenantId": TENANT,
        "scope": "integration.runs.read integration.connections.read",
        "iat": now,
        "exp": now + 300,
    });
    for (name, value) in overrides.as_object().unwrap() {
        if value.is_null() {
            claims.as_object_mut().unwrap().remove(name);
        } else {
            claims[name] = value.clone();
        }
    }
    claims
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn rejection(result: Result<Principal, AuthError>) -> TokenRejection {
    match result {
        Err(AuthError::InvalidToken { reason }) => reason,
        other => panic!("expected an invalid token, got {other:?}"),
    }
}

fn write_jwks(path: &std::path::Path, keys: &[&TestKey]) {
    std::fs::write(path, jwks_json(keys)).unwrap();
}

async fn file_authenticator(keys: &[&TestKey]) -> (Authenticator, tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    write_jwks(&path, keys);
    let config = AuthConfig::with_jwks(JwksSource::File(path.clone()), ISSUER, AUDIENCE);
    (Authenticator::new(config).await.unwrap(), dir, path)
}

/// A local JWKS endpoint that counts the GETs it answers.
struct JwksServer {
    url: String,
    body: Arc<Mutex<String>>,
    hits: Arc<AtomicUsize>,
}

impl JwksServer {
    async fn start(keys: &[&TestKey]) -> Self {
        let body = Arc::new(Mutex::new(jwks_json(keys)));
        let hits = Arc::new(AtomicUsize::new(0));
        let router = axum::Router::new().route(
            "/.well-known/jwks.json",
            get({
                let body = Arc::clone(&body);
                let hits = Arc::clone(&hits);
                move || async move {
                    hits.fetch_add(1, Ordering::SeqCst);
                    let document = body.lock().unwrap().clone();
                    ([(axum::http::header::CONTENT_TYPE, "application/json")], document)
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/.well-known/jwks.json", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        Self { url, body, hits }
    }

    fn serve(&self, keys: &[&TestKey]) {
        *self.body.lock().unwrap() = jwks_json(keys);
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    fn config(&self) -> AuthConfig {
        AuthConfig::with_jwks(JwksSource::Url(self.url.clone()), ISSUER, AUDIENCE)
    }
}

// --- accepted tokens ---------------------------------------------------------------------

#[tokio::test]
async fn rs256_token_is_accepted_with_scopes_from_the_scope_claim() {
    let key = TestKey::rsa("rsa-1");
    let (auth, _dir, _) = file_authenticator(&[&key]).await;

    let principal = auth.authenticate(Some(&bearer(&key.sign(&claims(json!({})))))).await.unwrap();

    assert_eq!(principal.subject, "client-42");
    assert_eq!(principal.client_id.as_deref(), Some("reporting-service"));
    assert_eq!(principal.tenant_id, TENANT);
    assert!(principal.has_scope("integration.runs.read"));
    assert!(principal.has_scope("integration.connections.read"));
    assert!(!principal.has_scope("integration.connections.write"));
}

#[tokio::test]
async fn es256_token_is_accepted_with_scopes_from_an_scp_array() {
    let key = TestKey::es256("ec-1");
    let (auth, _dir, _) = file_authenticator(&[&key]).await;
    let token = key.sign(&claims(json!({
        "scope": null,
        "scp": ["webhooks.subscriptions.write", "integration.runs.read"],
    })));

    let principal = auth.authenticate(Some(&bearer(&token))).await.unwrap();

    let expected: BTreeSet<String> =
        ["integration.runs.read", "webhooks.subscriptions.write"].map(str::to_owned).into();
    assert_eq!(principal.scopes, expected);
}

#[tokio::test]
async fn eddsa_token_is_accepted_with_scopes_from_an_scp_string() {
    let key = TestKey::ed25519("ed-1");
    let (auth, _dir, _) = file_authenticator(&[&key]).await;
    let token = key.sign(&claims(json!({
        "scope": null,
        "client_id": null,
        "azp": "studio",
        "scp": "integration.credentials.rotate integration.providers.write",
    })));

    let principal = auth.authenticate(Some(&bearer(&token))).await.unwrap();

    assert!(principal.has_scope("integration.credentials.rotate"));
    assert!(principal.has_scope("integration.providers.write"));
    assert_eq!(principal.scopes.len(), 2);
    assert_eq!(principal.client_id.as_deref(), Some("studio"));
}

#[tokio::test]
async fn token_listing_several_audiences_including_ours_is_accepted() {
    let key = TestKey::es256("ec-1");
    let (auth, _dir, _) = file_authenticator(&[&key]).await;
    let token = key.sign(&claims(json!({ "aud": ["billing", AUDIENCE] })));

    assert!(auth.authenticate(Some(&bearer(&token))).await.is_ok());
}

#[tokio::test]
async fn token_expired_within_the_leeway_is_accepted() {
    let key = TestKey::es256("ec-1");
    let (auth, _dir, _) = file_authenticator(&[&key]).await;
    let token = key.sign(&claims(json!({ "exp": unix_now() - 10 })));

    assert!(auth.authenticate(Some(&bearer(&token))).await.is_ok());
}

// --- refused tokens ----------------------------------------------------------------------

#[tokio::test]
async fn expired_token_is_rejected() {
    let key = TestKey::rsa("rsa-1");
    let (auth, _dir, _) = file_authenticator(&[&key]).await;
    let token = key.sign(&claims(json!({ "exp": unix_now() - 120 })));

    assert_eq!(rejection(auth.authenticate(Some(&bearer(&token))).await), TokenRejection::Expired);
}

#[tokio::test]
async fn token_without_exp_is_rejected() {
    let key = TestKey::es256("ec-1");
    let (auth, _dir, _) = file_authenticator(&[&key]).await;
    let token = key.sign(&claims(json!({ "exp": null })));

    assert_eq!(rejection(auth.authenticate(Some(&bearer(&token))).await), TokenRejection::MissingClaim("exp"));
}

#[tokio::test]
async fn token_whose_nbf_is_in_the_future_is_rejected() {
    let key = TestKey::es256("ec-1");
    let (auth, _dir, _) = file_authenticator(&[&key]).await;
    let token = key.sign(&claims(json!({ "nbf": unix_now() + 300 })));

    assert_eq!(rejection(auth.authenticate(Some(&bearer(&token))).await), TokenRejection::NotYetValid);
}

#[tokio::test]
async fn token_from_another_issuer_is_rejected() {
    let key = TestKey::ed25519("ed-1");
    let (auth, _dir, _) = file_authenticator(&[&key]).await;
    let token = key.sign(&claims(json!({ "iss": "https://evil.example.test/" })));

    assert_eq!(rejection(auth.authenticate(Some(&bearer(&token))).await), TokenRejection::WrongIssuer);
}

#[tokio::test]
async fn token_for_another_audience_is_rejected() {
    let key = TestKey::ed25519("ed-1");
    let (auth, _dir, _) = file_authenticator(&[&key]).await;
    let token = key.sign(&claims(json!({ "aud": "billing" })));

    assert_eq!(rejection(auth.authenticate(Some(&bearer(&token))).await), TokenRejection::WrongAudience);
}

#[tokio::test]
async fn token_without_issuer_or_audience_is_rejected() {
    let key = TestKey::es256("ec-1");
    let (auth, _dir, _) = file_authenticator(&[&key]).await;

    let without_aud = key.sign(&claims(json!({ "aud": null })));
    let without_iss = key.sign(&claims(json!({ "iss": null })));

    assert_eq!(rejection(auth.authenticate(Some(&bearer(&without_aud))).await), TokenRejection::MissingClaim("aud"));
    assert_eq!(rejection(auth.authenticate(Some(&bearer(&without_iss))).await), TokenRejection::MissingClaim("iss"));
}

#[tokio::test]
async fn token_without_tenant_id_is_rejected() {
    let key = TestKey::rsa("rsa-1");
    let (auth, _dir, _) = file_authenticator(&[&key]).await;

    let without = key.sign(&claims(json!({ "tenantId": null })));
    let empty = key.sign(&claims(json!({ "tenantId": "" })));

    assert_eq!(rejection(auth.authenticate(Some(&bearer(&without))).await), TokenRejection::MissingClaim("tenantId"));
    assert_eq!(rejection(auth.authenticate(Some(&bearer(&empty))).await), TokenRejection::MalformedClaim("tenantId"));
}

#[tokio::test]
async fn token_without_subject_is_rejected() {
    let key = TestKey::rsa("rsa-1");
    let (auth, _dir, _) = file_authenticator(&[&key]).await;
    let token = key.sign(&claims(json!({ "sub": null })));

    assert_eq!(rejection(auth.authenticate(Some(&bearer(&token))).await), TokenRejection::MissingClaim("sub"));
}

#[tokio::test]
async fn token_signed_by_another_key_under_a_known_kid_is_rejected() {
    let published = TestKey::es256("ec-1");
    let impostor = TestKey::es256("ec-1");
    let (auth, _dir, _) = file_authenticator(&[&published]).await;
    let token = impostor.sign(&claims(json!({})));

    assert_eq!(rejection(auth.authenticate(Some(&bearer(&token))).await), TokenRejection::BadSignature);
}

#[tokio::test]
async fn tampered_claims_break_the_signature() {
    let key = TestKey::ed25519("ed-1");
    let (auth, _dir, _) = file_authenticator(&[&key]).await;
    let token = key.sign(&claims(json!({})));
    let forged_claims = URL_SAFE_NO_PAD.encode(claims(json!({ "tenantId": "victim" })).to_string());
    let parts: Vec<&str> = token.split('.').collect();
    let forged = format!("{}.{}.{}", parts[0], forged_claims, parts[2]);

    assert_eq!(rejection(auth.authenticate(Some(&bearer(&forged))).await), TokenRejection::BadSignature);
}

#[tokio::test]
async fn rs256_header_naming_an_ec_key_is_rejected() {
    let rsa = TestKey::rsa("rsa-1");
    let ec = TestKey::es256("ec-1");
    let (auth, _dir, _) = file_authenticator(&[&rsa, &ec]).await;
    // A valid RS256 signature, but the header claims the EC key: the key pins ES256.
    let token = rsa.sign_as(Algorithm::RS256, &ec.kid, &claims(json!({})));

    assert_eq!(rejection(auth.authenticate(Some(&bearer(&token))).await), TokenRejection::AlgorithmMismatch);
}

#[tokio::test]
async fn rs384_header_on_a_key_pinned_to_rs256_is_rejected() {
    let rsa = TestKey::rsa("rsa-1");
    let (auth, _dir, _) = file_authenticator(&[&rsa]).await;
    let token = rsa.sign_as(Algorithm::RS384, &rsa.kid, &claims(json!({})));

    assert_eq!(rejection(auth.authenticate(Some(&bearer(&token))).await), TokenRejection::AlgorithmMismatch);
}

#[tokio::test]
async fn hs256_token_signed_with_the_rsa_public_key_is_rejected_without_a_dev_secret() {
    let rsa = TestKey::rsa("rsa-1");
    let (auth, _dir, _) = file_authenticator(&[&rsa]).await;
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(rsa.kid.clone());
    let forged =
        jsonwebtoken::encode(&header, &claims(json!({})), &EncodingKey::from_secret(RSA_PUBLIC_PEM).unwrap()).unwrap();

    assert_eq!(rejection(auth.authenticate(Some(&bearer(&forged))).await), TokenRejection::HmacNotAccepted);
}

#[tokio::test]
async fn hs256_token_is_verified_only_against_the_dev_secret() {
    let rsa = TestKey::rsa("rsa-1");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    write_jwks(&path, &[&rsa]);
    let config = AuthConfig {
        dev_hs256_secret: Some(DEV_SECRET.to_vec()),
        ..AuthConfig::with_jwks(JwksSource::File(path), ISSUER, AUDIENCE)
    };
    let auth = Authenticator::new(config).await.unwrap();
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(rsa.kid.clone());
    let forged =
        jsonwebtoken::encode(&header, &claims(json!({})), &EncodingKey::from_secret(RSA_PUBLIC_PEM).unwrap()).unwrap();

    assert_eq!(rejection(auth.authenticate(Some(&bearer(&forged))).await), TokenRejection::BadSignature);
    // Both kinds of token are accepted side by side, each against its own key.
    let dev = mint_dev_token(DEV_SECRET, ISSUER, AUDIENCE, "dev", TENANT, &[], Duration::from_secs(60)).unwrap();
    assert!(auth.authenticate(Some(&bearer(&dev))).await.is_ok());
    assert!(auth.authenticate(Some(&bearer(&rsa.sign(&claims(json!({})))))).await.is_ok());
}

#[tokio::test]
async fn alg_none_token_is_rejected() {
    let rsa = TestKey::rsa("rsa-1");
    let (auth, _dir, _) = file_authenticator(&[&rsa]).await;
    for alg in ["none", "None", "NONE"] {
        let header = URL_SAFE_NO_PAD.encode(json!({ "alg": alg, "typ": "JWT", "kid": "rsa-1" }).to_string());
        let payload = URL_SAFE_NO_PAD.encode(claims(json!({})).to_string());
        let unsigned = format!("{header}.{payload}.");

        assert_eq!(
            rejection(auth.authenticate(Some(&bearer(&unsigned))).await),
            TokenRejection::UnsupportedAlgorithm,
            "alg {alg}"
        );
    }
}

#[tokio::test]
async fn asymmetric_token_without_kid_is_rejected() {
    let key = TestKey::es256("ec-1");
    let (auth, _dir, _) = file_authenticator(&[&key]).await;
    let token = jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims(json!({})), &key.encoding_key).unwrap();

    assert_eq!(rejection(auth.authenticate(Some(&bearer(&token))).await), TokenRejection::MissingKeyId);
}

#[tokio::test]
async fn garbage_token_is_malformed() {
    let key = TestKey::es256("ec-1");
    let (auth, _dir, _) = file_authenticator(&[&key]).await;

    for token in ["abc", "a.b", "a.b.c.d.e", "!!!.e30.sig", "e30.e30.sig"] {
        assert!(
            matches!(
                rejection(auth.authenticate(Some(&bearer(token))).await),
                TokenRejection::Malformed | TokenRejection::UnsupportedAlgorithm
            ),
            "{token}"
        );
    }
}

// --- JWKS loading and re-fetching --------------------------------------------------------

#[tokio::test]
async fn unknown_kid_rereads_the_jwks_file() {
    let old = TestKey::es256("2024-key");
    let rotated_in = TestKey::ed25519("2025-key");
    let (auth, _dir, path) = file_authenticator(&[&old]).await;
    write_jwks(&path, &[&old, &rotated_in]);

    let principal = auth.authenticate(Some(&bearer(&rotated_in.sign(&claims(json!({})))))).await.unwrap();

    assert_eq!(principal.tenant_id, TENANT);
}

#[tokio::test]
async fn url_jwks_is_fetched_at_start_and_cached_for_known_kids() {
    let first = TestKey::rsa("rsa-1");
    let second = TestKey::es256("ec-1");
    let server = JwksServer::start(&[&first, &second]).await;

    let auth = Authenticator::new(server.config()).await.unwrap();
    assert_eq!(server.hits(), 1);

    auth.authenticate(Some(&bearer(&first.sign(&claims(json!({})))))).await.unwrap();
    auth.authenticate(Some(&bearer(&second.sign(&claims(json!({})))))).await.unwrap();
    assert_eq!(server.hits(), 1);
}

#[tokio::test]
async fn unknown_kid_refetch_from_a_url_is_rate_limited() {
    let known = TestKey::es256("ec-1");
    let rotated_in = TestKey::ed25519("ed-1");
    let server = JwksServer::start(&[&known]).await;
    let auth = Authenticator::new(server.config()).await.unwrap();
    server.serve(&[&known, &rotated_in]);

    auth.authenticate(Some(&bearer(&rotated_in.sign(&claims(json!({})))))).await.unwrap();
    assert_eq!(server.hits(), 2);

    let sprayed = known.sign_as(Algorithm::ES256, "made-up-kid", &claims(json!({})));
    for _ in 0..5 {
        assert_eq!(rejection(auth.authenticate(Some(&bearer(&sprayed))).await), TokenRejection::UnknownKeyId);
    }
    assert_eq!(server.hits(), 2, "misses inside the back-off interval must not refetch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_unknown_kid_misses_share_one_fetch() {
    let known = TestKey::es256("ec-1");
    let rotated_in = TestKey::ed25519("ed-1");
    let server = JwksServer::start(&[&known]).await;
    let auth = Authenticator::new(server.config()).await.unwrap();
    server.serve(&[&known, &rotated_in]);

    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let auth = auth.clone();
            // Distinct tokens, so none is answered from the token cache.
            let token = rotated_in.sign(&claims(json!({ "jti": i })));
            tokio::spawn(async move { auth.authenticate(Some(&bearer(&token))).await })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }

    assert_eq!(server.hits(), 2);
}

#[tokio::test]
async fn stale_jwks_is_refreshed_so_withdrawn_keys_stop_verifying() {
    let withdrawn = TestKey::es256("ec-1");
    let current = TestKey::ed25519("ed-1");
    let server = JwksServer::start(&[&withdrawn, &current]).await;
    let tuning = Tuning { jwks_refetch_interval: Duration::ZERO, jwks_max_age: Duration::ZERO, ..Tuning::default() };
    let auth = Authenticator::with_tuning(server.config(), tuning).await.unwrap();
    server.serve(&[&current]);

    let result = auth.authenticate(Some(&bearer(&withdrawn.sign(&claims(json!({})))))).await;

    assert_eq!(rejection(result), TokenRejection::UnknownKeyId);
    assert!(auth.authenticate(Some(&bearer(&current.sign(&claims(json!({})))))).await.is_ok());
}

#[tokio::test]
async fn failed_refetch_keeps_the_known_keys_and_reports_the_jwks_unavailable() {
    let known = TestKey::es256("ec-1");
    let (auth, _dir, path) = file_authenticator(&[&known]).await;
    std::fs::remove_file(&path).unwrap();

    let unknown = known.sign_as(Algorithm::ES256, "ec-2", &claims(json!({})));
    assert!(matches!(auth.authenticate(Some(&bearer(&unknown))).await, Err(AuthError::JwksUnavailable { .. })));
    // Requests inside the back-off interval get the same answer without another read.
    assert!(matches!(auth.authenticate(Some(&bearer(&unknown))).await, Err(AuthError::JwksUnavailable { .. })));
    assert!(auth.authenticate(Some(&bearer(&known.sign(&claims(json!({})))))).await.is_ok());
}

#[tokio::test]
async fn unreachable_jwks_url_fails_at_start() {
    // Bind then drop, so the port is (almost certainly) closed.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    drop(listener);

    let result = Authenticator::new(AuthConfig::with_jwks(JwksSource::Url(url), ISSUER, AUDIENCE)).await;

    assert!(matches!(result, Err(AuthError::JwksUnavailable { .. })), "{result:?}");
}

#[tokio::test]
async fn missing_jwks_file_fails_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = AuthConfig::with_jwks(JwksSource::File(dir.path().join("absent.json")), ISSUER, AUDIENCE);

    assert!(matches!(Authenticator::new(config).await, Err(AuthError::JwksUnavailable { .. })));
}

#[tokio::test]
async fn plain_http_jwks_url_is_refused_unless_loopback() {
    let config =
        AuthConfig::with_jwks(JwksSource::Url("http://idp.example.test/jwks.json".to_owned()), ISSUER, AUDIENCE);

    assert!(matches!(Authenticator::new(config).await, Err(AuthError::Misconfigured { .. })));
    assert!(is_loopback_host("127.0.0.1"));
    assert!(is_loopback_host("[::1]"));
    assert!(is_loopback_host("localhost"));
    assert!(!is_loopback_host("10.0.0.1"));
}

#[tokio::test]
async fn jwks_key_whose_alg_contradicts_its_type_is_skipped() {
    let good = TestKey::es256("ec-1");
    let mut contradicting = TestKey::rsa("rsa-1");
    contradicting.jwk["alg"] = json!("ES256");
    let (auth, _dir, _) = file_authenticator(&[&good, &contradicting]).await;

    let token = contradicting.sign(&claims(json!({})));

    assert_eq!(rejection(auth.authenticate(Some(&bearer(&token))).await), TokenRejection::UnknownKeyId);
}

#[test]
fn unusable_jwks_keys_are_skipped_without_failing_the_set() {
    let good = TestKey::ed25519("ed-1");
    let document = json!({ "keys": [
        good.jwk,
        { "kty": "OKP", "crv": "Ed25519", "kid": "short", "x": URL_SAFE_NO_PAD.encode([7u8; 8]) },
        { "kty": "oct", "kid": "hmac", "k": URL_SAFE_NO_PAD.encode(DEV_SECRET) },
        { "kty": "EC", "crv": "P-384", "kid": "p384", "x": "AA", "y": "AA" },
        { "kty": "RSA", "kid": "enc", "use": "enc", "n": "AQAB", "e": "AQAB" },
        { "kty": "RSA", "kid": "tiny", "n": URL_SAFE_NO_PAD.encode([0xffu8; 64]), "e": "AQAB" },
        { "kty": "EC", "crv": "P-256", "kid": "off-curve",
          "x": URL_SAFE_NO_PAD.encode([1u8; 32]), "y": URL_SAFE_NO_PAD.encode([2u8; 32]) },
        { "kid": "no-kty" },
    ]});

    let keys = parse_jwks(document.to_string().as_bytes()).unwrap();

    assert_eq!(keys.keys().collect::<Vec<_>>(), vec!["ed-1"]);
}

#[test]
fn jwks_without_a_usable_key_is_an_error() {
    assert!(parse_jwks(br#"{"keys":[]}"#).is_err());
    assert!(parse_jwks(b"not json").is_err());
}

// --- configuration -----------------------------------------------------------------------

#[tokio::test]
async fn jwks_without_issuer_or_audience_is_refused_at_start() {
    let key = TestKey::es256("ec-1");
    let (_, _dir, path) = file_authenticator(&[&key]).await;
    let without_issuer =
        AuthConfig { issuer: None, ..AuthConfig::with_jwks(JwksSource::File(path.clone()), ISSUER, AUDIENCE) };
    let without_audience =
        AuthConfig { audience: None, ..AuthConfig::with_jwks(JwksSource::File(path), ISSUER, AUDIENCE) };

    for config in [without_issuer, without_audience, AuthConfig::default()] {
        assert!(matches!(Authenticator::new(config).await, Err(AuthError::Misconfigured { .. })));
    }
}

#[tokio::test]
async fn short_dev_secret_or_large_leeway_is_refused() {
    assert!(matches!(
        Authenticator::new(AuthConfig::dev(b"short".to_vec())).await,
        Err(AuthError::Misconfigured { .. })
    ));
    assert!(matches!(
        mint_dev_token(b"short", DEV_ISSUER, DEV_AUDIENCE, "dev", TENANT, &[], Duration::from_secs(60)),
        Err(AuthError::Misconfigured { .. })
    ));
    let lax = AuthConfig { leeway_seconds: MAX_LEEWAY_SECONDS + 1, ..AuthConfig::dev(DEV_SECRET) };
    assert!(matches!(Authenticator::new(lax).await, Err(AuthError::Misconfigured { .. })));
}

#[test]
fn debug_output_redacts_the_dev_secret() {
    let rendered = format!("{:?}", AuthConfig::dev(DEV_SECRET));

    assert!(!rendered.contains("dev-secret"), "{rendered}");
    assert!(rendered.contains("<redacted>"));
}

// --- development tokens ------------------------------------------------------------------

#[tokio::test]
async fn minted_dev_token_is_accepted_with_the_dev_secret() {
    let auth = Authenticator::new(AuthConfig::dev(DEV_SECRET)).await.unwrap();
    let token = mint_dev_token(
        DEV_SECRET,
        DEV_ISSUER,
        DEV_AUDIENCE,
        "alice",
        TENANT,
        &["integration.connections.write", "integration.runs.read"],
        Duration::from_secs(300),
    )
    .unwrap();

    let principal = auth.authenticate(Some(&bearer(&token))).await.unwrap();

    assert_eq!(principal.subject, "alice");
    assert_eq!(principal.tenant_id, TENANT);
    assert_eq!(principal.client_id, None);
    assert!(principal.has_scope("integration.connections.write"));
    assert!(principal.has_scope("integration.runs.read"));
}

#[tokio::test]
async fn roles_are_read_from_the_configured_claim_only_when_a_policy_is_configured() {
    let ttl = Duration::from_secs(300);
    let with_roles =
        mint_dev_token_with_roles(DEV_SECRET, DEV_ISSUER, DEV_AUDIENCE, "a", TENANT, &[], &["auditor", "admin"], ttl)
            .unwrap();
    let policy = RolePolicy::parse("getRun=auditor", &["getRun"]).unwrap();
    let configured = |claim: &str| AuthConfig {
        roles: Some(RoleRules { claim: claim.to_owned(), policy: policy.clone() }),
        ..AuthConfig::dev(DEV_SECRET)
    };

    let auth = Authenticator::new(configured("roles")).await.unwrap();
    let principal = auth.authenticate(Some(&bearer(&with_roles))).await.unwrap();
    assert_eq!(principal.roles, BTreeSet::from(["admin".to_owned(), "auditor".to_owned()]));
    assert_eq!(auth.role_policy(), Some(&policy));

    let elsewhere = Authenticator::new(configured("/realm_access/roles")).await.unwrap();
    assert!(elsewhere.authenticate(Some(&bearer(&with_roles))).await.unwrap().roles.is_empty());

    let unconfigured = Authenticator::new(AuthConfig::dev(DEV_SECRET)).await.unwrap();
    assert!(unconfigured.authenticate(Some(&bearer(&with_roles))).await.unwrap().roles.is_empty());
    assert_eq!(unconfigured.role_policy(), None);

    let now = unix_now();
    let malformed = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({ "iss": DEV_ISSUER, "aud": DEV_AUDIENCE, "sub": "a", "tenantId": TENANT, "exp": now + 60, "roles": 7 }),
        &EncodingKey::from_secret(DEV_SECRET).unwrap(),
    )
    .unwrap();
    assert_eq!(rejection(auth.authenticate(Some(&bearer(&malformed))).await), TokenRejection::MalformedClaim("roles"));
}

#[tokio::test]
async fn dev_token_signed_with_another_secret_or_for_another_audience_is_rejected() {
    let auth = Authenticator::new(AuthConfig::dev(DEV_SECRET)).await.unwrap();
    let other_secret = [9u8; 32];
    let ttl = Duration::from_secs(60);

    let wrong_secret = mint_dev_token(&other_secret, DEV_ISSUER, DEV_AUDIENCE, "a", TENANT, &[], ttl).unwrap();
    let wrong_audience = mint_dev_token(DEV_SECRET, DEV_ISSUER, "elsewhere", "a", TENANT, &[], ttl).unwrap();
    let wrong_issuer = mint_dev_token(DEV_SECRET, "someone", DEV_AUDIENCE, "a", TENANT, &[], ttl).unwrap();

    assert_eq!(rejection(auth.authenticate(Some(&bearer(&wrong_secret))).await), TokenRejection::BadSignature);
    assert_eq!(rejection(auth.authenticate(Some(&bearer(&wrong_audience))).await), TokenRejection::WrongAudience);
    assert_eq!(rejection(auth.authenticate(Some(&bearer(&wrong_issuer))).await), TokenRejection::WrongIssuer);
}

#[tokio::test]
async fn hs384_is_rejected_even_in_dev_mode() {
    let auth = Authenticator::new(AuthConfig::dev(DEV_SECRET)).await.unwrap();
    let now = unix_now();
    let token = jsonwebtoken::encode(
        &Header::new(Algorithm::HS384),
        &json!({ "iss": DEV_ISSUER, "aud": DEV_AUDIENCE, "sub": "a", "tenantId": TENANT, "exp": now + 60 }),
        &EncodingKey::from_secret(DEV_SECRET).unwrap(),
    )
    .unwrap();

    assert_eq!(rejection(auth.authenticate(Some(&bearer(&token))).await), TokenRejection::HmacNotAccepted);
}

#[tokio::test]
async fn asymmetric_token_is_rejected_when_only_a_dev_secret_is_configured() {
    let auth = Authenticator::new(AuthConfig::dev(DEV_SECRET)).await.unwrap();
    let key = TestKey::es256("ec-1");
    let token = key.sign(&claims(json!({ "iss": DEV_ISSUER, "aud": DEV_AUDIENCE })));

    assert_eq!(rejection(auth.authenticate(Some(&bearer(&token))).await), TokenRejection::UnsupportedAlgorithm);
}

#[test]
fn minting_refuses_scopes_with_whitespace() {
    let result = mint_dev_token(
        DEV_SECRET,
        DEV_ISSUER,
        DEV_AUDIENCE,
        "a",
        TENANT,
        &["integration.runs.read integration.credentials.rotate"],
        Duration::from_secs(60),
    );

    assert!(matches!(result, Err(AuthError::Misconfigured { .. })));
}

// --- the Authorization header and challenges ---------------------------------------------

#[tokio::test]
async fn missing_authorization_header_is_a_missing_token_with_a_realm_challenge() {
    let auth = Authenticator::new(AuthConfig::dev(DEV_SECRET)).await.unwrap();

    let error = auth.authenticate(None).await.unwrap_err();

    assert_eq!(error, AuthError::MissingToken);
    assert_eq!(error.www_authenticate(), r#"Bearer realm="integration-engine""#);
    assert_eq!(error.status_code(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn basic_scheme_is_treated_as_a_missing_bearer_token() {
    let auth = Authenticator::new(AuthConfig::dev(DEV_SECRET)).await.unwrap();

    let error = auth.authenticate(Some("Basic YWxpY2U6c2VjcmV0")).await.unwrap_err();

    assert_eq!(error, AuthError::MissingToken);
    assert_eq!(error.www_authenticate(), r#"Bearer realm="integration-engine""#);
}

#[tokio::test]
async fn bearer_scheme_is_matched_case_insensitively() {
    let auth = Authenticator::new(AuthConfig::dev(DEV_SECRET)).await.unwrap();
    let token =
        mint_dev_token(DEV_SECRET, DEV_ISSUER, DEV_AUDIENCE, "a", TENANT, &[], Duration::from_secs(60)).unwrap();

    for scheme in ["bearer", "BEARER", "BeArEr"] {
        assert!(auth.authenticate(Some(&format!("{scheme} {token}"))).await.is_ok(), "{scheme}");
    }
}

#[tokio::test]
async fn bearer_scheme_without_a_single_token_is_an_invalid_token() {
    let auth = Authenticator::new(AuthConfig::dev(DEV_SECRET)).await.unwrap();

    for header in ["Bearer", "Bearer   ", "Bearer a.b.c d.e.f"] {
        let error = auth.authenticate(Some(header)).await.unwrap_err();
        assert_eq!(error, AuthError::InvalidToken { reason: TokenRejection::MalformedHeader }, "{header:?}");
    }
}

#[test]
fn invalid_token_challenge_names_the_failed_check() {
    let error = AuthError::InvalidToken { reason: TokenRejection::Expired };

    assert_eq!(error.www_authenticate(), r#"Bearer error="invalid_token", error_description="the token has expired""#);
    assert_eq!(error.status_code(), StatusCode::UNAUTHORIZED);
}

#[test]
fn insufficient_scope_challenge_names_the_scope() {
    assert_eq!(
        insufficient_scope_challenge("integration.connections.write"),
        r#"Bearer error="insufficient_scope", scope="integration.connections.write""#
    );
    // Nothing can break out of the quoted value.
    assert_eq!(insufficient_scope_challenge("a\"b\\c\r\nd"), r#"Bearer error="insufficient_scope", scope="a?b?c??d""#);
}

#[test]
fn jwks_unavailable_is_a_service_unavailable() {
    let error = AuthError::JwksUnavailable { reason: "down".to_owned() };

    assert_eq!(error.status_code(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(error.www_authenticate(), r#"Bearer realm="integration-engine""#);
}

// --- verified-token cache ----------------------------------------------------------------

#[tokio::test]
async fn repeated_token_is_answered_from_the_cache_with_the_same_principal() {
    let key = TestKey::rsa("rsa-1");
    let (auth, _dir, _) = file_authenticator(&[&key]).await;
    let header = bearer(&key.sign(&claims(json!({}))));

    let first = auth.authenticate(Some(&header)).await.unwrap();
    let cached = auth.cached(&token_digest(header.trim_start_matches("Bearer ")));
    let second = auth.authenticate(Some(&header)).await.unwrap();

    assert_eq!(cached.as_ref(), Some(&first));
    assert_eq!(second, first);
}

fn principal(subject: &str) -> Principal {
    Principal {
        subject: subject.to_owned(),
        client_id: None,
        tenant_id: TENANT.to_owned(),
        scopes: BTreeSet::new(),
        roles: BTreeSet::new(),
    }
}

#[test]
fn token_cache_serves_an_entry_only_before_its_exp() {
    let cache = TokenCache::new(10);
    let key = token_digest("token");
    cache.insert(key, principal("a"), 1_000, 900);

    assert_eq!(cache.get(&key, 999), Some(principal("a")));
    assert_eq!(cache.get(&key, 1_000), None);
    assert!(cache.entries.is_empty(), "the expired entry is dropped");

    cache.insert(key, principal("a"), 1_000, 1_000);
    assert!(cache.entries.is_empty(), "an already expired token is not cached");
}

#[test]
fn token_cache_stays_bounded_and_keeps_a_token_in_use() {
    let cache = TokenCache::new(100);
    let now = 1_000;
    let busy = token_digest("busy");
    cache.insert(busy, principal("b"), now + 10_000, now);
    for i in 0..1_000u64 {
        cache.insert(token_digest(&format!("u{i}")), principal("c"), now + 50 + i, now);
        assert!(cache.entries.len() <= 100, "{} entries", cache.entries.len());
        // A token every request carries stays while one-off tokens come and go.
        assert!(cache.get(&busy, now).is_some(), "the busy token was evicted after {i} others");
    }
}
