//! Configuration sync for Fleetgate edges: Fleetgate's own messages on `/ws/node`,
//! in the node protocol's envelope (`{"type", "timestamp", "payload"}`). Bilbycast
//! nodes never send them and ignore them if sent, as they ignore every unknown type.
//!
//! Edge → manager:
//! - `config_status` `{"revision", "digest"}` — right after `register_ack` /
//!   `auth_ok`: the edge takes part in config sync and serves this snapshot
//!   (`digest` null when it has none yet).
//! - `config_ack` `{"revision", "digest"}` — the snapshot was validated, compiled
//!   and is served.
//! - `config_nack` `{"revision", "digest", "error"}` — the snapshot was refused; the
//!   edge goes on serving what it served.
//!
//! Manager → edge:
//! - `config_snapshot` — a whole [`DataPlaneConfig`] with its revision and digest
//!   (SHA-256, hex, of its compact JSON as the manager serialized it). A snapshot
//!   whose JSON fits in [`INLINE_MAX_BYTES`] is one frame,
//!   `{"revision", "digest", "config": {...}}`; a larger one is cut into frames of at
//!   most [`CHUNK_BYTES`] of its JSON text each,
//!   `{"revision", "digest", "part": i, "parts": n, "data": "<text>"}` (`part` from 0,
//!   sent in order), so that no frame exceeds the protocol's 5 MiB. The edge joins
//!   the parts and checks the digest before parsing.
//!
//! - `config_delta` — the changes from the snapshot the edge holds to the new one
//!   (see [`crate::delta`]).
//!
//! The manager sends a whole snapshot when an edge's `config_status` digest differs
//! from its current one, then each new value of its data-plane input (coalesced
//! over 50 ms) as a `config_delta` from the snapshot the edge holds (or was just
//! sent), or whole when no smaller delta gives it. An edge that cannot apply a
//! delta answers `config_status`, and gets the whole snapshot.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::delta::{ConfigDelta, CONFIG_DELTA};
use crate::node::truncate;
use crate::DataPlaneConfig;

pub const CONFIG_STATUS: &str = "config_status";
pub const CONFIG_ACK: &str = "config_ack";
pub const CONFIG_NACK: &str = "config_nack";
pub const CONFIG_SNAPSHOT: &str = "config_snapshot";

/// A snapshot whose JSON is at most this long travels in one frame.
pub const INLINE_MAX_BYTES: usize = 4 * 1024 * 1024;
/// Bytes of JSON text per part of a larger snapshot. Embedded as a JSON string a
/// part at most doubles (compact JSON only escapes `"` and `\`), staying under 5 MiB.
pub const CHUNK_BYTES: usize = 2 * 1024 * 1024;
/// An edge refuses snapshots larger than this.
pub const MAX_SNAPSHOT_BYTES: usize = 512 * 1024 * 1024;
/// A `config_nack` error is kept up to this many bytes.
pub const MAX_ERROR_BYTES: usize = 4096;

/// What an edge serves (or has just applied): `config_status` and `config_ack`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedConfig {
    pub revision: u64,
    /// The manager's digest of the snapshot served; none before the first one.
    #[serde(default)]
    pub digest: Option<String>,
}

/// A snapshot an edge refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigNack {
    pub revision: u64,
    #[serde(default)]
    pub digest: Option<String>,
    pub error: String,
}

/// SHA-256 of `json`, hex.
pub fn digest(json: &str) -> String {
    hex_lower(&Sha256::digest(json.as_bytes()))
}

fn hex_lower(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(HEX[usize::from(b >> 4)] as char);
        s.push(HEX[usize::from(b & 15)] as char);
    }
    s
}

fn timestamp() -> String {
    fleetgate_core::time::rfc3339(fleetgate_core::time::now_ms())
}

/// An envelope of one of these messages, from an edge.
pub fn envelope(kind: &str, payload: &impl Serialize) -> String {
    serde_json::json!({"type": kind, "timestamp": timestamp(), "payload": payload}).to_string()
}

/// A snapshot ready to send: its frames are made once and shared by every session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedSnapshot {
    pub revision: u64,
    pub digest: String,
    /// Length of the snapshot's JSON.
    pub bytes: usize,
    pub frames: Vec<String>,
    /// The same change as a `config_delta` from the snapshot encoded before, when
    /// one exists and is smaller.
    pub delta: Option<EncodedDelta>,
}

/// A `config_delta` frame and the snapshot it applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedDelta {
    pub base_digest: String,
    pub frame: String,
}

impl EncodedSnapshot {
    /// Serializes `config` and cuts it into frames (see the module notes).
    pub fn encode(config: &DataPlaneConfig) -> Result<Self, serde_json::Error> {
        let json = serde_json::to_string(config)?;
        Ok(Self::from_json(config.revision, json))
    }

