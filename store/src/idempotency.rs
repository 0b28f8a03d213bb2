use async_trait::async_trait;

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

/// Idempotency keys, scoped by tenant and operation.
///
/// The reservation records the id of the resource the first request creates before the command
/// runs, so a retry after a crash re-runs the command against the same id: the event store's
/// expected-version check then stops a second append.
#[async_trait]
pub trait IdempotencyStore: Send + Sync + 'static {
    /// Reserves `key` for `resource_id` unless it is already taken; atomic.
    async fn reserve(
        &self,
        tenant_id: &str,
        operation: &str,
        key: &str,
        request_hash: &str,
        resource_id: &str,
    ) -> Result<Reservation, StoreError>;

    /// Records the response of the request that reserved `key`.
    async fn complete(
        &self,
        tenant_id: &str,
        operation: &str,
        key: &str,
        response: &StoredResponse,
    ) -> Result<(), StoreError>;
}
