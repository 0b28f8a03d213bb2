//! The dispatcher: a due queue of webhook runs rebuilt from the store, one lane per
//! subscription, and the attempts themselves.
//!
//! One task owns all scheduling state (no locks): it takes the store's events from a follower
//! task, the outcomes of attempts and lease answers from the tasks it started, and wakes for the
//! next due time. Each attempt runs in its own task, so a slow endpoint holds only its own
//! lane's slots.
//!
//! A lane's attempts are made under the lane's lease (the `Leases` port, named after the
//! subscription), not one per run: of several dispatchers over one store only the holder
//! starts a lane's attempts, so its in-flight limit, rate and strict order hold across them,
//! and an attempt costs one append, its outcome (`RecordAttempt`), instead of a start and an
//! outcome. An attempt only starts while the lease outlasts its whole budget (send and record),
//! so a lease taken over after its holder died never overlaps an attempt of the holder.
//!
//! Times that are recorded or compared with recorded ones (due times, lease expiries, an
//! attempt's start and end) come from the `Clock` port, the commands' clock; waiting uses
//! tokio's monotonic clock.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use commands::{CommandContext, Commands};
use connectors::egress::{EgressError, check_webhook_endpoint, webhook_client};
use connectors::outbound_webhooks::{self, OutboundRequest, Verdict};
use domain::backoff::Backoff;
use domain::ids::stream_id;
use domain::outbound::DELIVER_WEBHOOK_OPERATION;
use domain::run::{AttemptOutcome, AttemptResponse, RecordAttempt, Run, RunCommand, RunEvent, RunState};
use domain::secret_ref::SecretRef;
use domain::subscription::SubscriptionEvent;
use domain::{Actor, AnyEvent, Decider, EventEnvelope};
use serde_json::{Value, json};
use store::{EventStore, Lease, Leases, SecretStore, StoreError, VaultError};
use thiserror::Error;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::handler::{is_publishable, matched_message, message_of};
use super::{Directory, WebhookSettings};

/// The longest the scheduler sleeps without looking again.
const MAX_IDLE: Duration = Duration::from_secs(1);
/// Events read from the store at once.
const FOLLOW_PAGE: usize = 1000;
/// Before trying again a run whose attempt could not be started or recorded.
const RECHECK: Duration = Duration::from_secs(1);
/// The first and longest pause of a lane whose endpoint is overloaded (429, 502, 503, 504).
const FIRST_SLOW_DOWN: Duration = Duration::from_secs(1);
const MAX_SLOW_DOWN: Duration = Duration::from_secs(60);
/// The longest an attempt leaves for recording its outcome before its lease expires: half the
/// lease's grace, at most this.
const MAX_RECORD_MARGIN: Duration = Duration::from_secs(5);
/// The shortest send worth trying (or a quarter of the attempt timeout when that is shorter).
const MIN_SEND: Duration = Duration::from_secs(1);
/// Message events kept from following the store, so an attempt finds its message without
/// reading it back (a backlog larger than this reads the rest from the store).
const RECENT_MESSAGES: usize = 8_192;
/// The shortest wait before asking again for a lane's lease another worker holds.
const MIN_LEASE_RETRY: Duration = Duration::from_millis(100);

#[derive(Debug, Error)]
pub enum DispatcherError {
    #[error("the store follower stopped")]
    FollowerStopped,
}

/// What the follower hands the scheduler.
enum Followed {
    /// What the scheduler must know of the events read, in store order.
    Events(Vec<Seen>),
    /// A run that had ended was redelivered: its history up to the redelivery.
    Redelivered(Vec<(EventEnvelope, RunEvent)>),
    /// Everything the store held at start has been read.
    CaughtUp,
}

/// The state shared with attempt tasks.
struct Shared {
    store: Arc<dyn EventStore>,
    leases: Arc<dyn Leases>,
    commands: Commands,
    vault: Arc<dyn SecretStore>,
    client: reqwest::Client,
    settings: WebhookSettings,
    directory: Arc<Directory>,
    /// The latest message events the follower saw, by event id.
    recent_messages: quick_cache::sync::Cache<uuid::Uuid, EventEnvelope>,
}

/// The webhook dispatcher. [`Dispatcher::run`] until shutdown.
pub struct Dispatcher {
    shared: Arc<Shared>,
}

impl Dispatcher {
    /// `leases` must be shared by every dispatcher over `store`: a lane's lease says which of
    /// them delivers its messages.
    pub fn new(
        store: Arc<dyn EventStore>,
        leases: Arc<dyn Leases>,
        commands: Commands,
        vault: Arc<dyn SecretStore>,
        settings: WebhookSettings,
    ) -> Result<Self, EgressError> {
        let client = webhook_client(settings.allow.clone(), settings.attempt_timeout)?;
        let directory = Directory::new();
        let recent_messages = quick_cache::sync::Cache::new(RECENT_MESSAGES);
        let shared = Shared { store, leases, commands, vault, client, settings, directory, recent_messages };
        Ok(Self { shared: Arc::new(shared) })
    }

    /// The subscription directory this dispatcher keeps current, for the [`super::FanOut`].
    pub fn directory(&self) -> Arc<Directory> {
        self.shared.directory.clone()
    }

    /// Follows the store and delivers until `shutdown`. Attempts in flight then are left to
    /// their leases: the next dispatcher takes them over once the leases expire.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), DispatcherError> {
        let (followed_tx, mut followed_rx) = mpsc::channel(4);
        let follower = tokio::spawn(follow(self.shared.clone(), followed_tx, shutdown.child_token()));
        let (done_tx, mut done_rx) = mpsc::channel(self.shared.settings.max_in_flight_total + 16);
        let (leased_tx, mut leased_rx) = mpsc::channel(64);
        let mut schedule = Schedule::new(self.shared.clone(), done_tx, leased_tx);
        let mut caught_up = false;
        loop {
            let wake = schedule.next_wake();
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                Some(done) = done_rx.recv() => schedule.finished(done),
                Some(answer) = leased_rx.recv() => schedule.leased(answer),
                followed = followed_rx.recv() => match followed {
                    Some(Followed::Events(seen)) => seen.into_iter().for_each(|seen| schedule.take(seen)),
                    Some(Followed::Redelivered(history)) => schedule.restore(&history),
                    Some(Followed::CaughtUp) => {
                        tracing::info!(pending = schedule.runs.len(), "webhook dispatcher caught up with the store");
                        caught_up = true;
                    }
                    None => {
                        follower.abort();
                        return if shutdown.is_cancelled() { Ok(()) } else { Err(DispatcherError::FollowerStopped) };
                    }
                },
                () = tokio::time::sleep_until(wake) => {}
            }
            // Before the start-up replay is done, a run may look pending that ended later.
            if caught_up {
                schedule.start_due();
            }
        }
        follower.abort();
        schedule.release_leases().await;
        Ok(())
    }
}

/// Reads the store from its start, keeps the directory current, and hands run and subscription
/// events to the scheduler (bounded: a busy scheduler slows the follower down).
async fn follow(shared: Arc<Shared>, out: mpsc::Sender<Followed>, shutdown: CancellationToken) {
    let store = &shared.store;
    let mut head = store.watch_head();
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let start_head = loop {
        match store.head_position().await {
            Ok(head) => break head,
            Err(error) => {
                tracing::warn!(%error, "webhook dispatcher: reading the store's head failed");
                if !pause(backoff.next_delay(), &shutdown).await {
                    return;
                }
            }
        }
    };
    let mut position = 0;
    let mut announced = false;
    loop {
        head.borrow_and_update();
        let page = match store.read_all(position, FOLLOW_PAGE).await {
            Ok(page) => page,
            Err(error) => {
                tracing::warn!(%error, "webhook dispatcher: reading the store failed");
                if !pause(backoff.next_delay(), &shutdown).await {
                    return;
                }
                continue;
            }
        };
        backoff.reset();
        let got_events = !page.is_empty();
        if let Some(last) = page.last() {
            position = last.global_position;
            let mut relevant = Vec::new();
            for event in page {
                let Ok(decoded) = AnyEvent::decode(&event.event_type, event.schema_version, &event.data) else {
                    continue;
                };
                shared.directory.apply(&event, &decoded);
                if let AnyEvent::Run(RunEvent::RunRedeliveryRequested(_)) = &decoded {
                    if !relevant.is_empty() && out.send(Followed::Events(std::mem::take(&mut relevant))).await.is_err()
                    {
                        return;
                    }
                    match redelivered_history(store.as_ref(), &event).await {
                        Some(history) => {
                            if out.send(Followed::Redelivered(history)).await.is_err() {
                                return;
                            }
                        }
                        None => relevant.push(Seen::Event(event, decoded)),
                    }
                    continue;
                }
                relevant.extend(seen(&shared, event, decoded));
            }
            shared.directory.advance(position);
            if !relevant.is_empty() && out.send(Followed::Events(relevant)).await.is_err() {
                return;
            }
        }
        if !announced && position >= start_head {
            announced = true;
            if out.send(Followed::CaughtUp).await.is_err() {
                return;
            }
        }
        // Read again at once while there was something to read; otherwise wait for an append.
        if got_events {
            continue;
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = head.changed() => if changed.is_err() { return },
        }
    }
}

