//! Deployments over the API: create from a `compose.yml` and a `service.yml`
//! (checked, with every problem's file, line and field), list and read with each
//! service's live state, update (If-Match), delete, start/stop/restart, logs (a
//! tail, or followed over SSE) and resource use; and the gateway proxy of each
//! deployment's domains (`/api/v1/proxy/...`). The files' contents are shown to
//! operators and admins only: environment values in them may be secrets.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::Event as SseEvent;
use axum::response::{IntoResponse, Response};
use axum::Json;
use fleetgate_core::user::Role;
use fleetgate_deploy::spec::{LogQuery, Problem, ServiceState, ServiceStatus};
use fleetgate_store::{AuditEvent, ConfigEdit, StoreError};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use super::events::{async_stream, sse};
use super::rfc3339;
use crate::auth::AuthContext;
use crate::deployments::{self, DeployError, Desired, Loaded};
use crate::error::{ApiError, ApiResult};
use crate::extract::{json_with_etag, IfMatch, JsonBody, ListEnvelope, QueryParams};
use crate::AppState;

#[derive(Serialize, ToSchema)]
pub struct DeploymentView {
    pub name: String,
    /// What an operator asked: `running` or `stopped`.
    pub desired: Desired,
    /// `running` (every service up and healthy), `starting`, `degraded` (some
    /// service unhealthy, restarting or exited), `failed` (some service failed) or
    /// `stopped`.
    pub status: &'static str,
    /// `process` or `docker`.
    pub driver: String,
    /// Each service's state, in file order.
    #[schema(value_type = Vec<Object>)]
    pub services: Vec<ServiceStatus>,
    /// Host names the gateway routes to the deployment.
    pub domains: Vec<String>,
    /// The port its traffic goes to.
    pub port: Option<u16>,
    pub ssl: bool,
    /// The certificate of `ssl.enabled`: `disabled`, `pending`, `issued`,
    /// `failed` (see `ssl_error`) or `none` (not requested since the manager
    /// started). The deployment is served whatever it is.
    pub ssl_status: &'static str,
    /// Why the last certificate request failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssl_error: Option<String>,
    pub version: i64,
    pub created_at: String,
    pub updated_at: String,
    /// `compose.yml` (operators and admins only, on a single deployment).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compose: Option<String>,
    /// `service.yml` (operators and admins only, on a single deployment).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

/// The deployment's state from its services'.
fn overall(services: &[ServiceStatus]) -> &'static str {
    let any = |s: ServiceState| services.iter().any(|x| x.state == s);
    let all = |f: &dyn Fn(ServiceState) -> bool| services.iter().all(|x| f(x.state));
    if services.is_empty() || all(&|s| matches!(s, ServiceState::Stopped | ServiceState::Exited)) {
        "stopped"
    } else if any(ServiceState::Failed) {
        "failed"
    } else if all(&|s| s == ServiceState::Running) {
        "running"
    } else if all(&|s| matches!(s, ServiceState::Running | ServiceState::Starting)) {
        "starting"
    } else {
        "degraded"
    }
}

