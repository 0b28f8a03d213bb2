//! What travels on the bus: events as CloudEvents 1.0 (structured JSON) with their Kafka
//! headers, and the control plane's commands. The JSON Schemas in `schemas/kafka/` and
//! `asyncapi.yaml` are generated from these types.

use chrono::{DateTime, Utc};
use domain::{Actor, EventData, EventEnvelope};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use thiserror::Error;
use uuid::Uuid;

/// The topic every stored event is published to, keyed by stream id.
pub const EVENTS_TOPIC: &str = "integration.events.v1";
/// The control plane's commands to the engine (`StartRun`, `PublishEvent`).
pub const COMMANDS_TOPIC: &str = "integration.commands.v1";
/// Commands that were malformed or unauthorised, with the reason in headers.
pub const COMMANDS_DLQ_TOPIC: &str = "integration.commands.v1.dlq";

/// The event's (or command's) schema version, as a decimal string.
pub const SCHEMA_VERSION_HEADER: &str = "cs-schema-version";
pub const CE_TYPE_HEADER: &str = "ce_type";
pub const CE_ID_HEADER: &str = "ce_id";
pub const TRACEPARENT_HEADER: &str = "traceparent";
pub const TENANT_HEADER: &str = "tenant-id";
pub const CONTENT_TYPE_HEADER: &str = "content-type";
/// The structured-mode content type of the CloudEvents Kafka binding.
pub const CLOUDEVENTS_CONTENT_TYPE: &str = "application/cloudevents+json; charset=UTF-8";
/// Why a command was dead-lettered (human-readable).
pub const DLQ_REASON_HEADER: &str = "dlq-reason";
/// The class of the rejection: `malformed`, `unsupported-version`, `unauthorised`, `conflict`.
pub const DLQ_ERROR_CLASS_HEADER: &str = "dlq-error-class";
/// Where the dead-lettered message came from: `topic/partition/offset`.
pub const DLQ_ORIGIN_HEADER: &str = "dlq-origin";

/// The `source` of every event this engine publishes.
pub const EVENT_SOURCE: &str = "urn:connectsoft:integration-engine";

/// An event on `integration.events.v1`: a CloudEvents 1.0 structured-mode JSON document.
///
/// Extension attributes carry the rest of the stored envelope, so a consumer can rebuild it
/// (and check the hash chain) without reading the store. 64-bit counters are decimal strings:
/// CloudEvents integers are 32-bit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(title = "CloudEvent", description = "An event of integration.events.v1 (CloudEvents 1.0, structured JSON)")]
pub struct CloudEvent {
    /// Always `1.0`.
    pub specversion: String,
    /// The event id (UUIDv7): the key to deduplicate on.
    pub id: Uuid,
    /// Always `urn:connectsoft:integration-engine`.
    pub source: String,
    /// The event type, e.g. `RunRequested`; `data` follows `schemas/events/{type}.v{schemaversion}.json`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The stream id, `{tenantId}/{resourceId}` (also the Kafka key).
    pub subject: String,
    /// When the event occurred.
    pub time: DateTime<Utc>,
    /// Always `application/json`.
    pub datacontenttype: String,
    /// The tenant the stream belongs to.
    pub tenantid: String,
    /// The schema version of `data` (`cs-schema-version`).
    pub schemaversion: u32,
    /// The event's version in its stream (1 for the first), decimal.
    pub streamversion: String,
    /// The event's position in the store's global order, decimal.
    pub position: String,
    /// The engine's trace id, e.g. `trace-4bf92f3577b34da6a3ce929d0e0e4736`.
    pub traceid: String,
    /// W3C trace context of the event (Distributed Tracing extension).
    pub traceparent: String,
    pub correlationid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causationid: Option<String>,
    /// Who caused the event (token subject, `system`, or a worker).
    pub actorsubject: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actorclientid: Option<String>,
    /// Hex SHA-256 of the previous event of the stream (64 zeros for the first).
    pub prevhash: String,
    /// Hex SHA-256 over `prevhash` and this event's canonical content.
    pub hash: String,
    /// The event's data.
    // Shared with the envelope it was made of, and written as it was stored.
    #[schemars(with = "Value")]
    pub data: EventData,
}

/// Why a message of the events topic is not a readable event.
#[derive(Debug, Error)]
pub enum EventMessageError {
    #[error("not a CloudEvent of this engine: {0}")]
    Malformed(String),
}

