//! Troubleshooting: probe an upstream step by step (DNS, connect, TLS, HTTP),
//! and reports of every dependency and connection pool.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::Json;
use bytes::Bytes;
use fleetgate_core::gateway::{parse_target_url, BreakerStatus, TargetHealth};
use fleetgate_core::user::Role;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::api::health::{dependency_checks, CheckResult};
use crate::auth::AuthContext;
use crate::error::{ApiError, ApiResult};
use crate::extract::JsonBody;
use crate::AppState;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TestUpstreamRequest {
    /// `http://host:port/path` or `https://…`.
    pub url: String,
    /// Per-step timeout in milliseconds (default 5000, at most 30000).
    #[serde(default, alias = "timeoutMs")]
    pub timeout_ms: Option<u64>,
}

/// One step of the probe.
#[derive(Serialize, ToSchema, Clone)]
pub struct Step {
    /// `ok`, `error` or `skipped`.
    pub status: String,
    pub duration_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub details: Option<serde_json::Value>,
}

impl Step {
    fn ok(started: Instant, details: Option<serde_json::Value>) -> Self {
        Self {
            status: "ok".into(),
            duration_ms: Some(ms(started)),
            error: None,
            details,
        }
    }
    fn error(started: Instant, e: impl std::fmt::Display) -> Self {
        Self {
            status: "error".into(),
            duration_ms: Some(ms(started)),
            error: Some(e.to_string()),
            details: None,
        }
    }
    fn skipped(why: &str) -> Self {
        Self {
            status: "skipped".into(),
            duration_ms: None,
            error: Some(why.into()),
            details: None,
        }
    }
}

fn ms(started: Instant) -> f64 {
    started.elapsed().as_secs_f64() * 1000.0
}

#[derive(Serialize, ToSchema)]
pub struct TestUpstreamReport {
    pub url: String,
    /// True when every step succeeded and the upstream answered below 500.
    pub reachable: bool,
    pub dns: Step,
    pub connect: Step,
    pub tls: Step,
    pub http: Step,
    pub total_ms: f64,
}

trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

fn tls_config() -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map(|b| Arc::new(b.with_root_certificates(roots).with_no_client_auth()))
        .map_err(|e| e.to_string())
}

#[utoipa::path(post, path = "/api/v1/troubleshooting/test-upstream", operation_id = "test_upstream", tag = "troubleshooting",
    request_body = TestUpstreamRequest,
    responses((status = 200, description = "Each step's outcome and timing", body = TestUpstreamReport),
              (status = 400, description = "Bad URL or timeout, or a destination the outbound policy refuses (not a public address, not a configured upstream target, and webhooks.allow_private_targets off)", body = crate::error::ErrorBody)))]
