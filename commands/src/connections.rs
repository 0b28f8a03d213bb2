use chrono::{DateTime, Utc};
use domain::connection::{
    Connection, ConnectionCommand, ConnectionEstablished, ConnectionEvent, EstablishConnection, ProviderSnapshot,
    WEBHOOK_SECRET_REF,
};
use domain::credential::{Credential, CredentialCommand, CredentialState, LinkConnection};
use domain::ids::stream_id;
use domain::provider::{AuthModel, Provider, ProviderState};
use domain::secret_ref::SecretRef;
use domain::{Decider, DomainError};
use serde_json::{Map, Value};
use store::SecretUse;

use domain::run::{AttemptOutcome, RecordAttempt, Run, RunCommand};

use crate::{CommandContext, CommandError, Commands, Executed};

/// What a caller gives to establish a connection; the tenant comes from the context.
#[derive(Debug, Clone)]
pub struct EstablishConnectionInput {
    pub connection_id: String,
    pub project_id: String,
    pub provider_id: String,
    pub display_name: String,
    pub auth_mode: AuthModel,
    pub credential_ref: Option<String>,
    pub configuration: Map<String, Value>,
}

pub struct ConnectionEstablishedOutcome {
    pub established: ConnectionEstablished,
    pub last_position: Option<u64>,
}

impl Commands {
    /// Establishes a connection to a provider registered in the caller's tenant, then registers
    /// (or links) the credential its `credentialRef` names.
    pub async fn establish_connection(
        &self,
        ctx: &CommandContext,
        input: EstablishConnectionInput,
    ) -> Result<ConnectionEstablishedOutcome, CommandError> {
        let provider = match &self.load_state::<Provider>(&stream_id(&ctx.tenant_id, &input.provider_id)).await?.state {
            ProviderState::Registered(p) => Some(ProviderSnapshot { provider_id: p.provider_id.clone() }),
            ProviderState::Unregistered => None,
        };
        self.check_secret_use(ctx, input.credential_ref.as_deref(), "credentialRef", SecretUse::Send).await?;
        for (field, secret) in domain::connection::secret_refs(&input.configuration, "configuration") {
            // Only the inbound webhook secret stays in the engine; every other one is sent.
            let usage = if field.strip_prefix("configuration.") == Some(WEBHOOK_SECRET_REF) {
                SecretUse::Verify
            } else {
                SecretUse::Send
            };
            self.check_secret_use(ctx, Some(&secret), &field, usage).await?;
        }
        let mut checked = None;
        if let Some(secret) = input.credential_ref.as_deref().and_then(|r| SecretRef::parse(r).ok()) {
            let now = self.now();
            let link =
                |id: &str| link_connection(ctx, id, secret.clone(), 1, input.auth_mode, &input.connection_id, now);
            checked = Some((self.check_credential_link(ctx, &secret, link).await?, secret));
        }
        let established_at = self.now();
        let command = ConnectionCommand::Establish(EstablishConnection {
            connection_id: input.connection_id.clone(),
            tenant_id: ctx.tenant_id.clone(),
            project_id: input.project_id,
            provider_id: input.provider_id,
            provider,
            display_name: input.display_name,
            auth_mode: input.auth_mode,
            credential_ref: input.credential_ref,
            configuration: input.configuration,
            established_at,
        });
        let stream = stream_id(&ctx.tenant_id, &input.connection_id);
        // Usually the connection and what it changes in its credential (registered by its first
        // connection) are appended together, in one commit.
        if let Some((credential, secret)) = &checked {
            let current_version = self.version_to_link(ctx, Some(&credential.folded.state), secret).await?;
            let link = link_connection(
                ctx,
                &credential.id,
                secret.clone(),
                current_version,
                input.auth_mode,
                &input.connection_id,
                established_at,
            );
            let credential_stream = stream_id(&ctx.tenant_id, &credential.id);
            let together = self
                .create_with::<Connection, Credential>(
                    ctx,
                    (&stream, &command),
                    (&credential_stream, &credential.folded, &link),
                )
                .await?;
            if let Some((created, linked)) = together
                && let Some(ConnectionEvent::ConnectionEstablished(established)) = created.new_events.into_iter().next()
            {
                return Ok(ConnectionEstablishedOutcome {
                    established,
                    last_position: linked.last_position.or(created.last_position),
                });
            }
        }
        let created = self.create::<Connection>(ctx, &stream, &command).await?;
        let Some(ConnectionEvent::ConnectionEstablished(established)) = created.events.into_iter().next() else {
            return Err(DomainError::NotFound { kind: "connection", id: input.connection_id }.into());
        };
        // Otherwise (a credential already registered with a first connection, a retried request,
        // a concurrent link) a second step: a crash between the two is healed by the client's
        // retry with the same Idempotency-Key, because linking is idempotent.
        let mut last_position = created.last_position;
        if let Some(secret) = established.credential_ref.as_deref().and_then(|r| SecretRef::parse(r).ok()) {
            // The credential as the check before the connection found it, if it names the same
            // secret (a retried request may find the connection of its first try) and was
            // registered for it: that stays so. Any other state may have changed since (another
            // vault's secret of the same name may have taken the usual id), so it is read again.
            let seen = match checked.filter(|(_, checked)| *checked == secret).map(|(credential, _)| credential) {
                Some(seen) if seen.folded.state.is_registered_for(&secret) => seen,
                _ => self.credential_of(ctx, &secret).await?,
            };
            let current_version = self.version_to_link(ctx, Some(&seen.folded.state), &secret).await?;
            let link = link_connection(
                ctx,
                &seen.id,
                secret.clone(),
                current_version,
                established.auth_mode,
                &established.connection_id,
                established.established_at,
            );
            // The link appends nothing only to a credential registered with a first connection,
            // which stays so; otherwise it runs as a command, on the stream as it is by then.
            let appends_nothing = Credential::decide(&link, &seen.folded.state).is_ok_and(|events| events.is_empty());
            if !appends_nothing {
                let stream = stream_id(&ctx.tenant_id, &seen.id);
                let linked = self.execute::<Credential>(ctx, &stream, &link).await?;
                last_position = linked.last_position.or(last_position);
            }
        }
        Ok(ConnectionEstablishedOutcome { established, last_position })
    }

