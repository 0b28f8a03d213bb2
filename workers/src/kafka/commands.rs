//! The consumer of `integration.commands.v1`: each command is validated and handled, or
//! dead-lettered to `integration.commands.v1.dlq` with the reason in its headers. Either way
//! the offset moves on, so a bad message never blocks its partition; the offset is committed
//! only after the run request (or the dead letter) is durable.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use super::{KafkaSettings, LoggedConsumer, RebalanceLog, commit_refused_by_rebalance};
use crate::FeedError;
use crate::messages::{
    COMMANDS_DLQ_TOPIC, COMMANDS_TOPIC, ControlCommand, DLQ_ERROR_CLASS_HEADER, DLQ_ORIGIN_HEADER, DLQ_REASON_HEADER,
    SCHEMA_VERSION_HEADER, TRACEPARENT_HEADER, message_id_for,
};
use crate::start_run::{Rejection, StartRunError, StartRunHandler, parse_command};

/// The consumer name (group `{prefix}.commands`).
pub const COMMANDS_CONSUMER: &str = "commands";
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// A command message, copied out of librdkafka's buffer.
struct CommandMessage {
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(String, Option<Vec<u8>>)>,
}

impl CommandMessage {
    fn from_kafka(message: &BorrowedMessage<'_>) -> Self {
        let headers = message
            .headers()
            .map(|hs| hs.iter().map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec))).collect())
            .unwrap_or_default();
        Self {
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            value: message.payload().map(<[u8]>::to_vec),
            headers,
        }
    }

    fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).and_then(|(_, v)| v.as_deref())
    }
}

/// Handles the commands topic until `shutdown`; returns an error only when the consumer cannot
/// be created.
pub async fn run_commands_consumer(
    settings: &KafkaSettings,
    handler: StartRunHandler,
    shutdown: CancellationToken,
) -> Result<(), FeedError> {
    let consumer: LoggedConsumer = settings
        .consumer_config(&settings.group(COMMANDS_CONSUMER))
        .create_with_context(RebalanceLog { consumer: COMMANDS_CONSUMER.to_owned() })
        .map_err(source)?;
    consumer.subscribe(&[COMMANDS_TOPIC]).map_err(source)?;
    let consumer = Arc::new(consumer);
    let producer = settings.producer().map_err(source)?;
    loop {
        let received = tokio::select! {
            biased;
            () = shutdown.cancelled() => return Ok(()),
            received = consumer.recv() => received.map(|m| CommandMessage::from_kafka(&m)),
        };
        let message = match received {
            Ok(message) => message,
            Err(error) => {
                tracing::warn!(%error, "reading the commands topic failed");
                if !pause(FIRST_BACKOFF, &shutdown).await {
                    return Ok(());
                }
                continue;
            }
        };
        if !handle_until_done(&handler, &producer, &message, &shutdown).await {
            return Ok(());
        }
        commit(&consumer, &message, &shutdown).await;
    }
}

