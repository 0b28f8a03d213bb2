use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::{EventEnvelope, NewEvent};
use futures::{Stream, StreamExt};
use thiserror::Error;
use tokio::sync::watch;

/// What the appender believes about the stream it appends to (optimistic concurrency).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// The stream must have no events yet.
    NoStream,
    /// The stream's last event must have exactly this version (versions start at 1).
    Exact(u64),
    /// Append whatever the stream holds.
    Any,
}

impl ExpectedVersion {
    /// What an append expects of a stream it last saw at `version` (0: no events yet).
    pub fn after(version: u64) -> Self {
        if version == 0 { Self::NoStream } else { Self::Exact(version) }
    }
}

/// One stream's part of an [`EventStore::append_streams`].
#[derive(Debug, Clone)]
pub struct StreamAppend {
    pub stream_id: String,
    pub expected: ExpectedVersion,
    pub events: Vec<NewEvent>,
}

#[derive(Debug, Error)]
pub enum StoreError {
    /// The stream is not at the expected version; `actual` is its last version (0 when empty).
    #[error("stream {stream_id} is at version {actual}, expected {expected:?}")]
    WrongExpectedVersion { stream_id: String, expected: ExpectedVersion, actual: u64 },
    /// The store cannot be reached or has shut down.
    #[error("event store unavailable: {0}")]
    Unavailable(String),
    /// The backend failed (I/O, corruption, constraint).
    #[error("event store backend: {0}")]
    Backend(String),
}

/// The event store port. Every adapter runs the contract suite in `store::contract`.
///
/// Guarantees every adapter gives:
/// - `append` is atomic: all of the batch or none; it checks `expected` against the stream's
///   last version; acknowledged appends are durable (they survive a `kill -9`).
/// - Global positions start at 1 and readers of `read_all` never see a hole or a reordering:
///   a position becomes visible only after every lower position is.
/// - Each event carries the hash of its predecessor in the stream ([`crate::hash_chain`]).
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Appends `events` to `stream_id` at once, after checking `expected`; returns them as stored.
    async fn append(
        &self,
        stream_id: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Vec<EventEnvelope>, StoreError>;

    /// Appends to several streams in one atomic step: every append or none, each checked
    /// against its own expected version, the events at consecutive positions in the order
    /// given. Returns each append's events as stored, in that order. What one decision changes
    /// in two aggregates (a connection and the credential it registers) is then recorded whole,
    /// in one commit, with no step between the two for a crash to fall into.
    async fn append_streams(&self, appends: Vec<StreamAppend>) -> Result<Vec<Vec<EventEnvelope>>, StoreError>;

    /// Every event of a stream in version order; empty for a stream that does not exist.
    async fn read_stream(&self, stream_id: &str) -> Result<Vec<EventEnvelope>, StoreError>;

    /// The events of a stream after version `after`, in version order: what a reader holding
    /// the state up to `after` has not seen. The default reads the whole stream; adapters
    /// answer from their index, so the cost is that of the new events only.
    async fn read_stream_after(&self, stream_id: &str, after: u64) -> Result<Vec<EventEnvelope>, StoreError> {
        let mut events = self.read_stream(stream_id).await?;
        events.retain(|e| e.stream_version > after);
        Ok(events)
    }

    /// The first event of a stream, the one that created it; `None` for a stream that does not
    /// exist. Events never change, so what a stream was created with can be read alone, at the
    /// same cost however long the stream grew. The default reads the whole stream; adapters
    /// read the one event.
    async fn read_stream_first(&self, stream_id: &str) -> Result<Option<EventEnvelope>, StoreError> {
        Ok(self.read_stream(stream_id).await?.into_iter().next())
    }

    /// Up to `max` events with a global position greater than `after`, in global order: what the
    /// followers of the store read. An adapter may answer the latest commits from the memory of
    /// the process that made them; [`EventStore::read_filtered`] reads what storage holds.
    async fn read_all(&self, after: u64, max: usize) -> Result<Vec<EventEnvelope>, StoreError>;

    /// Up to `max` events matching `filter` with a global position greater than `after`, in
    /// global order: what auditors page through (`replay`, `/audit/...`). An empty page means
    /// nothing matches after `after`. The default walks [`EventStore::read_all`]; adapters that
    /// can filter where the data lives override it.
    async fn read_filtered(
        &self,
        filter: &EventFilter,
        after: u64,
        max: usize,
    ) -> Result<Vec<EventEnvelope>, StoreError> {
        const SCAN_PAGE: usize = 1000;
        let mut found = Vec::new();
        let mut after = after.max(filter.after_position.unwrap_or(0));
        while found.len() < max {
            let page = self.read_all(after, SCAN_PAGE).await?;
            let Some(last) = page.last() else { break };
            after = last.global_position;
            let past_the_end = filter.up_to_position.is_some_and(|end| after >= end);
            found.extend(page.into_iter().filter(|e| filter.matches(e)).take(max - found.len()));
            if past_the_end {
                break;
            }
        }
        Ok(found)
    }

    /// The global position of the last committed event (0 for an empty store).
    async fn head_position(&self) -> Result<u64, StoreError>;

    /// Follows the head position as appends commit, so readers wait instead of polling.
    fn watch_head(&self) -> watch::Receiver<u64>;
}

