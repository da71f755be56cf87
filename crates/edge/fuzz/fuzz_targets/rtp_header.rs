//! RTP headers as an RTP input reads them from any datagram: parsing never
//! panics, a parsed header's payload lies inside the packet, and the sequence
//! tracker fed the parsed numbers never counts more loss than the gaps allow.

#![no_main]

use fleetgate_edge::flows::rtp::{RtpHeader, SequenceTracker};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut tracker = SequenceTracker::default();
    // The input is read as a series of datagrams, each prefixed by its length byte.
    let mut rest = data;
    while let Some((&len, tail)) = rest.split_first() {
        let len = usize::from(len).min(tail.len());
        let (packet, next) = tail.split_at(len);
        rest = next;
        let Ok(h) = RtpHeader::parse(packet) else {
            continue;
        };
        assert!(h.payload_offset >= 12 && h.payload_offset <= packet.len());
        assert!(h.payload_type < 128);
        assert!(tracker.observe(h.ssrc, h.sequence) < 0x8000);
    }
});
