//! The leases contract, run against the SQLite adapter, and leases shared through the file.

use std::sync::Arc;

use chrono::{TimeDelta, Utc};
use store::{Leases, SqliteEventStore, SqliteLeases, contract};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leases_contract_holds() {
    let dir = tempfile::tempdir().unwrap();
    let leases = SqliteLeases::open(&dir.path().join("events.db")).unwrap();
    contract::run_leases_contract(Arc::new(leases)).await;
}

/// Two handles on one file (two processes sharing a data dir) see each other's leases, beside
/// the event store's own tables.
#[tokio::test]
async fn leases_are_shared_by_every_handle_on_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let _events = SqliteEventStore::open(&path).unwrap();
    let (first, second) = (SqliteLeases::open(&path).unwrap(), SqliteLeases::open(&path).unwrap());
    let now = Utc::now();
    assert_eq!(first.acquire("lane", "w1", now, now + TimeDelta::seconds(30)).await.unwrap().holder, "w1");
    assert_eq!(second.acquire("lane", "w2", now, now + TimeDelta::seconds(30)).await.unwrap().holder, "w1");
}
