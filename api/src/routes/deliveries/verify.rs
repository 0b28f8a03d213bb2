//! Verifying a delivery: which keys verify its connection's deliveries (its webhook secrets
//! from the tenant's vault, or its provider's published key set), and the vendor's rules run
//! over the request with them (`connectors::inbound::receive`).

use connectors::inbound::{self, Arrival, InboundSettings, Received, Refused, Scheme, VerificationKeys};
use connectors::key_sets::KeySetError;
use connectors::signature::SignatureError;
use domain::secret_ref::SecretRef;
use projections::ConnectionView;

use super::PREVIOUS_SECRET_COUNTER;
use super::refusal::Refusal;
use crate::AppState;

/// Runs the vendor's rules over `arrival` with `keys`. A JWS signed with a key the provider's
/// set lacks may mean the provider rotated its keys: the set is fetched again (at most every
/// 30 s per provider) and the request verified once more.
pub(super) async fn verify(
    app: &AppState,
    connection: &ConnectionView,
    settings: &InboundSettings<'_>,
    keys: &VerificationKeys,
    arrival: &Arrival<'_>,
) -> Result<Received, Refusal> {
    let mut received = inbound::receive(arrival, keys);
    if let (Err(Refused::Signature(SignatureError::UnknownKey(_))), Some(source)) = (&received, settings.jwks)
        && let Ok(set) = app.provider_key_sets.refetch(source).await
    {
        received = inbound::receive(arrival, &VerificationKeys::Jwks(set));
    }
    let received = received?;
    if let Received::Delivery { key_index: 1.., .. } = received {
        let provider = arrival.scheme.name();
        metrics::counter!(PREVIOUS_SECRET_COUNTER, "provider" => provider).increment(1);
        tracing::info!(connection_id = %connection.connection_id, provider, "delivery verified with the previous secret");
    }
    Ok(received)
}

/// What verifies the connection's deliveries now: for a scheme with a shared secret, the
/// current version of `webhookSecretRef` and, for `--webhook-secret-grace-seconds` (24 h by
/// default) after a rotation, the previous one (see [`store::TenantVault::verifying_values`]); for
/// JWS, the provider's key set named by `webhookJwks` (see
/// [`connectors::key_sets::ProviderKeySets::get`]).
pub(super) async fn verification_keys(
    app: &AppState,
    connection: &ConnectionView,
    settings: &InboundSettings<'_>,
    scheme: Scheme,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<VerificationKeys, Refusal> {
    let connection_id = &connection.connection_id;
    if !scheme.uses_secret() {
        let source = settings
            .jwks
            .ok_or_else(|| Refusal::unauthorized("secret_unavailable", "the connection names no webhookJwks"))?;
        let set = app.provider_key_sets.get(source).await.map_err(|e| {
            tracing::warn!(connection_id, error = %e, "provider JWKS not usable");
            let why = match e {
                KeySetError::Unavailable(_) => "the provider's key set is unavailable",
                KeySetError::Unusable(_) => "the provider's key set is unusable",
            };
            Refusal::unauthorized("secret_unavailable", why)
        })?;
        return Ok(VerificationKeys::Jwks(set));
    }
    let secret_ref = settings
        .secret_ref
        .and_then(|r| SecretRef::parse(r).ok())
        .ok_or_else(|| Refusal::unauthorized("secret_unavailable", "the connection has no webhook secret"))?;
    let grace = app.settings.webhook_secret_grace;
    let secrets = app.vault.of(&connection.tenant_id).verifying_values(&secret_ref, now, grace).await.map_err(|e| {
        tracing::warn!(connection_id, error = %e, "webhook secret unavailable");
        Refusal::unauthorized("secret_unavailable", "the connection's webhook secret is unavailable")
    })?;
    Ok(VerificationKeys::Secrets(secrets))
}
