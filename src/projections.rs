//! `integration-engine projections`: where each projection is (`status`), and rebuilding read
//! models from the event store while the server keeps serving them (`rebuild`). See
//! docs/projections.md.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::projections::ReadModels;
use ::projections::rebuild::{self, ProjectionStatus, RebuildProgress, RebuildReport};
use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use serde_json::json;
use store::EventStore;
use store::sqlite::SqliteEventStore;

use crate::data_dir::DataDir;
use crate::data_dir::{EVENTS_DB, READ_MODELS_DB};

#[derive(Subcommand)]
pub enum ProjectionsCommand {
    /// Each projection's generation, position and lag behind the store's head, and the
    /// rebuilds under way.
    Status(StatusArgs),
    /// Rebuild read models from the event store beside the live ones and switch to them
    /// atomically once caught up. The server may keep running: it serves the old tables until
    /// the switch and the new ones after it.
    Rebuild(RebuildArgs),
}

#[derive(Args)]
pub struct StatusArgs {
    #[command(flatten)]
    data: DataDir,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct RebuildArgs {
    #[command(flatten)]
    data: DataDir,
    /// The projections to rebuild (names as `projections status` lists them).
    #[arg(value_name = "NAME", required_unless_present = "all", conflicts_with = "all")]
    names: Vec<String>,
    /// Rebuild every projection, in one pass over the store, switched together.
    #[arg(long)]
    all: bool,
}

pub async fn run(command: ProjectionsCommand) -> anyhow::Result<()> {
    match command {
        ProjectionsCommand::Status(args) => status(args).await,
        ProjectionsCommand::Rebuild(args) => rebuild(args).await,
    }
}

/// The two databases of an existing data dir. Neither command creates a data dir: a mistyped
/// `--data-dir` is an error, not an empty engine.
fn existing_files(data: &DataDir) -> anyhow::Result<(PathBuf, PathBuf)> {
    let (events, read_models) = (data.data_dir.join(EVENTS_DB), data.data_dir.join(READ_MODELS_DB));
    if !events.is_file() {
        bail!("no event store at {}: is --data-dir the directory `serve` uses?", events.display());
    }
    Ok((events, read_models))
}

fn open_store(events: &Path) -> anyhow::Result<Arc<dyn EventStore>> {
    let store = SqliteEventStore::open(events).with_context(|| format!("opening {}", events.display()))?;
    Ok(Arc::new(store))
}

async fn status(args: StatusArgs) -> anyhow::Result<()> {
    let (events, read_models) = existing_files(&args.data)?;
    let store = open_store(&events)?;
    let read_models = tokio::task::spawn_blocking(move || ReadModels::open(read_models)).await??;
    // The statuses first: a head read afterwards is never below them, so no lag is negative.
    let statuses = rebuild::status(&read_models).await?;
    let head = store.head_position().await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status_json(&statuses, head))?);
    } else {
        print!("{}", status_table(&statuses, head));
    }
    Ok(())
}

fn status_json(statuses: &[ProjectionStatus], head: u64) -> serde_json::Value {
    let projections: Vec<_> = statuses
        .iter()
        .map(|s| {
            json!({
                "name": s.name,
                "generation": s.generation,
                "position": s.position,
                "lag": head.saturating_sub(s.position),
                "rebuild": s.rebuild.as_ref().map(|r| json!({
                    "generation": r.generation,
                    "position": r.position,
                    "lag": head.saturating_sub(r.position),
                    "startedAtMs": r.started_at_ms,
                    "heartbeatAtMs": r.heartbeat_at_ms,
                    "stale": r.stale,
                })),
            })
        })
        .collect();
    json!({ "storeHead": head, "projections": projections })
}

fn status_table(statuses: &[ProjectionStatus], head: u64) -> String {
    let mut out = format!("{:<15} {:>10} {:>10} {:>10}  REBUILD\n", "PROJECTION", "GENERATION", "POSITION", "LAG");
    for s in statuses {
        let rebuild = match &s.rebuild {
            None => "-".to_owned(),
            Some(r) => format!(
                "generation {} at {} (lag {}){}",
                r.generation,
                r.position,
                head.saturating_sub(r.position),
                if r.stale { ", stale: no heartbeat, the next rebuild drops it" } else { "" }
            ),
        };
        out.push_str(&format!(
            "{:<15} {:>10} {:>10} {:>10}  {rebuild}\n",
            s.name,
            s.generation,
            s.position,
            head.saturating_sub(s.position)
        ));
    }
    out.push_str(&format!("store head: {head}\n"));
    out
}

async fn rebuild(args: RebuildArgs) -> anyhow::Result<()> {
    let selected = if args.all { ::projections::projectors::ALL.to_vec() } else { rebuild::select(&args.names)? };
    let (events, read_models) = existing_files(&args.data)?;
    let store = open_store(&events)?;
    let names = selected.iter().map(|p| p.name).collect::<Vec<_>>().join(", ");
    let bar = progress_bar(if args.all { "every projection" } else { &names });
    let started = Instant::now();
    let report = rebuild::rebuild(
        store,
        &read_models,
        selected,
        |p: RebuildProgress| {
            bar.set_length(p.head);
            bar.set_position(p.position);
        },
        crate::shutdown::shutdown_signal(),
    )
    .await;
    bar.finish_and_clear();
    let report = report.with_context(|| format!("rebuilding {names}"))?;
    print!("{}", rebuild_summary(&report, started.elapsed()));
    Ok(())
}

/// The progress bar, on stderr, only when stderr is a terminal (a log or a pipe gets the
/// summary on stdout only).
fn progress_bar(names: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let style =
        ProgressStyle::with_template("{spinner} rebuilding {msg} [{bar:30}] {pos}/{len} {rate} ({elapsed}, eta {eta})")
            .expect("a valid progress template")
            .with_key("rate", |state: &ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = write!(w, "{:.0} events/s", state.per_sec());
            });
    let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr()).with_style(style);
    bar.set_message(names.to_owned());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

fn rebuild_summary(report: &RebuildReport, elapsed: Duration) -> String {
    let seconds = elapsed.as_secs_f64();
    let rate = if seconds > 0.0 { report.events as f64 / seconds } else { 0.0 };
    let generations =
        report.generations.iter().map(|(name, g)| format!("{name} → generation {g}")).collect::<Vec<_>>().join(", ");
    format!(
        "rebuilt from {} events in {seconds:.2} s ({rate:.0} events/s)\n\
         switched at position {}: {generations}\n",
        report.events, report.switched_at
    )
}
