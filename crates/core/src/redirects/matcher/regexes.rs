//! The regex rules of one type (`REGEX` or `REGEX_HOST`): finding the candidates for
//! a key along the key itself, and running them in order.
//!
//! - Rules with a literal prefix sit in a byte trie of their prefixes; walking the trie
//!   with the key's bytes yields exactly the rules whose prefix starts the key.
//! - Rules without one are always candidates in Flecto's rule, but most still need
//!   some literal text in any match: a literal every match starts with, or one every
//!   match ends with (`.*\.php$` needs `.php`). One Aho-Corasick pass over the key
//!   (ignoring ASCII case) finds which of those texts occur, and only their rules are
//!   run: a rule whose text does not occur cannot match. Rules with no such text (a
//!   catch-all such as `^(.*)$`) are run on every key.
//! - Candidates run in trial order (longest source first); the first match wins.
//!   Each rule's regex is compiled on first use into a Thompson NFA run by a bounded
//!   backtracker (a PikeVM for keys too long for it), with per-thread scratch space,
//!   so a compiled rule costs about its NFA and nothing per thread.

use std::borrow::Cow;
use std::cell::RefCell;
use std::sync::OnceLock;

use aho_corasick::AhoCorasick;
use regex_automata::nfa::thompson::{self, backtrack, pikevm};
use regex_automata::util::primitives::NonMaxUsize;
use regex_automata::Input;
use regex_syntax::hir::literal::{ExtractKind, Extractor, Seq};
use regex_syntax::hir::Hir;

use super::prefix;
use crate::redirects::{expand_target, RedirectStatus};

/// Largest compiled regex, as in [`crate::redirects::compile_regex`].
const SIZE_LIMIT: usize = 256 * 1024;

/// What building needs to know about one regex source.
pub(super) struct Analysis {
    /// The literal prefix (see [`prefix::literal_prefix`]); empty if none.
    pub prefix: String,
    /// For a rule without a prefix: texts (ASCII lower case) one of which occurs in
    /// every match; `None` when there is no such set.
    pub required: Option<Vec<Vec<u8>>>,
}

/// Parses regex sources for [`analyze`]; one per build, reused.
pub(super) struct Analyzer {
    parser: regex_syntax::ast::parse::Parser,
    translator: regex_syntax::hir::translate::Translator,
}

impl Default for Analyzer {
    fn default() -> Self {
        Self {
            parser: prefix::parser(),
            translator: regex_syntax::hir::translate::TranslatorBuilder::new()
                .unicode(false)
                .utf8(false)
                .build(),
        }
    }
}

impl Analyzer {
    /// Checks `source` the way [`crate::redirects::compile_regex`] parses it and finds
    /// what its rule is indexed under, without compiling it.
    pub fn analyze(&mut self, source: &str) -> Result<Analysis, String> {
        let invalid =
            |e: &dyn std::fmt::Display| format!("is not a valid regex: {}", e.to_string().trim());
        let parsed = match self.parser.parse(source) {
            Ok(parsed) => parsed,
            Err(e) => {
                // A parser or translator that failed may keep state; start afresh.
                *self = Analyzer::default();
                return Err(invalid(&e));
            }
        };
        let prefix = prefix::literal_prefix_of(source, &parsed);
        // Translation can only fail on Unicode: non-ASCII text, `\p` classes, escapes
        // naming a code point, the `u` flag. A prefixed pattern without any of them is
        // not translated (it is not needed for indexing it).
        if !prefix.is_empty() && !may_fail_translation(source) {
            return Ok(Analysis {
                prefix,
                required: None,
            });
        }
        let hir = match self.translator.translate(source, &parsed) {
            Ok(hir) => hir,
            Err(e) => {
                *self = Analyzer::default();
                return Err(invalid(&e));
            }
        };
        let required = if prefix.is_empty() {
            required_texts(&hir)
        } else {
            None
        };
        Ok(Analysis { prefix, required })
    }
}

/// Whether translating a parsed `source` to HIR (bytes, no Unicode) might fail.
fn may_fail_translation(source: &str) -> bool {
    !source.is_ascii()
        || source.contains("(?")
        || ["\\x", "\\u", "\\U", "\\p", "\\P"]
            .iter()
            .any(|e| source.contains(e))
}

