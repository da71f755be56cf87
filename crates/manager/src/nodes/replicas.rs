//! Nodes connected to other manager replicas of the same installation.
//!
//! Presence is kept in the store: every replica records itself in
//! `manager_replicas` every [`HEARTBEAT`], and records in `node_presence` each node
//! whose connection it holds. A presence row counts while its replica was seen
//! within [`ALIVE_MS`]; rows of replicas gone longer than [`PRUNE_AFTER_MS`] are
//! removed. So every replica tells which nodes are online, and where.
//!
//! What only the holding replica knows (a node's latest stats and health, its
//! config sync, its commands) is asked of that replica over NATS request/reply on
//! `fleetgate.nodes.<cluster>.<instance>`, in JSON:
//! - `{"op": "views", "node_ids": [..]}` → `{"views": {"<id>": LiveView}}`;
//! - `{"op": "command", "node_id", "action", "wait_ms"}` → `{"ack": {...}}` or
//!   `{"failure": "not_connected" | "timeout" | "disconnected" | "refused", "ack"?}`;
//! - `{"op": "config", "node_id", "wait_ms"}` → the same, the configuration in the
//!   ack's `data` (the cached one when there is one);
//! - `{"op": "disconnect", "node_id"}` → `{}` (the node was deleted);
//! - `{"op": "acme_challenge", "token", "wait_ms"}` → `{"answering": bool}`: the
//!   replica publishes the stored ACME challenge answers at once and answers
//!   when its gateway serves `token` (see [`crate::acme`]).
//!
//! Without NATS a replica still shows remote nodes as online, but cannot reach them.

use std::collections::HashMap;
use std::time::Duration;

use fleetgate_core::time::now_ms;
use fleetgate_protocol::node::{validate_command, CommandAck};
use fleetgate_store::NodePresence;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::watch;

use super::{CommandFailure, ConfigSyncState, NodeSession};
use crate::AppState;

/// How often a replica records that it is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(5);
/// A replica not seen for this long holds no node.
pub const ALIVE_MS: i64 = 20_000;
/// Replicas not seen for this long are removed with their presence rows.
pub const PRUNE_AFTER_MS: i64 = 120_000;
/// How long a view of remote nodes is waited for.
const VIEWS_TIMEOUT: Duration = Duration::from_secs(2);
/// Beyond the command's own wait, for the two hops over NATS.
const RELAY_MARGIN: Duration = Duration::from_secs(2);

/// How often the presence of nodes that connected or left here is written.
pub const PRESENCE_EVERY: Duration = Duration::from_secs(1);

/// Nodes whose connection here began or ended since presence was last written.
/// Writing what the hub holds at that moment (rather than each event) keeps
/// thousands of nodes connecting at once from queueing one write each.
#[derive(Debug, Default)]
pub struct PresenceBuffer {
    changed: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl PresenceBuffer {
    /// Notes that node `id` connected here or left.
    pub fn touch(&self, id: &str) {
        if let Ok(mut c) = self.changed.lock() {
            c.insert(id.to_string());
        }
    }

    /// Writes the presence of the nodes noted: held here now, or not.
    pub async fn flush(&self, state: &AppState) {
        let ids: Vec<String> = match self.changed.lock() {
            Ok(mut c) => c.drain().collect(),
            Err(_) => return,
        };
        if ids.is_empty() {
            return;
        }
        let mut connected = Vec::new();
        let mut gone = Vec::new();
        for id in ids {
            match state.nodes.session(&id) {
                Some(s) => connected.push(NodePresence {
                    node_id: id,
                    replica: state.instance.clone(),
                    conn_id: s.conn_id as i64,
                    connected_at: s.connected_at,
                    peer: s.peer.clone(),
                    protocol_version: s.protocol_version.map(i64::from),
                }),
                None => gone.push(id),
            }
        }
        if let Err(e) = state
            .store
            .record_presence(&state.instance, &connected, &gone)
            .await
        {
            tracing::warn!(error = %e, "could not record where nodes are connected; trying again");
            for id in connected.iter().map(|p| &p.node_id).chain(&gone) {
                self.touch(id);
            }
        }
    }
}

/// What the replica holding a node knows of it live.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LiveView {
    pub connected_at: i64,
    pub protocol_version: Option<u32>,
    pub software_version: Option<String>,
    pub health: Option<Value>,
    pub stats: Option<Value>,
    /// Config sync of a Fleetgate edge.
    pub sync: Option<ConfigSyncState>,
    /// The revision the holding replica wants its edges to serve.
    pub desired_revision: Option<u64>,
    pub desired_digest: Option<String>,
}

