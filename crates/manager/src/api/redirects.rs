//! Redirects and pages: namespaces, projects, their rules as drafts, publishing,
//! CSV/JSON import and export, agent tokens and the agents that sync from a project.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use fleetgate_core::redirects::{
    Page, PageContentType, PageType, Redirect, RedirectStatus, RedirectType,
};
use fleetgate_core::time::now_ms;
use fleetgate_core::user::Role;
use fleetgate_core::ValidationError;
use fleetgate_store::{
    change_view, AgentRecord, DraftState, NamespaceRecord, PageRequest, ProjectRecord,
    ProjectTokenRecord, PublishRecord, RuleData, RuleFilter, RuleRow, RuleTable, StoreError,
    TokenScope,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::{IntoParams, ToSchema};

use super::rfc3339;
use crate::auth::{hash_token, random_token, AuthContext};
use crate::error::{ApiError, ApiResult};
use crate::extract::{IfMatch, JsonBody, ListEnvelope, Pagination, QueryParams};
use crate::AppState;

/// Most bad rows an import reports by line; the count covers all of them.
const IMPORT_ERRORS_LISTED: usize = 100;
/// Changes listed by `GET .../drafts`.
const DRAFTS_LISTED: usize = 1000;

/// Namespace and project names: Flecto's codes, `[a-z0-9_-]`, 1 to 50 characters.
pub fn valid_code(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 50
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn check_code(field: &str, s: &str) -> ApiResult<()> {
    if valid_code(s) {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            field,
            "must be 1 to 50 characters of a-z, 0-9, _ and -",
        ))
    }
}

fn check_description(s: &str) -> ApiResult<()> {
    if s.chars().count() > 1000 {
        return Err(ApiError::bad_request(
            "description",
            "must be at most 1000 characters",
        ));
    }
    Ok(())
}

use crate::extract::json_with_etag as with_etag;

// ---------------------------------------------------------------- namespaces

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NamespaceInput {
    /// `[a-z0-9_-]`, 1 to 50 characters (taken from the path on PUT).
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: String,
}

#[derive(Serialize, ToSchema)]
pub struct NamespaceView {
    pub name: String,
    pub description: String,
    pub version: i64,
    pub created_at: String,
    pub updated_at: String,
}

fn ns_view(n: &NamespaceRecord) -> NamespaceView {
    NamespaceView {
        name: n.name.clone(),
        description: n.description.clone(),
        version: n.version,
        created_at: rfc3339(n.created_at),
        updated_at: rfc3339(n.updated_at),
    }
}

async fn namespace(state: &AppState, name: &str) -> ApiResult<NamespaceRecord> {
    state
        .store
        .get_namespace(name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("namespace {name}")))
}

#[utoipa::path(get, path = "/api/v1/namespaces", operation_id = "list_namespaces", tag = "redirects",
    params(crate::extract::PageParams),
    responses((status = 200, description = "Namespaces by name", body = ListEnvelope<NamespaceView>)))]
pub async fn list_namespaces(
    State(state): State<AppState>,
    _auth: AuthContext,
    Pagination(page): Pagination,
) -> ApiResult<Json<ListEnvelope<NamespaceView>>> {
    let p = state.store.list_namespaces(page).await?;
    Ok(Json(ListEnvelope::new(
        p.items.iter().map(ns_view).collect(),
        p.total,
        page,
    )))
}

#[utoipa::path(post, path = "/api/v1/namespaces", operation_id = "create_namespace", tag = "redirects",
    request_body = NamespaceInput,
    responses((status = 201, description = "Created", body = NamespaceView)))]
pub async fn create_namespace(
    State(state): State<AppState>,
    auth: AuthContext,
    JsonBody(body): JsonBody<NamespaceInput>,
) -> ApiResult<Response> {
    auth.require(Role::Admin)?;
    let name = body
        .name
        .ok_or_else(|| ApiError::bad_request("name", "is required"))?;
    check_code("name", &name)?;
    check_description(&body.description)?;
    let now = now_ms();
    let rec = NamespaceRecord {
        name,
        description: body.description,
        version: 1,
        created_at: now,
        updated_at: now,
    };
    state.store.create_namespace(&auth.actor, &rec).await?;
    Ok(with_etag(StatusCode::CREATED, 1, ns_view(&rec)))
}

#[utoipa::path(get, path = "/api/v1/namespaces/{ns}", operation_id = "get_namespace", tag = "redirects",
    params(("ns" = String, Path, description = "Namespace")),
    responses((status = 200, description = "The namespace", body = NamespaceView)))]
pub async fn get_namespace(
    State(state): State<AppState>,
    _auth: AuthContext,
    Path(ns): Path<String>,
) -> ApiResult<Response> {
    let n = namespace(&state, &ns).await?;
    Ok(with_etag(StatusCode::OK, n.version, ns_view(&n)))
}

#[utoipa::path(put, path = "/api/v1/namespaces/{ns}", operation_id = "update_namespace", tag = "redirects",
    params(("ns" = String, Path, description = "Namespace")), request_body = NamespaceInput,
    responses((status = 200, description = "Updated", body = NamespaceView)))]
pub async fn update_namespace(
    State(state): State<AppState>,
    auth: AuthContext,
    Path(ns): Path<String>,
    IfMatch(expected): IfMatch,
    JsonBody(body): JsonBody<NamespaceInput>,
) -> ApiResult<Response> {
    auth.require(Role::Admin)?;
    if body.name.as_deref().is_some_and(|n| n != ns) {
        return Err(ApiError::bad_request("name", "cannot be changed"));
    }
    check_description(&body.description)?;
    let mut n = namespace(&state, &ns).await?;
    n.description = body.description;
    let n = state
        .store
        .update_namespace(&auth.actor, &n, expected)
        .await?;
    Ok(with_etag(StatusCode::OK, n.version, ns_view(&n)))
}

#[utoipa::path(delete, path = "/api/v1/namespaces/{ns}", operation_id = "delete_namespace", tag = "redirects",
    params(("ns" = String, Path, description = "Namespace")),
    responses((status = 204, description = "Deleted (only when it has no projects)")))]
pub async fn delete_namespace(
    State(state): State<AppState>,
    auth: AuthContext,
    Path(ns): Path<String>,
) -> ApiResult<StatusCode> {
    auth.require(Role::Admin)?;
    state.store.delete_namespace(&auth.actor, &ns).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ------------------------------------------------------------------ projects

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProjectInput {
    /// `[a-z0-9_-]`, 1 to 50 characters (taken from the path on PUT).
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: String,
    /// Hosts whose requests the gateway answers with this project's rules
    /// (`example.com`; no port, no scheme). A host belongs to one project only.
    #[serde(default)]
    pub hosts: Vec<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ProjectView {
    pub namespace: String,
    pub name: String,
    pub description: String,
    pub hosts: Vec<String>,
    /// The published version agents are served: 1 for a new project (nothing
    /// published yet, as with Flecto), one more after each publish.
    pub version: i64,
    pub published_at: Option<String>,
    /// Version of the project record (its ETag).
    pub record_version: i64,
    pub created_at: String,
    pub updated_at: String,
}

fn project_view(p: &ProjectRecord) -> ProjectView {
    ProjectView {
        namespace: p.namespace.clone(),
        name: p.name.clone(),
        description: p.description.clone(),
        hosts: p.hosts.clone(),
        version: p.published_version,
        published_at: p.published_at.map(rfc3339),
        record_version: p.version,
        created_at: rfc3339(p.created_at),
        updated_at: rfc3339(p.updated_at),
    }
}

/// Lower-cased, checked hosts, in the order given, without duplicates.
fn clean_hosts(hosts: &[String]) -> ApiResult<Vec<String>> {
    checked_hosts(hosts).map_err(|(field, message)| ApiError::bad_request(&field, message))
}

/// [`clean_hosts`], its refusal as the field (`hosts[2]`) and the message.
pub(crate) fn checked_hosts(hosts: &[String]) -> Result<Vec<String>, (String, &'static str)> {
    let mut out: Vec<String> = Vec::new();
    for (i, h) in hosts.iter().enumerate() {
        let h = h.trim().to_ascii_lowercase();
        let ok = !h.is_empty()
            && h.len() <= 253
            && h.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !ok {
            return Err((
                format!("hosts[{i}]"),
                "must be a host name such as example.com (no scheme, port or path)",
            ));
        }
        if !out.contains(&h) {
            out.push(h);
        }
    }
    if out.len() > 100 {
        return Err(("hosts".into(), "at most 100 hosts per project"));
    }
    Ok(out)
}

/// The project named by the path, or 404 naming what is missing.
pub async fn project(state: &AppState, ns: &str, name: &str) -> ApiResult<ProjectRecord> {
    if let Some(p) = state.store.get_project(ns, name).await? {
        return Ok(p);
    }
    namespace(state, ns).await?;
    Err(ApiError::not_found(format!("project {ns}/{name}")))
}

#[utoipa::path(get, path = "/api/v1/namespaces/{ns}/projects", operation_id = "list_projects", tag = "redirects",
    params(("ns" = String, Path, description = "Namespace"), crate::extract::PageParams),
    responses((status = 200, description = "Projects of the namespace, by name", body = ListEnvelope<ProjectView>)))]
