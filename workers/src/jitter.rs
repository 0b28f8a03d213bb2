//! The one jitter every retry schedule of the workers spreads its waits with, so attempts that
//! failed together do not retry together: runs' backoff ([`crate::executor::backoff_with_jitter`])
//! and webhook deliveries' schedule ([`crate::fanout::WebhookSettings::next_delay`]) alike.

use std::time::Duration;

/// `wait` with a random share of it added or taken off: uniform in
/// `[wait × (1 − share), wait × (1 + share)]` (`share` 0.2: ±20%; above 1 counts as 1).
pub fn jittered(wait: Duration, share: f64) -> Duration {
    let share = share.clamp(0.0, 1.0);
    wait.mul_f64(1.0 - share + 2.0 * share * random_unit())
}

/// A uniform number in `[0, 1)`, from the operating system's random source through a version 4
/// UUID (53 of its 122 random bits).
fn random_unit() -> f64 {
    (uuid::Uuid::new_v4().as_u128() >> 75) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_is_spread_by_its_share_either_way() {
        let wait = Duration::from_millis(1000);
        let waits: Vec<Duration> = (0..200).map(|_| jittered(wait, 0.2)).collect();
        assert!(waits.iter().all(|w| (Duration::from_millis(800)..=Duration::from_millis(1200)).contains(w)));
        assert!(waits.iter().any(|w| *w < wait) && waits.iter().any(|w| *w > wait), "both ways: {waits:?}");
        assert_eq!(jittered(wait, 0.0), wait);
        assert!(jittered(wait, 7.0) <= Duration::from_millis(2000), "a share above 1 counts as 1");
    }
}
