//! The SQLite [`Leases`]: a table in the event store's database file, so every process that
//! shares the store shares the leases.

use std::path::Path;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::params;

use crate::StoreError;
use crate::leases::{Lease, Leases};
use crate::sqlite::OwnConnection;

const LEASE_MIGRATIONS: &[&str] = &["
    CREATE TABLE leases (
        name       TEXT    PRIMARY KEY,
        holder     TEXT    NOT NULL,
        -- Unix milliseconds.
        expires_at INTEGER NOT NULL
    ) STRICT, WITHOUT ROWID;
"];

/// Leases in an SQLite file, usually the one [`crate::SqliteEventStore`] uses; written through
/// a connection of their own (the busy timeout waits for the event store's writer).
pub struct SqliteLeases {
    conn: OwnConnection,
}

impl SqliteLeases {
    /// Opens the leases at `path`, creating the file and the table if absent. Blocks on file I/O.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Ok(Self { conn: OwnConnection::open(path, "leases", LEASE_MIGRATIONS)? })
    }
}

#[async_trait]
impl Leases for SqliteLeases {
    async fn acquire(
        &self,
        name: &str,
        holder: &str,
        now: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> Result<Lease, StoreError> {
        let (name, holder) = (name.to_owned(), holder.to_owned());
        let (now, expires_at) = (now.timestamp_millis(), expires_at.timestamp_millis());
        let (holder, expires_at) = self
            .conn
            .run(move |conn| {
                // One statement decides and writes, so two workers racing for a free lease
                // cannot both win; the read after it sees what won.
                conn.execute(
                    "INSERT INTO leases (name, holder, expires_at) VALUES (?1, ?2, ?4)
                     ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at
                     WHERE leases.holder = excluded.holder OR leases.expires_at <= ?3",
                    params![name, holder, now, expires_at],
                )?;
                conn.query_row("SELECT holder, expires_at FROM leases WHERE name = ?1", [&name], |row| {
                    Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
                })
            })
            .await?;
        let expires_at = DateTime::from_timestamp_millis(expires_at)
            .ok_or_else(|| StoreError::Backend(format!("lease expiry {expires_at} is out of range")))?;
        Ok(Lease { holder, expires_at })
    }

    async fn release(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        let (name, holder) = (name.to_owned(), holder.to_owned());
        self.conn
            .run(move |conn| {
                conn.execute("DELETE FROM leases WHERE name = ?1 AND holder = ?2", params![name, holder]).map(|_| ())
            })
            .await
    }
}
