//! The ceiling of the HTTP benchmark (`bench_http`): the least an axum JSON endpoint can do on
//! this machine with the engine's own axum and tokio (multi-thread runtime). `POST /echo` parses
//! the body into a `serde_json::Value` and answers it back as JSON; `GET /echo` answers a small
//! JSON. Nothing else: no auth, no store, no logging. Not a test.
//!
//! cargo run --release --example bench_echo -- [--listen ADDR | ADDR]
//!
//! Prints `listening on http://ADDR` once bound (port 0 picks a free one), as `serve` does.

use axum::Json;
use axum::Router;
use axum::routing::get;
use serde_json::{Value, json};

async fn echo(Json(body): Json<Value>) -> Json<Value> {
    Json(body)
}

async fn hello() -> Json<Value> {
    Json(json!({"status": "ok", "service": "bench-echo"}))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let listen = match args.next().as_deref() {
        Some("--listen") => args.next().ok_or_else(|| anyhow::anyhow!("--listen needs an address"))?,
        Some(addr) => addr.to_owned(),
        None => "127.0.0.1:8090".to_owned(),
    };
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, Router::new().route("/echo", get(hello).post(echo))).await?;
    Ok(())
}
