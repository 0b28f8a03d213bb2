//! The workers' wiring: the `worker` command (Kafka consumers in a consumer group), the workers
//! `serve` runs in-process (the embedded feed by default, Kafka with `--kafka-brokers`), the
//! relay, and the `runs start` command that feeds `StartRun` to the engine.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use connectors::egress::EgressPolicy;
use connectors::operations::ApiClients;
use domain::Actor;
use store::SqliteLeases;
use tokio_util::sync::CancellationToken;
use workers::control_plane::{ControlPlane, encode_command};
use workers::executor::RUN_EXECUTOR_CONSUMER;
use workers::kafka::{run_commands_consumer, send_command};
use workers::messages::{COMMANDS_TOPIC, ControlCommand, StartRun, run_id_for};
use workers::pace::{Foreground, Pace};
use workers::relay::{RELAY_CONSUMER, run_relay};
use workers::{ConsumerOptions, EmbeddedFeed, ExecutorSettings, KafkaSettings, RunExecutor, SqliteCheckpoints};

use crate::data_dir::{DataDir, EVENTS_DB, WORKERS_DB};
use crate::process::{Feeds, Stores, Task, wait_for_topics};

/// Where the Kafka bus is; without brokers the engine runs embedded.
#[derive(Args, Clone, Debug)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers (`host:port,...`). Without it, `serve` runs embedded: the workers
    /// read the event store in-process and nothing is published.
    #[arg(long, env = "IE_KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,
    /// Prefix of the consumer groups (`PREFIX.run-executor`, `PREFIX.commands`).
    #[arg(long, env = "IE_KAFKA_GROUP_PREFIX", default_value = "integration-engine")]
    pub kafka_group_prefix: String,
    /// Partitions of the topics created when missing.
    #[arg(long, env = "IE_KAFKA_PARTITIONS", default_value_t = 6)]
    pub kafka_partitions: i32,
    /// Replication factor of the topics created when missing.
    #[arg(long, env = "IE_KAFKA_REPLICATION_FACTOR", default_value_t = 1)]
    pub kafka_replication_factor: i32,
    /// How long the group waits for a silent worker before handing its partitions to the others.
    #[arg(long, env = "IE_KAFKA_SESSION_TIMEOUT_MS", default_value_t = 10_000)]
    pub kafka_session_timeout_ms: u64,
    /// Longest wait of a consumer's fetch at the broker (librdkafka `fetch.wait.max.ms`). Brokers that hold a fetch for part of it even with messages there (tansu) add up to this to each hop; shorter means more empty fetches while idle
    #[arg(long, env = "IE_KAFKA_FETCH_WAIT_MS", default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub kafka_fetch_wait_ms: u64,
}

impl KafkaArgs {
    pub fn settings(&self) -> Option<KafkaSettings> {
        let brokers = self.kafka_brokers.as_ref()?;
        let mut settings = KafkaSettings::new(brokers.clone());
        settings.group_prefix = self.kafka_group_prefix.clone();
        settings.partitions = self.kafka_partitions;
        settings.replication_factor = self.kafka_replication_factor;
        settings.session_timeout = Duration::from_millis(self.kafka_session_timeout_ms);
        settings.fetch_wait = Duration::from_millis(self.kafka_fetch_wait_ms);
        Some(settings)
    }
}

