//! The configuration and its revisions: every change is one revision, written in
//! one transaction with its audit entry after a [`ConfigCheck`] judged it (see
//! [`ConfigStore::write_config`]).
//!
//! # How revisions are stored
//!
//! A revision row holds either the whole configuration (`snapshot`, a keyframe)
//! or the objects it changed from the revision before it (`delta`: the objects
//! put, with their bodies, and the objects deleted). A change to one route of a
//! thousand writes that route, not the thousand: the row, the WAL and the
//! checkpoints that follow stay small whatever the size of the configuration.
//! Keyframes are written with the first revision, with every whole replacement
//! (import, rollback), when the revision before is not in the table, and — off the
//! write, after its commit — for every [`KEYFRAME_EVERY`]th revision. Revision N is
//! read as the newest keyframe at or before N with the deltas after it, applied in
//! order; a gap in that chain is reported as corruption, never papered over.
//!
//! Configuration writes start by bumping the revision counter row. That first write
//! takes SQLite's write lock at once (no deferred-transaction upgrade can fail later)
//! and on PostgreSQL serializes concurrent managers on the row lock, so revision
//! numbers are dense and never handed out twice.
//!
//! Each store keeps the configuration of the last revision it committed (or read
//! inside a configuration write) with that revision's number. The objects change
//! only in configuration writes, and every one of them takes the next number first,
//! so when the number a write takes follows the kept one, the objects in the
//! database are exactly the kept configuration and are not read again; when another
//! manager sharing the store wrote in between, the numbers do not follow and the
//! write reads them.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use fleetgate_core::time::now_ms;
use serde_json::Value;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use crate::sql::{check_version, insert_audit, SqlStore};

/// A keyframe is written (after the commit, off the write) for every revision
/// whose number is a multiple of this; reading a revision applies at most this
/// many deltas when every keyframe was written.
pub const KEYFRAME_EVERY: i64 = 64;
use crate::{Actor, AuditEvent, Page, PageRequest, Result, StoreError};

/// A configuration object (settings, routes, upstreams, …) with its version.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceRecord {
    pub kind: String,
    pub name: String,
    pub body: Value,
    pub version: i64,
    pub updated_at: i64,
}

/// All configuration objects, keyed by kind then name. Deterministically ordered.
pub type ResourceSet =
    std::collections::BTreeMap<String, std::collections::BTreeMap<String, Value>>;

/// One change to the configuration, written as one revision by [`Store::write_config`].
#[derive(Debug, Clone, Copy)]
pub enum ConfigEdit<'a> {
    /// Creates or replaces one object. `expected_version` is checked when given;
    /// 0 means "must not exist".
    Put {
        kind: &'a str,
        name: &'a str,
        body: &'a Value,
        expected_version: Option<i64>,
    },
    /// Deletes one object (which must exist).
    Delete {
        kind: &'a str,
        name: &'a str,
        expected_version: Option<i64>,
    },
    /// Replaces the whole configuration (import, rollback); `action` names the
    /// audit entry. A set equal to the current one writes nothing.
    Replace {
        set: &'a ResourceSet,
        action: &'a str,
    },
    /// Creates or replaces some objects and deletes others (absent ones are no
    /// error) as one revision, with no version checks: the objects a feature owns
    /// (a deployment's route and upstream, say). `action` names the audit entry,
    /// which holds the touched objects before and after. Changing nothing writes
    /// nothing.
    Objects {
        puts: &'a [(&'a str, &'a str, Value)],
        deletes: &'a [(&'a str, &'a str)],
        action: &'a str,
    },
}

/// Judges the configuration a change would produce. It runs inside the change's
/// write transaction, after every earlier change committed and before any later
/// one can start, so what it sees as `before` is exactly what the change replaces.
/// An error aborts the write (nothing is stored) and is returned as is.
#[async_trait]
pub trait ConfigCheck: Send + Sync {
    async fn check(&self, before: &ResourceSet, after: &ResourceSet) -> Result<Verdict>;
}

/// A [`ConfigCheck`]'s answer for a change it does not refuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Write the change as a new revision.
    Write,
    /// The change means nothing new (say, an import of the configuration in
    /// force): write nothing and record no revision.
    Unchanged,
}

