//! The embedded event store: one SQLite file in WAL mode with synchronous commits.
//!
//! Writes go through one writer thread that owns the only write connection. It takes every
//! append request queued at the time, runs them in one transaction (each in its own savepoint,
//! so a rejected request rolls back alone) and commits once: concurrent appenders share the
//! fsync instead of queueing for one each (group commit). Because that single writer assigns
//! global positions in order and readers only see committed transactions, a reader never sees
//! a hole in the global order.
//!
//! Reads run on tokio's blocking pool over a small pool of read-only connections.
//!
//! This module also opens the engine's other SQLite files (`open_database`): the pragmas and
//! the per-component schema migrations are the same for all of them.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use domain::{Actor, EventData, EventEnvelope, NewEvent};
use rusqlite::types::Type;
use rusqlite::{Connection, OptionalExtension, Row, Transaction, TransactionBehavior, params};
use thiserror::Error;
use tokio::sync::{mpsc, oneshot, watch};
use uuid::Uuid;

use crate::hash_chain::{GENESIS, canonical_time, event_hash};
use crate::sqlite_checkpointer::{self as checkpointer, Checkpointer};
use crate::sqlite_readers::Readers;
use crate::{EventFilter, EventStore, ExpectedVersion, StoreError, StreamAppend};

/// How long a connection waits for another connection's lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Append requests waiting for the writer; appenders wait (asynchronously) while it is full.
const QUEUE_CAPACITY: usize = 1024;
/// The most append requests committed in one transaction, which bounds a batch's latency.
const MAX_BATCH: usize = 512;
/// Reads that run at once, each on its own read-only connection; more wait for one. Every
/// connection is kept open, with its prepared statements, for the next read: opening one per
/// read would parse every statement again.
const READERS: usize = 8;
/// Events of the latest commits kept in memory for the followers of the global order.
const TAIL_CAPACITY: usize = 1024;

/// Schema of the events table; entry `i` moves the component from version `i` to `i + 1`.
const EVENT_STORE_MIGRATIONS: &[&str] = &[
    "
    CREATE TABLE events (
        global_position INTEGER PRIMARY KEY,
        event_id        TEXT    NOT NULL UNIQUE,
        stream_id       TEXT    NOT NULL,
        stream_version  INTEGER NOT NULL,
        event_type      TEXT    NOT NULL,
        schema_version  INTEGER NOT NULL,
        tenant_id       TEXT    NOT NULL,
        occurred_at     TEXT    NOT NULL,
        trace_id        TEXT    NOT NULL,
        correlation_id  TEXT    NOT NULL,
        causation_id    TEXT,
        actor           TEXT    NOT NULL,
        data            TEXT    NOT NULL,
        prev_hash       TEXT    NOT NULL,
        hash            TEXT    NOT NULL,
        UNIQUE (stream_id, stream_version)
    ) STRICT;
",
    "
    -- Auditors page through one tenant's events in global order (`read_filtered`).
    CREATE INDEX events_by_tenant ON events (tenant_id, global_position);
",
];

const INSERT_EVENT: &str = "
    INSERT INTO events (global_position, event_id, stream_id, stream_version, event_type, schema_version,
                        tenant_id, occurred_at, trace_id, correlation_id, causation_id, actor, data,
                        prev_hash, hash)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)";

/// The columns [`envelope_from_row`] reads, in its order.
const SELECT_EVENTS: &str = "
    SELECT global_position, event_id, stream_id, stream_version, event_type, schema_version, tenant_id,
           occurred_at, trace_id, correlation_id, causation_id, actor, data, prev_hash, hash
    FROM events";

/// A page of the global order: events after position `?1`, at most `?2`. Built once: every
/// follower reads pages of it.
///
/// The limit is written `?2 + 0` so that binding a new value keeps the prepared statement: a
/// bare parameter as the limit lets the planner use its value (the bundled SQLite is built with
/// STAT4), so every new value expired the statement and it was compiled again on each read
/// (found in a profile: 7% of the fan-out's CPU); an expression is not looked into.
static PAGE_QUERY: LazyLock<String> =
    LazyLock::new(|| format!("{SELECT_EVENTS} WHERE global_position > ?1 ORDER BY global_position LIMIT ?2 + 0"));

