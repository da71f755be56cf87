//! The literal prefix Flecto agents index a regex rule under.
//!
//! Flecto agents take the pattern, remove one leading `^`, parse the rest with Go's
//! regexp parser and read the literal text the parse tree starts with. A rule is only
//! tried on keys that start with that text. Go's parser rewrites patterns as it parses
//! them (merging literals, turning one-character classes into literals, factoring the
//! common start out of alternatives), and the prefix is read from the rewritten tree,
//! so this module models those rewrites on Fleetgate's own parse of the pattern:
//!
//! - literal characters and escapes are text; under `(?i)` each letter is replaced by
//!   the smallest character it folds to (so `(?i)/old` yields `/OLD`);
//! - a bracketed class holding one character (`[/]`) is that character; one holding a
//!   character and its only other case (`[Aa]`) is the smaller of the two;
//! - `(?:…)` groups are transparent; alternatives that all start with the same text
//!   are that text followed by the rest (`/a|/b` is `/` then `a|b`); alternatives of
//!   single characters become a class;
//! - the prefix is then: the text of the leading literals, stopping at the first item
//!   that is neither a literal nor a capture group; a capture group contributes the
//!   prefix of its content and reading goes on after it, unless that prefix is empty
//!   (so `(/a.*)/b` yields `/a/b`, exactly as Flecto reads it);
//! - repetitions (`*`, `+`, `?`, `{n,m}`), classes, `.`, assertions (`^`, `$`, `\b`)
//!   and empty groups stop it; a pattern Go would not parse has no prefix.

use regex_syntax::ast::{self, Ast, GroupKind};
use regex_syntax::hir::{ClassUnicode, ClassUnicodeRange, HirKind};

/// The literal prefix of a regex `pattern`, as Flecto agents compute it (see the
/// module documentation). Empty when the pattern has none or does not parse.
pub fn literal_prefix(pattern: &str) -> String {
    let Ok(parsed) = parser().parse(pattern) else {
        return String::new();
    };
    literal_prefix_of(pattern, &parsed)
}

pub(super) fn parser() -> ast::parse::Parser {
    ast::parse::ParserBuilder::new()
        .nest_limit(250)
        .octal(false)
        .ignore_whitespace(false)
        .build()
}

/// [`literal_prefix`] of `pattern` given its parse.
pub(super) fn literal_prefix_of(pattern: &str, parsed: &Ast) -> String {
    let mut cx = Convert {
        pattern,
        fold: false,
        foreign: false,
    };
    let node = cx.top(parsed);
    if cx.foreign {
        return String::new();
    }
    let mut out = String::new();
    read_prefix(&node, &mut out);
    out
}

/// The parse tree as Go's parser leaves it, reduced to what the prefix depends on.
#[derive(Debug, Clone, PartialEq)]
enum Node {
    Lit {
        chars: Vec<char>,
        fold: bool,
    },
    Concat(Vec<Node>),
    Capture(Box<Node>),
    Alt(Vec<Node>),
    Empty,
    /// A class, `.` or a one-character literal merged into a class.
    Class,
    /// Anything else: assertions, repetitions.
    Other,
}

impl Node {
    /// A single character or a class: what Go merges across `|`.
    fn is_char_class(&self) -> bool {
        matches!(self, Node::Class) || matches!(self, Node::Lit { chars, .. } if chars.len() == 1)
    }
}

/// Reads the prefix of a tree the way Flecto does.
fn read_prefix(node: &Node, out: &mut String) {
    match node {
        Node::Lit { chars, .. } => out.extend(chars),
        Node::Capture(inner) => read_prefix(inner, out),
        Node::Concat(subs) => {
            for sub in subs {
                match sub {
                    Node::Lit { chars, .. } => out.extend(chars),
                    Node::Capture(inner) => {
                        let before = out.len();
                        read_prefix(inner, out);
                        if out.len() == before {
                            break;
                        }
                    }
                    _ => break,
                }
            }
        }
        _ => {}
    }
}

