//! The `EventFeed` port: how a worker reads the event stream, wherever the stream comes from.

use async_trait::async_trait;
use domain::EventEnvelope;
use thiserror::Error;

/// A named consumer's view of the event stream, resumed from its durable checkpoint.
///
/// Workers are written against this trait only, so they run unchanged in both modes: the
/// [`EmbeddedFeed`](crate::EmbeddedFeed) reads the event store in-process (the default, no
/// services); a Kafka adapter reads `integration.events.v1` as a member of a consumer group.
///
/// # Delivery guarantee: at least once
///
/// - A new feed starts right after its consumer's committed checkpoint (at the start of the
///   store for a consumer that never committed) and delivers every later event.
/// - Nothing is committed implicitly. [`commit`](EventFeed::commit) durably records that the
///   delivered event at `position`, and every event delivered before it, is handled. Events
///   delivered but not committed when the consumer stops or crashes are delivered again to the
///   next feed of the same consumer. (A commit survives the process; the embedded feed does not
///   sync each one to disk, so after a power cut an earlier checkpoint may come back and its
///   later events come again: the same at-least-once delivery.)
/// - An event can also come again without a crash (a Kafka rebalance hands a partition to
///   another member, which starts from the committed offset). Handlers must therefore be
///   idempotent: deterministic ids, so that doing an event twice is harmless.
///
/// # Order
///
/// The events of one stream always arrive in stream-version order. The embedded feed keeps the
/// whole global order; a Kafka feed keeps the order of each partition only (the partition key is
/// the stream id), so nothing may depend on the order of events of different streams.
///
/// # Consumers
///
/// The consumer name identifies the checkpoint (a Kafka consumer group). Consumers with
/// different names read independently; two feeds open under one name at once are not
/// coordinated by the embedded feed (each reads everything), so give each worker its own name.
#[async_trait]
pub trait EventFeed: Send + Sync {
    /// The consumer this feed reads for; its checkpoint is kept under this name.
    fn consumer(&self) -> &str;

    /// Waits until at least one undelivered event exists (without polling), then returns between
    /// 1 and `max` of them (`max` 0 counts as 1) and moves the read cursor past them.
    ///
    /// The read cursor is not the checkpoint: calling `next_batch` again without a commit returns
    /// the events after this batch, and only a new feed goes back to the checkpoint.
    ///
    /// Cancel safe: dropping the future before it completes loses no event, so callers may race
    /// it against a shutdown signal.
    async fn next_batch(&mut self, max: usize) -> Result<Vec<EventEnvelope>, FeedError>;

    /// Durably records that the delivered event at `position` and every event delivered before
    /// it are handled. Returns once the checkpoint is stored.
    ///
    /// A position at or below the stored checkpoint changes nothing (checkpoints never move
    /// backwards, so repeating a commit is harmless); a position beyond what was delivered is
    /// refused with [`FeedError::NotDelivered`], as committing it would skip events.
    async fn commit(&mut self, position: u64) -> Result<(), FeedError>;
}

#[async_trait]
impl<F: EventFeed + ?Sized> EventFeed for Box<F> {
    fn consumer(&self) -> &str {
        (**self).consumer()
    }

    async fn next_batch(&mut self, max: usize) -> Result<Vec<EventEnvelope>, FeedError> {
        (**self).next_batch(max).await
    }

    async fn commit(&mut self, position: u64) -> Result<(), FeedError> {
        (**self).commit(position).await
    }
}

/// Why a feed could not deliver or commit.
#[derive(Debug, Error)]
pub enum FeedError {
    /// The event source (the event store, the broker) failed or could not be reached.
    #[error("event source: {0}")]
    Source(String),
    /// The checkpoint could not be read or stored.
    #[error("consumer checkpoint: {0}")]
    Checkpoint(String),
    /// The event source has shut down for good.
    #[error("the event feed is closed")]
    Closed,
    /// `commit` named a position the feed has not delivered.
    #[error("cannot commit position {position}: the feed has delivered up to {delivered}")]
    NotDelivered { position: u64, delivered: u64 },
    /// The stored checkpoint is past the last event of the store: the checkpoint file belongs to
    /// another store (a data dir assembled from different files). Reading on would silently skip
    /// every event up to the checkpoint.
    #[error("consumer {consumer} has a checkpoint at {checkpoint}, past the store's head {head}")]
    CheckpointAhead { consumer: String, checkpoint: u64, head: u64 },
}

impl FeedError {
    /// Whether trying again later may succeed (a busy database, a broker that is restarting).
    /// The others fail the same way every time: the caller stops and reports them.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Source(_) | Self::Checkpoint(_) => true,
            Self::Closed | Self::NotDelivered { .. } | Self::CheckpointAhead { .. } => false,
        }
    }
}
