//! Runtime settings: typed, validated, versioned with an ETag, part of every revision.

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use fleetgate_core::config::{SETTINGS_KIND, SETTINGS_NAME};
use fleetgate_core::user::Role;
use fleetgate_core::Settings;

use crate::auth::AuthContext;
use crate::error::{ApiError, ApiResult};
use crate::extract::{etag, IfMatch, JsonBody};
use crate::AppState;

fn respond(settings: &Settings, version: i64) -> Response {
    let mut resp = Json(settings).into_response();
    if let Ok(v) = HeaderValue::from_str(&etag(version)) {
        resp.headers_mut().insert(header::ETAG, v);
    }
    resp
}

#[utoipa::path(get, path = "/api/v1/settings", operation_id = "get_settings", tag = "settings",
    responses((status = 200, description = "The settings in force; ETag carries their version", body = Settings)))]
pub async fn get(State(state): State<AppState>, _auth: AuthContext) -> ApiResult<Response> {
    let (settings, version) = match state
        .store
        .get_resource(SETTINGS_KIND, SETTINGS_NAME)
        .await?
    {
        Some(r) => (
            serde_json::from_value::<Settings>(r.body)
                .map_err(|e| ApiError::internal("stored settings do not parse", e))?,
            r.version,
        ),
        None => (Settings::default(), 0),
    };
    Ok(respond(&settings, version))
}

#[utoipa::path(put, path = "/api/v1/settings", operation_id = "put_settings", tag = "settings", request_body = Settings,
    responses((status = 200, description = "Saved as a new revision", body = Settings)))]
pub async fn put(
    State(state): State<AppState>,
    auth: AuthContext,
    IfMatch(expected): IfMatch,
    JsonBody(settings): JsonBody<Settings>,
) -> ApiResult<Response> {
    auth.require(Role::Admin)?;
    settings.validate()?;
    let body = serde_json::to_value(&settings)
        .map_err(|e| ApiError::internal("settings serialization", e))?;
    let edit = fleetgate_store::ConfigEdit::Put {
        kind: SETTINGS_KIND,
        name: SETTINGS_NAME,
        body: &body,
        expected_version: expected,
    };
    let committed = state
        .change_config(&auth.actor, edit, "update settings", None)
        .await?;
    let version = committed.record.map_or(0, |r| r.version);
    Ok(respond(&settings, version))
}
