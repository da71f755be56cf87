//! Tunnels as the manager hands them to edges (`create_tunnel`) and as edges report
//! them back in `stats` (`tunnels`): the Bilbycast v1 shapes, field for field.
//!
//! Naming follows the edge, which is inverted relative to the manager's model: the
//! manager's *ingress node* (where traffic enters the tunnel) gets
//! `direction: "egress"` and listens on `local_addr`; the manager's *egress node*
//! gets `direction: "ingress"` and forwards what comes out to `local_addr`.

use serde::{Deserialize, Serialize};

/// Transport a tunnel carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TunnelProtocol {
    Tcp,
    Udp,
}

/// How the two edges of a tunnel meet: through a relay, or edge to edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TunnelMode {
    Relay,
    Direct,
}

/// Which end of the tunnel an edge is, in the edge's (and relay's) words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TunnelDirection {
    /// The exit: traffic leaves the tunnel here and goes to `local_addr`.
    Ingress,
    /// The entry: traffic enters the tunnel here, accepted on `local_addr`.
    Egress,
}

impl TunnelDirection {
    /// The wire word, as used in bind tokens and `tunnel_bind`.
    pub fn as_str(self) -> &'static str {
        match self {
            TunnelDirection::Ingress => "ingress",
            TunnelDirection::Egress => "egress",
        }
    }

    /// The other end.
    pub fn opposite(self) -> Self {
        match self {
            TunnelDirection::Ingress => TunnelDirection::Egress,
            TunnelDirection::Egress => TunnelDirection::Ingress,
        }
    }
}

fn enabled_default() -> bool {
    true
}

/// One end of a tunnel, as carried by `create_tunnel {tunnel}` and kept in an
/// edge's configuration. The secret fields are absent from what an edge reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelConfig {
    /// The tunnel's UUID (the manager's `tunnels.id`), the same at both ends.
    pub id: String,
    pub name: String,
    #[serde(default = "enabled_default")]
    pub enabled: bool,
    pub protocol: TunnelProtocol,
    pub mode: TunnelMode,
    pub direction: TunnelDirection,
    /// Entry: the address to listen on. Exit: the `host:port` to forward to.
    pub local_addr: String,
    /// Relay mode: the relay's QUIC address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_addr: Option<String>,
    /// Direct mode, entry: the exit edge's QUIC address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_addr: Option<String>,
    /// Direct mode, exit: where to accept the entry's QUIC connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_listen_addr: Option<String>,
    /// 64 hex chars: the 32-byte ChaCha20-Poly1305 key, both directions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel_encryption_key: Option<String>,
    /// 64 hex chars keying the relay bind token (used as text, not decoded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel_bind_secret: Option<String>,
    /// Direct mode: 64 hex chars keying the peer authentication token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel_psk: Option<String>,
    /// Direct mode, exit: the listener's certificate (self-signed when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert_pem: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key_pem: Option<String>,
}

impl TunnelConfig {
    /// The same tunnel with every secret removed, as an edge reports its config.
    pub fn without_secrets(&self) -> TunnelConfig {
        TunnelConfig {
            tunnel_encryption_key: None,
            tunnel_bind_secret: None,
            tunnel_psk: None,
            tls_cert_pem: None,
            tls_key_pem: None,
            ..self.clone()
        }
    }
}

/// Counters of one tunnel end, as in `stats.tunnels[].stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelStats {
    pub packets_sent: u64,
    pub packets_received: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub bitrate_in_bps: u64,
    pub bitrate_out_bps: u64,
    pub send_errors: u64,
    pub connections_total: u64,
    pub connections_active: u64,
}

/// One tunnel end's state, as in `stats.tunnels[]`. The manager counts
/// `state == "ready"` as active.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelStatus {
    pub id: String,
    pub name: String,
    pub protocol: TunnelProtocol,
    pub mode: TunnelMode,
    pub direction: TunnelDirection,
    pub local_addr: String,
    pub state: String,
    pub stats: TunnelStats,
    /// Why the tunnel is not up, or the latest problem with its traffic (a target
    /// refusing, say); cleared when it comes up. A Fleetgate addition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_tunnel_entry_config_parses_and_strips() {
        let json = r#"{"id":"6f0a3a4e-0d3b-4d4c-8a53-0c8f4f8b1a11","name":"cam","enabled":true,
            "protocol":"tcp","mode":"relay","direction":"egress","local_addr":"0.0.0.0:9000",
            "tunnel_encryption_key":"aa","tunnel_bind_secret":"bb","relay_addr":"r:4433"}"#;
        let t: TunnelConfig = serde_json::from_str(json).expect("parses");
        assert_eq!(t.direction, TunnelDirection::Egress);
        assert_eq!(t.relay_addr.as_deref(), Some("r:4433"));
        let shown = serde_json::to_value(t.without_secrets()).expect("serializes");
        assert!(shown.get("tunnel_encryption_key").is_none());
        assert!(shown.get("tunnel_bind_secret").is_none());
        assert_eq!(shown["mode"], "relay");
    }
}
