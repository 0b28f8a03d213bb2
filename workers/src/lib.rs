//! Background work driven by the event stream.
//!
//! - [`feed`]: the `EventFeed` port (a named consumer reads the events after its checkpoint and
//!   commits what it has handled: at-least-once) and its error type.
//! - [`embedded`]: `EmbeddedFeed`, the in-process adapter over the event store, for the default
//!   mode without services. A Kafka adapter of the same port serves the scaled mode.
//! - [`checkpoints`]: `SqliteCheckpoints`, the durable positions of the embedded consumers.
//! - [`consumer`]: the `EventHandler` trait the workers implement and `run_consumer`, the loop
//!   that feeds a handler, retries its failures and commits after them.
#![forbid(unsafe_code)]

pub mod checkpoints;
pub mod consumer;
pub mod embedded;
pub mod feed;

pub use checkpoints::SqliteCheckpoints;
pub use consumer::{ConsumerOptions, EventHandler, run_consumer, run_consumer_with};
pub use embedded::EmbeddedFeed;
pub use feed::{EventFeed, FeedError};
