//! Aggregate states by stream, each folded up to a stream version, so a command reads and
//! decodes only the events its cached state has not seen (usually none) instead of its whole
//! stream. The store stays the truth: every append checks the expected version, so a decision
//! on a state that another process's writes made older is refused and taken again on the
//! stream as the store has it (`Commands::execute`); loads ask the store for the events after
//! the cached version.

use std::any::Any;
use std::sync::Arc;

use quick_cache::sync::Cache;

/// Streams whose states are kept; the least recently used leave first. A state is a few
/// hundred bytes to a few KiB (a connection's configuration), so this bounds the cache to a
/// few MiB. What it saves is on streams that take commands in bursts (a credential shared by
/// many connections, a connection being checked and run): a round of health checks over more
/// connections than any cache holds would miss it whatever its size.
const CAPACITY: usize = 1_024;

/// An aggregate's state as of `version` of its stream.
#[derive(Debug, Clone, Default)]
pub struct Folded<S> {
    pub state: S,
    /// The stream's version this state includes (0: no events).
    pub version: u64,
    /// The global position of the stream's event at `version`.
    pub last_position: Option<u64>,
}

/// The cache of [`Folded`] states, shared by the clones of one `Commands`.
#[derive(Clone)]
pub(crate) struct StateCache {
    states: Arc<Cache<String, Arc<dyn Any + Send + Sync>>>,
}

impl StateCache {
    pub(crate) fn new() -> Self {
        Self { states: Arc::new(Cache::new(CAPACITY)) }
    }

    /// The cached state of `stream_id`, if one of type `S` is held.
    pub(crate) fn get<S: Send + Sync + 'static>(&self, stream_id: &str) -> Option<Arc<Folded<S>>> {
        self.states.get(stream_id).and_then(|folded| folded.downcast::<Folded<S>>().ok())
    }

    /// Keeps `folded` for `stream_id`, unless a state at a later version is held already (a
    /// concurrent command got further).
    pub(crate) fn put<S: Send + Sync + 'static>(&self, stream_id: &str, folded: Arc<Folded<S>>) {
        if self.get::<S>(stream_id).is_some_and(|held| held.version > folded.version) {
            return;
        }
        self.states.insert(stream_id.to_owned(), folded);
    }
}
