//! The matching rule written as plainly as possible: every rule tried in the
//! documented order, regexes compiled on the spot. [`super::RuleSet::lookup`] must
//! answer exactly like it; the tests and the fuzz target check that.

use crate::redirects::{compile_regex, encode_location, Page, PageType, Redirect, RedirectType};

use super::{literal_prefix, RuleRef};

/// The answer for `host` and `uri` over `redirects` and `pages`, found by trying every
/// rule (see the [module documentation](super) for the rule): the status (200 for a
/// page) and the Location, or the page's content.
pub fn naive_lookup(
    redirects: &[Redirect],
    pages: &[Page],
    host: &str,
    uri: &str,
) -> Option<(u16, String)> {
    naive_lookup_rule(redirects, pages, host, uri).map(|(_, status, answer)| (status, answer))
}

/// As [`naive_lookup`], with the rule that answered (its position in `redirects` or
/// `pages`).
pub fn naive_lookup_rule(
    redirects: &[Redirect],
    pages: &[Page],
    host: &str,
    uri: &str,
) -> Option<(RuleRef, u16, String)> {
    let host_uri = format!("{host}{uri}");
    // Redirects before pages. Exact types: the last rule with the key wins.
    for (kind, key) in [
        (RedirectType::BasicHost, host_uri.as_str()),
        (RedirectType::Basic, uri),
    ] {
        if let Some(i) = redirects
            .iter()
            .rposition(|r| r.kind == kind && r.source == key)
        {
            let r = &redirects[i];
            return Some((
                RuleRef::Redirect(i),
                r.status.code(),
                encode_location(&r.target).into_owned(),
            ));
        }
    }
    for (kind, key) in [
        (RedirectType::RegexHost, host_uri.as_str()),
        (RedirectType::Regex, uri),
    ] {
        let mut candidates: Vec<(usize, &Redirect, regex::bytes::Regex)> = redirects
            .iter()
            .enumerate()
            .filter(|(_, r)| r.kind == kind)
            .filter(|(_, r)| key.starts_with(literal_prefix(&r.source).as_str()))
            .filter_map(|(i, r)| Some((i, r, compile_regex(&r.source).ok()?)))
            .collect();
        // Stable: equal lengths keep list order.
        candidates.sort_by_key(|(_, r, _)| std::cmp::Reverse(r.source.len()));
        for (i, r, re) in candidates {
            let Some(caps) = re.captures(key.as_bytes()) else {
                continue;
            };
            let group = |n: usize| -> String {
                caps.get(n)
                    .map(|m| String::from_utf8_lossy(m.as_bytes()).into_owned())
                    .unwrap_or_default()
            };
            // Flecto: for i from the last group down to 1, replace "$" + ('0' + i).
            let mut location = r.target.clone();
            for i in (1..caps.len()).rev() {
                let placeholder = match char::from_u32(u32::from(b'0') + i as u32) {
                    Some(c) => format!("${c}"),
                    None => "$\u{FFFD}".to_string(),
                };
                location = location.replace(&placeholder, &group(i));
            }
            return Some((
                RuleRef::Redirect(i),
                r.status.code(),
                encode_location(&location).into_owned(),
            ));
        }
    }
    for (kind, key) in [
        (PageType::BasicHost, host_uri.as_str()),
        (PageType::Basic, uri),
    ] {
        if let Some(i) = pages.iter().rposition(|p| p.kind == kind && p.path == key) {
            return Some((RuleRef::Page(i), 200, pages[i].content.clone()));
        }
    }
    None
}
