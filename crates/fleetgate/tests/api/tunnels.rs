//! Tunnels over the API against scripted nodes: validation, the secrets generated
//! and sent only to the nodes (never shown, never audited), the relay's bind tokens
//! matching the edges' bind secret, each leg's state, and withdrawal on delete.

use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::nodes::{answer, registered, TestNode};
use crate::support::{expect_error, spawn_app, TestApp};

fn ack(c: &Value) -> Option<(String, Value)> {
    Some((
        "command_ack".into(),
        json!({"command_id": c["command_id"], "success": true, "error": null}),
    ))
}

fn token(secret: &str, id: &str, direction: &str) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("key");
    mac.update(format!("{id}:{direction}").as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

async fn post(app: &TestApp, body: Value) -> reqwest::Response {
    app.admin(Method::POST, "/api/v1/tunnels")
        .json(&body)
        .send()
        .await
        .expect("post")
}

async fn wait_status(app: &TestApp, id: &str, want: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let v = app.get_json(&format!("/api/v1/tunnels/{id}")).await;
        if v["status"] == want {
            return v;
        }
        assert!(Instant::now() < deadline, "tunnel never {want}: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

struct Fleet {
    entry: TestNode,
    exit: TestNode,
    relay: TestNode,
    entry_id: String,
    exit_id: String,
    relay_id: String,
}

async fn fleet(app: &TestApp) -> Fleet {
    let (entry, entry_id, _) = registered(app, "edge").await;
    let (exit, exit_id, _) = registered(app, "edge").await;
    let (relay, relay_id, _) = registered(app, "relay").await;
    Fleet {
        entry,
        exit,
        relay,
        entry_id,
        exit_id,
        relay_id,
    }
}

#[tokio::test]
async fn a_relay_tunnel_reaches_its_nodes_with_matching_secrets() {
    let app = spawn_app().await;
    let mut f = fleet(&app).await;
    let body = json!({"name": "ssh", "protocol": "tcp", "mode": "relay",
        "ingress_node_id": f.entry_id, "ingress_listen_port": 2222,
        "egress_node_id": f.exit_id, "egress_forward_addr": "127.0.0.1:22",
        "relay_node_id": f.relay_id, "relay_addr": "relay.example:4433"});
    let r = post(&app, body.clone()).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let created: Value = r.json().await.expect("json");
    let id = created["id"].as_str().expect("id").to_string();
    assert_eq!(created["status"], "pending");
    // The relay is told first, then the entry edge, then the exit edge.
    let auth = answer(&mut f.relay, ack).await;
    let entry = answer(&mut f.entry, ack).await;
    let exit = answer(&mut f.exit, ack).await;
    assert_eq!(auth["action"]["type"], "authorize_tunnel");
    let (e, x) = (&entry["action"], &exit["action"]);
    assert_eq!(
        (e["type"].as_str(), x["type"].as_str()),
        (Some("create_tunnel"), Some("create_tunnel"))
    );
    let (e, x) = (&e["tunnel"], &x["tunnel"]);
    assert_eq!(
        (e["id"].as_str(), x["id"].as_str()),
        (Some(id.as_str()), Some(id.as_str()))
    );
    assert_eq!(
        (e["direction"].as_str(), x["direction"].as_str()),
        (Some("egress"), Some("ingress"))
    );
    assert_eq!(e["local_addr"], "0.0.0.0:2222");
    assert_eq!(x["local_addr"], "127.0.0.1:22");
    assert_eq!(
        (e["relay_addr"].as_str(), x["relay_addr"].as_str()),
        (Some("relay.example:4433"), Some("relay.example:4433"))
    );
    let secret = e["tunnel_bind_secret"].as_str().expect("bind secret");
    let key = e["tunnel_encryption_key"].as_str().expect("key");
    assert_eq!((secret.len(), key.len()), (64, 64));
    assert_eq!(x["tunnel_bind_secret"], secret);
    assert_eq!(x["tunnel_encryption_key"], key);
    assert_ne!(secret, key);
    // The relay's tokens are the edges' own, from the same secret.
    assert_eq!(
        auth["action"]["ingress_token"],
        token(secret, &id, "ingress")
    );
    assert_eq!(auth["action"]["egress_token"], token(secret, &id, "egress"));
    let v = wait_status(&app, &id, "active").await;
    assert_eq!(v["relay"]["push_status"], "pushed");
    // The secrets are never shown, nor audited.
    for text in [
        v.to_string(),
        app.get_json("/api/v1/tunnels").await.to_string(),
        app.get_json("/api/v1/audit?target_type=tunnel")
            .await
            .to_string(),
    ] {
        assert!(!text.contains(secret) && !text.contains(key), "{text}");
    }

    // The same port of the same node, same protocol: refused, naming the tunnel.
    let r = post(&app, body.clone()).await;
    let e = expect_error(r, StatusCode::CONFLICT, "LISTEN_CLASH").await;
    assert!(e["error"].as_str().expect("msg").contains("ssh"), "{e}");
    // UDP on that port is another listener.
    let mut udp = body.clone();
    udp["protocol"] = json!("udp");
    udp["name"] = json!("media");
    let r = post(&app, udp).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let udp: Value = r.json().await.expect("json");
    // The exit edge refuses it: that leg fails with its error.
    answer(&mut f.relay, ack).await;
    answer(&mut f.entry, ack).await;
    answer(&mut f.exit, |c| {
        Some((
            "command_ack".into(),
            json!({"command_id": c["command_id"], "success": false, "error": "port 22 unreachable"}),
        ))
    })
    .await;
    let v = wait_status(&app, udp["id"].as_str().expect("id"), "error").await;
    assert_eq!(v["egress"]["push_status"], "failed");
    assert_eq!(v["egress"]["push_error"], "port 22 unreachable");

    // Disabling withdraws it from the nodes.
    let r = app
        .admin(Method::PUT, &format!("/api/v1/tunnels/{id}"))
        .json(&json!({"enabled": false}))
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), StatusCode::OK);
    let revoke = answer(&mut f.relay, ack).await;
    assert_eq!(
        revoke["action"],
        json!({"type": "revoke_tunnel", "tunnel_id": id})
    );
    let del = answer(&mut f.entry, ack).await;
    assert_eq!(
        del["action"],
        json!({"type": "delete_tunnel", "tunnel_id": id})
    );
    answer(&mut f.exit, ack).await;
    assert_eq!(wait_status(&app, &id, "disabled").await["enabled"], false);
    // Deleting the other one does too.
    let r = app
        .admin(
            Method::DELETE,
            &format!("/api/v1/tunnels/{}", udp["id"].as_str().expect("id")),
        )
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        answer(&mut f.relay, ack).await["action"]["type"],
        "revoke_tunnel"
    );
    assert_eq!(
        answer(&mut f.entry, ack).await["action"]["type"],
        "delete_tunnel"
    );
    assert_eq!(
        answer(&mut f.exit, ack).await["action"]["type"],
        "delete_tunnel"
    );
}

