//! The request-target and `Host` as the gateway routes on them.
//!
//! A route's path, IP rules and rate limit must see the path the upstream will
//! resolve, or `/public/%2e%2e/admin` walks past a rule on `/admin`. So before
//! routing, the path of every request is put in one canonical form, and that form
//! is what goes upstream:
//! - percent-encoded unreserved characters (`A-Z a-z 0-9 - . _ ~`, RFC 3986 §2.3)
//!   are decoded; every other `%XX` stays encoded, its hex digits upper-cased;
//! - an encoded `/` (`%2F`), `\` (`%5C`) or NUL (`%00`) is refused: an upstream that
//!   decodes it would see segments the gateway did not route on;
//! - a `%` not followed by two hex digits is refused;
//! - runs of `/` are merged into one (as nginx's `merge_slashes`);
//! - `.` and `..` segments are removed (RFC 3986 §5.2.4); a path that climbs above
//!   `/` is refused.
//!
//! The query string is not touched. Hosts are compared lower-case, without a
//! trailing dot, and must be a host name or IP literal with an optional port.

use std::borrow::Cow;
use std::fmt;

/// Why a request-target or `Host` cannot be routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetError {
    /// The path does not start with `/`.
    NotOriginForm,
    /// `%` not followed by two hexadecimal digits.
    BadPercentEncoding,
    /// `%2F`, `%5C` or `%00` in the path.
    EncodedSeparator,
    /// More `..` segments than there are segments before them.
    AboveRoot,
    /// The `Host` (or the target's authority) is empty.
    EmptyHost,
    /// The `Host` is not `name[:port]` or `[ip-literal][:port]`.
    BadHost,
}

impl fmt::Display for TargetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TargetError::NotOriginForm => "the request path must start with '/'",
            TargetError::BadPercentEncoding => {
                "the request path has a '%' that is not followed by two hexadecimal digits"
            }
            TargetError::EncodedSeparator => {
                "the request path has an encoded '/', '\\' or NUL (%2F, %5C, %00), which the gateway refuses"
            }
            TargetError::AboveRoot => "the request path climbs above '/' with '..'",
            TargetError::EmptyHost => "the Host header is empty",
            TargetError::BadHost => "the Host header is not a host name or IP address with an optional port",
        })
    }
}

impl std::error::Error for TargetError {}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Whether `path` may already be canonical: no `%`, no `//`, and no segment that
/// starts with a dot. A cheap scan that lets the common request skip the rewrite.
fn plain(path: &[u8]) -> bool {
    // `%` anywhere, or `/` followed by `/` or `.`: compared a pair at a time.
    !path.contains(&b'%')
        && !path
            .windows(2)
            .any(|w| w[0] == b'/' && matches!(w[1], b'/' | b'.'))
}

