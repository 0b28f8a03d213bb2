use chrono::{DateTime, Utc};
use domain::{Actor, EventEnvelope, NewEvent, StoredEventData};
use uuid::Uuid;

/// Who asks, in which tenant, under which trace: the metadata every appended event carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandContext {
    pub tenant_id: String,
    pub trace_id: String,
    pub correlation_id: String,
    pub causation_id: Option<String>,
    pub actor: Actor,
}

impl CommandContext {
    /// A context whose correlation id is its trace id, for commands that start a flow.
    pub fn new(tenant_id: impl Into<String>, trace_id: impl Into<String>, actor: Actor) -> Self {
        let trace_id = trace_id.into();
        Self { tenant_id: tenant_id.into(), correlation_id: trace_id.clone(), trace_id, causation_id: None, actor }
    }

    /// The context of a command the worker `who` issues because of `event`: the event's tenant,
    /// trace and correlation, caused by the event.
    pub fn caused_by(event: &EventEnvelope, who: &str) -> Self {
        Self {
            tenant_id: event.tenant_id.clone(),
            trace_id: event.trace_id.clone(),
            correlation_id: event.correlation_id.clone(),
            causation_id: Some(event.event_id.to_string()),
            actor: Actor::worker(who),
        }
    }

    /// Wraps an encoded domain event in the envelope fields this context supplies.
    pub fn new_event(&self, encoded: StoredEventData, occurred_at: DateTime<Utc>) -> NewEvent {
        NewEvent {
            event_id: Uuid::now_v7(),
            event_type: encoded.event_type,
            schema_version: encoded.schema_version,
            tenant_id: self.tenant_id.clone(),
            occurred_at,
            trace_id: self.trace_id.clone(),
            correlation_id: self.correlation_id.clone(),
            causation_id: self.causation_id.clone(),
            actor: self.actor.clone(),
            data: encoded.data,
        }
    }
}
