//! The manager's HTTP server: hyper driven directly (rather than `axum::serve`) so
//! that slow or idle clients cannot hold connections — and file descriptors —
//! forever. Three limits apply, all from `[manager]` in the configuration:
//!
//! - `header_read_timeout_ms` (default 10 s): a connection waiting for a request —
//!   its first, or the next one on a kept-alive connection — must deliver the whole
//!   request head within this time, counted from when the wait began; otherwise it
//!   is closed. A client that connects and sends nothing, or sends half a head, is
//!   cut off; so is a kept-alive connection left idle.
//! - `body_read_timeout_ms` (default 60 s): while a request body is being read, some
//!   of it must arrive at least this often; a stalled body ends the request with
//!   408 and the connection is closed.
//! - `max_pending_connections` (default 1024): at most this many connections may be
//!   open that have not yet delivered their first complete request head — the only
//!   ones an anonymous client can open without doing anything; further connections
//!   are closed as soon as they are accepted. Connections that have sent a request
//!   do not count (their idle time is bounded by the header timeout), so a flood of
//!   silent connections cannot take the descriptors that working clients need, and
//!   the cap is global rather than per address so that clients behind one proxy or
//!   NAT are not refused for being many.
//!
//! Neither timeout applies while a response is being produced or streamed (SSE, a
//! slow handler) or after a WebSocket upgrade.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::Service as _;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Sleep;

/// Limits of the manager's connections (see the module documentation).
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
    pub max_pending_connections: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(60),
            max_pending_connections: 1024,
        }
    }
}

/// Serves `app` on `listener` until `shutdown` becomes true, then stops accepting
/// and lets open connections finish their current requests (the caller bounds how
/// long it waits).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ServerLimits,
    mut shutdown: watch::Receiver<bool>,
) {
    let pending = Arc::new(AtomicUsize::new(0));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of descriptors, usually: wait instead of spinning.
                        tracing::warn!(error = %e, "manager accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Some(slot) = PendingSlot::take(&pending, limits.max_pending_connections) else {
                    tracing::debug!(%peer, limit = limits.max_pending_connections,
                        "too many connections without a request yet; closing this one");
                    drop(stream);
                    continue;
                };
                let _ = stream.set_nodelay(true);
                conns.spawn(connection(stream, peer, app.clone(), limits, slot, stop_rx.clone()));
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            _ = async { let _ = shutdown.wait_for(|down| *down).await; } => break,
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    while conns.join_next().await.is_some() {}
}

/// One place among the connections that have not sent a request yet; given back
/// when dropped.
struct PendingSlot(Arc<AtomicUsize>);

impl PendingSlot {
    fn take(count: &Arc<AtomicUsize>, max: usize) -> Option<Self> {
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| PendingSlot(count.clone()))
    }
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What the connection's reader needs to know about its requests.
struct ConnState {
    /// Requests received whose response has not been sent completely.
    in_flight: AtomicUsize,
    /// Requests received so far: a deadline armed before the last of them belongs
    /// to an earlier wait and no longer applies.
    started: AtomicU64,
    /// Switched protocols (WebSocket): HTTP timeouts no longer apply.
    upgraded: AtomicBool,
    /// Held until the first request head is complete.
    pending: Mutex<Option<PendingSlot>>,
}

impl ConnState {
    /// Waiting for a request head: nothing in flight and still speaking HTTP.
    fn waiting_for_head(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0 && !self.upgraded.load(Ordering::Acquire)
    }
}

/// Counts a request as in flight until its response body is done or dropped.
struct InFlight(Arc<ConnState>);

impl InFlight {
    fn start(state: &Arc<ConnState>) -> Self {
        state.in_flight.fetch_add(1, Ordering::AcqRel);
        state.started.fetch_add(1, Ordering::AcqRel);
        // A complete head: this connection is no longer an anonymous idle one.
        if let Ok(mut slot) = state.pending.lock() {
            slot.take();
        }
        InFlight(state.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    limits: ServerLimits,
    slot: PendingSlot,
    mut stop: watch::Receiver<bool>,
) {
    let state = Arc::new(ConnState {
        in_flight: AtomicUsize::new(0),
        started: AtomicU64::new(0),
        upgraded: AtomicBool::new(false),
        pending: Mutex::new(Some(slot)),
    });
    let io = HeadDeadlineIo {
        inner: stream,
        state: state.clone(),
        limit: limits.header_read_timeout,
        deadline: None,
    };
    let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        let guard = InFlight::start(&state);
        req.extensions_mut().insert(ConnectInfo(peer));
        let req = req.map(|b| {
            axum::body::Body::new(IdleTimeoutBody {
                inner: b,
                limit: limits.body_read_timeout,
                sleep: None,
            })
        });
        let app = TowerToHyperService::new(app.clone());
        async move {
            let resp = match app.call(req).await {
                Ok(r) => r,
                Err(never) => match never {},
            };
            if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
                guard.0.upgraded.store(true, Ordering::Release);
            }
            Ok::<_, Infallible>(resp.map(|inner| TrackedBody {
                inner,
                _guard: guard,
            }))
        }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        res = conn.as_mut() => {
            if let Err(e) = res {
                tracing::debug!(%peer, error = %e, "manager connection ended with an error");
            }
        }
        _ = async { let _ = stop.wait_for(|s| *s).await; } => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// The connection's socket, cut off when a request head does not arrive in time:
/// while the connection waits for a head, the time since the wait began is
/// bounded; bytes arriving do not extend it (a head sent a byte at a time is as
/// slow as none).
struct HeadDeadlineIo {
    inner: TcpStream,
    state: Arc<ConnState>,
    limit: Duration,
    /// The deadline of the current wait, with the request count when it began.
    deadline: Option<(u64, Pin<Box<Sleep>>)>,
}

impl AsyncRead for HeadDeadlineIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if let Poll::Ready(r) = Pin::new(&mut self.inner).poll_read(cx, buf) {
            return Poll::Ready(r);
        }
        if !self.state.waiting_for_head() {
            // A request is being served: the wait for the next head starts later.
            self.deadline = None;
            return Poll::Pending;
        }
        let limit = self.limit;
        let generation = self.state.started.load(Ordering::Acquire);
        if self
            .deadline
            .as_ref()
            .is_some_and(|(g, _)| *g != generation)
        {
            self.deadline = None;
        }
        let (_, deadline) = self
            .deadline
            .get_or_insert_with(|| (generation, Box::pin(tokio::time::sleep(limit))));
        match deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no complete request head within {} ms", limit.as_millis()),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncWrite for HeadDeadlineIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The error of a request body whose client stopped sending it.
#[derive(Debug)]
pub struct BodyReadTimeout(pub Duration);

impl std::fmt::Display for BodyReadTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the client sent no request body data for {} ms",
            self.0.as_millis()
        )
    }
}

impl std::error::Error for BodyReadTimeout {}

/// Whether an error (or one of its causes) is a [`BodyReadTimeout`].
pub fn is_body_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.is::<BodyReadTimeout>() {
            return true;
        }
        cur = err.source();
    }
    false
}

/// A request body that fails when no data arrives for `limit` while it is read.
struct IdleTimeoutBody {
    inner: Incoming,
    limit: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl Body for IdleTimeoutBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                self.sleep = None;
                Poll::Ready(frame.map(|r| r.map_err(Into::into)))
            }
            Poll::Pending => {
                let limit = self.limit;
                let sleep = self
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyReadTimeout(limit))))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that keeps its request counted as in flight until it is done.
struct TrackedBody {
    inner: axum::body::Body,
    _guard: InFlight,
}

impl Body for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
