//! The relay: publishes every stored event, in the store's global order, to
//! `integration.events.v1`. The event store is the outbox: the relay reads it from a durable
//! checkpoint (an [`EmbeddedFeed`] named `kafka-relay`) and moves the checkpoint only after the
//! broker acknowledged every event up to it. With the broker down the API keeps appending;
//! the relay waits and retries, and publishes everything it missed, in order, when the broker
//! is back.
//!
//! At least once: a batch that failed part-way is sent again whole, so an event can be on the
//! topic twice (same CloudEvent `id`); consumers drop duplicates by id ([`crate::KafkaFeed`]).
//! The producer is idempotent, so its own retries neither duplicate nor reorder a partition,
//! and the events of a stream share a partition (key = stream id): per-stream order is kept.

use std::time::Duration;

use domain::EventEnvelope;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use tokio_util::sync::CancellationToken;

use crate::kafka::KafkaSettings;
use crate::messages::{CloudEvent, EVENTS_TOPIC, event_headers};
use crate::{EventFeed, FeedError};

/// The relay's consumer name (its checkpoint).
pub const RELAY_CONSUMER: &str = "kafka-relay";
/// The counter of events published and acknowledged, in the `metrics` facade.
pub const RELAY_PUBLISHED: &str = "relay_events_published_total";
/// Events published (and acknowledged) per checkpoint.
const BATCH: usize = 500;
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Publishes the events of `feed` until `shutdown`. Returns an error only for a feed error that
/// retrying cannot fix.
pub async fn run_relay<F: EventFeed>(
    mut feed: F,
    settings: &KafkaSettings,
    shutdown: CancellationToken,
) -> Result<(), FeedError> {
    let mut producer = settings.producer().map_err(|e| FeedError::Source(e.to_string()))?;
    let mut backoff = FIRST_BACKOFF;
    loop {
        let batch = tokio::select! {
            biased;
            () = shutdown.cancelled() => return Ok(()),
            batch = feed.next_batch(BATCH) => batch,
        };
        let batch = match batch {
            Ok(batch) => batch,
            Err(error) if error.is_retryable() => {
                tracing::warn!(%error, "the relay cannot read the store; retrying");
                if !pause(backoff, &shutdown).await {
                    return Ok(());
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
            Err(error) => return Err(error),
        };
        let Some(last) = batch.last().map(|e| e.global_position) else { continue };
        // Until the broker has acknowledged all of it: nothing later is sent before.
        loop {
            match publish(&producer, &batch).await {
                Ok(()) => break,
                Err(error) => {
                    tracing::warn!(%error, events = batch.len(), retry_in = ?backoff, "publishing to Kafka failed; the batch will be sent again");
                    if !pause(backoff, &shutdown).await {
                        return Ok(());
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    // A fresh producer: an idempotent producer can be left fenced by a failure.
                    producer = settings.producer().map_err(|e| FeedError::Source(e.to_string()))?;
                }
            }
        }
        backoff = FIRST_BACKOFF;
        metrics::counter!(RELAY_PUBLISHED).increment(batch.len() as u64);
        loop {
            match feed.commit(last).await {
                Ok(()) => break,
                Err(error) if error.is_retryable() => {
                    tracing::warn!(%error, "storing the relay checkpoint failed; retrying");
                    if !pause(backoff, &shutdown).await {
                        return Ok(());
                    }
                }
                Err(error) => return Err(error),
            }
        }
        tracing::debug!(position = last, events = batch.len(), "relayed");
    }
}

/// Sends every event of `batch` in order and waits for all the broker's acknowledgements.
async fn publish(producer: &FutureProducer, batch: &[EventEnvelope]) -> Result<(), String> {
    let mut deliveries = Vec::with_capacity(batch.len());
    for event in batch {
        let value = serde_json::to_vec(&CloudEvent::from_envelope(event)).map_err(|e| e.to_string())?;
        let mut headers = OwnedHeaders::new_with_capacity(6);
        for (key, value) in event_headers(event) {
            headers = headers.insert(Header { key, value: Some(value.as_bytes()) });
        }
        let mut record =
            FutureRecord::to(EVENTS_TOPIC).key(event.stream_id.as_bytes()).payload(&value).headers(headers);
        // Enqueued in order here; `send_result` fails only when the local queue is full.
        let delivery = loop {
            match producer.send_result(record) {
                Ok(delivery) => break delivery,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    record = returned;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err((error, _)) => return Err(error.to_string()),
            }
        };
        deliveries.push(delivery);
    }
    let mut first_error = None;
    for delivery in deliveries {
        let outcome = match delivery.await {
            Ok(Ok(_)) => continue,
            Ok(Err((error, _))) => error.to_string(),
            Err(_) => "the producer dropped the message".to_string(),
        };
        first_error.get_or_insert(outcome);
    }
    first_error.map_or(Ok(()), Err)
}

async fn pause(delay: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        () = shutdown.cancelled() => false,
        () = tokio::time::sleep(delay) => true,
    }
}
