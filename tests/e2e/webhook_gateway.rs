//! The inbound webhook gateway through the real binary: every signed sample of
//! `fixtures/webhooks/` accepted once and then answered as a repeat, refusals that store
//! nothing, the body limit on declared and chunked bodies, secret rotation, races, and a
//! payload that never reaches the log.

use crate::support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use support::{ALL_SCOPES, App, BIN, spawn_app_in};

const TENANT: &str = "connectsoft";
/// Wide enough for samples signed on 2026-01-01 to stay fresh for a century.
const CENTURY: &str = "3153600000";

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/webhooks")
}

fn samples() -> Vec<(String, Value)> {
    let mut found = Vec::new();
    for provider in std::fs::read_dir(fixtures()).unwrap() {
        let provider = provider.unwrap().path();
        for file in std::fs::read_dir(&provider).unwrap() {
            let path = file.unwrap().path();
            if path.file_name().is_some_and(|n| n != "jwks.json") {
                let name = format!(
                    "{}/{}",
                    provider.file_name().unwrap().to_str().unwrap(),
                    path.file_name().unwrap().to_str().unwrap()
                );
                found.push((name, serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()));
            }
        }
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found
}

/// The provider key a scheme's samples are registered under, and the connection configuration.
fn provider_key(scheme: &str) -> &str {
    if scheme == "jws" { "partner-notifications" } else { scheme }
}

async fn register_provider(app: &App, token: &str, key: &str) {
    let r = app
        .post_json(
            "/integrations/providers",
            token,
            &json!({"tenantId": TENANT, "key": key, "displayName": key, "category": "Webhooks",
                    "authModel": "HmacSignature", "apiClient": "ConnectSoft.Webhooks", "capabilities": [],
                    "baseUrl": "https://api.example.com"}),
        )
        .await;
    assert!(r.status() == 201 || r.status() == 409, "provider {key}: {}", r.status());
}

async fn connect(app: &App, token: &str, key: &str, configuration: Value) -> String {
    let r = app
        .post_json(
            "/integrations/connections",
            token,
            &json!({"projectId": "proj-booking-saas", "providerId": format!("prov-{key}"), "displayName": key,
                    "authMode": "ApiKey", "credentialRef": format!("kv://factory/{key}-api"),
                    "configuration": configuration}),
        )
        .await;
    assert_eq!(r.status(), 201);
    r.json::<Value>().await.unwrap()["connectionId"].as_str().unwrap().to_string()
}

async fn store_position(app: &App) -> u64 {
    let ready: Value = app.client.get(app.url("/readyz")).send().await.unwrap().json().await.unwrap();
    ready["storePosition"].as_u64().unwrap()
}

async fn post_sample(app: &App, connection_id: &str, sample: &Value) -> reqwest::Response {
    // Twilio adds bodySHA256 to the URL it calls for a JSON body.
    let body_hash = sample["url"].as_str().and_then(|u| u.split_once("&bodySHA256=")).map(|(_, h)| h);
    let query = body_hash.map_or(String::new(), |h| format!("&bodySHA256={h}"));
    let mut request = app.client.post(app.url(&format!("/webhooks/deliveries?connectionId={connection_id}{query}")));
    for (name, value) in sample["headers"].as_object().unwrap() {
        request = request.header(name.as_str(), value.as_str().unwrap());
    }
    request.body(sample["body"].as_str().unwrap().to_string()).send().await.unwrap()
}

async fn assert_problem(response: reqwest::Response, status: u16) -> Value {
    assert_eq!(response.status().as_u16(), status);
    assert_eq!(response.headers()["content-type"], "application/problem+json");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], status);
    body
}

/// Sets up a connection for `scheme` whose secret is `secret`; returns its id.
async fn connection_for(app: &App, token: &str, scheme: &str, secret: &str, url: Option<&str>) -> String {
    let key = provider_key(scheme);
    register_provider(app, token, key).await;
    let mut configuration = json!({});
    if scheme == "jws" {
        configuration["webhookScheme"] = json!("jws");
        configuration["webhookJwks"] = json!(jwks_url());
    } else {
        let secret_ref = format!("kv://factory/{key}-webhook-{}", uuid::Uuid::new_v4().simple());
        app.put_secret(&secret_ref, secret);
        configuration["webhookSecretRef"] = json!(secret_ref);
    }
    if let Some(url) = url {
        configuration["webhookUrl"] = json!(url);
    }
    connect(app, token, key, configuration).await
}

