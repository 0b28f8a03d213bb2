//! The control plane's commands: `StartRun` (validate, authorise: the connection must belong to
//! the command's tenant, and request the run under the id its idempotency key determines) and
//! `PublishEvent` (a platform event for webhook fan-out). Used by the Kafka commands consumer
//! and by the `runs start` and `webhooks publish` CLIs of the embedded mode.

use commands::{CommandContext, CommandError, Commands};
use domain::connection::ConnectionEvent;
use domain::ids::{self, stream_id};
use domain::{Actor, DomainError};
use thiserror::Error;

use crate::messages::{COMMAND_SCHEMA_VERSION, ControlCommand, PublishEvent, StartRun, run_id_for};

/// Why a command is refused for good; it goes to the dead-letter topic with this reason.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Rejection {
    #[error("malformed command: {0}")]
    Malformed(String),
    #[error("unsupported cs-schema-version {0} (this engine reads {COMMAND_SCHEMA_VERSION})")]
    UnsupportedVersion(String),
    #[error("unauthorised: {0}")]
    Unauthorised(String),
    #[error("conflict: {0}")]
    Conflict(String),
}

impl Rejection {
    /// The value of the `dlq-error-class` header.
    pub fn class(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed",
            Self::UnsupportedVersion(_) => "unsupported-version",
            Self::Unauthorised(_) => "unauthorised",
            Self::Conflict(_) => "conflict",
        }
    }
}

/// Why handling a command failed.
#[derive(Debug, Error)]
pub enum ControlPlaneError {
    /// Refused for good: dead-letter it.
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// The store failed; the same command is tried again.
    #[error("the command could not be recorded: {0}")]
    Unavailable(#[from] CommandError),
}

/// Encodes a control command for the commands topic, checked first with the consumers' own
/// validation ([`parse_command`]), so a command they would refuse is refused before anything is
/// sent or recorded.
pub fn encode_command(command: &ControlCommand) -> Result<Vec<u8>, Rejection> {
    let encoded = serde_json::to_vec(command).map_err(|e| Rejection::Malformed(e.to_string()))?;
    parse_command(Some(COMMAND_SCHEMA_VERSION.to_string().as_bytes()), Some(&encoded))?;
    Ok(encoded)
}

/// Reads a command message: the `cs-schema-version` header and the JSON value.
pub fn parse_command(schema_version: Option<&[u8]>, value: Option<&[u8]>) -> Result<ControlCommand, Rejection> {
    let version =
        schema_version.ok_or_else(|| Rejection::Malformed("the cs-schema-version header is missing".into()))?;
    let version = String::from_utf8_lossy(version);
    if version.trim() != COMMAND_SCHEMA_VERSION.to_string() {
        return Err(Rejection::UnsupportedVersion(version.into_owned()));
    }
    let value = value.ok_or_else(|| Rejection::Malformed("the message has no value".into()))?;
    let command: ControlCommand = serde_json::from_slice(value).map_err(|e| Rejection::Malformed(e.to_string()))?;
    match &command {
        ControlCommand::StartRun(start) => validate(start)?,
        ControlCommand::PublishEvent(publish) => validate_publish(publish)?,
    }
    Ok(command)
}

/// Operations only the engine itself requests (a webhook delivery, a credential's check):
/// their input names engine-internal things (a source stream, a secret), so one requested
/// from outside could make the engine act on data the requester has no right to.
pub const ENGINE_RESERVED_OPERATIONS: [&str; 3] = [
    domain::outbound::DELIVER_WEBHOOK_OPERATION,
    commands::credentials::VERIFY_CREDENTIAL_OPERATION,
    commands::credentials::REVOKE_CREDENTIAL_OPERATION,
];

fn validate(start: &StartRun) -> Result<(), Rejection> {
    let malformed = |reason: &str| Err(Rejection::Malformed(reason.into()));
    if !ids::is_tenant_id(&start.tenant_id) {
        return malformed("tenantId must be 1 to 64 letters, digits, '-', '_' or '.'");
    }
    if !ids::has_prefix(&start.connection_id, ids::CONNECTION) {
        return malformed("connectionId must be a connection id (conn-...)");
    }
    if start.operation.trim().is_empty() || start.operation.len() > 100 {
        return malformed("operation must be 1 to 100 characters");
    }
    if start.idempotency_key.trim().is_empty() || start.idempotency_key.len() > 200 {
        return malformed("idempotencyKey must be 1 to 200 characters");
    }
    if ENGINE_RESERVED_OPERATIONS.iter().any(|reserved| reserved.eq_ignore_ascii_case(start.operation.trim())) {
        return Err(Rejection::Unauthorised(format!(
            "operation {} is reserved to the engine and cannot be started by StartRun",
            start.operation
        )));
    }
    if !start.input.is_object() {
        return malformed("input must be a JSON object");
    }
    Ok(())
}

fn validate_publish(publish: &PublishEvent) -> Result<(), Rejection> {
    let malformed = |reason: &str| Err(Rejection::Malformed(reason.into()));
    if !ids::is_tenant_id(&publish.tenant_id) {
        return malformed("tenantId must be 1 to 64 letters, digits, '-', '_' or '.'");
    }
    if !domain::outbound::is_event_type_name(&publish.event_type) {
        return malformed("eventType must be 1 to 128 letters, digits, '.', '_' or '-'");
    }
    if publish.message_id.as_deref().is_some_and(|m| !ids::has_prefix(m, domain::outbound::MESSAGE)) {
        return malformed("messageId must be msg- followed by lowercase letters, digits or '-'");
    }
    if publish.project_id.as_deref().is_some_and(|p| p.is_empty() || p.len() > 128) {
        return malformed("projectId must be 1 to 128 characters");
    }
    Ok(())
}

/// What a handled `StartRun` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunStartRequested {
    pub run_id: String,
    /// False when the run existed already (the same command handled before).
    pub newly_requested: bool,
}

