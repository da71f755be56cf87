//! Config sync to Fleetgate edges: the real `fleetgate::start_edge` against a real
//! manager (`fleetgate::start`) over the TLS node listener, with a local upstream:
//! registration, a route served by the edge within a second of its creation, an
//! invalid snapshot nacked while the old one keeps serving, and the edge serving
//! its stored snapshot with the manager gone (also after a restart of its own),
//! then reconciling when the manager is back.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetgate::config::Config;
use fleetgate::{BootstrapSecrets, RunningEdge};
use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};

use crate::support::{config_in, spawn_with, TestApp};
use crate::upstream;

/// An edge's configuration for the manager of `app`, trusting the manager's
/// generated certificate (`node-tls.crt`, checked for `localhost`).
pub fn edge_config(app: &TestApp, dir: &std::path::Path, token: Option<String>) -> Config {
    let node_port = app.running.as_ref().expect("running").node_addr.port();
    let mut c = config_in(dir);
    c.edge.manager_url = Some(format!("wss://localhost:{node_port}"));
    c.edge.token = token;
    c.edge.ca_cert = Some(app.config.data_dir.join("node-tls.crt"));
    c
}

pub async fn create_node(app: &TestApp, name: &str) -> (String, String) {
    let r = app
        .admin(Method::POST, "/api/v1/nodes")
        .json(&json!({"name": name}))
        .send()
        .await
        .expect("create node");
    assert_eq!(r.status(), StatusCode::CREATED);
    let v: Value = r.json().await.expect("json");
    (
        v["id"].as_str().expect("id").to_string(),
        v["registration_token"].as_str().expect("token").to_string(),
    )
}

async fn add_route(app: &TestApp, id: &str, path: &str, upstream: &str) {
    let r = app
        .admin(Method::POST, "/api/v1/routes")
        .json(&json!({"id": id, "path": path, "upstream": upstream}))
        .send()
        .await
        .expect("route");
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "{}",
        r.text().await.unwrap_or_default()
    );
}