/// A stream's events after version `?2`, in order, at most `?3` (-1: all). Built once, and its
/// limit an expression, like [`PAGE_QUERY`]'s.
static STREAM_QUERY: LazyLock<String> = LazyLock::new(|| {
    format!("{SELECT_EVENTS} WHERE stream_id = ?1 AND stream_version > ?2 ORDER BY stream_version LIMIT ?3 + 0")
});

/// The most events of a stream read on the calling task: a stream the caller has not seen is
/// usually empty or short (a resource about to be created, a credential), and one that is longer
/// continues on the blocking pool, so the calling task never does work that grows with history.
const STREAM_POINT_READ: i64 = 16;

/// A stream's first event.
static FIRST_OF_STREAM_QUERY: LazyLock<String> =
    LazyLock::new(|| format!("{SELECT_EVENTS} WHERE stream_id = ?1 AND stream_version = 1"));

/// The counter of appended events in the `metrics` facade (exported at `/metrics`).
pub const EVENTS_APPENDED: &str = "events_appended_total";

/// Counters of the writer, for tests and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteStats {
    /// Append requests committed (each is one `append` or `append_streams` call, whatever its
    /// number of streams and events).
    pub appends: u64,
    /// Transactions committed; fewer than `appends` when appends shared a commit.
    pub commits: u64,
}

#[derive(Default)]
struct WriteCounters {
    appends: AtomicU64,
    commits: AtomicU64,
}

/// The SQLite [`EventStore`]: durable once `append` returns, group-committed, hash-chained.
///
/// Dropping it lets the writer finish the requests already queued, then waits for its thread.
pub struct SqliteEventStore {
    /// `None` only while dropping, to close the queue before joining the writer.
    requests: Option<mpsc::Sender<AppendRequest>>,
    writer: Option<JoinHandle<()>>,
    head: watch::Receiver<u64>,
    readers: Arc<Readers>,
    counters: Arc<WriteCounters>,
    tail: Arc<Mutex<Tail>>,
}

impl SqliteEventStore {
    /// Opens the store at `path`, creating the file and its schema if absent, and starts the
    /// writer thread.
    ///
    /// Blocks on file I/O: call it at startup or from a blocking task.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = open_database(path, "event_store", EVENT_STORE_MIGRATIONS)
            .map_err(|e| StoreError::Backend(format!("opening {}: {e}", path.display())))?;
        // The checkpointer copies the WAL back, off the writer's thread.
        conn.pragma_update(None, "wal_autocheckpoint", checkpointer::BACKSTOP_PAGES).map_err(backend)?;
        let checkpointer = Checkpointer::start(path, "event-store")
            .map_err(|e| StoreError::Backend(format!("starting the event store's checkpointer: {e}")))?;
        let head = last_position(&conn).map_err(backend)?;
        let (head_sender, head_receiver) = watch::channel(head);
        let (requests, queue) = mpsc::channel(QUEUE_CAPACITY);
        let counters = Arc::new(WriteCounters::default());
        let tail = Arc::new(Mutex::new(Tail::default()));
        let writer =
            Writer { conn, head: head_sender, counters: Arc::clone(&counters), tail: Arc::clone(&tail), checkpointer };
        let thread = std::thread::Builder::new()
            .name("event-store-writer".into())
            .spawn(move || writer.run(queue))
            .map_err(|e| StoreError::Backend(format!("starting the event store writer: {e}")))?;
        Ok(Self {
            requests: Some(requests),
            writer: Some(thread),
            head: head_receiver,
            readers: Readers::new(path, READERS),
            counters,
            tail,
        })
    }

    /// Appends and commits so far.
    pub fn stats(&self) -> WriteStats {
        WriteStats {
            appends: self.counters.appends.load(Ordering::Relaxed),
            commits: self.counters.commits.load(Ordering::Relaxed),
        }
    }

    /// Runs `query` on a reader on the blocking pool.
    async fn read<T: Send + 'static>(
        &self,
        query: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.readers.read(move |conn| query(conn).map_err(StoreError::from)).await
    }

    /// Runs a point read (a bounded page of a stream's events, its first event, the head:
    /// nothing whose cost grows with history) on the calling task when a reader is
    /// idle; see [`Readers`].
    async fn read_point<T: Send + 'static>(
        &self,
        query: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.readers.read_point(move |conn| query(conn).map_err(StoreError::from)).await
    }
}

