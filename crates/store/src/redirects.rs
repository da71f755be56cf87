//! Namespaces, projects, their redirect and page rules (drafts and the published set),
//! agent tokens and agents: the storage behind Fleetgate's redirect/page server and its
//! Flecto-compatible agent sync API.
//!
//! The store treats a rule as four strings (type, key, value, flavor: a redirect's
//! type/source/target/status or a page's type/path/content/content_type); the manager
//! owns their meaning and validation. Each rule row holds the working copy operators
//! edit and the published copy agents are served, so publishing is two set-based
//! statements however large the project is.

use async_trait::async_trait;
use fleetgate_core::time::now_ms;
use serde::Serialize;
use serde_json::{json, Value};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use crate::sql::{check_version, insert_audit, is_unique_violation, SqlStore};
use crate::{Actor, AuditEvent, Page, PageRequest, Result, StoreError};

/// Most changes listed in one publish record; counts always cover all of them.
pub const PUBLISH_CHANGES_LISTED: usize = 500;
/// Rows per multi-row INSERT of an import.
const IMPORT_BATCH: usize = 500;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceRecord {
    pub name: String,
    pub description: String,
    pub version: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectRecord {
    pub id: String,
    pub namespace: String,
    pub name: String,
    pub description: String,
    pub hosts: Vec<String>,
    /// The version agents are served; 0 until the first publish.
    pub published_version: i64,
    pub published_at: Option<i64>,
    /// Version of the record itself, for If-Match.
    pub version: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

impl ProjectRecord {
    pub(crate) fn audit_view(&self) -> Value {
        json!({
            "id": self.id, "namespace": self.namespace, "name": self.name,
            "description": self.description, "hosts": self.hosts,
        })
    }
}

/// Which rule table an operation is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleTable {
    Redirects,
    Pages,
}

impl RuleTable {
    pub const ALL: [RuleTable; 2] = [RuleTable::Redirects, RuleTable::Pages];

    pub(crate) fn table(self) -> &'static str {
        match self {
            RuleTable::Redirects => "redirects",
            RuleTable::Pages => "pages",
        }
    }

    /// The singular noun used in audit actions and messages.
    pub fn noun(self) -> &'static str {
        match self {
            RuleTable::Redirects => "redirect",
            RuleTable::Pages => "page",
        }
    }

    /// Column names of (key, value, flavor).
    pub(crate) fn cols(self) -> (&'static str, &'static str, &'static str) {
        match self {
            RuleTable::Redirects => ("source", "target", "status"),
            RuleTable::Pages => ("path", "content", "content_type"),
        }
    }
}

/// One rule as four strings: type, key (source/path), value (target/content) and
/// flavor (status/content type).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RuleData {
    pub kind: String,
    pub key: String,
    pub value: String,
    pub flavor: String,
}

/// Where a rule stands relative to the published set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DraftState {
    /// Published as it is.
    Published,
    /// New, not yet published.
    Created,
    /// Published, with unpublished edits.
    Updated,
    /// Published, deleted in the draft.
    Deleted,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleRow {
    pub id: i64,
    pub working: RuleData,
    pub published: Option<RuleData>,
    pub state: DraftState,
    pub updated_at: i64,
}

/// Filters of a rule listing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleFilter {
    pub kind: Option<String>,
    /// Substring of key or value, case-insensitive.
    pub q: Option<String>,
    /// Also list rules deleted in the draft.
    pub include_deleted: bool,
    /// Only rules with an unpublished change (created, updated, or deleted when
    /// `include_deleted`).
    pub drafts_only: bool,
}

/// What an import changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ImportSummary {
    pub created: u64,
    pub updated: u64,
    pub unchanged: u64,
    pub deleted: u64,
}

/// Counts of unpublished changes of one table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ChangeCounts {
    pub created: i64,
    pub updated: i64,
    pub deleted: i64,
}

impl ChangeCounts {
    pub fn total(&self) -> i64 {
        self.created + self.updated + self.deleted
    }
}

/// Unpublished changes of a project.
#[derive(Debug, Clone, PartialEq)]
pub struct Drafts {
    pub redirects: ChangeCounts,
    pub pages: ChangeCounts,
    /// The first changes, in table then id order.
    pub changes: Vec<(RuleTable, RuleRow)>,
}

/// One publish of a project.
#[derive(Debug, Clone, PartialEq)]
pub struct PublishRecord {
    pub version: i64,
    pub published_at: i64,
    pub author: String,
    /// Counts per table and the first changes (`changes`, `truncated`).
    pub summary: Value,
}

/// A scope of an agent token: namespace and project (or `*`), resource
/// (`redirect`, `page`, `agent` or `*`) and action (`read`, `write` or `*`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct TokenScope {
    pub namespace: String,
    pub project: String,
    pub resource: String,
    pub action: String,
}

impl TokenScope {
    /// Whether this scope grants `action` on `resource` of `namespace/project`
    /// (`resource` `None` means any resource). `write` does not imply `read`.
    pub fn grants(
        &self,
        namespace: &str,
        project: &str,
        resource: Option<&str>,
        action: &str,
    ) -> bool {
        let m = |granted: &str, wanted: &str| granted == "*" || granted == wanted;
        m(&self.namespace, namespace)
            && m(&self.project, project)
            && resource.is_none_or(|r| m(&self.resource, r))
            && m(&self.action, action)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectTokenRecord {
    pub id: String,
    pub project_id: String,
    pub name: String,
    pub token_hash: String,
    /// `flecto_abcd...wxyz`: enough to tell tokens apart.
    pub preview: String,
    pub scopes: Vec<TokenScope>,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub last_used_at: Option<i64>,
}

impl ProjectTokenRecord {
    fn audit_view(&self) -> Value {
        json!({"id": self.id, "project_id": self.project_id, "name": self.name,
               "preview": self.preview, "scopes": self.scopes, "expires_at": self.expires_at})
    }
}

/// An agent's last report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentRecord {
    pub project_id: String,
    pub name: String,
    /// `default`, `traefik`, `fleetgate`, … as the agent reports it.
    pub kind: String,
    pub loaded_version: i64,
    /// `success`, `error`, or empty.
    pub status: String,
    pub error: String,
    pub load_duration_ns: i64,
    pub created_at: i64,
    pub updated_at: i64,
    pub last_hit_at: i64,
}

/// Storage of namespaces, projects, rules, tokens and agents.
#[async_trait]
pub trait RedirectStore: Send + Sync {
    async fn create_namespace(&self, actor: &Actor, ns: &NamespaceRecord) -> Result<()>;
    async fn get_namespace(&self, name: &str) -> Result<Option<NamespaceRecord>>;
    async fn list_namespaces(&self, page: PageRequest) -> Result<Page<NamespaceRecord>>;
    async fn update_namespace(
        &self,
        actor: &Actor,
        ns: &NamespaceRecord,
        expected_version: Option<i64>,
    ) -> Result<NamespaceRecord>;
    /// Refused with a conflict while the namespace has projects.
    async fn delete_namespace(&self, actor: &Actor, name: &str) -> Result<()>;

