//! The tenant is part of every stream id: the same resource id in two tenants never meets.

use domain::AggregateEvent;
use domain::DomainError;
use domain::credential::CredentialEvent;
use domain::ids::stream_id;

use crate::support::{
    GITHUB_CREDENTIAL, GITHUB_SECRET, OTHER_GITHUB_SECRET, OTHER_TENANT, TENANT, ctx, establish_input, rejection,
    spawn_engine, types,
};

#[tokio::test]
async fn the_same_connection_id_in_two_tenants_is_two_connections() {
    let engine = spawn_engine().await;
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
    let engine = spawn_engine().await;
    let provider = engine.register_provider(&ctx(TENANT), "github").await;

    let result =
        engine.commands.establish_connection(&ctx(OTHER_TENANT), establish_input("conn-1", &provider, None)).await;

    assert_eq!(rejection(result), DomainError::UnknownProvider { provider_id: provider });
    assert_eq!(engine.head().await, 1);
}

#[tokio::test]
async fn a_health_check_of_another_tenants_connection_is_rejected_and_appends_nothing() {
    let engine = spawn_engine().await;
    engine.establish(&ctx(TENANT), "conn-1", None).await;
    let head = engine.head().await;

    let result = engine.commands.record_health_check(&ctx(OTHER_TENANT), "conn-1", "run-1", true).await;

    assert!(matches!(rejection(result), DomainError::InvalidTransition { .. }));
    assert_eq!(engine.head().await, head);
}

#[tokio::test]
async fn the_same_credential_ref_in_two_tenants_registers_two_credentials() {
    let engine = spawn_engine().await;
    engine.put_secret_versions(GITHUB_SECRET, 2).await;
    engine.establish(&ctx(TENANT), "conn-1", Some(GITHUB_SECRET)).await;

    engine.establish(&ctx(OTHER_TENANT), "conn-9", Some(OTHER_GITHUB_SECRET)).await;

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
    let engine = spawn_engine().await;
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
    let engine = spawn_engine().await;
    for (tenant, secret) in [(TENANT, GITHUB_SECRET), (OTHER_TENANT, OTHER_GITHUB_SECRET)] {
        engine.put_secret_versions(secret, 1).await;
        engine.establish(&ctx(tenant), "conn-1", Some(secret)).await;
        // The version the rotation verifies, staged by an operator.
        let secret = domain::secret_ref::SecretRef::parse(secret).unwrap();
        store::SecretStore::stage_pending(engine.vault.as_ref(), &secret, b"value-2", None).await.unwrap();
    }

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
    let engine = spawn_engine().await;
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

/// Whether a vault is another tenant's or nobody's, the refusal reads the same.
#[tokio::test]
async fn a_refused_ref_does_not_tell_whether_another_tenants_vault_exists() {
    let engine = spawn_engine().await;
    let provider = engine.register_provider(&ctx(OTHER_TENANT), "github").await;
    let message = |refused: DomainError| match refused {
        DomainError::Invalid { field, reason } => {
            assert_eq!(field, "credentialRef");
            reason
        }
        other => panic!("expected a refused credentialRef, got {other:?}"),
    };
    let mut refusals = Vec::new();
    for (connection, secret) in [("conn-1", "kv://factory-integration/x"), ("conn-2", "kv://no-such-vault/x")] {
        let input = establish_input(connection, &provider, Some(secret));
        let refused = rejection(engine.commands.establish_connection(&ctx(OTHER_TENANT), input).await);
        let vault = secret.split('/').nth(2).unwrap();
        refusals.push(message(refused).replace(vault, "VAULT"));
    }
    assert_eq!(refusals[0], refusals[1]);
}

/// A shared vault's secrets verify any tenant's inbound deliveries, and are never sent.
#[tokio::test]
async fn a_shared_vaults_secret_verifies_deliveries_and_is_never_sent() {
    let engine = spawn_engine().await;
    store::SecretStore::claim(engine.vault.as_ref(), "ops", &store::VaultOwner::Shared).await.unwrap();
    let provider = engine.register_provider(&ctx(OTHER_TENANT), "github").await;

    let mut verifying = establish_input("conn-1", &provider, None);
    verifying.configuration.insert("webhookSecretRef".into(), serde_json::json!("kv://ops/github-hook"));
    engine.commands.establish_connection(&ctx(OTHER_TENANT), verifying).await.unwrap();

    let sending = establish_input("conn-2", &provider, Some("kv://ops/github-token"));
    let refused = rejection(engine.commands.establish_connection(&ctx(OTHER_TENANT), sending).await);
    assert!(matches!(&refused, DomainError::Invalid { field, .. } if field == "credentialRef"), "{refused:?}");
    let mut issuing = establish_input("conn-3", &provider, None);
    issuing.configuration.insert("keyIssuerCredentialRef".into(), serde_json::json!("kv://ops/main-key"));
    let refused = rejection(engine.commands.establish_connection(&ctx(OTHER_TENANT), issuing).await);
    assert!(
        matches!(&refused, DomainError::Invalid { field, .. } if field == "configuration.keyIssuerCredentialRef"),
        "{refused:?}"
    );
}

/// One tenant may name a secret of the same name in two of its vaults: the first keeps the
/// usual id, the second's id names its vault, and each rotates on its own.
#[tokio::test]
async fn the_same_secret_name_in_two_of_a_tenants_vaults_is_two_credentials() {
    let engine = spawn_engine().await;
    let (first, second) = ("kv://factory-integration/github-booking", "kv://other-vault/github-booking");
    engine.put_secret_versions(first, 1).await;
    engine.put_secret_versions(second, 1).await;
    engine.establish(&ctx(TENANT), "conn-1", Some(first)).await;
    engine.establish(&ctx(TENANT), "conn-2", Some(second)).await;
    engine.establish(&ctx(TENANT), "conn-3", Some(second)).await;

    let qualified = "cred-github-booking~other-vault";
    for (credential, secret, connections) in
        [(GITHUB_CREDENTIAL, first, &["conn-1"][..]), (qualified, second, &["conn-2", "conn-3"][..])]
    {
        let events = engine.events(&stream_id(TENANT, credential)).await;
        assert_eq!(events[0].data["secretRef"], secret, "{credential}");
        assert_eq!(events[0].data["credentialId"], credential);
        assert_eq!(events[0].data["connectionId"], connections[0]);
    }
    for (credential, secret) in [(GITHUB_CREDENTIAL, first), (qualified, second)] {
        let secret = domain::secret_ref::SecretRef::parse(secret).unwrap();
        store::SecretStore::stage_pending(engine.vault.as_ref(), &secret, b"next", None).await.unwrap();
        let started = engine
            .commands
            .start_credential_rotation(&ctx(TENANT), credential, "Scheduled", &format!("run-{}", secret.vault))
            .await
            .unwrap();
        assert_eq!(started.new_version_ref, secret.with_version(2).to_string());
    }
}
