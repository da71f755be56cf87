//! The relay: a QUIC server (ALPN `bilbycast-relay`) that pairs the two ends of a
//! tunnel bound by two edges and forwards their TCP streams and UDP datagrams
//! between them, never holding a key — it routes on the tunnel id and copies
//! ciphertext.
//!
//! Binding is open for tunnels the relay has no authorization for (Bilbycast's
//! backwards-compatible mode); once `authorize_tunnel` has registered the two bind
//! tokens, each end must present its own. `revoke_tunnel` removes the authorization,
//! tears the tunnel's traffic down and, unlike Bilbycast, refuses later binds of that
//! tunnel until it is authorized again — otherwise the edges would simply rebind in
//! open mode.

mod forward;
mod state;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::quic::{self, ServerIdentity, ALPN_RELAY};
use crate::wire::{self, ControlMessage, PROTOCOL_VERSION};
use crate::TunnelError;
use state::Shared;
pub use state::{RelayEdgeInfo, RelayTunnelInfo};

/// Sees every payload slice the relay forwards (stream bytes and whole datagrams),
/// for audits; the relay's tests use it to prove only ciphertext passes.
pub type ForwardObserver = Arc<dyn Fn(&[u8]) + Send + Sync>;

/// How a relay is started.
#[derive(Clone)]
pub struct RelayConfig {
    /// The QUIC listen address (Bilbycast's default is `0.0.0.0:4433`).
    pub listen_addr: SocketAddr,
    /// Reported in `hello_ack`.
    pub software_version: String,
    pub forward_observer: Option<ForwardObserver>,
    /// Where the relay's events go (category `tunnel`: binds it refused), if
    /// anywhere.
    pub events: Option<mpsc::Sender<Value>>,
}

impl RelayConfig {
    /// A relay on `listen_addr` reporting this crate's version.
    pub fn new(listen_addr: SocketAddr) -> Self {
        RelayConfig {
            listen_addr,
            software_version: env!("CARGO_PKG_VERSION").to_owned(),
            forward_observer: None,
            events: None,
        }
    }
}

/// The relay's counters, as in the node protocol's relay `stats` payload.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RelayStats {
    pub tunnels: Vec<RelayTunnelInfo>,
    pub edges: Vec<RelayEdgeInfo>,
    pub connected_edges: u64,
    pub active_tunnels: u64,
    pub total_tunnels: u64,
    pub total_bytes_ingress: u64,
    pub total_bytes_egress: u64,
    pub total_bytes_forwarded: u64,
    pub total_bandwidth_bps: u64,
    pub total_tcp_streams: u64,
    pub active_tcp_streams: u64,
    pub total_udp_datagrams: u64,
    /// Datagrams that could not be forwarded (no peer, unknown tunnel, too large).
    pub udp_datagrams_dropped: u64,
    pub peak_tunnels: u64,
    pub peak_edges: u64,
    pub connections_total: u64,
    pub uptime_secs: u64,
}

/// A running relay; dropping it closes the endpoint and every connection.
pub struct Relay {
    shared: Arc<Shared>,
    endpoint: quinn::Endpoint,
    accept: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// Starts a relay with a fresh self-signed certificate.
    pub fn bind(config: RelayConfig) -> Result<Relay, TunnelError> {
        let identity = ServerIdentity::self_signed("fleetgate-relay")?;
        let endpoint = quic::server(config.listen_addr, ALPN_RELAY, identity)?;
        let shared = Arc::new(Shared::new(
            config.software_version,
            config.forward_observer,
            config.events,
        ));
        let accept = tokio::spawn(accept_loop(endpoint.clone(), shared.clone()));
        Ok(Relay {
            shared,
            endpoint,
            accept,
        })
    }

    /// The address the relay listens on.
    pub fn local_addr(&self) -> Result<SocketAddr, TunnelError> {
        Ok(self.endpoint.local_addr()?)
    }

    /// Registers the bind tokens of a tunnel (`authorize_tunnel`); later binds of it
    /// must present them. Lifts an earlier revocation.
    pub fn authorize_tunnel(&self, tunnel_id: Uuid, ingress_token: String, egress_token: String) {
        self.shared
            .authorize(tunnel_id, ingress_token, egress_token);
    }

    /// Removes a tunnel's authorization, cuts its traffic and refuses its binds until
    /// it is authorized again (`revoke_tunnel`). Whether it was bound.
    pub fn revoke_tunnel(&self, tunnel_id: Uuid) -> bool {
        self.shared.revoke(tunnel_id)
    }

    /// Tears a bound tunnel down (`close_tunnel`); its edges may bind it again.
    pub fn close_tunnel(&self, tunnel_id: Uuid) -> bool {
        self.shared.close_tunnel(tunnel_id, "closed by manager")
    }

