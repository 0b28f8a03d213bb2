//! What auditors run against a data dir: `replay` (filters, formats, upcasting of the v1 streams
//! kept in `fixtures/streams/`) and `verify` (hash chains, `--tenant`, the summary).

use crate::support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use domain::NewEvent;
use serde_json::{Value, json};
use store::sqlite::SqliteEventStore;
use store::{EventStore, ExpectedVersion};
use support::streams::{V1_FIXTURE, fixture_lines, load_fixture};
use support::{ALL_SCOPES, BIN, spawn_app_in};

fn run(args: &[&str], data_dir: &Path) -> Output {
    Command::new(BIN).args(args).arg("--data-dir").arg(data_dir).output().expect("run binary")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn lines(out: &Output) -> Vec<Value> {
    assert!(out.status.success(), "exit {:?}: {}", out.status, String::from_utf8_lossy(&out.stderr));
    stdout(out).lines().map(|l| serde_json::from_str(l).expect("every line is one JSON document")).collect()
}

fn validator(path: &str) -> jsonschema::Validator {
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(path).expect(path)).unwrap();
    jsonschema::validator_for(&schema).expect("schema")
}

fn assert_valid(validator: &jsonschema::Validator, instance: &Value, what: &str) {
    let errors: Vec<String> = validator.iter_errors(instance).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{what}: {errors:?}\n{instance}");
}

#[tokio::test]
async fn a_v1_stream_replays_upcast_to_v2_by_default_and_as_stored_on_request() {
    let dir = tempfile::tempdir().unwrap();
    load_fixture(dir.path(), V1_FIXTURE).await;
    let fixture = fixture_lines(V1_FIXTURE);
    let v1 = validator("schemas/events/ProviderRegistered.v1.json");
    let v2 = validator("schemas/events/ProviderRegistered.v2.json");

    let as_stored = lines(&run(&["replay", "--as-stored"], dir.path()));
    assert_eq!(as_stored, fixture, "--as-stored prints the events exactly as stored");
    for e in &as_stored {
        assert_valid(&v1, &e["data"], "stored data follows the v1 schema");
        assert!(v2.iter_errors(&e["data"]).next().is_some(), "v1 data lacks what v2 requires");
    }

    let upcast = lines(&run(&["replay"], dir.path()));
    assert_eq!(upcast.len(), fixture.len());
    for (current, stored) in upcast.iter().zip(&fixture) {
        assert_eq!(current["schemaVersion"], 2);
        assert_eq!(current["data"]["apiClientVersion"], 1);
        assert_valid(&v2, &current["data"], "upcast data follows the v2 schema");
        // Everything but the schema version and the added field is as stored.
        let mut back = current.clone();
        back["schemaVersion"] = json!(1);
        back["data"].as_object_mut().unwrap().remove("apiClientVersion");
        assert_eq!(&back, stored);
    }

    // The stored chains still verify: upcasting happens on read and never touches the store.
    let verified = run(&["verify"], dir.path());
    assert!(verified.status.success(), "{}", stdout(&verified));
    assert!(stdout(&verified).contains("checked 3 events in 3 streams"), "{}", stdout(&verified));
}

