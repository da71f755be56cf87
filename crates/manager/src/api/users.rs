//! Users CRUD, for admins and super admins.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use fleetgate_core::time::now_ms;
use fleetgate_core::user::{validate_node_ids, validate_password, Role, UserName};
use fleetgate_core::ValidationError;
use fleetgate_store::UserRecord;
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;

use crate::api::rfc3339;
use crate::auth::{hash_password_blocking, AuthContext};
use crate::error::{ApiError, ApiResult};
use crate::extract::{IfMatch, JsonBody, ListEnvelope, PageParams, Pagination};
use crate::AppState;

/// A user as the API shows it (never the password hash).
#[derive(Serialize, ToSchema)]
pub struct UserView {
    pub id: String,
    pub username: String,
    pub display_name: String,
    pub email: Option<String>,
    pub role: Role,
    /// When set, the user sees and manages only these nodes.
    pub allowed_node_ids: Option<Vec<String>>,
    pub disabled: bool,
    /// The version an `If-Match` header refers to.
    pub version: i64,
    pub created_at: String,
    pub updated_at: String,
    pub last_login_at: Option<String>,
}

impl From<&UserRecord> for UserView {
    fn from(u: &UserRecord) -> Self {
        Self {
            id: u.id.clone(),
            username: u.username.clone(),
            display_name: u.display_name.clone(),
            email: u.email.clone(),
            role: u.role,
            allowed_node_ids: u.allowed_node_ids.clone(),
            disabled: u.disabled,
            version: u.version,
            created_at: rfc3339(u.created_at),
            updated_at: rfc3339(u.updated_at),
            last_login_at: u.last_login_at.map(rfc3339),
        }
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    /// 1 to 64 characters of `[A-Za-z0-9_.@-]`.
    #[schema(pattern = r"^[A-Za-z0-9_.@-]{1,64}$")]
    pub username: String,
    /// 8 to 256 characters.
    #[schema(min_length = 8, max_length = 256)]
    pub password: String,
    /// Defaults to `viewer`.
    #[serde(default = "default_role")]
    pub role: Role,
    /// At most 100 characters, no control characters.
    #[serde(default)]
    #[schema(max_length = 100, pattern = r"^[^\x00-\x1f\x7f-\x9f]*$")]
    pub display_name: Option<String>,
    #[serde(default)]
    #[schema(format = Email, max_length = 254)]
    pub email: Option<String>,
    #[serde(default)]
    pub allowed_node_ids: Option<Vec<String>>,
}

fn default_role() -> Role {
    Role::Viewer
}

/// Fields to change; absent fields keep their value. `null` clears
/// `email` and `allowed_node_ids`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUser {
    #[serde(default)]
    #[schema(pattern = r"^[A-Za-z0-9_.@-]{1,64}$")]
    pub username: Option<String>,
    #[serde(default)]
    #[schema(min_length = 8, max_length = 256)]
    pub password: Option<String>,
    #[serde(default)]
    pub role: Option<Role>,
    #[serde(default)]
    #[schema(max_length = 100, pattern = r"^[^\x00-\x1f\x7f-\x9f]*$")]
    pub display_name: Option<String>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, format = Email, max_length = 254)]
    pub email: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Vec<String>>)]
    pub allowed_node_ids: Option<Option<Vec<String>>>,
    #[serde(default)]
    pub disabled: Option<bool>,
}

/// Distinguishes an explicit `null` (Some(None)) from an absent field (None).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

fn validate_profile(display_name: &str, email: Option<&str>, e: &mut ValidationError) {
    if display_name.chars().count() > 100 || display_name.chars().any(char::is_control) {
        e.push(
            "display_name",
            "must be at most 100 characters without control characters",
        );
    }
    if let Some(email) = email {
        let ok = email.len() <= 254
            && email
                .split_once('@')
                .is_some_and(|(a, b)| !a.is_empty() && !b.is_empty())
            && !email.chars().any(|c| c.is_whitespace() || c.is_control());
        if !ok {
            e.push("email", "must be an e-mail address like ops@example.com");
        }
    }
}

/// Only a super admin may create, change or remove super admins.
fn may_manage(auth: &AuthContext, role: Role) -> ApiResult<()> {
    if role == Role::SuperAdmin && auth.role != Role::SuperAdmin {
        return Err(ApiError::forbidden(
            "only a super_admin can manage super_admin users",
        ));
    }
    Ok(())
}

fn with_etag(status: StatusCode, u: &UserRecord) -> Response {
    crate::extract::json_with_etag(status, u.version, UserView::from(u))
}

#[utoipa::path(get, path = "/api/v1/users", operation_id = "list_users", tag = "users", params(PageParams),
    responses((status = 200, description = "Users, by name", body = ListEnvelope<UserView>)))]
