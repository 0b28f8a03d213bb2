//! Benchmark of the embedded event store: appends per second at several concurrencies (group
//! commit at work) and replay speed. Writes its numbers to a JSON file; not a test.
//!
//! cargo run --release --example bench_store -- [OUT_FILE] [EVENTS_PER_LEVEL]

use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use domain::{Actor, NewEvent};
use serde_json::json;
use store::sqlite::SqliteEventStore;
use store::{EventStore, ExpectedVersion};

fn event(i: usize) -> NewEvent {
    NewEvent {
        event_id: uuid::Uuid::now_v7(),
        event_type: "RunStarted".into(),
        schema_version: 1,
        tenant_id: "bench".into(),
        occurred_at: Utc::now(),
        trace_id: "trace-bench".into(),
        correlation_id: "trace-bench".into(),
        causation_id: None,
        actor: Actor::system(),
        data: json!({ "runId": format!("run-{i}"), "attempt": 1, "startedAt": "2026-01-01T00:00:00Z" }),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let out = args.next().unwrap_or_else(|| "bench-results/store.json".into());
    let per_level: usize = args.next().map(|n| n.parse()).transpose()?.unwrap_or(20_000);
    let dir = tempfile::tempdir()?;
    let store = Arc::new(SqliteEventStore::open(&dir.path().join("events.db"))?);

    let mut levels = Vec::new();
    for writers in [1usize, 16, 128] {
        let before = store.stats();
        let started = Instant::now();
        let tasks: Vec<_> = (0..writers)
            .map(|w| {
                let store = store.clone();
                let n = per_level / writers;
                tokio::spawn(async move {
                    for i in 0..n {
                        let stream = format!("bench/run-{writers}-{w}-{i}");
                        store.append(&stream, ExpectedVersion::NoStream, vec![event(i)]).await?;
                    }
                    anyhow::Ok(())
                })
            })
            .collect();
        for t in tasks {
            t.await??;
        }
        let seconds = started.elapsed().as_secs_f64();
        let after = store.stats();
        let appends = after.appends - before.appends;
        let commits = (after.commits - before.commits).max(1);
        let row = json!({
            "concurrentWriters": writers,
            "appends": appends,
            "seconds": seconds,
            "appendsPerSecond": appends as f64 / seconds,
            "appendsPerCommit": appends as f64 / commits as f64,
        });
        println!("{row}");
        levels.push(row);
    }

    let head = store.head_position().await?;
    let started = Instant::now();
    let (mut after, mut read) = (0, 0u64);
    loop {
        let page = store.read_all(after, 4096).await?;
        let Some(last) = page.last() else { break };
        after = last.global_position;
        read += page.len() as u64;
    }
    let seconds = started.elapsed().as_secs_f64();
    let replay = json!({ "events": read, "seconds": seconds, "eventsPerSecond": read as f64 / seconds });
    println!("{replay}");
    assert_eq!(read, head);

    let report = json!({
        "benchmark": "embedded SQLite event store (synchronous=FULL, WAL, group commit)",
        "machine": format!("{} cores", std::thread::available_parallelism().map_or(0, |n| n.get())),
        "appends": levels,
        "replay": replay,
    });
    if let Some(parent) = std::path::Path::new(&out).parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&out, serde_json::to_string_pretty(&report)? + "\n")?;
    println!("wrote {out}");
    Ok(())
}
