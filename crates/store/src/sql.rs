//! [`SqlStore`]: the store on SQLite or PostgreSQL through sqlx's `Any` driver.
//!
//! Both backends run the same SQL text: `$n` placeholders (which SQLite accepts),
//! BIGINT timestamps in Unix milliseconds, JSON kept as TEXT. Only the schema
//! migrations and the backup differ per backend.
//!
//! Configuration writes start by bumping the revision counter row. That first write
//! takes SQLite's write lock at once (no deferred-transaction upgrade can fail later)
//! and on PostgreSQL serializes concurrent managers on the row lock, so revision
//! numbers are dense and never handed out twice.

use std::borrow::Cow;
use std::path::Path;
use std::str::FromStr;
use std::sync::Once;
use std::time::Duration;

use async_trait::async_trait;
use fleetgate_core::time::now_ms;
use fleetgate_core::user::Role;
use serde_json::Value;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{AnyConnection, AnyPool, Row};

use crate::{
    Actor, ApiKeyRecord, AuditEvent, AuditFilter, AuditRecord, CertificateRecord, LoginAttempt,
    MigrationStatus, Page, PageRequest, PoolStats, ResourceRecord, ResourceSet, Result,
    RevisionRecord, SessionRecord, Store, StoreError, UserRecord,
};

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

    async fn count(&self, sql: &str, args: &[Arg]) -> Result<i64> {
        let mut q = sqlx::query(sql);
        for a in args {
            q = a.bind(q);
        }
        Ok(q.fetch_one(&self.pool).await?.try_get::<i64, _>(0)?)
    }
}

/// A bound value of a dynamically built query.
#[derive(Debug, Clone)]
enum Arg {
    Text(String),
    Int(i64),
}

impl Arg {
    fn bind<'q>(
        &self,
        q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    ) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
        match self {
            Arg::Text(s) => q.bind(s.clone()),
            Arg::Int(n) => q.bind(*n),
        }
    }
}

fn role_of(s: &str) -> Result<Role> {
    Role::from_str(s).map_err(StoreError::Corrupt)
}

fn json_of(s: Option<String>) -> Result<Option<Value>> {
    s.map(|t| serde_json::from_str(&t).map_err(|e| StoreError::Corrupt(e.to_string())))
        .transpose()
}

fn text_of(v: &Option<Value>) -> Option<String> {
    v.as_ref().map(Value::to_string)
}

fn node_ids_text(ids: &Option<Vec<String>>) -> Result<Option<String>> {
    ids.as_ref()
        .map(|v| serde_json::to_string(v).map_err(|e| StoreError::Invalid(e.to_string())))
        .transpose()
}

const USER_COLUMNS: &str = "id, username, display_name, email, role, password_hash, \
     allowed_node_ids, disabled, version, created_at, updated_at, last_login_at";

fn user_from_row(r: &AnyRow) -> Result<UserRecord> {
    let ids: Option<String> = r.try_get("allowed_node_ids")?;
    Ok(UserRecord {
        id: r.try_get("id")?,
        username: r.try_get("username")?,
        display_name: r.try_get("display_name")?,
        email: r.try_get("email")?,
        role: role_of(&r.try_get::<String, _>("role")?)?,
        password_hash: r.try_get("password_hash")?,
        allowed_node_ids: ids
            .map(|t| serde_json::from_str(&t).map_err(|e| StoreError::Corrupt(e.to_string())))
            .transpose()?,
        disabled: r.try_get::<i64, _>("disabled")? != 0,
        version: r.try_get("version")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        last_login_at: r.try_get("last_login_at")?,
    })
}

const KEY_COLUMNS: &str = "id, name, prefix, key_hash, role, user_id, created_at, last_used_at";

fn key_from_row(r: &AnyRow) -> Result<ApiKeyRecord> {
    Ok(ApiKeyRecord {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        prefix: r.try_get("prefix")?,
        key_hash: r.try_get("key_hash")?,
        role: role_of(&r.try_get::<String, _>("role")?)?,
        user_id: r.try_get("user_id")?,
        created_at: r.try_get("created_at")?,
        last_used_at: r.try_get("last_used_at")?,
    })
}

const CERT_COLUMNS: &str = "name, cert_pem, key_encrypted, version, created_at, updated_at";

