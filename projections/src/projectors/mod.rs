//! One projector per read model. Each is a pure function of (read model so far, event): it
//! matches exhaustively on its own aggregate's events, so a new event type fails to compile
//! until every projection has decided what it means, and ignores the other aggregates.

use domain::{AnyEvent, EventEnvelope};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::ProjectionError;
use crate::documents::Documents;

pub mod connections;
pub mod credentials;
pub mod deliveries;
pub mod providers;
pub mod runs;
pub mod subscriptions;

/// Applies one decoded event to a projection's documents, which the batch writes when it ends.
pub type Apply = fn(&mut Documents<'_>, &EventEnvelope, &AnyEvent) -> Result<(), ProjectionError>;

/// A projection: the name of its checkpoint (and of its table) and its projector.
#[derive(Clone, Copy, Debug)]
pub struct Projection {
    pub name: &'static str,
    pub apply: Apply,
}

/// Every projection the runner maintains. Each has its own checkpoint, so one added later
/// replays the store from the start while the others carry on.
pub const ALL: [Projection; 6] = [
    Projection { name: connections::NAME, apply: connections::apply },
    Projection { name: providers::NAME, apply: providers::apply },
    Projection { name: subscriptions::NAME, apply: subscriptions::apply },
    Projection { name: deliveries::NAME, apply: deliveries::apply },
    Projection { name: runs::NAME, apply: runs::apply },
    Projection { name: credentials::NAME, apply: credentials::apply },
];

/// Changes the existing document `id` (in the event's tenant) of `projection`'s table.
///
/// The event stream guarantees the creating event came first, so a missing document means the
/// database was altered outside the projector; carrying on would hide that.
fn update_doc<T: Serialize + DeserializeOwned + 'static>(
    docs: &mut Documents<'_>,
    projection: &'static str,
    event: &EventEnvelope,
    id: &str,
    change: impl FnOnce(&mut T),
) -> Result<(), ProjectionError> {
    if docs.update(projection, &event.tenant_id, id, change)? {
        return Ok(());
    }
    Err(ProjectionError::Inconsistent {
        projection,
        global_position: event.global_position,
        reason: format!("{} of {id} in tenant {} has no document to apply it to", event.event_type, event.tenant_id),
    })
}
