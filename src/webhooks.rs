//! Outbound webhooks: the dispatcher's settings and wiring, and the `webhooks` command
//! (`publish` a platform event, `redeliver` dead-lettered deliveries).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use commands::CommandContext;
use connectors::egress::EgressAllowList;
use domain::Actor;
use store::Leases;
use tokio_util::sync::CancellationToken;
use workers::ConsumerOptions;
use workers::fanout::redelivery::{self, Selection};
use workers::fanout::{Dispatcher, FANOUT_CONSUMER, FanOut, WebhookSettings, parse_duration, parse_schedule};
use workers::messages::{ControlCommand, PublishEvent};

use crate::data_dir::DataDir;
use crate::process::{Feeds, Stores, Task};

/// How outbound webhooks are delivered (flags of `serve` and `worker`).
#[derive(Args, Clone, Debug)]
pub struct WebhookArgs {
    /// Hosts, addresses and networks (comma-separated: `127.0.0.1,hooks.internal,10.20.0.0/16`)
    /// webhook endpoints may use although not public; plain http only for these.
    #[arg(long, env = "IE_WEBHOOK_ALLOW_HOSTS", default_value = "")]
    pub webhook_allow_hosts: String,
    /// The waits after each failed delivery attempt (its length + 1 attempts, then dead-letter).
    #[arg(long, env = "IE_WEBHOOK_RETRY_SCHEDULE", default_value = "5s,5m,30m,2h,5h,10h,10h")]
    pub webhook_retry_schedule: String,
    /// The share of each wait drawn at random either way (0.2: ±20%).
    #[arg(long, env = "IE_WEBHOOK_RETRY_JITTER", default_value_t = 0.2)]
    pub webhook_retry_jitter: f64,
    /// An attempt without a complete answer within this many ms failed.
    #[arg(long, env = "IE_WEBHOOK_TIMEOUT_MS", default_value_t = 15_000)]
    pub webhook_timeout_ms: u64,
    /// How long an attempt's lease outlives its timeout, in ms (then another worker takes over).
    #[arg(long, env = "IE_WEBHOOK_LEASE_GRACE_MS", default_value_t = 5_000)]
    pub webhook_lease_grace_ms: u64,
    /// The longest Retry-After honoured, in seconds.
    #[arg(long, env = "IE_WEBHOOK_MAX_RETRY_AFTER_SECONDS", default_value_t = 3_600)]
    pub webhook_max_retry_after_seconds: u64,
    /// A subscription failing without a success for this long is deactivated (`5d`, `12h`, `30s`).
    #[arg(long, env = "IE_WEBHOOK_DISABLE_AFTER", default_value = "5d")]
    pub webhook_disable_after: String,
    /// How long after a signing secret's rotation the previous version signs too, in seconds.
    #[arg(long, env = "IE_WEBHOOK_SIGNING_GRACE_SECONDS", default_value_t = 86_400)]
    pub webhook_signing_grace_seconds: u64,
    /// Delivery requests in flight across all subscriptions at most.
    #[arg(long, env = "IE_WEBHOOK_MAX_IN_FLIGHT", default_value_t = 1024)]
    pub webhook_max_in_flight: usize,
}

impl WebhookArgs {
    pub fn allow_list(&self) -> anyhow::Result<EgressAllowList> {
        EgressAllowList::parse(&self.webhook_allow_hosts).map_err(|e| anyhow::anyhow!("--webhook-allow-hosts: {e}"))
    }

    pub fn settings(&self, worker_id: String) -> anyhow::Result<WebhookSettings> {
        let mut settings = WebhookSettings::new(worker_id);
        settings.retry_schedule = parse_schedule(&self.webhook_retry_schedule)
            .map_err(|e| anyhow::anyhow!("--webhook-retry-schedule: {e}"))?;
        anyhow::ensure!((0.0..=1.0).contains(&self.webhook_retry_jitter), "--webhook-retry-jitter must be 0 to 1");
        settings.jitter = self.webhook_retry_jitter;
        settings.attempt_timeout = Duration::from_millis(self.webhook_timeout_ms.max(1));
        settings.lease_grace = Duration::from_millis(self.webhook_lease_grace_ms);
        settings.max_retry_after = Duration::from_secs(self.webhook_max_retry_after_seconds);
        settings.disable_after_failing_for =
            parse_duration(&self.webhook_disable_after).map_err(|e| anyhow::anyhow!("--webhook-disable-after: {e}"))?;
        settings.secret_grace = Duration::from_secs(self.webhook_signing_grace_seconds);
        settings.allow = Arc::new(self.allow_list()?);
        settings.max_in_flight_total = self.webhook_max_in_flight.max(1);
        Ok(settings)
    }
}

/// Starts the webhook dispatcher and the fan-out (a consumer of `feeds`).
pub async fn start(
    feeds: &Feeds<'_>,
    leases: Arc<dyn Leases>,
    args: &WebhookArgs,
    worker_id: String,
    shutdown: &CancellationToken,
    tasks: &mut Vec<Task>,
) -> anyhow::Result<()> {
    let stores = feeds.stores;
    let commands = stores.commands();
    let dispatcher = Dispatcher::new(
        stores.store.clone(),
        leases,
        commands.clone(),
        stores.vault.clone(),
        args.settings(worker_id)?,
    )?;
    let fan_out = FanOut::new(commands, dispatcher.directory(), shutdown.child_token());
    let token = shutdown.child_token();
    tasks.push(("webhook-dispatcher", tokio::spawn(async move { Ok(dispatcher.run(token).await?) })));
    // Messages are streams of their own: a batch's messages are fanned out at once, so their
    // runs share commits (a strict lane still delivers in publication order: the dispatcher
    // orders runs by their message's position).
    let options = ConsumerOptions { batch_size: 256, concurrency: 64, ..ConsumerOptions::default() };
    feeds.spawn(FANOUT_CONSUMER, fan_out, options, shutdown.child_token(), tasks).await
}

