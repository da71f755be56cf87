//! The Prometheus text exposition format (version 0.0.4), written into a string:
//! metric families (`# HELP` and `# TYPE`), samples and histograms. The gateway's
//! and the manager's `/metrics` are both written with [`Encoder`], so label values
//! and help text are escaped in one place:
//!
//! - label values: backslash → `\\`, double quote → `\"`, newline → `\n`;
//! - help text: backslash → `\\`, newline → `\n`.
//!
//! Metric and label names are chosen by Fleetgate, never by a client, and are
//! written as given.

use std::fmt::{Display, Write};

/// The type of a metric family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// Writes exposition text at the end of a string.
pub struct Encoder<'a> {
    out: &'a mut String,
}

impl<'a> Encoder<'a> {
    pub fn new(out: &'a mut String) -> Self {
        Self { out }
    }

    /// `# HELP` and `# TYPE` lines of a family; its samples follow.
    pub fn family(&mut self, name: &str, help: &str, kind: Kind) {
        debug_assert!(valid_name(name), "metric name {name:?}");
        self.out.push_str("# HELP ");
        self.out.push_str(name);
        self.out.push(' ');
        escape_help_into(self.out, help);
        self.out.push_str("\n# TYPE ");
        self.out.push_str(name);
        self.out.push(' ');
        self.out.push_str(kind.as_str());
        self.out.push('\n');
    }

    /// One sample line: `name{label="value",…} value`, without braces when there
    /// are no labels.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.line(name, "", labels, None, value);
    }

    /// The samples of one histogram series: a `_bucket` per upper bound with its
    /// cumulative count, the `+Inf` bucket (`count`), then `_sum` and `_count`.
    pub fn histogram(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        cumulative_buckets: impl IntoIterator<Item = (f64, u64)>,
        sum: f64,
        count: u64,
    ) {
        for (le, n) in cumulative_buckets {
            self.line(name, "_bucket", labels, Some(&le), n);
        }
        self.line(name, "_bucket", labels, Some(&"+Inf"), count);
        self.line(name, "_sum", labels, None, sum);
        self.line(name, "_count", labels, None, count);
    }

    fn line(
        &mut self,
        name: &str,
        suffix: &str,
        labels: &[(&str, &str)],
        le: Option<&dyn Display>,
        value: impl Display,
    ) {
        debug_assert!(valid_name(name), "metric name {name:?}");
        self.out.push_str(name);
        self.out.push_str(suffix);
        if !labels.is_empty() || le.is_some() {
            self.out.push('{');
            for (i, (label, v)) in labels.iter().enumerate() {
                debug_assert!(valid_name(label) && !label.contains(':'), "label {label:?}");
                if i > 0 {
                    self.out.push(',');
                }
                self.out.push_str(label);
                self.out.push_str("=\"");
                escape_label_value_into(self.out, v);
                self.out.push('"');
            }
            if let Some(le) = le {
                if !labels.is_empty() {
                    self.out.push(',');
                }
                // A bound is a number or `+Inf`: nothing to escape.
                let _ = write!(self.out, "le=\"{le}\"");
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }
}

/// Whether `name` is a valid metric (or label) name: `[a-zA-Z_:][a-zA-Z0-9_:]*`.
fn valid_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_' || b == b':')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
}

