//! Idempotency keys expire, through the real binary: a key past `idempotency-retention-hours` is
//! executed again as a new request, a fresh one still replays, and `serve` sweeps expired
//! reservations out of events.db.

use crate::support;

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{ALL_SCOPES, App, spawn_app_in};

const TENANT: &str = "connectsoft";

fn connection() -> Value {
    json!({
        "projectId": "proj-1", "providerId": "prov-github", "displayName": "Acme GitHub",
        "authMode": "OAuth2ClientCredentials", "credentialRef": "kv://factory/acme-github",
        "configuration": { "organization": "acme" }
    })
}

async fn create(app: &App, token: &str, key: &str) -> reqwest::Response {
    app.client
        .post(app.url("/integrations/connections"))
        .bearer_auth(token)
        .header("idempotency-key", key)
        .json(&connection())
        .send()
        .await
        .unwrap()
}

async fn created_id(response: reqwest::Response) -> (bool, String) {
    assert_eq!(response.status(), 201);
    let replayed = response.headers().get("idempotent-replayed").is_some_and(|v| v == "true");
    let body: Value = response.json().await.unwrap();
    (replayed, body["connectionId"].as_str().expect("connectionId").to_owned())
}

fn events_db(dir: &Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(dir.join("events.db")).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    conn
}

/// Makes the reservation of `key` look `hours` old, as if the clock had moved on.
fn age_reservation(dir: &Path, key: &str, hours: u32) {
    let changed = events_db(dir)
        .execute(
            "UPDATE idempotency_keys SET created_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?1) WHERE key = ?2",
            rusqlite::params![format!("-{hours} hours"), key],
        )
        .unwrap();
    assert_eq!(changed, 1, "no reservation for {key}");
}

fn reservations(dir: &Path) -> Vec<String> {
    let conn = events_db(dir);
    let mut stmt = conn.prepare("SELECT key FROM idempotency_keys ORDER BY key").unwrap();
    stmt.query_map([], |row| row.get(0)).unwrap().collect::<Result<_, _>>().unwrap()
}

#[tokio::test]
async fn a_key_past_retention_runs_anew_while_a_fresh_one_replays() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path();
    let app = spawn_app_in(dir, &["--no-workers", "--idempotency-retention-hours", "24"]);
    let token = app.token(TENANT, ALL_SCOPES);
    let provider = json!({
        "tenantId": TENANT, "key": "github", "displayName": "GitHub", "category": "SourceControl",
        "authModel": "OAuth2ClientCredentials", "apiClient": "ConnectSoft.Scm.GitHub",
        "capabilities": [], "baseUrl": "https://api.github.com"
    });
    assert_eq!(app.post_json("/integrations/providers", &token, &provider).await.status(), 201);

    let (_, old_id) = created_id(create(&app, &token, "old").await).await;
    let (_, fresh_id) = created_id(create(&app, &token, "fresh").await).await;
    // Within retention both replay.
    assert_eq!(created_id(create(&app, &token, "old").await).await, (true, old_id.clone()));

    age_reservation(dir, "old", 25);
    let (replayed, again_id) = created_id(create(&app, &token, "old").await).await;
    assert!(!replayed, "an expired key was replayed");
    assert_ne!(again_id, old_id, "an expired key must run as a new request, creating a new resource");
    // The retry took the key over: it replays from now on.
    assert_eq!(created_id(create(&app, &token, "old").await).await, (true, again_id));
    assert_eq!(created_id(create(&app, &token, "fresh").await).await, (true, fresh_id.clone()));

    // Just inside retention still replays.
    age_reservation(dir, "fresh", 23);
    assert_eq!(created_id(create(&app, &token, "fresh").await).await, (true, fresh_id));

    // The sweep `serve` runs at start (and every 15 minutes) deletes expired reservations.
    let (_, _) = created_id(create(&app, &token, "stale").await).await;
    age_reservation(dir, "stale", 30);
    app.kill();
    let _app = spawn_app_in(dir, &["--no-workers", "--idempotency-retention-hours", "24"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while reservations(dir).contains(&"stale".to_owned()) {
        assert!(Instant::now() < deadline, "the expired reservation was never swept: {:?}", reservations(dir));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(reservations(dir), ["fresh", "old"], "only the expired reservation goes");
}

#[test]
fn a_retention_below_one_hour_is_refused_at_start() {
    let temp = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(support::BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--idempotency-retention-hours", "0", "--data-dir"])
        .arg(temp.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("idempotency-retention-hours"), "the error names the key: {stderr}");
}
