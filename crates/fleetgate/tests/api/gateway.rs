//! The gateway end to end: configured through the API, traffic through the real
//! listener to real upstreams on loopback.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};

use crate::support::{expect_error, spawn_app, TestApp};
use crate::upstream;

impl TestApp {
    pub fn gw(&self, path: &str) -> String {
        format!("http://{}{}", self.gateway.expect("gateway"), path)
    }

    pub async fn post_ok(&self, path: &str, body: Value) -> Value {
        let r = self
            .admin(Method::POST, path)
            .json(&body)
            .send()
            .await
            .expect("post");
        let status = r.status();
        let v: Value = r.json().await.expect("json");
        assert_eq!(status, StatusCode::CREATED, "POST {path}: {v}");
        v
    }

    /// Waits until the built-in gateway serves the newest revision.
    pub async fn settle(&self) {
        let state = &self.running.as_ref().expect("running").state;
        let want = state.subscribe().borrow().revision;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let served = self.get_json("/health").await["gateway_revision"].as_u64();
            if served == Some(want) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "gateway never reached revision {want} (serves {served:?})"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn client() -> Client {
    Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client")
}

#[tokio::test]
async fn proxies_with_strip_path_forwarded_headers_and_header_rules() {
    let app = spawn_app().await;
    let up = upstream::spawn("one").await;
    app.post_ok(
        "/api/v1/upstreams",
        json!({"name": "svc", "targets": [{"url": up.url()}]}),
    )
    .await;
    app.post_ok(
        "/api/v1/routes",
        json!({
            "id": "api", "path": "/api", "upstream": "svc", "stripPath": true,
            "requestHeaders": {"set": {"x-added": "yes"}, "remove": ["x-secret"]},
            "response_headers": {"set": {"x-served-by": "fleetgate"}, "remove": ["x-upstream"]}
        }),
    )
    .await;
    app.settle().await;
    let r = client()
        .get(app.gw("/api/users/7?q=1"))
        .header("x-secret", "s")
        .header("x-request-id", "trace-1")
        .header("x-forwarded-for", "10.9.9.9")
        .send()
        .await
        .expect("proxied");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["x-served-by"], "fleetgate");
    assert!(!r.headers().contains_key("x-upstream"));
    assert!(
        !r.headers().contains_key("keep-alive"),
        "hop-by-hop headers are not passed on"
    );
    assert_eq!(r.headers()["x-request-id"], "trace-1");
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["uri"], "/users/7?q=1");
    let h = &body["headers"];
    assert_eq!(h["x-added"], "yes");
    assert!(h.get("x-secret").is_none());
    assert_eq!(h["x-request-id"], "trace-1");
    assert_eq!(h["x-forwarded-for"], "10.9.9.9, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert!(h["forwarded"]
        .as_str()
        .expect("forwarded")
        .contains("for=127.0.0.1"));
    assert_eq!(h["host"], up.addr.to_string());

    // Without strip_path the path goes through whole; a missing route is a JSON 404.
    let r = client()
        .get(app.gw("/nothing/here"))
        .send()
        .await
        .expect("req");
    let e = expect_error(r, StatusCode::NOT_FOUND, "ROUTE_NOT_FOUND").await;
    assert!(e["details"]["revision"].as_u64().is_some());
    app.stop().await;
}

