//! The write side against the real SQLite event store, vault and idempotency table in a
//! temporary directory, with a fixed clock: one binary, one module per use-case family.

mod connections;
mod credentials;
mod deliveries;
mod execute;
mod idempotency;
mod providers;
mod subscriptions;
mod support;
mod tenancy;
