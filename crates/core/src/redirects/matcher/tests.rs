use proptest::prelude::*;

use super::*;
use crate::redirects::{Page, PageContentType, PageType, Redirect, RedirectStatus, RedirectType};

fn r(kind: RedirectType, source: &str, target: &str, status: RedirectStatus) -> Redirect {
    Redirect {
        kind,
        source: source.into(),
        target: target.into(),
        status,
    }
}

fn rx(source: &str, target: &str) -> Redirect {
    r(RedirectType::Regex, source, target, RedirectStatus::Found)
}

fn page(kind: PageType, path: &str, content: &str, ct: PageContentType) -> Page {
    Page {
        kind,
        path: path.into(),
        content: content.into(),
        content_type: ct,
    }
}

fn answer(set: &RuleSet, host: &str, uri: &str) -> Option<(u16, String)> {
    set.lookup(host, uri).map(hit_answer)
}

fn hit_answer(h: Hit<'_>) -> (u16, String) {
    match h {
        Hit::Page { content, .. } => (200, String::from_utf8_lossy(content).into_owned()),
        Hit::Redirect { status, location } => (status.code(), location.into_owned()),
    }
}

/// Both the compiled set and the reference give `want`.
fn check(redirects: &[Redirect], pages: &[Page], host: &str, uri: &str, want: Option<(u16, &str)>) {
    let set = RuleSet::build(redirects.to_vec(), pages.to_vec());
    let want = want.map(|(s, l)| (s, l.to_string()));
    assert_eq!(answer(&set, host, uri), want, "compiled: {host}{uri}");
    assert_eq!(
        naive_lookup(redirects, pages, host, uri),
        want,
        "reference: {host}{uri}"
    );
}

#[test]
fn a_rule_set_is_shareable() {
    fn shareable<T: Send + Sync + 'static>() {}
    shareable::<RuleSet>();
}

#[test]
fn literal_prefixes_as_flecto_reads_them() {
    for (pattern, prefix) in [
        // Flecto's own examples.
        ("/product/item", "/product/item"),
        ("^/product/item", "/product/item"),
        ("/product/[0-9]+", "/product/"),
        ("[a-z]+/item", ""),
        ("/user/([0-9]+)/profile", "/user/"),
        ("", ""),
        (".*", ""),
        ("[invalid(regex", ""),
        ("/api/v1/users/[0-9]+/posts", "/api/v1/users/"),
        ("/path/(a|b)/end", "/path/"),
        ("abc", "abc"),
        // The facts sheet's.
        ("^/blog/(\\d+)/(.*)$", "/blog/"),
        ("old/(.*)", "old/"),
        ("example\\.com/x/(.*)", "example.com/x/"),
        (".*\\.php$", ""),
        ("(?i)^/legacy/(.*)$", ""),
        // Only one `^` is removed; other anchors stop the prefix.
        ("^^/x", ""),
        ("\\A/x", ""),
        ("/x$", "/x"),
        ("/x\\b", "/x"),
        // A repeated character is not part of it, whatever the repetition.
        ("^/ab?c", "/a"),
        ("^/ab*c", "/a"),
        ("^/ab+c", "/a"),
        ("^/ab{2,}c", "/a"),
        ("^/ab{2}c", "/a"),
        ("^/(ab)+c", "/"),
        // Capture groups: their prefix, and reading goes on after them.
        ("^(/a)/b", "/a/b"),
        ("^(/a(/b))/c", "/a/b/c"),
        ("^(/a.*)/b", "/a/b"),
        ("^(.*)/b", ""),
        ("^()/b", ""),
        ("^(?P<x>/a)/b", "/a/b"),
        // Non-capturing groups are transparent; an empty one stops.
        ("^/x(?:ab)c", "/xabc"),
        ("^/x(?:ab.)c", "/xab"),
        ("^/a(?:)/b", "/a"),
        // One-character classes are literals; other classes stop.
        ("[/]x", "/x"),
        ("^/[a]b", "/ab"),
        ("^/[ab]", "/"),
        ("^/\\d", "/"),
        ("^/.x", "/"),
        // Case-insensitive letters are read as their smallest folded form.
        ("(?i)/old/(.*)", "/OLD/"),
        ("^(?i)/a", "/A"),
        ("^/a(?i)b", "/aB"),
        ("^/a(?i:b)c", "/aBc"),
        ("[Aa]b", "Ab"),
        ("[Kk]x", ""),
        // Alternatives: the text they all start with.
        ("/a|/b", "/"),
        ("^/ab|/ac", "/a"),
        ("^/abc|/abd|/x", "/"),
        ("/ab|/ab", "/ab"),
        ("/a|x", ""),
        ("^(/a|/b)x", "/x"),
        ("^/x(?:/a|/b)c", "/x/"),
        ("a|a", "a"),
        ("a|b", ""),
        // Escapes.
        ("^/a\\.b\\-c", "/a.b-c"),
        ("^/\\x41", "/A"),
        ("^/é(.*)", "/é"),
    ] {
        assert_eq!(literal_prefix(pattern), prefix, "{pattern}");
    }
}

