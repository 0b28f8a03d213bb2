//! What the process tells its operators: logs on stderr (text, or JSON lines that carry the
//! request's trace id), traces exported over OTLP when an endpoint is configured, and the
//! Prometheus recorder behind `GET /metrics`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use clap::Args;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde_json::{Map, Value};
use store::EventStore;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Record};
use tracing::{Event, Id, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::field::{RecordFields, VisitOutput};
use tracing_subscriber::filter::{EnvFilter, FilterExt, filter_fn};
use tracing_subscriber::fmt::format::{DefaultVisitor, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use workers::SqliteCheckpoints;

/// The log filter when none is configured.
pub const DEFAULT_LOG_FILTER: &str = "info,tower_http=warn";
/// Where OTLP/HTTP collectors take traces, below the configured base URL.
const OTLP_TRACES_PATH: &str = "/v1/traces";

/// Logs and traces: global options of every command.
#[derive(Args, Clone, Debug)]
pub struct TelemetryArgs {
    /// Log format on stderr.
    #[arg(long, env = "IE_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"], global = true)]
    pub log_format: String,
    /// Which logs to write: a tracing filter (`warn`, `info,api=debug`, ...).
    #[arg(long = "log", env = "IE_LOG", default_value = DEFAULT_LOG_FILTER, value_parser = parse_log_filter, global = true)]
    pub log_filter: String,
    /// Export traces over OTLP/HTTP (protobuf) to this collector, e.g. `http://localhost:4318`
    /// (`/v1/traces` is appended). Off when unset. Headers (auth) come from
    /// OTEL_EXPORTER_OTLP_HEADERS, batching from the OTEL_BSP_* variables.
    #[arg(long, env = "IE_OTLP_ENDPOINT", value_parser = parse_otlp_endpoint, global = true)]
    pub otlp_endpoint: Option<String>,
    /// The `service.name` of exported traces.
    #[arg(long, env = "IE_OTLP_SERVICE_NAME", default_value = "integration-engine", global = true)]
    pub otlp_service_name: String,
}

fn parse_log_filter(value: &str) -> Result<String, String> {
    EnvFilter::builder().parse(value).map(|_| value.to_owned()).map_err(|e| e.to_string())
}

/// An OTLP endpoint is an absolute http(s) URL.
fn parse_otlp_endpoint(value: &str) -> Result<String, String> {
    let rest = value
        .strip_prefix("http://")
        .or_else(|| value.strip_prefix("https://"))
        .ok_or_else(|| "expected an http:// or https:// URL".to_owned())?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err("the URL has no host".into());
    }
    Ok(value.to_owned())
}

/// The full traces URL of a collector's base URL (kept as is when it already names the path).
pub fn otlp_traces_url(base: &str) -> String {
    if base.trim_end_matches('/').ends_with(OTLP_TRACES_PATH) {
        base.to_owned()
    } else {
        format!("{}{OTLP_TRACES_PATH}", base.trim_end_matches('/'))
    }
}

/// Flushes exported traces when the process ends; keep it until then.
#[must_use = "dropping it without `shutdown` may lose the last traces"]
pub struct Telemetry {
    tracer_provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the traces still batched. Call it outside the async runtime: the OTLP client is
    /// a blocking one on its own thread.
    pub fn shutdown(self) {
        if let Some(provider) = self.tracer_provider
            && let Err(error) = provider.shutdown()
        {
            eprintln!("warning: exporting the last traces failed: {error}");
        }
    }
}

/// Installs the logging subscriber and, with an OTLP endpoint, the trace exporter. Call it
/// before the async runtime starts (see [`Telemetry::shutdown`]).
pub fn init(args: &TelemetryArgs) -> anyhow::Result<Telemetry> {
    let json = args.log_format == "json";
    let fmt_layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs = if json {
        SpanFields.and_then(fmt_layer.event_format(JsonLines)).boxed()
    } else {
        fmt_layer.fmt_fields(TextFields).boxed()
    };
    let logs = logs.with_filter(log_filter(&args.log_filter)?);
    let (traces, tracer_provider) = match &args.otlp_endpoint {
        None => (None, None),
        Some(endpoint) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary)
                .with_endpoint(otlp_traces_url(endpoint))
                .build()
                .with_context(|| format!("configuring the OTLP exporter for {endpoint}"))?;
            let provider = SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(Resource::builder().with_service_name(args.otlp_service_name.clone()).build())
                .build();
            let layer = tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("integration-engine"))
                .with_filter(log_filter(&args.log_filter)?);
            (Some(layer), Some(provider))
        }
    };
    tracing_subscriber::registry().with(logs).with(traces).try_init().context("installing the log subscriber")?;
    Ok(Telemetry { tracer_provider })
}

