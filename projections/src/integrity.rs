//! Verifying the store's hash chains: what `integration-engine verify` runs for auditors.

use std::collections::HashMap;
use std::fmt;

use domain::EventEnvelope;
use store::EventStore;
use store::hash_chain::{GENESIS, event_hash};
use uuid::Uuid;

use crate::ProjectionError;

/// Events read per page while walking the store.
const PAGE: usize = 1000;

/// What a verification walked and the first place the chain does not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Events checked.
    pub events: u64,
    /// Distinct streams those events belong to.
    pub streams: u64,
    /// The first event, in global order, that breaks its stream's chain; `None` when intact.
    pub first_break: Option<ChainBreak>,
}

/// An event that does not fit its stream's chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainBreak {
    pub global_position: u64,
    pub stream_id: String,
    pub stream_version: u64,
    pub event_id: Uuid,
    pub reason: String,
}

impl fmt::Display for ChainBreak {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "chain broken at global position {}: stream {} version {} (event {}): {}",
            self.global_position, self.stream_id, self.stream_version, self.event_id, self.reason
        )
    }
}

/// Where a stream's chain stands after the events seen so far.
struct StreamTip {
    version: u64,
    hash: String,
}

/// Walks the whole store in global order and checks, for every event (of `tenant` only, when
/// given; streams never span tenants): positions strictly increase, stream versions run 1, 2, 3
/// without gaps, `prev_hash` is the previous event's hash ([`GENESIS`] for the first), and the
/// stored hash is the hash of the content. It keeps walking after a break, so the counts cover
/// the whole store, and reports the first break.
pub async fn verify_chains(store: &dyn EventStore, tenant: Option<&str>) -> Result<VerifyReport, ProjectionError> {
    let mut tips: HashMap<String, StreamTip> = HashMap::new();
    let mut report = VerifyReport { events: 0, streams: 0, first_break: None };
    let mut last_position = 0;
    let mut after = 0;
    loop {
        let page = store.read_all(after, PAGE).await?;
        let Some(last) = page.last() else { break };
        // Page by what was read, not by the tenant filter, so pages always move forward.
        after = last.global_position;
        for event in page.iter().filter(|e| tenant.is_none_or(|t| e.tenant_id == t)) {
            report.events += 1;
            let tip = tips.get(&event.stream_id);
            if let Some(reason) = first_problem(event, last_position, tip) {
                report.first_break.get_or_insert_with(|| ChainBreak {
                    global_position: event.global_position,
                    stream_id: event.stream_id.clone(),
                    stream_version: event.stream_version,
                    event_id: event.event_id,
                    reason,
                });
            }
            last_position = last_position.max(event.global_position);
            // Carry on from what is stored, so one altered event is reported once rather than
            // making every later event of its stream look broken too.
            tips.insert(event.stream_id.clone(), StreamTip { version: event.stream_version, hash: event.hash.clone() });
        }
    }
    report.streams = tips.len() as u64;
    Ok(report)
}

/// Why `event` does not follow `last_position` and its stream's `tip`, if it does not.
fn first_problem(event: &EventEnvelope, last_position: u64, tip: Option<&StreamTip>) -> Option<String> {
    if event.global_position <= last_position {
        return Some(format!("global position {} does not follow {last_position}", event.global_position));
    }
    let expected_version = tip.map_or(1, |t| t.version + 1);
    if event.stream_version != expected_version {
        return Some(format!("stream version {} where {expected_version} was expected", event.stream_version));
    }
    let expected_prev = tip.map_or(GENESIS, |t| t.hash.as_str());
    if event.prev_hash != expected_prev {
        return Some(match tip {
            Some(t) => format!("prev_hash does not link to version {}", t.version),
            None => "the first event of the stream does not start from the genesis hash".into(),
        });
    }
    let computed = event_hash(&event.prev_hash, event);
    if event.hash != computed {
        return Some(format!("content hash mismatch: stored {}, computed {computed}", event.hash));
    }
    None
}
