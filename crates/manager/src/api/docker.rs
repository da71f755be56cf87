//! The Docker engine's resources over the API: containers (list, start, stop,
//! restart, remove, logs), images (list, import from a root filesystem
//! tarball, pull, remove), volumes and networks (list, create, remove). Reads
//! are for any signed-in user; changes are for operators and audited. The
//! engine is the one of the `docker.socket` setting; when it cannot be reached
//! every endpoint answers 503 `DOCKER_UNAVAILABLE` within a second, saying why.
//!
//! Names and ids are checked before they reach the engine: they become part of
//! the engine's URL, where a `/`, `..` or `?` would name another resource.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use bollard::models::{NetworkCreateRequest, VolumeCreateOptions};
use bollard::query_parameters::{
    CreateImageOptions, ListContainersOptions, ListImagesOptions, ListNetworksOptions,
    ListVolumesOptions, LogsOptions, RemoveContainerOptions, RemoveImageOptions,
    RemoveVolumeOptions, RestartContainerOptions, StartContainerOptions, StopContainerOptions,
};
use bollard::Docker;
use fleetgate_core::user::Role;
use fleetgate_deploy::docker::{EngineError, CALL_TIMEOUT};
use fleetgate_store::AuditEvent;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::ToSchema;

use crate::auth::AuthContext;
use crate::error::{ApiError, ApiResult};
use crate::extract::{JsonBody, QueryParams};
use crate::AppState;

/// Largest image tarball `POST /api/v1/images/import` accepts.
pub const IMPORT_LIMIT_BYTES: u64 = 2 * 1024 * 1024 * 1024;
/// How long an import may take in all.
const IMPORT_TIMEOUT: Duration = Duration::from_secs(600);
/// A pull is abandoned when the engine reports no progress for this long…
const PULL_IDLE: Duration = Duration::from_secs(60);
/// …or when it takes longer than this in all.
const PULL_TIMEOUT: Duration = Duration::from_secs(900);

fn engine_error(e: EngineError, what: &str) -> ApiError {
    match e {
        EngineError::Unavailable(why) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "DOCKER_UNAVAILABLE",
            format!("the Docker engine is unavailable: {why}"),
        ),
        EngineError::Timeout { what, limit } => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "DOCKER_TIMEOUT",
            format!(
                "the Docker engine did not finish {what} within {} s",
                limit.as_secs()
            ),
        ),
        EngineError::NotFound(m) => {
            ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", format!("{what}: {m}"))
        }
        EngineError::Conflict(m) => ApiError::conflict(format!("{what}: {m}")),
        EngineError::Invalid(m) => ApiError::new(
            StatusCode::BAD_REQUEST,
            "DOCKER_REFUSED",
            format!("{what}: {m}"),
        ),
        EngineError::Failed(m) => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "DOCKER_ERROR",
            format!("{what}: {m}"),
        ),
    }
}

/// The engine client, or 503 saying why there is none.
async fn client(state: &AppState) -> ApiResult<Docker> {
    state
        .deployments
        .docker()
        .engine()
        .client()
        .await
        .map_err(|e| engine_error(e, "connecting"))
}

async fn call<T>(
    state: &AppState,
    what: &str,
    limit: Duration,
    fut: impl std::future::Future<Output = Result<T, bollard::errors::Error>>,
) -> ApiResult<T> {
    state
        .deployments
        .docker()
        .engine()
        .call(what, limit, fut)
        .await
        .map_err(|e| engine_error(e, what))
}

/// A container, volume or network name or id as the engine accepts them.
fn check_name(field: &str, name: &str) -> ApiResult<()> {
    let ok = (1..=128).contains(&name.len())
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            field,
            format!("{name:?} is not a name or id: 1 to 128 of A-Z, a-z, 0-9, '_', '.', '-', starting with a letter or digit"),
        ))
    }
}

/// An image reference (`repo/name:tag`, `name@sha256:…`, an id).
fn check_image(field: &str, image: &str) -> ApiResult<()> {
    let ok = (1..=255).contains(&image.len())
        && image
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && image.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b'/' | b':' | b'@')
        })
        && !image
            .split('/')
            .any(|part| part.is_empty() || part == "." || part == "..");
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            field,
            format!("{image:?} is not an image reference (repo/name:tag, name@sha256:…, or an id)"),
        ))
    }
}

