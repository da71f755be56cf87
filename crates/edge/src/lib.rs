//! Fleetgate's edge agent: the link between an edge's gateway and its manager.
//!
//! It connects to the manager's node listener (`wss://…/ws/node`, TLS only),
//! registers with a single-use token the first time and stores the node id and
//! secret it is given (`edge-node.json`, 0600), then reconnects with them, waiting
//! 1, 2, 4 … 60 s between failed attempts. After authenticating it tells the
//! manager which snapshot it serves (`config_status`); every `config_snapshot` it
//! receives is adopted into the gateway's input ([`ConfigFeed`]), and once the
//! gateway reports the result the agent answers `config_ack` (and keeps the
//! snapshot on disk, `edge-snapshot.json`, 0600) or `config_nack` with the
//! gateway's error (the previous configuration keeps serving). It also sends
//! `health` (every 15 s) and `stats` (every second) and answers `ping`.
//!
//! It also runs the edge's L4 flows ([`flows`]): the manager's flow commands
//! (`create_flow` … `remove_output`, and the flows of `update_config`) are
//! carried out and acked, the flows' counters go out in every `stats`, and
//! their failures as `event`s (queued while the manager is away). Its tunnel
//! ends ([`tunnels`]) are created and deleted by `create_tunnel` / `delete_tunnel`
//! and reported in `stats.tunnels`. Its deployments ([`deployments`]) are
//! created, changed and read by the deployment commands (carried out in the
//! background, acked when done) and routed by the edge's own gateway: their
//! routes are merged into the gateway's input on top of every snapshot.
//!
//! The connection to the manager itself is [`node_link`], shared with the
//! relay role of `fleetgate relay`.
//!
//! The manager being unreachable never stops the gateway: it serves the last
//! applied snapshot, from disk after a restart.

pub mod deployments;
pub mod files;
pub mod flows;
pub mod node_link;
pub mod tls;
pub mod tunnels;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleetgate_core::time::now_ms;
use fleetgate_protocol::delta::{self, ConfigDelta};
use fleetgate_protocol::node::truncate;
use fleetgate_protocol::sync::{
    self, AppliedConfig, ConfigNack, ReceivedSnapshot, SnapshotAssembler,
};
use fleetgate_protocol::{ConfigFeed, DataPlaneConfig, StatusLink};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};

use deployments::{EdgeDeployments, EdgeFeed};
pub use files::StoredSnapshot;
use flows::FlowEngine;
pub use tls::Trust;
use tunnels::TunnelEngine;

pub use node_link::{NodeLink, NodeRole, MAX_BACKOFF};
/// The gateway must apply a snapshot within this, or it is nacked.
const APPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// Acks of background commands waiting to be sent.
const REPLY_QUEUE: usize = 256;

/// How an edge reaches its manager.
#[derive(Debug, Clone)]
pub struct EdgeOptions {
    /// `wss://host:port`, optionally with a path (default `/ws/node`).
    pub manager_url: String,
    /// The single-use registration token, for the first connection.
    pub token: Option<String>,
    /// Where the identity, the last applied snapshot and the deployments are
    /// kept.
    pub data_dir: PathBuf,
    pub trust: Trust,
    /// The Docker engine's unix socket, for deployments on Docker.
    pub docker_socket: PathBuf,
}

/// Why an edge cannot start.
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    #[error("edge.manager_url: {0}")]
    Url(String),
    #[error("manager TLS: {0}")]
    Tls(String),
    #[error("no registration token (edge.token, --token) and no identity stored in {0}")]
    NoIdentity(String),
}

/// A parsed `wss://` manager URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagerUrl {
    pub host: String,
    pub port: u16,
    pub path: String,
}

impl ManagerUrl {
    pub fn parse(url: &str) -> Result<Self, String> {
        let lower = url.to_ascii_lowercase();
        let rest = if lower.starts_with("wss://") {
            &url[6..]
        } else if lower.starts_with("ws://") {
            return Err("plain ws:// is not allowed; use wss://".into());
        } else {
            return Err(format!("must be a wss:// URL, got {url:?}"));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.contains('@') {
            return Err("must not hold credentials; use edge.token".into());
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or("unclosed [ in the host")?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| format!("bad port {p:?}"))?,
                None if after.is_empty() => 443,
                None => return Err(format!("unexpected {after:?} after the host")),
            };
            (h.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (
                    h.to_string(),
                    p.parse().map_err(|_| format!("bad port {p:?}"))?,
                ),
                None => (authority.to_string(), 443),
            }
        };
        if host.is_empty() {
            return Err("has no host".into());
        }
        let path = match path {
            "" | "/" => "/ws/node".to_string(),
            p => p.to_string(),
        };
        Ok(Self { host, port, path })
    }

    fn ws_url(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        format!("wss://{host}:{}{}", self.port, self.path)
    }
}