pub async fn list_projects(
    State(state): State<AppState>,
    _auth: AuthContext,
    Path(ns): Path<String>,
    Pagination(page): Pagination,
) -> ApiResult<Json<ListEnvelope<ProjectView>>> {
    namespace(&state, &ns).await?;
    let p = state.store.list_projects(&ns, page).await?;
    Ok(Json(ListEnvelope::new(
        p.items.iter().map(project_view).collect(),
        p.total,
        page,
    )))
}

#[utoipa::path(post, path = "/api/v1/namespaces/{ns}/projects", operation_id = "create_project", tag = "redirects",
    params(("ns" = String, Path, description = "Namespace")), request_body = ProjectInput,
    responses((status = 201, description = "Created", body = ProjectView)))]
pub async fn create_project(
    State(state): State<AppState>,
    auth: AuthContext,
    Path(ns): Path<String>,
    JsonBody(body): JsonBody<ProjectInput>,
) -> ApiResult<Response> {
    auth.require(Role::Admin)?;
    let name = body
        .name
        .ok_or_else(|| ApiError::bad_request("name", "is required"))?;
    check_code("name", &name)?;
    check_description(&body.description)?;
    let hosts = clean_hosts(&body.hosts)?;
    namespace(&state, &ns).await?;
    let now = now_ms();
    let rec = ProjectRecord {
        id: uuid::Uuid::new_v4().to_string(),
        namespace: ns,
        name,
        description: body.description,
        hosts,
        // Flecto starts a project at version 1: its agents treat version 0 as
        // "nothing loaded yet" and never fetch nor register while the manager says 0.
        published_version: 1,
        published_at: None,
        version: 1,
        created_at: now,
        updated_at: now,
    };
    state.store.create_project(&auth.actor, &rec).await?;
    state.refresh_data_plane();
    Ok(with_etag(StatusCode::CREATED, 1, project_view(&rec)))
}

#[utoipa::path(get, path = "/api/v1/namespaces/{ns}/projects/{project}", operation_id = "get_project", tag = "redirects",
    params(("ns" = String, Path, description = "Namespace"), ("project" = String, Path, description = "Project")),
    responses((status = 200, description = "The project", body = ProjectView)))]
pub async fn get_project(
    State(state): State<AppState>,
    _auth: AuthContext,
    Path((ns, name)): Path<(String, String)>,
) -> ApiResult<Response> {
    let p = project(&state, &ns, &name).await?;
    Ok(with_etag(StatusCode::OK, p.version, project_view(&p)))
}

#[utoipa::path(put, path = "/api/v1/namespaces/{ns}/projects/{project}", operation_id = "update_project", tag = "redirects",
    params(("ns" = String, Path, description = "Namespace"), ("project" = String, Path, description = "Project")),
    request_body = ProjectInput,
    responses((status = 200, description = "Updated", body = ProjectView)))]
pub async fn update_project(
    State(state): State<AppState>,
    auth: AuthContext,
    Path((ns, name)): Path<(String, String)>,
    IfMatch(expected): IfMatch,
    JsonBody(body): JsonBody<ProjectInput>,
) -> ApiResult<Response> {
    auth.require(Role::Admin)?;
    if body.name.as_deref().is_some_and(|n| n != name) {
        return Err(ApiError::bad_request("name", "cannot be changed"));
    }
    check_description(&body.description)?;
    let hosts = clean_hosts(&body.hosts)?;
    let mut p = project(&state, &ns, &name).await?;
    p.description = body.description;
    p.hosts = hosts;
    let p = state
        .store
        .update_project(&auth.actor, &p, expected)
        .await?;
    state.refresh_data_plane();
    Ok(with_etag(StatusCode::OK, p.version, project_view(&p)))
}

#[utoipa::path(delete, path = "/api/v1/namespaces/{ns}/projects/{project}", operation_id = "delete_project", tag = "redirects",
    params(("ns" = String, Path, description = "Namespace"), ("project" = String, Path, description = "Project")),
    responses((status = 204, description = "Deleted with its rules, tokens and agents")))]
