use crate::connection::ConnectionEvent;
use crate::credential::CredentialEvent;
use crate::delivery::DeliveryEvent;
use crate::event::{AggregateEvent, DecodeError, EventJson};
use crate::outbound::OutboundMessageEvent;
use crate::provider::ProviderEvent;
use crate::run::RunEvent;
use crate::subscription::SubscriptionEvent;

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

#[cfg(test)]
mod tests {
    use serde_json::Value;

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
}
