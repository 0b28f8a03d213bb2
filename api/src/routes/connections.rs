use axum::Router;
use axum::extract::{Path, State};
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use commands::connections::EstablishConnectionInput;
use domain::connection::Health;
use domain::ids;
use store::SecretUse;

use crate::bodies::{
    ConnectionEstablishedResponse, ConnectionResponse, EstablishConnectionRequest, outbound_url_error,
};
use crate::extract::{Authorized, JsonBody};
use crate::operations as op;
use crate::problem::{FieldError, Problem};
use crate::respond::{Accepted, ok_json, run_command};
use crate::routes::{context_of, require_tenants_secret};
use crate::{AppState, Shared};

pub fn router() -> Router<Shared> {
    Router::new()
        .route("/integrations/connections", post(establish))
        .route("/integrations/connections/{connection_id}", get(get_connection))
}

async fn establish(
    caller: Authorized<op::EstablishConnection>,
    State(app): State<Shared>,
    headers: HeaderMap,
    body: JsonBody<EstablishConnectionRequest>,
) -> Result<Response, Problem> {
    let request = body.value;
    caller.check_tenant(request.tenant_id.as_deref())?;
    let mut errors = request.field_errors();
    // Checked now, not first when a delivery needs the keys: a URL the egress rules refuse
    // could never verify anything.
    if let Some(jwks) = request.configuration.get(domain::connection::WEBHOOK_JWKS) {
        let source = jwks.as_str().unwrap_or_default();
        let refused = app
            .provider_key_sets
            .refused_source(source)
            .or_else(|| outbound_url_error(source, &app.settings.webhook_egress_allow));
        if let Some(message) = refused {
            errors.push(FieldError { field: format!("configuration.{}", domain::connection::WEBHOOK_JWKS), message });
        }
    }
    if !errors.is_empty() {
        return Err(Problem::invalid(errors));
    }
    let ctx = context_of(&caller.0);
    let wait = preferred_wait(&headers);
    let mut response = run_command(
        &app,
        &ctx.tenant_id,
        "establish-connection",
        &headers,
        &body.raw,
        ids::CONNECTION,
        |connection_id| async {
            require_tenants_secrets(&app, &ctx.tenant_id, &request.credential_ref, &request.configuration).await?;
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
            // Truthful: `Unknown` until the first check has run, unless the caller waits for it.
            let health = match wait {
                Some(wait) => first_health(&app, &ctx.tenant_id, &e.connection_id, wait).await?,
                None => Health::Unknown,
            };
            let response = ConnectionEstablishedResponse {
                connection_id: e.connection_id,
                status: "Active".into(),
                provider_id: e.provider_id,
                health,
                established_at: e.established_at,
                trace_id: ctx.trace_id.clone(),
            };
            Ok(Accepted::new(StatusCode::CREATED, Some(location), &response, outcome.last_position))
        },
    )
    .await?;
    if let Some(wait) = wait
        && let Ok(applied) = HeaderValue::from_str(&format!("wait={}", wait.as_secs()))
    {
        response.headers_mut().insert("preference-applied", applied);
    }
    Ok(response)
}

/// 404 for a `kv://` reference of the request outside the vaults the tenant may use for it:
/// the credential and every secret of `configuration` are sent, except the inbound webhook
/// secret, which a shared vault may hold.
async fn require_tenants_secrets(
    app: &AppState,
    tenant_id: &str,
    credential_ref: &Option<String>,
    configuration: &serde_json::Map<String, serde_json::Value>,
) -> Result<(), Problem> {
    if let Some(reference) = credential_ref {
        require_tenants_secret(app, tenant_id, "credentialRef", reference, SecretUse::Send).await?;
    }
    for (field, reference) in domain::connection::secret_refs(configuration, "configuration") {
        let usage = if field.strip_prefix("configuration.") == Some(domain::connection::WEBHOOK_SECRET_REF) {
            SecretUse::Verify
        } else {
            SecretUse::Send
        };
        require_tenants_secret(app, tenant_id, &field, &reference, usage).await?;
    }
    Ok(())
}

/// The longest `Prefer: wait` honoured; longer waits are cut to it.
const MAX_PREFER_WAIT: Duration = Duration::from_secs(60);
/// How often the read model is looked at while waiting.
const HEALTH_POLL: Duration = Duration::from_millis(50);

/// The `wait=N` preference of `Prefer` headers (RFC 7240 §4.3), in seconds, at most
/// [`MAX_PREFER_WAIT`]; other preferences are ignored, as the RFC allows.
pub(crate) fn preferred_wait(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|preference| {
            let token = preference.split(';').next()?.trim();
            let (name, value) = token.split_once('=')?;
            if !name.trim().eq_ignore_ascii_case("wait") {
                return None;
            }
            value.trim().trim_matches('"').parse::<u64>().ok()
        })
        .next()
        .map(|seconds| Duration::from_secs(seconds).min(MAX_PREFER_WAIT))
}

/// The connection's health once its first check is recorded, or `Unknown` after `wait`.
async fn first_health(app: &AppState, tenant_id: &str, connection_id: &str, wait: Duration) -> Result<Health, Problem> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        if let Some(view) = app.read_models.connection(tenant_id, connection_id).await?
            && view.health != Health::Unknown
        {
            return Ok(view.health);
        }
        if tokio::time::Instant::now() + HEALTH_POLL > deadline {
            return Ok(Health::Unknown);
        }
        tokio::time::sleep(HEALTH_POLL).await;
    }
}

async fn get_connection(
    caller: Authorized<op::GetConnection>,
    State(app): State<Shared>,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn prefer(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append("prefer", HeaderValue::from_str(v).unwrap());
        }
        headers
    }

    #[test]
    fn the_wait_preference_is_read_among_others_and_capped() {
        assert_eq!(preferred_wait(&prefer(&["wait=5"])), Some(Duration::from_secs(5)));
        assert_eq!(preferred_wait(&prefer(&["respond-async, Wait=3"])), Some(Duration::from_secs(3)));
        assert_eq!(preferred_wait(&prefer(&["return=minimal", "wait=2"])), Some(Duration::from_secs(2)));
        assert_eq!(preferred_wait(&prefer(&["wait=100000"])), Some(MAX_PREFER_WAIT));
        assert_eq!(preferred_wait(&prefer(&["wait=soon"])), None);
        assert_eq!(preferred_wait(&HeaderMap::new()), None);
    }
}
