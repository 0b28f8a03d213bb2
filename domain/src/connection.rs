use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::provider::AuthModel;
use crate::secret_ref::SecretRef;
use crate::{AggregateEvent, Decider, DomainError};

/// A connection's measured health; `Unknown` until the first check has run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Health {
    #[default]
    Unknown,
    Healthy,
    Degraded,
    Unhealthy,
}

/// Consecutive failed checks after which a degraded connection is unhealthy.
pub const UNHEALTHY_AFTER_FAILURES: u32 = 3;

/// How many recent health-check runs a connection remembers, so a redelivered outcome is
/// recorded once. Outcomes arrive in about the order their runs were requested, one at a time.
const REMEMBERED_CHECKS: usize = 16;

/// What the command handler knows of the provider the connection names, read from its stream.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderSnapshot {
    pub provider_id: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ConnectionCommand {
    Establish(EstablishConnection),
    RecordHealthCheck(RecordHealthCheck),
}

#[derive(Debug, Clone, PartialEq)]
pub struct EstablishConnection {
    pub connection_id: String,
    pub tenant_id: String,
    pub project_id: String,
    pub provider_id: String,
    /// The provider as registered in this tenant, or `None` when it is not.
    pub provider: Option<ProviderSnapshot>,
    pub display_name: String,
    pub auth_mode: AuthModel,
    pub credential_ref: Option<String>,
    pub configuration: Map<String, Value>,
    pub established_at: DateTime<Utc>,
}

