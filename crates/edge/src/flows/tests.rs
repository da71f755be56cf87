//! The flow engine on real loopback sockets: fan-out, commands, persistence,
//! bind failures.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use super::commands::execute;
use super::*;

/// A UDP port free right now.
fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("free port")
        .port()
}

fn engine(dir: &std::path::Path) -> (FlowEngine, mpsc::Receiver<Value>) {
    let (tx, rx) = mpsc::channel(EVENT_QUEUE);
    (FlowEngine::open(dir.to_path_buf(), tx), rx)
}

async fn sink() -> (UdpSocket, SocketAddr) {
    let s = UdpSocket::bind("127.0.0.1:0").await.expect("sink");
    let a = s.local_addr().expect("addr");
    (s, a)
}

fn udp_output(id: &str, dest: SocketAddr) -> Value {
    json!({"type": "udp", "id": id, "name": id, "dest_addr": dest.to_string()})
}

fn udp_flow(id: &str, port: u16, outputs: Vec<Value>) -> Value {
    json!({"id": id, "name": id, "input": {"type": "udp", "bind_addr": format!("127.0.0.1:{port}")},
           "outputs": outputs})
}

async fn run(e: &FlowEngine, action: Value) -> Result<(), FlowError> {
    let kind = action["type"].as_str().expect("type").to_string();
    execute(e, &kind, &action).await
}

/// Reads `n` datagrams from `s`, each within a second.
async fn receive(s: &UdpSocket, n: usize) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    for _ in 0..n {
        let len = tokio::time::timeout(Duration::from_secs(2), s.recv(&mut buf))
            .await
            .expect("a datagram in time")
            .expect("recv");
        got.push(buf[..len].to_vec());
    }
    got
}

async fn nothing_arrives(s: &UdpSocket) -> bool {
    let mut buf = [0u8; 2048];
    tokio::time::timeout(Duration::from_millis(300), s.recv(&mut buf))
        .await
        .is_err()
}

async fn send_all(port: u16, packets: &[Vec<u8>]) {
    let tx = UdpSocket::bind("127.0.0.1:0").await.expect("sender");
    for p in packets {
        tx.send_to(p, ("127.0.0.1", port)).await.expect("send");
        // Loopback buffers are large, but be gentle with the receivers' queues.
        tokio::task::yield_now().await;
    }
}

fn numbered(n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| format!("packet-{i:04}").into_bytes())
        .collect()
}

async fn flow_stats(e: &FlowEngine, id: &str) -> Value {
    e.stats()
        .await
        .into_iter()
        .find(|f| f["flow_id"] == id)
        .expect("flow in stats")
}

#[tokio::test]
async fn one_input_fans_out_to_every_output_byte_exact() {
    let dir = tempfile::tempdir().expect("dir");
    let (e, _events) = engine(dir.path());
    let ((a, a_addr), (b, b_addr)) = (sink().await, sink().await);
    let port = free_udp_port();
    run(&e, json!({"type": "create_flow", "flow": udp_flow("f", port, vec![udp_output("a", a_addr), udp_output("b", b_addr)])}))
        .await
        .expect("created");
    let packets = numbered(200);
    let ra = tokio::spawn(async move { receive(&a, 200).await });
    let rb = tokio::spawn(async move { receive(&b, 200).await });
    send_all(port, &packets).await;
    assert_eq!(ra.await.expect("a"), packets);
    assert_eq!(rb.await.expect("b"), packets);
    let s = flow_stats(&e, "f").await;
    assert_eq!(s["state"], "running");
    assert_eq!(s["input"]["packets_received"], 200);
    assert_eq!(s["input"]["bind_addr"], format!("127.0.0.1:{port}"));
    for o in s["outputs"].as_array().expect("outputs") {
        assert_eq!(o["packets_sent"], 200, "{o}");
        assert_eq!(o["packets_dropped"], 0, "{o}");
    }
    assert_eq!(e.counts().await, (1, 1));
    e.shutdown().await;
}

