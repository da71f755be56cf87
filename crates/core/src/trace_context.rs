//! W3C Trace Context (<https://www.w3.org/TR/trace-context/>): the `traceparent`
//! and `tracestate` headers a caller sends, read strictly, and the `traceparent`
//! the gateway sends upstream.
//!
//! What arrives is hostile input. [`TraceParent::parse`] takes version `00` only
//! in its exact 55-byte form (lower-case hex, `-` separators, no surrounding
//! space); a trace id or parent id of all zeros is invalid, as is version `ff`.
//! A later version is read as the spec asks (its first 55 bytes in the version-00
//! layout, then nothing or a `-`), so a newer caller still joins its trace.
//! Anything else is refused, and the caller's trace is not continued: a new one
//! starts and its `tracestate` is dropped with it.
//!
//! Nothing here allocates: parsing reads the bytes in place and formatting fills
//! a fixed array.

/// The length of a version-00 `traceparent`: `00-<32 hex>-<16 hex>-<2 hex>`.
pub const TRACEPARENT_LEN: usize = 55;

/// The `sampled` bit of the trace flags.
pub const FLAG_SAMPLED: u8 = 0x01;

/// Most bytes of a `tracestate` forwarded (the spec's limit is 32 list members;
/// 512 bytes is what it asks a vendor to keep at least).
pub const TRACESTATE_MAX_LEN: usize = 512;

/// The parts of a valid `traceparent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    /// The caller's span: the parent of the span that continues the trace.
    pub parent_id: [u8; 8],
    pub flags: u8,
}

/// Why a `traceparent` was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TraceParentError {
    /// Not the 55 bytes of version 00 (or a later version's 55 and more).
    Length,
    /// A version that is not two lower-case hex digits, or the invalid `ff`.
    Version,
    /// A separator is not `-` where the layout puts one.
    Separator,
    /// A character that is not lower-case hex in an id or the flags.
    Hex,
    /// The trace id is all zeros.
    ZeroTraceId,
    /// The parent id is all zeros.
    ZeroParentId,
}

impl std::fmt::Display for TraceParentError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Length => "traceparent has the wrong length",
            Self::Version => "traceparent has an invalid version",
            Self::Separator => "traceparent is not separated by '-'",
            Self::Hex => "traceparent holds a character that is not lower-case hex",
            Self::ZeroTraceId => "traceparent's trace id is all zeros",
            Self::ZeroParentId => "traceparent's parent id is all zeros",
        })
    }
}

impl std::error::Error for TraceParentError {}

/// The value of one lower-case hex digit.
#[inline]
fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

/// Fills `out` from `2 * out.len()` lower-case hex digits.
#[inline]
fn decode_hex(src: &[u8], out: &mut [u8]) -> Result<(), TraceParentError> {
    for (i, o) in out.iter_mut().enumerate() {
        let hi = hex_digit(src[2 * i]).ok_or(TraceParentError::Hex)?;
        let lo = hex_digit(src[2 * i + 1]).ok_or(TraceParentError::Hex)?;
        *o = (hi << 4) | lo;
    }
    Ok(())
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Writes `src` as lower-case hex into `out` (twice its length).
#[inline]
fn encode_hex(src: &[u8], out: &mut [u8]) {
    for (i, b) in src.iter().enumerate() {
        out[2 * i] = HEX[usize::from(b >> 4)];
        out[2 * i + 1] = HEX[usize::from(b & 0xf)];
    }
}

impl TraceParent {
    /// Reads a `traceparent` header value (see the module documentation).
    pub fn parse(value: &[u8]) -> Result<Self, TraceParentError> {
        if value.len() < TRACEPARENT_LEN {
            return Err(TraceParentError::Length);
        }
        let mut version = [0u8; 1];
        decode_hex(&value[..2], &mut version).map_err(|_| TraceParentError::Version)?;
        match version[0] {
            0xff => return Err(TraceParentError::Version),
            // Version 00 is exactly 55 bytes.
            0 if value.len() != TRACEPARENT_LEN => return Err(TraceParentError::Length),
            // A later version may carry more, after a '-'.
            _ if value.len() > TRACEPARENT_LEN && value[TRACEPARENT_LEN] != b'-' => {
                return Err(TraceParentError::Separator)
            }
            _ => {}
        }
        if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
            return Err(TraceParentError::Separator);
        }
        let mut trace_id = [0u8; 16];
        decode_hex(&value[3..35], &mut trace_id)?;
        let mut parent_id = [0u8; 8];
        decode_hex(&value[36..52], &mut parent_id)?;
        let mut flags = [0u8; 1];
        decode_hex(&value[53..55], &mut flags)?;
        if trace_id == [0; 16] {
            return Err(TraceParentError::ZeroTraceId);
        }
        if parent_id == [0; 8] {
            return Err(TraceParentError::ZeroParentId);
        }
        Ok(Self {
            trace_id,
            parent_id,
            flags: flags[0],
        })
    }

    /// Whether the caller recorded its span (the `sampled` flag).
    #[inline]
    pub fn sampled(&self) -> bool {
        self.flags & FLAG_SAMPLED != 0
    }

    /// The version-00 header value, in a fixed array (`to_str` of it is always
    /// ASCII). Only the `sampled` flag is kept: the other bits belong to versions
    /// this one does not know.
    pub fn encode(&self) -> [u8; TRACEPARENT_LEN] {
        let mut out = [b'-'; TRACEPARENT_LEN];
        out[0] = b'0';
        out[1] = b'0';
        encode_hex(&self.trace_id, &mut out[3..35]);
        encode_hex(&self.parent_id, &mut out[36..52]);
        encode_hex(&[self.flags & FLAG_SAMPLED], &mut out[53..55]);
        out
    }
}

