//! Benchmark of outbound webhook fan-out: platform events published and delivered to local
//! receivers (loopback HTTP servers answering 200), through the real fan-out and dispatcher, on
//! the embedded default and with Kafka (a tansu broker: `TANSU_BIN` or where `scripts/test`
//! installs it; skipped when missing). Reports deliveries/s and the latency from the publish's
//! acknowledgement (the store's commit, or the broker's ack of `PublishEvent`) to the
//! receiver's first sight of the delivery, p50/p99. Writes them to a JSON file. Not a test.
//!
//! Each mode runs twice: saturated (16 publishers as fast as they can: the throughput, and the
//! latency of a backlog) and paced (a steady rate below capacity: the latency of one message).
//!
//! With Kafka, the latency is also split at the store: `storedMs` is from the broker's ack of
//! `PublishEvent` to the `PlatformEventPublished` in the store (the commands topic's hop), and
//! `fromStoreMs` from there to the receiver (the relay, the events topic, the fan-out, the
//! dispatcher).
//!
//! cargo run --release --example bench_fanout -- [OUT_FILE] [MESSAGES] [SUBSCRIPTIONS]
//!
//! `BENCH_LOG` is the filter of the workers' logs on stderr (`warn`);
//! `BENCH_MODES=kafka` (or `embedded`) runs one mode only; `BENCH_KAFKA_FETCH_WAIT_MS` overrides
//! the consumers' fetch wait (`--kafka-fetch-wait-ms`), to compare settings;
//! `BENCH_FANOUT_CONCURRENCY` the messages the fan-out handles at once (64, as `serve`);
//! `BENCH_DRAIN_SECONDS` how long a run may take to deliver everything (300) before it is
//! reported as not drained.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use commands::{CommandContext, Commands, SystemClock};
use connectors::egress::EgressAllowList;
use domain::Actor;
use domain::secret_ref::SecretRef;
use domain::subscription::{CreateWebhookSubscription, DeliverySettings};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use serde_json::json;
use store::cached_vault::CachedSecretStore;
use store::{EventStore, Leases, MasterKey, SecretStore, SqliteEventStore, SqliteLeases, SqliteVault};
use tokio_util::sync::CancellationToken;
use workers::control_plane::ControlPlane;
use workers::fanout::{Dispatcher, FANOUT_CONSUMER, FanOut, WebhookSettings};
use workers::kafka::{ensure_topics, run_commands_consumer};
use workers::messages::{COMMANDS_TOPIC, ControlCommand, PublishEvent, SCHEMA_VERSION_HEADER};
use workers::relay::{RELAY_CONSUMER, run_relay};
use workers::{ConsumerOptions, EmbeddedFeed, KafkaFeed, KafkaSettings, SqliteCheckpoints, run_consumer_with};

#[path = "support/cpu.rs"]
mod cpu;

const TENANT: &str = "bench";
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// Messages published at once.
const PUBLISHERS: usize = 16;

/// First arrival of each (subscription path, webhook-id).
type Arrivals = Arc<Mutex<HashMap<(String, String), Instant>>>;

async fn receive(State(arrivals): State<Arrivals>, Path(path): Path<String>, headers: HeaderMap) -> &'static str {
    let id = headers.get("webhook-id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    arrivals.lock().unwrap().entry((path, id)).or_insert_with(Instant::now);
    "ok"
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index].as_secs_f64() * 1000.0
}

fn tansu_bin() -> Option<PathBuf> {
    let path = std::env::var_os("TANSU_BIN").map(PathBuf::from).or_else(|| {
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/integration-engine/tansu/bin/tansu"))
    })?;
    path.exists().then_some(path)
}

