use domain::DomainError;
use domain::ids::stream_id;
use domain::run::{RequestRun, Run, RunCommand, RunEvent, RunRequested};
use serde_json::Value;

use crate::{CommandContext, CommandError, Commands};

pub struct RunRequestedOutcome {
    pub requested: RunRequested,
    pub last_position: Option<u64>,
}

impl Commands {
    /// Requests a run of `operation` against a connection; the run executor picks it up.
    pub async fn request_run(
        &self,
        ctx: &CommandContext,
        run_id: &str,
        connection_id: &str,
        operation: &str,
        input: Value,
    ) -> Result<RunRequestedOutcome, CommandError> {
        let command = RunCommand::Request(RequestRun {
            run_id: run_id.into(),
            tenant_id: ctx.tenant_id.clone(),
            connection_id: connection_id.into(),
            operation: operation.into(),
            input,
            trace_id: ctx.trace_id.clone(),
            requested_at: self.now(),
        });
        let created = self.create::<Run>(ctx, &stream_id(&ctx.tenant_id, run_id), &command).await?;
        match created.events.into_iter().next() {
            Some(RunEvent::RunRequested(requested)) => {
                Ok(RunRequestedOutcome { requested, last_position: created.last_position })
            }
            _ => Err(DomainError::NotFound { kind: "run", id: run_id.into() }.into()),
        }
    }
}

impl Commands {
    /// Sends a run that ended (a dead-lettered webhook delivery, or one to deliver again) once
    /// more; true when this call requested it (false: it is running already).
    pub async fn redeliver_run(&self, ctx: &CommandContext, run_id: &str, reason: &str) -> Result<bool, CommandError> {
        let command = RunCommand::Redeliver { run_id: run_id.into(), reason: reason.into(), requested_at: self.now() };
        match self.execute::<Run>(ctx, &stream_id(&ctx.tenant_id, run_id), &command).await {
            Ok(_) => Ok(true),
            Err(CommandError::Rejected(DomainError::InvalidTransition { .. })) => Ok(false),
            Err(e) => Err(e),
        }
    }
}
