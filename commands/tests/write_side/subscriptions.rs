//! A subscription's signing secret is a credential: creating the subscription registers it
//! (or links it), crash-safely; rotating it is generated and verified against the subscription.

use commands::credentials::VERIFY_CREDENTIAL_OPERATION;
use domain::credential::{CredentialEvent, CredentialSubscriptionLinked, RotationSource};
use domain::ids::stream_id;
use domain::provider::AuthModel;
use domain::subscription::{
    CreateWebhookSubscription, DeliverySettings, SubscriptionCommand, SubscriptionEvent, WebhookSubscription,
};
use domain::{AggregateEvent, DomainError};

use crate::support::{TENANT, TestEngine, ctx, spawn_engine, t0};

const SIGNING: &str = "kv://partner-hooks/signing";
const SIGNING_CREDENTIAL: &str = "cred-signing";

fn subscription(subscription_id: &str, signing_secret_ref: &str) -> CreateWebhookSubscription {
    CreateWebhookSubscription {
        subscription_id: subscription_id.into(),
        tenant_id: "ignored".into(),
        project_id: None,
        event_type: "DeploymentPromoted".into(),
        endpoint_url: "https://hooks.example.com/in".into(),
        signing_secret_ref: signing_secret_ref.into(),
        active: true,
        created_at: t0(),
        delivery: DeliverySettings::default(),
    }
}

async fn credential_events(engine: &TestEngine) -> Vec<CredentialEvent> {
    let stored = engine.events(&stream_id(TENANT, SIGNING_CREDENTIAL)).await;
    stored.into_iter().map(|e| CredentialEvent::decode(&e.event_type, e.schema_version, &e.data).unwrap()).collect()
}

fn linked(events: &[CredentialEvent]) -> Vec<&CredentialSubscriptionLinked> {
    events
        .iter()
        .map(|e| match e {
            CredentialEvent::CredentialSubscriptionLinked(l) => l,
            other => panic!("expected only CredentialSubscriptionLinked, got {other:?}"),
        })
        .collect()
}

#[tokio::test]
async fn the_first_subscription_registers_its_signing_credential_and_later_ones_append_nothing() {
    let engine = spawn_engine().await;
    engine.put_secret_versions(SIGNING, 2).await;
    let ctx = ctx(TENANT);
    engine.commands.create_subscription(&ctx, subscription("sub-1", SIGNING)).await.unwrap();
    engine.commands.create_subscription(&ctx, subscription("sub-2", SIGNING)).await.unwrap();
    // A retried creation (same id, as an Idempotency-Key retry reuses it) links nothing twice.
    engine.commands.create_subscription(&ctx, subscription("sub-1", SIGNING)).await.unwrap();

    let events = credential_events(&engine).await;
    let links = linked(&events);
    // sub-2 names the secret in its own stream: the shared credential's stream does not grow.
    let ids: Vec<_> = links.iter().map(|l| l.subscription_id.as_str()).collect();
    assert_eq!(ids, ["sub-1"]);
    let first = links[0];
    assert_eq!((first.credential_id.as_str(), first.tenant_id.as_str()), (SIGNING_CREDENTIAL, TENANT));
    assert_eq!((first.auth_kind, first.current_version), (AuthModel::HmacSignature, 2));
    assert_eq!(first.secret_ref.to_string(), SIGNING);
}

#[tokio::test]
async fn a_crash_between_the_subscription_and_its_credential_is_healed_by_linking_again() {
    let engine = spawn_engine().await;
    let ctx = ctx(TENANT);
    // The subscription was stored, then the process died before its credential was.
    let mut command = subscription("sub-1", SIGNING);
    command.tenant_id = TENANT.into();
    let created = engine
        .commands
        .create::<WebhookSubscription>(&ctx, &stream_id(TENANT, "sub-1"), &SubscriptionCommand::Create(command))
        .await
        .unwrap();
    let Some(SubscriptionEvent::WebhookSubscriptionCreated(created)) = created.events.into_iter().next() else {
        panic!("no WebhookSubscriptionCreated")
    };
    assert!(credential_events(&engine).await.is_empty());
    // What the process manager does with `WebhookSubscriptionCreated`, however often it comes.
    for _ in 0..3 {
        engine.commands.link_subscription_credential(&ctx, &created).await.unwrap();
    }
    assert_eq!(linked(&credential_events(&engine).await).len(), 1);
}

