//! Partition handover in a consumer group, against librdkafka's mock cluster
//! (`rdkafka::mocking::MockCluster`: classic consumer groups with JoinGroup/SyncGroup/Heartbeat/
//! LeaveGroup, session timeouts and offset commits, in-process, no broker to install).
//!
//! The broker of the end-to-end tests (tansu 0.6.0) does not give a killed member's partitions to
//! the survivor, so `tests/e2e/kafka_bus.rs` cannot show the handover; these tests show that the
//! engine's own consumers hand over correctly when the group coordinator does its part. Each test
//! runs two members of one group, built the way the `worker` builds them ([`KafkaFeed::subscribe`]
//! driven by [`run_consumer_with`] for the run executor, [`run_commands_consumer`] for the
//! commands), on a topic of [`PARTITIONS`] partitions with messages on every partition. Once both
//! have had some, one of them stops without committing what it has in hand: dropped, or killed
//! with SIGKILL in a process of its own. Messages keep coming. The other member then gets every
//! partition, the stopped member's uncommitted messages (at least once) and every later message;
//! none is lost, and what the stopped member committed does not come again.
//!
//! Every wait has a deadline, so a broken handover fails the test instead of hanging it.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::Utc;
use commands::{Commands, SystemClock};
use domain::{Actor, EventEnvelope, NewEvent};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{DefaultProducerContext, FutureProducer, FutureRecord};
use serde_json::json;
use store::{EventStore, ExpectedVersion, MasterKey, SqliteVault, StoreError, StreamAppend};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use workers::control_plane::ControlPlane;
use workers::kafka::run_commands_consumer;
use workers::messages::{COMMANDS_DLQ_TOPIC, COMMANDS_TOPIC, CloudEvent, EVENTS_TOPIC, SCHEMA_VERSION_HEADER};
use workers::{ConsumerOptions, EventFeed, EventHandler, FeedError, KafkaFeed, KafkaSettings, run_consumer_with};

/// Partitions of the topics; each of the two members gets two.
const PARTITIONS: i32 = 4;
/// Short, so the group notices a killed member within seconds (the mock checks every second).
/// Not shorter: the mock holds the first JoinGroup for 3 s (its `group.initial.rebalance.delay.ms`,
/// which rdkafka's `MockCluster` cannot change) without counting the wait as activity, and
/// evicts members whose session runs out meanwhile.
const SESSION_TIMEOUT: Duration = Duration::from_secs(4);
/// The longest any single step may take before the test fails.
const WAIT: Duration = Duration::from_secs(30);
/// The run executor's consumer name, as the worker uses it.
const RUN_EXECUTOR: &str = "run-executor";
/// How many events the feed that is stopped takes at a time.
const BATCH: usize = 3;
/// Environment of the member process of the crash test (see [`member_process`]).
const MEMBER_BROKERS_ENV: &str = "KAFKA_HANDOVER_MEMBER_BROKERS";
/// The prefix of the member process's reports on its stdout.
const REPORT: &str = "handover-member:";
const TENANT: &str = "tenant-a";

/// A mock cluster of three brokers with the engine's topics.
fn mock_cluster() -> MockCluster<'static, DefaultProducerContext> {
    let cluster = MockCluster::new(3).expect("mock cluster");
    for topic in [EVENTS_TOPIC, COMMANDS_TOPIC] {
        cluster.create_topic(topic, PARTITIONS, 1).expect("topic");
    }
    cluster.create_topic(COMMANDS_DLQ_TOPIC, 1, 1).expect("dead-letter topic");
    cluster
}

/// The engine's settings, with a short session timeout.
fn settings(brokers: &str) -> KafkaSettings {
    let mut settings = KafkaSettings::new(brokers);
    settings.group_prefix = "handover-test".into();
    settings.partitions = PARTITIONS;
    settings.session_timeout = SESSION_TIMEOUT;
    settings.message_timeout = Duration::from_secs(10);
    settings
}

