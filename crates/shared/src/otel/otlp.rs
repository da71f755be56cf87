//! The OTLP trace messages Fleetgate sends, encoded as protocol buffers by hand
//! (`opentelemetry/proto/collector/trace/v1/trace_service.proto` and the
//! `trace`, `resource` and `common` messages it uses): an
//! `ExportTraceServiceRequest` of one resource, its spans grouped by scope. Only
//! the fields Fleetgate fills are written; a receiver reads the others as unset.
//!
//! The one message read back is the answer's partial success (how many spans the
//! receiver refused).

use super::span::{KeyValue, Scope, Span, Value};

/// Wire types of the protobuf encoding.
const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const FIXED32: u8 = 5;

fn key(buf: &mut Vec<u8>, field: u32, wire: u8) {
    varint(buf, u64::from(field << 3 | u32::from(wire)));
}

fn varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn bytes_field(buf: &mut Vec<u8>, field: u32, data: &[u8]) {
    key(buf, field, LEN);
    varint(buf, data.len() as u64);
    buf.extend_from_slice(data);
}

fn string_field(buf: &mut Vec<u8>, field: u32, s: &str) {
    bytes_field(buf, field, s.as_bytes());
}

/// A nested message: written into `scratch`, then copied in with its length.
fn message(buf: &mut Vec<u8>, field: u32, write: impl FnOnce(&mut Vec<u8>)) {
    let mut inner = Vec::new();
    write(&mut inner);
    bytes_field(buf, field, &inner);
}

/// `common.v1.KeyValue { string key = 1; AnyValue value = 2; }`, with
/// `AnyValue { string string_value = 1; bool bool_value = 2; int64 int_value = 3; }`.
fn key_value(buf: &mut Vec<u8>, field: u32, key: &str, value: &Value) {
    message(buf, field, |kv| {
        string_field(kv, 1, key);
        message(kv, 2, |v| match value {
            Value::Str(s) => string_field(v, 1, s),
            Value::Static(s) => string_field(v, 1, s),
            Value::Bool(b) => {
                self::key(v, 2, VARINT);
                varint(v, u64::from(*b));
            }
            Value::Int(i) => {
                self::key(v, 3, VARINT);
                varint(v, *i as u64);
            }
        });
    });
}

/// `Span.flags`: the W3C trace flags (sampled) and whether the parent is remote.
const SPAN_FLAGS_HAS_IS_REMOTE: u32 = 0x100;
const SPAN_FLAGS_IS_REMOTE: u32 = 0x200;

/// `trace.v1.Span`.
fn span(buf: &mut Vec<u8>, s: &Span) {
    message(buf, 2, |m| {
        bytes_field(m, 1, &s.trace_id);
        bytes_field(m, 2, &s.span_id);
        if let Some(ts) = &s.trace_state {
            string_field(m, 3, ts);
        }
        if s.parent_span_id != [0; 8] {
            bytes_field(m, 4, &s.parent_span_id);
        }
        string_field(m, 5, &s.name);
        key(m, 6, VARINT);
        varint(m, s.kind as u64);
        key(m, 7, FIXED64);
        m.extend_from_slice(&s.start_unix_ns.to_le_bytes());
        key(m, 8, FIXED64);
        m.extend_from_slice(&s.end_unix_ns.max(s.start_unix_ns).to_le_bytes());
        for KeyValue { key, value } in &s.attributes {
            key_value(m, 9, key, value);
        }
        // Status { string message = 2; StatusCode code = 3; }: 2 is ERROR; an
        // unset status is left out.
        if let Some(msg) = &s.error {
            message(m, 15, |st| {
                if !msg.is_empty() {
                    string_field(st, 2, msg);
                }
                self::key(st, 3, VARINT);
                varint(st, 2);
            });
        }
        let mut flags = 0x01 | SPAN_FLAGS_HAS_IS_REMOTE;
        if s.remote_parent {
            flags |= SPAN_FLAGS_IS_REMOTE;
        }
        key(m, 16, FIXED32);
        m.extend_from_slice(&flags.to_le_bytes());
    });
}

