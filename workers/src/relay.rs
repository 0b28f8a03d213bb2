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

use std::collections::VecDeque;
use std::pin::Pin;
use std::time::Duration;

use domain::EventEnvelope;
use domain::backoff::Backoff;
use futures::FutureExt;
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
/// Events read from the store and sent at a time.
const BATCH: usize = 500;
/// Events sent and not acknowledged yet, at most: the relay reads no further until the broker
/// catches up (backpressure), and a failure resends no more than this.
const MAX_UNACKNOWLEDGED: usize = 5_000;
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Events sent to the broker, in the store's order, whose acknowledgements are awaited.
struct Sent {
    events: Vec<EventEnvelope>,
    /// Resolves once the broker has acknowledged (or refused) every event of `events`.
    acknowledged: Pin<Box<dyn Future<Output = Result<(), String>> + Send>>,
}

impl Sent {
    fn last_position(&self) -> u64 {
        self.events.last().map_or(0, |e| e.global_position)
    }
}

/// Publishes the events of `feed` until `shutdown`. Returns an error only for a feed error that
/// retrying cannot fix.
///
/// Sending is pipelined: the relay sends what the store has as soon as it is there, while the
/// broker's acknowledgements of earlier batches are outstanding (waiting for them before
/// reading on made every event wait for the acknowledgement round trip of the batch before it).
/// The checkpoint moves past a batch only once it and every batch before it are acknowledged.
/// Should a batch fail, it and every batch sent after it are sent again, in order, through a
/// fresh producer (at least once, as with one large batch).
pub async fn run_relay<F: EventFeed>(
    mut feed: F,
    settings: &KafkaSettings,
    shutdown: CancellationToken,
) -> Result<(), FeedError> {
    let mut producer = settings.producer().map_err(|e| FeedError::Source(e.to_string()))?;
    let mut backoff = Backoff::new(FIRST_BACKOFF, MAX_BACKOFF);
    let mut unacknowledged: VecDeque<Sent> = VecDeque::new();
    loop {
        let in_flight: usize = unacknowledged.iter().map(|sent| sent.events.len()).sum();
        let room = MAX_UNACKNOWLEDGED.saturating_sub(in_flight).min(BATCH);
        tokio::select! {
            biased;
            () = shutdown.cancelled() => return Ok(()),
            acknowledged = first_acknowledged(&mut unacknowledged) => {
                let (mut last, mut published, failed) = take_acknowledged(acknowledged, &mut unacknowledged);
                if let Some((error, mut events)) = failed {
                    // That batch and every one sent after it, again and in order.
                    events.extend(unacknowledged.drain(..).flat_map(|sent| sent.events));
                    tracing::warn!(%error, events = events.len(), retry_in = ?backoff.peek(), "publishing to Kafka failed; the events will be sent again");
                    let Some(fresh) = resend(settings, &events, &mut backoff, &shutdown).await? else { return Ok(()) };
                    producer = fresh;
                    last = events.last().map_or(last, |e| e.global_position);
                    published += events.len();
                }
                backoff.reset();
                metrics::counter!(RELAY_PUBLISHED).increment(published as u64);
                if !commit(&mut feed, last, &shutdown).await? {
                    return Ok(());
                }
                tracing::debug!(position = last, events = published, "relayed");
            }
            batch = feed.next_batch(room), if room > 0 => match batch {
                Ok(events) if events.is_empty() => {}
                Ok(events) => {
                    let acknowledged = send(&producer, &events).await;
                    unacknowledged.push_back(Sent { events, acknowledged });
                }
                Err(error) if error.is_retryable() => {
                    tracing::warn!(%error, "the relay cannot read the store; retrying");
                    if !pause(backoff.next_delay(), &shutdown).await {
                        return Ok(());
                    }
                }
                Err(error) => return Err(error),
            },
        }
    }
}

/// Takes the first batch, whose acknowledgement came as `first`, and every batch after it whose
/// acknowledgements are in too, so that one checkpoint commit covers them: the last position
/// acknowledged, the number of events, and the first batch refused, if any (whatever follows it
/// stays in `unacknowledged`).
fn take_acknowledged(
    first: Result<(), String>,
    unacknowledged: &mut VecDeque<Sent>,
) -> (u64, usize, Option<(String, Vec<EventEnvelope>)>) {
    let (mut last, mut published) = (0, 0);
    let mut next = first;
    while let Some(sent) = unacknowledged.pop_front() {
        if let Err(error) = next {
            return (last, published, Some((error, sent.events)));
        }
        (last, published) = (sent.last_position(), published + sent.events.len());
        match unacknowledged.front_mut().and_then(|sent| sent.acknowledged.as_mut().now_or_never()) {
            Some(acknowledged) => next = acknowledged,
            None => break,
        }
    }
    (last, published, None)
}

/// Waits for the first batch's acknowledgements; never resolves when nothing is in flight.
async fn first_acknowledged(unacknowledged: &mut VecDeque<Sent>) -> Result<(), String> {
    match unacknowledged.front_mut() {
        Some(sent) => sent.acknowledged.as_mut().await,
        None => std::future::pending().await,
    }
}

/// Sends `events` through fresh producers until the broker has acknowledged all of them; the
/// producer that did, or `None` on shutdown.
async fn resend(
    settings: &KafkaSettings,
    events: &[EventEnvelope],
    backoff: &mut Backoff,
    shutdown: &CancellationToken,
) -> Result<Option<FutureProducer>, FeedError> {
    loop {
        if !pause(backoff.next_delay(), shutdown).await {
            return Ok(None);
        }
        // A fresh producer: an idempotent producer can be left fenced by a failure.
        let producer = settings.producer().map_err(|e| FeedError::Source(e.to_string()))?;
        match send(&producer, events).await.await {
            Ok(()) => return Ok(Some(producer)),
            Err(error) => {
                tracing::warn!(%error, events = events.len(), retry_in = ?backoff.peek(), "publishing to Kafka failed; the events will be sent again");
            }
        }
    }
}

/// Stores the checkpoint, retrying what can be retried; false on shutdown.
async fn commit<F: EventFeed>(feed: &mut F, last: u64, shutdown: &CancellationToken) -> Result<bool, FeedError> {
    let mut backoff = Backoff::new(FIRST_BACKOFF, MAX_BACKOFF);
    loop {
        match feed.commit(last).await {
            Ok(()) => return Ok(true),
            Err(error) if error.is_retryable() => {
                tracing::warn!(%error, "storing the relay checkpoint failed; retrying");
                if !pause(backoff.next_delay(), shutdown).await {
                    return Ok(false);
                }
            }
            Err(error) => return Err(error),
        }
    }
}

/// Enqueues every event of `events` in order; the returned future resolves once the broker has
/// acknowledged all of them, with the first error if any was refused.
async fn send(
    producer: &FutureProducer,
    events: &[EventEnvelope],
) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> {
    let mut deliveries = Vec::with_capacity(events.len());
    for event in events {
        let value = match serde_json::to_vec(&CloudEvent::from_envelope(event)) {
            Ok(value) => value,
            Err(error) => return Box::pin(std::future::ready(Err(error.to_string()))),
        };
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
                Err((error, _)) => return Box::pin(std::future::ready(Err(error.to_string()))),
            }
        };
        deliveries.push(delivery);
    }
    Box::pin(async move {
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
    })
}

async fn pause(delay: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        () = shutdown.cancelled() => false,
        () = tokio::time::sleep(delay) => true,
    }
}
