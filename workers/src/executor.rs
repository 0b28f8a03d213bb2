//! The run executor: the consumer that executes requested runs.
//!
//! For each `RunRequested` it drives the run to its end, one attempt at a time:
//! `RunStarted` (under a lease) → the operation through the provider's API client
//! (`connectors::operations`) within the attempt timeout → `RunCompleted`, or
//! `RunAttemptFailed` and, after an exponential backoff with jitter, the next attempt, up to
//! the operation's attempt limit → `RunFailed`. Permanent errors (4xx, unknown operation,
//! missing connection or credential) fail the run at once.
//!
//! A read-only attempt (a health or signing-secret check) takes no lease and is recorded once,
//! whole, when it ended (`RecordAttempt`: a `RunCompleted` or `RunAttemptFailed` carrying its
//! start and worker). Nothing it did needs fencing or accounting for after a crash, so the
//! durable `RunStarted` before the call is kept for attempts that change something at the
//! provider. Should two workers make the same check at once (a Kafka rebalance mid-check),
//! only the first outcome is recorded; the other is refused as the wrong next attempt.
//!
//! The handler returns only once the run has ended (or another worker holds it), so the
//! consumer commits the `RunRequested` only then: a worker that dies mid-run leaves it
//! uncommitted, and the next owner of the partition (or the restarted process) gets it again.
//! It then waits for the dead worker's lease to expire and takes over; the lease outlives the
//! attempt timeout, so two attempts of a run never overlap.
//!
//! `VerifyCredential` runs (requested by a credential rotation) perform the provider's health
//! operation (`CheckHealth`) with the pending version the run names instead of the current one.
//! For a provider-issued version, each attempt first makes sure the version exists: if the vault
//! does not hold it yet, the provider's API client issues the credential (deleting first any the
//! provider holds under the rotation's label: an earlier attempt died before storing it) and it
//! is staged as that exact version, or the run fails. `RevokeCredential` runs revoke a retired
//! version, or what a failed rotation had issued, at the provider.
//! Once a run has ended, its outcome is settled where it matters, every time the `RunRequested`
//! is handled (so a crash between the run's end and the settlement is healed by the redelivery):
//! a `VerifyCredential` run completes or fails its rotation (promoting the version on success),
//! a `CheckHealth` run records the connection's health.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, TimeDelta, Utc};
use commands::credentials::{
    REVOKE_CREDENTIAL_OPERATION, Revocation, RevocationInput, VERIFY_CREDENTIAL_OPERATION, VerificationInput,
};
use commands::{CommandContext, CommandError, Commands};
use connectors::operations::{
    ApiClients, CHECK_HEALTH, CHECK_SIGNING_SECRET, CallError, Credential, ProviderTarget, ResolvedOperation,
    RetryPolicy, resolve,
};
use connectors::redact::Redactor;
use domain::connection::ConnectionEvent;
use domain::credential::{KEY_ISSUER_CREDENTIAL_REF, RotationSource};
use domain::ids::stream_id;
use domain::provider::ProviderEvent;
use domain::run::{
    AttemptOutcome, FailAttempt, RecordAttempt, Run, RunCommand, RunEvent, RunRequested, RunState, StartAttempt,
    next_attempt,
};
use domain::secret_ref::SecretRef;
use domain::subscription::SubscriptionEvent;
use domain::{AggregateEvent, DomainError, EventEnvelope};
use store::{SecretStore, SecretUse, Stage, TenantVault, VaultError, Vaults};
use thiserror::Error;
use tokio_util::sync::CancellationToken;

use crate::EventHandler;

/// The executor's consumer name.
pub const RUN_EXECUTOR_CONSUMER: &str = "run-executor";
/// Run attempts this process made, by `outcome` (`succeeded`, `failed`), in the `metrics` facade.
pub const RUN_ATTEMPTS: &str = "run_attempts_total";
/// Runs this process finished, by `outcome` (`succeeded`, `failed`).
pub const RUNS_FINISHED: &str = "runs_finished_total";

/// Settings of the executor; `None` fields keep the operation's own policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecutorSettings {
    /// Recorded in each attempt's lease, e.g. `worker-{host}-{pid}`.
    pub worker_id: String,
    /// How long a lease outlives its attempt's timeout: a worker that is alive has recorded the
    /// outcome by then.
    pub lease_grace: Duration,
    pub max_attempts: Option<u32>,
    pub attempt_timeout: Option<Duration>,
    pub first_backoff: Option<Duration>,
    pub max_backoff: Option<Duration>,
}

