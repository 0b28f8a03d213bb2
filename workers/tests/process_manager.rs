//! The process manager reacts to events with deterministic run ids: a connection's first health
//! check is requested once however often its `ConnectionEstablished` is delivered, and a rotation
//! recorded by a request that died before requesting its verification run gets that run; where
//! the provider issues the credential, what leaves use is revoked there by one run.

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

/// The engine over a fresh data dir whose `factory-integration` vault is the tenant's.
async fn engine() -> Engine {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn EventStore> = Arc::new(SqliteEventStore::open(&dir.path().join("events.db")).unwrap());
    let vault = Arc::new(SqliteVault::open(&dir.path().join("vault.db"), MasterKey::generate().unwrap()).unwrap());
    let owner = store::VaultOwner::Tenant(TENANT.into());
    store::SecretStore::claim(vault.as_ref(), "factory-integration", &owner).await.unwrap();
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
    let engine = engine().await;
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
    let engine = engine().await;
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

/// A Twilio connection whose API key Twilio issues (`keyIssuerCredentialRef`); the credential's
/// first version is in the vault.
async fn establish_issued_by_twilio(engine: &Engine) -> SecretRef {
    let provider = RegisterProvider {
        tenant_id: TENANT.into(),
        key: "twilio-sms".into(),
        display_name: "Twilio SMS".into(),
        category: "Communication".into(),
        auth_model: AuthModel::ApiKey,
        api_client: "ConnectSoft.Sms.Providers.Twilio".into(),
        capabilities: vec![],
        base_url: "https://api.twilio.com".into(),
        registered_at: chrono::DateTime::UNIX_EPOCH,
    };
    engine.commands.register_provider(&ctx(), provider).await.unwrap();
    let secret = SecretRef::parse("kv://factory-integration/twilio-sms").unwrap();
    engine.vault.put(&secret, b"SKaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa:one", None).await.unwrap();
    let configuration = json!({"accountSid": "AC11111111111111111111111111111111",
        "keyIssuerCredentialRef": "kv://factory-integration/twilio-main"});
    let input = EstablishConnectionInput {
        connection_id: "conn-sms".into(),
        project_id: "proj-1".into(),
        provider_id: "prov-twilio-sms".into(),
        display_name: "SMS".into(),
        auth_mode: AuthModel::ApiKey,
        credential_ref: Some(secret.to_string()),
        configuration: configuration.as_object().cloned().unwrap(),
    };
    engine.commands.establish_connection(&ctx(), input).await.unwrap();
    secret
}

#[tokio::test]
async fn a_provider_issued_rotation_reserves_the_next_version_and_what_leaves_use_is_revoked_once() {
    let engine = engine().await;
    let secret = establish_issued_by_twilio(&engine).await;
    let manager = ProcessManager::new(engine.commands.clone());

    // The rotation records the intent and reserves version 2; nothing is issued yet.
    let started = engine
        .commands
        .start_credential_rotation(&ctx(), "cred-twilio-sms", "ScheduledRotation", "run-verify-1")
        .await
        .unwrap();
    assert_eq!(started.new_version_ref, format!("{secret}?version=2"));
    assert_eq!(started.source, RotationSource::ProviderIssued);
    assert_eq!(engine.vault.metadata(&secret).await.unwrap().unwrap().versions, 1, "nothing stored before issuance");
    let run = engine.store.read_stream(&stream_id(TENANT, "run-verify-1")).await.unwrap();
    assert_eq!(run[0].data["input"]["issuanceLabel"], "run-verify-1 cred-twilio-sms v2");

    // Its verification fails: what Twilio issued under its label is revoked, however often the
    // failure is delivered.
    engine.commands.fail_credential_rotation(&ctx(), "cred-twilio-sms", "run-verify-1", "401").await.unwrap();
    let failed = events_of(&engine, "CredentialRotationFailed").await.pop().unwrap();
    manager.handle(&failed).await.unwrap();
    manager.handle(&failed).await.unwrap();
    let revocations: Vec<_> = events_of(&engine, "RunRequested")
        .await
        .into_iter()
        .filter(|e| e.data["operation"] == "RevokeCredential")
        .collect();
    assert_eq!(revocations.len(), 1);
    assert_eq!(
        revocations[0].data["input"],
        json!({"credentialId": "cred-twilio-sms", "issuanceLabel": "run-verify-1 cred-twilio-sms v2"})
    );

    // A later rotation is promoted; retiring its previous version revokes that version's key.
    engine.commands.start_credential_rotation(&ctx(), "cred-twilio-sms", "Again", "run-verify-2").await.unwrap();
    engine.vault.stage_pending(&secret, b"SKbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb:two", Some(0)).await.unwrap();
    engine.commands.complete_credential_rotation(&ctx(), "cred-twilio-sms", "run-verify-2").await.unwrap();
    engine.commands.retire_previous_credential_version(&ctx(), "cred-twilio-sms", 1).await.unwrap();
    let retired = events_of(&engine, "CredentialVersionRetired").await.pop().unwrap();
    manager.handle(&retired).await.unwrap();
    manager.handle(&retired).await.unwrap();
    let revocations: Vec<_> = events_of(&engine, "RunRequested")
        .await
        .into_iter()
        .filter(|e| e.data["operation"] == "RevokeCredential")
        .collect();
    assert_eq!(revocations.len(), 2);
    assert_eq!(
        revocations[1].data["input"],
        json!({"credentialId": "cred-twilio-sms", "versionRef": format!("{secret}?version=1")})
    );
}

#[tokio::test]
async fn a_credential_the_provider_does_not_issue_is_never_revoked_there() {
    let engine = engine().await;
    let secret = SecretRef::parse(SECRET).unwrap();
    engine.vault.put(&secret, b"v1", None).await.unwrap();
    establish(&engine).await;
    engine.vault.stage_pending(&secret, b"v2", None).await.unwrap();
    engine.commands.start_credential_rotation(&ctx(), "cred-github-booking", "R", "run-verify-1").await.unwrap();
    engine.commands.complete_credential_rotation(&ctx(), "cred-github-booking", "run-verify-1").await.unwrap();
    engine.commands.retire_previous_credential_version(&ctx(), "cred-github-booking", 1).await.unwrap();
    let manager = ProcessManager::new(engine.commands.clone());
    for event in ["CredentialRotated", "CredentialVersionRetired"] {
        manager.handle(&events_of(&engine, event).await.pop().unwrap()).await.unwrap();
    }
    let requested = events_of(&engine, "RunRequested").await;
    assert!(requested.iter().all(|e| e.data["operation"] != "RevokeCredential"), "{requested:?}");
}

#[tokio::test]
async fn a_version_displaced_from_previous_by_a_second_rotation_is_revoked() {
    let engine = engine().await;
    let secret = establish_issued_by_twilio(&engine).await;
    for (run, value) in [("run-verify-1", "two"), ("run-verify-2", "three")] {
        engine.commands.start_credential_rotation(&ctx(), "cred-twilio-sms", "Leaked", run).await.unwrap();
        engine.vault.stage_pending(&secret, value.as_bytes(), Some(0)).await.unwrap();
        engine.commands.complete_credential_rotation(&ctx(), "cred-twilio-sms", run).await.unwrap();
    }
    let manager = ProcessManager::new(engine.commands.clone());
    // Every event of the credential, delivered late (after both promotions): each is judged by
    // the state it found, and version 1 left use once whichever event says so.
    for event in engine.store.read_stream(&stream_id(TENANT, "cred-twilio-sms")).await.unwrap() {
        manager.handle(&event).await.unwrap();
    }
    let revocations: Vec<_> = events_of(&engine, "RunRequested")
        .await
        .into_iter()
        .filter(|e| e.data["operation"] == "RevokeCredential")
        .map(|e| e.data["input"]["versionRef"].clone())
        .collect();
    assert_eq!(revocations, vec![json!(format!("{secret}?version=1"))], "only version 1 left use");
}
