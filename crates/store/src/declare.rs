//! A declarative apply (`fleetgate config apply`): the whole configuration and the
//! redirect projects with their published rules, written in one transaction with
//! one revision (when the configuration changes) and the audit entries of every
//! change, or not at all.
//!
//! Redirect projects live outside configuration revisions: a project's rules are
//! drafts until published. A declaration gives each project's published rules;
//! the apply writes the differences as drafts and publishes them in the same
//! transaction, so agents and the gateway never see half of it. A project whose
//! rules must change, or that must be deleted, while it holds unpublished
//! drafts is refused (a conflict): the apply would otherwise publish or drop
//! someone's pending work.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use fleetgate_core::time::now_ms;
use serde::Serialize;
use serde_json::{json, Value};
use sqlx::{AnyConnection, Row};

use crate::config::{
    insert_revision, next_revision, replace_rows, resource_set_in, CommittedRevision, ConfigCheck,
    ResourceSet, Stored, Verdict,
};
use crate::redirects::{
    delete_project_rows, hosts_text, insert_rules, lock_project, project_from_row, publish_in,
    rule_cols, rule_from_row, write_working, PROJECT_COLS,
};
use crate::sql::{insert_audit, SqlStore};
use crate::{
    Actor, AuditEvent, ChangeCounts, DraftState, ProjectRecord, Result, RuleData, RuleRow,
    RuleTable, StoreError,
};

/// One redirect project as a declaration wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeclaredProject {
    pub namespace: String,
    pub name: String,
    pub description: String,
    pub hosts: Vec<String>,
    /// The published redirects; sources unique.
    pub redirects: Vec<RuleData>,
    /// The published pages; paths unique.
    pub pages: Vec<RuleData>,
    /// The id the project gets if it is created.
    pub new_id: String,
}

/// What a declarative apply writes.
#[derive(Debug, Clone, Copy)]
pub struct Declaration<'a> {
    /// The whole configuration; `None` keeps it as it is.
    pub set: Option<&'a ResourceSet>,
    /// Every redirect project (those not listed are deleted with their rules,
    /// tokens and agents); `None` keeps the projects as they are. Namespaces are
    /// created as needed and never deleted.
    pub projects: Option<&'a [DeclaredProject]>,
    /// The revision the declaration was made against: a conflict when the
    /// configuration is at another one.
    pub expected_revision: Option<i64>,
    /// The audit action of the configuration change.
    pub action: &'a str,
    /// Check everything as for real, then write nothing.
    pub dry_run: bool,
}

/// What happened to one project.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProjectChange {
    /// `namespace/name`.
    pub project: String,
    /// `create`, `update` (description or hosts, or rules only) or `delete`.
    pub action: String,
    /// The published version after the apply's publish, if it published.
    pub published_version: Option<i64>,
    pub redirects: ChangeCounts,
    pub pages: ChangeCounts,
}

/// What a declarative apply did (or, for a dry run, would do).
#[derive(Debug, Clone, PartialEq)]
pub struct Declared {
    /// The configuration; `written` tells whether a revision was recorded.
    pub committed: CommittedRevision,
    /// The projects that changed, in the declaration's order then deletions.
    pub projects: Vec<ProjectChange>,
}

/// Rows of one table of a project.
async fn rows_of(
    conn: &mut AnyConnection,
    table: RuleTable,
    project_id: &str,
) -> Result<Vec<RuleRow>> {
    let sql = format!(
        "SELECT {} FROM {} WHERE project_id = $1 ORDER BY id",
        rule_cols(table),
        table.table()
    );
    sqlx::query(&sql)
        .bind(project_id.to_string())
        .fetch_all(conn)
        .await?
        .iter()
        .map(rule_from_row)
        .collect()
}

/// Makes one table's published set `desired` as drafts (to be published by the
/// caller); the counts of what changed.
async fn declare_rules(
    conn: &mut AnyConnection,
    table: RuleTable,
    project: &str,
    project_id: &str,
    desired: &[RuleData],
) -> Result<ChangeCounts> {
    let mut wanted: BTreeMap<&str, &RuleData> = BTreeMap::new();
    for r in desired {
        if wanted.insert(r.key.as_str(), r).is_some() {
            let (k, _, _) = table.cols();
            return Err(StoreError::Invalid(format!(
                "project {project}: two {}s with {k} {:?}",
                table.noun(),
                r.key
            )));
        }
    }
    let rows = rows_of(&mut *conn, table, project_id).await?;
    let published: BTreeMap<&str, &RuleData> = rows
        .iter()
        .filter_map(|r| r.published.as_ref().map(|p| (p.key.as_str(), p)))
        .collect();
    if published == wanted {
        return Ok(ChangeCounts::default());
    }
    let drafts = rows
        .iter()
        .filter(|r| r.state != DraftState::Published)
        .count();
    if drafts > 0 {
        return Err(StoreError::Conflict(format!(
            "project {project} has {drafts} unpublished {} change(s): publish or discard them before applying a file that changes its {}s",
            table.noun(),
            table.noun()
        )));
    }
    let mut counts = ChangeCounts::default();
    let mut by_key: HashMap<&str, &RuleRow> =
        rows.iter().map(|r| (r.working.key.as_str(), r)).collect();
    let mut new_rules = Vec::new();
    for rule in desired {
        match by_key.remove(rule.key.as_str()) {
            Some(row) if row.working == *rule => {}
            Some(row) => {
                write_working(&mut *conn, table, row, rule).await?;
                counts.updated += 1;
            }
            None => new_rules.push(rule),
        }
    }
    let mut leftover: Vec<&RuleRow> = by_key.into_values().collect();
    leftover.sort_by_key(|r| r.id);
    for row in leftover {
        sqlx::query(&format!(
            "UPDATE {} SET deleted = 1, pending = 1 WHERE id = $1",
            table.table()
        ))
        .bind(row.id)
        .execute(&mut *conn)
        .await?;
        counts.deleted += 1;
    }
    insert_rules(&mut *conn, table, project_id, &new_rules).await?;
    counts.created = new_rules.len() as i64;
    Ok(counts)
}

