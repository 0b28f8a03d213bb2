//! Credential rotation, step by step (see docs/credentials.md):
//!
//! 1. [`Commands::start_credential_rotation`] finds the pending version (one an operator staged
//!    in the vault, one the engine generates for a secret it owns, or, when the connection names
//!    a `keyIssuerCredentialRef`, the next version number reserved for a credential the
//!    provider's API will issue), records `CredentialRotationStarted` (the intent) and requests
//!    the `VerifyCredential` run.
//! 2. The run executor (for a provider-issued version, after having the provider issue it and
//!    staging it in the vault) calls the provider's health operation with the pending version;
//!    a generated version, or any version of a signing secret only webhook subscriptions use,
//!    is checked locally (`CheckSigningSecret`).
//! 3. Its outcome settles the rotation: [`Commands::complete_credential_rotation`] promotes the
//!    version in the vault (pending → current, current → previous) and records
//!    `CredentialRotated`; [`Commands::fail_credential_rotation`] records
//!    `CredentialRotationFailed` and leaves the current version in use.
//! 4. After the overlap, [`Commands::retire_previous_credential_version`] drops the previous
//!    version's label and records `CredentialVersionRetired`.
//! 5. Where the provider issues credentials, a `RevokeCredential` run
//!    ([`Commands::request_revocation_run`]) revokes at the provider a retired version, or the
//!    credential issued for a rotation that failed.
//!
//! Each step is idempotent, so a redelivered event or a retried request repeats nothing.

use std::sync::Arc;

use base64::Engine as _;
use domain::connection::ConnectionEvent;
use domain::credential::{
    Credential, CredentialCommand, CredentialState, KEY_ISSUER_CREDENTIAL_REF, Rotation, RotationSource, StartRotation,
    credential_id, vault_qualified_credential_id,
};
use domain::ids::stream_id;
use domain::provider::AuthModel;
use domain::secret_ref::SecretRef;
use domain::{Decider, DomainError};
use ring::rand::{SecureRandom, SystemRandom};
use serde_json::json;
use store::VaultError;

use crate::{CommandContext, CommandError, Commands, Folded};

/// The operation of the run that checks a pending credential version against the provider.
pub const VERIFY_CREDENTIAL_OPERATION: &str = "VerifyCredential";
/// The operation of the run that revokes a credential at the provider that issued it.
pub const REVOKE_CREDENTIAL_OPERATION: &str = "RevokeCredential";
/// The longest label a provider keeps for an issued credential (Twilio's `FriendlyName`).
const MAX_ISSUANCE_LABEL: usize = 64;

/// The label of the credential a rotation has the provider issue: unique per rotation (it
/// starts with the verification run's id) and the same on every attempt, so an attempt finds
/// what an earlier one that died left at the provider.
pub fn issuance_label(credential_id: &str, version: u32, verification_run_id: &str) -> String {
    format!("{verification_run_id} {credential_id} v{version}").chars().take(MAX_ISSUANCE_LABEL).collect()
}

/// The id of the run revoking `what` (a version ref or an issuance label) of a credential: the
/// same for every redelivery, so each revocation is requested once.
pub fn revocation_run_id(tenant_id: &str, credential_id: &str, what: &str) -> String {
    let digest = ring::digest::digest(
        &ring::digest::SHA256,
        format!("revoke-credential\n{tenant_id}\n{credential_id}\n{what}").as_bytes(),
    );
    format!("{}-{}", domain::ids::RUN, hex::encode(&digest.as_ref()[..16]))
}
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
    /// For a provider-issued version: the label the provider keeps on the credential it issues.
    pub issuance_label: Option<String>,
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
        let issuance_label = input["issuanceLabel"].as_str().map(str::to_owned);
        if source == RotationSource::ProviderIssued && issuance_label.is_none() {
            return Err("input.issuanceLabel is missing for a provider-issued version".into());
        }
        Ok(Self { credential_id: credential_id.into(), version_ref, source, issuance_label })
    }
}

/// What a `RevokeCredential` run revokes at the provider: a version of the credential (its
/// value names the provider's key) or every credential carrying an issuance label.
#[derive(Debug, Clone, PartialEq)]
pub enum Revocation {
    /// A version that was retired (or displaced): no longer accepted anywhere.
    Version(SecretRef),
    /// What the provider issued for a rotation that failed (found by its label, since the
    /// version number may have been reserved again by a later rotation).
    Issuance(String),
}

