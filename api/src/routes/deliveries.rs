//! `POST /webhooks/deliveries`: the inbound webhook gateway. Authenticated by the provider's
//! signature over the raw body (not by a bearer token), fail closed: anything unverifiable is
//! refused with a problem document, nothing is stored and the payload is never logged; every
//! refusal counts in `webhook_deliveries_rejected_total{reason, provider}`.
//!
//! Two shapes: the spec's envelope (`providerDeliveryId`, `eventName`, `payload`) announced by
//! `X-CS-Provider`, and vendor-native deliveries exactly as the vendor sends them (no
//! `X-CS-Provider`). The connection (`?connectionId=` or `X-CS-Connection`) decides the scheme
//! and the secret; the signed bytes decide the normalized type.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequest, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use commands::CommandContext;
use connectors::inbound::{self, CalledUrl, Headers, Keys, Scheme, Shape, SignedRequest};
use connectors::jws::JwkSet;
use connectors::key_sets::KeySetError;
use connectors::signature::SignatureError;
use domain::delivery::AcceptDelivery;
use domain::secret_ref::SecretRef;
use domain::{Actor, ids};
use projections::ConnectionView;
use serde::Deserialize;

use crate::bodies::{DeliveryAcceptedResponse, InboundDeliveryRequest, require_text};
use crate::extract::{DeliveriesIngest, Scope, authenticate_header, parse_json};
use crate::problem::Problem;
use crate::trace::current_trace_id;
use crate::{AppState, Shared};

pub const PROVIDER_HEADER: &str = "x-cs-provider";
pub const CONNECTION_HEADER: &str = "x-cs-connection";
/// Counts refused deliveries, by `reason` and `provider`.
pub const REJECTED_COUNTER: &str = "webhook_deliveries_rejected_total";
/// Counts accepted deliveries, by `provider` and `outcome` (`accepted`, `duplicate`).
pub const ACCEPTED_COUNTER: &str = "webhook_deliveries_accepted_total";
/// Counts deliveries verified with the previous secret during a rotation, by `provider`.
pub const PREVIOUS_SECRET_COUNTER: &str = "webhook_deliveries_verified_with_previous_secret_total";

/// Connection configuration keys the gateway reads.
const SECRET_REF_KEY: &str = "webhookSecretRef";
const SCHEME_KEY: &str = "webhookScheme";
const JWKS_KEY: &str = "webhookJwks";
const URL_KEY: &str = "webhookUrl";

