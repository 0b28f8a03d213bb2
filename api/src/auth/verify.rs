//! Verifying a bearer token: the [`Authenticator`] checks signature, time, issuer, audience and
//! claims, and keeps the principals of tokens it verified.

use super::*;

/// Verifies bearer tokens. Cheap to clone: clones share the key set and the token cache.
#[derive(Clone)]
pub struct Authenticator {
    pub(super) inner: Arc<AuthenticatorInner>,
}

pub(super) struct AuthenticatorInner {
    pub(super) issuer: String,
    pub(super) audience: String,
    pub(super) leeway_seconds: u64,
    pub(super) roles: Option<RoleRules>,
    pub(super) dev_key: Option<DecodingKey>,
    pub(super) jwks: Option<JwksCache>,
    pub(super) verified_tokens: TokenCache,
}

/// Knobs that tests shorten; production uses [`Tuning::default`].
#[derive(Debug, Clone, Copy)]
pub(super) struct Tuning {
    pub(super) jwks_refetch_interval: Duration,
    pub(super) jwks_max_age: Duration,
    pub(super) token_cache_capacity: usize,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            jwks_refetch_interval: JWKS_REFETCH_INTERVAL,
            jwks_max_age: JWKS_MAX_AGE,
            token_cache_capacity: TOKEN_CACHE_CAPACITY,
        }
    }
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("issuer", &self.inner.issuer)
            .field("audience", &self.inner.audience)
            .field("jwks", &self.inner.jwks.as_ref().map(|j| &j.fetcher))
            .field("dev_tokens", &self.inner.dev_key.is_some())
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// Validates `config` and loads the JWKS now, so a wrong path, URL or key set fails at
    /// start rather than on the first request.
    pub async fn new(config: AuthConfig) -> Result<Self, AuthError> {
        Self::with_tuning(config, Tuning::default()).await
    }

    pub(super) async fn with_tuning(config: AuthConfig, tuning: Tuning) -> Result<Self, AuthError> {
        if config.jwks.is_none() && config.dev_hs256_secret.is_none() {
            return Err(AuthError::misconfigured("configure a JWKS source, or a development secret for HS256 tokens"));
        }
        if config.jwks.is_some() && (config.issuer.is_none() || config.audience.is_none()) {
            return Err(AuthError::misconfigured("a JWKS source requires the expected issuer and audience"));
        }
        if config.leeway_seconds > MAX_LEEWAY_SECONDS {
            return Err(AuthError::misconfigured(format!("the leeway must not exceed {MAX_LEEWAY_SECONDS} seconds")));
        }
        let issuer = config.issuer.unwrap_or_else(|| DEV_ISSUER.to_owned());
        let audience = config.audience.unwrap_or_else(|| DEV_AUDIENCE.to_owned());
        if issuer.trim().is_empty() || audience.trim().is_empty() {
            return Err(AuthError::misconfigured("the issuer and audience must not be empty"));
        }
        let dev_key = match &config.dev_hs256_secret {
            Some(secret) => {
                check_dev_secret(secret)?;
                tracing::warn!("HS256 development tokens are accepted; never enable this in production");
                Some(
                    DecodingKey::from_secret(secret)
                        .map_err(|e| AuthError::misconfigured(format!("unusable development secret: {e}")))?,
                )
            }
            None => None,
        };
        let jwks = match config.jwks {
            Some(source) => Some(JwksCache::load(source, tuning).await?),
            None => None,
        };
        Ok(Self {
            inner: Arc::new(AuthenticatorInner {
                issuer,
                audience,
                leeway_seconds: config.leeway_seconds,
                roles: config.roles,
                dev_key,
                jwks,
                verified_tokens: TokenCache::new(tuning.token_cache_capacity),
            }),
        })
    }

    /// Authenticates a request from its `Authorization` header value (`Bearer <token>`, the
    /// scheme matched case-insensitively). A token verified before is answered from a cache
    /// until its `exp`, so signature checks are paid once per token.
    pub async fn authenticate(&self, authorization_header: Option<&str>) -> Result<Principal, AuthError> {
        let token = bearer_token(authorization_header)?;
        let cache_key = token_digest(token);
        if let Some(principal) = self.cached(&cache_key) {
            return Ok(principal);
        }
        let (principal, expires_at) = self.verify(token).await.inspect_err(|e| {
            tracing::debug!(error = %e, "bearer token refused");
        })?;
        self.inner.verified_tokens.insert(cache_key, principal.clone(), expires_at, unix_now());
        Ok(principal)
    }

    pub(super) fn cached(&self, cache_key: &TokenDigest) -> Option<Principal> {
        self.inner.verified_tokens.get(cache_key, unix_now())
    }

    pub(super) async fn verify(&self, token: &str) -> Result<(Principal, u64), AuthError> {
        let header = peek_header(token)?;
        if header.alg.starts_with("HS") {
            // Only the configured secret ever verifies an HMAC token: a JWKS key used as an
            // HMAC secret is the classic RS256-to-HS256 forgery.
            return match (&self.inner.dev_key, header.alg.as_str()) {
                (Some(dev_key), "HS256") => self.decode(token, dev_key, Algorithm::HS256),
                _ => Err(AuthError::invalid(TokenRejection::HmacNotAccepted)),
            };
        }
        // `none` and anything unknown fail to parse here.
        let token_alg: Algorithm =
            header.alg.parse().map_err(|_| AuthError::invalid(TokenRejection::UnsupportedAlgorithm))?;
        let Some(jwks) = &self.inner.jwks else {
            return Err(AuthError::invalid(TokenRejection::UnsupportedAlgorithm));
        };
        let kid = header.kid.ok_or(AuthError::invalid(TokenRejection::MissingKeyId))?;
        let key = jwks.key_for(&kid).await?.ok_or(AuthError::invalid(TokenRejection::UnknownKeyId))?;
        if key.algorithm != token_alg {
            return Err(AuthError::invalid(TokenRejection::AlgorithmMismatch));
        }
        self.decode(token, &key.decoding_key, key.algorithm)
    }

    pub(super) fn decode(
        &self,
        token: &str,
        key: &DecodingKey,
        algorithm: Algorithm,
    ) -> Result<(Principal, u64), AuthError> {
        // The single allowed algorithm is the key's, never one read from the token.
        let mut validation = Validation::new(algorithm);
        validation.leeway = self.inner.leeway_seconds;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = true;
        validation.set_issuer(&[&self.inner.issuer]);
        validation.set_audience(&[&self.inner.audience]);
        // jsonwebtoken only checks `iss`/`aud` when present; requiring them closes that gap.
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let data = jsonwebtoken::decode::<serde_json::Value>(token, key, &validation)
            .map_err(|e| AuthError::invalid(rejection_from(&e)))?;
        let roles_claim = self.inner.roles.as_ref().map(|rules| rules.claim.as_str());
        principal_from_claims(&data.claims, roles_claim).map_err(AuthError::invalid)
    }

    /// The role policy every request must also satisfy, when one is configured.
    pub fn role_policy(&self) -> Option<&RolePolicy> {
        self.inner.roles.as_ref().map(|rules| &rules.policy)
    }
}
