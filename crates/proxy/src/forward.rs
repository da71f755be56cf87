//! The request pipeline, in the order a request meets it:
//! route lookup → IP rules → CORS preflight → rate limit → body limit →
//! circuit breaker → target choice → forward (retrying within the budget) →
//! response rules. Bodies stream in both directions; nothing is buffered.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fleetgate_core::breaker::Admission;
use fleetgate_core::gateway::{Cors, RetryCondition, RetryOn};
use fleetgate_core::redirects::matcher::Hit;
use fleetgate_core::request_target::{self, TargetError};
use fleetgate_core::routing::{stripped_path, Lookup};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::{Either, Empty, Full, Limited};
use hyper::body::{Body, Incoming};
use hyper_util::rt::TokioIo;

use crate::clock;
use crate::compiled::{Compiled, RouteRuntime};
use crate::upstream::UpstreamBody;
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

pub(crate) const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

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
    let n = REQUEST_SEQ.fetch_add(1, Ordering::Relaxed);
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

const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Removes hop-by-hop headers (RFC 9110 §7.6.1), including those named in
/// `Connection`; keeps `Upgrade`/`Connection: upgrade` when `upgrade` is set.
fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    // One pass over the names finds which of them are present (usually none,
    // or just `Connection: keep-alive`); only those are removed.
    let mut present = 0u8;
    let mut has_upgrade = false;
    for k in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == k) {
            present |= 1 << i;
        } else if k == header::UPGRADE {
            has_upgrade = true;
        }
    }
    if present & 1 != 0 {
        // Headers named by `Connection` are hop-by-hop too (`keep-alive`, `close`
        // and `upgrade` name nothing else to remove).
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|t| {
                !t.eq_ignore_ascii_case("keep-alive")
                    && !t.eq_ignore_ascii_case("close")
                    && !t.eq_ignore_ascii_case("upgrade")
            })
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect();
        for n in named {
            headers.remove(n);
        }
    }
    for (i, n) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(n);
        }
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else if has_upgrade {
        headers.remove(header::UPGRADE);
    }
}

/// The protocol names (without versions) of `Upgrade` values.
fn upgrade_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::UPGRADE)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("\u{0}").split(','))
        .map(|t| t.split('/').next().unwrap_or("").trim())
}

/// Whether a request asks to switch protocols and the route allows every protocol
/// it names: `websocket` when the route allows WebSockets, and those it lists.
fn upgrade_allowed(route: &fleetgate_core::gateway::Route, headers: &HeaderMap) -> bool {
    is_upgrade(headers)
        && upgrade_tokens(headers).all(|t| {
            (route.websocket && t.eq_ignore_ascii_case("websocket"))
                || route.upgrades.iter().any(|u| u.eq_ignore_ascii_case(t))
        })
}

/// Whether an upstream's `101` switches to a protocol the request asked for.
fn upgrade_answered(requested: &HeaderMap, answer: &HeaderMap) -> bool {
    let mut got = upgrade_tokens(answer);
    match (got.next(), got.next()) {
        (Some(p), None) => upgrade_tokens(requested).any(|r| r.eq_ignore_ascii_case(p)),
        _ => false,
    }
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}

/// Every non-empty line of a header, in order, joined with `sep`: `", "` for a list
/// header a client split over several lines (RFC 9110 §5.3), `"; "` for HTTP/2's
/// cookie fields (RFC 9113 §8.2.3).
fn joined_lines(headers: &HeaderMap, name: &HeaderName, sep: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for v in headers.get_all(name).iter().filter(|v| !v.is_empty()) {
        if !out.is_empty() {
            out.extend_from_slice(sep);
        }
        out.extend_from_slice(v.as_bytes());
    }
    out
}

fn append_forwarded(headers: &mut HeaderMap, peer: &Peer, host: &str, proto: &'static str) {
    let mut xff = joined_lines(headers, &X_FORWARDED_FOR, b", ");
    if xff.is_empty() {
        headers.insert(X_FORWARDED_FOR, peer.ip.clone());
    } else {
        xff.extend_from_slice(b", ");
        xff.extend_from_slice(peer.ip.as_bytes());
        if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(xff)) {
            headers.insert(X_FORWARDED_FOR, v);
        }
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    match headers.get(header::HOST).cloned() {
        Some(v) => {
            headers.insert(X_FORWARDED_HOST, v);
        }
        None => {
            if let Ok(v) = HeaderValue::from_str(host) {
                headers.insert(X_FORWARDED_HOST, v);
            }
        }
    }
    let mut fwd = joined_lines(headers, &header::FORWARDED, b", ");
    if !fwd.is_empty() {
        fwd.extend_from_slice(b", ");
    }
    fwd.extend_from_slice(b"for=");
    fwd.extend_from_slice(peer.node.as_bytes());
    fwd.extend_from_slice(b";host=\"");
    fwd.extend(host.bytes().filter(|c| *c != b'"' && *c != b'\\'));
    fwd.extend_from_slice(b"\";proto=");
    fwd.extend_from_slice(proto.as_bytes());
    // The String's buffer becomes the header value without another copy.
    if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(fwd)) {
        headers.insert(header::FORWARDED, v);
    }
}

