//! Tunnels reach their nodes as commands of the node protocol: the relay (relay
//! mode) gets `authorize_tunnel` with the two bind tokens first, then the entry
//! edge (the manager's ingress node, which listens) and the exit edge (the egress
//! node, which forwards) get `create_tunnel` with their side's configuration.
//! Each leg's outcome is stored (`pending`, `pushed`, `failed` with the node's
//! error). Legs not pushed are tried again every [`RETRY_EVERY`] by the replica
//! holding their node, and a node's legs are pushed again whenever it connects.
//! Deleting (or disabling) a tunnel sends `delete_tunnel` to both edges and
//! `revoke_tunnel` to the relay.
//!
//! Naming follows the node protocol: the manager's ingress node is told
//! `direction: "egress"` (traffic leaves it into the tunnel) and its egress node
//! `direction: "ingress"`.

use std::time::Duration;

use fleetgate_store::{Leg, LegState, PageRequest, TunnelRecord};
use hmac::{Hmac, Mac};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::nodes::replicas::RemoteFailure;
use crate::AppState;

/// Legs not pushed are tried again this often.
pub const RETRY_EVERY: Duration = Duration::from_secs(30);
/// How long one push waits for the node's answer.
const PUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// A tunnel's secrets, each 32 random bytes as 64 lowercase hex characters.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TunnelSecrets {
    /// The end-to-end ChaCha20-Poly1305 key (both modes).
    pub encryption_key: String,
    /// Keys the bind tokens the relay checks (both modes).
    pub bind_secret: String,
    /// Authenticates the edges to each other (direct mode).
    pub psk: Option<String>,
}

fn random_hex() -> String {
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

impl TunnelSecrets {
    pub fn generate(direct: bool) -> Self {
        Self {
            encryption_key: random_hex(),
            bind_secret: random_hex(),
            psk: direct.then(random_hex),
        }
    }

    pub fn seal(&self, state: &AppState) -> String {
        state
            .secrets
            .seal(&serde_json::to_vec(self).unwrap_or_default())
    }

    pub fn open(state: &AppState, sealed: &str) -> Result<Self, String> {
        let plain = state.secrets.open(sealed)?;
        serde_json::from_slice(&plain).map_err(|e| format!("tunnel secrets: {e}"))
    }
}

/// The bind token of one side: lowercase hex HMAC-SHA256 keyed by the bind secret's
/// text over `"<tunnel_id>:<direction>"` (`direction` in the edge's words).
pub fn bind_token(bind_secret: &str, tunnel_id: &str, direction: &str) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(bind_secret.as_bytes())
        .expect("HMAC takes any key length");
    mac.update(format!("{tunnel_id}:{direction}").as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// The port of a `host:port` address.
pub use fleetgate_store::port_of;

/// The `create_tunnel` configuration of one edge of the tunnel.
pub fn edge_tunnel(t: &TunnelRecord, s: &TunnelSecrets, leg: Leg) -> Value {
    let entry = leg == Leg::Ingress;
    let mut c = json!({
        "id": t.id, "name": t.name, "enabled": true, "protocol": t.protocol, "mode": t.mode,
        "direction": if entry { "egress" } else { "ingress" },
        "local_addr": if entry { format!("0.0.0.0:{}", t.ingress_listen_port) } else { t.egress_forward_addr.clone() },
        "tunnel_encryption_key": s.encryption_key,
        "tunnel_bind_secret": s.bind_secret,
    });
    if t.mode == "relay" {
        c["relay_addr"] = json!(t.relay_addr);
    } else {
        c["tunnel_psk"] = json!(s.psk);
        let peer = t.egress_peer_addr.clone().unwrap_or_default();
        if entry {
            c["peer_addr"] = json!(peer);
        } else {
            c["direct_listen_addr"] = json!(format!("0.0.0.0:{}", port_of(&peer).unwrap_or(0)));
        }
    }
    c
}

/// The node a leg goes to.
fn node_of(t: &TunnelRecord, leg: Leg) -> Option<&str> {
    match leg {
        Leg::Ingress => Some(&t.ingress_node_id),
        Leg::Egress => Some(&t.egress_node_id),
        Leg::Relay => t.relay_node_id.as_deref(),
    }
}

fn legs(t: &TunnelRecord) -> Vec<(Leg, &LegState)> {
    let mut out = Vec::new();
    if let Some(r) = &t.relay {
        out.push((Leg::Relay, r));
    }
    out.push((Leg::Ingress, &t.ingress));
    out.push((Leg::Egress, &t.egress));
    out
}

fn failure_text(f: &RemoteFailure) -> String {
    match f {
        RemoteFailure::Node(crate::nodes::CommandFailure::NotConnected) => {
            "the node is not connected".into()
        }
        RemoteFailure::Node(crate::nodes::CommandFailure::Timeout) => {
            "the node did not answer within 10 s".into()
        }
        RemoteFailure::Node(crate::nodes::CommandFailure::Refused(ack)) => ack
            .error
            .clone()
            .unwrap_or_else(|| "refused without a reason".into()),
        RemoteFailure::Node(crate::nodes::CommandFailure::Disconnected) => {
            "the node disconnected before answering".into()
        }
        other => other.to_string(),
    }
}

/// Sends one leg's configuration and records the outcome.
async fn push_leg(state: &AppState, t: &TunnelRecord, s: &TunnelSecrets, leg: Leg) -> bool {
    let Some(node) = node_of(t, leg) else {
        return true;
    };
    let action = match leg {
        Leg::Relay => json!({"type": "authorize_tunnel", "tunnel_id": t.id,
            "ingress_token": bind_token(&s.bind_secret, &t.id, "ingress"),
            "egress_token": bind_token(&s.bind_secret, &t.id, "egress")}),
        _ => json!({"type": "create_tunnel", "tunnel": edge_tunnel(t, s, leg)}),
    };
    let outcome = state.command_anywhere(node, &action, PUSH_TIMEOUT).await;
    let leg_state = match &outcome {
        Ok(_) => LegState {
            status: "pushed".into(),
            error: None,
        },
        Err(f) => LegState {
            status: "failed".into(),
            error: Some(failure_text(f)),
        },
    };
    if let Err(e) = state.store.set_tunnel_leg(&t.id, leg, &leg_state).await {
        tracing::warn!(tunnel = %t.id, error = %e, "could not record a tunnel leg");
    }
    outcome.is_ok()
}

/// Pushes the legs of `t` that `which` selects, the relay first (edges bind to
/// it as soon as they have their configuration). Nothing for a disabled tunnel.
pub async fn push(state: &AppState, t: &TunnelRecord, which: impl Fn(Leg, &LegState) -> bool) {
    if !t.enabled {
        return;
    }
    let secrets = match TunnelSecrets::open(state, &t.secrets_sealed) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(tunnel = %t.id, error = %e, "cannot open the tunnel's secrets");
            return;
        }
    };
    for (leg, st) in legs(t) {
        if which(leg, st) {
            push_leg(state, t, &secrets, leg).await;
        }
    }
}

