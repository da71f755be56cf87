//! RTP headers (RFC 3550 section 5.1) as an RTP input reads them from untrusted
//! datagrams, and the sequence tracking that counts lost packets.

/// The fixed part of an RTP header.
const FIXED_HEADER: usize = 12;
/// A forward jump in sequence numbers larger than this is a restart of the
/// sender, not loss (RFC 3550 appendix A.1's MAX_DROPOUT).
const MAX_DROPOUT: u16 = 3000;

/// What an RTP input needs from a packet's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpHeader {
    pub payload_type: u8,
    pub marker: bool,
    pub sequence: u16,
    pub timestamp: u32,
    pub ssrc: u32,
    /// Where the payload begins (after CSRCs and any header extension).
    pub payload_offset: usize,
}

/// Why a datagram is not an RTP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RtpError {
    #[error("shorter than an RTP header")]
    TooShort,
    #[error("RTP version {0}, not 2")]
    Version(u8),
    #[error("the CSRC list, header extension or padding runs past the packet")]
    Truncated,
}

impl RtpHeader {
    /// Reads the header of `packet`; never panics, whatever the bytes.
    pub fn parse(packet: &[u8]) -> Result<Self, RtpError> {
        let fixed = packet.get(..FIXED_HEADER).ok_or(RtpError::TooShort)?;
        let version = fixed[0] >> 6;
        if version != 2 {
            return Err(RtpError::Version(version));
        }
        let padding = fixed[0] & 0x20 != 0;
        let extension = fixed[0] & 0x10 != 0;
        let csrc_count = usize::from(fixed[0] & 0x0f);
        let mut offset = FIXED_HEADER + 4 * csrc_count;
        if extension {
            let ext = packet.get(offset..offset + 4).ok_or(RtpError::Truncated)?;
            let words = usize::from(u16::from_be_bytes([ext[2], ext[3]]));
            offset += 4 + 4 * words;
        }
        if offset > packet.len() {
            return Err(RtpError::Truncated);
        }
        if padding {
            let pad = usize::from(packet[packet.len() - 1]);
            if pad == 0 || offset + pad > packet.len() {
                return Err(RtpError::Truncated);
            }
        }
        Ok(RtpHeader {
            payload_type: fixed[1] & 0x7f,
            marker: fixed[1] & 0x80 != 0,
            sequence: u16::from_be_bytes([fixed[2], fixed[3]]),
            timestamp: u32::from_be_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]),
            ssrc: u32::from_be_bytes([fixed[8], fixed[9], fixed[10], fixed[11]]),
            payload_offset: offset,
        })
    }
}

/// Follows one stream's sequence numbers and counts the packets missing from it.
///
/// A packet one past the highest seen is in order; a forward jump of `d` means
/// `d - 1` packets were lost; a packet at or behind the highest seen (duplicate
/// or reordered) counts nothing; a change of SSRC or a jump beyond
/// `MAX_DROPOUT` starts over from that packet.
#[derive(Debug, Clone, Default)]
pub struct SequenceTracker {
    last: Option<(u32, u16)>,
}

impl SequenceTracker {
    /// Notes a packet; returns how many packets are newly known to be lost.
    pub fn observe(&mut self, ssrc: u32, sequence: u16) -> u64 {
        let Some((last_ssrc, highest)) = self.last else {
            self.last = Some((ssrc, sequence));
            return 0;
        };
        if last_ssrc != ssrc {
            self.last = Some((ssrc, sequence));
            return 0;
        }
        let delta = sequence.wrapping_sub(highest);
        if delta == 0 || delta >= 0x8000 {
            // A duplicate, or a late packet.
            return 0;
        }
        self.last = Some((ssrc, sequence));
        if delta > MAX_DROPOUT {
            return 0;
        }
        u64::from(delta - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// An RTP packet with no CSRC, extension or padding.
    pub fn packet(pt: u8, seq: u16, ssrc: u32, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x80, pt & 0x7f];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&1234u32.to_be_bytes());
        p.extend_from_slice(&ssrc.to_be_bytes());
        p.extend_from_slice(payload);
        p
    }

