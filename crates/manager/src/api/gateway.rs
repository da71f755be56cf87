//! Gateway configuration: `/api/v1/upstreams` and `/api/v1/routes`, plus the data
//! plane's view of upstream health and circuit breakers.
//!
//! Every write validates the object, then — inside its write transaction, against
//! the document it replaces (see [`crate::revisions`]) — the whole document it
//! produces (references, overlapping routes, the route table the gateway compiles
//! from all of them), records a revision and publishes it.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use fleetgate_core::config::{ROUTE_KIND, UPSTREAM_KIND};
use fleetgate_core::gateway::{BreakerStatus, Route, TargetHealth, Upstream};
use fleetgate_core::user::Role;
use fleetgate_core::ConfigDocument;
use fleetgate_store::{ConfigEdit, ResourceRecord, ResourceSet, StoreError};
use serde::Serialize;
use serde_json::Value;

use crate::api::config::current_document;
use crate::auth::AuthContext;
use crate::error::{ApiError, ApiResult};
use crate::extract::{parse_json, IfMatch, JsonBody, ListEnvelope, PageParams, Pagination};
use crate::revisions::ExtraCheck;
use crate::AppState;

fn with_etag<T: Serialize>(status: StatusCode, body: &T, version: i64) -> Response {
    crate::extract::json_with_etag(status, version, body)
}

fn page_of<T: Clone>(all: &[T], page: fleetgate_store::PageRequest) -> Vec<T> {
    all.iter()
        .skip(usize::try_from(page.offset).unwrap_or(usize::MAX))
        .take(usize::try_from(page.limit).unwrap_or(0))
        .cloned()
        .collect()
}

async fn load(state: &AppState, kind: &str, name: &str, what: &str) -> ApiResult<ResourceRecord> {
    state
        .store
        .get_resource(kind, name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("{what} {name}")))
}

/// Stores one object as a new revision and publishes it; `extra` judges the
/// change against the document it replaces, inside the write.
#[allow(clippy::too_many_arguments)]
async fn save(
    state: &AppState,
    auth: &AuthContext,
    kind: &str,
    name: &str,
    body: Value,
    expected: Option<i64>,
    message: String,
    extra: Option<ExtraCheck<'_>>,
) -> ApiResult<ResourceRecord> {
    let edit = ConfigEdit::Put {
        kind,
        name,
        body: &body,
        expected_version: expected,
    };
    let committed = match state
        .change_config(&auth.actor, edit, &message, extra)
        .await
    {
        Ok(c) => c,
        // The whole route table did not compile with this route in it: say so of
        // the route being saved (the table's own message may list others first).
        Err(StoreError::Rejected(mut v)) if kind == ROUTE_KIND => {
            for e in &mut v.errors {
                if e.field.starts_with("routes") {
                    e.field = "path".into();
                    e.message = format!("route {name:?} cannot be saved: {}", e.message);
                }
            }
            return Err(v.into());
        }
        Err(e) => return Err(e.into()),
    };
    let fleetgate_store::CommittedRevision { record, before, .. } = committed;
    crate::revisions::drop_later(before);
    record.ok_or_else(|| ApiError::internal("save", "the store returned no object"))
}

/// Deletes one object as a new revision and publishes it.
async fn remove(
    state: &AppState,
    auth: &AuthContext,
    kind: &str,
    name: &str,
    expected: Option<i64>,
    message: String,
    extra: Option<ExtraCheck<'_>>,
) -> ApiResult<()> {
    let edit = ConfigEdit::Delete {
        kind,
        name,
        expected_version: expected,
    };
    let committed = state
        .change_config(&auth.actor, edit, &message, extra)
        .await?;
    crate::revisions::drop_later(committed.before);
    Ok(())
}

/// Parses a JSON body into `T` after letting `fill` complete it (e.g. the id from the path).
fn parse_object<T: serde::de::DeserializeOwned>(
    mut body: Value,
    fill: impl FnOnce(&mut serde_json::Map<String, Value>) -> ApiResult<()>,
) -> ApiResult<T> {
    let Some(obj) = body.as_object_mut() else {
        return Err(ApiError::bad_request("body", "must be a JSON object"));
    };
    fill(obj)?;
    parse_json(body.to_string().as_bytes())
}

// ---------------------------------------------------------------- upstreams

#[utoipa::path(get, path = "/api/v1/upstreams", operation_id = "list_upstreams", tag = "gateway", params(PageParams),
    responses((status = 200, description = "Upstreams, by name", body = ListEnvelope<Upstream>)))]