/// How runs are executed.
#[derive(Args, Clone, Debug)]
pub struct RunArgs {
    /// Attempts per run, overriding every operation's own limit.
    #[arg(long, env = "IE_RUN_MAX_ATTEMPTS")]
    pub run_max_attempts: Option<u32>,
    /// Per-attempt timeout in ms, overriding every operation's own.
    #[arg(long, env = "IE_RUN_ATTEMPT_TIMEOUT_MS")]
    pub run_attempt_timeout_ms: Option<u64>,
    /// Backoff before the second attempt in ms (doubling per attempt), overriding the operation's.
    #[arg(long, env = "IE_RUN_FIRST_BACKOFF_MS")]
    pub run_first_backoff_ms: Option<u64>,
    /// Longest backoff between attempts in ms, overriding the operation's.
    #[arg(long, env = "IE_RUN_MAX_BACKOFF_MS")]
    pub run_max_backoff_ms: Option<u64>,
    /// Runs one process executes at once (each run's attempts stay one after the other).
    #[arg(long, env = "IE_RUN_CONCURRENCY", default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..))]
    pub run_concurrency: u16,
    /// How long an attempt's lease outlives its timeout, in ms.
    #[arg(long, env = "IE_RUN_LEASE_GRACE_MS", default_value_t = 5_000)]
    pub run_lease_grace_ms: u64,
    /// Let runs call private, loopback and link-local addresses (development and tests only).
    #[arg(long, env = "IE_ALLOW_PRIVATE_EGRESS")]
    pub allow_private_egress: bool,
    /// Seconds between two health checks of a connection (jittered per connection); 0 checks
    /// only when the connection is established.
    #[arg(long, env = "IE_HEALTH_CHECK_INTERVAL_SECONDS", default_value_t = 300)]
    pub health_check_interval_seconds: u64,
    /// Health checks (first and periodic) started per second at most while the API in this
    /// process is busy (a request in flight, or one within the last 100 ms); unpaced when it
    /// is not. 0 never paces them.
    #[arg(long, env = "IE_BUSY_HEALTH_CHECKS_PER_SECOND", default_value_t = 150)]
    pub busy_health_checks_per_second: u32,
    /// Seconds the previous version of a rotated credential stays valid before it is retired.
    #[arg(long, env = "IE_CREDENTIAL_OVERLAP_SECONDS", default_value_t = 86_400)]
    pub credential_overlap_seconds: u64,
    /// Outbound webhook delivery (docs/outbound-webhooks.md).
    #[command(flatten)]
    pub webhooks: crate::webhooks::WebhookArgs,
}

impl RunArgs {
    fn executor_settings(&self) -> ExecutorSettings {
        let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_owned()).unwrap_or_default();
        let host = if host.is_empty() { "host".to_owned() } else { host };
        let mut settings = ExecutorSettings::new(format!("{host}-{}", std::process::id()));
        settings.lease_grace = Duration::from_millis(self.run_lease_grace_ms);
        settings.max_attempts = self.run_max_attempts;
        settings.attempt_timeout = self.run_attempt_timeout_ms.map(Duration::from_millis);
        settings.first_backoff = self.run_first_backoff_ms.map(Duration::from_millis);
        settings.max_backoff = self.run_max_backoff_ms.map(Duration::from_millis);
        settings
    }

    fn egress(&self) -> EgressPolicy {
        if self.allow_private_egress { EgressPolicy::AllowPrivate } else { EgressPolicy::PublicOnly }
    }
}

#[derive(Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    data: DataDir,
    #[command(flatten)]
    kafka: KafkaArgs,
    #[command(flatten)]
    runs: RunArgs,
    /// Serve Prometheus metrics (`GET /metrics`: run outcomes, ...) on this address (port 0
    /// picks one; the address is printed). None when unset.
    #[arg(long, env = "IE_METRICS_LISTEN")]
    metrics_listen: Option<std::net::SocketAddr>,
}

/// Background tasks started by [`start`]; [`Workers::stop`] ends them.
pub struct Workers {
    shutdown: CancellationToken,
    tasks: Vec<Task>,
}

impl Workers {
    /// Asks every task to stop and waits for them (a run in flight is abandoned to its lease).
    pub async fn stop(self) {
        self.shutdown.cancel();
        for (name, task) in self.tasks {
            match tokio::time::timeout(Duration::from_secs(10), task).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(error))) => tracing::error!(task = name, error = %format!("{error:#}"), "worker task failed"),
                Ok(Err(error)) => tracing::error!(task = name, %error, "worker task panicked"),
                Err(_) => tracing::warn!(task = name, "worker task did not stop in time"),
            }
        }
    }

    /// Waits until any task ends (they run until shutdown, so that is a failure).
    pub async fn any_ended(&mut self) -> anyhow::Result<()> {
        if self.tasks.is_empty() {
            return std::future::pending().await;
        }
        let (ended, index, _) = futures::future::select_all(self.tasks.iter_mut().map(|(_, task)| task)).await;
        let name = self.tasks[index].0;
        match ended {
            Ok(Ok(())) => Err(anyhow::anyhow!("worker task {name} stopped")),
            Ok(Err(error)) => Err(error.context(format!("worker task {name}"))),
            Err(error) => Err(anyhow::anyhow!("worker task {name} panicked: {error}")),
        }
    }
}

/// What a process runs besides (or instead of) the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roles {
    /// Publish the store's events to Kafka (the server of a data dir, with brokers).
    pub relay: bool,
    /// Consume commands and execute runs.
    pub consumers: bool,
}

