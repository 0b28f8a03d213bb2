//! The in-process [`EventFeed`]: reads the event store's global order directly, for the embedded
//! mode where there is no Kafka between the store and the workers.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use domain::EventEnvelope;
use store::{EventStore, StoreError};
use tokio::sync::watch;

use crate::{EventFeed, FeedError, SqliteCheckpoints};

/// A named consumer of the event store's global order, with its checkpoint in
/// [`SqliteCheckpoints`].
///
/// It pages with `read_all` and waits on `watch_head` between appends rather than using
/// `store::subscribe`: the consumer pulls batches of the size it asks for, the cursor is plain
/// state (so `next_batch` is cancel safe), and the feed stays `Sync` as the port requires.
pub struct EmbeddedFeed {
    consumer: String,
    store: Arc<dyn EventStore>,
    checkpoints: SqliteCheckpoints,
    head: watch::Receiver<u64>,
    /// The checkpoint as last stored.
    committed: u64,
    /// The last position `next_batch` handed out; the next read starts after it.
    delivered: u64,
}

impl fmt::Debug for EmbeddedFeed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmbeddedFeed")
            .field("consumer", &self.consumer)
            .field("committed", &self.committed)
            .field("delivered", &self.delivered)
            .finish_non_exhaustive()
    }
}

impl EmbeddedFeed {
    /// Opens `consumer`'s feed over `store`, resuming after its checkpoint in `checkpoints`.
    ///
    /// Refuses a checkpoint past the store's head ([`FeedError::CheckpointAhead`]): it belongs to
    /// another store, and following it would skip events.
    pub async fn open(
        store: Arc<dyn EventStore>,
        checkpoints: SqliteCheckpoints,
        consumer: impl Into<String>,
    ) -> Result<Self, FeedError> {
        let consumer = consumer.into();
        let committed = checkpoints.load(&consumer).await?;
        let head = store.head_position().await.map_err(source_error)?;
        if committed > head {
            return Err(FeedError::CheckpointAhead { consumer, checkpoint: committed, head });
        }
        let head = store.watch_head();
        Ok(Self { consumer, store, checkpoints, head, committed, delivered: committed })
    }

    /// The position this consumer has committed everything up to.
    pub fn committed(&self) -> u64 {
        self.committed
    }

    /// The position of the last event this feed delivered (the checkpoint before the first
    /// batch).
    pub fn delivered(&self) -> u64 {
        self.delivered
    }
}

#[async_trait]
impl EventFeed for EmbeddedFeed {
    fn consumer(&self) -> &str {
        &self.consumer
    }

    async fn next_batch(&mut self, max: usize) -> Result<Vec<EventEnvelope>, FeedError> {
        // `read_all` with 0 reads nothing, which would wait here with events available.
        let max = max.max(1);
        loop {
            // Mark the head seen before reading: an append that commits after the read then
            // wakes the wait below instead of being missed.
            self.head.borrow_and_update();
            let batch = self.store.read_all(self.delivered, max).await.map_err(source_error)?;
            if let Some(last) = batch.last() {
                // Only here, after the read completed and with no await left, does the cursor
                // move: a caller that drops this future mid-read loses nothing.
                self.delivered = last.global_position;
                return Ok(batch);
            }
            // Fails only once the store has shut down; nothing more will come.
            self.head.changed().await.map_err(|_| FeedError::Closed)?;
        }
    }

    async fn commit(&mut self, position: u64) -> Result<(), FeedError> {
        if position > self.delivered {
            return Err(FeedError::NotDelivered { position, delivered: self.delivered });
        }
        if position <= self.committed {
            return Ok(());
        }
        self.checkpoints.save(&self.consumer, position).await?;
        self.committed = position;
        Ok(())
    }
}

fn source_error(error: StoreError) -> FeedError {
    FeedError::Source(error.to_string())
}
