//! Credential rotation, step by step (see docs/credentials.md):
//!
//! 1. [`Commands::start_credential_rotation`] finds the pending version (one an operator staged
//!    in the vault, or one the engine generates for a secret it owns), records
//!    `CredentialRotationStarted` and requests the `VerifyCredential` run.
//! 2. The run executor calls the provider's health operation with the pending version.
//! 3. Its outcome settles the rotation: [`Commands::complete_credential_rotation`] promotes the
//!    version in the vault (pending → current, current → previous) and records
//!    `CredentialRotated`; [`Commands::fail_credential_rotation`] records
//!    `CredentialRotationFailed` and leaves the current version in use.
//! 4. After the overlap, [`Commands::retire_previous_credential_version`] drops the previous
//!    version's label and records `CredentialVersionRetired`.
//!
//! Each step is idempotent, so a redelivered event or a retried request repeats nothing.

use base64::Engine as _;
use domain::credential::{
    Credential, CredentialCommand, CredentialEvent, CredentialState, Rotation, RotationSource, StartRotation,
};
use domain::ids::stream_id;
use domain::provider::AuthModel;
use domain::secret_ref::SecretRef;
use domain::{Decider, DomainError};
use ring::rand::{SecureRandom, SystemRandom};
use serde_json::json;
use store::VaultError;

use crate::{CommandContext, CommandError, Commands};

/// The operation of the run that checks a pending credential version against the provider.
pub const VERIFY_CREDENTIAL_OPERATION: &str = "VerifyCredential";
/// The form of secrets the engine generates: Standard Webhooks' `whsec_` and base64 of 32
/// random bytes.
pub const GENERATED_SECRET_PREFIX: &str = "whsec_";
const GENERATED_SECRET_BYTES: usize = 32;

/// Whether the engine owns the secret of a credential of this auth kind, and so generates its
/// next version itself: a shared signing secret (HMAC) is ours to choose, while API keys,
/// tokens and client secrets are issued by the vendor.
pub fn is_engine_owned(auth_kind: AuthModel) -> bool {
    matches!(auth_kind, AuthModel::HmacSignature)
}

pub struct RotationStartedOutcome {
    pub credential_id: String,
    pub new_version_ref: String,
    pub verification_run_id: String,
    pub source: RotationSource,
    pub last_position: Option<u64>,
}

/// What a verification run's input names: the credential and the version it verifies.
#[derive(Debug, Clone, PartialEq)]
pub struct VerificationInput {
    pub credential_id: String,
    pub version_ref: SecretRef,
    /// Where the version came from: a generated secret is checked locally (its receiver learns
    /// it from us), any other one against the provider.
    pub source: RotationSource,
}

impl VerificationInput {
    /// Reads a `VerifyCredential` run's input.
    pub fn parse(input: &serde_json::Value) -> Result<Self, String> {
        let credential_id = input["credentialId"].as_str().ok_or("input.credentialId is missing")?;
        let version_ref = input["versionRef"].as_str().ok_or("input.versionRef is missing")?;
        let version_ref = SecretRef::parse(version_ref).map_err(|e| format!("input.versionRef: {e}"))?;
        if version_ref.version.is_none() {
            return Err("input.versionRef must name a version".into());
        }
        let source = match input.get("source") {
            None => RotationSource::OperatorStaged,
            Some(source) => serde_json::from_value(source.clone()).map_err(|e| format!("input.source: {e}"))?,
        };
        Ok(Self { credential_id: credential_id.into(), version_ref, source })
    }
}

impl Commands {
    async fn credential_state(
        &self,
        ctx: &CommandContext,
        credential_id: &str,
    ) -> Result<CredentialState, CommandError> {
        let loaded = self.load::<CredentialEvent>(&stream_id(&ctx.tenant_id, credential_id)).await?;
        Ok(Credential::fold(&loaded.events))
    }

