//! The audit log: who changed what, when, from where, with before and after.

use axum::extract::State;
use axum::Json;
use fleetgate_core::diff::{diff, Change};
use fleetgate_store::{AuditFilter, AuditRecord};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::api::rfc3339;
use crate::auth::AuthContext;
use crate::error::ApiResult;
use crate::extract::{ListEnvelope, Pagination, QueryParams};
use crate::AppState;

#[derive(Serialize, ToSchema)]
pub struct AuditView {
    pub id: i64,
    pub at: String,
    /// A user name, `api_key:<name>` or `system`.
    pub actor: String,
    pub actor_id: Option<String>,
    /// e.g. `user.create`, `settings.update`, `config.import`, `auth.login`.
    pub action: String,
    pub target_type: String,
    pub target_id: Option<String>,
    pub client_ip: Option<String>,
    pub request_id: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub before: Option<serde_json::Value>,
    #[schema(value_type = Option<Object>)]
    pub after: Option<serde_json::Value>,
    /// What changed between `before` and `after`.
    pub changes: Vec<Change>,
}

impl From<AuditRecord> for AuditView {
    fn from(r: AuditRecord) -> Self {
        let null = serde_json::Value::Null;
        let changes = if r.before.is_some() || r.after.is_some() {
            diff(
                r.before.as_ref().unwrap_or(&null),
                r.after.as_ref().unwrap_or(&null),
            )
        } else {
            Vec::new()
        };
        Self {
            id: r.id,
            at: rfc3339(r.at),
            actor: r.actor,
            actor_id: r.actor_id,
            action: r.action,
            target_type: r.target_type,
            target_id: r.target_id,
            client_ip: r.client_ip,
            request_id: r.request_id,
            before: r.before,
            after: r.after,
            changes,
        }
    }
}

/// Filters of the audit listing.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct AuditQuery {
    #[param(minimum = 0)]
    limit: Option<i64>,
    #[param(minimum = 0)]
    offset: Option<i64>,
    actor: Option<String>,
    action: Option<String>,
    target_type: Option<String>,
    /// RFC 3339 time or Unix milliseconds.
    since: Option<String>,
    /// RFC 3339 time or Unix milliseconds.
    until: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/audit", operation_id = "list_audit", tag = "audit", params(AuditQuery),
    responses((status = 200, description = "Audit entries, newest first", body = ListEnvelope<AuditView>)))]
pub async fn list(
    State(state): State<AppState>,
    _auth: AuthContext,
    Pagination(page): Pagination,
    q: QueryParams,
) -> ApiResult<Json<ListEnvelope<AuditView>>> {
    let filter = AuditFilter {
        actor: q.text("actor").map(str::to_string),
        action: q.text("action").map(str::to_string),
        target_type: q.text("target_type").map(str::to_string),
        since: q.time("since")?,
        until: q.time("until")?,
    };
    let p = state.store.list_audit(&filter, page).await?;
    Ok(Json(ListEnvelope::new(
        p.items.into_iter().map(AuditView::from).collect(),
        p.total,
        page,
    )))
}
