//! Integration operations: what a run asks a provider to do, resolved to the provider's API
//! client. The run executor (workers) knows nothing vendor-specific: it resolves the run's
//! operation here, takes the operation's retry policy, and calls it.
//!
//! | operation | providers | client |
//! |---|---|---|
//! | `http.request` | any | [`crate::http_call`]: a signed HTTP call to the provider's `baseUrl` |
//! | `OpenPullRequest` | GitHub | [`crate::github_api`]: `POST /repos/{owner}/{repo}/pulls` |
//! | `CheckHealth` | GitHub | [`crate::github_api`]: `GET /user` (the authenticated user) |
//! | `CheckHealth` | Twilio (with `configuration.accountSid`) | [`crate::twilio_api`]: "Fetch the balance" (`GET /2010-04-01/Accounts/{AccountSid}/Balance.json`) |
//! | `CheckHealth` | others | a signed `GET` of the connection's `configuration.healthCheckPath` (default `/health`) below `baseUrl` |
//! | `CheckSigningSecret` | any | local: the credential is a `whsec_` secret of at least 24 bytes (a generated version's check) |
//!
//! `CheckHealth` is what connection health checks run, and what a credential rotation's
//! `VerifyCredential` run performs with the pending version.
//!
//! **Credential issuance** ([`credential_issuance`], [`ApiClients::issue_credential`],
//! [`ApiClients::revoke_credential`]): the providers whose API issues a connection's next
//! credential and revokes old ones. Twilio: API keys (`SK…:secret`) created and deleted through
//! the Keys resource with the connection's `keyIssuerCredentialRef` (a Main key or the account's
//! auth token).

use std::time::Duration;

use domain::clock::Clock;
use serde_json::{Map, Value};
use thiserror::Error;

pub use crate::call::{CallError, Credential};
use crate::egress::{EgressError, EgressPolicy, http_client};
use crate::oauth2_client_credentials::{AccessToken, ClientCredentialsGrant, TokenCache};
use crate::{github_api, http_call, twilio_api};

/// The operation name of the generic signed HTTP call.
pub const HTTP_REQUEST: &str = "http.request";
/// The operation name of GitHub's "create a pull request".
pub const OPEN_PULL_REQUEST: &str = "OpenPullRequest";
/// The operation name of the provider's health operation.
pub const CHECK_HEALTH: &str = "CheckHealth";
/// The check of a signing secret the engine generated (`whsec_` and base64 of at least 24
/// bytes): local, since the receiver learns the secret from us and cannot vouch for it first.
pub const CHECK_SIGNING_SECRET: &str = "CheckSigningSecret";
/// The shortest key a generated signing secret may hold, in bytes.
const MIN_SIGNING_KEY_BYTES: usize = 24;
/// The configuration key naming the health endpoint of a provider without a known API client.
pub const HEALTH_CHECK_PATH: &str = "healthCheckPath";
/// The health endpoint of a provider without a known API client, when the connection names none.
pub const DEFAULT_HEALTH_CHECK_PATH: &str = "/health";

/// The provider and connection a run targets, as registered.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderTarget {
    /// The provider's key in its tenant, e.g. `github`.
    pub provider_key: String,
    /// The API client implementation named at registration, e.g. `ConnectSoft.SourceControl.Providers.GitHub`.
    pub api_client: String,
    /// Where the provider's API lives, e.g. `https://api.github.com`.
    pub base_url: String,
    /// The connection's provider settings (`organization`, `defaultBranch`, ...).
    pub configuration: Map<String, Value>,
}

impl ProviderTarget {
    /// Whether the provider is GitHub (by its key or its API client's name).
    pub fn is_github(&self) -> bool {
        self.provider_key == "github"
            || self.api_client.rsplit('.').next().is_some_and(|name| name.eq_ignore_ascii_case("github"))
    }

    /// Whether the provider is Twilio (by its key, e.g. `twilio-sms`, or its API client's name).
    pub fn is_twilio(&self) -> bool {
        self.provider_key == "twilio"
            || self.provider_key.starts_with("twilio-")
            || self.api_client.rsplit('.').next().is_some_and(|name| name.eq_ignore_ascii_case("twilio"))
    }

