//! The dispatcher's tests, on a real SQLite store and leases: another tenant's message, the
//! in-flight budget, one lease holder per lane, strict order, and bounded preparation and sends.

use async_trait::async_trait;
use commands::SystemClock;
use connectors::egress::EgressAllowList;
use domain::subscription::{CreateWebhookSubscription, DeliverySettings};
use store::{
    MasterKey, SecretMetadata, SecretValue, SqliteEventStore, SqliteLeases, SqliteVault, VaultError, VaultOwner,
    VersionMetadata,
};

use super::*;
use crate::fanout::handler::run_input;
use crate::fanout::webhook_run_id;

/// The tenants of these tests, each signing with a secret in its own vault.
const TENANTS: [&str; 4] = ["t", "a", "b", "attacker"];

fn signing_secret(tenant: &str) -> String {
    format!("kv://hooks-{tenant}/signing")
}
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
    async fn owner(&self, vault: &str) -> Result<Option<VaultOwner>, VaultError> {
        self.inner.owner(vault).await
    }
    async fn claim(&self, vault: &str, owner: &VaultOwner) -> Result<(), VaultError> {
        self.inner.claim(vault, owner).await
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
    for tenant in TENANTS {
        let secret = SecretRef::parse(&signing_secret(tenant)).unwrap();
        vault.put(&secret, WHSEC.as_bytes(), None).await.unwrap();
        vault.claim(&secret.vault, &VaultOwner::Tenant(tenant.into())).await.unwrap();
    }
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
            let Some(schedule) = schedule.as_deref_mut() else { continue };
            let matched = if matches!(decoded, AnyEvent::Run(_) | AnyEvent::Subscription(_)) {
                None
            } else {
                super::matched_message(&event, &self.shared.directory, &self.shared.commands).await.unwrap()
            };
            if let Some(seen) = seen(&self.shared, event, decoded, matched) {
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
            signing_secret_ref: signing_secret(tenant),
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
        let message = super::message_of(source).unwrap();
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
    let message = super::message_of(&victims).unwrap();
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
    let message = super::message_of(&own).unwrap();
    let own_input = run_input("sub-a", &message, &own);
    let run_id = webhook_run_id("attacker", "sub-a", "msg-own");
    let request = engine.task("attacker", "sub-a", &run_id, own_input).await.prepare(Utc::now()).await.ok().unwrap();
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
        assert!(matches!(events.last(), Some(RunEvent::RunFailed(f)) if f.error.contains("inactive")), "{events:?}");
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
    let message = super::message_of(&source).unwrap();
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
        directory.matching_any_project(after, tenant, "OrderPlaced").into_iter().map(|s| s.subscription_id).collect()
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
