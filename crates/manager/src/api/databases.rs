//! The databases admin API (FlatRun compatibility): test a connection, list
//! databases and tables, run a statement, create a database or a user, on
//! PostgreSQL and MySQL/MariaDB servers.
//!
//! Nothing is stored: every request carries its connection, opened for that
//! request alone (5 s to connect) and closed at its end, so no database secret
//! rests on the manager's disk. Neither password is ever logged, audited or
//! echoed: sqlx's statement logging is off on these connections, and every error
//! text of the driver is scrubbed of them before it reaches the client.
//!
//! Read-only queries are enforced by the database, not by parsing SQL:
//! - PostgreSQL: `BEGIN READ ONLY` with `SET LOCAL statement_timeout`, then the
//!   caller's SQL as ONE prepared statement of the extended protocol (which cannot
//!   hold several commands, so `COMMIT; DROP TABLE t` cannot leave the
//!   transaction); always rolled back.
//! - MySQL/MariaDB: `SET SESSION TRANSACTION READ ONLY` *and* `START TRANSACTION
//!   READ ONLY`, then one prepared statement (single by protocol), rolled back.
//!   The session default matters: DDL commits the open transaction implicitly
//!   and would then run in a new, read-write one; with the session read-only
//!   the server refuses it (error 1792).
//!   The statement timeout is `max_statement_time` (MariaDB, seconds) or
//!   `MAX_EXECUTION_TIME` (MySQL, milliseconds, SELECT only).
//!
//! Besides, a client-side timeout drops the connection. What READ ONLY does not
//! stop is up to the database's own privileges: functions with effects outside
//! the transaction (`pg_terminate_backend`, `COPY … TO PROGRAM`, dblink,
//! `SELECT … INTO OUTFILE`) run if the given user may run them.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, SecondsFormat, Utc};
use fleetgate_core::user::Role;
use fleetgate_store::AuditEvent;
use futures::TryStreamExt;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use sqlx::mysql::{MySqlConnectOptions, MySqlConnection, MySqlRow, MySqlSslMode};
use sqlx::postgres::types::{Oid, PgInterval, PgMoney, PgTimeTz};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgRow, PgSslMode, PgTypeKind};
use sqlx::{
    Column, ConnectOptions, Connection as _, Either, Executor, Row, Statement, TypeInfo, ValueRef,
};
use utoipa::ToSchema;

use crate::auth::AuthContext;
use crate::error::{ApiError, ApiResult};
use crate::extract::JsonBody;
use crate::AppState;

/// How long a connection may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest statement accepted, in bytes.
const MAX_SQL_BYTES: usize = 64 * 1024;
/// How much of a statement the audit log keeps, in characters.
const AUDIT_SQL_CHARS: usize = 200;
/// Time allowed past `timeout_ms` for the server's own timeout to answer before
/// the connection is dropped.
const CLIENT_GRACE: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    #[serde(alias = "postgresql")]
    Postgres,
    /// MySQL or MariaDB.
    #[serde(alias = "mariadb")]
    Mysql,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// Plain TCP.
    Disable,
    /// TLS when the server offers it (the default).
    #[default]
    Prefer,
    /// TLS or fail; the server's certificate is not verified (as libpq's `require`).
    Require,
}

/// Where and as whom to connect; sent with every request, never stored.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectionSpec {
    #[serde(rename = "type")]
    pub kind: Engine,
    /// Host name or IP address (no Unix socket paths).
    #[schema(min_length = 1, max_length = 255)]
    pub host: String,
    /// 5432 for PostgreSQL, 3306 for MySQL when left out.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 65535)]
    pub port: Option<u16>,
    #[schema(min_length = 1, max_length = 128)]
    pub user: String,
    #[serde(default)]
    #[schema(max_length = 1024)]
    pub password: Option<String>,
    /// The database to connect to (PostgreSQL: `postgres` when left out).
    #[serde(default)]
    #[schema(min_length = 1, max_length = 128)]
    pub database: Option<String>,
    #[serde(default)]
    pub tls: Option<TlsMode>,
}

impl ConnectionSpec {
    fn port(&self) -> u16 {
        self.port.unwrap_or(match self.kind {
            Engine::Postgres => 5432,
            Engine::Mysql => 3306,
        })
    }

    fn password(&self) -> &str {
        self.password.as_deref().unwrap_or("")
    }

    fn check(&self) -> ApiResult<()> {
        let host_ok = (1..=255).contains(&self.host.chars().count())
            && !self
                .host
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == '/');
        if !host_ok {
            // A path would be a Unix socket of the manager's own host, reached as
            // the manager's OS user (peer authentication).
            return Err(ApiError::bad_request(
                "connection.host",
                "must be a host name or IP address of 1 to 255 characters, without spaces or '/'",
            ));
        }
        if self.port == Some(0) {
            return Err(ApiError::bad_request(
                "connection.port",
                "must be from 1 to 65535",
            ));
        }
        if !(1..=128).contains(&self.user.chars().count()) {
            return Err(ApiError::bad_request(
                "connection.user",
                "must be 1 to 128 characters",
            ));
        }
        if self
            .password
            .as_ref()
            .is_some_and(|p| p.chars().count() > 1024)
        {
            return Err(ApiError::bad_request(
                "connection.password",
                "must be at most 1024 characters",
            ));
        }
        if let Some(d) = &self.database {
            check_database_field("connection.database", d)?;
        }
        Ok(())
    }

    /// `host:port/database`, the audit target.
    fn target(&self, database: Option<&str>) -> String {
        let db = database.or(self.database.as_deref()).unwrap_or("");
        format!("{}:{}/{db}", self.host, self.port())
    }

    /// What the audit log records of the connection: never the password.
    fn audit_facts(&self, database: Option<&str>) -> Value {
        json!({
            "engine": self.kind,
            "host": self.host,
            "port": self.port(),
            "user": self.user,
            "database": database.or(self.database.as_deref()),
        })
    }
}

fn check_database_field(field: &str, d: &str) -> ApiResult<()> {
    if !(1..=128).contains(&d.chars().count()) {
        return Err(ApiError::bad_request(field, "must be 1 to 128 characters"));
    }
    Ok(())
}

/// Names this API creates: `[A-Za-z_][A-Za-z0-9_]{0,62}` (and still quoted).
fn check_identifier(field: &str, name: &str) -> ApiResult<()> {
    let mut chars = name.chars();
    let ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 63;
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            field,
            format!("{name:?} is not a valid name: a letter or '_', then up to 62 letters, digits or '_'"),
        ))
    }
}

fn quote_ident(engine: Engine, name: &str) -> String {
    match engine {
        Engine::Postgres => format!("\"{}\"", name.replace('"', "\"\"")),
        Engine::Mysql => format!("`{}`", name.replace('`', "``")),
    }
}

/// Replaces every secret in a driver's message, so that no password reaches the
/// client even if a server echoes part of a statement.
fn scrub(message: &str, secrets: &[&str]) -> String {
    let mut m = message.to_string();
    for s in secrets.iter().filter(|s| !s.is_empty()) {
        m = m.replace(s, "***");
    }
    m
}

/// Which step failed, which decides the status of a driver error.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Connect,
    Prepare,
    Execute,
}

