//! One node connection on `/ws/node`: the first text frame must authenticate
//! within 10 s (registration token → `register_ack` with the node id and its new
//! secret; node id + secret → `auth_ok`; anything else → `auth_error`, then the
//! socket closes). Afterwards the node's frames are read until it goes away: stats
//! and health are kept as the latest, events are stored as events, acks and
//! configuration answers wake the commands waiting for them. Unknown message types
//! and malformed frames are dropped; text frames over 5 MiB are dropped too.
//!
//! The manager pings every 15 s at the WebSocket level; a node that sends nothing
//! (not even a pong) for 45 s is closed. A newer connection of the same node
//! replaces this one.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::response::Response;
use bytes::Bytes;
use fleetgate_core::events::{NewEvent, Severity};
use fleetgate_core::time::now_ms;
use fleetgate_core::user::Role;
use fleetgate_protocol::node::{self, AuthRequest, DeviceType, NodeMessage};
use fleetgate_protocol::sync::EncodedSnapshot;
use fleetgate_store::{Actor, NodeRecord, StoreError};
use serde_json::json;

use super::lockout::Lockout;
use super::NodeSession;
use crate::auth::{hash_token, random_token, same_secret};
use crate::AppState;

/// The first frame must arrive within this time.
pub const AUTH_TIMEOUT: Duration = Duration::from_secs(10);
/// WebSocket pings are sent this often.
const PING_EVERY: Duration = Duration::from_secs(15);
/// A node silent for this long is gone.
const IDLE_LIMIT: Duration = Duration::from_secs(45);
/// The socket refuses messages above this (and closes); between
/// [`node::MAX_MESSAGE_BYTES`] and this, text frames are dropped and the node stays.
const HARD_MESSAGE_LIMIT: usize = 8 * 1024 * 1024;
/// `last_seen_at` is recorded at most this often per node (besides connect and
/// close), and written with other nodes' in the next batch (see [`super::seen`]).
const SEEN_EVERY_MS: i64 = 60_000;

const LOCKED_TOKEN: &str = "Too many failed attempts. Try again later.";
const LOCKED_NODE: &str = "Too many failed authentication attempts. Locked out for 60 seconds.";

/// A connection's read buffer: allocated at the upgrade and kept for the
/// connection's life, and zero-filled up to this size before every read. The
/// 128 KiB default costs every connected node 128 KiB of memory and every frame
/// read a 128 KiB fill; a node's frames are a few KiB (a larger one grows it).
const READ_BUFFER: usize = 8 * 1024;

/// `GET /ws/node` on the node listener.
pub async fn upgrade(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ws: WebSocketUpgrade,
) -> Response {
    ws.max_message_size(HARD_MESSAGE_LIMIT)
        .max_frame_size(HARD_MESSAGE_LIMIT)
        .read_buffer_size(READ_BUFFER)
        .on_upgrade(move |socket| run(state, socket, peer))
}

async fn refuse(mut socket: WebSocket, message: &str) {
    let _ = socket
        .send(Message::Text(node::auth_error(message).into()))
        .await;
    let _ = socket.send(Message::Close(None)).await;
}

/// Who authenticated, and the frame that tells them so.
struct Admitted {
    node: NodeRecord,
    reply: String,
    protocol_version: Option<u32>,
    software_version: Option<String>,
}

fn node_actor(id: &str, peer: &SocketAddr) -> Actor {
    Actor {
        name: format!("node:{id}"),
        id: Some(id.to_string()),
        role: Role::Viewer,
        client_ip: Some(peer.ip().to_string()),
        request_id: None,
    }
}

