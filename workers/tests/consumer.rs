//! `run_consumer` over the embedded feed: a real SQLite store, real checkpoints, a handler that
//! records what it was given.

mod support;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use domain::EventEnvelope;
use support::{DataDir, WAIT, positions, within};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use workers::{ConsumerOptions, EventFeed, EventHandler, SqliteCheckpoints, run_consumer, run_consumer_with};

/// One call of the handler: the event's position and the consumer's stored checkpoint then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Call {
    position: u64,
    checkpoint: u64,
}

/// Reports every call, and fails an event as many times as `failures` says.
struct Recorder {
    calls: mpsc::UnboundedSender<Call>,
    /// Failures still to come, by global position; `usize::MAX` fails for good.
    failures: Mutex<HashMap<u64, usize>>,
    checkpoints: SqliteCheckpoints,
    consumer: &'static str,
}

impl Recorder {
    fn new(data: &DataDir, consumer: &'static str, failures: &[(u64, usize)]) -> (Self, mpsc::UnboundedReceiver<Call>) {
        let (calls, received) = mpsc::unbounded_channel();
        let failures = Mutex::new(failures.iter().copied().collect());
        (Self { calls, failures, checkpoints: data.checkpoints.clone(), consumer }, received)
    }
}

#[async_trait]
impl EventHandler for Recorder {
    type Error = std::io::Error;

    async fn handle(&self, event: &EventEnvelope) -> Result<(), Self::Error> {
        let checkpoint = self.checkpoints.load(self.consumer).await.unwrap();
        let _ = self.calls.send(Call { position: event.global_position, checkpoint });
        let mut failures = self.failures.lock().unwrap();
        match failures.get_mut(&event.global_position) {
            Some(left) if *left > 0 => {
                *left = left.saturating_sub(1);
                Err(std::io::Error::other("the vendor is down"))
            }
            _ => Ok(()),
        }
    }
}

/// Quick retries, so the tests do not wait on the production backoff.
fn quick_retries() -> ConsumerOptions {
    ConsumerOptions {
        first_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(40),
        ..Default::default()
    }
}

async fn next_calls(calls: &mut mpsc::UnboundedReceiver<Call>, count: usize) -> Vec<Call> {
    let mut received = Vec::with_capacity(count);
    while received.len() < count {
        received.push(within(calls.recv()).await.expect("the handler is gone"));
    }
    received
}

#[tokio::test]
async fn the_driver_hands_every_event_to_the_handler_in_order_and_commits_after_the_batch() {
    let data = DataDir::new().await;
    let stored = data.append("conn-a", 3).await;
    let (handler, mut calls) = Recorder::new(&data, "runs", &[]);
    let shutdown = CancellationToken::new();
    let driver = tokio::spawn(run_consumer(data.feed("runs").await, handler, shutdown.clone()));

    let first = next_calls(&mut calls, 3).await;
    assert_eq!(first.iter().map(|c| c.position).collect::<Vec<_>>(), positions(&stored));
    data.wait_for_checkpoint("runs", 3).await;

    let live = data.append("conn-b", 2).await;
    let second = next_calls(&mut calls, 2).await;
    assert_eq!(second.iter().map(|c| c.position).collect::<Vec<_>>(), positions(&live));
    data.wait_for_checkpoint("runs", 5).await;

    shutdown.cancel();
    within(driver).await.unwrap().unwrap();
    assert!(calls.try_recv().is_err(), "an event was handled twice");
}

#[tokio::test]
async fn a_failing_handler_gets_the_event_again_and_the_checkpoint_moves_only_after_success() {
    let data = DataDir::new().await;
    data.append("conn-a", 3).await;
    let (handler, mut calls) = Recorder::new(&data, "runs", &[(2, 2)]);
    let shutdown = CancellationToken::new();
    let driver = tokio::spawn(run_consumer_with(data.feed("runs").await, handler, quick_retries(), shutdown.clone()));

    let received = next_calls(&mut calls, 5).await;
    assert_eq!(received.iter().map(|c| c.position).collect::<Vec<_>>(), [1, 2, 2, 2, 3]);
    for call in &received {
        assert!(call.checkpoint < call.position, "checkpoint {} passed an unhandled event: {call:?}", call.checkpoint);
    }
    // Before backing off, the driver commits the part of the batch already handled.
    assert_eq!(received[2].checkpoint, 1);
    data.wait_for_checkpoint("runs", 3).await;

    shutdown.cancel();
    within(driver).await.unwrap().unwrap();
    assert!(calls.try_recv().is_err(), "an event was handled after it succeeded");
}