/// The outcome of a health-check run against the connection.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordHealthCheck {
    pub run_id: String,
    pub succeeded: bool,
    /// Why the check failed (the run's error); never a secret.
    pub reason: Option<String>,
    pub checked_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionEstablished {
    pub connection_id: String,
    pub tenant_id: String,
    pub project_id: String,
    pub provider_id: String,
    pub display_name: String,
    pub auth_mode: AuthModel,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_ref: Option<String>,
    /// Provider-specific settings; secrets appear only as `kv://` refs (e.g. `webhookSecretRef`).
    pub configuration: Map<String, Value>,
    pub established_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionHealthChecked {
    pub connection_id: String,
    pub run_id: String,
    pub health: Health,
    pub consecutive_failures: u32,
    /// Why the check failed; absent after a success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub checked_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", content = "data")]
pub enum ConnectionEvent {
    ConnectionEstablished(ConnectionEstablished),
    ConnectionHealthChecked(ConnectionHealthChecked),
}

impl AggregateEvent for ConnectionEvent {
    const TYPES: &'static [&'static str] = &["ConnectionEstablished", "ConnectionHealthChecked"];

    fn event_type(&self) -> &'static str {
        match self {
            Self::ConnectionEstablished(_) => "ConnectionEstablished",
            Self::ConnectionHealthChecked(_) => "ConnectionHealthChecked",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub enum ConnectionState {
    #[default]
    None,
    Active {
        connection_id: String,
        health: Health,
        consecutive_failures: u32,
        /// The latest health-check runs recorded, newest last.
        recent_checks: Vec<String>,
    },
}

/// Words that mark a configuration key as naming a secret (`webhookSecretRef`, `apiKey`,
/// `accessToken`, `password`, ...): its value must be a `kv://` ref, so no secret value can ever
/// enter an event.
const SECRET_KEY_WORDS: &[&str] =
    &["secret", "token", "password", "passwd", "apikey", "api_key", "privatekey", "credential"];

/// Whether a configuration key names a secret.
pub fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase().replace('-', "");
    // `tokenUrl` or `credentialEndpoint` name where a secret is fetched, not the secret.
    let names_a_location = ["url", "uri", "endpoint"].iter().any(|s| key.ends_with(s));
    !names_a_location && SECRET_KEY_WORDS.iter().any(|w| key.contains(w))
}

/// The configuration key of the secret that verifies a connection's inbound webhooks: the one
/// secret of a connection that never leaves the engine.
pub const WEBHOOK_SECRET_REF: &str = "webhookSecretRef";

/// The configuration key of the URL where a provider publishes the keys of its JWS deliveries.
pub const WEBHOOK_JWKS: &str = "webhookJwks";

/// The `kv://` refs held by secret-named keys, at any depth, with their field paths.
pub fn secret_refs(map: &Map<String, Value>, path: &str) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for (key, value) in map {
        let field = format!("{path}.{key}");
        match value {
            Value::Object(inner) => found.extend(secret_refs(inner, &field)),
            Value::String(r) if is_secret_key(key) => found.push((field, r.clone())),
            _ => {}
        }
    }
    found
}

/// Every secret-named key, at any depth, must hold a `kv://` ref.
fn require_refs_for_secrets(map: &Map<String, Value>, path: &str) -> Result<(), DomainError> {
    for (key, value) in map {
        let field = format!("{path}.{key}");
        match value {
            Value::Object(inner) => require_refs_for_secrets(inner, &field)?,
            _ if is_secret_key(key) => {
                let r =
                    value.as_str().ok_or_else(|| DomainError::invalid(&field, "must be a kv:// secret reference"))?;
                SecretRef::parse(r).map_err(|reason| DomainError::invalid(&field, reason))?;
            }
            _ => {}
        }
    }
    Ok(())
}

pub struct Connection;

impl Decider for Connection {
    type Command = ConnectionCommand;
    type Event = ConnectionEvent;
    type State = ConnectionState;

    fn decide(command: &ConnectionCommand, state: &ConnectionState) -> Result<Vec<ConnectionEvent>, DomainError> {
        match (command, state) {
            (ConnectionCommand::Establish(c), ConnectionState::None) => establish(c),
            (ConnectionCommand::Establish(c), ConnectionState::Active { .. }) => {
                Err(DomainError::AlreadyExists { kind: "connection", id: c.connection_id.clone() })
            }
            (ConnectionCommand::RecordHealthCheck(_), ConnectionState::None) => Err(DomainError::InvalidTransition {
                kind: "connection",
                state: "not established".into(),
                command: "check",
            }),
            (
                ConnectionCommand::RecordHealthCheck(c),
                ConnectionState::Active { connection_id, consecutive_failures, recent_checks, .. },
            ) => {
                if recent_checks.contains(&c.run_id) {
                    return Ok(vec![]);
                }
                let failures = if c.succeeded { 0 } else { consecutive_failures + 1 };
                let health = match failures {
                    0 => Health::Healthy,
                    n if n >= UNHEALTHY_AFTER_FAILURES => Health::Unhealthy,
                    _ => Health::Degraded,
                };
                Ok(vec![ConnectionEvent::ConnectionHealthChecked(ConnectionHealthChecked {
                    connection_id: connection_id.clone(),
                    run_id: c.run_id.clone(),
                    health,
                    consecutive_failures: failures,
                    reason: if c.succeeded { None } else { c.reason.clone() },
                    checked_at: c.checked_at,
                })])
            }
        }
    }

    fn evolve(state: ConnectionState, event: &ConnectionEvent) -> ConnectionState {
        match event {
            ConnectionEvent::ConnectionEstablished(e) => ConnectionState::Active {
                connection_id: e.connection_id.clone(),
                health: Health::Unknown,
                consecutive_failures: 0,
                recent_checks: Vec::new(),
            },
            ConnectionEvent::ConnectionHealthChecked(e) => match state {
                ConnectionState::Active { connection_id, mut recent_checks, .. } => {
                    if recent_checks.len() >= REMEMBERED_CHECKS {
                        recent_checks.remove(0);
                    }
                    recent_checks.push(e.run_id.clone());
                    ConnectionState::Active {
                        connection_id,
                        health: e.health,
                        consecutive_failures: e.consecutive_failures,
                        recent_checks,
                    }
                }
                ConnectionState::None => ConnectionState::None,
            },
        }
    }
}

fn establish(c: &EstablishConnection) -> Result<Vec<ConnectionEvent>, DomainError> {
    if c.provider.as_ref().is_none_or(|p| p.provider_id != c.provider_id) {
        return Err(DomainError::UnknownProvider { provider_id: c.provider_id.clone() });
    }
    if let Some(r) = &c.credential_ref {
        SecretRef::parse(r).map_err(|reason| DomainError::invalid("credentialRef", reason))?;
    }
    require_refs_for_secrets(&c.configuration, "configuration")?;
    Ok(vec![ConnectionEvent::ConnectionEstablished(ConnectionEstablished {
        connection_id: c.connection_id.clone(),
        tenant_id: c.tenant_id.clone(),
        project_id: c.project_id.clone(),
        provider_id: c.provider_id.clone(),
        display_name: c.display_name.clone(),
        auth_mode: c.auth_mode,
        credential_ref: c.credential_ref.clone(),
        configuration: c.configuration.clone(),
        established_at: c.established_at,
    })])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Given;
    use chrono::TimeZone;
    use serde_json::json;

    fn at(min: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 6, 11, 9, min, 0).unwrap()
    }

    fn establish_cmd() -> EstablishConnection {
        EstablishConnection {
            connection_id: "conn-1".into(),
            tenant_id: "connectsoft".into(),
            project_id: "proj-booking-saas".into(),
            provider_id: "prov-github".into(),
            provider: Some(ProviderSnapshot { provider_id: "prov-github".into() }),
            display_name: "Booking SaaS GitHub".into(),
            auth_mode: AuthModel::OAuth2ClientCredentials,
            credential_ref: Some("kv://factory-integration/github-booking".into()),
            configuration: json!({"organization": "connectsoft-booking"}).as_object().unwrap().clone(),
            established_at: at(0),
        }
    }

    fn check(succeeded: bool, min: u32) -> ConnectionCommand {
        ConnectionCommand::RecordHealthCheck(RecordHealthCheck {
            run_id: format!("run-{min}"),
            succeeded,
            reason: (!succeeded).then(|| "401 Unauthorized".into()),
            checked_at: at(min),
        })
    }

    fn given(commands: &[ConnectionCommand]) -> ConnectionState {
        Given::<Connection>::commands(commands).into_state()
    }

    #[test]
    fn establishing_with_a_registered_provider_starts_with_unknown_health() {
        let events =
            Connection::decide(&ConnectionCommand::Establish(establish_cmd()), &ConnectionState::None).unwrap();
        assert!(matches!(&events[..], [ConnectionEvent::ConnectionEstablished(e)] if e.provider_id == "prov-github"));
        let state = Connection::fold(&events);
        assert!(matches!(state, ConnectionState::Active { health: Health::Unknown, .. }));
    }

    #[test]
    fn a_connection_to_an_unknown_provider_is_rejected() {
        let mut cmd = establish_cmd();
        cmd.provider = None;
        Given::<Connection>::events(&[])
            .when(&ConnectionCommand::Establish(cmd))
            .then_rejected(DomainError::UnknownProvider { provider_id: "prov-github".into() });
    }

    #[test]
    fn establishing_twice_is_rejected() {
        let state = given(&[ConnectionCommand::Establish(establish_cmd())]);
        assert!(matches!(
            Connection::decide(&ConnectionCommand::Establish(establish_cmd()), &state),
            Err(DomainError::AlreadyExists { .. })
        ));
    }

    #[test]
    fn secret_references_must_be_kv_refs() {
        let mut cmd = establish_cmd();
        cmd.credential_ref = Some("plaintext-secret".into());
        assert!(
            matches!(Connection::decide(&ConnectionCommand::Establish(cmd), &ConnectionState::None), Err(DomainError::Invalid { field, .. }) if field == "credentialRef")
        );
        let mut cmd = establish_cmd();
        cmd.configuration.insert("webhookSecretRef".into(), json!("s3cr3t"));
        assert!(
            matches!(Connection::decide(&ConnectionCommand::Establish(cmd), &ConnectionState::None), Err(DomainError::Invalid { field, .. }) if field == "configuration.webhookSecretRef")
        );
    }

    #[test]
    fn failures_degrade_then_make_unhealthy_and_a_success_restores() {
        let mut state = given(&[ConnectionCommand::Establish(establish_cmd())]);
        let mut seen = vec![];
        for (i, ok) in [true, false, false, false, true].into_iter().enumerate() {
            let events = Connection::decide(&check(ok, i as u32 + 1), &state).unwrap();
            let [ConnectionEvent::ConnectionHealthChecked(e)] = events.as_slice() else { panic!("{events:?}") };
            seen.push(e.health);
            state = events.iter().fold(state, Connection::evolve);
        }
        assert_eq!(seen, [Health::Healthy, Health::Degraded, Health::Degraded, Health::Unhealthy, Health::Healthy]);
    }

    #[test]
    fn an_outcome_recorded_twice_counts_once() {
        let given = Given::<Connection>::commands(&[ConnectionCommand::Establish(establish_cmd()), check(false, 1)]);
        let state = given.when(&check(false, 1)).then(&[]);
        let events = Connection::decide(&check(false, 2), &state).unwrap();
        assert!(matches!(
            &events[..],
            [ConnectionEvent::ConnectionHealthChecked(ConnectionHealthChecked {
                consecutive_failures: 2,
                reason: Some(_),
                ..
            })]
        ));
    }

    #[test]
    fn a_health_check_of_a_missing_connection_is_rejected() {
        assert!(matches!(
            Connection::decide(&check(true, 1), &ConnectionState::None),
            Err(DomainError::InvalidTransition { .. })
        ));
    }
}