#[test]
fn the_facts_sheet_cases() {
    use RedirectType::*;
    let found = RedirectStatus::Found;
    // An unanchored pattern with a literal head behaves as anchored.
    check(&[rx("old/(.*)", "/new/$1")], &[], "h", "/old/q", None);
    check(
        &[rx("old/(.*)", "/new/$1")],
        &[],
        "h",
        "old/q",
        Some((302, "/new/q")),
    );
    let host = [r(
        RegexHost,
        "example\\.com/x/(.*)",
        "https://n.test/$1",
        found,
    )];
    check(&host, &[], "www.example.com", "/x/1", None);
    check(
        &host,
        &[],
        "example.com",
        "/x/1",
        Some((302, "https://n.test/1")),
    );
    // Longest source first.
    let both = [
        rx("/a/(.*)", "/short/$1"),
        rx("/a/(.*)/(.*)", "/long/$1/$2"),
    ];
    check(&both, &[], "h", "/a/b/c", Some((302, "/long/b/c")));
    check(&both, &[], "h", "/a/b", Some((302, "/short/b")));
    // `$10` is group 1 then `0`; a group that did not take part is empty.
    let t = [rx("^/t/(a)(b)(c)(d)(e)(f)(g)(h)(i)$", "/t/$1-$9-$10-$11")];
    check(&t, &[], "h", "/t/abcdefghi", Some((302, "/t/a-i-a0-a1")));
    check(
        &[rx("^/o/(x)?(y)$", "/o/$1/$2/z")],
        &[],
        "h",
        "/o/y",
        Some((302, "/o//y/z")),
    );
    // The query string is part of the key and is not carried over.
    check(
        &[rx(".*\\.php$", "/php")],
        &[],
        "h",
        "/index.php",
        Some((302, "/php")),
    );
    check(&[rx(".*\\.php$", "/php")], &[], "h", "/index.php?y=1", None);
    let q = [r(Basic, "/q?x=1", "/t", found)];
    check(&q, &[], "h", "/q?x=1", Some((302, "/t")));
    check(&q, &[], "h", "/q?x=2", None);
    check(&q, &[], "h", "/q", None);
    let p = [page(
        PageType::Basic,
        "/robots.txt",
        "r",
        PageContentType::TextPlain,
    )];
    check(&[], &p, "h", "/robots.txt", Some((200, "r")));
    check(&[], &p, "h", "/robots.txt?x=1", None);
    // The port is part of the host.
    let hosted = [r(BasicHost, "example.com/hosted", "https://t.test/", found)];
    check(&hosted, &[], "example.com:8080", "/hosted", None);
    check(
        &hosted,
        &[],
        "example.com",
        "/hosted",
        Some((302, "https://t.test/")),
    );
}