pub async fn list_upstreams(
    State(state): State<AppState>,
    _auth: AuthContext,
    Pagination(page): Pagination,
) -> ApiResult<Json<ListEnvelope<Upstream>>> {
    let doc = current_document(&state).await?;
    Ok(Json(ListEnvelope::new(
        page_of(&doc.upstreams, page),
        doc.upstreams.len() as i64,
        page,
    )))
}

#[utoipa::path(post, path = "/api/v1/upstreams", operation_id = "create_upstream", tag = "gateway", request_body = Upstream,
    responses((status = 201, description = "Created as a new revision", body = Upstream)))]
pub async fn create_upstream(
    State(state): State<AppState>,
    auth: AuthContext,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult<Response> {
    auth.require(Role::Operator)?;
    let upstream: Upstream = parse_object(body, |_| Ok(()))?;
    upstream.validate()?;
    let value = serde_json::to_value(&upstream).map_err(|e| ApiError::internal("serialize", e))?;
    let name = upstream.name.clone();
    let absent = move |before: &ResourceSet, _: &ConfigDocument| {
        if before
            .get(UPSTREAM_KIND)
            .is_some_and(|u| u.contains_key(&name))
        {
            return Err(StoreError::Conflict(format!(
                "upstream {name:?} already exists"
            )));
        }
        Ok(())
    };
    let rec = save(
        &state,
        &auth,
        UPSTREAM_KIND,
        &upstream.name,
        value,
        None,
        format!("create upstream {}", upstream.name),
        Some(&absent),
    )
    .await?;
    Ok(with_etag(StatusCode::CREATED, &upstream, rec.version))
}

#[utoipa::path(get, path = "/api/v1/upstreams/{name}", operation_id = "get_upstream", tag = "gateway", params(("name" = String, Path, description = "Upstream name")),
    responses((status = 200, description = "The upstream", body = Upstream)))]
pub async fn get_upstream(
    State(state): State<AppState>,
    _auth: AuthContext,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    let rec = load(&state, UPSTREAM_KIND, &name, "upstream").await?;
    Ok(with_etag(StatusCode::OK, &rec.body, rec.version))
}

#[utoipa::path(put, path = "/api/v1/upstreams/{name}", operation_id = "update_upstream", tag = "gateway", params(("name" = String, Path, description = "Upstream name")),
    request_body = Upstream,
    responses((status = 200, description = "Replaced as a new revision", body = Upstream)))]
pub async fn update_upstream(
    State(state): State<AppState>,
    auth: AuthContext,
    Path(name): Path<String>,
    IfMatch(expected): IfMatch,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult<Response> {
    auth.require(Role::Operator)?;
    let current = load(&state, UPSTREAM_KIND, &name, "upstream").await?;
    let upstream: Upstream = parse_object(body, |obj| {
        match obj.get("name") {
            None => {
                obj.insert("name".into(), Value::String(name.clone()));
            }
            Some(Value::String(n)) if *n == name => {}
            Some(_) => {
                return Err(ApiError::bad_request(
                    "name",
                    "an upstream cannot be renamed; create a new one",
                ))
            }
        }
        Ok(())
    })?;
    upstream.validate()?;
    let value = serde_json::to_value(&upstream).map_err(|e| ApiError::internal("serialize", e))?;
    let rec = save(
        &state,
        &auth,
        UPSTREAM_KIND,
        &name,
        value,
        Some(expected.unwrap_or(current.version)),
        format!("update upstream {name}"),
        None,
    )
    .await?;
    Ok(with_etag(StatusCode::OK, &upstream, rec.version))
}

#[utoipa::path(delete, path = "/api/v1/upstreams/{name}", operation_id = "delete_upstream", tag = "gateway", params(("name" = String, Path, description = "Upstream name")),
    responses((status = 204, description = "Deleted as a new revision")))]
pub async fn delete_upstream(
    State(state): State<AppState>,
    auth: AuthContext,
    Path(name): Path<String>,
    IfMatch(expected): IfMatch,
) -> ApiResult<StatusCode> {
    auth.require(Role::Operator)?;
    load(&state, UPSTREAM_KIND, &name, "upstream").await?;
    let unused = |_: &ResourceSet, after: &ConfigDocument| {
        let users: Vec<&str> = after
            .routes
            .iter()
            .filter(|r| r.upstream == name)
            .map(|r| r.id.as_str())
            .collect();
        if users.is_empty() {
            return Ok(());
        }
        Err(StoreError::Conflict(format!(
            "upstream {name:?} is used by routes {}",
            users.join(", ")
        )))
    };
    let message = format!("delete upstream {name}");
    remove(
        &state,
        &auth,
        UPSTREAM_KIND,
        &name,
        expected,
        message,
        Some(&unused),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v1/upstreams/{name}/health", operation_id = "upstream_health", tag = "gateway", params(("name" = String, Path, description = "Upstream name")),
    responses((status = 200, description = "Each target's state as the built-in gateway sees it", body = Vec<TargetHealth>)))]
