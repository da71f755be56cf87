//! UDP through a tunnel: every local datagram is sealed and sent as one QUIC
//! datagram `tunnel_id(16) || sealed unit`; datagrams from the other end are opened
//! and delivered locally.
//!
//! The entry listens on `local_addr` and may hear from several local senders; what
//! comes back through the tunnel goes to the *most recent* sender (a tunnel carries
//! one flow, and a restarted sender on a new port takes the replies over at once).
//! The exit sends from one socket connected to its target, so the target's replies
//! are exactly what it receives on that socket.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::UdpSocket;

use super::{Plan, TunnelShared};
use crate::crypto::SEAL_OVERHEAD;
use crate::wire::{split_datagram, DATAGRAM_PREFIX};
use crate::TunnelError;
use fleetgate_protocol::tunnel::TunnelDirection;

/// Largest local datagram read.
const MAX_UDP: usize = 65_535;

/// The local socket of a UDP tunnel end.
pub(crate) struct UdpEnd {
    socket: UdpSocket,
    /// Entry only: where replies go (the last local sender).
    last_sender: Mutex<Option<SocketAddr>>,
    is_entry: bool,
}

impl UdpEnd {
    /// The entry binds `local_addr`; the exit connects a fresh socket to it.
    pub async fn bind(local_addr: &str, direction: TunnelDirection) -> Result<Self, TunnelError> {
        let is_entry = direction == TunnelDirection::Egress;
        let socket = if is_entry {
            UdpSocket::bind(local_addr).await?
        } else {
            let target = crate::quic::resolve(local_addr).await?;
            let any: SocketAddr = if target.is_ipv6() {
                (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
            } else {
                (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
            };
            let socket = UdpSocket::bind(any).await?;
            socket.connect(target).await?;
            socket
        };
        Ok(UdpEnd {
            socket,
            last_sender: Mutex::new(None),
            is_entry,
        })
    }

    async fn recv(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.is_entry {
            let (n, from) = self.socket.recv_from(buf).await?;
            *self.last_sender.lock().unwrap_or_else(|p| p.into_inner()) = Some(from);
            Ok(n)
        } else {
            self.socket.recv(buf).await
        }
    }

    /// Delivers a datagram that came out of the tunnel.
    pub async fn deliver(&self, plain: &[u8]) -> std::io::Result<()> {
        if self.is_entry {
            let to = *self.last_sender.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(to) = to {
                self.socket.send_to(plain, to).await?;
            }
            Ok(())
        } else {
            // A refused target (ICMP) shows up as an error on a connected socket;
            // the datagram is lost either way.
            self.socket.send(plain).await.map(|_| ())
        }
    }
}

/// Local datagrams → tunnel, while the tunnel is ready; dropped (and counted as
/// send errors) when it is not, or when they do not fit in a QUIC datagram.
pub(super) async fn outbound(end: Arc<UdpEnd>, plan: Plan, shared: Arc<TunnelShared>) {
    let mut buf = vec![0u8; MAX_UDP];
    let mut datagram = Vec::with_capacity(DATAGRAM_PREFIX + MAX_UDP + SEAL_OVERHEAD);
    loop {
        let n = match end.recv(&mut buf).await {
            Ok(n) => n,
            Err(e) => {
                // Connected sockets (the exit's, to its target) report ICMP
                // errors from earlier sends here.
                tracing::debug!(error = %e, "tunnel UDP receive error");
                if e.kind() == std::io::ErrorKind::ConnectionRefused {
                    shared.problem("target_refused", || {
                        format!("the target {} refused datagrams: {e}", plan.local_addr)
                    });
                }
                continue;
            }
        };
        let Some(connection) = shared.current_link() else {
            shared.error();
            continue;
        };
        datagram.clear();
        datagram.extend_from_slice(plan.tunnel_id.as_bytes());
        if plan.cipher.seal_into(&buf[..n], &mut datagram).is_err() {
            shared.error();
            continue;
        }
        let fits = connection
            .max_datagram_size()
            .is_some_and(|max| datagram.len() <= max);
        if !fits {
            tracing::debug!(
                len = n,
                "tunnel UDP datagram too large for the link; dropped"
            );
            let max = connection.max_datagram_size().unwrap_or(0);
            shared.problem("datagram_too_large", || {
                format!("a datagram of {n} bytes does not fit the link (at most {max} with the tunnel's overhead); dropped")
            });
            continue;
        }
        match connection.send_datagram(bytes::Bytes::copy_from_slice(&datagram)) {
            Ok(()) => {
                TunnelShared::add(&shared.counters.bytes_sent, n as u64);
                TunnelShared::add(&shared.counters.packets_sent, 1);
            }
            Err(e) => {
                tracing::debug!(error = %e, "tunnel UDP send failed");
                shared.error();
            }
        }
    }
}

/// A datagram from the other end → local socket.
pub(super) async fn inbound(end: &UdpEnd, plan: &Plan, shared: &TunnelShared, datagram: &[u8]) {
    let Some((id, sealed)) = split_datagram(datagram) else {
        return;
    };
    if id != plan.tunnel_id {
        return;
    }
    let Ok(plain) = plan.cipher.open(sealed) else {
        tracing::debug!("tunnel UDP datagram failed to authenticate; dropped");
        return;
    };
    match end.deliver(&plain).await {
        Ok(()) => {
            TunnelShared::add(&shared.counters.bytes_received, plain.len() as u64);
            TunnelShared::add(&shared.counters.packets_received, 1);
        }
        Err(e) => {
            tracing::debug!(error = %e, "tunnel UDP delivery failed");
            shared.error();
        }
    }
}
