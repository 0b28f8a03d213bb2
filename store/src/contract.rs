//! The contract every [`EventStore`] adapter must pass.
//!
//! Each property is an async function over the store under test that panics when the store
//! breaks it. Properties use fresh stream ids and do not assume an empty store, so they can run
//! one after another on one store ([`run_all`]) or each on a fresh store (one named test per
//! property). They do assume nothing else appends while they run.
//!
//! An adapter's test file runs them, e.g.:
//!
//! ```ignore
//! #[tokio::test(flavor = "multi_thread")]
//! async fn the_contract_holds() {
//!     store::contract::run_all(Arc::new(MyStore::open(...))).await;
//! }
//! ```

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::Utc;
use domain::{Actor, EventEnvelope, NewEvent};
use futures::StreamExt;
use serde_json::json;
use tokio::time::timeout;
use uuid::Uuid;

use crate::hash_chain::{GENESIS, event_hash};
use crate::{EventFilter, EventStore, ExpectedVersion, StoreError, StreamAppend, subscribe};

/// How long a property waits for something that should happen promptly.
const PATIENCE: Duration = Duration::from_secs(10);

/// Runs every property, one after another, on `store`.
pub async fn run_all(store: Arc<dyn EventStore>) {
    append_with_no_stream_creates_the_stream(store.clone()).await;
    no_stream_on_an_existing_stream_is_rejected(store.clone()).await;
    exact_version_must_match(store.clone()).await;
    any_appends_whatever_the_stream_holds(store.clone()).await;
    a_rejected_batch_leaves_nothing(store.clone()).await;
    an_empty_append_only_checks_the_expected_version(store.clone()).await;
    append_streams_records_every_stream_at_consecutive_positions(store.clone()).await;
    append_streams_is_all_or_nothing(store.clone()).await;
    read_stream_returns_the_stored_events_in_version_order(store.clone()).await;
    read_stream_after_returns_only_the_later_versions(store.clone()).await;
    read_stream_first_returns_the_event_that_created_the_stream(store.clone()).await;
    read_all_pages_from_a_position(store.clone()).await;
    global_positions_stay_gap_free_under_concurrent_appends(store.clone()).await;
    each_stream_is_hash_chained(store.clone()).await;
    subscribe_catches_up_then_follows_live_appends(store.clone()).await;
    watch_head_follows_appends(store.clone()).await;
    read_filtered_returns_what_the_filter_matches_in_global_order(store).await;
}

/// `NoStream` on a new stream appends the batch as versions 1..=n, with every field kept.
pub async fn append_with_no_stream_creates_the_stream(store: Arc<dyn EventStore>) {
    let stream = unique_stream("new");
    let events = sample_events(2);
    let stored =
        store.append(&stream, ExpectedVersion::NoStream, events.clone()).await.expect("append to a new stream");
    assert_eq!(stored.len(), 2);
    for ((envelope, event), version) in stored.iter().zip(&events).zip(1..) {
        assert_eq!(envelope.stream_id, stream);
        assert_eq!(envelope.stream_version, version);
        assert_eq!(envelope.event_id, event.event_id);
        assert_eq!(envelope.event_type, event.event_type);
        assert_eq!(envelope.schema_version, event.schema_version);
        assert_eq!(envelope.tenant_id, event.tenant_id);
        assert_eq!(envelope.occurred_at, event.occurred_at);
        assert_eq!(envelope.trace_id, event.trace_id);
        assert_eq!(envelope.correlation_id, event.correlation_id);
        assert_eq!(envelope.causation_id, event.causation_id);
        assert_eq!(envelope.actor, event.actor);
        assert_eq!(envelope.data, event.data);
    }
    assert_eq!(stored[1].global_position, stored[0].global_position + 1, "a batch takes consecutive positions");
}

/// `NoStream` on a stream that has events is rejected with the stream's last version.
pub async fn no_stream_on_an_existing_stream_is_rejected(store: Arc<dyn EventStore>) {
    let stream = unique_stream("existing");
    store.append(&stream, ExpectedVersion::NoStream, sample_events(2)).await.expect("first append");
    let second = store.append(&stream, ExpectedVersion::NoStream, sample_events(1)).await;
    assert_wrong_expected_version(second, &stream, ExpectedVersion::NoStream, 2);
}