/// Whether a `tracestate` value may be forwarded: at most
/// [`TRACESTATE_MAX_LEN`] bytes of printable ASCII (the list's own grammar is
/// its vendors' business, but nothing outside it may ride along).
pub fn tracestate_ok(value: &[u8]) -> bool {
    value.len() <= TRACESTATE_MAX_LEN && value.iter().all(|b| (0x20..0x7f).contains(b))
}

/// Lower-case hex of an id, for logs and span attributes.
pub fn hex_id(id: &[u8]) -> String {
    let mut out = vec![0u8; id.len() * 2];
    encode_hex(id, &mut out);
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn reads_the_spec_example() {
        let tp = TraceParent::parse(GOOD.as_bytes()).expect("valid");
        assert_eq!(hex_id(&tp.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex_id(&tp.parent_id), "00f067aa0ba902b7");
        assert!(tp.sampled());
        assert_eq!(&tp.encode()[..], GOOD.as_bytes());
    }

    #[test]
    fn refuses_what_the_spec_refuses() {
        let cases: &[(&str, TraceParentError)] = &[
            ("", TraceParentError::Length),
            (&GOOD[..54], TraceParentError::Length),
            (&format!("{GOOD}-"), TraceParentError::Length),
            (&format!(" {}", &GOOD[..54]), TraceParentError::Version),
            (
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                TraceParentError::Hex,
            ),
            (
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                TraceParentError::ZeroTraceId,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                TraceParentError::ZeroParentId,
            ),
            (
                "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                TraceParentError::Version,
            ),
            (
                "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                TraceParentError::Version,
            ),
            (
                "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                TraceParentError::Separator,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0x",
                TraceParentError::Hex,
            ),
            (
                "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
                TraceParentError::Separator,
            ),
        ];
        for (input, want) in cases {
            assert_eq!(
                TraceParent::parse(input.as_bytes()),
                Err(*want),
                "{input:?}"
            );
        }
    }

    #[test]
    fn a_later_version_is_read_in_the_known_layout() {
        let later = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09-what-comes-next";
        let tp = TraceParent::parse(later.as_bytes()).expect("later version");
        assert!(tp.sampled());
        // Forwarded as version 00, with only the flag this version knows.
        assert_eq!(&tp.encode()[..], GOOD.as_bytes());
        assert!(TraceParent::parse(&later.as_bytes()[..55]).is_ok());
    }

    #[test]
    fn tracestate_is_forwarded_only_when_printable_and_short() {
        assert!(tracestate_ok(b"congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"));
        assert!(!tracestate_ok(b"a=b\x00"));
        assert!(!tracestate_ok(&[b'a'; TRACESTATE_MAX_LEN + 1]));
    }

    proptest! {
        /// Every valid value goes through encode and parse unchanged.
        #[test]
        fn encode_then_parse_is_identity(
            trace in any::<[u8; 16]>(),
            parent in any::<[u8; 8]>(),
            sampled in any::<bool>(),
        ) {
            prop_assume!(trace != [0; 16] && parent != [0; 8]);
            let tp = TraceParent { trace_id: trace, parent_id: parent, flags: u8::from(sampled) };
            let text = tp.encode();
            prop_assert!(text.iter().all(u8::is_ascii));
            prop_assert_eq!(TraceParent::parse(&text), Ok(tp));
        }

        /// Arbitrary bytes never panic; whatever is accepted is in the layout,
        /// lower-case, with non-zero ids, and its version-00 form parses alike.
        #[test]
        fn arbitrary_input_is_refused_or_well_formed(input in proptest::collection::vec(any::<u8>(), 0..80)) {
            if let Ok(tp) = TraceParent::parse(&input) {
                prop_assert!(input.len() >= TRACEPARENT_LEN);
                prop_assert!(input[..TRACEPARENT_LEN].iter().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b) || *b == b'-'));
                prop_assert!(tp.trace_id != [0; 16] && tp.parent_id != [0; 8]);
                let again = TraceParent::parse(&tp.encode()).expect("re-encoded value parses");
                prop_assert_eq!(again.trace_id, tp.trace_id);
                prop_assert_eq!(again.parent_id, tp.parent_id);
                prop_assert_eq!(again.sampled(), tp.sampled());
            }
        }

        /// One changed byte of a valid version-00 value outside the hex digits'
        /// own alphabet makes it invalid.
        #[test]
        fn one_bad_byte_is_refused(pos in 0usize..TRACEPARENT_LEN, byte in any::<u8>()) {
            let mut v = GOOD.as_bytes().to_vec();
            let allowed: &[u8] = if [2, 35, 52].contains(&pos) { b"-" } else { b"0123456789abcdef" };
            prop_assume!(!allowed.contains(&byte));
            v[pos] = byte;
            prop_assert!(TraceParent::parse(&v).is_err());
        }

        /// Any length other than 55 is refused for version 00.
        #[test]
        fn version_00_has_one_length(extra in proptest::collection::vec(any::<u8>(), 1..40)) {
            let mut v = GOOD.as_bytes().to_vec();
            v.extend_from_slice(&extra);
            prop_assert!(TraceParent::parse(&v).is_err());
            prop_assert!(TraceParent::parse(&GOOD.as_bytes()[..TRACEPARENT_LEN - 1]).is_err());
        }
    }
}
