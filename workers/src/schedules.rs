//! Work that falls due with time, derived from the event history: the periodic health checks of
//! every connection, and the retirement of a credential's previous version once its overlap
//! after a promotion is over.
//!
//! The scheduler reads the store from the start at every process start (so nothing it owes is
//! lost to a restart) and then follows new events. What it requests is deduplicated by ids and
//! idempotent commands, so several workers running it at once request each check once:
//!
//! - Time is cut into slots of the check interval, shifted per connection by a stable offset
//!   (its jitter, so connections are not all checked at the same moment). The check of slot N
//!   is the run [`health_check_run_id`]`(tenant, connection, N)`.
//! - Retirements are kept per version: a second rotation within the overlap adds its own, and
//!   the first one's version is retired by that promotion (`Superseded`), which removes it here.
//!   Retiring a version that is no longer previous does nothing.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use commands::{CommandContext, CommandError, Commands};
use connectors::operations::CHECK_HEALTH;
use domain::connection::ConnectionEvent;
use domain::credential::CredentialEvent;
use domain::{AggregateEvent, AnyEvent, EventEnvelope};
use futures::StreamExt;
use serde_json::json;
use sha2::{Digest, Sha256};
use store::{EventStore, StoreError};
use tokio_util::sync::CancellationToken;

use crate::pace::Pace;
use crate::process_manager::health_check_run_id;

const SCHEDULER: &str = "scheduler";
/// How often due work is looked for.
const TICK: Duration = Duration::from_secs(1);

/// When things fall due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScheduleSettings {
    /// Between two health checks of a connection; `None` checks only when it is established.
    pub health_check_interval: Option<Duration>,
    /// How long the previous version of a credential stays valid after a promotion.
    pub credential_overlap: Duration,
}

/// The connections checked periodically, each as the position of the event that established
/// it and the moment its next slot starts: 16 bytes a connection, however many there are. The
/// rest a check needs (tenant, connection, the context of its commands, caused by that event)
/// is read back from the event when the check falls due, once an interval; kept in memory, it
/// cost about 40 times as much for every connection the engine ever established. A tick looks
/// at the due ones only, so its cost does not grow with the number of connections.
#[derive(Default)]
struct HealthChecks {
    /// (when the next slot starts in ms since the epoch, the establishing event's position),
    /// earliest first; one entry per connection.
    due: BinaryHeap<Reverse<(i64, u64)>>,
}

impl HealthChecks {
    fn track(&mut self, tenant: &str, connection_id: &str, position: u64, at: DateTime<Utc>, interval_ms: i64) {
        let offset_ms = offset_ms(tenant, connection_id, interval_ms);
        // Established within a slot: the check at establishment covers that slot.
        let next = slot_start(slot(offset_ms, interval_ms, at) + 1, offset_ms, interval_ms);
        self.due.push(Reverse((next, position)));
    }
}

/// A previous version due for retirement.
struct Retirement {
    rotated: EventEnvelope,
    credential_id: String,
    version: u32,
    due: DateTime<Utc>,
}

/// The retirements owed, by tenant, credential and version: one per version that became
/// previous, so a later rotation never hides an earlier one's.
type Retirements = BTreeMap<(String, String, u32), Retirement>;

/// Runs the schedules until `shutdown`.
pub async fn run_schedules(
    store: Arc<dyn EventStore>,
    commands: Commands,
    settings: ScheduleSettings,
    pace: Option<Arc<Pace>>,
    shutdown: CancellationToken,
) -> Result<(), StoreError> {
    let mut events = Box::pin(store::subscribe(store.clone(), 0));
    let mut checked = HealthChecks::default();
    let mut retirements: Retirements = BTreeMap::new();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            next = events.next() => match next {
                None => return Ok(()),
                Some(event) => track(event?, &settings, &mut checked, &mut retirements),
            },
            _ = tick.tick() => {
                let now = commands.now();
                if let Some(interval) = settings.health_check_interval {
                    check_due_connections(store.as_ref(), &commands, interval, now, pace.as_deref(), &mut checked).await;
                }
                retire_due_versions(&commands, now, &mut retirements).await;
            }
        }
    }
}

fn track(event: EventEnvelope, settings: &ScheduleSettings, checked: &mut HealthChecks, retirements: &mut Retirements) {
    if !matches!(event.event_type.as_str(), "ConnectionEstablished" | "CredentialRotated" | "CredentialVersionRetired")
    {
        return;
    }
    let Ok(decoded) = AnyEvent::decode(&event.event_type, event.schema_version, &event.data) else { return };
    let tenant = event.tenant_id.clone();
    match decoded {
        AnyEvent::Connection(ConnectionEvent::ConnectionEstablished(e)) => {
            if let Some(interval) = settings.health_check_interval {
                let interval_ms = interval_ms(interval);
                checked.track(&tenant, &e.connection_id, event.global_position, e.established_at, interval_ms);
            }
        }
        AnyEvent::Credential(CredentialEvent::CredentialRotated(e)) => {
            let due = e.rotated_at + TimeDelta::from_std(settings.credential_overlap).unwrap_or(TimeDelta::MAX);
            let retirement =
                Retirement { rotated: event, credential_id: e.credential_id.clone(), version: e.previous_version, due };
            retirements.insert((tenant, e.credential_id, e.previous_version), retirement);
        }
        AnyEvent::Credential(CredentialEvent::CredentialVersionRetired(e)) => {
            retirements.remove(&(tenant, e.credential_id, e.version));
        }
        _ => {}
    }
}