#[test]
fn substitution_beyond_nine_groups_and_missing_groups() {
    // Group 10 fills Flecto's placeholder for 10, `$:`; `$n` past the pattern's
    // groups and `$0` stay as written.
    let ten = rx("^/(a)(b)(c)(d)(e)(f)(g)(h)(i)(j)$", "/$:/$10/$0");
    check(&[ten], &[], "h", "/abcdefghij", Some((302, "/j/a0/$0")));
    check(
        &[rx("^/(a)$", "/$1/$2/$9")],
        &[],
        "h",
        "/a",
        Some((302, "/a/$2/$9")),
    );
    check(&[rx("^/a$", "/x/$1")], &[], "h", "/a", Some((302, "/x/$1")));
    // A group's text holding `$1` is substituted again by the lower numbers.
    check(
        &[rx("^/(.*)/(.*)$", "/$2")],
        &[],
        "h",
        "/v/$1",
        Some((302, "/v")),
    );
}

#[test]
fn trial_order_spans_prefixed_and_prefixless_rules() {
    let rules = [
        rx("^/a/(.*)$", "/prefixed"),
        rx(".*/a/(.*)\\.html$", "/filtered"),
        rx("^(.*)$", "/catch-all"),
        rx("(?i)^/A/(.*)$", "/folded"),
    ];
    // The longest candidate that matches wins, whichever index it came from.
    check(&rules, &[], "h", "/a/x.html", Some((302, "/filtered")));
    check(&rules, &[], "h", "/a/x", Some((302, "/folded")));
    check(&rules, &[], "h", "/b", Some((302, "/catch-all")));
    // Equal lengths: list order.
    let tie = [rx("^/(b)", "/first"), rx("^/(.)", "/second")];
    check(&tie, &[], "h", "/b", Some((302, "/first")));
    let tie = [rx("^/(.)", "/first"), rx("^/(b)", "/second")];
    check(&tie, &[], "h", "/b", Some((302, "/first")));
    // A case-insensitive head is read upper case: only such keys are candidates.
    check(&[rx("(?i)/old/(.*)", "/n/$1")], &[], "h", "/old/x", None);
    check(
        &[rx("(?i)/old/(.*)", "/n/$1")],
        &[],
        "h",
        "/OLD/x",
        Some((302, "/n/x")),
    );
}

#[test]
fn every_type_status_host_and_query_combination() {
    use RedirectType::*;
    let hosts = ["ex.test", "ex.test:8080"];
    for status in RedirectStatus::ALL {
        for kind in RedirectType::ALL {
            for host in hosts {
                for query in ["", "?x=1"] {
                    let path = format!("/p{query}");
                    let key = format!("{host}{path}");
                    let (source, target) = match kind {
                        Basic => (path.clone(), "/t".to_string()),
                        BasicHost => (key.clone(), "https://t.test/".to_string()),
                        Regex => (
                            format!("^{}$", regex_syntax::escape(&path)),
                            "/t".to_string(),
                        ),
                        RegexHost => (
                            format!("^{}$", regex_syntax::escape(&key)),
                            "https://t.test/".to_string(),
                        ),
                    };
                    let rules = [r(kind, &source, &target, status)];
                    let hit = Some((status.code(), target.as_str()));
                    // The key itself matches, with its status.
                    check(&rules, &[], host, &path, hit);
                    // Another query string, or none, does not.
                    let other = if query.is_empty() { "/p?x=1" } else { "/p" };
                    check(&rules, &[], host, other, None);
                    // Host rules are bound to the host as sent, port included; the
                    // others ignore it.
                    let other_host = if host == "ex.test" {
                        "ex.test:8080"
                    } else {
                        "ex.test"
                    };
                    let want = if kind.has_host() { None } else { hit };
                    check(&rules, &[], other_host, &path, want);
                }
            }
        }
    }
    for ct in [PageContentType::TextPlain, PageContentType::Xml] {
        for kind in [PageType::Basic, PageType::BasicHost] {
            for query in ["", "?x=1"] {
                let uri = format!("/s{query}");
                let path = match kind {
                    PageType::Basic => uri.clone(),
                    PageType::BasicHost => format!("ex.test{uri}"),
                };
                let set = RuleSet::build(vec![], vec![page(kind, &path, "body", ct)]);
                match set.lookup("ex.test", &uri) {
                    Some(Hit::Page {
                        content,
                        content_type,
                    }) => {
                        assert_eq!(&content[..], b"body");
                        assert_eq!(content_type, ct);
                    }
                    other => panic!("{kind:?} {uri}: {other:?}"),
                }
                let other = if query.is_empty() { "/s?x=1" } else { "/s" };
                assert!(set.lookup("ex.test", other).is_none());
                assert_eq!(
                    set.lookup("other.test", &uri).is_some(),
                    kind == PageType::Basic
                );
            }
        }
    }
}

