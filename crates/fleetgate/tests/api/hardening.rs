//! The gateway against hostile or unusual bytes, as an outside review tried it:
//! raw sockets where the bytes matter, stock `curl` for HTTP/2, and upstreams that
//! misbehave on purpose. Each case names the rule it holds the gateway to.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use reqwest::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::{config_in, spawn_app, spawn_with, TestApp};
use crate::upstream;

/// A response read off a raw socket.
struct Raw {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Raw {
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {}\n{}",
                self.head,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(end) = data.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size_text = std::str::from_utf8(&data[..end]).expect("chunk size");
        let size = usize::from_str_radix(size_text.split(';').next().expect("size").trim(), 16)
            .expect("hex size");
        data = &data[end + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// Parses everything a connection received into one response.
fn parse(bytes: &[u8]) -> Raw {
    let end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(bytes)));
    let head = String::from_utf8_lossy(&bytes[..end]).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head}"));
    let mut r = Raw {
        status,
        head,
        body: bytes[end + 4..].to_vec(),
    };
    if r.header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        r.body = dechunk(&r.body);
    } else if let Some(n) = r.header("content-length").and_then(|v| v.parse().ok()) {
        r.body.truncate(n);
    }
    r
}

/// Sends `request` on a new connection and reads until the gateway closes it (the
/// requests here ask for that, or are refused, which closes it too).
async fn send_raw(addr: SocketAddr, request: &[u8]) -> Raw {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(request).await.expect("write");
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "the gateway kept the connection open after {:?}",
                String::from_utf8_lossy(request)
            )
        })
        .ok();
    parse(&got)
}

fn get(path: &str, host: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").into_bytes()
}

fn post(path: &str, host: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

impl TestApp {
    fn gw_addr(&self) -> SocketAddr {
        self.gateway.expect("gateway")
    }

    async fn route(&self, route: Value) {
        self.post_ok("/api/v1/routes", route).await;
    }
}

/// An upstream speaking raw bytes: `serve` gets each accepted connection and its
/// number (from 1).
fn raw_upstream<F, Fut>(serve: F) -> (SocketAddr, Arc<AtomicU64>)
where
    F: Fn(TcpStream, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    std_listener.set_nonblocking(true).expect("nonblocking");
    let addr = std_listener.local_addr().expect("addr");
    let connections = Arc::new(AtomicU64::new(0));
    let count = connections.clone();
    tokio::spawn(async move {
        let listener = TcpListener::from_std(std_listener).expect("listener");
        while let Ok((s, _)) = listener.accept().await {
            let n = count.fetch_add(1, Ordering::SeqCst) + 1;
            tokio::spawn(serve(s, n));
        }
    });
    (addr, connections)
}

/// Reads one request head (and nothing after it that it can help).
async fn read_head(s: &mut TcpStream) -> Option<String> {
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte).await {
            Ok(1) => got.push(byte[0]),
            _ => return None,
        }
    }
    Some(String::from_utf8_lossy(&got).to_string())
}

