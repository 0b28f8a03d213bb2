//! OAuth2 bearer-token verification.
//!
//! Access tokens are JWTs signed by the identity provider with RS256, ES256 or EdDSA keys
//! published in a JWKS (a file or a URL). Every token is checked for signature, `exp`, `nbf`
//! (with a small leeway), issuer, audience, subject and the `tenantId` claim, and the algorithm
//! is pinned by the key the token names: the token's header only has to agree with it.
//! HS256 is accepted solely for development tokens signed with an explicitly configured
//! secret (see [`mint_dev_token`]).
//!
//! Failures map onto RFC 6750: a missing credential or a bad token is a 401 carrying
//! [`AuthError::www_authenticate`]; a token that lacks a scope is a 403 carrying
//! [`insufficient_scope_challenge`].

use std::collections::hash_map::Entry;
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::http::StatusCode;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::crypto::CryptoProvider;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// Issuer of development tokens when no issuer is configured.
pub const DEV_ISSUER: &str = "integration-engine-dev";
/// Audience of development tokens when no audience is configured.
pub const DEV_AUDIENCE: &str = "integration-engine";
/// Realm named in the challenge sent when no credential was presented.
pub const REALM: &str = "integration-engine";
/// Clock-skew allowance applied to `exp` and `nbf` unless configured otherwise.
pub const DEFAULT_LEEWAY_SECONDS: u64 = 30;
/// Largest accepted leeway: more would quietly extend every token's life.
pub const MAX_LEEWAY_SECONDS: u64 = 300;
/// Shortest accepted HS256 secret; RFC 7518 §3.2 requires a key at least as long as the hash.
pub const MIN_DEV_SECRET_BYTES: usize = 32;

/// An unknown `kid` re-fetches the JWKS at most this often, so a client spraying made-up key
/// ids cannot turn us into a load generator against the identity provider.
const JWKS_REFETCH_INTERVAL: Duration = Duration::from_secs(30);
/// Keys are re-fetched after this long even when every `kid` is known, so a key the identity
/// provider withdrew (rotation, compromise) stops verifying tokens.
const JWKS_MAX_AGE: Duration = Duration::from_secs(600);
const JWKS_FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// A real JWKS is a few kilobytes; the bound keeps a misbehaving endpoint from exhausting memory.
const MAX_JWKS_BYTES: usize = 1024 * 1024;
const TOKEN_CACHE_CAPACITY: usize = 10_000;
/// Tokens this large are not access tokens; refuse them before hashing or decoding.
const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// RSA keys under 2048 bits are no longer considered safe (NIST SP 800-131A).
const MIN_RSA_MODULUS_BYTES: usize = 256;

/// Where the identity provider's JSON Web Key Set comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    /// A JWKS document on disk, re-read when a token names an unknown `kid`.
    File(PathBuf),
    /// An `https://` JWKS endpoint (plain `http://` only on loopback, for tests and sidecars).
    Url(String),
}

/// How bearer tokens are verified.
///
/// With a JWKS, `issuer` and `audience` are required: an identity provider signs tokens for
/// many services, and without an audience check a token minted for any of them would be
/// accepted here. Without a JWKS (development mode) they default to [`DEV_ISSUER`] and
/// [`DEV_AUDIENCE`]. At least one of `jwks` and `dev_hs256_secret` must be set.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthConfig {
    /// Source of the keys that verify RS256/ES256/EdDSA tokens.
    pub jwks: Option<JwksSource>,
    /// Required `iss`; mandatory when `jwks` is set.
    pub issuer: Option<String>,
    /// Required member of `aud`; mandatory when `jwks` is set.
    pub audience: Option<String>,
    /// Enables HS256 development tokens signed with this secret (at least
    /// [`MIN_DEV_SECRET_BYTES`] long). Never set it in production.
    pub dev_hs256_secret: Option<Vec<u8>>,
    /// Clock-skew allowance for `exp` and `nbf`, at most [`MAX_LEEWAY_SECONDS`].
    pub leeway_seconds: u64,
}

impl AuthConfig {
    /// Production configuration: tokens from the identity provider whose keys `jwks` publishes.
    pub fn with_jwks(jwks: JwksSource, issuer: impl Into<String>, audience: impl Into<String>) -> Self {
        Self { jwks: Some(jwks), issuer: Some(issuer.into()), audience: Some(audience.into()), ..Self::default() }
    }

    /// Development configuration: HS256 tokens from [`mint_dev_token`] with [`DEV_ISSUER`] and
    /// [`DEV_AUDIENCE`].
    pub fn dev(secret: impl Into<Vec<u8>>) -> Self {
        Self { dev_hs256_secret: Some(secret.into()), ..Self::default() }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            jwks: None,
            issuer: None,
            audience: None,
            dev_hs256_secret: None,
            leeway_seconds: DEFAULT_LEEWAY_SECONDS,
        }
    }
}

// Hand-written so the development secret never reaches a log line.
impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field("jwks", &self.jwks)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("dev_hs256_secret", &self.dev_hs256_secret.as_ref().map(|_| "<redacted>"))
            .field("leeway_seconds", &self.leeway_seconds)
            .finish()
    }
}

/// The authenticated caller, as asserted by a verified token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's `sub`.
    pub subject: String,
    /// The OAuth2 client the token was issued to (`client_id`, else `azp`), when stated.
    pub client_id: Option<String>,
    /// The tenant every request of this caller is confined to (the `tenantId` claim).
    pub tenant_id: String,
    /// Granted scopes, from `scope` (space-separated) and/or `scp` (array or string).
    pub scopes: BTreeSet<String>,
}

impl Principal {
    /// Whether the token granted `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.contains(scope)
    }
}

/// Why a presented token was refused. The `Display` text is sent to the client as the
/// `error_description`, so it names the failed check without echoing token contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenRejection {
    /// `Authorization: Bearer` without a single well-formed token after it.
    #[error("the Authorization header does not carry a well-formed bearer token")]
    MalformedHeader,
    /// Not a compact JWS, or its header or claims are not the expected JSON.
    #[error("the token is not a well-formed JWT")]
    Malformed,
    /// `none`, an unknown algorithm, or an asymmetric token while no JWKS is configured.
    #[error("the token's algorithm is not accepted")]
    UnsupportedAlgorithm,
    /// An HMAC token while no development secret is configured, or one other than HS256.
    #[error("HMAC-signed tokens are accepted only as HS256 development tokens")]
    HmacNotAccepted,
    /// An asymmetric token without a `kid` header.
    #[error("the token does not name its signing key (kid)")]
    MissingKeyId,
    /// The `kid` is not in the JWKS, even after re-fetching it.
    #[error("the token's signing key (kid) is unknown")]
    UnknownKeyId,
    /// The header's `alg` differs from the algorithm pinned by the named key.
    #[error("the token's algorithm does not match its signing key")]
    AlgorithmMismatch,
    /// The signature does not verify with the named key.
    #[error("the token's signature is invalid")]
    BadSignature,
    /// `exp` is past, beyond the leeway.
    #[error("the token has expired")]
    Expired,
    /// `nbf` is ahead, beyond the leeway.
    #[error("the token is not valid yet")]
    NotYetValid,
    /// `iss` is not the configured issuer.
    #[error("the token was issued by an unexpected issuer")]
    WrongIssuer,
    /// `aud` does not include the configured audience.
    #[error("the token is not intended for this audience")]
    WrongAudience,
    /// A required claim (`exp`, `iss`, `aud`, `sub`, `tenantId`) is absent.
    #[error("the token lacks the {0} claim")]
    MissingClaim(&'static str),
    /// A claim is present but has the wrong type or is empty.
    #[error("the token's {0} claim is malformed")]
    MalformedClaim(&'static str),
}

/// Failure to authenticate a request, or to set authentication up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization` header, or one using another scheme (RFC 6750 §3.1: no error code).
    #[error("no bearer token was presented")]
    MissingToken,
    /// A bearer token was presented and refused.
    #[error("invalid bearer token: {reason}")]
    InvalidToken {
        /// The check the token failed.
        reason: TokenRejection,
    },
    /// The JWKS could not be fetched or contained no usable key.
    #[error("the JWKS is unavailable: {reason}")]
    JwksUnavailable {
        /// What went wrong, for the operator's log.
        reason: String,
    },
    /// The configuration (or a [`mint_dev_token`] argument) is unusable.
    #[error("authentication is misconfigured: {reason}")]
    Misconfigured {
        /// What is wrong with it.
        reason: String,
    },
}

