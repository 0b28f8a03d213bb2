//! Publishing platform events for webhook fan-out: the internal path every producer uses (the
//! commands topic's `PublishEvent`, the `webhooks publish` CLI, code of the engine itself).

use domain::ids::stream_id;
use domain::outbound::{OutboundMessage, OutboundMessageEvent, PlatformEventPublished, PublishEvent};
use serde_json::Value;

use crate::{CommandContext, CommandError, Commands};

/// What a publish did.
pub struct EventPublishedOutcome {
    pub published: PlatformEventPublished,
    /// False when the message had been published before (a redelivered command).
    pub newly_published: bool,
    pub last_position: Option<u64>,
}

impl Commands {
    /// Records the platform event `event_type` as message `message_id` of the context's tenant.
    /// The fan-out then requests one `DeliverWebhook` run per matching active subscription.
    /// Publishing the same message id with the same content again changes nothing.
    pub async fn publish_event(
        &self,
        ctx: &CommandContext,
        message_id: &str,
        project_id: Option<String>,
        event_type: &str,
        data: Value,
    ) -> Result<EventPublishedOutcome, CommandError> {
        let command = PublishEvent {
            message_id: message_id.into(),
            tenant_id: ctx.tenant_id.clone(),
            project_id,
            event_type: event_type.into(),
            data,
            published_at: self.now(),
        };
        let stream = stream_id(&ctx.tenant_id, message_id);
        let executed = self.execute_on_new_stream::<OutboundMessage>(ctx, &stream, &command).await?;
        let newly_published = !executed.new_events.is_empty();
        let published = match executed.state {
            domain::outbound::MessageState::Published(published) => published,
            domain::outbound::MessageState::None => {
                return Err(domain::DomainError::NotFound { kind: "message", id: message_id.into() }.into());
            }
        };
        let last_position = match executed.last_position {
            Some(position) => Some(position),
            None => self.load::<OutboundMessageEvent>(&stream).await?.last_position,
        };
        Ok(EventPublishedOutcome { published, newly_published, last_position })
    }
}
