//! Event schema versions and the upcasters between them, in one place: the current version of
//! each event type, and the steps that bring stored data of an older version up to it. Decoding
//! (`event.rs`) and reading events of any type (`any_event.rs`) apply them; nothing else knows
//! a version's shape.

use std::borrow::Cow;

use serde_json::{Value, json};

use crate::error::DecodeError;

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
}
