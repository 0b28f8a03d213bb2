//! Idempotency-key reservations in SQLite, alone and next to the event store in one file.

use std::sync::Arc;

use chrono::Utc;
use store::contract::sample_events;
use store::{
    EventStore, ExpectedVersion, IdempotencyStore, Reservation, SqliteEventStore, SqliteIdempotencyStore,
    StoredResponse,
};

fn open() -> (tempfile::TempDir, SqliteIdempotencyStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteIdempotencyStore::open(&dir.path().join("engine.db")).unwrap();
    (dir, store)
}

fn created(location: &str) -> StoredResponse {
    StoredResponse { status: 201, location: Some(location.into()), body: br#"{"id":"conn-1"}"#.to_vec() }
}

#[tokio::test]
async fn a_free_key_is_reserved() {
    let (_dir, keys) = open();
    assert_eq!(
        keys.reserve("t1", "create-connection", "k1", "hash-a", "conn-1", Utc::now()).await.unwrap(),
        Reservation::New
    );
}

#[tokio::test]
async fn a_taken_key_reports_the_first_reservation() {
    let (_dir, keys) = open();
    keys.reserve("t1", "create-connection", "k1", "hash-a", "conn-1", Utc::now()).await.unwrap();
    let second = keys.reserve("t1", "create-connection", "k1", "hash-b", "conn-2", Utc::now()).await.unwrap();
    assert_eq!(
        second,
        Reservation::Existing { request_hash: "hash-a".into(), resource_id: "conn-1".into(), response: None }
    );
}

#[tokio::test]
async fn a_completed_key_replays_the_first_response() {
    let (_dir, keys) = open();
    keys.reserve("t1", "create-connection", "k1", "hash-a", "conn-1", Utc::now()).await.unwrap();
    keys.complete("t1", "create-connection", "k1", &created("/connections/conn-1")).await.unwrap();
    // A second completion (a retry that raced the first) does not replace the response.
    keys.complete("t1", "create-connection", "k1", &created("/connections/other")).await.unwrap();
    let retry = keys.reserve("t1", "create-connection", "k1", "hash-a", "conn-9", Utc::now()).await.unwrap();
    assert_eq!(
        retry,
        Reservation::Existing {
            request_hash: "hash-a".into(),
            resource_id: "conn-1".into(),
            response: Some(created("/connections/conn-1")),
        }
    );
}

#[tokio::test]
async fn a_response_without_location_or_body_round_trips() {
    let (_dir, keys) = open();
    keys.reserve("t1", "op", "k", "h", "r", Utc::now()).await.unwrap();
    let accepted = StoredResponse { status: 202, location: None, body: Vec::new() };
    keys.complete("t1", "op", "k", &accepted).await.unwrap();
    assert!(matches!(
        keys.reserve("t1", "op", "k", "h", "r", Utc::now()).await.unwrap(),
        Reservation::Existing { response: Some(r), .. } if r == accepted
    ));
}

#[tokio::test]
async fn keys_are_scoped_by_tenant_and_operation() {
    let (_dir, keys) = open();
    keys.reserve("t1", "create-connection", "k1", "h", "conn-1", Utc::now()).await.unwrap();
    assert_eq!(
        keys.reserve("t2", "create-connection", "k1", "h", "conn-2", Utc::now()).await.unwrap(),
        Reservation::New
    );
    assert_eq!(keys.reserve("t1", "create-provider", "k1", "h", "prov-1", Utc::now()).await.unwrap(), Reservation::New);
}

#[tokio::test]
async fn completing_an_unreserved_key_fails() {
    let (_dir, keys) = open();
    assert!(keys.complete("t1", "op", "never-reserved", &created("/x")).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_reservations_of_one_key_make_one_new() {
    let (_dir, keys) = open();
    let keys = Arc::new(keys);
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let keys = keys.clone();
            tokio::spawn(async move {
                keys.reserve("t1", "op", "same", "h", &format!("res-{i}"), Utc::now()).await.unwrap()
            })
        })
        .collect();
    let mut new = 0;
    for task in tasks {
        if task.await.unwrap() == Reservation::New {
            new += 1;
        }
    }
    assert_eq!(new, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn it_shares_a_database_file_with_a_busy_event_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("engine.db");
    let events = Arc::new(SqliteEventStore::open(&path).unwrap());
    let keys = Arc::new(SqliteIdempotencyStore::open(&path).unwrap());
    let appends: Vec<_> = (0..50)
        .map(|i| {
            let events = events.clone();
            tokio::spawn(async move {
                events.append(&format!("s-{i}"), ExpectedVersion::NoStream, sample_events(2)).await.unwrap();
            })
        })
        .collect();
    for i in 0..50 {
        let key = format!("k-{i}");
        assert_eq!(keys.reserve("t1", "op", &key, "h", "r", Utc::now()).await.unwrap(), Reservation::New);
        keys.complete("t1", "op", &key, &created("/r")).await.unwrap();
    }
    for append in appends {
        append.await.unwrap();
    }
    assert_eq!(events.head_position().await.unwrap(), 100);
}

// Expiry. The sweep takes `now`, so these tests move the clock by passing a later one.

fn hours(h: u64) -> std::time::Duration {
    std::time::Duration::from_secs(h * 3600)
}

fn after(d: std::time::Duration) -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now() + chrono::Duration::from_std(d).unwrap()
}

#[tokio::test]
async fn the_sweep_deletes_completed_reservations_past_retention_only() {
    let dir = tempfile::tempdir().unwrap();
    let keys = SqliteIdempotencyStore::open(&dir.path().join("engine.db")).unwrap().with_retention(hours(24));
    keys.reserve("t1", "op", "done", "h", "r1", Utc::now()).await.unwrap();
    keys.complete("t1", "op", "done", &created("/r1")).await.unwrap();
    // Reserved, never answered: its request may still be running.
    keys.reserve("t1", "op", "running", "h", "r2", Utc::now()).await.unwrap();

    assert_eq!(keys.sweep_expired(after(hours(23)), 100).await.unwrap(), 0, "nothing is 24 hours old yet");
    assert!(matches!(
        keys.reserve("t1", "op", "done", "h", "r9", Utc::now()).await.unwrap(),
        Reservation::Existing { .. }
    ));

    // Past retention: the completed one goes; the one without a response is kept for the margin.
    assert_eq!(keys.sweep_expired(after(hours(24) + hours(1) / 2), 100).await.unwrap(), 1);
    assert!(matches!(
        keys.reserve("t1", "op", "running", "h", "r9", Utc::now()).await.unwrap(),
        Reservation::Existing { resource_id, response: None, .. } if resource_id == "r2"
    ));
    // Past retention plus the margin, an unanswered reservation is abandoned: swept too.
    assert_eq!(keys.sweep_expired(after(hours(25) + hours(1) / 60), 100).await.unwrap(), 1);
    assert_eq!(keys.sweep_expired(after(hours(48)), 100).await.unwrap(), 0, "the table is empty");
}

#[tokio::test]
async fn a_swept_key_is_reserved_anew() {
    let dir = tempfile::tempdir().unwrap();
    let keys = SqliteIdempotencyStore::open(&dir.path().join("engine.db")).unwrap().with_retention(hours(1));
    keys.reserve("t1", "op", "k", "hash-a", "r1", Utc::now()).await.unwrap();
    keys.complete("t1", "op", "k", &created("/r1")).await.unwrap();
    assert_eq!(keys.sweep_expired(after(hours(2)), 100).await.unwrap(), 1);
    // Even with another body: the old use is forgotten.
    assert_eq!(keys.reserve("t1", "op", "k", "hash-b", "r2", Utc::now()).await.unwrap(), Reservation::New);
}

#[tokio::test]
async fn the_sweep_works_in_batches_of_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let keys = SqliteIdempotencyStore::open(&dir.path().join("engine.db")).unwrap().with_retention(hours(1));
    for i in 0..7 {
        let key = format!("k-{i}");
        keys.reserve("t1", "op", &key, "h", "r", Utc::now()).await.unwrap();
        keys.complete("t1", "op", &key, &created("/r")).await.unwrap();
    }
    let now = after(hours(2));
    let mut batches = Vec::new();
    loop {
        let deleted = keys.sweep_expired(now, 3).await.unwrap();
        batches.push(deleted);
        if deleted < 3 {
            break;
        }
    }
    assert_eq!(batches, [3, 3, 1]);
}

