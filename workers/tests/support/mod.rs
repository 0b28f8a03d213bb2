//! A real SQLite event store and checkpoint file in a temporary data dir, and events to append.
#![allow(dead_code)] // each test binary uses its own part of the support module

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use domain::{Actor, EventEnvelope, NewEvent};
use serde_json::json;
use store::{EventStore, ExpectedVersion, SqliteEventStore};
use tempfile::TempDir;
use uuid::Uuid;
use workers::{EmbeddedFeed, SqliteCheckpoints};

/// Long enough for a loaded CI machine, short enough that a hang fails the test.
pub const WAIT: Duration = Duration::from_secs(10);

/// A data dir with the event store and the workers' checkpoint file.
pub struct DataDir {
    pub dir: TempDir,
    pub store: Arc<dyn EventStore>,
    pub checkpoints: SqliteCheckpoints,
}

impl DataDir {
    pub async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn EventStore> = Arc::new(SqliteEventStore::open(&dir.path().join("events.db")).unwrap());
        let checkpoints = SqliteCheckpoints::open(dir.path().join("workers.db")).await.unwrap();
        Self { dir, store, checkpoints }
    }

    /// The checkpoint file opened anew, as a restarted process would.
    pub async fn reopen_checkpoints(&self) -> SqliteCheckpoints {
        SqliteCheckpoints::open(self.dir.path().join("workers.db")).await.unwrap()
    }

    pub async fn feed(&self, consumer: &str) -> EmbeddedFeed {
        within(EmbeddedFeed::open(self.store.clone(), self.reopen_checkpoints().await, consumer)).await.unwrap()
    }

    /// Appends `count` events to `stream_id` through the port; returns them as stored.
    pub async fn append(&self, stream_id: &str, count: usize) -> Vec<EventEnvelope> {
        let events = (0..count).map(|n| new_event(stream_id, n)).collect();
        within(self.store.append(stream_id, ExpectedVersion::Any, events)).await.unwrap()
    }

    pub async fn checkpoint(&self, consumer: &str) -> u64 {
        within(self.checkpoints.load(consumer)).await.unwrap()
    }

    /// Waits until `consumer`'s stored checkpoint reaches `position`.
    pub async fn wait_for_checkpoint(&self, consumer: &str, position: u64) {
        within(async {
            while self.checkpoints.load(consumer).await.unwrap() < position {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
    }
}

pub fn new_event(stream_id: &str, n: usize) -> NewEvent {
    NewEvent {
        event_id: Uuid::now_v7(),
        event_type: "TestHappened".into(),
        schema_version: 1,
        tenant_id: "tenant-a".into(),
        occurred_at: Utc::now(),
        trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
        correlation_id: format!("corr-{stream_id}"),
        causation_id: None,
        actor: Actor::system(),
        data: json!({ "stream": stream_id, "n": n }),
    }
}

/// The positions of `events`, to compare deliveries by.
pub fn positions(events: &[EventEnvelope]) -> Vec<u64> {
    events.iter().map(|e| e.global_position).collect()
}

/// Awaits `future`, failing the test if it takes longer than [`WAIT`].
pub async fn within<T>(future: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, future).await.expect("timed out")
}