/// A driver error as an API error: 502 when the server cannot be reached or the
/// connection fails, 400 for a statement that cannot be prepared, 409 for a
/// database or user that exists, 422 for a refused statement (`READ_ONLY` when
/// the read-only transaction refused it), 504 for a timeout.
fn db_error(e: sqlx::Error, phase: Phase, secrets: &[&str]) -> ApiError {
    let text = scrub(&e.to_string(), secrets);
    let sqlx::Error::Database(dbe) = &e else {
        return ApiError::new(
            StatusCode::BAD_GATEWAY,
            "DATABASE_UNREACHABLE",
            match phase {
                Phase::Connect => format!("could not connect to the database: {text}"),
                _ => format!("the connection to the database failed: {text}"),
            },
        );
    };
    let message = scrub(dbe.message(), secrets);
    let sqlstate = dbe.code().map(|c| c.to_string());
    let number = dbe
        .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
        .map(|m| m.number());
    let details = json!({ "sqlstate": sqlstate, "error_number": number, "message": message });
    let state = sqlstate.as_deref().unwrap_or("");
    if phase == Phase::Connect {
        return ApiError::new(
            StatusCode::BAD_GATEWAY,
            "DATABASE_UNREACHABLE",
            format!("could not connect to the database: {message}"),
        )
        .with_details(details);
    }
    // PostgreSQL query_canceled (statement_timeout); MariaDB max_statement_time;
    // MySQL MAX_EXECUTION_TIME.
    if state == "57014" || matches!(number, Some(1969 | 3024)) {
        return ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "QUERY_TIMEOUT",
            format!("the statement ran past timeout_ms and was cancelled by the server: {message}"),
        )
        .with_details(details);
    }
    if state == "25006" {
        return ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "READ_ONLY",
            format!("the statement writes, and this query is read-only (only an admin may send write: true): {message}"),
        )
        .with_details(details);
    }
    // duplicate_database, duplicate_object (role); MySQL database exists, user exists.
    if matches!(state, "42P04" | "42710") || matches!(number, Some(1007 | 1396)) {
        return ApiError::new(StatusCode::CONFLICT, "CONFLICT", message).with_details(details);
    }
    if phase == Phase::Prepare {
        // Several statements, a statement the prepared-statement protocol does not
        // take (MySQL 1295), a syntax error or an unknown table.
        return ApiError::new(
            StatusCode::BAD_REQUEST,
            "STATEMENT_REJECTED",
            format!("the database refused to prepare the statement (send exactly one statement): {message}"),
        )
        .with_details(details);
    }
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "QUERY_FAILED",
        format!("the database refused the statement: {message}"),
    )
    .with_details(details)
}

fn query_timeout(timeout: Duration) -> ApiError {
    ApiError::new(
        StatusCode::GATEWAY_TIMEOUT,
        "QUERY_TIMEOUT",
        format!(
            "the statement ran past timeout_ms ({} ms) and was cut by dropping the connection",
            timeout.as_millis()
        ),
    )
}

/// One open connection, for one request.
enum Db {
    Pg(PgConnection),
    My {
        conn: MySqlConnection,
        mariadb: bool,
    },
}

struct Opened {
    db: Db,
    /// The server's version string.
    server: String,
}

impl Db {
    /// Closes politely, within a second; a connection left mid-result is dropped
    /// instead (closing would first read the rest of the result).
    async fn close(self) {
        let close = async {
            let _ = match self {
                Db::Pg(c) => c.close().await,
                Db::My { conn, .. } => conn.close().await,
            };
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), close).await;
    }

    async fn exec(&mut self, sql: &str, secrets: &[&str]) -> ApiResult<u64> {
        // raw_sql: our own statements, sent as they are (some cannot be prepared).
        let r = match self {
            Db::Pg(c) => c
                .execute(sqlx::raw_sql(sql))
                .await
                .map(|r| r.rows_affected()),
            Db::My { conn, .. } => conn
                .execute(sqlx::raw_sql(sql))
                .await
                .map(|r| r.rows_affected()),
        };
        r.map_err(|e| db_error(e, Phase::Execute, secrets))
    }
}

async fn connect(spec: &ConnectionSpec, database: Option<&str>) -> ApiResult<Opened> {
    let database = database.or(spec.database.as_deref());
    let secrets = [spec.password()];
    let open = async {
        match spec.kind {
            Engine::Postgres => {
                // new_without_pgpass still reads PG* variables; every one that
                // matters is set here so the manager's environment lends nothing
                // (notably not PGPASSWORD).
                let opts = PgConnectOptions::new_without_pgpass()
                    .host(&spec.host)
                    .port(spec.port())
                    .username(&spec.user)
                    .password(spec.password())
                    .database(database.unwrap_or("postgres"))
                    .application_name("fleetgate")
                    .ssl_mode(match spec.tls.unwrap_or_default() {
                        TlsMode::Disable => PgSslMode::Disable,
                        TlsMode::Prefer => PgSslMode::Prefer,
                        TlsMode::Require => PgSslMode::Require,
                    })
                    .disable_statement_logging();
                let mut c = opts.connect().await?;
                let server: String = sqlx::query_scalar("SELECT version()")
                    .fetch_one(&mut c)
                    .await?;
                Ok(Opened {
                    db: Db::Pg(c),
                    server,
                })
            }
            Engine::Mysql => {
                let mut opts = MySqlConnectOptions::new()
                    .host(&spec.host)
                    .port(spec.port())
                    .username(&spec.user)
                    .ssl_mode(match spec.tls.unwrap_or_default() {
                        TlsMode::Disable => MySqlSslMode::Disabled,
                        TlsMode::Prefer => MySqlSslMode::Preferred,
                        TlsMode::Require => MySqlSslMode::Required,
                    })
                    // The server's own SQL mode, not sqlx's additions (`||` would
                    // mean concatenation): the caller's SQL means what it means
                    // on that server. The time zone stays UTC so that TIMESTAMP
                    // values are read as UTC instants.
                    .pipes_as_concat(false)
                    .no_engine_substitution(false)
                    .disable_statement_logging();
                // An empty password is no password: MySQL answers the
                // handshake with an empty response then, not a scramble of "".
                if !spec.password().is_empty() {
                    opts = opts.password(spec.password());
                }
                if let Some(d) = database {
                    opts = opts.database(d);
                }
                let mut c = opts.connect().await?;
                let (server,): (String,) = sqlx::query_as("SELECT CAST(VERSION() AS CHAR)")
                    .fetch_one(&mut c)
                    .await?;
                let mariadb = server.contains("MariaDB");
                Ok(Opened {
                    db: Db::My { conn: c, mariadb },
                    server,
                })
            }
        }
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, open).await {
        Ok(Ok(o)) => Ok(o),
        Ok(Err(e)) => Err(db_error(e, Phase::Connect, &secrets)),
        Err(_) => Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            "DATABASE_UNREACHABLE",
            format!(
                "could not connect to the database at {}:{} within {} s",
                spec.host,
                spec.port(),
                CONNECT_TIMEOUT.as_secs()
            ),
        )),
    }
}