/// The configured filter, which never hides the request span: every log line of a request
/// carries its trace id, whatever the level, and the span is what traces export.
fn log_filter<S: Subscriber + for<'a> LookupSpan<'a>>(
    directives: &str,
) -> anyhow::Result<impl tracing_subscriber::layer::Filter<S> + Send + Sync + 'static> {
    let configured = EnvFilter::builder().parse(directives).with_context(|| format!("log filter {directives:?}"))?;
    let request_span = filter_fn(|meta| meta.is_span() && meta.name() == api::trace::REQUEST_SPAN);
    Ok(configured.or(request_span))
}

/// The fields of every span, kept as JSON in the span's extensions for [`JsonLines`].
struct SpanFields;

#[derive(Default)]
struct RecordedFields(Map<String, Value>);

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for SpanFields {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut fields = RecordedFields::default();
        attrs.record(&mut JsonVisitor(&mut fields.0));
        span.extensions_mut().insert(fields);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut extensions = span.extensions_mut();
        if let Some(fields) = extensions.get_mut::<RecordedFields>() {
            values.record(&mut JsonVisitor(&mut fields.0));
        }
    }
}

/// Collects fields as JSON values. OpenTelemetry's own fields (`otel.*`) are for the exporter.
struct JsonVisitor<'a>(&'a mut Map<String, Value>);

impl JsonVisitor<'_> {
    fn put(&mut self, field: &Field, value: Value) {
        if !field.name().starts_with("otel.") {
            self.0.insert(field.name().to_owned(), value);
        }
    }
}

impl Visit for JsonVisitor<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, Value::String(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::String(value.to_owned()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, Value::String(value.to_string()));
    }
}

/// The text format's fields, but OpenTelemetry's own (`otel.name`, `otel.kind`): those are
/// for the exporter.
struct TextFields;

impl<'w> FormatFields<'w> for TextFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut visitor = WithoutOtel(DefaultVisitor::new(writer, true));
        fields.record(&mut visitor);
        visitor.0.finish()
    }
}

struct WithoutOtel<'w>(DefaultVisitor<'w>);

impl Visit for WithoutOtel<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if !field.name().starts_with("otel.") {
            self.0.record_debug(field, value);
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if !field.name().starts_with("otel.") {
            self.0.record_str(field, value);
        }
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0.record_error(field, value);
    }
}

/// One JSON object per line: `timestamp`, `level`, `target`, the fields of the spans the event
/// is in (outermost first, so `trace_id` and `method`/`path` of the request are top-level), the
/// event's own fields (`message`, ...), and `spans`, the names of those spans.
struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let meta = event.metadata();
        let mut line = Map::new();
        line.insert("timestamp".into(), chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true).into());
        line.insert("level".into(), meta.level().as_str().into());
        line.insert("target".into(), meta.target().into());
        let mut spans = Vec::new();
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                spans.push(Value::String(span.name().to_owned()));
                if let Some(fields) = span.extensions().get::<RecordedFields>() {
                    line.extend(fields.0.iter().map(|(k, v)| (k.clone(), v.clone())));
                }
            }
        }
        // A task the request spawned without its span still runs in its trace.
        if !line.contains_key("trace_id")
            && let Some(trace_id) = api::trace::request_trace_id()
        {
            line.insert("trace_id".into(), trace_id.into());
        }
        event.record(&mut JsonVisitor(&mut line));
        if !spans.is_empty() {
            line.insert("spans".into(), Value::Array(spans));
        }
        writeln!(writer, "{}", Value::Object(line))
    }
}

/// Help texts of the metrics the engine records (the `# HELP` lines of the exposition).
fn describe_metrics() {
    use api::metrics::{HTTP_REQUEST_DURATION, HTTP_REQUESTS, PROJECTION_LAG, STORE_HEAD};
    use api::routes::deliveries::{ACCEPTED_COUNTER, PREVIOUS_SECRET_COUNTER, REJECTED_COUNTER};
    metrics::describe_counter!(HTTP_REQUESTS, "HTTP requests answered, by method, route template and status");
    metrics::describe_histogram!(
        HTTP_REQUEST_DURATION,
        metrics::Unit::Seconds,
        "Time to answer HTTP requests, by method, route template and status"
    );
    metrics::describe_gauge!(PROJECTION_LAG, "Events stored but not yet applied to a read model, by projection");
    metrics::describe_gauge!(STORE_HEAD, "Global position of the newest stored event");
    metrics::describe_counter!(store::sqlite::EVENTS_APPENDED, "Events appended to the event store");
    metrics::describe_gauge!(RELAY_LAG, "Events stored but not yet acknowledged by Kafka (the relay's lag)");
    metrics::describe_gauge!(CONSUMER_LAG, "Events stored but not yet handled by an in-process consumer");
    metrics::describe_counter!(workers::relay::RELAY_PUBLISHED, "Events the relay published and Kafka acknowledged");
    metrics::describe_counter!(workers::executor::RUN_ATTEMPTS, "Run attempts, by outcome (succeeded, failed)");
    metrics::describe_counter!(workers::executor::RUNS_FINISHED, "Runs finished, by outcome (succeeded, failed)");
    metrics::describe_counter!(
        workers::fanout::OUTBOUND_OUTCOMES,
        "Outbound webhook attempts and cancellations recorded, by outcome (delivered, failed)"
    );
    metrics::describe_counter!(ACCEPTED_COUNTER, "Inbound webhook deliveries accepted, by provider and outcome");
    metrics::describe_counter!(REJECTED_COUNTER, "Inbound webhook deliveries refused, by reason and provider");
    metrics::describe_counter!(
        PREVIOUS_SECRET_COUNTER,
        "Inbound webhook deliveries verified with the previous secret during its grace period"
    );
}

