//! Behaviour of the SQLite event store beyond the contract: group commit, per-request rollback
//! inside a shared commit, reopening, and the writer's lifetime.

use std::sync::Arc;

use store::contract::{assert_hash_chained, sample_events};
use store::{EventStore, ExpectedVersion, SqliteEventStore, StoreError};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_share_commits() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteEventStore::open(&dir.path().join("events.db")).unwrap());
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store.append(&format!("stream-{i}"), ExpectedVersion::NoStream, sample_events(1)).await.unwrap()
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let stats = store.stats();
    assert_eq!(stats.appends, 200);
    assert!(stats.commits < stats.appends, "no commit was shared: {stats:?}");
    assert_eq!(store.head_position().await.unwrap(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_request_rolls_back_alone_within_a_shared_commit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let store = Arc::new(SqliteEventStore::open(&path).unwrap());
    let taken = sample_events(1);
    store.append("taken", ExpectedVersion::NoStream, taken.clone()).await.unwrap();

    // Holding the write lock stalls the writer, so the requests below queue up and are
    // committed together once it is released.
    let lock = rusqlite::Connection::open(&path).unwrap();
    lock.execute_batch("BEGIN IMMEDIATE").unwrap();
    // Every third request reuses an existing event id as its second event, which the database
    // refuses after the first event of that request is already inserted.
    let tasks: Vec<_> = (0..150)
        .map(|i| {
            let store = store.clone();
            let mut events = sample_events(2);
            if i % 3 == 0 {
                events[1].event_id = taken[0].event_id;
            }
            tokio::spawn(async move { (i, store.append(&format!("s-{i}"), ExpectedVersion::NoStream, events).await) })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    lock.execute_batch("ROLLBACK").unwrap();

    for task in tasks {
        let (i, outcome) = task.await.unwrap();
        match outcome {
            Ok(stored) => assert!(i % 3 != 0 && stored.len() == 2, "request {i}"),
            Err(StoreError::Backend(_)) => {
                assert_eq!(i % 3, 0, "request {i} failed");
                assert!(store.read_stream(&format!("s-{i}")).await.unwrap().is_empty(), "request {i} left events");
            }
            Err(other) => panic!("request {i}: {other}"),
        }
    }
    let stats = store.stats();
    assert_eq!(stats.appends, 1 + 100);
    assert!(stats.commits <= 4, "the requests did not share commits: {stats:?}");
    let positions: Vec<u64> = store.read_all(0, usize::MAX).await.unwrap().iter().map(|e| e.global_position).collect();
    assert_eq!(positions, (1..=1 + 100 * 2).collect::<Vec<_>>(), "positions of rolled-back requests were not reused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_and_their_chain_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let first = {
        let store = SqliteEventStore::open(&path).unwrap();
        store.append("s", ExpectedVersion::NoStream, sample_events(3)).await.unwrap()
    };
    let store = SqliteEventStore::open(&path).unwrap();
    assert_eq!(*store.watch_head().borrow(), 3, "the head starts at the stored head");
    assert_eq!(store.read_stream("s").await.unwrap(), first);
    let next = store.append("s", ExpectedVersion::Exact(3), sample_events(1)).await.unwrap();
    assert_eq!(next[0].global_position, 4);
    assert_hash_chained(&store.read_stream("s").await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_store_stops_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteEventStore::open(&dir.path().join("events.db")).unwrap();
    let mut head = store.watch_head();
    drop(store);
    // The writer thread owns the head's sender: the channel closes only when the thread ended.
    assert!(head.changed().await.is_err());
}
