//! The compiled rules of one project, matched the way Flecto agents match.
//!
//! # The rule, exactly
//!
//! A request is matched on two keys: `uri`, its request-target with the query string
//! (`/p?x=1`), and `host+uri`, the raw `Host` header as sent (port included) followed
//! directly by `uri`, with no separator (`example.com:8080/p?x=1`). The first hit
//! wins, in this order:
//!
//! 1. a `BASIC_HOST` redirect whose source equals `host+uri`;
//! 2. a `BASIC` redirect whose source equals `uri`;
//! 3. a `REGEX_HOST` redirect whose regex matches `host+uri`;
//! 4. a `REGEX` redirect whose regex matches `uri`;
//! 5. a `BASIC_HOST` page whose path equals `host+uri`;
//! 6. a `BASIC` page whose path equals `uri`.
//!
//! Redirects come before pages because Flecto's Traefik middleware asks for a
//! redirect first and serves a page only when none matches; a gateway and an agent
//! in front of the same project must answer a request the same way.
//!
//! Exact comparisons are byte for byte: the query string is part of the key, and a
//! port in `Host` is kept (`example.com:8080` + `/x` is not `example.com/x`). When two
//! rules of one exact type have the same source, the later one in the list wins.
//!
//! Among the regexes of one type, only *candidates* are tried. A rule is a candidate
//! when its literal prefix ([`literal_prefix`]: the literal text Flecto reads at the
//! start of the pattern once one leading `^` is removed) is a prefix of the key; a rule
//! without a literal prefix is always a candidate. So an unanchored pattern with a
//! literal head behaves as if anchored: `old/(.*)` never matches `/old/q`. Candidates
//! are tried longest `source` first (in bytes; equal lengths in list order) and the
//! first whose regex matches the key wins. A regex is searched anywhere in the key
//! (it anchors only through its own `^`/`$`), leftmost-first, as Go's
//! `FindStringSubmatch` does.
//!
//! The Location of a regex hit is its target with the groups substituted the way
//! Flecto does it: from the pattern's highest group down to group 1, every occurrence
//! of `$n` is replaced by that group (so `$10` is group 1 followed by `0`); a group
//! that did not take part is empty; `$0`, and `$n` for a group the pattern does not
//! have, stay as written. Nothing else touches the query string: it is not carried
//! over to the target. Every Location, exact or substituted, goes out through
//! [`encode_location`](super::encode_location): non-ASCII text and characters a URI
//! cannot hold are percent-encoded, everything else (`%XX`, reserved characters) is
//! kept as written.
//!
//! Rules whose regex does not parse are left out and reported by [`RuleSet::skipped`]
//! (a Flecto agent would refuse the whole set). A regex that parses but exceeds the
//! compiled size limit is found only when first tried, and then never matches.
//!
//! # How it is fast
//!
//! Exact keys are hash lookups that never build `host+uri` (see `exact`). Regex
//! candidates are found along the key: a byte trie of literal prefixes walked by the
//! key, and one multi-text pass for the prefix-less rules (see `regexes`), so a lookup
//! costs in proportion to the key, not to the number of rules. Regexes are compiled on
//! first use; building a set only parses them.
//!
//! [`naive_lookup`] is the same rule written plainly, which the tests and the fuzz
//! target compare this one against.

mod exact;
mod prefix;
mod reference;
mod regexes;
#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

pub use prefix::literal_prefix;
pub use reference::{naive_lookup, naive_lookup_rule};

use super::{
    encode_location, Page, PageContentType, PageType, Redirect, RedirectStatus, RedirectType,
};
use exact::{Answers, ExactTable, Hashing, NONE};
use regexes::{Analyzed, RegexRule, RegexTable};

/// A rule left out of a set because it cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// `redirect` or `page`.
    pub kind: &'static str,
    /// Position in the list given to [`RuleSet::build`].
    pub index: usize,
    pub message: String,
}

/// Which rule answered a request: a redirect or a page, by its position in the
/// lists given to [`RuleSet::build`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RuleRef {
    Redirect(usize),
    Page(usize),
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

struct PageBody {
    content: Bytes,
    content_type: PageContentType,
}

struct Target {
    target: Box<str>,
    status: RedirectStatus,
    /// Position of the redirect in the list given to [`RuleSet::build`].
    index: u32,
}

