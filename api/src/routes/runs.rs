use axum::Router;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::get;

use crate::Shared;
use crate::bodies::{RunAttempt, RunResponse};
use crate::extract::Authorized;
use crate::operations as op;
use crate::problem::Problem;
use crate::respond::ok_json;

pub fn router() -> Router<Shared> {
    Router::new().route("/integrations/runs/{run_id}", get(get_run))
}

async fn get_run(
    caller: Authorized<op::GetRun>,
    State(app): State<Shared>,
    Path(run_id): Path<String>,
) -> Result<Response, Problem> {
    let view = app
        .read_models
        .run(&caller.0.tenant_id, &run_id)
        .await?
        .ok_or_else(|| Problem::not_found(format!("run {run_id} not found")))?;
    let subscription_id =
        (view.operation == domain::outbound::DELIVER_WEBHOOK_OPERATION).then(|| view.connection_id.clone());
    let attempt_log = view
        .attempt_log
        .into_iter()
        .map(|a| RunAttempt {
            attempt: a.attempt,
            started_at: a.started_at,
            outcome: a.outcome,
            finished_at: a.finished_at,
            status_code: a.status_code,
            latency_ms: a.latency_ms,
            response_body: a.response_body,
            error: a.error,
        })
        .collect();
    Ok(ok_json(&RunResponse {
        run_id: view.run_id,
        connection_id: view.connection_id,
        operation: view.operation,
        status: view.status,
        attempts: view.attempts,
        started_at: view.started_at,
        completed_at: view.completed_at,
        trace_id: view.trace_id,
        last_error: view.last_error,
        next_attempt_at: view.next_attempt_at,
        subscription_id,
        attempt_log,
        output: view.output,
    }))
}
