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
    /// How fast, how many at once and in which order deliveries reach the endpoint.
    pub delivery: DeliverySettings,
}

/// Throughput and ordering of one subscription's deliveries, enforced by the dispatcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliverySettings {
    /// Requests in flight to the endpoint at most at once (1 to 1000).
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: u32,
    /// Requests started per second at most (1 to 10000); `None`: no rate limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_per_second: Option<u32>,
    /// Deliver in publication order: the next message waits until the previous one succeeded or
    /// was dead-lettered (implies one request in flight).
    #[serde(default)]
    pub strict_ordering: bool,
}

/// Requests in flight to one endpoint unless the subscription says otherwise.
pub const DEFAULT_MAX_IN_FLIGHT: u32 = 10;

fn default_max_in_flight() -> u32 {
    DEFAULT_MAX_IN_FLIGHT
}

impl Default for DeliverySettings {
    fn default() -> Self {
        Self { max_in_flight: DEFAULT_MAX_IN_FLIGHT, rate_limit_per_second: None, strict_ordering: false }
    }
}

/// Stop delivering to a subscription, saying why (the endpoint answered 410 Gone or asked to be
/// disabled, it kept failing, or an operator did it).
#[derive(Debug, Clone, PartialEq)]
pub struct DeactivateWebhookSubscription {
    pub subscription_id: String,
    pub reason: String,
    pub deactivated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SubscriptionCommand {
    Create(CreateWebhookSubscription),
    Deactivate(DeactivateWebhookSubscription),
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
    /// Absent in subscriptions created before throughput settings existed: the defaults.
    #[serde(default)]
    pub delivery: DeliverySettings,
}

/// The subscription gets nothing more; `reason` says why, for the operator and the auditor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookSubscriptionDeactivated {
    pub subscription_id: String,
    pub reason: String,
    pub deactivated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", content = "data")]
pub enum SubscriptionEvent {
    WebhookSubscriptionCreated(WebhookSubscriptionCreated),
    WebhookSubscriptionDeactivated(WebhookSubscriptionDeactivated),
}

impl AggregateEvent for SubscriptionEvent {
    const TYPES: &'static [&'static str] = &["WebhookSubscriptionCreated", "WebhookSubscriptionDeactivated"];

    fn event_type(&self) -> &'static str {
        match self {
            Self::WebhookSubscriptionCreated(_) => "WebhookSubscriptionCreated",
            Self::WebhookSubscriptionDeactivated(_) => "WebhookSubscriptionDeactivated",
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

/// Whether an event type matches a subscription's pattern: equal, or starting with the prefix
/// before a trailing `*` (`*` alone matches every type).
pub fn event_type_matches(pattern: &str, event_type: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => event_type.starts_with(prefix),
        None => pattern == event_type,
    }
}

/// Whether a message of `tenant_id`, `project_id` and `event_type` is for the subscription: same
/// tenant, matching type, and the same project when the subscription names one (a message
/// without a project does not match a subscription to a project).
pub fn subscription_matches(
    subscription: &WebhookSubscriptionCreated,
    tenant_id: &str,
    project_id: Option<&str>,
    event_type: &str,
) -> bool {
    subscription.tenant_id == tenant_id
        && event_type_matches(&subscription.event_type, event_type)
        && subscription.project_id.as_deref().is_none_or(|p| Some(p) == project_id)
}

pub struct WebhookSubscription;

impl Decider for WebhookSubscription {
    type Command = SubscriptionCommand;
    type Event = SubscriptionEvent;
    type State = SubscriptionState;

    fn decide(command: &SubscriptionCommand, state: &SubscriptionState) -> Result<Vec<SubscriptionEvent>, DomainError> {
        match command {
            SubscriptionCommand::Create(c) => create(c, state),
            SubscriptionCommand::Deactivate(d) => match state {
                SubscriptionState::None => {
                    Err(DomainError::NotFound { kind: "subscription", id: d.subscription_id.clone() })
                }
                // Already inactive: nothing to say twice (many failing deliveries may ask at once).
                SubscriptionState::Created { active: false } => Ok(vec![]),
                SubscriptionState::Created { active: true } => {
                    Ok(vec![SubscriptionEvent::WebhookSubscriptionDeactivated(WebhookSubscriptionDeactivated {
                        subscription_id: d.subscription_id.clone(),
                        reason: d.reason.clone(),
                        deactivated_at: d.deactivated_at,
                    })])
                }
            },
        }
    }

