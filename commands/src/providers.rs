use domain::DomainError;
use domain::ids::{provider_id, stream_id};
use domain::provider::{Provider, ProviderEvent, ProviderRegistered, RegisterProvider};

use crate::{CommandContext, CommandError, Commands};

pub struct ProviderRegisteredOutcome {
    pub registered: ProviderRegistered,
    pub last_position: Option<u64>,
}

impl Commands {
    /// Registers a provider under a key unique in the caller's tenant (`prov-{key}`).
    ///
    /// The stream id is derived from the key, so a second registration of the key meets the
    /// first one's stream and is rejected by the decider.
    pub async fn register_provider(
        &self,
        ctx: &CommandContext,
        mut command: RegisterProvider,
    ) -> Result<ProviderRegisteredOutcome, CommandError> {
        command.tenant_id = ctx.tenant_id.clone();
        command.registered_at = self.now();
        let stream = stream_id(&ctx.tenant_id, &provider_id(&command.key));
        let executed = self.execute::<Provider>(ctx, &stream, &command).await?;
        match executed.new_events.into_iter().next() {
            Some(ProviderEvent::ProviderRegistered(registered)) => {
                Ok(ProviderRegisteredOutcome { registered, last_position: executed.last_position })
            }
            None => Err(DomainError::ProviderKeyTaken { key: command.key }.into()),
        }
    }

    /// [`Self::register_provider`] for a request that may have run before (an `Idempotency-Key`
    /// retry after a crash or a lost answer): when the key is taken by a registration equal to
    /// this one, that registration is the answer, since it is exactly what this request creates.
    /// A registration that differs is still [`DomainError::ProviderKeyTaken`].
    pub async fn register_provider_or_find_same(
        &self,
        ctx: &CommandContext,
        command: RegisterProvider,
    ) -> Result<ProviderRegisteredOutcome, CommandError> {
        match self.register_provider(ctx, command.clone()).await {
            Err(CommandError::Rejected(DomainError::ProviderKeyTaken { key })) => {
                let stream = stream_id(&ctx.tenant_id, &provider_id(&key));
                let loaded = self.load::<ProviderEvent>(&stream).await?;
                match loaded.events.into_iter().next() {
                    Some(ProviderEvent::ProviderRegistered(registered))
                        if registers_the_same(&registered, &command) =>
                    {
                        Ok(ProviderRegisteredOutcome { registered, last_position: loaded.last_position })
                    }
                    _ => Err(DomainError::ProviderKeyTaken { key }.into()),
                }
            }
            other => other,
        }
    }
}

fn registers_the_same(registered: &ProviderRegistered, command: &RegisterProvider) -> bool {
    registered.key == command.key
        && registered.display_name == command.display_name
        && registered.category == command.category
        && registered.auth_model == command.auth_model
        && registered.api_client == command.api_client
        && registered.capabilities == command.capabilities
        && registered.base_url == command.base_url
}
