//! End-to-end tunnels on loopback: real relays, real edge tunnel ends, real TCP and
//! UDP peers — relay mode, direct mode, and the failures they must survive.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleetgate_tunnel::crypto::bind_token;
use fleetgate_tunnel::quic::{self, ALPN_RELAY};
use fleetgate_tunnel::wire::{self, ControlMessage};
use fleetgate_tunnel::{
    EdgeTunnels, Relay, RelayConfig, TunnelConfig, TunnelDirection, TunnelMode, TunnelProtocol,
};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use uuid::Uuid;

const MARKER: &[u8] = b"PLAINTEXT-MARKER-7f3c9e1b-visible-only-at-the-edges";

fn secret() -> String {
    format!(
        "{:032x}{:032x}",
        Uuid::new_v4().as_u128(),
        Uuid::new_v4().as_u128()
    )
}

/// A loopback port nothing listens on right now (TCP or UDP).
fn free_port() -> u16 {
    loop {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let port = udp.local_addr().expect("addr").port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Forwarded bytes the relay's observer saw.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<u8>>>);

impl Seen {
    fn config(&self, addr: SocketAddr) -> RelayConfig {
        let mut config = RelayConfig::new(addr);
        let seen = self.clone();
        config.forward_observer = Some(Arc::new(move |bytes: &[u8]| {
            seen.0.lock().expect("lock").extend_from_slice(bytes);
        }));
        config
    }

    fn contains(&self, needle: &[u8]) -> bool {
        self.0
            .lock()
            .expect("lock")
            .windows(needle.len())
            .any(|w| w == needle)
    }

    fn len(&self) -> usize {
        self.0.lock().expect("lock").len()
    }
}

fn start_relay(seen: &Seen) -> Relay {
    Relay::bind(seen.config("127.0.0.1:0".parse().expect("addr"))).expect("relay starts")
}

/// A TCP server answering every connection with `tag` then echoing.
async fn tcp_echo(tag: &'static [u8]) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = s.write_all(tag).await;
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

async fn udp_echo() -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let addr = socket.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_535];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            let _ = socket.send_to(&buf[..n], from).await;
        }
    });
    addr
}

struct Pair {
    id: String,
    entry: EdgeTunnels,
    exit: EdgeTunnels,
    entry_addr: String,
    /// The events each end reported, as its node would send them.
    entry_events: mpsc::Receiver<Value>,
    exit_events: mpsc::Receiver<Value>,
}

/// The next event whose `details.error_code` or `details.state` is `what`,
/// skipping others; fails after 10 s.
async fn event(events: &mut mpsc::Receiver<Value>, what: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let e = tokio::time::timeout(left, events.recv())
            .await
            .unwrap_or_else(|_| panic!("no {what} event within 10 s"))
            .expect("events open");
        assert_eq!(e["category"], "tunnel", "{e}");
        if e["details"]["error_code"] == what || e["details"]["state"] == what {
            return e;
        }
    }
}

/// The events received so far.
fn drain(events: &mut mpsc::Receiver<Value>) -> Vec<Value> {
    std::iter::from_fn(|| events.try_recv().ok()).collect()
}

fn base_config(id: &str, protocol: TunnelProtocol, mode: TunnelMode) -> TunnelConfig {
    TunnelConfig {
        id: id.to_owned(),
        name: "test".into(),
        enabled: true,
        protocol,
        mode,
        direction: TunnelDirection::Egress,
        local_addr: String::new(),
        relay_addr: None,
        peer_addr: None,
        direct_listen_addr: None,
        tunnel_encryption_key: Some(secret()),
        tunnel_bind_secret: Some(secret()),
        tunnel_psk: None,
        tls_cert_pem: None,
        tls_key_pem: None,
    }
}

/// Entry and exit configs of one relay-mode tunnel, as the manager would send them.
fn relay_configs(
    relay: SocketAddr,
    protocol: TunnelProtocol,
    target: SocketAddr,
) -> (TunnelConfig, TunnelConfig) {
    let id = Uuid::new_v4().to_string();
    let mut entry = base_config(&id, protocol, TunnelMode::Relay);
    entry.local_addr = format!("127.0.0.1:{}", free_port());
    entry.relay_addr = Some(relay.to_string());
    let mut exit = entry.clone();
    exit.direction = TunnelDirection::Ingress;
    exit.local_addr = target.to_string();
    (entry, exit)
}

