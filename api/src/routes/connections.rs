use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use commands::connections::EstablishConnectionInput;
use domain::connection::Health;
use domain::ids;

use crate::AppState;
use crate::bodies::{ConnectionEstablishedResponse, ConnectionResponse, EstablishConnectionRequest, require_text};
use crate::extract::{Authorized, ConnectionsRead, ConnectionsWrite, JsonBody};
use crate::problem::Problem;
use crate::respond::{Accepted, ok_json, run_command};
use crate::routes::context_of;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/integrations/connections", post(establish))
        .route("/integrations/connections/{connection_id}", get(get_connection))
}

async fn establish(
    caller: Authorized<ConnectionsWrite>,
    State(app): State<AppState>,
    headers: HeaderMap,
    body: JsonBody<EstablishConnectionRequest>,
) -> Result<Response, Problem> {
    let request = body.value;
    caller.check_tenant(request.tenant_id.as_deref())?;
    let mut errors = Vec::new();
    require_text(&mut errors, "projectId", &request.project_id, 128);
    require_text(&mut errors, "providerId", &request.provider_id, 140);
    require_text(&mut errors, "displayName", &request.display_name, 256);
    if !errors.is_empty() {
        return Err(Problem::invalid(errors));
    }
    let ctx = context_of(&caller.0);
    run_command(
        &app,
        &ctx.tenant_id,
        "establish-connection",
        &headers,
        &body.raw,
        ids::CONNECTION,
        |connection_id| async {
            let input = EstablishConnectionInput {
                connection_id,
                project_id: request.project_id,
                provider_id: request.provider_id,
                display_name: request.display_name,
                auth_mode: request.auth_mode,
                credential_ref: request.credential_ref,
                configuration: request.configuration,
            };
            let outcome = app.commands.establish_connection(&ctx, input).await?;
            let e = outcome.established;
            let location = format!("/integrations/connections/{}", e.connection_id);
            let response = ConnectionEstablishedResponse {
                connection_id: e.connection_id,
                status: "Active".into(),
                provider_id: e.provider_id,
                // Truthful: no check has run yet.
                health: Health::Unknown,
                established_at: e.established_at,
                trace_id: ctx.trace_id.clone(),
            };
            Ok(Accepted::new(StatusCode::CREATED, Some(location), &response, outcome.last_position))
        },
    )
    .await
}

async fn get_connection(
    caller: Authorized<ConnectionsRead>,
    State(app): State<AppState>,
    Path(connection_id): Path<String>,
) -> Result<Response, Problem> {
    let view = app
        .read_models
        .connection(&caller.0.tenant_id, &connection_id)
        .await?
        .ok_or_else(|| Problem::not_found(format!("connection {connection_id} not found")))?;
    Ok(ok_json(&ConnectionResponse {
        connection_id: view.connection_id,
        tenant_id: view.tenant_id,
        provider_id: view.provider_id,
        status: view.status,
        health: view.health,
        last_checked_at: view.last_checked_at,
        credential_ref: view.credential_ref,
        last_run_id: view.last_run_id,
    }))
}