fn cert_from_row(r: &AnyRow) -> Result<CertificateRecord> {
    Ok(CertificateRecord {
        name: r.try_get("name")?,
        cert_pem: r.try_get("cert_pem")?,
        key_encrypted: r.try_get("key_encrypted")?,
        version: r.try_get("version")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
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

pub(crate) fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
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

/// Takes the next revision number; the first write of every configuration change.
async fn next_revision(conn: &mut AnyConnection) -> Result<i64> {
    let row = sqlx::query(
        "UPDATE counters SET value = value + 1 WHERE name = 'revision' RETURNING value",
    )
    .fetch_one(conn)
    .await?;
    Ok(row.try_get(0)?)
}

async fn resource_set_in(conn: &mut AnyConnection) -> Result<ResourceSet> {
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

use crate::{CommittedRevision, ConfigCheck, ConfigEdit, Verdict};

impl SqlStore {
    /// The answer to a configuration change that wrote nothing.
    async fn unchanged(&self, current: ResourceSet) -> Result<CommittedRevision> {
        Ok(CommittedRevision {
            number: self.latest_revision().await?,
            written: false,
            before: current.clone(),
            after: current,
            record: None,
        })
    }
}

async fn insert_revision(
    conn: &mut AnyConnection,
    number: i64,
    actor: &Actor,
    message: &str,
    set: &ResourceSet,
) -> Result<()> {
    let snapshot = serde_json::to_string(set).map_err(|e| StoreError::Invalid(e.to_string()))?;
    sqlx::query(
        "INSERT INTO revisions (number, created_at, author, message, snapshot) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(number)
    .bind(now_ms())
    .bind(actor.name.clone())
    .bind(message.to_string())
    .bind(snapshot)
    .execute(conn)
    .await?;
    Ok(())
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

async fn get_user_in(conn: &mut AnyConnection, id: &str) -> Result<Option<UserRecord>> {
    let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1");
    sqlx::query(&sql)
        .bind(id.to_string())
        .fetch_optional(conn)
        .await?
        .map(|r| user_from_row(&r))
        .transpose()
}

/// Refuses a change that would leave no enabled super admin.
async fn keep_a_super_admin(conn: &mut AnyConnection, excluding: &str) -> Result<()> {
    let n: i64 = sqlx::query(
        "SELECT COUNT(*) FROM users WHERE role = 'super_admin' AND disabled = 0 AND id <> $1",
    )
    .bind(excluding.to_string())
    .fetch_one(conn)
    .await?
    .try_get(0)?;
    if n == 0 {
        return Err(StoreError::Conflict(
            "this is the last enabled super_admin; create another one first".into(),
        ));
    }
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

    async fn count_users(&self) -> Result<i64> {
        self.count("SELECT COUNT(*) FROM users", &[]).await
    }

    async fn create_user(&self, actor: &Actor, u: &UserRecord) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let res = sqlx::query(
            "INSERT INTO users (id, username, display_name, email, role, password_hash, \
             allowed_node_ids, disabled, version, created_at, updated_at, last_login_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(u.id.clone())
        .bind(u.username.clone())
        .bind(u.display_name.clone())
        .bind(u.email.clone())
        .bind(u.role.as_str().to_string())
        .bind(u.password_hash.clone())
        .bind(node_ids_text(&u.allowed_node_ids)?)
        .bind(i64::from(u.disabled))
        .bind(u.version)
        .bind(u.created_at)
        .bind(u.updated_at)
        .bind(u.last_login_at)
        .execute(&mut *tx)
        .await;
        match res {
            Err(e) if is_unique_violation(&e) => {
                return Err(StoreError::Conflict(format!(
                    "a user named {:?} already exists",
                    u.username
                )))
            }
            r => r?,
        };
        insert_audit(
            &mut tx,
            actor,
            &AuditEvent::new("user.create", "user", Some(&u.id)).after(u.audit_view()),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_user(&self, id: &str) -> Result<Option<UserRecord>> {
        let mut conn = self.pool.acquire().await?;
        get_user_in(&mut conn, id).await
    }

    async fn get_user_by_username(&self, username: &str) -> Result<Option<UserRecord>> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE username = $1");
        sqlx::query(&sql)
            .bind(username.to_string())
            .fetch_optional(&self.pool)
            .await?
            .map(|r| user_from_row(&r))
            .transpose()
    }

    async fn list_users(&self, page: PageRequest) -> Result<Page<UserRecord>> {
        let total = self.count_users().await?;
        let sql = format!("SELECT {USER_COLUMNS} FROM users ORDER BY username LIMIT $1 OFFSET $2");
        let rows = sqlx::query(&sql)
            .bind(page.limit)
            .bind(page.offset)
            .fetch_all(&self.pool)
            .await?;
        let items = rows.iter().map(user_from_row).collect::<Result<_>>()?;
        Ok(Page { items, total })
    }

    async fn update_user(
        &self,
        actor: &Actor,
        u: &UserRecord,
        expected_version: Option<i64>,
    ) -> Result<UserRecord> {
        let mut tx = self.begin_write().await?;
        // Take the write lock first (SQLite) and lock the row (PostgreSQL).
        let bumped = sqlx::query("UPDATE users SET version = version WHERE id = $1")
            .bind(u.id.clone())
            .execute(&mut *tx)
            .await?;
        if bumped.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("user {}", u.id)));
        }
        let before = get_user_in(&mut tx, &u.id)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("user {}", u.id)))?;
        check_version(expected_version, before.version)?;
        let loses_super = before.role == Role::SuperAdmin
            && !before.disabled
            && (u.role != Role::SuperAdmin || u.disabled);
        if loses_super {
            keep_a_super_admin(&mut tx, &u.id).await?;
        }
        let res = sqlx::query(
            "UPDATE users SET username = $2, display_name = $3, email = $4, role = $5, \
             password_hash = $6, allowed_node_ids = $7, disabled = $8, \
             version = version + 1, updated_at = $9 WHERE id = $1",
        )
        .bind(u.id.clone())
        .bind(u.username.clone())
        .bind(u.display_name.clone())
        .bind(u.email.clone())
        .bind(u.role.as_str().to_string())
        .bind(u.password_hash.clone())
        .bind(node_ids_text(&u.allowed_node_ids)?)
        .bind(i64::from(u.disabled))
        .bind(now_ms())
        .execute(&mut *tx)
        .await;
        match res {
            Err(e) if is_unique_violation(&e) => {
                return Err(StoreError::Conflict(format!(
                    "a user named {:?} already exists",
                    u.username
                )))
            }
            r => r?,
        };
        if before.password_hash != u.password_hash || u.disabled {
            // A new password or a disabled account ends every session of the user.
            sqlx::query("DELETE FROM sessions WHERE user_id = $1")
                .bind(u.id.clone())
                .execute(&mut *tx)
                .await?;
        }
        let after = get_user_in(&mut tx, &u.id)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("user {}", u.id)))?;
        let mut after_view = after.audit_view();
        if before.password_hash != after.password_hash {
            after_view["password_changed"] = Value::Bool(true);
        }
        insert_audit(
            &mut tx,
            actor,
            &AuditEvent::new("user.update", "user", Some(&u.id))
                .before(before.audit_view())
                .after(after_view),
        )
        .await?;
        tx.commit().await?;
        Ok(after)
    }

    async fn delete_user(
        &self,
        actor: &Actor,
        id: &str,
        expected_version: Option<i64>,
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let locked = sqlx::query("UPDATE users SET version = version WHERE id = $1")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        if locked.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("user {id}")));
        }
        let before = get_user_in(&mut tx, id)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("user {id}")))?;
        check_version(expected_version, before.version)?;
        if before.role == Role::SuperAdmin && !before.disabled {
            keep_a_super_admin(&mut tx, id).await?;
        }
        // Sessions and keys go with the user (explicitly, whatever the FK settings).
        for sql in [
            "DELETE FROM sessions WHERE user_id = $1",
            "DELETE FROM api_keys WHERE user_id = $1",
            "DELETE FROM users WHERE id = $1",
        ] {
            sqlx::query(sql)
                .bind(id.to_string())
                .execute(&mut *tx)
                .await?;
        }
        insert_audit(
            &mut tx,
            actor,
            &AuditEvent::new("user.delete", "user", Some(id)).before(before.audit_view()),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn record_login(&self, user_id: &str, at: i64) -> Result<()> {
        sqlx::query("UPDATE users SET last_login_at = $2 WHERE id = $1")
            .bind(user_id.to_string())
            .bind(at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn create_session(&self, actor: &Actor, s: &SessionRecord) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO sessions (token_hash, user_id, csrf_token, client_ip, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(s.token_hash.clone())
        .bind(s.user_id.clone())
        .bind(s.csrf_token.clone())
        .bind(s.client_ip.clone())
        .bind(s.created_at)
        .bind(s.expires_at)
        .execute(&mut *tx)
        .await?;
        insert_audit(
            &mut tx,
            actor,
            &AuditEvent::new("auth.login", "session", Some(&s.user_id)),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_session(
        &self,
        token_hash: &str,
        now: i64,
    ) -> Result<Option<(SessionRecord, UserRecord)>> {
        let row = sqlx::query(
            "SELECT token_hash, user_id, csrf_token, client_ip, created_at, expires_at \
             FROM sessions WHERE token_hash = $1 AND expires_at > $2",
        )
        .bind(token_hash.to_string())
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        let Some(r) = row else { return Ok(None) };
        let session = SessionRecord {
            token_hash: r.try_get("token_hash")?,
            user_id: r.try_get("user_id")?,
            csrf_token: r.try_get("csrf_token")?,
            client_ip: r.try_get("client_ip")?,
            created_at: r.try_get("created_at")?,
            expires_at: r.try_get("expires_at")?,
        };
        let user = self.get_user(&session.user_id).await?;
        Ok(user.map(|u| (session, u)))
    }

    async fn delete_session(&self, actor: &Actor, token_hash: &str) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let n = sqlx::query("DELETE FROM sessions WHERE token_hash = $1")
            .bind(token_hash.to_string())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if n > 0 {
            insert_audit(
                &mut tx,
                actor,
                &AuditEvent::new("auth.logout", "session", actor.id.as_deref()),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(n > 0)
    }

    async fn prune_sessions(&self, now: i64) -> Result<u64> {
        Ok(sqlx::query("DELETE FROM sessions WHERE expires_at <= $1")
            .bind(now)
            .execute(&self.pool)
            .await?
            .rows_affected())
    }

    async fn record_login_failure(&self, client_ip: &str, at: i64) -> Result<()> {
        sqlx::query("INSERT INTO login_failures (client_ip, at) VALUES ($1, $2)")
            .bind(client_ip.to_string())
            .bind(at)
            .execute(&self.pool)
            .await?;
        // Old failures are worthless; keep the table small as it is written.
        sqlx::query("DELETE FROM login_failures WHERE at < $1")
            .bind(at - 86_400_000)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn login_failures(&self, client_ip: &str, since: i64) -> Result<(i64, Option<i64>)> {
        let r = sqlx::query(
            "SELECT COUNT(*), MIN(at) FROM login_failures WHERE client_ip = $1 AND at > $2",
        )
        .bind(client_ip.to_string())
        .bind(since)
        .fetch_one(&self.pool)
        .await?;
        Ok((r.try_get(0)?, r.try_get(1)?))
    }

    async fn clear_login_failures(&self, client_ip: &str) -> Result<()> {
        sqlx::query("DELETE FROM login_failures WHERE client_ip = $1")
            .bind(client_ip.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn reserve_login_attempt(
        &self,
        client_ip: &str,
        at: i64,
        since: i64,
        max: i64,
    ) -> Result<LoginAttempt> {
        // The count and the insert must not interleave with another attempt of the
        // same address: SQLite's write transaction (BEGIN IMMEDIATE) serializes them
        // outright; on PostgreSQL, whose READ COMMITTED transactions would each see
        // only their own uncommitted row, a transaction-scoped advisory lock on the
        // address does (replicas sharing the database share the lock).
        let mut tx = self.begin_write().await?;
        if self.backend == Backend::Postgres {
            sqlx::query(
                "SELECT 1 FROM (SELECT pg_advisory_xact_lock(hashtext('fleetgate.login:' || $1))) AS l",
            )
            .bind(client_ip.to_string())
            .fetch_one(&mut *tx)
            .await?;
        }
        let r = sqlx::query(
            "SELECT COUNT(*), MIN(at) FROM login_failures WHERE client_ip = $1 AND at > $2",
        )
        .bind(client_ip.to_string())
        .bind(since)
        .fetch_one(&mut *tx)
        .await?;
        let count: i64 = r.try_get(0)?;
        let oldest: Option<i64> = r.try_get(1)?;
        if count >= max {
            tx.rollback().await?;
            return Ok(LoginAttempt::Refused {
                oldest: oldest.unwrap_or(at),
            });
        }
        let id: i64 =
            sqlx::query("INSERT INTO login_failures (client_ip, at) VALUES ($1, $2) RETURNING id")
                .bind(client_ip.to_string())
                .bind(at)
                .fetch_one(&mut *tx)
                .await?
                .try_get(0)?;
        // Old attempts are worthless; keep the table small as it is written.
        sqlx::query("DELETE FROM login_failures WHERE at < $1")
            .bind(at - 86_400_000)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(LoginAttempt::Admitted { id })
    }

    async fn release_login_attempt(&self, id: i64) -> Result<()> {
        sqlx::query("DELETE FROM login_failures WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn create_api_key(&self, actor: &Actor, k: &ApiKeyRecord) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let res = sqlx::query(
            "INSERT INTO api_keys (id, name, prefix, key_hash, role, user_id, created_at, last_used_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(k.id.clone())
        .bind(k.name.clone())
        .bind(k.prefix.clone())
        .bind(k.key_hash.clone())
        .bind(k.role.as_str().to_string())
        .bind(k.user_id.clone())
        .bind(k.created_at)
        .bind(k.last_used_at)
        .execute(&mut *tx)
        .await;
        match res {
            Err(e) if is_unique_violation(&e) => {
                return Err(StoreError::Conflict("this API key already exists".into()))
            }
            r => r?,
        };
        insert_audit(
            &mut tx,
            actor,
            &AuditEvent::new("api_key.create", "api_key", Some(&k.id)).after(k.audit_view()),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_api_key(&self, id: &str) -> Result<Option<ApiKeyRecord>> {
        let sql = format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1");
        sqlx::query(&sql)
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?
            .map(|r| key_from_row(&r))
            .transpose()
    }

    async fn find_api_key_by_hash(&self, key_hash: &str) -> Result<Option<ApiKeyRecord>> {
        let sql = format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE key_hash = $1");
        sqlx::query(&sql)
            .bind(key_hash.to_string())
            .fetch_optional(&self.pool)
            .await?
            .map(|r| key_from_row(&r))
            .transpose()
    }

    async fn list_api_keys(
        &self,
        user_id: Option<&str>,
        page: PageRequest,
    ) -> Result<Page<ApiKeyRecord>> {
        let (filter, args) = match user_id {
            Some(u) => ("WHERE user_id = $1", vec![Arg::Text(u.to_string())]),
            None => ("", vec![]),
        };
        let total = self
            .count(&format!("SELECT COUNT(*) FROM api_keys {filter}"), &args)
            .await?;
        let n = args.len();
        let sql = format!(
            "SELECT {KEY_COLUMNS} FROM api_keys {filter} ORDER BY created_at, id LIMIT ${} OFFSET ${}",
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
        let items = rows.iter().map(key_from_row).collect::<Result<_>>()?;
        Ok(Page { items, total })
    }

    async fn delete_api_key(&self, actor: &Actor, id: &str) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let sql = format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1");
        let before = sqlx::query(&sql)
            .bind(id.to_string())
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| key_from_row(&r))
            .transpose()?
            .ok_or_else(|| StoreError::NotFound(format!("API key {id}")))?;
        sqlx::query("DELETE FROM api_keys WHERE id = $1")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        insert_audit(
            &mut tx,
            actor,
            &AuditEvent::new("api_key.delete", "api_key", Some(id)).before(before.audit_view()),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn touch_api_key(&self, id: &str, at: i64) -> Result<()> {
        sqlx::query("UPDATE api_keys SET last_used_at = $2 WHERE id = $1")
            .bind(id.to_string())
            .bind(at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

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
        let before = resource_set_in(&mut tx).await?;
        let mut after = before.clone();
        let now = now_ms();
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
                    return self.unchanged(before).await;
                }
                let version = current.as_ref().map_or(1, |b| b.version + 1);
                if current.is_some() {
                    sqlx::query(
                        "UPDATE resources SET body = $3, version = $4, updated_at = $5 WHERE kind = $1 AND name = $2",
                    )
                } else {
                    sqlx::query(
                        "INSERT INTO resources (kind, name, body, version, updated_at) VALUES ($1, $2, $3, $4, $5)",
                    )
                }
                .bind(kind.to_string())
                .bind(name.to_string())
                .bind(body.to_string())
                .bind(version)
                .bind(now)
                .execute(&mut *tx)
                .await?;
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
                    return self.unchanged(before).await;
                }
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
                if after == before || check.check(&before, &after).await? == Verdict::Unchanged {
                    // Nothing to record: give the number back with the transaction.
                    tx.rollback().await?;
                    return self.unchanged(before).await;
                }
                let old_versions: std::collections::HashMap<(String, String), i64> =
                    sqlx::query("SELECT kind, name, version FROM resources")
                        .fetch_all(&mut *tx)
                        .await?
                        .iter()
                        .map(|r| Ok(((r.try_get(0)?, r.try_get(1)?), r.try_get(2)?)))
                        .collect::<Result<_>>()?;
                sqlx::query("DELETE FROM resources")
                    .execute(&mut *tx)
                    .await?;
                for (kind, objects) in &after {
                    for (name, body) in objects {
                        let unchanged = before.get(kind).and_then(|m| m.get(name)) == Some(body);
                        let version = match old_versions.get(&(kind.clone(), name.clone())) {
                            Some(v) if unchanged => *v,
                            Some(v) => v + 1,
                            None => 1,
                        };
                        sqlx::query(
                            "INSERT INTO resources (kind, name, body, version, updated_at) VALUES ($1, $2, $3, $4, $5)",
                        )
                        .bind(kind.clone())
                        .bind(name.clone())
                        .bind(body.to_string())
                        .bind(version)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                    }
                }
                let to_value = |s: &ResourceSet| serde_json::to_value(s).unwrap_or(Value::Null);
                let ev = AuditEvent::new(action, "config", Some(&number.to_string()))
                    .before(to_value(&before))
                    .after(to_value(&after));
                (None, ev)
            }
        };
        insert_revision(&mut tx, number, actor, message, &after).await?;
        insert_audit(&mut tx, actor, &audit).await?;
        tx.commit().await?;
        Ok(CommittedRevision {
            number,
            written: true,
            before,
            after,
            record,
        })
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
            "SELECT number, created_at, author, message, snapshot FROM revisions WHERE number = $1",
        )
        .bind(number)
        .fetch_optional(&self.pool)
        .await?;
        let Some(r) = row else { return Ok(None) };
        let snapshot: String = r.try_get("snapshot")?;
        Ok(Some(RevisionRecord {
            number: r.try_get("number")?,
            created_at: r.try_get("created_at")?,
            author: r.try_get("author")?,
            message: r.try_get("message")?,
            snapshot: Some(
                serde_json::from_str(&snapshot).map_err(|e| StoreError::Corrupt(e.to_string()))?,
            ),
        }))
    }

    async fn put_certificate(
        &self,
        actor: &Actor,
        c: &CertificateRecord,
        expected_version: Option<i64>,
    ) -> Result<CertificateRecord> {
        let mut tx = self.begin_write().await?;
        // Lock the row (or, for SQLite, take the write lock) before reading it.
        sqlx::query("UPDATE certificates SET version = version WHERE name = $1")
            .bind(c.name.clone())
            .execute(&mut *tx)
            .await?;
        let before = sqlx::query(&format!(
            "SELECT {CERT_COLUMNS} FROM certificates WHERE name = $1"
        ))
        .bind(c.name.clone())
        .fetch_optional(&mut *tx)
        .await?
        .map(|r| cert_from_row(&r))
        .transpose()?;
        check_version(expected_version, before.as_ref().map_or(0, |b| b.version))?;
        let now = now_ms();
        let stored = CertificateRecord {
            version: before.as_ref().map_or(1, |b| b.version + 1),
            created_at: before.as_ref().map_or(now, |b| b.created_at),
            updated_at: now,
            ..c.clone()
        };
        sqlx::query("DELETE FROM certificates WHERE name = $1")
            .bind(c.name.clone())
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO certificates (name, cert_pem, key_encrypted, version, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(stored.name.clone())
        .bind(stored.cert_pem.clone())
        .bind(stored.key_encrypted.clone())
        .bind(stored.version)
        .bind(stored.created_at)
        .bind(stored.updated_at)
        .execute(&mut *tx)
        .await?;
        let view = |r: &CertificateRecord| serde_json::json!({ "name": r.name, "cert_pem": r.cert_pem, "version": r.version });
        let mut ev = AuditEvent::new(
            if before.is_some() {
                "certificate.update"
            } else {
                "certificate.create"
            },
            "certificate",
            Some(&c.name),
        )
        .after(view(&stored));
        if let Some(b) = &before {
            ev = ev.before(view(b));
        }
        insert_audit(&mut tx, actor, &ev).await?;
        tx.commit().await?;
        Ok(stored)
    }

    async fn get_certificate(&self, name: &str) -> Result<Option<CertificateRecord>> {
        sqlx::query(&format!(
            "SELECT {CERT_COLUMNS} FROM certificates WHERE name = $1"
        ))
        .bind(name.to_string())
        .fetch_optional(&self.pool)
        .await?
        .map(|r| cert_from_row(&r))
        .transpose()
    }

    async fn list_certificates(&self) -> Result<Vec<CertificateRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {CERT_COLUMNS} FROM certificates ORDER BY name"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(cert_from_row).collect()
    }

    async fn delete_certificate(&self, actor: &Actor, name: &str) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let n = sqlx::query("DELETE FROM certificates WHERE name = $1")
            .bind(name.to_string())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if n == 0 {
            return Err(StoreError::NotFound(format!("certificate {name}")));
        }
        insert_audit(
            &mut tx,
            actor,
            &AuditEvent::new("certificate.delete", "certificate", Some(name)),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn backup(&self, path: &Path) -> Result<()> {
        if let Some(parent) = path.parent() {
            crate::files::private_dir(parent)?;
        }
        // The backup file is created here, empty and 0600, before anything is
        // written to it (VACUUM INTO accepts an empty file); creating it fails if
        // it exists, so two backups of one name cannot both write.
        match crate::files::create_private_file(path) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(StoreError::Conflict(format!(
                    "backup {} already exists",
                    path.display()
                )));
            }
            Err(e) => return Err(e.into()),
        }
        let target = path
            .to_str()
            .ok_or_else(|| StoreError::Invalid("backup path is not UTF-8".into()))?
            .to_string();
        let written = self.write_backup(path, target).await;
        if written.is_err() {
            // No empty or partial file is left to pass for a backup.
            let _ = std::fs::remove_file(path);
        }
        written
    }
}

impl SqlStore {
    /// Writes a backup into `path`, which exists, empty and private.
    async fn write_backup(&self, path: &Path, target: String) -> Result<()> {
        match self.backend {
            Backend::Sqlite => {
                // An online, transactionally consistent copy of the whole database file.
                sqlx::query("VACUUM INTO $1")
                    .bind(target)
                    .execute(&self.pool)
                    .await?;
            }
            Backend::Postgres => {
                // A logical export of every table from one consistent snapshot.
                let mut tx = self.begin_write().await?;
                sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                    .execute(&mut *tx)
                    .await?;
                let mut tables = serde_json::Map::new();
                for table in [
                    "certificates",
                    "namespaces",
                    "projects",
                    "redirects",
                    "pages",
                    "project_versions",
                    "project_tokens",
                    "project_agents",
                    "events",
                    "webhooks",
                    "webhook_deliveries",
                    "webhook_attempts",
                    "alert_rules",
                    "incidents",
                    "incident_timeline",
                    "users",
                    "api_keys",
                    "resources",
                    "revisions",
                    "audit_log",
                    "counters",
                    "_sqlx_migrations",
                ] {
                    let sql = format!("SELECT row_to_json(t)::text FROM {table} t");
                    let rows = sqlx::query(&sql).fetch_all(&mut *tx).await?;
                    let mut out = Vec::with_capacity(rows.len());
                    for r in rows {
                        let text: String = r.try_get(0)?;
                        out.push(
                            serde_json::from_str::<Value>(&text)
                                .map_err(|e| StoreError::Corrupt(e.to_string()))?,
                        );
                    }
                    tables.insert(table.to_string(), Value::Array(out));
                }
                tx.commit().await?;
                let doc = serde_json::json!({
                    "format": "fleetgate-backup/1",
                    "backend": "postgres",
                    "created_at": fleetgate_core::time::rfc3339(now_ms()),
                    "tables": tables,
                });
                let bytes = serde_json::to_vec_pretty(&doc)
                    .map_err(|e| StoreError::Invalid(e.to_string()))?;
                let tmp = path.with_extension("partial");
                let _ = std::fs::remove_file(&tmp);
                let mut f = crate::files::create_private_file(&tmp)?;
                std::io::Write::write_all(&mut f, &bytes)?;
                f.sync_all()?;
                tokio::fs::rename(&tmp, path).await?;
            }
        }
        Ok(())
    }
}

impl SqlStore {
    /// Runs one statement outside the typed API (test setup, administration).
    pub async fn execute_raw(&self, sql: &str) -> Result<()> {
        sqlx::query(sql).execute(&self.pool).await?;
        Ok(())
    }
}
