//! `fleetgate relay` as a node of a Fleetgate manager: the relay's reports
//! (`health` every 15 s, `stats` every second, in the node protocol's relay shapes)
//! and its commands (`authorize_tunnel`, `revoke_tunnel`, `close_tunnel`,
//! `disconnect_edge`, `list_tunnels`, `list_edges`, `get_config`), over the same
//! `/ws/node` connection an edge uses.

use std::net::SocketAddr;
use std::time::Instant;

use fleetgate_edge::node_link::{command_ack, command_parts};
use fleetgate_edge::NodeRole;
use fleetgate_protocol::sync;
use fleetgate_tunnel::Relay;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use uuid::Uuid;

/// A running relay and what it reports.
pub struct RelayNode {
    pub relay: Relay,
    quic_addr: SocketAddr,
    manager_url: Option<String>,
    started: Instant,
    /// The relay's events (binds it refused), sent while connected.
    events: tokio::sync::Mutex<mpsc::Receiver<Value>>,
}

type CommandResult = Result<Option<Value>, (String, Option<&'static str>)>;

fn refused(message: impl Into<String>) -> (String, Option<&'static str>) {
    (message.into(), None)
}

/// A non-empty string parameter, or "Missing <key>".
fn text<'a>(action: &'a Value, key: &str) -> Result<&'a str, (String, Option<&'static str>)> {
    action
        .get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| refused(format!("Missing {key}")))
}

fn tunnel_id(action: &Value) -> Result<Uuid, (String, Option<&'static str>)> {
    let id = text(action, "tunnel_id")?;
    Uuid::parse_str(id).map_err(|_| refused(format!("Invalid tunnel_id: {id}")))
}

impl RelayNode {
    /// `events` is the receiving end of the relay's
    /// [`RelayConfig::events`](fleetgate_tunnel::RelayConfig::events).
    pub fn new(
        relay: Relay,
        manager_url: Option<String>,
        events: mpsc::Receiver<Value>,
    ) -> anyhow::Result<Self> {
        let quic_addr = relay.local_addr()?;
        Ok(RelayNode {
            relay,
            quic_addr,
            manager_url,
            started: Instant::now(),
            events: tokio::sync::Mutex::new(events),
        })
    }

    /// Carries out one relay command.
    pub fn execute(&self, kind: &str, action: &Value) -> CommandResult {
        match kind {
            "authorize_tunnel" => {
                let id = tunnel_id(action)?;
                let ingress = text(action, "ingress_token")?.to_owned();
                let egress = text(action, "egress_token")?.to_owned();
                self.relay.authorize_tunnel(id, ingress, egress);
                Ok(None)
            }
            "revoke_tunnel" => {
                self.relay.revoke_tunnel(tunnel_id(action)?);
                Ok(None)
            }
            "close_tunnel" => {
                let id = tunnel_id(action)?;
                if self.relay.close_tunnel(id) {
                    Ok(None)
                } else {
                    Err(refused(format!("Tunnel not found: {id}")))
                }
            }
            "disconnect_edge" => {
                let edge = text(action, "edge_id")?;
                if self.relay.disconnect_edge(edge) {
                    Ok(None)
                } else {
                    Err(refused(format!("Edge not connected: {edge}")))
                }
            }
            "list_tunnels" => Ok(Some(json!(self.relay.list_tunnels()))),
            "list_edges" => Ok(Some(json!(self.relay.list_edges()))),
            other => Err(refused(format!("Unknown command: {other}"))),
        }
    }

    /// What `get_config` answers: the relay's settings, secrets redacted.
    fn config_document(&self) -> Value {
        json!({
            "version": 1,
            "quic_addr": self.quic_addr.to_string(),
            "manager": {
                "enabled": self.manager_url.is_some(),
                "url": self.manager_url,
                "node_secret": "***REDACTED***",
            },
        })
    }
}

#[async_trait::async_trait]
impl NodeRole for RelayNode {
    async fn health(&self) -> Value {
        let s = self.relay.stats();
        json!({
            "status": "ok",
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_secs": self.started.elapsed().as_secs(),
            "connected_edges": s.connected_edges,
            "active_tunnels": s.active_tunnels,
            "total_tunnels": s.total_tunnels,
            "total_bytes_forwarded": s.total_bytes_forwarded,
            "peak_tunnels": s.peak_tunnels,
            "peak_edges": s.peak_edges,
            "connections_total": s.connections_total,
            "api_addr": null,
            "quic_addr": self.quic_addr.to_string(),
        })
    }