/// Awaits `future`, failing the test after [`WAIT`].
async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, future).await.unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// What a [`Publisher`] publishes.
#[derive(Debug, Clone, Copy)]
enum Messages {
    /// Events on `integration.events.v1`, as the relay publishes them.
    Events,
    /// `StartRun` commands on `integration.commands.v1`, each for a connection of its own,
    /// `conn-{number}` (none exists, so each is dead-lettered as unauthorised).
    Commands,
}

/// Publishes numbered messages to chosen partitions, one stream (key) per partition, and
/// remembers each message's partition by its number (an event's global position, or the number
/// in a command's connection id).
struct Publisher {
    messages: Messages,
    producer: FutureProducer,
    next: u64,
    stream_versions: BTreeMap<i32, u64>,
    produced: BTreeMap<u64, i32>,
}

impl Publisher {
    fn new(settings: &KafkaSettings, messages: Messages) -> Self {
        let producer = settings.producer().expect("producer");
        Self { messages, producer, next: 1, stream_versions: BTreeMap::new(), produced: BTreeMap::new() }
    }

    /// One message on each partition, acknowledged by the broker.
    async fn round(&mut self) {
        for partition in 0..PARTITIONS {
            let number = self.next;
            self.next += 1;
            let stream_version = self.stream_versions.entry(partition).or_default();
            *stream_version += 1;
            let key = format!("{TENANT}/stream-{partition}");
            let (topic, value, headers) = match self.messages {
                Messages::Events => {
                    let envelope = EventEnvelope {
                        event_id: Uuid::now_v7(),
                        event_type: "TestHappened".into(),
                        schema_version: 1,
                        stream_id: key.clone(),
                        stream_version: *stream_version,
                        global_position: number,
                        tenant_id: TENANT.into(),
                        occurred_at: Utc::now(),
                        trace_id: "trace-4bf92f3577b34da6a3ce929d0e0e4736".into(),
                        correlation_id: format!("corr-{number}"),
                        causation_id: None,
                        actor: Actor::system(),
                        prev_hash: "0".repeat(64),
                        hash: "0".repeat(64),
                        data: json!({ "partition": partition }).into(),
                    };
                    (
                        EVENTS_TOPIC,
                        serde_json::to_vec(&CloudEvent::from_envelope(&envelope)).unwrap(),
                        OwnedHeaders::new(),
                    )
                }
                Messages::Commands => {
                    let command = json!({
                        "type": "StartRun", "tenantId": TENANT, "connectionId": format!("conn-{number}"),
                        "operation": "http.request", "idempotencyKey": format!("key-{number}"), "input": {}
                    });
                    let headers = OwnedHeaders::new().insert(Header { key: SCHEMA_VERSION_HEADER, value: Some("1") });
                    (COMMANDS_TOPIC, serde_json::to_vec(&command).unwrap(), headers)
                }
            };
            let record = FutureRecord::to(topic).partition(partition).key(&key).payload(&value).headers(headers);
            within("publishing a message", self.producer.send(record, Duration::from_secs(10)))
                .await
                .unwrap_or_else(|(error, _)| panic!("publishing message {number}: {error}"));
            self.produced.insert(number, partition);
        }
    }

    /// Publishes a round every 50 ms until `stop`; returns itself with everything published.
    fn keep_publishing(mut self, stop: CancellationToken) -> tokio::task::JoinHandle<Self> {
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                self.round().await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            self
        })
    }
}

/// A message the surviving member handled: its number and partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Delivery {
    number: u64,
    partition: i32,
    /// Whether it came after the other member was stopped.
    after_handover: bool,
}

/// Where the surviving member's handler reports what it is given.
#[derive(Clone)]
struct Reporter {
    deliveries: mpsc::UnboundedSender<Delivery>,
    handed_over: Arc<AtomicBool>,
}

impl Reporter {
    fn report(&self, number: u64, partition: i32) {
        let after_handover = self.handed_over.load(Ordering::SeqCst);
        let _ = self.deliveries.send(Delivery { number, partition, after_handover });
    }
}

/// What the surviving member has handled, by message number (the first delivery of each).
struct Deliveries {
    receiver: mpsc::UnboundedReceiver<Delivery>,
    received: BTreeMap<u64, Delivery>,
    handed_over: Arc<AtomicBool>,
}

