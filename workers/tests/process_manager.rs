//! The process manager reacts to events with deterministic run ids: a connection's first health
//! check is requested once however often its `ConnectionEstablished` is delivered, and a rotation
//! recorded by a request that died before requesting its verification run gets that run.

use std::sync::Arc;

use commands::connections::EstablishConnectionInput;
use commands::credentials::VERIFY_CREDENTIAL_OPERATION;
use commands::{CommandContext, Commands, SystemClock};
use domain::Actor;
use domain::credential::{Credential, CredentialCommand, RotationSource, StartRotation};
use domain::ids::stream_id;
use domain::provider::{AuthModel, RegisterProvider};
use domain::secret_ref::SecretRef;
use serde_json::{Map, json};
use store::{EventStore, MasterKey, SecretStore, SqliteEventStore, SqliteVault};
use workers::EventHandler;
use workers::process_manager::{ProcessManager, first_health_check_run_id};

const TENANT: &str = "connectsoft";
const SECRET: &str = "kv://factory-integration/github-booking";

struct Engine {
    _dir: tempfile::TempDir,
    store: Arc<dyn EventStore>,
    vault: Arc<SqliteVault>,
    commands: Commands,
}

fn engine() -> Engine {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn EventStore> = Arc::new(SqliteEventStore::open(&dir.path().join("events.db")).unwrap());
    let vault = Arc::new(SqliteVault::open(&dir.path().join("vault.db"), MasterKey::generate().unwrap()).unwrap());
    let commands = Commands::new(store.clone(), vault.clone(), Arc::new(SystemClock));
    Engine { _dir: dir, store, vault, commands }
}

fn ctx() -> CommandContext {
    CommandContext::new(TENANT, "trace-1", Actor { subject: "user-1".into(), client_id: None })
}

async fn establish(engine: &Engine) -> String {
    let provider = RegisterProvider {
        tenant_id: TENANT.into(),
        key: "github".into(),
        display_name: "GitHub".into(),
        category: "SourceControl".into(),
        auth_model: AuthModel::OAuth2ClientCredentials,
        api_client: "ConnectSoft.SourceControl.Providers.GitHub".into(),
        capabilities: vec![],
        base_url: "https://api.github.com".into(),
        registered_at: chrono::DateTime::UNIX_EPOCH,
    };
    engine.commands.register_provider(&ctx(), provider).await.unwrap();
    let input = EstablishConnectionInput {
        connection_id: "conn-1".into(),
        project_id: "proj-1".into(),
        provider_id: "prov-github".into(),
        display_name: "GitHub".into(),
        auth_mode: AuthModel::OAuth2ClientCredentials,
        credential_ref: Some(SECRET.into()),
        configuration: Map::new(),
    };
    engine.commands.establish_connection(&ctx(), input).await.unwrap().established.connection_id
}

async fn events_of(engine: &Engine, event_type: &str) -> Vec<domain::EventEnvelope> {
    let all = engine.store.read_all(0, 10_000).await.unwrap();
    all.into_iter().filter(|e| e.event_type == event_type).collect()
}

#[tokio::test]
async fn a_connection_gets_one_first_health_check_however_often_its_event_comes() {
    let engine = engine();
    let connection_id = establish(&engine).await;
    let manager = ProcessManager::new(engine.commands.clone());
    let established = events_of(&engine, "ConnectionEstablished").await.pop().unwrap();
    for _ in 0..3 {
        manager.handle(&established).await.unwrap();
    }
    let requested = events_of(&engine, "RunRequested").await;
    assert_eq!(requested.len(), 1);
    let run = &requested[0];
    assert_eq!(run.stream_id, stream_id(TENANT, &first_health_check_run_id(TENANT, &connection_id)));
    assert_eq!(
        (run.data["operation"].as_str(), run.data["connectionId"].as_str()),
        (Some("CheckHealth"), Some("conn-1"))
    );
    assert_eq!(run.causation_id.as_deref(), Some(established.event_id.to_string().as_str()));
}

#[tokio::test]
async fn a_rotation_whose_request_died_before_its_run_gets_the_run_from_its_event() {
    let engine = engine();
    let secret = SecretRef::parse(SECRET).unwrap();
    engine.vault.put(&secret, b"v1", None).await.unwrap();
    establish(&engine).await;
    engine.vault.stage_pending(&secret, b"v2", None).await.unwrap();
    // The API recorded the rotation and died before requesting the run.
    let start = CredentialCommand::StartRotation(StartRotation {
        credential_id: "cred-github-booking".into(),
        reason: "ScheduledRotation".into(),
        verification_run_id: "run-verify-1".into(),
        new_version: 2,
        source: RotationSource::OperatorStaged,
        started_at: engine.commands.now(),
    });
    engine.commands.execute::<Credential>(&ctx(), &stream_id(TENANT, "cred-github-booking"), &start).await.unwrap();
    assert!(engine.store.read_stream(&stream_id(TENANT, "run-verify-1")).await.unwrap().is_empty());

    let manager = ProcessManager::new(engine.commands.clone());
    let started = events_of(&engine, "CredentialRotationStarted").await.pop().unwrap();
    manager.handle(&started).await.unwrap();
    manager.handle(&started).await.unwrap();

    let run = engine.store.read_stream(&stream_id(TENANT, "run-verify-1")).await.unwrap();
    assert_eq!(run.len(), 1, "requested once");
    assert_eq!(run[0].data["operation"], VERIFY_CREDENTIAL_OPERATION);
    assert_eq!(run[0].data["connectionId"], "conn-1");
    assert_eq!(
        run[0].data["input"],
        json!({
            "credentialId": "cred-github-booking",
            "version": 2,
            "versionRef": format!("{SECRET}?version=2"),
            "source": "OperatorStaged"
        })
    );
}
