use axum::Router;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::get;

use crate::AppState;
use crate::bodies::RunResponse;
use crate::extract::{Authorized, RunsRead};
use crate::problem::Problem;
use crate::respond::ok_json;

pub fn router() -> Router<AppState> {
    Router::new().route("/integrations/runs/{run_id}", get(get_run))
}

async fn get_run(
    caller: Authorized<RunsRead>,
    State(app): State<AppState>,
    Path(run_id): Path<String>,
) -> Result<Response, Problem> {
    let view = app
        .read_models
        .run(&caller.0.tenant_id, &run_id)
        .await?
        .ok_or_else(|| Problem::not_found(format!("run {run_id} not found")))?;
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
    }))
}