    /// The Twilio account the connection names (`configuration.accountSid`), if any.
    fn twilio_account_sid(&self) -> Option<&str> {
        self.configuration.get(twilio_api::ACCOUNT_SID).and_then(Value::as_str)
    }
}

/// How an operation is retried: attempts, the per-attempt deadline and the backoff between.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// How long one attempt may take before it counts as failed.
    pub attempt_timeout: Duration,
    /// The wait before the second attempt; each later wait doubles, up to `max_backoff`.
    pub first_backoff: Duration,
    pub max_backoff: Duration,
}

/// Why an operation could not be resolved for a run: permanent, the run fails at once.
#[derive(Debug, Error, PartialEq)]
pub enum ResolveError {
    #[error("operation {operation} is not supported for provider {provider} (supported: {supported})")]
    Unsupported { operation: String, provider: String, supported: String },
    #[error("invalid input for {operation}: {reason}")]
    InvalidInput { operation: String, reason: String },
}

/// A run's operation, validated and bound to its API client.
#[derive(Debug, Clone, PartialEq)]
pub enum ResolvedOperation {
    HttpRequest(http_call::HttpRequestInput),
    OpenPullRequest(github_api::OpenPullRequest),
    CheckHealth(HealthCheck),
    CheckSigningSecret,
}

/// How a provider's health (and a credential's validity) is checked.
#[derive(Debug, Clone, PartialEq)]
pub enum HealthCheck {
    /// GitHub's `GET /user` with the credential as bearer token.
    GitHubUser,
    /// Twilio's "Fetch the balance" of the account, with the API key as Basic credentials.
    TwilioBalance(String),
    /// A signed `GET` (as `http.request` signs) of a path below the provider's `baseUrl`.
    SignedGet(http_call::HttpRequestInput),
}

impl ResolvedOperation {
    /// Whether an attempt changes nothing at the provider (the checks, which only read), so
    /// that one made twice, or cut off by a crash, has no effect to account for.
    pub fn is_read_only(&self) -> bool {
        match self {
            Self::CheckHealth(_) | Self::CheckSigningSecret => true,
            // `http.request` may call anything; a pull request is a write.
            Self::HttpRequest(_) | Self::OpenPullRequest(_) => false,
        }
    }

    /// The default retry policy of the operation.
    pub fn retry_policy(&self) -> RetryPolicy {
        match self {
            // Vendor APIs answer in seconds; a pull request that fails three times needs a human.
            Self::OpenPullRequest(_) => RetryPolicy {
                max_attempts: 3,
                attempt_timeout: Duration::from_secs(30),
                first_backoff: Duration::from_secs(2),
                max_backoff: Duration::from_secs(60),
            },
            // Local and deterministic: a second attempt would answer the same.
            Self::CheckSigningSecret => RetryPolicy {
                max_attempts: 1,
                attempt_timeout: Duration::from_secs(5),
                first_backoff: Duration::from_secs(1),
                max_backoff: Duration::from_secs(1),
            },
            // A check answers now or says the provider is not healthy; one retry rides out a blip.
            Self::CheckHealth(_) => RetryPolicy {
                max_attempts: 2,
                attempt_timeout: Duration::from_secs(10),
                first_backoff: Duration::from_secs(1),
                max_backoff: Duration::from_secs(5),
            },
            Self::HttpRequest(_) => RetryPolicy {
                max_attempts: 5,
                attempt_timeout: Duration::from_secs(15),
                first_backoff: Duration::from_secs(1),
                max_backoff: Duration::from_secs(60),
            },
        }
    }
}

/// Resolves `operation` with `input` for the provider of `target`.
pub fn resolve(operation: &str, target: &ProviderTarget, input: &Value) -> Result<ResolvedOperation, ResolveError> {
    let invalid = |reason: String| ResolveError::InvalidInput { operation: operation.into(), reason };
    match operation {
        HTTP_REQUEST => http_call::HttpRequestInput::parse(input).map(ResolvedOperation::HttpRequest).map_err(invalid),
        OPEN_PULL_REQUEST if target.is_github() => github_api::OpenPullRequest::parse(input, &target.configuration)
            .map(ResolvedOperation::OpenPullRequest)
            .map_err(invalid),
        CHECK_HEALTH => health_check(target).map_err(invalid),
        CHECK_SIGNING_SECRET => Ok(ResolvedOperation::CheckSigningSecret),
        _ => Err(ResolveError::Unsupported {
            operation: operation.into(),
            provider: target.provider_key.clone(),
            supported: supported_operations(target).join(", "),
        }),
    }
}

