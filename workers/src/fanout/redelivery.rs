//! Choosing webhook deliveries to send again (`webhooks redeliver`): the delivery runs of a
//! tenant, folded from the store, that match a selection (one run, one subscription, a time
//! range) and ended dead-lettered, or delivered too when asked.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use domain::outbound::DELIVER_WEBHOOK_OPERATION;
use domain::run::{Run, RunEvent, RunState, RunStatus};
use domain::{AggregateEvent, Decider};
use store::{EventFilter, EventStore, StoreError};

/// Which deliveries to send again; every field that is set must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    pub run: Option<String>,
    pub subscription: Option<String>,
    /// Requested at or after.
    pub since: Option<DateTime<Utc>>,
    /// Requested before.
    pub until: Option<DateTime<Utc>>,
    /// Also deliveries that succeeded (by default only dead-lettered ones).
    pub include_delivered: bool,
}

/// The ids of the tenant's delivery runs `selection` names that have ended as it asks, sorted.
pub async fn select(store: &dyn EventStore, tenant: &str, selection: &Selection) -> Result<Vec<String>, StoreError> {
    let runs = webhook_runs(store, tenant, selection.run.as_deref()).await?;
    let mut chosen: Vec<String> = runs
        .into_iter()
        .filter(|(id, run)| {
            selection.run.as_ref().is_none_or(|r| r == id)
                && selection.subscription.as_ref().is_none_or(|s| *s == run.subscription_id)
                && selection.since.is_none_or(|t| run.requested_at >= t)
                && selection.until.is_none_or(|t| run.requested_at < t)
                && match &run.state {
                    RunState::Exists { status: RunStatus::Failed, .. } => true,
                    RunState::Exists { status: RunStatus::Completed, .. } => selection.include_delivered,
                    _ => false,
                }
        })
        .map(|(id, _)| id)
        .collect();
    chosen.sort();
    Ok(chosen)
}

/// A webhook run as the store tells it.
struct DeliveryRun {
    subscription_id: String,
    requested_at: DateTime<Utc>,
    state: RunState,
}

/// Every webhook run of the tenant (just `only` when given), folded from the store.
async fn webhook_runs(
    store: &dyn EventStore,
    tenant: &str,
    only: Option<&str>,
) -> Result<HashMap<String, DeliveryRun>, StoreError> {
    let mut runs: HashMap<String, DeliveryRun> = HashMap::new();
    if let Some(run_id) = only {
        let stream = store.read_stream(&domain::ids::stream_id(tenant, run_id)).await?;
        fold_into(&mut runs, stream.iter());
        return Ok(runs);
    }
    // Only the tenant's run events: the store filters where the data lives.
    let filter = EventFilter {
        tenant_id: Some(tenant.to_owned()),
        event_types: RunEvent::TYPES.iter().map(|t| (*t).to_owned()).collect(),
        ..EventFilter::default()
    };
    let mut after = 0;
    loop {
        let page = store.read_filtered(&filter, after, 4096).await?;
        let Some(last) = page.last() else { break };
        after = last.global_position;
        fold_into(&mut runs, page.iter());
    }
    Ok(runs)
}

fn fold_into<'a>(runs: &mut HashMap<String, DeliveryRun>, events: impl Iterator<Item = &'a domain::EventEnvelope>) {
    for envelope in events {
        if !RunEvent::TYPES.contains(&envelope.event_type.as_str()) {
            continue;
        }
        let Ok(event) = RunEvent::decode(&envelope.event_type, envelope.schema_version, &envelope.data) else {
            continue;
        };
        match &event {
            RunEvent::RunRequested(r) if r.operation == DELIVER_WEBHOOK_OPERATION => {
                let subscription_id =
                    r.input.get("subscriptionId").and_then(serde_json::Value::as_str).unwrap_or_default().to_owned();
                let state = Run::evolve(RunState::None, &event);
                runs.insert(r.run_id.clone(), DeliveryRun { subscription_id, requested_at: r.requested_at, state });
            }
            RunEvent::RunRequested(_) => {}
            other => {
                if let Some(run) = runs.get_mut(other.run_id()) {
                    run.state = Run::evolve(std::mem::take(&mut run.state), other);
                }
            }
        }
    }
}