    /// Starts rotating a credential: finds its pending version, records the rotation and
    /// requests the run that verifies the pending version before it is promoted.
    pub async fn start_credential_rotation(
        &self,
        ctx: &CommandContext,
        credential_id: &str,
        reason: &str,
        verification_run_id: &str,
    ) -> Result<RotationStartedOutcome, CommandError> {
        let stream = stream_id(&ctx.tenant_id, credential_id);
        let CredentialState::Registered { secret_ref, current_version, auth_kind, pending, started, .. } =
            self.credential_state(ctx, credential_id).await?
        else {
            return Err(DomainError::NotFound { kind: "credential", id: credential_id.into() }.into());
        };
        let retried = started.iter().any(|r| r.verification_run_id == verification_run_id);
        // Nothing is staged or generated for a request that will be refused or was done before.
        let (new_version, source) = match (&pending, retried) {
            (_, true) => (current_version + 1, RotationSource::OperatorStaged),
            (Some(p), false) => {
                return Err(DomainError::RotationInFlight {
                    credential_id: credential_id.into(),
                    pending_version: p.version,
                }
                .into());
            }
            (None, false) => self.pending_version_for(&secret_ref, current_version, auth_kind).await?,
        };
        let command = CredentialCommand::StartRotation(StartRotation {
            credential_id: credential_id.into(),
            reason: reason.into(),
            verification_run_id: verification_run_id.into(),
            new_version,
            source,
            started_at: self.now(),
        });
        let executed = self.execute::<Credential>(ctx, &stream, &command).await?;
        // The rotation this request started, now or on an earlier try with the same run id.
        let CredentialState::Registered { connections, started, .. } = executed.state else {
            return Err(DomainError::NotFound { kind: "credential", id: credential_id.into() }.into());
        };
        let Some(rotation) = started.into_iter().find(|r| r.verification_run_id == verification_run_id) else {
            return Err(DomainError::NotFound { kind: "rotation", id: verification_run_id.into() }.into());
        };
        // Requested after the rotation is recorded, so a crash in between leaves a rotation the
        // retried request (same verification run id) or the process manager reacting to
        // `CredentialRotationStarted` completes, never an orphan run.
        let connection_id = connections.first().cloned().unwrap_or_default();
        let run = self.request_verification_run(ctx, credential_id, &connection_id, &rotation).await?;
        Ok(RotationStartedOutcome {
            credential_id: credential_id.into(),
            new_version_ref: rotation.version_ref,
            verification_run_id: rotation.verification_run_id,
            source: rotation.source,
            last_position: run.or(executed.last_position),
        })
    }

    /// Requests the verification run of a started rotation; idempotent (the run id is the
    /// rotation's). The position of the request, `None` when it existed already.
    pub async fn request_verification_run(
        &self,
        ctx: &CommandContext,
        credential_id: &str,
        connection_id: &str,
        rotation: &Rotation,
    ) -> Result<Option<u64>, CommandError> {
        let input = json!({
            "credentialId": credential_id,
            "version": rotation.version,
            "versionRef": rotation.version_ref,
            "source": rotation.source,
        });
        let run = self
            .request_run(ctx, &rotation.verification_run_id, connection_id, VERIFY_CREDENTIAL_OPERATION, input)
            .await?;
        Ok(run.last_position)
    }

    /// The version to rotate to: one an operator staged (labelled pending in the vault), else,
    /// for a secret the engine owns, a new one it generates and stages.
    async fn pending_version_for(
        &self,
        secret: &SecretRef,
        current_version: u32,
        auth_kind: AuthModel,
    ) -> Result<(u32, RotationSource), CommandError> {
        let staged = |m: Option<store::SecretMetadata>| {
            m.and_then(|m| m.pending_version).filter(|pending| *pending > current_version)
        };
        if let Some(version) = staged(self.vault.metadata(secret).await?) {
            return Ok((version, RotationSource::OperatorStaged));
        }
        if !is_engine_owned(auth_kind) {
            return Err(DomainError::InvalidTransition {
                kind: "credential",
                state: format!(
                    "without a pending version ({auth_kind:?} secrets are issued by the vendor: stage the new one \
                     with `integration-engine secrets put --stage pending {secret}`)"
                ),
                command: "rotate",
            }
            .into());
        }
        let value = generate_secret()?;
        match self.vault.stage_pending(secret, value.as_bytes(), Some(0)).await {
            Ok(version) => Ok((version, RotationSource::Generated)),
            // Another request staged one at the same moment: rotate to that one (the decider
            // lets only one of the two rotations start).
            Err(VaultError::VersionConflict { .. }) => match staged(self.vault.metadata(secret).await?) {
                Some(version) => Ok((version, RotationSource::Generated)),
                None => Err(DomainError::InvalidTransition {
                    kind: "credential",
                    state: "being staged by another request".into(),
                    command: "rotate",
                }
                .into()),
            },
            Err(e) => Err(e.into()),
        }
    }

