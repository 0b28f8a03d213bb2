//! The integration engine's domain: pure deciders, versioned events and the event envelope.
//!
//! No decider does I/O, reads a clock or draws random numbers: ids and `now` arrive inside the
//! commands, so every rule can be tested as Given events / When command / Then events. The one
//! exception to "no clock" is the [`clock`] port itself, which lives here, below every crate,
//! so that every edge that stamps, signs or expires reads time through one port.
#![forbid(unsafe_code)]

/// Any event of any aggregate, decoded by type, for readers of the global order.
pub mod any_event;
/// Exponential backoff between retries (arithmetic only: callers sleep).
pub mod backoff;
/// The clock port and the system clock.
pub mod clock;
/// The decider pattern every aggregate implements.
pub mod decider;
/// The stored and published event envelope, and the event about to be appended.
pub mod envelope;
/// Rejections a decider can return.
pub mod error;
/// Serialising aggregate events to `(type, schema version, data)` and back.
pub mod event;
/// Resource ids: spec prefixes over time-ordered UUIDv7s.
pub mod ids;
/// JSON Schemas of every event version and of the envelope.
pub mod schemas;
/// `kv://VAULT/NAME?version=N` references to vault secrets.
pub mod secret_ref;
/// Given / when / then: the shape of every decider's tests.
#[cfg(test)]
pub(crate) mod spec;
/// Each event type's schema version and the upcasters from older ones.
pub mod upcast;

/// A connection between a tenant's project and a provider.
pub mod connection;
/// A credential: a vault secret, the connections using it, and its rotations.
pub mod credential;
/// An inbound webhook delivery accepted from a provider.
pub mod delivery;
/// An outbound message: a platform event published for webhook fan-out.
pub mod outbound;
/// A provider registered in a tenant's vendor registry.
pub mod provider;
/// An integration run and its attempts.
pub mod run;
/// An outbound webhook subscription.
pub mod subscription;

pub use any_event::AnyEvent;
pub use decider::Decider;
pub use envelope::{Actor, EventData, EventEnvelope, NewEvent};
pub use error::DomainError;
pub use event::{AggregateEvent, DecodeError, EventJson, StoredEventData};