/// The forwarding headers written into a bodyless request's head (see
/// [`write_request_head`]), in place of the client's own.
struct Forwarding<'a> {
    peer: &'a Peer,
    host: &'a str,
    proto: &'static str,
    rid: &'a HeaderValue,
}

fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Writes the HTTP/1.1 head of a bodyless request to `out`: the request line, `Host`
/// naming the target, the client's headers without hop-by-hop ones (RFC 9110 §7.6.1;
/// headers named in `Connection` must be gone already) and, with `fwd`, the
/// forwarding headers `append_forwarded` would add (`X-Forwarded-For` and `Forwarded`
/// extend what the client sent), and `X-Request-Id`. Without `fwd`, they are in
/// `headers` already. One pass over the client's headers, no header map built.
fn write_request_head(
    out: &mut Vec<u8>,
    method: &Method,
    path: [&str; 2],
    target_host: &HeaderValue,
    headers: &HeaderMap,
    fwd: Option<&Forwarding<'_>>,
) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(path[0].as_bytes());
    out.extend_from_slice(path[1].as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    push_header(out, b"host", target_host.as_bytes());
    // Every line a client sent of these two lists, in order (usually none or one).
    let mut xff: Vec<&HeaderValue> = Vec::new();
    let mut forwarded: Vec<&HeaderValue> = Vec::new();
    for (name, value) in headers {
        if *name == header::HOST || HOP_BY_HOP.iter().any(|h| h == name) || *name == header::UPGRADE
        {
            continue;
        }
        if fwd.is_some() {
            if *name == X_FORWARDED_FOR {
                xff.push(value);
                continue;
            }
            if *name == header::FORWARDED {
                forwarded.push(value);
                continue;
            }
            if *name == X_FORWARDED_PROTO || *name == X_FORWARDED_HOST || *name == X_REQUEST_ID {
                continue;
            }
        }
        push_header(out, name.as_str().as_bytes(), value.as_bytes());
    }
    if let Some(f) = fwd {
        out.extend_from_slice(b"x-forwarded-for: ");
        for prev in xff.iter().filter(|v| !v.is_empty()) {
            out.extend_from_slice(prev.as_bytes());
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(f.peer.ip.as_bytes());
        out.extend_from_slice(b"\r\n");
        push_header(out, b"x-forwarded-proto", f.proto.as_bytes());
        push_header(out, b"x-forwarded-host", f.host.as_bytes());
        out.extend_from_slice(b"forwarded: ");
        for prev in forwarded.iter().filter(|v| !v.is_empty()) {
            out.extend_from_slice(prev.as_bytes());
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(b"for=");
        out.extend_from_slice(f.peer.node.as_bytes());
        out.extend_from_slice(b";host=\"");
        out.extend(f.host.bytes().filter(|c| *c != b'"' && *c != b'\\'));
        out.extend_from_slice(b"\";proto=");
        out.extend_from_slice(f.proto.as_bytes());
        out.extend_from_slice(b"\r\n");
        push_header(out, b"x-request-id", f.rid.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

fn origin_allowed<'a>(cors: &Cors, origin: &'a str) -> Option<&'a str> {
    if cors.allow_origins.iter().any(|o| o == "*") {
        return Some(if cors.allow_credentials { origin } else { "*" });
    }
    cors.allow_origins
        .iter()
        .any(|o| o.eq_ignore_ascii_case(origin))
        .then_some(origin)
}

fn add_cors(headers: &mut HeaderMap, cors: &Cors, origin: &str) {
    let Some(allowed) = origin_allowed(cors, origin) else {
        return;
    };
    if let Ok(v) = HeaderValue::from_str(allowed) {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
    }
    if cors.allow_credentials {
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    if !cors.expose_headers.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&cors.expose_headers.join(", ")) {
            headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, v);
        }
    }
    headers.append(header::VARY, HeaderValue::from_static("Origin"));
}

fn preflight(cors: &Cors, req_headers: &HeaderMap, origin: &str) -> Response<ProxyBody> {
    let mut resp = Response::new(Either::Right(Full::new(Bytes::new())));
    *resp.status_mut() = StatusCode::NO_CONTENT;
    let h = resp.headers_mut();
    add_cors(h, cors, origin);
    if let Ok(v) = HeaderValue::from_str(&cors.allow_methods.join(", ")) {
        h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, v);
    }
    let allow_headers = if cors.allow_headers.iter().any(|x| x == "*") {
        req_headers
            .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
            .cloned()
    } else {
        HeaderValue::from_str(&cors.allow_headers.join(", ")).ok()
    };
    if let Some(v) = allow_headers {
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v);
    }
    if let Ok(v) = HeaderValue::from_str(&cors.max_age_secs.to_string()) {
        h.insert(header::ACCESS_CONTROL_MAX_AGE, v);
    }
    resp
}

