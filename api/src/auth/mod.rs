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
//!
//! This module holds the configuration, the principal and the errors; `verify.rs` the
//! [`Authenticator`], `claims.rs` reading a token's header and claims, `key_sets.rs` the
//! identity provider's JWKS (fetched and cached), `token_cache.rs` verified tokens' principals,
//! and `dev_tokens.rs` development tokens.

use std::collections::hash_map::Entry;
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::StatusCode;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::crypto::CryptoProvider;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

mod claims;
mod dev_tokens;
mod key_sets;
mod roles;
#[cfg(test)]
mod tests;
mod token_cache;
mod verify;

use claims::*;
use dev_tokens::*;
pub use dev_tokens::{mint_dev_token, mint_dev_token_with_roles};
use key_sets::*;
use roles::*;
pub use roles::{RolePolicy, RoleRules};
use token_cache::*;
pub use verify::Authenticator;
use verify::*;

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
    /// Where tokens carry roles and the policy over them; without it, scopes alone decide.
    pub roles: Option<RoleRules>,
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
            roles: None,
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
            .field("roles", &self.roles)
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
    /// The caller's roles, from the configured roles claim; read only when a role policy is
    /// configured (empty otherwise).
    pub roles: BTreeSet<String>,
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
