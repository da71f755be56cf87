//! TLS certificates for the gateway: uploaded as PEM, the private key encrypted
//! at rest and never returned; listed with subject, SANs, issuer, validity and
//! status (valid, expiring within 30 days, expired).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use fleetgate_core::time::{now_ms, rfc3339};
use fleetgate_core::tls::{inspect, status, CertificateInfo};
use fleetgate_core::user::Role;
use fleetgate_shared::tls::certified_key;
use fleetgate_store::CertificateRecord;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::AuthContext;
use crate::error::{ApiError, ApiResult};
use crate::extract::{IfMatch, JsonBody, ListEnvelope};
use crate::AppState;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CertificateUpload {
    /// 1–64 characters of `[A-Za-z0-9_.-]` (taken from the path on PUT).
    #[serde(default)]
    pub name: Option<String>,
    /// The certificate chain, leaf first, PEM.
    #[serde(alias = "certPem", alias = "certificate")]
    pub cert_pem: String,
    /// The private key, PEM (PKCS#8, PKCS#1 or SEC1). Stored encrypted, never returned.
    #[serde(alias = "keyPem", alias = "key")]
    pub key_pem: String,
}

#[derive(Serialize, ToSchema)]
pub struct CertificateView {
    pub name: String,
    pub subject: String,
    pub issuer: String,
    pub sans: Vec<String>,
    pub not_before: String,
    pub not_after: String,
    /// `valid`, `expiring` (30 days or less left) or `expired`.
    pub status: String,
    pub days_left: i64,
    pub fingerprint_sha256: String,
    pub self_signed: bool,
    pub chain_length: usize,
    pub version: i64,
    pub updated_at: String,
}

fn view(rec: &CertificateRecord, info: &CertificateInfo) -> CertificateView {
    let now = now_ms();
    CertificateView {
        name: rec.name.clone(),
        subject: info.subject.clone(),
        issuer: info.issuer.clone(),
        sans: info.sans.clone(),
        not_before: rfc3339(info.not_before),
        not_after: rfc3339(info.not_after),
        status: status(info.not_after, now).into(),
        days_left: (info.not_after - now).div_euclid(86_400_000),
        fingerprint_sha256: info.fingerprint_sha256.clone(),
        self_signed: info.self_signed,
        chain_length: info.chain_length,
        version: rec.version,
        updated_at: rfc3339(rec.updated_at),
    }
}

fn stored_view(rec: &CertificateRecord) -> ApiResult<CertificateView> {
    let info = inspect(&rec.cert_pem)
        .map_err(|e| ApiError::internal("stored certificate does not parse", e))?;
    Ok(view(rec, &info))
}

fn with_etag(status: StatusCode, v: CertificateView) -> Response {
    crate::extract::json_with_etag(status, v.version, &v)
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        && !s.starts_with('.')
}

async fn save(
    state: &AppState,
    auth: &AuthContext,
    name: String,
    body: CertificateUpload,
    expected: Option<i64>,
    status_code: StatusCode,
) -> ApiResult<Response> {
    if !valid_name(&name) {
        return Err(ApiError::bad_request(
            "name",
            "must be 1 to 64 characters of letters, digits, _ - ., not starting with a dot",
        ));
    }
    let info = inspect(&body.cert_pem).map_err(|m| ApiError::bad_request("cert_pem", m))?;
    certified_key(&body.cert_pem, &body.key_pem)
        .map_err(|m| ApiError::bad_request("key_pem", m))?;
    let rec = CertificateRecord {
        name,
        cert_pem: body.cert_pem,
        key_encrypted: state.secrets.seal(body.key_pem.as_bytes()),
        ..CertificateRecord::default()
    };
    let stored = state
        .store
        .put_certificate(&auth.actor, &rec, expected)
        .await?;
    state.publish_certificates().await?;
    state.refresh_data_plane();
    Ok(with_etag(status_code, view(&stored, &info)))
}

