//! The QUIC link of a tunnel end: its control stream (hello/identify/bind with a
//! relay, peer_auth edge to edge), keep-alive pings, reconnection, and the traffic
//! arriving from the other end (TCP streams at the exit, datagrams for UDP).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::{tcp, udp, EdgeIdentity, LinkPlan, Plan, TunnelShared};
use crate::crypto::{peer_token, verify_peer_token};
use crate::quic::{self, ALPN_DIRECT, ALPN_RELAY};
use crate::wire::{self, ControlMessage, PROTOCOL_VERSION};
use crate::TunnelError;

/// Control-stream ping interval.
const PING_EVERY: Duration = Duration::from_secs(15);
/// Longest wait for a QUIC handshake or the first answer on the control stream.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// What arrives from the other end and where it goes.
pub(crate) enum Inbound {
    /// The entry of a TCP tunnel receives no streams.
    Nothing,
    /// The exit of a TCP tunnel connects each stream to this target.
    TcpExit(String),
    /// Either end of a UDP tunnel delivers datagrams to its local socket.
    Udp(Arc<udp::UdpEnd>),
}

/// Everything a link task needs.
pub(crate) struct LinkContext {
    pub plan: Plan,
    pub shared: Arc<TunnelShared>,
    pub identity: Arc<EdgeIdentity>,
    pub inbound: Inbound,
}

/// 1 s, doubling to 30 s; back to 1 s after a session that became ready.
struct Backoff(Duration);

impl Backoff {
    fn next(&mut self) -> Duration {
        let now = self.0;
        self.0 = (self.0 * 2).min(BACKOFF_MAX);
        now
    }
}

/// Relay mode: connect, bind, serve; reconnect with backoff whenever the link drops.
pub(super) async fn relay(ctx: LinkContext) {
    let LinkPlan::Relay {
        relay_addr,
        bind_token,
    } = &ctx.plan.link
    else {
        return;
    };
    reconnecting(&ctx, || relay_session(&ctx, relay_addr, bind_token.clone())).await;
}

/// Direct mode, entry: dial the exit edge, authenticate, serve; reconnect likewise.
pub(super) async fn direct_dial(ctx: LinkContext) {
    let LinkPlan::DirectDial { peer_addr, psk } = &ctx.plan.link else {
        return;
    };
    reconnecting(&ctx, || dial_session(&ctx, peer_addr, psk)).await;
}

