//! Verifying the store's hash chains: what `integration-engine verify` runs for auditors.

use std::collections::HashMap;
use std::fmt;

use domain::EventEnvelope;
use store::hash_chain::{GENESIS, event_hash};
use store::{EventFilter, EventStore};
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

/// The first place the store's chains do not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainBreak {
    pub global_position: u64,
    /// The event found there, when it could be read at all.
    pub event: Option<BrokenEvent>,
    pub reason: String,
}

/// The identity of an event that breaks its stream's chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokenEvent {
    pub stream_id: String,
    pub stream_version: u64,
    pub event_id: Uuid,
}

impl fmt::Display for ChainBreak {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.event {
            Some(e) => write!(
                f,
                "chain broken at global position {}: stream {} version {} (event {}): {}",
                self.global_position, e.stream_id, e.stream_version, e.event_id, self.reason
            ),
            None => write!(f, "chain broken at global position {}: {}", self.global_position, self.reason),
        }
    }
}

/// Where a stream's chain stands after the events seen so far.
struct StreamTip {
    version: u64,
    hash: String,
}

/// Walks the whole store in global order and checks, for every event (of `tenant` only, when
/// given; streams never span tenants and their ids start with the tenant): global positions run
/// 1, 2, 3 without gaps (the store never leaves holes, so a gap is a deleted event), every row
/// can be read, stream versions run 1, 2, 3 without gaps, `prev_hash` is the previous event's
/// hash ([`GENESIS`] for the first), and the stored hash is the hash of the content. It keeps
/// walking after a break, so the counts cover the whole store, and reports the first break.
pub async fn verify_chains(store: &dyn EventStore, tenant: Option<&str>) -> Result<VerifyReport, ProjectionError> {
    let mut tips: HashMap<String, StreamTip> = HashMap::new();
    let mut report = VerifyReport { events: 0, streams: 0, first_break: None };
    let stream_prefix = tenant.map(|t| format!("{t}/"));
    // What is stored, read back from storage: `read_all` may answer the latest commits from the
    // memory of the process that wrote them, which an edit of the file would not reach.
    let stored = EventFilter::default();
    let mut after = 0;
    loop {
        let page = match store.read_filtered(&stored, after, PAGE).await {
            Ok(page) => page,
            Err(e) => {
                // A row the store cannot even decode: find it by reading one event at a time.
                match store.read_filtered(&stored, after, 1).await {
                    Ok(one) if !one.is_empty() => one,
                    Ok(_) => return Err(e.into()),
                    Err(cause) => {
                        report.first_break.get_or_insert_with(|| ChainBreak {
                            global_position: after + 1,
                            event: None,
                            reason: format!("the event cannot be read: {cause}"),
                        });
                        after += 1;
                        continue;
                    }
                }
            }
        };
        let Some(last) = page.last() else { break };
        let mut expected_position = after + 1;
        // Page by what was read, not by the tenant filter, so pages always move forward.
        after = last.global_position;
        for event in &page {
            let gap = event.global_position != expected_position;
            let missing = expected_position;
            expected_position = event.global_position + 1;
            if stream_prefix.as_deref().is_some_and(|p| !event.stream_id.starts_with(p)) {
                // A deleted event leaves nothing to tell whose it was: it may have been this
                // tenant's (the last of one of its streams, which no later version would
                // betray), so a hole is reported whichever tenant's event follows it.
                if gap {
                    report.first_break.get_or_insert_with(|| ChainBreak {
                        global_position: missing,
                        event: None,
                        reason: format!(
                            "global positions {missing}..{} are missing (deleted events)",
                            event.global_position - 1
                        ),
                    });
                }
                continue;
            }
            report.events += 1;
            let tip = tips.get(&event.stream_id);
            let problem = if gap {
                Some(format!("global positions {missing}..{} are missing (deleted events)", event.global_position - 1))
            } else {
                first_problem(event, tip)
            };
            if let Some(reason) = problem {
                report.first_break.get_or_insert_with(|| ChainBreak {
                    global_position: event.global_position,
                    event: Some(BrokenEvent {
                        stream_id: event.stream_id.clone(),
                        stream_version: event.stream_version,
                        event_id: event.event_id,
                    }),
                    reason,
                });
            }
            // Carry on from what is stored, so one altered event is reported once rather than
            // making every later event of its stream look broken too.
            tips.insert(event.stream_id.clone(), StreamTip { version: event.stream_version, hash: event.hash.clone() });
        }
    }
    report.streams = tips.len() as u64;
    Ok(report)
}

/// Why `event` does not follow its stream's `tip`, if it does not.
fn first_problem(event: &EventEnvelope, tip: Option<&StreamTip>) -> Option<String> {
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
