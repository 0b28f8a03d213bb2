//! The read side built by the real runner from the real write side over the real SQLite store.

mod support;

use std::time::Duration;

use domain::connection::Health;
use domain::ids::stream_id;
use domain::provider::AuthModel;
use domain::run::RunStatus;
use domain::{Actor, NewEvent};
use projections::{ProjectionError, Projections, ReadModels, rebuild_into};
use serde_json::json;
use store::ExpectedVersion;
use support::{CREDENTIAL_ID, Engine, SECRET_REF, TENANT, WAIT, now, run_scenario};

#[tokio::test]
async fn every_projection_shows_the_events_of_its_resources() {
    let engine = Engine::start();
    let projections = engine.projections();
    let runner = engine.spawn_runner(&projections);
    let s = run_scenario(&engine, TENANT).await;
    assert!(projections.wait_for(engine.head().await, WAIT).await);
    let read = projections.read_models();

    let provider = read.provider(TENANT, "prov-github").await.unwrap().unwrap();
    assert_eq!(
        (provider.key.as_str(), provider.status.as_str(), provider.api_client_id.as_str()),
        ("github", "Registered", "client-github-v1")
    );
    assert_eq!(provider.registered_at, now());

    let a = read.connection(TENANT, &s.connection_a).await.unwrap().unwrap();
    assert_eq!(a.status, "Active");
    assert_eq!(a.health, Health::Healthy);
    assert_eq!(a.last_checked_at, Some(now()));
    assert_eq!(a.credential_ref.as_deref(), Some(SECRET_REF));
    assert_eq!(a.auth_mode, AuthModel::OAuth2ClientCredentials);
    assert_eq!(a.configuration["organization"], "connectsoft-booking");
    // The rotation's verification run targets the credential's first connection.
    assert_eq!(a.last_run_id.as_deref(), Some(s.verification_run_id.as_str()));
    let b = read.connection(TENANT, &s.connection_b).await.unwrap().unwrap();
    assert_eq!((b.health, b.last_checked_at), (Health::Unknown, None));
    assert_eq!(b.last_run_id.as_deref(), Some(s.open_pr_run_id.as_str()));
    // The spec's GET body shape.
    let body = serde_json::to_value(&a).unwrap();
    for field in
        ["connectionId", "tenantId", "providerId", "status", "health", "lastCheckedAt", "credentialRef", "lastRunId"]
    {
        assert!(body.get(field).is_some(), "{field} missing from {body}");
    }

    // Found by id alone (webhook ingest), but never through another tenant.
    assert_eq!(read.connection_by_id(&s.connection_a).await.unwrap(), Some(a.clone()));
    assert_eq!(read.connection("another-tenant", &s.connection_a).await.unwrap(), None);
    assert_eq!(read.connection_by_id("conn-missing").await.unwrap(), None);

    let subscription = read.subscription(TENANT, &s.subscription_id).await.unwrap().unwrap();
    assert_eq!((subscription.status.as_str(), subscription.active), ("Active", true));
    assert_eq!(subscription.event_type, "DeploymentPromoted");
    assert_eq!(subscription.project_id.as_deref(), Some("proj-booking-saas"));

    let delivery = read.delivery(TENANT, &s.delivery_id).await.unwrap().unwrap();
    assert_eq!(delivery.status, "Accepted");
    assert_eq!(delivery.connection_id, s.connection_a);
    assert_eq!(delivery.normalized_event_type, "PullRequestMerged");

    let credential = read.credential(TENANT, CREDENTIAL_ID).await.unwrap().unwrap();
    assert_eq!(credential.status, "Rotating");
    assert_eq!(credential.secret_ref, SECRET_REF);
    assert_eq!((credential.current_version, credential.pending_version), (1, Some(2)));
    assert_eq!(credential.pending_version_ref.as_deref(), Some("kv://factory-integration/github-booking?version=2"));
    assert_eq!(credential.verification_run_id.as_deref(), Some(s.verification_run_id.as_str()));
    assert_eq!(credential.first_connection.as_deref(), Some(s.connection_a.as_str()));
    assert_eq!(credential.last_rotation_reason.as_deref(), Some("ScheduledRotation"));
    assert_eq!(credential.last_rotated_at, None);

    let failed = read.run(TENANT, &s.verification_run_id).await.unwrap().unwrap();
    assert_eq!(failed.status, RunStatus::Failed);
    assert_eq!(failed.operation, "VerifyCredential");
    assert_eq!(failed.connection_id, s.connection_a);
    assert_eq!(failed.attempts, 1);
    assert_eq!((failed.started_at, failed.completed_at), (Some(now()), Some(now())));
    assert_eq!(failed.last_error.as_deref(), Some("provider answered 401"));
    assert_eq!(failed.trace_id, "trace-9f1c2b7d");
    let running = read.run(TENANT, &s.open_pr_run_id).await.unwrap().unwrap();
    assert_eq!((running.status, running.attempts, running.completed_at), (RunStatus::Running, 1, None));
    assert_eq!((failed.output, running.output), (None, None), "no output before a run completes");

    assert!(projections.is_caught_up());
    runner.abort();
}

