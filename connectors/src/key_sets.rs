//! Key sets (JWKS) kept per source: the one cache of the identity provider's key set (bearer
//! tokens, `api::auth`) and of providers' key sets (JWS deliveries, [`ProviderKeySets`]).
//!
//! A set is fetched when first needed and again when it is older than `max_age`, so a key its
//! source withdrew (rotation, compromise) stops verifying; a failed refresh keeps the keys held,
//! so an outage at the source locks nobody out. A signature naming a key the held set lacks
//! fetches it again, since the source may have rotated, but at most every `refetch_interval`
//! per source: made-up key ids cannot turn the engine into a load generator against the source.
//! One fetch per source at a time; concurrent misses wait for it and share its answer.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::egress::{EgressAllowList, check_webhook_endpoint, read_capped, webhook_client};
use crate::jws::JwkSet;

/// How often a set is fetched again at most, and how old it may grow before it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheTuning {
    /// The shortest time between two fetches of one source caused by unknown keys (and the time
    /// a failed fetch is answered from memory instead of tried again).
    pub refetch_interval: Duration,
    /// How long a fetched set is used before it is fetched again.
    pub max_age: Duration,
}

/// Key sets of type `K` by source (a URL or a file path).
pub struct KeySetCache<K> {
    tuning: CacheTuning,
    sources: Mutex<HashMap<String, Arc<Source<K>>>>,
}

struct Source<K> {
    held: RwLock<Option<Held<K>>>,
    /// Held across a fetch on purpose: it is the single flight concurrent misses queue on.
    attempts: tokio::sync::Mutex<Attempts>,
}

struct Held<K> {
    keys: Arc<K>,
    fetched_at: Instant,
}

#[derive(Default)]
struct Attempts {
    /// The last fetch an unknown key caused: the next waits `refetch_interval`.
    last_refetch: Option<Instant>,
    /// When and why the last fetch failed: answered again for `refetch_interval` instead of
    /// trying again.
    last_failure: Option<(Instant, String)>,
}

impl Attempts {
    fn recent_failure(&self, interval: Duration) -> Option<String> {
        self.last_failure.as_ref().filter(|(at, _)| at.elapsed() < interval).map(|(_, why)| why.clone())
    }

    fn may_refetch(&self, interval: Duration) -> bool {
        self.last_refetch.is_none_or(|at| at.elapsed() >= interval)
    }
}

impl<K: Send + Sync + 'static> KeySetCache<K> {
    pub fn new(tuning: CacheTuning) -> Self {
        Self { tuning, sources: Mutex::default() }
    }

    /// Starts with `keys` for `source`, fetched by the caller (a start-up load).
    pub fn hold(&self, source: &str, keys: K) {
        *self.source(source).held.write().unwrap_or_else(PoisonError::into_inner) =
            Some(Held { keys: Arc::new(keys), fetched_at: Instant::now() });
    }

    /// The key set of `source`: the one held, refreshed by `fetch` once it is older than
    /// `max_age` (the old one is answered while another task refreshes it or when the refresh
    /// fails); fetched when none is held yet.
    pub async fn get<F, Fut>(&self, source: &str, fetch: F) -> Result<Arc<K>, String>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<K, String>>,
    {
        let entry = self.source(source);
        match entry.held() {
            Some((keys, fetched_at)) if fetched_at.elapsed() < self.tuning.max_age => Ok(keys),
            Some((keys, _)) => {
                // Stale: refresh, but never queue behind a fetch in flight and never fail a
                // caller because the source blipped.
                if let Ok(mut attempts) = entry.attempts.try_lock()
                    && attempts.recent_failure(self.tuning.refetch_interval).is_none()
                {
                    return Ok(entry.fetch(&mut attempts, fetch).await.unwrap_or(keys));
                }
                Ok(keys)
            }
            None => {
                let mut attempts = entry.attempts.lock().await;
                // Whoever held the lock before us may have fetched it.
                if let Some((keys, _)) = entry.held() {
                    return Ok(keys);
                }
                if let Some(failure) = attempts.recent_failure(self.tuning.refetch_interval) {
                    return Err(failure);
                }
                entry.fetch(&mut attempts, fetch).await
            }
        }
    }

    /// The key set of `source` after a signature named a key the held set lacks (`has_key`
    /// tells whether a set holds it): fetched again by `fetch`, unless an unknown key caused a
    /// fetch within `refetch_interval` or a fetch failed within it (then the set held is
    /// answered, or that failure). `Ok` does not promise the key is there: the caller looks.
    pub async fn refetch<F, Fut>(&self, source: &str, has_key: impl Fn(&K) -> bool, fetch: F) -> Result<Arc<K>, String>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<K, String>>,
    {
        let entry = self.source(source);
        let mut attempts = entry.attempts.lock().await;
        let held = entry.held();
        // Whoever held the lock before us may just have fetched the key.
        if let Some((keys, _)) = held.as_ref().filter(|(keys, _)| has_key(keys)) {
            return Ok(keys.clone());
        }
        let interval = self.tuning.refetch_interval;
        if let Some(failure) = attempts.recent_failure(interval) {
            return Err(failure);
        }
        if !attempts.may_refetch(interval) {
            return held.map(|(keys, _)| keys).ok_or_else(|| "the key set has not been fetched yet".into());
        }
        attempts.last_refetch = Some(Instant::now());
        entry.fetch(&mut attempts, fetch).await
    }

    fn source(&self, source: &str) -> Arc<Source<K>> {
        let mut sources = self.sources.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(held) = sources.get(source) {
            return held.clone();
        }
        sources
            .entry(source.to_owned())
            .or_insert_with(|| Arc::new(Source { held: RwLock::new(None), attempts: Default::default() }))
            .clone()
    }
}