/// One event as the scheduler needs it.
#[expect(clippy::large_enum_variant, reason = "nearly every item is an event; boxing would allocate for each")]
enum Seen {
    /// A run or subscription event.
    Event(EventEnvelope, AnyEvent),
    /// A message that lanes with strict ordering get runs for: its place in their order, held
    /// before the fan-out's runs exist ([`Schedule::expect`]).
    Message { position: u64, runs: Vec<(LaneKey, String)> },
}

/// What the scheduler must know of an event the directory has taken in: run and subscription
/// events, and the messages some subscription matches. Those are also kept in memory for the
/// attempts that will deliver them.
fn seen(shared: &Shared, event: EventEnvelope, decoded: AnyEvent) -> Option<Seen> {
    if matches!(decoded, AnyEvent::Run(_) | AnyEvent::Subscription(_)) {
        return Some(Seen::Event(event, decoded));
    }
    if !is_publishable(&event.event_type) {
        return None;
    }
    // What the fan-out matches for this message, by the same rule.
    let (message, matched) = matched_message(&event, &shared.directory)?;
    if matched.is_empty() {
        return None;
    }
    let position = event.global_position;
    shared.recent_messages.insert(event.event_id, event);
    let runs: Vec<(LaneKey, String)> = matched
        .iter()
        .filter(|subscription| subscription.delivery.strict_ordering)
        .map(|subscription| {
            let run_id = super::webhook_run_id(&message.tenant_id, &subscription.subscription_id, &message.message_id);
            ((message.tenant_id.clone(), subscription.subscription_id.clone()), run_id)
        })
        .collect();
    (!runs.is_empty()).then_some(Seen::Message { position, runs })
}

/// The events of a redelivered run's stream up to its redelivery (a webhook run only).
async fn redelivered_history(
    store: &dyn EventStore,
    redelivery: &EventEnvelope,
) -> Option<Vec<(EventEnvelope, RunEvent)>> {
    let stream = store.read_stream(&redelivery.stream_id).await.ok()?;
    let history: Vec<(EventEnvelope, RunEvent)> = stream
        .into_iter()
        .filter(|e| e.stream_version <= redelivery.stream_version)
        .filter_map(|e| {
            let decoded = domain::AggregateEvent::decode(&e.event_type, e.schema_version, &e.data).ok()?;
            Some((e, decoded))
        })
        .collect();
    matches!(history.first(), Some((_, RunEvent::RunRequested(r))) if r.operation == DELIVER_WEBHOOK_OPERATION)
        .then_some(history)
}

/// (tenant, subscription id).
type LaneKey = (String, String);

/// A webhook run that has not ended.
struct RunEntry {
    tenant_id: String,
    lane: LaneKey,
    /// The position of its message in the store (of its `RunRequested` for runs requested
    /// before inputs carried it): publication order within the lane.
    position: u64,
    trace_id: String,
    input: Value,
    state: RunState,
    /// The last of its events the scheduler has applied.
    applied_position: u64,
    /// An attempt task of this process has it.
    in_flight: bool,
    /// Not queued again before the scheduler has seen this position (our own appends).
    awaiting_position: u64,
    /// Not tried again before this (a start that was refused, a store error).
    not_before: Option<DateTime<Utc>>,
    /// Its key in the lane's due set, when queued.
    queued_at: Option<DateTime<Utc>>,
}

/// One subscription's deliveries.
struct Lane {
    /// Every run that has not ended, by publication order (for strict ordering).
    pending: BTreeSet<(u64, String)>,
    /// The runs waiting for their attempt, by due time.
    due: BTreeSet<(DateTime<Utc>, u64, String)>,
    in_flight: u32,
    tokens: f64,
    refilled: Instant,
    /// No attempt starts before this (the endpoint said it is overloaded).
    paused_until: Option<Instant>,
    slow_down: Backoff,
    /// The subscription's settings as of the last pass: what blocks the lane.
    limit: u32,
    rate: Option<u32>,
    strict: bool,
    /// Until when this worker holds the lane's lease, as last granted.
    held_until: Option<DateTime<Utc>>,
    /// A take or renewal of the lease is on its way.
    asking: bool,
    /// Not asked again before this (another worker holds the lease, or asking failed).
    ask_after: Instant,
}

impl Lane {
    fn new() -> Self {
        Self {
            held_until: None,
            asking: false,
            ask_after: Instant::now(),
            pending: BTreeSet::new(),
            due: BTreeSet::new(),
            in_flight: 0,
            tokens: 1.0,
            refilled: Instant::now(),
            paused_until: None,
            slow_down: Backoff::new(FIRST_SLOW_DOWN, MAX_SLOW_DOWN),
            limit: 1,
            rate: None,
            strict: false,
        }
    }

    /// Whether an attempt starting at `now` ends, recorded, before the lease does.
    fn may_start(&self, now: DateTime<Utc>, attempt_budget: Duration) -> bool {
        self.held_until.is_some_and(|until| now + delta(attempt_budget) <= until)
    }

    /// Whether to ask for the lease now: held too briefly to keep starting attempts for long.
    fn should_ask(&self, now: DateTime<Utc>, instant: Instant, ttl: Duration) -> bool {
        !self.asking
            && instant >= self.ask_after
            && self.held_until.is_none_or(|until| until < now + delta(ttl.mul_f64(0.75)))
    }

    /// Refills the token bucket (`rate` per second, at most `rate` tokens); true when a token
    /// is available.
    fn has_token(&mut self, rate: Option<u32>, now: Instant) -> bool {
        let Some(rate) = rate else { return true };
        let rate = f64::from(rate);
        self.tokens = (self.tokens + now.duration_since(self.refilled).as_secs_f64() * rate).min(rate.max(1.0));
        self.refilled = now;
        self.tokens >= 1.0
    }
}

/// The answer to asking for a lane's lease.
struct Leased {
    lane: LaneKey,
    asked_at: Instant,
    answer: Result<Lease, StoreError>,
}

/// What an attempt task reports back.
struct Done {
    run_id: String,
    lane: LaneKey,
    outcome: Outcome,
}

enum Outcome {
    /// Recorded; the scheduler waits to see `position` before queueing the run again.
    Recorded { position: Option<u64>, success: bool, slow_down: Option<Option<Duration>> },
    /// Not started or not recorded (another worker holds it, the store failed): look again later.
    Recheck,
}

/// All scheduling state, owned by the scheduler task.
struct Schedule {
    shared: Arc<Shared>,
    done: mpsc::Sender<Done>,
    leased: mpsc::Sender<Leased>,
    runs: HashMap<String, RunEntry>,
    lanes: HashMap<LaneKey, Lane>,
    /// The first failure since the last success, by lane, from the events. Kept apart from the
    /// lanes (dropped when idle) so a subscription failing message after message is still
    /// seen failing continuously.
    failing_since: HashMap<LaneKey, DateTime<Utc>>,
    in_flight_total: usize,
}

impl Schedule {
    fn new(shared: Arc<Shared>, done: mpsc::Sender<Done>, leased: mpsc::Sender<Leased>) -> Self {
        Self {
            shared,
            done,
            leased,
            runs: HashMap::new(),
            lanes: HashMap::new(),
            failing_since: HashMap::new(),
            in_flight_total: 0,
        }
    }

    fn take(&mut self, seen: Seen) {
        match seen {
            Seen::Event(event, decoded) => self.apply(&event, &decoded),
            Seen::Message { position, runs } => self.expect(position, runs),
        }
    }

