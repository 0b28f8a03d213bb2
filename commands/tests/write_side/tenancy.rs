//! The tenant is part of every stream id: the same resource id in two tenants never meets.

use domain::AggregateEvent;
use domain::DomainError;
use domain::credential::CredentialEvent;
use domain::ids::stream_id;

use crate::support::{
    GITHUB_CREDENTIAL, GITHUB_SECRET, OTHER_TENANT, TENANT, ctx, establish_input, rejection, spawn_engine, types,
};

#[tokio::test]
async fn the_same_connection_id_in_two_tenants_is_two_connections() {
    let engine = spawn_engine();
    engine.establish(&ctx(TENANT), "conn-1", None).await;

    // Not "already exists": the other tenant's conn-1 is another stream.
    engine.establish(&ctx(OTHER_TENANT), "conn-1", None).await;

    for tenant in [TENANT, OTHER_TENANT] {
        let events = engine.events(&stream_id(tenant, "conn-1")).await;
        assert_eq!(events.len(), 1, "{tenant}");
        assert_eq!(events[0].tenant_id, tenant);
        assert_eq!(events[0].data["tenantId"], tenant);
    }
}

#[tokio::test]
async fn a_provider_registered_in_another_tenant_is_unknown() {
    let engine = spawn_engine();
    let provider = engine.register_provider(&ctx(TENANT), "github").await;

    let result =
        engine.commands.establish_connection(&ctx(OTHER_TENANT), establish_input("conn-1", &provider, None)).await;

    assert_eq!(rejection(result), DomainError::UnknownProvider { provider_id: provider });
    assert_eq!(engine.head().await, 1);
}

#[tokio::test]
async fn a_health_check_of_another_tenants_connection_is_rejected_and_appends_nothing() {
    let engine = spawn_engine();
    engine.establish(&ctx(TENANT), "conn-1", None).await;
    let head = engine.head().await;

    let result = engine.commands.record_health_check(&ctx(OTHER_TENANT), "conn-1", "run-1", true).await;

    assert!(matches!(rejection(result), DomainError::InvalidTransition { .. }));
    assert_eq!(engine.head().await, head);
}

#[tokio::test]
async fn the_same_credential_ref_in_two_tenants_registers_two_credentials() {
    let engine = spawn_engine();
    engine.put_secret_versions(GITHUB_SECRET, 2).await;
    engine.establish(&ctx(TENANT), "conn-1", Some(GITHUB_SECRET)).await;

    engine.establish(&ctx(OTHER_TENANT), "conn-9", Some(GITHUB_SECRET)).await;

    for (tenant, connection) in [(TENANT, "conn-1"), (OTHER_TENANT, "conn-9")] {
        let events = engine.events(&stream_id(tenant, GITHUB_CREDENTIAL)).await;
        let [stored] = &events[..] else { panic!("{tenant}: expected one credential event, got {events:?}") };
        let CredentialEvent::CredentialRegistered(registered) =
            CredentialEvent::decode(&stored.event_type, stored.schema_version, &stored.data).unwrap()
        else {
            panic!("{tenant}: expected CredentialRegistered, got {}", stored.event_type);
        };
        assert_eq!((registered.tenant_id.as_str(), registered.connection_id.as_str()), (tenant, connection));
    }
}

#[tokio::test]
async fn rotating_another_tenants_credential_is_not_found_and_appends_nothing() {
    let engine = spawn_engine();
    engine.establish(&ctx(TENANT), "conn-1", Some(GITHUB_SECRET)).await;
    let head = engine.head().await;

    let result = engine
        .commands
        .start_credential_rotation(&ctx(OTHER_TENANT), GITHUB_CREDENTIAL, "Leaked", "run-verify-1")
        .await;

    assert!(matches!(rejection(result), DomainError::NotFound { kind: "credential", .. }));
    assert_eq!(engine.head().await, head);
}

#[tokio::test]
async fn the_same_verification_run_id_in_two_tenants_is_two_runs() {
    let engine = spawn_engine();
    engine.put_secret_versions(GITHUB_SECRET, 1).await;
    for tenant in [TENANT, OTHER_TENANT] {
        engine.establish(&ctx(tenant), "conn-1", Some(GITHUB_SECRET)).await;
    }
    // The version both rotations verify, staged by an operator.
    let secret = domain::secret_ref::SecretRef::parse(GITHUB_SECRET).unwrap();
    store::SecretStore::stage_pending(engine.vault.as_ref(), &secret, b"value-2", None).await.unwrap();

    for tenant in [TENANT, OTHER_TENANT] {
        engine
            .commands
            .start_credential_rotation(&ctx(tenant), GITHUB_CREDENTIAL, "Scheduled", "run-verify-1")
            .await
            .unwrap();
    }

    for tenant in [TENANT, OTHER_TENANT] {
        let history = engine.history(&stream_id(tenant, "run-verify-1")).await;
        assert_eq!(types(&history), ["RunRequested"], "{tenant}");
        assert_eq!(engine.events(&stream_id(tenant, "run-verify-1")).await[0].data["tenantId"], tenant);
    }
}

#[tokio::test]
async fn another_tenants_vault_cannot_be_named_by_a_connection_or_a_subscription() {
    use store::SecretStore;
    let engine = spawn_engine();
    engine.vault.claim("factory-integration", TENANT).await.unwrap();
    let provider = engine.register_provider(&ctx(OTHER_TENANT), "github").await;
    let head = engine.head().await;

    let mut stolen = establish_input("conn-1", &provider, Some(GITHUB_SECRET));
    let refused = rejection(engine.commands.establish_connection(&ctx(OTHER_TENANT), stolen.clone()).await);
    assert!(matches!(&refused, DomainError::Invalid { field, .. } if field == "credentialRef"), "{refused:?}");

    stolen.credential_ref = None;
    stolen.configuration.insert("webhookSecretRef".into(), serde_json::json!("kv://factory-integration/hook"));
    let refused = rejection(engine.commands.establish_connection(&ctx(OTHER_TENANT), stolen).await);
    assert!(
        matches!(&refused, DomainError::Invalid { field, .. } if field == "configuration.webhookSecretRef"),
        "{refused:?}"
    );

    let subscription = domain::subscription::CreateWebhookSubscription {
        subscription_id: "sub-1".into(),
        tenant_id: OTHER_TENANT.into(),
        project_id: None,
        event_type: "X".into(),
        endpoint_url: "https://example.com".into(),
        signing_secret_ref: "kv://factory-integration/partner".into(),
        active: true,
        created_at: crate::support::t0(),
        delivery: Default::default(),
    };
    let refused = rejection(engine.commands.create_subscription(&ctx(OTHER_TENANT), subscription).await);
    assert!(matches!(&refused, DomainError::Invalid { field, .. } if field == "signingSecretRef"), "{refused:?}");
    assert_eq!(engine.head().await, head, "a refused command appended");

    // The owner may.
    let own_provider = engine.register_provider(&ctx(TENANT), "github").await;
    engine
        .commands
        .establish_connection(&ctx(TENANT), establish_input("conn-2", &own_provider, Some(GITHUB_SECRET)))
        .await
        .unwrap();
}
