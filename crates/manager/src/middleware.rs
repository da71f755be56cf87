//! Layers around every API request: request ids (echoed or generated, carried by
//! the tracing span so every log line has one), metrics, and the admin rate limit.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use fleetgate_core::time::now_ms;
use tracing::Instrument;

use crate::auth::{authenticate, AuthContext, Credential};
use crate::error::ApiError;
use crate::extract::{client_ip, RequestId};
use crate::metrics::method_label;
use crate::AppState;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

fn acceptable_request_id(v: &HeaderValue) -> Option<String> {
    let s = v.to_str().ok()?;
    (!s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_graphic()))
        .then(|| s.to_string())
}

/// Whether a URI's path or query holds an encoded NUL (`%00`), which no store
/// can keep in text.
fn has_encoded_nul(uri: &axum::http::Uri) -> bool {
    let text = uri.path_and_query().map_or("", |p| p.as_str());
    text.as_bytes()
        .windows(3)
        .any(|w| w[0] == b'%' && w[1] == b'0' && w[2] == b'0')
}

/// Echoes `X-Request-Id` (or generates one) and runs the request inside a span
/// that carries it. A URI with an encoded NUL is refused here with a 400.
pub async fn request_id(mut req: Request, next: Next) -> Response {
    if has_encoded_nul(req.uri()) {
        return crate::error::ApiError::bad_request(
            "uri",
            "the path and query must not contain an encoded NUL (%00)",
        )
        .into_response();
    }
    let id = req
        .headers()
        .get(&REQUEST_ID)
        .and_then(acceptable_request_id)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    req.extensions_mut().insert(RequestId(id.clone()));
    let span = tracing::info_span!("request", request_id = %id, method = %req.method(), path = %req.uri().path());
    let mut resp = async move {
        let started = Instant::now();
        let resp = next.run(req).await;
        tracing::debug!(
            status = resp.status().as_u16(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "handled"
        );
        resp
    }
    .instrument(span)
    .await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(REQUEST_ID, v);
    }
    resp
}

/// Counts the request under its route template.
pub async fn track_metrics(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = method_label(req.method());
    let started = Instant::now();
    let resp = next.run(req).await;
    state.metrics.observe(
        method,
        &route,
        resp.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    resp
}

/// The admin API rate limit on `/api/*` except the agent sync API, keyed by API key,
/// session or client IP, with `X-RateLimit-*` headers on every response it covers.
/// API keys and anonymous callers get `api.rate_limit_per_minute`, dashboard
/// sessions `api.session_rate_limit_per_minute`.
pub async fn rate_limit(State(state): State<AppState>, req: Request, next: Next) -> Response {
    // The agent sync API counts per token under its own limit (see `api::flecto`).
    let path = req.uri().path();
    if !path.starts_with("/api/") || path.starts_with(crate::api::flecto::SYNC_PREFIX) {
        return next.run(req).await;
    }
    let api = state.settings().api.clone();
    if api.rate_limit_per_minute == 0 && api.session_rate_limit_per_minute == 0 {
        return next.run(req).await;
    }
    let (mut parts, body) = req.into_parts();
    // Resolve the caller once; the auth layer reuses it. Bad credentials are
    // rejected there, here they only mean "count by IP". Signed-in dashboard
    // sessions count under their own allowance.
    let (key, limit) = match authenticate(&state, &parts).await {
        Ok(Some(ctx)) => {
            let counted = match &ctx.credential {
                Credential::ApiKey(k) => (format!("key:{}", k.id), api.rate_limit_per_minute),
                Credential::Session { token_hash } => (
                    format!("session:{}", &token_hash[..16.min(token_hash.len())]),
                    api.session_rate_limit_per_minute,
                ),
            };
            parts.extensions.insert(Arc::new(ctx));
            counted
        }
        Ok(None) | Err(_) => (
            format!("ip:{}", client_ip(&parts)),
            api.rate_limit_per_minute,
        ),
    };
    if limit == 0 {
        return next.run(Request::from_parts(parts, body)).await;
    }
    let d = state.limiter.check(&key, limit, now_ms()).await;
    let mut resp = if d.allowed {
        next.run(Request::from_parts(parts, body)).await
    } else {
        let retry = (d.reset - now_ms() / 1000).max(1) as u64;
        ApiError::too_many(
            format!(
                "rate limit of {} requests per minute exceeded; retry in {retry} s",
                d.limit
            ),
            retry,
        )
        .into_response()
    };
    let h = resp.headers_mut();
    for (name, value) in [
        ("x-ratelimit-limit", d.limit.to_string()),
        ("x-ratelimit-remaining", d.remaining.to_string()),
        ("x-ratelimit-reset", d.reset.to_string()),
    ] {
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(HeaderName::from_static(name), v);
        }
    }
    resp
}

/// JSON 404 for every path no route serves.
pub async fn not_found(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
        format!("no API endpoint at {} {}", req.method(), req.uri().path()),
    )
}

/// JSON 405 for a known path with a method it does not serve.
pub async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "METHOD_NOT_ALLOWED",
        format!("{} is not allowed on {}", req.method(), req.uri().path()),
    )
}

/// Makes an [`AuthContext`] from the extensions available to a handler that also
/// serves anonymous callers.
pub fn optional_auth(req: &axum::http::request::Parts) -> Option<Arc<AuthContext>> {
    req.extensions.get::<Arc<AuthContext>>().cloned()
}

/// The header a client sends to get successful JSON answers wrapped as FlatRun
/// clients expect them: `{"data": <answer>, "message": "Success"}`. Errors keep
/// their shape (`{"error", "code", …}`), which FlatRun's already is.
pub const ENVELOPE_HEADER: &str = "x-response-envelope";

/// Largest answer wrapped; a larger one is sent as it is (with the header
/// `X-Response-Envelope: none` saying so).
const ENVELOPE_MAX_BYTES: usize = 32 * 1024 * 1024;

/// Wraps successful JSON answers in `{"data", "message"}` when the request asks
/// with `X-Response-Envelope: data`.
pub async fn response_envelope(req: Request, next: Next) -> Response {
    let wanted = req
        .headers()
        .get(ENVELOPE_HEADER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("data"));
    let resp = next.run(req).await;
    let json = resp
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !wanted || !json || !resp.status().is_success() {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let bytes = match axum::body::to_bytes(body, ENVELOPE_MAX_BYTES).await {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(error = %e, "an answer could not be read to wrap it");
            return crate::error::ApiError::internal("response envelope", e).into_response();
        }
    };
    let data: serde_json::Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(_) => {
            parts.headers.insert(
                ENVELOPE_HEADER,
                axum::http::HeaderValue::from_static("none"),
            );
            return Response::from_parts(parts, axum::body::Body::from(bytes));
        }
    };
    let wrapped = serde_json::json!({"data": data, "message": "Success"}).to_string();
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    parts.headers.insert(
        ENVELOPE_HEADER,
        axum::http::HeaderValue::from_static("data"),
    );
    Response::from_parts(parts, axum::body::Body::from(wrapped))
}
