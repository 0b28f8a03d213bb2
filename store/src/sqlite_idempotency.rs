//! The SQLite [`IdempotencyStore`]: a table in the event store's database file.

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::params;

use crate::idempotency::{DEFAULT_IDEMPOTENCY_RETENTION, ExpiryCutoffs};
use crate::sqlite::{OwnConnection, timestamp};
use crate::sqlite_readers::cached_row;
use crate::{IdempotencyStore, Reservation, StoreError, StoredResponse};

const IDEMPOTENCY_MIGRATIONS: &[&str] = &[
    "
    CREATE TABLE idempotency_keys (
        tenant_id    TEXT    NOT NULL,
        operation    TEXT    NOT NULL,
        key          TEXT    NOT NULL,
        request_hash TEXT    NOT NULL,
        resource_id  TEXT    NOT NULL,
        status       INTEGER,
        location     TEXT,
        body         BLOB,
        created_at   TEXT    NOT NULL,
        PRIMARY KEY (tenant_id, operation, key)
    ) STRICT, WITHOUT ROWID;
",
    "
    -- The expiry sweep finds old reservations without scanning the table.
    CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created_at);
",
];

/// Idempotency keys in an SQLite file, usually the one [`crate::SqliteEventStore`] uses.
///
/// It writes through a connection of its own; the busy timeout makes it wait for the event
/// store's writer instead of failing while a batch commits.
pub struct SqliteIdempotencyStore {
    conn: OwnConnection,
    retention: Duration,
}

impl SqliteIdempotencyStore {
    /// Opens the store at `path`, creating the file and the table if absent. Blocks on file I/O.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = OwnConnection::open(path, "idempotency", IDEMPOTENCY_MIGRATIONS)?;
        Ok(Self { conn, retention: DEFAULT_IDEMPOTENCY_RETENTION })
    }

    /// Keeps completed reservations for `retention` instead of the default 24 hours.
    pub fn with_retention(mut self, retention: Duration) -> Self {
        self.retention = retention;
        self
    }
}

#[async_trait]
impl IdempotencyStore for SqliteIdempotencyStore {
    async fn reserve(
        &self,
        tenant_id: &str,
        operation: &str,
        key: &str,
        request_hash: &str,
        resource_id: &str,
        now: DateTime<Utc>,
    ) -> Result<Reservation, StoreError> {
        let (tenant_id, operation, key) = (tenant_id.to_owned(), operation.to_owned(), key.to_owned());
        let (request_hash, resource_id) = (request_hash.to_owned(), resource_id.to_owned());
        let retention = self.retention;
        self.conn
            .run(move |conn| {
                let expiry = ExpiryCutoffs::at(now, retention);
                // A key whose reservation expired is free, whether or not the sweep has deleted the
                // row yet: the upsert takes it over (fresh hash, id and time, no response) in the
                // same statement, so two concurrent retries still make only one `New`.
                let inserted = conn.prepare_cached(
                    "INSERT INTO idempotency_keys (tenant_id, operation, key, request_hash, resource_id, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (tenant_id, operation, key) DO UPDATE SET
                     request_hash = excluded.request_hash, resource_id = excluded.resource_id,
                     status = NULL, location = NULL, body = NULL, created_at = excluded.created_at
                 WHERE (idempotency_keys.status IS NOT NULL AND idempotency_keys.created_at < ?7)
                    OR (idempotency_keys.status IS NULL AND idempotency_keys.created_at < ?8)",
                )?
                .execute(params![
                    tenant_id,
                    operation,
                    key,
                    request_hash,
                    resource_id,
                    timestamp(now),
                    timestamp(expiry.completed_before),
                    timestamp(expiry.in_progress_before)
                ])?;
                if inserted == 1 {
                    return Ok(Reservation::New);
                }
                // The row that won the conflict has not expired, so the sweep leaves it alone.
                cached_row(
                    conn,
                    "SELECT request_hash, resource_id, status, location, body FROM idempotency_keys
                 WHERE tenant_id = ?1 AND operation = ?2 AND key = ?3",
                    params![tenant_id, operation, key],
                    |row| {
                        let status: Option<u16> = row.get(2)?;
                        let response = match status {
                            Some(status) => Some(StoredResponse {
                                status,
                                location: row.get(3)?,
                                body: row.get::<_, Option<Vec<u8>>>(4)?.unwrap_or_default(),
                            }),
                            None => None,
                        };
                        Ok(Reservation::Existing { request_hash: row.get(0)?, resource_id: row.get(1)?, response })
                    },
                )
            })
            .await
    }

    /// Records the response; once a key has one, later completions keep it (retries replay the
    /// first response). Completing a key nobody reserved is an error.
    async fn complete(
        &self,
        tenant_id: &str,
        operation: &str,
        key: &str,
        response: &StoredResponse,
    ) -> Result<(), StoreError> {
        let (tenant_id, operation, key) = (tenant_id.to_owned(), operation.to_owned(), key.to_owned());
        let response = response.clone();
        let reserved = self
            .conn.run(move |conn| {
                let updated = conn
                    .prepare_cached(
                        "UPDATE idempotency_keys SET status = ?4, location = ?5, body = ?6
                     WHERE tenant_id = ?1 AND operation = ?2 AND key = ?3 AND status IS NULL",
                    )?
                    .execute(params![tenant_id, operation, key, response.status, response.location, response.body])?;
                if updated == 1 {
                    return Ok(true);
                }
                conn.query_row(
                    "SELECT EXISTS (SELECT 1 FROM idempotency_keys WHERE tenant_id = ?1 AND operation = ?2 AND key = ?3)",
                    params![tenant_id, operation, key],
                    |row| row.get(0),
                )
            })
            .await?;
        if reserved {
            Ok(())
        } else {
            Err(StoreError::Backend("completing an idempotency key that was never reserved".into()))
        }
    }

    async fn sweep_expired(&self, now: DateTime<Utc>, limit: usize) -> Result<usize, StoreError> {
        let expiry = ExpiryCutoffs::at(now, self.retention);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.conn
            .run(move |conn| {
                // One bounded DELETE is one short write transaction (autocommit), found through the
                // index on `created_at`.
                conn.execute(
                    "DELETE FROM idempotency_keys WHERE (tenant_id, operation, key) IN (
                     SELECT tenant_id, operation, key FROM idempotency_keys
                     WHERE created_at < ?1 AND (status IS NOT NULL OR created_at < ?2)
                     LIMIT ?3)",
                    params![timestamp(expiry.completed_before), timestamp(expiry.in_progress_before), limit],
                )
            })
            .await
    }
}