impl Deliveries {
    fn new() -> (Self, Reporter) {
        let (deliveries, receiver) = mpsc::unbounded_channel();
        let handed_over = Arc::new(AtomicBool::new(false));
        let reporter = Reporter { deliveries, handed_over: Arc::clone(&handed_over) };
        (Self { receiver, received: BTreeMap::new(), handed_over }, reporter)
    }

    /// From now on, what arrives is tagged as coming after the handover.
    fn mark_handover(&self) {
        self.handed_over.store(true, Ordering::SeqCst);
    }

    /// Waits until `done` holds for what has been handled; fails the test after [`WAIT`].
    async fn wait_until(&mut self, what: &str, done: impl Fn(&BTreeMap<u64, Delivery>) -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !done(&self.received) {
            match tokio::time::timeout_at(deadline, self.receiver.recv()).await {
                Ok(Some(delivery)) => {
                    self.received.entry(delivery.number).or_insert(delivery);
                }
                Ok(None) => panic!("the surviving member stopped"),
                Err(_) => panic!("timed out waiting until {what}; the survivor handled {:?}", self.received.keys()),
            }
        }
    }

    /// Waits until the survivor has handled messages of every partition since the handover.
    async fn wait_for_every_partition_after_handover(&mut self) {
        self.wait_until("the survivor reads every partition after the handover", |received| {
            received.values().filter(|d| d.after_handover).map(|d| d.partition).collect::<BTreeSet<_>>().len()
                == PARTITIONS as usize
        })
        .await;
    }
}

/// A consumer running in a task until its shutdown token is cancelled.
struct Running {
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), FeedError>>,
}

impl Running {
    /// Stops it the way the worker does on SIGTERM.
    async fn stop(self) {
        self.shutdown.cancel();
        within("a consumer to stop", self.task).await.expect("consumer task").expect("consumer");
    }
}

/// What the stopped member had when it stopped.
#[derive(Debug, Default)]
struct Victim {
    /// Every message it took, by number, with its partition.
    received: BTreeMap<u64, i32>,
    /// The messages whose offsets it committed.
    committed: BTreeSet<u64>,
}

impl Victim {
    /// Taken and not committed: in hand when it stopped.
    fn in_flight(&self) -> BTreeSet<u64> {
        self.received.keys().filter(|n| !self.committed.contains(n)).copied().collect()
    }

    fn partitions(&self) -> BTreeSet<i32> {
        self.received.values().copied().collect()
    }
}

/// Whether every message published is with the survivor or was committed by the stopped member.
fn all_accounted_for(produced: &BTreeMap<u64, i32>, victim: &Victim, survivor: &BTreeMap<u64, Delivery>) -> bool {
    produced.keys().all(|n| survivor.contains_key(n) || victim.committed.contains(n))
}

