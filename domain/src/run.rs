use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{AggregateEvent, Decider, DomainError};

/// Where a run is in its life. Serialised as the spec's `status` values.
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
    StartAttempt { run_id: String, started_at: DateTime<Utc> },
    Complete { run_id: String, output: Value, completed_at: DateTime<Utc> },
    Fail { run_id: String, error: String, failed_at: DateTime<Utc> },
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
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunCompleted {
    pub run_id: String,
    pub output: Value,
    pub completed_at: DateTime<Utc>,
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
    RunCompleted(RunCompleted),
    RunFailed(RunFailed),
}

impl AggregateEvent for RunEvent {
    const TYPES: &'static [&'static str] = &["RunRequested", "RunStarted", "RunCompleted", "RunFailed"];

    fn event_type(&self) -> &'static str {
        match self {
            Self::RunRequested(_) => "RunRequested",
            Self::RunStarted(_) => "RunStarted",
            Self::RunCompleted(_) => "RunCompleted",
            Self::RunFailed(_) => "RunFailed",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub enum RunState {
    #[default]
    None,
    Exists {
        status: RunStatus,
        attempts: u32,
    },
}

pub struct Run;

impl Decider for Run {
    type Command = RunCommand;
    type Event = RunEvent;
    type State = RunState;

    fn decide(command: &RunCommand, state: &RunState) -> Result<Vec<RunEvent>, DomainError> {
        use RunStatus::*;
        let invalid = |status: &RunStatus, command| DomainError::InvalidTransition {
            kind: "run",
            state: format!("{status:?}"),
            command,
        };
        match (command, state) {
            (RunCommand::Request(r), RunState::None) => {
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
            (RunCommand::Request(r), RunState::Exists { .. }) => {
                Err(DomainError::AlreadyExists { kind: "run", id: r.run_id.clone() })
            }
            (_, RunState::None) => {
                Err(DomainError::InvalidTransition { kind: "run", state: "not requested".into(), command: "advance" })
            }
            (
                RunCommand::StartAttempt { run_id, started_at },
                RunState::Exists { status: Requested | Running, attempts },
            ) => Ok(vec![RunEvent::RunStarted(RunStarted {
                run_id: run_id.clone(),
                attempt: attempts + 1,
                started_at: *started_at,
            })]),
            (RunCommand::Complete { run_id, output, completed_at }, RunState::Exists { status: Running, .. }) => {
                Ok(vec![RunEvent::RunCompleted(RunCompleted {
                    run_id: run_id.clone(),
                    output: output.clone(),
                    completed_at: *completed_at,
                })])
            }
            (RunCommand::Fail { run_id, error, failed_at }, RunState::Exists { status: Requested | Running, .. }) => {
                Ok(vec![RunEvent::RunFailed(RunFailed {
                    run_id: run_id.clone(),
                    error: error.clone(),
                    failed_at: *failed_at,
                })])
            }
            (RunCommand::StartAttempt { .. }, RunState::Exists { status, .. }) => Err(invalid(status, "start")),
            (RunCommand::Complete { .. }, RunState::Exists { status, .. }) => Err(invalid(status, "complete")),
            (RunCommand::Fail { .. }, RunState::Exists { status, .. }) => Err(invalid(status, "fail")),
        }
    }

    fn evolve(state: RunState, event: &RunEvent) -> RunState {
        let attempts = match state {
            RunState::Exists { attempts, .. } => attempts,
            RunState::None => 0,
        };
        match event {
            RunEvent::RunRequested(_) => RunState::Exists { status: RunStatus::Requested, attempts: 0 },
            RunEvent::RunStarted(e) => {
                RunState::Exists { status: RunStatus::Running, attempts: e.attempt.max(attempts) }
            }
            RunEvent::RunCompleted(_) => RunState::Exists { status: RunStatus::Completed, attempts },
            RunEvent::RunFailed(_) => RunState::Exists { status: RunStatus::Failed, attempts },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn t() -> DateTime<Utc> {
        DateTime::UNIX_EPOCH
    }

    fn request() -> RunCommand {
        RunCommand::Request(RequestRun {
            run_id: "run-1".into(),
            tenant_id: "connectsoft".into(),
            connection_id: "conn-1".into(),
            operation: "OpenPullRequest".into(),
            input: json!({"title": "x"}),
            trace_id: "trace-1".into(),
            requested_at: t(),
        })
    }
    fn start() -> RunCommand {
        RunCommand::StartAttempt { run_id: "run-1".into(), started_at: t() }
    }
    fn complete() -> RunCommand {
        RunCommand::Complete { run_id: "run-1".into(), output: json!({}), completed_at: t() }
    }
    fn fail() -> RunCommand {
        RunCommand::Fail { run_id: "run-1".into(), error: "boom".into(), failed_at: t() }
    }

    /// Given the commands, when `then` is decided, the result.
    fn given_when(given: &[RunCommand], when: &RunCommand) -> Result<Vec<RunEvent>, DomainError> {
        let state = given.iter().fold(RunState::None, |s, c| Run::decide(c, &s).unwrap().iter().fold(s, Run::evolve));
        Run::decide(when, &state)
    }

    #[test]
    fn a_run_is_requested_started_and_completed() {
        assert!(matches!(given_when(&[], &request()).unwrap()[..], [RunEvent::RunRequested(_)]));
        assert!(matches!(
            given_when(&[request()], &start()).unwrap()[..],
            [RunEvent::RunStarted(RunStarted { attempt: 1, .. })]
        ));
        assert!(matches!(given_when(&[request(), start()], &complete()).unwrap()[..], [RunEvent::RunCompleted(_)]));
    }

    #[test]
    fn a_retried_attempt_counts_up() {
        assert!(matches!(
            given_when(&[request(), start()], &start()).unwrap()[..],
            [RunEvent::RunStarted(RunStarted { attempt: 2, .. })]
        ));
    }

    #[test]
    fn a_run_can_fail() {
        assert!(matches!(given_when(&[request(), start()], &fail()).unwrap()[..], [RunEvent::RunFailed(_)]));
    }

    #[test]
    fn invalid_transitions_are_rejected() {
        assert!(matches!(given_when(&[request()], &request()), Err(DomainError::AlreadyExists { .. })));
        assert!(matches!(given_when(&[], &start()), Err(DomainError::InvalidTransition { .. })));
        assert!(matches!(given_when(&[request()], &complete()), Err(DomainError::InvalidTransition { .. })));
        assert!(matches!(
            given_when(&[request(), start(), complete()], &complete()),
            Err(DomainError::InvalidTransition { .. })
        ));
        assert!(matches!(
            given_when(&[request(), start(), fail()], &start()),
            Err(DomainError::InvalidTransition { .. })
        ));
    }
}