/// Accepts every change (store tests, tools).
pub struct NoCheck;

#[async_trait]
impl ConfigCheck for NoCheck {
    async fn check(&self, _before: &ResourceSet, _after: &ResourceSet) -> Result<Verdict> {
        Ok(Verdict::Write)
    }
}

/// What [`Store::write_config`] committed: the revision and the whole configuration
/// it holds, as written — the document to publish, with no second read.
#[derive(Debug, Clone, PartialEq)]
pub struct CommittedRevision {
    /// The new revision's number; when nothing was written, the current one's.
    pub number: i64,
    /// False when the change turned out to change nothing (a `Replace` with the
    /// current set, or one its check found [`Verdict::Unchanged`]): no revision
    /// was recorded.
    pub written: bool,
    /// The configuration the change replaced.
    pub before: Arc<ResourceSet>,
    /// The configuration of revision `number`.
    pub after: Arc<ResourceSet>,
    /// The object a `Put` stored, with its new version.
    pub record: Option<ResourceRecord>,
}

/// A revision's header; `snapshot` is loaded only when asked for one revision.
#[derive(Debug, Clone, PartialEq)]
pub struct RevisionRecord {
    pub number: i64,
    pub created_at: i64,
    pub author: String,
    pub message: String,
    pub snapshot: Option<ResourceSet>,
}

/// The configuration and its revisions.
#[async_trait]
pub trait ConfigStore: Send + Sync {
    async fn get_resource(&self, kind: &str, name: &str) -> Result<Option<ResourceRecord>>;
    async fn list_resources(&self, kind: &str) -> Result<Vec<ResourceRecord>>;
    /// Applies one configuration change as one revision, in one write transaction:
    /// takes the next revision number (which serialises configuration writes across
    /// every manager sharing the store), reads the configuration, applies `edit`,
    /// lets `check` judge the result, writes the rows, the revision (holding the
    /// whole resulting configuration) and the audit entry, and commits. Returns the
    /// committed configuration so that it can be published without reading it again.
    async fn write_config(
        &self,
        actor: &Actor,
        edit: ConfigEdit<'_>,
        message: &str,
        check: &dyn ConfigCheck,
    ) -> Result<CommittedRevision>;
    /// Creates or replaces one configuration object without a check; returns the
    /// stored object and the revision number.
    async fn put_resource(
        &self,
        actor: &Actor,
        kind: &str,
        name: &str,
        body: &Value,
        expected_version: Option<i64>,
        message: &str,
    ) -> Result<(ResourceRecord, i64)> {
        let edit = ConfigEdit::Put {
            kind,
            name,
            body,
            expected_version,
        };
        let c = self.write_config(actor, edit, message, &NoCheck).await?;
        let record = c
            .record
            .ok_or_else(|| StoreError::Corrupt("a put stored no object".into()))?;
        Ok((record, c.number))
    }
    /// Deletes one configuration object without a check; returns the revision.
    async fn delete_resource(
        &self,
        actor: &Actor,
        kind: &str,
        name: &str,
        expected_version: Option<i64>,
        message: &str,
    ) -> Result<i64> {
        let edit = ConfigEdit::Delete {
            kind,
            name,
            expected_version,
        };
        Ok(self
            .write_config(actor, edit, message, &NoCheck)
            .await?
            .number)
    }
    /// The whole configuration as it is now.
    async fn resource_set(&self) -> Result<ResourceSet>;
    /// Replaces the whole configuration without a check; returns the revision.
    async fn replace_resources(
        &self,
        actor: &Actor,
        set: &ResourceSet,
        action: &str,
        message: &str,
    ) -> Result<i64> {
        let edit = ConfigEdit::Replace { set, action };
        Ok(self
            .write_config(actor, edit, message, &NoCheck)
            .await?
            .number)
    }
    /// A declarative apply: the whole configuration (one revision when it changes)
    /// and the redirect projects with their published rules, in one transaction
    /// with the audit entries of every change (see [`crate::Declaration`]).
    /// Nothing is written when nothing changes or for a dry run.
    async fn declare(
        &self,
        actor: &Actor,
        declaration: crate::Declaration<'_>,
        message: &str,
        check: &dyn ConfigCheck,
    ) -> Result<crate::Declared>;
    async fn latest_revision(&self) -> Result<i64>;
    async fn list_revisions(&self, page: PageRequest) -> Result<Page<RevisionRecord>>;
    async fn get_revision(&self, number: i64) -> Result<Option<RevisionRecord>>;
}

