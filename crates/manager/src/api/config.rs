//! Export and import of the whole configuration as one JSON document.

use axum::extract::State;
use axum::Json;
use fleetgate_core::diff::{diff, Change};
use fleetgate_core::redirects::{Page, ProjectSpec, Redirect};
use fleetgate_core::user::Role;
use fleetgate_core::{ConfigDocument, Settings, ValidationError};
use fleetgate_store::{
    ChangeCounts, DeclaredProject, PageRequest, ProjectChange, RuleData, RuleTable, StoreError,
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::auth::AuthContext;
use crate::error::{ApiError, ApiResult};
use crate::extract::{IfMatch, JsonBody, QueryParams};
use crate::revisions::document_value;
use crate::AppState;

#[derive(Serialize, ToSchema)]
pub struct ImportResult {
    /// True when nothing was written.
    pub dry_run: bool,
    /// What the import changes (or would change).
    pub changes: Vec<Change>,
    /// The revision the import created; null for a dry run or when nothing changed.
    pub revision: Option<i64>,
}

#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct ImportQuery {
    /// Validate and report the changes without writing anything.
    dry_run: Option<bool>,
    /// The revision the document was made against (as `If-Match`): 409 when
    /// the configuration is at another one, and nothing is written.
    expected_revision: Option<i64>,
}

/// The configuration as stored now, as a document.
pub async fn current_document(state: &AppState) -> ApiResult<ConfigDocument> {
    let set = state.store.resource_set().await?;
    ConfigDocument::from_resources(&set)
        .map_err(|e| ApiError::internal("stored configuration does not validate", e))
}

/// Validates a whole document off the async runtime: it includes compiling the
/// route table, which for many regex routes takes a while.
pub async fn validate_document(doc: &ConfigDocument) -> ApiResult<()> {
    let doc = doc.clone();
    tokio::task::spawn_blocking(move || doc.validate())
        .await
        .map_err(|e| ApiError::internal("configuration check", e))??;
    Ok(())
}

#[utoipa::path(get, path = "/api/v1/export", operation_id = "export_config", tag = "config",
    responses((status = 200, description = "All configuration as one document", body = ConfigDocument)))]
pub async fn export(
    State(state): State<AppState>,
    _auth: AuthContext,
) -> ApiResult<Json<ConfigDocument>> {
    Ok(Json(current_document(&state).await?))
}

#[utoipa::path(post, path = "/api/v1/import", operation_id = "import_config", tag = "config", params(ImportQuery), request_body = ConfigDocument,
    responses((status = 200, description = "Imported (or validated, for a dry run)", body = ImportResult)))]
pub async fn import(
    State(state): State<AppState>,
    auth: AuthContext,
    q: QueryParams,
    if_match: IfMatch,
    JsonBody(doc): JsonBody<ConfigDocument>,
) -> ApiResult<Json<ImportResult>> {
    auth.require(Role::Admin)?;
    let dry_run = q.flag("dry_run")?;
    if dry_run {
        validate_document(&doc).await?;
        let mut doc = doc;
        doc.normalize();
        let current = current_document(&state).await?;
        let changes = diff(&document_value(&current), &document_value(&doc));
        return Ok(Json(ImportResult {
            dry_run,
            changes,
            revision: None,
        }));
    }
    if let Some(expected) = expected_revision(&q, if_match)? {
        let (changes, declared) = state
            .declare_config(
                &auth.actor,
                Some(&doc),
                None,
                Some(expected),
                "config.import",
                "import",
                false,
            )
            .await?;
        let c = &declared.committed;
        return Ok(Json(ImportResult {
            dry_run,
            changes,
            revision: c.written.then_some(c.number),
        }));
    }
    let (changes, revision) = state
        .replace_config(&auth.actor, &doc, "config.import", "import")
        .await?;
    Ok(Json(ImportResult {
        dry_run,
        changes,
        revision,
    }))
}

/// The expected revision of `?expected_revision=` or `If-Match` (which must agree).
fn expected_revision(q: &QueryParams, if_match: IfMatch) -> ApiResult<Option<i64>> {
    let query = q.int("expected_revision")?;
    match (query, if_match.0) {
        (Some(a), Some(b)) if a != b => Err(ApiError::bad_request(
            "expected_revision",
            "differs from If-Match",
        )),
        (a, b) => Ok(a.or(b)),
    }
}

/// A redirect project as declared, with the number of unpublished changes.
#[derive(Serialize, ToSchema)]
pub struct ProjectDrafts {
    /// `namespace/name`.
    pub project: String,
    pub changes: i64,
}

/// What a fleet file describes, as the manager holds it now.
#[derive(Serialize, ToSchema)]
pub struct DeclaredView {
    /// The revision in force, read before everything else: an apply made
    /// against it is refused if anything changed since.
    pub revision: i64,
    pub config: ConfigDocument,
    /// Every redirect project with its published rules, by namespace and name;
    /// rules in the order they were created.
    pub redirect_projects: Vec<ProjectSpec>,
    /// Projects holding unpublished changes (not in `redirect_projects`).
    pub drafts: Vec<ProjectDrafts>,
}

