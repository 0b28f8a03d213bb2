//! `Idempotency-Key`: the same key and body proceed with the first reserved id until the first
//! request finishes, then replay its response; another body under the key is refused.

use commands::idempotency::{IdempotentRequest, is_valid_key, request_hash};
use domain::ids::stream_id;
use store::StoredResponse;

use crate::support::{OTHER_TENANT, TENANT, ctx, establish_input, spawn_engine, types};

const OPERATION: &str = "establish-connection";
const BODY: &[u8] = br#"{"projectId":"proj-booking-saas","providerId":"prov-github"}"#;

fn proceed(resource_id: &str) -> IdempotentRequest {
    IdempotentRequest::Proceed { resource_id: resource_id.into(), repeated: false }
}

fn repeat(resource_id: &str) -> IdempotentRequest {
    IdempotentRequest::Proceed { resource_id: resource_id.into(), repeated: true }
}

fn created(resource_id: &str) -> StoredResponse {
    StoredResponse {
        status: 201,
        location: Some(format!("/integrations/connections/{resource_id}")),
        body: format!(r#"{{"connectionId":"{resource_id}"}}"#).into_bytes(),
    }
}

#[tokio::test]
async fn the_first_use_of_a_key_proceeds_with_the_fresh_id() {
    let engine = spawn_engine().await;
    let begun = engine.idempotency.begin(TENANT, OPERATION, "key-1", BODY, "conn-a").await.unwrap();
    assert_eq!(begun, proceed("conn-a"));
}

#[tokio::test]
async fn a_retry_before_the_first_request_finished_proceeds_with_the_first_reserved_id() {
    let engine = spawn_engine().await;
    engine.idempotency.begin(TENANT, OPERATION, "key-1", BODY, "conn-a").await.unwrap();

    let retried = engine.idempotency.begin(TENANT, OPERATION, "key-1", BODY, "conn-b").await.unwrap();

    assert_eq!(retried, repeat("conn-a"));
}

#[tokio::test]
async fn a_retry_after_the_first_request_finished_replays_its_response() {
    let engine = spawn_engine().await;
    engine.idempotency.begin(TENANT, OPERATION, "key-1", BODY, "conn-a").await.unwrap();
    engine.idempotency.finish(TENANT, OPERATION, "key-1", &created("conn-a")).await.unwrap();

    let retried = engine.idempotency.begin(TENANT, OPERATION, "key-1", BODY, "conn-b").await.unwrap();

    assert_eq!(retried, IdempotentRequest::Replay(created("conn-a")));
}

#[tokio::test]
async fn a_second_finish_keeps_the_first_response() {
    let engine = spawn_engine().await;
    engine.idempotency.begin(TENANT, OPERATION, "key-1", BODY, "conn-a").await.unwrap();
    engine.idempotency.finish(TENANT, OPERATION, "key-1", &created("conn-a")).await.unwrap();
    engine.idempotency.finish(TENANT, OPERATION, "key-1", &created("conn-b")).await.unwrap();

    let retried = engine.idempotency.begin(TENANT, OPERATION, "key-1", BODY, "conn-c").await.unwrap();

    assert_eq!(retried, IdempotentRequest::Replay(created("conn-a")));
}

#[tokio::test]
async fn the_same_key_with_another_body_is_refused_before_and_after_the_first_request_finished() {
    let engine = spawn_engine().await;
    let other_body = br#"{"projectId":"proj-other","providerId":"prov-github"}"#;
    engine.idempotency.begin(TENANT, OPERATION, "key-1", BODY, "conn-a").await.unwrap();

    let before = engine.idempotency.begin(TENANT, OPERATION, "key-1", other_body, "conn-b").await.unwrap();
    engine.idempotency.finish(TENANT, OPERATION, "key-1", &created("conn-a")).await.unwrap();
    let after = engine.idempotency.begin(TENANT, OPERATION, "key-1", other_body, "conn-c").await.unwrap();

    assert_eq!((before, after), (IdempotentRequest::KeyReused, IdempotentRequest::KeyReused));
}

#[tokio::test]
async fn keys_are_scoped_by_tenant_and_operation() {
    let engine = spawn_engine().await;
    engine.idempotency.begin(TENANT, OPERATION, "key-1", BODY, "conn-a").await.unwrap();
    engine.idempotency.finish(TENANT, OPERATION, "key-1", &created("conn-a")).await.unwrap();

    let other_tenant = engine.idempotency.begin(OTHER_TENANT, OPERATION, "key-1", BODY, "conn-b").await.unwrap();
    let other_operation =
        engine.idempotency.begin(TENANT, "register-provider", "key-1", BODY, "prov-github").await.unwrap();

    assert_eq!(other_tenant, proceed("conn-b"));
    assert_eq!(other_operation, proceed("prov-github"));
}

#[tokio::test]
async fn a_crash_before_finish_then_a_retry_establishes_the_connection_once() {
    let engine = spawn_engine().await;
    let ctx = ctx(TENANT);
    let provider = engine.register_provider(&ctx, "github").await;

    // The first request reserves conn-a, runs, and crashes before `finish`.
    let IdempotentRequest::Proceed { resource_id, .. } =
        engine.idempotency.begin(TENANT, OPERATION, "key-1", BODY, "conn-a").await.unwrap()
    else {
        panic!("a fresh key must proceed");
    };
    engine.commands.establish_connection(&ctx, establish_input(&resource_id, &provider, None)).await.unwrap();
    let head = engine.head().await;

    // The retry draws another fresh id, but proceeds with the reserved one.
    let IdempotentRequest::Proceed { resource_id: retried_id, repeated: true } =
        engine.idempotency.begin(TENANT, OPERATION, "key-1", BODY, "conn-b").await.unwrap()
    else {
        panic!("an unfinished key must proceed");
    };
    let retried =
        engine.commands.establish_connection(&ctx, establish_input(&retried_id, &provider, None)).await.unwrap();

    assert_eq!(retried.established.connection_id, "conn-a");
    assert_eq!(engine.head().await, head, "the retry appended");
    assert_eq!(types(&engine.history(&stream_id(TENANT, "conn-a")).await), ["ConnectionEstablished"]);
    assert!(engine.events(&stream_id(TENANT, "conn-b")).await.is_empty());
}

#[test]
fn keys_must_be_1_to_255_printable_ascii_characters() {
    assert!(is_valid_key("k"));
    assert!(is_valid_key("0f8fad5b-d9cb-469f-a165-70867728950e"));
    assert!(is_valid_key(&"k".repeat(255)));
    assert!(is_valid_key("!~"), "the ends of the printable range");
    assert!(!is_valid_key(""), "empty");
    assert!(!is_valid_key(&"k".repeat(256)), "too long");
    assert!(!is_valid_key("two words"), "a space");
    assert!(!is_valid_key("tab\there"), "a control character");
    assert!(!is_valid_key("key\u{7f}"), "DEL");
    assert!(!is_valid_key("clé"), "not ASCII");
}

#[test]
fn the_request_hash_covers_the_operation_and_the_body() {
    let hash = request_hash(OPERATION, BODY);
    assert_eq!(hash, request_hash(OPERATION, BODY));
    assert_eq!(hash.len(), 64);
    assert!(hash.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_ne!(hash, request_hash("register-provider", BODY));
    assert_ne!(hash, request_hash(OPERATION, b"{}"));
    // The operation is delimited, so moving bytes across the boundary is another request.
    assert_ne!(request_hash("ab", b"c"), request_hash("a", b"bc"));
}
