//! Development tokens: HS256 tokens signed with a configured secret, as `integration-engine
//! token` mints them. Never for production (`serve` warns when it accepts them).

use super::*;

/// Mints an HS256 development token, as the `integration-engine token` command and tests do.
///
/// Claims: `iss`, `aud`, `sub`, `tenantId`, `scope` (space-separated), `iat` and
/// `exp = now + ttl`. An [`Authenticator`] accepts it only when configured with the same
/// secret, issuer and audience.
pub fn mint_dev_token(
    secret: &[u8],
    issuer: &str,
    audience: &str,
    subject: &str,
    tenant_id: &str,
    scopes: &[&str],
    ttl: Duration,
) -> Result<String, AuthError> {
    mint_dev_token_with_roles(secret, issuer, audience, subject, tenant_id, scopes, &[], ttl)
}

/// [`mint_dev_token`] with a `roles` claim (an array) too, for trying a role policy.
#[allow(clippy::too_many_arguments)]
pub fn mint_dev_token_with_roles(
    secret: &[u8],
    issuer: &str,
    audience: &str,
    subject: &str,
    tenant_id: &str,
    scopes: &[&str],
    roles: &[&str],
    ttl: Duration,
) -> Result<String, AuthError> {
    check_dev_secret(secret)?;
    for (name, value) in [("issuer", issuer), ("audience", audience), ("subject", subject), ("tenant id", tenant_id)] {
        if value.trim().is_empty() {
            return Err(AuthError::misconfigured(format!("the {name} must not be empty")));
        }
    }
    // A scope with whitespace would silently become several scopes once split again.
    if let Some(bad) = scopes.iter().find(|s| s.is_empty() || s.contains(char::is_whitespace)) {
        return Err(AuthError::misconfigured(format!("scope {bad:?} must be non-empty and free of whitespace")));
    }
    let now = unix_now();
    let claims = DevTokenClaims {
        iss: issuer,
        aud: audience,
        sub: subject,
        tenant_id,
        scope: scopes.join(" "),
        roles,
        iat: now,
        exp: now.saturating_add(ttl.as_secs()),
    };
    let key = EncodingKey::from_secret(secret)
        .map_err(|e| AuthError::misconfigured(format!("unusable development secret: {e}")))?;
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key)
        .map_err(|e| AuthError::misconfigured(format!("cannot sign the development token: {e}")))
}

#[derive(Serialize)]
pub(super) struct DevTokenClaims<'a> {
    pub(super) iss: &'a str,
    pub(super) aud: &'a str,
    pub(super) sub: &'a str,
    #[serde(rename = "tenantId")]
    pub(super) tenant_id: &'a str,
    pub(super) scope: String,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub(super) roles: &'a [&'a str],
    pub(super) iat: u64,
    pub(super) exp: u64,
}

pub(super) fn check_dev_secret(secret: &[u8]) -> Result<(), AuthError> {
    if secret.len() < MIN_DEV_SECRET_BYTES {
        return Err(AuthError::misconfigured(format!(
            "the development HS256 secret must be at least {MIN_DEV_SECRET_BYTES} bytes"
        )));
    }
    Ok(())
}
