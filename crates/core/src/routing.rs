//! The compiled route table: an immutable structure built from the routes of one
//! configuration revision, answering "which route serves this host, path and
//! method" without locks or allocation on the common path.
//!
//! Specificity decides first, priority breaks ties:
//! 1. host: an exact host beats the longest matching `*.suffix`, which beats routes
//!    without hosts;
//! 2. path: an `exact` path beats the longest `prefix` (compared on segment
//!    boundaries: `/api` serves `/api` and `/api/x`, not `/apix`), which beats a
//!    `regex`;
//! 3. among equals, the higher `priority`, then the lower route id.
//!
//! If routes match the path but none allows the method, the answer is
//! [`Lookup::MethodNotAllowed`] rather than a 404.

/// Keys here are request paths and hosts, chosen by clients: foldhash is fast and
/// randomly seeded per table, so crafted collisions are not predictable.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

use regex::RegexSet;

use crate::gateway::{PathMatch, Route};
use crate::ValidationError;

/// The result of a lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    Found(RouteMatch),
    MethodNotAllowed,
    NotFound,
}

/// A matched route: its index in the slice the table was built from, and how many
/// bytes of the path its prefix covered (for `strip_path`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteMatch {
    pub index: usize,
    pub matched_len: usize,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    index: u32,
    priority: i32,
    /// Bit per method (see [`method_bit`]); 0 allows every method.
    methods: u16,
}

impl Entry {
    fn allows(&self, method_bit: u16) -> bool {
        self.methods == 0 || self.methods & method_bit != 0
    }
}

#[derive(Default)]
struct PathTable {
    exact: HashMap<Box<str>, Vec<Entry>>,
    prefix: HashMap<Box<str>, Vec<Entry>>,
    regex: Option<(RegexSet, Vec<Entry>)>,
    regex_sources: Vec<(String, Entry)>,
}

/// Outcome of searching one table.
enum Found {
    Yes(RouteMatch),
    MethodOnly,
    No,
}

fn best(entries: &[Entry], method_bit: u16) -> Option<&Entry> {
    // Entries are sorted by priority (desc) then index, so the first allowed wins.
    entries.iter().find(|e| e.allows(method_bit))
}

impl PathTable {
    fn insert(&mut self, route: &Route, entry: Entry) {
        match route.match_type {
            PathMatch::Exact => self
                .exact
                .entry(route.path.as_str().into())
                .or_default()
                .push(entry),
            PathMatch::Prefix => self
                .prefix
                .entry(normalize_prefix(&route.path).into())
                .or_default()
                .push(entry),
            PathMatch::Regex => self.regex_sources.push((route.path.clone(), entry)),
        }
    }

    fn finish(&mut self, ids: &[&str]) -> Result<(), regex::Error> {
        let order = |a: &Entry, b: &Entry| {
            b.priority
                .cmp(&a.priority)
                .then_with(|| ids[a.index as usize].cmp(ids[b.index as usize]))
        };
        for v in self.exact.values_mut().chain(self.prefix.values_mut()) {
            v.sort_by(order);
        }
        if !self.regex_sources.is_empty() {
            self.regex_sources.sort_by(|a, b| order(&a.1, &b.1));
            let set =
                regex::RegexSetBuilder::new(self.regex_sources.iter().map(|(s, _)| s.as_str()))
                    .size_limit(REGEX_SET_SIZE_LIMIT)
                    .build()?;
            self.regex = Some((set, self.regex_sources.iter().map(|(_, e)| *e).collect()));
        }
        Ok(())
    }

    fn lookup(&self, path: &str, method_bit: u16) -> Found {
        let mut method_only = false;
        if let Some(entries) = self.exact.get(path) {
            match best(entries, method_bit) {
                Some(e) => {
                    return Found::Yes(RouteMatch {
                        index: e.index as usize,
                        matched_len: path.len(),
                    })
                }
                None => method_only = true,
            }
        }
        if !self.prefix.is_empty() {
            let mut candidate = path.trim_end_matches('/');
            loop {
                let key = if candidate.is_empty() { "/" } else { candidate };
                if let Some(entries) = self.prefix.get(key) {
                    match best(entries, method_bit) {
                        Some(e) => {
                            let matched_len = if key == "/" { 0 } else { key.len() };
                            return Found::Yes(RouteMatch {
                                index: e.index as usize,
                                matched_len,
                            });
                        }
                        None => method_only = true,
                    }
                }
                if candidate.is_empty() {
                    break;
                }
                candidate = match candidate.rfind('/') {
                    Some(i) => &candidate[..i],
                    None => "",
                };
            }
        }
        if let Some((set, entries)) = &self.regex {
            let matches = set.matches(path);
            if matches.matched_any() {
                // Indices follow priority order, so the first allowed one wins.
                for i in matches.iter() {
                    if entries[i].allows(method_bit) {
                        return Found::Yes(RouteMatch {
                            index: entries[i].index as usize,
                            matched_len: 0,
                        });
                    }
                }
                method_only = true;
            }
        }
        if method_only {
            Found::MethodOnly
        } else {
            Found::No
        }
    }
}