impl ExecutorSettings {
    pub fn new(worker_id: impl Into<String>) -> Self {
        Self {
            worker_id: worker_id.into(),
            lease_grace: Duration::from_secs(5),
            max_attempts: None,
            attempt_timeout: None,
            first_backoff: None,
            max_backoff: None,
        }
    }

    /// The operation's policy with these settings' overrides.
    pub fn policy_for(&self, operation: &ResolvedOperation) -> RetryPolicy {
        self.overriding(operation.retry_policy())
    }

    /// `default` with these settings' overrides.
    pub fn overriding(&self, default: RetryPolicy) -> RetryPolicy {
        RetryPolicy {
            max_attempts: self.max_attempts.unwrap_or(default.max_attempts).max(1),
            attempt_timeout: self.attempt_timeout.unwrap_or(default.attempt_timeout),
            first_backoff: self.first_backoff.unwrap_or(default.first_backoff),
            max_backoff: self.max_backoff.unwrap_or(default.max_backoff),
        }
    }
}

#[derive(Debug, Error)]
pub enum ExecutorError {
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error("vault: {0}")]
    Vault(#[from] VaultError),
    /// Shutdown came while the run was in hand; it stays uncommitted and is resumed later.
    #[error("shutting down with run {0} in progress")]
    ShuttingDown(String),
}

/// The executor of runs; an [`EventHandler`] for [`crate::run_consumer`].
pub struct RunExecutor {
    commands: Commands,
    /// Secrets are read only on a run's tenant's behalf.
    vault: Vaults,
    clients: ApiClients,
    settings: ExecutorSettings,
    shutdown: CancellationToken,
}

impl RunExecutor {
    pub fn new(
        commands: Commands,
        vault: Arc<dyn SecretStore>,
        clients: ApiClients,
        settings: ExecutorSettings,
        shutdown: CancellationToken,
    ) -> Self {
        Self { commands, vault: Vaults::new(vault), clients, settings, shutdown }
    }