/// `Exact(v)` appends only when the stream's last version is `v`.
pub async fn exact_version_must_match(store: Arc<dyn EventStore>) {
    let stream = unique_stream("exact");
    let on_missing = store.append(&stream, ExpectedVersion::Exact(1), sample_events(1)).await;
    assert_wrong_expected_version(on_missing, &stream, ExpectedVersion::Exact(1), 0);

    store.append(&stream, ExpectedVersion::NoStream, sample_events(2)).await.expect("first append");
    let stored = store.append(&stream, ExpectedVersion::Exact(2), sample_events(1)).await.expect("append at version 2");
    assert_eq!(stored[0].stream_version, 3);

    let stale = store.append(&stream, ExpectedVersion::Exact(2), sample_events(1)).await;
    assert_wrong_expected_version(stale, &stream, ExpectedVersion::Exact(2), 3);
    let ahead = store.append(&stream, ExpectedVersion::Exact(4), sample_events(1)).await;
    assert_wrong_expected_version(ahead, &stream, ExpectedVersion::Exact(4), 3);
}

/// `Any` appends to a new stream and to an existing one alike.
pub async fn any_appends_whatever_the_stream_holds(store: Arc<dyn EventStore>) {
    let stream = unique_stream("any");
    let first = store.append(&stream, ExpectedVersion::Any, sample_events(1)).await.expect("Any on a new stream");
    assert_eq!(versions(&first), [1]);
    let more = store.append(&stream, ExpectedVersion::Any, sample_events(2)).await.expect("Any on an existing stream");
    assert_eq!(versions(&more), [2, 3]);
}

/// A rejected batch leaves no event behind: not in the stream, not in the global order, and
/// its event ids are still free.
pub async fn a_rejected_batch_leaves_nothing(store: Arc<dyn EventStore>) {
    let stream = unique_stream("atomic");
    store.append(&stream, ExpectedVersion::NoStream, sample_events(1)).await.expect("first append");
    let head = store.head_position().await.expect("head");

    let batch = sample_events(3);
    let rejected = store.append(&stream, ExpectedVersion::Exact(5), batch.clone()).await;
    assert_wrong_expected_version(rejected, &stream, ExpectedVersion::Exact(5), 1);

    assert_eq!(store.read_stream(&stream).await.expect("read stream").len(), 1);
    assert_eq!(store.head_position().await.expect("head"), head);
    assert!(store.read_all(head, 10).await.expect("read all").is_empty());
    let retried = store.append(&stream, ExpectedVersion::Exact(1), batch).await.expect("the same batch, now expected");
    assert_eq!(versions(&retried), [2, 3, 4]);
    assert_eq!(positions(&retried), [head + 1, head + 2, head + 3], "the rejected batch took no position");
}

/// `append_streams` appends to each stream at its expected version, the streams' events at
/// consecutive positions in the order given, each stream's hash chain continued.
pub async fn append_streams_records_every_stream_at_consecutive_positions(store: Arc<dyn EventStore>) {
    let (existing, new) = (unique_stream("multi-existing"), unique_stream("multi-new"));
    store.append(&existing, ExpectedVersion::NoStream, sample_events(1)).await.expect("first append");
    let stored = store
        .append_streams(vec![
            StreamAppend { stream_id: new.clone(), expected: ExpectedVersion::NoStream, events: sample_events(2) },
            StreamAppend { stream_id: existing.clone(), expected: ExpectedVersion::Exact(1), events: sample_events(1) },
        ])
        .await
        .expect("an append to two streams");
    assert_eq!(stored.len(), 2);
    assert!(stored[0].iter().all(|e| e.stream_id == new) && stored[1].iter().all(|e| e.stream_id == existing));
    assert_eq!((versions(&stored[0]), versions(&stored[1])), (vec![1, 2], vec![2]));
    let all: Vec<u64> = stored.iter().flat_map(|events| positions(events)).collect();
    assert_eq!(all, (all[0]..all[0] + 3).collect::<Vec<_>>(), "one append's events take consecutive positions");
    assert_hash_chained(&store.read_stream(&existing).await.expect("read stream"));
    assert_hash_chained(&store.read_stream(&new).await.expect("read stream"));
}

