//! `traceparent` and `tracestate` as callers send them: the parser must never
//! panic; what it accepts is at least 55 bytes in the version-00 layout with
//! lower-case hex and non-zero ids, and its version-00 form parses back to the
//! same ids and `sampled` flag.

#![no_main]

use fleetgate_core::trace_context::{tracestate_ok, TraceParent, TRACEPARENT_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = tracestate_ok(data);
    let Ok(tp) = TraceParent::parse(data) else {
        return;
    };
    assert!(data.len() >= TRACEPARENT_LEN);
    assert!(data[..TRACEPARENT_LEN]
        .iter()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b) || *b == b'-'));
    assert!(data.len() == TRACEPARENT_LEN || data[..2] != *b"00");
    assert_ne!(tp.trace_id, [0; 16]);
    assert_ne!(tp.parent_id, [0; 8]);
    let encoded = tp.encode();
    let again = TraceParent::parse(&encoded).expect("the version-00 form parses");
    assert_eq!(again.trace_id, tp.trace_id);
    assert_eq!(again.parent_id, tp.parent_id);
    assert_eq!(again.sampled(), tp.sampled());
});
