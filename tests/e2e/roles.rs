//! Roles: with a policy in the config file, a request needs its operation's scope AND one of
//! the roles the policy allows for it, and the 403 names what is missing; without a policy,
//! scopes alone decide.

use std::path::Path;
use std::process::{Command, Stdio};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{ALL_SCOPES, App, BIN, spawn_app, spawn_app_with};

const TENANT: &str = "connectsoft";
const POLICY: &str = r#"
[roles]
claim = "roles"

[roles.policy]
getConnection = ["integration-admin", "auditor"]
getRun = "auditor"
"*" = ["integration-admin"]
"#;

fn serve_with_config(dir: &Path, config: &str) -> App {
    let file = dir.join("engine.toml");
    std::fs::write(&file, config).unwrap();
    let child = Command::new(BIN)
        .arg("--config")
        .arg(&file)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.join("data"))
        .env("IE_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start serve");
    App::when_listening(child, &dir.join("data"))
}

fn token(app: &App, scopes: &str, roles: &str) -> String {
    app.token_with_roles(TENANT, scopes, roles)
}

/// The status and problem detail of a GET of `path`.
async fn get(app: &App, path: &str, token: &str) -> (StatusCode, String) {
    let answer = app.get(path, token).await;
    let status = answer.status();
    let body: Value = answer.json().await.unwrap_or_default();
    (status, body["detail"].as_str().unwrap_or_default().to_owned())
}

#[tokio::test]
async fn with_a_policy_a_request_needs_the_scope_and_an_allowed_role() {
    let dir = tempfile::tempdir().unwrap();
    let app = serve_with_config(dir.path(), POLICY);
    let connection = "/integrations/connections/conn-missing";
    let run = "/integrations/runs/run-missing";

    // Allowed: the scope and a role the policy names; the request goes on to its 404.
    let scopes = format!("{ALL_SCOPES} integration.providers.read");
    let auditor = token(&app, &scopes, "auditor");
    assert_eq!(get(&app, connection, &auditor).await.0, StatusCode::NOT_FOUND);
    assert_eq!(get(&app, run, &auditor).await.0, StatusCode::NOT_FOUND);
    let admin = token(&app, &scopes, "integration-admin");
    assert_eq!(get(&app, connection, &admin).await.0, StatusCode::NOT_FOUND);

    // A named operation is not widened by `*`; `*` covers the operations not named.
    let (status, detail) = get(&app, run, &admin).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(detail, "getRun needs one of the roles auditor, and the token has the roles integration-admin");
    let (status, detail) = get(&app, "/integrations/providers/prov-missing", &auditor).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(detail.starts_with("getProvider needs one of the roles integration-admin"), "{detail}");

    // No role at all, or the role without the scope: the 403 names each thing missing.
    let nobody = token(&app, &scopes, "");
    let answer = app.get(connection, &nobody).await;
    assert_eq!(answer.status(), StatusCode::FORBIDDEN);
    assert_eq!(answer.headers()["content-type"], "application/problem+json");
    let problem: Value = answer.json().await.unwrap();
    assert_eq!(problem["title"], "insufficient_role");
    assert_eq!(
        problem["detail"],
        "getConnection needs one of the roles auditor, integration-admin, and the token has no role"
    );
    let unscoped = token(&app, "integration.runs.read", "auditor");
    let answer = app.get(connection, &unscoped).await;
    assert_eq!(answer.status(), StatusCode::FORBIDDEN);
    assert!(answer.headers()["www-authenticate"].to_str().unwrap().contains("insufficient_scope"));
    let problem: Value = answer.json().await.unwrap();
    assert_eq!(problem["detail"], "the token lacks the scope integration.connections.read");
    let neither = token(&app, "integration.runs.read", "");
    let (status, detail) = get(&app, connection, &neither).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        detail,
        "the token lacks the scope integration.connections.read; getConnection needs one of the roles auditor, \
         integration-admin, and the token has no role"
    );

    // A role never stands in for a missing token.
    assert_eq!(app.client.get(app.url(run)).send().await.unwrap().status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn the_policy_as_a_flag_with_the_roles_at_a_json_pointer_guards_writes_too() {
    let app = spawn_app_with(&["--roles-policy", "establishConnection=connector;*=auditor", "--roles-claim", "/roles"]);
    let body = json!({ "projectId": "p", "providerId": "prov-missing", "displayName": "x", "authMode": "None" });
    let auditor = token(&app, ALL_SCOPES, "auditor");
    let refused = app.post_json("/integrations/connections", &auditor, &body).await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN, "a write is refused before its body is looked at");
    let problem: Value = refused.json().await.unwrap();
    assert_eq!(
        problem["detail"],
        "establishConnection needs one of the roles connector, and the token has the roles auditor"
    );
    let connector = token(&app, ALL_SCOPES, "connector");
    let allowed = app.post_json("/integrations/connections", &connector, &body).await;
    assert_ne!(allowed.status(), StatusCode::FORBIDDEN, "the role lets the request through to its own checks");
    assert_eq!(get(&app, "/integrations/runs/run-missing", &auditor).await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn without_a_policy_scopes_alone_decide() {
    let app = spawn_app();
    let no_role = app.token(TENANT, ALL_SCOPES);
    assert_eq!(get(&app, "/integrations/runs/run-missing", &no_role).await.0, StatusCode::NOT_FOUND);
    let (status, detail) = get(&app, "/integrations/runs/run-missing", &app.token(TENANT, "x")).await;
    assert_eq!((status, detail.as_str()), (StatusCode::FORBIDDEN, "the token lacks the scope integration.runs.read"));
}

#[test]
fn a_policy_naming_an_unknown_operation_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("engine.toml");
    std::fs::write(&file, "[roles.policy]\ngetRuns = [\"auditor\"]\n").unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&file)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    let reason = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(reason.contains("roles.policy") && reason.contains("unknown operation `getRuns`"), "{reason}");
    assert!(reason.contains("getRun,"), "the known operations are listed: {reason}");
}
