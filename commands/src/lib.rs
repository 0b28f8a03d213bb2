//! The write side: every state change is load stream → decide → append with the expected version.
//!
//! - [`handler`]: [`Commands`], the generic executor with conflict retry, and [`CommandError`].
//! - [`context`]: who asks, for which tenant, under which trace ([`CommandContext`]).
//! - [`states`]: aggregate states cached by stream and version ([`Folded`]).
//! - [`idempotency`]: `Idempotency-Key` handling over the store's reservation table.
//! - One module per use case family: [`connections`], [`providers`], [`subscriptions`],
//!   [`deliveries`], [`credentials`], [`runs`].
#![forbid(unsafe_code)]

pub mod connections;
pub mod context;
pub mod credentials;
pub mod deliveries;
pub mod handler;
pub mod idempotency;
pub mod outbound;
pub mod providers;
pub mod runs;
pub mod states;
pub mod subscriptions;

pub use context::CommandContext;
pub use domain::clock::{Clock, SystemClock};
pub use handler::{Aggregate, CommandError, Commands, Executed, Loaded};
pub use states::Folded;

/// A fresh, time-ordered resource id with the given spec prefix (`conn`, `run`, ...).
pub fn new_resource_id(prefix: &str) -> String {
    domain::ids::new_id(prefix, uuid::Uuid::now_v7())
}
