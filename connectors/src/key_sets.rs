//! Providers' key sets (JWKS) for JWS deliveries: fetched the way webhooks go out (the URL is
//! the tenant's to choose, so through the webhook egress rules) and kept for a while per URL.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::egress::{EgressAllowList, check_webhook_endpoint, read_capped, webhook_client};
use crate::jws::JwkSet;

/// How long a fetched key set is used before it is fetched again.
const TTL: Duration = Duration::from_secs(300);
const MAX_BYTES: usize = 1024 * 1024;
const TIMEOUT: Duration = Duration::from_secs(5);

/// Why a provider's key set cannot verify anything.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum KeySetError {
    #[error("the provider's key set is unavailable: {0}")]
    Unavailable(String),
    #[error("the provider's key set is unusable: {0}")]
    Unusable(String),
}

/// The key sets of the providers whose deliveries this process verifies, by URL.
pub struct ProviderKeySets {
    allow: Arc<EgressAllowList>,
    fetched: Mutex<HashMap<String, (Instant, Arc<JwkSet>)>>,
}

impl ProviderKeySets {
    /// Fetching only what `allow` lets webhooks reach besides public `https` hosts.
    pub fn new(allow: Arc<EgressAllowList>) -> Self {
        Self { allow, fetched: Mutex::default() }
    }

    /// The key set at `source`, an `https://` URL (plain `http://` only for allow-listed hosts),
    /// fetched when not held or older than five minutes.
    pub async fn get(&self, source: &str) -> Result<Arc<JwkSet>, KeySetError> {
        if let Some((at, set)) = self.fetched.lock().unwrap_or_else(PoisonError::into_inner).get(source)
            && at.elapsed() < TTL
        {
            return Ok(set.clone());
        }
        let bytes = self.fetch(source).await.map_err(KeySetError::Unavailable)?;
        let set = Arc::new(JwkSet::parse(&bytes).map_err(|e| KeySetError::Unusable(e.to_string()))?);
        self.fetched
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(source.to_owned(), (Instant::now(), set.clone()));
        Ok(set)
    }

    /// Drops the key set at `source`: a delivery signed with a key it lacks may mean the
    /// provider rotated its keys, so the next delivery fetches it again.
    pub fn forget(&self, source: &str) {
        self.fetched.lock().unwrap_or_else(PoisonError::into_inner).remove(source);
    }

    /// Every address checked at connect time, so neither a name nor a redirect reaches a
    /// private address; the body read up to 1 MiB.
    async fn fetch(&self, source: &str) -> Result<Vec<u8>, String> {
        let url = check_webhook_endpoint(source, &self.allow).map_err(|why| format!("webhookJwks {why}"))?;
        let client = webhook_client(self.allow.clone(), TIMEOUT).map_err(|e| e.to_string())?;
        let response = client.get(url).timeout(TIMEOUT).send().await.map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("the JWKS endpoint answered {}", response.status()));
        }
        let body = read_capped(response, MAX_BYTES).await.map_err(|e| e.to_string())?;
        if body.truncated {
            return Err("the key set is larger than 1 MiB".into());
        }
        Ok(body.bytes)
    }
}