/// Rows read per query while reading a published rule set.
const READ_BATCH: i64 = 5000;

async fn published<T>(
    state: &AppState,
    table: RuleTable,
    project_id: &str,
    convert: fn(&RuleData) -> ApiResult<T>,
) -> ApiResult<Vec<T>> {
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        let page = state
            .store
            .published_rules(
                table,
                project_id,
                PageRequest {
                    limit: READ_BATCH,
                    offset,
                },
            )
            .await?;
        let n = page.items.len() as i64;
        for d in &page.items {
            out.push(convert(d)?);
        }
        offset += n;
        if n < READ_BATCH {
            return Ok(out);
        }
    }
}

#[utoipa::path(get, path = "/api/v1/config/declared", operation_id = "declared_config", tag = "config",
    responses((status = 200, description = "The configuration, its revision and the redirect projects with their published rules", body = DeclaredView)))]
pub async fn declared(
    State(state): State<AppState>,
    _auth: AuthContext,
) -> ApiResult<Json<DeclaredView>> {
    use crate::api::redirects::Rule;
    let revision = state.store.latest_revision().await?;
    let config = current_document(&state).await?;
    let mut redirect_projects = Vec::new();
    let mut drafts = Vec::new();
    for p in state.store.all_projects().await? {
        let d = state.store.drafts(&p.id, 0).await?;
        let changes = d.redirects.total() + d.pages.total();
        if changes > 0 {
            drafts.push(ProjectDrafts {
                project: format!("{}/{}", p.namespace, p.name),
                changes,
            });
        }
        redirect_projects.push(ProjectSpec {
            redirects: published(&state, RuleTable::Redirects, &p.id, Redirect::from_data).await?,
            pages: published(&state, RuleTable::Pages, &p.id, Page::from_data).await?,
            namespace: p.namespace,
            name: p.name,
            description: p.description,
            hosts: p.hosts,
        });
    }
    Ok(Json(DeclaredView {
        revision,
        config,
        redirect_projects,
        drafts,
    }))
}

/// A declarative apply: what `fleetgate config apply` sends.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApplyInput {
    /// The revision the file was checked against (as `If-Match`): 409 when
    /// the configuration is at another one.
    #[serde(default)]
    pub expected_revision: Option<i64>,
    /// The whole configuration; absent: kept as it is.
    #[serde(default)]
    pub config: Option<ConfigDocument>,
    /// Every redirect project with its published rules (projects left out are
    /// deleted with their rules, tokens and agents); absent: kept as they are.
    #[serde(default)]
    pub redirect_projects: Option<Vec<ProjectSpec>>,
}

/// What happened (or would happen) to one redirect project.
#[derive(Serialize, ToSchema)]
pub struct ProjectChangeView {
    /// `namespace/name`.
    pub project: String,
    /// `create`, `update` or `delete`.
    pub action: String,
    /// The version published by the apply, if it published.
    pub published_version: Option<i64>,
    #[schema(value_type = Object)]
    pub redirects: ChangeCounts,
    #[schema(value_type = Object)]
    pub pages: ChangeCounts,
}

fn change_view(c: ProjectChange) -> ProjectChangeView {
    ProjectChangeView {
        project: c.project,
        action: c.action,
        published_version: c.published_version,
        redirects: c.redirects,
        pages: c.pages,
    }
}

#[derive(Serialize, ToSchema)]
pub struct ApplyResult {
    /// True when nothing was written.
    pub dry_run: bool,
    /// What changes (or would change) in the configuration.
    pub changes: Vec<Change>,
    /// The revision made; null for a dry run or when the configuration is unchanged.
    pub revision: Option<i64>,
    /// The redirect projects that change (or would change).
    pub projects: Vec<ProjectChangeView>,
}