/// A connected node as the replica holding it reports it.
#[derive(Debug, Clone)]
pub struct Online {
    pub live: LiveView,
    /// The manager replica holding the connection.
    pub replica: String,
}

impl LiveView {
    /// The live view of a session on this replica.
    pub fn of(state: &AppState, session: &NodeSession) -> Self {
        let latest = session.latest();
        let desired = state.nodes.desired_snapshot();
        Self {
            connected_at: session.connected_at,
            protocol_version: session.protocol_version,
            software_version: latest.software_version,
            health: latest.health.map(|r| r.value),
            stats: latest.stats.map(|r| r.value),
            sync: state.nodes.config_sync(&session.node_id),
            desired_revision: desired.as_ref().map(|d| d.revision),
            desired_digest: desired.map(|d| d.digest.clone()),
        }
    }
}

/// Where a node is connected, from this replica's point of view.
#[derive(Debug, Clone)]
pub enum Whereabouts {
    /// Here.
    Local(std::sync::Arc<NodeSession>),
    /// On another live replica.
    Remote(NodePresence),
    Offline,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Request {
    Views {
        node_ids: Vec<String>,
        #[serde(default)]
        with_stats: bool,
    },
    Command {
        node_id: String,
        action: Value,
        wait_ms: u64,
    },
    Config {
        node_id: String,
        wait_ms: u64,
    },
    Disconnect {
        node_id: String,
    },
    AcmeChallenge {
        token: String,
        wait_ms: u64,
    },
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Reply {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    views: Option<HashMap<String, LiveView>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ack: Option<CommandAck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    failure: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    answering: Option<bool>,
}

fn subject(cluster: &str, instance: &str) -> String {
    format!("fleetgate.nodes.{cluster}.{instance}")
}

impl AppState {
    /// Where node `id` is connected now.
    pub async fn whereabouts(&self, id: &str) -> Whereabouts {
        if let Some(s) = self.nodes.session(id) {
            return Whereabouts::Local(s);
        }
        let ids = [id.to_string()];
        match self.remote_presence(&ids).await.pop() {
            Some(p) => Whereabouts::Remote(p),
            None => Whereabouts::Offline,
        }
    }

    /// Presence of the nodes `ids` on other live replicas (a store failure reads as
    /// none: the nodes show offline rather than the request failing).
    pub async fn remote_presence(&self, ids: &[String]) -> Vec<NodePresence> {
        if ids.is_empty() {
            return Vec::new();
        }
        match self
            .store
            .node_presence(Some(ids), now_ms() - ALIVE_MS)
            .await
        {
            Ok(rows) => rows
                .into_iter()
                .filter(|p| p.replica != self.instance)
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "could not read node presence");
                Vec::new()
            }
        }
    }

    /// What is known live of the nodes `ids`: those connected here, and those
    /// connected to other live replicas (with what those replicas say of them, or
    /// only their presence when they do not answer). Stats only `with_stats`.
    pub async fn online(&self, ids: &[String], with_stats: bool) -> HashMap<String, Online> {
        let mut out = HashMap::new();
        let mut elsewhere = Vec::new();
        for id in ids {
            match self.nodes.session(id) {
                Some(s) => {
                    let mut live = LiveView::of(self, &s);
                    if !with_stats {
                        live.stats = None;
                    }
                    let replica = self.instance.clone();
                    out.insert(id.clone(), Online { live, replica });
                }
                None => elsewhere.push(id.clone()),
            }
        }
        let remote = self.remote_presence(&elsewhere).await;
        let mut views = self.remote_views(&remote, with_stats).await;
        for p in remote {
            let live = views.remove(&p.node_id).unwrap_or_else(|| LiveView {
                connected_at: p.connected_at,
                protocol_version: p.protocol_version.and_then(|v| u32::try_from(v).ok()),
                ..LiveView::default()
            });
            let replica = p.replica;
            out.insert(p.node_id, Online { live, replica });
        }
        out
    }