impl Drop for SqliteEventStore {
    fn drop(&mut self) {
        // Closing the queue ends the writer's loop once it has answered what is queued.
        drop(self.requests.take());
        if let Some(writer) = self.writer.take()
            && writer.join().is_err()
        {
            tracing::error!("the event store writer thread panicked");
        }
    }
}

#[async_trait]
impl EventStore for SqliteEventStore {
    async fn append(
        &self,
        stream_id: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Vec<EventEnvelope>, StoreError> {
        let append = StreamAppend { stream_id: stream_id.to_owned(), expected, events };
        let mut stored = self.append_streams(vec![append]).await?;
        Ok(stored.pop().unwrap_or_default())
    }

    async fn append_streams(&self, appends: Vec<StreamAppend>) -> Result<Vec<Vec<EventEnvelope>>, StoreError> {
        let closed = || StoreError::Unavailable("the event store writer has stopped".into());
        let requests = self.requests.as_ref().ok_or_else(closed)?;
        let (reply, answer) = oneshot::channel();
        requests.send(AppendRequest { appends, reply }).await.map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }

    async fn read_stream(&self, stream_id: &str) -> Result<Vec<EventEnvelope>, StoreError> {
        // Versions start at 1.
        self.read_stream_after(stream_id, 0).await
    }

    async fn read_stream_after(&self, stream_id: &str, after: u64) -> Result<Vec<EventEnvelope>, StoreError> {
        // Versions never exceed i64::MAX, so clamping keeps the meaning of the bound.
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        let page = |stream_id: String, after: i64, limit: i64| {
            move |conn: &Connection| -> rusqlite::Result<Vec<EventEnvelope>> {
                let mut query = conn.prepare_cached(&STREAM_QUERY)?;
                query.query_map(params![stream_id, after, limit], envelope_from_row)?.collect()
            }
        };
        // What is new after a version the caller holds, or a stream it has not seen, is usually
        // nothing or a few events: a point read. The rest of a long stream (a connection's
        // health checks) is the pool's.
        let mut events = self.read_point(page(stream_id.to_owned(), after, STREAM_POINT_READ)).await?;
        if events.len() == STREAM_POINT_READ as usize {
            let last = i64::try_from(events[events.len() - 1].stream_version).unwrap_or(i64::MAX);
            events.extend(self.read(page(stream_id.to_owned(), last, -1)).await?);
        }
        Ok(events)
    }

    async fn read_stream_first(&self, stream_id: &str) -> Result<Option<EventEnvelope>, StoreError> {
        let stream_id = stream_id.to_owned();
        self.read_point(move |conn| {
            let mut query = conn.prepare_cached(&FIRST_OF_STREAM_QUERY)?;
            query.query_row(params![stream_id], envelope_from_row).optional()
        })
        .await
    }

    async fn read_all(&self, after: u64, max: usize) -> Result<Vec<EventEnvelope>, StoreError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let from_memory = self.tail.lock().unwrap_or_else(PoisonError::into_inner).read(after, max);
        // Positions never exceed i64::MAX, so clamping keeps the meaning of both bounds.
        let page = |after: u64, max: usize| {
            let (after, max) = (i64::try_from(after).unwrap_or(i64::MAX), i64::try_from(max).unwrap_or(i64::MAX));
            move |conn: &Connection| -> rusqlite::Result<Vec<EventEnvelope>> {
                let mut query = conn.prepare_cached(&PAGE_QUERY)?;
                query.query_map([after, max], envelope_from_row)?.collect()
            }
        };
        match from_memory {
            TailRead::Events(events) => {
                // Answered without waiting on anything: a caller reading in a loop must still
                // give the other tasks of its runtime their turn (tokio's cooperative budget).
                tokio::task::consume_budget().await;
                Ok(events)
            }
            // A follower that has caught up with this process's commits: usually nothing more,
            // unless another process appended since. A short page answers that, on the calling
            // task; the follower reads on if it is full.
            TailRead::AtEnd => self.read_point(page(after, max.min(STREAM_POINT_READ as usize))).await,
            TailRead::Behind => self.read(page(after, max)).await,
        }
    }

