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

use crate::auth::Principal;
use crate::trace::current_trace_id;

/// The command context of an authenticated caller in the current request.
pub fn context_of(principal: &Principal) -> CommandContext {
    let actor = Actor { subject: principal.subject.clone(), client_id: principal.client_id.clone() };
    CommandContext::new(principal.tenant_id.clone(), current_trace_id(), actor)
}
