//! Extractors that turn every bad input into a problem document before a handler runs.

use std::marker::PhantomData;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use serde::de::DeserializeOwned;

use crate::auth::{AuthError, Principal, insufficient_scope_challenge};
use crate::operations::Operation;
use crate::problem::{FieldError, Problem};
use crate::{AppState, Shared};

/// A JSON request body, validated, with the raw bytes kept for idempotency hashing.
pub struct JsonBody<T> {
    pub value: T,
    pub raw: Bytes,
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = Problem;

    async fn from_request(request: Request, state: &S) -> Result<Self, Problem> {
        let raw = json_bytes(request, state).await?;
        let value = parse_json(&raw)?;
        Ok(Self { value, raw })
    }
}

/// The raw bytes of a JSON body: 415 when it is not declared JSON, 413 over the body limit.
/// Signed bodies are verified over these bytes before they are parsed.
pub async fn json_bytes<S: Send + Sync>(request: Request, state: &S) -> Result<Bytes, Problem> {
    let is_json = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|m| m.trim().to_ascii_lowercase())
        .is_some_and(|m| m == "application/json" || (m.starts_with("application/") && m.ends_with("+json")));
    if !is_json {
        return Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported media type",
            "the body must be JSON (Content-Type: application/json)",
        ));
    }
    Bytes::from_request(request, state).await.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Problem::new(StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large", "Payload too large", rejection.body_text())
        } else if crate::server::is_body_timeout(&rejection) {
            Problem::body_timed_out()
        } else {
            Problem::bad_request(rejection.body_text())
        }
    })
}

/// Parses JSON: a syntax error is 400; JSON of the wrong shape is 422 naming the field.
pub fn parse_json<T: DeserializeOwned>(raw: &[u8]) -> Result<T, Problem> {
    let mut de = serde_json::Deserializer::from_slice(raw);
    let result: Result<T, _> = serde_path_to_error::deserialize(&mut de);
    let value = result.map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if !inner.is_data() {
            return Problem::bad_request(format!("malformed JSON: {inner}"));
        }
        Problem::invalid(vec![field_error(&path, &inner)])
    })?;
    de.end().map_err(|e| Problem::bad_request(format!("malformed JSON: {e}")))?;
    Ok(value)
}

/// serde reports a missing field at its parent's path; name the field itself instead.
fn field_error(path: &str, error: &serde_json::Error) -> FieldError {
    let message = error.to_string();
    let message = message.split(" at line ").next().unwrap_or(&message).to_string();
    let missing = message.strip_prefix("missing field `").and_then(|rest| rest.split('`').next());
    let field = match (missing, path) {
        (Some(name), ".") => name.to_string(),
        (Some(name), parent) => format!("{parent}.{name}"),
        (None, ".") => "$".to_string(),
        (None, p) => p.to_string(),
    };
    FieldError { field, message }
}

/// A caller allowed to perform operation `O`: a valid bearer token (else 401) with `O`'s scope
/// and, when a role policy is configured, one of the roles it allows for `O` (else 403).
pub struct Authorized<O: Operation>(pub Principal, PhantomData<O>);

impl<O: Operation> Authorized<O> {
    /// 403 when the body names another tenant than the token.
    pub fn check_tenant(&self, body_tenant: Option<&str>) -> Result<(), Problem> {
        match body_tenant {
            Some(t) if t != self.0.tenant_id => Err(Problem::forbidden("tenantId does not match the token's tenant")),
            _ => Ok(()),
        }
    }
}

impl<O: Operation> FromRequestParts<Shared> for Authorized<O> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, app: &Shared) -> Result<Self, Problem> {
        let principal = authorize::<O>(app, parts.headers.get(header::AUTHORIZATION)).await?;
        Ok(Self(principal, PhantomData))
    }
}

/// Verifies a bearer token (the `Authorization` header's value) and that it allows operation
/// `O`: its scope, and a role the role policy allows, when there is one. The 403 names all
/// that is missing.
pub async fn authorize<O: Operation>(
    app: &AppState,
    authorization: Option<&HeaderValue>,
) -> Result<Principal, Problem> {
    // A header that is not even text is as bad as a bad token.
    let authorization = authorization.map(|v| v.to_str().unwrap_or("\u{0}"));
    let principal = app.auth.authenticate(authorization).await.map_err(unauthorized)?;
    let lacks_scope = !principal.has_scope(O::SCOPE);
    let lacks_role = app.auth.role_policy().filter(|policy| !policy.allows(O::ID, &principal.roles));
    let missing = match (lacks_scope, lacks_role) {
        (false, None) => return Ok(principal),
        (true, None) => format!("the token lacks the scope {}", O::SCOPE),
        (lacks_scope, Some(policy)) => {
            let allowed = policy.allowed(O::ID);
            let roles = if allowed.is_empty() {
                format!("no role may call {}", O::ID)
            } else {
                format!("{} needs one of the roles {}", O::ID, listed(allowed))
            };
            let held = if principal.roles.is_empty() {
                "no role".into()
            } else {
                format!("the roles {}", listed(&principal.roles))
            };
            let scope = if lacks_scope { format!("the token lacks the scope {}; ", O::SCOPE) } else { String::new() };
            format!("{scope}{roles}, and the token has {held}")
        }
    };
    let problem = if lacks_scope {
        Problem::new(StatusCode::FORBIDDEN, "insufficient-scope", "insufficient_scope", missing)
            .with_header(header::WWW_AUTHENTICATE, insufficient_scope_challenge(O::SCOPE))
    } else {
        Problem::new(StatusCode::FORBIDDEN, "insufficient-role", "insufficient_role", missing)
    };
    Err(problem)
}

/// Role names in order, comma-separated.
fn listed(roles: &std::collections::BTreeSet<String>) -> String {
    roles.iter().map(String::as_str).collect::<Vec<_>>().join(", ")
}

/// 401 with the RFC 6750 challenge (or 503 when the key set cannot be fetched).
pub fn unauthorized(e: AuthError) -> Problem {
    if e.status_code() != StatusCode::UNAUTHORIZED {
        return Problem::unavailable(&e);
    }
    Problem::new(StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized", e.to_string())
        .with_header(header::WWW_AUTHENTICATE, e.www_authenticate())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        display_name: String,
        nested: Nested,
    }
    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Nested {
        count: u32,
    }

    #[test]
    fn syntax_errors_are_400_and_shape_errors_422_with_the_field() {
        assert_eq!(parse_json::<Body>(b"{").unwrap_err().status, 400);
        assert_eq!(
            parse_json::<Body>(br#"{"displayName":"x","nested":{"count":1}} trailing"#).unwrap_err().status,
            400
        );
        let missing = parse_json::<Body>(br#"{"nested":{"count":1}}"#).unwrap_err();
        assert_eq!((missing.status, missing.errors[0].field.as_str()), (422, "displayName"));
        let wrong = parse_json::<Body>(br#"{"displayName":"x","nested":{"count":"many"}}"#).unwrap_err();
        assert_eq!((wrong.status, wrong.errors[0].field.as_str()), (422, "nested.count"));
        let nested_missing = parse_json::<Body>(br#"{"displayName":"x","nested":{}}"#).unwrap_err();
        assert_eq!(nested_missing.errors[0].field, "nested.count");
    }
}
