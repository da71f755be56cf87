//! The gateway on its own: configurations built by hand and handed over a watch
//! channel, real upstreams and real HTTP on loopback, no manager and no store —
//! the way a remote edge will run it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fleetgate_core::ConfigDocument;
use fleetgate_proxy::{DataPlaneConfig, Gateway, GatewayOptions};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

/// An upstream answering JSON with what it got; counts requests.
async fn upstream(name: &'static str) -> (SocketAddr, Arc<AtomicU64>) {
    upstream_answering(name, 200).await
}

/// Like [`upstream`], with every answer's status `status`.
async fn upstream_answering(name: &'static str, status: u16) -> (SocketAddr, Arc<AtomicU64>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let hits = Arc::new(AtomicU64::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    counter.fetch_add(1, Ordering::SeqCst);
                    async move {
                        let uri = req.uri().to_string();
                        let len = req
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes().len())
                            .unwrap_or(0);
                        let body = json!({"server": name, "uri": uri, "body_len": len});
                        let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
                        *resp.status_mut() =
                            hyper::StatusCode::from_u16(status).expect("a status code");
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, hits)
}

/// A data-plane input holding revision `revision` of routes and upstreams.
fn snapshot(revision: u64, upstreams: Value, routes: Value) -> Arc<DataPlaneConfig> {
    let document = ConfigDocument {
        upstreams: serde_json::from_value(upstreams).expect("upstreams"),
        routes: serde_json::from_value(routes).expect("routes"),
        ..ConfigDocument::default()
    };
    Arc::new(DataPlaneConfig {
        revision,
        gateway: Arc::new(document),
        ..DataPlaneConfig::default()
    })
}

struct Running {
    addr: SocketAddr,
    config: watch::Sender<Arc<DataPlaneConfig>>,
    gateway: Gateway,
    _stop: watch::Sender<bool>,
}

/// A gateway serving `first` on one worker thread.
async fn start(first: Arc<DataPlaneConfig>) -> Running {
    let (config, rx) = watch::channel(first);
    let gateway = Gateway::new(rx, GatewayOptions::default());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stop_rx) = watch::channel(false);
    let serving = Gateway::clone(&gateway);
    tokio::spawn(async move {
        let _ = serving
            .serve_on_threads(listener, false, 1, stop_rx, Duration::from_secs(1))
            .await;
    });
    Running {
        addr,
        config,
        gateway,
        _stop: stop,
    }
}