pub async fn test_upstream(
    State(state): State<AppState>,
    auth: AuthContext,
    JsonBody(req): JsonBody<TestUpstreamRequest>,
) -> ApiResult<Json<TestUpstreamReport>> {
    auth.require(Role::Operator)?;
    let uri = parse_target_url(&req.url).map_err(|m| ApiError::bad_request("url", m))?;
    let timeout_ms = req.timeout_ms.unwrap_or(5000);
    if !(1..=30_000).contains(&timeout_ms) {
        return Err(ApiError::bad_request(
            "timeout_ms",
            "must be between 1 and 30000",
        ));
    }
    let limit = Duration::from_millis(timeout_ms);
    let https = uri.scheme_str() == Some("https");
    let host = uri
        .host()
        .unwrap_or_default()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let total = Instant::now();
    let mut report = TestUpstreamReport {
        url: req.url.clone(),
        reachable: false,
        dns: Step::skipped("not run"),
        connect: Step::skipped("not run"),
        tls: Step::skipped(if https { "not run" } else { "plain HTTP" }),
        http: Step::skipped("not run"),
        total_ms: 0.0,
    };
    let finish = |mut r: TestUpstreamReport| {
        r.total_ms = ms(total);
        Ok(Json(r))
    };
    // The destination policy of webhooks applies here too: the manager must not be
    // made to probe itself or the link-local metadata service on a caller's behalf.
    // A configured upstream target may be probed, since the gateway sends traffic
    // there anyway. The host is resolved once and the checked address is the one
    // connected to.
    let allow = state.settings().webhooks.allow_private_targets
        || is_configured_target(&state, &host, port);
    let t = Instant::now();
    let addrs = match crate::destination::resolve_checked(&host, port, allow, limit).await {
        Ok(a) => a,
        Err(crate::destination::Refusal::Forbidden(m)) => {
            return Err(ApiError::bad_request("url", m));
        }
        Err(crate::destination::Refusal::Resolve(m)) => {
            report.dns = Step::error(t, m);
            return finish(report);
        }
    };
    let Some(addr) = addrs.first().copied() else {
        report.dns = Step::error(t, format!("{host} has no address"));
        return finish(report);
    };
    report.dns = Step::ok(
        t,
        Some(
            serde_json::json!({ "addresses": addrs.iter().map(|a| a.ip().to_string()).collect::<Vec<_>>() }),
        ),
    );
    let t = Instant::now();
    let tcp = match tokio::time::timeout(limit, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            report.connect = Step::error(t, format!("cannot connect to {addr}: {e}"));
            return finish(report);
        }
        Err(_) => {
            report.connect = Step::error(t, format!("connecting to {addr} timed out"));
            return finish(report);
        }
    };
    report.connect = Step::ok(t, Some(serde_json::json!({ "address": addr.to_string() })));
    let io: Box<dyn Io> = if https {
        let t = Instant::now();
        let name = match rustls::pki_types::ServerName::try_from(host.clone()) {
            Ok(n) => n,
            Err(e) => {
                report.tls = Step::error(t, format!("invalid server name: {e}"));
                return finish(report);
            }
        };
        let config = match tls_config() {
            Ok(c) => c,
            Err(e) => {
                report.tls = Step::error(t, format!("TLS is unavailable: {e}"));
                return finish(report);
            }
        };
        let connector = tokio_rustls::TlsConnector::from(config);
        match tokio::time::timeout(limit, connector.connect(name, tcp)).await {
            Ok(Ok(s)) => {
                let version = s.get_ref().1.protocol_version().map(|v| format!("{v:?}"));
                report.tls = Step::ok(t, Some(serde_json::json!({ "version": version })));
                Box::new(s)
            }
            Ok(Err(e)) => {
                report.tls = Step::error(t, format!("TLS handshake failed: {e}"));
                return finish(report);
            }
            Err(_) => {
                report.tls = Step::error(t, "TLS handshake timed out");
                return finish(report);
            }
        }
    } else {
        Box::new(tcp)
    };
    let t = Instant::now();
    let exchange = async {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let authority = uri.authority().map(|a| a.as_str()).unwrap_or(host.as_str());
        let request = http::Request::get(path)
            .header(http::header::HOST, authority)
            .header(http::header::USER_AGENT, "fleetgate-troubleshooting")
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let resp = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(resp.status().as_u16())
    };
    match tokio::time::timeout(limit, exchange).await {
        Ok(Ok(status)) => {
            report.http = Step::ok(t, Some(serde_json::json!({ "status": status })));
            report.reachable = status < 500;
        }
        Ok(Err(e)) => report.http = Step::error(t, format!("HTTP request failed: {e}")),
        Err(_) => report.http = Step::error(t, "no response in time"),
    }
    finish(report)
}

/// Whether `host:port` is a target of a configured upstream pool.
fn is_configured_target(state: &AppState, host: &str, port: u16) -> bool {
    let config = state.feed.current();
    config
        .gateway
        .upstreams
        .iter()
        .flat_map(|u| &u.targets)
        .filter_map(|t| parse_target_url(&t.url).ok())
        .any(|u| {
            let https = u.scheme_str() == Some("https");
            let h = u.host().unwrap_or_default();
            h.trim_start_matches('[')
                .trim_end_matches(']')
                .eq_ignore_ascii_case(host)
                && u.port_u16().unwrap_or(if https { 443 } else { 80 }) == port
        })
}

#[derive(Serialize, ToSchema)]
pub struct UpstreamPool {
    pub name: String,
    pub targets: Vec<TargetHealth>,
}

#[derive(Serialize, ToSchema)]
pub struct ConnectionsReport {
    /// Store, Redis and NATS.
    pub dependencies: std::collections::BTreeMap<String, CheckResult>,
    /// Upstream pools of the built-in gateway (empty without one).
    pub upstreams: Vec<UpstreamPool>,
}

