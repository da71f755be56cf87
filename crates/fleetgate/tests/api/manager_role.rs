//! The `manager` role in process (`fleetgate::start` without the gateway): the
//! manager API works, and no data plane runs — no gateway port, no revision
//! compiled, no active health check sent, no `config.applied`/`health.*` event.
//! The same setup under `serve` is the control that shows the probes are real.

use std::time::{Duration, Instant};

use reqwest::{Client, StatusCode};
use serde_json::{json, Value};

use crate::support::{
    config_in, expect_error, listening, postgres_schema_url, unused_port, ConnectionCounter,
    ADMIN_PASSWORD, TOKEN,
};

/// Health-check interval of the test upstream: short, so that a few intervals pass
/// quickly.
const INTERVAL_MS: u64 = 200;

struct Started {
    running: fleetgate::Running,
    gateway_port: u16,
    tls_port: u16,
    _dir: tempfile::TempDir,
}

/// Starts Fleetgate in process with the gateway on fixed free ports (not port 0,
/// so that the test can tell whether anything listens there). A port found free
/// can be taken by a parallel test before Fleetgate binds it: then new ports are
/// tried.
async fn start(with_gateway: bool, database_url: Option<String>) -> Started {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = config_in(dir.path());
        config.database.url = database_url.clone();
        let (gateway_port, tls_port) = (unused_port(), unused_port());
        config.gateway.listen = ([127, 0, 0, 1], gateway_port).into();
        config.gateway.tls_listen = ([127, 0, 0, 1], tls_port).into();
        let secrets = fleetgate::BootstrapSecrets {
            admin_password: Some(ADMIN_PASSWORD.into()),
            bootstrap_token: Some(TOKEN.into()),
        };
        match fleetgate::start(config, secrets, with_gateway, std::future::pending()).await {
            Ok(running) => {
                return Started {
                    running,
                    gateway_port,
                    tls_port,
                    _dir: dir,
                }
            }
            Err(e) if attempt < 5 && format!("{e:#}").contains("Address already in use") => {
                continue
            }
            Err(e) => panic!("fleetgate starts: {e:#}"),
        }
    }
}

