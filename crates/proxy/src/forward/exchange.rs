//! Phase 4 of the pipeline, the exchange with the upstream: the request prepared
//! once (path, headers, body), then sent to one target after another while the
//! route's retry rules and the upstream's retry budget allow, each outcome recorded
//! on the breaker and the target's health.
//!
//! A bodyless request that does not upgrade is written out as bytes on a connection
//! this task drives (pool.rs); the others go through hyper's client.

use std::borrow::Cow;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetgate_core::gateway::{RetryCondition, RetryOn};
use fleetgate_core::routing::stripped_path;
use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::{Either, Empty, Limited};
use hyper::body::{Body, Incoming};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use super::headers::{
    append_forwarded, strip_hop_by_hop, upgrade_allowed, upgrade_answered, write_request_head,
    Forwarding,
};
use super::target::Targets;
use super::{json_error, respond, ProxyBody, RequestCtx, X_REQUEST_ID};
use crate::compiled::RouteRuntime;
use crate::pool::{PooledBody, SendError};
use crate::upstream::{TargetState, UpstreamBody, UpstreamRuntime};

/// Sends the request to the upstream's targets until one answers or no attempt is
/// left: the upstream's answer (with the route's response rules applied), or the
/// gateway's `502`/`504` for the last failed attempt.
///
/// Only an idempotent request may be sent again after it reached an upstream
/// (RFC 9110 §9.2.2): a POST answered 502 or cut by a timeout may have taken
/// effect. Any bodyless request may try another target when it never got there.
pub(super) async fn forward(
    ctx: &RequestCtx<'_>,
    req: &mut Parts,
    body: Option<Incoming>,
) -> Response<ProxyBody> {
    let rt = ctx.rt;
    let Some(up) = &rt.upstream else {
        // Routes without an upstream (`ai` routes) never come here.
        return json_error(
            StatusCode::BAD_GATEWAY,
            "NO_UPSTREAM",
            "this route has no upstream",
            None,
        );
    };
    let upgrade = upgrade_allowed(&rt.route, &req.headers);
    // What the client asked to switch to, to check the upstream's answer against.
    let asked_upgrade = upgrade.then(|| {
        let mut asked = HeaderMap::new();
        for v in req.headers.get_all(header::UPGRADE) {
            asked.append(header::UPGRADE, v.clone());
        }
        asked
    });
    let client_upgrade = if upgrade {
        req.extensions.remove::<OnUpgrade>()
    } else {
        None
    };
    let retryable = bodyless(&body);
    let idempotent = crate::pool::idempotent(&req.method);
    let mut out = Outgoing::prepare(ctx, req, body, retryable, upgrade);
    let attempts = 1 + if retryable {
        up.config.retries.attempts
    } else {
        0
    };
    let request_timeout = Duration::from_millis(up.config.timeouts.request_ms);
    let mut last_error: Option<Response<ProxyBody>> = None;
    let mut targets = Targets::new(up, &out.headers, &ctx.peer.addr);
    for attempt in 0..attempts {
        let Some(ti) = targets.pick(up) else {
            break;
        };
        if attempt > 0 {
            rt.upstream_metrics.retries.fetch_add(1, Ordering::Relaxed);
        }
        rt.upstream_metrics.requests.fetch_add(1, Ordering::Relaxed);
        let target = &up.targets[ti];
        if let Some(span) = ctx.span {
            span.attempt(ti);
        }
        let more = attempt + 1 < attempts;
        target.active.fetch_add(1, Ordering::Relaxed);
        let sent = Instant::now();
        let res = if out.direct {
            out.send_bodyless(target, request_timeout).await
        } else {
            let request = match out.request(target, more) {
                Ok(r) => r,
                Err(e) => {
                    target.active.fetch_sub(1, Ordering::Relaxed);
                    return json_error(
                        StatusCode::BAD_REQUEST,
                        "BAD_REQUEST",
                        &format!("cannot forward this path: {e}"),
                        None,
                    );
                }
            };
            tokio::time::timeout(request_timeout, target.pool.send(request))
                .await
                .unwrap_or(Err(SendError::TimedOut))
        };
        target.active.fetch_sub(1, Ordering::Relaxed);
        rt.upstream_metrics
            .latency
            .record(sent.elapsed().as_micros() as u64);
        match res {
            Ok(resp) => {
                let status = resp.status();
                let failed = status.is_server_error();
                up.record(ti, !failed, failed.then(|| format!("answered {status}")));
                if failed {
                    rt.upstream_metrics.failures.fetch_add(1, Ordering::Relaxed);
                    if more
                        && idempotent
                        && retry_on(rt, RetryOn::Status(status.as_u16()))
                        && up.try_retry()
                    {
                        continue;
                    }
                }
                if status == StatusCode::SWITCHING_PROTOCOLS {
                    return switch_protocols(
                        up,
                        &target.active,
                        resp,
                        asked_upgrade.as_ref(),
                        client_upgrade,
                    );
                }
                return respond::upstream_response(rt, resp, out.direct);
            }
            Err(SendError::TimedOut) => {
                up.record(
                    ti,
                    false,
                    Some(format!(
                        "no response within {} ms",
                        request_timeout.as_millis()
                    )),
                );
                rt.upstream_metrics.failures.fetch_add(1, Ordering::Relaxed);
                rt.upstream_metrics.timeouts.fetch_add(1, Ordering::Relaxed);
                last_error = Some(json_error(
                    StatusCode::GATEWAY_TIMEOUT,
                    "UPSTREAM_TIMEOUT",
                    &format!(
                        "upstream {} did not answer within {} ms",
                        up.name,
                        request_timeout.as_millis()
                    ),
                    None,
                ));
                if more
                    && idempotent
                    && retry_on(rt, RetryOn::Condition(RetryCondition::Timeout))
                    && up.try_retry()
                {
                    continue;
                }
                break;
            }
            Err(e) => {
                let connect = matches!(e, SendError::Connect(_));
                up.record(ti, false, Some(format!("{e}")));
                rt.upstream_metrics.failures.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(upstream = %up.name, target = %target.url, error = %e, "upstream request failed");
                last_error = Some(json_error(
                    StatusCode::BAD_GATEWAY,
                    "UPSTREAM_ERROR",
                    &format!("upstream {} could not be reached", up.name),
                    None,
                ));
                if more
                    && connect
                    && retry_on(rt, RetryOn::Condition(RetryCondition::ConnectError))
                    && up.try_retry()
                {
                    continue;
                }
                break;
            }
        }
    }
    last_error.unwrap_or_else(|| {
        json_error(
            StatusCode::BAD_GATEWAY,
            "NO_TARGET",
            &format!("upstream {} has no usable target", up.name),
            None,
        )
    })
}