#[tokio::test]
async fn route_validation_names_the_field() {
    let app = spawn_app().await;
    app.post_ok(
        "/api/v1/upstreams",
        json!({"name": "svc", "targets": [{"url": "http://127.0.0.1:9"}]}),
    )
    .await;
    app.post_ok(
        "/api/v1/routes",
        json!({"id": "a", "path": "/a", "upstream": "svc"}),
    )
    .await;
    for (body, field) in [
        (json!({"path": "/x", "upstream": "nope"}), "upstream"),
        (
            json!({"path": "(", "match": "regex", "upstream": "svc"}),
            "path",
        ),
        (json!({"path": "/a", "upstream": "svc"}), "path"),
        (
            json!({"path": "/b", "upstream": "svc", "ip_allow": ["10.0.0.0/40"]}),
            "ip_allow[0]",
        ),
        (
            json!({"path": "/b", "upstream": "svc", "rateLimit": {"max": 0, "windowMs": 1000}}),
            "rate_limit.max",
        ),
        (
            json!({"path": "/b", "upstream": "svc", "methods": ["BREW"]}),
            "methods[0]",
        ),
        (
            json!({"path": "/b", "upstream": "svc", "bogus": 1}),
            "bogus",
        ),
    ] {
        let r = app
            .admin(Method::POST, "/api/v1/routes")
            .json(&body)
            .send()
            .await
            .expect("post");
        let e = expect_error(r, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await;
        assert_eq!(e["details"]["field"], field, "{body}: {e}");
    }
    let r = app
        .admin(Method::POST, "/api/v1/upstreams")
        .json(&json!({"name": "bad", "targets": [{"url": "ftp://x"}]}))
        .send()
        .await
        .expect("post");
    let e = expect_error(r, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await;
    assert_eq!(e["details"]["field"], "targets[0].url");
    let r = app
        .admin(Method::DELETE, "/api/v1/upstreams/svc")
        .send()
        .await
        .expect("delete");
    expect_error(r, StatusCode::CONFLICT, "CONFLICT").await;
    // Routes and upstreams are revisions and part of the exported document.
    let doc = app.get_json("/api/v1/export").await;
    assert_eq!(doc["routes"][0]["id"], "a");
    assert_eq!(doc["upstreams"][0]["name"], "svc");
    assert_eq!(app.get_json("/api/v1/revisions").await["total"], 2);
    app.stop().await;
}

async fn distribution(app: &TestApp, path: &str, n: usize) -> HashMap<String, usize> {
    let c = Client::new();
    let mut seen = HashMap::new();
    for _ in 0..n {
        let r = c.get(app.gw(path)).send().await.expect("req");
        assert_eq!(r.status(), StatusCode::OK);
        let v: Value = r.json().await.expect("json");
        *seen
            .entry(v["server"].as_str().expect("server").to_string())
            .or_insert(0) += 1;
    }
    seen
}

#[tokio::test]
async fn load_balancing_round_robin_weighted_and_consistent_hash() {
    let app = spawn_app().await;
    let ups = [
        upstream::spawn("a").await,
        upstream::spawn("b").await,
        upstream::spawn("c").await,
    ];
    let targets: Vec<Value> = ups.iter().map(|u| json!({"url": u.url()})).collect();
    app.post_ok(
        "/api/v1/upstreams",
        json!({"name": "rr", "targets": targets}),
    )
    .await;
    let weighted: Vec<Value> = ups
        .iter()
        .zip([1, 2, 3])
        .map(|(u, w)| json!({"url": u.url(), "weight": w}))
        .collect();
    app.post_ok(
        "/api/v1/upstreams",
        json!({"name": "wt", "targets": weighted, "load_balancing": "weighted"}),
    )
    .await;
    app.post_ok("/api/v1/upstreams", json!({"name": "ch", "targets": targets, "load_balancing": "consistent_hash", "hash_on": "header:x-user"})).await;
    app.post_ok(
        "/api/v1/upstreams",
        json!({"name": "lc", "targets": targets, "loadBalancing": "least-connections"}),
    )
    .await;
    for (id, up) in [("rr", "rr"), ("wt", "wt"), ("ch", "ch"), ("lc", "lc")] {
        app.post_ok(
            "/api/v1/routes",
            json!({"id": id, "path": format!("/{id}"), "upstream": up}),
        )
        .await;
    }
    app.settle().await;
    let rr = distribution(&app, "/rr", 30).await;
    assert_eq!(
        rr.values().copied().collect::<Vec<_>>(),
        vec![10, 10, 10],
        "{rr:?}"
    );
    let wt = distribution(&app, "/wt", 60).await;
    assert_eq!((wt["a"], wt["b"], wt["c"]), (10, 20, 30), "{wt:?}");
    let lc = distribution(&app, "/lc", 30).await;
    assert_eq!(lc.len(), 3, "idle targets all get traffic: {lc:?}");
    let c = Client::new();
    let mut owners = HashMap::new();
    for user in 0..20 {
        let mut first = None;
        for _ in 0..3 {
            let v: Value = c
                .get(app.gw("/ch"))
                .header("x-user", format!("u{user}"))
                .send()
                .await
                .expect("req")
                .json()
                .await
                .expect("json");
            let s = v["server"].as_str().expect("server").to_string();
            assert!(
                first.as_ref().is_none_or(|f| *f == s),
                "user {user} moved between targets"
            );
            first = Some(s);
        }
        *owners.entry(first.expect("owner")).or_insert(0) += 1;
    }
    assert!(owners.len() >= 2, "20 users should spread: {owners:?}");
    app.stop().await;
}

#[tokio::test]
async fn failover_and_passive_ejection_when_a_target_dies() {
    let app = spawn_app().await;
    let (a, b) = (upstream::spawn("a").await, upstream::spawn("b").await);
    app.post_ok(
        "/api/v1/upstreams",
        json!({"name": "svc", "targets": [{"url": a.url()}, {"url": b.url()}],
               "health_check": {"passive": {"max_failures": 2, "eject_ms": 60000}},
               "circuit_breaker": {"enabled": false}}),
    )
    .await;
    app.post_ok(
        "/api/v1/routes",
        json!({"id": "r", "path": "/", "upstream": "svc"}),
    )
    .await;
    app.settle().await;
    a.kill();
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Every request still succeeds: connect errors are retried on the other target.
    let seen = distribution(&app, "/x", 20).await;
    assert_eq!(seen.get("b"), Some(&20), "{seen:?}");
    let health: Value = app.get_json("/api/v1/upstreams/svc/health").await;
    let dead = health
        .as_array()
        .expect("targets")
        .iter()
        .find(|t| t["url"] == a.url().as_str())
        .expect("a")
        .clone();
    assert_eq!(dead["state"], "ejected", "{health}");
    assert!(dead["last_error"].is_string());
    // POST bodies are not replayed, but an ejected target gets no traffic at all.
    let r = Client::new()
        .post(app.gw("/x"))
        .body("payload")
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), StatusCode::OK);
    app.stop().await;
}

