use std::sync::Arc;

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
    /// The secret is not in a vault of the tenant asking (another tenant's vault, a vault no one
    /// claimed, or a shared vault asked for a use only a tenant's own secrets serve). One answer
    /// for all of them, so that it does not tell whether another tenant's vault exists.
    #[error("{0} is not in a vault of this tenant")]
    NotTenants(String),
    /// The vault belongs to another owner than the one claiming it (operators only: `secrets`).
    #[error("vault {0} belongs to another owner")]
    ClaimedByAnother(String),
    #[error("vault backend: {0}")]
    Backend(String),
}

impl From<rusqlite::Error> for VaultError {
    fn from(error: rusqlite::Error) -> Self {
        Self::Backend(error.to_string())
    }
}

/// A blocking task that read the vault failed (it panicked, or the runtime is shutting down).
impl From<tokio::task::JoinError> for VaultError {
    fn from(error: tokio::task::JoinError) -> Self {
        Self::Backend(format!("vault task failed: {error}"))
    }
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

/// The version labelled `previous`, with the moment the label moved to it (when it stopped
/// being current).
///
/// Inbound webhooks accept it for a grace period after a rotation, while the vendor still signs
/// with it; once retired it has no label and is not returned. A pending version never is.
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
    /// The version labelled `current`: what an unversioned ref resolves to.
    pub current_version: u32,
    /// How many versions the secret has (labelled or not).
    pub versions: u32,
    /// The version labelled `pending`: staged for a rotation, not used until promoted.
    pub pending_version: Option<u32>,
    /// The version labelled `previous`: current before the last promotion, until retired.
    pub previous_version: Option<u32>,
}

/// The staging labels of a secret's versions, after AWS Secrets Manager's rotation model: each
/// label is on at most one version; a version may carry none (an old, retired one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stage {
    Current,
    Pending,
    Previous,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Current => "current",
            Self::Pending => "pending",
            Self::Previous => "previous",
        }
    }
}

/// Metadata of one version: never its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionMetadata {
    pub version: u32,
    /// The id of the master key the version is encrypted under.
    pub key_id: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub stages: Vec<Stage>,
}

