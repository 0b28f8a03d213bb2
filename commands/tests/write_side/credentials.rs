//! Rotating a credential: the rotation is recorded on the credential, then its verification run
//! is requested; one rotation at a time, and a retried request completes what the first began.

use domain::AggregateEvent;
use domain::DomainError;
use domain::credential::{Credential, CredentialCommand, RotationSource, StartRotation};
use domain::ids::stream_id;
use domain::run::RunEvent;
use domain::secret_ref::SecretRef;
use serde_json::json;
use store::SecretStore;

use commands::credentials::VERIFY_CREDENTIAL_OPERATION;

use crate::support::{GITHUB_CREDENTIAL, GITHUB_SECRET, TENANT, TestEngine, ctx, rejection, spawn_engine, t0, types};

/// A credential at vault version 2, used by `conn-1` (which registered it) and `conn-2`, with
/// version 3 staged by an operator.
async fn engine_with_a_shared_credential() -> TestEngine {
    let engine = spawn_engine().await;
    let ctx = ctx(TENANT);
    engine.put_secret_versions(GITHUB_SECRET, 2).await;
    engine.establish(&ctx, "conn-1", Some(GITHUB_SECRET)).await;
    engine.establish(&ctx, "conn-2", Some(GITHUB_SECRET)).await;
    engine.vault.stage_pending(&secret(), b"value-3", None).await.unwrap();
    engine
}

fn secret() -> SecretRef {
    SecretRef::parse(GITHUB_SECRET).unwrap()
}

async fn run_events(engine: &TestEngine, tenant_id: &str, run_id: &str) -> Vec<RunEvent> {
    engine
        .events(&stream_id(tenant_id, run_id))
        .await
        .into_iter()
        .map(|e| RunEvent::decode(&e.event_type, e.schema_version, &e.data).unwrap())
        .collect()
}

#[tokio::test]
async fn rotating_a_credential_answers_the_next_versions_ref() {
    let engine = engine_with_a_shared_credential().await;

    let outcome = engine
        .commands
        .start_credential_rotation(&ctx(TENANT), GITHUB_CREDENTIAL, "ScheduledRotation", "run-verify-1")
        .await
        .unwrap();

    assert_eq!(outcome.credential_id, GITHUB_CREDENTIAL);
    assert_eq!(outcome.new_version_ref, format!("{GITHUB_SECRET}?version=3"));
    assert_eq!(outcome.verification_run_id, "run-verify-1");
    assert_eq!(outcome.last_position, Some(engine.head().await));
    let credential = engine.events(&stream_id(TENANT, GITHUB_CREDENTIAL)).await;
    let started = credential.last().unwrap();
    // Registered by the first connection; the second appended nothing to the credential.
    assert_eq!((started.event_type.as_str(), started.stream_version), ("CredentialRotationStarted", 2));
    assert_eq!((started.data["fromVersion"].clone(), started.data["newVersion"].clone()), (json!(2), json!(3)));
    assert_eq!(started.data["reason"], json!("ScheduledRotation"));
}

#[tokio::test]
async fn rotating_a_credential_requests_its_verification_run_against_the_first_linked_connection() {
    let engine = engine_with_a_shared_credential().await;
    let ctx = ctx(TENANT);

    engine
        .commands
        .start_credential_rotation(&ctx, GITHUB_CREDENTIAL, "ScheduledRotation", "run-verify-1")
        .await
        .unwrap();

    let [RunEvent::RunRequested(requested)] = &run_events(&engine, TENANT, "run-verify-1").await[..] else {
        panic!("expected one RunRequested in {TENANT}/run-verify-1");
    };
    assert_eq!(requested.operation, VERIFY_CREDENTIAL_OPERATION);
    assert_eq!(requested.operation, "VerifyCredential");
    assert_eq!((requested.run_id.as_str(), requested.tenant_id.as_str()), ("run-verify-1", TENANT));
    assert_eq!(requested.connection_id, "conn-1");
    assert_eq!(
        requested.input,
        json!({
            "credentialId": GITHUB_CREDENTIAL,
            "version": 3,
            "versionRef": format!("{GITHUB_SECRET}?version=3"),
            "source": "OperatorStaged"
        })
    );
    assert_eq!((requested.trace_id.as_str(), requested.requested_at), (ctx.trace_id.as_str(), t0()));
}