#[tokio::test]
async fn active_health_checks_eject_and_restore_targets() {
    let app = spawn_app().await;
    let (a, b) = (upstream::spawn("a").await, upstream::spawn("b").await);
    app.post_ok(
        "/api/v1/upstreams",
        json!({"name": "svc", "targets": [{"url": a.url()}, {"url": b.url()}],
               "health_check": {"active": {"path": "/health", "interval_ms": 100, "timeout_ms": 500, "healthy_threshold": 2, "unhealthy_threshold": 2}}}),
    )
    .await;
    app.post_ok(
        "/api/v1/routes",
        json!({"id": "r", "path": "/", "upstream": "svc"}),
    )
    .await;
    app.settle().await;
    a.healthy.store(false, Ordering::Relaxed);
    let state_of = |h: &Value, url: &str| {
        h.as_array()
            .expect("targets")
            .iter()
            .find(|t| t["url"] == url)
            .expect("target")["state"]
            .clone()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let h = app.get_json("/api/v1/upstreams/svc/health").await;
        if state_of(&h, &a.url()) == "unhealthy" {
            assert!(h[0]["last_check"].is_string());
            break;
        }
        assert!(Instant::now() < deadline, "a never became unhealthy: {h}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seen = distribution(&app, "/", 10).await;
    assert_eq!(seen.get("b"), Some(&10), "{seen:?}");
    a.healthy.store(true, Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let h = app.get_json("/api/v1/upstreams/svc/health").await;
        if state_of(&h, &a.url()) == "healthy" {
            break;
        }
        assert!(Instant::now() < deadline, "a never came back: {h}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seen = distribution(&app, "/", 10).await;
    assert_eq!(seen.get("a"), Some(&5), "{seen:?}");
    app.stop().await;
}

/// An upstream `svc` without retries whose breaker stays open `open_ms`, behind route
/// `r` at `/`, served by the gateway.
pub async fn breaker_setup(app: &TestApp, open_ms: u64) -> upstream::Upstream {
    let up = upstream::spawn("flaky").await;
    app.post_ok(
        "/api/v1/upstreams",
        json!({"name": "svc", "targets": [{"url": up.url()}], "retries": {"attempts": 0},
               "circuit_breaker": {"open_ms": open_ms}}),
    )
    .await;
    app.post_ok(
        "/api/v1/routes",
        json!({"id": "r", "path": "/", "upstream": "svc"}),
    )
    .await;
    app.settle().await;
    up
}

#[tokio::test]
async fn circuit_breaker_opens_half_opens_and_closes_with_exact_counts() {
    let app = spawn_app().await;
    let up = breaker_setup(&app, 700).await;
    let c = Client::new();
    // 5 successes then 5 failures: the 10th request makes 50% of 10 and opens it.
    for i in 0..10 {
        up.status
            .store(if i < 5 { 200 } else { 500 }, Ordering::Relaxed);
        let r = c.get(app.gw("/x")).send().await.expect("req");
        assert_eq!(
            r.status().as_u16(),
            if i < 5 { 200 } else { 500 },
            "request {i}"
        );
    }
    let hits_when_open = up.hits.load(Ordering::Relaxed);
    let r = c.get(app.gw("/x")).send().await.expect("req");
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let retry_after: u64 = r.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("secs");
    assert_eq!(retry_after, 1);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["code"], "CIRCUIT_OPEN");
    assert_eq!(body["retryAfter"], 1);
    assert_eq!(
        up.hits.load(Ordering::Relaxed),
        hits_when_open,
        "an open breaker sends nothing upstream"
    );
    let breakers = app.get_json("/api/v1/circuit-breakers").await;
    assert_eq!(breakers[0]["state"], "open");
    assert!(breakers[0]["next_trial_at"].is_string());
    // It reports the window that opened it, not its own empty one.
    assert!(
        breakers[0]["failure_rate"]
            .as_f64()
            .is_some_and(|r| r >= 0.5)
            && breakers[0]["requests_in_window"]
                .as_u64()
                .is_some_and(|n| n >= 10),
        "{breakers}"
    );

    // After open_ms: three trials go through; all succeed, so it closes.
    up.status.store(200, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(800)).await;
    for _ in 0..3 {
        assert_eq!(
            c.get(app.gw("/x")).send().await.expect("req").status(),
            StatusCode::OK
        );
    }
    assert_eq!(
        app.get_json("/api/v1/circuit-breakers").await[0]["state"],
        "closed"
    );

    // Open it again, then fail the first trial: it reopens.
    up.status.store(500, Ordering::Relaxed);
    for _ in 0..10 {
        c.get(app.gw("/x")).send().await.expect("req");
    }
    assert_eq!(
        app.get_json("/api/v1/circuit-breakers").await[0]["state"],
        "open"
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        c.get(app.gw("/x"))
            .send()
            .await
            .expect("req")
            .status()
            .as_u16(),
        500
    );
    assert_eq!(
        app.get_json("/api/v1/circuit-breakers").await[0]["state"],
        "open"
    );
    let metrics = app
        .admin(Method::GET, "/prometheus/metrics")
        .send()
        .await
        .expect("req")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("fleetgate_upstream_breaker_rejections_total{upstream=\"svc\"} 1"),
        "{metrics}"
    );
    app.stop().await;
}

#[tokio::test]
async fn rate_limit_headers_and_429() {
    let app = spawn_app().await;
    let up = upstream::spawn("u").await;
    app.post_ok(
        "/api/v1/routes",
        json!({"id": "limited", "path": "/", "upstream": up.url(),
               "rateLimit": {"max": 3, "windowMs": 60000, "message": "slow down"}}),
    )
    .await;
    app.settle().await;
    let c = Client::new();
    for expected in [2, 1, 0] {
        let r = c.get(app.gw("/")).send().await.expect("req");
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["x-ratelimit-limit"], "3");
        assert_eq!(
            r.headers()["x-ratelimit-remaining"],
            expected.to_string().as_str()
        );
        assert!(
            r.headers()["x-ratelimit-reset"]
                .to_str()
                .expect("ascii")
                .parse::<u64>()
                .expect("epoch")
                > 1_700_000_000
        );
    }
    let r = c.get(app.gw("/")).send().await.expect("req");
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(r.headers()["x-ratelimit-remaining"], "0");
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["error"], "slow down");
    assert_eq!(up.hits.load(Ordering::Relaxed), 3);
    app.stop().await;
}

