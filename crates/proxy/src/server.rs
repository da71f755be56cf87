//! The gateway's HTTP/1.1 server for client connections.
//!
//! Requests without a body (the bulk of gateway traffic) are read, routed and
//! answered here: the head is parsed with [`fleetgate_core::h1`], the response head
//! written as bytes, and a body that came whole with its upstream response goes out
//! in the same write. Anything else — a request with a body, an upgrade or
//! `Expect`, HTTP/2's preface, a head that does not parse or is too large — hands
//! the connection, with every byte read so far, to hyper's server for the rest of
//! its life, which answers malformed input with 400/431 and serves the rest.
//!
//! Slow clients: a request head must be complete within the header read timeout
//! from the moment the connection starts waiting for it (idle keep-alive
//! connections included). The timer is armed once and moved only when it fires,
//! so a busy connection costs one clock read per request, not a timer update.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use fleetgate_core::h1;
use futures::future::FusedFuture;
use futures::FutureExt;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Either};
use hyper::body::Body;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::watch;

use crate::forward::{self, Peer, ProxyBody};
use crate::Gateway;

/// Body data up to this size is copied behind the response head (one write);
/// larger frames are written on their own.
const COALESCE_MAX: usize = 16 * 1024;

/// Why the connection stops waiting for a request head.
enum Wait {
    Data,
    Closed,
    TimedOut,
    Stopped,
}

/// Serves one client connection (plain TCP, or TLS without HTTP/2) until it closes,
/// times out, or the gateway stops.
pub(crate) async fn serve<I>(
    gw: Gateway,
    mut io: I,
    peer: SocketAddr,
    tls: bool,
    stop: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let inner = gw.inner.clone();
    let client = Arc::new(Peer::new(peer));
    let limit = inner.header_read_timeout;
    let send_limit = inner.client_send_timeout;
    let mut buf = BytesMut::with_capacity(8 * 1024);
    let mut out: Vec<u8> = Vec::with_capacity(4 * 1024);
    let mut spans = Vec::new();
    let mut stop_wait = stop.clone();
    let stopped = async move {
        let _ = stop_wait.wait_for(|s| *s).await;
    }
    .fuse();
    tokio::pin!(stopped);
    let sleep = tokio::time::sleep(limit);
    tokio::pin!(sleep);
    loop {
        // Wait for a complete request head.
        let deadline = Instant::now() + limit;
        let head = loop {
            if !buf.is_empty() {
                match h1::parse_request_head(&buf, &mut spans) {
                    Ok(Some(h)) if !h.has_body && !h.upgrade_or_expect => break h,
                    Ok(None) => {}
                    // Bodies, upgrades, HTTP/2, errors: hyper takes over from here.
                    _ => {
                        let prefix = buf.split().freeze();
                        return gw.connection(Rewind { prefix, io }, peer, tls, stop).await;
                    }
                }
            }
            if stopped.is_terminated() && buf.is_empty() {
                return;
            }
            let idle = buf.is_empty();
            let wait = std::future::poll_fn(|cx| {
                if let Poll::Ready(r) = crate::pool::poll_fill(&mut io, &mut buf, cx) {
                    return Poll::Ready(match r {
                        Ok(n) if n > 0 => Wait::Data,
                        _ => Wait::Closed,
                    });
                }
                if !stopped.is_terminated() && stopped.as_mut().poll(cx).is_ready() && idle {
                    return Poll::Ready(Wait::Stopped);
                }
                if sleep.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Wait::TimedOut);
                }
                Poll::Pending
            })
            .await;
            match wait {
                Wait::Data => {}
                Wait::Closed | Wait::Stopped => return,
                Wait::TimedOut => {
                    if Instant::now() >= deadline {
                        tracing::debug!(%peer, "client did not send a request head in time");
                        return;
                    }
                    // The timer was set for an earlier request: move it to this one's deadline.
                    sleep.as_mut().reset(deadline.into());
                }
            }
        };
        let close = head.close || stopped.is_terminated();
        let head_request;
        let resp = {
            let raw = buf.split_to(head.len).freeze();
            let req = match request(&raw, &head, &spans) {
                Ok(r) => r,
                Err(what) => {
                    let msg = format!(
                        "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{what}",
                        what.len()
                    );
                    let _ = io.write_all(msg.as_bytes()).await;
                    let _ = io.shutdown().await;
                    return;
                }
            };
            head_request = req.method() == Method::HEAD;
            forward::handle(inner.clone(), req, client.clone(), tls).await
        };
        let keep = match write_response(
            &mut io,
            &mut out,
            resp,
            head_request,
            head.minor,
            close,
            send_limit,
        )
        .await
        {
            Ok(keep) => keep,
            Err(_) => return,
        };
        if !keep {
            let _ = io.shutdown().await;
            return;
        }
    }
}

