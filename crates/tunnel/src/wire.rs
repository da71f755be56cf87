//! The tunnel protocol's bytes (sheet 7.5, 7.6): control frames, stream headers,
//! TCP chunks and UDP datagrams, with their parsers for untrusted input.
//!
//! Control frames and stream headers are `u32 BE length || JSON`; TCP chunks are
//! `u32 BE length || sealed unit`; both are limited to [`MAX_FRAME`]. A UDP datagram
//! is the tunnel's 16-byte binary UUID followed by a sealed unit.

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use uuid::Uuid;

use crate::TunnelError;
use fleetgate_protocol::tunnel::{TunnelDirection, TunnelProtocol};

/// Largest control frame, stream header or TCP chunk body: 1 MiB.
pub const MAX_FRAME: usize = 1024 * 1024;
/// Tunnel protocol version this implementation speaks.
pub const PROTOCOL_VERSION: u32 = 1;
/// Bytes of tunnel id in front of every UDP datagram.
pub const DATAGRAM_PREFIX: usize = 16;

/// Every message of the control stream, relay and direct mode alike, tagged by `type`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ControlMessage {
    /// Edge → relay, first: who is speaking.
    Hello {
        protocol_version: u32,
        software_version: String,
    },
    /// Relay → edge: the answer to `hello`.
    HelloAck {
        protocol_version: u32,
        software_version: String,
    },
    /// Edge → relay: the edge's manager node id.
    Identify {
        edge_id: String,
    },
    /// Edge → relay: join one end of a tunnel.
    TunnelBind {
        tunnel_id: Uuid,
        direction: TunnelDirection,
        protocol: TunnelProtocol,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bind_token: Option<String>,
    },
    /// Edge → relay: leave a tunnel.
    TunnelUnbind {
        tunnel_id: Uuid,
    },
    /// Relay → edge: bound, the other end is missing.
    TunnelWaiting {
        tunnel_id: Uuid,
    },
    /// Relay → edge: both ends bound, traffic flows.
    TunnelReady {
        tunnel_id: Uuid,
    },
    /// Relay → edge: the tunnel is refused or gone.
    TunnelDown {
        tunnel_id: Uuid,
        reason: String,
    },
    /// Direct mode, entry → exit: proof of the PSK.
    PeerAuth {
        tunnel_id: Uuid,
        token: String,
    },
    /// Direct mode, exit → entry: the proof was good.
    PeerAuthOk {
        tunnel_id: Uuid,
    },
    /// Direct mode, exit → entry: the proof was not good.
    PeerAuthError {
        reason: String,
    },
    Ping,
    Pong,
}

const KNOWN_TYPES: &[&str] = &[
    "hello",
    "hello_ack",
    "identify",
    "tunnel_bind",
    "tunnel_unbind",
    "tunnel_waiting",
    "tunnel_ready",
    "tunnel_down",
    "peer_auth",
    "peer_auth_ok",
    "peer_auth_error",
    "ping",
    "pong",
];

/// A decoded control frame: a message, or a type this version does not know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    Known(ControlMessage),
    /// A newer peer's message; skipped, never fatal.
    Unknown(String),
}

/// Parses one control frame body. Unknown `type`s are [`Parsed::Unknown`]; a known
/// type with bad fields, or anything that is not a JSON object with a string
/// `type`, is an error.
pub fn parse_control(body: &[u8]) -> Result<Parsed, TunnelError> {
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| TunnelError::Protocol(format!("control frame is not JSON: {e}")))?;
    let kind = value
        .get("type")
        .and_then(|t| t.as_str())
        .ok_or_else(|| TunnelError::Protocol("control frame has no string `type`".into()))?;
    if !KNOWN_TYPES.contains(&kind) {
        return Ok(Parsed::Unknown(kind.to_owned()));
    }
    let kind = kind.to_owned();
    serde_json::from_value(value)
        .map(Parsed::Known)
        .map_err(|e| TunnelError::Protocol(format!("bad `{kind}` message: {e}")))
}

/// The header opening every TCP data stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamHeader {
    pub tunnel_id: Uuid,
    pub stream_type: StreamType,
}

/// What a data stream carries; only TCP in protocol v1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StreamType {
    Tcp,
}

impl StreamHeader {
    /// The header of a TCP stream of `tunnel_id`.
    pub fn tcp(tunnel_id: Uuid) -> Self {
        StreamHeader {
            tunnel_id,
            stream_type: StreamType::Tcp,
        }
    }
}