impl Running {
    /// Publishes a snapshot and waits until the gateway serves `expect` (the
    /// snapshot's own revision, or the previous one when it must be refused).
    async fn publish(&self, snap: Arc<DataPlaneConfig>, expect: u64) {
        self.config.send_replace(snap);
        let deadline = Instant::now() + Duration::from_secs(5);
        // A refused snapshot leaves the revision as it was: give the gateway its
        // moment to look at it first.
        tokio::time::sleep(Duration::from_millis(50)).await;
        while self.gateway.revision() != expect {
            assert!(Instant::now() < deadline, "never served revision {expect}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// One request on its own connection: the status and the body.
    async fn get(&self, path: &str) -> (u16, Vec<u8>) {
        let mut s = tokio::net::TcpStream::connect(self.addr)
            .await
            .expect("connect");
        let req = format!("GET {path} HTTP/1.1\r\nHost: edge.test\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.expect("write");
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got))
            .await
            .expect("the gateway closes the connection")
            .expect("read");
        let end = got
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a response head");
        let head = String::from_utf8_lossy(&got[..end]).to_string();
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status");
        (status, got[end + 4..].to_vec())
    }

    async fn served_by(&self, path: &str) -> String {
        let (status, body) = self.get(path).await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let v: Value = serde_json::from_slice(&body).expect("json");
        v["server"].as_str().expect("server").to_string()
    }
}

#[tokio::test]
async fn serves_hand_built_revisions_and_keeps_the_last_good_one() {
    let (a, _) = upstream("a").await;
    let (b, _) = upstream("b").await;
    let gw = start(snapshot(
        1,
        json!([{"name": "a", "targets": [{"url": format!("http://{a}")}]}]),
        json!([{"id": "all", "path": "/", "upstream": "a"}]),
    ))
    .await;
    assert_eq!(gw.gateway.revision(), 1);
    assert_eq!(gw.served_by("/x").await, "a");
    // Unknown paths and the request checks answer without an upstream.
    let (status, _) = gw.get("/../etc").await;
    assert_eq!(status, 400);

    // Revision 2 moves the route to another upstream.
    gw.publish(
        snapshot(
            2,
            json!([{"name": "b", "targets": [{"url": format!("http://{b}")}]}]),
            json!([{"id": "all", "path": "/", "upstream": "b"}]),
        ),
        2,
    )
    .await;
    assert_eq!(gw.served_by("/x").await, "b");

    // Revision 3 names an upstream that does not exist: refused, 2 keeps serving.
    gw.publish(
        snapshot(
            3,
            json!([]),
            json!([{"id": "all", "path": "/", "upstream": "missing"}]),
        ),
        2,
    )
    .await;
    assert_eq!(gw.served_by("/x").await, "b");
    // The refusal is reported back on the status channel.
    let status = gw.gateway.status();
    assert_eq!(status.applied.revision, 2);
    let fault = status.errors.last().expect("a fault reported");
    assert_eq!((fault.part.as_str(), fault.version), ("revision", 3));
    assert!(fault.message.contains("missing"), "{}", fault.message);

    // An older revision arriving late is not applied over a newer one.
    gw.publish(
        snapshot(
            1,
            json!([{"name": "a", "targets": [{"url": format!("http://{a}")}]}]),
            json!([{"id": "all", "path": "/", "upstream": "a"}]),
        ),
        2,
    )
    .await;
    assert_eq!(gw.served_by("/x").await, "b");
}

#[tokio::test]
async fn limiter_state_survives_a_new_revision() {
    let (a, hits) = upstream("a").await;
    let upstreams = json!([{"name": "a", "targets": [{"url": format!("http://{a}")}]}]);
    let limited = json!({"id": "limited", "path": "/limited", "upstream": "a",
                         "rate_limit": {"max": 2, "window_ms": 60000}});
    let gw = start(snapshot(1, upstreams.clone(), json!([limited]))).await;
    assert_eq!(gw.get("/limited").await.0, 200);
    assert_eq!(gw.get("/limited").await.0, 200);
    // A new revision that keeps the route's limit keeps its count.
    gw.publish(
        snapshot(
            2,
            upstreams.clone(),
            json!([limited, {"id": "other", "path": "/other", "upstream": "a"}]),
        ),
        2,
    )
    .await;
    assert_eq!(gw.get("/limited").await.0, 429);
    assert_eq!(gw.served_by("/other").await, "a");
    assert_eq!(
        hits.load(Ordering::SeqCst),
        3,
        "the refused request never left"
    );
}

#[tokio::test]
async fn published_sites_and_synced_rules_come_in_the_same_input() {
    use fleetgate_core::redirects::{Redirect, RedirectStatus, RedirectType};
    use fleetgate_protocol::{ConfigFeed, Site};
    let redirect = |source: &str, target: &str| Redirect {
        kind: RedirectType::Basic,
        source: source.into(),
        target: target.into(),
        status: RedirectStatus::default(),
    };
    let feed = ConfigFeed::default();
    let gateway = Gateway::new(feed.subscribe(), GatewayOptions::default());
    let link = gateway.report_status(Duration::from_secs(60));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (_stop, stop_rx) = watch::channel(false);
    let serving = gateway.clone();
    tokio::spawn(async move {
        let _ = serving
            .serve_on_threads(listener, false, 1, stop_rx, Duration::from_secs(1))
            .await;
    });
    let location = |host: &'static str, path: &'static str| async move {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.expect("write");
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.expect("read");
        let text = String::from_utf8_lossy(&got).to_string();
        let status: u16 = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status");
        let location = text
            .lines()
            .find_map(|l| {
                l.strip_prefix("location: ")
                    .or_else(|| l.strip_prefix("Location: "))
            })
            .map(str::to_string);
        (status, location)
    };
    // A project's published set, answered for its host.
    feed.publish_sites(vec![Arc::new(Site {
        id: "p1".into(),
        label: "ns/p1".into(),
        version: 1,
        hosts: vec!["site.test".into()],
        redirects: vec![redirect("/old", "/new")],
        pages: vec![],
    })]);
    // A report may come before the set is compiled: wait for the one that has it.
    let deadline = Instant::now() + Duration::from_secs(5);
    while link.fresh(Duration::from_secs(1)).await.applied.sites != 1 {
        assert!(Instant::now() < deadline, "the published set never applied");
    }
    assert_eq!(
        location("site.test", "/old").await,
        (302, Some("/new".to_string()))
    );
    // Rules synced from a Flecto-compatible manager answer every other host.
    feed.publish_synced(Some(Arc::new(Site {
        id: "flecto:ns/p".into(),
        label: "ns/p".into(),
        version: 9,
        hosts: vec![],
        redirects: vec![redirect("/synced", "/there")],
        pages: vec![],
    })));
    let deadline = Instant::now() + Duration::from_secs(5);
    while link.fresh(Duration::from_secs(1)).await.applied.synced != Some(9) {
        assert!(Instant::now() < deadline, "synced rules never applied");
    }
    assert_eq!(
        location("other.test", "/synced").await,
        (302, Some("/there".to_string()))
    );
    // A new published version replaces the project's set.
    feed.publish_sites(vec![Arc::new(Site {
        id: "p1".into(),
        label: "ns/p1".into(),
        version: 2,
        hosts: vec!["site.test".into()],
        redirects: vec![redirect("/old", "/newer")],
        pages: vec![],
    })]);
    while link.fresh(Duration::from_secs(1)).await.applied.sites != 2 {
        assert!(Instant::now() < deadline, "the new set never applied");
    }
    assert_eq!(
        location("site.test", "/old").await,
        (302, Some("/newer".to_string()))
    );
}

/// The state of `upstream`'s circuit breaker, and of its targets, as the gateway
/// reports them.
fn breaker_and_targets(gw: &Gateway, upstream: &str) -> (String, Vec<String>) {
    let breaker = gw
        .breakers()
        .into_iter()
        .find(|b| b.upstream == upstream)
        .map(|b| b.state)
        .expect("the upstream's breaker");
    let targets = gw
        .upstream_health(upstream)
        .expect("the upstream's health")
        .into_iter()
        .map(|t| t.state)
        .collect();
    (breaker, targets)
}

#[tokio::test]
async fn breaker_and_ejection_survive_a_revision_that_leaves_the_upstream_unchanged() {
    let (failing, hits) = upstream_answering("failing", 500).await;
    let (healthy, _) = upstream("healthy").await;
    // Three failed requests open the breaker and eject the one target, for a minute.
    let upstream_with = |target: SocketAddr| {
        json!([{
            "name": "a",
            "targets": [{"url": format!("http://{target}")}],
            "circuit_breaker": {"enabled": true, "failure_rate_percent": 50, "min_requests": 3,
                                "window_ms": 60000, "open_ms": 60000, "half_open_requests": 1},
            "health_check": {"passive": {"max_failures": 3, "eject_ms": 60000}}
        }])
    };
    let x = json!({"id": "x", "path": "/x", "upstream": "a"});
    let gw = start(snapshot(1, upstream_with(failing), json!([x]))).await;
    for _ in 0..3 {
        assert_eq!(gw.get("/x").await.0, 500);
    }
    let (status, body) = gw.get("/x").await;
    assert_eq!(status, 503, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("CIRCUIT_OPEN"));
    assert_eq!(
        breaker_and_targets(&gw.gateway, "a"),
        ("open".to_string(), vec!["ejected".to_string()])
    );

    // Revision 2 adds a route and leaves the upstream as it was: the breaker stays
    // open (for the new route too) and the target stays ejected.
    let y = json!({"id": "y", "path": "/y", "upstream": "a"});
    gw.publish(snapshot(2, upstream_with(failing), json!([x, y])), 2)
        .await;
    assert_eq!(gw.get("/x").await.0, 503);
    assert_eq!(gw.get("/y").await.0, 503);
    assert_eq!(
        breaker_and_targets(&gw.gateway, "a"),
        ("open".to_string(), vec!["ejected".to_string()])
    );
    assert_eq!(
        hits.load(Ordering::SeqCst),
        3,
        "the open breaker let nothing through"
    );

    // Revision 3 changes the upstream's targets: a changed upstream is a new one,
    // with a closed breaker and targets not ejected.
    gw.publish(snapshot(3, upstream_with(healthy), json!([x, y])), 3)
        .await;
    assert_eq!(
        breaker_and_targets(&gw.gateway, "a"),
        ("closed".to_string(), vec!["healthy".to_string()])
    );
    assert_eq!(gw.served_by("/x").await, "healthy");
    assert_eq!(hits.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn acme_challenges_are_answered_before_routing_for_any_host() {
    let (up, hits) = upstream("app").await;
    let snap = snapshot(
        1,
        json!([{"name": "app", "targets": [{"url": format!("http://{up}")}]}]),
        json!([{"id": "all", "path": "/", "upstream": "app"}]),
    );
    let running = start(snap.clone()).await;
    running.publish(snap.clone(), 1).await;

    // No challenge pending: the path is routed like any other.
    assert_eq!(
        running.served_by("/.well-known/acme-challenge/tok-1").await,
        "app"
    );
    let mut with = DataPlaneConfig::clone(&snap);
    with.challenges = Arc::new(fleetgate_protocol::AcmeChallenges {
        version: 1,
        answers: [("tok-1".to_string(), "tok-1.thumbprint".to_string())].into(),
    });
    running.config.send_replace(Arc::new(with));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, body) = running.get("/.well-known/acme-challenge/tok-1").await;
        if status == 200 && body == b"tok-1.thumbprint" {
            break;
        }
        assert!(Instant::now() < deadline, "challenge never answered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = hits.load(Ordering::SeqCst);
    let (status, body) = running.get("/.well-known/acme-challenge/tok-1").await;
    assert_eq!((status, body.as_slice()), (200, &b"tok-1.thumbprint"[..]));
    assert_eq!(hits.load(Ordering::SeqCst), before, "answered, not proxied");
    // Other tokens still reach the upstream (an app's own ACME client).
    assert_eq!(
        running.served_by("/.well-known/acme-challenge/other").await,
        "app"
    );
    let status = running.gateway.status();
    assert_eq!(status.applied.challenges, 1);
}

/// An upstream that answers each request `delay` after reading its head.
async fn slow_upstream(delay: Duration) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                tokio::time::sleep(delay).await;
                let body = r#"{"server":"slow"}"#;
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(resp.as_bytes()).await;
            });
        }
    });
    addr
}