fn interval_ms(interval: Duration) -> i64 {
    i64::try_from(interval.as_millis()).unwrap_or(i64::MAX).max(1)
}

/// The slot `at` falls in for a connection with this offset: time since the epoch, shifted by
/// the offset, in whole intervals.
fn slot(offset_ms: i64, interval_ms: i64, at: DateTime<Utc>) -> i64 {
    (at.timestamp_millis() - offset_ms).div_euclid(interval_ms)
}

/// When `slot` starts, in ms since the epoch.
fn slot_start(slot: i64, offset_ms: i64, interval_ms: i64) -> i64 {
    slot.saturating_mul(interval_ms).saturating_add(offset_ms)
}

/// A stable offset in `[0, interval)` from the connection's id: its jitter.
fn offset_ms(tenant: &str, connection_id: &str, interval_ms: i64) -> i64 {
    let digest = Sha256::digest(format!("{tenant}/{connection_id}").as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    i64::try_from(u64::from_be_bytes(first) % interval_ms.unsigned_abs()).unwrap_or(0)
}

/// Requests the check of every connection whose next slot has started.
async fn check_due_connections(
    store: &dyn EventStore,
    commands: &Commands,
    interval: Duration,
    now: DateTime<Utc>,
    pace: Option<&Pace>,
    checks: &mut HealthChecks,
) {
    let interval_ms = interval_ms(interval);
    let now_ms = now.timestamp_millis();
    let mut retry = Vec::new();
    while let Some(&Reverse((due_ms, position))) = checks.due.peek()
        && due_ms <= now_ms
    {
        checks.due.pop();
        let (event, connection_id) = match established_at(store, position).await {
            Ok(Some(established)) => established,
            Ok(None) => {
                tracing::error!(position, "no connection was established at this position; its checks stop");
                continue;
            }
            Err(error) => {
                tracing::warn!(position, %error, "cannot read the connection to check; tried again");
                retry.push(Reverse((due_ms_after_tick(now_ms), position)));
                continue;
            }
        };
        let offset_ms = offset_ms(&event.tenant_id, &connection_id, interval_ms);
        let current = slot(offset_ms, interval_ms, now);
        let ctx = CommandContext::caused_by(&event, SCHEDULER);
        let run_id = health_check_run_id(&event.tenant_id, &connection_id, &current.to_string());
        if let Some(pace) = pace {
            pace.turn().await;
        }
        match commands.request_run(&ctx, &run_id, &connection_id, CHECK_HEALTH, json!({})).await {
            Ok(_) => {
                tracing::debug!(%connection_id, %run_id, "periodic health check requested");
                checks.due.push(Reverse((slot_start(current + 1, offset_ms, interval_ms), position)));
            }
            Err(error) => {
                tracing::warn!(%connection_id, %error, "cannot request a health check");
                retry.push(Reverse((due_ms_after_tick(now_ms), position)));
            }
        }
    }
    // Tried again at the next tick.
    checks.due.extend(retry);
}

/// The `ConnectionEstablished` at `position` and the connection's id; `None` if the event there
/// is something else.
async fn established_at(store: &dyn EventStore, position: u64) -> Result<Option<(EventEnvelope, String)>, StoreError> {
    let Some(event) = store.read_all(position - 1, 1).await?.into_iter().next() else { return Ok(None) };
    if event.global_position != position {
        return Ok(None);
    }
    match ConnectionEvent::decode(&event.event_type, event.schema_version, &event.data) {
        Ok(ConnectionEvent::ConnectionEstablished(e)) => Ok(Some((event, e.connection_id))),
        _ => Ok(None),
    }
}

fn due_ms_after_tick(now_ms: i64) -> i64 {
    now_ms.saturating_add(i64::try_from(TICK.as_millis()).unwrap_or(i64::MAX))
}

async fn retire_due_versions(commands: &Commands, now: DateTime<Utc>, retirements: &mut Retirements) {
    let due: Vec<(String, String, u32)> =
        retirements.iter().filter(|(_, r)| r.due <= now).map(|(key, _)| key.clone()).collect();
    for key in due {
        let Some(r) = retirements.get(&key) else { continue };
        let ctx = CommandContext::caused_by(&r.rotated, SCHEDULER);
        match commands.retire_previous_credential_version(&ctx, &r.credential_id, r.version).await {
            Ok(_) => {
                tracing::info!(credential_id = %r.credential_id, version = r.version, "previous version retired");
                retirements.remove(&key);
            }
            Err(CommandError::Rejected(error)) => {
                tracing::warn!(credential_id = %r.credential_id, %error, "the previous version cannot be retired");
                retirements.remove(&key);
            }
            Err(error) => {
                tracing::warn!(credential_id = %r.credential_id, %error, "cannot retire the previous version yet")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_advance_once_per_interval_with_a_per_connection_offset() {
        let interval = 60_000;
        let t0 = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let offset = offset_ms("t", "conn-1", interval);
        let s0 = slot(offset, interval, t0);
        assert_eq!(slot(offset, interval, t0 + TimeDelta::seconds(60)), s0 + 1);
        assert_eq!(slot(offset, interval, t0 + TimeDelta::seconds(120)), s0 + 2);
        // A slot starts at its own start, and not a millisecond before.
        let start = slot_start(s0 + 1, offset, interval);
        assert_eq!(slot(offset, interval, DateTime::from_timestamp_millis(start).unwrap()), s0 + 1);
        assert_eq!(slot(offset, interval, DateTime::from_timestamp_millis(start - 1).unwrap()), s0);
        let offsets: std::collections::HashSet<i64> =
            (0..20).map(|i| offset_ms("t", &format!("conn-{i}"), 60_000)).collect();
        assert!(offsets.len() > 10, "connections are spread over the interval");
        assert!(offsets.iter().all(|o| (0..60_000).contains(o)));
    }

    /// A history written before promotions retired the superseded version themselves: two
    /// promotions within one overlap. Each previous version is owed its own retirement.
    #[tokio::test]
    async fn every_previous_version_is_retired_when_two_rotations_fall_within_one_overlap() {
        use commands::{CommandContext, SystemClock};
        use domain::credential::{CredentialRegistered, CredentialRotated, RetirementReason};
        use domain::provider::AuthModel;
        use domain::secret_ref::SecretRef;
        use domain::{Actor, AggregateEvent};
        use store::{ExpectedVersion, MasterKey, SecretStore, SqliteEventStore, SqliteVault};

        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn EventStore> = Arc::new(SqliteEventStore::open(&dir.path().join("events.db")).unwrap());
        let vault = Arc::new(SqliteVault::open(&dir.path().join("vault.db"), MasterKey::generate().unwrap()).unwrap());
        let secret = SecretRef::parse("kv://factory/hook").unwrap();
        vault.claim("factory", &store::VaultOwner::Tenant("connectsoft".into())).await.unwrap();
        for value in [&b"one"[..], b"two", b"three"] {
            vault.put(&secret, value, None).await.unwrap();
        }
        let commands = Commands::new(store.clone(), vault.clone(), Arc::new(SystemClock));
        let ctx = CommandContext::new("connectsoft", "trace-1", Actor { subject: "user-1".into(), client_id: None });
        let now = Utc::now();
        let rotated = |version, previous_version| {
            CredentialEvent::CredentialRotated(CredentialRotated {
                credential_id: "cred-hook".into(),
                version,
                previous_version,
                verification_run_id: None,
                rotated_at: now,
            })
        };
        let history = [
            CredentialEvent::CredentialRegistered(CredentialRegistered {
                credential_id: "cred-hook".into(),
                tenant_id: "connectsoft".into(),
                secret_ref: secret.clone(),
                current_version: 1,
                auth_kind: AuthModel::HmacSignature,
                connection_id: "conn-1".into(),
                registered_at: now,
            }),
            rotated(2, 1),
            rotated(3, 2),
        ];
        let stream = domain::ids::stream_id("connectsoft", "cred-hook");
        let events = history.iter().map(|e| ctx.new_event(e.encode(), now)).collect();
        store.append(&stream, ExpectedVersion::NoStream, events).await.unwrap();

        let settings = ScheduleSettings { health_check_interval: None, credential_overlap: Duration::ZERO };
        let shutdown = CancellationToken::new();
        let schedules = tokio::spawn(run_schedules(store.clone(), commands, settings, None, shutdown.clone()));
        let mut retired = Vec::new();
        for _ in 0..100 {
            retired = store
                .read_stream(&stream)
                .await
                .unwrap()
                .into_iter()
                .filter(|e| e.event_type == "CredentialVersionRetired")
                .map(|e| (e.data["version"].as_u64().unwrap(), e.data["reason"].clone()))
                .collect::<Vec<_>>();
            if retired.len() >= 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        shutdown.cancel();
        schedules.await.unwrap().unwrap();
        retired.sort_by_key(|(version, _)| *version);
        let reason = |r| serde_json::to_value(r).unwrap();
        assert_eq!(
            retired,
            [(1, reason(RetirementReason::Superseded)), (2, reason(RetirementReason::OverlapEnded))],
            "both previous versions are retired, once"
        );
        assert_eq!(vault.metadata(&secret).await.unwrap().unwrap().previous_version, None);
    }
}
