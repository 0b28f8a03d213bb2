//! Black-box helpers: start the real binary on a free port with a temporary data dir, mint
//! tokens with its `token` command, and talk HTTP to it.

pub mod streams;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_integration-engine");
pub const ALL_SCOPES: &str = "integration.connections.write integration.connections.read integration.providers.write \
     webhooks.subscriptions.write webhooks.deliveries.ingest integration.runs.read integration.credentials.rotate";

pub struct App {
    pub base: String,
    pub data_dir: PathBuf,
    pub client: reqwest::Client,
    child: Child,
    _temp: Option<tempfile::TempDir>,
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `integration-engine serve` on a fresh data dir.
pub fn spawn_app() -> App {
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = temp.path().to_path_buf();
    let mut app = spawn_app_in(&dir, &[]);
    app._temp = Some(temp);
    app
}

/// Starts `integration-engine serve` on a fresh data dir with extra arguments.
pub fn spawn_app_with(extra: &[&str]) -> App {
    let temp = tempfile::tempdir().expect("temp dir");
    let mut app = spawn_app_in(temp.path(), extra);
    app._temp = Some(temp);
    app
}

/// The tenant whose secrets [`put_secret`] stores, and the vaults it owns in every app.
pub const SECRETS_TENANT: &str = "connectsoft";
const SECRETS_TENANT_VAULTS: [&str; 3] = ["factory", "factory-integration", "partner-hooks"];

/// Starts `integration-engine serve` on `data_dir` with extra arguments; the tests' tenant owns
/// the vaults the tests name ([`SECRETS_TENANT_VAULTS`]).
pub fn spawn_app_in(data_dir: &Path, extra: &[&str]) -> App {
    secrets(data_dir, &[&["claim"][..], &SECRETS_TENANT_VAULTS, &["--tenant", SECRETS_TENANT]].concat());
    let child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .args(extra)
        .env("IE_LOG", "warn")
        .env_remove("IE_MASTER_KEY")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start integration-engine serve");
    App::when_listening(child, data_dir)
}

impl App {
    /// An app around a `serve` child a test started itself (e.g. to read its stderr).
    pub fn attach(base: String, data_dir: &Path, child: Child) -> App {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("client");
        App { base, data_dir: data_dir.to_path_buf(), client, child, _temp: None }
    }

    /// Wraps a started `serve` (its stdout piped) once it has announced its address. Its stdout
    /// is drained from then on, so the child never blocks on a full pipe.
    pub fn when_listening(mut child: Child, data_dir: &Path) -> App {
        let stdout = child.stdout.take().expect("serve's stdout is piped");
        let mut lines = BufReader::new(stdout).lines();
        let base = loop {
            let line = lines.next().expect("serve exited before listening").expect("read stdout");
            if let Some(addr) = line.strip_prefix("listening on ") {
                break addr.trim().to_string();
            }
        };
        std::thread::spawn(move || for _ in lines {});
        App::attach(base, data_dir, child)
    }

    /// The `serve` process's id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// A development token for `tenant` with `scopes`, from the binary's `token` command.
    pub fn token(&self, tenant: &str, scopes: &str) -> String {
        self.token_with_roles(tenant, scopes, "")
    }

    /// A development token for `tenant` with `scopes` and `roles` (space-separated).
    pub fn token_with_roles(&self, tenant: &str, scopes: &str, roles: &str) -> String {
        let out = Command::new(BIN)
            .args(["token", "--data-dir"])
            .arg(&self.data_dir)
            .args(["--tenant", tenant, "--scope", scopes, "--roles", roles])
            .output()
            .expect("run token");
        assert!(out.status.success(), "token failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).expect("utf8").trim().to_string()
    }

    /// Stores a vault secret through the binary's `secrets put` command.
    pub fn put_secret(&self, secret_ref: &str, value: &str) {
        put_secret(&self.data_dir, secret_ref, value);
    }

    pub async fn post_json(&self, path: &str, token: &str, body: &serde_json::Value) -> reqwest::Response {
        self.client.post(self.url(path)).bearer_auth(token).json(body).send().await.expect("request")
    }

    pub async fn get(&self, path: &str, token: &str) -> reqwest::Response {
        self.client.get(self.url(path)).bearer_auth(token).send().await.expect("request")
    }

    /// Kills the server (SIGKILL) and waits for it.
    pub fn kill(mut self) -> PathBuf {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.data_dir.clone()
    }
}

/// `secrets put --tenant connectsoft`.
pub fn put_secret(data_dir: &Path, secret_ref: &str, value: &str) {
    put_secret_as(data_dir, secret_ref, value, &["--tenant", SECRETS_TENANT]);
}

/// `integration-engine secrets ARGS --data-dir DIR`, which must succeed.
pub fn secrets(data_dir: &Path, args: &[&str]) {
    let out = Command::new(BIN)
        .arg("secrets")
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .env_remove("IE_MASTER_KEY")
        .output()
        .expect("run secrets");
    assert!(out.status.success(), "secrets {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// `secrets put` with extra arguments (e.g. `["--tenant", "t"]`).
pub fn put_secret_as(data_dir: &Path, secret_ref: &str, value: &str, extra: &[&str]) {
    let mut child = Command::new(BIN)
        .args(["secrets", "put", "--data-dir"])
        .arg(data_dir)
        .arg(secret_ref)
        .args(extra)
        .env_remove("IE_MASTER_KEY")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run secrets put");
    child.stdin.take().expect("stdin").write_all(value.as_bytes()).expect("write stdin");
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "secrets put failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// GitHub's `X-Hub-Signature-256` of `body` under `secret`, computed independently of the app.
pub fn github_signature(secret: &str, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    format!("sha256={}", hex::encode(ring::hmac::sign(&key, body).as_ref()))
}
