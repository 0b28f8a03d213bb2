//! An integration run: one operation against a connection's provider, tried in attempts.
//!
//! ```text
//! RunRequested ─> RunStarted ─┬─> RunCompleted
//!                             └─> RunAttemptFailed ─> RunStarted ─> ... ─> RunFailed
//! ```
//!
//! Each attempt is taken under a lease: `RunStarted` names the worker and the moment its lease
//! expires (the attempt's deadline plus a grace period). While the lease holds, no other worker
//! may start an attempt, so a run is never executed twice at once; once it has expired, the
//! attempt is recorded as abandoned and the next worker takes over. Only the attempt that holds
//! the lease can complete or fail it, so a late answer from a worker that lost its lease is
//! refused.
//!
//! Outbound webhook deliveries (operation `DeliverWebhook`) are runs too: their failed attempts
//! carry the endpoint's answer (status, latency, a truncated body), and a run that ended can be
//! sent again (`RunRedeliveryRequested`), which gives it a fresh budget of attempts. Their
//! attempts are taken under a lease on the whole subscription (its lane) instead of one per
//! run, so each is recorded once, when it ended (`RecordAttempt`): a `RunCompleted` or a
//! `RunAttemptFailed` that carries the attempt's start and worker, and no `RunStarted`. The
//! run executor records read-only attempts (health checks) the same way, without a lease:
//! they have no effect to fence.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{AggregateEvent, Decider, DomainError};