/// The `http::Request` of a parsed head: its header values share the head's bytes.
fn request(
    raw: &Bytes,
    head: &h1::RequestHead,
    spans: &[h1::HeaderSpan],
) -> Result<Request<Option<hyper::body::Incoming>>, &'static str> {
    let method = Method::from_bytes(head.method(raw)).map_err(|_| "invalid method")?;
    let uri = Uri::from_maybe_shared(raw.slice(head.target.0 as usize..head.target.1 as usize))
        .map_err(|_| "invalid request target")?;
    let mut headers = HeaderMap::with_capacity(spans.len());
    for span in spans {
        let name = HeaderName::from_bytes(span.name(raw)).map_err(|_| "invalid header name")?;
        let value =
            HeaderValue::from_maybe_shared(raw.slice(span.value.0 as usize..span.value.1 as usize))
                .map_err(|_| "invalid header value")?;
        headers.append(name, value);
    }
    let mut req = Request::new(None);
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = if head.minor == 1 {
        Version::HTTP_11
    } else {
        Version::HTTP_10
    };
    *req.headers_mut() = headers;
    Ok(req)
}

/// How a response body is delimited on the wire.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Delimit {
    None,
    Length,
    Chunked,
    Close,
}

/// Writes `resp` to the client. Returns whether the connection stays open.
async fn write_response<I>(
    io: &mut I,
    out: &mut Vec<u8>,
    resp: Response<ProxyBody>,
    head_request: bool,
    minor: u8,
    close: bool,
    send_limit: std::time::Duration,
) -> std::io::Result<bool>
where
    I: AsyncWrite + Unpin,
{
    let (parts, mut body) = resp.into_parts();
    let status = parts.status;
    let bodyless_status = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let exact = body.size_hint().exact();
    let delimit = if bodyless_status || head_request {
        Delimit::None
    } else if exact.is_some() {
        Delimit::Length
    } else if minor == 1 {
        Delimit::Chunked
    } else {
        Delimit::Close
    };
    // The pipeline asks for the connection to end after a request it refused as
    // malformed (`Connection: close` in the response's own map).
    let keep = !close
        && delimit != Delimit::Close
        && (status != StatusCode::BAD_REQUEST
            || parts
                .headers
                .get(header::CONNECTION)
                .is_none_or(|v| !v.as_bytes().eq_ignore_ascii_case(b"close")));
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut has_date = parts.headers.contains_key(header::DATE);
    // An upstream's header lines as they arrived (hop-by-hop ones already gone);
    // the response's own map wins over lines of the same name.
    let raw = match &mut body {
        Either::Left(pooled) => pooled.take_raw_head(),
        Either::Right(_) => None,
    };
    for (name, value) in raw.iter().flat_map(|r| r.lines()) {
        if (delimit != Delimit::None && name.eq_ignore_ascii_case(b"content-length"))
            || parts
                .headers
                .keys()
                .any(|k| k.as_str().as_bytes().eq_ignore_ascii_case(name))
        {
            continue;
        }
        has_date |= name.eq_ignore_ascii_case(b"date");
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    for (name, value) in &parts.headers {
        if *name == header::TRANSFER_ENCODING
            || *name == header::CONNECTION
            || (*name == header::CONTENT_LENGTH && delimit != Delimit::None)
        {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match (delimit, exact) {
        (Delimit::Length, Some(n)) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa(n, &mut [0u8; 20]));
            out.extend_from_slice(b"\r\n");
        }
        (Delimit::Chunked, _) => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        _ => {}
    }
    if !has_date {
        push_date(out);
    }
    if !keep {
        out.extend_from_slice(b"connection: close\r\n");
    } else if minor == 0 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if delimit == Delimit::None {
        crate::stall::write_all(io, out, send_limit).await?;
        crate::stall::flush(io, send_limit).await?;
        return Ok(keep);
    }
    loop {
        // Take what the body has ready; only wait (after sending what is buffered)
        // when it has nothing, so streams like SSE reach the client as they come.
        let frame = match std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx)))
            .await
        {
            Poll::Ready(f) => f,
            Poll::Pending => {
                if !out.is_empty() {
                    crate::stall::write_all(io, out, send_limit).await?;
                    crate::stall::flush(io, send_limit).await?;
                    out.clear();
                }
                body.frame().await
            }
        };
        match frame {
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else {
                    continue; // trailers are not forwarded
                };
                if data.is_empty() {
                    continue;
                }
                if delimit == Delimit::Chunked {
                    out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
                }
                if data.len() <= COALESCE_MAX {
                    out.extend_from_slice(&data);
                } else {
                    crate::stall::write_all(io, out, send_limit).await?;
                    out.clear();
                    crate::stall::write_all(io, &data, send_limit).await?;
                }
                if delimit == Delimit::Chunked {
                    out.extend_from_slice(b"\r\n");
                }
            }
            Some(Err(e)) => {
                // The upstream failed mid-body: the client can only learn it from
                // the connection closing before the body's end.
                tracing::debug!(error = %e, "response body failed; closing the client connection");
                if !out.is_empty() {
                    let _ = crate::stall::write_all(io, out, send_limit).await;
                }
                return Ok(false);
            }
            None => {
                if delimit == Delimit::Chunked {
                    out.extend_from_slice(b"0\r\n\r\n");
                }
                crate::stall::write_all(io, out, send_limit).await?;
                crate::stall::flush(io, send_limit).await?;
                return Ok(keep);
            }
        }
    }
}