#[tokio::test]
async fn shutdown_stops_a_driver_waiting_for_events_promptly() {
    let data = DataDir::new().await;
    let (handler, _calls) = Recorder::new(&data, "runs", &[]);
    let shutdown = CancellationToken::new();
    let driver = tokio::spawn(run_consumer(data.feed("runs").await, handler, shutdown.clone()));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!driver.is_finished());

    let asked = Instant::now();
    shutdown.cancel();
    within(driver).await.unwrap().unwrap();
    assert!(asked.elapsed() < Duration::from_secs(1), "took {:?} to stop", asked.elapsed());
}

#[tokio::test]
async fn shutdown_stops_a_driver_backing_off_from_a_failing_handler_and_the_event_comes_again() {
    let data = DataDir::new().await;
    let stored = data.append("conn-a", 2).await;
    let (handler, mut calls) = Recorder::new(&data, "runs", &[(2, usize::MAX)]);
    // A backoff far longer than the test: only the shutdown can end the wait.
    let options = ConsumerOptions { first_backoff: WAIT * 10, max_backoff: WAIT * 10, ..Default::default() };
    let shutdown = CancellationToken::new();
    let driver = tokio::spawn(run_consumer_with(data.feed("runs").await, handler, options, shutdown.clone()));
    next_calls(&mut calls, 2).await;

    let asked = Instant::now();
    shutdown.cancel();
    within(driver).await.unwrap().unwrap();
    assert!(asked.elapsed() < Duration::from_secs(1), "took {:?} to stop", asked.elapsed());

    // The event before the failing one was committed; the failing one was not.
    assert_eq!(data.checkpoint("runs").await, 1);
    let mut restarted = data.feed("runs").await;
    assert_eq!(within(restarted.next_batch(100)).await.unwrap(), stored[1..]);
}

#[tokio::test]
async fn with_concurrency_streams_are_handled_at_once_each_in_order_and_the_batch_commits_after_all() {
    let data = DataDir::new().await;
    let a = data.append("conn-a", 3).await;
    let b = data.append("conn-b", 3).await;
    // conn-a's second event fails twice: conn-b goes on meanwhile, conn-a's third event waits.
    let (handler, mut calls) = Recorder::new(&data, "runs", &[(2, 2)]);
    let options = ConsumerOptions { concurrency: 8, ..quick_retries() };
    let shutdown = CancellationToken::new();
    let driver = tokio::spawn(run_consumer_with(data.feed("runs").await, handler, options, shutdown.clone()));

    let received = next_calls(&mut calls, 8).await;
    let of_stream = |stream: &[EventEnvelope]| -> Vec<u64> {
        let positions = positions(stream);
        received.iter().map(|c| c.position).filter(|p| positions.contains(p)).collect()
    };
    assert_eq!(of_stream(&a), [1, 2, 2, 2, 3], "one stream's events in order, a failed one retried");
    assert_eq!(of_stream(&b), [4, 5, 6]);
    let third_of_b = received.iter().position(|c| c.position == 6).unwrap();
    let last_retry_of_a = received.iter().rposition(|c| c.position == 2).unwrap();
    assert!(third_of_b < last_retry_of_a, "conn-b waited for conn-a's retries: {received:?}");
    assert!(received.iter().all(|c| c.checkpoint == 0), "committed before the batch was done: {received:?}");
    data.wait_for_checkpoint("runs", 6).await;

    shutdown.cancel();
    within(driver).await.unwrap().unwrap();
    assert!(calls.try_recv().is_err(), "an event was handled after it succeeded");
}