/// The checks after the handover, common to all tests.
fn check_handover(produced: &BTreeMap<u64, i32>, victim: &Victim, survivor: &BTreeMap<u64, Delivery>) {
    let before: BTreeMap<u64, i32> =
        survivor.values().filter(|d| !d.after_handover).map(|d| (d.number, d.partition)).collect();
    let after: BTreeMap<u64, i32> =
        survivor.values().filter(|d| d.after_handover).map(|d| (d.number, d.partition)).collect();
    println!(
        "published {}, survivor handled {} before and {} after the handover, the stopped member took {} \
         (partitions {:?}) and committed {}",
        produced.len(),
        before.len(),
        after.len(),
        victim.received.len(),
        victim.partitions(),
        victim.committed.len()
    );

    // Both members had some of the topic before one of them stopped.
    assert!(!before.is_empty(), "the survivor handled nothing before the handover");
    assert!(!victim.received.is_empty(), "the stopped member took nothing");
    assert!(!victim.committed.is_empty(), "the stopped member committed nothing");
    let before_partitions: BTreeSet<i32> = before.values().copied().collect();
    assert!(
        before_partitions.len() < PARTITIONS as usize || victim.partitions().len() < PARTITIONS as usize,
        "the two members did not share the partitions"
    );

    // After the handover the survivor reads every partition, the stopped member's included.
    let after_partitions: BTreeSet<i32> = after.values().copied().collect();
    assert_eq!(
        after_partitions,
        (0..PARTITIONS).collect::<BTreeSet<_>>(),
        "partitions the survivor read after the handover (the stopped member had {:?})",
        victim.partitions()
    );

    // At least once: what the stopped member had in hand, uncommitted, comes to the survivor
    // (unless the survivor had it already, from a rebalance while the group formed).
    let in_flight = victim.in_flight();
    let redelivered: BTreeSet<u64> = in_flight.iter().filter(|n| !before.contains_key(n)).copied().collect();
    assert!(!redelivered.is_empty(), "nothing of the stopped member's in-hand messages {in_flight:?} to redeliver");
    let missing: Vec<u64> = redelivered.iter().filter(|n| !after.contains_key(n)).copied().collect();
    assert!(missing.is_empty(), "messages the stopped member had in hand never came to the survivor: {missing:?}");

    // Its commits hold: what it committed does not come again.
    let again: Vec<u64> = victim.committed.iter().filter(|n| after.contains_key(n)).copied().collect();
    assert!(again.is_empty(), "messages the stopped member committed came again: {again:?}");

    // Nothing is lost: every message was handled by the survivor or committed by the stopped member.
    let lost: Vec<(u64, i32)> = produced
        .iter()
        .filter(|(n, _)| !survivor.contains_key(n) && !victim.committed.contains(n))
        .map(|(n, partition)| (*n, *partition))
        .collect();
    assert!(lost.is_empty(), "messages lost (number, partition): {lost:?}");
}

// ---------------------------------------------------------------------------------------------
// The run executor's feed.

fn partition_of(event: &EventEnvelope) -> i32 {
    event.data["partition"].as_i64().and_then(|p| i32::try_from(p).ok()).expect("partition in the event's data")
}

/// The surviving feed's handler: reports every event it is given.
struct Recorder(Reporter);

#[async_trait]
impl EventHandler for Recorder {
    type Error = Infallible;

    async fn handle(&self, event: &EventEnvelope) -> Result<(), Infallible> {
        self.0.report(event.global_position, partition_of(event));
        Ok(())
    }
}

/// The surviving member of the feed tests: a [`KafkaFeed`] driven by the worker's consumer loop
/// ([`run_consumer_with`] commits each batch once it is handled), as the `worker` runs it.
fn start_surviving_feed(settings: &KafkaSettings) -> (Running, Deliveries) {
    let (deliveries, reporter) = Deliveries::new();
    let feed = KafkaFeed::subscribe(settings, RUN_EXECUTOR).expect("survivor's feed");
    let shutdown = CancellationToken::new();
    let options = ConsumerOptions { batch_size: 10, ..ConsumerOptions::default() };
    let task = tokio::spawn(run_consumer_with(feed, Recorder(reporter), options, shutdown.clone()));
    (Running { shutdown, task }, deliveries)
}

/// Two [`KafkaFeed`]s in one group; one takes a batch and commits it, takes the next and is
/// dropped with it in hand (closing the consumer leaves the group; nothing is committed). The
/// group gives its partitions to the other, which receives the dropped feed's uncommitted events
/// and everything published after, on every partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dropped_feeds_partitions_and_uncommitted_events_go_to_the_other_member() {
    let cluster = mock_cluster();
    let settings = settings(&cluster.bootstrap_servers());
    let (survivor, mut deliveries) = start_surviving_feed(&settings);
    let mut victim_feed = KafkaFeed::subscribe(&settings, RUN_EXECUTOR).expect("second feed");
    let stop = CancellationToken::new();
    let publishing = Publisher::new(&settings, Messages::Events).keep_publishing(stop.clone());

    // The second member takes a batch and commits it, then takes another and keeps it in hand.
    let mut victim = Victim::default();
    let first = within("the second member's first batch", victim_feed.next_batch(BATCH)).await.unwrap();
    victim.received.extend(first.iter().map(|e| (e.global_position, partition_of(e))));
    let last = first.last().unwrap().global_position;
    within("the second member's commit", victim_feed.commit(last)).await.unwrap();
    victim.committed.extend(first.iter().map(|e| e.global_position));
    let in_hand = within("the second member's next batch", victim_feed.next_batch(BATCH)).await.unwrap();
    victim.received.extend(in_hand.iter().map(|e| (e.global_position, partition_of(e))));
    deliveries.wait_until("the survivor handles events too", |received| !received.is_empty()).await;

    // Dropped with its batch in hand while events keep coming.
    deliveries.mark_handover();
    within("dropping the second member", tokio::task::spawn_blocking(move || drop(victim_feed))).await.unwrap();
    deliveries.wait_for_every_partition_after_handover().await;
    stop.cancel();
    let produced = within("the publisher to stop", publishing).await.unwrap().produced;
    deliveries
        .wait_until("every event is with the survivor or committed by the dropped member", |received| {
            all_accounted_for(&produced, &victim, received)
        })
        .await;
    check_handover(&produced, &victim, &deliveries.received);
    survivor.stop().await;
}

