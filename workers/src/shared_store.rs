//! [`SharedStore`]: the event store as seen by one of several processes that append to the same
//! SQLite file (the server, `worker` processes, the `runs start` CLI).
//!
//! The store's `watch_head` follows the appends of its own process only. This wrapper also
//! polls the head position, so the projections and feeds of one process wake for appends made
//! by another (a worker recording a run's progress, say) within one poll interval.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use domain::{EventEnvelope, NewEvent};
use store::{EventFilter, EventStore, ExpectedVersion, StoreError, StreamAppend};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// An [`EventStore`] whose head watch also sees other processes' appends.
pub struct SharedStore {
    inner: Arc<dyn EventStore>,
    head: watch::Receiver<u64>,
    poller: JoinHandle<()>,
}

impl SharedStore {
    /// Wraps `inner`, polling its head every `interval`. Must be called inside a tokio runtime.
    pub fn new(inner: Arc<dyn EventStore>, interval: Duration) -> Self {
        let mut local = inner.watch_head();
        let (sender, head) = watch::channel(*local.borrow_and_update());
        let polled = Arc::clone(&inner);
        let poller = tokio::spawn(async move {
            let advance = |position: u64| {
                sender.send_if_modified(|current| {
                    let moved = position > *current;
                    *current = (*current).max(position);
                    moved
                });
            };
            loop {
                tokio::select! {
                    changed = local.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        let position = *local.borrow_and_update();
                        advance(position);
                    }
                    () = tokio::time::sleep(interval) => {
                        if let Ok(position) = polled.head_position().await {
                            advance(position);
                        }
                    }
                }
                if sender.is_closed() {
                    return;
                }
            }
        });
        Self { inner, head, poller }
    }
}

impl Drop for SharedStore {
    fn drop(&mut self) {
        self.poller.abort();
    }
}

#[async_trait]
impl EventStore for SharedStore {
    async fn append(
        &self,
        stream_id: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Vec<EventEnvelope>, StoreError> {
        self.inner.append(stream_id, expected, events).await
    }

    async fn append_streams(&self, appends: Vec<StreamAppend>) -> Result<Vec<Vec<EventEnvelope>>, StoreError> {
        self.inner.append_streams(appends).await
    }

    async fn read_stream(&self, stream_id: &str) -> Result<Vec<EventEnvelope>, StoreError> {
        self.inner.read_stream(stream_id).await
    }

    async fn read_stream_after(&self, stream_id: &str, after: u64) -> Result<Vec<EventEnvelope>, StoreError> {
        self.inner.read_stream_after(stream_id, after).await
    }

    async fn read_stream_first(&self, stream_id: &str) -> Result<Option<EventEnvelope>, StoreError> {
        self.inner.read_stream_first(stream_id).await
    }

    async fn read_all(&self, after: u64, max: usize) -> Result<Vec<EventEnvelope>, StoreError> {
        self.inner.read_all(after, max).await
    }

    async fn read_filtered(
        &self,
        filter: &EventFilter,
        after: u64,
        max: usize,
    ) -> Result<Vec<EventEnvelope>, StoreError> {
        self.inner.read_filtered(filter, after, max).await
    }

    async fn head_position(&self) -> Result<u64, StoreError> {
        self.inner.head_position().await
    }

    fn watch_head(&self) -> watch::Receiver<u64> {
        self.head.clone()
    }
}
