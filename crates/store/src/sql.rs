//! [`SqlStore`]: the store on SQLite or PostgreSQL through sqlx's `Any` driver.
//!
//! This module opens and migrates the store and holds the helpers every kind of
//! record shares (write transactions, audit entries, version checks); each kind of
//! record has its own module (`config` for the configuration and its revisions,
//! `auth`, `audit`, `certificates`, `redirects`, `events`, `webhooks`, `metrics`,
//! `alerts`, and `backup` for the whole-store copy).
//!
//! Both backends run the same SQL text: `$n` placeholders (which SQLite accepts),
//! BIGINT timestamps in Unix milliseconds, JSON kept as TEXT. Only the schema
//! migrations and the backup differ per backend.

use std::borrow::Cow;
use std::path::Path;
use std::sync::Once;
use std::time::Duration;

use async_trait::async_trait;
use fleetgate_core::time::now_ms;
use serde_json::Value;
use sqlx::any::AnyPoolOptions;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{AnyConnection, AnyPool, Row};

use crate::{Actor, AuditEvent, MigrationStatus, PoolStats, Result, Store, StoreError};

/// Which database a [`SqlStore`] runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }

    /// The backend a database URL names.
    pub fn from_url(url: &str) -> Result<Self> {
        if url.starts_with("sqlite:") {
            Ok(Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Backend::Postgres)
        } else {
            Err(StoreError::Invalid(
                "database URL must start with sqlite:, postgres:// or postgresql://".into(),
            ))
        }
    }
}

/// How to open a store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// `sqlite://path/to/file.db` or `postgres://user@host/db`.
    pub url: String,
    pub max_connections: u32,
    pub acquire_timeout: Duration,
}

impl StoreOptions {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            max_connections: 8,
            acquire_timeout: Duration::from_secs(10),
        }
    }
}

/// Versions, descriptions and per-backend SQL of the embedded migrations.
const MIGRATIONS: &[(i64, &str, &str, &str)] = &[
    (
        1,
        "init",
        include_str!("../migrations/sqlite/0001_init.sql"),
        include_str!("../migrations/postgres/0001_init.sql"),
    ),
    (
        2,
        "certificates",
        include_str!("../migrations/sqlite/0002_certificates.sql"),
        include_str!("../migrations/postgres/0002_certificates.sql"),
    ),
    (
        3,
        "redirects",
        include_str!("../migrations/sqlite/0003_redirects.sql"),
        include_str!("../migrations/postgres/0003_redirects.sql"),
    ),
    (
        4,
        "events",
        include_str!("../migrations/sqlite/0004_events.sql"),
        include_str!("../migrations/postgres/0004_events.sql"),
    ),
    (
        5,
        "webhooks",
        include_str!("../migrations/sqlite/0005_webhooks.sql"),
        include_str!("../migrations/postgres/0005_webhooks.sql"),
    ),
    (
        6,
        "metrics",
        include_str!("../migrations/sqlite/0006_metrics.sql"),
        include_str!("../migrations/postgres/0006_metrics.sql"),
    ),
    (
        7,
        "alerts",
        include_str!("../migrations/sqlite/0007_alerts.sql"),
        include_str!("../migrations/postgres/0007_alerts.sql"),
    ),
    (
        8,
        "projects start at version one",
        include_str!("../migrations/sqlite/0008_projects_start_at_version_one.sql"),
        include_str!("../migrations/postgres/0008_projects_start_at_version_one.sql"),
    ),
    (
        9,
        "nodes",
        include_str!("../migrations/sqlite/0009_nodes.sql"),
        include_str!("../migrations/postgres/0009_nodes.sql"),
    ),
    (
        10,
        "node presence and history",
        include_str!("../migrations/sqlite/0010_node_presence_and_history.sql"),
        include_str!("../migrations/postgres/0010_node_presence_and_history.sql"),
    ),
    (
        11,
        "tunnels",
        include_str!("../migrations/sqlite/0011_tunnels.sql"),
        include_str!("../migrations/postgres/0011_tunnels.sql"),
    ),
    (
        12,
        "tunnel listens",
        include_str!("../migrations/sqlite/0012_tunnel_listens.sql"),
        include_str!("../migrations/postgres/0012_tunnel_listens.sql"),
    ),
    (
        13,
        "acme",
        include_str!("../migrations/sqlite/0013_acme.sql"),
        include_str!("../migrations/postgres/0013_acme.sql"),
    ),
    (
        14,
        "acme challenges",
        include_str!("../migrations/sqlite/0014_acme_challenges.sql"),
        include_str!("../migrations/postgres/0014_acme_challenges.sql"),
    ),
    (
        15,
        "ai",
        include_str!("../migrations/sqlite/0015_ai.sql"),
        include_str!("../migrations/postgres/0015_ai.sql"),
    ),
    (
        16,
        "incident analyses",
        include_str!("../migrations/sqlite/0016_incident_analyses.sql"),
        include_str!("../migrations/postgres/0016_incident_analyses.sql"),
    ),
    (
        17,
        "ai gateway",
        include_str!("../migrations/sqlite/0017_ai_gateway.sql"),
        include_str!("../migrations/postgres/0017_ai_gateway.sql"),
    ),
    (
        18,
        "agents",
        include_str!("../migrations/sqlite/0018_agents.sql"),
        include_str!("../migrations/postgres/0018_agents.sql"),
    ),
    (
        19,
        "ai budget allowances",
        include_str!("../migrations/sqlite/0019_ai_budget_allowances.sql"),
        include_str!("../migrations/postgres/0019_ai_budget_allowances.sql"),
    ),
    (
        20,
        "ai prices",
        include_str!("../migrations/sqlite/0020_ai_prices.sql"),
        include_str!("../migrations/postgres/0020_ai_prices.sql"),
    ),
    (
        21,
        "ai mcp servers",
        include_str!("../migrations/sqlite/0021_ai_mcp_servers.sql"),
        include_str!("../migrations/postgres/0021_ai_mcp_servers.sql"),
    ),
    (
        22,
        "revision deltas",
        include_str!("../migrations/sqlite/0022_revision_deltas.sql"),
        include_str!("../migrations/postgres/0022_revision_deltas.sql"),
    ),
    (
        23,
        "ai agent reservations",
        include_str!("../migrations/sqlite/0023_ai_agent_reservations.sql"),
        include_str!("../migrations/postgres/0023_ai_agent_reservations.sql"),
    ),
];

