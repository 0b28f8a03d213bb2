//! Benchmark of the auditor and operator paths over a large store: `replay` (the very code of
//! `src/replay.rs`, writing JSON lines into a sink), a new read-model database (`rebuild_into`)
//! and `projections rebuild --all` over it (`rebuild::rebuild`), in events per second. Writes
//! its numbers to a JSON file; not a test.
//!
//! cargo run --release --example bench_replay -- [OUT_FILE] [EVENTS]
//!
//! The store is built through the store's own `append` (many concurrent appends, each a whole
//! stream, so group commit packs them): tenants with providers (half of them stored as
//! `ProviderRegistered` v1, so replay and rebuild upcast them), connections with a history of
//! health checks, and runs (requested, started, completed). Every event is one the projections
//! apply.

#[path = "../src/data_dir.rs"]
#[allow(dead_code)] // the file names replay does not read
mod data_dir;
#[allow(dead_code)]
#[path = "../src/replay.rs"]
mod replay;

use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Duration, Utc};
use domain::{Actor, NewEvent};
use projections::projectors::ALL;
use projections::rebuild;
use serde_json::{Value, json};
use store::sqlite::SqliteEventStore;
use store::{EventFilter, EventStore, ExpectedVersion};

const TENANTS: usize = 10;
/// Events in a connection's stream: established, then health checks.
const CONNECTION_EVENTS: usize = 51;
/// Appends in flight at once while building the store.
const WRITERS: usize = 64;

fn new_event(tenant: &str, event_type: &str, schema_version: u32, at: DateTime<Utc>, data: Value) -> NewEvent {
    NewEvent {
        event_id: uuid::Uuid::now_v7(),
        event_type: event_type.into(),
        schema_version,
        tenant_id: tenant.into(),
        occurred_at: at,
        trace_id: "trace-4bf92f3577b34da6a3ce929d0e0e4736".into(),
        correlation_id: "trace-4bf92f3577b34da6a3ce929d0e0e4736".into(),
        causation_id: None,
        actor: Actor { subject: "svc-bench".into(), client_id: Some("bench".into()) },
        data,
    }
}

/// One stream of the benchmark store: its id and its events.
fn stream(n: usize, at: DateTime<Utc>) -> (String, Vec<NewEvent>) {
    // Every tenant gets every kind of stream.
    let tenant = format!("tenant-{}", (n / 20) % TENANTS);
    let t = tenant.as_str();
    match n % 20 {
        // Providers: one event each, every other one as v1 stored it.
        0 => {
            let key = format!("vendor-{n}");
            let mut data = json!({
                "providerId": format!("prov-{key}"), "tenantId": t, "key": key, "displayName": "Vendor",
                "category": "Communication", "authModel": "ApiKey", "apiClient": "ConnectSoft.Sms.Providers.Twilio",
                "apiClientId": "client-twilio-v1", "apiClientVersion": 1, "capabilities": ["sms.send"],
                "baseUrl": "https://api.vendor.example", "registeredAt": at,
            });
            let version = if n.is_multiple_of(40) {
                data.as_object_mut().expect("object").remove("apiClientVersion");
                1
            } else {
                2
            };
            (format!("{t}/prov-{key}"), vec![new_event(t, "ProviderRegistered", version, at, data)])
        }
        // Connections: established, then a history of health checks.
        1 => {
            let id = format!("conn-{n}");
            let mut events = vec![new_event(
                t,
                "ConnectionEstablished",
                1,
                at,
                json!({ "connectionId": id, "tenantId": t, "projectId": "proj-bench", "providerId": "prov-vendor",
                        "displayName": "Bench connection", "authMode": "ApiKey",
                        "credentialRef": "kv://bench/vendor-key", "configuration": { "region": "eu" },
                        "establishedAt": at }),
            )];
            for check in 1..CONNECTION_EVENTS {
                let checked_at = at + Duration::seconds(check as i64);
                let healthy = check % 7 != 0;
                let mut data = json!({ "connectionId": id, "runId": format!("run-{n}-{check}"),
                                       "health": if healthy { "Healthy" } else { "Degraded" },
                                       "consecutiveFailures": u32::from(!healthy), "checkedAt": checked_at });
                if !healthy {
                    data["reason"] = json!("timeout after 5000 ms");
                }
                events.push(new_event(t, "ConnectionHealthChecked", 1, checked_at, data));
            }
            (format!("{t}/{id}"), events)
        }
        // Runs: requested, started, completed.
        _ => {
            let id = format!("run-{n}");
            let later = |s| at + Duration::milliseconds(s);
            let events = vec![
                new_event(
                    t,
                    "RunRequested",
                    1,
                    at,
                    json!({ "runId": id, "tenantId": t, "connectionId": format!("conn-{}", n - n % 20 + 1),
                            "operation": "sms.send", "input": { "to": "+15550100", "body": "Your booking is confirmed" },
                            "traceId": "trace-4bf92f3577b34da6a3ce929d0e0e4736", "requestedAt": at }),
                ),
                new_event(t, "RunStarted", 1, later(5), json!({ "runId": id, "attempt": 1, "startedAt": later(5) })),
                new_event(
                    t,
                    "RunCompleted",
                    1,
                    later(250),
                    json!({ "runId": id, "output": { "messageSid": format!("SM{n:032}") }, "completedAt": later(250) }),
                ),
            ];
            (format!("{t}/{id}"), events)
        }
    }
}

