//! Fleetgate's store: the [`Store`] trait every other part talks to, and [`SqlStore`],
//! its implementation on SQLite (the embedded default, WAL) and PostgreSQL.
//!
//! Every mutation takes the [`Actor`] that made it and writes its audit entry in the
//! same transaction, so no change can land without its record. Configuration
//! changes also record a numbered revision holding the whole configuration document.

mod agents;
mod ai;
mod ai_gateway;
mod alerts;
mod audit;
mod auth;
mod backup;
mod certificates;
mod config;
mod declare;
mod events;
pub mod files;
mod fleet;
mod metrics;
mod nodes;
mod redirects;
mod sql;
mod tunnels;
mod webhooks;

use async_trait::async_trait;
use fleetgate_core::user::Role;

pub use agents::{
    AgentBudget, AgentReservation, AgentReserve, AgentRunRecord, AgentScheduleRecord, AgentSplit,
    AgentStepRecord, AgentStore, AgentToolRecord, AgentVersionRecord, AiAgentRecord,
    McpServerRecord,
};
pub use ai::{AiPreferencesRecord, AiProviderRecord, AiStore};
pub use ai_gateway::{
    AiBudgetRecord, AiGatewayStore, AiPriceRecord, AiUsageRow, UsageGroup, UsageTotals,
};
pub use alerts::{
    AlertRuleRecord, AlertStore, IncidentAnalysisRecord, IncidentFilter, IncidentRecord,
    NewTimelineEntry, TimelineEntry,
};
pub use audit::{AuditEvent, AuditFilter, AuditRecord, AuditStore};
pub use auth::{ApiKeyRecord, AuthStore, LoginAttempt, SessionRecord, UserRecord};
pub use certificates::{
    AcmeAccountRecord, AcmeChallengeRecord, CertificateRecord, CertificateStore, SOURCE_ACME,
    SOURCE_UPLOAD,
};
pub use config::{
    CommittedRevision, ConfigCheck, ConfigEdit, ConfigStore, NoCheck, ResourceRecord, ResourceSet,
    RevisionRecord, Verdict, KEYFRAME_EVERY,
};
pub use declare::{Declaration, Declared, DeclaredProject, ProjectChange};
pub use events::{EventFilter, EventRecord, EventStore, UnackedCounts};
pub use fleet::{FleetStore, NodePresence, NodeSample};
pub use metrics::{MetricPoint, MetricStore, RESOLUTIONS};
pub use nodes::{NodeFilter, NodeRecord, NodeSeen, NodeStore};
pub use redirects::{
    change_view, AgentRecord, ChangeCounts, DraftState, Drafts, ImportSummary, NamespaceRecord,
    ProjectRecord, ProjectTokenRecord, PublishRecord, RedirectStore, RuleData, RuleFilter, RuleRow,
    RuleTable, TokenScope, PUBLISH_CHANGES_LISTED,
};
pub use sql::{Backend, SqlStore, StoreOptions};
pub use tunnels::{port_of, Leg, LegState, TunnelRecord, TunnelStore};
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
    ConfigStore
    + AuthStore
    + AuditStore
    + CertificateStore
    + RedirectStore
    + EventStore
    + WebhookStore
    + MetricStore
    + AlertStore
    + NodeStore
    + FleetStore
    + TunnelStore
    + AiStore
    + AgentStore
    + AiGatewayStore
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

    /// Writes a consistent copy of the whole store to `path` (a new file).
    async fn backup(&self, path: &std::path::Path) -> Result<()>;
}
