//! Hash-chain verification over the real SQLite store, healthy and tampered with.

mod support;

use std::collections::HashSet;

use projections::verify_chains;
use support::{Engine, TENANT, run_scenario};

#[tokio::test]
async fn a_healthy_store_verifies_with_the_right_counts() {
    let engine = Engine::start();
    run_scenario(&engine, TENANT).await;
    run_scenario(&engine, "tenant-b").await;
    let all = engine.store.read_all(0, 10_000).await.unwrap();
    let streams = |tenant: Option<&str>| {
        all.iter()
            .filter(|e| tenant.is_none_or(|t| e.tenant_id == t))
            .map(|e| &e.stream_id)
            .collect::<HashSet<_>>()
            .len() as u64
    };

    let report = verify_chains(engine.store.as_ref(), None).await.unwrap();
    assert_eq!(report.first_break, None);
    assert_eq!(report.events, all.len() as u64);
    assert_eq!(report.streams, streams(None));

    let one_tenant = verify_chains(engine.store.as_ref(), Some(TENANT)).await.unwrap();
    assert_eq!(one_tenant.first_break, None);
    assert_eq!(one_tenant.events, all.iter().filter(|e| e.tenant_id == TENANT).count() as u64);
    assert_eq!(one_tenant.streams, streams(Some(TENANT)));
    assert!(one_tenant.events < report.events);
}

#[tokio::test]
async fn an_event_edited_in_the_database_is_reported_first() {
    let engine = Engine::start();
    run_scenario(&engine, TENANT).await;
    let tampered = engine.store.read_all(2, 1).await.unwrap().remove(0);
    assert_eq!(tampered.global_position, 3);

    // Someone with the file: whatever guards the table against updates is no obstacle to them.
    tamper(&engine, "UPDATE events SET data = json_set(data, '$.displayName', 'Evil') WHERE global_position = 3");

    let report = verify_chains(engine.store.as_ref(), None).await.unwrap();
    let first = report.first_break.expect("the edit is found");
    let first_event = first.event.clone().expect("the edited event is readable");
    assert_eq!(first.global_position, 3);
    assert_eq!(
        (first_event.stream_id.as_str(), first_event.stream_version),
        (tampered.stream_id.as_str(), tampered.stream_version)
    );
    assert_eq!(first_event.event_id, tampered.event_id);
    assert!(first.reason.starts_with("content hash mismatch: stored "), "{}", first.reason);
    assert!(first.to_string().contains("global position 3"), "{first}");

    // Another tenant's audit does not see this tenant's break.
    assert_eq!(verify_chains(engine.store.as_ref(), Some("tenant-b")).await.unwrap().first_break, None);
}

/// Opens the events table for writing as an attacker with the file would.
fn tamper(engine: &Engine, sql: &str) {
    let db = rusqlite::Connection::open(engine.events_db()).unwrap();
    let triggers: Vec<String> = db
        .prepare("SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'events'")
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    for trigger in triggers {
        db.execute(&format!("DROP TRIGGER \"{trigger}\""), []).unwrap();
    }
    assert_eq!(db.execute(sql, []).unwrap(), 1, "{sql}");
}

#[tokio::test]
async fn a_deleted_event_is_reported_even_when_it_ended_its_stream() {
    let engine = Engine::start();
    run_scenario(&engine, TENANT).await;
    let all = engine.store.read_all(0, 10_000).await.unwrap();
    // The last event of some stream that is not the last event of the store.
    let victim = all
        .iter()
        .filter(|e| e.global_position < all.len() as u64)
        .rfind(|e| !all.iter().any(|o| o.stream_id == e.stream_id && o.stream_version > e.stream_version))
        .expect("a stream ending before the head")
        .clone();
    tamper(&engine, &format!("DELETE FROM events WHERE global_position = {}", victim.global_position));

    let report = verify_chains(engine.store.as_ref(), None).await.unwrap();
    let first = report.first_break.expect("the deletion is found");
    assert_eq!(first.global_position, victim.global_position + 1);
    assert!(first.reason.contains("missing"), "{}", first.reason);
}

#[tokio::test]
async fn an_unreadable_event_is_named_by_its_position() {
    let engine = Engine::start();
    run_scenario(&engine, TENANT).await;
    tamper(&engine, "UPDATE events SET occurred_at = 'not a time' WHERE global_position = 2");

    let report = verify_chains(engine.store.as_ref(), None).await.unwrap();
    let first = report.first_break.expect("the unreadable row is found");
    assert_eq!((first.global_position, first.event.is_none()), (2, true), "{first}");
    assert!(report.events > 2, "the walk went on past the unreadable event");
}
