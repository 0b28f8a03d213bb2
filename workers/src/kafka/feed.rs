//! [`KafkaFeed`]: the [`EventFeed`] over `integration.events.v1`, as a member of a consumer group.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use domain::EventEnvelope;
use futures::FutureExt;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use uuid::Uuid;

use super::{KafkaSettings, LoggedConsumer, RebalanceLog, commit_refused_by_rebalance};
use crate::messages::{CloudEvent, EVENTS_TOPIC};
use crate::{EventFeed, FeedError};

/// Event ids remembered for deduplication; older ones are forgotten first.
const REMEMBERED_EVENT_IDS: usize = 100_000;

/// A message taken from the topic and not committed yet.
#[derive(Debug, Clone, Copy)]
struct Taken {
    partition: i32,
    offset: i64,
    /// The global position of the event delivered for it; `None` for a skipped message
    /// (a duplicate, or not an event), committed along with the next delivered one.
    position: Option<u64>,
}

/// A consumer of `integration.events.v1` in the group `{prefix}.{consumer}`.
///
/// - The group shares the topic's partitions among its members; the key is the stream id, so
///   the events of one stream stay in order and go to one member.
/// - Offsets are committed by [`EventFeed::commit`] only (at least once).
/// - The relay publishes at least once, so the same event can be on the topic twice: the feed
///   drops an event whose id it has delivered before (it remembers the last 100,000 ids).
///   After a restart or a rebalance, events past the committed offsets come again; handlers
///   are idempotent for that.
pub struct KafkaFeed {
    consumer_name: String,
    consumer: Arc<LoggedConsumer>,
    taken: VecDeque<Taken>,
    seen: HashSet<Uuid>,
    seen_order: VecDeque<Uuid>,
    duplicates_dropped: u64,
    commits_refused: u64,
}

impl fmt::Debug for KafkaFeed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaFeed")
            .field("consumer", &self.consumer_name)
            .field("uncommitted", &self.taken.len())
            .field("duplicates_dropped", &self.duplicates_dropped)
            .field("commits_refused", &self.commits_refused)
            .finish_non_exhaustive()
    }
}

impl KafkaFeed {
    /// Joins the group of `consumer` and subscribes to the events topic.
    pub fn subscribe(settings: &KafkaSettings, consumer: impl Into<String>) -> Result<Self, FeedError> {
        let consumer_name = consumer.into();
        let group = settings.group(&consumer_name);
        let kafka: LoggedConsumer = settings
            .consumer_config(&group)
            .create_with_context(RebalanceLog { consumer: consumer_name.clone() })
            .map_err(source)?;
        kafka.subscribe(&[EVENTS_TOPIC]).map_err(source)?;
        Ok(Self {
            consumer_name,
            consumer: Arc::new(kafka),
            taken: VecDeque::new(),
            seen: HashSet::new(),
            seen_order: VecDeque::new(),
            duplicates_dropped: 0,
            commits_refused: 0,
        })
    }

    /// Events dropped because their id was delivered before.
    pub fn duplicates_dropped(&self) -> u64 {
        self.duplicates_dropped
    }

    /// Commits a rebalance refused (their events come again to their partitions' owners).
    pub fn commits_refused(&self) -> u64 {
        self.commits_refused
    }

    /// Records the message and returns its event unless it is a duplicate or unreadable.
    fn take(&mut self, message: &BorrowedMessage<'_>) -> Option<EventEnvelope> {
        let mut taken = Taken { partition: message.partition(), offset: message.offset(), position: None };
        let event = match message.payload().map(CloudEvent::parse) {
            Some(Ok(cloud_event)) => match cloud_event.into_envelope() {
                Ok(event) => Some(event),
                Err(error) => {
                    tracing::error!(partition = taken.partition, offset = taken.offset, %error, "skipping an unreadable event");
                    None
                }
            },
            Some(Err(error)) => {
                tracing::error!(partition = taken.partition, offset = taken.offset, %error, "skipping an unreadable event");
                None
            }
            None => None,
        };
        let event = event.filter(|event| {
            let first_time = self.remember(event.event_id);
            if !first_time {
                self.duplicates_dropped += 1;
                tracing::debug!(event_id = %event.event_id, "dropping an event delivered before");
            }
            first_time
        });
        taken.position = event.as_ref().map(|e| e.global_position);
        self.taken.push_back(taken);
        event
    }