fn limit_key<'a>(key: &str, headers: &'a HeaderMap, ip: &'a str) -> std::borrow::Cow<'a, str> {
    let from_header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
    };
    let v = match key {
        "api_key" => from_header("authorization").or_else(|| from_header("x-api-key")),
        k => k.strip_prefix("header:").and_then(from_header),
    };
    // A credential or header value is counted by its digest: the counter key (in
    // memory and in Redis) holds no API key in clear and has a fixed size.
    match v {
        Some(v) => {
            use sha2::Digest;
            let digest = sha2::Sha256::digest(v.as_bytes());
            std::borrow::Cow::Owned(format!("{key}#{}", hex::encode(&digest[..16])))
        }
        None => std::borrow::Cow::Borrowed(ip),
    }
}

fn set_limit_headers(h: &mut HeaderMap, limit: u32, remaining: u32, reset_at: u64) {
    let reset_epoch = (clock::to_wall_ms(reset_at) + 999) / 1000;
    h.insert(X_RATELIMIT_LIMIT, HeaderValue::from(limit));
    h.insert(X_RATELIMIT_REMAINING, HeaderValue::from(remaining));
    h.insert(
        X_RATELIMIT_RESET,
        HeaderValue::from(reset_epoch.max(0) as u64),
    );
}

/// Whether the request carries no body. An HTTP/2 request's body is announced by
/// its frames, not by `Content-Length` (which it may leave out), so the body itself
/// is asked: hyper gives a request with nothing to read an empty body.
fn bodyless(body: &Option<Incoming>) -> bool {
    body.as_ref().is_none_or(Body::is_end_stream)
}

fn retry_on(rt: &RouteRuntime, cond: RetryOn) -> bool {
    rt.upstream.config.retries.on.contains(&cond)
}

/// What the pipeline knows about the request besides its parts.
struct Ctx<'a> {
    peer: &'a Peer,
    client: SocketAddr,
    host: &'a str,
    matched_len: usize,
    rid: &'a HeaderValue,
    /// The request arrived over TLS.
    tls: bool,
    client_body_timeout: Duration,
}

/// Answers from a project's published pages and redirects when one matches. The
/// match key is the raw `Host` (port included, as sent) and the request-target's path
/// with its query string, exactly as Flecto agents match; see
/// [`fleetgate_core::redirects::matcher`] for the order and rules.
fn redirect_or_page(gw: &GatewayInner, host: &str, uri: &Uri) -> Option<Response<ProxyBody>> {
    let local = gw.redirects.load();
    let remote = gw.remote_redirects.load();
    if local.is_empty() && remote.is_none() {
        return None;
    }
    let set = local.for_host(host).or(remote.as_deref())?;
    let target = uri.path_and_query().map_or("/", |pq| pq.as_str());
    let hit = set.lookup(host, target)?;
    let mut resp = match hit {
        Hit::Page {
            content,
            content_type,
        } => {
            let mut r = Response::new(Either::Right(Full::new(content.clone())));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(content_type.mime()),
            );
            r
        }
        Hit::Redirect { status, location } => {
            let mut r = Response::new(Either::Right(Full::new(Bytes::new())));
            *r.status_mut() = StatusCode::from_u16(status.code()).unwrap_or(StatusCode::FOUND);
            match HeaderValue::from_bytes(location.as_bytes()) {
                Ok(v) => {
                    r.headers_mut().insert(header::LOCATION, v);
                }
                Err(_) => {
                    return Some(json_error(
                        StatusCode::BAD_GATEWAY,
                        "BAD_REDIRECT",
                        "the matching redirect produced a Location that is not a valid header",
                        None,
                    ))
                }
            }
            r
        }
    };
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Some(resp)
}