/// When one stream of an `append_streams` is not at its expected version, no stream gets
/// anything, and no position is taken.
pub async fn append_streams_is_all_or_nothing(store: Arc<dyn EventStore>) {
    let (fine, stale) = (unique_stream("multi-fine"), unique_stream("multi-stale"));
    store.append(&stale, ExpectedVersion::NoStream, sample_events(2)).await.expect("first append");
    let head = store.head_position().await.expect("head");
    let refused = store
        .append_streams(vec![
            StreamAppend { stream_id: fine.clone(), expected: ExpectedVersion::NoStream, events: sample_events(1) },
            StreamAppend { stream_id: stale.clone(), expected: ExpectedVersion::Exact(1), events: sample_events(1) },
        ])
        .await;
    match refused {
        Err(StoreError::WrongExpectedVersion { stream_id, actual: 2, .. }) => assert_eq!(stream_id, stale),
        other => panic!("expected the stale stream's WrongExpectedVersion, got {other:?}"),
    }
    assert!(store.read_stream(&fine).await.expect("read stream").is_empty(), "the other stream got nothing");
    assert_eq!(store.head_position().await.expect("head"), head);
    let next = store.append(&fine, ExpectedVersion::NoStream, sample_events(1)).await.expect("append");
    assert_eq!(positions(&next), [head + 1], "the refused append took no position");
}

/// An empty batch appends nothing but still answers whether the expectation holds.
pub async fn an_empty_append_only_checks_the_expected_version(store: Arc<dyn EventStore>) {
    let stream = unique_stream("empty");
    let head = store.head_position().await.expect("head");
    let stored = store.append(&stream, ExpectedVersion::NoStream, Vec::new()).await.expect("empty append");
    assert!(stored.is_empty());
    let wrong = store.append(&stream, ExpectedVersion::Exact(3), Vec::new()).await;
    assert_wrong_expected_version(wrong, &stream, ExpectedVersion::Exact(3), 0);
    assert!(store.read_stream(&stream).await.expect("read stream").is_empty());
    assert_eq!(store.head_position().await.expect("head"), head);
}

/// `read_stream` returns exactly what the appends returned, versions 1..=n in order, and
/// nothing of other streams; an unknown stream reads as empty.
pub async fn read_stream_returns_the_stored_events_in_version_order(store: Arc<dyn EventStore>) {
    let stream = unique_stream("read");
    let other = unique_stream("other");
    let mut appended = Vec::new();
    for (expected, size) in
        [(ExpectedVersion::NoStream, 2), (ExpectedVersion::Exact(2), 1), (ExpectedVersion::Exact(3), 3)]
    {
        store.append(&other, ExpectedVersion::Any, sample_events(1)).await.expect("append to the other stream");
        appended.extend(store.append(&stream, expected, sample_events(size)).await.expect("append"));
    }
    let read = store.read_stream(&stream).await.expect("read stream");
    assert_eq!(read, appended, "read back differs from what append returned");
    assert_eq!(versions(&read), (1..=6).collect::<Vec<_>>());
    assert!(read.windows(2).all(|w| w[0].global_position < w[1].global_position));
    assert!(store.read_stream(&unique_stream("unknown")).await.expect("read unknown").is_empty());
}

/// `read_stream_after(stream, v)` returns the stream's events after version `v`, as
/// `read_stream` does, and nothing once `v` is the stream's version; also for a stream longer
/// than an adapter reads at once.
pub async fn read_stream_after_returns_only_the_later_versions(store: Arc<dyn EventStore>) {
    let stream = unique_stream("after");
    store.append(&unique_stream("other"), ExpectedVersion::Any, sample_events(2)).await.expect("append other");
    store.append(&stream, ExpectedVersion::NoStream, sample_events(3)).await.expect("append");
    store.append(&stream, ExpectedVersion::Exact(3), sample_events(2)).await.expect("append more");
    let whole = store.read_stream(&stream).await.expect("read stream");
    for after in 0..=5 {
        let later = store.read_stream_after(&stream, after).await.expect("read after");
        assert_eq!(later, whole[after as usize..], "after version {after}");
    }
    assert!(store.read_stream_after(&stream, 9).await.expect("read past the end").is_empty());
    store.append(&stream, ExpectedVersion::Exact(5), sample_events(95)).await.expect("append a long tail");
    let whole = store.read_stream(&stream).await.expect("read the long stream");
    for after in [0, 1, 15, 16, 17, 50, 99, 100] {
        let later = store.read_stream_after(&stream, after).await.expect("read after");
        assert_eq!(later, whole[after as usize..], "after version {after} of 100");
    }
    assert!(store.read_stream_after(&unique_stream("unknown"), 0).await.expect("read unknown").is_empty());
}

