//! Verified tokens' principals, cached by the token's digest.

use super::*;

pub(super) type TokenDigest = [u8; 32];

pub(super) fn token_digest(token: &str) -> TokenDigest {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut key = [0u8; 32];
    key.copy_from_slice(digest.as_ref());
    key
}

#[derive(Clone)]
pub(super) struct CachedPrincipal {
    pub(super) principal: Principal,
    pub(super) expires_at: u64,
}

/// Principals of verified tokens, keyed by the token's SHA-256 so the cache never holds a
/// usable credential. An entry is served only while `now < exp`. Bounded by `quick_cache`
/// (the engine's cache crate), which keeps the tokens used often when it is full; it needs no
/// lock around it, so concurrent requests do not queue on the cache.
pub(super) struct TokenCache {
    pub(super) entries: quick_cache::sync::Cache<TokenDigest, CachedPrincipal>,
}

impl TokenCache {
    pub(super) fn new(capacity: usize) -> Self {
        Self { entries: quick_cache::sync::Cache::new(capacity.max(1)) }
    }

    pub(super) fn get(&self, key: &TokenDigest, now: u64) -> Option<Principal> {
        let entry = self.entries.get(key)?;
        if now < entry.expires_at {
            return Some(entry.principal);
        }
        self.entries.remove(key);
        None
    }

    pub(super) fn insert(&self, key: TokenDigest, principal: Principal, expires_at: u64, now: u64) {
        // Accepted inside the leeway but already past exp: caching would serve nothing.
        if now < expires_at {
            self.entries.insert(key, CachedPrincipal { principal, expires_at });
        }
    }
}

/// The system clock, not a `Clock` port: `jsonwebtoken` checks `exp` and `nbf` against it
/// itself, and a cached token must expire by the same clock that verified it.
pub(super) fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_secs())
}