#[test]
fn the_order_between_types() {
    use RedirectType::*;
    let found = RedirectStatus::Found;
    let pages = [
        page(
            PageType::BasicHost,
            "h/x",
            "host page",
            PageContentType::TextPlain,
        ),
        page(PageType::Basic, "/x", "page", PageContentType::TextPlain),
        page(PageType::Basic, "/y", "page y", PageContentType::TextPlain),
        page(PageType::Basic, "/p", "page p", PageContentType::TextPlain),
        page(
            PageType::Basic,
            "/collide",
            "page c",
            PageContentType::TextPlain,
        ),
    ];
    let redirects = [
        rx("^/[a-o]", "/regex"),
        r(RegexHost, "^h/[a-o]", "https://t/regex-host", found),
        r(Basic, "/x", "/basic", found),
        r(Basic, "/z", "/basic-z", found),
        r(BasicHost, "h/x", "https://t/basic-host", found),
        r(BasicHost, "h/y", "https://t/basic-host-y", found),
        r(BasicHost, "h/z", "https://t/basic-host-z", found),
    ];
    // Redirects before pages (BASIC_HOST, BASIC, REGEX_HOST, REGEX), as Flecto's
    // Traefik middleware answers.
    check(
        &redirects,
        &pages,
        "h",
        "/x",
        Some((302, "https://t/basic-host")),
    );
    check(&redirects, &pages, "g", "/x", Some((302, "/basic")));
    check(
        &redirects,
        &pages,
        "h",
        "/y",
        Some((302, "https://t/basic-host-y")),
    );
    check(&redirects, &pages, "g", "/y", Some((200, "page y")));
    check(
        &redirects,
        &pages,
        "h",
        "/z",
        Some((302, "https://t/basic-host-z")),
    );
    check(&redirects, &pages, "g", "/z", Some((302, "/basic-z")));
    check(
        &redirects,
        &pages,
        "h",
        "/collide",
        Some((302, "https://t/regex-host")),
    );
    check(&redirects, &pages, "g", "/collide", Some((302, "/regex")));
    check(&redirects, &pages, "g", "/p", Some((200, "page p")));
    // Pages answer when no redirect matches; the host page first.
    let plain = [r(Basic, "/other", "/o", found)];
    check(&plain, &pages, "h", "/x", Some((200, "host page")));
    check(&plain, &pages, "g", "/x", Some((200, "page")));
    check(&plain, &pages, "g", "/other", Some((302, "/o")));
}

