//! How many requests the server is answering right now and when the last one came, for
//! background work that gives way to the API (the workers' health-check pace reads it).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;

/// The requests in flight and when the last one came; clones share one count.
#[derive(Debug, Clone)]
pub struct InFlight(Arc<Counts>);

#[derive(Debug)]
struct Counts {
    in_flight: AtomicUsize,
    /// When the latest request came, in ms since `since`.
    last_arrival_ms: AtomicU64,
    since: Instant,
}

impl Default for InFlight {
    fn default() -> Self {
        Self(Arc::new(Counts {
            in_flight: AtomicUsize::new(0),
            last_arrival_ms: AtomicU64::new(0),
            since: Instant::now(),
        }))
    }
}

impl InFlight {
    pub fn count(&self) -> usize {
        self.0.in_flight.load(Ordering::Relaxed)
    }

    /// Whether a request is being answered or one came within `window`. A fast request (a `GET`
    /// answered in tens of microseconds) is in flight for a small part of its round trip, so a
    /// server busy with them often has none in flight at the instant it is asked.
    pub fn active_within(&self, window: Duration) -> bool {
        let now_ms = u64::try_from(self.0.since.elapsed().as_millis()).unwrap_or(u64::MAX);
        let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
        self.count() > 0 || now_ms.saturating_sub(self.0.last_arrival_ms.load(Ordering::Relaxed)) <= window_ms
    }

    /// Counts one request until the returned guard drops (also when the client goes away and
    /// the request's future is dropped mid-way).
    fn enter(&self) -> Entered<'_> {
        let now_ms = u64::try_from(self.0.since.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.0.last_arrival_ms.store(now_ms, Ordering::Relaxed);
        self.0.in_flight.fetch_add(1, Ordering::Relaxed);
        Entered(&self.0.in_flight)
    }
}

struct Entered<'a>(&'a AtomicUsize);

impl Drop for Entered<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Middleware: counts the request while it is answered.
pub async fn count_in_flight(State(in_flight): State<InFlight>, request: Request, next: Next) -> Response {
    let _entered = in_flight.enter();
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use axum::Router;
    use axum::body::Body;
    use axum::routing::get;
    use tower::ServiceExt;

    use super::*;

    #[tokio::test]
    async fn a_request_is_counted_while_it_is_answered_and_not_after() {
        let in_flight = InFlight::default();
        let (entered_tx, entered_rx) = tokio::sync::oneshot::channel::<()>();
        let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
        let slot = Arc::new(std::sync::Mutex::new(Some((entered_tx, release_rx))));
        let app = Router::new()
            .route(
                "/",
                get(move || async move {
                    let (entered, release) = slot.lock().unwrap().take().unwrap();
                    entered.send(()).unwrap();
                    release.await.unwrap();
                    "done"
                }),
            )
            .layer(axum::middleware::from_fn_with_state(in_flight.clone(), count_in_flight));

        let answered = tokio::spawn(app.oneshot(Request::get("/").body(Body::empty()).unwrap()));
        entered_rx.await.unwrap();
        assert_eq!(in_flight.count(), 1);
        release_tx.send(()).unwrap();
        answered.await.unwrap().unwrap();
        assert_eq!(in_flight.count(), 0);

        // A request whose client went away (its future dropped mid-way) is not counted forever.
        let stuck = Router::new()
            .route("/", get(std::future::pending::<&str>))
            .layer(axum::middleware::from_fn_with_state(in_flight.clone(), count_in_flight));
        let abandoned = tokio::spawn(stuck.oneshot(Request::get("/").body(Body::empty()).unwrap()));
        while in_flight.count() == 0 {
            tokio::task::yield_now().await;
        }
        abandoned.abort();
        let _ = abandoned.await;
        assert_eq!(in_flight.count(), 0);
        // None in flight, but one came a moment ago.
        assert!(in_flight.active_within(Duration::from_secs(60)));
        std::thread::sleep(Duration::from_millis(20));
        assert!(!in_flight.active_within(Duration::from_millis(5)));
    }

    #[test]
    fn a_server_that_has_had_no_request_is_not_active() {
        let in_flight = InFlight::default();
        std::thread::sleep(Duration::from_millis(20));
        assert!(!in_flight.active_within(Duration::from_millis(5)));
    }
}