#[derive(Subcommand)]
pub enum WebhooksCommand {
    /// Publish a platform event to the tenant's subscriptions (PublishEvent): on the commands
    /// topic with --kafka-brokers, else recorded in the data dir's store.
    Publish(PublishArgs),
    /// Send dead-lettered deliveries again: one run, a subscription's, or those of a time range.
    Redeliver(RedeliverArgs),
}

#[derive(Args)]
pub struct PublishArgs {
    #[command(flatten)]
    data: DataDir,
    /// Publish to integration.commands.v1 instead of the store.
    #[arg(long, env = "IE_KAFKA_BROKERS")]
    kafka_brokers: Option<String>,
    #[arg(long)]
    tenant: String,
    #[arg(long)]
    project: Option<String>,
    /// e.g. DeploymentPromoted.
    #[arg(long)]
    event_type: String,
    /// The event's data, a JSON value.
    #[arg(long, default_value = "{}")]
    data_json: String,
    /// `msg-...`; the same id publishes one message. Default: a new id.
    #[arg(long)]
    message_id: Option<String>,
}

#[derive(Args)]
pub struct RedeliverArgs {
    #[command(flatten)]
    data: DataDir,
    #[arg(long)]
    tenant: String,
    /// One delivery run.
    #[arg(long)]
    run: Option<String>,
    /// The dead-lettered deliveries of one subscription.
    #[arg(long)]
    subscription: Option<String>,
    /// Only deliveries requested at or after this time (RFC 3339).
    #[arg(long)]
    since: Option<DateTime<Utc>>,
    /// Only deliveries requested before this time (RFC 3339).
    #[arg(long)]
    until: Option<DateTime<Utc>>,
    /// Also send again deliveries that succeeded (by default only dead-lettered ones).
    #[arg(long)]
    include_delivered: bool,
}

pub async fn run(command: WebhooksCommand) -> anyhow::Result<()> {
    match command {
        WebhooksCommand::Publish(args) => publish(args).await,
        WebhooksCommand::Redeliver(args) => redeliver(args).await,
    }
}

async fn publish(args: PublishArgs) -> anyhow::Result<()> {
    let data = serde_json::from_str(&args.data_json).context("--data-json must be JSON")?;
    let message_id =
        args.message_id.unwrap_or_else(|| domain::ids::new_id(domain::outbound::MESSAGE, uuid::Uuid::now_v7()));
    let publish = PublishEvent {
        tenant_id: args.tenant,
        project_id: args.project,
        event_type: args.event_type,
        data,
        message_id: Some(message_id.clone()),
    };
    let value = workers::control_plane::encode_command(&ControlCommand::PublishEvent(publish.clone()))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    if let Some(brokers) = args.kafka_brokers {
        let key = format!("{}/{message_id}", publish.tenant_id);
        workers::kafka::send_command(&workers::KafkaSettings::new(brokers), &key, &value)
            .await
            .context("publishing PublishEvent")?;
    } else {
        let stores = Stores::open(&args.data)?;
        let handler = workers::control_plane::ControlPlane::new(
            stores.commands(),
            Actor { subject: "cli".into(), client_id: None },
        );
        let trace_id = format!("trace-{}", uuid::Uuid::new_v4().simple());
        handler.publish_event(&publish, &message_id, &trace_id).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    println!("{message_id}");
    Ok(())
}

async fn redeliver(args: RedeliverArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.run.is_some() || args.subscription.is_some() || args.since.is_some() || args.until.is_some(),
        "name what to redeliver: --run, --subscription, and/or --since/--until"
    );
    let stores = Stores::open(&args.data)?;
    let selection = Selection {
        run: args.run.clone(),
        subscription: args.subscription.clone(),
        since: args.since,
        until: args.until,
        include_delivered: args.include_delivered,
    };
    let chosen = redelivery::select(stores.store.as_ref(), &args.tenant, &selection).await?;
    if let Some(run) = &args.run
        && chosen.is_empty()
    {
        anyhow::bail!(
            "{run} is not a webhook delivery of tenant {} that ended{}",
            args.tenant,
            if args.include_delivered {
                ""
            } else {
                " dead-lettered (add --include-delivered to resend a delivered one)"
            }
        );
    }
    let commands = stores.commands();
    let reason = match (&args.run, &args.subscription) {
        (Some(run), _) => format!("webhooks redeliver --run {run}"),
        (None, Some(sub)) => format!("webhooks redeliver --subscription {sub}"),
        (None, None) => "webhooks redeliver --since/--until".to_owned(),
    };
    let ctx = CommandContext::new(
        &args.tenant,
        format!("trace-{}", uuid::Uuid::new_v4().simple()),
        Actor { subject: "cli".into(), client_id: None },
    );
    let mut count = 0;
    for run_id in &chosen {
        if commands.redeliver_run(&ctx, run_id, &reason).await? {
            println!("{run_id}");
            count += 1;
        }
    }
    eprintln!("{count} deliveries requested again");
    Ok(())
}
