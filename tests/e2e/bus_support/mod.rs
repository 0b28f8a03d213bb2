//! Helpers of the bus and run tests: a real Kafka-protocol broker (tansu) on a free loopback
//! port, Kafka clients reading the topics, a local stand-in for GitHub's REST API, and the
//! engine's `worker` process.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{Value, json};

pub const BIN: &str = env!("CARGO_BIN_EXE_integration-engine");

/// The tansu binary: `TANSU_BIN`, else where `scripts/test` installs it. Missing is a failure,
/// never a skip: these tests cannot pass without a broker.
pub fn tansu_bin() -> PathBuf {
    let path = std::env::var_os("TANSU_BIN").map(PathBuf::from).unwrap_or_else(|| {
        let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
        home.join(".cache/integration-engine/tansu/bin/tansu")
    });
    assert!(
        path.is_file(),
        "the Kafka-protocol broker tansu is not installed at {} (set TANSU_BIN, or run scripts/test, which installs it)",
        path.display()
    );
    path
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// A tansu broker on 127.0.0.1 with its SQLite storage in a temp dir; stopped on drop.
pub struct Broker {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Broker {
    pub fn start() -> Self {
        let mut broker = Self { port: free_port(), dir: tempfile::tempdir().expect("temp dir"), child: None };
        broker.restart();
        broker
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts it (again) on the same port and storage.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "the broker is running");
        let url = format!("tcp://127.0.0.1:{}", self.port);
        // tansu reads the path of a sqlite:// URL relative to its working directory.
        let storage = "sqlite://tansu.db";
        let child = Command::new(tansu_bin())
            .current_dir(self.dir.path())
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url, "--storage-engine", storage])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tansu");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "tansu did not listen on {}", self.port);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A message read back from a topic.
#[derive(Debug, Clone)]
pub struct Received {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub value: Value,
    pub headers: HashMap<String, String>,
}

/// Reads `topic` from the beginning until `done` holds for what was read, or panics after
/// `timeout`.
pub fn read_topic(brokers: &str, topic: &str, timeout: Duration, done: impl Fn(&[Received]) -> bool) -> Vec<Received> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("test-reader-{}", uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
    let partitions = metadata.topics()[0].partitions().len() as i32;
    assert!(partitions > 0, "topic {topic} has no partitions");
    let mut assignment = TopicPartitionList::new();
    for p in 0..partitions {
        assignment.add_partition_offset(topic, p, Offset::Beginning).expect("partition");
    }
    consumer.assign(&assignment).expect("assign");
    let deadline = Instant::now() + timeout;
    let mut read = Vec::new();
    while !done(&read) {
        assert!(Instant::now() < deadline, "timed out reading {topic}: {} messages so far", read.len());
        let Some(message) = consumer.poll(Duration::from_millis(200)) else { continue };
        let message = message.expect("message");
        let headers = message
            .headers()
            .map(|hs| {
                hs.iter()
                    .map(|h| (h.key.to_owned(), String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned()))
                    .collect()
            })
            .unwrap_or_default();
        read.push(Received {
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(|k| String::from_utf8_lossy(k).into_owned()),
            value: message.payload().and_then(|p| serde_json::from_slice(p).ok()).unwrap_or(Value::Null),
            headers,
        });
    }
    read
}

/// Publishes `value` to `topic` with `headers`; returns once the broker has it.
pub async fn publish(brokers: &str, topic: &str, key: &str, value: &[u8], headers: &[(&str, &str)]) {
    let producer: FutureProducer = ClientConfig::new().set("bootstrap.servers", brokers).create().expect("producer");
    let mut owned = rdkafka::message::OwnedHeaders::new();
    for (k, v) in headers {
        owned = owned.insert(rdkafka::message::Header { key: k, value: Some(v.as_bytes()) });
    }
    let record = FutureRecord::to(topic).key(key).payload(value).headers(owned);
    producer.send(record, Duration::from_secs(30)).await.expect("publish");
}

/// A `StartRun` command's JSON.
pub fn start_run(tenant: &str, connection: &str, operation: &str, input: Value, key: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "type": "StartRun", "tenantId": tenant, "connectionId": connection, "operation": operation,
        "input": input, "idempotencyKey": key
    }))
    .expect("json")
}