/// The provider's health operation, see [`HealthCheck`].
pub fn health_check(target: &ProviderTarget) -> Result<ResolvedOperation, String> {
    if target.is_github() {
        return Ok(ResolvedOperation::CheckHealth(HealthCheck::GitHubUser));
    }
    if target.is_twilio()
        && let Some(sid) = target.twilio_account_sid()
    {
        if !twilio_api::is_account_sid(sid) {
            return Err(format!("configuration.{} must be a Twilio account sid", twilio_api::ACCOUNT_SID));
        }
        return Ok(ResolvedOperation::CheckHealth(HealthCheck::TwilioBalance(sid.to_owned())));
    }
    let path = match target.configuration.get(HEALTH_CHECK_PATH) {
        None => DEFAULT_HEALTH_CHECK_PATH,
        Some(Value::String(path)) => path.as_str(),
        Some(_) => return Err(format!("configuration.{HEALTH_CHECK_PATH} must be a path")),
    };
    let input = http_call::HttpRequestInput::parse(&serde_json::json!({"method": "GET", "path": path}))
        .map_err(|e| format!("configuration.{HEALTH_CHECK_PATH}: {e}"))?;
    Ok(ResolvedOperation::CheckHealth(HealthCheck::SignedGet(input)))
}

/// The operations the provider of `target` supports.
pub fn supported_operations(target: &ProviderTarget) -> Vec<&'static str> {
    let mut supported = vec![HTTP_REQUEST, CHECK_HEALTH];
    if target.is_github() {
        supported.push(OPEN_PULL_REQUEST);
    }
    supported
}

/// The API clients, sharing one egress-checked HTTP client and the OAuth2 token cache.
#[derive(Clone)]
pub struct ApiClients {
    http: reqwest::Client,
    policy: EgressPolicy,
    tokens: std::sync::Arc<TokenCache>,
    /// The time signed requests carry.
    clock: std::sync::Arc<dyn Clock>,
}

impl std::fmt::Debug for ApiClients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiClients").field("policy", &self.policy).finish_non_exhaustive()
    }
}

impl ApiClients {
    pub fn new(policy: EgressPolicy, clock: std::sync::Arc<dyn Clock>) -> Result<Self, EgressError> {
        let http = http_client(policy, Duration::from_secs(10))?;
        Ok(Self { tokens: std::sync::Arc::new(TokenCache::new(http.clone())), http, policy, clock })
    }

    /// The bearer token of a connection with an OAuth2 client credentials grant (its
    /// credential is then the client secret); `None` for a connection without one.
    async fn oauth2_token(
        &self,
        target: &ProviderTarget,
        credential: &Credential,
    ) -> Result<Option<AccessToken>, CallError> {
        match ClientCredentialsGrant::from_configuration(&target.configuration) {
            None => Ok(None),
            Some(Err(reason)) => Err(CallError::Permanent(reason)),
            Some(Ok(grant)) => {
                let url = reqwest::Url::parse(&grant.token_url)
                    .map_err(|e| CallError::Permanent(format!("configuration.tokenUrl: {e}")))?;
                crate::egress::check_url(self.policy, &url).map_err(CallError::Permanent)?;
                self.tokens.access_token(&grant, credential).await.map(Some)
            }
        }
    }

