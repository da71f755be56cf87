//! Bilbycast's `dashboard_update` on `/ws/dashboard`, through a real manager and a
//! scripted node over the TLS node listener: a browser session sees a connected
//! node with its stats and health within one update period, a user limited to
//! other nodes does not see it, and its disconnection is reported; with two
//! manager replicas, a dashboard on one lists a node connected to the other.

use std::time::{Duration, Instant};

use futures::StreamExt;
use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::nodes::{connect, create_node};
use crate::support::{login_cookies, spawn_app, TestApp};

type Dashboard =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The `Cookie` header of a session of `username`.
async fn session_of(app: &TestApp, username: &str, password: &str) -> String {
    let r = Client::new()
        .post(app.url("/api/v1/auth/login"))
        .json(&json!({"username": username, "password": password}))
        .send()
        .await
        .expect("login");
    assert_eq!(r.status(), StatusCode::OK, "{username} signs in");
    r.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|c| c.split(';').next())
        .collect::<Vec<_>>()
        .join("; ")
}

async fn open_dashboard(app: &TestApp, cookie: &str) -> Dashboard {
    let mut req = format!("ws://{}/ws/dashboard", app.addr)
        .into_client_request()
        .expect("request");
    req.headers_mut()
        .insert("cookie", cookie.parse().expect("cookie"));
    req.headers_mut().insert(
        "origin",
        format!("http://{}", app.addr).parse().expect("origin"),
    );
    tokio_tungstenite::connect_async(req)
        .await
        .expect("dashboard socket")
        .0
}

/// The first `dashboard_update` within `within` for which `ok` holds (earlier
/// ones are skipped); panics with the last one seen otherwise.
async fn update_where(
    ws: &mut Dashboard,
    within: Duration,
    what: &str,
    ok: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + within;
    let mut last = Value::Null;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = match tokio::time::timeout(left, ws.next()).await {
            Ok(Some(Ok(m))) => m,
            Ok(other) => panic!("the dashboard socket ended: {other:?}"),
            Err(_) => panic!("no dashboard_update {what} within {within:?}; last: {last}"),
        };
        if let Message::Text(t) = msg {
            let v: Value = serde_json::from_str(&t).expect("JSON frame");
            if v["type"] == "dashboard_update" {
                assert!(v.get("data").is_none(), "a bare object: {v}");
                if ok(&v) {
                    return v;
                }
                last = v;
            }
        }
    }
}

fn lists(update: &Value, id: &str) -> bool {
    update["nodes"]
        .as_array()
        .is_some_and(|n| n.iter().any(|n| n["node_id"] == id))
}