/// Where a run is in its life. Serialised as the spec's `status` values. A run waiting for its
/// next attempt after a failed one is still `Running`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RunStatus {
    Requested,
    Running,
    Completed,
    Failed,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RunCommand {
    Request(RequestRun),
    /// Take the next attempt under a lease.
    StartAttempt(StartAttempt),
    /// The attempt holding the lease succeeded.
    Complete {
        run_id: String,
        attempt: u32,
        output: Value,
        completed_at: DateTime<Utc>,
    },
    /// The attempt holding the lease failed.
    FailAttempt(FailAttempt),
    /// The attempt holding the lease got an answer that is a failure (or no answer in time):
    /// recorded with what the endpoint said.
    FailAttemptWithResponse(FailAttempt, AttemptResponse),
    /// Send a run that ended (a dead-lettered delivery, or one to deliver again) once more.
    Redeliver {
        run_id: String,
        reason: String,
        requested_at: DateTime<Utc>,
    },
    /// An attempt made under a lease held outside the run (a subscription's lane), recorded
    /// once it ended.
    RecordAttempt(RecordAttempt),
    /// The run cannot be executed at all (unknown operation, connection gone): it fails without
    /// an attempt.
    Fail {
        run_id: String,
        error: String,
        failed_at: DateTime<Utc>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct RequestRun {
    pub run_id: String,
    pub tenant_id: String,
    pub connection_id: String,
    pub operation: String,
    pub input: Value,
    pub trace_id: String,
    pub requested_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StartAttempt {
    pub run_id: String,
    /// The worker taking the attempt, recorded in the lease.
    pub worker_id: String,
    pub started_at: DateTime<Utc>,
    /// Until when the worker holds the run; no other attempt may start before.
    pub lease_expires_at: DateTime<Utc>,
    /// The operation's attempt limit: past it, the run fails instead of starting again.
    pub max_attempts: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FailAttempt {
    pub run_id: String,
    pub attempt: u32,
    pub error: String,
    pub failed_at: DateTime<Utc>,
    /// When the next attempt is due; `None` ends the run as failed (a permanent error, or the
    /// last attempt the operation allows).
    pub next_attempt_at: Option<DateTime<Utc>>,
}

/// An attempt taken and ended under a lease the run does not hold itself (a subscription's
/// lane, see the module documentation).
#[derive(Debug, Clone, PartialEq)]
pub struct RecordAttempt {
    pub run_id: String,
    /// The run's next attempt: one more than it has recorded.
    pub attempt: u32,
    pub worker_id: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub outcome: AttemptOutcome,
}

#[derive(Debug, Clone, PartialEq)]
pub enum AttemptOutcome {
    Succeeded {
        output: Value,
    },
    Failed {
        error: String,
        /// When the next attempt is due; `None` ends the run as failed.
        next_attempt_at: Option<DateTime<Utc>>,
        response: Option<AttemptResponse>,
    },
}

/// What an endpoint answered to one attempt, as far as it answered.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AttemptResponse {
    /// The HTTP status; `None` when no answer came (timeout, refused connection).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code: Option<u16>,
    /// From sending the request to the end of the answer (or the failure).
    pub latency_ms: u64,
    /// The start of the answer's body (at most 1 KiB, lossy UTF-8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_body: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunRequested {
    pub run_id: String,
    pub tenant_id: String,
    pub connection_id: String,
    pub operation: String,
    pub input: Value,
    pub trace_id: String,
    pub requested_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunStarted {
    pub run_id: String,
    /// 1 for the first attempt.
    pub attempt: u32,
    pub started_at: DateTime<Utc>,
    /// The worker executing the attempt (absent in events written before leases existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_id: Option<String>,
    /// Until when that worker holds the run; no other attempt starts before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_expires_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunAttemptFailed {
    pub run_id: String,
    pub attempt: u32,
    pub error: String,
    pub failed_at: DateTime<Utc>,
    /// When the next attempt is due; absent when no attempt follows (a `RunFailed` does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// What the endpoint answered, for attempts that reached one (webhook deliveries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<AttemptResponse>,
    /// When the attempt started, for an attempt recorded whole (no `RunStarted` before it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    /// The worker that made it, for an attempt recorded whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_id: Option<String>,
}

/// A run that had ended is sent again with a fresh budget of attempts, the first one now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunRedeliveryRequested {
    pub run_id: String,
    /// Who asked and why (e.g. `webhooks redeliver --subscription sub-...`).
    pub reason: String,
    pub requested_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunCompleted {
    pub run_id: String,
    pub output: Value,
    pub completed_at: DateTime<Utc>,
    /// The attempt that completed it, when recorded whole (no `RunStarted` before it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// When that attempt started, when recorded whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    /// The worker that made it, when recorded whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunFailed {
    pub run_id: String,
    pub error: String,
    pub failed_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", content = "data")]
pub enum RunEvent {
    RunRequested(RunRequested),
    RunStarted(RunStarted),
    RunAttemptFailed(RunAttemptFailed),
    RunCompleted(RunCompleted),
    RunFailed(RunFailed),
    RunRedeliveryRequested(RunRedeliveryRequested),
}

impl RunEvent {
    /// The run the event is about.
    pub fn run_id(&self) -> &str {
        match self {
            Self::RunRequested(e) => &e.run_id,
            Self::RunStarted(e) => &e.run_id,
            Self::RunAttemptFailed(e) => &e.run_id,
            Self::RunCompleted(e) => &e.run_id,
            Self::RunFailed(e) => &e.run_id,
            Self::RunRedeliveryRequested(e) => &e.run_id,
        }
    }
}

impl AggregateEvent for RunEvent {
    const TYPES: &'static [&'static str] =
        &["RunRequested", "RunStarted", "RunAttemptFailed", "RunCompleted", "RunFailed", "RunRedeliveryRequested"];

    fn event_type(&self) -> &'static str {
        match self {
            Self::RunRequested(_) => "RunRequested",
            Self::RunStarted(_) => "RunStarted",
            Self::RunAttemptFailed(_) => "RunAttemptFailed",
            Self::RunCompleted(_) => "RunCompleted",
            Self::RunFailed(_) => "RunFailed",
            Self::RunRedeliveryRequested(_) => "RunRedeliveryRequested",
        }
    }
}

/// The attempt in flight and who holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub attempt: u32,
    pub worker_id: String,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub enum RunState {
    #[default]
    None,
    Exists {
        status: RunStatus,
        attempts: u32,
        /// The attempt in flight; `None` before the first and between attempts.
        lease: Option<Lease>,
        /// When the next attempt may start, after a failed one.
        next_attempt_at: Option<DateTime<Utc>>,
        /// Attempts made before the latest redelivery: the attempt limit counts from here.
        attempts_before_redelivery: u32,
    },
}

impl RunState {
    /// Whether the run has ended, completed or failed.
    pub fn is_finished(&self) -> bool {
        matches!(self, Self::Exists { status: RunStatus::Completed | RunStatus::Failed, .. })
    }
}

pub struct Run;

impl Decider for Run {
    type Command = RunCommand;
    type Event = RunEvent;
    type State = RunState;

    fn decide(command: &RunCommand, state: &RunState) -> Result<Vec<RunEvent>, DomainError> {
        let RunState::Exists { status, attempts, lease, next_attempt_at, attempts_before_redelivery } = state else {
            return match command {
                RunCommand::Request(r) => request(r),
                RunCommand::StartAttempt(_)
                | RunCommand::Complete { .. }
                | RunCommand::FailAttempt(_)
                | RunCommand::FailAttemptWithResponse(..)
                | RunCommand::Redeliver { .. }
                | RunCommand::RecordAttempt(_)
                | RunCommand::Fail { .. } => Err(DomainError::InvalidTransition {
                    kind: "run",
                    state: "not requested".into(),
                    command: "advance",
                }),
            };
        };
        let invalid = |state: String, command| DomainError::InvalidTransition { kind: "run", state, command };
        let finished = matches!(status, RunStatus::Completed | RunStatus::Failed);
        match command {
            RunCommand::Request(r) => Err(DomainError::AlreadyExists { kind: "run", id: r.run_id.clone() }),
            RunCommand::StartAttempt(_)
            | RunCommand::FailAttempt(_)
            | RunCommand::FailAttemptWithResponse(..)
            | RunCommand::RecordAttempt(_)
            | RunCommand::Fail { .. }
                if finished =>
            {
                Err(invalid(format!("{status:?}"), "advance"))
            }
            RunCommand::Complete { .. } if finished => Err(invalid(format!("{status:?}"), "complete")),
            RunCommand::Redeliver { run_id, reason, requested_at } => {
                if !finished {
                    return Err(invalid(format!("{status:?}"), "redeliver"));
                }
                Ok(vec![RunEvent::RunRedeliveryRequested(RunRedeliveryRequested {
                    run_id: run_id.clone(),
                    reason: reason.clone(),
                    requested_at: *requested_at,
                })])
            }
            RunCommand::StartAttempt(c) => {
                start_attempt(c, *attempts, *attempts_before_redelivery, lease.as_ref(), *next_attempt_at)
            }
            RunCommand::Complete { run_id, attempt, output, completed_at } => {
                holding_lease(lease.as_ref(), *attempt, "complete")?;
                Ok(vec![RunEvent::RunCompleted(RunCompleted {
                    run_id: run_id.clone(),
                    output: output.clone(),
                    completed_at: *completed_at,
                    attempt: None,
                    started_at: None,
                    worker_id: None,
                })])
            }
            RunCommand::RecordAttempt(c) => record_attempt(c, *attempts, lease.as_ref(), *next_attempt_at),
            RunCommand::FailAttempt(c) => fail_attempt(c, None, lease.as_ref()),
            RunCommand::FailAttemptWithResponse(c, response) => fail_attempt(c, Some(response), lease.as_ref()),
            RunCommand::Fail { run_id, error, failed_at } => Ok(vec![RunEvent::RunFailed(RunFailed {
                run_id: run_id.clone(),
                error: error.clone(),
                failed_at: *failed_at,
            })]),
        }
    }

    fn evolve(state: RunState, event: &RunEvent) -> RunState {
        let (attempts, next_attempt_at, attempts_before_redelivery) = match &state {
            RunState::Exists { attempts, next_attempt_at, attempts_before_redelivery, .. } => {
                (*attempts, *next_attempt_at, *attempts_before_redelivery)
            }
            RunState::None => (0, None, 0),
        };
        match event {
            RunEvent::RunRequested(_) => RunState::Exists {
                status: RunStatus::Requested,
                attempts: 0,
                lease: None,
                next_attempt_at: None,
                attempts_before_redelivery: 0,
            },
            RunEvent::RunRedeliveryRequested(e) => RunState::Exists {
                status: RunStatus::Running,
                attempts,
                lease: None,
                next_attempt_at: Some(e.requested_at),
                attempts_before_redelivery: attempts,
            },
            RunEvent::RunStarted(e) => RunState::Exists {
                status: RunStatus::Running,
                attempts: e.attempt.max(attempts),
                // Attempts recorded before leases existed hold none: the run may be taken again.
                lease: e.lease_expires_at.map(|expires_at| Lease {
                    attempt: e.attempt,
                    worker_id: e.worker_id.clone().unwrap_or_default(),
                    expires_at,
                }),
                next_attempt_at: None,
                attempts_before_redelivery,
            },
            RunEvent::RunAttemptFailed(e) => RunState::Exists {
                status: RunStatus::Running,
                attempts: e.attempt.max(attempts),
                lease: None,
                next_attempt_at: e.next_attempt_at,
                attempts_before_redelivery,
            },
            RunEvent::RunCompleted(e) => RunState::Exists {
                status: RunStatus::Completed,
                attempts: e.attempt.unwrap_or(0).max(attempts),
                lease: None,
                next_attempt_at,
                attempts_before_redelivery,
            },
            RunEvent::RunFailed(_) => RunState::Exists {
                status: RunStatus::Failed,
                attempts,
                lease: None,
                next_attempt_at: None,
                attempts_before_redelivery,
            },
        }
    }
}

fn request(r: &RequestRun) -> Result<Vec<RunEvent>, DomainError> {
    if r.operation.is_empty() {
        return Err(DomainError::invalid("operation", "must not be empty"));
    }
    Ok(vec![RunEvent::RunRequested(RunRequested {
        run_id: r.run_id.clone(),
        tenant_id: r.tenant_id.clone(),
        connection_id: r.connection_id.clone(),
        operation: r.operation.clone(),
        input: r.input.clone(),
        trace_id: r.trace_id.clone(),
        requested_at: r.requested_at,
    })])
}

/// The next attempt, if no lease holds the run and it is due; an expired lease is recorded as
/// an abandoned attempt first.
fn start_attempt(
    c: &StartAttempt,
    attempts: u32,
    attempts_before_redelivery: u32,
    lease: Option<&Lease>,
    next_attempt_at: Option<DateTime<Utc>>,
) -> Result<Vec<RunEvent>, DomainError> {
    let mut events: Vec<RunEvent> =
        next_attempt_may_start(&c.run_id, c.started_at, lease, next_attempt_at, "start")?.into_iter().collect();
    let attempt = match next_attempt(attempts, attempts_before_redelivery, c.max_attempts) {
        Ok(attempt) => attempt,
        Err(error) => {
            events.push(RunEvent::RunFailed(RunFailed { run_id: c.run_id.clone(), error, failed_at: c.started_at }));
            return Ok(events);
        }
    };
    events.push(RunEvent::RunStarted(RunStarted {
        run_id: c.run_id.clone(),
        attempt,
        started_at: c.started_at,
        worker_id: Some(c.worker_id.clone()),
        lease_expires_at: Some(c.lease_expires_at),
    }));
    Ok(events)
}

/// The number of a run's next attempt, or why it may make none: the attempts made since its
/// latest redelivery count against the operation's limit.
pub fn next_attempt(attempts: u32, attempts_before_redelivery: u32, max_attempts: u32) -> Result<u32, String> {
    let counted = attempts.saturating_sub(attempts_before_redelivery);
    if counted >= max_attempts {
        return Err(format!("gave up after {counted} attempts (the operation allows {max_attempts})"));
    }
    Ok(attempts + 1)
}

/// `RunAttemptFailed` (with the endpoint's answer, if any), and `RunFailed` when no attempt follows.
fn fail_attempt(
    c: &FailAttempt,
    response: Option<&AttemptResponse>,
    lease: Option<&Lease>,
) -> Result<Vec<RunEvent>, DomainError> {
    holding_lease(lease, c.attempt, "fail")?;
    Ok(attempt_failed(RunAttemptFailed {
        run_id: c.run_id.clone(),
        attempt: c.attempt,
        error: c.error.clone(),
        failed_at: c.failed_at,
        next_attempt_at: c.next_attempt_at,
        response: response.cloned(),
        started_at: None,
        worker_id: None,
    }))
}

/// A failed attempt, and `RunFailed` after it when no attempt follows.
fn attempt_failed(failed: RunAttemptFailed) -> Vec<RunEvent> {
    let ended = failed.next_attempt_at.is_none().then(|| {
        RunEvent::RunFailed(RunFailed {
            run_id: failed.run_id.clone(),
            error: failed.error.clone(),
            failed_at: failed.failed_at,
        })
    });
    std::iter::once(RunEvent::RunAttemptFailed(failed)).chain(ended).collect()
}

/// Whether the run's next attempt may start at `at`: not while a worker's lease on the run
/// holds, nor before it is due. A lease that expired is that attempt abandoned (its holder
/// crashed, or was cut off from the store, without recording an outcome): the event recording
/// it is returned, to be appended before the new attempt.
fn next_attempt_may_start(
    run_id: &str,
    at: DateTime<Utc>,
    lease: Option<&Lease>,
    next_attempt_at: Option<DateTime<Utc>>,
    command: &'static str,
) -> Result<Option<RunEvent>, DomainError> {
    let refused = |state: String| DomainError::InvalidTransition { kind: "run", state, command };
    if let Some(lease) = lease {
        if at < lease.expires_at {
            return Err(refused(format!(
                "leased to worker {} for attempt {} until {}",
                lease.worker_id,
                lease.attempt,
                lease.expires_at.to_rfc3339()
            )));
        }
        return Ok(Some(RunEvent::RunAttemptFailed(RunAttemptFailed {
            run_id: run_id.to_owned(),
            attempt: lease.attempt,
            error: format!(
                "attempt {} abandoned: worker {} did not finish it before its lease expired at {}",
                lease.attempt,
                lease.worker_id,
                lease.expires_at.to_rfc3339()
            ),
            failed_at: at,
            next_attempt_at: Some(at),
            response: None,
            started_at: None,
            worker_id: None,
        })));
    }
    match next_attempt_at {
        Some(due) if at < due => Err(refused(format!("waiting for its next attempt, due at {}", due.to_rfc3339()))),
        _ => Ok(None),
    }
}

/// An attempt recorded whole: only the run's next one, once it was due, and never while a
/// worker holds the run's own lease (an executor's attempt).
fn record_attempt(
    c: &RecordAttempt,
    attempts: u32,
    lease: Option<&Lease>,
    next_attempt_at: Option<DateTime<Utc>>,
) -> Result<Vec<RunEvent>, DomainError> {
    let mut events: Vec<RunEvent> =
        next_attempt_may_start(&c.run_id, c.started_at, lease, next_attempt_at, "record attempt")?
            .into_iter()
            .collect();
    if c.attempt != attempts + 1 {
        return Err(DomainError::InvalidTransition {
            kind: "run",
            state: format!("{attempts} attempts recorded (attempt {} is not the next)", c.attempt),
            command: "record attempt",
        });
    }
    let (started_at, worker_id) = (Some(c.started_at), Some(c.worker_id.clone()));
    events.extend(match &c.outcome {
        AttemptOutcome::Succeeded { output } => vec![RunEvent::RunCompleted(RunCompleted {
            run_id: c.run_id.clone(),
            output: output.clone(),
            completed_at: c.finished_at,
            attempt: Some(c.attempt),
            started_at,
            worker_id,
        })],
        AttemptOutcome::Failed { error, next_attempt_at, response } => attempt_failed(RunAttemptFailed {
            run_id: c.run_id.clone(),
            attempt: c.attempt,
            error: error.clone(),
            failed_at: c.finished_at,
            next_attempt_at: *next_attempt_at,
            response: response.clone(),
            started_at,
            worker_id,
        }),
    });
    Ok(events)
}

/// Only the attempt in flight may record its outcome: a worker whose lease was taken over
/// answers too late.
fn holding_lease(lease: Option<&Lease>, attempt: u32, command: &'static str) -> Result<(), DomainError> {
    match lease {
        Some(lease) if lease.attempt == attempt => Ok(()),
        Some(lease) => Err(DomainError::InvalidTransition {
            kind: "run",
            state: format!("running attempt {} (attempt {attempt} is over)", lease.attempt),
            command,
        }),
        None => Err(DomainError::InvalidTransition {
            kind: "run",
            state: format!("between attempts (attempt {attempt} is over)"),
            command,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Given;
    use chrono::TimeDelta;
    use serde_json::json;

    fn t(seconds: i64) -> DateTime<Utc> {
        DateTime::UNIX_EPOCH + TimeDelta::seconds(seconds)
    }

    fn request() -> RunCommand {
        RunCommand::Request(RequestRun {
            run_id: "run-1".into(),
            tenant_id: "connectsoft".into(),
            connection_id: "conn-1".into(),
            operation: "OpenPullRequest".into(),
            input: json!({"title": "x"}),
            trace_id: "trace-1".into(),
            requested_at: t(0),
        })
    }
    /// Worker `w` starts an attempt at `at` with a 10 s lease; the operation allows 3 attempts.
    fn start(w: &str, at: i64) -> RunCommand {
        RunCommand::StartAttempt(StartAttempt {
            run_id: "run-1".into(),
            worker_id: w.into(),
            started_at: t(at),
            lease_expires_at: t(at + 10),
            max_attempts: 3,
        })
    }
    fn complete(attempt: u32) -> RunCommand {
        RunCommand::Complete { run_id: "run-1".into(), attempt, output: json!({}), completed_at: t(5) }
    }
    fn fail_attempt(attempt: u32, retry_at: Option<i64>) -> RunCommand {
        RunCommand::FailAttempt(FailAttempt {
            run_id: "run-1".into(),
            attempt,
            error: "502 Bad Gateway".into(),
            failed_at: t(3),
            next_attempt_at: retry_at.map(t),
        })
    }
    fn fail() -> RunCommand {
        RunCommand::Fail { run_id: "run-1".into(), error: "unknown operation".into(), failed_at: t(1) }
    }
    /// Attempt `attempt`, made under a lane's lease from `at` to `at + 1`, recorded whole.
    fn recorded(attempt: u32, at: i64, outcome: AttemptOutcome) -> RunCommand {
        RunCommand::RecordAttempt(RecordAttempt {
            run_id: "run-1".into(),
            attempt,
            worker_id: "lane-holder".into(),
            started_at: t(at),
            finished_at: t(at + 1),
            outcome,
        })
    }
    fn failed_then(retry_at: Option<i64>) -> AttemptOutcome {
        AttemptOutcome::Failed { error: "503".into(), next_attempt_at: retry_at.map(t), response: None }
    }

    /// Given the commands (each must be accepted), when `when` is decided: the outcome.
    fn given_when(given: &[RunCommand], when: &RunCommand) -> Result<Vec<RunEvent>, DomainError> {
        Given::<Run>::commands(given).when(when).answer()
    }

    fn given_state(given: &[RunCommand]) -> RunState {
        Given::<Run>::commands(given).into_state()
    }

    fn types(events: &[RunEvent]) -> Vec<&'static str> {
        events.iter().map(AggregateEvent::event_type).collect()
    }

    #[test]
    fn every_run_event_names_its_run() {
        let given = [request(), start("w1", 1), fail_attempt(1, Some(20)), start("w1", 20), complete(2)];
        let mut state = RunState::None;
        let mut events = Vec::new();
        for command in &given {
            let decided = Run::decide(command, &state).unwrap();
            state = decided.iter().fold(state, Run::evolve);
            events.extend(decided);
        }
        events.extend(Run::decide(&fail(), &given_state(&[request()])).unwrap());
        assert!(events.len() >= 6);
        assert!(events.iter().all(|e| e.run_id() == "run-1"), "{events:?}");
    }

    #[test]
    fn a_run_is_requested_started_and_completed() {
        assert_eq!(types(&given_when(&[], &request()).unwrap()), ["RunRequested"]);
        let started = given_when(&[request()], &start("w1", 1)).unwrap();
        assert!(matches!(
            &started[..],
            [RunEvent::RunStarted(RunStarted { attempt: 1, worker_id: Some(w), lease_expires_at: Some(_), .. })] if w == "w1"
        ));
        assert_eq!(types(&given_when(&[request(), start("w1", 1)], &complete(1)).unwrap()), ["RunCompleted"]);
    }

    #[test]
    fn a_failed_attempt_is_retried_when_due_and_counts_up() {
        let given = [request(), start("w1", 1), fail_attempt(1, Some(20))];
        assert!(matches!(
            given_when(&given, &start("w1", 19)),
            Err(DomainError::InvalidTransition { command: "start", .. })
        ));
        assert!(matches!(
            &given_when(&given, &start("w1", 20)).unwrap()[..],
            [RunEvent::RunStarted(RunStarted { attempt: 2, .. })]
        ));
        let state = given_state(&given);
        assert!(matches!(state, RunState::Exists { status: RunStatus::Running, attempts: 1, lease: None, .. }));
    }

    #[test]
    fn the_last_allowed_attempt_failing_fails_the_run() {
        assert_eq!(
            types(&given_when(&[request(), start("w1", 1)], &fail_attempt(1, None)).unwrap()),
            ["RunAttemptFailed", "RunFailed"]
        );
        // Even when a retry was scheduled, no attempt starts past the operation's limit.
        let given = [
            request(),
            start("w", 1),
            fail_attempt(1, Some(0)),
            start("w", 2),
            fail_attempt(2, Some(0)),
            start("w", 3),
            fail_attempt(3, Some(0)),
        ];
        assert_eq!(types(&given_when(&given, &start("w", 4)).unwrap()), ["RunFailed"]);
    }

    #[test]
    fn a_leased_run_is_not_started_twice_at_once() {
        let given = [request(), start("w1", 1)];
        let refused = given_when(&given, &start("w2", 10));
        assert!(
            matches!(&refused, Err(DomainError::InvalidTransition { state, .. }) if state.contains("leased to worker w1")),
            "{refused:?}"
        );
    }

    #[test]
    fn an_expired_lease_is_recorded_as_abandoned_and_taken_over() {
        let events = given_when(&[request(), start("w1", 1)], &start("w2", 11)).unwrap();
        assert_eq!(types(&events), ["RunAttemptFailed", "RunStarted"]);
        assert!(matches!(&events[0], RunEvent::RunAttemptFailed(f) if f.attempt == 1 && f.error.contains("w1")));
        assert!(
            matches!(&events[1], RunEvent::RunStarted(s) if s.attempt == 2 && s.worker_id.as_deref() == Some("w2"))
        );
    }

    #[test]
    fn a_worker_that_lost_its_lease_cannot_record_an_outcome() {
        let taken_over = [request(), start("w1", 1), start("w2", 11)];
        assert!(matches!(given_when(&taken_over, &complete(1)), Err(DomainError::InvalidTransition { .. })));
        assert!(matches!(given_when(&taken_over, &fail_attempt(1, None)), Err(DomainError::InvalidTransition { .. })));
        assert_eq!(types(&given_when(&taken_over, &complete(2)).unwrap()), ["RunCompleted"]);
    }

    #[test]
    fn a_run_can_fail_without_an_attempt() {
        assert_eq!(types(&given_when(&[request()], &fail()).unwrap()), ["RunFailed"]);
    }

    #[test]
    fn invalid_transitions_are_rejected() {
        assert!(matches!(given_when(&[request()], &request()), Err(DomainError::AlreadyExists { .. })));
        assert!(matches!(given_when(&[], &start("w", 1)), Err(DomainError::InvalidTransition { .. })));
        assert!(matches!(given_when(&[request()], &complete(1)), Err(DomainError::InvalidTransition { .. })));
        let completed = [request(), start("w", 1), complete(1)];
        assert!(matches!(given_when(&completed, &complete(1)), Err(DomainError::InvalidTransition { .. })));
        assert!(matches!(given_when(&completed, &start("w", 30)), Err(DomainError::InvalidTransition { .. })));
        assert!(given_state(&completed).is_finished());
        let failed = [request(), start("w", 1), fail_attempt(1, None)];
        assert!(matches!(given_when(&failed, &start("w", 30)), Err(DomainError::InvalidTransition { .. })));
    }

    #[test]
    fn an_ended_run_is_redelivered_with_a_fresh_budget_and_its_answers_are_recorded() {
        let response = AttemptResponse { status_code: Some(503), latency_ms: 12, response_body: Some("busy".into()) };
        let fail_with_response = |attempt| {
            RunCommand::FailAttemptWithResponse(
                FailAttempt {
                    run_id: "run-1".into(),
                    attempt,
                    error: "503".into(),
                    failed_at: t(3),
                    next_attempt_at: None,
                },
                response.clone(),
            )
        };
        let given = [request(), start("w", 1), fail_with_response(1)];
        let events = given_when(&given[..2], &given[2]).unwrap();
        assert!(matches!(&events[0], RunEvent::RunAttemptFailed(f) if f.response.as_ref() == Some(&response)));
        assert_eq!(types(&events), ["RunAttemptFailed", "RunFailed"]);
        let redeliver =
            RunCommand::Redeliver { run_id: "run-1".into(), reason: "operator".into(), requested_at: t(50) };
        assert!(matches!(given_when(&given[..2], &redeliver), Err(DomainError::InvalidTransition { .. })));
        assert_eq!(types(&given_when(&given, &redeliver).unwrap()), ["RunRedeliveryRequested"]);
        let redelivered = [request(), start("w", 1), fail_with_response(1), redeliver.clone()];
        assert!(matches!(given_when(&redelivered, &start("w", 49)), Err(DomainError::InvalidTransition { .. })));
        // Attempt 2 of the run, the first of the new budget (3 allowed again).
        let mut history = redelivered.to_vec();
        for (n, at) in [(2, 60), (3, 70), (4, 80)] {
            let started = given_when(&history, &start("w", at)).unwrap();
            assert!(matches!(&started[..], [RunEvent::RunStarted(RunStarted { attempt, .. })] if *attempt == n));
            history.push(start("w", at));
            history.push(fail_attempt(n, Some(0)));
        }
        assert_eq!(types(&given_when(&history, &start("w", 90)).unwrap()), ["RunFailed"]);
    }

    /// An attempt under a lane's lease is one event: the outcome, carrying its start and worker.
    #[test]
    fn an_attempt_recorded_whole_is_one_event_counted_like_a_started_one() {
        let first = given_when(&[request()], &recorded(1, 1, failed_then(Some(10)))).unwrap();
        let [RunEvent::RunAttemptFailed(failed)] = first.as_slice() else { panic!("{first:?}") };
        assert_eq!(
            (failed.attempt, failed.started_at, failed.worker_id.as_deref()),
            (1, Some(t(1)), Some("lane-holder"))
        );

        let given = [request(), recorded(1, 1, failed_then(Some(10)))];
        let early = given_when(&given, &recorded(2, 9, AttemptOutcome::Succeeded { output: json!({}) }));
        assert!(early.is_err(), "not before the next attempt is due");
        let stale = given_when(&given, &recorded(1, 10, AttemptOutcome::Succeeded { output: json!({}) }));
        assert!(stale.is_err(), "attempt 1 is recorded already (another worker's late answer)");
        let done =
            given_when(&given, &recorded(2, 10, AttemptOutcome::Succeeded { output: json!({"ok": 1}) })).unwrap();
        let [RunEvent::RunCompleted(completed)] = done.as_slice() else { panic!("{done:?}") };
        assert_eq!((completed.attempt, completed.started_at), (Some(2), Some(t(10))));

        let state = given_state(&[
            request(),
            recorded(1, 1, failed_then(Some(10))),
            recorded(2, 10, AttemptOutcome::Succeeded { output: json!({}) }),
        ]);
        assert!(matches!(state, RunState::Exists { status: RunStatus::Completed, attempts: 2, .. }), "{state:?}");

        let last = given_when(&given, &recorded(2, 10, failed_then(None))).unwrap();
        assert_eq!(types(&last), ["RunAttemptFailed", "RunFailed"], "no attempt follows: dead-lettered");
    }

    /// A run leased by an attempt of its own is not also attempted under a lane until that
    /// lease expired; then the abandoned attempt is recorded with the new one.
    #[test]
    fn an_attempt_is_not_recorded_whole_while_the_run_holds_its_own_lease() {
        let refused = given_when(&[request(), start("w1", 1)], &recorded(2, 2, failed_then(None)));
        assert!(refused.is_err());
        let taken_over = given_when(&[request(), start("w1", 1)], &recorded(2, 11, failed_then(None))).unwrap();
        assert_eq!(types(&taken_over), ["RunAttemptFailed", "RunAttemptFailed", "RunFailed"]);
    }

    #[test]
    fn started_events_written_before_leases_still_decode() {
        let old = json!({"runId": "run-1", "attempt": 1, "startedAt": "2026-06-11T09:03:00Z"});
        let decoded = RunEvent::decode("RunStarted", 1, &old).unwrap();
        assert!(matches!(decoded, RunEvent::RunStarted(RunStarted { worker_id: None, lease_expires_at: None, .. })));
    }
}
