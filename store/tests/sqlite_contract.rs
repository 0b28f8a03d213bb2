//! The event store contract, run against the SQLite adapter: each property on a fresh store,
//! then all of them on one store.

use std::sync::Arc;

use store::{EventStore, SqliteEventStore, contract};
use tempfile::TempDir;

fn open_store() -> (TempDir, Arc<dyn EventStore>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteEventStore::open(&dir.path().join("events.db")).expect("open store");
    (dir, Arc::new(store))
}

macro_rules! contract_tests {
    ($($property:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $property() {
            let (_dir, store) = open_store();
            contract::$property(store).await;
        }
    )*};
}

contract_tests!(
    append_with_no_stream_creates_the_stream,
    no_stream_on_an_existing_stream_is_rejected,
    exact_version_must_match,
    any_appends_whatever_the_stream_holds,
    a_rejected_batch_leaves_nothing,
    an_empty_append_only_checks_the_expected_version,
    append_streams_records_every_stream_at_consecutive_positions,
    append_streams_is_all_or_nothing,
    read_stream_returns_the_stored_events_in_version_order,
    read_stream_after_returns_only_the_later_versions,
    read_stream_first_returns_the_event_that_created_the_stream,
    read_all_pages_from_a_position,
    global_positions_stay_gap_free_under_concurrent_appends,
    each_stream_is_hash_chained,
    subscribe_catches_up_then_follows_live_appends,
    watch_head_follows_appends,
    read_filtered_returns_what_the_filter_matches_in_global_order,
);

/// The SQLite store with the port's defaults of `read_filtered` (a filtered walk of `read_all`)
/// and `read_stream_first` (the whole stream read), so the contract checks the defaults other
/// adapters inherit as well as SQLite's own queries.
struct WithDefaultReads(SqliteEventStore);

#[async_trait::async_trait]
impl EventStore for WithDefaultReads {
    async fn append(
        &self,
        stream_id: &str,
        expected: store::ExpectedVersion,
        events: Vec<domain::NewEvent>,
    ) -> Result<Vec<domain::EventEnvelope>, store::StoreError> {
        self.0.append(stream_id, expected, events).await
    }
    async fn append_streams(
        &self,
        appends: Vec<store::StreamAppend>,
    ) -> Result<Vec<Vec<domain::EventEnvelope>>, store::StoreError> {
        self.0.append_streams(appends).await
    }
    async fn read_stream(&self, stream_id: &str) -> Result<Vec<domain::EventEnvelope>, store::StoreError> {
        self.0.read_stream(stream_id).await
    }
    async fn read_all(&self, after: u64, max: usize) -> Result<Vec<domain::EventEnvelope>, store::StoreError> {
        self.0.read_all(after, max).await
    }
    async fn head_position(&self) -> Result<u64, store::StoreError> {
        self.0.head_position().await
    }
    fn watch_head(&self) -> tokio::sync::watch::Receiver<u64> {
        self.0.watch_head()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_default_read_filtered_keeps_the_contract() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteEventStore::open(&dir.path().join("events.db")).expect("open store");
    contract::read_filtered_returns_what_the_filter_matches_in_global_order(Arc::new(WithDefaultReads(store))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_default_read_stream_first_keeps_the_contract() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteEventStore::open(&dir.path().join("events.db")).expect("open store");
    contract::read_stream_first_returns_the_event_that_created_the_stream(Arc::new(WithDefaultReads(store))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_whole_contract_holds_on_one_store() {
    let (_dir, store) = open_store();
    contract::run_all(store).await;
}

#[tokio::test(flavor = "current_thread")]
async fn the_contract_holds_on_a_single_threaded_runtime() {
    let (_dir, store) = open_store();
    contract::run_all(store).await;
}
