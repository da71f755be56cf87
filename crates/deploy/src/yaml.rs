//! Reading the deployment files as YAML, and the checks both files share. Owns
//! the limits against hostile input (file size, nesting, string length), turning
//! the YAML loader's errors into [`Problem`]s a user understands, and the typed
//! readers of scalars (strings, numbers, booleans, durations) that record a
//! problem with the node's line and column instead of failing.
//!
//! Nodes come from `marked-yaml` (every node knows where it starts); its serde
//! layer is not used, because a walk over the nodes can name the position and
//! the field of every problem, and collect them all instead of stopping at the
//! first.

use std::time::Duration;

use marked_yaml::types::{MarkedMappingNode, MarkedScalarNode};
use marked_yaml::{LoadError, LoaderOptions, Node};

use crate::spec::{Position, Problem};

/// Larger files are refused before they are parsed.
pub(crate) const MAX_FILE_BYTES: usize = 1 << 20;
/// Longer strings (keys or values) are refused.
pub(crate) const MAX_STRING_BYTES: usize = 64 << 10;
/// Deeper nesting is refused before the tree is built: the YAML parser recurses
/// once per level, and a few thousand levels (`- - - - …`, 2 bytes each)
/// would overflow the stack. The deployment files need fewer than 8.
const MAX_DEPTH: usize = 32;

/// Problems found in one file so far.
pub(crate) struct Checker {
    file: String,
    /// Larger files are refused before they are parsed.
    max_bytes: usize,
    problems: Vec<Problem>,
}

impl Checker {
    pub(crate) fn new(file: impl Into<String>) -> Self {
        Self {
            file: file.into(),
            max_bytes: MAX_FILE_BYTES,
            problems: Vec::new(),
        }
    }

    /// Records a problem at `at` with the field path `field`.
    pub(crate) fn push(&mut self, at: Position, field: &str, message: impl Into<String>) {
        self.problems.push(Problem {
            file: self.file.clone(),
            line: at.line,
            column: at.column,
            field: field.to_string(),
            message: message.into(),
        });
    }

    /// Records a problem of the whole file (line 0, no field).
    pub(crate) fn whole(&mut self, message: impl Into<String>) {
        self.push(Position::default(), "", message);
    }