    /// Performs `operation` against `target` with `credential`; the output is recorded in the
    /// run's `RunCompleted` event, so it never contains the credential.
    pub async fn call(
        &self,
        operation: &ResolvedOperation,
        target: &ProviderTarget,
        credential: &Credential,
    ) -> Result<Value, CallError> {
        if let ResolvedOperation::CheckSigningSecret = operation {
            return check_signing_secret(credential);
        }
        let base = reqwest::Url::parse(&target.base_url)
            .map_err(|e| CallError::Permanent(format!("provider baseUrl {}: {e}", target.base_url)))?;
        crate::egress::check_url(self.policy, &base).map_err(CallError::Permanent)?;
        let oauth2 = self.oauth2_token(target, credential).await?;
        let bearer = oauth2.as_ref().map(AccessToken::secret);
        // With OAuth2 the bearer is the access token; without, the credential itself.
        let token = || match bearer {
            Some(token) => Ok(Credential::new(token.as_bytes().to_vec())),
            None => Ok(credential.clone()),
        };
        match operation {
            ResolvedOperation::HttpRequest(input) | ResolvedOperation::CheckHealth(HealthCheck::SignedGet(input)) => {
                http_call::call(&self.http, &base, input, credential, bearer, self.clock.now()).await
            }
            ResolvedOperation::OpenPullRequest(input) => {
                github_api::open_pull_request(&self.http, &base, input, &token()?).await
            }
            ResolvedOperation::CheckHealth(HealthCheck::GitHubUser) => {
                let token = token()?;
                let token = std::str::from_utf8(token.expose())
                    .map_err(|_| CallError::Permanent("the connection's credential is not a valid token".into()))?;
                github_api::get_authenticated_user(&self.http, &base, token).await
            }
            ResolvedOperation::CheckHealth(HealthCheck::TwilioBalance(sid)) => {
                let account = twilio_api::Account::new(base, sid).map_err(CallError::Permanent)?;
                twilio_api::fetch_balance(&self.http, &account, credential).await
            }
            ResolvedOperation::CheckSigningSecret => check_signing_secret(credential),
        }
    }

    /// The provider's base URL, checked against the egress policy.
    fn checked_base(&self, target: &ProviderTarget) -> Result<reqwest::Url, CallError> {
        let base = reqwest::Url::parse(&target.base_url)
            .map_err(|e| CallError::Permanent(format!("provider baseUrl {}: {e}", target.base_url)))?;
        crate::egress::check_url(self.policy, &base).map_err(CallError::Permanent)?;
        Ok(base)
    }

    /// Has the provider issue a new credential labelled `label` (see [`credential_issuance`]),
    /// authenticated as `issuer`. Credentials already carrying the label (left by an attempt
    /// that died before storing its value) are revoked first, so retrying leaves none behind.
    pub async fn issue_credential(
        &self,
        target: &ProviderTarget,
        issuer: &Credential,
        label: &str,
    ) -> Result<IssuedCredential, CallError> {
        match credential_issuance(target).map_err(CallError::Permanent)? {
            CredentialIssuance::TwilioApiKeys { account_sid } => {
                let account =
                    twilio_api::Account::new(self.checked_base(target)?, &account_sid).map_err(CallError::Permanent)?;
                let key = twilio_api::issue_key(&self.http, &account, issuer, label).await?;
                Ok(IssuedCredential { key_id: key.sid, credential: key.credential })
            }
        }
    }

    /// Revokes at the provider the credential `credential` (a version of the connection's
    /// credential), authenticated as `issuer`; the output names the revoked key id. A key that
    /// is gone already counts as revoked; the issuer's own key and the `in_use` key ids (the
    /// current and pending versions') are never revoked.
    pub async fn revoke_credential(
        &self,
        target: &ProviderTarget,
        issuer: &Credential,
        credential: &Credential,
        in_use: &[String],
    ) -> Result<Value, CallError> {
        match credential_issuance(target).map_err(CallError::Permanent)? {
            CredentialIssuance::TwilioApiKeys { account_sid } => {
                let sid = twilio_api::key_sid(credential).ok_or_else(|| {
                    CallError::Permanent("the version is not a Twilio API key (SK…:secret): nothing to revoke".into())
                })?;
                if twilio_api::key_sid(issuer).as_deref() == Some(sid.as_str()) {
                    return Err(CallError::Permanent(format!("{sid} is the issuer's own key: not revoked")));
                }
                if in_use.contains(&sid) {
                    return Err(CallError::Permanent(format!("{sid} is in use (current or pending): not revoked")));
                }
                let account =
                    twilio_api::Account::new(self.checked_base(target)?, &account_sid).map_err(CallError::Permanent)?;
                twilio_api::delete_key(&self.http, &account, issuer, &sid).await?;
                Ok(serde_json::json!({"revokedKeyIds": [sid]}))
            }
        }
    }

