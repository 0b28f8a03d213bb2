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
}
