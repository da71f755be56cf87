//! The node listener's certificate: what it is, and replacing it (PEM certificate
//! chain and private key, checked to belong together).

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use fleetgate_core::tls::CertificateInfo;
use fleetgate_core::user::Role;
use fleetgate_store::AuditEvent;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::rfc3339;
use crate::auth::AuthContext;
use crate::error::{ApiError, ApiResult};
use crate::extract::JsonBody;
use crate::nodes::tls::TlsSource;
use crate::AppState;

#[derive(Serialize, ToSchema)]
pub struct NodeTlsView {
    pub subject: String,
    pub issuer: String,
    pub sans: Vec<String>,
    pub not_before: String,
    pub not_after: String,
    pub fingerprint_sha256: String,
    pub self_signed: bool,
    /// `configured`, `generated` or `uploaded`.
    pub source: TlsSource,
}

fn view(info: CertificateInfo, source: TlsSource) -> NodeTlsView {
    NodeTlsView {
        subject: info.subject,
        issuer: info.issuer,
        sans: info.sans,
        not_before: rfc3339(info.not_before),
        not_after: rfc3339(info.not_after),
        fingerprint_sha256: info.fingerprint_sha256,
        self_signed: info.self_signed,
        source,
    }
}

fn node_tls(state: &AppState) -> ApiResult<std::sync::Arc<crate::nodes::tls::NodeTls>> {
    state.nodes.tls.get().cloned().ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "NODE_LISTENER_OFF",
            "the node listener is not running in this process",
        )
    })
}

#[utoipa::path(get, path = "/api/v1/settings/tls", operation_id = "get_node_tls", tag = "settings",
    responses((status = 200, description = "The certificate the node listener presents", body = NodeTlsView)))]
pub async fn get(
    State(state): State<AppState>,
    _auth: AuthContext,
) -> ApiResult<Json<NodeTlsView>> {
    let (info, source) = node_tls(&state)?.info();
    Ok(Json(view(info, source)))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsUpload {
    /// PEM certificate chain, leaf first.
    pub cert_pem: String,
    /// PEM private key of the leaf (PKCS#8, PKCS#1 or SEC1).
    pub key_pem: String,
}

#[utoipa::path(post, path = "/api/v1/settings/tls/upload", operation_id = "upload_node_tls", tag = "settings",
    request_body = TlsUpload,
    responses((status = 200, description = "Stored; new node connections get it at once", body = NodeTlsView)))]
pub async fn upload(
    State(state): State<AppState>,
    auth: AuthContext,
    JsonBody(body): JsonBody<TlsUpload>,
) -> ApiResult<Json<NodeTlsView>> {
    auth.require(Role::Admin)?;
    let tls = node_tls(&state)?;
    let (before, _) = tls.info();
    let info = tls
        .replace(&body.cert_pem, &body.key_pem)
        .map_err(|m| ApiError::bad_request("cert_pem", m))?;
    state
        .store
        .append_audit(
            &auth.actor,
            AuditEvent::new("settings.node_tls", "settings", Some("node_tls"))
                .before(serde_json::json!({"fingerprint_sha256": before.fingerprint_sha256}))
                .after(
                    serde_json::json!({"fingerprint_sha256": info.fingerprint_sha256,
                                          "subject": info.subject}),
                ),
        )
        .await?;
    Ok(Json(view(info, TlsSource::Uploaded)))
}
