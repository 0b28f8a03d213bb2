//! OAuth2 client credentials (RFC 6749 §4.4) for providers whose auth model needs it: the
//! connection's credential is the client secret, exchanged at the provider's token endpoint for
//! an access token with the `oauth2` crate.
//!
//! - Tokens are cached per token endpoint, client, scopes and client secret (a rotated secret
//!   gets its own token), until shortly before they expire ([`refresh_margin`]).
//! - Many callers needing a token at once cause one request to the token endpoint (single
//!   flight): they wait on the entry's lock while the first one refreshes it.
//! - Neither the client secret nor the access token is ever logged or recorded: [`AccessToken`]
//!   redacts its `Debug`, and token endpoint errors are reported by their RFC 6749 §5.2 code.
//!
//! A connection opts in with `configuration.tokenUrl` and `configuration.clientId` (and
//! optionally `configuration.scope`, space-separated).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use oauth2::basic::BasicClient;
use oauth2::{AuthType, ClientId, ClientSecret, HttpRequest, HttpResponse, Scope, TokenResponse, TokenUrl};
use ring::digest;
use serde_json::{Map, Value};

use crate::call::{CallError, Credential};

/// The configuration key of the token endpoint.
pub const TOKEN_URL: &str = "tokenUrl";
/// The configuration key of the client id.
pub const CLIENT_ID: &str = "clientId";
/// The configuration key of the requested scopes (space-separated).
pub const SCOPE: &str = "scope";
/// How long a token without `expires_in` is reused.
const LIFETIME_WITHOUT_EXPIRY: Duration = Duration::from_secs(60);
/// The longest a token is reused, whatever its `expires_in` says (a huge value must neither
/// keep a revoked token forever nor overflow the clock).
pub const MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// The largest token response read; a larger one is refused (a token response is a few hundred
/// bytes, a misbehaving endpoint must not fill the memory).
pub const MAX_TOKEN_RESPONSE: usize = 64 * 1024;
/// Grants kept at most (connections with a client credentials grant are few).
const CAPACITY: usize = 1024;

/// A connection's client credentials grant, from its configuration.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientCredentialsGrant {
    pub token_url: String,
    pub client_id: String,
    pub scopes: Vec<String>,
}

impl ClientCredentialsGrant {
    /// The grant the configuration names; `None` when it names no token endpoint.
    pub fn from_configuration(configuration: &Map<String, Value>) -> Option<Result<Self, String>> {
        let token_url = configuration.get(TOKEN_URL)?;
        let text = |key: &str, value: Option<&Value>| match value {
            Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.trim().to_owned()),
            _ => Err(format!("configuration.{key} must be a non-empty string")),
        };
        Some((|| {
            let token_url = text(TOKEN_URL, Some(token_url))?;
            TokenUrl::new(token_url.clone()).map_err(|e| format!("configuration.{TOKEN_URL}: {e}"))?;
            let client_id = text(CLIENT_ID, configuration.get(CLIENT_ID))?;
            let scopes = match configuration.get(SCOPE) {
                None => Vec::new(),
                Some(Value::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
                Some(_) => return Err(format!("configuration.{SCOPE} must be a space-separated string")),
            };
            Ok(Self { token_url, client_id, scopes })
        })())
    }
}

/// An access token. `Debug` never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct AccessToken(String);

impl AccessToken {
    pub fn secret(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccessToken(<redacted>)")
    }
}

struct Cached {
    token: AccessToken,
    /// When the token must be refreshed: its expiry minus the margin.
    refresh_at: Instant,
}

/// The entry of one grant and client secret: its lock is the single flight.
type Slot = Arc<tokio::sync::Mutex<Option<Cached>>>;

/// Cached access tokens, shared by every run of the process.
pub struct TokenCache {
    http: reqwest::Client,
    /// By grant and client secret digest, bounded by `quick_cache` (the engine's cache crate),
    /// which keeps the grants used most.
    slots: quick_cache::sync::Cache<(ClientCredentialsGrant, Vec<u8>), Slot>,
}

impl fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenCache").finish_non_exhaustive()
    }
}

/// How long before expiry a token is refreshed: 30 s, or half its lifetime if that is shorter,
/// so a token is never used in its last moments (clocks and queues differ).
pub fn refresh_margin(lifetime: Duration) -> Duration {
    Duration::from_secs(30).min(lifetime / 2)
}

impl TokenCache {
    /// Tokens fetched with `http` (the egress-checked client, which follows no redirects).
    pub fn new(http: reqwest::Client) -> Self {
        Self { http, slots: quick_cache::sync::Cache::new(CAPACITY) }
    }

