//! The compiled rules of one project, matched the way Flecto agents match.
//!
//! # The rule, exactly
//!
//! A request is matched on two keys: `uri`, its request-target with the query string
//! (`/p?x=1`), and `host+uri`, the raw `Host` header as sent (port included) followed
//! directly by `uri` (`example.com:8080/p?x=1`). The first hit wins, in this order:
//!
//! 1. a `BASIC_HOST` page whose path equals `host+uri`;
//! 2. a `BASIC` page whose path equals `uri`;
//! 3. a `BASIC_HOST` redirect whose source equals `host+uri`;
//! 4. a `BASIC` redirect whose source equals `uri`;
//! 5. a `REGEX_HOST` redirect whose regex matches `host+uri`;
//! 6. a `REGEX` redirect whose regex matches `uri`.
//!
//! Exact types are hash lookups (a later duplicate replaces an earlier one). Among the
//! regexes of one type, only *candidates* are tried: a pattern's literal prefix (the
//! literal text it starts with once one leading `^` is removed, see [`literal_prefix`])
//! must be a prefix of the key; a pattern without one is always a candidate. Candidates
//! are tried longest `source` first (equal lengths in rule order) and the first whose
//! regex matches anywhere in the key (unanchored unless the pattern anchors) wins; its
//! target then has `$1`…`$9` substituted ([`super::expand_target`]). Nothing else
//! touches the query string: it is part of the key and is not carried to the target.
//!
//! Candidates are found along the key, never by trying every regex: a byte trie of the
//! literal prefixes is walked by the key's bytes, and the patterns without a prefix are
//! matched together in one pass of a [`regex::bytes::RegexSet`]. Each regex is compiled
//! on its first candidacy and kept; a set is built from the rules' text alone, so
//! publishing a large set is quick and its memory stays proportional to the regexes
//! actually in use.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::OnceLock;

use bytes::Bytes;

use super::{
    compile_regex, expand_target, Page, PageContentType, PageType, Redirect, RedirectStatus,
    RedirectType,
};

type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// A rule left out of a set because it cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// `redirect` or `page`.
    pub kind: &'static str,
    /// Position in the list given to [`RuleSet::build`].
    pub index: usize,
    pub message: String,
}

/// What a request matched.
#[derive(Debug, PartialEq, Eq)]
pub enum Hit<'a> {
    Page {
        content: &'a Bytes,
        content_type: PageContentType,
    },
    Redirect {
        status: RedirectStatus,
        location: Cow<'a, str>,
    },
}

struct Target {
    target: Box<str>,
    status: RedirectStatus,
}

struct PageBody {
    content: Bytes,
    content_type: PageContentType,
}

/// An exact-match table over `host+uri` keys without building the key: stored keys
/// are split at their first `/` into host and path.
struct HostTable<V> {
    by_host: Map<Box<str>, Map<Box<str>, V>>,
}

impl<V> Default for HostTable<V> {
    fn default() -> Self {
        Self {
            by_host: Map::default(),
        }
    }
}

impl<V> HostTable<V> {
    fn insert(&mut self, key: &str, v: V) {
        let (host, path) = key.split_at(key.find('/').unwrap_or(key.len()));
        self.by_host
            .entry(host.into())
            .or_default()
            .insert(path.into(), v);
    }

    fn get(&self, host: &str, uri: &str) -> Option<&V> {
        if self.by_host.is_empty() {
            return None;
        }
        if uri.starts_with('/') && !host.contains('/') {
            // The first `/` of host+uri is the first byte of uri.
            return self.by_host.get(host)?.get(uri);
        }
        // A Host with a `/` in it: split the plain concatenation like a stored key.
        let key = [host, uri].concat();
        let (h, p) = key.split_at(key.find('/').unwrap_or(key.len()));
        self.by_host.get(h)?.get(p)
    }
}

/// The regexes of one type.
#[derive(Default)]
struct RegexTable {
    rules: Vec<RegexRule>,
    /// Trie of literal prefixes; node 0 is the root.
    nodes: Vec<TrieNode>,
    /// Rules without a literal prefix, as indices into `rules`, and their joint set.
    unprefixed: Vec<u32>,
    set: Option<regex::bytes::RegexSet>,
}

struct RegexRule {
    source: Box<str>,
    target: Target,
    /// Order of trial: longest source first, then rule order.
    rank: u32,
    compiled: OnceLock<Option<regex::bytes::Regex>>,
}