    /// Fails with a conflict when the name is taken in the namespace or a host already
    /// belongs to another project.
    async fn create_project(&self, actor: &Actor, p: &ProjectRecord) -> Result<()>;
    async fn get_project(&self, namespace: &str, name: &str) -> Result<Option<ProjectRecord>>;
    async fn list_projects(
        &self,
        namespace: &str,
        page: PageRequest,
    ) -> Result<Page<ProjectRecord>>;
    /// Every project of every namespace (for the gateway).
    async fn all_projects(&self) -> Result<Vec<ProjectRecord>>;
    /// Updates description and hosts.
    async fn update_project(
        &self,
        actor: &Actor,
        p: &ProjectRecord,
        expected_version: Option<i64>,
    ) -> Result<ProjectRecord>;
    /// Deletes the project with its rules, versions, tokens and agents.
    async fn delete_project(&self, actor: &Actor, project_id: &str) -> Result<()>;

    async fn list_rules(
        &self,
        table: RuleTable,
        project_id: &str,
        filter: &RuleFilter,
        page: PageRequest,
    ) -> Result<Page<RuleRow>>;
    async fn get_rule(
        &self,
        table: RuleTable,
        project_id: &str,
        id: i64,
    ) -> Result<Option<RuleRow>>;
    /// The rule of the working set whose key (a redirect's source, a page's path)
    /// is `key`; a rule deleted in the draft is not in the working set.
    async fn rule_by_key(
        &self,
        table: RuleTable,
        project_id: &str,
        key: &str,
    ) -> Result<Option<RuleRow>>;
    /// Adds a draft rule; its key must not be in the working set.
    async fn create_rule(
        &self,
        actor: &Actor,
        table: RuleTable,
        project_id: &str,
        rule: &RuleData,
    ) -> Result<RuleRow>;
    async fn update_rule(
        &self,
        actor: &Actor,
        table: RuleTable,
        project_id: &str,
        id: i64,
        rule: &RuleData,
    ) -> Result<RuleRow>;
    /// Drops a never-published rule, or marks a published one deleted in the draft.
    async fn delete_rule(
        &self,
        actor: &Actor,
        table: RuleTable,
        project_id: &str,
        id: i64,
    ) -> Result<()>;
    /// Writes `rules` as drafts in one transaction: a key already in the working set is
    /// updated, a new key created; with `replace`, working rules not in `rules` are
    /// deleted. The caller has validated every rule and that keys are unique.
    async fn import_rules(
        &self,
        actor: &Actor,
        table: RuleTable,
        project_id: &str,
        rules: &[RuleData],
        replace: bool,
    ) -> Result<ImportSummary>;
    /// The working set (drafts applied), in id order.
    async fn working_rules(&self, table: RuleTable, project_id: &str) -> Result<Vec<RuleData>>;
    /// A page of the published set, in id order, and the published total.
    async fn published_rules(
        &self,
        table: RuleTable,
        project_id: &str,
        page: PageRequest,
    ) -> Result<Page<RuleData>>;
    async fn drafts(&self, project_id: &str, limit: usize) -> Result<Drafts>;
    /// Publishes every draft and bumps the published version, in one transaction;
    /// a conflict when there is nothing to publish.
    async fn publish(&self, actor: &Actor, project_id: &str) -> Result<PublishRecord>;
    /// Drops every draft; returns how many changes were dropped.
    async fn discard_drafts(&self, actor: &Actor, project_id: &str) -> Result<i64>;
    async fn list_publishes(
        &self,
        project_id: &str,
        page: PageRequest,
    ) -> Result<Page<PublishRecord>>;

    async fn create_project_token(&self, actor: &Actor, t: &ProjectTokenRecord) -> Result<()>;
    async fn list_project_tokens(&self, project_id: &str) -> Result<Vec<ProjectTokenRecord>>;
    async fn find_project_token(&self, token_hash: &str) -> Result<Option<ProjectTokenRecord>>;
    async fn delete_project_token(&self, actor: &Actor, project_id: &str, id: &str) -> Result<()>;
    async fn touch_project_token(&self, id: &str, at: i64) -> Result<()>;

