//! Secrets never leak: rotations (promoted and failed, and one whose new key Twilio issued),
//! health checks, revocations and runs end to end through the real binary with debug logging,
//! then every byte the engine wrote (event store, read models, worker checkpoints, logs) and
//! every API response is searched for the secret values, raw and base64-encoded (the form of
//! an HTTP Basic header). Only the vault holds them, encrypted. The provider echoes the token
//! it refuses in its error text: the engine keeps that text with the token masked.

use crate::credentials_support;
use crate::support;

use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use credentials_support::twilio::{MAIN_KEY_SECRET, MAIN_KEY_SID, TwilioStub};
use credentials_support::{
    GitHubUserStub, events_of_type, eventually, github_connection, secrets, serve_with_logs, twilio_connection,
};
use serde_json::{Value, json};
use support::ALL_SCOPES;

const TENANT: &str = "connectsoft";
const SECRET: &str = "kv://factory-integration/github-booking";

/// Every encoding of `secret` a careless writer could leave behind.
fn needles(secret: &str) -> Vec<String> {
    let engines = [
        base64::engine::general_purpose::STANDARD,
        base64::engine::general_purpose::STANDARD_NO_PAD,
        base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ];
    let mut found = vec![secret.to_owned()];
    found.extend(engines.iter().map(|e| e.encode(secret)));
    found
}

fn assert_absent(what: &str, haystack: &[u8], secrets: &[String]) {
    for secret in secrets {
        for needle in needles(secret) {
            assert!(
                !haystack.windows(needle.len()).any(|w| w == needle.as_bytes()),
                "{what} contains the secret {secret:?} (as {needle:?})"
            );
        }
    }
}

/// Every file of the data dir but the vault (the only place values may be, encrypted) and the
/// keys, plus the log.
fn files_to_search(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            !name.starts_with("vault.db") && !name.ends_with(".key") && !name.ends_with(".secret")
        })
        .collect();
    files.sort();
    files
}