    fn evolve(state: SubscriptionState, event: &SubscriptionEvent) -> SubscriptionState {
        match event {
            SubscriptionEvent::WebhookSubscriptionCreated(e) => SubscriptionState::Created { active: e.active },
            SubscriptionEvent::WebhookSubscriptionDeactivated(_) => match state {
                SubscriptionState::None => SubscriptionState::None,
                SubscriptionState::Created { .. } => SubscriptionState::Created { active: false },
            },
        }
    }
}

fn create(c: &CreateWebhookSubscription, state: &SubscriptionState) -> Result<Vec<SubscriptionEvent>, DomainError> {
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
    let d = &c.delivery;
    if !(1..=1000).contains(&d.max_in_flight) {
        return Err(DomainError::invalid("maxInFlight", "must be 1 to 1000"));
    }
    if d.rate_limit_per_second.is_some_and(|r| !(1..=10_000).contains(&r)) {
        return Err(DomainError::invalid("rateLimitPerSecond", "must be 1 to 10000"));
    }
    Ok(vec![SubscriptionEvent::WebhookSubscriptionCreated(WebhookSubscriptionCreated {
        subscription_id: c.subscription_id.clone(),
        tenant_id: c.tenant_id.clone(),
        project_id: c.project_id.clone(),
        event_type: c.event_type.clone(),
        endpoint_url: c.endpoint_url.clone(),
        signing_secret_ref: c.signing_secret_ref.clone(),
        active: c.active,
        created_at: c.created_at,
        delivery: c.delivery,
    })])
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
            delivery: DeliverySettings::default(),
        }
    }

    fn decide(c: CreateWebhookSubscription, state: &SubscriptionState) -> Result<Vec<SubscriptionEvent>, DomainError> {
        WebhookSubscription::decide(&SubscriptionCommand::Create(c), state)
    }

    #[test]
    fn creating_a_subscription_records_it() {
        let events = decide(create(), &SubscriptionState::None).unwrap();
        assert_eq!(WebhookSubscription::fold(&events), SubscriptionState::Created { active: true });
    }

    #[test]
    fn creating_it_twice_is_rejected() {
        let state = SubscriptionState::Created { active: true };
        assert!(matches!(decide(create(), &state), Err(DomainError::AlreadyExists { .. })));
    }

    #[test]
    fn bad_patterns_urls_and_secret_refs_are_rejected() {
        let field_of = |c: CreateWebhookSubscription| match decide(c, &SubscriptionState::None) {
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
        let delivery = DeliverySettings { max_in_flight: 0, ..DeliverySettings::default() };
        assert_eq!(field_of(CreateWebhookSubscription { delivery, ..create() }), "maxInFlight");
        let delivery = DeliverySettings { rate_limit_per_second: Some(0), ..DeliverySettings::default() };
        assert_eq!(field_of(CreateWebhookSubscription { delivery, ..create() }), "rateLimitPerSecond");
    }

    #[test]
    fn deactivating_says_why_once() {
        let deactivate = SubscriptionCommand::Deactivate(DeactivateWebhookSubscription {
            subscription_id: "sub-1".into(),
            reason: "the endpoint answered 410 Gone".into(),
            deactivated_at: chrono::DateTime::UNIX_EPOCH,
        });
        assert!(matches!(
            WebhookSubscription::decide(&deactivate, &SubscriptionState::None),
            Err(DomainError::NotFound { .. })
        ));
        let mut events = decide(create(), &SubscriptionState::None).unwrap();
        let deactivated = WebhookSubscription::decide(&deactivate, &WebhookSubscription::fold(&events)).unwrap();
        assert_eq!(deactivated.len(), 1);
        events.extend(deactivated);
        let state = WebhookSubscription::fold(&events);
        assert_eq!(state, SubscriptionState::Created { active: false });
        assert_eq!(WebhookSubscription::decide(&deactivate, &state).unwrap(), vec![]);
    }

    #[test]
    fn matching_by_tenant_type_pattern_and_project() {
        let any_project = created(None, "Deployment*");
        assert!(subscription_matches(&any_project, "connectsoft", None, "DeploymentPromoted"));
        assert!(subscription_matches(&any_project, "connectsoft", Some("p"), "DeploymentFailed"));
        assert!(!subscription_matches(&any_project, "other", None, "DeploymentPromoted"));
        assert!(!subscription_matches(&any_project, "connectsoft", None, "PullRequestMerged"));
        let exact = created(Some("proj-a"), "DeploymentPromoted");
        assert!(subscription_matches(&exact, "connectsoft", Some("proj-a"), "DeploymentPromoted"));
        assert!(!subscription_matches(&exact, "connectsoft", Some("proj-b"), "DeploymentPromoted"));
        assert!(!subscription_matches(&exact, "connectsoft", None, "DeploymentPromoted"));
        assert!(!subscription_matches(&exact, "connectsoft", Some("proj-a"), "DeploymentPromotedAgain"));
        assert!(subscription_matches(&created(None, "*"), "connectsoft", None, "Anything"));
    }

    fn created(project: Option<&str>, pattern: &str) -> WebhookSubscriptionCreated {
        WebhookSubscriptionCreated {
            subscription_id: "sub-1".into(),
            tenant_id: "connectsoft".into(),
            project_id: project.map(Into::into),
            event_type: pattern.into(),
            endpoint_url: "https://x.example".into(),
            signing_secret_ref: "kv://v/s".into(),
            active: true,
            created_at: chrono::DateTime::UNIX_EPOCH,
            delivery: DeliverySettings::default(),
        }
    }
}
