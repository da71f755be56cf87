//! HTTP/1.1 framing on untrusted bytes: the first byte picks whether the request was
//! HEAD and where to split the rest; the request and response head parsers and the
//! chunked decoder must never panic, never point outside their input, and the decoder
//! must give the same payload whether the body arrives whole or in two pieces.

#![no_main]

use fleetgate_core::h1::{parse_request_head, parse_response_head, ChunkedDecoder, Decoded};
use libfuzzer_sys::fuzz_target;

fn decode(dec: &mut ChunkedDecoder, mut input: &[u8], out: &mut Vec<u8>) -> Option<bool> {
    loop {
        match dec.decode(input).ok()? {
            Decoded::Data { framing, data } => {
                assert!(data > 0 && framing + data <= input.len());
                out.extend_from_slice(&input[framing..framing + data]);
                input = &input[framing + data..];
            }
            Decoded::NeedMore { framing } => {
                assert_eq!(framing, input.len());
                return Some(false);
            }
            Decoded::End { framing } => {
                assert!(framing <= input.len());
                return Some(true);
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else { return };
    let mut spans = Vec::new();
    if let Ok(Some(head)) = parse_response_head(rest, first & 1 == 1, &mut spans) {
        assert!(head.len <= rest.len());
        for h in &spans {
            let _ = (h.name(rest), h.value(rest));
        }
    }
    if let Ok(Some(head)) = parse_request_head(rest, &mut spans) {
        assert!(head.len <= rest.len());
        let _ = (head.method(rest), head.target(rest));
        for h in &spans {
            let _ = (h.name(rest), h.value(rest));
        }
    }
    let mut whole = Vec::new();
    let whole_end = decode(&mut ChunkedDecoder::new(), rest, &mut whole);
    let cut = usize::from(first) % (rest.len() + 1);
    let mut dec = ChunkedDecoder::new();
    let mut split = Vec::new();
    let split_end = match decode(&mut dec, &rest[..cut], &mut split) {
        Some(false) => decode(&mut dec, &rest[cut..], &mut split),
        other => other,
    };
    if let (Some(true), Some(true)) = (whole_end, split_end) {
        assert_eq!(whole, split);
    }
});