/// Checks every declared project as the redirects API checks projects and
/// rules; every problem named `redirect_projects[i].redirects[j].target`.
fn check_projects(
    specs: &[ProjectSpec],
    settings: &Settings,
) -> Result<Vec<DeclaredProject>, ValidationError> {
    use crate::api::redirects::{checked_hosts, valid_code, Rule};
    let mut e = ValidationError::new();
    let mut out = Vec::with_capacity(specs.len());
    let mut names = std::collections::HashMap::new();
    let mut hosts_of = std::collections::HashMap::new();
    for (i, p) in specs.iter().enumerate() {
        let at = format!("redirect_projects[{i}]");
        for (field, v) in [("namespace", &p.namespace), ("name", &p.name)] {
            if !valid_code(v) {
                e.push(
                    format!("{at}.{field}"),
                    "must be 1 to 50 characters of a-z, 0-9, _ and -",
                );
            }
        }
        if let Some(first) = names.insert((p.namespace.as_str(), p.name.as_str()), i) {
            e.push(
                format!("{at}.name"),
                format!(
                    "project {}/{} is declared twice (first at redirect_projects[{first}])",
                    p.namespace, p.name
                ),
            );
        }
        if p.description.chars().count() > 1000 {
            e.push(
                format!("{at}.description"),
                "must be at most 1000 characters",
            );
        }
        let hosts = match checked_hosts(&p.hosts) {
            Ok(h) => h,
            Err((field, message)) => {
                e.push(format!("{at}.{field}"), message);
                Vec::new()
            }
        };
        if hosts != p.hosts {
            if let Some(j) = p.hosts.iter().position(|h| !hosts.contains(h)) {
                if e.errors
                    .iter()
                    .all(|x| !x.field.starts_with(&format!("{at}.hosts")))
                {
                    e.push(
                        format!("{at}.hosts[{j}]"),
                        "must be written in lower case, once",
                    );
                }
            }
        }
        for (j, h) in hosts.iter().enumerate() {
            if let Some(other) = hosts_of.insert(h.clone(), i) {
                if other != i {
                    e.push(
                        format!("{at}.hosts[{j}]"),
                        format!("host {h} is also declared by redirect_projects[{other}]"),
                    );
                }
            }
        }
        let mut redirects = Vec::with_capacity(p.redirects.len());
        let mut sources = std::collections::HashMap::new();
        for (j, r) in p.redirects.iter().enumerate() {
            if let Err(v) = r.check(settings) {
                for fe in v.errors {
                    e.push(format!("{at}.redirects[{j}].{}", fe.field), fe.message);
                }
            }
            if let Some(first) = sources.insert(r.source.as_str(), j) {
                e.push(
                    format!("{at}.redirects[{j}].source"),
                    format!(
                        "duplicate source {:?} (first at redirects[{first}])",
                        r.source
                    ),
                );
            }
            redirects.push(r.to_data());
        }
        let mut pages = Vec::with_capacity(p.pages.len());
        let mut paths = std::collections::HashMap::new();
        for (j, pg) in p.pages.iter().enumerate() {
            if let Err(v) = pg.check(settings) {
                for fe in v.errors {
                    e.push(format!("{at}.pages[{j}].{}", fe.field), fe.message);
                }
            }
            if let Some(first) = paths.insert(pg.path.as_str(), j) {
                e.push(
                    format!("{at}.pages[{j}].path"),
                    format!("duplicate path {:?} (first at pages[{first}])", pg.path),
                );
            }
            pages.push(pg.to_data());
        }
        out.push(DeclaredProject {
            namespace: p.namespace.clone(),
            name: p.name.clone(),
            description: p.description.clone(),
            hosts,
            redirects,
            pages,
            new_id: uuid::Uuid::new_v4().to_string(),
        });
    }
    if e.errors.is_empty() {
        Ok(out)
    } else {
        Err(e)
    }
}

#[utoipa::path(post, path = "/api/v1/config/apply", operation_id = "apply_config", tag = "config", params(ImportQuery), request_body = ApplyInput,
    responses((status = 200, description = "Applied all or nothing (or checked, for a dry run)", body = ApplyResult),
        (status = 409, description = "The configuration changed since the expected revision, or a project to change holds unpublished drafts")))]
pub async fn apply(
    State(state): State<AppState>,
    auth: AuthContext,
    q: QueryParams,
    if_match: IfMatch,
    JsonBody(input): JsonBody<ApplyInput>,
) -> ApiResult<Json<ApplyResult>> {
    auth.require(Role::Admin)?;
    let dry_run = q.flag("dry_run")?;
    let expected = match (input.expected_revision, expected_revision(&q, if_match)?) {
        (Some(a), Some(b)) if a != b => {
            return Err(ApiError::bad_request(
                "expected_revision",
                "differs from If-Match or the query",
            ))
        }
        (a, b) => a.or(b),
    };
    let projects = match &input.redirect_projects {
        Some(specs) => {
            // Pages are limited by the settings in force after the apply.
            let settings = match &input.config {
                Some(doc) => doc.settings.clone(),
                None => state.settings(),
            };
            Some(check_projects(specs, &settings).map_err(StoreError::Rejected)?)
        }
        None => None,
    };
    let (changes, declared) = state
        .declare_config(
            &auth.actor,
            input.config.as_ref(),
            projects.as_deref(),
            expected,
            "config.apply",
            "apply",
            dry_run,
        )
        .await?;
    let c = &declared.committed;
    let revision = (c.written && !dry_run).then_some(c.number);
    Ok(Json(ApplyResult {
        dry_run,
        changes,
        revision,
        projects: declared.projects.into_iter().map(change_view).collect(),
    }))
}
