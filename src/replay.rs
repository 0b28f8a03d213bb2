//! `integration-engine replay`: the store's events as JSON lines on stdout, for auditors.
//!
//! One task reads pages of events through the store's filtered read (two position ranges at a
//! time, on the store's reader threads) while a blocking thread upcasts, serialises and writes
//! the pages before through one buffered stdout, so reading and writing overlap and nothing is
//! flushed per event. Stored data is written as the text it was stored as, never parsed, unless
//! it is upcast. The replay ends at the head the store had
//! when it started: appends that commit meanwhile are not part of it.
//!
//! This file depends on nothing else of the binary, so `examples/bench_replay.rs` measures the
//! very code `replay` runs.

use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::{Args, ValueEnum};
use domain::EventEnvelope;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use store::audit::{MAX_EVENT_TYPES, QueryError};
use store::sqlite::SqliteEventStore;
use store::{EventFilter, EventStore};
use tokio::sync::mpsc;
use workers::messages::CloudEvent;

use crate::data_dir::EVENTS_DB;

/// Events per read: large enough that a read's fixed cost disappears, small enough to bound
/// memory (at most [`PAGES_IN_FLIGHT`] + 3 pages are held at once).
pub const PAGE: usize = 2000;
/// Pages read ahead of the writer.
const PAGES_IN_FLIGHT: usize = 4;
/// stdout's buffer: one write system call per this many bytes.
const OUTPUT_BUFFER: usize = 1 << 20;

#[derive(Args)]
pub struct ReplayArgs {
    /// Directory of the event store (the data dir `serve` uses).
    #[arg(long, env = "IE_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Only this stream, `{tenantId}/{resourceId}` (e.g. `connectsoft/prov-github`).
    #[arg(long)]
    pub stream: Option<String>,
    /// Only this tenant's events.
    #[arg(long)]
    pub tenant: Option<String>,
    /// Only these event types (repeat the flag or separate with commas).
    #[arg(long = "type", value_name = "EVENT_TYPE", value_delimiter = ',')]
    pub event_types: Vec<String>,
    /// The first global position to show (inclusive).
    #[arg(long, value_name = "POSITION")]
    pub from_position: Option<u64>,
    /// The last global position to show (inclusive).
    #[arg(long, value_name = "POSITION")]
    pub to_position: Option<u64>,
    /// Only events that occurred at or after this instant (RFC 3339, e.g. 2026-06-11T09:00:00Z).
    #[arg(long, value_name = "RFC3339", value_parser = parse_instant)]
    pub since: Option<DateTime<Utc>>,
    /// Only events that occurred before this instant (RFC 3339).
    #[arg(long, value_name = "RFC3339", value_parser = parse_instant)]
    pub until: Option<DateTime<Utc>>,
    /// The shape of each line.
    #[arg(long, value_enum, default_value_t = Format::Envelope)]
    pub format: Format,
    /// Show each event at the schema version it was stored at, instead of upcasting it to the
    /// current version of its type. The stored form is what the hash chain covers.
    #[arg(long)]
    pub as_stored: bool,
}

/// The shape of a replayed line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// The engine's event envelope (`schemas/events/EventEnvelope.v1.json`).
    Envelope,
    /// CloudEvents 1.0 structured JSON, as the relay publishes to Kafka (`schemas/kafka/CloudEvent.v1.json`).
    Cloudevents,
}

fn parse_instant(text: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("{text:?} is not an RFC 3339 instant such as 2026-06-11T09:00:00Z: {e}"))
}

/// What to replay and how to write it.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    pub filter: EventFilter,
    pub format: Format,
    pub as_stored: bool,
}

impl ReplayArgs {
    pub fn options(&self) -> anyhow::Result<ReplayOptions> {
        let filter = EventFilter {
            stream_id: self.stream.clone(),
            tenant_id: self.tenant.clone(),
            event_types: self.event_types.iter().map(|t| t.trim().to_owned()).filter(|t| !t.is_empty()).collect(),
            after_position: self.from_position.map(|p| p.saturating_sub(1)),
            up_to_position: self.to_position,
            occurred_from: self.since,
            occurred_before: self.until,
        };
        store::audit::check(&filter).map_err(|e| match e {
            QueryError::PositionsReversed { first, last } => {
                anyhow::anyhow!("--from-position {first} is after --to-position {last}")
            }
            QueryError::TimesReversed => anyhow::anyhow!(
                "--since {} is not before --until {}",
                self.since.unwrap_or_default(),
                self.until.unwrap_or_default()
            ),
            QueryError::ForeignStream { stream, tenant } => {
                anyhow::anyhow!("--stream {stream} does not belong to --tenant {tenant}")
            }
            QueryError::TooManyTypes => anyhow::anyhow!("--type names more than {MAX_EVENT_TYPES} event types"),
        })?;
        Ok(ReplayOptions { filter, format: self.format, as_stored: self.as_stored })
    }
}

