//! Integration runs end to end through the real binary, in the embedded mode (no Kafka): a
//! `StartRun` fed with `integration-engine runs start`, executed by the in-process run executor
//! against a local server speaking GitHub's REST API, and read back with
//! `GET /integrations/runs/{runId}`.

use crate::bus_support;
use crate::support;

use std::path::Path;
use std::time::Duration;

use bus_support::{Answer, GitHubStub};
use serde_json::{Value, json};
use support::{ALL_SCOPES, App, spawn_app_in};

use crate::runs_helpers::{GITHUB_TOKEN, TENANT, github_connection, start_run_cli, wait_for_run};

fn pr_input() -> Value {
    json!({"repo": "booking-saas", "title": "Promote release 1.4", "head": "release/1.4", "body": "Automated"})
}

/// `serve` on a fresh data dir with fast retries and private egress (the stub is on loopback).
fn serve(dir: &Path, extra: &[&str]) -> App {
    let mut args = vec!["--allow-private-egress", "--run-first-backoff-ms", "100", "--run-max-backoff-ms", "400"];
    args.extend_from_slice(extra);
    spawn_app_in(dir, &args)
}

#[tokio::test]
async fn embedded_mode_runs_a_started_run_to_completion_against_github() {
    let stub = GitHubStub::start(vec![Answer::Created]).await;
    let dir = tempfile::tempdir().unwrap();
    let app = serve(dir.path(), &[]);
    let token = app.token(TENANT, ALL_SCOPES);
    let connection = github_connection(&app, &token, &stub.url).await;

    let run_id = start_run_cli(dir.path(), &connection, "OpenPullRequest", &pr_input(), "promote-1.4");
    let run = wait_for_run(&app, &token, &run_id, &["Completed", "Failed"], Duration::from_secs(30)).await;

    assert_eq!(run["status"], "Completed", "{run}");
    assert_eq!(run["runId"], run_id.as_str());
    assert_eq!(run["connectionId"], connection.as_str());
    assert_eq!(run["operation"], "OpenPullRequest");
    assert_eq!(run["attempts"], 1);
    assert!(run["startedAt"].is_string() && run["completedAt"].is_string(), "{run}");
    assert!(run["traceId"].as_str().unwrap().starts_with("trace-"));
    assert_eq!(run["lastError"], Value::Null);
    // GitHub's documented request: POST /repos/{owner}/{repo}/pulls, bearer credential, headers.
    let requests = stub.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request["owner"], "connectsoft-booking", "owner from the connection's organization");
    assert_eq!(request["repo"], "booking-saas");
    assert_eq!(request["authorization"], format!("Bearer {GITHUB_TOKEN}"));
    assert_eq!(request["accept"], "application/vnd.github+json");
    assert_eq!(request["apiVersion"], "2022-11-28");
    assert_eq!(
        request["body"],
        json!({"title": "Promote release 1.4", "head": "release/1.4", "base": "main", "body": "Automated"})
    );
    // The same idempotency key is the same run: nothing new happens.
    assert_eq!(start_run_cli(dir.path(), &connection, "OpenPullRequest", &pr_input(), "promote-1.4"), run_id);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(stub.requests().len(), 1);
    // The credential never reaches an event or a log line (events hold the kv:// ref only).
    let events = std::fs::read(dir.path().join("events.db")).unwrap();
    assert!(!String::from_utf8_lossy(&events).contains(GITHUB_TOKEN));
}

#[tokio::test]
async fn failed_attempts_are_retried_with_backoff_until_one_succeeds() {
    let stub = GitHubStub::start(vec![Answer::BadGateway, Answer::BadGateway, Answer::Created]).await;
    let dir = tempfile::tempdir().unwrap();
    let app = serve(dir.path(), &[]);
    let token = app.token(TENANT, ALL_SCOPES);
    let connection = github_connection(&app, &token, &stub.url).await;

    let run_id = start_run_cli(dir.path(), &connection, "OpenPullRequest", &pr_input(), "retried");
    let run = wait_for_run(&app, &token, &run_id, &["Completed", "Failed"], Duration::from_secs(30)).await;

    assert_eq!(run["status"], "Completed", "{run}");
    assert_eq!(run["attempts"], 3);
    assert!(run["lastError"].as_str().unwrap().contains("502"), "the last failed attempt's error: {run}");
    assert_eq!(stub.requests().len(), 3);
}

#[tokio::test]
async fn a_permanent_error_fails_the_run_without_retrying() {
    let stub = GitHubStub::start(vec![Answer::ValidationFailed]).await;
    let dir = tempfile::tempdir().unwrap();
    let app = serve(dir.path(), &[]);
    let token = app.token(TENANT, ALL_SCOPES);
    let connection = github_connection(&app, &token, &stub.url).await;

    let run_id = start_run_cli(dir.path(), &connection, "OpenPullRequest", &pr_input(), "duplicate-pr");
    let run = wait_for_run(&app, &token, &run_id, &["Completed", "Failed"], Duration::from_secs(30)).await;

    assert_eq!(run["status"], "Failed", "{run}");
    assert_eq!(run["attempts"], 1);
    let error = run["lastError"].as_str().unwrap();
    assert!(error.contains("422") && error.contains("A pull request already exists"), "{error}");
    assert!(run["completedAt"].is_string());
    assert_eq!(stub.requests().len(), 1);
}