#[tokio::test]
async fn ip_rules_cors_methods_and_body_limits() {
    let app = spawn_app().await;
    let up = upstream::spawn("u").await;
    app.post_ok(
        "/api/v1/routes",
        json!({"id": "deny", "path": "/deny", "upstream": up.url(), "ip_deny": ["127.0.0.0/8"]}),
    )
    .await;
    app.post_ok(
        "/api/v1/routes",
        json!({"id": "allow", "path": "/allow", "upstream": up.url(), "ip_allow": ["10.0.0.0/8"]}),
    )
    .await;
    app.post_ok(
        "/api/v1/routes",
        json!({"id": "cors", "path": "/cors", "upstream": up.url(), "methods": ["GET", "PUT"], "max_body_bytes": 10,
               "cors": {"allow_origins": ["https://app.example"], "allow_methods": ["GET", "PUT"]}}),
    )
    .await;
    app.settle().await;
    let c = Client::new();
    for p in ["/deny", "/allow"] {
        let r = c.get(app.gw(p)).send().await.expect("req");
        expect_error(r, StatusCode::FORBIDDEN, "IP_FORBIDDEN").await;
    }
    let r = c
        .request(Method::OPTIONS, app.gw("/cors"))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "PUT")
        .send()
        .await
        .expect("preflight");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    assert_eq!(r.headers()["access-control-allow-methods"], "GET, PUT");
    let r = c
        .get(app.gw("/cors"))
        .header("origin", "https://app.example")
        .send()
        .await
        .expect("req");
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let r = c
        .get(app.gw("/cors"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .expect("req");
    assert!(!r.headers().contains_key("access-control-allow-origin"));
    let r = c.delete(app.gw("/cors")).send().await.expect("req");
    expect_error(r, StatusCode::METHOD_NOT_ALLOWED, "METHOD_NOT_ALLOWED").await;
    let r = c
        .put(app.gw("/cors"))
        .body("this is longer than ten bytes")
        .send()
        .await
        .expect("req");
    expect_error(r, StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE").await;
    let r = c
        .put(app.gw("/cors"))
        .body("short")
        .send()
        .await
        .expect("req");
    assert_eq!(r.status(), StatusCode::OK);
    app.stop().await;
}

#[tokio::test]
async fn websocket_upgrade_passes_through() {
    let app = spawn_app().await;
    let up = upstream::spawn("ws").await;
    app.post_ok(
        "/api/v1/routes",
        json!({"id": "ws", "path": "/ws", "upstream": up.url()}),
    )
    .await;
    app.settle().await;
    let gw = app.gateway.expect("gateway");
    let echoed = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(gw).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").expect("write");
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut byte).expect("read head");
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).to_string();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        let mut out = Vec::new();
        for msg in [&b"hello"[..], b" through the gateway"] {
            s.write_all(msg).expect("write frame");
            let mut buf = vec![0u8; msg.len()];
            s.read_exact(&mut buf).expect("echo");
            out.extend_from_slice(&buf);
        }
        String::from_utf8(out).expect("utf8")
    })
    .await
    .expect("ws task");
    assert_eq!(echoed, "hello through the gateway");
    app.stop().await;
}

