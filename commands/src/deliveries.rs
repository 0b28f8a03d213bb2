use domain::DomainError;
use domain::delivery::{AcceptDelivery, DeliveryAccepted, DeliveryEvent, InboundDelivery};
use domain::ids::stream_id;

use crate::{CommandContext, CommandError, Commands};

pub struct DeliveryAcceptedOutcome {
    pub accepted: DeliveryAccepted,
    pub last_position: Option<u64>,
}

impl Commands {
    /// Records an inbound delivery whose signature the gateway has verified over its raw bytes.
    pub async fn accept_delivery(
        &self,
        ctx: &CommandContext,
        mut command: AcceptDelivery,
    ) -> Result<DeliveryAcceptedOutcome, CommandError> {
        command.tenant_id = ctx.tenant_id.clone();
        command.received_at = self.now();
        let stream = stream_id(&ctx.tenant_id, &command.delivery_id);
        let created = self.create::<InboundDelivery>(ctx, &stream, &command).await?;
        match created.events.into_iter().next() {
            Some(DeliveryEvent::DeliveryAccepted(accepted)) => {
                Ok(DeliveryAcceptedOutcome { accepted, last_position: created.last_position })
            }
            None => Err(DomainError::NotFound { kind: "delivery", id: command.delivery_id }.into()),
        }
    }
}
