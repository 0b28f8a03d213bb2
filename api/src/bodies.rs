//! Request and response bodies of the public API, exactly as the spec's examples name them.
//! Their JSON Schemas are committed under `schemas/api/` and served in `/openapi.json`.
//!
//! Every rule a request field must keep is stated twice, side by side: in its schema (a
//! length, a pattern, a range) and in the check that answers 422 when it is broken, here or in
//! the domain decider that owns it. A pattern is a JSON Schema (ECMA) regex, anchored where it
//! must match the whole value; its check below accepts exactly what it matches.

use chrono::{DateTime, Utc};
use domain::connection::Health;
use domain::provider::AuthModel;
use domain::run::RunStatus;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::problem::FieldError;

/// The white space `str::trim` removes (Unicode `White_Space`), as the inside of a regex class.
pub const WHITE_SPACE: &str = r"\t-\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000";

/// Text with a character other than [`WHITE_SPACE`]. Unanchored: the value contains one.
pub const NOT_BLANK: &str = r"[^\t-\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]";

/// A `kv://VAULT/NAME[?version=N]` vault reference as `domain::secret_ref::SecretRef::parse`
/// reads it: vault and name 1 to 128 of `a-z 0-9 . _ -`; `N` a positive `u32` (`+` and leading
/// zeros allowed, as Rust reads the number).
pub const SECRET_REF: &str = concat!(
    "^kv://[a-z0-9._-]{1,128}/[a-z0-9._-]{1,128}",
    "([?]version=[+]?0*([1-9][0-9]{0,8}|[1-3][0-9]{9}|4[01][0-9]{8}|42[0-8][0-9]{7}|429[0-3][0-9]{6}",
    "|4294[0-8][0-9]{5}|42949[0-5][0-9]{4}|429496[0-6][0-9]{3}|4294967[01][0-9]{2}|42949672[0-8][0-9]",
    "|429496729[0-5]))?$"
);

/// A provider key (`domain::ids::is_slug`): 1 to 128 of `a-z 0-9 -`, no hyphen first or last.
pub const PROVIDER_KEY: &str = "^[a-z0-9]([a-z0-9-]{0,126}[a-z0-9])?$";

/// An implementation's dotted name (`domain::provider`): ASCII letters and digits, in segments
/// joined by dots.
pub const API_CLIENT: &str = "^[A-Za-z0-9]+([.][A-Za-z0-9]+)*$";

/// A provider's base URL (`domain::provider`): it starts with `https://` or `http://`.
pub const HTTP_URL_PREFIX: &str = "^https?://";

/// An event type, or a prefix followed by `*` (`domain::subscription::is_event_type_pattern`):
/// at most 128 characters of letters, digits, `.`, `_`, `-`; `*` alone matches every type.
pub const EVENT_TYPE_PATTERN: &str = "^([A-Za-z0-9._-]{1,128}|[A-Za-z0-9._-]{1,127}[*]|[*])$";

/// A credential id (`domain::credential::is_credential_id`): `cred-NAME` or `cred-NAME~VAULT`.
pub const CREDENTIAL_ID: &str = "^cred-[a-z0-9._-]{1,128}(~[a-z0-9._-]{1,128})?$";

/// An `https` URL the engine calls out to (a webhook endpoint, a provider's key set): the host
/// a DNS name of ASCII letters, digits and inner single hyphens whose last label starts with a
/// letter and is not `localhost`; an optional port (0 to 65535); path, query and fragment of
/// URL characters (`A-Z a-z 0-9 - . _ ~ ! $ & ' ( ) * + , ; = : @ % /`, and `?` after the
/// path). No address literals and no credentials: egress policy allows those only to hosts an
/// operator allow-lists (`--webhook-allow-hosts`), and such hosts may also use `http`.
/// [`is_https_url`] is its check.
pub const HTTPS_URL: &str = concat!(
    "^https://([A-Za-z0-9]+(-[A-Za-z0-9]+)*[.])*",
    r"(?![lL][oO][cC][aA][lL][hH][oO][sS][tT][.]?([:/?#]|(?![\s\S])))[A-Za-z][A-Za-z0-9]*(-[A-Za-z0-9]+)*[.]?",
    "(:([0-9]{1,4}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))?",
    "(/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*)?([?][A-Za-z0-9._~!$&'()*+,;=:@%/?-]*)?",
    "(#[A-Za-z0-9._~!$&'()*+,;=:@%/?-]*)?$"
);