/// Requests runs for `StartRun` commands.
#[derive(Clone)]
pub struct ControlPlane {
    commands: Commands,
    actor: Actor,
}

impl ControlPlane {
    /// `actor` is recorded on the events, e.g. `kafka:integration.commands.v1` or `cli`.
    pub fn new(commands: Commands, actor: Actor) -> Self {
        Self { commands, actor }
    }

    /// Requests the run of `start` (validated by [`parse_command`]) unless it exists already.
    pub async fn handle(&self, start: &StartRun, trace_id: &str) -> Result<RunStartRequested, ControlPlaneError> {
        validate(start)?;
        let connection =
            self.commands.load_first::<ConnectionEvent>(&stream_id(&start.tenant_id, &start.connection_id)).await?;
        if connection.is_none() {
            // Also what another tenant's connection looks like: streams are per tenant.
            return Err(Rejection::Unauthorised(format!(
                "connection {} is not a connection of tenant {}",
                start.connection_id, start.tenant_id
            ))
            .into());
        }
        let run_id = run_id_for(&start.tenant_id, &start.idempotency_key);
        let ctx = CommandContext::new(&start.tenant_id, trace_id, self.actor.clone());
        let before = self.commands.load::<domain::run::RunEvent>(&stream_id(&start.tenant_id, &run_id)).await?;
        let outcome = match self
            .commands
            .request_run(&ctx, &run_id, &start.connection_id, &start.operation, start.input.clone())
            .await
        {
            Ok(outcome) => outcome,
            Err(CommandError::Rejected(DomainError::Invalid { field, reason })) => {
                return Err(Rejection::Malformed(format!("{field}: {reason}")).into());
            }
            Err(e) => return Err(e.into()),
        };
        let same = outcome.requested.connection_id == start.connection_id
            && outcome.requested.operation == start.operation
            && outcome.requested.input == start.input;
        if !same {
            return Err(Rejection::Conflict(format!(
                "idempotencyKey {} was used for another run ({run_id}) with a different connection, operation or input",
                start.idempotency_key
            ))
            .into());
        }
        Ok(RunStartRequested { run_id, newly_requested: before.events.is_empty() })
    }

