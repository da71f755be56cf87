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
//! and reported in `stats.tunnels`.
//!
//! The manager being unreachable never stops the gateway: it serves the last
//! applied snapshot, from disk after a restart.

pub mod files;
pub mod flows;
pub mod tls;
pub mod tunnels;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleetgate_core::time::now_ms;
use fleetgate_protocol::delta::{self, ConfigDelta};
use fleetgate_protocol::node::{truncate, PROTOCOL_VERSION};
use fleetgate_protocol::sync::{
    self, AppliedConfig, ConfigNack, ReceivedSnapshot, SnapshotAssembler,
};
use fleetgate_protocol::{ConfigFeed, DataPlaneConfig, StatusLink};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;

pub use files::StoredSnapshot;
use flows::FlowEngine;
pub use tls::Trust;
use tunnels::TunnelEngine;

/// Waits between failed connection attempts: doubling from 1 s to this.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Connecting (TCP, TLS and the WebSocket upgrade) must finish within this.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The manager must answer the auth frame within this.
const AUTH_TIMEOUT: Duration = Duration::from_secs(10);
/// The gateway must apply a snapshot within this, or it is nacked.
const APPLY_TIMEOUT: Duration = Duration::from_secs(30);
const HEALTH_EVERY: Duration = Duration::from_secs(15);
const STATS_EVERY: Duration = Duration::from_secs(1);
/// Largest frame accepted from the manager (a snapshot part is under 5 MiB).
const MAX_FRAME: usize = 8 * 1024 * 1024;

/// How an edge reaches its manager.
#[derive(Debug, Clone)]
pub struct EdgeOptions {
    /// `wss://host:port`, optionally with a path (default `/ws/node`).
    pub manager_url: String,
    /// The single-use registration token, for the first connection.
    pub token: Option<String>,
    /// Where the identity and the last applied snapshot are kept.
    pub data_dir: PathBuf,
    pub trust: Trust,
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

/// `auth_error` texts saying the manager does not know the node id and secret.
const IDENTITY_UNKNOWN: [&str; 2] = ["Node not registered", "Invalid node secret"];

/// The agent: one per edge process.
pub struct EdgeAgent {
    options: EdgeOptions,
    url: ManagerUrl,
    tls: Arc<rustls::ClientConfig>,
    feed: ConfigFeed,
    status: StatusLink,
    /// What the gateway serves of the manager's snapshots.
    applied: Mutex<AppliedConfig>,
    /// The snapshot `applied` names, which a `config_delta` applies to.
    served: Mutex<Option<Arc<DataPlaneConfig>>>,
    /// The manager refused the stored identity as unknown (the node was deleted,
    /// or its secret changed): the next attempt registers with the token, if any.
    identity_refused: std::sync::atomic::AtomicBool,
    started: Instant,
    flows: FlowEngine,
    tunnels: TunnelEngine,
    /// Events for the manager, sent while connected (one session at a time).
    events: tokio::sync::Mutex<mpsc::Receiver<Value>>,
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// How a session ended.
enum Ended {
    /// Authenticated, then the connection closed: reconnect soon.
    AfterAuth(String),
    /// Shutting down.
    Shutdown,
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
        let url = ManagerUrl::parse(&options.manager_url).map_err(EdgeError::Url)?;
        let tls = tls::client_config(&options.trust).map_err(EdgeError::Tls)?;
        if options.token.is_none() && Self::identity(&options).is_none() {
            return Err(EdgeError::NoIdentity(
                options.data_dir.display().to_string(),
            ));
        }
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
        let flows = FlowEngine::open(options.data_dir.clone(), events_tx);
        let node_id = Self::identity(&options).map(|c| c.node_id);
        let tunnels = TunnelEngine::open(options.data_dir.clone(), node_id);
        Ok(Self {
            options,
            url,
            tls,
            feed,
            status,
            applied: Mutex::new(applied),
            served: Mutex::new(took.map(|s| Arc::new(s.config.clone()))),
            identity_refused: std::sync::atomic::AtomicBool::new(false),
            started: Instant::now(),
            flows,
            tunnels,
            events: tokio::sync::Mutex::new(events),
        })
    }