    /// Creates or replaces an agent's report (keyed by project and name). Returns
    /// whether the agent was new. Only a new agent is audited: reports are telemetry.
    async fn report_agent(&self, actor: &Actor, a: &AgentRecord) -> Result<bool>;
    /// Records a heartbeat; creates a bare agent row when the name is unknown.
    async fn hit_agent(&self, project_id: &str, name: &str, at: i64) -> Result<()>;
    async fn list_agents(&self, project_id: &str) -> Result<Vec<AgentRecord>>;
    async fn delete_agent(&self, actor: &Actor, project_id: &str, name: &str) -> Result<()>;
}

fn ns_from_row(r: &AnyRow) -> Result<NamespaceRecord> {
    Ok(NamespaceRecord {
        name: r.try_get("name")?,
        description: r.try_get("description")?,
        version: r.try_get("version")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

pub(crate) const PROJECT_COLS: &str =
    "id, namespace, name, description, hosts, published_version, \
     published_at, version, created_at, updated_at";

pub(crate) fn project_from_row(r: &AnyRow) -> Result<ProjectRecord> {
    let hosts: String = r.try_get("hosts")?;
    Ok(ProjectRecord {
        id: r.try_get("id")?,
        namespace: r.try_get("namespace")?,
        name: r.try_get("name")?,
        description: r.try_get("description")?,
        hosts: serde_json::from_str(&hosts).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        published_version: r.try_get("published_version")?,
        published_at: r.try_get("published_at")?,
        version: r.try_get("version")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

pub(crate) fn rule_cols(table: RuleTable) -> String {
    let (k, v, f) = table.cols();
    format!("id, kind, {k}, {v}, {f}, pub_kind, pub_{k}, pub_{v}, pub_{f}, deleted, pending, updated_at")
}

pub(crate) fn rule_from_row(r: &AnyRow) -> Result<RuleRow> {
    let working = RuleData {
        kind: r.try_get(1)?,
        key: r.try_get(2)?,
        value: r.try_get(3)?,
        flavor: r.try_get(4)?,
    };
    let pub_key: Option<String> = r.try_get(6)?;
    let published = match pub_key {
        Some(key) => Some(RuleData {
            kind: r.try_get::<Option<String>, _>(5)?.unwrap_or_default(),
            key,
            value: r.try_get::<Option<String>, _>(7)?.unwrap_or_default(),
            flavor: r.try_get::<Option<String>, _>(8)?.unwrap_or_default(),
        }),
        None => None,
    };
    let deleted: i64 = r.try_get(9)?;
    let pending: i64 = r.try_get(10)?;
    let state = if deleted != 0 {
        DraftState::Deleted
    } else if published.is_none() {
        DraftState::Created
    } else if pending != 0 {
        DraftState::Updated
    } else {
        DraftState::Published
    };
    Ok(RuleRow {
        id: r.try_get(0)?,
        working,
        published,
        state,
        updated_at: r.try_get(11)?,
    })
}

fn rule_view(d: &RuleData) -> Value {
    json!({"type": d.kind, "key": d.key, "value": d.value, "flavor": d.flavor})
}

fn token_from_row(r: &AnyRow) -> Result<ProjectTokenRecord> {
    let scopes: String = r.try_get("scopes")?;
    Ok(ProjectTokenRecord {
        id: r.try_get("id")?,
        project_id: r.try_get("project_id")?,
        name: r.try_get("name")?,
        token_hash: r.try_get("token_hash")?,
        preview: r.try_get("preview")?,
        scopes: serde_json::from_str(&scopes).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        created_at: r.try_get("created_at")?,
        expires_at: r.try_get("expires_at")?,
        last_used_at: r.try_get("last_used_at")?,
    })
}

fn agent_from_row(r: &AnyRow) -> Result<AgentRecord> {
    Ok(AgentRecord {
        project_id: r.try_get("project_id")?,
        name: r.try_get("name")?,
        kind: r.try_get("kind")?,
        loaded_version: r.try_get("loaded_version")?,
        status: r.try_get("status")?,
        error: r.try_get("error")?,
        load_duration_ns: r.try_get("load_duration_ns")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        last_hit_at: r.try_get("last_hit_at")?,
    })
}

fn publish_from_row(r: &AnyRow) -> Result<PublishRecord> {
    let summary: String = r.try_get("summary")?;
    Ok(PublishRecord {
        version: r.try_get("version")?,
        published_at: r.try_get("published_at")?,
        author: r.try_get("author")?,
        summary: serde_json::from_str(&summary).map_err(|e| StoreError::Corrupt(e.to_string()))?,
    })
}

/// Locks the project row for the rest of the transaction (PostgreSQL row lock; SQLite
/// takes its write lock) so concurrent edits of one project are serialized.
pub(crate) async fn lock_project(conn: &mut AnyConnection, project_id: &str) -> Result<()> {
    let n = sqlx::query("UPDATE projects SET updated_at = updated_at WHERE id = $1")
        .bind(project_id.to_string())
        .execute(conn)
        .await?
        .rows_affected();
    if n == 0 {
        return Err(StoreError::NotFound(format!("project {project_id}")));
    }
    Ok(())
}

async fn get_rule_in(
    conn: &mut AnyConnection,
    table: RuleTable,
    project_id: &str,
    id: i64,
) -> Result<Option<RuleRow>> {
    let sql = format!(
        "SELECT {} FROM {} WHERE project_id = $1 AND id = $2",
        rule_cols(table),
        table.table()
    );
    sqlx::query(&sql)
        .bind(project_id.to_string())
        .bind(id)
        .fetch_optional(conn)
        .await?
        .as_ref()
        .map(rule_from_row)
        .transpose()
}

async fn get_rule_by_key(
    conn: &mut AnyConnection,
    table: RuleTable,
    project_id: &str,
    key: &str,
) -> Result<Option<RuleRow>> {
    let (k, _, _) = table.cols();
    let sql = format!(
        "SELECT {} FROM {} WHERE project_id = $1 AND {k} = $2",
        rule_cols(table),
        table.table()
    );
    sqlx::query(&sql)
        .bind(project_id.to_string())
        .bind(key.to_string())
        .fetch_optional(conn)
        .await?
        .as_ref()
        .map(rule_from_row)
        .transpose()
}

/// Sets a row's working copy; pending unless it equals the published copy.
pub(crate) async fn write_working(
    conn: &mut AnyConnection,
    table: RuleTable,
    row: &RuleRow,
    rule: &RuleData,
) -> Result<()> {
    let (k, v, f) = table.cols();
    let pending = row.published.as_ref() != Some(rule);
    let sql = format!(
        "UPDATE {} SET kind = $1, {k} = $2, {v} = $3, {f} = $4, deleted = 0, pending = $5, \
         updated_at = $6 WHERE id = $7",
        table.table()
    );
    sqlx::query(&sql)
        .bind(rule.kind.clone())
        .bind(rule.key.clone())
        .bind(rule.value.clone())
        .bind(rule.flavor.clone())
        .bind(i64::from(pending))
        .bind(now_ms())
        .bind(row.id)
        .execute(conn)
        .await
        .map_err(|e| key_conflict(e, table, &rule.key))?;
    Ok(())
}

fn key_conflict(e: sqlx::Error, table: RuleTable, key: &str) -> StoreError {
    if is_unique_violation(&e) {
        let (k, _, _) = table.cols();
        StoreError::Conflict(format!(
            "a {} with {k} {key:?} already exists",
            table.noun()
        ))
    } else {
        e.into()
    }
}

pub(crate) async fn insert_rules(
    conn: &mut AnyConnection,
    table: RuleTable,
    project_id: &str,
    rules: &[&RuleData],
) -> Result<()> {
    let (k, v, f) = table.cols();
    let now = now_ms();
    for chunk in rules.chunks(IMPORT_BATCH) {
        let mut sql = format!(
            "INSERT INTO {} (project_id, kind, {k}, {v}, {f}, deleted, pending, updated_at) VALUES ",
            table.table()
        );
        for i in 0..chunk.len() {
            let b = i * 5;
            if i > 0 {
                sql.push(',');
            }
            sql.push_str(&format!(
                "($1, ${}, ${}, ${}, ${}, 0, 1, ${})",
                b + 2,
                b + 3,
                b + 4,
                b + 5,
                b + 6
            ));
        }
        let mut q = sqlx::query(&sql).bind(project_id.to_string());
        for r in chunk {
            q = q
                .bind(r.kind.clone())
                .bind(r.key.clone())
                .bind(r.value.clone())
                .bind(r.flavor.clone())
                .bind(now);
        }
        if let Err(e) = q.execute(&mut *conn).await {
            let key = chunk.first().map(|r| r.key.as_str()).unwrap_or_default();
            return Err(key_conflict(e, table, key));
        }
    }
    Ok(())
}

async fn counts_in(
    conn: &mut AnyConnection,
    table: RuleTable,
    project_id: &str,
) -> Result<ChangeCounts> {
    let (k, _, _) = table.cols();
    let sql = format!(
        "SELECT \
         COALESCE(SUM(CASE WHEN deleted = 0 AND pub_{k} IS NULL THEN 1 ELSE 0 END), 0), \
         COALESCE(SUM(CASE WHEN deleted = 0 AND pub_{k} IS NOT NULL THEN 1 ELSE 0 END), 0), \
         COALESCE(SUM(CASE WHEN deleted = 1 THEN 1 ELSE 0 END), 0) \
         FROM {} WHERE project_id = $1 AND pending = 1",
        table.table()
    );
    let r = sqlx::query(&sql)
        .bind(project_id.to_string())
        .fetch_one(conn)
        .await?;
    Ok(ChangeCounts {
        created: r.try_get(0)?,
        updated: r.try_get(1)?,
        deleted: r.try_get(2)?,
    })
}

async fn pending_rows(
    conn: &mut AnyConnection,
    table: RuleTable,
    project_id: &str,
    limit: usize,
) -> Result<Vec<RuleRow>> {
    let sql = format!(
        "SELECT {} FROM {} WHERE project_id = $1 AND pending = 1 ORDER BY id LIMIT $2",
        rule_cols(table),
        table.table()
    );
    sqlx::query(&sql)
        .bind(project_id.to_string())
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(conn)
        .await?
        .iter()
        .map(rule_from_row)
        .collect()
}

async fn drafts_in(conn: &mut AnyConnection, project_id: &str, limit: usize) -> Result<Drafts> {
    let redirects = counts_in(&mut *conn, RuleTable::Redirects, project_id).await?;
    let pages = counts_in(&mut *conn, RuleTable::Pages, project_id).await?;
    let mut changes = Vec::new();
    for table in RuleTable::ALL {
        let left = limit.saturating_sub(changes.len());
        if left == 0 {
            break;
        }
        for row in pending_rows(&mut *conn, table, project_id, left).await? {
            changes.push((table, row));
        }
    }
    Ok(Drafts {
        redirects,
        pages,
        changes,
    })
}

/// How a draft change is shown in publish records and audit entries.
pub fn change_view(table: RuleTable, row: &RuleRow) -> Value {
    let action = match row.state {
        DraftState::Created => "create",
        DraftState::Updated => "update",
        DraftState::Deleted => "delete",
        DraftState::Published => "none",
    };
    json!({
        "kind": table.noun(),
        "id": row.id,
        "action": action,
        "before": row.published.as_ref().map(rule_view),
        "after": (row.state != DraftState::Deleted).then(|| rule_view(&row.working)),
    })
}

/// Publishes every draft of a project and bumps its published version, inside the
/// caller's transaction; returns the record and the audit entry to commit with it.
/// A conflict when there is nothing to publish.
pub(crate) async fn publish_in(
    tx: &mut AnyConnection,
    actor: &Actor,
    project_id: &str,
) -> Result<(PublishRecord, AuditEvent)> {
    lock_project(&mut *tx, project_id).await?;
    let drafts = drafts_in(&mut *tx, project_id, PUBLISH_CHANGES_LISTED).await?;
    let total = drafts.redirects.total() + drafts.pages.total();
    if total == 0 {
        return Err(StoreError::Conflict(
            "nothing to publish: there are no drafts".into(),
        ));
    }
    for table in RuleTable::ALL {
        let (k, v, f) = table.cols();
        sqlx::query(&format!(
            "DELETE FROM {} WHERE project_id = $1 AND deleted = 1",
            table.table()
        ))
        .bind(project_id.to_string())
        .execute(&mut *tx)
        .await?;
        sqlx::query(&format!(
            "UPDATE {} SET pub_kind = kind, pub_{k} = {k}, pub_{v} = {v}, pub_{f} = {f}, pending = 0 \
             WHERE project_id = $1 AND pending = 1",
            table.table()
        ))
        .bind(project_id.to_string())
        .execute(&mut *tx)
        .await?;
    }
    let now = now_ms();
    let version: i64 = sqlx::query(
        "UPDATE projects SET published_version = published_version + 1, published_at = $1 \
         WHERE id = $2 RETURNING published_version",
    )
    .bind(now)
    .bind(project_id.to_string())
    .fetch_one(&mut *tx)
    .await?
    .try_get(0)?;
    let changes: Vec<Value> = drafts
        .changes
        .iter()
        .map(|(t, r)| change_view(*t, r))
        .collect();
    let summary = json!({
        "redirects": drafts.redirects,
        "pages": drafts.pages,
        "changes": changes,
        "truncated": total > changes.len() as i64,
    });
    sqlx::query(
        "INSERT INTO project_versions (project_id, version, published_at, author, summary) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(project_id.to_string())
    .bind(version)
    .bind(now)
    .bind(actor.name.clone())
    .bind(summary.to_string())
    .execute(&mut *tx)
    .await?;
    let ev = AuditEvent::new("project.publish", "project", Some(project_id)).after(json!({
        "version": version, "redirects": drafts.redirects, "pages": drafts.pages,
    }));
    Ok((
        PublishRecord {
            version,
            published_at: now,
            author: actor.name.clone(),
            summary,
        },
        ev,
    ))
}

/// Deletes a project's row with its rules, versions, tokens and agents.
pub(crate) async fn delete_project_rows(conn: &mut AnyConnection, project_id: &str) -> Result<()> {
    for table in [
        "redirects",
        "pages",
        "project_versions",
        "project_tokens",
        "project_agents",
    ] {
        sqlx::query(&format!("DELETE FROM {table} WHERE project_id = $1"))
            .bind(project_id.to_string())
            .execute(&mut *conn)
            .await?;
    }
    sqlx::query("DELETE FROM projects WHERE id = $1")
        .bind(project_id.to_string())
        .execute(&mut *conn)
        .await?;
    Ok(())
}

fn escape_like(q: &str) -> String {
    let mut s = String::with_capacity(q.len() + 2);
    s.push('%');
    for c in q.to_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            s.push('\\');
        }
        s.push(c);
    }
    s.push('%');
    s
}

impl SqlStore {
    async fn check_hosts_free(
        conn: &mut AnyConnection,
        hosts: &[String],
        except_project: Option<&str>,
    ) -> Result<()> {
        if hosts.is_empty() {
            return Ok(());
        }
        let rows = sqlx::query("SELECT id, namespace, name, hosts FROM projects")
            .fetch_all(conn)
            .await?;
        for r in rows {
            let id: String = r.try_get("id")?;
            if Some(id.as_str()) == except_project {
                continue;
            }
            let text: String = r.try_get("hosts")?;
            let theirs: Vec<String> =
                serde_json::from_str(&text).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            if let Some(h) = hosts.iter().find(|h| theirs.contains(h)) {
                let ns: String = r.try_get("namespace")?;
                let name: String = r.try_get("name")?;
                return Err(StoreError::Conflict(format!(
                    "host {h} already belongs to project {ns}/{name}"
                )));
            }
        }
        Ok(())
    }
}

pub(crate) fn hosts_text(hosts: &[String]) -> Result<String> {
    serde_json::to_string(hosts).map_err(|e| StoreError::Invalid(e.to_string()))
}

#[async_trait]
impl RedirectStore for SqlStore {
    async fn create_namespace(&self, actor: &Actor, ns: &NamespaceRecord) -> Result<()> {
        let mut tx = self.begin_audited().await?;
        let res = sqlx::query(
            "INSERT INTO namespaces (name, description, version, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(ns.name.clone())
        .bind(ns.description.clone())
        .bind(ns.version)
        .bind(ns.created_at)
        .bind(ns.updated_at)
        .execute(&mut *tx)
        .await;
        match res {
            Err(e) if is_unique_violation(&e) => {
                return Err(StoreError::Conflict(format!(
                    "namespace {} already exists",
                    ns.name
                )))
            }
            other => other?,
        };
        let ev = AuditEvent::new("namespace.create", "namespace", Some(&ns.name))
            .after(json!({"name": ns.name, "description": ns.description}));
        tx.commit(actor, &ev).await?;
        Ok(())
    }

    async fn get_namespace(&self, name: &str) -> Result<Option<NamespaceRecord>> {
        sqlx::query("SELECT name, description, version, created_at, updated_at FROM namespaces WHERE name = $1")
            .bind(name.to_string())
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(ns_from_row)
            .transpose()
    }

    async fn list_namespaces(&self, page: PageRequest) -> Result<Page<NamespaceRecord>> {
        let total = sqlx::query("SELECT COUNT(*) FROM namespaces")
            .fetch_one(&self.pool)
            .await?
            .try_get::<i64, _>(0)?;
        let rows = sqlx::query(
            "SELECT name, description, version, created_at, updated_at FROM namespaces \
             ORDER BY name LIMIT $1 OFFSET $2",
        )
        .bind(page.limit)
        .bind(page.offset)
        .fetch_all(&self.pool)
        .await?;
        Ok(Page {
            items: rows.iter().map(ns_from_row).collect::<Result<_>>()?,
            total,
        })
    }

    async fn update_namespace(
        &self,
        actor: &Actor,
        ns: &NamespaceRecord,
        expected_version: Option<i64>,
    ) -> Result<NamespaceRecord> {
        let mut tx = self.begin_audited().await?;
        let before = sqlx::query(
            "SELECT name, description, version, created_at, updated_at FROM namespaces WHERE name = $1",
        )
        .bind(ns.name.clone())
        .fetch_optional(&mut *tx)
        .await?
        .as_ref()
        .map(ns_from_row)
        .transpose()?
        .ok_or_else(|| StoreError::NotFound(format!("namespace {}", ns.name)))?;
        check_version(expected_version, before.version)?;
        let now = now_ms();
        sqlx::query("UPDATE namespaces SET description = $1, version = version + 1, updated_at = $2 WHERE name = $3")
            .bind(ns.description.clone())
            .bind(now)
            .bind(ns.name.clone())
            .execute(&mut *tx)
            .await?;
        let ev = AuditEvent::new("namespace.update", "namespace", Some(&ns.name))
            .before(json!({"description": before.description}))
            .after(json!({"description": ns.description}));
        tx.commit(actor, &ev).await?;
        Ok(NamespaceRecord {
            description: ns.description.clone(),
            version: before.version + 1,
            updated_at: now,
            ..before
        })
    }

    async fn delete_namespace(&self, actor: &Actor, name: &str) -> Result<()> {
        let mut tx = self.begin_audited().await?;
        let projects = sqlx::query("SELECT COUNT(*) FROM projects WHERE namespace = $1")
            .bind(name.to_string())
            .fetch_one(&mut *tx)
            .await?
            .try_get::<i64, _>(0)?;
        if projects > 0 {
            return Err(StoreError::Conflict(format!(
                "namespace {name} still has {projects} project(s); delete them first"
            )));
        }
        let n = sqlx::query("DELETE FROM namespaces WHERE name = $1")
            .bind(name.to_string())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if n == 0 {
            return Err(StoreError::NotFound(format!("namespace {name}")));
        }
        tx.commit(
            actor,
            &AuditEvent::new("namespace.delete", "namespace", Some(name)),
        )
        .await?;
        Ok(())
    }

    async fn create_project(&self, actor: &Actor, p: &ProjectRecord) -> Result<()> {
        let mut tx = self.begin_audited().await?;
        // Touching the namespace serializes project creation, so the host check holds.
        let n = sqlx::query("UPDATE namespaces SET updated_at = updated_at WHERE name = $1")
            .bind(p.namespace.clone())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if n == 0 {
            return Err(StoreError::NotFound(format!("namespace {}", p.namespace)));
        }
        Self::check_hosts_free(&mut tx, &p.hosts, None).await?;
        let res = sqlx::query(&format!(
            "INSERT INTO projects ({PROJECT_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
        ))
        .bind(p.id.clone())
        .bind(p.namespace.clone())
        .bind(p.name.clone())
        .bind(p.description.clone())
        .bind(hosts_text(&p.hosts)?)
        .bind(p.published_version)
        .bind(p.published_at)
        .bind(p.version)
        .bind(p.created_at)
        .bind(p.updated_at)
        .execute(&mut *tx)
        .await;
        match res {
            Err(e) if is_unique_violation(&e) => {
                return Err(StoreError::Conflict(format!(
                    "project {} already exists in namespace {}",
                    p.name, p.namespace
                )))
            }
            other => other?,
        };
        let ev = AuditEvent::new(
            "project.create",
            "project",
            Some(&format!("{}/{}", p.namespace, p.name)),
        )
        .after(p.audit_view());
        tx.commit(actor, &ev).await?;
        Ok(())
    }

    async fn get_project(&self, namespace: &str, name: &str) -> Result<Option<ProjectRecord>> {
        sqlx::query(&format!(
            "SELECT {PROJECT_COLS} FROM projects WHERE namespace = $1 AND name = $2"
        ))
        .bind(namespace.to_string())
        .bind(name.to_string())
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(project_from_row)
        .transpose()
    }

    async fn list_projects(
        &self,
        namespace: &str,
        page: PageRequest,
    ) -> Result<Page<ProjectRecord>> {
        let total = sqlx::query("SELECT COUNT(*) FROM projects WHERE namespace = $1")
            .bind(namespace.to_string())
            .fetch_one(&self.pool)
            .await?
            .try_get::<i64, _>(0)?;
        let rows = sqlx::query(&format!(
            "SELECT {PROJECT_COLS} FROM projects WHERE namespace = $1 ORDER BY name LIMIT $2 OFFSET $3"
        ))
        .bind(namespace.to_string())
        .bind(page.limit)
        .bind(page.offset)
        .fetch_all(&self.pool)
        .await?;
        Ok(Page {
            items: rows.iter().map(project_from_row).collect::<Result<_>>()?,
            total,
        })
    }

    async fn all_projects(&self) -> Result<Vec<ProjectRecord>> {
        sqlx::query(&format!(
            "SELECT {PROJECT_COLS} FROM projects ORDER BY namespace, name"
        ))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(project_from_row)
        .collect()
    }

    async fn update_project(
        &self,
        actor: &Actor,
        p: &ProjectRecord,
        expected_version: Option<i64>,
    ) -> Result<ProjectRecord> {
        let mut tx = self.begin_audited().await?;
        lock_project(&mut tx, &p.id).await?;
        let before = sqlx::query(&format!(
            "SELECT {PROJECT_COLS} FROM projects WHERE id = $1"
        ))
        .bind(p.id.clone())
        .fetch_one(&mut *tx)
        .await
        .map_err(StoreError::from)
        .and_then(|r| project_from_row(&r))?;
        check_version(expected_version, before.version)?;
        Self::check_hosts_free(&mut tx, &p.hosts, Some(&p.id)).await?;
        let now = now_ms();
        sqlx::query(
            "UPDATE projects SET description = $1, hosts = $2, version = version + 1, updated_at = $3 WHERE id = $4",
        )
        .bind(p.description.clone())
        .bind(hosts_text(&p.hosts)?)
        .bind(now)
        .bind(p.id.clone())
        .execute(&mut *tx)
        .await?;
        let after = ProjectRecord {
            description: p.description.clone(),
            hosts: p.hosts.clone(),
            version: before.version + 1,
            updated_at: now,
            ..before.clone()
        };
        let ev = AuditEvent::new(
            "project.update",
            "project",
            Some(&format!("{}/{}", p.namespace, p.name)),
        )
        .before(before.audit_view())
        .after(after.audit_view());
        tx.commit(actor, &ev).await?;
        Ok(after)
    }

    async fn delete_project(&self, actor: &Actor, project_id: &str) -> Result<()> {
        let mut tx = self.begin_audited().await?;
        lock_project(&mut tx, project_id).await?;
        let before = sqlx::query(&format!(
            "SELECT {PROJECT_COLS} FROM projects WHERE id = $1"
        ))
        .bind(project_id.to_string())
        .fetch_one(&mut *tx)
        .await
        .map_err(StoreError::from)
        .and_then(|r| project_from_row(&r))?;
        delete_project_rows(&mut tx, project_id).await?;
        let ev = AuditEvent::new(
            "project.delete",
            "project",
            Some(&format!("{}/{}", before.namespace, before.name)),
        )
        .before(before.audit_view());
        tx.commit(actor, &ev).await?;
        Ok(())
    }

    async fn list_rules(
        &self,
        table: RuleTable,
        project_id: &str,
        filter: &RuleFilter,
        page: PageRequest,
    ) -> Result<Page<RuleRow>> {
        let (k, v, _) = table.cols();
        let mut wh = String::from("project_id = $1");
        let mut args: Vec<String> = vec![project_id.to_string()];
        if !filter.include_deleted {
            wh.push_str(" AND deleted = 0");
        }
        if filter.drafts_only {
            wh.push_str(" AND pending = 1");
        }
        if let Some(kind) = &filter.kind {
            args.push(kind.clone());
            wh.push_str(&format!(" AND kind = ${}", args.len()));
        }
        if let Some(q) = filter.q.as_deref().filter(|q| !q.is_empty()) {
            args.push(escape_like(q));
            let n = args.len();
            wh.push_str(&format!(
                " AND (LOWER({k}) LIKE ${n} ESCAPE '\\' OR LOWER({v}) LIKE ${n} ESCAPE '\\')"
            ));
        }
        let count_sql = format!("SELECT COUNT(*) FROM {} WHERE {wh}", table.table());
        let mut cq = sqlx::query(&count_sql);
        for a in &args {
            cq = cq.bind(a.clone());
        }
        let total: i64 = cq.fetch_one(&self.pool).await?.try_get(0)?;
        let sql = format!(
            "SELECT {} FROM {} WHERE {wh} ORDER BY id LIMIT ${} OFFSET ${}",
            rule_cols(table),
            table.table(),
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
            items: rows.iter().map(rule_from_row).collect::<Result<_>>()?,
            total,
        })
    }

    async fn get_rule(
        &self,
        table: RuleTable,
        project_id: &str,
        id: i64,
    ) -> Result<Option<RuleRow>> {
        let mut conn = self.pool.acquire().await?;
        get_rule_in(&mut conn, table, project_id, id).await
    }

    async fn rule_by_key(
        &self,
        table: RuleTable,
        project_id: &str,
        key: &str,
    ) -> Result<Option<RuleRow>> {
        let mut conn = self.pool.acquire().await?;
        Ok(get_rule_by_key(&mut conn, table, project_id, key)
            .await?
            .filter(|r| r.state != DraftState::Deleted))
    }

    async fn create_rule(
        &self,
        actor: &Actor,
        table: RuleTable,
        project_id: &str,
        rule: &RuleData,
    ) -> Result<RuleRow> {
        let mut tx = self.begin_audited().await?;
        lock_project(&mut tx, project_id).await?;
        let id = match get_rule_by_key(&mut tx, table, project_id, &rule.key).await? {
            // A rule deleted in the draft comes back as an edit of the published one.
            Some(row) if row.state == DraftState::Deleted => {
                write_working(&mut tx, table, &row, rule).await?;
                row.id
            }
            Some(_) => {
                let (k, _, _) = table.cols();
                return Err(StoreError::Conflict(format!(
                    "a {} with {k} {:?} already exists",
                    table.noun(),
                    rule.key
                )));
            }
            None => {
                insert_rules(&mut tx, table, project_id, &[rule]).await?;
                get_rule_by_key(&mut tx, table, project_id, &rule.key)
                    .await?
                    .map(|r| r.id)
                    .ok_or_else(|| StoreError::Corrupt("inserted rule not found".into()))?
            }
        };
        let row = get_rule_in(&mut tx, table, project_id, id)
            .await?
            .ok_or_else(|| StoreError::Corrupt("rule vanished".into()))?;
        let ev = AuditEvent::new(
            &format!("{}.create", table.noun()),
            table.noun(),
            Some(&id.to_string()),
        )
        .after(json!({"project_id": project_id, "rule": rule_view(rule)}));
        tx.commit(actor, &ev).await?;
        Ok(row)
    }

    async fn update_rule(
        &self,
        actor: &Actor,
        table: RuleTable,
        project_id: &str,
        id: i64,
        rule: &RuleData,
    ) -> Result<RuleRow> {
        let mut tx = self.begin_audited().await?;
        lock_project(&mut tx, project_id).await?;
        let row = get_rule_in(&mut tx, table, project_id, id)
            .await?
            .filter(|r| r.state != DraftState::Deleted)
            .ok_or_else(|| StoreError::NotFound(format!("{} {id}", table.noun())))?;
        write_working(&mut tx, table, &row, rule).await?;
        let after = get_rule_in(&mut tx, table, project_id, id)
            .await?
            .ok_or_else(|| StoreError::Corrupt("rule vanished".into()))?;
        let ev = AuditEvent::new(
            &format!("{}.update", table.noun()),
            table.noun(),
            Some(&id.to_string()),
        )
        .before(json!({"project_id": project_id, "rule": rule_view(&row.working)}))
        .after(json!({"project_id": project_id, "rule": rule_view(rule)}));
        tx.commit(actor, &ev).await?;
        Ok(after)
    }

    async fn delete_rule(
        &self,
        actor: &Actor,
        table: RuleTable,
        project_id: &str,
        id: i64,
    ) -> Result<()> {
        let mut tx = self.begin_audited().await?;
        lock_project(&mut tx, project_id).await?;
        let row = get_rule_in(&mut tx, table, project_id, id)
            .await?
            .filter(|r| r.state != DraftState::Deleted)
            .ok_or_else(|| StoreError::NotFound(format!("{} {id}", table.noun())))?;
        let sql = if row.published.is_none() {
            format!("DELETE FROM {} WHERE id = $1", table.table())
        } else {
            format!(
                "UPDATE {} SET deleted = 1, pending = 1, updated_at = $2 WHERE id = $1",
                table.table()
            )
        };
        let mut q = sqlx::query(&sql).bind(id);
        if row.published.is_some() {
            q = q.bind(now_ms());
        }
        q.execute(&mut *tx).await?;
        let ev = AuditEvent::new(
            &format!("{}.delete", table.noun()),
            table.noun(),
            Some(&id.to_string()),
        )
        .before(json!({"project_id": project_id, "rule": rule_view(&row.working)}));
        tx.commit(actor, &ev).await?;
        Ok(())
    }

    async fn import_rules(
        &self,
        actor: &Actor,
        table: RuleTable,
        project_id: &str,
        rules: &[RuleData],
        replace: bool,
    ) -> Result<ImportSummary> {
        let mut tx = self.begin_audited().await?;
        lock_project(&mut tx, project_id).await?;
        let existing = {
            let sql = format!(
                "SELECT {} FROM {} WHERE project_id = $1",
                rule_cols(table),
                table.table()
            );
            sqlx::query(&sql)
                .bind(project_id.to_string())
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(rule_from_row)
                .collect::<Result<Vec<_>>>()?
        };
        let mut by_key: std::collections::HashMap<&str, &RuleRow> = existing
            .iter()
            .map(|r| (r.working.key.as_str(), r))
            .collect();
        let mut summary = ImportSummary::default();
        let mut new_rules = Vec::new();
        for rule in rules {
            match by_key.remove(rule.key.as_str()) {
                Some(row) if row.working == *rule && row.state != DraftState::Deleted => {
                    summary.unchanged += 1;
                }
                Some(row) => {
                    write_working(&mut tx, table, row, rule).await?;
                    summary.updated += 1;
                }
                None => new_rules.push(rule),
            }
        }
        if replace {
            let mut leftover: Vec<&RuleRow> = by_key
                .into_values()
                .filter(|r| r.state != DraftState::Deleted)
                .collect();
            leftover.sort_by_key(|r| r.id);
            for row in leftover {
                let sql = if row.published.is_none() {
                    format!("DELETE FROM {} WHERE id = $1", table.table())
                } else {
                    format!(
                        "UPDATE {} SET deleted = 1, pending = 1 WHERE id = $1",
                        table.table()
                    )
                };
                sqlx::query(&sql).bind(row.id).execute(&mut *tx).await?;
                summary.deleted += 1;
            }
        }
        insert_rules(&mut tx, table, project_id, &new_rules).await?;
        summary.created = new_rules.len() as u64;
        let ev = AuditEvent::new(
            &format!("{}.import", table.noun()),
            "project",
            Some(project_id),
        )
        .after(json!({"summary": summary, "replace": replace, "rows": rules.len()}));
        tx.commit(actor, &ev).await?;
        Ok(summary)
    }

    async fn working_rules(&self, table: RuleTable, project_id: &str) -> Result<Vec<RuleData>> {
        let (k, v, f) = table.cols();
        let sql = format!(
            "SELECT kind, {k}, {v}, {f} FROM {} WHERE project_id = $1 AND deleted = 0 ORDER BY id",
            table.table()
        );
        sqlx::query(&sql)
            .bind(project_id.to_string())
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| {
                Ok(RuleData {
                    kind: r.try_get(0)?,
                    key: r.try_get(1)?,
                    value: r.try_get(2)?,
                    flavor: r.try_get(3)?,
                })
            })
            .collect()
    }

    async fn published_rules(
        &self,
        table: RuleTable,
        project_id: &str,
        page: PageRequest,
    ) -> Result<Page<RuleData>> {
        let (k, v, f) = table.cols();
        // One read transaction, so the total and the page agree.
        let mut tx = self.begin_write().await?;
        let total: i64 = sqlx::query(&format!(
            "SELECT COUNT(*) FROM {} WHERE project_id = $1 AND pub_{k} IS NOT NULL",
            table.table()
        ))
        .bind(project_id.to_string())
        .fetch_one(&mut *tx)
        .await?
        .try_get(0)?;
        let sql = format!(
            "SELECT pub_kind, pub_{k}, pub_{v}, pub_{f} FROM {} \
             WHERE project_id = $1 AND pub_{k} IS NOT NULL ORDER BY id LIMIT $2 OFFSET $3",
            table.table()
        );
        let rows = sqlx::query(&sql)
            .bind(project_id.to_string())
            .bind(page.limit)
            .bind(page.offset)
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        let items = rows
            .iter()
            .map(|r| {
                Ok(RuleData {
                    kind: r.try_get(0)?,
                    key: r.try_get(1)?,
                    value: r.try_get(2)?,
                    flavor: r.try_get(3)?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Page { items, total })
    }

    async fn drafts(&self, project_id: &str, limit: usize) -> Result<Drafts> {
        let mut conn = self.pool.acquire().await?;
        drafts_in(&mut conn, project_id, limit).await
    }

    async fn publish(&self, actor: &Actor, project_id: &str) -> Result<PublishRecord> {
        let mut tx = self.begin_audited().await?;
        let (rec, ev) = publish_in(&mut tx, actor, project_id).await?;
        tx.commit(actor, &ev).await?;
        Ok(rec)
    }

    async fn discard_drafts(&self, actor: &Actor, project_id: &str) -> Result<i64> {
        let mut tx = self.begin_audited().await?;
        lock_project(&mut tx, project_id).await?;
        let mut dropped = 0;
        for table in RuleTable::ALL {
            let (k, v, f) = table.cols();
            dropped += sqlx::query(&format!(
                "DELETE FROM {} WHERE project_id = $1 AND pending = 1 AND pub_{k} IS NULL",
                table.table()
            ))
            .bind(project_id.to_string())
            .execute(&mut *tx)
            .await?
            .rows_affected();
            dropped += sqlx::query(&format!(
                "UPDATE {} SET kind = pub_kind, {k} = pub_{k}, {v} = pub_{v}, {f} = pub_{f}, \
                 deleted = 0, pending = 0 WHERE project_id = $1 AND pending = 1",
                table.table()
            ))
            .bind(project_id.to_string())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        let dropped = i64::try_from(dropped).unwrap_or(i64::MAX);
        let ev = AuditEvent::new("project.discard", "project", Some(project_id))
            .after(json!({"discarded": dropped}));
        tx.commit(actor, &ev).await?;
        Ok(dropped)
    }

    async fn list_publishes(
        &self,
        project_id: &str,
        page: PageRequest,
    ) -> Result<Page<PublishRecord>> {
        let total: i64 = sqlx::query("SELECT COUNT(*) FROM project_versions WHERE project_id = $1")
            .bind(project_id.to_string())
            .fetch_one(&self.pool)
            .await?
            .try_get(0)?;
        let rows = sqlx::query(
            "SELECT version, published_at, author, summary FROM project_versions \
             WHERE project_id = $1 ORDER BY version DESC LIMIT $2 OFFSET $3",
        )
        .bind(project_id.to_string())
        .bind(page.limit)
        .bind(page.offset)
        .fetch_all(&self.pool)
        .await?;
        Ok(Page {
            items: rows.iter().map(publish_from_row).collect::<Result<_>>()?,
            total,
        })
    }

    async fn create_project_token(&self, actor: &Actor, t: &ProjectTokenRecord) -> Result<()> {
        let mut tx = self.begin_audited().await?;
        lock_project(&mut tx, &t.project_id).await?;
        sqlx::query(
            "INSERT INTO project_tokens (id, project_id, name, token_hash, preview, scopes, \
             created_at, expires_at, last_used_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(t.id.clone())
        .bind(t.project_id.clone())
        .bind(t.name.clone())
        .bind(t.token_hash.clone())
        .bind(t.preview.clone())
        .bind(serde_json::to_string(&t.scopes).map_err(|e| StoreError::Invalid(e.to_string()))?)
        .bind(t.created_at)
        .bind(t.expires_at)
        .bind(t.last_used_at)
        .execute(&mut *tx)
        .await?;
        let ev = AuditEvent::new("project_token.create", "project_token", Some(&t.id))
            .after(t.audit_view());
        tx.commit(actor, &ev).await?;
        Ok(())
    }

    async fn list_project_tokens(&self, project_id: &str) -> Result<Vec<ProjectTokenRecord>> {
        sqlx::query("SELECT * FROM project_tokens WHERE project_id = $1 ORDER BY created_at, id")
            .bind(project_id.to_string())
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(token_from_row)
            .collect()
    }

    async fn find_project_token(&self, token_hash: &str) -> Result<Option<ProjectTokenRecord>> {
        sqlx::query("SELECT * FROM project_tokens WHERE token_hash = $1")
            .bind(token_hash.to_string())
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(token_from_row)
            .transpose()
    }

    async fn delete_project_token(&self, actor: &Actor, project_id: &str, id: &str) -> Result<()> {
        let mut tx = self.begin_audited().await?;
        let before = sqlx::query("SELECT * FROM project_tokens WHERE id = $1 AND project_id = $2")
            .bind(id.to_string())
            .bind(project_id.to_string())
            .fetch_optional(&mut *tx)
            .await?
            .as_ref()
            .map(token_from_row)
            .transpose()?
            .ok_or_else(|| StoreError::NotFound(format!("token {id}")))?;
        sqlx::query("DELETE FROM project_tokens WHERE id = $1")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        let ev = AuditEvent::new("project_token.delete", "project_token", Some(id))
            .before(before.audit_view());
        tx.commit(actor, &ev).await?;
        Ok(())
    }

    async fn touch_project_token(&self, id: &str, at: i64) -> Result<()> {
        sqlx::query("UPDATE project_tokens SET last_used_at = $1 WHERE id = $2")
            .bind(at)
            .bind(id.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn report_agent(&self, actor: &Actor, a: &AgentRecord) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let updated = sqlx::query(
            "UPDATE project_agents SET kind = $1, loaded_version = $2, status = $3, error = $4, \
             load_duration_ns = $5, updated_at = $6, last_hit_at = $7 WHERE project_id = $8 AND name = $9",
        )
        .bind(a.kind.clone())
        .bind(a.loaded_version)
        .bind(a.status.clone())
        .bind(a.error.clone())
        .bind(a.load_duration_ns)
        .bind(a.updated_at)
        .bind(a.last_hit_at)
        .bind(a.project_id.clone())
        .bind(a.name.clone())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let created = updated == 0;
        if created {
            sqlx::query(
                "INSERT INTO project_agents (project_id, name, kind, loaded_version, status, error, \
                 load_duration_ns, created_at, updated_at, last_hit_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            )
            .bind(a.project_id.clone())
            .bind(a.name.clone())
            .bind(a.kind.clone())
            .bind(a.loaded_version)
            .bind(a.status.clone())
            .bind(a.error.clone())
            .bind(a.load_duration_ns)
            .bind(a.created_at)
            .bind(a.updated_at)
            .bind(a.last_hit_at)
            .execute(&mut *tx)
            .await?;
            let ev = AuditEvent::new("agent.register", "agent", Some(&a.name)).after(json!({
                "project_id": a.project_id, "name": a.name, "type": a.kind, "version": a.loaded_version,
            }));
            insert_audit(&mut tx, actor, &ev).await?;
        }
        tx.commit().await?;
        Ok(created)
    }

    async fn hit_agent(&self, project_id: &str, name: &str, at: i64) -> Result<()> {
        let n = sqlx::query(
            "UPDATE project_agents SET last_hit_at = $1 WHERE project_id = $2 AND name = $3",
        )
        .bind(at)
        .bind(project_id.to_string())
        .bind(name.to_string())
        .execute(&self.pool)
        .await?
        .rows_affected();
        if n == 0 {
            let res = sqlx::query(
                "INSERT INTO project_agents (project_id, name, kind, loaded_version, status, error, \
                 load_duration_ns, created_at, updated_at, last_hit_at) \
                 VALUES ($1, $2, '', 0, '', '', 0, $3, $3, $3)",
            )
            .bind(project_id.to_string())
            .bind(name.to_string())
            .bind(at)
            .execute(&self.pool)
            .await;
            match res {
                // Another hit of the same new agent won the race: that row serves.
                Err(e) if is_unique_violation(&e) => {}
                other => {
                    other?;
                }
            }
        }
        Ok(())
    }

    async fn list_agents(&self, project_id: &str) -> Result<Vec<AgentRecord>> {
        sqlx::query("SELECT * FROM project_agents WHERE project_id = $1 ORDER BY name")
            .bind(project_id.to_string())
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(agent_from_row)
            .collect()
    }

    async fn delete_agent(&self, actor: &Actor, project_id: &str, name: &str) -> Result<()> {
        let mut tx = self.begin_audited().await?;
        let n = sqlx::query("DELETE FROM project_agents WHERE project_id = $1 AND name = $2")
            .bind(project_id.to_string())
            .bind(name.to_string())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if n == 0 {
            return Err(StoreError::NotFound(format!("agent {name}")));
        }
        tx.commit(actor, &AuditEvent::new("agent.delete", "agent", Some(name)))
            .await?;
        Ok(())
    }
}