/// Whether the request carries no body. An HTTP/2 request's body is announced by
/// its frames, not by `Content-Length` (which it may leave out), so the body itself
/// is asked: hyper gives a request with nothing to read an empty body.
fn bodyless(body: &Option<Incoming>) -> bool {
    body.as_ref().is_none_or(Body::is_end_stream)
}

fn retry_on(rt: &RouteRuntime, cond: RetryOn) -> bool {
    rt.upstream
        .as_ref()
        .is_some_and(|u| u.config.retries.on.contains(&cond))
}

/// The request as it goes upstream, prepared once for every attempt.
struct Outgoing<'r> {
    method: &'r Method,
    /// The path and query to forward; without `strip_path` the client's own.
    path_and_query: Cow<'r, str>,
    /// The client's path and query as is, for hyper's client (none with `strip_path`).
    reuse_pq: Option<PathAndQuery>,
    headers: HeaderMap,
    /// A bodyless request that does not upgrade: written out as bytes on a
    /// connection this task drives, rather than through hyper's client.
    direct: bool,
    /// The forwarding headers a direct request's head gets in place of the client's
    /// (without header rules; with them, they are in `headers` already).
    fwd: Option<Forwarding<'r>>,
    /// The body for hyper's client, taken by the one attempt that can send it.
    body: Option<UpstreamBody>,
    /// A direct request's head, written again for each target.
    head: Vec<u8>,
}

