//! The HTTP/1.1 client of a pooled connection: a bodyless request's head written
//! as bytes, the response head parsed with [`fleetgate_core::h1`] and kept as the
//! bytes it arrived in ([`RawHead`]), and the body read off the socket as the client
//! takes it ([`PooledBody`]); also the bodies of the connections handed to hyper's
//! client ([`Tracked`] going up, [`PooledBody::Hyper`] coming back).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use fleetgate_core::h1::{self, ChunkedDecoder, Decoded, Framing};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use super::{BoxError, Pool};
use crate::upstream::UpstreamBody;

/// hyper's sender on a connection handed to its client.
pub(super) type Sender = http1::SendRequest<Tracked>;

/// Whether headers carry `Connection: close`.
pub(super) fn asks_close(headers: &HeaderMap) -> bool {
    headers.get_all(header::CONNECTION).iter().any(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
    })
}

/// A request body handed to hyper's client that records when it was sent to its end
/// (a connection whose request body was cut short is not reusable).
pub struct Tracked {
    inner: UpstreamBody,
    sent: Arc<AtomicBool>,
}

impl Tracked {
    pub(super) fn new(inner: UpstreamBody, sent: Arc<AtomicBool>) -> Self {
        if inner.is_end_stream() {
            sent.store(true, Ordering::Release);
        }
        Self { inner, sent }
    }
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        // hyper stops polling a body whose length it knows once it has it all.
        if matches!(r, Poll::Ready(None)) || this.inner.is_end_stream() {
            this.sent.store(true, Ordering::Release);
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        let end = self.inner.is_end_stream();
        if end {
            self.sent.store(true, Ordering::Release);
        }
        end
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The stream under a pooled connection.
pub(super) enum Io {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Io {
    fn tcp(&self) -> &TcpStream {
        match self {
            Io::Tcp(s) => s,
            Io::Tls(s) => s.get_ref().0,
        }
    }

    /// Whether the upstream sent anything (bytes, FIN, RST) on an idle connection
    /// since its last response was read: then it is not reusable. Asks the runtime's
    /// readiness state, not the kernel: no system call.
    pub(super) fn touched_while_idle(&self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        self.tcp().poll_read_ready(&mut cx).is_ready()
    }
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Tcp(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Free room kept in a connection's read buffer before each read, and how much
/// is added when it runs short.
const READ_MIN: usize = 4 * 1024;
const READ_GROW: usize = 16 * 1024;

/// Reads once into the spare room of `buf` (grown first when short).
pub(crate) fn poll_fill<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<std::io::Result<usize>> {
    if buf.capacity() - buf.len() < READ_MIN {
        buf.reserve(READ_GROW);
    }
    // `read_buf` keeps no state between polls: a fresh future per poll is a plain read.
    let fut = io.read_buf(buf);
    std::pin::pin!(fut).poll(cx)
}

/// A keep-alive HTTP/1.1 connection for bodyless requests, driven by the task of
/// the request it carries (see the module documentation).
pub(super) struct Conn {
    pub(super) io: Io,
    /// Bytes read from the upstream and not consumed yet.
    pub(super) buf: BytesMut,
    /// Where the last response head's header lines were (reused).
    spans: Vec<h1::HeaderSpan>,
    /// The request timeout's timer, armed once per connection (see [`within`]).
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// Runs `fut` until it completes, or until `deadline` passes (`None`). The
/// connection's one timer is armed on first use and moved only when it fires
/// before the current deadline, so an exchange on a busy connection costs a clock
/// read, not a timer update.
async fn within<F: Future>(
    timer: &mut Option<Pin<Box<tokio::time::Sleep>>>,
    deadline: Instant,
    fut: F,
) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    loop {
        let polled = std::future::poll_fn(|cx| {
            if let Poll::Ready(v) = fut.as_mut().poll(cx) {
                return Poll::Ready(Some(v));
            }
            let t =
                timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline.into())));
            if t.as_mut().poll(cx).is_ready() {
                return Poll::Ready(None);
            }
            Poll::Pending
        })
        .await;
        match polled {
            Some(v) => return Some(v),
            None if Instant::now() >= deadline => return None,
            None => {
                if let Some(t) = timer.as_mut() {
                    t.as_mut().reset(deadline.into());
                }
            }
        }
    }
}

/// How one exchange on a [`Conn`] failed.
pub(super) enum ExchangeError {
    /// The request could not be written: the upstream never got all of it.
    Write(std::io::Error),
    /// The upstream closed (or reset) the connection before any byte of an answer.
    Closed,
    /// Anything after the first byte of the answer.
    Failed(BoxError),
    /// The deadline passed before a complete response head.
    TimedOut,
}

impl Conn {
    pub(super) fn new(io: Io) -> Self {
        Self {
            io,
            buf: BytesMut::with_capacity(READ_GROW),
            spans: Vec::new(),
            timer: None,
        }
    }

    /// Writes `head` and reads until a final (non-1xx) response head is complete.
    pub(super) async fn exchange(
        &mut self,
        head: &[u8],
        head_request: bool,
        deadline: Instant,
    ) -> Result<h1::ResponseHead, ExchangeError> {
        let io = &mut self.io;
        let written = within(&mut self.timer, deadline, async {
            io.write_all(head).await?;
            io.flush().await
        })
        .await;
        match written {
            None => return Err(ExchangeError::TimedOut),
            Some(Err(e)) => return Err(ExchangeError::Write(e)),
            Some(Ok(())) => {}
        }
        let mut received = false;
        loop {
            if !self.buf.is_empty() {
                match h1::parse_response_head(&self.buf, head_request, &mut self.spans) {
                    Ok(Some(h)) if h.status == 101 => {
                        return Err(ExchangeError::Failed(
                            "the upstream switched protocols without being asked to".into(),
                        ))
                    }
                    // Informational answers (103 Early Hints, a stray 100) are not forwarded.
                    Ok(Some(h)) if h.status < 200 => {
                        self.buf.advance(h.len);
                        continue;
                    }
                    Ok(Some(h)) => return Ok(h),
                    Ok(None) => {}
                    Err(e) => return Err(ExchangeError::Failed(e.into())),
                }
            }
            let (io, buf) = (&mut self.io, &mut self.buf);
            let read = within(
                &mut self.timer,
                deadline,
                std::future::poll_fn(|cx| poll_fill(io, buf, cx)),
            )
            .await
            .ok_or(ExchangeError::TimedOut)?;
            match read {
                Ok(0) | Err(_) if !received => return Err(ExchangeError::Closed),
                Ok(0) => {
                    return Err(ExchangeError::Failed(
                        "the upstream closed the connection in the middle of a response head"
                            .into(),
                    ))
                }
                Ok(_) => received = true,
                Err(e) => return Err(ExchangeError::Failed(e.into())),
            }
        }
    }
}

/// Whether a request with this method may be sent again when its connection closed
/// without an answer (RFC 9110 §9.2.2).
pub fn idempotent(method: &http::Method) -> bool {
    matches!(
        *method,
        http::Method::GET
            | http::Method::HEAD
            | http::Method::OPTIONS
            | http::Method::TRACE
            | http::Method::PUT
            | http::Method::DELETE
    )
}

/// Hop-by-hop response headers (RFC 9110 §7.6.1), never forwarded to the client.
fn hop_by_hop_name(name: &[u8]) -> bool {
    const NAMES: [&[u8]; 9] = [
        b"connection",
        b"keep-alive",
        b"transfer-encoding",
        b"te",
        b"trailer",
        b"upgrade",
        b"proxy-authorization",
        b"proxy-authenticate",
        b"proxy-connection",
    ];
    NAMES.iter().any(|n| n.eq_ignore_ascii_case(name))
}

/// The header names a `Connection` value lists (`close` and `keep-alive` name none).
fn connection_tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|b| *b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| {
            !t.is_empty()
                && !t.eq_ignore_ascii_case(b"close")
                && !t.eq_ignore_ascii_case(b"keep-alive")
        })
}