pub async fn delete_project(
    State(state): State<AppState>,
    auth: AuthContext,
    Path((ns, name)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    auth.require(Role::Admin)?;
    let p = project(&state, &ns, &name).await?;
    state.store.delete_project(&auth.actor, &p.id).await?;
    state.refresh_data_plane();
    Ok(StatusCode::NO_CONTENT)
}

// --------------------------------------------------------------------- rules

/// Converts between the API's rules and the store's four strings.
pub(crate) trait Rule: Sized {
    const TABLE: RuleTable;
    /// The field that must be unique within a project.
    const KEY_FIELD: &'static str;
    fn to_data(&self) -> RuleData;
    fn from_data(d: &RuleData) -> ApiResult<Self>;
    fn check(&self, settings: &fleetgate_core::Settings) -> Result<(), ValidationError>;
}

fn corrupt(what: &str, value: &str) -> ApiError {
    ApiError::internal("stored rule is not readable", format!("{what} {value:?}"))
}

impl Rule for Redirect {
    const TABLE: RuleTable = RuleTable::Redirects;
    const KEY_FIELD: &'static str = "source";

    fn to_data(&self) -> RuleData {
        RuleData {
            kind: self.kind.as_str().into(),
            key: self.source.clone(),
            value: self.target.clone(),
            flavor: self.status.as_str().into(),
        }
    }

    fn from_data(d: &RuleData) -> ApiResult<Self> {
        Ok(Redirect {
            kind: RedirectType::parse(&d.kind).ok_or_else(|| corrupt("redirect type", &d.kind))?,
            source: d.key.clone(),
            target: d.value.clone(),
            status: RedirectStatus::parse(&d.flavor)
                .ok_or_else(|| corrupt("redirect status", &d.flavor))?,
        })
    }

    fn check(&self, _: &fleetgate_core::Settings) -> Result<(), ValidationError> {
        self.validate()
    }
}

impl Rule for Page {
    const TABLE: RuleTable = RuleTable::Pages;
    const KEY_FIELD: &'static str = "path";

    fn to_data(&self) -> RuleData {
        RuleData {
            kind: self.kind.as_str().into(),
            key: self.path.clone(),
            value: self.content.clone(),
            flavor: self.content_type.as_str().into(),
        }
    }

    fn from_data(d: &RuleData) -> ApiResult<Self> {
        Ok(Page {
            kind: PageType::parse(&d.kind).ok_or_else(|| corrupt("page type", &d.kind))?,
            path: d.key.clone(),
            content: d.value.clone(),
            content_type: PageContentType::parse(&d.flavor)
                .ok_or_else(|| corrupt("page content type", &d.flavor))?,
        })
    }

    fn check(&self, settings: &fleetgate_core::Settings) -> Result<(), ValidationError> {
        let limit = usize::try_from(settings.redirects.page_size_limit_bytes).unwrap_or(usize::MAX);
        self.validate(limit)
    }
}

#[derive(Serialize, ToSchema)]
pub struct RedirectView {
    pub id: i64,
    #[serde(flatten)]
    pub rule: Redirect,
    /// `published`, `created`, `updated` or `deleted` (the last three are drafts).
    #[schema(value_type = String)]
    pub state: DraftState,
    /// The rule as agents are served it now, if it was ever published.
    pub published: Option<Redirect>,
    pub updated_at: String,
    /// In listings: requests the gateway in this process answered with the published
    /// rule since it started (null for a rule never published); absent when no
    /// gateway runs here.
    pub hits: Option<u64>,
}

#[derive(Serialize, ToSchema)]
pub struct PageView {
    pub id: i64,
    #[serde(flatten)]
    pub rule: Page,
    /// `published`, `created`, `updated` or `deleted` (the last three are drafts).
    #[schema(value_type = String)]
    pub state: DraftState,
    pub published: Option<Page>,
    pub updated_at: String,
    /// In listings: requests answered with the published page (see `RedirectView`).
    pub hits: Option<u64>,
}

pub(crate) fn row_json<R: Rule + Serialize>(row: &RuleRow) -> ApiResult<Value> {
    let rule = R::from_data(&row.working)?;
    let published = row.published.as_ref().map(R::from_data).transpose()?;
    let mut v = serde_json::to_value(&rule).map_err(|e| ApiError::internal("json", e))?;
    if let Value::Object(m) = &mut v {
        m.insert("id".into(), json!(row.id));
        m.insert("state".into(), json!(row.state));
        m.insert("published".into(), json!(published));
        m.insert("updated_at".into(), json!(rfc3339(row.updated_at)));
    }
    Ok(v)
}

fn rule_id(raw: &str) -> ApiResult<i64> {
    raw.parse::<i64>().ok().filter(|n| *n > 0).ok_or_else(|| {
        ApiError::bad_request("id", format!("must be a positive integer, got {raw:?}"))
    })
}

/// Maps a duplicate key to a 400 naming the field, as for other bad input.
fn key_error<R: Rule>(e: StoreError) -> ApiError {
    match e {
        StoreError::Conflict(m) => ApiError::bad_request(R::KEY_FIELD, m),
        other => other.into(),
    }
}

async fn list_rules<R: Rule + Serialize>(
    state: &AppState,
    ns: &str,
    name: &str,
    q: &QueryParams,
    page: PageRequest,
) -> ApiResult<Json<ListEnvelope<Value>>> {
    let p = project(state, ns, name).await?;
    let kind = q.text("type").map(str::to_string);
    if let Some(k) = &kind {
        let known = match R::TABLE {
            RuleTable::Redirects => RedirectType::parse(k).is_some(),
            RuleTable::Pages => PageType::parse(k).is_some(),
        };
        if !known {
            return Err(ApiError::bad_request("type", format!("unknown type {k:?}")));
        }
    }
    let filter = RuleFilter {
        kind,
        q: q.text("q").map(str::to_string),
        include_deleted: q.flag("include_deleted")?,
        drafts_only: q.flag("drafts")?,
    };
    let rows = state
        .store
        .list_rules(R::TABLE, &p.id, &filter, page)
        .await?;
    let hits = published_hits(state, &p, R::TABLE).await;
    let items = rows
        .items
        .iter()
        .map(|row| {
            let mut v = row_json::<R>(row)?;
            if let (Value::Object(m), Some(hits)) = (&mut v, &hits) {
                // Requests the gateway answered with the published rule, if published.
                let n = row.published.as_ref().map(|d| {
                    hits.get(&(d.kind.clone(), d.key.clone()))
                        .copied()
                        .unwrap_or(0)
                });
                m.insert("hits".into(), json!(n));
            }
            Ok(v)
        })
        .collect::<ApiResult<_>>()?;
    Ok(Json(ListEnvelope::new(items, rows.total, page)))
}

/// Requests the gateway in this process answered with each published rule of
/// `table` in project `p`, by (type, source or path): counted since the gateway
/// started, carried over publishes for rules that stayed. `None` without a gateway
/// here or before it serves the version published.
async fn published_hits(
    state: &AppState,
    p: &ProjectRecord,
    table: RuleTable,
) -> Option<std::collections::HashMap<(String, String), u64>> {
    let dp = state.data_plane.get()?;
    let hits = dp.control.site_hits(&p.id)?;
    let site = state.sites.lock().await.get(&p.id).cloned()?;
    if site.version != hits.version {
        return None;
    }
    Some(match table {
        RuleTable::Redirects => site
            .redirects
            .iter()
            .zip(hits.redirects)
            .map(|(r, n)| ((r.kind.as_str().to_string(), r.source.clone()), n))
            .collect(),
        RuleTable::Pages => site
            .pages
            .iter()
            .zip(hits.pages)
            .map(|(pg, n)| ((pg.kind.as_str().to_string(), pg.path.clone()), n))
            .collect(),
    })
}

async fn create_rule<R: Rule + Serialize>(
    state: &AppState,
    auth: &AuthContext,
    ns: &str,
    name: &str,
    rule: R,
) -> ApiResult<Response> {
    auth.require(Role::Operator)?;
    rule.check(&state.settings())?;
    let p = project(state, ns, name).await?;
    let row = state
        .store
        .create_rule(&auth.actor, R::TABLE, &p.id, &rule.to_data())
        .await
        .map_err(key_error::<R>)?;
    Ok((StatusCode::CREATED, Json(row_json::<R>(&row)?)).into_response())
}

async fn get_rule<R: Rule + Serialize>(
    state: &AppState,
    ns: &str,
    name: &str,
    id: &str,
) -> ApiResult<Json<Value>> {
    let id = rule_id(id)?;
    let p = project(state, ns, name).await?;
    let row = state
        .store
        .get_rule(R::TABLE, &p.id, id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("{} {id}", R::TABLE.noun())))?;
    Ok(Json(row_json::<R>(&row)?))
}

async fn update_rule<R: Rule + Serialize>(
    state: &AppState,
    auth: &AuthContext,
    (ns, name, id): (&str, &str, &str),
    rule: R,
) -> ApiResult<Json<Value>> {
    auth.require(Role::Operator)?;
    let id = rule_id(id)?;
    rule.check(&state.settings())?;
    let p = project(state, ns, name).await?;
    let row = state
        .store
        .update_rule(&auth.actor, R::TABLE, &p.id, id, &rule.to_data())
        .await
        .map_err(key_error::<R>)?;
    Ok(Json(row_json::<R>(&row)?))
}