/// The canonical form of a request path (see the module documentation). Borrows
/// `path` when it is canonical already, which is the common case.
pub fn normalize_path(path: &str) -> Result<Cow<'_, str>, TargetError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(TargetError::NotOriginForm);
    }
    if plain(bytes) {
        return Ok(Cow::Borrowed(path));
    }
    // Decode unreserved characters, keep (upper-cased) the other escapes.
    let mut decoded: Vec<u8> = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b != b'%' {
            decoded.push(b);
            i += 1;
            continue;
        }
        let (Some(h), Some(l)) = (
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) else {
            return Err(TargetError::BadPercentEncoding);
        };
        let c = h << 4 | l;
        if matches!(c, b'/' | b'\\' | 0) {
            return Err(TargetError::EncodedSeparator);
        }
        if unreserved(c) {
            decoded.push(c);
        } else {
            decoded.push(b'%');
            decoded.push(b"0123456789ABCDEF"[usize::from(h)]);
            decoded.push(b"0123456789ABCDEF"[usize::from(l)]);
        }
        i += 3;
    }
    // Segments after the leading '/': empty ones (from '//') are merged away, '.'
    // dropped, '..' removes the segment before it.
    let mut out: Vec<&[u8]> = Vec::new();
    let mut trailing_slash = false;
    let rest = &decoded[1..];
    let count = rest.split(|b| *b == b'/').count();
    for (n, seg) in rest.split(|b| *b == b'/').enumerate() {
        let last = n + 1 == count;
        match seg {
            b"" => trailing_slash = last && !out.is_empty(),
            b"." => trailing_slash = last && !out.is_empty(),
            b".." => {
                if out.pop().is_none() {
                    return Err(TargetError::AboveRoot);
                }
                trailing_slash = last && !out.is_empty();
            }
            s => {
                out.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut canonical = String::with_capacity(decoded.len());
    for seg in &out {
        canonical.push('/');
        // Segments hold the path's own bytes and decoded ASCII: valid UTF-8 whenever
        // the input was, as a `&str` is.
        canonical.push_str(std::str::from_utf8(seg).map_err(|_| TargetError::BadPercentEncoding)?);
    }
    if out.is_empty() || trailing_slash {
        canonical.push('/');
    }
    Ok(Cow::Owned(canonical))
}

const NAME: u8 = 1;
const UPPER: u8 = 2;
const DOT: u8 = 4;
const COLON: u8 = 8;
const INVALID: u8 = 16;

/// The class of each byte in a host name with a port, as a bit: a host's bytes are
/// classified by OR-ing their bits (a loop the compiler vectorises), and only the
/// classes present decide what else to check.
static HOST_BYTES: [u8; 256] = {
    let mut t = [INVALID; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        t[c] = if b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_' {
            NAME
        } else if b.is_ascii_uppercase() {
            UPPER
        } else if b == b'.' {
            DOT
        } else if b == b':' {
            COLON
        } else {
            INVALID
        };
        c += 1;
    }
    t
};

fn valid_port(p: &[u8]) -> bool {
    !p.is_empty() && p.len() <= 5 && p.iter().all(u8::is_ascii_digit)
}

/// Checks a `Host` value (or an absolute target's authority) and returns the form
/// the gateway routes on: lower-case, the name without a trailing dot, the port
/// kept as sent. Borrows `host` when it is in that form already.
pub fn normalize_host(host: &str) -> Result<Cow<'_, str>, TargetError> {
    match canonical_host(host.as_bytes())?.0 {
        None => Ok(Cow::Borrowed(host)),
        Some(owned) => Ok(Cow::Owned(owned)),
    }
}

/// [`normalize_host`] on a header value's bytes: `None` when they are in canonical
/// form already (and then they are ASCII host characters only, so valid UTF-8), and
/// how many bytes of the canonical form are the name without the port (`None` for
/// an IP literal in brackets, whose routing name drops the brackets).
/// This runs for every request: one branch-free pass classifies the bytes (and
/// catches `..` and a leading dot), and only the classes present decide what else
/// to look at.
pub fn canonical_host(b: &[u8]) -> Result<(Option<String>, Option<usize>), TargetError> {
    match b.first() {
        None => return Err(TargetError::EmptyHost),
        Some(b'[') => return canonical_ip_literal(b).map(|h| (h, None)),
        Some(_) => {}
    }
    // A dot after a dot (or first: `prev` starts as one) sets the INVALID bit.
    let mut seen = 0u8;
    let mut prev = DOT;
    for &x in b {
        let c = HOST_BYTES[usize::from(x)];
        seen |= c | ((prev & c & DOT) << 2);
        prev = c;
    }
    if seen & INVALID != 0 {
        return Err(TargetError::BadHost);
    }
    let (name, port) = if seen & COLON != 0 {
        let i = b.iter().position(|&c| c == b':').unwrap_or(b.len());
        let (name, port) = (&b[..i], &b[(i + 1).min(b.len())..]);
        if !valid_port(port) {
            return Err(TargetError::BadHost);
        }
        (name, Some(port))
    } else {
        (b, None)
    };
    if name.is_empty() {
        return Err(TargetError::EmptyHost);
    }
    let dotted = name.len() > 1 && name.ends_with(b".");
    if !dotted && seen & UPPER == 0 {
        return Ok((None, Some(name.len())));
    }
    let name = if dotted {
        &name[..name.len() - 1]
    } else {
        name
    };
    let name_len = name.len();
    let mut out = String::with_capacity(b.len());
    // Only ASCII passed the table above.
    out.extend(name.iter().map(|c| char::from(c.to_ascii_lowercase())));
    if let Some(p) = port {
        out.push(':');
        out.extend(p.iter().map(|&c| char::from(c)));
    }
    Ok((Some(out), Some(name_len)))
}

