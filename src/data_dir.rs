//! The data dir: where the engine keeps its files, and what each file is called. Every command
//! that opens a store names its file from here.

use std::path::PathBuf;

use clap::Args;

/// Where the engine keeps its files.
#[derive(Args, Clone)]
pub struct DataDir {
    /// Directory of the event store, read models, vault and dev keys (created if missing).
    #[arg(long, env = "IE_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
}

/// The event store, with the idempotency keys beside it.
pub const EVENTS_DB: &str = "events.db";
/// The read models and their checkpoints.
pub const READ_MODELS_DB: &str = "readmodels.db";
/// The workers' checkpoints (relay, embedded consumers).
pub const WORKERS_DB: &str = "workers.db";
/// The encrypted vault.
pub const VAULT_DB: &str = "vault.db";