/// A running `integration-engine worker`, its stderr collected; killed on drop.
pub struct Worker {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Worker {
    pub fn spawn(data_dir: &Path, brokers: &str, extra: &[&str]) -> Self {
        let mut child = Command::new(BIN)
            .args(["worker", "--data-dir"])
            .arg(data_dir)
            .args(["--kafka-brokers", brokers, "--kafka-session-timeout-ms", "6000", "--allow-private-egress"])
            .args(extra)
            .env("IE_LOG", "info,rdkafka=warn")
            .env("NO_COLOR", "1")
            .env_remove("IE_MASTER_KEY")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start worker");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("stderr");
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[worker] {line}");
                sink.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        Self { child, log }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// SIGKILL: no shutdown, no commit.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What the GitHub stand-in does with each pull request request, in order; the last repeats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Created,
    BadGateway,
    /// 422 Validation Failed, as for a pull request that exists already.
    ValidationFailed,
    /// Answers 201 after this long.
    SlowCreated(Duration),
}

#[derive(Default)]
struct StubState {
    answers: Vec<Answer>,
    requests: Vec<Value>,
    in_flight: usize,
    max_in_flight: usize,
}

/// A local server speaking GitHub's "create a pull request" API.
#[derive(Clone)]
pub struct GitHubStub {
    pub url: String,
    state: Arc<Mutex<StubState>>,
}

impl GitHubStub {
    pub async fn start(answers: Vec<Answer>) -> Self {
        let state = Arc::new(Mutex::new(StubState { answers, ..StubState::default() }));
        let app = Router::new().route("/repos/{owner}/{repo}/pulls", post(create_pull)).with_state(Arc::clone(&state));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr: SocketAddr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url: format!("http://{addr}"), state }
    }

    /// Every request received: `{owner, repo, authorization, accept, apiVersion, body}`.
    pub fn requests(&self) -> Vec<Value> {
        self.state.lock().unwrap().requests.clone()
    }

    /// The most requests it ever served at once.
    pub fn max_in_flight(&self) -> usize {
        self.state.lock().unwrap().max_in_flight
    }
}

async fn create_pull(
    State(state): State<Arc<Mutex<StubState>>>,
    UrlPath((owner, repo)): UrlPath<(String, String)>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let answer = {
        let mut s = state.lock().unwrap();
        let index = s.requests.len().min(s.answers.len().saturating_sub(1));
        let answer = s.answers.get(index).copied().unwrap_or(Answer::Created);
        s.requests.push(json!({
            "owner": owner, "repo": repo, "authorization": header("authorization"), "accept": header("accept"),
            "apiVersion": header("x-github-api-version"), "body": serde_json::from_str::<Value>(&body).unwrap_or(Value::Null)
        }));
        s.in_flight += 1;
        s.max_in_flight = s.max_in_flight.max(s.in_flight);
        answer
    };
    // Leaves the in-flight count on drop too: hyper drops the handler when the client vanishes.
    struct InFlight(Arc<Mutex<StubState>>);
    impl Drop for InFlight {
        fn drop(&mut self) {
            self.0.lock().unwrap().in_flight -= 1;
        }
    }
    let in_flight = InFlight(Arc::clone(&state));
    if let Answer::SlowCreated(delay) = answer {
        tokio::time::sleep(delay).await;
    }
    let number = state.lock().unwrap().requests.len() as u64;
    drop(in_flight);
    match answer {
        Answer::Created | Answer::SlowCreated(_) => (
            StatusCode::CREATED,
            axum::Json(json!({
                "id": 1_000_000 + number, "number": number, "state": "open", "title": "t",
                "url": format!("https://api.github.com/repos/{owner}/{repo}/pulls/{number}"),
                "html_url": format!("https://github.com/{owner}/{repo}/pull/{number}")
            })),
        )
            .into_response(),
        Answer::BadGateway => (StatusCode::BAD_GATEWAY, "upstream hiccup").into_response(),
        Answer::ValidationFailed => (
            StatusCode::UNPROCESSABLE_ENTITY,
            axum::Json(json!({
                "message": "Validation Failed",
                "errors": [{"resource": "PullRequest", "code": "custom", "message": "A pull request already exists for connectsoft-booking:feature."}],
                "documentation_url": "https://docs.github.com/rest/pulls/pulls#create-a-pull-request"
            })),
        )
            .into_response(),
    }
}