    /// Holds the places of a message's runs in strict lanes: the fan-out requests several
    /// messages' runs at once, so a later message's run may be seen before an earlier one's,
    /// and a strict lane must not send it first. A place is taken by the run once requested
    /// (same position, same id).
    fn expect(&mut self, position: u64, runs: Vec<(LaneKey, String)>) {
        for (lane, run_id) in runs {
            if !self.runs.contains_key(&run_id) {
                self.lanes.entry(lane).or_insert_with(Lane::new).pending.insert((position, run_id));
            }
        }
    }

    fn apply(&mut self, event: &EventEnvelope, decoded: &AnyEvent) {
        match decoded {
            AnyEvent::Run(RunEvent::RunRequested(requested)) => {
                if requested.operation != DELIVER_WEBHOOK_OPERATION || self.runs.contains_key(&requested.run_id) {
                    return;
                }
                let Some(subscription_id) = requested.input.get("subscriptionId").and_then(Value::as_str) else {
                    return;
                };
                let message_id = requested.input.get("messageId").and_then(Value::as_str).unwrap_or_default();
                if requested.run_id != super::webhook_run_id(&event.tenant_id, subscription_id, message_id) {
                    // Only the fan-out requests webhook runs, and only under this id: any other
                    // was requested from outside and is never delivered.
                    tracing::warn!(run_id = %requested.run_id, tenant_id = %event.tenant_id,
                        "ignoring a DeliverWebhook run the fan-out did not request");
                    return;
                }
                let lane = (event.tenant_id.clone(), subscription_id.to_owned());
                let entry = RunEntry {
                    tenant_id: event.tenant_id.clone(),
                    lane: lane.clone(),
                    position: requested
                        .input
                        .pointer("/source/position")
                        .and_then(Value::as_u64)
                        .unwrap_or(event.global_position),
                    trace_id: requested.trace_id.clone(),
                    input: requested.input.clone(),
                    state: Run::evolve(RunState::None, &RunEvent::RunRequested(requested.clone())),
                    applied_position: event.global_position,
                    in_flight: false,
                    awaiting_position: 0,
                    not_before: None,
                    queued_at: None,
                };
                self.lanes
                    .entry(lane)
                    .or_insert_with(Lane::new)
                    .pending
                    .insert((entry.position, requested.run_id.clone()));
                self.runs.insert(requested.run_id.clone(), entry);
                self.requeue(&requested.run_id);
            }
            AnyEvent::Run(run_event) => {
                let run_id = run_event.run_id();
                let Some(entry) = self.runs.get_mut(run_id) else { return };
                entry.state = Run::evolve(std::mem::take(&mut entry.state), run_event);
                entry.applied_position = event.global_position;
                match run_event {
                    RunEvent::RunAttemptFailed(failed) => {
                        self.failing_since.entry(entry.lane.clone()).or_insert(failed.failed_at);
                    }
                    RunEvent::RunCompleted(_) => {
                        self.failing_since.remove(&entry.lane);
                    }
                    _ => {}
                }
                let run_id = run_id.to_owned();
                self.requeue(&run_id);
            }
            AnyEvent::Subscription(SubscriptionEvent::WebhookSubscriptionDeactivated(d)) => {
                // Its pending runs are failed by the next pass (the directory says inactive).
                let key = (event.tenant_id.clone(), d.subscription_id.clone());
                // Once active again, it starts with a clean record.
                self.failing_since.remove(&key);
                let ids: Vec<String> = self
                    .lanes
                    .get(&key)
                    .map(|l| l.pending.iter().map(|(_, id)| id.clone()).collect())
                    .unwrap_or_default();
                for id in ids {
                    if let Some(entry) = self.runs.get_mut(&id) {
                        entry.not_before = None;
                    }
                    self.requeue(&id);
                }
            }
            _ => {}
        }
    }

    /// A redelivered run comes back from its history (it was dropped when it ended).
    fn restore(&mut self, history: &[(EventEnvelope, RunEvent)]) {
        let Some(((first, RunEvent::RunRequested(requested)), (last, redelivery))) =
            history.first().zip(history.last())
        else {
            return;
        };
        if self.runs.contains_key(&requested.run_id) {
            // Still known (its end had not reached us yet): the redelivery is the next event.
            self.apply(last, &AnyEvent::Run(redelivery.clone()));
            return;
        }
        self.apply(first, &AnyEvent::Run(RunEvent::RunRequested(requested.clone())));
        let Some(entry) = self.runs.get_mut(&requested.run_id) else { return };
        entry.state = history.iter().fold(RunState::None, |state, (_, event)| Run::evolve(state, event));
        entry.applied_position = last.global_position;
        self.requeue(&requested.run_id);
    }

    /// Puts the run where its state says: dropped when it ended, in the due set otherwise.
    fn requeue(&mut self, run_id: &str) {
        let Some(entry) = self.runs.get_mut(run_id) else { return };
        let Some(lane) = self.lanes.get_mut(&entry.lane) else { return };
        if let Some(at) = entry.queued_at.take() {
            lane.due.remove(&(at, entry.position, run_id.to_owned()));
        }
        if entry.state.is_finished() {
            if !entry.in_flight {
                lane.pending.remove(&(entry.position, run_id.to_owned()));
                self.runs.remove(run_id);
            }
            return;
        }
        if entry.in_flight || entry.applied_position < entry.awaiting_position {
            return;
        }
        let RunState::Exists { lease, next_attempt_at, .. } = &entry.state else { return };
        let mut due = match (lease, next_attempt_at) {
            // Someone's attempt: take it over when the lease expires (its holder may be dead).
            (Some(lease), _) => lease.expires_at,
            (None, Some(at)) => *at,
            (None, None) => DateTime::<Utc>::MIN_UTC,
        };
        if let Some(not_before) = entry.not_before {
            due = due.max(not_before);
        }
        entry.queued_at = Some(due);
        lane.due.insert((due, entry.position, run_id.to_owned()));
    }

    fn finished(&mut self, done: Done) {
        self.in_flight_total = self.in_flight_total.saturating_sub(1);
        if let Some(lane) = self.lanes.get_mut(&done.lane) {
            lane.in_flight = lane.in_flight.saturating_sub(1);
            if let Outcome::Recorded { success, slow_down, .. } = &done.outcome {
                if *success {
                    lane.slow_down.reset();
                }
                if let Some(retry_after) = slow_down {
                    // Overloaded: pause the lane, longer each time in a row, at least as long
                    // as the endpoint asked (within bounds).
                    let asked = retry_after.unwrap_or_default().min(self.shared.settings.max_retry_after);
                    let pause = lane.slow_down.next_delay().max(asked);
                    lane.paused_until = Some(Instant::now() + pause);
                }
            }
        }
        let Some(entry) = self.runs.get_mut(&done.run_id) else { return };
        entry.in_flight = false;
        match done.outcome {
            Outcome::Recorded { position, .. } => {
                entry.awaiting_position = position.unwrap_or(0);
                entry.not_before = None;
            }
            Outcome::Recheck => entry.not_before = Some(self.shared.commands.now() + delta(RECHECK)),
        }
        self.requeue(&done.run_id);
    }

