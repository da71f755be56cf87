//! The request pipeline. [`handle`] takes a request through its phases in the
//! order it meets them, each in a module of its own:
//!
//! 1. [`route`] — route lookup: the request-target and `Host` checked and put in
//!    canonical form, a project's published redirects and pages answered, the
//!    route found, a route's HTTP→HTTPS redirect;
//! 2. [`policy`] — the route's policies: IP rules, CORS preflight, rate limit,
//!    body limit;
//! 3. [`target`] — the upstream's circuit breaker, and the target each attempt
//!    goes to;
//! 4. [`exchange`] — the exchange with the upstream, retried within the budget
//!    (its header work is in [`headers`]);
//! 5. [`respond`] — the response rules, the headers the policies owe the answer,
//!    metrics and the access log.
//!
//! A routed request may be traced ([`trace`]): decided as it is routed, its span
//! recorded as it is answered.
//!
//! Before all of them, a pending ACME HTTP-01 challenge is answered
//! ([`acme_challenge`]) for any host, so that issuing a certificate never depends
//! on a route existing for the name.
//!
//! The phases share a [`RequestCtx`] once the request is routed. Bodies stream in
//! both directions; nothing is buffered.

mod exchange;
mod headers;
mod policy;
mod respond;
mod route;
mod target;
mod trace;

use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

use crate::compiled::{Compiled, RouteRuntime};
use crate::GatewayInner;

/// Bodies sent to clients: an upstream's body as is, or one the gateway made.
pub type ProxyBody = Either<crate::pool::PooledBody, Full<Bytes>>;

/// Moves the upstream header lines a response may still carry as raw bytes into its
/// header map: for every consumer but the gateway's own HTTP/1.1 server.
pub fn materialize(resp: Response<ProxyBody>) -> Response<ProxyBody> {
    let (mut parts, mut body) = resp.into_parts();
    if let Either::Left(pooled) = &mut body {
        crate::pool::materialize(&mut parts.headers, pooled);
    }
    Response::from_parts(parts, body)
}

static REQUEST_SEQ: AtomicU64 = AtomicU64::new(0);

/// Request ids are taken from `REQUEST_SEQ` in blocks of this many per thread, so
/// workers do not write one counter for every request.
const SEQ_BLOCK: u64 = 1024;

thread_local! {
    /// The rest of this thread's block of request ids: `(next, end)`.
    static SEQ: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
}

/// A request sequence number no other request of this process gets.
#[inline]
fn next_seq() -> u64 {
    SEQ.with(|seq| {
        let (mut next, mut end) = seq.get();
        if next == end {
            next = REQUEST_SEQ.fetch_add(SEQ_BLOCK, Ordering::Relaxed);
            end = next + SEQ_BLOCK;
        }
        seq.set((next + 1, end));
        next
    })
}

pub(crate) const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The client of a connection, with the header forms of its address made once.
pub struct Peer {
    pub addr: SocketAddr,
    /// The IP as `X-Forwarded-For` carries it.
    ip: HeaderValue,
    /// The IP as a `Forwarded` node (`1.2.3.4` or `"[::1]"`).
    node: Box<str>,
}

impl Peer {
    pub fn new(addr: SocketAddr) -> Self {
        let ip = addr.ip().to_string();
        let node = if addr.is_ipv6() {
            format!("\"[{ip}]\"")
        } else {
            ip.clone()
        };
        Self {
            addr,
            ip: HeaderValue::from_str(&ip).unwrap_or_else(|_| HeaderValue::from_static("unknown")),
            node: node.into_boxed_str(),
        }
    }
}

/// The client's `X-Request-Id` when it is a sane token (1–128 characters of
/// letters, digits and `-._~:+/=`: UUIDs, ULIDs, base64 and trace ids fit), or a new
/// one: an id that logs and upstreams echo must not carry spaces, quotes or
/// separators a client chose.
fn request_id(headers: &HeaderMap) -> HeaderValue {
    if let Some(v) = headers.get(&X_REQUEST_ID) {
        if !v.is_empty()
            && v.len() <= 128
            && v.as_bytes().iter().all(|b| {
                b.is_ascii_alphanumeric()
                    || matches!(b, b'-' | b'.' | b'_' | b'~' | b':' | b'+' | b'/' | b'=')
            })
        {
            return v.clone();
        }
    }
    // `<8 hex digits of the process nonce>-<12 hex digits of a counter>`, without fmt.
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let n = next_seq();
    let nonce = crate::process_nonce();
    let mut buf = [0u8; 21];
    for (i, b) in buf[..8].iter_mut().enumerate() {
        *b = HEX[((nonce >> (28 - 4 * i)) & 0xf) as usize];
    }
    buf[8] = b'-';
    for (i, b) in buf[9..].iter_mut().enumerate() {
        *b = HEX[((n >> (44 - 4 * i)) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&buf).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// A JSON error response in the API's envelope.
pub fn json_error(
    status: StatusCode,
    code: &str,
    message: &str,
    extra: Option<(&str, serde_json::Value)>,
) -> Response<ProxyBody> {
    let mut body = serde_json::json!({ "error": message, "code": code, "details": {} });
    if let Some((k, v)) = extra {
        body[k] = v;
    }
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from(body.to_string()))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// What the phases of a routed request share.
struct RequestCtx<'a> {
    gw: &'a GatewayInner,
    peer: &'a Peer,
    /// The host the request was routed by, in canonical form.
    host: &'a str,
    rid: &'a HeaderValue,
    /// The request arrived over TLS.
    tls: bool,
    /// The route that matched, with its upstream.
    rt: &'a RouteRuntime,
    /// How much of the path the route's prefix matched (`strip_path` removes it).
    matched_len: usize,
    /// The request's span when it is traced.
    span: Option<&'a trace::ActiveSpan>,
}

/// A response the gateway answers before a route is known, with the request's id.
#[inline]
fn with_request_id(mut resp: Response<ProxyBody>, rid: HeaderValue) -> Response<ProxyBody> {
    resp.headers_mut().insert(X_REQUEST_ID, rid);
    resp
}

/// Where ACME CAs fetch HTTP-01 key authorizations (RFC 8555, section 8.3).
const ACME_CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// The key authorization of a pending HTTP-01 challenge, when the request asks
/// for one (`GET`/`HEAD /.well-known/acme-challenge/<token>`, any host). Unknown
/// tokens fall through to routing: an application behind the gateway may run its
/// own ACME client.
fn acme_challenge(gw: &GatewayInner, parts: &http::request::Parts) -> Option<Response<ProxyBody>> {
    let token = parts.uri.path().strip_prefix(ACME_CHALLENGE_PREFIX)?;
    if !matches!(parts.method, http::Method::GET | http::Method::HEAD) || token.is_empty() {
        return None;
    }
    let set = gw.challenges.load();
    let answer = set.answers.get(token)?;
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from(answer.clone()))));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    Some(resp)
}

