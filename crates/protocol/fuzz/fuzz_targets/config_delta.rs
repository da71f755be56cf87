//! `config_delta` payloads from an untrusted manager, applied to a base snapshot
//! (the first line) as an edge does. Nothing may panic, and a delta made between
//! the base and the result must lead back to the same result.

#![no_main]

use fleetgate_protocol::delta::ConfigDelta;
use fleetgate_protocol::DataPlaneConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut lines = text.split('\n');
    let base: DataPlaneConfig = lines
        .next()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_default();
    for line in lines {
        let Ok(delta) = serde_json::from_str::<ConfigDelta>(line) else { continue };
        let next = delta.apply(&base);
        if let Some(again) = ConfigDelta::between(&base, "a", &next, "b") {
            assert_eq!(again.apply(&base), next);
        }
    }
});
