//! The identity provider's key set (JWKS): keys pinned to one algorithm each, cached, and
//! fetched again on an unknown `kid` (at most every 30 s) or when older than ten minutes, by the
//! engine's one key-set cache and JWK parser (`connectors::key_sets`, `connectors::jwk`).

use connectors::jwk;
use connectors::key_sets::{CacheTuning, KeySetCache};

use super::*;

pub(super) struct VerificationKey {
    pub(super) algorithm: Algorithm,
    pub(super) decoding_key: DecodingKey,
}

pub(super) struct KeySet {
    pub(super) keys: HashMap<String, Arc<VerificationKey>>,
}

/// The identity provider's key set, in the engine's one key-set cache
/// ([`connectors::key_sets::KeySetCache`]): loaded at start, refreshed when older than
/// `jwks_max_age`, fetched again on an unknown `kid` at most every `jwks_refetch_interval`.
pub(super) struct JwksCache {
    pub(super) fetcher: JwksFetcher,
    cache: KeySetCache<KeySet>,
}

/// The cache's one key: the cache holds the identity provider's set only.
const SOURCE: &str = "identity-provider";

impl JwksCache {
    pub(super) async fn load(source: JwksSource, tuning: Tuning) -> Result<Self, AuthError> {
        let fetcher = JwksFetcher::new(source)?;
        let keys = fetcher.fetch().await?;
        tracing::info!(source = ?fetcher, keys = keys.keys.len(), "JWKS loaded");
        let cache = KeySetCache::new(CacheTuning {
            refetch_interval: tuning.jwks_refetch_interval,
            max_age: tuning.jwks_max_age,
        });
        // The start-up load does not count against the refetch interval, so a key rotated in
        // right after start is still picked up by the first token that uses it.
        cache.hold(SOURCE, keys);
        Ok(Self { fetcher, cache })
    }

    /// The key named `kid`; `None` when the provider's set lacks it even after fetching it
    /// again (or when it was fetched too recently to try), an error when that fetch failed.
    pub(super) async fn key_for(&self, kid: &str) -> Result<Option<Arc<VerificationKey>>, AuthError> {
        let fetch = || async {
            let fetched = self.fetcher.fetch().await;
            match &fetched {
                Ok(keys) => tracing::info!(source = ?self.fetcher, keys = keys.keys.len(), "JWKS re-fetched"),
                // The keys held stay in use: an outage must not lock out every caller.
                Err(error) => tracing::warn!(source = ?self.fetcher, %error, "JWKS re-fetch failed"),
            }
            fetched.map_err(|e| match e {
                AuthError::JwksUnavailable { reason } => reason,
                other => other.to_string(),
            })
        };
        let unavailable = |reason| AuthError::JwksUnavailable { reason };
        let held = self.cache.get(SOURCE, fetch).await.map_err(unavailable)?;
        if let Some(key) = held.keys.get(kid) {
            return Ok(Some(key.clone()));
        }
        let set = self.cache.refetch(SOURCE, |set| set.keys.contains_key(kid), fetch).await.map_err(unavailable)?;
        Ok(set.keys.get(kid).cloned())
    }
}

pub(super) enum JwksFetcher {
    File(PathBuf),
    Url { url: reqwest::Url, client: reqwest::Client },
}

impl fmt::Debug for JwksFetcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(path) => write!(f, "{}", path.display()),
            Self::Url { url, .. } => write!(f, "{url}"),
        }
    }
}

impl JwksFetcher {
    pub(super) fn new(source: JwksSource) -> Result<Self, AuthError> {
        match source {
            JwksSource::File(path) => Ok(Self::File(path)),
            JwksSource::Url(url) => {
                let url = reqwest::Url::parse(&url)
                    .map_err(|e| AuthError::misconfigured(format!("invalid JWKS URL {url:?}: {e}")))?;
                // Whoever can rewrite the JWKS in transit can mint tokens, so it must come over
                // TLS; loopback is exempt for sidecars and tests.
                let acceptable = match url.scheme() {
                    "https" => true,
                    "http" => is_loopback_host(url.host_str().unwrap_or_default()),
                    _ => false,
                };
                if !acceptable {
                    return Err(AuthError::misconfigured(format!(
                        "the JWKS URL {url} must use https (http only on loopback)"
                    )));
                }
                let client = reqwest::Client::builder()
                    .timeout(JWKS_FETCH_TIMEOUT)
                    .connect_timeout(JWKS_FETCH_TIMEOUT)
                    // A redirect could lead off TLS or to another host; identity providers
                    // publish their JWKS at a fixed address.
                    .redirect(reqwest::redirect::Policy::none())
                    .build()
                    .map_err(|e| AuthError::misconfigured(format!("cannot build the JWKS client: {e}")))?;
                Ok(Self::Url { url, client })
            }
        }
    }