/// `read_stream_first(stream)` is the stream's version 1 as `read_stream` returns it, however
/// many events came after; `None` for a stream that does not exist.
pub async fn read_stream_first_returns_the_event_that_created_the_stream(store: Arc<dyn EventStore>) {
    let stream = unique_stream("first");
    store.append(&unique_stream("other"), ExpectedVersion::Any, sample_events(2)).await.expect("append other");
    store.append(&stream, ExpectedVersion::NoStream, sample_events(2)).await.expect("append");
    let created = store.read_stream(&stream).await.expect("read stream").remove(0);
    store.append(&stream, ExpectedVersion::Exact(2), sample_events(3)).await.expect("append more");
    assert_eq!(store.read_stream_first(&stream).await.expect("read first"), Some(created));
    assert_eq!(store.read_stream_first(&unique_stream("unknown")).await.expect("read unknown"), None);
}

/// `read_all(after, max)` returns at most `max` events after `after`, in global order.
pub async fn read_all_pages_from_a_position(store: Arc<dyn EventStore>) {
    let head = store.head_position().await.expect("head");
    let appended =
        store.append(&unique_stream("all"), ExpectedVersion::NoStream, sample_events(5)).await.expect("append");
    assert_eq!(positions(&appended), (head + 1..=head + 5).collect::<Vec<_>>());

    assert_eq!(store.read_all(head, 100).await.expect("read all"), appended);
    assert_eq!(store.read_all(head + 1, 2).await.expect("a page"), appended[1..3]);
    assert!(store.read_all(head + 5, 10).await.expect("past the head").is_empty());
    assert!(store.read_all(head, 0).await.expect("an empty page").is_empty());
    assert_eq!(store.head_position().await.expect("head"), head + 5);
}

/// Many concurrent appenders, some sharing a stream: positions stay 1..=N without holes, every
/// acknowledged event is at the position it was given, every `read_all` taken meanwhile is a
/// gap-free prefix, and the shared stream's versions and hash chain stay intact.
pub async fn global_positions_stay_gap_free_under_concurrent_appends(store: Arc<dyn EventStore>) {
    const APPENDERS: usize = 20;
    const APPENDS_EACH: u64 = 50;
    let shared_stream = unique_stream("shared");
    let appending = Arc::new(AtomicBool::new(true));

    let snapshots = tokio::spawn({
        let (store, appending) = (store.clone(), appending.clone());
        async move {
            let mut taken = 0;
            loop {
                let last_round = !appending.load(Ordering::SeqCst);
                let snapshot = store.read_all(0, usize::MAX).await.expect("snapshot");
                assert_gap_free_from(0, &snapshot);
                taken += 1;
                if last_round {
                    return taken;
                }
            }
        }
    });
    let tail = tokio::spawn({
        let (store, appending) = (store.clone(), appending.clone());
        async move {
            let mut head = store.watch_head();
            let mut after = 0;
            loop {
                let last_round = !appending.load(Ordering::SeqCst);
                let page = store.read_all(after, 7).await.expect("page");
                assert_gap_free_from(after, &page);
                after = page.last().map_or(after, |e| e.global_position);
                if page.is_empty() {
                    if last_round {
                        return after;
                    }
                    let _ = timeout(Duration::from_millis(20), head.changed()).await;
                }
            }
        }
    });

    let appenders: Vec<_> = (0..APPENDERS)
        .map(|i| {
            let store = store.clone();
            // Half the appenders share a stream (`Any`), so requests for one stream meet in
            // one commit; the others own a stream each (`Exact`).
            let stream = if i % 2 == 0 { shared_stream.clone() } else { unique_stream("own") };
            tokio::spawn(async move {
                let mut acknowledged = Vec::new();
                for version in 0..APPENDS_EACH {
                    let expected = if i % 2 == 0 { ExpectedVersion::Any } else { ExpectedVersion::after(version) };
                    acknowledged.extend(store.append(&stream, expected, sample_events(1)).await.expect("append"));
                }
                acknowledged
            })
        })
        .collect();
    let mut acknowledged = Vec::new();
    for appender in appenders {
        acknowledged.extend(appender.await.expect("appender task"));
    }
    appending.store(false, Ordering::SeqCst);
    let snapshots_taken = snapshots.await.expect("snapshot task");
    let tailed_to = tail.await.expect("tail task");

    let everything = store.read_all(0, usize::MAX).await.expect("read everything");
    assert_gap_free_from(0, &everything);
    let head = store.head_position().await.expect("head");
    assert_eq!(everything.last().map_or(0, |e| e.global_position), head);
    assert_eq!(tailed_to, head, "the tailing reader reached the head");
    assert!(snapshots_taken > 0);

    assert_eq!(acknowledged.len(), APPENDERS * APPENDS_EACH as usize);
    let by_position: HashMap<u64, &EventEnvelope> = everything.iter().map(|e| (e.global_position, e)).collect();
    for ack in &acknowledged {
        assert_eq!(by_position.get(&ack.global_position), Some(&ack), "acknowledged event not at its position");
    }

    let shared = store.read_stream(&shared_stream).await.expect("read the shared stream");
    assert_eq!(versions(&shared), (1..=(APPENDERS as u64 / 2) * APPENDS_EACH).collect::<Vec<_>>());
    assert_hash_chained(&shared);
}

