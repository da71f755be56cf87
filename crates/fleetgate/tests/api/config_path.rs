//! The one configuration path, end to end: an API write is judged inside its
//! transaction, committed as a revision, published as exactly that revision,
//! applied by the gateway, and reported back on the data plane's status
//! (`GET /api/v1/data-plane`). Replicas sharing a store serve a revision written on
//! another manager: told over NATS, or by polling without it.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::scale_out::pair_on;
use crate::support::{postgres_schema_url, send, spawn_app, TestApp};

async fn latest_revision(app: &TestApp) -> i64 {
    let v = app.get_json("/api/v1/revisions?limit=1").await;
    v["items"][0]["number"].as_i64().unwrap_or(0)
}

/// Waits until the data plane reports `revision` applied; returns its status.
async fn applied(app: &TestApp, revision: i64, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let v = app.get_json("/api/v1/data-plane").await;
        if v["status"]["applied"]["revision"].as_i64() == Some(revision) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "revision {revision} never applied: {v}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An upstream answering every request with `name`.
async fn upstream(name: &'static str) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = axum::Router::new().fallback(move || async move { name });
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

async fn through_gateway(app: &TestApp, path: &str) -> (u16, String) {
    let gw = app.gateway.expect("gateway");
    let r = reqwest::Client::new()
        .get(format!("http://{gw}{path}"))
        .send()
        .await
        .expect("gateway request");
    (r.status().as_u16(), r.text().await.unwrap_or_default())
}

#[tokio::test]
async fn a_write_is_served_as_its_committed_revision_and_reported_back() {
    let app = spawn_app().await;
    let before = latest_revision(&app).await;
    let a = upstream("a").await;
    let (s, v) = send(
        &app,
        Method::POST,
        "/api/v1/upstreams",
        Some(json!({"name": "a", "targets": [{"url": format!("http://{a}")}]})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = send(
        &app,
        Method::POST,
        "/api/v1/routes",
        Some(json!({"id": "r1", "path": "/one", "upstream": "a"})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let revision = latest_revision(&app).await;
    assert_eq!(revision, before + 2, "one revision per write");

    // The data plane applied exactly that revision and says so.
    let dp = applied(&app, revision, Duration::from_secs(5)).await;
    assert_eq!(dp["published_revision"], json!(revision));
    assert_eq!(dp["in_sync"], json!(true));
    assert_eq!(dp["status"]["routes"], json!(1));
    assert_eq!(dp["status"]["errors"], json!([]));
    let up = &dp["status"]["upstreams"];
    assert!(
        up.as_array()
            .expect("upstreams")
            .iter()
            .any(|u| u["name"] == "a" && u["breaker"]["state"] == "closed"),
        "{up}"
    );
    assert_eq!(through_gateway(&app, "/one").await, (200, "a".into()));

    // The revision's stored document is the one served: the route is in it.
    let rev = app.get_json(&format!("/api/v1/revisions/{revision}")).await;
    assert_eq!(rev["document"]["routes"][0]["id"], "r1");

    // A delete is a revision too, and the gateway stops serving the route.
    let (s, _) = send(&app, Method::DELETE, "/api/v1/routes/r1", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    applied(&app, revision + 1, Duration::from_secs(5)).await;
    assert_eq!(through_gateway(&app, "/one").await.0, 404);
    app.stop().await;
}

#[tokio::test]
async fn a_change_the_gateway_cannot_compile_is_refused_and_nothing_is_written() {
    let app = spawn_app().await;
    let a = upstream("a").await;
    let (s, _) = send(
        &app,
        Method::POST,
        "/api/v1/upstreams",
        Some(json!({"name": "a", "targets": [{"url": format!("http://{a}")}]})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    let revision = latest_revision(&app).await;
    let audit_before = app.get_json("/api/v1/audit?limit=1").await["total"].clone();

    // A route whose upstream does not exist: the whole document does not compile.
    let (s, v) = send(
        &app,
        Method::POST,
        "/api/v1/routes",
        Some(json!({"id": "orphan", "path": "/o", "upstream": "missing"})),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        v.to_string().contains("missing"),
        "the error names the upstream: {v}"
    );
    // Deleting an upstream a route uses is refused with the route named.
    let (s, _) = send(
        &app,
        Method::POST,
        "/api/v1/routes",
        Some(json!({"id": "user", "path": "/u", "upstream": "a"})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    let revision_with_route = latest_revision(&app).await;
    let (s, v) = send(&app, Method::DELETE, "/api/v1/upstreams/a", None).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(v["error"].as_str().unwrap_or("").contains("user"), "{v}");

    // Only the route creation landed: one revision, one audit entry.
    assert_eq!(latest_revision(&app).await, revision + 1);
    assert_eq!(revision_with_route, revision + 1);
    let audit_after = app.get_json("/api/v1/audit?limit=1").await["total"].clone();
    assert_eq!(
        audit_after.as_i64().unwrap_or(0),
        audit_before.as_i64().unwrap_or(0) + 1,
        "refused writes leave no audit entry"
    );
    app.stop().await;
}

#[tokio::test]
async fn racing_writes_are_judged_against_the_document_they_replace() {
    let app = spawn_app().await;
    let a = upstream("a").await;
    for round in 0..6 {
        let name = format!("u{round}");
        let (s, _) = send(
            &app,
            Method::POST,
            "/api/v1/upstreams",
            Some(json!({"name": name, "targets": [{"url": format!("http://{a}")}]})),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED);
        // A route that needs the upstream, and the upstream's deletion, at once.
        let route =
            json!({"id": format!("r{round}"), "path": format!("/r{round}"), "upstream": name});
        let create = send(&app, Method::POST, "/api/v1/routes", Some(route));
        let delete_path = format!("/api/v1/upstreams/{name}");
        let delete = send(&app, Method::DELETE, &delete_path, None);
        let ((cs, cv), (ds, dv)) = tokio::join!(create, delete);
        let created = cs == StatusCode::CREATED;
        let deleted = ds == StatusCode::NO_CONTENT;
        assert!(
            created != deleted,
            "round {round}: exactly one may land (create {cs} {cv}, delete {ds} {dv})"
        );
        // Whatever landed is what the stored document and the gateway agree on.
        let doc = app.get_json("/api/v1/export").await;
        let has_route = doc["routes"]
            .as_array()
            .is_some_and(|r| r.iter().any(|r| r["upstream"] == json!(name)));
        let has_upstream = doc["upstreams"]
            .as_array()
            .is_some_and(|u| u.iter().any(|u| u["name"] == json!(name)));
        assert_eq!(
            (has_route, has_upstream),
            (created, !deleted),
            "round {round}"
        );
        let revision = latest_revision(&app).await;
        applied(&app, revision, Duration::from_secs(5)).await;
        if created {
            assert_eq!(through_gateway(&app, &format!("/r{round}")).await.0, 200);
        }
    }
    app.stop().await;
}

async fn revision_crosses_replicas(a: &TestApp, b: &TestApp, within: Duration) {
    let up = upstream("replicated").await;
    let (s, _) = send(
        a,
        Method::POST,
        "/api/v1/upstreams",
        Some(json!({"name": "rep", "targets": [{"url": format!("http://{up}")}]})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, _) = send(
        a,
        Method::POST,
        "/api/v1/routes",
        Some(json!({"id": "rep", "path": "/rep", "upstream": "rep"})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    let revision = latest_revision(a).await;
    let started = Instant::now();
    let dp = applied(b, revision, within).await;
    eprintln!(
        "revision {revision} applied on the other manager after {:?}",
        started.elapsed()
    );
    assert_eq!(dp["published_revision"], json!(revision));
    assert_eq!(through_gateway(b, "/rep").await, (200, "replicated".into()));
}

#[tokio::test]
async fn a_revision_written_on_one_manager_is_served_by_another_over_nats() {
    let Ok(nats) = std::env::var("FLEETGATE_TEST_NATS_URL") else {
        eprintln!("skipping: FLEETGATE_TEST_NATS_URL is not set");
        return;
    };
    let Some(url) = postgres_schema_url().await else {
        return;
    };
    let (a, b) = pair_on(&url, Some(&nats)).await;
    // With NATS the store is polled only every 30 s: arriving within a few
    // seconds shows the word came over NATS.
    revision_crosses_replicas(&a, &b, Duration::from_secs(5)).await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_revision_written_on_one_manager_is_served_by_another_by_polling() {
    let Some(url) = postgres_schema_url().await else {
        return;
    };
    let (a, b) = pair_on(&url, None).await;
    revision_crosses_replicas(&a, &b, Duration::from_secs(5)).await;
    a.stop().await;
    b.stop().await;
}