pub async fn upstream_health(
    State(state): State<AppState>,
    _auth: AuthContext,
    Path(name): Path<String>,
) -> ApiResult<Json<Vec<TargetHealth>>> {
    load(&state, UPSTREAM_KIND, &name, "upstream").await?;
    let dp = in_process_data_plane(&state)?;
    // The data plane may not have applied the newest revision yet.
    let status = dp.fresh().await;
    Ok(Json(
        status
            .upstream_health(&name)
            .map(<[TargetHealth]>::to_vec)
            .unwrap_or_default(),
    ))
}

#[utoipa::path(get, path = "/api/v1/circuit-breakers", operation_id = "list_circuit_breakers", tag = "gateway",
    responses((status = 200, description = "Breaker state per upstream", body = Vec<BreakerStatus>)))]
pub async fn circuit_breakers(
    State(state): State<AppState>,
    _auth: AuthContext,
) -> ApiResult<Json<Vec<BreakerStatus>>> {
    let dp = in_process_data_plane(&state)?;
    Ok(Json(dp.fresh().await.breakers()))
}

/// The gateway running in this process, or 503 `NO_DATA_PLANE`.
fn in_process_data_plane(state: &AppState) -> ApiResult<&crate::DataPlane> {
    state.data_plane.get().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "NO_DATA_PLANE",
            "no gateway runs in this process",
        )
    })
}

/// A breaker closed by hand.
#[derive(Serialize, utoipa::ToSchema)]
pub struct BreakerResetView {
    /// `closed`, `open` or `half_open` before the reset.
    pub was: String,
    /// Whether the reset changed anything (false: it was closed already).
    pub changed: bool,
    pub breaker: BreakerStatus,
}

#[utoipa::path(post, path = "/api/v1/circuit-breakers/{upstream}/reset", operation_id = "reset_circuit_breaker", tag = "gateway",
    params(("upstream" = String, Path, description = "Upstream name")),
    responses(
        (status = 200, description = "The breaker is closed: requests flow to the upstream again (admins only; audited)", body = BreakerResetView),
        (status = 403, description = "Not an admin"),
        (status = 404, description = "The data plane has no such upstream")))]
pub async fn reset_circuit_breaker(
    State(state): State<AppState>,
    auth: AuthContext,
    Path(upstream): Path<String>,
) -> ApiResult<Json<BreakerResetView>> {
    auth.require(Role::Admin)?;
    let dp = in_process_data_plane(&state)?;
    let reset = dp
        .control
        .reset_breaker(&upstream)
        .ok_or_else(|| ApiError::not_found(format!("upstream {upstream:?} in the data plane")))?;
    let changed = reset.was != "closed";
    state
        .store
        .append_audit(
            &auth.actor,
            fleetgate_store::AuditEvent::new("circuit_breaker.reset", "upstream", Some(&upstream))
                .before(serde_json::json!({ "state": reset.was }))
                .after(serde_json::json!({ "state": reset.breaker.state })),
        )
        .await?;
    Ok(Json(BreakerResetView {
        was: reset.was,
        changed,
        breaker: reset.breaker,
    }))
}

/// The data plane in this process as it reports itself.
#[derive(Serialize, utoipa::ToSchema)]
pub struct DataPlaneView {
    /// The revision the manager published to the data plane.
    pub published_revision: u64,
    /// Whether the data plane serves the published revision.
    pub in_sync: bool,
    /// The data plane's own report, made on this request.
    pub status: fleetgate_protocol::DataPlaneStatus,
}

#[utoipa::path(get, path = "/api/v1/data-plane", operation_id = "data_plane_status", tag = "gateway",
    responses((status = 200, description = "What the data plane in this process applied (revision, certificates, published sets), what it refused, its upstreams and limits", body = DataPlaneView)))]
pub async fn data_plane(
    State(state): State<AppState>,
    _auth: AuthContext,
) -> ApiResult<Json<DataPlaneView>> {
    let dp = in_process_data_plane(&state)?;
    let status = dp.fresh().await;
    let published_revision = state.revision();
    Ok(Json(DataPlaneView {
        published_revision,
        in_sync: status.applied.revision == published_revision,
        status: (*status).clone(),
    }))
}

// ---------------------------------------------------------------- routes

/// Judges a route in the document it goes into (inside the write): its
/// references, and that no other route has the same match. The route table of the
/// whole document is compiled by the standard check.
pub(crate) fn check_route(doc: &ConfigDocument, route: &Route) -> Result<(), StoreError> {
    let twin = doc
        .routes
        .iter()
        .find(|r| r.id != route.id && r.match_key() == route.match_key())
        .map(|r| r.id.as_str());
    doc.check_route_refs(route, twin)
        .into_result()
        .map_err(StoreError::Rejected)
}