/// A configuration key that names a secret (`domain::connection::is_secret_key`): one that,
/// ignoring ASCII case and `-`, contains `secret`, `token`, `password`, `passwd`, `apikey`,
/// `api_key`, `privatekey` or `credential` and does not end in `url`, `uri` or `endpoint`.
pub const SECRET_KEY: &str = concat!(
    r"^(?![\s\S]*([uU]-*[rR]-*[lLiI]|[eE]-*[nN]-*[dD]-*[pP]-*[oO]-*[iI]-*[nN]-*[tT])-*(?![\s\S]))[\s\S]*(",
    "[sS]-*[eE]-*[cC]-*[rR]-*[eE]-*[tT]|[tT]-*[oO]-*[kK]-*[eE]-*[nN]",
    "|[pP]-*[aA]-*[sS]-*[sS]-*[wW]-*[oO]-*[rR]-*[dD]|[pP]-*[aA]-*[sS]-*[sS]-*[wW]-*[dD]",
    "|[aA]-*[pP]-*[iI]-*(_-*)?[kK]-*[eE]-*[yY]|[pP]-*[rR]-*[iI]-*[vV]-*[aA]-*[tT]-*[eE]-*[kK]-*[eE]-*[yY]",
    "|[cC]-*[rR]-*[eE]-*[dD]-*[eE]-*[nN]-*[tT]-*[iI]-*[aA]-*[lL])"
);

pub const PROJECT_ID_MAX: usize = 128;
pub const PROVIDER_ID_MAX: usize = 140;
pub const DISPLAY_NAME_MAX: usize = 256;
pub const CATEGORY_MAX: usize = 64;
pub const API_CLIENT_MAX: usize = 256;
pub const BASE_URL_MAX: usize = 2048;
pub const CAPABILITY_MAX: usize = 128;
pub const ENDPOINT_URL_MAX: usize = 2048;
pub const REASON_MAX: usize = 256;
pub const PROVIDER_DELIVERY_ID_MAX: usize = 256;
pub const EVENT_NAME_MAX: usize = 128;

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EstablishConnectionRequest {
    /// Must equal the token's tenant when present (else 403).
    #[serde(default)]
    pub tenant_id: Option<String>,
    #[schemars(length(min = 1, max = PROJECT_ID_MAX), pattern(NOT_BLANK))]
    pub project_id: String,
    /// A provider registered in the tenant (`prov-{key}`); one that is not is 404.
    #[schemars(length(min = 1, max = PROVIDER_ID_MAX), pattern(NOT_BLANK))]
    pub provider_id: String,
    #[schemars(length(min = 1, max = DISPLAY_NAME_MAX), pattern(NOT_BLANK))]
    pub display_name: String,
    pub auth_mode: AuthModel,
    /// The vault reference of the connection's credential, in one of the tenant's own vaults
    /// (another vault, or none, is 404).
    #[serde(default)]
    #[schemars(pattern(SECRET_REF))]
    pub credential_ref: Option<String>,
    #[serde(default)]
    #[schemars(with = "ConnectionConfiguration")]
    pub configuration: Map<String, Value>,
}

impl EstablishConnectionRequest {
    /// The rules the API checks itself (the decider checks `credentialRef` and the secret keys
    /// of `configuration`).
    pub fn field_errors(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        require_text(&mut errors, "projectId", &self.project_id, PROJECT_ID_MAX);
        require_text(&mut errors, "providerId", &self.provider_id, PROVIDER_ID_MAX);
        require_text(&mut errors, "displayName", &self.display_name, DISPLAY_NAME_MAX);
        errors
    }
}

/// A connection's `configuration`: provider settings, where a key that names a secret holds
/// its `kv://` reference, never its value, at any depth.
pub struct ConnectionConfiguration;

impl JsonSchema for ConnectionConfiguration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ConnectionConfiguration".into()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let mut schema = configuration_schema(generator);
        schema.insert(
            "description".into(),
            "Provider settings. A key that names a secret (containing, ignoring ASCII case and `-`, `secret`, \
             `token`, `password`, `passwd`, `apikey`, `api_key`, `privatekey` or `credential`, and not ending \
             in `url`, `uri` or `endpoint`) holds a `kv://` reference in one of the tenant's own vaults (or, \
             for `webhookSecretRef`, a shared one), at any depth; another vault, or none, is 404. \
             `webhookSecretRef` verifies inbound webhooks; `webhookJwks` is where the provider publishes \
             the keys of its JWS deliveries."
                .into(),
        );
        schema.insert(
            "properties".into(),
            serde_json::json!({ "webhookJwks": {
                "type": "string",
                "pattern": HTTPS_URL,
                "description": "An https URL on a public host name (address literals and http only for hosts on the egress allow-list)",
            }}),
        );
        schema
    }
}