impl<K> Source<K> {
    fn held(&self) -> Option<(Arc<K>, Instant)> {
        self.held.read().unwrap_or_else(PoisonError::into_inner).as_ref().map(|h| (h.keys.clone(), h.fetched_at))
    }

    /// Fetches with the attempts' lock held, and keeps what it got.
    async fn fetch<F, Fut>(&self, attempts: &mut Attempts, fetch: F) -> Result<Arc<K>, String>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<K, String>>,
    {
        match fetch().await {
            Ok(keys) => {
                attempts.last_failure = None;
                let keys = Arc::new(keys);
                *self.held.write().unwrap_or_else(PoisonError::into_inner) =
                    Some(Held { keys: keys.clone(), fetched_at: Instant::now() });
                Ok(keys)
            }
            Err(failure) => {
                attempts.last_failure = Some((Instant::now(), failure.clone()));
                Err(failure)
            }
        }
    }
}

/// How long a fetched provider key set is used before it is fetched again.
const PROVIDER_MAX_AGE: Duration = Duration::from_secs(300);
/// The shortest time between two fetches of a provider's key set caused by unknown keys.
const PROVIDER_REFETCH_INTERVAL: Duration = Duration::from_secs(30);
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

/// The key sets of the providers whose JWS deliveries this process verifies, by URL, fetched
/// through the webhook egress rules (the URL is the tenant's to choose).
pub struct ProviderKeySets {
    allow: Arc<EgressAllowList>,
    cache: KeySetCache<JwkSet>,
}

impl ProviderKeySets {
    /// Fetching only what `allow` lets webhooks reach besides public `https` hosts.
    pub fn new(allow: Arc<EgressAllowList>) -> Self {
        let tuning = CacheTuning { refetch_interval: PROVIDER_REFETCH_INTERVAL, max_age: PROVIDER_MAX_AGE };
        Self { allow, cache: KeySetCache::new(tuning) }
    }

    /// The key set at `source`, an `https://` URL (plain `http://` only for allow-listed hosts),
    /// fetched when not held or older than five minutes.
    pub async fn get(&self, source: &str) -> Result<Arc<JwkSet>, KeySetError> {
        self.cache.get(source, || self.fetch(source)).await.map_err(KeySetError::from_reason)
    }

    /// The key set at `source` fetched again after a delivery was signed with a key it lacks
    /// (the provider may have rotated its keys), at most every 30 s.
    pub async fn refetch(&self, source: &str) -> Result<Arc<JwkSet>, KeySetError> {
        self.cache.refetch(source, |_| false, || self.fetch(source)).await.map_err(KeySetError::from_reason)
    }

    /// Why the key set at `source` could never be fetched (the webhook egress rules refuse its
    /// URL), checked when a connection names it.
    pub fn refused_source(&self, source: &str) -> Option<String> {
        check_webhook_endpoint(source, &self.allow).err()
    }

    /// Every address checked at connect time, so neither a name nor a redirect reaches a
    /// private address; the body read up to 1 MiB and parsed.
    async fn fetch(&self, source: &str) -> Result<JwkSet, String> {
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
        JwkSet::parse(&body.bytes).map_err(|e| format!("{UNUSABLE}{e}"))
    }
}