#[derive(Default)]
struct TrieNode {
    /// Children by byte, sorted.
    children: Vec<(u8, u32)>,
    /// Rules whose prefix ends here.
    rules: Vec<u32>,
}

impl TrieNode {
    fn child(&self, b: u8) -> Option<u32> {
        if self.children.len() <= 8 {
            self.children.iter().find(|(c, _)| *c == b).map(|(_, n)| *n)
        } else {
            self.children
                .binary_search_by_key(&b, |(c, _)| *c)
                .ok()
                .map(|i| self.children[i].1)
        }
    }
}

/// The literal text every match of `pattern` starts with, as Flecto agents compute it
/// (Go's `regexp.LiteralPrefix` after removing one leading `^`): literal characters and
/// escaped punctuation up to the first operator. A character made optional by `?`,
/// `*` or `{0,…}` is not part of it; one followed by `+` or `{n,…}` (n ≥ 1) is, and ends
/// it. A pattern with a top-level `|`, or starting with a group, a class, `.`, a flag
/// such as `(?i)` or an escape such as `\d`, has none.
pub fn literal_prefix(pattern: &str) -> String {
    let p = pattern.strip_prefix('^').unwrap_or(pattern);
    if has_top_level_alternation(p) {
        return String::new();
    }
    let mut out = String::new();
    let mut chars = p.chars().peekable();
    while let Some(c) = chars.next() {
        let lit = match c {
            '\\' => match chars.next() {
                Some(e) if e.is_ascii_punctuation() => e,
                _ => break,
            },
            '.' | '[' | ']' | '(' | ')' | '|' | '*' | '+' | '?' | '{' | '}' | '^' | '$' => break,
            c => c,
        };
        match chars.peek() {
            Some('*') | Some('?') => break,
            Some('+') => {
                out.push(lit);
                break;
            }
            Some('{') => {
                let rest: String = chars.clone().skip(1).take_while(|c| *c != '}').collect();
                let min = rest.split(',').next().and_then(|m| m.parse::<u32>().ok());
                if let Some(n) = min.filter(|n| *n >= 1) {
                    for _ in 0..n.min(8) {
                        out.push(lit);
                    }
                }
                break;
            }
            _ => out.push(lit),
        }
    }
    out
}

fn has_top_level_alternation(p: &str) -> bool {
    let mut depth = 0i32;
    let mut in_class = false;
    let mut escaped = false;
    for c in p.chars() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' => escaped = true,
            '[' if !in_class => in_class = true,
            ']' if in_class => in_class = false,
            '(' if !in_class => depth += 1,
            ')' if !in_class => depth -= 1,
            '|' if !in_class && depth == 0 => return true,
            _ => {}
        }
    }
    false
}

impl RegexTable {
    fn build(mut rules: Vec<RegexRule>) -> Self {
        let mut order: Vec<u32> = (0..rules.len() as u32).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(rules[i as usize].source.len()));
        for (rank, &i) in order.iter().enumerate() {
            rules[i as usize].rank = rank as u32;
        }
        let mut t = RegexTable {
            nodes: vec![TrieNode::default()],
            ..Default::default()
        };
        let mut unprefixed_sources = Vec::new();
        for (i, r) in rules.iter().enumerate() {
            let prefix = literal_prefix(&r.source);
            if prefix.is_empty() {
                t.unprefixed.push(i as u32);
                unprefixed_sources.push(r.source.as_ref());
                continue;
            }
            let mut node = 0usize;
            for b in prefix.bytes() {
                node = match t.nodes[node].child(b) {
                    Some(n) => n as usize,
                    None => {
                        let n = t.nodes.len() as u32;
                        t.nodes.push(TrieNode::default());
                        let children = &mut t.nodes[node].children;
                        let at = children.partition_point(|(c, _)| *c < b);
                        children.insert(at, (b, n));
                        n as usize
                    }
                };
            }
            t.nodes[node].rules.push(i as u32);
        }
        if !unprefixed_sources.is_empty() {
            t.set = regex::bytes::RegexSetBuilder::new(unprefixed_sources)
                .unicode(false)
                .size_limit(64 * 1024 * 1024)
                .build()
                .ok();
        }
        for n in &mut t.nodes {
            n.children.shrink_to_fit();
            n.rules.shrink_to_fit();
        }
        t.nodes.shrink_to_fit();
        t.rules = rules;
        t
    }

    fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The first rule, in trial order, whose regex matches `key` given as one or two
    /// parts (`host`, `uri`), with its capture-substituted target.
    fn find<'a>(&'a self, parts: [&str; 2]) -> Option<(&'a Target, Cow<'a, str>)> {
        let mut candidates: Vec<u32> = Vec::new();
        let mut node = &self.nodes[0];
        'walk: for part in parts {
            for b in part.bytes() {
                match node.child(b) {
                    Some(n) => {
                        node = &self.nodes[n as usize];
                        candidates.extend_from_slice(&node.rules);
                    }
                    None => break 'walk,
                }
            }
        }
        if candidates.is_empty() && self.unprefixed.is_empty() {
            return None;
        }
        let joined;
        let key: &[u8] = if parts[0].is_empty() {
            parts[1].as_bytes()
        } else {
            joined = [parts[0], parts[1]].concat();
            joined.as_bytes()
        };
        if let Some(set) = &self.set {
            if !self.unprefixed.is_empty() {
                candidates.extend(set.matches(key).iter().map(|i| self.unprefixed[i]));
            }
        } else {
            // The joint set was too large to build: every unprefixed rule is tried.
            candidates.extend_from_slice(&self.unprefixed);
        }
        candidates.sort_unstable_by_key(|&i| self.rules[i as usize].rank);
        for i in candidates {
            let r = &self.rules[i as usize];
            let Some(re) = r
                .compiled
                .get_or_init(|| compile_regex(&r.source).ok())
                .as_ref()
            else {
                continue;
            };
            if let Some(caps) = re.captures(key) {
                let location = if r.target.target.contains('$') {
                    Cow::Owned(expand_target(&r.target.target, |n| {
                        caps.get(n)
                            .map(|m| String::from_utf8_lossy(m.as_bytes()).into_owned())
                    }))
                } else {
                    Cow::Borrowed(&*r.target.target)
                };
                return Some((&r.target, location));
            }
        }
        None
    }
}