async fn wait_for(what: &str, flag: &AtomicBool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !flag.load(Ordering::SeqCst) {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn routes_on_the_canonical_path_and_forwards_that_path() {
    let app = spawn_app().await;
    let up = upstream::spawn("all").await;
    // `/admin` is closed to this client; everything else is open.
    app.route(
        json!({"id": "admin", "path": "/admin", "upstream": up.url(), "ip_deny": ["127.0.0.1/32"]}),
    )
    .await;
    app.route(json!({"id": "all", "path": "/", "upstream": up.url()}))
        .await;
    app.settle().await;
    let gw = app.gw_addr();
    for path in [
        "/admin/x",
        "/public/%2e%2e/admin/x",
        "/public/%2E%2E/admin/x",
        "/x/../admin/x",
        "/./admin",
        "//admin",
        "/%61dmin",
        "/%41dmin/../admin",
    ] {
        let r = send_raw(gw, &get(path, "a.test")).await;
        assert_eq!(r.status, 403, "GET {path} must select the admin route");
        // Requests with a body take hyper's path through the gateway: same rule.
        let r = send_raw(gw, &post(path, "a.test", "hi")).await;
        assert_eq!(r.status, 403, "POST {path} must select the admin route");
    }
    // An encoded '/' is refused rather than forwarded as a segment the upstream may split.
    for path in [
        "/x%2f..%2fadmin",
        "/x%2F..%2Fadmin",
        "/x%5c..%5cadmin",
        "/x%00",
        "/x%zz",
        "/../admin",
        "/x/../../admin",
        "/%2e%2e/admin",
    ] {
        let r = send_raw(gw, &get(path, "a.test")).await;
        assert_eq!(r.status, 400, "GET {path}: {}", r.head);
        assert_eq!(r.json()["code"], "BAD_REQUEST");
        assert!(
            r.header("connection").is_some_and(|v| v == "close"),
            "{}",
            r.head
        );
    }
    // The upstream gets the canonical path, the query as sent.
    for (path, forwarded) in [
        (
            "/public/%7euser/a%20b?q=%2e%2e/x",
            "/public/~user/a%20b?q=%2e%2e/x",
        ),
        ("/a//b/./c/../d", "/a/b/d"),
        ("/files/%c3%a9", "/files/%C3%A9"),
    ] {
        let r = send_raw(gw, &get(path, "a.test")).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.json()["uri"], forwarded, "{path}");
        let r = send_raw(gw, &post(path, "a.test", "body")).await;
        assert_eq!(r.json()["uri"], forwarded, "{path} (with a body)");
        assert_eq!(r.json()["body_len"], 4);
    }
    // A route whose own path is not canonical could never match: refused with the reason.
    let r = app
        .admin(Method::POST, "/api/v1/routes")
        .json(&json!({"id": "odd", "path": "/a/../b", "upstream": up.url()}))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.expect("json");
    assert!(e.to_string().contains("canonical"), "{e}");
}

#[tokio::test]
async fn hosts_are_checked_and_compared_in_one_form() {
    let app = spawn_app().await;
    let admin = upstream::spawn("admin").await;
    let other = upstream::spawn("other").await;
    app.route(
        json!({"id": "admin", "path": "/", "hosts": ["admin.test"], "upstream": admin.url()}),
    )
    .await;
    app.route(json!({"id": "other", "path": "/", "upstream": other.url()}))
        .await;
    app.settle().await;
    let gw = app.gw_addr();
    let server = |r: &Raw| r.json()["server"].as_str().unwrap_or("").to_string();
    for host in [
        "admin.test",
        "admin.test.",
        "ADMIN.Test.",
        "admin.test:8080",
    ] {
        let r = send_raw(gw, &get("/x", host)).await;
        assert_eq!(server(&r), "admin", "Host: {host}");
    }
    // Absolute form routes by its own authority, which Host must agree with.
    let r = send_raw(
        gw,
        b"GET http://admin.test/x HTTP/1.1\r\nHost: admin.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(server(&r), "admin");
    assert_eq!(r.json()["uri"], "/x", "forwarded in origin form");
    for (what, request) in [
        (
            "absolute form naming another host than Host",
            &b"GET http://admin.test/x HTTP/1.1\r\nHost: other.test\r\nConnection: close\r\n\r\n"[..],
        ),
        (
            "HTTP/1.1 without Host",
            b"GET /x HTTP/1.1\r\nConnection: close\r\n\r\n",
        ),
        (
            "absolute form without Host",
            b"GET http://admin.test/x HTTP/1.1\r\nConnection: close\r\n\r\n",
        ),
        (
            "empty Host",
            b"GET /x HTTP/1.1\r\nHost: \r\nConnection: close\r\n\r\n",
        ),
        (
            "two Host headers",
            b"GET /x HTTP/1.1\r\nHost: other.test\r\nHost: admin.test\r\nConnection: close\r\n\r\n",
        ),
        (
            "a Host with a path",
            b"GET /x HTTP/1.1\r\nHost: admin.test/x\r\nConnection: close\r\n\r\n",
        ),
        (
            "a Host with user information",
            b"GET /x HTTP/1.1\r\nHost: me@admin.test\r\nConnection: close\r\n\r\n",
        ),
        (
            "an absolute form with user information",
            b"GET http://me@admin.test/x HTTP/1.1\r\nHost: admin.test\r\nConnection: close\r\n\r\n",
        ),
    ] {
        let r = send_raw(gw, request).await;
        assert_eq!(r.status, 400, "{what}: {}", r.head);
        // The same with a body, through hyper's server.
        let with_body = String::from_utf8_lossy(request)
            .replacen("GET ", "POST ", 1)
            .replacen("\r\n\r\n", "\r\nContent-Length: 2\r\n\r\nhi", 1);
        let r = send_raw(gw, with_body.as_bytes()).await;
        assert_eq!(r.status, 400, "{what} (with a body): {}", r.head);
    }
    // HTTP/1.0 may leave Host out.
    let r = send_raw(gw, b"GET /x HTTP/1.0\r\n\r\n").await;
    assert_eq!(r.status, 200);
    assert_eq!(server(&r), "other");
}

#[tokio::test]
async fn http2_request_bodies_reach_the_upstream() {
    let app = spawn_app().await;
    let up = upstream::spawn("h2").await;
    let c = crate::tls::cert(&["h2.test"], 30);
    assert_eq!(crate::tls::upload(&app, "h2", &c).await.status(), 201);
    app.route(json!({"id": "all", "path": "/", "upstream": up.url()}))
        .await;
    app.settle().await;
    let body = "x".repeat(100_000);
    let gw = app.gw_addr();
    let tls = app
        .running
        .as_ref()
        .expect("running")
        .gateway_tls_addr
        .expect("tls");
    let resolve = format!("h2.test:{}:127.0.0.1", tls.port());
    let cleartext = format!("http://{gw}/upload");
    let secure = format!("https://h2.test:{}/upload", tls.port());
    for args in [
        vec!["--http2-prior-knowledge", cleartext.as_str()],
        vec!["-k", "--http2", "--resolve", &resolve, secure.as_str()],
    ] {
        // `-T -` streams standard input: DATA frames and no content-length.
        let mut child = tokio::process::Command::new("curl")
            .args(["-sS", "-T", "-", "-w", "\n%{http_version}"])
            .args(&args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("curl runs");
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(body.as_bytes()).await.expect("write");
        drop(stdin);
        let out = child.wait_with_output().await.expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (json_text, version) = text.rsplit_once('\n').expect("version line");
        assert_eq!(version, "2", "curl {args:?} spoke HTTP/{version}");
        let v: Value = serde_json::from_str(json_text).unwrap_or_else(|_| panic!("{text}"));
        assert_eq!(v["method"], "PUT");
        assert_eq!(v["body_len"], 100_000, "curl {args:?}: {v}");
        // An HTTP/1.1 upstream gets the unknown-length body chunked.
        assert_eq!(v["headers"]["transfer-encoding"], "chunked", "{v}");
    }
}

#[tokio::test]
async fn content_length_beside_transfer_encoding_never_reaches_the_client() {
    let app = spawn_app().await;
    // Every answer carries both lengths; the chunked body is the real one.
    let (addr, connections) = raw_upstream(|mut s, _| async move {
        while let Some(head) = read_head(&mut s).await {
            if let Some(n) = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|n| n.trim().parse::<usize>().ok())
            {
                let mut body = vec![0u8; n];
                if s.read_exact(&mut body).await.is_err() {
                    return;
                }
            }
            let out = "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\nb\r\nhello world\r\n0\r\n\r\n";
            if s.write_all(out.as_bytes()).await.is_err() {
                return;
            }
        }
    });
    app.route(json!({"id": "all", "path": "/", "upstream": format!("http://{addr}")}))
        .await;
    app.settle().await;
    let gw = app.gw_addr();
    // Bodyless (the gateway's own HTTP/1.1 path) and with a body (hyper's).
    for (n, request) in [
        (1, get("/a", "a.test")),
        (2, post("/b", "a.test", "abc")),
        (3, get("/c", "a.test")),
    ] {
        let r = send_raw(gw, &request).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body, b"hello world", "{}", r.head);
        assert_ne!(
            r.header("content-length").as_deref(),
            Some("3"),
            "{}",
            r.head
        );
        // Never reused: each exchange had its own upstream connection.
        assert_eq!(connections.load(Ordering::SeqCst), n);
    }
    // Over one client connection that first carried a body (hyper's server from then on).
    let mut s = TcpStream::connect(gw).await.expect("connect");
    s.write_all(b"POST /d HTTP/1.1\r\nHost: a.test\r\nContent-Length: 1\r\n\r\nxGET /e HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got))
        .await
        .expect("closed")
        .expect("read");
    let text = String::from_utf8_lossy(&got).to_string();
    assert_eq!(text.matches("hello world").count(), 2, "{text}");
    assert!(
        !text.to_ascii_lowercase().contains("content-length: 3"),
        "{text}"
    );
}

#[tokio::test]
async fn only_idempotent_requests_are_retried_after_reaching_an_upstream() {
    let app = spawn_app().await;
    let a = upstream::spawn("a").await;
    let b = upstream::spawn("b").await;
    for u in [&a, &b] {
        u.status.store(502, Ordering::SeqCst);
    }
    app.post_ok(
        "/api/v1/upstreams",
        json!({"name": "pair", "targets": [{"url": a.url()}, {"url": b.url()}],
               "retries": {"attempts": 1, "on": [502, "timeout", "connect_error"], "budget_percent": 100}}),
    )
    .await;
    app.route(json!({"id": "all", "path": "/", "upstream": "pair"}))
        .await;
    app.settle().await;
    let gw = app.gw_addr();
    let hits = || a.hits.load(Ordering::SeqCst) + b.hits.load(Ordering::SeqCst);
    for method in ["POST", "PATCH"] {
        let before = hits();
        let req = format!(
            "{method} /x HTTP/1.1\r\nHost: a.test\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        let r = send_raw(gw, req.as_bytes()).await;
        assert_eq!(r.status, 502);
        assert_eq!(hits() - before, 1, "{method} answered 502 was sent again");
    }
    for method in ["GET", "PUT", "DELETE"] {
        let before = hits();
        let req = format!(
            "{method} /x HTTP/1.1\r\nHost: a.test\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        let r = send_raw(gw, req.as_bytes()).await;
        assert_eq!(r.status, 502);
        assert_eq!(
            hits() - before,
            2,
            "{method} is retried on the other target"
        );
    }
    // A POST that never reached a target (connection refused) may try the next one.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    app.post_ok(
        "/api/v1/upstreams",
        json!({"name": "half", "targets": [{"url": format!("http://{dead}")}, {"url": b.url()}],
               "retries": {"attempts": 1, "on": ["connect_error"], "budget_percent": 100}}),
    )
    .await;
    app.route(json!({"id": "half", "path": "/half", "upstream": "half"}))
        .await;
    app.settle().await;
    b.status.store(200, Ordering::SeqCst);
    for _ in 0..4 {
        let r = send_raw(gw, &post("/half", "a.test", "")).await;
        assert_eq!(r.status, 200, "{}", r.head);
    }
}

#[tokio::test]
async fn only_allowed_upgrades_are_tunnelled() {
    let app = spawn_app().await;
    let up = upstream::spawn("up").await;
    app.route(json!({"id": "ws", "path": "/", "upstream": up.url()}))
        .await;
    app.route(json!({"id": "foo", "path": "/foo", "upstream": up.url(), "upgrades": ["foo"], "strip_path": true}))
        .await;
    app.route(json!({"id": "nows", "path": "/nows", "upstream": up.url(), "websocket": false, "strip_path": true}))
        .await;
    app.settle().await;
    let gw = app.gw_addr();
    let upgrade = |path: &str, proto: &str| {
        format!("GET {path} HTTP/1.1\r\nHost: a.test\r\nUpgrade: {proto}\r\nConnection: Upgrade, HTTP2-Settings, close\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n").into_bytes()
    };
    // An upgrade the route does not allow goes upstream as a plain request.
    for (path, proto) in [("/plain", "h2c"), ("/nows/plain", "websocket")] {
        let r = send_raw(gw, &upgrade(path, proto)).await;
        assert_eq!(r.status, 200, "{path}: {}", r.head);
        let headers = &r.json()["headers"];
        assert!(headers.get("upgrade").is_none(), "{headers}");
        assert!(headers.get("http2-settings").is_none(), "{headers}");
    }
    // The test upstream switches `/ws` to WebSocket whatever was asked: a 101 nobody
    // asked for, or to another protocol than asked, is a bad gateway.
    for (path, proto) in [("/ws", "h2c"), ("/foo/ws", "foo")] {
        let r = send_raw(gw, &upgrade(path, proto)).await;
        assert_eq!(r.status, 502, "{path} with Upgrade: {proto}: {}", r.head);
    }
    // WebSocket itself still switches.
    let mut s = TcpStream::connect(gw).await.expect("connect");
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: a.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    )
    .await
    .expect("write");
    let head = read_head(&mut s).await.expect("head");
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s.write_all(b"ping").await.expect("write");
    let mut echo = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut echo))
        .await
        .expect("echo in time")
        .expect("echo");
    assert_eq!(&echo, b"ping");
}