impl CloudEvent {
    pub fn from_envelope(envelope: &EventEnvelope) -> Self {
        Self {
            specversion: "1.0".into(),
            id: envelope.event_id,
            source: EVENT_SOURCE.into(),
            event_type: envelope.event_type.clone(),
            subject: envelope.stream_id.clone(),
            time: envelope.occurred_at,
            datacontenttype: "application/json".into(),
            tenantid: envelope.tenant_id.clone(),
            schemaversion: envelope.schema_version,
            streamversion: envelope.stream_version.to_string(),
            position: envelope.global_position.to_string(),
            traceid: envelope.trace_id.clone(),
            traceparent: traceparent(&envelope.trace_id, envelope.event_id),
            correlationid: envelope.correlation_id.clone(),
            causationid: envelope.causation_id.clone(),
            actorsubject: envelope.actor.subject.clone(),
            actorclientid: envelope.actor.client_id.clone(),
            prevhash: envelope.prev_hash.clone(),
            hash: envelope.hash.clone(),
            data: envelope.data.clone(),
        }
    }

    /// The stored envelope back, as the store holds it.
    pub fn into_envelope(self) -> Result<EventEnvelope, EventMessageError> {
        let number = |name: &str, value: &str| {
            value.parse::<u64>().map_err(|e| EventMessageError::Malformed(format!("{name} {value:?}: {e}")))
        };
        if self.specversion != "1.0" {
            return Err(EventMessageError::Malformed(format!("specversion {}", self.specversion)));
        }
        Ok(EventEnvelope {
            event_id: self.id,
            event_type: self.event_type,
            schema_version: self.schemaversion,
            stream_version: number("streamversion", &self.streamversion)?,
            global_position: number("position", &self.position)?,
            stream_id: self.subject,
            tenant_id: self.tenantid,
            occurred_at: self.time,
            trace_id: self.traceid,
            correlation_id: self.correlationid,
            causation_id: self.causationid,
            actor: Actor { subject: self.actorsubject, client_id: self.actorclientid },
            prev_hash: self.prevhash,
            hash: self.hash,
            data: self.data,
        })
    }

    /// Reads a message value of the events topic.
    pub fn parse(value: &[u8]) -> Result<Self, EventMessageError> {
        serde_json::from_slice(value).map_err(|e| EventMessageError::Malformed(e.to_string()))
    }
}

/// The Kafka headers of a published event, in order.
pub fn event_headers(envelope: &EventEnvelope) -> Vec<(&'static str, String)> {
    vec![
        (SCHEMA_VERSION_HEADER, envelope.schema_version.to_string()),
        (CE_TYPE_HEADER, envelope.event_type.clone()),
        (CE_ID_HEADER, envelope.event_id.to_string()),
        (TRACEPARENT_HEADER, traceparent(&envelope.trace_id, envelope.event_id)),
        (TENANT_HEADER, envelope.tenant_id.clone()),
        (CONTENT_TYPE_HEADER, CLOUDEVENTS_CONTENT_TYPE.into()),
    ]
}

/// The W3C `traceparent` of an event: the trace id of the request that caused it (our trace ids
/// are `trace-` + the W3C trace id; others are hashed into one) and a span id from the event id.
pub fn traceparent(trace_id: &str, event_id: Uuid) -> String {
    let hex32 = trace_id.strip_prefix("trace-").filter(|t| {
        t.len() == 32
            && t.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            && t.bytes().any(|b| b != b'0')
    });
    let trace = match hex32 {
        Some(t) => t.to_owned(),
        None => hex_of(&Sha256::digest(trace_id.as_bytes())[..16]),
    };
    // The random tail of a UUIDv7 is never all zeros in practice; force a bit to be sure.
    let mut span = event_id.as_bytes()[8..16].to_vec();
    span[7] |= 1;
    format!("00-{trace}-{}-01", hex_of(&span))
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A command of the control plane on `integration.commands.v1`: JSON tagged by `type`, with a
/// `cs-schema-version: 1` header.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type")]
#[schemars(title = "ControlCommand", description = "A command of integration.commands.v1")]
pub enum ControlCommand {
    StartRun(StartRun),
    PublishEvent(PublishEvent),
}

/// The current schema version of the control plane's commands.
pub const COMMAND_SCHEMA_VERSION: u32 = 1;

/// Start an integration run. The run id is derived from the tenant and the idempotency key, so
/// the same command sent twice starts one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StartRun {
    pub tenant_id: String,
    /// A connection of that tenant.
    pub connection_id: String,
    /// e.g. `OpenPullRequest` or `http.request`.
    pub operation: String,
    /// The operation's input (an object).
    #[serde(default = "empty_object")]
    pub input: Value,
    /// Unique per intended run within the tenant (1 to 200 characters).
    pub idempotency_key: String,
}

/// Publish a platform event (e.g. `DeploymentPromoted`) to the tenant's webhook subscriptions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PublishEvent {
    pub tenant_id: String,
    /// Subscriptions to a project get only that project's events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_id: Option<String>,
    /// The event type subscriptions match (exactly, or by a `Prefix*` pattern).
    pub event_type: String,
    /// The event's data (the `data` of the delivered body).
    #[serde(default = "empty_object")]
    pub data: Value,
    /// `msg-...`: the message id receivers see as `webhook-id`; publishing the same id again is
    /// one message. Absent: derived from the message's topic, partition and offset, so a
    /// redelivery of the same Kafka message is still one message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
}

