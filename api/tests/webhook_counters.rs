//! Every refusal of the webhook gateway is counted under its reason, through the `metrics`
//! facade (the exporter comes with another issue): the router runs in-process with a
//! `metrics-util` debugging recorder installed, over real SQLite stores in a temp dir.

use std::sync::Arc;
use std::time::Duration;

use api::auth::{AuthConfig, Authenticator, DEV_AUDIENCE, DEV_ISSUER, mint_dev_token};
use api::routes::deliveries::{ACCEPTED_COUNTER, REJECTED_COUNTER};
use api::{ApiSettings, AppState};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use commands::idempotency::Idempotency;
use commands::{Commands, SystemClock};
use domain::secret_ref::SecretRef;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use projections::{Projections, ReadModels};
use serde_json::{Value, json};
use store::{EventStore, MasterKey, SecretStore, SqliteEventStore, SqliteIdempotencyStore, SqliteVault};
use tower::ServiceExt;

const DEV_SECRET: &[u8] = b"counters-test-dev-secret-0123456789abcdef";
const GITHUB_SECRET: &[u8] = b"gh-secret";

struct Gateway {
    router: axum::Router,
    token: String,
    _dir: tempfile::TempDir,
}

async fn gateway() -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn EventStore> = Arc::new(SqliteEventStore::open(&dir.path().join("events.db")).unwrap());
    let vault: Arc<dyn SecretStore> =
        Arc::new(SqliteVault::open(&dir.path().join("vault.db"), MasterKey::from_bytes([3; 32])).unwrap());
    vault.put(&SecretRef::parse("kv://factory/gh-hook").unwrap(), GITHUB_SECRET, None).await.unwrap();
    vault.claim("factory", &store::VaultOwner::Tenant("connectsoft".into())).await.unwrap();
    let read_models = ReadModels::open(dir.path().join("readmodels.db")).unwrap();
    let projections = Projections::new(read_models.clone());
    tokio::spawn({
        let (projections, store) = (projections.clone(), store.clone());
        async move { projections.run(store).await }
    });
    let state = AppState {
        commands: Commands::new(store.clone(), vault.clone(), Arc::new(SystemClock)),
        read_models,
        projections,
        auth: Authenticator::new(AuthConfig::dev(DEV_SECRET.to_vec())).await.unwrap(),
        vault: store::Vaults::new(vault),
        idempotency: Idempotency::new(
            Arc::new(SqliteIdempotencyStore::open(&dir.path().join("events.db")).unwrap()),
            Arc::new(SystemClock),
        ),
        store,
        provider_key_sets: Arc::new(connectors::key_sets::ProviderKeySets::new(Default::default())),
        settings: ApiSettings { max_body_bytes: 1024, ..ApiSettings::default() },
    };
    let scopes = ["integration.providers.write", "integration.connections.write"];
    let token = mint_dev_token(
        DEV_SECRET,
        DEV_ISSUER,
        DEV_AUDIENCE,
        "tester",
        "connectsoft",
        &scopes,
        Duration::from_secs(600),
    )
    .unwrap();
    Gateway { router: api::router(state), token, _dir: dir }
}