/// What a replay wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplaySummary {
    /// Lines written.
    pub events: u64,
    /// Events shown as stored because they could not be upcast (malformed, or a version from a
    /// newer build).
    pub not_upcast: u64,
    /// The first of those, by global position.
    pub first_not_upcast: Option<u64>,
    /// The reader of stdout went away (`replay | head`): the replay stopped early, as asked.
    pub output_closed: bool,
}

pub async fn run(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let options = args.options()?;
    for unknown in options.filter.event_types.iter().filter(|t| !domain::any_event::all_event_types().any(|k| k == *t))
    {
        // Not an error: a newer build may have written it. Most likely a typo, though.
        eprintln!("warning: --type {unknown} is not an event type this build knows");
    }
    let path = args.data_dir.join(EVENTS_DB);
    let store = open_existing(&path).await?;
    let show_progress = io::stderr().is_terminal();
    let started = Instant::now();
    let summary = replay_to(store, &options, io::stdout(), show_progress).await?;
    if summary.not_upcast > 0 {
        eprintln!(
            "warning: {} events could not be upcast and are shown as stored (the first at global position {})",
            summary.not_upcast,
            summary.first_not_upcast.unwrap_or_default()
        );
    }
    if show_progress {
        let seconds = started.elapsed().as_secs_f64();
        eprintln!(
            "replayed {} events in {seconds:.2}s ({:.0} events/s)",
            summary.events,
            summary.events as f64 / seconds.max(1e-9)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Opens the store at `path`, refusing to create one: replaying a mistyped data dir should say
/// so, not print nothing.
async fn open_existing(path: &Path) -> anyhow::Result<Arc<dyn EventStore>> {
    anyhow::ensure!(path.exists(), "no event store at {}", path.display());
    let path = path.to_owned();
    let store = tokio::task::spawn_blocking(move || SqliteEventStore::open(&path)).await??;
    Ok(Arc::new(store))
}

/// Replays the events `options` selects into `out`, one JSON document per line, up to the head
/// the store has now. A progress bar (events/s) goes to stderr when `progress` is set.
pub async fn replay_to<W: Write + Send + 'static>(
    store: Arc<dyn EventStore>,
    options: &ReplayOptions,
    out: W,
    progress: bool,
) -> anyhow::Result<ReplaySummary> {
    let head = store.head_position().await?;
    let filter = &options.filter;
    let start = filter.after_position.unwrap_or(0);
    let end = filter.up_to_position.map_or(head, |last| last.min(head));

    let bar = if progress { progress_bar(end.saturating_sub(start)) } else { ProgressBar::hidden() };
    let (pages, mut incoming) = mpsc::channel::<Vec<EventEnvelope>>(PAGES_IN_FLIGHT);
    let writer_bar = bar.clone();
    let (format, as_stored) = (options.format, options.as_stored);
    let writer = tokio::task::spawn_blocking(move || -> io::Result<ReplaySummary> {
        let mut out = io::BufWriter::with_capacity(OUTPUT_BUFFER, out);
        let mut summary = ReplaySummary::default();
        while let Some(page) = incoming.blocking_recv() {
            let last = page.last().map_or(start, |e| e.global_position);
            for event in page {
                match write_line(&mut out, event, format, as_stored, &mut summary) {
                    Ok(()) => summary.events += 1,
                    Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                        summary.output_closed = true;
                        return Ok(summary);
                    }
                    Err(e) => return Err(e),
                }
            }
            writer_bar.set_position(last - start);
            writer_bar.set_message(format!("{} events", summary.events));
        }
        match out.flush() {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => summary.output_closed = true,
            other => other?,
        }
        Ok(summary)
    });

    let read = async {
        let mut reads = store::audit::pages(store, filter, head, PAGE);
        while let Some(page) = reads.next().await {
            // The writer stopped (closed output or a write error it reports below).
            if pages.send(page?).await.is_err() {
                return Ok::<_, anyhow::Error>(());
            }
        }
        Ok(())
    };
    let read_result = read.await;
    drop(pages);
    let summary = writer.await.context("the replay writer failed")?.context("writing the replay")?;
    read_result.context("reading the event store")?;
    bar.finish_and_clear();
    Ok(summary)
}

/// Writes one event as a JSON line, upcast unless `as_stored`.
fn write_line(
    out: &mut impl Write,
    mut event: EventEnvelope,
    format: Format,
    as_stored: bool,
    summary: &mut ReplaySummary,
) -> io::Result<()> {
    if store::audit::show(&mut event, as_stored).is_err() {
        summary.not_upcast += 1;
        summary.first_not_upcast.get_or_insert(event.global_position);
    }
    match format {
        Format::Envelope => serde_json::to_writer(&mut *out, &event)?,
        Format::Cloudevents => serde_json::to_writer(&mut *out, &CloudEvent::from_envelope(&event))?,
    }
    out.write_all(b"\n")
}

fn progress_bar(positions: u64) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(positions), ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template("{bar:40} {percent:>3}% {msg} ({per_sec}, eta {eta})")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}
