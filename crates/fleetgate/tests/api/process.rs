//! The `fleetgate` binary as a process: subcommands, first-start password,
//! graceful shutdown on SIGTERM, and consistency after `kill -9` mid-write.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::TOKEN;

const BIN: &str = env!("CARGO_BIN_EXE_fleetgate");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn command(data: &Path) -> Command {
    let mut c = Command::new(BIN);
    for (k, _) in std::env::vars() {
        if k.starts_with("FLEETGATE_") {
            c.env_remove(k);
        }
    }
    c.env("FLEETGATE_DATA_DIR", data)
        .env("FLEETGATE_LOG_LEVEL", "info");
    c
}

struct Proc {
    child: Child,
    port: u16,
    gw: u16,
    /// `gateway.tls_listen`'s port, when the test chose one (else port 0).
    gw_tls: Option<u16>,
    stderr: Arc<Mutex<String>>,
    stdout: Arc<Mutex<String>>,
}

/// Collects a child's output lines into a shared string on a thread of its own.
fn collect(pipe: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let out = Arc::new(Mutex::new(String::new()));
    let sink = out.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            let mut s = sink.lock().expect("lock");
            s.push_str(&line);
            s.push('\n');
        }
    });
    out
}

impl Proc {
    fn start(data: &Path, extra_env: &[(&str, &str)]) -> Proc {
        Proc::start_role("serve", None, data, extra_env)
    }

