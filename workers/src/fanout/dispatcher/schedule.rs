//! The scheduler: one task that owns every lane's state (due runs, in-flight slots, rate,
//! strict order, leases and slow-downs) and starts attempts when they are due.

use super::*;

/// (tenant, subscription id).
pub(super) type LaneKey = (String, String);

/// A webhook run that has not ended.
pub(super) struct RunEntry {
    pub(super) tenant_id: String,
    pub(super) lane: LaneKey,
    /// The position of its message in the store (of its `RunRequested` for runs requested
    /// before inputs carried it): publication order within the lane.
    pub(super) position: u64,
    pub(super) trace_id: String,
    pub(super) input: Value,
    pub(super) state: RunState,
    /// The last of its events the scheduler has applied.
    pub(super) applied_position: u64,
    /// An attempt task of this process has it.
    pub(super) in_flight: bool,
    /// Not queued again before the scheduler has seen this position (our own appends).
    pub(super) awaiting_position: u64,
    /// Not tried again before this (a start that was refused, a store error).
    pub(super) not_before: Option<DateTime<Utc>>,
    /// Its key in the lane's due set, when queued.
    pub(super) queued_at: Option<DateTime<Utc>>,
}

/// One subscription's deliveries.
pub(super) struct Lane {
    /// Every run that has not ended, by publication order (for strict ordering).
    pub(super) pending: BTreeSet<(u64, String)>,
    /// The runs waiting for their attempt, by due time.
    pub(super) due: BTreeSet<(DateTime<Utc>, u64, String)>,
    pub(super) in_flight: u32,
    pub(super) tokens: f64,
    pub(super) refilled: Instant,
    /// No attempt starts before this (the endpoint said it is overloaded).
    pub(super) paused_until: Option<Instant>,
    pub(super) slow_down: Backoff,
    /// The subscription's settings as of the last pass: what blocks the lane.
    pub(super) limit: u32,
    pub(super) rate: Option<u32>,
    pub(super) strict: bool,
    /// Until when this worker holds the lane's lease, as last granted.
    pub(super) held_until: Option<DateTime<Utc>>,
    /// A take or renewal of the lease is on its way.
    pub(super) asking: bool,
    /// Not asked again before this (another worker holds the lease, or asking failed).
    pub(super) ask_after: Instant,
}