pub fn router() -> Router<Shared> {
    Router::new().route("/webhooks/deliveries", post(ingest))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Target {
    connection_id: Option<String>,
}

/// A refused delivery: the answer and the reason it is counted under.
struct Refusal {
    reason: &'static str,
    problem: Problem,
}

impl Refusal {
    fn new(reason: &'static str, problem: Problem) -> Self {
        Self { reason, problem }
    }

    /// 401 with a challenge naming the header that should have carried the proof.
    fn unauthorized(reason: &'static str, detail: impl Into<String>) -> Self {
        let problem = Problem::new(StatusCode::UNAUTHORIZED, "signature-rejected", "Unauthorized", detail)
            .with_header(header::WWW_AUTHENTICATE, "HMAC realm=\"webhooks\"");
        Self::new(reason, problem)
    }

    fn bad_request(reason: &'static str, detail: impl Into<String>) -> Self {
        Self::new(reason, Problem::bad_request(detail))
    }
}

impl From<SignatureError> for Refusal {
    fn from(e: SignatureError) -> Self {
        Self::unauthorized(e.reason(), e.to_string())
    }
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
    let headers = request.headers().clone();
    let header_text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);

    // Too large is decided from Content-Length before anything is read or looked up; a body
    // without one (chunked) is cut off at the same limit while it is read, below.
    let declared_length = header_text(header::CONTENT_LENGTH.as_str()).and_then(|v| v.parse::<u64>().ok());
    if declared_length.is_some_and(|n| n > app.settings.max_body_bytes as u64) {
        return Err(too_large(app.settings.max_body_bytes));
    }

    // X-CS-Provider announces the spec's envelope; without it the body is the vendor's own.
    let claimed_provider = match header_text(PROVIDER_HEADER) {
        None => None,
        Some(name) => {
            let scheme = Scheme::from_name(name).or_else(|| Scheme::for_provider_key(name)).ok_or_else(|| {
                Refusal::bad_request(
                    "unknown_provider",
                    format!("provider {name} is not supported for inbound webhooks"),
                )
            })?;
            *provider_label = scheme.name();
            Some(name.to_string())
        }
    };
    let shape = if claimed_provider.is_some() { Shape::Envelope } else { Shape::Native };
    let connection_id = target
        .connection_id
        .filter(|id| !id.is_empty())
        .or_else(|| header_text(CONNECTION_HEADER).filter(|id| !id.is_empty()).map(String::from))
        .ok_or_else(|| {
            Refusal::bad_request(
                "missing_connection",
                "name the target connection with ?connectionId= or X-CS-Connection",
            )
        })?;
    // A bearer token is optional here, but one that is sent must be valid and scoped.
    let bearer = match headers.get(header::AUTHORIZATION) {
        Some(h) => Some(
            authenticate_header(app, Some(h), DeliveriesIngest::NAME)
                .await
                .map_err(|problem| Refusal::new("invalid_token", problem))?,
        ),
        None => None,
    };

    // Unknown connection, another tenant's, no verifier, no secret: the same 401, so a caller
    // without the secret learns nothing about which connections exist.
    let connection = app
        .read_models
        .connection_by_id(&connection_id)
        .await
        .map_err(|e| Refusal::new("store_unavailable", Problem::from(e)))?
        .filter(|c| bearer.as_ref().is_none_or(|p| p.tenant_id == c.tenant_id))
        .ok_or_else(|| Refusal::unauthorized("unknown_connection", "unknown connection"))?;
    let scheme = scheme_of(&connection)
        .ok_or_else(|| Refusal::unauthorized("unknown_provider", "the connection's provider has no inbound scheme"))?;
    *provider_label = scheme.name();
    let now = app.commands.now();
    let verification_keys = match scheme.uses_secret() {
        true => VerificationKeys::Secrets(secrets_of(app, &connection, now).await?),
        false => VerificationKeys::Jwks(jwks_of(app, &connection).await?),
    };

    check_content_type(scheme, shape, &headers)?;
    let url = signed_url(&connection, &headers, request.uri());
    let raw = Bytes::from_request(request, &()).await.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            too_large(app.settings.max_body_bytes)
        } else {
            Refusal::bad_request("unreadable_body", rejection.body_text())
        }
    })?;

    // Verified over the raw bytes, before anything in the body is read.
    let lowercase_headers =
        Headers::from_pairs(headers.iter().filter_map(|(name, value)| Some((name.as_str(), value.to_str().ok()?))));
    let signed = SignedRequest {
        headers: &lowercase_headers,
        body: &raw,
        url: &url,
        now: now.timestamp(),
        tolerance_seconds: app.settings.webhook_timestamp_tolerance.as_secs(),
    };
    let secret_slices: Vec<&[u8]>;
    let keys = match &verification_keys {
        VerificationKeys::Secrets(secrets) => {
            secret_slices = secrets.iter().map(Vec::as_slice).collect();
            Keys::Secrets(&secret_slices)
        }
        VerificationKeys::Jwks(set) => Keys::Jwks(set),
    };
    let verified = inbound::verify(scheme, &signed, keys).inspect_err(|e| {
        // A key set that lacks the signing key may have been rotated at the provider: the next
        // delivery fetches it again.
        if matches!(e, SignatureError::UnknownKey(_))
            && let Some(source) = connection.configuration.get(JWKS_KEY).and_then(|v| v.as_str())
        {
            app.provider_key_sets.forget(source);
        }
    })?;
    if verified.key_index > 0 {
        metrics::counter!(PREVIOUS_SECRET_COUNTER, "provider" => scheme.name()).increment(1);
        tracing::info!(connection_id, provider = scheme.name(), "delivery verified with the previous secret");
    }

    // Authenticated from here on: a contradicting X-CS-Provider is the sender's mistake.
    if let Some(claimed) = &claimed_provider
        && claimed != scheme.name()
        && ids::provider_id(claimed) != connection.provider_id
    {
        return Err(Refusal::bad_request(
            "provider_mismatch",
            format!("X-CS-Provider names {claimed}, but the connection's provider is {}", scheme.name()),
        ));
    }
    let (provider_delivery_id, event_name, payload) = match shape {
        Shape::Envelope => {
            let envelope: InboundDeliveryRequest =
                parse_json(&verified.signed_body).map_err(|problem| Refusal::new("malformed_body", problem))?;
            let mut errors = Vec::new();
            require_text(&mut errors, "providerDeliveryId", &envelope.provider_delivery_id, 256);
            require_text(&mut errors, "eventName", &envelope.event_name, 128);
            if !errors.is_empty() {
                return Err(Refusal::new("malformed_body", Problem::invalid(errors)));
            }
            (envelope.provider_delivery_id, envelope.event_name, envelope.payload)
        }
        Shape::Native => {
            let native = inbound::native_delivery(scheme, &lowercase_headers, &verified.signed_body)
                .map_err(|e| Refusal::bad_request("malformed_body", e.0))?;
            if let Some(answer) = inbound::handshake_answer(scheme, &native) {
                return Ok(axum::Json(answer).into_response());
            }
            (native.provider_delivery_id, native.event_name, native.payload)
        }
    };

    let normalized = app.settings.normalization_rules.normalize(scheme.name(), &event_name, shape, &payload);
    let actor = Actor { subject: format!("webhook:{}", scheme.name()), client_id: None };
    let ctx = CommandContext::new(connection.tenant_id.clone(), current_trace_id(), actor);
    let command = AcceptDelivery {
        delivery_id: String::new(),
        tenant_id: ctx.tenant_id.clone(),
        connection_id: connection.connection_id.clone(),
        provider: scheme.name().to_string(),
        provider_delivery_id,
        event_name,
        normalized_event_type: normalized.event_type,
        attributes: normalized.attributes,
        payload_digest: payload_digest(&raw),
        received_at: now,
    };
    let outcome = app.commands.accept_delivery(&ctx, command).await.map_err(|e| {
        let problem = Problem::from(e);
        Refusal::new(if problem.status >= 500 { "store_unavailable" } else { "malformed_body" }, problem)
    })?;
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

