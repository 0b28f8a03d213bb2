//! Registering providers: keys are unique within a tenant.

use domain::DomainError;
use domain::ids::stream_id;
use domain::provider::AuthModel;

use crate::support::{OTHER_TENANT, TENANT, ctx, register_provider, rejection, spawn_engine, t0, types};

#[tokio::test]
async fn registering_a_provider_appends_provider_registered_under_prov_key_in_the_callers_tenant() {
    let engine = spawn_engine().await;

    let outcome = engine.commands.register_provider(&ctx(TENANT), register_provider("github")).await.unwrap();

    let r = &outcome.registered;
    assert_eq!((r.provider_id.as_str(), r.key.as_str()), ("prov-github", "github"));
    // Tenant and time come from the caller's context and the clock, not from the command.
    assert_eq!((r.tenant_id.as_str(), r.registered_at), (TENANT, t0()));
    assert_eq!(r.auth_model, AuthModel::OAuth2ClientCredentials);
    assert_eq!(r.api_client_id, "client-github-v1");
    let stored = engine.events(&stream_id(TENANT, "prov-github")).await;
    assert_eq!(types(&engine.history(&stream_id(TENANT, "prov-github")).await), ["ProviderRegistered"]);
    assert_eq!(outcome.last_position, Some(stored[0].global_position));
}

#[tokio::test]
async fn registering_a_provider_key_twice_in_a_tenant_is_rejected_as_key_taken() {
    let engine = spawn_engine().await;
    let ctx = ctx(TENANT);
    engine.commands.register_provider(&ctx, register_provider("github")).await.unwrap();

    let mut again = register_provider("github");
    again.display_name = "GitHub Enterprise".into();
    let result = engine.commands.register_provider(&ctx, again).await;

    assert_eq!(rejection(result), DomainError::ProviderKeyTaken { key: "github".into() });
    assert_eq!(engine.head().await, 1);
}

#[tokio::test]
async fn the_same_provider_key_in_another_tenant_is_registered() {
    let engine = spawn_engine().await;
    engine.commands.register_provider(&ctx(TENANT), register_provider("github")).await.unwrap();

    let other = engine.commands.register_provider(&ctx(OTHER_TENANT), register_provider("github")).await.unwrap();

    assert_eq!(
        (other.registered.tenant_id.as_str(), other.registered.provider_id.as_str()),
        (OTHER_TENANT, "prov-github")
    );
    assert_eq!(types(&engine.history(&stream_id(TENANT, "prov-github")).await), ["ProviderRegistered"]);
    assert_eq!(types(&engine.history(&stream_id(OTHER_TENANT, "prov-github")).await), ["ProviderRegistered"]);
}

#[tokio::test]
async fn a_malformed_provider_key_is_rejected_and_appends_nothing() {
    let engine = spawn_engine().await;
    let result = engine.commands.register_provider(&ctx(TENANT), register_provider("Git Hub")).await;
    assert!(matches!(rejection(result), DomainError::Invalid { field, .. } if field == "key"));
    assert_eq!(engine.head().await, 0);
}

#[tokio::test]
async fn a_retried_registration_finds_its_own_provider_but_a_different_one_is_still_key_taken() {
    let engine = spawn_engine().await;
    let ctx = ctx(TENANT);
    let first = engine.commands.register_provider(&ctx, register_provider("github")).await.unwrap();

    // The same request again (its answer was lost): the registration it made is its answer.
    let retried = engine.commands.register_provider_or_find_same(&ctx, register_provider("github")).await.unwrap();
    assert_eq!(retried.registered, first.registered);
    assert_eq!(engine.head().await, 1, "the retry appended");

    let mut different = register_provider("github");
    different.base_url = "https://github.example.com/api/v3".into();
    let result = engine.commands.register_provider_or_find_same(&ctx, different).await;
    assert_eq!(rejection(result), DomainError::ProviderKeyTaken { key: "github".into() });
}