/// Handles one message, retrying failures of the store or the broker; false on shutdown.
async fn handle_until_done(
    handler: &StartRunHandler,
    producer: &FutureProducer,
    message: &CommandMessage,
    shutdown: &CancellationToken,
) -> bool {
    let mut backoff = FIRST_BACKOFF;
    let trace_id = message
        .header(TRACEPARENT_HEADER)
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(trace_id_of_traceparent)
        .unwrap_or_else(|| format!("trace-{}", uuid::Uuid::new_v4().simple()));
    loop {
        let outcome: Result<(), Rejection> =
            match parse_command(message.header(SCHEMA_VERSION_HEADER), message.value.as_deref()) {
                Ok(ControlCommand::PublishEvent(publish)) => {
                    let origin = format!("{COMMANDS_TOPIC}/{}/{}", message.partition, message.offset);
                    match handler.publish_event(&publish, &message_id_for(&origin), &trace_id).await {
                        Ok(message_id) => {
                            tracing::debug!(offset = message.offset, %message_id, "command handled: PublishEvent");
                            return true;
                        }
                        Err(StartRunError::Rejected(rejection)) => Err(rejection),
                        Err(StartRunError::Unavailable(error)) => {
                            tracing::warn!(%error, retry_in = ?backoff, "PublishEvent could not be recorded; retrying");
                            if !pause(backoff, shutdown).await {
                                return false;
                            }
                            backoff = (backoff * 2).min(MAX_BACKOFF);
                            continue;
                        }
                    }
                }
                Ok(ControlCommand::StartRun(start)) => match handler.handle(&start, &trace_id).await {
                    Ok(requested) => {
                        tracing::info!(
                            partition = message.partition,
                            offset = message.offset,
                            run_id = %requested.run_id,
                            idempotency_key = %start.idempotency_key,
                            newly_requested = requested.newly_requested,
                            "command handled: StartRun"
                        );
                        return true;
                    }
                    Err(StartRunError::Rejected(rejection)) => Err(rejection),
                    Err(StartRunError::Unavailable(error)) => {
                        tracing::warn!(%error, retry_in = ?backoff, "StartRun could not be recorded; retrying");
                        if !pause(backoff, shutdown).await {
                            return false;
                        }
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        continue;
                    }
                },
                Err(rejection) => Err(rejection),
            };
        let Err(rejection) = outcome else { return true };
        match dead_letter(producer, message, &rejection).await {
            Ok(()) => {
                tracing::warn!(
                    partition = message.partition,
                    offset = message.offset,
                    reason = %rejection,
                    "command dead-lettered to {COMMANDS_DLQ_TOPIC}"
                );
                return true;
            }
            Err(error) => {
                tracing::warn!(%error, retry_in = ?backoff, "dead-lettering a command failed; retrying");
                if !pause(backoff, shutdown).await {
                    return false;
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Publishes the message unchanged to the dead-letter topic, with the reason and origin added
/// to its headers; returns once the broker has it.
async fn dead_letter(
    producer: &FutureProducer,
    message: &CommandMessage,
    rejection: &Rejection,
) -> Result<(), rdkafka::error::KafkaError> {
    let reason = rejection.to_string();
    let origin = format!("{COMMANDS_TOPIC}/{}/{}", message.partition, message.offset);
    let mut headers = OwnedHeaders::new();
    for (key, value) in &message.headers {
        headers = headers.insert(Header { key, value: value.as_deref() });
    }
    headers = headers
        .insert(Header { key: DLQ_REASON_HEADER, value: Some(reason.as_bytes()) })
        .insert(Header { key: DLQ_ERROR_CLASS_HEADER, value: Some(rejection.class().as_bytes()) })
        .insert(Header { key: DLQ_ORIGIN_HEADER, value: Some(origin.as_bytes()) });
    let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(COMMANDS_DLQ_TOPIC).headers(headers);
    if let Some(key) = &message.key {
        record = record.key(key.as_slice());
    }
    if let Some(value) = &message.value {
        record = record.payload(value.as_slice());
    }
    producer.send(record, Duration::from_secs(5)).await.map(|_| ()).map_err(|(error, _)| error)
}

/// Commits the offset after `message`, retrying until it is stored or the partition was revoked.
async fn commit(consumer: &Arc<LoggedConsumer>, message: &CommandMessage, shutdown: &CancellationToken) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        let mut offsets = TopicPartitionList::new();
        if offsets.add_partition_offset(COMMANDS_TOPIC, message.partition, Offset::Offset(message.offset + 1)).is_err()
        {
            return;
        }
        let kafka = Arc::clone(consumer);
        let committed = tokio::task::spawn_blocking(move || kafka.commit(&offsets, CommitMode::Sync)).await;
        match committed {
            Ok(Ok(())) => return,
            Ok(Err(error)) => {
                let still_ours =
                    consumer.assignment().is_ok_and(|a| a.find_partition(COMMANDS_TOPIC, message.partition).is_some());
                if !still_ours {
                    // The new owner starts from the last committed offset; the handling is idempotent.
                    return;
                }
                if commit_refused_by_rebalance(&error) {
                    // The group rebalanced under this consumer: no retry can succeed before it
                    // reads again (which is when librdkafka does its part of the rebalance). The
                    // partition's owner after the rebalance gets the command again; idempotent.
                    tracing::warn!(%error, "command offset not committed: the group is rebalancing");
                    return;
                }
                tracing::warn!(%error, "committing a command offset failed; retrying");
            }
            Err(error) => tracing::warn!(%error, "commit task failed; retrying"),
        }
        if !pause(backoff, shutdown).await {
            return;
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// The engine's trace id for a W3C `traceparent`.
fn trace_id_of_traceparent(value: &str) -> Option<String> {
    let mut parts = value.trim().split('-');
    let (_, trace) = (parts.next()?, parts.next()?);
    let valid = trace.len() == 32 && trace.bytes().all(|b| b.is_ascii_hexdigit()) && trace.bytes().any(|b| b != b'0');
    valid.then(|| format!("trace-{}", trace.to_ascii_lowercase()))
}

async fn pause(delay: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        () = shutdown.cancelled() => false,
        () = tokio::time::sleep(delay) => true,
    }
}

fn source(error: rdkafka::error::KafkaError) -> FeedError {
    FeedError::Source(error.to_string())
}