async fn view(state: &AppState, l: &Loaded, files: bool) -> DeploymentView {
    let d = &state.deployments;
    let name = &l.record.name;
    let kind = d.driver_kind(name, &l.meta, &l.compose).await;
    let mut services = d.driver(name, &l.meta, &l.compose).await.status(name);
    if services.is_empty() {
        services = l
            .compose
            .services
            .iter()
            .map(|s| ServiceStatus {
                name: s.name.clone(),
                state: ServiceState::Stopped,
                pid: None,
                container_id: None,
                restarts: 0,
                started_at: None,
                exit_code: None,
                last_error: None,
            })
            .collect();
    }
    let (ssl_status, ssl_error) = state
        .acme
        .deployment_status(state, name, l.meta.ssl.enabled);
    DeploymentView {
        name: name.clone(),
        desired: l.record.desired,
        status: overall(&services),
        driver: serde_json::to_value(kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
        services,
        domains: l.meta.domains.clone(),
        port: deployments::target_port(&l.compose, &l.meta),
        ssl: l.meta.ssl.enabled,
        ssl_status,
        ssl_error,
        version: l.record.version,
        created_at: rfc3339(l.record.created_at),
        updated_at: rfc3339(l.record.updated_at),
        compose: files.then(|| l.compose_text.clone()),
        service: files.then(|| l.service_text.clone()),
    }
}

impl From<DeployError> for ApiError {
    fn from(e: DeployError) -> Self {
        match e {
            DeployError::NotFound(name) => ApiError::not_found(format!("deployment {name}")),
            DeployError::Exists(name) => {
                ApiError::conflict(format!("deployment {name} already exists"))
            }
            DeployError::Invalid(problems) => invalid(&problems),
            DeployError::Broken { name, problems } => ApiError::new(
                StatusCode::CONFLICT,
                "DEPLOYMENT_BROKEN",
                format!("the stored files of deployment {name} do not check: {problems}"),
            ),
            DeployError::VersionMismatch(current) => ApiError::new(
                StatusCode::PRECONDITION_FAILED,
                "PRECONDITION_FAILED",
                format!("If-Match does not match the current version \"{current}\""),
            )
            .with_details(json!({ "current_version": current })),
            DeployError::Driver(fleetgate_deploy::spec::DriverError::Unavailable(m)) => {
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "DOCKER_UNAVAILABLE",
                    format!("the Docker engine is unavailable: {m}"),
                )
            }
            DeployError::Driver(fleetgate_deploy::spec::DriverError::Unsupported(m)) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "UNSUPPORTED_BY_DRIVER", m)
            }
            DeployError::Driver(fleetgate_deploy::spec::DriverError::NotRunning(name)) => {
                ApiError::new(
                    StatusCode::CONFLICT,
                    "NOT_RUNNING",
                    format!("deployment {name} is not running"),
                )
            }
            DeployError::Driver(e) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "DEPLOYMENT_FAILED",
                e.to_string(),
            ),
            DeployError::Io(e) => ApiError::internal("deployment files", e),
        }
    }
}

/// 400 `VALIDATION_FAILED` listing every problem; `details.field` names the file
/// (or `name`) of the first.
fn invalid(problems: &[Problem]) -> ApiError {
    let first = problems.first();
    let field = first
        .map(|p| {
            if p.file.is_empty() {
                p.field.clone()
            } else {
                p.file.trim_end_matches(".yml").to_string()
            }
        })
        .unwrap_or_else(|| "compose".into());
    let message = first
        .map(ToString::to_string)
        .unwrap_or_else(|| "the files do not check".into());
    ApiError::new(StatusCode::BAD_REQUEST, "VALIDATION_FAILED", message)
        .with_details(json!({"field": field, "problems": problems}))
}

fn digest(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// What the audit log keeps of a deployment: never the files (their environment
/// values may be secrets), their digests.
fn audit_view(l: &Loaded) -> Value {
    json!({"name": l.record.name, "version": l.record.version, "desired": l.record.desired,
           "services": l.compose.services.iter().map(|s| &s.name).collect::<Vec<_>>(),
           "domains": l.meta.domains,
           "compose_sha256": digest(&l.compose_text), "service_sha256": digest(&l.service_text)})
}

async fn audit(
    state: &AppState,
    auth: &AuthContext,
    action: &str,
    name: &str,
    before: Option<Value>,
    after: Option<Value>,
) -> ApiResult<()> {
    let mut ev = AuditEvent::new(action, "deployment", Some(name));
    if let Some(b) = before {
        ev = ev.before(b);
    }
    if let Some(a) = after {
        ev = ev.after(a);
    }
    state.store.append_audit(&auth.actor, ev).await?;
    Ok(())
}

/// Makes the gateway serve the deployment's domains (or stop serving them) as one
/// revision. `None` when nothing changed.
async fn apply_proxy(
    state: &AppState,
    auth: &AuthContext,
    l: &Loaded,
    serve: bool,
) -> ApiResult<Option<i64>> {
    let name = &l.record.name;
    let objects = if serve {
        deployments::proxy_objects(name, &l.compose, &l.meta)
            .map_err(|m| ApiError::bad_request("service", m))?
    } else {
        None
    };
    let edit = deployments::proxy_edit(name, objects.as_ref());
    let puts: Vec<(&str, &str, Value)> = edit
        .puts
        .iter()
        .map(|(k, n, v)| (*k, n.as_str(), v.clone()))
        .collect();
    let deletes: Vec<(&str, &str)> = edit.deletes.iter().map(|(k, n)| (*k, n.as_str())).collect();
    let committed = state
        .change_config(
            &auth.actor,
            ConfigEdit::Objects {
                puts: &puts,
                deletes: &deletes,
                action: "deployment.proxy",
            },
            &format!("proxy of deployment {name}"),
            None,
        )
        .await
        .map_err(|e| match e {
            // A domain another route already serves, say.
            StoreError::Rejected(v) => ApiError::new(
                StatusCode::CONFLICT,
                "PROXY_REJECTED",
                format!("the gateway refused the proxy of deployment {name}: {v}"),
            ),
            other => other.into(),
        })?;
    Ok(committed.written.then_some(committed.number))
}

#[utoipa::path(get, path = "/api/v1/deployments", operation_id = "list_deployments", tag = "deployments",
    responses((status = 200, description = "The deployments of this host, each service's state", body = ListEnvelope<DeploymentView>),
              (status = 503, description = "It runs on Docker and no engine answers (DOCKER_UNAVAILABLE)")))]
