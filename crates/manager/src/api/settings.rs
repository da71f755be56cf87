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

/// The log filter in force in this process.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct LoggingView {
    /// Comma-separated directives: a level (`info`) or `module=level`.
    pub level: String,
    /// `pretty` or `json` (set at start by `log.format`).
    pub format: String,
    /// What a change applies to.
    pub scope: &'static str,
}

#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoggingInput {
    /// Comma-separated directives, each a level (`off`, `error`, `warn`,
    /// `info`, `debug`, `trace`) or `module::path=level`.
    #[schema(example = "info,fleetgate_proxy=debug")]
    pub level: String,
}

const LOGGING_SCOPE: &str = "this process, until it restarts (then log.level applies)";

fn logging_view() -> ApiResult<LoggingView> {
    let (level, format) = crate::logging::current().ok_or_else(|| {
        ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "LOGGING_NOT_CHANGEABLE",
            "this process's logging was not set up to be changed while it runs",
        )
    })?;
    Ok(LoggingView {
        level,
        format,
        scope: LOGGING_SCOPE,
    })
}

#[utoipa::path(get, path = "/api/v1/settings/logging", operation_id = "get_logging", tag = "settings",
    responses(
        (status = 200, description = "The log filter in force in this process", body = LoggingView),
        (status = 503, description = "This process's logging cannot be changed", body = crate::error::ErrorBody),
    ))]
pub async fn get_logging(_auth: AuthContext) -> ApiResult<Json<LoggingView>> {
    Ok(Json(logging_view()?))
}

#[utoipa::path(put, path = "/api/v1/settings/logging", operation_id = "put_logging", tag = "settings", request_body = LoggingInput,
    responses(
        (status = 200, description = "The new filter is in force in this process (audited `settings.logging.update`)", body = LoggingView),
        (status = 400, description = "The filter is not valid", body = crate::error::ErrorBody),
        (status = 503, description = "This process's logging cannot be changed", body = crate::error::ErrorBody),
    ))]
pub async fn put_logging(
    State(state): State<AppState>,
    auth: AuthContext,
    JsonBody(input): JsonBody<LoggingInput>,
) -> ApiResult<Json<LoggingView>> {
    auth.require(Role::Admin)?;
    let (before, after) = crate::logging::set(&input.level).map_err(|e| match e {
        crate::logging::SetError::Invalid(m) => ApiError::bad_request("level", m),
        crate::logging::SetError::NotInstalled => logging_view()
            .err()
            .unwrap_or_else(|| ApiError::bad_request("level", "not changeable")),
    })?;
    tracing::info!(before = %before, after = %after, by = %auth.actor.name, "log filter changed");
    state
        .store
        .append_audit(
            &auth.actor,
            fleetgate_store::AuditEvent::new(
                "settings.logging.update",
                "settings",
                Some("logging"),
            )
            .before(serde_json::json!({ "level": before }))
            .after(serde_json::json!({ "level": after })),
        )
        .await?;
    Ok(Json(logging_view()?))
}
