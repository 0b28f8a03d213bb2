//! Outbound webhook fan-out end to end through the real binary (embedded mode): subscriptions
//! created over HTTP, platform events published with `integration-engine webhooks publish`,
//! delivered to a receiver process that verifies every request with the PyPI
//! `standardwebhooks` package (tests/e2e/fanout_support/receiver.py), and read back with
//! `GET /integrations/runs/{runId}`. The receiver needs `python3` with `standardwebhooks`
//! (`pip install standardwebhooks`; scripts/test installs it).

use crate::bus_support;
use crate::support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{App, BIN, spawn_app_in};

const TENANT: &str = "connectsoft";
const SCOPES: &str = "webhooks.subscriptions.write integration.runs.read";
const SECRET_REF: &str = "kv://partner-hooks/signing";
/// Two `whsec_` secrets (base64 of 24 bytes each).
const SECRET_V1: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const SECRET_V2: &str = "whsec_c2Vjb25kLXZlcnNpb24tb2YtdGhlLWtleQ==";

/// A receiver process (tests/e2e/fanout_support/receiver.py) and its request log.
struct Receiver {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Receiver {
    fn start(plan: &str, delay: f64, secrets: &[&str]) -> Receiver {
        Self::spawn(plan, delay, secrets, None)
    }

    fn spawn(plan: &str, delay: f64, secrets: &[&str], secret_file: Option<&Path>) -> Receiver {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("requests.jsonl");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/fanout_support/receiver.py");
        let mut command = Command::new("python3");
        command.arg(script).arg("--log").arg(&log).args(["--plan", plan, "--delay", &delay.to_string()]);
        for secret in secrets {
            command.args(["--secret", secret]);
        }
        if let Some(file) = secret_file {
            command.arg("--secret-file").arg(file);
        }
        let mut child = command
            .args(["--lifetime", "300"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 (with the standardwebhooks package) runs the receiver");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let line =
            lines.next().expect("the receiver exited before listening (is standardwebhooks installed?)").unwrap();
        let port = line.strip_prefix("listening on ").expect("listening line").trim().parse().unwrap();
        Receiver { child, port, log, _dir: dir }
    }

    /// A receiver that also verifies with the secrets in `secret_file`, read again for every
    /// request (the engine generates the next one during the test).
    fn start_with_secret_file(plan: &str, secrets: &[&str], secret_file: &Path) -> Receiver {
        Self::spawn(plan, 0.0, secrets, Some(secret_file))
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn records(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Waits until `done(records)` holds; panics with the log after `timeout`.
    async fn wait_until(&self, timeout: Duration, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let records = self.records();
            if done(&records) {
                return records;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}; the receiver saw {records:#?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// `serve` with the receiver's loopback address allow-listed and fast retries.
fn serve(dir: &Path, schedule: &str) -> App {
    serve_with(dir, schedule, &[])
}

fn serve_with(dir: &Path, schedule: &str, extra: &[&str]) -> App {
    let mut args = vec![
        "--webhook-allow-hosts",
        "127.0.0.1",
        "--webhook-retry-schedule",
        schedule,
        "--webhook-retry-jitter",
        "0",
        "--webhook-timeout-ms",
        "1000",
        "--webhook-lease-grace-ms",
        "500",
    ];
    args.extend_from_slice(extra);
    spawn_app_in(dir, &args)
}

async fn subscribe(app: &App, token: &str, body: Value) -> String {
    let mut body = body;
    body["signingSecretRef"] = json!(SECRET_REF);
    let response = app.post_json("/webhooks/subscriptions", token, &body).await;
    let status = response.status();
    let answer: Value = response.json().await.unwrap();
    assert_eq!(status, 201, "{answer}");
    answer["subscriptionId"].as_str().unwrap().to_owned()
}

fn publish(dir: &Path, tenant: &str, project: Option<&str>, event_type: &str, data: &Value, message_id: &str) {
    publish_via(dir, None, tenant, project, event_type, data, message_id);
}

/// `webhooks publish`: into the data dir's store, or as `PublishEvent` on Kafka.
fn publish_via(
    dir: &Path,
    brokers: Option<&str>,
    tenant: &str,
    project: Option<&str>,
    event_type: &str,
    data: &Value,
    message_id: &str,
) {
    let mut command = Command::new(BIN);
    if let Some(brokers) = brokers {
        command.env("IE_KAFKA_BROKERS", brokers);
    }
    command
        .args(["webhooks", "publish", "--data-dir"])
        .arg(dir)
        .args(["--tenant", tenant, "--event-type", event_type, "--message-id", message_id])
        .args(["--data-json", &data.to_string()])
        .env_remove("IE_MASTER_KEY");
    if let Some(project) = project {
        command.args(["--project", project]);
    }
    let out = command.output().unwrap();
    assert!(out.status.success(), "webhooks publish failed: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), message_id);
}

/// The run id the engine derives for (subscription, message), computed independently.
fn run_id(tenant: &str, subscription: &str, message: &str) -> String {
    let digest = ring::digest::digest(
        &ring::digest::SHA256,
        format!("DeliverWebhook\0{tenant}\0{subscription}\0{message}").as_bytes(),
    );
    format!("run-{}", hex::encode(&digest.as_ref()[..16]))
}

async fn wait_for_run(app: &App, token: &str, run_id: &str, statuses: &[&str], timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let response = app.get(&format!("/integrations/runs/{run_id}"), token).await;
        if response.status() == 200 {
            let run: Value = response.json().await.unwrap();
            if statuses.contains(&run["status"].as_str().unwrap_or_default()) {
                return run;
            }
            assert!(Instant::now() < deadline, "run {run_id} did not reach {statuses:?}: {run}");
        } else {
            assert!(Instant::now() < deadline, "run {run_id} never appeared");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn matching_deliveries_are_signed_verified_by_standardwebhooks_and_recorded_as_runs() {
    let dir = tempfile::tempdir().unwrap();
    let app = serve(dir.path(), "200ms,200ms");
    support::put_secret(dir.path(), SECRET_REF, SECRET_V1);
    let token = app.token(TENANT, SCOPES);
    let other_token = app.token("other-tenant", SCOPES);
    let receiver = Receiver::start("ok", 0.0, &[SECRET_V1, SECRET_V2]);
    let exact_p1 = subscribe(
        &app,
        &token,
        json!({"projectId": "p1", "eventType": "DeploymentPromoted", "endpointUrl": receiver.url("/exact-p1")}),
    )
    .await;
    let prefix_any =
        subscribe(&app, &token, json!({"eventType": "Deployment*", "endpointUrl": receiver.url("/prefix-any")})).await;
    let prefix_p2 = subscribe(
        &app,
        &token,
        json!({"projectId": "p2", "eventType": "Deployment*", "endpointUrl": receiver.url("/prefix-p2")}),
    )
    .await;
    subscribe(
        &app,
        &token,
        json!({"eventType": "DeploymentPromoted", "endpointUrl": receiver.url("/inactive"), "active": false}),
    )
    .await;
    // The other tenant signs with a secret of its own vault.
    support::put_secret_as(dir.path(), "kv://other-hooks/signing", SECRET_V1, &["--tenant", "other-tenant"]);
    let other = json!({"eventType": "*", "endpointUrl": receiver.url("/other-tenant"),
        "signingSecretRef": "kv://other-hooks/signing"});
    assert_eq!(app.post_json("/webhooks/subscriptions", &other_token, &other).await.status(), 201);

    publish(dir.path(), TENANT, Some("p1"), "DeploymentPromoted", &json!({"release": "1.4"}), "msg-1");
    publish(dir.path(), TENANT, Some("p2"), "DeploymentFailed", &json!({"release": "1.5"}), "msg-2");
    publish(dir.path(), TENANT, Some("p1"), "PullRequestMerged", &json!({"number": 7}), "msg-3");

    let expected: BTreeSet<(&str, &str)> =
        [("/exact-p1", "msg-1"), ("/prefix-any", "msg-1"), ("/prefix-any", "msg-2"), ("/prefix-p2", "msg-2")].into();
    let records = receiver
        .wait_until(Duration::from_secs(30), "the four matching deliveries", |r| {
            r.iter().filter(|r| r["answered"] == 200).count() >= expected.len()
        })
        .await;
    // Nothing else arrives: give a straggler the time to show up.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let records = if receiver.records().len() > records.len() { receiver.records() } else { records };
    let got: BTreeSet<(String, String)> = records
        .iter()
        .map(|r| (r["path"].as_str().unwrap().to_owned(), r["webhookId"].as_str().unwrap().to_owned()))
        .collect();
    let expected_owned: BTreeSet<(String, String)> =
        expected.iter().map(|(p, m)| ((*p).to_owned(), (*m).to_owned())).collect();
    assert_eq!(got, expected_owned, "exactly the matching (subscription, message) pairs: {records:#?}");
    assert_eq!(records.len(), expected.len(), "each once: {records:#?}");

    for record in &records {
        // Verified by the standardwebhooks package with the current secret.
        assert_eq!(record["verifiedWith"], json!([0]), "{record}");
        assert_eq!(record["signatures"], 1);
        assert_eq!(record["contentType"], "application/json");
        let body = &record["body"];
        assert_eq!(record["ce"]["ce-id"], record["webhookId"]);
        assert_eq!(record["ce"]["ce-type"], body["type"]);
        assert_eq!(record["ce"]["ce-specversion"], "1.0");
        assert_eq!(record["ce"]["ce-source"], "urn:connectsoft:integration-engine");
        assert!(record["ce"]["ce-time"].is_string());
        assert_eq!(body.as_object().unwrap().keys().collect::<Vec<_>>(), ["data", "timestamp", "type"]);
        assert!(body["timestamp"].as_str().unwrap().ends_with('Z'));
    }
    let first = records.iter().find(|r| r["path"] == "/exact-p1").unwrap();
    assert_eq!(first["body"]["type"], "DeploymentPromoted");
    assert_eq!(first["body"]["data"], json!({"release": "1.4"}));

    // Each dispatch is a run with its attempt recorded.
    let run =
        wait_for_run(&app, &token, &run_id(TENANT, &exact_p1, "msg-1"), &["Completed"], Duration::from_secs(10)).await;
    assert_eq!(run["operation"], "DeliverWebhook");
    assert_eq!(run["subscriptionId"], exact_p1.as_str());
    assert_eq!(run["attempts"], 1);
    let attempt = &run["attemptLog"][0];
    assert_eq!((attempt["attempt"].as_u64(), attempt["outcome"].as_str()), (Some(1), Some("Succeeded")), "{run}");
    assert_eq!(attempt["statusCode"], 200);
    assert_eq!(attempt["responseBody"], "ok");
    assert!(attempt["latencyMs"].is_u64() && attempt["startedAt"].is_string(), "{run}");
    for (subscription, message) in [(&prefix_any, "msg-2"), (&prefix_p2, "msg-2")] {
        wait_for_run(&app, &token, &run_id(TENANT, subscription, message), &["Completed"], Duration::from_secs(10))
            .await;
    }
    // Not matching: no run at all.
    let none = app.get(&format!("/integrations/runs/{}", run_id(TENANT, &exact_p1, "msg-2")), &token).await;
    assert_eq!(none.status(), 404);

    // During a rotation, every valid secret signs: receivers on either version verify.
    support::put_secret(dir.path(), SECRET_REF, SECRET_V2);
    // The server reads the vault through a cache of 5 s.
    tokio::time::sleep(Duration::from_millis(5500)).await;
    publish(dir.path(), TENANT, Some("p1"), "DeploymentPromoted", &json!({"release": "1.6"}), "msg-4");
    let records = receiver
        .wait_until(Duration::from_secs(30), "the delivery after the rotation", |r| {
            r.iter().any(|r| r["webhookId"] == "msg-4" && r["path"] == "/exact-p1")
        })
        .await;
    let rotated = records.iter().find(|r| r["webhookId"] == "msg-4" && r["path"] == "/exact-p1").unwrap();
    assert_eq!(rotated["signatures"], 2, "{rotated}");
    assert_eq!(rotated["verifiedWith"], json!([0, 1]), "both the old and the new secret verify: {rotated}");
}

#[tokio::test]
async fn failures_are_retried_then_dead_lettered_and_redelivered_and_endpoints_steer_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let app = serve(dir.path(), "200ms,200ms,200ms");
    support::put_secret(dir.path(), SECRET_REF, SECRET_V1);
    let token = app.token(TENANT, SCOPES);
    let flaky = Receiver::start("status:500,302,200", 0.0, &[SECRET_V1]);
    let down = Receiver::start("status:500,500,500,500,200", 0.0, &[SECRET_V1]);
    let gone = Receiver::start("status:410", 0.0, &[SECRET_V1]);
    let abort = Receiver::start("header:webhook-delivery=abort-message:500", 0.0, &[SECRET_V1]);
    let busy = Receiver::start("retry-after:2:503", 0.0, &[SECRET_V1]);
    let sub_flaky = subscribe(&app, &token, json!({"eventType": "Flaky", "endpointUrl": flaky.url("/")})).await;
    let sub_down = subscribe(&app, &token, json!({"eventType": "Down", "endpointUrl": down.url("/")})).await;
    let sub_gone = subscribe(&app, &token, json!({"eventType": "Gone", "endpointUrl": gone.url("/")})).await;
    let sub_abort = subscribe(&app, &token, json!({"eventType": "Abort", "endpointUrl": abort.url("/")})).await;
    let sub_busy = subscribe(&app, &token, json!({"eventType": "Busy", "endpointUrl": busy.url("/")})).await;
    for (event_type, message) in
        [("Flaky", "msg-f"), ("Down", "msg-d"), ("Gone", "msg-g"), ("Abort", "msg-a"), ("Busy", "msg-b")]
    {
        publish(dir.path(), TENANT, None, event_type, &json!({}), message);
    }
    let wait = Duration::from_secs(30);

    // 500 and 302 are failures, retried with the same webhook-id until the 200.
    let run = wait_for_run(&app, &token, &run_id(TENANT, &sub_flaky, "msg-f"), &["Completed", "Failed"], wait).await;
    assert_eq!(run["status"], "Completed", "{run}");
    let codes: Vec<_> = run["attemptLog"].as_array().unwrap().iter().map(|a| a["statusCode"].clone()).collect();
    assert_eq!(codes, [json!(500), json!(302), json!(200)], "{run}");
    assert!(run["attemptLog"][1]["error"].as_str().unwrap().contains("302"), "{run}");
    let ids: BTreeSet<String> = flaky.records().iter().map(|r| r["webhookId"].as_str().unwrap().to_owned()).collect();
    assert_eq!(ids, BTreeSet::from(["msg-f".to_owned()]), "webhook-id is stable across retries");

    // Four failures exhaust the schedule (3 retries): dead-lettered; redelivery sends it again.
    let down_run = run_id(TENANT, &sub_down, "msg-d");
    let run = wait_for_run(&app, &token, &down_run, &["Completed", "Failed"], wait).await;
    assert_eq!((run["status"].as_str(), run["attempts"].as_u64()), (Some("Failed"), Some(4)), "{run}");
    let out = Command::new(BIN)
        .args(["webhooks", "redeliver", "--data-dir"])
        .arg(dir.path())
        .args(["--tenant", TENANT, "--subscription", &sub_down])
        .env_remove("IE_MASTER_KEY")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), down_run);
    let run = wait_for_run(&app, &token, &down_run, &["Completed"], wait).await;
    assert_eq!(run["attempts"], 5, "{run}");
    assert_eq!(down.records().len(), 5);

    // 410 Gone: the run ends and the subscription is deactivated, saying why.
    let run = wait_for_run(&app, &token, &run_id(TENANT, &sub_gone, "msg-g"), &["Failed"], wait).await;
    assert_eq!(run["attempts"], 1, "{run}");
    assert!(run["lastError"].as_str().unwrap().contains("410"), "{run}");
    // webhook-delivery: abort-message stops the retries of that message.
    let run = wait_for_run(&app, &token, &run_id(TENANT, &sub_abort, "msg-a"), &["Failed"], wait).await;
    assert_eq!(run["attempts"], 1, "{run}");
    assert!(run["lastError"].as_str().unwrap().contains("abort-message"), "{run}");
    // A deactivated subscription gets nothing more.
    tokio::time::sleep(Duration::from_millis(500)).await;
    publish(dir.path(), TENANT, None, "Gone", &json!({}), "msg-g2");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(gone.records().len(), 1, "nothing after 410");
    let none = app.get(&format!("/integrations/runs/{}", run_id(TENANT, &sub_gone, "msg-g2")), &token).await;
    assert_eq!(none.status(), 404);

    // 503 with Retry-After: 2 waits 2 s although the schedule says 200 ms.
    busy.wait_until(wait, "two attempts at the busy endpoint", |r| r.len() >= 2).await;
    let records = busy.records();
    let gap = records[1]["arrivedAt"].as_f64().unwrap() - records[0]["arrivedAt"].as_f64().unwrap();
    assert!(gap >= 1.9, "Retry-After honoured: {gap} s between attempts");
    let run = wait_for_run(&app, &token, &run_id(TENANT, &sub_busy, "msg-b"), &["Running"], wait).await;
    assert_eq!(run["attemptLog"][0]["statusCode"], 503, "{run}");

    // Redelivery by time range: every dead-lettered delivery requested in it (here the aborted
    // and the gone one), and none outside it.
    let redeliver_range = |since: &str, until: &str| {
        let out = Command::new(BIN)
            .args(["webhooks", "redeliver", "--data-dir"])
            .arg(dir.path())
            .args(["--tenant", TENANT, "--since", since, "--until", until])
            .env_remove("IE_MASTER_KEY")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect::<BTreeSet<String>>()
    };
    assert!(redeliver_range("2000-01-01T00:00:00Z", "2001-01-01T00:00:00Z").is_empty());
    let redelivered = redeliver_range("2000-01-01T00:00:00Z", "2999-01-01T00:00:00Z");
    let aborted = run_id(TENANT, &sub_abort, "msg-a");
    let gone_run = run_id(TENANT, &sub_gone, "msg-g");
    assert_eq!(redelivered, BTreeSet::from([aborted.clone(), gone_run.clone()]));
    abort.wait_until(wait, "the aborted message sent again", |r| r.len() >= 2).await;
    let deadline = Instant::now() + wait;
    while wait_for_run(&app, &token, &aborted, &["Failed"], wait).await["attempts"] != 2 {
        assert!(Instant::now() < deadline, "the aborted message's second attempt was not recorded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The gone subscription is inactive: its redelivered run ends without a request.
    let deadline = Instant::now() + wait;
    loop {
        let run = wait_for_run(&app, &token, &gone_run, &["Failed"], wait).await;
        if run["lastError"].as_str().unwrap().contains("inactive") {
            break;
        }
        assert!(Instant::now() < deadline, "the redelivered run of the gone subscription did not end: {run}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(gone.records().len(), 1);
}

/// The stored event of `event_type` in the stream `{tenant}/{resource}`: (event id, data).
fn stored_event(data_dir: &Path, tenant: &str, resource: &str, event_type: &str) -> (String, Value) {
    let db = rusqlite::Connection::open(data_dir.join("events.db")).unwrap();
    let (event_id, data): (String, String) = db
        .query_row(
            "SELECT event_id, data FROM events WHERE stream_id = ?1 AND event_type = ?2",
            [format!("{tenant}/{resource}"), event_type.to_owned()],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .unwrap();
    (event_id, serde_json::from_str(&data).unwrap())
}

/// The inbound gateway's normalized events are messages too: a signed GitHub push accepted on
/// `/webhooks/deliveries` becomes `CodePushed`, which reaches the subscription whose pattern
/// (`Code*`) and project (the connection's) match, once, signed and verified, with the
/// normalized event as `data`; subscriptions to another type or project get nothing.
#[tokio::test]
async fn normalized_events_of_the_inbound_gateway_are_fanned_out() {
    let dir = tempfile::tempdir().unwrap();
    let app = serve(dir.path(), "200ms,200ms");
    support::put_secret(dir.path(), SECRET_REF, SECRET_V1);
    let token = app.token(TENANT, support::ALL_SCOPES);
    let receiver = Receiver::start("ok", 0.0, &[SECRET_V1]);
    let project = "proj-booking-saas";

    // A GitHub connection of the project, its webhook secret in the vault.
    let provider = app
        .post_json(
            "/integrations/providers",
            &token,
            &json!({"tenantId": TENANT, "key": "github", "displayName": "GitHub", "category": "Webhooks",
                    "authModel": "HmacSignature", "apiClient": "ConnectSoft.Webhooks", "capabilities": [],
                    "baseUrl": "https://api.example.com"}),
        )
        .await;
    assert_eq!(provider.status(), 201, "{}", provider.text().await.unwrap());
    app.put_secret("kv://factory/github-webhook", "gh-secret");
    let connection = app
        .post_json(
            "/integrations/connections",
            &token,
            &json!({"projectId": project, "providerId": "prov-github", "displayName": "GitHub",
                    "authMode": "ApiKey", "credentialRef": "kv://factory/github-api",
                    "configuration": {"webhookSecretRef": "kv://factory/github-webhook"}}),
        )
        .await;
    let connection: Value = connection.json().await.unwrap();
    let connection_id = connection["connectionId"].as_str().unwrap_or_else(|| panic!("{connection}"));

    let code = subscribe(
        &app,
        &token,
        json!({"projectId": project, "eventType": "Code*", "endpointUrl": receiver.url("/code")}),
    )
    .await;
    let merged =
        subscribe(&app, &token, json!({"eventType": "PullRequestMerged", "endpointUrl": receiver.url("/merged")}))
            .await;
    let elsewhere = subscribe(
        &app,
        &token,
        json!({"projectId": "proj-other", "eventType": "CodePushed", "endpointUrl": receiver.url("/elsewhere")}),
    )
    .await;

    let push = json!({"ref": "refs/heads/main", "before": "1111111", "after": "2222222",
                      "repository": {"full_name": "connectsoft/engine"}, "pusher": {"name": "octocat"}})
    .to_string();
    let accepted = app
        .client
        .post(app.url(&format!("/webhooks/deliveries?connectionId={connection_id}")))
        .header("content-type", "application/json")
        .header("x-github-event", "push")
        .header("x-github-delivery", "gh-delivery-1")
        .header("x-hub-signature-256", connectors::github::sign(b"gh-secret", push.as_bytes()))
        .body(push)
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), 202);
    let accepted: Value = accepted.json().await.unwrap();
    assert_eq!(accepted["normalizedEventType"], "CodePushed", "{accepted}");
    let delivery_id = accepted["deliveryId"].as_str().unwrap();
    // The message is the normalized event: its id is `msg-` + the event's id.
    let (event_id, normalized) = stored_event(dir.path(), TENANT, delivery_id, "CodePushed");
    let message_id = format!("msg-{}", event_id.replace('-', ""));

    receiver
        .wait_until(Duration::from_secs(30), "the CodePushed delivery", |r| r.iter().any(|r| r["answered"] == 200))
        .await;
    // Nothing else arrives: give a straggler the time to show up.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let records = receiver.records();
    assert_eq!(records.len(), 1, "one request, to the matching subscription only: {records:#?}");
    let record = &records[0];
    assert_eq!(record["path"], "/code", "{record}");
    assert_eq!(record["verifiedWith"], json!([0]), "verified by standardwebhooks: {record}");
    assert_eq!(record["webhookId"], message_id.as_str(), "{record}");
    assert_eq!(record["body"]["type"], "CodePushed", "{record}");
    assert_eq!(record["body"]["data"], normalized, "the normalized event is the data: {record}");
    assert_eq!(record["body"]["data"]["connectionId"], connection_id, "{record}");
    assert_eq!(record["body"]["data"]["attributes"]["repository"], "connectsoft/engine", "{record}");
    assert_eq!(record["ce"]["ce-type"], "CodePushed");
    assert_eq!(record["ce"]["ce-subject"], project, "the connection's project: {record}");

    let run =
        wait_for_run(&app, &token, &run_id(TENANT, &code, &message_id), &["Completed"], Duration::from_secs(10)).await;
    assert_eq!(run["operation"], "DeliverWebhook", "{run}");
    assert_eq!(run["attemptLog"][0]["statusCode"], 200, "{run}");
    for other in [&merged, &elsewhere] {
        let none = app.get(&format!("/integrations/runs/{}", run_id(TENANT, other, &message_id)), &token).await;
        assert_eq!(none.status(), 404, "no run for a subscription that did not match");
    }
}

/// `webhooks redeliver --run`: exactly that dead-lettered delivery is sent again, under the
/// same `webhook-id`, and its run records the new attempt; another dead-lettered delivery
/// stays as it was, and a delivered run is not resent without `--include-delivered`.
#[tokio::test]
async fn redeliver_by_run_sends_that_dead_lettered_message_again_with_the_same_webhook_id() {
    let dir = tempfile::tempdir().unwrap();
    let app = serve(dir.path(), "200ms");
    support::put_secret(dir.path(), SECRET_REF, SECRET_V1);
    let token = app.token(TENANT, SCOPES);
    let recovering = Receiver::start("status:500,503,200", 0.0, &[SECRET_V1]);
    let broken = Receiver::start("status:500", 0.0, &[SECRET_V1]);
    let sub_recovering =
        subscribe(&app, &token, json!({"eventType": "Invoice", "endpointUrl": recovering.url("/")})).await;
    let sub_broken = subscribe(&app, &token, json!({"eventType": "Invoice", "endpointUrl": broken.url("/")})).await;
    publish(dir.path(), TENANT, None, "Invoice", &json!({"number": 42}), "msg-invoice-42");
    let wait = Duration::from_secs(30);

    // Two attempts each (the schedule has one retry): both dead-lettered.
    let chosen = run_id(TENANT, &sub_recovering, "msg-invoice-42");
    let untouched = run_id(TENANT, &sub_broken, "msg-invoice-42");
    for run in [&chosen, &untouched] {
        let run = wait_for_run(&app, &token, run, &["Completed", "Failed"], wait).await;
        assert_eq!((run["status"].as_str(), run["attempts"].as_u64()), (Some("Failed"), Some(2)), "{run}");
    }
    let redeliver = |run: &str, extra: &[&str]| {
        Command::new(BIN)
            .args(["webhooks", "redeliver", "--data-dir"])
            .arg(dir.path())
            .args(["--tenant", TENANT, "--run", run])
            .args(extra)
            .env_remove("IE_MASTER_KEY")
            .output()
            .unwrap()
    };
    let out = redeliver(&chosen, &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), chosen, "prints the run it requested again");

    // The new attempt: the same message under the same webhook-id, recorded on the same run.
    let run = wait_for_run(&app, &token, &chosen, &["Completed"], wait).await;
    assert_eq!(run["attempts"], 3, "{run}");
    let codes: Vec<_> = run["attemptLog"].as_array().unwrap().iter().map(|a| a["statusCode"].clone()).collect();
    assert_eq!(codes, [json!(500), json!(503), json!(200)], "{run}");
    let last = &run["attemptLog"][2];
    assert_eq!((last["attempt"].as_u64(), last["outcome"].as_str()), (Some(3), Some("Succeeded")), "{run}");
    let records = recovering.records();
    assert_eq!(records.len(), 3, "{records:#?}");
    assert!(
        records.iter().all(|r| r["webhookId"] == "msg-invoice-42" && r["verifiedWith"] == json!([0])),
        "every attempt is the same message, signed: {records:#?}"
    );
    assert!(records.iter().all(|r| r["body"]["data"] == json!({"number": 42})), "{records:#?}");
    assert!(
        records[2]["webhookTimestamp"].as_str().unwrap().parse::<u64>().unwrap()
            >= records[1]["webhookTimestamp"].as_str().unwrap().parse::<u64>().unwrap(),
        "the timestamp is the new attempt's"
    );

    // Only the named run: the other dead-lettered delivery was not sent again.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(broken.records().len(), 2);
    let run = wait_for_run(&app, &token, &untouched, &["Failed"], wait).await;
    assert_eq!(run["attempts"], 2, "{run}");

    // A delivered run is resent only when asked to.
    let out = redeliver(&chosen, &[]);
    assert!(!out.status.success(), "a delivered run is not dead-lettered");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--include-delivered"), "{out:?}");
    assert_eq!(recovering.records().len(), 3);
}

/// 429 (like 502, 503, 504) slows the endpoint down: its lane pauses (1 s the first time),
/// although the message's own retry is due after 200 ms.
#[tokio::test]
async fn an_overloaded_endpoint_is_slowed_down() {
    let dir = tempfile::tempdir().unwrap();
    let app = serve(dir.path(), "200ms,200ms,200ms");
    support::put_secret(dir.path(), SECRET_REF, SECRET_V1);
    let token = app.token(TENANT, SCOPES);
    let overloaded = Receiver::start("status:429,200", 0.0, &[SECRET_V1]);
    let calm = Receiver::start("ok", 0.0, &[SECRET_V1]);
    subscribe(&app, &token, json!({"eventType": "Burst", "endpointUrl": overloaded.url("/"), "maxInFlight": 1})).await;
    subscribe(&app, &token, json!({"eventType": "Burst", "endpointUrl": calm.url("/"), "maxInFlight": 1})).await;
    std::thread::scope(|scope| {
        for id in ["msg-burst-a", "msg-burst-b", "msg-burst-c"] {
            scope.spawn(|| publish(dir.path(), TENANT, None, "Burst", &json!({}), id));
        }
    });
    let records = overloaded.wait_until(Duration::from_secs(20), "four requests", |r| r.len() >= 4).await;
    let arrival = |r: &Value| r["arrivedAt"].as_f64().unwrap();
    let pause = arrival(&records[1]) - arrival(&records[0]);
    assert!(pause >= 0.9, "after the 429 the lane paused: {pause} s before the next request");
    // The other subscription's lane did not pause.
    let calm_records = calm.wait_until(Duration::from_secs(20), "three requests", |r| r.len() >= 3).await;
    assert!(arrival(&calm_records[2]) < arrival(&records[1]), "the calm endpoint got all three during the pause");
}

#[tokio::test]
async fn endpoints_must_be_https_and_public_unless_allow_listed() {
    let dir = tempfile::tempdir().unwrap();
    let app = serve(dir.path(), "1s");
    let token = app.token(TENANT, SCOPES);
    for (url, reason) in [
        ("http://hooks.partner.example/x", "must be https"),
        ("https://10.1.2.3/x", "private"),
        ("https://169.254.169.254/latest/meta-data", "cloud metadata"),
        ("https://100.64.0.9/", "carrier-grade NAT"),
        ("https://[::1]/", "loopback"),
        ("https://[fe80::1]/", "link-local"),
        ("https://224.0.0.1/", "multicast"),
        ("https://localhost/", "loopback"),
        ("http://127.0.0.2/", "must be https"),
    ] {
        let body = json!({"eventType": "X", "endpointUrl": url, "signingSecretRef": SECRET_REF});
        let response = app.post_json("/webhooks/subscriptions", &token, &body).await;
        assert_eq!(response.status(), 422, "{url}");
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["errors"][0]["field"], "endpointUrl", "{problem}");
        assert!(problem["errors"][0]["message"].as_str().unwrap().contains(reason), "{url}: {problem}");
    }
    for url in ["https://hooks.partner.example/x", "http://127.0.0.1:9/hook"] {
        let body = json!({"eventType": "X", "endpointUrl": url, "signingSecretRef": SECRET_REF});
        assert_eq!(app.post_json("/webhooks/subscriptions", &token, &body).await.status(), 201, "{url}");
    }
}

#[tokio::test]
async fn each_subscription_has_its_own_limits_and_a_slow_endpoint_delays_no_other() {
    let dir = tempfile::tempdir().unwrap();
    let app = serve(dir.path(), "200ms,200ms,200ms,200ms");
    support::put_secret(dir.path(), SECRET_REF, SECRET_V1);
    let token = app.token(TENANT, SCOPES);
    let slow = Receiver::start("ok", 0.8, &[SECRET_V1]);
    let fast = Receiver::start("ok", 0.0, &[SECRET_V1]);
    let limited = Receiver::start("ok", 0.0, &[SECRET_V1]);
    let ordered = Receiver::start("status:500,500,200", 0.0, &[SECRET_V1]);
    subscribe(&app, &token, json!({"eventType": "Load", "endpointUrl": slow.url("/"), "maxInFlight": 2})).await;
    subscribe(&app, &token, json!({"eventType": "Load", "endpointUrl": fast.url("/")})).await;
    subscribe(&app, &token, json!({"eventType": "Load", "endpointUrl": limited.url("/"), "rateLimitPerSecond": 2}))
        .await;
    subscribe(&app, &token, json!({"eventType": "Ordered", "endpointUrl": ordered.url("/"), "strictOrdering": true}))
        .await;

    // Eight messages at once: a backlog for the slow endpoint (2 at a time, 0.8 s each).
    let messages: Vec<String> = (0..8).map(|i| format!("msg-load-{i}")).collect();
    let acked: HashMap<String, f64> = std::thread::scope(|scope| {
        let handles: Vec<_> = messages
            .iter()
            .map(|m| {
                scope.spawn(|| {
                    publish(dir.path(), TENANT, None, "Load", &json!({}), m);
                    (m.clone(), unix_now())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let first_ack = acked.values().cloned().fold(f64::MAX, f64::min);

    let fast_records = fast.wait_until(Duration::from_secs(20), "the fast endpoint's eight", |r| r.len() >= 8).await;
    let slow_records = slow.wait_until(Duration::from_secs(30), "the slow endpoint's eight", |r| r.len() >= 8).await;
    let arrival = |r: &Value| r["arrivedAt"].as_f64().unwrap();
    let fast_latency =
        fast_records.iter().map(|r| arrival(r) - acked[r["webhookId"].as_str().unwrap()]).fold(0.0, f64::max);
    let fast_done = fast_records.iter().map(arrival).fold(0.0, f64::max);
    let slow_done = slow_records.iter().map(arrival).fold(0.0, f64::max);
    // 8 requests of 0.8 s, 2 at a time, take 3.2 s; the fast endpoint is not held back by them.
    assert!(slow_done - first_ack >= 2.3, "the slow endpoint's last request started {} s in", slow_done - first_ack);
    assert!(fast_latency < 1.0, "the fast endpoint got each message within {fast_latency} s of its publication");
    assert!(fast_done + 1.5 < slow_done, "fast done at {fast_done}, slow at {slow_done}");
    let max_in_flight = slow_records.iter().map(|r| r["inFlight"].as_u64().unwrap()).max().unwrap();
    assert_eq!(max_in_flight, 2, "maxInFlight 2: held and used");

    // 2 per second: 8 requests span at least ~3 s (a burst of 2, then one every 0.5 s).
    let limited_records = limited.wait_until(Duration::from_secs(20), "the rate-limited eight", |r| r.len() >= 8).await;
    let times: Vec<f64> = limited_records.iter().map(arrival).collect();
    let span = times.iter().cloned().fold(f64::MIN, f64::max) - times.iter().cloned().fold(f64::MAX, f64::min);
    assert!(span >= 2.5, "rate limit 2/s: 8 requests within {span} s");

    // Strict order: the first message is retried until delivered before the second is sent.
    let ordered_messages: Vec<String> = (0..4).map(|i| format!("msg-ordered-{i}")).collect();
    for message in &ordered_messages {
        publish(dir.path(), TENANT, None, "Ordered", &json!({}), message);
    }
    let ordered_records = ordered.wait_until(Duration::from_secs(30), "the ordered six", |r| r.len() >= 6).await;
    let sequence: Vec<String> = ordered_records.iter().map(|r| r["webhookId"].as_str().unwrap().to_owned()).collect();
    let mut expected = vec![ordered_messages[0].clone(), ordered_messages[0].clone()];
    expected.extend(ordered_messages.iter().cloned());
    assert_eq!(sequence, expected, "publication order, each after the previous succeeded");
    assert!(ordered_records.iter().all(|r| r["inFlight"] == 1));
}

fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64()
}

/// Point 7: SIGKILL the process doing the fan-out in the middle of a burst to a receiver that
/// fails half the requests and times out some; after the restart every matching message is
/// delivered and recorded, nothing reaches a subscription it did not match, and a message
/// delivered twice carries the same webhook-id both times.
#[tokio::test]
async fn nothing_is_lost_when_the_fan_out_process_is_killed_mid_burst() {
    let dir = tempfile::tempdir().unwrap();
    // Long enough that no message runs out of attempts against a 50% failure rate.
    let schedule = vec!["100ms"; 19].join(",");
    let app = serve(dir.path(), &schedule);
    support::put_secret(dir.path(), SECRET_REF, SECRET_V1);
    let token = app.token(TENANT, SCOPES);
    // Odd requests answer 500; every 5th request takes 1.5 s, past the 1 s timeout.
    let receiver = Receiver::start("flaky:5", 1.5, &[SECRET_V1]);
    let orders = subscribe(&app, &token, json!({"eventType": "Order*", "endpointUrl": receiver.url("/orders")})).await;
    let placed =
        subscribe(&app, &token, json!({"eventType": "OrderPlaced", "endpointUrl": receiver.url("/placed")})).await;
    subscribe(&app, &token, json!({"eventType": "Invoice*", "endpointUrl": receiver.url("/invoices")})).await;

    let total = 30;
    let messages: Vec<(String, &str)> = (0..total)
        .map(|i| (format!("msg-burst-{i}"), if i % 3 == 0 { "OrderShipped" } else { "OrderPlaced" }))
        .collect();
    let publish_range = |range: std::ops::Range<usize>| {
        for (id, event_type) in &messages[range] {
            publish(dir.path(), TENANT, None, event_type, &json!({"id": id}), id);
        }
    };
    publish_range(0..12);
    // Some deliveries are under way (and some attempts in flight) when the process dies.
    receiver.wait_until(Duration::from_secs(20), "the burst to start", |r| r.len() >= 6).await;
    let data_dir = app.kill();
    // Published while nothing runs: the store keeps them until the fan-out comes back.
    publish_range(12..20);
    let app = serve(&data_dir, &schedule);
    publish_range(20..total);

    let expected: BTreeSet<(String, String)> = messages
        .iter()
        .flat_map(|(id, event_type)| {
            let mut to = vec![("/orders".to_owned(), id.clone())];
            if *event_type == "OrderPlaced" {
                to.push(("/placed".to_owned(), id.clone()));
            }
            to
        })
        .collect();
    let records = receiver
        .wait_until(Duration::from_secs(120), "every matching message delivered", |r| {
            let delivered: BTreeSet<(String, String)> = r
                .iter()
                .filter(|r| r["answered"] == 200 && r["clientGone"].is_null())
                .map(|r| (r["path"].as_str().unwrap().to_owned(), r["webhookId"].as_str().unwrap().to_owned()))
                .collect();
            expected.is_subset(&delivered)
        })
        .await;

    assert!(records.iter().all(|r| r["path"] != "/invoices"), "no delivery to a subscription that did not match");
    let mut bodies: HashMap<(String, String), BTreeSet<String>> = HashMap::new();
    for record in &records {
        assert_eq!(record["verifiedWith"], json!([0]), "every request verifies: {record}");
        let key = (record["path"].as_str().unwrap().to_owned(), record["webhookId"].as_str().unwrap().to_owned());
        assert!(expected.contains(&key), "only matching (subscription, message) pairs: {record}");
        bodies.entry(key).or_default().insert(record["body"]["data"].to_string());
    }
    // A repeat (a retry, or a delivery whose success the killed process never recorded) is
    // the same message under the same webhook-id.
    assert!(bodies.values().all(|b| b.len() == 1), "{bodies:?}");
    let repeated = records.len() - expected.len();
    assert!(repeated > 0, "half the requests failed, so messages were sent more than once");

    // And recorded: every dispatch is a completed run.
    for (path, message) in &expected {
        let subscription = if path == "/orders" { &orders } else { &placed };
        let run =
            wait_for_run(&app, &token, &run_id(TENANT, subscription, message), &["Completed"], Duration::from_secs(30))
                .await;
        assert_eq!(run["attemptLog"].as_array().unwrap().last().unwrap()["statusCode"], 200, "{run}");
    }
    let by_outcome: BTreeMap<u64, usize> = records.iter().fold(BTreeMap::new(), |mut m, r| {
        *m.entry(r["answered"].as_u64().unwrap()).or_default() += 1;
        m
    });
    eprintln!("{} deliveries, {} requests by answer: {by_outcome:?}", expected.len(), records.len());
}

/// The events of `event_type` as `integration-engine replay` prints them (envelopes with `data`).
fn replayed(dir: &Path, event_type: &str) -> Vec<Value> {
    let out = Command::new(BIN)
        .args(["replay", "--data-dir"])
        .arg(dir)
        .args(["--type", event_type])
        .env_remove("IE_MASTER_KEY")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// The current value of a vault secret (`secrets show --reveal`: the last word of its last line).
fn revealed_current(dir: &Path, secret_ref: &str) -> (String, String) {
    let out = Command::new(BIN)
        .args(["secrets", "show", "--data-dir"])
        .arg(dir)
        .args([secret_ref, "--reveal"])
        .env_remove("IE_MASTER_KEY")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let shown = String::from_utf8(out.stdout).unwrap();
    let value = shown.lines().last().unwrap().rsplit(' ').next().unwrap().to_owned();
    (shown, value)
}

/// A subscription's signing secret is a credential (`cred-{NAME}`) that
/// `POST /integrations/credentials/rotate` rotates: generated, checked, promoted; both versions
/// sign during the overlap, only the new one after it.
#[tokio::test]
async fn rotating_a_subscriptions_signing_secret_signs_with_both_versions_until_the_overlap_ends() {
    let dir = tempfile::tempdir().unwrap();
    // Long enough for one delivery after the promotion on a slow machine; the test waits for its end.
    let app = serve_with(dir.path(), "200ms,200ms", &["--credential-overlap-seconds", "30"]);
    support::put_secret(dir.path(), SECRET_REF, SECRET_V1);
    let scopes = format!("{SCOPES} integration.credentials.rotate");
    let token = app.token(TENANT, &scopes);
    let secret_file = tempfile::NamedTempFile::new().unwrap();
    let receiver = Receiver::start_with_secret_file("ok", &[SECRET_V1], secret_file.path());
    let subscription =
        subscribe(&app, &token, json!({"eventType": "DeploymentPromoted", "endpointUrl": receiver.url("/hooks")}))
            .await;
    let linked = replayed(dir.path(), "CredentialSubscriptionLinked");
    assert_eq!(linked.len(), 1, "{linked:?}");
    assert_eq!(linked[0]["data"]["credentialId"], "cred-signing");
    assert_eq!(linked[0]["data"]["subscriptionId"], subscription.as_str());
    assert_eq!(linked[0]["data"]["authKind"], "HmacSignature");
    assert_eq!(linked[0]["data"]["secretRef"], SECRET_REF);

    let delivered = |message: String| move |r: &[Value]| r.iter().any(|r| r["webhookId"] == message.as_str());
    let record_of =
        |records: Vec<Value>, message: &str| records.into_iter().find(|r| r["webhookId"] == message).unwrap();
    publish(dir.path(), TENANT, None, "DeploymentPromoted", &json!({"release": "1"}), "msg-before");
    let records = receiver.wait_until(Duration::from_secs(30), "msg-before", delivered("msg-before".into())).await;
    let before = record_of(records, "msg-before");
    assert_eq!((before["signatures"].as_u64(), &before["verifiedWith"]), (Some(1), &json!([0])), "{before}");

    // Another tenant cannot rotate it: not in its name, and its own tenant has no such credential.
    let other = app.token("other-tenant", &scopes);
    let body = json!({"tenantId": TENANT, "credentialId": "cred-signing", "reason": "Leaked"});
    assert_eq!(app.post_json("/integrations/credentials/rotate", &other, &body).await.status(), 403);
    let body = json!({"tenantId": "other-tenant", "credentialId": "cred-signing", "reason": "Leaked"});
    assert_eq!(app.post_json("/integrations/credentials/rotate", &other, &body).await.status(), 404);

    let body = json!({"tenantId": TENANT, "credentialId": "cred-signing", "reason": "ScheduledRotation"});
    let response = app.post_json("/integrations/credentials/rotate", &token, &body).await;
    assert_eq!(response.status(), 202);
    let answer = response.text().await.unwrap();
    let started: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(started["status"], "Rotating", "{started}");
    assert_eq!(started["newVersionRef"], format!("{SECRET_REF}?version=2"), "{started}");
    let verification = started["verificationRunId"].as_str().unwrap();
    let run = wait_for_run(&app, &token, verification, &["Completed", "Failed"], Duration::from_secs(30)).await;
    assert_eq!(run["status"], "Completed", "checked locally (CheckSigningSecret): {run}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while replayed(dir.path(), "CredentialRotated").is_empty() {
        assert!(Instant::now() < deadline, "no CredentialRotated");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let rotation = replayed(dir.path(), "CredentialRotationStarted").pop().unwrap();
    assert_eq!(rotation["data"]["source"], "Generated", "{rotation}");
    let (shown, new_secret) = revealed_current(dir.path(), SECRET_REF);
    assert!(shown.contains("current=2\tpending=-\tprevious=1"), "{shown}");
    assert!(new_secret.starts_with("whsec_") && new_secret != SECRET_V1, "{shown}");
    // The receiver learns the new secret (index 1 of verifiedWith).
    std::fs::write(secret_file.path(), format!("{new_secret}\n")).unwrap();

    // During the overlap, both versions sign: a receiver on either one verifies.
    publish(dir.path(), TENANT, None, "DeploymentPromoted", &json!({"release": "2"}), "msg-during");
    let records = receiver.wait_until(Duration::from_secs(30), "msg-during", delivered("msg-during".into())).await;
    let during = record_of(records, "msg-during");
    assert_eq!(during["signatures"], 2, "{during}");
    assert_eq!(during["verifiedWith"], json!([0, 1]), "the old secret alone and the new one alone verify: {during}");

    // After the overlap the previous version is retired and only the new one signs (the
    // dispatcher reads the vault through a 5 s cache: a delivery may still carry both).
    let deadline = Instant::now() + Duration::from_secs(90);
    while replayed(dir.path(), "CredentialVersionRetired").is_empty() {
        assert!(Instant::now() < deadline, "the previous version was never retired");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let after = loop {
        let message = format!("msg-after-{}", receiver.records().len());
        publish(dir.path(), TENANT, None, "DeploymentPromoted", &json!({"release": "3"}), &message);
        let records = receiver.wait_until(Duration::from_secs(30), &message, delivered(message.clone())).await;
        let record = record_of(records, &message);
        if record["signatures"] == 1 {
            break record;
        }
        assert!(Instant::now() < deadline, "still signed with the retired version: {record}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    assert_eq!(after["verifiedWith"], json!([1]), "only the new secret verifies: {after}");
    assert!(after["verifyErrors"].as_array().is_some_and(|e| e.len() == 1), "the old one fails: {after}");

    // The secrets' values are nowhere but in the vault: not in the events, not in the answer.
    for value in [SECRET_V1, new_secret.as_str()] {
        assert!(!answer.contains(value));
        let run_body = app.get(&format!("/integrations/runs/{verification}"), &token).await.text().await.unwrap();
        assert!(!run_body.contains(value), "{run_body}");
        for file in ["events.db", "events.db-wal", "readmodels.db", "readmodels.db-wal"] {
            let bytes = std::fs::read(dir.path().join(file)).unwrap_or_default();
            assert!(!bytes.windows(value.len()).any(|w| w == value.as_bytes()), "{file} holds a secret");
        }
    }
}

#[tokio::test]
async fn a_subscription_failing_for_too_long_is_deactivated_saying_why() {
    let dir = tempfile::tempdir().unwrap();
    let app = serve_with(dir.path(), &vec!["300ms"; 20].join(","), &["--webhook-disable-after", "1s"]);
    support::put_secret(dir.path(), SECRET_REF, SECRET_V1);
    let token = app.token(TENANT, SCOPES);
    let broken = Receiver::start("status:500", 0.0, &[SECRET_V1]);
    let subscription = subscribe(&app, &token, json!({"eventType": "Tick", "endpointUrl": broken.url("/")})).await;
    publish(dir.path(), TENANT, None, "Tick", &json!({}), "msg-tick-1");
    // Failing since the first attempt; past 1 s the next failure deactivates the subscription,
    // and its pending delivery ends (dead-lettered, redeliverable).
    let run =
        wait_for_run(&app, &token, &run_id(TENANT, &subscription, "msg-tick-1"), &["Failed"], Duration::from_secs(30))
            .await;
    assert!(run["attempts"].as_u64().unwrap() >= 3, "{run}");
    assert!(run["lastError"].as_str().unwrap().contains("inactive"), "{run}");
    let out = Command::new(BIN)
        .args(["replay", "--data-dir"])
        .arg(dir.path())
        .args(["--type", "WebhookSubscriptionDeactivated"])
        .env_remove("IE_MASTER_KEY")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let events: Vec<Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["data"]["subscriptionId"], subscription.as_str());
    assert!(events[0]["data"]["reason"].as_str().unwrap().contains("failed continuously since"), "{events:?}");
    let attempts = broken.records().len();
    publish(dir.path(), TENANT, None, "Tick", &json!({}), "msg-tick-2");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(broken.records().len(), attempts, "nothing more after the deactivation");
}

/// `webhook-delivery: disable` on a 2xx: the message was taken, so its run is delivered
/// (Completed, once), and then the subscription is deactivated: nothing more goes to it.
#[tokio::test]
async fn a_2xx_with_webhook_delivery_disable_is_delivered_and_then_deactivates_the_subscription() {
    let dir = tempfile::tempdir().unwrap();
    let app = serve(dir.path(), "200ms,200ms,200ms");
    support::put_secret(dir.path(), SECRET_REF, SECRET_V1);
    let token = app.token(TENANT, SCOPES);
    let leaving = Receiver::start("header:webhook-delivery=disable:200", 0.0, &[SECRET_V1]);
    let subscription = subscribe(&app, &token, json!({"eventType": "Bye", "endpointUrl": leaving.url("/")})).await;
    publish(dir.path(), TENANT, None, "Bye", &json!({"n": 1}), "msg-bye-1");
    let wait = Duration::from_secs(30);
    let run =
        wait_for_run(&app, &token, &run_id(TENANT, &subscription, "msg-bye-1"), &["Completed", "Failed"], wait).await;
    assert_eq!(run["status"], "Completed", "a 2xx is a delivery: {run}");
    assert_eq!(run["attempts"], 1, "{run}");
    assert_eq!(run["attemptLog"][0]["statusCode"], 200, "{run}");
    // The deactivation follows the delivery, saying why.
    let deadline = Instant::now() + wait;
    let events = loop {
        let out = Command::new(BIN)
            .args(["replay", "--data-dir"])
            .arg(dir.path())
            .args(["--type", "WebhookSubscriptionDeactivated"])
            .env_remove("IE_MASTER_KEY")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let events: Vec<Value> =
            String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        if !events.is_empty() {
            break events;
        }
        assert!(Instant::now() < deadline, "the subscription was not deactivated");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["data"]["subscriptionId"], subscription.as_str());
    assert!(events[0]["data"]["reason"].as_str().unwrap().contains("webhook-delivery: disable"), "{events:?}");
    // Nothing more goes to it.
    publish(dir.path(), TENANT, None, "Bye", &json!({"n": 2}), "msg-bye-2");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(leaving.records().len(), 1, "nothing after the deactivation");
    let none = app.get(&format!("/integrations/runs/{}", run_id(TENANT, &subscription, "msg-bye-2")), &token).await;
    assert_eq!(none.status(), 404);
}

/// `PublishEvent` on the commands topic (Kafka mode): recorded, fanned out by the consumer
/// group `{prefix}.webhook-fanout`, delivered and signed like in the embedded mode.
#[tokio::test]
async fn publish_event_on_the_commands_topic_is_delivered_with_kafka() {
    let broker = bus_support::Broker::start();
    let brokers = broker.brokers();
    let dir = tempfile::tempdir().unwrap();
    let app = serve_with(dir.path(), "200ms,200ms", &["--kafka-brokers", brokers.as_str()]);
    support::put_secret(dir.path(), SECRET_REF, SECRET_V1);
    let token = app.token(TENANT, SCOPES);
    let receiver = Receiver::start("ok", 0.0, &[SECRET_V1]);
    let deployments =
        subscribe(&app, &token, json!({"eventType": "Deployment*", "endpointUrl": receiver.url("/deploy")})).await;
    subscribe(&app, &token, json!({"eventType": "Invoice*", "endpointUrl": receiver.url("/invoices")})).await;
    let messages: Vec<String> = (0..4).map(|i| format!("msg-kafka-pub-{i}")).collect();
    for id in &messages {
        publish_via(dir.path(), Some(&brokers), TENANT, Some("p1"), "DeploymentPromoted", &json!({"id": id}), id);
    }
    let records = receiver
        .wait_until(Duration::from_secs(60), "the four deliveries", |r| {
            r.iter().filter(|r| r["answered"] == 200).count() >= 4
        })
        .await;
    let got: BTreeSet<&str> = records.iter().filter_map(|r| r["webhookId"].as_str()).collect();
    assert_eq!(got, messages.iter().map(String::as_str).collect::<BTreeSet<_>>());
    assert!(records.iter().all(|r| r["path"] == "/deploy" && r["verifiedWith"] == json!([0])), "{records:#?}");
    for id in &messages {
        wait_for_run(&app, &token, &run_id(TENANT, &deployments, id), &["Completed"], Duration::from_secs(30)).await;
    }
}

/// Point 7 with Kafka: `PublishEvent` on the commands topic, the fan-out in its consumer group,
/// the server SIGKILLed mid-burst and restarted (messages published while it is down wait in
/// the topic). Ignored: tansu 0.6.0 never hands a killed member's partitions to anyone, even
/// across a broker restart (the restarted process logs `partitions assigned ... partitions=`
/// empty), the limitation tests/e2e/kafka_bus.rs documents. Run with `-- --ignored` against Kafka.
#[tokio::test]
#[ignore = "tansu 0.6.0 does not reassign a killed member's partitions"]
async fn nothing_is_lost_with_kafka_when_the_process_is_killed_mid_burst() {
    let broker = bus_support::Broker::start();
    let brokers = broker.brokers();
    let dir = tempfile::tempdir().unwrap();
    let schedule = vec!["100ms"; 19].join(",");
    let kafka = ["--kafka-brokers", brokers.as_str(), "--kafka-session-timeout-ms", "6000"];
    let app = serve_with(dir.path(), &schedule, &kafka);
    support::put_secret(dir.path(), SECRET_REF, SECRET_V1);
    let token = app.token(TENANT, SCOPES);
    let receiver = Receiver::start("flaky:5", 1.5, &[SECRET_V1]);
    let orders = subscribe(&app, &token, json!({"eventType": "Order*", "endpointUrl": receiver.url("/orders")})).await;
    subscribe(&app, &token, json!({"eventType": "Invoice*", "endpointUrl": receiver.url("/invoices")})).await;
    let messages: Vec<String> = (0..16).map(|i| format!("msg-kafka-{i}")).collect();
    let send = |range: std::ops::Range<usize>| {
        for id in &messages[range] {
            publish_via(dir.path(), Some(&brokers), TENANT, None, "OrderPlaced", &json!({"id": id}), id);
        }
    };
    send(0..8);
    receiver.wait_until(Duration::from_secs(60), "the burst to start", |r| r.len() >= 4).await;
    let data_dir = app.kill();
    send(8..12);
    let app = serve_with(&data_dir, &schedule, &kafka);
    send(12..16);

    let records = receiver
        .wait_until(Duration::from_secs(120), "every message delivered", |r| {
            let delivered: BTreeSet<&str> = r
                .iter()
                .filter(|r| r["answered"] == 200 && r["path"] == "/orders")
                .filter_map(|r| r["webhookId"].as_str())
                .collect();
            messages.iter().all(|m| delivered.contains(m.as_str()))
        })
        .await;
    assert!(records.iter().all(|r| r["path"] == "/orders"), "nothing for the subscription that did not match");
    let mut bodies: HashMap<String, BTreeSet<String>> = HashMap::new();
    for record in &records {
        assert_eq!(record["verifiedWith"], json!([0]), "{record}");
        bodies
            .entry(record["webhookId"].as_str().unwrap().to_owned())
            .or_default()
            .insert(record["body"]["data"].to_string());
    }
    assert!(bodies.values().all(|b| b.len() == 1), "a repeat is the same message: {bodies:?}");
    for message in &messages {
        wait_for_run(&app, &token, &run_id(TENANT, &orders, message), &["Completed"], Duration::from_secs(30)).await;
    }
}
