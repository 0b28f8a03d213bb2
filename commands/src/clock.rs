use chrono::{DateTime, SubsecRound, Utc};

/// Where `now` comes from; tests pass a fixed clock.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;
}

/// The system clock, truncated to milliseconds so stored times round-trip through every format.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now().trunc_subsecs(3)
    }
}