impl AuthError {
    fn invalid(reason: TokenRejection) -> Self {
        Self::InvalidToken { reason }
    }

    fn misconfigured(reason: impl Into<String>) -> Self {
        Self::Misconfigured { reason: reason.into() }
    }

    /// The RFC 6750 `WWW-Authenticate` value to answer with: `Bearer realm="integration-engine"`
    /// when no token was presented (and for server-side failures), `Bearer error="invalid_token",
    /// error_description="..."` for a refused token.
    pub fn www_authenticate(&self) -> String {
        match self {
            Self::InvalidToken { reason } => format!(
                "Bearer error=\"invalid_token\", error_description=\"{}\"",
                quoted_string_safe(&reason.to_string())
            ),
            Self::MissingToken | Self::JwksUnavailable { .. } | Self::Misconfigured { .. } => {
                format!("Bearer realm=\"{REALM}\"")
            }
        }
    }

    /// The HTTP status to answer with: 401 for the caller's fault, 503 when the keys cannot be
    /// loaded (the caller may retry), 500 for a misconfiguration.
    pub fn status_code(&self) -> StatusCode {
        match self {
            Self::MissingToken | Self::InvalidToken { .. } => StatusCode::UNAUTHORIZED,
            Self::JwksUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Misconfigured { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// The RFC 6750 `WWW-Authenticate` value for a 403 whose token lacks `scope`:
/// `Bearer error="insufficient_scope", scope="..."`.
pub fn insufficient_scope_challenge(scope: &str) -> String {
    format!("Bearer error=\"insufficient_scope\", scope=\"{}\"", quoted_string_safe(scope))
}

/// RFC 6750 §3 restricts these attribute values to printable ASCII without `"` and `\`;
/// anything else is replaced so a header value can never be broken out of.
fn quoted_string_safe(value: &str) -> String {
    value
        .chars()
        .map(|c| match c {
            ' ' | '!' | '#'..='[' | ']'..='~' => c,
            _ => '?',
        })
        .collect()
}

/// Mints an HS256 development token, as the `integration-engine token` command and tests do.
///
/// Claims: `iss`, `aud`, `sub`, `tenantId`, `scope` (space-separated), `iat` and
/// `exp = now + ttl`. An [`Authenticator`] accepts it only when configured with the same
/// secret, issuer and audience.
pub fn mint_dev_token(
    secret: &[u8],
    issuer: &str,
    audience: &str,
    subject: &str,
    tenant_id: &str,
    scopes: &[&str],
    ttl: Duration,
) -> Result<String, AuthError> {
    check_dev_secret(secret)?;
    for (name, value) in [("issuer", issuer), ("audience", audience), ("subject", subject), ("tenant id", tenant_id)] {
        if value.trim().is_empty() {
            return Err(AuthError::misconfigured(format!("the {name} must not be empty")));
        }
    }
    // A scope with whitespace would silently become several scopes once split again.
    if let Some(bad) = scopes.iter().find(|s| s.is_empty() || s.contains(char::is_whitespace)) {
        return Err(AuthError::misconfigured(format!("scope {bad:?} must be non-empty and free of whitespace")));
    }
    let now = unix_now();
    let claims = DevTokenClaims {
        iss: issuer,
        aud: audience,
        sub: subject,
        tenant_id,
        scope: scopes.join(" "),
        iat: now,
        exp: now.saturating_add(ttl.as_secs()),
    };
    let key = EncodingKey::from_secret(secret)
        .map_err(|e| AuthError::misconfigured(format!("unusable development secret: {e}")))?;
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key)
        .map_err(|e| AuthError::misconfigured(format!("cannot sign the development token: {e}")))
}

#[derive(Serialize)]
struct DevTokenClaims<'a> {
    iss: &'a str,
    aud: &'a str,
    sub: &'a str,
    #[serde(rename = "tenantId")]
    tenant_id: &'a str,
    scope: String,
    iat: u64,
    exp: u64,
}

fn check_dev_secret(secret: &[u8]) -> Result<(), AuthError> {
    if secret.len() < MIN_DEV_SECRET_BYTES {
        return Err(AuthError::misconfigured(format!(
            "the development HS256 secret must be at least {MIN_DEV_SECRET_BYTES} bytes"
        )));
    }
    Ok(())
}

/// Verifies bearer tokens. Cheap to clone: clones share the key set and the token cache.
#[derive(Clone)]
pub struct Authenticator {
    inner: Arc<AuthenticatorInner>,
}

struct AuthenticatorInner {
    issuer: String,
    audience: String,
    leeway_seconds: u64,
    dev_key: Option<DecodingKey>,
    jwks: Option<JwksCache>,
    // A std mutex is right here: it is held for a map operation and never across an await.
    verified_tokens: Mutex<TokenCache>,
}

/// Knobs that tests shorten; production uses [`Tuning::default`].
#[derive(Debug, Clone, Copy)]
struct Tuning {
    jwks_refetch_interval: Duration,
    jwks_max_age: Duration,
    token_cache_capacity: usize,
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

    async fn with_tuning(config: AuthConfig, tuning: Tuning) -> Result<Self, AuthError> {
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
                dev_key,
                jwks,
                verified_tokens: Mutex::new(TokenCache::new(tuning.token_cache_capacity)),
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
        self.inner.verified_tokens.lock().unwrap_or_else(PoisonError::into_inner).insert(
            cache_key,
            principal.clone(),
            expires_at,
            unix_now(),
        );
        Ok(principal)
    }

    fn cached(&self, cache_key: &TokenDigest) -> Option<Principal> {
        self.inner.verified_tokens.lock().unwrap_or_else(PoisonError::into_inner).get(cache_key, unix_now())
    }

    async fn verify(&self, token: &str) -> Result<(Principal, u64), AuthError> {
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

    fn decode(&self, token: &str, key: &DecodingKey, algorithm: Algorithm) -> Result<(Principal, u64), AuthError> {
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
        let data = jsonwebtoken::decode::<AccessTokenClaims>(token, key, &validation)
            .map_err(|e| AuthError::invalid(rejection_from(&e)))?;
        principal_from_claims(data.claims).map_err(AuthError::invalid)
    }
}

fn bearer_token(authorization_header: Option<&str>) -> Result<&str, AuthError> {
    let value = authorization_header.ok_or(AuthError::MissingToken)?.trim();
    let (scheme, rest) = value.split_once([' ', '\t']).unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        // Another scheme (Basic, ...) is "no bearer credential", not a bad one (RFC 6750 §3.1).
        return Err(AuthError::MissingToken);
    }
    let token = rest.trim();
    if token.is_empty() || token.len() > MAX_TOKEN_BYTES || token.contains(char::is_whitespace) {
        return Err(AuthError::invalid(TokenRejection::MalformedHeader));
    }
    Ok(token)
}

/// The two header members routing needs, read before any key is chosen. The library parses
/// the header again (with its `crit` checks) when verifying.
#[derive(Deserialize)]
struct PeekedHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
}

fn peek_header(token: &str) -> Result<PeekedHeader, AuthError> {
    let malformed = || AuthError::invalid(TokenRejection::Malformed);
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(malformed());
    };
    let json = URL_SAFE_NO_PAD.decode(header).map_err(|_| malformed())?;
    serde_json::from_slice(&json).map_err(|_| malformed())
}

#[derive(Deserialize)]
struct AccessTokenClaims {
    #[serde(default)]
    sub: Option<String>,
    // A number, possibly fractional. Optional here so that its absence is reported by the
    // library's required-claim check rather than as a deserialisation failure.
    #[serde(default)]
    exp: Option<serde_json::Number>,
    #[serde(default, rename = "tenantId")]
    tenant_id: Option<String>,
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    azp: Option<String>,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    scp: Option<ScpClaim>,
}

/// Identity providers disagree on `scp`: Entra ID sends a space-separated string, Okta an array.
#[derive(Deserialize)]
#[serde(untagged)]
enum ScpClaim {
    List(Vec<String>),
    SpaceSeparated(String),
}