/// The header lines of an upstream response, kept as the bytes they arrived in,
/// hop-by-hop lines left out. The gateway's HTTP/1.1 server writes them as they
/// are; every other consumer turns them into header map entries first
/// ([`materialize`]). Entries of the response's own header map win over lines
/// of the same name.
pub struct RawHead {
    bytes: Bytes,
    spans: Vec<h1::HeaderSpan>,
}

impl RawHead {
    /// Each line's name and value.
    pub fn lines(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.spans
            .iter()
            .map(|s| (s.name(&self.bytes), s.value(&self.bytes)))
    }
}

/// Moves a response's raw upstream header lines (if any) into its header map,
/// behind nothing: entries already in the map win over lines of the same name.
/// Lines that are not valid header map entries are dropped.
pub fn materialize(headers: &mut HeaderMap, body: &mut PooledBody) {
    let Some(raw) = body.take_raw_head() else {
        return;
    };
    let mut map = HeaderMap::with_capacity(raw.spans.len() + headers.len());
    for (name, value) in raw.lines() {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name),
            HeaderValue::from_maybe_shared(raw.bytes.slice_ref(value)),
        ) else {
            continue;
        };
        if !headers.contains_key(&name) {
            map.append(name, value);
        }
    }
    for (name, value) in headers.iter() {
        map.append(name.clone(), value.clone());
    }
    *headers = map;
}

