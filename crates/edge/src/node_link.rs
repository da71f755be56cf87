//! The connection of a node to its manager's `/ws/node`, shared by every role that
//! speaks the node protocol — the edge agent and the relay: TLS WebSocket (`wss://`
//! only), registration with a single-use token and then the stored identity
//! (`edge-node.json`, 0600), reconnection waiting 1, 2, 4 … 60 s, `health` every
//! 15 s, `stats` every second, the role's events, and `pong` to `ping`. Everything
//! else a manager sends goes to the role ([`NodeRole`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fleetgate_protocol::node::{truncate, PROTOCOL_VERSION};
use fleetgate_protocol::sync;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;

use crate::{files, tls, EdgeError, EdgeOptions, ManagerUrl};

/// Waits between failed connection attempts: doubling from 1 s to this.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Connecting (TCP, TLS and the WebSocket upgrade) must finish within this.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The manager must answer the auth frame within this.
const AUTH_TIMEOUT: Duration = Duration::from_secs(10);
const HEALTH_EVERY: Duration = Duration::from_secs(15);
const STATS_EVERY: Duration = Duration::from_secs(1);
/// Largest frame accepted from the manager (a snapshot part is under 5 MiB).
const MAX_FRAME: usize = 8 * 1024 * 1024;
/// Longest error text put in a `command_ack`.
pub const MAX_ERROR_BYTES: usize = 4096;

/// `auth_error` texts saying the manager does not know the node id and secret.
const IDENTITY_UNKNOWN: [&str; 2] = ["Node not registered", "Invalid node secret"];

/// What a node does besides keeping its manager connection: its reports and its
/// answers to the manager's frames.
#[async_trait::async_trait]
pub trait NodeRole: Send + Sync {
    /// Frames sent right after authentication, before the first `health`.
    async fn greeting(&self) -> Vec<String> {
        Vec::new()
    }

    /// The `health` payload.
    async fn health(&self) -> Value;

    /// The `stats` payload.
    async fn stats(&self) -> Value;

    /// Answers a manager frame other than `ping` (`command`, and whatever else the
    /// role knows); the frame to send back, if any. Unknown types are ignored.
    async fn frame(&self, kind: &str, payload: Value) -> Option<String>;

    /// The node id the manager assigned at registration.
    fn registered(&self, _node_id: &str) {}

    /// Events for the manager, if the role reports any (sent while connected).
    fn events(&self) -> Option<&tokio::sync::Mutex<mpsc::Receiver<Value>>> {
        None
    }

    /// Whole frames to send as they come, if the role answers some frames later
    /// than [`NodeRole::frame`] returns (the ack of a command carried out in
    /// the background, so that `health`, `stats` and other commands go on
    /// meanwhile).
    fn replies(&self) -> Option<&tokio::sync::Mutex<mpsc::Receiver<String>>> {
        None
    }
}

/// A refused `command_ack` carrying `data` (what the refusal is about: the
/// problems found in a file, say).
pub fn command_refused(
    command_id: &str,
    message: String,
    code: &str,
    data: Option<Value>,
) -> String {
    let mut ack = json!({"command_id": command_id, "success": false,
        "error": truncate(message, MAX_ERROR_BYTES), "error_code": code});
    if let Some(data) = data {
        ack["data"] = data;
    }
    sync::envelope("command_ack", &ack)
}

