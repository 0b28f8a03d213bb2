//! Accepting inbound deliveries: once per vendor delivery id and connection, race-safe.

use std::collections::BTreeMap;

use commands::deliveries::delivery_id_for;
use domain::delivery::AcceptDelivery;
use domain::ids::stream_id;
use serde_json::json;

use crate::support::{OTHER_TENANT, TENANT, ctx, spawn_engine, t0, types};

fn accept(provider_delivery_id: &str) -> AcceptDelivery {
    AcceptDelivery {
        delivery_id: String::new(),
        tenant_id: String::new(),
        connection_id: "conn-1".into(),
        provider: "github".into(),
        provider_delivery_id: provider_delivery_id.into(),
        event_name: "pull_request".into(),
        normalized_event_type: "PullRequestMerged".into(),
        attributes: BTreeMap::from([("number".to_string(), json!(7))]),
        payload_digest: "sha256:00".into(),
        received_at: t0(),
    }
}

#[tokio::test]
async fn a_delivery_appends_its_acceptance_and_its_normalized_event_in_one_stream() {
    let engine = spawn_engine().await;
    let outcome = engine.commands.accept_delivery(&ctx(TENANT), accept("gh-1")).await.unwrap();
    assert!(!outcome.duplicate);
    let id = delivery_id_for(TENANT, "conn-1", "gh-1");
    assert_eq!(outcome.accepted.delivery_id, id);
    assert!(id.starts_with("del-") && id.len() == 36, "{id}");
    assert_eq!(types(&engine.history(&stream_id(TENANT, &id)).await), ["DeliveryAccepted", "PullRequestMerged"]);
}

#[tokio::test]
async fn a_repeated_delivery_returns_the_first_and_appends_nothing() {
    let engine = spawn_engine().await;
    let first = engine.commands.accept_delivery(&ctx(TENANT), accept("gh-1")).await.unwrap();
    let head = engine.head().await;
    let mut again = accept("gh-1");
    again.payload_digest = "sha256:11".into();
    let repeat = engine.commands.accept_delivery(&ctx(TENANT), again).await.unwrap();
    assert!(repeat.duplicate);
    assert_eq!(repeat.accepted, first.accepted, "the first acceptance, not the repeat's");
    assert_eq!(engine.head().await, head);
    // The same vendor id on another connection or in another tenant is another delivery.
    let mut other_connection = accept("gh-1");
    other_connection.connection_id = "conn-2".into();
    assert!(!engine.commands.accept_delivery(&ctx(TENANT), other_connection).await.unwrap().duplicate);
    assert!(!engine.commands.accept_delivery(&ctx(OTHER_TENANT), accept("gh-1")).await.unwrap().duplicate);
}

#[tokio::test]
async fn concurrent_identical_deliveries_are_accepted_exactly_once() {
    let engine = spawn_engine().await;
    for round in 0..20 {
        let id = format!("gh-race-{round}");
        let (ctx_a, ctx_b) = (ctx(TENANT), ctx(TENANT));
        let (a, b) = tokio::join!(
            engine.commands.accept_delivery(&ctx_a, accept(&id)),
            engine.commands.accept_delivery(&ctx_b, accept(&id)),
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_ne!(a.duplicate, b.duplicate, "one first, one repeat");
        assert_eq!(a.accepted.delivery_id, b.accepted.delivery_id);
        let stream = stream_id(TENANT, &delivery_id_for(TENANT, "conn-1", &id));
        assert_eq!(engine.history(&stream).await.len(), 2);
    }
}
