//! Findings of the security review (issue 13) on the manager, each checked through
//! the real server: slow clients, the login limit, API keys of disabled owners on
//! the Flecto sync API, file modes and metrics access, outbound destinations.

use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};

use crate::support::{put_settings, spawn_app, TestApp};

/// The id of the user called `username`.
async fn user_id(app: &TestApp, username: &str) -> String {
    let users = app.get_json("/api/v1/users?limit=1000").await;
    users["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|u| u["username"] == username)
        .and_then(|u| u["id"].as_str())
        .expect("user exists")
        .to_string()
}

async fn update_user(app: &TestApp, id: &str, body: Value) {
    let r = app
        .admin(Method::PUT, &format!("/api/v1/users/{id}"))
        .json(&body)
        .send()
        .await
        .expect("update user");
    assert_eq!(r.status(), StatusCode::OK, "{:?}", r.text().await);
}

// ---------------------------------------------------------------------------
// Item 14: the Flecto sync API applies the same owner checks to API keys as /api/v1.

#[tokio::test]
async fn sync_api_refuses_keys_of_disabled_owners_and_demotes_keys_of_demoted_ones() {
    let app = spawn_app().await;
    for (path, body) in [
        ("/api/v1/namespaces", json!({"name": "prod"})),
        (
            "/api/v1/namespaces/prod/projects",
            json!({"name": "site", "hosts": ["site.test"]}),
        ),
    ] {
        let r = app
            .admin(Method::POST, path)
            .json(&body)
            .send()
            .await
            .expect("create");
        assert_eq!(r.status(), StatusCode::CREATED, "{path}");
    }
    let key = app.key_for_role("sync-operator", "operator").await;
    let id = user_id(&app, "sync-operator").await;
    let base = app.url("/api/namespace/prod/project/site");
    let c = Client::new();
    let read = || c.get(format!("{base}/version")).bearer_auth(&key).send();
    let write = || {
        c.patch(format!("{base}/agents/edge-1/hit"))
            .bearer_auth(&key)
            .send()
    };
    assert_eq!(read().await.expect("read").status(), StatusCode::OK);
    assert_eq!(write().await.expect("write").status(), StatusCode::OK);

    // Demoted to viewer: the key may still read, no longer write (as on /api/v1).
    update_user(&app, &id, json!({"role": "viewer"})).await;
    assert_eq!(read().await.expect("read").status(), StatusCode::OK);
    assert_eq!(
        write().await.expect("write").status(),
        StatusCode::FORBIDDEN
    );

    // Disabled: the key is refused outright, on both APIs.
    update_user(&app, &id, json!({"role": "operator", "disabled": true})).await;
    let r = read().await.expect("read");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let body: Value = r.json().await.expect("flecto error body");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("disabled")),
        "{body}"
    );
    assert_eq!(
        write().await.expect("write").status(),
        StatusCode::UNAUTHORIZED
    );
    let r = c
        .get(app.url("/api/v1/auth/me"))
        .bearer_auth(&key)
        .send()
        .await
        .expect("me");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // Enabled again, the key works again: nothing was revoked, only checked.
    update_user(&app, &id, json!({"disabled": false})).await;
    assert_eq!(read().await.expect("read").status(), StatusCode::OK);
    app.stop().await;
}

// ---------------------------------------------------------------------------
// Item 12: the login limit counts attempts atomically and a success erases nothing.

async fn login(app: &TestApp, client: &Client, password: &str) -> reqwest::Response {
    client
        .post(app.url("/api/v1/auth/login"))
        .json(&json!({"username": "admin", "password": password}))
        .send()
        .await
        .expect("login request")
}

fn retry_after(r: &reqwest::Response) -> u64 {
    r.headers()
        .get("retry-after")
        .expect("Retry-After")
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds")
}