fn principal_from_claims(claims: AccessTokenClaims) -> Result<(Principal, u64), TokenRejection> {
    let exp = claims.exp.ok_or(TokenRejection::MissingClaim("exp"))?;
    let expires_at = exp
        .as_u64()
        .or_else(|| exp.as_f64().filter(|f| f.is_finite() && *f >= 0.0).map(|f| f as u64))
        .ok_or(TokenRejection::MalformedClaim("exp"))?;
    let subject = claims.sub.ok_or(TokenRejection::MissingClaim("sub"))?;
    if subject.trim().is_empty() {
        return Err(TokenRejection::MalformedClaim("sub"));
    }
    let tenant_id = claims.tenant_id.ok_or(TokenRejection::MissingClaim("tenantId"))?;
    if tenant_id.trim().is_empty() {
        return Err(TokenRejection::MalformedClaim("tenantId"));
    }
    let mut scopes: BTreeSet<String> =
        claims.scope.iter().flat_map(|s| s.split_whitespace()).map(str::to_owned).collect();
    match claims.scp {
        Some(ScpClaim::List(list)) => scopes.extend(list.iter().flat_map(|s| s.split_whitespace()).map(str::to_owned)),
        Some(ScpClaim::SpaceSeparated(s)) => scopes.extend(s.split_whitespace().map(str::to_owned)),
        None => {}
    }
    let principal = Principal { subject, client_id: claims.client_id.or(claims.azp), tenant_id, scopes };
    Ok((principal, expires_at))
}

fn rejection_from(error: &jsonwebtoken::errors::Error) -> TokenRejection {
    match error.kind() {
        ErrorKind::InvalidSignature => TokenRejection::BadSignature,
        ErrorKind::ExpiredSignature => TokenRejection::Expired,
        ErrorKind::ImmatureSignature => TokenRejection::NotYetValid,
        ErrorKind::InvalidIssuer => TokenRejection::WrongIssuer,
        ErrorKind::InvalidAudience => TokenRejection::WrongAudience,
        ErrorKind::InvalidAlgorithm => TokenRejection::AlgorithmMismatch,
        ErrorKind::MissingRequiredClaim(claim) => TokenRejection::MissingClaim(spec_claim_name(claim)),
        ErrorKind::InvalidClaimFormat(claim) => TokenRejection::MalformedClaim(spec_claim_name(claim)),
        ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidEddsaKey
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidKeyFormat => {
            // The key came from the JWKS, so this is the identity provider's problem; the
            // token still cannot be trusted.
            tracing::warn!(error = %error, "a JWKS key could not verify a token");
            TokenRejection::BadSignature
        }
        _ => TokenRejection::Malformed,
    }
}

fn spec_claim_name(claim: &str) -> &'static str {
    match claim {
        "exp" => "exp",
        "nbf" => "nbf",
        "iss" => "iss",
        "aud" => "aud",
        "sub" => "sub",
        _ => "registered",
    }
}

// ---------------------------------------------------------------------------------------------
// JWKS: keys pinned to one algorithm each, cached, re-fetched on an unknown kid.

struct VerificationKey {
    algorithm: Algorithm,
    decoding_key: DecodingKey,
}

struct KeySet {
    keys: HashMap<String, Arc<VerificationKey>>,
    fetched_at: Instant,
}

#[derive(Default)]
struct RefreshState {
    last_attempt: Option<Instant>,
    /// Why the last attempt failed, so requests arriving inside the back-off interval get the
    /// same answer (503) as the one that triggered the fetch.
    last_failure: Option<String>,
}

impl RefreshState {
    fn may_attempt(&self, interval: Duration) -> bool {
        self.last_attempt.is_none_or(|at| at.elapsed() >= interval)
    }
}

struct JwksCache {
    fetcher: JwksFetcher,
    // Readers clone the Arc and let go at once, so the lock is never held across an await.
    keys: RwLock<Arc<KeySet>>,
    // Held across the fetch on purpose: it is the single flight that concurrent misses queue on.
    refresh: tokio::sync::Mutex<RefreshState>,
    refetch_interval: Duration,
    max_age: Duration,
}

impl JwksCache {
    async fn load(source: JwksSource, tuning: Tuning) -> Result<Self, AuthError> {
        let fetcher = JwksFetcher::new(source)?;
        let keys = fetcher.fetch().await?;
        tracing::info!(source = ?fetcher, keys = keys.keys.len(), "JWKS loaded");
        Ok(Self {
            fetcher,
            keys: RwLock::new(Arc::new(keys)),
            // The start-up load does not count against the back-off, so a key rotated in right
            // after start is still picked up by the first token that uses it.
            refresh: tokio::sync::Mutex::new(RefreshState::default()),
            refetch_interval: tuning.jwks_refetch_interval,
            max_age: tuning.jwks_max_age,
        })
    }

    fn snapshot(&self) -> Arc<KeySet> {
        Arc::clone(&self.keys.read().unwrap_or_else(PoisonError::into_inner))
    }

    fn lookup(&self, kid: &str) -> Option<Arc<VerificationKey>> {
        self.snapshot().keys.get(kid).cloned()
    }

    async fn key_for(&self, kid: &str) -> Result<Option<Arc<VerificationKey>>, AuthError> {
        let current = self.snapshot();
        if current.keys.contains_key(kid) {
            if current.fetched_at.elapsed() >= self.max_age {
                // Stale: refresh so withdrawn keys stop verifying, but never queue behind a
                // fetch already in flight and never fail a request because the provider blipped.
                if let Ok(mut state) = self.refresh.try_lock()
                    && state.may_attempt(self.refetch_interval)
                {
                    let _ = self.refresh_locked(&mut state).await;
                }
            }
            return Ok(self.lookup(kid));
        }

        let mut state = self.refresh.lock().await;
        // Whoever held the lock before us may just have fetched the key.
        if let Some(key) = self.lookup(kid) {
            return Ok(Some(key));
        }
        if !state.may_attempt(self.refetch_interval) {
            return match &state.last_failure {
                Some(reason) => Err(AuthError::JwksUnavailable { reason: reason.clone() }),
                None => Ok(None),
            };
        }
        self.refresh_locked(&mut state).await?;
        Ok(self.lookup(kid))
    }

    async fn refresh_locked(&self, state: &mut RefreshState) -> Result<(), AuthError> {
        state.last_attempt = Some(Instant::now());
        match self.fetcher.fetch().await {
            Ok(keys) => {
                tracing::info!(source = ?self.fetcher, keys = keys.keys.len(), "JWKS re-fetched");
                state.last_failure = None;
                *self.keys.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(keys);
                Ok(())
            }
            Err(error) => {
                // The keys we have stay in use: an outage must not lock out every caller.
                tracing::warn!(source = ?self.fetcher, error = %error, "JWKS re-fetch failed");
                state.last_failure = Some(error.to_string());
                Err(error)
            }
        }
    }
}

enum JwksFetcher {
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
    fn new(source: JwksSource) -> Result<Self, AuthError> {
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

    async fn fetch(&self) -> Result<KeySet, AuthError> {
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
        Ok(KeySet { keys, fetched_at: Instant::now() })
    }
}

fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

async fn fetch_url(client: &reqwest::Client, url: &reqwest::Url) -> Result<Vec<u8>, String> {
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

#[derive(Deserialize)]
struct JwksDocument {
    keys: Vec<serde_json::Value>,
}

/// The JWK members we read (RFC 7517/7518/8037). Parsed by hand rather than with
/// `jsonwebtoken::jwk::JwkSet` so one key of a type we do not support (an encryption key, a
/// P-384 key) is skipped instead of failing the whole set.
#[derive(Deserialize)]
struct JwkMembers {
    kty: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default, rename = "use")]
    public_key_use: Option<String>,
    #[serde(default)]
    key_ops: Option<Vec<String>>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
}

fn parse_jwks(document: &[u8]) -> Result<HashMap<String, Arc<VerificationKey>>, String> {
    let document: JwksDocument = serde_json::from_slice(document).map_err(|e| format!("not a JWKS document: {e}"))?;
    let mut keys = HashMap::new();
    for (index, value) in document.keys.into_iter().enumerate() {
        let members = match serde_json::from_value::<JwkMembers>(value) {
            Ok(members) => members,
            Err(e) => {
                tracing::warn!(index, error = %e, "skipping a malformed JWK");
                continue;
            }
        };
        let kid = members.kid.clone();
        match (kid, verification_key(&members)) {
            (Some(kid), Ok(key)) => match keys.entry(kid) {
                Entry::Vacant(slot) => {
                    slot.insert(Arc::new(key));
                }
                Entry::Occupied(taken) => {
                    tracing::warn!(kid = %taken.key(), "skipping a JWK whose kid repeats an earlier key");
                }
            },
            (None, _) => tracing::warn!(index, "skipping a JWK without kid"),
            (Some(kid), Err(reason)) => tracing::warn!(%kid, %reason, "skipping an unusable JWK"),
        }
    }
    if keys.is_empty() {
        return Err("the JWKS holds no usable signing key".to_owned());
    }
    Ok(keys)
}

