//! Rebuilding read models beside a live runner on the same database, as `projections rebuild`
//! does beside `serve`: the switch is atomic, reads never fail or go back, read-your-writes
//! holds across it, and the result equals a fresh build.

mod support;

use std::collections::HashMap;
use std::future::pending;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use projections::rebuild::{self, RebuildProgress};
use projections::{ProjectionError, Projections, ReadModels, rebuild_into};
use support::{Engine, WAIT, run_scenario};

fn all() -> Vec<projections::projectors::Projection> {
    projections::projectors::ALL.to_vec()
}

/// Names of the tables beside the live ones (generations under way, retired ones).
fn extra_tables(engine: &Engine) -> Vec<String> {
    let db = rusqlite::Connection::open(engine.read_models_db()).unwrap();
    db.prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE '%\\_g%' ESCAPE '\\'")
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Every index on `table` that SQLite did not create for a constraint.
fn indexes(engine: &Engine, table: &str) -> Vec<String> {
    let db = rusqlite::Connection::open(engine.read_models_db()).unwrap();
    db.prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ?1 AND sql IS NOT NULL")
        .unwrap()
        .query_map([table], |row| row.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

async fn assert_equals_a_fresh_build(engine: &Engine, live: &ReadModels) {
    let fresh_dir = tempfile::tempdir().unwrap();
    let fresh = rebuild_into(engine.store.clone(), &fresh_dir.path().join("fresh.db")).await.unwrap();
    assert!(
        live.dump().await.unwrap() == fresh.dump().await.unwrap(),
        "the rebuilt read models differ from a fresh build"
    );
}

/// A document as a reader saw it: (table, tenant, id) → its JSON.
type Seen = HashMap<(&'static str, String, String), String>;

/// Reads every resource of the acknowledged scenarios; each must be there and unchanged since
/// first seen (a scenario's resources do not change once it is acknowledged).
async fn read_acknowledged(read: &ReadModels, acknowledged: &[(String, Arc<support::Scenario>)], seen: &mut Seen) {
    for (tenant, s) in acknowledged {
        let docs = [
            ("connections", s.connection_a.clone(), json(read.connection(tenant, &s.connection_a).await)),
            ("connections", s.connection_b.clone(), json(read.connection(tenant, &s.connection_b).await)),
            ("subscriptions", s.subscription_id.clone(), json(read.subscription(tenant, &s.subscription_id).await)),
            ("deliveries", s.delivery_id.clone(), json(read.delivery(tenant, &s.delivery_id).await)),
            ("runs", s.verification_run_id.clone(), json(read.run(tenant, &s.verification_run_id).await)),
            ("runs", s.open_pr_run_id.clone(), json(read.run(tenant, &s.open_pr_run_id).await)),
            ("credentials", support::CREDENTIAL_ID.into(), json(read.credential(tenant, support::CREDENTIAL_ID).await)),
            ("providers", "prov-github".into(), json(read.provider(tenant, "prov-github").await)),
        ];
        for (table, id, doc) in docs {
            let doc = doc.unwrap_or_else(|| panic!("{table} {tenant}/{id} is missing after it was acknowledged"));
            let first = seen.entry((table, tenant.clone(), id.clone())).or_insert_with(|| doc.clone());
            assert_eq!(*first, doc, "{table} {tenant}/{id} changed after it was acknowledged");
        }
    }
}

fn json<T: serde::Serialize>(read: Result<Option<T>, ProjectionError>) -> Option<String> {
    let doc = read.unwrap_or_else(|e| panic!("a read failed: {e}"));
    doc.map(|doc| serde_json::to_string(&doc).unwrap())
}

type Acknowledged = Mutex<Vec<(String, Arc<support::Scenario>)>>;

/// Waits for the writer to have acknowledged `count` scenarios; fails if it stopped or hangs.
async fn wait_until_acknowledged(acknowledged: &Acknowledged, count: usize, writer: &tokio::task::JoinHandle<usize>) {
    let deadline = std::time::Instant::now() + WAIT;
    while acknowledged.lock().unwrap().len() < count {
        assert!(!writer.is_finished(), "the writer stopped (a read-your-writes wait failed?)");
        assert!(std::time::Instant::now() < deadline, "the writer is stuck");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rebuild_beside_a_live_runner_switches_without_a_failed_or_older_read() {
    let engine = Arc::new(Engine::start());
    let projections = engine.projections();
    let runner = engine.spawn_runner(&projections);
    // More history than one switch transaction takes, so the rebuild catches up in batches.
    for i in 0..45 {
        run_scenario(&engine, &format!("history-{i}")).await;
    }
    assert!(projections.wait_for(engine.head().await, WAIT).await);

    // The live load: scenarios acknowledged once projected (as a POST is), and a reader over
    // its own connections (as the API's GETs are).
    let acknowledged: Arc<Acknowledged> = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    // One scenario at a time: every scenario stages a version of the same vault secret.
    let one_scenario = Arc::new(tokio::sync::Mutex::new(()));
    let writer = tokio::spawn({
        let (engine, projections, acknowledged, stop, one_scenario) =
            (engine.clone(), projections.clone(), acknowledged.clone(), stop.clone(), one_scenario.clone());
        async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let tenant = format!("live-{n}");
                let scenario = {
                    let _alone = one_scenario.lock().await;
                    run_scenario(&engine, &tenant).await
                };
                assert!(projections.wait_for(engine.head().await, WAIT).await, "read-your-writes timed out");
                acknowledged.lock().unwrap().push((tenant, Arc::new(scenario)));
                n += 1;
            }
            n
        }
    });
    let reader = tokio::spawn({
        let (read, acknowledged, stop) =
            (ReadModels::open(engine.read_models_db()).unwrap(), acknowledged.clone(), stop.clone());
        async move {
            let mut seen = Seen::new();
            let mut rounds = 0;
            while !stop.load(Ordering::Relaxed) {
                let snapshot: Vec<_> = acknowledged.lock().unwrap().clone();
                read_acknowledged(&read, &snapshot, &mut seen).await;
                rounds += 1;
            }
            rounds
        }
    });
    wait_until_acknowledged(&acknowledged, 2, &writer).await;

    // After every batch of the rebuild, the live side acknowledges one more scenario: so the
    // live tables are always ahead when the rebuild switches, and the switch must apply what
    // they have and the new generation has not (else those resources would vanish).
    let mut reports = Vec::new();
    let mut ahead = 0;
    let handle = tokio::runtime::Handle::current();
    let progress = |p: RebuildProgress| {
        reports.push(p);
        let tenant = format!("ahead-{ahead}");
        ahead += 1;
        let scenario = tokio::task::block_in_place(|| {
            handle.block_on(async {
                let scenario = {
                    let _alone = one_scenario.lock().await;
                    run_scenario(&engine, &tenant).await
                };
                assert!(projections.wait_for(engine.head().await, WAIT).await);
                scenario
            })
        });
        acknowledged.lock().unwrap().push((tenant, Arc::new(scenario)));
    };
    let report =
        rebuild::rebuild(engine.store.clone(), &engine.read_models_db(), all(), progress, pending()).await.unwrap();
    assert!(report.generations.iter().all(|(_, generation)| *generation == 2), "{report:?}");
    assert_eq!(report.generations.len(), 6);
    assert!(reports.windows(2).all(|w| w[0].position <= w[1].position), "progress went back: {reports:?}");
    assert!(reports.len() > 2, "caught up in batches: {reports:?}");

    let during = acknowledged.lock().unwrap().len();
    wait_until_acknowledged(&acknowledged, during + 2, &writer).await;
    stop.store(true, Ordering::Relaxed);
    let (written, read_rounds) = (writer.await.unwrap(), reader.await.unwrap());
    assert!(written >= 4 && read_rounds > 0);
    let head = engine.head().await;
    assert!(head > report.switched_at, "the live runner wrote the new tables after the switch");
    assert!(projections.wait_for(head, WAIT).await);

    assert_equals_a_fresh_build(&engine, projections.read_models()).await;
    let statuses = rebuild::status(projections.read_models()).await.unwrap();
    assert!(statuses.iter().all(|s| s.generation == 2 && s.position == head && s.rebuild.is_none()), "{statuses:?}");
    assert!(extra_tables(&engine).is_empty(), "left behind: {:?}", extra_tables(&engine));
    assert_eq!(indexes(&engine, "connections"), ["connections_g2_by_id"]);

    // Again, quietly: generation 3, its index renamed once more, equal again; and a server
    // restarted on it creates no second index.
    let again =
        rebuild::rebuild(engine.store.clone(), &engine.read_models_db(), all(), |_| {}, pending()).await.unwrap();
    assert!(again.generations.iter().all(|(_, generation)| *generation == 3));
    assert_equals_a_fresh_build(&engine, projections.read_models()).await;
    runner.abort();
    let restarted = Projections::new(ReadModels::open(engine.read_models_db()).unwrap());
    assert_eq!(indexes(&engine, "connections"), ["connections_g3_by_id"]);
    assert_equals_a_fresh_build(&engine, restarted.read_models()).await;
}

#[tokio::test]
async fn one_projection_is_rebuilt_alone() {
    let engine = Engine::start();
    let projections = engine.projections();
    let runner = engine.spawn_runner(&projections);
    run_scenario(&engine, support::TENANT).await;
    let head = engine.head().await;
    assert!(projections.wait_for(head, WAIT).await);

    let runs = rebuild::select(&["runs".to_owned()]).unwrap();
    let report =
        rebuild::rebuild(engine.store.clone(), &engine.read_models_db(), runs, |_| {}, pending()).await.unwrap();
    assert_eq!(report.generations, [("runs", 2)]);
    assert_eq!(report.switched_at, head);
    let statuses = rebuild::status(projections.read_models()).await.unwrap();
    for s in &statuses {
        assert_eq!(s.generation, if s.name == "runs" { 2 } else { 1 }, "{statuses:?}");
        assert_eq!(s.position, head);
    }
    assert_equals_a_fresh_build(&engine, projections.read_models()).await;

    let unknown = rebuild::select(&["runs".to_owned(), "conections".to_owned()]).unwrap_err();
    assert!(unknown.to_string().contains("\"conections\"") && unknown.to_string().contains("connections, providers"));
    runner.abort();
}

#[tokio::test]
async fn a_rebuild_under_way_is_refused_and_a_dead_ones_table_is_dropped() {
    let engine = Engine::start();
    let projections = engine.projections();
    let runner = engine.spawn_runner(&projections);
    run_scenario(&engine, support::TENANT).await;
    assert!(projections.wait_for(engine.head().await, WAIT).await);
    let read = projections.read_models().clone();
    // Another process's rebuild of connections, at generation 2, beating just now.
    let now_ms = chrono::Utc::now().timestamp_millis();
    let db = rusqlite::Connection::open(engine.read_models_db()).unwrap();
    db.execute_batch("CREATE TABLE connections_g2 (tenant_id TEXT NOT NULL, id TEXT NOT NULL, doc TEXT NOT NULL, PRIMARY KEY (tenant_id, id));")
        .unwrap();
    db.execute("INSERT INTO rebuilds VALUES ('connections', 2, 7, ?1, ?1)", [now_ms]).unwrap();

    let connections = rebuild::select(&["connections".to_owned()]).unwrap();
    let refused =
        rebuild::rebuild(engine.store.clone(), &engine.read_models_db(), connections.clone(), |_| {}, pending()).await;
    assert!(
        matches!(
            refused,
            Err(ProjectionError::RebuildInProgress { projection: "connections", generation: 2, position: 7, .. })
        ),
        "{refused:?}"
    );
    let status = rebuild::status(&read).await.unwrap();
    let under_way = status.iter().find(|s| s.name == "connections").unwrap().rebuild.clone().unwrap();
    assert_eq!((under_way.generation, under_way.position, under_way.stale), (2, 7, false));

    // Silent for longer than STALE_AFTER: taken for dead, replaced by generation 3.
    let silent = now_ms - i64::try_from(rebuild::STALE_AFTER.as_millis()).unwrap() - 1000;
    db.execute("UPDATE rebuilds SET heartbeat_at_ms = ?1", [silent]).unwrap();
    assert!(rebuild::status(&read).await.unwrap().iter().any(|s| s.rebuild.as_ref().is_some_and(|r| r.stale)));
    let report =
        rebuild::rebuild(engine.store.clone(), &engine.read_models_db(), connections, |_| {}, pending()).await.unwrap();
    assert_eq!(report.generations, [("connections", 3)]);
    assert!(extra_tables(&engine).is_empty(), "left behind: {:?}", extra_tables(&engine));
    assert_equals_a_fresh_build(&engine, &read).await;
    runner.abort();
}

#[tokio::test]
async fn a_stopped_rebuild_drops_its_tables_and_leaves_the_live_ones() {
    let engine = Engine::start();
    let projections = engine.projections();
    let runner = engine.spawn_runner(&projections);
    for i in 0..45 {
        run_scenario(&engine, &format!("t-{i}")).await;
    }
    let head = engine.head().await;
    assert!(projections.wait_for(head, WAIT).await);
    runner.abort();
    let before = projections.read_models().dump().await.unwrap();

    let stopped =
        rebuild::rebuild(engine.store.clone(), &engine.read_models_db(), all(), |_| {}, std::future::ready(())).await;
    assert!(matches!(stopped, Err(ProjectionError::RebuildStopped)), "{stopped:?}");
    assert!(extra_tables(&engine).is_empty(), "left behind: {:?}", extra_tables(&engine));
    let statuses = rebuild::status(projections.read_models()).await.unwrap();
    assert!(statuses.iter().all(|s| s.generation == 1 && s.position == head && s.rebuild.is_none()), "{statuses:?}");
    assert_eq!(projections.read_models().dump().await.unwrap(), before);
}
