//! Fleetgate's store: the [`Store`] trait every other part talks to, and [`SqlStore`],
//! its implementation on SQLite (the embedded default, WAL) and PostgreSQL.
//!
//! Every mutation takes the [`Actor`] that made it and writes its audit entry in the
//! same transaction, so no change can land without its record. Configuration
//! changes also record a numbered revision holding the whole configuration document.

mod alerts;
mod audit;
mod auth;
mod backup;
mod certificates;
mod events;
pub mod files;
mod metrics;
mod redirects;
mod sql;
mod webhooks;

use async_trait::async_trait;
use fleetgate_core::user::Role;
use serde_json::Value;

pub use alerts::{
    AlertRuleRecord, AlertStore, IncidentFilter, IncidentRecord, NewTimelineEntry, TimelineEntry,
};
pub use audit::{AuditEvent, AuditFilter, AuditRecord, AuditStore};
pub use auth::{ApiKeyRecord, AuthStore, LoginAttempt, SessionRecord, UserRecord};
pub use certificates::{CertificateRecord, CertificateStore};
pub use events::{EventFilter, EventRecord, EventStore, UnackedCounts};
pub use metrics::{MetricPoint, MetricStore, RESOLUTIONS};
pub use redirects::{
    change_view, AgentRecord, ChangeCounts, DraftState, Drafts, ImportSummary, NamespaceRecord,
    ProjectRecord, ProjectTokenRecord, PublishRecord, RedirectStore, RuleData, RuleFilter, RuleRow,
    RuleTable, TokenScope, PUBLISH_CHANGES_LISTED,
};
pub use sql::{Backend, SqlStore, StoreOptions};
pub use webhooks::{AttemptOutcome, AttemptRecord, DeliveryRecord, WebhookRecord, WebhookStore};

/// Result of store operations.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// An `If-Match` precondition did not hold; carries the current version.
    #[error("version mismatch: current version is {current}")]
    VersionMismatch { current: i64 },
    #[error("stored data is not readable: {0}")]
    Corrupt(String),
    #[error("invalid input: {0}")]
    Invalid(String),
    /// A configuration change was refused by its check (see [`ConfigCheck`]): the
    /// document it would produce does not validate or does not compile.
    #[error("{0}")]
    Rejected(fleetgate_core::ValidationError),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration error: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

impl StoreError {
    /// The database could not be reached (as opposed to refusing the request).
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            StoreError::Database(
                sqlx::Error::PoolTimedOut
                    | sqlx::Error::PoolClosed
                    | sqlx::Error::Io(_)
                    | sqlx::Error::Tls(_)
                    | sqlx::Error::WorkerCrashed
            )
        )
    }
}

/// Who made a change, for the audit log and revision authorship.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// Display name: a user name, `api_key:<name>` or `system`.
    pub name: String,
    /// Stable id of the user or API key, if any.
    pub id: Option<String>,
    pub role: Role,
    pub client_ip: Option<String>,
    pub request_id: Option<String>,
}

impl Actor {
    /// Fleetgate itself (first start, background maintenance).
    pub fn system() -> Self {
        Self {
            name: "system".into(),
            id: None,
            role: Role::SuperAdmin,
            client_ip: None,
            request_id: None,
        }
    }
}

/// A page request: `offset` and `limit` are already validated and clamped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    pub limit: i64,
    pub offset: i64,
}

/// One page of results and the total count of the whole listing.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub total: i64,
}

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
    pub before: ResourceSet,
    /// The configuration of revision `number`.
    pub after: ResourceSet,
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

/// State of the embedded migrations against the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationStatus {
    pub applied: Vec<i64>,
    pub expected: Vec<i64>,
}

impl MigrationStatus {
    pub fn is_current(&self) -> bool {
        self.expected.iter().all(|v| self.applied.contains(v))
    }
}

/// Connection pool numbers for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    pub size: u32,
    pub idle: u32,
    pub max: u32,
}

/// Everything Fleetgate keeps. Implementations must be safe to share between several
/// manager processes on one database: no state lives only in one process's memory.
#[async_trait]
pub trait Store:
    AuthStore
    + AuditStore
    + CertificateStore
    + RedirectStore
    + EventStore
    + WebhookStore
    + MetricStore
    + AlertStore
    + Send
    + Sync
    + 'static
{
    /// `sqlite` or `postgres`.
    fn backend(&self) -> Backend;
    /// A round trip to the database.
    async fn ping(&self) -> Result<()>;
    /// Applies the embedded migrations that are missing.
    async fn migrate(&self) -> Result<()>;
    async fn migration_status(&self) -> Result<MigrationStatus>;
    fn pool_stats(&self) -> PoolStats;
    /// Waits for in-flight queries and closes every connection.
    async fn close(&self);

    // Configuration and revisions.
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
    async fn latest_revision(&self) -> Result<i64>;
    async fn list_revisions(&self, page: PageRequest) -> Result<Page<RevisionRecord>>;
    async fn get_revision(&self, number: i64) -> Result<Option<RevisionRecord>>;

    /// Writes a consistent copy of the whole store to `path` (a new file).
    async fn backup(&self, path: &std::path::Path) -> Result<()>;
}
