//! An inbound webhook delivery: accepted once per vendor delivery id and connection, recorded
//! with its normalized integration event, so the outbound fan-out can deliver that event.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

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
    /// One of [`NORMALIZED_EVENT_TYPES`].
    pub normalized_event_type: String,
    /// The fields the normalization rule extracted from the signed body for subscribers.
    pub attributes: BTreeMap<String, Value>,
    /// `sha256:` and the hex digest of the raw signed body; the body itself is not kept.
    pub payload_digest: String,
    pub received_at: DateTime<Utc>,
}

/// A delivery was verified and accepted. Carries the provider, the delivery ids (ours and the
/// vendor's), the normalized type and the digest of the payload, never the payload.
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

/// The data of every normalized integration event (`PullRequestMerged`, `PaymentSucceeded`, ...):
/// where it came from and the fields its normalization rule extracted from the signed body.
/// The event's type names what happened; subscribers select on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NormalizedIntegrationEvent {
    /// The delivery this event was normalized from.
    pub delivery_id: String,
    pub tenant_id: String,
    pub connection_id: String,
    /// The provider's scheme name (`github`, `stripe`, ...).
    pub provider: String,
    pub provider_delivery_id: String,
    /// The vendor's own event name (`pull_request`, `payment_intent.succeeded`, ...).
    pub event_name: String,
    /// Named fields from the signed body (`repository`, `number`, `amount`, ...), as the rule
    /// table defines them for this type; absent fields are left out.
    pub attributes: BTreeMap<String, Value>,
    pub payload_digest: String,
    pub occurred_at: DateTime<Utc>,
}

macro_rules! delivery_events {
    ($($normalized:ident),* $(,)?) => {
        /// The events of a delivery stream: `DeliveryAccepted`, then its normalized event.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
        #[serde(tag = "type", content = "data")]
        pub enum DeliveryEvent {
            DeliveryAccepted(DeliveryAccepted),
            $(
                #[doc = concat!("The normalized integration event `", stringify!($normalized), "`.")]
                $normalized(NormalizedIntegrationEvent),
            )*
        }

        /// Every normalized integration event type, in the order the rule table documents them.
        /// The last one is the fallback for deliveries no rule matches.
        pub const NORMALIZED_EVENT_TYPES: &[&str] = &[$(stringify!($normalized)),*];

        impl AggregateEvent for DeliveryEvent {
            const TYPES: &'static [&'static str] = &["DeliveryAccepted", $(stringify!($normalized)),*];

            fn event_type(&self) -> &'static str {
                match self {
                    Self::DeliveryAccepted(_) => "DeliveryAccepted",
                    $(Self::$normalized(_) => stringify!($normalized),)*
                }
            }
        }

        impl DeliveryEvent {
            /// The normalized event of type `event_type`, `None` for an unknown type.
            pub fn normalized(event_type: &str, data: NormalizedIntegrationEvent) -> Option<Self> {
                match event_type {
                    $(stringify!($normalized) => Some(Self::$normalized(data)),)*
                    _ => None,
                }
            }

            /// The acceptance record, `None` for a normalized event.
            pub fn as_accepted(&self) -> Option<&DeliveryAccepted> {
                match self {
                    Self::DeliveryAccepted(accepted) => Some(accepted),
                    $(Self::$normalized(_) => None,)*
                }
            }

            /// The data of a normalized event; `None` for `DeliveryAccepted`.
            pub fn as_normalized(&self) -> Option<&NormalizedIntegrationEvent> {
                match self {
                    Self::DeliveryAccepted(_) => None,
                    $(Self::$normalized(data) => Some(data),)*
                }
            }
        }
    };
}

delivery_events![
    PullRequestOpened,
    PullRequestClosed,
    PullRequestMerged,
    CodePushed,
    ReleasePublished,
    WorkflowRunCompleted,
    DeploymentStatusChanged,
    PaymentSucceeded,
    PaymentFailed,
    InvoicePaid,
    ChargeRefunded,
    CustomerSubscriptionCreated,
    CustomerSubscriptionDeleted,
    MessageStatusChanged,
    SlackMessagePosted,
    SlackAppMentioned,
    OrderCreated,
    ProviderEventReceived,
];

