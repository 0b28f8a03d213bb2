use serde::{Serialize, de::DeserializeOwned};
use serde_json::{Value, json};
use thiserror::Error;

/// An event reduced to what the store keeps of it: its type, schema version and data.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEventData {
    pub event_type: String,
    pub schema_version: u32,
    pub data: Value,
}

/// Why stored data could not be read back as an event.
#[derive(Debug, Error, PartialEq)]
pub enum DecodeError {
    #[error("unknown event type {0}")]
    UnknownType(String),
    #[error("{event_type} v{version} is newer than this build knows (v{known})")]
    FutureVersion { event_type: String, version: u32, known: u32 },
    #[error("{event_type} v{version} does not match its schema: {reason}")]
    Malformed { event_type: String, version: u32, reason: String },
}

/// The current schema version (`cs-schema-version`) of an event type. Each type is versioned on
/// its own; a bump here comes with an upcaster in [`upcast`].
pub fn schema_version_of(_event_type: &str) -> u32 {
    1
}

/// Brings `data` stored at `version` up to the current schema of `event_type`.
pub fn upcast(event_type: &str, version: u32, data: Value) -> Result<Value, DecodeError> {
    let known = schema_version_of(event_type);
    if version > known || version == 0 {
        return Err(DecodeError::FutureVersion { event_type: event_type.into(), version, known });
    }
    // Every type is still at v1, so there is nothing to lift yet.
    Ok(data)
}

/// The events of one aggregate: an adjacently tagged enum (`{"type": .., "data": ..}`) whose
/// variants are named after the event types.
pub trait AggregateEvent: Serialize + DeserializeOwned + Sized {
    /// Every event type name of this aggregate.
    const TYPES: &'static [&'static str];

    fn event_type(&self) -> &'static str;

    /// Splits the event into type, current schema version and data.
    fn encode(&self) -> StoredEventData {
        let event_type = self.event_type();
        let data = match serde_json::to_value(self) {
            Ok(Value::Object(mut tagged)) => tagged.remove("data").unwrap_or(Value::Null),
            // Events are plain structs of strings, numbers and maps: serialising cannot fail.
            other => unreachable!("event {event_type} serialised to {other:?}"),
        };
        StoredEventData { event_type: event_type.into(), schema_version: schema_version_of(event_type), data }
    }

    /// Reads stored data back, upcasting older schema versions first.
    fn decode(event_type: &str, schema_version: u32, data: Value) -> Result<Self, DecodeError> {
        if !Self::TYPES.contains(&event_type) {
            return Err(DecodeError::UnknownType(event_type.into()));
        }
        let data = upcast(event_type, schema_version, data)?;
        serde_json::from_value(json!({ "type": event_type, "data": data })).map_err(|e| DecodeError::Malformed {
            event_type: event_type.into(),
            version: schema_version,
            reason: e.to_string(),
        })
    }
}