#[tokio::test]
async fn request_lines_the_gateway_does_not_route_are_refused() {
    let app = spawn_app().await;
    let up = upstream::spawn("up").await;
    app.route(json!({"id": "all", "path": "/", "upstream": up.url()}))
        .await;
    app.settle().await;
    let gw = app.gw_addr();
    for (what, request) in [
        (
            "CONNECT",
            &b"CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\n"[..],
        ),
        ("GET *", b"GET * HTTP/1.1\r\nHost: a.test\r\n\r\n"),
        (
            "a method that is not a token",
            b"G@T / HTTP/1.1\r\nHost: a.test\r\n\r\n",
        ),
        (
            "origin form without '/'",
            b"GET admin HTTP/1.1\r\nHost: a.test\r\n\r\n",
        ),
        (
            "authority form with GET",
            b"GET a.test:80 HTTP/1.1\r\nHost: a.test\r\n\r\n",
        ),
        (
            "a scheme that is not http",
            b"GET ftp://a.test/x HTTP/1.1\r\nHost: a.test\r\n\r\n",
        ),
    ] {
        let before = up.hits.load(Ordering::SeqCst);
        let r = send_raw(gw, request).await;
        assert_eq!(r.status, 400, "{what}: {}", r.head);
        assert_eq!(
            up.hits.load(Ordering::SeqCst),
            before,
            "{what} was forwarded"
        );
    }
    // OPTIONS * asks about the gateway: answered here.
    let before = up.hits.load(Ordering::SeqCst);
    let r = send_raw(
        gw,
        b"OPTIONS * HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(
        r.header("allow").is_some_and(|v| v.contains("GET")),
        "{}",
        r.head
    );
    assert_eq!(up.hits.load(Ordering::SeqCst), before);
    // A client's request id is kept only when it is a sane token.
    for (sent, kept) in [
        ("abc-123_x.y:z", true),
        ("4bf92f3577b34da6a3ce929d0e0e4736", true),
        ("has space", false),
        ("quote\"d", false),
        ("<script>", false),
        (&"a".repeat(200), false),
    ] {
        let req = format!(
            "GET /x HTTP/1.1\r\nHost: a.test\r\nX-Request-Id: {sent}\r\nConnection: close\r\n\r\n"
        );
        let r = send_raw(gw, req.as_bytes()).await;
        let echoed = r.header("x-request-id").expect("x-request-id");
        let upstream_saw = r.json()["headers"]["x-request-id"]
            .as_str()
            .expect("upstream id")
            .to_string();
        assert_eq!(echoed, upstream_saw);
        assert_eq!(echoed == sent, kept, "X-Request-Id: {sent} -> {echoed}");
    }
}