    async fn read_filtered(
        &self,
        filter: &EventFilter,
        after: u64,
        max: usize,
    ) -> Result<Vec<EventEnvelope>, StoreError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let (sql, values) = filtered_query(filter, after, max);
        self.read(move |conn| {
            let mut query = conn.prepare_cached(&sql)?;
            query.query_map(rusqlite::params_from_iter(values), envelope_from_row)?.collect()
        })
        .await
    }

    async fn head_position(&self) -> Result<u64, StoreError> {
        self.read_point(last_position).await
    }

    fn watch_head(&self) -> watch::Receiver<u64> {
        self.head.clone()
    }
}

/// One `append` or `append_streams` call as the writer sees it: appends committed all or none.
struct AppendRequest {
    appends: Vec<StreamAppend>,
    reply: oneshot::Sender<AppendOutcome>,
}

/// The writer thread's state: the only connection that writes events.
struct Writer {
    conn: Connection,
    head: watch::Sender<u64>,
    counters: Arc<WriteCounters>,
    tail: Arc<Mutex<Tail>>,
    checkpointer: Checkpointer,
}

impl Writer {
    fn run(mut self, mut queue: mpsc::Receiver<AppendRequest>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        // Waits for one request, then takes whatever else is queued: the requests that arrived
        // while the previous batch was being committed share the next commit.
        while queue.blocking_recv_many(&mut batch, MAX_BATCH) > 0 {
            self.commit_batch(std::mem::take(&mut batch));
        }
    }

    fn commit_batch(&mut self, batch: Vec<AppendRequest>) {
        let (replies, appends): (Vec<_>, Vec<_>) = batch.into_iter().map(|r| (r.reply, r.appends)).unzip();
        match append_in_one_transaction(&mut self.conn, appends) {
            Ok((outcomes, head)) => {
                let committed = outcomes.iter().filter(|outcome| outcome.is_ok()).count() as u64;
                self.counters.appends.fetch_add(committed, Ordering::Relaxed);
                self.counters.commits.fetch_add(1, Ordering::Relaxed);
                let stored = || outcomes.iter().filter_map(|outcome| outcome.as_ref().ok()).flatten();
                metrics::counter!(EVENTS_APPENDED).increment(stored().map(Vec::len).sum::<usize>() as u64);
                // Committed, so followers may read them: before the head moves, which wakes them.
                let mut tail = self.tail.lock().unwrap_or_else(PoisonError::into_inner);
                for events in stored() {
                    tail.extend(events);
                }
                drop(tail);
                // Published before the replies, so an appender that got its position back
                // finds the head at or past it.
                self.head.send_if_modified(|current| {
                    let advanced = *current != head;
                    *current = head;
                    advanced
                });
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    // The appender may have stopped waiting; its events are committed anyway.
                    let _ = reply.send(outcome);
                }
                self.checkpointer.nudge();
            }
            Err(e) => {
                tracing::error!(error = %e, requests = replies.len(), "event store batch not committed");
                for reply in replies {
                    let _ = reply.send(Err(StoreError::Backend(format!("append not committed: {e}"))));
                }
            }
        }
    }
}

/// The events of this process's latest commits, in global order without a hole, so that the
/// followers of the store (projections, the embedded consumers) get what was just committed
/// from memory instead of each reading and parsing it back from SQLite.
///
/// Only what this process's writer committed is here. When another process appended in
/// between (a `worker` sharing the file), the positions jump: the tail starts over from there,
/// and a read it cannot answer in full from memory goes to SQLite.
#[derive(Default)]
struct Tail {
    events: std::collections::VecDeque<EventEnvelope>,
}

impl Tail {
    fn extend(&mut self, stored: &[EventEnvelope]) {
        for event in stored {
            let follows = self.events.back().is_none_or(|last| last.global_position + 1 == event.global_position);
            if !follows {
                self.events.clear();
            }
            if self.events.len() == TAIL_CAPACITY {
                self.events.pop_front();
            }
            self.events.push_back(event.clone());
        }
    }

