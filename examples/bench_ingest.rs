//! Benchmark of signed webhook ingest through HTTP on the embedded default: `serve`'s wiring
//! (SQLite event store with group commit, cached vault, projections with read-your-writes) on a
//! loopback port, 64 concurrent clients posting distinct GitHub push deliveries, each signed with
//! X-Hub-Signature-256. Reports deliveries/s and p50/p99 latency; writes them to a JSON file.
//! Not a test.
//!
//! cargo run --release --example bench_ingest -- [OUT_FILE] [DELIVERIES] [CLIENTS]

use std::sync::Arc;
use std::time::{Duration, Instant};

use api::auth::{AuthConfig, Authenticator, DEV_AUDIENCE, DEV_ISSUER, mint_dev_token};
use api::{ApiSettings, AppState};
use commands::idempotency::Idempotency;
use commands::{Commands, SystemClock};
use domain::secret_ref::SecretRef;
use projections::{Projections, ReadModels};
use serde_json::{Value, json};
use store::cached_vault::CachedSecretStore;
use store::{EventStore, MasterKey, SecretStore, SqliteEventStore, SqliteIdempotencyStore, SqliteVault};

const DEV_SECRET: &[u8] = b"bench-ingest-dev-secret-0123456789abcdef";
const WEBHOOK_SECRET: &[u8] = b"bench-webhook-secret";

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index].as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let out = args.next().unwrap_or_else(|| "bench-results/ingest.json".into());
    let deliveries: usize = args.next().map(|n| n.parse()).transpose()?.unwrap_or(20_000);
    let clients: usize = args.next().map(|n| n.parse()).transpose()?.unwrap_or(64);

    // The embedded default, wired as `serve` wires it.
    let dir = tempfile::tempdir()?;
    let store: Arc<dyn EventStore> = Arc::new(SqliteEventStore::open(&dir.path().join("events.db"))?);
    let sqlite_vault = Arc::new(SqliteVault::open(&dir.path().join("vault.db"), MasterKey::generate()?)?);
    let vault: Arc<dyn SecretStore> = Arc::new(CachedSecretStore::new(sqlite_vault, Duration::from_secs(5)));
    vault
        .put(&SecretRef::parse("kv://bench/github-webhook").map_err(anyhow::Error::msg)?, WEBHOOK_SECRET, None)
        .await?;
    // The token's tenant ("bench", below) owns the vault its connection names.
    vault.claim("bench", &store::VaultOwner::Tenant("bench".into())).await?;
    let read_models = ReadModels::open(dir.path().join("readmodels.db"))?;
    let projections = Projections::new(read_models.clone());
    tokio::spawn({
        let (projections, store) = (projections.clone(), store.clone());
        async move { projections.run(store).await }
    });
    let state = AppState {
        commands: Commands::new(store.clone(), vault.clone(), Arc::new(SystemClock)),
        read_models,
        projections,
        auth: Authenticator::new(AuthConfig::dev(DEV_SECRET.to_vec())).await?,
        vault: store::Vaults::new(vault),
        idempotency: Idempotency::new(
            Arc::new(SqliteIdempotencyStore::open(&dir.path().join("events.db"))?),
            Arc::new(SystemClock),
        ),
        store: store.clone(),
        provider_key_sets: Arc::new(connectors::key_sets::ProviderKeySets::new(Default::default())),
        settings: ApiSettings::default(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, api::router(state)).await });

    let client = reqwest::Client::builder().pool_max_idle_per_host(clients).build()?;
    let scopes = ["integration.providers.write", "integration.connections.write"];
    let token =
        mint_dev_token(DEV_SECRET, DEV_ISSUER, DEV_AUDIENCE, "bench", "bench", &scopes, Duration::from_secs(3600))?;
    let provider = json!({"key": "github", "displayName": "GitHub", "category": "SourceControl",
        "authModel": "HmacSignature", "apiClient": "GitHub", "capabilities": [], "baseUrl": "https://api.github.com"});
    client.post(format!("{base}/integrations/providers")).bearer_auth(&token).json(&provider).send().await?;
    let connection = json!({"projectId": "p", "providerId": "prov-github", "displayName": "bench", "authMode": "ApiKey",
        "credentialRef": "kv://bench/github-api", "configuration": {"webhookSecretRef": "kv://bench/github-webhook"}});
    let created: Value = client
        .post(format!("{base}/integrations/connections"))
        .bearer_auth(&token)
        .json(&connection)
        .send()
        .await?
        .json()
        .await?;
    let url =
        format!("{base}/webhooks/deliveries?connectionId={}", created["connectionId"].as_str().unwrap_or_default());

    // Signed bodies are prepared up front, so the clients measure the gateway, not the signing.
    let prepared: Vec<(String, String, String)> = (0..deliveries)
        .map(|i| {
            let body = json!({
                "ref": "refs/heads/main", "before": "9049f1265b7d61be4a8904a9a27120d2064dab3b",
                "after": format!("{i:040x}"), "repository": {"full_name": "connectsoft-booking/booking"},
                "pusher": {"name": "octocat"}, "head_commit": {"id": format!("{i:040x}"), "message": "bench"}
            })
            .to_string();
            let signature = connectors::github::sign(WEBHOOK_SECRET, body.as_bytes());
            (format!("bench-{i}"), body, signature)
        })
        .collect();
    let prepared = Arc::new(prepared);

    let head_before = store.head_position().await?;
    let started = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (client, url, prepared, next) = (client.clone(), url.clone(), prepared.clone(), next.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut failures = 0usize;
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some((delivery, body, signature)) = prepared.get(i) else { break };
                    let sent = Instant::now();
                    let response = client
                        .post(&url)
                        .header("content-type", "application/json")
                        .header("x-github-event", "push")
                        .header("x-github-delivery", delivery)
                        .header("x-hub-signature-256", signature)
                        .body(body.clone())
                        .send()
                        .await;
                    match response {
                        Ok(r) if r.status() == 202 => {
                            let _ = r.bytes().await;
                            latencies.push(sent.elapsed());
                        }
                        _ => failures += 1,
                    }
                }
                (latencies, failures)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut failures = 0;
    for task in tasks {
        let (l, f) = task.await?;
        latencies.extend(l);
        failures += f;
    }
    let seconds = started.elapsed().as_secs_f64();
    let appended = store.head_position().await? - head_before;
    latencies.sort();
    let accepted = latencies.len();
    let result = json!({
        "benchmark": "signed webhook ingest through HTTP (GitHub X-Hub-Signature-256, native push bodies), embedded SQLite default",
        "machine": format!("{} cores", std::thread::available_parallelism().map_or(0, |n| n.get())),
        "concurrentClients": clients,
        "deliveries": deliveries,
        "accepted": accepted,
        "failed": failures,
        "eventsAppended": appended,
        "seconds": seconds,
        "deliveriesPerSecond": accepted as f64 / seconds,
        "latencyMs": {
            "p50": percentile(&latencies, 0.50),
            "p90": percentile(&latencies, 0.90),
            "p99": percentile(&latencies, 0.99),
            "max": percentile(&latencies, 1.0),
        },
        "notes": "Each delivery: verification over the raw body, normalization (CodePushed), one atomic append of \
                  DeliveryAccepted + CodePushed (synchronous=FULL, group commit), and a wait until the read models \
                  include it (read-your-writes). Client and server share the machine's cores.",
    });
    if let Some(parent) = std::path::Path::new(&out).parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&out, serde_json::to_string_pretty(&result)? + "\n")?;
    println!("{}", serde_json::to_string_pretty(&result)?);
    anyhow::ensure!(failures == 0, "{failures} deliveries were not accepted");
    Ok(())
}