#[tokio::test]
async fn a_second_rotation_with_another_run_is_rejected_while_one_is_in_flight() {
    let engine = engine_with_a_shared_credential().await;
    let ctx = ctx(TENANT);
    engine
        .commands
        .start_credential_rotation(&ctx, GITHUB_CREDENTIAL, "ScheduledRotation", "run-verify-1")
        .await
        .unwrap();
    let head = engine.head().await;

    let result = engine.commands.start_credential_rotation(&ctx, GITHUB_CREDENTIAL, "Leaked", "run-verify-2").await;

    assert_eq!(
        rejection(result),
        DomainError::RotationInFlight { credential_id: GITHUB_CREDENTIAL.into(), pending_version: 3 }
    );
    assert_eq!(engine.head().await, head);
    assert!(engine.events(&stream_id(TENANT, "run-verify-2")).await.is_empty());
}

#[tokio::test]
async fn a_rotation_retried_with_the_same_run_id_answers_the_same_and_appends_nothing() {
    let engine = engine_with_a_shared_credential().await;
    let ctx = ctx(TENANT);
    let first = engine
        .commands
        .start_credential_rotation(&ctx, GITHUB_CREDENTIAL, "ScheduledRotation", "run-verify-1")
        .await
        .unwrap();
    let head = engine.head().await;

    let retried = engine
        .commands
        .start_credential_rotation(&ctx, GITHUB_CREDENTIAL, "ScheduledRotation", "run-verify-1")
        .await
        .unwrap();

    assert_eq!(
        (retried.new_version_ref, retried.verification_run_id),
        (first.new_version_ref, first.verification_run_id)
    );
    assert_eq!(engine.head().await, head, "the retry appended");
}

#[tokio::test]
async fn a_rotation_retried_after_it_was_promoted_answers_the_same_and_appends_nothing() {
    let engine = engine_with_a_shared_credential().await;
    let ctx = ctx(TENANT);
    let first = engine
        .commands
        .start_credential_rotation(&ctx, GITHUB_CREDENTIAL, "ScheduledRotation", "run-verify-1")
        .await
        .unwrap();
    engine.commands.complete_credential_rotation(&ctx, GITHUB_CREDENTIAL, "run-verify-1").await.unwrap();
    let head = engine.head().await;

    // The client never saw the first answer (a crash) and retries after the rotation finished.
    let retried = engine
        .commands
        .start_credential_rotation(&ctx, GITHUB_CREDENTIAL, "ScheduledRotation", "run-verify-1")
        .await
        .unwrap();

    assert_eq!(retried.new_version_ref, first.new_version_ref);
    assert_eq!(engine.head().await, head, "the retry started a second rotation");
}

#[tokio::test]
async fn a_crash_between_starting_the_rotation_and_requesting_its_run_is_healed_by_the_retry() {
    let engine = engine_with_a_shared_credential().await;
    let ctx = ctx(TENANT);
    // The first attempt recorded the rotation and stopped before requesting the run.
    let start = CredentialCommand::StartRotation(StartRotation {
        credential_id: GITHUB_CREDENTIAL.into(),
        reason: "ScheduledRotation".into(),
        verification_run_id: "run-verify-1".into(),
        new_version: 3,
        source: RotationSource::OperatorStaged,
        started_at: t0(),
    });
    engine.commands.execute::<Credential>(&ctx, &stream_id(TENANT, GITHUB_CREDENTIAL), &start).await.unwrap();
    assert!(engine.events(&stream_id(TENANT, "run-verify-1")).await.is_empty());

    let retried = engine
        .commands
        .start_credential_rotation(&ctx, GITHUB_CREDENTIAL, "ScheduledRotation", "run-verify-1")
        .await
        .unwrap();
    let head = engine.head().await;
    // And once more, as a client that did not get the answer would.
    engine
        .commands
        .start_credential_rotation(&ctx, GITHUB_CREDENTIAL, "ScheduledRotation", "run-verify-1")
        .await
        .unwrap();

    assert_eq!(retried.new_version_ref, format!("{GITHUB_SECRET}?version=3"));
    assert_eq!(retried.last_position, Some(head), "the run requested by the retry is what to wait for");
    assert_eq!(engine.head().await, head, "the second retry appended");
    assert_eq!(types(&engine.history(&stream_id(TENANT, "run-verify-1")).await), ["RunRequested"]);
    let rotations = types(&engine.history(&stream_id(TENANT, GITHUB_CREDENTIAL)).await)
        .into_iter()
        .filter(|t| *t == "CredentialRotationStarted")
        .count();
    assert_eq!(rotations, 1);
}