/// Handles one request from `peer`: the pipeline of the module documentation.
pub async fn handle(
    gw: Arc<GatewayInner>,
    req: Request<Option<Incoming>>,
    peer: Arc<Peer>,
    tls: bool,
) -> Response<ProxyBody> {
    let started = Instant::now();
    let compiled: Arc<Compiled> = gw.current.load_full();
    let (mut parts, body) = req.into_parts();
    let rid = request_id(&parts.headers);

    if let Some(r) = acme_challenge(&gw, &parts) {
        return with_request_id(r, rid);
    }

    // 1. Route lookup.
    let (host, name_len) = match route::admit_target(&mut parts) {
        Ok(h) => h,
        Err(r) => return with_request_id(r, rid),
    };
    let host: &str = host.to_str().unwrap_or("");
    if let Some(r) = route::redirect_or_page(&gw, host, &parts.uri) {
        return with_request_id(r, rid);
    }
    let (rt, matched_len) = match route::lookup(&gw, &compiled, &mut parts, host, name_len) {
        Ok(found) => found,
        Err(r) => return with_request_id(r, rid),
    };
    // The exchange takes the request's headers; the access log keeps this one.
    let user_agent = if gw.access_log.is_some() {
        parts.headers.get(header::USER_AGENT).cloned()
    } else {
        None
    };
    // Traced or not (one branch when tracing is off); a traced request's
    // upstream gets the gateway's `traceparent`.
    let span = match &gw.tracer {
        None => None,
        Some(_) => trace::start(&compiled, &mut parts.headers, started),
    };
    let ctx = RequestCtx {
        gw: &gw,
        peer: &peer,
        host,
        rid: &rid,
        tls,
        rt,
        matched_len,
        span: span.as_ref(),
    };
    let mut resp = 'answer: {
        if let Some(r) = route::https_redirect(&ctx, &parts) {
            break 'answer r;
        }

        // 2. Policies: IP rules, CORS preflight, rate limit, body limit.
        if let Some(r) = policy::ip_rules(&ctx) {
            break 'answer r;
        }
        let origin = match policy::cors_preflight(&ctx, &parts) {
            Ok(origin) => origin,
            Err(r) => break 'answer r,
        };
        let limit = match &rt.limiter {
            None => None,
            Some(limiter) => match policy::rate_limit(&ctx, limiter, &parts).await {
                Ok(limit) => Some(limit),
                Err(r) => break 'answer r,
            },
        };
        let admitted = policy::Admitted { origin, limit };
        let refused = policy::body_limit(&ctx, &parts)
            // 3. The upstream's circuit breaker.
            .or_else(|| target::circuit_breaker(&ctx));
        let mut resp = match (refused, &rt.route.ai) {
            (Some(r), _) => r,
            // 4. An `ai` route relays to its AI provider instead (crate::ai).
            (None, Some(ai)) => {
                let mut r = crate::ai::forward(
                    &gw,
                    &rt.route.id,
                    ai,
                    &mut parts,
                    body,
                    rt.route.max_body_bytes,
                )
                .await;
                rt.response_headers.apply(r.headers_mut());
                r
            }
            // 4. The exchange with the upstream (and 5., its response rules).
            (None, None) => exchange::forward(&ctx, &mut parts, body).await,
        };
        // 5. What the policies owe the answer.
        respond::policy_headers(&ctx, &mut resp, &admitted);
        resp
    };

    // 5. Metrics, the access log and the span.
    respond::log(&ctx, &parts, &mut resp, started, user_agent.as_ref());
    if let (Some(tracer), Some(span)) = (&gw.tracer, &span) {
        trace::finish(tracer, span, &ctx, &parts, resp.status().as_u16());
    }
    resp
}
