//! Phase 5 of the pipeline, the response: the route's response header rules on
//! an upstream's answer, the rate-limit and CORS headers the policies owe it, then
//! the route's metrics, the request id and the access log line.

use std::time::Instant;

use http::header::{self, HeaderValue};
use http::request::Parts;
use http::Response;
use http_body_util::Either;

use super::headers::strip_hop_by_hop;
use super::policy::{add_cors, set_limit_headers, Admitted};
use super::{ProxyBody, RequestCtx, X_REQUEST_ID};
use crate::compiled::RouteRuntime;
use crate::pool::PooledBody;

/// An upstream's answer for the client: without hop-by-hop headers, and with the
/// route's response header rules applied.
#[inline]
pub(super) fn upstream_response(
    rt: &RouteRuntime,
    resp: Response<PooledBody>,
    direct: bool,
) -> Response<ProxyBody> {
    let (mut parts, mut body) = resp.into_parts();
    if !direct {
        // A length beside Transfer-Encoding is not the length of what
        // the client gets (RFC 9112 §6.3); hyper framed the body by the
        // coding, and the connection is not reused (pool.rs).
        if parts.headers.contains_key(header::TRANSFER_ENCODING) {
            parts.headers.remove(header::CONTENT_LENGTH);
        }
        // A direct connection's response comes without them already.
        strip_hop_by_hop(&mut parts.headers, false);
    } else if !rt.response_headers.is_empty() || rt.route.cors.is_some() {
        // Rules and CORS edit the upstream's own headers: they need them as a map.
        crate::pool::materialize(&mut parts.headers, &mut body);
    }
    rt.response_headers.apply(&mut parts.headers);
    Response::from_parts(parts, Either::Left(body))
}

/// What the policies owe every answer past them (the upstream's, or the gateway's
/// own for a body too large, an open breaker or a failed exchange): the rate-limit
/// headers and the CORS headers for the request's `Origin`.
#[inline]
pub(super) fn policy_headers(
    ctx: &RequestCtx<'_>,
    resp: &mut Response<ProxyBody>,
    admitted: &Admitted,
) {
    let h = resp.headers_mut();
    if let Some((limit, remaining, reset)) = admitted.limit {
        set_limit_headers(h, limit, remaining, reset);
    }
    if let (Some(cors), Some(origin)) = (&ctx.rt.route.cors, &admitted.origin) {
        add_cors(h, cors, origin);
    }
}

/// The end of a routed request: its status and duration in the route's metrics,
/// its request id on the response, and its access log line.
#[inline]
pub(super) fn log(
    ctx: &RequestCtx<'_>,
    req: &Parts,
    resp: &mut Response<ProxyBody>,
    started: Instant,
    user_agent: Option<&HeaderValue>,
) {
    let rt = ctx.rt;
    let status = resp.status().as_u16();
    rt.metrics
        .observe(status, started.elapsed().as_micros() as u64);
    resp.headers_mut().insert(X_REQUEST_ID, ctx.rid.clone());
    if let Some(log) = &ctx.gw.access_log {
        log.write(&crate::access_log::Entry {
            request_id: ctx.rid.to_str().unwrap_or(""),
            client: ctx.peer.addr.ip(),
            method: req.method.as_str(),
            host: ctx.host,
            path: req.uri.path(),
            query: req.uri.query(),
            status,
            route: &rt.route.id,
            upstream: rt
                .upstream
                .as_ref()
                .map_or(crate::compiled::AI_UPSTREAM, |u| u.name.as_str()),
            duration_ms: started.elapsed().as_secs_f64() * 1000.0,
            user_agent: user_agent.and_then(|v| v.to_str().ok()),
        });
    }
}