    /// Starts `fleetgate <role>`; `gw_tls` fixes the HTTPS gateway port (else 0).
    fn start_role(
        role: &str,
        gw_tls: Option<u16>,
        data: &Path,
        extra_env: &[(&str, &str)],
    ) -> Proc {
        let port = free_port();
        let gw = free_port();
        let mut c = command(data);
        c.args([
            role,
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--node-listen",
            "127.0.0.1:0",
            "--gateway-listen",
            &format!("127.0.0.1:{gw}"),
            "--gateway-tls-listen",
            &format!("127.0.0.1:{}", gw_tls.unwrap_or(0)),
        ])
        .env("FLEETGATE_BOOTSTRAP_TOKEN", TOKEN)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        for (k, v) in extra_env {
            c.env(k, v);
        }
        let mut child = c.spawn().expect("spawn fleetgate");
        let stderr = collect(child.stderr.take().expect("stderr"));
        let stdout = collect(child.stdout.take().expect("stdout"));
        let p = Proc {
            child,
            port,
            gw,
            gw_tls,
            stderr,
            stdout,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while http(p.port, "GET", "/health", None, &[]).is_none() {
            assert!(
                Instant::now() < deadline,
                "fleetgate did not start:\n{}",
                p.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        p
    }

    fn log(&self) -> String {
        self.stderr.lock().expect("lock").clone()
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill {sig} failed");
    }

    fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(st) = self.child.try_wait().expect("wait") {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "fleetgate did not exit:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal blocking HTTP/1.1 exchange; returns status and body.
fn http(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&Value>,
    headers: &[(&str, &str)],
) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let body = body.map(Value::to_string).unwrap_or_default();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    if !body.is_empty() {
        req.push_str("Content-Type: application/json\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(&body);
    s.write_all(req.as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.split(' ').nth(1)?.parse().ok()?;
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

fn bearer() -> (&'static str, String) {
    ("Authorization", format!("Bearer {TOKEN}"))
}

#[test]
fn version_and_config_check() {
    // (`version` itself: version_names_the_commit_and_the_build_profile.)
    let out = Command::new(BIN).arg("--version").output().expect("run");
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("fleetgate {}", env!("CARGO_PKG_VERSION"))
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("fleetgate.toml");
    std::fs::write(&file, "[database]\nurl = \"postgres://fg:hunter2@db.internal/fg\"\n[manager]\nlisten = \"127.0.0.1:4000\"\n").expect("write");
    let out = command(dir.path())
        .args(["config", "check", "--config"])
        .arg(&file)
        .env("FLEETGATE_GATEWAY_LISTEN", "127.0.0.1:9090")
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("postgres://fg:***@db.internal/fg"),
        "{stdout}"
    );
    assert!(!stdout.contains("hunter2"));
    assert!(
        stdout.contains("127.0.0.1:4000") && stdout.contains("127.0.0.1:9090"),
        "{stdout}"
    );

    std::fs::write(&file, "[manager]\nlisten = \"not an address\"\n").expect("write");
    let out = command(dir.path())
        .args(["config", "check", "--config"])
        .arg(&file)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("listen") || stderr.contains("address"),
        "{stderr}"
    );
    let out = command(dir.path())
        .args(["config", "check"])
        .env("FLEETGATE_LOG_FORMAT", "xml")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("log.format"));
}

#[test]
fn edge_without_a_manager_to_sync_from_says_what_it_needs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = command(dir.path())
        .args(["edge", "--gateway-listen", "127.0.0.1:0"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--flecto-url"), "{stderr}");
    assert_eq!(
        std::fs::read_dir(dir.path()).expect("dir").count(),
        0,
        "no store was created"
    );
}

#[test]
fn migrate_prepares_the_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = command(dir.path()).arg("migrate").output().expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(
        "[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23]"
    ));
    assert!(dir.path().join("fleetgate.db").exists());
}

#[test]
fn first_start_prints_a_generated_password_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut p = Proc::start(dir.path(), &[]);
    let log = p.log();
    let password = log
        .lines()
        .skip_while(|l| !l.contains("generated password"))
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.contains("generated password"))
        .expect("password line")
        .to_string();
    let (status, _) = http(
        p.port,
        "POST",
        "/api/v1/auth/login",
        Some(&json!({"username": "admin", "password": password})),
        &[],
    )
    .expect("login");
    assert_eq!(status, 200);
    p.signal("-TERM");
    assert!(p.wait_exit(Duration::from_secs(15)).success());
    let mut p = Proc::start(dir.path(), &[]);
    assert!(
        !p.log().contains(&password),
        "the password is shown only at the first start"
    );
    p.signal("-TERM");
    assert!(p.wait_exit(Duration::from_secs(15)).success());
}

#[test]
fn sigterm_drains_in_flight_requests() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut p = Proc::start(dir.path(), &[]);
    // Send half of a request body, then SIGTERM, then the rest: the request
    // started before the signal must still be answered.
    let body = json!({"general": {"instance_name": "drained"}}).to_string();
    let (head, tail) = body.split_at(body.len() / 2);
    let mut s = TcpStream::connect(("127.0.0.1", p.port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        s,
        "PUT /api/v1/settings HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{head}",
        body.len()
    )
    .expect("write");
    std::thread::sleep(Duration::from_millis(300));
    p.signal("-TERM");
    std::thread::sleep(Duration::from_millis(300));
    // New connections are refused once shutdown began.
    assert!(
        http(p.port, "GET", "/health", None, &[]).is_none(),
        "still accepting after SIGTERM"
    );
    s.write_all(tail.as_bytes()).expect("write rest");
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("response");
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let status = p.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "{status:?}\n{}", p.log());
    // The change is durable.
    let p = Proc::start(dir.path(), &[]);
    let (_, body) = http(
        p.port,
        "GET",
        "/api/v1/settings",
        None,
        &[(bearer().0, &bearer().1)],
    )
    .expect("get");
    assert!(body.contains("drained"), "{body}");
}

#[test]
fn kill_9_during_writes_leaves_a_consistent_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut p = Proc::start(dir.path(), &[]);
    let port = p.port;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut i = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && i < 10_000 {
                    let body = if w % 2 == 0 {
                        json!({"general": {"instance_name": format!("w{w}-{i}")}})
                    } else {
                        json!({"username": format!("u{w}x{i}"), "password": "password-123"})
                    };
                    let path = if w % 2 == 0 {
                        ("PUT", "/api/v1/settings")
                    } else {
                        ("POST", "/api/v1/users")
                    };
                    if http(
                        port,
                        path.0,
                        path.1,
                        Some(&body),
                        &[(bearer().0, &bearer().1)],
                    )
                    .is_none()
                    {
                        break;
                    }
                    i += 1;
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    p.signal("-KILL");
    p.wait_exit(Duration::from_secs(10));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        let _ = w.join();
    }