/// Makes the projects what `declared` says, inside the caller's transaction;
/// returns the changes and their audit entries.
async fn declare_projects(
    conn: &mut AnyConnection,
    actor: &Actor,
    declared: &[DeclaredProject],
) -> Result<(Vec<ProjectChange>, Vec<AuditEvent>)> {
    let mut seen = HashSet::new();
    let mut host_owner: HashMap<&str, String> = HashMap::new();
    for p in declared {
        let name = format!("{}/{}", p.namespace, p.name);
        if !seen.insert((p.namespace.as_str(), p.name.as_str())) {
            return Err(StoreError::Invalid(format!(
                "project {name} is declared twice"
            )));
        }
        for h in &p.hosts {
            if let Some(other) = host_owner.insert(h.as_str(), name.clone()) {
                if other != name {
                    return Err(StoreError::Conflict(format!(
                        "host {h} is declared for projects {other} and {name}"
                    )));
                }
            }
        }
    }
    // Namespace rows serialize project creation elsewhere; taking every
    // project's row here keeps concurrent edits out until the commit.
    let existing: Vec<ProjectRecord> = sqlx::query(&format!(
        "SELECT {PROJECT_COLS} FROM projects ORDER BY namespace, name"
    ))
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(project_from_row)
    .collect::<Result<_>>()?;
    let mut changes = Vec::new();
    let mut audits = Vec::new();
    let now = now_ms();
    let mut deletions = Vec::new();
    for old in &existing {
        if !seen.contains(&(old.namespace.as_str(), old.name.as_str())) {
            lock_project(&mut *conn, &old.id).await?;
            let name = format!("{}/{}", old.namespace, old.name);
            // Unpublished work is not deleted by a file that never saw it.
            let mut drafts = 0;
            for table in RuleTable::ALL {
                drafts += sqlx::query(&format!(
                    "SELECT COUNT(*) FROM {} WHERE project_id = $1 AND pending = 1",
                    table.table()
                ))
                .bind(old.id.clone())
                .fetch_one(&mut *conn)
                .await?
                .try_get::<i64, _>(0)?;
            }
            if drafts > 0 {
                return Err(StoreError::Conflict(format!(
                    "project {name} has {drafts} unpublished change(s): publish or discard them before applying a file that deletes it"
                )));
            }
            delete_project_rows(&mut *conn, &old.id).await?;
            audits.push(
                AuditEvent::new("project.delete", "project", Some(&name)).before(old.audit_view()),
            );
            deletions.push(ProjectChange {
                project: name,
                action: "delete".into(),
                published_version: None,
                redirects: ChangeCounts::default(),
                pages: ChangeCounts::default(),
            });
        }
    }
    for p in declared {
        let name = format!("{}/{}", p.namespace, p.name);
        let found = existing
            .iter()
            .find(|o| o.namespace == p.namespace && o.name == p.name);
        let (id, mut action) = match found {
            Some(old) => {
                lock_project(&mut *conn, &old.id).await?;
                if old.description != p.description || old.hosts != p.hosts {
                    sqlx::query(
                        "UPDATE projects SET description = $1, hosts = $2, version = version + 1, \
                         updated_at = $3 WHERE id = $4",
                    )
                    .bind(p.description.clone())
                    .bind(hosts_text(&p.hosts)?)
                    .bind(now)
                    .bind(old.id.clone())
                    .execute(&mut *conn)
                    .await?;
                    let after = ProjectRecord {
                        description: p.description.clone(),
                        hosts: p.hosts.clone(),
                        ..old.clone()
                    };
                    audits.push(
                        AuditEvent::new("project.update", "project", Some(&name))
                            .before(old.audit_view())
                            .after(after.audit_view()),
                    );
                    (old.id.clone(), Some("update"))
                } else {
                    (old.id.clone(), None)
                }
            }
            None => {
                let ns_exists = sqlx::query("SELECT COUNT(*) FROM namespaces WHERE name = $1")
                    .bind(p.namespace.clone())
                    .fetch_one(&mut *conn)
                    .await?
                    .try_get::<i64, _>(0)?
                    > 0;
                if !ns_exists {
                    sqlx::query(
                        "INSERT INTO namespaces (name, description, version, created_at, updated_at) \
                         VALUES ($1, '', 1, $2, $2)",
                    )
                    .bind(p.namespace.clone())
                    .bind(now)
                    .execute(&mut *conn)
                    .await?;
                    audits.push(
                        AuditEvent::new("namespace.create", "namespace", Some(&p.namespace))
                            .after(json!({"name": p.namespace, "description": ""})),
                    );
                }
                let rec = ProjectRecord {
                    id: p.new_id.clone(),
                    namespace: p.namespace.clone(),
                    name: p.name.clone(),
                    description: p.description.clone(),
                    hosts: p.hosts.clone(),
                    published_version: 1,
                    published_at: None,
                    version: 1,
                    created_at: now,
                    updated_at: now,
                };
                sqlx::query(&format!(
                    "INSERT INTO projects ({PROJECT_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
                ))
                .bind(rec.id.clone())
                .bind(rec.namespace.clone())
                .bind(rec.name.clone())
                .bind(rec.description.clone())
                .bind(hosts_text(&rec.hosts)?)
                .bind(rec.published_version)
                .bind(rec.published_at)
                .bind(rec.version)
                .bind(rec.created_at)
                .bind(rec.updated_at)
                .execute(&mut *conn)
                .await?;
                audits.push(
                    AuditEvent::new("project.create", "project", Some(&name))
                        .after(rec.audit_view()),
                );
                (rec.id, Some("create"))
            }
        };
        let redirects =
            declare_rules(&mut *conn, RuleTable::Redirects, &name, &id, &p.redirects).await?;
        let pages = declare_rules(&mut *conn, RuleTable::Pages, &name, &id, &p.pages).await?;
        let mut published_version = None;
        if redirects.total() + pages.total() > 0 {
            let (rec, ev) = publish_in(&mut *conn, actor, &id).await?;
            audits.push(ev);
            published_version = Some(rec.version);
            action = action.or(Some("update"));
        }
        if let Some(action) = action {
            changes.push(ProjectChange {
                project: name,
                action: action.into(),
                published_version,
                redirects,
                pages,
            });
        }
    }
    changes.extend(deletions);
    Ok((changes, audits))
}