/// Events stored but not yet acknowledged by Kafka.
pub const RELAY_LAG: &str = "relay_lag_events";
/// Events stored but not yet handled by an embedded consumer, by `consumer`.
pub const CONSUMER_LAG: &str = "consumer_lag_events";
/// How often the recorder's histograms are drained.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Installs the Prometheus recorder behind the `metrics` facade (once per process) and keeps
/// it tidy on the runtime.
pub fn install_prometheus() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(api::metrics::HTTP_REQUEST_DURATION.into()),
            &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0],
        )?
        .install_recorder()
        .context("installing the Prometheus recorder")?;
    describe_metrics();
    let upkeep = handle.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(UPKEEP_EVERY).await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

/// `worker --metrics-listen`: a listener answering `GET /metrics` alone, until `shutdown`.
pub async fn serve_metrics(
    addr: std::net::SocketAddr,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    use axum::http::header::CONTENT_TYPE;
    let handle = install_prometheus()?;
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
    let bound = listener.local_addr()?;
    println!("metrics on http://{bound}/metrics");
    tracing::info!(%bound, "serving metrics");
    let router = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let handle = handle.clone();
            async move { ([(CONTENT_TYPE, api::metrics::EXPOSITION_CONTENT_TYPE)], handle.render()) }
        }),
    );
    Ok(tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, router).with_graceful_shutdown(shutdown.cancelled_owned()).await {
            tracing::warn!(%error, "the metrics listener failed");
        }
    }))
}

/// What `serve`'s `/metrics` renders: the recorder, after measuring the lags of the relay and
/// of the in-process consumers (their checkpoints in `workers.db`) against the store head.
pub struct ServeExposition {
    pub handle: PrometheusHandle,
    pub store: Arc<dyn EventStore>,
    /// The workers' checkpoints, when this process runs the relay or embedded consumers.
    pub checkpoints: Option<SqliteCheckpoints>,
    /// Whether the consumers run in this process on the embedded feed (with Kafka their
    /// checkpoints are the consumer groups' offsets, and rows left in `workers.db` are stale).
    pub embedded_consumers: bool,
    /// Whether this process relays to Kafka (its lag is reported before its first checkpoint).
    pub relay: bool,
}

#[async_trait]
impl api::metrics::MetricsExposition for ServeExposition {
    async fn render(&self) -> String {
        if let (Some(checkpoints), Ok(head)) = (&self.checkpoints, self.store.head_position().await) {
            // Each consumer that has committed a checkpoint: the relay, the embedded consumers.
            match checkpoints.all().await {
                Ok(all) => {
                    if self.relay {
                        let relayed = all.iter().find(|(c, _)| c == workers::relay::RELAY_CONSUMER).map_or(0, |c| c.1);
                        metrics::gauge!(RELAY_LAG).set(head.saturating_sub(relayed) as f64);
                    }
                    for (consumer, position) in all {
                        let lag = head.saturating_sub(position) as f64;
                        if self.embedded_consumers && consumer != workers::relay::RELAY_CONSUMER {
                            metrics::gauge!(CONSUMER_LAG, "consumer" => consumer).set(lag);
                        }
                    }
                }
                Err(error) => tracing::warn!(%error, "metrics: cannot read the workers' checkpoints"),
            }
        }
        self.handle.render()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_traces_path_is_appended_once() {
        assert_eq!(otlp_traces_url("http://127.0.0.1:4318"), "http://127.0.0.1:4318/v1/traces");
        assert_eq!(otlp_traces_url("http://127.0.0.1:4318/"), "http://127.0.0.1:4318/v1/traces");
        assert_eq!(otlp_traces_url("https://c.example/v1/traces"), "https://c.example/v1/traces");
    }

    #[test]
    fn endpoints_must_be_http_urls() {
        assert!(parse_otlp_endpoint("http://127.0.0.1:4318").is_ok());
        assert!(parse_otlp_endpoint("127.0.0.1:4318").is_err());
        assert!(parse_otlp_endpoint("http://").is_err());
    }

    #[test]
    fn bad_log_filters_are_refused() {
        assert!(parse_log_filter("info,api=debug").is_ok());
        assert!(parse_log_filter("info,api=loud").is_err());
    }
}
