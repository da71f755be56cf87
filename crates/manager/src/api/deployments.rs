//! Deployments over the API: create from a `compose.yml` and a `service.yml`
//! (checked, with every problem's file, line and field), list and read with each
//! service's live state, update (If-Match), delete, start/stop/restart, logs (a
//! tail, or followed over SSE) and resource use; and the gateway proxy of each
//! deployment's domains (`/api/v1/proxy/...`). The files' contents are shown to
//! operators and admins only: environment values in them may be secrets.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::Event as SseEvent;
use axum::response::{IntoResponse, Response};
use axum::Json;
use fleetgate_core::user::Role;
use fleetgate_deploy::spec::{LogQuery, Problem, ServiceStatus};
use fleetgate_store::{Actor, AuditEvent, ConfigEdit, StoreError};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use super::events::{async_stream, sse};
use super::rfc3339;
use crate::auth::AuthContext;
use crate::deployments::{self, DeployError, Desired, Loaded, Router};
use crate::error::{ApiError, ApiResult};
use crate::extract::{json_with_etag, IfMatch, JsonBody, ListEnvelope, OptionalJson, QueryParams};
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
    /// The release serving (0 before one went live).
    pub release: u64,
    /// How the next release replaces the running one: `recreate` or
    /// `blue-green` (what `deploy.strategy: auto` comes to on this driver).
    pub strategy: &'static str,
    /// The live instance: its key, the local port the gateway sends traffic to
    /// and each service's port.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub instance: Option<Value>,
    /// Replaced instances still finishing their requests and WebSockets.
    pub draining: Vec<String>,
    pub created_at: String,
    pub updated_at: String,
    /// `compose.yml` (operators and admins only, on a single deployment).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compose: Option<String>,
    /// `service.yml` (operators and admins only, on a single deployment).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