/// Checks the first frame; `Err` carries the `auth_error` text.
async fn authenticate(state: &AppState, text: &str, peer: &SocketAddr) -> Result<Admitted, String> {
    let lockout = &state.nodes.lockout;
    let now = now_ms();
    match node::parse_auth(text).map_err(|e| e.to_string())? {
        AuthRequest::Register {
            token,
            software_version,
            protocol_version,
            hostname: _,
        } => {
            let key = Lockout::token_key(&token);
            if lockout.is_locked(&key) {
                return Err(LOCKED_TOKEN.into());
            }
            let token_hash = hash_token(&token);
            let found = state
                .store
                .find_node_by_token(&token_hash)
                .await
                .map_err(|e| store_trouble(&e))?;
            let Some(found) = found.filter(|n| n.token_usable(now)) else {
                lockout.fail(&key);
                return Err("Invalid registration token".into());
            };
            if found.expires_at.is_some_and(|t| t <= now) {
                lockout.fail(&key);
                return Err("Node has expired".into());
            }
            let secret = random_token(32);
            let node = match state
                .store
                .register_node(
                    &node_actor(&found.id, peer),
                    &found.id,
                    &token_hash,
                    &hash_token(&secret),
                    now,
                )
                .await
            {
                Ok(n) => n,
                Err(StoreError::Conflict(_) | StoreError::NotFound(_)) => {
                    lockout.fail(&key);
                    return Err("Invalid registration token".into());
                }
                Err(e) => return Err(store_trouble(&e)),
            };
            lockout.succeed(&key);
            let reply = node::register_ack(&node.id, &secret);
            Ok(Admitted {
                node,
                reply,
                protocol_version,
                software_version,
            })
        }
        AuthRequest::Reconnect {
            node_id,
            node_secret,
            software_version,
            protocol_version,
        } => {
            let key = node_id.clone();
            if lockout.is_locked(&key) {
                return Err(LOCKED_NODE.into());
            }
            let found = state
                .store
                .get_node(&node_id)
                .await
                .map_err(|e| store_trouble(&e))?;
            let Some(node) = found.filter(|n| n.secret_hash.is_some()) else {
                lockout.fail(&key);
                return Err("Node not registered".into());
            };
            let expected = node.secret_hash.as_deref().unwrap_or_default();
            if !same_secret(&hash_token(&node_secret), expected) {
                lockout.fail(&key);
                return Err("Invalid node secret".into());
            }
            if node.expires_at.is_some_and(|t| t <= now) {
                lockout.fail(&key);
                return Err("Node has expired".into());
            }
            lockout.succeed(&key);
            Ok(Admitted {
                node,
                reply: node::auth_ok(),
                protocol_version,
                software_version,
            })
        }
    }
}

fn store_trouble(e: &StoreError) -> String {
    tracing::error!(error = %e, "node authentication could not read the store");
    "Internal error; try again later".into()
}

fn connection_event(
    event_type: &str,
    severity: Severity,
    message: String,
    node_id: &str,
) -> NewEvent {
    let mut e = NewEvent::new(event_type, severity, message).node(node_id);
    e.category = "connection".into();
    e
}

async fn run(state: AppState, mut socket: WebSocket, peer: SocketAddr) {
    let first = match tokio::time::timeout(AUTH_TIMEOUT, socket.recv()).await {
        Err(_) => return refuse(socket, "Auth timeout (10s)").await,
        Ok(None | Some(Err(_))) => return,
        Ok(Some(Ok(Message::Text(t)))) => t,
        Ok(Some(Ok(_))) => return refuse(socket, "First message must be a text auth frame").await,
    };
    let admitted = match authenticate(&state, first.as_str(), &peer).await {
        Ok(a) => a,
        Err(message) => {
            tracing::info!(%peer, reason = %message, "node authentication refused");
            return refuse(socket, &message).await;
        }
    };
    let node = admitted.node;
    let device_type = DeviceType::parse(&node.device_type).unwrap_or(DeviceType::Edge);
    state.nodes.seen.record(
        &node.id,
        now_ms(),
        admitted.software_version.clone(),
        admitted.protocol_version.map(i64::from),
    );
    // Attached before the node hears it is in, so that a command sent as soon as it
    // knows finds it connected; queued commands go out after the reply.
    let (session, outbox, replaced) = state.nodes.attach(
        &node.id,
        device_type,
        admitted.protocol_version,
        peer.to_string(),
    );
    if socket
        .send(Message::Text(admitted.reply.clone().into()))
        .await
        .is_err()
    {
        state.nodes.detach(&session);
        return;
    }
    state.nodes.presence.touch(&node.id);
    if let Some(old) = replaced {
        state.emit(connection_event(
            "node.replaced",
            Severity::Info,
            format!(
                "Node {} connected again from {peer}; the older connection from {} is closed",
                node.name, old.peer
            ),
            &node.id,
        ));
    } else {
        state.emit(
            connection_event(
                "node.online",
                Severity::Info,
                format!("Node {} connected to manager", node.name),
                &node.id,
            )
            .details(
                json!({"peer": peer.to_string(), "device_type": device_type.as_str(),
                            "protocol_version": admitted.protocol_version,
                            "software_version": admitted.software_version}),
            ),
        );
    }
    if let Some(v) = admitted
        .protocol_version
        .filter(|v| *v != node::PROTOCOL_VERSION)
    {
        let mut e = NewEvent::new(
            "node.protocol_mismatch",
            Severity::Warning,
            format!(
                "Node {} speaks protocol version {v}; this manager speaks {}",
                node.name,
                node::PROTOCOL_VERSION
            ),
        )
        .node(&node.id);
        e.category = "compatibility".into();
        state.emit(e);
    }
    tracing::info!(node = %node.id, %peer, "node connected");
    // Its tunnels go to it again: it may have lost them.
    crate::tunnels::node_connected(&state, &node.id);
    serve(&state, socket, &session, outbox).await;
    let offline = state.nodes.detach(&session);
    state.nodes.seen.record(&node.id, now_ms(), None, None);
    tracing::info!(node = %node.id, %peer, "node disconnected");
    if offline {
        state.nodes.presence.touch(&node.id);
        state.emit(connection_event(
            "node.offline",
            Severity::Critical,
            format!("Node {} disconnected from manager", node.name),
            &node.id,
        ));
    }
}