impl<'r> Outgoing<'r> {
    /// Takes the client's headers, and its body with the route's size limit and the
    /// client's body timeout, for the upstream.
    fn prepare(
        ctx: &RequestCtx<'r>,
        req: &'r mut Parts,
        body: Option<Incoming>,
        retryable: bool,
        upgrade: bool,
    ) -> Self {
        let rt = ctx.rt;
        let route = &rt.route;
        let direct = retryable && !upgrade;
        let proto = if ctx.tls { "https" } else { "http" };
        let mut headers = std::mem::take(&mut req.headers);
        let req: &'r Parts = req;
        let path_and_query: Cow<'r, str> = if route.strip_path {
            let path = stripped_path(req.uri.path(), ctx.matched_len);
            match req.uri.query() {
                Some(q) => format!("{path}?{q}").into(),
                None => path.into(),
            }
        } else {
            req.uri.path_and_query().map_or("/", |p| p.as_str()).into()
        };
        let reuse_pq = if route.strip_path {
            None
        } else {
            req.uri.path_and_query().cloned()
        };
        // Without header rules, a direct request's forwarding headers are written with
        // its head; otherwise they go into the map first, where the rules can change them.
        let fwd = (direct && rt.request_headers.is_empty()).then_some(Forwarding {
            peer: ctx.peer,
            host: ctx.host,
            proto,
            rid: ctx.rid,
        });
        if fwd.is_none() {
            // Room for the five headers added below at once: a client's map is sized for
            // what it sent, and growing it one insert at a time rehashes it repeatedly.
            headers.reserve(5);
            strip_hop_by_hop(&mut headers, upgrade);
            append_forwarded(&mut headers, ctx.peer, ctx.host, proto);
            headers.insert(X_REQUEST_ID, ctx.rid.clone());
            rt.request_headers.apply(&mut headers);
            // A body of unknown length (chunked from an HTTP/1.1 client, DATA frames
            // from an HTTP/2 one) goes upstream chunked: left to itself hyper's client
            // would send a GET's body as empty.
            if !retryable && !upgrade && !headers.contains_key(header::CONTENT_LENGTH) {
                headers.insert(
                    header::TRANSFER_ENCODING,
                    HeaderValue::from_static("chunked"),
                );
            }
        } else if headers.contains_key(header::CONNECTION) {
            strip_hop_by_hop(&mut headers, false);
        }
        let client_body_timeout = ctx.gw.client_body_timeout;
        let stalled = |b| crate::stall::StallBody::new(b, client_body_timeout, "the client");
        let body = Some(match (body, route.max_body_bytes) {
            (None, _) => Either::Right(Either::Right(Empty::new())),
            (Some(b), Some(max)) => {
                Either::Right(Either::Left(Limited::new(stalled(b), max as usize)))
            }
            (Some(b), None) => Either::Left(stalled(b)),
        });
        Self {
            method: &req.method,
            path_and_query,
            reuse_pq,
            headers,
            direct,
            fwd,
            body,
            head: Vec::new(),
        }
    }

    /// Writes the head of a direct request for `target` and sends it on one of the
    /// target's pooled connections.
    fn send_bodyless<'s>(
        &'s mut self,
        target: &'s TargetState,
        timeout: Duration,
    ) -> impl Future<Output = Result<Response<PooledBody>, SendError>> + 's {
        self.head.clear();
        self.head.reserve(512);
        write_request_head(
            &mut self.head,
            self.method,
            [&target.base_path, &self.path_and_query],
            &target.host_header,
            &self.headers,
            self.fwd.as_ref(),
        );
        target.pool.send_bodyless(
            &self.head,
            *self.method == Method::HEAD,
            crate::pool::idempotent(self.method),
            timeout,
        )
    }

    /// The request for hyper's client to send to `target`. The last possible
    /// attempt (`more` unset) takes the headers; earlier ones keep a copy for retries.
    fn request(
        &mut self,
        target: &TargetState,
        more: bool,
    ) -> Result<Request<UpstreamBody>, http::Error> {
        let pq = match &self.reuse_pq {
            Some(pq) if target.base_path.is_empty() => Ok(pq.clone()),
            _ => PathAndQuery::try_from(format!("{}{}", target.base_path, self.path_and_query)),
        };
        // Origin form (`/path?query`): the connection already names the target.
        let uri = pq.map_err(http::Error::from).map(Uri::from)?;
        let mut out = Request::new(
            self.body
                .take()
                .unwrap_or(Either::Right(Either::Right(Empty::new()))) as UpstreamBody,
        );
        *out.method_mut() = self.method.clone();
        *out.uri_mut() = uri;
        *out.headers_mut() = if more {
            self.headers.clone()
        } else {
            std::mem::take(&mut self.headers)
        };
        out.headers_mut()
            .insert(header::HOST, target.host_header.clone());
        Ok(out)
    }
}

/// An upstream's `101`. A switch nobody asked for, or to another protocol than
/// asked, would hand the client's connection to something it did not choose: a
/// `502`. Otherwise the client's and the upstream's upgraded connections are joined
/// once both are ready; the joined connection counts as one in flight to the
/// target (`active`) until either side closes.
fn switch_protocols(
    up: &UpstreamRuntime,
    active: &Arc<AtomicU64>,
    mut resp: Response<PooledBody>,
    asked: Option<&HeaderMap>,
    client_upgrade: Option<OnUpgrade>,
) -> Response<ProxyBody> {
    if !asked.is_some_and(|asked| upgrade_answered(asked, resp.headers())) {
        return json_error(
            StatusCode::BAD_GATEWAY,
            "UPSTREAM_ERROR",
            &format!(
                "upstream {} switched protocols without being asked to",
                up.name
            ),
            None,
        );
    }
    if let Some(client_upgrade) = client_upgrade {
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        let open = InFlight::new(active.clone());
        tokio::spawn(async move {
            let _open = open;
            match tokio::try_join!(client_upgrade, upstream_upgrade) {
                Ok((c, u)) => {
                    let _ =
                        tokio::io::copy_bidirectional(&mut TokioIo::new(c), &mut TokioIo::new(u))
                            .await;
                }
                Err(e) => tracing::debug!(error = %e, "websocket upgrade failed"),
            }
        });
    }
    let (parts, body) = resp.into_parts();
    Response::from_parts(parts, Either::Left(body))
}

/// One count in a target's `active` for as long as it lives.
struct InFlight(Arc<AtomicU64>);

impl InFlight {
    fn new(active: Arc<AtomicU64>) -> Self {
        active.fetch_add(1, Ordering::Relaxed);
        InFlight(active)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
