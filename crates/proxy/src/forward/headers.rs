//! Header work of the exchange with an upstream: hop-by-hop headers removed
//! (RFC 9110 §7.6.1), the forwarding headers added (`X-Forwarded-*`, `Forwarded`),
//! protocol upgrades checked, and a bodyless request's head written as bytes.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::Method;

use super::{Peer, X_REQUEST_ID};

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Removes hop-by-hop headers (RFC 9110 §7.6.1), including those named in
/// `Connection`; keeps `Upgrade`/`Connection: upgrade` when `upgrade` is set.
pub(super) fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    // One pass over the names finds which of them are present (usually none,
    // or just `Connection: keep-alive`); only those are removed.
    let mut present = 0u8;
    let mut has_upgrade = false;
    for k in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == k) {
            present |= 1 << i;
        } else if k == header::UPGRADE {
            has_upgrade = true;
        }
    }
    if present & 1 != 0 {
        // Headers named by `Connection` are hop-by-hop too (`keep-alive`, `close`
        // and `upgrade` name nothing else to remove).
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|t| {
                !t.eq_ignore_ascii_case("keep-alive")
                    && !t.eq_ignore_ascii_case("close")
                    && !t.eq_ignore_ascii_case("upgrade")
            })
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect();
        for n in named {
            headers.remove(n);
        }
    }
    for (i, n) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(n);
        }
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else if has_upgrade {
        headers.remove(header::UPGRADE);
    }
}

/// The protocol names (without versions) of `Upgrade` values.
fn upgrade_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::UPGRADE)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("\u{0}").split(','))
        .map(|t| t.split('/').next().unwrap_or("").trim())
}

/// Whether a request asks to switch protocols and the route allows every protocol
/// it names: `websocket` when the route allows WebSockets, and those it lists.
pub(super) fn upgrade_allowed(route: &fleetgate_core::gateway::Route, headers: &HeaderMap) -> bool {
    is_upgrade(headers)
        && upgrade_tokens(headers).all(|t| {
            (route.websocket && t.eq_ignore_ascii_case("websocket"))
                || route.upgrades.iter().any(|u| u.eq_ignore_ascii_case(t))
        })
}

/// Whether an upstream's `101` switches to a protocol the request asked for.
pub(super) fn upgrade_answered(requested: &HeaderMap, answer: &HeaderMap) -> bool {
    let mut got = upgrade_tokens(answer);
    match (got.next(), got.next()) {
        (Some(p), None) => upgrade_tokens(requested).any(|r| r.eq_ignore_ascii_case(p)),
        _ => false,
    }
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}

/// Every non-empty line of a header, in order, joined with `sep`: `", "` for a list
/// header a client split over several lines (RFC 9110 §5.3), `"; "` for HTTP/2's
/// cookie fields (RFC 9113 §8.2.3).
pub(super) fn joined_lines(headers: &HeaderMap, name: &HeaderName, sep: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for v in headers.get_all(name).iter().filter(|v| !v.is_empty()) {
        if !out.is_empty() {
            out.extend_from_slice(sep);
        }
        out.extend_from_slice(v.as_bytes());
    }
    out
}

pub(super) fn append_forwarded(
    headers: &mut HeaderMap,
    peer: &Peer,
    host: &str,
    proto: &'static str,
) {
    let mut xff = joined_lines(headers, &X_FORWARDED_FOR, b", ");
    if xff.is_empty() {
        headers.insert(X_FORWARDED_FOR, peer.ip.clone());
    } else {
        xff.extend_from_slice(b", ");
        xff.extend_from_slice(peer.ip.as_bytes());
        if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(xff)) {
            headers.insert(X_FORWARDED_FOR, v);
        }
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    match headers.get(header::HOST).cloned() {
        Some(v) => {
            headers.insert(X_FORWARDED_HOST, v);
        }
        None => {
            if let Ok(v) = HeaderValue::from_str(host) {
                headers.insert(X_FORWARDED_HOST, v);
            }
        }
    }
    let mut fwd = joined_lines(headers, &header::FORWARDED, b", ");
    if !fwd.is_empty() {
        fwd.extend_from_slice(b", ");
    }
    fwd.extend_from_slice(b"for=");
    fwd.extend_from_slice(peer.node.as_bytes());
    fwd.extend_from_slice(b";host=\"");
    fwd.extend(host.bytes().filter(|c| *c != b'"' && *c != b'\\'));
    fwd.extend_from_slice(b"\";proto=");
    fwd.extend_from_slice(proto.as_bytes());
    // The String's buffer becomes the header value without another copy.
    if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(fwd)) {
        headers.insert(header::FORWARDED, v);
    }
}

