use domain::DomainError;
use domain::credential::{Credential, CredentialCommand, CredentialState, StartRotation};
use domain::ids::stream_id;
use serde_json::json;

use crate::{CommandContext, CommandError, Commands};

/// The operation of the run that checks a pending credential version against the provider.
pub const VERIFY_CREDENTIAL_OPERATION: &str = "VerifyCredential";

pub struct RotationStartedOutcome {
    pub credential_id: String,
    pub new_version_ref: String,
    pub verification_run_id: String,
    pub last_position: Option<u64>,
}

impl Commands {
    /// Starts rotating a credential: records the rotation and requests the run that verifies
    /// the pending version before it is promoted.
    pub async fn start_credential_rotation(
        &self,
        ctx: &CommandContext,
        credential_id: &str,
        reason: &str,
        verification_run_id: &str,
    ) -> Result<RotationStartedOutcome, CommandError> {
        let command = CredentialCommand::StartRotation(StartRotation {
            credential_id: credential_id.into(),
            reason: reason.into(),
            verification_run_id: verification_run_id.into(),
            started_at: self.now(),
        });
        let executed = self.execute::<Credential>(ctx, &stream_id(&ctx.tenant_id, credential_id), &command).await?;
        // The rotation this request started, now or on an earlier try with the same run id.
        let CredentialState::Registered { connections, started, .. } = executed.state else {
            return Err(DomainError::NotFound { kind: "credential", id: credential_id.into() }.into());
        };
        let Some(pending) = started.into_iter().find(|r| r.verification_run_id == verification_run_id) else {
            return Err(DomainError::NotFound { kind: "rotation", id: verification_run_id.into() }.into());
        };
        // Requested after the rotation is recorded, so a crash in between leaves a rotation the
        // retried request (same verification run id) completes, never an orphan run.
        let connection_id = connections.first().cloned().unwrap_or_default();
        let input =
            json!({ "credentialId": credential_id, "version": pending.version, "versionRef": pending.version_ref });
        let run = self
            .request_run(ctx, &pending.verification_run_id, &connection_id, VERIFY_CREDENTIAL_OPERATION, input)
            .await?;
        Ok(RotationStartedOutcome {
            credential_id: credential_id.into(),
            new_version_ref: pending.version_ref,
            verification_run_id: pending.verification_run_id,
            last_position: run.last_position.or(executed.last_position),
        })
    }
}