/// `ExportTraceServiceRequest` of one resource (the attributes given) and the
/// spans, grouped by scope in the order of [`Scope`].
pub fn encode_request(resource: &[(&'static str, String)], spans: &[Span]) -> Vec<u8> {
    let mut scopes: Vec<Scope> = spans.iter().map(|s| s.scope).collect();
    scopes.sort();
    scopes.dedup();
    let mut out = Vec::with_capacity(256 + spans.len() * 256);
    // ResourceSpans { Resource resource = 1; repeated ScopeSpans scope_spans = 2; }
    message(&mut out, 1, |rs| {
        message(rs, 1, |r| {
            for (k, v) in resource {
                key_value(r, 1, k, &Value::Str(v.clone()));
            }
        });
        for scope in scopes {
            // ScopeSpans { InstrumentationScope scope = 1; repeated Span spans = 2; }
            message(rs, 2, |ss| {
                message(ss, 1, |sc| {
                    string_field(sc, 1, scope.name());
                    string_field(sc, 2, env!("CARGO_PKG_VERSION"));
                });
                for s in spans.iter().filter(|s| s.scope == scope) {
                    span(ss, s);
                }
            });
        }
    });
    out
}

/// Reads a varint at `*pos`.
fn read_varint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*pos)?;
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// Calls `each(field, wire, value, bytes)` for every field of one message;
/// `None` when the message is malformed.
fn fields(buf: &[u8], mut each: impl FnMut(u32, u8, u64, &[u8])) -> Option<()> {
    let mut pos = 0;
    while pos < buf.len() {
        let k = read_varint(buf, &mut pos)?;
        let (field, wire) = (u32::try_from(k >> 3).ok()?, (k & 7) as u8);
        match wire {
            VARINT => {
                let v = read_varint(buf, &mut pos)?;
                each(field, wire, v, &[]);
            }
            FIXED64 => {
                pos = pos.checked_add(8).filter(|p| *p <= buf.len())?;
                each(field, wire, 0, &buf[pos - 8..pos]);
            }
            FIXED32 => {
                pos = pos.checked_add(4).filter(|p| *p <= buf.len())?;
                each(field, wire, 0, &buf[pos - 4..pos]);
            }
            LEN => {
                let len = usize::try_from(read_varint(buf, &mut pos)?).ok()?;
                let end = pos.checked_add(len).filter(|e| *e <= buf.len())?;
                each(field, wire, 0, &buf[pos..end]);
                pos = end;
            }
            _ => return None,
        }
    }
    Some(())
}

/// What an `ExportTraceServiceResponse` says: spans refused and the receiver's
/// message (`partial_success { int64 rejected_spans = 1; string error_message = 2; }`).
/// An empty or unreadable answer refuses nothing.
pub fn decode_partial_success(buf: &[u8]) -> (u64, String) {
    let mut rejected = 0;
    let mut message = String::new();
    let _ = fields(buf, |field, wire, _, partial| {
        if field == 1 && wire == LEN {
            let _ = fields(partial, |f, w, v, b| match (f, w) {
                (1, VARINT) => rejected = v,
                (2, LEN) => message = String::from_utf8_lossy(b).chars().take(200).collect(),
                _ => {}
            });
        }
    });
    (rejected, message)
}

#[cfg(test)]
mod tests {
    use super::super::span::SpanKind;
    use super::*;

    /// Every field of a message, by number (values of the last occurrence,
    /// bytes of each).
    fn all(buf: &[u8]) -> Vec<(u32, u64, Vec<u8>)> {
        let mut out = Vec::new();
        fields(buf, |f, _, v, b| out.push((f, v, b.to_vec()))).expect("well-formed message");
        out
    }

    fn one(buf: &[u8], field: u32) -> Vec<u8> {
        all(buf)
            .into_iter()
            .find(|(f, _, _)| *f == field)
            .map(|(_, _, b)| b)
            .expect("field present")
    }

    fn sample() -> Span {
        let mut s = Span {
            scope: Scope::Gateway,
            trace_id: [1; 16],
            span_id: [2; 8],
            parent_span_id: [3; 8],
            remote_parent: true,
            trace_state: Some("k=v".into()),
            name: "GET api".into(),
            kind: SpanKind::Server,
            start_unix_ns: 1_000,
            end_unix_ns: 3_000,
            attributes: Vec::new(),
            error: Some("upstream failed".into()),
        };
        s.attr("http.response.status_code", 502u16);
        s.attr("fleetgate.route", "api");
        s.attr("fleetgate.retried", true);
        s
    }

    #[test]
    fn encodes_the_request_tree() {
        let body = encode_request(&[("service.name", "fg".into())], &[sample()]);
        let rs = one(&body, 1);
        let resource = one(&rs, 1);
        let attr = one(&resource, 1);
        assert_eq!(one(&attr, 1), b"service.name");
        assert_eq!(one(&one(&attr, 2), 1), b"fg");
        let ss = one(&rs, 2);
        assert_eq!(one(&one(&ss, 1), 1), b"fleetgate.gateway");
        let span = one(&ss, 2);
        assert_eq!(one(&span, 1), [1; 16]);
        assert_eq!(one(&span, 2), [2; 8]);
        assert_eq!(one(&span, 3), b"k=v");
        assert_eq!(one(&span, 4), [3; 8]);
        assert_eq!(one(&span, 5), b"GET api");
        assert_eq!(one(&span, 7), 1_000u64.to_le_bytes());
        assert_eq!(one(&span, 8), 3_000u64.to_le_bytes());
        let fields = all(&span);
        let kind = fields.iter().find(|f| f.0 == 6).expect("kind");
        assert_eq!(kind.1, 2);
        let attrs: Vec<_> = fields.iter().filter(|f| f.0 == 9).collect();
        assert_eq!(attrs.len(), 3);
        let status = all(&attrs[0].2);
        assert_eq!(status[0].2, b"http.response.status_code");
        let int = all(&status[1].2);
        assert_eq!((int[0].0, int[0].1), (3, 502));
        let st = all(&one(&span, 15));
        assert_eq!(st[0].2, b"upstream failed");
        assert_eq!((st[1].0, st[1].1), (3, 2));
        assert_eq!(one(&span, 16), (0x301u32).to_le_bytes());
    }

    #[test]
    fn groups_spans_by_scope() {
        let mut m = sample();
        m.scope = Scope::Manager;
        let body = encode_request(&[], &[m.clone(), sample(), m]);
        let rs = one(&body, 1);
        let scopes: Vec<_> = all(&rs).into_iter().filter(|f| f.0 == 2).collect();
        assert_eq!(scopes.len(), 2);
        let spans_in = |ss: &[u8]| all(ss).iter().filter(|f| f.0 == 2).count();
        assert_eq!(spans_in(&scopes[0].2), 1);
        assert_eq!(spans_in(&scopes[1].2), 2);
    }

    #[test]
    fn reads_partial_success() {
        let mut inner = Vec::new();
        key(&mut inner, 1, VARINT);
        varint(&mut inner, 3);
        string_field(&mut inner, 2, "too old");
        let mut resp = Vec::new();
        bytes_field(&mut resp, 1, &inner);
        assert_eq!(decode_partial_success(&resp), (3, "too old".into()));
        assert_eq!(decode_partial_success(&[]), (0, String::new()));
        assert_eq!(decode_partial_success(&[0xff]), (0, String::new()));
    }

    #[test]
    fn varints_match_the_spec() {
        let mut b = Vec::new();
        varint(&mut b, 300);
        assert_eq!(b, [0xac, 0x02]);
        let mut pos = 0;
        assert_eq!(read_varint(&b, &mut pos), Some(300));
        let mut neg = Vec::new();
        varint(&mut neg, -1i64 as u64);
        assert_eq!(neg.len(), 10);
    }
}
