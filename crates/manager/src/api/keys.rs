//! API keys: shown once at creation, stored as SHA-256 hashes.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use fleetgate_core::time::now_ms;
use fleetgate_core::user::Role;
use fleetgate_store::ApiKeyRecord;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::api::rfc3339;
use crate::auth::{hash_token, random_token, AuthContext};
use crate::error::{ApiError, ApiResult};
use crate::extract::{JsonBody, ListEnvelope, PageParams, Pagination};
use crate::AppState;

#[derive(Serialize, ToSchema)]
pub struct ApiKeyView {
    pub id: String,
    pub name: String,
    /// The first characters of the key, to tell keys apart.
    pub prefix: String,
    pub role: Role,
    /// The owner; null for the bootstrap key.
    pub user_id: Option<String>,
    pub created_at: String,
    pub last_used_at: Option<String>,
}

impl From<&ApiKeyRecord> for ApiKeyView {
    fn from(k: &ApiKeyRecord) -> Self {
        Self {
            id: k.id.clone(),
            name: k.name.clone(),
            prefix: k.prefix.clone(),
            role: k.role,
            user_id: k.user_id.clone(),
            created_at: rfc3339(k.created_at),
            last_used_at: k.last_used_at.map(rfc3339),
        }
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApiKey {
    /// 1 to 100 characters (surrounding spaces are trimmed), no control characters.
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    pub name: String,
    /// At most the creator's role; defaults to it.
    #[serde(default)]
    pub role: Option<Role>,
}

#[derive(Serialize, ToSchema)]
pub struct CreatedApiKey {
    #[serde(flatten)]
    pub info: ApiKeyView,
    /// The key itself. Shown only in this response: store it now.
    pub key: String,
}

#[utoipa::path(get, path = "/api/v1/api-keys", operation_id = "list_api_keys", tag = "api-keys", params(PageParams),
    responses((status = 200, description = "Your keys (all keys for admins)", body = ListEnvelope<ApiKeyView>)))]
pub async fn list(
    State(state): State<AppState>,
    auth: AuthContext,
    Pagination(page): Pagination,
) -> ApiResult<Json<ListEnvelope<ApiKeyView>>> {
    let owner = if auth.role.is_admin() {
        None
    } else {
        auth.user_id()
    };
    if owner.is_none() && !auth.role.is_admin() {
        return Ok(Json(ListEnvelope::new(Vec::new(), 0, page)));
    }
    let p = state.store.list_api_keys(owner, page).await?;
    Ok(Json(ListEnvelope::new(
        p.items.iter().map(ApiKeyView::from).collect(),
        p.total,
        page,
    )))
}

#[utoipa::path(post, path = "/api/v1/api-keys", operation_id = "create_api_key", tag = "api-keys", request_body = CreateApiKey,
    responses((status = 201, description = "Created; the key is in this response only", body = CreatedApiKey)))]
pub async fn create(
    State(state): State<AppState>,
    auth: AuthContext,
    JsonBody(body): JsonBody<CreateApiKey>,
) -> ApiResult<(StatusCode, Json<CreatedApiKey>)> {
    let name = body.name.trim();
    if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "name",
            "must be 1 to 100 characters without control characters",
        ));
    }
    let role = body.role.unwrap_or(auth.role);
    if role > auth.role {
        return Err(ApiError::forbidden(format!(
            "a key cannot have more rights than its creator ({} > {})",
            role, auth.role
        )));
    }
    let key = format!("fgk_{}", random_token(32));
    let record = ApiKeyRecord {
        id: uuid::Uuid::new_v4().to_string(),
        name: name.to_string(),
        prefix: key.chars().take(12).collect(),
        key_hash: hash_token(&key),
        role,
        user_id: auth.user_id().map(str::to_string),
        created_at: now_ms(),
        last_used_at: None,
    };
    state.store.create_api_key(&auth.actor, &record).await?;
    state.refresh_ai().await;
    Ok((
        StatusCode::CREATED,
        Json(CreatedApiKey {
            info: ApiKeyView::from(&record),
            key,
        }),
    ))
}

#[utoipa::path(delete, path = "/api/v1/api-keys/{id}", operation_id = "delete_api_key", tag = "api-keys", params(("id" = String, Path, description = "Key id")),
    responses((status = 204, description = "Revoked")))]
pub async fn delete(
    State(state): State<AppState>,
    auth: AuthContext,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let key = state
        .store
        .get_api_key(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("API key {id}")))?;
    let own = key.user_id.is_some() && key.user_id.as_deref() == auth.user_id();
    if !own && !auth.role.is_admin() {
        // Someone else's key: as far as this caller knows, it does not exist.
        return Err(ApiError::not_found(format!("API key {id}")));
    }
    if key.role > auth.role {
        return Err(ApiError::forbidden(
            "cannot revoke a key with more rights than yours",
        ));
    }
    state.store.delete_api_key(&auth.actor, &id).await?;
    state.refresh_ai().await;
    Ok(StatusCode::NO_CONTENT)
}