fn migrator(backend: Backend) -> Migrator {
    let migrations = MIGRATIONS
        .iter()
        .map(|(version, description, sqlite, postgres)| {
            let sql = match backend {
                Backend::Sqlite => *sqlite,
                Backend::Postgres => *postgres,
            };
            Migration::new(
                *version,
                Cow::Borrowed(*description),
                MigrationType::Simple,
                Cow::Borrowed(sql),
                false,
            )
        })
        .collect::<Vec<_>>();
    let mut m = Migrator::DEFAULT;
    m.migrations = Cow::Owned(migrations);
    m
}

/// The store on SQLite or PostgreSQL.
pub struct SqlStore {
    pub(crate) pool: AnyPool,
    pub(crate) backend: Backend,
    max_connections: u32,
    /// The configuration of the last revision this store committed or read, with
    /// its number: a configuration write whose number follows it starts from it
    /// instead of reading every object again (see `crate::config`).
    pub(crate) committed_config: crate::config::CommittedConfig,
}

static DRIVERS: Once = Once::new();

impl SqlStore {
    /// Connects (creating the SQLite file and its directory if needed). Does not migrate.
    pub async fn open(options: &StoreOptions) -> Result<Self> {
        DRIVERS.call_once(sqlx::any::install_default_drivers);
        let backend = Backend::from_url(&options.url)?;
        let mut url = options.url.clone();
        if backend == Backend::Sqlite {
            let path = url
                .trim_start_matches("sqlite://")
                .trim_start_matches("sqlite:");
            let path = path.split('?').next().unwrap_or_default();
            if path.is_empty() || path == ":memory:" {
                return Err(StoreError::Invalid(
                    "SQLite needs a file path (sqlite://path/to/fleetgate.db)".into(),
                ));
            }
            if let Some(parent) = Path::new(path).parent() {
                if !parent.as_os_str().is_empty() && !parent.exists() {
                    crate::files::private_dir(parent)?;
                }
            }
            // The database, its WAL and shared-memory files hold every secret's
            // hash and ciphertext: 0600, including files an earlier start left.
            crate::files::private_sqlite_files(Path::new(path))?;
            if !url.contains('?') {
                url.push_str("?mode=rwc");
            }
        }
        let pool = AnyPoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .acquire_timeout(options.acquire_timeout)
            .connect(&url)
            .await?;
        if backend == Backend::Sqlite {
            // WAL is a property of the database file: set once, kept by every connection.
            sqlx::query("PRAGMA journal_mode=WAL")
                .fetch_optional(&pool)
                .await?;
        }
        Ok(Self {
            pool,
            backend,
            max_connections: options.max_connections.max(1),
            committed_config: Default::default(),
        })
    }

    /// Opens and applies missing migrations.
    pub async fn open_and_migrate(options: &StoreOptions) -> Result<Self> {
        let store = Self::open(options).await?;
        store.migrate().await?;
        Ok(store)
    }

    /// Starts a transaction that may write. On SQLite it takes the write lock up front
    /// (`BEGIN IMMEDIATE`, waiting up to the busy timeout): a deferred transaction
    /// that reads and then writes after another connection committed fails at once
    /// with SQLITE_BUSY_SNAPSHOT ("database is locked") instead of waiting its turn.
    pub(crate) async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>> {
        Ok(match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            _ => self.pool.begin().await?,
        })
    }

    /// Starts an audited write: [`SqlStore::begin_write`] whose only way to commit
    /// records the change's audit entry in the same transaction.
    pub(crate) async fn begin_audited(&self) -> Result<AuditedWrite> {
        Ok(AuditedWrite {
            tx: self.begin_write().await?,
        })
    }

    pub(crate) async fn count(&self, sql: &str, args: &[Arg]) -> Result<i64> {
        let mut q = sqlx::query(sql);
        for a in args {
            q = a.bind(q);
        }
        Ok(q.fetch_one(&self.pool).await?.try_get::<i64, _>(0)?)
    }
}

