//! The edge's tunnels: the node protocol's `create_tunnel` / `delete_tunnel`
//! carried out on the tunnel data plane ([`fleetgate_tunnel::EdgeTunnels`]), kept
//! with their secrets in the data directory (`edge-tunnels.json`, 0600) so they run
//! again after a restart, and reported without secrets in `get_config` and with
//! their state in every `stats`.

use std::path::{Path, PathBuf};

use fleetgate_tunnel::{EdgeTunnels, TunnelConfig, TunnelStatus};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{mpsc, Mutex};

use crate::files;
use crate::flows::FlowError;

/// The file the tunnels are kept in.
pub const TUNNELS_FILE: &str = "edge-tunnels.json";
/// Tunnels one edge runs at most.
pub const MAX_TUNNELS: usize = 256;
/// The actions this module answers.
pub const ACTIONS: &[&str] = &["create_tunnel", "delete_tunnel"];

/// The tunnels as kept on disk (secrets included).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StoredTunnels {
    pub version: u32,
    pub tunnels: Vec<TunnelConfig>,
}

/// The tunnels of this edge.
pub struct TunnelEngine {
    running: EdgeTunnels,
    /// The configured tunnels, in creation order; the lock also orders commands.
    configs: Mutex<Vec<TunnelConfig>>,
    data_dir: PathBuf,
}

impl TunnelEngine {
    /// An engine with the tunnels stored in `data_dir` (not started yet: see
    /// [`TunnelEngine::start_stored`]).
    pub fn open(data_dir: PathBuf, edge_id: Option<String>, events: mpsc::Sender<Value>) -> Self {
        let stored = match load(&data_dir) {
            Ok(s) => s.tunnels,
            Err(e) => {
                let file = data_dir.join(TUNNELS_FILE);
                let aside = file.with_extension("json.invalid");
                let _ = std::fs::rename(&file, &aside);
                tracing::error!(error = %e, kept_as = %aside.display(), "cannot load the stored tunnels; starting without them");
                Vec::new()
            }
        };
        TunnelEngine {
            running: EdgeTunnels::new(edge_id).with_events(events),
            configs: Mutex::new(stored),
            data_dir,
        }
    }

    /// The manager node id relays are told (after a registration).
    pub fn set_edge_id(&self, edge_id: Option<String>) {
        self.running.set_edge_id(edge_id);
    }

    /// Starts the stored tunnels; one that cannot start is logged and kept.
    pub async fn start_stored(&self) {
        let configs = self.configs.lock().await;
        for c in configs.iter() {
            if let Err(e) = self.running.start(c.clone()).await {
                tracing::error!(tunnel = %c.id, error = %e, "a stored tunnel cannot start");
            }
        }
    }

    /// Stops every tunnel (the configuration stays stored).
    pub async fn shutdown(&self) {
        let configs = self.configs.lock().await;
        for c in configs.iter() {
            self.running.stop(&c.id).await;
        }
    }

    /// `create_tunnel`: validates and starts a tunnel, replacing one with the same id.
    pub async fn create(&self, config: TunnelConfig) -> Result<(), FlowError> {
        let mut configs = self.configs.lock().await;
        let existing = configs.iter().position(|c| c.id == config.id);
        if existing.is_none() && configs.len() >= MAX_TUNNELS {
            return Err(FlowError::new(format!(
                "this edge already has {MAX_TUNNELS} tunnels, its maximum"
            )));
        }
        if let Err(e) = self.running.start(config.clone()).await {
            // What ran before keeps running.
            if let Some(old) = existing.map(|i| configs[i].clone()) {
                let _ = self.running.start(old).await;
            }
            return Err(FlowError::new(format!("tunnel {}: {e}", config.id)));
        }
        match existing {
            Some(i) => configs[i] = config,
            None => configs.push(config),
        }
        self.persist(&configs).await
    }

    /// `delete_tunnel`.
    pub async fn delete(&self, tunnel_id: &str) -> Result<(), FlowError> {
        let mut configs = self.configs.lock().await;
        let at = configs
            .iter()
            .position(|c| c.id == tunnel_id)
            .ok_or_else(|| FlowError::new(format!("Tunnel not found: {tunnel_id}")))?;
        configs.remove(at);
        self.running.stop(tunnel_id).await;
        self.persist(&configs).await
    }