/// A `RevokeCredential` run's input.
#[derive(Debug, Clone, PartialEq)]
pub struct RevocationInput {
    pub credential_id: String,
    pub revocation: Revocation,
}

impl RevocationInput {
    pub fn to_json(&self) -> serde_json::Value {
        match &self.revocation {
            Revocation::Version(version) => {
                json!({"credentialId": self.credential_id, "versionRef": version.to_string()})
            }
            Revocation::Issuance(label) => json!({"credentialId": self.credential_id, "issuanceLabel": label}),
        }
    }

    /// Reads a `RevokeCredential` run's input.
    pub fn parse(input: &serde_json::Value) -> Result<Self, String> {
        let credential_id = input["credentialId"].as_str().ok_or("input.credentialId is missing")?.to_owned();
        let revocation = match (input["versionRef"].as_str(), input["issuanceLabel"].as_str()) {
            (Some(version), None) => {
                let version = SecretRef::parse(version).map_err(|e| format!("input.versionRef: {e}"))?;
                if version.version.is_none() {
                    return Err("input.versionRef must name a version".into());
                }
                Revocation::Version(version)
            }
            (None, Some(label)) => Revocation::Issuance(label.to_owned()),
            _ => return Err("input must name either versionRef or issuanceLabel".into()),
        };
        Ok(Self { credential_id, revocation })
    }
}

/// A secret's credential in a tenant: its id and its state when read.
pub(crate) struct CredentialOf {
    pub(crate) id: String,
    pub(crate) folded: Arc<Folded<CredentialState>>,
}

impl Commands {
    /// Refuses, before anything is stored, a link the credential aggregate would refuse: a
    /// connection or subscription is appended first and linked second (two streams), so a link
    /// refused only then would leave it stored behind a 422.
    pub(crate) async fn check_credential_link(
        &self,
        ctx: &CommandContext,
        secret: &SecretRef,
        link: impl FnOnce(&str) -> CredentialCommand,
    ) -> Result<CredentialOf, CommandError> {
        let credential = self.credential_of(ctx, secret).await?;
        Credential::decide(&link(&credential.id), &credential.folded.state)?;
        Ok(credential)
    }

    /// Which credential `secret` is in the context's tenant, as it stands: the usual
    /// [`credential_id`], unless that is the credential of the same name in another of the
    /// tenant's vaults; then [`vault_qualified_credential_id`]. A credential keeps its id: the
    /// first vault to register a name keeps the usual one.
    pub(crate) async fn credential_of(
        &self,
        ctx: &CommandContext,
        secret: &SecretRef,
    ) -> Result<CredentialOf, CommandError> {
        let usual = credential_id(secret);
        let folded = self.load_state::<Credential>(&stream_id(&ctx.tenant_id, &usual)).await?;
        match &folded.state {
            CredentialState::Registered { secret_ref, .. } if secret_ref.vault != secret.vault => {
                let id = vault_qualified_credential_id(secret);
                let folded = self.load_state::<Credential>(&stream_id(&ctx.tenant_id, &id)).await?;
                Ok(CredentialOf { id, folded })
            }
            _ => Ok(CredentialOf { id: usual, folded }),
        }
    }

    async fn credential_state(
        &self,
        ctx: &CommandContext,
        credential_id: &str,
    ) -> Result<CredentialState, CommandError> {
        Ok(self.load_state::<Credential>(&stream_id(&ctx.tenant_id, credential_id)).await?.state.clone())
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
        let CredentialState::Registered {
            secret_ref,
            current_version,
            auth_kind,
            pending,
            started,
            first_connection,
            ..
        } = self.credential_state(ctx, credential_id).await?
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
            (None, false) => {
                let issued_by_provider = self.names_key_issuer(ctx, first_connection.as_ref()).await?;
                self.pending_version_for(ctx, &secret_ref, current_version, auth_kind, issued_by_provider).await?
            }
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
        let target = executed.state.verification_target().unwrap_or_default().to_owned();
        let CredentialState::Registered { started, .. } = executed.state else {
            return Err(DomainError::NotFound { kind: "credential", id: credential_id.into() }.into());
        };
        let Some(rotation) = started.into_iter().find(|r| r.verification_run_id == verification_run_id) else {
            return Err(DomainError::NotFound { kind: "rotation", id: verification_run_id.into() }.into());
        };
        // Requested after the rotation is recorded, so a crash in between leaves a rotation the
        // retried request (same verification run id) or the process manager reacting to
        // `CredentialRotationStarted` completes, never an orphan run.
        let run = self.request_verification_run(ctx, credential_id, &target, &rotation).await?;
        Ok(RotationStartedOutcome {
            credential_id: credential_id.into(),
            new_version_ref: rotation.version_ref,
            verification_run_id: rotation.verification_run_id,
            source: rotation.source,
            last_position: run.or(executed.last_position),
        })
    }

