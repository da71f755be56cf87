//! `spawn_app()`: a fresh Fleetgate on port 0 with its own store, and helpers.

use std::net::SocketAddr;

use fleetgate::config::Config;
use fleetgate::{BootstrapSecrets, Running};
use reqwest::{Client, Method, RequestBuilder, Response, StatusCode};
use serde_json::{json, Value};

pub const TOKEN: &str = "test-bootstrap-token-0123456789";
pub const ADMIN_PASSWORD: &str = "admin-password-123";

pub struct TestApp {
    pub addr: SocketAddr,
    pub gateway: Option<SocketAddr>,
    pub client: Client,
    pub running: Option<Running>,
    pub config: Config,
    pub _dir: tempfile::TempDir,
}

pub fn config_in(dir: &std::path::Path) -> Config {
    let mut c = Config {
        data_dir: dir.to_path_buf(),
        ..Default::default()
    };
    c.manager.listen = "127.0.0.1:0".parse().expect("addr");
    c.manager.node_listen = "127.0.0.1:0".parse().expect("addr");
    c.gateway.listen = "127.0.0.1:0".parse().expect("addr");
    c.gateway.tls_listen = "127.0.0.1:0".parse().expect("addr");
    c.shutdown.drain_timeout_secs = 5;
    c
}

pub async fn spawn_app() -> TestApp {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config_in(dir.path());
    spawn_with(config, dir).await
}

pub async fn spawn_with(config: Config, dir: tempfile::TempDir) -> TestApp {
    let secrets = BootstrapSecrets {
        admin_password: Some(ADMIN_PASSWORD.into()),
        bootstrap_token: Some(TOKEN.into()),
    };
    let running = fleetgate::start(config.clone(), secrets, true, std::future::pending())
        .await
        .expect("fleetgate starts");
    TestApp {
        addr: running.manager_addr,
        gateway: running.gateway_addr,
        client: Client::builder()
            .cookie_store(true)
            .build()
            .expect("client"),
        running: Some(running),
        config,
        _dir: dir,
    }
}

/// A fresh PostgreSQL schema URL, or `None` with the reason printed.
pub async fn postgres_schema_url() -> Option<String> {
    let Ok(base) = std::env::var("FLEETGATE_TEST_POSTGRES_URL") else {
        eprintln!("skipping PostgreSQL case: FLEETGATE_TEST_POSTGRES_URL is not set");
        return None;
    };
    let schema = format!("fg_api_{}", uuid::Uuid::new_v4().simple());
    let admin = fleetgate_store::SqlStore::open(&fleetgate_store::StoreOptions::new(base.clone()))
        .await
        .expect("connect to FLEETGATE_TEST_POSTGRES_URL");
    admin
        .execute_raw(&format!("CREATE SCHEMA {schema}"))
        .await
        .expect("create schema");
    fleetgate_store::Store::close(&admin).await;
    let sep = if base.contains('?') { '&' } else { '?' };
    Some(format!("{base}{sep}options=-c%20search_path%3D{schema}"))
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// A request with the bootstrap (super_admin) key.
    pub fn admin(&self, method: Method, path: &str) -> RequestBuilder {
        self.client
            .request(method, self.url(path))
            .bearer_auth(TOKEN)
    }

    pub fn anon(&self, method: Method, path: &str) -> RequestBuilder {
        Client::new().request(method, self.url(path))
    }

    pub async fn get_json(&self, path: &str) -> Value {
        let r = self.admin(Method::GET, path).send().await.expect("request");
        assert_eq!(r.status(), StatusCode::OK, "GET {path}");
        r.json().await.expect("json")
    }

    /// Creates a user with `role` and returns an API key acting as that user.
    pub async fn key_for_role(&self, username: &str, role: &str) -> String {
        let r = self
            .admin(Method::POST, "/api/v1/users")
            .json(&serde_json::json!({"username": username, "password": "password-123", "role": role}))
            .send()
            .await
            .expect("create user");
        assert_eq!(r.status(), StatusCode::CREATED);
        // Log in as the user with a separate cookie jar and create a key.
        let c = Client::builder()
            .cookie_store(true)
            .build()
            .expect("client");
        let login: Value = c
            .post(self.url("/api/v1/auth/login"))
            .json(&serde_json::json!({"username": username, "password": "password-123"}))
            .send()
            .await
            .expect("login")
            .json()
            .await
            .expect("json");
        let csrf = login["csrf_token"].as_str().expect("csrf").to_string();
        if role == "viewer" {
            // Viewers cannot create keys (a mutation); the bootstrap admin makes one.
            let r: Value = self
                .admin(Method::POST, "/api/v1/api-keys")
                .json(&serde_json::json!({"name": format!("{username}-key"), "role": "viewer"}))
                .send()
                .await
                .expect("key")
                .json()
                .await
                .expect("json");
            return r["key"].as_str().expect("key").to_string();
        }
        let r: Value = c
            .post(self.url("/api/v1/api-keys"))
            .header("x-csrf-token", csrf)
            .json(&serde_json::json!({"name": format!("{username}-key"), "role": role}))
            .send()
            .await
            .expect("key")
            .json()
            .await
            .expect("json");
        r["key"].as_str().expect("key").to_string()
    }

    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await.expect("clean shutdown");
        }
    }
}