async fn delete_rule(
    state: &AppState,
    auth: &AuthContext,
    table: RuleTable,
    (ns, name, id): (&str, &str, &str),
) -> ApiResult<StatusCode> {
    auth.require(Role::Operator)?;
    let id = rule_id(id)?;
    let p = project(state, ns, name).await?;
    state
        .store
        .delete_rule(&auth.actor, table, &p.id, id)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Query parameters of rule listings.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RuleQuery {
    /// Only rules of this type (`BASIC`, `BASIC_HOST`, `REGEX`, `REGEX_HOST`).
    #[serde(rename = "type")]
    #[param(rename = "type")]
    pub kind: Option<String>,
    /// Case-insensitive substring of source/target (or path/content).
    pub q: Option<String>,
    /// Also list rules deleted in the draft.
    pub include_deleted: Option<bool>,
    /// Only rules with an unpublished change (drafts).
    pub drafts: Option<bool>,
    pub limit: Option<i64>,
    pub offset: Option<i64>,
}

macro_rules! rule_handlers {
    ($rule:ty, $seg:literal, $tag:literal, $list:ident, $create:ident, $get:ident, $update:ident, $delete:ident, $view:ty) => {
        #[utoipa::path(get, path = concat!("/api/v1/namespaces/{ns}/projects/{project}/", $seg), tag = $tag,
            params(("ns" = String, Path, description = "Namespace"), ("project" = String, Path, description = "Project"), RuleQuery),
            responses((status = 200, description = "The working set (drafts applied), in creation order", body = ListEnvelope<$view>)))]
        pub async fn $list(
            State(state): State<AppState>,
            _auth: AuthContext,
            Path((ns, name)): Path<(String, String)>,
            q: QueryParams,
            Pagination(page): Pagination,
        ) -> ApiResult<Json<ListEnvelope<Value>>> {
            list_rules::<$rule>(&state, &ns, &name, &q, page).await
        }

        #[utoipa::path(post, path = concat!("/api/v1/namespaces/{ns}/projects/{project}/", $seg), tag = $tag,
            params(("ns" = String, Path, description = "Namespace"), ("project" = String, Path, description = "Project")),
            request_body = $rule,
            responses((status = 201, description = "Created as a draft", body = $view)))]
        pub async fn $create(
            State(state): State<AppState>,
            auth: AuthContext,
            Path((ns, name)): Path<(String, String)>,
            JsonBody(body): JsonBody<$rule>,
        ) -> ApiResult<Response> {
            create_rule(&state, &auth, &ns, &name, body).await
        }

        #[utoipa::path(get, path = concat!("/api/v1/namespaces/{ns}/projects/{project}/", $seg, "/{id}"), tag = $tag,
            params(("ns" = String, Path, description = "Namespace"), ("project" = String, Path, description = "Project"), ("id" = String, Path, description = "Rule id")),
            responses((status = 200, description = "The rule", body = $view)))]
        pub async fn $get(
            State(state): State<AppState>,
            _auth: AuthContext,
            Path((ns, name, id)): Path<(String, String, String)>,
        ) -> ApiResult<Json<Value>> {
            get_rule::<$rule>(&state, &ns, &name, &id).await
        }

        #[utoipa::path(put, path = concat!("/api/v1/namespaces/{ns}/projects/{project}/", $seg, "/{id}"), tag = $tag,
            params(("ns" = String, Path, description = "Namespace"), ("project" = String, Path, description = "Project"), ("id" = String, Path, description = "Rule id")),
            request_body = $rule,
            responses((status = 200, description = "Updated as a draft", body = $view)))]
        pub async fn $update(
            State(state): State<AppState>,
            auth: AuthContext,
            Path((ns, name, id)): Path<(String, String, String)>,
            JsonBody(body): JsonBody<$rule>,
        ) -> ApiResult<Json<Value>> {
            update_rule(&state, &auth, (&ns, &name, &id), body).await
        }

        #[utoipa::path(delete, path = concat!("/api/v1/namespaces/{ns}/projects/{project}/", $seg, "/{id}"), tag = $tag,
            params(("ns" = String, Path, description = "Namespace"), ("project" = String, Path, description = "Project"), ("id" = String, Path, description = "Rule id")),
            responses((status = 204, description = "Deleted in the draft")))]
        pub async fn $delete(
            State(state): State<AppState>,
            auth: AuthContext,
            Path((ns, name, id)): Path<(String, String, String)>,
        ) -> ApiResult<StatusCode> {
            delete_rule(&state, &auth, <$rule as Rule>::TABLE, (&ns, &name, &id)).await
        }
    };
}

rule_handlers!(
    Redirect,
    "redirects",
    "redirects",
    list_redirects,
    create_redirect,
    get_redirect,
    update_redirect,
    delete_redirect,
    RedirectView
);
rule_handlers!(
    Page,
    "pages",
    "redirects",
    list_pages,
    create_page,
    get_page,
    update_page,
    delete_page,
    PageView
);

// -------------------------------------------------------- import and export

/// One rejected row of an import.
#[derive(Debug, Serialize, ToSchema)]
pub struct ImportRowError {
    /// 1-based line of a CSV file, or 1-based index in a JSON array.
    pub line: u64,
    pub field: String,
    pub message: String,
}

#[derive(Serialize, ToSchema)]
pub struct ImportResult {
    pub rows: usize,
    pub created: u64,
    pub updated: u64,
    pub unchanged: u64,
    pub deleted: u64,
    pub dry_run: bool,
}

fn import_failed(errors: Vec<ImportRowError>, rows: usize) -> ApiError {
    let total = errors.len();
    let first = errors
        .first()
        .map(|e| format!("line {}: {}: {}", e.line, e.field, e.message))
        .unwrap_or_default();
    let listed: Vec<&ImportRowError> = errors.iter().take(IMPORT_ERRORS_LISTED).collect();
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "IMPORT_REJECTED",
        format!("{total} of {rows} rows are invalid; nothing was imported (first: {first})"),
    )
    .with_details(json!({"field": "body", "invalid_rows": total, "errors": listed}))
}

/// Parses CSV rows `type,source,target,status` (a header line is optional; status
/// may be empty for FOUND). Returns each row with its line number.
/// The line a record starts on: the reader places a record's position before the
/// blank lines it skipped on the way to it.
fn record_line(bytes: &[u8], pos: &csv::Position) -> u64 {
    let mut line = pos.line();
    for b in bytes.iter().skip(pos.byte() as usize) {
        match b {
            b'\n' => line += 1,
            b'\r' => {}
            _ => break,
        }
    }
    line
}

/// Rows that parsed, and the rows that did not (both by line).
type Parsed = (Vec<(u64, Redirect)>, Vec<ImportRowError>);

fn parse_csv(bytes: &[u8]) -> Parsed {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(bytes);
    let mut rows = Vec::new();
    let mut errors = Vec::new();
    let mut record = csv::StringRecord::new();
    let mut first = true;
    loop {
        let line = reader.position().line();
        match reader.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => {
                let line = e.position().map_or(line, |p| p.line());
                errors.push(ImportRowError {
                    line,
                    field: "row".into(),
                    message: e.to_string(),
                });
                break;
            }
        }
        let line = record.position().map_or(line, |p| record_line(bytes, p));
        let is_first = std::mem::replace(&mut first, false);
        if record.iter().all(str::is_empty) {
            continue;
        }
        if is_first
            && record
                .get(0)
                .is_some_and(|f| f.eq_ignore_ascii_case("type"))
        {
            continue;
        }
        if !(3..=4).contains(&record.len()) {
            errors.push(ImportRowError {
                line,
                field: "row".into(),
                message: format!(
                    "expected 3 or 4 fields (type,source,target,status), found {}",
                    record.len()
                ),
            });
            continue;
        }
        let field = |i: usize| record.get(i).unwrap_or_default();
        let Some(kind) = RedirectType::parse(field(0)) else {
            errors.push(ImportRowError {
                line,
                field: "type".into(),
                message: format!(
                    "unknown type {:?}; use BASIC, BASIC_HOST, REGEX or REGEX_HOST",
                    field(0)
                ),
            });
            continue;
        };
        let status = match field(3) {
            "" => RedirectStatus::Found,
            s => match RedirectStatus::parse(s) {
                Some(s) => s,
                None => {
                    errors.push(ImportRowError {
                        line,
                        field: "status".into(),
                        message: format!(
                            "unknown status {s:?}; use MOVED_PERMANENT, FOUND, TEMPORARY_REDIRECT or PERMANENT_REDIRECT"
                        ),
                    });
                    continue;
                }
            },
        };
        rows.push((
            line,
            Redirect {
                kind,
                source: field(1).to_string(),
                target: field(2).to_string(),
                status,
            },
        ));
    }
    (rows, errors)
}

