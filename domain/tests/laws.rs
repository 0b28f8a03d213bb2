//! Laws every aggregate keeps, checked on random command sequences: events decode to what was
//! encoded, and a history read back from storage folds to the same state as the original.

use chrono::{DateTime, Utc};
use domain::credential::{Credential, CredentialCommand, LinkConnection, StartRotation};
use domain::provider::AuthModel;
use domain::run::{FailAttempt, RequestRun, Run, RunCommand, StartAttempt};
use domain::secret_ref::SecretRef;
use domain::{AggregateEvent, AnyEvent, Decider};
use proptest::prelude::*;
use serde_json::json;

fn at(seconds: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(seconds, 0).unwrap()
}

fn run_command(kind: u8, n: i64) -> RunCommand {
    let run_id = "run-1".to_string();
    match kind % 5 {
        0 => RunCommand::Request(RequestRun {
            run_id,
            tenant_id: "t".into(),
            connection_id: "conn-1".into(),
            operation: "OpenPullRequest".into(),
            input: json!({ "n": n }),
            trace_id: "trace-1".into(),
            requested_at: at(n),
        }),
        1 => RunCommand::StartAttempt(StartAttempt {
            run_id,
            worker_id: format!("worker-{}", n % 2),
            started_at: at(n),
            lease_expires_at: at(n + 5),
            max_attempts: 3,
        }),
        2 => RunCommand::Complete {
            run_id,
            attempt: (n % 3) as u32 + 1,
            output: json!({ "ok": n }),
            completed_at: at(n),
        },
        3 => RunCommand::FailAttempt(FailAttempt {
            run_id,
            attempt: (n % 3) as u32 + 1,
            error: format!("error {n}"),
            failed_at: at(n),
            next_attempt_at: (n % 2 == 0).then(|| at(n + 1)),
        }),
        _ => RunCommand::Fail { run_id, error: format!("error {n}"), failed_at: at(n) },
    }
}

fn credential_command(kind: u8, n: i64) -> CredentialCommand {
    match kind % 4 {
        0 => CredentialCommand::LinkConnection(LinkConnection {
            credential_id: "cred-name".into(),
            tenant_id: "t".into(),
            secret_ref: SecretRef::parse("kv://v/name").unwrap(),
            current_version: (n % 5) as u32,
            auth_kind: AuthModel::ApiKey,
            connection_id: format!("conn-{}", n % 3),
            at: at(n),
        }),
        1 => CredentialCommand::StartRotation(StartRotation {
            credential_id: "cred-name".into(),
            reason: "Scheduled".into(),
            verification_run_id: format!("run-{}", n % 2),
            new_version: (n % 7) as u32 + 1,
            source: domain::credential::RotationSource::OperatorStaged,
            started_at: at(n),
        }),
        2 => CredentialCommand::CompleteRotation {
            credential_id: "cred-name".into(),
            verification_run_id: format!("run-{}", n % 2),
            rotated_at: at(n),
        },
        _ => CredentialCommand::FailRotation {
            credential_id: "cred-name".into(),
            verification_run_id: format!("run-{}", n % 2),
            reason: "401".into(),
            failed_at: at(n),
        },
    }
}

/// Runs the commands, keeping the events of those that were accepted.
fn history<D: Decider>(commands: impl IntoIterator<Item = D::Command>) -> Vec<D::Event> {
    let mut events = Vec::new();
    let mut state = D::State::default();
    for command in commands {
        if let Ok(new) = D::decide(&command, &state) {
            state = new.iter().fold(state, D::evolve);
            events.extend(new);
        }
    }
    events
}

fn round_trips<E: AggregateEvent + PartialEq + std::fmt::Debug>(events: &[E]) {
    for e in events {
        let stored = e.encode();
        assert_eq!(E::decode(&stored.event_type, stored.schema_version, &stored.data).as_ref(), Ok(e));
        assert!(AnyEvent::decode(&stored.event_type, stored.schema_version, &stored.data).is_ok());
    }
}

/// The history as a reader of the store gets it back: encoded, then decoded.
fn decoded<E: AggregateEvent>(events: &[E]) -> Vec<E> {
    events
        .iter()
        .map(|e| {
            let s = e.encode();
            E::decode(&s.event_type, s.schema_version, &s.data).expect("decodes")
        })
        .collect()
}

proptest! {
    #[test]
    fn run_events_round_trip_and_fold_the_same_once_stored(steps in prop::collection::vec((any::<u8>(), 0i64..1_000_000), 0..30)) {
        let events = history::<Run>(steps.iter().map(|(k, n)| run_command(*k, *n)));
        round_trips(&events);
        prop_assert_eq!(Run::fold(&decoded(&events)), Run::fold(&events));
    }

    #[test]
    fn credential_events_round_trip_and_fold_the_same_once_stored(steps in prop::collection::vec((any::<u8>(), 0i64..1_000_000), 0..30)) {
        let events = history::<Credential>(steps.iter().map(|(k, n)| credential_command(*k, *n)));
        round_trips(&events);
        prop_assert_eq!(Credential::fold(&decoded(&events)), Credential::fold(&events));
    }
}