/// A `command_ack` frame.
pub fn command_ack(
    command_id: &str,
    result: Result<Option<Value>, (String, Option<&'static str>)>,
) -> String {
    let ack = match result {
        Ok(None) => json!({"command_id": command_id, "success": true, "error": null}),
        Ok(Some(data)) => {
            json!({"command_id": command_id, "success": true, "error": null, "data": data})
        }
        Err((message, code)) => json!({"command_id": command_id, "success": false,
            "error": truncate(message, MAX_ERROR_BYTES), "error_code": code}),
    };
    sync::envelope("command_ack", &ack)
}

/// The `command_id` and action `type` of a `command` payload (bounded in length).
pub fn command_parts(payload: &Value) -> (String, String) {
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
    (id, action)
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

/// A node's connection to its manager.
pub struct NodeLink {
    options: EdgeOptions,
    url: ManagerUrl,
    tls: Arc<rustls::ClientConfig>,
    /// The manager refused the stored identity as unknown (the node was deleted,
    /// or its secret changed): the next attempt registers with the token, if any.
    identity_refused: AtomicBool,
}

impl NodeLink {
    /// Checks the URL, the trust settings and that there is a token or identity.
    pub fn new(options: EdgeOptions) -> Result<Self, EdgeError> {
        let url = ManagerUrl::parse(&options.manager_url).map_err(EdgeError::Url)?;
        let tls = tls::client_config(&options.trust).map_err(EdgeError::Tls)?;
        if options.token.is_none() && identity(&options).is_none() {
            return Err(EdgeError::NoIdentity(
                options.data_dir.display().to_string(),
            ));
        }
        Ok(NodeLink {
            options,
            url,
            tls,
            identity_refused: AtomicBool::new(false),
        })
    }

    pub fn options(&self) -> &EdgeOptions {
        &self.options
    }

    /// The node id stored for this manager, if registered.
    pub fn node_id(&self) -> Option<String> {
        identity(&self.options).map(|c| c.node_id)
    }

    /// Connects, and reconnects, until `shutdown` becomes true.
    pub async fn run(&self, role: &dyn NodeRole, shutdown: &mut watch::Receiver<bool>) {
        let mut backoff = Duration::from_secs(1);
        loop {
            if *shutdown.borrow() {
                return;
            }
            match self.session(role, shutdown).await {
                Ok(Ended::Shutdown) => return,
                Ok(Ended::AfterAuth(why)) => {
                    tracing::warn!(manager = %self.options.manager_url, reason = %why, "manager connection ended; reconnecting");
                    backoff = Duration::from_secs(1);
                }
                Err(why) => {
                    tracing::warn!(manager = %self.options.manager_url, reason = %why, retry_in_secs = backoff.as_secs(), "cannot reach the manager; carrying on with the last configuration");
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
    async fn session(
        &self,
        role: &dyn NodeRole,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<Ended, String> {
        let mut ws = tokio::time::timeout(CONNECT_TIMEOUT, self.connect())
            .await
            .map_err(|_| "connecting timed out".to_string())??;
        self.authenticate(&mut ws, role).await?;
        let why = serve(&mut ws, role, shutdown).await;
        let _ = ws.close(None).await;
        Ok(why)
    }

    async fn authenticate(&self, ws: &mut Ws, role: &dyn NodeRole) -> Result<(), String> {
        let refused = self.identity_refused.load(Ordering::Relaxed);
        let identity =
            identity(&self.options).filter(|_| !(refused && self.options.token.is_some()));
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
        send(ws, json!({"type": "auth", "payload": payload}).to_string()).await?;
        let reply = tokio::time::timeout(AUTH_TIMEOUT, next_text(ws))
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
                self.identity_refused.store(false, Ordering::Relaxed);
                role.registered(&node_id);
                tracing::info!(node = %node_id, "registered with the manager");
                Ok(())
            }
            Some("auth_ok") => {
                tracing::info!(node = ?identity.as_ref().map(|c| &c.node_id), "connected to the manager");
                Ok(())
            }
            Some("auth_error") => {
                let msg = reply
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("no reason given");
                // The manager no longer knows this identity: a token given to the
                // node registers it again (the manager decides whether it may).
                if identity.is_some() && IDENTITY_UNKNOWN.contains(&msg) {
                    self.identity_refused.store(true, Ordering::Relaxed);
                    if self.options.token.is_some() {
                        tracing::warn!(reason = msg, "the manager refused the stored node identity; registering with the token next");
                    }
                }
                Err(format!(
                    "the manager refused authentication: {}",
                    truncate(msg.to_string(), 256)
                ))
            }
            other => Err(format!("unexpected answer to auth: {other:?}")),
        }
    }
}

/// The stored identity, if any and if it belongs to the configured manager.
pub(crate) fn identity(options: &EdgeOptions) -> Option<files::Credentials> {
    files::load_credentials(&options.data_dir).filter(|c| c.manager_url == options.manager_url)
}

/// The authenticated connection, until it ends.
async fn serve(ws: &mut Ws, role: &dyn NodeRole, shutdown: &mut watch::Receiver<bool>) -> Ended {
    for frame in role.greeting().await {
        if let Err(e) = send(ws, frame).await {
            return Ended::AfterAuth(e);
        }
    }
    if let Err(e) = send(ws, sync::envelope("health", &role.health().await)).await {
        return Ended::AfterAuth(e);
    }
    let mut events = match role.events() {
        Some(e) => Some(e.lock().await),
        None => None,
    };
    let mut replies = match role.replies() {
        Some(r) => Some(r.lock().await),
        None => None,
    };
    let mut health = tokio::time::interval(HEALTH_EVERY);
    health.tick().await;
    let mut stats = tokio::time::interval(STATS_EVERY);
    stats.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let frame = tokio::select! {
            () = async { let _ = shutdown.wait_for(|down| *down).await; } => return Ended::Shutdown,
            _ = health.tick() => {
                if let Err(e) = send(ws, sync::envelope("health", &role.health().await)).await {
                    return Ended::AfterAuth(e);
                }
                continue;
            }
            _ = stats.tick() => {
                if let Err(e) = send(ws, sync::envelope("stats", &role.stats().await)).await {
                    return Ended::AfterAuth(e);
                }
                continue;
            }
            Some(event) = async {
                match events.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                if let Err(e) = send(ws, sync::envelope("event", &event)).await {
                    return Ended::AfterAuth(e);
                }
                continue;
            }
            Some(reply) = async {
                match replies.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                if let Err(e) = send(ws, reply).await {
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
            "ping" => Some(sync::envelope("pong", &Value::Null)),
            _ => role.frame(&kind, payload).await,
        };
        if let Some(reply) = reply {
            if let Err(e) = send(ws, reply).await {
                return Ended::AfterAuth(e);
            }
        }
    }
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