fn parse_json_rows(bytes: &[u8]) -> Parsed {
    let values: Vec<Value> = match serde_json::from_slice(bytes) {
        Ok(v) => v,
        Err(e) => {
            let error = ImportRowError {
                line: e.line() as u64,
                field: "body".into(),
                message: format!("expected a JSON array of redirects: {e}"),
            };
            return (Vec::new(), vec![error]);
        }
    };
    let mut rows = Vec::with_capacity(values.len());
    let mut errors = Vec::new();
    for (i, v) in values.into_iter().enumerate() {
        let line = i as u64 + 1;
        match serde_path_to_error::deserialize::<_, Redirect>(v) {
            Ok(r) => rows.push((line, r)),
            Err(e) => errors.push(ImportRowError {
                line,
                field: e.path().to_string(),
                message: e.inner().to_string(),
            }),
        }
    }
    (rows, errors)
}

/// Validates every row and the uniqueness of sources within the file.
fn validate_rows(rows: &[(u64, Redirect)]) -> Vec<ImportRowError> {
    let mut errors = Vec::new();
    let mut seen: std::collections::HashMap<&str, u64> =
        std::collections::HashMap::with_capacity(rows.len());
    for (line, r) in rows {
        if let Err(e) = r.validate() {
            for fe in e.errors {
                errors.push(ImportRowError {
                    line: *line,
                    field: fe.field,
                    message: fe.message,
                });
            }
        }
        if let Some(first) = seen.insert(r.source.as_str(), *line) {
            errors.push(ImportRowError {
                line: *line,
                field: "source".into(),
                message: format!("duplicate source {:?} (first on line {first})", r.source),
            });
        }
    }
    errors
}

#[utoipa::path(post, path = "/api/v1/namespaces/{ns}/projects/{project}/redirects/import", operation_id = "import_redirects", tag = "redirects",
    params(("ns" = String, Path, description = "Namespace"), ("project" = String, Path, description = "Project"),
        ("mode" = Option<String>, Query, description = "`merge` (default: add and update by source) or `replace` (also delete rules not in the file)"),
        ("dry_run" = Option<bool>, Query, description = "Validate and count without writing")),
    request_body(content_type = "text/csv", content = String, description = "CSV `type,source,target,status` (header optional), or a JSON array of redirects with Content-Type: application/json"),
    responses((status = 200, description = "Imported as drafts, all rows or none", body = ImportResult)))]
pub async fn import_redirects(
    State(state): State<AppState>,
    auth: AuthContext,
    Path((ns, name)): Path<(String, String)>,
    q: QueryParams,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<ImportResult>> {
    auth.require(Role::Operator)?;
    let replace = match q.text("mode").unwrap_or("merge") {
        "merge" => false,
        "replace" => true,
        other => {
            return Err(ApiError::bad_request(
                "mode",
                format!("must be merge or replace, got {other:?}"),
            ))
        }
    };
    let dry_run = q.flag("dry_run")?;
    let mime = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let parsed = match mime.as_str() {
        "application/json" => parse_json_rows(&body),
        "text/csv" | "text/plain" | "application/csv" => parse_csv(&body),
        _ => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UNSUPPORTED_MEDIA_TYPE",
                "send the rules as text/csv or as a JSON array with application/json",
            ))
        }
    };
    let p = project(&state, &ns, &name).await?;
    let (rows, parse_errors) = parsed;
    // Rows that did not parse and rows that parsed but do not validate are
    // reported together, in line order.
    let count = rows.len() + parse_errors.len();
    let checked = tokio::task::spawn_blocking(move || {
        let mut errors = parse_errors;
        errors.extend(validate_rows(&rows));
        errors.sort_by_key(|e| e.line);
        (rows, errors)
    })
    .await
    .map_err(|e| ApiError::internal("import validation failed", e))?;
    let (rows, errors) = checked;
    if !errors.is_empty() {
        return Err(import_failed(errors, count));
    }
    let data: Vec<RuleData> = rows.iter().map(|(_, r)| r.to_data()).collect();
    if dry_run {
        return Ok(Json(ImportResult {
            rows: count,
            created: 0,
            updated: 0,
            unchanged: 0,
            deleted: 0,
            dry_run,
        }));
    }
    let sum = state
        .store
        .import_rules(&auth.actor, RuleTable::Redirects, &p.id, &data, replace)
        .await?;
    Ok(Json(ImportResult {
        rows: count,
        created: sum.created,
        updated: sum.updated,
        unchanged: sum.unchanged,
        deleted: sum.deleted,
        dry_run,
    }))
}

#[utoipa::path(get, path = "/api/v1/namespaces/{ns}/projects/{project}/redirects/export", operation_id = "export_redirects", tag = "redirects",
    params(("ns" = String, Path, description = "Namespace"), ("project" = String, Path, description = "Project"),
        ("format" = Option<String>, Query, description = "`csv` (default) or `json`")),
    responses((status = 200, description = "The working set, as import takes it", content_type = "text/csv", body = String)))]
pub async fn export_redirects(
    State(state): State<AppState>,
    _auth: AuthContext,
    Path((ns, name)): Path<(String, String)>,
    q: QueryParams,
) -> ApiResult<Response> {
    let format = q.text("format").unwrap_or("csv").to_string();
    if format != "csv" && format != "json" {
        return Err(ApiError::bad_request("format", "must be csv or json"));
    }
    let p = project(&state, &ns, &name).await?;
    let rules = state
        .store
        .working_rules(RuleTable::Redirects, &p.id)
        .await?;
    let rules = rules
        .iter()
        .map(Redirect::from_data)
        .collect::<ApiResult<Vec<_>>>()?;
    if format == "json" {
        return Ok(Json(rules).into_response());
    }
    let mut w = csv::Writer::from_writer(Vec::new());
    let write = |w: &mut csv::Writer<Vec<u8>>, rec: [&str; 4]| {
        w.write_record(rec)
            .map_err(|e| ApiError::internal("csv", e))
    };
    write(&mut w, ["type", "source", "target", "status"])?;
    for r in &rules {
        write(
            &mut w,
            [r.kind.as_str(), &r.source, &r.target, r.status.as_str()],
        )?;
    }
    let bytes = w.into_inner().map_err(|e| ApiError::internal("csv", e))?;
    let disposition = format!("attachment; filename=\"{ns}-{name}-redirects.csv\"");
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        bytes,
    )
        .into_response())
}

// -------------------------------------------------------------- publishing

#[derive(Serialize, ToSchema)]
pub struct DraftsView {
    /// Counts of unpublished changes: created, updated, deleted.
    #[schema(value_type = Object)]
    pub redirects: Value,
    #[schema(value_type = Object)]
    pub pages: Value,
    pub total: i64,
    /// The changes (at most 1000), each with `before` (published) and `after` (draft).
    #[schema(value_type = Vec<Object>)]
    pub changes: Vec<Value>,
    pub published_version: i64,
}

#[utoipa::path(get, path = "/api/v1/namespaces/{ns}/projects/{project}/drafts", operation_id = "list_drafts", tag = "redirects",
    params(("ns" = String, Path, description = "Namespace"), ("project" = String, Path, description = "Project")),
    responses((status = 200, description = "Unpublished changes", body = DraftsView)))]
pub async fn drafts(
    State(state): State<AppState>,
    _auth: AuthContext,
    Path((ns, name)): Path<(String, String)>,
) -> ApiResult<Json<DraftsView>> {
    let p = project(&state, &ns, &name).await?;
    let d = state.store.drafts(&p.id, DRAFTS_LISTED).await?;
    Ok(Json(DraftsView {
        redirects: json!(d.redirects),
        pages: json!(d.pages),
        total: d.redirects.total() + d.pages.total(),
        changes: d.changes.iter().map(|(t, r)| change_view(*t, r)).collect(),
        published_version: p.published_version,
    }))
}

#[derive(Serialize, ToSchema)]
pub struct PublishView {
    pub version: i64,
    pub published_at: String,
    pub author: String,
    /// Counts per table, the first changes and whether the list was truncated.
    #[schema(value_type = Object)]
    pub summary: Value,
}

