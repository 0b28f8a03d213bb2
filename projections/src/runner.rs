//! The projection runner: follows the store's global order and applies it to the read models,
//! one SQLite transaction per batch, with the checkpoints in the same transaction.

use std::path::Path;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use domain::backoff::Backoff;
use domain::{AnyEvent, DecodeError, EventEnvelope};
use futures::StreamExt;
use rusqlite::{Connection, Transaction, TransactionBehavior};
use store::{EventStore, StoreError, position_ranges, subscribe};
use tokio::sync::{mpsc, watch};

use crate::documents::{Documents, Tables};
use crate::projectors::{self, ALL, Projection};
use crate::read_models::{read_checkpoints, write_checkpoint};
use crate::{ProjectionError, ReadModels};

/// The most events applied in one transaction: large enough to catch up quickly, small enough
/// that one transaction never holds the write lock for long.
pub(crate) const BATCH: usize = 500;
/// The batch of a new database's build ([`rebuild_into`]), which no reader or other writer
/// waits on: fewer, larger transactions write each hot page of the tables and their indexes
/// to the WAL once per batch instead of once per [`BATCH`].
const NEW_DATABASE_BATCH: usize = 5_000;
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The read side's runner and its progress. Cloning is cheap and shares the state; run one
/// [`Projections::run`] per read-model database.
#[derive(Clone)]
pub struct Projections {
    inner: Arc<Inner>,
}

struct Inner {
    read_models: ReadModels,
    /// The global position every projection has applied (the lowest checkpoint).
    position: watch::Sender<u64>,
    caught_up: AtomicBool,
    /// The permanent error `run` returned with, for `/readyz` to name.
    stopped_by: std::sync::Mutex<Option<String>>,
}

impl Projections {
    /// The runner over `read_models`. Its position is 0 until [`Projections::run`] has read the
    /// checkpoints, which it does before anything else.
    pub fn new(read_models: ReadModels) -> Self {
        let (position, _) = watch::channel(0);
        Self {
            inner: Arc::new(Inner {
                read_models,
                position,
                caught_up: AtomicBool::new(false),
                stopped_by: std::sync::Mutex::new(None),
            }),
        }
    }

    /// The read models this runner writes.
    pub fn read_models(&self) -> &ReadModels {
        &self.inner.read_models
    }

    /// The global position every read model reflects.
    pub fn position(&self) -> u64 {
        *self.inner.position.borrow()
    }

    /// Waits until every read model reflects `position` (read-your-writes after a command);
    /// `false` when `timeout` passes first.
    pub async fn wait_for(&self, position: u64, timeout: Duration) -> bool {
        let mut progress = self.inner.position.subscribe();
        // The sender lives as long as `self`, so `wait_for` only ends by reaching the position.
        matches!(tokio::time::timeout(timeout, progress.wait_for(|p| *p >= position)).await, Ok(Ok(_)))
    }

    /// Whether the runner is running and has reached the head the store had when it (re)started:
    /// what `/readyz` reports, so a process still replaying a large store takes no reads.
    pub fn is_caught_up(&self) -> bool {
        self.inner.caught_up.load(Ordering::Acquire)
    }

