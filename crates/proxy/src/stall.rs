//! Idle timeouts for exchanges already under way: a peer that stops sending a body
//! or stops reading one must not hold two connections forever (nginx's
//! `proxy_read_timeout`, `proxy_send_timeout`, `send_timeout`, `client_body_timeout`).
//!
//! A [`Stall`] measures the time since the last progress, and only while the
//! operation is waiting: a timer is armed when a read or write first returns
//! `Pending` and moved when progress was made since, so a body that flows costs
//! no timer at all.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The idle timer of one direction of one exchange.
pub struct Stall {
    limit: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    progressed: bool,
}

impl Stall {
    pub fn new(limit: Duration) -> Self {
        Self {
            limit,
            sleep: None,
            progressed: false,
        }
    }

    /// Records that bytes moved.
    pub fn progress(&mut self) {
        self.progressed = true;
    }

    /// Called when the operation returned `Pending`: whether it has now waited
    /// `limit` without progress (the timer is armed or moved as needed, and wakes
    /// `cx` when it fires).
    pub fn poll_expired(&mut self, cx: &mut Context<'_>) -> bool {
        match &mut self.sleep {
            None => self.sleep = Some(Box::pin(tokio::time::sleep(self.limit))),
            Some(s) if self.progressed => s.as_mut().reset(Instant::now() + self.limit),
            Some(_) => {}
        }
        self.progressed = false;
        self.sleep
            .as_mut()
            .is_some_and(|s| s.as_mut().poll(cx).is_ready())
    }

    pub fn limit(&self) -> Duration {
        self.limit
    }

    /// For an I/O operation that returned `Pending`: stays pending, or fails with
    /// `TimedOut` (naming `what`) once it has waited the limit without progress.
    fn poll_io<T>(&mut self, cx: &mut Context<'_>, what: &str) -> Poll<std::io::Result<T>> {
        if self.poll_expired(cx) {
            Poll::Ready(Err(timed_out(what, self.limit)))
        } else {
            Poll::Pending
        }
    }
}

fn timed_out(what: &str, limit: Duration) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("{what} for {} ms", limit.as_millis()),
    )
}

/// A connection whose writes fail once they made no progress for the limit: a
/// peer that stopped reading frees the connection (and with it the exchange).
pub struct WriteStall<I> {
    io: I,
    stall: Stall,
}

impl<I> WriteStall<I> {
    pub fn new(io: I, limit: Duration) -> Self {
        Self {
            io,
            stall: Stall::new(limit),
        }
    }

    pub fn into_inner(self) -> I {
        self.io
    }

    fn poll_guarded<T>(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        match r {
            Poll::Ready(v) => {
                self.stall.progress();
                Poll::Ready(v)
            }
            Poll::Pending => self
                .stall
                .poll_io(cx, "the peer has not read what was sent"),
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for WriteStall<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for WriteStall<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write(cx, buf);
        this.poll_guarded(cx, r)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.poll_guarded(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_flush(cx);
        this.poll_guarded(cx, r)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// A body whose next frame must come within the limit of the previous one (or
/// of the first wait): a sender that stalls mid-body fails the body.
pub struct StallBody<B> {
    inner: B,
    stall: Stall,
    what: &'static str,
}

impl<B> StallBody<B> {
    /// `what` names the sender in the error (`"the upstream"`, `"the client"`).
    pub fn new(inner: B, limit: Duration, what: &'static str) -> Self {
        Self {
            inner,
            stall: Stall::new(limit),
            what,
        }
    }

    pub fn get_ref(&self) -> &B {
        &self.inner
    }
}

impl<B> Body for StallBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(f) => {
                this.stall.progress();
                Poll::Ready(f.map(|r| r.map_err(Into::into)))
            }
            Poll::Pending => {
                if this.stall.poll_expired(cx) {
                    Poll::Ready(Some(Err(format!(
                        "{} sent no body data for {} ms",
                        this.what,
                        this.stall.limit().as_millis()
                    )
                    .into())))
                } else {
                    Poll::Pending
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

const NOT_READ: &str = "the client has not read the response";

/// Writes all of `buf`, failing when a write makes no progress for `limit`. No
/// timer is touched unless the peer's receive window is full.
pub async fn write_all<W: AsyncWrite + Unpin>(
    io: &mut W,
    mut buf: &[u8],
    limit: Duration,
) -> std::io::Result<()> {
    let mut stall: Option<Stall> = None;
    std::future::poll_fn(|cx| {
        while !buf.is_empty() {
            match Pin::new(&mut *io).poll_write(cx, buf) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(n)) => {
                    buf = &buf[n..];
                    if let Some(s) = stall.as_mut() {
                        s.progress();
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    return stall
                        .get_or_insert_with(|| Stall::new(limit))
                        .poll_io(cx, NOT_READ);
                }
            }
        }
        Poll::Ready(Ok(()))
    })
    .await
}

/// Flushes `io`, failing when the flush makes no progress for `limit`.
pub async fn flush<W: AsyncWrite + Unpin>(io: &mut W, limit: Duration) -> std::io::Result<()> {
    let mut stall: Option<Stall> = None;
    std::future::poll_fn(|cx| match Pin::new(&mut *io).poll_flush(cx) {
        Poll::Ready(r) => Poll::Ready(r),
        Poll::Pending => stall
            .get_or_insert_with(|| Stall::new(limit))
            .poll_io(cx, NOT_READ),
    })
    .await
}
