//! Alert rules, incidents and their timelines.
//!
//! A rule has at most one active (open or acknowledged) incident at a time: a partial
//! unique index on `incidents (rule_id)` refuses a second one, so when several
//! managers on one database see a rule fire at once, exactly one opens the incident
//! and the others get [`StoreError::Conflict`]. An event is linked to an incident's
//! timeline at most once (another partial unique index), whoever links it.
//!
//! Every change made through the API carries its actor and writes its audit entry in
//! the same transaction; the evaluator's automatic changes are audited as `system`.

use async_trait::async_trait;
use fleetgate_core::alerts::{AlertCondition, IncidentStatus, TimelineKind};
use fleetgate_core::events::Severity;
use serde_json::{json, Value};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use crate::sql::{check_version, insert_audit, is_unique_violation, SqlStore};
use crate::{Actor, AuditEvent, Page, PageRequest, Result, StoreError};

/// An alert rule as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertRuleRecord {
    pub id: String,
    pub name: String,
    pub description: String,
    pub enabled: bool,
    pub severity: Severity,
    pub condition: AlertCondition,
    pub version: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

impl AlertRuleRecord {
    fn audit_view(&self) -> Value {
        json!({"id": self.id, "name": self.name, "description": self.description,
               "enabled": self.enabled, "severity": self.severity, "condition": self.condition})
    }
}

/// An incident as stored, without its timeline.
#[derive(Debug, Clone, PartialEq)]
pub struct IncidentRecord {
    pub id: String,
    pub title: String,
    pub status: IncidentStatus,
    pub severity: Severity,
    /// The rule that opened it; `None` for incidents opened by hand. May name a rule
    /// deleted since.
    pub rule_id: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub acknowledged_by: Option<String>,
    pub acknowledged_at: Option<i64>,
    pub resolved_by: Option<String>,
    pub resolved_at: Option<i64>,
    /// The newest AI analysis (JSON: [`IncidentAnalysisRecord::view`]), written
    /// by [`AlertStore::record_incident_analysis`].
    pub analysis: Option<Value>,
    pub version: i64,
}

impl IncidentRecord {
    fn audit_view(&self) -> Value {
        json!({"id": self.id, "title": self.title, "status": self.status,
               "severity": self.severity, "rule_id": self.rule_id})
    }
}

/// One AI analysis of an incident, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct IncidentAnalysisRecord {
    pub id: String,
    pub incident_id: String,
    pub summary: String,
    pub probable_cause: String,
    pub suggested_actions: Vec<String>,
    /// The provider asked; it may have been deleted since.
    pub provider_id: Option<String>,
    pub provider_name: String,
    pub model: String,
    pub input_tokens: i64,
    pub output_tokens: i64,
    /// What the model was given, described (counts, names), not the context itself.
    pub context: Value,
    pub created_by: String,
    pub created_at: i64,
}

impl IncidentAnalysisRecord {
    /// The analysis as the incident carries it (`incidents.analysis`).
    pub fn view(&self) -> Value {
        json!({
            "id": self.id,
            "summary": self.summary,
            "probable_cause": self.probable_cause,
            "suggested_actions": self.suggested_actions,
            "provider_id": self.provider_id,
            "provider": self.provider_name,
            "model": self.model,
            "usage": {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens},
            "context": self.context,
            "created_by": self.created_by,
            "created_at": self.created_at,
        })
    }
}

/// One entry of an incident's timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimelineEntry {
    pub id: i64,
    pub at: i64,
    pub kind: TimelineKind,
    pub message: String,
    /// Who wrote a note or changed the status (`system` for the evaluator).
    pub actor: Option<String>,
    /// The linked event (kind `event`); it may have been pruned since.
    pub event_id: Option<i64>,
    pub event_type: Option<String>,
    /// The status the incident moved to (kind `status`).
    pub status: Option<IncidentStatus>,
}

/// A timeline entry to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTimelineEntry {
    pub at: i64,
    pub kind: TimelineKind,
    pub message: String,
    pub actor: Option<String>,
    pub event_id: Option<i64>,
    pub event_type: Option<String>,
    pub status: Option<IncidentStatus>,
}

