//! Webhooks: CRUD, a test delivery, the delivery log with every attempt, and
//! redelivery. Secrets and header values are stored encrypted and never returned.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use fleetgate_core::time::now_ms;
use fleetgate_core::user::Role;
use fleetgate_store::{AttemptOutcome, DeliveryRecord, WebhookRecord};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::rfc3339;
use crate::auth::{random_token, AuthContext};
use crate::error::{ApiError, ApiResult};
use crate::extract::{IfMatch, JsonBody, ListEnvelope, Pagination};
use crate::webhooks::{check_destination, send};
use crate::AppState;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookInput {
    /// Where deliveries are POSTed (http:// or https://).
    pub url: String,
    /// Event type patterns: `*`, `circuit_breaker.*` or an exact type (default `["*"]`).
    #[serde(default)]
    pub events: Option<Vec<String>>,
    /// Signing secret (8 to 256 characters); generated and shown once when absent on
    /// create, kept when absent on update.
    #[serde(default)]
    pub secret: Option<String>,
    #[serde(default)]
    pub enabled: Option<bool>,
    /// Extra request headers; values are stored encrypted.
    #[serde(default)]
    pub headers: Option<BTreeMap<String, String>>,
}

#[derive(Serialize, ToSchema)]
pub struct WebhookView {
    pub id: String,
    pub url: String,
    pub events: Vec<String>,
    pub enabled: bool,
    /// Header names (values are never shown).
    pub headers: Vec<String>,
    pub consecutive_failures: i64,
    pub disabled_reason: Option<String>,
    pub version: i64,
    pub created_at: String,
    pub updated_at: String,
    /// The signing secret: only in the response that generated it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

fn view(w: &WebhookRecord, secret: Option<String>) -> WebhookView {
    WebhookView {
        id: w.id.clone(),
        url: w.url.clone(),
        events: w.events.clone(),
        enabled: w.enabled,
        headers: w.headers.iter().map(|(k, _)| k.clone()).collect(),
        consecutive_failures: w.consecutive_failures,
        disabled_reason: w.disabled_reason.clone(),
        version: w.version,
        created_at: rfc3339(w.created_at),
        updated_at: rfc3339(w.updated_at),
        secret,
    }
}

fn with_etag(status: StatusCode, v: WebhookView) -> Response {
    crate::extract::json_with_etag(status, v.version, &v)
}

const RESERVED_HEADERS: [&str; 7] = [
    "content-type",
    "content-length",
    "host",
    "transfer-encoding",
    "connection",
    "x-webhook-signature",
    "x-webhook-delivery",
];

/// Validates the input into (url, events, sealed headers).
async fn checked(
    state: &AppState,
    body: &WebhookInput,
) -> ApiResult<(String, Vec<String>, Vec<(String, String)>)> {
    let url = body.url.trim().to_string();
    if url.len() > 2048 {
        return Err(ApiError::bad_request(
            "url",
            "must be at most 2048 characters",
        ));
    }
    let allow = state.settings().webhooks.allow_private_targets;
    check_destination(&url, allow)
        .await
        .map_err(|m| ApiError::bad_request("url", m))?;
    let events = body.events.clone().unwrap_or_else(|| vec!["*".into()]);
    if events.is_empty() || events.len() > 50 {
        return Err(ApiError::bad_request(
            "events",
            "must hold 1 to 50 patterns",
        ));
    }
    for (i, p) in events.iter().enumerate() {
        let ok = !p.is_empty()
            && p.len() <= 100
            && p.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'*')
            })
            && (p == "*" || !p.contains('*') || (p.ends_with(".*") && p.matches('*').count() == 1));
        if !ok {
            return Err(ApiError::bad_request(
                &format!("events[{i}]"),
                "must be *, an event type such as health.target_down, or a prefix such as circuit_breaker.*",
            ));
        }
    }
    let mut headers = Vec::new();
    for (k, v) in body.headers.clone().unwrap_or_default() {
        let name = k.to_ascii_lowercase();
        if http::HeaderName::from_bytes(name.as_bytes()).is_err()
            || RESERVED_HEADERS.contains(&name.as_str())
            || name.starts_with("x-webhook-")
        {
            return Err(ApiError::bad_request(
                &format!("headers.{k}"),
                "is not a header name a webhook may set",
            ));
        }
        if HeaderValue::from_str(&v).is_err() || v.len() > 4096 {
            return Err(ApiError::bad_request(
                &format!("headers.{k}"),
                "is not a valid header value",
            ));
        }
        headers.push((name, state.secrets.seal(v.as_bytes())));
    }
    if headers.len() > 20 {
        return Err(ApiError::bad_request("headers", "at most 20 headers"));
    }
    Ok((url, events, headers))
}

fn check_secret(s: &str) -> ApiResult<()> {
    if !(8..=256).contains(&s.len()) {
        return Err(ApiError::bad_request(
            "secret",
            "must be 8 to 256 characters",
        ));
    }
    Ok(())
}

