//! Persistence ports and their adapters.
//!
//! - [`event_store`]: the `EventStore` port (append with expected version, read a stream, read
//!   all in global order, follow live appends) and the catch-up subscription built on it.
//! - [`hash_chain`]: the per-stream hash chain that makes tampering evident.
//! - [`sqlite`]: the embedded default adapter (WAL, synchronous commits, group commit).
//! - [`idempotency`]: the `IdempotencyStore` port for `Idempotency-Key` reservations, and
//!   [`sqlite_idempotency`], its adapter in the event store's SQLite file.
//! - [`leases`]: the `Leases` port (time-bound claims on named work, one holder at a time),
//!   and [`sqlite_leases`], its adapter in the event store's SQLite file.
//! - [`sqlite_readers`]: read-only connections to an SQLite file, kept and reused (the event
//!   store's and the read models'); point reads run on the calling task when one is idle.
//! - [`audit`]: the auditors' read (the audit API's and `replay`'s): a question checked,
//!   its events paged in global order, each shown as stored or upcast.
//! - [`cached_vault`]: a read-through cache in front of any `SecretStore`.
//! - [`vault`]: the `SecretStore` port (`kv://` refs), and [`sqlite_vault`], its adapter
//!   encrypting every version under the master key in a SQLite file of its own.
//! - `contract` (feature `contract-tests`): the suites every `EventStore`, `Leases` and
//!   `SecretStore` adapter must pass.
#![forbid(unsafe_code)]

pub mod audit;
pub mod cached_vault;
pub mod event_store;
pub mod hash_chain;
pub mod idempotency;
pub mod leases;
pub mod sqlite;
pub mod sqlite_checkpointer;
pub mod sqlite_idempotency;
pub mod sqlite_leases;
pub mod sqlite_readers;
pub mod sqlite_vault;
pub mod vault;

#[cfg(feature = "contract-tests")]
pub mod contract;

pub use event_store::{EventFilter, EventStore, ExpectedVersion, StoreError, StreamAppend, position_ranges, subscribe};
pub use idempotency::{IdempotencyStore, Reservation, StoredResponse};
pub use leases::{Lease, Leases};
pub use sqlite::{SqliteEventStore, WriteStats};
pub use sqlite_idempotency::SqliteIdempotencyStore;
pub use sqlite_leases::SqliteLeases;
pub use sqlite_vault::{MasterKey, SqliteVault};
pub use vault::{
    SecretMetadata, SecretStore, SecretUse, SecretValue, Stage, TenantVault, VaultError, VaultOwner, Vaults,
    VersionMetadata,
};
