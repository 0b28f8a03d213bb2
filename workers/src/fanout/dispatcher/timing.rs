//! The dispatcher's time arithmetic: lease names and margins, send budgets, pauses.

use super::*;

/// The lease of a subscription's lane, in the [`Leases`] shared by every dispatcher.
pub(super) fn lane_lease_name((tenant_id, subscription_id): &LaneKey) -> String {
    format!("webhook-lane/{tenant_id}/{subscription_id}")
}

/// What an attempt keeps of its lease for recording its outcome.
pub(super) fn record_margin(lease_grace: Duration) -> Duration {
    (lease_grace / 2).min(MAX_RECORD_MARGIN)
}

/// The send timeout of an attempt that must end by `deadline`: the attempt timeout or what is
/// left, whichever is shorter; `None` when what is left is too short to be worth sending.
pub(super) fn send_timeout(deadline: Instant, now: Instant, attempt_timeout: Duration) -> Option<Duration> {
    let left = deadline.saturating_duration_since(now);
    (left >= MIN_SEND.min(attempt_timeout / 4)).then(|| left.min(attempt_timeout))
}

pub(super) fn delta(duration: Duration) -> TimeDelta {
    TimeDelta::from_std(duration).unwrap_or(TimeDelta::MAX)
}

pub(super) async fn pause(delay: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        () = shutdown.cancelled() => false,
        () = tokio::time::sleep(delay) => true,
    }
}