    pub(crate) fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }

    /// The problems sorted by position (the order they were found in for one
    /// position).
    pub(crate) fn into_problems(mut self) -> Vec<Problem> {
        self.problems.sort_by_key(|p| (p.line, p.column));
        self.problems
    }

    /// `value` when nothing was wrong, else every problem.
    pub(crate) fn finish<T>(self, value: T) -> Result<T, Vec<Problem>> {
        if self.problems.is_empty() {
            Ok(value)
        } else {
            Err(self.into_problems())
        }
    }

    /// Loads `text` as a YAML mapping. `None` when the file holds nothing but
    /// blanks and comments; problems (recorded) when it is not a YAML mapping.
    pub(crate) fn load(&mut self, text: &str) -> Result<Option<MarkedMappingNode>, ()> {
        if text.len() > self.max_bytes {
            self.whole(format!(
                "the file is {} bytes; at most {} ({} MiB) are read",
                text.len(),
                self.max_bytes,
                self.max_bytes >> 20
            ));
            return Err(());
        }
        if !has_content(text) {
            return Ok(None);
        }
        self.check_single_document(text);
        self.scan(text);
        if !self.is_clean() {
            return Err(());
        }
        let options = LoaderOptions::default()
            .error_on_duplicate_keys(true)
            // Keeps quoted scalars apart from plain ones: `"null"` is a string.
            .prevent_coercion(true);
        match marked_yaml::parse_yaml_with_options(0, text, options) {
            Ok(Node::Mapping(map)) => Ok(Some(map)),
            Ok(other) => {
                self.push(pos(&other), "", TOP_LEVEL);
                Err(())
            }
            Err(e) => {
                self.load_error(e);
                Err(())
            }
        }
    }

    fn load_error(&mut self, e: LoadError) {
        let (at, message) = match e {
            LoadError::TopLevelMustBeMapping(m) | LoadError::TopLevelMustBeSequence(m) => {
                (marker(&m), TOP_LEVEL.to_string())
            }
            LoadError::UnexpectedAnchor(m) => (marker(&m), ANCHORS.to_string()),
            LoadError::MappingKeyMustBeScalar(m) => (
                marker(&m),
                "keys must be plain words, not lists or mappings".to_string(),
            ),
            LoadError::UnexpectedTag(m) => (marker(&m), TAGS.to_string()),
            LoadError::ScanError(m, scan) => {
                let info = scan.info();
                // An alias (`*name`) of an anchor the loader refused.
                let message = if info.contains("anchor") {
                    ANCHORS.to_string()
                } else {
                    format!("this is not valid YAML: {info}")
                };
                (marker(&m), message)
            }
            LoadError::DuplicateKey(inner) => {
                let first = scalar_pos(&inner.prev_key);
                (
                    scalar_pos(&inner.key),
                    format!(
                        "the key `{}` appears twice in one mapping (first on line {})",
                        shorten(inner.key.as_str()),
                        first.line
                    ),
                )
            }
        };
        self.push(at, "", message);
    }

    /// The loader reads the first YAML document and silently drops the rest;
    /// a second document is refused rather than ignored.
    fn check_single_document(&mut self, text: &str) {
        let mut content = false;
        let mut ended = false;
        for (i, line) in lines(text).enumerate() {
            let marker_line = |m: &str| {
                line.strip_prefix(m)
                    .is_some_and(|r| r.is_empty() || r.starts_with([' ', '\t']))
            };
            let at = Position {
                line: i + 1,
                column: 1,
            };
            if marker_line("---") {
                if content || ended {
                    self.push(at, "", SECOND_DOCUMENT);
                    return;
                }
                let rest = line[3..].trim();
                content = !rest.is_empty() && !rest.starts_with('#');
            } else if marker_line("...") {
                ended = true;
            } else if is_content(line) && (content || !line.starts_with('%')) {
                // (`%` directives before the document are not content.)
                if ended {
                    self.push(at, "", SECOND_DOCUMENT);
                    return;
                }
                content = true;
            }
        }
    }

    /// Reads the tokens (the tokenizer does not recurse) before the parser
    /// (which does) sees the text: nesting deeper than [`MAX_DEPTH`] is
    /// refused, and so are anchors, aliases and tags, here where their exact
    /// position is known (the loader places a refused anchor of a mapping
    /// after the mapping's first key).
    fn scan(&mut self, text: &str) {
        use yaml_rust2::scanner::{Scanner, TokenType};
        let mut depth = 0usize;
        for token in Scanner::new(text.chars()) {
            let at = Position {
                line: token.0.line().max(1),
                column: token.0.col() + 1,
            };
            match token.1 {
                TokenType::BlockSequenceStart
                | TokenType::BlockMappingStart
                | TokenType::FlowSequenceStart
                | TokenType::FlowMappingStart => {
                    depth += 1;
                    if depth > MAX_DEPTH {
                        self.push(
                            at,
                            "",
                            format!(
                                "lists and mappings nest more than {MAX_DEPTH} levels deep here"
                            ),
                        );
                        return;
                    }
                }
                TokenType::BlockEnd | TokenType::FlowSequenceEnd | TokenType::FlowMappingEnd => {
                    depth = depth.saturating_sub(1);
                }
                TokenType::Anchor(_) | TokenType::Alias(_) => {
                    self.push(at, "", ANCHORS);
                    return;
                }
                TokenType::Tag(..) => {
                    self.push(at, "", TAGS);
                    return;
                }
                _ => {}
            }
        }
    }

    /// `node` as a scalar within the length limit; a problem otherwise.
    pub(crate) fn scalar<'a>(
        &mut self,
        node: &'a Node,
        field: &str,
        expected: &str,
    ) -> Option<&'a MarkedScalarNode> {
        match node {
            Node::Scalar(s) => self.checked(s, field).then_some(s),
            Node::Mapping(_) => {
                self.push(
                    pos(node),
                    field,
                    format!("expected {expected}, found a mapping"),
                );
                None
            }
            Node::Sequence(_) => {
                self.push(
                    pos(node),
                    field,
                    format!("expected {expected}, found a list"),
                );
                None
            }
        }
    }

    /// Whether a scalar is within the limits (a problem recorded if not).
    pub(crate) fn checked(&mut self, s: &MarkedScalarNode, field: &str) -> bool {
        if s.as_str().len() > MAX_STRING_BYTES {
            self.push(
                scalar_pos(s),
                field,
                format!(
                    "this string is {} bytes long; at most {} (64 KiB) are allowed",
                    s.as_str().len(),
                    MAX_STRING_BYTES
                ),
            );
            false
        } else if s.as_str().contains('\0') {
            self.push(scalar_pos(s), field, "this string holds a NUL character");
            false
        } else {
            true
        }
    }

    /// A non-empty string (numbers and booleans give their text).
    pub(crate) fn string(&mut self, node: &Node, field: &str) -> Option<String> {
        let s = self.scalar(node, field, "a string")?;
        if is_null(s) || s.as_str().is_empty() {
            self.push(pos(node), field, "expected a string, found nothing");
            return None;
        }
        Some(s.as_str().to_string())
    }

    /// A whole number in `min..=max`, written plain or quoted.
    pub(crate) fn number(&mut self, node: &Node, field: &str, min: u64, max: u64) -> Option<u64> {
        let expected = format!("a whole number from {min} to {max}");
        let s = self.scalar(node, field, &expected)?;
        match s.as_str().trim().parse::<u64>() {
            Ok(n) if (min..=max).contains(&n) => Some(n),
            Ok(_) => {
                self.push(
                    pos(node),
                    field,
                    format!("{} is out of range; expected {expected}", s.as_str().trim()),
                );
                None
            }
            Err(_) => {
                self.push(
                    pos(node),
                    field,
                    format!("expected {expected}, found `{}`", shorten(s.as_str())),
                );
                None
            }
        }
    }

    /// `true` or `false`, unquoted.
    pub(crate) fn boolean(&mut self, node: &Node, field: &str) -> Option<bool> {
        let s = self.scalar(node, field, "true or false")?;
        let value = if s.may_coerce() {
            match s.as_str() {
                "true" | "True" | "TRUE" => Some(true),
                "false" | "False" | "FALSE" => Some(false),
                _ => None,
            }
        } else {
            None
        };
        if value.is_none() {
            self.push(
                pos(node),
                field,
                format!("expected true or false, found `{}`", shorten(s.as_str())),
            );
        }
        value
    }

    /// A compose duration (`1m30s`).
    pub(crate) fn duration(&mut self, node: &Node, field: &str) -> Option<Duration> {
        let s = self.scalar(node, field, "a duration such as 10s or 1m30s")?;
        match crate::duration::parse(s.as_str()) {
            Ok(d) => Some(d),
            Err(e) => {
                self.push(pos(node), field, e);
                None
            }
        }
    }

    /// `node` as a mapping (a problem otherwise).
    pub(crate) fn mapping<'a>(
        &mut self,
        node: &'a Node,
        field: &str,
        what: &str,
    ) -> Option<&'a MarkedMappingNode> {
        match node {
            Node::Mapping(m) => Some(m),
            Node::Scalar(s) if is_null(s) => {
                self.push(pos(node), field, format!("{what} is empty"));
                None
            }
            _ => {
                self.push(
                    pos(node),
                    field,
                    format!("{what} must be a mapping of keys to values"),
                );
                None
            }
        }
    }

    /// Records a problem for a key not in `known`, unless it is within limits
    /// and known. Returns whether the key is known.
    pub(crate) fn known_key(
        &mut self,
        key: &MarkedScalarNode,
        field: &str,
        known: &[&str],
        within: &str,
    ) -> bool {
        if !self.checked(key, field) {
            return false;
        }
        if known.contains(&key.as_str()) {
            return true;
        }
        self.push(
            scalar_pos(key),
            field,
            format!(
                "unknown key `{}` in {within}; expected one of: {}",
                shorten(key.as_str()),
                known.join(", ")
            ),
        );
        false
    }
}