/// Reads the last applied snapshot from `data_dir` (what the gateway serves at start).
pub fn stored_snapshot(data_dir: &std::path::Path) -> Option<StoredSnapshot> {
    files::load_snapshot(data_dir)
}

/// The agent: one per edge process.
pub struct EdgeAgent {
    link: NodeLink,
    /// The gateway's input: the manager's snapshots with the deployments'
    /// routes on top.
    feed: Arc<EdgeFeed>,
    status: StatusLink,
    /// What the gateway serves of the manager's snapshots.
    applied: Mutex<AppliedConfig>,
    /// The snapshot `applied` names, which a `config_delta` applies to.
    served: Mutex<Option<Arc<DataPlaneConfig>>>,
    started: Instant,
    flows: FlowEngine,
    tunnels: TunnelEngine,
    deployments: Arc<EdgeDeployments>,
    /// Events for the manager, sent while connected (one session at a time).
    events: tokio::sync::Mutex<mpsc::Receiver<Value>>,
    /// Acks of the commands carried out in the background, and their sender.
    replies: tokio::sync::Mutex<mpsc::Receiver<String>>,
    replies_tx: mpsc::Sender<String>,
    /// The parts of a snapshot being received (one session at a time).
    assembler: Mutex<SnapshotAssembler>,
}

impl EdgeAgent {
    /// `feed` is the gateway's input and `status` its reports; `served` is the
    /// stored snapshot the gateway was started with, if any.
    pub fn new(
        options: EdgeOptions,
        feed: ConfigFeed,
        status: StatusLink,
        served: Option<&StoredSnapshot>,
    ) -> Result<Self, EdgeError> {
        let link = NodeLink::new(options)?;
        // The stored snapshot counts as served only if the gateway took it.
        let took = served.filter(|s| status.latest().applied.revision == s.config.revision);
        let applied = match served {
            Some(s) if took.is_some() => AppliedConfig {
                revision: s.revision,
                digest: Some(s.digest.clone()),
            },
            Some(s) => {
                tracing::warn!(
                    revision = s.revision,
                    "the stored snapshot did not apply; waiting for the manager's"
                );
                AppliedConfig::default()
            }
            None => AppliedConfig::default(),
        };
        let (events_tx, events) = mpsc::channel(flows::EVENT_QUEUE);
        let (replies_tx, replies) = mpsc::channel(REPLY_QUEUE);
        let data_dir = link.options().data_dir.clone();
        let flows = FlowEngine::open(data_dir.clone(), events_tx.clone());
        let feed = Arc::new(EdgeFeed::new(feed));
        let deployments = Arc::new(EdgeDeployments::open(
            &data_dir,
            &link.options().docker_socket,
            feed.clone(),
            status.clone(),
            events_tx.clone(),
        ));
        let tunnels = TunnelEngine::open(data_dir, link.node_id(), events_tx);
        Ok(Self {
            link,
            feed,
            status,
            applied: Mutex::new(applied),
            served: Mutex::new(took.map(|s| Arc::new(s.config.clone()))),
            started: Instant::now(),
            flows,
            tunnels,
            deployments,
            events: tokio::sync::Mutex::new(events),
            replies: tokio::sync::Mutex::new(replies),
            replies_tx,
            assembler: Mutex::new(SnapshotAssembler::default()),
        })
    }

    /// What the gateway serves of the manager's snapshots.
    pub fn applied(&self) -> AppliedConfig {
        self.applied.lock().map(|a| a.clone()).unwrap_or_default()
    }