/// An object inside a connection's configuration, held to the same rule for secrets.
pub struct ConfigurationSection;

impl JsonSchema for ConfigurationSection {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ConfigurationSection".into()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        configuration_schema(generator)
    }
}

/// An object whose secret-named keys hold `kv://` references and whose objects are sections.
fn configuration_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let section = generator.subschema_for::<ConfigurationSection>();
    schemars::json_schema!({
        "type": "object",
        "patternProperties": { SECRET_KEY: { "anyOf": [section, { "type": "string", "pattern": SECRET_REF }] } },
        "additionalProperties": { "anyOf": [section, { "type": ["array", "boolean", "null", "number", "string"] }] },
    })
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionEstablishedResponse {
    pub connection_id: String,
    pub status: String,
    pub provider_id: String,
    pub health: Health,
    pub established_at: DateTime<Utc>,
    pub trace_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionResponse {
    pub connection_id: String,
    pub tenant_id: String,
    pub provider_id: String,
    pub status: String,
    pub health: Health,
    pub last_checked_at: Option<DateTime<Utc>>,
    pub credential_ref: Option<String>,
    pub last_run_id: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegisterProviderRequest {
    /// Must equal the token's tenant when present (else 403).
    #[serde(default)]
    pub tenant_id: Option<String>,
    /// Unique in the tenant (a key taken is 409); lowercase letters, digits and inner hyphens.
    /// The provider id is `prov-{key}`.
    #[schemars(length(min = 1, max = 128), pattern(PROVIDER_KEY))]
    pub key: String,
    #[schemars(length(min = 1, max = DISPLAY_NAME_MAX), pattern(NOT_BLANK))]
    pub display_name: String,
    #[schemars(length(min = 1, max = CATEGORY_MAX), pattern(NOT_BLANK))]
    pub category: String,
    pub auth_model: AuthModel,
    /// The implementation's dotted name, such as `ConnectSoft.Sms.Providers.Twilio`.
    #[schemars(length(min = 1, max = API_CLIENT_MAX), pattern(API_CLIENT))]
    pub api_client: String,
    #[serde(default)]
    #[schemars(inner(length(min = 1, max = CAPABILITY_MAX), pattern(NOT_BLANK)))]
    pub capabilities: Vec<String>,
    #[schemars(length(min = 1, max = BASE_URL_MAX), pattern(HTTP_URL_PREFIX))]
    pub base_url: String,
}

impl RegisterProviderRequest {
    /// The rules the API checks itself (the decider checks `key`, `apiClient` and `baseUrl`).
    pub fn field_errors(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        require_text(&mut errors, "displayName", &self.display_name, DISPLAY_NAME_MAX);
        require_text(&mut errors, "category", &self.category, CATEGORY_MAX);
        require_text(&mut errors, "apiClient", &self.api_client, API_CLIENT_MAX);
        require_text(&mut errors, "baseUrl", &self.base_url, BASE_URL_MAX);
        for (i, capability) in self.capabilities.iter().enumerate() {
            require_text(&mut errors, &format!("capabilities[{i}]"), capability, CAPABILITY_MAX);
        }
        errors
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProviderRegisteredResponse {
    pub provider_id: String,
    pub status: String,
    pub api_client_id: String,
    pub registered_at: DateTime<Utc>,
}

/// A registered provider, as `GET /integrations/providers/{providerId}` answers it.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProviderResponse {
    pub provider_id: String,
    pub tenant_id: String,
    pub key: String,
    pub display_name: String,
    pub category: String,
    pub auth_model: AuthModel,
    pub api_client: String,
    pub api_client_id: String,
    pub capabilities: Vec<String>,
    pub base_url: String,
    /// `Registered`.
    pub status: String,
    pub registered_at: DateTime<Utc>,
}

fn active_by_default() -> bool {
    true
}

/// A whole number as JSON Schema's `integer` reads one (`72`, `72.0` and `7.2e1` alike), or
/// `null`; serde's `u32` would refuse the last two, which the schema calls valid.
fn whole_number<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<u32>, D::Error> {
    let Some(number) = Option::<serde_json::Number>::deserialize(deserializer)? else { return Ok(None) };
    let whole = number.as_u64().or_else(|| {
        number.as_f64().filter(|f| f.fract() == 0.0 && (0.0..=f64::from(u32::MAX)).contains(f)).map(|f| f as u64)
    });
    whole.and_then(|n| u32::try_from(n).ok()).map(Some).ok_or_else(|| {
        serde::de::Error::custom(format!("invalid value: {number}, expected a whole number from 0 to {}", u32::MAX))
    })
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreateSubscriptionRequest {
    /// Must equal the token's tenant when present (else 403).
    #[serde(default)]
    pub tenant_id: Option<String>,
    #[serde(default)]
    pub project_id: Option<String>,
    /// An event type, or a prefix followed by `*`.
    #[schemars(length(min = 1, max = 128), pattern(EVENT_TYPE_PATTERN))]
    pub event_type: String,
    /// Where deliveries are sent: `https` on a DNS host name other than `localhost`, without
    /// credentials (see the pattern). Hosts on the operator's egress allow-list may also be
    /// address literals and use `http`.
    #[schemars(length(min = 1, max = ENDPOINT_URL_MAX), pattern(HTTPS_URL))]
    pub endpoint_url: String,
    /// The vault reference of the signing secret, in one of the tenant's own vaults (another
    /// vault, or none, is 404).
    #[schemars(pattern(SECRET_REF))]
    pub signing_secret_ref: String,
    #[serde(default = "active_by_default")]
    pub active: bool,
    /// Requests in flight to the endpoint at most at once (1 to 1000, default 10).
    #[serde(default, deserialize_with = "whole_number")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_in_flight: Option<u32>,
    /// Requests started per second at most (1 to 10000); absent: no limit.
    #[serde(default, deserialize_with = "whole_number")]
    #[schemars(range(min = 1, max = 10_000))]
    pub rate_limit_per_second: Option<u32>,
    /// Deliver in publication order, the next message after the previous one succeeded or was
    /// dead-lettered (one request in flight).
    #[serde(default)]
    pub strict_ordering: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionCreatedResponse {
    pub subscription_id: String,
    pub status: String,
    pub event_type: String,
    pub created_at: DateTime<Utc>,
}

/// An outbound webhook subscription, as `GET /webhooks/subscriptions/{subscriptionId}` answers
/// it: the signing secret only by its `kv://` ref, never its value.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionResponse {
    pub subscription_id: String,
    pub tenant_id: String,
    pub project_id: Option<String>,
    pub event_type: String,
    pub endpoint_url: String,
    /// The vault reference of the signing secret (`kv://VAULT/NAME`).
    pub signing_secret_ref: String,
    pub active: bool,
    /// `Active` or `Inactive`.
    pub status: String,
    pub created_at: DateTime<Utc>,
    /// Requests in flight to the endpoint at most at once.
    pub max_in_flight: u32,
    /// Requests started per second at most; absent: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_per_second: Option<u32>,
    /// Deliveries in publication order, one at a time.
    pub strict_ordering: bool,
    /// Why the engine deactivated it (410 Gone, `webhook-delivery: disable`, failing too long).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deactivation_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deactivated_at: Option<DateTime<Utc>>,
}

/// The spec's condensed delivery envelope, signed as a whole by the provider.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InboundDeliveryRequest {
    #[schemars(length(min = 1, max = PROVIDER_DELIVERY_ID_MAX), pattern(NOT_BLANK))]
    pub provider_delivery_id: String,
    #[schemars(length(min = 1, max = EVENT_NAME_MAX), pattern(NOT_BLANK))]
    pub event_name: String,
    pub payload: Value,
}

impl InboundDeliveryRequest {
    pub fn field_errors(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        require_text(&mut errors, "providerDeliveryId", &self.provider_delivery_id, PROVIDER_DELIVERY_ID_MAX);
        require_text(&mut errors, "eventName", &self.event_name, EVENT_NAME_MAX);
        errors
    }
}

/// The answer to Slack's `url_verification` handshake (a signed delivery whose `type` is
/// `url_verification`): its `challenge`, echoed; nothing is stored.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct HandshakeAnswer {
    pub challenge: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryAcceptedResponse {
    pub delivery_id: String,
    /// `Accepted`.
    pub status: String,
    pub normalized_event_type: String,
    pub trace_id: String,
    /// `true` (with status 200) when the vendor's delivery id was already accepted on this
    /// connection: the answer names the first delivery and nothing new was stored.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunResponse {
    pub run_id: String,
    pub connection_id: String,
    pub operation: String,
    pub status: RunStatus,
    pub attempts: u32,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub trace_id: String,
    /// The error of the latest failed attempt, or why the run failed.
    pub last_error: Option<String>,
    /// When the next attempt is due, while a failed attempt waits for its retry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// For `DeliverWebhook` runs: the subscription delivered to (also in `connectionId`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscription_id: Option<String>,
    /// Every attempt in order: when, the outcome, and for webhook deliveries the endpoint's
    /// status, latency and the start of its answer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempt_log: Vec<RunAttempt>,
    /// What the completed run produced, as its operation reports it (`OpenPullRequest`:
    /// `{number, id, htmlUrl, state}`; a revocation: `{revokedKeyIds}`; a webhook delivery:
    /// the endpoint's answer; `http.request`: `{status, body}`, the vendor's answer as it came). Absent
    /// until the run completes. The engine puts no credential of its own in it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
}

/// One attempt of a run.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunAttempt {
    pub attempt: u32,
    pub started_at: DateTime<Utc>,
    /// `Running`, `Succeeded` or `Failed`.
    pub outcome: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
    /// At most 1 KiB of the answer's body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_body: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RotateCredentialRequest {
    /// Must equal the token's tenant when present (else 403).
    #[serde(default)]
    pub tenant_id: Option<String>,
    /// A credential of the tenant (one that is not is 404): `cred-NAME`, or `cred-NAME~VAULT`.
    #[schemars(length(min = 6, max = 262), pattern(CREDENTIAL_ID))]
    pub credential_id: String,
    /// Recorded for auditors, e.g. `ScheduledRotation`.
    #[schemars(length(min = 1, max = REASON_MAX), pattern(NOT_BLANK))]
    pub reason: String,
}

impl RotateCredentialRequest {
    pub fn field_errors(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        require_text(&mut errors, "reason", &self.reason, REASON_MAX);
        if !domain::credential::is_credential_id(&self.credential_id) {
            errors.push(FieldError {
                field: "credentialId".into(),
                message: "must be a credential id (cred-NAME, or cred-NAME~VAULT)".into(),
            });
        }
        errors
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RotationStartedResponse {
    pub credential_id: String,
    pub status: String,
    pub new_version_ref: String,
    pub verification_run_id: String,
}

/// Checks that a required text field is not blank ([`NOT_BLANK`]) and at most `max` characters
/// long, counted as JSON Schema counts them (Unicode scalar values); serde checked the shape.
pub fn require_text(errors: &mut Vec<FieldError>, field: &str, value: &str, max: usize) {
    if value.trim().is_empty() {
        errors.push(FieldError { field: field.into(), message: "must not be blank".into() });
    } else if value.chars().count() > max {
        errors.push(FieldError { field: field.into(), message: format!("must be at most {max} characters") });
    }
}

/// Whether `url` matches [`HTTPS_URL`].
pub fn is_https_url(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("https://") else { return false };
    let (authority, tail) = rest.split_at(rest.find(['/', '?', '#']).unwrap_or(rest.len()));
    let (host, port) = match authority.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (authority, None),
    };
    let (before_fragment, fragment) = tail.split_once('#').unwrap_or((tail, ""));
    let (path, query) = before_fragment.split_once('?').unwrap_or((before_fragment, ""));
    is_host_name(host)
        && port.is_none_or(is_port)
        && (path.is_empty() || path.starts_with('/'))
        && path.chars().all(is_url_path_char)
        && query.chars().all(|c| c == '?' || is_url_path_char(c))
        && fragment.chars().all(|c| c == '?' || is_url_path_char(c))
}

/// Labels of ASCII letters and digits joined by single hyphens, dot-separated, an optional
/// final dot; the last label starts with a letter (so no address reads as a name) and is not
/// `localhost`.
fn is_host_name(host: &str) -> bool {
    let labels: Vec<&str> = host.strip_suffix('.').unwrap_or(host).split('.').collect();
    let is_label =
        |label: &str| label.split('-').all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_alphanumeric()));
    let last = labels.last().copied().unwrap_or_default();
    labels.iter().all(|label| is_label(label))
        && last.starts_with(|c: char| c.is_ascii_alphabetic())
        && !last.eq_ignore_ascii_case("localhost")
}

/// 1 to 4 digits, or 5 digits up to 65535.
fn is_port(port: &str) -> bool {
    (1..=5).contains(&port.len())
        && port.bytes().all(|b| b.is_ascii_digit())
        && (port.len() < 5 || (!port.starts_with('0') && port.parse::<u32>().is_ok_and(|p| p <= 65_535)))
}

/// Why an outbound URL that egress policy lets through (`connectors::egress`) is refused all the
/// same: it breaks [`HTTPS_URL`] and its host is not on the allow-list, which alone admits
/// address literals and `http`.
pub fn outbound_url_error(url: &str, allow: &connectors::egress::EgressAllowList) -> Option<String> {
    if is_https_url(url) {
        return None;
    }
    let allow_listed = reqwest::Url::parse(url).ok().and_then(|u| u.host().map(|host| allow.allows_host(&host)));
    (allow_listed != Some(true)).then(|| {
        "must be https://HOST[:PORT][/PATH][?QUERY][#FRAGMENT] with a DNS host name of ASCII letters, digits and \
         hyphens (address literals and http only for allow-listed hosts)"
            .to_string()
    })
}

fn is_url_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~!$&'()*+,;=:@%/".contains(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_blank_is_a_character_outside_the_white_space_trim_removes() {
        assert_eq!(NOT_BLANK, format!("[^{WHITE_SPACE}]"));
        // Every character `char::is_whitespace` names, and no other below U+3001.
        let listed: Vec<char> = (0..=0x3000u32)
            .filter_map(char::from_u32)
            .filter(|c| {
                matches!(*c, '\t'..='\r' | ' ' | '\u{85}' | '\u{a0}' | '\u{1680}' | '\u{2000}'..='\u{200a}')
                    || matches!(*c, '\u{2028}' | '\u{2029}' | '\u{202f}' | '\u{205f}' | '\u{3000}')
            })
            .collect();
        let white: Vec<char> = (0..=0x3000u32).filter_map(char::from_u32).filter(|c| c.is_whitespace()).collect();
        assert_eq!(listed, white);
    }

    #[test]
    fn required_text_is_not_blank_and_counted_in_characters() {
        let errors = |value: &str| {
            let mut errors = Vec::new();
            require_text(&mut errors, "f", value, 3);
            errors.len()
        };
        assert_eq!(errors("abc"), 0);
        assert_eq!(errors("äöü"), 0, "three characters, six bytes");
        assert_eq!(errors("abcd"), 1);
        assert_eq!(errors(" \u{3000}\t"), 1);
        assert_eq!(errors(""), 1);
    }

    #[test]
    fn delivery_settings_are_whole_numbers_however_json_spells_them() {
        let parse = |settings: &str| {
            let body = format!(
                r#"{{"eventType":"X","endpointUrl":"https://a.example","signingSecretRef":"kv://v/n",{settings}}}"#
            );
            serde_json::from_str::<CreateSubscriptionRequest>(&body).map(|r| (r.max_in_flight, r.rate_limit_per_second))
        };
        assert_eq!(parse(r#""maxInFlight":72"#).unwrap(), (Some(72), None));
        assert_eq!(parse(r#""maxInFlight":72.0,"rateLimitPerSecond":7.2e1"#).unwrap(), (Some(72), Some(72)));
        assert_eq!(parse(r#""maxInFlight":null"#).unwrap(), (None, None));
        for bad in [r#""maxInFlight":72.5"#, r#""maxInFlight":-1"#, r#""maxInFlight":"7""#, r#""maxInFlight":5e9"#] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn https_urls_name_a_host_and_keep_to_url_characters() {
        for good in [
            "https://hooks.partner.example/connectsoft",
            "https://example.com",
            "https://example.com.",
            "https://a-b.c-d.example:443/p/a/t/h?q=1&r=%20#frag?x",
            "https://x.io:65535",
            "https://x.io:0",
            "https://x.io?",
            "https://localhost-1.example/",
            "https://my.localhostx/",
            "https://1.2.3.example/",
        ] {
            assert!(is_https_url(good), "{good}");
        }
        for bad in [
            "http://example.com/",
            "HTTPS://example.com/",
            "https://",
            "https://localhost/",
            "https://LocalHost./x",
            "https://api.localhost:8080/",
            "https://10.1.2.3/x",
            "https://[::1]/",
            "https://example.123/",
            "https://a--b.example/",
            "https://-a.example/",
            "https://a..example/",
            "https://user@example.com/",
            "https://example.com:65536/",
            "https://example.com:/",
            "https://example.com:08080/",
            "https://example.com/a b",
            "https://example.com/a\\b",
            "https://example.com/#a#b",
            "https://bücher.example/",
        ] {
            assert!(!is_https_url(bad), "{bad}");
        }
    }
}
