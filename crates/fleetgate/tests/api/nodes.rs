//! Fleet nodes: the API, and a scripted node speaking the `/ws/node` protocol over
//! real TLS WebSockets to the node listener (registration, reconnect, lockout,
//! commands with each status, bad frames, replacement, online/offline events).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::support::{expect_error, spawn_app, TestApp};

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// A node under the test's control.
pub(crate) struct TestNode {
    ws: Ws,
}

/// Opens a TLS WebSocket to the app's node listener, trusting the certificate the
/// manager generated in its data directory (checked for the name `localhost`).
pub(crate) async fn connect(app: &TestApp) -> TestNode {
    let pem = std::fs::read(app.config.data_dir.join("node-tls.crt")).expect("node cert");
    connect_trusting(app, &pem).await.expect("TLS connect")
}

async fn connect_trusting(app: &TestApp, pem: &[u8]) -> Result<TestNode, String> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(pem) {
        roots.add(c.expect("pem")).expect("root");
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let addr = app.running.as_ref().expect("running").node_addr;
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("tcp");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (ws, _) = tokio_tungstenite::client_async("wss://localhost/ws/node", tls)
        .await
        .map_err(|e| e.to_string())?;
    Ok(TestNode { ws })
}

impl TestNode {
    async fn send_text(&mut self, text: String) {
        self.ws
            .send(Message::Text(text.into()))
            .await
            .expect("send");
    }

    pub(crate) async fn send(&mut self, kind: &str, payload: Value) {
        self.send_text(
            json!({"type": kind, "timestamp": "2026-01-01T00:00:00Z", "payload": payload})
                .to_string(),
        )
        .await;
    }

    /// The next text frame as JSON; `None` when the socket closed.
    async fn recv(&mut self) -> Option<Value> {
        loop {
            match tokio::time::timeout(Duration::from_secs(15), self.ws.next()).await {
                Err(_) => panic!("no frame within 15 s"),
                Ok(None | Some(Err(_))) => return None,
                Ok(Some(Ok(Message::Text(t)))) => {
                    return Some(serde_json::from_str(t.as_str()).expect("manager frames are JSON"))
                }
                Ok(Some(Ok(Message::Close(_)))) => return None,
                Ok(Some(Ok(_))) => {}
            }
        }
    }

    /// Sends the auth frame (no timestamp, as edges do) and returns the reply.
    pub(crate) async fn auth(&mut self, payload: Value) -> Value {
        self.send_text(json!({"type": "auth", "payload": payload}).to_string())
            .await;
        self.recv().await.expect("an auth reply")
    }

    /// Waits for a `command` and returns its payload.
    pub(crate) async fn next_command(&mut self) -> Value {
        loop {
            let f = self.recv().await.expect("a command");
            if f["type"] == "command" {
                return f["payload"].clone();
            }
        }
    }

    pub(crate) async fn closed(&mut self) -> bool {
        loop {
            match tokio::time::timeout(Duration::from_secs(5), self.ws.next()).await {
                Err(_) => return false,
                Ok(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) => return true,
                Ok(Some(Ok(_))) => {}
            }
        }
    }
}

/// An API key of a new operator `username` limited to the nodes `ids`.
pub(crate) async fn limited_key(app: &TestApp, username: &str, ids: &[&str]) -> String {
    let key = app.key_for_role(username, "operator").await;
    let users = app.get_json("/api/v1/users?limit=100").await;
    let uid = users["items"]
        .as_array()
        .expect("users")
        .iter()
        .find(|u| u["username"] == username)
        .expect("user")["id"]
        .as_str()
        .expect("id")
        .to_string();
    let r = app
        .admin(Method::PUT, &format!("/api/v1/users/{uid}"))
        .json(&json!({ "allowed_node_ids": ids }))
        .send()
        .await
        .expect("limit");
    assert_eq!(
        r.status(),
        StatusCode::OK,
        "{}",
        r.text().await.unwrap_or_default()
    );
    key
}

pub(crate) async fn create_node(app: &TestApp, body: Value) -> Value {
    let r = app
        .admin(Method::POST, "/api/v1/nodes")
        .json(&body)
        .send()
        .await
        .expect("create");
    assert_eq!(r.status(), StatusCode::CREATED);
    r.json().await.expect("json")
}

/// A registered, connected edge: (node, node id, secret).
pub(crate) async fn registered(app: &TestApp, device_type: &str) -> (TestNode, String, String) {
    let created = create_node(app, json!({"name": "edge-1", "device_type": device_type})).await;
    let mut node = connect(app).await;
    let reply = node
        .auth(json!({"registration_token": created["registration_token"], "software_version": "0.5.3", "protocol_version": 1}))
        .await;
    assert_eq!(reply["type"], "register_ack", "{reply}");
    let id = reply["payload"]["node_id"]
        .as_str()
        .expect("node_id")
        .to_string();
    let secret = reply["payload"]["node_secret"]
        .as_str()
        .expect("secret")
        .to_string();
    assert_eq!(id, created["id"].as_str().expect("id"));
    (node, id, secret)
}