/// Waits until the node's view satisfies `ok`; returns it.
pub async fn node_until(app: &TestApp, id: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = app.get_json(&format!("/api/v1/nodes/{id}")).await;
        if ok(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "node never {what}: {v}");
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

fn in_sync(v: &Value) -> bool {
    v["status"] == "online" && v["config"]["in_sync"] == true
}

async fn status_of(edge: &RunningEdge, path: &str) -> Option<StatusCode> {
    Client::new()
        .get(format!("http://{}{path}", edge.gateway_addr))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()
        .map(|r| r.status())
}

/// Waits until the edge answers `path` with `want`; returns how long it took.
async fn edge_serves(
    edge: &RunningEdge,
    path: &str,
    want: StatusCode,
    within: Duration,
) -> Duration {
    let start = Instant::now();
    loop {
        let got = status_of(edge, path).await;
        if got == Some(want) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "the edge answers {path} with {got:?}, not {want}, after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A manager without the API rate limit, for tests that poll the nodes' stats, and
/// its data directory (the caller keeps it while the manager runs).
pub async fn start_unlimited_manager() -> (TestApp, tempfile::TempDir) {
    let mdir = tempfile::tempdir().expect("tempdir");
    let app = spawn_with(
        config_in(mdir.path()),
        tempfile::tempdir().expect("tempdir"),
    )
    .await;
    let r = app
        .admin(Method::PUT, "/api/v1/settings")
        .json(&json!({"api": {"rate_limit_per_minute": 0}}))
        .send()
        .await
        .expect("settings");
    assert_eq!(r.status(), StatusCode::OK);
    (app, mdir)
}

async fn start_manager(config: Config) -> TestApp {
    // The data directory belongs to the test (it outlives a manager restart).
    spawn_with(config, tempfile::tempdir().expect("tempdir")).await
}

#[tokio::test]
async fn an_edge_registers_and_serves_a_route_within_a_second_of_its_creation() {
    let mdir = tempfile::tempdir().expect("tempdir");
    let app = start_manager(config_in(mdir.path())).await;
    let up = upstream::spawn("svc").await;
    let (node_id, token) = create_node(&app, "edge-a").await;
    let edir = tempfile::tempdir().expect("tempdir");
    let edge = fleetgate::start_edge(
        edge_config(&app, edir.path(), Some(token.clone())),
        std::future::pending(),
    )
    .await
    .expect("edge starts");
    let v = node_until(&app, &node_id, "in sync", in_sync).await;
    assert_eq!(v["config"]["last_error"], Value::Null);

    // The identity is kept private, without the token.
    let id_file = edir.path().join("edge-node.json");
    let text = std::fs::read_to_string(&id_file).expect("identity stored");
    assert!(text.contains(&node_id) && !text.contains(&token));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&id_file)
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    let created = Instant::now();
    add_route(&app, "r", "/", &up.url()).await;
    let took = edge_serves(&edge, "/", StatusCode::OK, Duration::from_secs(5)).await;
    let since_create = created.elapsed();
    assert!(
        since_create < Duration::from_secs(1),
        "served {took:?} after the write returned, {since_create:?} after it began"
    );
    let revision = app.running.as_ref().expect("running").state.revision();
    let v = node_until(&app, &node_id, "applied the route", |v| {
        v["config"]["applied_revision"] == revision
    })
    .await;
    assert_eq!(v["config"]["desired_revision"], revision);
    assert_eq!(v["config"]["in_sync"], true);
    // After the first snapshot, a change goes as the changes alone.
    assert_eq!(v["config"]["sent_as"], "delta", "{v}");
    // The applied snapshot is on disk, private (it may hold certificate keys).
    let snap = edir.path().join("edge-snapshot.json");
    let stored: Value =
        serde_json::from_slice(&std::fs::read(&snap).expect("snapshot stored")).expect("json");
    assert_eq!(stored["revision"], revision);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&snap).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    edge.shutdown().await.expect("edge stops");
    app.stop().await;
}

#[tokio::test]
async fn an_invalid_snapshot_is_nacked_and_the_previous_one_keeps_serving() {
    let mdir = tempfile::tempdir().expect("tempdir");
    let app = start_manager(config_in(mdir.path())).await;
    let up = upstream::spawn("svc").await;
    add_route(&app, "r", "/", &up.url()).await;
    let (node_id, token) = create_node(&app, "edge-b").await;
    let edir = tempfile::tempdir().expect("tempdir");
    let edge = fleetgate::start_edge(
        edge_config(&app, edir.path(), Some(token)),
        std::future::pending(),
    )
    .await
    .expect("edge starts");
    node_until(&app, &node_id, "in sync", in_sync).await;
    edge_serves(&edge, "/", StatusCode::OK, Duration::from_secs(5)).await;

    // The manager checks every write, so an invalid document is pushed by hand
    // onto its data-plane input: a route whose upstream does not exist.
    let state = &app.running.as_ref().expect("running").state;
    let good = state.feed.current();
    let mut bad = (*good.gateway).clone();
    let mut route = bad.routes[0].clone();
    route.id = "broken".into();
    route.path = "/broken".into();
    route.upstream = "no-such-pool".into();
    bad.routes.push(route);
    let bad_revision = good.revision + 1;
    assert!(state.feed.publish_revision(bad_revision, Arc::new(bad)));

    let v = node_until(&app, &node_id, "nacked", |v| {
        v["config"]["error_revision"] == bad_revision
    })
    .await;
    let error = v["config"]["last_error"].as_str().expect("error");
    assert!(error.contains("no-such-pool"), "{error}");
    assert_eq!(v["config"]["applied_revision"], good.revision);
    assert_eq!(v["config"]["in_sync"], false);
    // The previous configuration still serves.
    assert_eq!(status_of(&edge, "/").await, Some(StatusCode::OK));
    // The next revision is a delta from the refused snapshot, which the edge does
    // not hold: it says what it serves and gets the whole snapshot. (The store's
    // next revision has the refused one's number, so the data plane skips it: the
    // second write is the next revision out.)
    add_route(&app, "s", "/s", &up.url()).await;
    add_route(&app, "t", "/t", &up.url()).await;
    let v = node_until(&app, &node_id, "in sync again", in_sync).await;
    assert_eq!(v["config"]["applied_revision"], bad_revision + 1, "{v}");
    assert_eq!(v["config"]["sent_as"], "snapshot", "{v}");
    assert_eq!(v["config"]["last_error"], Value::Null);
    edge_serves(&edge, "/t", StatusCode::OK, Duration::from_secs(5)).await;
    // The refusal is an event.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let events = app
            .get_json(&format!(
                "/api/v1/events?type=node.config_rejected&node_id={node_id}"
            ))
            .await;
        if events["total"].as_u64().is_some_and(|n| n > 0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no node.config_rejected event: {events}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    edge.shutdown().await.expect("edge stops");
    app.stop().await;
}

#[tokio::test]
async fn without_the_manager_the_edge_serves_its_stored_snapshot_and_reconciles_later() {
    let mdir = tempfile::tempdir().expect("tempdir");
    let mut mconfig = config_in(mdir.path());
    let mut app = start_manager(mconfig.clone()).await;
    let node_port = app.running.as_ref().expect("running").node_addr.port();
    let up = upstream::spawn("svc").await;
    add_route(&app, "one", "/one", &up.url()).await;
    let (node_id, token) = create_node(&app, "edge-c").await;
    let edir = tempfile::tempdir().expect("tempdir");
    let econfig = edge_config(&app, edir.path(), Some(token));
    let edge = fleetgate::start_edge(econfig.clone(), std::future::pending())
        .await
        .expect("edge starts");
    node_until(&app, &node_id, "in sync", in_sync).await;
    edge_serves(&edge, "/one", StatusCode::OK, Duration::from_secs(5)).await;

    // The manager goes away: the edge keeps serving.
    if let Some(r) = app.running.take() {
        r.shutdown().await.expect("manager stops");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(status_of(&edge, "/one").await, Some(StatusCode::OK));

    // The edge restarts while the manager is away: it serves from disk, and the
    // registration token is no longer needed (its identity is stored).
    edge.shutdown().await.expect("edge stops");
    let mut again = econfig.clone();
    again.edge.token = None;
    let edge = fleetgate::start_edge(again, std::future::pending())
        .await
        .expect("edge restarts");
    assert_eq!(status_of(&edge, "/one").await, Some(StatusCode::OK));
    assert_eq!(status_of(&edge, "/two").await, Some(StatusCode::NOT_FOUND));

    // The manager comes back on the same node port and store, with a change the
    // edge has not seen: the edge reconnects with its secret and reconciles.
    mconfig.manager.node_listen = format!("127.0.0.1:{node_port}").parse().expect("addr");
    let mut back = None;
    for _ in 0..50 {
        let secrets = BootstrapSecrets {
            admin_password: Some(crate::support::ADMIN_PASSWORD.into()),
            bootstrap_token: Some(crate::support::TOKEN.into()),
        };
        match fleetgate::start(mconfig.clone(), secrets, true, std::future::pending()).await {
            Ok(r) => {
                back = Some(r);
                break;
            }
            // The port may linger for a moment.
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let running = back.expect("manager restarts on its node port");
    app.addr = running.manager_addr;
    app.gateway = running.gateway_addr;
    app.running = Some(running);
    add_route(&app, "two", "/two", &up.url()).await;
    let revision = app.running.as_ref().expect("running").state.revision();
    edge_serves(&edge, "/two", StatusCode::OK, Duration::from_secs(30)).await;
    assert_eq!(status_of(&edge, "/one").await, Some(StatusCode::OK));
    let v = node_until(&app, &node_id, "reconciled", |v| {
        in_sync(v) && v["config"]["applied_revision"] == revision
    })
    .await;
    assert_eq!(v["config"]["last_error"], Value::Null);
    edge.shutdown().await.expect("edge stops");
    app.stop().await;
}

/// An edge whose stored identity the manager no longer knows (its node was
/// deleted) registers again with the token it is given, as the new node.
#[tokio::test]
async fn an_edge_whose_identity_is_unknown_registers_again_with_its_token() {
    let mdir = tempfile::tempdir().expect("tempdir");
    let app = start_manager(config_in(mdir.path())).await;
    let (old_id, token) = create_node(&app, "edge-old").await;
    let edir = tempfile::tempdir().expect("tempdir");
    let edge = fleetgate::start_edge(
        edge_config(&app, edir.path(), Some(token)),
        std::future::pending(),
    )
    .await
    .expect("edge starts");
    node_until(&app, &old_id, "in sync", in_sync).await;
    edge.shutdown().await.expect("edge stops");
    let r = app
        .admin(Method::DELETE, &format!("/api/v1/nodes/{old_id}"))
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);

    let (new_id, new_token) = create_node(&app, "edge-new").await;
    let edge = fleetgate::start_edge(
        edge_config(&app, edir.path(), Some(new_token)),
        std::future::pending(),
    )
    .await
    .expect("edge starts again");
    let v = node_until(&app, &new_id, "registered and in sync", in_sync).await;
    assert_eq!(v["status"], "online");
    let stored = std::fs::read_to_string(edir.path().join("edge-node.json")).expect("identity");
    assert!(
        stored.contains(&new_id) && !stored.contains(&old_id),
        "{stored}"
    );
    edge.shutdown().await.expect("edge stops");
    app.stop().await;
}