/// Which events a filtered read returns ([`EventStore::read_filtered`]); `None` and empty
/// fields match every event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    /// Only this stream (`{tenantId}/{resourceId}`).
    pub stream_id: Option<String>,
    /// Only this tenant's events.
    pub tenant_id: Option<String>,
    /// Only events of one of these types.
    pub event_types: Vec<String>,
    /// Only events with a global position greater than this.
    pub after_position: Option<u64>,
    /// Only events with a global position up to this one, inclusive.
    pub up_to_position: Option<u64>,
    /// Only events that occurred at or after this instant.
    pub occurred_from: Option<DateTime<Utc>>,
    /// Only events that occurred before this instant.
    pub occurred_before: Option<DateTime<Utc>>,
}

impl EventFilter {
    /// Whether `event` passes every condition of the filter.
    pub fn matches(&self, event: &EventEnvelope) -> bool {
        self.stream_id.as_ref().is_none_or(|s| *s == event.stream_id)
            && self.tenant_id.as_ref().is_none_or(|t| *t == event.tenant_id)
            && (self.event_types.is_empty() || self.event_types.contains(&event.event_type))
            && self.after_position.is_none_or(|p| event.global_position > p)
            && self.up_to_position.is_none_or(|p| event.global_position <= p)
            && self.occurred_from.is_none_or(|t| event.occurred_at >= t)
            && self.occurred_before.is_none_or(|t| event.occurred_at < t)
    }
}

/// The positions after `after` up to `end`, as ranges of `size` positions (`(after, up_to)`, the
/// last one shorter). Global positions have no holes, so a walk of the global order can be cut
/// into pages known in advance, read several at once and handed on in order.
pub fn position_ranges(after: u64, end: u64, size: usize) -> impl Iterator<Item = (u64, u64)> {
    (after..end).step_by(size.max(1)).map(move |from| (from, end.min(from + size as u64)))
}

/// A subscription to the global order: it catches up from `after`, then follows live appends.
///
/// The stream ends only with an error (the caller decides whether to resubscribe from the last
/// position it handled).
pub fn subscribe(store: Arc<dyn EventStore>, after: u64) -> impl Stream<Item = Result<EventEnvelope, StoreError>> {
    const PAGE: usize = 512;
    futures::stream::unfold(
        (store, after, None::<watch::Receiver<u64>>, false),
        |(store, mut after, head, failed)| async move {
            if failed {
                return None;
            }
            let mut head = head.unwrap_or_else(|| store.watch_head());
            loop {
                // Mark the current head seen before reading, so an append that commits after the
                // read wakes the wait below instead of being missed.
                head.borrow_and_update();
                match store.read_all(after, PAGE).await {
                    Ok(batch) if batch.is_empty() => {
                        if head.changed().await.is_err() {
                            let closed = StoreError::Unavailable("event store closed".into());
                            return Some((vec![Err(closed)], (store, after, Some(head), true)));
                        }
                    }
                    Ok(batch) => {
                        after = batch.last().map_or(after, |e| e.global_position);
                        return Some((batch.into_iter().map(Ok).collect(), (store, after, Some(head), false)));
                    }
                    Err(e) => return Some((vec![Err(e)], (store, after, Some(head), true))),
                }
            }
        },
    )
    .flat_map(futures::stream::iter)
}