#[tokio::test]
async fn stalled_exchanges_free_both_connections() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = config_in(dir.path());
    config.gateway.client_send_timeout_ms = 500;
    config.gateway.client_body_timeout_ms = 500;
    let app = spawn_with(config, dir).await;

    // 1. An upstream that stops in the middle of its body.
    let stalled_closed = Arc::new(AtomicBool::new(false));
    let flag = stalled_closed.clone();
    let (stalls, _) = raw_upstream(move |mut s, _| {
        let flag = flag.clone();
        async move {
            if read_head(&mut s).await.is_none() {
                return;
            }
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nfirst part")
                .await;
            // Whatever else arrives, the gateway must close this connection.
            let mut sink = [0u8; 1024];
            while let Ok(n) = s.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
            flag.store(true, Ordering::SeqCst);
        }
    });
    app.post_ok(
        "/api/v1/upstreams",
        json!({"name": "stalls", "targets": [{"url": format!("http://{stalls}")}],
               "timeouts": {"read_ms": 300}, "retries": {"attempts": 0}}),
    )
    .await;
    app.route(json!({"id": "stalls", "path": "/stalls", "upstream": "stalls"}))
        .await;

    // 2. An upstream with an endless body, for clients that stop reading.
    let endless_cut = Arc::new(AtomicU64::new(0));
    let cut = endless_cut.clone();
    let (endless, _) = raw_upstream(move |mut s, _| {
        let cut = cut.clone();
        async move {
            if read_head(&mut s).await.is_none() {
                return;
            }
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                .await;
            let chunk = format!("10000\r\n{}\r\n", "y".repeat(0x10000));
            while s.write_all(chunk.as_bytes()).await.is_ok() {}
            cut.fetch_add(1, Ordering::SeqCst);
        }
    });
    app.post_ok(
        "/api/v1/upstreams",
        json!({"name": "endless", "targets": [{"url": format!("http://{endless}")}],
               "retries": {"attempts": 0}}),
    )
    .await;
    app.route(json!({"id": "endless", "path": "/endless", "upstream": "endless"}))
        .await;

    // 3. An upstream that waits for a request body a client never finishes.
    let waiting_closed = Arc::new(AtomicBool::new(false));
    let flag = waiting_closed.clone();
    let (waits, _) = raw_upstream(move |mut s, _| {
        let flag = flag.clone();
        async move {
            let mut sink = [0u8; 1024];
            while let Ok(n) = s.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
            flag.store(true, Ordering::SeqCst);
        }
    });
    app.route(json!({"id": "waits", "path": "/waits", "upstream": format!("http://{waits}")}))
        .await;

    // 4. An upstream that takes the request head and reads nothing more until told:
    // then it drains what it got, and sees the end only if the gateway let go.
    let deaf_closed = Arc::new(AtomicBool::new(false));
    let drain = Arc::new(tokio::sync::Notify::new());
    let (flag, go) = (deaf_closed.clone(), drain.clone());
    let (deaf, _) = raw_upstream(move |mut s, _| {
        let (flag, go) = (flag.clone(), go.clone());
        async move {
            if read_head(&mut s).await.is_none() {
                return;
            }
            go.notified().await;
            let mut sink = vec![0u8; 1 << 16];
            while let Ok(n) = s.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
            flag.store(true, Ordering::SeqCst);
        }
    });
    app.post_ok(
        "/api/v1/upstreams",
        json!({"name": "deaf", "targets": [{"url": format!("http://{deaf}")}],
               "timeouts": {"send_ms": 300}, "retries": {"attempts": 0}}),
    )
    .await;
    app.route(json!({"id": "deaf", "path": "/deaf", "upstream": "deaf"}))
        .await;
    app.settle().await;
    let gw = app.gw_addr();

    // 1: the client gets what came, then the connection closes; so does the upstream's.
    let r = send_raw(gw, &get("/stalls", "a.test")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"first part");
    wait_for(
        "the stalled upstream's connection was never closed",
        &stalled_closed,
    )
    .await;

    // 2: a client that reads nothing, on the gateway's HTTP/1.1 path and on hyper's.
    for (n, request) in [
        (1, get("/endless", "a.test")),
        (2, post("/endless", "a.test", "hi")),
    ] {
        let mut s = TcpStream::connect(gw).await.expect("connect");
        s.write_all(&request).await.expect("write");
        let deadline = Instant::now() + Duration::from_secs(15);
        while endless_cut.load(Ordering::SeqCst) < n {
            assert!(
                Instant::now() < deadline,
                "the upstream kept sending to a client that reads nothing"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        drop(s);
    }

    // 3: a client that stops sending its body.
    let mut s = TcpStream::connect(gw).await.expect("connect");
    s.write_all(b"POST /waits HTTP/1.1\r\nHost: a.test\r\nContent-Length: 100\r\n\r\nonly ten b")
        .await
        .expect("write");
    wait_for(
        "the upstream connection of a stalled request body was never closed",
        &waiting_closed,
    )
    .await;
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got))
        .await
        .expect("the client connection is closed too")
        .ok();

    // 4: an upstream that stops reading the request body is cut after its send
    // timeout, and the client is answered and let go.
    let len: usize = 256 << 20;
    let s = TcpStream::connect(gw).await.expect("connect");
    let (mut rd, mut wr) = s.into_split();
    let writer = tokio::spawn(async move {
        let head = format!("POST /deaf HTTP/1.1\r\nHost: a.test\r\nContent-Length: {len}\r\n\r\n");
        wr.write_all(head.as_bytes()).await?;
        let chunk = vec![b'z'; 1 << 20];
        for _ in 0..(len >> 20) {
            wr.write_all(&chunk).await?;
        }
        Ok::<_, std::io::Error>(())
    });
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(15), rd.read_to_end(&mut got))
        .await
        .expect("the gateway answers and closes the client connection")
        .ok();
    let head = String::from_utf8_lossy(&got).to_string();
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    drain.notify_one();
    wait_for(
        "the upstream connection that stopped reading was never closed",
        &deaf_closed,
    )
    .await;
    writer.abort();
}

