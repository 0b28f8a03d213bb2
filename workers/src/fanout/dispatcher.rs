//! The dispatcher: a due queue of webhook runs rebuilt from the store, one lane per
//! subscription, and the attempts themselves.
//!
//! One task owns all scheduling state (no locks): it takes the store's events from a follower
//! task, the outcomes of attempts from the attempt tasks, and wakes for the next due time. Each
//! attempt runs in its own task, so a slow endpoint holds only its own lane's slots.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use commands::{CommandContext, CommandError, Commands};
use connectors::egress::{EgressError, check_webhook_endpoint, webhook_client};
use connectors::outbound_webhooks::{self, OutboundRequest, Verdict};
use domain::ids::stream_id;
use domain::outbound::DELIVER_WEBHOOK_OPERATION;
use domain::run::{AttemptResponse, FailAttempt, Run, RunCommand, RunEvent, RunState, StartAttempt};
use domain::secret_ref::SecretRef;
use domain::subscription::SubscriptionEvent;
use domain::{Actor, AnyEvent, Decider, DomainError, EventEnvelope};
use serde_json::{Value, json};
use store::{EventStore, SecretStore, VaultError};
use thiserror::Error;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::handler::message_of;
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

#[derive(Debug, Error)]
pub enum DispatcherError {
    #[error("the store follower stopped")]
    FollowerStopped,
}

/// What the follower hands the scheduler.
enum Followed {
    /// Run and subscription events of webhook interest, in store order.
    Events(Vec<(EventEnvelope, AnyEvent)>),
    /// A run that had ended was redelivered: its history up to the redelivery.
    Redelivered(Vec<(EventEnvelope, RunEvent)>),
    /// Everything the store held at start has been read.
    CaughtUp,
}

/// The state shared with attempt tasks.
struct Shared {
    store: Arc<dyn EventStore>,
    commands: Commands,
    vault: Arc<dyn SecretStore>,
    client: reqwest::Client,
    settings: WebhookSettings,
    directory: Arc<Directory>,
}

/// The webhook dispatcher. [`Dispatcher::run`] until shutdown.
pub struct Dispatcher {
    shared: Arc<Shared>,
}

