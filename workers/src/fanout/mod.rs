//! Outbound webhook fan-out: every published message reaches every subscription it matches,
//! signed, retried on a durable schedule, and recorded.
//!
//! Two parts, each restartable at any moment without losing or duplicating a dispatch:
//!
//! - [`FanOut`] (an [`EventHandler`](crate::EventHandler) on the event feed, embedded or Kafka):
//!   for each publishable event (a `PlatformEventPublished`, or a normalized event of the
//!   inbound gateway) it requests one `DeliverWebhook` run per subscription that was active and
//!   matched at the event's position in the store. The run id is derived from the tenant, the
//!   subscription and the message, so handling the event again after a crash finds the runs it
//!   created and creates nothing new. The feed's checkpoint moves only after every run exists.
//! - [`Dispatcher`]: follows the store to know every webhook run that has not ended and when
//!   its next attempt is due (the due time is in the events: `RunAttemptFailed.nextAttemptAt`,
//!   a lease's expiry, a redelivery), rebuilt from the store on start. Each subscription has its
//!   own lane (max in flight, rate limit, backoff when the endpoint is overloaded, optional
//!   strict order), so a slow endpoint only ever waits on itself. A lane's attempts are made by
//!   the worker holding the lane's lease (the `Leases` port), so two workers never send to one
//!   subscription at once, and each attempt is one append: its outcome.
//!
//! [`Directory`] is what both share: the subscriptions (with the positions at which they were
//! created and deactivated), followed from the store, and a bounded cache of connections'
//! projects.

mod directory;
mod dispatcher;
mod handler;
pub mod redelivery;

use std::sync::Arc;
use std::time::Duration;

use connectors::egress::EgressAllowList;
pub use directory::Directory;
pub use dispatcher::Dispatcher;
pub use handler::FanOut;
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// The fan-out's consumer name (its checkpoint, its Kafka group `{prefix}.webhook-fanout`).
pub const FANOUT_CONSUMER: &str = "webhook-fanout";
/// Outbound webhook outcomes recorded, by `outcome` (`delivered`, `failed`), in the `metrics` facade.
pub const OUTBOUND_OUTCOMES: &str = "outbound_webhook_outcomes_total";

/// The wait after each failed attempt: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h (so 8
/// attempts, the first at once).
pub const DEFAULT_RETRY_SCHEDULE: [Duration; 7] = [
    Duration::from_secs(5),
    Duration::from_secs(5 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(2 * 3600),
    Duration::from_secs(5 * 3600),
    Duration::from_secs(10 * 3600),
    Duration::from_secs(10 * 3600),
];

/// How the dispatcher delivers.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// Recorded in each attempt's lease.
    pub worker_id: String,
    /// The wait after attempt n fails is `retry_schedule[n-1]` (± `jitter`); its length + 1 is
    /// the number of attempts before the message is dead-lettered.
    pub retry_schedule: Vec<Duration>,
    /// The share of each wait drawn at random either way (0.2: ±20%).
    pub jitter: f64,
    /// Connect, send and read the whole answer within this, or the attempt failed.
    pub attempt_timeout: Duration,
    /// How long a lease outlives the attempt timeout.
    pub lease_grace: Duration,
    /// The longest `Retry-After` honoured; a longer one waits this long.
    pub max_retry_after: Duration,
    /// A subscription whose deliveries fail without a success for this long is deactivated.
    pub disable_after_failing_for: Duration,
    /// How long after a signing secret's rotation the previous version still signs too.
    pub secret_grace: Duration,
    /// Hosts and addresses reachable although not public.
    pub allow: Arc<EgressAllowList>,
    /// Requests in flight across all subscriptions at most.
    pub max_in_flight_total: usize,
}

impl WebhookSettings {
    pub fn new(worker_id: impl Into<String>) -> Self {
        Self {
            worker_id: worker_id.into(),
            retry_schedule: DEFAULT_RETRY_SCHEDULE.to_vec(),
            jitter: 0.2,
            attempt_timeout: Duration::from_secs(15),
            lease_grace: Duration::from_secs(5),
            max_retry_after: Duration::from_secs(3600),
            disable_after_failing_for: Duration::from_secs(5 * 24 * 3600),
            secret_grace: Duration::from_secs(24 * 3600),
            allow: Arc::new(EgressAllowList::default()),
            max_in_flight_total: 1024,
        }
    }

    /// The most one attempt may take, sent and recorded: the attempt timeout and the grace.
    pub fn attempt_budget(&self) -> Duration {
        self.attempt_timeout + self.lease_grace
    }