/// A tansu broker on a free loopback port; killed on drop.
struct Broker {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_broker(bin: &PathBuf) -> anyhow::Result<Broker> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let dir = tempfile::tempdir()?;
    let url = format!("tcp://127.0.0.1:{port}");
    let child = Command::new(bin)
        .current_dir(dir.path())
        .args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
            "--storage-engine",
            "sqlite://tansu.db",
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        anyhow::ensure!(Instant::now() < deadline, "tansu did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(Broker { child, port, _dir: dir })
}

/// When each message's `PlatformEventPublished` became visible in the store, by message id.
fn watch_stored(store: Arc<dyn EventStore>, shutdown: CancellationToken) -> Arc<Mutex<HashMap<String, Instant>>> {
    let stored: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let seen = stored.clone();
    let mut head = store.watch_head();
    tokio::spawn(async move {
        let mut after = 0;
        loop {
            let Ok(events) = store.read_all(after, 1000).await else { return };
            let now = Instant::now();
            for event in &events {
                after = event.global_position;
                if event.event_type == "PlatformEventPublished"
                    && let Some(id) = event.data["messageId"].as_str()
                {
                    seen.lock().unwrap().entry(id.to_owned()).or_insert(now);
                }
            }
            if events.is_empty() {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    changed = head.changed() => if changed.is_err() { return },
                }
            }
        }
    });
    stored
}

