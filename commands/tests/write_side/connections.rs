//! Establishing connections: the provider must be registered in the tenant; the credential the
//! connection names is registered by the first connection and linked by later ones.

use chrono::Duration;
use domain::AggregateEvent;
use domain::DomainError;
use domain::connection::{Connection, ConnectionCommand, ConnectionEvent, EstablishConnection, ProviderSnapshot};
use domain::credential::CredentialEvent;
use domain::ids::stream_id;
use domain::provider::AuthModel;
use domain::run::{AttemptOutcome, RecordAttempt, RunCommand};
use domain::secret_ref::SecretRef;

use crate::support::{
    GITHUB_CREDENTIAL, GITHUB_SECRET, TENANT, TestEngine, ctx, establish_input, rejection, spawn_engine, t0, types,
};

async fn credential_events(engine: &TestEngine, tenant_id: &str) -> Vec<CredentialEvent> {
    engine
        .events(&stream_id(tenant_id, GITHUB_CREDENTIAL))
        .await
        .into_iter()
        .map(|e| CredentialEvent::decode(&e.event_type, e.schema_version, &e.data).unwrap())
        .collect()
}

#[tokio::test]
async fn establishing_a_connection_to_an_unknown_provider_is_rejected_and_appends_nothing() {
    let engine = spawn_engine().await;
    let ctx = ctx(TENANT);

    let result =
        engine.commands.establish_connection(&ctx, establish_input("conn-1", "prov-github", Some(GITHUB_SECRET))).await;

    assert_eq!(rejection(result), DomainError::UnknownProvider { provider_id: "prov-github".into() });
    assert_eq!(engine.head().await, 0);
}

#[tokio::test]
async fn establishing_a_connection_appends_connection_established_with_the_clocks_time() {
    let engine = spawn_engine().await;
    let ctx = ctx(TENANT);
    let provider = engine.register_provider(&ctx, "github").await;

    let outcome = engine.commands.establish_connection(&ctx, establish_input("conn-1", &provider, None)).await.unwrap();

    let e = &outcome.established;
    assert_eq!(
        (e.connection_id.as_str(), e.tenant_id.as_str(), e.provider_id.as_str()),
        ("conn-1", TENANT, "prov-github")
    );
    assert_eq!(e.established_at, t0());
    let stored = engine.events(&stream_id(TENANT, "conn-1")).await;
    assert_eq!(stored.len(), 1);
    assert_eq!((stored[0].event_type.as_str(), stored[0].stream_version), ("ConnectionEstablished", 1));
    assert_eq!(
        ConnectionEvent::decode(&stored[0].event_type, 1, &stored[0].data).unwrap(),
        ConnectionEvent::ConnectionEstablished(outcome.established.clone())
    );
    assert_eq!(outcome.last_position, Some(stored[0].global_position));
}

#[tokio::test]
async fn a_connection_without_a_credential_ref_registers_no_credential() {
    let engine = spawn_engine().await;
    let ctx = ctx(TENANT);
    engine.establish(&ctx, "conn-1", None).await;
    assert!(engine.events(&stream_id(TENANT, GITHUB_CREDENTIAL)).await.is_empty());
    // The provider's registration and the connection, nothing else.
    assert_eq!(engine.head().await, 2);
}

#[tokio::test]
async fn the_first_connection_registers_its_credential_at_the_vaults_current_version() {
    let engine = spawn_engine().await;
    let ctx = ctx(TENANT);
    engine.put_secret_versions(GITHUB_SECRET, 2).await;
    let provider = engine.register_provider(&ctx, "github").await;

    let outcome = engine
        .commands
        .establish_connection(&ctx, establish_input("conn-1", &provider, Some(GITHUB_SECRET)))
        .await
        .unwrap();

    let [CredentialEvent::CredentialRegistered(registered)] = &credential_events(&engine, TENANT).await[..] else {
        panic!("expected one CredentialRegistered in {TENANT}/{GITHUB_CREDENTIAL}");
    };
    assert_eq!(registered.credential_id, GITHUB_CREDENTIAL);
    assert_eq!(registered.tenant_id, TENANT);
    assert_eq!(registered.secret_ref, SecretRef::parse(GITHUB_SECRET).unwrap());
    assert_eq!(registered.current_version, 2);
    assert_eq!(registered.connection_id, "conn-1");
    assert_eq!(registered.auth_kind, AuthModel::OAuth2ClientCredentials);
    assert_eq!(registered.registered_at, t0());
    // Read-your-writes waits for the last of the two appends.
    assert_eq!(outcome.last_position, Some(engine.head().await));
}

#[tokio::test]
async fn the_first_connection_and_its_credentials_registration_are_one_append_in_one_commit() {
    let engine = spawn_engine().await;
    let ctx = ctx(TENANT);
    let provider = engine.register_provider(&ctx, "github").await;
    let before = engine.store.stats();

    engine
        .commands
        .establish_connection(&ctx, establish_input("conn-1", &provider, Some(GITHUB_SECRET)))
        .await
        .unwrap();

    let after = engine.store.stats();
    assert_eq!((after.appends - before.appends, after.commits - before.commits), (1, 1));
    let connection = engine.events(&stream_id(TENANT, "conn-1")).await;
    let credential = engine.events(&stream_id(TENANT, GITHUB_CREDENTIAL)).await;
    assert_eq!(credential[0].global_position, connection[0].global_position + 1);
}

