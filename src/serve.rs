use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use api::auth::{AuthConfig, Authenticator, JwksSource, RolePolicy, RoleRules};
use api::operations::Operation;
use api::server::ServerLimits;
use api::tls::{CertificateFiles, ReloadingCertificate};
use api::{ApiSettings, AppState};
use clap::Args;
use commands::idempotency::Idempotency;
use projections::{Projections, ReadModels};
use store::sqlite_idempotency::SqliteIdempotencyStore;
use tokio_util::sync::CancellationToken;
use workers::pace::Foreground;

use crate::data_dir::{DataDir, EVENTS_DB, READ_MODELS_DB};
use crate::dev_auth;
use crate::shutdown::{Hangups, shutdown_signal};
use connectors::key_sets::ProviderKeySets;

#[derive(Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free port; the bound address is printed).
    #[arg(long, env = "IE_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Serve HTTPS with this certificate chain (PEM, leaf first); needs --tls-key. Without
    /// it the API is plain HTTP, for a deployment behind a TLS-terminating proxy.
    #[arg(long, env = "IE_TLS_CERT", value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// The private key (PEM: PKCS#8, PKCS#1 or SEC1) of --tls-cert.
    #[arg(long, env = "IE_TLS_KEY", value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    /// Seconds between looks at the certificate files: a renewed pair is served from the next
    /// handshake on (SIGHUP reloads at once).
    #[arg(long, env = "IE_TLS_RELOAD_SECONDS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    tls_reload_seconds: u64,
    #[command(flatten)]
    data: DataDir,
    /// JWKS of the identity provider: a file path or an https:// URL. Without it, development
    /// tokens (HS256, `integration-engine token`) are accepted instead.
    #[arg(long, env = "IE_JWKS")]
    jwks: Option<String>,
    /// Required `iss` of tokens (required with --jwks).
    #[arg(long, env = "IE_ISSUER")]
    issuer: Option<String>,
    /// Required `aud` of tokens (required with --jwks).
    #[arg(long, env = "IE_AUDIENCE")]
    audience: Option<String>,
    /// The claim that holds a token's roles: a claim name (`roles`, `https://example.com/roles`)
    /// or a JSON Pointer into the claims (`/realm_access/roles`). Read only with --roles-policy.
    #[arg(long, env = "IE_ROLES_CLAIM", default_value = "roles")]
    roles_claim: String,
    /// Roles allowed per operation (OpenAPI operationId): `OPERATION=ROLE[,ROLE...]` entries
    /// separated by `;`, `*` for every operation not named; in the config file, a
    /// `[roles.policy]` table. With it a request needs its operation's scope AND an allowed
    /// role; without it scopes alone decide.
    #[arg(long, env = "IE_ROLES_POLICY", value_name = "POLICY", value_parser = role_policy)]
    roles_policy: Option<RolePolicy>,
    /// Clock skew allowed for `exp`/`nbf`, in seconds.
    #[arg(long, env = "IE_TOKEN_LEEWAY_SECONDS", default_value_t = api::auth::DEFAULT_LEEWAY_SECONDS)]
    token_leeway_seconds: u64,
    /// Largest accepted request body, in bytes (413 above).
    #[arg(long, env = "IE_MAX_BODY_BYTES", default_value_t = ApiSettings::default().max_body_bytes)]
    max_body_bytes: usize,
    /// Seconds from the first byte of a request to the end of its headers; a client slower than
    /// that has its connection closed.
    #[arg(long, env = "IE_HEADER_READ_TIMEOUT_SECONDS", default_value_t = ServerLimits::default().header_read_timeout.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
    header_read_timeout_seconds: u64,
    /// Seconds from the end of a request's headers to the end of its body (408 after that).
    #[arg(long, env = "IE_BODY_READ_TIMEOUT_SECONDS", default_value_t = ServerLimits::default().body_read_timeout.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
    body_read_timeout_seconds: u64,
    /// Seconds a connection may stay open waiting for its first or next request.
    #[arg(long, env = "IE_IDLE_TIMEOUT_SECONDS", default_value_t = ServerLimits::default().idle_timeout.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
    idle_timeout_seconds: u64,
    /// Connections open at once; more wait in the listen backlog until one closes. Lowered to
    /// what the process's descriptor limit leaves room for.
    #[arg(long, env = "IE_MAX_CONNECTIONS", default_value_t = ServerLimits::default().max_connections, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    max_connections: usize,
    /// Inbound webhooks: how far a signed timestamp may be from now, either way, in seconds.
    #[arg(long, env = "IE_WEBHOOK_TIMESTAMP_TOLERANCE_SECONDS", default_value_t = 300)]
    webhook_timestamp_tolerance_seconds: u64,
    /// Inbound webhooks: how long after a secret rotation the previous secret still verifies, in seconds.
    #[arg(long, env = "IE_WEBHOOK_SECRET_GRACE_SECONDS", default_value_t = 86_400)]
    webhook_secret_grace_seconds: u64,
    /// Inbound webhooks: a normalization rule table (TOML) to load instead of the built-in one.
    #[arg(long, env = "IE_NORMALIZATION_RULES")]
    normalization_rules: Option<std::path::PathBuf>,
    #[command(flatten)]
    kafka: crate::worker::KafkaArgs,
    #[command(flatten)]
    runs: crate::worker::RunArgs,
    /// Run no consumers in this process (no run executor, no commands consumer): leave runs to
    /// `worker` processes. With --kafka-brokers the relay still runs.
    #[arg(long, env = "IE_NO_WORKERS")]
    no_workers: bool,
    /// Nice value (0-19) of the threads that run the workers in this process (runs, health
    /// checks, outbound fan-out): when requests and background work want the cores at once, the
    /// kernel favours the API's threads. 0 runs both at one priority.
    #[arg(long, env = "IE_WORKER_NICE", default_value_t = 10, value_parser = clap::value_parser!(i32).range(0..=19))]
    worker_nice: i32,
    /// On SIGTERM or Ctrl-C: how long requests in flight may take to finish before the server
    /// stops anyway, in seconds.
    #[arg(long, env = "IE_SHUTDOWN_TIMEOUT_SECONDS", default_value_t = 30)]
    shutdown_timeout_seconds: u64,
    /// Hours an Idempotency-Key is remembered after its request (at least 1); a retry after that is executed again as a new request.
    #[arg(long, env = "IE_IDEMPOTENCY_RETENTION_HOURS", default_value_t = 24, value_parser = clap::value_parser!(u64).range(1..))]
    idempotency_retention_hours: u64,
    /// /readyz answers 503 while a read model is more than this many events behind the event store.
    #[arg(long, env = "IE_READINESS_MAX_LAG_EVENTS", default_value_t = 1000)]
    readiness_max_lag_events: u64,
    /// /readyz answers 503 while the oldest event a read model has not applied is more than this many seconds old.
    #[arg(long, env = "IE_READINESS_MAX_LAG_SECONDS", default_value_t = 30)]
    readiness_max_lag_seconds: u64,
}