/// Records a call in the audit log: the connection (no password), what was
/// done and how it ended.
async fn audit(
    state: &AppState,
    auth: &AuthContext,
    action: &str,
    spec: &ConnectionSpec,
    database: Option<&str>,
    extra: Value,
    outcome: &ApiResult<()>,
) -> ApiResult<()> {
    let mut after = spec.audit_facts(database);
    if let (Some(obj), Value::Object(extra)) = (after.as_object_mut(), extra) {
        obj.extend(extra);
        match outcome {
            Ok(()) => {
                obj.insert("ok".into(), json!(true));
            }
            Err(e) => {
                obj.insert("ok".into(), json!(false));
                obj.insert("error_code".into(), json!(e.code));
            }
        }
    }
    let target = spec.target(database);
    state
        .store
        .append_audit(
            &auth.actor,
            AuditEvent::new(action, "database", Some(&target)).after(after),
        )
        .await?;
    Ok(())
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectionRequest {
    pub connection: ConnectionSpec,
}

#[derive(Serialize, ToSchema)]
pub struct TestResult {
    pub ok: bool,
    /// The server's version string, e.g. `PostgreSQL 15.4 …` or `10.11.6-MariaDB…`.
    pub server: String,
    pub engine: Engine,
    /// Time to connect and read the version.
    pub latency_ms: u64,
}

#[utoipa::path(post, path = "/api/v1/databases/test", operation_id = "test_database", tag = "databases",
    request_body = ConnectionRequest,
    responses((status = 200, description = "Connected", body = TestResult),
              (status = 502, description = "Connection refused, authentication failed or timed out (`DATABASE_UNREACHABLE`)", body = crate::error::ErrorBody)))]
pub async fn test(
    State(state): State<AppState>,
    auth: AuthContext,
    JsonBody(body): JsonBody<ConnectionRequest>,
) -> ApiResult<Json<TestResult>> {
    auth.require(Role::Operator)?;
    let spec = &body.connection;
    spec.check()?;
    let started = Instant::now();
    let result = connect(spec, None).await;
    let latency_ms = millis(started.elapsed());
    let outcome = result.as_ref().map(|_| ()).map_err(clone_error);
    audit(
        &state,
        &auth,
        "database.test",
        spec,
        None,
        json!({}),
        &outcome,
    )
    .await?;
    let opened = result?;
    opened.db.close().await;
    Ok(Json(TestResult {
        ok: true,
        server: opened.server,
        engine: spec.kind,
        latency_ms,
    }))
}