#[tokio::test]
async fn config_changes_under_load_drop_nothing() {
    let app = spawn_app().await;
    let r = app
        .admin(Method::PUT, "/api/v1/settings")
        .json(&json!({"api": {"rate_limit_per_minute": 0}}))
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), StatusCode::OK);
    let (a, b) = (upstream::spawn("a").await, upstream::spawn("b").await);
    app.post_ok(
        "/api/v1/upstreams",
        json!({"name": "svc", "targets": [{"url": a.url()}, {"url": b.url()}]}),
    )
    .await;
    app.post_ok(
        "/api/v1/routes",
        json!({"id": "main", "path": "/", "upstream": "svc"}),
    )
    .await;
    app.settle().await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let loaders: Vec<_> = (0..4)
        .map(|_| {
            let url = app.gw("/load");
            let stop = stop.clone();
            tokio::spawn(async move {
                let c = Client::new();
                let (mut ok, mut failed) = (0u32, Vec::new());
                while !stop.load(Ordering::Relaxed) && ok < 100_000 {
                    match c.get(&url).send().await {
                        Ok(r) if r.status() == StatusCode::OK => ok += 1,
                        Ok(r) => failed.push(r.status().to_string()),
                        Err(e) => failed.push(e.to_string()),
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    for i in 0..100 {
        let body =
            json!({"id": format!("extra-{i}"), "path": format!("/extra/{i}"), "upstream": "svc"});
        let r = app
            .admin(Method::POST, "/api/v1/routes")
            .json(&body)
            .send()
            .await
            .expect("change");
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    app.settle().await;
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for l in loaders {
        let (ok, failed) = l.await.expect("loader");
        assert!(
            failed.is_empty(),
            "failed requests during config changes: {failed:?}"
        );
        total += ok;
    }
    assert!(total > 100, "the load loop ran ({total} requests)");
    app.stop().await;
}

#[tokio::test]
async fn malformed_requests_get_4xx_and_the_gateway_survives() {
    let app = spawn_app().await;
    let gw = app.gateway.expect("gateway");
    let exchange = move |raw: Vec<u8>| -> String {
        let mut s = std::net::TcpStream::connect(gw).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let _ = s.write_all(&raw);
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        String::from_utf8_lossy(&out).to_string()
    };
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"NOT A REQUEST\r\n\r\n".to_vec(), "HTTP/1.1 400"),
        (format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(100_000)).into_bytes(), "HTTP/1.1 431"),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nbad\r\n0\r\n\r\n".to_vec(), ""),
    ];
    for (raw, expect) in cases {
        let out = tokio::task::spawn_blocking(move || exchange(raw))
            .await
            .expect("task");
        assert!(out.starts_with(expect), "expected {expect:?}, got {out:?}");
    }
    let r = Client::new()
        .get(app.gw("/after"))
        .send()
        .await
        .expect("still serving");
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    app.stop().await;
}

#[tokio::test]
async fn troubleshooting_probes_upstreams_and_reports() {
    let app = spawn_app().await;
    // The probes below go to 127.0.0.1, which the destination policy refuses
    // without this opt-in (see hardening::test_upstream_applies_the_destination_policy).
    let r = app
        .admin(Method::PUT, "/api/v1/settings")
        .json(&json!({"webhooks": {"allow_private_targets": true}}))
        .send()
        .await
        .expect("settings");
    assert_eq!(r.status(), StatusCode::OK);
    let up = upstream::spawn("t").await;
    let probe = |url: String| {
        app.admin(Method::POST, "/api/v1/troubleshooting/test-upstream")
            .json(&json!({"url": url, "timeout_ms": 2000}))
            .send()
    };
    let r: Value = probe(format!("{}/health", up.url()))
        .await
        .expect("probe")
        .json()
        .await
        .expect("json");
    assert_eq!(r["reachable"], true, "{r}");
    assert_eq!(r["dns"]["status"], "ok");
    assert_eq!(r["connect"]["status"], "ok");
    assert_eq!(r["tls"]["status"], "skipped");
    assert_eq!(r["http"]["details"]["status"], 200);
    assert!(r["total_ms"].as_f64().expect("ms") >= 0.0);
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let r: Value = probe(format!("http://{dead}/"))
        .await
        .expect("probe")
        .json()
        .await
        .expect("json");
    assert_eq!(r["reachable"], false);
    assert_eq!(r["connect"]["status"], "error", "{r}");
    assert_eq!(r["http"]["status"], "skipped");
    let r: Value = probe(format!("https://{}/", up.addr))
        .await
        .expect("probe")
        .json()
        .await
        .expect("json");
    assert_eq!(
        r["tls"]["status"], "error",
        "a plain-HTTP server fails the TLS step: {r}"
    );
    let r: Value = probe("http://no-such-host.invalid/".into())
        .await
        .expect("probe")
        .json()
        .await
        .expect("json");
    assert_eq!(r["dns"]["status"], "error", "{r}");
    let r = probe("ftp://x".into()).await.expect("probe");
    let e = expect_error(r, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await;
    assert_eq!(e["details"]["field"], "url");

    app.post_ok(
        "/api/v1/upstreams",
        json!({"name": "svc", "targets": [{"url": up.url()}], "retries": {"attempts": 0}, "circuit_breaker": {"min_requests": 2}}),
    )
    .await;
    app.post_ok(
        "/api/v1/routes",
        json!({"id": "r", "path": "/", "upstream": "svc"}),
    )
    .await;
    app.settle().await;
    let conns = app.get_json("/api/v1/troubleshooting/connections").await;
    assert_eq!(conns["dependencies"]["store"]["status"], "ok");
    assert_eq!(conns["upstreams"][0]["name"], "svc");
    assert_eq!(conns["upstreams"][0]["targets"][0]["state"], "healthy");
    let report = app.get_json("/api/v1/troubleshooting/health").await;
    assert_eq!(report["status"], "ok", "{report}");
    up.status.store(502, Ordering::Relaxed);
    for _ in 0..2 {
        Client::new().get(app.gw("/")).send().await.expect("req");
    }
    let report = app.get_json("/api/v1/troubleshooting/health").await;
    assert_eq!(report["status"], "degraded", "{report}");
    assert_eq!(report["open_breakers"][0]["upstream"], "svc");
    assert!(report["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .any(|f| f.as_str().expect("text").contains("circuit breaker")));
    app.stop().await;
}

#[tokio::test]
async fn slow_clients_are_cut_off_without_starving_others() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = crate::support::config_in(dir.path());
    config.gateway.header_read_timeout_ms = 500;
    let app = crate::support::spawn_with(config, dir).await;
    let up = upstream::spawn("u").await;
    app.post_ok(
        "/api/v1/routes",
        json!({"id": "r", "path": "/", "upstream": up.url()}),
    )
    .await;
    app.settle().await;
    let gw = app.gateway.expect("gateway");
    // 20 slowloris connections trickle header bytes and never finish.
    let slow: Vec<_> = (0..20)
        .map(|_| {
            tokio::task::spawn_blocking(move || {
                let mut s = std::net::TcpStream::connect(gw).expect("connect");
                s.set_read_timeout(Some(Duration::from_secs(5)))
                    .expect("timeout");
                let started = Instant::now();
                let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n");
                for _ in 0..20 {
                    std::thread::sleep(Duration::from_millis(100));
                    if s.write_all(b"X-Slow: 1\r\n").is_err() {
                        break;
                    }
                }
                let mut buf = Vec::new();
                let _ = s.read_to_end(&mut buf);
                (started.elapsed(), String::from_utf8_lossy(&buf).to_string())
            })
        })
        .collect();
    // Meanwhile ordinary clients are served promptly.
    let c = Client::new();
    for _ in 0..20 {
        let started = Instant::now();
        let r = c.get(app.gw("/ok")).send().await.expect("served");
        assert_eq!(r.status(), StatusCode::OK);
        assert!(started.elapsed() < Duration::from_secs(1));
    }
    for s in slow {
        let (elapsed, out) = s.await.expect("slow client");
        assert!(
            elapsed < Duration::from_millis(1900),
            "a slow client was kept for {elapsed:?}"
        );
        assert!(out.is_empty() || out.starts_with("HTTP/1.1 408"), "{out:?}");
    }
    app.stop().await;
}

#[tokio::test]
async fn upstream_connections_are_kept_alive_and_reused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = crate::support::config_in(dir.path());
    config.gateway.workers = 1;
    let app = crate::support::spawn_with(config, dir).await;
    let up = upstream::spawn("pooled").await;
    app.post_ok(
        "/api/v1/routes",
        json!({"id": "r", "path": "/", "upstream": up.url()}),
    )
    .await;
    app.settle().await;
    let c = Client::new();
    for i in 0..30 {
        let r = if i % 3 == 0 {
            c.post(app.gw("/x"))
                .body(format!("body {i}"))
                .send()
                .await
                .expect("post")
        } else {
            c.get(app.gw("/x")).send().await.expect("get")
        };
        assert_eq!(r.status(), StatusCode::OK);
        let body: Value = r.json().await.expect("json");
        if i % 3 == 0 {
            assert_eq!(body["body_len"], format!("body {i}").len());
        }
    }
    assert_eq!(
        up.connections.load(Ordering::Relaxed),
        1,
        "one keep-alive connection served all 30 requests"
    );
    // HEAD and empty bodies also hand their connection back.
    for _ in 0..5 {
        let r = c.head(app.gw("/x")).send().await.expect("head");
        assert_eq!(r.status(), StatusCode::OK);
    }
    assert_eq!(up.connections.load(Ordering::Relaxed), 1);
    app.stop().await;
}

#[tokio::test]
async fn connections_closed_by_the_upstream_are_not_reused() {
    let app = spawn_app().await;
    let up = upstream::spawn("first").await;
    let addr = up.addr.to_string();
    app.post_ok(
        "/api/v1/routes",
        json!({"id": "r", "path": "/", "upstream": up.url()}),
    )
    .await;
    app.settle().await;
    let c = Client::new();
    assert_eq!(
        c.get(app.gw("/a")).send().await.expect("get").status(),
        StatusCode::OK
    );
    // The target restarts: its pooled connection is now closed.
    up.kill();
    drop(up);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let again = upstream::spawn_on("second", &addr).await;
    let r = c
        .post(app.gw("/b"))
        .body("not replayed, sent once")
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["server"], "second");
    assert_eq!(again.hits.load(Ordering::Relaxed), 1);
    app.stop().await;
}

#[tokio::test]
async fn server_sent_events_stream_through_unbuffered() {
    let app = spawn_app().await;
    let up = upstream::spawn("events").await;
    app.post_ok(
        "/api/v1/routes",
        json!({"id": "sse", "path": "/sse", "upstream": up.url()}),
    )
    .await;
    app.settle().await;
    let mut r = Client::new()
        .get(app.gw("/sse"))
        .send()
        .await
        .expect("stream");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    // The upstream holds its second event until the first has reached the client:
    // a buffering proxy would never deliver the first, and this would time out.
    let first = tokio::time::timeout(Duration::from_secs(10), r.chunk())
        .await
        .expect("first event in time")
        .expect("chunk");
    assert_eq!(first.as_deref(), Some(&b"data: first\n\n"[..]));
    up.release.notify_one();
    let second = tokio::time::timeout(Duration::from_secs(10), r.chunk())
        .await
        .expect("second event")
        .expect("chunk");
    assert_eq!(second.as_deref(), Some(&b"data: second\n\n"[..]));
    app.stop().await;
}

/// A scripted HTTP/1.1 upstream answering each request with canned bytes chosen by
/// its path, to exercise the gateway's own response framing. Returns its address
/// and the number of connections it accepted.
async fn scripted_upstream() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicU64>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let mut chunk = [0u8; 4096];
                    let end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_string();
                    buf.drain(..end);
                    // Read (and drop) a Content-Length body.
                    let body_len = head
                        .lines()
                        .filter_map(|l| l.split_once(':'))
                        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    while buf.len() < body_len {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buf.drain(..body_len);
                    let path = head.split(' ').nth(1).unwrap_or("/").to_string();
                    let (reply, close): (&[u8], bool) = match path.as_str() {
                        "/chunked" => (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nX-Checksum: 1\r\n\r\n", false),
                        "/hints" => (b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal", false),
                        "/named" => (b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Secret\r\nKeep-Alive: timeout=5\r\nX-Secret: 1\r\nX-Public: 2\r\nContent-Length: 2\r\n\r\nok", false),
                        "/until-close" => (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall of this until the end", true),
                        "/garbage" => (b"SMTP ready\r\n\r\n", true),
                        "/silent-close" => (b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nonce", true),
                        "/close-later" => {
                            // Says it closes, but lingers before doing so.
                            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok").await;
                            tokio::time::sleep(Duration::from_millis(500)).await;
                            return;
                        }
                        _ => (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi", false),
                    };
                    if s.write_all(reply).await.is_err() || close {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

#[tokio::test]
async fn upstream_responses_are_framed_and_cleaned_by_the_gateway() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = crate::support::config_in(dir.path());
    config.gateway.workers = 1;
    let app = crate::support::spawn_with(config, dir).await;
    let (addr, accepted) = scripted_upstream().await;
    app.post_ok(
        "/api/v1/routes",
        json!({"id": "s", "path": "/", "upstream": format!("http://{addr}")}),
    )
    .await;
    app.settle().await;
    let c = Client::new();
    let get = |path: &str| c.get(app.gw(path)).send();

    // Chunked with an extension and trailers: decoded, and the connection is reused.
    let r = get("/chunked").await.expect("chunked");
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r
        .headers()
        .get("transfer-encoding")
        .is_none_or(|v| v == "chunked"));
    assert_eq!(r.text().await.expect("body"), "hello, world");
    let r = get("/plain").await.expect("plain");
    assert_eq!(r.text().await.expect("body"), "hi");
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "the chunked response's connection was reused"
    );

    // Informational answers are skipped; the final one is forwarded.
    let r = get("/hints").await.expect("hints");
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers().get("link").is_none());
    assert_eq!(r.text().await.expect("body"), "final");

    // Hop-by-hop response headers, and those named in Connection, stay behind.
    let r = get("/named").await.expect("named");
    assert!(r.headers().get("x-secret").is_none(), "{:?}", r.headers());
    assert!(r.headers().get("keep-alive").is_none());
    assert_eq!(r.headers()["x-public"], "2");
    assert_eq!(r.text().await.expect("body"), "ok");
    assert_eq!(accepted.load(Ordering::SeqCst), 1);

    // A body delimited by the upstream closing: read to the end, connection not reused.
    let r = get("/until-close").await.expect("until close");
    assert_eq!(r.text().await.expect("body"), "all of this until the end");
    assert_eq!(
        get("/plain")
            .await
            .expect("plain")
            .text()
            .await
            .expect("body"),
        "hi"
    );
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        2,
        "a new connection after a close-delimited body"
    );

    // An upstream that closes a keep-alive connection without saying so: the next
    // requests (GET, and a POST without a body, which is never replayed) still succeed.
    let r = get("/silent-close").await.expect("silent close");
    assert_eq!(r.text().await.expect("body"), "once");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = c.post(app.gw("/plain")).send().await.expect("post");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.text().await.expect("body"), "hi");
    assert_eq!(accepted.load(Ordering::SeqCst), 3);

    // Header rules and CORS edit the upstream's own header lines.
    app.post_ok(
        "/api/v1/routes",
        json!({"id": "rules", "path": "/named", "upstream": format!("http://{addr}"),
               "response_headers": {"set": {"x-added": "1"}, "remove": ["x-public"]},
               "cors": {"allow_origins": ["https://app.example"]}}),
    )
    .await;
    app.settle().await;
    let r = c
        .get(app.gw("/named"))
        .header("origin", "https://app.example")
        .send()
        .await
        .expect("rules");
    let h = r.headers();
    assert!(
        h.get("x-public").is_none() && h.get("x-secret").is_none(),
        "{h:?}"
    );
    assert_eq!(h["x-added"], "1");
    assert_eq!(h["access-control-allow-origin"], "https://app.example");
    assert_eq!(h["content-length"], "2");
    assert_eq!(r.text().await.expect("body"), "ok");

    // A request with a body (hyper's client) answered with `Connection: close`: that
    // connection is not reused, even before the upstream actually closes it.
    let before = accepted.load(Ordering::SeqCst);
    let r = c
        .post(app.gw("/close-later"))
        .body("abc")
        .send()
        .await
        .expect("post");
    assert_eq!(r.text().await.expect("body"), "ok");
    let r = c
        .post(app.gw("/plain"))
        .body("def")
        .send()
        .await
        .expect("post again");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.text().await.expect("body"), "hi");
    let r = c.get(app.gw("/plain")).send().await.expect("get after");
    assert_eq!(r.text().await.expect("body"), "hi");
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        before + 1,
        "one new connection after the close"
    );

    // Bytes that are not HTTP: a 502 JSON answer naming the upstream, not a hang or a 500.
    let r = get("/garbage").await.expect("garbage");
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["code"], "UPSTREAM_ERROR");
    app.stop().await;
}

#[tokio::test]
async fn request_timeouts_hold_on_a_long_lived_upstream_connection() {
    // The upstream connection's timer is armed once and moved only when it fires:
    // after many quick requests spanning several timeouts, a slow one must still be
    // cut off near its own deadline, and quick ones must not be cut off early.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = crate::support::config_in(dir.path());
    config.gateway.workers = 1;
    let app = crate::support::spawn_with(config, dir).await;
    let up = upstream::spawn("timed").await;
    app.post_ok(
        "/api/v1/upstreams",
        json!({"name": "timed", "targets": [{"url": up.url()}],
               "timeouts": {"request_ms": 300}, "retries": {"attempts": 0}}),
    )
    .await;
    app.post_ok(
        "/api/v1/routes",
        json!({"id": "t", "path": "/", "upstream": "timed"}),
    )
    .await;
    app.settle().await;
    let c = Client::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(1000) {
        // 200 ms answers: each within its own 300 ms, though past earlier deadlines.
        let r = c.get(app.gw("/slow/200")).send().await.expect("quick");
        assert_eq!(r.status(), StatusCode::OK);
    }
    assert_eq!(up.connections.load(Ordering::Relaxed), 1);
    let t = Instant::now();
    let r = c.get(app.gw("/slow/2000")).send().await.expect("slow");
    assert_eq!(r.status(), StatusCode::GATEWAY_TIMEOUT);
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(280) && took < Duration::from_millis(1500),
        "cut off after {took:?}"
    );
    let r = c.get(app.gw("/ok")).send().await.expect("after");
    assert_eq!(r.status(), StatusCode::OK);
    app.stop().await;
}

/// A regex route as in the review: valid alone, large once compiled (`\w` is a
/// Unicode class), so that some dozens of them exceed what one set may compile to.
fn heavy_regex_route(n: usize) -> Value {
    json!({"id": format!("ow{n}"), "path": format!("^/ow{n}/\\w{{20}}"), "match": "regex", "upstream": "svc"})
}

#[tokio::test]
async fn regex_routes_that_cannot_compile_together_are_refused_naming_the_route() {
    let app = spawn_app().await;
    let r = app
        .admin(Method::PUT, "/api/v1/settings")
        .json(&json!({"api": {"rate_limit_per_minute": 0}}))
        .send()
        .await
        .expect("settings");
    assert_eq!(r.status(), StatusCode::OK);
    let up = upstream::spawn("one").await;
    app.post_ok(
        "/api/v1/upstreams",
        json!({"name": "svc", "targets": [{"url": up.url()}]}),
    )
    .await;
    // The first 60 in one import (each write compiles the whole table, which is
    // slow in a debug build), then one at a time up to 68.
    let mut doc = app.get_json("/api/v1/export").await;
    for i in 0..60 {
        doc["routes"]
            .as_array_mut()
            .expect("routes")
            .push(heavy_regex_route(i));
    }
    let r = app
        .admin(Method::POST, "/api/v1/import")
        .json(&doc)
        .send()
        .await
        .expect("import");
    assert_eq!(r.status(), StatusCode::OK, "{:?}", r.text().await);
    let mut refused = None;
    for n in 60..68 {
        let r = app
            .admin(Method::POST, "/api/v1/routes")
            .json(&heavy_regex_route(n))
            .send()
            .await
            .expect("post");
        if r.status() == StatusCode::CREATED {
            continue;
        }
        let e = expect_error(r, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await;
        refused = Some((n, e));
        break;
    }
    let (n, e) = refused.expect("68 such routes cannot all be accepted");
    assert!(n > 60, "sixty compile together: refused at {n}");
    let message = e["error"].as_str().expect("message");
    assert!(
        message.contains(&format!("\"ow{n}\"")) && message.contains("compile"),
        "the refusal names the route: {e}"
    );
    assert_eq!(e["details"]["field"], "path");
    // Nothing was written for it, and the gateway serves every earlier route.
    let r = app
        .admin(Method::GET, &format!("/api/v1/routes/ow{n}"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    app.settle().await;
    for i in [0, n - 1] {
        let r = client()
            .get(app.gw(&format!("/ow{i}/abcdefghijklmnopqrst")))
            .send()
            .await
            .expect("proxied");
        assert_eq!(r.status(), StatusCode::OK, "route ow{i} is served");
    }
    // Other changes still go through and reach the gateway.
    app.post_ok(
        "/api/v1/routes",
        json!({"id": "plain", "path": "/plain", "upstream": "svc"}),
    )
    .await;
    app.settle().await;
    let r = client().get(app.gw("/plain")).send().await.expect("plain");
    assert_eq!(r.status(), StatusCode::OK);
    // An import that would add the rest is refused whole, naming the routes.
    let mut doc = app.get_json("/api/v1/export").await;
    let before = app.get_json("/api/v1/revisions").await["total"].clone();
    for i in n..68 {
        doc["routes"]
            .as_array_mut()
            .expect("routes")
            .push(heavy_regex_route(i));
    }
    let r = app
        .admin(Method::POST, "/api/v1/import")
        .json(&doc)
        .send()
        .await
        .expect("import");
    let e = expect_error(r, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await;
    assert!(
        e["error"].as_str().is_some_and(|m| m.contains("\"ow0\"")),
        "{e}"
    );
    assert_eq!(app.get_json("/api/v1/revisions").await["total"], before);
    app.stop().await;
}

#[tokio::test]
async fn a_stored_revision_that_cannot_compile_falls_back_to_the_last_good_one() {
    use fleetgate_store::{Actor, ConfigStore, SqlStore, Store, StoreOptions};
    let app = spawn_app().await;
    let r = app
        .admin(Method::PUT, "/api/v1/settings")
        .json(&json!({"api": {"rate_limit_per_minute": 0}}))
        .send()
        .await
        .expect("settings");
    assert_eq!(r.status(), StatusCode::OK);
    let up = upstream::spawn("one").await;
    app.post_ok(
        "/api/v1/upstreams",
        json!({"name": "svc", "targets": [{"url": up.url()}]}),
    )
    .await;
    app.post_ok(
        "/api/v1/routes",
        json!({"id": "good", "path": "/good", "upstream": "svc"}),
    )
    .await;
    app.settle().await;
    let good = app.get_json("/health").await["gateway_revision"].clone();
    // Stop, then store a newest revision the gateway cannot compile, as an older
    // release accepted it: the API refuses to write one now.
    let crate::support::TestApp {
        running,
        config,
        _dir,
        ..
    } = app;
    running
        .expect("running")
        .shutdown()
        .await
        .expect("clean shutdown");
    let store = SqlStore::open(&StoreOptions::new(config.database_url()))
        .await
        .expect("open the store");
    let mut set = store.resource_set().await.expect("resources");
    for n in 0..80 {
        let route = heavy_regex_route(n);
        set.entry("route".to_string())
            .or_default()
            .insert(format!("ow{n}"), route);
    }
    let bad = store
        .replace_resources(
            &Actor::system(),
            &set,
            "config.import",
            "too many regex routes",
        )
        .await
        .expect("write the bad revision");
    assert!(bad > good.as_i64().expect("revision"));
    store.close().await;

    let app = crate::support::spawn_with(config, _dir).await;
    app.settle().await;
    let health = app.get_json("/health").await;
    assert_eq!(
        health["gateway_revision"], good,
        "the last revision that compiles is served"
    );
    let r = client().get(app.gw("/good")).send().await.expect("good");
    assert_eq!(
        r.status(),
        StatusCode::OK,
        "routes are served after a restart"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    let event = loop {
        let list = app
            .get_json("/api/v1/events?type=config.revision_refused")
            .await;
        if list["total"].as_i64() > Some(0) {
            break list["items"][0].clone();
        }
        assert!(Instant::now() < deadline, "no event: {list}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(event["severity"], "critical");
    assert_eq!(event["details"]["revision"], bad);
    assert_eq!(event["details"]["serving_revision"], good);
    assert!(
        event["message"]
            .as_str()
            .is_some_and(|m| m.contains("\"ow0\"")),
        "{event}"
    );
    // Rolling back to the good revision is served again as a new revision.
    let r = app
        .admin(Method::POST, &format!("/api/v1/revisions/{good}/rollback"))
        .send()
        .await
        .expect("rollback");
    assert_eq!(r.status(), StatusCode::OK, "{:?}", r.text().await);
    let latest = app.get_json("/api/v1/revisions").await["items"][0]["number"].clone();
    let deadline = Instant::now() + Duration::from_secs(5);
    while app.get_json("/health").await["gateway_revision"] != latest {
        assert!(
            Instant::now() < deadline,
            "the fixed revision is never served"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    app.stop().await;
}
