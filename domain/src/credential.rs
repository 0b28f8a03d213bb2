use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::provider::AuthModel;
use crate::secret_ref::SecretRef;
use crate::{AggregateEvent, Decider, DomainError, ids};

/// The credential id of a vault secret: `cred-{name}` for `kv://{vault}/{name}`.
pub fn credential_id(secret: &SecretRef) -> String {
    format!("{}-{}", ids::CREDENTIAL, secret.name)
}

#[derive(Debug, Clone, PartialEq)]
pub enum CredentialCommand {
    /// A connection names this credential: register it on first use, link it afterwards.
    LinkConnection(LinkConnection),
    StartRotation(StartRotation),
    CompleteRotation {
        credential_id: String,
        rotated_at: DateTime<Utc>,
    },
    FailRotation {
        credential_id: String,
        reason: String,
        failed_at: DateTime<Utc>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct LinkConnection {
    pub tenant_id: String,
    pub secret_ref: SecretRef,
    /// The vault's current version of the secret when the credential is first registered.
    pub current_version: u32,
    pub auth_kind: AuthModel,
    pub connection_id: String,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StartRotation {
    pub credential_id: String,
    pub reason: String,
    pub verification_run_id: String,
    pub started_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialRegistered {
    pub credential_id: String,
    pub tenant_id: String,
    /// The unversioned vault reference, `kv://VAULT/NAME`.
    pub secret_ref: SecretRef,
    pub current_version: u32,
    pub auth_kind: AuthModel,
    pub connection_id: String,
    pub registered_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialLinked {
    pub credential_id: String,
    pub connection_id: String,
    pub linked_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialRotationStarted {
    pub credential_id: String,
    pub from_version: u32,
    pub new_version: u32,
    pub new_version_ref: String,
    pub verification_run_id: String,
    pub reason: String,
    pub started_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialRotated {
    pub credential_id: String,
    pub version: u32,
    pub previous_version: u32,
    pub rotated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialRotationFailed {
    pub credential_id: String,
    pub version: u32,
    pub reason: String,
    pub failed_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", content = "data")]
pub enum CredentialEvent {
    CredentialRegistered(CredentialRegistered),
    CredentialLinked(CredentialLinked),
    CredentialRotationStarted(CredentialRotationStarted),
    CredentialRotated(CredentialRotated),
    CredentialRotationFailed(CredentialRotationFailed),
}

impl AggregateEvent for CredentialEvent {
    const TYPES: &'static [&'static str] = &[
        "CredentialRegistered",
        "CredentialLinked",
        "CredentialRotationStarted",
        "CredentialRotated",
        "CredentialRotationFailed",
    ];

    fn event_type(&self) -> &'static str {
        match self {
            Self::CredentialRegistered(_) => "CredentialRegistered",
            Self::CredentialLinked(_) => "CredentialLinked",
            Self::CredentialRotationStarted(_) => "CredentialRotationStarted",
            Self::CredentialRotated(_) => "CredentialRotated",
            Self::CredentialRotationFailed(_) => "CredentialRotationFailed",
        }
    }
}

/// A rotation as started: the version it verifies and the run that verifies it.
#[derive(Debug, Clone, PartialEq)]
pub struct Rotation {
    pub version: u32,
    pub version_ref: String,
    pub verification_run_id: String,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub enum CredentialState {
    #[default]
    None,
    Registered {
        secret_ref: SecretRef,
        current_version: u32,
        connections: Vec<String>,
        /// The version being verified and its verification run, while a rotation is in flight.
        pending: Option<Rotation>,
        /// Every rotation ever started, oldest first: a retried start is recognised by its run.
        started: Vec<Rotation>,
    },
}

pub struct Credential;

impl Decider for Credential {
    type Command = CredentialCommand;
    type Event = CredentialEvent;
    type State = CredentialState;

    fn decide(command: &CredentialCommand, state: &CredentialState) -> Result<Vec<CredentialEvent>, DomainError> {
        match (command, state) {
            (CredentialCommand::LinkConnection(c), CredentialState::None) => {
                Ok(vec![CredentialEvent::CredentialRegistered(CredentialRegistered {
                    credential_id: credential_id(&c.secret_ref),
                    tenant_id: c.tenant_id.clone(),
                    secret_ref: c.secret_ref.unversioned(),
                    current_version: c.current_version.max(1),
                    auth_kind: c.auth_kind,
                    connection_id: c.connection_id.clone(),
                    registered_at: c.at,
                })])
            }
            (CredentialCommand::LinkConnection(c), CredentialState::Registered { connections, secret_ref, .. }) => {
                // `cred-{name}` names one secret: the same name in another vault is not it.
                if c.secret_ref.unversioned() != *secret_ref {
                    return Err(DomainError::invalid(
                        "credentialRef",
                        format!("{} is already the credential of {secret_ref}", credential_id(&c.secret_ref)),
                    ));
                }
                if connections.contains(&c.connection_id) {
                    return Ok(vec![]);
                }
                Ok(vec![CredentialEvent::CredentialLinked(CredentialLinked {
                    credential_id: credential_id(&c.secret_ref),
                    connection_id: c.connection_id.clone(),
                    linked_at: c.at,
                })])
            }
            (CredentialCommand::StartRotation(c), CredentialState::None) => {
                Err(DomainError::NotFound { kind: "credential", id: c.credential_id.clone() })
            }
            (
                CredentialCommand::StartRotation(c),
                CredentialState::Registered { secret_ref, current_version, pending, started, .. },
            ) => {
                // The same request retried (same verification run), even after that rotation
                // finished: it has already started, so nothing new happens.
                if started.iter().any(|r| r.verification_run_id == c.verification_run_id) {
                    return Ok(vec![]);
                }
                if let Some(p) = pending {
                    return Err(DomainError::RotationInFlight {
                        credential_id: c.credential_id.clone(),
                        pending_version: p.version,
                    });
                }
                if c.reason.trim().is_empty() || c.reason.len() > 256 {
                    return Err(DomainError::invalid("reason", "must be 1 to 256 characters"));
                }
                let new_version = current_version + 1;
                Ok(vec![CredentialEvent::CredentialRotationStarted(CredentialRotationStarted {
                    credential_id: c.credential_id.clone(),
                    from_version: *current_version,
                    new_version,
                    new_version_ref: secret_ref.with_version(new_version).to_string(),
                    verification_run_id: c.verification_run_id.clone(),
                    reason: c.reason.clone(),
                    started_at: c.started_at,
                })])
            }
            (
                CredentialCommand::CompleteRotation { credential_id, rotated_at },
                CredentialState::Registered { current_version, pending: Some(pending), .. },
            ) => Ok(vec![CredentialEvent::CredentialRotated(CredentialRotated {
                credential_id: credential_id.clone(),
                version: pending.version,
                previous_version: *current_version,
                rotated_at: *rotated_at,
            })]),
            (
                CredentialCommand::FailRotation { credential_id, reason, failed_at },
                CredentialState::Registered { pending: Some(pending), .. },
            ) => Ok(vec![CredentialEvent::CredentialRotationFailed(CredentialRotationFailed {
                credential_id: credential_id.clone(),
                version: pending.version,
                reason: reason.clone(),
                failed_at: *failed_at,
            })]),
            (CredentialCommand::CompleteRotation { .. } | CredentialCommand::FailRotation { .. }, _) => {
                Err(DomainError::InvalidTransition {
                    kind: "credential",
                    state: "not rotating".into(),
                    command: "finish rotating",
                })
            }
        }
    }

    fn evolve(state: CredentialState, event: &CredentialEvent) -> CredentialState {
        match (state, event) {
            (_, CredentialEvent::CredentialRegistered(e)) => CredentialState::Registered {
                secret_ref: e.secret_ref.clone(),
                current_version: e.current_version,
                connections: vec![e.connection_id.clone()],
                pending: None,
                started: Vec::new(),
            },
            (CredentialState::Registered { secret_ref, current_version, mut connections, pending, mut started }, e) => {
                match e {
                    CredentialEvent::CredentialRegistered(_) => unreachable!("matched above"),
                    CredentialEvent::CredentialLinked(l) => {
                        connections.push(l.connection_id.clone());
                        CredentialState::Registered { secret_ref, current_version, connections, pending, started }
                    }
                    CredentialEvent::CredentialRotationStarted(s) => {
                        let rotation = Rotation {
                            version: s.new_version,
                            version_ref: s.new_version_ref.clone(),
                            verification_run_id: s.verification_run_id.clone(),
                        };
                        started.push(rotation.clone());
                        CredentialState::Registered {
                            secret_ref,
                            current_version,
                            connections,
                            pending: Some(rotation),
                            started,
                        }
                    }
                    CredentialEvent::CredentialRotated(r) => CredentialState::Registered {
                        secret_ref,
                        current_version: r.version,
                        connections,
                        pending: None,
                        started,
                    },
                    CredentialEvent::CredentialRotationFailed(_) => {
                        CredentialState::Registered { secret_ref, current_version, connections, pending: None, started }
                    }
                }
            }
            (CredentialState::None, _) => CredentialState::None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> SecretRef {
        SecretRef::parse("kv://factory-integration/github-booking").unwrap()
    }
    fn link(conn: &str) -> CredentialCommand {
        CredentialCommand::LinkConnection(LinkConnection {
            tenant_id: "connectsoft".into(),
            secret_ref: secret(),
            current_version: 1,
            auth_kind: AuthModel::OAuth2ClientCredentials,
            connection_id: conn.into(),
            at: DateTime::UNIX_EPOCH,
        })
    }
    fn rotate(run: &str) -> CredentialCommand {
        CredentialCommand::StartRotation(StartRotation {
            credential_id: "cred-github-booking".into(),
            reason: "ScheduledRotation".into(),
            verification_run_id: run.into(),
            started_at: DateTime::UNIX_EPOCH,
        })
    }
    fn complete() -> CredentialCommand {
        CredentialCommand::CompleteRotation {
            credential_id: "cred-github-booking".into(),
            rotated_at: DateTime::UNIX_EPOCH,
        }
    }
    fn fail() -> CredentialCommand {
        CredentialCommand::FailRotation {
            credential_id: "cred-github-booking".into(),
            reason: "401".into(),
            failed_at: DateTime::UNIX_EPOCH,
        }
    }
    fn given_when(given: &[CredentialCommand], when: &CredentialCommand) -> Result<Vec<CredentialEvent>, DomainError> {
        let state = given
            .iter()
            .fold(CredentialState::None, |s, c| Credential::decide(c, &s).unwrap().iter().fold(s, Credential::evolve));
        Credential::decide(when, &state)
    }

    #[test]
    fn the_first_connection_registers_the_credential_and_later_ones_link_to_it() {
        let first = given_when(&[], &link("conn-1")).unwrap();
        assert!(
            matches!(&first[..], [CredentialEvent::CredentialRegistered(r)] if r.credential_id == "cred-github-booking")
        );
        assert!(matches!(
            &given_when(&[link("conn-1")], &link("conn-2")).unwrap()[..],
            [CredentialEvent::CredentialLinked(_)]
        ));
        assert_eq!(given_when(&[link("conn-1")], &link("conn-1")).unwrap(), vec![]);
    }

    #[test]
    fn the_same_name_in_another_vault_is_not_linked() {
        let mut other = link("conn-2");
        if let CredentialCommand::LinkConnection(l) = &mut other {
            l.secret_ref = SecretRef::parse("kv://another-vault/github-booking").unwrap();
        }
        assert!(
            matches!(given_when(&[link("conn-1")], &other), Err(DomainError::Invalid { field, .. }) if field == "credentialRef")
        );
    }

    #[test]
    fn rotation_starts_at_the_next_version() {
        let events = given_when(&[link("conn-1")], &rotate("run-9")).unwrap();
        let [CredentialEvent::CredentialRotationStarted(s)] = &events[..] else { panic!("{events:?}") };
        assert_eq!(s.new_version_ref, "kv://factory-integration/github-booking?version=2");
        assert_eq!((s.from_version, s.new_version), (1, 2));
    }

    #[test]
    fn a_rotation_while_one_is_in_flight_is_rejected() {
        assert_eq!(
            given_when(&[link("conn-1"), rotate("run-1")], &rotate("run-2")),
            Err(DomainError::RotationInFlight { credential_id: "cred-github-booking".into(), pending_version: 2 })
        );
    }

    #[test]
    fn the_same_rotation_retried_starts_nothing_new() {
        assert_eq!(given_when(&[link("conn-1"), rotate("run-1")], &rotate("run-1")), Ok(vec![]));
    }

    #[test]
    fn a_rotation_retried_after_it_finished_starts_nothing_new() {
        assert_eq!(given_when(&[link("conn-1"), rotate("run-1"), complete()], &rotate("run-1")), Ok(vec![]));
        assert_eq!(given_when(&[link("conn-1"), rotate("run-1"), fail()], &rotate("run-1")), Ok(vec![]));
    }

    #[test]
    fn completing_promotes_and_failing_keeps_the_current_version() {
        let done = given_when(&[link("conn-1"), rotate("run-1")], &complete()).unwrap();
        assert!(matches!(
            &done[..],
            [CredentialEvent::CredentialRotated(CredentialRotated { version: 2, previous_version: 1, .. })]
        ));
        let next = given_when(&[link("conn-1"), rotate("run-1"), complete()], &rotate("run-2")).unwrap();
        assert!(matches!(
            &next[..],
            [CredentialEvent::CredentialRotationStarted(CredentialRotationStarted { new_version: 3, .. })]
        ));
        let after_failure = given_when(&[link("conn-1"), rotate("run-1"), fail()], &rotate("run-2")).unwrap();
        assert!(matches!(
            &after_failure[..],
            [CredentialEvent::CredentialRotationStarted(CredentialRotationStarted { new_version: 2, .. })]
        ));
    }

    #[test]
    fn rotating_an_unknown_credential_or_finishing_without_a_rotation_is_rejected() {
        assert!(matches!(given_when(&[], &rotate("run-1")), Err(DomainError::NotFound { .. })));
        assert!(matches!(given_when(&[link("conn-1")], &complete()), Err(DomainError::InvalidTransition { .. })));
        assert!(matches!(given_when(&[link("conn-1")], &fail()), Err(DomainError::InvalidTransition { .. })));
    }

    #[test]
    fn an_empty_reason_is_rejected() {
        let blank = CredentialCommand::StartRotation(StartRotation {
            credential_id: "cred-github-booking".into(),
            reason: " ".into(),
            verification_run_id: "run-1".into(),
            started_at: DateTime::UNIX_EPOCH,
        });
        assert!(matches!(given_when(&[link("conn-1")], &blank), Err(DomainError::Invalid { .. })));
    }
}