    /// The verification run succeeded: promotes the verified version in the vault (connections
    /// use it from now on), then records `CredentialRotated`. Idempotent, and safe after a crash
    /// between the two steps (promoting the current version again does nothing).
    pub async fn complete_credential_rotation(
        &self,
        ctx: &CommandContext,
        credential_id: &str,
        verification_run_id: &str,
    ) -> Result<Option<u64>, CommandError> {
        let CredentialState::Registered { secret_ref, pending, .. } = self.credential_state(ctx, credential_id).await?
        else {
            return Err(DomainError::NotFound { kind: "credential", id: credential_id.into() }.into());
        };
        if let Some(p) = pending.filter(|p| p.verification_run_id == verification_run_id) {
            match self.vault.promote(&secret_ref, p.version, None).await {
                Ok(()) => {}
                Err(VaultError::NotFound(name)) => {
                    let reason = format!("the verified version {name} is no longer in the vault");
                    return self.fail_credential_rotation(ctx, credential_id, verification_run_id, &reason).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        let command = CredentialCommand::CompleteRotation {
            credential_id: credential_id.into(),
            verification_run_id: verification_run_id.into(),
            rotated_at: self.now(),
        };
        let executed = self.execute::<Credential>(ctx, &stream_id(&ctx.tenant_id, credential_id), &command).await?;
        Ok(executed.last_position)
    }

    /// The verification run failed: records `CredentialRotationFailed` with the reason and drops
    /// the pending label, so the failed version is not picked up again. The current version
    /// stays in use.
    pub async fn fail_credential_rotation(
        &self,
        ctx: &CommandContext,
        credential_id: &str,
        verification_run_id: &str,
        reason: &str,
    ) -> Result<Option<u64>, CommandError> {
        let command = CredentialCommand::FailRotation {
            credential_id: credential_id.into(),
            verification_run_id: verification_run_id.into(),
            reason: reason.into(),
            failed_at: self.now(),
        };
        let executed = self.execute::<Credential>(ctx, &stream_id(&ctx.tenant_id, credential_id), &command).await?;
        if let CredentialState::Registered { secret_ref, started, .. } = &executed.state
            && let Some(r) = started.iter().find(|r| r.verification_run_id == verification_run_id)
        {
            self.vault.discard_pending(secret_ref, r.version).await?;
        }
        Ok(executed.last_position)
    }

    /// The overlap after a promotion is over: the previous version stops being accepted (its
    /// vault label is dropped), then `CredentialVersionRetired` is recorded. Idempotent.
    pub async fn retire_previous_credential_version(
        &self,
        ctx: &CommandContext,
        credential_id: &str,
        version: u32,
    ) -> Result<Option<u64>, CommandError> {
        let CredentialState::Registered { secret_ref, previous_version, .. } =
            self.credential_state(ctx, credential_id).await?
        else {
            return Err(DomainError::NotFound { kind: "credential", id: credential_id.into() }.into());
        };
        if previous_version == Some(version) {
            self.vault.retire_previous(&secret_ref, version).await?;
        }
        let command =
            CredentialCommand::RetirePrevious { credential_id: credential_id.into(), version, retired_at: self.now() };
        let executed = self.execute::<Credential>(ctx, &stream_id(&ctx.tenant_id, credential_id), &command).await?;
        Ok(executed.last_position)
    }
}

/// A new signing secret: `whsec_` and the base64 of 32 random bytes.
fn generate_secret() -> Result<String, CommandError> {
    let mut bytes = [0u8; GENERATED_SECRET_BYTES];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| CommandError::Vault(VaultError::Backend("the system random generator failed".into())))?;
    Ok(format!("{GENERATED_SECRET_PREFIX}{}", base64::engine::general_purpose::STANDARD.encode(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secrets_have_the_standard_webhooks_form_and_differ() {
        let (a, b) = (generate_secret().unwrap(), generate_secret().unwrap());
        assert_ne!(a, b);
        let key = a.strip_prefix(GENERATED_SECRET_PREFIX).unwrap();
        assert_eq!(base64::engine::general_purpose::STANDARD.decode(key).unwrap().len(), 32);
    }

    #[test]
    fn only_shared_signing_secrets_are_the_engines() {
        assert!(is_engine_owned(AuthModel::HmacSignature));
        for vendor_issued in
            [AuthModel::ApiKey, AuthModel::Bearer, AuthModel::OAuth2ClientCredentials, AuthModel::Basic]
        {
            assert!(!is_engine_owned(vendor_issued));
        }
    }
}