/// Reads and writes the authenticated connection until either side ends it.
async fn serve(
    state: &AppState,
    mut socket: WebSocket,
    session: &Arc<NodeSession>,
    mut outbox: tokio::sync::mpsc::Receiver<String>,
) {
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    let mut last_heard = tokio::time::Instant::now();
    let mut last_seen_write = now_ms();
    let mut shutdown = state.nodes.closing.subscribe();
    let mut snapshots = state.nodes.snapshots.subscribe();
    state.nodes.snapshot_wanted.notify_one();
    // Set once the node says it takes part in config sync (a Fleetgate edge).
    let mut sync: Option<EdgeSync> = None;
    loop {
        tokio::select! {
            changed = snapshots.changed(), if sync.is_some() => {
                if changed.is_err() {
                    continue;
                }
                let snap = snapshots.borrow_and_update().clone();
                if let (Some(sync), Some(snap)) = (sync.as_mut(), snap) {
                    if !send_snapshot(state, &mut socket, session, sync, &snap).await {
                        break;
                    }
                }
            }
            frame = outbox.recv() => {
                let Some(frame) = frame else { break };
                if socket.send(Message::Text(frame.into())).await.is_err() {
                    break;
                }
            }
            () = session.closed.notified() => {
                let _ = socket.send(Message::Close(None)).await;
                break;
            }
            _ = ping.tick() => {
                if last_heard.elapsed() >= IDLE_LIMIT {
                    tracing::info!(node = %session.node_id, "node silent for 45 s; closing");
                    break;
                }
                if socket.send(Message::Ping(Default::default())).await.is_err() {
                    break;
                }
            }
            () = async { let _ = shutdown.wait_for(|down| *down).await; } => {
                let _ = socket.send(Message::Close(None)).await;
                break;
            }
            msg = socket.recv() => {
                let Some(Ok(msg)) = msg else { break };
                last_heard = tokio::time::Instant::now();
                match msg {
                    Message::Text(text) => {
                        match node::parse_node_message(text.as_str()) {
                            Ok(NodeMessage::ConfigStatus(applied)) => {
                                let sync = sync.get_or_insert_with(EdgeSync::default);
                                sync.applied_digest = applied.digest.clone();
                                // What the edge serves is all it has: whatever was sent
                                // and not applied is sent again (whole).
                                sync.sent_digest = None;
                                state.nodes.update_sync(&session.node_id, |r| {
                                    r.applied_revision = Some(applied.revision);
                                    r.applied_digest = applied.digest.clone();
                                });
                                let snap = snapshots.borrow_and_update().clone();
                                if let Some(snap) = snap {
                                    if !send_snapshot(state, &mut socket, session, sync, &snap).await {
                                        break;
                                    }
                                }
                            }
                            Ok(NodeMessage::ConfigAck(applied)) => {
                                if let Some(sync) = sync.as_mut() {
                                    sync.applied_digest = applied.digest.clone();
                                }
                                tracing::info!(node = %session.node_id, revision = applied.revision, "edge applied the configuration");
                                state.nodes.update_sync(&session.node_id, |r| {
                                    r.applied_revision = Some(applied.revision);
                                    r.applied_digest = applied.digest.clone();
                                    r.last_error = None;
                                    r.error_revision = None;
                                });
                            }
                            Ok(NodeMessage::ConfigNack(nack)) => {
                                tracing::warn!(node = %session.node_id, revision = nack.revision, error = %nack.error, "edge refused the configuration");
                                let mut e = NewEvent::new(
                                    "node.config_rejected",
                                    Severity::Warning,
                                    format!("Node refused configuration revision {}: {}", nack.revision, nack.error),
                                )
                                .node(&session.node_id)
                                .details(json!({"revision": nack.revision, "error": nack.error}));
                                e.category = "config".into();
                                state.emit(e);
                                state.nodes.update_sync(&session.node_id, |r| {
                                    r.last_error = Some(nack.error);
                                    r.error_revision = Some(nack.revision);
                                });
                            }
                            Ok(msg) => handle(state, session, msg),
                            Err(e) => {
                                tracing::warn!(node = %session.node_id, bytes = text.len(), error = %e, "dropped a node frame");
                            }
                        }
                        let now = now_ms();
                        if now - last_seen_write >= SEEN_EVERY_MS {
                            last_seen_write = now;
                            let version = session.latest.lock().ok().and_then(|l| l.software_version.clone());
                            state.nodes.seen.record(&session.node_id, now, version, None);
                        }
                    }
                    Message::Close(_) => break,
                    // Pings are answered by the socket; binary frames are not part of v1.
                    _ => {}
                }
            }
        }
    }
}

