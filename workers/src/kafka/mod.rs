//! The Kafka side of the bus: connection settings, topic creation, the producer the relay and
//! the dead-letter path share, and the consumers (the [`KafkaFeed`] of the events topic and the
//! commands consumer).

mod commands;
mod feed;

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, ClientContext, TopicPartitionList};
use thiserror::Error;

pub use commands::run_commands_consumer;
pub use feed::KafkaFeed;

use crate::messages::{
    COMMAND_SCHEMA_VERSION, COMMANDS_DLQ_TOPIC, COMMANDS_TOPIC, EVENTS_TOPIC, SCHEMA_VERSION_HEADER,
};

/// The default of [`KafkaSettings::fetch_wait`].
pub const DEFAULT_FETCH_WAIT: Duration = Duration::from_millis(50);

/// How to reach the brokers and how the engine's clients behave there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaSettings {
    /// `host:port[,host:port...]`.
    pub brokers: String,
    /// Consumer groups are `{group_prefix}.{consumer}`, e.g. `integration-engine.run-executor`.
    pub group_prefix: String,
    /// Partitions of the topics the engine creates when they are missing.
    pub partitions: i32,
    pub replication_factor: i32,
    /// How long the group waits for a silent member before handing its partitions to others.
    pub session_timeout: Duration,
    /// How long a produced message may wait for the broker before the relay retries it.
    pub message_timeout: Duration,
    /// The longest a consumer's fetch waits at the broker for new messages (librdkafka's
    /// `fetch.wait.max.ms`). Some brokers (tansu 0.6) hold every fetch for part of this wait even
    /// when messages are there, so it bounds the latency of each hop through a topic; shorter
    /// means more (empty) fetches while idle.
    pub fetch_wait: Duration,
}

impl KafkaSettings {
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            group_prefix: "integration-engine".into(),
            partitions: 6,
            replication_factor: 1,
            session_timeout: Duration::from_secs(10),
            message_timeout: Duration::from_secs(30),
            fetch_wait: DEFAULT_FETCH_WAIT,
        }
    }

    /// The consumer group of `consumer`.
    pub fn group(&self, consumer: &str) -> String {
        format!("{}.{consumer}", self.group_prefix)
    }

    /// The idempotent producer: acks from all in-sync replicas, retries that cannot duplicate or
    /// reorder a partition's messages.
    pub fn producer(&self) -> Result<FutureProducer, KafkaError> {
        ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            // Small messages, acknowledged one batch at a time: do not let Nagle hold them.
            .set("socket.nagle.disable", "true")
            .set("message.timeout.ms", self.message_timeout.as_millis().to_string())
            .set("client.id", "integration-engine")
            .create()
    }

    /// Consumer settings of group `group`: offsets are committed only by the engine, after the
    /// effects of a message are durable (at least once).
    pub(crate) fn consumer_config(&self, group: &str) -> ClientConfig {
        let session = self.session_timeout.as_millis();
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("group.id", group)
            .set("client.id", "integration-engine")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", session.to_string())
            .set("heartbeat.interval.ms", (session / 3).max(100).to_string())
            .set("fetch.wait.max.ms", self.fetch_wait.as_millis().max(1).to_string())
            .set("socket.nagle.disable", "true")
            // A run holds its partition while it executes (attempts, backoff): allow for it.
            .set("max.poll.interval.ms", "900000");
        config
    }
}

/// Logs the partitions a consumer is given and loses, so an operator (and a test) can see the
/// group share them.
pub struct RebalanceLog {
    pub consumer: String,
}

impl ClientContext for RebalanceLog {}

impl ConsumerContext for RebalanceLog {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let list = |partitions: &TopicPartitionList| {
            partitions
                .elements()
                .iter()
                .map(|p| format!("{}/{}", p.topic(), p.partition()))
                .collect::<Vec<_>>()
                .join(",")
        };
        match rebalance {
            Rebalance::Assign(partitions) => {
                tracing::info!(consumer = self.consumer.as_str(), partitions = %list(partitions), "partitions assigned");
            }
            Rebalance::Revoke(partitions) => {
                tracing::info!(consumer = self.consumer.as_str(), partitions = %list(partitions), "partitions revoked");
            }
            Rebalance::Error(error) => tracing::warn!(consumer = self.consumer.as_str(), %error, "rebalance failed"),
        }
    }

    /// The outcome of every commit, the asynchronous ones included (their only report): a
    /// failed commit leaves its messages to come again, so it is worth a warning, not more.
    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        if let Err(error) = result {
            let offsets = offsets
                .elements()
                .iter()
                .map(|p| format!("{}/{}@{:?}", p.topic(), p.partition(), p.offset()))
                .collect::<Vec<_>>()
                .join(",");
            if commit_refused_by_rebalance(&error) {
                // Expected around a rebalance; a synchronous committer also reports it itself.
                tracing::info!(consumer = self.consumer.as_str(), %error, %offsets, "offset commit refused by a rebalance; those messages will come again");
            } else {
                tracing::warn!(consumer = self.consumer.as_str(), %error, %offsets, "offset commit failed; those messages may come again");
            }
        }
    }
}

/// A consumer whose rebalances are logged.
pub(crate) type LoggedConsumer = StreamConsumer<RebalanceLog>;

/// Whether a commit was refused because the group has rebalanced without this member's
/// generation (a rebalance is under way, or the member was evicted). Retrying cannot succeed
/// before the consumer is read again (librdkafka completes its part of a rebalance while the
/// consumer is polled), so retrying in a loop would keep the member out of the group for good.
pub(crate) fn commit_refused_by_rebalance(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::RebalanceInProgress
                | RDKafkaErrorCode::IllegalGeneration
                | RDKafkaErrorCode::UnknownMemberId
        )
    )
}

#[derive(Debug, Error)]
pub enum KafkaSetupError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("creating topic {topic}: {error}")]
    CreateTopic { topic: String, error: String },
}

/// Why a control command could not be sent.
#[derive(Debug, Error)]
pub enum SendCommandError {
    #[error(transparent)]
    Setup(#[from] KafkaSetupError),
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
}

/// Publishes an encoded control command ([`crate::control_plane::encode_command`]) on the
/// commands topic, created when missing, keyed by `key` and with its schema version header.
pub async fn send_command(settings: &KafkaSettings, key: &str, encoded: &[u8]) -> Result<(), SendCommandError> {
    ensure_topics(settings).await?;
    let version = COMMAND_SCHEMA_VERSION.to_string();
    let headers = OwnedHeaders::new().insert(Header { key: SCHEMA_VERSION_HEADER, value: Some(version.as_bytes()) });
    let record = FutureRecord::to(COMMANDS_TOPIC).key(key.as_bytes()).payload(encoded).headers(headers);
    settings.producer()?.send(record, Duration::from_secs(30)).await.map_err(|(e, _)| e)?;
    Ok(())
}

/// Creates the engine's topics (events, commands, dead letters) when they do not exist.
pub async fn ensure_topics(settings: &KafkaSettings) -> Result<(), KafkaSetupError> {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", &settings.brokers).create()?;
    let topics: Vec<NewTopic<'_>> = [EVENTS_TOPIC, COMMANDS_TOPIC, COMMANDS_DLQ_TOPIC]
        .into_iter()
        .map(|name| NewTopic::new(name, settings.partitions, TopicReplication::Fixed(settings.replication_factor)))
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in admin.create_topics(&topics, &options).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(KafkaSetupError::CreateTopic { topic, error: code.to_string() }),
        }
    }
    Ok(())
}
