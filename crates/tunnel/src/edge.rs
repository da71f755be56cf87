//! An edge's tunnel ends ([`EdgeTunnels`]): each configured tunnel runs as a set of
//! tasks owned by the table, so removing or replacing a tunnel stops it, its
//! listener and its connections in flight.
//!
//! The entry end (`direction: "egress"`) listens on `local_addr` and carries what
//! arrives into the tunnel; the exit end (`direction: "ingress"`) delivers what comes
//! out to `local_addr`. The link to the other end is a QUIC connection, to the relay
//! (relay mode, one connection per tunnel, reconnected with a 1 s … 30 s backoff) or
//! between the edges (direct mode: the exit listens on `direct_listen_addr`, the
//! entry dials `peer_addr`).

mod link;
mod stats;
mod tcp;
mod udp;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::crypto::TunnelCipher;
use crate::quic::{self, ServerIdentity, ALPN_DIRECT};
use crate::TunnelError;
use fleetgate_protocol::tunnel::{
    TunnelConfig, TunnelDirection, TunnelMode, TunnelProtocol, TunnelStatus,
};
pub(crate) use stats::TunnelShared;

/// The tunnel ends an edge runs, by tunnel id.
pub struct EdgeTunnels {
    identity: Mutex<EdgeIdentity>,
    running: Mutex<HashMap<String, RunningTunnel>>,
    /// Where the tunnels' events go (category `tunnel`), if anywhere.
    events: Option<mpsc::Sender<Value>>,
}

/// How this edge introduces itself to relays.
#[derive(Debug, Clone)]
pub(crate) struct EdgeIdentity {
    /// The manager's node id, sent in `identify` when known.
    pub edge_id: Option<String>,
    pub software_version: String,
}

struct RunningTunnel {
    config: TunnelConfig,
    shared: Arc<TunnelShared>,
    /// Dropping the set aborts every task of the tunnel.
    tasks: JoinSet<()>,
    /// Direct mode exit: the QUIC listener, closed explicitly so its port is free
    /// once [`EdgeTunnels::stop`] returns.
    listener: Option<quinn::Endpoint>,
}

impl EdgeTunnels {
    /// No tunnels yet; `edge_id` is the manager's node id, if registered.
    pub fn new(edge_id: Option<String>) -> Self {
        EdgeTunnels {
            identity: Mutex::new(EdgeIdentity {
                edge_id,
                software_version: env!("CARGO_PKG_VERSION").to_owned(),
            }),
            running: Mutex::new(HashMap::new()),
            events: None,
        }
    }

    /// Sends the tunnels' events (category `tunnel`: up, lost with why, traffic
    /// problems) to `events`, as a node reports them to its manager.
    pub fn with_events(mut self, events: mpsc::Sender<Value>) -> Self {
        self.events = Some(events);
        self
    }

    /// Sets the manager node id sent to relays by tunnels started from now on.
    pub fn set_edge_id(&self, edge_id: Option<String>) {
        self.identity
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .edge_id = edge_id;
    }

    fn running(&self) -> MutexGuard<'_, HashMap<String, RunningTunnel>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a tunnel end, replacing a running one with the same id. Local
    /// listeners are bound before this returns, so a taken port is reported here.
    /// A disabled tunnel is only remembered.
    pub async fn start(&self, config: TunnelConfig) -> Result<(), TunnelError> {
        let plan = Plan::from_config(&config)?;
        self.stop(&config.id).await;
        let shared = Arc::new(TunnelShared::new(&config, self.events.clone()));
        let mut tasks = JoinSet::new();
        let listener = if config.enabled {
            let identity = Arc::new(
                self.identity
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone(),
            );
            launch(&plan, &config, &shared, &identity, &mut tasks).await?
        } else {
            shared.set_state("disabled");
            None
        };
        let running = RunningTunnel {
            config,
            shared,
            tasks,
            listener,
        };
        self.running().insert(running.config.id.clone(), running);
        Ok(())
    }

    /// Stops a tunnel end and waits until its sockets are released. Whether it
    /// was running.
    pub async fn stop(&self, tunnel_id: &str) -> bool {
        let Some(mut old) = self.running().remove(tunnel_id) else {
            return false;
        };
        old.tasks.shutdown().await;
        if let Some(endpoint) = old.listener {
            endpoint.close(quinn::VarInt::from_u32(0), b"tunnel stopped");
            let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
        }
        true
    }

    /// The configurations of the tunnels held, secrets included.
    pub fn configs(&self) -> Vec<TunnelConfig> {
        let mut list: Vec<TunnelConfig> =
            self.running().values().map(|r| r.config.clone()).collect();
        list.sort_by(|a, b| a.id.cmp(&b.id));
        list
    }

    /// Every tunnel's state and counters, as `stats.tunnels` reports them; the
    /// bitrates are measured since the previous call.
    pub fn statuses(&self) -> Vec<TunnelStatus> {
        let mut list: Vec<TunnelStatus> = self
            .running()
            .values()
            .map(|r| r.shared.status(&r.config))
            .collect();
        list.sort_by(|a, b| a.id.cmp(&b.id));
        list
    }

