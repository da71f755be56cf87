//! Fleetgate's store: the [`Store`] trait every other part talks to, and [`SqlStore`],
//! its implementation on SQLite (the embedded default, WAL) and PostgreSQL.
//!
//! Every mutation takes the [`Actor`] that made it and writes its audit entry in the
//! same transaction, so no change can land without its record. Configuration
//! changes also record a numbered revision holding the whole configuration document.

mod alerts;
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

/// The outcome of [`Store::reserve_login_attempt`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginAttempt {
    /// Counted; the id releases it.
    Admitted { id: i64 },
    /// Over the limit; `oldest` is the time of the oldest attempt in the window.
    Refused { oldest: i64 },
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

/// A user as stored, including the password hash. Never serialized to clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub id: String,
    pub username: String,
    pub display_name: String,
    pub email: Option<String>,
    pub role: Role,
    pub password_hash: String,
    pub allowed_node_ids: Option<Vec<String>>,
    pub disabled: bool,
    pub version: i64,
    pub created_at: i64,
    pub updated_at: i64,
    pub last_login_at: Option<i64>,
}

impl UserRecord {
    /// The user as the audit log shows it: everything but the password hash.
    pub fn audit_view(&self) -> Value {
        serde_json::json!({
            "id": self.id,
            "username": self.username,
            "display_name": self.display_name,
            "email": self.email,
            "role": self.role,
            "allowed_node_ids": self.allowed_node_ids,
            "disabled": self.disabled,
        })
    }
}

/// A browser session; the token itself is only ever held by the browser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    pub token_hash: String,
    pub user_id: String,
    pub csrf_token: String,
    pub client_ip: Option<String>,
    pub created_at: i64,
    pub expires_at: i64,
}

/// An API key; only the hash of the key is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRecord {
    pub id: String,
    pub name: String,
    /// First characters of the key, shown so operators can tell keys apart.
    pub prefix: String,
    pub key_hash: String,
    pub role: Role,
    /// The user who owns the key; `None` for the bootstrap key.
    pub user_id: Option<String>,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
}

impl ApiKeyRecord {
    pub fn audit_view(&self) -> Value {
        serde_json::json!({
            "id": self.id,
            "name": self.name,
            "prefix": self.prefix,
            "role": self.role,
            "user_id": self.user_id,
        })
    }
}

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

/// A TLS certificate with its private key encrypted by the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateRecord {
    pub name: String,
    /// The certificate chain, PEM.
    pub cert_pem: String,
    /// The private key, encrypted; the store never sees it in clear.
    pub key_encrypted: String,
    pub version: i64,
    pub created_at: i64,
    pub updated_at: i64,
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
    RedirectStore + EventStore + WebhookStore + MetricStore + AlertStore + Send + Sync + 'static
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

    // Users.
    async fn count_users(&self) -> Result<i64>;
    async fn create_user(&self, actor: &Actor, user: &UserRecord) -> Result<()>;
    async fn get_user(&self, id: &str) -> Result<Option<UserRecord>>;
    async fn get_user_by_username(&self, username: &str) -> Result<Option<UserRecord>>;
    async fn list_users(&self, page: PageRequest) -> Result<Page<UserRecord>>;
    /// Replaces the user with `id` by `user` if its version is `expected_version`
    /// (when given); bumps the version and returns the stored record.
    async fn update_user(
        &self,
        actor: &Actor,
        user: &UserRecord,
        expected_version: Option<i64>,
    ) -> Result<UserRecord>;
    async fn delete_user(
        &self,
        actor: &Actor,
        id: &str,
        expected_version: Option<i64>,
    ) -> Result<()>;
    async fn record_login(&self, user_id: &str, at: i64) -> Result<()>;

    // Sessions.
    async fn create_session(&self, actor: &Actor, session: &SessionRecord) -> Result<()>;
    /// The session and its user, if the session exists and has not expired at `now`.
    async fn get_session(
        &self,
        token_hash: &str,
        now: i64,
    ) -> Result<Option<(SessionRecord, UserRecord)>>;
    async fn delete_session(&self, actor: &Actor, token_hash: &str) -> Result<bool>;
    async fn prune_sessions(&self, now: i64) -> Result<u64>;

    // Login limiting, shared between managers.
    async fn record_login_failure(&self, client_ip: &str, at: i64) -> Result<()>;
    /// Failures since `since` and the time of the oldest of them.
    async fn login_failures(&self, client_ip: &str, since: i64) -> Result<(i64, Option<i64>)>;
    async fn clear_login_failures(&self, client_ip: &str) -> Result<()>;
    /// Counts one login attempt of `client_ip` at `at` before its password is
    /// checked, atomically across every manager sharing the store: when fewer than
    /// `max` attempts were recorded after `since`, records this one (it stays
    /// counted as a failure unless [`Store::release_login_attempt`] forgets it) and
    /// admits it; otherwise records nothing and refuses it. Concurrent attempts can
    /// therefore never all pass the check together.
    async fn reserve_login_attempt(
        &self,
        client_ip: &str,
        at: i64,
        since: i64,
        max: i64,
    ) -> Result<LoginAttempt>;
    /// Forgets one admitted attempt (a successful login does not count against its
    /// address; the other attempts still do).
    async fn release_login_attempt(&self, id: i64) -> Result<()>;

    // API keys.
    async fn create_api_key(&self, actor: &Actor, key: &ApiKeyRecord) -> Result<()>;
    async fn get_api_key(&self, id: &str) -> Result<Option<ApiKeyRecord>>;
    async fn find_api_key_by_hash(&self, key_hash: &str) -> Result<Option<ApiKeyRecord>>;
    /// Keys of one user, or all keys when `user_id` is `None`.
    async fn list_api_keys(
        &self,
        user_id: Option<&str>,
        page: PageRequest,
    ) -> Result<Page<ApiKeyRecord>>;
    async fn delete_api_key(&self, actor: &Actor, id: &str) -> Result<()>;
    async fn touch_api_key(&self, id: &str, at: i64) -> Result<()>;

    // Audit.
    /// Records an entry that belongs to no other mutation (logins, logouts, backups).
    async fn append_audit(&self, actor: &Actor, event: AuditEvent) -> Result<()>;
    async fn list_audit(
        &self,
        filter: &AuditFilter,
        page: PageRequest,
    ) -> Result<Page<AuditRecord>>;
    async fn prune_audit(&self, before: i64) -> Result<u64>;

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

    // TLS certificates (not configuration revisions: they carry secrets).
    /// Creates or replaces a certificate; `expected_version` as for resources.
    async fn put_certificate(
        &self,
        actor: &Actor,
        cert: &CertificateRecord,
        expected_version: Option<i64>,
    ) -> Result<CertificateRecord>;
    async fn get_certificate(&self, name: &str) -> Result<Option<CertificateRecord>>;
    async fn list_certificates(&self) -> Result<Vec<CertificateRecord>>;
    async fn delete_certificate(&self, actor: &Actor, name: &str) -> Result<()>;

    /// Writes a consistent copy of the whole store to `path` (a new file).
    async fn backup(&self, path: &std::path::Path) -> Result<()>;
}