/// A 400 for a request the gateway will not route, closing the connection (as
/// nginx does: what follows such a request cannot be trusted to be framed right).
fn bad_request(what: &str) -> Response<ProxyBody> {
    let mut r = json_error(StatusCode::BAD_REQUEST, "BAD_REQUEST", what, None);
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

/// Checks the method, request-target and `Host` of a request before anything is
/// routed on them, puts the path in its canonical form
/// ([`fleetgate_core::request_target`]) and returns the host to route by:
/// - `CONNECT`, authority-form targets and `*` with any method but `OPTIONS` are
///   refused; `OPTIONS *` is answered here (it asks about the server, not a
///   resource);
/// - an absolute-form target (and HTTP/2's `:authority`) names the host; a `Host`
///   header beside it must name the same one (RFC 9112 §3.2.2, RFC 9113 §8.3.1);
/// - HTTP/1.1 needs exactly one `Host`, not empty and without a path (nginx: 400).
#[allow(clippy::result_large_err)]
fn admit_target(
    parts: &mut http::request::Parts,
) -> Result<(HeaderValue, Option<usize>), Response<ProxyBody>> {
    use std::borrow::Cow;
    let bad_host = |e: TargetError| bad_request(&e.to_string());
    if parts.method == Method::CONNECT {
        return Err(bad_request("CONNECT is not supported by this gateway"));
    }
    if parts.uri.path() == "*" {
        if parts.method != Method::OPTIONS {
            return Err(bad_request(
                "the request-target '*' is only valid for OPTIONS",
            ));
        }
        let mut r = Response::new(Either::Right(Full::new(Bytes::new())));
        r.headers_mut().insert(
            header::ALLOW,
            HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
        );
        return Err(r);
    }
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    let host_header = hosts.next();
    if hosts.next().is_some() {
        return Err(bad_request("the request has more than one Host header"));
    }
    // The host to route by, as a header value: the client's own bytes (shared, not
    // copied) when they are in canonical form already.
    let host_header = match host_header {
        None => None,
        Some(v) => {
            let (canonical, name_len) =
                request_target::canonical_host(v.as_bytes()).map_err(bad_host)?;
            let value = match canonical {
                None => v.clone(),
                Some(h) => HeaderValue::from_maybe_shared(Bytes::from(h))
                    .map_err(|_| bad_host(TargetError::BadHost))?,
            };
            Some((value, name_len))
        }
    };
    let authority = match (parts.uri.scheme_str(), parts.uri.authority()) {
        (None, None) => None,
        (Some("http" | "https"), Some(a)) => {
            if a.as_str().contains('@') {
                return Err(bad_request(
                    "the request-target's authority may not carry user information",
                ));
            }
            let (canonical, name_len) =
                request_target::canonical_host(a.as_str().as_bytes()).map_err(bad_host)?;
            let h = canonical.as_deref().unwrap_or(a.as_str());
            Some((
                HeaderValue::from_str(h).map_err(|_| bad_host(TargetError::BadHost))?,
                name_len,
            ))
        }
        (Some(_), _) => {
            return Err(bad_request(
                "the request-target's scheme must be http or https",
            ))
        }
        (None, Some(_)) => {
            return Err(bad_request(
                "the request-target must be a path starting with '/' or an absolute URI",
            ))
        }
    };
    let host = match (authority, host_header) {
        (Some(a), Some(h)) if a.0 != h.0 => {
            return Err(bad_request(
                "the Host header does not name the host of the request-target",
            ))
        }
        (Some(a), _) if parts.version != http::Version::HTTP_11 => a,
        (Some(_), None) => return Err(bad_request("the request has no Host header")),
        (Some(a), Some(_)) => a,
        (None, Some(h)) => h,
        (None, None) if parts.version == http::Version::HTTP_10 => {
            (HeaderValue::from_static(""), Some(0))
        }
        (None, None) => return Err(bad_request("the request has no Host header")),
    };
    match request_target::normalize_path(parts.uri.path()) {
        Ok(Cow::Borrowed(_)) => {}
        Ok(Cow::Owned(path)) => {
            let pq = match parts.uri.query() {
                Some(q) => format!("{path}?{q}"),
                None => path,
            };
            let mut uri = std::mem::take(&mut parts.uri).into_parts();
            uri.path_and_query = Some(
                http::uri::PathAndQuery::try_from(pq)
                    .map_err(|_| bad_host(TargetError::BadPercentEncoding))?,
            );
            parts.uri = Uri::from_parts(uri).map_err(|_| bad_request("invalid request-target"))?;
        }
        Err(e) => return Err(bad_request(&e.to_string())),
    }
    Ok(host)
}

/// HTTP/2 may split `Cookie` into one field per cookie; an HTTP/1.1 upstream
/// expects one line, joined with `; ` (RFC 9113 §8.2.3).
fn join_cookies(headers: &mut HeaderMap) {
    let mut all = headers.get_all(header::COOKIE).iter();
    if all.nth(1).is_none() {
        return;
    }
    let joined = joined_lines(headers, &header::COOKIE, b"; ");
    if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(joined)) {
        headers.insert(header::COOKIE, v);
    }
}

