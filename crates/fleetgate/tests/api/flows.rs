//! L4 flows on a real `fleetgate edge` (`fleetgate::start_edge`) registered with a
//! real manager, driven through `POST /api/v1/nodes/{id}/command`: UDP fan-out
//! checked byte for byte at local sockets, the counters the manager holds from
//! the edge's `stats`, RTP loss, stop/start, a flow created disabled, duplicate
//! ids, outputs added and removed while the flow runs, a port conflict
//! reported as an event, `update_config`'s flows, and flows surviving a restart
//! of the edge.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use fleetgate::RunningEdge;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::net::UdpSocket;

use crate::edge_sync::{create_node, edge_config, node_until};
use crate::support::TestApp;

/// A manager, an edge registered with it (online), and the node's id.
struct Fleet {
    app: TestApp,
    edge: RunningEdge,
    node: String,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

impl Fleet {
    async fn start() -> Fleet {
        // The test polls the nodes' stats: no API rate limit.
        let (app, mdir) = crate::edge_sync::start_unlimited_manager().await;
        let (node, token) = create_node(&app, "flows-edge").await;
        let edir = tempfile::tempdir().expect("tempdir");
        let edge = fleetgate::start_edge(
            edge_config(&app, edir.path(), Some(token)),
            std::future::pending(),
        )
        .await
        .expect("edge starts");
        node_until(&app, &node, "online", |v| v["status"] == "online").await;
        Fleet {
            app,
            edge,
            node,
            _dirs: (mdir, edir),
        }
    }

    /// Sends `action` to the edge; returns the status and body.
    async fn command(&self, action: Value) -> (StatusCode, Value) {
        let r = self
            .app
            .admin(
                Method::POST,
                &format!("/api/v1/nodes/{}/command", self.node),
            )
            .json(&json!({ "action": action }))
            .send()
            .await
            .expect("command");
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn ok(&self, action: Value) {
        let (status, body) = self.command(action.clone()).await;
        assert_eq!(status, StatusCode::OK, "{action}: {body}");
    }

    /// Waits until the manager holds stats of flow `id` satisfying `ok`.
    async fn flow_stats_until(&self, id: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
        let v = node_until(&self.app, &self.node, what, |v| {
            flow_of(v, id).is_some_and(&ok)
        })
        .await;
        flow_of(&v, id).cloned().expect("flow stats")
    }

    async fn stop(self) {
        self.edge.shutdown().await.expect("edge stops");
        self.app.stop().await;
    }
}

fn flow_of<'a>(node: &'a Value, id: &str) -> Option<&'a Value> {
    node["last_stats"]["flows"]
        .as_array()?
        .iter()
        .find(|f| f["flow_id"] == id)
}

/// A UDP port nothing uses right now.
fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("free port")
        .port()
}

async fn sink() -> (UdpSocket, SocketAddr) {
    let s = UdpSocket::bind("127.0.0.1:0").await.expect("sink");
    let a = s.local_addr().expect("addr");
    (s, a)
}

fn udp_output(id: &str, dest: SocketAddr) -> Value {
    json!({"type": "udp", "id": id, "name": format!("out {id}"), "dest_addr": dest.to_string()})
}

fn udp_flow(id: &str, port: u16, outputs: Vec<Value>) -> Value {
    json!({"id": id, "name": format!("flow {id}"),
           "input": {"type": "udp", "bind_addr": format!("127.0.0.1:{port}")},
           "outputs": outputs})
}

fn numbered(n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| format!("datagram {i:05} of the test").into_bytes())
        .collect()
}