async fn audit(
    state: &AppState,
    auth: &AuthContext,
    action: &str,
    kind: &str,
    id: &str,
    after: Option<Value>,
) -> ApiResult<()> {
    let ev = AuditEvent {
        after,
        ..AuditEvent::new(action, kind, Some(id))
    };
    state.store.append_audit(&auth.actor, ev).await?;
    Ok(())
}

fn unix_rfc3339(secs: i64) -> String {
    super::rfc3339(secs.saturating_mul(1000))
}

#[derive(Serialize, ToSchema)]
pub struct ContainerView {
    pub id: String,
    /// Without the engine's leading `/`.
    pub name: String,
    pub image: String,
    /// `created`, `running`, `paused`, `restarting`, `exited`, `removing` or `dead`.
    pub state: String,
    /// The engine's words (`Up 5 minutes (healthy)`).
    pub status: String,
    pub created_at: String,
    /// The deployment and service that own it (`fleetgate.*` labels), if any.
    pub deployment: Option<String>,
    /// The instance of the deployment it belongs to (`<deployment>.<n>`).
    pub instance: Option<String>,
    pub service: Option<String>,
    #[schema(value_type = Object)]
    pub labels: HashMap<String, String>,
}

#[derive(Serialize, ToSchema)]
pub struct Items<T> {
    pub items: Vec<T>,
}

#[utoipa::path(get, path = "/api/v1/containers", operation_id = "list_containers", tag = "docker",
    responses((status = 200, description = "Every container of the engine, stopped ones too", body = Items<ContainerView>),
              (status = 503, description = "DOCKER_UNAVAILABLE: no engine answers at docker.socket")))]
pub async fn list_containers(
    State(state): State<AppState>,
    _auth: AuthContext,
) -> ApiResult<Json<Items<ContainerView>>> {
    let docker = client(&state).await?;
    let list = call(
        &state,
        "listing the containers",
        CALL_TIMEOUT,
        docker.list_containers(Some(ListContainersOptions {
            all: true,
            ..Default::default()
        })),
    )
    .await?;
    let items = list
        .into_iter()
        .map(|c| {
            let labels = c.labels.unwrap_or_default();
            ContainerView {
                id: c.id.unwrap_or_default(),
                name: c
                    .names
                    .and_then(|n| n.into_iter().next())
                    .map(|n| n.trim_start_matches('/').to_string())
                    .unwrap_or_default(),
                image: c.image.unwrap_or_default(),
                state: c.state.map(|s| s.to_string()).unwrap_or_default(),
                status: c.status.unwrap_or_default(),
                created_at: unix_rfc3339(c.created.unwrap_or(0)),
                deployment: labels
                    .get(fleetgate_deploy::docker::LABEL_DEPLOYMENT)
                    .map(|k| fleetgate_deploy::spec::deployment_of(k).to_string()),
                instance: labels
                    .get(fleetgate_deploy::docker::LABEL_DEPLOYMENT)
                    .filter(|k| k.contains('.'))
                    .cloned(),
                service: labels.get(fleetgate_deploy::docker::LABEL_SERVICE).cloned(),
                labels,
            }
        })
        .collect();
    Ok(Json(Items { items }))
}