#[tokio::test]
async fn rotating_an_unknown_credential_is_not_found_and_appends_nothing() {
    let engine = spawn_engine().await;
    let result =
        engine.commands.start_credential_rotation(&ctx(TENANT), GITHUB_CREDENTIAL, "ScheduledRotation", "run-1").await;
    assert!(matches!(rejection(result), DomainError::NotFound { kind: "credential", id } if id == GITHUB_CREDENTIAL));
    assert_eq!(engine.head().await, 0);
}

#[tokio::test]
async fn a_vendor_issued_credential_without_a_staged_version_cannot_rotate() {
    let engine = spawn_engine().await;
    engine.put_secret_versions(GITHUB_SECRET, 1).await;
    engine.establish(&ctx(TENANT), "conn-1", Some(GITHUB_SECRET)).await;
    let head = engine.head().await;
    let result =
        engine.commands.start_credential_rotation(&ctx(TENANT), GITHUB_CREDENTIAL, "ScheduledRotation", "run-1").await;
    assert!(
        matches!(rejection(result), DomainError::InvalidTransition { state, .. } if state.contains("--stage pending"))
    );
    assert_eq!(engine.head().await, head);
    assert_eq!(engine.vault.metadata(&secret()).await.unwrap().unwrap().versions, 1, "nothing was staged");
}

#[tokio::test]
async fn success_promotes_in_the_vault_and_failure_keeps_current_and_discards_pending() {
    let engine = engine_with_a_shared_credential().await;
    let ctx = ctx(TENANT);
    engine.commands.start_credential_rotation(&ctx, GITHUB_CREDENTIAL, "Scheduled", "run-verify-1").await.unwrap();
    engine.commands.complete_credential_rotation(&ctx, GITHUB_CREDENTIAL, "run-verify-1").await.unwrap();
    // Delivered again: nothing more happens.
    let head = engine.head().await;
    engine.commands.complete_credential_rotation(&ctx, GITHUB_CREDENTIAL, "run-verify-1").await.unwrap();
    assert_eq!(engine.head().await, head);
    let m = engine.vault.metadata(&secret()).await.unwrap().unwrap();
    assert_eq!((m.current_version, m.previous_version, m.pending_version), (3, Some(2), None));
    assert_eq!(engine.vault.get(&secret()).await.unwrap().value, b"value-3");

    engine.vault.stage_pending(&secret(), b"value-4", None).await.unwrap();
    engine.commands.start_credential_rotation(&ctx, GITHUB_CREDENTIAL, "Leaked", "run-verify-2").await.unwrap();
    engine
        .commands
        .fail_credential_rotation(&ctx, GITHUB_CREDENTIAL, "run-verify-2", "401 Unauthorized")
        .await
        .unwrap();
    let m = engine.vault.metadata(&secret()).await.unwrap().unwrap();
    assert_eq!((m.current_version, m.pending_version), (3, None), "current stays, the failed version is unstaged");
    let history = engine.events(&stream_id(TENANT, GITHUB_CREDENTIAL)).await;
    let failed = history.last().unwrap();
    assert_eq!(failed.event_type, "CredentialRotationFailed");
    assert_eq!((failed.data["version"].clone(), failed.data["reason"].clone()), (json!(4), json!("401 Unauthorized")));

    // After the overlap the previous version is retired, once.
    engine.commands.retire_previous_credential_version(&ctx, GITHUB_CREDENTIAL, 2).await.unwrap();
    let head = engine.head().await;
    engine.commands.retire_previous_credential_version(&ctx, GITHUB_CREDENTIAL, 2).await.unwrap();
    assert_eq!(engine.head().await, head);
    assert_eq!(engine.vault.metadata(&secret()).await.unwrap().unwrap().previous_version, None);
    assert_eq!(
        types(&engine.history(&stream_id(TENANT, GITHUB_CREDENTIAL)).await).last(),
        Some(&"CredentialVersionRetired")
    );
}

#[tokio::test]
async fn an_engine_owned_signing_secret_gets_a_generated_pending_version() {
    let engine = spawn_engine().await;
    let ctx = ctx(TENANT);
    engine.put_secret_versions(GITHUB_SECRET, 1).await;
    engine.establish_with_auth(&ctx, "conn-1", GITHUB_SECRET, domain::provider::AuthModel::HmacSignature).await;
    let outcome =
        engine.commands.start_credential_rotation(&ctx, GITHUB_CREDENTIAL, "ScheduledRotation", "run-1").await.unwrap();
    assert_eq!(outcome.new_version_ref, format!("{GITHUB_SECRET}?version=2"));
    assert_eq!(outcome.source, RotationSource::Generated);
    let pending = engine.vault.get(&secret().with_version(2)).await.unwrap();
    assert!(String::from_utf8(pending.value).unwrap().starts_with("whsec_"));
    assert_eq!(engine.vault.get(&secret()).await.unwrap().version, 1, "not current before it is verified");
    let started = engine.events(&stream_id(TENANT, GITHUB_CREDENTIAL)).await.pop().unwrap();
    assert_eq!(started.data["source"], json!("Generated"));
    assert!(!started.data.to_string().contains("whsec_"), "the value never enters an event");
}

