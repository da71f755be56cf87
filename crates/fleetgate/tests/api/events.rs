//! Events raised by real situations (a breaker that opens, rate-limit rejections, a
//! failed login, a configuration change), stored, acknowledged and streamed over SSE
//! with resume.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::StreamExt;
use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};

use crate::support::{spawn_app, TestApp, TOKEN};
use crate::upstream;

/// An SSE client: yields (id, event type, data) as events arrive (id 0 when the
/// event has none).
pub(crate) struct SseClient {
    buf: String,
    body: std::pin::Pin<Box<dyn futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
}

impl SseClient {
    pub(crate) async fn open(app: &TestApp, path: &str, last_event_id: Option<i64>) -> Self {
        let mut req = Client::new().get(app.url(path)).bearer_auth(TOKEN);
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id.to_string());
        }
        let r = req.send().await.expect("stream");
        assert_eq!(r.status(), StatusCode::OK);
        assert!(r.headers()["content-type"]
            .to_str()
            .expect("ct")
            .starts_with("text/event-stream"));
        Self {
            buf: String::new(),
            body: Box::pin(r.bytes_stream()),
        }
    }

    /// The next event within `wait`, skipping heartbeats.
    pub(crate) async fn next(&mut self, wait: Duration) -> Option<(i64, String, Value)> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let (mut id, mut kind, mut data) = (None, String::new(), String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = v.trim().parse().ok();
                    } else if let Some(v) = line.strip_prefix("event:") {
                        kind = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim());
                    }
                }
                if id.is_some() || !kind.is_empty() {
                    let value = serde_json::from_str(&data).expect("event JSON");
                    return Some((id.unwrap_or(0), kind, value));
                }
                continue;
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            match tokio::time::timeout(left, self.body.next()).await {
                Ok(Some(Ok(chunk))) => self.buf.push_str(&String::from_utf8_lossy(&chunk)),
                _ => return None,
            }
        }
    }

    /// The next event of `kind`, skipping others.
    pub(crate) async fn next_of(&mut self, kind: &str, wait: Duration) -> (i64, Value) {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left).await {
                Some((id, k, v)) if k == kind => return (id, v),
                Some(_) => continue,
                None => panic!("no {kind} event within {wait:?}"),
            }
        }
    }
}

