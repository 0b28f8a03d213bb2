use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{AggregateEvent, Decider, DomainError};

/// Accept an inbound delivery whose signature the gateway has already verified.
#[derive(Debug, Clone, PartialEq)]
pub struct AcceptDelivery {
    pub delivery_id: String,
    pub tenant_id: String,
    pub connection_id: String,
    pub provider: String,
    pub provider_delivery_id: String,
    pub event_name: String,
    pub normalized_event_type: String,
    /// `sha256:` and the hex digest of the raw signed body; the body itself is not kept.
    pub payload_digest: String,
    pub received_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryAccepted {
    pub delivery_id: String,
    pub tenant_id: String,
    pub connection_id: String,
    pub provider: String,
    pub provider_delivery_id: String,
    pub event_name: String,
    pub normalized_event_type: String,
    pub payload_digest: String,
    pub received_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", content = "data")]
pub enum DeliveryEvent {
    DeliveryAccepted(DeliveryAccepted),
}

impl AggregateEvent for DeliveryEvent {
    const TYPES: &'static [&'static str] = &["DeliveryAccepted"];

    fn event_type(&self) -> &'static str {
        match self {
            Self::DeliveryAccepted(_) => "DeliveryAccepted",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub enum DeliveryState {
    #[default]
    None,
    Accepted,
}

pub struct InboundDelivery;

impl Decider for InboundDelivery {
    type Command = AcceptDelivery;
    type Event = DeliveryEvent;
    type State = DeliveryState;

    fn decide(c: &AcceptDelivery, state: &DeliveryState) -> Result<Vec<DeliveryEvent>, DomainError> {
        if *state == DeliveryState::Accepted {
            return Err(DomainError::AlreadyExists { kind: "delivery", id: c.delivery_id.clone() });
        }
        if c.provider_delivery_id.is_empty() || c.provider_delivery_id.len() > 256 {
            return Err(DomainError::invalid("providerDeliveryId", "must be 1 to 256 characters"));
        }
        Ok(vec![DeliveryEvent::DeliveryAccepted(DeliveryAccepted {
            delivery_id: c.delivery_id.clone(),
            tenant_id: c.tenant_id.clone(),
            connection_id: c.connection_id.clone(),
            provider: c.provider.clone(),
            provider_delivery_id: c.provider_delivery_id.clone(),
            event_name: c.event_name.clone(),
            normalized_event_type: c.normalized_event_type.clone(),
            payload_digest: c.payload_digest.clone(),
            received_at: c.received_at,
        })])
    }

    fn evolve(_state: DeliveryState, event: &DeliveryEvent) -> DeliveryState {
        match event {
            DeliveryEvent::DeliveryAccepted(_) => DeliveryState::Accepted,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept() -> AcceptDelivery {
        AcceptDelivery {
            delivery_id: "del-1".into(),
            tenant_id: "connectsoft".into(),
            connection_id: "conn-1".into(),
            provider: "github".into(),
            provider_delivery_id: "gh-12345".into(),
            event_name: "pull_request".into(),
            normalized_event_type: "PullRequestMerged".into(),
            payload_digest: "sha256:00".into(),
            received_at: DateTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn accepting_a_delivery_records_it() {
        let events = InboundDelivery::decide(&accept(), &DeliveryState::None).unwrap();
        assert_eq!(InboundDelivery::fold(&events), DeliveryState::Accepted);
    }

    #[test]
    fn accepting_the_same_delivery_twice_is_rejected() {
        assert!(matches!(
            InboundDelivery::decide(&accept(), &DeliveryState::Accepted),
            Err(DomainError::AlreadyExists { .. })
        ));
    }

    #[test]
    fn an_empty_provider_delivery_id_is_rejected() {
        let c = AcceptDelivery { provider_delivery_id: String::new(), ..accept() };
        assert!(matches!(InboundDelivery::decide(&c, &DeliveryState::None), Err(DomainError::Invalid { .. })));
    }
}