#[test]
fn locations_are_percent_encoded_where_a_uri_needs_it() {
    use crate::redirects::encode_location;
    assert!(matches!(
        encode_location("/a/b?c=d&e=%2F#f"),
        std::borrow::Cow::Borrowed(_)
    ));
    assert_eq!(encode_location("/café"), "/caf%C3%A9");
    assert_eq!(encode_location("/a b"), "/a%20b");
    assert_eq!(encode_location("/50%"), "/50%25");
    assert_eq!(encode_location("/%zz%41"), "/%25zz%41");
    assert_eq!(
        encode_location("https://ex.test/ü?q=\"x\"|{}"),
        "https://ex.test/%C3%BC?q=%22x%22%7C%7B%7D"
    );
    let found = RedirectStatus::Found;
    let redirects = [
        r(RedirectType::Basic, "/old", "/naïve", found),
        rx("^/r/(.*)$", "/ré/$1"),
    ];
    check(&redirects, &[], "h", "/old", Some((302, "/na%C3%AFve")));
    check(
        &redirects,
        &[],
        "h",
        "/r/x%20y",
        Some((302, "/r%C3%A9/x%20y")),
    );
}

#[test]
fn a_host_with_a_slash_or_a_uri_without_one_is_the_plain_concatenation() {
    let found = RedirectStatus::Found;
    let rules = [
        r(RedirectType::BasicHost, "a/b/c", "https://x.test/1", found),
        r(
            RedirectType::BasicHost,
            "a.test*",
            "https://x.test/2",
            found,
        ),
        r(
            RedirectType::BasicHost,
            "a.testhttp://b/c",
            "https://x.test/3",
            found,
        ),
    ];
    check(&rules, &[], "a/b", "/c", Some((302, "https://x.test/1")));
    check(&rules, &[], "a", "/b/c", Some((302, "https://x.test/1")));
    check(&rules, &[], "a/b/c", "", Some((302, "https://x.test/1")));
    check(&rules, &[], "a/b", "/d", None);
    check(&rules, &[], "a.test", "*", Some((302, "https://x.test/2")));
    check(
        &rules,
        &[],
        "a.test",
        "http://b/c",
        Some((302, "https://x.test/3")),
    );
    check(&rules, &[], "", "a.test*", Some((302, "https://x.test/2")));
}

#[test]
fn bad_regexes_are_skipped_and_later_duplicates_win() {
    let found = RedirectStatus::Found;
    let set = RuleSet::build(
        vec![
            rx("^/a/(", "/x"),
            r(RedirectType::Basic, "/d", "/first", found),
            r(RedirectType::Basic, "/d", "/second", found),
            r(RedirectType::RegexHost, "[z-a]", "/x", found),
            r(RedirectType::BasicHost, "h/d", "https://t/first", found),
            r(RedirectType::BasicHost, "h/d", "https://t/second", found),
            rx("^/a\\pL", "/x"),
            rx("^/a[é]", "/x"),
        ],
        vec![
            page(PageType::Basic, "/p", "first", PageContentType::TextPlain),
            page(PageType::Basic, "/p", "second", PageContentType::TextPlain),
        ],
    );
    let skipped: Vec<(usize, &str)> = set.skipped().iter().map(|s| (s.index, s.kind)).collect();
    assert_eq!(
        skipped,
        [
            (0, "redirect"),
            (3, "redirect"),
            (6, "redirect"),
            (7, "redirect")
        ]
    );
    for s in set.skipped() {
        assert!(s.message.starts_with("is not a valid regex"), "{s:?}");
    }
    assert!(
        set.skipped()[0].message.starts_with("is not a valid regex"),
        "{:?}",
        set.skipped()
    );
    assert_eq!(set.redirect_count(), 4);
    assert_eq!(set.page_count(), 2);
    assert_eq!(answer(&set, "g", "/d"), Some((302, "/second".into())));
    assert_eq!(
        answer(&set, "h", "/d"),
        Some((302, "https://t/second".into()))
    );
    assert_eq!(answer(&set, "h", "/p"), Some((200, "second".into())));
    assert!(RuleSet::empty().lookup("h", "/").is_none());
}

