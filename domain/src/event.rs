use serde::de::value::MapDeserializer;
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

use crate::EventData;
pub use crate::error::DecodeError;
use crate::upcast::{schema_version_of, upcast};

/// An event reduced to what the store keeps of it: its type, schema version and data.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEventData {
    pub event_type: String,
    pub schema_version: u32,
    pub data: Value,
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

    /// Reads stored data back, upcasting older schema versions first. Read from a reference,
    /// so the data (shared by every reader of the event) is not copied to be decoded; only
    /// data of an older schema version is, to be upcast. Data that still has the text it was
    /// stored as, at its type's current version, is decoded straight from the text: no tree.
    fn decode(event_type: &str, schema_version: u32, data: &(impl EventJson + ?Sized)) -> Result<Self, DecodeError> {
        if !Self::TYPES.contains(&event_type) {
            return Err(DecodeError::UnknownType(event_type.into()));
        }
        let malformed = |e: serde_json::Error| DecodeError::Malformed {
            event_type: event_type.into(),
            version: schema_version,
            reason: e.to_string(),
        };
        if let Some(text) = data.stored_text().filter(|_| schema_version == schema_version_of(event_type)) {
            // The tag first, so serde reads the content straight into its variant. Type names
            // are plain identifiers: nothing in them needs escaping.
            let mut tagged = String::with_capacity(event_type.len() + text.len() + 20);
            for part in [r#"{"type":""#, event_type, r#"","data":"#, text, "}"] {
                tagged.push_str(part);
            }
            return serde_json::from_str(&tagged).map_err(malformed);
        }
        let data = upcast(event_type, schema_version, data.tree())?;
        // The tag before the content: serde then reads the content straight into its variant,
        // where a JSON object (keys sorted, "data" first) would have it buffered and read twice.
        let tag = Value::String(event_type.into());
        let tagged = [("type", &tag), ("data", &*data)];
        Self::deserialize(MapDeserializer::<_, serde_json::Error>::new(tagged.into_iter())).map_err(malformed)
    }
}

/// An event's data as decoding reads it: a JSON tree, or the store's [`EventData`], which may
/// still hold the text it was stored as.
pub trait EventJson {
    /// The data as a tree (parsed on demand from stored text).
    fn tree(&self) -> &Value;

    /// The text the data was stored as, if it is at hand.
    fn stored_text(&self) -> Option<&str> {
        None
    }
}

impl EventJson for Value {
    fn tree(&self) -> &Value {
        self
    }
}

impl EventJson for EventData {
    fn tree(&self) -> &Value {
        self
    }

    fn stored_text(&self) -> Option<&str> {
        EventData::stored_text(self)
    }
}