    /// `update_config`'s `tunnels`: makes the tunnels those of `target`, starting,
    /// stopping or restarting only those that differ. A tunnel sent without its
    /// secrets (as `get_config` shows it) keeps the ones this edge holds.
    pub async fn replace_all(&self, target: Vec<TunnelConfig>) -> Result<(), FlowError> {
        if target.len() > MAX_TUNNELS {
            return Err(FlowError::new(format!(
                "config.tunnels has {} tunnels; this edge runs at most {MAX_TUNNELS}",
                target.len()
            )));
        }
        for (i, t) in target.iter().enumerate() {
            if target[..i].iter().any(|p| p.id == t.id) {
                return Err(FlowError::new(format!("Duplicate tunnel ID: {}", t.id)));
            }
        }
        let current = self.configs.lock().await.clone();
        let mut failures = Vec::new();
        for old in current
            .iter()
            .filter(|c| !target.iter().any(|t| t.id == c.id))
        {
            if let Err(e) = self.delete(&old.id).await {
                failures.push(e.message);
            }
        }
        for mut t in target {
            let held = current.iter().find(|c| c.id == t.id);
            if let Some(held) = held {
                keep_secrets(&mut t, held);
                if *held == t {
                    continue;
                }
            }
            if let Err(e) = self.create(t).await {
                failures.push(e.message);
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(FlowError::new(failures.join("; ")))
        }
    }

    /// The tunnels' configurations without their secrets, for `get_config`.
    pub async fn configs_without_secrets(&self) -> Vec<TunnelConfig> {
        let configs = self.configs.lock().await;
        configs.iter().map(TunnelConfig::without_secrets).collect()
    }

    /// The `TunnelStatus` of every tunnel (bitrates since the previous call).
    pub fn statuses(&self) -> Vec<TunnelStatus> {
        self.running.statuses()
    }

    /// How many tunnels are ready, of how many are held.
    pub fn counts(&self) -> (usize, usize) {
        self.running.counts()
    }

    async fn persist(&self, configs: &[TunnelConfig]) -> Result<(), FlowError> {
        let stored = StoredTunnels {
            version: 1,
            tunnels: configs.to_vec(),
        };
        let dir = self.data_dir.clone();
        let saved = tokio::task::spawn_blocking(move || save(&dir, &stored)).await;
        match saved {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(FlowError::new(format!("cannot store the tunnels: {e}"))),
            Err(e) => Err(FlowError::new(format!("storing the tunnels failed: {e}"))),
        }
    }
}

/// Fills the secrets `t` lacks from the same tunnel as held.
fn keep_secrets(t: &mut TunnelConfig, held: &TunnelConfig) {
    let fill = |field: &mut Option<String>, from: &Option<String>| {
        if field.is_none() {
            field.clone_from(from);
        }
    };
    fill(&mut t.tunnel_encryption_key, &held.tunnel_encryption_key);
    fill(&mut t.tunnel_bind_secret, &held.tunnel_bind_secret);
    fill(&mut t.tunnel_psk, &held.tunnel_psk);
    fill(&mut t.tls_cert_pem, &held.tls_cert_pem);
    fill(&mut t.tls_key_pem, &held.tls_key_pem);
}

/// `update_config`: on this edge the `tunnels` of the configuration replace the
/// tunnels; a configuration without `tunnels` leaves them as they are.
pub async fn update_config(engine: &TunnelEngine, config: &Value) -> Result<(), FlowError> {
    let Some(tunnels) = config.get("tunnels") else {
        return Ok(());
    };
    let parsed: Vec<TunnelConfig> = serde_json::from_value(tunnels.clone())
        .map_err(|e| FlowError::new(format!("config.tunnels is not valid: {e}")))?;
    engine.replace_all(parsed).await
}

/// Carries out `action` (whose `type` is one of [`ACTIONS`]).
pub async fn execute(engine: &TunnelEngine, kind: &str, action: &Value) -> Result<(), FlowError> {
    match kind {
        "create_tunnel" => {
            let tunnel = action
                .get("tunnel")
                .filter(|v| v.is_object())
                .ok_or_else(|| FlowError::new("Missing tunnel"))?;
            let config: TunnelConfig = serde_json::from_value(tunnel.clone())
                .map_err(|e| FlowError::new(format!("Invalid tunnel: {e}")))?;
            engine.create(config).await
        }
        "delete_tunnel" => {
            let id = action
                .get("tunnel_id")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .ok_or_else(|| FlowError::new("Missing tunnel_id"))?;
            engine.delete(id).await
        }
        other => Err(FlowError::new(format!("Unknown command: {other}"))),
    }
}

fn load(dir: &Path) -> Result<StoredTunnels, String> {
    let p = dir.join(TUNNELS_FILE);
    let bytes = match std::fs::read(&p) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(StoredTunnels::default()),
        Err(e) => return Err(format!("cannot read {}: {e}", p.display())),
    };
    serde_json::from_slice(&bytes).map_err(|e| format!("{} is not valid: {e}", p.display()))
}