    /// Whether `id` is new; remembers it.
    fn remember(&mut self, id: Uuid) -> bool {
        if !self.seen.insert(id) {
            return false;
        }
        self.seen_order.push_back(id);
        if self.seen_order.len() > REMEMBERED_EVENT_IDS
            && let Some(oldest) = self.seen_order.pop_front()
        {
            self.seen.remove(&oldest);
        }
        true
    }
}

#[async_trait]
impl EventFeed for KafkaFeed {
    fn consumer(&self) -> &str {
        &self.consumer_name
    }

    async fn next_batch(&mut self, max: usize) -> Result<Vec<EventEnvelope>, FeedError> {
        let max = max.max(1);
        let consumer = Arc::clone(&self.consumer);
        let mut batch = Vec::new();
        while batch.is_empty() {
            // Cancel safe: a message is taken from librdkafka's queue only when recv completes.
            let message = consumer.recv().await.map_err(source)?;
            batch.extend(self.take(&message));
            // Then whatever else is already fetched, without waiting.
            while batch.len() < max {
                match consumer.recv().now_or_never() {
                    Some(Ok(message)) => batch.extend(self.take(&message)),
                    Some(Err(error)) => return Err(source(error)),
                    None => break,
                }
            }
        }
        Ok(batch)
    }

    async fn commit(&mut self, position: u64) -> Result<(), FeedError> {
        let Some(index) = self.taken.iter().position(|t| t.position == Some(position)) else {
            // Committed before (commits never move back), or never delivered by this feed.
            return Ok(());
        };
        let mut next_offsets = BTreeMap::new();
        for taken in self.taken.iter().take(index + 1) {
            let next = next_offsets.entry(taken.partition).or_insert(taken.offset + 1);
            *next = (*next).max(taken.offset + 1);
        }
        // Partitions revoked since are someone else's now: their events come to the new owner.
        let assigned = self.consumer.assignment().map_err(source)?;
        let mut offsets = TopicPartitionList::new();
        for (partition, next) in next_offsets {
            if assigned.find_partition(EVENTS_TOPIC, partition).is_some() {
                offsets.add_partition_offset(EVENTS_TOPIC, partition, Offset::Offset(next)).map_err(source)?;
            }
        }
        if offsets.count() > 0 {
            let consumer = Arc::clone(&self.consumer);
            let committed = tokio::task::spawn_blocking(move || consumer.commit(&offsets, CommitMode::Sync))
                .await
                .map_err(|e| FeedError::Checkpoint(format!("commit task failed: {e}")))?;
            match committed {
                Ok(()) => {}
                // The group rebalanced under this member: a retry cannot succeed until the feed
                // is read again, and the consumer loop retries a commit before reading. The
                // events stay uncommitted and come again to their partitions' owners after the
                // rebalance (this feed drops the ones it has delivered): at least once.
                Err(error) if commit_refused_by_rebalance(&error) => {
                    self.commits_refused += 1;
                    tracing::warn!(
                        consumer = %self.consumer_name,
                        position,
                        %error,
                        "commit refused by a rebalance; the events will be delivered again"
                    );
                }
                Err(error) => return Err(FeedError::Checkpoint(error.to_string())),
            }
        }
        self.taken.drain(..=index);
        Ok(())
    }
}

fn source(error: rdkafka::error::KafkaError) -> FeedError {
    FeedError::Source(error.to_string())
}
