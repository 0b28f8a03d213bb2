//! `integration-engine`: the CLI. Each subcommand wires the crates for one job.
#![forbid(unsafe_code)]

mod dev_auth;
mod secrets;
mod serve;
mod verify;
mod worker;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "integration-engine", version, about = "Event-sourced CQRS integration engine")]
struct Cli {
    /// Log format on stderr.
    #[arg(long, env = "IE_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"], global = true)]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the REST API and run the projections on the embedded store.
    Serve(serve::ServeArgs),
    /// Print a development token (HS256, signed with the data dir's dev secret).
    Token(TokenArgs),
    /// Manage vault secrets (encrypted at rest in DATA_DIR/vault.db).
    #[command(subcommand)]
    Secrets(secrets::SecretsCommand),
    /// Check every stream's hash chain; exit code 1 names the first break.
    Verify(verify::VerifyArgs),
    /// Run the Kafka consumers (commands, run executor) as a member of their consumer groups.
    Worker(worker::WorkerArgs),
    /// Integration runs: start one through the control plane.
    #[command(subcommand)]
    Runs(worker::RunsCommand),
}

/// Where the engine keeps its files.
#[derive(Args, Clone)]
pub struct DataDir {
    /// Directory of the event store, read models, vault and dev keys (created if missing).
    #[arg(long, env = "IE_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
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
    /// The `sub` claim.
    #[arg(long, default_value = "dev-user")]
    subject: String,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    ttl_seconds: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve::run(args).await.map(|()| ExitCode::SUCCESS),
            Command::Token(args) => token(args).map(|()| ExitCode::SUCCESS),
            Command::Secrets(command) => secrets::run(command).await.map(|()| ExitCode::SUCCESS),
            Command::Verify(args) => verify::run(args).await,
            Command::Worker(args) => worker::run_worker(args).await.map(|()| ExitCode::SUCCESS),
            Command::Runs(command) => worker::run_runs(command).await.map(|()| ExitCode::SUCCESS),
        }
    });
    result.unwrap_or_else(|e| {
        eprintln!("error: {e:#}");
        ExitCode::FAILURE
    })
}

fn token(args: TokenArgs) -> anyhow::Result<()> {
    let secret = dev_auth::load_dev_secret(&args.data.data_dir)?;
    let scopes: Vec<&str> = args.scope.split_whitespace().collect();
    let token = api::auth::mint_dev_token(
        &secret,
        api::auth::DEV_ISSUER,
        api::auth::DEV_AUDIENCE,
        &args.subject,
        &args.tenant,
        &scopes,
        std::time::Duration::from_secs(args.ttl_seconds),
    )?;
    println!("{token}");
    Ok(())
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("IE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,tower_http=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// The address a listener actually bound, for `--listen 127.0.0.1:0`.
pub fn announce_listening(addr: SocketAddr) {
    println!("listening on http://{addr}");
}
