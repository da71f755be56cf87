//! The relay's tables — connected edges, bound tunnels, authorizations — and its
//! counters, behind one lock that is never held across an await.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

use super::{ForwardObserver, RelayStats};
use crate::crypto::tokens_equal;
use crate::events::{emit, Throttle};
use crate::wire::ControlMessage;
use fleetgate_protocol::tunnel::{TunnelDirection, TunnelProtocol};

/// Monotonic counters of the relay.
#[derive(Default)]
pub(crate) struct Counters {
    pub bytes_ingress: AtomicU64,
    pub bytes_egress: AtomicU64,
    pub bytes_forwarded: AtomicU64,
    pub tcp_streams_total: AtomicU64,
    pub tcp_streams_active: AtomicU64,
    pub udp_datagrams: AtomicU64,
    pub udp_dropped: AtomicU64,
    pub connections_total: AtomicU64,
}

/// A tunnel as `list_tunnels` shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RelayTunnelInfo {
    pub tunnel_id: Uuid,
    pub protocol: TunnelProtocol,
    /// `ready` when both ends are bound, `waiting` otherwise.
    pub state: &'static str,
    pub ingress_edge: Option<String>,
    pub egress_edge: Option<String>,
    pub authorized: bool,
    pub bytes_forwarded: u64,
}

/// An edge as `list_edges` shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RelayEdgeInfo {
    pub edge_id: String,
    pub remote_addr: String,
    pub tunnels: usize,
}

struct Edge {
    edge_id: Option<String>,
    connection: quinn::Connection,
    control: mpsc::UnboundedSender<ControlMessage>,
}

impl Edge {
    fn label(&self, conn_id: u64) -> String {
        self.edge_id
            .clone()
            .unwrap_or_else(|| format!("conn-{conn_id}"))
    }
}

/// A bound tunnel: which connection holds each end.
struct Tunnel {
    protocol: TunnelProtocol,
    ingress: Option<u64>,
    egress: Option<u64>,
    /// Set to true to cut every stream of the tunnel.
    closed: watch::Sender<bool>,
    bytes_forwarded: std::sync::Arc<AtomicU64>,
}

impl Tunnel {
    fn end_mut(&mut self, direction: TunnelDirection) -> &mut Option<u64> {
        match direction {
            TunnelDirection::Ingress => &mut self.ingress,
            TunnelDirection::Egress => &mut self.egress,
        }
    }

    fn is_ready(&self) -> bool {
        self.ingress.is_some() && self.egress.is_some()
    }

    /// The connection at the other end from `conn_id`, if `conn_id` holds an end.
    fn peer_of(&self, conn_id: u64) -> Option<u64> {
        match (self.ingress, self.egress) {
            (Some(i), Some(e)) if i == conn_id => Some(e),
            (Some(i), Some(e)) if e == conn_id => Some(i),
            _ => None,
        }
    }
}

struct Authorization {
    ingress_token: String,
    egress_token: String,
}

#[derive(Default)]
struct Tables {
    next_conn: u64,
    edges: HashMap<u64, Edge>,
    tunnels: HashMap<Uuid, Tunnel>,
    authorized: HashMap<Uuid, Authorization>,
    revoked: Revoked,
    peak_tunnels: u64,
    peak_edges: u64,
}

/// Revoked tunnel ids, refused at bind; the oldest are forgotten past
/// [`MAX_REVOKED`]. Forgetting one only makes it an unauthorized id again, which
/// a relay accepts like any new one (open mode) — the edges holding it were told
/// to remove it, and its end-to-end key went with them.
#[derive(Default)]
struct Revoked {
    ids: HashSet<Uuid>,
    order: VecDeque<Uuid>,
}

/// Revoked ids a relay remembers.
const MAX_REVOKED: usize = 10_000;

impl Revoked {
    fn insert(&mut self, id: Uuid) {
        if self.ids.insert(id) {
            self.order.push_back(id);
        }
        while self.order.len() > MAX_REVOKED {
            if let Some(old) = self.order.pop_front() {
                self.ids.remove(&old);
            }
        }
    }

    fn remove(&mut self, id: &Uuid) {
        if self.ids.remove(id) {
            self.order.retain(|o| o != id);
        }
    }

