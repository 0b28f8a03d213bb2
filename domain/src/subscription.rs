use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::secret_ref::SecretRef;
use crate::{AggregateEvent, Decider, DomainError};

/// Create an outbound webhook subscription to an event type (exact, or a prefix ending in `*`).
#[derive(Debug, Clone, PartialEq)]
pub struct CreateWebhookSubscription {
    pub subscription_id: String,
    pub tenant_id: String,
    pub project_id: Option<String>,
    pub event_type: String,
    pub endpoint_url: String,
    pub signing_secret_ref: String,
    pub active: bool,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookSubscriptionCreated {
    pub subscription_id: String,
    pub tenant_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_id: Option<String>,
    pub event_type: String,
    pub endpoint_url: String,
    pub signing_secret_ref: String,
    pub active: bool,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", content = "data")]
pub enum SubscriptionEvent {
    WebhookSubscriptionCreated(WebhookSubscriptionCreated),
}

impl AggregateEvent for SubscriptionEvent {
    const TYPES: &'static [&'static str] = &["WebhookSubscriptionCreated"];

    fn event_type(&self) -> &'static str {
        match self {
            Self::WebhookSubscriptionCreated(_) => "WebhookSubscriptionCreated",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub enum SubscriptionState {
    #[default]
    None,
    Created {
        active: bool,
    },
}

/// Event type patterns: an identifier such as `DeploymentPromoted`, or a prefix and `*`.
pub fn is_event_type_pattern(pattern: &str) -> bool {
    let name = pattern.strip_suffix('*').unwrap_or(pattern);
    (!name.is_empty() || pattern == "*")
        && pattern.len() <= 128
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

pub struct WebhookSubscription;

impl Decider for WebhookSubscription {
    type Command = CreateWebhookSubscription;
    type Event = SubscriptionEvent;
    type State = SubscriptionState;

    fn decide(c: &CreateWebhookSubscription, state: &SubscriptionState) -> Result<Vec<SubscriptionEvent>, DomainError> {
        if let SubscriptionState::Created { .. } = state {
            return Err(DomainError::AlreadyExists { kind: "subscription", id: c.subscription_id.clone() });
        }
        if !is_event_type_pattern(&c.event_type) {
            return Err(DomainError::invalid("eventType", "must be an event type name or a prefix ending in *"));
        }
        if !(c.endpoint_url.starts_with("https://") || c.endpoint_url.starts_with("http://")) {
            return Err(DomainError::invalid("endpointUrl", "must be an http(s) URL"));
        }
        SecretRef::parse(&c.signing_secret_ref).map_err(|r| DomainError::invalid("signingSecretRef", r))?;
        Ok(vec![SubscriptionEvent::WebhookSubscriptionCreated(WebhookSubscriptionCreated {
            subscription_id: c.subscription_id.clone(),
            tenant_id: c.tenant_id.clone(),
            project_id: c.project_id.clone(),
            event_type: c.event_type.clone(),
            endpoint_url: c.endpoint_url.clone(),
            signing_secret_ref: c.signing_secret_ref.clone(),
            active: c.active,
            created_at: c.created_at,
        })])
    }

    fn evolve(_state: SubscriptionState, event: &SubscriptionEvent) -> SubscriptionState {
        match event {
            SubscriptionEvent::WebhookSubscriptionCreated(e) => SubscriptionState::Created { active: e.active },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create() -> CreateWebhookSubscription {
        CreateWebhookSubscription {
            subscription_id: "sub-1".into(),
            tenant_id: "connectsoft".into(),
            project_id: Some("proj-booking-saas".into()),
            event_type: "DeploymentPromoted".into(),
            endpoint_url: "https://hooks.partner.example/connectsoft".into(),
            signing_secret_ref: "kv://factory-integration/partner-hook-secret".into(),
            active: true,
            created_at: chrono::DateTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn creating_a_subscription_records_it() {
        let events = WebhookSubscription::decide(&create(), &SubscriptionState::None).unwrap();
        assert_eq!(WebhookSubscription::fold(&events), SubscriptionState::Created { active: true });
    }

    #[test]
    fn creating_it_twice_is_rejected() {
        let state = SubscriptionState::Created { active: true };
        assert!(matches!(WebhookSubscription::decide(&create(), &state), Err(DomainError::AlreadyExists { .. })));
    }

    #[test]
    fn bad_patterns_urls_and_secret_refs_are_rejected() {
        let field_of = |c: CreateWebhookSubscription| match WebhookSubscription::decide(&c, &SubscriptionState::None) {
            Err(DomainError::Invalid { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(field_of(CreateWebhookSubscription { event_type: "a b".into(), ..create() }), "eventType");
        assert_eq!(field_of(CreateWebhookSubscription { endpoint_url: "ftp://x".into(), ..create() }), "endpointUrl");
        assert_eq!(
            field_of(CreateWebhookSubscription { signing_secret_ref: "whsec_x".into(), ..create() }),
            "signingSecretRef"
        );
        assert!(is_event_type_pattern("Deployment*"));
        assert!(is_event_type_pattern("*"));
    }
}
