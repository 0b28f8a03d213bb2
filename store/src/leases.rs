//! The `Leases` port: time-bound claims on named work, so that of several workers sharing one
//! store only one does that work at a time (a webhook subscription's deliveries, for one).
//!
//! A lease is not an event: it says who may act now, not what happened, so it lives beside
//! the events (the same database, its own table) and nothing replays it. It expires on its
//! own, so a holder that dies hands its work over without anyone recording that it stopped.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::StoreError;

/// Who holds a lease and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub holder: String,
    pub expires_at: DateTime<Utc>,
}

#[async_trait]
pub trait Leases: Send + Sync {
    /// Takes the lease `name` for `holder` until `expires_at` when nobody holds it, when it
    /// expired by `now`, or when `holder` already holds it (a renewal), in one atomic step.
    /// Answers the lease as it stands afterwards: `holder`'s when taken, else the other
    /// holder's, untouched.
    async fn acquire(
        &self,
        name: &str,
        holder: &str,
        now: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> Result<Lease, StoreError>;

    /// Gives the lease up if `holder` holds it, so another may take it at once.
    async fn release(&self, name: &str, holder: &str) -> Result<(), StoreError>;
}
