//! Webhooks and their delivery queue. Deliveries survive restarts (they are rows) and
//! are claimed before each attempt, so several managers on one database attempt each
//! delivery once at a time: on PostgreSQL with `FOR UPDATE SKIP LOCKED`, on SQLite by
//! its single writer.

use async_trait::async_trait;
use serde_json::{json, Value};
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::sql::{check_version, insert_audit, Backend, SqlStore};
use crate::{Actor, AuditEvent, Page, PageRequest, Result, StoreError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookRecord {
    pub id: String,
    pub url: String,
    /// Event type patterns: `*`, `circuit_breaker.*` or an exact type.
    pub events: Vec<String>,
    /// The signing secret, encrypted by the caller.
    pub secret_encrypted: String,
    pub headers: Vec<(String, String)>,
    pub enabled: bool,
    pub consecutive_failures: i64,
    pub disabled_reason: Option<String>,
    pub version: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

impl WebhookRecord {
    fn audit_view(&self) -> Value {
        json!({"id": self.id, "url": self.url, "events": self.events, "enabled": self.enabled,
               "headers": self.headers.iter().map(|(k, _)| k).collect::<Vec<_>>()})
    }
}

/// One event queued for one webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryRecord {
    pub id: String,
    pub webhook_id: String,
    pub event_id: Option<i64>,
    pub event_type: String,
    /// The exact body that is signed and sent.
    pub payload: String,
    /// `pending`, `success` or `failed`.
    pub status: String,
    pub attempts: i64,
    pub next_attempt_at: i64,
    pub last_status_code: Option<i64>,
    pub last_error: Option<String>,
    pub last_latency_ms: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// One attempt of a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRecord {
    pub attempt: i64,
    pub at: i64,
    pub status_code: Option<i64>,
    pub latency_ms: i64,
    pub error: Option<String>,
}

/// The outcome of one attempt, as the delivery worker reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptOutcome {
    pub at: i64,
    pub status_code: Option<i64>,
    pub latency_ms: i64,
    pub error: Option<String>,
    pub success: bool,
    /// When to try again; `None` gives up (the delivery is failed).
    pub retry_at: Option<i64>,
}

#[async_trait]
pub trait WebhookStore: Send + Sync {
    async fn create_webhook(&self, actor: &Actor, w: &WebhookRecord) -> Result<()>;
    async fn get_webhook(&self, id: &str) -> Result<Option<WebhookRecord>>;
    async fn list_webhooks(&self) -> Result<Vec<WebhookRecord>>;
    async fn update_webhook(
        &self,
        actor: &Actor,
        w: &WebhookRecord,
        expected_version: Option<i64>,
    ) -> Result<WebhookRecord>;
    async fn delete_webhook(&self, actor: &Actor, id: &str) -> Result<()>;
    async fn enqueue_deliveries(&self, deliveries: &[DeliveryRecord]) -> Result<()>;
    /// Claims up to `limit` due pending deliveries for `lease_ms`.
    async fn claim_deliveries(
        &self,
        now: i64,
        lease_ms: i64,
        limit: i64,
    ) -> Result<Vec<DeliveryRecord>>;
    /// Records an attempt, updates the delivery and the webhook's failure streak;
    /// returns the webhook's consecutive failures after it.
    async fn record_attempt(&self, delivery_id: &str, outcome: &AttemptOutcome) -> Result<i64>;
    /// Disables a webhook (after repeated failures).
    async fn disable_webhook(&self, id: &str, reason: &str) -> Result<()>;
    async fn list_deliveries(
        &self,
        webhook_id: &str,
        page: PageRequest,
    ) -> Result<Page<DeliveryRecord>>;
    async fn get_delivery(&self, id: &str) -> Result<Option<DeliveryRecord>>;
    async fn list_attempts(&self, delivery_id: &str) -> Result<Vec<AttemptRecord>>;
    /// Queues a delivery again now (redeliver); returns the refreshed delivery.
    async fn requeue_delivery(&self, actor: &Actor, id: &str, now: i64) -> Result<DeliveryRecord>;
}

const WEBHOOK_COLS: &str =
    "id, url, events, secret_encrypted, headers, enabled, consecutive_failures, \
     disabled_reason, version, created_at, updated_at";
