//! `projections rebuild` through the real binary, while `serve` takes writes and answers GETs
//! on the same data dir: no GET fails or shows an older state than one seen before, the
//! server goes on in the new tables, and the rebuilt read models equal a fresh build.

use crate::bus_support;
use crate::support;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bus_support::{Answer, GitHubStub};
use projections::{Projections, ReadModels, rebuild_into};
use serde_json::{Value, json};
use store::EventStore;
use store::sqlite::SqliteEventStore;
use support::{ALL_SCOPES, App, spawn_app_in};

use crate::runs_helpers::{TENANT, github_connection, start_run_cli};

fn cli(data_dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(support::BIN)
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .env("IE_LOG", "warn")
        .output()
        .expect("run integration-engine")
}

fn status(data_dir: &Path) -> Value {
    let out = cli(data_dir, &["projections", "status", "--json"]);
    assert!(out.status.success(), "status failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("status JSON")
}

fn connection_body() -> Value {
    json!({"tenantId": TENANT, "projectId": "proj-booking-saas", "providerId": "prov-github",
        "displayName": "Load", "authMode": "OAuth2ClientCredentials",
        "credentialRef": "kv://factory-integration/github-booking",
        "configuration": {"organization": "connectsoft-booking"}})
}

fn run_rank(status: &str) -> u8 {
    match status {
        "Requested" => 0,
        "Running" => 1,
        "Completed" | "Failed" => 2,
        other => panic!("unknown run status {other}"),
    }
}

/// What the writers have been told is done, and what the readers have seen.
#[derive(Default)]
struct Shared {
    /// Connections whose POST answered 201: a GET must find them (read-your-writes), always.
    connections: Vec<String>,
    /// Runs in the order `runs start` acknowledged them.
    runs: Vec<String>,
    /// Per run: the highest (status rank, attempts) a GET showed.
    seen_runs: HashMap<String, (u8, u64)>,
    /// The latest run (by start order) the GitHub connection's `lastRunId` showed.
    seen_last_run: Option<usize>,
    failures: Vec<String>,
}

async fn post_connection(app: &App, token: &str, shared: &Mutex<Shared>) {
    let r = app.post_json("/integrations/connections", token, &connection_body()).await;
    assert_eq!(r.status(), 201);
    let id = r.json::<Value>().await.unwrap()["connectionId"].as_str().unwrap().to_string();
    shared.lock().unwrap().connections.push(id);
}

/// One round of GETs: the newest connections and a spread of older ones, the runs, and the
/// connection the runs update. Every anomaly is recorded.
async fn poll_once(app: &App, token: &str, github: &str, shared: &Mutex<Shared>, round: usize) -> u64 {
    let (connections, runs) = {
        let s = shared.lock().unwrap();
        let n = s.connections.len();
        let mut picked: Vec<String> = s.connections[n.saturating_sub(8)..].to_vec();
        picked.extend((0..8).filter_map(|i| s.connections.get((round * 37 + i * 101) % n.max(1)).cloned()));
        let m = s.runs.len();
        let mut runs: Vec<(usize, String)> = (m.saturating_sub(6)..m).map(|i| (i, s.runs[i].clone())).collect();
        runs.extend((0..4).filter_map(|i| {
            let index = (round * 13 + i * 7) % m.max(1);
            s.runs.get(index).map(|id| (index, id.clone()))
        }));
        (picked, runs)
    };
    let mut gets = 0;
    for id in &connections {
        let r = app.get(&format!("/integrations/connections/{id}"), token).await;
        gets += 1;
        if r.status() != 200 {
            let status = r.status();
            let body = r.text().await.unwrap_or_default();
            shared.lock().unwrap().failures.push(format!("GET connection {id}: {status} {body}"));
        }
    }
    for (index, id) in &runs {
        let r = app.get(&format!("/integrations/runs/{id}"), token).await;
        gets += 1;
        let status = r.status();
        let mut s = shared.lock().unwrap();
        match status.as_u16() {
            200 => {
                drop(s);
                let run: Value = r.json().await.unwrap();
                let now = (run_rank(run["status"].as_str().unwrap()), run["attempts"].as_u64().unwrap());
                let mut s = shared.lock().unwrap();
                let before = s.seen_runs.entry(id.clone()).or_insert(now);
                if now < *before {
                    let message = format!("run {id} went back from {before:?} to {now:?}: {run}");
                    s.failures.push(message);
                } else {
                    *before = now;
                }
            }
            // A run started by another process reaches this server's read models within its
            // poll interval; once seen, it must stay.
            404 if !s.seen_runs.contains_key(id) => {}
            _ => s.failures.push(format!("GET run {id} (#{index}): {status}")),
        }
    }
    let r = app.get(&format!("/integrations/connections/{github}"), token).await;
    gets += 1;
    if r.status() == 200 {
        let view: Value = r.json().await.unwrap();
        let mut s = shared.lock().unwrap();
        match view["lastRunId"].as_str() {
            None if s.seen_last_run.is_some() => {
                let message = format!("lastRunId went back from #{:?} to none", s.seen_last_run);
                s.failures.push(message);
            }
            None => {}
            // A run the server requested already but whose `runs start` has not returned yet
            // (or a health check) has no rank: it tells nothing about going back.
            Some(id) => {
                if let Some(last) = s.runs.iter().position(|r| r == id) {
                    if Some(last) < s.seen_last_run {
                        let message = format!("lastRunId went back from #{:?} to #{last}", s.seen_last_run);
                        s.failures.push(message);
                    }
                    s.seen_last_run = s.seen_last_run.max(Some(last));
                }
            }
        }
    } else {
        shared.lock().unwrap().failures.push(format!("GET the GitHub connection: {}", r.status()));
    }
    gets
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rebuild_under_write_load_switches_without_a_failed_or_older_get() {
    let stub = GitHubStub::start(vec![Answer::Created]).await;
    let dir = tempfile::tempdir().unwrap();
    let app = Arc::new(spawn_app_in(dir.path(), &["--allow-private-egress"]));
    let token = app.token(TENANT, ALL_SCOPES);
    let github = github_connection(&app, &token, &stub.url).await;
    let shared = Arc::new(Mutex::new(Shared::default()));

    // A history for the rebuild to replay: connections, each also linking the shared credential.
    let mut batch = tokio::task::JoinSet::new();
    for _ in 0..12 {
        let (app, token, shared) = (app.clone(), token.clone(), shared.clone());
        batch.spawn(async move {
            for _ in 0..60 {
                post_connection(&app, &token, &shared).await;
            }
        });
    }
    while let Some(done) = batch.join_next().await {
        done.unwrap();
    }

    // The live load: POSTs, runs started by another process (which the server executes), GETs.
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = tokio::task::JoinSet::new();
    for _ in 0..3 {
        let (app, token, shared, stop) = (app.clone(), token.clone(), shared.clone(), stop.clone());
        load.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                post_connection(&app, &token, &shared).await;
            }
        });
    }
    {
        let (data_dir, shared, stop, github) = (dir.path().to_path_buf(), shared.clone(), stop.clone(), github.clone());
        load.spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let (dir, github) = (data_dir.clone(), github.clone());
                let key = format!("load-{n}");
                let run = tokio::task::spawn_blocking(move || {
                    start_run_cli(
                        &dir,
                        &github,
                        "OpenPullRequest",
                        &json!({"repo": "r", "title": "t", "head": "h"}),
                        &key,
                    )
                })
                .await
                .unwrap();
                shared.lock().unwrap().runs.push(run);
                n += 1;
            }
        });
    }
    let gets = Arc::new(AtomicU64::new(0));
    for poller in 0..2 {
        let (app, token, shared, stop, github, gets) =
            (app.clone(), token.clone(), shared.clone(), stop.clone(), github.clone(), gets.clone());
        load.spawn(async move {
            let mut round = poller;
            while !stop.load(Ordering::Relaxed) {
                gets.fetch_add(poll_once(&app, &token, &github, &shared, round).await, Ordering::Relaxed);
                round += 2;
            }
        });
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let head_before = status(dir.path())["storeHead"].as_u64().unwrap();
    let gets_before = gets.load(Ordering::Relaxed);
    let data_dir = dir.path().to_path_buf();
    let started = Instant::now();
    let rebuilt =
        tokio::task::spawn_blocking(move || cli(&data_dir, &["projections", "rebuild", "--all"])).await.unwrap();
    let took = started.elapsed();
    let gets_during = gets.load(Ordering::Relaxed) - gets_before;
    let summary = String::from_utf8_lossy(&rebuilt.stdout).to_string();
    assert!(rebuilt.status.success(), "rebuild failed: {}{summary}", String::from_utf8_lossy(&rebuilt.stderr));
    assert!(rebuilt.stderr.is_empty(), "no progress bar when stderr is not a terminal: {:?}", rebuilt.stderr);
    let switched_at: u64 = summary
        .lines()
        .find_map(|line| line.strip_prefix("switched at position "))
        .and_then(|rest| rest.split(':').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no switch position in {summary:?}"));
    assert!(summary.contains("connections → generation 2") && summary.contains("events/s"), "{summary}");
    assert!(switched_at >= head_before, "switched at {switched_at}, before the head {head_before} it started from");
    assert!(gets_during > 0, "no GET ran during the {took:?} rebuild");

    // The server goes on in the new tables.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, Ordering::Relaxed);
    while let Some(done) = load.join_next().await {
        done.unwrap();
    }
    {
        let s = shared.lock().unwrap();
        assert!(
            s.failures.is_empty(),
            "{} anomalies, e.g. {:#?}",
            s.failures.len(),
            &s.failures[..s.failures.len().min(5)]
        );
        assert!(s.runs.len() >= 2 && s.seen_runs.len() >= 2, "the runs load did not run: {:?}", s.runs);
    }

    // The server catches up in the new tables (the store keeps moving a little: runs finish,
    // connections' health checks run).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = status(dir.path());
        let projections = s["projections"].as_array().unwrap();
        for p in projections {
            assert_eq!(p["generation"], 2, "{s}");
            assert_eq!(p["rebuild"], Value::Null, "{s}");
        }
        if projections.iter().all(|p| p["lag"] == 0) {
            assert!(s["storeHead"].as_u64().unwrap() > switched_at, "no write after the switch: {s}");
            break;
        }
        assert!(Instant::now() < deadline, "the server did not catch up: {s}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The rebuilt read models, continued by the server, equal a fresh build from the store.
    // Compared at one position: the server is stopped, and what it had not applied yet is
    // applied by the same runner it uses.
    let acknowledged = shared.lock().unwrap().connections.len();
    Arc::try_unwrap(app).ok().expect("every load task has ended").kill();
    let store: Arc<dyn EventStore> = Arc::new(SqliteEventStore::open(&dir.path().join("events.db")).unwrap());
    let head = store.head_position().await.unwrap();
    let live = Projections::new(ReadModels::open(dir.path().join("readmodels.db")).unwrap());
    let runner = tokio::spawn({
        let (live, store) = (live.clone(), store.clone());
        async move { live.run(store).await }
    });
    assert!(live.wait_for(head, Duration::from_secs(30)).await, "the live read models did not reach {head}");
    runner.abort();
    let fresh_dir = tempfile::tempdir().unwrap();
    let fresh = rebuild_into(store.clone(), &fresh_dir.path().join("fresh.db")).await.unwrap();
    let (live_dump, fresh_dump) = (live.read_models().dump().await.unwrap(), fresh.dump().await.unwrap());
    assert_eq!(live_dump["connections"].len(), acknowledged + 1);
    assert!(live_dump == fresh_dump, "the rebuilt read models differ from a fresh build");

    // Nothing left behind: no generation or retired table beside the live ones.
    let db = rusqlite::Connection::open(dir.path().join("readmodels.db")).unwrap();
    let leftovers: Vec<String> = db
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND (name LIKE '%\\_g%' ESCAPE '\\')")
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
}

#[test]
fn rebuild_and_status_name_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let missing = cli(dir.path(), &["projections", "status"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no event store at"), "{missing:?}");

    let app = spawn_app_in(dir.path(), &[]);
    let unknown = cli(dir.path(), &["projections", "rebuild", "conections"]);
    assert!(!unknown.status.success());
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert!(stderr.contains("\"conections\"") && stderr.contains("connections, providers"), "{stderr}");
    let neither = cli(dir.path(), &["projections", "rebuild"]);
    assert!(!neither.status.success(), "a rebuild of nothing named");

    let one = cli(dir.path(), &["projections", "rebuild", "runs"]);
    assert!(one.status.success(), "{}", String::from_utf8_lossy(&one.stderr));
    let text = cli(dir.path(), &["projections", "status"]);
    let table = String::from_utf8_lossy(&text.stdout);
    let runs = table.lines().find(|l| l.starts_with("runs ")).unwrap_or_else(|| panic!("{table}"));
    let columns: Vec<&str> = runs.split_whitespace().collect();
    assert_eq!((columns[1], columns.len(), columns[4]), ("2", 5, "-"), "generation 2, no rebuild under way: {table}");
    let connections = table.lines().find(|l| l.starts_with("connections ")).unwrap();
    assert_eq!(connections.split_whitespace().nth(1), Some("1"), "{table}");
    drop(app);
}
