//! Keep-alive connections to one upstream target, reused across requests.
//!
//! Two kinds of connection share a pool's target:
//! - Requests without a body (the common case: GET, HEAD, DELETE…) go through
//!   [`Pool::send_bodyless`] on a connection the gateway drives itself, inside the
//!   task of the request it serves: the request head is written as bytes, the
//!   response head parsed with [`fleetgate_core::h1`], and the body read straight
//!   off the socket as the client's connection asks for it. No connection task,
//!   no channel, no copy of the header map. That HTTP/1.1 client is the `client`
//!   module.
//! - Requests with a body and WebSocket upgrades use a `hyper::client::conn::http1`
//!   sender whose connection task runs on the worker that opened it, since their
//!   request and response can be in flight at once.
//!
//! Either kind goes back to the pool when its response body has been read to the
//! end; a response abandoned half-way closes its connection instead, since the
//! stream position is unknown. Idle connections are kept per gateway worker (see
//! [`set_worker`]): a socket is registered with the runtime of the worker that
//! opened it, and a worker reusing another's would have that runtime wake it for
//! every read; one list per worker also keeps workers from taking one lock. A request that could not be sent on a reused
//! connection (the upstream had just closed it) is sent on another one; a
//! bodyless request whose reused connection closed before any byte of an answer is
//! sent again only when its method is idempotent.
//!
//! How `https://` targets are spoken to (roots, verification) is the `tls` module.

mod client;
mod tls;

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use http::header;
use http::{Request, Response};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

pub(crate) use client::poll_fill;
use client::{asks_close, Conn, ExchangeError, Io, Sender};
pub use client::{idempotent, materialize, PooledBody, RawHead, StreamBody, Tracked};
pub use tls::{client_config, UpstreamTls};

use crate::upstream::UpstreamBody;

/// Why a request could not be exchanged with the target.
#[derive(Debug)]
pub enum SendError {
    /// No connection could be opened: nothing was sent.
    Connect(String),
    /// The exchange failed after the request was (at least partly) sent.
    Failed(BoxError),
    /// No response head came within the request timeout.
    TimedOut,
}

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Connect(m) => write!(f, "connect: {m}"),
            SendError::Failed(e) => write!(f, "{e}"),
            SendError::TimedOut => write!(f, "no response in time"),
        }
    }
}

/// How many idle lists a pool keeps: one for threads that are not gateway workers
/// (health checks, tests, the manager's runtime) and one per CPU for the workers.
fn shard_count() -> usize {
    static SHARDS: OnceLock<usize> = OnceLock::new();
    *SHARDS.get_or_init(|| 1 + std::thread::available_parallelism().map_or(1, |n| n.get().min(64)))
}

thread_local! {
    /// The idle list this thread uses: 0 unless [`set_worker`] said otherwise.
    static SHARD: Cell<usize> = const { Cell::new(0) };
}

/// Makes the calling thread gateway worker `index`: it keeps its own idle
/// connections in every pool (workers beyond one per CPU share lists).
pub fn set_worker(index: usize) {
    let workers = shard_count() - 1;
    SHARD.with(|s| s.set(1 + index % workers));
}

/// One idle list, on a cache line of its own so workers do not write each other's.
#[repr(align(64))]
#[derive(Default)]
struct IdleList(Mutex<Vec<(Conn, Instant)>>);

/// The idle connections to one target and how to open new ones.
pub struct Pool {
    host: String,
    port: u16,
    tls: Option<UpstreamTls>,
    /// Idle connections of each worker (see [`set_worker`]), most recently used last.
    idle_conns: Box<[IdleList]>,
    max_idle: usize,
    idle_timeout: Duration,
    connect_timeout: Duration,
    /// The longest pause between two reads of a response body.
    read_timeout: Duration,
    /// The longest a write of a request body may stall.
    send_timeout: Duration,
}

