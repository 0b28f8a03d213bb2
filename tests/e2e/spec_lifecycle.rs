//! The spec's examples with real values. `tests/e2e/spec_examples.rs` replays every example with
//! the workers off, so its connection was never checked and its run never ran
//! (fixtures/spec/README.md). Here the workers are on: a connection is established against a
//! local stand-in for GitHub and waits for its first health check (`Prefer: wait`), an
//! `OpenPullRequest` run is started with `runs start` and executed, and `GET` of both answers
//! the spec's "Retrieve a connection" and "Retrieve an integration run" examples
//! (fixtures/spec/lifecycle) field for field. The `Location` each POST answers names a
//! resource `GET` serves, in the caller's tenant only.

use crate::support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use support::{ALL_SCOPES, App, spawn_app_in};

use crate::runs_helpers::{TENANT, start_run_cli};
const CREDENTIAL_REF: &str = "kv://factory-integration/github-booking";
/// The scopes the spec lists, plus the read scopes of providers and subscriptions.
const SCOPES: &str = "integration.connections.write integration.connections.read integration.providers.write \
     integration.providers.read webhooks.subscriptions.write webhooks.subscriptions.read integration.runs.read";

/// GitHub's "Get the authenticated user" (the health check) and "Create a pull request" (the
/// run) on one address, since a provider has one `baseUrl`: the stand-ins of
/// tests/credentials_support and tests/bus_support each serve one of them on their own port.
#[derive(Clone)]
struct GitHub {
    url: String,
    state: Arc<Mutex<GitHubState>>,
}

struct GitHubState {
    token: String,
    user_requests: usize,
    pulls: Vec<Value>,
}

impl GitHub {
    async fn start(token: &str) -> Self {
        let state = Arc::new(Mutex::new(GitHubState { token: token.to_owned(), user_requests: 0, pulls: Vec::new() }));
        let app = Router::new()
            .route("/user", get(github_user))
            .route("/repos/{owner}/{repo}/pulls", post(github_create_pull))
            .with_state(Arc::clone(&state));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr: SocketAddr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url: format!("http://{addr}"), state }
    }

    fn user_requests(&self) -> usize {
        self.state.lock().unwrap().user_requests
    }

    fn pulls(&self) -> Vec<Value> {
        self.state.lock().unwrap().pulls.clone()
    }
}

/// Whether the request carries the accepted token and the API version GitHub documents.
fn authorized(state: &GitHubState, headers: &HeaderMap) -> bool {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default();
    header("authorization") == format!("Bearer {}", state.token) && header("x-github-api-version") == "2022-11-28"
}