async fn reconnecting<F, Fut>(ctx: &LinkContext, mut session: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool, TunnelError>>,
{
    let mut backoff = Backoff(BACKOFF_FIRST);
    loop {
        ctx.shared.set_state("connecting");
        let outcome = session().await;
        ctx.shared.set_link(None);
        match outcome {
            Ok(was_ready) | Err(TunnelError::Session { was_ready, .. }) if was_ready => {
                backoff = Backoff(BACKOFF_FIRST);
            }
            _ => {}
        }
        if let Err(e) = &outcome {
            tracing::info!(tunnel_id = %ctx.plan.tunnel_id, error = %e, "tunnel link lost");
        }
        match &outcome {
            Err(TunnelError::Refused(why)) => ctx.shared.lost("down", &format!("refused: {why}")),
            Err(e) => ctx.shared.lost("connecting", &e.to_string()),
            Ok(_) => ctx.shared.lost("connecting", "the link closed"),
        }
        tokio::time::sleep(backoff.next()).await;
    }
}

async fn connect(
    alpn: &[u8],
    addr: &str,
    server_name: &str,
) -> Result<(quinn::Endpoint, quinn::Connection), TunnelError> {
    let remote = quic::resolve(addr).await?;
    let endpoint = quic::client(alpn, remote)?;
    let connecting = endpoint.connect(remote, server_name)?;
    let connection = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
        .await
        .map_err(|_| TunnelError::Protocol(format!("no QUIC handshake with {addr} in time")))??;
    Ok((endpoint, connection))
}

/// One relay session; `Ok(true)`/`Session{was_ready: true}` if it got ready.
async fn relay_session(
    ctx: &LinkContext,
    relay_addr: &str,
    bind_token: Option<String>,
) -> Result<bool, TunnelError> {
    let (_endpoint, connection) = connect(ALPN_RELAY, relay_addr, "fleetgate-relay").await?;
    let (mut send, recv) = connection.open_bi().await?;
    let bind = ControlMessage::TunnelBind {
        tunnel_id: ctx.plan.tunnel_id,
        direction: ctx.plan.direction,
        protocol: ctx.plan.protocol,
        bind_token,
    };
    let hello = ControlMessage::Hello {
        protocol_version: PROTOCOL_VERSION,
        software_version: ctx.identity.software_version.clone(),
    };
    wire::write_json(&mut send, &hello).await?;
    if let Some(edge_id) = &ctx.identity.edge_id {
        wire::write_json(
            &mut send,
            &ControlMessage::Identify {
                edge_id: edge_id.clone(),
            },
        )
        .await?;
    }
    wire::write_json(&mut send, &bind).await?;
    ctx.shared.set_state("waiting");
    serve(ctx, &connection, send, recv, Role::RelayClient { bind }).await
}

/// One direct session from the entry.
async fn dial_session(ctx: &LinkContext, peer_addr: &str, psk: &str) -> Result<bool, TunnelError> {
    let (_endpoint, connection) = connect(ALPN_DIRECT, peer_addr, "fleetgate-edge").await?;
    let (mut send, mut recv) = connection.open_bi().await?;
    let tunnel_id = ctx.plan.tunnel_id;
    let token = peer_token(psk, &tunnel_id.to_string());
    wire::write_json(&mut send, &ControlMessage::PeerAuth { tunnel_id, token }).await?;
    let answer = tokio::time::timeout(CONNECT_TIMEOUT, wire::read_control(&mut recv))
        .await
        .map_err(|_| TunnelError::Protocol("no peer_auth answer in time".into()))??;
    match answer {
        Some(ControlMessage::PeerAuthOk { .. }) => {}
        Some(ControlMessage::PeerAuthError { reason }) => return Err(TunnelError::Refused(reason)),
        other => {
            return Err(TunnelError::Protocol(format!(
                "expected peer_auth_ok, got {other:?}"
            )))
        }
    }
    become_ready(ctx, &connection);
    serve(ctx, &connection, send, recv, Role::DirectPeer).await
}

/// Direct mode, exit: accept entry connections on `endpoint`; the latest
/// authenticated one is the link.
pub(super) async fn direct_listen(endpoint: quinn::Endpoint, ctx: LinkContext) {
    let ctx = Arc::new(ctx);
    let mut sessions = JoinSet::new();
    loop {
        tokio::select! {
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                sessions.spawn(accepted_session(incoming, ctx.clone()));
            }
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
        }
    }
}

async fn accepted_session(incoming: quinn::Incoming, ctx: Arc<LinkContext>) {
    let outcome = async {
        let connection = incoming.await?;
        let (mut send, mut recv) = tokio::time::timeout(CONNECT_TIMEOUT, connection.accept_bi())
            .await
            .map_err(|_| TunnelError::Protocol("no control stream in time".into()))??;
        let LinkPlan::DirectListen { psk, .. } = &ctx.plan.link else {
            return Ok(false);
        };
        let first = tokio::time::timeout(CONNECT_TIMEOUT, wire::read_control(&mut recv))
            .await
            .map_err(|_| TunnelError::Protocol("no peer_auth in time".into()))??;
        let tunnel_id = ctx.plan.tunnel_id;
        let authentic = match &first {
            Some(ControlMessage::PeerAuth {
                tunnel_id: id,
                token,
            }) => *id == tunnel_id && verify_peer_token(psk, &tunnel_id.to_string(), token),
            _ => false,
        };
        if !authentic {
            let reason = "invalid tunnel id or token".to_owned();
            wire::write_json(&mut send, &ControlMessage::PeerAuthError { reason }).await?;
            let _ = send.finish();
            tokio::time::sleep(Duration::from_millis(100)).await;
            connection.close(quinn::VarInt::from_u32(1), b"peer auth failed");
            let from = connection.remote_address();
            ctx.shared.problem("peer_auth_failed", || {
                format!("a peer at {from} failed authentication (wrong tunnel id or token)")
            });
            return Err(TunnelError::Refused("peer failed authentication".into()));
        }
        wire::write_json(&mut send, &ControlMessage::PeerAuthOk { tunnel_id }).await?;
        become_ready(&ctx, &connection);
        let result = serve(&ctx, &connection, send, recv, Role::DirectPeer).await;
        // Only the current link is cleared; a newer session may have replaced it.
        let is_current = ctx
            .shared
            .current_link()
            .is_some_and(|c| c.stable_id() == connection.stable_id());
        if is_current {
            ctx.shared.set_link(None);
            ctx.shared.waiting("the entry edge disconnected");
        }
        result
    };
    if let Err(e) = outcome.await {
        tracing::info!(error = %e, "direct tunnel session ended");
    }
}