    /// Like [`EncodedSnapshot::encode`], with a `config_delta` from `previous`
    /// (a snapshot and its digest) when it exists and is smaller than the whole.
    pub fn encode_after(
        config: &DataPlaneConfig,
        previous: Option<(&DataPlaneConfig, &str)>,
    ) -> Result<Self, serde_json::Error> {
        let mut snap = Self::encode(config)?;
        if let Some((old, old_digest)) = previous {
            if let Some(d) = ConfigDelta::between(old, old_digest, config, &snap.digest) {
                let frame = envelope(CONFIG_DELTA, &d);
                if frame.len() < snap.bytes.min(INLINE_MAX_BYTES) {
                    snap.delta = Some(EncodedDelta {
                        base_digest: old_digest.to_string(),
                        frame,
                    });
                }
            }
        }
        Ok(snap)
    }

    fn from_json(revision: u64, json: String) -> Self {
        let digest = digest(&json);
        let ts = timestamp();
        let head = |extra: &str| {
            format!(
                r#"{{"type":"{CONFIG_SNAPSHOT}","timestamp":"{ts}","payload":{{"revision":{revision},"digest":"{digest}",{extra}"#
            )
        };
        let frames = if json.len() <= INLINE_MAX_BYTES {
            vec![format!("{}\"config\":{json}}}}}", head(""))]
        } else {
            let parts = split_on_chars(&json, CHUNK_BYTES);
            let n = parts.len();
            parts
                .into_iter()
                .enumerate()
                .map(|(i, p)| {
                    let data = Value::String(p.to_string()).to_string();
                    format!("{}\"part\":{i},\"parts\":{n},\"data\":{data}}}}}", head(""))
                })
                .collect()
        };
        Self {
            revision,
            bytes: json.len(),
            digest,
            frames,
            delta: None,
        }
    }
}

/// Cuts `s` into pieces of at most `max` bytes, on character boundaries.
fn split_on_chars(s: &str, max: usize) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = s;
    while !rest.is_empty() {
        let mut cut = rest.len().min(max.max(4));
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        let (a, b) = rest.split_at(cut);
        out.push(a);
        rest = b;
    }
    out
}

/// A whole snapshot an edge received.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedSnapshot {
    pub revision: u64,
    pub digest: String,
    pub config: DataPlaneConfig,
}

#[derive(Deserialize)]
struct SnapshotPayload {
    revision: u64,
    digest: String,
    #[serde(default)]
    config: Option<DataPlaneConfig>,
    #[serde(default)]
    part: Option<usize>,
    #[serde(default)]
    parts: Option<usize>,
    #[serde(default)]
    data: Option<String>,
}

/// Why a `config_snapshot` frame is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    #[error("config_snapshot is not valid: {0}")]
    Invalid(String),
    #[error(
        "config_snapshot part {got} came where part {expected} of revision {revision} was expected"
    )]
    OutOfOrder {
        revision: u64,
        expected: usize,
        got: usize,
    },
    #[error("config_snapshot is larger than {MAX_SNAPSHOT_BYTES} bytes")]
    TooLarge,
    #[error("config_snapshot of revision {0} does not match its digest")]
    Digest(u64),
}

/// Joins the frames of a snapshot on an edge.
#[derive(Debug, Default)]
pub struct SnapshotAssembler {
    pending: Option<Pending>,
}

#[derive(Debug)]
struct Pending {
    revision: u64,
    digest: String,
    parts: usize,
    next: usize,
    text: String,
}

impl SnapshotAssembler {
    /// Takes one `config_snapshot` payload. Returns the snapshot once whole; a part
    /// of a new snapshot drops an unfinished one.
    pub fn accept(&mut self, payload: Value) -> Result<Option<ReceivedSnapshot>, SnapshotError> {
        let p: SnapshotPayload = serde_json::from_value(payload)
            .map_err(|e| SnapshotError::Invalid(truncate(e.to_string(), 512)))?;
        if let Some(config) = p.config {
            self.pending = None;
            return Ok(Some(ReceivedSnapshot {
                revision: p.revision,
                digest: p.digest,
                config,
            }));
        }
        let (Some(part), Some(parts), Some(data)) = (p.part, p.parts, p.data) else {
            return Err(SnapshotError::Invalid(
                "needs either config, or part, parts and data".into(),
            ));
        };
        if parts == 0 || part >= parts || parts > MAX_SNAPSHOT_BYTES / CHUNK_BYTES + 1 {
            self.pending = None;
            return Err(SnapshotError::Invalid(format!("part {part} of {parts}")));
        }
        if part == 0 {
            self.pending = Some(Pending {
                revision: p.revision,
                digest: p.digest.clone(),
                parts,
                next: 0,
                text: String::new(),
            });
        }
        let Some(pending) = self.pending.as_mut() else {
            return Err(SnapshotError::OutOfOrder {
                revision: p.revision,
                expected: 0,
                got: part,
            });
        };
        if pending.revision != p.revision
            || pending.digest != p.digest
            || pending.parts != parts
            || pending.next != part
        {
            let e = SnapshotError::OutOfOrder {
                revision: pending.revision,
                expected: pending.next,
                got: part,
            };
            self.pending = None;
            return Err(e);
        }
        if pending.text.len() + data.len() > MAX_SNAPSHOT_BYTES {
            self.pending = None;
            return Err(SnapshotError::TooLarge);
        }
        pending.text.push_str(&data);
        pending.next += 1;
        if pending.next < pending.parts {
            return Ok(None);
        }
        let Some(done) = self.pending.take() else {
            return Ok(None);
        };
        if digest(&done.text) != done.digest {
            return Err(SnapshotError::Digest(done.revision));
        }
        let config: DataPlaneConfig = serde_json::from_str(&done.text)
            .map_err(|e| SnapshotError::Invalid(truncate(e.to_string(), 512)))?;
        Ok(Some(ReceivedSnapshot {
            revision: done.revision,
            digest: done.digest,
            config,
        }))
    }
}