    /// Starts every attempt that is due and allowed by its lane's limits.
    fn start_due(&mut self) {
        let now = self.shared.commands.now();
        let instant = Instant::now();
        let keys: Vec<LaneKey> = self.lanes.keys().cloned().collect();
        for key in keys {
            let Some(lane) = self.lanes.get_mut(&key) else { continue };
            if lane.pending.is_empty()
                && lane.in_flight == 0
                && !lane.asking
                && lane.paused_until.is_none_or(|u| u <= instant)
            {
                // Idle: its next message makes a new one, and another worker may take it.
                if lane.held_until.is_some() {
                    self.release(&key);
                }
                self.lanes.remove(&key);
                continue;
            }
            let subscription = self.shared.directory.subscription(&key.0, &key.1);
            let Some(subscription) = subscription.filter(|s| s.active) else {
                // Nothing more goes to an inactive (or unknown) subscription: its runs end as
                // failed, and can be redelivered once it is active again. Ending them is work
                // in flight like any attempt, under the same budget; the rest waits its turn.
                let reason = format!("subscription {} is inactive or does not exist", key.1);
                loop {
                    if self.in_flight_total >= self.shared.settings.max_in_flight_total {
                        return;
                    }
                    let Some(lane) = self.lanes.get_mut(&key) else { break };
                    let Some((_, _, run_id)) = lane.due.pop_first() else { break };
                    self.launch(&key, &run_id, Job::Cancel(reason.clone()));
                }
                continue;
            };
            let settings = subscription.delivery;
            lane.limit = if settings.strict_ordering { 1 } else { settings.max_in_flight };
            lane.rate = settings.rate_limit_per_second;
            lane.strict = settings.strict_ordering;
            let lease_ttl = self.shared.settings.lane_lease();
            if !lane.pending.is_empty() && lane.should_ask(now, instant, lease_ttl) {
                lane.asking = true;
                self.ask_for_lease(&key, now, lease_ttl);
            }
            let attempt_budget = self.shared.settings.attempt_budget();
            loop {
                if self.in_flight_total >= self.shared.settings.max_in_flight_total {
                    return;
                }
                let Some(lane) = self.lanes.get_mut(&key) else { break };
                if lane.paused_until.is_some_and(|until| until > instant) || !lane.may_start(now, attempt_budget) {
                    break;
                }
                if lane.in_flight >= lane.limit {
                    break;
                }
                let next = if settings.strict_ordering {
                    // Only the oldest message that has not ended, once it is due.
                    let Some((position, id)) = lane.pending.iter().next().cloned() else { break };
                    match self.runs.get(&id).and_then(|e| e.queued_at) {
                        Some(at) if at <= now => Some((at, position, id)),
                        _ => None,
                    }
                } else {
                    lane.due.iter().next().filter(|(at, ..)| *at <= now).cloned()
                };
                let Some(item) = next else { break };
                if !lane.has_token(settings.rate_limit_per_second, instant) {
                    break;
                }
                if settings.rate_limit_per_second.is_some() {
                    lane.tokens -= 1.0;
                }
                lane.due.remove(&item);
                let failing_since = self.failing_since.get(&key).copied();
                self.launch(&key, &item.2, Job::Attempt { failing_since });
            }
        }
    }

    /// Asks for (or renews) the lane's lease in a task of its own; the answer comes back to
    /// [`Schedule::leased`].
    fn ask_for_lease(&self, lane: &LaneKey, now: DateTime<Utc>, ttl: Duration) {
        let (shared, leased, lane) = (self.shared.clone(), self.leased.clone(), lane.clone());
        tokio::spawn(async move {
            let asked_at = Instant::now();
            let name = lane_lease_name(&lane);
            let answer = shared.leases.acquire(&name, &shared.settings.worker_id, now, now + delta(ttl)).await;
            let _ = leased.send(Leased { lane, asked_at, answer }).await;
        });
    }

    fn leased(&mut self, Leased { lane, asked_at, answer }: Leased) {
        // An asking lane is never dropped as idle, so it is still there.
        let Some(lane_state) = self.lanes.get_mut(&lane) else { return };
        lane_state.asking = false;
        match answer {
            Ok(lease) if lease.holder == self.shared.settings.worker_id => {
                lane_state.held_until = Some(lease.expires_at);
            }
            Ok(lease) => {
                // Another worker delivers this lane; ask again once its lease may have expired.
                lane_state.held_until = None;
                let left = (lease.expires_at - self.shared.commands.now()).to_std().unwrap_or_default();
                lane_state.ask_after = asked_at + left.clamp(MIN_LEASE_RETRY, self.shared.settings.lane_lease());
                tracing::debug!(subscription_id = %lane.1, holder = %lease.holder, "webhook lane held by another worker");
            }
            Err(error) => {
                // What was granted before still holds until its time.
                lane_state.ask_after = asked_at + RECHECK;
                tracing::warn!(subscription_id = %lane.1, %error, "webhook dispatcher: asking for a lane's lease failed");
            }
        }
    }

    /// Gives the lane's lease back (it was idle), in a task of its own.
    fn release(&self, lane: &LaneKey) {
        let (shared, name) = (self.shared.clone(), lane_lease_name(lane));
        tokio::spawn(async move {
            if let Err(error) = shared.leases.release(&name, &shared.settings.worker_id).await {
                tracing::debug!(%error, lease = %name, "releasing a webhook lane's lease failed; it expires");
            }
        });
    }

    /// On shutdown: hands every lane held over to the next worker at once, not at expiry.
    /// Attempts still in flight then are abandoned: their runs are sent again (same
    /// `webhook-id`) by whoever takes the lane.
    async fn release_leases(&self) {
        let worker_id = &self.shared.settings.worker_id;
        for key in self.lanes.iter().filter(|(_, lane)| lane.held_until.is_some()).map(|(key, _)| key) {
            let _ = self.shared.leases.release(&lane_lease_name(key), worker_id).await;
        }
    }

    fn launch(&mut self, lane_key: &LaneKey, run_id: &str, job: Job) {
        let Some(entry) = self.runs.get_mut(run_id) else { return };
        entry.queued_at = None;
        entry.in_flight = true;
        if let Some(lane) = self.lanes.get_mut(lane_key) {
            lane.in_flight += 1;
        }
        self.in_flight_total += 1;
        let task = AttemptTask {
            shared: self.shared.clone(),
            run_id: run_id.to_owned(),
            tenant_id: entry.tenant_id.clone(),
            subscription_id: lane_key.1.clone(),
            trace_id: entry.trace_id.clone(),
            input: entry.input.clone(),
            state: entry.state.clone(),
        };
        let (done, lane) = (self.done.clone(), lane_key.clone());
        let run_id = run_id.to_owned();
        tokio::spawn(async move {
            let outcome = task.run(job).await;
            // The scheduler outlives its tasks unless shutting down, when nobody listens.
            let _ = done.send(Done { run_id, lane, outcome }).await;
        });
    }

    /// When the scheduler must look again: the earliest due run, lane pause or token refill.
    fn next_wake(&self) -> Instant {
        let now = Instant::now();
        let utc_now = self.shared.commands.now();
        let mut wake = now + MAX_IDLE;
        for lane in self.lanes.values() {
            let front = if lane.strict {
                // Only the oldest message may go: its due time, if it is queued.
                lane.pending.iter().next().and_then(|(_, id)| self.runs.get(id)).and_then(|e| e.queued_at)
            } else {
                lane.due.iter().next().map(|(at, ..)| *at)
            };
            let Some(at) = front else { continue };
            if lane.in_flight >= lane.limit || lane.asking {
                // A finishing attempt, or the lease's answer, wakes the scheduler.
                continue;
            }
            let due = now + (at - utc_now).to_std().unwrap_or_default();
            let mut ready = due;
            if let Some(until) = lane.paused_until.filter(|u| *u > now) {
                ready = ready.max(until);
            }
            if let Some(rate) = lane.rate.filter(|_| lane.tokens < 1.0) {
                ready = ready.max(now + Duration::from_secs_f64((1.0 - lane.tokens) / f64::from(rate)));
            }
            if !lane.may_start(utc_now, self.shared.settings.attempt_budget()) {
                // Without the lease: ask (again) when allowed.
                ready = ready.max(lane.ask_after);
            }
            wake = wake.min(ready.max(now + Duration::from_millis(1)));
        }
        wake
    }
}

enum Job {
    /// Take the next attempt and send it.
    Attempt { failing_since: Option<DateTime<Utc>> },
    /// End the run as failed without an attempt.
    Cancel(String),
}

/// One attempt (or cancellation) of one run, in its own task.
struct AttemptTask {
    shared: Arc<Shared>,
    run_id: String,
    tenant_id: String,
    subscription_id: String,
    trace_id: String,
    input: Value,
    /// The run as the scheduler knew it when it launched the attempt.
    state: RunState,
}

/// Why an attempt could not be prepared: `retry` when trying again later may help.
struct NotSendable {
    error: String,
    retry: bool,
}

impl AttemptTask {
    fn ctx(&self) -> CommandContext {
        CommandContext::new(&self.tenant_id, &self.trace_id, Actor::worker(&self.shared.settings.worker_id))
    }

    fn stream(&self) -> String {
        stream_id(&self.tenant_id, &self.run_id)
    }

    async fn run(self, job: Job) -> Outcome {
        match job {
            Job::Cancel(reason) => {
                let fail = RunCommand::Fail {
                    run_id: self.run_id.clone(),
                    error: reason,
                    failed_at: self.shared.commands.now(),
                };
                self.record(&fail, false, None).await
            }
            Job::Attempt { failing_since } => self.attempt(failing_since).await,
        }
    }