/// One project's compiled pages and redirects. Immutable; shared between threads.
#[derive(Default)]
pub struct RuleSet {
    host_pages: HostTable<PageBody>,
    pages: Map<Box<str>, PageBody>,
    host_redirects: HostTable<Target>,
    redirects: Map<Box<str>, Target>,
    host_regexes: RegexTable,
    regexes: RegexTable,
    skipped: Vec<Skipped>,
    redirect_count: usize,
    page_count: usize,
}

impl RuleSet {
    pub fn empty() -> Self {
        Self::default()
    }

    /// Compiles a project's rules. A regex source that does not parse is skipped and
    /// reported, never fatal.
    pub fn build(redirects: Vec<Redirect>, pages: Vec<Page>) -> Self {
        let mut set = RuleSet::default();
        let mut host_regexes = Vec::new();
        let mut regexes = Vec::new();
        for (index, r) in redirects.into_iter().enumerate() {
            let target = Target {
                target: r.target.into_boxed_str(),
                status: r.status,
            };
            match r.kind {
                RedirectType::Basic => {
                    set.redirects.insert(r.source.into_boxed_str(), target);
                }
                RedirectType::BasicHost => set.host_redirects.insert(&r.source, target),
                RedirectType::Regex | RedirectType::RegexHost => {
                    if let Err(message) = check_syntax(&r.source) {
                        set.skipped.push(Skipped {
                            kind: "redirect",
                            index,
                            message,
                        });
                        continue;
                    }
                    let rule = RegexRule {
                        source: r.source.into_boxed_str(),
                        target,
                        rank: 0,
                        compiled: OnceLock::new(),
                    };
                    if r.kind == RedirectType::Regex {
                        regexes.push(rule);
                    } else {
                        host_regexes.push(rule);
                    }
                }
            }
            set.redirect_count += 1;
        }
        set.regexes = RegexTable::build(regexes);
        set.host_regexes = RegexTable::build(host_regexes);
        for p in pages {
            let body = PageBody {
                content: Bytes::from(p.content),
                content_type: p.content_type,
            };
            match p.kind {
                PageType::Basic => {
                    set.pages.insert(p.path.into_boxed_str(), body);
                }
                PageType::BasicHost => set.host_pages.insert(&p.path, body),
            }
            set.page_count += 1;
        }
        set.redirects.shrink_to_fit();
        set.pages.shrink_to_fit();
        set
    }

    pub fn skipped(&self) -> &[Skipped] {
        &self.skipped
    }

    /// Redirects in the set (skipped ones not counted).
    pub fn redirect_count(&self) -> usize {
        self.redirect_count
    }

    pub fn page_count(&self) -> usize {
        self.page_count
    }