fn bad_credentials() -> Response {
    let body = json!({"message": "Bad credentials", "documentation_url": "https://docs.github.com/rest"});
    (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response()
}

async fn github_user(State(state): State<Arc<Mutex<GitHubState>>>, headers: HeaderMap) -> Response {
    let mut s = state.lock().unwrap();
    s.user_requests += 1;
    if !authorized(&s, &headers) {
        return bad_credentials();
    }
    (StatusCode::OK, axum::Json(json!({"login": "octocat", "id": 1, "type": "User"}))).into_response()
}

async fn github_create_pull(
    State(state): State<Arc<Mutex<GitHubState>>>,
    UrlPath((owner, repo)): UrlPath<(String, String)>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let mut s = state.lock().unwrap();
    if !authorized(&s, &headers) {
        return bad_credentials();
    }
    s.pulls.push(
        json!({"owner": owner, "repo": repo, "body": serde_json::from_str::<Value>(&body).unwrap_or(Value::Null)}),
    );
    let number = s.pulls.len();
    let pull = json!({
        "id": 1_000_000 + number, "number": number, "state": "open",
        "url": format!("https://api.github.com/repos/{owner}/{repo}/pulls/{number}"),
        "html_url": format!("https://github.com/{owner}/{repo}/pull/{number}")
    });
    (StatusCode::CREATED, axum::Json(pull)).into_response()
}

/// A spec example from fixtures/spec/lifecycle: the body and the fields whose values differ on
/// every run (ids, timestamps, trace ids).
struct Example {
    body: Value,
    varies: Vec<String>,
}

fn example(name: &str) -> Example {
    let path = format!("fixtures/spec/lifecycle/{name}");
    let fixture: Value = serde_json::from_str(&std::fs::read_to_string(&path).expect(&path)).expect(&path);
    let varies = fixture["varies"].as_array().expect("varies").iter().map(|v| v.as_str().unwrap().to_owned()).collect();
    Example { body: fixture["example"].clone(), varies }
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Every field of the example is in `actual` with the same JSON type, and with the example's
/// value unless it varies. Fields the example does not show are additive and allowed.
fn assert_matches_example(what: &str, example: &Example, actual: &Value) {
    let mut failures = Vec::new();
    for (field, expected) in example.body.as_object().expect("example object") {
        match actual.get(field) {
            None => failures.push(format!("{field}: missing")),
            Some(value) if json_type(value) != json_type(expected) => {
                failures.push(format!(
                    "{field}: a {} ({value}), the example has a {}",
                    json_type(value),
                    json_type(expected)
                ));
            }
            Some(value) if !example.varies.contains(field) && value != expected => {
                failures.push(format!("{field}: {value}, the example has {expected}"));
            }
            Some(_) => {}
        }
    }
    assert!(failures.is_empty(), "{what} differs from the spec's example:\n  {}\n{actual:#}", failures.join("\n  "));
}

fn timestamp(value: &Value) -> DateTime<Utc> {
    let text = value.as_str().unwrap_or_else(|| panic!("{value} is not a timestamp"));
    DateTime::parse_from_rfc3339(text).unwrap_or_else(|e| panic!("{text}: {e}")).with_timezone(&Utc)
}

/// Polls `GET /integrations/runs/{run_id}` until the run has finished (generous deadline: the
/// machine running the tests may be slow and shared).
async fn finished_run(app: &App, token: &str, run_id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = app.get(&format!("/integrations/runs/{run_id}"), token).await;
        if r.status() == 200 {
            let run: Value = r.json().await.unwrap();
            if run["status"] == "Completed" || run["status"] == "Failed" {
                return run;
            }
            assert!(Instant::now() < deadline, "run {run_id} did not finish: {run}");
        } else {
            assert!(Instant::now() < deadline, "run {run_id} never appeared ({})", r.status());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_checked_connection_and_a_completed_run_answer_the_spec_examples_with_real_values() {
    let github_token = format!("ghp_lifecycle_{}", uuid::Uuid::new_v4().simple());
    let github = GitHub::start(&github_token).await;
    let dir = tempfile::tempdir().unwrap();
    // Workers on; one health check only (the first), so the connection's latest run is ours.
    let app = spawn_app_in(dir.path(), &["--allow-private-egress", "--health-check-interval-seconds", "0"]);
    app.put_secret(CREDENTIAL_REF, &github_token);
    let token = app.token(TENANT, SCOPES);

    let provider = json!({"tenantId": TENANT, "key": "github", "displayName": "GitHub", "category": "SourceControl",
        "authModel": "OAuth2ClientCredentials", "apiClient": "ConnectSoft.SourceControl.Providers.GitHub",
        "baseUrl": github.url});
    assert_eq!(app.post_json("/integrations/providers", &token, &provider).await.status(), 201);
    // The spec's "Establish a connection" request, waiting for the first health check.
    let connection = json!({"tenantId": TENANT, "projectId": "proj-booking-saas", "providerId": "prov-github",
        "displayName": "Booking SaaS GitHub", "authMode": "OAuth2ClientCredentials", "credentialRef": CREDENTIAL_REF,
        "configuration": {"organization": "connectsoft-booking", "defaultBranch": "main"}});
    let r = app
        .client
        .post(app.url("/integrations/connections"))
        .bearer_auth(&token)
        .header("prefer", "wait=30")
        .json(&connection)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["preference-applied"], "wait=30");
    let established: Value = r.json().await.unwrap();
    assert_eq!(established["health"], "Healthy", "the first check ran within the wait: {established}");
    assert!(github.user_requests() >= 1, "the health check really called GitHub");
    let connection_id = established["connectionId"].as_str().unwrap().to_owned();

    let input = json!({"repo": "booking-saas", "title": "Promote release 1.4", "head": "release/1.4"});
    let run_id = start_run_cli(dir.path(), &connection_id, "OpenPullRequest", &input, "lifecycle-promote-1.4");
    let run = finished_run(&app, &token, &run_id).await;

    // Retrieve an integration run.
    assert_matches_example("GET /integrations/runs/{runId}", &example("07-retrieve-run.json"), &run);
    assert_eq!(run["runId"], run_id.as_str());
    assert!(run_id.starts_with("run-"), "{run_id}");
    assert_eq!(run["connectionId"], connection_id.as_str());
    assert!(run["traceId"].as_str().unwrap().starts_with("trace-"), "{run}");
    let (started, completed) = (timestamp(&run["startedAt"]), timestamp(&run["completedAt"]));
    assert!(started <= completed, "started {started} after completed {completed}");
    // The outcome: the pull request GitHub opened, and no credential.
    let pulls = github.pulls();
    assert_eq!(pulls.len(), 1, "one pull request opened: {pulls:?}");
    assert_eq!(
        (pulls[0]["owner"].as_str(), pulls[0]["body"]["base"].as_str()),
        (Some("connectsoft-booking"), Some("main"))
    );
    assert_eq!(
        run["output"],
        json!({"number": 1, "id": 1_000_001, "state": "open",
               "htmlUrl": "https://github.com/connectsoft-booking/booking-saas/pull/1"}),
        "{run}"
    );
    assert!(!run.to_string().contains(&github_token), "the run shows the credential: {run}");

    // Retrieve a connection: checked, and its latest run is the one above.
    let r = app.get(&format!("/integrations/connections/{connection_id}"), &token).await;
    assert_eq!(r.status(), 200);
    let got: Value = r.json().await.unwrap();
    assert_matches_example(
        "GET /integrations/connections/{connectionId}",
        &example("06-retrieve-connection.json"),
        &got,
    );
    assert_eq!(got["connectionId"], connection_id.as_str());
    assert_eq!(got["lastRunId"], run_id.as_str());
    let checked = timestamp(&got["lastCheckedAt"]);
    assert!(timestamp(&established["establishedAt"]) <= checked, "checked before it was established: {got}");
    assert!(checked <= started, "the first check, recorded before the POST answered, precedes the run: {got}");
    assert!(!got.to_string().contains(&github_token), "the connection shows the credential: {got}");

    // The check only read, so its attempt was recorded once, whole, when it ended; the pull
    // request (a write) was durably started before GitHub was called.
    let check = run_events(dir.path(), "CheckHealth");
    let types: Vec<&str> = check.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(types, ["RunRequested", "RunCompleted"], "{check:?}");
    let completed = &check[1].1;
    assert_eq!(completed["attempt"], 1, "{completed}");
    assert!(completed["startedAt"].is_string() && completed["workerId"].is_string(), "{completed}");
    // Its outcome and the connection's health were one append, and settling the ended run
    // afterwards recorded nothing more.
    let check_run = check[0].1["runId"].as_str().unwrap().to_owned();
    let conn = rusqlite::Connection::open(dir.path().join("events.db")).unwrap();
    let of_check: Vec<(i64, String)> = conn
        .prepare("SELECT global_position, event_type FROM events WHERE json_extract(data, '$.runId') = ?1 ORDER BY 1")
        .unwrap()
        .query_map([&check_run], |row| Ok((row.get(0)?, row.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let types: Vec<&str> = of_check.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(types, ["RunRequested", "RunCompleted", "ConnectionHealthChecked"], "{of_check:?}");
    assert_eq!(of_check[2].0, of_check[1].0 + 1, "{of_check:?}");
    let pull = run_events(dir.path(), "OpenPullRequest");
    let types: Vec<&str> = pull.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(types, ["RunRequested", "RunStarted", "RunCompleted"], "{pull:?}");
}

/// The events (type, data) of the runs of `operation` in the data dir's store, in order.
fn run_events(data_dir: &std::path::Path, operation: &str) -> Vec<(String, Value)> {
    let conn = rusqlite::Connection::open(data_dir.join("events.db")).unwrap();
    conn.prepare(
        "SELECT event_type, data FROM events WHERE stream_id IN (SELECT stream_id FROM events
         WHERE event_type = 'RunRequested' AND json_extract(data, '$.operation') = ?1) ORDER BY global_position",
    )
    .unwrap()
    .query_map([operation], |row| Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?)))
    .unwrap()
    .map(|row| {
        let (event_type, data) = row.unwrap();
        (event_type, serde_json::from_str(&data).unwrap())
    })
    .collect()
}

/// A problem document with `status`, as every error is.
async fn assert_problem(r: reqwest::Response, status: u16) -> Value {
    assert_eq!(r.status().as_u16(), status);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status"], status, "{body}");
    body
}

#[tokio::test]
async fn the_location_of_a_registered_provider_and_of_a_created_subscription_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app_in(dir.path(), &["--no-workers"]);
    let signing_secret = format!("whsec_lifecycle_{}", uuid::Uuid::new_v4().simple());
    let secret_ref = "kv://factory-integration/partner-hook-secret";
    app.put_secret(secret_ref, &signing_secret);
    let token = app.token(TENANT, SCOPES);

    // The spec's "Register a provider" request.
    let provider = json!({"tenantId": TENANT, "key": "twilio-sms", "displayName": "Twilio SMS",
        "category": "Communication", "authModel": "ApiKey", "apiClient": "ConnectSoft.Sms.Providers.Twilio",
        "capabilities": ["sms.send", "sms.status"], "baseUrl": "https://api.twilio.com"});
    let r = app.post_json("/integrations/providers", &token, &provider).await;
    assert_eq!(r.status(), 201);
    let provider_location = r.headers()["location"].to_str().unwrap().to_owned();
    let registered: Value = r.json().await.unwrap();
    let r = app.get(&provider_location, &token).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/vnd.connectsoft.integration.v1+json");
    let got: Value = r.json().await.unwrap();
    assert_eq!(
        got,
        json!({"providerId": "prov-twilio-sms", "tenantId": TENANT, "key": "twilio-sms", "displayName": "Twilio SMS",
            "category": "Communication", "authModel": "ApiKey", "apiClient": "ConnectSoft.Sms.Providers.Twilio",
            "apiClientId": registered["apiClientId"], "capabilities": ["sms.send", "sms.status"],
            "baseUrl": "https://api.twilio.com", "status": "Registered", "registeredAt": registered["registeredAt"]})
    );

    // The spec's "Create an outbound webhook subscription" request.
    let subscription = json!({"tenantId": TENANT, "projectId": "proj-booking-saas", "eventType": "DeploymentPromoted",
        "endpointUrl": "https://hooks.partner.example/connectsoft", "signingSecretRef": secret_ref, "active": true});
    let r = app.post_json("/webhooks/subscriptions", &token, &subscription).await;
    assert_eq!(r.status(), 201);
    let subscription_location = r.headers()["location"].to_str().unwrap().to_owned();
    let created: Value = r.json().await.unwrap();
    let r = app.get(&subscription_location, &token).await;
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(!text.contains(&signing_secret), "the subscription shows its signing secret: {text}");
    let got: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        got,
        json!({"subscriptionId": created["subscriptionId"], "tenantId": TENANT, "projectId": "proj-booking-saas",
            "eventType": "DeploymentPromoted", "endpointUrl": "https://hooks.partner.example/connectsoft",
            "signingSecretRef": secret_ref, "active": true, "status": "Active", "createdAt": created["createdAt"],
            "maxInFlight": 10, "strictOrdering": false})
    );

    for (location, write_scope, read_scope) in [
        (&provider_location, "integration.providers.write", "integration.providers.read"),
        (&subscription_location, "webhooks.subscriptions.write", "webhooks.subscriptions.read"),
    ] {
        // Another tenant's resource is not there for you, even with every scope.
        let other = app.token("globex", &format!("{ALL_SCOPES} {SCOPES}"));
        assert_problem(app.get(location, &other).await, 404).await;
        // Reading takes the read scope; the write scope alone does not grant it.
        let r = app.get(location, &app.token(TENANT, write_scope)).await;
        assert!(r.headers()["www-authenticate"].to_str().unwrap().contains(read_scope), "{location}");
        assert_eq!(assert_problem(r, 403).await["title"], "insufficient_scope");
        assert_eq!(app.get(location, &app.token(TENANT, read_scope)).await.status(), 200, "{location}");
        assert_problem(app.client.get(app.url(location)).send().await.unwrap(), 401).await;
    }
    assert_problem(app.get("/integrations/providers/prov-nope", &token).await, 404).await;
    assert_problem(app.get("/webhooks/subscriptions/sub-nope", &token).await, 404).await;
}
