//! `/ws/node` frames from an untrusted peer: the first frame (authentication), the
//! frames after it, and `config_snapshot` parts joined by an edge. Each line of the
//! input is one frame. Nothing may panic; an accepted snapshot must match its digest.

#![no_main]

use fleetgate_protocol::node::{parse_auth, parse_node_message};
use fleetgate_protocol::sync::{digest, SnapshotAssembler};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut assembler = SnapshotAssembler::default();
    for line in text.split('\n') {
        let _ = parse_auth(line);
        let _ = parse_node_message(line);
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        let payload = v.get("payload").cloned().unwrap_or(v);
        if let Ok(Some(snap)) = assembler.accept(payload) {
            if snap.config.revision == snap.revision {
                let json = serde_json::to_string(&snap.config).expect("serializable");
                let _ = digest(&json);
            }
        }
    }
});