impl NewTimelineEntry {
    pub fn status(
        at: i64,
        status: IncidentStatus,
        message: impl Into<String>,
        actor: &str,
    ) -> Self {
        Self {
            at,
            kind: TimelineKind::Status,
            message: message.into(),
            actor: Some(actor.to_string()),
            event_id: None,
            event_type: None,
            status: Some(status),
        }
    }

    pub fn note(at: i64, message: impl Into<String>, actor: &str) -> Self {
        Self {
            at,
            kind: TimelineKind::Note,
            message: message.into(),
            actor: Some(actor.to_string()),
            event_id: None,
            event_type: None,
            status: None,
        }
    }

    /// A related event; `at` is when it was raised.
    pub fn event(
        at: i64,
        event_id: i64,
        event_type: &str,
        message: impl Into<String>,
        actor: Option<&str>,
    ) -> Self {
        Self {
            at,
            kind: TimelineKind::Event,
            message: message.into(),
            actor: actor.map(str::to_string),
            event_id: Some(event_id),
            event_type: Some(event_type.to_string()),
            status: None,
        }
    }
}

/// Filters of the incident listing; all optional (AND).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IncidentFilter {
    pub status: Option<IncidentStatus>,
    pub severity: Option<Severity>,
    pub rule_id: Option<String>,
}

#[async_trait]
pub trait AlertStore: Send + Sync {
    async fn create_alert_rule(&self, actor: &Actor, rule: &AlertRuleRecord) -> Result<()>;
    async fn get_alert_rule(&self, id: &str) -> Result<Option<AlertRuleRecord>>;
    /// Rules in creation order, one page.
    async fn list_alert_rules(&self, page: PageRequest) -> Result<Page<AlertRuleRecord>>;
    /// Every rule (the evaluator's view).
    async fn all_alert_rules(&self) -> Result<Vec<AlertRuleRecord>>;
    /// Replaces a rule if its version is `expected_version` (when given); bumps the
    /// version and returns the stored rule.
    async fn update_alert_rule(
        &self,
        actor: &Actor,
        rule: &AlertRuleRecord,
        expected_version: Option<i64>,
    ) -> Result<AlertRuleRecord>;
    /// Deletes a rule; its incidents stay (naming the deleted rule).
    async fn delete_alert_rule(
        &self,
        actor: &Actor,
        id: &str,
        expected_version: Option<i64>,
    ) -> Result<()>;

    /// Creates an incident with its first timeline entries. An incident of a rule
    /// that already has an active one is refused with [`StoreError::Conflict`].
    async fn create_incident(
        &self,
        actor: &Actor,
        incident: &IncidentRecord,
        timeline: &[NewTimelineEntry],
    ) -> Result<()>;
    async fn get_incident(&self, id: &str) -> Result<Option<IncidentRecord>>;
    /// The open or acknowledged incident of a rule, if any.
    async fn active_incident_of_rule(&self, rule_id: &str) -> Result<Option<IncidentRecord>>;
    /// Every open or acknowledged incident that a rule opened.
    async fn active_rule_incidents(&self) -> Result<Vec<IncidentRecord>>;
    /// Incidents, newest first.
    async fn list_incidents(
        &self,
        filter: &IncidentFilter,
        page: PageRequest,
    ) -> Result<Page<IncidentRecord>>;
    /// Replaces the incident's title, severity, status and its acknowledgement and
    /// resolution fields if its version is `expected_version` (when given), appends
    /// `timeline` and bumps the version. Reopening an incident of a rule that has
    /// another active one is refused with [`StoreError::Conflict`].
    async fn update_incident(
        &self,
        actor: &Actor,
        incident: &IncidentRecord,
        expected_version: Option<i64>,
        timeline: &[NewTimelineEntry],
    ) -> Result<IncidentRecord>;
    /// Resolves an active incident (the evaluator, when its rule clears). `None`
    /// when it is already resolved (by an operator or another manager).
    async fn resolve_incident(
        &self,
        actor: &Actor,
        id: &str,
        at: i64,
        message: &str,
    ) -> Result<Option<IncidentRecord>>;
    /// Appends entries; an event already linked to the incident is skipped. Bumps the
    /// version when anything was added and audits it as `action` when given.
    /// Returns the incident and how many entries were added.
    async fn append_incident_timeline(
        &self,
        actor: &Actor,
        id: &str,
        timeline: &[NewTimelineEntry],
        action: Option<&str>,
    ) -> Result<(IncidentRecord, u64)>;
    /// The whole timeline, oldest first.
    async fn incident_timeline(&self, id: &str) -> Result<Vec<TimelineEntry>>;
    /// Stores an AI analysis of the incident, makes it the incident's current
    /// analysis and bumps the incident's version, audited as `incident.analyze`
    /// (the analysis, without its context). [`StoreError::NotFound`] when the
    /// incident does not exist.
    async fn record_incident_analysis(
        &self,
        actor: &Actor,
        analysis: &IncidentAnalysisRecord,
    ) -> Result<IncidentRecord>;
    /// Every analysis of the incident, oldest first.
    async fn incident_analyses(&self, incident_id: &str) -> Result<Vec<IncidentAnalysisRecord>>;
    async fn delete_incident(
        &self,
        actor: &Actor,
        id: &str,
        expected_version: Option<i64>,
    ) -> Result<()>;
}