#[tokio::test]
async fn commands_refuse_duplicates_missing_ids_and_unknown_flows() {
    let dir = tempfile::tempdir().expect("dir");
    let (e, _events) = engine(dir.path());
    let flow = udp_flow("f", free_udp_port(), vec![]);
    run(&e, json!({"type": "create_flow", "flow": flow}))
        .await
        .expect("created");
    let dup = run(&e, json!({"type": "create_flow", "flow": flow})).await;
    assert_eq!(
        dup.map_err(|e| e.message),
        Err("Duplicate flow ID: f".to_string())
    );
    for (action, want) in [
        (json!({"type": "stop_flow"}), "Missing flow_id"),
        (
            json!({"type": "delete_flow", "flow_id": ""}),
            "Missing flow_id",
        ),
        (
            json!({"type": "remove_output", "flow_id": "f"}),
            "Missing output_id",
        ),
        (json!({"type": "create_flow"}), "Missing flow"),
        (
            json!({"type": "add_output", "flow_id": "f"}),
            "Missing output",
        ),
        (
            json!({"type": "start_flow", "flow_id": "nope"}),
            "Flow not found: nope",
        ),
        (
            json!({"type": "remove_output", "flow_id": "f", "output_id": "x"}),
            "Output not found: x in flow f",
        ),
        (
            json!({"type": "update_flow", "flow_id": "g", "flow": flow}),
            "differs from flow_id",
        ),
    ] {
        let got = run(&e, action.clone()).await.expect_err("refused");
        assert!(got.message.contains(want), "{action}: {got}");
    }
    e.shutdown().await;
}

#[tokio::test]
async fn a_disabled_flow_is_created_stopped_and_start_stop_toggle_it() {
    let dir = tempfile::tempdir().expect("dir");
    let (e, _events) = engine(dir.path());
    let (a, a_addr) = sink().await;
    let port = free_udp_port();
    let mut flow = udp_flow("f", port, vec![udp_output("a", a_addr)]);
    flow["enabled"] = json!(false);
    run(&e, json!({"type": "create_flow", "flow": flow}))
        .await
        .expect("created");
    assert_eq!(e.counts().await, (0, 1));
    assert_eq!(flow_stats(&e, "f").await["state"], "idle");
    send_all(port, &numbered(3)).await;
    assert!(nothing_arrives(&a).await);

    run(&e, json!({"type": "start_flow", "flow_id": "f"}))
        .await
        .expect("started");
    assert!(e.configs().await[0].enabled);
    send_all(port, &numbered(3)).await;
    assert_eq!(receive(&a, 3).await, numbered(3));

    run(&e, json!({"type": "stop_flow", "flow_id": "f"}))
        .await
        .expect("stopped");
    assert!(!e.configs().await[0].enabled);
    send_all(port, &numbered(3)).await;
    assert!(nothing_arrives(&a).await);
    // Restart starts it again, on the same port.
    run(&e, json!({"type": "restart_flow", "flow_id": "f"}))
        .await
        .expect("restarted");
    run(&e, json!({"type": "restart_flow", "flow_id": "f"}))
        .await
        .expect("restarted twice");
    send_all(port, &numbered(2)).await;
    assert_eq!(receive(&a, 2).await, numbered(2));
    e.shutdown().await;
}

#[tokio::test]
async fn outputs_change_without_interrupting_the_others() {
    let dir = tempfile::tempdir().expect("dir");
    let (e, _events) = engine(dir.path());
    let ((a, a_addr), (b, b_addr), (c, c_addr)) = (sink().await, sink().await, sink().await);
    let port = free_udp_port();
    run(
        &e,
        json!({"type": "create_flow", "flow": udp_flow("f", port, vec![udp_output("a", a_addr)])}),
    )
    .await
    .expect("created");
    send_all(port, &numbered(5)).await;
    receive(&a, 5).await;

    run(
        &e,
        json!({"type": "add_output", "flow_id": "f", "output": udp_output("b", b_addr)}),
    )
    .await
    .expect("added");
    send_all(port, &numbered(4)).await;
    assert_eq!(receive(&a, 4).await, numbered(4));
    assert_eq!(receive(&b, 4).await, numbered(4));
    // Output a kept running: its counters were not reset.
    let s = flow_stats(&e, "f").await;
    assert_eq!(s["outputs"][0]["packets_sent"], 9);
    assert_eq!(s["input"]["packets_received"], 9);

    // update_flow changing only the outputs: b replaced by c, a untouched.
    let flow = udp_flow(
        "f",
        port,
        vec![udp_output("a", a_addr), udp_output("c", c_addr)],
    );
    run(&e, json!({"type": "update_flow", "flow": flow}))
        .await
        .expect("updated");
    send_all(port, &numbered(2)).await;
    assert_eq!(receive(&a, 2).await, numbered(2));
    assert_eq!(receive(&c, 2).await, numbered(2));
    assert!(nothing_arrives(&b).await);
    assert_eq!(flow_stats(&e, "f").await["outputs"][0]["packets_sent"], 11);

    run(
        &e,
        json!({"type": "remove_output", "flow_id": "f", "output_id": "a"}),
    )
    .await
    .expect("removed");
    send_all(port, &numbered(1)).await;
    assert_eq!(receive(&c, 1).await, numbered(1));
    assert!(nothing_arrives(&a).await);
    let ids: Vec<String> = e.configs().await[0]
        .outputs
        .iter()
        .map(|o| o.id().to_string())
        .collect();
    assert_eq!(ids, ["c"]);
    e.shutdown().await;
}

