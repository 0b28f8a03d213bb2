//! Background work that gives way to the API: a [`Pace`] spaces the starts of work nobody waits
//! for (health checks) while the process answers requests, and lets them run at full speed when
//! it does not.
//!
//! Lowering the workers' thread priority is not enough (measured: nice 19 and `SCHED_IDLE`
//! changed nothing): a check's work runs in the moments the API's threads wait for their
//! clients, and the store's writer and the projectors that record each check serve the API as
//! well, so they cannot be deprioritised. Starting fewer checks while requests are in flight is
//! what leaves the cores to the requests.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

/// How often a start waiting for its slot looks again whether the foreground is still busy: it
/// goes at once when it is not.
const RECHECK: Duration = Duration::from_millis(50);

/// Whether the process is busy with work somebody waits for (requests in flight).
pub trait Foreground: Send + Sync {
    fn busy(&self) -> bool;
}

/// Spaces starts `1 / per_second` apart while the [`Foreground`] is busy; unpaced otherwise.
pub struct Pace {
    foreground: Arc<dyn Foreground>,
    spacing: Duration,
    /// The earliest moment the next paced start may take. Waiting starts queue on the lock in
    /// arrival order (tokio's mutex is fair), so only the first of them sleeps, and no slot is
    /// promised ahead: when the foreground goes idle, every waiting start goes within
    /// [`RECHECK`].
    next_slot: Mutex<Instant>,
}

impl std::fmt::Debug for Pace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pace").field("spacing", &self.spacing).finish_non_exhaustive()
    }
}

impl Pace {
    /// Paces to `per_second` starts a second while `foreground` is busy (at least one).
    pub fn new(foreground: Arc<dyn Foreground>, per_second: u32) -> Self {
        let spacing = Duration::from_secs(1) / per_second.max(1);
        Self { foreground, spacing, next_slot: Mutex::new(Instant::now()) }
    }

    /// Waits for this start's turn: at once while the foreground is idle, else until the next
    /// free slot, or until the foreground is idle again.
    pub async fn turn(&self) {
        if !self.foreground.busy() {
            return;
        }
        let mut next_slot = self.next_slot.lock().await;
        loop {
            if !self.foreground.busy() {
                return;
            }
            let now = Instant::now();
            if *next_slot <= now {
                // From now, not from the slot: time spent idle is not saved up for a burst.
                *next_slot = now + self.spacing;
                return;
            }
            tokio::time::sleep_until((*next_slot).min(now + RECHECK)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    struct Switch(AtomicBool);

    impl Foreground for Switch {
        fn busy(&self) -> bool {
            self.0.load(Ordering::Relaxed)
        }
    }

    async fn ten_turns(pace: &Pace) -> Duration {
        let started = Instant::now();
        futures::future::join_all((0..10).map(|_| pace.turn())).await;
        started.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn starts_are_spaced_only_while_the_foreground_is_busy() {
        let switch = Arc::new(Switch(AtomicBool::new(false)));
        let pace = Pace::new(switch.clone(), 100);

        assert_eq!(ten_turns(&pace).await, Duration::ZERO, "idle: no waiting");

        switch.0.store(true, Ordering::Relaxed);
        // Ten concurrent starts at 100/s: the first at once, the last 90 ms later.
        assert_eq!(ten_turns(&pace).await, Duration::from_millis(90));

        // Time spent idle is not saved up: after a pause, starts are spaced again from now.
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(ten_turns(&pace).await, Duration::from_millis(90));

        switch.0.store(false, Ordering::Relaxed);
        assert_eq!(ten_turns(&pace).await, Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_starts_go_soon_after_the_foreground_goes_idle() {
        let switch = Arc::new(Switch(AtomicBool::new(true)));
        // One start a second: a thousand waiting starts would take 17 minutes while busy.
        let pace = Arc::new(Pace::new(switch.clone(), 1));
        let started = Instant::now();
        let waiting = tokio::spawn({
            let pace = pace.clone();
            async move { futures::future::join_all((0..1000).map(|_| pace.turn())).await }
        });
        tokio::time::sleep(Duration::from_millis(2500)).await;
        switch.0.store(false, Ordering::Relaxed);
        waiting.await.unwrap();
        assert!(started.elapsed() <= Duration::from_millis(2500) + RECHECK, "{:?}", started.elapsed());
    }
}