/// Parses the payload of `config_status` / `config_ack` from a node.
pub(crate) fn parse_applied(payload: Value) -> Result<AppliedConfig, String> {
    let mut a: AppliedConfig =
        serde_json::from_value(payload).map_err(|e| truncate(e.to_string(), 256))?;
    a.digest = a.digest.map(|d| truncate(d, 128));
    Ok(a)
}

/// Parses the payload of `config_nack` from a node.
pub(crate) fn parse_nack(payload: Value) -> Result<ConfigNack, String> {
    let mut n: ConfigNack =
        serde_json::from_value(payload).map_err(|e| truncate(e.to_string(), 256))?;
    n.digest = n.digest.map(|d| truncate(d, 128));
    n.error = truncate(n.error, MAX_ERROR_BYTES);
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ConfigFeed, Site};
    use std::sync::Arc;

    fn payload(frame: &str) -> Value {
        let v: Value = serde_json::from_str(frame).expect("frame is JSON");
        assert_eq!(v["type"], CONFIG_SNAPSHOT);
        v["payload"].clone()
    }

    #[test]
    fn a_small_snapshot_is_one_frame() {
        let feed = ConfigFeed::default();
        feed.publish_revision(4, Arc::default());
        let enc = EncodedSnapshot::encode(&feed.current()).expect("encode");
        assert_eq!(enc.frames.len(), 1);
        let mut asm = SnapshotAssembler::default();
        let got = asm
            .accept(payload(&enc.frames[0]))
            .expect("accepted")
            .expect("whole");
        assert_eq!((got.revision, &got.digest), (4, &enc.digest));
        assert_eq!(got.config, *feed.current());
    }

    #[test]
    fn a_large_snapshot_is_cut_under_the_frame_limit_and_joined() {
        let feed = ConfigFeed::default();
        // Quotes and multi-byte characters: escaping and character boundaries.
        let label = "é\"x".repeat(2_000_000);
        feed.publish_sites(vec![Arc::new(Site {
            id: "p".into(),
            label,
            ..Site::default()
        })]);
        let enc = EncodedSnapshot::encode(&feed.current()).expect("encode");
        assert!(enc.frames.len() > 1);
        for f in &enc.frames {
            assert!(f.len() < crate::node::MAX_MESSAGE_BYTES, "{}", f.len());
        }
        let mut asm = SnapshotAssembler::default();
        let mut whole = None;
        for f in &enc.frames {
            whole = asm.accept(payload(f)).expect("part");
        }
        assert_eq!(whole.expect("joined").config, *feed.current());
        // A part out of order is refused and the unfinished snapshot dropped.
        let mut asm = SnapshotAssembler::default();
        asm.accept(payload(&enc.frames[0])).expect("first");
        assert!(matches!(
            asm.accept(payload(&enc.frames[2])),
            Err(SnapshotError::OutOfOrder { .. })
        ));
        // A part with a wrong digest never parses.
        let mut asm = SnapshotAssembler::default();
        let mut last = Ok(None);
        for f in &enc.frames {
            let mut p = payload(f);
            if p["part"] == 1 {
                p["data"] = Value::String("x".repeat(10));
            }
            last = asm.accept(p);
        }
        assert!(matches!(last, Err(SnapshotError::Digest(_))));
    }

    #[test]
    fn bad_payloads_are_errors() {
        let mut asm = SnapshotAssembler::default();
        for p in [
            serde_json::json!(null),
            serde_json::json!({"revision": 1}),
            serde_json::json!({"revision": 1, "digest": "d"}),
            serde_json::json!({"revision": 1, "digest": "d", "part": 3, "parts": 2, "data": ""}),
            serde_json::json!({"revision": 1, "digest": "d", "part": 1, "parts": 2, "data": ""}),
            serde_json::json!({"revision": 1, "digest": "d", "config": {"revision": "x"}}),
        ] {
            assert!(asm.accept(p).is_err());
        }
    }
}
