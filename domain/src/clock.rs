//! The clock port: where every crate's `now` comes from, so tests can fix it. The deciders never
//! read it (`now` arrives inside their commands); the edges that stamp, sign or expire things
//! do, through a [`Clock`] they were given.

use chrono::{DateTime, SubsecRound, Utc};

/// Where `now` comes from; tests pass a fixed clock.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;
}

/// The system clock, truncated to milliseconds so stored times round-trip through every format.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now().trunc_subsecs(3)
    }
}

/// A clock that always shows one instant: tests that must know every time a command stamps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixedClock(pub DateTime<Utc>);

impl Clock for FixedClock {
    fn now(&self) -> DateTime<Utc> {
        self.0
    }
}