    /// Closes the connections of an edge (`disconnect_edge`), by the id it
    /// identified with or, failing that, its `conn-<n>` label. Whether any matched.
    pub fn disconnect_edge(&self, edge_id: &str) -> bool {
        self.shared.disconnect_edge(edge_id)
    }

    /// The tunnels bound now (`list_tunnels`).
    pub fn list_tunnels(&self) -> Vec<RelayTunnelInfo> {
        self.shared.list_tunnels()
    }

    /// The edges connected now (`list_edges`).
    pub fn list_edges(&self) -> Vec<RelayEdgeInfo> {
        self.shared.list_edges()
    }

    /// The current counters; the bandwidth is measured since the previous call.
    pub fn stats(&self) -> RelayStats {
        self.shared.stats()
    }

    /// Closes every connection and the endpoint, and waits until its socket is free.
    pub async fn shutdown(self) {
        self.accept.abort();
        self.endpoint
            .close(quinn::VarInt::from_u32(0), b"relay shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accept.abort();
        self.endpoint
            .close(quinn::VarInt::from_u32(0), b"relay shutting down");
    }
}

async fn accept_loop(endpoint: quinn::Endpoint, shared: Arc<Shared>) {
    // Dropping the set (when this task is aborted) aborts every connection task.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                connections.spawn(serve_edge(incoming, shared.clone()));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Serves one edge connection until it closes, then unbinds everything it bound.
async fn serve_edge(incoming: quinn::Incoming, shared: Arc<Shared>) {
    let connection = match incoming.await {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(error = %e, "relay handshake failed");
            return;
        }
    };
    let (control_tx, control_rx) = mpsc::unbounded_channel();
    let conn_id = shared.add_edge(connection.clone(), control_tx.clone());
    shared
        .counters
        .connections_total
        .fetch_add(1, Ordering::Relaxed);
    let outcome = run_edge(conn_id, &connection, &shared, control_tx, control_rx).await;
    if let Err(e) = outcome {
        tracing::debug!(conn_id, error = %e, "relay connection ended");
    }
    connection.close(quinn::VarInt::from_u32(0), b"bye");
    shared.remove_edge(conn_id);
}

async fn run_edge(
    conn_id: u64,
    connection: &quinn::Connection,
    shared: &Arc<Shared>,
    control_tx: mpsc::UnboundedSender<ControlMessage>,
    mut control_rx: mpsc::UnboundedReceiver<ControlMessage>,
) -> Result<(), TunnelError> {
    let (mut send, mut recv) = connection.accept_bi().await?;
    let writer = async move {
        while let Some(msg) = control_rx.recv().await {
            wire::write_json(&mut send, &msg).await?;
        }
        Ok::<(), TunnelError>(())
    };
    let reader = async {
        while let Some(msg) = wire::read_control(&mut recv).await? {
            handle_control(conn_id, msg, shared, &control_tx);
        }
        Ok::<(), TunnelError>(())
    };
    let mut streams = JoinSet::new();
    let accept_streams = async {
        loop {
            let (send, recv) = connection.accept_bi().await?;
            streams.spawn(forward::stream(shared.clone(), conn_id, send, recv));
            while streams.try_join_next().is_some() {}
        }
        #[allow(unreachable_code)]
        Ok::<(), TunnelError>(())
    };
    let datagrams = forward::datagrams(shared, conn_id, connection);
    tokio::select! {
        r = writer => r,
        r = reader => r,
        r = accept_streams => r,
        r = datagrams => r,
    }
}

fn handle_control(
    conn_id: u64,
    msg: ControlMessage,
    shared: &Shared,
    reply: &mpsc::UnboundedSender<ControlMessage>,
) {
    match msg {
        ControlMessage::Hello {
            protocol_version,
            software_version,
        } => {
            tracing::debug!(conn_id, protocol_version, software_version, "edge hello");
            let _ = reply.send(ControlMessage::HelloAck {
                protocol_version: PROTOCOL_VERSION,
                software_version: shared.software_version.clone(),
            });
        }
        ControlMessage::Identify { edge_id } => shared.identify(conn_id, edge_id),
        ControlMessage::TunnelBind {
            tunnel_id,
            direction,
            protocol,
            bind_token,
        } => {
            shared.bind(
                conn_id,
                tunnel_id,
                direction,
                protocol,
                bind_token.as_deref(),
            );
        }
        ControlMessage::TunnelUnbind { tunnel_id } => shared.unbind(conn_id, tunnel_id),
        ControlMessage::Ping => {
            let _ = reply.send(ControlMessage::Pong);
        }
        other => tracing::debug!(conn_id, ?other, "relay ignores an edge-bound message"),
    }
}
