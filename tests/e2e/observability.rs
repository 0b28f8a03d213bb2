//! What operators see, through the real binary: Prometheus metrics at `/metrics`, traces
//! exported over OTLP/HTTP to a collector (a local server decoding the protobuf requests the
//! way a collector does), JSON logs carrying the request's trace id, and a SIGTERM that lets
//! the requests in flight finish before the process exits 0.

use crate::bus_support;
use crate::support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{ChildStderr, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;
use serde_json::{Value, json};
use support::{ALL_SCOPES, App, BIN, spawn_app, spawn_app_in};

const TENANT: &str = "connectsoft";

fn provider() -> Value {
    json!({
        "tenantId": TENANT, "key": "github", "displayName": "GitHub", "category": "SourceControl",
        "authModel": "OAuth2ClientCredentials", "apiClient": "ConnectSoft.Scm.GitHub",
        "capabilities": [], "baseUrl": "https://api.github.com"
    })
}

/// Starts `serve` on `data_dir` with `args` and `envs`; its stderr is returned as a pipe when
/// `capture_stderr`.
fn start_serve(
    data_dir: &Path,
    args: &[&str],
    envs: &[(&str, &str)],
    capture_stderr: bool,
) -> (App, Option<ChildStderr>) {
    let mut command = Command::new(BIN);
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .args(args)
        .env("IE_LOG", "warn")
        .env_remove("IE_MASTER_KEY")
        .env_remove("IE_CONFIG")
        .stdout(Stdio::piped())
        .stderr(if capture_stderr { Stdio::piped() } else { Stdio::inherit() });
    for (name, value) in envs {
        command.env(name, value);
    }
    let mut child = command.spawn().expect("start serve");
    let stderr = capture_stderr.then(|| child.stderr.take().expect("stderr"));
    (App::when_listening(child, data_dir), stderr)
}

/// Reads the lines of a pipe in a thread, into a shared buffer.
fn collect_lines(pipe: ChildStderr) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    lines
}

async fn scrape(app: &App) -> String {
    let response = app.client.get(app.url("/metrics")).send().await.expect("scrape");
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(content_type.starts_with("text/plain; version=0.0.4"), "{content_type}");
    response.text().await.unwrap()
}