pub async fn list(
    State(state): State<AppState>,
    auth: AuthContext,
    Pagination(page): Pagination,
) -> ApiResult<Json<ListEnvelope<UserView>>> {
    auth.require(Role::Admin)?;
    let p = state.store.list_users(page).await?;
    Ok(Json(ListEnvelope::new(
        p.items.iter().map(UserView::from).collect(),
        p.total,
        page,
    )))
}

#[utoipa::path(post, path = "/api/v1/users", operation_id = "create_user", tag = "users", request_body = CreateUser,
    responses((status = 201, description = "Created", body = UserView)))]
pub async fn create(
    State(state): State<AppState>,
    auth: AuthContext,
    JsonBody(body): JsonBody<CreateUser>,
) -> ApiResult<Response> {
    auth.require(Role::Admin)?;
    may_manage(&auth, body.role)?;
    let mut e = ValidationError::new();
    let username = UserName::parse(&body.username)
        .map_err(|m| e.push("username", m))
        .ok();
    validate_password("password", &body.password, &mut e);
    let display_name = body.display_name.unwrap_or_default();
    validate_profile(&display_name, body.email.as_deref(), &mut e);
    if let Some(ids) = &body.allowed_node_ids {
        validate_node_ids("allowed_node_ids", ids, &mut e);
    }
    e.into_result()?;
    let Some(username) = username else {
        return Err(ApiError::bad_request("username", "invalid"));
    };
    let now = now_ms();
    let user = UserRecord {
        id: uuid::Uuid::new_v4().to_string(),
        username: username.into_string(),
        display_name,
        email: body.email,
        role: body.role,
        password_hash: hash_password_blocking(body.password).await?,
        allowed_node_ids: body.allowed_node_ids,
        disabled: false,
        version: 1,
        created_at: now,
        updated_at: now,
        last_login_at: None,
    };
    state.store.create_user(&auth.actor, &user).await?;
    Ok(with_etag(StatusCode::CREATED, &user))
}

async fn load(state: &AppState, id: &str) -> ApiResult<UserRecord> {
    state
        .store
        .get_user(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("user {id}")))
}

#[utoipa::path(get, path = "/api/v1/users/{id}", operation_id = "get_user", tag = "users", params(("id" = String, Path, description = "User id")),
    responses((status = 200, description = "The user", body = UserView)))]
pub async fn get(
    State(state): State<AppState>,
    auth: AuthContext,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    auth.require(Role::Admin)?;
    Ok(with_etag(StatusCode::OK, &load(&state, &id).await?))
}

#[utoipa::path(put, path = "/api/v1/users/{id}", operation_id = "update_user", tag = "users", params(("id" = String, Path, description = "User id")),
    request_body = UpdateUser,
    responses((status = 200, description = "Updated", body = UserView)))]
pub async fn update(
    State(state): State<AppState>,
    auth: AuthContext,
    Path(id): Path<String>,
    IfMatch(expected): IfMatch,
    JsonBody(body): JsonBody<UpdateUser>,
) -> ApiResult<Response> {
    auth.require(Role::Admin)?;
    let mut user = load(&state, &id).await?;
    may_manage(&auth, user.role)?;
    if let Some(role) = body.role {
        may_manage(&auth, role)?;
    }
    let mut e = ValidationError::new();
    if let Some(name) = &body.username {
        match UserName::parse(name) {
            Ok(n) => user.username = n.into_string(),
            Err(m) => e.push("username", m),
        }
    }
    if let Some(p) = &body.password {
        validate_password("password", p, &mut e);
    }
    if let Some(d) = body.display_name {
        user.display_name = d;
    }
    if let Some(email) = body.email {
        user.email = email;
    }
    if let Some(ids) = body.allowed_node_ids {
        if let Some(ids) = &ids {
            validate_node_ids("allowed_node_ids", ids, &mut e);
        }
        user.allowed_node_ids = ids;
    }
    validate_profile(&user.display_name, user.email.as_deref(), &mut e);
    e.into_result()?;
    if let Some(role) = body.role {
        user.role = role;
    }
    if let Some(d) = body.disabled {
        user.disabled = d;
    }
    if let Some(p) = body.password {
        user.password_hash = hash_password_blocking(p).await?;
    }
    let updated = state
        .store
        .update_user(&auth.actor, &user, expected)
        .await?;
    Ok(with_etag(StatusCode::OK, &updated))
}

#[utoipa::path(delete, path = "/api/v1/users/{id}", operation_id = "delete_user", tag = "users", params(("id" = String, Path, description = "User id")),
    responses((status = 204, description = "Deleted, with the user's sessions and API keys")))]
pub async fn delete(
    State(state): State<AppState>,
    auth: AuthContext,
    Path(id): Path<String>,
    IfMatch(expected): IfMatch,
) -> ApiResult<StatusCode> {
    auth.require(Role::Admin)?;
    let user = load(&state, &id).await?;
    may_manage(&auth, user.role)?;
    state.store.delete_user(&auth.actor, &id, expected).await?;
    Ok(StatusCode::NO_CONTENT)
}