async fn container_action(
    state: &AppState,
    auth: &AuthContext,
    id: &str,
    action: &str,
) -> ApiResult<StatusCode> {
    auth.require(Role::Operator)?;
    check_name("id", id)?;
    let docker = client(state).await?;
    let what = format!("{action} of container {id}");
    // Stop and restart wait for the container's own grace period (at most
    // the engine's default 10 s unless the container says otherwise).
    let limit = CALL_TIMEOUT + Duration::from_secs(60);
    let done = match action {
        "start" => {
            state
                .deployments
                .docker()
                .engine()
                .call(
                    &what,
                    limit,
                    docker.start_container(id, None::<StartContainerOptions>),
                )
                .await
        }
        "stop" => {
            state
                .deployments
                .docker()
                .engine()
                .call(
                    &what,
                    limit,
                    docker.stop_container(id, None::<StopContainerOptions>),
                )
                .await
        }
        _ => {
            state
                .deployments
                .docker()
                .engine()
                .call(
                    &what,
                    limit,
                    docker.restart_container(id, None::<RestartContainerOptions>),
                )
                .await
        }
    };
    match done {
        Ok(()) => {}
        // 304: already started, or already stopped.
        Err(EngineError::Failed(m)) if m.contains("304") => {}
        Err(e) => return Err(engine_error(e, &what)),
    }
    audit(
        state,
        auth,
        &format!("container.{action}"),
        "container",
        id,
        None,
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/v1/containers/{id}/start", operation_id = "start_container", tag = "docker",
    params(("id" = String, Path, description = "Container name or id")),
    responses((status = 204, description = "Started (or already running)"),
              (status = 503, description = "DOCKER_UNAVAILABLE")))]
pub async fn start_container(
    State(state): State<AppState>,
    auth: AuthContext,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    container_action(&state, &auth, &id, "start").await
}

#[utoipa::path(post, path = "/api/v1/containers/{id}/stop", operation_id = "stop_container", tag = "docker",
    params(("id" = String, Path, description = "Container name or id")),
    responses((status = 204, description = "Stopped (its stop signal, then a kill after its grace period)"),
              (status = 503, description = "DOCKER_UNAVAILABLE")))]
pub async fn stop_container(
    State(state): State<AppState>,
    auth: AuthContext,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    container_action(&state, &auth, &id, "stop").await
}

#[utoipa::path(post, path = "/api/v1/containers/{id}/restart", operation_id = "restart_container", tag = "docker",
    params(("id" = String, Path, description = "Container name or id")),
    responses((status = 204, description = "Restarted"),
              (status = 503, description = "DOCKER_UNAVAILABLE")))]
pub async fn restart_container(
    State(state): State<AppState>,
    auth: AuthContext,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    container_action(&state, &auth, &id, "restart").await
}

#[utoipa::path(delete, path = "/api/v1/containers/{id}", operation_id = "delete_container", tag = "docker",
    params(("id" = String, Path, description = "Container name or id"),
        ("force" = Option<bool>, Query, description = "Kill it first if it runs")),
    responses((status = 204, description = "Removed (with its anonymous volumes)"),
              (status = 409, description = "It runs and force is not set"),
              (status = 503, description = "DOCKER_UNAVAILABLE")))]
pub async fn delete_container(
    State(state): State<AppState>,
    auth: AuthContext,
    Path(id): Path<String>,
    q: QueryParams,
) -> ApiResult<StatusCode> {
    auth.require(Role::Operator)?;
    check_name("id", &id)?;
    let force = q.flag("force")?;
    let docker = client(&state).await?;
    call(
        &state,
        &format!("removing container {id}"),
        CALL_TIMEOUT,
        docker.remove_container(
            &id,
            Some(RemoveContainerOptions {
                force,
                v: true,
                link: false,
            }),
        ),
    )
    .await?;
    audit(
        &state,
        &auth,
        "container.delete",
        "container",
        &id,
        Some(json!({ "force": force })),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize, ToSchema)]
pub struct ContainerLogLine {
    /// Unix milliseconds (the engine's time stamp).
    pub at: i64,
    /// `stdout` or `stderr`.
    pub stream: &'static str,
    pub line: String,
}

#[utoipa::path(get, path = "/api/v1/containers/{id}/logs", operation_id = "container_logs", tag = "docker",
    params(("id" = String, Path, description = "Container name or id"),
        ("tail" = Option<i64>, Query, description = "The newest lines, at most this many (default 200, at most 10000)")),
    responses((status = 200, description = "Lines oldest first", body = Items<ContainerLogLine>),
              (status = 503, description = "DOCKER_UNAVAILABLE")))]
