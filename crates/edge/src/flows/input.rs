//! Inputs: where a flow's packets come from. UDP and RTP inputs read datagrams
//! (RTP ones also check the header: sender and payload type filters, loss from
//! sequence gaps); TCP inputs forward what they read from accepted or dialled
//! connections. Each packet is offered to the flow's [`Fanout`].

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::AsyncReadExt;
use tokio::task::{JoinHandle, JoinSet};

use super::config::{socket_addr, InputConfig, RtpInput, SourceFilter, TcpInput};
use super::output::Fanout;
use super::rtp::{RtpHeader, SequenceTracker};
use super::socket::{self, BindError};
use super::stats::{InputCounters, State};

/// Largest datagram read (the UDP maximum).
const MAX_DATAGRAM: usize = 65_536;
/// Bytes read from a TCP connection at a time (one packet to the outputs).
const TCP_CHUNK: usize = 16 * 1024;
/// Connections a tcp input accepts at once.
const MAX_TCP_CONNECTIONS: usize = 16;
const TCP_BACKOFF_MIN: Duration = Duration::from_millis(250);
const TCP_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// What an RTP input lets through, and the loss it counts.
#[derive(Debug, Default)]
pub struct RtpCheck {
    sources: SourceFilter,
    payload_types: Vec<u8>,
    sequence: SequenceTracker,
    cap: Option<RateCap>,
}

/// At most `bytes_per_window` bytes per one-second window.
#[derive(Debug)]
struct RateCap {
    bytes_per_window: u64,
    window_start: Instant,
    used: u64,
}

impl RateCap {
    fn new(mbps: f64) -> Self {
        RateCap {
            // Bounded by validation (at most 100 Gbit/s).
            bytes_per_window: (mbps * 1_000_000.0 / 8.0) as u64,
            window_start: Instant::now(),
            used: 0,
        }
    }

    /// Whether `len` more bytes fit in the current window (and counts them if so).
    fn admit(&mut self, len: usize, now: Instant) -> bool {
        if now.duration_since(self.window_start) >= Duration::from_secs(1) {
            self.window_start = now;
            self.used = 0;
        }
        let len = len as u64;
        if self.used + len > self.bytes_per_window {
            return false;
        }
        self.used += len;
        true
    }
}

/// What to do with one datagram of an RTP input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Forward it; this many packets before it were lost.
    Forward { lost: u64 },
    /// Drop it: not RTP, or from a sender or of a payload type not allowed.
    Filter,
}

impl RtpCheck {
    pub fn new(cfg: &RtpInput) -> Self {
        RtpCheck {
            sources: SourceFilter::new(cfg.allowed_sources.as_deref()),
            payload_types: cfg.allowed_payload_types.clone().unwrap_or_default(),
            sequence: SequenceTracker::default(),
            cap: cfg.max_bitrate_mbps.map(RateCap::new),
        }
    }

    pub fn check(&mut self, packet: &[u8], from: SocketAddr) -> Verdict {
        if !self.sources.allows(from) {
            return Verdict::Filter;
        }
        let Ok(h) = RtpHeader::parse(packet) else {
            return Verdict::Filter;
        };
        if !self.payload_types.is_empty() && !self.payload_types.contains(&h.payload_type) {
            return Verdict::Filter;
        }
        if let Some(cap) = self.cap.as_mut() {
            if !cap.admit(packet.len(), Instant::now()) {
                return Verdict::Filter;
            }
        }
        Verdict::Forward {
            lost: self.sequence.observe(h.ssrc, h.sequence),
        }
    }
}

/// Binds `config`'s socket (so a taken port fails here) and starts reading.
pub fn start(
    config: &InputConfig,
    fanout: Arc<Fanout>,
    counters: Arc<InputCounters>,
) -> Result<JoinHandle<()>, BindError> {
    let addr = |s: &str, field: &str| {
        socket_addr(s, field).map_err(|e| BindError {
            code: "bind_failed",
            message: e.0,
        })
    };
    let iface = |i: &Option<String>| i.as_deref().and_then(|s| s.parse::<IpAddr>().ok());
    match config {
        InputConfig::Udp(u) => {
            let sock = socket::udp_input(
                addr(&u.bind_addr, "input.bind_addr")?,
                iface(&u.interface_addr),
            )?;
            counters.state.set(State::Running);
            Ok(tokio::spawn(run_datagrams(sock, None, fanout, counters)))
        }
        InputConfig::Rtp(r) => {
            let sock = socket::udp_input(
                addr(&r.bind_addr, "input.bind_addr")?,
                iface(&r.interface_addr),
            )?;
            counters.state.set(State::Running);
            Ok(tokio::spawn(run_datagrams(
                sock,
                Some(RtpCheck::new(r)),
                fanout,
                counters,
            )))
        }
        InputConfig::Tcp(TcpInput {
            listen_addr: Some(l),
            ..
        }) => {
            let listener = socket::tcp_listener(addr(l, "input.listen_addr")?)?;
            counters.state.set(State::Listening);
            Ok(tokio::spawn(run_tcp_listener(listener, fanout, counters)))
        }
        InputConfig::Tcp(t) => {
            let dest = addr(
                t.connect_addr.as_deref().unwrap_or_default(),
                "input.connect_addr",
            )?;
            counters.state.set(State::Connecting);
            Ok(tokio::spawn(run_tcp_dialer(dest, fanout, counters)))
        }
    }
}