/// Pins the key's algorithm from its type and curve; a declared `alg` must agree with them.
fn verification_key(jwk: &JwkMembers) -> Result<VerificationKey, String> {
    if jwk.public_key_use.as_deref().is_some_and(|u| u != "sig") {
        return Err("not a signature key (use)".to_owned());
    }
    if jwk.key_ops.as_ref().is_some_and(|ops| !ops.iter().any(|op| op == "verify")) {
        return Err("not a verification key (key_ops)".to_owned());
    }
    let member = |name: &str, value: &Option<String>| -> Result<(String, Vec<u8>), String> {
        let text = value.clone().ok_or_else(|| format!("missing {name}"))?;
        let bytes = URL_SAFE_NO_PAD.decode(&text).map_err(|_| format!("{name} is not base64url"))?;
        Ok((text, bytes))
    };
    let declared = jwk.alg.as_deref();
    let (algorithm, decoding_key) = match (jwk.kty.as_str(), jwk.crv.as_deref()) {
        ("RSA", _) => {
            let algorithm = match declared {
                None | Some("RS256") => Algorithm::RS256,
                Some("RS384") => Algorithm::RS384,
                Some("RS512") => Algorithm::RS512,
                Some(other) => return Err(format!("alg {other} does not fit an RSA key")),
            };
            let (n, n_bytes) = member("n", &jwk.n)?;
            let (e, _) = member("e", &jwk.e)?;
            let significant = n_bytes.iter().skip_while(|b| **b == 0).count();
            if significant < MIN_RSA_MODULUS_BYTES {
                return Err("RSA modulus shorter than 2048 bits".to_owned());
            }
            let key = DecodingKey::from_rsa_components(&n, &e).map_err(|err| err.to_string())?;
            (algorithm, key)
        }
        ("EC", Some("P-256")) => {
            if declared.is_some_and(|alg| alg != "ES256") {
                return Err("a P-256 key is only for ES256".to_owned());
            }
            let (x, x_bytes) = member("x", &jwk.x)?;
            let (y, y_bytes) = member("y", &jwk.y)?;
            if x_bytes.len() != 32 || y_bytes.len() != 32 {
                return Err("P-256 coordinates must be 32 bytes".to_owned());
            }
            let key = DecodingKey::from_ec_components(&x, &y).map_err(|err| err.to_string())?;
            (Algorithm::ES256, key)
        }
        ("OKP", Some("Ed25519")) => {
            // "Ed25519" is the fully-specified name from RFC 9864.
            if declared.is_some_and(|alg| alg != "EdDSA" && alg != "Ed25519") {
                return Err("an Ed25519 key is only for EdDSA".to_owned());
            }
            let (x, x_bytes) = member("x", &jwk.x)?;
            // Checked here because the verifier slices the first 32 bytes without looking.
            if x_bytes.len() != 32 {
                return Err("an Ed25519 public key must be 32 bytes".to_owned());
            }
            let key = DecodingKey::from_ed_components(&x).map_err(|err| err.to_string())?;
            (Algorithm::EdDSA, key)
        }
        (kty, crv) => return Err(format!("unsupported key type {kty} {}", crv.unwrap_or_default())),
    };
    // Building a verifier parses the key (curve point, Edwards point), so a broken key is
    // reported when the JWKS is loaded instead of on every token.
    if let Some(provider) = CryptoProvider::try_get_default() {
        (provider.verifier_factory)(&algorithm, &decoding_key).map_err(|err| err.to_string())?;
    }
    Ok(VerificationKey { algorithm, decoding_key })
}

// ---------------------------------------------------------------------------------------------
// Verified-token cache.

type TokenDigest = [u8; 32];

fn token_digest(token: &str) -> TokenDigest {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut key = [0u8; 32];
    key.copy_from_slice(digest.as_ref());
    key
}

struct CachedPrincipal {
    principal: Principal,
    expires_at: u64,
}

/// Principals of verified tokens, keyed by the token's SHA-256 so the cache never holds a
/// usable credential. An entry is served only while `now < exp`.
struct TokenCache {
    capacity: usize,
    entries: HashMap<TokenDigest, CachedPrincipal>,
}

impl TokenCache {
    fn new(capacity: usize) -> Self {
        Self { capacity: capacity.max(1), entries: HashMap::new() }
    }

    fn get(&mut self, key: &TokenDigest, now: u64) -> Option<Principal> {
        let entry = self.entries.get(key)?;
        if now < entry.expires_at {
            return Some(entry.principal.clone());
        }
        self.entries.remove(key);
        None
    }

    fn insert(&mut self, key: TokenDigest, principal: Principal, expires_at: u64, now: u64) {
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
    fn evict(&mut self, now: u64) {
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

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_secs())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::routing::get;
    use jsonwebtoken::jwk::Jwk;
    use ring::rand::SystemRandom;
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair};
    use serde_json::{Value, json};

    use super::*;

    const ISSUER: &str = "https://idp.example.test/";
    const AUDIENCE: &str = "integration-engine";
    const TENANT: &str = "connectsoft";
    const DEV_SECRET: &[u8] = b"dev-secret-that-is-32-bytes-long";
    const RSA_PRIVATE_PEM: &[u8] = include_bytes!("../../fixtures/keys/rsa-2048-test-only-private.pem");
    const RSA_PUBLIC_PEM: &[u8] = include_bytes!("../../fixtures/keys/rsa-2048-test-only-public.pem");

    /// A signing key and the public JWK that verifies it.
    struct TestKey {
        kid: String,
        algorithm: Algorithm,
        encoding_key: EncodingKey,
        jwk: Value,
    }

    impl TestKey {
        fn rsa(kid: &str) -> Self {
            let encoding_key = EncodingKey::from_rsa_pem(RSA_PRIVATE_PEM).unwrap();
            let jwk = serde_json::to_value(Jwk::from_encoding_key(&encoding_key, Algorithm::RS256).unwrap()).unwrap();
            Self::new(kid, Algorithm::RS256, encoding_key, jwk)
        }

        fn es256(kid: &str) -> Self {
            let rng = SystemRandom::new();
            let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
            let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
            // An uncompressed SEC1 point: 0x04 || x || y.
            let point = pair.public_key().as_ref();
            let jwk = json!({
                "kty": "EC",
                "crv": "P-256",
                "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
                "y": URL_SAFE_NO_PAD.encode(&point[33..]),
            });
            Self::new(kid, Algorithm::ES256, EncodingKey::from_ec_der(pkcs8.as_ref()), jwk)
        }

        fn ed25519(kid: &str) -> Self {
            let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
            let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
            let jwk = json!({
                "kty": "OKP",
                "crv": "Ed25519",
                "x": URL_SAFE_NO_PAD.encode(pair.public_key().as_ref()),
            });
            Self::new(kid, Algorithm::EdDSA, EncodingKey::from_ed_der(pkcs8.as_ref()), jwk)
        }

        fn new(kid: &str, algorithm: Algorithm, encoding_key: EncodingKey, mut jwk: Value) -> Self {
            jwk["kid"] = json!(kid);
            jwk["use"] = json!("sig");
            Self { kid: kid.to_owned(), algorithm, encoding_key, jwk }
        }

        fn sign(&self, claims: &Value) -> String {
            self.sign_as(self.algorithm, &self.kid, claims)
        }

        fn sign_as(&self, algorithm: Algorithm, kid: &str, claims: &Value) -> String {
            let mut header = Header::new(algorithm);
            header.kid = Some(kid.to_owned());
            jsonwebtoken::encode(&header, claims, &self.encoding_key).unwrap()
        }
    }