/// Parses a stream header body.
pub fn parse_stream_header(body: &[u8]) -> Result<StreamHeader, TunnelError> {
    serde_json::from_slice(body)
        .map_err(|e| TunnelError::Protocol(format!("bad stream header: {e}")))
}

/// `len || body` for a body of at most [`MAX_FRAME`] bytes.
pub fn frame(body: &[u8]) -> Result<Vec<u8>, TunnelError> {
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&frame_len(body.len())?);
    out.extend_from_slice(body);
    Ok(out)
}

/// The 4-byte big-endian length prefix of a body, refusing oversized ones.
pub fn frame_len(len: usize) -> Result<[u8; 4], TunnelError> {
    if len > MAX_FRAME {
        return Err(TunnelError::FrameTooLarge(len));
    }
    // MAX_FRAME fits in u32, so this cannot truncate.
    Ok((len as u32).to_be_bytes())
}

/// The framed JSON of a message or header.
pub fn encode_json<T: Serialize>(msg: &T) -> Result<Vec<u8>, TunnelError> {
    let body = serde_json::to_vec(msg)
        .map_err(|e| TunnelError::Protocol(format!("cannot encode message: {e}")))?;
    frame(&body)
}

/// Splits one frame off the front of `buf`: `Ok(None)` when more bytes are needed,
/// otherwise the body and how many bytes of `buf` it used.
pub fn split_frame(buf: &[u8]) -> Result<Option<(&[u8], usize)>, TunnelError> {
    let Some(prefix) = buf.get(..4) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
    if len > MAX_FRAME {
        return Err(TunnelError::FrameTooLarge(len));
    }
    Ok(buf.get(4..4 + len).map(|body| (body, 4 + len)))
}

/// Reads one frame body. `Ok(None)` when the stream ends cleanly before a frame;
/// an end inside a frame is an error.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Vec<u8>>, TunnelError> {
    let mut prefix = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = r.read(&mut prefix[got..]).await?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(TunnelError::Protocol(
                    "stream ended inside a frame length".into(),
                ))
            };
        }
        got += n;
    }
    let len = u32::from_be_bytes(prefix) as usize;
    if len > MAX_FRAME {
        return Err(TunnelError::FrameTooLarge(len));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    Ok(Some(body))
}

/// Writes one framed message.
pub async fn write_json<W: AsyncWrite + Unpin, T: Serialize>(
    w: &mut W,
    msg: &T,
) -> Result<(), TunnelError> {
    w.write_all(&encode_json(msg)?).await?;
    Ok(())
}

/// Reads control frames until a known message arrives; unknown types are skipped.
/// `Ok(None)` at a clean end of stream.
pub async fn read_control<R: AsyncRead + Unpin>(
    r: &mut R,
) -> Result<Option<ControlMessage>, TunnelError> {
    loop {
        let Some(body) = read_frame(r).await? else {
            return Ok(None);
        };
        match parse_control(&body)? {
            Parsed::Known(msg) => return Ok(Some(msg)),
            Parsed::Unknown(kind) => {
                tracing::debug!(kind, "skipping unknown tunnel control message")
            }
        }
    }
}

/// Reads the header of a data stream.
pub async fn read_stream_header<R: AsyncRead + Unpin>(
    r: &mut R,
) -> Result<StreamHeader, TunnelError> {
    let body = read_frame(r)
        .await?
        .ok_or_else(|| TunnelError::Protocol("data stream ended before its header".into()))?;
    parse_stream_header(&body)
}

