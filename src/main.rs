//! `integration-engine`: the CLI. Each subcommand wires the crates for one job.
#![forbid(unsafe_code)]

mod background;
mod config;
mod data_dir;
mod dev_auth;
mod process;
mod projections;
mod replay;
mod secrets;
mod serve;
mod shutdown;
mod telemetry;
mod verify;
mod webhooks;
mod worker;

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use data_dir::DataDir;

/// jemalloc with background threads: after a burst, the pages it freed go back to the OS within
/// seconds (its decay), where glibc's arenas kept them (docs/performance.md, RSS).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(name = "integration-engine", version, about = "Event-sourced CQRS integration engine")]
struct Cli {
    #[command(flatten)]
    config: config::ConfigFileArgs,
    #[command(flatten)]
    telemetry: telemetry::TelemetryArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the REST API and run the projections on the embedded store.
    Serve(Box<serve::ServeArgs>),
    /// Print a development token (HS256, signed with the data dir's dev secret).
    Token(TokenArgs),
    /// Manage vault secrets (encrypted at rest in DATA_DIR/vault.db).
    #[command(subcommand)]
    Secrets(secrets::SecretsCommand),
    /// Check every stream's hash chain; exit code 1 names the first break.
    Verify(verify::VerifyArgs),
    /// Stream stored events as JSON lines (envelopes or CloudEvents), filtered, upcast by default.
    Replay(replay::ReplayArgs),
    /// Run the Kafka consumers (commands, run executor) as a member of their consumer groups.
    Worker(worker::WorkerArgs),
    /// Integration runs: start one through the control plane.
    #[command(subcommand)]
    Runs(worker::RunsCommand),
    /// Outbound webhooks: publish a platform event, redeliver dead-lettered deliveries.
    #[command(subcommand)]
    Webhooks(webhooks::WebhooksCommand),
    /// The configuration: the effective settings and where they came from, every key.
    #[command(subcommand)]
    Config(config::ConfigCommand),
    /// Read models: each projection's position and lag; rebuild them while the server serves.
    #[command(subcommand)]
    Projections(projections::ProjectionsCommand),
}

#[derive(Args)]
struct TokenArgs {
    #[command(flatten)]
    data: DataDir,
    /// The `tenantId` claim.
    #[arg(long)]
    tenant: String,
    /// Space-separated scopes, e.g. "integration.connections.write integration.connections.read".
    #[arg(long, default_value = "")]
    scope: String,
    /// Space-separated roles, put in the `roles` claim (for trying a role policy).
    #[arg(long, default_value = "")]
    roles: String,
    /// The `sub` claim.
    #[arg(long, default_value = "dev-user")]
    subject: String,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    ttl_seconds: u64,
}

fn main() -> ExitCode {
    let (cli, effective) = match config::parse::<Cli>() {
        Ok(parsed) => parsed,
        Err(config::ConfigError::Cli(error)) => error.exit(),
        Err(config::ConfigError::Invalid(message)) => {
            eprintln!("error: {message}");
            return ExitCode::from(2);
        }
    };
    let telemetry = match init_logging(&cli.telemetry) {
        Ok(telemetry) => telemetry,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    for name in effective.unknown_environment(std::env::vars_os()) {
        tracing::warn!(variable = %name, "ignoring an IE_ environment variable that names no setting");
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve::run(*args).await.map(|()| ExitCode::SUCCESS),
            Command::Token(args) => token(args).map(|()| ExitCode::SUCCESS),
            Command::Secrets(command) => secrets::run(command).await.map(|()| ExitCode::SUCCESS),
            Command::Verify(args) => verify::run(args).await,
            Command::Replay(args) => replay::run(args).await,
            Command::Worker(args) => worker::run_worker(args).await.map(|()| ExitCode::SUCCESS),
            Command::Runs(command) => worker::run_runs(command).await.map(|()| ExitCode::SUCCESS),
            Command::Webhooks(command) => webhooks::run(command).await.map(|()| ExitCode::SUCCESS),
            Command::Config(command) => config::run(command, &effective).map(|()| ExitCode::SUCCESS),
            Command::Projections(command) => projections::run(command).await.map(|()| ExitCode::SUCCESS),
        }
    });
    // Blocking work still running (a SQLite call) gets a bounded moment; then the last traces
    // are exported, outside the runtime as the OTLP client requires.
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    telemetry.shutdown();
    result.unwrap_or_else(|e| {
        eprintln!("error: {e:#}");
        ExitCode::FAILURE
    })
}

fn token(args: TokenArgs) -> anyhow::Result<()> {
    let secret = dev_auth::load_dev_secret(&args.data.data_dir)?;
    let scopes: Vec<&str> = args.scope.split_whitespace().collect();
    let roles: Vec<&str> = args.roles.split_whitespace().collect();
    let token = api::auth::mint_dev_token_with_roles(
        &secret,
        api::auth::DEV_ISSUER,
        api::auth::DEV_AUDIENCE,
        &args.subject,
        &args.tenant,
        &scopes,
        &roles,
        std::time::Duration::from_secs(args.ttl_seconds),
    )?;
    println!("{token}");
    Ok(())
}

/// Logs on stderr and, when configured, trace export (see `telemetry`).
fn init_logging(args: &telemetry::TelemetryArgs) -> anyhow::Result<telemetry::Telemetry> {
    telemetry::init(args)
}

/// The address a listener actually bound, for `--listen 127.0.0.1:0`, as the URL clients use.
pub fn announce_listening(scheme: &str, addr: SocketAddr) {
    println!("listening on {scheme}://{addr}");
}