    fn contains(&self, id: &Uuid) -> bool {
        self.ids.contains(id)
    }
}

impl Tables {
    fn send(&self, conn_id: u64, msg: ControlMessage) {
        if let Some(edge) = self.edges.get(&conn_id) {
            let _ = edge.control.send(msg);
        }
    }

    fn note_peaks(&mut self) {
        let active = self.tunnels.values().filter(|t| t.is_ready()).count() as u64;
        self.peak_tunnels = self.peak_tunnels.max(active);
        self.peak_edges = self.peak_edges.max(self.edges.len() as u64);
    }

    fn label(&self, conn_id: Option<u64>) -> Option<String> {
        let id = conn_id?;
        self.edges.get(&id).map(|e| e.label(id))
    }
}

/// What a forwarding task needs to reach the other end of a tunnel.
pub(crate) struct Route {
    pub peer: quinn::Connection,
    pub closed: watch::Receiver<bool>,
    pub bytes_forwarded: std::sync::Arc<AtomicU64>,
}

/// Everything the relay's tasks share.
pub(crate) struct Shared {
    tables: Mutex<Tables>,
    pub counters: Counters,
    pub software_version: String,
    pub observer: Option<ForwardObserver>,
    started: Instant,
    bandwidth_mark: Mutex<(Instant, u64)>,
    events: Option<mpsc::Sender<Value>>,
    /// Refused binds reported, by tunnel and reason.
    refusals: Throttle<(Uuid, &'static str)>,
}

impl Shared {
    pub fn new(
        software_version: String,
        observer: Option<ForwardObserver>,
        events: Option<mpsc::Sender<Value>>,
    ) -> Self {
        Shared {
            tables: Mutex::new(Tables::default()),
            counters: Counters::default(),
            software_version,
            observer,
            started: Instant::now(),
            bandwidth_mark: Mutex::new((Instant::now(), 0)),
            events,
            refusals: Throttle::default(),
        }
    }

    fn tables(&self) -> MutexGuard<'_, Tables> {
        // A panic elsewhere cannot leave the tables half-updated in a way that
        // matters more than stopping the relay would.
        self.tables
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn add_edge(
        &self,
        connection: quinn::Connection,
        control: mpsc::UnboundedSender<ControlMessage>,
    ) -> u64 {
        let mut t = self.tables();
        t.next_conn += 1;
        let id = t.next_conn;
        t.edges.insert(
            id,
            Edge {
                edge_id: None,
                connection,
                control,
            },
        );
        t.note_peaks();
        id
    }

    pub fn identify(&self, conn_id: u64, edge_id: String) {
        if let Some(edge) = self.tables().edges.get_mut(&conn_id) {
            edge.edge_id = Some(edge_id);
        }
    }

    /// Drops an edge and every end it held, telling the other ends.
    pub fn remove_edge(&self, conn_id: u64) {
        let mut t = self.tables();
        t.edges.remove(&conn_id);
        let held: Vec<Uuid> = t
            .tunnels
            .iter()
            .filter(|(_, tun)| tun.ingress == Some(conn_id) || tun.egress == Some(conn_id))
            .map(|(id, _)| *id)
            .collect();
        for id in held {
            release_end(&mut t, id, conn_id, "peer disconnected");
        }
    }