#[tokio::test]
async fn a_signing_secret_named_like_another_vaults_credential_is_a_credential_of_its_own() {
    let engine = spawn_engine().await;
    let ctx = ctx(TENANT);
    engine.commands.create_subscription(&ctx, subscription("sub-1", SIGNING)).await.unwrap();
    engine.commands.create_subscription(&ctx, subscription("sub-2", "kv://other-vault/signing")).await.unwrap();
    assert_eq!(linked(&credential_events(&engine).await).len(), 1, "the usual id stays the first vault's");
    let other = engine.events(&stream_id(TENANT, "cred-signing~other-vault")).await;
    assert_eq!(other.len(), 1);
    assert_eq!(other[0].data["secretRef"], "kv://other-vault/signing");
    assert_eq!(other[0].data["subscriptionId"], "sub-2");
    // A ref pinned to a version signs with that version whatever rotations do: no credential.
    let head = engine.head().await;
    engine
        .commands
        .create_subscription(&ctx, subscription("sub-3", "kv://other-vault/signing?version=1"))
        .await
        .unwrap();
    assert_eq!(engine.head().await, head + 1, "only the subscription was stored");
}

#[tokio::test]
async fn a_signing_credential_rotates_to_a_generated_version_verified_against_its_subscription() {
    let engine = spawn_engine().await;
    engine.put_secret_versions(SIGNING, 1).await;
    let ctx = ctx(TENANT);
    engine.commands.create_subscription(&ctx, subscription("sub-1", SIGNING)).await.unwrap();
    let started = engine
        .commands
        .start_credential_rotation(&ctx, SIGNING_CREDENTIAL, "ScheduledRotation", "run-rotate-1")
        .await
        .unwrap();
    assert_eq!(started.source, RotationSource::Generated);
    assert_eq!(started.new_version_ref, format!("{SIGNING}?version=2"));
    let run = engine.events(&stream_id(TENANT, "run-rotate-1")).await;
    let requested = &run[0].data;
    assert_eq!(requested["operation"], VERIFY_CREDENTIAL_OPERATION);
    assert_eq!(requested["connectionId"], "sub-1", "verified against the subscription: no connection uses it");
    assert_eq!(requested["input"]["source"], "Generated");

    // Another tenant has no such credential: its rotation is refused and stores nothing.
    let head = engine.head().await;
    let other = engine
        .commands
        .start_credential_rotation(
            &crate::support::ctx(crate::support::OTHER_TENANT),
            SIGNING_CREDENTIAL,
            "Leaked",
            "run-2",
        )
        .await;
    assert!(matches!(other, Err(commands::CommandError::Rejected(DomainError::NotFound { .. }))));
    assert_eq!(engine.head().await, head);
}

#[tokio::test]
async fn a_vendor_credential_naming_a_signing_secret_is_refused_before_the_connection_is_stored() {
    let engine = spawn_engine().await;
    engine.put_secret_versions(SIGNING, 1).await;
    let ctx = ctx(TENANT);
    let provider = engine.register_provider(&ctx, "github").await;
    engine.commands.create_subscription(&ctx, subscription("sub-1", SIGNING)).await.unwrap();
    let head = engine.head().await;
    // Its rotations would generate a `whsec_` value and promote it over the vendor's secret.
    let refused = engine
        .commands
        .establish_connection(&ctx, crate::support::establish_input("conn-1", &provider, Some(SIGNING)))
        .await;
    assert!(
        matches!(&refused, Err(commands::CommandError::Rejected(DomainError::Invalid { field, .. })) if field == "credentialRef"),
        "{:?}",
        refused.err()
    );
    assert_eq!(engine.head().await, head, "neither the connection nor a link was stored");
    // A connection that signs with the same secret is linked.
    let mut signing = crate::support::establish_input("conn-2", &provider, Some(SIGNING));
    signing.auth_mode = AuthModel::HmacSignature;
    engine.commands.establish_connection(&ctx, signing).await.unwrap();
    assert_eq!(credential_events(&engine).await.len(), 2);
}