fn resource_from_row(r: &AnyRow) -> Result<ResourceRecord> {
    let body: String = r.try_get("body")?;
    Ok(ResourceRecord {
        kind: r.try_get("kind")?,
        name: r.try_get("name")?,
        body: serde_json::from_str(&body).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        version: r.try_get("version")?,
        updated_at: r.try_get("updated_at")?,
    })
}

/// Takes the next revision number; the first write of every configuration change.
pub(crate) async fn next_revision(conn: &mut AnyConnection) -> Result<i64> {
    let row = sqlx::query(
        "UPDATE counters SET value = value + 1 WHERE name = 'revision' RETURNING value",
    )
    .fetch_one(conn)
    .await?;
    Ok(row.try_get(0)?)
}

pub(crate) async fn resource_set_in(conn: &mut AnyConnection) -> Result<ResourceSet> {
    let rows = sqlx::query("SELECT kind, name, body FROM resources ORDER BY kind, name")
        .fetch_all(conn)
        .await?;
    let mut set = ResourceSet::new();
    for r in rows {
        let body: String = r.try_get("body")?;
        set.entry(r.try_get("kind")?).or_default().insert(
            r.try_get("name")?,
            serde_json::from_str(&body).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        );
    }
    Ok(set)
}

/// The configuration of one revision, kept by the store that committed it (see the
/// module notes).
#[derive(Default)]
pub(crate) struct CommittedConfig(Mutex<Option<(i64, Arc<ResourceSet>)>>);

impl CommittedConfig {
    /// The kept configuration if it is revision `number`'s.
    pub(crate) fn of(&self, number: i64) -> Option<Arc<ResourceSet>> {
        match &*self.0.lock().unwrap_or_else(|p| p.into_inner()) {
            Some((n, set)) if *n == number => Some(set.clone()),
            _ => None,
        }
    }

    pub(crate) fn keep(&self, number: i64, set: Arc<ResourceSet>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some((number, set));
    }
}

impl SqlStore {
    /// The answer to a configuration change that wrote nothing; `current` is the
    /// configuration of the last revision, `number`.
    pub(crate) fn unchanged(&self, number: i64, current: Arc<ResourceSet>) -> CommittedRevision {
        self.committed_config.keep(number, current.clone());
        CommittedRevision {
            number,
            written: false,
            before: current.clone(),
            after: current,
            record: None,
        }
    }
}

/// Writes one configuration row `(kind, name, body, version, updated_at)`:
/// replacing the existing one (`update`) or as a new one.
async fn write_resource(
    conn: &mut AnyConnection,
    update: bool,
    (kind, name, body, version, now): (&str, &str, &Value, i64, i64),
) -> Result<()> {
    let sql = if update {
        "UPDATE resources SET body = $3, version = $4, updated_at = $5 WHERE kind = $1 AND name = $2"
    } else {
        "INSERT INTO resources (kind, name, body, version, updated_at) VALUES ($1, $2, $3, $4, $5)"
    };
    sqlx::query(sql)
        .bind(kind.to_string())
        .bind(name.to_string())
        .bind(body.to_string())
        .bind(version)
        .bind(now)
        .execute(conn)
        .await?;
    Ok(())
}

/// What a revision row holds: the whole configuration, or what changed.
pub(crate) enum Stored<'a> {
    Keyframe(&'a ResourceSet),
    Delta(String),
}

/// The objects one change put (with their bodies as the revision holds them)
/// and deleted, from the revision before it to this one.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Delta {
    #[serde(default, skip_serializing_if = "ResourceSet::is_empty")]
    put: ResourceSet,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    delete: std::collections::BTreeMap<String, Vec<String>>,
}