/// The fields of an error that the audit records (the error itself goes to the client).
fn clone_error(e: &ApiError) -> ApiError {
    ApiError::new(e.status, e.code, e.message.clone())
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[derive(Serialize, ToSchema)]
pub struct DatabaseInfo {
    pub name: String,
    /// Bytes on disk, when the server tells it cheaply (PostgreSQL: only for
    /// databases the user may connect to).
    pub size_bytes: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub struct DatabaseList {
    pub databases: Vec<DatabaseInfo>,
}

#[utoipa::path(post, path = "/api/v1/databases/list", operation_id = "list_databases", tag = "databases",
    request_body = ConnectionRequest,
    responses((status = 200, description = "The server's databases (PostgreSQL: not templates)", body = DatabaseList),
              (status = 502, description = "The database cannot be reached", body = crate::error::ErrorBody),
              (status = 422, description = "The server refused the listing", body = crate::error::ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    auth: AuthContext,
    JsonBody(body): JsonBody<ConnectionRequest>,
) -> ApiResult<Json<DatabaseList>> {
    auth.require(Role::Operator)?;
    let spec = &body.connection;
    spec.check()?;
    let result = list_databases(spec).await;
    let extra = json!({ "rows": result.as_ref().map(|l| l.databases.len()).ok() });
    let outcome = result.as_ref().map(|_| ()).map_err(clone_error);
    audit(&state, &auth, "database.list", spec, None, extra, &outcome).await?;
    result.map(Json)
}

async fn list_databases(spec: &ConnectionSpec) -> ApiResult<DatabaseList> {
    let mut opened = connect(spec, None).await?;
    let secrets = [spec.password()];
    let rows: Result<Vec<(String, Option<i64>)>, sqlx::Error> = match &mut opened.db {
        Db::Pg(c) => {
            // pg_database_size needs CONNECT on the database; others get no size.
            sqlx::query_as(
                "SELECT datname::text, CASE WHEN has_database_privilege(datname, 'CONNECT') \
                 THEN pg_database_size(datname) END \
                 FROM pg_database WHERE NOT datistemplate ORDER BY 1",
            )
            .fetch_all(&mut *c)
            .await
        }
        Db::My { conn, .. } => {
            // The same names as SHOW DATABASES, with the sum of their tables' sizes.
            sqlx::query_as(
                "SELECT CAST(s.schema_name AS CHAR), \
                 CAST(SUM(t.data_length + t.index_length) AS SIGNED) \
                 FROM information_schema.schemata s \
                 LEFT JOIN information_schema.tables t ON t.table_schema = s.schema_name \
                 GROUP BY s.schema_name ORDER BY 1",
            )
            .fetch_all(&mut *conn)
            .await
        }
    };
    opened.db.close().await;
    let rows = rows.map_err(|e| db_error(e, Phase::Execute, &secrets))?;
    Ok(DatabaseList {
        databases: rows
            .into_iter()
            .map(|(name, size_bytes)| DatabaseInfo { name, size_bytes })
            .collect(),
    })
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TablesRequest {
    pub connection: ConnectionSpec,
    /// The database whose tables to list.
    #[schema(min_length = 1, max_length = 128)]
    pub database: String,
}

#[derive(Serialize, ToSchema)]
pub struct TableInfo {
    pub schema: String,
    pub name: String,
    /// `table`, `view`, `materialized_view`, `partitioned_table`,
    /// `foreign_table` or `system_view`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The planner's estimate; null when the server has none yet.
    pub approximate_rows: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub struct TableList {
    pub database: String,
    pub tables: Vec<TableInfo>,
}

#[utoipa::path(post, path = "/api/v1/databases/tables", operation_id = "list_database_tables", tag = "databases",
    request_body = TablesRequest,
    responses((status = 200, description = "Tables and views of the database, with an approximate row count", body = TableList),
              (status = 502, description = "The database cannot be reached", body = crate::error::ErrorBody),
              (status = 422, description = "The server refused the listing", body = crate::error::ErrorBody)))]
pub async fn tables(
    State(state): State<AppState>,
    auth: AuthContext,
    JsonBody(body): JsonBody<TablesRequest>,
) -> ApiResult<Json<TableList>> {
    auth.require(Role::Operator)?;
    let spec = &body.connection;
    spec.check()?;
    check_database_field("database", &body.database)?;
    let result = list_tables(spec, &body.database).await;
    let extra = json!({ "rows": result.as_ref().map(|l| l.tables.len()).ok() });
    let outcome = result.as_ref().map(|_| ()).map_err(clone_error);
    audit(
        &state,
        &auth,
        "database.tables",
        spec,
        Some(&body.database),
        extra,
        &outcome,
    )
    .await?;
    result.map(Json)
}

async fn list_tables(spec: &ConnectionSpec, database: &str) -> ApiResult<TableList> {
    let mut opened = connect(spec, Some(database)).await?;
    let secrets = [spec.password()];
    type TableRow = (String, String, String, Option<i64>);
    let rows: Result<Vec<TableRow>, sqlx::Error> = match &mut opened.db {
        Db::Pg(c) => {
            // reltuples is -1 for a table never analyzed (PostgreSQL 14+).
            sqlx::query_as(
                "SELECT n.nspname::text, c.relname::text, \
                 CASE c.relkind WHEN 'r' THEN 'table' WHEN 'v' THEN 'view' \
                 WHEN 'm' THEN 'materialized_view' WHEN 'p' THEN 'partitioned_table' \
                 ELSE 'foreign_table' END, \
                 CASE WHEN c.relkind IN ('v') OR c.reltuples < 0 THEN NULL ELSE c.reltuples::int8 END \
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.relkind IN ('r', 'v', 'm', 'p', 'f') \
                 AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
                 AND n.nspname NOT LIKE 'pg\\_toast%' \
                 ORDER BY 1, 2",
            )
            .fetch_all(&mut *c)
            .await
        }
        Db::My { conn, .. } => {
            sqlx::query_as(
                "SELECT CAST(table_schema AS CHAR), CAST(table_name AS CHAR), \
                 CAST(CASE table_type WHEN 'BASE TABLE' THEN 'table' WHEN 'VIEW' THEN 'view' \
                 WHEN 'SYSTEM VIEW' THEN 'system_view' ELSE LOWER(table_type) END AS CHAR), \
                 CAST(table_rows AS SIGNED) \
                 FROM information_schema.tables WHERE table_schema = ? ORDER BY 2",
            )
            .bind(database)
            .fetch_all(&mut *conn)
            .await
        }
    };
    opened.db.close().await;
    let rows = rows.map_err(|e| db_error(e, Phase::Execute, &secrets))?;
    Ok(TableList {
        database: database.to_string(),
        tables: rows
            .into_iter()
            .map(|(schema, name, kind, approximate_rows)| TableInfo {
                schema,
                name,
                kind,
                approximate_rows,
            })
            .collect(),
    })
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QueryRequest {
    pub connection: ConnectionSpec,
    /// Overrides `connection.database`.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 128)]
    pub database: Option<String>,
    /// Exactly one statement, at most 64 KiB.
    #[schema(min_length = 1, max_length = 65536)]
    pub sql: String,
    /// Run outside a read-only transaction (admins only).
    #[serde(default)]
    pub write: bool,
    /// Rows returned at most (1000 by default, up to 10000).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 10000)]
    pub max_rows: Option<u32>,
    /// Statement timeout (5000 by default, up to 60000).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 60000)]
    pub timeout_ms: Option<u32>,
}

#[derive(Serialize, ToSchema)]
pub struct ColumnInfo {
    pub name: String,
    /// The server's type name, e.g. `INT4`, `TIMESTAMPTZ`, `VARCHAR`.
    #[serde(rename = "type")]
    pub type_name: String,
}

#[derive(Serialize, ToSchema)]
pub struct QueryResult {
    pub columns: Vec<ColumnInfo>,
    /// Each row's values in column order: numbers, text, booleans, JSON, null;
    /// dates and times as RFC 3339 text, numeric/decimal as text, binary as
    /// base64 (MySQL: binary that is not UTF-8, since the protocol cannot tell
    /// `_bin`-collated text from bytes), and `{"unsupported_type": name}` where no
    /// JSON form is known.
    #[schema(value_type = Vec<Vec<Object>>)]
    pub rows: Vec<Vec<Value>>,
    pub row_count: usize,
    /// More rows were there past `max_rows`.
    pub truncated: bool,
    /// Rows written or returned, as the server counts them.
    pub rows_affected: u64,
    pub elapsed_ms: u64,
}

#[utoipa::path(post, path = "/api/v1/databases/query", operation_id = "query_database", tag = "databases",
    request_body = QueryRequest,
    responses((status = 200, description = "The statement's result", body = QueryResult),
              (status = 400, description = "Invalid input, or a statement that cannot be prepared (several statements, some admin commands, a syntax error): `STATEMENT_REJECTED`", body = crate::error::ErrorBody),
              (status = 403, description = "Operators may read; only admins may write", body = crate::error::ErrorBody),
              (status = 422, description = "The database refused the statement: `READ_ONLY` (a write in a read-only query) or `QUERY_FAILED`", body = crate::error::ErrorBody),
              (status = 502, description = "The database cannot be reached", body = crate::error::ErrorBody),
              (status = 504, description = "The statement ran past timeout_ms (`QUERY_TIMEOUT`)", body = crate::error::ErrorBody)))]
pub async fn query(
    State(state): State<AppState>,
    auth: AuthContext,
    JsonBody(body): JsonBody<QueryRequest>,
) -> ApiResult<Json<QueryResult>> {
    auth.require(Role::Operator)?;
    if body.write {
        auth.require(Role::Admin).map_err(|_| {
            ApiError::forbidden(format!(
                "write: true needs the admin role or higher; you have {} (queries of operators are read-only)",
                auth.role
            ))
        })?;
    }
    let spec = &body.connection;
    spec.check()?;
    if let Some(d) = &body.database {
        check_database_field("database", d)?;
    }
    if body.sql.trim().is_empty() {
        return Err(ApiError::bad_request("sql", "must not be empty"));
    }
    if body.sql.len() > MAX_SQL_BYTES {
        return Err(ApiError::bad_request(
            "sql",
            format!(
                "is {} bytes; at most {MAX_SQL_BYTES} are accepted",
                body.sql.len()
            ),
        ));
    }
    let max_rows = body.max_rows.unwrap_or(1000);
    if !(1..=10_000).contains(&max_rows) {
        return Err(ApiError::bad_request("max_rows", "must be from 1 to 10000"));
    }
    let timeout_ms = body.timeout_ms.unwrap_or(5000);
    if !(1..=60_000).contains(&timeout_ms) {
        return Err(ApiError::bad_request(
            "timeout_ms",
            "must be from 1 to 60000",
        ));
    }
    let plan = Plan {
        sql: &body.sql,
        write: body.write,
        max_rows: max_rows as usize,
        timeout: Duration::from_millis(u64::from(timeout_ms)),
    };
    let database = body.database.as_deref();
    let result = run_query(spec, database, &plan).await;
    let extra = json!({
        "sql": body.sql.chars().take(AUDIT_SQL_CHARS).collect::<String>(),
        "write": body.write,
        "rows": result.as_ref().map(|r| r.row_count).ok(),
        "rows_affected": result.as_ref().map(|r| r.rows_affected).ok(),
    });
    let outcome = result.as_ref().map(|_| ()).map_err(clone_error);
    audit(
        &state,
        &auth,
        "database.query",
        spec,
        database,
        extra,
        &outcome,
    )
    .await?;
    result.map(Json)
}

struct Plan<'a> {
    sql: &'a str,
    write: bool,
    max_rows: usize,
    timeout: Duration,
}

async fn run_query(
    spec: &ConnectionSpec,
    database: Option<&str>,
    plan: &Plan<'_>,
) -> ApiResult<QueryResult> {
    let opened = connect(spec, database).await?;
    let mut db = opened.db;
    let secrets = [spec.password()];
    let run = async {
        match &mut db {
            Db::Pg(c) => pg_run(c, plan, &secrets).await,
            Db::My { conn, mariadb } => my_run(conn, *mariadb, plan, &secrets).await,
        }
    };
    match tokio::time::timeout(plan.timeout + CLIENT_GRACE, run).await {
        // The connection is dropped, not closed: the server stops the statement
        // when it sees the connection gone (the server-side timeout stops it too).
        Err(_) => Err(query_timeout(plan.timeout)),
        Ok(Err(e)) => {
            drop(db);
            Err(e)
        }
        Ok(Ok(r)) => {
            if r.truncated {
                // Rows are still coming; closing would read them all first.
                drop(db);
            } else {
                db.close().await;
            }
            Ok(r)
        }
    }
}

async fn pg_run(c: &mut PgConnection, plan: &Plan<'_>, secrets: &[&str]) -> ApiResult<QueryResult> {
    let ms = plan.timeout.as_millis();
    let setup = if plan.write {
        format!("SET statement_timeout = {ms}")
    } else {
        format!("BEGIN READ ONLY; SET LOCAL statement_timeout = {ms}")
    };
    let affected = sqlx::postgres::PgQueryResult::rows_affected;
    run_prepared::<sqlx::Postgres>(c, &setup, plan, secrets, pg_row, affected).await
}

async fn my_run(
    c: &mut MySqlConnection,
    mariadb: bool,
    plan: &Plan<'_>,
    secrets: &[&str],
) -> ApiResult<QueryResult> {
    let ms = plan.timeout.as_millis();
    let timeout = if mariadb {
        format!("SET SESSION max_statement_time = {}", ms as f64 / 1000.0)
    } else {
        format!("SET SESSION MAX_EXECUTION_TIME = {ms}")
    };
    let setup = if plan.write {
        timeout
    } else {
        // The session default too: see the module's documentation.
        format!("SET SESSION TRANSACTION READ ONLY; {timeout}; START TRANSACTION READ ONLY")
    };
    let affected = sqlx::mysql::MySqlQueryResult::rows_affected;
    run_prepared::<sqlx::MySql>(c, &setup, plan, secrets, my_row, affected).await
}

/// Runs `setup`, then the plan's SQL as one prepared statement (a prepared
/// statement cannot hold two commands, so nothing escapes the transaction
/// `setup` opened), streaming at most `max_rows` rows; a read is rolled back.
async fn run_prepared<DB>(
    c: &mut DB::Connection,
    setup: &str,
    plan: &Plan<'_>,
    secrets: &[&str],
    to_json: fn(&DB::Row) -> Vec<Value>,
    affected: fn(&DB::QueryResult) -> u64,
) -> ApiResult<QueryResult>
where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
{
    (&mut *c)
        .execute(sqlx::raw_sql(setup))
        .await
        .map_err(|e| db_error(e, Phase::Execute, secrets))?;
    let started = Instant::now();
    let stmt = (&mut *c)
        .prepare(plan.sql)
        .await
        .map_err(|e| db_error(e, Phase::Prepare, secrets))?;
    let columns = stmt
        .columns()
        .iter()
        .map(|col| ColumnInfo {
            name: col.name().to_string(),
            type_name: col.type_info().name().to_string(),
        })
        .collect();
    let mut result = QueryResult {
        columns,
        rows: Vec::new(),
        row_count: 0,
        truncated: false,
        rows_affected: 0,
        elapsed_ms: 0,
    };
    {
        let mut stream = (&mut *c).fetch_many(stmt.query());
        while let Some(step) = stream
            .try_next()
            .await
            .map_err(|e| db_error(e, Phase::Execute, secrets))?
        {
            match step {
                Either::Left(done) => result.rows_affected += affected(&done),
                Either::Right(row) => {
                    if result.rows.len() == plan.max_rows {
                        result.truncated = true;
                        break;
                    }
                    result.rows.push(to_json(&row));
                }
            }
        }
    }
    result.elapsed_ms = millis(started.elapsed());
    result.row_count = result.rows.len();
    if !plan.write && !result.truncated {
        (&mut *c)
            .execute(sqlx::raw_sql("ROLLBACK"))
            .await
            .map_err(|e| db_error(e, Phase::Execute, secrets))?;
    }
    Ok(result)
}

fn unsupported(name: &str) -> Value {
    json!({ "unsupported_type": name })
}

/// A float as JSON: NaN and the infinities have no JSON number, so they are text.
fn float(v: f64) -> Value {
    serde_json::Number::from_f64(v)
        .map(Value::Number)
        .unwrap_or_else(|| Value::String(v.to_string()))
}

fn naive_datetime(v: NaiveDateTime) -> Value {
    Value::String(v.format("%Y-%m-%dT%H:%M:%S%.f").to_string())
}

fn utc_datetime(v: DateTime<Utc>) -> Value {
    Value::String(v.to_rfc3339_opts(SecondsFormat::AutoSi, true))
}

fn base64(v: Vec<u8>) -> Value {
    Value::String(BASE64.encode(v))
}

fn pg_row(row: &PgRow) -> Vec<Value> {
    (0..row.len()).map(|i| pg_cell(row, i)).collect()
}

type Decoded = Result<Value, sqlx::Error>;

fn array<T>(row: &PgRow, i: usize, f: impl Fn(T) -> Value) -> Decoded
where
    T: for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
    Vec<Option<T>>: for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
{
    let v: Vec<Option<T>> = row.try_get(i)?;
    Ok(Value::Array(
        v.into_iter()
            .map(|x| x.map(&f).unwrap_or(Value::Null))
            .collect(),
    ))
}

/// One PostgreSQL value as JSON, decoded by its column type (results come in
/// PostgreSQL's binary format, so unknown types have no text to fall back on).
fn pg_cell(row: &PgRow, i: usize) -> Value {
    let Ok(raw) = row.try_get_raw(i) else {
        return Value::Null;
    };
    if raw.is_null() {
        return Value::Null;
    }
    let ty = raw.type_info().into_owned();
    let bytes = raw.as_bytes().ok().map(<[u8]>::to_vec);
    let name = ty.name();
    let got: Decoded = match name {
        "BOOL" => row.try_get::<bool, _>(i).map(Value::from),
        "INT2" => row.try_get::<i16, _>(i).map(Value::from),
        "INT4" => row.try_get::<i32, _>(i).map(Value::from),
        "INT8" => row.try_get::<i64, _>(i).map(Value::from),
        "OID" => row.try_get::<Oid, _>(i).map(|o| Value::from(o.0)),
        "FLOAT4" => row.try_get::<f32, _>(i).map(|v| float(f64::from(v))),
        "FLOAT8" => row.try_get::<f64, _>(i).map(float),
        "NUMERIC" => Ok(bytes
            .as_deref()
            .and_then(pg_numeric_text)
            .map(Value::String)
            .unwrap_or_else(|| unsupported(name))),
        "TEXT" | "VARCHAR" | "BPCHAR" | "NAME" | "CITEXT" | "UNKNOWN" | "XML" => {
            row.try_get_unchecked::<String, _>(i).map(Value::from)
        }
        "CHAR" => row
            .try_get::<i8, _>(i)
            .map(|c| Value::String(char::from(c.to_ne_bytes()[0]).to_string())),
        "JSON" | "JSONB" => row.try_get::<Value, _>(i),
        "UUID" => row
            .try_get::<uuid::Uuid, _>(i)
            .map(|u| Value::String(u.to_string())),
        "DATE" => row
            .try_get::<NaiveDate, _>(i)
            .map(|d| Value::String(d.to_string())),
        "TIME" => row
            .try_get::<NaiveTime, _>(i)
            .map(|t| Value::String(t.to_string())),
        "TIMETZ" => row
            .try_get::<PgTimeTz<NaiveTime, chrono::FixedOffset>, _>(i)
            .map(|t| Value::String(format!("{}{}", t.time, t.offset))),
        "TIMESTAMP" => row.try_get::<NaiveDateTime, _>(i).map(naive_datetime),
        "TIMESTAMPTZ" => row.try_get::<DateTime<Utc>, _>(i).map(utc_datetime),
        "BYTEA" => row.try_get::<Vec<u8>, _>(i).map(base64),
        "INTERVAL" => row.try_get::<PgInterval, _>(i).map(interval),
        // Whole cents with the usual two fraction digits (lc_monetary decides).
        "MONEY" => row.try_get::<PgMoney, _>(i).map(|m| {
            let sign = if m.0 < 0 { "-" } else { "" };
            let abs = m.0.unsigned_abs();
            Value::String(format!("{sign}{}.{:02}", abs / 100, abs % 100))
        }),
        "INET" | "CIDR" => Ok(bytes
            .as_deref()
            .and_then(pg_inet_text)
            .map(Value::String)
            .unwrap_or_else(|| unsupported(name))),
        // pg_sleep and other procedures return void: no value.
        "VOID" => Ok(Value::Null),
        "BOOL[]" => array::<bool>(row, i, Value::from),
        "INT2[]" => array::<i16>(row, i, Value::from),
        "INT4[]" => array::<i32>(row, i, Value::from),
        "INT8[]" => array::<i64>(row, i, Value::from),
        "FLOAT4[]" => array::<f32>(row, i, |v| float(f64::from(v))),
        "FLOAT8[]" => array::<f64>(row, i, float),
        "TEXT[]" | "VARCHAR[]" | "NAME[]" | "BPCHAR[]" => {
            let v: Result<Vec<Option<String>>, _> = row.try_get_unchecked(i);
            v.map(|v| Value::Array(v.into_iter().map(Value::from).collect()))
        }
        "UUID[]" => array::<uuid::Uuid>(row, i, |u| Value::String(u.to_string())),
        _ => match ty.kind() {
            // An enum's binary form is its label.
            PgTypeKind::Enum(_) => row.try_get_unchecked::<String, _>(i).map(Value::from),
            _ => Ok(unsupported(name)),
        },
    };
    got.unwrap_or_else(|_| unsupported(name))
}

/// An interval as ISO 8601 (`P1M2DT3.5S`): months, days and seconds are kept
/// apart, as PostgreSQL keeps them.
fn interval(v: PgInterval) -> Value {
    let sign = if v.microseconds < 0 { "-" } else { "" };
    let us = v.microseconds.unsigned_abs();
    let mut secs = format!("{sign}{}", us / 1_000_000);
    let micros = us % 1_000_000;
    if micros > 0 {
        let frac = format!("{micros:06}");
        let _ = write!(secs, ".{}", frac.trim_end_matches('0'));
    }
    Value::String(format!("P{}M{}DT{secs}S", v.months, v.days))
}

/// PostgreSQL's binary NUMERIC as exact decimal text: a header of four 16-bit
/// words (digit count, weight of the first digit in base 10000, sign, display
/// scale), then the base-10000 digits.
fn pg_numeric_text(b: &[u8]) -> Option<String> {
    let word = |i: usize| -> Option<u16> { Some(u16::from_be_bytes([*b.get(i)?, *b.get(i + 1)?])) };
    let ndigits = usize::from(word(0)?);
    let weight = i32::from(word(2)? as i16);
    let sign = word(4)?;
    let dscale = usize::from(word(6)? & 0x3FFF);
    if b.len() != 8 + 2 * ndigits {
        return None;
    }
    let digits: Vec<u16> = (0..ndigits)
        .map(|k| word(8 + 2 * k))
        .collect::<Option<_>>()?;
    let negative = match sign {
        0x0000 => false,
        0x4000 => true,
        0xC000 => return Some("NaN".into()),
        0xD000 => return Some("Infinity".into()),
        0xF000 => return Some("-Infinity".into()),
        _ => return None,
    };
    let digit = |idx: i32| -> u16 {
        usize::try_from(idx)
            .ok()
            .and_then(|i| digits.get(i).copied())
            .unwrap_or(0)
    };
    let mut s = String::new();
    if negative {
        s.push('-');
    }
    if weight < 0 {
        s.push('0');
    } else {
        for idx in 0..=weight {
            if idx == 0 {
                let _ = write!(s, "{}", digit(idx));
            } else {
                let _ = write!(s, "{:04}", digit(idx));
            }
        }
    }
    if dscale > 0 {
        let mut frac = String::new();
        let groups = dscale.div_ceil(4);
        for k in 1..=groups {
            let _ = write!(frac, "{:04}", digit(weight.saturating_add(k as i32)));
        }
        frac.truncate(dscale);
        s.push('.');
        s.push_str(&frac);
    }
    Some(s)
}

/// PostgreSQL's binary INET/CIDR: family, prefix bits, is-cidr flag, address
/// length, address.
fn pg_inet_text(b: &[u8]) -> Option<String> {
    let (&family, rest) = b.split_first()?;
    let (&bits, rest) = rest.split_first()?;
    let (_, rest) = rest.split_first()?;
    let (&len, addr) = rest.split_first()?;
    if addr.len() != usize::from(len) {
        return None;
    }
    let ip: std::net::IpAddr = match (family, addr.len()) {
        (2, 4) => std::net::Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]).into(),
        (3, 16) => {
            let a: [u8; 16] = addr.try_into().ok()?;
            std::net::Ipv6Addr::from(a).into()
        }
        _ => return None,
    };
    Some(format!("{ip}/{bits}"))
}