    let p = Proc::start(dir.path(), &[]);
    let auth = bearer();
    let get = |path: &str| -> Value {
        let (status, body) = http(p.port, "GET", path, None, &[(auth.0, &auth.1)]).expect("get");
        assert_eq!(status, 200, "{path}: {body}");
        serde_json::from_str(&body).expect("json")
    };
    assert_eq!(get("/health/ready")["status"], "ok");
    let revisions = get("/api/v1/revisions?limit=1");
    let total = revisions["total"].as_i64().expect("total");
    assert!(total > 0, "no write landed before the kill");
    // Every revision has its audit entry (same transaction), and the newest
    // revision is exactly the configuration in force.
    let audited = get("/api/v1/audit?target_type=settings&limit=1")["total"]
        .as_i64()
        .expect("total");
    assert_eq!(audited, total);
    let latest = revisions["items"][0]["number"].as_i64().expect("n");
    assert_eq!(latest, total, "revision numbers are dense");
    let doc = get(&format!("/api/v1/revisions/{latest}"));
    assert_eq!(doc["document"]["settings"], get("/api/v1/settings"));
    let users = get("/api/v1/users?limit=1")["total"]
        .as_i64()
        .expect("total");
    let user_audits = get("/api/v1/audit?action=user.create&limit=1")["total"]
        .as_i64()
        .expect("total");
    assert_eq!(
        users, user_audits,
        "every user has its audit entry, admin included"
    );
}

#[test]
fn two_gateway_processes_share_a_rate_limit_through_redis() {
    let Ok(redis) = std::env::var("FLEETGATE_TEST_REDIS_URL") else {
        eprintln!("skipping: FLEETGATE_TEST_REDIS_URL is not set");
        return;
    };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let up = rt.block_on(crate::upstream::spawn("shared"));
    let (d1, d2) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    let env = [("FLEETGATE_REDIS_URL", redis.as_str())];
    let procs = [Proc::start(d1.path(), &env), Proc::start(d2.path(), &env)];
    let id = format!(
        "shared-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis()
    );
    let auth = bearer();
    for p in &procs {
        let route = json!({"id": id, "path": "/", "upstream": up.url(), "rateLimit": {"max": 100, "windowMs": 60000}});
        let (status, body) = http(
            p.port,
            "POST",
            "/api/v1/routes",
            Some(&route),
            &[(auth.0, &auth.1)],
        )
        .expect("route");
        assert_eq!(status, 201, "{body}");
        wait_applied(p);
    }
    // Stay inside one wall-clock window: the gateways align windows on wall time.
    let into_window = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis()
        % 60_000;
    if into_window > 45_000 {
        std::thread::sleep(Duration::from_millis((60_000 - into_window + 200) as u64));
    }
    let mut admitted = [0u32; 2];
    let mut limited = 0;
    for i in 0..300 {
        let p = &procs[i % 2];
        let (status, _) = http(p.gw, "GET", "/x", None, &[]).expect("proxied");
        match status {
            200 => admitted[i % 2] += 1,
            429 => limited += 1,
            s => panic!("unexpected status {s}"),
        }
    }
    let total = admitted[0] + admitted[1];
    assert!(
        (95..=105).contains(&total),
        "admitted {admitted:?}, limited {limited}"
    );
    assert!(
        admitted[0] > 0 && admitted[1] > 0,
        "both gateways served: {admitted:?}"
    );
    drop(up);
}

