//! Shared by tests/e2e/credentials.rs and tests/e2e/secret_leak.rs: a local stand-in for GitHub's
//! "Get the authenticated user" (`GET /user`), one for Twilio's API Keys and balance
//! ([`twilio`]), the binary started with its logs captured, and readers of what it stored.

pub mod twilio;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use crate::support::{App, BIN};

#[derive(Default)]
struct UserStubState {
    /// Tokens GitHub accepts now.
    accepted: HashSet<String>,
    /// Tokens answered only after a delay.
    slow: HashMap<String, Duration>,
    /// How many requests each token made.
    seen: HashMap<String, usize>,
}

/// GitHub's `GET /user`: 200 with the user for an accepted bearer token, else
/// `401 {"message": "Bad credentials", ...}` as GitHub documents it.
#[derive(Clone)]
pub struct GitHubUserStub {
    pub url: String,
    state: Arc<Mutex<UserStubState>>,
}

impl GitHubUserStub {
    pub async fn start(accepted: &[&str]) -> Self {
        let state = Arc::new(Mutex::new(UserStubState {
            accepted: accepted.iter().map(|t| (*t).to_owned()).collect(),
            ..UserStubState::default()
        }));
        let app = Router::new().route("/user", get(user)).with_state(Arc::clone(&state));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr: SocketAddr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url: format!("http://{addr}"), state }
    }

    pub fn accept(&self, token: &str) {
        self.state.lock().unwrap().accepted.insert(token.to_owned());
    }

    pub fn revoke(&self, token: &str) {
        self.state.lock().unwrap().accepted.remove(token);
    }

    /// Answers requests with `token` only after `delay`.
    pub fn slow(&self, token: &str, delay: Duration) {
        self.state.lock().unwrap().slow.insert(token.to_owned(), delay);
    }

    /// How many requests authenticated with `token`.
    pub fn seen(&self, token: &str) -> usize {
        self.state.lock().unwrap().seen.get(token).copied().unwrap_or(0)
    }
}

async fn user(State(state): State<Arc<Mutex<UserStubState>>>, headers: HeaderMap) -> Response {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_owned();
    let delay = {
        let mut s = state.lock().unwrap();
        *s.seen.entry(token.clone()).or_default() += 1;
        s.slow.get(&token).copied()
    };
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    let ok = headers.get("x-github-api-version").is_some_and(|v| v == "2022-11-28")
        && state.lock().unwrap().accepted.contains(&token);
    if ok {
        (StatusCode::OK, axum::Json(json!({"login": "octocat", "id": 1, "type": "User"}))).into_response()
    } else {
        // A careless vendor that echoes the credential it refused, in the spellings an error
        // text may carry it (the engine must keep none of them: tests/e2e/secret_leak.rs).
        use base64::Engine as _;
        let base64 = base64::engine::general_purpose::STANDARD;
        let message = format!(
            "Bad credentials: {token} (base64 {}, basic {})",
            base64.encode(&token),
            base64.encode(format!("x-access-token:{token}"))
        );
        (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"message": message, "documentation_url": "https://docs.github.com/rest"})),
        )
            .into_response()
    }
}

/// `serve` on `dir` with `IE_LOG=debug`, its stderr written to the returned file.
pub fn serve_with_logs(dir: &Path, extra: &[&str]) -> (App, PathBuf) {
    let log = dir.join("serve.stderr.log");
    let stderr = std::fs::File::create(&log).expect("log file");
    let child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .args(extra)
        .env("IE_LOG", "debug")
        .env_remove("IE_MASTER_KEY")
        .stdout(Stdio::piped())
        .stderr(Stdio::from(stderr))
        .spawn()
        .expect("start integration-engine serve");
    (App::when_listening(child, dir), log)
}

