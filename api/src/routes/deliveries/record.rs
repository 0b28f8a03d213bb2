//! A verified delivery recorded: its normalized type and attributes from the rule table, and
//! `DeliveryAccepted` with its normalized event appended once per provider delivery id (a
//! repeat is answered as a duplicate, appending nothing).

use axum::body::Bytes;
use chrono::{DateTime, Utc};
use commands::CommandContext;
use commands::deliveries::DeliveryAcceptedOutcome;
use connectors::inbound::{Scheme, Shape};
use domain::Actor;
use domain::delivery::AcceptDelivery;
use projections::ConnectionView;

use super::refusal::Refusal;
use crate::AppState;
use crate::problem::Problem;
use crate::trace::current_trace_id;

/// What a verified request delivers.
pub(super) struct Delivery {
    pub(super) provider_delivery_id: String,
    pub(super) event_name: String,
    pub(super) payload: serde_json::Value,
    /// The raw body, whose digest is kept (never the body itself).
    pub(super) raw: Bytes,
}

/// Records `delivery` for `connection`, with the command context it ran under.
pub(super) async fn record(
    app: &AppState,
    connection: &ConnectionView,
    scheme: Scheme,
    shape: Shape,
    delivery: Delivery,
    now: DateTime<Utc>,
) -> Result<(CommandContext, DeliveryAcceptedOutcome), Refusal> {
    let Delivery { provider_delivery_id, event_name, payload, raw } = delivery;
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
    Ok((ctx, outcome))
}

fn payload_digest(raw: &Bytes) -> String {
    format!("sha256:{}", hex::encode(ring::digest::digest(&ring::digest::SHA256, raw)))
}
