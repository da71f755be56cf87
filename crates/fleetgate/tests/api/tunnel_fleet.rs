//! A tunnel across a real fleet: a manager, a `fleetgate relay` and two
//! `fleetgate edge`s registered with it, the tunnel made through
//! `POST /api/v1/tunnels` (the manager generates the secrets, authorizes the bind
//! tokens at the relay and sends each edge its side): TCP and UDP echoed through
//! the relay, each leg pushed and reported ready, the edges' tunnel events stored
//! by the manager, the relay holding no secret, and the tunnel withdrawn from the
//! edges when deleted.

use std::time::Duration;

use fleetgate::{RunningEdge, RunningRelay};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use crate::edge_sync::{create_node, edge_config, node_until};
use crate::support::{unused_port, TestApp};

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

async fn udp_echo_server() -> String {
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let addr = socket.local_addr().expect("addr").to_string();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_535];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            let _ = socket.send_to(&buf[..n], from).await;
        }
    });
    addr
}

/// Creates a tunnel and waits until every leg is pushed and every node, the
/// relay included, reports it ready; its id.
async fn tunnel_until_ready(app: &TestApp, body: Value, edges: [&String; 2]) -> String {
    let r = app
        .admin(Method::POST, "/api/v1/tunnels")
        .json(&body)
        .send()
        .await
        .expect("create tunnel");
    assert_eq!(r.status(), StatusCode::CREATED);
    let id = r.json::<Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let t = app.get_json(&format!("/api/v1/tunnels/{id}")).await;
        if t["status"] == "active"
            && t["ingress"]["live_state"] == "ready"
            && t["egress"]["live_state"] == "ready"
            && t["relay"]["live_state"] == "ready"
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "tunnel never ready: {t}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for node in edges {
        node_until(app, node, "with the tunnel ready", |v| {
            tunnel_state(v, &id).as_deref() == Some("ready")
        })
        .await;
    }
    id
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
async fn tcp_and_udp_tunnels_through_a_managed_relay() {
    // The test polls the nodes' stats: no API rate limit.
    let (app, _mdir) = crate::edge_sync::start_unlimited_manager().await;

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

    let entry_port = unused_port();
    let id = tunnel_until_ready(
        &app,
        json!({"name": "cam", "protocol": "tcp", "mode": "relay",
            "ingress_node_id": entry_node, "ingress_listen_port": entry_port,
            "egress_node_id": exit_node, "egress_forward_addr": echo_server().await,
            "relay_node_id": relay_node, "relay_addr": relay.quic_addr.to_string()}),
        [&entry_node, &exit_node],
    )
    .await;
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

    // A UDP tunnel through the same relay, beside the TCP one.
    let udp_port = unused_port();
    let udp_id = tunnel_until_ready(
        &app,
        json!({"name": "telemetry", "protocol": "udp", "mode": "relay",
            "ingress_node_id": entry_node, "ingress_listen_port": udp_port,
            "egress_node_id": exit_node, "egress_forward_addr": udp_echo_server().await,
            "relay_node_id": relay_node, "relay_addr": relay.quic_addr.to_string()}),
        [&entry_node, &exit_node],
    )
    .await;
    let client = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    client
        .connect(("127.0.0.1", udp_port))
        .await
        .expect("connect");
    let mut buf = [0u8; 64];
    let mut echoed = None;
    // A datagram is not retransmitted: send again until one comes back.
    for _ in 0..20 {
        client
            .send(b"datagram through the relay")
            .await
            .expect("send");
        if let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(500), client.recv(&mut buf)).await
        {
            echoed = Some(buf[..n].to_vec());
            break;
        }
    }
    assert_eq!(echoed.as_deref(), Some(&b"datagram through the relay"[..]));

    let v = node_until(&app, &relay_node, "with both tunnels active", |v| {
        v["last_stats"]["active_tunnels"] == 2
    })
    .await;
    assert_eq!(
        v["last_stats"]["connected_edges"], 4,
        "two links per tunnel"
    );
    // Each edge reported its tunnels up as events, stored under its node.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let events = app
            .get_json(&format!(
                "/api/v1/events?category=tunnel&node_id={entry_node}"
            ))
            .await;
        let ups: Vec<&Value> = events["items"]
            .as_array()
            .expect("items")
            .iter()
            .filter(|e| e["details"]["details"]["state"] == "ready")
            .collect();
        // Nothing but the two tunnels coming up: a new tunnel waiting for its
        // other end is no warning.
        assert_eq!(events["total"], ups.len(), "{events}");
        if ups.len() == 2 {
            assert!(ups.iter().all(|e| e["severity"] == "info"), "{events}");
            let ids: Vec<&Value> = ups
                .iter()
                .map(|e| &e["details"]["details"]["tunnel_id"])
                .collect();
            assert!(ids.contains(&&json!(id)) && ids.contains(&&json!(udp_id)));
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no tunnel events: {events}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let listed = command(&app, &relay_node, json!({"type": "list_tunnels"})).await;
    let text = listed.to_string();
    assert!(text.contains(&id), "list_tunnels: {text}");
    // The relay holds tokens only: the edges' secrets never reach it.
    let secrets: Value = serde_json::from_slice(
        &std::fs::read(_edir1.path().join("edge-tunnels.json")).expect("entry's tunnels"),
    )
    .expect("json");
    let key = secrets.to_string();
    let key = key
        .split("\"tunnel_encryption_key\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the entry edge holds the key")
        .to_string();
    assert_eq!(key.len(), 64);
    assert!(!text.contains(&key), "a secret reached the relay");

    let r = app
        .admin(Method::DELETE, &format!("/api/v1/tunnels/{id}"))
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    node_until(&app, &entry_node, "without the tunnel", |v| {
        tunnel_state(v, &id).is_none()
    })
    .await;

    entry.shutdown().await.expect("entry stops");
    exit.shutdown().await.expect("exit stops");
    relay.shutdown().await.expect("relay stops");
    app.stop().await;
}