const DELIVERY_COLS: &str = "id, webhook_id, event_id, event_type, payload, status, attempts, \
     next_attempt_at, last_status_code, last_error, last_latency_ms, created_at, updated_at";

fn corrupt(e: serde_json::Error) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

fn webhook_from_row(r: &AnyRow) -> Result<WebhookRecord> {
    let events: String = r.try_get("events")?;
    let headers: String = r.try_get("headers")?;
    Ok(WebhookRecord {
        id: r.try_get("id")?,
        url: r.try_get("url")?,
        events: serde_json::from_str(&events).map_err(corrupt)?,
        secret_encrypted: r.try_get("secret_encrypted")?,
        headers: serde_json::from_str(&headers).map_err(corrupt)?,
        enabled: r.try_get::<i64, _>("enabled")? != 0,
        consecutive_failures: r.try_get("consecutive_failures")?,
        disabled_reason: r.try_get("disabled_reason")?,
        version: r.try_get("version")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

fn delivery_from_row(r: &AnyRow) -> Result<DeliveryRecord> {
    Ok(DeliveryRecord {
        id: r.try_get("id")?,
        webhook_id: r.try_get("webhook_id")?,
        event_id: r.try_get("event_id")?,
        event_type: r.try_get("event_type")?,
        payload: r.try_get("payload")?,
        status: r.try_get("status")?,
        attempts: r.try_get("attempts")?,
        next_attempt_at: r.try_get("next_attempt_at")?,
        last_status_code: r.try_get("last_status_code")?,
        last_error: r.try_get("last_error")?,
        last_latency_ms: r.try_get("last_latency_ms")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

fn text(v: &impl serde::Serialize) -> Result<String> {
    serde_json::to_string(v).map_err(|e| StoreError::Invalid(e.to_string()))
}

#[async_trait]
impl WebhookStore for SqlStore {
    async fn create_webhook(&self, actor: &Actor, w: &WebhookRecord) -> Result<()> {
        let mut tx = self.begin_audited().await?;
        sqlx::query(&format!(
            "INSERT INTO webhooks ({WEBHOOK_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
        ))
        .bind(w.id.clone())
        .bind(w.url.clone())
        .bind(text(&w.events)?)
        .bind(w.secret_encrypted.clone())
        .bind(text(&w.headers)?)
        .bind(i64::from(w.enabled))
        .bind(w.consecutive_failures)
        .bind(w.disabled_reason.clone())
        .bind(w.version)
        .bind(w.created_at)
        .bind(w.updated_at)
        .execute(&mut *tx)
        .await?;
        tx.commit(
            actor,
            &AuditEvent::new("webhook.create", "webhook", Some(&w.id)).after(w.audit_view()),
        )
        .await?;
        Ok(())
    }

    async fn get_webhook(&self, id: &str) -> Result<Option<WebhookRecord>> {
        sqlx::query(&format!(
            "SELECT {WEBHOOK_COLS} FROM webhooks WHERE id = $1"
        ))
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(webhook_from_row)
        .transpose()
    }

    async fn list_webhooks(&self) -> Result<Vec<WebhookRecord>> {
        sqlx::query(&format!(
            "SELECT {WEBHOOK_COLS} FROM webhooks ORDER BY created_at, id"
        ))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(webhook_from_row)
        .collect()
    }

    async fn update_webhook(
        &self,
        actor: &Actor,
        w: &WebhookRecord,
        expected_version: Option<i64>,
    ) -> Result<WebhookRecord> {
        let mut tx = self.begin_audited().await?;
        let before = sqlx::query(&format!(
            "SELECT {WEBHOOK_COLS} FROM webhooks WHERE id = $1"
        ))
        .bind(w.id.clone())
        .fetch_optional(&mut *tx)
        .await?
        .as_ref()
        .map(webhook_from_row)
        .transpose()?
        .ok_or_else(|| StoreError::NotFound(format!("webhook {}", w.id)))?;
        check_version(expected_version, before.version)?;
        let mut after = w.clone();
        after.version = before.version + 1;
        after.created_at = before.created_at;
        // Re-enabling clears the failure streak.
        if after.enabled && !before.enabled {
            after.consecutive_failures = 0;
            after.disabled_reason = None;
        }
        sqlx::query(
            "UPDATE webhooks SET url = $1, events = $2, secret_encrypted = $3, headers = $4, enabled = $5, \
             consecutive_failures = $6, disabled_reason = $7, version = $8, updated_at = $9 WHERE id = $10",
        )
        .bind(after.url.clone())
        .bind(text(&after.events)?)
        .bind(after.secret_encrypted.clone())
        .bind(text(&after.headers)?)
        .bind(i64::from(after.enabled))
        .bind(after.consecutive_failures)
        .bind(after.disabled_reason.clone())
        .bind(after.version)
        .bind(after.updated_at)
        .bind(after.id.clone())
        .execute(&mut *tx)
        .await?;
        let ev = AuditEvent::new("webhook.update", "webhook", Some(&w.id))
            .before(before.audit_view())
            .after(after.audit_view());
        tx.commit(actor, &ev).await?;
        Ok(after)
    }

    async fn delete_webhook(&self, actor: &Actor, id: &str) -> Result<()> {
        let mut tx = self.begin_audited().await?;
        let n = sqlx::query("DELETE FROM webhooks WHERE id = $1")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if n == 0 {
            return Err(StoreError::NotFound(format!("webhook {id}")));
        }
        sqlx::query("DELETE FROM webhook_attempts WHERE delivery_id IN (SELECT id FROM webhook_deliveries WHERE webhook_id = $1)")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM webhook_deliveries WHERE webhook_id = $1")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit(
            actor,
            &AuditEvent::new("webhook.delete", "webhook", Some(id)),
        )
        .await?;
        Ok(())
    }

    async fn enqueue_deliveries(&self, deliveries: &[DeliveryRecord]) -> Result<()> {
        if deliveries.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin_write().await?;
        for d in deliveries {
            sqlx::query(&format!(
                "INSERT INTO webhook_deliveries ({DELIVERY_COLS}) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
            ))
            .bind(d.id.clone())
            .bind(d.webhook_id.clone())
            .bind(d.event_id)
            .bind(d.event_type.clone())
            .bind(d.payload.clone())
            .bind(d.status.clone())
            .bind(d.attempts)
            .bind(d.next_attempt_at)
            .bind(d.last_status_code)
            .bind(d.last_error.clone())
            .bind(d.last_latency_ms)
            .bind(d.created_at)
            .bind(d.updated_at)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn claim_deliveries(
        &self,
        now: i64,
        lease_ms: i64,
        limit: i64,
    ) -> Result<Vec<DeliveryRecord>> {
        let lock = match self.backend {
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        let sql = format!(
            "UPDATE webhook_deliveries SET claimed_until = $1 WHERE id IN (\
               SELECT id FROM webhook_deliveries WHERE status = 'pending' AND next_attempt_at <= $2 \
               AND (claimed_until IS NULL OR claimed_until < $2) ORDER BY next_attempt_at LIMIT $3{lock}) \
             RETURNING {DELIVERY_COLS}"
        );
        sqlx::query(&sql)
            .bind(now + lease_ms)
            .bind(now)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(delivery_from_row)
            .collect()
    }

    async fn record_attempt(&self, delivery_id: &str, o: &AttemptOutcome) -> Result<i64> {
        let mut tx = self.begin_write().await?;
        let d = sqlx::query(&format!(
            "SELECT {DELIVERY_COLS} FROM webhook_deliveries WHERE id = $1"
        ))
        .bind(delivery_id.to_string())
        .fetch_optional(&mut *tx)
        .await?
        .as_ref()
        .map(delivery_from_row)
        .transpose()?
        .ok_or_else(|| StoreError::NotFound(format!("delivery {delivery_id}")))?;
        let attempt = d.attempts + 1;
        sqlx::query(
            "INSERT INTO webhook_attempts (delivery_id, attempt, at, status_code, latency_ms, error) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(delivery_id.to_string())
        .bind(attempt)
        .bind(o.at)
        .bind(o.status_code)
        .bind(o.latency_ms)
        .bind(o.error.clone())
        .execute(&mut *tx)
        .await?;
        let status = if o.success {
            "success"
        } else if o.retry_at.is_some() {
            "pending"
        } else {
            "failed"
        };
        sqlx::query(
            "UPDATE webhook_deliveries SET status = $1, attempts = $2, next_attempt_at = $3, claimed_until = NULL, \
             last_status_code = $4, last_error = $5, last_latency_ms = $6, updated_at = $7 WHERE id = $8",
        )
        .bind(status)
        .bind(attempt)
        .bind(o.retry_at.unwrap_or(d.next_attempt_at))
        .bind(o.status_code)
        .bind(o.error.clone())
        .bind(o.latency_ms)
        .bind(o.at)
        .bind(delivery_id.to_string())
        .execute(&mut *tx)
        .await?;
        if o.success {
            sqlx::query("UPDATE webhooks SET consecutive_failures = 0 WHERE id = $1")
        } else {
            sqlx::query(
                "UPDATE webhooks SET consecutive_failures = consecutive_failures + 1 WHERE id = $1",
            )
        }
        .bind(d.webhook_id.clone())
        .execute(&mut *tx)
        .await?;
        let failures: i64 = sqlx::query("SELECT consecutive_failures FROM webhooks WHERE id = $1")
            .bind(d.webhook_id.clone())
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| r.try_get(0))
            .transpose()?
            .unwrap_or(0);
        tx.commit().await?;
        Ok(failures)
    }

    async fn disable_webhook(&self, id: &str, reason: &str) -> Result<()> {
        sqlx::query("UPDATE webhooks SET enabled = 0, disabled_reason = $1, version = version + 1 WHERE id = $2")
            .bind(reason.to_string())
            .bind(id.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn list_deliveries(
        &self,
        webhook_id: &str,
        page: PageRequest,
    ) -> Result<Page<DeliveryRecord>> {
        let total: i64 =
            sqlx::query("SELECT COUNT(*) FROM webhook_deliveries WHERE webhook_id = $1")
                .bind(webhook_id.to_string())
                .fetch_one(&self.pool)
                .await?
                .try_get(0)?;
        let rows = sqlx::query(&format!(
            "SELECT {DELIVERY_COLS} FROM webhook_deliveries WHERE webhook_id = $1 \
             ORDER BY created_at DESC, id LIMIT $2 OFFSET $3"
        ))
        .bind(webhook_id.to_string())
        .bind(page.limit)
        .bind(page.offset)
        .fetch_all(&self.pool)
        .await?;
        Ok(Page {
            items: rows.iter().map(delivery_from_row).collect::<Result<_>>()?,
            total,
        })
    }

    async fn get_delivery(&self, id: &str) -> Result<Option<DeliveryRecord>> {
        sqlx::query(&format!(
            "SELECT {DELIVERY_COLS} FROM webhook_deliveries WHERE id = $1"
        ))
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(delivery_from_row)
        .transpose()
    }

    async fn list_attempts(&self, delivery_id: &str) -> Result<Vec<AttemptRecord>> {
        sqlx::query("SELECT attempt, at, status_code, latency_ms, error FROM webhook_attempts WHERE delivery_id = $1 ORDER BY attempt")
            .bind(delivery_id.to_string())
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| {
                Ok(AttemptRecord {
                    attempt: r.try_get(0)?,
                    at: r.try_get(1)?,
                    status_code: r.try_get(2)?,
                    latency_ms: r.try_get(3)?,
                    error: r.try_get(4)?,
                })
            })
            .collect()
    }

    async fn requeue_delivery(&self, actor: &Actor, id: &str, now: i64) -> Result<DeliveryRecord> {
        let mut tx = self.begin_write().await?;
        let n = sqlx::query(
            "UPDATE webhook_deliveries SET status = 'pending', next_attempt_at = $1, claimed_until = NULL, \
             updated_at = $1 WHERE id = $2",
        )
        .bind(now)
        .bind(id.to_string())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 0 {
            return Err(StoreError::NotFound(format!("delivery {id}")));
        }
        insert_audit(
            &mut tx,
            actor,
            &AuditEvent::new("webhook.redeliver", "webhook_delivery", Some(id)),
        )
        .await?;
        let d = sqlx::query(&format!(
            "SELECT {DELIVERY_COLS} FROM webhook_deliveries WHERE id = $1"
        ))
        .bind(id.to_string())
        .fetch_one(&mut *tx)
        .await
        .map_err(StoreError::from)
        .and_then(|r| delivery_from_row(&r))?;
        tx.commit().await?;
        Ok(d)
    }
}
