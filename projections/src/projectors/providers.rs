use crate::documents::Documents;
use domain::provider::ProviderEvent;
use domain::{AnyEvent, EventEnvelope};

use crate::ProjectionError;
use crate::read_models::PROVIDERS;
use crate::views::ProviderView;

pub const NAME: &str = PROVIDERS;

pub fn apply(docs: &mut Documents<'_>, event: &EventEnvelope, decoded: &AnyEvent) -> Result<(), ProjectionError> {
    match decoded {
        AnyEvent::Provider(ProviderEvent::ProviderRegistered(e)) => {
            let view = ProviderView {
                provider_id: e.provider_id.clone(),
                tenant_id: event.tenant_id.clone(),
                key: e.key.clone(),
                display_name: e.display_name.clone(),
                category: e.category.clone(),
                auth_model: e.auth_model,
                api_client: e.api_client.clone(),
                api_client_id: e.api_client_id.clone(),
                capabilities: e.capabilities.clone(),
                base_url: e.base_url.clone(),
                status: "Registered".into(),
                registered_at: e.registered_at,
            };
            docs.put(NAME, &event.tenant_id, &e.provider_id, view);
            Ok(())
        }
        AnyEvent::Connection(_)
        | AnyEvent::Subscription(_)
        | AnyEvent::Delivery(_)
        | AnyEvent::Run(_)
        | AnyEvent::Credential(_)
        | AnyEvent::Outbound(_) => Ok(()),
    }
}
