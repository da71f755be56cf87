//! Export and import of the whole configuration as one JSON document.

use axum::extract::State;
use axum::Json;
use fleetgate_core::diff::{diff, Change};
use fleetgate_core::user::Role;
use fleetgate_core::ConfigDocument;
use serde::Serialize;
use utoipa::{IntoParams, ToSchema};

use crate::auth::AuthContext;
use crate::error::{ApiError, ApiResult};
use crate::extract::{JsonBody, QueryParams};
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
    let (changes, revision) = state
        .replace_config(&auth.actor, &doc, "config.import", "import")
        .await?;
    Ok(Json(ImportResult {
        dry_run,
        changes,
        revision,
    }))
}