/// The forwarding headers written into a bodyless request's head (see
/// [`write_request_head`]), in place of the client's own.
pub(super) struct Forwarding<'a> {
    pub(super) peer: &'a Peer,
    pub(super) host: &'a str,
    pub(super) proto: &'static str,
    pub(super) rid: &'a HeaderValue,
}

fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Writes the HTTP/1.1 head of a bodyless request to `out`: the request line, `Host`
/// naming the target, the client's headers without hop-by-hop ones (RFC 9110 §7.6.1;
/// headers named in `Connection` must be gone already) and, with `fwd`, the
/// forwarding headers `append_forwarded` would add (`X-Forwarded-For` and `Forwarded`
/// extend what the client sent), and `X-Request-Id`. Without `fwd`, they are in
/// `headers` already. One pass over the client's headers, no header map built.
pub(super) fn write_request_head(
    out: &mut Vec<u8>,
    method: &Method,
    path: [&str; 2],
    target_host: &HeaderValue,
    headers: &HeaderMap,
    fwd: Option<&Forwarding<'_>>,
) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(path[0].as_bytes());
    out.extend_from_slice(path[1].as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    push_header(out, b"host", target_host.as_bytes());
    // Every line a client sent of these two lists, in order (usually none or one).
    let mut xff: Vec<&HeaderValue> = Vec::new();
    let mut forwarded: Vec<&HeaderValue> = Vec::new();
    for (name, value) in headers {
        if *name == header::HOST || HOP_BY_HOP.iter().any(|h| h == name) || *name == header::UPGRADE
        {
            continue;
        }
        if fwd.is_some() {
            if *name == X_FORWARDED_FOR {
                xff.push(value);
                continue;
            }
            if *name == header::FORWARDED {
                forwarded.push(value);
                continue;
            }
            if *name == X_FORWARDED_PROTO || *name == X_FORWARDED_HOST || *name == X_REQUEST_ID {
                continue;
            }
        }
        push_header(out, name.as_str().as_bytes(), value.as_bytes());
    }
    if let Some(f) = fwd {
        out.extend_from_slice(b"x-forwarded-for: ");
        for prev in xff.iter().filter(|v| !v.is_empty()) {
            out.extend_from_slice(prev.as_bytes());
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(f.peer.ip.as_bytes());
        out.extend_from_slice(b"\r\n");
        push_header(out, b"x-forwarded-proto", f.proto.as_bytes());
        push_header(out, b"x-forwarded-host", f.host.as_bytes());
        out.extend_from_slice(b"forwarded: ");
        for prev in forwarded.iter().filter(|v| !v.is_empty()) {
            out.extend_from_slice(prev.as_bytes());
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(b"for=");
        out.extend_from_slice(f.peer.node.as_bytes());
        out.extend_from_slice(b";host=\"");
        out.extend(f.host.bytes().filter(|c| *c != b'"' && *c != b'\\'));
        out.extend_from_slice(b"\";proto=");
        out.extend_from_slice(f.proto.as_bytes());
        out.extend_from_slice(b"\r\n");
        push_header(out, b"x-request-id", f.rid.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod hop_tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop_and_connection_named_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-private, Upgrade"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        let mut plain = h.clone();
        strip_hop_by_hop(&mut plain, false);
        let names: Vec<&str> = plain.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-kept"]);
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h[header::CONNECTION], "upgrade");
        assert_eq!(h[header::UPGRADE], "websocket");
        assert!(!h.contains_key("x-private") && !h.contains_key("keep-alive"));
    }
}
