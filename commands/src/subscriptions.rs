use domain::DomainError;
use domain::ids::stream_id;
use domain::subscription::{
    CreateWebhookSubscription, DeactivateWebhookSubscription, SubscriptionCommand, SubscriptionEvent,
    WebhookSubscription, WebhookSubscriptionCreated,
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
        let subscription_id = command.subscription_id.clone();
        let created = self.create::<WebhookSubscription>(ctx, &stream, &SubscriptionCommand::Create(command)).await?;
        match created.events.into_iter().next() {
            Some(SubscriptionEvent::WebhookSubscriptionCreated(created_event)) => {
                Ok(SubscriptionCreatedOutcome { created: created_event, last_position: created.last_position })
            }
            Some(SubscriptionEvent::WebhookSubscriptionDeactivated(_)) | None => {
                Err(DomainError::NotFound { kind: "subscription", id: subscription_id }.into())
            }
        }
    }

    /// Deactivates a subscription of the context's tenant, recording why; true when this call
    /// deactivated it (false: it was inactive already).
    pub async fn deactivate_subscription(
        &self,
        ctx: &CommandContext,
        subscription_id: &str,
        reason: &str,
    ) -> Result<bool, CommandError> {
        let command = SubscriptionCommand::Deactivate(DeactivateWebhookSubscription {
            subscription_id: subscription_id.into(),
            reason: reason.into(),
            deactivated_at: self.now(),
        });
        let executed =
            self.execute::<WebhookSubscription>(ctx, &stream_id(&ctx.tenant_id, subscription_id), &command).await?;
        Ok(!executed.new_events.is_empty())
    }
}