/// Appends streams until the store holds at least `target` events; returns the events appended.
async fn build(store: Arc<SqliteEventStore>, target: u64) -> anyhow::Result<u64> {
    let start = Utc::now() - Duration::days(30);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let appended = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let writers: Vec<_> = (0..WRITERS)
        .map(|_| {
            let (store, next, appended) = (store.clone(), next.clone(), appended.clone());
            tokio::spawn(async move {
                use std::sync::atomic::Ordering::Relaxed;
                while appended.load(Relaxed) < target {
                    let n = next.fetch_add(1, Relaxed);
                    let (stream_id, events) = stream(n, start + Duration::seconds(n as i64));
                    let count = events.len() as u64;
                    store.append(&stream_id, ExpectedVersion::NoStream, events).await?;
                    appended.fetch_add(count, Relaxed);
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for writer in writers {
        writer.await??;
    }
    Ok(appended.load(std::sync::atomic::Ordering::Relaxed))
}

/// One replay pass into a sink: its numbers as a JSON row.
async fn replay_pass(name: &str, store: &Arc<dyn EventStore>, options: replay::ReplayOptions) -> anyhow::Result<Value> {
    let started = Instant::now();
    let summary = replay::replay_to(store.clone(), &options, std::io::sink(), false).await?;
    let seconds = started.elapsed().as_secs_f64();
    let row = json!({ "pass": name, "events": summary.events, "seconds": seconds,
                      "eventsPerSecond": summary.events as f64 / seconds });
    println!("{row}");
    Ok(row)
}

/// The binary's allocator (`src/main.rs`), so the engine's code runs here as it runs there.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let out = args.next().unwrap_or_else(|| "bench-results/replay.json".into());
    let target: u64 = args.next().map(|n| n.parse()).transpose()?.unwrap_or(1_000_000);
    // BENCH_REPLAY_DIR keeps the store it builds there and uses it again on the next run (to
    // profile one part without building a million events each time).
    let temporary = tempfile::tempdir()?;
    let dir = std::env::var_os("BENCH_REPLAY_DIR").map_or_else(|| temporary.path().to_path_buf(), Into::into);
    let path = dir.join("events.db");
    let built_before = path.exists();
    // The read models of an earlier run, with their WAL: a WAL left beside a new file would be
    // taken for the new file's.
    for file in ["readmodels.db", "readmodels.db-wal", "readmodels.db-shm"] {
        let _ = std::fs::remove_file(dir.join(file));
    }

    let store = Arc::new(SqliteEventStore::open(&path)?);
    let started = Instant::now();
    let events = if built_before { store.head_position().await? } else { build(store.clone(), target).await? };
    let build_seconds = started.elapsed().as_secs_f64();
    let built = json!({ "events": events, "seconds": build_seconds, "eventsPerSecond": events as f64 / build_seconds,
                        "appendsPerCommit": store.stats().appends as f64 / store.stats().commits.max(1) as f64,
                        "databaseBytes": std::fs::metadata(&path)?.len() });
    println!("{built}");
    let store: Arc<dyn EventStore> = store;

    // The store was just written: a first walk brings it into the page cache, so the passes
    // below compare the same conditions, and says what reading alone costs.
    let started = Instant::now();
    let (mut after, mut read) = (0, 0u64);
    loop {
        let page = store.read_filtered(&EventFilter::default(), after, replay::PAGE).await?;
        let Some(last) = page.last() else { break };
        after = last.global_position;
        read += page.len() as u64;
    }
    let seconds = started.elapsed().as_secs_f64();
    let read_only = json!({ "pass": "first walk after the build: reading only (read_filtered, no output), cold page cache", "events": read, "seconds": seconds,
                            "eventsPerSecond": read as f64 / seconds });
    println!("{read_only}");

    let all = EventFilter::default();
    let options = |filter: EventFilter, format, as_stored| replay::ReplayOptions { filter, format, as_stored };
    let mut passes = vec![read_only];
    passes.push(
        replay_pass("envelopes, upcast (the default)", &store, options(all.clone(), replay::Format::Envelope, false))
            .await?,
    );
    passes.push(
        replay_pass("envelopes, --as-stored", &store, options(all.clone(), replay::Format::Envelope, true)).await?,
    );
    passes.push(
        replay_pass("--format cloudevents", &store, options(all.clone(), replay::Format::Cloudevents, false)).await?,
    );
    let one_tenant = EventFilter { tenant_id: Some("tenant-3".into()), ..EventFilter::default() };
    passes.push(
        replay_pass("--tenant (1 of 10 tenants)", &store, options(one_tenant, replay::Format::Envelope, false)).await?,
    );

    // A fresh read-model database built from the store, as a new server would build it.
    let read_models_path = dir.join("readmodels.db");
    let started = Instant::now();
    let read_models = projections::rebuild_into(store.clone(), &read_models_path).await?;
    let seconds = started.elapsed().as_secs_f64();
    drop(read_models);
    let rebuild_into = json!({ "events": events, "seconds": seconds, "eventsPerSecond": events as f64 / seconds });
    println!("{rebuild_into}");

    // `projections rebuild --all` over it: every projection rebuilt beside the live tables,
    // then switched in.
    let started = Instant::now();
    let report =
        rebuild::rebuild(store.clone(), &read_models_path, ALL.to_vec(), |_| {}, std::future::pending()).await?;
    let seconds = started.elapsed().as_secs_f64();
    let rebuild = json!({ "events": report.events, "seconds": seconds,
                          "eventsPerSecond": report.events as f64 / seconds });
    println!("{rebuild}");

    let results = json!({
        "benchmark": "replay (src/replay.rs into a sink), a new read-model database (rebuild_into) and `projections rebuild --all` (rebuild::rebuild) over one store",
        "machine": format!("{} cores, shared with other builds while it ran", std::thread::available_parallelism().map_or(0, |n| n.get())),
        "store": built,
        "replay": passes,
        "rebuildInto": rebuild_into,
        "rebuild": rebuild,
    });
    std::fs::write(&out, serde_json::to_string_pretty(&results)? + "\n")?;
    println!("wrote {out}");
    Ok(())
}