pub async fn list(
    State(state): State<AppState>,
    _auth: AuthContext,
) -> ApiResult<Json<ListEnvelope<DeploymentView>>> {
    let names = state.deployments.names().await?;
    let mut items = Vec::new();
    for name in &names {
        match state.deployments.load(name).await {
            Ok(l) => items.push(view(&state, &l, false).await),
            // A directory edited into an invalid state is reported on its own.
            Err(e) => tracing::warn!(deployment = %name, error = %e, "a deployment cannot be read"),
        }
    }
    let total = items.len() as i64;
    Ok(Json(ListEnvelope::new(
        items,
        total,
        fleetgate_store::PageRequest {
            limit: total.max(1),
            offset: 0,
        },
    )))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateDeployment {
    /// 1 to 48 of a-z, 0-9 and '-'.
    pub name: String,
    /// The text of `compose.yml`.
    pub compose: String,
    /// The text of `service.yml` (domains, certificate, health check, rate limit).
    #[serde(default)]
    pub service: String,
    /// Start it now (default true).
    #[serde(default = "yes")]
    pub start: bool,
}

fn yes() -> bool {
    true
}

#[utoipa::path(post, path = "/api/v1/deployments", operation_id = "create_deployment", tag = "deployments", request_body = CreateDeployment,
    responses((status = 201, description = "Created (and started unless start is false); its domains are routed", body = DeploymentView),
              (status = 400, description = "The files do not check: details.problems lists each with file, line, column and field"),
              (status = 422, description = "Created, but it could not start (it is left stopped; details.created is true)"),
              (status = 503, description = "Created, but its driver's engine is unavailable (left stopped; details.created is true)")))]
pub async fn create(
    State(state): State<AppState>,
    auth: AuthContext,
    JsonBody(body): JsonBody<CreateDeployment>,
) -> ApiResult<Response> {
    auth.require(Role::Operator)?;
    let desired = if body.start {
        Desired::Running
    } else {
        Desired::Stopped
    };
    let l = state
        .deployments
        .create(&body.name, &body.compose, &body.service, desired)
        .await?;
    audit(
        &state,
        &auth,
        "deployment.create",
        &body.name,
        None,
        Some(audit_view(&l)),
    )
    .await?;
    if let Err(e) = apply_proxy(&state, &auth, &l, true).await {
        // Nothing half-made: the deployment goes with its refused proxy.
        let _ = state.deployments.remove(&body.name).await;
        audit(
            &state,
            &auth,
            "deployment.delete",
            &body.name,
            Some(audit_view(&l)),
            None,
        )
        .await?;
        return Err(e);
    }
    request_certificate(&state, &auth, &l);
    if body.start {
        if let Err(e) = state.deployments.start(&l).await {
            let _ = state.deployments.stop(&l).await;
            let _ = state
                .deployments
                .set_desired(&body.name, Desired::Stopped)
                .await;
            // The deployment exists (stopped): a client opens it rather than
            // offering the form again.
            return Err(ApiError::from(e).with_details(json!({"created": true, "name": body.name})));
        }
    }
    Ok(json_with_etag(
        StatusCode::CREATED,
        l.record.version,
        view(&state, &l, true).await,
    ))
}

