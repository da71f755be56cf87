//! The fleet as this manager sees it: the nodes connected to its node listener
//! ([`NodeHub`]), their latest stats, health and configuration, the commands
//! waiting for their answer, the authentication lockout, and the TLS identity
//! the listener presents.
//!
//! - [`listener`]: the TLS listener serving `/ws/node`;
//! - [`session`]: one node connection, from its first frame to its close;
//! - [`replicas`]: nodes connected to other manager replicas (presence, requests);
//! - [`history`]: the nodes' stats and health, downsampled and stored;
//! - [`lockout`]: 5 failed authentications in 60 s lock a node id or token prefix;
//! - [`seen`]: when nodes were last seen, written to the store in batches;
//! - [`tls`]: the listener's certificate (generated on first start, or uploaded).

pub mod history;
pub mod listener;
pub mod lockout;
pub mod replicas;
pub mod seen;
pub mod session;
pub mod tls;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use fleetgate_core::time::now_ms;
use fleetgate_protocol::node::{self, CommandAck, CommandSpec, DeviceType};
use fleetgate_protocol::sync::EncodedSnapshot;
use fleetgate_protocol::DataPlaneConfig;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch, Notify};

/// How long a REST command waits for the node's answer.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `GET /nodes/{id}/config` waits for a `config_response`.
pub const CONFIG_FETCH_TIMEOUT: Duration = Duration::from_secs(3);
/// Frames queued to one node at most; a sender waits for room.
const OUTBOX: usize = 64;
/// Changes of the data-plane input closer together than this go to edges as one
/// snapshot.
pub const SNAPSHOT_COALESCE: Duration = Duration::from_millis(50);

/// Config sync of one Fleetgate edge, as this manager last heard of it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ConfigSyncState {
    /// The revision of the snapshot last sent to the edge.
    pub sent_revision: Option<u64>,
    /// How it was sent: `snapshot` (whole) or `delta` (the changes since the
    /// snapshot the edge held).
    pub sent_as: Option<String>,
    /// The revision the edge serves (from its `config_status` or `config_ack`).
    pub applied_revision: Option<u64>,
    /// The digest of the snapshot the edge serves.
    pub applied_digest: Option<String>,
    /// Why the edge refused the last snapshot it refused, while it has not
    /// applied a later one.
    pub last_error: Option<String>,
    /// The revision that error is about.
    pub error_revision: Option<u64>,
    /// When the edge last reported (Unix ms).
    pub updated_at: i64,
}

/// A value a node reported, with when it arrived (Unix ms).
#[derive(Debug, Clone)]
pub struct Reported {
    pub at: i64,
    pub value: Value,
}

/// What the latest messages of a connected node said.
#[derive(Debug, Clone, Default)]
pub struct Latest {
    pub stats: Option<Reported>,
    pub health: Option<Reported>,
    /// The software version from the latest health message.
    pub software_version: Option<String>,
}

/// One live connection of a node.
#[derive(Debug)]
pub struct NodeSession {
    pub node_id: String,
    /// Tells this connection from a newer one of the same node.
    pub conn_id: u64,
    pub device_type: DeviceType,
    pub connected_at: i64,
    pub protocol_version: Option<u32>,
    pub peer: String,
    outbox: mpsc::Sender<String>,
    /// Woken when a newer connection of the same node (or a delete) ends this one.
    pub(crate) closed: Notify,
    pub(crate) latest: Mutex<Latest>,
}