    /// Up to `max` events after `after`, if the tail holds the one right after `after`.
    fn read(&self, after: u64, max: usize) -> TailRead {
        let (Some(first), Some(last)) = (self.events.front(), self.events.back()) else { return TailRead::Behind };
        let (first, last) = (first.global_position, last.global_position);
        if after >= last {
            return TailRead::AtEnd;
        }
        let Some(skip) = after.checked_sub(first - 1).and_then(|skip| usize::try_from(skip).ok()) else {
            return TailRead::Behind;
        };
        TailRead::Events(self.events.iter().skip(skip).take(max).cloned().collect())
    }
}

/// What the tail can answer of a page of the global order.
enum TailRead {
    /// The page, from memory.
    Events(Vec<EventEnvelope>),
    /// The reader has every event the tail holds; only another process's appends can follow.
    AtEnd,
    /// The page starts before the tail, or the tail is empty: SQLite has it.
    Behind,
}

/// What one request gets back: each of its appends' events as stored.
type AppendOutcome = Result<Vec<Vec<EventEnvelope>>, StoreError>;

/// Runs every append in its own savepoint of one transaction and commits once. Returns each
/// append's outcome and the head position after the commit; an error means nothing committed.
fn append_in_one_transaction(
    conn: &mut Connection,
    requests: Vec<Vec<StreamAppend>>,
) -> Result<(Vec<AppendOutcome>, u64), StoreError> {
    let mut tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(backend)?;
    let mut outcomes = Vec::with_capacity(requests.len());
    for appends in requests {
        // SQLite rolls the whole transaction back by itself on some errors (disk full, I/O).
        // A savepoint opened after that would start and commit a transaction of its own.
        if tx.is_autocommit() {
            return Err(StoreError::Backend("the transaction was rolled back by SQLite".into()));
        }
        outcomes.push(append_in_savepoint(&mut tx, appends));
    }
    let head = last_position(&tx).map_err(backend)?;
    tx.commit().map_err(backend)?;
    Ok((outcomes, head))
}

/// Appends one request's appends in a savepoint, so a rejected or failed request leaves the
/// rest of the batch intact, and a request's appends stand or fall together.
fn append_in_savepoint(tx: &mut Transaction<'_>, appends: Vec<StreamAppend>) -> AppendOutcome {
    let savepoint = tx.savepoint().map_err(backend)?;
    // Dropping the savepoint on error rolls it back, positions included: the next request of
    // the batch reads the same maximum position and reuses them, so no hole is left.
    let stored = appends
        .into_iter()
        .map(|append| append_with_expected_version(&savepoint, append))
        .collect::<Result<Vec<_>, _>>()?;
    savepoint.commit().map_err(backend)?;
    Ok(stored)
}

/// Checks `expected` against the stream as this transaction sees it (earlier appends of the
/// same batch included), then inserts the events after the store's last position.
fn append_with_expected_version(conn: &Connection, append: StreamAppend) -> Result<Vec<EventEnvelope>, StoreError> {
    let StreamAppend { stream_id, expected, events } = append;
    let (actual, last_hash) = stream_head(conn, &stream_id).map_err(backend)?;
    let accepted = match expected {
        ExpectedVersion::NoStream => actual == 0,
        ExpectedVersion::Exact(version) => actual == version,
        ExpectedVersion::Any => true,
    };
    if !accepted {
        return Err(StoreError::WrongExpectedVersion { stream_id, expected, actual });
    }

    let first_position = last_position(conn).map_err(backend)? + 1;
    let mut prev_hash = last_hash;
    let mut insert = conn.prepare_cached(INSERT_EVENT).map_err(backend)?;
    let mut stored = Vec::with_capacity(events.len());
    for ((global_position, stream_version), event) in (first_position..).zip(actual + 1..).zip(events) {
        let mut envelope = EventEnvelope {
            event_id: event.event_id,
            event_type: event.event_type,
            schema_version: event.schema_version,
            stream_id: stream_id.clone(),
            stream_version,
            global_position,
            tenant_id: event.tenant_id,
            occurred_at: event.occurred_at,
            trace_id: event.trace_id,
            correlation_id: event.correlation_id,
            causation_id: event.causation_id,
            actor: event.actor,
            prev_hash,
            hash: String::new(),
            data: event.data.into(),
        };
        envelope.hash = event_hash(&envelope.prev_hash, &envelope);
        let actor = serde_json::to_string(&envelope.actor).map_err(|e| StoreError::Backend(e.to_string()))?;
        insert
            .execute(params![
                envelope.global_position,
                envelope.event_id.to_string(),
                envelope.stream_id,
                envelope.stream_version,
                envelope.event_type,
                envelope.schema_version,
                envelope.tenant_id,
                canonical_time(&envelope.occurred_at),
                envelope.trace_id,
                envelope.correlation_id,
                envelope.causation_id,
                actor,
                envelope.data.to_string(),
                envelope.prev_hash,
                envelope.hash,
            ])
            .map_err(backend)?;
        prev_hash = envelope.hash.clone();
        stored.push(envelope);
    }
    Ok(stored)
}

