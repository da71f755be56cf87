//! Configuration revisions: history, diff and rollback.

use axum::extract::{Path, State};
use axum::Json;
use fleetgate_core::diff::Change;
use fleetgate_core::user::Role;
use fleetgate_core::ConfigDocument;
use fleetgate_store::RevisionRecord;
use serde::Serialize;
use utoipa::{IntoParams, ToSchema};

use crate::api::rfc3339;
use crate::auth::AuthContext;
use crate::error::{ApiError, ApiResult};
use crate::extract::{ListEnvelope, PageParams, Pagination, QueryParams};
use crate::revisions::revision_document;
use crate::AppState;

#[derive(Serialize, ToSchema)]
pub struct RevisionView {
    pub number: i64,
    pub created_at: String,
    pub author: String,
    pub message: String,
}

#[derive(Serialize, ToSchema)]
pub struct RevisionDetail {
    #[serde(flatten)]
    pub info: RevisionView,
    /// The whole configuration as of this revision.
    pub document: ConfigDocument,
}

#[derive(Serialize, ToSchema)]
pub struct RevisionDiff {
    /// The older side (`against`).
    pub from: i64,
    /// The revision asked for.
    pub to: i64,
    pub changes: Vec<Change>,
}

#[derive(Serialize, ToSchema)]
pub struct RollbackResult {
    /// The new revision the rollback created; null when nothing differed.
    pub revision: Option<i64>,
    pub rolled_back_to: i64,
    pub changes: Vec<Change>,
}

#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct DiffQuery {
    /// Revision to compare with; defaults to the one before. 0 is the empty configuration.
    #[param(minimum = 0)]
    against: Option<i64>,
}

fn view(r: &RevisionRecord) -> RevisionView {
    RevisionView {
        number: r.number,
        created_at: rfc3339(r.created_at),
        author: r.author.clone(),
        message: r.message.clone(),
    }
}

fn revision_number(raw: &str) -> ApiResult<i64> {
    raw.parse::<i64>().ok().filter(|n| *n >= 1).ok_or_else(|| {
        ApiError::bad_request(
            "n",
            format!("must be a revision number (1 or more), got {raw:?}"),
        )
    })
}

#[utoipa::path(get, path = "/api/v1/revisions", operation_id = "list_revisions", tag = "revisions", params(PageParams),
    responses((status = 200, description = "Revisions, newest first", body = ListEnvelope<RevisionView>)))]
pub async fn list(
    State(state): State<AppState>,
    _auth: AuthContext,
    Pagination(page): Pagination,
) -> ApiResult<Json<ListEnvelope<RevisionView>>> {
    let p = state.store.list_revisions(page).await?;
    Ok(Json(ListEnvelope::new(
        p.items.iter().map(view).collect(),
        p.total,
        page,
    )))
}

#[utoipa::path(get, path = "/api/v1/revisions/{n}", operation_id = "get_revision", tag = "revisions", params(("n" = i64, Path, description = "Revision number", minimum = 1)),
    responses((status = 200, description = "The revision and its whole configuration", body = RevisionDetail)))]
pub async fn get(
    State(state): State<AppState>,
    _auth: AuthContext,
    Path(n): Path<String>,
) -> ApiResult<Json<RevisionDetail>> {
    let n = revision_number(&n)?;
    let r = state
        .store
        .get_revision(n)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("revision {n}")))?;
    Ok(Json(RevisionDetail {
        info: view(&r),
        document: revision_document(&r)?,
    }))
}

#[utoipa::path(get, path = "/api/v1/revisions/{n}/diff", operation_id = "diff_revisions", tag = "revisions",
    params(("n" = i64, Path, description = "Revision number", minimum = 1), DiffQuery),
    responses((status = 200, description = "What changed from `against` to `n`", body = RevisionDiff)))]
pub async fn diff_revisions(
    State(state): State<AppState>,
    _auth: AuthContext,
    Path(n): Path<String>,
    q: QueryParams,
) -> ApiResult<Json<RevisionDiff>> {
    let n = revision_number(&n)?;
    let against = q.int("against")?.unwrap_or(n - 1);
    let changes = state.revision_diff(n, against).await?;
    Ok(Json(RevisionDiff {
        from: against,
        to: n,
        changes,
    }))
}

#[utoipa::path(post, path = "/api/v1/revisions/{n}/rollback", operation_id = "rollback_revision", tag = "revisions", params(("n" = i64, Path, description = "Revision number", minimum = 1)),
    responses((status = 200, description = "The configuration of revision n is back in force, as a new revision", body = RollbackResult)))]
pub async fn rollback(
    State(state): State<AppState>,
    auth: AuthContext,
    Path(n): Path<String>,
) -> ApiResult<Json<RollbackResult>> {
    auth.require(Role::Admin)?;
    let n = revision_number(&n)?;
    let (changes, revision) = state
        .rollback(&auth.actor, n)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("revision {n}")))?;
    Ok(Json(RollbackResult {
        revision,
        rolled_back_to: n,
        changes,
    }))
}
