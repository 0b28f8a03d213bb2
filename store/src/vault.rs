use async_trait::async_trait;
use domain::secret_ref::SecretRef;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum VaultError {
    #[error("secret {0} not found")]
    NotFound(String),
    /// A check-and-set write found another version than the one expected.
    #[error("secret {secret} is at version {actual}, expected {expected}")]
    VersionConflict { secret: String, expected: u32, actual: u32 },
    /// The master key cannot decrypt this version (wrong key, or the data was altered).
    #[error("secret {0} cannot be decrypted with the configured master key")]
    Undecryptable(String),
    #[error("vault backend: {0}")]
    Backend(String),
}

/// One version of a secret. `Debug` does not print the value.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue {
    pub version: u32,
    pub value: Vec<u8>,
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretValue").field("version", &self.version).field("value", &"<redacted>").finish()
    }
}

/// Metadata of a secret, never its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretMetadata {
    pub secret: SecretRef,
    pub current_version: u32,
    pub versions: u32,
}

/// Versioned secrets addressed by `kv://VAULT/NAME[?version=N]`; versions are immutable and
/// numbered from 1; values are encrypted at rest.
#[async_trait]
pub trait SecretStore: Send + Sync + 'static {
    /// Stores a new version (the ref's version is ignored) and returns its number. With
    /// `expected_current`, the write happens only if the current version is that one (0: none).
    async fn put(&self, secret: &SecretRef, value: &[u8], expected_current: Option<u32>) -> Result<u32, VaultError>;

    /// The pinned version, or the current one for an unversioned ref.
    async fn get(&self, secret: &SecretRef) -> Result<SecretValue, VaultError>;

    /// Metadata of one secret, `None` when it has no version.
    async fn metadata(&self, secret: &SecretRef) -> Result<Option<SecretMetadata>, VaultError>;

    /// Metadata of every secret, ordered by vault and name.
    async fn list(&self) -> Result<Vec<SecretMetadata>, VaultError>;
}
