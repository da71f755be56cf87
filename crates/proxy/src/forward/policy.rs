//! Phase 2 of the pipeline, the route's policies, in the order they are checked:
//! IP rules, a CORS preflight answered, the rate limit, then the body limit. A
//! request one of them refuses goes no further.

use std::borrow::Cow;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use fleetgate_core::gateway::Cors;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, Response, StatusCode};
use http_body_util::{Either, Full};

use super::{json_error, ProxyBody, RequestCtx};
use crate::clock;
use crate::limit::RouteLimiter;

const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// What an admitted request's response carries from its policies: the CORS
/// headers for its `Origin`, and the rate-limit headers (limit, remaining, reset).
pub(super) struct Admitted {
    pub(super) origin: Option<String>,
    pub(super) limit: Option<(u32, u32, u64)>,
}

/// The route's IP rules (deny wins, then a non-empty allow list must contain the
/// client): `None`, or the `403` of a client they refuse.
#[inline]
pub(super) fn ip_rules(ctx: &RequestCtx<'_>) -> Option<Response<ProxyBody>> {
    let rt = ctx.rt;
    let ip = ctx.peer.addr.ip();
    if rt.deny.iter().any(|n| n.contains(&ip))
        || (!rt.allow.is_empty() && !rt.allow.iter().any(|n| n.contains(&ip)))
    {
        return Some(json_error(
            StatusCode::FORBIDDEN,
            "IP_FORBIDDEN",
            &format!("{ip} may not use this route"),
            None,
        ));
    }
    None
}

/// The request's `Origin`, for the CORS headers of its response; or, for a CORS
/// preflight on a route with `cors`, the preflight's answer.
#[inline]
#[allow(clippy::result_large_err)]
pub(super) fn cors_preflight(
    ctx: &RequestCtx<'_>,
    req: &Parts,
) -> Result<Option<String>, Response<ProxyBody>> {
    let origin = req
        .headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if let (Some(cors), Some(origin)) = (&ctx.rt.route.cors, &origin) {
        if req.method == Method::OPTIONS
            && req
                .headers
                .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
        {
            return Err(preflight(cors, &req.headers, origin));
        }
    }
    Ok(origin)
}

/// The route's rate limit (`limiter`), counted in this gateway or in the shared
/// store: the rate-limit headers of an admitted request, or its `429` (a `503` when
/// the shared store is down and the gateway does not fail open).
#[allow(clippy::result_large_err)]
pub(super) async fn rate_limit(
    ctx: &RequestCtx<'_>,
    limiter: &RouteLimiter,
    req: &Parts,
) -> Result<(u32, u32, u64), Response<ProxyBody>> {
    let rt = ctx.rt;
    let route = &rt.route;
    let ip_text = ctx.peer.addr.ip().to_string();
    let key_spec = route.rate_limit.as_ref().map_or("ip", |l| l.key.as_str());
    let key = limit_key(key_spec, &req.headers, &ip_text);
    let now = clock::now_ms();
    let v = match ctx.gw.shared_limits.as_ref() {
        None => limiter.check(&key, now),
        Some(counter) => match counter
            .check(&route.id, limiter, &key, now, clock::to_wall_ms(now))
            .await
        {
            Ok(v) => v,
            Err(e) => {
                counter.report(&e, now);
                if !counter.fail_open() {
                    return Err(json_error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "RATE_LIMIT_UNAVAILABLE",
                        "the shared rate limit store is unavailable; retry later",
                        None,
                    ));
                }
                // Fail-open: admit, and count locally so one gateway still limits.
                limiter.check(&key, now)
            }
        },
    };
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
        return Err(r);
    }
    Ok((limiter.max, v.remaining, v.reset_at))
}

/// The route's body limit, against the length a request declares (a body that
/// turns out longer is cut where it passes the limit, see the exchange).
#[inline]
pub(super) fn body_limit(ctx: &RequestCtx<'_>, req: &Parts) -> Option<Response<ProxyBody>> {
    let max = ctx.rt.route.max_body_bytes?;
    let declared = req
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    declared.filter(|n| *n > max).map(|_| {
        json_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PAYLOAD_TOO_LARGE",
            &format!("request bodies on this route are limited to {max} bytes"),
            None,
        )
    })
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

pub(super) fn add_cors(headers: &mut HeaderMap, cors: &Cors, origin: &str) {
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

fn limit_key<'a>(key: &str, headers: &'a HeaderMap, ip: &'a str) -> Cow<'a, str> {
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
            Cow::Owned(format!("{key}#{}", hex::encode(&digest[..16])))
        }
        None => Cow::Borrowed(ip),
    }
}

pub(super) fn set_limit_headers(h: &mut HeaderMap, limit: u32, remaining: u32, reset_at: u64) {
    let reset_epoch = (clock::to_wall_ms(reset_at) + 999) / 1000;
    h.insert(X_RATELIMIT_LIMIT, HeaderValue::from(limit));
    h.insert(X_RATELIMIT_REMAINING, HeaderValue::from(remaining));
    h.insert(
        X_RATELIMIT_RESET,
        HeaderValue::from(reset_epoch.max(0) as u64),
    );
}