    /// The stored identity, if it belongs to the configured manager.
    fn identity(options: &EdgeOptions) -> Option<files::Credentials> {
        files::load_credentials(&options.data_dir).filter(|c| c.manager_url == options.manager_url)
    }

    /// What the gateway serves of the manager's snapshots.
    pub fn applied(&self) -> AppliedConfig {
        self.applied.lock().map(|a| a.clone()).unwrap_or_default()
    }

    /// Starts the stored flows and tunnels, then connects, and reconnects, until
    /// `shutdown` becomes true (which stops them).
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        self.flows.start_stored().await;
        self.tunnels.start_stored().await;
        self.connect_until(&mut shutdown).await;
        self.tunnels.shutdown().await;
        self.flows.shutdown().await;
    }

    async fn connect_until(&self, shutdown: &mut watch::Receiver<bool>) {
        let mut backoff = Duration::from_secs(1);
        loop {
            if *shutdown.borrow() {
                return;
            }
            match self.session(shutdown).await {
                Ok(Ended::Shutdown) => return,
                Ok(Ended::AfterAuth(why)) => {
                    tracing::warn!(manager = %self.options.manager_url, reason = %why, "manager connection ended; reconnecting");
                    backoff = Duration::from_secs(1);
                }
                Err(why) => {
                    tracing::warn!(manager = %self.options.manager_url, reason = %why, retry_in_secs = backoff.as_secs(), "cannot reach the manager; serving the last applied configuration");
                }
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = async { let _ = shutdown.wait_for(|down| *down).await; } => return,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn connect(&self) -> Result<Ws, String> {
        let addr = (self.url.host.as_str(), self.url.port);
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let name = rustls::pki_types::ServerName::try_from(self.url.host.clone())
            .map_err(|e| format!("host name: {e}"))?;
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            .max_message_size(Some(MAX_FRAME))
            .max_frame_size(Some(MAX_FRAME));
        let (ws, _) =
            tokio_tungstenite::client_async_with_config(self.url.ws_url(), tls, Some(config))
                .await
                .map_err(|e| format!("WebSocket: {e}"))?;
        Ok(ws)
    }

    /// One connection: `Err` before authentication succeeded.
    async fn session(&self, shutdown: &mut watch::Receiver<bool>) -> Result<Ended, String> {
        let mut ws = tokio::time::timeout(CONNECT_TIMEOUT, self.connect())
            .await
            .map_err(|_| "connecting timed out".to_string())??;
        let refused = self
            .identity_refused
            .load(std::sync::atomic::Ordering::Relaxed);
        let identity =
            Self::identity(&self.options).filter(|_| !(refused && self.options.token.is_some()));
        let mut payload = json!({
            "software_version": env!("CARGO_PKG_VERSION"),
            "protocol_version": PROTOCOL_VERSION,
        });
        match (&identity, &self.options.token) {
            (Some(c), _) => {
                payload["node_id"] = json!(c.node_id);
                payload["node_secret"] = json!(c.node_secret);
            }
            (None, Some(token)) => payload["registration_token"] = json!(token),
            (None, None) => return Err("no registration token and no stored identity".into()),
        }
        send(
            &mut ws,
            json!({"type": "auth", "payload": payload}).to_string(),
        )
        .await?;
        let reply = tokio::time::timeout(AUTH_TIMEOUT, next_text(&mut ws))
            .await
            .map_err(|_| "no answer to the auth frame within 10 s".to_string())??
            .ok_or("the manager closed the connection during authentication")?;
        let reply: Value =
            serde_json::from_str(&reply).map_err(|_| "the manager's answer is not JSON")?;
        match reply.get("type").and_then(Value::as_str) {
            Some("register_ack") => {
                let field = |k: &str| {
                    reply["payload"][k]
                        .as_str()
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                };
                let (Some(node_id), Some(node_secret)) = (field("node_id"), field("node_secret"))
                else {
                    return Err("register_ack without node_id and node_secret".into());
                };
                files::save_credentials(
                    &self.options.data_dir,
                    &files::Credentials {
                        manager_url: self.options.manager_url.clone(),
                        node_id: node_id.clone(),
                        node_secret,
                    },
                )
                .map_err(|e| format!("cannot store the node identity: {e}"))?;
                self.identity_refused
                    .store(false, std::sync::atomic::Ordering::Relaxed);
                self.tunnels.set_edge_id(Some(node_id.clone()));
                tracing::info!(node = %node_id, "registered with the manager");
            }
            Some("auth_ok") => {
                tracing::info!(node = ?identity.as_ref().map(|c| &c.node_id), "connected to the manager");
            }
            Some("auth_error") => {
                let msg = reply
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("no reason given");
                // The manager no longer knows this identity: a token given to the
                // edge registers it again (the manager decides whether it may).
                if identity.is_some() && IDENTITY_UNKNOWN.contains(&msg) {
                    self.identity_refused
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                    if self.options.token.is_some() {
                        tracing::warn!(reason = msg, "the manager refused the stored node identity; registering with the token next");
                    }
                }
                return Err(format!(
                    "the manager refused authentication: {}",
                    truncate(msg.to_string(), 256)
                ));
            }
            other => return Err(format!("unexpected answer to auth: {other:?}")),
        }
        // Authenticated.
        let why = self.serve(&mut ws, shutdown).await;
        let _ = ws.close(None).await;
        Ok(why)
    }

    /// The authenticated connection, until it ends.
    async fn serve(&self, ws: &mut Ws, shutdown: &mut watch::Receiver<bool>) -> Ended {
        if let Err(e) = send(ws, sync::envelope(sync::CONFIG_STATUS, &self.applied())).await {
            return Ended::AfterAuth(e);
        }
        if let Err(e) = send(ws, sync::envelope("health", &self.health().await)).await {
            return Ended::AfterAuth(e);
        }
        let mut events = self.events.lock().await;
        let mut health = tokio::time::interval(HEALTH_EVERY);
        health.tick().await;
        let mut stats = tokio::time::interval(STATS_EVERY);
        stats.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut assembler = SnapshotAssembler::default();
        loop {
            let frame = tokio::select! {
                () = async { let _ = shutdown.wait_for(|down| *down).await; } => return Ended::Shutdown,
                _ = health.tick() => {
                    if let Err(e) = send(ws, sync::envelope("health", &self.health().await)).await {
                        return Ended::AfterAuth(e);
                    }
                    continue;
                }
                _ = stats.tick() => {
                    if let Err(e) = send(ws, sync::envelope("stats", &self.stats().await)).await {
                        return Ended::AfterAuth(e);
                    }
                    continue;
                }
                Some(event) = events.recv() => {
                    if let Err(e) = send(ws, sync::envelope("event", &event)).await {
                        return Ended::AfterAuth(e);
                    }
                    continue;
                }
                frame = next_text(ws) => frame,
            };
            let text = match frame {
                Ok(Some(t)) => t,
                Ok(None) => return Ended::AfterAuth("closed by the manager".into()),
                Err(e) => return Ended::AfterAuth(e),
            };
            let Ok(Value::Object(mut msg)) = serde_json::from_str::<Value>(&text) else {
                tracing::debug!(
                    bytes = text.len(),
                    "ignored a manager frame that is not a JSON object"
                );
                continue;
            };
            drop(text);
            let kind = msg
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let payload = msg.remove("payload").unwrap_or(Value::Null);
            let reply = match kind.as_str() {
                delta::CONFIG_DELTA => Some(match self.delta(payload) {
                    Ok(snap) => self.apply(snap).await,
                    Err(why) => {
                        tracing::info!(reason = %why, "asking the manager for the whole configuration");
                        sync::envelope(sync::CONFIG_STATUS, &self.applied())
                    }
                }),
                sync::CONFIG_SNAPSHOT => match assembler.accept(payload) {
                    Ok(Some(snap)) => Some(self.apply(snap).await),
                    Ok(None) => None,
                    Err(e) => {
                        tracing::warn!(error = %e, "dropped a configuration snapshot");
                        None
                    }
                },
                "ping" => Some(sync::envelope("pong", &Value::Null)),
                "command" => Some(self.command(&payload).await),
                _ => None,
            };
            if let Some(reply) = reply {
                if let Err(e) = send(ws, reply).await {
                    return Ended::AfterAuth(e);
                }
            }
        }
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
            Ok(()) => {
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
                tracing::info!(
                    revision = snap.revision,
                    "applied the manager's configuration"
                );
                let dir = self.options.data_dir.clone();
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

    async fn apply_inner(&self, snap: &ReceivedSnapshot) -> Result<(), String> {
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
        let target = self.feed.adopt(&snap.config);
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
        waited.unwrap_or_else(|_| {
            Err(format!(
                "the gateway did not apply revision {} within {} s",
                snap.revision,
                APPLY_TIMEOUT.as_secs()
            ))
        })
    }

    async fn health(&self) -> Value {
        let status = self.status.latest();
        let (active, total) = self.flows.counts().await;
        json!({
            "status": if status.errors.is_empty() { "ok" } else { "degraded" },
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_secs": self.started.elapsed().as_secs(),
            "active_flows": active,
            "total_flows": total,
            "config_revision": self.applied().revision,
            "routes": status.routes,
            "capabilities": {
                "flow_inputs": flows::INPUT_TYPES,
                "flow_outputs": flows::OUTPUT_TYPES,
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
    /// tunnel commands through the tunnel engine,
    /// anything else as not supported by this edge.
    async fn command(&self, payload: &Value) -> String {
        let id = payload
            .get("command_id")
            .and_then(Value::as_str)
            .map(|s| truncate(s.to_string(), 128))
            .unwrap_or_default();
        let action = payload
            .get("action")
            .and_then(|a| a.get("type"))
            .and_then(Value::as_str)
            .map(|s| truncate(s.to_string(), 64))
            .unwrap_or_default();
        if action == "get_config" {
            return sync::envelope("config_response", &self.config_document().await);
        }
        let params = payload.get("action").unwrap_or(&Value::Null);
        let result = if flows::commands::ACTIONS.contains(&action.as_str()) {
            flows::commands::execute(&self.flows, &action, params).await
        } else if tunnels::ACTIONS.contains(&action.as_str()) {
            tunnels::execute(&self.tunnels, &action, params).await
        } else {
            Err(flows::FlowError::new(format!("Unknown command: {action}")))
        };
        let ack = match result {
            Ok(()) => json!({"command_id": id, "success": true, "error": null}),
            Err(e) => {
                tracing::info!(command = %action, error = %e, "refused a manager command");
                json!({"command_id": id, "success": false,
                       "error": truncate(e.message, MAX_ERROR_BYTES), "error_code": e.code})
            }
        };
        sync::envelope("command_ack", &ack)
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

/// Longest error text put in a `command_ack`.
const MAX_ERROR_BYTES: usize = 4096;

/// This machine's host name, the edge's `device_name`.
fn device_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .filter(|h| !h.is_empty())
}

async fn send(ws: &mut Ws, text: String) -> Result<(), String> {
    ws.send(Message::Text(text.into()))
        .await
        .map_err(|e| format!("send: {e}"))
}

/// The next text frame; `None` when the connection closed.
async fn next_text(ws: &mut Ws) -> Result<Option<String>, String> {
    loop {
        match ws.next().await {
            None | Some(Ok(Message::Close(_))) => return Ok(None),
            Some(Err(e)) => return Err(format!("receive: {e}")),
            Some(Ok(Message::Text(t))) => return Ok(Some(t.to_string())),
            // Pings are answered by the socket; binary frames are not used.
            Some(Ok(_)) => {}
        }
    }
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