#[tokio::test]
async fn a_taken_port_fails_with_port_conflict_and_an_event() {
    let dir = tempfile::tempdir().expect("dir");
    let (e, mut events) = engine(dir.path());
    let holder = std::net::UdpSocket::bind("127.0.0.1:0").expect("holder");
    let port = holder.local_addr().expect("addr").port();
    let err = run(
        &e,
        json!({"type": "create_flow", "flow": udp_flow("f", port, vec![])}),
    )
    .await
    .expect_err("port taken");
    assert_eq!(err.code, Some("port_conflict"));
    assert!(err.message.contains(&format!("127.0.0.1:{port}")), "{err}");
    // A failed create stores nothing.
    assert_eq!(e.counts().await, (0, 0));
    let ev = events.try_recv().expect("event");
    assert_eq!(ev["category"], "flow");
    assert_eq!(ev["severity"], "critical");
    assert_eq!(ev["flow_id"], "f");
    assert_eq!(ev["details"]["error_code"], "port_conflict");

    // An update that cannot bind keeps the flow as it was.
    let free = free_udp_port();
    run(
        &e,
        json!({"type": "create_flow", "flow": udp_flow("g", free, vec![])}),
    )
    .await
    .expect("created");
    let err = run(
        &e,
        json!({"type": "update_flow", "flow": udp_flow("g", port, vec![])}),
    )
    .await
    .expect_err("port taken");
    assert_eq!(err.code, Some("port_conflict"));
    let s = flow_stats(&e, "g").await;
    assert_eq!(
        (s["state"].as_str(), s["input"]["bind_addr"].as_str()),
        (Some("running"), Some(&*format!("127.0.0.1:{free}")))
    );
    e.shutdown().await;
}

#[tokio::test]
async fn flows_are_stored_and_started_again() {
    let dir = tempfile::tempdir().expect("dir");
    let (a, a_addr) = sink().await;
    let port = free_udp_port();
    {
        let (e, _events) = engine(dir.path());
        run(&e, json!({"type": "create_flow", "flow": udp_flow("f", port, vec![udp_output("a", a_addr)])}))
            .await
            .expect("created");
        let mut off = udp_flow("g", free_udp_port(), vec![]);
        off["enabled"] = json!(false);
        run(&e, json!({"type": "create_flow", "flow": off}))
            .await
            .expect("created");
        e.shutdown().await;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(crate::files::FLOWS_FILE))
            .expect("stored")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let (e, _events) = engine(dir.path());
    e.start_stored().await;
    assert_eq!(e.counts().await, (1, 2));
    send_all(port, &numbered(2)).await;
    assert_eq!(receive(&a, 2).await, numbered(2));
    run(&e, json!({"type": "delete_flow", "flow_id": "f"}))
        .await
        .expect("deleted");
    let (again, _events) = engine(dir.path());
    assert_eq!(again.configs().await.len(), 1);
    e.shutdown().await;

    // An unreadable file is kept aside, not overwritten by the next flows stored.
    std::fs::write(dir.path().join(crate::files::FLOWS_FILE), b"[").expect("write");
    let (broken, _events) = engine(dir.path());
    assert!(broken.configs().await.is_empty());
    let aside = dir.path().join("edge-flows.json.invalid");
    assert_eq!(std::fs::read(aside).expect("kept aside"), b"[");
}