#[test]
fn regexes_compile_on_first_use_and_prefixless_ones_are_filtered() {
    let set = RuleSet::build(
        vec![
            rx("^/blog/(\\d+)$", "/b/$1"),
            rx(".*/file\\.php$", "/php"),
            rx("(?i)^/legacy/(.*)$", "/l/$1"),
            rx("^(.*)\\.HTM$", "/htm/$1"),
        ],
        vec![],
    );
    assert_eq!(set.compiled_regexes(), (0, 4));
    // No prefix matches and no required text occurs: nothing is compiled.
    assert_eq!(answer(&set, "h", "/other"), None);
    assert_eq!(set.compiled_regexes(), (0, 4));
    assert_eq!(answer(&set, "h", "/LeGaCy/x"), Some((302, "/l/x".into())));
    assert_eq!(set.compiled_regexes(), (1, 4));
    // The required text is found ignoring case, then the regex decides.
    assert_eq!(answer(&set, "h", "/a/FILE.PHP"), None);
    assert_eq!(answer(&set, "h", "/a/file.php"), Some((302, "/php".into())));
    assert_eq!(answer(&set, "h", "/x.HTM"), Some((302, "/htm//x".into())));
    assert_eq!(answer(&set, "h", "/blog/12"), Some((302, "/b/12".into())));
    assert_eq!(set.compiled_regexes(), (4, 4));
}

#[test]
fn long_keys_fall_back_to_the_pikevm() {
    let long = format!("/long/{}", "x".repeat(300_000));
    check(
        &[rx("^/long/(x*)$", "/l")],
        &[],
        "h",
        &long,
        Some((302, "/l")),
    );
    check(&[rx("^/long/(x*)y$", "/l")], &[], "h", &long, None);
}

#[test]
fn a_regex_that_is_too_large_never_matches() {
    let huge = "^/a(?:\\w{1000}){30}$";
    assert!(crate::redirects::compile_regex(huge).is_err());
    check(
        &[rx(huge, "/x"), rx("^/a(.*)", "/y")],
        &[],
        "h",
        "/abc",
        Some((302, "/y")),
    );
}

