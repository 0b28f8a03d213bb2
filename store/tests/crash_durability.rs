//! An acknowledged append survives `kill -9` of the process that made it.
//!
//! The test re-runs its own binary as a child that appends in a loop and prints every
//! acknowledgement; the parent kills it mid-stream and checks each acknowledged event is stored.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use store::contract::sample_events;
use store::{EventStore, ExpectedVersion, SqliteEventStore};

/// Tells the child which database to append to; without it the child test does nothing.
const DB_PATH_VAR: &str = "STORE_CRASH_TEST_DB";
const ACKS_BEFORE_KILL: usize = 300;
const CHILD_APPENDERS: usize = 8;

#[test]
fn acknowledged_appends_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("events.db");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "child_appender", "--nocapture", "--test-threads=1"])
        .env(DB_PATH_VAR, &db)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();

    let mut acknowledged = HashMap::new();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    while acknowledged.len() < ACKS_BEFORE_KILL {
        let line = lines.next().expect("the child stopped before acknowledging enough appends").unwrap();
        // libtest prints its own lines too; acknowledgements are "ack POSITION EVENT_ID".
        if let Some(ack) = line.strip_prefix("ack ") {
            let (position, event_id) = ack.split_once(' ').unwrap();
            acknowledged.insert(event_id.to_owned(), position.parse::<u64>().unwrap());
        }
    }
    child.kill().unwrap(); // SIGKILL on unix: no destructor, no flush, no clean close
    child.wait().unwrap();

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let stored = runtime.block_on(async {
        let store = SqliteEventStore::open(&db).unwrap();
        store.read_all(0, usize::MAX).await.unwrap()
    });
    let stored_positions: HashMap<String, u64> =
        stored.iter().map(|e| (e.event_id.to_string(), e.global_position)).collect();
    for (event_id, position) in &acknowledged {
        assert_eq!(stored_positions.get(event_id), Some(position), "acknowledged event {event_id} lost");
    }
    let positions: Vec<u64> = stored.iter().map(|e| e.global_position).collect();
    assert_eq!(positions, (1..=stored.len() as u64).collect::<Vec<_>>(), "the recovered store has a hole");
}

/// The child of `acknowledged_appends_survive_kill_9`: appends from several tasks until killed.
#[test]
#[ignore = "run by acknowledged_appends_survive_kill_9 as a child process"]
fn child_appender() {
    let Some(db) = std::env::var_os(DB_PATH_VAR) else { return };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().unwrap();
    runtime.block_on(async {
        let store = Arc::new(SqliteEventStore::open(db.as_ref()).unwrap());
        // A bound on the loop, so that a child whose parent died does not run forever.
        let deadline = Instant::now() + Duration::from_secs(60);
        let appenders: Vec<_> = (0..CHILD_APPENDERS)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    while Instant::now() < deadline {
                        let stored =
                            store.append(&format!("crash-{i}"), ExpectedVersion::Any, sample_events(1)).await.unwrap();
                        let mut out = std::io::stdout().lock();
                        writeln!(out, "ack {} {}", stored[0].global_position, stored[0].event_id).unwrap();
                        out.flush().unwrap();
                    }
                })
            })
            .collect();
        for appender in appenders {
            appender.await.unwrap();
        }
    });
}