#[tokio::test]
async fn an_expired_reservation_is_free_before_the_sweep_runs() {
    let dir = tempfile::tempdir().unwrap();
    // Retention zero: a completed reservation expires as soon as time moves on.
    let keys =
        SqliteIdempotencyStore::open(&dir.path().join("engine.db")).unwrap().with_retention(std::time::Duration::ZERO);
    keys.reserve("t1", "op", "done", "hash-a", "r1", Utc::now()).await.unwrap();
    keys.complete("t1", "op", "done", &created("/r1")).await.unwrap();
    keys.reserve("t1", "op", "running", "hash-a", "r2", Utc::now()).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    assert_eq!(keys.reserve("t1", "op", "done", "hash-b", "r3", Utc::now()).await.unwrap(), Reservation::New);
    // The retry now holds the key: a second one finds its reservation, not another `New`.
    assert_eq!(
        keys.reserve("t1", "op", "done", "hash-b", "r4", Utc::now()).await.unwrap(),
        Reservation::Existing { request_hash: "hash-b".into(), resource_id: "r3".into(), response: None }
    );
    // Unanswered reservations are kept for the in-progress margin past retention.
    assert!(matches!(
        keys.reserve("t1", "op", "running", "hash-a", "r5", Utc::now()).await.unwrap(),
        Reservation::Existing { resource_id, .. } if resource_id == "r2"
    ));
}

#[tokio::test]
async fn reservations_are_dated_by_the_time_they_are_made_at() {
    let dir = tempfile::tempdir().unwrap();
    let long_ago = Utc::now() - chrono::Duration::days(30);
    let keys = SqliteIdempotencyStore::open(&dir.path().join("engine.db")).unwrap();
    keys.reserve("t1", "op", "k", "h", "r", long_ago).await.unwrap();
    // Thirty days after the time it was made at, the reservation is past the 24-hour retention;
    // an hour after, it is not.
    assert_eq!(keys.sweep_expired(long_ago + chrono::Duration::hours(1), 10).await.unwrap(), 0);
    assert_eq!(keys.sweep_expired(Utc::now(), 10).await.unwrap(), 1);
}
