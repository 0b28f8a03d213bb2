use thiserror::Error;

/// Why a decider rejected a command. Each variant maps to one HTTP status at the API edge.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DomainError {
    /// The aggregate already exists (a create command sent twice with different ids is not this).
    #[error("{kind} {id} already exists")]
    AlreadyExists { kind: &'static str, id: String },
    /// The command targets an aggregate that has no events yet.
    #[error("{kind} {id} does not exist")]
    NotFound { kind: &'static str, id: String },
    /// A provider key is unique within a tenant.
    #[error("a provider with key {key} is already registered in this tenant")]
    ProviderKeyTaken { key: String },
    /// A connection must name a registered provider of its tenant.
    #[error("provider {provider_id} is not registered in this tenant")]
    UnknownProvider { provider_id: String },
    /// Only one rotation of a credential may be in flight.
    #[error("credential {credential_id} is already rotating (to version {pending_version})")]
    RotationInFlight { credential_id: String, pending_version: u32 },
    /// The command does not apply in the aggregate's current state.
    #[error("cannot {command} a {kind} that is {state}")]
    InvalidTransition { kind: &'static str, state: String, command: &'static str },
    /// A value breaks a domain rule; `field` is the JSON path of the request field.
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
}

impl DomainError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid { field: field.into(), reason: reason.into() }
    }
}

/// Why stored data could not be read back as an event.
#[derive(Debug, Clone, Error, PartialEq)]
pub enum DecodeError {
    #[error("unknown event type {0}")]
    UnknownType(String),
    #[error("{event_type} v{version} is newer than this build knows (v{known})")]
    FutureVersion { event_type: String, version: u32, known: u32 },
    #[error("{event_type} v{version} does not match its schema: {reason}")]
    Malformed { event_type: String, version: u32, reason: String },
}
