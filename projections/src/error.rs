use domain::DecodeError;
use store::StoreError;
use thiserror::Error;

/// Everything that can go wrong on the read side.
#[derive(Debug, Error)]
pub enum ProjectionError {
    #[error("read-model database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A read-model document could not be written or read back as its view.
    #[error("read-model document: {0}")]
    Document(#[from] serde_json::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored event of a known type that this build cannot read (malformed, or written by a
    /// newer schema version). Skipping it would silently fork the read models from the store.
    #[error("event at position {global_position} cannot be projected: {source}")]
    Undecodable { global_position: u64, source: DecodeError },
    /// The read models disagree with the event stream they were built from (a row an earlier
    /// event must have created is missing): the database was altered outside the projector.
    #[error("read model {projection} is inconsistent at position {global_position}: {reason}")]
    Inconsistent { projection: &'static str, global_position: u64, reason: String },
    /// `rebuild_into` refuses to write over an existing file: it could be the live database.
    #[error("rebuild target {0} already exists")]
    TargetExists(std::path::PathBuf),
    /// `projections rebuild NAME` with a name that is no projection.
    #[error("no projection is called {name:?}; the projections are {known}")]
    UnknownProjection { name: String, known: String },
    /// Another rebuild of the projection is under way (its heartbeat is recent).
    #[error(
        "a rebuild of {projection} is already under way (generation {generation}, at position {position}); \
         wait for it, or stop it and retry after {stale_after_seconds} s"
    )]
    RebuildInProgress { projection: &'static str, generation: u64, position: u64, stale_after_seconds: u64 },
    /// This rebuild's claim on the projection was taken over (it was silent for too long and
    /// another rebuild started): it stops without switching.
    #[error("the rebuild of {projection} (generation {generation}) was taken over by another rebuild")]
    RebuildTakenOver { projection: &'static str, generation: u64 },
    /// The rebuild was asked to stop before it switched; its tables were dropped and the live
    /// read models are untouched.
    #[error("the rebuild was stopped before it switched; the live read models are unchanged")]
    RebuildStopped,
    /// The live table's schema is not one a rebuild can copy.
    #[error("cannot rebuild table {table}: {reason}")]
    NotRebuildable { table: String, reason: String },
    /// A blocking database task panicked or was cancelled.
    #[error("read-model task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl ProjectionError {
    /// Whether retrying cannot help: the same events would fail the same way, so the runner
    /// stops instead of looping (and `/readyz` keeps failing until an operator rebuilds or
    /// upgrades). Everything else (a busy or unreachable store or database) is worth a retry.
    pub fn is_permanent(&self) -> bool {
        use rusqlite::ErrorCode::{DatabaseCorrupt, NotADatabase};
        match self {
            Self::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => matches!(e.code, DatabaseCorrupt | NotADatabase),
            Self::Sqlite(_) | Self::Store(_) => false,
            Self::Document(_)
            | Self::Undecodable { .. }
            | Self::Inconsistent { .. }
            | Self::TargetExists(_)
            | Self::UnknownProjection { .. }
            | Self::RebuildInProgress { .. }
            | Self::RebuildTakenOver { .. }
            | Self::RebuildStopped
            | Self::NotRebuildable { .. }
            | Self::Task(_) => true,
        }
    }
}