#[tokio::test]
async fn the_engine_serves_a_store_of_v1_events_and_appends_v2() {
    let dir = tempfile::tempdir().unwrap();
    load_fixture(dir.path(), V1_FIXTURE).await;
    let app = spawn_app_in(dir.path(), &[]);
    let token = app.token("connectsoft", ALL_SCOPES);
    // The projections decode the v1 events (a failed upcast stops them and /readyz stays 503).
    let mut ready = false;
    for _ in 0..100 {
        if app.client.get(app.url("/readyz")).send().await.unwrap().status() == 200 {
            ready = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(ready, "the read models never caught up with the v1 store");
    // The write side loads the v1 provider: the same key again is a conflict, and a connection
    // may name it.
    let twilio = json!({ "key": "twilio-sms", "displayName": "Twilio SMS", "category": "Communication",
                         "authModel": "ApiKey", "apiClient": "ConnectSoft.Sms.Providers.Twilio",
                         "capabilities": ["sms.send", "sms.status"], "baseUrl": "https://api.twilio.com" });
    assert_eq!(app.post_json("/integrations/providers", &token, &twilio).await.status(), 409);
    let connection = json!({ "tenantId": "connectsoft", "projectId": "proj-booking-saas", "providerId": "prov-github",
                             "displayName": "Booking SaaS GitHub", "authMode": "OAuth2ClientCredentials",
                             "configuration": { "organization": "connectsoft-booking" } });
    let created = app.post_json("/integrations/connections", &token, &connection).await;
    assert_eq!(created.status(), 201, "{}", created.text().await.unwrap());
    let stripe = json!({ "key": "stripe", "displayName": "Stripe", "category": "Payments", "authModel": "ApiKey",
                         "apiClient": "ConnectSoft.Payments.Providers.Stripe", "baseUrl": "https://api.stripe.com" });
    assert_eq!(app.post_json("/integrations/providers", &token, &stripe).await.status(), 201);
    app.kill();

    // New appends are written at v2.
    let stored = lines(&run(&["replay", "--as-stored", "--type", "ProviderRegistered"], dir.path()));
    let versions: Vec<_> =
        stored.iter().map(|e| (e["streamId"].as_str().unwrap(), e["schemaVersion"].clone())).collect();
    assert_eq!(
        versions,
        [
            ("connectsoft/prov-github", json!(1)),
            ("globex/prov-github", json!(1)),
            ("connectsoft/prov-twilio-sms", json!(1)),
            ("connectsoft/prov-stripe", json!(2)),
        ]
    );
    assert_eq!(stored[3]["data"]["apiClientVersion"], 1);
    let verified = run(&["verify"], dir.path());
    assert!(verified.status.success(), "{}", stdout(&verified));
}

/// A store with the fixture and events the engine wrote itself, for the filter tests.
async fn mixed_store(dir: &Path) -> Vec<Value> {
    load_fixture(dir, V1_FIXTURE).await;
    let app = spawn_app_in(dir, &[]);
    for tenant in ["connectsoft", "globex"] {
        let token = app.token(tenant, ALL_SCOPES);
        for key in ["stripe", "slack"] {
            let body = json!({ "key": key, "displayName": key, "category": "X", "authModel": "ApiKey",
                               "apiClient": "Vendor.Client", "baseUrl": "https://example.com" });
            assert_eq!(app.post_json("/integrations/providers", &token, &body).await.status(), 201);
        }
        let connection = json!({ "projectId": "proj-1", "providerId": "prov-stripe", "displayName": "Payments",
                                 "authMode": "ApiKey", "configuration": {} });
        let created = app.post_json("/integrations/connections", &token, &connection).await;
        assert_eq!(created.status(), 201, "{}", created.text().await.unwrap());
    }
    app.kill();
    lines(&run(&["replay"], dir))
}

#[tokio::test]
async fn replay_filters_by_stream_tenant_type_position_and_time() {
    let dir = tempfile::tempdir().unwrap();
    let all = mixed_store(dir.path()).await;
    assert!(all.len() >= 9, "{}", all.len());
    let positions: Vec<u64> = all.iter().map(|e| e["globalPosition"].as_u64().unwrap()).collect();
    assert_eq!(positions, (1..=all.len() as u64).collect::<Vec<_>>(), "the whole store, in global order");

    let select = |keep: &dyn Fn(&Value) -> bool| all.iter().filter(|e| keep(e)).cloned().collect::<Vec<_>>();
    let check = |args: &[&str], expected: Vec<Value>| {
        let mut full = vec!["replay"];
        full.extend_from_slice(args);
        let got = lines(&run(&full, dir.path()));
        assert!(!expected.is_empty() && expected.len() < all.len(), "{args:?} selects a proper subset");
        assert_eq!(got, expected, "replay {args:?}");
    };
    check(&["--tenant", "globex"], select(&|e| e["tenantId"] == "globex"));
    check(&["--stream", "connectsoft/prov-github"], select(&|e| e["streamId"] == "connectsoft/prov-github"));
    check(
        &["--tenant", "connectsoft", "--type", "ConnectionEstablished"],
        select(&|e| e["tenantId"] == "connectsoft" && e["eventType"] == "ConnectionEstablished"),
    );
    check(
        &["--type", "ConnectionEstablished,CredentialRegistered"],
        select(&|e| e["eventType"] == "ConnectionEstablished" || e["eventType"] == "CredentialRegistered"),
    );
    check(
        &["--from-position", "2", "--to-position", "5"],
        select(&|e| (2..=5).contains(&e["globalPosition"].as_u64().unwrap())),
    );
    // The fixture's events occurred in March 2026; the engine's own ones now.
    check(
        &["--since", "2026-03-02T10:30:00Z", "--until", "2026-03-03T08:30:00Z"],
        select(&|e| e["streamId"] == "globex/prov-github"),
    );
    check(&["--until", "2026-03-04T00:00:00Z"], all[..3].to_vec());

    // Nonsense is refused with a message that names it.
    let backwards = run(&["replay", "--from-position", "5", "--to-position", "2"], dir.path());
    assert!(!backwards.status.success());
    assert!(String::from_utf8_lossy(&backwards.stderr).contains("--from-position 5 is after --to-position 2"));
    let bad_time = run(&["replay", "--since", "yesterday"], dir.path());
    assert!(!bad_time.status.success());
    assert!(String::from_utf8_lossy(&bad_time.stderr).contains("RFC 3339"));
    let typo = run(&["replay", "--type", "ProviderRegisterd"], dir.path());
    assert!(typo.status.success() && typo.stdout.is_empty());
    assert!(
        String::from_utf8_lossy(&typo.stderr)
            .contains("--type ProviderRegisterd is not an event type this build knows")
    );
    let foreign = run(&["replay", "--stream", "globex/prov-github", "--tenant", "connectsoft"], dir.path());
    assert!(!foreign.status.success());
    let missing = run(&["replay"], &dir.path().join("no-such-dir"));
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no event store at"));
}

#[tokio::test]
async fn replay_as_cloudevents_matches_the_published_schema() {
    let dir = tempfile::tempdir().unwrap();
    let all = mixed_store(dir.path()).await;
    let events = lines(&run(&["replay", "--format", "cloudevents"], dir.path()));
    let cloud_event = validator("schemas/kafka/CloudEvent.v1.json");
    assert_eq!(events.len(), all.len());
    for (ce, envelope) in events.iter().zip(&all) {
        assert_valid(&cloud_event, ce, "a replayed CloudEvent");
        assert_eq!(ce["specversion"], "1.0");
        assert_eq!(ce["id"], envelope["eventId"]);
        assert_eq!(ce["type"], envelope["eventType"]);
        assert_eq!(ce["subject"], envelope["streamId"]);
        assert_eq!(ce["tenantid"], envelope["tenantId"]);
        assert_eq!(ce["position"], envelope["globalPosition"].to_string());
        assert_eq!(ce["schemaversion"], envelope["schemaVersion"]);
        assert_eq!(ce["data"], envelope["data"]);
        let schema = format!("schemas/events/{}.v{}.json", ce["type"].as_str().unwrap(), ce["schemaversion"]);
        assert_valid(&validator(&schema), &ce["data"], &schema);
    }
    // Upcast by default, the stored version with --as-stored.
    assert_eq!(events[0]["schemaversion"], 2);
    let stored = lines(&run(&["replay", "--format", "cloudevents", "--as-stored", "--to-position", "1"], dir.path()));
    assert_eq!(stored[0]["schemaversion"], 1);
    assert!(stored[0]["data"].get("apiClientVersion").is_none());
}

/// `n` events of a made-up type with a few hundred bytes of data each.
fn bulk_events(batch: usize, n: usize) -> Vec<NewEvent> {
    (0..n)
        .map(|i| NewEvent {
            event_id: uuid::Uuid::now_v7(),
            event_type: "BulkLoaded".into(),
            schema_version: 1,
            tenant_id: "bulk".into(),
            occurred_at: chrono::Utc::now(),
            trace_id: format!("trace-{batch}-{i}"),
            correlation_id: format!("trace-{batch}-{i}"),
            causation_id: None,
            actor: domain::Actor::system(),
            data: json!({ "batch": batch, "n": i, "text": "x".repeat(300) }),
        })
        .collect()
}

#[tokio::test]
async fn replay_into_a_closed_pipe_stops_quietly_and_prints_no_progress_bar_into_a_pipe() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteEventStore::open(&dir.path().join("events.db")).unwrap();
    // Far more than a pipe's buffer, so the replay is still writing when the reader leaves.
    for batch in 0..20 {
        let events = bulk_events(batch, 200);
        store.append(&format!("bulk/stream-{batch}"), ExpectedVersion::NoStream, events).await.unwrap();
    }
    drop(store);

    let full = run(&["replay"], dir.path());
    assert!(full.status.success());
    assert_eq!(stdout(&full).lines().count(), 20 * 200);
    assert!(
        full.stderr.is_empty(),
        "stderr is not a terminal: no bar, no summary: {}",
        String::from_utf8_lossy(&full.stderr)
    );

    let mut child = Command::new(BIN)
        .args(["replay", "--data-dir"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
    assert!(serde_json::from_str::<Value>(&first).is_ok());
    // The reader is gone (`replay | head -1`): the replay ends without an error.
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{:?}: {}", out.status, String::from_utf8_lossy(&out.stderr));
}

#[tokio::test]
async fn on_a_terminal_replay_reports_its_progress_on_stderr_and_stdout_stays_json() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteEventStore::open(&dir.path().join("events.db")).unwrap();
    store.append("bulk/stream", ExpectedVersion::NoStream, bulk_events(0, 500)).await.unwrap();
    drop(store);
    let out = dir.path().join("events.jsonl");
    // util-linux `script` gives the replay a terminal as stderr; stdout goes to a file.
    let shell = format!("'{BIN}' replay --data-dir '{}' > '{}'", dir.path().display(), out.display());
    let terminal = Command::new("script").args(["-qec", &shell, "/dev/null"]).output().expect("util-linux script");
    assert!(terminal.status.success(), "{}", String::from_utf8_lossy(&terminal.stdout));
    let drawn = String::from_utf8_lossy(&terminal.stdout);
    assert!(drawn.contains("replayed 500 events in"), "the terminal shows progress and a summary: {drawn:?}");
    let written = std::fs::read_to_string(&out).unwrap();
    assert_eq!(written.lines().count(), 500);
    assert!(written.lines().all(|l| serde_json::from_str::<Value>(l).is_ok()), "nothing but JSON lines on stdout");
}

#[tokio::test]
async fn verify_checks_every_chain_limits_to_a_tenant_and_prints_a_summary() {
    let dir = tempfile::tempdir().unwrap();
    let all = mixed_store(dir.path()).await;
    let summary = regex::Regex::new(r"checked (\d+) events in (\d+) streams in \d+\.\d\ds").unwrap();
    let counts = |out: &Output| {
        let text = stdout(out);
        let c = summary.captures(&text).unwrap_or_else(|| panic!("no summary in {text}"));
        (c[1].parse::<usize>().unwrap(), c[2].parse::<usize>().unwrap())
    };
    let of = |tenant: &str| {
        let events: Vec<_> = all.iter().filter(|e| e["tenantId"] == tenant).collect();
        let mut streams: Vec<_> = events.iter().map(|e| e["streamId"].as_str().unwrap()).collect();
        streams.sort();
        streams.dedup();
        (events.len(), streams.len())
    };

    let intact = run(&["verify"], dir.path());
    assert!(intact.status.success(), "{}", stdout(&intact));
    let (connectsoft, globex) = (of("connectsoft"), of("globex"));
    assert_eq!(counts(&intact), (connectsoft.0 + globex.0, connectsoft.1 + globex.1));
    assert!(stdout(&intact).contains("every hash chain is intact"));
    let only_globex = run(&["verify", "--tenant", "globex"], dir.path());
    assert!(only_globex.status.success());
    assert_eq!(counts(&only_globex), globex);

    // Alter one of globex's events: verify names it; connectsoft's chains still hold.
    let altered = all.iter().rev().find(|e| e["tenantId"] == "globex").unwrap();
    let position = altered["globalPosition"].as_u64().unwrap();
    let db = rusqlite::Connection::open(dir.path().join("events.db")).unwrap();
    let changed = db
        .execute(
            "UPDATE events SET actor = json_set(actor, '$.subject', 'someone-else') WHERE global_position = ?1",
            [position],
        )
        .unwrap();
    assert_eq!(changed, 1);
    let broken = run(&["verify"], dir.path());
    assert_eq!(broken.status.code(), Some(1), "{}", stdout(&broken));
    let text = stdout(&broken);
    assert!(text.contains(&format!("global position {position}")), "{text}");
    assert!(text.contains(altered["eventId"].as_str().unwrap()) && text.contains("content hash mismatch"), "{text}");
    assert_eq!(counts(&broken), counts(&intact), "the walk goes on after a break");
    assert_eq!(run(&["verify", "--tenant", "globex"], dir.path()).status.code(), Some(1));
    let connectsoft_only = run(&["verify", "--tenant", "connectsoft"], dir.path());
    assert!(connectsoft_only.status.success(), "{}", stdout(&connectsoft_only));
    assert_eq!(counts(&connectsoft_only), connectsoft);

    // Put it back, then delete connectsoft's last event: its stream has nothing after it to
    // betray the loss, but the hole in the global order does, under any --tenant.
    db.execute(
        "UPDATE events SET actor = json_set(actor, '$.subject', ?1) WHERE global_position = ?2",
        rusqlite::params![altered["actor"]["subject"].as_str().unwrap(), position],
    )
    .unwrap();
    assert!(run(&["verify"], dir.path()).status.success());
    let last_of_connectsoft = all.iter().rev().find(|e| e["tenantId"] == "connectsoft").unwrap();
    let deleted = last_of_connectsoft["globalPosition"].as_u64().unwrap();
    assert!(deleted < all.len() as u64, "an event follows the deleted one");
    db.execute("DELETE FROM events WHERE global_position = ?1", [deleted]).unwrap();
    drop(db);
    for args in [&["verify"][..], &["verify", "--tenant", "connectsoft"], &["verify", "--tenant", "globex"]] {
        let out = run(args, dir.path());
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stdout(&out));
        assert!(
            stdout(&out).contains(&format!("global positions {deleted}..{deleted} are missing")),
            "{}",
            stdout(&out)
        );
    }
}