    fn jwks_json(keys: &[&TestKey]) -> String {
        json!({ "keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() }).to_string()
    }

    /// Valid claims, with `overrides` merged in; an override of `null` removes the claim.
    fn claims(overrides: Value) -> Value {
        let now = unix_now();
        let mut claims = json!({
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": "client-42",
            "client_id": "reporting-service",
            "tenantId": TENANT,
            "scope": "integration.runs.read integration.connections.read",
            "iat": now,
            "exp": now + 300,
        });
        for (name, value) in overrides.as_object().unwrap() {
            if value.is_null() {
                claims.as_object_mut().unwrap().remove(name);
            } else {
                claims[name] = value.clone();
            }
        }
        claims
    }

    fn bearer(token: &str) -> String {
        format!("Bearer {token}")
    }

    fn rejection(result: Result<Principal, AuthError>) -> TokenRejection {
        match result {
            Err(AuthError::InvalidToken { reason }) => reason,
            other => panic!("expected an invalid token, got {other:?}"),
        }
    }

    fn write_jwks(path: &std::path::Path, keys: &[&TestKey]) {
        std::fs::write(path, jwks_json(keys)).unwrap();
    }

    async fn file_authenticator(keys: &[&TestKey]) -> (Authenticator, tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        write_jwks(&path, keys);
        let config = AuthConfig::with_jwks(JwksSource::File(path.clone()), ISSUER, AUDIENCE);
        (Authenticator::new(config).await.unwrap(), dir, path)
    }

    /// A local JWKS endpoint that counts the GETs it answers.
    struct JwksServer {
        url: String,
        body: Arc<Mutex<String>>,
        hits: Arc<AtomicUsize>,
    }

    impl JwksServer {
        async fn start(keys: &[&TestKey]) -> Self {
            let body = Arc::new(Mutex::new(jwks_json(keys)));
            let hits = Arc::new(AtomicUsize::new(0));
            let router = axum::Router::new().route(
                "/.well-known/jwks.json",
                get({
                    let body = Arc::clone(&body);
                    let hits = Arc::clone(&hits);
                    move || async move {
                        hits.fetch_add(1, Ordering::SeqCst);
                        let document = body.lock().unwrap().clone();
                        ([(axum::http::header::CONTENT_TYPE, "application/json")], document)
                    }
                }),
            );
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}/.well-known/jwks.json", listener.local_addr().unwrap());
            tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
            Self { url, body, hits }
        }

        fn serve(&self, keys: &[&TestKey]) {
            *self.body.lock().unwrap() = jwks_json(keys);
        }

        fn hits(&self) -> usize {
            self.hits.load(Ordering::SeqCst)
        }

        fn config(&self) -> AuthConfig {
            AuthConfig::with_jwks(JwksSource::Url(self.url.clone()), ISSUER, AUDIENCE)
        }
    }

    // --- accepted tokens ---------------------------------------------------------------------

    #[tokio::test]
    async fn rs256_token_is_accepted_with_scopes_from_the_scope_claim() {
        let key = TestKey::rsa("rsa-1");
        let (auth, _dir, _) = file_authenticator(&[&key]).await;

        let principal = auth.authenticate(Some(&bearer(&key.sign(&claims(json!({})))))).await.unwrap();

        assert_eq!(principal.subject, "client-42");
        assert_eq!(principal.client_id.as_deref(), Some("reporting-service"));
        assert_eq!(principal.tenant_id, TENANT);
        assert!(principal.has_scope("integration.runs.read"));
        assert!(principal.has_scope("integration.connections.read"));
        assert!(!principal.has_scope("integration.connections.write"));
    }

    #[tokio::test]
    async fn es256_token_is_accepted_with_scopes_from_an_scp_array() {
        let key = TestKey::es256("ec-1");
        let (auth, _dir, _) = file_authenticator(&[&key]).await;
        let token = key.sign(&claims(json!({
            "scope": null,
            "scp": ["webhooks.subscriptions.write", "integration.runs.read"],
        })));

        let principal = auth.authenticate(Some(&bearer(&token))).await.unwrap();

        let expected: BTreeSet<String> =
            ["integration.runs.read", "webhooks.subscriptions.write"].map(str::to_owned).into();
        assert_eq!(principal.scopes, expected);
    }

    #[tokio::test]
    async fn eddsa_token_is_accepted_with_scopes_from_an_scp_string() {
        let key = TestKey::ed25519("ed-1");
        let (auth, _dir, _) = file_authenticator(&[&key]).await;
        let token = key.sign(&claims(json!({
            "scope": null,
            "client_id": null,
            "azp": "studio",
            "scp": "integration.credentials.rotate integration.providers.write",
        })));

        let principal = auth.authenticate(Some(&bearer(&token))).await.unwrap();

        assert!(principal.has_scope("integration.credentials.rotate"));
        assert!(principal.has_scope("integration.providers.write"));
        assert_eq!(principal.scopes.len(), 2);
        assert_eq!(principal.client_id.as_deref(), Some("studio"));
    }

    #[tokio::test]
    async fn token_listing_several_audiences_including_ours_is_accepted() {
        let key = TestKey::es256("ec-1");
        let (auth, _dir, _) = file_authenticator(&[&key]).await;
        let token = key.sign(&claims(json!({ "aud": ["billing", AUDIENCE] })));

        assert!(auth.authenticate(Some(&bearer(&token))).await.is_ok());
    }

    #[tokio::test]
    async fn token_expired_within_the_leeway_is_accepted() {
        let key = TestKey::es256("ec-1");
        let (auth, _dir, _) = file_authenticator(&[&key]).await;
        let token = key.sign(&claims(json!({ "exp": unix_now() - 10 })));

        assert!(auth.authenticate(Some(&bearer(&token))).await.is_ok());
    }

    // --- refused tokens ----------------------------------------------------------------------

    #[tokio::test]
    async fn expired_token_is_rejected() {
        let key = TestKey::rsa("rsa-1");
        let (auth, _dir, _) = file_authenticator(&[&key]).await;
        let token = key.sign(&claims(json!({ "exp": unix_now() - 120 })));

        assert_eq!(rejection(auth.authenticate(Some(&bearer(&token))).await), TokenRejection::Expired);
    }

    #[tokio::test]
    async fn token_without_exp_is_rejected() {
        let key = TestKey::es256("ec-1");
        let (auth, _dir, _) = file_authenticator(&[&key]).await;
        let token = key.sign(&claims(json!({ "exp": null })));

        assert_eq!(rejection(auth.authenticate(Some(&bearer(&token))).await), TokenRejection::MissingClaim("exp"));
    }

    #[tokio::test]
    async fn token_whose_nbf_is_in_the_future_is_rejected() {
        let key = TestKey::es256("ec-1");
        let (auth, _dir, _) = file_authenticator(&[&key]).await;
        let token = key.sign(&claims(json!({ "nbf": unix_now() + 300 })));

        assert_eq!(rejection(auth.authenticate(Some(&bearer(&token))).await), TokenRejection::NotYetValid);
    }

    #[tokio::test]
    async fn token_from_another_issuer_is_rejected() {
        let key = TestKey::ed25519("ed-1");
        let (auth, _dir, _) = file_authenticator(&[&key]).await;
        let token = key.sign(&claims(json!({ "iss": "https://evil.example.test/" })));

        assert_eq!(rejection(auth.authenticate(Some(&bearer(&token))).await), TokenRejection::WrongIssuer);
    }

    #[tokio::test]
    async fn token_for_another_audience_is_rejected() {
        let key = TestKey::ed25519("ed-1");
        let (auth, _dir, _) = file_authenticator(&[&key]).await;
        let token = key.sign(&claims(json!({ "aud": "billing" })));

        assert_eq!(rejection(auth.authenticate(Some(&bearer(&token))).await), TokenRejection::WrongAudience);
    }

    #[tokio::test]
    async fn token_without_issuer_or_audience_is_rejected() {
        let key = TestKey::es256("ec-1");
        let (auth, _dir, _) = file_authenticator(&[&key]).await;

        let without_aud = key.sign(&claims(json!({ "aud": null })));
        let without_iss = key.sign(&claims(json!({ "iss": null })));

        assert_eq!(
            rejection(auth.authenticate(Some(&bearer(&without_aud))).await),
            TokenRejection::MissingClaim("aud")
        );
        assert_eq!(
            rejection(auth.authenticate(Some(&bearer(&without_iss))).await),
            TokenRejection::MissingClaim("iss")
        );
    }

    #[tokio::test]
    async fn token_without_tenant_id_is_rejected() {
        let key = TestKey::rsa("rsa-1");
        let (auth, _dir, _) = file_authenticator(&[&key]).await;

        let without = key.sign(&claims(json!({ "tenantId": null })));
        let empty = key.sign(&claims(json!({ "tenantId": "" })));

        assert_eq!(
            rejection(auth.authenticate(Some(&bearer(&without))).await),
            TokenRejection::MissingClaim("tenantId")
        );
        assert_eq!(
            rejection(auth.authenticate(Some(&bearer(&empty))).await),
            TokenRejection::MalformedClaim("tenantId")
        );
    }

    #[tokio::test]
    async fn token_without_subject_is_rejected() {
        let key = TestKey::rsa("rsa-1");
        let (auth, _dir, _) = file_authenticator(&[&key]).await;
        let token = key.sign(&claims(json!({ "sub": null })));

        assert_eq!(rejection(auth.authenticate(Some(&bearer(&token))).await), TokenRejection::MissingClaim("sub"));
    }

    #[tokio::test]
    async fn token_signed_by_another_key_under_a_known_kid_is_rejected() {
        let published = TestKey::es256("ec-1");
        let impostor = TestKey::es256("ec-1");
        let (auth, _dir, _) = file_authenticator(&[&published]).await;
        let token = impostor.sign(&claims(json!({})));

        assert_eq!(rejection(auth.authenticate(Some(&bearer(&token))).await), TokenRejection::BadSignature);
    }

    #[tokio::test]
    async fn tampered_claims_break_the_signature() {
        let key = TestKey::ed25519("ed-1");
        let (auth, _dir, _) = file_authenticator(&[&key]).await;
        let token = key.sign(&claims(json!({})));
        let forged_claims = URL_SAFE_NO_PAD.encode(claims(json!({ "tenantId": "victim" })).to_string());
        let parts: Vec<&str> = token.split('.').collect();
        let forged = format!("{}.{}.{}", parts[0], forged_claims, parts[2]);

        assert_eq!(rejection(auth.authenticate(Some(&bearer(&forged))).await), TokenRejection::BadSignature);
    }

    #[tokio::test]
    async fn rs256_header_naming_an_ec_key_is_rejected() {
        let rsa = TestKey::rsa("rsa-1");
        let ec = TestKey::es256("ec-1");
        let (auth, _dir, _) = file_authenticator(&[&rsa, &ec]).await;
        // A valid RS256 signature, but the header claims the EC key: the key pins ES256.
        let token = rsa.sign_as(Algorithm::RS256, &ec.kid, &claims(json!({})));

        assert_eq!(rejection(auth.authenticate(Some(&bearer(&token))).await), TokenRejection::AlgorithmMismatch);
    }

    #[tokio::test]
    async fn rs384_header_on_a_key_pinned_to_rs256_is_rejected() {
        let rsa = TestKey::rsa("rsa-1");
        let (auth, _dir, _) = file_authenticator(&[&rsa]).await;
        let token = rsa.sign_as(Algorithm::RS384, &rsa.kid, &claims(json!({})));

        assert_eq!(rejection(auth.authenticate(Some(&bearer(&token))).await), TokenRejection::AlgorithmMismatch);
    }

    #[tokio::test]
    async fn hs256_token_signed_with_the_rsa_public_key_is_rejected_without_a_dev_secret() {
        let rsa = TestKey::rsa("rsa-1");
        let (auth, _dir, _) = file_authenticator(&[&rsa]).await;
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(rsa.kid.clone());
        let forged =
            jsonwebtoken::encode(&header, &claims(json!({})), &EncodingKey::from_secret(RSA_PUBLIC_PEM).unwrap())
                .unwrap();

        assert_eq!(rejection(auth.authenticate(Some(&bearer(&forged))).await), TokenRejection::HmacNotAccepted);
    }

    #[tokio::test]
    async fn hs256_token_is_verified_only_against_the_dev_secret() {
        let rsa = TestKey::rsa("rsa-1");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        write_jwks(&path, &[&rsa]);
        let config = AuthConfig {
            dev_hs256_secret: Some(DEV_SECRET.to_vec()),
            ..AuthConfig::with_jwks(JwksSource::File(path), ISSUER, AUDIENCE)
        };
        let auth = Authenticator::new(config).await.unwrap();
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(rsa.kid.clone());
        let forged =
            jsonwebtoken::encode(&header, &claims(json!({})), &EncodingKey::from_secret(RSA_PUBLIC_PEM).unwrap())
                .unwrap();

        assert_eq!(rejection(auth.authenticate(Some(&bearer(&forged))).await), TokenRejection::BadSignature);
        // Both kinds of token are accepted side by side, each against its own key.
        let dev = mint_dev_token(DEV_SECRET, ISSUER, AUDIENCE, "dev", TENANT, &[], Duration::from_secs(60)).unwrap();
        assert!(auth.authenticate(Some(&bearer(&dev))).await.is_ok());
        assert!(auth.authenticate(Some(&bearer(&rsa.sign(&claims(json!({})))))).await.is_ok());
    }

    #[tokio::test]
    async fn alg_none_token_is_rejected() {
        let rsa = TestKey::rsa("rsa-1");
        let (auth, _dir, _) = file_authenticator(&[&rsa]).await;
        for alg in ["none", "None", "NONE"] {
            let header = URL_SAFE_NO_PAD.encode(json!({ "alg": alg, "typ": "JWT", "kid": "rsa-1" }).to_string());
            let payload = URL_SAFE_NO_PAD.encode(claims(json!({})).to_string());
            let unsigned = format!("{header}.{payload}.");

            assert_eq!(
                rejection(auth.authenticate(Some(&bearer(&unsigned))).await),
                TokenRejection::UnsupportedAlgorithm,
                "alg {alg}"
            );
        }
    }

    #[tokio::test]
    async fn asymmetric_token_without_kid_is_rejected() {
        let key = TestKey::es256("ec-1");
        let (auth, _dir, _) = file_authenticator(&[&key]).await;
        let token =
            jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims(json!({})), &key.encoding_key).unwrap();

        assert_eq!(rejection(auth.authenticate(Some(&bearer(&token))).await), TokenRejection::MissingKeyId);
    }

