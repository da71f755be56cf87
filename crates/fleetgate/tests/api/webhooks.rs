//! Webhooks against a local receiver: signed deliveries, retries with backoff, the
//! delivery log, redelivery, test deliveries, the private-address guard and disabling
//! after repeated failures.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::support::{expect_error, spawn_app, TestApp};

#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<(HeaderMap, String)>>>,
    /// Requests still to answer with 500.
    fail: Arc<AtomicUsize>,
}

async fn receiver() -> (Receiver, String) {
    let r = Receiver::default();
    let state = r.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: String| {
            let state = state.clone();
            async move {
                state.got.lock().expect("lock").push((headers, body));
                let failing = state
                    .fail
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok();
                if failing {
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    StatusCode::NO_CONTENT
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (r, url)
}

fn hmac_hex(secret: &str, body: &str) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("key");
    mac.update(body.as_bytes());
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

async fn settings(app: &TestApp, body: Value) {
    let r = app
        .admin(Method::PUT, "/api/v1/settings")
        .json(&body)
        .send()
        .await
        .expect("settings");
    assert_eq!(r.status(), StatusCode::OK, "{:?}", r.text().await);
}

async fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn signed_deliveries_retries_log_and_redelivery() {
    let app = spawn_app().await;
    let (rx, url) = receiver().await;
    // Private destinations are refused until the setting allows them.
    let r = app
        .admin(Method::POST, "/api/v1/webhooks")
        .json(&json!({"url": url}))
        .send()
        .await
        .expect("create");
    assert_eq!(
        expect_error(r, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await["details"]["field"],
        "url"
    );
    settings(&app, json!({"api": {"rate_limit_per_minute": 0}, "webhooks": {"allow_private_targets": true, "retry_base_ms": 50}})).await;
    let r = app
        .admin(Method::POST, "/api/v1/webhooks")
        .json(&json!({"url": url, "events": ["health.*", "config.changed"], "secret": "s3cret-value", "headers": {"X-Team": "ops"}}))
        .send()
        .await
        .expect("create");
    assert_eq!(r.status(), StatusCode::CREATED);
    let hook: Value = r.json().await.expect("json");
    assert!(hook.get("secret").is_none(), "a given secret is not echoed");
    assert_eq!(hook["headers"], json!(["x-team"]));
    let id = hook["id"].as_str().expect("id").to_string();
    let r = app
        .admin(Method::POST, "/api/v1/webhooks")
        .json(&json!({"url": url, "events": ["bad pattern"]}))
        .send()
        .await
        .expect("bad");
    assert_eq!(
        expect_error(r, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await["details"]["field"],
        "events[0]"
    );

    // A configuration change is delivered, signed; two failures are retried.
    rx.fail.store(2, Ordering::SeqCst);
    app.post_ok(
        "/api/v1/upstreams",
        json!({"name": "a", "targets": [{"url": "http://127.0.0.1:9"}]}),
    )
    .await;
    let got = rx.got.clone();
    let deliveries = wait_for("three attempts", || {
        let g = got.lock().expect("lock");
        (g.len() >= 3).then(|| g.clone())
    })
    .await;
    let (headers, body) = &deliveries[2];
    assert_eq!(
        headers["x-webhook-signature"].to_str().expect("sig"),
        hmac_hex("s3cret-value", body)
    );
    assert_eq!(headers["x-webhook-event"], "config.changed");
    assert_eq!(headers["x-team"], "ops");
    let delivery_id = headers["x-webhook-delivery"]
        .to_str()
        .expect("id")
        .to_string();
    assert!(
        deliveries
            .iter()
            .all(|(h, _)| h["x-webhook-delivery"] == delivery_id.as_str()),
        "retries keep the delivery id"
    );
    let payload: Value = serde_json::from_str(body).expect("json body");
    assert_eq!(payload["type"], "config.changed");
    assert!(payload["id"].as_i64().is_some() && payload["created_at"].is_string());
    assert_eq!(payload["data"]["type"], "config.changed");

    // The log shows every attempt.
    let log = wait_for_log(&app, &id, "success").await;
    let d = &log["items"][0];
    assert_eq!(
        (d["attempts"].as_i64(), d["last_status_code"].as_i64()),
        (Some(3), Some(204))
    );
    let codes: Vec<i64> = d["attempt_log"]
        .as_array()
        .expect("log")
        .iter()
        .filter_map(|a| a["status_code"].as_i64())
        .collect();
    assert_eq!(codes, vec![500, 500, 204]);

    // Redelivery sends the same delivery again.
    let r = app
        .admin(
            Method::POST,
            &format!("/api/v1/webhooks/{id}/deliveries/{delivery_id}/redeliver"),
        )
        .send()
        .await
        .expect("redeliver");
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    wait_for("the redelivery", || {
        (got.lock().expect("lock").len() >= 4).then_some(())
    })
    .await;
    assert_eq!(
        got.lock().expect("lock")[3].0["x-webhook-delivery"],
        delivery_id.as_str()
    );

    // A test delivery, sent at once and logged.
    let r = app
        .admin(Method::POST, &format!("/api/v1/webhooks/{id}/test"))
        .send()
        .await
        .expect("test");
    let t: Value = r.json().await.expect("json");
    assert_eq!(
        (
            t["status"].as_str(),
            t["type"].as_str(),
            t["last_status_code"].as_i64()
        ),
        (Some("success"), Some("webhook.test"), Some(204))
    );
    // Events the webhook does not subscribe to are not delivered.
    let before = got.lock().expect("lock").len();
    let r = app
        .anon(Method::POST, "/api/v1/auth/login")
        .json(&json!({"username": "admin", "password": "nope"}))
        .send()
        .await
        .expect("login");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(got.lock().expect("lock").len(), before);
    app.stop().await;
}

async fn wait_for_log(app: &TestApp, id: &str, status: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = app
            .get_json(&format!("/api/v1/webhooks/{id}/deliveries"))
            .await;
        if log["items"][0]["status"] == status {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "delivery never reached {status}: {log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until exactly `n` events of `event_type` are stored (and stay `n`).
async fn wait_for_events(app: &TestApp, event_type: &str, n: u64) {
    let path = format!("/api/v1/events?type={event_type}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let total = app.get_json(&path).await["total"].as_u64();
        if total == Some(n) {
            break;
        }
        assert!(
            Instant::now() < deadline && total < Some(n),
            "{total:?} {event_type} events, expected {n}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn failing_endpoints_give_up_and_are_disabled_with_events() {
    let app = spawn_app().await;
    settings(&app, json!({"api": {"rate_limit_per_minute": 0}, "webhooks": {"allow_private_targets": true, "retry_base_ms": 20, "max_attempts": 2, "disable_after_failures": 4}})).await;
    // Nothing listens on this port.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let hook: Value = app
        .post_ok(
            "/api/v1/webhooks",
            json!({"url": format!("http://{closed}/x"), "events": ["config.changed"]}),
        )
        .await;
    assert!(
        hook["secret"]
            .as_str()
            .is_some_and(|s| s.starts_with("whsec_")),
        "a generated secret is shown once"
    );
    let id = hook["id"].as_str().expect("id");
    app.post_ok(
        "/api/v1/upstreams",
        json!({"name": "a", "targets": [{"url": "http://127.0.0.1:9"}]}),
    )
    .await;
    let log = wait_for_log(&app, id, "failed").await;
    assert_eq!(log["items"][0]["attempts"], 2);
    assert!(log["items"][0]["last_error"]
        .as_str()
        .is_some_and(|e| e.contains("request failed")));
    // Events are stored a moment after they are raised.
    wait_for_events(&app, "webhook.delivery_failed", 1).await;
    app.post_ok(
        "/api/v1/upstreams",
        json!({"name": "b", "targets": [{"url": "http://127.0.0.1:9"}]}),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let h = app.get_json(&format!("/api/v1/webhooks/{id}")).await;
        if h["enabled"] == false {
            assert!(
                h["disabled_reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("4 failed")),
                "{h}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the webhook was never disabled: {h}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_for_events(&app, "webhook.disabled", 1).await;
    app.stop().await;
}

#[tokio::test]
async fn pending_deliveries_survive_a_restart() {
    let app = spawn_app().await;
    settings(&app, json!({"api": {"rate_limit_per_minute": 0}, "webhooks": {"allow_private_targets": true, "retry_base_ms": 1500}})).await;
    // The receiver's port is free now: the first attempt fails and a retry is queued.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let hook: Value = app
        .post_ok("/api/v1/webhooks", json!({"url": format!("http://127.0.0.1:{port}/hook"), "events": ["config.changed"], "secret": "restart-secret"}))
        .await;
    let id = hook["id"].as_str().expect("id").to_string();
    app.post_ok(
        "/api/v1/upstreams",
        json!({"name": "a", "targets": [{"url": "http://127.0.0.1:9"}]}),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = app
            .get_json(&format!("/api/v1/webhooks/{id}/deliveries"))
            .await;
        if log["items"][0]["attempts"] == 1 {
            assert_eq!(log["items"][0]["status"], "pending");
            break;
        }
        assert!(Instant::now() < deadline, "no first attempt: {log}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Stop the manager with the retry pending, bring the receiver up, start again.
    let TestApp {
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
    let got: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = got.clone();
    let receiver = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: String| {
            let sink = sink.clone();
            async move {
                sink.lock().expect("lock").push(body);
                StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("rebind the receiver port");
    tokio::spawn(async move { axum::serve(listener, receiver).await });
    let app = crate::support::spawn_with(config, _dir).await;
    wait_for("the resumed delivery", || {
        (!got.lock().expect("lock").is_empty()).then_some(())
    })
    .await;
    let payload: Value = serde_json::from_str(&got.lock().expect("lock")[0]).expect("json");
    assert_eq!(payload["type"], "config.changed");
    let log = wait_for_log(&app, &id, "success").await;
    assert_eq!(log["items"][0]["attempts"], 2);
    app.stop().await;
}
