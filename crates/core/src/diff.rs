//! Structural diff of two JSON values, used for revision diffs and audit entries.
//!
//! Paths are JSON Pointers (RFC 6901). Objects are compared key by key, arrays
//! index by index (trailing elements are added or removed), anything else is
//! replaced whole.

use serde::Serialize;
use serde_json::Value;

/// What happened at one path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ChangeOp {
    Add,
    Remove,
    Replace,
}

/// One difference between two values.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Change {
    pub op: ChangeOp,
    /// JSON Pointer of the changed value.
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<Value>,
}

/// The changes that turn `before` into `after`.
pub fn diff(before: &Value, after: &Value) -> Vec<Change> {
    let mut out = Vec::new();
    walk(&mut String::new(), before, after, &mut out);
    out
}

fn escape(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

fn walk(path: &mut String, a: &Value, b: &Value, out: &mut Vec<Change>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (k, va) in x {
                let len = path.len();
                path.push('/');
                path.push_str(&escape(k));
                match y.get(k) {
                    Some(vb) => walk(path, va, vb, out),
                    None => out.push(Change {
                        op: ChangeOp::Remove,
                        path: path.clone(),
                        before: Some(va.clone()),
                        after: None,
                    }),
                }
                path.truncate(len);
            }
            for (k, vb) in y {
                if !x.contains_key(k) {
                    out.push(Change {
                        op: ChangeOp::Add,
                        path: format!("{path}/{}", escape(k)),
                        before: None,
                        after: Some(vb.clone()),
                    });
                }
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            let common = x.len().min(y.len());
            for i in 0..common {
                let len = path.len();
                path.push('/');
                path.push_str(&i.to_string());
                walk(path, &x[i], &y[i], out);
                path.truncate(len);
            }
            // Removals from the end first, so applying the changes in order is valid.
            for i in (common..x.len()).rev() {
                out.push(Change {
                    op: ChangeOp::Remove,
                    path: format!("{path}/{i}"),
                    before: Some(x[i].clone()),
                    after: None,
                });
            }
            for (i, v) in y.iter().enumerate().skip(common) {
                out.push(Change {
                    op: ChangeOp::Add,
                    path: format!("{path}/{i}"),
                    before: None,
                    after: Some(v.clone()),
                });
            }
        }
        _ if a == b => {}
        _ => out.push(Change {
            op: ChangeOp::Replace,
            path: path.clone(),
            before: Some(a.clone()),
            after: Some(b.clone()),
        }),
    }
}

/// Applies changes produced by [`diff`] to `value`. Returns `false` when a path
/// does not exist in `value`.
pub fn apply(value: &mut Value, changes: &[Change]) -> bool {
    for c in changes {
        if c.path.is_empty() {
            match &c.after {
                Some(v) => *value = v.clone(),
                None => return false,
            }
            continue;
        }
        let (parent_path, last) = match c.path.rfind('/') {
            Some(i) => (&c.path[..i], unescape(&c.path[i + 1..])),
            None => return false,
        };
        let Some(parent) = value.pointer_mut(parent_path) else {
            return false;
        };
        match (parent, c.op) {
            (Value::Object(m), ChangeOp::Remove) => {
                if m.remove(&last).is_none() {
                    return false;
                }
            }
            (Value::Object(m), _) => {
                m.insert(last, c.after.clone().unwrap_or(Value::Null));
            }
            (Value::Array(v), op) => {
                let Ok(i) = last.parse::<usize>() else {
                    return false;
                };
                match op {
                    ChangeOp::Remove if i < v.len() => {
                        v.remove(i);
                    }
                    ChangeOp::Add if i <= v.len() => {
                        v.insert(i, c.after.clone().unwrap_or(Value::Null))
                    }
                    ChangeOp::Replace if i < v.len() => {
                        v[i] = c.after.clone().unwrap_or(Value::Null)
                    }
                    _ => return false,
                }
            }
            _ => return false,
        }
    }
    true
}

fn unescape(segment: &str) -> String {
    segment.replace("~1", "/").replace("~0", "~")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn reports_nested_changes() {
        let a = json!({"settings": {"api": {"rate": 100}, "old": true}, "list": [1, 2, 3]});
        let b = json!({"settings": {"api": {"rate": 50}, "new/key": 1}, "list": [1]});
        let d = diff(&a, &b);
        let paths: Vec<_> = d.iter().map(|c| (c.op, c.path.as_str())).collect();
        assert_eq!(
            paths,
            vec![
                (ChangeOp::Remove, "/list/2"),
                (ChangeOp::Remove, "/list/1"),
                (ChangeOp::Replace, "/settings/api/rate"),
                (ChangeOp::Remove, "/settings/old"),
                (ChangeOp::Add, "/settings/new~1key"),
            ]
        );
        assert!(diff(&a, &a).is_empty());
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i32>().prop_map(|n| json!(n)),
            "[a-z~/]{0,4}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 5, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::btree_map("[a-c~/]{1,2}", inner, 0..5)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn applying_the_diff_reproduces_the_target(a in arb_json(), b in arb_json()) {
            let changes = diff(&a, &b);
            let mut patched = a.clone();
            prop_assert!(apply(&mut patched, &changes));
            prop_assert_eq!(patched, b);
        }

        #[test]
        fn equal_values_have_no_diff(a in arb_json()) {
            prop_assert!(diff(&a, &a).is_empty());
        }
    }
}