/// Saves settings (a partial document) as the bootstrap admin.
pub async fn put_settings(app: &TestApp, body: Value) {
    let r = app
        .admin(Method::PUT, "/api/v1/settings")
        .json(&body)
        .send()
        .await
        .expect("settings");
    assert_eq!(r.status(), StatusCode::OK, "{:?}", r.text().await);
}

/// The actions of the audit entries `query` selects (`target_type=…&limit=…`), newest first.
pub async fn audit_actions(app: &TestApp, query: &str) -> Vec<String> {
    let audit = app.get_json(&format!("/api/v1/audit?{query}")).await;
    audit["items"]
        .as_array()
        .expect("audit items")
        .iter()
        .filter_map(|e| e["action"].as_str().map(str::to_string))
        .collect()
}

/// Asserts the error envelope and returns it.
pub async fn expect_error(r: Response, status: StatusCode, code: &str) -> Value {
    assert_eq!(r.status(), status, "status");
    let ct = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    assert!(ct.starts_with("application/json"), "content-type {ct}");
    let body: Value = r.json().await.expect("json error body");
    assert_eq!(body["code"], code, "{body}");
    assert!(
        body["error"].as_str().is_some_and(|s| !s.is_empty()),
        "{body}"
    );
    assert!(body["details"].is_object(), "{body}");
    body
}

/// Logs in as `admin` and returns the session's `Cookie` header value and its CSRF token.
pub async fn login_cookies(login_url: &str) -> (String, String) {
    let r = Client::new()
        .post(login_url)
        .json(&json!({"username": "admin", "password": ADMIN_PASSWORD}))
        .send()
        .await
        .expect("login");
    let cookies: Vec<String> = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|c| c.split(';').next())
        .map(str::to_string)
        .collect();
    let body: Value = r.json().await.expect("json");
    (
        cookies.join("; "),
        body["csrf_token"].as_str().expect("csrf").to_string(),
    )
}

/// A TCP listener on 127.0.0.1 that counts the connections made to it and answers
/// each with `200 OK`: a health-check target that shows whether anything probed it.
/// It runs on a thread of its own, so blocking (process) tests can use it too.
pub struct ConnectionCounter {
    pub addr: SocketAddr,
    count: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl ConnectionCounter {
    pub fn spawn() -> ConnectionCounter {
        use std::io::{Read, Write};
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind counter");
        let addr = listener.local_addr().expect("addr");
        let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (c, s) = (count.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(mut conn) = conn else { continue };
                c.fetch_add(1, Ordering::SeqCst);
                let _ = conn.set_read_timeout(Some(std::time::Duration::from_secs(1)));
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf);
                let _ = conn.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
            }
        });
        ConnectionCounter { addr, count, stop }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn connections(&self) -> usize {
        self.count.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for ConnectionCounter {
    fn drop(&mut self) {
        // The accept loop blocks: flag it to stop, then wake it with one connection.
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = std::net::TcpStream::connect(self.addr);
    }
}

/// A port nothing listens on right now (bound, read, released).
pub fn unused_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Whether something accepts TCP connections on 127.0.0.1:`port`.
pub fn listening(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        std::time::Duration::from_millis(500),
    )
    .is_ok()
}

/// Sends a request as the bootstrap admin; its status and JSON body (null when
/// the body is not JSON).
pub async fn send(
    app: &TestApp,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = app.admin(method, path);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.expect("request");
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// `GET /` with a Host header through a gateway, from `workers` loops (10 ms
/// apart each) until [`GatewayLoad::finish`]; answers other than 200 and
/// failed exchanges are kept with their reason.
pub struct GatewayLoad {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ok: std::sync::Arc<std::sync::atomic::AtomicU64>,
    failures: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl GatewayLoad {
    pub fn start(gateway: SocketAddr, host: &str, workers: usize) -> GatewayLoad {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        use std::sync::Arc;
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
        let tasks = (0..workers)
            .map(|_| {
                let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
                let host = host.to_string();
                tokio::spawn(async move {
                    let client = Client::new();
                    while !stop.load(Ordering::Relaxed) {
                        let r = client
                            .get(format!("http://{gateway}/"))
                            .header("host", &host)
                            .timeout(std::time::Duration::from_secs(5))
                            .send()
                            .await;
                        let failed = match r {
                            Ok(r) if r.status() == StatusCode::OK => {
                                ok.fetch_add(1, Ordering::Relaxed);
                                None
                            }
                            Ok(r) => {
                                let status = r.status();
                                Some(format!("{status}: {}", r.text().await.unwrap_or_default()))
                            }
                            Err(e) => Some(e.to_string()),
                        };
                        if let Some(f) = failed {
                            failures.lock().expect("failures").push(f);
                        }
                        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    }
                })
            })
            .collect();
        GatewayLoad {
            stop,
            ok,
            failures,
            tasks,
        }
    }

    /// Stops the loops: the requests answered 200 and the failures.
    pub async fn finish(self) -> (u64, Vec<String>) {
        use std::sync::atomic::Ordering;
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.expect("a load task");
        }
        let failures = self.failures.lock().expect("failures").clone();
        (self.ok.load(Ordering::Relaxed), failures)
    }
}
