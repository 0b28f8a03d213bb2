//! The consumer loop: takes batches from an [`EventFeed`], hands each event to an
//! [`EventHandler`], and commits only what the handler has done.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use domain::EventEnvelope;
use domain::backoff::Backoff;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio_util::sync::CancellationToken;

use crate::{EventFeed, FeedError};

/// What a worker does with each event of the stream (the run executor, the webhook
/// dispatcher, ...).
///
/// Delivery is at least once, so `handle` must be idempotent: an event whose effects were done
/// but not yet committed comes again after a crash or a rebalance.
#[async_trait]
pub trait EventHandler: Send + Sync {
    /// Why handling failed; logged by [`run_consumer`] before it retries.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Does whatever `event` calls for, or nothing for an event this handler does not care about.
    ///
    /// An error makes [`run_consumer`] retry the same event after a backoff, forever: a
    /// stream consumer may not move past an event it has not handled. An event that can never
    /// be handled (say, a resource deleted since) is not an error to return: record that outcome
    /// (append a failure event, log it) and return `Ok`, so the skip is explicit and visible.
    async fn handle(&self, event: &EventEnvelope) -> Result<(), Self::Error>;
}

#[async_trait]
impl<H: EventHandler + ?Sized> EventHandler for Arc<H> {
    type Error = H::Error;

    async fn handle(&self, event: &EventEnvelope) -> Result<(), Self::Error> {
        (**self).handle(event).await
    }
}

/// How [`run_consumer_with`] reads and retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsumerOptions {
    /// The most events taken (and committed) at once. Smaller batches commit more often, so less
    /// work is redone after a crash.
    pub batch_size: usize,
    /// The wait before the first retry of a failed handler, read or commit.
    pub first_backoff: Duration,
    /// The longest wait between retries; each failure in a row doubles the wait up to this.
    pub max_backoff: Duration,
    /// How many streams of a batch are handled at once. The events of one stream are always
    /// handled one after the other, in order; with 1, so is the whole batch (global order).
    pub concurrency: usize,
}

impl Default for ConsumerOptions {
    fn default() -> Self {
        Self {
            batch_size: 100,
            first_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(30),
            concurrency: 1,
        }
    }
}

/// [`run_consumer_with`] with the default [`ConsumerOptions`].
pub async fn run_consumer<F, H>(feed: F, handler: H, shutdown: CancellationToken) -> Result<(), FeedError>
where
    F: EventFeed,
    H: EventHandler,
{
    run_consumer_with(feed, handler, ConsumerOptions::default(), shutdown).await
}

