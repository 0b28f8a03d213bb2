//! Verified tokens' principals, cached by the token's digest.

use super::*;

pub(super) type TokenDigest = [u8; 32];

pub(super) fn token_digest(token: &str) -> TokenDigest {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut key = [0u8; 32];
    key.copy_from_slice(digest.as_ref());
    key
}

pub(super) struct CachedPrincipal {
    pub(super) principal: Principal,
    pub(super) expires_at: u64,
}

/// Principals of verified tokens, keyed by the token's SHA-256 so the cache never holds a
/// usable credential. An entry is served only while `now < exp`.
pub(super) struct TokenCache {
    pub(super) capacity: usize,
    pub(super) entries: HashMap<TokenDigest, CachedPrincipal>,
}

impl TokenCache {
    pub(super) fn new(capacity: usize) -> Self {
        Self { capacity: capacity.max(1), entries: HashMap::new() }
    }

    pub(super) fn get(&mut self, key: &TokenDigest, now: u64) -> Option<Principal> {
        let entry = self.entries.get(key)?;
        if now < entry.expires_at {
            return Some(entry.principal.clone());
        }
        self.entries.remove(key);
        None
    }

    pub(super) fn insert(&mut self, key: TokenDigest, principal: Principal, expires_at: u64, now: u64) {
        // Accepted inside the leeway but already past exp: caching would serve nothing.
        if now >= expires_at {
            return;
        }
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&key) {
            self.evict(now);
        }
        self.entries.insert(key, CachedPrincipal { principal, expires_at });
    }

    /// Drops expired entries, then if still full the tenth expiring soonest, so the O(n) scan
    /// runs once per many inserts rather than on each.
    pub(super) fn evict(&mut self, now: u64) {
        self.entries.retain(|_, entry| now < entry.expires_at);
        if self.entries.len() < self.capacity {
            return;
        }
        let mut expiries: Vec<u64> = self.entries.values().map(|e| e.expires_at).collect();
        let cut = (self.capacity / 10).max(1).min(expiries.len()) - 1;
        let (_, threshold, _) = expiries.select_nth_unstable(cut);
        let threshold = *threshold;
        self.entries.retain(|_, entry| entry.expires_at > threshold);
    }
}

pub(super) fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_secs())
}