#[utoipa::path(get, path = "/api/v1/deployments/{name}", operation_id = "get_deployment", tag = "deployments",
    params(("name" = String, Path, description = "Deployment name")),
    responses((status = 200, description = "The deployment, its services' states and (for operators) its files", body = DeploymentView),
              (status = 503, description = "It runs on Docker and no engine answers (DOCKER_UNAVAILABLE)")))]
pub async fn get(
    State(state): State<AppState>,
    auth: AuthContext,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    let l = state.deployments.load(&name).await?;
    let files = auth.role >= Role::Operator;
    Ok(json_with_etag(
        StatusCode::OK,
        l.record.version,
        view(&state, &l, files).await,
    ))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateDeployment {
    /// The new `compose.yml`.
    pub compose: Option<String>,
    /// The new `service.yml`.
    pub service: Option<String>,
}

#[utoipa::path(put, path = "/api/v1/deployments/{name}", operation_id = "update_deployment", tag = "deployments",
    params(("name" = String, Path, description = "Deployment name")), request_body = UpdateDeployment,
    responses((status = 200, description = "Updated; a running deployment is restarted with the new files", body = DeploymentView),
              (status = 503, description = "It runs on Docker and no engine answers (DOCKER_UNAVAILABLE)")))]
pub async fn update(
    State(state): State<AppState>,
    auth: AuthContext,
    Path(name): Path<String>,
    IfMatch(expected): IfMatch,
    JsonBody(body): JsonBody<UpdateDeployment>,
) -> ApiResult<Response> {
    auth.require(Role::Operator)?;
    let (before, after) = state
        .deployments
        .update(
            &name,
            body.compose.as_deref(),
            body.service.as_deref(),
            expected,
        )
        .await?;
    audit(
        &state,
        &auth,
        "deployment.update",
        &name,
        Some(audit_view(&before)),
        Some(audit_view(&after)),
    )
    .await?;
    apply_proxy(&state, &auth, &after, true).await?;
    request_certificate(&state, &auth, &after);
    if after.record.desired == Desired::Running {
        if let Err(e) = state.deployments.start(&after).await {
            // The new files are saved; only the start failed.
            return Err(ApiError::from(e)
                .with_details(json!({"saved": true, "version": after.record.version})));
        }
    }
    Ok(json_with_etag(
        StatusCode::OK,
        after.record.version,
        view(&state, &after, true).await,
    ))
}

#[utoipa::path(delete, path = "/api/v1/deployments/{name}", operation_id = "delete_deployment", tag = "deployments",
    params(("name" = String, Path, description = "Deployment name")),
    responses((status = 204, description = "Stopped, unrouted and removed (its logs are kept); its ACME certificate `deploy-<name>` is deleted too unless a route or another deployment still names its domains"),
              (status = 503, description = "It runs on Docker and no engine answers (DOCKER_UNAVAILABLE)")))]
pub async fn delete(
    State(state): State<AppState>,
    auth: AuthContext,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    auth.require(Role::Operator)?;
    let l = state.deployments.load(&name).await?;
    apply_proxy(&state, &auth, &l, false).await?;
    let gone = state.deployments.remove(&name).await?;
    state.acme.forget_deployment(&name);
    audit(
        &state,
        &auth,
        "deployment.delete",
        &name,
        Some(audit_view(&gone)),
        None,
    )
    .await?;
    // The deployment is gone whatever becomes of its certificate: a failure here
    // is logged and the certificate can be deleted by hand.
    if let Err(e) = state
        .acme
        .remove_deployment_certificate(&state, &auth.actor, &name)
        .await
    {
        tracing::warn!(deployment = %name, error = %e, "could not remove the certificate of the deleted deployment");
    }
    Ok(StatusCode::NO_CONTENT)
}

