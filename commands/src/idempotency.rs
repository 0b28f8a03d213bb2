//! `Idempotency-Key` on POSTs: the same key with the same body replays the first response and
//! appends nothing; the same key with another body is refused.
//!
//! Keys expire: a reservation is kept for the store's retention (24 hours by default, like
//! Stripe) after it was made. A retry with an expired key is executed again as a new request
//! (new resource id, new events), as Stripe documents; [`Idempotency::sweep_periodically`]
//! deletes expired reservations so the table stays bounded.

use std::sync::Arc;
use std::time::Duration;

use crate::Clock;
use store::{IdempotencyStore, Reservation, StoreError, StoredResponse};

/// What to do with a request that carries an idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdempotentRequest {
    /// Run the command for `resource_id`: the id reserved when the key was first seen (a retry
    /// after a crash gets the same one, so the store's version check prevents a second append).
    /// `repeated`: the key was reserved by an earlier request, still running (a concurrent
    /// retry) or gone (it crashed); this one's answer repeats that request's.
    Proceed { resource_id: String, repeated: bool },
    /// The first request finished: answer with its response again.
    Replay(StoredResponse),
    /// The key was used with a different request.
    KeyReused,
}

#[derive(Clone)]
pub struct Idempotency {
    store: Arc<dyn IdempotencyStore>,
    /// What dates reservations and decides which the sweep finds expired.
    clock: Arc<dyn Clock>,
}

/// Keys are opaque to us but bounded: printable ASCII, 1 to 255 characters.
pub fn is_valid_key(key: &str) -> bool {
    (1..=255).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic())
}

/// A digest of everything that makes two requests "the same": operation and body bytes.
pub fn request_hash(operation: &str, body: &[u8]) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(operation.as_bytes());
    ctx.update(&[0]);
    ctx.update(body);
    hex::encode(ctx.finish())
}

/// How many reservations one sweep statement deletes: one short write transaction, so the event
/// store's writer, which shares the file, waits at most a few milliseconds.
pub const SWEEP_BATCH: usize = 500;
/// The pause between two batches of a sweep, leaving the file's write lock to the event store.
const SWEEP_PAUSE: Duration = Duration::from_millis(20);
/// How often `serve` sweeps; expiry itself is exact (an expired key is free at once), the sweep
/// only reclaims space.
pub const SWEEP_EVERY: Duration = Duration::from_secs(15 * 60);

impl Idempotency {
    pub fn new(store: Arc<dyn IdempotencyStore>, clock: Arc<dyn Clock>) -> Self {
        Self { store, clock }
    }

    /// Reserves `key` for a request that would create `fresh_id`, or finds the earlier use.
    pub async fn begin(
        &self,
        tenant_id: &str,
        operation: &str,
        key: &str,
        body: &[u8],
        fresh_id: &str,
    ) -> Result<IdempotentRequest, StoreError> {
        let hash = request_hash(operation, body);
        Ok(match self.store.reserve(tenant_id, operation, key, &hash, fresh_id, self.clock.now()).await? {
            Reservation::New => IdempotentRequest::Proceed { resource_id: fresh_id.into(), repeated: false },
            Reservation::Existing { request_hash, .. } if request_hash != hash => IdempotentRequest::KeyReused,
            Reservation::Existing { response: Some(response), .. } => IdempotentRequest::Replay(response),
            Reservation::Existing { resource_id, response: None, .. } => {
                IdempotentRequest::Proceed { resource_id, repeated: true }
            }
        })
    }

    /// Keeps the response of the request that reserved `key`.
    pub async fn finish(
        &self,
        tenant_id: &str,
        operation: &str,
        key: &str,
        response: &StoredResponse,
    ) -> Result<(), StoreError> {
        self.store.complete(tenant_id, operation, key, response).await
    }

    /// Deletes every reservation expired at the current time, [`SWEEP_BATCH`] at a time (each
    /// batch runs on the blocking pool), and returns how many it deleted.
    pub async fn sweep(&self) -> Result<usize, StoreError> {
        let now = self.clock.now();
        let mut total = 0;
        loop {
            let deleted = self.store.sweep_expired(now, SWEEP_BATCH).await?;
            total += deleted;
            if deleted < SWEEP_BATCH {
                return Ok(total);
            }
            tokio::time::sleep(SWEEP_PAUSE).await;
        }
    }

    /// Sweeps now and then every `every`, forever: spawn it and abort the task to stop. A failed
    /// sweep is logged and tried again at the next tick.
    pub async fn sweep_periodically(self, every: Duration) {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            match self.sweep().await {
                Ok(0) => {}
                Ok(deleted) => tracing::info!(deleted, "expired idempotency keys swept"),
                Err(error) => tracing::warn!(%error, "sweeping expired idempotency keys failed; trying again later"),
            }
        }
    }
}
