use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use api::auth::{AuthConfig, Authenticator, JwksSource};
use api::{ApiSettings, AppState};
use clap::Args;
use commands::idempotency::Idempotency;
use commands::{Commands, SystemClock};
use projections::{Projections, ReadModels};
use store::cached_vault::CachedSecretStore;
use store::sqlite::SqliteEventStore;
use store::sqlite_idempotency::SqliteIdempotencyStore;
use store::{EventStore, SecretStore};

use crate::{DataDir, dev_auth};

pub const EVENTS_DB: &str = "events.db";
pub const READ_MODELS_DB: &str = "readmodels.db";
/// How long a resolved current secret version is reused before the vault is asked again.
const SECRET_CACHE_TTL: Duration = Duration::from_secs(5);

#[derive(Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free port; the bound address is printed).
    #[arg(long, env = "IE_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
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
    /// Clock skew allowed for `exp`/`nbf`, in seconds.
    #[arg(long, env = "IE_TOKEN_LEEWAY_SECONDS", default_value_t = api::auth::DEFAULT_LEEWAY_SECONDS)]
    token_leeway_seconds: u64,
    /// Largest accepted request body, in bytes (413 above).
    #[arg(long, env = "IE_MAX_BODY_BYTES", default_value_t = ApiSettings::default().max_body_bytes)]
    max_body_bytes: usize,
}

impl ServeArgs {
    fn auth_config(&self) -> anyhow::Result<(AuthConfig, bool)> {
        let Some(jwks) = &self.jwks else {
            let secret = dev_auth::load_or_create_dev_secret(&self.data.data_dir)?;
            let mut config = AuthConfig::dev(secret);
            config.leeway_seconds = self.token_leeway_seconds;
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
        Ok((config, false))
    }
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let dir = &args.data.data_dir;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let (auth_config, dev_mode) = args.auth_config()?;
    let auth = Authenticator::new(auth_config).await?;

    let store: Arc<dyn EventStore> = Arc::new(SqliteEventStore::open(&dir.join(EVENTS_DB))?);
    let vault: Arc<dyn SecretStore> =
        Arc::new(CachedSecretStore::new(Arc::new(crate::secrets::open_vault(&args.data)?), SECRET_CACHE_TTL));
    let idempotency = Idempotency::new(Arc::new(SqliteIdempotencyStore::open(&dir.join(EVENTS_DB))?));
    let read_models = ReadModels::open(dir.join(READ_MODELS_DB))?;
    let projections = Projections::new(read_models.clone());
    let projector = tokio::spawn({
        let (projections, store) = (projections.clone(), store.clone());
        async move { projections.run(store).await }
    });

    let state = AppState {
        commands: Commands::new(store.clone(), vault.clone(), Arc::new(SystemClock)),
        read_models,
        projections,
        auth,
        vault,
        idempotency,
        store,
        settings: ApiSettings { max_body_bytes: args.max_body_bytes, ..ApiSettings::default() },
    };
    let listener =
        tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    crate::announce_listening(addr);
    if dev_mode {
        eprintln!(
            "development auth: no --jwks given, so HS256 tokens signed with {} are accepted.\n\
             get one with: integration-engine token --data-dir {} --tenant TENANT --scope \"integration.connections.write integration.connections.read\"",
            dir.join("dev-hs256.secret").display(),
            dir.display()
        );
    }
    tracing::info!(%addr, data_dir = %dir.display(), "serving");
    axum::serve(listener, api::router(state)).with_graceful_shutdown(shutdown_signal()).await?;
    projector.abort();
    // Give in-flight SQLite work on blocking threads a moment to finish its transaction.
    tokio::time::sleep(Duration::from_millis(50)).await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! { () = ctrl_c => {}, () = terminate => {} }
    tracing::info!("shutting down");
}
