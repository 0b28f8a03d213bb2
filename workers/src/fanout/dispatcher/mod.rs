//! The dispatcher: a due queue of webhook runs rebuilt from the store, one lane per
//! subscription, and the attempts themselves.
//!
//! One task owns all scheduling state (no locks): it takes the store's events from a follower
//! task, the outcomes of attempts and lease answers from the tasks it started, and wakes for the
//! next due time. Each attempt runs in its own task, so a slow endpoint holds only its own
//! lane's slots.
//!
//! A lane's attempts are made under the lane's lease (the `Leases` port, named after the
//! subscription), not one per run: of several dispatchers over one store only the holder
//! starts a lane's attempts, so its in-flight limit, rate and strict order hold across them,
//! and an attempt costs one append, its outcome (`RecordAttempt`), instead of a start and an
//! outcome. An attempt only starts while the lease outlasts its whole budget (send and record),
//! so a lease taken over after its holder died never overlaps an attempt of the holder.
//!
//! Times that are recorded or compared with recorded ones (due times, lease expiries, an
//! attempt's start and end) come from the `Clock` port, the commands' clock; waiting uses
//! tokio's monotonic clock.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use commands::{CommandContext, Commands};
use connectors::egress::{EgressError, check_webhook_endpoint, webhook_client};
use connectors::outbound_webhooks::{self, OutboundRequest, Verdict};
use domain::backoff::Backoff;
use domain::ids::stream_id;
use domain::outbound::DELIVER_WEBHOOK_OPERATION;
use domain::run::{AttemptOutcome, AttemptResponse, RecordAttempt, Run, RunCommand, RunEvent, RunState};
use domain::secret_ref::SecretRef;
use domain::subscription::{SubscriptionEvent, WebhookSubscriptionCreated};
use domain::{Actor, AnyEvent, Decider, EventEnvelope};
use serde_json::{Value, json};
use store::{EventStore, Lease, Leases, SecretStore, StoreError, Vaults};
use thiserror::Error;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::handler::{Message, is_publishable, matched_message, message_of};
use super::{Directory, WebhookSettings};

mod attempt;
mod follow;
mod schedule;
#[cfg(test)]
mod tests;
mod timing;

use attempt::*;
use follow::*;
use schedule::*;
use timing::*;

/// The longest the scheduler sleeps without looking again.
pub(super) const MAX_IDLE: Duration = Duration::from_secs(1);
/// Events read from the store at once.
pub(super) const FOLLOW_PAGE: usize = 1000;
/// Before trying again a run whose attempt could not be started or recorded.
pub(super) const RECHECK: Duration = Duration::from_secs(1);
/// The first and longest pause of a lane whose endpoint is overloaded (429, 502, 503, 504).
pub(super) const FIRST_SLOW_DOWN: Duration = Duration::from_secs(1);
pub(super) const MAX_SLOW_DOWN: Duration = Duration::from_secs(60);
/// The longest an attempt leaves for recording its outcome before its lease expires: half the
/// lease's grace, at most this.
pub(super) const MAX_RECORD_MARGIN: Duration = Duration::from_secs(5);
/// The shortest send worth trying (or a quarter of the attempt timeout when that is shorter).
pub(super) const MIN_SEND: Duration = Duration::from_secs(1);
/// Message events kept from following the store, so an attempt finds its message without
/// reading it back (a backlog larger than this reads the rest from the store).
pub(super) const RECENT_MESSAGES: usize = 8_192;
/// The shortest wait before asking again for a lane's lease another worker holds.
pub(super) const MIN_LEASE_RETRY: Duration = Duration::from_millis(100);

#[derive(Debug, Error)]
pub enum DispatcherError {
    #[error("the store follower stopped")]
    FollowerStopped,
}

/// The state shared with attempt tasks.
pub(super) struct Shared {
    pub(super) store: Arc<dyn EventStore>,
    pub(super) leases: Arc<dyn Leases>,
    pub(super) commands: Commands,
    /// Signing secrets are read only on a subscription's tenant's behalf.
    pub(super) vault: Vaults,
    pub(super) client: reqwest::Client,
    pub(super) settings: WebhookSettings,
    pub(super) directory: Arc<Directory>,
    /// The latest message events the follower saw, by event id.
    pub(super) recent_messages: quick_cache::sync::Cache<uuid::Uuid, EventEnvelope>,
}

/// The webhook dispatcher. [`Dispatcher::run`] until shutdown.
pub struct Dispatcher {
    pub(super) shared: Arc<Shared>,
}

impl Dispatcher {
    /// `leases` must be shared by every dispatcher over `store`: a lane's lease says which of
    /// them delivers its messages.
    pub fn new(
        store: Arc<dyn EventStore>,
        leases: Arc<dyn Leases>,
        commands: Commands,
        vault: Arc<dyn SecretStore>,
        settings: WebhookSettings,
    ) -> Result<Self, EgressError> {
        let client = webhook_client(settings.allow.clone(), settings.attempt_timeout)?;
        let directory = Directory::new();
        let recent_messages = quick_cache::sync::Cache::new(RECENT_MESSAGES);
        let vault = Vaults::new(vault);
        let shared = Shared { store, leases, commands, vault, client, settings, directory, recent_messages };
        Ok(Self { shared: Arc::new(shared) })
    }

    /// The subscription directory this dispatcher keeps current, for the [`crate::fanout::FanOut`].
    pub fn directory(&self) -> Arc<Directory> {
        self.shared.directory.clone()
    }

    /// Follows the store and delivers until `shutdown`. Attempts in flight then are left to
    /// their leases: the next dispatcher takes them over once the leases expire.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), DispatcherError> {
        let (followed_tx, mut followed_rx) = mpsc::channel(4);
        let follower = tokio::spawn(follow(self.shared.clone(), followed_tx, shutdown.child_token()));
        let (done_tx, mut done_rx) = mpsc::channel(self.shared.settings.max_in_flight_total + 16);
        let (leased_tx, mut leased_rx) = mpsc::channel(64);
        let mut schedule = Schedule::new(self.shared.clone(), done_tx, leased_tx);
        let mut caught_up = false;
        loop {
            let wake = schedule.next_wake();
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                Some(done) = done_rx.recv() => schedule.finished(done),
                Some(answer) = leased_rx.recv() => schedule.leased(answer),
                followed = followed_rx.recv() => match followed {
                    Some(Followed::Events(seen)) => seen.into_iter().for_each(|seen| schedule.take(seen)),
                    Some(Followed::Redelivered(history)) => schedule.restore(&history),
                    Some(Followed::CaughtUp) => {
                        tracing::info!(pending = schedule.runs.len(), "webhook dispatcher caught up with the store");
                        caught_up = true;
                    }
                    None => {
                        follower.abort();
                        return if shutdown.is_cancelled() { Ok(()) } else { Err(DispatcherError::FollowerStopped) };
                    }
                },
                () = tokio::time::sleep_until(wake) => {}
            }
            // Before the start-up replay is done, a run may look pending that ended later.
            if caught_up {
                schedule.start_due();
            }
        }
        follower.abort();
        schedule.release_leases().await;
        Ok(())
    }
}
