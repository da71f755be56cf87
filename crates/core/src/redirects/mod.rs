//! Redirects and pages, Flecto's model: the four redirect types and statuses, the two
//! page types and content types, their validation, and the rule set the gateway
//! matches requests against ([`matcher`]).
//!
//! The wire names are Flecto's (`BASIC_HOST`, `MOVED_PERMANENT`, `TEXT_PLAIN`, …) so
//! that documents move between Fleetgate and Flecto agents unchanged.

pub mod matcher;

use serde::{Deserialize, Serialize};

use crate::ValidationError;

/// Longest redirect source or page path, in characters (Flecto's column size).
pub const MAX_SOURCE_CHARS: usize = 600;
/// Longest redirect target, in characters.
pub const MAX_TARGET_CHARS: usize = 2048;
/// Default largest page body, in bytes.
pub const DEFAULT_PAGE_SIZE_LIMIT: usize = 1024 * 1024;
/// Compiled size allowed to one regex source; larger patterns are refused.
const REGEX_SIZE_LIMIT: usize = 256 * 1024;

/// How a redirect's `source` is compared with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RedirectType {
    /// `source` equals the request URI (path and query string).
    Basic,
    /// `source` equals the request's `Host` header followed by its URI.
    BasicHost,
    /// `source` is a regex searched in the request URI.
    Regex,
    /// `source` is a regex searched in `Host` followed by the URI.
    RegexHost,
}

impl RedirectType {
    pub const ALL: [RedirectType; 4] = [
        RedirectType::Basic,
        RedirectType::BasicHost,
        RedirectType::Regex,
        RedirectType::RegexHost,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RedirectType::Basic => "BASIC",
            RedirectType::BasicHost => "BASIC_HOST",
            RedirectType::Regex => "REGEX",
            RedirectType::RegexHost => "REGEX_HOST",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// Whether the source includes the host.
    pub fn has_host(self) -> bool {
        matches!(self, RedirectType::BasicHost | RedirectType::RegexHost)
    }

    pub fn is_regex(self) -> bool {
        matches!(self, RedirectType::Regex | RedirectType::RegexHost)
    }
}

/// The HTTP status a redirect answers with.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RedirectStatus {
    /// 301.
    MovedPermanent,
    /// 302, the default.
    #[default]
    Found,
    /// 307.
    TemporaryRedirect,
    /// 308.
    PermanentRedirect,
}

impl RedirectStatus {
    pub const ALL: [RedirectStatus; 4] = [
        RedirectStatus::MovedPermanent,
        RedirectStatus::Found,
        RedirectStatus::TemporaryRedirect,
        RedirectStatus::PermanentRedirect,
    ];

    pub fn code(self) -> u16 {
        match self {
            RedirectStatus::MovedPermanent => 301,
            RedirectStatus::Found => 302,
            RedirectStatus::TemporaryRedirect => 307,
            RedirectStatus::PermanentRedirect => 308,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RedirectStatus::MovedPermanent => "MOVED_PERMANENT",
            RedirectStatus::Found => "FOUND",
            RedirectStatus::TemporaryRedirect => "TEMPORARY_REDIRECT",
            RedirectStatus::PermanentRedirect => "PERMANENT_REDIRECT",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// How a page's `path` is compared with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PageType {
    /// `path` equals the request URI.
    Basic,
    /// `path` equals `Host` followed by the URI.
    BasicHost,
}

impl PageType {
    pub fn as_str(self) -> &'static str {
        match self {
            PageType::Basic => "BASIC",
            PageType::BasicHost => "BASIC_HOST",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [PageType::Basic, PageType::BasicHost]
            .into_iter()
            .find(|t| t.as_str() == s)
    }
}

/// The media type a page is served with.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PageContentType {
    /// `text/plain`, the default.
    #[default]
    TextPlain,
    /// `application/xml`.
    Xml,
}

impl PageContentType {
    pub fn mime(self) -> &'static str {
        match self {
            PageContentType::TextPlain => "text/plain",
            PageContentType::Xml => "application/xml",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PageContentType::TextPlain => "TEXT_PLAIN",
            PageContentType::Xml => "XML",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [PageContentType::TextPlain, PageContentType::Xml]
            .into_iter()
            .find(|t| t.as_str() == s)
    }
}

/// One redirect rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Redirect {
    #[serde(rename = "type")]
    pub kind: RedirectType,
    /// A URI (`/old?x=1`), host and URI (`example.com/old`), or a regex over either.
    pub source: String,
    /// Where the client is sent; `$1`…`$9` take the regex's groups.
    pub target: String,
    #[serde(default)]
    pub status: RedirectStatus,
}