const TOP_LEVEL: &str = "the file must be a mapping of keys to values at the top level";
const ANCHORS: &str =
    "anchors and aliases (`&name`, `*name`) are not supported; write the value out";
const TAGS: &str = "YAML tags (`!name`, `!!str`) are not supported";
const SECOND_DOCUMENT: &str = "a second YAML document starts here; the file must hold exactly one";

/// The lines of `text` as YAML counts them: `\n`, `\r\n` and a lone `\r`
/// each end one (`str::lines` would miss the last), so that line numbers
/// found here agree with the loader's.
pub(crate) fn lines(text: &str) -> impl Iterator<Item = &str> {
    text.split('\n')
        .flat_map(|l| l.strip_suffix('\r').unwrap_or(l).split('\r'))
}

/// Whether a line holds more than blanks or a comment.
fn is_content(line: &str) -> bool {
    let t = line.trim();
    !t.is_empty() && !t.starts_with('#')
}

/// Whether the file holds anything but blanks, comments and document markers.
fn has_content(text: &str) -> bool {
    lines(text).any(|l| {
        let t = l.trim();
        is_content(l) && t != "---" && t != "..."
    })
}

/// A null scalar: nothing, `~` or `null`, unquoted.
pub(crate) fn is_null(s: &MarkedScalarNode) -> bool {
    s.may_coerce() && matches!(s.as_str(), "" | "~" | "null" | "Null" | "NULL")
}