/// `integration-engine secrets ARGS...` on `dir`; its stdout. A `put` stores into a vault of the
/// tests' tenant.
pub fn secrets(dir: &Path, args: &[&str], stdin: Option<&str>) -> String {
    use std::io::Write;
    let owner: &[&str] = if args[0] == "put" { &["--tenant", crate::support::SECRETS_TENANT] } else { &[] };
    let mut child = Command::new(BIN)
        .arg("secrets")
        .arg(args[0])
        .arg("--data-dir")
        .arg(dir)
        .args(owner)
        .args(&args[1..])
        .env_remove("IE_MASTER_KEY")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run secrets");
    let mut input = child.stdin.take().expect("stdin");
    if let Some(value) = stdin {
        input.write_all(value.as_bytes()).expect("write stdin");
    }
    drop(input);
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "secrets {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf8")
}

/// The data of every stored event of `event_type`, in order.
pub fn events_of_type(dir: &Path, event_type: &str) -> Vec<Value> {
    let conn = rusqlite::Connection::open(dir.join("events.db")).unwrap();
    conn.prepare("SELECT data FROM events WHERE event_type = ?1 ORDER BY global_position")
        .unwrap()
        .query_map([event_type], |row| row.get::<_, String>(0))
        .unwrap()
        .map(|d| serde_json::from_str(&d.unwrap()).unwrap())
        .collect()
}

/// Polls `probe` every 100 ms until it answers `Some`, for at most `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(found) = probe().await {
            return found;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Registers GitHub at `base_url` and a connection using `credential_ref`; the POST's response.
pub async fn github_connection(
    app: &App,
    token: &str,
    tenant: &str,
    base_url: &str,
    credential_ref: &str,
    prefer: Option<&str>,
) -> reqwest::Response {
    let provider = json!({"tenantId": tenant, "key": "github", "displayName": "GitHub", "category": "SourceControl",
        "authModel": "OAuth2ClientCredentials", "apiClient": "ConnectSoft.SourceControl.Providers.GitHub", "baseUrl": base_url});
    let r = app.post_json("/integrations/providers", token, &provider).await;
    assert!(r.status() == 201 || r.status() == 409, "{}", r.status());
    let connection = json!({"tenantId": tenant, "projectId": "proj-booking-saas", "providerId": "prov-github",
        "displayName": "Booking SaaS GitHub", "authMode": "OAuth2ClientCredentials", "credentialRef": credential_ref,
        "configuration": {"organization": "connectsoft-booking", "defaultBranch": "main"}});
    let mut request = app.client.post(app.url("/integrations/connections")).bearer_auth(token).json(&connection);
    if let Some(prefer) = prefer {
        request = request.header("prefer", prefer);
    }
    request.send().await.expect("request")
}

/// Registers Twilio at `base_url` and a connection whose credential (`credential_ref`, an API key
/// `SK…:secret`) Twilio issues through the Main key `issuer_ref`; the POST's response.
pub async fn twilio_connection(
    app: &App,
    token: &str,
    tenant: &str,
    base_url: &str,
    credential_ref: &str,
    issuer_ref: &str,
) -> reqwest::Response {
    let provider = json!({"tenantId": tenant, "key": "twilio-sms", "displayName": "Twilio SMS", "category": "Communication",
        "authModel": "ApiKey", "apiClient": "ConnectSoft.Sms.Providers.Twilio", "baseUrl": base_url});
    let r = app.post_json("/integrations/providers", token, &provider).await;
    assert!(r.status() == 201 || r.status() == 409, "{}", r.status());
    let connection = json!({"tenantId": tenant, "projectId": "proj-booking-saas", "providerId": "prov-twilio-sms",
        "displayName": "Booking SMS", "authMode": "ApiKey", "credentialRef": credential_ref,
        "configuration": {"accountSid": twilio::ACCOUNT_SID, "keyIssuerCredentialRef": issuer_ref}});
    app.client
        .post(app.url("/integrations/connections"))
        .bearer_auth(token)
        .header("prefer", "wait=15")
        .json(&connection)
        .send()
        .await
        .expect("request")
}

/// The ids of the runs of `operation` requested so far, in order.
pub fn runs_of_operation(dir: &Path, operation: &str) -> Vec<String> {
    events_of_type(dir, "RunRequested")
        .into_iter()
        .filter(|e| e["operation"] == operation)
        .map(|e| e["runId"].as_str().unwrap().to_owned())
        .collect()
}
