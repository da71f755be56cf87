//! Gateway configuration: `/api/v1/upstreams` and `/api/v1/routes`, plus the data
//! plane's view of upstream health and circuit breakers.
//!
//! Every write validates the object, then the whole document it would produce
//! (references, overlapping routes, and for routes the route table the gateway
//! compiles from all of them), records a revision and publishes it. Writes that read
//! the document hold [`crate::Inner::config_write`] until their revision is stored.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use fleetgate_core::config::{ROUTE_KIND, UPSTREAM_KIND};
use fleetgate_core::gateway::{BreakerStatus, Route, TargetHealth, Upstream};
use fleetgate_core::routing::RouteTable;
use fleetgate_core::user::Role;
use fleetgate_core::{ConfigDocument, ValidationError};
use fleetgate_store::ResourceRecord;
use serde::Serialize;
use serde_json::Value;

use crate::api::config::current_document;
use crate::auth::AuthContext;
use crate::error::{ApiError, ApiResult};
use crate::extract::{parse_json, IfMatch, JsonBody, ListEnvelope, PageParams, Pagination};
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

/// Stores one object as a new revision and publishes it. `checked`: the whole
/// resulting document was compiled already (under the config write lock).
#[allow(clippy::too_many_arguments)]
async fn save(
    state: &AppState,
    auth: &AuthContext,
    kind: &str,
    name: &str,
    body: Value,
    expected: Option<i64>,
    message: String,
    checked: bool,
) -> ApiResult<ResourceRecord> {
    let (record, revision) = state
        .store
        .put_resource(&auth.actor, kind, name, &body, expected, &message)
        .await?;
    if checked {
        state.mark_checked(revision);
    }
    state.publish_change(&auth.actor).await?;
    Ok(record)
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
    if state
        .store
        .get_resource(UPSTREAM_KIND, &upstream.name)
        .await?
        .is_some()
    {
        return Err(ApiError::conflict(format!(
            "upstream {:?} already exists",
            upstream.name
        )));
    }
    let value = serde_json::to_value(&upstream).map_err(|e| ApiError::internal("serialize", e))?;
    let rec = save(
        &state,
        &auth,
        UPSTREAM_KIND,
        &upstream.name,
        value,
        Some(0),
        format!("create upstream {}", upstream.name),
        false,
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
        false,
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
    let _write = state.config_write.lock().await;
    let doc = current_document(&state).await?;
    let users: Vec<&str> = doc
        .routes
        .iter()
        .filter(|r| r.upstream == name)
        .map(|r| r.id.as_str())
        .collect();
    if !users.is_empty() {
        return Err(ApiError::conflict(format!(
            "upstream {name:?} is used by routes {}",
            users.join(", ")
        )));
    }
    state
        .store
        .delete_resource(
            &auth.actor,
            UPSTREAM_KIND,
            &name,
            expected,
            &format!("delete upstream {name}"),
        )
        .await?;
    state.publish_change(&auth.actor).await?;
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
    let Some(dp) = state.data_plane.get() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "NO_DATA_PLANE",
            "no gateway runs in this process",
        ));
    };
    // The data plane may not have applied the newest revision yet.
    Ok(Json(dp.upstream_health(&name).unwrap_or_default()))
}

#[utoipa::path(get, path = "/api/v1/circuit-breakers", operation_id = "list_circuit_breakers", tag = "gateway",
    responses((status = 200, description = "Breaker state per upstream", body = Vec<BreakerStatus>)))]
pub async fn circuit_breakers(
    State(state): State<AppState>,
    _auth: AuthContext,
) -> ApiResult<Json<Vec<BreakerStatus>>> {
    let Some(dp) = state.data_plane.get() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "NO_DATA_PLANE",
            "no gateway runs in this process",
        ));
    };
    Ok(Json(dp.breakers()))
}

// ---------------------------------------------------------------- routes

/// Refuses `route` when the document with it in place would not compile as one
/// route table (regex routes valid one by one can be too large together): the
/// gateway would refuse that revision and every later one.
async fn check_table(doc: &ConfigDocument, route: &Route) -> ApiResult<()> {
    let mut routes = doc.routes.clone();
    match routes.iter_mut().find(|r| r.id == route.id) {
        Some(r) => *r = route.clone(),
        None => routes.push(route.clone()),
    }
    let built = tokio::task::spawn_blocking(move || RouteTable::build(&routes).map(|_| ()))
        .await
        .map_err(|e| ApiError::internal("route table check", e))?;
    built.map_err(|e| {
        let mut v = ValidationError::new();
        for fe in e.errors {
            v.push(
                "path",
                format!("route {:?} cannot be saved: {}", route.id, fe.message),
            );
        }
        v.into()
    })
}

fn check_route(doc: &ConfigDocument, route: &Route) -> ApiResult<()> {
    route.validate()?;
    let twin = doc
        .routes
        .iter()
        .find(|r| r.id != route.id && r.match_key() == route.match_key())
        .map(|r| r.id.as_str());
    doc.check_route_refs(route, twin).into_result()?;
    Ok(())
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
    let _write = state.config_write.lock().await;
    let doc = current_document(&state).await?;
    check_route(&doc, &route)?;
    if doc.routes.iter().any(|r| r.id == route.id) {
        return Err(ApiError::conflict(format!(
            "route {:?} already exists",
            route.id
        )));
    }
    check_table(&doc, &route).await?;
    let value = serde_json::to_value(&route).map_err(|e| ApiError::internal("serialize", e))?;
    let rec = save(
        &state,
        &auth,
        ROUTE_KIND,
        &route.id,
        value,
        Some(0),
        format!("create route {}", route.id),
        true,
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
    let _write = state.config_write.lock().await;
    let doc = current_document(&state).await?;
    check_route(&doc, &route)?;
    check_table(&doc, &route).await?;
    let value = serde_json::to_value(&route).map_err(|e| ApiError::internal("serialize", e))?;
    let rec = save(
        &state,
        &auth,
        ROUTE_KIND,
        &id,
        value,
        Some(expected.unwrap_or(current.version)),
        format!("update route {id}"),
        true,
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
    state
        .store
        .delete_resource(
            &auth.actor,
            ROUTE_KIND,
            &id,
            expected,
            &format!("delete route {id}"),
        )
        .await?;
    state.publish_change(&auth.actor).await?;
    Ok(StatusCode::NO_CONTENT)
}
