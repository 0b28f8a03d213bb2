//! `Commands::execute`: load, decide, append at the version read; re-decide on a concurrent write.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use commands::{CommandContext, CommandError, Commands};
use domain::connection::{ConnectionEvent, Health};
use domain::ids::stream_id;
use domain::{AggregateEvent, EventEnvelope, NewEvent};
use store::{EventStore, ExpectedVersion, SqliteEventStore, StoreError, StreamAppend};
use tokio::sync::watch;

use crate::support::{FixedClock, TENANT, TestEngine, ctx, spawn_engine, t0, types};

fn health_checks(events: &[EventEnvelope]) -> Vec<(u64, String, u32)> {
    events
        .iter()
        .filter_map(|e| match ConnectionEvent::decode(&e.event_type, e.schema_version, &e.data).unwrap() {
            ConnectionEvent::ConnectionHealthChecked(c) => Some((e.stream_version, c.run_id, c.consecutive_failures)),
            ConnectionEvent::ConnectionEstablished(_) => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_health_checks_on_one_connection_all_land_in_order_without_loss() {
    let engine = spawn_engine().await;
    let ctx = ctx(TENANT);
    engine.establish(&ctx, "conn-1", None).await;

    // Each failed attempt of one writer is another writer's success, so as long as there are no
    // more writers than attempts, every one of them must get through.
    let checks = 32;
    let tasks: Vec<_> = (0..checks)
        .map(|i| {
            let (commands, ctx) = (engine.commands.clone(), ctx.clone());
            tokio::spawn(async move { commands.record_health_check(&ctx, "conn-1", &format!("run-{i}"), true).await })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }

    let history = engine.history(&stream_id(TENANT, "conn-1")).await;
    assert_eq!(history.len(), checks + 1);
    assert_eq!(history.iter().map(|(v, _)| *v).collect::<Vec<_>>(), (1..=checks as u64 + 1).collect::<Vec<_>>());
    assert_eq!(types(&history[1..]), vec!["ConnectionHealthChecked"; checks]);
    let mut run_ids: Vec<_> =
        health_checks(&engine.events(&stream_id(TENANT, "conn-1")).await).into_iter().map(|(_, r, _)| r).collect();
    run_ids.sort();
    run_ids.dedup();
    assert_eq!(run_ids.len(), checks, "a check was lost or recorded twice");
}

#[tokio::test]
async fn appended_events_carry_the_callers_context_and_the_clocks_time() {
    let engine = spawn_engine().await;
    let ctx = ctx(TENANT);
    engine.establish(&ctx, "conn-1", None).await;
    let position = engine.commands.record_health_check(&ctx, "conn-1", "run-1", true).await.unwrap();

    let events = engine.events(&stream_id(TENANT, "conn-1")).await;
    let checked = events.last().unwrap();
    assert_eq!(position, Some(checked.global_position));
    assert_eq!(checked.stream_version, 2);
    assert_eq!(checked.tenant_id, TENANT);
    assert_eq!(checked.occurred_at, t0());
    assert_eq!((checked.trace_id.as_str(), checked.correlation_id.as_str()), ("trace-1", "trace-1"));
    assert_eq!(checked.actor, ctx.actor);
    assert_eq!(checked.data["checkedAt"], serde_json::json!("2026-06-11T09:00:00Z"));
    assert_eq!(checked.data["health"], serde_json::json!(Health::Healthy));
}

#[tokio::test]
async fn a_health_check_of_a_connection_never_established_is_rejected_and_appends_nothing() {
    let engine = spawn_engine().await;
    let result = engine.commands.record_health_check(&ctx(TENANT), "conn-missing", "run-1", true).await;
    assert!(matches!(result, Err(CommandError::Rejected(domain::DomainError::InvalidTransition { .. }))));
    assert_eq!(engine.head().await, 0);
}

/// Another writer that reaches the stream first: before each of the next `wins` appends that
/// pass through it, it records a failed health check of its own through the real write side.
struct RacingWriter {
    store: Arc<SqliteEventStore>,
    racer: Commands,
    ctx: CommandContext,
    wins: AtomicUsize,
    raced: AtomicUsize,
}

impl RacingWriter {
    fn new(engine: &TestEngine, ctx: &CommandContext, wins: usize) -> Arc<Self> {
        Arc::new(Self {
            store: engine.store.clone(),
            racer: engine.commands.clone(),
            ctx: ctx.clone(),
            wins: AtomicUsize::new(wins),
            raced: AtomicUsize::new(0),
        })
    }
}

#[async_trait]
impl EventStore for RacingWriter {
    async fn append(
        &self,
        stream_id: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Vec<EventEnvelope>, StoreError> {
        if self.wins.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
            let n = self.raced.fetch_add(1, Ordering::SeqCst);
            let connection_id = stream_id.rsplit('/').next().unwrap();
            self.racer.record_health_check(&self.ctx, connection_id, &format!("run-racer-{n}"), false).await.unwrap();
        }
        self.store.append(stream_id, expected, events).await
    }

    async fn append_streams(&self, appends: Vec<StreamAppend>) -> Result<Vec<Vec<EventEnvelope>>, StoreError> {
        self.store.append_streams(appends).await
    }

    async fn read_stream(&self, stream_id: &str) -> Result<Vec<EventEnvelope>, StoreError> {
        self.store.read_stream(stream_id).await
    }

    async fn read_all(&self, after: u64, max: usize) -> Result<Vec<EventEnvelope>, StoreError> {
        self.store.read_all(after, max).await
    }

    async fn head_position(&self) -> Result<u64, StoreError> {
        self.store.head_position().await
    }

    fn watch_head(&self) -> watch::Receiver<u64> {
        self.store.watch_head()
    }
}

fn commands_racing(engine: &TestEngine, racing: &Arc<RacingWriter>) -> Commands {
    Commands::new(racing.clone(), engine.vault.clone(), Arc::new(FixedClock(t0())))
}

#[tokio::test]
async fn a_command_that_loses_a_race_decides_again_against_the_new_state() {
    let engine = spawn_engine().await;
    let ctx = ctx(TENANT);
    engine.establish(&ctx, "conn-1", None).await;
    let racing = RacingWriter::new(&engine, &ctx, 1);

    commands_racing(&engine, &racing).record_health_check(&ctx, "conn-1", "run-mine", false).await.unwrap();

    // Decided against the stream as it was read, the check would count one failure; re-decided
    // after the racer's failed check, it counts two, and lands after it.
    let checks = health_checks(&engine.events(&stream_id(TENANT, "conn-1")).await);
    assert_eq!(checks, vec![(2, "run-racer-0".into(), 1), (3, "run-mine".into(), 2)]);
}

#[tokio::test]
async fn contention_is_returned_only_when_every_attempt_lost_a_race() {
    let engine = spawn_engine().await;
    let ctx = ctx(TENANT);
    engine.establish(&ctx, "conn-1", None).await;
    engine.establish(&ctx, "conn-2", None).await;

    // A racer that always gets there first exhausts every attempt.
    let always = RacingWriter::new(&engine, &ctx, usize::MAX);
    let result = commands_racing(&engine, &always).record_health_check(&ctx, "conn-1", "run-mine", false).await;
    let attempts = always.raced.load(Ordering::SeqCst);
    match result {
        Err(CommandError::Contention(stream)) => assert_eq!(stream, stream_id(TENANT, "conn-1")),
        Err(e) => panic!("expected contention, got {e:?}"),
        Ok(_) => panic!("expected contention, the check was recorded"),
    }
    assert!(attempts > 1, "gave up without retrying");
    let checks = health_checks(&engine.events(&stream_id(TENANT, "conn-1")).await);
    assert_eq!(checks.len(), attempts, "only the racer's checks are recorded");
    assert!(checks.iter().all(|(_, run_id, _)| run_id != "run-mine"), "{checks:?}");

    // A racer that wins every attempt but the last is not contention.
    let all_but_last = RacingWriter::new(&engine, &ctx, attempts - 1);
    commands_racing(&engine, &all_but_last).record_health_check(&ctx, "conn-2", "run-mine", false).await.unwrap();
    let checks = health_checks(&engine.events(&stream_id(TENANT, "conn-2")).await);
    assert_eq!(checks.len(), attempts);
    assert_eq!(checks.last().unwrap(), &(attempts as u64 + 1, "run-mine".to_string(), attempts as u32));
}

/// The real store, counting the events it hands back to readers of streams.
struct CountingReads {
    store: Arc<SqliteEventStore>,
    events_read: AtomicUsize,
    reads: AtomicUsize,
}

#[async_trait]
impl EventStore for CountingReads {
    async fn append(
        &self,
        stream_id: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Vec<EventEnvelope>, StoreError> {
        self.store.append(stream_id, expected, events).await
    }

    async fn append_streams(&self, appends: Vec<StreamAppend>) -> Result<Vec<Vec<EventEnvelope>>, StoreError> {
        self.store.append_streams(appends).await
    }

    async fn read_stream(&self, stream_id: &str) -> Result<Vec<EventEnvelope>, StoreError> {
        let events = self.store.read_stream(stream_id).await?;
        self.events_read.fetch_add(events.len(), Ordering::SeqCst);
        Ok(events)
    }

    async fn read_stream_after(&self, stream_id: &str, after: u64) -> Result<Vec<EventEnvelope>, StoreError> {
        let events = self.store.read_stream_after(stream_id, after).await?;
        self.events_read.fetch_add(events.len(), Ordering::SeqCst);
        self.reads.fetch_add(1, Ordering::SeqCst);
        Ok(events)
    }

    async fn read_all(&self, after: u64, max: usize) -> Result<Vec<EventEnvelope>, StoreError> {
        self.store.read_all(after, max).await
    }

    async fn head_position(&self) -> Result<u64, StoreError> {
        self.store.head_position().await
    }

    fn watch_head(&self) -> watch::Receiver<u64> {
        self.store.watch_head()
    }
}

#[tokio::test]
async fn a_command_reads_only_the_events_its_cached_state_has_not_seen() {
    let engine = spawn_engine().await;
    let ctx = ctx(TENANT);
    engine.establish(&ctx, "conn-1", None).await;
    let counting = Arc::new(CountingReads {
        store: engine.store.clone(),
        events_read: AtomicUsize::new(0),
        reads: AtomicUsize::new(0),
    });
    let commands = Commands::new(counting.clone(), engine.vault.clone(), Arc::new(FixedClock(t0())));

    for n in 0..20 {
        commands.record_health_check(&ctx, "conn-1", &format!("run-{n}"), true).await.unwrap();
    }
    // The stream was read once (its one event); after that, each command's own append kept the
    // cached state current, so the other 19 were decided on it without a read, however long
    // the stream grew.
    assert_eq!(counting.events_read.load(Ordering::SeqCst), 1);
    assert_eq!(counting.reads.load(Ordering::SeqCst), 1);

    // Another writer (its own cache, like another process) appends: the next command reads that
    // one event, and decides on it (a redelivered outcome of the other writer's run is a no-op).
    engine.commands.record_health_check(&ctx, "conn-1", "run-other", false).await.unwrap();
    let redelivered = commands.record_health_check(&ctx, "conn-1", "run-other", false).await.unwrap();
    assert_eq!(redelivered, None, "decided on a stale state");
    assert_eq!(counting.events_read.load(Ordering::SeqCst), 2);
    assert_eq!(health_checks(&engine.store.read_stream(&stream_id(TENANT, "conn-1")).await.unwrap()).len(), 21);
}