async fn get(base: &str, path: &str) -> (StatusCode, Value) {
    let r = Client::new()
        .get(format!("{base}{path}"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("request");
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn post(base: &str, path: &str, body: Value) -> Value {
    let r = Client::new()
        .post(format!("{base}{path}"))
        .bearer_auth(TOKEN)
        .json(&body)
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), StatusCode::CREATED, "POST {path}");
    r.json().await.expect("json")
}

async fn latest_revision(base: &str) -> i64 {
    let (status, v) = get(base, "/api/v1/revisions?limit=1").await;
    assert_eq!(status, StatusCode::OK, "{v}");
    v["items"][0]["number"].as_i64().unwrap_or(0)
}

/// Creates an upstream with an active health check aimed at `target` and a route
/// to it; asserts each write made a new revision and returns the newest one.
async fn configure(base: &str, target: &ConnectionCounter) -> i64 {
    let before = latest_revision(base).await;
    post(
        base,
        "/api/v1/upstreams",
        json!({"name": "probed", "targets": [{"url": target.url()}],
               "health_check": {"active": {"path": "/health", "interval_ms": INTERVAL_MS,
                   "timeout_ms": 500, "healthy_threshold": 1, "unhealthy_threshold": 1}}}),
    )
    .await;
    assert_eq!(latest_revision(base).await, before + 1, "upstream revision");
    post(
        base,
        "/api/v1/routes",
        json!({"id": "to-probed", "path": "/", "upstream": "probed"}),
    )
    .await;
    let after = latest_revision(base).await;
    assert_eq!(after, before + 2, "route revision");
    after
}

async fn events_of(base: &str, query: &str) -> Value {
    let (status, v) = get(base, &format!("/api/v1/events?{query}")).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    v
}

/// Waits until at least `n` events match `query` (events are stored in the
/// background, a moment after they are raised).
async fn eventually_events(base: &str, query: &str, n: i64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let v = events_of(base, query).await;
        if v["total"].as_i64().is_some_and(|t| t >= n) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "fewer than {n} events {query}: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The whole check of the manager role on one store.
async fn manager_runs_no_data_plane(database_url: Option<String>) {
    let target = ConnectionCounter::spawn();
    let s = start(false, database_url).await;
    let base = format!("http://{}", s.running.manager_addr);
    assert_eq!(s.running.gateway_addr, None);
    assert_eq!(s.running.gateway_tls_addr, None);
    assert!(!listening(s.gateway_port), "gateway.listen is not bound");
    assert!(!listening(s.tls_port), "gateway.tls_listen is not bound");

    let revision = configure(&base, &target).await;
    let (status, health) = get(&base, "/health").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(health["revision"], revision, "{health}");
    assert!(health["gateway_revision"].is_null(), "{health}");

    // Several health-check intervals pass without a single probe reaching the target.
    tokio::time::sleep(Duration::from_millis(INTERVAL_MS * 6)).await;
    assert_eq!(target.connections(), 0, "a health check reached the target");

    // Nothing raised the events a local data plane would.
    assert_eq!(
        events_of(&base, "type=config.applied").await["total"],
        0,
        "config.applied"
    );
    assert_eq!(
        events_of(&base, "category=health").await["total"],
        0,
        "health.*"
    );
    eventually_events(&base, "type=config.changed", 2).await;

    // What the API shows of the data plane says plainly that none runs here.
    let (status, m) = get(&base, "/api/v1/metrics").await;
    assert_eq!(status, StatusCode::OK, "{m}");
    assert_eq!(m["data_plane"], false, "{m}");
    assert!(m["revision"].is_null(), "{m}");
    assert_eq!(m["upstreams"], json!([]), "{m}");
    assert_eq!(m["breakers"], json!([]), "{m}");
    let (status, t) = get(&base, "/api/v1/troubleshooting/health").await;
    assert_eq!(status, StatusCode::OK, "{t}");
    assert!(t["gateway_revision"].is_null(), "{t}");
    assert_eq!(t["open_breakers"], json!([]), "{t}");
    assert_eq!(t["unhealthy_targets"], json!([]), "{t}");
    let (status, c) = get(&base, "/api/v1/troubleshooting/connections").await;
    assert_eq!(status, StatusCode::OK, "{c}");
    assert_eq!(c["upstreams"], json!([]), "{c}");
    for path in [
        "/api/v1/circuit-breakers",
        "/api/v1/upstreams/probed/health",
    ] {
        let r = Client::new()
            .get(format!("{base}{path}"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("request");
        expect_error(r, StatusCode::SERVICE_UNAVAILABLE, "NO_DATA_PLANE").await;
    }
    let r = Client::new()
        .get(format!("{base}/prometheus/metrics"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("metrics");
    assert_eq!(r.status(), StatusCode::OK);
    let text = r.text().await.expect("text");
    assert!(
        !text.contains("probed"),
        "no data-plane series for the upstream:\n{text}"
    );

    assert_eq!(target.connections(), 0, "a health check reached the target");
    s.running.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn manager_role_runs_no_gateway_and_no_health_checks_sqlite() {
    manager_runs_no_data_plane(None).await;
}

#[tokio::test]
async fn manager_role_runs_no_gateway_and_no_health_checks_postgres() {
    let Some(url) = postgres_schema_url().await else {
        return;
    };
    manager_runs_no_data_plane(Some(url)).await;
}

/// The control: the same configuration under `serve` is probed, applied and
/// served, so the zero above is not an artefact of the test's target.
#[tokio::test]
async fn serve_role_probes_the_same_upstream() {
    let target = ConnectionCounter::spawn();
    let s = start(true, None).await;
    let base = format!("http://{}", s.running.manager_addr);
    assert!(listening(s.gateway_port), "gateway.listen is bound");
    let revision = configure(&base, &target).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, health) = get(&base, "/health").await;
        if health["gateway_revision"] == revision && target.connections() > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway did not apply and probe: {health}, {} connections",
            target.connections()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, m) = get(&base, "/api/v1/upstreams/probed/health").await;
    assert_eq!(status, StatusCode::OK, "{m}");
    assert!(m[0]["last_check"].is_string(), "{m}");
    eventually_events(&base, "type=config.applied", 1).await;
    s.running.shutdown().await.expect("clean shutdown");
}