#[tokio::test]
async fn a_connection_another_writer_created_first_is_not_appended_twice_nor_its_credential() {
    let engine = spawn_engine().await;
    let ctx = ctx(TENANT);
    let provider = engine.register_provider(&ctx, "github").await;
    // Another process (its own state cache) established it first, with its credential.
    let other = engine.commands_at(t0());
    other.establish_connection(&ctx, establish_input("conn-1", &provider, Some(GITHUB_SECRET))).await.unwrap();
    let head = engine.head().await;

    let retried = engine
        .commands
        .establish_connection(&ctx, establish_input("conn-1", &provider, Some(GITHUB_SECRET)))
        .await
        .unwrap();

    assert_eq!(engine.head().await, head, "a retry appends nothing");
    assert_eq!(retried.established.connection_id, "conn-1");
    assert_eq!(credential_events(&engine, TENANT).await.len(), 1);
}

#[tokio::test]
async fn a_health_checks_last_attempt_and_the_connections_health_are_one_append() {
    let engine = spawn_engine().await;
    let ctx = ctx(TENANT);
    let provider = engine.register_provider(&ctx, "github").await;
    engine.commands.establish_connection(&ctx, establish_input("conn-1", &provider, None)).await.unwrap();
    engine.commands.request_run(&ctx, "run-1", "conn-1", "CheckHealth", serde_json::json!({})).await.unwrap();
    let failed = |next_attempt_at| {
        RunCommand::RecordAttempt(RecordAttempt {
            run_id: "run-1".into(),
            attempt: 1,
            worker_id: "worker-1".into(),
            started_at: t0(),
            finished_at: t0(),
            outcome: AttemptOutcome::Failed { error: "503".into(), next_attempt_at, response: None },
        })
    };
    let run_stream = stream_id(TENANT, "run-1");

    // An attempt that leaves another to come settles no health: nothing is appended together.
    let retried = failed(Some(t0() + Duration::seconds(1)));
    let together = engine.commands.record_health_check_attempt(&ctx, &run_stream, &retried, "conn-1").await;
    assert!(together.unwrap().is_none());
    assert_eq!(types(&engine.history(&stream_id(TENANT, "conn-1")).await), ["ConnectionEstablished"]);

    let before = engine.store.stats();
    let together = engine.commands.record_health_check_attempt(&ctx, &run_stream, &failed(None), "conn-1").await;
    let run = together.unwrap().expect("recorded together");

    let after = engine.store.stats();
    assert_eq!((after.appends - before.appends, after.commits - before.commits), (1, 1));
    assert!(run.state.is_finished());
    assert_eq!(types(&engine.history(&run_stream).await), ["RunRequested", "RunAttemptFailed", "RunFailed"]);
    let connection = engine.events(&stream_id(TENANT, "conn-1")).await;
    assert_eq!(connection[1].event_type, "ConnectionHealthChecked");
    // Settling the ended run afterwards finds its health recorded.
    let head = engine.head().await;
    engine.commands.record_health_check_outcome(&ctx, "conn-1", "run-1", false, Some("503")).await.unwrap();
    assert_eq!(engine.head().await, head);
}

#[tokio::test]
async fn a_credential_ref_pinned_to_a_version_registers_the_unversioned_credential_at_the_current_version() {
    let engine = spawn_engine().await;
    let ctx = ctx(TENANT);
    engine.put_secret_versions(GITHUB_SECRET, 3).await;
    let provider = engine.register_provider(&ctx, "github").await;
    let pinned = format!("{GITHUB_SECRET}?version=1");

    engine.commands.establish_connection(&ctx, establish_input("conn-1", &provider, Some(&pinned))).await.unwrap();

    let [CredentialEvent::CredentialRegistered(registered)] = &credential_events(&engine, TENANT).await[..] else {
        panic!("expected one CredentialRegistered");
    };
    assert_eq!(registered.secret_ref.to_string(), GITHUB_SECRET);
    assert_eq!(registered.current_version, 3);
}

#[tokio::test]
async fn a_credential_not_yet_in_the_vault_is_registered_at_version_1() {
    let engine = spawn_engine().await;
    let ctx = ctx(TENANT);
    engine.establish(&ctx, "conn-1", Some(GITHUB_SECRET)).await;
    let [CredentialEvent::CredentialRegistered(registered)] = &credential_events(&engine, TENANT).await[..] else {
        panic!("expected one CredentialRegistered");
    };
    assert_eq!(registered.current_version, 1);
}