    #[tokio::test]
    async fn garbage_token_is_malformed() {
        let key = TestKey::es256("ec-1");
        let (auth, _dir, _) = file_authenticator(&[&key]).await;

        for token in ["abc", "a.b", "a.b.c.d.e", "!!!.e30.sig", "e30.e30.sig"] {
            assert!(
                matches!(
                    rejection(auth.authenticate(Some(&bearer(token))).await),
                    TokenRejection::Malformed | TokenRejection::UnsupportedAlgorithm
                ),
                "{token}"
            );
        }
    }

    // --- JWKS loading and re-fetching --------------------------------------------------------

    #[tokio::test]
    async fn unknown_kid_rereads_the_jwks_file() {
        let old = TestKey::es256("2024-key");
        let rotated_in = TestKey::ed25519("2025-key");
        let (auth, _dir, path) = file_authenticator(&[&old]).await;
        write_jwks(&path, &[&old, &rotated_in]);

        let principal = auth.authenticate(Some(&bearer(&rotated_in.sign(&claims(json!({})))))).await.unwrap();

        assert_eq!(principal.tenant_id, TENANT);
    }

    #[tokio::test]
    async fn url_jwks_is_fetched_at_start_and_cached_for_known_kids() {
        let first = TestKey::rsa("rsa-1");
        let second = TestKey::es256("ec-1");
        let server = JwksServer::start(&[&first, &second]).await;

        let auth = Authenticator::new(server.config()).await.unwrap();
        assert_eq!(server.hits(), 1);

        auth.authenticate(Some(&bearer(&first.sign(&claims(json!({})))))).await.unwrap();
        auth.authenticate(Some(&bearer(&second.sign(&claims(json!({})))))).await.unwrap();
        assert_eq!(server.hits(), 1);
    }

