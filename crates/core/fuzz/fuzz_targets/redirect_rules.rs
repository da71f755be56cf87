//! Redirect rule compilation and matching on untrusted input. Each line of the input is
//! either a rule or a lookup:
//!
//! - `b`, `h`, `r`, `x` + source + TAB + target: a `BASIC`, `BASIC_HOST`, `REGEX` or
//!   `REGEX_HOST` redirect (its status picked by the source's length);
//! - `p`, `q` + path + TAB + content: a `BASIC` or `BASIC_HOST` page;
//! - `?` + host + SPACE + uri: a lookup (host empty when there is no space).
//!
//! Building must never panic, and every lookup must answer exactly as the plain
//! reference matcher does.

#![no_main]

use fleetgate_core::redirects::matcher::{naive_lookup, Hit, RuleSet};
use fleetgate_core::redirects::{
    Page, PageContentType, PageType, Redirect, RedirectStatus, RedirectType,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut redirects = Vec::new();
    let mut pages = Vec::new();
    let mut lookups = Vec::new();
    for line in text.split('\n') {
        let mut chars = line.chars();
        let Some(tag) = chars.next() else { continue };
        let rest = chars.as_str();
        let (a, b) = rest.split_once('\t').unwrap_or((rest, "/t/$1$2"));
        let redirect = |kind| Redirect {
            kind,
            source: a.to_string(),
            target: b.to_string(),
            status: RedirectStatus::ALL[a.len() % 4],
        };
        let page = |kind| Page {
            kind,
            path: a.to_string(),
            content: b.to_string(),
            content_type: PageContentType::TextPlain,
        };
        match tag {
            'b' => redirects.push(redirect(RedirectType::Basic)),
            'h' => redirects.push(redirect(RedirectType::BasicHost)),
            'r' => redirects.push(redirect(RedirectType::Regex)),
            'x' => redirects.push(redirect(RedirectType::RegexHost)),
            'p' => pages.push(page(PageType::Basic)),
            'q' => pages.push(page(PageType::BasicHost)),
            '?' => lookups.push(rest.split_once(' ').unwrap_or(("", rest))),
            _ => {}
        }
    }
    if redirects.len() > 16 || lookups.len() > 16 {
        return;
    }
    let set = RuleSet::build(redirects.clone(), pages.clone());
    let _ = set.skipped();
    for (host, uri) in lookups {
        let got = set.lookup(host, uri).map(|h| match h {
            Hit::Page { content, .. } => (200, String::from_utf8_lossy(content).into_owned()),
            Hit::Redirect { status, location } => (status.code(), location.into_owned()),
        });
        assert_eq!(
            got,
            naive_lookup(&redirects, &pages, host, uri),
            "{host} {uri}"
        );
    }
});