/// The JWS samples' key set, served over plain HTTP on loopback from a thread. The engine
/// fetches a provider's JWKS like any egress, so the apps that verify JWS samples allow-list
/// 127.0.0.1.
fn jwks_url() -> &'static str {
    static SERVER: std::sync::OnceLock<JwksServer> = std::sync::OnceLock::new();
    let keys = || serde_json::from_slice(&std::fs::read(fixtures().join("jws/jwks.json")).unwrap()).unwrap();
    &SERVER.get_or_init(|| JwksServer::start(keys())).url
}

fn events_of_type(data_dir: &Path, event_type: &str) -> Vec<Value> {
    let db = rusqlite::Connection::open(data_dir.join("events.db")).unwrap();
    let mut stmt = db.prepare("SELECT data FROM events WHERE event_type = ?1 ORDER BY global_position").unwrap();
    stmt.query_map([event_type], |row| row.get::<_, String>(0))
        .unwrap()
        .map(|d| serde_json::from_str(&d.unwrap()).unwrap())
        .collect()
}

#[tokio::test]
async fn every_signed_sample_is_accepted_once_then_answered_as_a_repeat() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app_in(
        dir.path(),
        &["--webhook-timestamp-tolerance-seconds", CENTURY, "--no-workers", "--webhook-allow-hosts", "127.0.0.1"],
    );
    let token = app.token(TENANT, ALL_SCOPES);
    let samples = samples();
    assert!(samples.len() >= 25);
    for (name, sample) in &samples {
        let scheme = sample["provider"].as_str().unwrap();
        let url = sample["url"].as_str().map(|u| u.split("&bodySHA256=").next().unwrap());
        let connection_id = connection_for(&app, &token, scheme, sample["secret"].as_str().unwrap(), url).await;
        let before = store_position(&app).await;

        let first = post_sample(&app, &connection_id, sample).await;
        assert_eq!(first.status(), 202, "{name}: {}", first.text().await.unwrap());
        let first: Value = first.json().await.unwrap();
        assert_eq!(first["status"], "Accepted", "{name}");
        assert_eq!(first["normalizedEventType"], sample["expect"]["normalizedEventType"], "{name}");
        assert!(first.get("duplicate").is_none(), "{name}");
        // DeliveryAccepted and the normalized event.
        assert_eq!(store_position(&app).await, before + 2, "{name}");

        let repeat = post_sample(&app, &connection_id, sample).await;
        assert_eq!(repeat.status(), 200, "{name}");
        let repeat: Value = repeat.json().await.unwrap();
        assert_eq!((&repeat["deliveryId"], &repeat["duplicate"]), (&first["deliveryId"], &json!(true)), "{name}");
        assert_eq!(store_position(&app).await, before + 2, "{name}: a repeat appended something");
    }

    // The acceptance carries provider, both ids, type and digest; the normalized event carries
    // what a subscriber needs.
    let accepted = events_of_type(&app.data_dir, "DeliveryAccepted");
    assert_eq!(accepted.len(), samples.len());
    let merged = accepted.iter().find(|e| e["providerDeliveryId"] == "72d3162e-cc78-11e3-81ab-4c9367dc0958").unwrap();
    assert_eq!((&merged["provider"], &merged["eventName"]), (&json!("github"), &json!("pull_request")));
    assert!(merged["payloadDigest"].as_str().unwrap().starts_with("sha256:"));
    assert!(merged["deliveryId"].as_str().unwrap().starts_with("del-"));
    let prs = events_of_type(&app.data_dir, "PullRequestMerged");
    let native = prs.iter().find(|e| e["deliveryId"] == merged["deliveryId"]).unwrap();
    assert_eq!(native["attributes"]["repository"], "connectsoft-booking/booking");
    assert_eq!(native["attributes"]["number"], 42);
    assert_eq!(native["attributes"]["mergeCommitSha"], "e5bd3914e2e596debea16f433f57875b5b90bcd6");
    let payments = events_of_type(&app.data_dir, "PaymentSucceeded");
    assert_eq!(
        (&payments[0]["attributes"]["amount"], &payments[0]["attributes"]["currency"]),
        (&json!(4900), &json!("eur"))
    );
}