/// Starts the background work of `roles` over `stores`: on Kafka when `kafka` is set, else on
/// the embedded feed.
pub async fn start(
    stores: &Stores,
    data_dir: &Path,
    kafka: Option<&KafkaSettings>,
    runs: &RunArgs,
    roles: Roles,
    foreground: Option<Arc<dyn Foreground>>,
) -> anyhow::Result<Workers> {
    let shutdown = CancellationToken::new();
    let mut tasks: Vec<Task> = Vec::new();
    let checkpoints = if roles.relay || (roles.consumers && kafka.is_none()) {
        Some(SqliteCheckpoints::open(data_dir.join(WORKERS_DB)).await?)
    } else {
        None
    };
    if let (true, Some(settings), Some(checkpoints)) = (roles.relay, kafka, &checkpoints) {
        let feed = EmbeddedFeed::open(stores.store.clone(), checkpoints.clone(), RELAY_CONSUMER).await?;
        let (settings, token) = (settings.clone(), shutdown.child_token());
        tasks.push((
            "relay",
            tokio::spawn(async move {
                if wait_for_topics(&settings, &token).await {
                    run_relay(feed, &settings, token).await?;
                }
                Ok(())
            }),
        ));
    }
    if roles.consumers {
        let clients = ApiClients::new(runs.egress(), stores.clock.clone())?;
        let executor = Arc::new(RunExecutor::new(
            stores.commands(),
            stores.vault.clone(),
            clients,
            runs.executor_settings(),
            shutdown.child_token(),
        ));
        // A run holds its event while it executes: runs of a batch execute at once, and the
        // batch is committed when all have ended, so a batch of a few times the concurrency
        // keeps the executor busy without holding many finished runs uncommitted.
        let concurrency = usize::from(runs.run_concurrency);
        let options = ConsumerOptions { batch_size: concurrency * 2, concurrency, ..ConsumerOptions::default() };
        let feeds = Feeds { stores, kafka, checkpoints: checkpoints.as_ref() };
        feeds.spawn(RUN_EXECUTOR_CONSUMER, executor, options, shutdown.child_token(), &mut tasks).await?;
        if let Some(settings) = kafka {
            // The control plane's commands topic exists only with Kafka.
            let handler = ControlPlane::new(stores.commands(), kafka_actor());
            let (settings, token) = (settings.clone(), shutdown.child_token());
            tasks.push((
                "commands",
                tokio::spawn(async move {
                    if wait_for_topics(&settings, &token).await {
                        run_commands_consumer(&settings, handler, token).await?;
                    }
                    Ok(())
                }),
            ));
        }
        // Checks give way to the API's requests, when this process serves any.
        let pace = foreground
            .filter(|_| runs.busy_health_checks_per_second > 0)
            .map(|foreground| Arc::new(Pace::new(foreground, runs.busy_health_checks_per_second)));
        start_credential_and_health_workers(&feeds, runs, pace, &shutdown, &mut tasks).await?;
        let worker_id = runs.executor_settings().worker_id;
        // Every process on the data dir shares the webhook lanes' leases (in the events file).
        let leases = Arc::new(SqliteLeases::open(&data_dir.join(EVENTS_DB))?);
        crate::webhooks::start(&feeds, leases, &runs.webhooks, worker_id, &shutdown, &mut tasks).await?;
    }
    Ok(Workers { shutdown, tasks })
}

/// The process manager (first health checks, verification runs) and the schedules (periodic
/// health checks, retirement of previous credential versions). See docs/credentials.md.
async fn start_credential_and_health_workers(
    feeds: &Feeds<'_>,
    runs: &RunArgs,
    pace: Option<Arc<Pace>>,
    shutdown: &CancellationToken,
    tasks: &mut Vec<Task>,
) -> anyhow::Result<()> {
    use workers::process_manager::{PROCESS_MANAGER_CONSUMER, ProcessManager};
    let stores = feeds.stores;
    let mut manager = ProcessManager::new(stores.commands());
    if let Some(pace) = &pace {
        manager = manager.with_health_check_pace(pace.clone());
    }
    // Its reactions to different streams are independent: a burst of new connections requests
    // their first health checks at once, sharing commits, instead of one commit at a time.
    let options = ConsumerOptions { concurrency: 64, ..ConsumerOptions::default() };
    feeds.spawn(PROCESS_MANAGER_CONSUMER, manager, options, shutdown.child_token(), tasks).await?;
    let settings = workers::schedules::ScheduleSettings {
        health_check_interval: (runs.health_check_interval_seconds > 0)
            .then(|| Duration::from_secs(runs.health_check_interval_seconds)),
        credential_overlap: Duration::from_secs(runs.credential_overlap_seconds),
    };
    let (store, commands, token) = (stores.store.clone(), stores.commands(), shutdown.child_token());
    tasks.push((
        "schedules",
        tokio::spawn(
            async move { Ok(workers::schedules::run_schedules(store, commands, settings, pace, token).await?) },
        ),
    ));
    Ok(())
}

