//! The Kafka bus end to end: a real Kafka-protocol broker (tansu) on loopback, the real binary
//! (`serve --kafka-brokers`, `worker` processes), real topics.

use crate::bus_support;
use crate::support;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::runs_helpers::{TENANT, github_connection, wait_for_run};
use bus_support::{Answer, Broker, GitHubStub, Received, Worker, publish, read_topic, start_run};
use serde_json::{Value, json};
use support::{ALL_SCOPES, App, spawn_app_in};
use workers::messages::{COMMANDS_DLQ_TOPIC, COMMANDS_TOPIC, EVENTS_TOPIC, run_id_for};

/// The store's events in global order: (event id, stream id, stream version, type).
/// A stored event as the tests compare it: (event id, stream id, stream version, event type).
type StoredEvent = (String, String, u64, String);

fn stored_events(data_dir: &Path) -> Vec<StoredEvent> {
    let conn =
        rusqlite::Connection::open_with_flags(data_dir.join("events.db"), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open events.db");
    let mut statement = conn
        .prepare("SELECT event_id, stream_id, stream_version, event_type FROM events ORDER BY global_position")
        .unwrap();
    statement
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn serve_with_kafka(dir: &Path, broker: &Broker, extra: &[&str]) -> App {
    let brokers = broker.brokers();
    let mut args =
        vec!["--kafka-brokers", brokers.as_str(), "--kafka-session-timeout-ms", "6000", "--allow-private-egress"];
    args.extend_from_slice(extra);
    spawn_app_in(dir, &args)
}

fn provider(key: &str) -> Value {
    json!({"tenantId": TENANT, "key": key, "displayName": key, "category": "Communication", "authModel": "ApiKey",
        "apiClient": "ConnectSoft.Sms.Providers.Twilio", "baseUrl": "https://api.twilio.com"})
}

/// Reads the events topic until every event of the store is on it (by id).
fn read_all_events(broker: &Broker, data_dir: &Path) -> (Vec<StoredEvent>, Vec<Received>) {
    let stored = stored_events(data_dir);
    let expected: HashSet<String> = stored.iter().map(|e| e.0.clone()).collect();
    let read = read_topic(&broker.brokers(), EVENTS_TOPIC, Duration::from_secs(60), |read| {
        let ids: HashSet<String> = read.iter().filter_map(|m| m.value["id"].as_str().map(str::to_owned)).collect();
        expected.is_subset(&ids)
    });
    (stored, read)
}

/// Each stream's events, by the first occurrence of each event id, come in stream order.
fn assert_per_stream_order(read: &[Received]) {
    let mut seen = HashSet::new();
    let mut last_version: HashMap<String, u64> = HashMap::new();
    let mut by_partition: HashMap<i32, Vec<&Received>> = HashMap::new();
    for m in read {
        by_partition.entry(m.partition).or_default().push(m);
    }
    for messages in by_partition.values_mut() {
        messages.sort_by_key(|m| m.offset);
        for m in messages.iter() {
            if !seen.insert(m.value["id"].as_str().unwrap().to_owned()) {
                continue;
            }
            let stream = m.value["subject"].as_str().unwrap().to_owned();
            let version: u64 = m.value["streamversion"].as_str().unwrap().parse().unwrap();
            let previous = last_version.insert(stream.clone(), version).unwrap_or(0);
            assert_eq!(version, previous + 1, "stream {stream} out of order on the topic");
        }
    }
}

#[tokio::test]
async fn the_relay_publishes_every_event_as_a_cloudevent_that_validates_against_its_schema() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let app = serve_with_kafka(dir.path(), &broker, &[]);
    let token = app.token(TENANT, ALL_SCOPES);
    let stub = GitHubStub::start(vec![Answer::Created]).await;
    github_connection(&app, &token, &stub.url).await;
    for key in ["twilio-sms", "twilio-voice"] {
        assert_eq!(app.post_json("/integrations/providers", &token, &provider(key)).await.status(), 201);
    }

    let (stored, read) = read_all_events(&broker, dir.path());
    assert!(stored.len() >= 5, "{stored:?}");
    assert_per_stream_order(&read);
    let envelope_schema: Value =
        serde_json::from_str(&std::fs::read_to_string("schemas/kafka/CloudEvent.v1.json").unwrap()).unwrap();
    let envelope_validator = jsonschema::validator_for(&envelope_schema).expect("CloudEvent schema");
    for (event_id, stream_id, version, event_type) in &stored {
        let m = read.iter().find(|m| m.value["id"] == *event_id.as_str()).expect("published");
        let ce = &m.value;
        // CloudEvents 1.0 structured JSON.
        assert_eq!(ce["specversion"], "1.0");
        assert_eq!(ce["type"], *event_type.as_str());
        assert_eq!(ce["subject"], *stream_id.as_str());
        assert_eq!(ce["source"], "urn:connectsoft:integration-engine");
        assert_eq!(ce["datacontenttype"], "application/json");
        assert_eq!(ce["tenantid"], TENANT);
        assert_eq!(ce["streamversion"], version.to_string());
        assert!(ce["time"].is_string() && ce["position"].is_string() && ce["traceid"].is_string());
        // Key = stream id; the headers.
        assert_eq!(m.key.as_deref(), Some(stream_id.as_str()));
        // Each type at its own current version (ProviderRegistered is at v2).
        let schema_version = domain::upcast::schema_version_of(event_type);
        assert_eq!(m.headers["cs-schema-version"], schema_version.to_string());
        assert_eq!(ce["schemaversion"], schema_version);
        assert_eq!(m.headers["ce_type"], *event_type);
        assert_eq!(m.headers["ce_id"], *event_id);
        assert_eq!(m.headers["tenant-id"], TENANT);
        let traceparent = &m.headers["traceparent"];
        assert!(traceparent.starts_with("00-") && traceparent.len() == 55, "{traceparent}");
        assert_eq!(ce["traceparent"], *traceparent.as_str());
        // The value validates against schemas/kafka, its data against schemas/events.
        let errors: Vec<String> = envelope_validator.iter_errors(ce).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{event_type} is not a valid CloudEvent: {errors:?}");
        let schema_file = format!("schemas/events/{event_type}.v{schema_version}.json");
        let data_schema: Value = serde_json::from_str(&std::fs::read_to_string(schema_file).unwrap()).unwrap();
        let data_validator = jsonschema::validator_for(&data_schema).expect("event schema");
        let errors: Vec<String> = data_validator.iter_errors(&ce["data"]).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{event_type} data does not match its schema: {errors:?}");
    }
}

#[tokio::test]
async fn with_the_broker_down_commands_are_accepted_and_everything_is_published_once_it_returns() {
    let mut broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let app = serve_with_kafka(dir.path(), &broker, &[]);
    let token = app.token(TENANT, ALL_SCOPES);
    assert_eq!(app.post_json("/integrations/providers", &token, &provider("before-outage")).await.status(), 201);
    read_all_events(&broker, dir.path());

    broker.stop();
    // A burst of commands while the broker is down: every one is accepted.
    for i in 0..25 {
        let r = app.post_json("/integrations/providers", &token, &provider(&format!("during-outage-{i}"))).await;
        assert_eq!(r.status(), 201, "the API keeps accepting commands without the broker");
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    broker.restart();

    let (stored, read) = read_all_events(&broker, dir.path());
    assert_eq!(stored.len(), 26);
    // Every stored event is on the topic; duplicates (at-least-once) only as the same id.
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for m in &read {
        *counts.entry(m.value["id"].as_str().unwrap()).or_default() += 1;
    }
    let stored_ids: HashSet<&str> = stored.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(counts.keys().copied().collect::<HashSet<_>>(), stored_ids, "exactly the stored events, by id");
    assert_per_stream_order(&read);

    // Consumers deduplicate by event id: a copy of an event published again (as the relay may
    // after a failed acknowledgement) reaches a KafkaFeed consumer once.
    let copy = read.iter().find(|m| m.value["id"] == stored[3].0.as_str()).unwrap();
    let headers: Vec<(&str, &str)> = copy.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    publish(&broker.brokers(), EVENTS_TOPIC, copy.key.as_deref().unwrap(), copy.value.to_string().as_bytes(), &headers)
        .await;
    let mut settings = workers::KafkaSettings::new(broker.brokers());
    settings.group_prefix = "dedupe-check".into();
    let mut feed = workers::KafkaFeed::subscribe(&settings, "reader").expect("feed");
    let mut delivered = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while delivered.len() < stored.len() {
        assert!(Instant::now() < deadline, "the feed delivered {} of {}", delivered.len(), stored.len());
        let batch = tokio::time::timeout(Duration::from_secs(5), workers::EventFeed::next_batch(&mut feed, 100)).await;
        if let Ok(batch) = batch {
            delivered.extend(batch.expect("batch").into_iter().map(|e| e.event_id.to_string()));
        }
    }
    // Whatever else is on the topic (the copy) comes as nothing more.
    let extra = tokio::time::timeout(Duration::from_secs(3), workers::EventFeed::next_batch(&mut feed, 100)).await;
    assert!(extra.is_err(), "nothing but duplicates was left: {extra:?}");
    let unique: HashSet<&String> = delivered.iter().collect();
    assert_eq!(unique.len(), delivered.len(), "no event delivered twice");
    assert_eq!(unique.len(), stored.len());
    assert!(feed.duplicates_dropped() >= 1, "the republished copy was dropped by id");
}

#[tokio::test]
async fn malformed_and_unauthorised_commands_go_to_the_dead_letter_topic_without_blocking_the_partition() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let app = serve_with_kafka(dir.path(), &broker, &["--run-first-backoff-ms", "100"]);
    let token = app.token(TENANT, ALL_SCOPES);
    let stub = GitHubStub::start(vec![Answer::Created]).await;
    let connection = github_connection(&app, &token, &stub.url).await;
    let brokers = broker.brokers();
    let input = json!({"repo": "booking-saas", "title": "t", "head": "feature"});
    let v1 = [("cs-schema-version", "1")];
    // All on one key, so one partition: the valid command waits behind the bad ones.
    let key = format!("{TENANT}/{connection}");
    publish(&brokers, COMMANDS_TOPIC, &key, b"{not json", &v1).await;
    publish(
        &brokers,
        COMMANDS_TOPIC,
        &key,
        &start_run(TENANT, &connection, "OpenPullRequest", input.clone(), "no-version"),
        &[],
    )
    .await;
    // Another tenant's command naming this tenant's connection: not authorised.
    publish(
        &brokers,
        COMMANDS_TOPIC,
        &key,
        &start_run("other-tenant", &connection, "OpenPullRequest", input.clone(), "k"),
        &v1,
    )
    .await;
    publish(
        &brokers,
        COMMANDS_TOPIC,
        &key,
        &start_run(TENANT, &connection, "OpenPullRequest", input.clone(), "good"),
        &v1,
    )
    .await;

    let dead = read_topic(&brokers, COMMANDS_DLQ_TOPIC, Duration::from_secs(60), |read| read.len() >= 3);
    let classes: Vec<&str> = dead.iter().map(|m| m.headers["dlq-error-class"].as_str()).collect();
    assert_eq!(classes, ["malformed", "malformed", "unauthorised"]);
    assert!(dead[0].headers["dlq-reason"].contains("malformed command"));
    assert!(dead[1].headers["dlq-reason"].contains("cs-schema-version header is missing"));
    assert!(
        dead[2].headers["dlq-reason"]
            .contains(&format!("connection {connection} is not a connection of tenant other-tenant"))
    );
    assert!(dead.iter().all(|m| m.headers["dlq-origin"].starts_with("integration.commands.v1/")));
    assert_eq!(dead[2].key.as_deref(), Some(key.as_str()), "the original key and value are kept");

    // The good command behind them was handled, and its run executed.
    let run = wait_for_run(&app, &token, &run_id_for(TENANT, "good"), &["Completed"], Duration::from_secs(60)).await;
    assert_eq!(run["attempts"], 1);
    assert_eq!(stub.requests().len(), 1);
}

/// Lines of a worker's log that say it handled the command with `key`.
fn handled(log: &str, key: &str) -> usize {
    log.lines().filter(|l| l.contains("command handled") && l.contains(&format!("idempotency_key={key} "))).count()
}

/// The partitions of the last assignment a worker logged for `consumer`.
fn assigned_partitions(log: &str, consumer: &str) -> Vec<u32> {
    let needle = format!("partitions assigned consumer=\"{consumer}\" partitions=");
    let line = log.lines().rfind(|l| l.contains(&needle)).unwrap_or_default();
    line.split("partitions=")
        .nth(1)
        .unwrap_or_default()
        .split(',')
        .filter_map(|p| p.rsplit('/').next()?.trim().parse().ok())
        .collect()
}

/// CRC-32 (IEEE), as librdkafka's default partitioner computes it.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

fn wait_for_log(worker: &Worker, needle: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while !worker.log().contains(needle) {
        assert!(Instant::now() < deadline, "worker never logged {needle:?}:\n{}", worker.log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test]
async fn two_workers_in_one_group_share_the_partitions_and_handle_each_command_once() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let app = serve_with_kafka(dir.path(), &broker, &["--no-workers"]);
    let token = app.token(TENANT, ALL_SCOPES);
    let stub = GitHubStub::start(vec![Answer::Created]).await;
    let connection = github_connection(&app, &token, &stub.url).await;
    let brokers = broker.brokers();
    let a = Worker::spawn(dir.path(), &brokers, &[]);
    wait_for_log(&a, "partitions assigned consumer=\"commands\"", Duration::from_secs(30));
    let b = Worker::spawn(dir.path(), &brokers, &[]);
    wait_for_log(&b, "consumer=\"commands\" partitions=integration.commands.v1", Duration::from_secs(60));
    tokio::time::sleep(Duration::from_secs(2)).await;

    let input = json!({"method": "GET", "path": "/zen"});
    let publish_batch = |prefix: &'static str| {
        let (brokers, connection, input) = (brokers.clone(), connection.clone(), input.clone());
        async move {
            for i in 0..12 {
                let key = format!("{prefix}-{i}");
                // A key per command spreads them over the partitions.
                let value = start_run(TENANT, &connection, "http.request", input.clone(), &key);
                publish(&brokers, COMMANDS_TOPIC, &key, &value, &[("cs-schema-version", "1")]).await;
            }
        }
    };
    publish_batch("first").await;
    for i in 0..12 {
        wait_for_run(
            &app,
            &token,
            &run_id_for(TENANT, &format!("first-{i}")),
            &["Requested", "Running", "Completed", "Failed"],
            Duration::from_secs(60),
        )
        .await;
    }
    let (log_a, log_b) = (a.log(), b.log());
    for i in 0..12 {
        let key = format!("first-{i}");
        assert_eq!(handled(&log_a, &key) + handled(&log_b, &key), 1, "{key} handled once across both workers");
    }
    let by_a = (0..12).filter(|i| handled(&log_a, &format!("first-{i}")) == 1).count();
    assert!(by_a > 0 && by_a < 12, "both workers handled commands (a: {by_a} of 12)");

    // One run per command, whoever handled it (the connection's health check is a run of its own).
    let commanded: HashSet<String> =
        (0..12).map(|i| format!("{TENANT}/{}", run_id_for(TENANT, &format!("first-{i}")))).collect();
    let requested =
        stored_events(dir.path()).iter().filter(|e| e.3 == "RunRequested" && commanded.contains(&e.1)).count();
    assert_eq!(requested, 12);
}

/// Ignored: tansu 0.6.0's group coordinator evicts a killed member after the session timeout
/// and rebalances, but hands the survivor only the partitions it already had (seen in the
/// workers' rebalance logs), so the dead member's partitions stay unassigned. Kafka reassigns
/// them. Run with `cargo test --test e2e kafka_bus:: -- --ignored` against a broker that does.
#[tokio::test]
#[ignore = "tansu 0.6.0 does not reassign a killed member's partitions"]
async fn killing_a_worker_hands_its_partitions_to_the_other() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let app = serve_with_kafka(dir.path(), &broker, &["--no-workers"]);
    let token = app.token(TENANT, ALL_SCOPES);
    let stub = GitHubStub::start(vec![Answer::Created]).await;
    let connection = github_connection(&app, &token, &stub.url).await;
    let brokers = broker.brokers();
    let a = Worker::spawn(dir.path(), &brokers, &[]);
    wait_for_log(&a, "partitions assigned consumer=\"commands\"", Duration::from_secs(30));
    let mut b = Worker::spawn(dir.path(), &brokers, &[]);
    wait_for_log(&b, "consumer=\"commands\" partitions=integration.commands.v1", Duration::from_secs(60));
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Killed without a chance to leave the group: its partitions go to a after the session timeout.
    b.kill();
    for i in 0..12 {
        let key = format!("second-{i}");
        let value = start_run(TENANT, &connection, "http.request", json!({"path": "/zen"}), &key);
        publish(&brokers, COMMANDS_TOPIC, &key, &value, &[("cs-schema-version", "1")]).await;
    }
    for i in 0..12 {
        wait_for_run(
            &app,
            &token,
            &run_id_for(TENANT, &format!("second-{i}")),
            &["Requested", "Running", "Completed", "Failed"],
            Duration::from_secs(90),
        )
        .await;
        assert_eq!(handled(&a.log(), &format!("second-{i}")), 1, "a handled second-{i}");
    }
}

