//! Durable checkpoints of the embedded consumers, in a small SQLite file of the workers' own
//! (e.g. `DATA_DIR/workers.db`), apart from the event store so that the store stays append-only.
//!
//! A checkpoint only says where a consumer resumes; what it handled is already durable in the
//! event store. So a commit here survives the process (`kill -9`) but is not synced to disk on
//! its own (`synchronous = NORMAL`): after a power cut a consumer may resume from an earlier
//! checkpoint and get some events again, which every consumer tolerates (delivery is at least
//! once, handlers are idempotent). A save is then a write of a page or two, not an `fsync`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};

use crate::FeedError;

/// How long a connection waits for another connection's lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS consumer_checkpoints (
        consumer TEXT    PRIMARY KEY NOT NULL,
        position INTEGER NOT NULL
    ) STRICT;";

/// Each consumer's checkpoint: the global position up to which it has handled every event.
///
/// Cloning is cheap and shares one connection. Consumers write once per batch, and SQLite takes
/// one writer at a time anyway, so a connection behind a mutex is all they need.
#[derive(Clone)]
pub struct SqliteCheckpoints {
    path: Arc<PathBuf>,
    conn: Arc<Mutex<Connection>>,
}

impl fmt::Debug for SqliteCheckpoints {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteCheckpoints").field("path", &self.path).finish_non_exhaustive()
    }
}

impl SqliteCheckpoints {
    /// Opens the checkpoint file at `path`, creating it and its table if absent.
    pub async fn open(path: impl Into<PathBuf>) -> Result<Self, FeedError> {
        let path = path.into();
        let opened = path.clone();
        let conn = tokio::task::spawn_blocking(move || open_connection(&opened))
            .await
            .map_err(|e| FeedError::Checkpoint(format!("opening task failed: {e}")))?
            .map_err(|e| FeedError::Checkpoint(format!("opening {}: {e}", path.display())))?;
        Ok(Self { path: Arc::new(path), conn: Arc::new(Mutex::new(conn)) })
    }

    /// The position `consumer` has handled everything up to; 0 for a consumer that never
    /// committed.
    pub async fn load(&self, consumer: &str) -> Result<u64, FeedError> {
        let consumer = consumer.to_owned();
        self.with_connection(move |conn| {
            let stored = conn
                .prepare_cached("SELECT position FROM consumer_checkpoints WHERE consumer = ?1")?
                .query_row([consumer], |row| row.get(0))
                .optional()?;
            Ok(stored.unwrap_or(0))
        })
        .await
    }

    /// Every consumer that has committed, with its checkpoint (for the lag gauges of `/metrics`).
    pub async fn all(&self) -> Result<Vec<(String, u64)>, FeedError> {
        self.with_connection(|conn| {
            conn.prepare_cached("SELECT consumer, position FROM consumer_checkpoints ORDER BY consumer")?
                .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
                .collect()
        })
        .await
    }

    /// Moves `consumer`'s checkpoint to `position` (kept through a crash of the process; see the
    /// module's documentation for a power cut), unless it is already there or past
    /// it: a checkpoint never moves backwards, so a late or repeated save cannot make a
    /// consumer redo what it has done, whichever of two writers commits last.
    pub async fn save(&self, consumer: &str, position: u64) -> Result<(), FeedError> {
        let consumer = consumer.to_owned();
        self.with_connection(move |conn| {
            conn.prepare_cached(
                "INSERT INTO consumer_checkpoints (consumer, position) VALUES (?1, ?2)
                 ON CONFLICT (consumer) DO UPDATE SET position = max(position, excluded.position)",
            )?
            .execute(params![consumer, position])?;
            Ok(())
        })
        .await
    }

    /// Runs `work` on the connection, on the blocking pool.
    async fn with_connection<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, FeedError> {
        let conn = Arc::clone(&self.conn);
        let result = tokio::task::spawn_blocking(move || {
            // A panic while the lock was held rolled its statement back: the connection is clean.
            let conn = conn.lock().unwrap_or_else(PoisonError::into_inner);
            work(&conn)
        })
        .await
        .map_err(|e| FeedError::Checkpoint(format!("checkpoint task failed: {e}")))?;
        result.map_err(|e| FeedError::Checkpoint(format!("{}: {e}", self.path.display())))
    }
}

fn open_connection(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // Not synced per save: see the module's documentation.
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.execute_batch(SCHEMA)?;
    Ok(conn)
}