impl Pool {
    pub fn new(
        authority: &http::uri::Authority,
        tls: Option<UpstreamTls>,
        connect_timeout: Duration,
        idle_timeout: Duration,
        read_timeout: Duration,
        send_timeout: Duration,
    ) -> Arc<Self> {
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        Arc::new(Self {
            port: authority
                .port_u16()
                .unwrap_or(if tls.is_some() { 443 } else { 80 }),
            host,
            tls,
            idle_conns: (0..shard_count()).map(|_| IdleList::default()).collect(),
            max_idle: 1024,
            idle_timeout,
            connect_timeout,
            read_timeout,
            send_timeout,
        })
    }

    /// Opens a TCP connection (and TLS session) to the target.
    async fn open(&self) -> Result<Io, SendError> {
        let stream = tokio::time::timeout(
            self.connect_timeout,
            TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        .map_err(|_| {
            SendError::Connect(format!(
                "connecting to {}:{} timed out",
                self.host, self.port
            ))
        })?
        .map_err(|e| SendError::Connect(format!("{}:{}: {e}", self.host, self.port)))?;
        let _ = stream.set_nodelay(true);
        let Some(tls) = &self.tls else {
            return Ok(Io::Tcp(stream));
        };
        let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
        let stream = tokio::time::timeout(
            self.connect_timeout,
            connector.connect(tls.server_name.clone(), stream),
        )
        .await
        .map_err(|_| {
            SendError::Connect(format!(
                "TLS handshake with {}:{} timed out",
                self.host, self.port
            ))
        })?
        .map_err(|e| {
            SendError::Connect(format!(
                "TLS handshake with {}:{}: {e}",
                self.host, self.port
            ))
        })?;
        Ok(Io::Tls(Box::new(stream)))
    }

    /// Hands a pooled (or new) connection to hyper's HTTP/1 client for one request.
    /// Its connection task gives the socket back to the pool once the exchange
    /// ended cleanly (`clean` set by the response body), unless the request asks to
    /// upgrade: an upgraded connection belongs to the upgrade.
    async fn handshake(
        self: &Arc<Self>,
        conn: Conn,
        upgrade: bool,
        clean: Arc<AtomicBool>,
        sent: Arc<AtomicBool>,
    ) -> Result<Sender, SendError> {
        // An upstream that stops reading the request body is cut after the send timeout.
        let io = crate::stall::WriteStall::new(conn.io, self.send_timeout);
        let (sender, hyper_conn) = http1::Builder::new()
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| {
                SendError::Connect(format!(
                    "HTTP handshake with {}:{}: {e}",
                    self.host, self.port
                ))
            })?;
        if upgrade {
            tokio::spawn(async move {
                let _ = hyper_conn.with_upgrades().await;
            });
        } else {
            let pool = Arc::downgrade(self);
            tokio::spawn(async move {
                let Ok(parts) = hyper_conn.without_shutdown().await else {
                    return;
                };
                // Reusable only when the request went out whole and the response was
                // read to its end on a connection both sides keep open.
                if clean.load(Ordering::Acquire)
                    && sent.load(Ordering::Acquire)
                    && parts.read_buf.is_empty()
                {
                    if let Some(pool) = pool.upgrade() {
                        pool.put_conn(Conn::new(parts.io.into_inner().into_inner()));
                    }
                }
            });
        }
        Ok(sender)
    }