#[utoipa::path(get, path = "/api/v1/certificates", operation_id = "list_certificates", tag = "certificates",
    responses((status = 200, description = "Certificates, by name", body = ListEnvelope<CertificateView>)))]
pub async fn list(
    State(state): State<AppState>,
    _auth: AuthContext,
) -> ApiResult<Json<ListEnvelope<CertificateView>>> {
    let items = state
        .store
        .list_certificates()
        .await?
        .iter()
        .map(stored_view)
        .collect::<ApiResult<Vec<_>>>()?;
    let total = items.len() as i64;
    Ok(Json(ListEnvelope::new(
        items,
        total,
        fleetgate_store::PageRequest {
            limit: total.max(1),
            offset: 0,
        },
    )))
}

#[utoipa::path(post, path = "/api/v1/certificates", operation_id = "create_certificate", tag = "certificates", request_body = CertificateUpload,
    responses((status = 201, description = "Stored; the gateway serves it for its SANs", body = CertificateView)))]
pub async fn create(
    State(state): State<AppState>,
    auth: AuthContext,
    JsonBody(body): JsonBody<CertificateUpload>,
) -> ApiResult<Response> {
    auth.require(Role::Admin)?;
    let name = body
        .name
        .clone()
        .ok_or_else(|| ApiError::bad_request("name", "is required"))?;
    if !valid_name(&name) {
        return Err(ApiError::bad_request(
            "name",
            "must be 1 to 64 characters of letters, digits, _ - ., not starting with a dot",
        ));
    }
    if state.store.get_certificate(&name).await?.is_some() {
        return Err(ApiError::conflict(format!(
            "certificate {name:?} already exists; PUT replaces it"
        )));
    }
    save(&state, &auth, name, body, Some(0), StatusCode::CREATED).await
}

#[utoipa::path(get, path = "/api/v1/certificates/{name}", operation_id = "get_certificate", tag = "certificates", params(("name" = String, Path, description = "Certificate name")),
    responses((status = 200, description = "The certificate (never its key)", body = CertificateView)))]
pub async fn get(
    State(state): State<AppState>,
    _auth: AuthContext,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    let rec = state
        .store
        .get_certificate(&name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("certificate {name}")))?;
    Ok(with_etag(StatusCode::OK, stored_view(&rec)?))
}

#[utoipa::path(put, path = "/api/v1/certificates/{name}", operation_id = "replace_certificate", tag = "certificates", params(("name" = String, Path, description = "Certificate name")),
    request_body = CertificateUpload,
    responses((status = 200, description = "Replaced (e.g. renewed)", body = CertificateView)))]
pub async fn replace(
    State(state): State<AppState>,
    auth: AuthContext,
    Path(name): Path<String>,
    IfMatch(expected): IfMatch,
    JsonBody(body): JsonBody<CertificateUpload>,
) -> ApiResult<Response> {
    auth.require(Role::Admin)?;
    if body.name.as_ref().is_some_and(|n| *n != name) {
        return Err(ApiError::bad_request(
            "name",
            "does not match the name in the path",
        ));
    }
    let current = state
        .store
        .get_certificate(&name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("certificate {name}")))?;
    save(
        &state,
        &auth,
        name,
        body,
        Some(expected.unwrap_or(current.version)),
        StatusCode::OK,
    )
    .await
}

#[utoipa::path(delete, path = "/api/v1/certificates/{name}", operation_id = "delete_certificate", tag = "certificates", params(("name" = String, Path, description = "Certificate name")),
    responses((status = 204, description = "Deleted; the gateway stops serving it")))]
pub async fn delete(
    State(state): State<AppState>,
    auth: AuthContext,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    auth.require(Role::Admin)?;
    state.store.delete_certificate(&auth.actor, &name).await?;
    state.publish_certificates().await?;
    state.refresh_data_plane();
    Ok(StatusCode::NO_CONTENT)
}