#[utoipa::path(get, path = "/api/v1/webhooks", operation_id = "list_webhooks", tag = "webhooks",
    responses((status = 200, description = "Webhooks (secrets and header values never shown)", body = ListEnvelope<WebhookView>)))]
pub async fn list(
    State(state): State<AppState>,
    _auth: AuthContext,
) -> ApiResult<Json<ListEnvelope<WebhookView>>> {
    let items: Vec<WebhookView> = state
        .store
        .list_webhooks()
        .await?
        .iter()
        .map(|w| view(w, None))
        .collect();
    Ok(Json(ListEnvelope::whole(items)))
}

#[utoipa::path(post, path = "/api/v1/webhooks", operation_id = "create_webhook", tag = "webhooks", request_body = WebhookInput,
    responses((status = 201, description = "Created; a generated secret is shown this once", body = WebhookView)))]
pub async fn create(
    State(state): State<AppState>,
    auth: AuthContext,
    JsonBody(body): JsonBody<WebhookInput>,
) -> ApiResult<Response> {
    auth.require(Role::Admin)?;
    let (url, events, headers) = checked(&state, &body).await?;
    let (secret, shown) = match &body.secret {
        Some(s) => {
            check_secret(s)?;
            (s.clone(), None)
        }
        None => {
            let s = format!("whsec_{}", random_token(24));
            (s.clone(), Some(s))
        }
    };
    let now = now_ms();
    let w = WebhookRecord {
        id: uuid::Uuid::new_v4().to_string(),
        url,
        events,
        secret_encrypted: state.secrets.seal(secret.as_bytes()),
        headers,
        enabled: body.enabled.unwrap_or(true),
        consecutive_failures: 0,
        disabled_reason: None,
        version: 1,
        created_at: now,
        updated_at: now,
    };
    state.store.create_webhook(&auth.actor, &w).await?;
    Ok(with_etag(StatusCode::CREATED, view(&w, shown)))
}

async fn hook(state: &AppState, id: &str) -> ApiResult<WebhookRecord> {
    state
        .store
        .get_webhook(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("webhook {id}")))
}

#[utoipa::path(get, path = "/api/v1/webhooks/{id}", operation_id = "get_webhook", tag = "webhooks",
    params(("id" = String, Path, description = "Webhook id")),
    responses((status = 200, description = "The webhook", body = WebhookView)))]
pub async fn get(
    State(state): State<AppState>,
    _auth: AuthContext,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let w = hook(&state, &id).await?;
    Ok(with_etag(StatusCode::OK, view(&w, None)))
}

#[utoipa::path(put, path = "/api/v1/webhooks/{id}", operation_id = "update_webhook", tag = "webhooks",
    params(("id" = String, Path, description = "Webhook id")), request_body = WebhookInput,
    responses((status = 200, description = "Updated; enabling a disabled webhook clears its failure streak", body = WebhookView)))]
pub async fn update(
    State(state): State<AppState>,
    auth: AuthContext,
    Path(id): Path<String>,
    IfMatch(expected): IfMatch,
    JsonBody(body): JsonBody<WebhookInput>,
) -> ApiResult<Response> {
    auth.require(Role::Admin)?;
    let mut w = hook(&state, &id).await?;
    let (url, events, headers) = checked(&state, &body).await?;
    if let Some(s) = &body.secret {
        check_secret(s)?;
        w.secret_encrypted = state.secrets.seal(s.as_bytes());
    }
    w.url = url;
    w.events = events;
    if body.headers.is_some() {
        w.headers = headers;
    }
    if let Some(e) = body.enabled {
        w.enabled = e;
    }
    w.updated_at = now_ms();
    let w = state
        .store
        .update_webhook(&auth.actor, &w, expected)
        .await?;
    Ok(with_etag(StatusCode::OK, view(&w, None)))
}

#[utoipa::path(delete, path = "/api/v1/webhooks/{id}", operation_id = "delete_webhook", tag = "webhooks",
    params(("id" = String, Path, description = "Webhook id")),
    responses((status = 204, description = "Deleted with its deliveries")))]
pub async fn delete(
    State(state): State<AppState>,
    auth: AuthContext,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    auth.require(Role::Admin)?;
    state.store.delete_webhook(&auth.actor, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize, ToSchema)]