/// The stopped member of [`a_killed_feeds_partitions_go_to_the_other_member_after_the_session_timeout`]:
/// a [`KafkaFeed`] in a process of its own, reporting on stdout what it takes and commits. It
/// takes a batch and commits it (again with the next batch if a rebalance refused the commit),
/// then takes batches without committing until it is killed.
/// Without [`MEMBER_BROKERS_ENV`] (a plain `cargo test -- --ignored`) it does nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by a_killed_feeds_partitions_go_to_the_other_member_after_the_session_timeout in a child process"]
async fn member_process() {
    let Ok(brokers) = std::env::var(MEMBER_BROKERS_ENV) else { return };
    let report = |what: &str, events: &[EventEnvelope]| {
        for event in events {
            println!("{REPORT} {what} {} {}", event.global_position, partition_of(event));
        }
    };
    // Never outlives its test, even if that dies without killing it.
    let _ = tokio::time::timeout(Duration::from_secs(90), async {
        let mut feed = KafkaFeed::subscribe(&settings(&brokers), RUN_EXECUTOR).expect("member's feed");
        // Until a commit holds: one a rebalance refuses (the group is still forming) leaves its
        // batch uncommitted, to come again to the partitions' next owner.
        loop {
            let batch = feed.next_batch(BATCH).await.expect("batch");
            report("got", &batch);
            let refused = feed.commits_refused();
            feed.commit(batch.last().unwrap().global_position).await.expect("commit");
            if feed.commits_refused() == refused {
                report("committed", &batch);
                break;
            }
        }
        loop {
            let batch = feed.next_batch(BATCH).await.expect("batch");
            report("got", &batch);
        }
    })
    .await;
}

/// The member process of the crash test; killed (SIGKILL) on drop if still running.
struct MemberProcess {
    child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
}

impl MemberProcess {
    fn spawn(brokers: &str) -> Self {
        let mut child = Command::new(std::env::current_exe().expect("test binary"))
            .args(["member_process", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
            .env(MEMBER_BROKERS_ENV, brokers)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("member process");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let (out, err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
        let (lines, text) = (Arc::clone(&stdout), Arc::clone(&stderr));
        let readers = vec![
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    lines.lock().unwrap().push(line);
                }
            }),
            std::thread::spawn(move || {
                let mut all = String::new();
                let _ = BufReader::new(err).read_to_string(&mut all);
                text.lock().unwrap().push_str(&all);
            }),
        ];
        Self { child, stdout, stderr, readers }
    }

    /// What it reported so far.
    fn victim(&self) -> Victim {
        let mut victim = Victim::default();
        for line in self.stdout.lock().unwrap().iter() {
            let Some(report) = line.strip_prefix(REPORT) else { continue };
            let fields: Vec<&str> = report.split_whitespace().collect();
            let [what, position, partition] = fields[..] else { panic!("bad report {line:?}") };
            let (position, partition) = (position.parse().unwrap(), partition.parse().unwrap());
            match what {
                "got" => {
                    victim.received.insert(position, partition);
                }
                "committed" => {
                    victim.committed.insert(position);
                }
                _ => panic!("bad report {line:?}"),
            }
        }
        victim
    }