    async fn stats(&self) -> Value {
        json!(self.relay.stats())
    }

    async fn frame(&self, kind: &str, payload: Value) -> Option<String> {
        if kind != "command" {
            return None;
        }
        let (id, action) = command_parts(&payload);
        if action == "get_config" {
            return Some(sync::envelope("config_response", &self.config_document()));
        }
        let params = payload.get("action").unwrap_or(&Value::Null);
        let result = self.execute(&action, params);
        if let Err((e, _)) = &result {
            tracing::info!(command = %action, error = %e, "refused a manager command");
        }
        Some(command_ack(&id, result))
    }

    fn events(&self) -> Option<&tokio::sync::Mutex<mpsc::Receiver<Value>>> {
        Some(&self.events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetgate_tunnel::RelayConfig;

    fn node() -> RelayNode {
        let relay =
            Relay::bind(RelayConfig::new("127.0.0.1:0".parse().expect("addr"))).expect("relay");
        RelayNode::new(relay, None, mpsc::channel(1).1).expect("node")
    }

    async fn ack(node: &RelayNode, action: Value) -> Value {
        let payload = json!({"command_id": "c1", "action": action});
        let frame = node.frame("command", payload).await.expect("a reply");
        serde_json::from_str(&frame).expect("json")
    }

    #[tokio::test]
    async fn relay_commands_answer_in_the_protocol_shapes() {
        let node = node();
        let id = Uuid::new_v4().to_string();
        let a = ack(
            &node,
            json!({"type": "authorize_tunnel", "tunnel_id": id,
            "ingress_token": "i", "egress_token": "e"}),
        )
        .await;
        assert_eq!(a["type"], "command_ack");
        assert_eq!(a["payload"]["success"], true);
        assert_eq!(a["payload"]["command_id"], "c1");

        let a = ack(&node, json!({"type": "authorize_tunnel", "tunnel_id": id})).await;
        assert_eq!(a["payload"]["success"], false);
        assert_eq!(a["payload"]["error"], "Missing ingress_token");

        let a = ack(&node, json!({"type": "list_tunnels"})).await;
        assert_eq!(a["payload"]["data"], json!([]));
        let a = ack(&node, json!({"type": "list_edges"})).await;
        assert_eq!(a["payload"]["data"], json!([]));

        let a = ack(&node, json!({"type": "revoke_tunnel", "tunnel_id": id})).await;
        assert_eq!(a["payload"]["success"], true);
        let a = ack(&node, json!({"type": "close_tunnel", "tunnel_id": id})).await;
        assert_eq!(a["payload"]["error"], format!("Tunnel not found: {id}"));
        let a = ack(&node, json!({"type": "disconnect_edge"})).await;
        assert_eq!(a["payload"]["error"], "Missing edge_id");
        let a = ack(&node, json!({"type": "frobnicate"})).await;
        assert_eq!(a["payload"]["error"], "Unknown command: frobnicate");

        let frame = node
            .frame(
                "command",
                json!({"command_id": "c2", "action": {"type": "get_config"}}),
            )
            .await
            .expect("reply");
        let doc: Value = serde_json::from_str(&frame).expect("json");
        assert_eq!(doc["type"], "config_response");
        assert!(doc["payload"]["quic_addr"].as_str().is_some());
    }

    #[tokio::test]
    async fn health_and_stats_carry_the_relay_fields() {
        let node = node();
        let health = node.health().await;
        for key in [
            "connected_edges",
            "active_tunnels",
            "total_tunnels",
            "total_bytes_forwarded",
            "peak_tunnels",
            "peak_edges",
            "connections_total",
            "api_addr",
            "quic_addr",
        ] {
            assert!(health.get(key).is_some(), "health lacks {key}");
        }
        let stats = node.stats().await;
        for key in [
            "tunnels",
            "edges",
            "connected_edges",
            "active_tunnels",
            "total_tunnels",
            "total_bytes_ingress",
            "total_bytes_egress",
            "total_bytes_forwarded",
            "total_bandwidth_bps",
            "total_tcp_streams",
            "active_tcp_streams",
            "total_udp_datagrams",
            "peak_tunnels",
            "peak_edges",
            "connections_total",
            "uptime_secs",
        ] {
            assert!(stats.get(key).is_some(), "stats lacks {key}");
        }
    }
}