#[tokio::test]
async fn preflights_cookies_forwarded_for_and_get_bodies() {
    let app = spawn_app().await;
    let up = upstream::spawn("up").await;
    app.route(
        json!({"id": "get-only", "path": "/get-only", "upstream": up.url(), "methods": ["GET"]}),
    )
    .await;
    app.route(json!({"id": "cors", "path": "/cors", "upstream": up.url(), "methods": ["GET"], "cors": {}}))
        .await;
    app.route(json!({"id": "all", "path": "/", "upstream": up.url(), "methods": ["GET", "POST"]}))
        .await;
    app.settle().await;
    let gw = app.gw_addr();

    // A preflight is answered by a route with CORS; any other sees an OPTIONS,
    // which no route here allows.
    let preflight = |path: &str| {
        format!("OPTIONS {path} HTTP/1.1\r\nHost: a.test\r\nOrigin: https://o.test\r\nAccess-Control-Request-Method: GET\r\nConnection: close\r\n\r\n").into_bytes()
    };
    let before = up.hits.load(Ordering::SeqCst);
    let r = send_raw(gw, &preflight("/get-only/x")).await;
    assert_eq!(r.status, 405, "{}", r.head);
    let r = send_raw(gw, &preflight("/cors/x")).await;
    assert_eq!(r.status, 204, "{}", r.head);
    assert!(r.header("access-control-allow-origin").is_some());
    assert_eq!(
        up.hits.load(Ordering::SeqCst),
        before,
        "no preflight forwarded"
    );

    // Every X-Forwarded-For line is kept, in order, before the client's address;
    // bodyless (written by the gateway) and with a body (through hyper).
    for request in [
        &b"GET /x HTTP/1.1\r\nHost: a.test\r\nX-Forwarded-For: 1.1.1.1\r\nX-Forwarded-For: 2.2.2.2, 3.3.3.3\r\nConnection: close\r\n\r\n"[..],
        b"POST /x HTTP/1.1\r\nHost: a.test\r\nX-Forwarded-For: 1.1.1.1\r\nX-Forwarded-For: 2.2.2.2, 3.3.3.3\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx",
    ] {
        let r = send_raw(gw, request).await;
        assert_eq!(
            r.json()["headers"]["x-forwarded-for"],
            "1.1.1.1, 2.2.2.2, 3.3.3.3, 127.0.0.1"
        );
    }

    // A GET with a chunked body goes upstream with its body.
    let r = send_raw(gw, b"GET /x HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["method"], "GET");
    assert_eq!(r.json()["body_len"], 11);

    // HTTP/2 cookie fields become one `Cookie` line for an HTTP/1.1 upstream.
    let tcp = TcpStream::connect(gw).await.expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("h2c");
    tokio::spawn(conn);
    for with_body in [false, true] {
        let body = if with_body { "data" } else { "" };
        let req = hyper::Request::builder()
            .method(if with_body { "POST" } else { "GET" })
            .uri(format!("http://a.test/cookies/{with_body}"))
            .header("cookie", "a=1")
            .header("cookie", "b=2")
            .header("cookie", "c=3")
            .body(Full::new(Bytes::from(body)))
            .expect("request");
        let resp = sender.send_request(req).await.expect("response");
        assert_eq!(resp.status(), 200);
        let v: Value =
            serde_json::from_slice(&resp.into_body().collect().await.expect("body").to_bytes())
                .expect("json");
        assert_eq!(v["headers"]["cookie"], "a=1; b=2; c=3", "{v}");
    }
}

#[tokio::test]
async fn rate_limit_counters_survive_a_configuration_change() {
    // Windows are aligned to the clock: start with at least 30 s of this window
    // left, so that the counts below are not reset by the next one.
    const WINDOW_MS: u64 = 600_000;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    let left = WINDOW_MS - now % WINDOW_MS;
    if left < 30_000 {
        tokio::time::sleep(Duration::from_millis(left + 100)).await;
    }
    let app = spawn_app().await;
    let up = upstream::spawn("up").await;
    app.route(
        json!({"id": "limited", "path": "/limited", "upstream": up.url(),
                     "rate_limit": {"max": 3, "window_ms": WINDOW_MS}}),
    )
    .await;
    app.settle().await;
    let gw = app.gw_addr();
    for _ in 0..3 {
        assert_eq!(send_raw(gw, &get("/limited", "a.test")).await.status, 200);
    }
    // Another route changes the revision; the limited route's counters stay.
    app.route(json!({"id": "other", "path": "/other", "upstream": up.url()}))
        .await;
    app.settle().await;
    let r = send_raw(gw, &get("/limited", "a.test")).await;
    assert_eq!(r.status, 429, "a configuration change reset the limit");
    // Changing the limit itself starts it afresh.
    let r = app
        .admin(Method::PUT, "/api/v1/routes/limited")
        .json(
            &json!({"id": "limited", "path": "/limited", "upstream": up.url(),
                      "rate_limit": {"max": 5, "window_ms": WINDOW_MS}}),
        )
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 200);
    app.settle().await;
    assert_eq!(send_raw(gw, &get("/limited", "a.test")).await.status, 200);
}
