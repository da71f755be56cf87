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
            TraceActor::note(&parts.extensions, &ctx);
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

/// Who made a traced API request: the authentication layers note the actor's
/// name here (never a token) when the request carries one.
#[derive(Clone, Default)]
pub struct TraceActor(Arc<std::sync::OnceLock<String>>);

impl TraceActor {
    /// Notes `ctx`'s actor on a traced request (nothing otherwise).
    pub fn note(extensions: &axum::http::Extensions, ctx: &AuthContext) {
        if let Some(slot) = extensions.get::<TraceActor>() {
            let _ = slot.0.set(ctx.actor.name.clone());
        }
    }
}

/// A span per API request (OpenTelemetry) when the manager has an exporter and
/// the request is sampled: by its caller's W3C `traceparent` when
/// `settings.tracing.parent_based`, otherwise by `settings.tracing.sample_ratio`
/// — the settings of the revision in force. Named by method and route template
/// (`GET /api/v1/routes/{id}`); it carries the status and the actor's name.
pub async fn trace_span(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    use fleetgate_core::trace_context::TraceParent;
    use fleetgate_shared::otel;
    let Some(tracer) = state.options.tracer.clone() else {
        return next.run(req).await;
    };
    let parent = req
        .headers()
        .get("traceparent")
        .and_then(|v| TraceParent::parse(v.as_bytes()).ok());
    let sampled = {
        let current = state.feed.current();
        let t = &current.gateway.settings.tracing;
        match parent {
            Some(p) if t.parent_based => p.sampled(),
            _ => otel::sample_root(otel::ratio_threshold(t.sample_ratio)),
        }
    };
    if !sampled {
        return next.run(req).await;
    }
    let start = otel::unix_now_ns();
    let actor = TraceActor::default();
    req.extensions_mut().insert(actor.clone());
    let template = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string());
    let method = req.method().as_str().to_string();
    let path = req.uri().path().to_string();
    let request_id = req.extensions().get::<RequestId>().map(|r| r.0.clone());
    let client = req
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip().to_string());
    let resp = next.run(req).await;
    let status = resp.status().as_u16();
    let mut span = otel::Span {
        scope: otel::Scope::Manager,
        trace_id: parent.map_or_else(otel::new_trace_id, |p| p.trace_id),
        span_id: otel::new_span_id(),
        parent_span_id: parent.map_or([0; 8], |p| p.parent_id),
        remote_parent: parent.is_some(),
        trace_state: None,
        name: match &template {
            Some(t) => format!("{method} {t}"),
            None => method.clone(),
        },
        kind: otel::SpanKind::Server,
        start_unix_ns: start,
        end_unix_ns: otel::unix_now_ns(),
        attributes: Vec::with_capacity(8),
        error: (status >= 500).then(|| format!("answered {status}")),
    };
    span.attr("http.request.method", method);
    if let Some(t) = template {
        span.attr("http.route", t);
    }
    span.attr("url.path", path);
    span.attr("http.response.status_code", status);
    if let Some(id) = request_id {
        span.attr("fleetgate.request_id", id);
    }
    if let Some(ip) = client {
        span.attr("client.address", ip);
    }
    if let Some(name) = actor.0.get() {
        span.attr("enduser.id", name.clone());
    }
    tracer.record(span);
    resp
}