    /// Requests the verification run of a started rotation; idempotent (the run id is the
    /// rotation's). `target` is the run's `connectionId`: the credential's
    /// [`CredentialState::verification_target`], a connection or, for a signing secret only
    /// subscriptions use, a subscription. The position of the request, `None` when it existed
    /// already.
    pub async fn request_verification_run(
        &self,
        ctx: &CommandContext,
        credential_id: &str,
        target: &str,
        rotation: &Rotation,
    ) -> Result<Option<u64>, CommandError> {
        let mut input = json!({
            "credentialId": credential_id,
            "version": rotation.version,
            "versionRef": rotation.version_ref,
            "source": rotation.source,
        });
        if rotation.source == RotationSource::ProviderIssued {
            input["issuanceLabel"] =
                json!(issuance_label(credential_id, rotation.version, &rotation.verification_run_id));
        }
        let run =
            self.request_run(ctx, &rotation.verification_run_id, target, VERIFY_CREDENTIAL_OPERATION, input).await?;
        Ok(run.last_position)
    }

    /// Requests the run that revokes `revocation` at the provider; idempotent (the run id is
    /// derived from what it revokes). The position of the request, `None` when it existed.
    pub async fn request_revocation_run(
        &self,
        ctx: &CommandContext,
        connection_id: &str,
        input: &RevocationInput,
    ) -> Result<Option<u64>, CommandError> {
        let what = match &input.revocation {
            Revocation::Version(version) => version.to_string(),
            Revocation::Issuance(label) => label.clone(),
        };
        let run_id = revocation_run_id(&ctx.tenant_id, &input.credential_id, &what);
        let run = self.request_run(ctx, &run_id, connection_id, REVOKE_CREDENTIAL_OPERATION, input.to_json()).await?;
        Ok(run.last_position)
    }

    /// Whether the connection names a `keyIssuerCredentialRef`, so that the provider's API issues
    /// its credential's next versions.
    pub async fn names_key_issuer(
        &self,
        ctx: &CommandContext,
        connection_id: Option<&String>,
    ) -> Result<bool, CommandError> {
        let Some(connection_id) = connection_id else { return Ok(false) };
        let first = self.load_first::<ConnectionEvent>(&stream_id(&ctx.tenant_id, connection_id)).await?;
        Ok(matches!(first,
            Some(ConnectionEvent::ConnectionEstablished(c)) if c.configuration.contains_key(KEY_ISSUER_CREDENTIAL_REF)))
    }