    #[tokio::test]
    async fn unknown_kid_refetch_from_a_url_is_rate_limited() {
        let known = TestKey::es256("ec-1");
        let rotated_in = TestKey::ed25519("ed-1");
        let server = JwksServer::start(&[&known]).await;
        let auth = Authenticator::new(server.config()).await.unwrap();
        server.serve(&[&known, &rotated_in]);

        auth.authenticate(Some(&bearer(&rotated_in.sign(&claims(json!({})))))).await.unwrap();
        assert_eq!(server.hits(), 2);

        let sprayed = known.sign_as(Algorithm::ES256, "made-up-kid", &claims(json!({})));
        for _ in 0..5 {
            assert_eq!(rejection(auth.authenticate(Some(&bearer(&sprayed))).await), TokenRejection::UnknownKeyId);
        }
        assert_eq!(server.hits(), 2, "misses inside the back-off interval must not refetch");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_unknown_kid_misses_share_one_fetch() {
        let known = TestKey::es256("ec-1");
        let rotated_in = TestKey::ed25519("ed-1");
        let server = JwksServer::start(&[&known]).await;
        let auth = Authenticator::new(server.config()).await.unwrap();
        server.serve(&[&known, &rotated_in]);

        let tasks: Vec<_> = (0..16)
            .map(|i| {
                let auth = auth.clone();
                // Distinct tokens, so none is answered from the token cache.
                let token = rotated_in.sign(&claims(json!({ "jti": i })));
                tokio::spawn(async move { auth.authenticate(Some(&bearer(&token))).await })
            })
            .collect();
        for task in tasks {
            task.await.unwrap().unwrap();
        }

        assert_eq!(server.hits(), 2);
    }

    #[tokio::test]
    async fn stale_jwks_is_refreshed_so_withdrawn_keys_stop_verifying() {
        let withdrawn = TestKey::es256("ec-1");
        let current = TestKey::ed25519("ed-1");
        let server = JwksServer::start(&[&withdrawn, &current]).await;
        let tuning =
            Tuning { jwks_refetch_interval: Duration::ZERO, jwks_max_age: Duration::ZERO, ..Tuning::default() };
        let auth = Authenticator::with_tuning(server.config(), tuning).await.unwrap();
        server.serve(&[&current]);

        let result = auth.authenticate(Some(&bearer(&withdrawn.sign(&claims(json!({})))))).await;

        assert_eq!(rejection(result), TokenRejection::UnknownKeyId);
        assert!(auth.authenticate(Some(&bearer(&current.sign(&claims(json!({})))))).await.is_ok());
    }

    #[tokio::test]
    async fn failed_refetch_keeps_the_known_keys_and_reports_the_jwks_unavailable() {
        let known = TestKey::es256("ec-1");
        let (auth, _dir, path) = file_authenticator(&[&known]).await;
        std::fs::remove_file(&path).unwrap();

        let unknown = known.sign_as(Algorithm::ES256, "ec-2", &claims(json!({})));
        assert!(matches!(auth.authenticate(Some(&bearer(&unknown))).await, Err(AuthError::JwksUnavailable { .. })));
        // Requests inside the back-off interval get the same answer without another read.
        assert!(matches!(auth.authenticate(Some(&bearer(&unknown))).await, Err(AuthError::JwksUnavailable { .. })));
        assert!(auth.authenticate(Some(&bearer(&known.sign(&claims(json!({})))))).await.is_ok());
    }

    #[tokio::test]
    async fn unreachable_jwks_url_fails_at_start() {
        // Bind then drop, so the port is (almost certainly) closed.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
        drop(listener);

        let result = Authenticator::new(AuthConfig::with_jwks(JwksSource::Url(url), ISSUER, AUDIENCE)).await;

        assert!(matches!(result, Err(AuthError::JwksUnavailable { .. })), "{result:?}");
    }

    #[tokio::test]
    async fn missing_jwks_file_fails_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let config = AuthConfig::with_jwks(JwksSource::File(dir.path().join("absent.json")), ISSUER, AUDIENCE);

        assert!(matches!(Authenticator::new(config).await, Err(AuthError::JwksUnavailable { .. })));
    }

    #[tokio::test]
    async fn plain_http_jwks_url_is_refused_unless_loopback() {
        let config =
            AuthConfig::with_jwks(JwksSource::Url("http://idp.example.test/jwks.json".to_owned()), ISSUER, AUDIENCE);

        assert!(matches!(Authenticator::new(config).await, Err(AuthError::Misconfigured { .. })));
        assert!(is_loopback_host("127.0.0.1"));
        assert!(is_loopback_host("[::1]"));
        assert!(is_loopback_host("localhost"));
        assert!(!is_loopback_host("10.0.0.1"));
    }

    #[tokio::test]
    async fn jwks_key_whose_alg_contradicts_its_type_is_skipped() {
        let good = TestKey::es256("ec-1");
        let mut contradicting = TestKey::rsa("rsa-1");
        contradicting.jwk["alg"] = json!("ES256");
        let (auth, _dir, _) = file_authenticator(&[&good, &contradicting]).await;

        let token = contradicting.sign(&claims(json!({})));

        assert_eq!(rejection(auth.authenticate(Some(&bearer(&token))).await), TokenRejection::UnknownKeyId);
    }

    #[test]
    fn unusable_jwks_keys_are_skipped_without_failing_the_set() {
        let good = TestKey::ed25519("ed-1");
        let document = json!({ "keys": [
            good.jwk,
            { "kty": "OKP", "crv": "Ed25519", "kid": "short", "x": URL_SAFE_NO_PAD.encode([7u8; 8]) },
            { "kty": "oct", "kid": "hmac", "k": URL_SAFE_NO_PAD.encode(DEV_SECRET) },
            { "kty": "EC", "crv": "P-384", "kid": "p384", "x": "AA", "y": "AA" },
            { "kty": "RSA", "kid": "enc", "use": "enc", "n": "AQAB", "e": "AQAB" },
            { "kty": "RSA", "kid": "tiny", "n": URL_SAFE_NO_PAD.encode([0xffu8; 64]), "e": "AQAB" },
            { "kty": "EC", "crv": "P-256", "kid": "off-curve",
              "x": URL_SAFE_NO_PAD.encode([1u8; 32]), "y": URL_SAFE_NO_PAD.encode([2u8; 32]) },
            { "kid": "no-kty" },
        ]});

        let keys = parse_jwks(document.to_string().as_bytes()).unwrap();

        assert_eq!(keys.keys().collect::<Vec<_>>(), vec!["ed-1"]);
    }

    #[test]
    fn jwks_without_a_usable_key_is_an_error() {
        assert!(parse_jwks(br#"{"keys":[]}"#).is_err());
        assert!(parse_jwks(b"not json").is_err());
    }

    // --- configuration -----------------------------------------------------------------------

    #[tokio::test]
    async fn jwks_without_issuer_or_audience_is_refused_at_start() {
        let key = TestKey::es256("ec-1");
        let (_, _dir, path) = file_authenticator(&[&key]).await;
        let without_issuer =
            AuthConfig { issuer: None, ..AuthConfig::with_jwks(JwksSource::File(path.clone()), ISSUER, AUDIENCE) };
        let without_audience =
            AuthConfig { audience: None, ..AuthConfig::with_jwks(JwksSource::File(path), ISSUER, AUDIENCE) };

        for config in [without_issuer, without_audience, AuthConfig::default()] {
            assert!(matches!(Authenticator::new(config).await, Err(AuthError::Misconfigured { .. })));
        }
    }

    #[tokio::test]
    async fn short_dev_secret_or_large_leeway_is_refused() {
        assert!(matches!(
            Authenticator::new(AuthConfig::dev(b"short".to_vec())).await,
            Err(AuthError::Misconfigured { .. })
        ));
        assert!(matches!(
            mint_dev_token(b"short", DEV_ISSUER, DEV_AUDIENCE, "dev", TENANT, &[], Duration::from_secs(60)),
            Err(AuthError::Misconfigured { .. })
        ));
        let lax = AuthConfig { leeway_seconds: MAX_LEEWAY_SECONDS + 1, ..AuthConfig::dev(DEV_SECRET) };
        assert!(matches!(Authenticator::new(lax).await, Err(AuthError::Misconfigured { .. })));
    }

    #[test]
    fn debug_output_redacts_the_dev_secret() {
        let rendered = format!("{:?}", AuthConfig::dev(DEV_SECRET));

        assert!(!rendered.contains("dev-secret"), "{rendered}");
        assert!(rendered.contains("<redacted>"));
    }

    // --- development tokens ------------------------------------------------------------------

    #[tokio::test]
    async fn minted_dev_token_is_accepted_with_the_dev_secret() {
        let auth = Authenticator::new(AuthConfig::dev(DEV_SECRET)).await.unwrap();
        let token = mint_dev_token(
            DEV_SECRET,
            DEV_ISSUER,
            DEV_AUDIENCE,
            "alice",
            TENANT,
            &["integration.connections.write", "integration.runs.read"],
            Duration::from_secs(300),
        )
        .unwrap();

        let principal = auth.authenticate(Some(&bearer(&token))).await.unwrap();

        assert_eq!(principal.subject, "alice");
        assert_eq!(principal.tenant_id, TENANT);
        assert_eq!(principal.client_id, None);
        assert!(principal.has_scope("integration.connections.write"));
        assert!(principal.has_scope("integration.runs.read"));
    }

    #[tokio::test]
    async fn dev_token_signed_with_another_secret_or_for_another_audience_is_rejected() {
        let auth = Authenticator::new(AuthConfig::dev(DEV_SECRET)).await.unwrap();
        let other_secret = [9u8; 32];
        let ttl = Duration::from_secs(60);

        let wrong_secret = mint_dev_token(&other_secret, DEV_ISSUER, DEV_AUDIENCE, "a", TENANT, &[], ttl).unwrap();
        let wrong_audience = mint_dev_token(DEV_SECRET, DEV_ISSUER, "elsewhere", "a", TENANT, &[], ttl).unwrap();
        let wrong_issuer = mint_dev_token(DEV_SECRET, "someone", DEV_AUDIENCE, "a", TENANT, &[], ttl).unwrap();

        assert_eq!(rejection(auth.authenticate(Some(&bearer(&wrong_secret))).await), TokenRejection::BadSignature);
        assert_eq!(rejection(auth.authenticate(Some(&bearer(&wrong_audience))).await), TokenRejection::WrongAudience);
        assert_eq!(rejection(auth.authenticate(Some(&bearer(&wrong_issuer))).await), TokenRejection::WrongIssuer);
    }

    #[tokio::test]
    async fn hs384_is_rejected_even_in_dev_mode() {
        let auth = Authenticator::new(AuthConfig::dev(DEV_SECRET)).await.unwrap();
        let now = unix_now();
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS384),
            &json!({ "iss": DEV_ISSUER, "aud": DEV_AUDIENCE, "sub": "a", "tenantId": TENANT, "exp": now + 60 }),
            &EncodingKey::from_secret(DEV_SECRET).unwrap(),
        )
        .unwrap();

        assert_eq!(rejection(auth.authenticate(Some(&bearer(&token))).await), TokenRejection::HmacNotAccepted);
    }

