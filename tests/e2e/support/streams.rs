//! Stored event streams from `fixtures/streams/`, loaded into a data dir the way an older engine
//! left them.

use std::path::Path;

use domain::{EventEnvelope, NewEvent};
use serde_json::Value;
use store::sqlite::SqliteEventStore;
use store::{EventStore, ExpectedVersion};

/// Three `ProviderRegistered` v1 events of two tenants (connectsoft, globex), as stored.
pub const V1_FIXTURE: &str = "fixtures/streams/provider-registered.v1.jsonl";

/// The fixture's lines as JSON.
pub fn fixture_lines(path: &str) -> Vec<Value> {
    std::fs::read_to_string(path)
        .expect("fixture")
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect()
}

/// Loads a fixture of stored events into `data_dir/events.db` through the store's own append,
/// checking that the store gives every event the position and hash the fixture has: the
/// fixture is what an older engine stored, not an approximation of it.
pub async fn load_fixture(data_dir: &Path, path: &str) -> Vec<EventEnvelope> {
    let store = SqliteEventStore::open(&data_dir.join("events.db")).expect("open store");
    let mut stored = Vec::new();
    for line in std::fs::read_to_string(path).expect("fixture").lines() {
        let e: EventEnvelope = serde_json::from_str(line).expect("fixture line is an envelope");
        let expected = match e.stream_version {
            1 => ExpectedVersion::NoStream,
            v => ExpectedVersion::Exact(v - 1),
        };
        let new = NewEvent {
            event_id: e.event_id,
            event_type: e.event_type.clone(),
            schema_version: e.schema_version,
            tenant_id: e.tenant_id.clone(),
            occurred_at: e.occurred_at,
            trace_id: e.trace_id.clone(),
            correlation_id: e.correlation_id.clone(),
            causation_id: e.causation_id.clone(),
            actor: e.actor.clone(),
            data: (*e.data).clone(),
        };
        let appended = store.append(&e.stream_id, expected, vec![new]).await.expect("append fixture event");
        assert_eq!(appended[0], e, "the store stores the fixture's event exactly (position, hash)");
        stored.push(e);
    }
    stored
}