fn marker(m: &marked_yaml::Marker) -> Position {
    Position {
        line: m.line().max(1),
        column: m.column().max(1),
    }
}

/// Where a node starts. The loader marks a block mapping after its first key,
/// so a mapping is placed at that key.
pub(crate) fn pos(node: &Node) -> Position {
    if let Some(first) = node.as_mapping().and_then(|m| m.keys().next()) {
        return scalar_pos(first);
    }
    node.span()
        .start()
        .map(marker)
        .unwrap_or(Position { line: 1, column: 1 })
}

/// Where a scalar (a key, say) starts.
pub(crate) fn scalar_pos(s: &MarkedScalarNode) -> Position {
    s.span()
        .start()
        .map(marker)
        .unwrap_or(Position { line: 1, column: 1 })
}

/// The start of a long text, for messages (an unknown key can be 64 KiB).
pub(crate) fn shorten(text: &str) -> String {
    const MAX: usize = 60;
    match text.char_indices().nth(MAX) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_string(),
    }
}

/// Where each value of a document loaded by [`load_json`] was written, by the
/// value's JSON Pointer (RFC 6901; the root is `""`). A mapping's entry is
/// placed at its key, a list's item at the item.
pub type JsonPositions = std::collections::BTreeMap<String, Position>;

/// Loads `text` (YAML, or JSON, which YAML reads too) as a JSON value, with
/// the same limits and messages as the deployment files (nesting, anchors,
/// tags, duplicate keys, several documents, `max_bytes`) and the position of
/// every value. Problems are reported against `file`.
///
/// Plain scalars are typed as YAML 1.2's core schema types them (`null`, `~`
/// and nothing are null, `true`/`false` booleans, numbers numbers); quoted
/// and block scalars are always strings. An empty file is an empty mapping.
pub fn load_json(
    file: &str,
    text: &str,
    max_bytes: usize,
) -> Result<(serde_json::Value, JsonPositions), Vec<Problem>> {
    let mut c = Checker::new(file);
    c.max_bytes = max_bytes;
    let root = match c.load(text) {
        Ok(Some(root)) => root,
        Ok(None) => {
            return Ok((
                serde_json::Value::Object(Default::default()),
                JsonPositions::new(),
            ))
        }
        Err(()) => return Err(c.into_problems()),
    };
    let mut positions = JsonPositions::new();
    let root = Node::Mapping(root);
    positions.insert(String::new(), pos(&root));
    let mut path = String::new();
    let value = to_json(&mut c, &root, &mut path, &mut positions);
    c.finish((value, positions))
}

fn to_json(
    c: &mut Checker,
    node: &Node,
    path: &mut String,
    positions: &mut JsonPositions,
) -> serde_json::Value {
    use serde_json::Value;
    let field = pointer_field(path);
    match node {
        Node::Scalar(s) => {
            if !c.checked(s, &field) {
                return Value::Null;
            }
            scalar_json(s)
        }
        Node::Sequence(items) => {
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                let len = path.len();
                path.push('/');
                path.push_str(&i.to_string());
                positions.insert(path.clone(), pos(item));
                out.push(to_json(c, item, path, positions));
                path.truncate(len);
            }
            Value::Array(out)
        }
        Node::Mapping(map) => {
            let mut out = serde_json::Map::new();
            for (key, value) in map.iter() {
                if !c.checked(key, &field) {
                    continue;
                }
                let len = path.len();
                path.push('/');
                path.push_str(&key.as_str().replace('~', "~0").replace('/', "~1"));
                positions.insert(path.clone(), scalar_pos(key));
                let v = to_json(c, value, path, positions);
                out.insert(key.as_str().to_string(), v);
                path.truncate(len);
            }
            Value::Object(out)
        }
    }
}