    async fn record(&self, command: &RunCommand, success: bool, slow_down: Option<Option<Duration>>) -> Outcome {
        match self.shared.commands.execute::<Run>(&self.ctx(), &self.stream(), command).await {
            Ok(executed) => {
                let outcome = if success { "delivered" } else { "failed" };
                metrics::counter!(super::OUTBOUND_OUTCOMES, "outcome" => outcome).increment(1);
                Outcome::Recorded { position: executed.last_position, success, slow_down }
            }
            Err(error) => {
                tracing::warn!(run_id = %self.run_id, %error, "webhook run: recording the outcome failed");
                Outcome::Recheck
            }
        }
    }

    async fn attempt(&self, failing_since: Option<DateTime<Utc>>) -> Outcome {
        let settings = &self.shared.settings;
        let started_at = self.shared.commands.now();
        let budget = settings.attempt_budget();
        // Everything of the attempt (preparing it, sending it) ends by this, leaving time to
        // record the outcome while the lane's lease still holds: past it, another worker may
        // take the lane over and send the message a second time.
        let deadline = Instant::now() + budget.saturating_sub(record_margin(settings.lease_grace));
        let RunState::Exists { attempts, attempts_before_redelivery, lease, .. } = &self.state else {
            return Outcome::Recheck;
        };
        // A lease of the run's own (an attempt before lanes had leases) expired: that attempt
        // counts, and is recorded as abandoned with this one.
        let attempt = lease.as_ref().map_or(*attempts, |lease| lease.attempt.max(*attempts)) + 1;
        let counted = attempt - attempts_before_redelivery;
        if counted > settings.max_attempts() {
            let error = format!("gave up after {} attempts (the limit is {})", counted - 1, settings.max_attempts());
            tracing::warn!(run_id = %self.run_id, "webhook dead-lettered: no attempt left");
            let fail = RunCommand::Fail { run_id: self.run_id.clone(), error, failed_at: started_at };
            return self.record(&fail, false, None).await;
        }
        let attempt = Attempt { number: attempt, started_at };
        let prepared = match tokio::time::timeout_at(deadline, self.prepare(started_at)).await {
            Ok(prepared) => prepared,
            Err(_) => Err(NotSendable {
                error: format!("preparing the attempt took longer than its lease allows ({} ms)", budget.as_millis()),
                retry: true,
            }),
        };
        let request = match prepared {
            Ok(request) => request,
            Err(not_sendable) => return self.fail_unsent(&attempt, counted, not_sendable).await,
        };
        let Some(timeout) = send_timeout(deadline, Instant::now(), settings.attempt_timeout) else {
            let error = "too little of the attempt's lease was left to send it after preparing it".to_owned();
            return self.fail_unsent(&attempt, counted, NotSendable { error, retry: true }).await;
        };
        let result = outbound_webhooks::send(&self.shared.client, &request, timeout).await;
        let finished_at = self.shared.commands.now();
        let response = AttemptResponse {
            status_code: result.status,
            latency_ms: u64::try_from(result.latency.as_millis()).unwrap_or(u64::MAX),
            response_body: result.body_excerpt.clone(),
        };
        tracing::debug!(run_id = %self.run_id, attempt = attempt.number, status = ?result.status, "webhook attempt");
        if let Verdict::Delivered | Verdict::DeliveredThenDeactivate { .. } = &result.verdict {
            let output = json!({
                "statusCode": response.status_code,
                "latencyMs": response.latency_ms,
                "responseBody": response.response_body,
                "webhookId": request.webhook_id,
            });
            let complete = self.recorded(&attempt, finished_at, AttemptOutcome::Succeeded { output });
            let outcome = self.record(&complete, true, None).await;
            if let Verdict::DeliveredThenDeactivate { reason } = result.verdict {
                self.deactivate(&reason).await;
            }
            return outcome;
        }
        let (next, slow_down) = match &result.verdict {
            Verdict::Retry { retry_after, slow_down } => {
                (settings.next_delay(counted, *retry_after), slow_down.then_some(*retry_after))
            }
            Verdict::AbortMessage
            | Verdict::Deactivate { .. }
            | Verdict::Delivered
            | Verdict::DeliveredThenDeactivate { .. } => (None, None),
        };
        let failed = AttemptOutcome::Failed {
            error: result.error.clone().unwrap_or_else(|| "the delivery failed".into()),
            next_attempt_at: next.map(|d| finished_at + delta(d)),
            response: Some(response),
        };
        let outcome = self.record(&self.recorded(&attempt, finished_at, failed), false, slow_down).await;
        let since = failing_since.unwrap_or(finished_at);
        let deactivation = match result.verdict {
            Verdict::Deactivate { reason } => Some(reason),
            _ if finished_at - since >= delta(settings.disable_after_failing_for) => Some(format!(
                "its deliveries failed continuously since {} (the limit is {} s without a success)",
                since.to_rfc3339(),
                settings.disable_after_failing_for.as_secs()
            )),
            _ => None,
        };
        if let Some(reason) = deactivation {
            self.deactivate(&reason).await;
        }
        outcome
    }

    /// Records an attempt that was not sent; tried again later when `retry` and an attempt is
    /// left.
    async fn fail_unsent(&self, attempt: &Attempt, counted: u32, NotSendable { error, retry }: NotSendable) -> Outcome {
        let next = retry.then(|| self.shared.settings.next_delay(counted, None)).flatten();
        let failed_at = self.shared.commands.now();
        let failed =
            AttemptOutcome::Failed { error, next_attempt_at: next.map(|d| failed_at + delta(d)), response: None };
        self.record(&self.recorded(attempt, failed_at, failed), false, None).await
    }

    /// The command recording `attempt`, ended at `finished_at` with `outcome`.
    fn recorded(&self, attempt: &Attempt, finished_at: DateTime<Utc>, outcome: AttemptOutcome) -> RunCommand {
        RunCommand::RecordAttempt(RecordAttempt {
            run_id: self.run_id.clone(),
            attempt: attempt.number,
            worker_id: self.shared.settings.worker_id.clone(),
            started_at: attempt.started_at,
            finished_at,
            outcome,
        })
    }

    /// Deactivates the run's subscription (nothing more is sent to it) for `reason`.
    async fn deactivate(&self, reason: &str) {
        match self.shared.commands.deactivate_subscription(&self.ctx(), &self.subscription_id, reason).await {
            Ok(true) => tracing::warn!(subscription_id = %self.subscription_id, %reason, "subscription deactivated"),
            Ok(false) => {}
            Err(error) => tracing::warn!(subscription_id = %self.subscription_id, %error, "deactivating failed"),
        }
    }

    /// The request of this attempt: the message, the endpoint (checked again: the allow-list
    /// may have changed), the signature under every valid secret.
    async fn prepare(&self, now: DateTime<Utc>) -> Result<OutboundRequest, NotSendable> {
        let permanent = |error: String| NotSendable { error, retry: false };
        let retry = |error: String| NotSendable { error, retry: true };
        let subscription = self
            .shared
            .directory
            .subscription(&self.tenant_id, &self.subscription_id)
            .ok_or_else(|| permanent(format!("subscription {} does not exist", self.subscription_id)))?;
        let url = check_webhook_endpoint(&subscription.endpoint_url, &self.shared.settings.allow)
            .map_err(|reason| retry(format!("endpointUrl refused: {reason}")))?;
        let source_stream = self.input.pointer("/source/streamId").and_then(Value::as_str).unwrap_or_default();
        let source_event = self.input.pointer("/source/eventId").and_then(Value::as_str).unwrap_or_default();
        // Only the run's own tenant's messages: streams are `{tenant}/{resource}`.
        let foreign = |what: &str| permanent(format!("{what} is not a message of tenant {}", self.tenant_id));
        if !source_stream.strip_prefix(&self.tenant_id).is_some_and(|rest| rest.starts_with('/')) {
            return Err(foreign(&format!("stream {source_stream}")));
        }
        let recent = uuid::Uuid::parse_str(source_event)
            .ok()
            .and_then(|id| self.shared.recent_messages.get(&id))
            .filter(|event| event.stream_id == source_stream);
        let event = match recent {
            Some(event) => event,
            None => self
                .shared
                .store
                .read_stream(source_stream)
                .await
                .map_err(|e| retry(format!("reading the message: {e}")))?
                .into_iter()
                .find(|e| e.event_id.to_string() == source_event)
                .ok_or_else(|| permanent(format!("the message's event {source_event} is not in {source_stream}")))?,
        };
        let event = &event;
        if event.tenant_id != self.tenant_id {
            return Err(foreign(&format!("event {source_event}")));
        }
        let mut message = message_of(event, &self.shared.directory)
            .ok_or_else(|| permanent(format!("event {source_event} is not a message")))?;
        let message_id = self.input.get("messageId").and_then(Value::as_str).unwrap_or_default();
        if message.message_id != message_id {
            return Err(permanent(format!("event {source_event} is message {}, not {message_id}", message.message_id)));
        }
        // The project the fan-out matched on (a connection's project is looked up then).
        if let Some(project) = self.input.get("projectId").and_then(Value::as_str) {
            message.project_id = Some(project.to_owned());
        }
        let secrets = self.secrets(&subscription.signing_secret_ref, now).await?;
        let body = outbound_webhooks::body(&message.event_type, message.time, &message.data);
        let keys: Vec<&[u8]> = secrets.iter().map(Vec::as_slice).collect();
        let signature = outbound_webhooks::signature_header(&keys, &message.message_id, now.timestamp(), &body)
            .map_err(|e| retry(format!("signingSecretRef: {e}")))?;
        Ok(OutboundRequest {
            url,
            webhook_id: message.message_id,
            event_type: message.event_type,
            timestamp: now,
            message_time: message.time,
            body,
            signature,
            tenant_id: self.tenant_id.clone(),
            project_id: message.project_id,
        })
    }

