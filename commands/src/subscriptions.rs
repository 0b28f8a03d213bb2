use domain::DomainError;
use domain::ids::stream_id;
use domain::subscription::{
    CreateWebhookSubscription, SubscriptionEvent, WebhookSubscription, WebhookSubscriptionCreated,
};

use crate::{CommandContext, CommandError, Commands};

pub struct SubscriptionCreatedOutcome {
    pub created: WebhookSubscriptionCreated,
    pub last_position: Option<u64>,
}

impl Commands {
    /// Creates an outbound webhook subscription in the caller's tenant.
    pub async fn create_subscription(
        &self,
        ctx: &CommandContext,
        mut command: CreateWebhookSubscription,
    ) -> Result<SubscriptionCreatedOutcome, CommandError> {
        command.tenant_id = ctx.tenant_id.clone();
        command.created_at = self.now();
        self.check_secret_access(ctx, Some(&command.signing_secret_ref), "signingSecretRef").await?;
        let stream = stream_id(&ctx.tenant_id, &command.subscription_id);
        let created = self.create::<WebhookSubscription>(ctx, &stream, &command).await?;
        match created.events.into_iter().next() {
            Some(SubscriptionEvent::WebhookSubscriptionCreated(created_event)) => {
                Ok(SubscriptionCreatedOutcome { created: created_event, last_position: created.last_position })
            }
            None => Err(DomainError::NotFound { kind: "subscription", id: command.subscription_id }.into()),
        }
    }
}