#[tokio::test]
async fn projections_rebuilt_from_scratch_equal_the_live_ones() {
    let engine = Engine::start();
    let projections = engine.projections();
    let runner = engine.spawn_runner(&projections);
    run_scenario(&engine, TENANT).await;
    run_scenario(&engine, "tenant-b").await;
    let head = engine.head().await;
    assert!(projections.wait_for(head, WAIT).await);

    let rebuilt = rebuild_into(engine.store.clone(), &engine.dir.path().join("rebuilt.db")).await.unwrap();
    let live = projections.read_models().dump().await.unwrap();
    assert_eq!(rebuilt.dump().await.unwrap(), live);
    assert!(live.values().all(|rows| !rows.is_empty()), "every table has rows: {live:?}");
    assert!(rebuilt.checkpoints().await.unwrap().iter().all(|(_, position)| *position == head));
    runner.abort();
}

#[tokio::test]
async fn a_rebuild_refuses_to_overwrite_an_existing_database() {
    let engine = Engine::start();
    engine.projections(); // creates the live read-model file
    let refused = rebuild_into(engine.store.clone(), &engine.read_models_db()).await;
    assert!(matches!(refused, Err(ProjectionError::TargetExists(_))));
}

#[tokio::test]
async fn checkpoints_and_rows_move_together_and_a_restart_applies_no_event_twice() {
    let engine = Engine::start();
    let projections = engine.projections();
    let runner = engine.spawn_runner(&projections);
    let s = run_scenario(&engine, TENANT).await;
    let head = engine.head().await;
    assert!(projections.wait_for(head, WAIT).await);
    let checkpoints = projections.read_models().checkpoints().await.unwrap();
    assert_eq!(checkpoints.len(), 6);
    assert!(checkpoints.iter().all(|(_, position)| *position == head), "{checkpoints:?}");
    runner.abort();
    assert!(runner.await.unwrap_err().is_cancelled());
    assert!(!projections.is_caught_up(), "a stopped runner is not caught up");
    drop(projections);

    // Mark the run's row behind the projector's back: any replay of its events would overwrite
    // the mark (`RunRequested` writes the whole document).
    let db = rusqlite::Connection::open(engine.read_models_db()).unwrap();
    let marked = db
        .execute("UPDATE runs SET doc = json_set(doc, '$.operation', 'marked') WHERE id = ?1", [&s.open_pr_run_id])
        .unwrap();
    assert_eq!(marked, 1);
    drop(db);

    engine.start_run_attempt(TENANT, &s.open_pr_run_id).await;
    engine.complete_run(TENANT, &s.open_pr_run_id).await;
    let restarted = engine.projections();
    let runner = engine.spawn_runner(&restarted);
    let new_head = engine.head().await;
    assert!(restarted.wait_for(new_head, WAIT).await);
    let run = restarted.read_models().run(TENANT, &s.open_pr_run_id).await.unwrap().unwrap();
    assert_eq!(run.operation, "marked", "an event before the checkpoint was applied again");
    assert_eq!((run.status, run.attempts), (RunStatus::Completed, 2));
    assert_eq!(run.output, Some(json!({"number": 7})), "the completed run's output is in its view");
    assert!(restarted.read_models().checkpoints().await.unwrap().iter().all(|(_, p)| *p == new_head));
    runner.abort();
}