/// Each event holds its predecessor's hash (`GENESIS` for the first) and the hash of its own
/// content, across separate appends.
pub async fn each_stream_is_hash_chained(store: Arc<dyn EventStore>) {
    let stream = unique_stream("chain");
    let mut appended = store.append(&stream, ExpectedVersion::NoStream, sample_events(2)).await.expect("append");
    appended.extend(store.append(&stream, ExpectedVersion::Exact(2), sample_events(3)).await.expect("append"));
    assert_hash_chained(&appended);
    assert_eq!(store.read_stream(&stream).await.expect("read stream"), appended);
    let other =
        store.append(&unique_stream("chain"), ExpectedVersion::NoStream, sample_events(1)).await.expect("append");
    assert_eq!(other[0].prev_hash, GENESIS, "every stream starts its own chain");
}

/// [`subscribe`] delivers the events after its start position, then waits for and delivers
/// live appends, in order.
pub async fn subscribe_catches_up_then_follows_live_appends(store: Arc<dyn EventStore>) {
    let stream = unique_stream("subscribe");
    let start = store.head_position().await.expect("head");
    let existing = store.append(&stream, ExpectedVersion::NoStream, sample_events(3)).await.expect("append");
    let mut subscription = Box::pin(subscribe(store.clone(), start));
    for expected in &existing {
        let delivered = timeout(PATIENCE, subscription.next()).await.expect("catch-up in time");
        assert_eq!(delivered.expect("subscription open").expect("catch-up event"), *expected);
    }
    assert!(
        timeout(Duration::from_millis(100), subscription.next()).await.is_err(),
        "nothing to deliver once caught up"
    );

    let live = tokio::spawn({
        let (store, stream) = (store.clone(), stream.clone());
        async move {
            let mut live = Vec::new();
            for version in 3..6 {
                live.extend(
                    store.append(&stream, ExpectedVersion::Exact(version), sample_events(1)).await.expect("append"),
                );
            }
            live
        }
    });
    let live = live.await.expect("live appender");
    for expected in &live {
        let delivered = timeout(PATIENCE, subscription.next()).await.expect("live event in time");
        assert_eq!(delivered.expect("subscription open").expect("live event"), *expected);
    }
}

/// `watch_head` starts at the head position and advances to the position of each append.
pub async fn watch_head_follows_appends(store: Arc<dyn EventStore>) {
    let mut head = store.watch_head();
    assert_eq!(*head.borrow_and_update(), store.head_position().await.expect("head"));
    let stored =
        store.append(&unique_stream("watch"), ExpectedVersion::NoStream, sample_events(2)).await.expect("append");
    let last = stored[1].global_position;
    timeout(PATIENCE, head.wait_for(|position| *position >= last))
        .await
        .expect("the head advances in time")
        .expect("the store is open");
    assert_eq!(store.head_position().await.expect("head"), last);
}

