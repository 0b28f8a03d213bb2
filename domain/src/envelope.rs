use std::ops::Deref;
use std::sync::{Arc, OnceLock};

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use serde_json::value::RawValue;
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

    /// One of the engine's workers (`worker:{who}`), for the commands it issues.
    pub fn worker(who: &str) -> Self {
        Self { subject: format!("worker:{who}"), client_id: None }
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
///
/// Data read back from the store keeps the JSON text it was stored as and is parsed into a
/// [`Value`] only when something looks at it: a replay writes the text out as it is, and a
/// projector decodes its typed event straight from the text ([`EventData::stored_text`]), so
/// neither pays for a tree it does not need.
#[derive(Clone, Default)]
pub struct EventData(Arc<Data>);

#[derive(Default)]
struct Data {
    /// The JSON text as stored, checked to be JSON when it was read; `None` for data built in
    /// memory.
    text: Option<Box<RawValue>>,
    /// The parsed tree, made on the first look.
    value: OnceLock<Value>,
}

impl EventData {
    /// Data read back from the store as its JSON text: checked to be well-formed JSON here (a
    /// scan that builds nothing), parsed only when looked at.
    pub fn from_stored(text: &str) -> Result<Self, serde_json::Error> {
        let text = serde_json::from_str::<&RawValue>(text)?.to_owned();
        Ok(Self(Arc::new(Data { text: Some(text), value: OnceLock::new() })))
    }

    /// The JSON text the data was stored as, when it was read from the store.
    pub fn stored_text(&self) -> Option<&str> {
        self.0.text.as_deref().map(RawValue::get)
    }

    /// The data as an owned value: moved out when this is its only holder, else copied.
    pub fn into_value(self) -> Value {
        match Arc::try_unwrap(self.0) {
            Ok(data) => match data.value.into_inner() {
                Some(value) => value,
                None => parse(data.text.as_deref()),
            },
            Err(shared) => EventData(shared).deref().clone(),
        }
    }
}

/// The tree of stored text. The text was checked to be JSON when it was read, so this does not
/// fail; `Null` stands for no text (never the case for data without a tree).
fn parse(text: Option<&RawValue>) -> Value {
    text.and_then(|text| serde_json::from_str(text.get()).ok()).unwrap_or(Value::Null)
}

impl Deref for EventData {
    type Target = Value;

    fn deref(&self) -> &Value {
        self.0.value.get_or_init(|| parse(self.0.text.as_deref()))
    }
}

impl From<Value> for EventData {
    fn from(value: Value) -> Self {
        Self(Arc::new(Data { text: None, value: OnceLock::from(value) }))
    }
}

impl std::fmt::Debug for EventData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.deref().fmt(f)
    }
}

impl PartialEq for EventData {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.deref() == other.deref()
    }
}

impl PartialEq<Value> for EventData {
    fn eq(&self, other: &Value) -> bool {
        self.deref() == other
    }
}

impl Serialize for EventData {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // The stored text as it is: serde_json wrote it from the same tree, so it is the
        // bytes serialising the tree again would give.
        match &self.0.text {
            Some(text) => text.serialize(serializer),
            None => self.deref().serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for EventData {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Value::deserialize(deserializer).map(Self::from)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn stored_data_is_written_back_as_stored_and_read_as_a_tree_on_demand() {
        let text = r#"{"a":[1,2.5,"x\n"],"b":{"c":null}}"#;
        let data = EventData::from_stored(text).unwrap();
        assert_eq!(data.stored_text(), Some(text));
        assert_eq!(serde_json::to_string(&data).unwrap(), text);
        assert_eq!(*data, json!({"a": [1, 2.5, "x\n"], "b": {"c": null}}));
        // Looked at, it still writes the text, and the tree it gave is the tree it hands over.
        assert_eq!(serde_json::to_string(&data).unwrap(), text);
        assert_eq!(data.clone().into_value(), json!({"a": [1, 2.5, "x\n"], "b": {"c": null}}));
        assert_eq!(EventData::from_stored(text).unwrap().into_value(), *data);
        assert_eq!(data, EventData::from(json!({"b": {"c": null}, "a": [1, 2.5, "x\n"]})));
    }

    #[test]
    fn stored_data_that_is_not_json_is_refused_when_read() {
        for text in ["", "{", r#"{"a":}"#, "[1,]", "nul", r#"{"a":1} trailing"#] {
            assert!(EventData::from_stored(text).is_err(), "{text:?} was taken for JSON");
        }
    }

    #[test]
    fn data_built_in_memory_has_no_stored_text() {
        let data = EventData::from(json!({"x": 1}));
        assert_eq!(data.stored_text(), None);
        assert_eq!(serde_json::to_string(&data).unwrap(), r#"{"x":1}"#);
    }
}