async fn start_pair(entry_config: TunnelConfig, exit_config: TunnelConfig) -> Pair {
    let (entry_tx, entry_events) = mpsc::channel(64);
    let (exit_tx, exit_events) = mpsc::channel(64);
    let entry = EdgeTunnels::new(Some("edge-entry".into())).with_events(entry_tx);
    let exit = EdgeTunnels::new(Some("edge-exit".into())).with_events(exit_tx);
    exit.start(exit_config).await.expect("exit starts");
    entry
        .start(entry_config.clone())
        .await
        .expect("entry starts");
    Pair {
        id: entry_config.id.clone(),
        entry_addr: entry_config.local_addr.clone(),
        entry,
        exit,
        entry_events,
        exit_events,
    }
}

async fn relay_pair(relay: &Relay, protocol: TunnelProtocol, target: SocketAddr) -> Pair {
    let (entry, exit) = relay_configs(relay.local_addr().expect("addr"), protocol, target);
    start_pair(entry, exit).await
}

async fn direct_pair(protocol: TunnelProtocol, target: SocketAddr) -> Pair {
    let id = Uuid::new_v4().to_string();
    let port = free_port();
    let mut entry = base_config(&id, protocol, TunnelMode::Direct);
    entry.local_addr = format!("127.0.0.1:{}", free_port());
    entry.peer_addr = Some(format!("127.0.0.1:{port}"));
    entry.tunnel_psk = Some(secret());
    let mut exit = entry.clone();
    exit.direction = TunnelDirection::Ingress;
    exit.local_addr = target.to_string();
    exit.peer_addr = None;
    exit.direct_listen_addr = Some(format!("127.0.0.1:{port}"));
    start_pair(entry, exit).await
}

async fn wait_state(tunnels: &EdgeTunnels, id: &str, state: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = tunnels.status(id).expect("tunnel known").state;
        if now == state {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "tunnel {id} stuck in {now}, wanted {state}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_ready(pair: &Pair) {
    wait_state(&pair.entry, &pair.id, "ready").await;
    wait_state(&pair.exit, &pair.id, "ready").await;
}

/// Connects through the entry, checks the target's tag, echoes `payload`.
async fn tcp_roundtrip(entry_addr: &str, tag: &[u8], payload: &[u8]) {
    let mut s = TcpStream::connect(entry_addr).await.expect("connect entry");
    let mut got_tag = vec![0u8; tag.len()];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut got_tag))
        .await
        .expect("tag in time")
        .expect("tag");
    assert_eq!(got_tag, tag);
    let (mut r, mut w) = s.into_split();
    let payload_owned = payload.to_vec();
    let writer = tokio::spawn(async move {
        w.write_all(&payload_owned).await.expect("write");
        w.shutdown().await.expect("shutdown");
    });
    let mut echoed = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), r.read_to_end(&mut echoed))
        .await
        .expect("echo in time")
        .expect("echo");
    writer.await.expect("writer");
    assert_eq!(echoed.len(), payload.len());
    assert!(echoed == payload, "echo differs");
}

fn payload(len: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(len + MARKER.len());
    while p.len() < len {
        p.extend_from_slice(MARKER);
        p.extend((0..97u8).map(|i| i.wrapping_mul(31)));
    }
    p
}