#[tokio::test]
async fn data_plane_events_are_stored_acknowledged_and_streamed() {
    let app = spawn_app().await;
    let mut alerts = SseClient::open(&app, "/api/v1/stream/alerts", None).await;
    let mut all = SseClient::open(&app, "/api/v1/stream/events?category=config", None).await;

    // A failed login is a warning.
    let r = Client::new()
        .post(app.url("/api/v1/auth/login"))
        .json(&json!({"username": "admin", "password": "wrong"}))
        .send()
        .await
        .expect("login");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let (login_id, login) = alerts
        .next_of("auth.login_failed", Duration::from_secs(5))
        .await;
    assert_eq!(
        (login["severity"].as_str(), login["source"].as_str()),
        (Some("warning"), Some("manager"))
    );

    // A breaker that opens is critical; configuration changes are info events.
    let up = upstream::spawn("flaky").await;
    app.post_ok(
        "/api/v1/upstreams",
        json!({"name": "svc", "targets": [{"url": up.url()}], "retries": {"attempts": 0}}),
    )
    .await;
    app.post_ok(
        "/api/v1/routes",
        json!({"id": "r", "path": "/", "upstream": "svc", "rateLimit": {"max": 12, "windowMs": 60000}}),
    )
    .await;
    let (_, changed) = all.next_of("config.changed", Duration::from_secs(5)).await;
    assert!(changed["details"]["revision"].as_i64().is_some());
    app.settle().await;
    up.status.store(500, Ordering::Relaxed);
    let c = Client::new();
    for _ in 0..10 {
        c.get(app.gw("/x")).send().await.expect("req");
    }
    let (opened_id, opened) = alerts
        .next_of("circuit_breaker.opened", Duration::from_secs(5))
        .await;
    assert_eq!(
        (opened["severity"].as_str(), opened["upstream"].as_str()),
        (Some("critical"), Some("svc"))
    );
    assert!(opened_id > login_id);
    // Rate-limit rejections become one aggregated event per route and window.
    for _ in 0..6 {
        let r = c.get(app.gw("/x")).send().await.expect("req");
        assert_ne!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
    let (_, limited) = alerts
        .next_of("rate_limit.exceeded", Duration::from_secs(15))
        .await;
    assert_eq!(
        (
            limited["route_id"].as_str(),
            limited["details"]["count"].as_i64()
        ),
        (Some("r"), Some(4))
    );

    // Stored with filters; counts; acknowledgement one by one and by filter.
    let listed = app
        .get_json("/api/v1/events?type=circuit_breaker.opened")
        .await;
    assert_eq!(listed["total"], 1);
    assert_eq!(listed["items"][0]["id"], opened_id);
    let count = app.get_json("/api/v1/events/count").await;
    assert_eq!(count["critical"], 1);
    assert!(count["warning"].as_i64().is_some_and(|n| n >= 2), "{count}");
    let r = app
        .admin(Method::POST, &format!("/api/v1/events/{opened_id}/ack"))
        .send()
        .await
        .expect("ack");
    let acked: Value = r.json().await.expect("json");
    assert_eq!(acked["acknowledged_by"], "api_key:bootstrap");
    let r = app
        .admin(Method::POST, "/api/v1/events/ack")
        .json(&json!({"severity": "warning"}))
        .send()
        .await
        .expect("bulk");
    assert!(r.json::<Value>().await.expect("json")["acknowledged"]
        .as_u64()
        .is_some_and(|n| n >= 2));
    assert_eq!(app.get_json("/api/v1/events/count").await["critical"], 0);
    assert_eq!(app.get_json("/api/v1/events/count").await["warning"], 0);
    let r = app
        .admin(Method::POST, "/api/v1/events/0/ack")
        .send()
        .await
        .expect("bad id");
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = app
        .admin(Method::POST, "/api/v1/events/99999/ack")
        .send()
        .await
        .expect("unknown");
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // A stream resumed with Last-Event-ID replays what came after, without loss.
    let mut resumed = SseClient::open(&app, "/api/v1/stream/alerts", Some(login_id)).await;
    let (first, kind, _) = resumed
        .next(Duration::from_secs(5))
        .await
        .expect("replayed event");
    assert_eq!(
        (first, kind.as_str()),
        (opened_id, "circuit_breaker.opened")
    );
    app.stop().await;
}

#[tokio::test]
async fn a_slow_stream_client_is_dropped_not_buffered() {
    let app = spawn_app().await;
    let r = app
        .admin(Method::PUT, "/api/v1/settings")
        .json(&json!({"api": {"rate_limit_per_minute": 0}}))
        .send()
        .await
        .expect("settings");
    assert_eq!(r.status(), StatusCode::OK);
    // Open a stream and never read it, then raise more events than a client may lag.
    let r = Client::new()
        .get(app.url("/api/v1/stream/events"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("stream");
    assert_eq!(r.status(), StatusCode::OK);
    // More than the socket buffers between the server and this client can hold.
    const N: usize = 20_000;
    flood(&app, N).await;
    // The unread stream ends (the server closed it) instead of growing without bound.
    let mut body = Box::pin(r.bytes_stream());
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut received = 0usize;
    loop {
        match tokio::time::timeout(Duration::from_secs(5), body.next()).await {
            Ok(Some(Ok(chunk))) => received += chunk.len(),
            Ok(Some(Err(_))) | Ok(None) => break,
            Err(_) => panic!("the stream neither ended nor delivered"),
        }
        assert!(
            Instant::now() < deadline,
            "the slow client was never dropped ({received} bytes)"
        );
    }
    assert!(
        received < N * 1000,
        "a dropped client gets less than everything ({received} bytes)"
    );
    let stored = app.get_json("/api/v1/events?type=test.flood&limit=1").await;
    assert_eq!(
        stored["total"], N,
        "every event is stored even when a client is dropped"
    );
    app.stop().await;
}

/// Raises `n` large `test.flood` events and waits until all are stored.
pub(crate) async fn flood(app: &TestApp, n: usize) {
    let state = app.running.as_ref().expect("running").state.clone();
    for i in 0..n {
        state.emit(fleetgate_core::events::NewEvent::new(
            "test.flood",
            fleetgate_core::events::Severity::Info,
            format!("event {i} {}", "x".repeat(1000)),
        ));
        if (i + 1) % 1000 == 0 || i + 1 == n {
            // Let the writer store this chunk, so none is dropped from a full queue.
            let deadline = Instant::now() + Duration::from_secs(20);
            while app.get_json("/api/v1/events?type=test.flood&limit=1").await["total"].as_u64()
                < Some(i as u64 + 1)
            {
                assert!(Instant::now() < deadline, "events were not stored");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[tokio::test]
async fn events_past_the_retention_count_are_pruned() {
    let app = spawn_app().await;
    let r = app
        .admin(Method::PUT, "/api/v1/settings")
        .json(&json!({"events": {"max_events": 1000}, "api": {"rate_limit_per_minute": 0}}))
        .send()
        .await
        .expect("settings");
    assert_eq!(r.status(), StatusCode::OK);
    flood(&app, 1500).await;
    let total = app.get_json("/api/v1/events?limit=1").await["total"]
        .as_u64()
        .expect("total");
    assert!(total >= 1500, "{total}");
    let newest = app.get_json("/api/v1/events?type=test.flood&limit=1").await["items"][0]["id"]
        .as_i64()
        .expect("id");
    // Pruning runs at start and then hourly: restart the manager on the same store.
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
    let app = crate::support::spawn_with(config, _dir).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let kept = loop {
        let page = app.get_json("/api/v1/events?limit=1000").await;
        // The restart itself raises a few events (config.applied); at most the
        // configured count is kept of what was there, and the newest survive.
        if page["total"].as_u64().is_some_and(|t| t <= 1000 + 10) {
            break page;
        }
        assert!(
            Instant::now() < deadline,
            "events were never pruned: {}",
            page["total"]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let ids: Vec<i64> = kept["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|e| e["id"].as_i64())
        .collect();
    assert!(ids.contains(&newest), "the newest event is kept");
    assert!(
        ids.iter().all(|id| *id > newest - 1000),
        "only the newest are kept"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_selection_of_events_is_acknowledged_in_one_request() {
    let app = spawn_app().await;
    for i in 0..3 {
        let r = Client::new()
            .post(app.url("/api/v1/auth/login"))
            .json(&json!({"username": "admin", "password": format!("wrong-{i}")}))
            .send()
            .await
            .expect("login");
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let listed = loop {
        let l = app.get_json("/api/v1/events?type=auth.login_failed").await;
        if l["total"] == 3 {
            break l;
        }
        assert!(Instant::now() < deadline, "events were not stored: {l}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let ids: Vec<i64> = listed["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|e| e["id"].as_i64())
        .collect();
    let r = app
        .admin(Method::POST, "/api/v1/events/ack")
        .json(&json!({"ids": [ids[0], ids[1]]}))
        .send()
        .await
        .expect("ack");
    assert_eq!(r.json::<Value>().await.expect("json")["acknowledged"], 2);
    let open = app
        .get_json("/api/v1/events?type=auth.login_failed&acknowledged=false")
        .await;
    assert_eq!(open["total"], 1);
    assert_eq!(open["items"][0]["id"], ids[2]);
    for (body, why) in [
        (json!({"ids": [0]}), "positive"),
        (
            json!({"ids": (1..=1001).collect::<Vec<i64>>()}),
            "at most 1000",
        ),
    ] {
        let r = app
            .admin(Method::POST, "/api/v1/events/ack")
            .json(&body)
            .send()
            .await
            .expect("ack");
        let e = crate::support::expect_error(r, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await;
        assert!(
            e["error"]
                .as_str()
                .is_some_and(|m| m.starts_with("ids:") && m.contains(why)),
            "{e}"
        );
    }
    app.stop().await;
}