impl Lane {
    pub(super) fn new() -> Self {
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
    pub(super) fn may_start(&self, now: DateTime<Utc>, attempt_budget: Duration) -> bool {
        self.held_until.is_some_and(|until| now + delta(attempt_budget) <= until)
    }

    /// Whether to ask for the lease now: held too briefly to keep starting attempts for long.
    pub(super) fn should_ask(&self, now: DateTime<Utc>, instant: Instant, ttl: Duration) -> bool {
        !self.asking
            && instant >= self.ask_after
            && self.held_until.is_none_or(|until| until < now + delta(ttl.mul_f64(0.75)))
    }

    /// Refills the token bucket (`rate` per second, at most `rate` tokens); true when a token
    /// is available.
    pub(super) fn has_token(&mut self, rate: Option<u32>, now: Instant) -> bool {
        let Some(rate) = rate else { return true };
        let rate = f64::from(rate);
        self.tokens = (self.tokens + now.duration_since(self.refilled).as_secs_f64() * rate).min(rate.max(1.0));
        self.refilled = now;
        self.tokens >= 1.0
    }
}

/// The answer to asking for a lane's lease.
pub(super) struct Leased {
    pub(super) lane: LaneKey,
    pub(super) asked_at: Instant,
    pub(super) answer: Result<Lease, StoreError>,
}

/// What an attempt task reports back.
pub(super) struct Done {
    pub(super) run_id: String,
    pub(super) lane: LaneKey,
    pub(super) outcome: Outcome,
}

pub(super) enum Outcome {
    /// Recorded; the scheduler waits to see `position` before queueing the run again.
    Recorded { position: Option<u64>, success: bool, slow_down: Option<Option<Duration>> },
    /// Not started or not recorded (another worker holds it, the store failed): look again later.
    Recheck,
}

/// All scheduling state, owned by the scheduler task.
pub(super) struct Schedule {
    pub(super) shared: Arc<Shared>,
    pub(super) done: mpsc::Sender<Done>,
    pub(super) leased: mpsc::Sender<Leased>,
    pub(super) runs: HashMap<String, RunEntry>,
    pub(super) lanes: HashMap<LaneKey, Lane>,
    /// The first failure since the last success, by lane, from the events. Kept apart from the
    /// lanes (dropped when idle) so a subscription failing message after message is still
    /// seen failing continuously.
    pub(super) failing_since: HashMap<LaneKey, DateTime<Utc>>,
    pub(super) in_flight_total: usize,
}

impl Schedule {
    pub(super) fn new(shared: Arc<Shared>, done: mpsc::Sender<Done>, leased: mpsc::Sender<Leased>) -> Self {
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

    pub(super) fn take(&mut self, seen: Seen) {
        match seen {
            Seen::Event(event, decoded) => self.apply(&event, &decoded),
            Seen::Message { position, runs } => self.expect(position, runs),
        }
    }

    /// Holds the places of a message's runs in strict lanes: the fan-out requests several
    /// messages' runs at once, so a later message's run may be seen before an earlier one's,
    /// and a strict lane must not send it first. A place is taken by the run once requested
    /// (same position, same id).
    pub(super) fn expect(&mut self, position: u64, runs: Vec<(LaneKey, String)>) {
        for (lane, run_id) in runs {
            if !self.runs.contains_key(&run_id) {
                self.lanes.entry(lane).or_insert_with(Lane::new).pending.insert((position, run_id));
            }
        }
    }

    pub(super) fn apply(&mut self, event: &EventEnvelope, decoded: &AnyEvent) {
        match decoded {
            AnyEvent::Run(RunEvent::RunRequested(requested)) => {
                if requested.operation != DELIVER_WEBHOOK_OPERATION || self.runs.contains_key(&requested.run_id) {
                    return;
                }
                let Some(subscription_id) = requested.input.get("subscriptionId").and_then(Value::as_str) else {
                    return;
                };
                let message_id = requested.input.get("messageId").and_then(Value::as_str).unwrap_or_default();
                if requested.run_id != crate::fanout::webhook_run_id(&event.tenant_id, subscription_id, message_id) {
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
    pub(super) fn restore(&mut self, history: &[(EventEnvelope, RunEvent)]) {
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
    pub(super) fn requeue(&mut self, run_id: &str) {
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

    pub(super) fn finished(&mut self, done: Done) {
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
    pub(super) fn start_due(&mut self) {
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
    pub(super) fn ask_for_lease(&self, lane: &LaneKey, now: DateTime<Utc>, ttl: Duration) {
        let (shared, leased, lane) = (self.shared.clone(), self.leased.clone(), lane.clone());
        tokio::spawn(async move {
            let asked_at = Instant::now();
            let name = lane_lease_name(&lane);
            let answer = shared.leases.acquire(&name, &shared.settings.worker_id, now, now + delta(ttl)).await;
            let _ = leased.send(Leased { lane, asked_at, answer }).await;
        });
    }

    pub(super) fn leased(&mut self, Leased { lane, asked_at, answer }: Leased) {
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
    pub(super) fn release(&self, lane: &LaneKey) {
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
    pub(super) async fn release_leases(&self) {
        let worker_id = &self.shared.settings.worker_id;
        for key in self.lanes.iter().filter(|(_, lane)| lane.held_until.is_some()).map(|(key, _)| key) {
            let _ = self.shared.leases.release(&lane_lease_name(key), worker_id).await;
        }
    }

    pub(super) fn launch(&mut self, lane_key: &LaneKey, run_id: &str, job: Job) {
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
    pub(super) fn next_wake(&self) -> Instant {
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
