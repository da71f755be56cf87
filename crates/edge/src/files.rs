//! What an edge keeps in its data directory, each file mode 0600 and replaced
//! atomically: `edge-node.json` (the manager URL, node id and node secret from
//! `register_ack`) and `edge-snapshot.json` (the last snapshot applied, with its
//! revision and digest; it holds certificate keys) and `edge-flows.json` (the
//! flows the manager configured, started again when the edge starts).

use std::io::Write;
use std::path::{Path, PathBuf};

use fleetgate_protocol::DataPlaneConfig;
use serde::{Deserialize, Serialize};

pub const CREDENTIALS_FILE: &str = "edge-node.json";
pub const SNAPSHOT_FILE: &str = "edge-snapshot.json";
pub const FLOWS_FILE: &str = "edge-flows.json";

/// The identity a manager gave this edge.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    /// The manager URL the identity belongs to.
    pub manager_url: String,
    pub node_id: String,
    pub node_secret: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("manager_url", &self.manager_url)
            .field("node_id", &self.node_id)
            .field("node_secret", &"***")
            .finish()
    }
}

/// The snapshot an edge serves, as kept on disk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredSnapshot {
    pub revision: u64,
    pub digest: String,
    pub config: DataPlaneConfig,
}

/// Writes `bytes` to `path` with mode 0600: a private temporary file, synced, then
/// renamed over `path`.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("partial");
    let _ = std::fs::remove_file(&tmp);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
    }
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)
}

/// Creates the data directory (0700) if it does not exist.
pub fn ensure_dir(dir: &Path) -> std::io::Result<()> {
    if !dir.exists() {
        std::fs::create_dir_all(dir)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
    }
    Ok(())
}

fn path(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

/// The stored identity, if any and readable.
pub fn load_credentials(dir: &Path) -> Option<Credentials> {
    let p = path(dir, CREDENTIALS_FILE);
    let text = std::fs::read(&p).ok()?;
    match serde_json::from_slice(&text) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(file = %p.display(), error = %e, "ignoring an unreadable edge identity file");
            None
        }
    }
}

pub fn save_credentials(dir: &Path, c: &Credentials) -> std::io::Result<()> {
    ensure_dir(dir)?;
    let bytes = serde_json::to_vec_pretty(c).map_err(std::io::Error::other)?;
    write_private(&path(dir, CREDENTIALS_FILE), &bytes)
}

/// The last applied snapshot, if any and readable.
pub fn load_snapshot(dir: &Path) -> Option<StoredSnapshot> {
    let p = path(dir, SNAPSHOT_FILE);
    let text = std::fs::read(&p).ok()?;
    match serde_json::from_slice(&text) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(file = %p.display(), error = %e, "ignoring an unreadable stored snapshot");
            None
        }
    }
}

pub fn save_snapshot(dir: &Path, s: &StoredSnapshot) -> std::io::Result<()> {
    ensure_dir(dir)?;
    let bytes = serde_json::to_vec(s).map_err(std::io::Error::other)?;
    write_private(&path(dir, SNAPSHOT_FILE), &bytes)
}

/// The stored flows: `None` when there are none, `Err` when the file exists
/// but cannot be read (the edge must not start as if it had no flows).
pub fn load_flows(dir: &Path) -> Result<Option<StoredFlows>, String> {
    let p = path(dir, FLOWS_FILE);
    let bytes = match std::fs::read(&p) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", p.display())),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| format!("{} is not valid: {e}", p.display()))
}

pub fn save_flows(dir: &Path, flows: &StoredFlows) -> std::io::Result<()> {
    ensure_dir(dir)?;
    let bytes = serde_json::to_vec_pretty(flows).map_err(std::io::Error::other)?;
    write_private(&path(dir, FLOWS_FILE), &bytes)
}

/// The flows as kept on disk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredFlows {
    pub version: u32,
    pub flows: Vec<crate::flows::config::FlowConfig>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_private_and_round_trip() {
        let dir = tempfile::tempdir().expect("dir");
        let c = Credentials {
            manager_url: "wss://m:3443".into(),
            node_id: "n".into(),
            node_secret: "s3cret".into(),
        };
        save_credentials(dir.path(), &c).expect("save");
        assert_eq!(load_credentials(dir.path()), Some(c.clone()));
        assert!(!format!("{c:?}").contains("s3cret"));
        let s = StoredSnapshot {
            revision: 3,
            digest: "d".into(),
            config: DataPlaneConfig::default(),
        };
        save_snapshot(dir.path(), &s).expect("save");
        assert_eq!(load_snapshot(dir.path()), Some(s));
        #[cfg(unix)]
        for f in [CREDENTIALS_FILE, SNAPSHOT_FILE] {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(f))
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
        let flows = StoredFlows {
            version: 1,
            flows: vec![],
        };
        save_flows(dir.path(), &flows).expect("save");
        assert_eq!(load_flows(dir.path()), Ok(Some(flows)));
        std::fs::write(dir.path().join(FLOWS_FILE), b"[").expect("write");
        assert!(load_flows(dir.path()).is_err());
        std::fs::write(dir.path().join(SNAPSHOT_FILE), b"{not json").expect("write");
        assert_eq!(load_snapshot(dir.path()), None);
    }
}