/// Handles one request from `peer`.
pub async fn handle(
    gw: Arc<GatewayInner>,
    req: Request<Option<Incoming>>,
    peer: Arc<Peer>,
    tls: bool,
) -> Response<ProxyBody> {
    let client = peer.addr;
    let started = Instant::now();
    let compiled: Arc<Compiled> = gw.current.load_full();
    let (mut parts, body) = req.into_parts();
    let rid = request_id(&parts.headers);
    let (host, name_len) = match admit_target(&mut parts) {
        Ok(h) => h,
        Err(mut r) => {
            r.headers_mut().insert(X_REQUEST_ID, rid);
            return r;
        }
    };
    let host: &str = host.to_str().unwrap_or("");
    // The name to route by: canonical already (lower-case, no port) unless an IP
    // literal in brackets, which the table's own lookup unwraps.
    let route_name = name_len.and_then(|n| host.get(..n));
    if let Some(mut r) = redirect_or_page(&gw, host, &parts.uri) {
        r.headers_mut().insert(X_REQUEST_ID, rid);
        return r;
    }
    let user_agent = if gw.access_log.is_some() {
        parts.headers.get(header::USER_AGENT).cloned()
    } else {
        None
    };
    if parts.version == http::Version::HTTP_2 {
        join_cookies(&mut parts.headers);
    }
    // A CORS preflight is routed as the request it announces, to a route that
    // answers preflights (one with `cors`); any other route sees the OPTIONS it is.
    let preflight_for = match parts.headers.get(header::ACCESS_CONTROL_REQUEST_METHOD) {
        Some(m)
            if parts.method == Method::OPTIONS && parts.headers.contains_key(header::ORIGIN) =>
        {
            Some(m.to_str().unwrap_or("OPTIONS"))
        }
        _ => None,
    };
    let route = |method: &str| match route_name {
        Some(name) => compiled.table.lookup_name(name, parts.uri.path(), method),
        None => compiled.table.lookup(host, parts.uri.path(), method),
    };
    let mut lookup = route(preflight_for.unwrap_or(parts.method.as_str()));
    if let (Some(_), Lookup::Found(m)) = (preflight_for, lookup) {
        if compiled.routes[m.index].route.cors.is_none() {
            lookup = route("OPTIONS");
        }
    }
    let m = match lookup {
        Lookup::Found(m) => m,
        Lookup::MethodNotAllowed => {
            gw.metrics.unmatched.fetch_add(1, Ordering::Relaxed);
            let mut r = json_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "METHOD_NOT_ALLOWED",
                &format!("{} is not allowed on {}", parts.method, parts.uri.path()),
                None,
            );
            r.headers_mut().insert(X_REQUEST_ID, rid);
            return r;
        }
        Lookup::NotFound => {
            gw.metrics.unmatched.fetch_add(1, Ordering::Relaxed);
            let mut r = json_error(
                StatusCode::NOT_FOUND,
                "ROUTE_NOT_FOUND",
                &format!("no route matches {} {}", parts.method, parts.uri.path()),
                Some((
                    "details",
                    serde_json::json!({ "revision": compiled.revision }),
                )),
            );
            r.headers_mut().insert(X_REQUEST_ID, rid);
            return r;
        }
    };
    let rt = &compiled.routes[m.index];
    let ctx = Ctx {
        peer: &peer,
        client,
        host,
        matched_len: m.matched_len,
        rid: &rid,
        tls,
        client_body_timeout: gw.client_body_timeout,
    };
    let https_port = gw.https_port.load(Ordering::Relaxed);
    let mut resp = if !tls && rt.route.https_redirect && https_port != 0 {
        https_redirect(&parts, host, https_port)
    } else {
        proxy(rt, gw.shared_limits.as_ref(), &mut parts, body, &ctx).await
    };
    let status = resp.status().as_u16();
    rt.metrics
        .observe(status, started.elapsed().as_micros() as u64);
    resp.headers_mut().insert(X_REQUEST_ID, rid.clone());
    if let Some(log) = &gw.access_log {
        log.write(&crate::access_log::Entry {
            request_id: rid.to_str().unwrap_or(""),
            client: client.ip(),
            method: parts.method.as_str(),
            host,
            path: parts.uri.path(),
            query: parts.uri.query(),
            status,
            route: &rt.route.id,
            upstream: &rt.upstream.name,
            duration_ms: started.elapsed().as_secs_f64() * 1000.0,
            user_agent: user_agent.as_ref().and_then(|v| v.to_str().ok()),
        });
    }
    resp
}