async fn view(state: &AppState, l: &Loaded, files: bool) -> DeploymentView {
    let d = &state.deployments;
    let name = &l.record.name;
    let kind = d.driver_kind(name, &l.meta, &l.compose).await;
    let services = d.statuses(l).await;
    let live = d.live(name);
    let (ssl_status, ssl_error) = state
        .acme
        .deployment_status(state, name, l.meta.ssl.enabled);
    DeploymentView {
        name: name.clone(),
        desired: l.record.desired,
        status: fleetgate_deploy::spec::overall(&services),
        driver: serde_json::to_value(kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
        services,
        domains: l.meta.domains.clone(),
        port: live.as_ref().map_or_else(
            || deployments::target_port(&l.compose, &l.meta),
            |i| i.target,
        ),
        ssl: l.meta.ssl.enabled,
        ssl_status,
        ssl_error,
        version: l.record.version,
        release: l.record.release,
        strategy: fleetgate_deploy::rollout::strategy(&l.compose, &l.meta, kind).as_str(),
        instance: live.map(|i| {
            json!({"key": i.key, "release": i.release, "target": i.target, "ports": i.ports,
                   "started_at": rfc3339(i.started_at)})
        }),
        draining: d.draining(name).into_iter().map(|i| i.key).collect(),
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
            DeployError::ReleaseNotFound { name, release } => {
                ApiError::not_found(format!("release {release} of deployment {name}"))
            }
            DeployError::NoRollback(name) => ApiError::new(
                StatusCode::CONFLICT,
                "NO_ROLLBACK",
                format!("deployment {name} has no earlier release that served to roll back to"),
            ),
            DeployError::ReleaseFailed { name, release, why } => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "RELEASE_FAILED",
                format!("release {release} of deployment {name} was dropped: {why}"),
            )
            .with_details(json!({"release": release})),
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
    let ev = AuditEvent {
        before,
        after,
        ..AuditEvent::new(action, "deployment", Some(name))
    };
    state.store.append_audit(&auth.actor, ev).await?;
    Ok(())
}

/// Makes the gateway serve the deployment's domains (or stop serving them) as one
/// revision: at its live instances' ports when it runs, at the port its files
/// give otherwise. `None` when nothing changed.
async fn apply_proxy(
    state: &AppState,
    auth: &AuthContext,
    l: &Loaded,
    serve: bool,
) -> ApiResult<Option<i64>> {
    let targets = state.deployments.targets(&l.record.name);
    write_proxy(state, &auth.actor, l, serve.then_some(targets.as_slice())).await
}

/// [`apply_proxy`] with the targets given (`None`: not served).
async fn write_proxy(
    state: &AppState,
    actor: &Actor,
    l: &Loaded,
    targets: Option<&[(u16, u32)]>,
) -> ApiResult<Option<i64>> {
    let name = &l.record.name;
    let objects = match targets {
        Some(targets) => deployments::proxy_objects(name, &l.compose, &l.meta, targets)
            .map_err(|m| ApiError::bad_request("service", m))?,
        None => None,
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
            actor,
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

/// The gateway of this manager as a deployment's [`Router`]: a switch is a
/// revision, done once this process's gateway (if it runs one) applied it.
pub struct GatewayRouter {
    pub state: AppState,
    pub actor: Actor,
}

impl GatewayRouter {
    /// A router acting as `actor`, shared by a release and its drain.
    pub fn shared(state: &AppState, actor: &Actor) -> Arc<dyn Router> {
        Arc::new(GatewayRouter {
            state: state.clone(),
            actor: actor.clone(),
        })
    }
}

#[async_trait::async_trait]
impl Router for GatewayRouter {
    async fn route(&self, loaded: &Loaded, targets: &[(u16, u32)]) -> Result<(), String> {
        let written = write_proxy(&self.state, &self.actor, loaded, Some(targets))
            .await
            .map_err(|e| e.message)?;
        let (Some(revision), Some(dp)) = (written, self.state.data_plane.get()) else {
            return Ok(());
        };
        let revision = u64::try_from(revision).unwrap_or(0);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while dp.status.latest().applied.revision < revision {
            if std::time::Instant::now() >= deadline {
                return Err(format!(
                    "the gateway did not apply revision {revision} within 10 s"
                ));
            }
            dp.status.fresh(std::time::Duration::from_millis(100)).await;
        }
        Ok(())
    }

    fn released(&self, name: &str, release: &deployments::Release) {
        use fleetgate_core::events::{NewEvent, Severity};
        let details = json!({"deployment": name, "release": release.number,
            "version": release.version, "strategy": release.strategy,
            "rollback_of": release.rollback_of, "error": release.error});
        let event = match release.state {
            deployments::ReleaseState::Live => NewEvent::new(
                "deployment.released",
                Severity::Info,
                format!("release {} of deployment {name} serves", release.number),
            ),
            deployments::ReleaseState::Failed => NewEvent::new(
                "deployment.release_failed",
                Severity::Warning,
                format!(
                    "release {} of deployment {name} was dropped: {}",
                    release.number,
                    release.error.as_deref().unwrap_or("not ready")
                ),
            ),
            _ => return,
        };
        self.state.emit(event.details(details));
    }

    async fn in_flight(&self, name: &str, port: u16) -> Option<u64> {
        let dp = self.state.data_plane.get()?;
        let report = dp.status.fresh(std::time::Duration::from_millis(500)).await;
        let suffix = format!(":{port}");
        report
            .upstream_health(&deployments::proxy_id(name))?
            .iter()
            .find(|t| t.url.trim_end_matches('/').ends_with(&suffix))
            .map(|t| t.active_connections)
    }
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
    Ok(Json(ListEnvelope::whole(items)))
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
        let router = GatewayRouter::shared(&state, &auth.actor);
        if let Err(e) = state.deployments.start(&l, &router).await {
            let _ = state.deployments.stop(&l).await;
            let _ = state
                .deployments
                .set_desired(&body.name, Desired::Stopped)
                .await;
            // The deployment exists (stopped): a client opens it rather than
            // offering the form again.
            return Err(ApiError::from(e).and_details(json!({"created": true, "name": body.name})));
        }
    }
    let l = state.deployments.load(&body.name).await?;
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
        let router = GatewayRouter::shared(&state, &auth.actor);
        if let Err(e) = state.deployments.start(&after, &router).await {
            // The new files are saved; only the start failed (the release
            // serving before, if any, serves on).
            return Err(ApiError::from(e)
                .and_details(json!({"saved": true, "version": after.record.version})));
        }
    }
    let after = state.deployments.load(&name).await?;
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
    // Audited before it is tried: the operator's wish is recorded either way.
    audit(
        state,
        auth,
        &format!("deployment.{action}"),
        name,
        None,
        Some(json!({"desired": desired})),
    )
    .await?;
    let router = GatewayRouter::shared(state, &auth.actor);
    match action {
        "stop" => state.deployments.stop(&l).await?,
        // A new instance replaces the running one as a release does (with
        // blue-green, without a gap).
        _ => {
            state.deployments.start(&l, &router).await?;
        }
    }
    let l = state.deployments.load(name).await?;
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

/// One release as the API shows it.
#[derive(Serialize, ToSchema)]
pub struct ReleaseView {
    pub number: u64,
    /// The files' version it was made from.
    pub version: i64,
    /// `deploying`, `live`, `failed`, `replaced`, or `stopped` (it served
    /// until the deployment was stopped; live again on start with the same files).
    pub state: deployments::ReleaseState,
    pub created_at: String,
    pub live_at: Option<String>,
    pub ended_at: Option<String>,
    /// Why it was dropped.
    pub error: Option<String>,
    /// `process` or `docker`.
    #[schema(value_type = String)]
    pub driver: fleetgate_deploy::spec::DriverKind,
    /// `recreate` or `blue-green`.
    #[schema(value_type = String)]
    pub strategy: fleetgate_deploy::spec::Strategy,
    /// The release whose files a rollback restored.
    pub rollback_of: Option<u64>,
    pub compose_sha256: String,
    pub service_sha256: String,
    /// Its `compose.yml` and `service.yml` (operators and admins, one release).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compose: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

fn release_view(r: deployments::Release, compose: &str, service: &str, files: bool) -> ReleaseView {
    ReleaseView {
        number: r.number,
        version: r.version,
        state: r.state,
        created_at: rfc3339(r.created_at),
        live_at: r.live_at.map(rfc3339),
        ended_at: r.ended_at.map(rfc3339),
        error: r.error,
        driver: r.driver,
        strategy: r.strategy,
        rollback_of: r.rollback_of,
        compose_sha256: digest(compose),
        service_sha256: digest(service),
        compose: files.then(|| compose.to_string()),
        service: files.then(|| service.to_string()),
    }
}

#[utoipa::path(get, path = "/api/v1/deployments/{name}/releases", operation_id = "list_deployment_releases", tag = "deployments",
    params(("name" = String, Path, description = "Deployment name")),
    responses((status = 200, description = "Its releases, newest first (the last 20, and the one serving)", body = ListEnvelope<ReleaseView>),
              (status = 404, description = "No such deployment")))]
pub async fn releases(
    State(state): State<AppState>,
    _auth: AuthContext,
    Path(name): Path<String>,
) -> ApiResult<Json<ListEnvelope<ReleaseView>>> {
    let mut items = Vec::new();
    for r in state.deployments.releases(&name).await? {
        let (r, compose, service) = state.deployments.release(&name, r.number).await?;
        items.push(release_view(r, &compose, &service, false));
    }
    Ok(Json(ListEnvelope::whole(items)))
}

#[utoipa::path(get, path = "/api/v1/deployments/{name}/releases/{number}", operation_id = "get_deployment_release", tag = "deployments",
    params(("name" = String, Path, description = "Deployment name"), ("number" = u64, Path, description = "Release number")),
    responses((status = 200, description = "The release, with its files for operators and admins", body = ReleaseView),
              (status = 404, description = "No such deployment or release")))]