fn save(dir: &Path, tunnels: &StoredTunnels) -> std::io::Result<()> {
    files::ensure_dir(dir)?;
    let bytes = serde_json::to_vec_pretty(tunnels).map_err(std::io::Error::other)?;
    files::write_private(&dir.join(TUNNELS_FILE), &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn hex64() -> String {
        "ab".repeat(32)
    }

    fn entry_tunnel(id: &str, port: u16) -> Value {
        json!({"id": id, "name": "t", "enabled": true, "protocol": "tcp", "mode": "relay",
               "direction": "egress", "local_addr": format!("127.0.0.1:{port}"),
               "relay_addr": "127.0.0.1:9", "tunnel_encryption_key": hex64(),
               "tunnel_bind_secret": hex64()})
    }

    fn free_port() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    }

    #[tokio::test]
    async fn create_persists_privately_and_get_config_has_no_secrets() {
        let dir = tempfile::tempdir().expect("dir");
        let engine = TunnelEngine::open(dir.path().to_path_buf(), None, mpsc::channel(16).0);
        let id = "6f0a3a4e-0d3b-4d4c-8a53-0c8f4f8b1a11";
        let action = json!({"type": "create_tunnel", "tunnel": entry_tunnel(id, free_port())});
        execute(&engine, "create_tunnel", &action)
            .await
            .expect("created");
        let file = dir.path().join(TUNNELS_FILE);
        let text = std::fs::read_to_string(&file).expect("stored");
        assert!(text.contains(&hex64()), "secrets are kept on disk");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&file).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let shown = serde_json::to_string(&engine.configs_without_secrets().await).expect("json");
        assert!(
            !shown.contains(&hex64()),
            "get_config leaks a secret: {shown}"
        );
        assert_eq!(engine.statuses().len(), 1);
        assert_eq!(engine.statuses()[0].direction.as_str(), "egress");

        // A restart finds it again.
        engine.shutdown().await;
        let again = TunnelEngine::open(dir.path().to_path_buf(), None, mpsc::channel(16).0);
        again.start_stored().await;
        assert_eq!(again.statuses().len(), 1);
        execute(&again, "delete_tunnel", &json!({"tunnel_id": id}))
            .await
            .expect("deleted");
        assert!(again.statuses().is_empty());
        let stored = load(dir.path()).expect("load");
        assert!(stored.tunnels.is_empty());
    }

    #[tokio::test]
    async fn update_config_keeps_held_secrets_and_removes_what_is_gone() {
        let dir = tempfile::tempdir().expect("dir");
        let engine = TunnelEngine::open(dir.path().to_path_buf(), None, mpsc::channel(16).0);
        let a = "6f0a3a4e-0d3b-4d4c-8a53-0c8f4f8b1a11";
        let b = "7f0a3a4e-0d3b-4d4c-8a53-0c8f4f8b1a12";
        for id in [a, b] {
            let action = json!({"tunnel": entry_tunnel(id, free_port())});
            execute(&engine, "create_tunnel", &action)
                .await
                .expect("created");
        }
        // What get_config showed, renamed: a stays (secrets from the edge), b goes.
        let mut shown =
            serde_json::to_value(&engine.configs_without_secrets().await[0]).expect("json");
        assert_eq!(shown["id"], a);
        shown["name"] = json!("renamed");
        update_config(&engine, &json!({"tunnels": [shown]}))
            .await
            .expect("applied");
        let held = engine.configs.lock().await.clone();
        assert_eq!(held.len(), 1);
        assert_eq!(held[0].name, "renamed");
        assert_eq!(
            held[0].tunnel_encryption_key.as_deref(),
            Some(hex64().as_str())
        );
        assert_eq!(engine.statuses().len(), 1);
        // Without `tunnels`, nothing changes.
        update_config(&engine, &json!({"flows": []}))
            .await
            .expect("no-op");
        assert_eq!(engine.statuses().len(), 1);
    }

    #[tokio::test]
    async fn bad_commands_are_refused_with_the_protocol_wording() {
        let dir = tempfile::tempdir().expect("dir");
        let engine = TunnelEngine::open(dir.path().to_path_buf(), None, mpsc::channel(16).0);
        let err = execute(&engine, "delete_tunnel", &json!({}))
            .await
            .expect_err("missing");
        assert_eq!(err.message, "Missing tunnel_id");
        let err = execute(&engine, "create_tunnel", &json!({}))
            .await
            .expect_err("missing");
        assert_eq!(err.message, "Missing tunnel");
        let mut bad = entry_tunnel("not-a-uuid", free_port());
        bad["id"] = json!("not-a-uuid");
        let err = execute(&engine, "create_tunnel", &json!({"tunnel": bad}))
            .await
            .expect_err("bad id");
        assert!(err.message.contains("UUID"), "{}", err.message);
        let err = execute(&engine, "delete_tunnel", &json!({"tunnel_id": "x"}))
            .await
            .expect_err("unknown");
        assert_eq!(err.message, "Tunnel not found: x");
        assert!(load(dir.path()).expect("load").tunnels.is_empty());
    }
}