fn my_row(row: &MySqlRow) -> Vec<Value> {
    (0..row.len()).map(|i| my_cell(row, i)).collect()
}

/// One MySQL/MariaDB value as JSON, decoded by its column type. Integer widths
/// vary on the wire, so integers are read unchecked into 64 bits; DECIMAL is
/// text on the wire and stays text.
fn my_cell(row: &MySqlRow, i: usize) -> Value {
    let Ok(raw) = row.try_get_raw(i) else {
        return Value::Null;
    };
    if raw.is_null() {
        return Value::Null;
    }
    let ty = raw.type_info().into_owned();
    let name = ty.name();
    let text = || row.try_get_unchecked::<String, _>(i).map(Value::from);
    let got: Decoded = match name {
        // TINYINT(1): a boolean by convention, though it may hold other numbers.
        "BOOLEAN" => row.try_get_unchecked::<i64, _>(i).map(|v| match v {
            0 => Value::Bool(false),
            1 => Value::Bool(true),
            n => Value::from(n),
        }),
        "TINYINT" | "SMALLINT" | "MEDIUMINT" | "INT" | "BIGINT" => {
            row.try_get_unchecked::<i64, _>(i).map(Value::from)
        }
        n if n.ends_with("UNSIGNED") || n == "YEAR" || n == "BIT" => {
            row.try_get_unchecked::<u64, _>(i).map(Value::from)
        }
        "FLOAT" => row.try_get::<f32, _>(i).map(|v| float(f64::from(v))),
        "DOUBLE" => row.try_get::<f64, _>(i).map(float),
        "DECIMAL" | "CHAR" | "VARCHAR" | "TEXT" | "TINYTEXT" | "MEDIUMTEXT" | "LONGTEXT"
        | "ENUM" | "SET" => text(),
        "JSON" => row
            .try_get_unchecked::<String, _>(i)
            .map(|s| serde_json::from_str(&s).unwrap_or(Value::String(s))),
        // The protocol flags every `_bin`-collated text column as binary too
        // (MariaDB's JSON is LONGTEXT COLLATE utf8mb4_bin), and the column's
        // character set is not exposed by the driver: UTF-8 is text, other
        // bytes are base64.
        "BINARY" | "VARBINARY" | "BLOB" | "TINYBLOB" | "MEDIUMBLOB" | "LONGBLOB" => row
            .try_get_unchecked::<Vec<u8>, _>(i)
            .map(|b| match String::from_utf8(b) {
                Ok(text) => Value::String(text),
                Err(e) => base64(e.into_bytes()),
            }),
        "GEOMETRY" => row.try_get_unchecked::<Vec<u8>, _>(i).map(base64),
        "DATE" => row
            .try_get::<NaiveDate, _>(i)
            .map(|d| Value::String(d.to_string())),
        "DATETIME" => row.try_get::<NaiveDateTime, _>(i).map(naive_datetime),
        // The session's time zone is UTC (sqlx sets it), so TIMESTAMP is UTC.
        "TIMESTAMP" => row.try_get::<DateTime<Utc>, _>(i).map(utc_datetime),
        // TIME may be negative or past 24 hours: MySqlTime renders it as MySQL does.
        "TIME" => row
            .try_get::<sqlx::mysql::types::MySqlTime, _>(i)
            .map(|t| Value::String(t.to_string())),
        _ => text(),
    };
    got.unwrap_or_else(|_| unsupported(name))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateDatabase {
    pub connection: ConnectionSpec,
    /// `[A-Za-z_][A-Za-z0-9_]{0,62}`.
    #[schema(
        min_length = 1,
        max_length = 63,
        pattern = "^[A-Za-z_][A-Za-z0-9_]{0,62}$"
    )]
    pub database_name: String,
}