/// One project's compiled pages and redirects. Immutable once built; shared between
/// threads.
pub struct RuleSet {
    hashing: Hashing,
    /// `BASIC_HOST` pages and redirects, by `host+uri`.
    host_exact: ExactTable,
    /// `BASIC` pages and redirects, by `uri`.
    exact: ExactTable,
    pages: Vec<PageBody>,
    targets: Vec<Target>,
    host_regexes: RegexTable,
    regexes: RegexTable,
    skipped: Vec<Skipped>,
    redirect_count: usize,
    page_count: usize,
    /// Requests answered by each redirect and page, by position in the lists given
    /// to [`RuleSet::build`] (see [`RuleSet::count_hit`]).
    redirect_hits: Box<[AtomicU64]>,
    page_hits: Box<[AtomicU64]>,
}

impl Default for RuleSet {
    fn default() -> Self {
        Self::empty()
    }
}

impl std::fmt::Debug for RuleSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuleSet")
            .field("redirects", &self.redirect_count)
            .field("pages", &self.page_count)
            .field("skipped", &self.skipped.len())
            .finish()
    }
}

impl RuleSet {
    pub fn empty() -> Self {
        Self {
            hashing: Hashing::default(),
            host_exact: ExactTable::new(true, 0),
            exact: ExactTable::new(false, 0),
            pages: Vec::new(),
            targets: Vec::new(),
            host_regexes: RegexTable::default(),
            regexes: RegexTable::default(),
            skipped: Vec::new(),
            redirect_count: 0,
            page_count: 0,
            redirect_hits: Box::default(),
            page_hits: Box::default(),
        }
    }