/// `read_filtered` returns, in global order and at most `max` at a time, exactly the events
/// after `after` that [`EventFilter::matches`]: by stream, tenant, types, positions and time.
pub async fn read_filtered_returns_what_the_filter_matches_in_global_order(store: Arc<dyn EventStore>) {
    let head = store.head_position().await.expect("head");
    let start = Utc::now() - chrono::Duration::hours(1);
    let tenant = |t: &str| format!("filter-{t}-{}", Uuid::new_v4());
    let (alpha, beta) = (tenant("alpha"), tenant("beta"));
    let mut appended = Vec::new();
    // Interleaved appends, so each tenant's and stream's events are not contiguous.
    for round in 0..3i64 {
        for (t, kind) in [(&alpha, "One"), (&beta, "Two"), (&alpha, "Two")] {
            let stream = format!("{t}/{kind}");
            let mut events = sample_events(2);
            for (i, e) in events.iter_mut().enumerate() {
                e.tenant_id = t.clone();
                e.event_type = format!("Filter{kind}");
                e.occurred_at = start + chrono::Duration::minutes(round * 10 + i as i64);
            }
            let expected = ExpectedVersion::after(round as u64 * 2);
            appended.extend(store.append(&stream, expected, events).await.expect("append"));
        }
    }
    let filters = [
        EventFilter { tenant_id: Some(alpha.clone()), ..EventFilter::default() },
        EventFilter { stream_id: Some(format!("{beta}/Two")), ..EventFilter::default() },
        EventFilter {
            stream_id: Some(format!("{alpha}/Two")),
            tenant_id: Some(alpha.clone()),
            ..EventFilter::default()
        },
        EventFilter { tenant_id: Some(alpha.clone()), event_types: vec!["FilterTwo".into()], ..EventFilter::default() },
        EventFilter { event_types: vec!["FilterOne".into(), "NotStored".into()], ..EventFilter::default() },
        EventFilter {
            tenant_id: Some(beta.clone()),
            occurred_from: Some(start + chrono::Duration::minutes(10)),
            occurred_before: Some(start + chrono::Duration::minutes(21)),
            ..EventFilter::default()
        },
        EventFilter { after_position: Some(head + 4), up_to_position: Some(head + 13), ..EventFilter::default() },
    ];
    for filter in filters {
        let expected: Vec<_> = appended.iter().filter(|e| filter.matches(e)).cloned().collect();
        assert!(!expected.is_empty() && expected.len() < appended.len(), "the filter selects something: {filter:?}");
        assert_eq!(store.read_filtered(&filter, head, 1000).await.expect("read filtered"), expected, "{filter:?}");
        // Paging two at a time from the last position seen gives the same events.
        let (mut paged, mut after) = (Vec::new(), head);
        loop {
            let page = store.read_filtered(&filter, after, 2).await.expect("a page");
            assert!(page.len() <= 2);
            let Some(last) = page.last() else { break };
            after = last.global_position;
            paged.extend(page);
        }
        assert_eq!(paged, expected, "paged {filter:?}");
    }
    let nothing = EventFilter { tenant_id: Some(tenant("nobody")), ..EventFilter::default() };
    assert!(store.read_filtered(&nothing, 0, 10).await.expect("no match").is_empty());
    let foreign_stream = EventFilter {
        stream_id: Some(format!("{alpha}/One")),
        tenant_id: Some(beta.clone()),
        ..EventFilter::default()
    };
    assert!(store.read_filtered(&foreign_stream, 0, 10).await.expect("no match").is_empty());
}

/// Asserts that `events` (one stream, in version order, from version 1) form an intact chain.
pub fn assert_hash_chained(events: &[EventEnvelope]) {
    let mut prev_hash = GENESIS.to_owned();
    for event in events {
        assert_eq!(event.prev_hash, prev_hash, "event {} does not link to its predecessor", event.stream_version);
        assert_eq!(event.hash, event_hash(&event.prev_hash, event), "event {} hash mismatch", event.stream_version);
        prev_hash = event.hash.clone();
    }
}

/// `n` events with every envelope field set, including values that must round-trip exactly
/// (nanosecond time, nested JSON, floats, non-ASCII text).
pub fn sample_events(n: usize) -> Vec<NewEvent> {
    (0..n)
        .map(|i| NewEvent {
            event_id: Uuid::now_v7(),
            event_type: "ContractTested".into(),
            schema_version: 2,
            tenant_id: "tenant-contract".into(),
            occurred_at: Utc::now(),
            trace_id: format!("trace-{i}"),
            correlation_id: "correlation".into(),
            causation_id: (i % 2 == 1).then(|| format!("cause-{i}")),
            actor: Actor { subject: "contract".into(), client_id: (i % 2 == 0).then(|| "client".into()) },
            data: json!({"n": i, "ratio": 0.1 + i as f64, "text": "héllo ✓", "nested": {"z": [1, null], "a": true}}),
        })
        .collect()
}

fn unique_stream(kind: &str) -> String {
    format!("contract-{kind}-{}", Uuid::new_v4())
}

fn versions(events: &[EventEnvelope]) -> Vec<u64> {
    events.iter().map(|e| e.stream_version).collect()
}

fn positions(events: &[EventEnvelope]) -> Vec<u64> {
    events.iter().map(|e| e.global_position).collect()
}