    pub(super) async fn fetch(&self) -> Result<KeySet, AuthError> {
        let document = match self {
            Self::File(path) => {
                let bytes = tokio::fs::read(path).await.map_err(|e| AuthError::JwksUnavailable {
                    reason: format!("cannot read {}: {e}", path.display()),
                })?;
                if bytes.len() > MAX_JWKS_BYTES {
                    return Err(AuthError::JwksUnavailable {
                        reason: format!("{} is larger than {MAX_JWKS_BYTES} bytes", path.display()),
                    });
                }
                bytes
            }
            Self::Url { url, client } => fetch_url(client, url)
                .await
                .map_err(|reason| AuthError::JwksUnavailable { reason: format!("GET {url}: {reason}") })?,
        };
        let keys = parse_jwks(&document).map_err(|reason| AuthError::JwksUnavailable { reason })?;
        Ok(KeySet { keys })
    }
}

pub(super) fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

pub(super) async fn fetch_url(client: &reqwest::Client, url: &reqwest::Url) -> Result<Vec<u8>, String> {
    let mut response = client
        .get(url.clone())
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("status {}", response.status()));
    }
    let too_large = || format!("the body is larger than {MAX_JWKS_BYTES} bytes");
    if response.content_length().is_some_and(|len| len > MAX_JWKS_BYTES as u64) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
        if body.len() + chunk.len() > MAX_JWKS_BYTES {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The identity provider's keys by `kid`, read by the engine's one JWK parser
/// ([`connectors::jwk`]). Keys it skips, keys without a `kid` and keys whose `kid` repeats an
/// earlier one are left out with a warning; a set with no key left is an error.
pub(super) fn parse_jwks(document: &[u8]) -> Result<HashMap<String, Arc<VerificationKey>>, String> {
    let parsed = jwk::parse_set(document)?;
    for reason in &parsed.skipped {
        tracing::warn!(%reason, "skipping an unusable JWK");
    }
    let mut keys = HashMap::new();
    for key in parsed.keys {
        let Some(kid) = key.kid.clone() else {
            tracing::warn!("skipping a JWK without kid");
            continue;
        };
        match verification_key(&key) {
            Ok(verification) => match keys.entry(kid) {
                Entry::Vacant(slot) => {
                    slot.insert(Arc::new(verification));
                }
                Entry::Occupied(taken) => {
                    tracing::warn!(kid = %taken.key(), "skipping a JWK whose kid repeats an earlier key");
                }
            },
            Err(reason) => tracing::warn!(%kid, %reason, "skipping an unusable JWK"),
        }
    }
    if keys.is_empty() {
        return Err("the JWKS holds no usable signing key".to_owned());
    }
    Ok(keys)
}

/// The `jsonwebtoken` key of a parsed JWK, with the algorithm the JWK is pinned to.
pub(super) fn verification_key(key: &jwk::PublicJwk) -> Result<VerificationKey, String> {
    let base64 = |bytes: &[u8]| URL_SAFE_NO_PAD.encode(bytes);
    let (algorithm, decoding_key) = match &key.material {
        jwk::KeyMaterial::Rsa { n, e } => {
            let algorithm = match key.algorithm {
                jwk::Algorithm::Rs384 => Algorithm::RS384,
                jwk::Algorithm::Rs512 => Algorithm::RS512,
                _ => Algorithm::RS256,
            };
            (algorithm, DecodingKey::from_rsa_raw_components(n, e))
        }
        jwk::KeyMaterial::P256 { x, y } => {
            let key = DecodingKey::from_ec_components(&base64(x), &base64(y)).map_err(|err| err.to_string())?;
            (Algorithm::ES256, key)
        }
        jwk::KeyMaterial::Ed25519 { x } => {
            (Algorithm::EdDSA, DecodingKey::from_ed_components(&base64(x)).map_err(|err| err.to_string())?)
        }
    };
    // Building a verifier parses the key (curve point, Edwards point), so a broken key is
    // reported when the JWKS is loaded instead of on every token.
    if let Some(provider) = CryptoProvider::try_get_default() {
        (provider.verifier_factory)(&algorithm, &decoding_key).map_err(|err| err.to_string())?;
    }
    Ok(VerificationKey { algorithm, decoding_key })
}
