//! Health probes and Prometheus metrics; no authentication.

use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::AppState;

/// Basic status of this process.
#[derive(Serialize, ToSchema)]
pub struct HealthBody {
    /// `ok`.
    pub status: String,
    pub version: String,
    /// `sqlite` or `postgres`.
    pub store: String,
    pub uptime_secs: u64,
    /// The newest configuration revision this manager published.
    pub revision: u64,
    /// The revision the built-in gateway serves (absent without one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway_revision: Option<u64>,
}

/// One dependency's state.
#[derive(Serialize, ToSchema, Clone)]
pub struct CheckResult {
    /// `ok`, `error` or `not_configured`.
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub details: Option<serde_json::Value>,
}

impl CheckResult {
    fn ok(started: Instant) -> Self {
        Self {
            status: "ok".into(),
            latency_ms: Some(started.elapsed().as_secs_f64() * 1000.0),
            error: None,
            details: None,
        }
    }

    fn error(started: Instant, e: impl std::fmt::Display) -> Self {
        Self {
            status: "error".into(),
            latency_ms: Some(started.elapsed().as_secs_f64() * 1000.0),
            error: Some(e.to_string()),
            details: None,
        }
    }

    fn not_configured() -> Self {
        Self {
            status: "not_configured".into(),
            latency_ms: None,
            error: None,
            details: None,
        }
    }
}

/// A probe result with its checks.
#[derive(Serialize, ToSchema)]
pub struct ProbeBody {
    /// `ok` or `error`.
    pub status: String,
    pub checks: std::collections::BTreeMap<String, CheckResult>,
}

fn probe(checks: std::collections::BTreeMap<String, CheckResult>) -> (StatusCode, Json<ProbeBody>) {
    let healthy = checks.values().all(|c| c.status != "error");
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(ProbeBody {
            status: if healthy { "ok" } else { "error" }.into(),
            checks,
        }),
    )
}

#[utoipa::path(get, path = "/health", tag = "health",
    responses((status = 200, description = "The process is up", body = HealthBody)))]
pub async fn health(State(state): State<AppState>) -> Json<HealthBody> {
    Json(HealthBody {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        store: state.store.backend().as_str().into(),
        uptime_secs: state.started_at.elapsed().as_secs(),
        revision: state.revision(),
        gateway_revision: state
            .data_plane
            .get()
            .map(|d| d.status.latest().applied.revision),
    })
}

#[utoipa::path(get, path = "/health/live", tag = "health",
    responses((status = 200, description = "Liveness: the process answers", body = ProbeBody)))]
pub async fn live() -> Json<ProbeBody> {
    Json(ProbeBody {
        status: "ok".into(),
        checks: Default::default(),
    })
}

async fn store_check(state: &AppState) -> CheckResult {
    let started = Instant::now();
    match tokio::time::timeout(Duration::from_secs(2), state.store.ping()).await {
        Ok(Ok(())) => {
            let mut c = CheckResult::ok(started);
            let p = state.store.pool_stats();
            c.details = Some(serde_json::json!({
                "backend": state.store.backend().as_str(),
                "pool_open": p.size, "pool_idle": p.idle, "pool_max": p.max,
            }));
            c
        }
        Ok(Err(e)) => CheckResult::error(started, e),
        Err(_) => CheckResult::error(started, "timed out after 2 s"),
    }
}

#[utoipa::path(get, path = "/health/ready", tag = "health",
    responses((status = 200, description = "Ready: store reachable, migrations applied", body = ProbeBody),
              (status = 503, description = "Not ready", body = ProbeBody)))]
pub async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    let mut checks = std::collections::BTreeMap::new();
    checks.insert("store".to_string(), store_check(&state).await);
    let started = Instant::now();
    let migrations = match state.store.migration_status().await {
        Ok(s) if s.is_current() => {
            let mut c = CheckResult::ok(started);
            c.details = Some(serde_json::json!({ "applied": s.applied, "expected": s.expected }));
            c
        }
        Ok(s) => CheckResult::error(
            started,
            format!(
                "migrations pending: applied {:?}, expected {:?}",
                s.applied, s.expected
            ),
        ),
        Err(e) => CheckResult::error(started, e),
    };
    checks.insert("migrations".to_string(), migrations);
    probe(checks)
}

async fn redis_check(state: &AppState) -> CheckResult {
    let Some(client) = &state.redis else {
        return CheckResult::not_configured();
    };
    let started = Instant::now();
    let attempt = async {
        let mut conn = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut conn).await
    };
    match tokio::time::timeout(Duration::from_secs(2), attempt).await {
        Ok(Ok(_)) => CheckResult::ok(started),
        Ok(Err(e)) => CheckResult::error(started, e),
        Err(_) => CheckResult::error(started, "timed out after 2 s"),
    }
}

