//! TLS certificates for the gateway: uploaded as PEM or issued through ACME
//! (`POST /api/v1/certificates/request`, renewed by `…/renew` and in the
//! background, see [`crate::acme`]), the private key encrypted at rest and never
//! returned; listed with subject, SANs, issuer, validity, status (valid, expiring
//! within 30 days, expired), source, when renewal is due and the last renewal
//! error.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use fleetgate_core::time::{now_ms, rfc3339};
use fleetgate_core::tls::{inspect, status, CertificateInfo};
use fleetgate_core::user::Role;
use fleetgate_shared::tls::certified_key;
use fleetgate_store::{CertificateRecord, SOURCE_ACME};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::acme::{normalize_domains, AcmeError, IssueRequest, RenewOutcome};
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
    /// `upload` or `acme`.
    pub source: String,
    /// For ACME certificates: the names ordered and renewed.
    pub acme_domains: Vec<String>,
    /// For ACME certificates: from when the renewal task renews it (RFC 3339).
    pub renew_after: Option<String>,
    /// Why the last renewal failed (cleared by the next success); the
    /// certificate shown keeps serving meanwhile.
    pub renewal_error: Option<String>,
    pub renewal_error_at: Option<String>,
    pub version: i64,
    pub updated_at: String,
}

fn view(state: &AppState, rec: &CertificateRecord, info: &CertificateInfo) -> CertificateView {
    let now = now_ms();
    let acme = rec.source == SOURCE_ACME;
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
        source: rec.source.clone(),
        acme_domains: rec.acme_domains.clone(),
        renew_after: acme.then(|| rfc3339(state.acme.renew_after(info.not_after))),
        renewal_error: rec.renewal_error.clone(),
        renewal_error_at: rec.renewal_error_at.map(rfc3339),
        version: rec.version,
        updated_at: rfc3339(rec.updated_at),
    }
}

fn stored_view(state: &AppState, rec: &CertificateRecord) -> ApiResult<CertificateView> {
    let info = inspect(&rec.cert_pem)
        .map_err(|e| ApiError::internal("stored certificate does not parse", e))?;
    Ok(view(state, rec, &info))
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
    Ok(with_etag(status_code, view(state, &stored, &info)))
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
        .map(|r| stored_view(&state, r))
        .collect::<ApiResult<Vec<_>>>()?;
    Ok(Json(ListEnvelope::whole(items)))
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
    Ok(with_etag(StatusCode::OK, stored_view(&state, &rec)?))
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

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CertificateRequest {
    /// Names to order, each a fully qualified DNS name (no wildcards: HTTP-01).
    pub domains: Vec<String>,
    /// Contact of the ACME account (`acme.email` otherwise).
    #[serde(default)]
    pub email: Option<String>,
    /// The certificate's name; the first domain by default. An existing ACME
    /// certificate of that name is replaced; an uploaded one is not.
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RenewRequest {
    /// Renew this ACME certificate now, due or not; without it (`{}`), every due one.
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct RenewResult {
    /// One entry per certificate renewed or attempted.
    pub results: Vec<RenewOutcome>,
}

/// The API's answer to an ACME failure: 502 with the CA's problem.
pub fn acme_error(e: AcmeError) -> ApiError {
    match e {
        AcmeError::Failed { message, problem } => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "ACME_FAILED",
            format!("the ACME order failed: {message}"),
        )
        .with_details(serde_json::json!({ "problem": problem })),
        AcmeError::Store(e) => e.into(),
    }
}

/// Issues a certificate through ACME for `domains` (checked and normalized)
/// under `name`, replacing an ACME certificate of that name; returns the stored
/// record. Shared by the API and deployments.
pub async fn request_certificate(
    state: &AppState,
    actor: &fleetgate_store::Actor,
    name: String,
    domains: Vec<String>,
    email: Option<String>,
) -> ApiResult<CertificateRecord> {
    if !valid_name(&name) {
        return Err(ApiError::bad_request(
            "name",
            "must be 1 to 64 characters of letters, digits, _ - ., not starting with a dot",
        ));
    }
    if let Some(e) = &email {
        if e.len() > 254 || !e.contains('@') || e.contains(char::is_whitespace) {
            return Err(ApiError::bad_request("email", "is not an e-mail address"));
        }
    }
    let expected = match state.store.get_certificate(&name).await? {
        None => 0,
        Some(cur) if cur.source == SOURCE_ACME => cur.version,
        Some(_) => {
            return Err(ApiError::conflict(format!(
                "certificate {name:?} was uploaded; delete it or choose another name"
            )))
        }
    };
    state
        .acme
        .issue(
            state,
            actor,
            IssueRequest {
                name,
                domains,
                email,
                expected_version: Some(expected),
            },
        )
        .await
        .map_err(acme_error)
}

#[utoipa::path(post, path = "/api/v1/certificates/request", operation_id = "request_certificate", tag = "certificates",
    request_body = CertificateRequest,
    responses(
        (status = 201, description = "Issued through ACME and served for its names", body = CertificateView),
        (status = 400, description = "A domain is not a fully qualified DNS name"),
        (status = 502, description = "The CA refused or the order failed (`ACME_FAILED`, the CA's problem in details)")))]
pub async fn request(
    State(state): State<AppState>,
    auth: AuthContext,
    JsonBody(body): JsonBody<CertificateRequest>,
) -> ApiResult<Response> {
    auth.require(Role::Admin)?;
    let domains =
        normalize_domains(&body.domains).map_err(|m| ApiError::bad_request("domains", m))?;
    let name = match body.name {
        Some(n) => n,
        None => domains.first().cloned().unwrap_or_default(),
    };
    let stored = request_certificate(&state, &auth.actor, name, domains, body.email).await?;
    Ok(with_etag(
        StatusCode::CREATED,
        stored_view(&state, &stored)?,
    ))
}

#[utoipa::path(post, path = "/api/v1/certificates/renew", operation_id = "renew_certificates", tag = "certificates",
    request_body = RenewRequest,
    responses((status = 200, description = "What was renewed, and what failed (each failure also raises certificate.renewal_failed)", body = RenewResult)))]
pub async fn renew(
    State(state): State<AppState>,
    auth: AuthContext,
    JsonBody(body): JsonBody<RenewRequest>,
) -> ApiResult<Json<RenewResult>> {
    auth.require(Role::Admin)?;
    if let Some(name) = &body.name {
        let rec = state
            .store
            .get_certificate(name)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("certificate {name}")))?;
        if rec.source != SOURCE_ACME {
            return Err(ApiError::bad_request(
                "name",
                format!("certificate {name:?} was uploaded, not issued through ACME; replace it with PUT"),
            ));
        }
    }
    let results = state
        .acme
        .renew(&state, &auth.actor, body.name.as_deref())
        .await?;
    Ok(Json(RenewResult { results }))
}
