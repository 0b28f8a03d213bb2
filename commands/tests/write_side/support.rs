//! The engine under test (`spawn_engine`), fixed times, contexts and request builders.

use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use commands::connections::EstablishConnectionInput;
use commands::idempotency::Idempotency;
use commands::{Clock, CommandContext, CommandError, Commands};
use domain::provider::{AuthModel, RegisterProvider};
use domain::secret_ref::SecretRef;
use domain::{Actor, DomainError, EventEnvelope};
use serde_json::Map;
use store::{EventStore, MasterKey, SecretStore, SqliteEventStore, SqliteIdempotencyStore, SqliteVault};
use tempfile::TempDir;

pub const TENANT: &str = "connectsoft";
pub const OTHER_TENANT: &str = "globex";
/// The spec's example credential and the credential id it is known by.
pub const GITHUB_SECRET: &str = "kv://factory-integration/github-booking";
pub const GITHUB_CREDENTIAL: &str = "cred-github-booking";
/// The other tenant's secret of the same name, in its own vault.
pub const OTHER_GITHUB_SECRET: &str = "kv://globex-integration/github-booking";
/// The vaults each tenant owns in every test engine.
const VAULTS: [(&str, &str); 4] = [
    ("factory-integration", TENANT),
    ("partner-hooks", TENANT),
    ("other-vault", TENANT),
    ("globex-integration", OTHER_TENANT),
];
const MASTER_KEY: &str = "8f1c2a3b4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8";

/// `now` never moves, so every time a command stamps is known in advance.
pub use domain::clock::FixedClock;

/// The time the engine's clock shows, unless a test asks for another.
pub fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 6, 11, 9, 0, 0).unwrap()
}

/// The write side over real adapters in a temporary data dir (removed on drop).
pub struct TestEngine {
    pub commands: Commands,
    pub store: Arc<SqliteEventStore>,
    pub vault: Arc<SqliteVault>,
    pub idempotency: Idempotency,
    _data_dir: TempDir,
}

pub async fn spawn_engine() -> TestEngine {
    let data_dir = tempfile::tempdir().unwrap();
    let engine_db = data_dir.path().join("engine.db");
    let store = Arc::new(SqliteEventStore::open(&engine_db).unwrap());
    let vault = Arc::new(
        SqliteVault::open(&data_dir.path().join("vault.db"), MasterKey::from_hex(MASTER_KEY).unwrap()).unwrap(),
    );
    for (name, tenant) in VAULTS {
        vault.claim(name, &store::VaultOwner::Tenant(tenant.into())).await.unwrap();
    }
    let clock: Arc<dyn Clock> = Arc::new(FixedClock(t0()));
    let idempotency = Idempotency::new(Arc::new(SqliteIdempotencyStore::open(&engine_db).unwrap()), clock.clone());
    let commands = Commands::new(store.clone(), vault.clone(), clock);
    TestEngine { commands, store, vault, idempotency, _data_dir: data_dir }
}

impl TestEngine {
    /// Another writer over the same store and vault whose clock shows `now`.
    pub fn commands_at(&self, now: DateTime<Utc>) -> Commands {
        Commands::new(self.store.clone(), self.vault.clone(), Arc::new(FixedClock(now)))
    }

    pub async fn events(&self, stream_id: &str) -> Vec<EventEnvelope> {
        self.store.read_stream(stream_id).await.unwrap()
    }

    /// `(stream version, event type)` of every event of a stream.
    pub async fn history(&self, stream_id: &str) -> Vec<(u64, String)> {
        self.events(stream_id).await.into_iter().map(|e| (e.stream_version, e.event_type)).collect()
    }

    /// The global position of the store's last event: unchanged means nothing was appended.
    pub async fn head(&self) -> u64 {
        self.store.head_position().await.unwrap()
    }

    /// Stores `versions` versions of `secret` in the vault.
    pub async fn put_secret_versions(&self, secret: &str, versions: u32) {
        let secret = SecretRef::parse(secret).unwrap();
        for n in 1..=versions {
            self.vault.put(&secret, format!("value-{n}").as_bytes(), None).await.unwrap();
        }
    }

    /// Registers the provider `key` in the context's tenant and returns its id.
    pub async fn register_provider(&self, ctx: &CommandContext, key: &str) -> String {
        let outcome = self.commands.register_provider(ctx, register_provider(key)).await.unwrap();
        outcome.registered.provider_id
    }

    /// Registers `github` in the tenant and establishes `connection_id` with `credential_ref`.
    pub async fn establish(&self, ctx: &CommandContext, connection_id: &str, credential_ref: Option<&str>) {
        let provider_id = domain::ids::provider_id("github");
        if self.events(&domain::ids::stream_id(&ctx.tenant_id, &provider_id)).await.is_empty() {
            self.register_provider(ctx, "github").await;
        }
        self.commands
            .establish_connection(ctx, establish_input(connection_id, &provider_id, credential_ref))
            .await
            .unwrap();
    }

    /// [`Self::establish`] with a credential of another auth kind.
    pub async fn establish_with_auth(
        &self,
        ctx: &CommandContext,
        connection_id: &str,
        credential_ref: &str,
        auth_mode: AuthModel,
    ) {
        let provider_id = domain::ids::provider_id("github");
        if self.events(&domain::ids::stream_id(&ctx.tenant_id, &provider_id)).await.is_empty() {
            self.register_provider(ctx, "github").await;
        }
        let mut input = establish_input(connection_id, &provider_id, Some(credential_ref));
        input.auth_mode = auth_mode;
        self.commands.establish_connection(ctx, input).await.unwrap();
    }
}

/// A caller in `tenant_id`, under trace `trace-1`.
pub fn ctx(tenant_id: &str) -> CommandContext {
    CommandContext::new(tenant_id, "trace-1", Actor { subject: "user-1".into(), client_id: Some("factory".into()) })
}

/// The spec's provider registration, under `key`. Tenant and time are left for the use case to
/// fill in from the context and the clock.
pub fn register_provider(key: &str) -> RegisterProvider {
    RegisterProvider {
        tenant_id: "ignored".into(),
        key: key.into(),
        display_name: "GitHub".into(),
        category: "SourceControl".into(),
        auth_model: AuthModel::OAuth2ClientCredentials,
        api_client: "ConnectSoft.Scm.Providers.GitHub".into(),
        capabilities: vec!["pull_requests.open".into()],
        base_url: "https://api.github.com".into(),
        registered_at: DateTime::UNIX_EPOCH,
    }
}

pub fn establish_input(
    connection_id: &str,
    provider_id: &str,
    credential_ref: Option<&str>,
) -> EstablishConnectionInput {
    EstablishConnectionInput {
        connection_id: connection_id.into(),
        project_id: "proj-booking-saas".into(),
        provider_id: provider_id.into(),
        display_name: "Booking SaaS GitHub".into(),
        auth_mode: AuthModel::OAuth2ClientCredentials,
        credential_ref: credential_ref.map(Into::into),
        configuration: Map::new(),
    }
}

/// The decider's rejection in `result`; any other outcome fails the test.
pub fn rejection<T>(result: Result<T, CommandError>) -> DomainError {
    match result {
        Err(CommandError::Rejected(e)) => e,
        Err(e) => panic!("expected a rejection, got the error {e:?}"),
        Ok(_) => panic!("expected a rejection, the command succeeded"),
    }
}

/// Event types, in order, of `history`.
pub fn types(history: &[(u64, String)]) -> Vec<&str> {
    history.iter().map(|(_, t)| t.as_str()).collect()
}