    pub fn bind(
        &self,
        conn_id: u64,
        tunnel_id: Uuid,
        direction: TunnelDirection,
        protocol: TunnelProtocol,
        token: Option<&str>,
    ) {
        let mut t = self.tables();
        if let Err(reason) = check_bind(&t, tunnel_id, direction, token) {
            tracing::info!(%tunnel_id, conn_id, reason, "relay refused a tunnel bind");
            if let Some(count) = self.refusals.hit((tunnel_id, reason)) {
                let from = t.label(Some(conn_id)).unwrap_or_default();
                let end = match direction {
                    TunnelDirection::Ingress => "exit",
                    TunnelDirection::Egress => "entry",
                };
                emit(
                    self.events.as_ref(),
                    "warning",
                    format!("relay refused a bind of tunnel {tunnel_id} ({end} end) from {from}: {reason}"),
                    json!({"tunnel_id": tunnel_id, "edge": from, "error": reason,
                           "error_code": "bind_refused", "occurrences": count}),
                );
            }
            t.send(
                conn_id,
                ControlMessage::TunnelDown {
                    tunnel_id,
                    reason: reason.into(),
                },
            );
            return;
        }
        let tunnel = t.tunnels.entry(tunnel_id).or_insert_with(|| Tunnel {
            protocol,
            ingress: None,
            egress: None,
            closed: watch::channel(false).0,
            bytes_forwarded: Default::default(),
        });
        let other = *tunnel.end_mut(direction.opposite());
        if tunnel.protocol != protocol && other.is_some_and(|o| o != conn_id) {
            let reason = "protocol differs from the other end".to_owned();
            t.send(conn_id, ControlMessage::TunnelDown { tunnel_id, reason });
            return;
        }
        tunnel.protocol = protocol;
        let previous = tunnel.end_mut(direction).replace(conn_id);
        if let Some(old) = previous.filter(|old| *old != conn_id) {
            let reason = "replaced by a newer bind".to_owned();
            t.send(old, ControlMessage::TunnelDown { tunnel_id, reason });
        }
        match other {
            Some(peer) => {
                t.send(conn_id, ControlMessage::TunnelReady { tunnel_id });
                t.send(peer, ControlMessage::TunnelReady { tunnel_id });
            }
            None => t.send(conn_id, ControlMessage::TunnelWaiting { tunnel_id }),
        }
        t.note_peaks();
    }

    pub fn unbind(&self, conn_id: u64, tunnel_id: Uuid) {
        release_end(&mut self.tables(), tunnel_id, conn_id, "peer unbound");
    }

    pub fn authorize(&self, tunnel_id: Uuid, ingress_token: String, egress_token: String) {
        let mut t = self.tables();
        t.revoked.remove(&tunnel_id);
        t.authorized.insert(
            tunnel_id,
            Authorization {
                ingress_token,
                egress_token,
            },
        );
    }

    pub fn revoke(&self, tunnel_id: Uuid) -> bool {
        {
            let mut t = self.tables();
            t.authorized.remove(&tunnel_id);
            t.revoked.insert(tunnel_id);
        }
        self.close_tunnel(tunnel_id, "tunnel revoked")
    }

    pub fn close_tunnel(&self, tunnel_id: Uuid, reason: &str) -> bool {
        let mut t = self.tables();
        let Some(tunnel) = t.tunnels.remove(&tunnel_id) else {
            return false;
        };
        tunnel.closed.send_replace(true);
        for end in [tunnel.ingress, tunnel.egress].into_iter().flatten() {
            t.send(
                end,
                ControlMessage::TunnelDown {
                    tunnel_id,
                    reason: reason.into(),
                },
            );
        }
        true
    }

    pub fn disconnect_edge(&self, edge_id: &str) -> bool {
        let t = self.tables();
        let mut any = false;
        for (id, edge) in &t.edges {
            if edge.label(*id) == edge_id {
                edge.connection
                    .close(quinn::VarInt::from_u32(0), b"disconnected by manager");
                any = true;
            }
        }
        any
    }

    /// Where traffic of `tunnel_id` arriving on `conn_id` goes, if both ends are bound.
    pub fn route(&self, tunnel_id: Uuid, conn_id: u64) -> Option<Route> {
        let t = self.tables();
        let tunnel = t.tunnels.get(&tunnel_id)?;
        let peer = tunnel.peer_of(conn_id)?;
        Some(Route {
            peer: t.edges.get(&peer)?.connection.clone(),
            closed: tunnel.closed.subscribe(),
            bytes_forwarded: tunnel.bytes_forwarded.clone(),
        })
    }

    pub fn list_tunnels(&self) -> Vec<RelayTunnelInfo> {
        let t = self.tables();
        let mut list: Vec<RelayTunnelInfo> = t
            .tunnels
            .iter()
            .map(|(id, tun)| RelayTunnelInfo {
                tunnel_id: *id,
                protocol: tun.protocol,
                state: if tun.is_ready() { "ready" } else { "waiting" },
                ingress_edge: t.label(tun.ingress),
                egress_edge: t.label(tun.egress),
                authorized: t.authorized.contains_key(id),
                bytes_forwarded: tun.bytes_forwarded.load(Ordering::Relaxed),
            })
            .collect();
        list.sort_by_key(|i| i.tunnel_id);
        list
    }