/// Versioned secrets addressed by `kv://VAULT/NAME[?version=N]`; versions are immutable and
/// numbered from 1; values are encrypted at rest. Staging labels ([`Stage`]) say which version
/// is `current` (what an unversioned ref reads), which is `pending` (staged for a rotation) and
/// which is `previous` (still accepted for an overlap after a promotion).
#[async_trait]
pub trait SecretStore: Send + Sync + 'static {
    /// Stores a new version (the ref's version is ignored), labels it `current` (the old current
    /// becomes `previous`) and returns its number. With `expected_current`, the write happens
    /// only if the current version is that one (0: none).
    ///
    /// A pending label is dropped: the staged version is older than the new current one, so it
    /// can never be promoted ([`Self::promote`] refuses to roll back), and a rotation verifying
    /// it fails when it finishes instead of undoing this write.
    async fn put(&self, secret: &SecretRef, value: &[u8], expected_current: Option<u32>) -> Result<u32, VaultError>;

    /// Stores a new version labelled `pending` (moving the label from an earlier pending version)
    /// without changing `current`. With `expected_pending`, the write happens only if the pending
    /// version is that one (0: none), so two rotations cannot both stage one.
    async fn stage_pending(
        &self,
        secret: &SecretRef,
        value: &[u8],
        expected_pending: Option<u32>,
    ) -> Result<u32, VaultError>;

    /// Moves `current` to `version` (which must exist), the old current to `previous`, and drops
    /// a pending label at or below `version`. Idempotent: promoting the current version again
    /// does nothing. Never rolls back: a `version` older than current is refused with a
    /// [`VaultError::VersionConflict`] (`expected` the version, `actual` the current one). With
    /// `expected_current`, refused with a conflict when the current version is neither that one
    /// nor `version` (someone changed the secret meanwhile).
    async fn promote(&self, secret: &SecretRef, version: u32, expected_current: Option<u32>) -> Result<(), VaultError>;

    /// Removes the `pending` label when it is on `version` (its verification failed, so no later
    /// rotation picks it up again); `false` when it was not.
    async fn discard_pending(&self, secret: &SecretRef, version: u32) -> Result<bool, VaultError>;

    /// Removes the `previous` label when it is on `version` (the overlap is over); `false` when
    /// it was not (already retired, or moved by a later promotion).
    async fn retire_previous(&self, secret: &SecretRef, version: u32) -> Result<bool, VaultError>;

    /// Every version's metadata, oldest first; empty for an unknown secret.
    async fn versions(&self, secret: &SecretRef) -> Result<Vec<VersionMetadata>, VaultError>;

    /// The pinned version, or the current one for an unversioned ref.
    async fn get(&self, secret: &SecretRef) -> Result<SecretValue, VaultError>;

    /// Metadata of one secret, `None` when it has no version.
    async fn metadata(&self, secret: &SecretRef) -> Result<Option<SecretMetadata>, VaultError>;

    /// Metadata of every secret, ordered by vault and name.
    async fn list(&self) -> Result<Vec<SecretMetadata>, VaultError>;

    /// The previous version of an unversioned ref, see [`PreviousSecret`]; `None` when no
    /// version is labelled previous, and for a pinned ref (pinned refs do not rotate). Stores
    /// that keep no history answer `None`, so nothing but the current version verifies.
    async fn previous(&self, _secret: &SecretRef) -> Result<Option<PreviousSecret>, VaultError> {
        Ok(None)
    }

    /// Who a vault (the `VAULT` of `kv://VAULT/NAME`) belongs to; `None` for a vault no one
    /// has claimed, whose secrets no tenant can use.
    async fn owner(&self, vault: &str) -> Result<Option<VaultOwner>, VaultError>;

    /// Gives `vault` to `owner`; refused with [`VaultError::ClaimedByAnother`] when it belongs
    /// to someone else. Claiming it again for its owner is a no-op.
    async fn claim(&self, vault: &str, owner: &VaultOwner) -> Result<(), VaultError>;
}

/// Who a vault belongs to: every secret is in one tenant's vault or in a shared one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VaultOwner {
    Tenant(String),
    /// An operator's vault that every tenant may verify inbound deliveries with, and that no
    /// tenant can have sent anywhere: neither the secret nor anything derived from it leaves
    /// the engine (see [`SecretUse`]).
    Shared,
}

/// What a tenant wants a secret for, which decides the vaults it may come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretUse {
    /// Sent to a host, or signing what is sent to one (a connection's credential, a
    /// subscription's signing secret, a key issuer's credential): hosts are the tenant's to
    /// choose, so only the tenant's own vaults.
    Send,
    /// Checking signatures of inbound deliveries, which never lets the value out: the tenant's
    /// vaults or a shared one.
    Verify,
}

/// The engine's way into the vault: a secret is read or changed only on a tenant's behalf,
/// through [`TenantVault`], which checks that the secret is the tenant's to use. Operators'
/// tools (`secrets`) use the [`SecretStore`] itself.
#[derive(Clone)]
pub struct Vaults {
    store: Arc<dyn SecretStore>,
}

impl Vaults {
    pub fn new(store: Arc<dyn SecretStore>) -> Self {
        Self { store }
    }

    /// The vault as `tenant_id` may use it.
    pub fn of<'a>(&'a self, tenant_id: &'a str) -> TenantVault<'a> {
        TenantVault { store: self.store.as_ref(), tenant_id }
    }
}

/// One tenant's view of the vault: every call first checks that the secret is in a vault the
/// tenant may use it from, and otherwise answers [`VaultError::NotTenants`], whether the vault
/// is another tenant's, shared, or unknown.
pub struct TenantVault<'a> {
    store: &'a dyn SecretStore,
    tenant_id: &'a str,
}