    /// The page or redirect answering `host` (the raw `Host` header) and `uri` (the
    /// request-target with its query string), if any.
    pub fn lookup(&self, host: &str, uri: &str) -> Option<Hit<'_>> {
        let page = self
            .host_pages
            .get(host, uri)
            .or_else(|| self.pages.get(uri));
        if let Some(p) = page {
            return Some(Hit::Page {
                content: &p.content,
                content_type: p.content_type,
            });
        }
        let exact = self
            .host_redirects
            .get(host, uri)
            .or_else(|| self.redirects.get(uri));
        if let Some(t) = exact {
            return Some(Hit::Redirect {
                status: t.status,
                location: Cow::Borrowed(&t.target),
            });
        }
        let found = if self.host_regexes.is_empty() {
            None
        } else {
            self.host_regexes.find([host, uri])
        };
        let (t, location) = match found {
            Some(f) => f,
            None if self.regexes.is_empty() => return None,
            None => self.regexes.find(["", uri])?,
        };
        Some(Hit::Redirect {
            status: t.status,
            location,
        })
    }
}

/// Checks a regex source without compiling it (compilation waits for first use).
fn check_syntax(source: &str) -> Result<(), String> {
    regex_syntax::ParserBuilder::new()
        .unicode(false)
        .utf8(false)
        .build()
        .parse(source)
        .map(|_| ())
        .map_err(|e| format!("is not a valid regex: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn r(kind: RedirectType, source: &str, target: &str, status: RedirectStatus) -> Redirect {
        Redirect {
            kind,
            source: source.into(),
            target: target.into(),
            status,
        }
    }

    fn page(kind: PageType, path: &str, content: &str, ct: PageContentType) -> Page {
        Page {
            kind,
            path: path.into(),
            content: content.into(),
            content_type: ct,
        }
    }

    /// The straightforward matcher the compiled one must equal: every rule tried in
    /// the documented order, regexes compiled on the spot.
    fn reference(
        redirects: &[Redirect],
        pages: &[Page],
        host: &str,
        uri: &str,
    ) -> Option<(u16, String)> {
        let hu = format!("{host}{uri}");
        for (kind, key) in [
            (PageType::BasicHost, &hu),
            (PageType::Basic, &uri.to_string()),
        ] {
            if let Some(p) = pages
                .iter()
                .rev()
                .find(|p| p.kind == kind && p.path == *key)
            {
                return Some((200, p.content.clone()));
            }
        }
        for (kind, key) in [
            (RedirectType::BasicHost, &hu),
            (RedirectType::Basic, &uri.to_string()),
        ] {
            if let Some(x) = redirects
                .iter()
                .rev()
                .find(|x| x.kind == kind && x.source == *key)
            {
                return Some((x.status.code(), x.target.clone()));
            }
        }
        for (kind, key) in [
            (RedirectType::RegexHost, &hu),
            (RedirectType::Regex, &uri.to_string()),
        ] {
            let mut cands: Vec<&Redirect> = redirects
                .iter()
                .filter(|x| x.kind == kind && compile_regex(&x.source).is_ok())
                .filter(|x| key.starts_with(&literal_prefix(&x.source)))
                .collect();
            cands.sort_by_key(|x| std::cmp::Reverse(x.source.len()));
            for x in cands {
                let re = compile_regex(&x.source).expect("compiles");
                if let Some(c) = re.captures(key.as_bytes()) {
                    let loc = expand_target(&x.target, |n| {
                        c.get(n)
                            .map(|m| String::from_utf8_lossy(m.as_bytes()).into_owned())
                    });
                    return Some((x.status.code(), loc));
                }
            }
        }
        None
    }

    fn answer(set: &RuleSet, host: &str, uri: &str) -> Option<(u16, String)> {
        set.lookup(host, uri).map(|h| match h {
            Hit::Page { content, .. } => (200, String::from_utf8_lossy(content).into_owned()),
            Hit::Redirect { status, location } => (status.code(), location.into_owned()),
        })
    }

    #[test]
    fn literal_prefixes_as_flecto_computes_them() {
        for (pattern, prefix) in [
            ("^/blog/(\\d+)/(.*)$", "/blog/"),
            ("/old/(.*)", "/old/"),
            ("old/(.*)", "old/"),
            ("example\\.com/x/(.*)", "example.com/x/"),
            (".*\\.php$", ""),
            ("(?i)^/legacy/(.*)$", ""),
            ("^/ab?c", "/a"),
            ("^/ab*c", "/a"),
            ("^/ab+c", "/ab"),
            ("^/ab{2,}c", "/abb"),
            ("^/ab{0,2}", "/a"),
            ("/a|/b", ""),
            ("/a(x|y)", "/a"),
            ("[/]x", ""),
            ("^^/x", ""),
        ] {
            assert_eq!(literal_prefix(pattern), prefix, "{pattern}");
        }
    }

    #[test]
    fn every_type_status_host_and_query_case() {
        use PageContentType::*;
        use RedirectStatus::*;
        use RedirectType::*;
        let redirects = vec![
            r(Basic, "/b", "/b-target", MovedPermanent),
            r(Basic, "/q?x=1", "/q-target", Found),
            r(
                BasicHost,
                "ex.test/b",
                "https://ex.test/bh-target",
                TemporaryRedirect,
            ),
            r(
                BasicHost,
                "ex.test:8080/port",
                "https://ex.test/port-target",
                PermanentRedirect,
            ),
            r(
                BasicHost,
                "ex.test/q?y=2",
                "https://ex.test/qh",
                MovedPermanent,
            ),
            r(
                Regex,
                "^/blog/(\\d+)/(.*)$",
                "/articles/$1?slug=$2",
                TemporaryRedirect,
            ),
            r(Regex, "^/a/(.*)$", "/short/$1", Found),
            r(Regex, "^/a/(.*)/(.*)$", "/long/$1/$2", Found),
            r(Regex, "old/(.*)", "/never/$1", Found),
            r(Regex, ".*\\.php$", "/php", MovedPermanent),
            r(
                Regex,
                "^/t/(a)(b)(c)(d)(e)(f)(g)(h)(i)(j)(k)$",
                "/t/$1-$9-$10-$11",
                Found,
            ),
            r(Regex, "^/o/(x)?(y)$", "/o/$1/$2", Found),
            r(
                RegexHost,
                "example\\.com/x/(.*)",
                "https://new.test/$1",
                PermanentRedirect,
            ),
            r(
                RegexHost,
                "^ex\\.test/rh/(.*)$",
                "https://rh.test/$1",
                Found,
            ),
        ];
        let pages = vec![
            page(PageType::Basic, "/robots.txt", "robots", TextPlain),
            page(PageType::BasicHost, "ex.test/sitemap.xml", "<urlset/>", Xml),
            page(PageType::Basic, "/b", "page beats redirect", TextPlain),
        ];
        let set = RuleSet::build(redirects.clone(), pages.clone());
        type Case<'a> = (&'a str, &'a str, Option<(u16, &'a str)>);
        let cases: &[Case] = &[
            ("ex.test", "/robots.txt", Some((200, "robots"))),
            ("ex.test", "/robots.txt?x=1", None),
            ("ex.test", "/sitemap.xml", Some((200, "<urlset/>"))),
            ("other.test", "/sitemap.xml", None),
            ("ex.test", "/b", Some((200, "page beats redirect"))),
            ("ex.test", "/q?x=1", Some((302, "/q-target"))),
            ("ex.test", "/q?x=2", None),
            ("ex.test", "/q", None),
            ("ex.test", "/q?y=2", Some((301, "https://ex.test/qh"))),
            (
                "ex.test:8080",
                "/port",
                Some((308, "https://ex.test/port-target")),
            ),
            ("ex.test", "/port", None),
            (
                "ex.test",
                "/blog/42/hello",
                Some((307, "/articles/42?slug=hello")),
            ),
            ("ex.test", "/blog/x/hello", None),
            ("ex.test", "/a/b/c", Some((302, "/long/b/c"))),
            ("ex.test", "/a/b", Some((302, "/short/b"))),
            ("ex.test", "/old/q", None),
            ("ex.test", "/index.php", Some((301, "/php"))),
            ("ex.test", "/index.php?y=1", None),
            ("ex.test", "/t/abcdefghijk", Some((302, "/t/a-i-a0-a1"))),
            ("ex.test", "/o/y", Some((302, "/o//y"))),
            ("example.com", "/x/1", Some((308, "https://new.test/1"))),
            ("www.example.com", "/x/1", None),
            ("ex.test", "/rh/p?z=1", Some((302, "https://rh.test/p?z=1"))),
            ("ex.test", "/nothing", None),
        ];
        for (host, uri, want) in cases {
            let got = answer(&set, host, uri);
            let want = want.map(|(s, l)| (s, l.to_string()));
            assert_eq!(got, want, "{host}{uri}");
            assert_eq!(
                reference(&redirects, &pages, host, uri),
                want,
                "reference {host}{uri}"
            );
        }
        // Every status maps to its code through the gateway's answer.
        for status in RedirectStatus::ALL {
            let set = RuleSet::build(vec![r(Basic, "/s", "/t", status)], vec![]);
            assert_eq!(answer(&set, "h", "/s").map(|a| a.0), Some(status.code()));
        }
        let xml = RuleSet::build(vec![], vec![page(PageType::Basic, "/x", "<a/>", Xml)]);
        assert!(matches!(
            xml.lookup("h", "/x"),
            Some(Hit::Page {
                content_type: Xml,
                ..
            })
        ));
    }

    #[test]
    fn host_with_a_slash_is_the_plain_concatenation() {
        let set = RuleSet::build(
            vec![r(
                RedirectType::BasicHost,
                "a/b/c",
                "https://x.test/",
                RedirectStatus::Found,
            )],
            vec![],
        );
        assert!(set.lookup("a/b", "/c").is_some());
        assert!(set.lookup("a", "/b/c").is_some());
        assert!(set.lookup("a/b", "/d").is_none());
    }

    #[test]
    fn bad_regexes_are_skipped_and_duplicates_replace() {
        let set = RuleSet::build(
            vec![
                r(RedirectType::Regex, "^/a/(", "/x", RedirectStatus::Found),
                r(RedirectType::Basic, "/d", "/first", RedirectStatus::Found),
                r(RedirectType::Basic, "/d", "/second", RedirectStatus::Found),
            ],
            vec![],
        );
        assert_eq!(set.skipped().len(), 1);
        assert_eq!(set.skipped()[0].index, 0);
        assert_eq!(answer(&set, "h", "/d"), Some((302, "/second".into())));
        assert!(RuleSet::empty().lookup("h", "/").is_none());
    }

    fn arb_rules() -> impl Strategy<Value = Vec<Redirect>> {
        let seg = prop::sample::select(vec!["a", "b", "ab", "x.y", "1", "q?x=1", "?z"]);
        let kind = prop::sample::select(RedirectType::ALL.to_vec());
        let status = prop::sample::select(RedirectStatus::ALL.to_vec());
        let pattern = prop::sample::select(vec![
            "^/a/(.*)$",
            "/a/(.*)",
            "^/(a|b)/(.*)",
            ".*b$",
            "(?i)^/A(.*)",
            "^/ab?(.*)",
            "a",
            "^/x\\.y",
            "h/a(.*)",
            "^h(:1)?/(.*)$",
            "(.*)/b",
        ]);
        prop::collection::vec(
            (
                kind,
                prop::collection::vec(seg, 1..3),
                pattern,
                status,
                0u8..3,
            ),
            0..24,
        )
        .prop_map(|v| {
            v.into_iter()
                .map(|(kind, segs, pattern, status, t)| {
                    let path = format!("/{}", segs.join("/"));
                    let source = match kind {
                        RedirectType::Basic => path,
                        RedirectType::BasicHost => format!("h{path}"),
                        _ => pattern.to_string(),
                    };
                    let target = ["/t/$1", "/fixed", "/$2-$1"][t as usize].to_string();
                    Redirect {
                        kind,
                        source,
                        target,
                        status,
                    }
                })
                .collect()
        })
    }

    proptest! {
        #[test]
        fn compiled_matching_equals_the_reference(
            redirects in arb_rules(),
            host in prop::sample::select(vec!["h", "h:1", "x", "h/a", ""]),
            uri in "/[abxy./?=1z]{0,8}",
        ) {
            let set = RuleSet::build(redirects.clone(), vec![]);
            prop_assert_eq!(answer(&set, host, &uri), reference(&redirects, &[], host, &uri));
        }

        #[test]
        fn building_and_matching_anything_never_panics(
            sources in prop::collection::vec("\\PC{0,12}", 0..8),
            host in "\\PC{0,6}",
            uri in "\\PC{0,12}",
        ) {
            let redirects = sources
                .iter()
                .enumerate()
                .map(|(i, s)| Redirect {
                    kind: RedirectType::ALL[i % 4],
                    source: s.clone(),
                    target: "/t/$1".into(),
                    status: RedirectStatus::Found,
                })
                .collect::<Vec<_>>();
            let set = RuleSet::build(redirects.clone(), vec![]);
            prop_assert_eq!(answer(&set, &host, &uri), reference(&redirects, &[], &host, &uri));
        }
    }
}
