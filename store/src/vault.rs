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
    /// The secret's vault belongs to another tenant.
    #[error("secret {0} is not accessible to this tenant")]
    Forbidden(String),
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

/// The version that was current before the current one, with the moment it stopped being
/// current (when the current version was stored).
///
/// This is the vault's "previous" stage: inbound webhooks accept it for a grace period after a
/// rotation, while the vendor still signs with it. When staging labels arrive (current, pending,
/// previous), `previous` is the version labelled previous and `superseded_at` the moment the
/// label moved to it; a pending version is not returned here.
#[derive(Clone, PartialEq, Eq)]
pub struct PreviousSecret {
    pub value: SecretValue,
    pub superseded_at: chrono::DateTime<chrono::Utc>,
}

impl std::fmt::Debug for PreviousSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreviousSecret")
            .field("value", &self.value)
            .field("superseded_at", &self.superseded_at)
            .finish()
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

    /// The previous version of an unversioned ref, see [`PreviousSecret`]; `None` when the
    /// secret has a single version, and for a pinned ref (pinned refs do not rotate). Stores
    /// that keep no history answer `None`, so nothing but the current version verifies.
    async fn previous(&self, _secret: &SecretRef) -> Result<Option<PreviousSecret>, VaultError> {
        Ok(None)
    }

    /// The tenant a vault (the `VAULT` of `kv://VAULT/NAME`) belongs to; `None` for a vault no
    /// tenant has claimed (a single-tenant deployment's shared vault).
    async fn owner(&self, vault: &str) -> Result<Option<String>, VaultError>;

    /// Makes `vault` the tenant's; refused with [`VaultError::Forbidden`] when another tenant
    /// owns it. Claiming one's own vault again is a no-op.
    async fn claim(&self, vault: &str, tenant_id: &str) -> Result<(), VaultError>;
}

/// Refuses a secret whose vault another tenant owns. Every place that resolves a `kv://` ref on
/// a tenant's behalf (connections, subscriptions, inbound webhooks, runs) goes through this, so
/// a tenant can never name, and so use, another tenant's secret.
pub async fn check_access(store: &dyn SecretStore, secret: &SecretRef, tenant_id: &str) -> Result<(), VaultError> {
    match store.owner(&secret.vault).await? {
        Some(owner) if owner != tenant_id => Err(VaultError::Forbidden(secret.unversioned().to_string())),
        _ => Ok(()),
    }
}