/// A fresh Stripe delivery signed now with `secret`.
fn stripe_delivery(secret: &str, id: &str, signed_at: i64) -> (String, String) {
    let body = json!({"id": id, "object": "event", "type": "invoice.paid",
                      "data": {"object": {"id": "in_1", "object": "invoice", "amount_paid": 1900, "currency": "eur"}}})
    .to_string();
    let header = connectors::stripe::sign(&[secret.as_bytes()], signed_at, body.as_bytes());
    (body, header)
}

async fn post_stripe(app: &App, connection_id: &str, body: &str, signature: Option<&str>) -> reqwest::Response {
    let mut r = app
        .client
        .post(app.url(&format!("/webhooks/deliveries?connectionId={connection_id}")))
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(s) = signature {
        r = r.header("stripe-signature", s);
    }
    r.send().await.unwrap()
}

#[tokio::test]
async fn a_provider_key_set_where_webhooks_may_not_go_is_refused_with_its_connection() {
    let dir = tempfile::tempdir().unwrap();
    // No allow-list: the loopback key set is as forbidden as any private address.
    let app = spawn_app_in(dir.path(), &["--webhook-timestamp-tolerance-seconds", CENTURY, "--no-workers"]);
    let token = app.token(TENANT, ALL_SCOPES);
    register_provider(&app, &token, provider_key("jws")).await;
    let file = fixtures().join("jws/jwks.json");
    for source in [jwks_url(), file.to_str().unwrap()] {
        let configuration = json!({"webhookScheme": "jws", "webhookJwks": source});
        let r = app
            .post_json(
                "/integrations/connections",
                &token,
                &json!({"projectId": "proj-booking-saas", "providerId": format!("prov-{}", provider_key("jws")),
                        "displayName": "jws", "authMode": "ApiKey", "configuration": configuration}),
            )
            .await;
        let refused = assert_problem(r, 422).await;
        assert_eq!(refused["errors"][0]["field"], "configuration.webhookJwks", "{source}: {refused}");
    }
    assert!(events_of_type(dir.path(), "ConnectionEstablished").is_empty());
}

#[tokio::test]
async fn refused_deliveries_are_problem_documents_and_store_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // No workers: connection health checks would append events while the test counts them.
    let app = spawn_app_in(dir.path(), &["--no-workers"]);
    let token = app.token(TENANT, ALL_SCOPES);
    let connection_id = connection_for(&app, &token, "stripe", "whsec_live_secret", None).await;
    let before = store_position(&app).await;

    let (body, signature) = stripe_delivery("whsec_live_secret", "evt_1", now());
    // Missing and wrong signatures.
    let missing = assert_problem(post_stripe(&app, &connection_id, &body, None).await, 401).await;
    assert!(missing["detail"].as_str().unwrap().contains("missing"), "{missing}");
    let (_, forged) = stripe_delivery("whsec_other", "evt_1", now());
    assert_problem(post_stripe(&app, &connection_id, &body, Some(&forged)).await, 401).await;
    assert_problem(post_stripe(&app, &connection_id, &body, Some("t=1,v1=zz")).await, 401).await;
    // A body changed after signing.
    let changed = body.replace("1900", "19000");
    assert_problem(post_stripe(&app, &connection_id, &changed, Some(&signature)).await, 401).await;
    // Outside the default ±5 min tolerance, in both directions, though correctly signed.
    for skew in [-301, 301] {
        let (old_body, old_signature) = stripe_delivery("whsec_live_secret", "evt_2", now() + skew);
        let stale = assert_problem(post_stripe(&app, &connection_id, &old_body, Some(&old_signature)).await, 401).await;
        assert!(stale["detail"].as_str().unwrap().contains("tolerance"), "{stale}");
    }
    // The Stripe samples were signed on 2026-01-01: with the default tolerance they are stale.
    let (_, sample) = samples().into_iter().find(|(n, _)| n == "stripe/invoice_paid.json").unwrap();
    assert_problem(post_sample(&app, &connection_id, &sample).await, 401).await;
    // Unknown connection, unknown provider, no connection named.
    assert_problem(post_stripe(&app, "conn-unknown", &body, Some(&signature)).await, 401).await;
    let unknown_provider = app
        .client
        .post(app.url(&format!("/webhooks/deliveries?connectionId={connection_id}")))
        .header("x-cs-provider", "acme-payments")
        .header("content-type", "application/json")
        .header("stripe-signature", &signature)
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_problem(unknown_provider, 400).await;
    assert_problem(post_stripe(&app, "", &body, Some(&signature)).await, 400).await;
    assert_eq!(store_position(&app).await, before, "a refused delivery stored something");

    // The same delivery, correctly signed now, is accepted.
    let ok = post_stripe(&app, &connection_id, &body, Some(&signature)).await;
    assert_eq!(ok.status(), 202);
    assert_eq!(ok.json::<Value>().await.unwrap()["normalizedEventType"], "InvoicePaid");
}

