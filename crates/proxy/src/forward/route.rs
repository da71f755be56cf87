//! Phase 1 of the pipeline, route lookup: the request-target and `Host` checked and
//! put in canonical form, a project's published redirects and pages answered, the
//! route found (a CORS preflight routed as the request it announces), and a route's
//! HTTP→HTTPS redirect.

use bytes::Bytes;
use fleetgate_core::redirects::matcher::Hit;
use fleetgate_core::request_target::{self, TargetError};
use fleetgate_core::routing::Lookup;
use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;
use http::{Method, Response, StatusCode, Uri};
use http_body_util::{Either, Full};
use std::sync::atomic::Ordering;

use super::headers::joined_lines;
use super::{json_error, ProxyBody, RequestCtx};
use crate::compiled::{Compiled, RouteRuntime};
use crate::GatewayInner;

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
pub(super) fn admit_target(
    parts: &mut Parts,
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

/// Answers from a project's published pages and redirects when one matches. The
/// match key is the raw `Host` (port included, as sent) and the request-target's path
/// with its query string, exactly as Flecto agents match; see
/// [`fleetgate_core::redirects::matcher`] for the order and rules.
pub(super) fn redirect_or_page(
    gw: &GatewayInner,
    host: &str,
    uri: &Uri,
) -> Option<Response<ProxyBody>> {
    let local = gw.redirects.load();
    let remote = gw.remote_redirects.load();
    if local.is_empty() && remote.is_none() {
        return None;
    }
    let set = local.for_host(host).or(remote.as_deref())?;
    let target = uri.path_and_query().map_or("/", |pq| pq.as_str());
    let (rule, hit) = set.lookup_rule(host, target)?;
    set.count_hit(rule);
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

/// The route of an admitted request, and how much of its path the route's prefix
/// matched; or the answer when none matches (404, or 405 when only the method does
/// not). A CORS preflight is routed as the request it announces, to a route that
/// answers preflights (one with `cors`); any other route sees the OPTIONS it is.
/// HTTP/2's cookie fields are joined on the way (an HTTP/1.1 upstream expects one
/// line).
#[allow(clippy::result_large_err)]
pub(super) fn lookup<'c>(
    gw: &GatewayInner,
    compiled: &'c Compiled,
    parts: &mut Parts,
    host: &str,
    name_len: Option<usize>,
) -> Result<(&'c RouteRuntime, usize), Response<ProxyBody>> {
    // The name to route by: canonical already (lower-case, no port) unless an IP
    // literal in brackets, which the table's own lookup unwraps.
    let route_name = name_len.and_then(|n| host.get(..n));
    if parts.version == http::Version::HTTP_2 {
        join_cookies(&mut parts.headers);
    }
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
    match lookup {
        Lookup::Found(m) => Ok((&compiled.routes[m.index], m.matched_len)),
        Lookup::MethodNotAllowed => {
            gw.metrics.unmatched.fetch_add(1, Ordering::Relaxed);
            Err(json_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "METHOD_NOT_ALLOWED",
                &format!("{} is not allowed on {}", parts.method, parts.uri.path()),
                None,
            ))
        }
        Lookup::NotFound => {
            gw.metrics.unmatched.fetch_add(1, Ordering::Relaxed);
            Err(json_error(
                StatusCode::NOT_FOUND,
                "ROUTE_NOT_FOUND",
                &format!("no route matches {} {}", parts.method, parts.uri.path()),
                Some((
                    "details",
                    serde_json::json!({ "revision": compiled.revision }),
                )),
            ))
        }
    }
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

/// A `308` to the same host and path on the HTTPS listener, for a plain-HTTP
/// request to a route that asks for HTTPS (when the gateway has an HTTPS listener).
pub(super) fn https_redirect(ctx: &RequestCtx<'_>, parts: &Parts) -> Option<Response<ProxyBody>> {
    let https_port = ctx.gw.https_port.load(Ordering::Relaxed);
    if ctx.tls || !ctx.rt.route.https_redirect || https_port == 0 {
        return None;
    }
    let name = fleetgate_core::routing::strip_port(ctx.host);
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
    Some(r)
}