#[derive(Serialize, ToSchema)]
pub struct DiagnosticReport {
    /// `ok`, `degraded` or `error`.
    pub status: String,
    pub version: String,
    pub uptime_secs: u64,
    pub dependencies: std::collections::BTreeMap<String, CheckResult>,
    /// Newest revision published by this manager.
    pub revision: u64,
    /// Revision the built-in gateway serves, if one runs here.
    pub gateway_revision: Option<u64>,
    /// Breakers that are not closed.
    pub open_breakers: Vec<BreakerStatus>,
    /// Targets that are unhealthy or ejected, as `upstream -> target`.
    pub unhealthy_targets: Vec<String>,
    /// Things an operator should look at, in plain words.
    pub findings: Vec<String>,
}

async fn pools(
    state: &AppState,
    status: Option<&fleetgate_protocol::DataPlaneStatus>,
) -> ApiResult<Vec<UpstreamPool>> {
    let Some(status) = status else {
        return Ok(Vec::new());
    };
    let doc = crate::api::config::current_document(state).await?;
    Ok(doc
        .upstreams
        .iter()
        .map(|u| UpstreamPool {
            name: u.name.clone(),
            targets: status
                .upstream_health(&u.name)
                .map(<[_]>::to_vec)
                .unwrap_or_default(),
        })
        .collect())
}

/// A fresh status report of the data plane in this process, if one runs.
async fn data_plane_status(
    state: &AppState,
) -> Option<std::sync::Arc<fleetgate_protocol::DataPlaneStatus>> {
    match state.data_plane.get() {
        Some(dp) => Some(dp.fresh().await),
        None => None,
    }
}

#[utoipa::path(get, path = "/api/v1/troubleshooting/connections", operation_id = "troubleshooting_connections", tag = "troubleshooting",
    responses((status = 200, description = "Dependencies and upstream pools", body = ConnectionsReport)))]
pub async fn connections(
    State(state): State<AppState>,
    _auth: AuthContext,
) -> ApiResult<Json<ConnectionsReport>> {
    Ok(Json(ConnectionsReport {
        dependencies: dependency_checks(&state).await,
        upstreams: pools(&state, data_plane_status(&state).await.as_deref()).await?,
    }))
}

#[utoipa::path(get, path = "/api/v1/troubleshooting/health", operation_id = "troubleshooting_health", tag = "troubleshooting",
    responses((status = 200, description = "A diagnostic report", body = DiagnosticReport)))]
pub async fn health(
    State(state): State<AppState>,
    _auth: AuthContext,
) -> ApiResult<Json<DiagnosticReport>> {
    let dependencies = dependency_checks(&state).await;
    let revision = state.revision();
    let status = data_plane_status(&state).await;
    let gateway_revision = status.as_ref().map(|s| s.applied.revision);
    let open_breakers: Vec<BreakerStatus> = status
        .as_ref()
        .map(|s| s.breakers())
        .unwrap_or_default()
        .into_iter()
        .filter(|b| b.state != "closed")
        .collect();
    let mut unhealthy_targets = Vec::new();
    for pool in pools(&state, status.as_deref()).await? {
        for t in pool.targets.iter().filter(|t| t.state != "healthy") {
            unhealthy_targets.push(format!("{} -> {} ({})", pool.name, t.url, t.state));
        }
    }
    let mut findings = Vec::new();
    for (name, c) in &dependencies {
        if c.status == "error" {
            findings.push(format!(
                "{name} is failing: {}",
                c.error.clone().unwrap_or_default()
            ));
        }
    }
    if let Some(g) = gateway_revision {
        if g != revision {
            findings.push(format!(
                "the gateway serves revision {g}, the newest is {revision}"
            ));
        }
    }
    for b in &open_breakers {
        findings.push(format!(
            "circuit breaker of upstream {} is {}",
            b.upstream, b.state
        ));
    }
    for t in &unhealthy_targets {
        findings.push(format!("target {t}"));
    }
    let status = if dependencies.values().any(|c| c.status == "error") {
        "error"
    } else if findings.is_empty() {
        "ok"
    } else {
        "degraded"
    };
    Ok(Json(DiagnosticReport {
        status: status.into(),
        version: env!("CARGO_PKG_VERSION").into(),
        uptime_secs: state.started_at.elapsed().as_secs(),
        dependencies,
        revision,
        gateway_revision,
        open_breakers,
        unhealthy_targets,
        findings,
    }))
}
