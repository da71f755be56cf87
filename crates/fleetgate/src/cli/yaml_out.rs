//! Writing a serializable value as block YAML, keys in the order the value
//! serializes them (struct fields in declaration order), so that a dump reads
//! like the file an operator would write. Strings are written plain when
//! reading them back gives the same string, else double-quoted with escapes:
//! what is written reads back as the same value (`fleetgate_deploy::load_json`).

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Serialize;

/// A JSON value that keeps the order of its keys.
#[derive(Debug, Clone, PartialEq)]
enum Ordered {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    String(String),
    Seq(Vec<Ordered>),
    Map(Vec<(String, Ordered)>),
}

impl<'de> Deserialize<'de> for Ordered {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Ordered;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_unit<E>(self) -> Result<Ordered, E> {
                Ok(Ordered::Null)
            }
            fn visit_none<E>(self) -> Result<Ordered, E> {
                Ok(Ordered::Null)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Ordered, D::Error> {
                Ordered::deserialize(d)
            }
            fn visit_bool<E>(self, v: bool) -> Result<Ordered, E> {
                Ok(Ordered::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Ordered, E> {
                Ok(Ordered::Number(v.into()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Ordered, E> {
                Ok(Ordered::Number(v.into()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Ordered, E> {
                serde_json::Number::from_f64(v)
                    .map(Ordered::Number)
                    .ok_or_else(|| E::custom("a number that is not finite"))
            }
            fn visit_str<E>(self, v: &str) -> Result<Ordered, E> {
                Ok(Ordered::String(v.to_string()))
            }
            fn visit_string<E>(self, v: String) -> Result<Ordered, E> {
                Ok(Ordered::String(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Ordered, A::Error> {
                let mut out = Vec::new();
                while let Some(v) = a.next_element()? {
                    out.push(v);
                }
                Ok(Ordered::Seq(out))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Ordered, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = a.next_entry::<String, Ordered>()? {
                    out.push((k, v));
                }
                Ok(Ordered::Map(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// `value` as a block YAML document (no `---`), ending with a newline.
pub fn to_yaml<T: Serialize>(value: &T) -> anyhow::Result<String> {
    // Through JSON text: serde_json writes fields in declaration order, which
    // `Ordered` keeps (a `serde_json::Value` would sort them).
    let text = serde_json::to_string(value)?;
    let tree: Ordered = serde_json::from_str(&text)?;
    let mut out = String::new();
    match &tree {
        Ordered::Map(m) if !m.is_empty() => map(&mut out, m, 0),
        Ordered::Seq(s) if !s.is_empty() => seq(&mut out, s, 0),
        other => {
            out.push_str(&inline(other));
            out.push('\n');
        }
    }
    Ok(out)
}

fn map(out: &mut String, entries: &[(String, Ordered)], indent: usize) {
    for (k, v) in entries {
        push_indent(out, indent);
        out.push_str(&scalar_string(k));
        out.push(':');
        match v {
            Ordered::Map(m) if !m.is_empty() => {
                out.push('\n');
                map(out, m, indent + 2);
            }
            Ordered::Seq(s) if !s.is_empty() => {
                out.push('\n');
                seq(out, s, indent + 2);
            }
            other => {
                out.push(' ');
                out.push_str(&inline(other));
                out.push('\n');
            }
        }
    }
}

fn seq(out: &mut String, items: &[Ordered], indent: usize) {
    for item in items {
        match item {
            Ordered::Map(m) if !m.is_empty() => nested(out, indent, |o| map(o, m, indent + 2)),
            Ordered::Seq(s) if !s.is_empty() => nested(out, indent, |o| seq(o, s, indent + 2)),
            other => {
                push_indent(out, indent);
                out.push_str("- ");
                out.push_str(&inline(other));
                out.push('\n');
            }
        }
    }
}

/// A list item that is a mapping or a list: written two columns deeper, its
/// first line then starting with `- ` in place of the indentation.
fn nested(out: &mut String, indent: usize, write: impl FnOnce(&mut String)) {
    let mut inner = String::new();
    write(&mut inner);
    push_indent(out, indent);
    out.push_str("- ");
    out.push_str(&inner[indent + 2..]);
}

fn push_indent(out: &mut String, n: usize) {
    out.extend(std::iter::repeat_n(' ', n));
}

/// A scalar, an empty list or an empty mapping, on one line.
fn inline(v: &Ordered) -> String {
    match v {
        Ordered::Null => "null".to_string(),
        Ordered::Bool(b) => b.to_string(),
        Ordered::Number(n) => n.to_string(),
        Ordered::String(s) => scalar_string(s),
        Ordered::Seq(_) => "[]".to_string(),
        Ordered::Map(_) => "{}".to_string(),
    }
}

/// A string, plain when that reads back as the same string, else quoted.
fn scalar_string(s: &str) -> String {
    if plain_is_safe(s) {
        s.to_string()
    } else {
        quoted(s)
    }
}

fn plain_is_safe(s: &str) -> bool {
    let mut chars = s.chars().peekable();
    let Some(first) = chars.next() else {
        return false;
    };
    if !(first.is_ascii_alphanumeric() || first == '/') || s.ends_with([' ', ':']) {
        return false;
    }
    while let Some(c) = chars.next() {
        let ok = c.is_ascii_alphanumeric()
            || matches!(c, '_' | '.' | '-' | '/' | '@' | '+' | '=' | '*' | '(' | ')')
            || (c == ' ' && chars.peek() != Some(&' '))
            || (c == ':' && chars.peek().is_some_and(|n| *n != ' '));
        if !ok {
            return false;
        }
    }
    // Words YAML reads as something else (`true`, `null`, `42`, `1e3`).
    !(matches!(
        s,
        "true" | "True" | "TRUE" | "false" | "False" | "FALSE" | "null" | "Null" | "NULL"
    ) || s.parse::<f64>().is_ok()
        || s.parse::<i64>().is_ok()
        || s.parse::<u64>().is_ok())
}

/// A double-quoted YAML scalar: printable characters as they are, the rest
/// escaped.
fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            ' '..='~' => out.push(c),
            // YAML's printable characters above ASCII, less the BOM.
            '\u{a0}'..='\u{d7ff}' | '\u{e000}'..='\u{fffd}' | '\u{10000}'.. if c != '\u{feff}' => {
                out.push(c)
            }
            c if (c as u32) <= 0xffff => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push_str(&format!("\\U{:08x}", c as u32)),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{json, Value};

    fn read(text: &str) -> Value {
        fleetgate_deploy::load_json("t.yaml", text, 1 << 20)
            .map_err(|p| format!("{p:?}\n{text}"))
            .expect("reads back")
            .0
    }

    #[test]
    fn writes_block_yaml_in_field_order() {
        #[derive(Serialize)]
        struct Doc {
            zeta: u32,
            alpha: Vec<Value>,
            empty: Vec<u32>,
        }
        let doc = Doc {
            zeta: 1,
            alpha: vec![
                json!({"b": "x y", "a": [1, 2], "c": {}}),
                json!("true"),
                json!([["n"]]),
            ],
            empty: vec![],
        };
        let text = to_yaml(&doc).expect("yaml");
        assert_eq!(
            text,
            "zeta: 1\nalpha:\n  - a:\n      - 1\n      - 2\n    b: x y\n    c: {}\n  - \"true\"\n  - - - n\nempty: []\n"
        );
        assert_eq!(read(&text), serde_json::to_value(&doc).expect("value"));
    }

    fn scalar() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            (-1e12f64..1e12).prop_map(Value::from),
            any::<String>().prop_map(Value::String),
            "[ -~]{0,12}".prop_map(Value::String),
            prop::sample::select(vec![
                "",
                "~",
                "null",
                "yes",
                "1e3",
                "0x10",
                ".5",
                "- a",
                "a: b",
                "a #b",
                " a",
                "a ",
                "http://h:1/p",
                "*",
                "&a",
                "!t",
                "%",
                "@",
                "`",
                "'",
                "\"",
                "\u{feff}",
                "\u{85}",
                "\u{7f}",
                "\u{2028}",
                "a\u{0}b",
                "-",
                "?",
                ":",
                "+1",
                "inf",
                "NaN",
            ])
            .prop_map(|s| Value::String(s.to_string())),
        ]
    }

    fn value() -> impl Strategy<Value = Value> {
        scalar().prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::btree_map("[ -~]{0,8}", inner, 0..5)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Whatever is written reads back as the same value (NUL, which the
        /// reader refuses, aside).
        #[test]
        fn written_yaml_reads_back(v in prop::collection::btree_map("[a-z_]{1,8}", value(), 0..6)) {
            let v = Value::Object(v.into_iter().collect());
            prop_assume!(!v.to_string().contains("\\u0000"));
            let text = to_yaml(&v).expect("yaml");
            prop_assert_eq!(read(&text), v, "{}", text);
        }
    }
}