/// Splits a UDP datagram into its tunnel id and sealed unit.
pub fn split_datagram(datagram: &[u8]) -> Option<(Uuid, &[u8])> {
    let id = datagram.get(..DATAGRAM_PREFIX)?;
    let id = Uuid::from_slice(id).ok()?;
    Some((id, &datagram[DATAGRAM_PREFIX..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id() -> Uuid {
        Uuid::parse_str("6f0a3a4e-0d3b-4d4c-8a53-0c8f4f8b1a11").expect("uuid")
    }

    #[test]
    fn messages_have_the_sheet_spellings() {
        let bind = ControlMessage::TunnelBind {
            tunnel_id: id(),
            direction: TunnelDirection::Egress,
            protocol: TunnelProtocol::Udp,
            bind_token: None,
        };
        assert_eq!(
            serde_json::to_string(&bind).expect("json"),
            r#"{"type":"tunnel_bind","tunnel_id":"6f0a3a4e-0d3b-4d4c-8a53-0c8f4f8b1a11","direction":"egress","protocol":"udp"}"#
        );
        assert_eq!(
            serde_json::to_string(&ControlMessage::Ping).expect("json"),
            r#"{"type":"ping"}"#
        );
        let hello = ControlMessage::HelloAck {
            protocol_version: 1,
            software_version: "x".into(),
        };
        assert_eq!(
            serde_json::to_string(&hello).expect("json"),
            r#"{"type":"hello_ack","protocol_version":1,"software_version":"x"}"#
        );
        let header = StreamHeader::tcp(id());
        assert_eq!(
            serde_json::to_string(&header).expect("json"),
            r#"{"tunnel_id":"6f0a3a4e-0d3b-4d4c-8a53-0c8f4f8b1a11","stream_type":"tcp"}"#
        );
    }

    #[test]
    fn unknown_types_are_skipped_and_bad_known_ones_are_errors() {
        assert_eq!(
            parse_control(br#"{"type":"bond_probe","x":1}"#).expect("parses"),
            Parsed::Unknown("bond_probe".into())
        );
        let err =
            parse_control(br#"{"type":"tunnel_bind","tunnel_id":"nope"}"#).expect_err("bad uuid");
        assert!(err.to_string().contains("tunnel_bind"), "{err}");
        assert!(parse_control(b"[1]").is_err());
        assert!(parse_control(b"\xff").is_err());
        // Extra fields are accepted.
        assert_eq!(
            parse_control(br#"{"type":"pong","extra":true}"#).expect("parses"),
            Parsed::Known(ControlMessage::Pong)
        );
    }

    #[test]
    fn frames_over_one_mib_are_refused() {
        let mut buf = ((MAX_FRAME + 1) as u32).to_be_bytes().to_vec();
        buf.extend_from_slice(b"x");
        assert!(matches!(
            split_frame(&buf),
            Err(TunnelError::FrameTooLarge(_))
        ));
        assert!(frame(&vec![0u8; MAX_FRAME + 1]).is_err());
        assert!(frame(&vec![0u8; MAX_FRAME]).is_ok());
    }

    #[tokio::test]
    async fn read_control_skips_unknown_and_ends_cleanly() {
        let mut bytes = frame(br#"{"type":"future_thing"}"#).expect("frame");
        bytes.extend(encode_json(&ControlMessage::Pong).expect("frame"));
        let mut r = &bytes[..];
        assert_eq!(
            read_control(&mut r).await.expect("read"),
            Some(ControlMessage::Pong)
        );
        assert_eq!(read_control(&mut r).await.expect("read"), None);
        let mut cut = &bytes[..6];
        assert!(read_control(&mut cut).await.is_err());
    }

    #[test]
    fn datagram_prefix_is_the_binary_uuid() {
        let mut d = id().as_bytes().to_vec();
        d.extend_from_slice(b"sealed");
        assert_eq!(split_datagram(&d), Some((id(), &b"sealed"[..])));
        assert_eq!(split_datagram(&d[..15]), None);
    }

    proptest! {
        #[test]
        fn split_frame_never_panics_and_stays_in_bounds(buf in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(Some((body, used))) = split_frame(&buf) {
                prop_assert!(used <= buf.len());
                prop_assert_eq!(body.len() + 4, used);
            }
        }

        #[test]
        fn frame_roundtrip(body in proptest::collection::vec(any::<u8>(), 0..2048), tail in proptest::collection::vec(any::<u8>(), 0..8)) {
            let mut buf = frame(&body).expect("frame");
            let framed = buf.len();
            buf.extend(tail);
            let (got, used) = split_frame(&buf).expect("ok").expect("whole");
            prop_assert_eq!(got, &body[..]);
            prop_assert_eq!(used, framed);
        }

        #[test]
        fn parse_control_never_panics(body in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse_control(&body);
            let _ = parse_stream_header(&body);
            let _ = split_datagram(&body);
        }

        #[test]
        fn parse_control_never_panics_on_json_shapes(kind in "[a-z_]{0,16}", field in "[a-z_]{0,12}", v in any::<i64>()) {
            let body = format!(r#"{{"type":"{kind}","{field}":{v}}}"#);
            let _ = parse_control(body.as_bytes());
        }

        #[test]
        fn control_messages_roundtrip(token in proptest::option::of("[0-9a-f]{64}"), b in any::<u128>()) {
            let msg = ControlMessage::TunnelBind {
                tunnel_id: Uuid::from_u128(b),
                direction: TunnelDirection::Ingress,
                protocol: TunnelProtocol::Tcp,
                bind_token: token,
            };
            let framed = encode_json(&msg).expect("encode");
            let (body, _) = split_frame(&framed).expect("ok").expect("whole");
            prop_assert_eq!(parse_control(body).expect("parse"), Parsed::Known(msg));
        }
    }
}