enum VerificationKeys {
    Secrets(Vec<Vec<u8>>),
    Jwks(Arc<JwkSet>),
}

fn too_large(limit: usize) -> Refusal {
    Refusal::new(
        "payload_too_large",
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
            "Payload too large",
            format!("the body is larger than {limit} bytes"),
        ),
    )
}

/// The connection's scheme: `configuration.webhookScheme`, or the one its provider key implies.
fn scheme_of(connection: &ConnectionView) -> Option<Scheme> {
    let configured = connection.configuration.get(SCHEME_KEY).and_then(|v| v.as_str());
    inbound::connection_scheme(configured, connection.provider_id.strip_prefix("prov-").unwrap_or_default())
}

/// The secrets that verify the connection's deliveries now: the current version of
/// `webhookSecretRef` and, for `--webhook-secret-grace-seconds` (24 h by default) after a
/// rotation, the previous one (see [`store::vault::verifying_values`]).
async fn secrets_of(
    app: &AppState,
    connection: &ConnectionView,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Vec<Vec<u8>>, Refusal> {
    let secret_ref = connection
        .configuration
        .get(SECRET_REF_KEY)
        .and_then(|v| v.as_str())
        .and_then(|r| SecretRef::parse(r).ok())
        .ok_or_else(|| Refusal::unauthorized("secret_unavailable", "the connection has no webhook secret"))?;
    let grace = app.settings.webhook_secret_grace;
    store::vault::verifying_values(app.vault.as_ref(), &secret_ref, &connection.tenant_id, now, grace).await.map_err(
        |e| {
            tracing::warn!(connection_id = connection.connection_id, error = %e, "webhook secret unavailable");
            Refusal::unauthorized("secret_unavailable", "the connection's webhook secret is unavailable")
        },
    )
}

/// Which content types a scheme's deliveries come as (the vendor's rule, in `connectors`);
/// anything else is 415 before reading.
fn check_content_type(scheme: Scheme, shape: Shape, headers: &HeaderMap) -> Result<(), Refusal> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    if inbound::accepts_media_type(scheme, shape, content_type) {
        return Ok(());
    }
    let media = inbound::media_type(content_type);
    Err(Refusal::new(
        "unsupported_media_type",
        Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported media type",
            format!("{} deliveries cannot be {media:?}", scheme.name()),
        ),
    ))
}

/// The URL the vendor called, for schemes that sign it (Twilio): see [`CalledUrl::signed`].
fn signed_url(connection: &ConnectionView, headers: &HeaderMap, uri: &axum::http::Uri) -> String {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    CalledUrl {
        configured: connection.configuration.get(URL_KEY).and_then(|v| v.as_str()),
        forwarded_proto: text("x-forwarded-proto"),
        host: text("x-forwarded-host").or_else(|| text(header::HOST.as_str())),
        path_and_query: uri.path_and_query().map_or("/", |p| p.as_str()),
    }
    .signed()
}

fn payload_digest(raw: &Bytes) -> String {
    format!("sha256:{}", hex::encode(ring::digest::digest(&ring::digest::SHA256, raw)))
}

/// The provider's JWKS named by `configuration.webhookJwks` (see [`connectors::key_sets::ProviderKeySets::get`]).
async fn jwks_of(app: &AppState, connection: &ConnectionView) -> Result<Arc<JwkSet>, Refusal> {
    let source = connection
        .configuration
        .get(JWKS_KEY)
        .and_then(|v| v.as_str())
        .ok_or_else(|| Refusal::unauthorized("secret_unavailable", "the connection names no webhookJwks"))?;
    app.provider_key_sets.get(source).await.map_err(|e| {
        tracing::warn!(connection_id = connection.connection_id, error = %e, "provider JWKS not usable");
        let why = match e {
            KeySetError::Unavailable(_) => "the provider's key set is unavailable",
            KeySetError::Unusable(_) => "the provider's key set is unusable",
        };
        Refusal::unauthorized("secret_unavailable", why)
    })
}