/// With `ssl.enabled` and domains, the deployment's certificate is requested in
/// the background (see [`crate::acme::Acme::request_for_deployment`]); without,
/// any earlier request is forgotten.
fn request_certificate(state: &AppState, auth: &AuthContext, l: &Loaded) {
    if l.meta.ssl.enabled && !l.meta.domains.is_empty() {
        state.acme.request_for_deployment(
            state,
            &auth.actor,
            &l.record.name,
            &l.meta.domains,
            l.meta.ssl.email.clone(),
        );
    } else {
        state.acme.forget_deployment(&l.record.name);
    }
}

async fn act(
    state: &AppState,
    auth: &AuthContext,
    name: &str,
    action: &str,
) -> ApiResult<Response> {
    auth.require(Role::Operator)?;
    let desired = if action == "stop" {
        Desired::Stopped
    } else {
        Desired::Running
    };
    let l = state.deployments.set_desired(name, desired).await?;
    match action {
        "stop" => state.deployments.stop(&l).await?,
        "restart" => {
            state.deployments.stop(&l).await?;
            state.deployments.start(&l).await?;
        }
        _ => state.deployments.start(&l).await?,
    }
    audit(
        state,
        auth,
        &format!("deployment.{action}"),
        name,
        None,
        Some(json!({"desired": desired})),
    )
    .await?;
    Ok(Json(view(state, &l, false).await).into_response())
}

#[utoipa::path(post, path = "/api/v1/deployments/{name}/start", operation_id = "start_deployment", tag = "deployments",
    params(("name" = String, Path, description = "Deployment name")),
    responses((status = 200, description = "Started (dependencies first)", body = DeploymentView),
              (status = 503, description = "It runs on Docker and no engine answers (DOCKER_UNAVAILABLE)")))]
pub async fn start(
    State(state): State<AppState>,
    auth: AuthContext,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    act(&state, &auth, &name, "start").await
}

#[utoipa::path(post, path = "/api/v1/deployments/{name}/stop", operation_id = "stop_deployment", tag = "deployments",
    params(("name" = String, Path, description = "Deployment name")),
    responses((status = 200, description = "Stopped (stop signal, then a kill after the grace period)", body = DeploymentView),
              (status = 503, description = "It runs on Docker and no engine answers (DOCKER_UNAVAILABLE)")))]
pub async fn stop(
    State(state): State<AppState>,
    auth: AuthContext,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    act(&state, &auth, &name, "stop").await
}

#[utoipa::path(post, path = "/api/v1/deployments/{name}/restart", operation_id = "restart_deployment", tag = "deployments",
    params(("name" = String, Path, description = "Deployment name")),
    responses((status = 200, description = "Stopped and started again", body = DeploymentView),
              (status = 503, description = "It runs on Docker and no engine answers (DOCKER_UNAVAILABLE)")))]
pub async fn restart(
    State(state): State<AppState>,
    auth: AuthContext,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    act(&state, &auth, &name, "restart").await
}

#[utoipa::path(get, path = "/api/v1/deployments/{name}/logs", operation_id = "deployment_logs", tag = "deployments",
    params(("name" = String, Path, description = "Deployment name"),
        ("service" = Option<String>, Query, description = "Only this service's lines"),
        ("tail" = Option<i64>, Query, description = "The newest lines, at most this many (default 200, at most 10000)"),
        ("since" = Option<String>, Query, description = "Only lines from this time on (RFC 3339 or Unix milliseconds)"),
        ("follow" = Option<bool>, Query, description = "Keep the connection open and send new lines as server-sent events")),
    responses((status = 200, description = "Lines oldest first ({items}), or with follow=true server-sent events (`log`) of the tail then new lines", body = Object),
              (status = 503, description = "It runs on Docker and no engine answers (DOCKER_UNAVAILABLE)")))]
