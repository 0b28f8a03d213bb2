//! The HTTP server under the router: it accepts connections up to a cap and takes back the
//! slots of clients that hold one without using it.
//!
//! A connection is closed when the headers of a request do not arrive within
//! [`ServerLimits::header_read_timeout`] of its first byte (or of the connection, for its first
//! request), and when it stays idle (no request in flight, no byte of the next one) for
//! [`ServerLimits::idle_timeout`]. An HTTP/2 connection carries frames that are no request
//! (pings, window updates, settings), so on one only the idle timeout applies, counted from its
//! last request. The connection's watchdog looks at these deadlines when they come and at
//! least every header timeout, so a connection is closed at most one header timeout late, and
//! requests cost it no wakeup. A request body must arrive whole within
//! [`ServerLimits::body_read_timeout`] of its headers, or reading it fails with [`BodyTimedOut`]
//! (408). These are totals, not gaps between bytes: a client trickling a
//! byte at a time gets no longer than one sending nothing. At the cap, new connections wait in
//! the listen backlog until a slot frees.
//!
//! Over TLS ([`crate::tls`]) the handshake comes first and must end within the header timeout
//! of the connection; HTTP/2 or HTTP/1.1 is chosen by ALPN, and everything above applies to
//! the decrypted stream.
//!
//! hyper refuses what it cannot parse (a malformed request line, a URI or headers too long)
//! with a bare answer of its own before any service runs: an error status with no body and no
//! `content-type`, which no answer of the router has (every error of ours is a problem
//! document). The socket ([`Watched`]) writes those as problem documents with a trace id.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::response::Response;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::Service;

/// How long clients may take, and how many connections are open at once.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    /// From the first byte of a request to the end of its headers.
    pub header_read_timeout: Duration,
    /// From the end of a request's headers to the end of its body.
    pub body_read_timeout: Duration,
    /// How long a connection may wait, open, for its first or next request.
    pub idle_timeout: Duration,
    /// Connections open at once; more wait to be accepted.
    pub max_connections: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_connections: 4096,
        }
    }
}

/// Serves `router` on `listener` (over TLS when `tls` is given) until `stop` is cancelled, then
/// lets the requests in flight finish (idle connections close at once) and returns when every
/// connection has ended.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServerLimits,
    tls: Option<Arc<ServerConfig>>,
    stop: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let connections = TaskTracker::new();
    let builder = auto::Builder::new(TokioExecutor::new());
    let tls = tls.map(TlsAcceptor::from);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            () = stop.cancelled() => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of descriptors or memory for a moment (or a connection reset before
                    // it was accepted): wait a little rather than spin.
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stop.cancelled() => break,
        };
        let connection = Connection { router: router.clone(), limits, stop: stop.clone(), _slot: slot };
        connections.spawn(connection.accept(stream, tls.clone(), builder.clone()));
    }
    // New clients are refused at once rather than left in the backlog while the rest drains.
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// One accepted connection and the slot it holds until it ends.
struct Connection {
    router: Router,
    limits: ServerLimits,
    stop: CancellationToken,
    _slot: OwnedSemaphorePermit,
}

impl Connection {
    /// Shakes hands first when serving TLS: the handshake is the first thing a client sends,
    /// so it has the header timeout, counted from the connection on.
    async fn accept(self, stream: TcpStream, tls: Option<TlsAcceptor>, builder: auto::Builder<TokioExecutor>) {
        let _ = stream.set_nodelay(true);
        let opened = Instant::now();
        let Some(tls) = tls else { return self.serve(stream, opened, builder).await };
        let handshake = tokio::select! {
            shaken = tokio::time::timeout(self.limits.header_read_timeout, tls.accept(stream)) => shaken,
            () = self.stop.cancelled() => return,
        };
        match handshake {
            Ok(Ok(stream)) => self.serve(stream, opened, builder).await,
            // Plain HTTP on the TLS port, an unknown CA, a client gone: the client's doing.
            Ok(Err(error)) => tracing::debug!(%error, "TLS handshake failed"),
            Err(_) => tracing::debug!("TLS handshake timed out"),
        }
    }