fn wait_applied(p: &Proc) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, h) = http(p.port, "GET", "/health", None, &[]).expect("health");
        let h: Value = serde_json::from_str(&h).expect("json");
        if h["gateway_revision"] == h["revision"] {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "gateway did not apply the configuration: {h}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn redis_down_fails_open_by_default_and_closed_when_configured() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let up = rt.block_on(crate::upstream::spawn("u"));
    let auth = bearer();
    for (fail_open, expect) in [("true", 200), ("false", 503)] {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = Proc::start(
            dir.path(),
            &[
                ("FLEETGATE_REDIS_URL", "redis://127.0.0.1:1"),
                ("FLEETGATE_GATEWAY_RATE_LIMIT_FAIL_OPEN", fail_open),
            ],
        );
        let route = json!({"id": "limited", "path": "/", "upstream": up.url(), "rateLimit": {"max": 5, "windowMs": 1000}});
        let (status, body) = http(
            p.port,
            "POST",
            "/api/v1/routes",
            Some(&route),
            &[(auth.0, &auth.1)],
        )
        .expect("route");
        assert_eq!(status, 201, "{body}");
        wait_applied(&p);
        let (status, body) = http(p.gw, "GET", "/x", None, &[]).expect("proxied");
        assert_eq!(status, expect, "fail_open={fail_open}: {body}");
        if expect == 503 {
            assert!(body.contains("RATE_LIMIT_UNAVAILABLE"), "{body}");
        }
        // The log is read from the child's stderr by another thread: give it a moment.
        let deadline = Instant::now() + Duration::from_secs(3);
        while !p.log().contains("rate_limit.redis_unavailable") && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let log = p.log();
        assert!(
            log.contains("rate_limit.redis_unavailable"),
            "an event is logged:\n{log}"
        );
        // And stored once for the outage, however many requests it refused.
        let _ = http(p.gw, "GET", "/x", None, &[]).expect("second request");
        let deadline = Instant::now() + Duration::from_secs(5);
        let events = loop {
            let (status, body) = http(
                p.port,
                "GET",
                "/api/v1/events?type=rate_limit.redis_unavailable",
                None,
                &[(auth.0, &auth.1)],
            )
            .expect("events");
            assert_eq!(status, 200, "{body}");
            let v: serde_json::Value = serde_json::from_str(&body).expect("json");
            if v["total"] != 0 || Instant::now() > deadline {
                break v;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(events["total"], 1, "{events}");
        let severity = if expect == 200 { "warning" } else { "critical" };
        assert_eq!(events["items"][0]["severity"], severity, "{events}");
    }
    drop(up);
}

#[test]
fn access_log_prints_the_configured_fields_as_json_lines() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let up = rt.block_on(crate::upstream::spawn("logged"));
    let dir = tempfile::tempdir().expect("tempdir");
    let p = Proc::start(
        dir.path(),
        &[
            ("FLEETGATE_GATEWAY_ACCESS_LOG", "true"),
            (
                "FLEETGATE_GATEWAY_ACCESS_LOG_FIELDS",
                "method, path, status, route, user_agent",
            ),
        ],
    );
    let auth = bearer();
    let route = json!({"id": "logged", "path": "/", "upstream": up.url()});
    let (status, body) = http(
        p.port,
        "POST",
        "/api/v1/routes",
        Some(&route),
        &[(auth.0, &auth.1)],
    )
    .expect("route");
    assert_eq!(status, 201, "{body}");
    wait_applied(&p);
    let (status, _) = http(
        p.gw,
        "GET",
        "/some/path?secret=1",
        None,
        &[("User-Agent", "probe/1")],
    )
    .expect("proxied");
    assert_eq!(status, 200);
    let deadline = Instant::now() + Duration::from_secs(5);
    let line = loop {
        let out = p.stdout.lock().expect("lock").clone();
        if let Some(l) = out.lines().find(|l| l.contains("/some/path")) {
            break l.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no access log line; stdout:\n{out}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let v: Value = serde_json::from_str(&line).expect("a JSON line");
    assert_eq!(
        v,
        json!({"method": "GET", "path": "/some/path", "status": 200, "route": "logged", "user_agent": "probe/1"})
    );
    drop(up);

    let out = command(dir.path())
        .args(["config", "check"])
        .env("FLEETGATE_GATEWAY_ACCESS_LOG_FIELDS", "path,password")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("password"));
}

/// `fleetgate manager` runs the manager alone: its API works, and no gateway port
/// is bound, no health check is sent to an upstream's target and no event of a
/// local data plane is raised — also after a restart, when the stored
/// configuration already holds the health-checked upstream.
#[test]
fn manager_role_runs_no_gateway_and_no_health_checks() {
    manager_role_check(&[]);
}

/// The same on PostgreSQL, in a fresh schema, when FLEETGATE_TEST_POSTGRES_URL is set.
#[test]
fn manager_role_runs_no_gateway_and_no_health_checks_postgres() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let Some(url) = rt.block_on(crate::support::postgres_schema_url()) else {
        return;
    };
    manager_role_check(&[("FLEETGATE_DATABASE_URL", url.as_str())]);
}

fn manager_role_check(env: &[(&str, &str)]) {
    let target = crate::support::ConnectionCounter::spawn();
    let dir = tempfile::tempdir().expect("tempdir");
    let auth = bearer();
    let headers = [(auth.0, auth.1.as_str())];
    let get = |p: &Proc, path: &str| -> Value {
        let (status, body) = http(p.port, "GET", path, None, &headers).expect("get");
        assert_eq!(status, 200, "{path}: {body}");
        serde_json::from_str(&body).expect("json")
    };
    let assert_no_data_plane = |p: &Proc| {
        for port in [p.gw, p.gw_tls.expect("fixed TLS port")] {
            assert!(
                TcpStream::connect(("127.0.0.1", port)).is_err(),
                "something listens on gateway port {port}\n{}",
                p.log()
            );
        }
        let health = get(p, "/health");
        assert!(health["gateway_revision"].is_null(), "{health}");
        assert_eq!(get(p, "/api/v1/metrics")["data_plane"], false);
    };

    let mut p = Proc::start_role("manager", Some(free_port()), dir.path(), env);
    assert_no_data_plane(&p);
    let store = if env.is_empty() { "sqlite" } else { "postgres" };
    assert_eq!(get(&p, "/health")["store"], store);
    let revision = |p: &Proc| {
        get(p, "/api/v1/revisions?limit=1")["total"]
            .as_i64()
            .expect("total")
    };
    let before = revision(&p);
    let upstream = json!({"name": "probed", "targets": [{"url": target.url()}],
        "health_check": {"active": {"path": "/health", "interval_ms": 200, "timeout_ms": 500,
            "healthy_threshold": 1, "unhealthy_threshold": 1}}});
    let (status, body) = http(
        p.port,
        "POST",
        "/api/v1/upstreams",
        Some(&upstream),
        &headers,
    )
    .expect("upstream");
    assert_eq!(status, 201, "{body}");
    let route = json!({"id": "to-probed", "path": "/", "upstream": "probed"});
    let (status, body) =
        http(p.port, "POST", "/api/v1/routes", Some(&route), &headers).expect("route");
    assert_eq!(status, 201, "{body}");
    assert_eq!(revision(&p), before + 2, "each write made a revision");
    assert_eq!(get(&p, "/health")["revision"], before + 2);
    // Six health-check intervals.
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(target.connections(), 0, "a health check reached the target");
    p.signal("-TERM");
    assert!(
        p.wait_exit(Duration::from_secs(15)).success(),
        "{}",
        p.log()
    );

    let mut p = Proc::start_role("manager", Some(free_port()), dir.path(), env);
    assert_no_data_plane(&p);
    assert_eq!(get(&p, "/health")["revision"], before + 2);
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(target.connections(), 0, "a health check reached the target");
    for query in ["type=config.applied", "category=health"] {
        let events = get(&p, &format!("/api/v1/events?{query}"));
        assert_eq!(events["total"], 0, "{query}: {events}");
    }
    let log = p.log();
    assert!(!log.contains("config.applied"), "{log}");
    p.signal("-TERM");
    assert!(
        p.wait_exit(Duration::from_secs(15)).success(),
        "{}",
        p.log()
    );
}

/// Writes a deployment's directory as the manager would.
fn deployment_dir(data: &Path, name: &str, domain: &str, port: u16) {
    let dir = data.join("deployments").join(name);
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(
        dir.join("compose.yml"),
        "services:\n  web:\n    command: [\"true\"]\n",
    )
    .expect("compose");
    std::fs::write(
        dir.join("service.yml"),
        format!("domains: [{domain}]\nport: {port}\n"),
    )
    .expect("service");
    std::fs::write(
        dir.join("deployment.json"),
        json!({"name": name, "desired": "stopped", "version": 1, "created_at": 0, "updated_at": 0})
            .to_string(),
    )
    .expect("record");
}

/// `fleetgate export nginx` writes a vhost per deployment that a real `nginx -t`
/// accepts, and when nginx refuses the result, puts back the files it found.
#[test]
fn nginx_export_is_checked_by_nginx_and_rolled_back_when_refused() {
    let nginx = Path::new("/usr/sbin/nginx");
    if !nginx.exists() {
        assert!(
            std::env::var("FLEETGATE_TEST_NGINX").is_err(),
            "FLEETGATE_TEST_NGINX is set but /usr/sbin/nginx is missing"
        );
        eprintln!(
            "skipping the nginx export test: nginx is not installed (apt-get install nginx-light)"
        );
        return;
    }
    let data = tempfile::tempdir().expect("data");
    let nx = tempfile::tempdir().expect("nginx prefix");
    let confd = nx.path().join("conf.d");
    std::fs::create_dir(&confd).expect("conf.d");
    let conf = nx.path().join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "error_log {p}/error.log;\npid {p}/nginx.pid;\nevents {{}}\nhttp {{\n  access_log off;\n  client_body_temp_path {p}/body;\n  proxy_temp_path {p}/proxy;\n  include {c}/*.conf;\n}}\n",
            p = nx.path().display(),
            c = confd.display()
        ),
    )
    .expect("nginx.conf");
    deployment_dir(data.path(), "blog", "blog.example.com", 8082);
    deployment_dir(data.path(), "shop", "shop.example.com", 8083);
    let export = || {
        command(data.path())
            .args(["export", "nginx", "--dir"])
            .arg(&confd)
            .arg("--nginx")
            .arg(nginx)
            .args(["--nginx-arg", "-c", "--nginx-arg"])
            .arg(&conf)
            .output()
            .expect("run")
    };
    let out = export();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let blog = std::fs::read_to_string(confd.join("fleetgate-blog.conf")).expect("blog vhost");
    assert!(blog.contains("server_name blog.example.com;") && blog.contains("127.0.0.1:8082"));
    assert!(confd.join("fleetgate-shop.conf").exists());
    let check = Command::new(nginx)
        .arg("-t")
        .arg("-c")
        .arg(&conf)
        .output()
        .expect("nginx -t");
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );

    // Something else in the include directory makes nginx refuse the next export:
    // the files before it stay as they were.
    std::fs::write(
        confd.join("zz-other.conf"),
        "not_a_directive_nginx_knows on;\n",
    )
    .expect("other");
    std::fs::remove_dir_all(data.path().join("deployments/shop")).expect("rm shop");
    deployment_dir(data.path(), "blog", "news.example.com", 9000);
    let out = export();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("restored") && err.contains("not_a_directive_nginx_knows"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(confd.join("fleetgate-blog.conf")).expect("blog"),
        blog,
        "the working vhost was put back"
    );
    assert!(
        confd.join("fleetgate-shop.conf").exists(),
        "not removed either"
    );
}