async fn wait_for_event(app: &TestApp, event_type: &str, node_id: &str, n: u64) -> Value {
    let path = format!("/api/v1/events?type={event_type}&node_id={node_id}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = app.get_json(&path).await;
        if v["total"].as_u64().is_some_and(|t| t >= n) {
            return v;
        }
        assert!(Instant::now() < deadline, "no {n} {event_type} events: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn status_of(app: &TestApp, id: &str) -> Value {
    app.get_json(&format!("/api/v1/nodes/{id}")).await
}

async fn wait_status(app: &TestApp, id: &str, want: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = status_of(app, id).await;
        if v["status"] == want {
            return v;
        }
        assert!(Instant::now() < deadline, "node never {want}: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn nodes_crud_tokens_and_device_types() {
    let app = spawn_app().await;
    let created = create_node(&app, json!({"name": "  relay-a ", "device_type": "relay", "description": "rack 1", "token_ttl_secs": 600})).await;
    assert_eq!(created["name"], "relay-a");
    assert_eq!(created["status"], "pending");
    let token = created["registration_token"].as_str().expect("token");
    assert!(token.len() >= 40, "high-entropy token: {token}");
    let id = created["id"].as_str().expect("id").to_string();
    // A node that never connected has no configuration to show: 404, not a 5xx.
    let r = app
        .admin(Method::GET, &format!("/api/v1/nodes/{id}/config"))
        .send()
        .await
        .expect("config");
    expect_error(r, StatusCode::NOT_FOUND, "NOT_FOUND").await;
    create_node(&app, json!({"name": "edge-a"})).await;

    let all = app.get_json("/api/v1/nodes?limit=1").await;
    assert_eq!(
        (all["total"].as_i64(), all["items"].as_array().map(Vec::len)),
        (Some(2), Some(1))
    );
    let relays = app.get_json("/api/v1/nodes?device_type=relay").await;
    assert_eq!(relays["total"], 1);
    assert_eq!(relays["items"][0]["id"], id.as_str());
    assert!(
        relays["items"][0].get("registration_token").is_none(),
        "never listed"
    );
    let edges = app.get_json("/api/v1/nodes?device_type=edge").await;
    assert_eq!(edges["items"][0]["device_type"], "edge");
    expect_error(
        app.admin(Method::GET, "/api/v1/nodes?device_type=router")
            .send()
            .await
            .expect("list"),
        StatusCode::BAD_REQUEST,
        "VALIDATION_FAILED",
    )
    .await;
    for (body, field) in [
        (json!({"name": ""}), "name"),
        (json!({"name": "x", "device_type": "router"}), "device_type"),
        (
            json!({"name": "x", "expires_at": "2001-01-01T00:00:00Z"}),
            "expires_at",
        ),
        (json!({"name": "x", "token_ttl_secs": 1}), "token_ttl_secs"),
        (json!({"name": "x", "metadata": [1]}), "metadata"),
        (json!({"name": "x", "secret": "mine"}), "secret"),
    ] {
        let r = app
            .admin(Method::POST, "/api/v1/nodes")
            .json(&body)
            .send()
            .await
            .expect("create");
        let e = expect_error(r, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await;
        assert!(
            e["error"].as_str().expect("msg").contains(field) || e["details"]["field"] == field,
            "{field}: {e}"
        );
    }

    let got = status_of(&app, &id).await;
    assert!(got.get("registration_token").is_none());
    assert!(got["token_expires_at"].is_string());
    let r = app
        .admin(Method::PUT, &format!("/api/v1/nodes/{id}"))
        .header("if-match", "\"1\"")
        .json(&json!({"name": "relay-b", "description": null, "metadata": {"site": "syd"}}))
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), StatusCode::OK);
    let put: Value = r.json().await.expect("json");
    assert_eq!(
        (
            put["name"].as_str(),
            put["description"].is_null(),
            put["version"].as_i64()
        ),
        (Some("relay-b"), true, Some(2))
    );
    let stale = app
        .admin(Method::PUT, &format!("/api/v1/nodes/{id}"))
        .header("if-match", "\"1\"")
        .json(&json!({"name": "x"}))
        .send()
        .await
        .expect("put");
    expect_error(
        stale,
        StatusCode::PRECONDITION_FAILED,
        "PRECONDITION_FAILED",
    )
    .await;

    let r = app
        .admin(
            Method::POST,
            &format!("/api/v1/nodes/{id}/token?token_ttl_secs=120"),
        )
        .send()
        .await
        .expect("token");
    assert_eq!(r.status(), StatusCode::OK);
    let t: Value = r.json().await.expect("json");
    assert_ne!(t["registration_token"].as_str(), Some(token));
    // A validity given but empty, or not a number, is refused naming it.
    for bad in ["", "abc", "1.5", "-60", "5"] {
        let r = app
            .admin(
                Method::POST,
                &format!("/api/v1/nodes/{id}/token?token_ttl_secs={bad}"),
            )
            .send()
            .await
            .expect("token");
        let e = expect_error(r, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await;
        assert_eq!(e["details"]["field"], "token_ttl_secs", "{bad:?}");
    }

    let types = app.get_json("/api/v1/device-types").await;
    let edge = &types["device_types"][0];
    assert_eq!(edge["device_type"], "edge");
    let names: Vec<&str> = edge["supported_commands"]
        .as_array()
        .expect("cmds")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    for c in [
        "get_config",
        "update_config",
        "create_flow",
        "update_flow",
        "delete_flow",
        "start_flow",
        "stop_flow",
        "restart_flow",
        "add_output",
        "remove_output",
    ] {
        assert!(names.contains(&c), "{c} in {names:?}");
    }
    assert_eq!(types["device_types"][1]["device_type"], "relay");

    // Viewers read but do not change; a user limited to some nodes sees only those.
    let viewer = app.key_for_role("nodeviewer", "viewer").await;
    let r = app
        .anon(Method::GET, "/api/v1/nodes")
        .bearer_auth(&viewer)
        .send()
        .await
        .expect("list");
    assert_eq!(r.status(), StatusCode::OK);
    let r = app
        .anon(Method::POST, "/api/v1/nodes")
        .bearer_auth(&viewer)
        .json(&json!({"name": "x"}))
        .send()
        .await
        .expect("create");
    expect_error(r, StatusCode::FORBIDDEN, "FORBIDDEN").await;
    let operator = limited_key(&app, "nodeop", &[&id]).await;
    let limited: Value = app
        .anon(Method::GET, "/api/v1/nodes")
        .bearer_auth(&operator)
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(limited["total"], 1);
    let other = edges["items"][0]["id"].as_str().expect("id");
    let r = app
        .anon(Method::GET, &format!("/api/v1/nodes/{other}"))
        .bearer_auth(&operator)
        .send()
        .await
        .expect("get");
    expect_error(r, StatusCode::FORBIDDEN, "FORBIDDEN").await;
    let r = app
        .anon(Method::POST, &format!("/api/v1/nodes/{other}/command"))
        .bearer_auth(&operator)
        .json(&json!({"action": {"type": "get_config"}}))
        .send()
        .await
        .expect("command");
    expect_error(r, StatusCode::FORBIDDEN, "FORBIDDEN").await;

    let r = app
        .admin(Method::DELETE, &format!("/api/v1/nodes/{id}"))
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = app
        .admin(Method::GET, &format!("/api/v1/nodes/{id}"))
        .send()
        .await
        .expect("get");
    expect_error(r, StatusCode::NOT_FOUND, "NOT_FOUND").await;

    let audit = app
        .get_json("/api/v1/audit?target_type=node&limit=100")
        .await;
    let text = audit.to_string();
    for a in ["node.create", "node.update", "node.token", "node.delete"] {
        assert!(text.contains(a), "{a} audited: {text}");
    }
    assert!(!text.contains(token), "the token is never in the audit log");
    app.stop().await;
}

#[tokio::test]
async fn a_node_registers_once_then_reconnects_with_its_secret() {
    let app = spawn_app().await;
    let created = create_node(&app, json!({"name": "edge-1"})).await;
    let token = created["registration_token"]
        .as_str()
        .expect("token")
        .to_string();
    let mut node = connect(&app).await;
    let reply = node.auth(json!({"registration_token": token, "software_version": "0.5.3", "protocol_version": 1})).await;
    assert_eq!(reply["type"], "register_ack", "{reply}");
    let id = reply["payload"]["node_id"]
        .as_str()
        .expect("node_id")
        .to_string();
    let secret = reply["payload"]["node_secret"]
        .as_str()
        .expect("secret")
        .to_string();
    wait_status(&app, &id, "online").await;
    node.send("health", json!({"status": "ok", "version": "0.5.3", "uptime_secs": 0, "active_flows": 0, "total_flows": 0})).await;
    node.send(
        "stats",
        json!({"flows": [], "uptime_secs": 0, "active_flows": 0, "total_flows": 0}),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let v = status_of(&app, &id).await;
        if v["last_health"]["version"] == "0.5.3" && v["last_stats"]["flows"].is_array() {
            assert_eq!(v["software_version"], "0.5.3");
            assert_eq!(v["protocol_version"], 1);
            break;
        }
        assert!(Instant::now() < deadline, "health and stats kept: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_for_event(&app, "node.online", &id, 1).await;
    drop(node);
    wait_status(&app, &id, "offline").await;
    let off = wait_for_event(&app, "node.offline", &id, 1).await;
    assert_eq!(off["items"][0]["severity"], "critical");

    // The token registered once: a second use is refused.
    let mut again = connect(&app).await;
    let reply = again.auth(json!({"registration_token": token})).await;
    assert_eq!(
        reply,
        json!({"type": "auth_error", "message": "Invalid registration token"})
    );
    assert!(again.closed().await);

    let mut back = connect(&app).await;
    let reply = back
        .auth(json!({"node_id": id, "node_secret": secret, "protocol_version": 1}))
        .await;
    assert_eq!(reply["type"], "auth_ok", "{reply}");
    assert!(reply.get("payload").is_none() && reply["timestamp"].is_string());
    wait_status(&app, &id, "online").await;
    wait_for_event(&app, "node.online", &id, 2).await;

    for (payload, message) in [
        (json!({}), "Missing node_id in auth payload"),
        (
            json!({"node_id": id}),
            "Missing node_secret in auth payload",
        ),
        (
            json!({"node_id": "nope", "node_secret": "x"}),
            "Node not registered",
        ),
    ] {
        let mut n = connect(&app).await;
        assert_eq!(n.auth(payload).await["message"], message);
    }
    let mut n = connect(&app).await;
    n.send("stats", json!({})).await;
    assert_eq!(
        n.recv().await.expect("reply")["message"],
        "Expected 'auth' message type, got 'stats'"
    );
    let mut n = connect(&app).await;
    n.send_text("{not json".into()).await;
    assert_eq!(n.recv().await.expect("reply")["type"], "auth_error");
    app.stop().await;
}

#[tokio::test]
async fn five_failures_lock_the_node_out() {
    let app = spawn_app().await;
    let (_node, id, secret) = registered(&app, "edge").await;
    for _ in 0..5 {
        let mut n = connect(&app).await;
        let r = n.auth(json!({"node_id": id, "node_secret": "wrong"})).await;
        assert_eq!(r["message"], "Invalid node secret");
    }
    let mut n = connect(&app).await;
    let r = n.auth(json!({"node_id": id, "node_secret": secret})).await;
    assert_eq!(r["type"], "auth_error");
    assert!(
        r["message"].as_str().expect("msg").contains("Locked out"),
        "{r}"
    );
    // Registration tokens are locked by their prefix.
    for _ in 0..5 {
        let mut n = connect(&app).await;
        let r = n
            .auth(json!({"registration_token": "AAAAAAAA-guess"}))
            .await;
        assert_eq!(r["message"], "Invalid registration token");
    }
    let mut n = connect(&app).await;
    let r = n
        .auth(json!({"registration_token": "AAAAAAAA-other"}))
        .await;
    assert_eq!(r["message"], "Too many failed attempts. Try again later.");
    app.stop().await;
}

#[tokio::test]
async fn a_silent_connection_is_refused_after_ten_seconds() {
    let app = spawn_app().await;
    let mut n = connect(&app).await;
    let started = Instant::now();
    let r = n.recv().await.expect("auth_error");
    assert_eq!(
        r,
        json!({"type": "auth_error", "message": "Auth timeout (10s)"})
    );
    assert!(started.elapsed() >= Duration::from_secs(9));
    assert!(n.closed().await);
    app.stop().await;
}

/// Answers the next command as `reply` says and returns the command.
pub(crate) async fn answer(
    node: &mut TestNode,
    reply: impl FnOnce(&Value) -> Option<(String, Value)>,
) -> Value {
    let cmd = node.next_command().await;
    if let Some((kind, payload)) = reply(&cmd) {
        node.send(&kind, payload).await;
    }
    cmd
}

async fn command(app: &TestApp, id: &str, body: Value) -> reqwest::Response {
    app.admin(Method::POST, &format!("/api/v1/nodes/{id}/command"))
        .json(&body)
        .send()
        .await
        .expect("command")
}

#[tokio::test]
async fn commands_round_trip_with_each_status() {
    let app = spawn_app().await;
    let (mut node, id, _) = registered(&app, "edge").await;

    // 200: the node acks success; unknown fields on the ack are ignored.
    let (r, cmd) = tokio::join!(
        command(
            &app,
            &id,
            json!({"action": {"type": "stop_flow", "flow_id": "f1"}})
        ),
        answer(&mut node, |c| Some((
            "command_ack".into(),
            json!({"command_id": c["command_id"], "success": true, "error": null, "extra": 1})
        )))
    );
    assert_eq!(cmd["action"], json!({"type": "stop_flow", "flow_id": "f1"}));
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.expect("json");
    assert_eq!(
        (body["success"].as_bool(), body["command_id"].as_str()),
        (Some(true), cmd["command_id"].as_str())
    );

    // 422: the node refuses, and its error is returned.
    let (r, _) = tokio::join!(
        command(
            &app,
            &id,
            json!({"action": {"type": "start_flow", "flow_id": "missing"}})
        ),
        answer(&mut node, |c| Some((
            "command_ack".into(),
            json!({"command_id": c["command_id"], "success": false, "error": "Flow missing not found"})
        )))
    );
    let e = expect_error(r, StatusCode::UNPROCESSABLE_ENTITY, "NODE_REFUSED").await;
    assert_eq!(e["details"]["node_error"], "Flow missing not found");
    assert!(e["error"]
        .as_str()
        .expect("msg")
        .contains("Flow missing not found"));

    // get_config is answered by config_response (no ack), and cached.
    let config = json!({"version": 1, "flows": [{"id": "f1"}], "server": {"listen_port": 8080}});
    let (r, _) = tokio::join!(
        command(&app, &id, json!({"action": {"type": "get_config"}})),
        answer(&mut node, |_| Some((
            "config_response".into(),
            config.clone()
        )))
    );
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.expect("json")["data"], config);
    assert_eq!(
        app.get_json(&format!("/api/v1/nodes/{id}/config")).await,
        config
    );

    // 400 before sending: unknown commands and missing parameters.
    let e = expect_error(
        command(&app, &id, json!({"action": {"type": "reboot"}})).await,
        StatusCode::BAD_REQUEST,
        "VALIDATION_FAILED",
    )
    .await;
    assert!(e["error"].as_str().expect("msg").contains("reboot"), "{e}");
    let e = expect_error(
        command(
            &app,
            &id,
            json!({"action": {"type": "add_output", "flow_id": "f1"}}),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "VALIDATION_FAILED",
    )
    .await;
    assert_eq!(e["details"]["field"], "action.output");
    expect_error(
        command(&app, &id, json!({"action": {"type": "list_edges"}})).await,
        StatusCode::BAD_REQUEST,
        "VALIDATION_FAILED",
    )
    .await;

    // 413: a body over 50 KiB.
    let big =
        json!({"action": {"type": "update_config", "config": {"blob": "x".repeat(60 * 1024)}}});
    expect_error(
        command(&app, &id, big).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "PAYLOAD_TOO_LARGE",
    )
    .await;

    // 504: the node never answers.
    let started = Instant::now();
    let (r, _) = tokio::join!(
        command(
            &app,
            &id,
            json!({"action": {"type": "restart_flow", "flow_id": "f1"}})
        ),
        answer(&mut node, |_| None)
    );
    expect_error(r, StatusCode::GATEWAY_TIMEOUT, "NODE_TIMEOUT").await;
    assert!(started.elapsed() >= Duration::from_secs(9));
    // Sent and unanswered: it may have changed the node, so it is audited.
    let audit = command_audit(&app).await;
    let newest = &audit["items"][0];
    assert_eq!(newest["after"]["outcome"], "no answer", "{audit}");
    assert_eq!(newest["after"]["command"]["type"], "restart_flow");

    // 502: not connected.
    drop(node);
    wait_status(&app, &id, "offline").await;
    expect_error(
        command(
            &app,
            &id,
            json!({"action": {"type": "stop_flow", "flow_id": "f1"}}),
        )
        .await,
        StatusCode::BAD_GATEWAY,
        "NODE_NOT_CONNECTED",
    )
    .await;
    app.stop().await;
}

async fn command_audit(app: &TestApp) -> Value {
    app.get_json("/api/v1/audit?action=node.command&target_type=node")
        .await
}

#[tokio::test]
async fn commands_that_change_a_node_are_audited_with_secrets_redacted() {
    let app = spawn_app().await;
    let (mut node, id, _) = registered(&app, "edge").await;
    let ack = |c: &Value| {
        Some((
            "command_ack".to_string(),
            json!({"command_id": c["command_id"], "success": true}),
        ))
    };
    // Carried out: audited with its command and command id.
    let (r, cmd) = tokio::join!(
        command(
            &app,
            &id,
            json!({"action": {"type": "stop_flow", "flow_id": "f1"}})
        ),
        answer(&mut node, ack)
    );
    assert_eq!(r.status(), StatusCode::OK);
    let a = command_audit(&app).await;
    assert_eq!(a["total"], 1, "{a}");
    let entry = &a["items"][0];
    assert_eq!(entry["target_type"], "node");
    assert_eq!(entry["actor"], "api_key:bootstrap", "{entry}");
    assert_eq!(entry["after"]["outcome"], "done");
    assert_eq!(entry["after"]["command_id"], cmd["command_id"]);
    assert_eq!(
        entry["after"]["command"],
        json!({"type": "stop_flow", "flow_id": "f1"})
    );

    // A secret in the command reaches the node but not the audit log.
    let output = json!({"id": "o1", "type": "http", "url": "http://user:pw-in-url@10.0.0.1/in",
                        "password": "pw-sekrit-99"});
    let (r, cmd) = tokio::join!(
        command(
            &app,
            &id,
            json!({"action": {"type": "add_output", "flow_id": "f1", "output": output}})
        ),
        answer(&mut node, ack)
    );
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(cmd["action"]["output"]["password"], "pw-sekrit-99");
    let a = command_audit(&app).await;
    assert_eq!(a["total"], 2, "{a}");
    let text = a.to_string();
    assert!(
        !text.contains("pw-sekrit-99") && !text.contains("pw-in-url"),
        "{text}"
    );
    assert_eq!(a["items"][0]["after"]["command"]["output"]["id"], "o1");

    // Refused by the node, refused before sending, or only reading: not audited.
    let (r, _) = tokio::join!(
        command(
            &app,
            &id,
            json!({"action": {"type": "start_flow", "flow_id": "x"}})
        ),
        answer(&mut node, |c| Some((
            "command_ack".into(),
            json!({"command_id": c["command_id"], "success": false, "error": "no such flow"})
        )))
    );
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let r = command(&app, &id, json!({"action": {"type": "reboot"}})).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let (r, _) = tokio::join!(
        command(&app, &id, json!({"action": {"type": "get_config"}})),
        answer(&mut node, |_| Some((
            "config_response".into(),
            json!({"version": 1, "flows": []})
        )))
    );
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(command_audit(&app).await["total"], 2);
    app.stop().await;
}

#[tokio::test]
async fn bad_frames_are_dropped_and_the_node_stays() {
    let app = spawn_app().await;
    let (mut node, id, _) = registered(&app, "relay").await;
    node.send_text("{not json".into()).await;
    node.send_text("[1,2]".into()).await;
    node.send("thumbnail", json!({"jpeg": "AAAA"})).await;
    node.send("command_ack", json!({"success": "yes"})).await;
    node.send_text(json!({"type": "stats", "payload": {"edges": []}, "unknown": true}).to_string())
        .await;
    // A 6 MiB text frame is over the 5 MiB limit: dropped, not fatal.
    node.send_text(format!(
        "{{\"type\":\"stats\",\"payload\":\"{}\"}}",
        "x".repeat(6 * 1024 * 1024)
    ))
    .await;
    node.ws
        .send(Message::Binary(vec![1, 2, 3].into()))
        .await
        .expect("binary");
    // A node event becomes a stored event with the node's severity and category.
    node.send("event", json!({"severity": "warning", "category": "tunnel", "message": "tunnel t1 down", "flow_id": "f9", "details": {"error_code": "bind_failed"}})).await;
    let (r, _) = tokio::join!(
        command(&app, &id, json!({"action": {"type": "list_edges"}})),
        answer(&mut node, |c| Some((
            "command_ack".into(),
            json!({"command_id": c["command_id"], "success": true, "error": null, "data": [{"edge_id": "e1"}]})
        )))
    );
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.json::<Value>().await.expect("json")["data"],
        json!([{"edge_id": "e1"}])
    );
    let ev = wait_for_event(&app, "node.event", &id, 1).await;
    let e = &ev["items"][0];
    assert_eq!(
        (
            e["severity"].as_str(),
            e["category"].as_str(),
            e["message"].as_str()
        ),
        (Some("warning"), Some("tunnel"), Some("tunnel t1 down"))
    );
    assert_eq!(status_of(&app, &id).await["status"], "online");
    app.stop().await;
}

#[tokio::test]
async fn a_newer_connection_replaces_the_older_one() {
    let app = spawn_app().await;
    let (mut old, id, secret) = registered(&app, "edge").await;
    wait_status(&app, &id, "online").await;
    let mut new = connect(&app).await;
    assert_eq!(
        new.auth(json!({"node_id": id, "node_secret": secret}))
            .await["type"],
        "auth_ok"
    );
    assert!(old.closed().await, "the older connection is closed");
    let (r, _) = tokio::join!(
        command(
            &app,
            &id,
            json!({"action": {"type": "delete_flow", "flow_id": "f1"}})
        ),
        answer(&mut new, |c| Some((
            "command_ack".into(),
            json!({"command_id": c["command_id"], "success": true})
        )))
    );
    assert_eq!(r.status(), StatusCode::OK);
    wait_for_event(&app, "node.replaced", &id, 1).await;
    // The replaced connection going away does not make the node offline.
    assert_eq!(status_of(&app, &id).await["status"], "online");
    let offline = app
        .get_json(&format!("/api/v1/events?type=node.offline&node_id={id}"))
        .await;
    assert_eq!(offline["total"], 0);
    // Deleting the node closes its connection.
    let r = app
        .admin(Method::DELETE, &format!("/api/v1/nodes/{id}"))
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert!(new.closed().await);
    app.stop().await;
}

#[tokio::test]
async fn the_node_listener_certificate_is_shown_and_replaced() {
    let app = spawn_app().await;
    let info = app.get_json("/api/v1/settings/tls").await;
    assert_eq!(
        (info["source"].as_str(), info["self_signed"].as_bool()),
        (Some("generated"), Some(true))
    );
    assert!(info["fingerprint_sha256"]
        .as_str()
        .is_some_and(|f| f.len() == 64));
    assert!(info["not_after"].is_string());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(app.config.data_dir.join("node-tls.key"))
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    let make = |name: &str| {
        let params = rcgen::CertificateParams::new(vec![name.to_string()]).expect("params");
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("cert");
        (cert.pem(), key.serialize_pem())
    };
    let (cert, _) = make("localhost");
    let (_, other_key) = make("localhost");
    let r = app
        .admin(Method::POST, "/api/v1/settings/tls/upload")
        .json(&json!({"cert_pem": cert, "key_pem": other_key}))
        .send()
        .await
        .expect("upload");
    let e = expect_error(r, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await;
    assert!(
        e["error"]
            .as_str()
            .expect("msg")
            .contains("does not belong"),
        "{e}"
    );

    let (cert, key) = make("localhost");
    let r = app
        .admin(Method::POST, "/api/v1/settings/tls/upload")
        .json(&json!({"cert_pem": cert, "key_pem": key}))
        .send()
        .await
        .expect("upload");
    assert_eq!(r.status(), StatusCode::OK);
    let up: Value = r.json().await.expect("json");
    assert_eq!(up["source"], "uploaded");
    assert_ne!(up["fingerprint_sha256"], info["fingerprint_sha256"]);
    // New connections get the uploaded certificate (and no longer the old one).
    let mut n = connect_trusting(&app, cert.as_bytes())
        .await
        .expect("trusts the upload");
    assert_eq!(n.auth(json!({})).await["type"], "auth_error");
    app.stop().await;
}

/// Two managers on one PostgreSQL and NATS: a node connected to A is online on B,
/// with A's live view of it; B's commands and configuration requests reach it
/// through A; B's delete closes its connection on A; its disconnection shows on B.
#[tokio::test]
async fn a_node_on_one_replica_is_seen_and_commanded_from_the_other() {
    let Ok(nats) = std::env::var("FLEETGATE_TEST_NATS_URL") else {
        eprintln!("skipping two-replica node case: FLEETGATE_TEST_NATS_URL is not set");
        return;
    };
    let Some(url) = crate::support::postgres_schema_url().await else {
        return;
    };
    let (a, b) = crate::scale_out::pair_on(&url, Some(&nats)).await;
    let (mut node, id, _) = registered(&a, "edge").await;
    node.send(
        "health",
        json!({"status": "ok", "version": "0.5.3", "active_flows": 1}),
    )
    .await;
    node.send(
        "stats",
        json!({"flows": [], "active_flows": 1, "total_flows": 1}),
    )
    .await;
    let on_a = wait_status(&a, &id, "online").await;
    let instance_a = on_a["connected_to"].as_str().expect("replica").to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    let on_b = loop {
        let v = status_of(&b, &id).await;
        if v["status"] == "online" && v["last_stats"]["total_flows"] == 1 {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "B never saw the node's live state: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(on_b["connected_to"], instance_a.as_str());
    assert_eq!(on_b["last_health"]["version"], "0.5.3");
    assert_eq!(on_b["software_version"], "0.5.3");
    assert_eq!(on_b["connected_since"], on_a["connected_since"]);
    let listed = b.get_json("/api/v1/nodes").await;
    assert_eq!(listed["items"][0]["status"], "online", "{listed}");

    // A command through B: the node gets it from A, and its answer comes back.
    let (r, cmd) = tokio::join!(
        command(
            &b,
            &id,
            json!({"action": {"type": "stop_flow", "flow_id": "f1"}})
        ),
        answer(&mut node, |c| Some((
            "command_ack".into(),
            json!({"command_id": c["command_id"], "success": true, "error": null})
        )))
    );
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["command_id"], cmd["command_id"]);
    let (r, _) = tokio::join!(
        command(
            &b,
            &id,
            json!({"action": {"type": "start_flow", "flow_id": "x"}})
        ),
        answer(&mut node, |c| Some((
            "command_ack".into(),
            json!({"command_id": c["command_id"], "success": false, "error": "Flow x not found"})
        )))
    );
    let e = expect_error(r, StatusCode::UNPROCESSABLE_ENTITY, "NODE_REFUSED").await;
    assert_eq!(e["details"]["node_error"], "Flow x not found");
    // The configuration through B: asked of the node by A.
    let path = format!("/api/v1/nodes/{id}/config");
    let (r, _) = tokio::join!(
        b.admin(Method::GET, &path).send(),
        answer(&mut node, |_| Some((
            "config_response".into(),
            json!({"version": 1, "flows": [{"id": "f9"}]})
        )))
    );
    let r = r.expect("config");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.json::<Value>().await.expect("json")["flows"][0]["id"],
        "f9"
    );
    // A command nobody answers: 504 from B too.
    let (r, _) = tokio::join!(
        command(
            &b,
            &id,
            json!({"action": {"type": "restart_flow", "flow_id": "f1"}})
        ),
        answer(&mut node, |_| None)
    );
    expect_error(r, StatusCode::GATEWAY_TIMEOUT, "NODE_TIMEOUT").await;

    // The node goes away: offline on both.
    drop(node);
    wait_status(&a, &id, "offline").await;
    let off = wait_status(&b, &id, "offline").await;
    assert!(off["connected_to"].is_null(), "{off}");
    let r = command(
        &b,
        &id,
        json!({"action": {"type": "stop_flow", "flow_id": "f1"}}),
    )
    .await;
    expect_error(r, StatusCode::BAD_GATEWAY, "NODE_NOT_CONNECTED").await;

    // Deleting it on B closes its connection on A.
    let created = create_node(&a, json!({"name": "edge-2"})).await;
    let mut node = connect(&a).await;
    let reply = node
        .auth(json!({"registration_token": created["registration_token"], "protocol_version": 1}))
        .await;
    let id2 = reply["payload"]["node_id"]
        .as_str()
        .expect("id")
        .to_string();
    wait_status(&b, &id2, "online").await;
    let r = b
        .admin(Method::DELETE, &format!("/api/v1/nodes/{id2}"))
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert!(
        node.closed().await,
        "A closed the deleted node's connection"
    );
}

/// Stats and health become downsampled history: the minute in progress is served
/// at once (partial), with totals over the flows; bad windows are refused.
#[tokio::test]
async fn stats_and_health_become_history() {
    let app = spawn_app().await;
    let (mut node, id, _) = registered(&app, "edge").await;
    node.send(
        "health",
        json!({"status": "ok", "version": "0.5.3", "active_flows": 1}),
    )
    .await;
    for received in [100, 300] {
        node.send(
            "stats",
            json!({"active_flows": 1, "total_flows": 1, "flows": [{"flow_id": "f1", "state": "running",
                "input": {"bitrate_bps": 8000, "packets_received": received},
                "outputs": [{"output_id": "o1", "packets_sent": received, "packets_dropped": 2}]}]}),
        )
        .await;
    }
    let path = format!("/api/v1/nodes/{id}/history");
    let deadline = Instant::now() + Duration::from_secs(10);
    let h = loop {
        let h = app.get_json(&path).await;
        let n = h["points"]
            .as_array()
            .and_then(|p| p.last())
            .map(|p| p["metrics"]["flows.packets_received"]["n"].clone());
        if n == Some(json!(2)) {
            break h;
        }
        assert!(Instant::now() < deadline, "no history: {h}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(h["resolution"], 60);
    let last = h["points"]
        .as_array()
        .and_then(|p| p.last())
        .expect("point");
    assert_eq!(last["partial"], true);
    let m = &last["metrics"];
    assert_eq!(m["flows.packets_received"]["avg"], 200.0);
    assert_eq!(m["flows.packets_received"]["max"], 300.0);
    assert_eq!(m["flows.packets_received"]["last"], 300.0);
    assert_eq!(m["flows.running"]["last"], 1.0);
    assert_eq!(m["flows.packets_dropped"]["last"], 2.0);
    assert_eq!(m["health.ok"]["last"], 1.0);
    let hour = app.get_json(&format!("{path}?resolution=3600")).await;
    assert_eq!(hour["resolution"], 3600);
    assert!(
        !hour["points"].as_array().expect("points").is_empty(),
        "{hour}"
    );
    for (q, field) in [
        ("resolution=5", "resolution"),
        ("from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z", "from"),
        ("from=2020-01-01T00:00:00Z&to=2026-01-01T00:00:00Z", "from"),
        ("to=yesterday", "to"),
    ] {
        let r = app
            .admin(Method::GET, &format!("{path}?{q}"))
            .send()
            .await
            .expect("get");
        let e = expect_error(r, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await;
        assert_eq!(e["details"]["field"], field, "{q}: {e}");
    }
    let r = app
        .admin(Method::GET, "/api/v1/nodes/nope/history")
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

/// A user limited to some nodes sees, streams and acknowledges only the events
/// of those nodes (and events of no node).
#[tokio::test]
async fn limited_users_see_only_their_nodes_events() {
    let app = spawn_app().await;
    let (mut mine, mine_id, _) = registered(&app, "edge").await;
    let (mut other, other_id, _) = registered(&app, "edge").await;
    let key = limited_key(&app, "limited-ev", &[&mine_id]).await;
    // The stream opens before the nodes report.
    let mut stream = app
        .anon(Method::GET, "/api/v1/stream/events?type=node.event")
        .bearer_auth(&key)
        .send()
        .await
        .expect("stream");
    assert_eq!(stream.status(), StatusCode::OK);
    for (node, text) in [(&mut other, "other-secret-event"), (&mut mine, "my-event")] {
        node.send(
            "event",
            json!({"severity": "warning", "category": "flow", "message": text}),
        )
        .await;
    }
    wait_for_event(&app, "node.event", &other_id, 1).await;
    wait_for_event(&app, "node.event", &mine_id, 1).await;
    // Listing: everyone's for the admin, only its node's for the limited user.
    let all = app.get_json("/api/v1/events?type=node.event").await;
    assert_eq!(all["total"], 2);
    let seen: Value = app
        .anon(Method::GET, "/api/v1/events?type=node.event")
        .bearer_auth(&key)
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(seen["total"], 1, "{seen}");
    assert_eq!(seen["items"][0]["node_id"], mine_id.as_str());
    // Streaming: the other node's event never arrives, its own does.
    let mut text = String::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !text.contains("my-event") && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_millis(500), stream.chunk()).await {
            Ok(Ok(Some(c))) => text.push_str(&String::from_utf8_lossy(&c)),
            Ok(_) => break,
            Err(_) => {}
        }
    }
    assert!(text.contains("my-event"), "{text}");
    assert!(!text.contains("other-secret-event"), "{text}");
    // Counting: the other node's events are not counted for this user.
    let counted: Value = app
        .anon(Method::GET, "/api/v1/events/count")
        .bearer_auth(&key)
        .send()
        .await
        .expect("count")
        .json()
        .await
        .expect("json");
    let everyone = app.get_json("/api/v1/events/count").await;
    let others = app
        .get_json(&format!(
            "/api/v1/events?node_id={other_id}&acknowledged=false"
        ))
        .await;
    assert_eq!(
        counted["total"].as_i64().expect("total"),
        everyone["total"].as_i64().expect("total") - others["total"].as_i64().expect("total"),
        "{counted} {everyone} {others}"
    );
    // Acknowledging the other node's event: not found for this user.
    let other_event = all["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|e| e["node_id"] == other_id.as_str())
        .expect("other's event")["id"]
        .clone();
    let r = app
        .anon(Method::POST, &format!("/api/v1/events/{other_event}/ack"))
        .bearer_auth(&key)
        .send()
        .await
        .expect("ack");
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    // Acknowledging "everything" acknowledges only what it may see.
    let r = app
        .anon(Method::POST, "/api/v1/events/ack")
        .bearer_auth(&key)
        .json(&json!({"type": "node.event"}))
        .send()
        .await
        .expect("ack all");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.expect("json")["acknowledged"], 1);
}