/// Removes the tunnel from its nodes (deleted or disabled); answers are only logged.
pub async fn withdraw(state: &AppState, t: &TunnelRecord) {
    for (leg, _) in legs(t) {
        let Some(node) = node_of(t, leg) else {
            continue;
        };
        let action = match leg {
            Leg::Relay => json!({"type": "revoke_tunnel", "tunnel_id": t.id}),
            _ => json!({"type": "delete_tunnel", "tunnel_id": t.id}),
        };
        if let Err(f) = state.command_anywhere(node, &action, PUSH_TIMEOUT).await {
            tracing::info!(tunnel = %t.id, node, reason = %failure_text(&f), "could not withdraw the tunnel from a node");
        }
    }
}

/// The nodes that take part in some tunnel, as last read (every [`RETRY_EVERY`],
/// and after each change made here), so that a node connecting costs a store read
/// only when it has tunnels.
#[derive(Debug, Default)]
pub struct TunnelNodes(std::sync::RwLock<std::collections::HashSet<String>>);

impl TunnelNodes {
    pub fn contains(&self, id: &str) -> bool {
        self.0.read().is_ok_and(|s| s.contains(id))
    }

    pub fn add(&self, t: &TunnelRecord) {
        if let Ok(mut s) = self.0.write() {
            s.extend(t.node_ids().cloned());
        }
    }

    fn replace(&self, all: std::collections::HashSet<String>) {
        if let Ok(mut s) = self.0.write() {
            *s = all;
        }
    }
}

/// A node connected here: its legs are pushed again (it may have lost them).
pub fn node_connected(state: &AppState, node_id: &str) {
    if !state.tunnel_nodes.contains(node_id) {
        return;
    }
    let state = state.clone();
    let node_id = node_id.to_string();
    tokio::spawn(async move {
        let tunnels = match state.store.tunnels_of_node(&node_id).await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(node = %node_id, error = %e, "could not read the node's tunnels");
                return;
            }
        };
        for t in tunnels {
            push(&state, &t, |leg, _| {
                node_of(&t, leg) == Some(node_id.as_str())
            })
            .await;
        }
    });
}

/// Tries again, every [`RETRY_EVERY`], the legs not pushed whose node is
/// connected to this replica, until `shutdown`.
pub fn spawn_retry(state: AppState, mut shutdown: watch::Receiver<bool>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(RETRY_EVERY);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.wait_for(|d| *d) => return,
            }
            let mut offset = 0;
            let mut involved = std::collections::HashSet::new();
            loop {
                let page = PageRequest { limit: 200, offset };
                let Ok(p) = state.store.list_tunnels(page).await else {
                    break;
                };
                for t in &p.items {
                    involved.extend(t.node_ids().cloned());
                    push(&state, t, |leg, st| {
                        st.status != "pushed"
                            && node_of(t, leg).is_some_and(|n| state.nodes.session(n).is_some())
                    })
                    .await;
                }
                offset += 200;
                if offset >= p.total {
                    state.tunnel_nodes.replace(std::mem::take(&mut involved));
                    break;
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_tokens_are_keyed_by_the_secret_text() {
        // HMAC-SHA256(key = "key", "The quick brown fox jumps over the lazy dog"),
        // the published test vector, through the same construction.
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"key").expect("key");
        mac.update(b"The quick brown fox jumps over the lazy dog");
        assert_eq!(
            hex::encode(mac.finalize().into_bytes()),
            "f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"
        );
        let secret = "ab".repeat(32);
        let t = bind_token(&secret, "t1", "ingress");
        assert_eq!(t.len(), 64);
        assert!(t
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_ne!(t, bind_token(&secret, "t1", "egress"));
        assert_ne!(t, bind_token(&"cd".repeat(32), "t1", "ingress"));
    }

    #[test]
    fn ports_of_addresses() {
        assert_eq!(port_of("198.51.100.7:4444"), Some(4444));
        assert_eq!(port_of("[2001:db8::1]:443"), Some(443));
        assert_eq!(port_of("host:0"), None);
        assert_eq!(port_of("host"), None);
    }
}
