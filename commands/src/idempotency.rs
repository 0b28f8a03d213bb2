//! `Idempotency-Key` on POSTs: the same key with the same body replays the first response and
//! appends nothing; the same key with another body is refused.

use std::sync::Arc;

use store::{IdempotencyStore, Reservation, StoreError, StoredResponse};

/// What to do with a request that carries an idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdempotentRequest {
    /// Run the command for `resource_id`: the id reserved when the key was first seen (a retry
    /// after a crash gets the same one, so the store's version check prevents a second append).
    Proceed { resource_id: String },
    /// The first request finished: answer with its response again.
    Replay(StoredResponse),
    /// The key was used with a different request.
    KeyReused,
}

#[derive(Clone)]
pub struct Idempotency {
    store: Arc<dyn IdempotencyStore>,
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

impl Idempotency {
    pub fn new(store: Arc<dyn IdempotencyStore>) -> Self {
        Self { store }
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
        Ok(match self.store.reserve(tenant_id, operation, key, &hash, fresh_id).await? {
            Reservation::New => IdempotentRequest::Proceed { resource_id: fresh_id.into() },
            Reservation::Existing { request_hash, .. } if request_hash != hash => IdempotentRequest::KeyReused,
            Reservation::Existing { response: Some(response), .. } => IdempotentRequest::Replay(response),
            Reservation::Existing { resource_id, response: None, .. } => IdempotentRequest::Proceed { resource_id },
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
}
