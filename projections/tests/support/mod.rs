//! The real write side over the real SQLite store, and a scenario that touches every aggregate.
#![allow(dead_code)] // each test binary uses its own part of the support module

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use commands::connections::EstablishConnectionInput;
use commands::{CommandContext, Commands, new_resource_id};
use domain::Actor;
use domain::delivery::AcceptDelivery;
use domain::ids::{self, stream_id};
use domain::provider::{AuthModel, RegisterProvider};
use domain::run::{Run, RunCommand, StartAttempt};
use domain::subscription::CreateWebhookSubscription;
use projections::{ProjectionError, Projections, ReadModels};
use serde_json::json;
use store::{EventStore, MasterKey, SqliteEventStore, SqliteVault};
use tempfile::TempDir;
use tokio::task::JoinHandle;

pub const TENANT: &str = "connectsoft";
pub const SECRET_REF: &str = "kv://factory-integration/github-booking";
pub const CREDENTIAL_ID: &str = "cred-github-booking";

/// Long enough for a loaded CI machine, short enough that a hang fails the test.
pub const WAIT: Duration = Duration::from_secs(10);

/// The time every command happens at, so views can be compared to exact values.
pub fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 6, 11, 9, 0, 0).unwrap()
}

/// A data directory with an event store, a vault and the write side over them.
pub struct Engine {
    pub dir: TempDir,
    pub store: Arc<dyn EventStore>,
    pub commands: Commands,
    pub vault: Arc<SqliteVault>,
}

impl Engine {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn EventStore> = Arc::new(SqliteEventStore::open(&dir.path().join("events.db")).unwrap());
        let vault = Arc::new(SqliteVault::open(&dir.path().join("vault.db"), MasterKey::generate().unwrap()).unwrap());
        let commands = Commands::new(store.clone(), vault.clone(), Arc::new(domain::clock::FixedClock(now())));
        Self { dir, store, commands, vault }
    }

    pub fn events_db(&self) -> PathBuf {
        self.dir.path().join("events.db")
    }

    pub fn read_models_db(&self) -> PathBuf {
        self.dir.path().join("readmodels.db")
    }

    /// A runner over the data directory's read-model database.
    pub fn projections(&self) -> Projections {
        Projections::new(ReadModels::open(self.read_models_db()).unwrap())
    }

    pub fn spawn_runner(&self, projections: &Projections) -> JoinHandle<Result<(), ProjectionError>> {
        let (projections, store) = (projections.clone(), self.store.clone());
        tokio::spawn(async move { projections.run(store).await })
    }

    pub async fn head(&self) -> u64 {
        self.store.head_position().await.unwrap()
    }

    pub async fn start_run_attempt(&self, tenant: &str, run_id: &str) {
        let command = RunCommand::StartAttempt(StartAttempt {
            run_id: run_id.into(),
            worker_id: "worker-test".into(),
            started_at: now(),
            // Expired at once: starting again is a takeover (the tests start a run twice).
            lease_expires_at: now(),
            max_attempts: 3,
        });
        self.commands.execute::<Run>(&ctx(tenant), &stream_id(tenant, run_id), &command).await.unwrap();
    }

    pub async fn fail_run(&self, tenant: &str, run_id: &str, error: &str) {
        let command = RunCommand::Fail { run_id: run_id.into(), error: error.into(), failed_at: now() };
        self.commands.execute::<Run>(&ctx(tenant), &stream_id(tenant, run_id), &command).await.unwrap();
    }

    pub async fn complete_run(&self, tenant: &str, run_id: &str) {
        // The attempt in flight completes.
        let history = self.commands.load::<domain::run::RunEvent>(&stream_id(tenant, run_id)).await.unwrap();
        let attempt = match <Run as domain::Decider>::fold(&history.events) {
            domain::run::RunState::Exists { attempts, .. } => attempts,
            domain::run::RunState::None => 0,
        };
        let command =
            RunCommand::Complete { run_id: run_id.into(), attempt, output: json!({"number": 7}), completed_at: now() };
        self.commands.execute::<Run>(&ctx(tenant), &stream_id(tenant, run_id), &command).await.unwrap();
    }

    pub async fn register_provider(&self, tenant: &str, key: &str) -> u64 {
        let command = RegisterProvider {
            tenant_id: tenant.into(),
            key: key.into(),
            display_name: "GitHub".into(),
            category: "SourceControl".into(),
            auth_model: AuthModel::OAuth2ClientCredentials,
            api_client: "ConnectSoft.SourceControl.GitHub".into(),
            capabilities: vec!["pull-requests.open".into()],
            base_url: "https://api.github.com".into(),
            registered_at: now(),
        };
        self.commands.register_provider(&ctx(tenant), command).await.unwrap().last_position.unwrap()
    }

    pub async fn establish_connection(&self, tenant: &str, credential_ref: Option<&str>) -> String {
        let input = EstablishConnectionInput {
            connection_id: new_resource_id(ids::CONNECTION),
            project_id: "proj-booking-saas".into(),
            provider_id: "prov-github".into(),
            display_name: "Booking SaaS GitHub".into(),
            auth_mode: AuthModel::OAuth2ClientCredentials,
            credential_ref: credential_ref.map(Into::into),
            configuration: json!({"organization": "connectsoft-booking"}).as_object().unwrap().clone(),
        };
        self.commands.establish_connection(&ctx(tenant), input).await.unwrap().established.connection_id
    }
}