fn assert_gap_free_from(after: u64, events: &[EventEnvelope]) {
    for (event, expected) in events.iter().zip(after + 1..) {
        assert_eq!(event.global_position, expected, "a reader saw a hole or a reordering after position {after}");
    }
}

fn assert_wrong_expected_version(
    result: Result<Vec<EventEnvelope>, StoreError>,
    stream: &str,
    expected: ExpectedVersion,
    actual: u64,
) {
    match result {
        Err(StoreError::WrongExpectedVersion { stream_id, expected: e, actual: a }) => {
            assert_eq!((stream_id.as_str(), e, a), (stream, expected, actual));
        }
        other => panic!("expected WrongExpectedVersion {{ {expected:?}, actual: {actual} }}, got {other:?}"),
    }
}

/// The contract every [`crate::SecretStore`] adapter must pass: immutable numbered versions,
/// check-and-set writes, and the staging labels of a rotation. Secret names are fresh, so it can
/// run on a vault that holds other secrets.
pub async fn run_vault_contract(vault: Arc<dyn crate::SecretStore>) {
    vault_versions_are_numbered_immutable_and_check_and_set(vault.clone()).await;
    vault_labels_move_through_a_rotation(vault.clone()).await;
    a_vault_has_one_owner(vault).await;
}

/// A vault belongs to the first owner that claims it, a tenant or "shared", for good.
pub async fn a_vault_has_one_owner(vault: Arc<dyn crate::SecretStore>) {
    use crate::{VaultError, VaultOwner};
    let (tenants, shared) =
        (format!("owned-{}", Uuid::new_v4().simple()), format!("shared-{}", Uuid::new_v4().simple()));
    let acme = VaultOwner::Tenant("acme".into());
    assert_eq!(vault.owner(&tenants).await.expect("owner"), None, "an unknown vault has no owner");
    vault.claim(&tenants, &acme).await.expect("claim");
    vault.claim(&tenants, &acme).await.expect("claiming one's own vault again is a no-op");
    for other in [VaultOwner::Tenant("globex".into()), VaultOwner::Shared] {
        assert!(matches!(vault.claim(&tenants, &other).await, Err(VaultError::ClaimedByAnother(_))));
    }
    assert_eq!(vault.owner(&tenants).await.expect("owner"), Some(acme.clone()));
    vault.claim(&shared, &VaultOwner::Shared).await.expect("claim shared");
    assert!(matches!(vault.claim(&shared, &acme).await, Err(VaultError::ClaimedByAnother(_))));
    assert_eq!(vault.owner(&shared).await.expect("owner"), Some(VaultOwner::Shared));
}

fn unique_secret(kind: &str) -> domain::secret_ref::SecretRef {
    domain::secret_ref::SecretRef::parse(&format!("kv://contract/{kind}-{}", Uuid::new_v4().simple()))
        .expect("a valid ref")
}

/// Puts add versions from 1; old versions stay readable pinned; a stale expected version
/// conflicts and stores nothing.
pub async fn vault_versions_are_numbered_immutable_and_check_and_set(vault: Arc<dyn crate::SecretStore>) {
    use crate::VaultError;
    let s = unique_secret("versions");
    assert!(vault.metadata(&s).await.expect("metadata").is_none());
    assert_eq!(vault.put(&s, b"one", Some(0)).await.expect("first put"), 1);
    assert_eq!(vault.put(&s, b"two", Some(1)).await.expect("second put"), 2);
    assert!(matches!(
        vault.put(&s, b"stale", Some(1)).await,
        Err(VaultError::VersionConflict { expected: 1, actual: 2, .. })
    ));
    assert_eq!(vault.get(&s).await.expect("current").value, b"two");
    assert_eq!(vault.get(&s.with_version(1)).await.expect("pinned").value, b"one");
    assert!(matches!(vault.get(&s.with_version(9)).await, Err(VaultError::NotFound(_))));
    let m = vault.metadata(&s).await.expect("metadata").expect("exists");
    assert_eq!((m.current_version, m.versions, m.previous_version, m.pending_version), (2, 2, Some(1), None));
}