pub async fn container_logs(
    State(state): State<AppState>,
    _auth: AuthContext,
    Path(id): Path<String>,
    q: QueryParams,
) -> ApiResult<Json<Items<ContainerLogLine>>> {
    check_name("id", &id)?;
    let tail = match q.int("tail")? {
        None => 200,
        Some(n) if (0..=10_000).contains(&n) => n,
        Some(_) => return Err(ApiError::bad_request("tail", "must be from 0 to 10000")),
    };
    let docker = client(&state).await?;
    let stream = docker.logs(
        &id,
        Some(LogsOptions {
            stdout: true,
            stderr: true,
            timestamps: true,
            tail: tail.to_string(),
            ..Default::default()
        }),
    );
    let frames = call(
        &state,
        &format!("reading the log of {id}"),
        CALL_TIMEOUT,
        async move {
            let frames: Vec<_> = stream.collect().await;
            frames.into_iter().collect::<Result<Vec<_>, _>>()
        },
    )
    .await?;
    let mut items = Vec::new();
    for frame in frames {
        for (_, line) in fleetgate_deploy::docker::frame_lines("", frame) {
            items.push(ContainerLogLine {
                at: line.at,
                stream: line.stream,
                line: line.line,
            });
        }
    }
    Ok(Json(Items { items }))
}

#[derive(Serialize, ToSchema)]
pub struct ImageView {
    pub id: String,
    pub tags: Vec<String>,
    pub size_bytes: i64,
    pub created_at: String,
    /// Containers using it (-1 when the engine does not count them).
    pub containers: i64,
}

#[utoipa::path(get, path = "/api/v1/images", operation_id = "list_images", tag = "docker",
    responses((status = 200, description = "The images on this host", body = Items<ImageView>),
              (status = 503, description = "DOCKER_UNAVAILABLE")))]
pub async fn list_images(
    State(state): State<AppState>,
    _auth: AuthContext,
) -> ApiResult<Json<Items<ImageView>>> {
    let docker = client(&state).await?;
    let list = call(
        &state,
        "listing the images",
        CALL_TIMEOUT,
        docker.list_images(None::<ListImagesOptions>),
    )
    .await?;
    let items = list
        .into_iter()
        .map(|i| ImageView {
            id: i.id,
            tags: i
                .repo_tags
                .into_iter()
                .filter(|t| t != "<none>:<none>")
                .collect(),
            size_bytes: i.size,
            created_at: unix_rfc3339(i.created),
            containers: i.containers,
        })
        .collect();
    Ok(Json(Items { items }))
}

#[derive(Serialize, ToSchema)]
pub struct ImportedImage {
    /// `repo:tag`.
    pub image: String,
    /// The engine's id of the new image.
    pub id: Option<String>,
    pub size_bytes: u64,
}

#[utoipa::path(post, path = "/api/v1/images/import", operation_id = "import_image", tag = "docker",
    params(("repo" = String, Query, description = "Repository of the new image (`fgapps/site`)"),
        ("tag" = Option<String>, Query, description = "Its tag (default `latest`)")),
    request_body(content = Vec<u8>, content_type = "application/x-tar", description = "A tar of the image's root filesystem (at most 2 GiB); the engine's import, as `docker import - repo:tag`"),
    responses((status = 201, description = "Imported", body = ImportedImage),
              (status = 413, description = "The tarball is larger than 2 GiB"),
              (status = 502, description = "The engine refused the tarball"),
              (status = 503, description = "DOCKER_UNAVAILABLE")))]
