//! The HTTP load benchmark of issue 11: in one run it starts the ceiling (`bench_echo`, a trivial
//! axum JSON echo) and the engine (`integration-engine serve`, embedded default, development
//! tokens), drives both with the same load generator (`wrk` with `scripts/wrk/bench.lua`: the
//! same connections, threads and duration), and writes every figure with its share of the
//! ceiling, the machine and the date to `bench-results/http-YYYY-MM-DD.json`. Not a test.
//!
//! cargo build --release --bin integration-engine --examples
//! cargo run --release --example bench_http -- [OUT_FILE]
//!
//! (`scripts/bench` does both.) The figures, in the order they run:
//! - `ceiling`: `POST /echo` of the connection body (the body of `POST /integrations/connections`);
//! - `connectionsGet`: `GET /integrations/connections/{id}` of existing connections;
//! - `deliveries`: signed GitHub pushes to `POST /webhooks/deliveries` (pre-signed: Lua has no
//!   HMAC), a new `X-GitHub-Delivery` each request;
//! - `connectionsUnique`: `POST /integrations/connections`, a new `credentialRef` each request
//!   (this and the next figure leave the first health checks of the connections they create for
//!   the engine to run after them, so they come after the figures on an engine at rest);
//! - `connectionsShared`: `POST /integrations/connections` with one `credentialRef` for every
//!   connection, measured once per level of `BENCH_SHARED_PREFILL` (a credential per level), after
//!   that many connections naming it were established through a plain client (not measured);
//! - `rss`: the engine's VmRSS idle after start, its peak, at the end of the load and
//!   `BENCH_RSS_WAIT_SECONDS` after it (sampled every 250 ms);
//! - `rssRun`: the RSS of a fresh engine over a run of `BENCH_RSS_REQUESTS` requests (100,000;
//!   0 skips it) and `BENCH_RSS_WAIT_SECONDS` after it (see [`rss_run`]);
//! - `healthChecks`: another engine, on a data dir of its own, finds `BENCH_HEALTH_CHECKS`
//!   connections whose first health check is due at once (see [`health_checks`]) and checks them
//!   against a local stand-in for GitHub, while `POST` (one round) or `GET` connections (a second
//!   round, on a fresh engine and data dir) are measured again.
//!
//! Each figure has req/s, latency p50/p90/p99/max, non-2xx answers by status, socket errors, and
//! the engine's CPU per request (utime + stime of the process over the wrk run, so it includes
//! whatever the engine does in the background meanwhile, e.g. health checks of new connections).
//!
//! Environment: `BENCH_SECONDS` (per figure, default 15), `BENCH_CONNECTIONS` (64),
//! `BENCH_THREADS` (2), `BENCH_TIMEOUT_SECONDS` (wrk's request timeout, 10),
//! `BENCH_SHARED_PREFILL` (`0,10000,50000`), `BENCH_PREFILL_MAX_SECONDS` (the longest a prefill
//! may take before the level is measured with what exists, 900), `BENCH_DELIVERIES` (pre-signed
//! deliveries, default 20,000 per second of `BENCH_SECONDS`), `BENCH_GET_CONNECTIONS` (1,000),
//! `BENCH_RSS_WAIT_SECONDS` (60), `BENCH_RSS_REQUESTS` (100,000), `BENCH_SETTLE_MAX_SECONDS` (the longest pause before a figure
//! waiting for the engine's background work to be done: its consumers caught up with the store,
//! or under 0.1 core; 180, and at least 2),
//! `BENCH_HEALTH_CHECKS` (connections whose first health check is due at once, 20,000; 0 skips
//! the figure), `BENCH_HEALTH_MAX_SECONDS` (the longest wait for them, 600), `WRK` (the wrk binary).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use serde_json::{Value, json};

#[path = "support/cpu.rs"]
mod cpu;
#[path = "support/github_standin.rs"]
mod github_standin;
use cpu::{clock_ticks_per_second, cpu_time};
use github_standin::GitHubStandIn;

const TENANT: &str = "bench";
const SCOPES: &str = "integration.connections.write integration.connections.read integration.providers.write \
                      integration.providers.read";
const WEBHOOK_SECRET_REF: &str = "kv://bench/github-webhook";
const WEBHOOK_SECRET: &str = "bench-webhook-secret-value";
/// Replaced per request by the Lua script (`body` mode) with a unique suffix.
const UNIQUE: &str = "{{unique}}";
const LUA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/wrk/bench.lua");
/// Requests in flight while setting up and prefilling (not measured).
const SETUP_CLIENTS: usize = 64;

struct Settings {
    seconds: u64,
    connections: usize,
    threads: usize,
    timeout_seconds: u64,
    shared_prefill: Vec<usize>,
    prefill_max_seconds: u64,
    deliveries: usize,
    get_connections: usize,
    rss_wait_seconds: u64,
    rss_requests: usize,
    settle_max_seconds: u64,
    health_checks: usize,
    health_max_seconds: u64,
    wrk: String,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> anyhow::Result<T>
where
    T::Err: std::fmt::Display,
{
    match std::env::var(name) {
        Ok(value) => value.trim().parse().map_err(|e| anyhow::anyhow!("{name}={value}: {e}")),
        Err(_) => Ok(default),
    }
}

impl Settings {
    fn from_env() -> anyhow::Result<Self> {
        let seconds = env_or("BENCH_SECONDS", 15)?;
        let shared_prefill = std::env::var("BENCH_SHARED_PREFILL")
            .unwrap_or_else(|_| "0,10000,50000".into())
            .split(',')
            .map(|n| n.trim().parse::<usize>().with_context(|| format!("BENCH_SHARED_PREFILL: {n}")))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let settings = Settings {
            seconds,
            connections: env_or("BENCH_CONNECTIONS", 64)?,
            threads: env_or("BENCH_THREADS", 2)?,
            timeout_seconds: env_or("BENCH_TIMEOUT_SECONDS", 10)?,
            shared_prefill,
            prefill_max_seconds: env_or("BENCH_PREFILL_MAX_SECONDS", 900)?,
            deliveries: env_or("BENCH_DELIVERIES", 20_000 * seconds as usize)?,
            get_connections: env_or("BENCH_GET_CONNECTIONS", 1_000)?,
            rss_wait_seconds: env_or("BENCH_RSS_WAIT_SECONDS", 60)?,
            rss_requests: env_or("BENCH_RSS_REQUESTS", 100_000)?,
            settle_max_seconds: env_or("BENCH_SETTLE_MAX_SECONDS", 180)?,
            health_checks: env_or("BENCH_HEALTH_CHECKS", 20_000)?,
            health_max_seconds: env_or("BENCH_HEALTH_MAX_SECONDS", 600)?,
            wrk: std::env::var("WRK").unwrap_or_else(|_| "wrk".into()),
        };
        ensure!(settings.seconds > 0 && settings.threads > 0, "BENCH_SECONDS and BENCH_THREADS must be positive");
        ensure!(settings.connections >= settings.threads, "BENCH_CONNECTIONS must be at least BENCH_THREADS");
        Ok(settings)
    }