#[derive(Serialize, ToSchema)]
pub struct DatabaseCreated {
    pub database: String,
    pub created: bool,
}

#[utoipa::path(post, path = "/api/v1/databases/create", operation_id = "create_database", tag = "databases",
    request_body = CreateDatabase,
    responses((status = 201, description = "Created", body = DatabaseCreated),
              (status = 403, description = "Admins only", body = crate::error::ErrorBody),
              (status = 409, description = "The database exists", body = crate::error::ErrorBody),
              (status = 422, description = "The server refused (e.g. no privilege)", body = crate::error::ErrorBody),
              (status = 502, description = "The database cannot be reached", body = crate::error::ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    auth: AuthContext,
    JsonBody(body): JsonBody<CreateDatabase>,
) -> ApiResult<(StatusCode, Json<DatabaseCreated>)> {
    auth.require(Role::Admin)?;
    let spec = &body.connection;
    spec.check()?;
    check_identifier("database_name", &body.database_name)?;
    let result = async {
        let mut opened = connect(spec, None).await?;
        let sql = format!(
            "CREATE DATABASE {}",
            quote_ident(spec.kind, &body.database_name)
        );
        let r = opened.db.exec(&sql, &[spec.password()]).await;
        opened.db.close().await;
        r.map(|_| ())
    }
    .await;
    audit(
        &state,
        &auth,
        "database.create",
        spec,
        None,
        json!({ "database_name": body.database_name }),
        &result.as_ref().map(|_| ()).map_err(clone_error),
    )
    .await?;
    result?;
    Ok((
        StatusCode::CREATED,
        Json(DatabaseCreated {
            database: body.database_name,
            created: true,
        }),
    ))
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Privileges {
    /// Everything on the database (the default).
    #[default]
    All,
    /// Connect and read its tables.
    Read,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    pub connection: ConnectionSpec,
    /// `[A-Za-z_][A-Za-z0-9_]{0,62}`.
    #[schema(
        min_length = 1,
        max_length = 63,
        pattern = "^[A-Za-z_][A-Za-z0-9_]{0,62}$"
    )]
    pub username: String,
    /// Never echoed, logged or audited.
    #[schema(min_length = 1, max_length = 1024)]
    pub password: String,
    /// The database to grant on; no grant without it.
    #[serde(default)]
    #[schema(
        min_length = 1,
        max_length = 63,
        pattern = "^[A-Za-z_][A-Za-z0-9_]{0,62}$"
    )]
    pub database: Option<String>,
    #[serde(default)]
    pub privileges: Option<Privileges>,
}