pub async fn import_image(
    State(state): State<AppState>,
    auth: AuthContext,
    q: QueryParams,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<ImportedImage>)> {
    auth.require(Role::Operator)?;
    let Some(repo) = q.text("repo").map(str::to_string) else {
        return Err(ApiError::bad_request(
            "repo",
            "is required: the new image's repository",
        ));
    };
    let tag = q.text("tag").unwrap_or("latest").to_string();
    if repo.contains(':') || repo.contains('@') {
        return Err(ApiError::bad_request(
            "repo",
            "give the tag in `tag`, not in the repository",
        ));
    }
    check_image("repo", &repo)?;
    check_name("tag", &tag)?;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PAYLOAD_TOO_LARGE",
            format!("the image tarball is larger than {IMPORT_LIMIT_BYTES} bytes"),
        )
    };
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > IMPORT_LIMIT_BYTES) {
        return Err(too_large());
    }
    let docker = client(&state).await?;
    // Streamed to the engine as it arrives; cut off (and answered 413) past
    // the limit.
    let received = Arc::new(AtomicU64::new(0));
    let over = Arc::new(AtomicBool::new(false));
    let (counted, flagged) = (received.clone(), over.clone());
    let stream = body.into_data_stream().map(move |chunk| {
        let chunk = chunk.map_err(std::io::Error::other)?;
        let total = counted.fetch_add(chunk.len() as u64, Ordering::Relaxed) + chunk.len() as u64;
        if total > IMPORT_LIMIT_BYTES {
            flagged.store(true, Ordering::Relaxed);
            return Err(std::io::Error::other("the image tarball is too large"));
        }
        Ok(chunk)
    });
    let image = format!("{repo}:{tag}");
    let progress = docker.create_image(
        Some(CreateImageOptions {
            from_src: Some("-".into()),
            repo: Some(repo.clone()),
            tag: Some(tag.clone()),
            ..Default::default()
        }),
        Some(bollard::body_try_stream(stream)),
        None,
    );
    let steps = call(
        &state,
        &format!("importing {image}"),
        IMPORT_TIMEOUT,
        async move {
            let steps: Vec<_> = progress.collect().await;
            steps.into_iter().collect::<Result<Vec<_>, _>>()
        },
    )
    .await;
    if over.load(Ordering::Relaxed) {
        return Err(too_large());
    }
    let steps = steps?;
    let id = steps
        .iter()
        .rev()
        .find_map(|s| s.status.clone())
        .filter(|s| s.starts_with("sha256:"));
    let size_bytes = received.load(Ordering::Relaxed);
    audit(
        &state,
        &auth,
        "image.import",
        "image",
        &image,
        Some(json!({ "id": id, "size_bytes": size_bytes })),
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(ImportedImage {
            image,
            id,
            size_bytes,
        }),
    ))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PullImage {
    /// `name:tag` or `registry/name:tag` (default tag `latest`).
    pub image: String,
}

#[utoipa::path(post, path = "/api/v1/images/pull", operation_id = "pull_image", tag = "docker", request_body = PullImage,
    responses((status = 201, description = "Pulled", body = Object),
              (status = 502, description = "DOCKER_PULL_FAILED: the engine could not pull it (no registry reachable, no such image)"),
              (status = 503, description = "DOCKER_UNAVAILABLE"),
              (status = 504, description = "DOCKER_TIMEOUT: no progress for 60 s, or 15 min in all")))]
pub async fn pull_image(
    State(state): State<AppState>,
    auth: AuthContext,
    JsonBody(body): JsonBody<PullImage>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    auth.require(Role::Operator)?;
    check_image("image", &body.image)?;
    let (name, tag) = match body.image.rsplit_once(':') {
        Some((n, t)) if !t.contains('/') => (n.to_string(), t.to_string()),
        _ => (body.image.clone(), "latest".to_string()),
    };
    let docker = client(&state).await?;
    let mut progress = docker.create_image(
        Some(CreateImageOptions {
            from_image: Some(name.clone()),
            tag: Some(tag.clone()),
            ..Default::default()
        }),
        None,
        None,
    );
    let image = format!("{name}:{tag}");
    let engine = state.deployments.docker().engine().clone();
    let pulled = tokio::time::timeout(PULL_TIMEOUT, async {
        let mut last = None;
        loop {
            match tokio::time::timeout(PULL_IDLE, progress.next()).await {
                Err(_) => {
                    return Err(EngineError::Timeout {
                        what: format!("pulling {image} (no progress)"),
                        limit: PULL_IDLE,
                    })
                }
                Ok(None) => return Ok(last),
                Ok(Some(Ok(step))) => last = step.status,
                Ok(Some(Err(e))) => return Err(engine.sort(e, &format!("pulling {image}"))),
            }
        }
    })
    .await
    .unwrap_or_else(|_| {
        Err(EngineError::Timeout {
            what: format!("pulling {image}"),
            limit: PULL_TIMEOUT,
        })
    });
    let status = match pulled {
        Ok(s) => s,
        Err(e @ (EngineError::Unavailable(_) | EngineError::Timeout { .. })) => {
            return Err(engine_error(e, &format!("pulling {image}")))
        }
        Err(e) => {
            return Err(ApiError::new(
                StatusCode::BAD_GATEWAY,
                "DOCKER_PULL_FAILED",
                format!("the engine could not pull {image}: {e}"),
            ))
        }
    };
    audit(&state, &auth, "image.pull", "image", &image, None).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "image": image, "status": status })),
    ))
}