#[tokio::test]
async fn the_signed_body_decides_the_type_never_the_unsigned_header_alone() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app_in(dir.path(), &[]);
    let token = app.token(TENANT, ALL_SCOPES);
    let connection_id = connection_for(&app, &token, "github", "gh-secret", None).await;
    let send = |event: &'static str, delivery: &'static str, body: Value| {
        let body = body.to_string();
        app.client
            .post(app.url(&format!("/webhooks/deliveries?connectionId={connection_id}")))
            .header("content-type", "application/json")
            .header("x-github-event", event)
            .header("x-github-delivery", delivery)
            .header("x-hub-signature-256", connectors::github::sign(b"gh-secret", body.as_bytes()))
            .body(body)
            .send()
    };
    // A push body relabelled as a merged pull request by the (unsigned) event header.
    let relabelled = send("pull_request", "d-1", json!({"ref": "refs/heads/main", "after": "abc"})).await.unwrap();
    assert_eq!(relabelled.json::<Value>().await.unwrap()["normalizedEventType"], "ProviderEventReceived");
    // Natively, `merged` must be at pull_request.merged: at the top it proves nothing.
    let top_level =
        send("pull_request", "d-2", json!({"action": "closed", "merged": true, "pull_request": {"merged": false}}));
    assert_eq!(top_level.await.unwrap().json::<Value>().await.unwrap()["normalizedEventType"], "PullRequestClosed");
    let merged = send("pull_request", "d-3", json!({"action": "closed", "pull_request": {"merged": true}}));
    assert_eq!(merged.await.unwrap().json::<Value>().await.unwrap()["normalizedEventType"], "PullRequestMerged");
}

#[tokio::test]
async fn during_a_rotation_the_previous_secret_verifies_until_the_grace_period_ends() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app_in(dir.path(), &[]);
    let token = app.token(TENANT, ALL_SCOPES);
    register_provider(&app, &token, "stripe").await;
    app.put_secret("kv://factory/stripe-rotating", "whsec_v1");
    let connection_id =
        connect(&app, &token, "stripe", json!({"webhookSecretRef": "kv://factory/stripe-rotating"})).await;
    let deliver = |secret: &str, id: &str| {
        let (body, signature) = stripe_delivery(secret, id, now());
        let app = &app;
        let connection_id = connection_id.clone();
        async move { post_stripe(app, &connection_id, &body, Some(&signature)).await.status().as_u16() }
    };
    assert_eq!(deliver("whsec_v1", "evt_a").await, 202);
    // Rotate: v2 becomes current; v1 is previous and still verifies within the grace period.
    app.put_secret("kv://factory/stripe-rotating", "whsec_v2");
    tokio::time::sleep(Duration::from_secs(6)).await; // the server's secret cache keeps the current version 5 s
    assert_eq!(deliver("whsec_v2", "evt_b").await, 202);
    assert_eq!(deliver("whsec_v1", "evt_c").await, 202);
    // Rotate again: v1 is two versions old and verifies no more.
    app.put_secret("kv://factory/stripe-rotating", "whsec_v3");
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(deliver("whsec_v1", "evt_d").await, 401);
    assert_eq!(deliver("whsec_v2", "evt_e").await, 202);
    assert_eq!(deliver("whsec_v3", "evt_f").await, 202);
    // With no grace period, the rotation is over at once: only the current secret verifies.
    let data_dir = app.kill();
    let strict = spawn_app_in(&data_dir, &["--webhook-secret-grace-seconds", "0"]);
    let (body, signature) = stripe_delivery("whsec_v2", "evt_g", now());
    assert_eq!(post_stripe(&strict, &connection_id, &body, Some(&signature)).await.status(), 401);
    let (body, signature) = stripe_delivery("whsec_v3", "evt_h", now());
    assert_eq!(post_stripe(&strict, &connection_id, &body, Some(&signature)).await.status(), 202);
}

