use std::sync::Arc;

use domain::EventEnvelope;
use domain::event::DecodeError;
use domain::{AggregateEvent, Decider, DomainError};
use store::{EventStore, ExpectedVersion, SecretStore, StoreError, StreamAppend, VaultError, Vaults};
use thiserror::Error;

use crate::states::{Folded, StateCache};
use crate::{Clock, CommandContext};

/// How often a command is decided and appended before it gives up on a stream other writers keep
/// changing.
///
/// Each failed attempt means another writer's append to the stream succeeded, so this is also
/// how many writers to one stream at once are sure to all get through. It must not be small:
/// the store group-commits, answering every loser of a batch at the same moment, so concurrent
/// writers retry in lock-step and each round lets exactly one of them through.
const MAX_CONFLICT_RETRIES: usize = 64;

#[derive(Debug, Error)]
pub enum CommandError {
    /// The decider said no; the API answers with the matching 4xx.
    #[error(transparent)]
    Rejected(#[from] DomainError),
    /// Other writers kept changing the stream between our read and our append.
    #[error("stream {0} kept changing; gave up after {MAX_CONFLICT_RETRIES} attempts")]
    Contention(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Vault(#[from] VaultError),
    /// A stored event cannot be read back by this build.
    #[error("stream {stream_id} holds an unreadable event: {source}")]
    Corrupt { stream_id: String, source: DecodeError },
}

/// The outcome of one executed command.
pub struct Executed<D: Decider> {
    /// The aggregate's state after the command.
    pub state: D::State,
    /// The events this command appended (empty when it was a no-op, e.g. a retried request).
    pub new_events: Vec<D::Event>,
    /// The global position of the last appended event, for read-your-writes waits.
    pub last_position: Option<u64>,
}

/// A stream read back: its events, its version (0 when empty), the position of its last event.
pub struct Loaded<E> {
    pub events: Vec<E>,
    pub version: u64,
    pub last_position: Option<u64>,
}

/// A decider the write side runs: its events decode from the store, and its states can be
/// cached and shared between tasks.
pub trait Aggregate: Decider<Event: AggregateEvent, State: Clone + Send + Sync + 'static> {}

impl<D> Aggregate for D where D: Decider<Event: AggregateEvent, State: Clone + Send + Sync + 'static> {}

/// The write side's entry point: ports in, use cases out (see the use-case modules).
#[derive(Clone)]
pub struct Commands {
    pub(crate) store: Arc<dyn EventStore>,
    /// Secrets are read and changed only on the context's tenant's behalf.
    pub(crate) vault: Vaults,
    pub(crate) clock: Arc<dyn Clock>,
    states: StateCache,
}

impl Commands {
    pub fn new(store: Arc<dyn EventStore>, vault: Arc<dyn SecretStore>, clock: Arc<dyn Clock>) -> Self {
        Self { store, vault: Vaults::new(vault), clock, states: StateCache::new() }
    }

    pub fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.clock.now()
    }

    /// The clock the commands read, for the edges that stamp, sign or expire on their behalf.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// The events of a stream decoded as `E`.
    pub async fn load<E: AggregateEvent>(&self, stream_id: &str) -> Result<Loaded<E>, CommandError> {
        let stored = self.store.read_stream(stream_id).await?;
        let version = stored.last().map_or(0, |e| e.stream_version);
        let last_position = stored.last().map(|e| e.global_position);
        let events = stored
            .into_iter()
            .map(|e| E::decode(&e.event_type, e.schema_version, &e.data))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| CommandError::Corrupt { stream_id: stream_id.into(), source })?;
        Ok(Loaded { events, version, last_position })
    }

    /// The event that created a stream, decoded as `E`; `None` for a stream that does not exist.
    /// What a resource was created with never changes, so it is read alone, at the same cost
    /// however many events (health checks, rotations) the stream has gathered since.
    pub async fn load_first<E: AggregateEvent>(&self, stream_id: &str) -> Result<Option<E>, CommandError> {
        let Some(first) = self.store.read_stream_first(stream_id).await? else { return Ok(None) };
        E::decode(&first.event_type, first.schema_version, &first.data)
            .map(Some)
            .map_err(|source| CommandError::Corrupt { stream_id: stream_id.into(), source })
    }

    /// Executes a creation command. When the stream already exists because this same request
    /// ran before (an `Idempotency-Key` retry re-uses the id reserved the first time), the
    /// events it created then are returned instead of a rejection.
    pub async fn create<D: Aggregate>(
        &self,
        ctx: &CommandContext,
        stream_id: &str,
        command: &D::Command,
    ) -> Result<Loaded<D::Event>, CommandError> {
        match self.execute_on_new_stream::<D>(ctx, stream_id, command).await {
            Ok(executed) => Ok(Loaded {
                version: executed.new_events.len() as u64,
                events: executed.new_events,
                last_position: executed.last_position,
            }),
            Err(CommandError::Rejected(DomainError::AlreadyExists { .. })) => self.load(stream_id).await,
            Err(e) => Err(e),
        }
    }

    /// The aggregate state of a stream: the cached state, brought up to date with the events
    /// appended since (read and decoded only those).
    pub async fn load_state<D: Aggregate>(&self, stream_id: &str) -> Result<Arc<Folded<D::State>>, CommandError> {
        let cached = self.states.get::<D::State>(stream_id);
        let seen = cached.as_ref().map_or(0, |folded| folded.version);
        let newer = self.store.read_stream_after(stream_id, seen).await?;
        let Some(last) = newer.last() else {
            return Ok(cached.unwrap_or_default());
        };
        let (version, last_position) = (last.stream_version, Some(last.global_position));
        let mut state = cached.map_or_else(D::State::default, |folded| folded.state.clone());
        for stored in newer {
            let event = D::Event::decode(&stored.event_type, stored.schema_version, &stored.data)
                .map_err(|source| CommandError::Corrupt { stream_id: stream_id.into(), source })?;
            state = D::evolve(state, &event);
        }
        let folded = Arc::new(Folded { state, version, last_position });
        self.states.put(stream_id, folded.clone());
        Ok(folded)
    }

    /// Loads the stream's state, decides, and appends at the version it was folded to; on a
    /// concurrent write it decides again against the new state.
    ///
    /// A state this process cached is usually the stream's current one: the command is first
    /// decided on it without reading the stream, and the append's expected version tells
    /// whether anything was appended since. Only an append the store accepted settles it; a
    /// conflict, a refusal or a no-op on the cached state may be stale, so those are decided
    /// again on the stream as the store has it.
    pub async fn execute<D: Aggregate>(
        &self,
        ctx: &CommandContext,
        stream_id: &str,
        command: &D::Command,
    ) -> Result<Executed<D>, CommandError> {
        if let Some(cached) = self.states.get::<D::State>(stream_id)
            && let Ok(Some(executed)) = self.decide_and_append::<D>(ctx, stream_id, &cached, command).await
            && !executed.new_events.is_empty()
        {
            return Ok(executed);
        }
        for _ in 0..MAX_CONFLICT_RETRIES {
            let folded = self.load_state::<D>(stream_id).await?;
            if let Some(executed) = self.decide_and_append::<D>(ctx, stream_id, &folded, command).await? {
                return Ok(executed);
            }
        }
        Err(CommandError::Contention(stream_id.into()))
    }

    /// [`Self::execute`] for a command that usually starts a new stream (a new resource, a
    /// delivery seen for the first time): it is decided on the empty state and appended with
    /// `NoStream` without reading the stream first. When the stream exists after all (a retried
    /// request), the store refuses the append and the command runs as `execute` runs it.
    pub async fn execute_on_new_stream<D: Aggregate>(
        &self,
        ctx: &CommandContext,
        stream_id: &str,
        command: &D::Command,
    ) -> Result<Executed<D>, CommandError> {
        if self.states.get::<D::State>(stream_id).is_none() {
            let empty = Folded::default();
            // A refusal on the empty state may not be the stream's answer, nor may a no-op:
            // `execute` decides them. Only an append the store accepted settles it.
            if let Ok(Some(executed)) = self.decide_and_append::<D>(ctx, stream_id, &empty, command).await
                && !executed.new_events.is_empty()
            {
                return Ok(executed);
            }
        }
        self.execute::<D>(ctx, stream_id, command).await
    }

    /// Creates the stream `created` with `command` and, in the same atomic append, executes
    /// `other_command` on `other` at the state `other_state` was folded to (e.g. a connection and
    /// the credential it is the first to name): one commit, and no step between the two for a
    /// crash to fall into. `None` when these states cannot settle it: the stream exists (a
    /// retried request), the other stream moved, or a decision was a refusal or a no-op here;
    /// the caller then runs the commands one by one, as [`Self::create`] and [`Self::execute`]
    /// decide them on the streams as stored.
    pub(crate) async fn create_with<A: Aggregate, B: Aggregate>(
        &self,
        ctx: &CommandContext,
        (created, command): (&str, &A::Command),
        (other, other_state, other_command): (&str, &Folded<B::State>, &B::Command),
    ) -> Result<Option<(Executed<A>, Executed<B>)>, CommandError> {
        if self.states.get::<A::State>(created).is_some() {
            return Ok(None);
        }
        let both = (created, &Folded::default(), command);
        match self.decide_and_append_both::<A, B>(ctx, both, (other, other_state, other_command)).await? {
            Joint::Appended(created, other) => Ok(Some((created, other))),
            Joint::Moved | Joint::Apart => Ok(None),
        }
    }

    /// Executes `command` on `stream` and `other_command` on `other` in one atomic append, each
    /// decided on its stream's current state (cached, brought up to date): what one outcome
    /// changes in two aggregates (a health check's run and its connection) in one commit. On a
    /// concurrent write it decides again. `None` when either decision is a refusal or a no-op:
    /// the caller then executes them one by one.
    pub async fn execute_with<A: Aggregate, B: Aggregate>(
        &self,
        ctx: &CommandContext,
        (stream, command): (&str, &A::Command),
        (other, other_command): (&str, &B::Command),
    ) -> Result<Option<(Executed<A>, Executed<B>)>, CommandError> {
        for _ in 0..MAX_CONFLICT_RETRIES {
            let (folded, other_folded) = (self.load_state::<A>(stream).await?, self.load_state::<B>(other).await?);
            let both = ((stream, folded.as_ref(), command), (other, other_folded.as_ref(), other_command));
            match self.decide_and_append_both::<A, B>(ctx, both.0, both.1).await? {
                Joint::Appended(executed, other_executed) => return Ok(Some((executed, other_executed))),
                Joint::Apart => return Ok(None),
                Joint::Moved => {}
            }
        }
        Err(CommandError::Contention(format!("{stream} and {other}")))
    }

    /// Decides two commands on the states given and appends what they decide at once, each
    /// stream at its state's version.
    async fn decide_and_append_both<A: Aggregate, B: Aggregate>(
        &self,
        ctx: &CommandContext,
        (stream, folded, command): (&str, &Folded<A::State>, &A::Command),
        (other, other_folded, other_command): (&str, &Folded<B::State>, &B::Command),
    ) -> Result<Joint<A, B>, CommandError> {
        let (Ok(decided), Ok(other_decided)) =
            (A::decide(command, &folded.state), B::decide(other_command, &other_folded.state))
        else {
            return Ok(Joint::Apart);
        };
        if decided.is_empty() || other_decided.is_empty() {
            return Ok(Joint::Apart);
        }
        let now = self.clock.now();
        let appends = vec![
            StreamAppend {
                stream_id: stream.to_owned(),
                expected: ExpectedVersion::after(folded.version),
                events: decided.iter().map(|e| ctx.new_event(e.encode(), now)).collect(),
            },
            StreamAppend {
                stream_id: other.to_owned(),
                expected: ExpectedVersion::after(other_folded.version),
                events: other_decided.iter().map(|e| ctx.new_event(e.encode(), now)).collect(),
            },
        ];
        let stored = match self.store.append_streams(appends).await {
            Ok(stored) => stored,
            Err(StoreError::WrongExpectedVersion { .. }) => return Ok(Joint::Moved),
            Err(e) => return Err(e.into()),
        };
        let (Some(recorded), Some(other_recorded)) = (stored.first(), stored.get(1)) else {
            return Err(StoreError::Backend("an append to two streams stored fewer".into()).into());
        };
        Ok(Joint::Appended(
            self.settle::<A>(stream, folded, decided, recorded),
            self.settle::<B>(other, other_folded, other_decided, other_recorded),
        ))
    }

    /// The state after `decided` was stored as `recorded` on top of `folded`, cached.
    fn settle<D: Aggregate>(
        &self,
        stream_id: &str,
        folded: &Folded<D::State>,
        decided: Vec<D::Event>,
        recorded: &[EventEnvelope],
    ) -> Executed<D> {
        let state = decided.iter().fold(folded.state.clone(), D::evolve);
        let last_position = recorded.last().map(|e| e.global_position);
        let version = recorded.last().map_or(folded.version, |e| e.stream_version);
        self.states.put(stream_id, Arc::new(Folded { state: state.clone(), version, last_position }));
        Executed { state, new_events: decided, last_position }
    }

    /// Decides `command` on `folded` and appends what it decides at `folded`'s version. `None`
    /// when another writer appended to the stream first.
    async fn decide_and_append<D: Aggregate>(
        &self,
        ctx: &CommandContext,
        stream_id: &str,
        folded: &Folded<D::State>,
        command: &D::Command,
    ) -> Result<Option<Executed<D>>, CommandError> {
        let decided = D::decide(command, &folded.state)?;
        if decided.is_empty() {
            return Ok(Some(Executed { state: folded.state.clone(), new_events: decided, last_position: None }));
        }
        let now = self.clock.now();
        let new_events = decided.iter().map(|e| ctx.new_event(e.encode(), now)).collect();
        match self.store.append(stream_id, ExpectedVersion::after(folded.version), new_events).await {
            Ok(recorded) => Ok(Some(self.settle::<D>(stream_id, folded, decided, &recorded))),
            Err(StoreError::WrongExpectedVersion { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

/// How two commands decided and appended together came out.
enum Joint<A: Decider, B: Decider> {
    Appended(Executed<A>, Executed<B>),
    /// Another writer appended to one of the streams first.
    Moved,
    /// A decision was a refusal or a no-op: nothing to append together.
    Apart,
}
