//! Read-only connections to one SQLite file, kept and reused between reads: the event store's
//! and the read models' readers alike.
//!
//! A bounded number of connections exist (a semaphore): a burst of reads waits for one instead
//! of opening more, and each keeps its prepared statements. A point read, whose cost does not
//! grow with the data (a row by key, the events after a version the caller holds), runs on the
//! calling task when a connection is idle: it takes microseconds, and handing it to the
//! blocking pool and back costs two thread wake-ups, more than the read itself. Everything else
//! runs on the blocking pool.
//!
//! A connection no read has used for [`IDLE_TIMEOUT`] is closed, so that the page cache a burst
//! of reads filled (up to 2 MB a connection) goes back to the allocator once the burst is over;
//! the next burst opens it again. The most recently used connection is reused first, so a
//! steady trickle of reads keeps one connection warm and lets the rest age out.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};
use tokio::sync::{Semaphore, SemaphorePermit};

/// How long a reader waits for SQLite's lock before reporting `SQLITE_BUSY`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Room for the statements every read kind uses, so none is ever parsed twice.
const STATEMENT_CACHE: usize = 64;

/// How long a connection may sit unused before it is closed (see the module documentation).
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

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
    /// The open connections no read holds, least recently used first.
    idle: Mutex<Vec<Idle>>,
    /// One per connection: a read holds one while it runs.
    permits: Arc<Semaphore>,
}

struct Idle {
    conn: Connection,
    since: Instant,
}

impl Readers {
    /// At most `size` readers of the file at `path`, opened when first needed. Inside a Tokio
    /// runtime, a task closes the connections left unused for [`IDLE_TIMEOUT`] (it ends when the
    /// readers are dropped); elsewhere only the reads themselves close them.
    pub fn new(path: impl Into<PathBuf>, size: usize) -> Arc<Self> {
        let readers = Arc::new(Self {
            path: path.into(),
            idle: Mutex::new(Vec::with_capacity(size)),
            permits: Arc::new(Semaphore::new(size)),
        });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(close_idle_ones(Arc::downgrade(&readers)));
        }
        readers
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
        self.idle_list().pop().map(|idle| idle.conn)
    }

    fn put_back(&self, conn: Connection) {
        let now = Instant::now();
        // Back in and the unused ones out under one lock; they close after it is released.
        let _closing = {
            let mut idle = self.idle_list();
            idle.push(Idle { conn, since: now });
            now.checked_sub(IDLE_TIMEOUT).map(|cutoff| unused_since(&mut idle, cutoff))
        };
    }

    /// Closes the idle connections unused for [`IDLE_TIMEOUT`].
    fn close_unused(&self) {
        // `None` only within IDLE_TIMEOUT of the clock's origin, when nothing can be that old.
        if let Some(cutoff) = Instant::now().checked_sub(IDLE_TIMEOUT) {
            self.close_unused_since(cutoff);
        }
    }

    /// Closes the idle connections last used before `cutoff`; returns how many.
    fn close_unused_since(&self, cutoff: Instant) -> usize {
        // The guard is a temporary: the lock is released before the connections close.
        let closing = unused_since(&mut self.idle_list(), cutoff);
        closing.len()
    }

    fn idle_list(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Takes the connections last used before `cutoff` out of `idle` (least recently used first),
/// for the caller to close once it has released the lock: closing finalizes the statements and
/// frees the page cache.
fn unused_since(idle: &mut Vec<Idle>, cutoff: Instant) -> Vec<Idle> {
    let unused = idle.partition_point(|idle| idle.since < cutoff);
    idle.drain(..unused).collect()
}

/// Closes the connections of `readers` unused for [`IDLE_TIMEOUT`], looking every third of it,
/// until the readers are dropped.
async fn close_idle_ones(readers: Weak<Readers>) {
    let mut ticks = tokio::time::interval(IDLE_TIMEOUT / 3);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(readers) = readers.upgrade() else { return };
        readers.close_unused();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StoreError;

    fn seven(conn: &Connection) -> Result<i64, StoreError> {
        Ok(conn.query_row("SELECT x FROM t", [], |row| row.get(0))?)
    }

    /// Readers of a new database whose one table holds 7 (the directory holds the file).
    fn readers_of_seven(size: usize) -> (tempfile::TempDir, Arc<Readers>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        Connection::open(&path)
            .unwrap()
            .execute_batch("CREATE TABLE t (x INTEGER); INSERT INTO t VALUES (7);")
            .unwrap();
        (dir, Readers::new(&path, size))
    }

    impl Readers {
        fn idle_count(&self) -> usize {
            self.idle_list().len()
        }
    }

    /// `n` reads that run at once (each waits for the others inside its connection), so that
    /// `n` connections are open after them.
    async fn burst(readers: &Arc<Readers>, n: usize) {
        let all_in = Arc::new(std::sync::Barrier::new(n));
        let reads = (0..n).map(|_| {
            let all_in = all_in.clone();
            readers.read(move |conn| {
                all_in.wait();
                seven(conn)
            })
        });
        for read in futures::future::join_all(reads).await {
            assert_eq!(read.unwrap(), 7);
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn connections_left_unused_are_closed_and_opened_again_when_needed() {
        let (_dir, readers) = readers_of_seven(2);

        burst(&readers, 2).await;
        assert_eq!(readers.idle_count(), 2, "a burst of two reads leaves two connections open");

        let used_last = Instant::now();
        assert_eq!(readers.close_unused_since(used_last - IDLE_TIMEOUT), 0, "none was unused for so long");
        assert_eq!(readers.close_unused_since(used_last + Duration::from_millis(1)), 2);
        assert_eq!(readers.idle_count(), 0);

        assert_eq!(readers.read_point(seven).await.unwrap(), 7, "a read after they closed opens one again");
        assert_eq!(readers.idle_count(), 1);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn the_most_recently_used_connection_is_reused_and_the_others_age_out() {
        let (_dir, readers) = readers_of_seven(3);
        burst(&readers, 3).await;
        assert_eq!(readers.idle_count(), 3);
        let burst_ended = Instant::now();

        // A trickle of reads, one at a time, after the burst.
        for _ in 0..5 {
            assert_eq!(readers.read_point(seven).await.unwrap(), 7);
        }
        assert_eq!(readers.close_unused_since(burst_ended), 2, "the trickle used one");
        assert_eq!(readers.idle_count(), 1);
    }
}