/// The type of deliveries no normalization rule matches: accepted, not dropped.
pub const FALLBACK_EVENT_TYPE: &str = "ProviderEventReceived";

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

    /// A delivery stream is keyed by the vendor's delivery id, so a second acceptance is a
    /// repeat of the same delivery: rejected, and the caller answers with the first one.
    fn decide(c: &AcceptDelivery, state: &DeliveryState) -> Result<Vec<DeliveryEvent>, DomainError> {
        if *state == DeliveryState::Accepted {
            return Err(DomainError::AlreadyExists { kind: "delivery", id: c.delivery_id.clone() });
        }
        if c.provider_delivery_id.is_empty() || c.provider_delivery_id.len() > 256 {
            return Err(DomainError::invalid("providerDeliveryId", "must be 1 to 256 characters"));
        }
        let data = NormalizedIntegrationEvent {
            delivery_id: c.delivery_id.clone(),
            tenant_id: c.tenant_id.clone(),
            connection_id: c.connection_id.clone(),
            provider: c.provider.clone(),
            provider_delivery_id: c.provider_delivery_id.clone(),
            event_name: c.event_name.clone(),
            attributes: c.attributes.clone(),
            payload_digest: c.payload_digest.clone(),
            occurred_at: c.received_at,
        };
        let normalized = DeliveryEvent::normalized(&c.normalized_event_type, data)
            .ok_or_else(|| DomainError::invalid("normalizedEventType", "is not a normalized integration event type"))?;
        Ok(vec![
            DeliveryEvent::DeliveryAccepted(DeliveryAccepted {
                delivery_id: c.delivery_id.clone(),
                tenant_id: c.tenant_id.clone(),
                connection_id: c.connection_id.clone(),
                provider: c.provider.clone(),
                provider_delivery_id: c.provider_delivery_id.clone(),
                event_name: c.event_name.clone(),
                normalized_event_type: c.normalized_event_type.clone(),
                payload_digest: c.payload_digest.clone(),
                received_at: c.received_at,
            }),
            normalized,
        ])
    }

    fn evolve(state: DeliveryState, event: &DeliveryEvent) -> DeliveryState {
        match event.as_accepted() {
            Some(_) => DeliveryState::Accepted,
            // A normalized event follows its acceptance and changes nothing.
            None => state,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn accept() -> AcceptDelivery {
        AcceptDelivery {
            delivery_id: "del-1".into(),
            tenant_id: "connectsoft".into(),
            connection_id: "conn-1".into(),
            provider: "github".into(),
            provider_delivery_id: "gh-12345".into(),
            event_name: "pull_request".into(),
            normalized_event_type: "PullRequestMerged".into(),
            attributes: BTreeMap::from([("number".to_string(), json!(42))]),
            payload_digest: "sha256:00".into(),
            received_at: DateTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn accepting_a_delivery_records_it_and_its_normalized_event() {
        let events = InboundDelivery::decide(&accept(), &DeliveryState::None).unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].event_type(), "DeliveryAccepted");
        assert_eq!(events[1].event_type(), "PullRequestMerged");
        let normalized = events[1].as_normalized().unwrap();
        assert_eq!((normalized.delivery_id.as_str(), normalized.attributes["number"].clone()), ("del-1", json!(42)));
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

    #[test]
    fn an_unknown_normalized_type_is_rejected() {
        let c = AcceptDelivery { normalized_event_type: "SomethingHappened".into(), ..accept() };
        assert!(matches!(InboundDelivery::decide(&c, &DeliveryState::None), Err(DomainError::Invalid { .. })));
    }

    #[test]
    fn every_normalized_type_round_trips_and_the_fallback_is_one_of_them() {
        assert_eq!(NORMALIZED_EVENT_TYPES.last(), Some(&FALLBACK_EVENT_TYPE));
        for t in NORMALIZED_EVENT_TYPES {
            let c = AcceptDelivery { normalized_event_type: (*t).into(), ..accept() };
            let events = InboundDelivery::decide(&c, &DeliveryState::None).unwrap();
            let stored = events[1].encode();
            assert_eq!(stored.event_type, *t);
            assert_eq!(
                DeliveryEvent::decode(&stored.event_type, stored.schema_version, &stored.data).unwrap(),
                events[1]
            );
        }
    }
}