impl TenantVault<'_> {
    /// Refuses `secret` for `usage` unless its vault is the tenant's (or shared, to verify).
    pub async fn check(&self, secret: &SecretRef, usage: SecretUse) -> Result<(), VaultError> {
        match self.store.owner(&secret.vault).await? {
            Some(VaultOwner::Tenant(owner)) if owner == self.tenant_id => Ok(()),
            Some(VaultOwner::Shared) if usage == SecretUse::Verify => Ok(()),
            _ => Err(VaultError::NotTenants(secret.unversioned().to_string())),
        }
    }

    /// The pinned version, or the current one, of one of the tenant's own secrets.
    pub async fn get(&self, secret: &SecretRef) -> Result<SecretValue, VaultError> {
        self.check(secret, SecretUse::Send).await?;
        self.store.get(secret).await
    }

    /// See [`SecretStore::metadata`].
    pub async fn metadata(&self, secret: &SecretRef) -> Result<Option<SecretMetadata>, VaultError> {
        self.check(secret, SecretUse::Send).await?;
        self.store.metadata(secret).await
    }

    /// See [`SecretStore::versions`].
    pub async fn versions(&self, secret: &SecretRef) -> Result<Vec<VersionMetadata>, VaultError> {
        self.check(secret, SecretUse::Send).await?;
        self.store.versions(secret).await
    }

    /// See [`SecretStore::stage_pending`].
    pub async fn stage_pending(
        &self,
        secret: &SecretRef,
        value: &[u8],
        expected_pending: Option<u32>,
    ) -> Result<u32, VaultError> {
        self.check(secret, SecretUse::Send).await?;
        self.store.stage_pending(secret, value, expected_pending).await
    }

    /// See [`SecretStore::promote`].
    pub async fn promote(
        &self,
        secret: &SecretRef,
        version: u32,
        expected_current: Option<u32>,
    ) -> Result<(), VaultError> {
        self.check(secret, SecretUse::Send).await?;
        self.store.promote(secret, version, expected_current).await
    }

    /// See [`SecretStore::discard_pending`].
    pub async fn discard_pending(&self, secret: &SecretRef, version: u32) -> Result<bool, VaultError> {
        self.check(secret, SecretUse::Send).await?;
        self.store.discard_pending(secret, version).await
    }

    /// See [`SecretStore::retire_previous`].
    pub async fn retire_previous(&self, secret: &SecretRef, version: u32) -> Result<bool, VaultError> {
        self.check(secret, SecretUse::Send).await?;
        self.store.retire_previous(secret, version).await
    }

    /// The values that verify the tenant's inbound deliveries signed with `secret` at `now`:
    /// the current version, then, while a rotation is less than `grace` old, the version it
    /// replaced, so deliveries the vendor signed before it switched (and their retries) still
    /// pass. A pinned ref never rotates. A shared vault's secrets verify too.
    pub async fn verifying_values(
        &self,
        secret: &SecretRef,
        now: chrono::DateTime<chrono::Utc>,
        grace: std::time::Duration,
    ) -> Result<Vec<Vec<u8>>, VaultError> {
        self.check(secret, SecretUse::Verify).await?;
        self.current_and_recent(secret, now, grace).await
    }

    /// [`Self::verifying_values`] of one of the tenant's own secrets, for signing what the
    /// engine sends (an outbound webhook carries a signature by each during an overlap).
    pub async fn signing_values(
        &self,
        secret: &SecretRef,
        now: chrono::DateTime<chrono::Utc>,
        grace: std::time::Duration,
    ) -> Result<Vec<Vec<u8>>, VaultError> {
        self.check(secret, SecretUse::Send).await?;
        self.current_and_recent(secret, now, grace).await
    }

    async fn current_and_recent(
        &self,
        secret: &SecretRef,
        now: chrono::DateTime<chrono::Utc>,
        grace: std::time::Duration,
    ) -> Result<Vec<Vec<u8>>, VaultError> {
        let mut values = vec![self.store.get(secret).await?.value];
        let grace = chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::zero());
        if let Some(previous) = self.store.previous(secret).await?
            && now - previous.superseded_at <= grace
        {
            values.push(previous.value.value);
        }
        Ok(values)
    }
}