/// A scalar as YAML 1.2's core schema types it (quoted scalars stay strings).
fn scalar_json(s: &MarkedScalarNode) -> serde_json::Value {
    use serde_json::Value;
    let text = s.as_str();
    if !s.may_coerce() {
        return Value::String(text.to_string());
    }
    if is_null(s) {
        return Value::Null;
    }
    match text {
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        _ => {}
    }
    let looks_numeric = text
        .trim_start_matches(['-', '+'])
        .starts_with(|ch: char| ch.is_ascii_digit() || ch == '.');
    if looks_numeric {
        if let Ok(n) = text.parse::<i64>() {
            return Value::from(n);
        }
        if let Ok(n) = text.parse::<u64>() {
            return Value::from(n);
        }
        if let Some(n) = text
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
        {
            return Value::Number(n);
        }
    }
    Value::String(text.to_string())
}

/// A JSON Pointer as a field path for messages: `/routes/0/path` is
/// `routes[0].path`.
pub fn pointer_field(pointer: &str) -> String {
    let mut out = String::new();
    for segment in pointer.split('/').skip(1) {
        let segment = segment.replace("~1", "/").replace("~0", "~");
        if !segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit()) {
            out.push('[');
            out.push_str(&segment);
            out.push(']');
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(&segment);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn json_values_keep_their_types_and_positions() {
        let text =
            "a: 1\nb:\n  - \"2\"\n  - true\n  - ~\n  - 1.5\n  - 18446744073709551615\nc: {d: x}\n";
        let (v, at) = load_json("f.yaml", text, 1 << 20).expect("loads");
        assert_eq!(
            v,
            json!({"a": 1, "b": ["2", true, null, 1.5, 18446744073709551615u64], "c": {"d": "x"}})
        );
        let line = |p: &str| at.get(p).map(|p| (p.line, p.column));
        assert_eq!(line("/a"), Some((1, 1)));
        assert_eq!(line("/b/1"), Some((4, 5)));
        assert_eq!(line("/c/d"), Some((8, 5)));
        assert_eq!(pointer_field("/b/1/x~1y"), "b[1].x/y");
        let e = load_json("f.yaml", "a: 1\na: 2\n", 1 << 20).expect_err("duplicate");
        assert_eq!(
            e[0].to_string(),
            "f.yaml:2:1: the key `a` appears twice in one mapping (first on line 1)"
        );
        // Found by the property test below: positions may fall on the line
        // after the last.
        if let Ok((_, at)) = load_json("f.yaml", "\t\0", 1 << 20) {
            assert!(at.values().all(|p| p.line <= 2), "{at:?}");
        }
        let e = load_json("f.yaml", "a: 1\n", 3).expect_err("too large");
        assert!(e[0].message.contains("at most 3"), "{}", e[0]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Any text: a value, or problems placed within the file; no panic.
        #[test]
        fn any_text_loads_or_is_refused_within_the_file(
            text in prop_oneof![
                ".{0,200}",
                prop::collection::vec(
                    prop::sample::select(vec![
                        "a:", " ", "  ", "- ", "\n", "\"", "'", "{", "}", "[", "]", ",", "#", "&x",
                        "*x", "!t", "---", "...", "~", "1", "-1.5e3", "true", ":", "|", ">", "\t",
                        "\r", "?", "%YAML 1.2", "b: c", "\\u0000",
                    ]),
                    0..60,
                )
                .prop_map(|parts| parts.concat()),
            ]
        ) {
            let lines = lines(&text).count();
            match load_json("f.yaml", &text, 1 << 20) {
                Ok((value, positions)) => {
                    prop_assert!(value.is_object());
                    for p in positions.values() {
                        // (The loader may place the end of input on the line after.)
                        prop_assert!(p.line >= 1 && p.line <= lines + 1, "{:?} in {} lines", p, lines);
                    }
                }
                Err(problems) => {
                    prop_assert!(!problems.is_empty());
                    for p in &problems {
                        prop_assert!(p.line <= lines + 1, "{} in {} lines", p, lines);
                        prop_assert!(!p.message.is_empty());
                    }
                }
            }
        }
    }
}