    /// How long a lane's lease is taken for: twice an attempt's budget, renewed while the lane
    /// has work once a quarter of it has passed, so attempts keep starting under it.
    pub fn lane_lease(&self) -> Duration {
        self.attempt_budget() * 2
    }

    /// Attempts per message before it is dead-lettered.
    pub fn max_attempts(&self) -> u32 {
        u32::try_from(self.retry_schedule.len()).unwrap_or(u32::MAX - 1) + 1
    }

    /// The wait after `failed_attempt` failed, with jitter, no shorter than a `Retry-After`
    /// (bounded by `max_retry_after`); `None` when no attempt is left.
    pub fn next_delay(&self, failed_attempt: u32, retry_after: Option<Duration>) -> Option<Duration> {
        let index = usize::try_from(failed_attempt.checked_sub(1)?).ok()?;
        let base = *self.retry_schedule.get(index)?;
        let jittered = crate::jitter::jittered(base, self.jitter);
        Some(match retry_after {
            Some(asked) => jittered.max(asked.min(self.max_retry_after)),
            None => jittered,
        })
    }
}

/// The run delivering `message_id` to `subscription_id`: `run-` and 32 hex digits of SHA-256
/// over tenant, subscription and message, the same on every worker and every redelivery.
pub fn webhook_run_id(tenant_id: &str, subscription_id: &str, message_id: &str) -> String {
    let digest = Sha256::new()
        .chain_update(b"DeliverWebhook\0")
        .chain_update(tenant_id)
        .chain_update(b"\0")
        .chain_update(subscription_id)
        .chain_update(b"\0")
        .chain_update(message_id)
        .finalize();
    domain::ids::new_id(domain::ids::RUN, Uuid::from_slice(&digest[..16]).unwrap_or_default())
}

/// Reads a retry schedule such as `5s,5m,30m,2h,5h,10h,10h` (units `ms`, `s`, `m`, `h`).
pub fn parse_schedule(text: &str) -> Result<Vec<Duration>, String> {
    text.split(',').map(str::trim).filter(|s| !s.is_empty()).map(parse_duration).collect()
}

/// `250ms`, `5s`, `5m`, `2h`, `5d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().map_err(|_| format!("{text}: expected a number and a unit (ms, s, m, h, d)"))?;
    let seconds = |s: u64| Duration::from_secs(n.saturating_mul(s));
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(seconds(1)),
        "m" => Ok(seconds(60)),
        "h" => Ok(seconds(3600)),
        "d" => Ok(seconds(86_400)),
        _ => Err(format!("{text}: the unit must be ms, s, m, h or d")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_schedule_is_eight_attempts_with_jitter_within_twenty_percent() {
        let settings = WebhookSettings::new("w");
        assert_eq!(settings.max_attempts(), 8);
        for (attempt, base) in [(1, 5), (2, 300), (3, 1800), (4, 7200), (7, 36_000)] {
            let base = Duration::from_secs(base);
            let mut seen = std::collections::HashSet::new();
            for _ in 0..50 {
                let delay = settings.next_delay(attempt, None).unwrap();
                assert!(delay >= base.mul_f64(0.8) && delay <= base.mul_f64(1.2), "{attempt}: {delay:?}");
                seen.insert(delay);
            }
            assert!(seen.len() > 1);
        }
        assert_eq!(settings.next_delay(8, None), None, "no ninth attempt");
    }

    #[test]
    fn retry_after_is_honoured_up_to_its_bound() {
        let settings = WebhookSettings { jitter: 0.0, ..WebhookSettings::new("w") };
        assert_eq!(settings.next_delay(1, Some(Duration::from_secs(60))), Some(Duration::from_secs(60)));
        assert_eq!(settings.next_delay(1, Some(Duration::from_secs(1))), Some(Duration::from_secs(5)));
        assert_eq!(settings.next_delay(1, Some(Duration::from_secs(86_400))), Some(Duration::from_secs(3600)));
    }

    #[test]
    fn schedules_and_run_ids() {
        assert_eq!(
            parse_schedule("250ms, 5s,5m,2h,1d").unwrap(),
            [250, 5_000, 300_000, 7_200_000, 86_400_000].map(Duration::from_millis)
        );
        assert!(parse_schedule("5 parsecs").is_err());
        let id = webhook_run_id("t", "sub-1", "msg-1");
        assert_eq!(id, webhook_run_id("t", "sub-1", "msg-1"));
        assert_ne!(id, webhook_run_id("t", "sub-2", "msg-1"));
        assert_ne!(id, webhook_run_id("u", "sub-1", "msg-1"));
        assert!(domain::ids::has_prefix(&id, "run"));
    }
}