impl NodeSession {
    pub fn latest(&self) -> Latest {
        self.latest.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

/// How a node answered a command.
#[derive(Debug)]
enum Answer {
    Ack(CommandAck),
    Config(Value),
    /// The connection closed before the answer came.
    Gone,
}

/// Why a command got no success.
#[derive(Debug)]
pub enum CommandFailure {
    NotConnected,
    Timeout,
    /// The node answered `success: false`.
    Refused(CommandAck),
    /// The node's connection ended before it answered.
    Disconnected,
}

struct Waiter {
    node_id: String,
    conn_id: u64,
    tx: oneshot::Sender<Answer>,
}

/// The nodes connected to this manager and what they owe it.
pub struct NodeHub {
    sessions: Mutex<HashMap<String, Arc<NodeSession>>>,
    /// Commands waiting for their `command_ack`, by command id.
    acks: Mutex<HashMap<String, Waiter>>,
    /// `get_config` commands waiting for a `config_response`, in sending order.
    config_waiters: Mutex<Vec<(String, Waiter)>>,
    /// The configuration each node last reported, by node id.
    configs: Mutex<HashMap<String, Reported>>,
    next_conn: AtomicU64,
    pub lockout: lockout::Lockout,
    /// When nodes were seen, until the next batch write.
    pub(crate) seen: seen::SeenBuffer,
    /// The node listener's certificate; set when the listener starts.
    pub tls: OnceLock<Arc<tls::NodeTls>>,
    /// Becomes true when the node listener shuts down: sessions close.
    pub(crate) closing: tokio::sync::watch::Sender<bool>,
    /// The data-plane input as edges get it, encoded once for every session.
    pub(crate) snapshots: watch::Sender<Option<Arc<EncodedSnapshot>>>,
    /// Signalled by a session that starts watching `snapshots`, so that a
    /// snapshot left unencoded while no session watched is encoded now.
    pub(crate) snapshot_wanted: tokio::sync::Notify,
    /// Config sync of every Fleetgate edge heard from, by node id.
    sync: Mutex<HashMap<String, ConfigSyncState>>,
    /// The stats and health of the nodes connected here, downsampled.
    pub history: history::History,
    /// Nodes whose presence is to be written.
    pub presence: replicas::PresenceBuffer,
    /// Counts connections and disconnections: changes when the set of connected
    /// nodes does.
    membership: watch::Sender<u64>,
}

impl Default for NodeHub {
    fn default() -> Self {
        Self {
            sessions: Mutex::default(),
            acks: Mutex::default(),
            config_waiters: Mutex::default(),
            configs: Mutex::default(),
            next_conn: AtomicU64::new(0),
            lockout: lockout::Lockout::default(),
            seen: seen::SeenBuffer::default(),
            tls: OnceLock::new(),
            closing: tokio::sync::watch::Sender::new(false),
            snapshots: watch::Sender::new(None),
            snapshot_wanted: tokio::sync::Notify::new(),
            sync: Mutex::default(),
            history: history::History::default(),
            presence: replicas::PresenceBuffer::default(),
            membership: watch::Sender::new(0),
        }
    }
}

impl std::fmt::Debug for NodeHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeHub")
            .field("connected", &self.connected_count())
            .finish()
    }
}

impl NodeHub {
    /// Adds a connection; a connection of the same node already here is told to
    /// close and is returned.
    pub(crate) fn attach(
        &self,
        node_id: &str,
        device_type: DeviceType,
        protocol_version: Option<u32>,
        peer: String,
    ) -> (
        Arc<NodeSession>,
        mpsc::Receiver<String>,
        Option<Arc<NodeSession>>,
    ) {
        let (tx, rx) = mpsc::channel(OUTBOX);
        let session = Arc::new(NodeSession {
            node_id: node_id.to_string(),
            conn_id: self.next_conn.fetch_add(1, Ordering::Relaxed) + 1,
            device_type,
            connected_at: now_ms(),
            protocol_version,
            peer,
            outbox: tx,
            closed: Notify::new(),
            latest: Mutex::new(Latest::default()),
        });
        let old = self
            .sessions
            .lock()
            .ok()
            .and_then(|mut s| s.insert(node_id.to_string(), session.clone()));
        if let Some(old) = &old {
            old.closed.notify_one();
        }
        self.membership.send_modify(|n| *n += 1);
        (session, rx, old)
    }

    /// Removes a connection that ended. `true` when it was the node's current one
    /// (the node is now offline), `false` when a newer one had replaced it.
    pub(crate) fn detach(&self, session: &NodeSession) -> bool {
        let removed = self.sessions.lock().is_ok_and(|mut s| {
            if s.get(&session.node_id)
                .is_some_and(|c| c.conn_id == session.conn_id)
            {
                s.remove(&session.node_id);
                true
            } else {
                false
            }
        });
        if removed {
            self.membership.send_modify(|n| *n += 1);
        }
        // Whoever waits on this connection will not hear from it.
        let gone = |w: &Waiter| w.node_id == session.node_id && w.conn_id == session.conn_id;
        if let Ok(mut acks) = self.acks.lock() {
            let ids: Vec<String> = acks
                .iter()
                .filter(|(_, w)| gone(w))
                .map(|(k, _)| k.clone())
                .collect();
            for id in ids {
                if let Some(w) = acks.remove(&id) {
                    let _ = w.tx.send(Answer::Gone);
                }
            }
        }
        if let Ok(mut cw) = self.config_waiters.lock() {
            let (gone_now, keep): (Vec<_>, Vec<_>) = cw.drain(..).partition(|(_, w)| gone(w));
            *cw = keep;
            for (_, w) in gone_now {
                let _ = w.tx.send(Answer::Gone);
            }
        }
        removed
    }