/// A set of texts one of which occurs in every match of `hir`: the possible starts of
/// a match, or its possible ends, whichever has the longer shortest text.
fn required_texts(hir: &Hir) -> Option<Vec<Vec<u8>>> {
    let usable = |kind| -> Option<Seq> {
        let seq = Extractor::new().kind(kind).extract(hir);
        (seq.is_finite() && seq.min_literal_len().is_some_and(|n| n > 0)).then_some(seq)
    };
    let best = match (usable(ExtractKind::Prefix), usable(ExtractKind::Suffix)) {
        (Some(p), Some(s)) => {
            if s.min_literal_len() > p.min_literal_len() {
                s
            } else {
                p
            }
        }
        (p, s) => p.or(s)?,
    };
    let mut texts: Vec<Vec<u8>> = best
        .literals()?
        .iter()
        .map(|l| l.as_bytes().to_ascii_lowercase())
        .collect();
    texts.sort_unstable();
    texts.dedup();
    Some(texts)
}

/// One regex rule.
pub(super) struct RegexRule {
    pub source: Box<str>,
    pub target: Box<str>,
    pub status: RedirectStatus,
    /// Position of the redirect in the list the set was built from.
    pub index: u32,
    engine: OnceLock<Option<Engine>>,
}

impl RegexRule {
    pub fn new(source: String, target: String, status: RedirectStatus, index: u32) -> Self {
        Self {
            source: source.into_boxed_str(),
            target: target.into_boxed_str(),
            status,
            index,
            engine: OnceLock::new(),
        }
    }

    fn engine(&self) -> Option<&Engine> {
        self.engine
            .get_or_init(|| Engine::compile(&self.source))
            .as_ref()
    }

    /// Whether the regex has been compiled (for tests and measurements).
    pub fn is_compiled(&self) -> bool {
        self.engine.get().is_some()
    }
}

/// A compiled regex: one NFA shared by both runners.
struct Engine {
    backtracker: backtrack::BoundedBacktracker,
    pikevm: pikevm::PikeVM,
    /// Capture groups, group 0 (the whole match) included.
    groups: usize,
}

impl Engine {
    /// Compiles as [`crate::redirects::compile_regex`] does: bytes, no Unicode classes,
    /// the same size limit. `None` if it cannot be compiled.
    fn compile(source: &str) -> Option<Engine> {
        let syntax = regex_automata::util::syntax::Config::new()
            .unicode(false)
            .utf8(false);
        let nfa = thompson::Compiler::new()
            .syntax(syntax)
            .configure(
                thompson::Config::new()
                    .utf8(false)
                    .shrink(false)
                    .nfa_size_limit(Some(SIZE_LIMIT)),
            )
            .build(source)
            .ok()?;
        let groups = nfa.group_info().group_len(regex_automata::PatternID::ZERO);
        Some(Engine {
            backtracker: backtrack::BoundedBacktracker::new_from_nfa(nfa.clone()).ok()?,
            pikevm: pikevm::PikeVM::new_from_nfa(nfa).ok()?,
            groups,
        })
    }

    /// Searches `key` (unanchored, leftmost-first); fills `slots` with the groups.
    fn search(&self, key: &[u8], s: &mut Runners) -> bool {
        s.slots.clear();
        s.slots.resize(self.groups * 2, None);
        let input = Input::new(key);
        if key.len() <= self.backtracker.max_haystack_len() {
            let cache = s
                .backtrack
                .get_or_insert_with(|| self.backtracker.create_cache());
            cache.reset(&self.backtracker);
            if let Ok(found) = self
                .backtracker
                .try_search_slots(cache, &input, &mut s.slots)
            {
                return found.is_some();
            }
        }
        let cache = s.pikevm.get_or_insert_with(|| self.pikevm.create_cache());
        cache.reset(&self.pikevm);
        self.pikevm
            .search_slots(cache, &input, &mut s.slots)
            .is_some()
    }
}

/// Per-thread scratch space of the runners.
#[derive(Default)]
struct Runners {
    backtrack: Option<backtrack::Cache>,
    pikevm: Option<pikevm::Cache>,
    slots: Vec<Option<NonMaxUsize>>,
}