#[tokio::test]
async fn a_failed_batch_leaves_neither_its_rows_nor_its_checkpoints() {
    let engine = Engine::start();
    engine.register_provider(TENANT, "github").await;
    let connection = engine.establish_connection(TENANT, None).await;
    let projections = engine.projections();
    let runner = engine.spawn_runner(&projections);
    let before = engine.head().await;
    assert!(projections.wait_for(before, WAIT).await);
    runner.abort();
    let _ = runner.await;

    // The connection's row disappears behind the projector's back; the next batch registers a
    // provider and then checks that connection's health, which can no longer be projected.
    let db = rusqlite::Connection::open(engine.read_models_db()).unwrap();
    db.execute("DELETE FROM connections WHERE id = ?1", [&connection]).unwrap();
    drop(db);
    engine.register_provider(TENANT, "gitlab").await;
    engine.commands.record_health_check(&support::ctx(TENANT), &connection, "run-h", true).await.unwrap();

    let error = engine.projections().run(engine.store.clone()).await.unwrap_err();
    assert!(matches!(error, ProjectionError::Inconsistent { .. }), "{error}");
    let read = ReadModels::open(engine.read_models_db()).unwrap();
    assert_eq!(read.provider(TENANT, "prov-gitlab").await.unwrap(), None, "the batch's rows were kept");
    assert!(read.checkpoints().await.unwrap().iter().all(|(_, p)| *p == before), "the checkpoints moved");
}

#[tokio::test]
async fn wait_for_returns_once_a_just_appended_position_is_projected() {
    let engine = Engine::start();
    let projections = engine.projections();
    let runner = engine.spawn_runner(&projections);
    let position = engine.register_provider(TENANT, "github").await;
    assert!(projections.wait_for(position, WAIT).await);
    assert!(projections.position() >= position);
    // Read-your-writes: the GET that follows sees the resource.
    assert!(projections.read_models().provider(TENANT, "prov-github").await.unwrap().is_some());
    assert!(!projections.wait_for(position + 100, Duration::from_millis(200)).await);
    runner.abort();
}

#[tokio::test]
async fn a_runner_is_caught_up_once_it_reaches_the_head_it_started_with() {
    let engine = Engine::start();
    run_scenario(&engine, TENANT).await;
    let projections = engine.projections();
    assert!(!projections.is_caught_up());
    let runner = engine.spawn_runner(&projections);
    assert!(projections.wait_for(engine.head().await, WAIT).await);
    assert!(projections.is_caught_up());
    runner.abort();
    let _ = runner.await;
    assert!(!projections.is_caught_up());
}

#[tokio::test]
async fn events_of_unknown_types_are_skipped() {
    let engine = Engine::start();
    let projections = engine.projections();
    let runner = engine.spawn_runner(&projections);
    let future = NewEvent {
        event_id: uuid::Uuid::now_v7(),
        event_type: "ConnectionRenamedInAFutureVersion".into(),
        schema_version: 1,
        tenant_id: TENANT.into(),
        occurred_at: now(),
        trace_id: "t".into(),
        correlation_id: "t".into(),
        causation_id: None,
        actor: Actor::system(),
        data: json!({"connectionId": "conn-1"}),
    };
    let appended =
        engine.store.append(&stream_id(TENANT, "conn-1"), ExpectedVersion::NoStream, vec![future]).await.unwrap();
    let position = engine.register_provider(TENANT, "github").await;
    assert!(appended[0].global_position < position);
    assert!(projections.wait_for(position, WAIT).await);
    assert!(projections.read_models().provider(TENANT, "prov-github").await.unwrap().is_some());
    runner.abort();
}

#[tokio::test]
async fn a_malformed_event_of_a_known_type_stops_the_runner() {
    let engine = Engine::start();
    let malformed = NewEvent {
        event_id: uuid::Uuid::now_v7(),
        event_type: "ProviderRegistered".into(),
        schema_version: 1,
        tenant_id: TENANT.into(),
        occurred_at: now(),
        trace_id: "t".into(),
        correlation_id: "t".into(),
        causation_id: None,
        actor: Actor::system(),
        data: json!({"providerId": 42}),
    };
    engine.store.append(&stream_id(TENANT, "prov-x"), ExpectedVersion::NoStream, vec![malformed]).await.unwrap();
    let projections = engine.projections();
    let error = tokio::time::timeout(WAIT, projections.run(engine.store.clone())).await.unwrap().unwrap_err();
    assert!(matches!(error, ProjectionError::Undecodable { global_position: 1, .. }), "{error}");
    assert!(error.is_permanent());
    assert_eq!(projections.position(), 0);
}

#[tokio::test]
async fn projections_is_usable_across_tasks() {
    fn assert_send_sync_clone<T: Send + Sync + Clone + 'static>() {}
    assert_send_sync_clone::<Projections>();
    assert_send_sync_clone::<ReadModels>();
}
