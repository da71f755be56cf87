//! Health probes and metrics.

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::support::{config_in, spawn_app, spawn_with};

#[tokio::test]
async fn probes_answer_without_auth() {
    let app = spawn_app().await;
    let h: Value = app
        .anon(Method::GET, "/health")
        .send()
        .await
        .expect("req")
        .json()
        .await
        .expect("json");
    assert_eq!(h["status"], "ok");
    assert_eq!(h["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(h["store"], "sqlite");
    let r = app
        .anon(Method::GET, "/health/live")
        .send()
        .await
        .expect("req");
    assert_eq!(r.status(), StatusCode::OK);
    let ready: Value = app
        .anon(Method::GET, "/health/ready")
        .send()
        .await
        .expect("req")
        .json()
        .await
        .expect("json");
    assert_eq!(ready["status"], "ok");
    assert_eq!(ready["checks"]["store"]["status"], "ok");
    assert_eq!(ready["checks"]["migrations"]["status"], "ok");
    let deep: Value = app
        .anon(Method::GET, "/health/deep")
        .send()
        .await
        .expect("req")
        .json()
        .await
        .expect("json");
    assert_eq!(deep["checks"]["store"]["status"], "ok");
    assert!(deep["checks"]["store"]["latency_ms"].as_f64().is_some());
    assert_eq!(deep["checks"]["redis"]["status"], "not_configured");
    assert_eq!(deep["checks"]["nats"]["status"], "not_configured");
    let r = app
        .anon(Method::GET, "/health/ping")
        .send()
        .await
        .expect("req");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    app.stop().await;
}

#[tokio::test]
async fn deep_health_checks_redis_and_nats_when_configured() {
    let (Ok(redis), Ok(nats)) = (
        std::env::var("FLEETGATE_TEST_REDIS_URL"),
        std::env::var("FLEETGATE_TEST_NATS_URL"),
    ) else {
        eprintln!(
            "skipping: FLEETGATE_TEST_REDIS_URL and FLEETGATE_TEST_NATS_URL are not both set"
        );
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = config_in(dir.path());
    config.redis.url = Some(redis);
    config.nats.url = Some(nats);
    let app = spawn_with(config, dir).await;
    let r = app
        .anon(Method::GET, "/health/deep")
        .send()
        .await
        .expect("req");
    assert_eq!(r.status(), StatusCode::OK);
    let deep: Value = r.json().await.expect("json");
    assert_eq!(deep["checks"]["redis"]["status"], "ok", "{deep}");
    assert_eq!(deep["checks"]["nats"]["status"], "ok", "{deep}");
    assert!(deep["checks"]["redis"]["latency_ms"].as_f64().is_some());
    app.stop().await;

    // An unreachable dependency makes the deep probe fail with 503, naming it.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = config_in(dir.path());
    config.redis.url = Some("redis://127.0.0.1:1".into());
    let app = spawn_with(config, dir).await;
    let r = app
        .anon(Method::GET, "/health/deep")
        .send()
        .await
        .expect("req");
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let deep: Value = r.json().await.expect("json");
    assert_eq!(deep["checks"]["redis"]["status"], "error");
    assert!(deep["checks"]["redis"]["error"].is_string());
    app.stop().await;
}

#[tokio::test]
async fn prometheus_metrics_count_api_requests_by_route() {
    let app = spawn_app().await;
    for _ in 0..3 {
        app.admin(Method::GET, "/api/v1/revisions")
            .send()
            .await
            .expect("req");
    }
    app.admin(Method::GET, "/api/v1/users/does-not-exist")
        .send()
        .await
        .expect("req");
    for path in ["/prometheus/metrics", "/metrics"] {
        let r = app.admin(Method::GET, path).send().await.expect("req");
        assert_eq!(r.status(), StatusCode::OK);
        assert!(r.headers()["content-type"]
            .to_str()
            .expect("ascii")
            .starts_with("text/plain"));
        let text = r.text().await.expect("text");
        assert!(text.contains(r#"fleetgate_api_requests_total{method="GET",route="/api/v1/revisions",status="200"} 3"#), "{text}");
        // Route templates, not raw paths: ids never become label values.
        assert!(
            text.contains(r#"route="/api/v1/users/{id}",status="404""#),
            "{text}"
        );
        assert!(!text.contains("does-not-exist"));
        assert!(text.contains("fleetgate_api_request_duration_seconds_bucket"));
        assert!(text.contains("fleetgate_store_pool_connections{state=\"max\"} 8"));
    }
    app.stop().await;
}

#[tokio::test]
async fn builtin_gateway_answers_json_404_until_routes_exist() {
    let app = spawn_app().await;
    let gw = app.gateway.expect("serve runs the gateway");
    let r = reqwest::Client::new()
        .get(format!("http://{gw}/some/path"))
        .header("x-request-id", "gw-1")
        .send()
        .await
        .expect("req");
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(r.headers()["x-request-id"], "gw-1");
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["code"], "ROUTE_NOT_FOUND");
    assert_eq!(body["details"]["revision"], 0);
    app.stop().await;
}
