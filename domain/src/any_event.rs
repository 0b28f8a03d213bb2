use crate::connection::ConnectionEvent;
use crate::credential::CredentialEvent;
use crate::delivery::DeliveryEvent;
use crate::event::{AggregateEvent, DecodeError, EventJson};
use crate::outbound::OutboundMessageEvent;
use crate::provider::ProviderEvent;
use crate::run::RunEvent;
use crate::subscription::SubscriptionEvent;
use crate::upcast::{schema_version_of, upcast};
use std::borrow::Cow;

use serde_json::Value;

/// Any event of any aggregate, for readers of the global order (projections, relays, replay).
#[derive(Debug, Clone, PartialEq)]
pub enum AnyEvent {
    Connection(ConnectionEvent),
    Provider(ProviderEvent),
    Subscription(SubscriptionEvent),
    Delivery(DeliveryEvent),
    Run(RunEvent),
    Credential(CredentialEvent),
    /// Platform events published for webhook fan-out.
    Outbound(OutboundMessageEvent),
}

/// Every event type the domain defines, across aggregates.
pub fn all_event_types() -> impl Iterator<Item = &'static str> {
    [
        ConnectionEvent::TYPES,
        ProviderEvent::TYPES,
        SubscriptionEvent::TYPES,
        DeliveryEvent::TYPES,
        RunEvent::TYPES,
        CredentialEvent::TYPES,
        OutboundMessageEvent::TYPES,
    ]
    .into_iter()
    .flatten()
    .copied()
}

impl AnyEvent {
    /// Decodes stored data by its event type, upcasting older schema versions.
    pub fn decode(
        event_type: &str,
        schema_version: u32,
        data: &(impl EventJson + ?Sized),
    ) -> Result<Self, DecodeError> {
        fn is<E: AggregateEvent>(t: &str) -> bool {
            E::TYPES.contains(&t)
        }
        let t = event_type;
        if is::<ConnectionEvent>(t) {
            ConnectionEvent::decode(t, schema_version, data).map(Self::Connection)
        } else if is::<ProviderEvent>(t) {
            ProviderEvent::decode(t, schema_version, data).map(Self::Provider)
        } else if is::<SubscriptionEvent>(t) {
            SubscriptionEvent::decode(t, schema_version, data).map(Self::Subscription)
        } else if is::<DeliveryEvent>(t) {
            DeliveryEvent::decode(t, schema_version, data).map(Self::Delivery)
        } else if is::<RunEvent>(t) {
            RunEvent::decode(t, schema_version, data).map(Self::Run)
        } else if is::<CredentialEvent>(t) {
            CredentialEvent::decode(t, schema_version, data).map(Self::Credential)
        } else if is::<OutboundMessageEvent>(t) {
            OutboundMessageEvent::decode(t, schema_version, data).map(Self::Outbound)
        } else {
            Err(DecodeError::UnknownType(t.into()))
        }
    }
}

/// An event's data brought to the current schema version of its type: `(version, data)`,
/// borrowed when there was nothing to change. Types this build does not know are returned as
/// stored (a newer build wrote them; there is nothing to upcast them to here).
pub fn upcast_to_current<'a>(
    event_type: &str,
    version: u32,
    data: &'a Value,
) -> Result<(u32, Cow<'a, Value>), DecodeError> {
    let current = schema_version_of(event_type);
    // Most events are at their type's current version: they are not looked up any further.
    if version == current || !all_event_types().any(|t| t == event_type) {
        return Ok((version, Cow::Borrowed(data)));
    }
    upcast(event_type, version, data).map(|data| (current, data))
}

/// Brings a stored event to the current schema version of its type, in place (what auditors
/// read by default); only an older event's data is copied. On an error the event is left as
/// stored, and its `schema_version` says so.
pub fn upcast_envelope(event: &mut crate::EventEnvelope) -> Result<(), DecodeError> {
    let lifted = match upcast_to_current(&event.event_type, event.schema_version, &event.data)? {
        (version, Cow::Owned(data)) => Some((version, data)),
        (_, Cow::Borrowed(_)) => None,
    };
    if let Some((version, data)) = lifted {
        event.schema_version = version;
        event.data = data.into();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::EventData;

    use super::*;
    use crate::run::{RunEvent, RunStarted};

    #[test]
    fn encode_then_decode_round_trips_and_types_are_unique() {
        let e = RunEvent::RunStarted(RunStarted {
            run_id: "run-1".into(),
            attempt: 2,
            started_at: chrono::DateTime::UNIX_EPOCH,
            worker_id: None,
            lease_expires_at: None,
        });
        let stored = e.encode();
        assert_eq!(stored.event_type, "RunStarted");
        assert_eq!(
            AnyEvent::decode(&stored.event_type, stored.schema_version, &stored.data).unwrap(),
            AnyEvent::Run(e)
        );
        let mut types: Vec<_> = all_event_types().collect();
        let n = types.len();
        types.sort();
        types.dedup();
        assert_eq!(types.len(), n);
    }

    #[test]
    fn unknown_types_and_future_versions_are_reported() {
        assert_eq!(AnyEvent::decode("Nope", 1, &Value::Null), Err(DecodeError::UnknownType("Nope".into())));
        assert!(matches!(AnyEvent::decode("RunStarted", 9, &Value::Null), Err(DecodeError::FutureVersion { .. })));
    }

    #[test]
    fn upcasting_to_current_leaves_current_and_unknown_types_as_stored() {
        let data = json!({ "runId": "run-1" });
        assert_eq!(upcast_to_current("RunStarted", 1, &data).unwrap(), (1, Cow::Borrowed(&data)));
        assert_eq!(upcast_to_current("SomethingNewer", 7, &data).unwrap(), (7, Cow::Borrowed(&data)));
        let empty = json!({});
        let (version, lifted) = upcast_to_current("ProviderRegistered", 1, &empty).unwrap();
        assert_eq!((version, lifted.into_owned()), (2, json!({ "apiClientVersion": 1 })));
    }

    #[test]
    fn stored_text_decodes_as_its_tree_does_and_older_versions_are_upcast_from_it() {
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
}