#[derive(Default)]
struct Scratch {
    runners: Runners,
    candidates: Vec<u32>,
    key: Vec<u8>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// The Location for a match: Flecto's substitution. Groups are replaced from the
/// highest the pattern has down to 1, each number's placeholder being `$` followed by
/// the character `'0' + n` (so group 10 fills `$:`, and `$10` is group 1 then `0`);
/// a group that did not take part is empty; `$n` beyond the pattern's groups, and
/// `$0`, stay as written.
fn location<'a>(
    target: &'a str,
    key: &[u8],
    slots: &[Option<NonMaxUsize>],
    groups: usize,
) -> Cow<'a, str> {
    if !target.contains('$') {
        return Cow::Borrowed(target);
    }
    let text = |n: usize| -> String {
        match (
            slots.get(2 * n).copied().flatten(),
            slots.get(2 * n + 1).copied().flatten(),
        ) {
            (Some(a), Some(b)) => String::from_utf8_lossy(&key[a.get()..b.get()]).into_owned(),
            _ => String::new(),
        }
    };
    let mut t = Cow::Borrowed(target);
    for n in (10..groups).rev() {
        let c = u32::try_from(n)
            .ok()
            .and_then(|n| char::from_u32(u32::from(b'0') + n))
            .unwrap_or(char::REPLACEMENT_CHARACTER);
        let placeholder = format!("${c}");
        if t.contains(&placeholder) {
            t = Cow::Owned(t.replace(&placeholder, &text(n)));
        }
    }
    Cow::Owned(expand_target(&t, |n| {
        Some(if n < groups { text(n) } else { format!("${n}") })
    }))
}

#[derive(Clone, Copy, Default)]
struct TrieNode {
    first_edge: u32,
    edges: u32,
    first_rule: u32,
    rules: u32,
}

/// A byte trie of literal prefixes, stored flat: a node's edges and rules are ranges
/// of shared arrays.
#[derive(Default)]
struct Trie {
    nodes: Vec<TrieNode>,
    labels: Vec<u8>,
    children: Vec<u32>,
    rules: Vec<u32>,
}

impl Trie {
    /// `prefixes` as (prefix, rule) in trial order.
    fn build(prefixes: &[(&[u8], u32)]) -> Trie {
        if prefixes.is_empty() {
            return Trie::default();
        }
        // Built as nested lists first, then flattened.
        let mut edges: Vec<Vec<(u8, u32)>> = vec![Vec::new()];
        let mut rules: Vec<Vec<u32>> = vec![Vec::new()];
        for &(p, rule) in prefixes {
            let mut node = 0usize;
            for &b in p {
                node = match edges[node].binary_search_by_key(&b, |e| e.0) {
                    Ok(i) => edges[node][i].1 as usize,
                    Err(i) => {
                        let n = edges.len();
                        edges[node].insert(i, (b, n as u32));
                        edges.push(Vec::new());
                        rules.push(Vec::new());
                        n
                    }
                };
            }
            rules[node].push(rule);
        }
        let mut t = Trie {
            nodes: Vec::with_capacity(edges.len()),
            ..Trie::default()
        };
        for (e, r) in edges.iter().zip(&rules) {
            t.nodes.push(TrieNode {
                first_edge: t.labels.len() as u32,
                edges: e.len() as u32,
                first_rule: t.rules.len() as u32,
                rules: r.len() as u32,
            });
            t.labels.extend(e.iter().map(|x| x.0));
            t.children.extend(e.iter().map(|x| x.1));
            t.rules.extend(r);
        }
        t
    }

    fn child(&self, node: TrieNode, b: u8) -> Option<TrieNode> {
        let start = node.first_edge as usize;
        let labels = &self.labels[start..start + node.edges as usize];
        let i = if labels.len() <= 16 {
            labels.iter().position(|&l| l == b)?
        } else {
            labels.binary_search(&b).ok()?
        };
        Some(self.nodes[self.children[start + i] as usize])
    }

    /// Adds the rules of every prefix that starts `key` (given in parts) to `out`.
    fn walk(&self, key: [&[u8]; 2], out: &mut Vec<u32>) {
        let Some(&root) = self.nodes.first() else {
            return;
        };
        let mut node = root;
        for &b in key.iter().flat_map(|p| p.iter()) {
            match self.child(node, b) {
                Some(n) => {
                    node = n;
                    let first = node.first_rule as usize;
                    out.extend_from_slice(&self.rules[first..first + node.rules as usize]);
                }
                None => return,
            }
        }
    }
}

/// The texts required by prefix-less rules, matched in one pass.
struct TextFilter {
    texts: AhoCorasick,
    /// Rules of text `i`: `owners[owner_start[i]..owner_start[i + 1]]`.
    owner_start: Vec<u32>,
    owners: Vec<u32>,
}

impl TextFilter {
    fn candidates(&self, key: &[u8], out: &mut Vec<u32>) {
        for m in self.texts.find_overlapping_iter(key) {
            let i = m.pattern().as_usize();
            let (a, b) = (
                self.owner_start[i] as usize,
                self.owner_start[i + 1] as usize,
            );
            out.extend_from_slice(&self.owners[a..b]);
        }
    }
}