/// The SQL and parameters of [`EventStore::read_filtered`]: every condition of `filter` in the
/// `WHERE` clause, so SQLite skips what does not match through its indexes instead of handing
/// every row over to be dropped.
fn filtered_query(filter: &EventFilter, after: u64, max: usize) -> (String, Vec<rusqlite::types::Value>) {
    use rusqlite::types::Value as Sql;
    // Positions never exceed i64::MAX, so clamping keeps the meaning of the bounds.
    let position = |p: u64| Sql::Integer(i64::try_from(p).unwrap_or(i64::MAX));
    let after = after.max(filter.after_position.unwrap_or(0));
    let mut conditions = vec!["global_position > ?".to_owned()];
    let mut values = vec![position(after)];
    if let Some(end) = filter.up_to_position {
        conditions.push("global_position <= ?".into());
        values.push(position(end));
    }
    if let Some(stream_id) = &filter.stream_id {
        conditions.push("stream_id = ?".into());
        values.push(Sql::Text(stream_id.clone()));
    }
    if let Some(tenant_id) = &filter.tenant_id {
        // With a stream, its (stream_id, stream_version) index finds the few rows at once; the
        // unary `+` keeps SQLite from walking the tenant's index over all of its events instead.
        conditions.push(if filter.stream_id.is_some() { "+tenant_id = ?" } else { "tenant_id = ?" }.into());
        values.push(Sql::Text(tenant_id.clone()));
    }
    if !filter.event_types.is_empty() {
        conditions.push(format!("event_type IN ({})", vec!["?"; filter.event_types.len()].join(", ")));
        values.extend(filter.event_types.iter().cloned().map(Sql::Text));
    }
    // `occurred_at` is stored in `canonical_time`'s fixed-width UTC form, so text order is time order.
    if let Some(from) = &filter.occurred_from {
        conditions.push("occurred_at >= ?".into());
        values.push(Sql::Text(canonical_time(from)));
    }
    if let Some(before) = &filter.occurred_before {
        conditions.push("occurred_at < ?".into());
        values.push(Sql::Text(canonical_time(before)));
    }
    values.push(Sql::Integer(i64::try_from(max).unwrap_or(i64::MAX)));
    // `+ 0`: see `PAGE_QUERY`.
    let sql = format!("{SELECT_EVENTS} WHERE {} ORDER BY global_position LIMIT ? + 0", conditions.join(" AND "));
    (sql, values)
}