    /// The permanent error the runner stopped on, if it did: the read models will not move
    /// again until the cause is fixed and the process restarted.
    pub fn stopped_by(&self) -> Option<String> {
        self.inner.stopped_by.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Follows the store from the lowest checkpoint and projects every event, until cancelled
    /// (drop the future or abort its task; a batch in flight still commits or rolls back whole).
    ///
    /// Transient failures (store unavailable, database busy) are logged and retried from the
    /// checkpoints after a backoff of 100 ms doubling up to 5 s. It returns only with a
    /// [permanent](ProjectionError::is_permanent) error (an event this build cannot decode, a
    /// read model altered outside the projector, a corrupt database): retrying would fail the
    /// same way forever, and skipping would silently fork the read models from the store.
    pub async fn run(&self, store: Arc<dyn EventStore>) -> Result<(), ProjectionError> {
        let _running = ClearCaughtUpOnExit(&self.inner.caught_up);
        let mut backoff = Backoff::new(FIRST_BACKOFF, MAX_BACKOFF);
        loop {
            let error = self.follow(&store, &mut backoff).await;
            self.inner.caught_up.store(false, Ordering::Release);
            if error.is_permanent() {
                tracing::error!(%error, position = self.position(), "projection runner stopped");
                *self.inner.stopped_by.lock().unwrap_or_else(PoisonError::into_inner) = Some(error.to_string());
                return Err(error);
            }
            tracing::warn!(%error, retry_in = ?backoff.peek(), "projection runner failed; resuming from its checkpoints");
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }

    /// One subscription's worth of work; it only ends with the error that ended it.
    async fn follow(&self, store: &Arc<dyn EventStore>, backoff: &mut Backoff) -> ProjectionError {
        let start = match self.stored_position().await {
            Ok(start) => start,
            Err(e) => return e,
        };
        self.publish(start);
        let target = match store.head_position().await {
            Ok(head) => head,
            Err(e) => return e.into(),
        };
        self.note_progress(start, target);
        let mut batches = pin!(subscribe(store.clone(), start).ready_chunks(BATCH));
        while let Some(batch) = batches.next().await {
            // A subscription yields nothing after an error, so the events before it are all
            // there is to apply from this batch.
            let mut events = Vec::with_capacity(batch.len());
            let mut failure = None;
            for item in batch {
                match item {
                    Ok(event) => events.push(event),
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
            }
            if !events.is_empty() {
                // Decoded on the blocking pool too, and freed there with the batch.
                let applied = on_writer(&self.inner.read_models, move |conn| apply_batch(conn, &decode_all(events)));
                match applied.await.and_then(|applied| applied) {
                    Ok(position) => {
                        self.publish(position);
                        self.note_progress(position, target);
                        backoff.reset();
                    }
                    Err(e) => return e,
                }
            }
            if let Some(e) = failure {
                return e.into();
            }
        }
        StoreError::Unavailable("the store subscription ended".into()).into()
    }

    async fn stored_position(&self) -> Result<u64, ProjectionError> {
        let writer = self.inner.read_models.writer();
        tokio::task::spawn_blocking(move || {
            let conn = writer.lock().unwrap_or_else(PoisonError::into_inner);
            Ok(lowest_checkpoint(&read_checkpoints(&conn)?))
        })
        .await?
    }

    /// Positions only move forward, even if two runners race on one database.
    fn publish(&self, position: u64) {
        self.inner.position.send_if_modified(|current| {
            let advanced = position > *current;
            *current = (*current).max(position);
            advanced
        });
    }

    fn note_progress(&self, position: u64, target: u64) {
        if position >= target {
            self.inner.caught_up.store(true, Ordering::Release);
        }
    }
}

/// `is_caught_up` is about a runner that is still running: false once `run` returns or is
/// dropped.
struct ClearCaughtUpOnExit<'a>(&'a AtomicBool);

impl Drop for ClearCaughtUpOnExit<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Builds a fresh read-model database at `path` from the whole store, up to the head it has
/// when the rebuild starts (no live follow). `path` must not exist. To rebuild the live
/// database while it serves, see [`crate::rebuild::rebuild`].
pub async fn rebuild_into(store: Arc<dyn EventStore>, path: &Path) -> Result<ReadModels, ProjectionError> {
    // When existence cannot be told (no permission to look), refuse too: it may be live.
    if tokio::fs::try_exists(path).await.unwrap_or(true) {
        return Err(ProjectionError::TargetExists(path.to_path_buf()));
    }
    let target = path.to_path_buf();
    let read_models = tokio::task::spawn_blocking(move || ReadModels::open(target)).await??;
    let head = store.head_position().await?;
    let mut pages = read_ahead(store, 0, head, NEW_DATABASE_BATCH);
    while let Some(page) = pages.recv().await {
        let page = page?;
        let (applied, page) = on_writer(&read_models, move |conn| (apply_batch(conn, &page), page)).await?;
        drop_aside(page);
        applied?;
    }
    Ok(read_models)
}

/// How many pages [`read_ahead`] reads and decodes at once.
const PAGES_IN_FLIGHT: usize = 2;

/// The store's events after `after` up to `head`, `batch` positions at a time, in order, read
/// and decoded ahead of the receiver: [`PAGES_IN_FLIGHT`] pages are read and decoded (on
/// blocking threads) at once while the receiver applies the page before, so reading, decoding
/// and applying share the cores. A page holds the events of its range of positions (fewer than
/// `batch` where positions were skipped; an empty range is not sent). Ends early, after the
/// error, if a read fails.
pub(crate) fn read_ahead(
    store: Arc<dyn EventStore>,
    after: u64,
    head: u64,
    batch: usize,
) -> mpsc::Receiver<Result<Vec<Decoded>, ProjectionError>> {
    let (pages, receiver) = mpsc::channel(PAGES_IN_FLIGHT);
    tokio::spawn(async move {
        let mut decoded = futures::stream::iter(position_ranges(after, head, batch))
            .map(|(from, to)| {
                let store = store.clone();
                async move {
                    let mut page = store.read_all(from, batch).await?;
                    page.retain(|e| e.global_position <= to);
                    tokio::task::spawn_blocking(move || decode_all(page)).await.map_err(ProjectionError::from)
                }
            })
            .buffered(PAGES_IN_FLIGHT);
        while let Some(page) = decoded.next().await {
            let failed = page.is_err();
            if page.as_ref().is_ok_and(Vec::is_empty) {
                continue;
            }
            // The receiver is gone: nobody wants the rest.
            if pages.send(page).await.is_err() || failed {
                return;
            }
        }
    });
    receiver
}

/// Drops a page of events on a blocking thread: freeing thousands of events takes a while, and
/// the thread that applies pages one after another should not wait for it.
pub(crate) fn drop_aside(events: Vec<Decoded>) {
    drop(tokio::task::spawn_blocking(move || drop(events)));
}

/// An event with what it decodes to, decoded once for every projection.
pub(crate) struct Decoded {
    event: EventEnvelope,
    /// `Ok(None)`: a type this build does not know. A newer build may have added it, and no
    /// projection here has anything to make of it (forward compatibility). An error is only
    /// raised if a projection still has to apply the event.
    decoded: Result<Option<AnyEvent>, DecodeError>,
}

/// Decodes each event of a page.
pub(crate) fn decode_all(events: Vec<EventEnvelope>) -> Vec<Decoded> {
    events
        .into_iter()
        .map(|event| {
            let decoded = match AnyEvent::decode(&event.event_type, event.schema_version, &event.data) {
                Ok(decoded) => Ok(Some(decoded)),
                Err(DecodeError::UnknownType(_)) => Ok(None),
                Err(e) => Err(e),
            };
            Decoded { event, decoded }
        })
        .collect()
}

/// Runs `work` with the read models' writer on the blocking pool, then tells the read models
/// their WAL has grown.
async fn on_writer<T: Send + 'static>(
    read_models: &ReadModels,
    work: impl FnOnce(&mut Connection) -> T + Send + 'static,
) -> Result<T, ProjectionError> {
    let writer = read_models.writer();
    let done = tokio::task::spawn_blocking(move || {
        // A panic inside a batch drops its transaction, which rolls back: the connection behind
        // a poisoned lock is clean.
        let mut conn = writer.lock().unwrap_or_else(PoisonError::into_inner);
        work(&mut conn)
    })
    .await?;
    read_models.committed();
    Ok(done)
}

/// Applies `events` (in global order) to every projection that has not seen them, and moves
/// every checkpoint past them, in one transaction: after a crash the database holds either the
/// rows and the checkpoints of the batch or neither, so no event is applied twice or lost.
/// Returns the lowest checkpoint afterwards.
fn apply_batch(conn: &mut Connection, events: &[Decoded]) -> Result<u64, ProjectionError> {
    // IMMEDIATE takes the write lock before the checkpoints are read, so even two runners on one
    // database cannot both apply an event.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let stored = read_checkpoints(&tx)?;
    let mut checkpoints: Vec<u64> = ALL.iter().map(|p| stored.get(p.name).copied().unwrap_or(0)).collect();
    apply_events(&tx, Tables::LIVE, &ALL, &mut checkpoints, events)?;
    for (projection, &checkpoint) in ALL.iter().zip(&checkpoints) {
        write_checkpoint(&tx, projection.name, checkpoint)?;
    }
    tx.commit()?;
    Ok(checkpoints.into_iter().min().unwrap_or(0))
}

/// Applies `events` (in global order) to each of `projections` that has not seen them
/// (`positions[i]` is how far `projections[i]` has read) and moves the positions past them.
/// Writing the positions back, in the same transaction, is the caller's part.
pub(crate) fn apply_events(
    tx: &Transaction<'_>,
    tables: &Tables,
    projections: &[Projection],
    positions: &mut [u64],
    events: &[Decoded],
) -> Result<(), ProjectionError> {
    let mut documents = Documents::new(tx, tables);
    for Decoded { event, decoded } in events {
        let position = event.global_position;
        if positions.iter().all(|&seen| seen >= position) {
            continue;
        }
        match decoded {
            Ok(Some(decoded)) => {
                for (projection, &seen) in projections.iter().zip(positions.iter()) {
                    if position > seen {
                        (projection.apply)(&mut documents, event, decoded)?;
                    }
                }
            }
            Ok(None) => {
                tracing::warn!(event_type = %event.event_type, global_position = position, "skipping an event of unknown type");
            }
            Err(source) => {
                return Err(ProjectionError::Undecodable { global_position: position, source: source.clone() });
            }
        }
        for seen in positions.iter_mut() {
            *seen = (*seen).max(position);
        }
    }
    documents.flush()
}

/// The position every projection has reached; one without a checkpoint has reached nothing.
fn lowest_checkpoint(stored: &std::collections::BTreeMap<String, u64>) -> u64 {
    projectors::ALL.iter().map(|p| stored.get(p.name).copied().unwrap_or(0)).min().unwrap_or(0)
}