fn kafka_actor() -> Actor {
    Actor { subject: format!("kafka:{COMMANDS_TOPIC}"), client_id: None }
}

/// `integration-engine worker`: consumers of both topics in their consumer groups, until
/// SIGTERM or Ctrl-C.
pub async fn run_worker(args: WorkerArgs) -> anyhow::Result<()> {
    let Some(settings) = args.kafka.settings() else {
        anyhow::bail!("worker needs --kafka-brokers (IE_KAFKA_BROKERS); without Kafka, serve runs the workers itself");
    };
    let stores = Stores::open(&args.data)?;
    let roles = Roles { relay: false, consumers: true };
    let mut workers = start(&stores, &args.data.data_dir, Some(&settings), &args.runs, roles, None).await?;
    let metrics_stop = CancellationToken::new();
    let metrics = match args.metrics_listen {
        Some(addr) => Some(crate::telemetry::serve_metrics(addr, metrics_stop.clone()).await?),
        None => None,
    };
    println!("worker started (brokers {}, group prefix {})", settings.brokers, settings.group_prefix);
    tracing::info!(brokers = %settings.brokers, "worker started");
    tokio::select! {
        () = crate::shutdown::shutdown_signal() => {}
        ended = workers.any_ended() => ended?,
    }
    workers.stop().await;
    metrics_stop.cancel();
    if let Some(metrics) = metrics {
        let _ = metrics.await;
    }
    Ok(())
}

#[derive(Subcommand)]
pub enum RunsCommand {
    /// Start a run (the control plane's StartRun): on the commands topic with --kafka-brokers,
    /// else recorded directly in the data dir's store for the embedded server to execute.
    Start(StartRunArgs),
}

#[derive(Args)]
pub struct StartRunArgs {
    #[command(flatten)]
    data: DataDir,
    /// Kafka bootstrap servers: publish the command to integration.commands.v1 instead.
    #[arg(long, env = "IE_KAFKA_BROKERS")]
    kafka_brokers: Option<String>,
    #[arg(long)]
    tenant: String,
    #[arg(long)]
    connection: String,
    /// e.g. OpenPullRequest or http.request.
    #[arg(long)]
    operation: String,
    /// The operation's input, a JSON object.
    #[arg(long, default_value = "{}")]
    input: String,
    /// The same key starts the same run once (the run id is derived from it).
    #[arg(long)]
    idempotency_key: String,
}

pub async fn run_runs(command: RunsCommand) -> anyhow::Result<()> {
    let RunsCommand::Start(args) = command;
    let input = serde_json::from_str(&args.input).context("--input must be JSON")?;
    let start = StartRun {
        tenant_id: args.tenant,
        connection_id: args.connection,
        operation: args.operation,
        input,
        idempotency_key: args.idempotency_key,
    };
    let value = encode_command(&ControlCommand::StartRun(start.clone())).map_err(|e| anyhow::anyhow!("{e}"))?;
    let run_id = run_id_for(&start.tenant_id, &start.idempotency_key);
    if let Some(brokers) = args.kafka_brokers {
        let key = format!("{}/{}", start.tenant_id, start.connection_id);
        send_command(&KafkaSettings::new(brokers), &key, &value).await.context("publishing StartRun")?;
        println!("{run_id}");
        return Ok(());
    }
    let stores = Stores::open(&args.data)?;
    let handler = ControlPlane::new(stores.commands(), Actor { subject: "cli".into(), client_id: None });
    let trace_id = format!("trace-{}", uuid::Uuid::new_v4().simple());
    let requested = handler.handle(&start, &trace_id).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    println!("{}", requested.run_id);
    Ok(())
}
