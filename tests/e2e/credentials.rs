//! Credentials and connection health end to end, through the real binary: a connection's first
//! health check, `Prefer: wait`, verified rotation (promotion, failure, 409 while in flight,
//! retirement of the previous version after the overlap), and health measured over time
//! against a local stand-in for GitHub's `GET /user`; vendor-issued rotation (Twilio API keys
//! created, verified, promoted, revoked) against a local stand-in for Twilio's REST API.

use crate::credentials_support;
use crate::support;

use std::path::Path;
use std::time::Duration;

use credentials_support::twilio::{MAIN_KEY_SECRET, MAIN_KEY_SID, TwilioStub};
use credentials_support::{
    GitHubUserStub, events_of_type, eventually, github_connection, runs_of_operation, secrets, serve_with_logs,
    twilio_connection,
};
use serde_json::{Value, json};
use support::{ALL_SCOPES, App};

const TENANT: &str = "connectsoft";
const SECRET: &str = "kv://factory-integration/github-booking";
const V1: &str = "ghp_credential_version_one";
const V2: &str = "ghp_credential_version_two";

fn serve(dir: &Path, extra: &[&str]) -> App {
    let mut args = vec!["--allow-private-egress", "--run-first-backoff-ms", "100", "--run-max-backoff-ms", "200"];
    args.extend_from_slice(extra);
    serve_with_logs(dir, &args).0
}

async fn run_status(app: &App, token: &str, run_id: &str, statuses: &[&str]) -> Value {
    eventually(&format!("run {run_id} in {statuses:?}"), Duration::from_secs(30), || async {
        let r = app.get(&format!("/integrations/runs/{run_id}"), token).await;
        if r.status() != 200 {
            return None;
        }
        let run: Value = r.json().await.unwrap();
        statuses.iter().any(|s| run["status"] == *s).then_some(run)
    })
    .await
}

async fn connection(app: &App, token: &str, id: &str) -> Value {
    app.get(&format!("/integrations/connections/{id}"), token).await.json().await.unwrap()
}

async fn rotate(app: &App, token: &str, reason: &str) -> reqwest::Response {
    let body = json!({"tenantId": TENANT, "credentialId": "cred-github-booking", "reason": reason});
    app.post_json("/integrations/credentials/rotate", token, &body).await
}