pub struct AttemptView {
    pub attempt: i64,
    pub at: String,
    pub status_code: Option<i64>,
    pub latency_ms: i64,
    pub error: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct DeliveryView {
    pub id: String,
    pub event_id: Option<i64>,
    #[serde(rename = "type")]
    pub event_type: String,
    /// `pending`, `success` or `failed`.
    pub status: String,
    pub attempts: i64,
    /// When the next attempt is due (pending deliveries).
    pub next_attempt_at: Option<String>,
    pub last_status_code: Option<i64>,
    pub last_error: Option<String>,
    pub last_latency_ms: Option<i64>,
    pub created_at: String,
    pub attempt_log: Vec<AttemptView>,
}

async fn delivery_view(state: &AppState, d: &DeliveryRecord) -> ApiResult<DeliveryView> {
    let log = state.store.list_attempts(&d.id).await?;
    Ok(DeliveryView {
        id: d.id.clone(),
        event_id: d.event_id,
        event_type: d.event_type.clone(),
        status: d.status.clone(),
        attempts: d.attempts,
        next_attempt_at: (d.status == "pending").then(|| rfc3339(d.next_attempt_at)),
        last_status_code: d.last_status_code,
        last_error: d.last_error.clone(),
        last_latency_ms: d.last_latency_ms,
        created_at: rfc3339(d.created_at),
        attempt_log: log
            .iter()
            .map(|a| AttemptView {
                attempt: a.attempt,
                at: rfc3339(a.at),
                status_code: a.status_code,
                latency_ms: a.latency_ms,
                error: a.error.clone(),
            })
            .collect(),
    })
}

#[utoipa::path(get, path = "/api/v1/webhooks/{id}/deliveries", operation_id = "list_webhook_deliveries", tag = "webhooks",
    params(("id" = String, Path, description = "Webhook id"), crate::extract::PageParams),
    responses((status = 200, description = "Deliveries, newest first, each with its attempts", body = ListEnvelope<DeliveryView>)))]
pub async fn deliveries(
    State(state): State<AppState>,
    _auth: AuthContext,
    Path(id): Path<String>,
    Pagination(page): Pagination,
) -> ApiResult<Json<ListEnvelope<DeliveryView>>> {
    hook(&state, &id).await?;
    let p = state.store.list_deliveries(&id, page).await?;
    let mut items = Vec::with_capacity(p.items.len());
    for d in &p.items {
        items.push(delivery_view(&state, d).await?);
    }
    Ok(Json(ListEnvelope::new(items, p.total, page)))
}

#[utoipa::path(post, path = "/api/v1/webhooks/{id}/deliveries/{delivery}/redeliver", operation_id = "redeliver_webhook_delivery", tag = "webhooks",
    params(("id" = String, Path, description = "Webhook id"), ("delivery" = String, Path, description = "Delivery id")),
    responses((status = 202, description = "Queued again for now", body = DeliveryView)))]
pub async fn redeliver(
    State(state): State<AppState>,
    auth: AuthContext,
    Path((id, delivery)): Path<(String, String)>,
) -> ApiResult<Response> {
    auth.require(Role::Operator)?;
    let d = state
        .store
        .get_delivery(&delivery)
        .await?
        .filter(|d| d.webhook_id == id)
        .ok_or_else(|| ApiError::not_found(format!("delivery {delivery} of webhook {id}")))?;
    let d = state
        .store
        .requeue_delivery(&auth.actor, &d.id, now_ms())
        .await?;
    state.webhooks_wake.notify_one();
    Ok((StatusCode::ACCEPTED, Json(delivery_view(&state, &d).await?)).into_response())
}

#[utoipa::path(post, path = "/api/v1/webhooks/{id}/test", operation_id = "test_webhook", tag = "webhooks",
    params(("id" = String, Path, description = "Webhook id")),
    responses((status = 200, description = "A `webhook.test` delivery sent now, once; its outcome (also in the delivery log)", body = DeliveryView)))]
pub async fn test(
    State(state): State<AppState>,
    auth: AuthContext,
    Path(id): Path<String>,
) -> ApiResult<Json<DeliveryView>> {
    auth.require(Role::Operator)?;
    let w = hook(&state, &id).await?;
    let now = now_ms();
    let delivery_id = uuid::Uuid::new_v4().to_string();
    let body = serde_json::json!({
        "id": null,
        "type": "webhook.test",
        "created_at": rfc3339(now),
        "data": {"message": "a test delivery from Fleetgate", "webhook_id": w.id, "requested_by": auth.actor.name},
    })
    .to_string();
    let d = DeliveryRecord {
        id: delivery_id.clone(),
        webhook_id: w.id.clone(),
        event_id: None,
        event_type: "webhook.test".into(),
        payload: body.clone(),
        status: "failed".into(),
        attempts: 0,
        next_attempt_at: now,
        last_status_code: None,
        last_error: None,
        last_latency_ms: None,
        created_at: now,
        updated_at: now,
    };
    state
        .store
        .enqueue_deliveries(std::slice::from_ref(&d))
        .await?;
    let sent = send(&state, &w, &delivery_id, "webhook.test", &body).await;
    let outcome = AttemptOutcome {
        at: now_ms(),
        status_code: sent.status_code,
        latency_ms: sent.latency_ms,
        error: sent.error.clone(),
        success: sent.success(),
        retry_at: None,
    };
    state.store.record_attempt(&delivery_id, &outcome).await?;
    state
        .store
        .append_audit(
            &auth.actor,
            fleetgate_store::AuditEvent::new("webhook.test", "webhook", Some(&w.id)),
        )
        .await?;
    let d = state
        .store
        .get_delivery(&delivery_id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("delivery {delivery_id}")))?;
    Ok(Json(delivery_view(&state, &d).await?))
}