pub async fn logs(
    State(state): State<AppState>,
    _auth: AuthContext,
    Path(name): Path<String>,
    q: QueryParams,
) -> ApiResult<Response> {
    let l = state.deployments.load(&name).await?;
    let tail = match q.int("tail")? {
        None => None,
        Some(n) if (0..=10_000).contains(&n) => Some(n as usize),
        Some(_) => return Err(ApiError::bad_request("tail", "must be from 0 to 10000")),
    };
    let service = q.text("service").map(str::to_string);
    if let Some(s) = &service {
        if l.compose.service(s).is_none() {
            return Err(ApiError::bad_request(
                "service",
                format!("deployment {name} has no service {s:?}"),
            ));
        }
    }
    let query = LogQuery {
        service: service.clone(),
        tail,
        since: q.time("since")?,
    };
    let driver = state.deployments.driver(&name, &l.meta, &l.compose).await;
    // Subscribed before the tail is read, so no line falls between the two.
    let follow = q.flag("follow")?.then(|| driver.follow(&name));
    let lines = driver
        .logs(&name, &query)
        .await
        .map_err(DeployError::from)?;
    let Some(mut live) = follow else {
        return Ok(Json(json!({ "items": lines })).into_response());
    };
    let last = lines.last().map(|l| (l.at, l.line.clone()));
    let stream = async_stream(move |tx| async move {
        for line in &lines {
            let data = serde_json::to_string(line).unwrap_or_default();
            if tx
                .send(SseEvent::default().event("log").data(data))
                .await
                .is_err()
            {
                return;
            }
        }
        let mut caught_up = last.is_none();
        loop {
            match live.recv().await {
                Ok(line) => {
                    if service.as_ref().is_some_and(|s| *s != line.service) {
                        continue;
                    }
                    // Lines read into the tail may also arrive live: skip up to
                    // the tail's last one.
                    if !caught_up {
                        if let Some((at, text)) = &last {
                            if line.at < *at || (line.at == *at && line.line != *text) {
                                continue;
                            }
                            if line.at == *at && line.line == *text {
                                caught_up = true;
                                continue;
                            }
                        }
                        caught_up = true;
                    }
                    let data = serde_json::to_string(&line).unwrap_or_default();
                    if tx
                        .send(SseEvent::default().event("log").data(data))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    let note = json!({"missed": n}).to_string();
                    if tx
                        .send(SseEvent::default().event("lagged").data(note))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    Ok(sse(stream).into_response())
}

#[utoipa::path(get, path = "/api/v1/deployments/{name}/stats", operation_id = "deployment_stats", tag = "deployments",
    params(("name" = String, Path, description = "Deployment name")),
    responses((status = 200, description = "Each service's CPU (% of a core since the previous reading), memory, processes, restarts and uptime", body = Object),
              (status = 503, description = "It runs on Docker and no engine answers (DOCKER_UNAVAILABLE)")))]
pub async fn stats(
    State(state): State<AppState>,
    _auth: AuthContext,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    let l = state.deployments.load(&name).await?;
    let services = state
        .deployments
        .driver(&name, &l.meta, &l.compose)
        .await
        .stats(&name)
        .await;
    let total_memory: u64 = services.iter().map(|s| s.memory_bytes).sum();
    let total_cpu: f64 = services.iter().map(|s| s.cpu_percent).sum();
    Ok(Json(json!({
        "name": name,
        "services": services,
        "cpu_percent": total_cpu,
        "memory_bytes": total_memory,
    })))
}

#[derive(Serialize, ToSchema)]
pub struct ProxyStatus {
    pub name: String,
    pub domains: Vec<String>,
    pub port: Option<u16>,
    /// The route and upstream id (`deploy-<name>`).
    pub route_id: String,
    /// Whether the configuration in force routes the deployment.
    pub configured: bool,
    /// Whether what is configured is what the deployment's files ask for.
    pub up_to_date: bool,
    pub ssl: bool,
}

async fn proxy_status_of(state: &AppState, l: &Loaded) -> ApiResult<ProxyStatus> {
    let name = &l.record.name;
    let id = deployments::proxy_id(name);
    let route = state
        .store
        .get_resource(fleetgate_core::config::ROUTE_KIND, &id)
        .await?;
    let upstream = state
        .store
        .get_resource(fleetgate_core::config::UPSTREAM_KIND, &id)
        .await?;
    let wanted = deployments::proxy_objects(name, &l.compose, &l.meta)
        .map_err(|m| ApiError::bad_request("service", m))?;
    let up_to_date = match (&wanted, &route, &upstream) {
        (None, None, None) => true,
        (Some((r, u)), Some(rr), Some(ur)) => {
            serde_json::to_value(r).ok().as_ref() == Some(&rr.body)
                && serde_json::to_value(u).ok().as_ref() == Some(&ur.body)
        }
        _ => false,
    };
    Ok(ProxyStatus {
        name: name.clone(),
        domains: l.meta.domains.clone(),
        port: deployments::target_port(&l.compose, &l.meta),
        route_id: id,
        configured: route.is_some(),
        up_to_date,
        ssl: l.meta.ssl.enabled,
    })
}

#[utoipa::path(get, path = "/api/v1/proxy/status/{name}", operation_id = "proxy_status", tag = "deployments",
    params(("name" = String, Path, description = "Deployment name")),
    responses((status = 200, description = "Whether the gateway routes the deployment's domains as its files say", body = ProxyStatus)))]
pub async fn proxy_status(
    State(state): State<AppState>,
    _auth: AuthContext,
    Path(name): Path<String>,
) -> ApiResult<Json<ProxyStatus>> {
    let l = state.deployments.load(&name).await?;
    Ok(Json(proxy_status_of(&state, &l).await?))
}

#[utoipa::path(post, path = "/api/v1/proxy/setup/{name}", operation_id = "proxy_setup", tag = "deployments",
    params(("name" = String, Path, description = "Deployment name")),
    responses((status = 200, description = "The gateway routes the deployment's domains (one revision; none if nothing changed)", body = ProxyStatus),
              (status = 400, description = "The deployment has no domains or no port")))]
