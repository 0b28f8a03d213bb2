//! What every API client's call shares: the credential it sends, why a call failed (and whether
//! a retry may help), and reading a vendor's failure into that. `operations` and the API
//! clients (`github_api`, `twilio_api`, `http_call`, `oauth2_client_credentials`) depend on this
//! module, never on each other for it.

use std::fmt;

use thiserror::Error;

/// A credential value from the vault. `Debug` never prints it.
#[derive(Clone)]
pub struct Credential(Vec<u8>);

impl Credential {
    pub fn new(value: Vec<u8>) -> Self {
        Self(value)
    }

    pub(crate) fn expose(&self) -> &[u8] {
        &self.0
    }

    /// The value, to be written to the vault (a credential the provider issued) and nowhere else.
    pub fn value_for_vault(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Credential(<redacted>)")
    }
}

/// Why a call failed.
#[derive(Debug, Error, PartialEq)]
pub enum CallError {
    /// May succeed later (timeouts, 5xx, 429, connection refused): the run retries.
    #[error("{0}")]
    Retryable(String),
    /// Fails the same way every time (4xx, bad credentials, refused by egress policy).
    #[error("{0}")]
    Permanent(String),
}

impl CallError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Retryable(_))
    }

    /// The same error with every spelling of the call's secrets masked in its text.
    pub fn scrubbed(self, redactor: &crate::redact::Redactor) -> Self {
        match self {
            Self::Retryable(text) => Self::Retryable(redactor.scrub(&text).into_owned()),
            Self::Permanent(text) => Self::Permanent(redactor.scrub(&text).into_owned()),
        }
    }
}

/// Classifies a transport error: nothing reached the provider, or its answer never came.
pub(crate) fn transport_error(error: &reqwest::Error) -> CallError {
    // The chain says why (connection refused, refused by egress policy, ...); the URL holds no secret.
    let mut message = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    if message.contains("egress policy") { CallError::Permanent(message) } else { CallError::Retryable(message) }
}

/// Classifies an HTTP status that is not a success.
pub(crate) fn status_error(status: reqwest::StatusCode, detail: &str) -> CallError {
    let message = format!("{status}: {detail}");
    if status.is_server_error() || matches!(status.as_u16(), 408 | 425 | 429) {
        CallError::Retryable(message)
    } else {
        CallError::Permanent(message)
    }
}

/// The beginning of a response body, for error messages.
pub(crate) fn excerpt(body: &[u8]) -> String {
    const MAX: usize = 512;
    let text = String::from_utf8_lossy(&body[..body.len().min(MAX)]).into_owned();
    if body.len() > MAX { format!("{text}...") } else { text }
}

/// `base_url` with `segments` appended as path segments (each percent-encoded).
pub(crate) fn endpoint(base_url: &reqwest::Url, segments: &[&str]) -> Result<reqwest::Url, CallError> {
    let mut url = base_url.clone();
    url.path_segments_mut()
        .map_err(|()| CallError::Permanent(format!("provider baseUrl {base_url} cannot have a path")))?
        .pop_if_empty()
        .extend(segments);
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_redacted_in_debug() {
        assert_eq!(format!("{:?}", Credential::new(b"ghp_secret".to_vec())), "Credential(<redacted>)");
    }

    #[test]
    fn server_errors_and_throttling_are_retryable_client_errors_are_not() {
        assert!(status_error(reqwest::StatusCode::BAD_GATEWAY, "").is_retryable());
        assert!(status_error(reqwest::StatusCode::TOO_MANY_REQUESTS, "").is_retryable());
        assert!(!status_error(reqwest::StatusCode::UNPROCESSABLE_ENTITY, "").is_retryable());
        assert!(!status_error(reqwest::StatusCode::UNAUTHORIZED, "").is_retryable());
    }
}