impl Delta {
    /// The delta from the configuration before to `after` over the objects a
    /// change touched (each one put if `after` holds it, deleted otherwise).
    fn over<'k>(
        after: &ResourceSet,
        touched: impl IntoIterator<Item = (&'k str, &'k str)>,
    ) -> Self {
        let mut delta = Delta::default();
        for (kind, name) in touched {
            match after.get(kind).and_then(|objects| objects.get(name)) {
                Some(body) => {
                    delta
                        .put
                        .entry(kind.to_string())
                        .or_default()
                        .insert(name.to_string(), body.clone());
                }
                None => delta
                    .delete
                    .entry(kind.to_string())
                    .or_default()
                    .push(name.to_string()),
            }
        }
        delta
    }

    fn apply(self, set: &mut ResourceSet) {
        for (kind, names) in self.delete {
            if let Some(objects) = set.get_mut(&kind) {
                for name in names {
                    objects.remove(&name);
                }
                if objects.is_empty() {
                    set.remove(&kind);
                }
            }
        }
        for (kind, objects) in self.put {
            set.entry(kind).or_default().extend(objects);
        }
    }
}

/// Replaces every configuration row with `after` (which replaces `before`); an
/// object left as it was keeps its version.
pub(crate) async fn replace_rows(
    conn: &mut AnyConnection,
    before: &ResourceSet,
    after: &ResourceSet,
    now: i64,
) -> Result<()> {
    let old_versions: std::collections::HashMap<(String, String), i64> =
        sqlx::query("SELECT kind, name, version FROM resources")
            .fetch_all(&mut *conn)
            .await?
            .iter()
            .map(|r| Ok(((r.try_get(0)?, r.try_get(1)?), r.try_get(2)?)))
            .collect::<Result<_>>()?;
    sqlx::query("DELETE FROM resources")
        .execute(&mut *conn)
        .await?;
    for (kind, objects) in after {
        for (name, body) in objects {
            let unchanged = before.get(kind).and_then(|m| m.get(name)) == Some(body);
            let version = match old_versions.get(&(kind.clone(), name.clone())) {
                Some(v) if unchanged => *v,
                Some(v) => v + 1,
                None => 1,
            };
            let row = (kind.as_str(), name.as_str(), body, version, now);
            write_resource(&mut *conn, false, row).await?;
        }
    }
    Ok(())
}

