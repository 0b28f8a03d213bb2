//! `/readyz` through the real binary: 200 while the read models keep up, 503 (problem+json naming
//! the lagging projection and its lag) while the projector cannot write them, 200 again once it
//! has caught up; `/healthz` stays 200 throughout.

use crate::support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{ALL_SCOPES, App, spawn_app_with};

const TENANT: &str = "connectsoft";

fn provider(key: &str) -> Value {
    json!({
        "tenantId": TENANT, "key": key, "displayName": "GitHub", "category": "SourceControl",
        "authModel": "OAuth2ClientCredentials", "apiClient": "ConnectSoft.Scm.GitHub",
        "capabilities": [], "baseUrl": "https://api.github.com"
    })
}

async fn readyz(app: &App) -> (u16, String, Value) {
    let r = app.client.get(app.url("/readyz")).send().await.unwrap();
    let status = r.status().as_u16();
    let content_type = r.headers()["content-type"].to_str().unwrap().to_owned();
    (status, content_type, r.json().await.unwrap())
}

async fn wait_ready(app: &App, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let (status, _, body) = readyz(app).await;
        if status == 200 {
            return body;
        }
        assert!(Instant::now() < deadline, "/readyz stayed {status}: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Takes the read-model database's write lock and keeps it until dropped, so the projector's
/// batches wait and fail as "database is locked" (a transient error it retries).
struct WriteLock(rusqlite::Connection);

impl WriteLock {
    fn take(app: &App) -> Self {
        let conn = rusqlite::Connection::open(app.data_dir.join("readmodels.db")).unwrap();
        conn.busy_timeout(Duration::from_secs(10)).unwrap();
        conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        Self(conn)
    }
}

impl Drop for WriteLock {
    fn drop(&mut self) {
        let _ = self.0.execute_batch("ROLLBACK");
    }
}

/// Appends one event per provider through the API, concurrently (each POST waits up to its
/// read-your-writes timeout for a projector that cannot write, then answers anyway).
async fn register_providers(app: &App, token: &str, keys: &[&str]) {
    let posts: Vec<_> = keys
        .iter()
        .map(|key| {
            let request = app.client.post(app.url("/integrations/providers")).bearer_auth(token).json(&provider(key));
            tokio::spawn(async move { request.send().await.unwrap().status().as_u16() })
        })
        .collect();
    for post in posts {
        assert_eq!(post.await.unwrap(), 201);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_naming_the_projection_while_it_lags_and_200_once_caught_up() {
    let app =
        spawn_app_with(&["--no-workers", "--readiness-max-lag-events", "2", "--readiness-max-lag-seconds", "3600"]);
    let token = app.token(TENANT, ALL_SCOPES);
    register_providers(&app, &token, &["p0"]).await;
    let ready = wait_ready(&app, Duration::from_secs(20)).await;
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["projectionPosition"], ready["storePosition"]);

    // Two events behind is within the limit of 2.
    let lock = WriteLock::take(&app);
    register_providers(&app, &token, &["p1", "p2"]).await;
    let (status, _, body) = readyz(&app).await;
    // The projector's failed batch makes it "catching up" (503) or, if it has not failed yet,
    // still ready: either way not "lagging".
    assert_ne!(body["readiness"], "projection-lagging", "{status}: {body}");

    // Three behind is over it.
    register_providers(&app, &token, &["p3"]).await;
    let (status, content_type, body) = readyz(&app).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(content_type, "application/problem+json");
    assert_eq!(body["readiness"], "projection-lagging", "{body}");
    assert!(body["type"].as_str().unwrap().ends_with("/projection-lagging"));
    let projection = body["projection"].as_str().expect("the lagging projection's name").to_owned();
    assert!(!projection.is_empty());
    assert_eq!(body["lagEvents"], 3, "{body}");
    assert!(body["lagSeconds"].as_f64().unwrap() >= 0.0);
    assert!(body["detail"].as_str().unwrap().contains(&projection), "the detail names the projection: {body}");
    assert_eq!(body["storePosition"].as_u64().unwrap(), ready["storePosition"].as_u64().unwrap() + 3);
    // Liveness is not readiness: the process works.
    assert_eq!(app.client.get(app.url("/healthz")).send().await.unwrap().status(), 200);

    drop(lock);
    let ready = wait_ready(&app, Duration::from_secs(30)).await;
    assert_eq!(ready["projectionPosition"], ready["storePosition"]);
    assert_eq!(ready["storePosition"], body["storePosition"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_when_the_oldest_unapplied_event_is_too_old() {
    let app =
        spawn_app_with(&["--no-workers", "--readiness-max-lag-events", "1000", "--readiness-max-lag-seconds", "1"]);
    let token = app.token(TENANT, ALL_SCOPES);
    wait_ready(&app, Duration::from_secs(20)).await;
    let lock = WriteLock::take(&app);
    register_providers(&app, &token, &["p1"]).await;
    // The POST waited for its read-your-writes timeout, so the event is older than a second.
    let (status, _, body) = readyz(&app).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["readiness"], "projection-lagging", "{body}");
    assert_eq!(body["lagEvents"], 1);
    assert!(body["lagSeconds"].as_f64().unwrap() > 1.0, "{body}");
    drop(lock);
    wait_ready(&app, Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_once_the_projector_stops_on_an_event_it_cannot_decode() {
    use store::{EventStore, ExpectedVersion};

    let app = spawn_app_with(&["--no-workers"]);
    wait_ready(&app, Duration::from_secs(20)).await;
    // A second process appends, straight to the store, an event of a known type whose data does
    // not follow its schema: the projector cannot apply it and must not skip it, so it stops.
    let events = store::SqliteEventStore::open(&app.data_dir.join("events.db")).unwrap();
    let bad = vec![domain::NewEvent {
        event_id: uuid::Uuid::now_v7(),
        event_type: "ProviderRegistered".into(),
        schema_version: 2,
        tenant_id: TENANT.into(),
        occurred_at: chrono::Utc::now(),
        trace_id: "trace-broken".into(),
        correlation_id: "trace-broken".into(),
        causation_id: None,
        actor: domain::Actor::system(),
        data: json!({ "notAProvider": true }),
    }];
    events.append("provider-broken", ExpectedVersion::NoStream, bad).await.unwrap();
    drop(events);

    let deadline = Instant::now() + Duration::from_secs(20);
    let body = loop {
        let (status, content_type, body) = readyz(&app).await;
        if body["readiness"] == "projections-stopped" {
            assert_eq!(status, 503);
            assert_eq!(content_type, "application/problem+json");
            break body;
        }
        assert!(Instant::now() < deadline, "/readyz never reported the stopped projector: {status} {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(body["detail"].as_str().unwrap().contains("stopped"), "{body}");
    // The error quotes event data; the unauthenticated probe does not repeat it.
    assert!(!body.to_string().contains("providerId"), "{body}");
    // It stays so: nothing will move the read models again.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(readyz(&app).await.0, 503);
    assert_eq!(app.client.get(app.url("/healthz")).send().await.unwrap().status(), 200);
}