fn role_policy(text: &str) -> Result<RolePolicy, String> {
    RolePolicy::parse(text, api::operations::OPERATION_IDS)
}

impl ServeArgs {
    fn auth_config(&self) -> anyhow::Result<(AuthConfig, bool)> {
        let roles = self.roles_policy.clone().map(|policy| RoleRules { claim: self.roles_claim.clone(), policy });
        let Some(jwks) = &self.jwks else {
            let secret = dev_auth::load_or_create_dev_secret(&self.data.data_dir)?;
            let mut config = AuthConfig::dev(secret);
            config.leeway_seconds = self.token_leeway_seconds;
            config.roles = roles;
            return Ok((config, true));
        };
        let (Some(issuer), Some(audience)) = (&self.issuer, &self.audience) else {
            bail!("--jwks needs --issuer and --audience (IE_ISSUER, IE_AUDIENCE)");
        };
        let source = if jwks.starts_with("https://") || jwks.starts_with("http://") {
            JwksSource::Url(jwks.clone())
        } else {
            JwksSource::File(jwks.into())
        };
        let mut config = AuthConfig::with_jwks(source, issuer, audience);
        config.leeway_seconds = self.token_leeway_seconds;
        config.roles = roles;
        Ok((config, false))
    }
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let dir = &args.data.data_dir;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // A certificate that cannot serve stops the start, before anything else is opened.
    let certificate = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            Some(ReloadingCertificate::load(CertificateFiles { cert: cert.clone(), key: key.clone() })?)
        }
        _ => None,
    };
    let (auth_config, dev_mode) = args.auth_config()?;
    if args.roles_policy.as_ref().is_some_and(|policy| policy.names(api::operations::IngestDelivery::ID)) {
        tracing::warn!(
            "the role policy names ingestDelivery: it applies to deliveries that carry a bearer token; \
             a delivery authenticated by the vendor's signature alone has no roles"
        );
    }
    let auth = Authenticator::new(auth_config).await?;

    // Worker processes and the `runs start` command may append to the same store.
    let stores = crate::process::Stores::open(&args.data)?;
    let (store, vault) = (stores.store.clone(), stores.vault.clone());
    let idempotency = Idempotency::new(
        Arc::new(
            SqliteIdempotencyStore::open(&dir.join(EVENTS_DB))?
                .with_retention(Duration::from_secs(args.idempotency_retention_hours.saturating_mul(3600))),
        ),
        stores.clock.clone(),
    );
    // Expired keys are free at once; the sweep only reclaims their rows, in short batches.
    let idempotency_sweeper = tokio::spawn(idempotency.clone().sweep_periodically(commands::idempotency::SWEEP_EVERY));
    let read_models = ReadModels::open(dir.join(READ_MODELS_DB))?;
    let projections = Projections::new(read_models.clone());
    let projector = tokio::spawn({
        let (projections, store) = (projections.clone(), store.clone());
        async move { projections.run(store).await }
    });
    let kafka = args.kafka.settings();
    let roles = crate::worker::Roles { relay: kafka.is_some(), consumers: !args.no_workers };
    // The workers run on threads of their own at a lower priority: under load the API answers
    // first, and the background work (health checks above all) catches up when it is quieter.
    let background = crate::background::Background::start(args.worker_nice)?;
    let in_flight = api::load::InFlight::default();
    let mut workers = background
        .run({
            let (stores, dir, kafka, runs) = (stores.clone(), dir.clone(), kafka.clone(), args.runs.clone());
            let foreground: Arc<dyn Foreground> = Arc::new(ApiRequests(in_flight.clone()));
            async move { crate::worker::start(&stores, &dir, kafka.as_ref(), &runs, roles, Some(foreground)).await }
        })
        .await??;

    let metrics = crate::telemetry::ServeExposition {
        handle: crate::telemetry::install_prometheus()?,
        store: store.clone(),
        checkpoints: if roles.relay || (roles.consumers && kafka.is_none()) {
            Some(workers::SqliteCheckpoints::open(dir.join(crate::data_dir::WORKERS_DB)).await?)
        } else {
            None
        },
        embedded_consumers: roles.consumers && kafka.is_none(),
        relay: roles.relay,
    };
    let webhook_egress_allow = Arc::new(args.runs.webhooks.allow_list()?);
    let state = AppState {
        commands: stores.commands(),
        read_models,
        projections,
        auth,
        vault: store::Vaults::new(vault),
        idempotency,
        store,
        provider_key_sets: Arc::new(ProviderKeySets::new(webhook_egress_allow.clone())),
        settings: ApiSettings {
            max_body_bytes: args.max_body_bytes,
            webhook_timestamp_tolerance: Duration::from_secs(args.webhook_timestamp_tolerance_seconds),
            webhook_secret_grace: Duration::from_secs(args.webhook_secret_grace_seconds),
            normalization_rules: Arc::new(match &args.normalization_rules {
                None => connectors::normalization::RuleTable::default_rules(),
                Some(path) => {
                    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
                    connectors::normalization::RuleTable::parse(&text)
                        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
                }
            }),
            metrics: Some(api::metrics::Exposition(Arc::new(metrics))),
            webhook_egress_allow,
            readiness: api::readiness::ReadinessLimits {
                max_lag_events: args.readiness_max_lag_events,
                max_lag: Duration::from_secs(args.readiness_max_lag_seconds),
            },
            in_flight,
            ..ApiSettings::default()
        },
    };
    let listener =
        tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    let hangups = certificate.as_ref().and_then(|_| Hangups::register());
    crate::announce_listening(if certificate.is_some() { "https" } else { "http" }, addr);
    if dev_mode {
        eprintln!(
            "development auth: no --jwks given, so HS256 tokens signed with {} are accepted.\n\
             get one with: integration-engine token --data-dir {} --tenant TENANT --scope \"integration.connections.write integration.connections.read\"",
            dir.join("dev-hs256.secret").display(),
            dir.display()
        );
    }
    tracing::info!(%addr, data_dir = %dir.display(), "serving");
    let limits = ServerLimits {
        header_read_timeout: Duration::from_secs(args.header_read_timeout_seconds),
        body_read_timeout: Duration::from_secs(args.body_read_timeout_seconds),
        idle_timeout: Duration::from_secs(args.idle_timeout_seconds),
        max_connections: connections_that_fit(args.max_connections),
    };
    let stopped = CancellationToken::new();
    let tls = certificate.as_ref().map(|certificate| {
        let every = Duration::from_secs(args.tls_reload_seconds);
        tokio::spawn(certificate.clone().watch(every, stopped.clone()));
        if let Some(hangups) = hangups {
            tokio::spawn(reload_on_hangup(certificate.clone(), hangups, stopped.clone()));
        }
        certificate.server_config()
    });
    let mut server = tokio::spawn(api::server::serve(listener, api::router(state), limits, tls, stopped.clone()));
    let served = tokio::select! {
        served = &mut server => served.map_err(anyhow::Error::from),
        () = shutdown_signal() => {
            // Drain the requests in flight before the workers stop, within the timeout.
            stopped.cancel();
            let drain = Duration::from_secs(args.shutdown_timeout_seconds);
            match tokio::time::timeout(drain, &mut server).await {
                Ok(served) => served.map_err(anyhow::Error::from),
                Err(_) => {
                    tracing::warn!(timeout = ?drain, "requests still in flight at the shutdown timeout: stopping anyway");
                    server.abort();
                    Ok(())
                }
            }
        }
        ended = workers.any_ended() => {
            stopped.cancel();
            let _ = server.await;
            ended
        }
    };
    workers.stop().await;
    drop(background);
    projector.abort();
    idempotency_sweeper.abort();
    // Give in-flight SQLite work on blocking threads a moment to finish its transaction.
    tokio::time::sleep(Duration::from_millis(50)).await;
    served
}

