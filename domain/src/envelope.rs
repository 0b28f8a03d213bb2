use std::ops::Deref;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
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
    #[schemars(with = "Value")]
    pub data: EventData,
}

/// A stored event's data, shared: every follower of the store (projectors, workers, the relay)
/// takes its own copy of each event, and a copy of the data costs a reference count instead of
/// a copy of its JSON tree. Read it as a [`Value`] (it derefs to one); events never change, so
/// nothing writes through it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EventData(Arc<Value>);

impl EventData {
    /// The data as an owned value: moved out when this is its only holder, else copied.
    pub fn into_value(self) -> Value {
        Arc::unwrap_or_clone(self.0)
    }
}

impl Deref for EventData {
    type Target = Value;

    fn deref(&self) -> &Value {
        &self.0
    }
}

impl From<Value> for EventData {
    fn from(value: Value) -> Self {
        Self(Arc::new(value))
    }
}

impl PartialEq<Value> for EventData {
    fn eq(&self, other: &Value) -> bool {
        *self.0 == *other
    }
}

impl Serialize for EventData {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for EventData {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Value::deserialize(deserializer).map(Self::from)
    }
}