async fn run_mode(
    mode: &str,
    kafka: Option<KafkaSettings>,
    messages: usize,
    subscriptions: usize,
    rate: Option<f64>,
) -> anyhow::Result<serde_json::Value> {
    let dir = tempfile::tempdir()?;
    let store: Arc<dyn EventStore> = Arc::new(SqliteEventStore::open(&dir.path().join("events.db"))?);
    let sqlite_vault = Arc::new(SqliteVault::open(&dir.path().join("vault.db"), MasterKey::generate()?)?);
    let vault: Arc<dyn SecretStore> = Arc::new(CachedSecretStore::new(sqlite_vault, Duration::from_secs(5)));
    let secret_ref = "kv://bench/hook-secret";
    vault.put(&SecretRef::parse(secret_ref).map_err(anyhow::Error::msg)?, SECRET.as_bytes(), None).await?;
    vault.claim("bench", &store::VaultOwner::Tenant(TENANT.into())).await?;
    let commands = Commands::new(store.clone(), vault.clone(), Arc::new(SystemClock));
    let ctx = CommandContext::new(TENANT, "trace-bench", Actor { subject: "bench".into(), client_id: None });

    let arrivals: Arrivals = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let app = axum::Router::new().route("/{path}", axum::routing::post(receive)).with_state(arrivals.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    for i in 0..subscriptions {
        commands
            .create_subscription(
                &ctx,
                CreateWebhookSubscription {
                    subscription_id: format!("sub-bench-{i}"),
                    tenant_id: TENANT.into(),
                    project_id: None,
                    event_type: "Bench*".into(),
                    endpoint_url: format!("http://127.0.0.1:{port}/s{i}"),
                    signing_secret_ref: secret_ref.into(),
                    active: true,
                    created_at: commands.now(),
                    delivery: DeliverySettings { max_in_flight: 64, ..DeliverySettings::default() },
                },
            )
            .await?;
    }

    let shutdown = CancellationToken::new();
    let stored = watch_stored(store.clone(), shutdown.child_token());
    let mut settings = WebhookSettings::new(format!("bench-{mode}"));
    settings.allow = Arc::new(EgressAllowList::parse("127.0.0.1").map_err(anyhow::Error::msg)?);
    let leases: Arc<dyn Leases> = Arc::new(SqliteLeases::open(&dir.path().join("events.db"))?);
    let dispatcher = Dispatcher::new(store.clone(), leases, commands.clone(), vault.clone(), settings)?;
    let fan_out = FanOut::new(commands.clone(), dispatcher.directory(), shutdown.child_token());
    tokio::spawn(dispatcher.run(shutdown.child_token()));
    let checkpoints = SqliteCheckpoints::open(dir.path().join("workers.db")).await?;
    // As `serve` runs it (src/webhooks.rs).
    let concurrency = std::env::var("BENCH_FANOUT_CONCURRENCY").ok().and_then(|c| c.parse().ok()).unwrap_or(64);
    let options = ConsumerOptions { batch_size: 256, concurrency, ..ConsumerOptions::default() };
    let producer = match &kafka {
        None => {
            let feed = EmbeddedFeed::open(store.clone(), checkpoints, FANOUT_CONSUMER).await?;
            tokio::spawn(run_consumer_with(feed, fan_out, options, shutdown.child_token()));
            None
        }
        Some(settings) => {
            ensure_topics(settings).await?;
            let relay_feed = EmbeddedFeed::open(store.clone(), checkpoints, RELAY_CONSUMER).await?;
            let (s, t) = (settings.clone(), shutdown.child_token());
            tokio::spawn(async move { run_relay(relay_feed, &s, t).await });
            let handler = ControlPlane::new(commands.clone(), Actor { subject: "kafka".into(), client_id: None });
            let (s, t) = (settings.clone(), shutdown.child_token());
            tokio::spawn(async move { run_commands_consumer(&s, handler, t).await });
            let feed = KafkaFeed::subscribe(settings, FANOUT_CONSUMER)?;
            tokio::spawn(run_consumer_with(feed, fan_out, options, shutdown.child_token()));
            Some(settings.producer()?)
        }
    };
    // Let the consumers join (Kafka) and the dispatcher catch up before measuring.
    tokio::time::sleep(Duration::from_secs(if kafka.is_some() { 5 } else { 1 })).await;

    let ticks = cpu::clock_ticks_per_second();
    let cpu_before = cpu::cpu_time(std::process::id(), ticks)?;
    let acks: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|_| {
            let (commands, ctx, acks, next, producer) =
                (commands.clone(), ctx.clone(), acks.clone(), next.clone(), producer.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= messages {
                        return anyhow::Ok(());
                    }
                    if let Some(rate) = rate {
                        tokio::time::sleep_until((started + Duration::from_secs_f64(i as f64 / rate)).into()).await;
                    }
                    let id = format!("msg-bench-{i}");
                    let data = json!({"sequence": i, "release": "1.4"});
                    match &producer {
                        None => {
                            commands.publish_event(&ctx, &id, None, "BenchEvent", data).await?;
                        }
                        Some(producer) => {
                            let command = ControlCommand::PublishEvent(PublishEvent {
                                tenant_id: TENANT.into(),
                                project_id: None,
                                event_type: "BenchEvent".into(),
                                data,
                                message_id: Some(id.clone()),
                            });
                            let value = serde_json::to_vec(&command)?;
                            let key = format!("{TENANT}/{id}");
                            let headers =
                                OwnedHeaders::new().insert(Header { key: SCHEMA_VERSION_HEADER, value: Some("1") });
                            let record =
                                FutureRecord::to(COMMANDS_TOPIC).key(key.as_bytes()).payload(&value).headers(headers);
                            producer.send(record, Duration::from_secs(30)).await.map_err(|(e, _)| e)?;
                        }
                    }
                    acks.lock().unwrap().insert(id, Instant::now());
                }
            })
        })
        .collect();
    for publisher in publishers {
        publisher.await??;
    }
    let published_in = started.elapsed();
    let expected = messages * subscriptions;
    let deadline = Instant::now()
        + Duration::from_secs(std::env::var("BENCH_DRAIN_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(300));
    while arrivals.lock().unwrap().len() < expected {
        anyhow::ensure!(
            Instant::now() < deadline,
            "{mode}: only {} of {expected} delivered ({} of {messages} messages in the store)",
            arrivals.lock().unwrap().len(),
            stored.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cpu = cpu::cpu_time(std::process::id(), ticks)?.saturating_sub(cpu_before);
    shutdown.cancel();
    let arrivals = arrivals.lock().unwrap().clone();
    let acks = acks.lock().unwrap().clone();
    let stored = stored.lock().unwrap().clone();
    let last = arrivals.values().max().copied().unwrap_or(started);
    let mut latencies: Vec<Duration> =
        arrivals.iter().map(|((_, id), at)| at.saturating_duration_since(acks[id])).collect();
    latencies.sort();
    // Where the time goes: before the store (the commands topic, with Kafka) and after it.
    let mut to_store: Vec<Duration> =
        acks.iter().filter_map(|(id, ack)| Some(stored.get(id)?.saturating_duration_since(*ack))).collect();
    to_store.sort();
    let mut from_store: Vec<Duration> =
        arrivals.iter().filter_map(|((_, id), at)| Some(at.saturating_duration_since(*stored.get(id)?))).collect();
    from_store.sort();
    let split = |sorted: &[Duration]| {
        if sorted.is_empty() {
            serde_json::Value::Null
        } else {
            json!({"p50": percentile(sorted, 0.5), "p99": percentile(sorted, 0.99)})
        }
    };
    let elapsed = last.duration_since(started).as_secs_f64();
    let result = json!({
        "mode": mode,
        "publishRatePerSecond": rate,
        "messages": messages,
        "subscriptions": subscriptions,
        "deliveries": expected,
        "publishedInSeconds": published_in.as_secs_f64(),
        "seconds": elapsed,
        "deliveriesPerSecond": expected as f64 / elapsed,
        // The whole process: the engine's fan-out and dispatcher, and also the publishers and
        // the receiver, which run in it too (so an upper bound of the engine's share).
        "processCpuMsPerDelivery": cpu.as_secs_f64() * 1000.0 / expected as f64,
        "latencyMs": {"p50": percentile(&latencies, 0.5), "p99": percentile(&latencies, 0.99), "max": percentile(&latencies, 1.0)},
        "storedMs": split(&to_store),
        "fromStoreMs": split(&from_store),
        "kafkaFetchWaitMs": kafka.as_ref().map(|k| k.fetch_wait.as_millis() as u64),
    });
    println!("{result}");
    Ok(result)
}

/// The binary's allocator (`src/main.rs`), so the engine's code runs here as it runs there.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // The workers' own logs (a command dead-lettered, a consumer's rebalance), to stderr.
    tracing_subscriber::fmt()
        .with_env_filter(std::env::var("BENCH_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let mut args = std::env::args().skip(1);
    let out = args.next().unwrap_or_else(|| "bench-results/fanout.json".into());
    let messages: usize = args.next().map(|n| n.parse()).transpose()?.unwrap_or(2_000);
    let subscriptions: usize = args.next().map(|n| n.parse()).transpose()?.unwrap_or(4);
    let modes = std::env::var("BENCH_MODES").unwrap_or_else(|_| "embedded,kafka".into());
    let fetch_wait = std::env::var("BENCH_KAFKA_FETCH_WAIT_MS").ok().map(|ms| ms.parse()).transpose()?;
    let mut results = Vec::new();
    if modes.split(',').any(|m| m == "embedded") {
        results.push(run_mode("embedded", None, messages, subscriptions, None).await?);
        results.push(run_mode("embedded", None, messages / 4, subscriptions, Some(100.0)).await?);
    }
    match tansu_bin() {
        _ if !modes.split(',').any(|m| m == "kafka") => {}
        Some(bin) => {
            // The paced run at the rate the speed issue names (100 messages/s), as embedded.
            for (count, rate) in [(messages / 5, None), (messages / 4, Some(100.0))] {
                let broker = start_broker(&bin)?;
                let mut settings = KafkaSettings::new(format!("127.0.0.1:{}", broker.port));
                settings.group_prefix = format!("bench-{}", uuid::Uuid::new_v4().simple());
                if let Some(ms) = fetch_wait {
                    settings.fetch_wait = Duration::from_millis(ms);
                }
                // A run that does not drain is reported as such, and the next one still runs.
                match run_mode("kafka", Some(settings), count, subscriptions, rate).await {
                    Ok(result) => results.push(result),
                    Err(error) => {
                        eprintln!("{error:#}");
                        let error = format!("{error:#}");
                        results.push(
                            json!({"mode": "kafka", "messages": count, "publishRatePerSecond": rate, "error": error}),
                        );
                    }
                }
            }
        }
        None => eprintln!("kafka: skipped (no tansu at TANSU_BIN or ~/.cache/integration-engine/tansu)"),
    }
    let report = json!({
        "benchmark": "outbound webhook fan-out: publish → fan-out → signed delivery to loopback receivers answering 200",
        "machine": "2 cores (shared), release build",
        "publishers": PUBLISHERS,
        "results": results,
    });
    std::fs::write(&out, serde_json::to_string_pretty(&report)? + "\n")?;
    println!("wrote {out}");
    // Kafka clients may still sit in blocking calls; the numbers are written, so end here.
    std::process::exit(0)
}
