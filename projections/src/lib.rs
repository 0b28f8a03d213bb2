//! The read side: projections of the event store into SQLite read models.
//!
//! - [`read_models`]: the read-model database ([`ReadModels`]) and its queries.
//! - [`views`]: the documents it holds, one per resource, as the API's GETs serve them.
//! - [`projectors`]: one projector per read model, each a function of (document, event).
//! - [`documents`]: a batch's documents, cached so each is loaded and written once a batch.
//! - [`runner`]: [`Projections`], which follows the store and applies batches with their
//!   checkpoints in one transaction (exactly once), and [`rebuild_into`].
//! - [`rebuild`]: rebuilding read models beside the live ones while they serve, and switching
//!   to them in one transaction; [`rebuild::status`], where each projection is.
//! - [`integrity`]: [`verify_chains`], the hash-chain audit of the store.
//! - [`error`]: the one error type, [`ProjectionError`], and which of its cases are permanent.
#![forbid(unsafe_code)]

pub mod documents;
pub mod error;
pub mod integrity;
pub mod projectors;
pub mod read_models;
pub mod rebuild;
pub mod runner;
pub mod views;

pub use error::ProjectionError;
pub use integrity::{BrokenEvent, ChainBreak, VerifyReport, verify_chains};
pub use read_models::ReadModels;
pub use runner::{Projections, rebuild_into};
pub use views::{ConnectionView, CredentialView, DeliveryView, ProviderView, RunView, SubscriptionView};
