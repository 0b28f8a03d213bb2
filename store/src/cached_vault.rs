//! A read-through cache in front of a [`SecretStore`], so hot paths (verifying every inbound
//! webhook) do not decrypt the same secret from disk on each request.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use domain::secret_ref::SecretRef;
use quick_cache::sync::Cache;

use crate::vault::{PreviousSecret, SecretMetadata, SecretStore, SecretValue, VaultError, VaultOwner, VersionMetadata};

/// Entries kept at most of each kind; past it `quick_cache` (the engine's cache crate) keeps the
/// ones used most.
const CAPACITY: usize = 4096;

/// A cached answer and until when it holds (`None`: for good).
type Timed<V> = (V, Option<Instant>);

/// Caches `get`: a pinned version forever (versions are immutable), an unversioned ref (the
/// current version) for `current_ttl`, so a promoted version is picked up within that time.
/// Writes go straight through and drop the secret's unversioned entry.
pub struct CachedSecretStore {
    inner: Arc<dyn SecretStore>,
    current_ttl: Duration,
    entries: Cache<SecretRef, Timed<SecretValue>>,
    previous: Cache<SecretRef, Timed<Option<PreviousSecret>>>,
    /// Vault owners, kept as long as a current version.
    owners: Cache<String, Timed<Option<VaultOwner>>>,
}

impl CachedSecretStore {
    pub fn new(inner: Arc<dyn SecretStore>, current_ttl: Duration) -> Self {
        Self {
            inner,
            current_ttl,
            entries: Cache::new(CAPACITY),
            previous: Cache::new(CAPACITY),
            owners: Cache::new(CAPACITY),
        }
    }

    /// Until when an answer about the current version holds.
    fn current_until(&self) -> Option<Instant> {
        Some(Instant::now() + self.current_ttl)
    }
}

/// The answer `cache` holds for `key`, unless it has expired.
fn fresh<K, Q, V>(cache: &Cache<K, Timed<V>>, key: &Q) -> Option<V>
where
    K: Eq + std::hash::Hash + Clone,
    Q: std::hash::Hash + quick_cache::Equivalent<K> + ?Sized,
    V: Clone,
{
    cache.get(key).filter(|(_, until)| until.is_none_or(|until| Instant::now() < until)).map(|(value, _)| value)
}

impl CachedSecretStore {
    /// Forgets what the labels resolved to (current and previous) for `secret`.
    fn forget_labels(&self, secret: &SecretRef) {
        self.entries.remove(&secret.unversioned());
        self.previous.remove(&secret.unversioned());
    }
}

#[async_trait]
impl SecretStore for CachedSecretStore {
    async fn put(&self, secret: &SecretRef, value: &[u8], expected_current: Option<u32>) -> Result<u32, VaultError> {
        let version = self.inner.put(secret, value, expected_current).await?;
        self.forget_labels(secret);
        Ok(version)
    }

    /// The current version does not change, so nothing cached goes stale.
    async fn stage_pending(
        &self,
        secret: &SecretRef,
        value: &[u8],
        expected_pending: Option<u32>,
    ) -> Result<u32, VaultError> {
        self.inner.stage_pending(secret, value, expected_pending).await
    }

    /// Drops the cached current and previous versions: connections use the promoted version
    /// from the next call on, in this process at once (others within `current_ttl`).
    async fn promote(&self, secret: &SecretRef, version: u32, expected_current: Option<u32>) -> Result<(), VaultError> {
        let promoted = self.inner.promote(secret, version, expected_current).await;
        self.forget_labels(secret);
        promoted
    }

    async fn retire_previous(&self, secret: &SecretRef, version: u32) -> Result<bool, VaultError> {
        let retired = self.inner.retire_previous(secret, version).await;
        self.forget_labels(secret);
        retired
    }

    async fn discard_pending(&self, secret: &SecretRef, version: u32) -> Result<bool, VaultError> {
        self.inner.discard_pending(secret, version).await
    }

    async fn versions(&self, secret: &SecretRef) -> Result<Vec<VersionMetadata>, VaultError> {
        self.inner.versions(secret).await
    }

    async fn get(&self, secret: &SecretRef) -> Result<SecretValue, VaultError> {
        if let Some(value) = fresh(&self.entries, secret) {
            return Ok(value);
        }
        let value = self.inner.get(secret).await?;
        // A pinned version never changes; the current one may.
        let until = if secret.version.is_some() { None } else { self.current_until() };
        self.entries.insert(secret.clone(), (value.clone(), until));
        Ok(value)
    }

    async fn metadata(&self, secret: &SecretRef) -> Result<Option<SecretMetadata>, VaultError> {
        self.inner.metadata(secret).await
    }

    async fn list(&self) -> Result<Vec<SecretMetadata>, VaultError> {
        self.inner.list().await
    }

    /// Cached like the current version (for `current_ttl`): verifying a webhook during a
    /// rotation asks for it on every request.
    async fn owner(&self, vault: &str) -> Result<Option<VaultOwner>, VaultError> {
        if let Some(owner) = fresh(&self.owners, vault) {
            return Ok(owner);
        }
        let owner = self.inner.owner(vault).await?;
        self.owners.insert(vault.to_string(), (owner.clone(), self.current_until()));
        Ok(owner)
    }

    async fn claim(&self, vault: &str, owner: &VaultOwner) -> Result<(), VaultError> {
        self.inner.claim(vault, owner).await?;
        self.owners.remove(vault);
        Ok(())
    }

    async fn previous(&self, secret: &SecretRef) -> Result<Option<PreviousSecret>, VaultError> {
        if let Some(value) = fresh(&self.previous, secret) {
            return Ok(value);
        }
        let value = self.inner.previous(secret).await?;
        self.previous.insert(secret.clone(), (value.clone(), self.current_until()));
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sqlite_vault::{MasterKey, SqliteVault};

    fn secret(text: &str) -> SecretRef {
        SecretRef::parse(text).unwrap()
    }

    #[tokio::test]
    async fn current_versions_expire_and_writes_through_the_cache_are_seen_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let vault: Arc<dyn SecretStore> =
            Arc::new(SqliteVault::open(&dir.path().join("v.db"), MasterKey::from_bytes([1; 32])).unwrap());
        let cached = CachedSecretStore::new(vault.clone(), Duration::from_millis(200));
        let s = secret("kv://v/n");
        cached.put(&s, b"one", None).await.unwrap();
        assert_eq!(cached.get(&s).await.unwrap().value, b"one");

        // Written behind the cache's back: the current value is stale until the TTL passes.
        vault.put(&s, b"two", None).await.unwrap();
        assert_eq!(cached.get(&s).await.unwrap().value, b"one");
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(cached.get(&s).await.unwrap().value, b"two");

        // Written through the cache: seen at once. Pinned versions never change.
        cached.put(&s, b"three", None).await.unwrap();
        assert_eq!(cached.get(&s).await.unwrap().value, b"three");
        assert_eq!(cached.get(&s.with_version(1)).await.unwrap().value, b"one");
        assert!(matches!(cached.get(&secret("kv://v/missing")).await, Err(VaultError::NotFound(_))));
    }
}