    /// Ends the connection of a node (it was deleted).
    pub fn disconnect(&self, node_id: &str) {
        if let Some(s) = self.session(node_id) {
            s.closed.notify_one();
        }
        if let Ok(mut c) = self.configs.lock() {
            c.remove(node_id);
        }
        if let Ok(mut s) = self.sync.lock() {
            s.remove(node_id);
        }
    }

    /// The snapshot edges are to serve now, once encoded.
    pub fn desired_snapshot(&self) -> Option<Arc<EncodedSnapshot>> {
        self.snapshots.borrow().clone()
    }

    /// Config sync of a Fleetgate edge; `None` for nodes that never took part.
    pub fn config_sync(&self, node_id: &str) -> Option<ConfigSyncState> {
        self.sync.lock().ok()?.get(node_id).cloned()
    }

    /// Changes the config sync record of `node_id`.
    pub(crate) fn update_sync(&self, node_id: &str, f: impl FnOnce(&mut ConfigSyncState)) {
        if let Ok(mut s) = self.sync.lock() {
            let rec = s.entry(node_id.to_string()).or_default();
            f(rec);
            rec.updated_at = now_ms();
        }
    }

    pub fn session(&self, node_id: &str) -> Option<Arc<NodeSession>> {
        self.sessions.lock().ok()?.get(node_id).cloned()
    }