/// The AI gateway through the binary with debug logs and the access log on:
/// neither the provider's key nor the caller's appears in its output, nor in
/// what a caller gets back from a provider that echoes a refused key.
#[test]
fn ai_keys_never_reach_the_logs() {
    const PROVIDER_KEY: &str = "sk-provider-LOGCHECK-0123456789";
    const WRONG_KEY: &str = "sk-wrong-LOGCHECK-9876543210";
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let fake = rt.block_on(fleetgate_test_support::fake_llm::FakeLlm::start(Some(
        PROVIDER_KEY,
    )));
    let dir = tempfile::tempdir().expect("tempdir");
    let p = Proc::start(
        dir.path(),
        &[
            ("FLEETGATE_LOG_LEVEL", "debug"),
            ("FLEETGATE_GATEWAY_ACCESS_LOG", "true"),
        ],
    );
    let auth = bearer();
    let post = |path: &str, body: Value| -> Value {
        let (status, text) =
            http(p.port, "POST", path, Some(&body), &[(auth.0, &auth.1)]).expect("manager answers");
        assert_eq!(status, 201, "POST {path}: {text}");
        serde_json::from_str(&text).expect("json")
    };
    for (name, key) in [("good", PROVIDER_KEY), ("bad", WRONG_KEY)] {
        post(
            "/api/v1/ai/providers",
            json!({"name": name, "kind": "openai_compatible", "base_url": fake.openai_url(),
                   "api_key": key, "default_model": "gpt-4o-mini"}),
        );
        post(
            "/api/v1/routes",
            json!({"id": name, "path": format!("/{name}"), "ai": {"provider": name}}),
        );
    }
    let caller = post("/api/v1/api-keys", json!({"name": "caller"}))["key"]
        .as_str()
        .expect("key")
        .to_string();
    let caller_auth = format!("Bearer {caller}");
    let chat = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]});
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let got = http(
            p.gw,
            "POST",
            "/good/v1/chat/completions",
            Some(&chat),
            &[("Authorization", &caller_auth)],
        );
        if got.as_ref().is_some_and(|(s, _)| *s == 200) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the ai route never answered: {got:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, body) = http(
        p.gw,
        "POST",
        "/bad/v1/chat/completions",
        Some(&chat),
        &[("Authorization", &caller_auth)],
    )
    .expect("gateway answers");
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("Incorrect API key"), "{body}");
    assert!(
        !body.contains(WRONG_KEY),
        "the echoed key reached the caller: {body}"
    );
    // A refused caller key is not logged either.
    let (status, _) = http(
        p.gw,
        "POST",
        "/good/v1/chat/completions",
        Some(&chat),
        &[("Authorization", "Bearer fgk_LOGCHECK_not_a_key")],
    )
    .expect("gateway answers");
    assert_eq!(status, 401);
    std::thread::sleep(Duration::from_millis(300));
    let out = format!("{}{}", p.log(), p.stdout.lock().expect("lock"));
    assert!(
        out.contains("/good/v1/chat/completions"),
        "the access log is on"
    );
    for secret in [
        PROVIDER_KEY,
        WRONG_KEY,
        caller.as_str(),
        "fgk_LOGCHECK_not_a_key",
    ] {
        assert!(!out.contains(secret), "{secret} is in the output");
    }
}