    /// Compiles a project's rules, in the order the sync API lists them. Rules that
    /// cannot be compiled (a regex that does not parse, from a foreign manager) are
    /// skipped and reported, never fatal.
    pub fn build(redirects: Vec<Redirect>, pages: Vec<Page>) -> Self {
        let hosted = redirects
            .iter()
            .filter(|r| r.kind == RedirectType::BasicHost)
            .count()
            + pages
                .iter()
                .filter(|p| p.kind == PageType::BasicHost)
                .count();
        let plain = redirects
            .iter()
            .filter(|r| r.kind == RedirectType::Basic)
            .count()
            + pages.iter().filter(|p| p.kind == PageType::Basic).count();
        let mut set = RuleSet {
            host_exact: ExactTable::new(true, hosted),
            exact: ExactTable::new(false, plain),
            targets: Vec::with_capacity(redirects.len()),
            pages: Vec::with_capacity(pages.len()),
            redirect_hits: (0..redirects.len()).map(|_| AtomicU64::new(0)).collect(),
            page_hits: (0..pages.len()).map(|_| AtomicU64::new(0)).collect(),
            ..Self::empty()
        };
        let mut host_regexes = Vec::new();
        let mut regexes = Vec::new();
        let mut analyzer = regexes::Analyzer::default();
        for (index, r) in redirects.into_iter().enumerate() {
            match r.kind {
                RedirectType::Basic | RedirectType::BasicHost => {
                    let t = set.targets.len() as u32;
                    // Encoded once here, so that an exact hit stays a borrow.
                    let target = match encode_location(&r.target) {
                        Cow::Borrowed(_) => r.target,
                        Cow::Owned(encoded) => encoded,
                    };
                    set.targets.push(Target {
                        target: target.into_boxed_str(),
                        status: r.status,
                        index: index as u32,
                    });
                    let table = if r.kind == RedirectType::Basic {
                        &mut set.exact
                    } else {
                        &mut set.host_exact
                    };
                    table.upsert(&set.hashing, r.source, |a: &mut Answers| a.redirect = t);
                }
                RedirectType::Regex | RedirectType::RegexHost => {
                    let analysis = match analyzer.analyze(&r.source) {
                        Ok(a) => a,
                        Err(message) => {
                            set.skipped.push(Skipped {
                                kind: "redirect",
                                index,
                                message,
                            });
                            continue;
                        }
                    };
                    let rule = Analyzed {
                        rule: RegexRule::new(r.source, r.target, r.status, index as u32),
                        analysis,
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
        for p in pages {
            let i = set.pages.len() as u32;
            set.pages.push(PageBody {
                content: Bytes::from(p.content),
                content_type: p.content_type,
            });
            let table = match p.kind {
                PageType::Basic => &mut set.exact,
                PageType::BasicHost => &mut set.host_exact,
            };
            table.upsert(&set.hashing, p.path, |a: &mut Answers| a.page = i);
            set.page_count += 1;
        }
        set.exact.shrink(&set.hashing);
        set.host_exact.shrink(&set.hashing);
        set.regexes = RegexTable::build(regexes);
        set.host_regexes = RegexTable::build(host_regexes);
        set
    }

    pub fn skipped(&self) -> &[Skipped] {
        &self.skipped
    }

    /// Redirects in the set (skipped ones not counted; duplicates counted).
    pub fn redirect_count(&self) -> usize {
        self.redirect_count
    }

    pub fn page_count(&self) -> usize {
        self.page_count
    }

    /// Regex rules compiled so far (regexes are compiled on first use), and in all.
    pub fn compiled_regexes(&self) -> (usize, usize) {
        (
            self.regexes.compiled() + self.host_regexes.compiled(),
            self.regexes.len() + self.host_regexes.len(),
        )
    }

    /// The page or redirect answering `host` (the raw `Host` header, port included,
    /// as sent) and `uri` (the request-target with its query string), if any.
    pub fn lookup(&self, host: &str, uri: &str) -> Option<Hit<'_>> {
        self.lookup_rule(host, uri).map(|(_, hit)| hit)
    }

    /// As [`lookup`](Self::lookup), with the rule that answered.
    pub fn lookup_rule(&self, host: &str, uri: &str) -> Option<(RuleRef, Hit<'_>)> {
        let exact = if self.exact.is_empty() && self.host_exact.is_empty() {
            None
        } else {
            Some(self.lookup_exact(host, uri))
        };
        // Redirects first, in the order BASIC_HOST, BASIC, REGEX_HOST, REGEX.
        let exact_redirect = exact
            .iter()
            .flatten()
            .flatten()
            .map(|a| a.redirect)
            .find(|&r| r != NONE);
        if let Some(r) = exact_redirect {
            return Some(self.redirect(r));
        }
        let regex_hit = match self.host_regexes.find(host, uri) {
            Some(found) => Some(found),
            None => self.regexes.find("", uri),
        };
        if let Some((rule, location)) = regex_hit {
            let location = match location {
                Cow::Borrowed(b) => encode_location(b),
                Cow::Owned(o) => Cow::Owned(encode_location(&o).into_owned()),
            };
            return Some((
                RuleRef::Redirect(rule.index as usize),
                Hit::Redirect {
                    status: rule.status,
                    location,
                },
            ));
        }
        // Then pages: BASIC_HOST, BASIC.
        let page = exact?
            .into_iter()
            .flatten()
            .map(|a| a.page)
            .find(|&p| p != NONE)?;
        Some(self.page(page))
    }

    /// The exact-key answers for `host+uri` and for `uri`, in that order.
    #[inline]
    fn lookup_exact(&self, host: &str, uri: &str) -> [Option<Answers>; 2] {
        let hashes = self.hashing.request(host, uri, !self.host_exact.is_empty());
        let by_host = if self.host_exact.is_empty() {
            None
        } else {
            self.host_exact
                .get_host_uri(&self.hashing, &hashes, host, uri)
        };
        let by_uri = if self.exact.is_empty() {
            None
        } else {
            self.exact.get(hashes.uri, uri)
        };
        [by_host, by_uri]
    }

    fn redirect(&self, i: u32) -> (RuleRef, Hit<'_>) {
        let t = &self.targets[i as usize];
        (
            RuleRef::Redirect(t.index as usize),
            Hit::Redirect {
                status: t.status,
                location: Cow::Borrowed(&t.target),
            },
        )
    }

    fn page(&self, i: u32) -> (RuleRef, Hit<'_>) {
        // Every page is kept, so its slot is its position in the list.
        let p = &self.pages[i as usize];
        (
            RuleRef::Page(i as usize),
            Hit::Page {
                content: &p.content,
                content_type: p.content_type,
            },
        )
    }

    fn hit_counter(&self, rule: RuleRef) -> Option<&AtomicU64> {
        match rule {
            RuleRef::Redirect(i) => self.redirect_hits.get(i),
            RuleRef::Page(i) => self.page_hits.get(i),
        }
    }

    /// Counts one request answered by `rule`: one relaxed atomic add, no lock and no
    /// allocation. A rule the set does not have is ignored.
    #[inline]
    pub fn count_hit(&self, rule: RuleRef) {
        if let Some(c) = self.hit_counter(rule) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Adds `n` to `rule`'s count (a count carried over from an earlier set).
    pub fn add_hits(&self, rule: RuleRef, n: u64) {
        if let Some(c) = self.hit_counter(rule) {
            c.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Requests counted for each redirect, by position in the list given to
    /// [`build`](Self::build) (skipped rules stay at 0).
    pub fn redirect_hits(&self) -> Vec<u64> {
        self.redirect_hits
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }

    /// Requests counted for each page, by position.
    pub fn page_hits(&self) -> Vec<u64> {
        self.page_hits
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }
}
