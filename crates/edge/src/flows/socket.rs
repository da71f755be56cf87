//! Sockets of flows: binding inputs (unicast and multicast UDP, TCP listeners)
//! and outputs (UDP with DSCP marking), with bind failures told apart so the
//! manager can be told a port is taken.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use socket2::{Domain, Protocol, SockRef, Socket, Type};

/// Receive buffer asked for on inputs: media arrives in bursts.
const INPUT_RECV_BUFFER: usize = 4 * 1024 * 1024;

/// Why a flow could not bind a socket.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct BindError {
    /// `port_conflict` (the address is in use) or `bind_failed`.
    pub code: &'static str,
    pub message: String,
}

impl BindError {
    pub fn new(what: &str, addr: SocketAddr, e: &io::Error) -> Self {
        let code = if e.kind() == io::ErrorKind::AddrInUse {
            "port_conflict"
        } else {
            "bind_failed"
        };
        BindError {
            code,
            message: format!("cannot bind {what} on {addr}: {e}"),
        }
    }
}

fn udp_socket(addr: SocketAddr) -> io::Result<Socket> {
    Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
}

/// A UDP input socket on `bind`; when `bind` is a multicast group the socket
/// joins it on `interface` (any interface when absent).
pub fn udp_input(
    bind: SocketAddr,
    interface: Option<IpAddr>,
) -> Result<tokio::net::UdpSocket, BindError> {
    let fail = |e: io::Error| BindError::new("the udp input", bind, &e);
    let socket = udp_socket(bind).map_err(fail)?;
    let multicast = bind.ip().is_multicast();
    if multicast {
        // Several receivers of one group share the port.
        socket.set_reuse_address(true).map_err(fail)?;
    }
    let _ = socket.set_recv_buffer_size(INPUT_RECV_BUFFER);
    socket.bind(&bind.into()).map_err(fail)?;
    if multicast {
        join(&socket, bind.ip(), interface).map_err(|e| BindError {
            code: "bind_failed",
            message: format!("cannot join multicast group {}: {e}", bind.ip()),
        })?;
    }
    into_tokio_udp(socket).map_err(fail)
}

fn join(socket: &Socket, group: IpAddr, interface: Option<IpAddr>) -> io::Result<()> {
    match group {
        IpAddr::V4(g) => {
            let iface = match interface {
                Some(IpAddr::V4(i)) => i,
                _ => Ipv4Addr::UNSPECIFIED,
            };
            socket.join_multicast_v4(&g, &iface)
        }
        // IPv6 groups are joined on the default interface.
        IpAddr::V6(g) => socket.join_multicast_v6(&g, 0),
    }
}

fn into_tokio_udp(socket: Socket) -> io::Result<tokio::net::UdpSocket> {
    socket.set_nonblocking(true)?;
    tokio::net::UdpSocket::from_std(socket.into())
}

/// A UDP output socket sending to `dest`: bound to `bind` (or an ephemeral port),
/// marked with `dscp`, and sending multicast through `interface` when given.
pub fn udp_output(
    dest: SocketAddr,
    bind: Option<SocketAddr>,
    interface: Option<IpAddr>,
    dscp: u8,
) -> Result<tokio::net::UdpSocket, BindError> {
    let local = bind.unwrap_or(match dest {
        SocketAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        SocketAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
    });
    let fail = |e: io::Error| BindError::new("the udp output", local, &e);
    let socket = udp_socket(local).map_err(fail)?;
    socket.bind(&local.into()).map_err(fail)?;
    mark(&SockRef::from(&socket), dest, dscp);
    if let (true, Some(IpAddr::V4(i))) = (dest.ip().is_multicast(), interface) {
        if let Err(e) = socket.set_multicast_if_v4(&i) {
            tracing::warn!(interface = %i, error = %e, "cannot send multicast through this interface");
        }
    }
    into_tokio_udp(socket).map_err(fail)
}

/// Marks an IPv4 socket's packets with `dscp` (best effort: some systems refuse).
pub fn mark(socket: &SockRef<'_>, dest: SocketAddr, dscp: u8) {
    if dest.is_ipv4() {
        if let Err(e) = socket.set_tos_v4(u32::from(dscp) << 2) {
            tracing::debug!(dscp, error = %e, "cannot set IP_TOS");
        }
    }
}

/// A TCP listener for a tcp input.
pub fn tcp_listener(addr: SocketAddr) -> Result<tokio::net::TcpListener, BindError> {
    let fail = |e: io::Error| BindError::new("the tcp input", addr, &e);
    let listener = std::net::TcpListener::bind(addr).map_err(fail)?;
    listener.set_nonblocking(true).map_err(fail)?;
    tokio::net::TcpListener::from_std(listener).map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_taken_port_is_a_port_conflict() {
        let first = udp_input("127.0.0.1:0".parse().expect("addr"), None).expect("bind");
        let taken = first.local_addr().expect("addr");
        let e = udp_input(taken, None).expect_err("in use");
        assert_eq!(e.code, "port_conflict");
        assert!(e.message.contains(&taken.to_string()), "{e}");
        let l = tcp_listener("127.0.0.1:0".parse().expect("addr")).expect("listen");
        let e = tcp_listener(l.local_addr().expect("addr")).expect_err("in use");
        assert_eq!(e.code, "port_conflict");
    }

    #[tokio::test]
    async fn outputs_are_marked_with_their_dscp() {
        let s = udp_output("127.0.0.1:9".parse().expect("addr"), None, None, 46).expect("bind");
        let tos = SockRef::from(&s).tos_v4().expect("tos");
        assert_eq!(tos, 46 << 2);
    }
}
