//! Everything vendor-specific. For now: GitHub's inbound webhook signature and the
//! normalization of its events into integration event types.
#![forbid(unsafe_code)]

pub mod github;
pub mod signature;

pub use signature::SignatureError;