impl SqlStore {
    pub(crate) async fn declare_in(
        &self,
        actor: &Actor,
        d: Declaration<'_>,
        message: &str,
        check: &dyn ConfigCheck,
    ) -> Result<Declared> {
        let mut tx = self.begin_write().await?;
        // The counter row is the lock every configuration write takes first.
        let number = next_revision(&mut tx).await?;
        let current = number - 1;
        if let Some(expected) = d.expected_revision {
            if expected != current {
                return Err(StoreError::Conflict(format!(
                    "the configuration is at revision {current}, not {expected}: it changed since it was read; nothing was written"
                )));
            }
        }
        let before = match self.committed_config.of(current) {
            Some(set) => set,
            None => Arc::new(resource_set_in(&mut tx).await?),
        };
        let mut after = (*before).clone();
        let mut config_changed = false;
        if let Some(set) = d.set {
            let mut wanted = set.clone();
            wanted.retain(|_, objects| !objects.is_empty());
            if wanted != *before && check.check(&before, &wanted).await? == Verdict::Write {
                after = wanted;
                config_changed = true;
            }
        }
        let now = now_ms();
        if config_changed {
            replace_rows(&mut tx, &before, &after, now).await?;
        }
        let (projects, audits) = match d.projects {
            Some(declared) => declare_projects(&mut tx, actor, declared).await?,
            None => (Vec::new(), Vec::new()),
        };
        if d.dry_run || (!config_changed && projects.is_empty()) {
            tx.rollback().await?;
            let after = Arc::new(after);
            return Ok(Declared {
                committed: CommittedRevision {
                    number: if config_changed { number } else { current },
                    written: false,
                    before,
                    after,
                    record: None,
                },
                projects,
            });
        }
        if config_changed {
            insert_revision(&mut tx, number, actor, message, Stored::Keyframe(&after)).await?;
            let to_value = |s: &ResourceSet| serde_json::to_value(s).unwrap_or(Value::Null);
            let ev = AuditEvent::new(d.action, "config", Some(&number.to_string()))
                .before(to_value(&before))
                .after(to_value(&after));
            insert_audit(&mut tx, actor, &ev).await?;
        } else {
            // Only projects changed: no revision, so the number goes back.
            sqlx::query("UPDATE counters SET value = value - 1 WHERE name = 'revision'")
                .execute(&mut *tx)
                .await?;
        }
        for ev in &audits {
            insert_audit(&mut tx, actor, ev).await?;
        }
        tx.commit().await?;
        let after = Arc::new(after);
        let number = if config_changed {
            self.committed_config.keep(number, after.clone());
            number
        } else {
            self.committed_config.keep(current, before.clone());
            current
        };
        Ok(Declared {
            committed: CommittedRevision {
                number,
                written: config_changed,
                before,
                after,
                record: None,
            },
            projects,
        })
    }
}
