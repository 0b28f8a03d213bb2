//! RFC 9457 problem documents: every error the API gives is one, with the request's trace id.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use commands::CommandError;
use domain::DomainError;
use serde::Serialize;
use store::{StoreError, VaultError};

use crate::trace::current_trace_id;

pub const PROBLEM_JSON: &str = "application/problem+json";

/// One invalid field: its JSON path in the request body and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

/// An RFC 9457 problem document.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    pub trace_id: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    /// Extra response headers (`WWW-Authenticate`, `Allow`), not part of the body.
    #[serde(skip)]
    #[schemars(skip)]
    pub headers: Vec<(header::HeaderName, String)>,
}

impl Problem {
    /// A problem of the given status; `slug` names its type under `/problems/`.
    pub fn new(status: StatusCode, slug: &str, title: &str, detail: impl Into<String>) -> Self {
        Self {
            kind: format!("https://integration-engine.dev/problems/{slug}"),
            title: title.into(),
            status: status.as_u16(),
            detail: detail.into(),
            trace_id: current_trace_id(),
            errors: Vec::new(),
            headers: Vec::new(),
        }
    }

    pub fn with_header(mut self, name: header::HeaderName, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad-request", "Bad request", detail)
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", "Not found", detail)
    }

    /// 404 for a field that names something the tenant does not have (a provider, a vault):
    /// stored state, not the request's shape, decides it.
    pub fn unknown_reference(field: impl Into<String>, message: impl Into<String>) -> Self {
        let error = FieldError { field: field.into(), message: message.into() };
        let mut p = Self::not_found(format!("{}: {}", error.field, error.message));
        p.errors = vec![error];
        p
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden", detail)
    }

    /// 408: the request body did not arrive within the body read timeout (`api::server`).
    pub fn body_timed_out() -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "request-timeout",
            "Request timeout",
            "the request body did not arrive in time",
        )
        .with_header(header::CONNECTION, "close")
    }

    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", "Conflict", detail)
    }

    /// 422 with field-level errors.
    pub fn invalid(errors: Vec<FieldError>) -> Self {
        let detail = errors.iter().map(|e| format!("{}: {}", e.field, e.message)).collect::<Vec<_>>().join("; ");
        let mut p = Self::new(StatusCode::UNPROCESSABLE_ENTITY, "validation", "Invalid request", detail);
        p.errors = errors;
        p
    }

    pub fn invalid_field(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::invalid(vec![FieldError { field: field.into(), message: message.into() }])
    }

    /// A failure that is ours, not the caller's: the cause is logged, the caller sees no detail.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(%cause, "internal error");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "Internal error", "the request could not be completed")
    }

    pub fn unavailable(cause: &dyn std::fmt::Display) -> Self {
        tracing::warn!(%cause, "dependency unavailable");
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "Service unavailable", "try again shortly")
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        for (name, value) in self.headers {
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.insert(name, v);
            }
        }
        response
    }
}

impl From<DomainError> for Problem {
    fn from(e: DomainError) -> Self {
        match &e {
            DomainError::AlreadyExists { .. }
            | DomainError::ProviderKeyTaken { .. }
            | DomainError::RotationInFlight { .. }
            | DomainError::InvalidTransition { .. } => Problem::conflict(e.to_string()),
            DomainError::NotFound { .. } => Problem::not_found(e.to_string()),
            DomainError::UnknownProvider { .. } => Problem::unknown_reference("providerId", e.to_string()),
            DomainError::Invalid { field, reason } => Problem::invalid_field(field.clone(), reason.clone()),
        }
    }
}

impl From<StoreError> for Problem {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(_) => Problem::unavailable(&e),
            StoreError::WrongExpectedVersion { .. } => Problem::conflict("the resource changed concurrently; retry"),
            StoreError::Backend(_) => Problem::internal(&e),
        }
    }
}

impl From<VaultError> for Problem {
    fn from(e: VaultError) -> Self {
        match e {
            // A credential registered before its vault had an owner: rotating it waits for an
            // operator to claim the vault (`secrets claim`).
            VaultError::NotTenants(_) => Problem::conflict(e.to_string()),
            e => Problem::internal(&e),
        }
    }
}

impl From<CommandError> for Problem {
    fn from(e: CommandError) -> Self {
        match e {
            CommandError::Rejected(d) => d.into(),
            CommandError::Contention(_) => Problem::conflict("the resource is being changed concurrently; retry"),
            CommandError::Store(s) => s.into(),
            CommandError::Vault(v) => v.into(),
            CommandError::Corrupt { .. } => Problem::internal(&e),
        }
    }
}

impl From<projections::ProjectionError> for Problem {
    fn from(e: projections::ProjectionError) -> Self {
        Problem::internal(&e)
    }
}