#[utoipa::path(get, path = "/api/v1/routes", operation_id = "list_routes", tag = "gateway", params(PageParams),
    responses((status = 200, description = "Routes, by id", body = ListEnvelope<Route>)))]
pub async fn list_routes(
    State(state): State<AppState>,
    _auth: AuthContext,
    Pagination(page): Pagination,
) -> ApiResult<Json<ListEnvelope<Route>>> {
    let doc = current_document(&state).await?;
    Ok(Json(ListEnvelope::new(
        page_of(&doc.routes, page),
        doc.routes.len() as i64,
        page,
    )))
}

#[utoipa::path(post, path = "/api/v1/routes", operation_id = "create_route", tag = "gateway", request_body = Route,
    responses((status = 201, description = "Created as a new revision; `id` is generated when absent", body = Route)))]
pub async fn create_route(
    State(state): State<AppState>,
    auth: AuthContext,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult<Response> {
    auth.require(Role::Operator)?;
    let route: Route = parse_object(body, |obj| {
        if !obj.contains_key("id") {
            let id = format!("route-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
            obj.insert("id".into(), Value::String(id));
        }
        Ok(())
    })?;
    route.validate()?;
    let value = serde_json::to_value(&route).map_err(|e| ApiError::internal("serialize", e))?;
    let judge = |before: &ResourceSet, after: &ConfigDocument| {
        if before
            .get(ROUTE_KIND)
            .is_some_and(|r| r.contains_key(&route.id))
        {
            return Err(StoreError::Conflict(format!(
                "route {:?} already exists",
                route.id
            )));
        }
        check_route(after, &route)
    };
    let rec = save(
        &state,
        &auth,
        ROUTE_KIND,
        &route.id,
        value,
        None,
        format!("create route {}", route.id),
        Some(&judge),
    )
    .await?;
    Ok(with_etag(StatusCode::CREATED, &route, rec.version))
}

#[utoipa::path(get, path = "/api/v1/routes/{id}", operation_id = "get_route", tag = "gateway", params(("id" = String, Path, description = "Route id")),
    responses((status = 200, description = "The route", body = Route)))]
pub async fn get_route(
    State(state): State<AppState>,
    _auth: AuthContext,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let rec = load(&state, ROUTE_KIND, &id, "route").await?;
    Ok(with_etag(StatusCode::OK, &rec.body, rec.version))
}

#[utoipa::path(put, path = "/api/v1/routes/{id}", operation_id = "update_route", tag = "gateway", params(("id" = String, Path, description = "Route id")),
    request_body = Route,
    responses((status = 200, description = "Replaced as a new revision", body = Route)))]
pub async fn update_route(
    State(state): State<AppState>,
    auth: AuthContext,
    Path(id): Path<String>,
    IfMatch(expected): IfMatch,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult<Response> {
    auth.require(Role::Operator)?;
    let current = load(&state, ROUTE_KIND, &id, "route").await?;
    let route: Route = parse_object(body, |obj| {
        match obj.get("id") {
            None => {
                obj.insert("id".into(), Value::String(id.clone()));
            }
            Some(Value::String(n)) if *n == id => {}
            Some(_) => return Err(ApiError::bad_request("id", "a route cannot change its id")),
        }
        Ok(())
    })?;
    route.validate()?;
    let value = serde_json::to_value(&route).map_err(|e| ApiError::internal("serialize", e))?;
    let judge = |_: &ResourceSet, after: &ConfigDocument| check_route(after, &route);
    let rec = save(
        &state,
        &auth,
        ROUTE_KIND,
        &id,
        value,
        Some(expected.unwrap_or(current.version)),
        format!("update route {id}"),
        Some(&judge),
    )
    .await?;
    Ok(with_etag(StatusCode::OK, &route, rec.version))
}

#[utoipa::path(delete, path = "/api/v1/routes/{id}", operation_id = "delete_route", tag = "gateway", params(("id" = String, Path, description = "Route id")),
    responses((status = 204, description = "Deleted as a new revision")))]
pub async fn delete_route(
    State(state): State<AppState>,
    auth: AuthContext,
    Path(id): Path<String>,
    IfMatch(expected): IfMatch,
) -> ApiResult<StatusCode> {
    auth.require(Role::Operator)?;
    let message = format!("delete route {id}");
    remove(&state, &auth, ROUTE_KIND, &id, expected, message, None).await?;
    Ok(StatusCode::NO_CONTENT)
}