fn itoa(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// Appends `date: <IMF-fixdate>`, formatted once per second per thread.
fn push_date(out: &mut Vec<u8>) {
    use std::cell::RefCell;
    thread_local! {
        static DATE: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DATE.with(|d| {
        let mut d = d.borrow_mut();
        if d.0 != now {
            d.0 = now;
            d.1 = chrono::DateTime::from_timestamp(now as i64, 0)
                .map(|t| t.format("%a, %d %b %Y %H:%M:%S GMT").to_string())
                .unwrap_or_default();
        }
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(d.1.as_bytes());
        out.extend_from_slice(b"\r\n");
    });
}

/// A connection with bytes already read from it put back in front.
pub(crate) struct Rewind<I> {
    prefix: Bytes,
    io: I,
}

impl<I: AsyncRead + Unpin> AsyncRead for Rewind<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Rewind<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn itoa_writes_decimal() {
        for n in [0u64, 7, 10, 1024, u64::MAX] {
            assert_eq!(itoa(n, &mut [0u8; 20]), n.to_string().as_bytes());
        }
    }

    #[test]
    fn dates_are_imf_fixdate() {
        let mut out = Vec::new();
        push_date(&mut out);
        let text = String::from_utf8(out).expect("ascii");
        assert!(
            text.starts_with("date: ") && text.ends_with(" GMT\r\n"),
            "{text}"
        );
        assert_eq!(text.len(), "date: Sun, 06 Nov 1994 08:49:37 GMT\r\n".len());
    }
}