    /// Publishes the platform event of `publish` (validated by [`parse_command`]) as its
    /// message id, or `fallback_message_id` when it names none; returns the message id.
    pub async fn publish_event(
        &self,
        publish: &PublishEvent,
        fallback_message_id: &str,
        trace_id: &str,
    ) -> Result<String, ControlPlaneError> {
        validate_publish(publish)?;
        let message_id = publish.message_id.clone().unwrap_or_else(|| fallback_message_id.to_owned());
        let ctx = CommandContext::new(&publish.tenant_id, trace_id, self.actor.clone());
        match self
            .commands
            .publish_event(&ctx, &message_id, publish.project_id.clone(), &publish.event_type, publish.data.clone())
            .await
        {
            Ok(_) => Ok(message_id),
            Err(CommandError::Rejected(DomainError::Invalid { field, reason })) => {
                Err(Rejection::Malformed(format!("{field}: {reason}")).into())
            }
            Err(CommandError::Rejected(DomainError::InvalidTransition { .. })) => Err(Rejection::Conflict(format!(
                "messageId {message_id} was published before with another eventType, projectId or data"
            ))
            .into()),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn start_run(overrides: serde_json::Value) -> Vec<u8> {
        let mut body = json!({"type": "StartRun", "tenantId": "connectsoft", "connectionId": "conn-1", "operation": "OpenPullRequest", "input": {}, "idempotencyKey": "k-1"});
        for (k, v) in overrides.as_object().cloned().unwrap_or_default() {
            body[k] = v;
        }
        serde_json::to_vec(&body).unwrap()
    }

    #[test]
    fn a_well_formed_start_run_parses() {
        let parsed = parse_command(Some(b"1"), Some(&start_run(json!({}))));
        assert!(matches!(parsed, Ok(ControlCommand::StartRun(s)) if s.idempotency_key == "k-1"));
    }

    /// A message as the consumer sees it (version header, value) and the class it must get.
    type Case<'a> = (Option<&'a [u8]>, Vec<u8>, &'a str);

    #[test]
    fn malformed_commands_are_rejected_with_a_reason() {
        let cases: Vec<Case> = vec![
            (None, start_run(json!({})), "malformed"),
            (Some(b"2"), start_run(json!({})), "unsupported-version"),
            (Some(b"1"), b"{not json".to_vec(), "malformed"),
            (Some(b"1"), start_run(json!({"type": "DeleteEverything"})), "malformed"),
            (Some(b"1"), start_run(json!({"connectionId": "x"})), "malformed"),
            (Some(b"1"), start_run(json!({"tenantId": "a/b"})), "malformed"),
            (Some(b"1"), start_run(json!({"idempotencyKey": ""})), "malformed"),
            (Some(b"1"), start_run(json!({"input": [1]})), "malformed"),
            (Some(b"1"), start_run(json!({"unexpected": true})), "malformed"),
        ];
        for (version, value, class) in cases {
            let rejected = parse_command(version, Some(&value)).expect_err("must be rejected");
            assert_eq!(rejected.class(), class, "{rejected}");
            assert!(!rejected.to_string().is_empty());
        }
        assert_eq!(parse_command(Some(b"1"), None).unwrap_err().class(), "malformed");
    }

    /// A hand-crafted `DeliverWebhook` could name another tenant's stream as its source.
    #[test]
    fn engine_reserved_operations_are_refused() {
        let input = json!({"subscriptionId": "sub-1", "messageId": "msg-1",
            "source": {"streamId": "victim/msg-1", "eventId": "00000000-0000-0000-0000-000000000000"}});
        for operation in ["DeliverWebhook", "VerifyCredential", "RevokeCredential", " deliverwebhook "] {
            let value = start_run(json!({"operation": operation, "input": input}));
            let rejected = parse_command(Some(b"1"), Some(&value)).expect_err(operation);
            assert_eq!(rejected.class(), "unauthorised", "{operation}: {rejected}");
            assert!(rejected.to_string().contains("reserved to the engine"), "{rejected}");
        }
    }
}
