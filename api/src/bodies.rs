//! Request and response bodies of the public API, exactly as the spec's examples name them.
//! Their JSON Schemas are committed under `schemas/api/` and served in `/openapi.json`.

use chrono::{DateTime, Utc};
use domain::connection::Health;
use domain::provider::AuthModel;
use domain::run::RunStatus;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::problem::FieldError;

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EstablishConnectionRequest {
    /// Must equal the token's tenant when present.
    #[serde(default)]
    pub tenant_id: Option<String>,
    pub project_id: String,
    pub provider_id: String,
    pub display_name: String,
    pub auth_mode: AuthModel,
    #[serde(default)]
    pub credential_ref: Option<String>,
    /// Provider settings; secrets only as `kv://` refs (`webhookSecretRef` for inbound webhooks).
    #[serde(default)]
    pub configuration: Map<String, Value>,
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
    #[serde(default)]
    pub tenant_id: Option<String>,
    /// Unique in the tenant; lowercase letters, digits and hyphens. The provider id is `prov-{key}`.
    pub key: String,
    pub display_name: String,
    pub category: String,
    pub auth_model: AuthModel,
    pub api_client: String,
    #[serde(default)]
    pub capabilities: Vec<String>,
    pub base_url: String,
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

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreateSubscriptionRequest {
    #[serde(default)]
    pub tenant_id: Option<String>,
    #[serde(default)]
    pub project_id: Option<String>,
    /// An event type, or a prefix followed by `*`.
    pub event_type: String,
    pub endpoint_url: String,
    pub signing_secret_ref: String,
    #[serde(default = "active_by_default")]
    pub active: bool,
    /// Requests in flight to the endpoint at most at once (1 to 1000, default 10).
    #[serde(default)]
    pub max_in_flight: Option<u32>,
    /// Requests started per second at most (1 to 10000); absent: no limit.
    #[serde(default)]
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
    pub provider_delivery_id: String,
    pub event_name: String,
    pub payload: Value,
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
    #[serde(default)]
    pub tenant_id: Option<String>,
    pub credential_id: String,
    /// Recorded for auditors, e.g. `ScheduledRotation`.
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RotationStartedResponse {
    pub credential_id: String,
    pub status: String,
    pub new_version_ref: String,
    pub verification_run_id: String,
}

/// Checks that required text fields are present and of sane length; serde checked the shape.
pub fn require_text(errors: &mut Vec<FieldError>, field: &str, value: &str, max: usize) {
    if value.trim().is_empty() {
        errors.push(FieldError { field: field.into(), message: "must not be empty".into() });
    } else if value.len() > max {
        errors.push(FieldError { field: field.into(), message: format!("must be at most {max} characters") });
    }
}
