use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{AggregateEvent, Decider, DomainError, ids};

/// How a provider's API (or a connection to it) authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum AuthModel {
    ApiKey,
    Basic,
    Bearer,
    OAuth2ClientCredentials,
    OAuth2AuthorizationCode,
    HmacSignature,
    None,
}

/// Register a provider in the tenant's vendor registry under a key unique in the tenant.
#[derive(Debug, Clone, PartialEq)]
pub struct RegisterProvider {
    pub tenant_id: String,
    pub key: String,
    pub display_name: String,
    pub category: String,
    pub auth_model: AuthModel,
    pub api_client: String,
    pub capabilities: Vec<String>,
    pub base_url: String,
    pub registered_at: DateTime<Utc>,
}

/// The version of the engine's API client implementations that new registrations are served by.
pub const API_CLIENT_VERSION: u32 = 1;

/// A provider was registered (schema v2).
///
/// v2 added `apiClientVersion`, so the registry can tell which version of a client serves a
/// provider (and route an upgrade) without parsing it out of `apiClientId`. A v1 event is upcast
/// with `apiClientVersion: 1`: v1 registrations were always served by client v1
/// (`apiClientId` was always `client-{name}-v1`). See [`crate::upcast::upcast`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProviderRegistered {
    pub provider_id: String,
    pub tenant_id: String,
    pub key: String,
    pub display_name: String,
    pub category: String,
    pub auth_model: AuthModel,
    pub api_client: String,
    /// The engine's API client implementation serving this provider, e.g. `client-twilio-v1`.
    pub api_client_id: String,
    /// The version of that API client implementation (the `N` of `client-{name}-vN`).
    pub api_client_version: u32,
    pub capabilities: Vec<String>,
    pub base_url: String,
    pub registered_at: DateTime<Utc>,
}

/// `ProviderRegistered` as schema v1 stored it: kept for its JSON Schema
/// (`schemas/events/ProviderRegistered.v1.json`) and as the input of its upcaster. Nothing
/// writes it any more.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "ProviderRegistered")]
pub struct ProviderRegisteredV1 {
    pub provider_id: String,
    pub tenant_id: String,
    pub key: String,
    pub display_name: String,
    pub category: String,
    pub auth_model: AuthModel,
    pub api_client: String,
    /// The engine's API client implementation serving this provider, e.g. `client-twilio-v1`.
    pub api_client_id: String,
    pub capabilities: Vec<String>,
    pub base_url: String,
    pub registered_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", content = "data")]
pub enum ProviderEvent {
    ProviderRegistered(ProviderRegistered),
}

impl AggregateEvent for ProviderEvent {
    const TYPES: &'static [&'static str] = &["ProviderRegistered"];