pub async fn proxy_setup(
    State(state): State<AppState>,
    auth: AuthContext,
    Path(name): Path<String>,
) -> ApiResult<Json<ProxyStatus>> {
    auth.require(Role::Operator)?;
    let l = state.deployments.load(&name).await?;
    if deployments::proxy_objects(&name, &l.compose, &l.meta)
        .map_err(|m| ApiError::bad_request("service", m))?
        .is_none()
    {
        return Err(ApiError::bad_request(
            "service",
            format!("deployment {name} has no domains (or no port) in its service.yml"),
        ));
    }
    apply_proxy(&state, &auth, &l, true).await?;
    Ok(Json(proxy_status_of(&state, &l).await?))
}

#[utoipa::path(delete, path = "/api/v1/proxy/{name}", operation_id = "proxy_remove", tag = "deployments",
    params(("name" = String, Path, description = "Deployment name")),
    responses((status = 204, description = "The gateway no longer routes the deployment (the deployment keeps running)")))]
pub async fn proxy_remove(
    State(state): State<AppState>,
    auth: AuthContext,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    auth.require(Role::Operator)?;
    let l = state.deployments.load(&name).await?;
    apply_proxy(&state, &auth, &l, false).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize, ToSchema)]
pub struct Vhost {
    pub domain: String,
    pub deployment: String,
    pub port: Option<u16>,
    pub ssl: bool,
    /// Whether the configuration in force routes it.
    pub configured: bool,
}

#[utoipa::path(get, path = "/api/v1/proxy/vhosts", operation_id = "proxy_vhosts", tag = "deployments",
    responses((status = 200, description = "Every deployment domain, by domain", body = ListEnvelope<Vhost>)))]
pub async fn proxy_vhosts(
    State(state): State<AppState>,
    _auth: AuthContext,
) -> ApiResult<Json<ListEnvelope<Vhost>>> {
    let mut by_domain = BTreeMap::new();
    for name in state.deployments.names().await? {
        let Ok(l) = state.deployments.load(&name).await else {
            continue;
        };
        let configured = state
            .store
            .get_resource(
                fleetgate_core::config::ROUTE_KIND,
                &deployments::proxy_id(&name),
            )
            .await?
            .is_some();
        for d in &l.meta.domains {
            by_domain.insert(
                d.clone(),
                Vhost {
                    domain: d.clone(),
                    deployment: name.clone(),
                    port: deployments::target_port(&l.compose, &l.meta),
                    ssl: l.meta.ssl.enabled,
                    configured,
                },
            );
        }
    }
    let items: Vec<Vhost> = by_domain.into_values().collect();
    let total = items.len() as i64;
    Ok(Json(ListEnvelope::new(
        items,
        total,
        fleetgate_store::PageRequest {
            limit: total.max(1),
            offset: 0,
        },
    )))
}