#[tokio::test]
async fn tunnels_are_checked_before_they_are_stored() {
    let app = spawn_app().await;
    let f = fleet(&app).await;
    let base = json!({"name": "t", "protocol": "tcp", "mode": "direct",
        "ingress_node_id": f.entry_id, "ingress_listen_port": 8000,
        "egress_node_id": f.exit_id, "egress_forward_addr": "10.0.0.5:80",
        "egress_peer_addr": "203.0.113.4:4444"});
    let cases: Vec<(Value, &str)> = vec![
        (json!({"protocol": "sctp"}), "protocol"),
        (json!({"mode": "mesh"}), "mode"),
        (json!({"egress_peer_addr": null}), "egress_peer_addr"),
        (
            json!({"egress_forward_addr": "10.0.0.5"}),
            "egress_forward_addr",
        ),
        (
            json!({"egress_forward_addr": "10.0.0.5:0"}),
            "egress_forward_addr",
        ),
        (json!({"ingress_node_id": f.relay_id}), "ingress_node_id"),
        (json!({"egress_node_id": "nope"}), "egress_node_id"),
        (json!({"egress_node_id": f.entry_id}), "egress_node_id"),
        (
            json!({"relay_node_id": f.relay_id, "relay_addr": "r:1"}),
            "relay_node_id",
        ),
        (json!({"mode": "relay"}), "relay_node_id"),
        (
            json!({"mode": "relay", "relay_node_id": f.entry_id, "relay_addr": "r:1", "egress_peer_addr": null}),
            "relay_node_id",
        ),
        (json!({"name": ""}), "name"),
    ];
    for (patch, field) in cases {
        let mut body = base.clone();
        for (k, v) in patch.as_object().expect("object") {
            body[k] = v.clone();
        }
        let r = post(&app, body.clone()).await;
        let e = expect_error(r, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await;
        assert_eq!(e["details"]["field"], field, "{body}: {e}");
    }
    let r = post(&app, json!({"name": "t", "protocol": "tcp", "port": 1})).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(app.get_json("/api/v1/tunnels").await["total"], 0);
    // A direct tunnel's QUIC port on the exit edge is a listener too.
    let r = post(&app, base.clone()).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let mut other = base.clone();
    other["ingress_listen_port"] = json!(8001);
    let e = expect_error(
        post(&app, other).await,
        StatusCode::CONFLICT,
        "LISTEN_CLASH",
    )
    .await;
    assert!(e["error"].as_str().expect("msg").contains("4444"), "{e}");
    // Ten creates at once for one free port: one is created, nine clash.
    let racers = (0..10).map(|i| {
        let mut body = base.clone();
        body["name"] = json!(format!("racer {i}"));
        body["ingress_listen_port"] = json!(8100);
        body["egress_peer_addr"] = json!(format!("203.0.113.4:{}", 5000 + i));
        post(&app, body)
    });
    let mut statuses = Vec::new();
    for r in futures::future::join_all(racers).await {
        let status = r.status();
        if status == StatusCode::CONFLICT {
            expect_error(r, status, "LISTEN_CLASH").await;
        }
        statuses.push(status);
    }
    let created = statuses
        .iter()
        .filter(|s| **s == StatusCode::CREATED)
        .count();
    assert_eq!(created, 1, "{statuses:?}");
    assert_eq!(app.get_json("/api/v1/tunnels").await["total"], 2);
    // Viewers cannot create.
    let key = app.key_for_role("viewer-t", "viewer").await;
    let r = app
        .anon(Method::POST, "/api/v1/tunnels")
        .bearer_auth(&key)
        .json(&base)
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    drop(f);
}

/// A node that connects again gets its tunnels again (it may have lost them).
#[tokio::test]
async fn a_reconnecting_edge_gets_its_tunnels_again() {
    let app = spawn_app().await;
    let (mut entry, entry_id, secret) = registered(&app, "edge").await;
    let (mut exit, exit_id, _) = registered(&app, "edge").await;
    let r = post(
        &app,
        json!({"name": "direct", "protocol": "udp", "mode": "direct",
            "ingress_node_id": entry_id, "ingress_listen_port": 5000,
            "egress_node_id": exit_id, "egress_forward_addr": "127.0.0.1:5001",
            "egress_peer_addr": "127.0.0.1:4444"}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let id = r.json::<Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .to_string();
    let first = answer(&mut entry, ack).await;
    let psk = first["action"]["tunnel"]["tunnel_psk"]
        .as_str()
        .expect("psk")
        .to_string();
    assert_eq!(first["action"]["tunnel"]["peer_addr"], "127.0.0.1:4444");
    let other = answer(&mut exit, ack).await;
    assert_eq!(
        other["action"]["tunnel"]["direct_listen_addr"],
        "0.0.0.0:4444"
    );
    assert_eq!(other["action"]["tunnel"]["tunnel_psk"], psk.as_str());
    wait_status(&app, &id, "active").await;

    drop(entry);
    let mut again = crate::nodes::connect(&app).await;
    let reply = again
        .auth(json!({"node_id": entry_id, "node_secret": secret, "protocol_version": 1}))
        .await;
    assert_eq!(reply["type"], "auth_ok", "{reply}");
    let pushed = answer(&mut again, ack).await;
    assert_eq!(pushed["action"]["type"], "create_tunnel");
    assert_eq!(pushed["action"]["tunnel"]["id"], id.as_str());
    assert_eq!(pushed["action"]["tunnel"]["tunnel_psk"], psk.as_str());
}