    async fn serve<S>(self, stream: S, opened: Instant, builder: auto::Builder<TokioExecutor>)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let activity = Arc::new(Activity::new(opened));
        let io = TokioIo::new(Watched { inner: stream, activity: activity.clone(), refusal: None });
        let service =
            Tracked { router: self.router, activity: activity.clone(), body_timeout: self.limits.body_read_timeout };
        let mut connection = pin!(builder.serve_connection_with_upgrades(io, TowerToHyperService::new(service)));
        // The watchdog looks at the connection when its deadline comes, and at least every
        // header timeout, so that a phase that began since (a request's first byte) is seen
        // in time without waking it on every request: a deadline is kept within one header
        // timeout.
        let mut check = pin!(tokio::time::sleep(self.limits.header_read_timeout));
        let mut stopping = false;
        loop {
            tokio::select! {
                // Errors are the client's doing (a reset, a malformed request hyper answered).
                _ = connection.as_mut() => return,
                () = check.as_mut() => {
                    let now = Instant::now();
                    let deadline = activity.deadline(&self.limits);
                    if deadline.is_some_and(|deadline| deadline <= now) {
                        // Dropping the connection closes the socket.
                        return;
                    }
                    let next = now + self.limits.header_read_timeout;
                    check.as_mut().reset(deadline.map_or(next, |deadline| deadline.min(next)));
                }
                () = self.stop.cancelled(), if !stopping => {
                    stopping = true;
                    connection.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// What a connection is doing, for the deadline that applies to it.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Open since then, nothing read yet: its first request is due within the header timeout.
    Opened(Instant),
    /// Waiting for a request since then (open, or the last one answered).
    Idle(Instant),
    /// The first bytes of a request came then; its headers have not ended.
    ReadingHead(Instant),
    /// Requests in flight: their bodies have deadlines of their own, and handlers take what
    /// they take.
    Busy(usize),
}

struct Activity {
    phase: Mutex<Phase>,
    /// Set on the first read when it is the HTTP/2 preface.
    multiplexed: std::sync::atomic::AtomicBool,
}

impl Activity {
    fn new(opened: Instant) -> Self {
        Self { phase: Mutex::new(Phase::Opened(opened)), multiplexed: std::sync::atomic::AtomicBool::new(false) }
    }

    fn phase(&self) -> std::sync::MutexGuard<'_, Phase> {
        self.phase.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn deadline(&self, limits: &ServerLimits) -> Option<Instant> {
        match *self.phase() {
            Phase::Opened(since) => Some(since + limits.header_read_timeout),
            Phase::Idle(since) => Some(since + limits.idle_timeout),
            Phase::ReadingHead(since) => Some(since + limits.header_read_timeout),
            Phase::Busy(_) => None,
        }
    }

    /// `bytes` arrived: on an idle HTTP/1 connection, the start of a request.
    fn read_some(&self, bytes: &[u8]) {
        use std::sync::atomic::Ordering::Relaxed;
        let mut phase = self.phase();
        match *phase {
            Phase::Opened(since) => {
                if bytes.starts_with(b"PRI * HTTP/2.0") {
                    self.multiplexed.store(true, Relaxed);
                    *phase = Phase::Idle(since);
                } else {
                    *phase = Phase::ReadingHead(since);
                }
            }
            Phase::Idle(_) if !self.multiplexed.load(Relaxed) => {
                *phase = Phase::ReadingHead(Instant::now());
            }
            _ => {}
        }
    }

    fn is_multiplexed(&self) -> bool {
        self.multiplexed.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn request_started(&self) {
        let mut phase = self.phase();
        *phase = match *phase {
            Phase::Busy(requests) => Phase::Busy(requests + 1),
            _ => Phase::Busy(1),
        };
    }

    fn request_ended(&self) {
        let mut phase = self.phase();
        *phase = match *phase {
            Phase::Busy(requests) if requests > 1 => Phase::Busy(requests - 1),
            _ => Phase::Idle(Instant::now()),
        };
    }
}

/// The socket, telling its connection's [`Activity`] when bytes arrive, and answering hyper's
/// own refusals as problem documents.
struct Watched<S> {
    inner: S,
    activity: Arc<Activity>,
    /// The problem document that replaces hyper's refusal, and how much of it is written.
    refusal: Option<(Vec<u8>, usize)>,
}

impl<S: AsyncWrite + Unpin> Watched<S> {
    /// Writes what is left of the refusal; hyper's own bytes are swallowed meanwhile.
    fn poll_refusal(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some((bytes, written)) = &mut self.refusal else { return Poll::Ready(Ok(())) };
        while *written < bytes.len() {
            match Pin::new(&mut self.inner).poll_write(cx, &bytes[*written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => *written += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// hyper's own refusal in `written` (an error status line whose head has no `content-type`) as
/// a problem document that closes the connection; `None` for anything else.
fn refusal_as_problem(written: &[u8]) -> Option<Vec<u8>> {
    let line = written.strip_prefix(b"HTTP/1.1 ").or_else(|| written.strip_prefix(b"HTTP/1.0 "))?;
    if !matches!(line.first(), Some(b'4' | b'5')) {
        return None;
    }
    let head_end = written.windows(4).position(|w| w == b"\r\n\r\n")?;
    if written[..head_end].to_ascii_lowercase().windows(14).any(|w| w == b"\ncontent-type:") {
        return None;
    }
    let status = std::str::from_utf8(line.get(..3)?).ok()?.parse::<u16>().ok()?;
    let status = axum::http::StatusCode::from_u16(status).ok()?;
    let title = status.canonical_reason().unwrap_or("Bad request");
    let detail = match status.as_u16() {
        414 => "the request's URI is too long",
        431 => "the request's headers are too large",
        _ => "the request could not be read as HTTP",
    };
    let problem = crate::problem::Problem::new(status, "unreadable-request", title, detail);
    let body = serde_json::to_vec(&problem).ok()?;
    let head = format!(
        "HTTP/1.1 {} {title}\r\ncontent-type: {}\r\ncontent-length: {}\r\n{}: {}\r\nconnection: close\r\n\r\n",
        status.as_u16(),
        crate::problem::PROBLEM_JSON,
        body.len(),
        crate::trace::TRACE_ID_HEADER,
        problem.trace_id,
    );
    Some([head.into_bytes(), body].concat())
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(read, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.activity.read_some(&buf.filled()[before..]);
        }
        read
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.refusal.is_none() && !this.activity.is_multiplexed() {
            this.refusal = refusal_as_problem(buf).map(|problem| (problem, 0));
        }
        if this.refusal.is_some() {
            // Written in place of hyper's bytes, which are taken as written.
            return this.poll_refusal(cx).map_ok(|()| buf.len());
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Poll::Ready(Err(e)) = this.poll_refusal(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let first = bufs.iter().find(|b| !b.is_empty()).map_or(&[][..], |b| &**b);
        if this.refusal.is_none() && !this.activity.is_multiplexed() {
            this.refusal = refusal_as_problem(first).map(|problem| (problem, 0));
        }
        if this.refusal.is_some() {
            // hyper's refusal is one head: the buffers after it are taken as written with it.
            let all = bufs.iter().map(|b| b.len()).sum();
            return this.poll_refusal(cx).map_ok(|()| all);
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The router, counting the connection's requests in flight and giving each body its deadline.
#[derive(Clone)]
struct Tracked {
    router: Router,
    activity: Arc<Activity>,
    body_timeout: Duration,
}

impl Service<Request<Incoming>> for Tracked {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Incoming>) -> Self::Future {
        let in_flight = InFlight::start(self.activity.clone());
        let deadline = Instant::now() + self.body_timeout;
        let request = request.map(|body| axum::body::Body::new(DeadlineBody { body, deadline, sleep: None }));
        let answer = self.router.call(request);
        Box::pin(async move {
            let response = answer.await;
            drop(in_flight);
            response
        })
    }
}

/// A request in flight on its connection, until dropped (answered, or abandoned).
struct InFlight(Arc<Activity>);

impl InFlight {
    fn start(activity: Arc<Activity>) -> Self {
        activity.request_started();
        Self(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_ended();
    }
}

/// Reading a request body failed: it had not ended by its deadline.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within the body read timeout")]
pub struct BodyTimedOut;

/// Whether `error`, or an error it wraps, is [`BodyTimedOut`].
pub fn is_body_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if error.is::<BodyTimedOut>() {
            return true;
        }
        cause = error.source();
    }
    false
}

/// A request body that must end by `deadline`. The timer starts only when the body is not
/// ready at once, so bodies that are (most, and every empty one) cost none.
struct DeadlineBody {
    body: Incoming,
    deadline: Instant,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl Body for DeadlineBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.body).poll_frame(cx) {
            return Poll::Ready(frame.map(|frame| frame.map_err(Into::into)));
        }
        let sleep = this.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(this.deadline)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTimedOut)))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hypers_bare_refusals_become_problem_documents_and_nothing_else_does() {
        let refusal = refusal_as_problem(b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\r\n")
            .expect("a bare refusal");
        let text = String::from_utf8(refusal).unwrap();
        assert!(text.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"), "{text}");
        assert!(text.contains("content-type: application/problem+json\r\n") && text.contains("x-trace-id: trace-"));
        assert!(text.contains("connection: close") && text.contains(r#""status":431"#), "{text}");

        let ours = b"HTTP/1.1 404 Not Found\r\ncontent-type: application/problem+json\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(refusal_as_problem(ours), None);
        assert_eq!(refusal_as_problem(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"), None);
        assert_eq!(refusal_as_problem(b"HTTP/1.1 400 Bad Request\r\ncontent-le"), None, "an unfinished head");
        assert_eq!(refusal_as_problem(b"\x00\x00\x12\x04"), None, "an HTTP/2 frame");
    }
}