async fn run_datagrams(
    sock: tokio::net::UdpSocket,
    mut rtp: Option<RtpCheck>,
    fanout: Arc<Fanout>,
    counters: Arc<InputCounters>,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let (n, from) = match sock.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                // Errors of an unconnected UDP socket are transient (an ICMP
                // report, a truncated read); do not spin on them.
                tracing::debug!(error = %e, "udp input read failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let packet = &buf[..n];
        counters.received(n);
        if let Some(check) = rtp.as_mut() {
            match check.check(packet, from) {
                Verdict::Filter => {
                    counters.packets_filtered.fetch_add(1, Relaxed);
                    continue;
                }
                Verdict::Forward { lost } if lost > 0 => {
                    counters.packets_lost.fetch_add(lost, Relaxed);
                }
                Verdict::Forward { .. } => {}
            }
        }
        fanout.send(Bytes::copy_from_slice(packet));
    }
}

async fn run_tcp_listener(
    listener: tokio::net::TcpListener,
    fanout: Arc<Fanout>,
    counters: Arc<InputCounters>,
) {
    // Dropped with this task: a stopped flow closes its connections too.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) if connections.len() < MAX_TCP_CONNECTIONS => {
                    tracing::debug!(%peer, "tcp input connection");
                    counters.state.set(State::Connected);
                    connections.spawn(read_stream(stream, fanout.clone(), counters.clone()));
                }
                Ok((_, peer)) => tracing::warn!(%peer, "tcp input refused a connection: too many"),
                Err(e) => {
                    tracing::debug!(error = %e, "tcp input accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next() => {
                if connections.is_empty() {
                    counters.state.set(State::Listening);
                }
            }
        }
    }
}

async fn run_tcp_dialer(dest: SocketAddr, fanout: Arc<Fanout>, counters: Arc<InputCounters>) {
    let mut backoff = TCP_BACKOFF_MIN;
    loop {
        counters.state.set(State::Connecting);
        match tokio::net::TcpStream::connect(dest).await {
            Ok(stream) => {
                counters.clear_error();
                counters.state.set(State::Connected);
                backoff = TCP_BACKOFF_MIN;
                read_stream(stream, fanout.clone(), counters.clone()).await;
            }
            Err(e) => {
                counters.fail(format!("cannot connect to {dest}: {e}"));
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(TCP_BACKOFF_MAX);
            }
        }
    }
}

/// Forwards what `stream` delivers until it ends.
async fn read_stream(
    mut stream: tokio::net::TcpStream,
    fanout: Arc<Fanout>,
    counters: Arc<InputCounters>,
) {
    let mut buf = vec![0u8; TCP_CHUNK];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                counters.received(n);
                fanout.send(Bytes::copy_from_slice(&buf[..n]));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rtp(pt: u8, seq: u16) -> Vec<u8> {
        let mut p = vec![0x80, pt, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7];
        p[2..4].copy_from_slice(&seq.to_be_bytes());
        p
    }

    #[test]
    fn rtp_checks_filter_and_count_loss() {
        let cfg = RtpInput {
            bind_addr: "0.0.0.0:1".into(),
            interface_addr: None,
            allowed_sources: Some(vec!["10.0.0.1".into()]),
            allowed_payload_types: Some(vec![33]),
            max_bitrate_mbps: None,
        };
        let mut c = RtpCheck::new(&cfg);
        let ok: SocketAddr = "10.0.0.1:4000".parse().expect("addr");
        let other: SocketAddr = "10.0.0.9:4000".parse().expect("addr");
        assert_eq!(c.check(&rtp(33, 1), ok), Verdict::Forward { lost: 0 });
        assert_eq!(c.check(&rtp(33, 2), other), Verdict::Filter);
        assert_eq!(c.check(&rtp(96, 2), ok), Verdict::Filter);
        assert_eq!(c.check(b"not rtp", ok), Verdict::Filter);
        assert_eq!(c.check(&rtp(33, 5), ok), Verdict::Forward { lost: 3 });
    }

    #[test]
    fn a_rate_cap_drops_what_exceeds_its_window() {
        // 0.0008 Mbit/s: 100 bytes a second.
        let mut cap = RateCap::new(0.0008);
        let t0 = Instant::now();
        assert!(cap.admit(60, t0));
        assert!(cap.admit(40, t0));
        assert!(!cap.admit(1, t0 + Duration::from_millis(999)));
        assert!(cap.admit(100, t0 + Duration::from_secs(1)));
    }
}