/// The message id of a `PublishEvent` without one: `msg-` and 32 hex digits of SHA-256 over
/// where the command was read (topic, partition, offset).
pub fn message_id_for(origin: &str) -> String {
    let digest = Sha256::new().chain_update(b"PublishEvent\0").chain_update(origin).finalize();
    domain::ids::new_id(domain::outbound::MESSAGE, Uuid::from_slice(&digest[..16]).unwrap_or_default())
}

fn empty_object() -> Value {
    Value::Object(Default::default())
}

/// The run id a `StartRun` with this idempotency key creates: `run-` and 32 hex digits of
/// SHA-256 over the tenant and the key, the same on every worker and every redelivery.
pub fn run_id_for(tenant_id: &str, idempotency_key: &str) -> String {
    let digest = Sha256::new()
        .chain_update(b"StartRun\0")
        .chain_update(tenant_id)
        .chain_update(b"\0")
        .chain_update(idempotency_key)
        .finalize();
    domain::ids::new_id(domain::ids::RUN, Uuid::from_slice(&digest[..16]).unwrap_or_default())
}

/// The JSON Schemas (2020-12) of the bus's messages, by file name stem: `CloudEvent.v1` (values
/// of the events topic) and `ControlCommand.v1` (values of the commands topic).
pub fn message_schemas() -> Vec<(&'static str, schemars::Schema)> {
    let generator = || schemars::SchemaGenerator::new(schemars::generate::SchemaSettings::draft2020_12());
    vec![
        ("CloudEvent.v1", generator().into_root_schema_for::<CloudEvent>()),
        ("ControlCommand.v1", generator().into_root_schema_for::<ControlCommand>()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn envelope() -> EventEnvelope {
        EventEnvelope {
            event_id: Uuid::now_v7(),
            event_type: "RunRequested".into(),
            schema_version: 1,
            stream_id: "connectsoft/run-1".into(),
            stream_version: 1,
            global_position: 42,
            tenant_id: "connectsoft".into(),
            occurred_at: DateTime::UNIX_EPOCH,
            trace_id: "trace-4bf92f3577b34da6a3ce929d0e0e4736".into(),
            correlation_id: "trace-4bf92f3577b34da6a3ce929d0e0e4736".into(),
            causation_id: None,
            actor: Actor { subject: "svc".into(), client_id: Some("client".into()) },
            prev_hash: "0".repeat(64),
            hash: "a".repeat(64),
            data: json!({"runId": "run-1"}).into(),
        }
    }

    #[test]
    fn an_envelope_survives_the_cloudevent_round_trip() {
        let original = envelope();
        let json = serde_json::to_vec(&CloudEvent::from_envelope(&original)).unwrap();
        assert_eq!(CloudEvent::parse(&json).unwrap().into_envelope().unwrap(), original);
    }

    #[test]
    fn the_cloudevent_has_the_required_attributes_and_the_headers_match() {
        let e = envelope();
        let ce = serde_json::to_value(CloudEvent::from_envelope(&e)).unwrap();
        for attribute in [
            "specversion",
            "id",
            "source",
            "type",
            "subject",
            "time",
            "datacontenttype",
            "tenantid",
            "schemaversion",
            "streamversion",
            "position",
            "traceparent",
        ] {
            assert!(ce.get(attribute).is_some(), "{attribute}");
        }
        assert_eq!(ce["id"], json!(e.event_id.to_string()));
        let headers = event_headers(&e);
        let header = |name| headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.clone()).unwrap();
        assert_eq!(header(SCHEMA_VERSION_HEADER), "1");
        assert_eq!(header(CE_ID_HEADER), e.event_id.to_string());
        assert_eq!(header(TENANT_HEADER), "connectsoft");
        assert!(header(TRACEPARENT_HEADER).starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
    }

    #[test]
    fn traceparents_are_valid_for_any_trace_id() {
        for trace in ["trace-9f1c2b7d", "anything", "trace-00000000000000000000000000000000"] {
            let tp = traceparent(trace, Uuid::nil());
            let parts: Vec<_> = tp.split('-').collect();
            assert_eq!((parts.len(), parts[1].len(), parts[2].len()), (4, 32, 16), "{tp}");
            assert_ne!(parts[2], "0000000000000000");
        }
    }

    #[test]
    fn run_ids_are_deterministic_per_tenant_and_key() {
        assert_eq!(run_id_for("t", "k"), run_id_for("t", "k"));
        assert_ne!(run_id_for("t", "k"), run_id_for("u", "k"));
        assert_ne!(run_id_for("t", "k"), run_id_for("t", "k2"));
        assert!(domain::ids::has_prefix(&run_id_for("t", "k"), "run"));
    }
}