    /// Fails the test if it exited.
    fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            std::thread::sleep(Duration::from_millis(100));
            panic!("the member process exited ({status}): {}", self.stderr.lock().unwrap());
        }
    }

    /// SIGKILL: no commit, no LeaveGroup, no goodbye. Returns what it reported before.
    fn kill(mut self) -> Victim {
        self.child.kill().expect("kill the member process");
        let deadline = Instant::now() + WAIT;
        while self.child.try_wait().expect("member process status").is_none()
            || self.readers.iter().any(|r| !r.is_finished())
        {
            assert!(Instant::now() < deadline, "the killed member process did not go away");
            std::thread::sleep(Duration::from_millis(10));
        }
        self.victim()
    }
}

impl Drop for MemberProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A [`KafkaFeed`] in its own process is killed (SIGKILL: no commit, no LeaveGroup) with events
/// in hand while events keep coming. After the session timeout the group gives its partitions to
/// the other member, which receives its uncommitted events and everything published after, on
/// every partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_feeds_partitions_go_to_the_other_member_after_the_session_timeout() {
    let cluster = mock_cluster();
    let brokers = cluster.bootstrap_servers();
    let settings = settings(&brokers);
    let (survivor, mut deliveries) = start_surviving_feed(&settings);
    let mut member = MemberProcess::spawn(&brokers);
    let stop = CancellationToken::new();
    let publishing = Publisher::new(&settings, Messages::Events).keep_publishing(stop.clone());

    // Until the member has committed a batch and holds uncommitted events, and the survivor
    // has events too.
    let deadline = Instant::now() + WAIT;
    loop {
        member.assert_running();
        let victim = member.victim();
        if !victim.committed.is_empty() && !victim.in_flight().is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "timed out waiting for the member process: {victim:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    deliveries.wait_until("the survivor handles events too", |received| !received.is_empty()).await;

    deliveries.mark_handover();
    let killed_at = Instant::now();
    let victim = member.kill();
    deliveries.wait_for_every_partition_after_handover().await;
    let handover = killed_at.elapsed();
    stop.cancel();
    let produced = within("the publisher to stop", publishing).await.unwrap().produced;
    deliveries
        .wait_until("every event is with the survivor or committed by the killed member", |received| {
            all_accounted_for(&produced, &victim, received)
        })
        .await;
    check_handover(&produced, &victim, &deliveries.received);
    // The group waited for the session timeout: the dead member did not leave, it went silent.
    assert!(handover >= SESSION_TIMEOUT, "handed over after {handover:?}, before the session timeout");
    println!("handed over {handover:?} after the kill");
    survivor.stop().await;
}

// ---------------------------------------------------------------------------------------------
// The commands consumer.

/// The event store of a commands consumer's `ControlPlane`: it finds no connection (so every
/// `StartRun` is dead-lettered as unauthorised) and tells who handled which command, by the
/// connection the handler looks up. The store of the member that is stopped holds the lookup
/// after `completes` commands forever: a command in hand.
struct WitnessStore {
    witness: Witness,
    completes: usize,
    lookups: AtomicUsize,
}

enum Witness {
    Survivor(Reporter),
    Victim(Arc<Mutex<Victim>>),
}

impl WitnessStore {
    fn handler(witness: Witness, completes: usize, vault: &tempfile::TempDir) -> ControlPlane {
        let store = Arc::new(Self { witness, completes, lookups: AtomicUsize::new(0) });
        let vault = SqliteVault::open(&vault.path().join("vault.db"), MasterKey::generate().unwrap()).unwrap();
        let commands = Commands::new(store, Arc::new(vault), Arc::new(SystemClock));
        ControlPlane::new(commands, Actor { subject: "kafka:integration.commands.v1".into(), client_id: None })
    }
}

#[async_trait]
impl EventStore for WitnessStore {
    async fn append(&self, _: &str, _: ExpectedVersion, _: Vec<NewEvent>) -> Result<Vec<EventEnvelope>, StoreError> {
        unreachable!("no run is requested: no connection exists")
    }

