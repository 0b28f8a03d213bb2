//! What a process's background work runs on: the data dir's stores as the workers need them,
//! the feed each consumer reads (its Kafka group, or the store itself), and the named tasks a
//! process waits on. `worker`, `serve` and the webhooks' workers all start from here.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use commands::{Clock, Commands, SystemClock};
use domain::backoff::Backoff;
use store::cached_vault::CachedSecretStore;
use store::sqlite::SqliteEventStore;
use store::{EventStore, SecretStore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use workers::kafka::{KafkaFeed, KafkaSettings, ensure_topics};
use workers::{ConsumerOptions, EmbeddedFeed, EventHandler, SharedStore, SqliteCheckpoints, run_consumer_with};

use crate::data_dir::{DataDir, EVENTS_DB};

/// How often a process looks for events other processes appended.
const SHARED_STORE_POLL: Duration = Duration::from_millis(200);
/// How long a resolved current secret version is reused before the vault is asked again.
const SECRET_CACHE_TTL: Duration = Duration::from_secs(5);

/// The engine's stores as the workers need them.
#[derive(Clone)]
pub struct Stores {
    pub store: Arc<dyn EventStore>,
    pub vault: Arc<dyn SecretStore>,
    /// The process's one clock: the commands', the vault's, the idempotency keys' and the
    /// signed calls' `now`.
    pub clock: Arc<dyn Clock>,
}

impl Stores {
    /// Opens the data dir's event store (seeing other processes' appends) and vault.
    pub fn open(data: &DataDir) -> anyhow::Result<Self> {
        let dir = &data.data_dir;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let sqlite: Arc<dyn EventStore> = Arc::new(SqliteEventStore::open(&dir.join(EVENTS_DB))?);
        let store: Arc<dyn EventStore> = Arc::new(SharedStore::new(sqlite, SHARED_STORE_POLL));
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let vault = crate::secrets::open_vault(data)?.with_clock(clock.clone());
        let vault: Arc<dyn SecretStore> = Arc::new(CachedSecretStore::new(Arc::new(vault), SECRET_CACHE_TTL));
        Ok(Self { store, vault, clock })
    }

    pub(crate) fn commands(&self) -> Commands {
        Commands::new(self.store.clone(), self.vault.clone(), self.clock.clone())
    }
}

/// Where consumers read the events from: their Kafka group when the engine has brokers, else the
/// store itself, each consumer with its checkpoint in `workers.db`.
pub(crate) struct Feeds<'a> {
    pub stores: &'a Stores,
    pub kafka: Option<&'a KafkaSettings>,
    pub checkpoints: Option<&'a SqliteCheckpoints>,
}

/// A background task of a process, by name.
pub(crate) type Task = (&'static str, JoinHandle<anyhow::Result<()>>);

impl Feeds<'_> {
    /// Runs `handler` as the consumer `name` (its Kafka group `{prefix}.{name}`, or its embedded
    /// checkpoint) until `token` is cancelled; without a feed there is nothing to run.
    pub async fn spawn<H>(
        &self,
        name: &'static str,
        handler: H,
        options: ConsumerOptions,
        token: CancellationToken,
        tasks: &mut Vec<Task>,
    ) -> anyhow::Result<()>
    where
        H: EventHandler + Send + Sync + 'static,
    {
        let task = match (self.kafka, self.checkpoints) {
            (Some(settings), _) => {
                let settings = settings.clone();
                tokio::spawn(async move {
                    if wait_for_topics(&settings, &token).await {
                        let feed = KafkaFeed::subscribe(&settings, name)?;
                        run_consumer_with(feed, handler, options, token).await?;
                    }
                    Ok(())
                })
            }
            (None, Some(checkpoints)) => {
                let feed = EmbeddedFeed::open(self.stores.store.clone(), checkpoints.clone(), name).await?;
                tokio::spawn(async move { Ok(run_consumer_with(feed, handler, options, token).await?) })
            }
            (None, None) => return Ok(()),
        };
        tasks.push((name, task));
        Ok(())
    }
}

/// Creates the topics when missing, retrying while the brokers cannot be reached (the API
/// serves meanwhile); false when shutdown came first.
pub(crate) async fn wait_for_topics(settings: &KafkaSettings, shutdown: &CancellationToken) -> bool {
    let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(5));
    loop {
        match ensure_topics(settings).await {
            Ok(()) => return true,
            Err(error) => tracing::warn!(%error, retry_in = ?backoff.peek(), "cannot create the Kafka topics yet"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return false,
            () = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}
