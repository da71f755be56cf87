//! Traffic metrics from real requests through the gateway: the live snapshot, the
//! stored series, the snapshot stream over SSE, the dashboard WebSocket, and the
//! aggregated `proxy.timeout` event.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::events::{flood, SseClient};
use crate::support::{expect_error, login_cookies, spawn_app, TestApp};
use crate::upstream;

/// Polls `/api/v1/metrics` until `ok` holds for the snapshot.
async fn snapshot_until(app: &TestApp, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = app.get_json("/api/v1/metrics").await;
        if ok(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "{what} never showed: {s}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn snapshot_series_and_timeouts_come_from_real_traffic() {
    let app = spawn_app().await;
    let start = fleetgate_core::time::now_ms();
    let up = upstream::spawn("metered").await;
    app.post_ok(
        "/api/v1/upstreams",
        json!({"name": "svc", "targets": [{"url": up.url()}],
               "timeouts": {"request_ms": 200}, "retries": {"attempts": 0}}),
    )
    .await;
    app.post_ok(
        "/api/v1/routes",
        json!({"id": "api", "path": "/", "upstream": "svc",
               "rateLimit": {"max": 30, "windowMs": 60000}}),
    )
    .await;
    app.settle().await;
    // The sampler's first reading of the data plane is the window's baseline: traffic
    // sent before it would be counted in the baseline, not in the window.
    snapshot_until(&app, "the sampler's first reading", |s| {
        s["data_plane"] == true
    })
    .await;

    // 20 answered, 5 failing upstream answers (5xx), 2 timeouts, then 3 refused by
    // the rate limit: 30 requests admitted, 33 sent. Each group is sent at once, so
    // all of them fall in one snapshot window even on a busy machine.
    let c = Client::new();
    let burst = |path: &'static str, n: usize| {
        let c = c.clone();
        let url = app.gw(path);
        async move {
            futures::future::join_all((0..n).map(|_| c.get(&url).send()))
                .await
                .into_iter()
                .map(|r| r.expect("req").status())
                .collect::<Vec<_>>()
        }
    };
    assert!(burst("/ok", 20).await.iter().all(|s| *s == StatusCode::OK));
    up.status.store(503, Ordering::Relaxed);
    assert!(burst("/fail", 5)
        .await
        .iter()
        .all(|s| *s == StatusCode::SERVICE_UNAVAILABLE));
    up.status.store(200, Ordering::Relaxed);
    assert!(burst("/slow/1000", 2)
        .await
        .iter()
        .all(|s| *s == StatusCode::GATEWAY_TIMEOUT));
    let refused = burst("/ok", 6)
        .await
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert_eq!(refused, 3);
    let sent = 33;

    let snap = snapshot_until(&app, "all requests", |s| {
        s["totals"]["requests"].as_u64() == Some(sent)
    })
    .await;
    assert_eq!(snap["data_plane"], true);
    assert!(
        snap["window_secs"]
            .as_f64()
            .is_some_and(|w| w > 0.0 && w <= 10.0),
        "{snap}"
    );
    let totals = &snap["totals"];
    assert_eq!(
        totals["errors"], 7,
        "5 upstream 503s and 2 gateway 504s: {snap}"
    );
    assert_eq!(totals["rate_limited"], 3);
    assert_eq!(totals["client_errors"], 3);
    let error_rate = totals["error_rate"].as_f64().expect("error_rate");
    assert!((error_rate - 7.0 / 33.0).abs() < 0.001, "{error_rate}");
    assert!(totals["requests_per_second"]
        .as_f64()
        .is_some_and(|r| r > 0.0));
    let p50 = totals["latency_ms"]["p50"].as_f64().expect("p50");
    let p99 = totals["latency_ms"]["p99"].as_f64().expect("p99");
    assert!(p50 < 200.0, "most requests are fast: {snap}");
    assert!(p99 >= 100.0, "the timeouts are in the tail: {snap}");
    let route = &snap["routes"][0];
    assert_eq!(route["route"], "api");
    assert_eq!(route["requests"], sent);
    let svc = &snap["upstreams"][0];
    assert_eq!(svc["upstream"], "svc");
    assert_eq!(
        svc["requests"], 30,
        "attempts: 20 + 5 + 2 + 3 (refused never reach it)"
    );
    assert_eq!(svc["failures"], 7);
    assert_eq!(svc["timeouts"], 2);
    assert_eq!(svc["breaker"], "closed");
    assert!(
        svc["latency_ms"]["p99"]
            .as_f64()
            .is_some_and(|v| v >= 100.0),
        "{svc}"
    );
    assert_eq!(snap["breakers"][0]["upstream"], "svc");
    // Prometheus carries the same counters.
    let prom = app
        .admin(Method::GET, "/prometheus/metrics")
        .send()
        .await
        .expect("prom");
    let text = prom.text().await.expect("text");
    assert!(
        text.contains("fleetgate_upstream_timeouts_total{upstream=\"svc\"} 2"),
        "{text}"
    );
    assert!(text.contains("fleetgate_circuit_breaker_state{upstream=\"svc\"} 0"));
    assert!(text.contains("fleetgate_upstream_response_seconds_count{upstream=\"svc\"} 30"));

    // The timeouts are one aggregated event, apart from the other upstream errors.
    let deadline = Instant::now() + Duration::from_secs(15);
    let (timeouts, errors) = loop {
        let t = app.get_json("/api/v1/events?type=proxy.timeout").await;
        let e = app
            .get_json("/api/v1/events?type=proxy.upstream_error")
            .await;
        if t["total"] == 1 && e["total"] == 1 {
            break (t, e);
        }
        assert!(Instant::now() < deadline, "timeout events: {t} {e}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(timeouts["items"][0]["upstream"], "svc");
    assert_eq!(timeouts["items"][0]["details"]["count"], 2);
    assert_eq!(errors["items"][0]["details"]["count"], 5);

    // The series: once the 10 s interval holding the traffic is written, the
    // route's requests add up to what was sent, at every step.
    let deadline = Instant::now() + Duration::from_secs(25);
    let path = format!("/api/v1/metrics/series?metric=requests&route=api&from={start}&step=10");
    let series = loop {
        let s = app.get_json(&path).await;
        let sum: f64 = s["points"]
            .as_array()
            .expect("points")
            .iter()
            .filter_map(|p| p["value"].as_f64())
            .sum();
        if sum as u64 == sent {
            break s;
        }
        assert!(sum as u64 <= sent, "{s}");
        assert!(
            Instant::now() < deadline,
            "series never held the traffic: {s}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(
        (series["step"].as_i64(), series["resolution"].as_i64()),
        (Some(10), Some(10))
    );
    let first = series["points"][0]["ts"].as_i64().expect("ts");
    assert_eq!(
        first,
        start - start % 10_000,
        "points start on a step boundary"
    );
    // Coarser steps read the same traffic from the minute rows.
    let minute = app
        .get_json(&format!(
            "/api/v1/metrics/series?metric=requests&route=api&from={start}&step=60"
        ))
        .await;
    assert_eq!(minute["resolution"], 10, "10 s rows still cover this range");
    let sum: f64 = minute["points"]
        .as_array()
        .expect("points")
        .iter()
        .filter_map(|p| p["value"].as_f64())
        .sum();
    assert_eq!(sum as u64, sent);
    let upstream_failures = app
        .get_json(&format!(
            "/api/v1/metrics/series?metric=upstream_timeouts&upstream=svc&from={start}&step=3600"
        ))
        .await;
    let sum: f64 = upstream_failures["points"]
        .as_array()
        .expect("points")
        .iter()
        .filter_map(|p| p["value"].as_f64())
        .sum();
    assert_eq!(sum, 2.0, "{upstream_failures}");
    let p99 = app
        .get_json(&format!(
            "/api/v1/metrics/series?metric=latency_p99_ms&from={start}&step=3600"
        ))
        .await;
    assert!(
        p99["points"]
            .as_array()
            .expect("points")
            .iter()
            .any(|p| p["value"].as_f64().is_some_and(|v| v > 0.0)),
        "{p99}"
    );
    app.stop().await;
}

#[tokio::test]
async fn series_queries_are_validated_naming_the_parameter() {
    let app = spawn_app().await;
    for (query, field) in [
        ("", "metric"),
        ("metric=bogus", "metric"),
        ("metric=requests&step=15", "step"),
        ("metric=requests&step=0", "step"),
        ("metric=requests&step=-10", "step"),
        ("metric=requests&step=99999999999", "step"),
        (
            "metric=requests&from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z",
            "from",
        ),
        ("metric=requests&from=yesterday", "from"),
        ("metric=requests&route=a&upstream=b", "upstream"),
        ("metric=upstream_timeouts&route=a", "metric"),
        ("metric=rate_limited&upstream=b", "metric"),
        ("metric=requests&from=0&step=10", "step"),
    ] {
        let r = app
            .admin(Method::GET, &format!("/api/v1/metrics/series?{query}"))
            .send()
            .await
            .expect("series");
        let body = expect_error(r, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await;
        assert!(
            body["error"]
                .as_str()
                .is_some_and(|m| m.starts_with(&format!("{field}:"))),
            "{query}: {body}"
        );
    }
    // No traffic yet: an hour of zeros (and undefined latency), about 360 points.
    let s = app.get_json("/api/v1/metrics/series?metric=requests").await;
    assert_eq!(s["step"], 10);
    let points = s["points"].as_array().expect("points");
    assert!((360..=361).contains(&points.len()), "{}", points.len());
    assert!(points.iter().all(|p| p["value"] == 0.0));
    let s = app
        .get_json("/api/v1/metrics/series?metric=latency_p50_ms")
        .await;
    assert!(s["points"]
        .as_array()
        .expect("points")
        .iter()
        .all(|p| p["value"].is_null()));
    // Anonymous callers get nothing.
    let r = app
        .anon(Method::GET, "/api/v1/metrics")
        .send()
        .await
        .expect("anon");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    app.stop().await;
}

#[tokio::test]
async fn metrics_stream_sends_a_snapshot_every_second() {
    let app = spawn_app().await;
    let mut stream = SseClient::open(&app, "/api/v1/stream/metrics", None).await;
    let started = Instant::now();
    let mut ats = Vec::new();
    for _ in 0..3 {
        let (_, snap) = stream.next_of("metrics", Duration::from_secs(5)).await;
        assert!(snap["totals"]["requests"].is_u64(), "{snap}");
        ats.push(snap["at"].as_str().expect("at").to_string());
    }
    ats.dedup();
    assert!(ats.len() >= 2, "snapshots are renewed: {ats:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    app.stop().await;
}

async fn session_cookie(app: &TestApp) -> String {
    login_cookies(&app.url("/api/v1/auth/login")).await.0
}

async fn next_json(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    kind: &str,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = tokio::time::timeout(left, ws.next())
            .await
            .unwrap_or_else(|_| panic!("no {kind} frame in time"))
            .expect("open")
            .expect("frame");
        if let Message::Text(t) = msg {
            let v: Value = serde_json::from_str(&t).expect("JSON frame");
            if v["type"] == kind {
                return v["data"].clone();
            }
        }
    }
}

#[tokio::test]
async fn dashboard_websocket_streams_metrics_and_events_to_a_session() {
    let app = spawn_app().await;
    let ws_url = format!("ws://{}/ws/dashboard", app.addr);

    // Without a session or key the upgrade is refused.
    let err = tokio_tungstenite::connect_async(ws_url.as_str())
        .await
        .expect_err("anonymous");
    match err {
        tokio_tungstenite::tungstenite::Error::Http(r) => {
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED)
        }
        e => panic!("unexpected {e}"),
    }
    let cookie = session_cookie(&app).await;
    // A page of another site cannot use the session.
    let mut req = ws_url.as_str().into_client_request().expect("request");
    req.headers_mut()
        .insert("cookie", cookie.parse().expect("cookie"));
    req.headers_mut()
        .insert("origin", "https://evil.example".parse().expect("origin"));
    match tokio_tungstenite::connect_async(req)
        .await
        .expect_err("cross-site")
    {
        tokio_tungstenite::tungstenite::Error::Http(r) => {
            assert_eq!(r.status(), StatusCode::FORBIDDEN)
        }
        e => panic!("unexpected {e}"),
    }

    let mut req = ws_url.as_str().into_client_request().expect("request");
    req.headers_mut()
        .insert("cookie", cookie.parse().expect("cookie"));
    req.headers_mut().insert(
        "origin",
        format!("http://{}", app.addr).parse().expect("origin"),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("connect");
    let hello = next_json(&mut ws, "hello").await;
    assert_eq!(hello["user"], "admin");
    assert!(hello["unacknowledged"]["total"].is_i64(), "{hello}");
    let snap = next_json(&mut ws, "metrics").await;
    assert_eq!(snap["data_plane"], true);

    // An event raised elsewhere arrives as it is stored.
    let r = Client::new()
        .post(app.url("/api/v1/auth/login"))
        .json(&json!({"username": "admin", "password": "wrong"}))
        .send()
        .await
        .expect("login");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let event = next_json(&mut ws, "event").await;
    assert_eq!(event["type"], "auth.login_failed");
    assert!(event["id"].as_i64().is_some());

    ws.send(Message::Text(r#"{"type":"ping"}"#.into()))
        .await
        .expect("ping");
    assert!(next_json(&mut ws, "pong").await.is_null());
    ws.send(Message::Text("not json".into()))
        .await
        .expect("junk");
    assert!(next_json(&mut ws, "error").await["message"].is_string());
    ws.close(None).await.expect("close");
    app.stop().await;
}

#[tokio::test]
async fn a_dashboard_socket_that_is_not_read_is_dropped() {
    let app = spawn_app().await;
    let r = app
        .admin(Method::PUT, "/api/v1/settings")
        .json(&json!({"api": {"rate_limit_per_minute": 0}}))
        .send()
        .await
        .expect("settings");
    assert_eq!(r.status(), StatusCode::OK);
    let mut req = format!("ws://{}/ws/dashboard", app.addr)
        .into_client_request()
        .expect("request");
    req.headers_mut().insert(
        "cookie",
        session_cookie(&app).await.parse().expect("cookie"),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("connect");
    // Never read while more events are raised than the socket buffers hold.
    const N: usize = 20_000;
    flood(&app, N).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut events = 0usize;
    loop {
        match tokio::time::timeout(Duration::from_secs(15), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                if t.contains(r#""type":"event""#) {
                    events += 1;
                }
            }
            Ok(Some(Ok(Message::Close(_)))) | Ok(Some(Err(_))) | Ok(None) => break,
            Ok(Some(Ok(_))) => {}
            Err(_) => panic!("the socket neither ended nor delivered ({events} events)"),
        }
        assert!(
            Instant::now() < deadline,
            "the slow socket was never dropped ({events} events)"
        );
    }
    assert!(
        events < N,
        "a dropped client gets less than everything ({events})"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_metric_alert_rule_reads_the_live_snapshot() {
    let app = spawn_app().await;
    let up = upstream::spawn("erratic").await;
    app.post_ok(
        "/api/v1/upstreams",
        json!({"name": "svc", "targets": [{"url": up.url()}], "retries": {"attempts": 0}}),
    )
    .await;
    app.post_ok(
        "/api/v1/routes",
        json!({"id": "checkout", "path": "/", "upstream": "svc"}),
    )
    .await;
    let rule = app
        .post_ok(
            "/api/v1/alert-rules",
            json!({"name": "Checkout failing", "severity": "critical", "condition":
                {"kind": "metric", "metric": "error_rate", "route": "checkout", "op": ">", "threshold": 0.5, "duration_secs": 1}}),
        )
        .await["id"]
        .as_str()
        .expect("id")
        .to_string();
    app.settle().await;
    let c = Client::new();
    // Healthy traffic: no incident.
    for _ in 0..5 {
        c.get(app.gw("/ok")).send().await.expect("req");
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let list = app
        .get_json(&format!("/api/v1/incidents?rule_id={rule}"))
        .await;
    assert_eq!(list["total"], 0, "{list}");
    // Mostly failing traffic (the breaker opens too: its 503s are errors as well).
    up.status.store(502, Ordering::Relaxed);
    for _ in 0..30 {
        c.get(app.gw("/fail")).send().await.expect("req");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let incident = loop {
        let list = app
            .get_json(&format!("/api/v1/incidents?rule_id={rule}"))
            .await;
        if list["total"] == 1 {
            break list["items"][0].clone();
        }
        assert!(
            Instant::now() < deadline,
            "no incident from the live error rate: {list}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(incident["severity"], "critical");
    assert_eq!(incident["status"], "open");
    let fired = app.get_json("/api/v1/events?type=alert.fired").await;
    assert!(
        fired["items"][0]["details"]["value"]
            .as_f64()
            .is_some_and(|v| v > 0.5),
        "{fired}"
    );
    app.stop().await;
}
