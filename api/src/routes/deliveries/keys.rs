//! Which keys verify a connection's deliveries: its webhook secrets from the tenant's vault,
//! or its provider's published key set.

use connectors::inbound::{InboundSettings, Scheme, VerificationKeys};
use connectors::key_sets::KeySetError;
use domain::secret_ref::SecretRef;
use projections::ConnectionView;

use super::refusal::Refusal;
use crate::AppState;

/// What verifies the connection's deliveries now: for a scheme with a shared secret, the
/// current version of `webhookSecretRef` and, for `--webhook-secret-grace-seconds` (24 h by
/// default) after a rotation, the previous one (see [`store::vault::verifying_values`]); for
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
    let secrets = store::vault::verifying_values(app.vault.as_ref(), &secret_ref, &connection.tenant_id, now, grace)
        .await
        .map_err(|e| {
            tracing::warn!(connection_id, error = %e, "webhook secret unavailable");
            Refusal::unauthorized("secret_unavailable", "the connection's webhook secret is unavailable")
        })?;
    Ok(VerificationKeys::Secrets(secrets))
}
