//! A stand-in for GitHub's REST API on loopback, as far as the engine's health check goes:
//! `GET /user` ("get the authenticated user") answers 200 with a user, as GitHub does for a
//! working token. It keeps the time of every check it answered, so a benchmark can tell how
//! many checks ran and at what rate. It runs on a thread of its own with its own runtime, so it
//! neither waits for nor slows the benchmark's client.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

/// The token the stand-in accepts; anything else is GitHub's `401 Bad credentials`.
pub const TOKEN: &str = "bench-github-token";

pub struct GitHubStandIn {
    pub url: String,
    checks: Arc<Mutex<Vec<Instant>>>,
}

impl GitHubStandIn {
    pub fn start() -> anyhow::Result<Self> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let url = format!("http://{}", listener.local_addr()?);
        let checks = Arc::new(Mutex::new(Vec::new()));
        let app = Router::new().route("/user", get(user)).with_state(checks.clone());
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("a tokio listener");
                axum::serve(listener, app).await.expect("the stand-in serves");
            });
        });
        Ok(Self { url, checks })
    }

    /// How many checks were answered so far.
    pub fn count(&self) -> usize {
        self.checks.lock().unwrap().len()
    }

    /// When each check was answered, in order.
    pub fn times(&self) -> Vec<Instant> {
        self.checks.lock().unwrap().clone()
    }
}

async fn user(State(checks): State<Arc<Mutex<Vec<Instant>>>>, headers: HeaderMap) -> Response {
    let authorized = headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(&format!("Bearer {TOKEN}"));
    if !authorized {
        let body = json!({"message": "Bad credentials", "documentation_url": "https://docs.github.com/rest"});
        return (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response();
    }
    checks.lock().unwrap().push(Instant::now());
    axum::Json(json!({"login": "octocat", "id": 1, "type": "User"})).into_response()
}