pub(crate) async fn insert_revision(
    conn: &mut AnyConnection,
    number: i64,
    actor: &Actor,
    message: &str,
    stored: Stored<'_>,
) -> Result<()> {
    let (snapshot, delta) = match stored {
        Stored::Keyframe(set) => (
            Some(serde_json::to_string(set).map_err(|e| StoreError::Invalid(e.to_string()))?),
            None,
        ),
        Stored::Delta(text) => (None, Some(text)),
    };
    sqlx::query(
        "INSERT INTO revisions (number, created_at, author, message, snapshot, delta) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(number)
    .bind(now_ms())
    .bind(actor.name.clone())
    .bind(message.to_string())
    .bind(snapshot)
    .bind(delta)
    .execute(conn)
    .await?;
    Ok(())
}

/// Writes revision `number`'s keyframe into its row (which holds its delta),
/// after the write that made it: serialized on a blocking thread, stored unless
/// the row has one already. A failure is logged and costs nothing but longer
/// reads until the next keyframe.
fn keyframe_later(pool: sqlx::AnyPool, number: i64, set: Arc<ResourceSet>) {
    tokio::spawn(async move {
        let text = match tokio::task::spawn_blocking(move || serde_json::to_string(&*set)).await {
            Ok(Ok(text)) => text,
            Ok(Err(e)) => {
                tracing::warn!(revision = number, error = %e, "could not serialize a revision keyframe");
                return;
            }
            Err(e) => {
                tracing::warn!(revision = number, error = %e, "revision keyframe task failed");
                return;
            }
        };
        let written = sqlx::query(
            "UPDATE revisions SET snapshot = $1 WHERE number = $2 AND snapshot IS NULL",
        )
        .bind(text)
        .bind(number)
        .execute(&pool)
        .await;
        if let Err(e) = written {
            tracing::warn!(revision = number, error = %e, "could not store a revision keyframe");
        }
    });
}

/// The configuration of revision `number` rebuilt from its newest keyframe and
/// the deltas after it; `None` when there is no such revision.
async fn revision_set(pool: &sqlx::AnyPool, number: i64) -> Result<Option<ResourceSet>> {
    let Some(base) = sqlx::query(
        "SELECT number FROM revisions WHERE number <= $1 AND snapshot IS NOT NULL \
         ORDER BY number DESC LIMIT 1",
    )
    .bind(number)
    .fetch_optional(pool)
    .await?
    else {
        return match sqlx::query("SELECT number FROM revisions WHERE number = $1")
            .bind(number)
            .fetch_optional(pool)
            .await?
        {
            Some(_) => Err(StoreError::Corrupt(format!(
                "revision {number} has no keyframe at or before it"
            ))),
            None => Ok(None),
        };
    };
    let base: i64 = base.try_get(0)?;
    let rows = sqlx::query(
        "SELECT number, snapshot, delta FROM revisions WHERE number >= $1 AND number <= $2 \
         ORDER BY number",
    )
    .bind(base)
    .bind(number)
    .fetch_all(pool)
    .await?;
    let corrupt = |e: serde_json::Error| StoreError::Corrupt(e.to_string());
    let mut set = ResourceSet::new();
    let mut expected = base;
    for (i, row) in rows.iter().enumerate() {
        let n: i64 = row.try_get("number")?;
        if n != expected {
            return Err(StoreError::Corrupt(format!(
                "revision {expected} is missing between keyframe {base} and revision {number}"
            )));
        }
        expected += 1;
        if i == 0 {
            let text: String = row.try_get("snapshot")?;
            set = serde_json::from_str(&text).map_err(corrupt)?;
            continue;
        }
        let delta: Option<String> = row.try_get("delta")?;
        match delta {
            Some(text) => serde_json::from_str::<Delta>(&text)
                .map_err(corrupt)?
                .apply(&mut set),
            // A keyframe written after its delta was: the two agree.
            None => {
                let text: String = row.try_get("snapshot")?;
                set = serde_json::from_str(&text).map_err(corrupt)?;
            }
        }
    }
    if expected != number + 1 {
        return Ok(None);
    }
    Ok(Some(set))
}

async fn get_resource_in(
    conn: &mut AnyConnection,
    kind: &str,
    name: &str,
) -> Result<Option<ResourceRecord>> {
    sqlx::query(
        "SELECT kind, name, body, version, updated_at FROM resources WHERE kind = $1 AND name = $2",
    )
    .bind(kind.to_string())
    .bind(name.to_string())
    .fetch_optional(conn)
    .await?
    .map(|r| resource_from_row(&r))
    .transpose()
}

#[async_trait]
impl ConfigStore for SqlStore {
    async fn get_resource(&self, kind: &str, name: &str) -> Result<Option<ResourceRecord>> {
        let mut conn = self.pool.acquire().await?;
        get_resource_in(&mut conn, kind, name).await
    }

    async fn list_resources(&self, kind: &str) -> Result<Vec<ResourceRecord>> {
        let rows = sqlx::query(
            "SELECT kind, name, body, version, updated_at FROM resources WHERE kind = $1 ORDER BY name",
        )
        .bind(kind.to_string())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(resource_from_row).collect()
    }

    async fn write_config(
        &self,
        actor: &Actor,
        edit: ConfigEdit<'_>,
        message: &str,
        check: &dyn ConfigCheck,
    ) -> Result<CommittedRevision> {
        let mut tx = self.begin_write().await?;
        // The counter row is the lock every configuration write takes first.
        let number = next_revision(&mut tx).await?;
        // Whether the revision before this one is in the table: a delta needs it.
        let (before, follows) = match self.committed_config.of(number - 1) {
            Some(set) => (set, true),
            None => {
                let set = Arc::new(resource_set_in(&mut tx).await?);
                let follows = sqlx::query("SELECT number FROM revisions WHERE number = $1")
                    .bind(number - 1)
                    .fetch_optional(&mut *tx)
                    .await?
                    .is_some();
                (set, follows)
            }
        };
        let mut after = (*before).clone();
        let now = now_ms();
        // The objects the change touched, for its delta; `None` for a keyframe.
        let mut touched: Option<Vec<(&str, &str)>> = None;
        let (record, audit) = match edit {
            ConfigEdit::Put {
                kind,
                name,
                body,
                expected_version,
            } => {
                let current = get_resource_in(&mut tx, kind, name).await?;
                check_version(expected_version, current.as_ref().map_or(0, |b| b.version))?;
                after
                    .entry(kind.to_string())
                    .or_default()
                    .insert(name.to_string(), body.clone());
                if check.check(&before, &after).await? == Verdict::Unchanged {
                    tx.rollback().await?;
                    return Ok(self.unchanged(number - 1, before));
                }
                touched = Some(vec![(kind, name)]);
                let version = current.as_ref().map_or(1, |b| b.version + 1);
                let row = (kind, name, body, version, now);
                write_resource(&mut tx, current.is_some(), row).await?;
                let action = if current.is_some() {
                    "update"
                } else {
                    "create"
                };
                let mut ev = AuditEvent::new(&format!("{kind}.{action}"), kind, Some(name))
                    .after(body.clone());
                if let Some(b) = current {
                    ev = ev.before(b.body);
                }
                let record = ResourceRecord {
                    kind: kind.into(),
                    name: name.into(),
                    body: body.clone(),
                    version,
                    updated_at: now,
                };
                (Some(record), ev)
            }
            ConfigEdit::Delete {
                kind,
                name,
                expected_version,
            } => {
                let current = get_resource_in(&mut tx, kind, name)
                    .await?
                    .ok_or_else(|| StoreError::NotFound(format!("{kind} {name}")))?;
                check_version(expected_version, current.version)?;
                if let Some(objects) = after.get_mut(kind) {
                    objects.remove(name);
                    if objects.is_empty() {
                        after.remove(kind);
                    }
                }
                if check.check(&before, &after).await? == Verdict::Unchanged {
                    tx.rollback().await?;
                    return Ok(self.unchanged(number - 1, before));
                }
                touched = Some(vec![(kind, name)]);
                sqlx::query("DELETE FROM resources WHERE kind = $1 AND name = $2")
                    .bind(kind.to_string())
                    .bind(name.to_string())
                    .execute(&mut *tx)
                    .await?;
                let ev = AuditEvent::new(&format!("{kind}.delete"), kind, Some(name))
                    .before(current.body);
                (None, ev)
            }
            ConfigEdit::Replace { set, action } => {
                after = set.clone();
                after.retain(|_, objects| !objects.is_empty());
                if after == *before || check.check(&before, &after).await? == Verdict::Unchanged {
                    // Nothing to record: give the number back with the transaction.
                    tx.rollback().await?;
                    return Ok(self.unchanged(number - 1, before));
                }
                replace_rows(&mut tx, &before, &after, now).await?;
                let to_value = |s: &ResourceSet| serde_json::to_value(s).unwrap_or(Value::Null);
                let ev = AuditEvent::new(action, "config", Some(&number.to_string()))
                    .before(to_value(&before))
                    .after(to_value(&after));
                (None, ev)
            }
            ConfigEdit::Objects {
                puts,
                deletes,
                action,
            } => {
                for (kind, name, body) in puts {
                    after
                        .entry(kind.to_string())
                        .or_default()
                        .insert(name.to_string(), body.clone());
                }
                for (kind, name) in deletes {
                    if let Some(objects) = after.get_mut(*kind) {
                        objects.remove(*name);
                    }
                }
                after.retain(|_, objects| !objects.is_empty());
                if after == *before || check.check(&before, &after).await? == Verdict::Unchanged {
                    tx.rollback().await?;
                    return Ok(self.unchanged(number - 1, before));
                }
                touched = Some(
                    puts.iter()
                        .map(|(kind, name, _)| (*kind, *name))
                        .chain(deletes.iter().copied())
                        .collect(),
                );
                let mut was = serde_json::Map::new();
                let mut now_is = serde_json::Map::new();
                let key = |kind: &str, name: &str| format!("{kind}/{name}");
                for (kind, name, body) in puts {
                    let current = get_resource_in(&mut tx, kind, name).await?;
                    if current.as_ref().is_some_and(|c| c.body == *body) {
                        continue;
                    }
                    if let Some(c) = &current {
                        was.insert(key(kind, name), c.body.clone());
                    }
                    now_is.insert(key(kind, name), body.clone());
                    let version = current.as_ref().map_or(1, |b| b.version + 1);
                    let row = (*kind, *name, body, version, now);
                    write_resource(&mut tx, current.is_some(), row).await?;
                }
                for (kind, name) in deletes {
                    if let Some(c) = get_resource_in(&mut tx, kind, name).await? {
                        was.insert(key(kind, name), c.body);
                        sqlx::query("DELETE FROM resources WHERE kind = $1 AND name = $2")
                            .bind(kind.to_string())
                            .bind(name.to_string())
                            .execute(&mut *tx)
                            .await?;
                    }
                }
                let ev = AuditEvent::new(action, "config", Some(&number.to_string()))
                    .before(Value::Object(was))
                    .after(Value::Object(now_is));
                (None, ev)
            }
        };
        let stored = match touched {
            Some(touched) if follows && number > 1 => {
                let delta = Delta::over(&after, touched);
                Stored::Delta(
                    serde_json::to_string(&delta)
                        .map_err(|e| StoreError::Invalid(e.to_string()))?,
                )
            }
            _ => Stored::Keyframe(&after),
        };
        let keyframe_due = matches!(stored, Stored::Delta(_)) && number % KEYFRAME_EVERY == 0;
        insert_revision(&mut tx, number, actor, message, stored).await?;
        insert_audit(&mut tx, actor, &audit).await?;
        tx.commit().await?;
        let after = Arc::new(after);
        self.committed_config.keep(number, after.clone());
        if keyframe_due {
            keyframe_later(self.pool.clone(), number, after.clone());
        }
        Ok(CommittedRevision {
            number,
            written: true,
            before,
            after,
            record,
        })
    }

    async fn declare(
        &self,
        actor: &Actor,
        declaration: crate::Declaration<'_>,
        message: &str,
        check: &dyn ConfigCheck,
    ) -> Result<crate::Declared> {
        self.declare_in(actor, declaration, message, check).await
    }

    async fn resource_set(&self) -> Result<ResourceSet> {
        let mut conn = self.pool.acquire().await?;
        resource_set_in(&mut conn).await
    }

    async fn latest_revision(&self) -> Result<i64> {
        self.count("SELECT COALESCE(MAX(number), 0) FROM revisions", &[])
            .await
    }

    async fn list_revisions(&self, page: PageRequest) -> Result<Page<RevisionRecord>> {
        let total = self.count("SELECT COUNT(*) FROM revisions", &[]).await?;
        let rows = sqlx::query(
            "SELECT number, created_at, author, message FROM revisions \
             ORDER BY number DESC LIMIT $1 OFFSET $2",
        )
        .bind(page.limit)
        .bind(page.offset)
        .fetch_all(&self.pool)
        .await?;
        let items = rows
            .iter()
            .map(|r| {
                Ok(RevisionRecord {
                    number: r.try_get("number")?,
                    created_at: r.try_get("created_at")?,
                    author: r.try_get("author")?,
                    message: r.try_get("message")?,
                    snapshot: None,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Page { items, total })
    }

    async fn get_revision(&self, number: i64) -> Result<Option<RevisionRecord>> {
        let row = sqlx::query(
            "SELECT number, created_at, author, message FROM revisions WHERE number = $1",
        )
        .bind(number)
        .fetch_optional(&self.pool)
        .await?;
        let Some(r) = row else { return Ok(None) };
        let Some(snapshot) = revision_set(&self.pool, number).await? else {
            return Ok(None);
        };
        Ok(Some(RevisionRecord {
            number: r.try_get("number")?,
            created_at: r.try_get("created_at")?,
            author: r.try_get("author")?,
            message: r.try_get("message")?,
            snapshot: Some(snapshot),
        }))
    }
}

impl SqlStore {
    /// The numbers of the revisions stored whole (keyframes), oldest first: for
    /// tools and tests that look at how revisions are kept.
    pub async fn revision_keyframes(&self) -> Result<Vec<i64>> {
        sqlx::query("SELECT number FROM revisions WHERE snapshot IS NOT NULL ORDER BY number")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| Ok(r.try_get(0)?))
            .collect()
    }
}