/// One static page.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Page {
    #[serde(rename = "type")]
    pub kind: PageType,
    /// The URI (`/robots.txt`) or host and URI (`example.com/robots.txt`) it answers.
    pub path: String,
    /// The whole body.
    pub content: String,
    #[serde(default, alias = "contentType")]
    pub content_type: PageContentType,
}

/// The compiled rules the gateway answers with, by request host.
#[derive(Default)]
pub struct HostRules {
    /// Projects by host (lower case, no port).
    pub by_host: std::collections::HashMap<String, std::sync::Arc<matcher::RuleSet>>,
}

impl HostRules {
    pub fn is_empty(&self) -> bool {
        self.by_host.is_empty()
    }

    /// The rules for a request's `Host` (port and letter case ignored here; matching
    /// itself sees the raw header).
    pub fn for_host(&self, host: &str) -> Option<&matcher::RuleSet> {
        if self.by_host.is_empty() {
            return None;
        }
        let name = strip_port(host);
        let found = match self.by_host.get(name) {
            Some(r) => Some(r),
            None if name.bytes().any(|b| b.is_ascii_uppercase()) => {
                self.by_host.get(&name.to_ascii_lowercase())
            }
            None => None,
        };
        found.map(|r| r.as_ref())
    }
}

/// `host` without a trailing `:port` (IPv6 literals keep their brackets).
pub fn strip_port(host: &str) -> &str {
    match host.rfind(':') {
        Some(i)
            if !host[i..].contains(']') && host[i + 1..].bytes().all(|b| b.is_ascii_digit()) =>
        {
            &host[..i]
        }
        _ => host,
    }
}

/// Compiles a redirect source the way the gateway runs it: Go RE2's dialect as Flecto
/// agents use it, so `\d`, `\w`, `\s` and `\b` are ASCII classes and matching is done on
/// the request's bytes.
pub fn compile_regex(source: &str) -> Result<regex::bytes::Regex, String> {
    regex::bytes::RegexBuilder::new(source)
        .unicode(false)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| match e {
            regex::Error::Syntax(s) => format!("is not a valid regex: {}", s.trim()),
            regex::Error::CompiledTooBig(_) => "regex is too large once compiled".to_string(),
            other => format!("is not a valid regex: {other}"),
        })
}

