use thiserror::Error;

/// Why an inbound signature was refused. Callers answer 401 and store nothing.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SignatureError {
    #[error("the signature header is missing")]
    Missing,
    #[error("the signature header is malformed: {0}")]
    Malformed(&'static str),
    #[error("the signature does not match the body")]
    Mismatch,
}