/// `308` to the same host and path on the HTTPS listener.
fn https_redirect(
    parts: &http::request::Parts,
    host: &str,
    https_port: u16,
) -> Response<ProxyBody> {
    let name = fleetgate_core::routing::strip_port(host);
    let name = if name.contains(':') {
        format!("[{name}]")
    } else {
        name.to_string()
    };
    let authority = if https_port == 443 {
        name
    } else {
        format!("{name}:{https_port}")
    };
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let mut r = Response::new(Either::Right(Full::new(Bytes::new())));
    *r.status_mut() = StatusCode::PERMANENT_REDIRECT;
    if let Ok(v) = HeaderValue::from_str(&format!("https://{authority}{pq}")) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

async fn proxy(
    rt: &RouteRuntime,
    shared: Option<&crate::limit::SharedCounter>,
    req: &mut http::request::Parts,
    body: Option<Incoming>,
    ctx: &Ctx<'_>,
) -> Response<ProxyBody> {
    let route = &rt.route;
    let client = ctx.client;
    // IP rules: deny wins, then a non-empty allow list must contain the client.
    let ip = client.ip();
    if rt.deny.iter().any(|n| n.contains(&ip))
        || (!rt.allow.is_empty() && !rt.allow.iter().any(|n| n.contains(&ip)))
    {
        return json_error(
            StatusCode::FORBIDDEN,
            "IP_FORBIDDEN",
            &format!("{ip} may not use this route"),
            None,
        );
    }
    let origin = req
        .headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if let (Some(cors), Some(origin)) = (&route.cors, &origin) {
        if req.method == Method::OPTIONS
            && req
                .headers
                .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
        {
            return preflight(cors, &req.headers, origin);
        }
    }
    // Rate limit.
    let mut limit_headers = None;
    if let Some(limiter) = &rt.limiter {
        let ip_text = ip.to_string();
        let key_spec = route.rate_limit.as_ref().map_or("ip", |l| l.key.as_str());
        let key = limit_key(key_spec, &req.headers, &ip_text);
        let now = clock::now_ms();
        let v = match shared {
            None => limiter.check(&key, now),
            Some(counter) => match counter
                .check(&route.id, limiter, &key, now, clock::to_wall_ms(now))
                .await
            {
                Ok(v) => v,
                Err(e) => {
                    counter.report(&e, now);
                    if !counter.fail_open() {
                        return json_error(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "RATE_LIMIT_UNAVAILABLE",
                            "the shared rate limit store is unavailable; retry later",
                            None,
                        );
                    }
                    // Fail-open: admit, and count locally so one gateway still limits.
                    limiter.check(&key, now)
                }
            },
        };
        limit_headers = Some((limiter.max, v.remaining, v.reset_at));
        if !v.allowed {
            rt.metrics.rate_limited.fetch_add(1, Ordering::Relaxed);
            let retry = v
                .reset_at
                .saturating_sub(clock::now_ms())
                .div_ceil(1000)
                .max(1);
            let message = route
                .rate_limit
                .as_ref()
                .map_or("Too many requests", |l| l.message.as_str());
            let mut r = json_error(
                StatusCode::TOO_MANY_REQUESTS,
                "RATE_LIMITED",
                message,
                Some(("retryAfter", retry.into())),
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry));
            set_limit_headers(r.headers_mut(), limiter.max, 0, v.reset_at);
            return r;
        }
    }
    let mut resp = forward(rt, req, body, ctx).await;
    let h = resp.headers_mut();
    if let Some((limit, remaining, reset)) = limit_headers {
        set_limit_headers(h, limit, remaining, reset);
    }
    if let (Some(cors), Some(origin)) = (&route.cors, &origin) {
        add_cors(h, cors, origin);
    }
    resp
}

