use crate::documents::Documents;
use domain::run::{RunEvent, RunStatus};
use domain::{AnyEvent, EventEnvelope};

use super::update_doc;
use crate::ProjectionError;
use crate::read_models::RUNS;
use crate::views::{AttemptView, RunView};

pub const NAME: &str = RUNS;

pub fn apply(docs: &mut Documents<'_>, event: &EventEnvelope, decoded: &AnyEvent) -> Result<(), ProjectionError> {
    match decoded {
        AnyEvent::Run(run_event) => apply_run_event(docs, event, run_event),
        AnyEvent::Connection(_)
        | AnyEvent::Provider(_)
        | AnyEvent::Subscription(_)
        | AnyEvent::Delivery(_)
        | AnyEvent::Credential(_)
        | AnyEvent::Outbound(_) => Ok(()),
    }
}

fn apply_run_event(
    docs: &mut Documents<'_>,
    event: &EventEnvelope,
    run_event: &RunEvent,
) -> Result<(), ProjectionError> {
    match run_event {
        RunEvent::RunRequested(e) => {
            let view = RunView {
                run_id: e.run_id.clone(),
                tenant_id: event.tenant_id.clone(),
                connection_id: e.connection_id.clone(),
                operation: e.operation.clone(),
                status: RunStatus::Requested,
                attempts: 0,
                requested_at: e.requested_at,
                started_at: None,
                completed_at: None,
                trace_id: e.trace_id.clone(),
                last_error: None,
                next_attempt_at: None,
                attempt_log: Vec::new(),
                output: None,
            };
            docs.put(NAME, &event.tenant_id, &e.run_id, view);
            Ok(())
        }
        RunEvent::RunStarted(e) => update_doc(docs, NAME, event, &e.run_id, |view: &mut RunView| {
            view.status = RunStatus::Running;
            // As the decider counts: the attempt number, never going back.
            view.attempts = view.attempts.max(e.attempt);
            view.started_at = view.started_at.or(Some(e.started_at));
            view.next_attempt_at = None;
            view.attempt_log.push(AttemptView::running(e.attempt, e.started_at));
        }),
        RunEvent::RunAttemptFailed(e) => update_doc(docs, NAME, event, &e.run_id, |view: &mut RunView| {
            // Still running: the next attempt is scheduled (or a RunFailed follows).
            view.status = RunStatus::Running;
            view.attempts = view.attempts.max(e.attempt);
            view.last_error = Some(e.error.clone());
            view.next_attempt_at = e.next_attempt_at;
            if let Some(started_at) = e.started_at {
                // Recorded whole (no `RunStarted` before it): the entry starts here.
                view.started_at = view.started_at.or(Some(started_at));
                view.attempt_log.push(AttemptView::running(e.attempt, started_at));
            }
            if let Some(entry) = view.attempt_log.iter_mut().rev().find(|a| a.attempt == e.attempt) {
                entry.outcome = "Failed".into();
                entry.finished_at = Some(e.failed_at);
                entry.error = Some(e.error.clone());
                if let Some(response) = &e.response {
                    entry.status_code = response.status_code;
                    entry.latency_ms = Some(response.latency_ms);
                    entry.response_body.clone_from(&response.response_body);
                }
            }
        }),
        RunEvent::RunCompleted(e) => update_doc(docs, NAME, event, &e.run_id, |view: &mut RunView| {
            view.status = RunStatus::Completed;
            view.completed_at = Some(e.completed_at);
            view.next_attempt_at = None;
            // Served as the event has it: the engine puts no credential of its own in an output
            // (see `connectors::operations::ApiClients::call`), but an `http.request` output
            // holds the vendor's answer, which is whatever the vendor chose to send.
            view.output = Some(e.output.clone());
            if let (Some(attempt), Some(started_at)) = (e.attempt, e.started_at) {
                // Recorded whole (no `RunStarted` before it): the entry starts here.
                view.attempts = view.attempts.max(attempt);
                view.started_at = view.started_at.or(Some(started_at));
                view.attempt_log.push(AttemptView::running(attempt, started_at));
            }
            // The attempt in flight is the one that completed it.
            if let Some(entry) = view.attempt_log.last_mut().filter(|a| a.outcome == "Running") {
                entry.outcome = "Succeeded".into();
                entry.finished_at = Some(e.completed_at);
                // Webhook deliveries record the endpoint's answer in the output.
                entry.status_code =
                    e.output.get("statusCode").and_then(|v| v.as_u64()).and_then(|v| u16::try_from(v).ok());
                entry.latency_ms = e.output.get("latencyMs").and_then(serde_json::Value::as_u64);
                entry.response_body = e.output.get("responseBody").and_then(|v| v.as_str()).map(str::to_owned);
            }
        }),
        RunEvent::RunFailed(e) => update_doc(docs, NAME, event, &e.run_id, |view: &mut RunView| {
            view.status = RunStatus::Failed;
            view.completed_at = Some(e.failed_at);
            view.last_error = Some(e.error.clone());
            view.next_attempt_at = None;
        }),
        RunEvent::RunRedeliveryRequested(e) => update_doc(docs, NAME, event, &e.run_id, |view: &mut RunView| {
            view.status = RunStatus::Running;
            view.completed_at = None;
            view.next_attempt_at = Some(e.requested_at);
            // Delivered again: the earlier answer is in the attempt log; the output will be the new one.
            view.output = None;
        }),
    }
}
