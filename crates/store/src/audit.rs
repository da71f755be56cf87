//! The audit log: who changed what, when, from where, with the record before and
//! after. Mutations write their entry in their own transaction
//! (`sql::insert_audit`); [`AuditStore::append_audit`] records the entries that
//! belong to no other mutation.

use async_trait::async_trait;
use serde_json::Value;
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::sql::{insert_audit, Arg, SqlStore};
use crate::{Actor, Page, PageRequest, Result, StoreError};

/// One audit log entry.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRecord {
    pub id: i64,
    pub at: i64,
    pub actor: String,
    pub actor_id: Option<String>,
    pub action: String,
    pub target_type: String,
    pub target_id: Option<String>,
    pub client_ip: Option<String>,
    pub request_id: Option<String>,
    pub before: Option<Value>,
    pub after: Option<Value>,
}

/// What an audit entry records besides who and when.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEvent {
    pub action: String,
    pub target_type: String,
    pub target_id: Option<String>,
    pub before: Option<Value>,
    pub after: Option<Value>,
}

impl AuditEvent {
    pub fn new(action: &str, target_type: &str, target_id: Option<&str>) -> Self {
        Self {
            action: action.into(),
            target_type: target_type.into(),
            target_id: target_id.map(str::to_string),
            before: None,
            after: None,
        }
    }

    pub fn before(mut self, v: Value) -> Self {
        self.before = Some(v);
        self
    }

    pub fn after(mut self, v: Value) -> Self {
        self.after = Some(v);
        self
    }
}

/// Filters of the audit log listing; all optional and combined with AND.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    pub actor: Option<String>,
    pub action: Option<String>,
    pub target_type: Option<String>,
    pub since: Option<i64>,
    pub until: Option<i64>,
}

/// The audit log.
#[async_trait]
pub trait AuditStore: Send + Sync {
    /// Records an entry that belongs to no other mutation (logins, logouts, backups).
    async fn append_audit(&self, actor: &Actor, event: AuditEvent) -> Result<()>;
    async fn list_audit(
        &self,
        filter: &AuditFilter,
        page: PageRequest,
    ) -> Result<Page<AuditRecord>>;
    async fn prune_audit(&self, before: i64) -> Result<u64>;
}

fn json_of(s: Option<String>) -> Result<Option<Value>> {
    s.map(|t| serde_json::from_str(&t).map_err(|e| StoreError::Corrupt(e.to_string())))
        .transpose()
}

fn audit_from_row(r: &AnyRow) -> Result<AuditRecord> {
    Ok(AuditRecord {
        id: r.try_get("id")?,
        at: r.try_get("at")?,
        actor: r.try_get("actor")?,
        actor_id: r.try_get("actor_id")?,
        action: r.try_get("action")?,
        target_type: r.try_get("target_type")?,
        target_id: r.try_get("target_id")?,
        client_ip: r.try_get("client_ip")?,
        request_id: r.try_get("request_id")?,
        before: json_of(r.try_get("before_json")?)?,
        after: json_of(r.try_get("after_json")?)?,
    })
}

#[async_trait]
impl AuditStore for SqlStore {
    async fn append_audit(&self, actor: &Actor, event: AuditEvent) -> Result<()> {
        let mut conn = self.pool.acquire().await?;
        insert_audit(&mut conn, actor, &event).await
    }

    async fn list_audit(&self, f: &AuditFilter, page: PageRequest) -> Result<Page<AuditRecord>> {
        let mut clauses = Vec::new();
        let mut args = Vec::new();
        let mut add = |clause: &str, arg: Arg| {
            args.push(arg);
            clauses.push(clause.replace('?', &format!("${}", args.len())));
        };
        if let Some(v) = &f.actor {
            add("actor = ?", Arg::Text(v.clone()));
        }
        if let Some(v) = &f.action {
            add("action = ?", Arg::Text(v.clone()));
        }
        if let Some(v) = &f.target_type {
            add("target_type = ?", Arg::Text(v.clone()));
        }
        if let Some(v) = f.since {
            add("at >= ?", Arg::Int(v));
        }
        if let Some(v) = f.until {
            add("at <= ?", Arg::Int(v));
        }
        let filter = if clauses.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", clauses.join(" AND "))
        };
        let total = self
            .count(&format!("SELECT COUNT(*) FROM audit_log {filter}"), &args)
            .await?;
        let n = args.len();
        let sql = format!(
            "SELECT id, at, actor, actor_id, action, target_type, target_id, client_ip, \
             request_id, before_json, after_json FROM audit_log {filter} \
             ORDER BY id DESC LIMIT ${} OFFSET ${}",
            n + 1,
            n + 2
        );
        let mut q = sqlx::query(&sql);
        for a in &args {
            q = a.bind(q);
        }
        let rows = q
            .bind(page.limit)
            .bind(page.offset)
            .fetch_all(&self.pool)
            .await?;
        let items = rows.iter().map(audit_from_row).collect::<Result<_>>()?;
        Ok(Page { items, total })
    }

    async fn prune_audit(&self, before: i64) -> Result<u64> {
        Ok(sqlx::query("DELETE FROM audit_log WHERE at < $1")
            .bind(before)
            .execute(&self.pool)
            .await?
            .rows_affected())
    }
}