    /// A valid access token for `grant` with `client_secret`: the cached one, or a new one.
    pub async fn access_token(
        &self,
        grant: &ClientCredentialsGrant,
        client_secret: &Credential,
    ) -> Result<AccessToken, CallError> {
        // Keyed by the secret's digest, never the secret: a rotated secret gets its own token.
        let secret_digest = digest::digest(&digest::SHA256, client_secret.expose()).as_ref().to_vec();
        let key = (grant.clone(), secret_digest);
        let slot = self.slots.get_or_insert_with(&key, || Ok::<_, std::convert::Infallible>(Slot::default()));
        let Ok(slot) = slot;
        // Concurrent callers queue here; the first refreshes, the others find its token.
        let mut cached = slot.lock().await;
        if let Some(c) = cached.as_ref()
            && Instant::now() < c.refresh_at
        {
            return Ok(c.token.clone());
        }
        let (token, lifetime) = self.fetch(grant, client_secret).await?;
        let now = Instant::now();
        // Checked: `lifetime` is at most MAX_LIFETIME, but an Instant near its end of range
        // must not panic either (then the token is simply not reused).
        let refresh_at = now.checked_add(lifetime - refresh_margin(lifetime)).unwrap_or(now);
        *cached = Some(Cached { token: token.clone(), refresh_at });
        Ok(token)
    }

    /// One token request (client authentication with HTTP Basic, RFC 6749 §2.3.1).
    async fn fetch(
        &self,
        grant: &ClientCredentialsGrant,
        client_secret: &Credential,
    ) -> Result<(AccessToken, Duration), CallError> {
        let secret = std::str::from_utf8(client_secret.expose())
            .map_err(|_| CallError::Permanent("the client secret is not valid UTF-8".into()))?;
        let token_url = TokenUrl::new(grant.token_url.clone())
            .map_err(|e| CallError::Permanent(format!("configuration.{TOKEN_URL}: {e}")))?;
        let client = BasicClient::new(ClientId::new(grant.client_id.clone()))
            .set_client_secret(ClientSecret::new(secret.to_owned()))
            .set_auth_type(AuthType::BasicAuth)
            .set_token_uri(token_url);
        let http = self.http.clone();
        let send = move |request: HttpRequest| {
            let http = http.clone();
            async move { send(&http, request).await }
        };
        let response = client
            .exchange_client_credentials()
            .add_scopes(grant.scopes.iter().cloned().map(Scope::new))
            .request_async(&send)
            .await
            .map_err(token_error)?;
        let lifetime = response.expires_in().unwrap_or(LIFETIME_WITHOUT_EXPIRY).min(MAX_LIFETIME);
        Ok((AccessToken(response.access_token().secret().clone()), lifetime))
    }
}

/// The transport of the `oauth2` crate's requests: our egress-checked reqwest client.
async fn send(http: &reqwest::Client, request: HttpRequest) -> Result<HttpResponse, TransportError> {
    let (parts, body) = request.into_parts();
    let url = reqwest::Url::parse(&parts.uri.to_string()).map_err(|e| TransportError(e.to_string()))?;
    let response = http
        .request(parts.method, url)
        .headers(parts.headers)
        .body(body)
        .send()
        .await
        .map_err(|e| TransportError(crate::call::transport_error(&e).to_string()))?;
    let mut answer = HttpResponse::new(Vec::new());
    *answer.status_mut() = response.status();
    *answer.headers_mut() = response.headers().clone();
    let body = crate::egress::read_capped(response, MAX_TOKEN_RESPONSE)
        .await
        .map_err(|e| TransportError(crate::call::transport_error(&e).to_string()))?;
    if body.truncated {
        return Err(TransportError(format!("the token response is larger than {MAX_TOKEN_RESPONSE} bytes")));
    }
    *answer.body_mut() = body.bytes;
    Ok(answer)
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct TransportError(String);

/// A failed token request, classified; the message names the RFC 6749 §5.2 error code, never a
/// secret.
fn token_error(error: oauth2::RequestTokenError<TransportError, oauth2::basic::BasicErrorResponse>) -> CallError {
    use oauth2::RequestTokenError as E;
    match error {
        E::ServerResponse(response) => CallError::Permanent(format!(
            "token endpoint refused the client credentials: {}{}",
            response.error(),
            response.error_description().map(|d| format!(" ({d})")).unwrap_or_default()
        )),
        E::Request(e) => CallError::Retryable(format!("token endpoint unreachable: {e}")),
        E::Parse(e, _) => CallError::Retryable(format!("token endpoint answered an unreadable body: {e}")),
        E::Other(e) => CallError::Retryable(format!("token endpoint: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_grant_comes_from_the_configuration() {
        let config = json!({"tokenUrl": "https://id.example/oauth/token", "clientId": "engine", "scope": "repo read"});
        let grant = ClientCredentialsGrant::from_configuration(config.as_object().unwrap()).unwrap().unwrap();
        assert_eq!(grant.scopes, ["repo", "read"]);
        assert!(ClientCredentialsGrant::from_configuration(json!({}).as_object().unwrap()).is_none());
        let no_client = json!({"tokenUrl": "https://id.example/oauth/token"});
        assert!(ClientCredentialsGrant::from_configuration(no_client.as_object().unwrap()).unwrap().is_err());
    }

    #[test]
    fn tokens_are_refreshed_before_they_expire() {
        assert_eq!(refresh_margin(Duration::from_secs(3600)), Duration::from_secs(30));
        assert_eq!(refresh_margin(Duration::from_secs(10)), Duration::from_secs(5));
        assert_eq!(refresh_margin(MAX_LIFETIME), Duration::from_secs(30));
        assert_eq!(format!("{:?}", AccessToken("tok".into())), "AccessToken(<redacted>)");
    }
}