    /// The version to rotate to: one an operator staged (labelled pending in the vault), else,
    /// for a secret the engine owns, a new one it generates and stages, else, when the provider
    /// issues the credential, the next version number (the verification run has the provider
    /// issue the credential and stores it as that version).
    async fn pending_version_for(
        &self,
        ctx: &CommandContext,
        secret: &SecretRef,
        current_version: u32,
        auth_kind: AuthModel,
        issued_by_provider: bool,
    ) -> Result<(u32, RotationSource), CommandError> {
        let staged = |m: Option<store::SecretMetadata>| {
            m.and_then(|m| m.pending_version).filter(|pending| *pending > current_version)
        };
        let vault = self.vault.of(&ctx.tenant_id);
        let metadata = vault.metadata(secret).await?;
        if let Some(version) = staged(metadata.clone()) {
            return Ok((version, RotationSource::OperatorStaged));
        }
        if !is_engine_owned(auth_kind) && issued_by_provider {
            // Versions are numbered consecutively: the next one is reserved by this rotation
            // (the run refuses to store the issued credential under any other number).
            let next = metadata.map_or(current_version, |m| m.versions.max(current_version)) + 1;
            return Ok((next, RotationSource::ProviderIssued));
        }
        if !is_engine_owned(auth_kind) {
            return Err(DomainError::InvalidTransition {
                kind: "credential",
                state: format!(
                    "without a pending version ({auth_kind:?} secrets are issued by the vendor: stage the new one \
                     with `integration-engine secrets put --stage pending {secret}`, or name the connection's \
                     configuration.{KEY_ISSUER_CREDENTIAL_REF} where the provider's API issues them)"
                ),
                command: "rotate",
            }
            .into());
        }
        let value = generate_secret()?;
        match vault.stage_pending(secret, value.as_bytes(), Some(0)).await {
            Ok(version) => Ok((version, RotationSource::Generated)),
            // Another request staged one at the same moment: rotate to that one (the decider
            // lets only one of the two rotations start).
            Err(VaultError::VersionConflict { .. }) => match staged(vault.metadata(secret).await?) {
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
    /// between the two steps (promoting the current version again does nothing). When a newer
    /// version was made current meanwhile, nothing is promoted and the rotation fails instead
    /// (`CredentialRotationFailed` naming both versions): finishing never rolls a secret back.
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
            match self.vault.of(&ctx.tenant_id).promote(&secret_ref, p.version, None).await {
                Ok(()) => {}
                Err(VaultError::NotFound(name)) => {
                    let reason = format!("the verified version {name} is no longer in the vault");
                    return self.fail_credential_rotation(ctx, credential_id, verification_run_id, &reason).await;
                }
                // A newer current version was written meanwhile (`secrets put` during the
                // rotation): the vault never rolls back, so this rotation cannot finish.
                Err(VaultError::VersionConflict { secret, actual, .. }) => {
                    let reason = format!(
                        "{secret} changed during the rotation: its current version {actual} is newer than the \
                         verified version {}, which is not promoted (that would roll the secret back)",
                        p.version
                    );
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
            self.vault.of(&ctx.tenant_id).discard_pending(secret_ref, r.version).await?;
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
            self.vault.of(&ctx.tenant_id).retire_previous(&secret_ref, version).await?;
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
    fn issuance_labels_are_per_rotation_and_fit_the_providers_limit() {
        let run = "run-0192f0c4d5e67f8aa1b2c3d4e5f60718";
        let label = issuance_label("cred-twilio-sms", 2, run);
        assert_eq!(label, format!("{run} cred-twilio-sms v2"));
        assert_eq!(label, issuance_label("cred-twilio-sms", 2, run), "the same on every attempt");
        assert_ne!(label, issuance_label("cred-twilio-sms", 2, "run-0192f0c4d5e67f8aa1b2c3d4e5f60719"));
        let long = issuance_label(&format!("cred-{}", "x".repeat(80)), 2, run);
        assert!(long.chars().count() == MAX_ISSUANCE_LABEL && long.starts_with(run), "{long}");
    }

    #[test]
    fn revocation_inputs_round_trip_and_name_one_thing() {
        let version = SecretRef::parse("kv://factory-integration/twilio-sms?version=1").unwrap();
        for revocation in [Revocation::Version(version), Revocation::Issuance("run-1 cred-twilio-sms v2".into())] {
            let input = RevocationInput { credential_id: "cred-twilio-sms".into(), revocation };
            assert_eq!(RevocationInput::parse(&input.to_json()), Ok(input));
        }
        assert!(RevocationInput::parse(&json!({"credentialId": "c"})).is_err());
        assert!(RevocationInput::parse(&json!({"credentialId": "c", "versionRef": "kv://v/n"})).is_err());
        assert_ne!(revocation_run_id("t", "c", "a"), revocation_run_id("t", "c", "b"));
        assert_eq!(revocation_run_id("t", "c", "a"), revocation_run_id("t", "c", "a"));
    }

    #[test]
    fn a_provider_issued_verification_names_its_label() {
        let input = json!({"credentialId": "c", "versionRef": "kv://v/n?version=2", "source": "ProviderIssued"});
        assert!(VerificationInput::parse(&input).is_err());
        let mut labelled = input.clone();
        labelled["issuanceLabel"] = json!("run-1 c v2");
        assert_eq!(VerificationInput::parse(&labelled).unwrap().issuance_label.as_deref(), Some("run-1 c v2"));
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