    /// Starts the stored flows and tunnels (and, meanwhile, the deployments left
    /// running), then connects, and reconnects, until `shutdown` becomes true
    /// (which stops them all).
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        self.flows.start_stored().await;
        self.tunnels.start_stored().await;
        let deployments = self.deployments.clone();
        let resumed = tokio::spawn(async move { deployments.start_stored().await });
        self.link.run(&self, &mut shutdown).await;
        resumed.abort();
        self.deployments.shutdown().await;
        self.tunnels.shutdown().await;
        self.flows.shutdown().await;
    }

    /// The snapshot a `config_delta` leads to from the one served; `Err` (why)
    /// when it does not apply to what is served or does not give its digest.
    fn delta(&self, payload: Value) -> Result<ReceivedSnapshot, String> {
        let d: ConfigDelta = serde_json::from_value(payload).map_err(|e| {
            format!(
                "config_delta is not valid: {}",
                truncate(e.to_string(), 512)
            )
        })?;
        let served = self.applied().digest;
        if served.as_deref() != Some(d.base_digest.as_str()) {
            return Err(format!(
                "config_delta of revision {} applies to another snapshot than the one served",
                d.revision
            ));
        }
        let base = self
            .served
            .lock()
            .ok()
            .and_then(|s| s.clone())
            .ok_or("no snapshot is held to apply config_delta to")?;
        let config = d.apply(&base);
        let json = serde_json::to_string(&config).map_err(|e| e.to_string())?;
        if sync::digest(&json) != d.digest {
            return Err(format!(
                "config_delta of revision {} does not give its digest",
                d.revision
            ));
        }
        Ok(ReceivedSnapshot {
            revision: d.revision,
            digest: d.digest,
            config,
        })
    }

    /// Applies a snapshot through the gateway; returns the `config_ack` or
    /// `config_nack` to send.
    async fn apply(&self, snap: ReceivedSnapshot) -> String {
        match self.apply_inner(&snap).await {
            Ok(left_out) => {
                let applied = AppliedConfig {
                    revision: snap.revision,
                    digest: Some(snap.digest.clone()),
                };
                if let Ok(mut a) = self.applied.lock() {
                    *a = applied.clone();
                }
                if let Ok(mut s) = self.served.lock() {
                    *s = Some(Arc::new(snap.config.clone()));
                }
                self.deployments.report_left_out(left_out);
                tracing::info!(
                    revision = snap.revision,
                    "applied the manager's configuration"
                );
                let dir = self.link.options().data_dir.clone();
                let stored = StoredSnapshot {
                    revision: snap.revision,
                    digest: snap.digest,
                    config: snap.config,
                };
                let saved =
                    tokio::task::spawn_blocking(move || files::save_snapshot(&dir, &stored)).await;
                match saved {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "cannot store the applied snapshot; a restart without the manager would not serve it")
                    }
                    Err(e) => tracing::error!(error = %e, "storing the applied snapshot failed"),
                }
                sync::envelope(sync::CONFIG_ACK, &applied)
            }
            Err(error) => {
                tracing::warn!(revision = snap.revision, %error, "refused the manager's configuration; the previous one keeps serving");
                // The deployments' routes go on top of what is served.
                let served = self.served.lock().ok().and_then(|s| s.clone());
                self.feed
                    .restore(served.unwrap_or_else(|| Arc::new(DataPlaneConfig::default())));
                sync::envelope(
                    sync::CONFIG_NACK,
                    &ConfigNack {
                        revision: snap.revision,
                        digest: Some(snap.digest),
                        error: truncate(error, sync::MAX_ERROR_BYTES),
                    },
                )
            }
        }
    }

    /// Has the gateway serve `snap` with the deployments' routes on top; the
    /// deployments it leaves out (newly), with why.
    async fn apply_inner(&self, snap: &ReceivedSnapshot) -> Result<Vec<(String, String)>, String> {
        if snap.config.revision != snap.revision {
            return Err(format!(
                "snapshot says revision {} but holds revision {}",
                snap.revision, snap.config.revision
            ));
        }
        let served = self.status.latest().applied.revision;
        if snap.revision != 0 && snap.revision < served {
            return Err(format!(
                "revision {} is older than revision {served}, which this edge serves",
                snap.revision
            ));
        }
        let since = now_ms();
        let (target, left_out) = self.feed.adopt(&snap.config);
        let mut link = self.status.clone();
        let waited = tokio::time::timeout(APPLY_TIMEOUT, async {
            loop {
                let r = link.latest();
                let a = r.applied;
                if a.revision == target.revision
                    && a.certificates == target.certificates
                    && a.sites == target.sites
                {
                    return Ok(());
                }
                let version = i64::try_from(snap.revision).unwrap_or(i64::MAX);
                if let Some(f) = r
                    .errors
                    .iter()
                    .rev()
                    .find(|f| f.part == "revision" && f.version == version && f.at_ms >= since)
                {
                    return Err(f.message.clone());
                }
                tokio::select! {
                    alive = link.changed() => if !alive {
                        return Err("the gateway stopped".to_string());
                    },
                    () = tokio::time::sleep(Duration::from_secs(1)) => {
                        let _ = link.fresh(Duration::from_millis(200)).await;
                    }
                }
            }
        })
        .await;
        waited
            .unwrap_or_else(|_| {
                Err(format!(
                    "the gateway did not apply revision {} within {} s",
                    snap.revision,
                    APPLY_TIMEOUT.as_secs()
                ))
            })
            .map(|()| left_out)
    }

    async fn health(&self) -> Value {
        let status = self.status.latest();
        let (active, total) = self.flows.counts().await;
        let (ready_tunnels, total_tunnels) = self.tunnels.counts();
        json!({
            "status": if status.errors.is_empty() { "ok" } else { "degraded" },
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_secs": self.started.elapsed().as_secs(),
            "active_flows": active,
            "total_flows": total,
            "active_tunnels": ready_tunnels,
            "total_tunnels": total_tunnels,
            "config_revision": self.applied().revision,
            "routes": status.routes,
            "total_deployments": self.deployments.count().await,
            "capabilities": {
                "flow_inputs": flows::INPUT_TYPES,
                "flow_outputs": flows::OUTPUT_TYPES,
                "deployments": true,
            },
        })
    }

    async fn stats(&self) -> Value {
        let status = self.status.latest();
        let requests: u64 = status.traffic.routes.values().map(|r| r.requests()).sum();
        let flows = self.flows.stats().await;
        let active = flows.iter().filter(|f| f["state"] == "running").count();
        json!({
            "total_flows": flows.len(),
            "active_flows": active,
            "flows": flows,
            "tunnels": self.tunnels.statuses(),
            "uptime_secs": self.started.elapsed().as_secs(),
            "gateway": {
                "revision": status.applied.revision,
                "routes": status.routes,
                "requests": requests,
            },
        })
    }

    /// Answers a node-protocol `command`: `get_config` with what is served (no
    /// secrets) and the flows, the flow commands through the flow engine, the
    /// tunnel commands through the tunnel engine, the deployment commands in
    /// the background (acked when done, see [`deployments`]), anything else as
    /// not supported by this edge.
    async fn command(&self, payload: &Value) -> Option<String> {
        let (id, action) = node_link::command_parts(payload);
        if action == "get_config" {
            return Some(sync::envelope(
                "config_response",
                &self.config_document().await,
            ));
        }
        let params = payload.get("action").unwrap_or(&Value::Null);
        if deployments::ACTIONS.contains(&action.as_str()) {
            let engine = self.deployments.clone();
            let replies = self.replies_tx.clone();
            let params = params.clone();
            tokio::spawn(async move {
                let frame = match engine.execute(&action, &params).await {
                    Ok(data) => node_link::command_ack(&id, Ok(Some(data))),
                    Err(r) => {
                        tracing::info!(command = %action, error = %r.message, "refused a manager command");
                        node_link::command_refused(&id, r.message, r.code, r.data)
                    }
                };
                if replies.send(frame).await.is_err() {
                    tracing::debug!(command = %action, "the agent stopped before the ack was sent");
                }
            });
            return None;
        }
        let result = if action == "update_config" {
            self.update_config(params).await
        } else if flows::commands::ACTIONS.contains(&action.as_str()) {
            flows::commands::execute(&self.flows, &action, params).await
        } else if tunnels::ACTIONS.contains(&action.as_str()) {
            tunnels::execute(&self.tunnels, &action, params).await
        } else {
            Err(flows::FlowError::new(format!("Unknown command: {action}")))
        };
        let result = result.map(|()| None).map_err(|e| {
            tracing::info!(command = %action, error = %e, "refused a manager command");
            (e.message, e.code)
        });
        Some(node_link::command_ack(&id, result))
    }

    /// `update_config`: the configuration's `flows` and `tunnels`, each applied as
    /// far as it can be; the errors of both are reported together.
    async fn update_config(&self, params: &Value) -> Result<(), flows::FlowError> {
        let flows = flows::commands::execute(&self.flows, "update_config", params).await;
        let tunnels = match params.get("config").filter(|c| c.is_object()) {
            Some(config) => tunnels::update_config(&self.tunnels, config).await,
            None => Ok(()),
        };
        match (flows, tunnels) {
            (Ok(()), Ok(())) => Ok(()),
            (Err(e), Ok(())) | (Ok(()), Err(e)) => Err(e),
            (Err(f), Err(t)) => Err(flows::FlowError {
                message: format!("{}; {}", f.message, t.message),
                code: f.code,
            }),
        }
    }

    /// Answers a `config_delta` or `config_snapshot` frame.
    async fn config_frame(&self, kind: &str, payload: Value) -> Option<String> {
        if kind == delta::CONFIG_DELTA {
            return Some(match self.delta(payload) {
                Ok(snap) => self.apply(snap).await,
                Err(why) => {
                    tracing::info!(reason = %why, "asking the manager for the whole configuration");
                    sync::envelope(sync::CONFIG_STATUS, &self.applied())
                }
            });
        }
        let accepted = self
            .assembler
            .lock()
            .map_err(|_| "snapshot assembler poisoned".to_string())
            .and_then(|mut a| a.accept(payload).map_err(|e| e.to_string()));
        match accepted {
            Ok(Some(snap)) => Some(self.apply(snap).await),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(error = %e, "dropped a configuration snapshot");
                None
            }
        }
    }

    /// What `get_config` answers: the node protocol's configuration shape
    /// (`version`, `device_name`, `flows`, `tunnels` without their secrets and
    /// omitted when there are none) with the gateway revision served.
    async fn config_document(&self) -> Value {
        let applied = self.applied();
        let status = self.status.latest();
        let tunnels = self.tunnels.configs_without_secrets().await;
        let mut doc = json!({
            "version": 1,
            "device_name": device_name(),
            "flows": self.flows.configs().await,
            "revision": applied.revision,
            "digest": applied.digest,
            "routes": status.routes,
        });
        if !tunnels.is_empty() {
            doc["tunnels"] = json!(tunnels);
        }
        doc
    }
}