pub async fn release(
    State(state): State<AppState>,
    auth: AuthContext,
    Path((name, number)): Path<(String, String)>,
) -> ApiResult<Json<ReleaseView>> {
    let number: u64 = number.parse().map_err(|_| {
        ApiError::bad_request("number", format!("{number:?} is not a release number"))
    })?;
    state.deployments.load(&name).await?;
    let (r, compose, service) = state.deployments.release(&name, number).await?;
    Ok(Json(release_view(
        r,
        &compose,
        &service,
        auth.role >= Role::Operator,
    )))
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// The release whose files come back (default: the newest release before
    /// the one serving that once served).
    pub release: Option<u64>,
}

#[utoipa::path(post, path = "/api/v1/deployments/{name}/rollback", operation_id = "rollback_deployment", tag = "deployments",
    params(("name" = String, Path, description = "Deployment name")), request_body = RollbackRequest,
    responses((status = 200, description = "The release's files (image or command, environment, domains, certificate) are the deployment's again, and a running deployment serves them as a new release", body = DeploymentView),
              (status = 404, description = "No such deployment or release"),
              (status = 409, description = "No earlier release served (NO_ROLLBACK)"),
              (status = 422, description = "The restored release did not become ready and was dropped (RELEASE_FAILED); the one serving serves on"),
              (status = 503, description = "It runs on Docker and no engine answers (DOCKER_UNAVAILABLE)")))]