#[utoipa::path(delete, path = "/api/v1/images/{id}", operation_id = "delete_image", tag = "docker",
    params(("id" = String, Path, description = "Image id or reference (URL-encode `/` as %2F)"),
        ("force" = Option<bool>, Query, description = "Remove it even if tagged several times or used by stopped containers")),
    responses((status = 204, description = "Removed"),
              (status = 409, description = "A container uses it"),
              (status = 503, description = "DOCKER_UNAVAILABLE")))]
pub async fn delete_image(
    State(state): State<AppState>,
    auth: AuthContext,
    Path(id): Path<String>,
    q: QueryParams,
) -> ApiResult<StatusCode> {
    auth.require(Role::Operator)?;
    check_image("id", &id)?;
    let force = q.flag("force")?;
    let docker = client(&state).await?;
    call(
        &state,
        &format!("removing image {id}"),
        CALL_TIMEOUT,
        docker.remove_image(
            &id,
            Some(RemoveImageOptions {
                force,
                noprune: false,
            }),
            None,
        ),
    )
    .await?;
    audit(
        &state,
        &auth,
        "image.delete",
        "image",
        &id,
        Some(json!({ "force": force })),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize, ToSchema)]
pub struct VolumeView {
    pub name: String,
    pub driver: String,
    pub mountpoint: String,
    #[schema(value_type = Object)]
    pub labels: HashMap<String, String>,
}

#[utoipa::path(get, path = "/api/v1/volumes", operation_id = "list_volumes", tag = "docker",
    responses((status = 200, description = "The engine's volumes", body = Items<VolumeView>),
              (status = 503, description = "DOCKER_UNAVAILABLE")))]
pub async fn list_volumes(
    State(state): State<AppState>,
    _auth: AuthContext,
) -> ApiResult<Json<Items<VolumeView>>> {
    let docker = client(&state).await?;
    let list = call(
        &state,
        "listing the volumes",
        CALL_TIMEOUT,
        docker.list_volumes(None::<ListVolumesOptions>),
    )
    .await?;
    let items = list
        .volumes
        .unwrap_or_default()
        .into_iter()
        .map(|v| VolumeView {
            name: v.name,
            driver: v.driver,
            mountpoint: v.mountpoint,
            labels: v.labels,
        })
        .collect();
    Ok(Json(Items { items }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateVolume {
    pub name: String,
    /// Default `local`.
    pub driver: Option<String>,
}

#[utoipa::path(post, path = "/api/v1/volumes", operation_id = "create_volume", tag = "docker", request_body = CreateVolume,
    responses((status = 201, description = "Created (or it existed)", body = VolumeView),
              (status = 503, description = "DOCKER_UNAVAILABLE")))]
pub async fn create_volume(
    State(state): State<AppState>,
    auth: AuthContext,
    JsonBody(body): JsonBody<CreateVolume>,
) -> ApiResult<(StatusCode, Json<VolumeView>)> {
    auth.require(Role::Operator)?;
    check_name("name", &body.name)?;
    if let Some(d) = &body.driver {
        check_name("driver", d)?;
    }
    let docker = client(&state).await?;
    let v = call(
        &state,
        &format!("creating volume {}", body.name),
        CALL_TIMEOUT,
        docker.create_volume(VolumeCreateOptions {
            name: Some(body.name.clone()),
            driver: body.driver.clone(),
            ..Default::default()
        }),
    )
    .await?;
    audit(
        &state,
        &auth,
        "volume.create",
        "volume",
        &v.name,
        Some(json!({ "driver": v.driver })),
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(VolumeView {
            name: v.name,
            driver: v.driver,
            mountpoint: v.mountpoint,
            labels: v.labels,
        }),
    ))
}