#[derive(Serialize, ToSchema)]
pub struct UserCreated {
    pub username: String,
    pub database: Option<String>,
    pub privileges: Option<Privileges>,
    pub created: bool,
}

#[utoipa::path(post, path = "/api/v1/databases/users/create", operation_id = "create_database_user", tag = "databases",
    request_body = CreateUser,
    responses((status = 201, description = "Created (the password is not echoed)", body = UserCreated),
              (status = 403, description = "Admins only", body = crate::error::ErrorBody),
              (status = 409, description = "The user exists", body = crate::error::ErrorBody),
              (status = 422, description = "The server refused (e.g. no privilege)", body = crate::error::ErrorBody),
              (status = 502, description = "The database cannot be reached", body = crate::error::ErrorBody)))]
pub async fn create_user(
    State(state): State<AppState>,
    auth: AuthContext,
    JsonBody(body): JsonBody<CreateUser>,
) -> ApiResult<(StatusCode, Json<UserCreated>)> {
    auth.require(Role::Admin)?;
    let spec = &body.connection;
    spec.check()?;
    check_identifier("username", &body.username)?;
    if !(1..=1024).contains(&body.password.chars().count()) {
        return Err(ApiError::bad_request(
            "password",
            "must be 1 to 1024 characters",
        ));
    }
    if let Some(d) = &body.database {
        check_identifier("database", d)?;
    }
    let privileges = body
        .database
        .as_ref()
        .map(|_| body.privileges.unwrap_or_default());
    let result = make_user(spec, &body, privileges).await;
    // Only the user's name: the password is nowhere in the audit log.
    audit(
        &state,
        &auth,
        "database.user_create",
        spec,
        body.database.as_deref(),
        json!({ "username": body.username, "privileges": privileges }),
        &result.as_ref().map(|_| ()).map_err(clone_error),
    )
    .await?;
    result?;
    Ok((
        StatusCode::CREATED,
        Json(UserCreated {
            username: body.username,
            database: body.database,
            privileges,
            created: true,
        }),
    ))
}

async fn make_user(
    spec: &ConnectionSpec,
    body: &CreateUser,
    privileges: Option<Privileges>,
) -> ApiResult<()> {
    let secrets = [spec.password(), body.password.as_str()];
    let user = quote_ident(spec.kind, &body.username);
    match spec.kind {
        Engine::Postgres => {
            // The server gets a SCRAM verifier, never the password itself: a
            // logged CREATE ROLE (log_statement = ddl) then holds no secret.
            let verifier = scram_verifier(&body.password);
            let mut opened = connect(spec, None).await?;
            let mut r = opened
                .db
                .exec(
                    &format!("CREATE ROLE {user} LOGIN PASSWORD '{verifier}'"),
                    &secrets,
                )
                .await;
            if let (Ok(_), Some(db), Some(p)) = (&r, &body.database, privileges) {
                let on = quote_ident(spec.kind, db);
                let grant = match p {
                    Privileges::All => format!("GRANT ALL PRIVILEGES ON DATABASE {on} TO {user}"),
                    Privileges::Read => format!("GRANT CONNECT ON DATABASE {on} TO {user}"),
                };
                r = opened.db.exec(&grant, &secrets).await;
            }
            opened.db.close().await;
            r?;
            // Table privileges are granted inside the database, on schema public.
            if let (Some(db), Some(p)) = (&body.database, privileges) {
                let mut inner = connect(spec, Some(db)).await?;
                let sql = match p {
                    Privileges::All => format!(
                        "GRANT ALL ON SCHEMA public TO {user}; \
                         GRANT ALL ON ALL TABLES IN SCHEMA public TO {user}; \
                         GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {user}; \
                         ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON TABLES TO {user}"
                    ),
                    Privileges::Read => format!(
                        "GRANT USAGE ON SCHEMA public TO {user}; \
                         GRANT SELECT ON ALL TABLES IN SCHEMA public TO {user}; \
                         ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO {user}"
                    ),
                };
                let r = inner.db.exec(&sql, &secrets).await;
                inner.db.close().await;
                r?;
            }
            Ok(())
        }
        Engine::Mysql => {
            let mut opened = connect(spec, None).await?;
            let mariadb = matches!(opened.db, Db::My { mariadb: true, .. });
            let account = format!("'{}'@'%'", body.username);
            let identified = if mariadb {
                // MariaDB takes the mysql_native_password hash: no plaintext on
                // the wire or in its logs.
                format!(
                    "IDENTIFIED BY PASSWORD '{}'",
                    native_password_hash(&body.password)
                )
            } else {
                // MySQL 8 hashes with caching_sha2_password itself; the literal is
                // escaped for either setting of NO_BACKSLASH_ESCAPES, forced off.
                format!("IDENTIFIED BY '{}'", mysql_string(&body.password))
            };
            let mut statements = vec![
                "SET SESSION sql_mode = REPLACE(@@sql_mode, 'NO_BACKSLASH_ESCAPES', '')"
                    .to_string(),
                format!("CREATE USER {account} {identified}"),
            ];
            if let (Some(db), Some(p)) = (&body.database, privileges) {
                let on = quote_ident(spec.kind, db);
                statements.push(match p {
                    Privileges::All => format!("GRANT ALL PRIVILEGES ON {on}.* TO {account}"),
                    Privileges::Read => format!("GRANT SELECT, SHOW VIEW ON {on}.* TO {account}"),
                });
            }
            let mut r = Ok(0);
            for s in &statements {
                r = opened.db.exec(s, &secrets).await;
                if r.is_err() {
                    break;
                }
            }
            opened.db.close().await;
            r.map(|_| ())
        }
    }
}

