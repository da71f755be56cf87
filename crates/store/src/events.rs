//! Stored events: appended in batches, listed with filters, acknowledged one by one
//! or by filter, counted, read after an id (SSE resume) and pruned by age and count.

use async_trait::async_trait;
use fleetgate_core::events::{NewEvent, Severity};
use serde_json::Value;
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::sql::SqlStore;
use crate::{Page, PageRequest, Result, StoreError};

/// An event as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRecord {
    pub id: i64,
    pub event: NewEvent,
    pub acknowledged_by: Option<String>,
    pub acknowledged_at: Option<i64>,
}

/// Filters of event listings, acknowledgements and streams; all optional (AND).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    pub severity: Option<Severity>,
    /// At least this severity (streams of alerts use `Warning`).
    pub min_severity: Option<Severity>,
    pub category: Option<String>,
    pub event_type: Option<String>,
    pub node_id: Option<String>,
    pub route_id: Option<String>,
    pub upstream: Option<String>,
    pub since: Option<i64>,
    pub until: Option<i64>,
    /// Only unacknowledged (true) or only acknowledged (false) events.
    pub unacknowledged: Option<bool>,
    /// Only these events (acknowledging a selection).
    pub ids: Option<Vec<i64>>,
    /// Only events of no node or of one of these nodes (a caller limited to some
    /// nodes); `None` does not restrict.
    pub node_ids: Option<Vec<String>>,
}

impl EventFilter {
    /// Whether a live event passes the filter (the same rule the SQL applies; a
    /// filter naming `ids` selects stored events only and passes no live one).
    pub fn accepts(&self, e: &NewEvent, acknowledged: bool) -> bool {
        self.severity.is_none_or(|s| e.severity == s)
            && self.min_severity.is_none_or(|s| e.severity >= s)
            && self.category.as_deref().is_none_or(|c| e.category == c)
            && self.event_type.as_deref().is_none_or(|t| e.event_type == t)
            && self
                .node_id
                .as_deref()
                .is_none_or(|n| e.node_id.as_deref() == Some(n))
            && self
                .route_id
                .as_deref()
                .is_none_or(|n| e.route_id.as_deref() == Some(n))
            && self
                .upstream
                .as_deref()
                .is_none_or(|n| e.upstream.as_deref() == Some(n))
            && self.since.is_none_or(|t| e.created_at >= t)
            && self.until.is_none_or(|t| e.created_at <= t)
            && self.unacknowledged.is_none_or(|u| u != acknowledged)
            && self.ids.is_none()
            && self
                .node_ids
                .as_ref()
                .is_none_or(|ids| e.node_id.as_ref().is_none_or(|n| ids.contains(n)))
    }

