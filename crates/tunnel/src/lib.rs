//! Fleetgate's tunnel data plane, compatible with Bilbycast's tunnel protocol v1.
//!
//! A tunnel carries one TCP port or one UDP flow from an *entry* edge (edge
//! direction `egress`, listening locally) to an *exit* edge (direction `ingress`,
//! forwarding to a local target), either through a [`relay::Relay`] that pairs the
//! two ends and forwards ciphertext, or edge to edge ("direct" mode). Payloads are
//! sealed end to end with ChaCha20-Poly1305 ([`crypto`]); the bytes on the wire are
//! in [`wire`]; QUIC endpoints are built in [`quic`]; the edge side is [`edge`].

pub mod crypto;
pub mod edge;
mod events;
pub mod quic;
pub mod relay;
pub mod wire;

pub use edge::EdgeTunnels;
pub use fleetgate_protocol::tunnel::{
    TunnelConfig, TunnelDirection, TunnelMode, TunnelProtocol, TunnelStats, TunnelStatus,
};
pub use relay::{Relay, RelayConfig, RelayStats};

/// What goes wrong in the tunnel data plane.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// A tunnel configuration that cannot run, with the reason.
    #[error("invalid tunnel configuration: {0}")]
    Config(String),
    /// The peer broke the protocol.
    #[error("tunnel protocol error: {0}")]
    Protocol(String),
    /// A frame or chunk longer than 1 MiB.
    #[error("frame of {0} bytes exceeds the 1 MiB limit")]
    FrameTooLarge(usize),
    /// Sealing failed, or a sealed unit did not authenticate.
    #[error("sealed unit failed to authenticate")]
    Crypto,
    /// The peer or relay refused the tunnel.
    #[error("tunnel refused: {0}")]
    Refused(String),
    /// A link session that ended; whether it had become ready first.
    #[error("{cause}")]
    Session {
        was_ready: bool,
        cause: Box<TunnelError>,
    },
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("QUIC connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    #[error("QUIC connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("QUIC stream write: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("QUIC stream read: {0}")]
    Read(#[from] quinn::ReadError),
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
}