#[tokio::test]
async fn concurrent_identical_deliveries_are_accepted_once() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app_in(dir.path(), &["--no-workers"]);
    let token = app.token(TENANT, ALL_SCOPES);
    let connection_id = connection_for(&app, &token, "stripe", "whsec_race", None).await;
    for round in 0..10 {
        let (body, signature) = stripe_delivery("whsec_race", &format!("evt_race_{round}"), now());
        let before = store_position(&app).await;
        let (a, b) = tokio::join!(
            post_stripe(&app, &connection_id, &body, Some(&signature)),
            post_stripe(&app, &connection_id, &body, Some(&signature)),
        );
        let mut statuses = [a.status().as_u16(), b.status().as_u16()];
        statuses.sort();
        assert_eq!(statuses, [200, 202], "round {round}");
        let (a, b): (Value, Value) = (a.json().await.unwrap(), b.json().await.unwrap());
        assert_eq!(a["deliveryId"], b["deliveryId"]);
        assert_eq!(store_position(&app).await, before + 2);
    }
}

/// Sends raw HTTP/1.1 and returns the status line and everything read until the server closes
/// or 5 s pass.
fn raw_http(addr: &str, head: &str, body_chunks: &[Vec<u8>]) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    stream.write_all(head.as_bytes()).unwrap();
    for chunk in body_chunks {
        // The server may answer and close before the whole body is sent: that is the point.
        if stream.write_all(chunk).is_err() {
            break;
        }
    }
    let mut response = Vec::new();
    let mut buffer = [0u8; 4096];
    while let Ok(n) = stream.read(&mut buffer) {
        if n == 0 {
            break;
        }
        response.extend_from_slice(&buffer[..n]);
        if response.windows(4).any(|w| w == b"\r\n\r\n") && response.ends_with(b"}") {
            break;
        }
    }
    String::from_utf8_lossy(&response).into_owned()
}

fn chunked(body: &[u8], chunk_size: usize) -> Vec<Vec<u8>> {
    let mut chunks: Vec<Vec<u8>> = body
        .chunks(chunk_size)
        .map(|c| [format!("{:x}\r\n", c.len()).into_bytes(), c.to_vec(), b"\r\n".to_vec()].concat())
        .collect();
    chunks.push(b"0\r\n\r\n".to_vec());
    chunks
}

