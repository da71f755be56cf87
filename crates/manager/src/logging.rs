//! The process's log filter, changeable while it runs: the binary installs how
//! to apply a new filter once its logging is set up, and the API
//! (`/api/v1/settings/logging`) reads and changes it. A change holds until the
//! process restarts (then `log.level` of the configuration applies again) and
//! only on the replica that was asked.

use std::sync::{Mutex, OnceLock};

/// How a new filter, given as text, is put in force.
pub type ApplyFilter = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

struct Control {
    apply: ApplyFilter,
    level: Mutex<String>,
    format: String,
}

static CONTROL: OnceLock<Control> = OnceLock::new();

/// Installs the filter in force (`level`), the output format, and how to
/// replace the filter; once per process (later calls are ignored).
pub fn install(level: &str, format: &str, apply: ApplyFilter) {
    let _ = CONTROL.set(Control {
        apply,
        level: Mutex::new(level.to_string()),
        format: format.to_string(),
    });
}

/// The filter in force and the output format, when logging can be changed.
pub fn current() -> Option<(String, String)> {
    let c = CONTROL.get()?;
    let level = c.level.lock().unwrap_or_else(|p| p.into_inner()).clone();
    Some((level, c.format.clone()))
}

/// The longest filter taken (32 directives of long module paths fit).
const MAX_FILTER_BYTES: usize = 4096;

const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// Checks a filter: comma-separated directives, each a level (`debug`) or
/// `target=level` where the target is a Rust module path
/// (`fleetgate_proxy=trace`). Returns the filter normalized (no blanks).
pub fn parse(filter: &str) -> Result<String, String> {
    if filter.len() > MAX_FILTER_BYTES {
        return Err(format!(
            "{} bytes: a filter is at most {MAX_FILTER_BYTES}",
            filter.len()
        ));
    }
    let mut out = Vec::new();
    for d in filter.split(',').map(str::trim) {
        if d.is_empty() {
            return Err("an empty directive (two commas, or one at an end)".into());
        }
        let (target, level) = match d.split_once('=') {
            Some((t, l)) => (Some(t.trim()), l.trim()),
            None => (None, d),
        };
        let level = level.to_ascii_lowercase();
        if !LEVELS.contains(&level.as_str()) {
            return Err(format!(
                "{d:?}: {level:?} is not a level (one of {})",
                LEVELS.join(", ")
            ));
        }
        match target {
            None => out.push(level),
            Some(t) => {
                let valid = !t.is_empty()
                    && t.split("::").all(|part| {
                        !part.is_empty()
                            && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    });
                if !valid {
                    return Err(format!(
                        "{d:?}: {t:?} is not a module path (letters, digits, _ and ::)"
                    ));
                }
                out.push(format!("{t}={level}"));
            }
        }
    }
    if out.len() > 32 {
        return Err("more than 32 directives".into());
    }
    Ok(out.join(","))
}

/// Replaces the filter with `filter` (checked by [`parse`]); returns the
/// filter before and after.
pub fn set(filter: &str) -> Result<(String, String), SetError> {
    let c = CONTROL.get().ok_or(SetError::NotInstalled)?;
    let normalized = parse(filter).map_err(SetError::Invalid)?;
    let mut level = c.level.lock().unwrap_or_else(|p| p.into_inner());
    (c.apply)(&normalized).map_err(SetError::Invalid)?;
    let before = std::mem::replace(&mut *level, normalized.clone());
    Ok((before, normalized))
}

#[derive(Debug)]
pub enum SetError {
    /// This process's logging cannot be changed (it was not set up by the binary).
    NotInstalled,
    Invalid(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn levels_and_module_directives_are_taken_and_normalized() {
        assert_eq!(parse("debug").as_deref(), Ok("debug"));
        assert_eq!(
            parse(" INFO , fleetgate_proxy::ai = Trace").as_deref(),
            Ok("info,fleetgate_proxy::ai=trace")
        );
        for bad in [
            "",
            "loud",
            "info,",
            "=debug",
            "a b=info",
            "x::=info",
            "info,fleetgate=lots",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        let many = vec!["info"; 33].join(",");
        assert!(parse(&many).is_err());
        let long = format!("{}=info", "a".repeat(MAX_FILTER_BYTES));
        assert!(parse(&long).expect_err("too long").contains("at most 4096"));
    }

    proptest! {
        /// Anything is either refused or normalized into a filter that parses
        /// to itself.
        #[test]
        fn parse_is_total_and_its_output_is_stable(s in ".{0,80}") {
            if let Ok(n) = parse(&s) {
                prop_assert_eq!(parse(&n), Ok(n.clone()));
            }
        }
    }
}