/// What the gateway reports in flight to the target at `addr` of `upstream`.
fn in_flight(gw: &Gateway, upstream: &str, addr: SocketAddr) -> Option<u64> {
    gw.upstream_health(upstream)?
        .into_iter()
        .find(|t| t.url == format!("http://{addr}"))
        .map(|t| t.active_connections)
}

#[tokio::test]
async fn a_target_in_flight_stays_counted_across_a_revision_and_weight_zero_drains_it() {
    let old = slow_upstream(Duration::from_millis(800)).await;
    let (new, new_hits) = upstream("new").await;
    let gw = start(snapshot(
        1,
        json!([{"name": "app", "targets": [{"url": format!("http://{old}")}]}]),
        json!([{"id": "all", "path": "/", "upstream": "app"}]),
    ))
    .await;
    // A request to the old target is on its way when the switch comes.
    let addr = gw.addr;
    let pending = tokio::spawn(async move {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"GET /slow HTTP/1.1\r\nHost: edge.test\r\nConnection: close\r\n\r\n")
            .await
            .expect("write");
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.expect("read");
        String::from_utf8_lossy(&got).to_string()
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while in_flight(&gw.gateway, "app", old) != Some(1) {
        assert!(
            Instant::now() < deadline,
            "the request never reached the old target"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Revision 2: the new target takes the traffic, the old one drains (weight 0).
    gw.publish(
        snapshot(
            2,
            json!([{"name": "app", "targets": [
                {"url": format!("http://{new}"), "weight": 1},
                {"url": format!("http://{old}"), "weight": 0}]}]),
            json!([{"id": "all", "path": "/", "upstream": "app"}]),
        ),
        2,
    )
    .await;
    // The request sent before the revision is still counted after it.
    assert_eq!(in_flight(&gw.gateway, "app", old), Some(1));
    for _ in 0..10 {
        assert_eq!(gw.served_by("/x").await, "new");
    }
    assert_eq!(new_hits.load(Ordering::SeqCst), 10);
    let answer = pending.await.expect("the old request");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("slow"), "{answer}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while in_flight(&gw.gateway, "app", old) != Some(0) {
        assert!(Instant::now() < deadline, "the old target never drained");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn host_objects_merged_into_the_revision_served_apply_on_their_own() {
    let (a, _) = upstream("a").await;
    let (b, _) = upstream("b").await;
    let ups = json!([{"name": "a", "targets": [{"url": format!("http://{a}")}]}]);
    let all = json!({"id": "all", "path": "/", "upstream": "a"});
    let gw = start(snapshot(4, ups.clone(), json!([all.clone()]))).await;
    assert_eq!(gw.served_by("/x").await, "a");

    // The host merges a route of its own into revision 4 (local version 1):
    // compiled although the revision is the same.
    let with_local = |local: u64, upstream: &str| {
        let mut snap = (*snapshot(
            4,
            json!([{"name": "a", "targets": [{"url": format!("http://{a}")}]},
                   {"name": "b", "targets": [{"url": format!("http://{b}")}]}]),
            json!([all.clone(), {"id": "mine", "path": "/mine", "upstream": upstream}]),
        ))
        .clone();
        snap.local = local;
        Arc::new(snap)
    };
    gw.config.send_replace(with_local(1, "b"));
    let deadline = Instant::now() + Duration::from_secs(5);
    while gw.gateway.status().applied.local != 1 {
        assert!(Instant::now() < deadline, "local version 1 never applied");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(gw.gateway.revision(), 4);
    assert_eq!(gw.served_by("/mine").await, "b");

    // Refused host objects are a fault of their own; what served serves on.
    gw.config.send_replace(with_local(2, "missing"));
    let deadline = Instant::now() + Duration::from_secs(5);
    let fault = loop {
        let status = gw.gateway.status();
        if let Some(f) = status.errors.last() {
            break f.clone();
        }
        assert!(Instant::now() < deadline, "the refusal is never reported");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!((fault.part.as_str(), fault.version), ("local", 2));
    assert_eq!(gw.gateway.status().applied.local, 1);
    assert_eq!(gw.served_by("/mine").await, "b");

    // A later local version applies; an older revision is still never applied
    // over a newer one, whatever its local version.
    gw.config.send_replace(with_local(3, "a"));
    let deadline = Instant::now() + Duration::from_secs(5);
    while gw.gateway.status().applied.local != 3 {
        assert!(Instant::now() < deadline, "local version 3 never applied");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(gw.served_by("/mine").await, "a");
    let mut old = (*with_local(9, "b")).clone();
    old.revision = 3;
    gw.publish(Arc::new(old), 4).await;
    assert_eq!(gw.served_by("/mine").await, "a");
}