fn publish_view(p: &PublishRecord) -> PublishView {
    PublishView {
        version: p.version,
        published_at: rfc3339(p.published_at),
        author: p.author.clone(),
        summary: p.summary.clone(),
    }
}

#[utoipa::path(post, path = "/api/v1/namespaces/{ns}/projects/{project}/publish", operation_id = "publish_project", tag = "redirects",
    params(("ns" = String, Path, description = "Namespace"), ("project" = String, Path, description = "Project")),
    responses((status = 200, description = "Drafts published; the version went up by one", body = PublishView)))]
pub async fn publish(
    State(state): State<AppState>,
    auth: AuthContext,
    Path((ns, name)): Path<(String, String)>,
) -> ApiResult<Json<PublishView>> {
    auth.require(Role::Operator)?;
    let p = project(&state, &ns, &name).await?;
    let rec = state.store.publish(&auth.actor, &p.id).await?;
    state.refresh_data_plane();
    Ok(Json(publish_view(&rec)))
}

#[derive(Serialize, ToSchema)]
pub struct DiscardView {
    pub discarded: i64,
}

#[utoipa::path(post, path = "/api/v1/namespaces/{ns}/projects/{project}/discard", operation_id = "discard_drafts", tag = "redirects",
    params(("ns" = String, Path, description = "Namespace"), ("project" = String, Path, description = "Project")),
    responses((status = 200, description = "Drafts dropped; the working set is the published set again", body = DiscardView)))]
pub async fn discard(
    State(state): State<AppState>,
    auth: AuthContext,
    Path((ns, name)): Path<(String, String)>,
) -> ApiResult<Json<DiscardView>> {
    auth.require(Role::Operator)?;
    let p = project(&state, &ns, &name).await?;
    let discarded = state.store.discard_drafts(&auth.actor, &p.id).await?;
    Ok(Json(DiscardView { discarded }))
}

#[utoipa::path(get, path = "/api/v1/namespaces/{ns}/projects/{project}/versions", operation_id = "list_project_versions", tag = "redirects",
    params(("ns" = String, Path, description = "Namespace"), ("project" = String, Path, description = "Project"), crate::extract::PageParams),
    responses((status = 200, description = "Publishes, newest first, with what each changed", body = ListEnvelope<PublishView>)))]
pub async fn versions(
    State(state): State<AppState>,
    _auth: AuthContext,
    Path((ns, name)): Path<(String, String)>,
    Pagination(page): Pagination,
) -> ApiResult<Json<ListEnvelope<PublishView>>> {
    let p = project(&state, &ns, &name).await?;
    let list = state.store.list_publishes(&p.id, page).await?;
    Ok(Json(ListEnvelope::new(
        list.items.iter().map(publish_view).collect(),
        list.total,
        page,
    )))
}

// ------------------------------------------------------------------- tokens

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScopeInput {
    /// This project's namespace (the default) or `*` (admins only).
    #[serde(default)]
    pub namespace: Option<String>,
    /// This project (the default) or `*` (admins only).
    #[serde(default)]
    pub project: Option<String>,
    /// `redirect`, `page`, `agent` or `*`.
    pub resource: String,
    /// `read`, `write` or `*`; write does not imply read.
    pub action: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenInput {
    /// 1 to 100 characters.
    pub name: String,
    /// Defaults to what an agent needs: redirect:read, page:read, agent:write.
    #[serde(default)]
    pub scopes: Option<Vec<ScopeInput>>,
    /// Expiry as RFC 3339; never when absent.
    #[serde(default, alias = "expiresAt")]
    pub expires_at: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct TokenView {
    pub id: String,
    pub name: String,
    pub preview: String,
    #[schema(value_type = Vec<Object>)]
    pub scopes: Vec<TokenScope>,
    pub created_at: String,
    pub expires_at: Option<String>,
    pub last_used_at: Option<String>,
    /// The token itself: only in the response that created it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

fn token_view(t: &ProjectTokenRecord, token: Option<String>) -> TokenView {
    TokenView {
        id: t.id.clone(),
        name: t.name.clone(),
        preview: t.preview.clone(),
        scopes: t.scopes.clone(),
        created_at: rfc3339(t.created_at),
        expires_at: t.expires_at.map(rfc3339),
        last_used_at: t.last_used_at.map(rfc3339),
        token,
    }
}

#[utoipa::path(get, path = "/api/v1/namespaces/{ns}/projects/{project}/tokens", operation_id = "list_project_tokens", tag = "redirects",
    params(("ns" = String, Path, description = "Namespace"), ("project" = String, Path, description = "Project")),
    responses((status = 200, description = "Agent tokens (never the tokens themselves)", body = ListEnvelope<TokenView>)))]
pub async fn list_tokens(
    State(state): State<AppState>,
    _auth: AuthContext,
    Path((ns, name)): Path<(String, String)>,
) -> ApiResult<Json<ListEnvelope<TokenView>>> {
    let p = project(&state, &ns, &name).await?;
    let items: Vec<TokenView> = state
        .store
        .list_project_tokens(&p.id)
        .await?
        .iter()
        .map(|t| token_view(t, None))
        .collect();
    Ok(Json(ListEnvelope::whole(items)))
}

#[utoipa::path(post, path = "/api/v1/namespaces/{ns}/projects/{project}/tokens", operation_id = "create_project_token", tag = "redirects",
    params(("ns" = String, Path, description = "Namespace"), ("project" = String, Path, description = "Project")),
    request_body = TokenInput,
    responses((status = 201, description = "Created; `token` is shown this once", body = TokenView)))]
pub async fn create_token(
    State(state): State<AppState>,
    auth: AuthContext,
    Path((ns, name)): Path<(String, String)>,
    JsonBody(body): JsonBody<TokenInput>,
) -> ApiResult<Response> {
    auth.require(Role::Operator)?;
    let tname = body.name.trim().to_string();
    if tname.is_empty() || tname.chars().count() > 100 || tname.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "name",
            "must be 1 to 100 characters without control characters",
        ));
    }
    let expires_at = body
        .expires_at
        .as_deref()
        .map(|s| {
            chrono::DateTime::parse_from_rfc3339(s)
                .map(|t| t.timestamp_millis())
                .map_err(|e| {
                    ApiError::bad_request("expires_at", format!("must be an RFC 3339 time: {e}"))
                })
        })
        .transpose()?;
    let p = project(&state, &ns, &name).await?;
    let scopes = match body.scopes {
        None => ["redirect:read", "page:read", "agent:write"]
            .iter()
            .map(|s| {
                let (resource, action) = s.split_once(':').unwrap_or_default();
                TokenScope {
                    namespace: ns.clone(),
                    project: name.clone(),
                    resource: resource.into(),
                    action: action.into(),
                }
            })
            .collect(),
        Some(list) => {
            if list.is_empty() || list.len() > 20 {
                return Err(ApiError::bad_request("scopes", "must hold 1 to 20 scopes"));
            }
            let mut out = Vec::new();
            for (i, s) in list.into_iter().enumerate() {
                let field = |f: &str| format!("scopes[{i}].{f}");
                let namespace = s.namespace.unwrap_or_else(|| ns.clone());
                let proj = s.project.unwrap_or_else(|| name.clone());
                if namespace != ns && namespace != "*" {
                    return Err(ApiError::bad_request(
                        &field("namespace"),
                        "must be this project's namespace or *",
                    ));
                }
                if proj != name && proj != "*" {
                    return Err(ApiError::bad_request(
                        &field("project"),
                        "must be this project or *",
                    ));
                }
                if (namespace == "*" || proj == "*") && auth.role < Role::Admin {
                    return Err(ApiError::forbidden(
                        "wildcard token scopes need the admin role",
                    ));
                }
                if !["redirect", "page", "agent", "*"].contains(&s.resource.as_str()) {
                    return Err(ApiError::bad_request(
                        &field("resource"),
                        "must be redirect, page, agent or *",
                    ));
                }
                if !["read", "write", "*"].contains(&s.action.as_str()) {
                    return Err(ApiError::bad_request(
                        &field("action"),
                        "must be read, write or *",
                    ));
                }
                out.push(TokenScope {
                    namespace,
                    project: proj,
                    resource: s.resource,
                    action: s.action,
                });
            }
            out
        }
    };
    let token = format!("flecto_{}", random_token(32));
    let preview = format!("{}...{}", &token[..11], &token[token.len() - 4..]);
    let rec = ProjectTokenRecord {
        id: uuid::Uuid::new_v4().to_string(),
        project_id: p.id.clone(),
        name: tname,
        token_hash: hash_token(&token),
        preview,
        scopes,
        created_at: now_ms(),
        expires_at,
        last_used_at: None,
    };
    state.store.create_project_token(&auth.actor, &rec).await?;
    Ok((StatusCode::CREATED, Json(token_view(&rec, Some(token)))).into_response())
}