/// A staged version is pending until promoted (current → previous), then previous is retired; a
/// failed one is discarded. Promotion is idempotent and checks the current version.
pub async fn vault_labels_move_through_a_rotation(vault: Arc<dyn crate::SecretStore>) {
    use crate::VaultError;
    let s = unique_secret("labels");
    vault.put(&s, b"one", None).await.expect("put");
    assert_eq!(vault.stage_pending(&s, b"two", Some(0)).await.expect("stage"), 2);
    assert!(matches!(vault.stage_pending(&s, b"x", Some(0)).await, Err(VaultError::VersionConflict { .. })));
    assert_eq!(vault.get(&s).await.expect("current").value, b"one", "pending is not current");
    assert!(vault.previous(&s).await.expect("previous").is_none());
    assert!(matches!(vault.promote(&s, 2, Some(5)).await, Err(VaultError::VersionConflict { .. })));
    vault.promote(&s, 2, Some(1)).await.expect("promote");
    vault.promote(&s, 2, Some(1)).await.expect("promoting again is a no-op");
    assert_eq!(vault.get(&s).await.expect("current").value, b"two", "promoted is read at once");
    let previous = vault.previous(&s).await.expect("previous").expect("labelled");
    assert_eq!((previous.value.version, previous.value.value.as_slice()), (1, &b"one"[..]));
    assert!(vault.retire_previous(&s, 1).await.expect("retire"));
    assert!(vault.previous(&s).await.expect("previous").is_none());
    vault.stage_pending(&s, b"three", None).await.expect("stage");
    assert!(vault.discard_pending(&s, 3).await.expect("discard"));
    let m = vault.metadata(&s).await.expect("metadata").expect("exists");
    assert_eq!((m.current_version, m.pending_version, m.previous_version, m.versions), (2, None, None, 3));
}

/// The contract every [`crate::Leases`] adapter must pass: one holder at a time, renewals by
/// the holder, takeover only after expiry, release, and one winner among racing workers.
pub async fn run_leases_contract(leases: Arc<dyn crate::Leases>) {
    a_lease_has_one_holder_until_it_expires(leases.clone()).await;
    of_workers_racing_for_a_free_lease_exactly_one_wins(leases).await;
}

pub async fn a_lease_has_one_holder_until_it_expires(leases: Arc<dyn crate::Leases>) {
    let name = format!("contract-lease-{}", Uuid::new_v4().simple());
    let t = |seconds: i64| chrono::DateTime::UNIX_EPOCH + chrono::TimeDelta::seconds(1_700_000_000 + seconds);
    let taken = leases.acquire(&name, "a", t(0), t(10)).await.unwrap();
    assert_eq!((taken.holder.as_str(), taken.expires_at), ("a", t(10)), "a free lease is taken");
    let refused = leases.acquire(&name, "b", t(5), t(15)).await.unwrap();
    assert_eq!((refused.holder.as_str(), refused.expires_at), ("a", t(10)), "b is told who holds it");
    let renewed = leases.acquire(&name, "a", t(6), t(20)).await.unwrap();
    assert_eq!((renewed.holder.as_str(), renewed.expires_at), ("a", t(20)), "the holder renews");
    let still = leases.acquire(&name, "b", t(19), t(29)).await.unwrap();
    assert_eq!(still.holder, "a", "not before the renewed expiry");
    let taken_over = leases.acquire(&name, "b", t(20), t(30)).await.unwrap();
    assert_eq!((taken_over.holder.as_str(), taken_over.expires_at), ("b", t(30)), "an expired lease is taken over");
    leases.release(&name, "a").await.unwrap();
    assert_eq!(leases.acquire(&name, "c", t(21), t(31)).await.unwrap().holder, "b", "only the holder releases");
    leases.release(&name, "b").await.unwrap();
    assert_eq!(leases.acquire(&name, "c", t(21), t(31)).await.unwrap().holder, "c", "a released lease is free");
}

pub async fn of_workers_racing_for_a_free_lease_exactly_one_wins(leases: Arc<dyn crate::Leases>) {
    let name = format!("contract-race-{}", Uuid::new_v4().simple());
    let now = Utc::now();
    let until = now + chrono::TimeDelta::seconds(30);
    let racers = (0..16).map(|i| {
        let (leases, name) = (leases.clone(), name.clone());
        tokio::spawn(async move { (i, leases.acquire(&name, &format!("w{i}"), now, until).await.unwrap()) })
    });
    let answers = futures::future::join_all(racers).await;
    let answers: Vec<_> = answers.into_iter().map(Result::unwrap).collect();
    let winners: Vec<_> = answers.iter().filter(|(i, lease)| lease.holder == format!("w{i}")).collect();
    assert_eq!(winners.len(), 1, "{answers:?}");
    let holder = &winners[0].1.holder;
    assert!(answers.iter().all(|(_, lease)| &lease.holder == holder), "every racer is told the winner");
}