struct Convert<'p> {
    pattern: &'p str,
    /// Whether `(?i)` is in force.
    fold: bool,
    /// Set when the pattern uses syntax Go's parser refuses.
    foreign: bool,
}

/// One element of a concatenation being built, and whether a following literal may
/// merge into it (Go merges literals pushed one after the other, not those spliced in
/// from a `(?:…)` group's concatenation).
struct Item {
    node: Node,
    mergeable: bool,
}

impl Convert<'_> {
    /// The whole pattern, its one leading `^` removed.
    fn top(&mut self, parsed: &Ast) -> Node {
        if !self.pattern.starts_with('^') {
            return self.node(parsed);
        }
        // Go parses the pattern without its first `^`. That `^` is the first item of
        // the tree, possibly inside the first alternative; if a repetition applies to
        // it, the rest starts with a repetition operator, which Go refuses.
        match parsed {
            Ast::Assertion(a) if a.span.start.offset == 0 => Node::Empty,
            Ast::Concat(c) => self.concat_from(&c.asts, true),
            Ast::Alternation(a) => {
                let mut branches = Vec::with_capacity(a.asts.len());
                for (i, b) in a.asts.iter().enumerate() {
                    branches.push(match b {
                        Ast::Assertion(x) if i == 0 && x.span.start.offset == 0 => Node::Empty,
                        Ast::Concat(c) if i == 0 => self.concat_from(&c.asts, true),
                        _ => self.node(b),
                    });
                }
                alternate(branches)
            }
            _ => {
                self.foreign = true;
                Node::Other
            }
        }
    }

    fn node(&mut self, a: &Ast) -> Node {
        match a {
            Ast::Empty(_) => Node::Empty,
            Ast::Flags(f) => {
                self.apply_flags(&f.flags);
                Node::Empty
            }
            Ast::Literal(l) => self.literal(l.c),
            Ast::Dot(_) | Ast::ClassUnicode(_) | Ast::ClassPerl(_) => Node::Class,
            Ast::ClassBracketed(c) => {
                self.bracketed(&self.pattern[c.span.start.offset..c.span.end.offset])
            }
            Ast::Assertion(a) => {
                if !matches!(
                    a.kind,
                    ast::AssertionKind::StartLine
                        | ast::AssertionKind::EndLine
                        | ast::AssertionKind::StartText
                        | ast::AssertionKind::EndText
                        | ast::AssertionKind::WordBoundary
                        | ast::AssertionKind::NotWordBoundary
                ) {
                    self.foreign = true;
                }
                Node::Other
            }
            Ast::Repetition(r) => {
                // Flags set inside a repeated group still end with it.
                let saved = self.fold;
                self.node(&r.ast);
                self.fold = saved;
                Node::Other
            }
            Ast::Group(g) => {
                let saved = self.fold;
                let inner = match &g.kind {
                    GroupKind::CaptureIndex(_) | GroupKind::CaptureName { .. } => {
                        Node::Capture(Box::new(self.node(&g.ast)))
                    }
                    GroupKind::NonCapturing(flags) => {
                        self.apply_flags(flags);
                        self.node(&g.ast)
                    }
                };
                self.fold = saved;
                inner
            }
            Ast::Alternation(a) => {
                let branches = a.asts.iter().map(|b| self.node(b)).collect();
                alternate(branches)
            }
            Ast::Concat(c) => self.concat_from(&c.asts, false),
        }
    }

    fn apply_flags(&mut self, flags: &ast::Flags) {
        let mut negated = false;
        for item in &flags.items {
            match &item.kind {
                ast::FlagsItemKind::Negation => negated = true,
                ast::FlagsItemKind::Flag(ast::Flag::CaseInsensitive) => self.fold = !negated,
                ast::FlagsItemKind::Flag(
                    ast::Flag::MultiLine | ast::Flag::DotMatchesNewLine | ast::Flag::SwapGreed,
                ) => {}
                ast::FlagsItemKind::Flag(_) => self.foreign = true,
            }
        }
    }

    fn literal(&self, c: char) -> Node {
        if self.fold {
            Node::Lit {
                chars: vec![min_fold(c)],
                fold: true,
            }
        } else {
            Node::Lit {
                chars: vec![c],
                fold: false,
            }
        }
    }

    /// A bracketed class: a literal when it holds one character or one case pair.
    fn bracketed(&self, text: &str) -> Node {
        let flags = if self.fold { "(?i)" } else { "" };
        let Ok(hir) = regex_syntax::ParserBuilder::new()
            .build()
            .parse(&format!("{flags}{text}"))
        else {
            return Node::Class;
        };
        match hir.kind() {
            HirKind::Literal(lit) => match std::str::from_utf8(&lit.0) {
                Ok(s) if s.chars().count() == 1 => Node::Lit {
                    chars: s.chars().collect(),
                    fold: false,
                },
                _ => Node::Class,
            },
            HirKind::Class(regex_syntax::hir::Class::Unicode(cls)) => {
                let mut chars = Vec::new();
                for r in cls.ranges() {
                    for c in r.start()..=r.end() {
                        chars.push(c);
                        if chars.len() > 2 {
                            return Node::Class;
                        }
                    }
                }
                match chars[..] {
                    [a, b] if fold_orbit(a) == [a, b] => Node::Lit {
                        chars: vec![a],
                        fold: true,
                    },
                    _ => Node::Class,
                }
            }
            _ => Node::Class,
        }
    }

    /// A concatenation; `drop_first` removes its first item (the leading `^`), which
    /// must then be a bare `^` at offset 0.
    fn concat_from(&mut self, asts: &[Ast], drop_first: bool) -> Node {
        let mut rest = asts;
        if drop_first {
            match asts.first() {
                Some(Ast::Assertion(a)) if a.span.start.offset == 0 => rest = &asts[1..],
                _ => {
                    self.foreign = true;
                    return Node::Other;
                }
            }
        }
        let mut items: Vec<Item> = Vec::with_capacity(rest.len());
        for a in rest {
            let spliced =
                matches!(a, Ast::Group(g) if matches!(g.kind, GroupKind::NonCapturing(_)));
            if let Ast::Flags(f) = a {
                self.apply_flags(&f.flags);
                continue;
            }
            let node = self.node(a);
            match node {
                Node::Concat(subs) if spliced => {
                    for s in subs {
                        items.push(Item {
                            node: s,
                            mergeable: false,
                        });
                    }
                }
                node => push(&mut items, node),
            }
        }
        match items.len() {
            0 => Node::Empty,
            1 => items.pop().map_or(Node::Empty, |i| i.node),
            _ => Node::Concat(items.into_iter().map(|i| i.node).collect()),
        }
    }
}

