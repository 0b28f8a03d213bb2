use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::StoreError;

/// The response a POST gave, kept so that a retry with the same `Idempotency-Key` replays it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    pub status: u16,
    /// The `Location` header, for creations.
    pub location: Option<String>,
    pub body: Vec<u8>,
}

/// What a reservation of an idempotency key found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reservation {
    /// The key was free and is now reserved for `resource_id`.
    New,
    /// The key was used before: with this request hash, for this resource id, and (once the
    /// first request finished) with this response.
    Existing { request_hash: String, resource_id: String, response: Option<StoredResponse> },
}

/// How long a reservation is kept once its request has answered (Stripe keeps keys for 24 hours
/// as well). Past it the key is free again: a retry with it is executed as a new request.
pub const DEFAULT_IDEMPOTENCY_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// How much longer than the retention a reservation *without* a response is kept. Such a row
/// belongs to a request still running or to one whose process died before answering; no request
/// runs for an hour (the server drains for at most its shutdown timeout, and a POST waits at most
/// seconds for the read models), so after retention plus this margin it is abandoned for sure.
pub const IN_PROGRESS_MARGIN: Duration = Duration::from_secs(3600);

/// Which reservations have expired at a given moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpiryCutoffs {
    /// Completed reservations created before this have expired.
    pub completed_before: DateTime<Utc>,
    /// Reservations without a response created before this have expired (later than
    /// `completed_before` by [`IN_PROGRESS_MARGIN`]).
    pub in_progress_before: DateTime<Utc>,
}

impl ExpiryCutoffs {
    /// The cutoffs at `now` for reservations kept `retention` after they were made.
    pub fn at(now: DateTime<Utc>, retention: Duration) -> Self {
        let age = |d: Duration| chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
        let back = |d: Duration| now.checked_sub_signed(age(d)).unwrap_or(DateTime::<Utc>::MIN_UTC);
        Self {
            completed_before: back(retention),
            in_progress_before: back(retention.saturating_add(IN_PROGRESS_MARGIN)),
        }
    }
}

/// Idempotency keys, scoped by tenant and operation.
///
/// The reservation records the id of the resource the first request creates before the command
/// runs, so a retry after a crash re-runs the command against the same id: the event store's
/// expected-version check then stops a second append.
///
/// Reservations expire (see [`ExpiryCutoffs`]): `reserve` treats an expired one as free, and
/// `sweep_expired` deletes them so the table does not grow without bound.
#[async_trait]
pub trait IdempotencyStore: Send + Sync + 'static {
    /// Reserves `key` for `resource_id` at `now` unless it is already taken; atomic.
    async fn reserve(
        &self,
        tenant_id: &str,
        operation: &str,
        key: &str,
        request_hash: &str,
        resource_id: &str,
        now: DateTime<Utc>,
    ) -> Result<Reservation, StoreError>;

    /// Records the response of the request that reserved `key`.
    async fn complete(
        &self,
        tenant_id: &str,
        operation: &str,
        key: &str,
        response: &StoredResponse,
    ) -> Result<(), StoreError>;

    /// Deletes at most `limit` reservations that have expired at `now`, returning how many it
    /// deleted; call it again while it returns `limit`. Each call is one short transaction, so
    /// the event store's writer sharing the file never waits long.
    async fn sweep_expired(&self, now: DateTime<Utc>, limit: usize) -> Result<usize, StoreError>;
}