#[tokio::test]
async fn dashboard_update_lists_connected_nodes_with_stats_for_those_allowed_to_see_them() {
    let app = spawn_app().await;
    let created = create_node(&app, json!({"name": "edge-dash"})).await;
    let other = create_node(&app, json!({"name": "elsewhere"})).await;
    let r = app
        .admin(Method::POST, "/api/v1/users")
        .json(
            &json!({"username": "limited", "password": "password-123", "role": "viewer",
                      "allowed_node_ids": [other["id"]]}),
        )
        .send()
        .await
        .expect("create user");
    assert_eq!(r.status(), StatusCode::CREATED);

    let (admin_cookie, _) = login_cookies(&app.url("/api/v1/auth/login")).await;
    let mut admin = open_dashboard(&app, &admin_cookie).await;
    let limited_cookie = session_of(&app, "limited", "password-123").await;
    let mut limited = open_dashboard(&app, &limited_cookie).await;

    let mut node = connect(&app).await;
    let reply = node
        .auth(json!({"registration_token": created["registration_token"],
                     "software_version": "0.5.3", "protocol_version": 1}))
        .await;
    assert_eq!(reply["type"], "register_ack", "{reply}");
    let id = reply["payload"]["node_id"]
        .as_str()
        .expect("node_id")
        .to_string();
    node.send(
        "health",
        json!({"status": "ok", "version": "0.5.3", "uptime_secs": 0, "active_flows": 1,
               "total_flows": 1, "api_addr": "127.0.0.1:8080", "monitor_addr": null}),
    )
    .await;
    let flow = json!({"flow_id": "f1", "flow_name": "Camera 1", "state": "running",
        "input": {"input_type": "rtp", "state": "receiving", "packets_received": 1200,
                  "bytes_received": 1_579_200, "bitrate_bps": 4_000_000, "packets_lost": 3},
        "outputs": [{"output_id": "o1", "output_name": "SRT out", "output_type": "srt",
                     "state": "sending", "packets_sent": 1197, "bytes_sent": 1_575_252,
                     "bitrate_bps": 3_990_000, "packets_dropped": 0}],
        "uptime_secs": 12, "health": "healthy"});
    node.send(
        "stats",
        json!({"flows": [flow], "tunnels": [], "uptime_secs": 12, "active_flows": 1,
               "total_flows": 1}),
    )
    .await;

    // Within one update period the node is listed with what it last reported.
    let update = update_where(
        &mut admin,
        Duration::from_secs(6),
        "with the node's stats",
        |u| {
            u["nodes"].as_array().is_some_and(|n| {
                n.iter()
                    .any(|n| n["node_id"] == id && n["stats"]["flows"][0]["flow_id"] == "f1")
            })
        },
    )
    .await;
    assert_eq!(update["online_count"], 1, "{update}");
    let entry = &update["nodes"][0];
    assert_eq!(entry["name"], "edge-dash");
    assert_eq!(entry["device_type"], "edge");
    assert_eq!(entry["status"], "online");
    assert_eq!(entry["software_version"], "0.5.3");
    assert_eq!(entry["protocol_version"], 1);
    assert_eq!(entry["health"]["api_addr"], "127.0.0.1:8080");
    assert!(entry["uptime_secs"].is_u64(), "{entry}");
    assert_eq!(
        entry["driver_metrics"]["metrics"],
        json!([
            ["active_flows", 1],
            ["total_flows", 1],
            ["active_tunnels", 0],
            ["total_tunnels", 0],
            ["total_bitrate_bps", 4_000_000],
            ["uptime_secs", 12]
        ])
    );
    assert_eq!(entry["driver_metrics"]["items"], json!([flow]));

    // A user limited to another node gets updates too, without this one.
    let seen = update_where(
        &mut limited,
        Duration::from_secs(6),
        "for the limited user",
        |_| true,
    )
    .await;
    assert!(!lists(&seen, &id), "{seen}");
    assert_eq!(seen["online_count"], 0, "{seen}");

    // Gone: an update without it comes promptly (not only at the next period).
    drop(node);
    let gone = update_where(
        &mut admin,
        Duration::from_secs(6),
        "without the node",
        |u| !lists(u, &id),
    )
    .await;
    assert_eq!(gone["online_count"], 0, "{gone}");
    let r = app
        .admin(Method::GET, &format!("/api/v1/nodes/{id}"))
        .send()
        .await
        .expect("node");
    assert_eq!(r.json::<Value>().await.expect("json")["status"], "offline");
    app.stop().await;
}

/// Two managers on one PostgreSQL and NATS: a dashboard open on B lists a node
/// connected to A, with the stats A holds, and stops listing it once it is gone.
#[tokio::test]
async fn dashboard_update_lists_nodes_held_by_another_replica() {
    let Ok(nats) = std::env::var("FLEETGATE_TEST_NATS_URL") else {
        eprintln!("skipping two-replica dashboard case: FLEETGATE_TEST_NATS_URL is not set");
        return;
    };
    let Some(url) = crate::support::postgres_schema_url().await else {
        return;
    };
    let (a, b) = crate::scale_out::pair_on(&url, Some(&nats)).await;
    let created = create_node(&a, json!({"name": "edge-on-a"})).await;
    let mut node = connect(&a).await;
    let reply = node
        .auth(json!({"registration_token": created["registration_token"], "protocol_version": 1}))
        .await;
    assert_eq!(reply["type"], "register_ack", "{reply}");
    let id = reply["payload"]["node_id"]
        .as_str()
        .expect("node_id")
        .to_string();
    node.send("health", json!({"status": "ok", "version": "0.5.3"}))
        .await;
    node.send(
        "stats",
        json!({"flows": [{"flow_id": "f1", "input": {"bitrate_bps": 1000}}],
               "active_flows": 1, "total_flows": 1}),
    )
    .await;

    let (cookie, _) = login_cookies(&b.url("/api/v1/auth/login")).await;
    let mut on_b = open_dashboard(&b, &cookie).await;
    let update = update_where(
        &mut on_b,
        Duration::from_secs(12),
        "from the other replica",
        |u| {
            u["nodes"].as_array().is_some_and(|n| {
                n.iter()
                    .any(|n| n["node_id"] == id && n["stats"]["total_flows"] == 1)
            })
        },
    )
    .await;
    let entry = &update["nodes"][0];
    assert_eq!(entry["name"], "edge-on-a");
    assert_eq!(entry["device_type"], "edge");
    assert_eq!(entry["health"]["version"], "0.5.3");
    assert_eq!(entry["software_version"], "0.5.3");
    assert_eq!(
        entry["driver_metrics"]["metrics"][4],
        json!(["total_bitrate_bps", 1000])
    );

    drop(node);
    update_where(
        &mut on_b,
        Duration::from_secs(12),
        "without the node",
        |u| !lists(u, &id),
    )
    .await;
    a.stop().await;
    b.stop().await;
}
