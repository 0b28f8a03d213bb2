use crate::documents::Documents;
use domain::{AnyEvent, EventEnvelope};

use crate::ProjectionError;
use crate::read_models::DELIVERIES;
use crate::views::DeliveryView;

pub const NAME: &str = DELIVERIES;

pub fn apply(docs: &mut Documents<'_>, event: &EventEnvelope, decoded: &AnyEvent) -> Result<(), ProjectionError> {
    match decoded {
        // The normalized event that follows an acceptance is for subscribers; the view already
        // names its type.
        AnyEvent::Delivery(delivery) => match delivery.as_accepted() {
            Some(e) => {
                let view = DeliveryView {
                    delivery_id: e.delivery_id.clone(),
                    tenant_id: event.tenant_id.clone(),
                    connection_id: e.connection_id.clone(),
                    provider: e.provider.clone(),
                    provider_delivery_id: e.provider_delivery_id.clone(),
                    event_name: e.event_name.clone(),
                    normalized_event_type: e.normalized_event_type.clone(),
                    payload_digest: e.payload_digest.clone(),
                    status: "Accepted".into(),
                    received_at: e.received_at,
                };
                docs.put(NAME, &event.tenant_id, &e.delivery_id, view);
                Ok(())
            }
            None => Ok(()),
        },
        AnyEvent::Connection(_)
        | AnyEvent::Provider(_)
        | AnyEvent::Subscription(_)
        | AnyEvent::Run(_)
        | AnyEvent::Credential(_)
        | AnyEvent::Outbound(_) => Ok(()),
    }
}