    /// The signing secret's current version and, within the grace period after a rotation, the
    /// previous one: receivers that have not switched yet still verify.
    async fn secrets(&self, secret_ref: &str, now: DateTime<Utc>) -> Result<Vec<Vec<u8>>, NotSendable> {
        let retry = |error: String| NotSendable { error, retry: true };
        let secret = SecretRef::parse(secret_ref).map_err(|e| retry(format!("signingSecretRef: {e}")))?;
        let vault = self.shared.vault.as_ref();
        match store::vault::check_access(vault, &secret, &self.tenant_id).await {
            Ok(()) => {}
            Err(VaultError::Forbidden(name)) => {
                return Err(retry(format!("signing secret {name} belongs to another tenant")));
            }
            Err(e) => return Err(retry(format!("vault: {e}"))),
        }
        let current = vault.get(&secret).await.map_err(|e| retry(format!("signing secret: {e}")))?;
        let mut secrets = vec![current.value];
        if let Ok(Some(previous)) = vault.previous(&secret).await
            && now - previous.superseded_at <= delta(self.shared.settings.secret_grace)
        {
            secrets.push(previous.value.value);
        }
        Ok(secrets)
    }
}

/// An attempt under way: its number and when it started.
struct Attempt {
    number: u32,
    started_at: DateTime<Utc>,
}

/// The lease of a subscription's lane, in the [`Leases`] shared by every dispatcher.
fn lane_lease_name((tenant_id, subscription_id): &LaneKey) -> String {
    format!("webhook-lane/{tenant_id}/{subscription_id}")
}

/// What an attempt keeps of its lease for recording its outcome.
fn record_margin(lease_grace: Duration) -> Duration {
    (lease_grace / 2).min(MAX_RECORD_MARGIN)
}

/// The send timeout of an attempt that must end by `deadline`: the attempt timeout or what is
/// left, whichever is shorter; `None` when what is left is too short to be worth sending.
fn send_timeout(deadline: Instant, now: Instant, attempt_timeout: Duration) -> Option<Duration> {
    let left = deadline.saturating_duration_since(now);
    (left >= MIN_SEND.min(attempt_timeout / 4)).then(|| left.min(attempt_timeout))
}

fn delta(duration: Duration) -> TimeDelta {
    TimeDelta::from_std(duration).unwrap_or(TimeDelta::MAX)
}

async fn pause(delay: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        () = shutdown.cancelled() => false,
        () = tokio::time::sleep(delay) => true,
    }
}

#[cfg(test)]
mod tests {
    use async_trait::async_trait;
    use commands::SystemClock;
    use connectors::egress::EgressAllowList;
    use domain::subscription::{CreateWebhookSubscription, DeliverySettings};
    use store::{MasterKey, SecretMetadata, SecretValue, SqliteEventStore, SqliteLeases, SqliteVault, VersionMetadata};

    use super::*;
    use crate::fanout::handler::run_input;
    use crate::fanout::webhook_run_id;

    const SIGNING_SECRET: &str = "kv://hooks/signing";
    const WHSEC: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    /// A vault whose reads take `delay` (a slow secret backend).
    struct SlowVault {
        inner: SqliteVault,
        delay: Duration,
    }

    #[async_trait]
    impl SecretStore for SlowVault {
        async fn put(&self, s: &SecretRef, v: &[u8], e: Option<u32>) -> Result<u32, VaultError> {
            self.inner.put(s, v, e).await
        }
        async fn stage_pending(&self, s: &SecretRef, v: &[u8], e: Option<u32>) -> Result<u32, VaultError> {
            self.inner.stage_pending(s, v, e).await
        }
        async fn promote(&self, s: &SecretRef, v: u32, e: Option<u32>) -> Result<(), VaultError> {
            self.inner.promote(s, v, e).await
        }
        async fn discard_pending(&self, s: &SecretRef, v: u32) -> Result<bool, VaultError> {
            self.inner.discard_pending(s, v).await
        }
        async fn retire_previous(&self, s: &SecretRef, v: u32) -> Result<bool, VaultError> {
            self.inner.retire_previous(s, v).await
        }
        async fn versions(&self, s: &SecretRef) -> Result<Vec<VersionMetadata>, VaultError> {
            self.inner.versions(s).await
        }
        async fn get(&self, s: &SecretRef) -> Result<SecretValue, VaultError> {
            tokio::time::sleep(self.delay).await;
            self.inner.get(s).await
        }
        async fn metadata(&self, s: &SecretRef) -> Result<Option<SecretMetadata>, VaultError> {
            self.inner.metadata(s).await
        }
        async fn list(&self) -> Result<Vec<SecretMetadata>, VaultError> {
            self.inner.list().await
        }
        async fn owner(&self, vault: &str) -> Result<Option<String>, VaultError> {
            self.inner.owner(vault).await
        }
        async fn claim(&self, vault: &str, tenant_id: &str) -> Result<(), VaultError> {
            self.inner.claim(vault, tenant_id).await
        }
    }

    struct Engine {
        _dir: tempfile::TempDir,
        shared: Arc<Shared>,
        /// The store read up to here by [`Engine::follow`].
        position: u64,
    }

    async fn engine(settings: WebhookSettings, vault_delay: Duration) -> Engine {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn EventStore> = Arc::new(SqliteEventStore::open(&dir.path().join("events.db")).unwrap());
        let inner = SqliteVault::open(&dir.path().join("vault.db"), MasterKey::generate().unwrap()).unwrap();
        let vault: Arc<dyn SecretStore> = Arc::new(SlowVault { inner, delay: vault_delay });
        vault.put(&SecretRef::parse(SIGNING_SECRET).unwrap(), WHSEC.as_bytes(), None).await.unwrap();
        let commands = Commands::new(store.clone(), vault.clone(), Arc::new(SystemClock));
        let settings = WebhookSettings { allow: Arc::new(EgressAllowList::parse("127.0.0.1").unwrap()), ..settings };
        let leases: Arc<dyn Leases> = Arc::new(SqliteLeases::open(&dir.path().join("events.db")).unwrap());
        let dispatcher = Dispatcher::new(store, leases, commands, vault, settings).unwrap();
        Engine { _dir: dir, shared: dispatcher.shared, position: 0 }
    }

    fn ctx(tenant: &str) -> CommandContext {
        CommandContext::new(tenant, "trace-1", Actor { subject: "test".into(), client_id: None })
    }

    impl Engine {
        fn schedule(&self) -> (Schedule, mpsc::Receiver<Done>, mpsc::Receiver<Leased>) {
            let (done, done_rx) = mpsc::channel(64);
            let (leased, leased_rx) = mpsc::channel(64);
            (Schedule::new(self.shared.clone(), done, leased), done_rx, leased_rx)
        }