    /// Drives the run of `requested` to its end; returns how it ended when this call saw it end,
    /// `None` when it had ended before, or another worker holds it.
    async fn drive(&self, event: &EventEnvelope, requested: &RunRequested) -> Result<Option<Outcome>, ExecutorError> {
        // Webhook deliveries are the webhook dispatcher's (workers::fanout), on their own schedule.
        if requested.operation == domain::outbound::DELIVER_WEBHOOK_OPERATION {
            return Ok(None);
        }
        let tenant = &event.tenant_id;
        let stream = stream_id(tenant, &requested.run_id);
        let ctx = self.context(event, requested);
        if self.state(&stream).await?.is_finished() {
            return Ok(None);
        }
        let mut target = match self.target(tenant, &requested.connection_id).await? {
            Ok(target) => target,
            Err(reason) => return self.fail_run(&ctx, &stream, requested, reason).await,
        };
        // A revocation names what it revokes; it calls no run operation.
        if requested.operation == REVOKE_CREDENTIAL_OPERATION {
            match revoked(&requested.input, target.credential_ref.as_ref()) {
                Ok(input) => target.revocation = Some(input),
                Err(reason) => return self.fail_run(&ctx, &stream, requested, reason).await,
            }
        }
        // A verification run checks the provider's health with the version it names.
        let operation_name = if requested.operation == VERIFY_CREDENTIAL_OPERATION {
            match verified_version(&requested.input, target.credential_ref.as_ref()) {
                Ok(input) => {
                    target.credential_ref = Some(input.version_ref.clone());
                    if input.source == RotationSource::ProviderIssued {
                        target.issuance = input.issuance_label.clone();
                    }
                    // A secret we generated has no receiver that knows it yet, and a subscription's
                    // signing secret has no provider to ask: checked locally.
                    let signing_only = domain::ids::has_prefix(&requested.connection_id, domain::ids::SUBSCRIPTION);
                    if input.source == RotationSource::Generated || signing_only {
                        CHECK_SIGNING_SECRET
                    } else {
                        CHECK_HEALTH
                    }
                }
                Err(reason) => return self.fail_run(&ctx, &stream, requested, reason).await,
            }
        } else if target.revocation.is_some() {
            CHECK_HEALTH
        } else {
            requested.operation.as_str()
        };
        let operation = match resolve(operation_name, &target.provider, &requested.input) {
            Ok(operation) => operation,
            Err(reason) => return self.fail_run(&ctx, &stream, requested, reason.to_string()).await,
        };
        let policy = if target.revocation.is_some() {
            self.settings.overriding(CREDENTIAL_MANAGEMENT_POLICY)
        } else if target.issuance.is_some() {
            // Issuing takes a few calls before the check: give the attempt more time.
            let default = operation.retry_policy();
            self.settings.overriding(RetryPolicy {
                attempt_timeout: default.attempt_timeout.max(CREDENTIAL_MANAGEMENT_POLICY.attempt_timeout),
                ..default
            })
        } else {
            self.settings.policy_for(&operation)
        };
        // A read-only attempt (a check, with no version to issue and nothing to revoke) has no
        // effect to fence or to account for after a crash: it is recorded once, whole, when it
        // ended, with no `RunStarted` before it (one append per attempt instead of two).
        let recorded_whole = operation.is_read_only() && target.issuance.is_none() && target.revocation.is_none();
        loop {
            let state = self.state(&stream).await?;
            let RunState::Exists { lease, next_attempt_at, attempts, attempts_before_redelivery, .. } = &state else {
                return Ok(None);
            };
            if state.is_finished() {
                return Ok(None);
            }
            let now = self.commands.now();
            // Another worker (or this process before a restart) holds the run: wait it out.
            let wait_until = match (lease, next_attempt_at) {
                (Some(lease), _) if now < lease.expires_at => Some(lease.expires_at),
                (None, Some(due)) if now < *due => Some(*due),
                _ => None,
            };
            if let Some(until) = wait_until {
                tracing::info!(run_id = %requested.run_id, until = %until, "waiting for the run's lease or its next attempt");
                self.sleep_until(until, &requested.run_id).await?;
                continue;
            }
            let started_at = self.commands.now();
            let attempt = if recorded_whole {
                // An expired lease's attempt (an earlier executor's `RunStarted`) is counted in
                // `attempts` already.
                match next_attempt(*attempts, *attempts_before_redelivery, policy.max_attempts) {
                    Ok(attempt) => attempt,
                    Err(reason) => return self.fail_run(&ctx, &stream, requested, reason).await,
                }
            } else {
                let start = RunCommand::StartAttempt(StartAttempt {
                    run_id: requested.run_id.clone(),
                    worker_id: self.settings.worker_id.clone(),
                    started_at,
                    lease_expires_at: started_at + delta(policy.attempt_timeout + self.settings.lease_grace),
                    max_attempts: policy.max_attempts,
                });
                let started = match self.commands.execute::<Run>(&ctx, &stream, &start).await {
                    Ok(started) => started,
                    // Someone moved the run between our read and our decision: look again.
                    Err(CommandError::Rejected(DomainError::InvalidTransition { .. })) => continue,
                    Err(e) => return Err(e.into()),
                };
                let RunState::Exists { attempts: attempt, .. } = started.state else { return Ok(None) };
                if started.state.is_finished() {
                    tracing::warn!(run_id = %requested.run_id, attempt, "run failed: no attempt left");
                    return Ok(outcome_of(&started.new_events));
                }
                attempt
            };
            tracing::info!(run_id = %requested.run_id, attempt, operation = %requested.operation, "attempt started");
            let outcome = self.attempt(&operation, &target, policy.attempt_timeout, &requested.run_id, tenant).await?;
            let outcome_label = if outcome.is_ok() { "succeeded" } else { "failed" };
            let finished_at = self.commands.now();
            let outcome = match outcome {
                Ok(output) => AttemptOutcome::Succeeded { output },
                Err(error) => {
                    let next_attempt_at = (error.is_retryable() && attempt < policy.max_attempts)
                        .then(|| finished_at + delta(backoff_with_jitter(&policy, attempt)));
                    tracing::warn!(run_id = %requested.run_id, attempt, %error, next_attempt_at = ?next_attempt_at, "attempt failed");
                    AttemptOutcome::Failed { error: error.to_string(), next_attempt_at, response: None }
                }
            };
            let record = if recorded_whole {
                RunCommand::RecordAttempt(RecordAttempt {
                    run_id: requested.run_id.clone(),
                    attempt,
                    worker_id: self.settings.worker_id.clone(),
                    started_at,
                    finished_at,
                    outcome,
                })
            } else {
                match outcome {
                    AttemptOutcome::Succeeded { output } => RunCommand::Complete {
                        run_id: requested.run_id.clone(),
                        attempt,
                        output,
                        completed_at: finished_at,
                    },
                    AttemptOutcome::Failed { error, next_attempt_at, .. } => RunCommand::FailAttempt(FailAttempt {
                        run_id: requested.run_id.clone(),
                        attempt,
                        error,
                        failed_at: finished_at,
                        next_attempt_at,
                    }),
                }
            };
            // A health check's last attempt and the connection's health are one append (the
            // ended run is settled afterwards all the same, and finds its health recorded).
            let together = if requested.operation == CHECK_HEALTH {
                self.commands.record_health_check_attempt(&ctx, &stream, &record, &requested.connection_id).await
            } else {
                Ok(None)
            };
            let recorded = match together {
                Ok(Some(executed)) => Ok(executed),
                Ok(None) => self.commands.execute::<Run>(&ctx, &stream, &record).await,
                Err(e) => Err(e),
            };
            if recorded.is_ok() {
                metrics::counter!(RUN_ATTEMPTS, "outcome" => outcome_label).increment(1);
            }
            match recorded.map(|executed| outcome_of(&executed.new_events)) {
                // Finished: the run's outcome is its last attempt's.
                Ok(Some(outcome)) => {
                    metrics::counter!(RUNS_FINISHED, "outcome" => outcome_label).increment(1);
                    return Ok(Some(outcome));
                }
                // A retry is due (or the outcome was already recorded: the next look says so).
                Ok(None) => {}
                Err(CommandError::Rejected(error)) => {
                    // Our lease expired and another worker took the run over, or (an attempt
                    // recorded whole) another worker recorded this attempt: it is theirs now.
                    tracing::warn!(run_id = %requested.run_id, attempt, %error, "outcome refused: the run was taken over");
                    return Ok(None);
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// One attempt within the timeout: the credential, then the call (for a provider-issued
    /// version, after issuing it if the vault does not hold it yet); or a revocation.
    async fn attempt(
        &self,
        operation: &ResolvedOperation,
        target: &RunTarget,
        timeout: Duration,
        run_id: &str,
        tenant: &str,
    ) -> Result<Result<serde_json::Value, CallError>, ExecutorError> {
        let secrets = CallSecrets::new(self.vault.of(tenant));
        let work = async {
            if let Some(revocation) = &target.revocation {
                return self.revoke(&secrets, target, revocation).await;
            }
            let Some(secret) = &target.credential_ref else {
                return Err(CallError::Permanent("the connection has no credentialRef".into()));
            };
            if let Some(label) = &target.issuance {
                self.issue_pending_version(&secrets, target, secret, label).await?;
            }
            let credential = secrets.credential(secret).await?;
            let mut output = self.clients.call(operation, &target.provider, &credential).await?;
            if target.issuance.is_some()
                && let Some(key_id) = connectors::operations::credential_key_id(&target.provider, &credential)
            {
                output["issuedKeyId"] = serde_json::Value::String(key_id);
            }
            Ok(output)
        };
        let outcome = tokio::select! {
            // Abandoned: the lease expires and the run is taken over after a restart.
            () = self.shutdown.cancelled() => return Err(ExecutorError::ShuttingDown(run_id.into())),
            outcome = tokio::time::timeout(timeout, work) => {
                outcome.unwrap_or_else(|_| Err(CallError::Retryable(format!("attempt timed out after {} ms", timeout.as_millis()))))
            }
        };
        // What the vendor answered is kept (events, read models, the log): never a secret in it.
        let redactor = secrets.redactor();
        Ok(match outcome {
            Ok(mut output) => {
                redactor.scrub_json(&mut output);
                Ok(output)
            }
            Err(error) => Err(error.scrubbed(&redactor)),
        })
    }

    /// The credential the provider's API issues and revokes with: the connection's
    /// `configuration.keyIssuerCredentialRef`, one of the run's tenant's own secrets.
    async fn issuer(&self, secrets: &CallSecrets<'_>, target: &RunTarget) -> Result<Credential, CallError> {
        let Some(reference) = target.provider.configuration.get(KEY_ISSUER_CREDENTIAL_REF).and_then(|v| v.as_str())
        else {
            return Err(CallError::Permanent(format!(
                "the connection names no configuration.{KEY_ISSUER_CREDENTIAL_REF} to issue or revoke credentials with"
            )));
        };
        let secret = SecretRef::parse(reference)
            .map_err(|e| CallError::Permanent(format!("configuration.{KEY_ISSUER_CREDENTIAL_REF}: {e}")))?;
        secrets.credential(&secret).await
    }

    /// Makes sure the vault holds the provider-issued version `secret` (pinned) as pending: done
    /// already by an earlier attempt, or issued now and staged as exactly that version. The
    /// credential's value goes from the provider's answer to the vault and nowhere else.
    async fn issue_pending_version(
        &self,
        secrets: &CallSecrets<'_>,
        target: &RunTarget,
        secret: &SecretRef,
        label: &str,
    ) -> Result<(), CallError> {
        let vault = &secrets.vault;
        let Some(version) = secret.version else {
            return Err(CallError::Permanent(format!("{secret} names no version")));
        };
        let vault_error = |e: VaultError| CallError::Retryable(format!("vault: {e}"));
        let versions = secrets.vault.versions(secret).await.map_err(vault_error)?;
        if let Some(existing) = versions.iter().find(|v| v.version == version) {
            // Issued and stored by an earlier attempt of this run.
            if existing.stages.contains(&Stage::Pending) {
                return Ok(());
            }
            return Err(CallError::Permanent(format!(
                "{secret} was written outside this rotation (it is not pending): nothing was issued"
            )));
        }
        let latest = versions.iter().map(|v| v.version).max().unwrap_or(0);
        if latest + 1 != version {
            return Err(CallError::Permanent(format!(
                "{secret} cannot be stored: the vault's latest version is {latest}; nothing was issued"
            )));
        }
        // A pending label left on an older version (staged, never rotated to) is stale: this
        // rotation is the one in flight. The check-and-set refuses any pending staged meanwhile.
        let stale_pending = versions.iter().find(|v| v.stages.contains(&Stage::Pending)).map_or(0, |v| v.version);
        let issuer = self.issuer(secrets, target).await?;
        let issued = self.clients.issue_credential(&target.provider, &issuer, label).await?;
        secrets.remember(issued.credential.value_for_vault());
        tracing::info!(secret = %secret, key_id = %issued.key_id, "the provider issued the pending credential");
        let staged = vault.stage_pending(secret, issued.credential.value_for_vault(), Some(stale_pending)).await;
        let refused = match staged {
            Ok(stored) if stored == version => return Ok(()),
            Ok(stored) => {
                // Someone wrote a version meanwhile: ours landed under another number.
                let _ = vault.discard_pending(secret, stored).await;
                CallError::Permanent(format!("{secret} was taken by another write while the key was issued"))
            }
            Err(VaultError::VersionConflict { .. }) => {
                CallError::Permanent(format!("another version of {secret} was staged while the key was issued"))
            }
            Err(e) => vault_error(e),
        };
        // Not stored: the issued key is revoked again (if that fails, the rotation's failure
        // revokes it by its label).
        if let Err(error) = self.clients.revoke_credential(&target.provider, &issuer, &issued.credential, &[]).await {
            tracing::warn!(key_id = %issued.key_id, %error, "the unstored issued key could not be revoked yet");
        }
        Err(refused)
    }

    /// Revokes at the provider a retired version, or what a failed rotation's issuance left.
    async fn revoke(
        &self,
        secrets: &CallSecrets<'_>,
        target: &RunTarget,
        revocation: &RevocationInput,
    ) -> Result<serde_json::Value, CallError> {
        let issuer = self.issuer(secrets, target).await?;
        let in_use = keys_in_use(secrets, target).await?;
        match &revocation.revocation {
            Revocation::Version(version) => {
                let credential = secrets.credential(version).await?;
                self.clients.revoke_credential(&target.provider, &issuer, &credential, &in_use).await
            }
            Revocation::Issuance(label) => {
                self.clients.revoke_labelled(&target.provider, &issuer, label, &in_use).await
            }
        }
    }

    /// The context of the commands a run's execution issues, caused by its `RunRequested`.
    fn context(&self, event: &EventEnvelope, requested: &RunRequested) -> CommandContext {
        CommandContext {
            trace_id: requested.trace_id.clone(),
            ..CommandContext::caused_by(event, &self.settings.worker_id)
        }
    }

    /// Settles the outcome of an ended run where it matters: a verification run finishes its
    /// rotation, a health check records the connection's health. Idempotent; nothing happens
    /// for a run still in progress (its executor settles it) or of another operation.
    ///
    /// `ended` is the outcome when the caller saw the run end; else it is read from the run.
    async fn settle(
        &self,
        event: &EventEnvelope,
        requested: &RunRequested,
        ended: Option<Outcome>,
    ) -> Result<(), ExecutorError> {
        let is_verification = requested.operation == VERIFY_CREDENTIAL_OPERATION;
        if !is_verification && requested.operation != CHECK_HEALTH {
            return Ok(());
        }
        let outcome = match ended {
            Some(outcome) => Some(outcome),
            None => {
                let run = self.commands.load::<RunEvent>(&stream_id(&event.tenant_id, &requested.run_id)).await?;
                outcome_of(&run.events)
            }
        };
        let Some(failure) = outcome else { return Ok(()) };
        let ctx = self.context(event, requested);
        let settled = if is_verification {
            let Ok(input) = VerificationInput::parse(&requested.input) else {
                tracing::warn!(run_id = %requested.run_id, "a verification run without a readable input settles nothing");
                return Ok(());
            };
            let credential = &input.credential_id;
            match &failure {
                None => {
                    tracing::info!(run_id = %requested.run_id, credential_id = %credential, "verified: promoting the pending version");
                    self.commands.complete_credential_rotation(&ctx, credential, &requested.run_id).await
                }
                Some(reason) => {
                    tracing::warn!(run_id = %requested.run_id, credential_id = %credential, %reason, "verification failed: the current version stays");
                    self.commands.fail_credential_rotation(&ctx, credential, &requested.run_id, reason).await
                }
            }
        } else {
            self.commands
                .record_health_check_outcome(
                    &ctx,
                    &requested.connection_id,
                    &requested.run_id,
                    failure.is_none(),
                    failure.as_deref(),
                )
                .await
        };
        match settled {
            Ok(_) => Ok(()),
            // Nothing to settle: the credential or connection is gone, or the rotation was not
            // this run's. Recorded in the log; the run's own events say what happened.
            Err(CommandError::Rejected(error)) => {
                tracing::warn!(run_id = %requested.run_id, %error, "the run's outcome settles nothing");
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The run's state: the cached one, brought up to date with what was appended since.
    async fn state(&self, stream: &str) -> Result<RunState, ExecutorError> {
        Ok(self.commands.load_state::<Run>(stream).await?.state.clone())
    }

    /// The connection's provider and credential; `Err(reason)` when the run cannot target it.
    async fn target(&self, tenant: &str, connection_id: &str) -> Result<Result<RunTarget, String>, ExecutorError> {
        // The verification of a signing secret only webhook subscriptions use names the first
        // subscription: its secret is the credential, and no provider is called.
        if domain::ids::has_prefix(connection_id, domain::ids::SUBSCRIPTION) {
            return self.subscription_target(tenant, connection_id).await;
        }
        // Only what the connection and provider were created with: their first events.
        let connection = self.commands.load_first::<ConnectionEvent>(&stream_id(tenant, connection_id)).await?;
        let Some(ConnectionEvent::ConnectionEstablished(established)) = connection else {
            return Ok(Err(format!("connection {connection_id} does not exist in tenant {tenant}")));
        };
        let provider = self.commands.load_first::<ProviderEvent>(&stream_id(tenant, &established.provider_id)).await?;
        let Some(ProviderEvent::ProviderRegistered(registered)) = provider else {
            return Ok(Err(format!("provider {} is not registered in tenant {tenant}", established.provider_id)));
        };
        let credential_ref = match established.credential_ref.as_deref().map(SecretRef::parse).transpose() {
            Ok(secret) => secret,
            Err(reason) => return Ok(Err(format!("the connection's credentialRef is invalid: {reason}"))),
        };
        if let Some(secret) = &credential_ref
            && let Some(refused) = self.refused_secret(tenant, secret).await?
        {
            return Ok(Err(refused));
        }
        Ok(Ok(RunTarget {
            provider: ProviderTarget {
                provider_key: registered.key,
                api_client: registered.api_client,
                base_url: registered.base_url,
                configuration: established.configuration,
            },
            credential_ref,
            issuance: None,
            revocation: None,
        }))
    }

    /// A subscription's signing secret as a run's credential (for `VerifyCredential` runs).
    async fn subscription_target(
        &self,
        tenant: &str,
        subscription_id: &str,
    ) -> Result<Result<RunTarget, String>, ExecutorError> {
        let subscription = self.commands.load_first::<SubscriptionEvent>(&stream_id(tenant, subscription_id)).await?;
        let Some(SubscriptionEvent::WebhookSubscriptionCreated(created)) = subscription else {
            return Ok(Err(format!("subscription {subscription_id} does not exist in tenant {tenant}")));
        };
        let secret = match SecretRef::parse(&created.signing_secret_ref) {
            Ok(secret) => secret,
            Err(reason) => return Ok(Err(format!("the subscription's signingSecretRef is invalid: {reason}"))),
        };
        if let Some(refused) = self.refused_secret(tenant, &secret).await? {
            return Ok(Err(refused));
        }
        Ok(Ok(RunTarget {
            provider: ProviderTarget {
                provider_key: String::new(),
                api_client: String::new(),
                base_url: String::new(),
                configuration: serde_json::Map::new(),
            },
            credential_ref: Some(secret),
            issuance: None,
            revocation: None,
        }))
    }

    /// Why a run of `tenant` cannot use `secret` (it is not in one of the tenant's own vaults),
    /// or `None` when it can.
    async fn refused_secret(&self, tenant: &str, secret: &SecretRef) -> Result<Option<String>, ExecutorError> {
        match self.vault.of(tenant).check(secret, SecretUse::Send).await {
            Ok(()) => Ok(None),
            Err(refused @ VaultError::NotTenants(_)) => Ok(Some(refused.to_string())),
            Err(e) => Err(e.into()),
        }
    }

    async fn fail_run(
        &self,
        ctx: &CommandContext,
        stream: &str,
        requested: &RunRequested,
        error: String,
    ) -> Result<Option<Outcome>, ExecutorError> {
        tracing::warn!(run_id = %requested.run_id, %error, "run failed without an attempt");
        let fail = RunCommand::Fail { run_id: requested.run_id.clone(), error, failed_at: self.commands.now() };
        match self.commands.execute::<Run>(ctx, stream, &fail).await {
            Ok(executed) => {
                metrics::counter!(RUNS_FINISHED, "outcome" => "failed").increment(1);
                Ok(outcome_of(&executed.new_events))
            }
            Err(CommandError::Rejected(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn sleep_until(&self, until: DateTime<Utc>, run_id: &str) -> Result<(), ExecutorError> {
        let wait = (until - self.commands.now()).to_std().unwrap_or_default() + Duration::from_millis(20);
        tokio::select! {
            () = self.shutdown.cancelled() => Err(ExecutorError::ShuttingDown(run_id.into())),
            () = tokio::time::sleep(wait) => Ok(()),
        }
    }
}

/// The tenant's secrets as one attempt reads them: every value read, and every one a provider
/// issues, is remembered, so that what the vendor answers is scrubbed of them before it is kept.
struct CallSecrets<'a> {
    vault: TenantVault<'a>,
    used: std::sync::Mutex<Redactor>,
}

impl<'a> CallSecrets<'a> {
    fn new(vault: TenantVault<'a>) -> Self {
        Self { vault, used: std::sync::Mutex::default() }
    }

    /// A credential from the tenant's vault; a missing one, or one outside the tenant's own
    /// vaults, fails the call for good.
    async fn credential(&self, secret: &SecretRef) -> Result<Credential, CallError> {
        match self.vault.get(secret).await {
            Ok(value) => {
                self.remember(&value.value);
                Ok(Credential::new(value.value))
            }
            Err(VaultError::NotFound(name)) => {
                Err(CallError::Permanent(format!("credential {name} is not in the vault")))
            }
            Err(refused @ VaultError::NotTenants(_)) => Err(CallError::Permanent(refused.to_string())),
            Err(e) => Err(CallError::Retryable(format!("vault: {e}"))),
        }
    }

    fn remember(&self, value: &[u8]) {
        self.used.lock().unwrap_or_else(std::sync::PoisonError::into_inner).add(value);
    }

    fn redactor(self) -> Redactor {
        self.used.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

async fn keys_in_use(secrets: &CallSecrets<'_>, target: &RunTarget) -> Result<Vec<String>, CallError> {
    let Some(secret) = &target.credential_ref else { return Ok(Vec::new()) };
    let versions = secrets.vault.versions(secret).await.map_err(|e| CallError::Retryable(format!("vault: {e}")))?;
    let mut in_use = Vec::new();
    for v in versions.iter().filter(|v| v.stages.contains(&Stage::Current) || v.stages.contains(&Stage::Pending)) {
        let credential = secrets.credential(&secret.with_version(v.version)).await?;
        in_use.extend(connectors::operations::credential_key_id(&target.provider, &credential));
    }
    Ok(in_use)
}

/// The pinned version a verification run checks: it must be a version of the connection's own
/// credential (so the tenant check of the connection's secret covers it).
fn verified_version(
    input: &serde_json::Value,
    connection_secret: Option<&SecretRef>,
) -> Result<VerificationInput, String> {
    let input = VerificationInput::parse(input)?;
    match connection_secret {
        Some(secret) if secret.unversioned() == input.version_ref.unversioned() => Ok(input),
        _ => Err(format!("{} is not a version of the connection's credential", input.version_ref)),
    }
}

/// What a revocation run revokes: a version of the connection's own credential, or a label.
fn revoked(input: &serde_json::Value, connection_secret: Option<&SecretRef>) -> Result<RevocationInput, String> {
    let input = RevocationInput::parse(input)?;
    if let Revocation::Version(version) = &input.revocation
        && connection_secret.map(SecretRef::unversioned) != Some(version.unversioned())
    {
        return Err(format!("{version} is not a version of the connection's credential"));
    }
    Ok(input)
}

/// The policy of calls that manage credentials at the provider (issuing, revoking): a few
/// calls each, retried for a while, since a key left unrevoked stays usable.
const CREDENTIAL_MANAGEMENT_POLICY: RetryPolicy = RetryPolicy {
    max_attempts: 5,
    attempt_timeout: Duration::from_secs(30),
    first_backoff: Duration::from_secs(2),
    max_backoff: Duration::from_secs(60),
};

/// What a run targets: the provider as the connection names it, and the credential.
struct RunTarget {
    provider: ProviderTarget,
    credential_ref: Option<SecretRef>,
    /// A provider-issued version's label: the attempt issues the version if the vault lacks it.
    issuance: Option<String>,
    /// A revocation run's subject.
    revocation: Option<RevocationInput>,
}

#[async_trait]
impl EventHandler for RunExecutor {
    type Error = ExecutorError;

    async fn handle(&self, event: &EventEnvelope) -> Result<(), ExecutorError> {
        if event.event_type != "RunRequested" {
            return Ok(());
        }
        match RunEvent::decode(&event.event_type, event.schema_version, &event.data) {
            Ok(RunEvent::RunRequested(requested)) => {
                let ended = self.drive(event, &requested).await?;
                self.settle(event, &requested, ended).await
            }
            Ok(_) => Ok(()),
            Err(error) => {
                tracing::error!(event_id = %event.event_id, %error, "skipping an unreadable RunRequested");
                Ok(())
            }
        }
    }
}

/// How a run ended: `None` completed, `Some(error)` failed.
type Outcome = Option<String>;

/// The outcome among a run's events (its last `RunCompleted` or `RunFailed`), if it ended.
fn outcome_of(events: &[RunEvent]) -> Option<Outcome> {
    events.iter().rev().find_map(|e| match e {
        RunEvent::RunCompleted(_) => Some(None),
        RunEvent::RunFailed(failed) => Some(Some(failed.error.clone())),
        _ => None,
    })
}

/// The wait before attempt `failed_attempt + 1`: `first_backoff × 2^(failed_attempt-1)` capped
/// at `max_backoff`, of which a random half is taken off, so runs that failed together do not
/// retry together and none waits longer than `max_backoff`. Drawn with the engine's one jitter
/// model ([`crate::jitter::jittered`]): three quarters of the wait, a third of that either way.
pub fn backoff_with_jitter(policy: &RetryPolicy, failed_attempt: u32) -> Duration {
    let exponent = failed_attempt.saturating_sub(1).min(20);
    let base = policy.first_backoff.saturating_mul(1 << exponent).min(policy.max_backoff);
    crate::jitter::jittered(base.mul_f64(0.75), 1.0 / 3.0)
}

fn delta(duration: Duration) -> TimeDelta {
    TimeDelta::from_std(duration).unwrap_or(TimeDelta::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_limit_with_jitter_in_the_upper_half() {
        let policy = RetryPolicy {
            max_attempts: 10,
            attempt_timeout: Duration::from_secs(1),
            first_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(1000),
        };
        for (attempt, base) in [(1, 100), (2, 200), (3, 400), (4, 800), (5, 1000), (9, 1000)] {
            let base = Duration::from_millis(base);
            let mut seen = std::collections::HashSet::new();
            for _ in 0..50 {
                let delay = backoff_with_jitter(&policy, attempt);
                assert!(delay >= base / 2 && delay <= base, "attempt {attempt}: {delay:?}");
                seen.insert(delay);
            }
            assert!(seen.len() > 1, "jitter varies the delay");
        }
    }
}