pub async fn rollback(
    State(state): State<AppState>,
    auth: AuthContext,
    Path(name): Path<String>,
    OptionalJson(body): OptionalJson<RollbackRequest>,
) -> ApiResult<Response> {
    auth.require(Role::Operator)?;
    let wanted = body.unwrap_or_default().release;
    let (before, after, restored) = state.deployments.rollback(&name, wanted).await?;
    let mut audited = audit_view(&after);
    audited["restored_release"] = json!(restored);
    audit(
        &state,
        &auth,
        "deployment.rollback",
        &name,
        Some(audit_view(&before)),
        Some(audited),
    )
    .await?;
    apply_proxy(&state, &auth, &after, true).await?;
    request_certificate(&state, &auth, &after);
    if after.record.desired == Desired::Running {
        let router = GatewayRouter::shared(&state, &auth.actor);
        if let Err(e) = state
            .deployments
            .start_rollback(&after, restored, &router)
            .await
        {
            return Err(ApiError::from(e)
                .and_details(json!({"saved": true, "version": after.record.version})));
        }
    }
    let after = state.deployments.load(&name).await?;
    Ok(json_with_etag(
        StatusCode::OK,
        after.record.version,
        view(&state, &after, true).await,
    ))
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
    let (driver, key) = state.deployments.driver(&name, &l.meta, &l.compose).await;
    // Subscribed before the tail is read, so no line falls between the two.
    let follow = q.flag("follow")?.then(|| driver.follow(&key));
    let lines = driver.logs(&key, &query).await.map_err(DeployError::from)?;
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
    let (driver, key) = state.deployments.driver(&name, &l.meta, &l.compose).await;
    let services = driver.stats(&key).await;
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

/// The port the gateway sends a deployment's traffic to: its live instance's,
/// or the one its files give when it does not run.
fn serving_port(state: &AppState, l: &Loaded) -> Option<u16> {
    state
        .deployments
        .live(&l.record.name)
        .and_then(|i| i.target)
        .or_else(|| deployments::target_port(&l.compose, &l.meta))
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
    let targets = state.deployments.targets(name);
    let wanted = deployments::proxy_objects(name, &l.compose, &l.meta, &targets)
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
        port: serving_port(state, l),
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
    if deployments::proxy_objects(&name, &l.compose, &l.meta, &[])
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
                    port: serving_port(&state, &l),
                    ssl: l.meta.ssl.enabled,
                    configured,
                },
            );
        }
    }
    let items: Vec<Vhost> = by_domain.into_values().collect();
    Ok(Json(ListEnvelope::whole(items)))
}
