//! The process manager of connections and credentials: events of one stream in, commands to
//! another out, with deterministic ids so a redelivered event repeats nothing.
//!
//! | event | command |
//! |---|---|
//! | `ConnectionEstablished` | request the connection's first `CheckHealth` run ([`first_health_check_run_id`]) |
//! | `WebhookSubscriptionCreated` | register (or link) the credential of the subscription's `signingSecretRef` (idempotent: the API did it already unless it died in between) |
//! | `CredentialRotationStarted` | request the rotation's `VerifyCredential` run (its id is in the event) |
//! | `CredentialVersionRetired` | where the connection names a `keyIssuerCredentialRef`: request the `RevokeCredential` run of the retired version |
//! | `CredentialRotated` | the same for a version it displaced from `previous` before its overlap ended, for histories written before such a version got its own `CredentialVersionRetired` (reason `Superseded`); the run id is the same either way, so nothing is revoked twice |
//! | `CredentialRotationFailed` | for a provider-issued version: request the `RevokeCredential` run of what was issued under the rotation's label |
//!
//! The API requests the verification run itself right after recording the rotation, and links a
//! subscription's signing credential right after creating the subscription; reacting to the
//! events as well closes the gap a crash between the two would leave (the run would otherwise
//! wait for a client retry that may never come, and the subscription's secret could not be
//! rotated).

use std::sync::Arc;

use async_trait::async_trait;
use commands::credentials::{Revocation, RevocationInput, issuance_label};
use commands::{CommandContext, CommandError, Commands};
use connectors::operations::CHECK_HEALTH;
use domain::connection::ConnectionEvent;
use domain::credential::{Credential, CredentialEvent, CredentialState, Rotation, RotationSource};
use domain::ids::stream_id;
use domain::subscription::SubscriptionEvent;
use domain::{AnyEvent, Decider, DomainError, EventEnvelope};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::EventHandler;
use crate::pace::Pace;

/// The process manager's consumer name.
pub const PROCESS_MANAGER_CONSUMER: &str = "process-manager";

/// The run id of a connection's health check in `slot`: the same for every worker and every
/// redelivery, so each check is requested once.
pub fn health_check_run_id(tenant_id: &str, connection_id: &str, slot: &str) -> String {
    let digest = Sha256::digest(format!("health-check\n{tenant_id}\n{connection_id}\n{slot}").as_bytes());
    let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!("{}-{hex}", domain::ids::RUN)
}

/// The run id of the check requested when the connection is established.
pub fn first_health_check_run_id(tenant_id: &str, connection_id: &str) -> String {
    health_check_run_id(tenant_id, connection_id, "established")
}

pub struct ProcessManager {
    commands: Commands,
    /// Spaces the first health checks while the API is busy (a burst of new connections owes
    /// one each); `None` requests them at once.
    health_check_pace: Option<Arc<Pace>>,
}

impl ProcessManager {
    pub fn new(commands: Commands) -> Self {
        Self { commands, health_check_pace: None }
    }

    /// Requests first health checks at `pace`.
    #[must_use]
    pub fn with_health_check_pace(mut self, pace: Arc<Pace>) -> Self {
        self.health_check_pace = Some(pace);
        self
    }

    async fn credential_rotation_started(
        &self,
        event: &EventEnvelope,
        credential_id: &str,
        rotation: Rotation,
    ) -> Result<(), CommandError> {
        let ctx = CommandContext::caused_by(event, PROCESS_MANAGER_CONSUMER);
        let loaded = self.commands.load::<CredentialEvent>(&stream_id(&event.tenant_id, credential_id)).await?;
        let state = Credential::fold(&loaded.events);
        let Some(target) = state.verification_target() else { return Ok(()) };
        self.commands.request_verification_run(&ctx, credential_id, target, &rotation).await?;
        Ok(())
    }