/// The value of the sample whose line starts with `series` (name and labels, exactly).
fn sample(exposition: &str, series: &str) -> Option<f64> {
    exposition
        .lines()
        .find_map(|line| line.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .map(|value| value.trim().parse().expect("a number"))
}

#[tokio::test]
async fn metrics_count_requests_by_route_template_appends_lags_and_refusals() {
    let app = spawn_app();
    let token = app.token(TENANT, ALL_SCOPES);
    assert_eq!(app.post_json("/integrations/providers", &token, &provider()).await.status(), 201);
    for id in ["conn-does-not-exist-1", "conn-does-not-exist-2"] {
        assert_eq!(app.get(&format!("/integrations/connections/{id}"), &token).await.status(), 404);
    }
    assert_eq!(app.client.get(app.url("/no/such/route/secret-ish-id")).send().await.unwrap().status(), 404);
    // A webhook without a target connection is refused and counted under its reason.
    let refused = app.client.post(app.url("/webhooks/deliveries")).body("{}").send().await.unwrap();
    assert_eq!(refused.status(), 400);
    // A run whose credential is not in the vault fails for good in the in-process executor.
    let connection = json!({
        "projectId": "proj-1", "providerId": "prov-github", "displayName": "Acme GitHub",
        "authMode": "OAuth2ClientCredentials", "credentialRef": "kv://factory/not-stored",
        "configuration": { "organization": "acme" }
    });
    let established = app.post_json("/integrations/connections", &token, &connection).await;
    assert_eq!(established.status(), 201);
    let connection_id = established.json::<Value>().await.unwrap()["connectionId"].as_str().unwrap().to_owned();
    let out = Command::new(BIN)
        .args(["runs", "start", "--data-dir"])
        .arg(&app.data_dir)
        .args(["--tenant", TENANT, "--connection", &connection_id, "--operation", "OpenPullRequest"])
        .args(["--input", r#"{"repository":"acme/app","head":"feature","base":"main","title":"t"}"#])
        .args(["--idempotency-key", "metrics-run-1"])
        .env_remove("IE_MASTER_KEY")
        .output()
        .unwrap();
    assert!(out.status.success(), "runs start: {}", String::from_utf8_lossy(&out.stderr));
    let run_id = String::from_utf8(out.stdout).unwrap().trim().to_owned();

    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let run = app.get(&format!("/integrations/runs/{run_id}"), &token).await;
        if run.status() == 200 && run.json::<Value>().await.unwrap()["status"] == "Failed" {
            break;
        }
        assert!(Instant::now() < deadline, "the run did not fail");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let text = scrape(&app).await;
    let series = |route: &str, method: &str, status: u16| {
        format!(r#"http_requests_total{{method="{method}",route="{route}",status="{status}"}}"#)
    };
    assert_eq!(sample(&text, &series("/integrations/connections/{connection_id}", "GET", 404)), Some(2.0), "{text}");
    assert_eq!(sample(&text, &series("/integrations/providers", "POST", 201)), Some(1.0), "{text}");
    assert_eq!(sample(&text, &series("/integrations/runs/{run_id}", "GET", 200)).map(|n| n >= 1.0), Some(true));
    assert_eq!(sample(&text, &series("unmatched", "GET", 404)), Some(1.0), "{text}");
    assert!(!text.contains("conn-does-not-exist") && !text.contains("secret-ish-id"), "raw paths leaked: {text}");
    let bucket =
        r#"http_request_duration_seconds_bucket{method="POST",route="/integrations/providers",status="201",le="+Inf"}"#;
    assert_eq!(sample(&text, bucket), Some(1.0), "latency histogram: {text}");
    assert!(text.contains("# TYPE http_request_duration_seconds histogram"), "{text}");
    // Every event but the `RunRequested` that `runs start` appended from its own process.
    let head = sample(&text, "event_store_head_position").expect("store head");
    // (At least: the health check may still be appending after the head was read.)
    assert!(sample(&text, "events_appended_total").is_some_and(|n| n >= head - 1.0), "{text}");
    for projection in ["connections", "providers", "subscriptions", "deliveries", "runs", "credentials"] {
        let lag = sample(&text, &format!(r#"projection_lag_events{{projection="{projection}"}}"#));
        assert_eq!(lag, Some(0.0), "{projection} lag: {text}");
    }
    assert!(sample(&text, r#"consumer_lag_events{consumer="run-executor"}"#).is_some(), "{text}");
    // Ours, and the health check the new connection was given (it has no usable credential either).
    assert!(sample(&text, r#"runs_finished_total{outcome="failed"}"#).is_some_and(|n| n >= 1.0), "{text}");
    assert_eq!(
        sample(&text, r#"webhook_deliveries_rejected_total{reason="missing_connection",provider="unknown"}"#),
        Some(1.0),
        "{text}"
    );
    assert!(text.contains("# HELP webhook_deliveries_rejected_total"), "{text}");
}

/// Polls `/metrics` until `series` has the value `wanted`; the last exposition.
async fn wait_for_sample(app: &App, series: &str, wanted: impl Fn(f64) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = scrape(app).await;
        if sample(&text, series).is_some_and(&wanted) {
            return text;
        }
        assert!(Instant::now() < deadline, "{series} never reached the value wanted: {text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn the_relay_lag_grows_while_kafka_is_down_and_returns_to_zero_after() {
    let mut broker = bus_support::Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let brokers = broker.brokers();
    let app = spawn_app_in(dir.path(), &["--kafka-brokers", &brokers, "--kafka-session-timeout-ms", "6000"]);
    let token = app.token(TENANT, ALL_SCOPES);
    assert_eq!(app.post_json("/integrations/providers", &token, &provider()).await.status(), 201);
    wait_for_sample(&app, "relay_events_published_total", |n| n >= 1.0).await;
    wait_for_sample(&app, "relay_lag_events", |n| n == 0.0).await;

    broker.stop();
    for i in 0..5 {
        let mut body = provider();
        body["key"] = json!(format!("outage-{i}"));
        assert_eq!(app.post_json("/integrations/providers", &token, &body).await.status(), 201);
    }
    let text = wait_for_sample(&app, "relay_lag_events", |n| n == 5.0).await;
    let published = sample(&text, "relay_events_published_total").unwrap();

    broker.restart();
    let text = wait_for_sample(&app, "relay_lag_events", |n| n == 0.0).await;
    assert!(sample(&text, "relay_events_published_total").unwrap() >= published + 5.0, "{text}");
}

#[tokio::test]
async fn a_worker_process_serves_the_run_outcomes_it_counts_on_its_metrics_listener() {
    let broker = bus_support::Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let brokers = broker.brokers();
    // Runs are left to the worker: every run that ends, ends there.
    let app =
        spawn_app_in(dir.path(), &["--kafka-brokers", &brokers, "--kafka-session-timeout-ms", "6000", "--no-workers"]);
    let token = app.token(TENANT, ALL_SCOPES);
    assert_eq!(app.post_json("/integrations/providers", &token, &provider()).await.status(), 201);
    let connection = json!({
        "projectId": "proj-1", "providerId": "prov-github", "displayName": "Acme GitHub",
        "authMode": "OAuth2ClientCredentials", "credentialRef": "kv://factory/not-stored",
        "configuration": { "organization": "acme" }
    });
    let established = app.post_json("/integrations/connections", &token, &connection).await;
    assert_eq!(established.status(), 201);
    let connection_id = established.json::<Value>().await.unwrap()["connectionId"].as_str().unwrap().to_owned();

    let port = bus_support::free_port();
    let metrics_listen = format!("127.0.0.1:{port}");
    let _worker = bus_support::Worker::spawn(dir.path(), &brokers, &["--metrics-listen", &metrics_listen]);
    let out = Command::new(BIN)
        .args(["runs", "start", "--data-dir"])
        .arg(dir.path())
        .args(["--tenant", TENANT, "--connection", &connection_id, "--operation", "OpenPullRequest"])
        .args(["--input", r#"{"repository":"acme/app","head":"feature","base":"main","title":"t"}"#])
        .args(["--idempotency-key", "worker-metrics-run"])
        .env_remove("IE_MASTER_KEY")
        .output()
        .unwrap();
    assert!(out.status.success(), "runs start: {}", String::from_utf8_lossy(&out.stderr));
    let run_id = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let run = app.get(&format!("/integrations/runs/{run_id}"), &token).await;
        if run.status() == 200 && run.json::<Value>().await.unwrap()["status"] == "Failed" {
            break;
        }
        assert!(Instant::now() < deadline, "the worker did not fail the run");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let scraped = app.client.get(format!("http://{metrics_listen}/metrics")).send().await.unwrap();
    assert_eq!(scraped.status(), 200);
    let text = scraped.text().await.unwrap();
    assert!(sample(&text, r#"runs_finished_total{outcome="failed"}"#).is_some_and(|n| n >= 1.0), "{text}");
    assert!(sample(&text, "events_appended_total").is_some_and(|n| n >= 1.0), "{text}");
    // The server ran no run: it has nothing to count.
    assert!(!scrape(&app).await.contains("runs_finished_total"));
}

/// A collector: answers every OTLP/HTTP export with 200 and keeps the decoded requests.
struct Collector {
    endpoint: String,
    exports: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
    content_types: Arc<Mutex<Vec<String>>>,
}

async fn start_collector() -> Collector {
    use axum::body::Bytes;
    use axum::http::HeaderMap;
    let exports = Arc::new(Mutex::new(Vec::new()));
    let content_types = Arc::new(Mutex::new(Vec::new()));
    let (sink, types) = (exports.clone(), content_types.clone());
    let router = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let (sink, types) = (sink.clone(), types.clone());
            async move {
                let content_type = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default();
                types.lock().unwrap().push(content_type.to_owned());
                let request = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf export");
                sink.lock().unwrap().push(request);
                ([("content-type", "application/x-protobuf")], Vec::<u8>::new())
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    Collector { endpoint, exports, content_types }
}

impl Collector {
    fn spans(&self) -> Vec<(Vec<KeyValue>, Span)> {
        let exports = self.exports.lock().unwrap();
        let mut spans = Vec::new();
        for export in exports.iter() {
            for resource_spans in &export.resource_spans {
                let resource = resource_spans.resource.as_ref().map(|r| r.attributes.clone()).unwrap_or_default();
                for scope in &resource_spans.scope_spans {
                    spans.extend(scope.spans.iter().map(|s| (resource.clone(), s.clone())));
                }
            }
        }
        spans
    }

    async fn span_of_trace(&self, trace_id_hex: &str) -> (Vec<KeyValue>, Span) {
        let wanted = hex::decode(trace_id_hex).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(found) = self.spans().into_iter().find(|(_, s)| s.trace_id == wanted) {
                return found;
            }
            assert!(Instant::now() < deadline, "no span of trace {trace_id_hex} arrived: {:?}", self.spans());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a AnyValue> {
    attributes.iter().find(|kv| kv.key == key).and_then(|kv| kv.value.as_ref()).and_then(|v| v.value.as_ref())
}

#[tokio::test]
async fn requests_are_exported_as_server_spans_to_the_configured_otlp_collector() {
    let collector = start_collector().await;
    let dir = tempfile::tempdir().unwrap();
    let (app, _) = start_serve(
        dir.path(),
        &["--otlp-endpoint", &collector.endpoint, "--otlp-service-name", "engine-under-test"],
        &[("OTEL_BSP_SCHEDULE_DELAY", "100")],
        false,
    );

    // A caller that is itself traced: the server span continues its trace, under its span.
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let traced = app
        .client
        .get(app.url("/healthz"))
        .header("traceparent", format!("00-{caller_trace}-00f067aa0ba902b7-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(traced.headers()["x-trace-id"], format!("trace-{caller_trace}").as_str());
    let (resource, span) = collector.span_of_trace(caller_trace).await;
    assert_eq!(span.parent_span_id, hex::decode("00f067aa0ba902b7").unwrap());
    assert_eq!(span.name, "GET /healthz");
    assert_eq!(span.kind, SpanKind::Server as i32);
    assert_eq!(attribute(&span.attributes, "http.route"), Some(&AnyValue::StringValue("/healthz".into())));
    assert_eq!(attribute(&span.attributes, "http.response.status_code"), Some(&AnyValue::IntValue(200)));
    assert_eq!(attribute(&resource, "service.name"), Some(&AnyValue::StringValue("engine-under-test".into())));

    // Without one, the trace id OpenTelemetry gave the span is the one the response names.
    let token = app.token(TENANT, ALL_SCOPES);
    let untraced = app.get("/integrations/connections/conn-unknown", &token).await;
    assert_eq!(untraced.status(), 404);
    let answered = untraced.headers()["x-trace-id"].to_str().unwrap().to_owned();
    let body: Value = untraced.json().await.unwrap();
    assert_eq!(body["traceId"], answered.as_str());
    let (_, span) = collector.span_of_trace(answered.strip_prefix("trace-").unwrap()).await;
    assert!(span.parent_span_id.is_empty(), "a root span");
    assert_eq!(span.name, "GET /integrations/connections/{connection_id}");
    assert_eq!(attribute(&span.attributes, "http.response.status_code"), Some(&AnyValue::IntValue(404)));
    assert!(
        collector.content_types.lock().unwrap().iter().all(|t| t == "application/x-protobuf"),
        "OTLP/HTTP protobuf: {:?}",
        collector.content_types.lock().unwrap()
    );
}

#[tokio::test]
async fn traces_are_not_exported_unless_configured() {
    let collector = start_collector().await;
    let dir = tempfile::tempdir().unwrap();
    // The standard variables alone do not turn export on: only --otlp-endpoint does.
    let (app, _) = start_serve(
        dir.path(),
        &[],
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", &collector.endpoint), ("OTEL_BSP_SCHEDULE_DELAY", "100")],
        false,
    );
    let response = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(collector.spans().is_empty());
}

#[tokio::test]
async fn json_logs_carry_the_trace_id_of_the_request_on_every_line() {
    let dir = tempfile::tempdir().unwrap();
    let (app, stderr) = start_serve(dir.path(), &["--log-format", "json", "--log", "info,api::trace=debug"], &[], true);
    let lines = collect_lines(stderr.expect("stderr"));
    let refused = app.client.post(app.url("/webhooks/deliveries")).body("{}").send().await.unwrap();
    assert_eq!(refused.status(), 400);
    let trace_id = refused.headers()["x-trace-id"].to_str().unwrap().to_owned();
    let other = app.client.get(app.url("/healthz")).send().await.unwrap();
    let other_trace = other.headers()["x-trace-id"].to_str().unwrap().to_owned();

    let deadline = Instant::now() + Duration::from_secs(10);
    let logged: Vec<Value> = loop {
        let parsed: Vec<Value> = lines
            .lock()
            .unwrap()
            .iter()
            // The development-auth banner is printed for people, not logged.
            .filter(|line| !line.starts_with("development auth:") && !line.starts_with("get one with:"))
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}")))
            .collect();
        let of_request = |trace: &str| parsed.iter().filter(|l| l["trace_id"] == trace).count();
        if (of_request(&trace_id) >= 2 && of_request(&other_trace) >= 1) || Instant::now() > deadline {
            break parsed;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let refusal = logged
        .iter()
        .find(|l| l["message"] == "inbound delivery refused")
        .unwrap_or_else(|| panic!("the refusal was logged: {logged:#?}"));
    assert_eq!(refusal["trace_id"], trace_id.as_str(), "{refusal}");
    assert_eq!(refusal["reason"], "missing_connection");
    assert_eq!(refusal["path"], "/webhooks/deliveries");
    assert_eq!(refusal["level"], "INFO");
    // Every line logged inside a request names that request's trace id.
    let in_requests: Vec<&Value> =
        logged.iter().filter(|l| l["spans"].as_array().is_some_and(|s| s.contains(&json!("request")))).collect();
    assert!(in_requests.len() >= 3, "{logged:#?}");
    for line in in_requests {
        let id = line["trace_id"].as_str().unwrap_or_else(|| panic!("a line without trace_id: {line}"));
        assert!(id == trace_id || id == other_trace, "{line}");
    }
}

/// Reads one HTTP/1.1 response with a Content-Length body off a kept-alive connection.
fn read_one_response(stream: &mut TcpStream) -> String {
    let mut received = Vec::new();
    let mut byte = [0u8; 1];
    while !received.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).expect("a response head");
        received.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&received).into_owned();
    let length = head
        .lines()
        .find_map(|line| line.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).expect("the response body");
    head + &String::from_utf8_lossy(&body)
}

/// A `serve` child for the signal tests: its address, a token, and a connection the server has
/// taken (a first request was answered on it: it is not merely in the kernel's backlog).
fn serve_for_signals(dir: &Path, extra: &[&str]) -> (std::process::Child, String, String, TcpStream) {
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .args(extra)
        .env("IE_LOG", "info")
        .env_remove("IE_MASTER_KEY")
        .env_remove("IE_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = loop {
        let line = stdout.next().expect("listening").unwrap();
        if let Some(addr) = line.strip_prefix("listening on http://") {
            break addr.trim().to_owned();
        }
    };
    let out = Command::new(BIN)
        .args(["token", "--data-dir"])
        .arg(dir)
        .args(["--tenant", TENANT, "--scope", ALL_SCOPES])
        .output()
        .unwrap();
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let mut stream = TcpStream::connect(&addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    stream.write_all(format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes()).unwrap();
    let first_answer = read_one_response(&mut stream);
    assert!(first_answer.starts_with("HTTP/1.1 200"), "{first_answer}");
    (child, addr, token, stream)
}

/// Waits for `child` to exit; its status and stderr.
fn wait_for_exit(child: &mut std::process::Child, within: Duration) -> (std::process::ExitStatus, String) {
    let deadline = Instant::now() + within;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the server did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    (status, stderr)
}

#[tokio::test]
async fn sigterm_lets_a_request_in_flight_finish_then_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addr, token, mut stream) = serve_for_signals(dir.path(), &[]);
    let body = serde_json::to_vec(&provider()).unwrap();
    let (first, rest) = body.split_at(body.len() / 2);

    // The request in flight: its head and half its body are sent, the rest comes later.
    let head = format!(
        "POST /integrations/providers HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(first).unwrap();
    stream.flush().unwrap();
    std::thread::sleep(Duration::from_millis(300));

    let killed = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    std::thread::sleep(Duration::from_millis(700));
    assert!(child.try_wait().unwrap().is_none(), "the server exited with a request in flight");

    stream.write_all(rest).unwrap();
    stream.flush().unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 201"), "the request in flight was answered: {response}");
    assert!(response.contains("\"providerId\""), "{response}");

    let (status, stderr) = wait_for_exit(&mut child, Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "exit status; stderr: {stderr}");
    assert!(stderr.contains("shutting down"), "{stderr}");
    assert!(!stderr.contains("did not stop in time") && !stderr.contains("worker task failed"), "{stderr}");
    // New connections are no longer taken once the server has stopped.
    assert!(TcpStream::connect(&addr).is_err());
}

#[tokio::test]
async fn a_request_that_never_finishes_holds_the_shutdown_only_until_its_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addr, token, mut stream) = serve_for_signals(dir.path(), &["--shutdown-timeout-seconds", "1"]);
    // A body announced and never sent.
    let head = format!(
        "POST /integrations/providers HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{"
    );
    stream.write_all(head.as_bytes()).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let signalled = Instant::now();
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    let (status, stderr) = wait_for_exit(&mut child, Duration::from_secs(15));
    assert_eq!(status.code(), Some(0), "exit status; stderr: {stderr}");
    assert!(signalled.elapsed() >= Duration::from_millis(900), "it waited for the request first");
    assert!(stderr.contains("requests still in flight at the shutdown timeout"), "{stderr}");
    drop(stream);
}
