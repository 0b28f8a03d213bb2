//! Background work driven by the event stream, and the bus to Kafka.
//!
//! - [`feed`]: the `EventFeed` port (a named consumer reads the events after its checkpoint and
//!   commits what it has handled: at-least-once) and its error type.
//! - [`embedded`]: `EmbeddedFeed`, the in-process adapter over the event store, for the default
//!   mode without services.
//! - [`kafka`]: the Kafka side: settings and topic creation, `KafkaFeed` (the same port over
//!   `integration.events.v1` in a consumer group, deduplicating by event id) and the consumer
//!   of the control plane's `integration.commands.v1` with its dead-letter topic.
//! - [`relay`]: publishes the store's events to `integration.events.v1` from a checkpoint.
//! - [`messages`]: the wire formats (CloudEvents, headers, `StartRun`) and the topic names.
//! - [`control_plane`]: validates, authorises and handles the control plane's `StartRun` and
//!   `PublishEvent` (Kafka and CLI alike).
//! - [`executor`]: `RunExecutor`, the handler that executes requested runs.
//! - [`process_manager`]: requests a connection's first health check and a rotation's
//!   verification run from their events, with deterministic run ids.
//! - [`schedules`]: periodic, jittered health checks and the retirement of previous credential
//!   versions after their overlap.
//! - [`jitter`]: the one jitter of every retry schedule (runs' backoff, webhook deliveries').
//! - [`pace`]: `Pace`, which spaces health checks while the API is busy (the `Foreground` port).
//! - [`checkpoints`]: `SqliteCheckpoints`, the durable positions of the embedded consumers.
//! - [`consumer`]: the `EventHandler` trait the workers implement and `run_consumer`, the loop
//!   that feeds a handler, retries its failures and commits after them.
//! - [`shared_store`]: `SharedStore`, which lets a process see other processes' appends.
#![forbid(unsafe_code)]

pub mod checkpoints;
pub mod consumer;
pub mod control_plane;
pub mod embedded;
pub mod executor;
pub mod fanout;
pub mod feed;
pub mod jitter;
pub mod kafka;
pub mod messages;
pub mod pace;
pub mod process_manager;
pub mod relay;
pub mod schedules;
pub mod shared_store;

pub use checkpoints::SqliteCheckpoints;
pub use consumer::{ConsumerOptions, EventHandler, run_consumer, run_consumer_with};
pub use embedded::EmbeddedFeed;
pub use executor::{ExecutorSettings, RunExecutor};
pub use feed::{EventFeed, FeedError};
pub use kafka::{KafkaFeed, KafkaSettings};
pub use shared_store::SharedStore;