/// Ignored for the same tansu limitation as above (the takeover needs the killed worker's
/// partition reassigned); the takeover itself is shown without Kafka by
/// `tests/e2e/runs.rs::a_crashed_servers_run_is_taken_over_after_its_lease_and_never_runs_twice_at_once`.
#[tokio::test]
#[ignore = "tansu 0.6.0 does not reassign a killed member's partitions"]
async fn a_killed_workers_run_is_taken_over_after_its_lease_and_never_runs_twice_at_once() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let app = serve_with_kafka(dir.path(), &broker, &["--no-workers"]);
    let token = app.token(TENANT, ALL_SCOPES);
    // The first attempt hangs for 2 s (its worker is killed meanwhile); the next one succeeds.
    let stub = GitHubStub::start(vec![Answer::SlowCreated(Duration::from_secs(2)), Answer::Created]).await;
    let connection = github_connection(&app, &token, &stub.url).await;
    let brokers = broker.brokers();
    let run_args = ["--run-attempt-timeout-ms", "3000", "--run-lease-grace-ms", "1000"];
    // The leader first, then the follower (see the test above for why the follower is killed).
    let leader = Worker::spawn(dir.path(), &brokers, &run_args);
    wait_for_log(&leader, "consumer=\"run-executor\" partitions=integration.events.v1", Duration::from_secs(60));
    let mut workers = [leader, Worker::spawn(dir.path(), &brokers, &run_args)];
    wait_for_log(&workers[1], "consumer=\"run-executor\" partitions=integration.events.v1", Duration::from_secs(60));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let follower_partitions = assigned_partitions(&workers[1].log(), "run-executor");
    assert!(!follower_partitions.is_empty() && follower_partitions.len() < 6, "{follower_partitions:?}");
    // A run whose stream lands on a partition of the follower (the relay's producer partitions
    // by CRC-32 of the key, librdkafka's default).
    let key = (0..)
        .map(|i| format!("crash-{i}"))
        .find(|k| follower_partitions.contains(&(crc32(format!("{TENANT}/{}", run_id_for(TENANT, k)).as_bytes()) % 6)))
        .unwrap();
    let input = json!({"repo": "booking-saas", "title": "t", "head": "feature"});
    let value = start_run(TENANT, &connection, "OpenPullRequest", input, &key);
    publish(&brokers, COMMANDS_TOPIC, &key, &value, &[("cs-schema-version", "1")]).await;
    let run_id = run_id_for(TENANT, &key);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(workers[1].log().contains("attempt started") && workers[1].log().contains(&run_id)) {
        assert!(Instant::now() < deadline, "the follower did not start the run");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let holder = 1;
    workers[holder].kill();

    let run = wait_for_run(&app, &token, &run_id, &["Completed", "Failed"], Duration::from_secs(90)).await;
    assert_eq!(run["status"], "Completed", "{run}");
    assert_eq!(run["attempts"], 2);
    assert!(run["lastError"].as_str().unwrap().contains("abandoned"), "{run}");
    assert!(workers[1 - holder].log().contains("attempt started"), "the other worker took over");
    assert_eq!(stub.requests().len(), 2);
    assert_eq!(stub.max_in_flight(), 1, "the two attempts never overlapped");
    // The takeover started only once the killed worker's lease had expired.
    let conn = rusqlite::Connection::open(dir.path().join("events.db")).unwrap();
    let started: Vec<Value> = conn
        .prepare("SELECT data FROM events WHERE event_type = 'RunStarted' ORDER BY global_position")
        .unwrap()
        .query_map([], |row| row.get::<_, String>(0))
        .unwrap()
        .map(|d| serde_json::from_str(&d.unwrap()).unwrap())
        .collect();
    assert_eq!(started.len(), 2);
    let lease_end = chrono::DateTime::parse_from_rfc3339(started[0]["leaseExpiresAt"].as_str().unwrap()).unwrap();
    let takeover = chrono::DateTime::parse_from_rfc3339(started[1]["startedAt"].as_str().unwrap()).unwrap();
    assert!(takeover >= lease_end, "attempt 2 started at {takeover}, before attempt 1's lease ended at {lease_end}");
}