        /// What the follower does: the new events into the directory and the schedule.
        async fn follow(&mut self, mut schedule: Option<&mut Schedule>) {
            let page = self.shared.store.read_all(self.position, 10_000).await.unwrap();
            for event in page {
                self.position = event.global_position;
                let decoded = AnyEvent::decode(&event.event_type, event.schema_version, &event.data).unwrap();
                self.shared.directory.apply(&event, &decoded);
                if let Some(schedule) = schedule.as_deref_mut()
                    && let Some(seen) = seen(&self.shared, event, decoded)
                {
                    schedule.take(seen);
                }
            }
            self.shared.directory.advance(self.position);
        }

        async fn subscribe(&self, tenant: &str, subscription_id: &str) {
            self.subscribe_with(tenant, subscription_id, DeliverySettings::default()).await;
        }

        async fn subscribe_with(&self, tenant: &str, subscription_id: &str, delivery: DeliverySettings) {
            let command = CreateWebhookSubscription {
                subscription_id: subscription_id.into(),
                tenant_id: tenant.into(),
                project_id: None,
                event_type: "OrderPlaced".into(),
                endpoint_url: "http://127.0.0.1:9/hook".into(),
                signing_secret_ref: SIGNING_SECRET.into(),
                active: true,
                created_at: Utc::now(),
                delivery,
            };
            self.shared.commands.create_subscription(&ctx(tenant), command).await.unwrap();
        }

        /// Publishes a message of `tenant` and returns its event.
        async fn publish(&self, tenant: &str, message_id: &str, data: Value) -> EventEnvelope {
            let published =
                self.shared.commands.publish_event(&ctx(tenant), message_id, None, "OrderPlaced", data).await.unwrap();
            let all = self.shared.store.read_all(published.last_position.unwrap() - 1, 1).await.unwrap();
            all.into_iter().next().unwrap()
        }

        /// Requests the run the fan-out would for `message` and `subscription_id`.
        async fn fan_out(&self, tenant: &str, subscription_id: &str, source: &EventEnvelope) -> String {
            let message = super::message_of(source, &self.shared.directory).unwrap();
            let run_id = webhook_run_id(tenant, subscription_id, &message.message_id);
            let input = run_input(subscription_id, &message, source);
            self.shared
                .commands
                .request_run(&ctx(tenant), &run_id, subscription_id, DELIVER_WEBHOOK_OPERATION, input)
                .await
                .unwrap();
            run_id
        }

        async fn task(&self, tenant: &str, subscription_id: &str, run_id: &str, input: Value) -> AttemptTask {
            let events = self.run_events(tenant, run_id).await;
            AttemptTask {
                state: events.iter().fold(RunState::None, Run::evolve),
                shared: self.shared.clone(),
                run_id: run_id.into(),
                tenant_id: tenant.into(),
                subscription_id: subscription_id.into(),
                trace_id: "trace-1".into(),
                input,
            }
        }

        async fn run_events(&self, tenant: &str, run_id: &str) -> Vec<RunEvent> {
            let stream = self.shared.store.read_stream(&stream_id(tenant, run_id)).await.unwrap();
            stream
                .into_iter()
                .map(|e| domain::AggregateEvent::decode(&e.event_type, e.schema_version, &e.data).unwrap())
                .collect()
        }
    }

    /// A run hand-crafted by the attacker naming the victim's message as its source is neither
    /// scheduled (its id is not the fan-out's) nor, if it were, prepared (the source is not the
    /// attacker's).
    #[tokio::test]
    async fn a_webhook_run_never_reads_another_tenants_message() {
        let mut engine = engine(WebhookSettings::new("w"), Duration::ZERO).await;
        engine.subscribe("attacker", "sub-a").await;
        let victims = engine.publish("victim", "msg-secret", json!({"card": "4111"})).await;
        engine.follow(None).await;
        let message = super::message_of(&victims, &engine.shared.directory).unwrap();
        let input = run_input("sub-a", &message, &victims);
        let crafted_id = "run-crafted";
        engine
            .shared
            .commands
            .request_run(&ctx("attacker"), crafted_id, "sub-a", DELIVER_WEBHOOK_OPERATION, input.clone())
            .await
            .unwrap();
        let (mut schedule, _done, _leased) = engine.schedule();
        engine.follow(Some(&mut schedule)).await;
        assert!(schedule.runs.is_empty(), "a DeliverWebhook run under another id is not scheduled");

        // Even under the id the fan-out would use, the source must be the run's tenant's.
        let run_id = webhook_run_id("attacker", "sub-a", "msg-secret");
        let refused =
            engine.task("attacker", "sub-a", &run_id, input.clone()).await.prepare(Utc::now()).await.err().unwrap();
        assert!(!refused.retry);
        assert!(refused.error.contains("is not a message of tenant attacker"), "{}", refused.error);
        // Another tenant's stream whose name merely starts with the tenant's.
        let mut forged = input;
        forged["source"]["streamId"] = json!("attacker-not/msg-secret");
        let refused = engine.task("attacker", "sub-a", &run_id, forged).await.prepare(Utc::now()).await.err().unwrap();
        assert!(refused.error.contains("is not a message of tenant attacker"), "{}", refused.error);

        // The tenant's own message prepares.
        let own = engine.publish("attacker", "msg-own", json!({"a": 1})).await;
        engine.follow(None).await;
        let message = super::message_of(&own, &engine.shared.directory).unwrap();
        let own_input = run_input("sub-a", &message, &own);
        let run_id = webhook_run_id("attacker", "sub-a", "msg-own");
        let request =
            engine.task("attacker", "sub-a", &run_id, own_input).await.prepare(Utc::now()).await.ok().unwrap();
        assert_eq!(request.webhook_id, "msg-own");
    }

    /// Deactivating a subscription with many pending runs ends them under the global in-flight
    /// budget, and its lane goes away once nothing is left in it.
    #[tokio::test]
    async fn cancellations_stay_within_the_in_flight_budget_and_idle_lanes_are_dropped() {
        let settings = WebhookSettings { max_in_flight_total: 2, ..WebhookSettings::new("w") };
        let mut engine = engine(settings, Duration::ZERO).await;
        let (mut schedule, mut done, _leased) = engine.schedule();
        engine.subscribe("t", "sub-1").await;
        let mut run_ids = Vec::new();
        for n in 0..5 {
            let source = engine.publish("t", &format!("msg-{n}"), json!({"n": n})).await;
            run_ids.push(engine.fan_out("t", "sub-1", &source).await);
        }
        engine.shared.commands.deactivate_subscription(&ctx("t"), "sub-1", "test").await.unwrap();
        engine.follow(Some(&mut schedule)).await;
        assert_eq!(schedule.runs.len(), 5);
        let mut most = 0;
        for _ in 0..50 {
            schedule.start_due();
            most = most.max(schedule.in_flight_total);
            assert!(schedule.in_flight_total <= 2, "{} in flight", schedule.in_flight_total);
            if schedule.runs.is_empty() && schedule.lanes.is_empty() {
                break;
            }
            if schedule.in_flight_total > 0 {
                let finished = done.recv().await.unwrap();
                schedule.finished(finished);
            }
            engine.follow(Some(&mut schedule)).await;
        }
        assert_eq!(most, 2);
        assert!(schedule.runs.is_empty(), "every run ended");
        assert!(schedule.lanes.is_empty(), "the idle lane was dropped");
        for run_id in run_ids {
            let events = engine.run_events("t", &run_id).await;
            assert!(
                matches!(events.last(), Some(RunEvent::RunFailed(f)) if f.error.contains("inactive")),
                "{events:?}"
            );
        }
    }