/// Marks a fetched set that does not parse, so the answer can say "unusable", not "unavailable".
const UNUSABLE: &str = "unusable: ";

impl KeySetError {
    fn from_reason(reason: String) -> Self {
        match reason.strip_prefix(UNUSABLE) {
            Some(why) => Self::Unusable(why.to_owned()),
            None => Self::Unavailable(reason),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    const TUNING: CacheTuning =
        CacheTuning { refetch_interval: Duration::from_millis(200), max_age: Duration::from_millis(400) };

    /// A source whose fetches are counted and answer `version` (or fail while `down`).
    #[derive(Default)]
    struct Counted {
        fetches: AtomicUsize,
        down: std::sync::atomic::AtomicBool,
    }

    impl Counted {
        async fn fetch(&self) -> Result<usize, String> {
            let n = self.fetches.fetch_add(1, Ordering::SeqCst) + 1;
            tokio::task::yield_now().await;
            if self.down.load(Ordering::SeqCst) { Err(format!("down at fetch {n}")) } else { Ok(n) }
        }

        fn count(&self) -> usize {
            self.fetches.load(Ordering::SeqCst)
        }
    }

    #[tokio::test]
    async fn concurrent_first_gets_share_one_fetch_and_a_set_is_kept_until_it_is_old() {
        let (cache, source) = (KeySetCache::new(TUNING), Counted::default());
        let gets = (0..8).map(|_| cache.get("s", || source.fetch()));
        let sets = futures::future::join_all(gets).await;
        assert!(sets.iter().all(|set| set.as_deref() == Ok(&1)), "{sets:?}");
        assert_eq!(source.count(), 1);
        assert_eq!(cache.get("s", || source.fetch()).await.as_deref(), Ok(&1));
        assert_eq!(source.count(), 1, "young sets are not fetched again");

        tokio::time::sleep(TUNING.max_age).await;
        assert_eq!(cache.get("s", || source.fetch()).await.as_deref(), Ok(&2), "an old set is refreshed");
    }

    #[tokio::test]
    async fn an_outage_keeps_the_held_keys_and_is_not_hammered() {
        let (cache, source) = (KeySetCache::new(TUNING), Counted::default());
        cache.get("s", || source.fetch()).await.unwrap();
        source.down.store(true, Ordering::SeqCst);
        tokio::time::sleep(TUNING.max_age).await;
        assert_eq!(cache.get("s", || source.fetch()).await.as_deref(), Ok(&1), "the old keys stay in use");
        assert_eq!(source.count(), 2);

        // An unknown key right after the failed refresh is answered with that failure, unfetched.
        let refetched = cache.refetch("s", |_| false, || source.fetch()).await;
        assert_eq!(refetched, Err("down at fetch 2".to_owned()));
        assert_eq!(source.count(), 2);
    }

    #[tokio::test]
    async fn unknown_keys_fetch_again_at_most_once_per_interval() {
        let (cache, source) = (KeySetCache::new(TUNING), Counted::default());
        cache.get("s", || source.fetch()).await.unwrap();
        let lacks_key = |_: &usize| false;
        // The first unknown key fetches at once, even right after the first fetch (a provider
        // may rotate at any moment); the next ones within the interval do not.
        for _ in 0..5 {
            assert_eq!(cache.refetch("s", lacks_key, || source.fetch()).await.as_deref(), Ok(&2));
        }
        assert_eq!(source.count(), 2, "one refetch within the interval");
        tokio::time::sleep(TUNING.refetch_interval).await;
        let sets = futures::future::join_all((0..5).map(|_| cache.refetch("s", lacks_key, || source.fetch()))).await;
        assert!(sets.iter().all(|set| set.as_deref() == Ok(&3)), "{sets:?}");
        assert_eq!(source.count(), 3, "a burst of unknown keys fetches once");
        // A set that has the key is answered without a fetch.
        assert_eq!(cache.refetch("s", |n| *n == 3, || source.fetch()).await.as_deref(), Ok(&3));
        assert_eq!(source.count(), 3);
    }

    #[tokio::test]
    async fn sources_are_kept_apart() {
        let cache = KeySetCache::new(TUNING);
        cache.hold("a", 10);
        assert_eq!(cache.get("a", || async { Ok(0) }).await.as_deref(), Ok(&10));
        assert_eq!(cache.get("b", || async { Ok(20) }).await.as_deref(), Ok(&20));
    }
}