    fn to_json(&self) -> Value {
        json!({
            "loadGenerator": wrk_version(&self.wrk),
            "connections": self.connections,
            "threads": self.threads,
            "secondsPerFigure": self.seconds,
            "timeoutSeconds": self.timeout_seconds,
            "sharedPrefill": self.shared_prefill,
            "prefillMaxSeconds": self.prefill_max_seconds,
            "preSignedDeliveries": self.deliveries,
            "getConnections": self.get_connections,
            "rssWaitSeconds": self.rss_wait_seconds,
            "rssRequests": self.rss_requests,
            "rssSampleMs": 250,
            "settleMaxSeconds": self.settle_max_seconds,
            "healthChecks": self.health_checks,
            "healthMaxSeconds": self.health_max_seconds,
            "engine": "integration-engine serve, embedded default (SQLite, in-process workers), development tokens, IE_LOG=warn",
        })
    }
}

/// A child process that is killed and reaped when dropped, so a failed or interrupted run
/// leaves no server behind.
struct ChildGuard {
    child: Child,
}

impl ChildGuard {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a server that prints `listening on http://ADDR` on stdout (the engine and the echo
/// both do) and returns it with its base URL; its stdout is drained from then on.
fn spawn_listening(mut command: Command, name: &str) -> anyhow::Result<(ChildGuard, String)> {
    let mut child =
        ChildGuard { child: command.stdout(Stdio::piped()).spawn().with_context(|| format!("start {name}"))? };
    let stdout = child.child.stdout.take().context("stdout is piped")?;
    let mut lines = BufReader::new(stdout).lines();
    let base = loop {
        match lines.next() {
            Some(line) => {
                if let Some(addr) = line?.strip_prefix("listening on ") {
                    break addr.trim().to_owned();
                }
            }
            None => bail!("{name} exited before listening: {:?}", child.child.wait()?),
        }
    };
    std::thread::spawn(move || lines.for_each(drop));
    Ok((child, base))
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn mib(kib: u64) -> f64 {
    (kib as f64 / 1024.0 * 10.0).round() / 10.0
}

/// Samples a process's RSS every 250 ms until dropped.
struct RssSampler {
    samples: Arc<Mutex<Vec<(Instant, u64)>>>,
    stop: Arc<AtomicBool>,
}

impl RssSampler {
    fn start(pid: u32) -> Self {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        std::thread::spawn({
            let (samples, stop) = (samples.clone(), stop.clone());
            move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Some(kib) = rss_kib(pid) {
                        samples.lock().unwrap().push((Instant::now(), kib));
                    }
                    std::thread::sleep(Duration::from_millis(250));
                }
            }
        });
        RssSampler { samples, stop }
    }

    fn peak_between(&self, from: Instant, to: Instant) -> u64 {
        let samples = self.samples.lock().unwrap();
        samples.iter().filter(|(at, _)| *at >= from && *at <= to).map(|(_, kib)| *kib).max().unwrap_or(0)
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// What one wrk run against one process measured.
struct Measured {
    wrk: Value,
    requests: u64,
    requests_per_second: f64,
    cpu_ms_per_request: f64,
    json: Value,
}

/// One wrk run: `url` driven by the Lua script in `mode` (`body`, `paths`, `signed`) over `file`,
/// measuring the CPU that process `pid` (the server behind `url`) spends meanwhile.
struct Load<'a> {
    url: String,
    mode: &'a str,
    file: &'a Path,
    pid: u32,
}

fn run_wrk(settings: &Settings, token: &str, ticks: f64, load: &Load, tag: &str) -> anyhow::Result<Measured> {
    let (url, mode, file, pid) = (&load.url, load.mode, load.file, load.pid);
    let load_average = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let cpu_before = cpu_time(pid, ticks)?;
    let started = Instant::now();
    let output = Command::new(&settings.wrk)
        .arg(format!("-t{}", settings.threads))
        .arg(format!("-c{}", settings.connections))
        .arg(format!("-d{}s", settings.seconds))
        .arg(format!("--timeout={}s", settings.timeout_seconds))
        .args(["-s", LUA])
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .args(["-H", "Content-Type: application/json"])
        .args(["-H", "Accept: application/json"])
        .arg(url)
        .arg("--")
        .arg(mode)
        .arg(settings.threads.to_string())
        .arg(file)
        .arg(tag)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {} (install wrk, or set WRK)", settings.wrk))?;
    let wall = started.elapsed();
    let cpu = cpu_time(pid, ticks)?.saturating_sub(cpu_before);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let Some(line) = stdout.lines().find_map(|l| l.strip_prefix("BENCH_RESULT ")) else {
        bail!("wrk printed no result ({}):\n{stdout}\n{}", output.status, String::from_utf8_lossy(&output.stderr));
    };
    let wrk: Value = serde_json::from_str(line).with_context(|| format!("wrk's result: {line}"))?;
    let requests = wrk["requests"].as_u64().unwrap_or(0);
    let seconds = wrk["durationUs"].as_f64().unwrap_or(0.0) / 1e6;
    let requests_per_second = if seconds > 0.0 { requests as f64 / seconds } else { 0.0 };
    let cpu_ms = cpu.as_secs_f64() * 1000.0;
    let cpu_ms_per_request = if requests > 0 { cpu_ms / requests as f64 } else { 0.0 };
    let errors = &wrk["errors"];
    let json = json!({
        "requests": requests,
        "seconds": round(seconds, 3),
        "requestsPerSecond": round(requests_per_second, 1),
        "latencyMs": wrk["latencyMs"],
        "statuses": wrk["statuses"],
        "non2xx": wrk["non2xx"],
        "socketErrors": {
            "connect": errors["connect"], "read": errors["read"], "write": errors["write"], "timeout": errors["timeout"],
        },
        "cpuMsPerRequest": round(cpu_ms_per_request, 4),
        "cpuCores": round(cpu.as_secs_f64() / wall.as_secs_f64(), 2),
        "loadAverageBefore": load_average.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
        "repeatedRequests": wrk["repeats"],
    });
    Ok(Measured { wrk, requests, requests_per_second, cpu_ms_per_request, json })
}

fn round(value: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (value * scale).round() / scale
}

fn socket_errors(wrk: &Value) -> u64 {
    ["connect", "read", "write", "timeout"].iter().map(|k| wrk["errors"][k].as_u64().unwrap_or(0)).sum()
}

/// The body of `POST /integrations/connections`: the spec's example (fixtures/spec/01) with a few
/// more configuration keys: about 610 bytes, near the 594-byte body issue 11 measured.
fn connection_body(credential_ref: &str) -> String {
    json!({
        "tenantId": TENANT,
        "projectId": "proj-booking-saas",
        "providerId": "prov-github",
        "displayName": "Booking SaaS GitHub",
        "authMode": "OAuth2ClientCredentials",
        "credentialRef": credential_ref,
        "configuration": {
            "organization": "connectsoft-booking",
            "defaultBranch": "main",
            "webhookSecretRef": WEBHOOK_SECRET_REF,
            "repositories": ["connectsoft-booking/booking-api", "connectsoft-booking/booking-web",
                             "connectsoft-booking/booking-infra"],
            "webhookEvents": ["push", "pull_request", "release", "workflow_run"],
            "installationId": "48213377",
            "labels": {"team": "booking", "environment": "production", "costCenter": "cc-4711"}
        }
    })
    .to_string()
}

/// A GitHub push as GitHub sends it (trimmed), distinct per `n`.
fn push_body(n: usize) -> String {
    json!({
        "ref": "refs/heads/main", "before": "9049f1265b7d61be4a8904a9a27120d2064dab3b",
        "after": format!("{n:040x}"), "repository": {"full_name": "connectsoft-booking/booking"},
        "pusher": {"name": "octocat"}, "head_commit": {"id": format!("{n:040x}"), "message": "bench"}
    })
    .to_string()
}

fn github_signature(body: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, WEBHOOK_SECRET.as_bytes());
    format!("sha256={}", hex::encode(ring::hmac::sign(&key, body.as_bytes()).as_ref()))
}

/// Writes `count` signed deliveries, spread over one file per wrk thread (`PREFIX.THREAD`).
fn write_signed_deliveries(prefix: &Path, count: usize, threads: usize) -> anyhow::Result<()> {
    let mut files = (0..threads)
        .map(|t| {
            let path = PathBuf::from(format!("{}.{t}", prefix.display()));
            Ok(std::io::BufWriter::new(std::fs::File::create(path)?))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    for n in 0..count {
        let body = push_body(n);
        writeln!(files[n % threads], "bench-delivery-{n}\t{}\t{body}", github_signature(&body))?;
    }
    for mut file in files {
        file.flush()?;
    }
    Ok(())
}

fn engine_command(engine: &Path, args: &[&str], data_dir: &Path) -> Command {
    let mut command = Command::new(engine);
    command.args(args).arg("--data-dir").arg(data_dir).env_remove("IE_MASTER_KEY").env_remove("IE_CONFIG");
    command
}

/// Puts a secret in the bench tenant's vault (which every connection the bench makes names).
fn put_secret(engine: &Path, data_dir: &Path, secret_ref: &str, value: &str) -> anyhow::Result<()> {
    let mut child = engine_command(engine, &["secrets", "put", "--tenant", TENANT], data_dir)
        .arg(secret_ref)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()?;
    child.stdin.take().context("stdin")?.write_all(value.as_bytes())?;
    ensure!(child.wait()?.success(), "secrets put {secret_ref} failed");
    Ok(())
}

fn token(engine: &Path, data_dir: &Path) -> anyhow::Result<String> {
    let out = engine_command(engine, &["token"], data_dir)
        .args(["--tenant", TENANT, "--scope", SCOPES, "--ttl-seconds", "86400"])
        .output()?;
    ensure!(out.status.success(), "token failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

/// Registers the GitHub provider (`prov-github`, the provider of [`connection_body`]) with its
/// REST API at `api_url`.
async fn register_github(client: &reqwest::Client, base: &str, token: &str, api_url: &str) -> anyhow::Result<()> {
    let provider = json!({"tenantId": TENANT, "key": "github", "displayName": "GitHub",
        "category": "SourceControl", "authModel": "OAuth2ClientCredentials",
        "apiClient": "ConnectSoft.SourceControl.Providers.GitHub", "capabilities": ["repos.pulls.create"],
        "baseUrl": api_url});
    let response =
        client.post(format!("{base}/integrations/providers")).bearer_auth(token).json(&provider).send().await?;
    ensure!(response.status() == 201, "registering the provider: {} {}", response.status(), response.text().await?);
    Ok(())
}

/// Establishes connections through a plain client, `SETUP_CLIENTS` at a time, until `count` were
/// created or `deadline` passed; returns the ids created and the number of failed requests.
async fn establish(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    count: usize,
    body: impl Fn(usize) -> String + Send + Sync + 'static,
    deadline: Instant,
) -> anyhow::Result<(Vec<String>, usize)> {
    let remaining = Arc::new(AtomicUsize::new(count));
    let failures = Arc::new(AtomicUsize::new(0));
    let body = Arc::new(body);
    let mut tasks = Vec::new();
    for _ in 0..SETUP_CLIENTS.min(count) {
        let (client, url, token) = (client.clone(), format!("{base}/integrations/connections"), token.to_owned());
        let (remaining, failures, body) = (remaining.clone(), failures.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            while Instant::now() < deadline && failures.load(Ordering::Relaxed) < 1_000 {
                let Ok(left) = remaining.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                else {
                    break;
                };
                let n = left - 1;
                let sent = client.post(&url).bearer_auth(&token).header("content-type", "application/json");
                let created = match sent.body(body(n)).send().await {
                    Ok(response) if response.status() == 201 => response.json::<Value>().await.ok(),
                    _ => None,
                };
                match created.as_ref().and_then(|c| c["connectionId"].as_str()) {
                    Some(id) => ids.push(id.to_owned()),
                    None => {
                        failures.fetch_add(1, Ordering::Relaxed);
                        remaining.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            ids
        }));
    }
    let mut ids = Vec::new();
    for task in tasks {
        ids.extend(task.await?);
    }
    Ok((ids, failures.load(Ordering::Relaxed)))
}

/// A data dir of its own under the phase's directory, with the stand-in's token staged as
/// `HEALTH_SECRET_REF`.
fn checks_data_dir(phase: &HealthPhase, name: &str) -> anyhow::Result<PathBuf> {
    let data_dir = phase.dir.join(name);
    std::fs::create_dir_all(&data_dir)?;
    put_secret(phase.engine_bin, &data_dir, HEALTH_SECRET_REF, github_standin::TOKEN)?;
    Ok(data_dir)
}

/// `serve` with its workers over `data_dir`, allowed to call the loopback stand-in; its log in
/// `{log}.log` beside the data dirs. The engine and its base URL.
fn serve_with_checks(phase: &HealthPhase, data_dir: &Path, log: &str) -> anyhow::Result<(ChildGuard, String)> {
    let mut engine =
        engine_command(phase.engine_bin, &["serve", "--listen", "127.0.0.1:0", "--allow-private-egress"], data_dir);
    engine.env("IE_LOG", "warn").stderr(std::fs::File::create(phase.dir.join(format!("{log}.log")))?);
    spawn_listening(engine, "integration-engine serve")
}

/// The RSS figure as issue 11 words it ("at the end of a 100k-request run and back under 2×
/// idle within 60 s after"): a fresh engine on a data dir of its own, its idle VmRSS read 2 s
/// after it listens, then `BENCH_RSS_REQUESTS` requests (100,000), 64 at a time through a plain
/// client: each client alternates `POST` of a new connection and `GET` of one it created. The
/// connections' first health checks run against the local GitHub stand-in (they are part of
/// the load's aftermath). VmRSS is sampled every 250 ms from the start to `rss_wait_seconds`
/// after the last answer. The main run's `rss` figure is the same engine over the whole run
/// (about ten times as many requests, most of them creating state).
fn rss_run(phase: &HealthPhase) -> anyhow::Result<Value> {
    let (settings, engine_bin, runtime, client) = (phase.settings, phase.engine_bin, phase.runtime, phase.client);
    let standin = GitHubStandIn::start()?;
    let data_dir = checks_data_dir(phase, "rss-data")?;
    let (engine, base) = serve_with_checks(phase, &data_dir, "engine-rss")?;
    let pid = engine.pid();
    let sampler = RssSampler::start(pid);
    std::thread::sleep(Duration::from_secs(2));
    let idle = rss_kib(pid).context("engine's VmRSS")?;
    let token = token(engine_bin, &data_dir)?;
    let count = settings.rss_requests;
    eprintln!("RSS run: {count} requests on a fresh engine (idle RSS {} MiB)", mib(idle));
    let load_started = Instant::now();
    let failed = runtime.block_on(async {
        register_github(client, &base, &token, &standin.url).await?;
        let next = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..SETUP_CLIENTS)
            .map(|_| {
                let (client, base, token) = (client.clone(), base.clone(), token.clone());
                let (next, failed) = (next.clone(), failed.clone());
                tokio::spawn(async move {
                    // The connection this client created last and has not read yet.
                    let mut created: Option<String> = None;
                    while next.fetch_add(1, Ordering::Relaxed) < count {
                        let ok = match created.take() {
                            None => {
                                let body = connection_body(HEALTH_SECRET_REF);
                                let sent = client.post(format!("{base}/integrations/connections")).bearer_auth(&token);
                                match sent.header("content-type", "application/json").body(body).send().await {
                                    Ok(r) if r.status() == 201 => r.json::<Value>().await.ok().and_then(|c| {
                                        created = Some(c["connectionId"].as_str()?.to_owned());
                                        Some(())
                                    }),
                                    _ => None,
                                }
                            }
                            Some(id) => {
                                let url = format!("{base}/integrations/connections/{id}");
                                let response = client.get(url).bearer_auth(&token).send().await;
                                response.ok().filter(|r| r.status() == 200).map(|_| ())
                            }
                        };
                        if ok.is_none() {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await?;
        }
        anyhow::Ok(failed.load(Ordering::Relaxed))
    })?;
    let load_ended = Instant::now();
    let end = rss_kib(pid).context("engine's VmRSS")?;
    eprintln!(
        "RSS run: {count} requests in {:.1} s; watching RSS for {} s",
        load_ended.duration_since(load_started).as_secs_f64(),
        settings.rss_wait_seconds
    );
    std::thread::sleep(Duration::from_secs(settings.rss_wait_seconds));
    let after = rss_kib(pid).context("engine's VmRSS")?;
    let samples = sampler.samples.lock().unwrap().clone();
    drop(sampler);
    drop(engine);
    let back_under_twice_idle = samples
        .iter()
        .filter(|(at, _)| *at >= load_ended)
        .find(|(_, kib)| *kib <= 2 * idle)
        .map(|(at, _)| round(at.duration_since(load_ended).as_secs_f64(), 1));
    Ok(json!({
        "requests": count,
        "failedRequests": failed,
        "loadSeconds": round(load_ended.duration_since(load_started).as_secs_f64(), 1),
        "idleMiB": mib(idle),
        "peakMiB": mib(samples.iter().map(|(_, kib)| *kib).max().unwrap_or(0)),
        "endMiB": mib(end),
        "afterWaitMiB": mib(after),
        "waitSeconds": settings.rss_wait_seconds,
        "afterWaitOverIdle": round(after as f64 / idle as f64, 2),
        "secondsBackUnderTwiceIdle": back_under_twice_idle,
        "healthChecksAnswered": standin.count(),
    }))
}

/// The secret of the health-check figure's connections: the stand-in's token.
const HEALTH_SECRET_REF: &str = "kv://bench/github-token";

/// What the health-check figure needs from the rest of the run.
struct HealthPhase<'a> {
    settings: &'a Settings,
    engine_bin: &'a Path,
    dir: &'a Path,
    ticks: f64,
    runtime: &'a tokio::runtime::Runtime,
    client: &'a reqwest::Client,
    /// The body of the `POST` measured during the checks (a new, unstaged `credentialRef` each
    /// time, as in `connectionsUnique`: its own first check fails at the vault, with no call).
    unique_body: &'a Path,
    /// The same figures measured earlier without the checks, and the ceiling, in req/s.
    post_before: f64,
    get_before: f64,
    ceiling: f64,
}

/// The health-check figure: `BENCH_HEALTH_CHECKS` connections whose first health check is due at
/// once, all checked against a local stand-in for GitHub ([`github_standin`]), while the API is
/// measured again and compared with its figures without the checks (for `GET`, on the same
/// connections: see [`health_round`]).
///
/// One round per API figure (`POST`, then `GET` connections, each `BENCH_SECONDS`), each on a data
/// dir of its own with its own 20,000 checks due: measured one after the other on one engine, the
/// second figure would also pay for the background work the first one left (the `POST`s' own
/// checks), which is not what it compares.
fn health_checks(phase: &HealthPhase) -> anyhow::Result<(Value, Vec<Row>)> {
    let loads = [
        ("connectionsUnique", "POST connections during checks", "body", phase.post_before),
        ("connectionsGet", "GET connections during checks", "paths", phase.get_before),
    ];
    let mut rounds = serde_json::Map::new();
    let mut api = serde_json::Map::new();
    let mut rows = Vec::new();
    for (key, figure, mode, before) in loads {
        let (round, measured) = health_round(phase, key, figure, mode, before)?;
        api.insert(key.to_owned(), round["api"].clone());
        rows.push(Row {
            figure: figure.to_owned(),
            share: Some(measured.requests_per_second / phase.ceiling),
            measured,
        });
        rounds.insert(key.to_owned(), round);
    }
    let all = |field: &str| rounds.values().all(|r| r[field] == true);
    let slowest = rounds.values().filter_map(|r| r["checksPerSecond"].as_f64()).reduce(f64::min);
    let json = json!({
        "connections": phase.settings.health_checks,
        "allChecked": all("allChecked"),
        "checksPerSecond": slowest.filter(|_| rounds.values().all(|r| r["checksPerSecond"].is_number())),
        "api": Value::Object(api),
        "rounds": Value::Object(rounds),
        "note": "one round per API figure, each on a fresh engine owing every first check at once; checksPerSecond is \
                 the slower round's, counted from the moment its engine listens to the last check the stand-in \
                 answered; each API figure was measured while its round's checks ran (checksDuring) and is compared \
                 with the same figure without them (shareOfFigureWithoutChecks): GET with the same connections read \
                 through the engine that established them, with no workers (withoutChecks), POST with its figure \
                 measured earlier in this run; shareOfEarlierFigure compares both with the earlier figures",
    });
    Ok((json, rows))
}

/// One round of the health-check figure: the connections are established on an engine started
/// with `--no-workers`, which projects them but checks nothing, and that engine is killed. A
/// second engine over the same data dir (with its workers, and `--allow-private-egress` for the
/// loopback stand-in) then owes every first check at once, while the API figure `key` is measured.
/// "All checked" is read back from the read model (`health: Healthy`) of every connection.
fn health_round(
    phase: &HealthPhase,
    key: &str,
    figure: &str,
    mode: &str,
    earlier: f64,
) -> anyhow::Result<(Value, Measured)> {
    let (settings, engine_bin, runtime, client) = (phase.settings, phase.engine_bin, phase.runtime, phase.client);
    let count = settings.health_checks;
    let standin = GitHubStandIn::start()?;
    let data_dir = checks_data_dir(phase, &format!("health-data-{key}"))?;
    let log = |name: &str| std::fs::File::create(phase.dir.join(format!("{name}-{key}.log")));

    eprintln!("establishing {count} connections with no workers to check them");
    let mut quiet = engine_command(engine_bin, &["serve", "--listen", "127.0.0.1:0", "--no-workers"], &data_dir);
    quiet.env("IE_LOG", "warn").stderr(log("engine-no-workers")?);
    let (quiet, base) = spawn_listening(quiet, "integration-engine serve --no-workers")?;
    // The first `serve` of a data dir creates its development signing key.
    let token = token(engine_bin, &data_dir)?;
    let prefill_started = Instant::now();
    let deadline = prefill_started + Duration::from_secs(settings.prefill_max_seconds);
    let (ids, failed) = runtime.block_on(async {
        register_github(client, &base, &token, &standin.url).await?;
        establish(client, &base, &token, count, |_| connection_body(HEALTH_SECRET_REF), deadline).await
    })?;
    let prefill_seconds = prefill_started.elapsed().as_secs_f64();
    let get_paths = phase.dir.join(format!("health-get-paths-{key}.txt"));
    std::fs::write(&get_paths, ids.iter().map(|id| format!("/integrations/connections/{id}\n")).collect::<String>())?;
    // `GET` is compared with itself on the same connections and data dir with no checks due
    // (this engine checks nothing), so the share is the checks' cost alone; the figure measured
    // earlier reads another engine's 1,000 connections.
    let without_checks = if mode == "paths" {
        eprintln!("measuring {figure}, with no checks due, for {} s", settings.seconds);
        let load = Load { url: format!("{base}/integrations/connections"), mode, file: &get_paths, pid: quiet.pid() };
        Some(run_wrk(settings, &token, phase.ticks, &load, "hq")?)
    } else {
        None
    };
    drop(quiet);
    ensure!(standin.count() == 0, "an engine with --no-workers checked {} connections", standin.count());

    eprintln!("starting an engine that owes {} first health checks", ids.len());
    let (engine, base) = serve_with_checks(phase, &data_dir, &format!("engine-health-{key}"))?;
    let due_at = Instant::now();
    let cpu_at_start = cpu_time(engine.pid(), phase.ticks)?;

    let connections_url = format!("{base}/integrations/connections");
    let file = if mode == "body" { phase.unique_body } else { get_paths.as_path() };
    eprintln!("measuring {figure} for {} s", settings.seconds);
    let load = Load { url: connections_url, mode, file, pid: engine.pid() };
    // The tag becomes part of each `credentialRef`: lower case, as secret names are.
    let tag = if mode == "body" { "hp" } else { "hg" };
    let measured = run_wrk(settings, &token, phase.ticks, &load, tag)?;
    let mut api = measured.json.clone();
    api["checksDuring"] = json!(standin.count());
    api["shareOfCeiling"] = json!(round(measured.requests_per_second / phase.ceiling, 4));
    // POST's figure without checks is the one measured earlier (a POST on an engine with no
    // workers would skip its own connection's check, which the earlier figure paid for).
    let before = without_checks.as_ref().map_or(earlier, |m| m.requests_per_second);
    api["shareOfFigureWithoutChecks"] = json!(round(measured.requests_per_second / before, 4));
    api["shareOfEarlierFigure"] = json!(round(measured.requests_per_second / earlier, 4));
    if let Some(without) = &without_checks {
        api["withoutChecks"] = without.json.clone();
    }

    let deadline = due_at + Duration::from_secs(settings.health_max_seconds);
    while standin.count() < ids.len() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let times = standin.times();
    let cpu = cpu_time(engine.pid(), phase.ticks)?.saturating_sub(cpu_at_start).as_secs_f64();
    // The last checks answered are recorded and projected a moment later.
    let mut healthy = 0;
    for _ in 0..20 {
        healthy = runtime.block_on(count_healthy(client, &base, &token, &ids))?;
        if healthy == ids.len() {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    drop(engine);

    let seconds_to = |n: usize| times.get(n.saturating_sub(1)).map(|t| t.duration_since(due_at).as_secs_f64());
    let all = seconds_to(ids.len()).filter(|_| times.len() >= ids.len());
    let json = json!({
        "connections": ids.len(),
        "prefill": {"failedRequests": failed, "seconds": round(prefill_seconds, 1)},
        "checksAnswered": times.len(),
        "connectionsHealthy": healthy,
        "allChecked": healthy == ids.len(),
        "secondsToFirstCheck": seconds_to(1).map(|s| round(s, 3)),
        "secondsToHalf": seconds_to(ids.len() / 2).map(|s| round(s, 2)),
        "secondsToAll": all.map(|s| round(s, 2)),
        "checksPerSecond": all.map(|s| round(ids.len() as f64 / s, 1)),
        "engineCpuMsPerCheck": all.map(|_| round(cpu * 1000.0 / ids.len() as f64, 3)),
        "api": api,
    });
    Ok((json, measured))
}

async fn count_healthy(client: &reqwest::Client, base: &str, token: &str, ids: &[String]) -> anyhow::Result<usize> {
    let ids = Arc::new(ids.to_vec());
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..SETUP_CLIENTS {
        let (client, base, token, ids, next) =
            (client.clone(), base.to_owned(), token.to_owned(), ids.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut healthy = 0;
            while let Some(id) = ids.get(next.fetch_add(1, Ordering::Relaxed)) {
                let url = format!("{base}/integrations/connections/{id}");
                let view: Value = client.get(url).bearer_auth(&token).send().await?.error_for_status()?.json().await?;
                healthy += usize::from(view["health"] == "Healthy");
            }
            anyhow::Ok(healthy)
        }));
    }
    let mut healthy = 0;
    for task in tasks {
        healthy += task.await??;
    }
    Ok(healthy)
}

/// The engine's log (stderr, `IE_LOG=warn`): how many lines, counted by level and target, and
/// the first few.
fn engine_log_summary(path: &Path) -> Value {
    let log = strip_ansi(&std::fs::read_to_string(path).unwrap_or_default());
    let mut by_target: BTreeMap<String, u64> = BTreeMap::new();
    for line in log.lines() {
        // `2026-01-01T00:00:00Z  WARN workers::executor: message ...`
        let mut words = line.split_whitespace().skip(1);
        if let (Some(level @ ("ERROR" | "WARN")), Some(target)) = (words.next(), words.next()) {
            *by_target.entry(format!("{level} {}", target.trim_end_matches(':'))).or_default() += 1;
        }
    }
    let first: Vec<String> = log.lines().take(8).map(|l| l.chars().take(400).collect()).collect();
    json!({"lines": log.lines().count(), "byLevelAndTarget": by_target, "first": first})
}

/// The text without terminal colour sequences (`ESC [ ... m`).
fn strip_ansi(text: &str) -> String {
    let mut plain = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|&c| c == 'm');
        } else {
            plain.push(c);
        }
    }
    plain
}

fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_owned());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().next()?.split_whitespace().nth(1)?.parse::<u64>().ok());
    json!({
        "nproc": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "cpuModel": model,
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|k| k.trim().to_owned()).ok(),
        "memoryMiB": memory.map(|kib| kib / 1024),
    })
}

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).current_dir(env!("CARGO_MANIFEST_DIR")).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn wrk_version(wrk: &str) -> String {
    Command::new(wrk)
        .arg("-v")
        .output()
        .ok()
        .and_then(|out| {
            let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
            text.lines().next().map(|l| l.split(" Copyright").next().unwrap_or(l).trim().to_owned())
        })
        .unwrap_or_else(|| wrk.to_owned())
}

/// The figures measured so far, and what measuring needs.
struct Bench<'a> {
    settings: &'a Settings,
    token: &'a str,
    ticks: f64,
    engine_pid: u32,
    rss: &'a RssSampler,
    /// Base URLs left out of the URLs recorded in the results.
    hosts: [String; 2],
    rows: Vec<Row>,
    figures: serde_json::Map<String, Value>,
    engine_requests: u64,
}

impl Bench<'_> {
    /// Measures one figure (after a pause, during which the engine's own CPU use is noted) and
    /// records it under `key` (the shared-credential levels as an array), with `extra` fields.
    fn measure(&mut self, key: &str, figure: &str, load: &Load, extra: Value) -> anyhow::Result<()> {
        let engine = load.pid == self.engine_pid;
        // A pause between figures: at least 2 s, and up to BENCH_SETTLE_MAX_SECONDS until the
        // background work the previous figures left (e.g. the first health checks of the
        // connections just created, which yield to the API while it is busy) is done: every
        // consumer caught up with the store, or the engine under 0.1 core. So each figure
        // measures its own path, not the one before it; what was left is recorded.
        let pause = Instant::now();
        let lag_before = engine.then(|| worker_lag(&self.hosts[0]));
        let background = loop {
            let before = cpu_time(self.engine_pid, self.ticks)?;
            std::thread::sleep(Duration::from_secs(1));
            let cores = cpu_time(self.engine_pid, self.ticks)?.saturating_sub(before).as_secs_f64();
            let waited = pause.elapsed().as_secs();
            // The ceiling's figures (one of them during the RSS wait) only take the short pause.
            let caught_up = !engine
                || worker_lag(&self.hosts[0]).as_object().is_some_and(|lags| {
                    lags.values().all(|lag| lag.as_u64().is_some_and(|lag| lag < SETTLED_LAG_EVENTS))
                });
            if waited >= 2 && (cores < 0.1 || caught_up || waited >= self.settings.settle_max_seconds) {
                break cores;
            }
        };
        let paused = pause.elapsed().as_secs();
        eprintln!("measuring {figure} for {} s", self.settings.seconds);
        let from = Instant::now();
        // A tag per figure makes the Lua script's unique refs unique across figures too.
        let measured = run_wrk(self.settings, self.token, self.ticks, load, &format!("f{}", self.rows.len()))?;
        let to = Instant::now();
        let ceiling = self.rows.first().map(|r| r.measured.requests_per_second);
        let share = ceiling.filter(|_| engine).map(|c| measured.requests_per_second / c);
        let mut json = measured.json.clone();
        json["figure"] = json!(figure);
        json["url"] = json!(self.hosts.iter().fold(load.url.clone(), |url, host| url.replace(host.as_str(), "")));
        if engine {
            self.engine_requests += measured.requests;
            json["shareOfCeiling"] = json!(share.map(|s| round(s, 4)));
            json["engineBackgroundCpuCoresBefore"] = json!(round(background, 2));
            json["pauseBeforeSeconds"] = json!(paused);
            json["rssPeakMiB"] = json!(mib(self.rss.peak_between(from, to)));
            json["rssEndMiB"] = json!(rss_kib(self.engine_pid).map(mib));
            json["workerLagEventsAfter"] = worker_lag(&self.hosts[0]);
            json["workerLagEventsBeforePause"] = lag_before.unwrap_or_default();
        }
        if let (Value::Object(json), Value::Object(extra)) = (&mut json, extra) {
            json.extend(extra);
        }
        match self.figures.get_mut(key) {
            Some(Value::Array(levels)) => levels.push(json),
            _ if key == "connectionsShared" => drop(self.figures.insert(key.to_owned(), json!([json]))),
            _ => drop(self.figures.insert(key.to_owned(), json)),
        }
        self.rows.push(Row { figure: figure.to_owned(), measured, share });
        Ok(())
    }
}