/// A MySQL string literal's inside, with backslash escapes on.
fn mysql_string(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\'', "\\'")
}

/// mysql_native_password's stored form: `*` and the upper-case hex of
/// SHA1(SHA1(password)).
fn native_password_hash(password: &str) -> String {
    use sha1::Sha1;
    let once = Sha1::digest(password.as_bytes());
    let twice = Sha1::digest(once);
    format!("*{}", hex::encode_upper(twice))
}

type HmacSha256 = Hmac<Sha256>;

fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length.
    let mut mac = match HmacSha256::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return [0; 32],
    };
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// PostgreSQL's SCRAM-SHA-256 verifier of a password (RFC 5802/7677), as
/// `CREATE ROLE … PASSWORD` takes it: `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
/// The password is used as given (SASLprep leaves ASCII as it is).
fn scram_verifier(password: &str) -> String {
    let mut salt = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut salt);
    scram_verifier_with(password, &salt, 4096)
}

fn scram_verifier_with(password: &str, salt: &[u8], iterations: u32) -> String {
    // PBKDF2-HMAC-SHA-256 with one output block (32 bytes, SHA-256's size).
    let mut block = salt.to_vec();
    block.extend_from_slice(&1u32.to_be_bytes());
    let mut u = hmac_sha256(password.as_bytes(), &block);
    let mut salted = u;
    for _ in 1..iterations {
        u = hmac_sha256(password.as_bytes(), &u);
        for (s, x) in salted.iter_mut().zip(u.iter()) {
            *s ^= x;
        }
    }
    let client_key = hmac_sha256(&salted, b"Client Key");
    let stored_key = Sha256::digest(client_key);
    let server_key = hmac_sha256(&salted, b"Server Key");
    format!(
        "SCRAM-SHA-256${iterations}:{}${}:{}",
        BASE64.encode(salt),
        BASE64.encode(stored_key),
        BASE64.encode(server_key)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numeric(ndigits: u16, weight: i16, sign: u16, dscale: u16, digits: &[u16]) -> Vec<u8> {
        let mut b = Vec::new();
        for w in [ndigits, weight as u16, sign, dscale] {
            b.extend_from_slice(&w.to_be_bytes());
        }
        for d in digits {
            b.extend_from_slice(&d.to_be_bytes());
        }
        b
    }

    #[test]
    fn numerics_decode_exactly() {
        // 12345.678 = 1|2345|6780, weight 1, scale 3
        let b = numeric(3, 1, 0, 3, &[1, 2345, 6780]);
        assert_eq!(pg_numeric_text(&b).as_deref(), Some("12345.678"));
        // -0.0012 = 0012 at weight -1
        let b = numeric(1, -1, 0x4000, 4, &[12]);
        assert_eq!(pg_numeric_text(&b).as_deref(), Some("-0.0012"));
        // 0 with scale 2
        let b = numeric(0, 0, 0, 2, &[]);
        assert_eq!(pg_numeric_text(&b).as_deref(), Some("0.00"));
        // 1e20 = 1 at weight 5, trailing groups implied
        let b = numeric(1, 5, 0, 0, &[1]);
        assert_eq!(
            pg_numeric_text(&b).as_deref(),
            Some("100000000000000000000")
        );
        let b = numeric(0, 0, 0xC000, 0, &[]);
        assert_eq!(pg_numeric_text(&b).as_deref(), Some("NaN"));
        assert_eq!(pg_numeric_text(&[0, 1]), None);
        assert_eq!(pg_numeric_text(&numeric(2, 0, 0, 0, &[1])), None);
    }

    #[test]
    fn inet_decodes() {
        assert_eq!(
            pg_inet_text(&[2, 24, 1, 4, 192, 168, 1, 0]).as_deref(),
            Some("192.168.1.0/24")
        );
        assert_eq!(pg_inet_text(&[2, 24, 1, 5, 192]), None);
    }

    #[test]
    fn identifiers_are_checked() {
        assert!(check_identifier("f", "app_db1").is_ok());
        assert!(check_identifier("f", "_x").is_ok());
        for bad in ["", "1db", "a-b", "a b", "x\"; DROP", &"a".repeat(64)] {
            assert!(check_identifier("f", bad).is_err(), "{bad:?}");
        }
        assert_eq!(quote_ident(Engine::Postgres, "a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_ident(Engine::Mysql, "a`b"), "`a``b`");
    }

    #[test]
    fn secrets_are_scrubbed() {
        assert_eq!(
            scrub("near 'IDENTIFIED BY s3cret!'", &["s3cret!", ""]),
            "near 'IDENTIFIED BY ***'"
        );
    }

    #[test]
    fn mariadb_native_hash_matches_the_server() {
        // SELECT PASSWORD('password') on MariaDB.
        assert_eq!(
            native_password_hash("password"),
            "*2470C0C06DEE42FD1618BB99005ADCA2EC9D1E19"
        );
    }

    /// RFC 7677's example exchange, checked with the keys of our verifier.
    #[test]
    fn scram_verifier_matches_rfc_7677() {
        let salt = BASE64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").expect("salt");
        let v = scram_verifier_with("pencil", &salt, 4096);
        let parts: Vec<&str> = v.split(['$', ':']).collect();
        assert_eq!(parts[0], "SCRAM-SHA-256");
        assert_eq!(parts[1], "4096");
        let stored = BASE64.decode(parts[3]).expect("stored");
        let server = BASE64.decode(parts[4]).expect("server");
        let auth = "n=user,r=rOprNGfwEbeRWgbNEkqO,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let signature = hmac_sha256(&server, auth.as_bytes());
        assert_eq!(
            BASE64.encode(signature),
            "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
        // ClientProof = ClientKey XOR HMAC(StoredKey, AuthMessage); H(ClientKey) = StoredKey.
        let proof = BASE64
            .decode("dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
            .expect("proof");
        let client_sig = hmac_sha256(&stored, auth.as_bytes());
        let client_key: Vec<u8> = proof.iter().zip(client_sig).map(|(p, s)| p ^ s).collect();
        assert_eq!(Sha256::digest(&client_key).as_slice(), stored.as_slice());
    }

    #[test]
    fn intervals_are_iso_8601() {
        let v = interval(PgInterval {
            months: 1,
            days: 2,
            microseconds: 3_500_000,
        });
        assert_eq!(v, json!("P1M2DT3.5S"));
    }
}