async fn forward(
    rt: &RouteRuntime,
    req: &mut http::request::Parts,
    body: Option<Incoming>,
    ctx: &Ctx<'_>,
) -> Response<ProxyBody> {
    let (client, host, matched_len, rid) = (ctx.client, ctx.host, ctx.matched_len, ctx.rid);
    let route = &rt.route;
    let up = &rt.upstream;
    if let Some(max) = route.max_body_bytes {
        let declared = req
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max) {
            return json_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "PAYLOAD_TOO_LARGE",
                &format!("request bodies on this route are limited to {max} bytes"),
                None,
            );
        }
    }
    match up.admit() {
        Admission::Allowed => {}
        Admission::Rejected { retry_after_ms } => {
            rt.upstream_metrics
                .breaker_rejections
                .fetch_add(1, Ordering::Relaxed);
            let secs = retry_after_ms.div_ceil(1000).max(1);
            let mut r = json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "CIRCUIT_OPEN",
                &format!(
                    "upstream {} is failing; its circuit breaker is open",
                    up.name
                ),
                Some(("retryAfter", secs.into())),
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            return r;
        }
    }
    let upgrade = upgrade_allowed(route, &req.headers);
    // What the client asked to switch to, to check the upstream's answer against.
    let asked_upgrade = upgrade.then(|| {
        let mut asked = HeaderMap::new();
        for v in req.headers.get_all(header::UPGRADE) {
            asked.append(header::UPGRADE, v.clone());
        }
        asked
    });
    let client_upgrade = if upgrade {
        req.extensions.remove::<hyper::upgrade::OnUpgrade>()
    } else {
        None
    };
    // The path and query to forward; without strip_path the original is reused as is.
    let path_and_query: std::borrow::Cow<'_, str> = if route.strip_path {
        let path = stripped_path(req.uri.path(), matched_len);
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
    let retryable = bodyless(&body);
    // Only an idempotent request may be sent again after it reached an upstream
    // (RFC 9110 §9.2.2): a POST answered 502 or cut by a timeout may have taken
    // effect. Any bodyless request may try another target when it never got there.
    let idempotent = crate::pool::idempotent(&req.method);
    // A bodyless request that does not upgrade is written out as bytes on a
    // connection this task drives (pool.rs); the others go through hyper's client.
    let direct = retryable && !upgrade;
    let proto = if ctx.tls { "https" } else { "http" };
    let mut headers = std::mem::take(&mut req.headers);
    // Without header rules, a direct request's forwarding headers are written with
    // its head; otherwise they go into the map first, where the rules can change them.
    let fwd = (direct && rt.request_headers.is_empty()).then_some(Forwarding {
        peer: ctx.peer,
        host,
        proto,
        rid,
    });
    if fwd.is_none() {
        // Room for the five headers added below at once: a client's map is sized for
        // what it sent, and growing it one insert at a time rehashes it repeatedly.
        headers.reserve(5);
        strip_hop_by_hop(&mut headers, upgrade);
        append_forwarded(&mut headers, ctx.peer, host, proto);
        headers.insert(X_REQUEST_ID, rid.clone());
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
    let mut head = Vec::new();
    let attempts = 1 + if retryable {
        up.config.retries.attempts
    } else {
        0
    };
    let client_body_timeout = ctx.client_body_timeout;
    let stalled = |b| crate::stall::StallBody::new(b, client_body_timeout, "the client");
    let mut body = Some(match (body, route.max_body_bytes) {
        (None, _) => Either::Right(Either::Right(Empty::new())),
        (Some(b), Some(max)) => Either::Right(Either::Left(Limited::new(stalled(b), max as usize))),
        (Some(b), None) => Either::Left(stalled(b)),
    });
    let request_timeout = Duration::from_millis(up.config.timeouts.request_ms);
    // Targets already tried (at most 1 + 5 retries): a fixed array, no allocation.
    let mut tried_buf = [usize::MAX; 6];
    let mut tried_len = 0usize;
    let mut last_error: Option<Response<ProxyBody>> = None;
    let key = match up.config.load_balancing {
        fleetgate_core::gateway::LoadBalancing::ConsistentHash => {
            hash_key(&up.config.hash_on, &headers, &client)
        }
        _ => None,
    };
    for attempt in 0..attempts {
        let Some(ti) = up.pick(key.as_deref(), &tried_buf[..tried_len]) else {
            break;
        };
        if tried_len < tried_buf.len() {
            tried_buf[tried_len] = ti;
            tried_len += 1;
        }
        if attempt > 0 {
            rt.upstream_metrics.retries.fetch_add(1, Ordering::Relaxed);
        }
        rt.upstream_metrics.requests.fetch_add(1, Ordering::Relaxed);
        let target = &up.targets[ti];
        let more = attempt + 1 < attempts;
        target.active.fetch_add(1, Ordering::Relaxed);
        let sent = Instant::now();
        let res = if direct {
            head.clear();
            head.reserve(512);
            write_request_head(
                &mut head,
                &req.method,
                [&target.base_path, &path_and_query],
                &target.host_header,
                &headers,
                fwd.as_ref(),
            );
            target
                .pool
                .send_bodyless(
                    &head,
                    req.method == Method::HEAD,
                    crate::pool::idempotent(&req.method),
                    request_timeout,
                )
                .await
        } else {
            let pq = match &reuse_pq {
                Some(pq) if target.base_path.is_empty() => Ok(pq.clone()),
                _ => http::uri::PathAndQuery::try_from(format!(
                    "{}{}",
                    target.base_path, path_and_query
                )),
            };
            // Origin form (`/path?query`): the connection already names the target.
            let uri = match pq.map_err(http::Error::from).map(Uri::from) {
                Ok(u) => u,
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
            let mut out = Request::new(
                body.take()
                    .unwrap_or(Either::Right(Either::Right(Empty::new())))
                    as UpstreamBody,
            );
            *out.method_mut() = req.method.clone();
            *out.uri_mut() = uri;
            // The last possible attempt takes the headers; earlier ones keep a copy for retries.
            *out.headers_mut() = if more {
                headers.clone()
            } else {
                std::mem::take(&mut headers)
            };
            out.headers_mut()
                .insert(header::HOST, target.host_header.clone());
            tokio::time::timeout(request_timeout, target.pool.send(out))
                .await
                .unwrap_or(Err(crate::pool::SendError::TimedOut))
        };
        target.active.fetch_sub(1, Ordering::Relaxed);
        rt.upstream_metrics
            .latency
            .record(sent.elapsed().as_micros() as u64);
        match res {
            Ok(mut resp) => {
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
                    // A switch nobody asked for, or to another protocol than asked,
                    // would hand the client's connection to something it did not
                    // choose.
                    if !asked_upgrade
                        .as_ref()
                        .is_some_and(|asked| upgrade_answered(asked, resp.headers()))
                    {
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
                        tokio::spawn(async move {
                            match tokio::try_join!(client_upgrade, upstream_upgrade) {
                                Ok((c, u)) => {
                                    let _ = tokio::io::copy_bidirectional(
                                        &mut TokioIo::new(c),
                                        &mut TokioIo::new(u),
                                    )
                                    .await;
                                }
                                Err(e) => tracing::debug!(error = %e, "websocket upgrade failed"),
                            }
                        });
                    }
                    let (parts, body) = resp.into_parts();
                    return Response::from_parts(parts, Either::Left(body));
                }
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
                } else if !rt.response_headers.is_empty() || route.cors.is_some() {
                    // Rules and CORS edit the upstream's own headers: they need them as a map.
                    crate::pool::materialize(&mut parts.headers, &mut body);
                }
                rt.response_headers.apply(&mut parts.headers);
                return Response::from_parts(parts, Either::Left(body));
            }
            Err(crate::pool::SendError::TimedOut) => {
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
                let connect = matches!(e, crate::pool::SendError::Connect(_));
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

fn hash_key(spec: &str, headers: &HeaderMap, client: &SocketAddr) -> Option<Vec<u8>> {
    if let Some(name) = spec.strip_prefix("header:") {
        return headers.get(name).map(|v| v.as_bytes().to_vec());
    }
    if let Some(name) = spec.strip_prefix("cookie:") {
        return headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|kv| kv.trim().split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_bytes().to_vec());
    }
    Some(client.ip().to_string().into_bytes())
}

#[cfg(test)]
mod hop_tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop_and_connection_named_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-private, Upgrade"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        let mut plain = h.clone();
        strip_hop_by_hop(&mut plain, false);
        let names: Vec<&str> = plain.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-kept"]);
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h[header::CONNECTION], "upgrade");
        assert_eq!(h[header::UPGRADE], "websocket");
        assert!(!h.contains_key("x-private") && !h.contains_key("keep-alive"));
    }
}
