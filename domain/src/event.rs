use std::borrow::Cow;

use serde::de::value::MapDeserializer;
use serde::{Serialize, de::DeserializeOwned};
use serde_json::{Value, json};
use thiserror::Error;

use crate::EventData;

/// An event reduced to what the store keeps of it: its type, schema version and data.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEventData {
    pub event_type: String,
    pub schema_version: u32,
    pub data: Value,
}

/// Why stored data could not be read back as an event.
#[derive(Debug, Clone, Error, PartialEq)]
pub enum DecodeError {
    #[error("unknown event type {0}")]
    UnknownType(String),
    #[error("{event_type} v{version} is newer than this build knows (v{known})")]
    FutureVersion { event_type: String, version: u32, known: u32 },
    #[error("{event_type} v{version} does not match its schema: {reason}")]
    Malformed { event_type: String, version: u32, reason: String },
}

/// The current schema version (`cs-schema-version`) of an event type. Each type is versioned on
/// its own; a bump here comes with an upcaster step in [`upcast`] and the old version's schema
/// kept in [`crate::schemas`].
pub fn schema_version_of(event_type: &str) -> u32 {
    match event_type {
        // v2 added `apiClientVersion`.
        "ProviderRegistered" => 2,
        _ => 1,
    }
}

/// Brings `data` stored at `version` up to the current schema of `event_type`, one version at
/// a time (v1 → v2 → ...), so each step only knows the version before it. Data already at the
/// current version (most events) comes back as it is, borrowed: only older data is copied.
pub fn upcast<'a>(event_type: &str, version: u32, data: &'a Value) -> Result<Cow<'a, Value>, DecodeError> {
    let known = schema_version_of(event_type);
    if version > known || version == 0 {
        return Err(DecodeError::FutureVersion { event_type: event_type.into(), version, known });
    }
    if version == known {
        return Ok(Cow::Borrowed(data));
    }
    let malformed = |reason: String| DecodeError::Malformed { event_type: event_type.into(), version, reason };
    let mut data = data.clone();
    for from in version..known {
        data = match (event_type, from) {
            ("ProviderRegistered", 1) => provider_registered_v1_to_v2(data).map_err(malformed)?,
            // `schema_version_of` and this table change together; the unit tests walk every step.
            (other, from) => return Err(malformed(format!("this build has no upcaster from {other} v{from}"))),
        };
    }
    Ok(Cow::Owned(data))
}

/// `ProviderRegistered` v1 → v2: adds `apiClientVersion`. Every v1 registration was served by
/// API client v1 (the v1 decider always named the client `client-{name}-v1`), so 1 is the
/// value the event would have carried, not a guess.
fn provider_registered_v1_to_v2(data: Value) -> Result<Value, String> {
    let Value::Object(mut fields) = data else { return Err("the data is not an object".into()) };
    if fields.contains_key("apiClientVersion") {
        return Err("a v1 event has no apiClientVersion".into());
    }
    fields.insert("apiClientVersion".into(), json!(1));
    Ok(Value::Object(fields))
}

/// An event's data brought to the current schema version of its type: `(version, data)`.
/// Types this build does not know are returned as stored (a newer build wrote them; there is
/// nothing to upcast them to here).
pub fn upcast_to_current(event_type: &str, version: u32, data: Value) -> Result<(u32, Value), DecodeError> {
    if !crate::any_event::all_event_types().any(|t| t == event_type) {
        return Ok((version, data));
    }
    let current = schema_version_of(event_type);
    if version == current {
        return Ok((version, data));
    }
    upcast(event_type, version, &data).map(|data| (current, data.into_owned()))
}

/// Brings a stored event to the current schema version of its type, in place (what auditors
/// read by default). On an error the event is left as stored, and its `schema_version` says so.
pub fn upcast_envelope(event: &mut crate::EventEnvelope) -> Result<(), DecodeError> {
    // Most events are at their type's current version: only the others pay for a copy.
    if event.schema_version == schema_version_of(&event.event_type) {
        return Ok(());
    }
    let (version, data) = upcast_to_current(&event.event_type, event.schema_version, (*event.data).clone())?;
    event.schema_version = version;
    event.data = data.into();
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upcasting_a_v1_provider_registration_adds_the_client_version_and_nothing_else() {
        let v1 = json!({ "providerId": "prov-x", "apiClientId": "client-x-v1" });
        let v2 = upcast("ProviderRegistered", 1, &v1).unwrap().into_owned();
        assert_eq!(v2, json!({ "providerId": "prov-x", "apiClientId": "client-x-v1", "apiClientVersion": 1 }));
        // The current version passes through untouched, a version from the future is refused.
        assert_eq!(*upcast("ProviderRegistered", 2, &v2).unwrap(), v2);
        assert!(matches!(upcast("ProviderRegistered", 3, &v2), Err(DecodeError::FutureVersion { known: 2, .. })));
        assert!(matches!(upcast("ProviderRegistered", 1, &json!([1])), Err(DecodeError::Malformed { version: 1, .. })));
    }

    #[test]
    fn stored_text_decodes_as_its_tree_does_and_older_versions_are_upcast_from_it() {
        use crate::AnyEvent;
        let started = r#"{"attempt":2,"runId":"run-1","startedAt":"2026-06-11T09:00:00Z"}"#;
        let from_text = AnyEvent::decode("RunStarted", 1, &EventData::from_stored(started).unwrap()).unwrap();
        let from_tree = AnyEvent::decode("RunStarted", 1, &serde_json::from_str::<Value>(started).unwrap()).unwrap();
        assert_eq!(from_text, from_tree);

        let v1 = r#"{"apiClient":"ConnectSoft.Sms.Providers.Twilio","apiClientId":"client-twilio-v1","authModel":"ApiKey",
            "baseUrl":"https://api.twilio.example","capabilities":["sms.send"],"category":"Communication",
            "displayName":"Twilio","key":"twilio","providerId":"prov-twilio","registeredAt":"2026-06-11T09:00:00Z",
            "tenantId":"t"}"#;
        let AnyEvent::Provider(crate::provider::ProviderEvent::ProviderRegistered(registered)) =
            AnyEvent::decode("ProviderRegistered", 1, &EventData::from_stored(v1).unwrap()).unwrap()
        else {
            panic!("not a registration")
        };
        assert_eq!(registered.api_client_version, 1);

        let malformed = EventData::from_stored(r#"{"attempt":"two","runId":"run-1"}"#).unwrap();
        assert!(matches!(AnyEvent::decode("RunStarted", 1, &malformed), Err(DecodeError::Malformed { .. })));
    }

    #[test]
    fn upcasting_to_current_leaves_current_and_unknown_types_as_stored() {
        let data = json!({ "runId": "run-1" });
        assert_eq!(upcast_to_current("RunStarted", 1, data.clone()).unwrap(), (1, data.clone()));
        assert_eq!(upcast_to_current("SomethingNewer", 7, data.clone()).unwrap(), (7, data.clone()));
        let (version, lifted) = upcast_to_current("ProviderRegistered", 1, json!({})).unwrap();
        assert_eq!((version, lifted), (2, json!({ "apiClientVersion": 1 })));
    }
}
