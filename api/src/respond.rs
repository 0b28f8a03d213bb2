//! The path every POST takes: idempotency key, command, read-your-writes wait, response.

use std::future::Future;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use commands::idempotency::{IdempotentRequest, is_valid_key};
use serde::Serialize;
use store::StoredResponse;

use crate::AppState;
use crate::problem::Problem;

pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Set on a response that replays the first answer to an `Idempotency-Key`.
pub const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";

/// What a command handler answers when it succeeds.
pub struct Accepted {
    status: StatusCode,
    location: Option<String>,
    body: Vec<u8>,
    /// The store position of the command's last event: the answer waits until the read models
    /// have it, so a GET right after sees the resource.
    position: Option<u64>,
}

impl Accepted {
    pub fn new(status: StatusCode, location: Option<String>, body: &impl Serialize, position: Option<u64>) -> Self {
        Self { status, location, body: serde_json::to_vec(body).unwrap_or_default(), position }
    }
}

/// Runs `command` for a POST, honouring `Idempotency-Key`: a fresh id (with `id_prefix`) or
/// the one reserved by the first request with that key is passed to the command.
pub async fn run_command<F, Fut>(
    app: &AppState,
    tenant_id: &str,
    operation: &str,
    headers: &HeaderMap,
    raw_body: &[u8],
    id_prefix: &str,
    command: F,
) -> Result<Response, Problem>
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = Result<Accepted, Problem>>,
{
    let fresh_id = commands::new_resource_id(id_prefix);
    let key = match headers.get(IDEMPOTENCY_KEY) {
        None => None,
        Some(v) => match v.to_str() {
            Ok(k) if is_valid_key(k) => Some(k.to_string()),
            _ => return Err(Problem::bad_request("Idempotency-Key must be 1 to 255 printable ASCII characters")),
        },
    };
    let (resource_id, repeated) = match &key {
        None => (fresh_id, false),
        Some(key) => match app.idempotency.begin(tenant_id, operation, key, raw_body, &fresh_id).await? {
            IdempotentRequest::Proceed { resource_id, repeated } => (resource_id, repeated),
            IdempotentRequest::Replay(stored) => return Ok(replay(stored)),
            // 409, not 422: the request itself is valid; the key is taken by another body. The
            // IETF draft answers 409 for a key whose first request is in flight; one status
            // tells a client "this key is not free" either way.
            IdempotentRequest::KeyReused => {
                return Err(Problem::conflict(
                    "Idempotency-Key: this key was already used with a different request body",
                ));
            }
        },
    };
    let accepted = command(resource_id).await?;
    if let Some(position) = accepted.position
        && !app.projections.wait_for(position, app.settings.read_your_writes_timeout).await
    {
        tracing::warn!(position, "read models did not catch up before answering");
    }
    if let Some(key) = &key {
        let stored = StoredResponse {
            status: accepted.status.as_u16(),
            location: accepted.location.clone(),
            body: accepted.body.clone(),
        };
        app.idempotency.finish(tenant_id, operation, key, &stored).await?;
    }
    let response = respond(accepted.status, accepted.location, accepted.body);
    // A request that found the key reserved (the loser of a concurrent race, or a retry after
    // the first crashed) repeats the first request's answer: it is marked like a stored replay.
    Ok(if repeated { marked_replayed(response) } else { response })
}

fn replay(stored: StoredResponse) -> Response {
    let status = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK);
    marked_replayed(respond(status, stored.location, stored.body))
}

fn marked_replayed(mut response: Response) -> Response {
    response.headers_mut().insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    response
}

fn respond(status: StatusCode, location: Option<String>, body: Vec<u8>) -> Response {
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(v) = location.and_then(|l| HeaderValue::from_str(&l).ok()) {
        headers.insert(header::LOCATION, v);
    }
    response
}

/// A 200 JSON answer for GETs.
pub fn ok_json(body: &impl Serialize) -> Response {
    respond(StatusCode::OK, None, serde_json::to_vec(body).unwrap_or_default())
}
