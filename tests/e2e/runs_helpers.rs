//! Run helpers: a GitHub connection, starting runs from the CLI and waiting for them.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{App, BIN};

pub const TENANT: &str = "connectsoft";
pub const GITHUB_TOKEN: &str = "ghp_test_token_never_logged";

/// Registers GitHub at `base_url` and a connection to it with a vault credential.
pub async fn github_connection(app: &App, token: &str, base_url: &str) -> String {
    app.put_secret("kv://factory-integration/github-booking", GITHUB_TOKEN);
    let provider = json!({"tenantId": TENANT, "key": "github", "displayName": "GitHub", "category": "SourceControl",
        "authModel": "OAuth2ClientCredentials", "apiClient": "ConnectSoft.SourceControl.Providers.GitHub", "baseUrl": base_url});
    assert_eq!(app.post_json("/integrations/providers", token, &provider).await.status(), 201);
    let connection = json!({"tenantId": TENANT, "projectId": "proj-booking-saas", "providerId": "prov-github",
        "displayName": "Booking SaaS GitHub", "authMode": "OAuth2ClientCredentials",
        "credentialRef": "kv://factory-integration/github-booking",
        "configuration": {"organization": "connectsoft-booking", "defaultBranch": "main"}});
    let r = app.post_json("/integrations/connections", token, &connection).await;
    assert_eq!(r.status(), 201);
    r.json::<Value>().await.unwrap()["connectionId"].as_str().unwrap().to_string()
}

/// `integration-engine runs start` on the data dir; the run id it prints.
pub fn start_run_cli(data_dir: &Path, connection: &str, operation: &str, input: &Value, key: &str) -> String {
    let out = Command::new(BIN)
        .args(["runs", "start", "--data-dir"])
        .arg(data_dir)
        .args(["--tenant", TENANT, "--connection", connection, "--operation", operation])
        .args(["--input", &input.to_string(), "--idempotency-key", key])
        .env_remove("IE_MASTER_KEY")
        .output()
        .expect("run runs start");
    assert!(out.status.success(), "runs start failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Polls the run until `status` is one of `statuses`.
pub async fn wait_for_run(app: &App, token: &str, run_id: &str, statuses: &[&str], timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let r = app.get(&format!("/integrations/runs/{run_id}"), token).await;
        if r.status() == 200 {
            let run: Value = r.json().await.unwrap();
            if statuses.iter().any(|s| run["status"] == *s) {
                return run;
            }
            assert!(Instant::now() < deadline, "run {run_id} did not reach {statuses:?}: {run}");
        } else {
            assert!(Instant::now() < deadline, "run {run_id} never appeared ({})", r.status());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