/// A write transaction that ends with its audit entry, so no audited change can
/// land without its record. It reads and writes like the connection it wraps
/// (`&mut *tx`, `&mut tx`); the caller locks and reads the row, checks the expected
/// version ([`check_version`]) and writes, then [`AuditedWrite::commit`] inserts
/// the entry and commits. Dropped without committing (an error, a refused
/// precondition), it rolls everything back.
pub(crate) struct AuditedWrite {
    tx: sqlx::Transaction<'static, sqlx::Any>,
}

impl AuditedWrite {
    /// Records `event` as done by `actor` and commits, as one transaction.
    pub(crate) async fn commit(mut self, actor: &Actor, event: &AuditEvent) -> Result<()> {
        insert_audit(&mut self.tx, actor, event).await?;
        self.tx.commit().await?;
        Ok(())
    }
}

impl std::ops::Deref for AuditedWrite {
    type Target = AnyConnection;

    fn deref(&self) -> &AnyConnection {
        &self.tx
    }
}

impl std::ops::DerefMut for AuditedWrite {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        &mut self.tx
    }
}

/// A bound value of a dynamically built query.
#[derive(Debug, Clone)]
pub(crate) enum Arg {
    Text(String),
    Int(i64),
}

impl Arg {
    pub(crate) fn bind<'q>(
        &self,
        q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    ) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
        match self {
            Arg::Text(s) => q.bind(s.clone()),
            Arg::Int(n) => q.bind(*n),
        }
    }
}

fn text_of(v: &Option<Value>) -> Option<String> {
    v.as_ref().map(Value::to_string)
}

pub(crate) fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

/// `e` as a store error: [`StoreError::Conflict`] with `message()` when it is
/// a unique violation (another writer got there first), else as it is.
pub(crate) fn conflict_if_unique(e: sqlx::Error, message: impl FnOnce() -> String) -> StoreError {
    if is_unique_violation(&e) {
        StoreError::Conflict(message())
    } else {
        e.into()
    }
}

pub(crate) async fn insert_audit(
    conn: &mut AnyConnection,
    actor: &Actor,
    ev: &AuditEvent,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO audit_log (at, actor, actor_id, action, target_type, target_id, \
         client_ip, request_id, before_json, after_json) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(now_ms())
    .bind(actor.name.clone())
    .bind(actor.id.clone())
    .bind(ev.action.clone())
    .bind(ev.target_type.clone())
    .bind(ev.target_id.clone())
    .bind(actor.client_ip.clone())
    .bind(actor.request_id.clone())
    .bind(text_of(&ev.before))
    .bind(text_of(&ev.after))
    .execute(conn)
    .await?;
    Ok(())
}

pub(crate) fn check_version(expected: Option<i64>, current: i64) -> Result<()> {
    match expected {
        Some(v) if v != current => Err(StoreError::VersionMismatch { current }),
        _ => Ok(()),
    }
}

#[async_trait]
impl Store for SqlStore {
    fn backend(&self) -> Backend {
        self.backend
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").fetch_one(&self.pool).await?;
        Ok(())
    }

    async fn migrate(&self) -> Result<()> {
        migrator(self.backend).run(&self.pool).await?;
        Ok(())
    }

    async fn migration_status(&self) -> Result<MigrationStatus> {
        let expected = MIGRATIONS.iter().map(|m| m.0).collect();
        let applied = match sqlx::query(
            "SELECT version FROM _sqlx_migrations WHERE success = TRUE ORDER BY version",
        )
        .fetch_all(&self.pool)
        .await
        {
            Ok(rows) => rows
                .iter()
                .map(|r| r.try_get::<i64, _>(0))
                .collect::<std::result::Result<Vec<_>, _>>()?,
            // No migrations table yet: nothing applied.
            Err(sqlx::Error::Database(_)) => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        Ok(MigrationStatus { applied, expected })
    }

    fn pool_stats(&self) -> PoolStats {
        PoolStats {
            size: self.pool.size(),
            idle: self.pool.num_idle() as u32,
            max: self.max_connections,
        }
    }

    async fn close(&self) {
        self.pool.close().await;
    }

    async fn backup(&self, path: &Path) -> Result<()> {
        self.backup_to(path).await
    }
}

impl SqlStore {
    /// Runs one statement outside the typed API (test setup, administration).
    pub async fn execute_raw(&self, sql: &str) -> Result<()> {
        sqlx::query(sql).execute(&self.pool).await?;
        Ok(())
    }
}