async fn call(router: &axum::Router, request: Request<Body>) -> (StatusCode, Value) {
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

fn post(path: &str, headers: &[(&str, &str)], body: &str) -> Request<Body> {
    let mut builder = Request::post(path);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(Body::from(body.to_string())).unwrap()
}

/// A native GitHub push delivery to `path`, with `signature` if any.
fn push(path: &str, body: &str, signature: Option<&str>, delivery: &str) -> Request<Body> {
    let mut headers =
        vec![("content-type", "application/json"), ("x-github-event", "push"), ("x-github-delivery", delivery)];
    if let Some(signature) = signature {
        headers.push(("x-hub-signature-256", signature));
    }
    post(path, &headers, body)
}

/// The counters' values since the last read (a debugging snapshot drains them).
fn counters(snapshotter: &Snapshotter) -> Vec<(metrics_util::CompositeKey, DebugValue)> {
    snapshotter.snapshot().into_vec().into_iter().map(|(key, _, _, value)| (key, value)).collect()
}

fn counter(read: &[(metrics_util::CompositeKey, DebugValue)], name: &str, labels: &[(&str, &str)]) -> u64 {
    read.iter()
        .filter(|(key, _)| {
            let key = key.key();
            key.name() == name && labels.iter().all(|(k, v)| key.labels().any(|l| l.key() == *k && l.value() == *v))
        })
        .map(|(_, value)| match value {
            DebugValue::Counter(n) => *n,
            _ => 0,
        })
        .sum()
}

#[tokio::test]
async fn every_refusal_is_counted_under_its_reason() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().unwrap();
    let g = gateway().await;
    let auth = format!("Bearer {}", g.token);
    let json = ("content-type", "application/json");
    let provider = json!({"key": "github", "displayName": "GitHub", "category": "SourceControl",
        "authModel": "HmacSignature", "apiClient": "GitHub", "capabilities": [], "baseUrl": "https://api.github.com"});
    let (status, _) =
        call(&g.router, post("/integrations/providers", &[json, ("authorization", &auth)], &provider.to_string()))
            .await;
    assert_eq!(status, StatusCode::CREATED);
    let connection = json!({"projectId": "p", "providerId": "prov-github", "displayName": "gh", "authMode": "ApiKey",
        "credentialRef": "kv://factory/gh-api", "configuration": {"webhookSecretRef": "kv://factory/gh-hook"}});
    let (status, created) =
        call(&g.router, post("/integrations/connections", &[json, ("authorization", &auth)], &connection.to_string()))
            .await;
    assert_eq!(status, StatusCode::CREATED);
    let path = format!("/webhooks/deliveries?connectionId={}", created["connectionId"].as_str().unwrap());
    let body = json!({"ref": "refs/heads/main", "after": "a"}).to_string();
    let good = connectors::github::sign(GITHUB_SECRET, body.as_bytes());
    let forged = connectors::github::sign(b"wrong", body.as_bytes());
    let big = "x".repeat(4096);

    let cases = [
        ("missing_signature", push(&path, &body, None, "d1"), StatusCode::UNAUTHORIZED),
        ("signature_mismatch", push(&path, &body, Some(&forged), "d1"), StatusCode::UNAUTHORIZED),
        ("malformed_signature", push(&path, &body, Some("sha256=zz"), "d1"), StatusCode::UNAUTHORIZED),
        (
            "unknown_connection",
            push("/webhooks/deliveries?connectionId=conn-nope", &body, Some(&good), "d1"),
            StatusCode::UNAUTHORIZED,
        ),
        ("unknown_provider", post(&path, &[json, ("x-cs-provider", "acme")], &body), StatusCode::BAD_REQUEST),
        ("missing_connection", push("/webhooks/deliveries", &body, Some(&good), "d1"), StatusCode::BAD_REQUEST),
        ("payload_too_large", push(&path, &big, Some(&good), "d1"), StatusCode::PAYLOAD_TOO_LARGE),
        (
            "unsupported_media_type",
            post(&path, &[("content-type", "text/plain")], &body),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
    ];
    for (reason, request, expected) in cases {
        counters(&snapshotter);
        let (status, problem) = call(&g.router, request).await;
        assert_eq!(status, expected, "{reason}: {problem}");
        assert_eq!(problem["status"], expected.as_u16(), "{reason}: a problem document");
        let read = counters(&snapshotter);
        assert_eq!(counter(&read, REJECTED_COUNTER, &[("reason", reason)]), 1, "{reason}");
        assert_eq!(counter(&read, REJECTED_COUNTER, &[]), 1, "{reason}: counted once, under one reason");
    }

    // A correctly signed Stripe delivery from 10 minutes ago: outside the default ±5 min.
    let mut stripe_provider = provider.clone();
    stripe_provider["key"] = json!("stripe");
    call(&g.router, post("/integrations/providers", &[json, ("authorization", &auth)], &stripe_provider.to_string()))
        .await;
    let mut stripe_connection = connection.clone();
    stripe_connection["providerId"] = json!("prov-stripe");
    let (_, created) = call(
        &g.router,
        post("/integrations/connections", &[json, ("authorization", &auth)], &stripe_connection.to_string()),
    )
    .await;
    let stripe_path = format!("/webhooks/deliveries?connectionId={}", created["connectionId"].as_str().unwrap());
    let event = json!({"id": "evt_1", "type": "invoice.paid", "data": {"object": {"object": "invoice"}}}).to_string();
    let ten_minutes_ago = chrono::Utc::now().timestamp() - 600;
    let stale = connectors::stripe::sign(&[GITHUB_SECRET], ten_minutes_ago, event.as_bytes());
    counters(&snapshotter);
    let (status, _) = call(&g.router, post(&stripe_path, &[json, ("stripe-signature", &stale)], &event)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let read = counters(&snapshotter);
    assert_eq!(
        counter(&read, REJECTED_COUNTER, &[("reason", "timestamp_out_of_tolerance"), ("provider", "stripe")]),
        1
    );

    let (status, _) = call(&g.router, push(&path, &body, Some(&good), "d-ok")).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, _) = call(&g.router, push(&path, &body, Some(&good), "d-ok")).await;
    assert_eq!(status, StatusCode::OK);
    let read = counters(&snapshotter);
    assert_eq!(counter(&read, ACCEPTED_COUNTER, &[("outcome", "accepted"), ("provider", "github")]), 1);
    assert_eq!(counter(&read, ACCEPTED_COUNTER, &[("outcome", "duplicate"), ("provider", "github")]), 1);
    assert_eq!(counter(&read, REJECTED_COUNTER, &[]), 0);
}