#[tokio::test]
async fn bodies_over_the_limit_are_refused_from_content_length_and_while_chunked() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app_in(dir.path(), &["--max-body-bytes", "2048", "--no-workers"]);
    let token = app.token(TENANT, ALL_SCOPES);
    let connection_id = connection_for(&app, &token, "github", "gh-secret", None).await;
    let addr = app.base.trim_start_matches("http://").to_string();
    let before = store_position(&app).await;
    let path = format!("/webhooks/deliveries?connectionId={connection_id}");

    // Declared too large: answered 413 without the body ever being sent.
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nX-GitHub-Event: push\r\n\
         X-GitHub-Delivery: d-big\r\nX-Hub-Signature-256: sha256=00\r\nContent-Length: 10000000\r\n\r\n"
    );
    let addr_for_thread = addr.clone();
    let declared = tokio::task::spawn_blocking(move || raw_http(&addr_for_thread, &head, &[])).await.unwrap();
    assert!(declared.starts_with("HTTP/1.1 413"), "{declared}");
    assert!(declared.contains("application/problem+json"), "{declared}");

    // Chunked (no Content-Length), correctly signed, over the limit: cut off while reading.
    let big = json!({"ref": "refs/heads/main", "after": "a", "padding": "x".repeat(8000)}).to_string();
    let signature = connectors::github::sign(b"gh-secret", big.as_bytes());
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nX-GitHub-Event: push\r\n\
         X-GitHub-Delivery: d-chunked-big\r\nX-Hub-Signature-256: {signature}\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    let (addr_for_thread, chunks) = (addr.clone(), chunked(big.as_bytes(), 512));
    let over = tokio::task::spawn_blocking(move || raw_http(&addr_for_thread, &head, &chunks)).await.unwrap();
    assert!(over.starts_with("HTTP/1.1 413"), "{over}");
    assert!(over.contains("application/problem+json"), "{over}");

    // Chunked under the limit is read whole and verified like any body.
    let small = json!({"ref": "refs/heads/main", "after": "a"}).to_string();
    let signature = connectors::github::sign(b"gh-secret", small.as_bytes());
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nX-GitHub-Event: push\r\n\
         X-GitHub-Delivery: d-chunked-small\r\nX-Hub-Signature-256: {signature}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    let (addr_for_thread, chunks) = (addr.clone(), chunked(small.as_bytes(), 7));
    let under = tokio::task::spawn_blocking(move || raw_http(&addr_for_thread, &head, &chunks)).await.unwrap();
    assert!(under.starts_with("HTTP/1.1 202"), "{under}");
    assert_eq!(store_position(&app).await, before + 2, "only the delivery under the limit was stored");
}

#[tokio::test]
async fn slack_url_verification_is_answered_and_not_stored() {
    let dir = tempfile::tempdir().unwrap();
    // No workers: the connection's first health check would append events in the background.
    let app = spawn_app_in(dir.path(), &["--no-workers"]);
    let token = app.token(TENANT, ALL_SCOPES);
    let connection_id = connection_for(&app, &token, "slack", "slack-signing-secret", None).await;
    let before = store_position(&app).await;
    let body = json!({"token": "x", "challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P", "type": "url_verification"}).to_string();
    let t = now();
    let r = app
        .client
        .post(app.url(&format!("/webhooks/deliveries?connectionId={connection_id}")))
        .header("content-type", "application/json")
        .header("x-slack-request-timestamp", t.to_string())
        .header("x-slack-signature", connectors::slack::sign(b"slack-signing-secret", t, body.as_bytes()))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["challenge"], "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P");
    assert_eq!(store_position(&app).await, before);
}