/// Sends `packets` to the flow's input, paced so that no socket buffer on the
/// way (the edge's input, the test's sinks) overflows on a busy machine.
async fn send_all(port: u16, packets: &[Vec<u8>]) {
    let tx = UdpSocket::bind("127.0.0.1:0").await.expect("sender");
    for (i, p) in packets.iter().enumerate() {
        tx.send_to(p, ("127.0.0.1", port)).await.expect("send");
        if i % 16 == 15 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// Receives `n` datagrams on `s` in the background (while they are sent).
fn receiving(s: UdpSocket, n: usize) -> tokio::task::JoinHandle<(UdpSocket, Vec<Vec<u8>>)> {
    tokio::spawn(async move {
        let got = receive(&s, n).await;
        (s, got)
    })
}

async fn receive(s: &UdpSocket, n: usize) -> Vec<Vec<u8>> {
    let mut got = Vec::with_capacity(n);
    let mut buf = [0u8; 2048];
    for i in 0..n {
        let len = tokio::time::timeout(Duration::from_secs(5), s.recv(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("datagram {i} of {n} never arrived"))
            .expect("recv");
        got.push(buf[..len].to_vec());
    }
    got
}

async fn nothing_arrives(s: &UdpSocket) -> bool {
    let mut buf = [0u8; 2048];
    tokio::time::timeout(Duration::from_millis(500), s.recv(&mut buf))
        .await
        .is_err()
}

#[tokio::test]
async fn a_udp_flow_fans_out_to_two_outputs_and_its_counters_reach_the_manager() {
    let f = Fleet::start().await;
    let ((a, a_addr), (b, b_addr)) = (sink().await, sink().await);
    let port = free_udp_port();
    f.ok(json!({"type": "create_flow",
                "flow": udp_flow("fan", port, vec![udp_output("a", a_addr), udp_output("b", b_addr)])}))
        .await;
    const N: usize = 300;
    let packets = numbered(N);
    let (ra, rb) = (receiving(a, N), receiving(b, N));
    send_all(port, &packets).await;
    assert_eq!(ra.await.expect("a").1, packets, "output a");
    assert_eq!(rb.await.expect("b").1, packets, "output b");

    let s = f
        .flow_stats_until("fan", "reported every datagram", |s| {
            s["input"]["packets_received"] == N
                && s["outputs"]
                    .as_array()
                    .is_some_and(|o| o.iter().all(|o| o["packets_sent"] == N))
        })
        .await;
    assert_eq!(s["state"], "running");
    assert_eq!(s["flow_name"], "flow fan");
    assert_eq!(s["health"], "healthy");
    assert_eq!(s["input"]["input_type"], "udp");
    assert_eq!(s["input"]["bind_addr"], format!("127.0.0.1:{port}"));
    let bytes: usize = packets.iter().map(Vec::len).sum();
    assert_eq!(s["input"]["bytes_received"], bytes);
    for (o, id) in s["outputs"]
        .as_array()
        .expect("outputs")
        .iter()
        .zip(["a", "b"])
    {
        assert_eq!(o["output_id"], id);
        assert_eq!(o["output_type"], "udp");
        assert_eq!(o["bytes_sent"], bytes);
        assert_eq!(o["packets_dropped"], 0);
    }
    let node = f.app.get_json(&format!("/api/v1/nodes/{}", f.node)).await;
    assert_eq!(node["last_stats"]["active_flows"], 1);
    assert_eq!(node["last_stats"]["total_flows"], 1);
    assert_eq!(
        node["last_health"]["capabilities"]["flow_inputs"],
        json!(["udp", "rtp", "tcp"])
    );
    // get_config holds the flow in the node protocol's shape.
    let config = f
        .app
        .get_json(&format!("/api/v1/nodes/{}/config", f.node))
        .await;
    assert_eq!(config["version"], 1);
    assert_eq!(config["flows"][0]["id"], "fan");
    assert_eq!(config["flows"][0]["outputs"][1]["dscp"], 46);
    f.stop().await;
}

#[tokio::test]
async fn flow_commands_stop_start_refuse_duplicates_and_change_outputs_live() {
    let f = Fleet::start().await;
    let ((a, a_addr), (b, b_addr)) = (sink().await, sink().await);
    let port = free_udp_port();
    // Created disabled: stored but stopped.
    let mut flow = udp_flow("cmd", port, vec![udp_output("a", a_addr)]);
    flow["enabled"] = json!(false);
    f.ok(json!({"type": "create_flow", "flow": flow})).await;
    f.flow_stats_until("cmd", "idle", |s| s["state"] == "idle")
        .await;
    send_all(port, &numbered(3)).await;
    assert!(nothing_arrives(&a).await, "a disabled flow forwarded");

    // A second create with the same id is refused with the node's error.
    let (status, body) = f
        .command(json!({"type": "create_flow", "flow": flow}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(
        body["details"]["node_error"], "Duplicate flow ID: cmd",
        "{body}"
    );

    f.ok(json!({"type": "start_flow", "flow_id": "cmd"})).await;
    send_all(port, &numbered(4)).await;
    assert_eq!(receive(&a, 4).await, numbered(4));

    // An output added while the flow runs gets the next packets; a keeps going.
    f.ok(json!({"type": "add_output", "flow_id": "cmd", "output": udp_output("b", b_addr)}))
        .await;
    send_all(port, &numbered(5)).await;
    assert_eq!(receive(&a, 5).await, numbered(5));
    assert_eq!(receive(&b, 5).await, numbered(5));
    f.ok(json!({"type": "remove_output", "flow_id": "cmd", "output_id": "a"}))
        .await;
    send_all(port, &numbered(2)).await;
    assert_eq!(receive(&b, 2).await, numbered(2));
    assert!(nothing_arrives(&a).await, "a removed output still receives");
    let s = f
        .flow_stats_until("cmd", "lost output a", |s| {
            s["outputs"].as_array().is_some_and(|o| o.len() == 1)
                && s["input"]["packets_received"] == 11
        })
        .await;
    assert_eq!(s["outputs"][0]["output_id"], "b");
    assert_eq!(s["outputs"][0]["packets_sent"], 7);

    // Stopped: nothing is forwarded.
    f.ok(json!({"type": "stop_flow", "flow_id": "cmd"})).await;
    send_all(port, &numbered(3)).await;
    assert!(nothing_arrives(&b).await, "a stopped flow forwarded");
    f.flow_stats_until("cmd", "stopped", |s| s["state"] == "idle")
        .await;

    // Errors name what is wrong.
    for (action, want) in [
        (
            json!({"type": "start_flow", "flow_id": "nope"}),
            "Flow not found: nope",
        ),
        (
            json!({"type": "remove_output", "flow_id": "cmd", "output_id": "zzz"}),
            "Output not found",
        ),
        (
            json!({"type": "create_flow", "flow": {"id": "s", "name": "s",
                   "input": {"type": "srt", "mode": "listener", "local_addr": "0.0.0.0:9000"}, "outputs": []}}),
            "input type \"srt\" is not supported on this edge",
        ),
    ] {
        let (status, body) = f.command(action.clone()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{action}: {body}");
        let err = body["details"]["node_error"].as_str().unwrap_or_default();
        assert!(err.contains(want), "{action}: {body}");
    }
    f.ok(json!({"type": "delete_flow", "flow_id": "cmd"})).await;
    node_until(&f.app, &f.node, "no flows", |v| {
        v["last_stats"]["total_flows"] == 0
    })
    .await;
    f.stop().await;
}

fn rtp_packet(seq: u16) -> Vec<u8> {
    let mut p = vec![0x80, 33];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&90_000u32.to_be_bytes());
    p.extend_from_slice(&0x1234_5678u32.to_be_bytes());
    p.extend_from_slice(&[0x47; 188]);
    p
}

#[tokio::test]
async fn an_rtp_sequence_gap_is_counted_as_lost_packets() {
    let f = Fleet::start().await;
    let (a, a_addr) = sink().await;
    let port = free_udp_port();
    f.ok(
        json!({"type": "create_flow", "flow": {"id": "rtp", "name": "rtp",
        "input": {"type": "rtp", "bind_addr": format!("127.0.0.1:{port}")},
        "outputs": [{"type": "rtp", "id": "a", "name": "a", "dest_addr": a_addr.to_string()}]}}),
    )
    .await;
    // 10..=19, then 25..=29: 20 to 24 never sent.
    let packets: Vec<Vec<u8>> = (10..20).chain(25..30).map(rtp_packet).collect();
    send_all(port, &packets).await;
    assert_eq!(receive(&a, packets.len()).await, packets);
    let s = f
        .flow_stats_until("rtp", "counted the loss", |s| {
            s["input"]["packets_received"] == 15
        })
        .await;
    assert_eq!(s["input"]["input_type"], "rtp");
    assert_eq!(s["input"]["packets_lost"], 5);
    assert_eq!(s["input"]["packets_filtered"], 0);
    f.stop().await;
}

#[tokio::test]
async fn a_port_conflict_is_refused_and_stored_as_a_flow_event() {
    let f = Fleet::start().await;
    let holder = std::net::UdpSocket::bind("127.0.0.1:0").expect("holder");
    let port = holder.local_addr().expect("addr").port();
    let (status, body) = f
        .command(json!({"type": "create_flow", "flow": udp_flow("clash", port, vec![])}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["details"]["error_code"], "port_conflict", "{body}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let event = loop {
        let events = f
            .app
            .get_json(&format!("/api/v1/events?node_id={}&category=flow", f.node))
            .await;
        let found = events["items"]
            .as_array()
            .and_then(|items| items.iter().find(|e| e["flow_id"] == "clash").cloned());
        if let Some(e) = found {
            break e;
        }
        assert!(Instant::now() < deadline, "no flow event: {events}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(event["severity"], "critical");
    assert_eq!(
        event["details"]["details"]["error_code"], "port_conflict",
        "{event}"
    );
    assert!(
        event["message"]
            .as_str()
            .is_some_and(|m| m.contains(&format!("127.0.0.1:{port}"))),
        "{event}"
    );
    f.stop().await;
}

#[tokio::test]
async fn flows_run_again_after_the_edge_restarts() {
    let f = Fleet::start().await;
    let (a, a_addr) = sink().await;
    let port = free_udp_port();
    f.ok(json!({"type": "create_flow", "flow": udp_flow("kept", port, vec![udp_output("a", a_addr)])}))
        .await;
    let before =
        f.app.get_json(&format!("/api/v1/nodes/{}", f.node)).await["connected_since"].clone();
    let Fleet {
        app,
        edge,
        node,
        _dirs,
    } = f;
    edge.shutdown().await.expect("edge stops");
    // Started again from its data directory, with its stored identity.
    let mut config = edge_config(&app, _dirs.1.path(), None);
    config.edge.token = None;
    let edge = fleetgate::start_edge(config, std::future::pending())
        .await
        .expect("edge restarts");
    let f = Fleet {
        app,
        edge,
        node,
        _dirs,
    };
    // The edge starts its stored flows before it connects: stats of the new
    // connection show the flow running.
    node_until(&f.app, &f.node, "reconnected with the flow running", |v| {
        v["connected_since"] != before
            && flow_of(v, "kept").is_some_and(|s| s["state"] == "running")
    })
    .await;
    send_all(port, &numbered(3)).await;
    assert_eq!(receive(&a, 3).await, numbered(3));
    f.flow_stats_until("kept", "counted after the restart", |s| {
        s["input"]["packets_received"] == 3
    })
    .await;
    f.stop().await;
}

#[tokio::test]
async fn update_config_sets_the_flows_and_keeps_those_unchanged_running() {
    let f = Fleet::start().await;
    let ((a, a_addr), (b, b_addr)) = (sink().await, sink().await);
    let (p1, p2) = (free_udp_port(), free_udp_port());
    let keep = udp_flow("keep", p1, vec![udp_output("a", a_addr)]);
    f.ok(json!({"type": "create_flow", "flow": keep})).await;
    f.ok(json!({"type": "create_flow", "flow": udp_flow("drop", free_udp_port(), vec![])}))
        .await;
    send_all(p1, &numbered(2)).await;
    assert_eq!(receive(&a, 2).await, numbered(2));

    let config = json!({"version": 1, "device_name": "ignored",
        "flows": [keep, udp_flow("add", p2, vec![udp_output("b", b_addr)])]});
    f.ok(json!({"type": "update_config", "config": config}))
        .await;
    send_all(p1, &numbered(1)).await;
    send_all(p2, &numbered(1)).await;
    assert_eq!(receive(&a, 1).await, numbered(1));
    assert_eq!(receive(&b, 1).await, numbered(1));
    let v = node_until(&f.app, &f.node, "shows the new flows", |v| {
        v["last_stats"]["total_flows"] == 2
            && flow_of(v, "add").is_some()
            && flow_of(v, "keep").is_some_and(|s| s["input"]["packets_received"] == 3)
    })
    .await;
    assert!(flow_of(&v, "drop").is_none());
    let config = f
        .app
        .get_json(&format!("/api/v1/nodes/{}/config", f.node))
        .await;
    let ids: Vec<&str> = config["flows"]
        .as_array()
        .expect("flows")
        .iter()
        .filter_map(|f| f["id"].as_str())
        .collect();
    assert_eq!(ids, ["keep", "add"]);
    f.stop().await;
}

/// An AI action applied in parts: its gateway revision and redirect draft are
/// written, then the edge refuses its flow command (no such flow). What was
/// written is rolled back, and the error says exactly which part failed, what
/// was rolled back, what is still in force and what was never applied.
#[tokio::test]
async fn an_ai_action_whose_node_command_fails_is_rolled_back_and_reported() {
    let f = Fleet::start().await;
    let app = &f.app;
    for (path, body) in [
        ("/api/v1/namespaces", json!({"name": "prod"})),
        (
            "/api/v1/namespaces/prod/projects",
            json!({"name": "site", "hosts": ["site.test"]}),
        ),
    ] {
        let (status, v) = crate::support::send(app, Method::POST, path, Some(body)).await;
        assert_eq!(status, StatusCode::CREATED, "{v}");
    }
    let rules = "/api/v1/namespaces/prod/projects/site/redirects";
    let before = app.get_json("/api/v1/export").await;
    let config = json!({"action": "multiple", "actions": [
        {"action": "create_upstream", "upstream": {"name": "billing", "targets": [{"url": "http://127.0.0.1:7001"}]}},
        {"action": "create_route", "route": {"id": "pay", "path": "/pay", "upstream": "billing"}},
        {"action": "add_redirect", "namespace": "prod", "project": "site",
         "redirect": {"type": "BASIC", "source": "/old", "target": "/new"}},
        {"action": "start_flow", "flow_id": "ghost"},
        {"action": "stop_flow", "flow_id": "ghost"}]});
    let r = app
        .admin(Method::POST, "/api/v1/ai/actions/apply")
        .json(&json!({"config": config, "node_id": f.node}))
        .send()
        .await
        .expect("apply");
    let status = r.status();
    let e: Value = r.json().await.expect("json");
    assert!(
        status.is_client_error() || status.is_server_error(),
        "{status}: {e}"
    );
    assert_eq!(e["code"], "AI_APPLY_INCOMPLETE", "{e}");
    let d = &e["details"];
    assert_eq!(d["failed"]["part"]["part"], "command", "{e}");
    assert_eq!(d["failed"]["part"]["type"], "start_flow", "{e}");
    let rolled: Vec<&str> = d["rolled_back"]
        .as_array()
        .expect("rolled_back")
        .iter()
        .filter_map(|p| p["part"].as_str())
        .collect();
    assert_eq!(rolled, ["redirect", "gateway"], "{e}");
    assert_eq!(d["in_force"], json!([]), "{e}");
    let not: Vec<Value> = d["not_applied"]
        .as_array()
        .expect("not_applied")
        .iter()
        .map(|p| p["type"].clone())
        .collect();
    assert_eq!(not, [json!("start_flow"), json!("stop_flow")], "{e}");
    // The gateway is as before (a rollback revision after the AI's), the
    // draft is gone, and the whole story is audited.
    let after = app.get_json("/api/v1/export").await;
    assert_eq!(after["routes"], before["routes"]);
    assert_eq!(after["upstreams"], before["upstreams"]);
    let (status, _) = crate::support::send(app, Method::GET, "/api/v1/routes/pay", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(app.get_json(rules).await["total"], 0);
    for action in ["ai.apply", "ai.apply.rollback", "ai.apply.incomplete"] {
        let audit = app
            .get_json(&format!("/api/v1/audit?action={action}"))
            .await;
        assert_eq!(audit["total"], 1, "{action}: {audit}");
    }
    f.stop().await;
}