#[tokio::test]
async fn rtp_inputs_count_loss_and_filter() {
    let dir = tempfile::tempdir().expect("dir");
    let (e, _events) = engine(dir.path());
    let (a, a_addr) = sink().await;
    let port = free_udp_port();
    let flow = json!({"id": "r", "name": "r",
        "input": {"type": "rtp", "bind_addr": format!("127.0.0.1:{port}"), "allowed_payload_types": [33]},
        "outputs": [{"type": "rtp", "id": "a", "name": "a", "dest_addr": a_addr.to_string()}]});
    run(&e, json!({"type": "create_flow", "flow": flow}))
        .await
        .expect("created");
    let rtp = |pt: u8, seq: u16| {
        let mut p = vec![0x80, pt];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 9, 0xab]);
        p
    };
    // 1, 2, 5 (3 and 4 lost), 6; one packet of another payload type; one not RTP.
    let sent = vec![
        rtp(33, 1),
        rtp(33, 2),
        rtp(33, 5),
        rtp(96, 6),
        b"junk".to_vec(),
        rtp(33, 6),
    ];
    send_all(port, &sent).await;
    let forwarded = receive(&a, 4).await;
    assert_eq!(
        forwarded,
        vec![rtp(33, 1), rtp(33, 2), rtp(33, 5), rtp(33, 6)]
    );
    let s = flow_stats(&e, "r").await;
    assert_eq!(s["input"]["input_type"], "rtp");
    assert_eq!(s["input"]["packets_received"], 6);
    assert_eq!(s["input"]["packets_lost"], 2);
    assert_eq!(s["input"]["packets_filtered"], 2);
    assert_eq!(s["outputs"][0]["packets_sent"], 4);
    e.shutdown().await;
}

#[tokio::test]
async fn tcp_in_and_out_and_an_unreachable_output_only_drops_its_own() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().expect("dir");
    let (e, _events) = engine(dir.path());
    let listen = std::net::TcpListener::bind("127.0.0.1:0").expect("probe");
    let in_addr = listen.local_addr().expect("addr");
    drop(listen);
    let receiver = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("receiver");
    let out_addr = receiver.local_addr().expect("addr");
    // Nothing listens here: the output keeps reconnecting and drops.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("probe");
    let dead_addr = dead.local_addr().expect("addr");
    drop(dead);
    let flow = json!({"id": "t", "name": "t",
        "input": {"type": "tcp", "listen_addr": in_addr.to_string()},
        "outputs": [{"type": "tcp", "id": "dead", "name": "dead", "dest_addr": dead_addr.to_string()},
                    {"type": "tcp", "id": "out", "name": "out", "dest_addr": out_addr.to_string()}]});
    run(&e, json!({"type": "create_flow", "flow": flow}))
        .await
        .expect("created");
    let (mut out, _) = tokio::time::timeout(Duration::from_secs(5), receiver.accept())
        .await
        .expect("the output connects")
        .expect("accept");
    let mut client = tokio::net::TcpStream::connect(in_addr)
        .await
        .expect("connect");
    let payload: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
    client.write_all(&payload).await.expect("write");
    client.shutdown().await.expect("shutdown");
    let mut got = vec![0u8; payload.len()];
    tokio::time::timeout(Duration::from_secs(5), out.read_exact(&mut got))
        .await
        .expect("in time")
        .expect("read");
    assert_eq!(got, payload);
    let s = flow_stats(&e, "t").await;
    assert_eq!(s["input"]["bytes_received"], payload.len());
    let dead = &s["outputs"][0];
    assert_eq!(dead["state"], "connecting");
    assert_eq!(dead["packets_dropped"], s["input"]["packets_received"]);
    assert_eq!(s["outputs"][1]["bytes_sent"], payload.len());
    assert_eq!(s["health"], "warning");
    e.shutdown().await;
}

#[tokio::test]
async fn update_config_changes_only_the_flows_that_differ() {
    let dir = tempfile::tempdir().expect("dir");
    let (e, _events) = engine(dir.path());
    let (a, a_addr) = sink().await;
    let (p1, p2, p3) = (free_udp_port(), free_udp_port(), free_udp_port());
    let keep = udp_flow("keep", p1, vec![udp_output("a", a_addr)]);
    run(&e, json!({"type": "create_flow", "flow": keep}))
        .await
        .expect("created");
    run(
        &e,
        json!({"type": "create_flow", "flow": udp_flow("gone", p2, vec![])}),
    )
    .await
    .expect("created");
    send_all(p1, &numbered(3)).await;
    receive(&a, 3).await;
    let config = json!({"version": 1, "flows": [keep, udp_flow("new", p3, vec![])]});
    run(&e, json!({"type": "update_config", "config": config}))
        .await
        .expect("applied");
    let ids: Vec<String> = e.configs().await.into_iter().map(|f| f.id).collect();
    assert_eq!(ids, ["keep", "new"]);
    // The unchanged flow kept running: its counters go on.
    send_all(p1, &numbered(1)).await;
    receive(&a, 1).await;
    assert_eq!(flow_stats(&e, "keep").await["input"]["packets_received"], 4);
    // A bad flow refuses the whole configuration.
    let bad = json!({"flows": [udp_flow("x", 1, vec![]), {"id": "y"}]});
    assert!(run(&e, json!({"type": "update_config", "config": bad}))
        .await
        .is_err());
    assert_eq!(e.counts().await, (2, 2));
    e.shutdown().await;
}