    /// A version left use (retired, displaced, or issued for a failed rotation): where the
    /// provider issues this credential, request the run that revokes it there.
    async fn credential_left_use(
        &self,
        event: &EventEnvelope,
        credential_id: &str,
        what: CredentialLeftUse,
    ) -> Result<(), CommandError> {
        let ctx = CommandContext::caused_by(event, PROCESS_MANAGER_CONSUMER);
        let loaded = self.commands.load::<CredentialEvent>(&stream_id(&event.tenant_id, credential_id)).await?;
        // The state as this event found it (the stream may have moved on since).
        let before = usize::try_from(event.stream_version.saturating_sub(1)).unwrap_or(usize::MAX);
        let state_before = Credential::fold(&loaded.events[..before.min(loaded.events.len())]);
        let CredentialState::Registered { first_connection, secret_ref, previous_version, started, .. } = state_before
        else {
            return Ok(());
        };
        let revocation = match what {
            CredentialLeftUse::Retired(version) => Revocation::Version(secret_ref.with_version(version)),
            CredentialLeftUse::Displaced => match previous_version {
                Some(displaced) => Revocation::Version(secret_ref.with_version(displaced)),
                None => return Ok(()),
            },
            CredentialLeftUse::IssuanceFailed { version, verification_run_id } => {
                let issued = started.iter().any(|r| {
                    r.verification_run_id == verification_run_id && r.source == RotationSource::ProviderIssued
                });
                if !issued {
                    return Ok(());
                }
                Revocation::Issuance(issuance_label(credential_id, version, &verification_run_id))
            }
        };
        let Some(connection_id) = first_connection.as_ref() else { return Ok(()) };
        if !self.commands.names_key_issuer(&ctx, Some(connection_id)).await? {
            return Ok(());
        }
        let input = RevocationInput { credential_id: credential_id.into(), revocation };
        tracing::info!(credential_id, ?input, "revoking a credential that left use at its provider");
        self.commands.request_revocation_run(&ctx, connection_id, &input).await?;
        Ok(())
    }
}

/// How a credential version left use.
enum CredentialLeftUse {
    /// Its overlap as `previous` ended.
    Retired(u32),
    /// A promotion moved `previous` on to the version it replaced, before the overlap ended.
    Displaced,
    /// The verification of a version the provider issued failed.
    IssuanceFailed { version: u32, verification_run_id: String },
}

#[async_trait]
impl EventHandler for ProcessManager {
    type Error = CommandError;

