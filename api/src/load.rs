//! How many requests the server is answering right now, for background work that gives way to
//! the API (the workers' health-check pace reads it).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;

/// The number of requests in flight; clones share one count.
#[derive(Debug, Clone, Default)]
pub struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    pub fn count(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }

    /// Counts one request until the returned guard drops (also when the client goes away and
    /// the request's future is dropped mid-way).
    fn enter(&self) -> Entered<'_> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Entered(&self.0)
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
            .route("/", get(|| std::future::pending::<&str>()))
            .layer(axum::middleware::from_fn_with_state(in_flight.clone(), count_in_flight));
        let abandoned = tokio::spawn(stuck.oneshot(Request::get("/").body(Body::empty()).unwrap()));
        while in_flight.count() == 0 {
            tokio::task::yield_now().await;
        }
        abandoned.abort();
        let _ = abandoned.await;
        assert_eq!(in_flight.count(), 0);
    }
}