    /// Sends `req` (one with a body, or an upgrade) through hyper's client on a pooled
    /// connection or a new one, and returns the response with a body that gives the
    /// connection back when read to the end.
    pub async fn send(
        self: &Arc<Self>,
        req: Request<UpstreamBody>,
    ) -> Result<Response<PooledBody>, SendError> {
        let upgrade = req.headers().contains_key(header::UPGRADE);
        let close_asked = asks_close(req.headers());
        let sent = Arc::new(AtomicBool::new(false));
        let mut req = req.map(|inner| Tracked::new(inner, sent.clone()));
        loop {
            let (conn, reused) = match self.checkout_conn() {
                Some(c) => (c, true),
                None => (Conn::new(self.open().await?), false),
            };
            let clean = Arc::new(AtomicBool::new(false));
            let mut sender = self
                .handshake(conn, upgrade, clean.clone(), sent.clone())
                .await?;
            if sender.ready().await.is_err() {
                if reused {
                    continue;
                }
                return Err(SendError::Connect(format!(
                    "{}:{} closed the connection",
                    self.host, self.port
                )));
            }
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    // Content-Length beside Transfer-Encoding: the upstream's framing
                    // is in doubt (RFC 9112 §6.3), so its connection is not reused.
                    let both_lengths = resp.headers().contains_key(header::TRANSFER_ENCODING)
                        && resp.headers().contains_key(header::CONTENT_LENGTH);
                    let keep_alive = !close_asked
                        && !both_lengths
                        && resp.version() == http::Version::HTTP_11
                        && !asks_close(resp.headers());
                    // A connection either side closes never goes back: its body's end
                    // sets a flag the connection task does not look at.
                    let flag = if keep_alive {
                        clean
                    } else {
                        Arc::new(AtomicBool::new(false))
                    };
                    let (parts, body) = resp.into_parts();
                    return Ok(Response::from_parts(
                        parts,
                        PooledBody::Hyper {
                            inner: crate::stall::StallBody::new(
                                body,
                                self.read_timeout,
                                "the upstream",
                            ),
                            ret: Some((sender, flag)),
                        },
                    ));
                }
                Err(mut e) => match e.take_message() {
                    // Never sent: a reused connection closed under us; try another.
                    Some(unsent) if reused => req = unsent,
                    _ => return Err(SendError::Failed(e.into_error().into())),
                },
            }
        }
    }

    /// This thread's idle list.
    #[inline]
    fn idle(&self) -> &Mutex<Vec<(Conn, Instant)>> {
        // Every pool has `shard_count()` lists and `set_worker` stays below that.
        &self.idle_conns[SHARD.with(Cell::get)].0
    }

    fn checkout_conn(&self) -> Option<Conn> {
        let mut idle = self.idle().lock().unwrap_or_else(|p| p.into_inner());
        while let Some((conn, since)) = idle.pop() {
            if since.elapsed() < self.idle_timeout && !conn.io.touched_while_idle() {
                return Some(conn);
            }
        }
        None
    }

    fn put_conn(&self, conn: Conn) {
        // Bytes after a complete response mean the stream is out of step.
        if !conn.buf.is_empty() {
            return;
        }
        let mut idle = self.idle().lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < self.max_idle {
            idle.push((conn, Instant::now()));
        }
    }

    /// Sends a request without a body, written out in full in `head` (request line,
    /// headers, blank line), on a pooled connection or a new one. `head_request`: the
    /// method is HEAD (the answer has no body); `idempotent`: it may be sent again
    /// when a reused connection closes without answering; `timeout`: how long the
    /// upstream has, once connected, to take the request and answer with a head.
    pub async fn send_bodyless(
        self: &Arc<Self>,
        head: &[u8],
        head_request: bool,
        idempotent: bool,
        timeout: Duration,
    ) -> Result<Response<PooledBody>, SendError> {
        let deadline = Instant::now() + timeout;
        loop {
            let (mut conn, reused) = match self.checkout_conn() {
                Some(c) => (c, true),
                None => (Conn::new(self.open().await?), false),
            };
            match conn.exchange(head, head_request, deadline).await {
                Ok(parsed) => {
                    return client::response(self, conn, parsed).map_err(SendError::Failed)
                }
                Err(ExchangeError::Write(_)) if reused => continue,
                Err(ExchangeError::Closed) if reused && idempotent => continue,
                Err(ExchangeError::Write(e)) => return Err(SendError::Failed(e.into())),
                Err(ExchangeError::Closed) => {
                    return Err(SendError::Failed(
                        format!(
                            "{}:{} closed the connection without answering",
                            self.host, self.port
                        )
                        .into(),
                    ))
                }
                Err(ExchangeError::Failed(e)) => return Err(SendError::Failed(e)),
                Err(ExchangeError::TimedOut) => return Err(SendError::TimedOut),
            }
        }
    }
}