#[test]
fn sets_are_usable_from_many_threads() {
    let set = std::sync::Arc::new(RuleSet::build(
        (0..50)
            .map(|i| rx(&format!("^/r{i}/(\\d+)$"), &format!("/t{i}/$1")))
            .collect(),
        vec![],
    ));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let set = set.clone();
            std::thread::spawn(move || {
                for i in 0..50 {
                    let got = answer(&set, "h", &format!("/r{i}/{t}"));
                    assert_eq!(got, Some((302, format!("/t{i}/{t}"))));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("no panic");
    }
}

fn arb_rules() -> impl Strategy<Value = Vec<Redirect>> {
    let seg = prop::sample::select(vec!["a", "b", "ab", "x.y", "1", "q?x=1", "?z", "A"]);
    let kind = prop::sample::select(RedirectType::ALL.to_vec());
    let status = prop::sample::select(RedirectStatus::ALL.to_vec());
    let pattern = prop::sample::select(vec![
        "^/a/(.*)$",
        "/a/(.*)",
        "^/(a|b)/(.*)",
        ".*b$",
        "(?i)^/A(.*)",
        "(?i)/a(.*)",
        "^/ab?(.*)",
        "a",
        "^/x\\.y",
        "h/a(.*)",
        "^h(:1)?/(.*)$",
        "(.*)/b",
        "^(/a)(.*)",
        "^/[a]b(.*)",
        "/a|/b",
        ".*\\?z",
        "^(.*)$",
        "^/(a)(b)?",
        "^/(",
        "h/(.*)",
    ]);
    prop::collection::vec(
        (
            kind,
            prop::collection::vec(seg, 1..3),
            pattern,
            status,
            0u8..4,
        ),
        0..24,
    )
    .prop_map(|v| {
        v.into_iter()
            .map(|(kind, segs, pattern, status, t)| {
                let path = format!("/{}", segs.join("/"));
                let source = match kind {
                    RedirectType::Basic => path,
                    RedirectType::BasicHost => format!("h{path}"),
                    _ => pattern.to_string(),
                };
                let target = ["/t/$1", "/fixed", "/$2-$1", "/$3$0"][t as usize].to_string();
                Redirect {
                    kind,
                    source,
                    target,
                    status,
                }
            })
            .collect()
    })
}

fn arb_pages() -> impl Strategy<Value = Vec<Page>> {
    let path = prop::sample::select(vec!["/a", "/a?q=1", "h/a", "h:1/a", "h/b/a", "/b"]);
    prop::collection::vec((path, prop::bool::ANY), 0..4).prop_map(|v| {
        v.into_iter()
            .enumerate()
            .map(|(i, (path, host))| Page {
                kind: if host {
                    PageType::BasicHost
                } else {
                    PageType::Basic
                },
                path: path.to_string(),
                content: format!("page {i}"),
                content_type: PageContentType::TextPlain,
            })
            .collect()
    })
}

proptest! {
    #[test]
    fn compiled_matching_equals_the_reference(
        redirects in arb_rules(),
        pages in arb_pages(),
        host in prop::sample::select(vec!["h", "h:1", "x", "h/a", "h/b", "", "H"]),
        uri in "/[abxyA./?=1z]{0,8}|[ab*]{0,2}",
    ) {
        let set = RuleSet::build(redirects.clone(), pages.clone());
        prop_assert_eq!(answer(&set, host, &uri), naive_lookup(&redirects, &pages, host, &uri));
    }

    /// The rule a lookup reports is the one whose answer it returns: the reference
    /// names the same rule, that rule alone gives the same answer, and its hit is
    /// counted on it and nowhere else.
    #[test]
    fn the_rule_reported_is_the_one_that_answers(
        redirects in arb_rules(),
        pages in arb_pages(),
        host in prop::sample::select(vec!["h", "h:1", "x", "h/a", "h/b", "", "H"]),
        uri in "/[abxyA./?=1z]{0,8}|[ab*]{0,2}",
    ) {
        let set = RuleSet::build(redirects.clone(), pages.clone());
        let got = set.lookup_rule(host, &uri).map(|(rule, hit)| {
            let (status, text) = hit_answer(hit);
            (rule, status, text)
        });
        prop_assert_eq!(&got, &naive_lookup_rule(&redirects, &pages, host, &uri));
        let Some((rule, status, text)) = got else {
            prop_assert_eq!(set.redirect_hits().iter().sum::<u64>(), 0);
            return Ok(());
        };
        let alone = match rule {
            RuleRef::Redirect(i) => RuleSet::build(vec![redirects[i].clone()], vec![]),
            RuleRef::Page(i) => RuleSet::build(vec![], vec![pages[i].clone()]),
        };
        prop_assert_eq!(answer(&alone, host, &uri), Some((status, text)));
        set.count_hit(rule);
        set.count_hit(rule);
        let mut want_redirects = vec![0; redirects.len()];
        let mut want_pages = vec![0; pages.len()];
        match rule {
            RuleRef::Redirect(i) => want_redirects[i] = 2,
            RuleRef::Page(i) => want_pages[i] = 2,
        }
        prop_assert_eq!(set.redirect_hits(), want_redirects);
        prop_assert_eq!(set.page_hits(), want_pages);
    }

    #[test]
    fn building_and_matching_anything_equals_the_reference(
        sources in prop::collection::vec("\\PC{0,12}", 0..8),
        host in "\\PC{0,6}",
        uri in "\\PC{0,12}",
    ) {
        let redirects = sources
            .iter()
            .enumerate()
            .map(|(i, s)| Redirect {
                kind: RedirectType::ALL[i % 4],
                source: s.clone(),
                target: "/t/$1".into(),
                status: RedirectStatus::Found,
            })
            .collect::<Vec<_>>();
        let set = RuleSet::build(redirects.clone(), vec![]);
        prop_assert_eq!(answer(&set, &host, &uri), naive_lookup(&redirects, &[], &host, &uri));
    }
}
