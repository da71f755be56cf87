//! Users, browser sessions, login limiting and API keys.
//!
//! The audit log sees [`UserRecord::audit_view`] and [`ApiKeyRecord::audit_view`],
//! never a password or key hash. The store refuses any change that would leave no
//! enabled super admin.

use std::str::FromStr;

use async_trait::async_trait;
use fleetgate_core::time::now_ms;
use fleetgate_core::user::Role;
use serde_json::Value;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use crate::sql::{check_version, insert_audit, is_unique_violation, Arg, Backend, SqlStore};
use crate::{Actor, AuditEvent, Page, PageRequest, Result, StoreError};

/// The outcome of [`AuthStore::reserve_login_attempt`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginAttempt {
    /// Counted; the id releases it.
    Admitted { id: i64 },
    /// Over the limit; `oldest` is the time of the oldest attempt in the window.
    Refused { oldest: i64 },
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

/// Users, sessions, login limiting and API keys.
#[async_trait]
pub trait AuthStore: Send + Sync {
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
    /// counted as a failure unless [`AuthStore::release_login_attempt`] forgets it) and
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
}

fn role_of(s: &str) -> Result<Role> {
    Role::from_str(s).map_err(StoreError::Corrupt)
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

#[async_trait]
impl AuthStore for SqlStore {
    async fn count_users(&self) -> Result<i64> {
        self.count("SELECT COUNT(*) FROM users", &[]).await
    }

    async fn create_user(&self, actor: &Actor, u: &UserRecord) -> Result<()> {
        let mut tx = self.begin_audited().await?;
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
        tx.commit(
            actor,
            &AuditEvent::new("user.create", "user", Some(&u.id)).after(u.audit_view()),
        )
        .await?;
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
        let mut tx = self.begin_audited().await?;
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
        tx.commit(
            actor,
            &AuditEvent::new("user.update", "user", Some(&u.id))
                .before(before.audit_view())
                .after(after_view),
        )
        .await?;
        Ok(after)
    }

    async fn delete_user(
        &self,
        actor: &Actor,
        id: &str,
        expected_version: Option<i64>,
    ) -> Result<()> {
        let mut tx = self.begin_audited().await?;
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
        // Sessions, keys and AI preferences go with the user (explicitly, whatever
        // the FK settings).
        for sql in [
            "DELETE FROM sessions WHERE user_id = $1",
            "DELETE FROM api_keys WHERE user_id = $1",
            "DELETE FROM ai_model_preferences WHERE owner_id = $1",
            "DELETE FROM ai_preferences WHERE owner_id = $1",
            "DELETE FROM users WHERE id = $1",
        ] {
            sqlx::query(sql)
                .bind(id.to_string())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit(
            actor,
            &AuditEvent::new("user.delete", "user", Some(id)).before(before.audit_view()),
        )
        .await?;
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
        let mut tx = self.begin_audited().await?;
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
        tx.commit(
            actor,
            &AuditEvent::new("auth.login", "session", Some(&s.user_id)),
        )
        .await?;
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
        let mut tx = self.begin_audited().await?;
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
        tx.commit(
            actor,
            &AuditEvent::new("api_key.create", "api_key", Some(&k.id)).after(k.audit_view()),
        )
        .await?;
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
        let mut tx = self.begin_audited().await?;
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
        tx.commit(
            actor,
            &AuditEvent::new("api_key.delete", "api_key", Some(id)).before(before.audit_view()),
        )
        .await?;
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
}
