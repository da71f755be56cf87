//! A tunnel across a real fleet: a manager, a `fleetgate relay` and two
//! `fleetgate edge`s registered with it, driven only through
//! `POST /api/v1/nodes/{id}/command` the way the manager's tunnel push does
//! (`authorize_tunnel` to the relay, `create_tunnel` to each edge): TCP echoed
//! through the relay, the tunnel ready in both edges' stats and active in the
//! relay's, the relay's list commands, and `delete_tunnel`.

use std::time::Duration;

use fleetgate::{RunningEdge, RunningRelay};
use fleetgate_tunnel::crypto::bind_token;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::edge_sync::{create_node, edge_config, node_until};
use crate::support::{config_in, spawn_with, unused_port, TestApp};

async fn command(app: &TestApp, node: &str, action: Value) -> Value {
    let r = app
        .admin(Method::POST, &format!("/api/v1/nodes/{node}/command"))
        .json(&json!({ "action": action }))
        .send()
        .await
        .expect("command");
    let status = r.status();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    assert_eq!(status, StatusCode::OK, "{action}: {body}");
    body
}

async fn create_relay_node(app: &TestApp) -> (String, String) {
    let r = app
        .admin(Method::POST, "/api/v1/nodes")
        .json(&json!({"name": "relay-1", "device_type": "relay"}))
        .send()
        .await
        .expect("create relay");
    assert_eq!(r.status(), StatusCode::CREATED);
    let v: Value = r.json().await.expect("json");
    (
        v["id"].as_str().expect("id").to_string(),
        v["registration_token"].as_str().expect("token").to_string(),
    )
}

async fn start_edge(app: &TestApp, name: &str) -> (String, RunningEdge, tempfile::TempDir) {
    let (node, token) = create_node(app, name).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let edge = fleetgate::start_edge(
        edge_config(app, dir.path(), Some(token)),
        std::future::pending(),
    )
    .await
    .expect("edge starts");
    node_until(app, &node, "online", |v| v["status"] == "online").await;
    (node, edge, dir)
}

async fn echo_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

fn tunnel_state(node: &Value, id: &str) -> Option<String> {
    node["last_stats"]["tunnels"]
        .as_array()?
        .iter()
        .find(|t| t["id"] == id)
        .and_then(|t| t["state"].as_str())
        .map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_tunnel_through_a_managed_relay() {
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

    let (relay_node, token) = create_relay_node(&app).await;
    let rdir = tempfile::tempdir().expect("tempdir");
    let mut rconfig = edge_config(&app, rdir.path(), Some(token));
    rconfig.relay.quic_listen = "127.0.0.1:0".parse().expect("addr");
    let relay: RunningRelay = fleetgate::start_relay(rconfig, std::future::pending())
        .await
        .expect("relay starts");
    node_until(&app, &relay_node, "online with relay stats", |v| {
        v["status"] == "online" && v["last_stats"]["connected_edges"].is_number()
    })
    .await;

    let (entry_node, entry, _edir1) = start_edge(&app, "entry").await;
    let (exit_node, exit, _edir2) = start_edge(&app, "exit").await;

    let id = uuid::Uuid::new_v4().to_string();
    let key = "5a".repeat(32);
    let bind_secret = "c3".repeat(32);
    command(
        &app,
        &relay_node,
        json!({"type": "authorize_tunnel", "tunnel_id": id,
        "ingress_token": bind_token(&bind_secret, &id, "ingress"),
        "egress_token": bind_token(&bind_secret, &id, "egress")}),
    )
    .await;
    let entry_port = unused_port();
    let common = json!({"id": id, "name": "cam", "enabled": true, "protocol": "tcp",
        "mode": "relay", "relay_addr": relay.quic_addr.to_string(),
        "tunnel_encryption_key": key, "tunnel_bind_secret": bind_secret});
    let mut entry_tunnel = common.clone();
    entry_tunnel["direction"] = json!("egress");
    entry_tunnel["local_addr"] = json!(format!("127.0.0.1:{entry_port}"));
    let mut exit_tunnel = common;
    exit_tunnel["direction"] = json!("ingress");
    exit_tunnel["local_addr"] = json!(echo_server().await);
    command(
        &app,
        &exit_node,
        json!({"type": "create_tunnel", "tunnel": exit_tunnel}),
    )
    .await;
    command(
        &app,
        &entry_node,
        json!({"type": "create_tunnel", "tunnel": entry_tunnel}),
    )
    .await;

    for node in [&entry_node, &exit_node] {
        node_until(&app, node, "with the tunnel ready", |v| {
            tunnel_state(v, &id).as_deref() == Some("ready")
        })
        .await;
    }
    let mut s = TcpStream::connect(("127.0.0.1", entry_port))
        .await
        .expect("connect");
    s.write_all(b"through the managed relay")
        .await
        .expect("write");
    let mut back = [0u8; 25];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut back))
        .await
        .expect("echo in time")
        .expect("echo");
    assert_eq!(&back, b"through the managed relay");

    let v = node_until(&app, &relay_node, "with the tunnel active", |v| {
        v["last_stats"]["active_tunnels"] == 1
    })
    .await;
    assert_eq!(v["last_stats"]["connected_edges"], 2);
    let listed = command(&app, &relay_node, json!({"type": "list_tunnels"})).await;
    let text = listed.to_string();
    assert!(text.contains(&id), "list_tunnels: {text}");
    assert!(!text.contains(&key), "a secret reached the relay");

    command(
        &app,
        &entry_node,
        json!({"type": "delete_tunnel", "tunnel_id": id}),
    )
    .await;
    node_until(&app, &entry_node, "without the tunnel", |v| {
        tunnel_state(v, &id).is_none()
    })
    .await;

    entry.shutdown().await.expect("entry stops");
    exit.shutdown().await.expect("exit stops");
    relay.shutdown().await.expect("relay stops");
    app.stop().await;
}