/// The stream's last version and hash: `(0, GENESIS)` for a stream without events.
fn stream_head(conn: &Connection, stream_id: &str) -> rusqlite::Result<(u64, String)> {
    let last = conn
        .prepare_cached(
            "SELECT stream_version, hash FROM events WHERE stream_id = ?1 ORDER BY stream_version DESC LIMIT 1",
        )?
        .query_row([stream_id], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()?;
    Ok(last.unwrap_or_else(|| (0, GENESIS.to_owned())))
}

fn last_position(conn: &Connection) -> rusqlite::Result<u64> {
    conn.prepare_cached("SELECT COALESCE(MAX(global_position), 0) FROM events")?.query_row([], |row| row.get(0))
}

fn envelope_from_row(row: &Row<'_>) -> rusqlite::Result<EventEnvelope> {
    Ok(EventEnvelope {
        global_position: row.get(0)?,
        event_id: parse_column(row, 1, Uuid::parse_str)?,
        stream_id: row.get(2)?,
        stream_version: row.get(3)?,
        event_type: row.get(4)?,
        schema_version: row.get(5)?,
        tenant_id: row.get(6)?,
        occurred_at: parse_column(row, 7, |text| DateTime::parse_from_rfc3339(text).map(|t| t.with_timezone(&Utc)))?,
        trace_id: row.get(8)?,
        correlation_id: row.get(9)?,
        causation_id: row.get(10)?,
        actor: parse_column(row, 11, |text| serde_json::from_str::<Actor>(text))?,
        // Kept as the stored text: parsed only if a reader looks at it.
        data: parse_column(row, 12, EventData::from_stored)?,
        prev_hash: row.get(13)?,
        hash: row.get(14)?,
    })
}

fn parse_column<T, E>(row: &Row<'_>, index: usize, parse: impl FnOnce(&str) -> Result<T, E>) -> rusqlite::Result<T>
where
    E: std::error::Error + Send + Sync + 'static,
{
    // Parsed where SQLite holds it: no copy of the text first.
    let text = row.get_ref(index)?.as_str()?;
    parse(text).map_err(|e| rusqlite::Error::FromSqlConversionFailure(index, Type::Text, Box::new(e)))
}

/// A time as the SQLite stores other than the events keep it (idempotency reservations, vault
/// versions): fixed-width RFC 3339 in UTC to the millisecond, so text order is time order.
pub(crate) fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn backend(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        backend(e)
    }
}

impl From<tokio::task::JoinError> for StoreError {
    fn from(e: tokio::task::JoinError) -> Self {
        StoreError::Backend(format!("read task failed: {e}"))
    }
}

/// Why an SQLite file could not be opened for writing.
#[derive(Debug, Error)]
pub(crate) enum OpenError {
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    #[error("the journal mode is {0}, not WAL")]
    NotWal(String),
    #[error("the {component} schema is at version {found}, newer than the {known} this build knows")]
    NewerSchema { component: String, found: usize, known: usize },
}

/// A connection of its own to one of the engine's SQLite files, for a component that writes
/// beside the event store (idempotency keys, leases): statements run in a blocking task, one at
/// a time. The busy timeout makes them wait for the event store's writer instead of failing
/// while a batch commits.
pub(crate) struct OwnConnection {
    conn: Arc<Mutex<Connection>>,
    /// The component's name, in errors.
    component: &'static str,
}

impl OwnConnection {
    /// Opens `path` for `component`, applying its migrations. Blocks on file I/O.
    pub(crate) fn open(path: &Path, component: &'static str, migrations: &[&str]) -> Result<Self, StoreError> {
        let conn = open_database(path, component, migrations)
            .map_err(|e| StoreError::Backend(format!("opening {}: {e}", path.display())))?;
        Ok(Self { conn: Arc::new(Mutex::new(conn)), component })
    }

    /// Runs `work` on the connection in a blocking task.
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            // Statements run to completion under the lock, so a poisoned lock holds a usable
            // connection.
            let conn = conn.lock().unwrap_or_else(PoisonError::into_inner);
            work(&conn)
        })
        .await
        .map_err(|e| StoreError::Backend(format!("{} task failed: {e}", self.component)))?
        .map_err(|e| StoreError::Backend(e.to_string()))
    }
}