    async fn append_streams(&self, _: Vec<StreamAppend>) -> Result<Vec<Vec<EventEnvelope>>, StoreError> {
        unreachable!("no run is requested: no connection exists")
    }

    async fn read_stream(&self, stream_id: &str) -> Result<Vec<EventEnvelope>, StoreError> {
        let number: u64 = stream_id
            .strip_prefix(&format!("{TENANT}/conn-"))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("unexpected stream {stream_id}"));
        // Commands are numbered in rounds of one per partition, from 1.
        let partition = i32::try_from((number - 1) % PARTITIONS as u64).unwrap();
        match &self.witness {
            Witness::Survivor(reporter) => reporter.report(number, partition),
            Witness::Victim(victim) => {
                victim.lock().unwrap().received.insert(number, partition);
                if self.lookups.fetch_add(1, Ordering::SeqCst) >= self.completes {
                    std::future::pending::<()>().await;
                }
                // The consumer handles one command at a time and commits it before it takes the
                // next, so a completed command is committed once the next one is in hand.
                victim.lock().unwrap().committed.insert(number);
            }
        }
        Ok(Vec::new())
    }

    async fn read_all(&self, _: u64, _: usize) -> Result<Vec<EventEnvelope>, StoreError> {
        unreachable!("the handler reads streams only")
    }

    async fn head_position(&self) -> Result<u64, StoreError> {
        unreachable!("the handler reads streams only")
    }

    fn watch_head(&self) -> watch::Receiver<u64> {
        unreachable!("the handler reads streams only")
    }
}

/// A commands consumer, as the worker runs it, in a task.
fn start_commands_consumer(settings: &KafkaSettings, handler: ControlPlane) -> Running {
    let shutdown = CancellationToken::new();
    let (settings, token) = (settings.clone(), shutdown.clone());
    let task = tokio::spawn(async move { run_commands_consumer(&settings, handler, token).await });
    Running { shutdown, task }
}

/// Two commands consumers in one group; one handles two commands (each dead-lettered, then
/// committed), gets stuck in the third, and is dropped with it in hand (aborted: the consumer
/// closes and leaves the group; the command is not committed). The group gives its partitions to
/// the other, which handles the stuck command and every command published after, on every
/// partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dropped_commands_consumers_partitions_and_command_in_hand_go_to_the_other_member() {
    let cluster = mock_cluster();
    let settings = settings(&cluster.bootstrap_servers());
    let vault = tempfile::tempdir().unwrap();
    let (mut deliveries, reporter) = Deliveries::new();
    let survivor = start_commands_consumer(&settings, WitnessStore::handler(Witness::Survivor(reporter), 0, &vault));
    let victim = Arc::new(Mutex::new(Victim::default()));
    let victim_handler = WitnessStore::handler(Witness::Victim(Arc::clone(&victim)), 2, &vault);
    let dropped = start_commands_consumer(&settings, victim_handler);
    let stop = CancellationToken::new();
    let publishing = Publisher::new(&settings, Messages::Commands).keep_publishing(stop.clone());

    let deadline = Instant::now() + WAIT;
    while victim.lock().unwrap().in_flight().is_empty() {
        assert!(Instant::now() < deadline, "timed out waiting for the second member to hold a command");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    deliveries.wait_until("the survivor handles commands too", |received| !received.is_empty()).await;

    deliveries.mark_handover();
    dropped.task.abort();
    let aborted = within("aborting the second member", dropped.task).await;
    assert!(aborted.is_err_and(|e| e.is_cancelled()), "the second member ended by itself");
    deliveries.wait_for_every_partition_after_handover().await;
    stop.cancel();
    let produced = within("the publisher to stop", publishing).await.unwrap().produced;
    let victim = std::mem::take(&mut *victim.lock().unwrap());
    deliveries
        .wait_until("every command is with the survivor or committed by the dropped member", |received| {
            all_accounted_for(&produced, &victim, received)
        })
        .await;
    check_handover(&produced, &victim, &deliveries.received);
    survivor.stop().await;
}
