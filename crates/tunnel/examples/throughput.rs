//! TCP throughput and round-trip latency on loopback: plain (no tunnel), through a
//! tunnel in direct mode, through a relay — the tunnels in this one process — and,
//! when `SSH_FORWARD` names one, through an SSH port-forward to this process's
//! server. Each path carries the same number of bytes from a client to a counting
//! sink, then the same number of small request/response round trips to an echo.
//! Run by `bench/tunnel.sh`.
//!
//! Usage: `throughput [MiB] [round trips]` (defaults 512 and 2000).
//! Env: `SERVER_PORT` fixes the server's loopback port (an SSH forward points at
//! it); `SSH_FORWARD=host:port` is the local end of that forward.

use std::time::{Duration, Instant};

use fleetgate_tunnel::{
    EdgeTunnels, Relay, RelayConfig, TunnelConfig, TunnelDirection, TunnelMode, TunnelProtocol,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// The server every path leads to. The client's first byte picks what it does:
/// `S` counts what it receives and answers with the count when the sender
/// finishes; `E` echoes each 64-byte message.
async fn server(port: u16) -> String {
    let listener = TcpListener::bind(("127.0.0.1", port)).await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let mut mode = [0u8; 1];
                if s.read_exact(&mut mode).await.is_err() {
                    return;
                }
                if mode[0] == b'E' {
                    let mut msg = [0u8; MESSAGE];
                    while s.read_exact(&mut msg).await.is_ok() {
                        if s.write_all(&msg).await.is_err() {
                            break;
                        }
                    }
                    return;
                }
                let mut buf = vec![0u8; 256 * 1024];
                let mut total = 0u64;
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    total += n as u64;
                }
                let _ = s.write_all(&total.to_be_bytes()).await;
            });
        }
    });
    addr
}

/// Size of a latency probe message.
const MESSAGE: usize = 64;

/// Sends `bytes` to `addr`; returns Gbit/s.
async fn push(addr: &str, bytes: u64) -> f64 {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.set_nodelay(true).expect("nodelay");
    s.write_all(b"S").await.expect("mode");
    let chunk = vec![0x5au8; 256 * 1024];
    let started = Instant::now();
    let mut sent = 0u64;
    while sent < bytes {
        let n = (bytes - sent).min(chunk.len() as u64) as usize;
        s.write_all(&chunk[..n]).await.expect("write");
        sent += n as u64;
    }
    s.shutdown().await.expect("shutdown");
    let mut count = [0u8; 8];
    s.read_exact(&mut count).await.expect("count");
    let elapsed = started.elapsed().as_secs_f64();
    assert_eq!(u64::from_be_bytes(count), bytes, "bytes lost");
    bytes as f64 * 8.0 / elapsed / 1e9
}

/// `n` round trips of a 64-byte message on one connection (after 100 unmeasured
/// ones); the p50 and p99 round-trip times in microseconds.
async fn ping(addr: &str, n: usize) -> (f64, f64) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.set_nodelay(true).expect("nodelay");
    s.write_all(b"E").await.expect("mode");
    let msg = [0x42u8; MESSAGE];
    let mut back = [0u8; MESSAGE];
    let mut rtts = Vec::with_capacity(n);
    for i in 0..n + 100 {
        let started = Instant::now();
        s.write_all(&msg).await.expect("write");
        s.read_exact(&mut back).await.expect("echo");
        if i >= 100 {
            rtts.push(started.elapsed().as_secs_f64() * 1e6);
        }
    }
    assert_eq!(back, msg);
    rtts.sort_by(f64::total_cmp);
    let at = |q: f64| rtts[((rtts.len() as f64 * q) as usize).min(rtts.len() - 1)];
    (at(0.50), at(0.99))
}

/// Prints one path's numbers.
async fn measure(name: &str, addr: &str, bytes: u64, trips: usize) {
    let gbps = push(addr, bytes).await;
    let (p50, p99) = ping(addr, trips).await;
    println!("{name}_gbps={gbps:.2}");
    println!("{name}_rtt_p50_us={p50:.1}");
    println!("{name}_rtt_p99_us={p99:.1}");
}

fn config(id: &str, mode: TunnelMode, direction: TunnelDirection, local: String) -> TunnelConfig {
    TunnelConfig {
        id: id.to_owned(),
        name: "bench".into(),
        enabled: true,
        protocol: TunnelProtocol::Tcp,
        mode,
        direction,
        local_addr: local,
        relay_addr: None,
        peer_addr: None,
        direct_listen_addr: None,
        tunnel_encryption_key: Some(KEY.into()),
        tunnel_bind_secret: Some(KEY.into()),
        tunnel_psk: Some(KEY.into()),
        tls_cert_pem: None,
        tls_key_pem: None,
    }
}

async fn wait_ready(t: &EdgeTunnels, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while t.status(id).map(|s| s.state) != Some("ready".into()) {
        assert!(Instant::now() < deadline, "tunnel not ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn tunnel(
    mode: TunnelMode,
    target: &str,
    relay: Option<&Relay>,
) -> (EdgeTunnels, EdgeTunnels, String) {
    let id = uuid::Uuid::new_v4().to_string();
    let entry_addr = format!("127.0.0.1:{}", free_port());
    let mut entry = config(&id, mode, TunnelDirection::Egress, entry_addr.clone());
    let mut exit = config(&id, mode, TunnelDirection::Ingress, target.to_owned());
    match relay {
        Some(r) => {
            let addr = r.local_addr().expect("addr").to_string();
            entry.relay_addr = Some(addr.clone());
            exit.relay_addr = Some(addr);
        }
        None => {
            let port = free_port();
            entry.peer_addr = Some(format!("127.0.0.1:{port}"));
            exit.direct_listen_addr = Some(format!("127.0.0.1:{port}"));
        }
    }
    let (a, b) = (EdgeTunnels::new(None), EdgeTunnels::new(None));
    b.start(exit).await.expect("exit");
    a.start(entry).await.expect("entry");
    wait_ready(&a, &id).await;
    wait_ready(&b, &id).await;
    (a, b, entry_addr)
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let mib: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(512);
    let trips: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(2000);
    let bytes = mib * 1024 * 1024;
    let port = std::env::var("SERVER_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    let target = server(port).await;
    println!("bytes_per_run={bytes}");
    println!("round_trips={trips}");
    measure("plain_loopback", &target, bytes, trips).await;
    let (_a, _b, direct) = tunnel(TunnelMode::Direct, &target, None).await;
    measure("direct_tunnel", &direct, bytes, trips).await;
    let relay = Relay::bind(RelayConfig::new("127.0.0.1:0".parse().expect("addr"))).expect("relay");
    let (_c, _d, via_relay) = tunnel(TunnelMode::Relay, &target, Some(&relay)).await;
    measure("relay_tunnel", &via_relay, bytes, trips).await;
    if let Ok(forward) = std::env::var("SSH_FORWARD") {
        measure("ssh_forward", &forward, bytes, trips).await;
    }
}