/// A consumer this few events behind the store has caught up (the events of the last moments).
const SETTLED_LAG_EVENTS: u64 = 2_000;

/// How far each of the engine's in-process consumers and read models is behind the store
/// (`consumer_lag_events` and `projection_lag_events` on `/metrics`, the latter as
/// `projection:NAME`): the background work (health checks above all) a figure left for
/// later, since the workers yield the cores to the API while it is busy. Null when unreadable.
fn worker_lag(base: &str) -> Value {
    let read = || -> Option<String> {
        let addr = base.strip_prefix("http://")?;
        let mut stream = std::net::TcpStream::connect(addr).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        write!(stream, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
        let mut text = String::new();
        stream.read_to_string(&mut text).ok()?;
        Some(text)
    };
    let Some(text) = read() else { return Value::Null };
    let lags: serde_json::Map<String, Value> = text
        .lines()
        .filter_map(|line| {
            let (name, lag) = match line.strip_prefix("projection_lag_events{projection=\"") {
                Some(projection) => {
                    let (name, lag) = projection.split_once("\"} ")?;
                    (format!("projection:{name}"), lag)
                }
                None => {
                    let (name, lag) = line.strip_prefix("consumer_lag_events{consumer=\"")?.split_once("\"} ")?;
                    (name.to_owned(), lag)
                }
            };
            Some((name, json!(lag.trim().parse::<f64>().ok()? as u64)))
        })
        .collect();
    Value::Object(lags)
}

/// One row of the printed table.
struct Row {
    figure: String,
    measured: Measured,
    share: Option<f64>,
}

fn print_table(rows: &[Row]) {
    println!(
        "{:<34} {:>10} {:>8} {:>9} {:>9} {:>8} {:>7} {:>9}",
        "figure", "req/s", "share", "p50 ms", "p99 ms", "non-2xx", "errors", "CPU ms/r"
    );
    for row in rows {
        let latency = &row.measured.wrk["latencyMs"];
        println!(
            "{:<34} {:>10.0} {:>8} {:>9.2} {:>9.2} {:>8} {:>7} {:>9.3}",
            row.figure,
            row.measured.requests_per_second,
            row.share.map_or_else(|| "-".to_owned(), |s| format!("{:.1}%", s * 100.0)),
            latency["p50"].as_f64().unwrap_or(0.0),
            latency["p99"].as_f64().unwrap_or(0.0),
            row.measured.wrk["non2xx"].as_u64().unwrap_or(0),
            socket_errors(&row.measured.wrk),
            row.measured.cpu_ms_per_request,
        );
    }
}

fn main() -> anyhow::Result<()> {
    let out_file = std::env::args().nth(1);
    let settings = Settings::from_env()?;
    let ticks = clock_ticks_per_second();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let started_at = chrono::Utc::now();

    // The binaries sit beside this one: target/release/examples/bench_http.
    let examples_dir = std::env::current_exe()?.parent().context("examples dir")?.to_path_buf();
    let echo_bin = examples_dir.join("bench_echo");
    let engine_bin = examples_dir.parent().context("target dir")?.join("integration-engine");
    for bin in [&echo_bin, &engine_bin] {
        ensure!(
            bin.exists(),
            "{} is missing: cargo build --release --bin integration-engine --examples",
            bin.display()
        );
    }
    ensure!(Path::new(LUA).exists(), "{LUA} is missing");

    let temp = tempfile::tempdir()?;
    let data_dir = temp.path().join("data");
    std::fs::create_dir_all(&data_dir)?;
    put_secret(&engine_bin, &data_dir, WEBHOOK_SECRET_REF, WEBHOOK_SECRET)?;

    let mut echo_command = Command::new(&echo_bin);
    echo_command.args(["--listen", "127.0.0.1:0"]);
    let (echo, echo_base) = spawn_listening(echo_command, "bench_echo")?;
    let engine_log = temp.path().join("engine.log");
    let mut engine_command = engine_command(&engine_bin, &["serve", "--listen", "127.0.0.1:0"], &data_dir);
    engine_command.env("IE_LOG", "warn").stderr(std::fs::File::create(&engine_log)?);
    let engine_started = Instant::now();
    let (engine, base) = spawn_listening(engine_command, "integration-engine serve")?;
    let engine_pid = engine.pid();
    let rss = RssSampler::start(engine_pid);
    std::thread::sleep(Duration::from_secs(2));
    let rss_idle = rss_kib(engine_pid).context("engine's VmRSS")?;
    eprintln!("engine {base} (pid {engine_pid}, idle RSS {} MiB), ceiling {echo_base}", mib(rss_idle));

    // Setup through a plain client: the provider, the connection that receives the deliveries,
    // and the connections the GETs read.
    let token = token(&engine_bin, &data_dir)?;
    let client = reqwest::Client::builder().timeout(Duration::from_secs(60)).build()?;
    let far = Instant::now() + Duration::from_secs(3600);
    let (webhook_connection, get_ids) = runtime.block_on(async {
        register_github(&client, &base, &token, "https://api.github.com").await?;
        let (webhook, _) = establish(&client, &base, &token, 1, |_| connection_body("kv://bench/webhook"), far).await?;
        let (ids, failed) = establish(
            &client,
            &base,
            &token,
            settings.get_connections,
            |n| connection_body(&format!("kv://bench/get-{n}")),
            far,
        )
        .await?;
        ensure!(!webhook.is_empty() && !ids.is_empty(), "no connection could be established ({failed} failures)");
        anyhow::Ok((webhook[0].clone(), ids))
    })?;
    let mut setup_requests = 2 + get_ids.len();

    let unique_body = temp.path().join("connection-unique.json");
    std::fs::write(&unique_body, connection_body(&format!("kv://bench/cred-{UNIQUE}")))?;
    // As the Lua script makes it for the 1,000th request of a thread.
    let body_bytes = connection_body("kv://bench/cred-f1-0-1000").len();
    let get_paths = temp.path().join("get-paths.txt");
    std::fs::write(
        &get_paths,
        get_ids.iter().map(|id| format!("/integrations/connections/{id}\n")).collect::<String>(),
    )?;
    let signed = temp.path().join("signed");
    write_signed_deliveries(&signed, settings.deliveries, settings.threads)?;

    let mut bench = Bench {
        settings: &settings,
        token: &token,
        ticks,
        engine_pid,
        rss: &rss,
        hosts: [base.clone(), echo_base.clone()],
        rows: Vec::new(),
        figures: serde_json::Map::new(),
        engine_requests: 0,
    };
    let connections_url = format!("{base}/integrations/connections");
    let ceiling = Load { url: format!("{echo_base}/echo"), mode: "body", file: &unique_body, pid: echo.pid() };
    bench.measure("ceiling", "ceiling: POST /echo", &ceiling, json!({"bodyBytes": body_bytes}))?;
    // The figures that leave background work behind go last: every new connection owes a first
    // health check, which the engine runs for a minute after the POSTs (its workers yield to the
    // API, so the work waits for the next pause), and would be measured with the next figure.
    let gets = Load { url: connections_url.clone(), mode: "paths", file: &get_paths, pid: engine_pid };
    bench.measure("connectionsGet", "GET connections/{id}", &gets, json!({"distinctConnections": get_ids.len()}))?;

    let deliveries = Load {
        url: format!("{base}/webhooks/deliveries?connectionId={webhook_connection}"),
        mode: "signed",
        file: &signed,
        pid: engine_pid,
    };
    bench.measure(
        "deliveries",
        "POST webhooks/deliveries (GitHub)",
        &deliveries,
        json!({"preSigned": settings.deliveries}),
    )?;
    bench.measure(
        "connectionsUnique",
        "POST connections, unique cred",
        &Load { url: connections_url.clone(), mode: "body", file: &unique_body, pid: engine_pid },
        json!({"bodyBytes": body_bytes}),
    )?;
    // One credential for every connection, at growing numbers of connections naming it.
    // Each level has a credential of its own, so that exactly that many connections name it when
    // its measurement starts (the measurement then adds its own).
    for &level in &settings.shared_prefill {
        let credential_ref = format!("kv://bench/shared-{level}");
        let mut prefill = json!(null);
        let mut sharing = 0;
        if level > 0 {
            eprintln!("prefilling {level} connections naming {credential_ref}");
            let started = Instant::now();
            let deadline = started + Duration::from_secs(settings.prefill_max_seconds);
            let body = connection_body(&credential_ref);
            let (ids, failed) =
                runtime.block_on(establish(&client, &base, &token, level, move |_| body.clone(), deadline))?;
            let seconds = started.elapsed().as_secs_f64();
            sharing = ids.len();
            setup_requests += ids.len() + failed;
            prefill = json!({"created": ids.len(), "failedRequests": failed, "seconds": round(seconds, 1),
                "perSecond": round(ids.len() as f64 / seconds, 1), "complete": sharing >= level});
        }
        let shared_body = temp.path().join(format!("connection-shared-{level}.json"));
        std::fs::write(&shared_body, connection_body(&credential_ref))?;
        let extra = json!({"credentialRef": credential_ref, "targetPrefill": level,
            "connectionsNamingItAtStart": sharing, "prefill": prefill});
        bench.measure(
            "connectionsShared",
            &format!("POST connections, shared cred @{sharing}"),
            &Load { url: connections_url.clone(), mode: "body", file: &shared_body, pid: engine_pid },
            extra,
        )?;
    }
    // RSS: at the end of the load, then after a quiet wait, during which the ceiling is measured
    // again (it does not touch the engine) to show how much the machine drifted over the run.
    let load_ended = Instant::now();
    let rss_end = rss_kib(engine_pid).context("engine's VmRSS")?;
    let cpu_at_end = cpu_time(engine_pid, ticks)?;
    let served = bench.engine_requests + setup_requests as u64;
    eprintln!("waiting {} s for the engine's RSS to settle", settings.rss_wait_seconds);
    if settings.rss_wait_seconds >= settings.seconds + 3 {
        let extra = json!({"bodyBytes": body_bytes, "note": "while the engine idles for the RSS figure"});
        bench.measure("ceilingAtEnd", "ceiling again, at the end", &ceiling, extra)?;
    }
    std::thread::sleep(Duration::from_secs(settings.rss_wait_seconds).saturating_sub(load_ended.elapsed()));
    let Bench { mut rows, mut figures, .. } = bench;
    let rss_after = rss_kib(engine_pid).context("engine's VmRSS")?;
    let cpu_during_wait = cpu_time(engine_pid, ticks)?.saturating_sub(cpu_at_end).as_secs_f64();
    let rss_peak = rss.peak_between(engine_started, Instant::now());
    let rss_json = json!({
        "idleMiB": mib(rss_idle),
        "peakMiB": mib(rss_peak),
        "endMiB": mib(rss_end),
        "afterWaitMiB": mib(rss_after),
        "waitSeconds": settings.rss_wait_seconds,
        "afterWaitOverIdle": round(rss_after as f64 / rss_idle as f64, 2),
        "requestsServedAtEnd": served,
        "engineCpuCoresDuringWait": round(cpu_during_wait / load_ended.elapsed().as_secs_f64(), 2),
        "loadSeconds": round(load_ended.duration_since(engine_started).as_secs_f64(), 1),
    });
    drop(rss);
    drop(engine);
    let figure = |key: &str| figures.get(key).and_then(|f| f["requestsPerSecond"].as_f64()).unwrap_or(f64::NAN);
    let phase = HealthPhase {
        settings: &settings,
        engine_bin: &engine_bin,
        dir: temp.path(),
        ticks,
        runtime: &runtime,
        client: &client,
        unique_body: &unique_body,
        post_before: figure("connectionsUnique"),
        get_before: figure("connectionsGet"),
        ceiling: rows[0].measured.requests_per_second,
    };
    let rss_run = if settings.rss_requests > 0 { Some(rss_run(&phase)?) } else { None };
    if settings.health_checks > 0 {
        let (json, health_rows) = health_checks(&phase)?;
        figures.insert("healthChecks".into(), json);
        rows.extend(health_rows);
    }
    if let Some(rss_run) = rss_run {
        figures.insert("rssRun".into(), rss_run);
    }
    drop(echo);

    let date = started_at.format("%Y-%m-%d").to_string();
    let status = git(&["status", "--porcelain", "--untracked-files=no"]);
    let result = json!({
        "benchmark": "HTTP load: the engine against a trivial axum JSON echo (the ceiling), same wrk load (examples/bench_http.rs)",
        "date": date,
        "startedAt": started_at.to_rfc3339(),
        "git": {"commit": git(&["rev-parse", "HEAD"]), "dirty": status.map(|s| !s.is_empty())},
        "machine": machine(),
        "settings": settings.to_json(),
        "ceilingRequestsPerSecond": round(rows[0].measured.requests_per_second, 1),
        "figures": Value::Object(figures),
        "rss": rss_json,
        "engineLog": engine_log_summary(&engine_log),
        "notes": "shareOfCeiling = engine req/s / ceiling req/s in this run. cpuMsPerRequest is the process's \
                  utime+stime over the wrk run divided by its requests (it includes the engine's background work, \
                  e.g. health checks of new connections). Client, ceiling and engine share the machine's cores.",
    });
    let text = serde_json::to_string_pretty(&result)? + "\n";
    let dated = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("bench-results/http-{date}.json"));
    let mut written = vec![dated];
    written.extend(out_file.map(PathBuf::from));
    for path in &written {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, &text)?;
    }

    print_table(&rows);
    let mut summary = String::new();
    let _ = write!(
        summary,
        "RSS: idle {} MiB, peak {} MiB, end {} MiB after {served} requests, {} MiB {} s later",
        mib(rss_idle),
        mib(rss_peak),
        mib(rss_end),
        mib(rss_after),
        settings.rss_wait_seconds
    );
    println!("{summary}");
    if let Some(run) = result["figures"].get("rssRun") {
        println!(
            "RSS of a {}-request run on a fresh engine: idle {} MiB, peak {} MiB, end {} MiB, {} MiB {} s later (under 2x idle after {} s)",
            run["requests"],
            run["idleMiB"],
            run["peakMiB"],
            run["endMiB"],
            run["afterWaitMiB"],
            run["waitSeconds"],
            run["secondsBackUnderTwiceIdle"]
        );
    }
    if let Some(health) = result["figures"].get("healthChecks") {
        println!(
            "health checks due at once: {} connections per round, all checked: {}, {} checks/s (the slower round)",
            health["connections"], health["allChecked"], health["checksPerSecond"]
        );
    }
    for path in &written {
        println!("wrote {}", path.display());
    }
    let mut server_errors: BTreeMap<String, u64> = BTreeMap::new();
    for row in &rows {
        for (status, n) in row.measured.wrk["statuses"].as_object().into_iter().flatten() {
            if status.starts_with('5') {
                *server_errors.entry(format!("{} {status}", row.figure)).or_default() += n.as_u64().unwrap_or(0);
            }
        }
    }
    for (figure_status, n) in &server_errors {
        println!("server errors: {figure_status}: {n}");
    }
    for row in &rows {
        let repeats = row.measured.wrk["repeats"].as_u64().unwrap_or(0);
        if repeats > 0 {
            println!("{}: {repeats} requests repeated a pre-signed delivery (raise BENCH_DELIVERIES)", row.figure);
        }
    }
    Ok(())
}
