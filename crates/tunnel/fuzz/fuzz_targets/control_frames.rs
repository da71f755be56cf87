//! Control-stream bytes from an untrusted edge or relay: split the input into
//! length-prefixed frames the way the control stream does and parse each as a
//! control message and as a stream header. Nothing may panic, frames must stay
//! inside the input, and every known message must survive a re-encode unchanged.

#![no_main]

use fleetgate_tunnel::wire::{encode_json, parse_control, parse_stream_header, split_frame, Parsed};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Some((body, used))) = split_frame(rest) {
        assert!(used <= rest.len() && used == body.len() + 4);
        if let Ok(Parsed::Known(msg)) = parse_control(body) {
            let again = encode_json(&msg).expect("a parsed message encodes");
            let (body2, _) = split_frame(&again).expect("ok").expect("whole");
            assert_eq!(parse_control(body2).expect("reparses"), Parsed::Known(msg));
        }
        let _ = parse_stream_header(body);
        rest = &rest[used..];
    }
});
