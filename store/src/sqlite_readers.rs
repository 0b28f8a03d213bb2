//! Read-only connections to one SQLite file, kept and reused between reads: the event store's
//! and the read models' readers alike.
//!
//! A bounded number of connections exist (a semaphore): a burst of reads waits for one instead
//! of opening more, and each keeps its prepared statements. A point read, whose cost does not
//! grow with the data (a row by key, the events after a version the caller holds), runs on the
//! calling task when a connection is idle: it takes microseconds, and handing it to the
//! blocking pool and back costs two thread wake-ups, more than the read itself. Everything else
//! runs on the blocking pool.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use tokio::sync::{Semaphore, SemaphorePermit};

/// How long a reader waits for SQLite's lock before reporting `SQLITE_BUSY`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Room for the statements every read kind uses, so none is ever parsed twice.
const STATEMENT_CACHE: usize = 64;

/// The row `sql` answers with `params`, through the connection's statement cache: a read
/// repeated on a kept connection is parsed once (`Connection::query_row` parses it every time).
pub(crate) fn cached_row<T>(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    row: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    conn.prepare_cached(sql)?.query_row(params, row)
}

/// What a read's error must be able to hold: SQLite's errors, and a blocking task that failed.
pub trait ReadError: From<rusqlite::Error> + From<tokio::task::JoinError> + Send + 'static {}

impl<E: From<rusqlite::Error> + From<tokio::task::JoinError> + Send + 'static> ReadError for E {}

/// The readers of one SQLite file. Share it in an `Arc`.
pub struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    /// One per connection: a read holds one while it runs.
    permits: Arc<Semaphore>,
}

impl Readers {
    /// At most `size` readers of the file at `path`, opened when first needed.
    pub fn new(path: impl Into<PathBuf>, size: usize) -> Arc<Self> {
        Arc::new(Self {
            path: path.into(),
            idle: Mutex::new(Vec::with_capacity(size)),
            permits: Arc::new(Semaphore::new(size)),
        })
    }

    /// Runs `query` on a reader on the blocking pool, waiting for one while all are in use.
    pub async fn read<T, E>(
        self: &Arc<Self>,
        query: impl FnOnce(&Connection) -> Result<T, E> + Send + 'static,
    ) -> Result<T, E>
    where
        T: Send + 'static,
        E: ReadError,
    {
        // The semaphore is never closed, so acquiring only waits.
        let permit = Arc::clone(&self.permits).acquire_owned().await.expect("the readers' semaphore is never closed");
        let readers = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let conn = match readers.take_idle() {
                Some(conn) => conn,
                None => open_reader(&readers.path)?,
            };
            let result = query(&conn);
            readers.put_back(conn);
            result
        })
        .await?
    }

    /// Runs a point read on the calling task when a reader is idle, else as [`Self::read`] does.
    /// Only for reads whose cost does not grow with the data.
    pub async fn read_point<T, E>(
        self: &Arc<Self>,
        query: impl FnOnce(&Connection) -> Result<T, E> + Send + 'static,
    ) -> Result<T, E>
    where
        T: Send + 'static,
        E: ReadError,
    {
        // None idle, or none opened yet (opening one is file I/O): the blocking pool.
        let Some((_permit, conn)) = self.try_idle() else { return self.read(query).await };
        let result = query(&conn);
        self.put_back(conn);
        result
    }

    /// An idle connection with its permit, if one is at hand without waiting.
    fn try_idle(&self) -> Option<(SemaphorePermit<'_>, Connection)> {
        let permit = self.permits.try_acquire().ok()?;
        Some((permit, self.take_idle()?))
    }

    // A panic while the lock was held cannot leave the list half-updated, so a poisoned lock is
    // still usable.
    fn take_idle(&self) -> Option<Connection> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner).pop()
    }

    fn put_back(&self, conn: Connection) {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner).push(conn);
    }
}

/// Read-only, so that nothing but the file's one writer can change it.
fn open_reader(path: &Path) -> rusqlite::Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI;
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(conn)
}