#[test]
fn version_names_the_commit_and_the_build_profile() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = command(dir.path()).arg("version").output().expect("run");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let rest = text
        .trim()
        .strip_prefix(&format!("fleetgate {} (commit ", env!("CARGO_PKG_VERSION")))
        .unwrap_or_else(|| panic!("{text}"));
    let (commit, profile) = rest.split_once(", ").unwrap_or_else(|| panic!("{text}"));
    let hash = commit.strip_suffix("+dirty").unwrap_or(commit);
    assert!(
        hash == "unknown" || (hash.len() == 12 && hash.bytes().all(|b| b.is_ascii_hexdigit())),
        "{text}"
    );
    // The tests run a debug build.
    assert_eq!(profile, "debug build)", "{text}");
}

/// Each shell's completion script, checked by that shell's own parser;
/// a shell that is not installed is skipped (CI installs them all and sets
/// `FLEETGATE_TEST_SHELLS`, so there none may be missing).
#[test]
fn completion_scripts_parse_in_their_shells_and_the_manual_page_lists_the_commands() {
    let dir = tempfile::tempdir().expect("tempdir");
    let required = std::env::var_os("FLEETGATE_TEST_SHELLS").is_some();
    for (shell, check) in [
        ("bash", &["-n"][..]),
        ("zsh", &["-n"][..]),
        ("fish", &["--no-execute"][..]),
    ] {
        let out = command(dir.path())
            .args(["completions", shell])
            .output()
            .expect("run");
        assert!(
            out.status.success(),
            "{shell}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let script = String::from_utf8_lossy(&out.stdout).to_string();
        for sub in ["serve", "manager", "edge", "completions", "version"] {
            assert!(script.contains(sub), "{shell} completes {sub}");
        }
        let file = dir.path().join(format!("fleetgate.{shell}"));
        std::fs::write(&file, &script).expect("write script");
        match Command::new(shell).args(check).arg(&file).output() {
            Ok(parsed) => assert!(
                parsed.status.success(),
                "{shell} refuses the completion script: {}",
                String::from_utf8_lossy(&parsed.stderr)
            ),
            Err(e) if !required => eprintln!("skipping the {shell} check: cannot run {shell}: {e}"),
            Err(e) => panic!("cannot run {shell} (FLEETGATE_TEST_SHELLS is set): {e}"),
        }
    }
    let out = command(dir.path())
        .args(["completions", "powershell"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("powershell"));

    let out = command(dir.path()).arg("man").output().expect("run");
    assert!(out.status.success());
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(
        page.starts_with(".ie"),
        "roff: {}",
        &page[..page.len().min(200)]
    );
    assert!(page.contains(".TH fleetgate"), "a manual page title");
    for sub in [
        "serve",
        "manager",
        "edge",
        "relay",
        "migrate",
        "completions",
    ] {
        assert!(page.contains(sub), "the manual page lists {sub}");
    }
}

#[test]
fn healthcheck_exits_zero_for_a_ready_manager_and_one_otherwise() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = Proc::start(dir.path(), &[]);
    let out = command(dir.path())
        .args(["healthcheck", "--listen", &format!("0.0.0.0:{}", p.port)])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A wildcard listen address is asked on loopback.
    assert!(String::from_utf8_lossy(&out.stdout)
        .contains(&format!("ready: http://127.0.0.1:{}/health/ready", p.port)));
    drop(p);
    let closed = free_port();
    let out = command(dir.path())
        .args([
            "healthcheck",
            "--listen",
            &format!("127.0.0.1:{closed}"),
            "--timeout-secs",
            "2",
        ])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not ready"));
}

/// The shipped systemd unit passes `systemd-analyze verify` (with this
/// build's binary in ExecStart) and its sandbox scores OK (exposure under
/// 2.0 of 10) in `systemd-analyze security`; skipped without systemd-analyze.
#[test]
fn the_systemd_unit_verifies_and_is_locked_down() {
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packaging/systemd/fleetgate.service"),
    )
    .expect("the unit file");
    assert!(unit.contains("ExecStart=/usr/local/bin/fleetgate serve"));
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("fleetgate.service");
    std::fs::write(&file, unit.replace("/usr/local/bin/fleetgate", BIN)).expect("write");
    let verify = match Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&file)
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            eprintln!("skipping the unit check: cannot run systemd-analyze: {e}");
            return;
        }
    };
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    let security = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--threshold=19"])
        .arg(&file)
        .output()
        .expect("systemd-analyze security");
    let text = String::from_utf8_lossy(&security.stdout);
    assert!(
        security.status.success(),
        "exposure above 1.9: {}",
        text.lines().last().unwrap_or_default()
    );
    assert!(text.contains("Overall exposure level"), "{text}");
}

