//! Consistent backups of the whole store, written under `<data_dir>/backups`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use fleetgate_core::time::{now_ms, rfc3339};
use fleetgate_core::user::Role;
use fleetgate_store::{AuditEvent, Backend};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::AuthContext;
use crate::error::{ApiError, ApiResult};
use crate::extract::{ListEnvelope, OptionalJson};
use crate::AppState;

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct BackupRequest {
    /// 1 to 64 characters of `[A-Za-z0-9_.-]`, not starting with a dot and
    /// without `..`; defaults to `fleetgate-<UTC time>`.
    #[serde(default)]
    #[schema(pattern = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$")]
    pub name: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct BackupView {
    pub name: String,
    /// The file under the data directory's `backups/` folder.
    pub file: String,
    pub size_bytes: u64,
    pub created_at: String,
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        && !name.contains("..")
}

fn extension(backend: Backend) -> &'static str {
    match backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "json",
    }
}

#[utoipa::path(post, path = "/api/v1/settings/backup", operation_id = "create_backup", tag = "settings", request_body(content = BackupRequest, description = "Optional; an empty body picks a name"),
    responses((status = 201, description = "The backup was written", body = BackupView)))]
pub async fn create(
    State(state): State<AppState>,
    auth: AuthContext,
    OptionalJson(body): OptionalJson<BackupRequest>,
) -> ApiResult<(StatusCode, Json<BackupView>)> {
    auth.require(Role::Admin)?;
    let body = body.unwrap_or_default();
    let name =
        match body.name {
            Some(n) if valid_name(&n) => n,
            Some(_) => return Err(ApiError::bad_request(
                "name",
                "must be 1 to 64 characters of letters, digits, _ - and ., not starting with a dot",
            )),
            None => format!("fleetgate-{}", chrono_name(now_ms())),
        };
    let file = format!("{name}.{}", extension(state.store.backend()));
    let dir = state.options.data_dir.join("backups");
    let path = dir.join(&file);
    state.store.backup(&path).await?;
    let size_bytes = tokio::fs::metadata(&path)
        .await
        .map(|m| m.len())
        .unwrap_or(0);
    state
        .store
        .append_audit(
            &auth.actor,
            AuditEvent::new("backup.create", "backup", Some(&name))
                .after(serde_json::json!({ "file": file, "size_bytes": size_bytes })),
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(BackupView {
            name,
            file,
            size_bytes,
            created_at: rfc3339(now_ms()),
        }),
    ))
}

fn chrono_name(ms: i64) -> String {
    // 2026-11-24T12:00:00.000Z -> 20261124T120000Z
    rfc3339(ms)
        .chars()
        .filter(|c| c.is_ascii_digit() || *c == 'T')
        .take(15)
        .collect::<String>()
        + "Z"
}

#[utoipa::path(get, path = "/api/v1/settings/backups", operation_id = "list_backups", tag = "settings",
    responses((status = 200, description = "Backups on this host, newest first", body = ListEnvelope<BackupView>)))]
pub async fn list(
    State(state): State<AppState>,
    auth: AuthContext,
) -> ApiResult<Json<ListEnvelope<BackupView>>> {
    auth.require(Role::Admin)?;
    let dir = state.options.data_dir.join("backups");
    let mut items = Vec::new();
    if let Ok(mut rd) = tokio::fs::read_dir(&dir).await {
        while let Ok(Some(entry)) = rd.next_entry().await {
            let file = entry.file_name().to_string_lossy().into_owned();
            let Some((name, ext)) = file.rsplit_once('.') else {
                continue;
            };
            if !matches!(ext, "sqlite" | "json") {
                continue;
            }
            let Ok(meta) = entry.metadata().await else {
                continue;
            };
            let modified = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0);
            items.push((
                modified,
                BackupView {
                    name: name.to_string(),
                    file: file.clone(),
                    size_bytes: meta.len(),
                    created_at: rfc3339(modified),
                },
            ));
        }
    }
    items.sort_by_key(|item| std::cmp::Reverse(item.0));
    let items: Vec<_> = items.into_iter().map(|(_, v)| v).collect();
    Ok(Json(ListEnvelope::whole(items)))
}

#[utoipa::path(get, path = "/api/v1/settings/backups/{name}", operation_id = "download_backup", tag = "settings",
    params(("name" = String, Path, description = "Backup name, as listed")),
    responses(
        (status = 200, description = "The backup file, as an attachment", content_type = "application/octet-stream"),
        (status = 404, description = "No backup of that name", body = crate::error::ErrorBody)))]
pub async fn download(
    State(state): State<AppState>,
    auth: AuthContext,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> ApiResult<axum::response::Response> {
    use axum::http::header;
    use futures::StreamExt;
    use tokio::io::AsyncReadExt;

    auth.require(Role::Admin)?;
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            format!("no backup named {name:?}"),
        )
    };
    if !valid_name(&name) {
        return Err(not_found());
    }
    let dir = state.options.data_dir.join("backups");
    let mut found = None;
    for ext in ["sqlite", "json"] {
        let file = format!("{name}.{ext}");
        if let Ok(f) = tokio::fs::File::open(dir.join(&file)).await {
            let len = f.metadata().await.map(|m| m.len()).unwrap_or(0);
            found = Some((file, f, len));
            break;
        }
    }
    let (file, f, len) = found.ok_or_else(not_found)?;
    // A backup holds password hashes and sealed secrets: who took one away is
    // worth a line in the audit log.
    state
        .store
        .append_audit(
            &auth.actor,
            AuditEvent::new("backup.download", "backup", Some(&name))
                .after(serde_json::json!({ "file": file, "size_bytes": len })),
        )
        .await?;
    let chunks = futures::stream::unfold(Some(f), |f| async move {
        let mut f = f?;
        let mut buf = vec![0u8; 64 * 1024];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(bytes::Bytes::from(buf)), Some(f)))
            }
            Err(e) => Some((Err(e), None)),
        }
    })
    .boxed();
    axum::response::Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, len)
        .header(
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{file}\""),
        )
        .header(header::CACHE_CONTROL, "no-store")
        .body(axum::body::Body::from_stream(chunks))
        .map_err(|e| ApiError::internal("backup download", e))
}