    /// The version a link records: the credential's own once registered, else the vault's
    /// current one (only a registration records it, so the vault is asked only then).
    async fn version_to_link(
        &self,
        ctx: &CommandContext,
        seen: Option<&CredentialState>,
        secret: &SecretRef,
    ) -> Result<u32, CommandError> {
        match seen {
            Some(CredentialState::Registered { current_version, .. }) => Ok(*current_version),
            _ => Ok(self.vault.of(&ctx.tenant_id).metadata(secret).await?.map_or(1, |m| m.current_version)),
        }
    }

    /// Refuses a `kv://` ref the tenant may not use as `usage` says: one outside its own
    /// vaults, or, to send, outside a shared one too (refs that do not parse are left to the
    /// decider, which names what is wrong with them). The answer is the same whether the vault
    /// is another tenant's or does not exist.
    pub(crate) async fn check_secret_use(
        &self,
        ctx: &CommandContext,
        secret: Option<&str>,
        field: &str,
        usage: SecretUse,
    ) -> Result<(), CommandError> {
        let Some(secret) = secret.and_then(|r| SecretRef::parse(r).ok()) else { return Ok(()) };
        match self.vault.of(&ctx.tenant_id).check(&secret, usage).await {
            Err(store::VaultError::NotTenants(_)) => {
                let whose = match usage {
                    SecretUse::Send => "the tenant's own vaults",
                    SecretUse::Verify => "the tenant's own vaults or a shared one",
                };
                Err(DomainError::invalid(field, format!("{secret} is not in {whose}")).into())
            }
            other => Ok(other?),
        }
    }

    /// Records the outcome of a health-check run against a connection; a redelivered outcome
    /// is recorded once.
    pub async fn record_health_check(
        &self,
        ctx: &CommandContext,
        connection_id: &str,
        run_id: &str,
        succeeded: bool,
    ) -> Result<Option<u64>, CommandError> {
        self.record_health_check_outcome(ctx, connection_id, run_id, succeeded, None).await
    }

    /// [`Self::record_health_check`] with the reason a failed check gives.
    pub async fn record_health_check_outcome(
        &self,
        ctx: &CommandContext,
        connection_id: &str,
        run_id: &str,
        succeeded: bool,
        reason: Option<&str>,
    ) -> Result<Option<u64>, CommandError> {
        let command = self.health_check(run_id, succeeded, reason);
        let executed = self.execute::<Connection>(ctx, &stream_id(&ctx.tenant_id, connection_id), &command).await?;
        Ok(executed.last_position)
    }

    /// Records a health check's attempt `record` (a `RecordAttempt`) on the run's stream and, in
    /// the same append, the connection's health, when that attempt ends the run (it succeeded,
    /// or failed with no attempt left): one commit for both. `None` when they are not recorded
    /// together (the attempt ends nothing, the connection recorded this run already or is
    /// gone): the caller then records the attempt alone, and the health follows as it does for
    /// any ended run.
    pub async fn record_health_check_attempt(
        &self,
        ctx: &CommandContext,
        run_stream: &str,
        record: &RunCommand,
        connection_id: &str,
    ) -> Result<Option<Executed<Run>>, CommandError> {
        let RunCommand::RecordAttempt(RecordAttempt { run_id, outcome, .. }) = record else { return Ok(None) };
        let health = match outcome {
            AttemptOutcome::Succeeded { .. } => self.health_check(run_id, true, None),
            AttemptOutcome::Failed { error, next_attempt_at: None, .. } => {
                self.health_check(run_id, false, Some(error))
            }
            AttemptOutcome::Failed { .. } => return Ok(None),
        };
        let connection = stream_id(&ctx.tenant_id, connection_id);
        let both = self.execute_with::<Run, Connection>(ctx, (run_stream, record), (&connection, &health)).await?;
        Ok(both.map(|(run, _)| run))
    }

    fn health_check(&self, run_id: &str, succeeded: bool, reason: Option<&str>) -> ConnectionCommand {
        ConnectionCommand::RecordHealthCheck(domain::connection::RecordHealthCheck {
            run_id: run_id.into(),
            succeeded,
            reason: reason.map(str::to_owned),
            checked_at: self.now(),
        })
    }
}

fn link_connection(
    ctx: &CommandContext,
    credential_id: &str,
    secret_ref: SecretRef,
    current_version: u32,
    auth_kind: AuthModel,
    connection_id: &str,
    at: DateTime<Utc>,
) -> CredentialCommand {
    CredentialCommand::LinkConnection(LinkConnection {
        credential_id: credential_id.into(),
        tenant_id: ctx.tenant_id.clone(),
        secret_ref,
        current_version,
        auth_kind,
        connection_id: connection_id.into(),
        at,
    })
}