    async fn handle(&self, event: &EventEnvelope) -> Result<(), CommandError> {
        if !matches!(
            event.event_type.as_str(),
            "ConnectionEstablished"
                | "WebhookSubscriptionCreated"
                | "CredentialRotationStarted"
                | "CredentialVersionRetired"
                | "CredentialRotated"
                | "CredentialRotationFailed"
        ) {
            return Ok(());
        }
        let decoded = match AnyEvent::decode(&event.event_type, event.schema_version, &event.data) {
            Ok(decoded) => decoded,
            Err(error) => {
                tracing::error!(event_id = %event.event_id, %error, "skipping an unreadable event");
                return Ok(());
            }
        };
        let outcome = match decoded {
            AnyEvent::Connection(ConnectionEvent::ConnectionEstablished(e)) => {
                if let Some(pace) = &self.health_check_pace {
                    pace.turn().await;
                }
                let ctx = CommandContext::caused_by(event, PROCESS_MANAGER_CONSUMER);
                let run_id = first_health_check_run_id(&event.tenant_id, &e.connection_id);
                tracing::debug!(connection_id = %e.connection_id, %run_id, "scheduling the first health check");
                self.commands.request_run(&ctx, &run_id, &e.connection_id, CHECK_HEALTH, json!({})).await.map(|_| ())
            }
            AnyEvent::Subscription(SubscriptionEvent::WebhookSubscriptionCreated(e)) => {
                let ctx = CommandContext::caused_by(event, PROCESS_MANAGER_CONSUMER);
                tracing::debug!(subscription_id = %e.subscription_id, "linking the subscription's signing credential");
                self.commands.link_subscription_credential(&ctx, &e).await.map(|_| ())
            }
            AnyEvent::Credential(CredentialEvent::CredentialRotationStarted(e)) => {
                let rotation = Rotation {
                    version: e.new_version,
                    version_ref: e.new_version_ref.clone(),
                    verification_run_id: e.verification_run_id.clone(),
                    source: e.source,
                };
                self.credential_rotation_started(event, &e.credential_id, rotation).await
            }
            AnyEvent::Credential(CredentialEvent::CredentialVersionRetired(e)) => {
                self.credential_left_use(event, &e.credential_id, CredentialLeftUse::Retired(e.version)).await
            }
            AnyEvent::Credential(CredentialEvent::CredentialRotated(e)) => {
                self.credential_left_use(event, &e.credential_id, CredentialLeftUse::Displaced).await
            }
            AnyEvent::Credential(CredentialEvent::CredentialRotationFailed(e)) => match e.verification_run_id {
                Some(verification_run_id) => {
                    let what = CredentialLeftUse::IssuanceFailed { version: e.version, verification_run_id };
                    self.credential_left_use(event, &e.credential_id, what).await
                }
                None => Ok(()),
            },
            _ => Ok(()),
        };
        match outcome {
            // A refusal is final (e.g. an invalid operation): retrying would not change it.
            Err(CommandError::Rejected(error @ DomainError::Invalid { .. })) => {
                tracing::warn!(event_id = %event.event_id, %error, "the process manager's command was refused");
                Ok(())
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use commands::SystemClock;
    use commands::credentials::VERIFY_CREDENTIAL_OPERATION;
    use domain::Actor;
    use domain::subscription::{CreateWebhookSubscription, DeliverySettings, SubscriptionCommand, WebhookSubscription};
    use store::{EventStore, MasterKey, SqliteEventStore, SqliteVault};

    use super::*;

    const TENANT: &str = "connectsoft";

    async fn events_of(store: &Arc<dyn EventStore>, event_type: &str) -> Vec<EventEnvelope> {
        let all = store.read_all(0, 10_000).await.unwrap();
        all.into_iter().filter(|e| e.event_type == event_type).collect()
    }

    /// The API died between storing a subscription and registering its signing credential: the
    /// event links it, once however often it comes, and a rotation's run names the subscription.
    #[tokio::test]
    async fn a_subscription_stored_without_its_signing_credential_gets_it_from_its_event() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn EventStore> = Arc::new(SqliteEventStore::open(&dir.path().join("events.db")).unwrap());
        let vault = Arc::new(SqliteVault::open(&dir.path().join("vault.db"), MasterKey::generate().unwrap()).unwrap());
        store::SecretStore::claim(vault.as_ref(), "partner-hooks", &store::VaultOwner::Tenant(TENANT.into()))
            .await
            .unwrap();
        let commands = Commands::new(store.clone(), vault, Arc::new(SystemClock));
        let ctx = CommandContext::new(TENANT, "trace-1", Actor { subject: "user-1".into(), client_id: None });
        let create = SubscriptionCommand::Create(CreateWebhookSubscription {
            subscription_id: "sub-1".into(),
            tenant_id: TENANT.into(),
            project_id: None,
            event_type: "DeploymentPromoted".into(),
            endpoint_url: "https://hooks.example.com/in".into(),
            signing_secret_ref: "kv://partner-hooks/signing".into(),
            active: true,
            created_at: chrono::DateTime::UNIX_EPOCH,
            delivery: DeliverySettings::default(),
        });
        commands.create::<WebhookSubscription>(&ctx, &stream_id(TENANT, "sub-1"), &create).await.unwrap();
        let manager = ProcessManager::new(commands.clone());
        let created = events_of(&store, "WebhookSubscriptionCreated").await.pop().unwrap();
        for _ in 0..3 {
            manager.handle(&created).await.unwrap();
        }
        let linked = events_of(&store, "CredentialSubscriptionLinked").await;
        assert_eq!(linked.len(), 1);
        assert_eq!(linked[0].stream_id, stream_id(TENANT, "cred-signing"));
        assert_eq!(linked[0].causation_id.as_deref(), Some(created.event_id.to_string().as_str()));

        let started = domain::credential::CredentialCommand::StartRotation(domain::credential::StartRotation {
            credential_id: "cred-signing".into(),
            reason: "ScheduledRotation".into(),
            verification_run_id: "run-verify-1".into(),
            new_version: 2,
            source: RotationSource::Generated,
            started_at: chrono::DateTime::UNIX_EPOCH,
        });
        commands.execute::<Credential>(&ctx, &stream_id(TENANT, "cred-signing"), &started).await.unwrap();
        manager.handle(&events_of(&store, "CredentialRotationStarted").await.pop().unwrap()).await.unwrap();
        let [run] = &events_of(&store, "RunRequested").await[..] else { panic!("one verification run") };
        assert_eq!(
            (run.data["operation"].as_str(), run.data["connectionId"].as_str()),
            (Some(VERIFY_CREDENTIAL_OPERATION), Some("sub-1"))
        );
    }

    #[test]
    fn health_check_run_ids_are_deterministic_and_distinct() {
        let a = health_check_run_id("t", "conn-1", "7");
        assert_eq!(a, health_check_run_id("t", "conn-1", "7"));
        assert!(domain::ids::has_prefix(&a, domain::ids::RUN) && a.len() == "run-".len() + 32);
        for other in [
            health_check_run_id("t", "conn-1", "8"),
            health_check_run_id("t", "conn-2", "7"),
            health_check_run_id("u", "conn-1", "7"),
            first_health_check_run_id("t", "conn-1"),
        ] {
            assert_ne!(a, other);
        }
    }
}