    /// Revokes at the provider every credential labelled `label` (those of an issuance whose
    /// rotation failed) but the `in_use` key ids; the output names the revoked and kept ones.
    pub async fn revoke_labelled(
        &self,
        target: &ProviderTarget,
        issuer: &Credential,
        label: &str,
        in_use: &[String],
    ) -> Result<Value, CallError> {
        match credential_issuance(target).map_err(CallError::Permanent)? {
            CredentialIssuance::TwilioApiKeys { account_sid } => {
                let account =
                    twilio_api::Account::new(self.checked_base(target)?, &account_sid).map_err(CallError::Permanent)?;
                let issuer_sid = twilio_api::key_sid(issuer);
                let (kept, revoked): (Vec<String>, Vec<String>) =
                    twilio_api::keys_labelled(&self.http, &account, issuer, label)
                        .await?
                        .into_iter()
                        .partition(|sid| in_use.contains(sid) || issuer_sid.as_deref() == Some(sid.as_str()));
                for sid in &revoked {
                    twilio_api::delete_key(&self.http, &account, issuer, sid).await?;
                }
                Ok(serde_json::json!({"revokedKeyIds": revoked, "keptKeyIds": kept}))
            }
        }
    }
}

/// The provider's id of a credential value (Twilio: the API key's sid), for the record.
pub fn credential_key_id(target: &ProviderTarget, credential: &Credential) -> Option<String> {
    match credential_issuance(target).ok()? {
        CredentialIssuance::TwilioApiKeys { .. } => twilio_api::key_sid(credential),
    }
}

/// How a provider's API issues a connection's credentials.
#[derive(Debug, Clone, PartialEq)]
pub enum CredentialIssuance {
    /// Twilio's Keys resource of the account `account_sid`.
    TwilioApiKeys { account_sid: String },
}

/// A credential the provider issued: its id at the provider (not secret) and its value.
#[derive(Debug)]
pub struct IssuedCredential {
    pub key_id: String,
    pub credential: Credential,
}

/// Whether (and how) the provider of `target` issues credentials through its API; `Err` names
/// why not.
pub fn credential_issuance(target: &ProviderTarget) -> Result<CredentialIssuance, String> {
    if !target.is_twilio() {
        return Err(format!(
            "provider {} has no API client that issues credentials (supported: Twilio API keys)",
            target.provider_key
        ));
    }
    match target.twilio_account_sid() {
        Some(sid) if twilio_api::is_account_sid(sid) => {
            Ok(CredentialIssuance::TwilioApiKeys { account_sid: sid.into() })
        }
        _ => Err(format!(
            "issuing Twilio API keys needs configuration.{} (the account sid, AC and 32 hex digits)",
            twilio_api::ACCOUNT_SID
        )),
    }
}