/// A redirect target made fit for a `Location` header: bytes of non-ASCII text and
/// characters a URI cannot hold (controls, space, `"`, `<`, `>`, `\`, `^`, a backtick,
/// `{`, `|`, `}`, and a `%` that does not start a `%XX` escape) are percent-encoded;
/// everything else, existing `%XX` escapes and reserved characters included, is kept
/// exactly as written. Raw UTF-8 in a
/// header is not portable (clients read it as Latin-1 or refuse it), and encoding only
/// what a URI cannot hold never changes what a valid target points at.
pub fn encode_location(target: &str) -> std::borrow::Cow<'_, str> {
    fn needs(bytes: &[u8], i: usize) -> bool {
        let b = bytes[i];
        match b {
            0x00..=0x20 | 0x7f..=0xff => true,
            b'"' | b'<' | b'>' | b'\\' | b'^' | b'`' | b'{' | b'|' | b'}' => true,
            b'%' => {
                !(i + 2 < bytes.len()
                    && bytes[i + 1].is_ascii_hexdigit()
                    && bytes[i + 2].is_ascii_hexdigit())
            }
            _ => false,
        }
    }
    let bytes = target.as_bytes();
    let Some(first) = (0..bytes.len()).find(|&i| needs(bytes, i)) else {
        return std::borrow::Cow::Borrowed(target);
    };
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(target.len() + 16);
    out.push_str(&target[..first]);
    for i in first..bytes.len() {
        let b = bytes[i];
        if needs(bytes, i) {
            out.push('%');
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 0xf)] as char);
        } else {
            out.push(b as char);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Substitutes `$1`…`$9` in `target` with the groups of a regex match, as Flecto's
/// agents do: from `$9` down to `$1`, every occurrence, one number at a time (so `$10`
/// becomes group 1 followed by `0`); `$0` is left as it is. `group(n)` gives group
/// `n`'s text; `None` (a group that did not take part) becomes the empty string. What a
/// group the pattern does not have becomes is the caller's choice: the matcher keeps
/// `$n` as written, as Flecto's agents do.
pub fn expand_target(target: &str, group: impl Fn(usize) -> Option<String>) -> String {
    if !target.contains('$') {
        return target.to_string();
    }
    let mut out = target.to_string();
    for n in (1..=9).rev() {
        let token = ["$", &n.to_string()].concat();
        if out.contains(&token) {
            out = out.replace(&token, &group(n).unwrap_or_default());
        }
    }
    out
}

/// Splits `host/path` at the first `/`; `None` unless both parts are non-empty.
fn split_host(s: &str) -> Option<(&str, &str)> {
    let i = s.find('/')?;
    let (host, path) = s.split_at(i);
    (!host.is_empty() && !path.is_empty()).then_some((host, path))
}

fn check_host_source(field: &str, s: &str, e: &mut ValidationError) {
    if s.contains("://") || s.starts_with("//") {
        e.push(
            field,
            "must be host and path (example.com/path) without a scheme",
        );
    } else if split_host(s).is_none() {
        e.push(
            field,
            "must start with a host followed by a path (example.com/path)",
        );
    }
}

fn has_scheme(target: &str) -> bool {
    target.starts_with("http://") || target.starts_with("https://") || target.starts_with("//")
}

/// The match key a client following `target` would send for a rule of type `kind`, if
/// the target is on the same kind of key (a path for BASIC/REGEX, host+path for the host
/// types).
fn follow_up_key(kind: RedirectType, target: &str) -> Option<String> {
    if kind.has_host() {
        let rest = target
            .strip_prefix("https://")
            .or_else(|| target.strip_prefix("http://"))
            .or_else(|| target.strip_prefix("//"))?;
        split_host(rest).map(|_| rest.to_string())
    } else if target.starts_with('/') && !target.starts_with("//") {
        Some(target.to_string())
    } else {
        None
    }
}

impl Redirect {
    /// Checks the rule on its own; uniqueness within a project is the store's concern.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let mut e = ValidationError::new();
        let src = &self.source;
        if src.is_empty() {
            e.push("source", "is required");
        } else if src.chars().count() > MAX_SOURCE_CHARS {
            e.push(
                "source",
                format!("must be at most {MAX_SOURCE_CHARS} characters"),
            );
        } else if src.chars().any(char::is_control) {
            e.push("source", "must not contain control characters");
        }
        if self.target.is_empty() {
            e.push("target", "is required");
        } else if self.target.chars().count() > MAX_TARGET_CHARS {
            e.push(
                "target",
                format!("must be at most {MAX_TARGET_CHARS} characters"),
            );
        } else if self.target.chars().any(char::is_control) {
            e.push("target", "must not contain control characters");
        }
        if !e.is_empty() {
            return e.into_result();
        }
        let mut compiled = None;
        match self.kind {
            RedirectType::Basic => {
                if !src.starts_with('/') || src.starts_with("//") {
                    e.push("source", "must be a path starting with a single /");
                }
            }
            RedirectType::BasicHost => check_host_source("source", src, &mut e),
            RedirectType::Regex | RedirectType::RegexHost => {
                if self.kind == RedirectType::RegexHost && src.contains("://") {
                    e.push("source", "must match host and path, without a scheme");
                }
                match compile_regex(src) {
                    Ok(re) => compiled = Some(re),
                    Err(msg) => e.push("source", msg),
                }
            }
        }
        if self.kind.has_host() && !has_scheme(&self.target) {
            e.push(
                "target",
                "must be an absolute URL (http://, https:// or //) for a host redirect",
            );
        }
        if !e.is_empty() {
            return e.into_result();
        }
        // A target without groups is probed as it is; one with groups is probed with a
        // few sample group values, which finds rules such as `^/a/(.*)$` → `/a/$1`.
        let probes: &[&str] = if self.target.contains('$') {
            &["1", "x", "a1"]
        } else {
            &[""]
        };
        let loops = probes.iter().any(|probe| {
            let target = expand_target(&self.target, |_| Some(probe.to_string()));
            let Some(key) = follow_up_key(self.kind, &target) else {
                return false;
            };
            match &compiled {
                None => key == *src,
                Some(re) => re.captures(key.as_bytes()).is_some_and(|caps| {
                    let again = expand_target(&self.target, |n| {
                        caps.get(n)
                            .map(|m| String::from_utf8_lossy(m.as_bytes()).into_owned())
                    });
                    follow_up_key(self.kind, &again).as_ref() == Some(&key)
                }),
            }
        });
        if loops {
            e.push(
                "target",
                "redirects to itself (the target matches this rule's source)",
            );
        }
        e.into_result()
    }
}

