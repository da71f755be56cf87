//! The databases admin API against real servers: PostgreSQL from
//! `FLEETGATE_TEST_POSTGRES_URL` and MySQL/MariaDB from `FLEETGATE_TEST_MYSQL_URL`
//! (each case skips, saying why, when its variable is unset). Connection tests,
//! listings, typed values, truncation, read-only enforced by the database (a
//! write or a second statement changes nothing), roles, timeouts, and users
//! created without their password reaching the response or the audit log.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode, Url};
use serde_json::{json, Value};

use crate::support::{expect_error, spawn_app, unused_port, TestApp};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Postgres,
    Mysql,
}

/// A server to test against, from its URL.
struct Server {
    kind: Kind,
    host: String,
    port: u16,
    user: String,
    password: Option<String>,
    database: String,
}

impl Server {
    fn from_env(kind: Kind) -> Option<Server> {
        let var = match kind {
            Kind::Postgres => "FLEETGATE_TEST_POSTGRES_URL",
            Kind::Mysql => "FLEETGATE_TEST_MYSQL_URL",
        };
        let Ok(url) = std::env::var(var) else {
            eprintln!("skipping databases case: {var} is not set");
            return None;
        };
        let u = Url::parse(&url).unwrap_or_else(|e| panic!("{var} is not a URL: {e}"));
        Some(Server {
            kind,
            host: u.host_str().expect("host in the URL").to_string(),
            port: u.port().unwrap_or(match kind {
                Kind::Postgres => 5432,
                Kind::Mysql => 3306,
            }),
            user: u.username().to_string(),
            password: u.password().map(str::to_string),
            database: u.path().trim_start_matches('/').to_string(),
        })
    }

    fn kind_name(&self) -> &'static str {
        match self.kind {
            Kind::Postgres => "postgres",
            Kind::Mysql => "mysql",
        }
    }

    /// The connection object of a request, connected to `database`.
    fn conn(&self, database: &str) -> Value {
        json!({"type": self.kind_name(), "host": self.host, "port": self.port,
            "user": self.user, "password": self.password, "database": database})
    }
}

async fn post(app: &TestApp, path: &str, body: Value) -> reqwest::Response {
    app.admin(Method::POST, &format!("/api/v1/databases/{path}"))
        .json(&body)
        .send()
        .await
        .expect("request")
}

async fn post_as(app: &TestApp, key: &str, path: &str, body: Value) -> reqwest::Response {
    app.client
        .post(app.url(&format!("/api/v1/databases/{path}")))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .expect("request")
}

async fn ok_json(r: reqwest::Response) -> Value {
    let status = r.status();
    let body: Value = r.json().await.expect("json");
    assert!(status.is_success(), "{status}: {body}");
    body
}

/// Runs `sql` as the admin in `database` and returns the result.
async fn run(app: &TestApp, s: &Server, database: &str, sql: &str, write: bool) -> Value {
    ok_json(
        post(
            app,
            "query",
            json!({"connection": s.conn(database), "sql": sql, "write": write}),
        )
        .await,
    )
    .await
}

async fn count_items(app: &TestApp, s: &Server, db: &str) -> i64 {
    let r = run(app, s, db, "SELECT COUNT(*) AS n FROM items", false).await;
    r["rows"][0][0].as_i64().expect("count")
}

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