fn escape_label_value_into(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn escape_help_into(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// A label value as written between the quotes of a sample line.
pub fn escape_label_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    escape_label_value_into(&mut out, value);
    out
}

/// Help text as written after `# HELP <name> `.
pub fn escape_help(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    escape_help_into(&mut out, text);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Reads one escaped label value up to its closing quote, as a Prometheus
    /// parser does; returns the value and what follows the quote.
    fn read_label_value(s: &str) -> Option<(String, &str)> {
        let mut out = String::new();
        let mut chars = s.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => return Some((out, &s[i + 1..])),
                '\\' => match chars.next()?.1 {
                    '\\' => out.push('\\'),
                    '"' => out.push('"'),
                    'n' => out.push('\n'),
                    _ => return None,
                },
                '\n' => return None,
                c => out.push(c),
            }
        }
        None
    }

    fn unescape_help(s: &str) -> Option<String> {
        let mut out = String::new();
        let mut chars = s.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next()? {
                    '\\' => out.push('\\'),
                    'n' => out.push('\n'),
                    _ => return None,
                },
                '\n' => return None,
                c => out.push(c),
            }
        }
        Some(out)
    }

    #[test]
    fn families_samples_and_histograms() {
        let mut out = String::from("# before\n");
        let mut e = Encoder::new(&mut out);
        e.family("fleetgate_x_total", "Things counted.", Kind::Counter);
        e.sample("fleetgate_x_total", &[("route", "a"), ("class", "2xx")], 3);
        e.sample("fleetgate_up", &[], format_args!("{:.3}", 1.5));
        e.family("fleetgate_d_seconds", "Latency.", Kind::Histogram);
        e.histogram(
            "fleetgate_d_seconds",
            &[("route", "a")],
            [(0.0001, 1), (0.25, 2)],
            0.3,
            4,
        );
        e.histogram("fleetgate_e_seconds", &[], [(1.0, 0)], 0.0, 0);
        assert_eq!(
            out,
            "# before\n\
             # HELP fleetgate_x_total Things counted.\n\
             # TYPE fleetgate_x_total counter\n\
             fleetgate_x_total{route=\"a\",class=\"2xx\"} 3\n\
             fleetgate_up 1.500\n\
             # HELP fleetgate_d_seconds Latency.\n\
             # TYPE fleetgate_d_seconds histogram\n\
             fleetgate_d_seconds_bucket{route=\"a\",le=\"0.0001\"} 1\n\
             fleetgate_d_seconds_bucket{route=\"a\",le=\"0.25\"} 2\n\
             fleetgate_d_seconds_bucket{route=\"a\",le=\"+Inf\"} 4\n\
             fleetgate_d_seconds_sum{route=\"a\"} 0.3\n\
             fleetgate_d_seconds_count{route=\"a\"} 4\n\
             fleetgate_e_seconds_bucket{le=\"1\"} 0\n\
             fleetgate_e_seconds_bucket{le=\"+Inf\"} 0\n\
             fleetgate_e_seconds_sum 0\n\
             fleetgate_e_seconds_count 0\n"
        );
    }

    #[test]
    fn escapes_label_values_and_help() {
        assert_eq!(escape_label_value(r#"a\b"c"#), r#"a\\b\"c"#);
        assert_eq!(escape_label_value("line\nbreak"), "line\\nbreak");
        assert_eq!(escape_label_value("/api/v1/users"), "/api/v1/users");
        assert_eq!(escape_label_value("\r\t é"), "\r\t é");
        assert_eq!(
            escape_help("C:\\ \"quoted\"\nnext"),
            "C:\\\\ \"quoted\"\\nnext"
        );
        let mut out = String::new();
        Encoder::new(&mut out).sample("m", &[("upstream", "x\"}\n y 1")], 2);
        assert_eq!(out, "m{upstream=\"x\\\"}\\n y 1\"} 2\n");
    }

    #[test]
    fn names_are_checked() {
        assert!(valid_name("fleetgate_gateway_requests_total"));
        assert!(valid_name("_a:b9"));
        assert!(!valid_name(""));
        assert!(!valid_name("9a"));
        assert!(!valid_name("a-b"));
    }

    proptest! {
        #[test]
        fn a_label_value_reads_back_and_stays_on_its_line(
            values in proptest::collection::vec(any::<String>(), 1..4),
        ) {
            let labels: Vec<(&str, &str)> = ["a", "b", "c"]
                .iter()
                .zip(&values)
                .map(|(l, v)| (*l, v.as_str()))
                .collect();
            let mut out = String::new();
            Encoder::new(&mut out).sample("m", &labels, 7);
            // One line, ended by the only newline.
            prop_assert_eq!(out.find('\n'), Some(out.len() - 1));
            let mut rest = out.strip_prefix("m{").expect("name");
            for (i, (label, value)) in labels.iter().enumerate() {
                if i > 0 {
                    rest = rest.strip_prefix(',').expect("comma");
                }
                rest = rest
                    .strip_prefix(*label)
                    .and_then(|r| r.strip_prefix("=\""))
                    .expect("label");
                let (read, after) = read_label_value(rest).expect("well escaped");
                prop_assert_eq!(&read, value);
                rest = after;
            }
            prop_assert_eq!(rest, "} 7\n");
        }

        #[test]
        fn help_text_reads_back_and_stays_on_its_line(text in any::<String>()) {
            let mut out = String::new();
            Encoder::new(&mut out).family("m", &text, Kind::Gauge);
            let (help, ty) = out
                .strip_prefix("# HELP m ")
                .and_then(|r| r.split_once('\n'))
                .expect("help line");
            prop_assert_eq!(ty, "# TYPE m gauge\n");
            prop_assert_eq!(unescape_help(help), Some(text));
        }
    }
}