#[utoipa::path(delete, path = "/api/v1/namespaces/{ns}/projects/{project}/tokens/{id}", operation_id = "revoke_project_token", tag = "redirects",
    params(("ns" = String, Path, description = "Namespace"), ("project" = String, Path, description = "Project"), ("id" = String, Path, description = "Token id")),
    responses((status = 204, description = "Revoked")))]
pub async fn revoke_token(
    State(state): State<AppState>,
    auth: AuthContext,
    Path((ns, name, id)): Path<(String, String, String)>,
) -> ApiResult<StatusCode> {
    auth.require(Role::Operator)?;
    let p = project(&state, &ns, &name).await?;
    state
        .store
        .delete_project_token(&auth.actor, &p.id, &id)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

// ------------------------------------------------------------------- agents

#[derive(Serialize, ToSchema)]
pub struct AgentView {
    pub name: String,
    /// As the agent reports it: `default`, `traefik`, `fleetgate`, …
    #[serde(rename = "type")]
    pub kind: String,
    /// The project version the agent has loaded.
    pub version: i64,
    /// `success`, `error`, or empty for an agent that only sent heartbeats.
    pub status: String,
    pub error: String,
    pub load_duration_ns: i64,
    pub load_duration_ms: f64,
    pub last_hit_at: String,
    pub created_at: String,
    pub updated_at: String,
    /// Behind the published version, or silent for longer than the stale setting.
    pub stale: bool,
    /// `behind`, `silent` or null.
    pub stale_reason: Option<String>,
}

pub fn agent_view(a: &AgentRecord, published: i64, stale_after_ms: i64, now: i64) -> AgentView {
    let silent = now - a.last_hit_at > stale_after_ms;
    let behind = a.loaded_version < published;
    AgentView {
        name: a.name.clone(),
        kind: a.kind.clone(),
        version: a.loaded_version,
        status: a.status.clone(),
        error: a.error.clone(),
        load_duration_ns: a.load_duration_ns,
        load_duration_ms: a.load_duration_ns as f64 / 1e6,
        last_hit_at: rfc3339(a.last_hit_at),
        created_at: rfc3339(a.created_at),
        updated_at: rfc3339(a.updated_at),
        stale: silent || behind,
        stale_reason: if silent {
            Some("silent".into())
        } else if behind {
            Some("behind".into())
        } else {
            None
        },
    }
}

#[utoipa::path(get, path = "/api/v1/namespaces/{ns}/projects/{project}/agents", operation_id = "list_project_agents", tag = "redirects",
    params(("ns" = String, Path, description = "Namespace"), ("project" = String, Path, description = "Project")),
    responses((status = 200, description = "Agents syncing this project, by name", body = ListEnvelope<AgentView>)))]
pub async fn list_agents(
    State(state): State<AppState>,
    _auth: AuthContext,
    Path((ns, name)): Path<(String, String)>,
) -> ApiResult<Json<ListEnvelope<AgentView>>> {
    let p = project(&state, &ns, &name).await?;
    let stale_ms = i64::try_from(state.settings().redirects.agent_stale_after_secs)
        .unwrap_or(i64::MAX / 1000)
        .saturating_mul(1000);
    let now = now_ms();
    let items: Vec<AgentView> = state
        .store
        .list_agents(&p.id)
        .await?
        .iter()
        .map(|a| agent_view(a, p.published_version, stale_ms, now))
        .collect();
    Ok(Json(ListEnvelope::whole(items)))
}

#[utoipa::path(delete, path = "/api/v1/namespaces/{ns}/projects/{project}/agents/{agent}", operation_id = "delete_project_agent", tag = "redirects",
    params(("ns" = String, Path, description = "Namespace"), ("project" = String, Path, description = "Project"), ("agent" = String, Path, description = "Agent name")),
    responses((status = 204, description = "Forgotten (it reappears when it reports again)")))]
pub async fn delete_agent(
    State(state): State<AppState>,
    auth: AuthContext,
    Path((ns, name, agent)): Path<(String, String, String)>,
) -> ApiResult<StatusCode> {
    auth.require(Role::Operator)?;
    let p = project(&state, &ns, &name).await?;
    state.store.delete_agent(&auth.actor, &p.id, &agent).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The rows of a parse that must have no errors.
    fn rows_of(p: Parsed) -> Vec<(u64, Redirect)> {
        assert!(p.1.is_empty(), "unexpected errors: {:?}", p.1);
        p.0
    }

    /// The errors of a parse that must have some.
    fn errors_of(p: Parsed) -> Vec<ImportRowError> {
        assert!(!p.1.is_empty(), "expected errors");
        p.1
    }

    #[test]
    fn csv_rows_with_line_numbers() {
        let text = "type,source,target,status\nBASIC,/a,/b,MOVED_PERMANENT\n\nREGEX,\"^/x/(.*),y$\",/y/$1,\nBASIC,/c\nNOPE,/d,/e,FOUND\nBASIC,/f,/g,SEE_OTHER\n";
        let (parsed, errs) = parse_csv(text.as_bytes());
        // The rows that parsed are kept, to be validated too.
        assert_eq!(parsed.iter().map(|r| r.0).collect::<Vec<_>>(), vec![2, 4]);
        let lines: Vec<(u64, &str)> = errs.iter().map(|e| (e.line, e.field.as_str())).collect();
        assert_eq!(lines, vec![(5, "row"), (6, "type"), (7, "status")]);
        let ok = rows_of(parse_csv(
            b"BASIC,/a,/b,MOVED_PERMANENT\nREGEX,\"^/x/(.*),y$\",/y/$1,\n",
        ));
        assert_eq!(ok.len(), 2);
        assert_eq!(ok[1].0, 2);
        assert_eq!(ok[1].1.source, "^/x/(.*),y$");
        assert_eq!(ok[1].1.status, RedirectStatus::Found);
    }

    #[test]
    fn duplicate_sources_name_both_lines() {
        let rows = rows_of(parse_csv(b"BASIC,/a,/b\nBASIC,/a,/c\nBASIC,x,/c\n"));
        let errs = validate_rows(&rows);
        assert_eq!(errs.len(), 2);
        assert_eq!((errs[0].line, errs[0].field.as_str()), (2, "source"));
        assert!(errs[0].message.contains("line 1"), "{}", errs[0].message);
        assert_eq!((errs[1].line, errs[1].field.as_str()), (3, "source"));
    }

    #[test]
    fn json_rows_name_index_and_field() {
        let errs = errors_of(parse_json_rows(br#"[{"type":"BASIC","source":"/a","target":"/b"},{"type":"BASIC","source":"/a","target":"/b","status":301}]"#));
        assert_eq!((errs[0].line, errs[0].field.as_str()), (2, "status"));
        errors_of(parse_json_rows(b"{}"));
    }

    proptest! {
        #[test]
        fn csv_import_never_panics(text in "\\PC{0,300}") {
            let _ = parse_csv(text.as_bytes());
        }

        #[test]
        fn csv_export_then_import_round_trips(
            rows in proptest::collection::vec(("/[a-z0-9,\"\\- ]{0,12}", "/[a-z0-9,\"]{0,12}"), 0..20)
        ) {
            let mut w = csv::Writer::from_writer(Vec::new());
            w.write_record(["type", "source", "target", "status"]).expect("header");
            for (s, t) in &rows {
                w.write_record(["BASIC", s.trim(), t.trim(), "FOUND"]).expect("row");
            }
            let bytes = w.into_inner().expect("bytes");
            let parsed = rows_of(parse_csv(&bytes));
            prop_assert_eq!(parsed.len(), rows.len());
            for ((_, r), (s, t)) in parsed.iter().zip(&rows) {
                prop_assert_eq!(&r.source, s.trim());
                prop_assert_eq!(&r.target, t.trim());
            }
        }
    }
}

/// Which rule set a URL is tried against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TestSet {
    /// The working set: the published rules with the drafts applied.
    Draft,
    /// The rules served now.
    Published,
}

/// The rule a URL matched.
#[derive(Serialize, ToSchema)]
pub struct MatchedRule {
    /// `redirect` or `page`.
    pub kind: &'static str,
    pub id: i64,
    /// `BASIC`, `BASIC_HOST`, `REGEX` or `REGEX_HOST`.
    #[serde(rename = "type")]
    pub rule_type: String,
    /// The redirect's source or the page's path.
    pub source: String,
}

#[derive(Serialize, ToSchema)]
pub struct UrlTestResult {
    /// The rule set tried: `draft` or `published`.
    pub which: &'static str,
    /// The `Host` and request-target the URL was matched as.
    pub host: String,
    pub uri: String,
    /// Whether a rule answers the URL.
    pub matched: bool,
    pub rule: Option<MatchedRule>,
    /// The answer's status: 301, 302, 307 or 308 for a redirect, 200 for a page.
    pub status: Option<u16>,
    /// The redirect's `Location`.
    pub location: Option<String>,
    /// The page's media type and its first 2,000 characters.
    pub content_type: Option<String>,
    pub content: Option<String>,
    /// Rules left out of the set because they cannot be compiled.
    pub skipped: usize,
}

/// Longest URL the tester takes.
const MAX_TEST_URL: usize = 4096;

/// Splits a tester URL into the raw `Host` and the request-target.
fn split_test_url(url: &str, default_host: &str) -> ApiResult<(String, String)> {
    let bad = |m: &str| ApiError::bad_request("url", m.to_string());
    if url.is_empty() {
        return Err(bad("is required"));
    }
    if url.len() > MAX_TEST_URL {
        return Err(bad(&format!("must be at most {MAX_TEST_URL} bytes")));
    }
    if url.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(bad("must not contain spaces or control characters"));
    }
    // A fragment never reaches the server.
    let url = url.split('#').next().unwrap_or_default();
    if url.starts_with('/') && !url.starts_with("//") {
        return Ok((default_host.to_string(), url.to_string()));
    }
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| bad("must start with http:// or https://, or be a path starting with /"))?;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (host, target) = rest.split_at(end);
    if host.is_empty() {
        return Err(bad("has no host"));
    }
    if host.contains('@') {
        return Err(bad("must not contain user information (user@)"));
    }
    let uri = match target.chars().next() {
        None => "/".to_string(),
        Some('?') => format!("/{target}"),
        Some(_) => target.to_string(),
    };
    Ok((host.to_string(), uri))
}

