//! `POST /webhooks/deliveries`: the inbound webhook gateway. Authenticated by the provider's
//! signature over the raw body (not by a bearer token), fail closed: anything unverifiable is
//! refused with a problem document, nothing is stored and the payload is never logged; every
//! refusal counts in `webhook_deliveries_rejected_total{reason, provider}`.
//!
//! Two shapes: the spec's envelope (`providerDeliveryId`, `eventName`, `payload`) announced by
//! `X-CS-Provider`, and vendor-native deliveries exactly as the vendor sends them (no
//! `X-CS-Provider`). The connection (`?connectionId=` or `X-CS-Connection`) decides the scheme
//! and the secret; the signed bytes decide the normalized type.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequest, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use connectors::inbound::{self, Arrival, CalledUrl, Content, Headers, InboundSettings, Received, Scheme, Shape};
use domain::ids;
use serde::Deserialize;

use crate::bodies::{DeliveryAcceptedResponse, InboundDeliveryRequest};
use crate::extract::parse_json;
use crate::problem::Problem;
use crate::{AppState, Shared};

mod record;
mod refusal;
mod target;
mod verify;

use record::{Delivery, record};
use refusal::{Refusal, too_large};
use target::target_connection;
use verify::{verification_keys, verify};

pub const PROVIDER_HEADER: &str = "x-cs-provider";
pub const CONNECTION_HEADER: &str = "x-cs-connection";
/// Counts refused deliveries, by `reason` and `provider`.
pub const REJECTED_COUNTER: &str = "webhook_deliveries_rejected_total";
/// Counts accepted deliveries, by `provider` and `outcome` (`accepted`, `duplicate`).
pub const ACCEPTED_COUNTER: &str = "webhook_deliveries_accepted_total";
/// Counts deliveries verified with the previous secret during a rotation, by `provider`.
pub const PREVIOUS_SECRET_COUNTER: &str = "webhook_deliveries_verified_with_previous_secret_total";