    /// How many tunnels are ready, of how many are held (the bitrates are left
    /// alone).
    pub fn counts(&self) -> (usize, usize) {
        let running = self.running();
        let ready = running
            .values()
            .filter(|r| r.shared.state() == "ready")
            .count();
        (ready, running.len())
    }

    /// One tunnel's status.
    pub fn status(&self, tunnel_id: &str) -> Option<TunnelStatus> {
        self.running()
            .get(tunnel_id)
            .map(|r| r.shared.status(&r.config))
    }
}

/// A validated tunnel configuration.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub tunnel_id: Uuid,
    pub protocol: TunnelProtocol,
    pub direction: TunnelDirection,
    pub cipher: Arc<TunnelCipher>,
    pub local_addr: String,
    pub link: LinkPlan,
}

/// How an end reaches the other.
#[derive(Debug, Clone)]
pub(crate) enum LinkPlan {
    Relay {
        relay_addr: String,
        bind_token: Option<String>,
    },
    DirectDial {
        peer_addr: String,
        psk: String,
    },
    DirectListen {
        listen_addr: String,
        psk: String,
    },
}

fn required<'a>(value: &'a Option<String>, name: &str) -> Result<&'a str, TunnelError> {
    value
        .as_deref()
        .filter(|v| !v.trim().is_empty())
        .ok_or_else(|| TunnelError::Config(format!("{name} is required")))
}

impl Plan {
    pub fn from_config(c: &TunnelConfig) -> Result<Plan, TunnelError> {
        let tunnel_id = Uuid::parse_str(&c.id)
            .map_err(|_| TunnelError::Config(format!("tunnel id {:?} is not a UUID", c.id)))?;
        let cipher =
            TunnelCipher::from_hex(required(&c.tunnel_encryption_key, "tunnel_encryption_key")?)?;
        if c.local_addr.trim().is_empty() {
            return Err(TunnelError::Config("local_addr is required".into()));
        }
        let link = match (c.mode, c.direction) {
            (TunnelMode::Relay, _) => LinkPlan::Relay {
                relay_addr: required(&c.relay_addr, "relay_addr")?.to_owned(),
                bind_token: c
                    .tunnel_bind_secret
                    .as_deref()
                    .map(|secret| crate::crypto::bind_token(secret, &c.id, c.direction.as_str())),
            },
            (TunnelMode::Direct, TunnelDirection::Egress) => LinkPlan::DirectDial {
                peer_addr: required(&c.peer_addr, "peer_addr")?.to_owned(),
                psk: required(&c.tunnel_psk, "tunnel_psk")?.to_owned(),
            },
            (TunnelMode::Direct, TunnelDirection::Ingress) => LinkPlan::DirectListen {
                listen_addr: required(&c.direct_listen_addr, "direct_listen_addr")?.to_owned(),
                psk: required(&c.tunnel_psk, "tunnel_psk")?.to_owned(),
            },
        };
        Ok(Plan {
            tunnel_id,
            protocol: c.protocol,
            direction: c.direction,
            cipher: Arc::new(cipher),
            local_addr: c.local_addr.clone(),
            link,
        })
    }
}

/// Binds the tunnel's sockets and spawns its tasks; returns the direct-mode
/// listener, if the end has one.
async fn launch(
    plan: &Plan,
    config: &TunnelConfig,
    shared: &Arc<TunnelShared>,
    identity: &Arc<EdgeIdentity>,
    tasks: &mut JoinSet<()>,
) -> Result<Option<quinn::Endpoint>, TunnelError> {
    let inbound = match (plan.protocol, plan.direction) {
        (TunnelProtocol::Tcp, TunnelDirection::Egress) => {
            let listener = tokio::net::TcpListener::bind(&plan.local_addr).await?;
            tasks.spawn(tcp::entry(listener, plan.clone(), shared.clone()));
            link::Inbound::Nothing
        }
        (TunnelProtocol::Tcp, TunnelDirection::Ingress) => {
            link::Inbound::TcpExit(plan.local_addr.clone())
        }
        (TunnelProtocol::Udp, direction) => {
            let end = Arc::new(udp::UdpEnd::bind(&plan.local_addr, direction).await?);
            tasks.spawn(udp::outbound(end.clone(), plan.clone(), shared.clone()));
            link::Inbound::Udp(end)
        }
    };
    let ctx = link::LinkContext {
        plan: plan.clone(),
        shared: shared.clone(),
        identity: identity.clone(),
        inbound,
    };
    match &plan.link {
        LinkPlan::Relay { .. } => {
            tasks.spawn(link::relay(ctx));
        }
        LinkPlan::DirectDial { .. } => {
            tasks.spawn(link::direct_dial(ctx));
        }
        LinkPlan::DirectListen { listen_addr, .. } => {
            let identity = match (&config.tls_cert_pem, &config.tls_key_pem) {
                (Some(cert), Some(key)) => ServerIdentity::from_pem(cert, key)?,
                _ => ServerIdentity::self_signed("fleetgate-edge")?,
            };
            let addr = quic::resolve(listen_addr).await?;
            let endpoint = quic::server(addr, ALPN_DIRECT, identity)?;
            shared.set_state("waiting");
            tasks.spawn(link::direct_listen(endpoint.clone(), ctx));
            return Ok(Some(endpoint));
        }
    }
    Ok(None)
}