    fn event_type(&self) -> &'static str {
        match self {
            Self::ProviderRegistered(_) => "ProviderRegistered",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub enum ProviderState {
    #[default]
    Unregistered,
    Registered(Box<ProviderRegistered>),
}

/// The API client id for an implementation name: its last dotted segment, lowercased, at
/// [`API_CLIENT_VERSION`] (`ConnectSoft.Sms.Providers.Twilio` → `client-twilio-v1`).
pub fn api_client_id(api_client: &str) -> String {
    let name = api_client.rsplit('.').next().unwrap_or(api_client).to_ascii_lowercase();
    format!("client-{name}-v{API_CLIENT_VERSION}")
}

pub struct Provider;

impl Decider for Provider {
    type Command = RegisterProvider;
    type Event = ProviderEvent;
    type State = ProviderState;

    fn decide(command: &RegisterProvider, state: &ProviderState) -> Result<Vec<ProviderEvent>, DomainError> {
        if let ProviderState::Registered(_) = state {
            return Err(DomainError::ProviderKeyTaken { key: command.key.clone() });
        }
        if !ids::is_slug(&command.key) {
            return Err(DomainError::invalid("key", "must be lowercase letters, digits and inner hyphens"));
        }
        if !(command.base_url.starts_with("https://") || command.base_url.starts_with("http://")) {
            return Err(DomainError::invalid("baseUrl", "must be an http(s) URL"));
        }
        let client = &command.api_client;
        if client.is_empty()
            || !client.split('.').all(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric()))
        {
            return Err(DomainError::invalid("apiClient", "must be a dotted name such as Vendor.Product.Client"));
        }
        Ok(vec![ProviderEvent::ProviderRegistered(ProviderRegistered {
            provider_id: ids::provider_id(&command.key),
            tenant_id: command.tenant_id.clone(),
            key: command.key.clone(),
            display_name: command.display_name.clone(),
            category: command.category.clone(),
            auth_model: command.auth_model,
            api_client: command.api_client.clone(),
            api_client_id: api_client_id(&command.api_client),
            api_client_version: API_CLIENT_VERSION,
            capabilities: command.capabilities.clone(),
            base_url: command.base_url.clone(),
            registered_at: command.registered_at,
        })])
    }

    fn evolve(_state: ProviderState, event: &ProviderEvent) -> ProviderState {
        match event {
            ProviderEvent::ProviderRegistered(e) => ProviderState::Registered(Box::new(e.clone())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn register(key: &str) -> RegisterProvider {
        RegisterProvider {
            tenant_id: "connectsoft".into(),
            key: key.into(),
            display_name: "Twilio SMS".into(),
            category: "Communication".into(),
            auth_model: AuthModel::ApiKey,
            api_client: "ConnectSoft.Sms.Providers.Twilio".into(),
            capabilities: vec!["sms.send".into(), "sms.status".into()],
            base_url: "https://api.twilio.com".into(),
            registered_at: Utc.with_ymd_and_hms(2026, 6, 11, 9, 1, 0).unwrap(),
        }
    }

    #[test]
    fn registering_a_new_key_registers_the_provider() {
        let events = Provider::decide(&register("twilio-sms"), &ProviderState::default()).unwrap();
        let [ProviderEvent::ProviderRegistered(e)] = events.as_slice() else { panic!("{events:?}") };
        assert_eq!(e.provider_id, "prov-twilio-sms");
        assert_eq!(e.api_client_id, "client-twilio-v1");
        assert_eq!(e.api_client_version, 1);
    }

    #[test]
    fn new_registrations_are_written_at_v2_and_a_v1_registration_reads_back_as_v2() {
        let events = Provider::decide(&register("twilio-sms"), &ProviderState::default()).unwrap();
        let stored = events[0].encode();
        assert_eq!((stored.event_type.as_str(), stored.schema_version), ("ProviderRegistered", 2));
        assert_eq!(stored.data["apiClientVersion"], 1);

        // The same registration as v1 stored it: no apiClientVersion.
        let ProviderEvent::ProviderRegistered(v2) = &events[0];
        let v1 = ProviderRegisteredV1 {
            provider_id: v2.provider_id.clone(),
            tenant_id: v2.tenant_id.clone(),
            key: v2.key.clone(),
            display_name: v2.display_name.clone(),
            category: v2.category.clone(),
            auth_model: v2.auth_model,
            api_client: v2.api_client.clone(),
            api_client_id: v2.api_client_id.clone(),
            capabilities: v2.capabilities.clone(),
            base_url: v2.base_url.clone(),
            registered_at: v2.registered_at,
        };
        let v1_data = serde_json::to_value(&v1).unwrap();
        assert!(v1_data.get("apiClientVersion").is_none());
        assert_eq!(ProviderEvent::decode("ProviderRegistered", 1, &v1_data).unwrap(), events[0]);
    }

    #[test]
    fn a_key_registered_twice_in_a_tenant_is_rejected() {
        let given = Provider::decide(&register("twilio-sms"), &ProviderState::default()).unwrap();
        let state = Provider::fold(&given);
        assert_eq!(
            Provider::decide(&register("twilio-sms"), &state),
            Err(DomainError::ProviderKeyTaken { key: "twilio-sms".into() })
        );
    }

    proptest::proptest! {
        /// Whatever was registered, the v1 form of the event (v2 without `apiClientVersion`)
        /// upcasts back to the very event, and the current form round-trips.
        #[test]
        fn a_v1_registration_upcasts_to_the_v2_event(
            key in "[a-z][a-z0-9]{0,10}(-[a-z0-9]{1,6})?",
            client in "[A-Z][a-zA-Z0-9]{0,8}(\\.[A-Z][a-zA-Z0-9]{0,8}){0,3}",
            capabilities in proptest::collection::vec("[a-z]{1,6}\\.[a-z]{1,6}", 0..4),
        ) {
            let command = RegisterProvider { key, api_client: client, capabilities, ..register("x") };
            let events = Provider::decide(&command, &ProviderState::default()).unwrap();
            let stored = events[0].encode();
            proptest::prop_assert_eq!(&ProviderEvent::decode(&stored.event_type, 2, &stored.data).unwrap(), &events[0]);
            let mut v1 = stored.data;
            v1.as_object_mut().unwrap().remove("apiClientVersion");
            proptest::prop_assert_eq!(&ProviderEvent::decode("ProviderRegistered", 1, &v1).unwrap(), &events[0]);
        }
    }

    #[test]
    fn malformed_keys_urls_and_clients_are_rejected() {
        let bad_key = register("Twilio SMS");
        assert!(
            matches!(Provider::decide(&bad_key, &ProviderState::default()), Err(DomainError::Invalid { field, .. }) if field == "key")
        );
        let mut bad_url = register("x");
        bad_url.base_url = "ftp://x".into();
        assert!(
            matches!(Provider::decide(&bad_url, &ProviderState::default()), Err(DomainError::Invalid { field, .. }) if field == "baseUrl")
        );
        let mut bad_client = register("x");
        bad_client.api_client = "a..b".into();
        assert!(
            matches!(Provider::decide(&bad_client, &ProviderState::default()), Err(DomainError::Invalid { field, .. }) if field == "apiClient")
        );
    }
}