    #[test]
    fn headers_are_read() {
        let p = packet(33, 65535, 0xdead_beef, b"ts");
        let h = RtpHeader::parse(&p).expect("rtp");
        assert_eq!(
            (
                h.payload_type,
                h.sequence,
                h.ssrc,
                h.timestamp,
                h.payload_offset,
                h.marker
            ),
            (33, 65535, 0xdead_beef, 1234, 12, false)
        );
        // Two CSRCs and a one-word extension.
        let mut q = vec![0x92, 0x80 | 96, 0, 1, 0, 0, 0, 0, 0, 0, 0, 9];
        q.extend_from_slice(&[0; 8]);
        q.extend_from_slice(&[0xbe, 0xde, 0, 1, 1, 2, 3, 4]);
        q.push(0xaa);
        let h = RtpHeader::parse(&q).expect("rtp");
        assert_eq!((h.payload_type, h.marker, h.payload_offset), (96, true, 28));
        assert_eq!(RtpHeader::parse(&q[..25]), Err(RtpError::Truncated));
        assert_eq!(RtpHeader::parse(&[0x80; 11]), Err(RtpError::TooShort));
        assert_eq!(RtpHeader::parse(&[0x40; 12]), Err(RtpError::Version(1)));
        // Padding longer than what follows the header.
        let mut padded = packet(96, 1, 1, &[0, 0, 9]);
        padded[0] |= 0x20;
        assert_eq!(RtpHeader::parse(&padded), Err(RtpError::Truncated));
    }

    #[test]
    fn gaps_count_as_loss() {
        let mut t = SequenceTracker::default();
        assert_eq!(t.observe(1, 10), 0);
        assert_eq!(t.observe(1, 11), 0);
        assert_eq!(t.observe(1, 14), 2);
        assert_eq!(t.observe(1, 12), 0, "late");
        assert_eq!(t.observe(1, 14), 0, "duplicate");
        assert_eq!(t.observe(1, 15), 0);
        // Wrapping.
        let mut w = SequenceTracker::default();
        w.observe(1, 65534);
        assert_eq!(w.observe(1, 1), 2);
        // A restart of the sender or a new stream is not loss.
        assert_eq!(w.observe(1, 20_000), 0);
        assert_eq!(w.observe(2, 5), 0);
        assert_eq!(w.observe(2, 7), 1);
    }

    proptest! {
        #[test]
        fn parsing_never_panics_and_stays_in_bounds(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(h) = RtpHeader::parse(&bytes) {
                prop_assert!(h.payload_offset >= FIXED_HEADER);
                prop_assert!(h.payload_offset <= bytes.len());
                prop_assert!(h.payload_type < 128);
                prop_assert_eq!(bytes[0] >> 6, 2);
            }
        }

        #[test]
        fn built_packets_parse_back(pt in 0u8..128, seq: u16, ssrc: u32, payload in proptest::collection::vec(any::<u8>(), 0..64)) {
            let p = packet(pt, seq, ssrc, &payload);
            let h = RtpHeader::parse(&p).expect("valid packet");
            prop_assert_eq!((h.payload_type, h.sequence, h.ssrc), (pt, seq, ssrc));
            prop_assert_eq!(&p[h.payload_offset..], &payload[..]);
        }

        #[test]
        fn loss_equals_the_packets_skipped(start: u16, ssrc: u32, gaps in proptest::collection::vec(1u16..50, 1..100)) {
            let mut t = SequenceTracker::default();
            t.observe(ssrc, start);
            let mut seq = start;
            let mut lost = 0;
            for g in &gaps {
                seq = seq.wrapping_add(*g);
                lost += t.observe(ssrc, seq);
            }
            let want: u64 = gaps.iter().map(|g| u64::from(g - 1)).sum();
            prop_assert_eq!(lost, want);
        }
    }
}