    #[tokio::test]
    async fn asymmetric_token_is_rejected_when_only_a_dev_secret_is_configured() {
        let auth = Authenticator::new(AuthConfig::dev(DEV_SECRET)).await.unwrap();
        let key = TestKey::es256("ec-1");
        let token = key.sign(&claims(json!({ "iss": DEV_ISSUER, "aud": DEV_AUDIENCE })));

        assert_eq!(rejection(auth.authenticate(Some(&bearer(&token))).await), TokenRejection::UnsupportedAlgorithm);
    }

    #[test]
    fn minting_refuses_scopes_with_whitespace() {
        let result = mint_dev_token(
            DEV_SECRET,
            DEV_ISSUER,
            DEV_AUDIENCE,
            "a",
            TENANT,
            &["integration.runs.read integration.credentials.rotate"],
            Duration::from_secs(60),
        );

        assert!(matches!(result, Err(AuthError::Misconfigured { .. })));
    }

    // --- the Authorization header and challenges ---------------------------------------------

    #[tokio::test]
    async fn missing_authorization_header_is_a_missing_token_with_a_realm_challenge() {
        let auth = Authenticator::new(AuthConfig::dev(DEV_SECRET)).await.unwrap();

        let error = auth.authenticate(None).await.unwrap_err();

        assert_eq!(error, AuthError::MissingToken);
        assert_eq!(error.www_authenticate(), r#"Bearer realm="integration-engine""#);
        assert_eq!(error.status_code(), StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn basic_scheme_is_treated_as_a_missing_bearer_token() {
        let auth = Authenticator::new(AuthConfig::dev(DEV_SECRET)).await.unwrap();

        let error = auth.authenticate(Some("Basic YWxpY2U6c2VjcmV0")).await.unwrap_err();

        assert_eq!(error, AuthError::MissingToken);
        assert_eq!(error.www_authenticate(), r#"Bearer realm="integration-engine""#);
    }

    #[tokio::test]
    async fn bearer_scheme_is_matched_case_insensitively() {
        let auth = Authenticator::new(AuthConfig::dev(DEV_SECRET)).await.unwrap();
        let token =
            mint_dev_token(DEV_SECRET, DEV_ISSUER, DEV_AUDIENCE, "a", TENANT, &[], Duration::from_secs(60)).unwrap();

        for scheme in ["bearer", "BEARER", "BeArEr"] {
            assert!(auth.authenticate(Some(&format!("{scheme} {token}"))).await.is_ok(), "{scheme}");
        }
    }

    #[tokio::test]
    async fn bearer_scheme_without_a_single_token_is_an_invalid_token() {
        let auth = Authenticator::new(AuthConfig::dev(DEV_SECRET)).await.unwrap();

        for header in ["Bearer", "Bearer   ", "Bearer a.b.c d.e.f"] {
            let error = auth.authenticate(Some(header)).await.unwrap_err();
            assert_eq!(error, AuthError::InvalidToken { reason: TokenRejection::MalformedHeader }, "{header:?}");
        }
    }

    #[test]
    fn invalid_token_challenge_names_the_failed_check() {
        let error = AuthError::InvalidToken { reason: TokenRejection::Expired };

        assert_eq!(
            error.www_authenticate(),
            r#"Bearer error="invalid_token", error_description="the token has expired""#
        );
        assert_eq!(error.status_code(), StatusCode::UNAUTHORIZED);
    }

    #[test]
    fn insufficient_scope_challenge_names_the_scope() {
        assert_eq!(
            insufficient_scope_challenge("integration.connections.write"),
            r#"Bearer error="insufficient_scope", scope="integration.connections.write""#
        );
        // Nothing can break out of the quoted value.
        assert_eq!(
            insufficient_scope_challenge("a\"b\\c\r\nd"),
            r#"Bearer error="insufficient_scope", scope="a?b?c??d""#
        );
    }

    #[test]
    fn jwks_unavailable_is_a_service_unavailable() {
        let error = AuthError::JwksUnavailable { reason: "down".to_owned() };

        assert_eq!(error.status_code(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(error.www_authenticate(), r#"Bearer realm="integration-engine""#);
    }

    // --- verified-token cache ----------------------------------------------------------------

    #[tokio::test]
    async fn repeated_token_is_answered_from_the_cache_with_the_same_principal() {
        let key = TestKey::rsa("rsa-1");
        let (auth, _dir, _) = file_authenticator(&[&key]).await;
        let header = bearer(&key.sign(&claims(json!({}))));

        let first = auth.authenticate(Some(&header)).await.unwrap();
        let cached = auth.cached(&token_digest(header.trim_start_matches("Bearer ")));
        let second = auth.authenticate(Some(&header)).await.unwrap();

        assert_eq!(cached.as_ref(), Some(&first));
        assert_eq!(second, first);
    }

    fn principal(subject: &str) -> Principal {
        Principal {
            subject: subject.to_owned(),
            client_id: None,
            tenant_id: TENANT.to_owned(),
            scopes: BTreeSet::new(),
        }
    }

    #[test]
    fn token_cache_serves_an_entry_only_before_its_exp() {
        let mut cache = TokenCache::new(10);
        let key = token_digest("token");
        cache.insert(key, principal("a"), 1_000, 900);

        assert_eq!(cache.get(&key, 999), Some(principal("a")));
        assert_eq!(cache.get(&key, 1_000), None);
        assert!(cache.entries.is_empty(), "the expired entry is dropped");

        cache.insert(key, principal("a"), 1_000, 1_000);
        assert!(cache.entries.is_empty(), "an already expired token is not cached");
    }

    #[test]
    fn token_cache_stays_bounded_and_evicts_the_soonest_to_expire() {
        let mut cache = TokenCache::new(100);
        let now = 1_000;
        for i in 0..100u64 {
            cache.insert(token_digest(&format!("t{i}")), principal("a"), now + 10 + i, now);
        }
        cache.insert(token_digest("newest"), principal("b"), now + 10_000, now);

        assert!(cache.entries.len() <= 100);
        assert!(cache.get(&token_digest("newest"), now).is_some());
        assert!(cache.get(&token_digest("t0"), now).is_none(), "the soonest to expire went first");
        assert!(cache.get(&token_digest("t99"), now).is_some());

        for i in 0..1_000u64 {
            cache.insert(token_digest(&format!("u{i}")), principal("c"), now + 50 + i, now);
            assert!(cache.entries.len() <= 100);
        }
    }
}
