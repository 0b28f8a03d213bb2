use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use domain::provider::RegisterProvider;

use crate::Shared;
use crate::bodies::{ProviderRegisteredResponse, ProviderResponse, RegisterProviderRequest};
use crate::extract::{Authorized, JsonBody};
use crate::operations as op;
use crate::problem::Problem;
use crate::respond::{Accepted, IDEMPOTENCY_KEY, ok_json, run_command};
use crate::routes::context_of;

pub fn router() -> Router<Shared> {
    Router::new()
        .route("/integrations/providers", post(register))
        .route("/integrations/providers/{provider_id}", get(get_provider))
}

async fn register(
    caller: Authorized<op::RegisterProvider>,
    State(app): State<Shared>,
    headers: HeaderMap,
    body: JsonBody<RegisterProviderRequest>,
) -> Result<Response, Problem> {
    let request = body.value;
    caller.check_tenant(request.tenant_id.as_deref())?;
    let errors = request.field_errors();
    if !errors.is_empty() {
        return Err(Problem::invalid(errors));
    }
    let ctx = context_of(&caller.0);
    // The provider id comes from the key, so the reserved id is unused here.
    run_command(&app, &ctx.tenant_id, "register-provider", &headers, &body.raw, domain::ids::PROVIDER, |_| async {
        let command = RegisterProvider {
            tenant_id: ctx.tenant_id.clone(),
            key: request.key,
            display_name: request.display_name,
            category: request.category,
            auth_model: request.auth_model,
            api_client: request.api_client,
            capabilities: request.capabilities,
            base_url: request.base_url,
            registered_at: app.commands.now(),
        };
        // With an Idempotency-Key, this very request may have registered the provider before
        // its answer was stored; an equal registration under the key is then its answer.
        let outcome = if headers.contains_key(IDEMPOTENCY_KEY) {
            app.commands.register_provider_or_find_same(&ctx, command).await?
        } else {
            app.commands.register_provider(&ctx, command).await?
        };
        let e = outcome.registered;
        let location = format!("/integrations/providers/{}", e.provider_id);
        let response = ProviderRegisteredResponse {
            provider_id: e.provider_id,
            status: "Registered".into(),
            api_client_id: e.api_client_id,
            registered_at: e.registered_at,
        };
        Ok(Accepted::new(StatusCode::CREATED, Some(location), &response, outcome.last_position))
    })
    .await
}

/// The provider a registration's `Location` names. Looked up in the caller's tenant only, so
/// another tenant's provider is 404 like one that does not exist.
async fn get_provider(
    caller: Authorized<op::GetProvider>,
    State(app): State<Shared>,
    Path(provider_id): Path<String>,
) -> Result<Response, Problem> {
    let view = app
        .read_models
        .provider(&caller.0.tenant_id, &provider_id)
        .await?
        .ok_or_else(|| Problem::not_found(format!("provider {provider_id} not found")))?;
    Ok(ok_json(&ProviderResponse {
        provider_id: view.provider_id,
        tenant_id: view.tenant_id,
        key: view.key,
        display_name: view.display_name,
        category: view.category,
        auth_model: view.auth_model,
        api_client: view.api_client,
        api_client_id: view.api_client_id,
        capabilities: view.capabilities,
        base_url: view.base_url,
        status: view.status,
        registered_at: view.registered_at,
    }))
}