#[async_trait::async_trait]
impl NodeRole for EdgeAgent {
    /// Tells the manager which snapshot is served; a snapshot half received in
    /// an earlier session is forgotten.
    async fn greeting(&self) -> Vec<String> {
        if let Ok(mut a) = self.assembler.lock() {
            *a = SnapshotAssembler::default();
        }
        // Acks for an earlier session: nobody waits for them any more.
        if let Ok(mut r) = self.replies.try_lock() {
            while r.try_recv().is_ok() {}
        }
        vec![sync::envelope(sync::CONFIG_STATUS, &self.applied())]
    }

    async fn health(&self) -> Value {
        EdgeAgent::health(self).await
    }

    async fn stats(&self) -> Value {
        EdgeAgent::stats(self).await
    }

    async fn frame(&self, kind: &str, payload: Value) -> Option<String> {
        match kind {
            delta::CONFIG_DELTA | sync::CONFIG_SNAPSHOT => self.config_frame(kind, payload).await,
            "command" => self.command(&payload).await,
            _ => None,
        }
    }

    fn registered(&self, node_id: &str) {
        self.tunnels.set_edge_id(Some(node_id.to_string()));
    }

    fn events(&self) -> Option<&tokio::sync::Mutex<mpsc::Receiver<Value>>> {
        Some(&self.events)
    }

    fn replies(&self) -> Option<&tokio::sync::Mutex<mpsc::Receiver<String>>> {
        Some(&self.replies)
    }
}

/// This machine's host name, the edge's `device_name`.
fn device_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .filter(|h| !h.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manager_urls() {
        let u = ManagerUrl::parse("wss://m.example:3443").expect("url");
        assert_eq!(
            u,
            ManagerUrl {
                host: "m.example".into(),
                port: 3443,
                path: "/ws/node".into()
            }
        );
        assert_eq!(u.ws_url(), "wss://m.example:3443/ws/node");
        let v6 = ManagerUrl::parse("WSS://[::1]/custom").expect("v6");
        assert_eq!(
            (v6.host.as_str(), v6.port, v6.path.as_str()),
            ("::1", 443, "/custom")
        );
        assert_eq!(v6.ws_url(), "wss://[::1]:443/custom");
        for bad in [
            "ws://m:1",
            "https://m",
            "wss://",
            "wss://u:p@m",
            "wss://m:x",
            "wss://[::1",
        ] {
            assert!(ManagerUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