#[tokio::test]
async fn attempts_that_outlive_their_timeout_fail_and_the_run_stops_at_the_attempt_limit() {
    let stub = GitHubStub::start(vec![Answer::SlowCreated(Duration::from_secs(5))]).await;
    let dir = tempfile::tempdir().unwrap();
    let app = serve(dir.path(), &["--run-attempt-timeout-ms", "300", "--run-max-attempts", "2"]);
    let token = app.token(TENANT, ALL_SCOPES);
    let connection = github_connection(&app, &token, &stub.url).await;

    let run_id = start_run_cli(dir.path(), &connection, "OpenPullRequest", &pr_input(), "slow");
    let run = wait_for_run(&app, &token, &run_id, &["Completed", "Failed"], Duration::from_secs(30)).await;

    assert_eq!(run["status"], "Failed", "{run}");
    assert_eq!(run["attempts"], 2);
    assert!(run["lastError"].as_str().unwrap().contains("timed out after 300 ms"), "{run}");
}

#[tokio::test]
async fn unknown_operations_fail_the_run_with_a_clear_error_and_the_executor_goes_on() {
    let stub = GitHubStub::start(vec![Answer::Created]).await;
    let dir = tempfile::tempdir().unwrap();
    let app = serve(dir.path(), &[]);
    let token = app.token(TENANT, ALL_SCOPES);
    let connection = github_connection(&app, &token, &stub.url).await;

    let unknown = start_run_cli(dir.path(), &connection, "DeleteRepository", &json!({}), "unknown-op");
    let next = start_run_cli(dir.path(), &connection, "OpenPullRequest", &pr_input(), "after-unknown");

    let failed = wait_for_run(&app, &token, &unknown, &["Failed"], Duration::from_secs(30)).await;
    assert_eq!(failed["attempts"], 0);
    let error = failed["lastError"].as_str().unwrap();
    assert!(error.contains("DeleteRepository is not supported for provider github"), "{error}");
    assert!(error.contains("OpenPullRequest") && error.contains("http.request"), "names what is supported: {error}");
    wait_for_run(&app, &token, &next, &["Completed"], Duration::from_secs(30)).await;
}

#[tokio::test]
async fn a_crashed_servers_run_is_taken_over_after_its_lease_and_never_runs_twice_at_once() {
    // The first attempt hangs for 2 s; the server executing it is killed (SIGKILL) meanwhile.
    let stub = GitHubStub::start(vec![Answer::SlowCreated(Duration::from_secs(2)), Answer::Created]).await;
    let dir = tempfile::tempdir().unwrap();
    let lease = ["--run-attempt-timeout-ms", "3000", "--run-lease-grace-ms", "1000"];
    let app = serve(dir.path(), &lease);
    let token = app.token(TENANT, ALL_SCOPES);
    let connection = github_connection(&app, &token, &stub.url).await;
    let run_id = start_run_cli(dir.path(), &connection, "OpenPullRequest", &pr_input(), "crash");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while stub.requests().is_empty() {
        assert!(std::time::Instant::now() < deadline, "the first attempt never reached GitHub");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    app.kill();

    // The restarted server's executor gets the uncommitted RunRequested again, waits for the
    // dead attempt's lease to expire, records it as abandoned and takes over.
    let app = serve(dir.path(), &lease);
    let run = wait_for_run(&app, &token, &run_id, &["Completed", "Failed"], Duration::from_secs(60)).await;
    assert_eq!(run["status"], "Completed", "{run}");
    assert_eq!(run["attempts"], 2);
    assert!(run["lastError"].as_str().unwrap().contains("abandoned"), "{run}");
    assert_eq!(stub.requests().len(), 2);
    assert_eq!(stub.max_in_flight(), 1, "the two attempts never overlapped");
    let conn = rusqlite::Connection::open(dir.path().join("events.db")).unwrap();
    let started: Vec<Value> = conn
        .prepare("SELECT data FROM events WHERE event_type = 'RunStarted' AND stream_id = ?1 ORDER BY global_position")
        .unwrap()
        .query_map([format!("{TENANT}/{run_id}")], |row| row.get::<_, String>(0))
        .unwrap()
        .map(|d| serde_json::from_str(&d.unwrap()).unwrap())
        .collect();
    assert_eq!(started.len(), 2);
    let lease_end = chrono::DateTime::parse_from_rfc3339(started[0]["leaseExpiresAt"].as_str().unwrap()).unwrap();
    let takeover = chrono::DateTime::parse_from_rfc3339(started[1]["startedAt"].as_str().unwrap()).unwrap();
    assert!(takeover >= lease_end, "attempt 2 started at {takeover}, before attempt 1's lease ended at {lease_end}");
}

/// Each thread of process `pid` as (name, nice value), from `/proc`.
fn threads_and_nice_values(pid: u32) -> Vec<(String, i64)> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("the process's threads");
    tasks
        .filter_map(|task| {
            let dir = task.ok()?.path();
            let name = std::fs::read_to_string(dir.join("comm")).ok()?.trim().to_owned();
            // `pid (comm) state ppid ...`: nice is the 19th field, the 17th after the name.
            let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
            let nice = stat.rsplit_once(')')?.1.split_whitespace().nth(16)?.parse().ok()?;
            Some((name, nice))
        })
        .collect()
}

#[tokio::test]
async fn the_workers_run_on_threads_of_lower_priority_than_the_apis() {
    let dir = tempfile::tempdir().unwrap();
    let app = serve(dir.path(), &["--worker-nice", "7"]);

    let threads = threads_and_nice_values(app.pid());
    let nice_of = |name: &str| threads.iter().filter(|(n, _)| n == name).map(|(_, nice)| *nice).collect::<Vec<_>>();
    let (background, api) = (nice_of("background"), nice_of("tokio-rt-worker"));
    assert!(!background.is_empty() && background.iter().all(|&nice| nice == 7), "{threads:?}");
    assert!(!api.is_empty() && api.iter().all(|&nice| nice == 0), "{threads:?}");
}