#[test]
fn the_log_filter_changes_while_the_process_runs_and_the_change_is_audited() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = Proc::start(dir.path(), &[("FLEETGATE_LOG_LEVEL", "warn")]);
    let (k, v) = bearer();
    let auth = [(k, v.as_str())];
    let (status, body) = http(p.port, "GET", "/api/v1/settings/logging", None, &auth).expect("get");
    assert_eq!(status, 200, "{body}");
    let view: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(
        (view["level"].as_str(), view["format"].as_str()),
        (Some("warn"), Some("pretty"))
    );
    let put = |level: &str| {
        http(
            p.port,
            "PUT",
            "/api/v1/settings/logging",
            Some(&json!({ "level": level })),
            &auth,
        )
        .expect("put")
    };
    // At info, the change's own info line is written (after the change).
    let (status, body) = put("info,fleetgate_proxy=debug");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).expect("json")["level"],
        "info,fleetgate_proxy=debug"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while !p.log().contains("log filter changed") {
        assert!(
            Instant::now() < deadline,
            "no info line at info:\n{}",
            p.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // At error, it is not.
    assert_eq!(put("error").0, 200);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        p.log().matches("log filter changed").count(),
        1,
        "{}",
        p.log()
    );
    // Refused, naming what is wrong; nothing changes.
    for bad in ["loud", "info,", "fleetgate proxy=debug"] {
        let (status, body) = put(bad);
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body.contains("level:"), "{body}");
    }
    let (_, body) = http(p.port, "GET", "/api/v1/settings/logging", None, &auth).expect("get");
    assert!(body.contains("\"level\":\"error\""), "{body}");
    // Without credentials: refused.
    let (status, _) = http(
        p.port,
        "PUT",
        "/api/v1/settings/logging",
        Some(&json!({"level": "trace"})),
        &[],
    )
    .expect("put");
    assert_eq!(status, 401);
    let (_, body) = http(
        p.port,
        "GET",
        "/api/v1/audit?action=settings.logging.update",
        None,
        &auth,
    )
    .expect("audit");
    let audit: Value = serde_json::from_str(&body).expect("json");
    let items = audit["items"].as_array().expect("items");
    assert_eq!(items.len(), 2, "{audit}");
    assert_eq!(items[0]["before"]["level"], "info,fleetgate_proxy=debug");
    assert_eq!(items[0]["after"]["level"], "error");
}