/// Pushes onto a concatenation, merging a literal into a preceding literal of the same
/// case mode as Go's parser does.
fn push(items: &mut Vec<Item>, node: Node) {
    if let Node::Lit { chars, fold } = &node {
        if let Some(Item {
            node:
                Node::Lit {
                    chars: prev,
                    fold: prev_fold,
                },
            mergeable: true,
        }) = items.last_mut()
        {
            if prev_fold == fold {
                prev.extend(chars);
                return;
            }
        }
    }
    items.push(Item {
        node,
        mergeable: true,
    });
}

/// An alternation as Go's parser leaves it.
fn alternate(branches: Vec<Node>) -> Node {
    // Nested alternations are flattened; neighbouring single characters and classes
    // merge into one class as the branches are read.
    let mut flat: Vec<Node> = Vec::with_capacity(branches.len());
    for b in branches {
        let subs = match b {
            Node::Alt(subs) => subs,
            b => vec![b],
        };
        for s in subs {
            push_branch(&mut flat, s);
        }
    }
    let factored = factor(flat);
    let mut out: Vec<Node> = Vec::with_capacity(factored.len());
    for b in factored {
        if matches!(b, Node::Empty) && matches!(out.last(), Some(Node::Empty)) {
            continue;
        }
        push_branch(&mut out, b);
    }
    if out.len() == 1 {
        out.pop().unwrap_or(Node::Empty)
    } else {
        Node::Alt(out)
    }
}