/// What this connection knows of an edge's config sync.
#[derive(Debug, Default)]
struct EdgeSync {
    /// The digest of the snapshot the edge serves.
    applied_digest: Option<String>,
    /// The digest of the snapshot last sent on this connection.
    sent_digest: Option<String>,
}

/// Sends `snap` to the edge unless it serves it or has just been sent it.
/// `false` when the socket failed.
async fn send_snapshot(
    state: &AppState,
    socket: &mut WebSocket,
    session: &NodeSession,
    sync: &mut EdgeSync,
    snap: &Arc<EncodedSnapshot>,
) -> bool {
    let digest = Some(&snap.digest);
    if sync.applied_digest.as_ref() == digest || sync.sent_digest.as_ref() == digest {
        return true;
    }
    // The edge holds (or is about to hold) the snapshot the delta starts from.
    let delta = snap.delta.as_ref().filter(|d| {
        let base = Some(&d.base_digest);
        sync.sent_digest.as_ref().or(sync.applied_digest.as_ref()) == base
    });
    if let Some(d) = delta {
        // A delta is small: copied per session.
        if socket
            .send(Message::Text(d.frame.as_str().into()))
            .await
            .is_err()
        {
            return false;
        }
    } else {
        for index in 0..snap.frames.len() {
            if socket
                .send(Message::Text(shared_frame(snap, index)))
                .await
                .is_err()
            {
                return false;
            }
        }
    }
    sync.sent_digest = Some(snap.digest.clone());
    tracing::debug!(node = %session.node_id, revision = snap.revision, bytes = snap.bytes, delta = delta.is_some(), "sent the configuration");
    state.nodes.update_sync(&session.node_id, |r| {
        r.sent_revision = Some(snap.revision);
        r.sent_as = Some(if delta.is_some() { "delta" } else { "snapshot" }.into());
    });
    true
}

/// Frame `index` of `snap` as WebSocket text, sharing the snapshot's copy (every
/// session sends the same frames) instead of copying it per session.
fn shared_frame(snap: &Arc<EncodedSnapshot>, index: usize) -> Utf8Bytes {
    struct Frame(Arc<EncodedSnapshot>, usize);
    impl AsRef<[u8]> for Frame {
        fn as_ref(&self) -> &[u8] {
            self.0.frames[self.1].as_bytes()
        }
    }
    Utf8Bytes::try_from(Bytes::from_owner(Frame(snap.clone(), index)))
        .unwrap_or_else(|_| snap.frames[index].as_str().into())
}

/// One message of an authenticated node (config sync aside).
fn handle(state: &AppState, session: &NodeSession, msg: NodeMessage) {
    let node_id = session.node_id.as_str();
    match msg {
        NodeMessage::Stats(v) => {
            let now = now_ms();
            state
                .nodes
                .history
                .observe(node_id, now, &super::history::metrics_of_stats(&v));
            if let Ok(mut l) = session.latest.lock() {
                l.stats = Some(super::Reported {
                    at: now_ms(),
                    value: v,
                });
            }
        }
        NodeMessage::Health(v) => {
            state
                .nodes
                .history
                .observe(node_id, now_ms(), &super::history::metrics_of_health(&v));
            let version = v
                .get("version")
                .and_then(|x| x.as_str())
                .map(|s| node::truncate(s.to_string(), node::MAX_VERSION_BYTES));
            if let Ok(mut l) = session.latest.lock() {
                if version.is_some() {
                    l.software_version = version;
                }
                l.health = Some(super::Reported {
                    at: now_ms(),
                    value: v,
                });
            }
        }
        NodeMessage::Event(ev) => {
            let mut e = NewEvent::new("node.event", ev.severity, ev.message)
                .node(node_id)
                .details(
                    json!({"node_category": ev.category, "input_id": ev.input_id,
                                "output_id": ev.output_id, "details": ev.details}),
                );
            e.category = ev.category;
            e.flow_id = ev.flow_id;
            fleetgate_core::events::emit(Some(&state.event_sink()), e.source(node_id));
        }
        NodeMessage::CommandAck(ack) => state.nodes.on_ack(node_id, ack),
        NodeMessage::ConfigResponse(config) => state.nodes.on_config(node_id, config),
        NodeMessage::Pong
        | NodeMessage::ConfigStatus(_)
        | NodeMessage::ConfigAck(_)
        | NodeMessage::ConfigNack(_) => {}
        NodeMessage::Unknown(kind) => {
            tracing::debug!(node = node_id, kind = %kind, "ignored a node message of unknown type");
        }
    }
}