const RULE_COLS: &str = "id, name, description, enabled, severity, condition_json, version, \
     created_at, updated_at";
const INCIDENT_COLS: &str = "id, title, status, severity, rule_id, created_at, updated_at, \
     acknowledged_by, acknowledged_at, resolved_by, resolved_at, analysis, version";
const TIMELINE_COLS: &str = "id, at, kind, message, actor, event_id, event_type, status";
const ANALYSIS_COLS: &str = "id, incident_id, summary, probable_cause, suggested_actions, \
     provider_id, provider_name, model, input_tokens, output_tokens, context_json, created_by, \
     created_at";

fn corrupt(what: &str, v: &str) -> StoreError {
    StoreError::Corrupt(format!("{what} {v:?}"))
}

fn severity_of(s: String) -> Result<Severity> {
    Severity::parse(&s).ok_or_else(|| corrupt("severity", &s))
}

fn status_of(s: String) -> Result<IncidentStatus> {
    IncidentStatus::parse(&s).ok_or_else(|| corrupt("incident status", &s))
}

fn rule_from_row(r: &AnyRow) -> Result<AlertRuleRecord> {
    let condition: String = r.try_get("condition_json")?;
    Ok(AlertRuleRecord {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        description: r.try_get("description")?,
        enabled: r.try_get::<i64, _>("enabled")? != 0,
        severity: severity_of(r.try_get("severity")?)?,
        condition: serde_json::from_str(&condition)
            .map_err(|e| StoreError::Corrupt(format!("alert rule condition: {e}")))?,
        version: r.try_get("version")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

fn incident_from_row(r: &AnyRow) -> Result<IncidentRecord> {
    let analysis: Option<String> = r.try_get("analysis")?;
    Ok(IncidentRecord {
        id: r.try_get("id")?,
        title: r.try_get("title")?,
        status: status_of(r.try_get("status")?)?,
        severity: severity_of(r.try_get("severity")?)?,
        rule_id: r.try_get("rule_id")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        acknowledged_by: r.try_get("acknowledged_by")?,
        acknowledged_at: r.try_get("acknowledged_at")?,
        resolved_by: r.try_get("resolved_by")?,
        resolved_at: r.try_get("resolved_at")?,
        analysis: analysis
            .map(|t| serde_json::from_str(&t).map_err(|e| StoreError::Corrupt(e.to_string())))
            .transpose()?,
        version: r.try_get("version")?,
    })
}

fn analysis_from_row(r: &AnyRow) -> Result<IncidentAnalysisRecord> {
    let actions: String = r.try_get("suggested_actions")?;
    let context: String = r.try_get("context_json")?;
    let bad = |what: &str, e: serde_json::Error| {
        StoreError::Corrupt(format!("incident analysis {what}: {e}"))
    };
    Ok(IncidentAnalysisRecord {
        id: r.try_get("id")?,
        incident_id: r.try_get("incident_id")?,
        summary: r.try_get("summary")?,
        probable_cause: r.try_get("probable_cause")?,
        suggested_actions: serde_json::from_str(&actions).map_err(|e| bad("actions", e))?,
        provider_id: r.try_get("provider_id")?,
        provider_name: r.try_get("provider_name")?,
        model: r.try_get("model")?,
        input_tokens: r.try_get("input_tokens")?,
        output_tokens: r.try_get("output_tokens")?,
        context: serde_json::from_str(&context).map_err(|e| bad("context", e))?,
        created_by: r.try_get("created_by")?,
        created_at: r.try_get("created_at")?,
    })
}

fn timeline_from_row(r: &AnyRow) -> Result<TimelineEntry> {
    let kind: String = r.try_get("kind")?;
    let status: Option<String> = r.try_get("status")?;
    Ok(TimelineEntry {
        id: r.try_get("id")?,
        at: r.try_get("at")?,
        kind: TimelineKind::parse(&kind).ok_or_else(|| corrupt("timeline kind", &kind))?,
        message: r.try_get("message")?,
        actor: r.try_get("actor")?,
        event_id: r.try_get("event_id")?,
        event_type: r.try_get("event_type")?,
        status: status.map(status_of).transpose()?,
    })
}

fn condition_text(c: &AlertCondition) -> Result<String> {
    serde_json::to_string(c).map_err(|e| StoreError::Invalid(e.to_string()))
}

async fn get_incident_in(conn: &mut AnyConnection, id: &str) -> Result<Option<IncidentRecord>> {
    sqlx::query(&format!(
        "SELECT {INCIDENT_COLS} FROM incidents WHERE id = $1"
    ))
    .bind(id.to_string())
    .fetch_optional(conn)
    .await?
    .as_ref()
    .map(incident_from_row)
    .transpose()
}

async fn get_rule_in(conn: &mut AnyConnection, id: &str) -> Result<Option<AlertRuleRecord>> {
    sqlx::query(&format!(
        "SELECT {RULE_COLS} FROM alert_rules WHERE id = $1"
    ))
    .bind(id.to_string())
    .fetch_optional(conn)
    .await?
    .as_ref()
    .map(rule_from_row)
    .transpose()
}

/// Inserts entries; returns how many were added (linked events already there are skipped).
async fn insert_timeline(
    conn: &mut AnyConnection,
    incident_id: &str,
    entries: &[NewTimelineEntry],
) -> Result<u64> {
    let mut added = 0;
    for e in entries {
        added += sqlx::query(
            "INSERT INTO incident_timeline (incident_id, at, kind, message, actor, event_id, \
             event_type, status) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
        )
        .bind(incident_id.to_string())
        .bind(e.at)
        .bind(e.kind.as_str())
        .bind(e.message.clone())
        .bind(e.actor.clone())
        .bind(e.event_id)
        .bind(e.event_type.clone())
        .bind(e.status.map(|s| s.as_str()))
        .execute(&mut *conn)
        .await?
        .rows_affected();
    }
    Ok(added)
}

/// The error for a row another manager changed (or deleted) since it was read.
async fn changed_meanwhile(
    conn: &mut AnyConnection,
    table: &str,
    what: &str,
    id: &str,
) -> StoreError {
    let current = sqlx::query(&format!("SELECT version FROM {table} WHERE id = $1"))
        .bind(id.to_string())
        .fetch_optional(conn)
        .await;
    match current {
        Ok(Some(row)) => match row.try_get::<i64, _>(0) {
            Ok(current) => StoreError::VersionMismatch { current },
            Err(e) => e.into(),
        },
        Ok(None) => StoreError::NotFound(format!("{what} {id}")),
        Err(e) => e.into(),
    }
}

fn already_active(rule_id: &Option<String>) -> StoreError {
    StoreError::Conflict(format!(
        "alert rule {} already has an open or acknowledged incident",
        rule_id.as_deref().unwrap_or("")
    ))
}

#[async_trait]
impl AlertStore for SqlStore {
    async fn create_alert_rule(&self, actor: &Actor, rule: &AlertRuleRecord) -> Result<()> {
        let mut tx = self.begin_audited().await?;
        sqlx::query(&format!(
            "INSERT INTO alert_rules ({RULE_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
        ))
        .bind(rule.id.clone())
        .bind(rule.name.clone())
        .bind(rule.description.clone())
        .bind(i64::from(rule.enabled))
        .bind(rule.severity.as_str())
        .bind(condition_text(&rule.condition)?)
        .bind(rule.version)
        .bind(rule.created_at)
        .bind(rule.updated_at)
        .execute(&mut *tx)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::Conflict(format!("alert rule {} already exists", rule.id))
            } else {
                e.into()
            }
        })?;
        tx.commit(
            actor,
            &AuditEvent::new("alert_rule.create", "alert_rule", Some(&rule.id))
                .after(rule.audit_view()),
        )
        .await?;
        Ok(())
    }

    async fn get_alert_rule(&self, id: &str) -> Result<Option<AlertRuleRecord>> {
        let mut conn = self.pool.acquire().await?;
        get_rule_in(&mut conn, id).await
    }

    async fn list_alert_rules(&self, page: PageRequest) -> Result<Page<AlertRuleRecord>> {
        let total: i64 = sqlx::query("SELECT COUNT(*) FROM alert_rules")
            .fetch_one(&self.pool)
            .await?
            .try_get(0)?;
        let rows = sqlx::query(&format!(
            "SELECT {RULE_COLS} FROM alert_rules ORDER BY created_at, id LIMIT $1 OFFSET $2"
        ))
        .bind(page.limit)
        .bind(page.offset)
        .fetch_all(&self.pool)
        .await?;
        Ok(Page {
            items: rows.iter().map(rule_from_row).collect::<Result<_>>()?,
            total,
        })
    }

    async fn all_alert_rules(&self) -> Result<Vec<AlertRuleRecord>> {
        sqlx::query(&format!(
            "SELECT {RULE_COLS} FROM alert_rules ORDER BY created_at, id"
        ))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(rule_from_row)
        .collect()
    }

    async fn update_alert_rule(
        &self,
        actor: &Actor,
        rule: &AlertRuleRecord,
        expected_version: Option<i64>,
    ) -> Result<AlertRuleRecord> {
        let mut tx = self.begin_audited().await?;
        let before = get_rule_in(&mut tx, &rule.id)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("alert rule {}", rule.id)))?;
        check_version(expected_version, before.version)?;
        let mut after = rule.clone();
        after.version = before.version + 1;
        after.created_at = before.created_at;
        // The version check and the write are one statement, so a concurrent update
        // through another manager cannot slip in between.
        let n = sqlx::query(
            "UPDATE alert_rules SET name = $1, description = $2, enabled = $3, severity = $4, \
             condition_json = $5, version = $6, updated_at = $7 WHERE id = $8 AND version = $9",
        )
        .bind(after.name.clone())
        .bind(after.description.clone())
        .bind(i64::from(after.enabled))
        .bind(after.severity.as_str())
        .bind(condition_text(&after.condition)?)
        .bind(after.version)
        .bind(after.updated_at)
        .bind(after.id.clone())
        .bind(before.version)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 0 {
            return Err(changed_meanwhile(&mut tx, "alert_rules", "alert rule", &rule.id).await);
        }
        tx.commit(
            actor,
            &AuditEvent::new("alert_rule.update", "alert_rule", Some(&rule.id))
                .before(before.audit_view())
                .after(after.audit_view()),
        )
        .await?;
        Ok(after)
    }

    async fn delete_alert_rule(
        &self,
        actor: &Actor,
        id: &str,
        expected_version: Option<i64>,
    ) -> Result<()> {
        let mut tx = self.begin_audited().await?;
        let before = get_rule_in(&mut tx, id)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("alert rule {id}")))?;
        check_version(expected_version, before.version)?;
        sqlx::query("DELETE FROM alert_rules WHERE id = $1")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit(
            actor,
            &AuditEvent::new("alert_rule.delete", "alert_rule", Some(id))
                .before(before.audit_view()),
        )
        .await?;
        Ok(())
    }

    async fn create_incident(
        &self,
        actor: &Actor,
        incident: &IncidentRecord,
        timeline: &[NewTimelineEntry],
    ) -> Result<()> {
        let mut tx = self.begin_audited().await?;
        let inserted = sqlx::query(&format!(
            "INSERT INTO incidents ({INCIDENT_COLS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
        ))
        .bind(incident.id.clone())
        .bind(incident.title.clone())
        .bind(incident.status.as_str())
        .bind(incident.severity.as_str())
        .bind(incident.rule_id.clone())
        .bind(incident.created_at)
        .bind(incident.updated_at)
        .bind(incident.acknowledged_by.clone())
        .bind(incident.acknowledged_at)
        .bind(incident.resolved_by.clone())
        .bind(incident.resolved_at)
        .bind(incident.analysis.as_ref().map(Value::to_string))
        .bind(incident.version)
        .execute(&mut *tx)
        .await;
        match inserted {
            Ok(_) => {}
            // The index on active incidents per rule (or a reused id).
            Err(e) if is_unique_violation(&e) => {
                return Err(if incident.rule_id.is_some() {
                    already_active(&incident.rule_id)
                } else {
                    StoreError::Conflict(format!("incident {} already exists", incident.id))
                })
            }
            Err(e) => return Err(e.into()),
        }
        insert_timeline(&mut tx, &incident.id, timeline).await?;
        tx.commit(
            actor,
            &AuditEvent::new("incident.create", "incident", Some(&incident.id))
                .after(incident.audit_view()),
        )
        .await?;
        Ok(())
    }

    async fn get_incident(&self, id: &str) -> Result<Option<IncidentRecord>> {
        let mut conn = self.pool.acquire().await?;
        get_incident_in(&mut conn, id).await
    }

    async fn active_incident_of_rule(&self, rule_id: &str) -> Result<Option<IncidentRecord>> {
        sqlx::query(&format!(
            "SELECT {INCIDENT_COLS} FROM incidents WHERE rule_id = $1 AND status <> 'resolved'"
        ))
        .bind(rule_id.to_string())
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(incident_from_row)
        .transpose()
    }

    async fn active_rule_incidents(&self) -> Result<Vec<IncidentRecord>> {
        sqlx::query(&format!(
            "SELECT {INCIDENT_COLS} FROM incidents \
             WHERE rule_id IS NOT NULL AND status <> 'resolved' ORDER BY created_at, id"
        ))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(incident_from_row)
        .collect()
    }

    async fn list_incidents(
        &self,
        filter: &IncidentFilter,
        page: PageRequest,
    ) -> Result<Page<IncidentRecord>> {
        let mut parts = vec!["1 = 1".to_string()];
        let mut args: Vec<String> = Vec::new();
        for (col, v) in [
            ("status", filter.status.map(|s| s.as_str().to_string())),
            ("severity", filter.severity.map(|s| s.as_str().to_string())),
            ("rule_id", filter.rule_id.clone()),
        ] {
            if let Some(v) = v {
                args.push(v);
                parts.push(format!("{col} = ${}", args.len()));
            }
        }
        let wh = parts.join(" AND ");
        let count_sql = format!("SELECT COUNT(*) FROM incidents WHERE {wh}");
        let mut count = sqlx::query(&count_sql);
        for a in &args {
            count = count.bind(a.clone());
        }
        let total: i64 = count.fetch_one(&self.pool).await?.try_get(0)?;
        let sql = format!(
            "SELECT {INCIDENT_COLS} FROM incidents WHERE {wh} \
             ORDER BY created_at DESC, id LIMIT ${} OFFSET ${}",
            args.len() + 1,
            args.len() + 2
        );
        let mut q = sqlx::query(&sql);
        for a in &args {
            q = q.bind(a.clone());
        }
        let rows = q
            .bind(page.limit)
            .bind(page.offset)
            .fetch_all(&self.pool)
            .await?;
        Ok(Page {
            items: rows.iter().map(incident_from_row).collect::<Result<_>>()?,
            total,
        })
    }

    async fn update_incident(
        &self,
        actor: &Actor,
        incident: &IncidentRecord,
        expected_version: Option<i64>,
        timeline: &[NewTimelineEntry],
    ) -> Result<IncidentRecord> {
        let mut tx = self.begin_audited().await?;
        let before = get_incident_in(&mut tx, &incident.id)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("incident {}", incident.id)))?;
        check_version(expected_version, before.version)?;
        let mut after = incident.clone();
        after.version = before.version + 1;
        after.created_at = before.created_at;
        after.rule_id = before.rule_id.clone();
        after.analysis = before.analysis.clone();
        let res = sqlx::query(
            "UPDATE incidents SET title = $1, status = $2, severity = $3, updated_at = $4, \
             acknowledged_by = $5, acknowledged_at = $6, resolved_by = $7, resolved_at = $8, \
             version = $9 WHERE id = $10 AND version = $11",
        )
        .bind(after.title.clone())
        .bind(after.status.as_str())
        .bind(after.severity.as_str())
        .bind(after.updated_at)
        .bind(after.acknowledged_by.clone())
        .bind(after.acknowledged_at)
        .bind(after.resolved_by.clone())
        .bind(after.resolved_at)
        .bind(after.version)
        .bind(after.id.clone())
        .bind(before.version)
        .execute(&mut *tx)
        .await;
        match res {
            Ok(r) if r.rows_affected() == 0 => {
                return Err(changed_meanwhile(&mut tx, "incidents", "incident", &after.id).await)
            }
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => return Err(already_active(&after.rule_id)),
            Err(e) => return Err(e.into()),
        }
        insert_timeline(&mut tx, &after.id, timeline).await?;
        tx.commit(
            actor,
            &AuditEvent::new("incident.update", "incident", Some(&after.id))
                .before(before.audit_view())
                .after(after.audit_view()),
        )
        .await?;
        Ok(after)
    }

    async fn resolve_incident(
        &self,
        actor: &Actor,
        id: &str,
        at: i64,
        message: &str,
    ) -> Result<Option<IncidentRecord>> {
        let mut tx = self.begin_audited().await?;
        let n = sqlx::query(
            "UPDATE incidents SET status = 'resolved', resolved_by = $1, resolved_at = $2, \
             updated_at = $2, version = version + 1 WHERE id = $3 AND status <> 'resolved'",
        )
        .bind(actor.name.clone())
        .bind(at)
        .bind(id.to_string())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 0 {
            return Ok(None);
        }
        insert_timeline(
            &mut tx,
            id,
            &[NewTimelineEntry::status(
                at,
                IncidentStatus::Resolved,
                message,
                &actor.name,
            )],
        )
        .await?;
        let after = get_incident_in(&mut tx, id)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("incident {id}")))?;
        tx.commit(
            actor,
            &AuditEvent::new("incident.resolve", "incident", Some(id)).after(after.audit_view()),
        )
        .await?;
        Ok(Some(after))
    }

    async fn append_incident_timeline(
        &self,
        actor: &Actor,
        id: &str,
        timeline: &[NewTimelineEntry],
        action: Option<&str>,
    ) -> Result<(IncidentRecord, u64)> {
        let mut tx = self.begin_write().await?;
        // Bump first: takes the row lock (and SQLite's write lock) before reading.
        let now = timeline
            .iter()
            .map(|e| e.at)
            .max()
            .unwrap_or_else(fleetgate_core::time::now_ms);
        let exists = sqlx::query("UPDATE incidents SET version = version WHERE id = $1")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if exists == 0 {
            return Err(StoreError::NotFound(format!("incident {id}")));
        }
        let added = insert_timeline(&mut tx, id, timeline).await?;
        if added > 0 {
            sqlx::query(
                "UPDATE incidents SET version = version + 1, \
                 updated_at = CASE WHEN updated_at > $1 THEN updated_at ELSE $1 END WHERE id = $2",
            )
            .bind(now)
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
            if let Some(action) = action {
                let entries: Vec<Value> = timeline
                    .iter()
                    .map(|e| json!({"kind": e.kind, "message": e.message, "event_id": e.event_id}))
                    .collect();
                insert_audit(
                    &mut tx,
                    actor,
                    &AuditEvent::new(action, "incident", Some(id))
                        .after(json!({ "timeline": entries })),
                )
                .await?;
            }
        }
        let after = get_incident_in(&mut tx, id)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("incident {id}")))?;
        tx.commit().await?;
        Ok((after, added))
    }

    async fn incident_timeline(&self, id: &str) -> Result<Vec<TimelineEntry>> {
        sqlx::query(&format!(
            "SELECT {TIMELINE_COLS} FROM incident_timeline WHERE incident_id = $1 ORDER BY id"
        ))
        .bind(id.to_string())
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(timeline_from_row)
        .collect()
    }

    async fn record_incident_analysis(
        &self,
        actor: &Actor,
        a: &IncidentAnalysisRecord,
    ) -> Result<IncidentRecord> {
        let mut tx = self.begin_audited().await?;
        let view = a.view();
        // The row lock (and SQLite's write lock) first, then the write.
        let n = sqlx::query(
            "UPDATE incidents SET analysis = $1, version = version + 1, \
             updated_at = CASE WHEN updated_at > $2 THEN updated_at ELSE $2 END WHERE id = $3",
        )
        .bind(view.to_string())
        .bind(a.created_at)
        .bind(a.incident_id.clone())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 0 {
            return Err(StoreError::NotFound(format!("incident {}", a.incident_id)));
        }
        let actions = serde_json::to_string(&a.suggested_actions)
            .map_err(|e| StoreError::Invalid(e.to_string()))?;
        sqlx::query(&format!(
            "INSERT INTO incident_analyses ({ANALYSIS_COLS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
        ))
        .bind(a.id.clone())
        .bind(a.incident_id.clone())
        .bind(a.summary.clone())
        .bind(a.probable_cause.clone())
        .bind(actions)
        .bind(a.provider_id.clone())
        .bind(a.provider_name.clone())
        .bind(a.model.clone())
        .bind(a.input_tokens)
        .bind(a.output_tokens)
        .bind(a.context.to_string())
        .bind(a.created_by.clone())
        .bind(a.created_at)
        .execute(&mut *tx)
        .await?;
        let after = get_incident_in(&mut tx, &a.incident_id)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("incident {}", a.incident_id)))?;
        let mut audited = view;
        if let Some(o) = audited.as_object_mut() {
            o.remove("context");
        }
        tx.commit(
            actor,
            &AuditEvent::new("incident.analyze", "incident", Some(&a.incident_id))
                .after(json!({ "analysis": audited })),
        )
        .await?;
        Ok(after)
    }

    async fn incident_analyses(&self, incident_id: &str) -> Result<Vec<IncidentAnalysisRecord>> {
        sqlx::query(&format!(
            "SELECT {ANALYSIS_COLS} FROM incident_analyses WHERE incident_id = $1 \
             ORDER BY created_at, id"
        ))
        .bind(incident_id.to_string())
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(analysis_from_row)
        .collect()
    }

    async fn delete_incident(
        &self,
        actor: &Actor,
        id: &str,
        expected_version: Option<i64>,
    ) -> Result<()> {
        let mut tx = self.begin_audited().await?;
        let before = get_incident_in(&mut tx, id)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("incident {id}")))?;
        check_version(expected_version, before.version)?;
        sqlx::query("DELETE FROM incident_timeline WHERE incident_id = $1")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM incident_analyses WHERE incident_id = $1")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM incidents WHERE id = $1")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit(
            actor,
            &AuditEvent::new("incident.delete", "incident", Some(id)).before(before.audit_view()),
        )
        .await?;
        Ok(())
    }
}