pub fn ctx(tenant: &str) -> CommandContext {
    CommandContext::new(tenant, "trace-9f1c2b7d", Actor { subject: "factory".into(), client_id: Some("svc".into()) })
}

/// The ids a scenario created.
pub struct Scenario {
    pub connection_a: String,
    pub connection_b: String,
    pub subscription_id: String,
    pub delivery_id: String,
    /// The credential rotation's verification run: started once, then failed.
    pub verification_run_id: String,
    /// A run against connection B: started once, still running.
    pub open_pr_run_id: String,
}

/// Every aggregate, through the real write side: a provider, two connections sharing a
/// credential, a subscription, a delivery, a rotation (which requests a run) whose run fails,
/// another run left running, and a health check.
pub async fn run_scenario(engine: &Engine, tenant: &str) -> Scenario {
    let ctx = ctx(tenant);
    let commands = &engine.commands;
    // The tenant's own vault, as an operator gives it (`secrets claim`): SECRET_REF's for TENANT.
    let vault = if tenant == TENANT { "factory-integration".to_owned() } else { format!("{tenant}-integration") };
    let owner = store::VaultOwner::Tenant(tenant.into());
    store::SecretStore::claim(engine.vault.as_ref(), &vault, &owner).await.unwrap();
    let secret_ref = format!("kv://{vault}/github-booking");
    engine.register_provider(tenant, "github").await;
    let connection_a = engine.establish_connection(tenant, Some(&secret_ref)).await;
    let connection_b = engine.establish_connection(tenant, Some(&secret_ref)).await;

    let subscription = CreateWebhookSubscription {
        subscription_id: new_resource_id(ids::SUBSCRIPTION),
        tenant_id: tenant.into(),
        project_id: Some("proj-booking-saas".into()),
        event_type: "DeploymentPromoted".into(),
        endpoint_url: "https://hooks.partner.example/connectsoft".into(),
        signing_secret_ref: format!("kv://{vault}/partner-hook-secret"),
        active: true,
        created_at: now(),
        delivery: Default::default(),
    };
    let subscription_id = commands.create_subscription(&ctx, subscription).await.unwrap().created.subscription_id;

    let delivery = AcceptDelivery {
        delivery_id: new_resource_id(ids::DELIVERY),
        tenant_id: tenant.into(),
        connection_id: connection_a.clone(),
        provider: "github".into(),
        provider_delivery_id: "gh-12345".into(),
        event_name: "pull_request".into(),
        normalized_event_type: "PullRequestMerged".into(),
        attributes: Default::default(),
        payload_digest: "sha256:ab12".into(),
        received_at: now(),
    };
    let delivery_id = commands.accept_delivery(&ctx, delivery).await.unwrap().accepted.delivery_id;

    let verification_run_id = new_resource_id(ids::RUN);
    // The version the rotation verifies, staged by an operator.
    let secret = domain::secret_ref::SecretRef::parse(&secret_ref).unwrap();
    store::SecretStore::put(engine.vault.as_ref(), &secret, b"v1", None).await.unwrap();
    store::SecretStore::stage_pending(engine.vault.as_ref(), &secret, b"v2", None).await.unwrap();
    commands.start_credential_rotation(&ctx, CREDENTIAL_ID, "ScheduledRotation", &verification_run_id).await.unwrap();
    engine.start_run_attempt(tenant, &verification_run_id).await;
    engine.fail_run(tenant, &verification_run_id, "provider answered 401").await;

    let open_pr_run_id = new_resource_id(ids::RUN);
    commands.request_run(&ctx, &open_pr_run_id, &connection_b, "OpenPullRequest", json!({"title": "x"})).await.unwrap();
    engine.start_run_attempt(tenant, &open_pr_run_id).await;

    commands.record_health_check(&ctx, &connection_a, "run-health-1", true).await.unwrap();

    Scenario { connection_a, connection_b, subscription_id, delivery_id, verification_run_id, open_pr_run_id }
}
