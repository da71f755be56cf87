//! TCP throughput on loopback: plain (no tunnel), through a tunnel in direct mode,
//! and through a relay — everything in this one process, each carrying the same
//! number of bytes from a client to a sink. Run by `bench/tunnel.sh`.
//!
//! Usage: `throughput [MiB]` (default 512).

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

/// A sink that counts what it receives and answers with the count when the
/// sender finishes.
async fn sink() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
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

/// Sends `bytes` to `addr`; returns Gbit/s.
async fn push(addr: &str, bytes: u64) -> f64 {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.set_nodelay(true).expect("nodelay");
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
    let mib: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(512);
    let bytes = mib * 1024 * 1024;
    let target = sink().await;
    let plain = push(&target, bytes).await;
    let (_a, _b, direct) = tunnel(TunnelMode::Direct, &target, None).await;
    let direct = push(&direct, bytes).await;
    let relay = Relay::bind(RelayConfig::new("127.0.0.1:0".parse().expect("addr"))).expect("relay");
    let (_c, _d, via_relay) = tunnel(TunnelMode::Relay, &target, Some(&relay)).await;
    let relayed = push(&via_relay, bytes).await;
    println!("bytes_per_run={bytes}");
    println!("plain_loopback_gbps={plain:.2}");
    println!("direct_tunnel_gbps={direct:.2}");
    println!("relay_tunnel_gbps={relayed:.2}");
}