/// Compiled size allowed to the regex routes of one host, all together: the
/// gateway matches them in one pass, so they are compiled as one set.
pub const REGEX_SET_SIZE_LIMIT: usize = 64 << 20;

/// Why the regex routes `names` of one host (`what`) cannot be compiled together,
/// naming them (the first 20) so the operator knows which to change.
fn regex_set_error(names: &[&str], what: &str, e: &regex::Error) -> String {
    let shown: Vec<String> = names.iter().take(20).map(|n| format!("{n:?}")).collect();
    let more = match names.len().saturating_sub(20) {
        0 => String::new(),
        n => format!(" and {n} more"),
    };
    let why = match e {
        regex::Error::CompiledTooBig(_) => format!(
            "together they exceed the compiled size limit of {} MiB (Unicode classes \
             such as \\w, \\d or . under a repetition are the usual cause: \
             [A-Za-z0-9_] is far smaller than \\w)",
            REGEX_SET_SIZE_LIMIT >> 20
        ),
        other => other.to_string(),
    };
    format!(
        "the {} regex routes for {what} ({}{more}) do not compile together: {why}",
        names.len(),
        shown.join(", ")
    )
}

/// `/api/` → `/api`; `/` stays `/`.
fn normalize_prefix(p: &str) -> &str {
    let t = p.trim_end_matches('/');
    if t.is_empty() {
        "/"
    } else {
        t
    }
}

/// The bit of an HTTP method in a route's method mask.
pub fn method_bit(method: &str) -> u16 {
    match method {
        "GET" => 1,
        "HEAD" => 2,
        "POST" => 4,
        "PUT" => 8,
        "PATCH" => 16,
        "DELETE" => 32,
        "OPTIONS" => 64,
        "TRACE" => 128,
        "CONNECT" => 256,
        _ => 1 << 15,
    }
}

/// Routes compiled for lookup.
#[derive(Default)]
pub struct RouteTable {
    exact_hosts: HashMap<Box<str>, PathTable>,
    /// `".example.com"` → table; a host tries its suffixes from the longest.
    wildcard_hosts: HashMap<Box<str>, PathTable>,
    any_host: PathTable,
    len: usize,
}

impl std::fmt::Debug for RouteTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteTable")
            .field("routes", &self.len)
            .finish()
    }
}

impl RouteTable {
    /// Compiles the enabled routes of `routes`; indices in results refer to `routes`.
    pub fn build(routes: &[Route]) -> Result<Self, ValidationError> {
        let mut t = RouteTable::default();
        let mut wild: HashMap<String, PathTable> = HashMap::default();
        for (i, r) in routes.iter().enumerate() {
            if !r.enabled {
                continue;
            }
            t.len += 1;
            let methods = r
                .methods
                .iter()
                .fold(0u16, |m, s| m | method_bit(&s.to_ascii_uppercase()));
            let entry = Entry {
                index: i as u32,
                priority: r.priority,
                methods,
            };
            if r.hosts.is_empty() {
                t.any_host.insert(r, entry);
            }
            for h in &r.hosts {
                let h = h.to_ascii_lowercase();
                match h.strip_prefix('*') {
                    Some(suffix) => wild.entry(suffix.to_string()).or_default().insert(r, entry),
                    None => t.exact_hosts.entry(h.into()).or_default().insert(r, entry),
                }
            }
        }
        let ids: Vec<&str> = routes.iter().map(|r| r.id.as_str()).collect();
        let mut fail = ValidationError::new();
        let mut finish = |table: &mut PathTable, what: &str| {
            if let Err(e) = table.finish(&ids) {
                let names: Vec<&str> = table
                    .regex_sources
                    .iter()
                    .map(|(_, entry)| ids[entry.index as usize])
                    .collect();
                fail.push(
                    format!("routes ({what})"),
                    regex_set_error(&names, what, &e),
                );
            }
        };
        for (h, table) in t.exact_hosts.iter_mut() {
            finish(table, h);
        }
        finish(&mut t.any_host, "any host");
        let mut wild: HashMap<Box<str>, PathTable> = wild
            .into_iter()
            .map(|(k, v)| (k.into_boxed_str(), v))
            .collect();
        for (h, table) in wild.iter_mut() {
            finish(table, h);
        }
        t.wildcard_hosts = wild;
        fail.into_result().map(|()| t)
    }