async fn udp_roundtrip(entry_addr: &str, datagram: &[u8]) {
    let client = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    client.connect(entry_addr).await.expect("connect");
    let mut buf = vec![0u8; 65_535];
    // Datagrams may be lost; retry a few times.
    for _ in 0..20 {
        client.send(datagram).await.expect("send");
        if let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(500), client.recv(&mut buf)).await
        {
            assert_eq!(&buf[..n], datagram);
            return;
        }
    }
    panic!("no UDP echo through the tunnel");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_echo_through_relay_and_relay_never_sees_plaintext() {
    let seen = Seen::default();
    let relay = start_relay(&seen);
    let target = tcp_echo(b"A").await;
    let pair = relay_pair(&relay, TunnelProtocol::Tcp, target).await;
    wait_ready(&pair).await;
    let data = payload(512 * 1024);
    tcp_roundtrip(&pair.entry_addr, b"A", &data).await;
    assert!(
        seen.len() > 2 * data.len(),
        "the relay forwarded the stream both ways"
    );
    assert!(!seen.contains(MARKER), "plaintext crossed the relay");
    let stats = pair.entry.status(&pair.id).expect("status").stats;
    assert_eq!(stats.bytes_sent, data.len() as u64);
    assert_eq!(stats.bytes_received, data.len() as u64 + 1);
    assert_eq!(stats.connections_total, 1);
    let relay_stats = relay.stats();
    assert_eq!(relay_stats.active_tunnels, 1);
    assert_eq!(relay_stats.connected_edges, 2);
    assert_eq!(relay_stats.total_tcp_streams, 1);
    assert!(relay_stats.total_bytes_forwarded > 2 * data.len() as u64);
    let edges: Vec<String> = relay.list_edges().into_iter().map(|e| e.edge_id).collect();
    assert_eq!(edges, ["edge-entry", "edge-exit"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_echo_through_relay_and_relay_never_sees_plaintext() {
    let seen = Seen::default();
    let relay = start_relay(&seen);
    let target = udp_echo().await;
    let pair = relay_pair(&relay, TunnelProtocol::Udp, target).await;
    wait_ready(&pair).await;
    let datagram = payload(900);
    udp_roundtrip(&pair.entry_addr, &datagram).await;
    assert!(seen.len() >= 2 * datagram.len());
    assert!(!seen.contains(MARKER), "plaintext crossed the relay");
    assert!(relay.stats().total_udp_datagrams >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_and_udp_echo_in_direct_mode() {
    let target = tcp_echo(b"D").await;
    let pair = direct_pair(TunnelProtocol::Tcp, target).await;
    wait_ready(&pair).await;
    tcp_roundtrip(&pair.entry_addr, b"D", &payload(256 * 1024)).await;

    let target = udp_echo().await;
    let pair = direct_pair(TunnelProtocol::Udp, target).await;
    wait_ready(&pair).await;
    udp_roundtrip(&pair.entry_addr, &payload(700)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_mode_with_a_wrong_psk_is_refused() {
    let target = tcp_echo(b"D").await;
    let id = Uuid::new_v4().to_string();
    let port = free_port();
    let mut entry = base_config(&id, TunnelProtocol::Tcp, TunnelMode::Direct);
    entry.local_addr = format!("127.0.0.1:{}", free_port());
    entry.peer_addr = Some(format!("127.0.0.1:{port}"));
    entry.tunnel_psk = Some(secret());
    let mut exit = entry.clone();
    exit.direction = TunnelDirection::Ingress;
    exit.local_addr = target.to_string();
    exit.direct_listen_addr = Some(format!("127.0.0.1:{port}"));
    exit.tunnel_psk = Some(secret());
    let mut pair = start_pair(entry, exit).await;
    wait_state(&pair.entry, &pair.id, "down").await;
    assert_eq!(pair.exit.status(&pair.id).expect("status").state, "waiting");
    let refused = event(&mut pair.entry_events, "down").await;
    assert!(
        refused["message"]
            .as_str()
            .expect("msg")
            .contains("refused"),
        "{refused}"
    );
    let e = event(&mut pair.exit_events, "peer_auth_failed").await;
    assert!(
        e["message"].as_str().expect("msg").contains("127.0.0.1"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tunnels_on_one_relay_stay_apart() {
    let seen = Seen::default();
    let relay = start_relay(&seen);
    let a = relay_pair(&relay, TunnelProtocol::Tcp, tcp_echo(b"first").await).await;
    let b = relay_pair(&relay, TunnelProtocol::Tcp, tcp_echo(b"other").await).await;
    wait_ready(&a).await;
    wait_ready(&b).await;
    tcp_roundtrip(&a.entry_addr, b"first", b"to a").await;
    tcp_roundtrip(&b.entry_addr, b"other", b"to b").await;
    assert_eq!(relay.stats().active_tunnels, 2);
    relay.close_tunnel(a.id.parse().expect("uuid"));
    // b keeps working while a is torn down.
    tcp_roundtrip(&b.entry_addr, b"other", b"still b").await;
}

/// A raw edge on the relay's control stream.
async fn raw_bind(relay: SocketAddr, bind: ControlMessage) -> Vec<ControlMessage> {
    let endpoint = quic::client(ALPN_RELAY, relay).expect("client");
    let conn = endpoint
        .connect(relay, "relay")
        .expect("connect")
        .await
        .expect("handshake");
    let (mut send, mut recv) = conn.open_bi().await.expect("stream");
    let hello = ControlMessage::Hello {
        protocol_version: 1,
        software_version: "raw".into(),
    };
    wire::write_json(&mut send, &hello).await.expect("hello");
    wire::write_json(&mut send, &bind).await.expect("bind");
    let mut got = Vec::new();
    for _ in 0..2 {
        let msg = tokio::time::timeout(Duration::from_secs(5), wire::read_control(&mut recv))
            .await
            .expect("answer in time")
            .expect("answer")
            .expect("a message");
        got.push(msg);
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_bind_token_is_refused_with_tunnel_down() {
    let (events_tx, mut events) = mpsc::channel(16);
    let mut config = Seen::default().config("127.0.0.1:0".parse().expect("addr"));
    config.events = Some(events_tx);
    let relay = Relay::bind(config).expect("relay starts");
    let addr = relay.local_addr().expect("addr");
    let tunnel_id = Uuid::new_v4();
    let bind_secret = secret();
    let id = tunnel_id.to_string();
    relay.authorize_tunnel(
        tunnel_id,
        bind_token(&bind_secret, &id, "ingress"),
        bind_token(&bind_secret, &id, "egress"),
    );
    let bind = |token: Option<String>| ControlMessage::TunnelBind {
        tunnel_id,
        direction: TunnelDirection::Egress,
        protocol: TunnelProtocol::Tcp,
        bind_token: token,
    };
    // Wrong token, token of the other direction, no token: all refused.
    for token in [
        Some(bind_token(&secret(), &id, "egress")),
        Some(bind_token(&bind_secret, &id, "ingress")),
        None,
    ] {
        let got = raw_bind(addr, bind(token)).await;
        assert!(matches!(
            got[0],
            ControlMessage::HelloAck {
                protocol_version: 1,
                ..
            }
        ));
        assert!(
            matches!(&got[1], ControlMessage::TunnelDown { tunnel_id: t, .. } if *t == tunnel_id),
            "{got:?}"
        );
    }
    let got = raw_bind(addr, bind(Some(bind_token(&bind_secret, &id, "egress")))).await;
    assert_eq!(got[1], ControlMessage::TunnelWaiting { tunnel_id });
    // The relay reported each reason once (two wrong tokens are one reason), and
    // the edge that tried.
    let reported = drain(&mut events);
    let reasons: Vec<&str> = reported
        .iter()
        .map(|e| e["details"]["error"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(
        reasons,
        ["invalid bind token", "bind token required"],
        "{reported:?}"
    );
    assert!(reported.iter().all(|e| e["category"] == "tunnel"
        && e["severity"] == "warning"
        && e["details"]["tunnel_id"] == id.as_str()));
    assert!(
        reported[0]["message"]
            .as_str()
            .expect("msg")
            .contains("entry end"),
        "{reported:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edges_with_authorized_tokens_work_and_a_wrong_secret_stays_down() {
    let relay = start_relay(&Seen::default());
    let (entry, exit) = relay_configs(
        relay.local_addr().expect("addr"),
        TunnelProtocol::Tcp,
        tcp_echo(b"A").await,
    );
    let secret_text = entry.tunnel_bind_secret.clone().expect("secret");
    let tunnel_id: Uuid = entry.id.parse().expect("uuid");
    relay.authorize_tunnel(
        tunnel_id,
        bind_token(&secret_text, &entry.id, "ingress"),
        bind_token(&secret_text, &entry.id, "egress"),
    );
    let mut bad_entry = entry.clone();
    bad_entry.tunnel_bind_secret = Some(secret());
    let mut pair = start_pair(bad_entry, exit).await;
    wait_state(&pair.entry, &pair.id, "down").await;
    wait_state(&pair.exit, &pair.id, "waiting").await;
    let why = pair.entry.status(&pair.id).expect("status").last_error;
    assert!(
        why.as_deref()
            .is_some_and(|w| w.contains("invalid bind token")),
        "{why:?}"
    );
    let down = event(&mut pair.entry_events, "down").await;
    assert_eq!(down["severity"], "critical", "{down}");
    assert_eq!(down["details"]["tunnel_id"], pair.id.as_str());
    assert!(
        down["message"].as_str().expect("message").contains("token"),
        "the event says why: {down}"
    );
    // Retrying (the edge rebinds every ping) does not repeat the event.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(drain(&mut pair.entry_events).is_empty());
    pair.entry
        .start(entry)
        .await
        .expect("restart with the right secret");
    wait_ready(&pair).await;
    assert_eq!(
        pair.entry.status(&pair.id).expect("status").last_error,
        None
    );
    let up = event(&mut pair.entry_events, "ready").await;
    assert_eq!(up["severity"], "info", "{up}");
    tcp_roundtrip(&pair.entry_addr, b"A", b"authorized").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_cuts_traffic_within_one_second() {
    let relay = start_relay(&Seen::default());
    let pair = relay_pair(&relay, TunnelProtocol::Tcp, tcp_echo(b"A").await).await;
    wait_ready(&pair).await;
    let mut s = TcpStream::connect(&pair.entry_addr).await.expect("connect");
    let mut one = [0u8; 1];
    s.read_exact(&mut one).await.expect("tag");
    s.write_all(b"ping").await.expect("write");
    let mut four = [0u8; 4];
    s.read_exact(&mut four).await.expect("echo before revoke");

    let revoked_at = Instant::now();
    assert!(relay.revoke_tunnel(pair.id.parse().expect("uuid")));
    let cut = tokio::time::timeout(Duration::from_secs(1), s.read(&mut four)).await;
    assert!(
        matches!(cut, Ok(Ok(0)) | Ok(Err(_))),
        "the stream was not cut within 1 s: {cut:?}"
    );
    assert!(revoked_at.elapsed() < Duration::from_secs(1));
    wait_state(&pair.entry, &pair.id, "down").await;
    // New connections do not get through either.
    let mut s = TcpStream::connect(&pair.entry_addr).await.expect("connect");
    let mut buf = [0u8; 1];
    let r = tokio::time::timeout(Duration::from_secs(8), s.read(&mut buf)).await;
    assert!(matches!(r, Ok(Ok(0)) | Ok(Err(_))), "{r:?}");
    assert!(relay
        .list_tunnels()
        .iter()
        .all(|t| t.tunnel_id.to_string() != pair.id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_restart_fails_streams_in_flight_and_the_edges_rebind() {
    let seen = Seen::default();
    let relay = start_relay(&seen);
    let addr = relay.local_addr().expect("addr");
    let mut pair = relay_pair(&relay, TunnelProtocol::Tcp, tcp_echo(b"A").await).await;
    wait_ready(&pair).await;
    event(&mut pair.entry_events, "ready").await;
    let mut s = TcpStream::connect(&pair.entry_addr).await.expect("connect");
    let mut one = [0u8; 1];
    s.read_exact(&mut one).await.expect("tag");

    relay.shutdown().await;
    let mut buf = [0u8; 16];
    let failed = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
    assert!(
        matches!(failed, Ok(Ok(0)) | Ok(Err(_))),
        "in-flight stream: {failed:?}"
    );

    let mut restarted = None;
    for _ in 0..40 {
        match Relay::bind(seen.config(addr)) {
            Ok(r) => {
                restarted = Some(r);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let _relay = restarted.expect("relay restarts on the same address");
    wait_ready(&pair).await;
    tcp_roundtrip(&pair.entry_addr, b"A", b"after the restart").await;
    // One event for the loss (however many reconnection attempts failed), one
    // for the return.
    let events = drain(&mut pair.entry_events);
    let states: Vec<&str> = events
        .iter()
        .map(|e| e["details"]["state"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(states, ["connecting", "ready"], "{events:?}");
    assert_eq!(events[0]["severity"], "warning");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_datagram_is_dropped_and_counted() {
    let relay = start_relay(&Seen::default());
    let mut pair = relay_pair(&relay, TunnelProtocol::Udp, udp_echo().await).await;
    wait_ready(&pair).await;
    let client = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    // The largest IPv4 UDP payload: sealed and prefixed it exceeds any QUIC
    // datagram, whatever MTU discovery has found.
    client
        .send_to(&vec![7u8; 65_507], &pair.entry_addr)
        .await
        .expect("send");
    let deadline = Instant::now() + Duration::from_secs(5);
    while pair
        .entry
        .status(&pair.id)
        .expect("status")
        .stats
        .send_errors
        == 0
    {
        assert!(Instant::now() < deadline, "oversized datagram not counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stats = pair.entry.status(&pair.id).expect("status").stats;
    assert_eq!(stats.packets_sent, 0);
    let e = event(&mut pair.entry_events, "datagram_too_large").await;
    assert!(e["message"].as_str().expect("msg").contains("65507"), "{e}");
    assert_eq!(e["details"]["occurrences"], 1);
    udp_roundtrip(&pair.entry_addr, b"small still works").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_exit_target_closes_the_stream_and_counts_an_error() {
    let relay = start_relay(&Seen::default());
    let closed: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let mut pair = relay_pair(&relay, TunnelProtocol::Tcp, closed).await;
    wait_ready(&pair).await;
    // The entry resets the local connection as soon as the exit reports the
    // refusal, which may already be visible when the connect completes.
    let attempt = async {
        let mut s = TcpStream::connect(&pair.entry_addr).await?;
        let _ = s.write_all(b"hello").await;
        let mut buf = [0u8; 8];
        s.read(&mut buf).await
    };
    let r = tokio::time::timeout(Duration::from_secs(5), attempt).await;
    assert!(matches!(r, Ok(Ok(0)) | Ok(Err(_))), "{r:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while pair
        .exit
        .status(&pair.id)
        .expect("status")
        .stats
        .send_errors
        == 0
    {
        assert!(Instant::now() < deadline, "refused target not counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let e = event(&mut pair.exit_events, "target_refused").await;
    assert_eq!(e["severity"], "warning");
    assert!(
        e["message"]
            .as_str()
            .expect("msg")
            .contains(&closed.to_string()),
        "{e}"
    );
    // More refusals within 10 s are counted, not reported one by one.
    for _ in 0..3 {
        if let Ok(mut s) = TcpStream::connect(&pair.entry_addr).await {
            let _ = s.read(&mut [0u8; 1]).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(drain(&mut pair.exit_events).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_a_tunnel_frees_its_port() {
    let relay = start_relay(&Seen::default());
    let pair = relay_pair(&relay, TunnelProtocol::Tcp, tcp_echo(b"A").await).await;
    wait_ready(&pair).await;
    assert!(pair.entry.stop(&pair.id).await);
    TcpListener::bind(&pair.entry_addr)
        .await
        .expect("port free again");
    assert!(pair.entry.statuses().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datagrams_of_unbound_tunnels_are_dropped_and_counted() {
    let relay = start_relay(&Seen::default());
    let addr = relay.local_addr().expect("addr");
    let endpoint = quic::client(ALPN_RELAY, addr).expect("client");
    let conn = endpoint
        .connect(addr, "relay")
        .expect("connect")
        .await
        .expect("handshake");
    // The relay reads an edge's datagrams once its control stream is open.
    let (mut send, _recv) = conn.open_bi().await.expect("stream");
    let hello = ControlMessage::Hello {
        protocol_version: 1,
        software_version: "raw".into(),
    };
    wire::write_json(&mut send, &hello).await.expect("hello");
    let mut datagram = Uuid::new_v4().as_bytes().to_vec();
    datagram.extend_from_slice(b"sealed bytes of nobody");
    conn.send_datagram(datagram.into()).expect("send");
    conn.send_datagram(bytes::Bytes::from_static(b"short"))
        .expect("send");
    let deadline = Instant::now() + Duration::from_secs(5);
    while relay.stats().udp_datagrams_dropped < 2 {
        assert!(Instant::now() < deadline, "{:?}", relay.stats());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(relay.stats().total_bytes_forwarded, 0);
}