/// Opens (creating if absent) a read-write connection to `path` and brings `component`'s
/// schema up to date.
///
/// WAL lets readers run while the writer commits; `synchronous = FULL` syncs the WAL on every
/// commit, so an acknowledged write survives a crash of the process or of the machine.
pub(crate) fn open_database(path: &Path, component: &str, migrations: &[&str]) -> Result<Connection, OpenError> {
    let mut conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let journal_mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
    if !journal_mode.eq_ignore_ascii_case("wal") {
        return Err(OpenError::NotWal(journal_mode));
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    migrate(&mut conn, component, migrations)?;
    Ok(conn)
}

/// Applies the migrations of `component` it has not applied yet, in one transaction.
///
/// Each component of a file keeps its own version in `store_schema_versions`, so the components
/// sharing a file (and anything else using the file's `user_version`) evolve independently.
/// `BEGIN IMMEDIATE` makes two processes opening a new file at once apply each step only once.
fn migrate(conn: &mut Connection, component: &str, migrations: &[&str]) -> Result<(), OpenError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS store_schema_versions (
            component TEXT    PRIMARY KEY,
            version   INTEGER NOT NULL
        ) STRICT",
    )?;
    let applied: usize = tx
        .query_row("SELECT version FROM store_schema_versions WHERE component = ?1", [component], |row| row.get(0))
        .optional()?
        .unwrap_or(0);
    if applied > migrations.len() {
        return Err(OpenError::NewerSchema {
            component: component.to_owned(),
            found: applied,
            known: migrations.len(),
        });
    }
    if applied == migrations.len() {
        return Ok(());
    }
    for step in &migrations[applied..] {
        tx.execute_batch(step)?;
    }
    tx.execute(
        "INSERT INTO store_schema_versions (component, version) VALUES (?1, ?2)
         ON CONFLICT (component) DO UPDATE SET version = excluded.version",
        params![component, migrations.len()],
    )?;
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(n: usize) -> Vec<NewEvent> {
        crate::contract::sample_events(n)
    }

    /// Reading pages of the global order with a new position and size each time reuses the
    /// prepared statement instead of compiling it again.
    #[test]
    fn paging_the_global_order_keeps_its_prepared_statement() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.db");
        drop(SqliteEventStore::open(&path).unwrap());
        let conn = Connection::open(&path).unwrap();
        for page in 0..5_i64 {
            let mut query = conn.prepare_cached(&PAGE_QUERY).unwrap();
            let read: Vec<EventEnvelope> =
                query.query_map([page * 10, 10 + page], envelope_from_row).unwrap().map(Result::unwrap).collect();
            assert!(read.is_empty());
            assert_eq!(query.get_status(rusqlite::StatementStatus::RePrepare), 0, "page {page}");
        }
    }

    /// What the followers read from the tail equals what SQLite holds, also when another
    /// process's writer appended in between (the positions jump and the tail starts over).
    #[tokio::test]
    async fn followers_read_the_same_events_from_the_tail_as_from_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.db");
        let ours = SqliteEventStore::open(&path).unwrap();
        let theirs = SqliteEventStore::open(&path).unwrap();
        ours.append("t/a", ExpectedVersion::Any, events(3)).await.unwrap();
        theirs.append("t/b", ExpectedVersion::Any, events(2)).await.unwrap();
        ours.append("t/a", ExpectedVersion::Any, events(4)).await.unwrap();
        let fresh = SqliteEventStore::open(&path).unwrap();
        for after in 0..=9 {
            for max in [1, 2, 5, 100] {
                let read = ours.read_all(after, max).await.unwrap();
                let expected = fresh.read_all(after, max).await.unwrap();
                // The tail may answer less than the file (up to its end), never other events.
                assert!(!read.is_empty() || expected.is_empty(), "after {after}, max {max}");
                assert_eq!(read[..], expected[..read.len()], "after {after}, max {max}");
            }
        }
        let tail = ours.tail.lock().unwrap();
        let positions: Vec<_> = tail.events.iter().map(|e| e.global_position).collect();
        assert_eq!(positions, [6, 7, 8, 9], "the tail starts over after the other writer's events");
    }

    #[test]
    fn migrations_apply_once_and_refuse_a_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.db");
        let steps = ["CREATE TABLE a (x INTEGER) STRICT", "CREATE TABLE b (y INTEGER) STRICT"];
        open_database(&path, "test", &steps[..1]).unwrap();
        // Re-opening with one more step applies only that step (the first would fail if re-run).
        open_database(&path, "test", &steps).unwrap();
        open_database(&path, "test", &steps).unwrap();
        // Another component of the same file has its own version.
        open_database(&path, "other", &["CREATE TABLE c (z INTEGER) STRICT"]).unwrap();
        match open_database(&path, "test", &steps[..1]) {
            Err(OpenError::NewerSchema { found: 2, known: 1, .. }) => {}
            other => panic!("expected NewerSchema, got {other:?}"),
        }
    }
}