impl Page {
    /// Checks the page on its own against the largest body allowed.
    pub fn validate(&self, size_limit: usize) -> Result<(), ValidationError> {
        let mut e = ValidationError::new();
        let p = &self.path;
        if p.is_empty() {
            e.push("path", "is required");
        } else if p.chars().count() > MAX_SOURCE_CHARS {
            e.push(
                "path",
                format!("must be at most {MAX_SOURCE_CHARS} characters"),
            );
        } else if p.chars().any(|c| c.is_control() || c == ' ') {
            e.push("path", "must not contain spaces or control characters");
        } else {
            match self.kind {
                PageType::Basic => {
                    if !p.starts_with('/') || p.starts_with("//") {
                        e.push("path", "must be a path starting with a single /");
                    }
                }
                PageType::BasicHost => check_host_source("path", p, &mut e),
            }
        }
        if self.content.len() > size_limit {
            e.push(
                "content",
                format!(
                    "is {} bytes; pages are limited to {size_limit} bytes",
                    self.content.len()
                ),
            );
        }
        e.into_result()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(kind: RedirectType, source: &str, target: &str) -> Redirect {
        Redirect {
            kind,
            source: source.into(),
            target: target.into(),
            status: RedirectStatus::Found,
        }
    }

    fn field(res: Result<(), ValidationError>) -> String {
        res.expect_err("must be refused")
            .first_field()
            .unwrap_or("")
            .to_string()
    }

    #[test]
    fn enums_use_flecto_names_and_codes() {
        let v: Redirect = serde_json::from_str(
            r#"{"type":"REGEX_HOST","source":"a.com/(.*)","target":"https://b.com/$1","status":"PERMANENT_REDIRECT"}"#,
        )
        .expect("valid");
        assert_eq!(v.kind, RedirectType::RegexHost);
        assert_eq!(v.status.code(), 308);
        let d: Redirect =
            serde_json::from_str(r#"{"type":"BASIC","source":"/a","target":"/b"}"#).expect("valid");
        assert_eq!(d.status, RedirectStatus::Found);
        let codes: Vec<u16> = RedirectStatus::ALL.iter().map(|s| s.code()).collect();
        assert_eq!(codes, [301, 302, 307, 308]);
        let err = serde_json::from_str::<Redirect>(
            r#"{"type":"BASIC","source":"/a","target":"/b","status":"SEE_OTHER"}"#,
        )
        .expect_err("unknown status");
        assert!(err.to_string().contains("SEE_OTHER"), "{err}");
        let p: Page = serde_json::from_str(
            r#"{"type":"BASIC","path":"/s.xml","content":"<a/>","contentType":"XML"}"#,
        )
        .expect("camelCase content type");
        assert_eq!(p.content_type.mime(), "application/xml");
        assert_eq!(
            serde_json::to_value(&p).expect("json")["content_type"],
            "XML"
        );
    }

    #[test]
    fn validation_names_the_field() {
        use RedirectType::*;
        assert_eq!(r(Basic, "/a", "/b").validate(), Ok(()));
        assert_eq!(field(r(Basic, "a", "/b").validate()), "source");
        assert_eq!(field(r(Basic, "//a", "/b").validate()), "source");
        assert_eq!(field(r(Basic, "/a", "").validate()), "target");
        assert_eq!(field(r(BasicHost, "/a", "https://x/").validate()), "source");
        assert_eq!(
            field(r(BasicHost, "https://a.com/a", "https://x/").validate()),
            "source"
        );
        assert_eq!(
            field(r(BasicHost, "a.com", "https://x/").validate()),
            "source"
        );
        assert_eq!(field(r(BasicHost, "a.com/a", "/b").validate()), "target");
        assert_eq!(r(BasicHost, "a.com/a", "//b.com/b").validate(), Ok(()));
        assert_eq!(field(r(Regex, "^/a/(", "/b").validate()), "source");
        assert_eq!(field(r(RegexHost, "a.com/(.*)", "/b").validate()), "target");
        assert_eq!(
            r(RegexHost, "a.com/(.*)", "https://b.com/$1").validate(),
            Ok(())
        );
        let long = format!("/{}", "a".repeat(MAX_SOURCE_CHARS));
        assert_eq!(field(r(Basic, &long, "/b").validate()), "source");
    }

    #[test]
    fn a_rule_that_redirects_to_itself_is_refused() {
        use RedirectType::*;
        assert_eq!(field(r(Basic, "/a", "/a").validate()), "target");
        assert_eq!(
            field(r(BasicHost, "a.com/x", "https://a.com/x").validate()),
            "target"
        );
        assert_eq!(field(r(Regex, "^/a/(.*)$", "/a/$1").validate()), "target");
        assert_eq!(field(r(Regex, "^/(.*)$", "/fixed").validate()), "target");
        assert_eq!(
            field(r(RegexHost, "^a.com/(.*)$", "//a.com/$1").validate()),
            "target"
        );
        // A different key is no loop, nor is a target on another host.
        assert_eq!(r(Regex, "^/a/(.*)$", "/b/$1").validate(), Ok(()));
        assert_eq!(
            r(Regex, "^/a/(.*)$", "https://a.com/a/$1").validate(),
            Ok(())
        );
        assert_eq!(
            r(RegexHost, "^a.com/(.*)$", "https://b.com/$1").validate(),
            Ok(())
        );
    }

    #[test]
    fn pages_are_checked() {
        let p = |kind, path: &str, content: &str| Page {
            kind,
            path: path.into(),
            content: content.into(),
            content_type: PageContentType::TextPlain,
        };
        assert_eq!(p(PageType::Basic, "/robots.txt", "x").validate(10), Ok(()));
        assert_eq!(
            field(p(PageType::Basic, "robots.txt", "x").validate(10)),
            "path"
        );
        assert_eq!(
            field(p(PageType::BasicHost, "/robots.txt", "x").validate(10)),
            "path"
        );
        assert_eq!(
            p(PageType::BasicHost, "a.com/robots.txt", "x").validate(10),
            Ok(())
        );
        assert_eq!(
            field(p(PageType::Basic, "/r", "12345678901").validate(10)),
            "content"
        );
    }

    #[test]
    fn substitution_follows_flecto() {
        let groups = ["", "a", "b", "c", "d", "e", "f", "g", "h", "i"];
        let g = |n: usize| groups.get(n).map(|s| s.to_string());
        assert_eq!(expand_target("/t/$1-$9-$10-$11", g), "/t/a-i-a0-a1");
        assert_eq!(expand_target("/t/$0/$2", g), "/t/$0/b");
        assert_eq!(expand_target("/o/$1/z", |_| None), "/o//z");
        assert_eq!(expand_target("/plain", g), "/plain");
    }

    #[test]
    fn regexes_use_ascii_classes() {
        let re = compile_regex(r"^/(\d+)$").expect("compiles");
        assert!(re.is_match(b"/123"));
        assert!(!re.is_match("/١٢".as_bytes()));
    }
}

/// A redirect project as a fleet file declares it (`fleetgate config apply`):
/// its settings and its published rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ProjectSpec {
    pub namespace: String,
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Hosts the gateway answers with the project's rules (lower case).
    #[serde(default)]
    pub hosts: Vec<String>,
    /// The published redirects, one per source.
    #[serde(default)]
    pub redirects: Vec<Redirect>,
    /// The published pages, one per path.
    #[serde(default)]
    pub pages: Vec<Page>,
}
