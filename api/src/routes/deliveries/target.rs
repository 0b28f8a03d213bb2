//! Which connection a delivery is for: named by `?connectionId=` or `X-CS-Connection` (the
//! header's value is passed in), and, when
//! the caller also sends a bearer token (optional here), one of that token's tenant.

use axum::http::HeaderValue;
use projections::ConnectionView;

use super::Target;
use super::refusal::Refusal;
use crate::AppState;
use crate::extract::authorize;
use crate::operations as op;
use crate::problem::Problem;

/// The target connection. Unknown, another tenant's: the same 401 as a bad signature, so a
/// caller without the secret learns nothing about which connections exist.
pub(super) async fn target_connection(
    app: &AppState,
    target: Target,
    connection_header: Option<&str>,
    authorization: Option<&HeaderValue>,
) -> Result<ConnectionView, Refusal> {
    let connection_id = target
        .connection_id
        .filter(|id| !id.is_empty())
        .or_else(|| connection_header.filter(|id| !id.is_empty()).map(String::from))
        .ok_or_else(|| {
            Refusal::bad_request(
                "missing_connection",
                "name the target connection with ?connectionId= or X-CS-Connection",
            )
        })?;
    // A bearer token is optional here, but one that is sent must be valid and scoped.
    let bearer = match authorization {
        Some(h) => Some(authorize::<op::IngestDelivery>(app, Some(h)).await.map_err(|problem| {
            let reason = if problem.status == 403 { "token_not_allowed" } else { "invalid_token" };
            Refusal::new(reason, problem)
        })?),
        None => None,
    };
    app.read_models
        .connection_by_id(&connection_id)
        .await
        .map_err(|e| Refusal::new("store_unavailable", Problem::from(e)))?
        .filter(|c| bearer.as_ref().is_none_or(|p| p.tenant_id == c.tenant_id))
        .ok_or_else(|| Refusal::unauthorized("unknown_connection", "unknown connection"))
}