    /// Every current connection (one per connected node).
    pub fn sessions(&self) -> Vec<Arc<NodeSession>> {
        self.sessions
            .lock()
            .map(|s| s.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Changes whenever a node connects or disconnects.
    pub fn membership(&self) -> watch::Receiver<u64> {
        self.membership.subscribe()
    }

    pub fn connected_count(&self) -> usize {
        self.sessions.lock().map(|s| s.len()).unwrap_or(0)
    }

    /// The configuration the node last reported, if any.
    pub fn cached_config(&self, node_id: &str) -> Option<Reported> {
        self.configs.lock().ok()?.get(node_id).cloned()
    }

    /// A `command_ack` arrived: wakes its command. Any command may have changed the
    /// node's configuration, so the cached copy is dropped.
    pub(crate) fn on_ack(&self, node_id: &str, ack: CommandAck) {
        if let Ok(mut c) = self.configs.lock() {
            c.remove(node_id);
        }
        let waiter = self.acks.lock().ok().and_then(|mut a| {
            // Only the node the command went to may answer it.
            if a.get(&ack.command_id).is_some_and(|w| w.node_id == node_id) {
                a.remove(&ack.command_id)
            } else {
                None
            }
        });
        match waiter {
            Some(w) => {
                let _ = w.tx.send(Answer::Ack(ack));
            }
            None => tracing::debug!(node = node_id, "command_ack for no waiting command"),
        }
    }

    /// A `config_response` arrived: cached, and every `get_config` of that node
    /// waiting is answered with it.
    pub(crate) fn on_config(&self, node_id: &str, config: Value) {
        if let Ok(mut c) = self.configs.lock() {
            c.insert(
                node_id.to_string(),
                Reported {
                    at: now_ms(),
                    value: config.clone(),
                },
            );
        }
        let mine: Vec<Waiter> = match self.config_waiters.lock() {
            Ok(mut cw) => {
                let (mine, rest): (Vec<_>, Vec<_>) =
                    cw.drain(..).partition(|(_, w)| w.node_id == node_id);
                *cw = rest;
                mine.into_iter().map(|(_, w)| w).collect()
            }
            Err(_) => Vec::new(),
        };
        for w in mine {
            let _ = w.tx.send(Answer::Config(config.clone()));
        }
    }

    /// Sends `action` (already checked against `spec`) to the node and waits up to
    /// `wait` for its answer. For `get_config` the answer is the configuration
    /// (as the ack's `data`).
    pub async fn command(
        &self,
        node_id: &str,
        spec: &CommandSpec,
        action: &Value,
        wait: Duration,
    ) -> Result<CommandAck, CommandFailure> {
        let session = self.session(node_id).ok_or(CommandFailure::NotConnected)?;
        let command_id = uuid::Uuid::new_v4().to_string();
        let (tx, rx) = oneshot::channel();
        let waiter = Waiter {
            node_id: node_id.to_string(),
            conn_id: session.conn_id,
            tx,
        };
        if spec.answered_by_config {
            if let Ok(mut cw) = self.config_waiters.lock() {
                cw.push((command_id.clone(), waiter));
            }
        } else if let Ok(mut a) = self.acks.lock() {
            a.insert(command_id.clone(), waiter);
        }
        let frame = node::command(&command_id, action);
        let outcome = tokio::time::timeout(wait, async {
            if session.outbox.send(frame).await.is_err() {
                return Err(CommandFailure::Disconnected);
            }
            match rx.await {
                Ok(Answer::Ack(ack)) if ack.success => Ok(ack),
                Ok(Answer::Ack(ack)) => Err(CommandFailure::Refused(ack)),
                Ok(Answer::Config(config)) => Ok(CommandAck {
                    command_id: command_id.clone(),
                    success: true,
                    error: None,
                    error_code: None,
                    data: Some(config),
                }),
                Ok(Answer::Gone) | Err(_) => Err(CommandFailure::Disconnected),
            }
        })
        .await
        .unwrap_or(Err(CommandFailure::Timeout));
        // Whatever happened, nobody waits for this command any more.
        if let Ok(mut a) = self.acks.lock() {
            a.remove(&command_id);
        }
        if let Ok(mut cw) = self.config_waiters.lock() {
            cw.retain(|(id, _)| id != &command_id);
        }
        outcome
    }
}

/// What an edge is sent of the data-plane input: everything but the rules this
/// manager's own gateway syncs from a Flecto manager (an input of that gateway only).
pub fn edge_config(current: &DataPlaneConfig) -> DataPlaneConfig {
    DataPlaneConfig {
        synced: None,
        // Provider keys never leave the manager's process.
        ai: Default::default(),
        ..current.clone()
    }
}

/// Keeps [`NodeHub::desired_snapshot`] current while node sessions watch it:
/// encodes the data-plane input when it changes, changes within
/// [`SNAPSHOT_COALESCE`] of each other as one, until `shutdown`. With no session
/// watching nothing is encoded (a change then costs the manager nothing here; the
/// whole input, published redirect sets included, can be megabytes of JSON); the
/// first session to watch gets it encoded.
pub fn spawn_snapshot_encoder(
    state: crate::AppState,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let mut input = state.feed.subscribe();
    tokio::spawn(async move {
        let mut stale = true;
        // The snapshot encoded last, which the next one's delta starts from.
        let mut previous: Option<(DataPlaneConfig, String)> = None;
        loop {
            if stale && state.nodes.snapshots.receiver_count() > 0 {
                stale = false;
            } else {
                let changed = tokio::select! {
                    changed = input.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        true
                    }
                    () = state.nodes.snapshot_wanted.notified() => false,
                    _ = shutdown.wait_for(|down| *down) => return,
                };
                if changed {
                    stale = true;
                    tokio::select! {
                        () = tokio::time::sleep(SNAPSHOT_COALESCE) => {}
                        _ = shutdown.wait_for(|down| *down) => return,
                    }
                }
                continue;
            }
            let current = input.borrow_and_update().clone();
            let config = edge_config(&current);
            if previous.as_ref().is_some_and(|(c, _)| *c == config) {
                // A change edges do not see (the AI gateway's input).
                continue;
            }
            let before = previous.take();
            let encoded = tokio::task::spawn_blocking(move || {
                let base = before.as_ref().map(|(c, d)| (c, d.as_str()));
                EncodedSnapshot::encode_after(&config, base).map(|e| (e, config))
            })
            .await;
            match encoded {
                Ok(Ok((e, config))) => {
                    tracing::debug!(
                        revision = e.revision,
                        bytes = e.bytes,
                        frames = e.frames.len(),
                        delta_bytes = e.delta.as_ref().map(|d| d.frame.len()),
                        "encoded the edge snapshot"
                    );
                    previous = Some((config, e.digest.clone()));
                    state.nodes.snapshots.send_replace(Some(Arc::new(e)));
                }
                Ok(Err(e)) => tracing::error!(error = %e, "could not encode the edge snapshot"),
                Err(e) => tracing::error!(error = %e, "encoding the edge snapshot failed"),
            }
        }
    })
}