async fn connection_test_and_listing(s: Server) {
    let app = spawn_app().await;
    let r = ok_json(post(&app, "test", json!({"connection": s.conn(&s.database)})).await).await;
    assert_eq!(r["ok"], true);
    let server = r["server"].as_str().expect("server");
    match s.kind {
        Kind::Postgres => assert!(server.starts_with("PostgreSQL "), "{server}"),
        Kind::Mysql => assert!(
            server.chars().next().is_some_and(|c| c.is_ascii_digit()),
            "{server}"
        ),
    }
    assert!(r["latency_ms"].is_u64(), "{r}");

    // Nothing listens on that port: refused at once, a 502 naming the reason.
    let mut closed = s.conn(&s.database);
    closed["port"] = json!(unused_port());
    let started = Instant::now();
    let r = post(&app, "test", json!({"connection": closed})).await;
    let e = expect_error(r, StatusCode::BAD_GATEWAY, "DATABASE_UNREACHABLE").await;
    assert!(started.elapsed() < Duration::from_secs(2), "{e}");
    assert!(
        e["error"].as_str().expect("error").contains("connect"),
        "{e}"
    );

    let r = ok_json(post(&app, "list", json!({"connection": s.conn(&s.database)})).await).await;
    let names: Vec<&str> = r["databases"]
        .as_array()
        .expect("databases")
        .iter()
        .filter_map(|d| d["name"].as_str())
        .collect();
    assert!(names.contains(&s.database.as_str()), "{r}");
    if s.kind == Kind::Postgres {
        assert!(
            !names.contains(&"template0"),
            "templates are not listed: {r}"
        );
    }

    // A Unix socket path is refused before any connection.
    let mut socket = s.conn(&s.database);
    socket["host"] = json!("/var/run/postgresql");
    let r = post(&app, "test", json!({"connection": socket})).await;
    expect_error(r, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await;
    app.stop().await;
}

/// Everything from creating a database to dropping it, in one database per engine.
async fn lifecycle(s: Server) {
    let app = spawn_app().await;
    let db = unique("fg_db");
    let conn = s.conn(&s.database);

    // Create the database (admin), a table in it, rows.
    let r = post(
        &app,
        "create",
        json!({"connection": conn, "database_name": db}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = post(
        &app,
        "create",
        json!({"connection": conn, "database_name": db}),
    )
    .await;
    expect_error(r, StatusCode::CONFLICT, "CONFLICT").await;
    let r = post(
        &app,
        "create",
        json!({"connection": conn, "database_name": "bad-name"}),
    )
    .await;
    expect_error(r, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await;
    let create_table = match s.kind {
        Kind::Postgres => {
            "CREATE TABLE items (id INT PRIMARY KEY, name TEXT, active BOOLEAN, \
             note TEXT, created_at TIMESTAMPTZ, price NUMERIC(10,3), data JSONB)"
        }
        Kind::Mysql => {
            "CREATE TABLE items (id INT PRIMARY KEY, name VARCHAR(50), active BOOLEAN, \
             note TEXT, created_at TIMESTAMP NULL, price DECIMAL(10,3), data JSON)"
        }
    };
    run(&app, &s, &db, create_table, true).await;
    // PostgreSQL reads the offset; MySQL's session time zone is UTC (sqlx sets it).
    let at = match s.kind {
        Kind::Postgres => "2024-01-02 03:04:05+00",
        Kind::Mysql => "2024-01-02 03:04:05",
    };
    let insert = format!(
        "INSERT INTO items VALUES \
        (1, 'héllo', true, NULL, '{at}', 12345.678, '{{\"a\": [1, 2]}}'), \
        (2, 'two', false, 'x', '{at}', -0.5, '[]'), \
        (3, 'three', true, 'y', NULL, 0, 'null')"
    );
    let r = run(&app, &s, &db, &insert, true).await;
    assert_eq!(r["rows_affected"], 3, "{r}");

    let r = ok_json(post(&app, "tables", json!({"connection": conn, "database": db})).await).await;
    let items = r["tables"]
        .as_array()
        .expect("tables")
        .iter()
        .find(|t| t["name"] == "items")
        .unwrap_or_else(|| panic!("items listed: {r}"));
    assert_eq!(items["type"], "table");

    // Typed values, read-only.
    let r = run(&app, &s, &db, "SELECT * FROM items ORDER BY id", false).await;
    let names: Vec<&str> = r["columns"]
        .as_array()
        .expect("columns")
        .iter()
        .map(|c| c["name"].as_str().expect("name"))
        .collect();
    assert_eq!(
        names,
        [
            "id",
            "name",
            "active",
            "note",
            "created_at",
            "price",
            "data"
        ]
    );
    assert_eq!(r["row_count"], 3);
    assert_eq!(r["truncated"], false);
    let row = &r["rows"][0];
    assert_eq!(row[0], 1, "{r}");
    assert_eq!(row[1], "héllo");
    assert_eq!(row[2], true, "{r}");
    assert_eq!(row[3], Value::Null);
    assert_eq!(row[4], "2024-01-02T03:04:05Z", "{r}");
    assert_eq!(row[5], "12345.678", "{r}");
    // MariaDB's JSON is text with a check; MySQL's and PostgreSQL's are JSON.
    let data = match &row[6] {
        Value::String(t) => serde_json::from_str(t).expect("json text"),
        v => v.clone(),
    };
    assert_eq!(data, json!({"a": [1, 2]}), "{r}");
    assert_eq!(r["rows"][1][5], "-0.500", "{r}");
    assert_eq!(r["rows"][2][4], Value::Null);

    // Truncation at max_rows.
    let r = ok_json(
        post(
            &app,
            "query",
            json!({"connection": s.conn(&db), "sql": "SELECT id FROM items ORDER BY id", "max_rows": 2}),
        )
        .await,
    )
    .await;
    assert_eq!(r["row_count"], 2);
    assert_eq!(r["truncated"], true);
    assert_eq!(r["rows"], json!([[1], [2]]));

    if s.kind == Kind::Postgres {
        let r = run(
            &app,
            &s,
            &db,
            "SELECT 42::int8 AS i, 1.5::float8 AS f, '\\xdeadbeef'::bytea AS bin, \
             '2024-01-02'::date AS d, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid AS u, \
             ARRAY[1, NULL, 3]::int4[] AS arr, '1 day 2 hours'::interval AS iv, \
             '10.1.2.3/8'::inet AS ip, point(1, 2) AS p, 'NaN'::numeric AS nan, \
             '{\"k\": true}'::json AS j",
            false,
        )
        .await;
        assert_eq!(
            r["rows"][0],
            json!([42, 1.5, "3q2+7w==", "2024-01-02", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
                [1, null, 3], "P0M1DT7200S", "10.1.2.3/8", {"unsupported_type": "POINT"}, "NaN",
                {"k": true}]),
            "{r}"
        );
        // Streams: a large result stops at the limit at once.
        let started = Instant::now();
        let r = ok_json(
            post(
                &app,
                "query",
                json!({"connection": s.conn(&db), "sql": "SELECT generate_series(1, 5000000) AS n", "max_rows": 10}),
            )
            .await,
        )
        .await;
        assert_eq!(r["row_count"], 10);
        assert_eq!(r["truncated"], true);
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    // A write in a read-only query is refused by the database and changes nothing.
    let r = post(
        &app,
        "query",
        json!({"connection": s.conn(&db), "sql": "INSERT INTO items (id, name) VALUES (9, 'nine')"}),
    )
    .await;
    let e = expect_error(r, StatusCode::UNPROCESSABLE_ENTITY, "READ_ONLY").await;
    assert!(
        e["error"].as_str().expect("error").contains("read-only"),
        "{e}"
    );
    assert_eq!(count_items(&app, &s, &db).await, 3);
    // DDL too (on MySQL it would commit the read-only transaction implicitly).
    let r = post(
        &app,
        "query",
        json!({"connection": s.conn(&db), "sql": "DROP TABLE items"}),
    )
    .await;
    expect_error(r, StatusCode::UNPROCESSABLE_ENTITY, "READ_ONLY").await;
    assert_eq!(count_items(&app, &s, &db).await, 3);

    // Two statements cannot be prepared as one, even for an admin's write.
    for write in [false, true] {
        for sql in ["SELECT 1; DROP TABLE items", "COMMIT; DROP TABLE items"] {
            let r = post(
                &app,
                "query",
                json!({"connection": s.conn(&db), "sql": sql, "write": write}),
            )
            .await;
            let e = expect_error(r, StatusCode::BAD_REQUEST, "STATEMENT_REJECTED").await;
            assert!(
                e["error"]
                    .as_str()
                    .expect("error")
                    .contains("one statement"),
                "{e}"
            );
        }
    }
    assert_eq!(count_items(&app, &s, &db).await, 3);

    // Operators read, never write; viewers do neither.
    let operator = app.key_for_role("db-operator", "operator").await;
    let read = json!({"connection": s.conn(&db), "sql": "SELECT id FROM items"});
    let r = post_as(&app, &operator, "query", read.clone()).await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = post_as(
        &app,
        &operator,
        "query",
        json!({"connection": s.conn(&db), "sql": "DELETE FROM items", "write": true}),
    )
    .await;
    expect_error(r, StatusCode::FORBIDDEN, "FORBIDDEN").await;
    let r = post_as(
        &app,
        &operator,
        "create",
        json!({"connection": conn, "database_name": unique("fg_never")}),
    )
    .await;
    expect_error(r, StatusCode::FORBIDDEN, "FORBIDDEN").await;
    let viewer = app.key_for_role("db-viewer", "viewer").await;
    let r = post_as(&app, &viewer, "query", read).await;
    expect_error(r, StatusCode::FORBIDDEN, "FORBIDDEN").await;
    assert_eq!(count_items(&app, &s, &db).await, 3);

    // A slow statement is cut at timeout_ms.
    let sleep = match s.kind {
        Kind::Postgres => "SELECT pg_sleep(3)",
        Kind::Mysql => "SELECT SLEEP(3)",
    };
    let started = Instant::now();
    let r = post(
        &app,
        "query",
        json!({"connection": s.conn(&db), "sql": sleep, "timeout_ms": 500}),
    )
    .await;
    let e = expect_error(r, StatusCode::GATEWAY_TIMEOUT, "QUERY_TIMEOUT").await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}: {e}",
        started.elapsed()
    );

    // A user that can connect and read; its password is nowhere to be seen.
    let user = unique("fg_user");
    let password = format!("pw-'q\\b\"-{}", uuid::Uuid::new_v4().simple());
    let r = post(
        &app,
        "users/create",
        json!({"connection": conn, "username": user, "password": password,
            "database": db, "privileges": "read"}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let text = r.text().await.expect("text");
    assert!(!text.contains(&password), "{text}");
    let created: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(created["username"], user.as_str());
    let as_user = json!({"type": s.kind_name(), "host": s.host, "port": s.port,
        "user": user, "password": password, "database": db});
    ok_json(post(&app, "test", json!({"connection": as_user})).await).await;
    let r = ok_json(
        post(
            &app,
            "query",
            json!({"connection": as_user, "sql": "SELECT COUNT(*) FROM items"}),
        )
        .await,
    )
    .await;
    assert_eq!(r["rows"][0][0], 3, "{r}");
    if s.kind == Kind::Postgres {
        // Local connections are trusted here, so the password is checked
        // against the stored SCRAM verifier instead: the manager sent one it
        // computed, which PostgreSQL would have hashed again had it not taken it
        // for a verifier.
        let sql = format!(
            "SELECT split_part(split_part(rolpassword, '$', 2), ':', 1)::int4, \
             encode(decode(split_part(split_part(rolpassword, '$', 2), ':', 2), 'base64'), 'hex'), \
             encode(decode(split_part(split_part(rolpassword, '$', 3), ':', 2), 'base64'), 'hex') \
             FROM pg_authid WHERE rolname = '{user}'"
        );
        let r = run(&app, &s, &s.database, &sql, false).await;
        let row = &r["rows"][0];
        let iterations = u32::try_from(row[0].as_i64().expect("iterations")).expect("u32");
        let salt = hex::decode(row[1].as_str().expect("salt")).expect("hex");
        let server_key = row[2].as_str().expect("server key");
        assert_eq!(scram_server_key(&password, &salt, iterations), server_key);
    }
    if s.kind == Kind::Mysql {
        // MySQL checks the password here.
        let mut wrong = as_user.clone();
        wrong["password"] = json!("not-the-password");
        let r = post(&app, "test", json!({"connection": wrong})).await;
        let e = expect_error(r, StatusCode::BAD_GATEWAY, "DATABASE_UNREACHABLE").await;
        assert!(!e.to_string().contains("not-the-password"), "{e}");
    }
    let audit = app
        .admin(Method::GET, "/api/v1/audit?limit=500")
        .send()
        .await
        .expect("audit")
        .text()
        .await
        .expect("audit text");
    assert!(
        !audit.contains(&password),
        "the password is in the audit log"
    );
    assert!(audit.contains("database.user_create"), "{audit}");
    assert!(audit.contains("database.query"), "{audit}");
    assert!(
        audit.contains("INSERT INTO items VALUES"),
        "statements are audited"
    );

    // Clean up: the database and the user. Dropping a database makes the
    // server write a checkpoint, which can take seconds on a busy disk: these
    // statements get the longest timeout a query may ask for.
    let drops = match s.kind {
        Kind::Postgres => [
            (
                "postgres".to_string(),
                format!("DROP DATABASE {db} WITH (FORCE)"),
            ),
            ("postgres".to_string(), format!("DROP ROLE {user}")),
        ],
        Kind::Mysql => [
            (s.database.clone(), format!("DROP DATABASE {db}")),
            (s.database.clone(), format!("DROP USER '{user}'@'%'")),
        ],
    };
    for (database, sql) in drops {
        ok_json(
            post(
                &app,
                "query",
                json!({"connection": s.conn(&database), "sql": sql, "write": true,
                       "timeout_ms": 60_000}),
            )
            .await,
        )
        .await;
    }
    let r = ok_json(post(&app, "list", json!({"connection": conn})).await).await;
    assert!(!r.to_string().contains(&db), "{r}");
    app.stop().await;
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).expect("key");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// SCRAM-SHA-256's ServerKey of `password` (RFC 5802), in hex.
fn scram_server_key(password: &str, salt: &[u8], iterations: u32) -> String {
    let mut u = hmac_sha256(password.as_bytes(), &[salt, &1u32.to_be_bytes()].concat());
    let mut salted = u.clone();
    for _ in 1..iterations {
        u = hmac_sha256(password.as_bytes(), &u);
        salted.iter_mut().zip(&u).for_each(|(s, x)| *s ^= x);
    }
    hex::encode(hmac_sha256(&salted, b"Server Key"))
}

#[tokio::test]
async fn postgres_connection_test_and_listing() {
    if let Some(s) = Server::from_env(Kind::Postgres) {
        connection_test_and_listing(s).await;
    }
}

#[tokio::test]
async fn mysql_connection_test_and_listing() {
    if let Some(s) = Server::from_env(Kind::Mysql) {
        connection_test_and_listing(s).await;
    }
}

#[tokio::test]
async fn postgres_database_lifecycle_read_only_roles_timeouts_and_users() {
    if let Some(s) = Server::from_env(Kind::Postgres) {
        lifecycle(s).await;
    }
}

#[tokio::test]
async fn mysql_database_lifecycle_read_only_roles_timeouts_and_users() {
    if let Some(s) = Server::from_env(Kind::Mysql) {
        lifecycle(s).await;
    }
}