    /// The WHERE clause and its text arguments, numbered from `first`.
    fn sql(&self, first: usize) -> (String, Vec<Arg>) {
        let mut parts = vec!["1 = 1".to_string()];
        let mut args = Vec::new();
        let push = |cond: &str, a: Arg, parts: &mut Vec<String>, args: &mut Vec<Arg>| {
            args.push(a);
            parts.push(cond.replace('?', &format!("${}", first + args.len() - 1)));
        };
        if let Some(s) = self.severity {
            push(
                "severity = ?",
                Arg::Text(s.as_str().into()),
                &mut parts,
                &mut args,
            );
        }
        if let Some(min) = self.min_severity {
            let allowed: Vec<&str> = Severity::ALL
                .iter()
                .filter(|s| **s >= min)
                .map(|s| s.as_str())
                .collect();
            parts.push(format!(
                "severity IN ({})",
                allowed
                    .iter()
                    .map(|s| format!("'{s}'"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        for (col, v) in [
            ("category", &self.category),
            ("event_type", &self.event_type),
            ("node_id", &self.node_id),
            ("route_id", &self.route_id),
            ("upstream", &self.upstream),
        ] {
            if let Some(v) = v {
                push(
                    &format!("{col} = ?"),
                    Arg::Text(v.clone()),
                    &mut parts,
                    &mut args,
                );
            }
        }
        if let Some(t) = self.since {
            push("created_at >= ?", Arg::Int(t), &mut parts, &mut args);
        }
        if let Some(t) = self.until {
            push("created_at <= ?", Arg::Int(t), &mut parts, &mut args);
        }
        if let Some(nodes) = &self.node_ids {
            let mut marks = Vec::new();
            for n in nodes {
                args.push(Arg::Text(n.clone()));
                marks.push(format!("${}", first + args.len() - 1));
            }
            parts.push(if marks.is_empty() {
                "node_id IS NULL".into()
            } else {
                format!("(node_id IS NULL OR node_id IN ({}))", marks.join(", "))
            });
        }
        if let Some(ids) = &self.ids {
            // Integers only, so they are written into the statement as they are.
            let list: Vec<String> = ids.iter().map(i64::to_string).collect();
            parts.push(if list.is_empty() {
                "1 = 0".into()
            } else {
                format!("id IN ({})", list.join(", "))
            });
        }
        match self.unacknowledged {
            Some(true) => parts.push("acknowledged_at IS NULL".into()),
            Some(false) => parts.push("acknowledged_at IS NOT NULL".into()),
            None => {}
        }
        (parts.join(" AND "), args)
    }
}

#[derive(Debug, Clone)]
enum Arg {
    Text(String),
    Int(i64),
}

type Query<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

fn bind_all<'q>(mut q: Query<'q>, args: &[Arg]) -> Query<'q> {
    for a in args {
        q = match a {
            Arg::Text(s) => q.bind(s.clone()),
            Arg::Int(n) => q.bind(*n),
        };
    }
    q
}

/// Unacknowledged events by severity.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct UnackedCounts {
    pub critical: i64,
    pub warning: i64,
    pub info: i64,
    pub total: i64,
}

const COLS: &str = "id, event_type, severity, category, message, details, source, route_id, \
     upstream, node_id, flow_id, created_at, acknowledged_by, acknowledged_at";

fn event_from_row(r: &AnyRow) -> Result<EventRecord> {
    let severity: String = r.try_get("severity")?;
    let details: String = r.try_get("details")?;
    Ok(EventRecord {
        id: r.try_get("id")?,
        event: NewEvent {
            event_type: r.try_get("event_type")?,
            severity: Severity::parse(&severity)
                .ok_or_else(|| StoreError::Corrupt(format!("event severity {severity:?}")))?,
            category: r.try_get("category")?,
            message: r.try_get("message")?,
            details: serde_json::from_str::<Value>(&details)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?,
            source: r.try_get("source")?,
            route_id: r.try_get("route_id")?,
            upstream: r.try_get("upstream")?,
            node_id: r.try_get("node_id")?,
            flow_id: r.try_get("flow_id")?,
            created_at: r.try_get("created_at")?,
        },
        acknowledged_by: r.try_get("acknowledged_by")?,
        acknowledged_at: r.try_get("acknowledged_at")?,
    })
}

/// Storage of events.
#[async_trait]
pub trait EventStore: Send + Sync {
    /// Appends events in one transaction, in order; returns them with their ids.
    async fn insert_events(&self, events: &[NewEvent]) -> Result<Vec<EventRecord>>;
    async fn list_events(
        &self,
        filter: &EventFilter,
        page: PageRequest,
    ) -> Result<Page<EventRecord>>;
    async fn get_event(&self, id: i64) -> Result<Option<EventRecord>>;
    /// Events with an id above `after`, oldest first (stream resume).
    async fn events_after(
        &self,
        after: i64,
        filter: &EventFilter,
        limit: i64,
    ) -> Result<Vec<EventRecord>>;
    /// Acknowledges one event; `false` if it was already acknowledged.
    async fn ack_event(&self, id: i64, by: &str, at: i64) -> Result<bool>;
    /// Acknowledges every unacknowledged event the filter selects; returns how many.
    async fn ack_events(&self, filter: &EventFilter, by: &str, at: i64) -> Result<u64>;
    /// Unacknowledged events passing `filter`, by severity.
    async fn count_unacked(&self, filter: &EventFilter) -> Result<UnackedCounts>;
    /// Deletes events older than `before` and all but the newest `keep` events.
    async fn prune_events(&self, before: i64, keep: i64) -> Result<u64>;
}

#[async_trait]
impl EventStore for SqlStore {
    async fn insert_events(&self, events: &[NewEvent]) -> Result<Vec<EventRecord>> {
        let mut tx = self.begin_write().await?;
        let mut out = Vec::with_capacity(events.len());
        for e in events {
            let id: i64 = sqlx::query(
                "INSERT INTO events (event_type, severity, category, message, details, source, \
                 route_id, upstream, node_id, flow_id, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING id",
            )
            .bind(e.event_type.clone())
            .bind(e.severity.as_str())
            .bind(e.category.clone())
            .bind(e.message.clone())
            .bind(e.details.to_string())
            .bind(e.source.clone())
            .bind(e.route_id.clone())
            .bind(e.upstream.clone())
            .bind(e.node_id.clone())
            .bind(e.flow_id.clone())
            .bind(e.created_at)
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
            out.push(EventRecord {
                id,
                event: e.clone(),
                acknowledged_by: None,
                acknowledged_at: None,
            });
        }
        tx.commit().await?;
        Ok(out)
    }

    async fn list_events(
        &self,
        filter: &EventFilter,
        page: PageRequest,
    ) -> Result<Page<EventRecord>> {
        let (wh, args) = filter.sql(1);
        let total: i64 = bind_all(
            sqlx::query(&format!("SELECT COUNT(*) FROM events WHERE {wh}")),
            &args,
        )
        .fetch_one(&self.pool)
        .await?
        .try_get(0)?;
        let n = args.len();
        let sql = format!(
            "SELECT {COLS} FROM events WHERE {wh} ORDER BY id DESC LIMIT ${} OFFSET ${}",
            n + 1,
            n + 2
        );
        let rows = bind_all(sqlx::query(&sql), &args)
            .bind(page.limit)
            .bind(page.offset)
            .fetch_all(&self.pool)
            .await?;
        Ok(Page {
            items: rows.iter().map(event_from_row).collect::<Result<_>>()?,
            total,
        })
    }

    async fn get_event(&self, id: i64) -> Result<Option<EventRecord>> {
        sqlx::query(&format!("SELECT {COLS} FROM events WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(event_from_row)
            .transpose()
    }

    async fn events_after(
        &self,
        after: i64,
        filter: &EventFilter,
        limit: i64,
    ) -> Result<Vec<EventRecord>> {
        let (wh, args) = filter.sql(2);
        let sql = format!(
            "SELECT {COLS} FROM events WHERE id > $1 AND {wh} ORDER BY id LIMIT ${}",
            args.len() + 2
        );
        bind_all(sqlx::query(&sql).bind(after), &args)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(event_from_row)
            .collect()
    }

    async fn ack_event(&self, id: i64, by: &str, at: i64) -> Result<bool> {
        let n = sqlx::query(
            "UPDATE events SET acknowledged_by = $1, acknowledged_at = $2 \
             WHERE id = $3 AND acknowledged_at IS NULL",
        )
        .bind(by.to_string())
        .bind(at)
        .bind(id)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if n == 0 && self.get_event(id).await?.is_none() {
            return Err(StoreError::NotFound(format!("event {id}")));
        }
        Ok(n == 1)
    }

    async fn ack_events(&self, filter: &EventFilter, by: &str, at: i64) -> Result<u64> {
        let (wh, args) = filter.sql(3);
        let sql = format!(
            "UPDATE events SET acknowledged_by = $1, acknowledged_at = $2 \
             WHERE acknowledged_at IS NULL AND {wh}"
        );
        Ok(
            bind_all(sqlx::query(&sql).bind(by.to_string()).bind(at), &args)
                .execute(&self.pool)
                .await?
                .rows_affected(),
        )
    }

    async fn count_unacked(&self, filter: &EventFilter) -> Result<UnackedCounts> {
        let (clause, args) = filter.sql(1);
        let sql = format!(
            "SELECT severity, COUNT(*) FROM events WHERE acknowledged_at IS NULL AND {clause} \
             GROUP BY severity"
        );
        let rows = bind_all(sqlx::query(&sql), &args)
            .fetch_all(&self.pool)
            .await?;
        let mut c = UnackedCounts::default();
        for r in rows {
            let sev: String = r.try_get(0)?;
            let n: i64 = r.try_get(1)?;
            match sev.as_str() {
                "critical" => c.critical = n,
                "warning" => c.warning = n,
                _ => c.info += n,
            }
            c.total += n;
        }
        Ok(c)
    }

    async fn prune_events(&self, before: i64, keep: i64) -> Result<u64> {
        let mut removed = sqlx::query("DELETE FROM events WHERE created_at < $1")
            .bind(before)
            .execute(&self.pool)
            .await?
            .rows_affected();
        let cutoff = sqlx::query("SELECT id FROM events ORDER BY id DESC LIMIT 1 OFFSET $1")
            .bind(keep.max(0))
            .fetch_optional(&self.pool)
            .await?;
        if let Some(row) = cutoff {
            let id: i64 = row.try_get(0)?;
            removed += sqlx::query("DELETE FROM events WHERE id <= $1")
                .bind(id)
                .execute(&self.pool)
                .await?
                .rows_affected();
        }
        Ok(removed)
    }
}