    /// The live views of remote nodes, asked of their replicas at once; nodes
    /// whose replica does not answer are left out.
    pub async fn remote_views(
        &self,
        remote: &[NodePresence],
        with_stats: bool,
    ) -> HashMap<String, LiveView> {
        let mut by_replica: HashMap<&str, Vec<String>> = HashMap::new();
        for p in remote {
            by_replica
                .entry(p.replica.as_str())
                .or_default()
                .push(p.node_id.clone());
        }
        let asks = by_replica
            .into_iter()
            .map(|(replica, node_ids)| async move {
                let req = Request::Views {
                    node_ids,
                    with_stats,
                };
                self.ask(replica, &req, VIEWS_TIMEOUT)
                    .await
                    .ok()
                    .and_then(|r| r.views)
                    .unwrap_or_default()
            });
        futures::future::join_all(asks)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// Sends a command (already validated) to a node connected to another replica.
    pub async fn remote_command(
        &self,
        p: &NodePresence,
        action: &Value,
        wait: Duration,
    ) -> Result<CommandAck, RemoteFailure> {
        let req = Request::Command {
            node_id: p.node_id.clone(),
            action: action.clone(),
            wait_ms: wait.as_millis() as u64,
        };
        outcome(self.ask(&p.replica, &req, wait + RELAY_MARGIN).await?)
    }

    /// Sends a command to a node wherever it is connected (checked against the
    /// node's command sheet first).
    pub async fn command_anywhere(
        &self,
        node_id: &str,
        action: &Value,
        wait: Duration,
    ) -> Result<CommandAck, RemoteFailure> {
        match self.whereabouts(node_id).await {
            Whereabouts::Local(s) => {
                let spec = validate_command(s.device_type, action).map_err(invalid)?;
                Ok(self.nodes.command(node_id, spec, action, wait).await?)
            }
            Whereabouts::Remote(p) => self.remote_command(&p, action, wait).await,
            Whereabouts::Offline => Err(CommandFailure::NotConnected.into()),
        }
    }

    /// The configuration of a node connected to another replica.
    pub async fn remote_config(
        &self,
        p: &NodePresence,
        wait: Duration,
    ) -> Result<CommandAck, RemoteFailure> {
        let req = Request::Config {
            node_id: p.node_id.clone(),
            wait_ms: wait.as_millis() as u64,
        };
        outcome(self.ask(&p.replica, &req, wait + RELAY_MARGIN).await?)
    }

    /// Ends the connection of a deleted node here and on the replicas `remote`
    /// (its presence, read before the delete removed it).
    pub async fn disconnect_everywhere(&self, node_id: &str, remote: &[NodePresence]) {
        self.nodes.disconnect(node_id);
        for p in remote {
            let req = Request::Disconnect {
                node_id: node_id.to_string(),
            };
            if let Err(e) = self.ask(&p.replica, &req, VIEWS_TIMEOUT).await {
                tracing::warn!(node = node_id, replica = %p.replica, error = %e, "could not tell the node's replica to close it");
            }
        }
    }

    /// Asks the replicas `others` at once to answer the ACME challenge `token`
    /// through their gateways, waiting up to `wait`; returns those that did not
    /// confirm (no NATS, no answer in time, or no gateway update).
    pub async fn challenge_answered_by_replicas(
        &self,
        others: &[String],
        token: &str,
        wait: Duration,
    ) -> Vec<String> {
        let asks = others.iter().map(|replica| async move {
            let req = Request::AcmeChallenge {
                token: token.to_string(),
                wait_ms: wait.as_millis() as u64,
            };
            let confirmed = matches!(
                self.ask(replica, &req, wait + RELAY_MARGIN).await,
                Ok(Reply {
                    answering: Some(true),
                    ..
                })
            );
            (!confirmed).then(|| replica.clone())
        });
        futures::future::join_all(asks)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    async fn ask(
        &self,
        replica: &str,
        req: &Request,
        wait: Duration,
    ) -> Result<Reply, RemoteFailure> {
        let Some((client, cluster)) = self.peers.client() else {
            return Err(RemoteFailure::Unreachable(
                "it is connected to another manager replica, and this one has no NATS to reach it"
                    .into(),
            ));
        };
        let body =
            serde_json::to_vec(req).map_err(|e| RemoteFailure::Unreachable(e.to_string()))?;
        let request = async_nats::Request::new()
            .payload(body.into())
            .timeout(Some(wait));
        let msg = match client
            .send_request(subject(cluster, replica), request)
            .await
        {
            Ok(m) => m,
            Err(e) if e.kind() == async_nats::RequestErrorKind::TimedOut => {
                return Err(RemoteFailure::Timeout)
            }
            Err(e) => {
                return Err(RemoteFailure::Unreachable(format!(
                    "its manager replica did not answer over NATS: {e}"
                )))
            }
        };
        serde_json::from_slice(&msg.payload).map_err(|e| {
            RemoteFailure::Unreachable(format!(
                "its manager replica answered in a form not understood: {e}"
            ))
        })
    }
}

/// Why a command relayed to another replica got no success.
#[derive(Debug)]
pub enum RemoteFailure {
    /// The node's replica reached it, and the node did not carry it out.
    Node(CommandFailure),
    /// The node's replica did not answer in time.
    Timeout,
    /// The node's replica cannot be asked (why).
    Unreachable(String),
}

impl std::fmt::Display for RemoteFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RemoteFailure::Node(n) => write!(f, "the node did not carry the command out: {n:?}"),
            RemoteFailure::Timeout => {
                f.write_str("the node's manager replica did not answer in time")
            }
            RemoteFailure::Unreachable(why) => f.write_str(why),
        }
    }
}

