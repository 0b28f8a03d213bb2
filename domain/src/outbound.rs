//! Outbound messages: platform events published for fan-out to webhook subscriptions.
//!
//! A message is its own stream (`{tenantId}/msg-...`), written once: publishing the same message
//! id again with the same content changes nothing, so a redelivered `PublishEvent` (Kafka hands
//! a message out at least once) publishes one message. The fan-out reads the event from the
//! store's order and requests one `DeliverWebhook` run per matching subscription.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{AggregateEvent, Decider, DomainError};

/// The operation of the runs that deliver a message to one subscription's endpoint.
pub const DELIVER_WEBHOOK_OPERATION: &str = "DeliverWebhook";
/// The id prefix of outbound messages (`msg-...`); the id is also the `webhook-id` receivers see.
pub const MESSAGE: &str = "msg";
/// The largest `data` a message may carry, serialised.
pub const MAX_DATA_BYTES: usize = 256 * 1024;

/// Publish a platform event (e.g. `DeploymentPromoted`) to the tenant's webhook subscriptions.
#[derive(Debug, Clone, PartialEq)]
pub struct PublishEvent {
    pub message_id: String,
    pub tenant_id: String,
    pub project_id: Option<String>,
    pub event_type: String,
    pub data: Value,
    pub published_at: DateTime<Utc>,
}

/// A platform event was published for fan-out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlatformEventPublished {
    pub message_id: String,
    pub tenant_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_id: Option<String>,
    pub event_type: String,
    pub data: Value,
    pub published_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", content = "data")]
pub enum OutboundMessageEvent {
    PlatformEventPublished(PlatformEventPublished),
}

impl AggregateEvent for OutboundMessageEvent {
    const TYPES: &'static [&'static str] = &["PlatformEventPublished"];

    fn event_type(&self) -> &'static str {
        match self {
            Self::PlatformEventPublished(_) => "PlatformEventPublished",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub enum MessageState {
    #[default]
    None,
    Published(PlatformEventPublished),
}

/// An event type name: letters, digits, `.`, `_`, `-`, at most 128 (no `*`: that is for patterns).
pub fn is_event_type_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

pub struct OutboundMessage;

impl Decider for OutboundMessage {
    type Command = PublishEvent;
    type Event = OutboundMessageEvent;
    type State = MessageState;

    fn decide(c: &PublishEvent, state: &MessageState) -> Result<Vec<OutboundMessageEvent>, DomainError> {
        if let MessageState::Published(published) = state {
            // A redelivered publish is the same message; another one under its id is a mistake.
            let same = published.event_type == c.event_type
                && published.project_id == c.project_id
                && published.data == c.data;
            return if same {
                Ok(vec![])
            } else {
                Err(DomainError::InvalidTransition {
                    kind: "message",
                    state: format!("published as {} with other content", c.message_id),
                    command: "publish",
                })
            };
        }
        if !is_event_type_name(&c.event_type) {
            return Err(DomainError::invalid("eventType", "must be 1 to 128 letters, digits, '.', '_' or '-'"));
        }
        if !crate::ids::has_prefix(&c.message_id, MESSAGE) {
            return Err(DomainError::invalid("messageId", "must be msg- followed by lowercase letters, digits or '-'"));
        }
        if c.project_id.as_deref().is_some_and(|p| p.is_empty() || p.len() > 128) {
            return Err(DomainError::invalid("projectId", "must be 1 to 128 characters"));
        }
        if serde_json::to_vec(&c.data).map_or(0, |d| d.len()) > MAX_DATA_BYTES {
            return Err(DomainError::invalid("data", format!("must be at most {MAX_DATA_BYTES} bytes as JSON")));
        }
        Ok(vec![OutboundMessageEvent::PlatformEventPublished(PlatformEventPublished {
            message_id: c.message_id.clone(),
            tenant_id: c.tenant_id.clone(),
            project_id: c.project_id.clone(),
            event_type: c.event_type.clone(),
            data: c.data.clone(),
            published_at: c.published_at,
        })])
    }

    fn evolve(_state: MessageState, event: &OutboundMessageEvent) -> MessageState {
        match event {
            OutboundMessageEvent::PlatformEventPublished(e) => MessageState::Published(e.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn publish() -> PublishEvent {
        PublishEvent {
            message_id: "msg-1".into(),
            tenant_id: "connectsoft".into(),
            project_id: Some("proj-booking-saas".into()),
            event_type: "DeploymentPromoted".into(),
            data: json!({"environment": "prod"}),
            published_at: DateTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn publishing_records_the_message_once() {
        let events = OutboundMessage::decide(&publish(), &MessageState::None).unwrap();
        assert_eq!(events.len(), 1);
        let state = OutboundMessage::fold(&events);
        assert_eq!(OutboundMessage::decide(&publish(), &state).unwrap(), vec![], "a redelivered publish is a no-op");
        let other = PublishEvent { data: json!({"environment": "staging"}), ..publish() };
        assert!(matches!(OutboundMessage::decide(&other, &state), Err(DomainError::InvalidTransition { .. })));
    }

    #[test]
    fn bad_types_and_ids_are_rejected() {
        let field_of = |c: PublishEvent| match OutboundMessage::decide(&c, &MessageState::None) {
            Err(DomainError::Invalid { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(field_of(PublishEvent { event_type: "Deploy*".into(), ..publish() }), "eventType");
        assert_eq!(field_of(PublishEvent { message_id: "run-1".into(), ..publish() }), "messageId");
        assert_eq!(field_of(PublishEvent { data: json!("x".repeat(MAX_DATA_BYTES)), ..publish() }), "data");
    }
}
