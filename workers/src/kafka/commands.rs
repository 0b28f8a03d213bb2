//! The consumer of `integration.commands.v1`: each command is validated and handled, or
//! dead-lettered to `integration.commands.v1.dlq` with the reason in its headers. Either way
//! the offset moves on, so a bad message never blocks its partition; the offset is committed
//! only after the run request (or the dead letter) is durable.
//!
//! The commit of each command is asynchronous: it is handed to librdkafka, which sends the
//! commits in order, while the next command is handled (a synchronous commit per command made
//! a broker round trip the bound of the consumer's throughput). That stays at least once: a
//! commit is only ever sent for a command whose effects are durable, and one that is lost (the
//! process dies before the broker has it, a rebalance refuses it) means the command comes
//! again, which its handling is idempotent for. Closing the consumer (a stop, a drop) waits
//! for the commits in flight, librdkafka completes them before it gives partitions up in a
//! rebalance, and a stop commits what was handled once more, synchronously.

use domain::backoff::Backoff;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use super::{KafkaSettings, LoggedConsumer, RebalanceLog, commit_refused_by_rebalance};
use crate::FeedError;
use crate::control_plane::{ControlPlane, ControlPlaneError, Rejection, parse_command};
use crate::messages::{
    COMMANDS_DLQ_TOPIC, COMMANDS_TOPIC, ControlCommand, DLQ_ERROR_CLASS_HEADER, DLQ_ORIGIN_HEADER, DLQ_REASON_HEADER,
    SCHEMA_VERSION_HEADER, TRACEPARENT_HEADER, message_id_for,
};

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
    handler: ControlPlane,
    shutdown: CancellationToken,
) -> Result<(), FeedError> {
    let consumer: LoggedConsumer = settings
        .consumer_config(&settings.group(COMMANDS_CONSUMER))
        .create_with_context(RebalanceLog { consumer: COMMANDS_CONSUMER.to_owned() })
        .map_err(source)?;
    consumer.subscribe(&[COMMANDS_TOPIC]).map_err(source)?;
    let consumer = Arc::new(consumer);
    let producer = settings.producer().map_err(source)?;
    // The offset after the last command handled, by partition: what a stop commits.
    let mut handled = BTreeMap::new();
    loop {
        let received = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            received = consumer.recv() => received.map(|m| CommandMessage::from_kafka(&m)),
        };
        let message = match received {
            Ok(message) => message,
            Err(error) => {
                tracing::warn!(%error, "reading the commands topic failed");
                if !pause(FIRST_BACKOFF, &shutdown).await {
                    break;
                }
                continue;
            }
        };
        if !handle_until_done(&handler, &producer, &message, &shutdown).await {
            break;
        }
        handled.insert(message.partition, message.offset + 1);
        commit_async(&consumer, &message);
    }
    commit_on_stop(&consumer, &handled).await;
    Ok(())
}

/// Handles one message, retrying failures of the store or the broker; false on shutdown.
async fn handle_until_done(
    handler: &ControlPlane,
    producer: &FutureProducer,
    message: &CommandMessage,
    shutdown: &CancellationToken,
) -> bool {
    let mut backoff = Backoff::new(FIRST_BACKOFF, MAX_BACKOFF);
    let trace_id = message
        .header(TRACEPARENT_HEADER)
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(trace_id_of_traceparent)
        .unwrap_or_else(|| format!("trace-{}", uuid::Uuid::new_v4().simple()));
    loop {
        let outcome: Result<(), Rejection> = match parse_command(
            message.header(SCHEMA_VERSION_HEADER),
            message.value.as_deref(),
        ) {
            Ok(ControlCommand::PublishEvent(publish)) => {
                let origin = format!("{COMMANDS_TOPIC}/{}/{}", message.partition, message.offset);
                match handler.publish_event(&publish, &message_id_for(&origin), &trace_id).await {
                    Ok(message_id) => {
                        tracing::debug!(offset = message.offset, %message_id, "command handled: PublishEvent");
                        return true;
                    }
                    Err(ControlPlaneError::Rejected(rejection)) => Err(rejection),
                    Err(ControlPlaneError::Unavailable(error)) => {
                        tracing::warn!(%error, retry_in = ?backoff.peek(), "PublishEvent could not be recorded; retrying");
                        if !pause(backoff.next_delay(), shutdown).await {
                            return false;
                        }
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
                Err(ControlPlaneError::Rejected(rejection)) => Err(rejection),
                Err(ControlPlaneError::Unavailable(error)) => {
                    tracing::warn!(%error, retry_in = ?backoff.peek(), "StartRun could not be recorded; retrying");
                    if !pause(backoff.next_delay(), shutdown).await {
                        return false;
                    }
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
                tracing::warn!(%error, retry_in = ?backoff.peek(), "dead-lettering a command failed; retrying");
                if !pause(backoff.next_delay(), shutdown).await {
                    return false;
                }
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

/// Hands the offset after `message` to librdkafka to commit; the outcome is logged by
/// [`RebalanceLog`]. A commit that fails is covered by the next one of its partition, or by
/// [`commit_on_stop`]; until then the command would only come again (idempotent).
fn commit_async(consumer: &LoggedConsumer, message: &CommandMessage) {
    let mut offsets = TopicPartitionList::new();
    if offsets.add_partition_offset(COMMANDS_TOPIC, message.partition, Offset::Offset(message.offset + 1)).is_err() {
        return;
    }
    if let Err(error) = consumer.commit(&offsets, CommitMode::Async) {
        tracing::warn!(partition = message.partition, offset = message.offset, %error, "could not commit a command offset");
    }
}

/// On a stop: commits what was handled on the partitions still assigned, synchronously, so the
/// next member starts right after it even if an asynchronous commit was lost. Only offsets past
/// the broker's are sent: a partition given away and back meanwhile may have moved on under
/// another member. One attempt: what it cannot commit comes again to the partition's next owner
/// (idempotent).
async fn commit_on_stop(consumer: &Arc<LoggedConsumer>, handled: &BTreeMap<i32, i64>) {
    let Ok(assigned) = consumer.assignment() else { return };
    let kafka = Arc::clone(consumer);
    let handled = handled.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        let committed = kafka.committed_offsets(assigned, Duration::from_secs(5))?;
        let mut offsets = TopicPartitionList::new();
        for (partition, next) in handled {
            let Some(broker) = committed.find_partition(COMMANDS_TOPIC, partition) else { continue };
            let behind = match broker.offset() {
                Offset::Offset(stored) => stored < next,
                _ => true,
            };
            if behind {
                offsets.add_partition_offset(COMMANDS_TOPIC, partition, Offset::Offset(next))?;
            }
        }
        if offsets.count() == 0 {
            return Ok(());
        }
        kafka.commit(&offsets, CommitMode::Sync)
    })
    .await;
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(error)) if commit_refused_by_rebalance(&error) => {
            tracing::warn!(%error, "command offsets not committed on stop: the group is rebalancing");
        }
        Ok(Err(error)) => tracing::warn!(%error, "committing the command offsets on stop failed"),
        Err(error) => tracing::warn!(%error, "commit task failed"),
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