/// Reloads the certificate on every SIGHUP until `stop`.
async fn reload_on_hangup(certificate: Arc<ReloadingCertificate>, mut hangups: Hangups, stop: CancellationToken) {
    loop {
        tokio::select! {
            Some(()) = hangups.next() => {
                let certificate = certificate.clone();
                let _ = tokio::task::spawn_blocking(move || certificate.reload_and_log()).await;
            }
            () = stop.cancelled() => return,
        }
    }
}

/// The API as the workers' foreground: busy while it answers a request or had one within
/// [`API_BUSY_WINDOW`].
struct ApiRequests(api::load::InFlight);

/// Requests this close together keep the API busy for the workers' pace.
const API_BUSY_WINDOW: Duration = Duration::from_millis(100);

impl Foreground for ApiRequests {
    fn busy(&self) -> bool {
        self.0.active_within(API_BUSY_WINDOW)
    }
}

/// Descriptors kept for all but client connections: the SQLite files and their WALs, outbound
/// calls, the Kafka client.
const RESERVED_DESCRIPTORS: u64 = 256;

/// How many of `wanted` connections the process's descriptor limit leaves room for, after
/// raising its soft limit toward the hard one (many systems start processes at 1,024, which
/// a thousand idle clients would exhaust).
fn connections_that_fit(wanted: usize) -> usize {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let needed = wanted as u64 + RESERVED_DESCRIPTORS;
    let Rlimit { current, maximum } = getrlimit(Resource::Nofile);
    if current.is_some_and(|current| current < needed) {
        let raised = maximum.map_or(needed, |maximum| maximum.min(needed));
        if let Err(error) = setrlimit(Resource::Nofile, Rlimit { current: Some(raised), maximum }) {
            tracing::warn!(%error, "could not raise the open-file limit");
        }
    }
    let Some(limit) = getrlimit(Resource::Nofile).current else { return wanted };
    let fit = usize::try_from(limit.saturating_sub(RESERVED_DESCRIPTORS)).unwrap_or(usize::MAX).max(1);
    if fit < wanted {
        tracing::warn!(
            wanted,
            fit,
            open_file_limit = limit,
            "fewer connections fit under the open-file limit than --max-connections asks"
        );
    }
    wanted.min(fit)
}