#[tokio::test]
async fn concurrent_wrong_logins_get_at_most_five_401s() {
    let app = spawn_app().await;
    let client = Client::new();
    let attempts = (0..40).map(|i| {
        let client = client.clone();
        let url = app.url("/api/v1/auth/login");
        async move {
            client
                .post(url)
                .json(&json!({"username": "admin", "password": format!("guess-{i}")}))
                .send()
                .await
                .expect("login request")
        }
    });
    let responses = futures::future::join_all(attempts).await;
    let mut unauthorized = 0;
    let mut limited = 0;
    for r in responses {
        match r.status() {
            StatusCode::UNAUTHORIZED => unauthorized += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                let retry = retry_after(&r);
                assert!((1..=60).contains(&retry), "Retry-After {retry}");
                let body: Value = r.json().await.expect("json");
                assert_eq!(body["code"], "RATE_LIMITED", "{body}");
                limited += 1;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(
        (1..=5).contains(&unauthorized),
        "{unauthorized} guesses had their password checked; the limit is 5"
    );
    assert_eq!(unauthorized + limited, 40);
    // The right password is refused too while the address is limited.
    let r = login(&app, &client, crate::support::ADMIN_PASSWORD).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    app.stop().await;
}

#[tokio::test]
async fn a_successful_login_does_not_reset_the_failures_of_its_address() {
    let app = spawn_app().await;
    let client = Client::new();
    for _ in 0..2 {
        let r = login(&app, &client, "wrong-password").await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    let r = login(&app, &client, crate::support::ADMIN_PASSWORD).await;
    assert_eq!(r.status(), StatusCode::OK);
    // Three more failures make five: a success did not wipe the first two.
    for _ in 0..3 {
        let r = login(&app, &client, "wrong-password").await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    let r = login(&app, &client, "wrong-password").await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!((1..=60).contains(&retry_after(&r)));
    let r = login(&app, &client, crate::support::ADMIN_PASSWORD).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    app.stop().await;
}

#[tokio::test]
async fn successful_logins_do_not_use_up_the_limit() {
    let app = spawn_app().await;
    let client = Client::new();
    // A success does not count itself: many sign-ins from one address keep working.
    for _ in 0..8 {
        let r = login(&app, &client, crate::support::ADMIN_PASSWORD).await;
        assert_eq!(r.status(), StatusCode::OK);
    }
    app.stop().await;
}

// ---------------------------------------------------------------------------
// Item 16: outbound destinations of test-upstream and webhooks.

#[tokio::test]
async fn test_upstream_applies_the_destination_policy() {
    let app = spawn_app().await;
    let port = app.addr.port();
    let probe = |url: String| {
        app.admin(Method::POST, "/api/v1/troubleshooting/test-upstream")
            .json(&json!({"url": url, "timeout_ms": 2000}))
            .send()
    };
    // The manager itself, however the address is spelled, and other special ranges.
    for url in [
        format!("http://127.0.0.1:{port}/health"),
        format!("http://localhost:{port}/health"),
        format!("http://[::127.0.0.1]:{port}/health"),
        format!("http://[::ffff:127.0.0.1]:{port}/health"),
        format!("http://[::ffff:7f00:1]:{port}/health"),
        format!("http://[64:ff9b::127.0.0.1]:{port}/health"),
        "http://169.254.169.254/latest/meta-data/".to_string(),
        "http://[::ffff:169.254.169.254]/".to_string(),
        "http://198.18.0.1/".to_string(),
        "http://10.0.0.1/".to_string(),
        "http://[fd00::1]/".to_string(),
        "http://0.0.0.0/".to_string(),
    ] {
        let r = probe(url.clone()).await.expect("probe");
        let body =
            crate::support::expect_error(r, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await;
        assert_eq!(body["details"]["field"], "url", "{url}: {body}");
        assert!(
            body["error"]
                .as_str()
                .is_some_and(|m| m.contains("allow_private_targets")),
            "{url}: {body}"
        );
    }
    // A configured upstream target may be probed: the gateway sends traffic there anyway.
    let up = crate::upstream::spawn("probed").await;
    let r = app
        .admin(Method::POST, "/api/v1/upstreams")
        .json(&json!({"name": "probed", "targets": [{"url": up.url()}]}))
        .send()
        .await
        .expect("upstream");
    assert_eq!(r.status(), StatusCode::CREATED);
    let r: Value = probe(format!("{}/health", up.url()))
        .await
        .expect("probe")
        .json()
        .await
        .expect("json");
    assert_eq!(r["reachable"], true, "{r}");
    assert_eq!(r["connect"]["details"]["address"], up.addr.to_string());
    // With the opt-in, private destinations are probed, at the checked address.
    put_settings(&app, json!({"webhooks": {"allow_private_targets": true}})).await;
    let r: Value = probe(format!("http://[::ffff:127.0.0.1]:{port}/health/ping"))
        .await
        .expect("probe")
        .json()
        .await
        .expect("json");
    assert_eq!(r["reachable"], true, "{r}");
    assert_eq!(r["http"]["details"]["status"], 204, "{r}");
    app.stop().await;
}

#[tokio::test]
async fn webhooks_refuse_ipv6_spellings_of_private_addresses() {
    let app = spawn_app().await;
    let port = app.addr.port();
    for url in [
        format!("http://[::127.0.0.1]:{port}/hook"),
        format!("http://[64:ff9b::a9fe:a9fe]:{port}/hook"),
        "http://198.19.0.5/hook".to_string(),
        "http://[2002:7f00:1::1]/hook".to_string(),
    ] {
        let r = app
            .admin(Method::POST, "/api/v1/webhooks")
            .json(&json!({"url": url, "events": ["*"]}))
            .send()
            .await
            .expect("create webhook");
        let body =
            crate::support::expect_error(r, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await;
        assert_eq!(body["details"]["field"], "url", "{url}: {body}");
    }
    app.stop().await;
}

#[tokio::test]
async fn webhook_deliveries_check_the_addresses_a_name_resolves_to() {
    let app = spawn_app().await;
    let receiver = crate::upstream::spawn("receiver").await;
    let url = format!("http://localhost:{}/hook", receiver.addr.port());
    put_settings(&app, json!({"webhooks": {"allow_private_targets": true}})).await;
    let r = app
        .admin(Method::POST, "/api/v1/webhooks")
        .json(&json!({"url": url, "events": ["*"]}))
        .send()
        .await
        .expect("create webhook");
    assert_eq!(r.status(), StatusCode::CREATED);
    let hook: Value = r.json().await.expect("json");
    let id = hook["id"].as_str().expect("id").to_string();
    let test = || async {
        app.admin(Method::POST, &format!("/api/v1/webhooks/{id}/test"))
            .send()
            .await
            .expect("test")
            .json::<Value>()
            .await
            .expect("json")
    };
    let d = test().await;
    assert!(d["last_status_code"].is_i64(), "delivered: {d}");
    // The opt-in is read at each delivery: without it the name's addresses are refused
    // by the delivery client's own resolver, and nothing is sent.
    put_settings(&app, json!({})).await;
    let d = test().await;
    assert!(d["last_status_code"].is_null(), "{d}");
    assert!(
        d["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("not a public address")),
        "{d}"
    );
    app.stop().await;
}

// ---------------------------------------------------------------------------
// Item 15: private files, and credentials for the metrics.

fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

fn set_mode(path: &std::path::Path, m: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(m)).expect("chmod");
}

/// Every file of the data directory tree, with its mode, and every directory's.
fn modes_under(dir: &std::path::Path, out: &mut Vec<(std::path::PathBuf, bool, u32)>) {
    out.push((dir.to_path_buf(), true, mode(dir)));
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            modes_under(&path, out);
        } else {
            out.push((path.clone(), false, mode(&path)));
        }
    }
}

fn assert_private(dir: &std::path::Path) {
    let mut all = Vec::new();
    modes_under(dir, &mut all);
    for (path, is_dir, m) in all {
        let want = if is_dir { 0o700 } else { 0o600 };
        assert_eq!(m, want, "{} is {m:o}, expected {want:o}", path.display());
    }
}

#[tokio::test]
async fn database_wal_backups_and_their_directories_are_private() {
    let parent = tempfile::tempdir().expect("tempdir");
    let data = parent.path().join("data");
    let config = crate::support::config_in(&data);
    let secrets = || fleetgate::BootstrapSecrets {
        admin_password: Some(crate::support::ADMIN_PASSWORD.into()),
        bootstrap_token: Some(crate::support::TOKEN.into()),
    };
    // The umask would give 0644 files in 0755 directories; the modes must not
    // depend on it.
    let running = fleetgate::start(config.clone(), secrets(), false, std::future::pending())
        .await
        .expect("starts");
    let c = Client::new();
    let r = c
        .post(format!(
            "http://{}/api/v1/settings/backup",
            running.manager_addr
        ))
        .bearer_auth(crate::support::TOKEN)
        .json(&json!({"name": "modes"}))
        .send()
        .await
        .expect("backup");
    assert_eq!(r.status(), StatusCode::CREATED);
    assert!(data.join("fleetgate.db").is_file());
    assert!(
        data.join("fleetgate.db-wal").is_file(),
        "WAL file exists while running"
    );
    assert!(data.join("backups/modes.sqlite").is_file());
    assert_private(&data);
    running.shutdown().await.expect("stops");

    // Files an earlier version left readable are corrected at the next start.
    set_mode(&data, 0o755);
    set_mode(&data.join("backups"), 0o755);
    for f in ["fleetgate.db", "secret.key", "backups/modes.sqlite"] {
        set_mode(&data.join(f), 0o644);
    }
    for f in ["fleetgate.db-wal", "fleetgate.db-shm"] {
        if data.join(f).exists() {
            set_mode(&data.join(f), 0o644);
        }
    }
    let running = fleetgate::start(config, secrets(), false, std::future::pending())
        .await
        .expect("starts again");
    assert_private(&data);
    running.shutdown().await.expect("stops");
}

#[tokio::test]
async fn metrics_need_credentials_unless_opened() {
    let app = spawn_app().await;
    for path in ["/prometheus/metrics", "/metrics"] {
        let r = app.anon(Method::GET, path).send().await.expect("anon");
        crate::support::expect_error(r, StatusCode::UNAUTHORIZED, "UNAUTHORIZED").await;
        let r = app
            .anon(Method::GET, path)
            .bearer_auth("not-a-key")
            .send()
            .await
            .expect("bad key");
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{path}");
        let viewer = app
            .key_for_role(&format!("viewer{}", path.len()), "viewer")
            .await;
        let r = app
            .anon(Method::GET, path)
            .bearer_auth(&viewer)
            .send()
            .await
            .expect("viewer");
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        assert!(r
            .text()
            .await
            .expect("text")
            .contains("fleetgate_api_requests_total"));
    }
    app.stop().await;

    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = crate::support::config_in(dir.path());
    config.manager.metrics_public = true;
    let app = crate::support::spawn_with(config, dir).await;
    for path in ["/prometheus/metrics", "/metrics"] {
        let r = app.anon(Method::GET, path).send().await.expect("anon");
        assert_eq!(r.status(), StatusCode::OK, "{path}");
    }
    app.stop().await;
}

// ---------------------------------------------------------------------------
// Item 11: slow and silent clients on the manager.

use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Long enough for any machine to act on a timeout of a few hundred ms; a server
/// without the limits never closes these connections at all.
const CLOSE_WITHIN: std::time::Duration = std::time::Duration::from_secs(15);

async fn spawn_limited(header_ms: u64, body_ms: u64, max_pending: usize) -> TestApp {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = crate::support::config_in(dir.path());
    config.manager.header_read_timeout_ms = header_ms;
    config.manager.body_read_timeout_ms = body_ms;
    config.manager.max_pending_connections = max_pending;
    crate::support::spawn_with(config, dir).await
}

/// Everything the server sends until it closes the connection; panics if it keeps
/// the connection open for [`CLOSE_WITHIN`].
async fn read_until_closed(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(CLOSE_WITHIN, s.read(&mut buf)).await {
            Err(_) => panic!(
                "the server kept the connection open; it sent {:?}",
                String::from_utf8_lossy(&out)
            ),
            Ok(Ok(0)) | Ok(Err(_)) => return String::from_utf8_lossy(&out).into_owned(),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test]
async fn silent_and_partial_heads_and_idle_keep_alives_are_cut_off() {
    let app = spawn_limited(300, 60_000, 1024).await;
    // Connects and sends nothing.
    let mut silent = TcpStream::connect(app.addr).await.expect("connect");
    // Sends half a head.
    let mut partial = TcpStream::connect(app.addr).await.expect("connect");
    partial
        .write_all(b"GET /health HTTP/1.1\r\nHost: manager\r\nX-Slow: ")
        .await
        .expect("write");
    // Sends a head one byte at a time, each well within the timeout: the time for
    // the whole head is what counts.
    let mut dribble = TcpStream::connect(app.addr).await.expect("connect");
    let dribbling = tokio::spawn(async move {
        let started = tokio::time::Instant::now();
        for b in
            b"GET /health HTTP/1.1\r\nHost: manager\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
                .iter()
                .cycle()
        {
            if dribble.write_all(&[*b]).await.is_err() {
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            if started.elapsed() > CLOSE_WITHIN {
                return false;
            }
        }
        false
    });
    // A complete request on a kept-alive connection, then nothing.
    let mut idle = TcpStream::connect(app.addr).await.expect("connect");
    idle.write_all(b"GET /health/ping HTTP/1.1\r\nHost: manager\r\n\r\n")
        .await
        .expect("write");
    assert_eq!(read_until_closed(&mut silent).await, "");
    assert_eq!(read_until_closed(&mut partial).await, "");
    let answered = read_until_closed(&mut idle).await;
    assert!(answered.starts_with("HTTP/1.1 204"), "{answered:?}");
    let cut = tokio::time::timeout(CLOSE_WITHIN + CLOSE_WITHIN, dribbling)
        .await
        .expect("dribbler ends")
        .expect("task");
    assert!(cut, "a head sent byte by byte was never cut off");
    // Working clients are unaffected.
    let r = app
        .anon(Method::GET, "/health")
        .send()
        .await
        .expect("health");
    assert_eq!(r.status(), StatusCode::OK);
    app.stop().await;
}

#[tokio::test]
async fn a_stalled_request_body_gets_408_and_is_closed() {
    let app = spawn_limited(10_000, 300, 1024).await;
    let mut s = TcpStream::connect(app.addr).await.expect("connect");
    s.write_all(
        b"POST /api/v1/auth/login HTTP/1.1\r\nHost: manager\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n{\"username\":\"adm",
    )
    .await
    .expect("write");
    let out = read_until_closed(&mut s).await;
    assert!(out.starts_with("HTTP/1.1 408"), "{out:?}");
    assert!(out.contains("\"code\":\"REQUEST_TIMEOUT\""), "{out:?}");
    // A body that keeps coming, slower than the timeout in total but never
    // pausing that long, is read to the end.
    let r = app
        .anon(Method::POST, "/api/v1/auth/login")
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(
            futures::stream::iter(
                [
                    "{\"username\":",
                    "\"admin\",",
                    "\"password\":",
                    "\"wrong\"}",
                ]
                .into_iter()
                .map(Ok::<_, std::io::Error>),
            )
            .then(|chunk| async move {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                chunk
            }),
        ))
        .send()
        .await
        .expect("login");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    app.stop().await;
}

#[tokio::test]
async fn connections_without_a_request_are_capped() {
    let app = spawn_limited(60_000, 60_000, 3).await;
    // A connection that has made a request no longer counts against the cap.
    let mut served = TcpStream::connect(app.addr).await.expect("connect");
    served
        .write_all(b"GET /health/ping HTTP/1.1\r\nHost: manager\r\n\r\n")
        .await
        .expect("write");
    let mut buf = [0u8; 512];
    let n = served.read(&mut buf).await.expect("read");
    assert!(buf[..n].starts_with(b"HTTP/1.1 204"));
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(TcpStream::connect(app.addr).await.expect("connect"));
    }
    // Let the server accept those three before the fourth arrives.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let mut extra = TcpStream::connect(app.addr).await.expect("connect");
    assert_eq!(
        read_until_closed(&mut extra).await,
        "",
        "the fourth is refused"
    );
    // The three held ones were kept and are served when they speak.
    for s in &mut silent {
        s.write_all(b"GET /health/ping HTTP/1.1\r\nHost: manager\r\nConnection: close\r\n\r\n")
            .await
            .expect("write");
        let out = read_until_closed(s).await;
        assert!(out.starts_with("HTTP/1.1 204"), "{out:?}");
    }
    // Their places are free again.
    let r = app
        .anon(Method::GET, "/health")
        .send()
        .await
        .expect("health");
    assert_eq!(r.status(), StatusCode::OK);
    // And the connection that made a request is still open and served.
    served
        .write_all(b"GET /health/ping HTTP/1.1\r\nHost: manager\r\n\r\n")
        .await
        .expect("write");
    let n = served.read(&mut buf).await.expect("read");
    assert!(buf[..n].starts_with(b"HTTP/1.1 204"));
    app.stop().await;
}

#[tokio::test]
async fn concurrent_wrong_logins_across_two_replicas_share_one_limit() {
    let Some(url) = crate::support::postgres_schema_url().await else {
        return;
    };
    let (dir_a, dir_b) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    let mut ca = crate::support::config_in(dir_a.path());
    ca.database.url = Some(url.clone());
    let mut cb = crate::support::config_in(dir_b.path());
    cb.database.url = Some(url);
    let a = crate::support::spawn_with(ca, dir_a).await;
    let b = crate::support::spawn_with(cb, dir_b).await;
    let client = Client::new();
    let attempts = (0..40).map(|i| {
        let url = if i % 2 == 0 {
            a.url("/api/v1/auth/login")
        } else {
            b.url("/api/v1/auth/login")
        };
        let client = client.clone();
        async move {
            client
                .post(url)
                .json(&json!({"username": "admin", "password": format!("guess-{i}")}))
                .send()
                .await
                .expect("login request")
                .status()
        }
    });
    let statuses = futures::future::join_all(attempts).await;
    let unauthorized = statuses
        .iter()
        .filter(|s| **s == StatusCode::UNAUTHORIZED)
        .count();
    let limited = statuses
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert!(
        (1..=5).contains(&unauthorized),
        "{unauthorized} guesses were checked across both replicas; the limit is 5"
    );
    assert_eq!(unauthorized + limited, 40, "{statuses:?}");
    a.stop().await;
    b.stop().await;
}
