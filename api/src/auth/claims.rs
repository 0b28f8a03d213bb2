//! Reading a bearer token: the `Authorization` header, the JWT header peeked before any key is
//! chosen, and the claims that become a [`Principal`].

use super::*;

pub(super) fn bearer_token(authorization_header: Option<&str>) -> Result<&str, AuthError> {
    let value = authorization_header.ok_or(AuthError::MissingToken)?.trim();
    let (scheme, rest) = value.split_once([' ', '\t']).unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        // Another scheme (Basic, ...) is "no bearer credential", not a bad one (RFC 6750 §3.1).
        return Err(AuthError::MissingToken);
    }
    let token = rest.trim();
    if token.is_empty() || token.len() > MAX_TOKEN_BYTES || token.contains(char::is_whitespace) {
        return Err(AuthError::invalid(TokenRejection::MalformedHeader));
    }
    Ok(token)
}

/// The two header members routing needs, read before any key is chosen. The library parses
/// the header again (with its `crit` checks) when verifying.
#[derive(Deserialize)]
pub(super) struct PeekedHeader {
    pub(super) alg: String,
    #[serde(default)]
    pub(super) kid: Option<String>,
}

pub(super) fn peek_header(token: &str) -> Result<PeekedHeader, AuthError> {
    let malformed = || AuthError::invalid(TokenRejection::Malformed);
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(malformed());
    };
    let json = URL_SAFE_NO_PAD.decode(header).map_err(|_| malformed())?;
    serde_json::from_slice(&json).map_err(|_| malformed())
}

#[derive(Deserialize)]
pub(super) struct AccessTokenClaims {
    #[serde(default)]
    pub(super) sub: Option<String>,
    // A number, possibly fractional. Optional here so that its absence is reported by the
    // library's required-claim check rather than as a deserialisation failure.
    #[serde(default)]
    pub(super) exp: Option<serde_json::Number>,
    #[serde(default, rename = "tenantId")]
    pub(super) tenant_id: Option<String>,
    #[serde(default)]
    pub(super) client_id: Option<String>,
    #[serde(default)]
    pub(super) azp: Option<String>,
    #[serde(default)]
    pub(super) scope: Option<String>,
    #[serde(default)]
    pub(super) scp: Option<ScpClaim>,
}

/// Identity providers disagree on `scp`: Entra ID sends a space-separated string, Okta an array.
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum ScpClaim {
    List(Vec<String>),
    SpaceSeparated(String),
}

/// The principal of a verified token's claims, with its roles from `roles_claim` when one is
/// configured.
pub(super) fn principal_from_claims(
    raw: &serde_json::Value,
    roles_claim: Option<&str>,
) -> Result<(Principal, u64), TokenRejection> {
    let claims = AccessTokenClaims::deserialize(raw).map_err(|_| TokenRejection::Malformed)?;
    let exp = claims.exp.ok_or(TokenRejection::MissingClaim("exp"))?;
    let expires_at = exp
        .as_u64()
        .or_else(|| exp.as_f64().filter(|f| f.is_finite() && *f >= 0.0).map(|f| f as u64))
        .ok_or(TokenRejection::MalformedClaim("exp"))?;
    let subject = claims.sub.ok_or(TokenRejection::MissingClaim("sub"))?;
    if subject.trim().is_empty() {
        return Err(TokenRejection::MalformedClaim("sub"));
    }
    let tenant_id = claims.tenant_id.ok_or(TokenRejection::MissingClaim("tenantId"))?;
    if tenant_id.trim().is_empty() {
        return Err(TokenRejection::MalformedClaim("tenantId"));
    }
    let mut scopes: BTreeSet<String> =
        claims.scope.iter().flat_map(|s| s.split_whitespace()).map(str::to_owned).collect();
    match claims.scp {
        Some(ScpClaim::List(list)) => scopes.extend(list.iter().flat_map(|s| s.split_whitespace()).map(str::to_owned)),
        Some(ScpClaim::SpaceSeparated(s)) => scopes.extend(s.split_whitespace().map(str::to_owned)),
        None => {}
    }
    let roles = match roles_claim {
        Some(claim) => roles_in(raw, claim)?,
        None => BTreeSet::new(),
    };
    let principal = Principal { subject, client_id: claims.client_id.or(claims.azp), tenant_id, scopes, roles };
    Ok((principal, expires_at))
}

pub(super) fn rejection_from(error: &jsonwebtoken::errors::Error) -> TokenRejection {
    match error.kind() {
        ErrorKind::InvalidSignature => TokenRejection::BadSignature,
        ErrorKind::ExpiredSignature => TokenRejection::Expired,
        ErrorKind::ImmatureSignature => TokenRejection::NotYetValid,
        ErrorKind::InvalidIssuer => TokenRejection::WrongIssuer,
        ErrorKind::InvalidAudience => TokenRejection::WrongAudience,
        ErrorKind::InvalidAlgorithm => TokenRejection::AlgorithmMismatch,
        ErrorKind::MissingRequiredClaim(claim) => TokenRejection::MissingClaim(spec_claim_name(claim)),
        ErrorKind::InvalidClaimFormat(claim) => TokenRejection::MalformedClaim(spec_claim_name(claim)),
        ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidEddsaKey
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidKeyFormat => {
            // The key came from the JWKS, so this is the identity provider's problem; the
            // token still cannot be trusted.
            tracing::warn!(error = %error, "a JWKS key could not verify a token");
            TokenRejection::BadSignature
        }
        _ => TokenRejection::Malformed,
    }
}

pub(super) fn spec_claim_name(claim: &str) -> &'static str {
    match claim {
        "exp" => "exp",
        "nbf" => "nbf",
        "iss" => "iss",
        "aud" => "aud",
        "sub" => "sub",
        _ => "registered",
    }
}