impl Dispatcher {
    pub fn new(
        store: Arc<dyn EventStore>,
        commands: Commands,
        vault: Arc<dyn SecretStore>,
        settings: WebhookSettings,
    ) -> Result<Self, EgressError> {
        let client = webhook_client(settings.allow.clone(), settings.attempt_timeout)?;
        let directory = Directory::new();
        Ok(Self { shared: Arc::new(Shared { store, commands, vault, client, settings, directory }) })
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
        let mut schedule = Schedule {
            shared: self.shared.clone(),
            done: done_tx,
            runs: HashMap::new(),
            lanes: HashMap::new(),
            in_flight_total: 0,
        };
        let mut caught_up = false;
        loop {
            let wake = schedule.next_wake();
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                Some(done) = done_rx.recv() => schedule.finished(done),
                followed = followed_rx.recv() => match followed {
                    Some(Followed::Events(events)) => events.iter().for_each(|(e, d)| schedule.apply(e, d)),
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
        Ok(())
    }
}

/// Reads the store from its start, keeps the directory current, and hands run and subscription
/// events to the scheduler (bounded: a busy scheduler slows the follower down).
async fn follow(shared: Arc<Shared>, out: mpsc::Sender<Followed>, shutdown: CancellationToken) {
    let store = &shared.store;
    let mut head = store.watch_head();
    let mut backoff = Duration::from_millis(100);
    let start_head = loop {
        match store.head_position().await {
            Ok(head) => break head,
            Err(error) => {
                tracing::warn!(%error, "webhook dispatcher: reading the store's head failed");
                if !pause(backoff, &shutdown).await {
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
                if !pause(backoff, &shutdown).await {
                    return;
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        let got_events = !page.is_empty();
        if let Some(last) = page.last() {
            position = last.global_position;
            let mut relevant = Vec::new();
            for event in page {
                let Ok(decoded) = AnyEvent::decode(&event.event_type, event.schema_version, event.data.clone()) else {
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
                        None => relevant.push((event, decoded)),
                    }
                    continue;
                }
                if matches!(decoded, AnyEvent::Run(_) | AnyEvent::Subscription(_)) {
                    relevant.push((event, decoded));
                }
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
            let decoded = domain::AggregateEvent::decode(&e.event_type, e.schema_version, e.data.clone()).ok()?;
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
    /// The position of its `RunRequested`: publication order within the lane.
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
    slow_down: Duration,
    /// The first failure since the last success, from the events.
    failing_since: Option<DateTime<Utc>>,
    /// The subscription's settings as of the last pass: what blocks the lane.
    limit: u32,
    rate: Option<u32>,
    strict: bool,
}

impl Lane {
    fn new() -> Self {
        Self {
            pending: BTreeSet::new(),
            due: BTreeSet::new(),
            in_flight: 0,
            tokens: 1.0,
            refilled: Instant::now(),
            paused_until: None,
            slow_down: FIRST_SLOW_DOWN,
            failing_since: None,
            limit: 1,
            rate: None,
            strict: false,
        }
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
    runs: HashMap<String, RunEntry>,
    lanes: HashMap<LaneKey, Lane>,
    in_flight_total: usize,
}

impl Schedule {
    fn apply(&mut self, event: &EventEnvelope, decoded: &AnyEvent) {
        match decoded {
            AnyEvent::Run(RunEvent::RunRequested(requested)) => {
                if requested.operation != DELIVER_WEBHOOK_OPERATION || self.runs.contains_key(&requested.run_id) {
                    return;
                }
                let Some(subscription_id) = requested.input.get("subscriptionId").and_then(Value::as_str) else {
                    return;
                };
                let lane = (event.tenant_id.clone(), subscription_id.to_owned());
                let entry = RunEntry {
                    tenant_id: event.tenant_id.clone(),
                    lane: lane.clone(),
                    position: event.global_position,
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
                let run_id = run_id_of(run_event);
                let Some(entry) = self.runs.get_mut(run_id) else { return };
                entry.state = Run::evolve(std::mem::take(&mut entry.state), run_event);
                entry.applied_position = event.global_position;
                if let Some(lane) = self.lanes.get_mut(&entry.lane) {
                    match run_event {
                        RunEvent::RunAttemptFailed(failed) => {
                            lane.failing_since.get_or_insert(failed.failed_at);
                        }
                        RunEvent::RunCompleted(_) => lane.failing_since = None,
                        _ => {}
                    }
                }
                let run_id = run_id.to_owned();
                self.requeue(&run_id);
            }
            AnyEvent::Subscription(SubscriptionEvent::WebhookSubscriptionDeactivated(d)) => {
                // Its pending runs are failed by the next pass (the directory says inactive).
                let key = (event.tenant_id.clone(), d.subscription_id.clone());
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
                    lane.slow_down = FIRST_SLOW_DOWN;
                }
                if let Some(retry_after) = slow_down {
                    // Overloaded: pause the lane, longer each time in a row, at least as long
                    // as the endpoint asked (within bounds).
                    let asked = retry_after.unwrap_or_default().min(self.shared.settings.max_retry_after);
                    let pause = lane.slow_down.max(asked);
                    lane.paused_until = Some(Instant::now() + pause);
                    lane.slow_down = (lane.slow_down * 2).min(MAX_SLOW_DOWN);
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
            Outcome::Recheck => entry.not_before = Some(Utc::now() + delta(RECHECK)),
        }
        self.requeue(&done.run_id);
    }

    /// Starts every attempt that is due and allowed by its lane's limits.
    fn start_due(&mut self) {
        let now = Utc::now();
        let instant = Instant::now();
        let keys: Vec<LaneKey> = self.lanes.keys().cloned().collect();
        for key in keys {
            let subscription = self.shared.directory.subscription(&key.0, &key.1);
            let Some(lane) = self.lanes.get_mut(&key) else { continue };
            let Some(subscription) = subscription.filter(|s| s.active) else {
                // Nothing more goes to an inactive (or unknown) subscription: its runs end as
                // failed, and can be redelivered once it is active again.
                let due: Vec<(DateTime<Utc>, u64, String)> = std::mem::take(&mut lane.due).into_iter().collect();
                for (_, _, run_id) in due {
                    let reason = format!("subscription {} is inactive or does not exist", key.1);
                    self.launch(&key, &run_id, Job::Cancel(reason));
                }
                continue;
            };
            let settings = subscription.delivery;
            lane.limit = if settings.strict_ordering { 1 } else { settings.max_in_flight };
            lane.rate = settings.rate_limit_per_second;
            lane.strict = settings.strict_ordering;
            loop {
                if self.in_flight_total >= self.shared.settings.max_in_flight_total {
                    return;
                }
                let Some(lane) = self.lanes.get_mut(&key) else { break };
                if lane.paused_until.is_some_and(|until| until > instant) {
                    break;
                }
                let limit = if settings.strict_ordering { 1 } else { settings.max_in_flight };
                if lane.in_flight >= limit {
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
                let failing_since = lane.failing_since;
                self.launch(&key, &item.2, Job::Attempt { failing_since });
            }
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
        let utc_now = Utc::now();
        let mut wake = now + MAX_IDLE;
        for lane in self.lanes.values() {
            let front = if lane.strict {
                // Only the oldest message may go: its due time, if it is queued.
                lane.pending.iter().next().and_then(|(_, id)| self.runs.get(id)).and_then(|e| e.queued_at)
            } else {
                lane.due.iter().next().map(|(at, ..)| *at)
            };
            let Some(at) = front else { continue };
            if lane.in_flight >= lane.limit {
                // A finishing attempt wakes the scheduler.
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
            wake = wake.min(ready.max(now + Duration::from_millis(1)));
        }
        wake
    }
}

fn run_id_of(event: &RunEvent) -> &str {
    match event {
        RunEvent::RunRequested(e) => &e.run_id,
        RunEvent::RunStarted(e) => &e.run_id,
        RunEvent::RunAttemptFailed(e) => &e.run_id,
        RunEvent::RunCompleted(e) => &e.run_id,
        RunEvent::RunFailed(e) => &e.run_id,
        RunEvent::RunRedeliveryRequested(e) => &e.run_id,
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
}

/// Why an attempt could not be prepared: `retry` when trying again later may help.
struct NotSendable {
    error: String,
    retry: bool,
}

impl AttemptTask {
    fn ctx(&self) -> CommandContext {
        CommandContext {
            tenant_id: self.tenant_id.clone(),
            trace_id: self.trace_id.clone(),
            correlation_id: self.trace_id.clone(),
            causation_id: None,
            actor: Actor { subject: format!("worker:{}", self.shared.settings.worker_id), client_id: None },
        }
    }

    fn stream(&self) -> String {
        stream_id(&self.tenant_id, &self.run_id)
    }

    async fn run(self, job: Job) -> Outcome {
        match job {
            Job::Cancel(reason) => {
                let fail = RunCommand::Fail { run_id: self.run_id.clone(), error: reason, failed_at: Utc::now() };
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
        let started_at = Utc::now();
        let start = RunCommand::StartAttempt(StartAttempt {
            run_id: self.run_id.clone(),
            worker_id: settings.worker_id.clone(),
            started_at,
            lease_expires_at: started_at + delta(settings.attempt_timeout + settings.lease_grace),
            max_attempts: settings.max_attempts(),
        });
        let started = match self.shared.commands.execute::<Run>(&self.ctx(), &self.stream(), &start).await {
            Ok(started) => started,
            Err(CommandError::Rejected(DomainError::InvalidTransition { .. })) => return Outcome::Recheck,
            Err(error) => {
                tracing::warn!(run_id = %self.run_id, %error, "webhook run: starting an attempt failed");
                return Outcome::Recheck;
            }
        };
        let RunState::Exists { attempts: attempt, attempts_before_redelivery, .. } = started.state else {
            return Outcome::Recheck;
        };
        if started.state.is_finished() {
            tracing::warn!(run_id = %self.run_id, "webhook dead-lettered: no attempt left");
            return Outcome::Recorded { position: started.last_position, success: false, slow_down: None };
        }
        let request = match self.prepare(started_at).await {
            Ok(request) => request,
            Err(NotSendable { error, retry }) => {
                let next = retry.then(|| settings.next_delay(attempt - attempts_before_redelivery, None)).flatten();
                let fail = FailAttempt {
                    run_id: self.run_id.clone(),
                    attempt,
                    error,
                    failed_at: Utc::now(),
                    next_attempt_at: next.map(|d| Utc::now() + delta(d)),
                };
                return self.record(&RunCommand::FailAttempt(fail), false, None).await;
            }
        };
        let result = outbound_webhooks::send(&self.shared.client, &request, settings.attempt_timeout).await;
        let finished_at = Utc::now();
        let response = AttemptResponse {
            status_code: result.status,
            latency_ms: u64::try_from(result.latency.as_millis()).unwrap_or(u64::MAX),
            response_body: result.body_excerpt.clone(),
        };
        tracing::debug!(run_id = %self.run_id, attempt, status = ?result.status, "webhook attempt");
        if result.verdict == Verdict::Delivered {
            let complete = RunCommand::Complete {
                run_id: self.run_id.clone(),
                attempt,
                output: json!({
                    "statusCode": response.status_code,
                    "latencyMs": response.latency_ms,
                    "responseBody": response.response_body,
                    "webhookId": request.webhook_id,
                }),
                completed_at: finished_at,
            };
            return self.record(&complete, true, None).await;
        }
        let counted = attempt - attempts_before_redelivery;
        let (next, slow_down) = match &result.verdict {
            Verdict::Retry { retry_after, slow_down } => {
                (settings.next_delay(counted, *retry_after), slow_down.then_some(*retry_after))
            }
            Verdict::AbortMessage | Verdict::Deactivate { .. } | Verdict::Delivered => (None, None),
        };
        let error = result.error.clone().unwrap_or_else(|| "the delivery failed".into());
        let fail = FailAttempt {
            run_id: self.run_id.clone(),
            attempt,
            error,
            failed_at: finished_at,
            next_attempt_at: next.map(|d| finished_at + delta(d)),
        };
        let outcome = self.record(&RunCommand::FailAttemptWithResponse(fail, response), false, slow_down).await;
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
            match self.shared.commands.deactivate_subscription(&self.ctx(), &self.subscription_id, &reason).await {
                Ok(true) => {
                    tracing::warn!(subscription_id = %self.subscription_id, %reason, "subscription deactivated")
                }
                Ok(false) => {}
                Err(error) => tracing::warn!(subscription_id = %self.subscription_id, %error, "deactivating failed"),
            }
        }
        outcome
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
        let events = self
            .shared
            .store
            .read_stream(source_stream)
            .await
            .map_err(|e| retry(format!("reading the message: {e}")))?;
        let event = events
            .iter()
            .find(|e| e.event_id.to_string() == source_event)
            .ok_or_else(|| permanent(format!("the message's event {source_event} is not in {source_stream}")))?;
        let mut message = message_of(event, &self.shared.directory)
            .ok_or_else(|| permanent(format!("event {source_event} is not a message")))?;
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

fn delta(duration: Duration) -> TimeDelta {
    TimeDelta::from_std(duration).unwrap_or(TimeDelta::MAX)
}

async fn pause(delay: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        () = shutdown.cancelled() => false,
        () = tokio::time::sleep(delay) => true,
    }
}