    pub fn list_edges(&self) -> Vec<RelayEdgeInfo> {
        let t = self.tables();
        let mut list: Vec<RelayEdgeInfo> = t
            .edges
            .iter()
            .map(|(id, edge)| RelayEdgeInfo {
                edge_id: edge.label(*id),
                remote_addr: edge.connection.remote_address().to_string(),
                tunnels: t
                    .tunnels
                    .values()
                    .filter(|tun| tun.ingress == Some(*id) || tun.egress == Some(*id))
                    .count(),
            })
            .collect();
        list.sort_by(|a, b| a.edge_id.cmp(&b.edge_id));
        list
    }

    pub fn stats(&self) -> RelayStats {
        let tunnels = self.list_tunnels();
        let edges = self.list_edges();
        let (peak_tunnels, peak_edges) = {
            let t = self.tables();
            (t.peak_tunnels, t.peak_edges)
        };
        let c = &self.counters;
        let forwarded = c.bytes_forwarded.load(Ordering::Relaxed);
        RelayStats {
            connected_edges: edges.len() as u64,
            active_tunnels: tunnels.iter().filter(|t| t.state == "ready").count() as u64,
            total_tunnels: tunnels.len() as u64,
            tunnels,
            edges,
            total_bytes_ingress: c.bytes_ingress.load(Ordering::Relaxed),
            total_bytes_egress: c.bytes_egress.load(Ordering::Relaxed),
            total_bytes_forwarded: forwarded,
            total_bandwidth_bps: self.bandwidth(forwarded),
            total_tcp_streams: c.tcp_streams_total.load(Ordering::Relaxed),
            active_tcp_streams: c.tcp_streams_active.load(Ordering::Relaxed),
            total_udp_datagrams: c.udp_datagrams.load(Ordering::Relaxed),
            udp_datagrams_dropped: c.udp_dropped.load(Ordering::Relaxed),
            peak_tunnels,
            peak_edges,
            connections_total: c.connections_total.load(Ordering::Relaxed),
            uptime_secs: self.started.elapsed().as_secs(),
        }
    }

    /// Bits per second forwarded since the previous call.
    fn bandwidth(&self, forwarded: u64) -> u64 {
        let mut mark = self
            .bandwidth_mark
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let secs = now.duration_since(mark.0).as_secs_f64();
        let bytes = forwarded.saturating_sub(mark.1);
        *mark = (now, forwarded);
        if secs <= 0.0 {
            0
        } else {
            (bytes as f64 * 8.0 / secs) as u64
        }
    }
}

/// Why a bind is refused, if it is.
fn check_bind(
    t: &Tables,
    tunnel_id: Uuid,
    direction: TunnelDirection,
    token: Option<&str>,
) -> Result<(), &'static str> {
    if t.revoked.contains(&tunnel_id) {
        return Err("tunnel revoked");
    }
    let Some(auth) = t.authorized.get(&tunnel_id) else {
        return Ok(());
    };
    let expected = match direction {
        TunnelDirection::Ingress => &auth.ingress_token,
        TunnelDirection::Egress => &auth.egress_token,
    };
    match token {
        Some(token) if tokens_equal(expected, token) => Ok(()),
        Some(_) => Err("invalid bind token"),
        None => Err("bind token required"),
    }
}

/// Frees the ends of `tunnel_id` held by `conn_id`; tells the remaining end, and
/// drops the tunnel (cutting its streams) when no end is left.
fn release_end(t: &mut Tables, tunnel_id: Uuid, conn_id: u64, reason: &str) {
    let Some(tunnel) = t.tunnels.get_mut(&tunnel_id) else {
        return;
    };
    for end in [&mut tunnel.ingress, &mut tunnel.egress] {
        if *end == Some(conn_id) {
            *end = None;
        }
    }
    let remaining = tunnel.ingress.or(tunnel.egress);
    match remaining {
        Some(other) => {
            t.send(
                other,
                ControlMessage::TunnelDown {
                    tunnel_id,
                    reason: reason.into(),
                },
            );
        }
        None => {
            if let Some(gone) = t.tunnels.remove(&tunnel_id) {
                gone.closed.send_replace(true);
            }
        }
    }
}