#[tokio::test]
async fn a_put_during_a_rotation_fails_the_rotation_instead_of_rolling_the_secret_back() {
    let engine = engine_with_a_shared_credential().await;
    let ctx = ctx(TENANT);
    engine.commands.start_credential_rotation(&ctx, GITHUB_CREDENTIAL, "Scheduled", "run-verify-1").await.unwrap();
    // While version 3 is verified, an operator writes version 4 as current (`secrets put`).
    assert_eq!(engine.vault.put(&secret(), b"value-4", None).await.unwrap(), 4);

    engine.commands.complete_credential_rotation(&ctx, GITHUB_CREDENTIAL, "run-verify-1").await.unwrap();

    assert_eq!(engine.vault.get(&secret()).await.unwrap().value, b"value-4", "rolled back to the verified version");
    let m = engine.vault.metadata(&secret()).await.unwrap().unwrap();
    assert_eq!((m.current_version, m.pending_version), (4, None));
    let history = engine.events(&stream_id(TENANT, GITHUB_CREDENTIAL)).await;
    assert!(history.iter().all(|e| e.event_type != "CredentialRotated"), "{history:?}");
    let failed = history.last().unwrap();
    assert_eq!(failed.event_type, "CredentialRotationFailed");
    assert_eq!(failed.data["version"], json!(3));
    let reason = failed.data["reason"].as_str().unwrap();
    assert!(reason.contains("current version 4 is newer than the verified version 3"), "{reason}");
    assert!(!reason.contains("value-"), "no value in the reason");

    // Delivered again: nothing more happens, and a new rotation can start.
    let head = engine.head().await;
    engine.commands.complete_credential_rotation(&ctx, GITHUB_CREDENTIAL, "run-verify-1").await.unwrap();
    assert_eq!(engine.head().await, head);
    engine.vault.stage_pending(&secret(), b"value-5", Some(0)).await.unwrap();
    let next =
        engine.commands.start_credential_rotation(&ctx, GITHUB_CREDENTIAL, "Again", "run-verify-2").await.unwrap();
    assert_eq!(next.new_version_ref, format!("{GITHUB_SECRET}?version=5"));
}

#[tokio::test]
async fn a_second_rotation_within_the_overlap_retires_the_superseded_previous_version() {
    let engine = engine_with_a_shared_credential().await;
    let ctx = ctx(TENANT);
    engine.commands.start_credential_rotation(&ctx, GITHUB_CREDENTIAL, "Scheduled", "run-verify-1").await.unwrap();
    engine.commands.complete_credential_rotation(&ctx, GITHUB_CREDENTIAL, "run-verify-1").await.unwrap();
    engine.vault.stage_pending(&secret(), b"value-4", Some(0)).await.unwrap();
    engine.commands.start_credential_rotation(&ctx, GITHUB_CREDENTIAL, "Leaked", "run-verify-2").await.unwrap();

    engine.commands.complete_credential_rotation(&ctx, GITHUB_CREDENTIAL, "run-verify-2").await.unwrap();

    let history = engine.events(&stream_id(TENANT, GITHUB_CREDENTIAL)).await;
    let [.., retired, rotated] = &history[..] else { panic!("{history:?}") };
    assert_eq!(retired.event_type, "CredentialVersionRetired");
    assert_eq!((retired.data["version"].clone(), retired.data["reason"].clone()), (json!(2), json!("Superseded")));
    assert_eq!(rotated.event_type, "CredentialRotated");
    assert_eq!((rotated.data["version"].clone(), rotated.data["previousVersion"].clone()), (json!(4), json!(3)));
    let m = engine.vault.metadata(&secret()).await.unwrap().unwrap();
    assert_eq!((m.current_version, m.previous_version), (4, Some(3)));
    // The first rotation's retirement, when it falls due, finds nothing left to do.
    let head = engine.head().await;
    engine.commands.retire_previous_credential_version(&ctx, GITHUB_CREDENTIAL, 2).await.unwrap();
    assert_eq!(engine.head().await, head);
    assert_eq!(engine.vault.metadata(&secret()).await.unwrap().unwrap().previous_version, Some(3));
}
