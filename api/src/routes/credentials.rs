use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::post;
use domain::ids;

use crate::Shared;
use crate::bodies::{RotateCredentialRequest, RotationStartedResponse};
use crate::extract::{Authorized, JsonBody};
use crate::operations as op;
use crate::problem::Problem;
use crate::respond::{Accepted, run_command};
use crate::routes::context_of;

pub fn router() -> Router<Shared> {
    Router::new().route("/integrations/credentials/rotate", post(rotate))
}

async fn rotate(
    caller: Authorized<op::RotateCredential>,
    State(app): State<Shared>,
    headers: HeaderMap,
    body: JsonBody<RotateCredentialRequest>,
) -> Result<Response, Problem> {
    let request = body.value;
    caller.check_tenant(request.tenant_id.as_deref())?;
    let errors = request.field_errors();
    if !errors.is_empty() {
        return Err(Problem::invalid(errors));
    }
    let ctx = context_of(&caller.0);
    // The reserved id is the verification run's: a retried request finds the same rotation.
    let (commands, ctx) = (&app.commands, &ctx);
    run_command(&app, &ctx.tenant_id, "rotate-credential", &headers, &body.raw, ids::RUN, |run_id| async move {
        let outcome = commands.start_credential_rotation(ctx, &request.credential_id, &request.reason, &run_id).await?;
        let location = format!("/integrations/runs/{}", outcome.verification_run_id);
        let response = RotationStartedResponse {
            credential_id: outcome.credential_id,
            status: "Rotating".into(),
            new_version_ref: outcome.new_version_ref,
            verification_run_id: outcome.verification_run_id,
        };
        Ok(Accepted::new(StatusCode::ACCEPTED, Some(location), &response, outcome.last_position))
    })
    .await
}