/// Checks a generated signing secret's form; the output names the form, never the secret.
fn check_signing_secret(credential: &Credential) -> Result<Value, CallError> {
    use base64::Engine as _;
    let invalid = || CallError::Permanent("the version is not a whsec_ signing secret of at least 24 bytes".into());
    let key = credential.expose().strip_prefix(b"whsec_").ok_or_else(invalid)?;
    let bytes = base64::engine::general_purpose::STANDARD.decode(key).map_err(|_| invalid())?;
    if bytes.len() < MIN_SIGNING_KEY_BYTES {
        return Err(invalid());
    }
    Ok(serde_json::json!({"form": "whsec", "keyBytes": bytes.len()}))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn github() -> ProviderTarget {
        ProviderTarget {
            provider_key: "github".into(),
            api_client: "ConnectSoft.SourceControl.Providers.GitHub".into(),
            base_url: "https://api.github.com".into(),
            configuration: json!({"organization": "connectsoft-booking", "defaultBranch": "main"})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        }
    }

    #[test]
    fn operations_resolve_to_the_providers_client() {
        let pr = resolve(OPEN_PULL_REQUEST, &github(), &json!({"repo": "booking", "title": "T", "head": "feature"}));
        assert!(matches!(pr, Ok(ResolvedOperation::OpenPullRequest(_))));
        let call = resolve(HTTP_REQUEST, &github(), &json!({"method": "GET", "path": "/zen"}));
        assert!(matches!(call, Ok(ResolvedOperation::HttpRequest(_))));
    }

    #[test]
    fn the_health_operation_is_githubs_user_or_a_signed_get_of_the_configured_path() {
        assert_eq!(
            resolve(CHECK_HEALTH, &github(), &json!({})),
            Ok(ResolvedOperation::CheckHealth(HealthCheck::GitHubUser))
        );
        let mut other =
            ProviderTarget { provider_key: "billing".into(), api_client: "Acme.Billing".into(), ..github() };
        let Ok(ResolvedOperation::CheckHealth(HealthCheck::SignedGet(get))) = resolve(CHECK_HEALTH, &other, &json!({}))
        else {
            panic!("a signed GET");
        };
        assert_eq!((get.method.as_str(), get.path.as_str()), ("GET", "/health"));
        other.configuration.insert(HEALTH_CHECK_PATH.into(), json!("/v1/ping"));
        assert!(matches!(
            resolve(CHECK_HEALTH, &other, &json!({})),
            Ok(ResolvedOperation::CheckHealth(HealthCheck::SignedGet(g))) if g.path == "/v1/ping"
        ));
        other.configuration.insert(HEALTH_CHECK_PATH.into(), json!("https://elsewhere.example/"));
        assert!(resolve(CHECK_HEALTH, &other, &json!({})).is_err(), "the check stays below baseUrl");
    }

    #[test]
    fn a_generated_signing_secret_is_checked_by_its_form() {
        use base64::Engine as _;
        let good = format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode([7u8; 32]));
        assert_eq!(check_signing_secret(&Credential::new(good.into_bytes())).unwrap()["keyBytes"], 32);
        let short = format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode([7u8; 8]));
        for bad in [short.as_str(), "whsec_not base64!", "ghp_token"] {
            let error = check_signing_secret(&Credential::new(bad.as_bytes().to_vec())).unwrap_err();
            assert!(!error.is_retryable() && !error.to_string().contains(bad), "{error}");
        }
    }

    #[test]
    fn unknown_operations_and_foreign_providers_are_unsupported() {
        let twilio = ProviderTarget {
            provider_key: "twilio-sms".into(),
            api_client: "ConnectSoft.Sms.Providers.Twilio".into(),
            ..github()
        };
        let refused = resolve(OPEN_PULL_REQUEST, &twilio, &json!({}));
        assert!(matches!(&refused, Err(ResolveError::Unsupported { provider, .. }) if provider == "twilio-sms"));
        assert!(matches!(resolve("DeleteEverything", &github(), &json!({})), Err(ResolveError::Unsupported { .. })));
    }

    #[test]
    fn twilio_checks_its_balance_and_issues_api_keys_when_the_account_is_named() {
        let mut twilio = ProviderTarget {
            provider_key: "twilio-sms".into(),
            api_client: "ConnectSoft.Sms.Providers.Twilio".into(),
            base_url: "https://api.twilio.com".into(),
            configuration: Map::new(),
        };
        assert!(credential_issuance(&twilio).unwrap_err().contains("accountSid"));
        assert!(matches!(
            resolve(CHECK_HEALTH, &twilio, &json!({})),
            Ok(ResolvedOperation::CheckHealth(HealthCheck::SignedGet(_)))
        ));
        let sid = "AC0123456789abcdef0123456789abcdef";
        twilio.configuration.insert("accountSid".into(), json!(sid));
        assert_eq!(
            resolve(CHECK_HEALTH, &twilio, &json!({})),
            Ok(ResolvedOperation::CheckHealth(HealthCheck::TwilioBalance(sid.into())))
        );
        assert_eq!(credential_issuance(&twilio), Ok(CredentialIssuance::TwilioApiKeys { account_sid: sid.into() }));
        assert!(credential_issuance(&github()).unwrap_err().contains("no API client that issues credentials"));
        let key = Credential::new(b"SK0123456789abcdef0123456789abcdef:s3cret".to_vec());
        assert_eq!(credential_key_id(&twilio, &key).as_deref(), Some("SK0123456789abcdef0123456789abcdef"));
        assert_eq!(credential_key_id(&github(), &key), None);
    }
}