/// One rule with what building learnt about it.
pub(super) struct Analyzed {
    pub rule: RegexRule,
    pub analysis: Analysis,
}

/// The regex rules of one type, in trial order.
#[derive(Default)]
pub(super) struct RegexTable {
    rules: Vec<RegexRule>,
    trie: Trie,
    filter: Option<TextFilter>,
    /// Prefix-less rules with no required text: candidates for every key.
    always: Vec<u32>,
}

impl RegexTable {
    /// `rules` in input order.
    pub fn build(mut rules: Vec<Analyzed>) -> RegexTable {
        // Trial order: longest source first, input order among equals.
        rules.sort_by_key(|r| std::cmp::Reverse(r.rule.source.len()));
        let mut prefixed: Vec<(&[u8], u32)> = Vec::new();
        let mut required: Vec<(&[u8], u32)> = Vec::new();
        let mut always = Vec::new();
        for (rank, r) in rules.iter().enumerate() {
            let rank = rank as u32;
            if !r.analysis.prefix.is_empty() {
                prefixed.push((r.analysis.prefix.as_bytes(), rank));
            } else if let Some(texts) = &r.analysis.required {
                required.extend(texts.iter().map(|t| (t.as_slice(), rank)));
            } else {
                always.push(rank);
            }
        }
        let trie = Trie::build(&prefixed);
        let mut filter = None;
        if !required.is_empty() {
            required.sort_unstable();
            let mut texts: Vec<&[u8]> = Vec::new();
            let mut owner_start = Vec::new();
            let mut owners = Vec::with_capacity(required.len());
            for (t, rank) in &required {
                if texts.last() != Some(t) {
                    texts.push(t);
                    owner_start.push(owners.len() as u32);
                }
                owners.push(*rank);
            }
            owner_start.push(owners.len() as u32);
            match AhoCorasick::builder()
                .ascii_case_insensitive(true)
                .build(&texts)
            {
                Ok(texts) => {
                    filter = Some(TextFilter {
                        texts,
                        owner_start,
                        owners,
                    })
                }
                // Not expected; without the filter these rules are simply always run.
                Err(_) => {
                    always.extend(required.iter().map(|(_, r)| *r));
                    always.sort_unstable();
                    always.dedup();
                }
            }
        }
        drop(prefixed);
        let rules: Vec<RegexRule> = rules.into_iter().map(|r| r.rule).collect();
        RegexTable {
            rules,
            trie,
            filter,
            always,
        }
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn compiled(&self) -> usize {
        self.rules.iter().filter(|r| r.is_compiled()).count()
    }

    /// The first rule, in trial order, whose regex matches `host` followed by `uri`
    /// (`host` is empty for `REGEX` rules), with its Location.
    pub fn find<'a>(&'a self, host: &str, uri: &str) -> Option<(&'a RegexRule, Cow<'a, str>)> {
        if self.rules.is_empty() {
            return None;
        }
        SCRATCH.with(|cell| match cell.try_borrow_mut() {
            Ok(mut s) => self.find_with(&mut s, host, uri),
            Err(_) => self.find_with(&mut Scratch::default(), host, uri),
        })
    }

    fn find_with<'a>(
        &'a self,
        s: &mut Scratch,
        host: &str,
        uri: &str,
    ) -> Option<(&'a RegexRule, Cow<'a, str>)> {
        let Scratch {
            runners,
            candidates,
            key,
        } = s;
        candidates.clear();
        self.trie
            .walk([host.as_bytes(), uri.as_bytes()], candidates);
        if candidates.is_empty() && self.filter.is_none() && self.always.is_empty() {
            return None;
        }
        let key: &[u8] = if host.is_empty() {
            uri.as_bytes()
        } else {
            key.clear();
            key.extend_from_slice(host.as_bytes());
            key.extend_from_slice(uri.as_bytes());
            key
        };
        if let Some(f) = &self.filter {
            f.candidates(key, candidates);
        }
        candidates.extend_from_slice(&self.always);
        candidates.sort_unstable();
        candidates.dedup();
        for &i in candidates.iter() {
            let rule = &self.rules[i as usize];
            let Some(engine) = rule.engine() else {
                continue;
            };
            if engine.search(key, runners) {
                let location = location(&rule.target, key, &runners.slots, engine.groups);
                return Some((rule, location));
            }
        }
        None
    }
}