#[utoipa::path(delete, path = "/api/v1/volumes/{name}", operation_id = "delete_volume", tag = "docker",
    params(("name" = String, Path, description = "Volume name")),
    responses((status = 204, description = "Removed"),
              (status = 409, description = "A container uses it"),
              (status = 503, description = "DOCKER_UNAVAILABLE")))]
pub async fn delete_volume(
    State(state): State<AppState>,
    auth: AuthContext,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    auth.require(Role::Operator)?;
    check_name("name", &name)?;
    let docker = client(&state).await?;
    call(
        &state,
        &format!("removing volume {name}"),
        CALL_TIMEOUT,
        docker.remove_volume(&name, None::<RemoveVolumeOptions>),
    )
    .await?;
    audit(&state, &auth, "volume.delete", "volume", &name, None).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize, ToSchema)]
pub struct NetworkView {
    pub id: String,
    pub name: String,
    pub driver: String,
    pub scope: String,
    pub internal: bool,
}

#[utoipa::path(get, path = "/api/v1/networks", operation_id = "list_networks", tag = "docker",
    responses((status = 200, description = "The engine's networks", body = Items<NetworkView>),
              (status = 503, description = "DOCKER_UNAVAILABLE")))]
pub async fn list_networks(
    State(state): State<AppState>,
    _auth: AuthContext,
) -> ApiResult<Json<Items<NetworkView>>> {
    let docker = client(&state).await?;
    let list = call(
        &state,
        "listing the networks",
        CALL_TIMEOUT,
        docker.list_networks(None::<ListNetworksOptions>),
    )
    .await?;
    let items = list
        .into_iter()
        .map(|n| NetworkView {
            id: n.id.unwrap_or_default(),
            name: n.name.unwrap_or_default(),
            driver: n.driver.unwrap_or_default(),
            scope: n.scope.unwrap_or_default(),
            internal: n.internal.unwrap_or(false),
        })
        .collect();
    Ok(Json(Items { items }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateNetwork {
    pub name: String,
    /// Default `bridge`.
    pub driver: Option<String>,
    /// No route out of the network.
    #[serde(default)]
    pub internal: bool,
}

#[utoipa::path(post, path = "/api/v1/networks", operation_id = "create_network", tag = "docker", request_body = CreateNetwork,
    responses((status = 201, description = "Created", body = Object),
              (status = 409, description = "A network of that name exists"),
              (status = 503, description = "DOCKER_UNAVAILABLE")))]
pub async fn create_network(
    State(state): State<AppState>,
    auth: AuthContext,
    JsonBody(body): JsonBody<CreateNetwork>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    auth.require(Role::Operator)?;
    check_name("name", &body.name)?;
    if let Some(d) = &body.driver {
        check_name("driver", d)?;
    }
    let docker = client(&state).await?;
    let created = call(
        &state,
        &format!("creating network {}", body.name),
        CALL_TIMEOUT,
        docker.create_network(NetworkCreateRequest {
            name: body.name.clone(),
            driver: body.driver.clone(),
            internal: Some(body.internal),
            ..Default::default()
        }),
    )
    .await?;
    audit(
        &state,
        &auth,
        "network.create",
        "network",
        &body.name,
        Some(json!({ "id": created.id, "driver": body.driver, "internal": body.internal })),
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "id": created.id, "name": body.name })),
    ))
}

#[utoipa::path(delete, path = "/api/v1/networks/{name}", operation_id = "delete_network", tag = "docker",
    params(("name" = String, Path, description = "Network name or id")),
    responses((status = 204, description = "Removed"),
              (status = 409, description = "Containers are connected to it"),
              (status = 503, description = "DOCKER_UNAVAILABLE")))]
pub async fn delete_network(
    State(state): State<AppState>,
    auth: AuthContext,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    auth.require(Role::Operator)?;
    check_name("name", &name)?;
    let docker = client(&state).await?;
    call(
        &state,
        &format!("removing network {name}"),
        CALL_TIMEOUT,
        docker.remove_network(&name),
    )
    .await?;
    audit(&state, &auth, "network.delete", "network", &name, None).await?;
    Ok(StatusCode::NO_CONTENT)
}