/// Feeds every event of `feed` to `handler`, in order, until `shutdown` is cancelled.
///
/// - Each batch is committed once the handler has done all of it, so a crash redoes at most
///   one batch (at least once, never lost).
/// - A handler error is logged and the same event is retried after a backoff (doubling from
///   `first_backoff` up to `max_backoff`); the events after it wait. Before the first wait, the
///   events of the batch already handled are committed, so a long outage does not redo them.
/// - Retryable feed errors (store or checkpoint briefly unavailable) are retried the same way.
/// - On shutdown, the event in hand is finished (a handler is not cut off halfway through its
///   effects), what was handled is committed, and it returns `Ok`. Waits for events and
///   backoffs end at once. A caller that cannot wait for a slow handler drops the future: the
///   uncommitted events come again to the next feed of this consumer.
///
/// - With [`ConsumerOptions::concurrency`] above 1, the streams of a batch are handled at once
///   (each stream's events still in order, each retried on its own) and the batch is committed
///   when all are done; on shutdown, the handled prefix of the batch.
///
/// Returns an error only for a feed error retrying cannot fix (see [`FeedError::is_retryable`]).
pub async fn run_consumer_with<F, H>(
    mut feed: F,
    handler: H,
    options: ConsumerOptions,
    shutdown: CancellationToken,
) -> Result<(), FeedError>
where
    F: EventFeed,
    H: EventHandler,
{
    let mut backoff = Retries::new(&options);
    loop {
        let next = tokio::select! {
            // Checked first, so a consumer with a backlog still stops when asked.
            biased;
            () = shutdown.cancelled() => return Ok(()),
            next = feed.next_batch(options.batch_size) => next,
        };
        let batch = match next {
            Ok(batch) => batch,
            Err(error) if error.is_retryable() => {
                let delay = backoff.next_delay();
                tracing::warn!(consumer = feed.consumer(), %error, retry_in = ?delay, "reading the event feed failed");
                if !pause(delay, &shutdown).await {
                    return Ok(());
                }
                continue;
            }
            Err(error) => {
                tracing::error!(consumer = feed.consumer(), %error, "consumer stopped");
                return Err(error);
            }
        };
        backoff.reset();
        let flow = if options.concurrency > 1 {
            handle_streams_concurrently(&mut feed, &handler, &batch, &options, &shutdown).await?
        } else {
            handle_batch(&mut feed, &handler, &batch, &options, &shutdown).await?
        };
        if flow == Flow::Stop {
            return Ok(());
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    Stop,
}

/// Hands `batch` to `handler` event by event, retrying each until it succeeds, then commits.
async fn handle_batch<F: EventFeed, H: EventHandler>(
    feed: &mut F,
    handler: &H,
    batch: &[EventEnvelope],
    options: &ConsumerOptions,
    shutdown: &CancellationToken,
) -> Result<Flow, FeedError> {
    // The last handled event's position while it is not committed yet.
    let mut uncommitted = None;
    let mut backoff = Retries::new(options);
    for event in batch {
        loop {
            if shutdown.is_cancelled() {
                commit_on_shutdown(feed, uncommitted).await?;
                return Ok(Flow::Stop);
            }
            let Err(error) = handler.handle(event).await else { break };
            let delay = backoff.next_delay();
            log_retry(feed.consumer(), event, &backoff, &error, delay);
            if let Some(position) = uncommitted
                && commit_once(feed, position).await?
            {
                uncommitted = None;
            }
            if !pause(delay, shutdown).await {
                commit_on_shutdown(feed, uncommitted).await?;
                return Ok(Flow::Stop);
            }
        }
        backoff.reset();
        uncommitted = Some(event.global_position);
    }
    match uncommitted {
        Some(position) => commit_with_retry(feed, position, options, shutdown).await,
        None => Ok(Flow::Continue),
    }
}

/// Hands `batch` to `handler` with up to `options.concurrency` streams at once, each stream's
/// events in order and each retried until it succeeds, then commits the batch. On shutdown the
/// events in hand are finished and the handled prefix of the batch (in global order) is
/// committed; the rest comes again.
async fn handle_streams_concurrently<F: EventFeed, H: EventHandler>(
    feed: &mut F,
    handler: &H,
    batch: &[EventEnvelope],
    options: &ConsumerOptions,
    shutdown: &CancellationToken,
) -> Result<Flow, FeedError> {
    let mut lanes: Vec<Vec<&EventEnvelope>> = Vec::new();
    let mut lane_of: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for event in batch {
        let lane = *lane_of.entry(event.stream_id.as_str()).or_insert_with(|| {
            lanes.push(Vec::new());
            lanes.len() - 1
        });
        lanes[lane].push(event);
    }
    let consumer = feed.consumer().to_owned();
    let mut waiting = lanes.into_iter();
    let mut running = FuturesUnordered::new();
    let mut done = Vec::with_capacity(batch.len());
    loop {
        while running.len() < options.concurrency
            && let Some(lane) = waiting.next()
        {
            running.push(handle_lane(&consumer, handler, lane, options, shutdown));
        }
        match running.next().await {
            Some(handled) => done.extend(handled),
            None => break,
        }
    }
    done.sort_unstable();
    // The longest run of the batch, from its start, whose every event was handled.
    let handled_prefix = batch.iter().zip(&done).take_while(|(event, done)| event.global_position == **done).last();
    let Some((last, _)) = handled_prefix else {
        return Ok(if shutdown.is_cancelled() { Flow::Stop } else { Flow::Continue });
    };
    if done.len() < batch.len() {
        commit_once(feed, last.global_position).await?;
        return Ok(Flow::Stop);
    }
    commit_with_retry(feed, last.global_position, options, shutdown).await
}

/// Handles the events of one stream in order, each retried until it succeeds; stops early on
/// shutdown. The positions handled.
async fn handle_lane<H: EventHandler>(
    consumer: &str,
    handler: &H,
    lane: Vec<&EventEnvelope>,
    options: &ConsumerOptions,
    shutdown: &CancellationToken,
) -> Vec<u64> {
    let mut handled = Vec::with_capacity(lane.len());
    let mut backoff = Retries::new(options);
    for event in lane {
        loop {
            if shutdown.is_cancelled() {
                return handled;
            }
            let Err(error) = handler.handle(event).await else { break };
            let delay = backoff.next_delay();
            log_retry(consumer, event, &backoff, &error, delay);
            if !pause(delay, shutdown).await {
                return handled;
            }
        }
        backoff.reset();
        handled.push(event.global_position);
    }
    handled
}

fn log_retry(consumer: &str, event: &EventEnvelope, backoff: &Retries, error: &dyn std::error::Error, delay: Duration) {
    tracing::warn!(
        consumer,
        global_position = event.global_position,
        event_type = %event.event_type,
        failures = backoff.failures,
        error = %error,
        retry_in = ?delay,
        "handling an event failed; it will be handled again"
    );
}

/// Commits `position`, retrying retryable failures; `Stop` when shutdown came first (the
/// uncommitted events then come again to the next feed of this consumer).
async fn commit_with_retry<F: EventFeed>(
    feed: &mut F,
    position: u64,
    options: &ConsumerOptions,
    shutdown: &CancellationToken,
) -> Result<Flow, FeedError> {
    let mut backoff = Retries::new(options);
    loop {
        match feed.commit(position).await {
            Ok(()) => return Ok(Flow::Continue),
            Err(error) if error.is_retryable() => {
                let delay = backoff.next_delay();
                tracing::warn!(consumer = feed.consumer(), position, %error, retry_in = ?delay, "commit failed");
                if !pause(delay, shutdown).await {
                    return Ok(Flow::Stop);
                }
            }
            Err(error) => return Err(error),
        }
    }
}

/// One commit attempt: whether it stored the checkpoint. A retryable failure is only logged, as
/// a later commit covers the same events.
async fn commit_once<F: EventFeed>(feed: &mut F, position: u64) -> Result<bool, FeedError> {
    match feed.commit(position).await {
        Ok(()) => Ok(true),
        Err(error) if error.is_retryable() => {
            tracing::warn!(consumer = feed.consumer(), position, %error, "commit failed; a later one will cover it");
            Ok(false)
        }
        Err(error) => Err(error),
    }
}

async fn commit_on_shutdown<F: EventFeed>(feed: &mut F, uncommitted: Option<u64>) -> Result<(), FeedError> {
    if let Some(position) = uncommitted {
        commit_once(feed, position).await?;
    }
    Ok(())
}

/// Sleeps for `delay`; `false` when shutdown came first.
async fn pause(delay: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        () = shutdown.cancelled() => false,
        () = tokio::time::sleep(delay) => true,
    }
}

/// The backoff between retries of one failing operation, counting the failures in a row for
/// the logs.
struct Retries {
    backoff: Backoff,
    failures: u32,
}

impl Retries {
    fn new(options: &ConsumerOptions) -> Self {
        Self { backoff: Backoff::new(options.first_backoff, options.max_backoff), failures: 0 }
    }

    /// The wait after one more failure.
    fn next_delay(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        self.backoff.next_delay()
    }

    fn reset(&mut self) {
        self.backoff.reset();
        self.failures = 0;
    }
}
