use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Who caused an event: the token's subject and, for service callers, its client id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Actor {
    pub subject: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
}

impl Actor {
    /// The engine itself, for events no caller asked for directly.
    pub fn system() -> Self {
        Self { subject: "system".into(), client_id: None }
    }
}

/// An event on its way into the store: everything but the place the store gives it.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub event_id: Uuid,
    pub event_type: String,
    pub schema_version: u32,
    pub tenant_id: String,
    pub occurred_at: DateTime<Utc>,
    pub trace_id: String,
    pub correlation_id: String,
    pub causation_id: Option<String>,
    pub actor: Actor,
    pub data: serde_json::Value,
}

/// An event as stored and published: the new event plus its stream, its place in the stream
/// and in the global order, and the hash chain that makes tampering evident.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventEnvelope {
    pub event_id: Uuid,
    pub event_type: String,
    pub schema_version: u32,
    pub stream_id: String,
    /// 1 for the first event of a stream; no gaps.
    pub stream_version: u64,
    /// 1 for the first event of the store; readers never see a hole or a reordering.
    pub global_position: u64,
    pub tenant_id: String,
    pub occurred_at: DateTime<Utc>,
    pub trace_id: String,
    pub correlation_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<String>,
    pub actor: Actor,
    /// Hex SHA-256 of the previous event in the stream (64 zeros for the first).
    pub prev_hash: String,
    /// Hex SHA-256 over `prev_hash` and this event's canonical content.
    pub hash: String,
    pub data: serde_json::Value,
}