#[tokio::test]
async fn no_secret_value_reaches_events_read_models_logs_or_responses() {
    let unique = uuid::Uuid::new_v4().simple().to_string();
    let (v1, v2, v3) = (format!("ghp_one_{unique}"), format!("ghp_two_{unique}"), format!("ghp_bad_{unique}"));
    let stub = GitHubUserStub::start(&[&v1, &v2]).await;
    let dir = tempfile::tempdir().unwrap();
    let args = ["--allow-private-egress", "--health-check-interval-seconds", "1", "--credential-overlap-seconds", "1"];
    let (app, log) = serve_with_logs(dir.path(), &args);
    secrets(dir.path(), &["put", SECRET], Some(&v1));
    let token = app.token(TENANT, ALL_SCOPES);
    let mut responses: Vec<Vec<u8>> = Vec::new();

    let r = github_connection(&app, &token, TENANT, &stub.url, SECRET, Some("wait=15")).await;
    assert_eq!(r.status(), 201);
    let body = r.bytes().await.unwrap().to_vec();
    let connection_id = serde_json::from_slice::<Value>(&body).unwrap()["connectionId"].as_str().unwrap().to_owned();
    responses.push(body);

    // A promoted rotation, then a failed one (the provider refuses the third token).
    let rotate = json!({"tenantId": TENANT, "credentialId": "cred-github-booking", "reason": "ScheduledRotation"});
    for (value, outcome) in [(&v2, "CredentialRotated"), (&v3, "CredentialRotationFailed")] {
        secrets(dir.path(), &["put", SECRET, "--stage", "pending"], Some(value));
        let r = app.post_json("/integrations/credentials/rotate", &token, &rotate).await;
        assert_eq!(r.status(), 202);
        let body = r.bytes().await.unwrap().to_vec();
        let run_id = serde_json::from_slice::<Value>(&body).unwrap()["verificationRunId"].as_str().unwrap().to_owned();
        responses.push(body);
        let count = events_of_type(dir.path(), outcome).len();
        eventually(outcome, Duration::from_secs(30), || async {
            (events_of_type(dir.path(), outcome).len() > count).then_some(())
        })
        .await;
        responses.push(app.get(&format!("/integrations/runs/{run_id}"), &token).await.bytes().await.unwrap().to_vec());
    }
    // Periodic checks with the promoted token, the previous one retired, and a refused POST.
    eventually("a periodic check with the promoted version", Duration::from_secs(30), || async {
        (stub.seen(&v2) >= 3).then_some(())
    })
    .await;
    eventually("the retirement", Duration::from_secs(30), || async {
        events_of_type(dir.path(), "CredentialVersionRetired").pop()
    })
    .await;
    let get = app.get(&format!("/integrations/connections/{connection_id}"), &token).await;
    responses.push(get.bytes().await.unwrap().to_vec());
    let leaky = json!({"tenantId": TENANT, "projectId": "p", "providerId": "prov-github", "displayName": "x",
        "authMode": "ApiKey", "configuration": {"apiKey": v1}});
    let refused = app.post_json("/integrations/connections", &token, &leaky).await;
    assert_eq!(refused.status(), 422, "a secret value where a kv:// ref belongs is refused");
    responses.push(refused.bytes().await.unwrap().to_vec());
    assert!(stub.seen(&v3) >= 1 && stub.seen(&v1) >= 1, "every version was really used");

    // A rotation whose new key Twilio issues; the old key is revoked there after the overlap.
    let twilio = TwilioStub::start().await;
    let console_sid = "SKcccccccccccccccccccccccccccccccc";
    let console_key = twilio.console_key(console_sid, &format!("console_{unique}"));
    let (sms, issuer) = ("kv://factory-integration/twilio-sms", "kv://factory-integration/twilio-main");
    secrets(dir.path(), &["put", sms], Some(&console_key));
    secrets(dir.path(), &["put", issuer], Some(&format!("{MAIN_KEY_SID}:{MAIN_KEY_SECRET}")));
    let r = twilio_connection(&app, &token, TENANT, &twilio.url, sms, issuer).await;
    assert_eq!(r.status(), 201);
    responses.push(r.bytes().await.unwrap().to_vec());
    let rotated = events_of_type(dir.path(), "CredentialRotated").len();
    let rotate = json!({"tenantId": TENANT, "credentialId": "cred-twilio-sms", "reason": "ScheduledRotation"});
    let r = app.post_json("/integrations/credentials/rotate", &token, &rotate).await;
    assert_eq!(r.status(), 202);
    let body = r.bytes().await.unwrap().to_vec();
    let run_id = serde_json::from_slice::<Value>(&body).unwrap()["verificationRunId"].as_str().unwrap().to_owned();
    responses.push(body);
    eventually("the issued key promoted", Duration::from_secs(30), || async {
        (events_of_type(dir.path(), "CredentialRotated").len() > rotated).then_some(())
    })
    .await;
    responses.push(app.get(&format!("/integrations/runs/{run_id}"), &token).await.bytes().await.unwrap().to_vec());
    eventually("the console key revoked at Twilio", Duration::from_secs(30), || async {
        (!twilio.is_live(console_sid)).then_some(())
    })
    .await;
    let issued = twilio.credential_of(twilio.created().last().unwrap()).unwrap();
    assert!(twilio.balance_calls(issued.split_once(':').unwrap().0) >= 1, "the issued key was really used");
    let dir_path = app.kill();

    let issued_secret = issued.split_once(':').unwrap().1.to_owned();
    let main = format!("{MAIN_KEY_SID}:{MAIN_KEY_SECRET}");
    let all = [v1, v2, v3, console_key, issued, issued_secret, main, MAIN_KEY_SECRET.to_owned()];
    for (i, response) in responses.iter().enumerate() {
        assert_absent(&format!("response {i}"), response, &all);
    }
    // The provider echoed the token it refused (in its error text, raw, base64 and in Basic
    // auth): the failed run shows the error with the token masked.
    let masked = connectors::redact::MASK.as_bytes();
    assert!(responses.iter().any(|r| r.windows(masked.len()).any(|w| w == masked)), "no masked echo was kept");
    let log_bytes = std::fs::read(&log).unwrap();
    assert!(String::from_utf8_lossy(&log_bytes).contains("DEBUG"), "the log is at debug level");
    assert_absent("the log", &log_bytes, &all);
    let searched = files_to_search(&dir_path);
    for name in ["events.db", "readmodels.db", "workers.db"] {
        assert!(searched.iter().any(|p| p.ends_with(name)), "{name} is searched");
    }
    // The search finds what is there: the provider's baseUrl is in the events (a control).
    let events: Vec<u8> = ["events.db", "events.db-wal"]
        .iter()
        .flat_map(|name| std::fs::read(dir_path.join(name)).unwrap_or_default())
        .collect();
    assert!(events.windows(stub.url.len()).any(|w| w == stub.url.as_bytes()), "the control string is found");
    for file in searched {
        assert_absent(&file.display().to_string(), &std::fs::read(&file).unwrap(), &all);
    }
}