    /// Number of enabled routes in the table.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Finds the route for a request. `host` may carry a port and any case.
    pub fn lookup(&self, host: &str, path: &str, method: &str) -> Lookup {
        let host = strip_port(host);
        if host.bytes().any(|b| b.is_ascii_uppercase()) {
            return self.lookup_name(&host.to_ascii_lowercase(), path, method);
        }
        self.lookup_name(host, path, method)
    }

    /// [`RouteTable::lookup`] for a host name already lower-case and without a port
    /// (as [`crate::request_target::canonical_host`] gives it).
    pub fn lookup_name(&self, host: &str, path: &str, method: &str) -> Lookup {
        let bit = method_bit(method);
        let mut method_only = false;
        let mut consider = |table: &PathTable| match table.lookup(path, bit) {
            Found::Yes(m) => Some(m),
            Found::MethodOnly => {
                method_only = true;
                None
            }
            Found::No => None,
        };
        if !self.exact_hosts.is_empty() {
            if let Some(table) = self.exact_hosts.get(host) {
                if let Some(m) = consider(table) {
                    return Lookup::Found(m);
                }
            }
        }
        if !self.wildcard_hosts.is_empty() {
            // `a.b.example.com` tries `.b.example.com`, then `.example.com`, then `.com`.
            for (i, _) in host.match_indices('.').filter(|(i, _)| *i > 0) {
                if let Some(table) = self.wildcard_hosts.get(&host[i..]) {
                    if let Some(m) = consider(table) {
                        return Lookup::Found(m);
                    }
                }
            }
        }
        if let Some(m) = consider(&self.any_host) {
            return Lookup::Found(m);
        }
        if method_only {
            Lookup::MethodNotAllowed
        } else {
            Lookup::NotFound
        }
    }
}

/// `example.com:8080` → `example.com`; `[::1]:80` → `::1`. Byte loops rather than
/// `rfind`/`find`: this runs for every request and hosts are short.
pub fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    let b = host.as_bytes();
    match b.iter().rposition(|&c| c == b':') {
        Some(i) if b[i + 1..].iter().all(u8::is_ascii_digit) && !b[..i].contains(&b':') => {
            host.get(..i).unwrap_or(host)
        }
        _ => host,
    }
}

