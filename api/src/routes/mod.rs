//! One router per resource; handlers are the use case, extractors did the checking.

pub mod audit;
pub mod connections;
pub mod credentials;
pub mod deliveries;
pub mod providers;
pub mod runs;
pub mod subscriptions;

use commands::CommandContext;
use domain::Actor;
use domain::secret_ref::SecretRef;
use store::{SecretUse, VaultError};

use crate::AppState;
use crate::auth::Principal;
use crate::problem::Problem;
use crate::trace::current_trace_id;

/// The command context of an authenticated caller in the current request.
pub fn context_of(principal: &Principal) -> CommandContext {
    let actor = Actor { subject: principal.subject.clone(), client_id: principal.client_id.clone() };
    CommandContext::new(principal.tenant_id.clone(), current_trace_id(), actor)
}

/// 404, naming `field`, when `reference` is outside the vaults the tenant may use as `usage`
/// says (another tenant's vault and one that does not exist read the same): a reference to
/// something the tenant does not have, like an id of another tenant's. A reference that does
/// not parse is left to the decider, which says what is wrong with it (422).
pub async fn require_tenants_secret(
    app: &AppState,
    tenant_id: &str,
    field: &str,
    reference: &str,
    usage: SecretUse,
) -> Result<(), Problem> {
    let Ok(secret) = SecretRef::parse(reference) else { return Ok(()) };
    match app.vault.of(tenant_id).check(&secret, usage).await {
        Ok(()) => Ok(()),
        Err(VaultError::NotTenants(_)) => {
            let whose = match usage {
                SecretUse::Send => "the tenant's own vaults",
                SecretUse::Verify => "the tenant's own vaults or a shared one",
            };
            Err(Problem::unknown_reference(field, format!("{secret} is not in {whose}")))
        }
        Err(e) => Err(e.into()),
    }
}