    /// Of two dispatchers over one store only the holder of a lane's lease attempts its runs,
    /// each attempt one append; once the holder gives the lane up, the other takes over.
    #[tokio::test]
    async fn only_the_holder_of_a_lanes_lease_attempts_its_runs() {
        let settings = WebhookSettings {
            attempt_timeout: Duration::from_millis(600),
            lease_grace: Duration::from_millis(400),
            retry_schedule: vec![Duration::ZERO; 3],
            jitter: 0.0,
            ..WebhookSettings::new("w1")
        };
        let mut engine = engine(settings, Duration::ZERO).await;
        let first = engine.shared.clone();
        let second = Arc::new(Shared {
            store: first.store.clone(),
            leases: first.leases.clone(),
            commands: first.commands.clone(),
            vault: first.vault.clone(),
            client: first.client.clone(),
            settings: WebhookSettings { worker_id: "w2".into(), ..first.settings.clone() },
            directory: first.directory.clone(),
            recent_messages: quick_cache::sync::Cache::new(16),
        });
        engine.subscribe("t", "sub-1").await;
        let source = engine.publish("t", "msg-1", json!({})).await;
        engine.follow(None).await;
        let run_id = engine.fan_out("t", "sub-1", &source).await;

        let (done_tx, mut done) = mpsc::channel(8);
        let (leased_tx, mut leased) = mpsc::channel(8);
        let mut a = Schedule::new(first, done_tx.clone(), leased_tx.clone());
        let mut b = Schedule::new(second, done_tx, leased_tx);
        let catch_up = |schedules: [&mut Schedule; 2], events: &[(EventEnvelope, AnyEvent)]| {
            for schedule in schedules {
                events.iter().for_each(|(e, d)| schedule.apply(e, d));
            }
        };
        let read = |after: u64| {
            let store = engine.shared.store.clone();
            async move {
                let page = store.read_all(after, 1000).await.unwrap();
                page.into_iter()
                    .map(|e| {
                        let d = AnyEvent::decode(&e.event_type, e.schema_version, &e.data).unwrap();
                        (e, d)
                    })
                    .collect::<Vec<_>>()
            }
        };
        let events = read(0).await;
        let mut position = events.last().unwrap().0.global_position;
        catch_up([&mut a, &mut b], &events);

        // Both ask; the first to ask holds the lane, the other is told so.
        a.start_due();
        a.leased(leased.recv().await.unwrap());
        b.start_due();
        b.leased(leased.recv().await.unwrap());
        a.start_due();
        b.start_due();
        assert_eq!((a.in_flight_total, b.in_flight_total), (1, 0), "only the lease's holder attempts");
        let finished = done.recv().await.unwrap();
        assert!(matches!(finished.outcome, Outcome::Recorded { success: false, .. }), "port 9 refuses");
        a.finished(finished);
        let events = read(position).await;
        position = events.last().unwrap().0.global_position;
        catch_up([&mut a, &mut b], &events);

        // The holder stops and hands the lane over; the other takes it and attempts next.
        a.release_leases().await;
        tokio::time::sleep_until(b.lanes.values().next().unwrap().ask_after).await;
        b.start_due();
        b.leased(leased.recv().await.unwrap());
        b.start_due();
        assert_eq!(b.in_flight_total, 1);
        b.finished(done.recv().await.unwrap());
        catch_up([&mut a, &mut b], &read(position).await);

        let events = engine.run_events("t", &run_id).await;
        let attempts: Vec<(u32, Option<&str>)> = events
            .iter()
            .filter_map(|e| match e {
                RunEvent::RunAttemptFailed(f) => Some((f.attempt, f.worker_id.as_deref())),
                _ => None,
            })
            .collect();
        assert_eq!(attempts, [(1, Some("w1")), (2, Some("w2"))], "{events:?}");
        assert!(!events.iter().any(|e| matches!(e, RunEvent::RunStarted(_))), "one append per attempt: {events:?}");
    }

    /// The fan-out requests several messages' runs at once, so a strict lane may see a later
    /// message's run first: it waits for the earlier message's run, whose place the message
    /// itself held.
    #[tokio::test]
    async fn a_strict_lane_keeps_publication_order_when_runs_are_requested_out_of_order() {
        let mut engine = engine(WebhookSettings::new("w"), Duration::ZERO).await;
        let strict = DeliverySettings { strict_ordering: true, ..DeliverySettings::default() };
        engine.subscribe_with("t", "sub-1", strict).await;
        let first = engine.publish("t", "msg-1", json!({"n": 1})).await;
        let second = engine.publish("t", "msg-2", json!({"n": 2})).await;
        let (mut schedule, _done, _leased) = engine.schedule();
        engine.follow(Some(&mut schedule)).await;
        let second_run = engine.fan_out("t", "sub-1", &second).await;
        engine.follow(Some(&mut schedule)).await;

        let lane = &schedule.lanes[&("t".to_owned(), "sub-1".to_owned())];
        let (head_position, head_run) = lane.pending.first().unwrap();
        assert_eq!(*head_position, first.global_position, "the first message holds the head of the lane");
        assert!(!schedule.runs.contains_key(head_run), "its run is not requested yet");
        assert_eq!(schedule.runs[&second_run].position, second.global_position);
        let lane = schedule.lanes.get_mut(&("t".to_owned(), "sub-1".to_owned())).unwrap();
        lane.held_until = Some(Utc::now() + TimeDelta::hours(1));
        schedule.start_due();
        assert_eq!(schedule.in_flight_total, 0, "the second message does not go first");

        let first_run = engine.fan_out("t", "sub-1", &first).await;
        engine.follow(Some(&mut schedule)).await;
        let lane = &schedule.lanes[&("t".to_owned(), "sub-1".to_owned())];
        assert_eq!(lane.pending.iter().map(|(_, id)| id.clone()).collect::<Vec<_>>(), [first_run.clone(), second_run]);
        schedule.start_due();
        assert_eq!(schedule.in_flight_total, 1);
        assert!(schedule.runs[&first_run].in_flight, "the first message goes first");
    }

    /// A slow vault cannot stretch an attempt past its lease: preparing and sending share it.
    #[tokio::test]
    async fn preparing_an_attempt_is_bounded_by_its_lease() {
        let settings = WebhookSettings {
            attempt_timeout: Duration::from_millis(600),
            lease_grace: Duration::from_millis(400),
            ..WebhookSettings::new("w")
        };
        let mut engine = engine(settings, Duration::from_secs(3)).await;
        engine.subscribe("t", "sub-1").await;
        let source = engine.publish("t", "msg-1", json!({})).await;
        engine.follow(None).await;
        let run_id = engine.fan_out("t", "sub-1", &source).await;
        let message = super::message_of(&source, &engine.shared.directory).unwrap();
        let task = engine.task("t", "sub-1", &run_id, run_input("sub-1", &message, &source)).await;
        let began = Instant::now();
        let outcome = task.attempt(None).await;
        assert!(began.elapsed() < Duration::from_secs(2), "{:?}", began.elapsed());
        assert!(matches!(outcome, Outcome::Recorded { success: false, .. }));
        let events = engine.run_events("t", &run_id).await;
        let Some(RunEvent::RunAttemptFailed(failed)) = events.last() else { panic!("{events:?}") };
        assert!(failed.error.contains("longer than its lease allows"), "{}", failed.error);
        assert!(failed.next_attempt_at.is_some(), "tried again later");
    }

    /// The directory is per tenant: the same subscription id in two tenants is two
    /// subscriptions, and a message matches its tenant's only.
    #[tokio::test]
    async fn the_directory_matches_a_message_against_its_tenants_subscriptions_only() {
        let mut engine = engine(WebhookSettings::new("w"), Duration::ZERO).await;
        engine.subscribe("a", "sub-1").await;
        engine.subscribe("b", "sub-1").await;
        engine.subscribe("b", "sub-2").await;
        engine.follow(None).await;
        let directory = &engine.shared.directory;
        let after = directory.position() + 1;
        let ids = |tenant: &str| -> Vec<String> {
            directory.matching(after, tenant, None, "OrderPlaced").into_iter().map(|s| s.subscription_id).collect()
        };
        assert_eq!(ids("a"), ["sub-1"]);
        assert_eq!(ids("b"), ["sub-1", "sub-2"]);
        assert!(ids("c").is_empty());
        assert_eq!(directory.subscription("b", "sub-2").map(|s| s.tenant_id), Some("b".to_owned()));
        assert!(directory.subscription("a", "sub-2").is_none());
    }

    #[test]
    fn the_send_timeout_is_what_is_left_of_the_lease() {
        let now = Instant::now();
        let attempt = Duration::from_secs(15);
        assert_eq!(send_timeout(now + Duration::from_secs(18), now, attempt), Some(attempt));
        assert_eq!(send_timeout(now + Duration::from_secs(4), now, attempt), Some(Duration::from_secs(4)));
        assert_eq!(send_timeout(now + Duration::from_millis(500), now, attempt), None, "too little left");
        assert_eq!(send_timeout(now, now + Duration::from_secs(1), attempt), None, "past the deadline");
        assert_eq!(record_margin(Duration::from_secs(5)), Duration::from_millis(2500));
        assert_eq!(record_margin(Duration::from_secs(60)), MAX_RECORD_MARGIN);
    }
}