async fn nats_check(state: &AppState) -> CheckResult {
    let Some(url) = &state.options.nats_url else {
        return CheckResult::not_configured();
    };
    let started = Instant::now();
    let attempt = async {
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(2))
            .connect(url.as_str())
            .await
            .map_err(|e| e.to_string())?;
        client.flush().await.map_err(|e| e.to_string())?;
        let info = client.server_info();
        Ok::<_, String>(serde_json::json!({ "server": info.server_name, "version": info.version }))
    };
    let mut c = match tokio::time::timeout(Duration::from_secs(3), attempt).await {
        Ok(Ok(details)) => {
            let mut c = CheckResult::ok(started);
            c.details = Some(details);
            c
        }
        Ok(Err(e)) => CheckResult::error(started, e),
        Err(_) => CheckResult::error(started, "timed out after 3 s"),
    };
    // The event bus's own connection and counters.
    if let Some(bus) = state.events.bus.get() {
        let details = c.details.get_or_insert_with(|| serde_json::json!({}));
        details["events_bus"] = bus.status();
    }
    c
}

#[utoipa::path(get, path = "/health/deep", tag = "health",
    responses((status = 200, description = "Every configured dependency is healthy", body = ProbeBody),
              (status = 503, description = "A dependency is unhealthy", body = ProbeBody)))]
pub async fn deep(State(state): State<AppState>) -> impl IntoResponse {
    let mut checks = dependency_checks(&state).await;
    let mut nodes = CheckResult::ok(Instant::now());
    nodes.latency_ms = None;
    nodes.details = Some(serde_json::json!({ "connected": 0 }));
    checks.insert("nodes".to_string(), nodes);
    probe(checks)
}

/// Store, Redis and NATS, checked concurrently.
pub async fn dependency_checks(
    state: &AppState,
) -> std::collections::BTreeMap<String, CheckResult> {
    let (store, redis, nats) =
        tokio::join!(store_check(state), redis_check(state), nats_check(state));
    let mut checks = std::collections::BTreeMap::new();
    checks.insert("store".to_string(), store);
    checks.insert("redis".to_string(), redis);
    checks.insert("nats".to_string(), nats);
    checks
}

#[utoipa::path(get, path = "/health/ping", tag = "health",
    responses((status = 204, description = "The manager is running")))]
pub async fn ping() -> StatusCode {
    StatusCode::NO_CONTENT
}

fn render_metrics(state: &AppState) -> impl IntoResponse {
    let mut text = state.metrics.render(
        state.store.pool_stats(),
        state.started_at.elapsed().as_secs_f64(),
    );
    // The gateway in this process renders the trace exporter's counters it
    // shares with the manager; without one the manager renders them.
    if let Some(dp) = state.data_plane.get() {
        (dp.metrics)(&mut text);
    } else if let Some(t) = &state.options.tracer {
        t.render_metrics(&mut text);
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
}

/// The metrics need credentials (an API key or session of any role) unless
/// `manager.metrics_public` opens them: they name routes, upstreams and their
/// error rates, which an anonymous caller has no business reading.
async fn metrics_access(state: &AppState, parts: &Parts) -> Result<(), ApiError> {
    if state.options.metrics_public {
        return Ok(());
    }
    match crate::auth::authenticate(state, parts).await? {
        Some(_) => Ok(()),
        None => Err(ApiError::unauthorized(
            "metrics need credentials: send Authorization: Bearer <api key> (any role), \
             or set manager.metrics_public to serve them to anyone",
        )),
    }
}

#[utoipa::path(get, path = "/prometheus/metrics", tag = "health",
    responses((status = 200, description = "Prometheus text exposition", body = String, content_type = "text/plain"),
              (status = 401, description = "No credentials, and manager.metrics_public is off", body = crate::error::ErrorBody)))]
pub async fn prometheus(
    State(state): State<AppState>,
    parts: Parts,
) -> Result<impl IntoResponse, ApiError> {
    metrics_access(&state, &parts).await?;
    Ok(render_metrics(&state))
}

#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "Same as /prometheus/metrics", body = String, content_type = "text/plain"),
              (status = 401, description = "No credentials, and manager.metrics_public is off", body = crate::error::ErrorBody)))]
pub async fn metrics_alias(
    State(state): State<AppState>,
    parts: Parts,
) -> Result<impl IntoResponse, ApiError> {
    metrics_access(&state, &parts).await?;
    Ok(render_metrics(&state))
}