#[tokio::test]
async fn multicast_out_of_one_flow_into_another() {
    let dir = tempfile::tempdir().expect("dir");
    let (e, _events) = engine(dir.path());
    let (a, a_addr) = sink().await;
    let (entry, group_port) = (free_udp_port(), free_udp_port());
    let group = format!("239.255.42.7:{group_port}");
    // Flow "rx" joins the group on loopback; flow "tx" sends to it through loopback.
    let rx = json!({"id": "rx", "name": "rx",
        "input": {"type": "udp", "bind_addr": group, "interface_addr": "127.0.0.1"},
        "outputs": [udp_output("a", a_addr)]});
    let tx = json!({"id": "tx", "name": "tx",
        "input": {"type": "udp", "bind_addr": format!("127.0.0.1:{entry}")},
        "outputs": [{"type": "udp", "id": "m", "name": "m", "dest_addr": group, "interface_addr": "127.0.0.1"}]});
    run(&e, json!({"type": "create_flow", "flow": rx}))
        .await
        .expect("rx");
    run(&e, json!({"type": "create_flow", "flow": tx}))
        .await
        .expect("tx");
    send_all(entry, &numbered(5)).await;
    assert_eq!(receive(&a, 5).await, numbered(5));
    e.shutdown().await;
}

#[tokio::test]
async fn a_tcp_input_dials_its_source_and_forwards_what_it_reads() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().expect("dir");
    let (e, _events) = engine(dir.path());
    let (a, a_addr) = sink().await;
    let source = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("source");
    let flow = json!({"id": "dial", "name": "dial",
        "input": {"type": "tcp", "connect_addr": source.local_addr().expect("addr").to_string()},
        "outputs": [udp_output("a", a_addr)]});
    run(&e, json!({"type": "create_flow", "flow": flow}))
        .await
        .expect("created");
    let (mut conn, _) = tokio::time::timeout(Duration::from_secs(5), source.accept())
        .await
        .expect("the input connects")
        .expect("accept");
    conn.write_all(b"over tcp").await.expect("write");
    assert_eq!(receive(&a, 1).await, vec![b"over tcp".to_vec()]);
    let s = flow_stats(&e, "dial").await;
    assert_eq!(s["input"]["state"], "connected");
    assert_eq!(s["input"]["mode"], "caller");
    e.shutdown().await;
}

#[tokio::test]
async fn a_flow_that_cannot_bind_shows_the_error_in_its_stats() {
    let dir = tempfile::tempdir().expect("dir");
    let (e, mut events) = engine(dir.path());
    let port = free_udp_port();
    run(
        &e,
        json!({"type": "create_flow", "flow": udp_flow("f", port, vec![])}),
    )
    .await
    .expect("created");
    run(&e, json!({"type": "stop_flow", "flow_id": "f"}))
        .await
        .expect("stopped");
    let holder = std::net::UdpSocket::bind(("127.0.0.1", port)).expect("take the port");
    let err = run(&e, json!({"type": "restart_flow", "flow_id": "f"}))
        .await
        .expect_err("port taken");
    assert_eq!(err.code, Some("port_conflict"));
    let s = flow_stats(&e, "f").await;
    assert_eq!(
        (s["state"].as_str(), s["health"].as_str()),
        (Some("idle"), Some("error"))
    );
    assert_eq!(s["input"]["state"], "error");
    assert!(
        s["error"]
            .as_str()
            .is_some_and(|m| m.contains(&port.to_string())),
        "{s}"
    );
    assert_eq!(
        events.try_recv().expect("event")["details"]["error_code"],
        "port_conflict"
    );
    e.shutdown().await;

    // At the next start the stored flow meets the same conflict: shown and reported.
    let (again, mut events) = engine(dir.path());
    again.start_stored().await;
    assert_eq!(again.counts().await, (0, 1));
    assert_eq!(flow_stats(&again, "f").await["health"], "error");
    assert_eq!(events.try_recv().expect("event")["flow_id"], "f");
    // Once the port is free, restart_flow runs it.
    drop(holder);
    run(&again, json!({"type": "restart_flow", "flow_id": "f"}))
        .await
        .expect("restarted");
    assert_eq!(flow_stats(&again, "f").await["health"], "healthy");
    again.shutdown().await;
}