pub fn router() -> Router<Shared> {
    Router::new().route("/webhooks/deliveries", post(ingest))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Target {
    pub(super) connection_id: Option<String>,
}

async fn ingest(State(app): State<Shared>, Query(target): Query<Target>, request: Request) -> Response {
    // The provider label of the counters: the scheme once known, else what the caller claimed
    // if it is one, else "unknown" (never arbitrary caller text: labels must stay few).
    let mut provider_label = "unknown";
    let outcome = gateway(&app, target, request, &mut provider_label).await;
    match outcome {
        Ok(response) => response,
        Err(refusal) => {
            metrics::counter!(REJECTED_COUNTER, "reason" => refusal.reason, "provider" => provider_label).increment(1);
            tracing::info!(reason = refusal.reason, provider = provider_label, "inbound delivery refused");
            refusal.problem.into_response()
        }
    }
}

async fn gateway(
    app: &AppState,
    target: Target,
    request: Request,
    provider_label: &mut &'static str,
) -> Result<Response, Refusal> {
    // By lower-case name, the first value of each (what the vendors' rules read too).
    let headers = Headers::from_pairs(
        request.headers().iter().filter_map(|(name, value)| Some((name.as_str(), value.to_str().ok()?))),
    );
    let authorization = request.headers().get(header::AUTHORIZATION).cloned();
    let uri = request.uri().clone();

    // Too large is decided from Content-Length before anything is read or looked up; a body
    // without one (chunked) is cut off at the same limit while it is read, below.
    let declared_length = headers.get(header::CONTENT_LENGTH.as_str()).and_then(|v| v.parse::<u64>().ok());
    if declared_length.is_some_and(|n| n > app.settings.max_body_bytes as u64) {
        return Err(too_large(app.settings.max_body_bytes));
    }
    // X-CS-Provider announces the spec's envelope; without it the body is the vendor's own.
    let claimed_provider = headers.get(PROVIDER_HEADER).map(claimed_scheme).transpose()?;
    if let Some((_, scheme)) = claimed_provider {
        *provider_label = scheme.name();
    }
    let shape = if claimed_provider.is_some() { Shape::Envelope } else { Shape::Native };
    let connection_header = headers.get(CONNECTION_HEADER);
    let connection = target_connection(app, target, connection_header, authorization.as_ref()).await?;
    let provider_key = connection.provider_id.strip_prefix("prov-").unwrap_or_default();
    let settings = InboundSettings::of(&connection.configuration, provider_key);
    let scheme = settings
        .scheme
        .ok_or_else(|| Refusal::unauthorized("unknown_provider", "the connection's provider has no inbound scheme"))?;
    *provider_label = scheme.name();
    let now = app.commands.now();
    let keys = verification_keys(app, &connection, &settings, scheme, now).await?;
    // A media type the vendor never sends is refused before the body is read.
    inbound::check_media_type(scheme, shape, &headers)?;

    let raw = Bytes::from_request(request, &()).await.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            too_large(app.settings.max_body_bytes)
        } else if crate::server::is_body_timeout(&rejection) {
            Refusal::new("body_timed_out", Problem::body_timed_out())
        } else {
            Refusal::bad_request("unreadable_body", rejection.body_text())
        }
    })?;
    let arrival = Arrival {
        scheme,
        shape,
        headers: &headers,
        url: CalledUrl {
            configured: settings.webhook_url,
            forwarded_proto: headers.get("x-forwarded-proto"),
            host: headers.get("x-forwarded-host").or_else(|| headers.get(header::HOST.as_str())),
            path_and_query: uri.path_and_query().map_or("/", |p| p.as_str()),
        },
        body: &raw,
        now: now.timestamp(),
        tolerance_seconds: app.settings.webhook_timestamp_tolerance.as_secs(),
    };
    let content = match verify(app, &connection, &settings, &keys, &arrival).await? {
        Received::Delivery { content, .. } => content,
        Received::Handshake(answer) => return Ok(axum::Json(answer).into_response()),
    };
    // Authenticated from here on: a contradicting X-CS-Provider is the sender's mistake.
    if let Some((claimed, _)) = claimed_provider
        && claimed != scheme.name()
        && ids::provider_id(claimed) != connection.provider_id
    {
        return Err(Refusal::bad_request(
            "provider_mismatch",
            format!("X-CS-Provider names {claimed}, but the connection's provider is {}", scheme.name()),
        ));
    }
    let (provider_delivery_id, event_name, payload) = match content {
        Content::Envelope(signed_body) => read_envelope(&signed_body)?,
        Content::Native(native) => (native.provider_delivery_id, native.event_name, native.payload),
    };

    let delivery = Delivery { provider_delivery_id, event_name, payload, raw };
    let (ctx, outcome) = record(app, &connection, scheme, shape, delivery, now).await?;
    if let Some(position) = outcome.last_position
        && !app.projections.wait_for(position, app.settings.read_your_writes_timeout).await
    {
        tracing::warn!(position, "read models did not catch up before answering");
    }
    let outcome_label = if outcome.duplicate { "duplicate" } else { "accepted" };
    metrics::counter!(ACCEPTED_COUNTER, "provider" => scheme.name(), "outcome" => outcome_label).increment(1);
    let e = outcome.accepted;
    let response = DeliveryAcceptedResponse {
        delivery_id: e.delivery_id,
        status: "Accepted".into(),
        normalized_event_type: e.normalized_event_type,
        trace_id: ctx.trace_id.clone(),
        duplicate: outcome.duplicate,
    };
    let status = if outcome.duplicate { StatusCode::OK } else { StatusCode::ACCEPTED };
    Ok((status, axum::Json(response)).into_response())
}

/// The scheme `X-CS-Provider` names (a scheme or a provider key), with the name as sent.
fn claimed_scheme(name: &str) -> Result<(&str, Scheme), Refusal> {
    let scheme = Scheme::from_name(name).or_else(|| Scheme::for_provider_key(name)).ok_or_else(|| {
        Refusal::bad_request("unknown_provider", format!("provider {name} is not supported for inbound webhooks"))
    })?;
    Ok((name, scheme))
}

/// The spec's envelope, read from the verified bytes.
fn read_envelope(signed_body: &[u8]) -> Result<(String, String, serde_json::Value), Refusal> {
    let envelope: InboundDeliveryRequest =
        parse_json(signed_body).map_err(|problem| Refusal::new("malformed_body", problem))?;
    let errors = envelope.field_errors();
    if !errors.is_empty() {
        return Err(Refusal::new("malformed_body", Problem::invalid(errors)));
    }
    Ok((envelope.provider_delivery_id, envelope.event_name, envelope.payload))
}