/// Turns a parsed head into the response handed to the client, its header values
/// sharing the bytes read (no copy), and the connection into its body.
pub(super) fn response(
    pool: &Arc<Pool>,
    mut conn: Conn,
    head: h1::ResponseHead,
) -> Result<Response<PooledBody>, BoxError> {
    let status = StatusCode::from_u16(head.status)?;
    let bytes = conn.buf.split_to(head.len).freeze();
    let mut spans = std::mem::take(&mut conn.spans);
    // Headers the upstream named in `Connection` are hop-by-hop too (nginx and
    // most servers send only `keep-alive` there, which names nothing).
    let mut named = false;
    for s in spans
        .iter()
        .filter(|s| s.name(&bytes).eq_ignore_ascii_case(b"connection"))
    {
        named |= connection_tokens(s.value(&bytes)).next().is_some();
    }
    if named {
        let listed: Vec<h1::HeaderSpan> = spans
            .iter()
            .filter(|s| s.name(&bytes).eq_ignore_ascii_case(b"connection"))
            .copied()
            .collect();
        spans.retain(|s| {
            let name = s.name(&bytes);
            !listed
                .iter()
                .any(|c| connection_tokens(c.value(&bytes)).any(|t| t.eq_ignore_ascii_case(name)))
        });
    }
    // With Transfer-Encoding, a Content-Length line does not describe the body the
    // client gets (RFC 9112 §6.3): it goes too.
    let coded = head.transfer_encoding;
    spans.retain(|s| {
        let name = s.name(&bytes);
        !(hop_by_hop_name(name) || (coded && name.eq_ignore_ascii_case(b"content-length")))
    });
    let raw = Some(RawHead { bytes, spans });
    let body = match head.framing {
        Framing::Empty => {
            if head.keep_alive {
                pool.put_conn(conn);
            }
            PooledBody::Whole { data: None, raw }
        }
        Framing::Length(n) if conn.buf.len() as u64 >= n => {
            // The whole body came with the head: the connection is free already.
            let data = conn.buf.split_to(n as usize).freeze();
            if head.keep_alive {
                pool.put_conn(conn);
            }
            PooledBody::Whole {
                data: Some(data),
                raw,
            }
        }
        framing => PooledBody::Stream(Box::new(StreamBody {
            conn: Some(conn),
            pool: pool.clone(),
            framing: match framing {
                Framing::Length(n) => Remaining::Length(n),
                Framing::Chunked => Remaining::Chunked(ChunkedDecoder::new()),
                _ => Remaining::UntilClose,
            },
            keep_alive: head.keep_alive,
            raw,
            stall: crate::stall::Stall::new(pool.read_timeout),
        })),
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    Ok(resp)
}

enum Remaining {
    Length(u64),
    Chunked(ChunkedDecoder),
    UntilClose,
}

/// A response body read off a [`Conn`] as the client takes it.
pub struct StreamBody {
    conn: Option<Conn>,
    pool: Arc<Pool>,
    framing: Remaining,
    keep_alive: bool,
    raw: Option<RawHead>,
    /// The upstream may pause at most the read timeout between two reads.
    stall: crate::stall::Stall,
}

impl StreamBody {
    fn finish(&mut self) {
        if let Some(conn) = self.conn.take() {
            if self.keep_alive {
                self.pool.put_conn(conn);
            }
        }
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            if !conn.buf.is_empty() {
                match &mut self.framing {
                    Remaining::Length(left) => {
                        let take = (*left).min(conn.buf.len() as u64);
                        *left -= take;
                        let data = conn.buf.split_to(take as usize).freeze();
                        if *left == 0 {
                            self.finish();
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    Remaining::Chunked(dec) => match dec.decode(&conn.buf) {
                        Ok(Decoded::Data { framing, data }) => {
                            conn.buf.advance(framing);
                            let data = conn.buf.split_to(data).freeze();
                            return Poll::Ready(Some(Ok(Frame::data(data))));
                        }
                        Ok(Decoded::NeedMore { framing }) => conn.buf.advance(framing),
                        Ok(Decoded::End { framing }) => {
                            conn.buf.advance(framing);
                            self.finish();
                            return Poll::Ready(None);
                        }
                        Err(e) => {
                            self.conn = None;
                            return Poll::Ready(Some(Err(e.into())));
                        }
                    },
                    Remaining::UntilClose => {
                        let data = conn.buf.split().freeze();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                continue;
            }
            if let Remaining::Length(0) = self.framing {
                self.finish();
                return Poll::Ready(None);
            }
            let filled = match poll_fill(&mut conn.io, &mut conn.buf, cx) {
                Poll::Ready(r) => r,
                Poll::Pending => {
                    if self.stall.poll_expired(cx) {
                        // The connection is dropped: its stream position is lost.
                        self.conn = None;
                        return Poll::Ready(Some(Err(format!(
                            "the upstream sent nothing for {} ms in the middle of a body",
                            self.stall.limit().as_millis()
                        )
                        .into())));
                    }
                    return Poll::Pending;
                }
            };
            self.stall.progress();
            match filled {
                Ok(0) => {
                    self.conn = None;
                    return Poll::Ready(match self.framing {
                        Remaining::UntilClose => None,
                        _ => Some(Err(
                            "the upstream closed the connection before the end of the body".into(),
                        )),
                    });
                }
                Ok(_) => {}
                Err(e) => {
                    self.conn = None;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
    }
}

/// An upstream response body that returns its connection to the pool at its end.
pub enum PooledBody {
    /// A body read by hyper's client (requests with a body, upgrades, health checks).
    Hyper {
        inner: crate::stall::StallBody<Incoming>,
        /// Dropped at the end of the body, which ends the connection task; `clean`
        /// tells it the socket may go back to the pool.
        ret: Option<(Sender, Arc<AtomicBool>)>,
    },
    /// A body that arrived whole with its head (or none at all); its connection is back in the pool.
    Whole {
        data: Option<Bytes>,
        raw: Option<RawHead>,
    },
    /// A body still being read off its connection.
    Stream(Box<StreamBody>),
    /// A body relayed from a client other than the pool's: an `ai` route's
    /// provider answer, metered as it passes (see `crate::ai::meter`).
    Relayed(Pin<Box<crate::ai::meter::MeteredBody>>),
}

impl PooledBody {
    /// Takes the upstream's header lines this body still carries (see [`RawHead`]).
    pub fn take_raw_head(&mut self) -> Option<RawHead> {
        match self {
            PooledBody::Hyper { .. } => None,
            PooledBody::Whole { raw, .. } => raw.take(),
            PooledBody::Stream(s) => s.raw.take(),
            PooledBody::Relayed(_) => None,
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            PooledBody::Hyper { inner, ret } => {
                let r = Pin::new(inner).poll_frame(cx);
                if let Poll::Ready(None) = r {
                    if let Some((_sender, clean)) = ret.take() {
                        clean.store(true, Ordering::Release);
                    }
                }
                r
            }
            PooledBody::Whole { data, .. } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            PooledBody::Stream(s) => s.poll_frame(cx),
            PooledBody::Relayed(b) => b.as_mut().poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            PooledBody::Hyper { inner, .. } => inner.get_ref().is_end_stream(),
            PooledBody::Whole { data, .. } => data.is_none(),
            PooledBody::Stream(s) => s.conn.is_none(),
            PooledBody::Relayed(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            PooledBody::Hyper { inner, .. } => inner.get_ref().size_hint(),
            PooledBody::Whole { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            PooledBody::Stream(s) => match s.framing {
                Remaining::Length(n) => SizeHint::with_exact(n),
                _ => SizeHint::default(),
            },
            PooledBody::Relayed(b) => b.size_hint(),
        }
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // A body never polled to its end may still be complete (empty bodies,
        // HEAD); otherwise the connection is not reusable and is dropped.
        if let PooledBody::Hyper { inner, ret } = self {
            if let Some((_sender, clean)) = ret.take() {
                if inner.get_ref().is_end_stream() {
                    clean.store(true, Ordering::Release);
                }
            }
        }
    }
}