/// Every rule row of `table` in the project, deleted drafts included, in id order.
async fn all_rows(state: &AppState, table: RuleTable, project_id: &str) -> ApiResult<Vec<RuleRow>> {
    let filter = RuleFilter {
        include_deleted: true,
        ..Default::default()
    };
    let mut out: Vec<RuleRow> = Vec::new();
    loop {
        let page = PageRequest {
            limit: crate::extract::MAX_PAGE,
            offset: out.len() as i64,
        };
        let got = state
            .store
            .list_rules(table, project_id, &filter, page)
            .await?;
        let n = got.items.len();
        out.extend(got.items);
        if n == 0 || out.len() as i64 >= got.total {
            return Ok(out);
        }
    }
}

/// The rules of one set with their ids: the working set or the published one.
fn set_of<R: Rule>(rows: &[RuleRow], which: TestSet) -> ApiResult<Vec<(i64, R)>> {
    rows.iter()
        .filter_map(|row| {
            match which {
                TestSet::Draft => (row.state != DraftState::Deleted).then_some(&row.working),
                TestSet::Published => row.published.as_ref(),
            }
            .map(|d| R::from_data(d).map(|r| (row.id, r)))
        })
        .collect()
}

/// A read, so viewers may use it too: nothing is written and no hit is counted.
#[utoipa::path(get, path = "/api/v1/namespaces/{ns}/projects/{project}/test", operation_id = "test_project_url", tag = "redirects",
    params(("ns" = String, Path, description = "Namespace"), ("project" = String, Path, description = "Project"),
        ("url" = String, Query, description = "`http://host[:port]/path?query` (the host as a client sends it in `Host`), or a path starting with `/`, tried on the project's first host; at most 4096 bytes"),
        ("which" = Option<String>, Query, description = "`draft` (the default: the published rules with the unpublished changes applied) or `published` (the rules served now)")),
    responses((status = 200, description = "What the rule set answers the URL with: the rule that matches and its answer, or that none does", body = UrlTestResult)))]
pub async fn test_url(
    State(state): State<AppState>,
    _auth: AuthContext,
    Path((ns, name)): Path<(String, String)>,
    q: QueryParams,
) -> ApiResult<Json<UrlTestResult>> {
    let which = match q.text("which") {
        None | Some("draft") => TestSet::Draft,
        Some("published") => TestSet::Published,
        Some(other) => {
            return Err(ApiError::bad_request(
                "which",
                format!("must be draft or published, got {other:?}"),
            ))
        }
    };
    let url = q.text("url").unwrap_or_default().to_string();
    let p = project(&state, &ns, &name).await?;
    let default_host = p.hosts.first().map(String::as_str).unwrap_or("");
    let (host, uri) = split_test_url(&url, default_host)?;
    let redirects: Vec<(i64, Redirect)> =
        set_of(&all_rows(&state, RuleTable::Redirects, &p.id).await?, which)?;
    let pages: Vec<(i64, Page)> = set_of(&all_rows(&state, RuleTable::Pages, &p.id).await?, which)?;
    let set = fleetgate_core::redirects::matcher::RuleSet::build(
        redirects.iter().map(|(_, r)| r.clone()).collect(),
        pages.iter().map(|(_, r)| r.clone()).collect(),
    );
    let mut out = UrlTestResult {
        which: match which {
            TestSet::Draft => "draft",
            TestSet::Published => "published",
        },
        host,
        uri,
        matched: false,
        rule: None,
        status: None,
        location: None,
        content_type: None,
        content: None,
        skipped: set.skipped().len(),
    };
    use fleetgate_core::redirects::matcher::{Hit, RuleRef};
    if let Some((rule, hit)) = set.lookup_rule(&out.host, &out.uri) {
        out.matched = true;
        out.rule = match rule {
            RuleRef::Redirect(i) => redirects.get(i).map(|(id, r)| MatchedRule {
                kind: "redirect",
                id: *id,
                rule_type: r.kind.as_str().into(),
                source: r.source.clone(),
            }),
            RuleRef::Page(i) => pages.get(i).map(|(id, pg)| MatchedRule {
                kind: "page",
                id: *id,
                rule_type: pg.kind.as_str().into(),
                source: pg.path.clone(),
            }),
        };
        match hit {
            Hit::Redirect { status, location } => {
                out.status = Some(status.code());
                out.location = Some(location.into_owned());
            }
            Hit::Page {
                content,
                content_type,
            } => {
                out.status = Some(200);
                out.content_type = Some(content_type.mime().into());
                out.content = Some(
                    String::from_utf8_lossy(content)
                        .chars()
                        .take(2000)
                        .collect(),
                );
            }
        }
    }
    Ok(Json(out))
}
