use chrono::{DateTime, Utc};
use domain::DomainError;
use domain::credential::{Credential, CredentialCommand, LinkSubscription};
use domain::ids::stream_id;
use domain::secret_ref::SecretRef;
use domain::subscription::{
    CreateWebhookSubscription, DeactivateWebhookSubscription, SubscriptionCommand, SubscriptionEvent,
    WebhookSubscription, WebhookSubscriptionCreated,
};
use store::SecretUse;

use crate::{CommandContext, CommandError, Commands};

pub struct SubscriptionCreatedOutcome {
    pub created: WebhookSubscriptionCreated,
    pub last_position: Option<u64>,
}

impl Commands {
    /// Creates an outbound webhook subscription in the caller's tenant, then registers (or
    /// links) the credential of its `signingSecretRef`, so `POST /integrations/credentials/rotate`
    /// rotates the signing secret.
    pub async fn create_subscription(
        &self,
        ctx: &CommandContext,
        mut command: CreateWebhookSubscription,
    ) -> Result<SubscriptionCreatedOutcome, CommandError> {
        command.tenant_id = ctx.tenant_id.clone();
        command.created_at = self.now();
        self.check_secret_use(ctx, Some(&command.signing_secret_ref), "signingSecretRef", SecretUse::Send).await?;
        // Refused before anything is stored when the credential would refuse the link.
        if let Some(secret) = rotatable(&command.signing_secret_ref) {
            let link =
                |id: &str| link_subscription(ctx, id, secret.clone(), 1, &command.subscription_id, command.created_at);
            self.check_credential_link(ctx, &secret, link).await?;
        }
        let stream = stream_id(&ctx.tenant_id, &command.subscription_id);
        let subscription_id = command.subscription_id.clone();
        let created = self.create::<WebhookSubscription>(ctx, &stream, &SubscriptionCommand::Create(command)).await?;
        let created_event = match created.events.into_iter().next() {
            Some(SubscriptionEvent::WebhookSubscriptionCreated(created_event)) => created_event,
            Some(SubscriptionEvent::WebhookSubscriptionDeactivated(_)) | None => {
                return Err(DomainError::NotFound { kind: "subscription", id: subscription_id }.into());
            }
        };
        // A second stream, so a second step: a crash between the two is healed by the client's
        // retry with the same Idempotency-Key, or by the process manager reacting to
        // `WebhookSubscriptionCreated`, because linking is idempotent.
        let linked = self.link_subscription_credential(ctx, &created_event).await?;
        Ok(SubscriptionCreatedOutcome { created: created_event, last_position: linked.or(created.last_position) })
    }

    /// Registers the credential `cred-{NAME}` of a subscription's `signingSecretRef` (auth kind
    /// `HmacSignature`) if it is not registered yet, and links the subscription to it.
    /// Idempotent: a subscription already linked changes nothing (`None`).
    pub async fn link_subscription_credential(
        &self,
        ctx: &CommandContext,
        created: &WebhookSubscriptionCreated,
    ) -> Result<Option<u64>, CommandError> {
        let Some(secret) = rotatable(&created.signing_secret_ref) else { return Ok(None) };
        let current_version = match self.vault.of(&ctx.tenant_id).metadata(&secret).await {
            Ok(metadata) => metadata.map_or(1, |m| m.current_version),
            // Stored before vaults had owners, in a vault the tenant does not own: linked all the
            // same (a redelivered event must not fail for good); using the secret stays refused.
            Err(store::VaultError::NotTenants(_)) => 1,
            Err(e) => return Err(e.into()),
        };
        let credential = self.credential_of(ctx, &secret).await?;
        let link = link_subscription(
            ctx,
            &credential.id,
            secret.clone(),
            current_version,
            &created.subscription_id,
            created.created_at,
        );
        let linked = self.execute::<Credential>(ctx, &stream_id(&ctx.tenant_id, &credential.id), &link).await?;
        Ok(linked.last_position)
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

/// The secret a subscription's credential rotates: an unversioned ref. A ref pinned to a version
/// (`?version=N`) signs with that version whatever the rotations do, so it names no credential;
/// refs that do not parse were refused when the subscription was created.
fn rotatable(signing_secret_ref: &str) -> Option<SecretRef> {
    SecretRef::parse(signing_secret_ref).ok().filter(|secret| secret.version.is_none())
}

fn link_subscription(
    ctx: &CommandContext,
    credential_id: &str,
    secret_ref: SecretRef,
    current_version: u32,
    subscription_id: &str,
    at: DateTime<Utc>,
) -> CredentialCommand {
    CredentialCommand::LinkSubscription(LinkSubscription {
        credential_id: credential_id.into(),
        tenant_id: ctx.tenant_id.clone(),
        secret_ref,
        current_version,
        subscription_id: subscription_id.into(),
        at,
    })
}