#[tokio::test]
async fn establishing_a_connection_schedules_its_health_check_and_prefer_wait_answers_with_it() {
    let stub = GitHubUserStub::start(&[V1]).await;
    let dir = tempfile::tempdir().unwrap();
    let app = serve(dir.path(), &["--health-check-interval-seconds", "0"]);
    secrets(dir.path(), &["put", SECRET], Some(V1));
    let token = app.token(TENANT, ALL_SCOPES);

    let waited = github_connection(&app, &token, TENANT, &stub.url, SECRET, Some("wait=15")).await;
    assert_eq!(waited.status(), 201);
    assert_eq!(waited.headers()["preference-applied"], "wait=15");
    let body: Value = waited.json().await.unwrap();
    assert_eq!(body["health"], "Healthy", "{body}");
    let id = body["connectionId"].as_str().unwrap();
    let view = connection(&app, &token, id).await;
    assert_eq!(view["health"], "Healthy");
    assert!(view["lastCheckedAt"].is_string(), "{view}");
    let check = view["lastRunId"].as_str().unwrap().to_owned();
    let run = run_status(&app, &token, &check, &["Completed"]).await;
    assert_eq!((run["operation"].as_str(), run["connectionId"].as_str()), (Some("CheckHealth"), Some(id)));
    assert!(stub.seen(V1) >= 1, "the check called GET /user with the credential");

    // Without the preference the answer is truthful at once: not checked yet.
    let at_once = github_connection(&app, &token, TENANT, &stub.url, SECRET, None).await;
    assert_eq!(at_once.status(), 201);
    assert!(at_once.headers().get("preference-applied").is_none());
    let second: Value = at_once.json().await.unwrap();
    assert_eq!(second["health"], "Unknown");
    // ... and its check follows.
    let second_id = second["connectionId"].as_str().unwrap().to_owned();
    eventually("the second connection's first check", Duration::from_secs(30), || async {
        (connection(&app, &token, &second_id).await["health"] == "Healthy").then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_verified_rotation_is_promoted_then_its_previous_version_retired_after_the_overlap() {
    let stub = GitHubUserStub::start(&[V1, V2]).await;
    let dir = tempfile::tempdir().unwrap();
    let app = serve(dir.path(), &["--health-check-interval-seconds", "0", "--credential-overlap-seconds", "2"]);
    secrets(dir.path(), &["put", SECRET], Some(V1));
    let token = app.token(TENANT, ALL_SCOPES);
    let established = github_connection(&app, &token, TENANT, &stub.url, SECRET, Some("wait=15")).await;
    let connection_id = established.json::<Value>().await.unwrap()["connectionId"].as_str().unwrap().to_owned();

    // A vendor-issued token cannot be generated: without a staged version the rotation is refused.
    let refused = rotate(&app, &token, "ScheduledRotation").await;
    assert_eq!(refused.status(), 409);
    assert!(refused.text().await.unwrap().contains("--stage pending"));

    assert!(secrets(dir.path(), &["put", SECRET, "--stage", "pending"], Some(V2)).contains("?version=2 (pending)"));
    let r = rotate(&app, &token, "ScheduledRotation").await;
    assert_eq!(r.status(), 202);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    let started: Value = r.json().await.unwrap();
    assert_eq!(started["status"], "Rotating");
    assert_eq!(started["newVersionRef"], format!("{SECRET}?version=2"));
    let run_id = started["verificationRunId"].as_str().unwrap();
    assert_eq!(location, format!("/integrations/runs/{run_id}"));

    let run = run_status(&app, &token, run_id, &["Completed", "Failed"]).await;
    assert_eq!(run["status"], "Completed", "{run}");
    assert_eq!(run["operation"], "VerifyCredential");
    let rotated = eventually("CredentialRotated", Duration::from_secs(10), || async {
        events_of_type(dir.path(), "CredentialRotated").pop()
    })
    .await;
    assert_eq!((rotated["version"].clone(), rotated["previousVersion"].clone()), (json!(2), json!(1)));
    let started_event = events_of_type(dir.path(), "CredentialRotationStarted").pop().unwrap();
    assert_eq!(
        (started_event["reason"].as_str(), started_event["source"].as_str()),
        (Some("ScheduledRotation"), Some("OperatorStaged"))
    );
    let shown = secrets(dir.path(), &["show", SECRET], None);
    assert!(shown.contains("current=2\tpending=-\tprevious=1"), "{shown}");

    // Connections use the promoted version from now on: a health check authenticates with it.
    let before = stub.seen(V2);
    let check = start_run(dir.path(), &connection_id, "CheckHealth", "after-rotation");
    assert_eq!(run_status(&app, &token, &check, &["Completed", "Failed"]).await["status"], "Completed");
    assert_eq!(stub.seen(V2), before + 1);

    // After the overlap the previous version is retired: an event, and no label in the vault.
    let retired = eventually("CredentialVersionRetired", Duration::from_secs(15), || async {
        events_of_type(dir.path(), "CredentialVersionRetired").pop()
    })
    .await;
    assert_eq!(retired["version"], 1);
    let shown = secrets(dir.path(), &["show", SECRET], None);
    assert!(shown.contains("current=2\tpending=-\tprevious=-"), "{shown}");
}

#[tokio::test]
async fn a_failed_verification_keeps_the_current_version_and_a_second_rotation_in_flight_is_409() {
    let stub = GitHubUserStub::start(&[V1]).await;
    stub.slow(V2, Duration::from_millis(1500));
    let dir = tempfile::tempdir().unwrap();
    let app = serve(dir.path(), &["--health-check-interval-seconds", "0", "--run-max-attempts", "1"]);
    secrets(dir.path(), &["put", SECRET], Some(V1));
    let token = app.token(TENANT, ALL_SCOPES);
    assert_eq!(github_connection(&app, &token, TENANT, &stub.url, SECRET, None).await.status(), 201);
    secrets(dir.path(), &["put", SECRET, "--stage", "pending"], Some(V2));

    let first = rotate(&app, &token, "Leaked").await;
    assert_eq!(first.status(), 202);
    let run_id = first.json::<Value>().await.unwrap()["verificationRunId"].as_str().unwrap().to_owned();
    let second = rotate(&app, &token, "Leaked").await;
    assert_eq!(second.status(), 409);
    assert_eq!(second.headers()["content-type"], "application/problem+json");

    let run = run_status(&app, &token, &run_id, &["Completed", "Failed"]).await;
    assert_eq!(run["status"], "Failed", "{run}");
    let failed = eventually("CredentialRotationFailed", Duration::from_secs(10), || async {
        events_of_type(dir.path(), "CredentialRotationFailed").pop()
    })
    .await;
    assert_eq!(failed["version"], 2);
    assert!(failed["reason"].as_str().unwrap().contains("401"), "{failed}");
    assert!(events_of_type(dir.path(), "CredentialRotated").is_empty());
    let shown = secrets(dir.path(), &["show", SECRET], None);
    assert!(shown.contains("current=1\tpending=-\tprevious=-"), "the current version stays: {shown}");
    // The failed rotation is over: another may start (and is refused for want of a staged version).
    assert_eq!(rotate(&app, &token, "Leaked").await.status(), 409);
    secrets(dir.path(), &["put", SECRET, "--stage", "pending"], Some("ghp_third"));
    assert_eq!(rotate(&app, &token, "Leaked").await.status(), 202);
}

#[tokio::test]
async fn consecutive_failed_checks_degrade_the_connection_and_a_success_restores_it() {
    let stub = GitHubUserStub::start(&[V1]).await;
    let dir = tempfile::tempdir().unwrap();
    let app = serve(dir.path(), &["--health-check-interval-seconds", "1", "--run-max-attempts", "1"]);
    secrets(dir.path(), &["put", SECRET], Some(V1));
    let token = app.token(TENANT, ALL_SCOPES);
    let r = github_connection(&app, &token, TENANT, &stub.url, SECRET, Some("wait=15")).await;
    let id = r.json::<Value>().await.unwrap()["connectionId"].as_str().unwrap().to_owned();
    assert_eq!(connection(&app, &token, &id).await["health"], "Healthy");

    stub.revoke(V1);
    for expected in ["Degraded", "Unhealthy"] {
        eventually(expected, Duration::from_secs(30), || async {
            (connection(&app, &token, &id).await["health"] == expected).then_some(())
        })
        .await;
    }
    stub.accept(V1);
    eventually("Healthy again", Duration::from_secs(30), || async {
        (connection(&app, &token, &id).await["health"] == "Healthy").then_some(())
    })
    .await;
    let healths: Vec<String> = events_of_type(dir.path(), "ConnectionHealthChecked")
        .iter()
        .map(|e| e["health"].as_str().unwrap().to_owned())
        .collect();
    let first_degraded = healths.iter().position(|h| h == "Degraded").unwrap();
    let first_unhealthy = healths.iter().position(|h| h == "Unhealthy").unwrap();
    assert!(first_degraded < first_unhealthy, "{healths:?}");
    let failure = events_of_type(dir.path(), "ConnectionHealthChecked").into_iter().find(|e| e["health"] == "Degraded");
    assert!(failure.unwrap()["reason"].as_str().unwrap().contains("Bad credentials"));
}

/// `integration-engine runs start` on the data dir; the run id.
fn start_run(dir: &Path, connection: &str, operation: &str, key: &str) -> String {
    let out = std::process::Command::new(support::BIN)
        .args(["runs", "start", "--data-dir"])
        .arg(dir)
        .args(["--tenant", TENANT, "--connection", connection, "--operation", operation, "--idempotency-key", key])
        .env_remove("IE_MASTER_KEY")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[tokio::test]
async fn the_vault_cli_shows_metadata_only_and_rekey_rotates_the_master_key() {
    let dir = tempfile::tempdir().unwrap();
    secrets(dir.path(), &["put", SECRET], Some(V1));
    secrets(dir.path(), &["put", SECRET, "--stage", "pending"], Some(V2));
    let key_before = std::fs::read_to_string(dir.path().join("master.key")).unwrap();

    for listing in [secrets(dir.path(), &["list"], None), secrets(dir.path(), &["show", SECRET], None)] {
        assert!(!listing.contains(V1) && !listing.contains(V2), "values only with --reveal: {listing}");
        assert!(listing.contains("current=1\tpending=2"), "{listing}");
    }
    let shown = secrets(dir.path(), &["show", SECRET], None);
    let key_id = |text: &str, version: u32| -> String {
        let line = text.lines().find(|l| l.trim_start().starts_with(&format!("version {version}\t"))).unwrap();
        line.split('\t').find_map(|f| f.strip_prefix("key=")).unwrap().to_owned()
    };
    let old_id = key_id(&shown, 1);
    assert!(shown.contains("labels=current") && shown.contains("labels=pending"), "{shown}");
    assert!(secrets(dir.path(), &["show", &format!("{SECRET}?version=2"), "--reveal"], None).contains(V2));

    let rekeyed = secrets(dir.path(), &["rekey"], None);
    assert!(rekeyed.contains("re-encrypted 2 versions"), "{rekeyed}");
    assert_ne!(std::fs::read_to_string(dir.path().join("master.key")).unwrap(), key_before);
    assert!(!dir.path().join("master.key.next").exists());
    let shown = secrets(dir.path(), &["show", SECRET], None);
    assert_ne!(key_id(&shown, 1), old_id);
    assert_eq!(key_id(&shown, 1), key_id(&shown, 2));
    assert!(secrets(dir.path(), &["show", SECRET, "--reveal"], None).contains(V1), "values survive the rekey");
    assert!(secrets(dir.path(), &["show", &format!("{SECRET}?version=2"), "--reveal"], None).contains(V2));
}

#[tokio::test]
async fn an_engine_owned_signing_secret_is_generated_checked_and_promoted() {
    let stub = GitHubUserStub::start(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let app = serve(dir.path(), &["--health-check-interval-seconds", "0"]);
    let signing = "kv://factory-integration/partner-signing";
    let first = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    secrets(dir.path(), &["put", signing], Some(first));
    let token = app.token(TENANT, ALL_SCOPES);
    let provider = json!({"tenantId": TENANT, "key": "partner-hooks", "displayName": "Partner", "category": "Webhooks",
        "authModel": "HmacSignature", "apiClient": "Acme.Partner.Hooks", "baseUrl": stub.url});
    assert_eq!(app.post_json("/integrations/providers", &token, &provider).await.status(), 201);
    let connection = json!({"tenantId": TENANT, "projectId": "proj-1", "providerId": "prov-partner-hooks",
        "displayName": "Partner hooks", "authMode": "HmacSignature", "credentialRef": signing, "configuration": {}});
    assert_eq!(app.post_json("/integrations/connections", &token, &connection).await.status(), 201);

    let body = json!({"tenantId": TENANT, "credentialId": "cred-partner-signing", "reason": "ScheduledRotation"});
    let r = app.post_json("/integrations/credentials/rotate", &token, &body).await;
    assert_eq!(r.status(), 202);
    let started: Value = r.json().await.unwrap();
    assert_eq!(started["newVersionRef"], format!("{signing}?version=2"));
    let run = run_status(&app, &token, started["verificationRunId"].as_str().unwrap(), &["Completed", "Failed"]).await;
    assert_eq!(run["status"], "Completed", "{run}");
    eventually("CredentialRotated", Duration::from_secs(10), || async {
        events_of_type(dir.path(), "CredentialRotated").pop()
    })
    .await;
    assert_eq!(events_of_type(dir.path(), "CredentialRotationStarted").pop().unwrap()["source"], "Generated");
    let revealed = secrets(dir.path(), &["show", signing, "--reveal"], None);
    assert!(revealed.contains("current=2\tpending=-\tprevious=1"), "{revealed}");
    let generated = revealed.lines().last().unwrap().rsplit(' ').next().unwrap().to_owned();
    assert!(generated.starts_with("whsec_") && generated != first, "{generated}");
    let events = std::fs::read(dir.path().join("events.db")).unwrap();
    let wal = std::fs::read(dir.path().join("events.db-wal")).unwrap_or_default();
    for bytes in [events, wal] {
        assert!(
            !bytes.windows(generated.len()).any(|w| w == generated.as_bytes()),
            "the events hold the generated value"
        );
    }
}

/// The output a completed run recorded (`RunCompleted`).
fn run_output(dir: &Path, run_id: &str) -> Value {
    let completed = events_of_type(dir, "RunCompleted").into_iter().find(|e| e["runId"] == run_id);
    completed.unwrap_or_else(|| panic!("{run_id} did not complete"))["output"].clone()
}

const TWILIO_SECRET: &str = "kv://factory-integration/twilio-sms";
const TWILIO_ISSUER: &str = "kv://factory-integration/twilio-main";
const CONSOLE_KEY_SID: &str = "SKaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

/// A Twilio connection whose API key starts as a console key; the stand-in, the app, the token.
async fn twilio_setup(extra: &[&str]) -> (TwilioStub, tempfile::TempDir, App, String) {
    let stub = TwilioStub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec!["--health-check-interval-seconds", "0"];
    args.extend_from_slice(extra);
    let app = serve(dir.path(), &args);
    let console_key = stub.console_key(CONSOLE_KEY_SID, "console_secret_aaaa");
    secrets(dir.path(), &["put", TWILIO_SECRET], Some(&console_key));
    secrets(dir.path(), &["put", TWILIO_ISSUER], Some(&format!("{MAIN_KEY_SID}:{MAIN_KEY_SECRET}")));
    let token = app.token(TENANT, ALL_SCOPES);
    let r = twilio_connection(&app, &token, TENANT, &stub.url, TWILIO_SECRET, TWILIO_ISSUER).await;
    assert_eq!(r.status(), 201);
    assert_eq!(r.json::<Value>().await.unwrap()["health"], "Healthy", "the balance answers for the console key");
    assert_eq!(stub.balance_calls(CONSOLE_KEY_SID), 1);
    (stub, dir, app, token)
}

async fn rotate_twilio(app: &App, token: &str) -> reqwest::Response {
    let body = json!({"tenantId": TENANT, "credentialId": "cred-twilio-sms", "reason": "ScheduledRotation"});
    app.post_json("/integrations/credentials/rotate", token, &body).await
}

#[tokio::test]
async fn a_vendor_issued_key_is_created_verified_promoted_used_and_the_old_key_revoked_after_the_overlap() {
    let (stub, dir, app, token) = twilio_setup(&["--credential-overlap-seconds", "2"]).await;
    // The first create's answer is lost, as if the engine died right after Twilio made the key.
    stub.lose_create_answers(1);

    let r = rotate_twilio(&app, &token).await;
    assert_eq!(r.status(), 202);
    let started: Value = r.json().await.unwrap();
    assert_eq!(started["status"], "Rotating");
    assert_eq!(started["newVersionRef"], format!("{TWILIO_SECRET}?version=2"), "the reserved version");
    let run_id = started["verificationRunId"].as_str().unwrap().to_owned();
    let run = run_status(&app, &token, &run_id, &["Completed", "Failed"]).await;
    assert_eq!(run["status"], "Completed", "{run}");
    let issued = run_output(dir.path(), &run_id)["issuedKeyId"].as_str().unwrap().to_owned();
    assert_eq!(events_of_type(dir.path(), "CredentialRotationStarted").pop().unwrap()["source"], "ProviderIssued");

    // The lost key was found by its label and deleted; exactly one issued key is live.
    let created = stub.created();
    assert_eq!(created.len(), 2, "{created:?}");
    assert_eq!(created[1], issued);
    assert!(!stub.is_live(&created[0]) && stub.deleted().contains(&created[0]), "the orphan key was deleted");
    let label = stub.label_of(&issued).unwrap();
    assert!(label.starts_with(&run_id) && label.contains("cred-twilio-sms v2"), "{label}");
    assert_eq!(stub.live_labelled(&label), vec![issued.clone()]);

    let rotated = eventually("CredentialRotated", Duration::from_secs(10), || async {
        events_of_type(dir.path(), "CredentialRotated").pop()
    })
    .await;
    assert_eq!((rotated["version"].clone(), rotated["previousVersion"].clone()), (json!(2), json!(1)));
    let revealed = secrets(dir.path(), &["show", TWILIO_SECRET, "--reveal"], None);
    assert!(revealed.contains("current=2\tpending=-\tprevious=1"), "{revealed}");
    let stored = stub.credential_of(&issued).unwrap();
    assert!(revealed.trim_end().ends_with(&stored), "the vault holds what Twilio issued: {revealed}");
    let events = std::fs::read(dir.path().join("events.db")).unwrap();
    let wal = std::fs::read(dir.path().join("events.db-wal")).unwrap_or_default();
    let issued_secret = stored.split_once(':').unwrap().1.to_owned();
    for bytes in [events, wal] {
        assert!(
            !bytes.windows(issued_secret.len()).any(|w| w == issued_secret.as_bytes()),
            "an event holds the secret"
        );
    }

    // Connections use the issued key from now on.
    let connection_id =
        events_of_type(dir.path(), "ConnectionEstablished")[0]["connectionId"].as_str().unwrap().to_owned();
    let before = stub.balance_calls(&issued);
    let check = start_run(dir.path(), &connection_id, "CheckHealth", "after-twilio-rotation");
    assert_eq!(run_status(&app, &token, &check, &["Completed", "Failed"]).await["status"], "Completed");
    assert_eq!(stub.balance_calls(&issued), before + 1);

    // After the overlap the previous version is retired, and its key deleted at Twilio.
    eventually("the console key revoked", Duration::from_secs(30), || async {
        (!stub.is_live(CONSOLE_KEY_SID)).then_some(())
    })
    .await;
    let revocations = runs_of_operation(dir.path(), "RevokeCredential");
    assert_eq!(revocations.len(), 1, "{revocations:?}");
    let revoked = run_status(&app, &token, &revocations[0], &["Completed", "Failed"]).await;
    assert_eq!(revoked["status"], "Completed", "{revoked}");
    assert_eq!(run_output(dir.path(), &revocations[0])["revokedKeyIds"], json!([CONSOLE_KEY_SID]));
    assert!(stub.is_live(&issued) && stub.is_live(MAIN_KEY_SID), "the current key and the issuer's stay");
    assert_eq!(events_of_type(dir.path(), "CredentialVersionRetired").pop().unwrap()["version"], 1);

    // Revocations are the engine's: nobody can start one to delete the key in use.
    let input = json!({"credentialId": "cred-twilio-sms", "versionRef": format!("{TWILIO_SECRET}?version=2")});
    let out = std::process::Command::new(support::BIN)
        .args(["runs", "start", "--data-dir"])
        .arg(dir.path())
        .args(["--tenant", TENANT, "--connection", &connection_id, "--operation", "RevokeCredential"])
        .args(["--idempotency-key", "revoke-current", "--input", &input.to_string()])
        .env_remove("IE_MASTER_KEY")
        .output()
        .unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("reserved to the engine"));
    assert!(stub.is_live(&issued), "the current key is never revoked");
}

#[tokio::test]
async fn a_vendor_issued_key_that_fails_verification_leaves_current_and_is_revoked() {
    let (stub, dir, app, token) = twilio_setup(&["--run-max-attempts", "1"]).await;
    stub.refuse_new_keys(true);

    let r = rotate_twilio(&app, &token).await;
    assert_eq!(r.status(), 202);
    let run_id = r.json::<Value>().await.unwrap()["verificationRunId"].as_str().unwrap().to_owned();
    assert_eq!(rotate_twilio(&app, &token).await.status(), 409, "one rotation at a time");
    let run = run_status(&app, &token, &run_id, &["Completed", "Failed"]).await;
    assert_eq!(run["status"], "Failed", "{run}");
    let failed = eventually("CredentialRotationFailed", Duration::from_secs(10), || async {
        events_of_type(dir.path(), "CredentialRotationFailed").pop()
    })
    .await;
    assert!(failed["reason"].as_str().unwrap().contains("401 Unauthorized: Twilio: Authenticate"), "{failed}");
    let shown = secrets(dir.path(), &["show", TWILIO_SECRET], None);
    assert!(shown.contains("current=1\tpending=-\tprevious=-"), "the current version stays: {shown}");

    // The key Twilio issued for the failed rotation is deleted there (found by its label).
    let issued = stub.created();
    assert_eq!(issued.len(), 1);
    eventually("the failed rotation's key revoked", Duration::from_secs(30), || async {
        (!stub.is_live(&issued[0])).then_some(())
    })
    .await;
    assert!(stub.is_live(CONSOLE_KEY_SID), "the current key stays");

    // The next rotation issues another key under the next version and is promoted.
    stub.refuse_new_keys(false);
    let r = rotate_twilio(&app, &token).await;
    assert_eq!(r.status(), 202);
    let started: Value = r.json().await.unwrap();
    assert_eq!(started["newVersionRef"], format!("{TWILIO_SECRET}?version=3"));
    let run = run_status(&app, &token, started["verificationRunId"].as_str().unwrap(), &["Completed", "Failed"]).await;
    assert_eq!(run["status"], "Completed", "{run}");
    eventually("CredentialRotated", Duration::from_secs(10), || async {
        events_of_type(dir.path(), "CredentialRotated").pop()
    })
    .await;
    let shown = secrets(dir.path(), &["show", TWILIO_SECRET], None);
    assert!(shown.contains("current=3\tpending=-\tprevious=1"), "{shown}");
}

#[tokio::test]
async fn an_engine_killed_while_twilio_creates_the_key_deletes_the_orphan_after_restart_and_promotes_once() {
    let timing = ["--run-attempt-timeout-ms", "3000", "--run-lease-grace-ms", "500"];
    let (stub, dir, app, token) = twilio_setup(&timing).await;
    // Twilio creates the key but its answer is slow: the engine dies before it sees the secret.
    stub.delay_create_answers(Some(Duration::from_secs(20)));
    let r = rotate_twilio(&app, &token).await;
    assert_eq!(r.status(), 202);
    let run_id = r.json::<Value>().await.unwrap()["verificationRunId"].as_str().unwrap().to_owned();
    eventually("the key created at Twilio", Duration::from_secs(15), || async {
        (!stub.created().is_empty()).then_some(())
    })
    .await;
    app.kill();
    let orphan = stub.created()[0].clone();
    let label = stub.label_of(&orphan).unwrap();
    assert!(label.starts_with(&run_id), "{label}");
    assert!(!secrets(dir.path(), &["show", TWILIO_SECRET], None).contains("version 2\t"), "nothing was stored");

    // Restarted: the run is resumed once the dead attempt's lease expires.
    stub.delay_create_answers(None);
    let mut args = vec!["--health-check-interval-seconds", "0"];
    args.extend_from_slice(&timing);
    let app = serve(dir.path(), &args);
    let run = run_status(&app, &token, &run_id, &["Completed", "Failed"]).await;
    assert_eq!(run["status"], "Completed", "{run}");
    eventually("CredentialRotated", Duration::from_secs(10), || async {
        events_of_type(dir.path(), "CredentialRotated").pop()
    })
    .await;
    let created = stub.created();
    assert_eq!(created.len(), 2, "one orphan and one key: {created:?}");
    assert!(!stub.is_live(&orphan), "the orphan was found by its label and deleted");
    assert_eq!(stub.live_labelled(&label), vec![created[1].clone()], "one live key for the rotation");
    let revealed = secrets(dir.path(), &["show", TWILIO_SECRET, "--reveal"], None);
    assert!(revealed.contains("current=2\tpending=-\tprevious=1"), "{revealed}");
    assert!(revealed.trim_end().ends_with(&stub.credential_of(&created[1]).unwrap()), "{revealed}");
}