impl From<CommandFailure> for RemoteFailure {
    fn from(f: CommandFailure) -> Self {
        RemoteFailure::Node(f)
    }
}

fn outcome(reply: Reply) -> Result<CommandAck, RemoteFailure> {
    match (reply.failure.as_deref(), reply.ack) {
        (None, Some(ack)) => Ok(ack),
        (Some("refused"), Some(ack)) => Err(CommandFailure::Refused(ack).into()),
        (Some("not_connected"), _) => Err(CommandFailure::NotConnected.into()),
        (Some("timeout"), _) => Err(CommandFailure::Timeout.into()),
        (Some("disconnected"), _) => Err(CommandFailure::Disconnected.into()),
        (other, _) => Err(RemoteFailure::Unreachable(format!(
            "its manager replica answered {other:?} without an acknowledgement"
        ))),
    }
}

fn failure_reply(f: CommandFailure) -> Reply {
    let (name, ack) = match f {
        CommandFailure::NotConnected => ("not_connected", None),
        CommandFailure::Timeout => ("timeout", None),
        CommandFailure::Disconnected => ("disconnected", None),
        CommandFailure::Refused(ack) => ("refused", Some(ack)),
    };
    Reply {
        failure: Some(name.into()),
        ack,
        ..Reply::default()
    }
}

/// A command the node's sheet does not accept, as a refusal.
fn invalid(e: fleetgate_protocol::node::CommandError) -> CommandFailure {
    CommandFailure::Refused(CommandAck {
        command_id: String::new(),
        success: false,
        error: Some(e.to_string()),
        error_code: Some("invalid_command".into()),
        data: None,
    })
}

/// Caps a wait asked by another replica.
fn wait_of(ms: u64) -> Duration {
    Duration::from_millis(ms).min(super::COMMAND_TIMEOUT)
}