fn become_ready(ctx: &LinkContext, connection: &quinn::Connection) {
    ctx.shared.set_link(Some(connection.clone()));
    ctx.shared.up();
}

/// Which side of the control stream this end is.
enum Role {
    /// Bound to a relay; the bind is resent while the tunnel is down.
    RelayClient {
        bind: ControlMessage,
    },
    DirectPeer,
}

/// Runs an established session until the connection or control stream ends.
async fn serve(
    ctx: &LinkContext,
    connection: &quinn::Connection,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    role: Role,
) -> Result<bool, TunnelError> {
    let (messages_tx, mut messages) = mpsc::channel(16);
    // The reader lives in its own future: a frame half read must not be lost to a
    // select turn.
    let reader = async move {
        while let Some(msg) = wire::read_control(&mut recv).await? {
            if messages_tx.send(msg).await.is_err() {
                break;
            }
        }
        Err::<(), _>(TunnelError::Protocol("control stream closed".into()))
    };
    let mut was_ready = ctx.shared.state() == "ready";
    let control = async {
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.tick().await;
        loop {
            tokio::select! {
                msg = messages.recv() => {
                    let Some(msg) = msg else { return Ok::<(), TunnelError>(()) };
                    if let Some(reply) = on_message(ctx, connection, msg) {
                        wire::write_json(&mut send, &reply).await?;
                    }
                    was_ready |= ctx.shared.state() == "ready";
                }
                _ = ping.tick() => {
                    wire::write_json(&mut send, &ControlMessage::Ping).await?;
                    if let Role::RelayClient { bind } = &role {
                        if ctx.shared.state() == "down" {
                            wire::write_json(&mut send, bind).await?;
                        }
                    }
                }
            }
        }
    };
    let outcome = tokio::select! {
        r = reader => r,
        r = control => r,
        r = receive(ctx, connection) => r,
    };
    let was_ready = was_ready || ctx.shared.state() == "ready";
    connection.close(quinn::VarInt::from_u32(0), b"tunnel link closed");
    match outcome {
        Ok(()) => Ok(was_ready),
        Err(e) => Err(TunnelError::Session {
            was_ready,
            cause: Box::new(e),
        }),
    }
}

/// Applies a control message; returns the reply to send, if any.
fn on_message(
    ctx: &LinkContext,
    connection: &quinn::Connection,
    msg: ControlMessage,
) -> Option<ControlMessage> {
    let tunnel_id = ctx.plan.tunnel_id;
    match msg {
        ControlMessage::TunnelReady { tunnel_id: id } if id == tunnel_id => {
            become_ready(ctx, connection);
        }
        ControlMessage::TunnelWaiting { tunnel_id: id } if id == tunnel_id => {
            ctx.shared.set_link(None);
            ctx.shared
                .waiting("the other end is not bound to the relay");
        }
        ControlMessage::TunnelDown {
            tunnel_id: id,
            reason,
        } if id == tunnel_id => {
            tracing::info!(%tunnel_id, reason, "relay reports the tunnel down");
            ctx.shared.set_link(None);
            ctx.shared
                .lost("down", &format!("the relay refused it: {reason}"));
        }
        ControlMessage::HelloAck {
            protocol_version,
            software_version,
        } => {
            tracing::debug!(protocol_version, software_version, "relay hello_ack");
        }
        ControlMessage::Ping => return Some(ControlMessage::Pong),
        other => tracing::debug!(?other, "tunnel control message ignored"),
    }
    None
}

/// Traffic the other end sends on `connection`, until it closes.
async fn receive(ctx: &LinkContext, connection: &quinn::Connection) -> Result<(), TunnelError> {
    match &ctx.inbound {
        Inbound::Nothing => {
            // The entry never accepts streams; wait for the connection to end.
            Err(connection.closed().await.into())
        }
        Inbound::TcpExit(target) => {
            let mut streams = JoinSet::new();
            loop {
                let (send, recv) = connection.accept_bi().await?;
                streams.spawn(tcp::exit_stream(
                    send,
                    recv,
                    target.clone(),
                    ctx.plan.clone(),
                    ctx.shared.clone(),
                ));
                while streams.try_join_next().is_some() {}
            }
        }
        Inbound::Udp(end) => loop {
            let datagram = connection.read_datagram().await?;
            udp::inbound(end, &ctx.plan, &ctx.shared, &datagram).await;
        },
    }
}