#[tokio::test]
async fn a_second_connection_with_the_same_credential_ref_appends_nothing_to_the_credential() {
    let engine = spawn_engine().await;
    let ctx = ctx(TENANT);
    engine.put_secret_versions(GITHUB_SECRET, 2).await;
    engine.establish(&ctx, "conn-1", Some(GITHUB_SECRET)).await;

    engine.establish(&ctx, "conn-2", Some(GITHUB_SECRET)).await;

    // The second connection names the credential in its own stream; the credential's stream
    // does not grow with the connections sharing it.
    let events = credential_events(&engine, TENANT).await;
    let [CredentialEvent::CredentialRegistered(registered)] = &events[..] else {
        panic!("expected CredentialRegistered only, got {events:?}");
    };
    assert_eq!((registered.connection_id.as_str(), registered.current_version), ("conn-1", 2));
    let second = engine.events(&stream_id(TENANT, "conn-2")).await;
    assert_eq!(second[0].data["credentialRef"], GITHUB_SECRET);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connections_established_concurrently_with_one_credential_ref_register_it_once() {
    let engine = spawn_engine().await;
    let ctx = ctx(TENANT);
    let provider = engine.register_provider(&ctx, "github").await;

    let connections = 12;
    let tasks: Vec<_> = (0..connections)
        .map(|i| {
            let (commands, ctx, provider) = (engine.commands.clone(), ctx.clone(), provider.clone());
            tokio::spawn(async move {
                let input = establish_input(&format!("conn-{i}"), &provider, Some(GITHUB_SECRET));
                commands.establish_connection(&ctx, input).await.map(|_| ())
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }

    let history = engine.history(&stream_id(TENANT, GITHUB_CREDENTIAL)).await;
    assert_eq!(types(&history), ["CredentialRegistered"]);
    for i in 0..connections {
        let events = engine.events(&stream_id(TENANT, &format!("conn-{i}"))).await;
        assert_eq!(events[0].data["credentialRef"], GITHUB_SECRET, "conn-{i}");
    }
}

#[tokio::test]
async fn a_retried_establish_with_the_same_connection_id_returns_the_first_event_and_appends_nothing() {
    let engine = spawn_engine().await;
    let ctx = ctx(TENANT);
    let provider = engine.register_provider(&ctx, "github").await;
    let input = establish_input("conn-1", &provider, Some(GITHUB_SECRET));
    let first = engine.commands.establish_connection(&ctx, input.clone()).await.unwrap();
    let head = engine.head().await;

    // The retry runs later (another clock), as an Idempotency-Key retry after a crash would.
    let later = engine.commands_at(t0() + Duration::minutes(5));
    let retried = later.establish_connection(&ctx, input).await.unwrap();

    assert_eq!(retried.established, first.established);
    assert_eq!(retried.established.established_at, t0());
    assert_eq!(engine.head().await, head, "the retry appended");
    assert_eq!(types(&engine.history(&stream_id(TENANT, "conn-1")).await), ["ConnectionEstablished"]);
    assert_eq!(types(&engine.history(&stream_id(TENANT, GITHUB_CREDENTIAL)).await), ["CredentialRegistered"]);
}

#[tokio::test]
async fn a_crash_between_the_connection_and_its_credential_is_healed_by_the_retry() {
    let engine = spawn_engine().await;
    let ctx = ctx(TENANT);
    engine.put_secret_versions(GITHUB_SECRET, 2).await;
    let provider = engine.register_provider(&ctx, "github").await;
    // The first attempt appended the connection and stopped before the credential.
    let first_attempt = ConnectionCommand::Establish(EstablishConnection {
        connection_id: "conn-1".into(),
        tenant_id: TENANT.into(),
        project_id: "proj-booking-saas".into(),
        provider_id: provider.clone(),
        provider: Some(ProviderSnapshot { provider_id: provider.clone() }),
        display_name: "Booking SaaS GitHub".into(),
        auth_mode: AuthModel::OAuth2ClientCredentials,
        credential_ref: Some(GITHUB_SECRET.into()),
        configuration: Default::default(),
        established_at: t0(),
    });
    engine.commands.execute::<Connection>(&ctx, &stream_id(TENANT, "conn-1"), &first_attempt).await.unwrap();

    engine
        .commands
        .establish_connection(&ctx, establish_input("conn-1", &provider, Some(GITHUB_SECRET)))
        .await
        .unwrap();

    assert_eq!(types(&engine.history(&stream_id(TENANT, "conn-1")).await), ["ConnectionEstablished"]);
    let [CredentialEvent::CredentialRegistered(registered)] = &credential_events(&engine, TENANT).await[..] else {
        panic!("expected one CredentialRegistered");
    };
    assert_eq!((registered.connection_id.as_str(), registered.current_version), ("conn-1", 2));
}

#[tokio::test]
async fn a_provider_is_named_by_its_id_not_its_key() {
    let engine = spawn_engine().await;
    let ctx = ctx(TENANT);
    engine.register_provider(&ctx, "github").await;
    let result = engine.commands.establish_connection(&ctx, establish_input("conn-1", "github", None)).await;
    assert_eq!(rejection(result), DomainError::UnknownProvider { provider_id: "github".into() });
    assert_eq!(engine.head().await, 1);
}
