//! The CLI contract other tools drive: `verify` names a tampered event, `secrets` keeps values
//! encrypted and shows them only on request, `serve --jwks` accepts the identity provider's keys.

use crate::support;

use std::process::Command;

use serde_json::{Value, json};
use support::{ALL_SCOPES, BIN, put_secret, spawn_app_in};

fn run(args: &[&str], data_dir: &std::path::Path) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .env_remove("IE_MASTER_KEY")
        .output()
        .expect("run binary")
}

#[tokio::test]
async fn verify_reports_the_first_tampered_event() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app_in(dir.path(), &[]);
    let token = app.token("connectsoft", ALL_SCOPES);
    for key in ["github", "twilio-sms", "stripe"] {
        let body = json!({ "key": key, "displayName": key, "category": "X", "authModel": "ApiKey",
                           "apiClient": "Vendor.Client", "capabilities": [], "baseUrl": "https://example.com" });
        assert_eq!(app.post_json("/integrations/providers", &token, &body).await.status(), 201);
    }
    app.kill();

    let ok = run(&["verify"], dir.path());
    let text = String::from_utf8_lossy(&ok.stdout);
    assert!(ok.status.success(), "{text}");
    assert!(text.contains("checked 3 events in 3 streams"), "{text}");

    let db = rusqlite::Connection::open(dir.path().join("events.db")).unwrap();
    let changed = db
        .execute(
            "UPDATE events SET data = json_set(data, '$.baseUrl', 'https://evil.example') WHERE global_position = 2",
            [],
        )
        .unwrap();
    assert_eq!(changed, 1);
    let event_id: String =
        db.query_row("SELECT event_id FROM events WHERE global_position = 2", [], |r| r.get(0)).unwrap();
    drop(db);

    let broken = run(&["verify"], dir.path());
    let text = String::from_utf8_lossy(&broken.stdout);
    assert_eq!(broken.status.code(), Some(1), "{text}");
    assert!(text.contains(&event_id) && text.contains("connectsoft/prov-twilio-sms"), "{text}");
    let other_tenant = run(&["verify", "--tenant", "globex"], dir.path());
    assert!(other_tenant.status.success(), "{}", String::from_utf8_lossy(&other_tenant.stdout));
}

#[test]
fn secrets_are_encrypted_at_rest_and_revealed_only_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let value = "s3cr3t-value-that-must-not-leak";
    put_secret(dir.path(), "kv://factory/github-booking", value);
    put_secret(dir.path(), "kv://factory/github-booking", "second-version");

    let list = run(&["secrets", "list"], dir.path());
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(text.contains("kv://factory/github-booking") && text.contains("current=2"), "{text}");
    assert!(!text.contains(value) && !text.contains("second-version"));

    let show = run(&["secrets", "show", "kv://factory/github-booking?version=1"], dir.path());
    assert!(!String::from_utf8_lossy(&show.stdout).contains(value));
    let reveal = run(&["secrets", "show", "kv://factory/github-booking?version=1", "--reveal"], dir.path());
    assert!(String::from_utf8_lossy(&reveal.stdout).contains(value));

    let raw = std::fs::read(dir.path().join("vault.db")).unwrap();
    assert!(!raw.windows(value.len()).any(|w| w == value.as_bytes()), "plaintext found in vault.db");

    let bad = run(&["secrets", "put", "not-a-ref", "--tenant", "connectsoft"], dir.path());
    assert!(!bad.status.success());
}

/// Every vault has one owner: `secrets put` names it (`--tenant T` or `--shared`), a vault is
/// never given to a second owner, and `secrets list` shows whose each vault is.
#[test]
fn every_vault_belongs_to_one_tenant_or_is_shared() {
    let dir = tempfile::tempdir().unwrap();
    let ownerless = run(&["secrets", "put", "kv://factory/github-token"], dir.path());
    assert!(!ownerless.status.success());
    let said = String::from_utf8_lossy(&ownerless.stderr);
    assert!(said.contains("--tenant") && said.contains("--shared"), "{said}");

    put_secret(dir.path(), "kv://factory/github-token", "acme-token");
    support::put_secret_as(dir.path(), "kv://ops/github-hook", "hook-secret", &["--shared"]);
    let stolen = run(&["secrets", "claim", "factory", "--tenant", "globex"], dir.path());
    assert!(!stolen.status.success());
    assert!(String::from_utf8_lossy(&stolen.stderr).contains("belongs to tenant connectsoft"));
    let into_shared = std::process::Command::new(support::BIN)
        .args(["secrets", "put", "kv://ops/github-hook", "--tenant", "globex", "--data-dir"])
        .arg(dir.path())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!into_shared.status.success());
    support::secrets(dir.path(), &["claim", "legacy", "--shared"]);

    let list = run(&["secrets", "list"], dir.path());
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(
        text.lines().any(|l| l.starts_with("kv://factory/github-token") && l.ends_with("tenant=connectsoft")),
        "{text}"
    );
    assert!(text.lines().any(|l| l.starts_with("kv://ops/github-hook") && l.ends_with("shared")), "{text}");
}

/// An ES256 key pair made with ring, and its public JWK.
fn es256_key(kid: &str) -> (jsonwebtoken::EncodingKey, Value) {
    use base64::Engine;
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let public = pair.public_key().as_ref();
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let jwk = json!({ "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid,
                      "x": b64(&public[1..33]), "y": b64(&public[33..65]) });
    (jsonwebtoken::EncodingKey::from_ec_der(pkcs8.as_ref()), jwk)
}

#[tokio::test]
async fn serve_with_a_jwks_accepts_the_identity_providers_tokens_only() {
    let dir = tempfile::tempdir().unwrap();
    let (key, jwk) = es256_key("idp-key-1");
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, json!({ "keys": [jwk] }).to_string()).unwrap();
    let app = spawn_app_in(
        dir.path(),
        &["--jwks", jwks.to_str().unwrap(), "--issuer", "https://idp.example", "--audience", "integration-engine"],
    );
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let claims = |aud: &str| {
        json!({ "iss": "https://idp.example", "aud": aud, "sub": "svc-factory", "tenantId": "connectsoft",
                "scp": ["integration.providers.write"], "iat": now, "exp": now + 300 })
    };
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some("idp-key-1".into());
    let good = jsonwebtoken::encode(&header, &claims("integration-engine"), &key).unwrap();
    let wrong_audience = jsonwebtoken::encode(&header, &claims("another-service"), &key).unwrap();
    let body = json!({ "key": "github", "displayName": "GitHub", "category": "SourceControl", "authModel": "ApiKey",
                       "apiClient": "Vendor.Client", "baseUrl": "https://api.github.com" });
    assert_eq!(app.post_json("/integrations/providers", &good, &body).await.status(), 201);
    assert_eq!(app.post_json("/integrations/providers", &wrong_audience, &body).await.status(), 401);
    // Development tokens are not accepted once a JWKS is configured, even with a dev secret on disk.
    std::fs::write(dir.path().join("dev-hs256.secret"), hex::encode([9u8; 32])).unwrap();
    let dev = run(&["token", "--tenant", "connectsoft", "--scope", "integration.providers.write"], dir.path());
    assert!(dev.status.success(), "{}", String::from_utf8_lossy(&dev.stderr));
    let dev_token = String::from_utf8_lossy(&dev.stdout).trim().to_string();
    assert_eq!(app.post_json("/integrations/providers", &dev_token, &body).await.status(), 401);
}
