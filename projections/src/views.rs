//! The documents the read models hold, one per resource: the shapes the API's GETs serve.

use chrono::{DateTime, Utc};
use domain::connection::Health;
use domain::provider::AuthModel;
use domain::run::RunStatus;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionView {
    pub connection_id: String,
    pub tenant_id: String,
    pub project_id: String,
    pub provider_id: String,
    pub display_name: String,
    pub auth_mode: AuthModel,
    /// Always `Active`: connections have no other state yet.
    pub status: String,
    pub health: Health,
    pub last_checked_at: Option<DateTime<Utc>>,
    pub credential_ref: Option<String>,
    /// The latest run requested against this connection.
    pub last_run_id: Option<String>,
    pub configuration: Map<String, Value>,
    pub established_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProviderView {
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
    /// Always `Registered`.
    pub status: String,
    pub registered_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionView {
    pub subscription_id: String,
    pub tenant_id: String,
    pub project_id: Option<String>,
    pub event_type: String,
    pub endpoint_url: String,
    pub signing_secret_ref: String,
    pub active: bool,
    /// `Active` or `Inactive`, after `active`.
    pub status: String,
    pub created_at: DateTime<Utc>,
    /// Throughput and ordering of its deliveries.
    #[serde(default)]
    pub delivery: domain::subscription::DeliverySettings,
    /// Why it was deactivated (410 Gone, `webhook-delivery: disable`, failing for too long).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deactivation_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deactivated_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryView {
    pub delivery_id: String,
    pub tenant_id: String,
    pub connection_id: String,
    pub provider: String,
    pub provider_delivery_id: String,
    pub event_name: String,
    pub normalized_event_type: String,
    pub payload_digest: String,
    /// Always `Accepted`.
    pub status: String,
    pub received_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunView {
    pub run_id: String,
    pub tenant_id: String,
    pub connection_id: String,
    pub operation: String,
    pub status: RunStatus,
    pub attempts: u32,
    pub requested_at: DateTime<Utc>,
    /// When the first attempt started.
    pub started_at: Option<DateTime<Utc>>,
    /// When the run finished, whether it completed or failed.
    pub completed_at: Option<DateTime<Utc>>,
    pub trace_id: String,
    /// The error of the latest failed attempt, or why the run failed.
    pub last_error: Option<String>,
    /// When the next attempt is due, while a failed attempt waits for its retry.
    #[serde(default)]
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// Every attempt in order, with what the endpoint answered (webhook deliveries) or the
    /// error; redeliveries are listed where they were requested.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempt_log: Vec<AttemptView>,
    /// What the completed run produced (its `RunCompleted` output: a pull request's number and
    /// URL, a revoked key's id, a webhook endpoint's answer); `None` until the run completes and
    /// again while a redelivery is under way. Documents stored before this field read as `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
}

/// One attempt of a run, as its events tell it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttemptView {
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_body: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl AttemptView {
    /// An attempt that started at `started_at` and has no outcome yet.
    pub fn running(attempt: u32, started_at: DateTime<Utc>) -> Self {
        Self {
            attempt,
            started_at,
            outcome: "Running".into(),
            finished_at: None,
            status_code: None,
            latency_ms: None,
            response_body: None,
            error: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CredentialView {
    pub credential_id: String,
    pub tenant_id: String,
    /// The unversioned vault reference, `kv://VAULT/NAME`.
    pub secret_ref: String,
    /// `Active`, or `Rotating` while a new version is being verified.
    pub status: String,
    pub current_version: u32,
    pub pending_version: Option<u32>,
    pub pending_version_ref: Option<String>,
    /// The run verifying the latest rotation; kept after it ends so a failure can be traced.
    pub verification_run_id: Option<String>,
    /// The first connection that named the credential, which a rotation's verification run
    /// targets. The others name it in their own documents (`credentialRef`): listing them here
    /// would rewrite an ever larger document for every connection sharing the credential.
    #[serde(default)]
    pub first_connection: Option<String>,
    pub last_rotation_reason: Option<String>,
    pub last_rotated_at: Option<DateTime<Utc>>,
    /// The version current before the last promotion, until its overlap ends.
    #[serde(default)]
    pub previous_version: Option<u32>,
    /// Why the latest rotation failed verification; cleared by the next promotion.
    #[serde(default)]
    pub last_rotation_failure: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_document_stored_before_output_existed_still_reads() {
        let stored = r#"{"runId":"run-1","tenantId":"t","connectionId":"conn-1","operation":"OpenPullRequest",
            "status":"Completed","attempts":1,"requestedAt":"2026-06-11T09:03:00Z","startedAt":"2026-06-11T09:03:00Z",
            "completedAt":"2026-06-11T09:03:02Z","traceId":"trace-1","lastError":null}"#;
        let view: RunView = serde_json::from_str(stored).unwrap();
        assert_eq!((view.status, view.output.as_ref()), (RunStatus::Completed, None));
        // And it is written back without the field, as it was stored.
        assert!(serde_json::to_value(&view).unwrap().get("output").is_none());
    }
}