/// `[v6-address]` with an optional port.
fn canonical_ip_literal(b: &[u8]) -> Result<Option<String>, TargetError> {
    let host = std::str::from_utf8(b).map_err(|_| TargetError::BadHost)?;
    let close = host.find(']').ok_or(TargetError::BadHost)?;
    let literal = &host[1..close];
    if literal.is_empty()
        || !literal
            .bytes()
            .all(|c| c.is_ascii_hexdigit() || matches!(c, b':' | b'.'))
        || literal.parse::<std::net::Ipv6Addr>().is_err()
    {
        return Err(TargetError::BadHost);
    }
    match &host[close + 1..] {
        "" => {}
        rest => {
            if !rest
                .strip_prefix(':')
                .is_some_and(|p| valid_port(p.as_bytes()))
            {
                return Err(TargetError::BadHost);
            }
        }
    }
    if literal.bytes().any(|c| c.is_ascii_uppercase()) {
        return Ok(Some(host.to_ascii_lowercase()));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn norm(p: &str) -> Result<String, TargetError> {
        normalize_path(p).map(Cow::into_owned)
    }

    #[test]
    fn paths_that_walk_around_a_route_become_the_path_they_reach() {
        for (raw, want) in [
            ("/public/%2e%2e/admin/x", "/admin/x"),
            ("/public/%2E%2E/admin/x", "/admin/x"),
            ("/x/../admin/x", "/admin/x"),
            ("/./admin", "/admin"),
            ("//admin", "/admin"),
            ("/%61dmin", "/admin"),
            ("/a//b///c", "/a/b/c"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/a/./b/../../c/", "/c/"),
            ("/..%2e/x", "/.../x"),
            ("/", "/"),
            ("/.", "/"),
            ("/a/..", "/"),
            ("/.well-known/acme", "/.well-known/acme"),
            ("/%7euser/%41", "/~user/A"),
            ("/a%20b/%c3%a9", "/a%20b/%C3%A9"),
        ] {
            assert_eq!(norm(raw).as_deref(), Ok(want), "{raw}");
        }
    }

    #[test]
    fn canonical_paths_are_borrowed() {
        for p in ["/", "/api/v1/users", "/a.b/c-d_e~f", "/x/"] {
            assert!(matches!(normalize_path(p), Ok(Cow::Borrowed(_))), "{p}");
        }
    }

    #[test]
    fn refuses_what_cannot_be_routed_safely() {
        for (raw, err) in [
            ("/x%2f..%2fadmin", TargetError::EncodedSeparator),
            ("/x%2F", TargetError::EncodedSeparator),
            ("/x%5c..", TargetError::EncodedSeparator),
            ("/x%00", TargetError::EncodedSeparator),
            ("/x%zz", TargetError::BadPercentEncoding),
            ("/x%4", TargetError::BadPercentEncoding),
            ("/x%", TargetError::BadPercentEncoding),
            ("/..", TargetError::AboveRoot),
            ("/../admin", TargetError::AboveRoot),
            ("/a/../../admin", TargetError::AboveRoot),
            ("/%2e%2e/admin", TargetError::AboveRoot),
            ("admin", TargetError::NotOriginForm),
            ("", TargetError::NotOriginForm),
            ("*", TargetError::NotOriginForm),
        ] {
            assert_eq!(norm(raw), Err(err), "{raw}");
        }
    }

    #[test]
    fn hosts_are_compared_in_one_form() {
        for (raw, want) in [
            ("admin.test", "admin.test"),
            ("admin.test.", "admin.test"),
            ("Admin.Test.:8080", "admin.test:8080"),
            ("127.0.0.1:80", "127.0.0.1:80"),
            ("[::1]", "[::1]"),
            ("[::1]:8080", "[::1]:8080"),
            ("localhost", "localhost"),
        ] {
            assert_eq!(
                normalize_host(raw).map(Cow::into_owned).as_deref(),
                Ok(want),
                "{raw}"
            );
        }
        for raw in [
            "admin.test/x",
            "a b",
            "user@admin.test",
            "admin.test:",
            "admin.test:80:80",
            "admin.test:123456",
            "[::1",
            "[zz]",
            "[::1]x",
            ".",
            "a..b",
            ".admin",
            "admin.test?x",
            "admin.test#x",
            ":80",
        ] {
            assert!(normalize_host(raw).is_err(), "{raw}");
        }
        assert_eq!(normalize_host(""), Err(TargetError::EmptyHost));
        // The routing name: the canonical form's bytes before the port.
        assert_eq!(
            canonical_host(b"Admin.Test.:8080"),
            Ok((Some("admin.test:8080".into()), Some(10)))
        );
        assert_eq!(canonical_host(b"a.test:80"), Ok((None, Some(6))));
        assert_eq!(canonical_host(b"a.test"), Ok((None, Some(6))));
        assert_eq!(canonical_host(b"[::1]:80"), Ok((None, None)));
    }

    /// The reference: decode unreserved escapes, then resolve segments with a stack.
    fn model(path: &str) -> Option<String> {
        let mut segs: Vec<String> = Vec::new();
        let parts: Vec<&str> = path[1..].split('/').collect();
        let mut trailing = false;
        for (i, raw) in parts.iter().enumerate() {
            let mut s = String::new();
            let b = raw.as_bytes();
            let mut j = 0;
            while j < b.len() {
                if b[j] == b'%' {
                    let v = u8::from_str_radix(raw.get(j + 1..j + 3)?, 16).ok()?;
                    if v == b'/' || v == b'\\' || v == 0 {
                        return None;
                    }
                    if unreserved(v) {
                        s.push(v as char);
                    } else {
                        s.push_str(&format!("%{v:02X}"));
                    }
                    j += 3;
                } else {
                    s.push(b[j] as char);
                    j += 1;
                }
            }
            let last = i + 1 == parts.len();
            match s.as_str() {
                "" | "." => trailing = last && !segs.is_empty(),
                ".." => {
                    segs.pop()?;
                    trailing = last && !segs.is_empty();
                }
                _ => {
                    segs.push(s);
                    trailing = false;
                }
            }
        }
        let mut out: String = segs.iter().map(|s| format!("/{s}")).collect();
        if segs.is_empty() || trailing {
            out.push('/');
        }
        Some(out)
    }

    proptest! {
        #[test]
        fn agrees_with_a_segment_stack_and_is_idempotent(
            segs in proptest::collection::vec(
                prop_oneof![
                    Just("".to_string()), Just(".".to_string()), Just("..".to_string()),
                    Just("%2e".to_string()), Just("%2E%2e".to_string()), Just("%2f".to_string()),
                    Just("%41".to_string()), Just("%zz".to_string()), Just("%20".to_string()),
                    "[a-z~_.-]{1,4}",
                ],
                0..8,
            )
        ) {
            let path = format!("/{}", segs.join("/"));
            let got = normalize_path(&path).ok().map(Cow::into_owned);
            prop_assert_eq!(&got, &model(&path), "{}", path);
            if let Some(p) = got {
                let again = normalize_path(&p).map(Cow::into_owned);
                prop_assert_eq!(again.as_deref(), Ok(p.as_str()));
                prop_assert!(!p.contains("//") && !p.contains("/./") && !p.contains("/../"));
            }
        }

        #[test]
        fn arbitrary_input_never_panics(path in "/[ -~]{0,40}", host in "[ -~]{0,40}") {
            let _ = normalize_path(&path);
            if let Ok(h) = normalize_host(&host) {
                prop_assert_eq!(normalize_host(&h).map(Cow::into_owned), Ok(h.clone().into_owned()));
            }
        }
    }
}