/// `serve` with stderr captured, at `debug`, so the test can read every log line.
struct LoggedApp {
    app: App,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

fn spawn_logged_app(data_dir: &Path) -> LoggedApp {
    use std::io::BufRead;
    let mut child: Child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .env("IE_LOG", "debug")
        .env_remove("IE_MASTER_KEY")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let mut err_lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let sink = stderr.clone();
    std::thread::spawn(move || {
        while let Some(Ok(line)) = err_lines.next() {
            sink.lock().unwrap().push_str(&(line + "\n"));
        }
    });
    LoggedApp { app: support::App::when_listening(child, data_dir), stderr }
}

#[tokio::test]
async fn payloads_never_reach_the_log_accepted_or_refused() {
    let dir = tempfile::tempdir().unwrap();
    let logged = spawn_logged_app(dir.path());
    let app = &logged.app;
    let token = app.token(TENANT, ALL_SCOPES);
    let connection_id = connection_for(app, &token, "github", "gh-secret", None).await;
    let marker = format!("payload-marker-{}", uuid::Uuid::new_v4().simple());
    let body = json!({"ref": "refs/heads/main", "after": "a", "head_commit": {"message": marker}}).to_string();
    for (signature, delivery) in
        [(connectors::github::sign(b"gh-secret", body.as_bytes()), "d-ok"), ("sha256=00".to_string(), "d-bad")]
    {
        app.client
            .post(app.url(&format!("/webhooks/deliveries?connectionId={connection_id}")))
            .header("content-type", "application/json")
            .header("x-github-event", "push")
            .header("x-github-delivery", delivery)
            .header("x-hub-signature-256", signature)
            .body(body.clone())
            .send()
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = logged.stderr.lock().unwrap().clone();
    assert!(log.contains("inbound delivery refused"), "the refusal is logged (without its payload)");
    assert!(!log.contains(&marker), "the payload reached the log:\n{log}");
    assert!(!log.contains("gh-secret"), "the secret reached the log");
}

/// A provider's key set served over plain HTTP on loopback from a thread; a test can change it
/// and count the engine's fetches.
struct JwksServer {
    url: String,
    keys: std::sync::Arc<std::sync::Mutex<Value>>,
    fetches: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl JwksServer {
    fn start(keys: Value) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
        let served = std::sync::Arc::new(std::sync::Mutex::new(keys));
        let fetches = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (body_of, count) = (served.clone(), fetches.clone());
        std::thread::spawn(move || {
            for mut stream in listener.incoming().flatten() {
                let mut request = [0u8; 4096];
                let _ = stream.read(&mut request);
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let body = body_of.lock().unwrap().to_string();
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(body.as_bytes()));
            }
        });
        Self { url, keys: served, fetches }
    }

    fn fetches(&self) -> usize {
        self.fetches.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// An Ed25519 signing key with its `kid`, and its public JWK.
struct SigningKey {
    kid: &'static str,
    pair: ring::signature::Ed25519KeyPair,
}

impl SigningKey {
    fn new(kid: &'static str) -> Self {
        let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
        Self { kid, pair: ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap() }
    }

    fn jwk(&self) -> Value {
        use base64::Engine as _;
        use ring::signature::KeyPair as _;
        let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(self.pair.public_key().as_ref());
        json!({"kty": "OKP", "crv": "Ed25519", "kid": self.kid, "x": x})
    }

    /// A compact JWS of a delivery with id `jti`.
    fn sign(&self, jti: &str) -> String {
        use base64::Engine as _;
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let header = json!({"alg": "EdDSA", "kid": self.kid}).to_string();
        let payload = json!({"type": "account.updated", "jti": jti, "iat": now()}).to_string();
        let input = format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()));
        format!("{input}.{}", b64(self.pair.sign(input.as_bytes()).as_ref()))
    }
}

/// A provider that rotates its signing key is followed at once: a JWS signed with a key the
/// held set lacks fetches the set again and is verified with it. Made-up key ids do not make
/// the engine fetch the provider's key set again within 30 s.
#[tokio::test]
async fn a_rotated_provider_key_is_fetched_at_once_and_made_up_keys_do_not_hammer_the_provider() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app_in(dir.path(), &["--no-workers", "--webhook-allow-hosts", "127.0.0.1"]);
    let token = app.token(TENANT, ALL_SCOPES);
    let (first, rotated, made_up) = (SigningKey::new("k-1"), SigningKey::new("k-2"), SigningKey::new("k-forged"));
    let provider = JwksServer::start(json!({"keys": [first.jwk()]}));
    register_provider(&app, &token, provider_key("jws")).await;
    let configuration = json!({"webhookScheme": "jws", "webhookJwks": provider.url});
    let connection_id = connect(&app, &token, provider_key("jws"), configuration).await;
    let post = |jws: String| {
        let url = app.url(&format!("/webhooks/deliveries?connectionId={connection_id}"));
        app.client.post(url).header("content-type", "application/jose").body(jws).send()
    };

    let accepted = post(first.sign("d-1")).await.unwrap();
    let status = accepted.status();
    let body = accepted.text().await.unwrap();
    assert_eq!(status, 202, "{body}");
    assert_eq!(provider.fetches(), 1);

    // The provider rotates: the next delivery, signed with the new key, is accepted at once.
    *provider.keys.lock().unwrap() = json!({"keys": [rotated.jwk()]});
    assert_eq!(post(rotated.sign("d-2")).await.unwrap().status(), 202);
    assert_eq!(provider.fetches(), 2, "one fetch for the rotation");

    // Forged key ids right after: refused, and the provider is not asked again.
    for n in 0..5 {
        assert_problem(post(made_up.sign(&format!("f-{n}"))).await.unwrap(), 401).await;
    }
    assert_eq!(provider.fetches(), 2, "no fetch for made-up keys within 30 s of the last");
    assert_eq!(events_of_type(dir.path(), "DeliveryAccepted").len(), 2);
}