fn push_branch(out: &mut Vec<Node>, b: Node) {
    if let Some(prev) = out.last_mut() {
        if prev.is_char_class() && b.is_char_class() {
            let same = matches!((&*prev, &b), (Node::Lit { chars: a, fold: fa }, Node::Lit { chars: c, fold: fc }) if a == c && fa == fc);
            if !same {
                *prev = Node::Class;
            }
            return;
        }
    }
    out.push(b);
}

/// The literal a branch starts with (Go's "leading string").
fn leading(b: &Node) -> Option<(&[char], bool)> {
    let first = match b {
        Node::Concat(subs) => subs.first()?,
        b => b,
    };
    match first {
        Node::Lit { chars, fold } => Some((chars, *fold)),
        _ => None,
    }
}

/// Factors the common leading text out of runs of neighbouring alternatives.
fn factor(branches: Vec<Node>) -> Vec<Node> {
    let mut out = Vec::with_capacity(branches.len());
    let mut run: Vec<Node> = Vec::new();
    let mut common: Vec<char> = Vec::new();
    let mut common_fold = false;
    for b in branches {
        if let Some((chars, fold)) = leading(&b) {
            if !run.is_empty() && fold == common_fold {
                let same = common.iter().zip(chars).take_while(|(x, y)| x == y).count();
                if same > 0 {
                    common.truncate(same);
                    run.push(b);
                    continue;
                }
            }
        }
        flush_run(&mut out, &mut run, &common, common_fold);
        match leading(&b) {
            Some((chars, fold)) => {
                common = chars.to_vec();
                common_fold = fold;
            }
            None => {
                common.clear();
                common_fold = false;
            }
        }
        run.push(b);
    }
    flush_run(&mut out, &mut run, &common, common_fold);
    out
}

fn flush_run(out: &mut Vec<Node>, run: &mut Vec<Node>, common: &[char], fold: bool) {
    if run.len() < 2 || common.is_empty() {
        out.append(run);
        return;
    }
    let suffixes = run
        .drain(..)
        .map(|b| remove_leading(b, common.len()))
        .collect();
    let suffix = alternate(suffixes);
    out.push(Node::Concat(vec![
        Node::Lit {
            chars: common.to_vec(),
            fold,
        },
        suffix,
    ]));
}

fn remove_leading(b: Node, n: usize) -> Node {
    match b {
        Node::Lit { chars, fold } => {
            if chars.len() <= n {
                Node::Empty
            } else {
                Node::Lit {
                    chars: chars[n..].to_vec(),
                    fold,
                }
            }
        }
        Node::Concat(mut subs) => {
            if subs.is_empty() {
                return Node::Empty;
            }
            let first = remove_leading(subs.remove(0), n);
            if matches!(first, Node::Empty) {
                match subs.len() {
                    0 => Node::Empty,
                    1 => subs.pop().unwrap_or(Node::Empty),
                    _ => Node::Concat(subs),
                }
            } else {
                subs.insert(0, first);
                Node::Concat(subs)
            }
        }
        b => b,
    }
}

/// The characters `c` is equal to when case is ignored (simple case folding), sorted.
fn fold_orbit(c: char) -> Vec<char> {
    let mut cls = ClassUnicode::new([ClassUnicodeRange::new(c, c)]);
    cls.case_fold_simple();
    cls.ranges()
        .iter()
        .flat_map(|r| r.start()..=r.end())
        .collect()
}

/// The smallest character `c` folds to (Go stores case-insensitive literals so).
fn min_fold(c: char) -> char {
    if c.is_ascii() {
        return c.to_ascii_uppercase();
    }
    fold_orbit(c).first().copied().unwrap_or(c)
}