/// The path forwarded upstream after `strip_path` removed `matched_len` bytes.
pub fn stripped_path(path: &str, matched_len: usize) -> &str {
    match path.get(matched_len..) {
        Some("") | None => "/",
        Some(rest) => rest,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn r(v: serde_json::Value) -> Route {
        let mut base = json!({"upstream": "http://127.0.0.1:1"});
        for (k, val) in v.as_object().expect("object") {
            base[k] = val.clone();
        }
        serde_json::from_value(base).expect("route")
    }

    fn found(
        t: &RouteTable,
        routes: &[Route],
        host: &str,
        path: &str,
        method: &str,
    ) -> Option<String> {
        match t.lookup(host, path, method) {
            Lookup::Found(m) => Some(routes[m.index].id.clone()),
            _ => None,
        }
    }

    #[test]
    fn most_specific_then_priority() {
        let routes = vec![
            r(json!({"id": "root", "path": "/"})),
            r(json!({"id": "api", "path": "/api"})),
            r(json!({"id": "api-v1", "path": "/api/v1/"})),
            r(json!({"id": "exact", "path": "/api/v1/health", "match": "exact"})),
            r(json!({"id": "regex", "path": "^/files/.*\\.png$", "match": "regex"})),
            r(json!({"id": "host", "path": "/api", "hosts": ["api.example.com"]})),
            r(json!({"id": "wild", "path": "/", "hosts": ["*.example.com"]})),
            r(json!({"id": "deep-wild", "path": "/", "hosts": ["*.eu.example.com"]})),
            r(json!({"id": "low", "path": "/prio", "priority": 1})),
            r(json!({"id": "high", "path": "/prio", "priority": 5, "hosts": []})),
            r(json!({"id": "post-only", "path": "/submit", "methods": ["POST"]})),
            r(json!({"id": "off", "path": "/off", "enabled": false})),
        ];
        // Two routes with the same path and different priorities are allowed here
        // because the table does not police overlaps; the document does.
        let t = RouteTable::build(&routes).expect("build");
        let f = |h: &str, p: &str, m: &str| found(&t, &routes, h, p, m);
        assert_eq!(
            f("x.test", "/api/v1/health", "GET").as_deref(),
            Some("exact")
        );
        assert_eq!(
            f("x.test", "/api/v1/health/", "GET").as_deref(),
            Some("api-v1")
        );
        assert_eq!(
            f("x.test", "/api/v1/users", "GET").as_deref(),
            Some("api-v1")
        );
        assert_eq!(f("x.test", "/api/v1", "GET").as_deref(), Some("api-v1"));
        assert_eq!(f("x.test", "/api/v10", "GET").as_deref(), Some("api"));
        assert_eq!(f("x.test", "/apix", "GET").as_deref(), Some("root"));
        assert_eq!(
            f("x.test", "/files/a/b.png", "GET").as_deref(),
            Some("root"),
            "a prefix beats a regex"
        );
        assert_eq!(
            f("API.Example.com:8443", "/api/x", "GET").as_deref(),
            Some("host")
        );
        assert_eq!(
            f("api.example.com", "/other", "GET").as_deref(),
            Some("wild"),
            "falls through to the wildcard"
        );
        assert_eq!(
            f("a.eu.example.com", "/", "GET").as_deref(),
            Some("deep-wild")
        );
        assert_eq!(
            f("example.com", "/", "GET").as_deref(),
            Some("root"),
            "*.example.com needs a subdomain"
        );
        assert_eq!(f("x.test", "/prio/a", "GET").as_deref(), Some("high"));
        assert_eq!(f("x.test", "/submit", "POST").as_deref(), Some("post-only"));
        assert_eq!(
            f("x.test", "/submit", "GET").as_deref(),
            Some("root"),
            "the method mismatch falls back to /"
        );
        assert_eq!(f("x.test", "/off", "GET").as_deref(), Some("root"));
        assert_eq!(t.len(), 11);
    }

    #[test]
    fn regex_and_method_not_allowed() {
        let routes = vec![
            r(json!({"id": "png", "path": "^/img/.*\\.png$", "match": "regex"})),
            r(
                json!({"id": "img-post", "path": "^/img/", "match": "regex", "methods": ["POST"], "priority": 9}),
            ),
            r(json!({"id": "only-put", "path": "/put", "methods": ["PUT"]})),
        ];
        let t = RouteTable::build(&routes).expect("build");
        assert_eq!(
            found(&t, &routes, "h", "/img/a.png", "GET").as_deref(),
            Some("png")
        );
        assert_eq!(
            found(&t, &routes, "h", "/img/a.png", "POST").as_deref(),
            Some("img-post")
        );
        assert_eq!(t.lookup("h", "/put", "GET"), Lookup::MethodNotAllowed);
        assert_eq!(t.lookup("h", "/nothing", "GET"), Lookup::NotFound);
    }

    #[test]
    fn strip_path_and_ports() {
        let routes = vec![
            r(json!({"id": "a", "path": "/api/", "strip_path": true})),
            r(json!({"id": "b", "path": "/"})),
        ];
        let t = RouteTable::build(&routes).expect("build");
        let Lookup::Found(m) = t.lookup("h", "/api/users?x", "GET") else {
            panic!("no match")
        };
        assert_eq!(stripped_path("/api/users", m.matched_len), "/users");
        assert_eq!(stripped_path("/api", 4), "/");
        let Lookup::Found(m) = t.lookup("h", "/x", "GET") else {
            panic!("no match")
        };
        assert_eq!(stripped_path("/x", m.matched_len), "/x");
        assert_eq!(strip_port("a.b:80"), "a.b");
        assert_eq!(strip_port("[::1]:80"), "::1");
        assert_eq!(strip_port("::1"), "::1");
        assert_eq!(strip_port("a.b"), "a.b");
    }

    /// The reference matcher: the same rules, by brute force over every route.
    fn reference(routes: &[Route], host: &str, path: &str, method: &str) -> Option<usize> {
        let host = strip_port(host).to_ascii_lowercase();
        let host_rank = |r: &Route| -> Option<usize> {
            if r.hosts.is_empty() {
                return Some(0);
            }
            r.hosts
                .iter()
                .filter_map(|h| {
                    let h = h.to_ascii_lowercase();
                    match h.strip_prefix('*') {
                        Some(s) if host.len() > s.len() && host.ends_with(s) => Some(1 + s.len()),
                        Some(_) => None,
                        None if h == host => Some(usize::MAX),
                        None => None,
                    }
                })
                .max()
        };
        let path_rank = |r: &Route| -> Option<usize> {
            match r.match_type {
                PathMatch::Exact => (r.path == path).then_some(usize::MAX),
                PathMatch::Prefix => {
                    let p = normalize_prefix(&r.path);
                    let ok = p == "/"
                        || path == p
                        || path
                            .strip_prefix(p)
                            .is_some_and(|rest| rest.starts_with('/'));
                    ok.then_some(1 + p.len())
                }
                PathMatch::Regex => regex::Regex::new(&r.path).ok()?.is_match(path).then_some(0),
            }
        };
        routes
            .iter()
            .enumerate()
            .filter(|(_, r)| r.enabled)
            .filter(|(_, r)| {
                r.methods.is_empty() || r.methods.iter().any(|m| m.eq_ignore_ascii_case(method))
            })
            .filter_map(|(i, r)| {
                Some((
                    host_rank(r)?,
                    path_rank(r)?,
                    r.priority,
                    std::cmp::Reverse(r.id.clone()),
                    i,
                ))
            })
            .max()
            .map(|t| t.4)
    }

    fn arb_route() -> impl Strategy<Value = Route> {
        let seg = prop::sample::select(vec!["a", "b", "api", "v1"]);
        let path = prop::collection::vec(seg, 0..3).prop_map(|s| format!("/{}", s.join("/")));
        (
            path,
            prop::sample::select(vec!["prefix", "exact", "regex"]),
            prop::sample::select(vec![vec![], vec!["h.test"], vec!["*.test"], vec!["x.h.test"]]),
            prop::sample::select(vec![vec![], vec!["GET"], vec!["POST"]]),
            -2i32..3,
            any::<u16>(),
        )
            .prop_map(|(path, m, hosts, methods, priority, id)| {
                let path = if m == "regex" { format!("^{path}") } else { path };
                r(json!({"id": format!("r{id}"), "path": path, "match": m, "hosts": hosts, "methods": methods, "priority": priority}))
            })
    }

    proptest! {
        #[test]
        fn agrees_with_the_brute_force_reference(
            mut routes in prop::collection::vec(arb_route(), 1..12),
            segs in prop::collection::vec(prop::sample::select(vec!["a", "b", "api", "v1", "c", ""]), 0..4),
            host in prop::sample::select(vec!["h.test", "x.h.test", "other", "H.TEST:80"]),
            method in prop::sample::select(vec!["GET", "POST", "DELETE"]),
        ) {
            // Ids must be unique for the tie-break to be a total order.
            for (i, r) in routes.iter_mut().enumerate() {
                r.id = format!("{}-{i}", r.id);
            }
            let path = format!("/{}", segs.join("/"));
            let t = RouteTable::build(&routes).expect("build");
            let got = match t.lookup(host, &path, method) {
                Lookup::Found(m) => Some(m.index),
                _ => None,
            };
            prop_assert_eq!(got, reference(&routes, host, &path, method), "path {}", path);
        }

        #[test]
        fn lookups_never_panic(path in "\\PC{0,64}", host in "\\PC{0,32}", method in "[A-Z]{0,8}") {
            let routes = vec![
                r(json!({"id": "a", "path": "/a", "hosts": ["*.x.y"]})),
                r(json!({"id": "b", "path": "^/b", "match": "regex"})),
                r(json!({"id": "c", "path": "/", "match": "exact"})),
            ];
            let t = RouteTable::build(&routes).expect("build");
            let _ = t.lookup(&host, &path, &method);
        }
    }
}