async fn answer(state: &AppState, req: Request) -> Reply {
    match req {
        Request::Views {
            node_ids,
            with_stats,
        } => Reply {
            views: Some(
                node_ids
                    .iter()
                    .filter_map(|id| {
                        let s = state.nodes.session(id)?;
                        let mut live = LiveView::of(state, &s);
                        if !with_stats {
                            live.stats = None;
                        }
                        Some((id.clone(), live))
                    })
                    .collect(),
            ),
            ..Reply::default()
        },
        Request::Command {
            node_id,
            action,
            wait_ms,
        } => {
            let Some(session) = state.nodes.session(&node_id) else {
                return failure_reply(CommandFailure::NotConnected);
            };
            // Checked again here: the sheet is this replica's to enforce.
            let spec = match validate_command(session.device_type, &action) {
                Ok(s) => s,
                Err(e) => return failure_reply(invalid(e)),
            };
            match state
                .nodes
                .command(&node_id, spec, &action, wait_of(wait_ms))
                .await
            {
                Ok(ack) => Reply {
                    ack: Some(ack),
                    ..Reply::default()
                },
                Err(f) => failure_reply(f),
            }
        }
        Request::Config { node_id, wait_ms } => {
            match state.node_config_here(&node_id, wait_of(wait_ms)).await {
                Ok(ack) => Reply {
                    ack: Some(ack),
                    ..Reply::default()
                },
                Err(f) => failure_reply(f),
            }
        }
        Request::Disconnect { node_id } => {
            state.nodes.disconnect(&node_id);
            Reply::default()
        }
        Request::AcmeChallenge { token, wait_ms } => Reply {
            answering: Some(
                state
                    .acme
                    .answer_here(state, &[token], wait_of(wait_ms))
                    .await,
            ),
            ..Reply::default()
        },
    }
}

impl AppState {
    /// The configuration of a node connected here: the cached one, or asked now.
    pub async fn node_config_here(
        &self,
        node_id: &str,
        wait: Duration,
    ) -> Result<CommandAck, CommandFailure> {
        if let Some(c) = self.nodes.cached_config(node_id) {
            return Ok(CommandAck {
                command_id: String::new(),
                success: true,
                error: None,
                error_code: None,
                data: Some(c.value),
            });
        }
        let session = self
            .nodes
            .session(node_id)
            .ok_or(CommandFailure::NotConnected)?;
        let action = json!({"type": "get_config"});
        let spec = validate_command(session.device_type, &action).map_err(invalid)?;
        self.nodes.command(node_id, spec, &action, wait).await
    }
}

/// Keeps this replica's heartbeat and prunes replicas that stopped, until
/// `shutdown`; with NATS, also answers other replicas' requests about the nodes
/// connected here.
pub async fn spawn(state: AppState, mut shutdown: watch::Receiver<bool>) {
    let started = now_ms();
    if let Err(e) = state
        .store
        .replica_alive(&state.instance, started, started)
        .await
    {
        tracing::warn!(error = %e, "could not record this manager replica");
    }
    let s = state.clone();
    let mut stop = shutdown.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(PRESENCE_EVERY);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait_for(|d| *d) => return,
            }
            s.nodes.presence.flush(&s).await;
        }
    });
    let s = state.clone();
    let mut stop = shutdown.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(HEARTBEAT);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait_for(|d| *d) => return,
            }
            let now = now_ms();
            if let Err(e) = s.store.replica_alive(&s.instance, started, now).await {
                tracing::warn!(error = %e, "could not record that this manager replica is alive");
            }
            match s.store.prune_replicas(now - PRUNE_AFTER_MS).await {
                Ok(n) if n > 0 => {
                    tracing::info!(
                        removed = n,
                        "removed the presence of nodes of stopped manager replicas"
                    )
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "could not prune stopped manager replicas"),
            }
        }
    });
    let Some((client, cluster)) = state.peers.client() else {
        return;
    };
    let mut sub = match client.subscribe(subject(cluster, &state.instance)).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot answer other manager replicas about nodes connected here");
            return;
        }
    };
    let client = client.clone();
    tokio::spawn(async move {
        loop {
            let msg = tokio::select! {
                m = sub.next() => match m {
                    Some(m) => m,
                    None => return,
                },
                _ = shutdown.wait_for(|d| *d) => return,
            };
            let Some(reply_to) = msg.reply.clone() else {
                continue;
            };
            let state = state.clone();
            let client = client.clone();
            tokio::spawn(async move {
                let reply = match serde_json::from_slice::<Request>(&msg.payload) {
                    Ok(req) => answer(&state, req).await,
                    Err(e) => {
                        tracing::warn!(error = %e, "ignored a malformed request from another manager replica");
                        Reply {
                            failure: Some(format!("malformed request: {e}")),
                            ..Reply::default()
                        }
                    }
                };
                let body = serde_json::to_vec(&reply).unwrap_or_default();
                if let Err(e) = client.publish(reply_to, body.into()).await {
                    tracing::warn!(error = %e, "could not answer another manager replica");
                }
            });
        }
    });
}
