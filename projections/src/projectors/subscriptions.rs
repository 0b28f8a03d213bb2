use crate::documents::Documents;
use domain::subscription::SubscriptionEvent;
use domain::{AnyEvent, EventEnvelope};

use super::update_doc;
use crate::ProjectionError;
use crate::read_models::SUBSCRIPTIONS;
use crate::views::SubscriptionView;

pub const NAME: &str = SUBSCRIPTIONS;

pub fn apply(docs: &mut Documents<'_>, event: &EventEnvelope, decoded: &AnyEvent) -> Result<(), ProjectionError> {
    match decoded {
        AnyEvent::Subscription(SubscriptionEvent::WebhookSubscriptionCreated(e)) => {
            let view = SubscriptionView {
                subscription_id: e.subscription_id.clone(),
                tenant_id: event.tenant_id.clone(),
                project_id: e.project_id.clone(),
                event_type: e.event_type.clone(),
                endpoint_url: e.endpoint_url.clone(),
                signing_secret_ref: e.signing_secret_ref.clone(),
                active: e.active,
                status: if e.active { "Active" } else { "Inactive" }.into(),
                created_at: e.created_at,
                delivery: e.delivery,
                deactivation_reason: None,
                deactivated_at: None,
            };
            docs.put(NAME, &event.tenant_id, &e.subscription_id, view);
            Ok(())
        }
        AnyEvent::Subscription(SubscriptionEvent::WebhookSubscriptionDeactivated(e)) => {
            update_doc(docs, NAME, event, &e.subscription_id, |view: &mut SubscriptionView| {
                view.active = false;
                view.status = "Inactive".into();
                view.deactivation_reason = Some(e.reason.clone());
                view.deactivated_at = Some(e.deactivated_at);
            })
        }
        AnyEvent::Connection(_)
        | AnyEvent::Provider(_)
        | AnyEvent::Delivery(_)
        | AnyEvent::Run(_)
        | AnyEvent::Credential(_)
        | AnyEvent::Outbound(_) => Ok(()),
    }
}
