use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::compose::tests::{assert_positions_in_range, yamlish};
use crate::spec::{AppProtocol, MetaPositions, Position, RolloutMeta, Strategy};

fn ok(text: &str) -> ServiceMeta {
    parse(text).unwrap_or_else(|p| panic!("unexpected problems: {p:#?}"))
}

fn one(text: &str) -> Problem {
    let p = parse(text).expect_err("expected problems");
    assert_eq!(p.len(), 1, "expected one problem: {p:#?}");
    p.into_iter().next().expect("one")
}

#[track_caller]
fn assert_at(p: &Problem, line: usize, column: usize, field: &str, message: &str) {
    assert_eq!(p.file, "service.yml", "{p:#?}");
    assert_eq!((p.line, p.column), (line, column), "{p:#?}");
    assert_eq!(p.field, field, "{p:#?}");
    assert!(
        p.message.contains(message),
        "message {:?} lacks {message:?}",
        p.message
    );
}

fn at(line: usize, column: usize) -> Option<Position> {
    Some(Position { line, column })
}

#[test]
fn an_empty_file_is_an_app_without_domains() {
    assert_eq!(ok(""), ServiceMeta::default());
    assert_eq!(ok("# nothing yet\n"), ServiceMeta::default());
}

#[test]
fn every_key() {
    let meta = ok("service: web\nport: 8080\ndomains:\n  - Example.COM\n  - '*.example.com'\n  - localhost\nssl:\n  enabled: true\n  email: ops@example.com\nhealthcheck:\n  path: /health\n  interval: 30s\n  timeout: 2s\n  expected_status: 204\nrate_limit:\n  requests: 100\n  window: 1m\ndriver: process\ndeploy:\n  strategy: blue-green\n  health_timeout: 10s\n  drain_timeout: 2m\n");
    assert_eq!(
        meta,
        ServiceMeta {
            service: Some("web".into()),
            port: Some(8080),
            domains: vec![
                "example.com".into(),
                "*.example.com".into(),
                "localhost".into()
            ],
            protocol: AppProtocol::Http,
            ssl: SslMeta {
                enabled: true,
                email: Some("ops@example.com".into()),
            },
            healthcheck: Some(HttpCheck {
                path: "/health".into(),
                interval: Duration::from_secs(30),
                timeout: Duration::from_secs(2),
                expected_status: Some(204),
            }),
            rate_limit: Some(RateLimitMeta {
                requests: 100,
                window: Duration::from_secs(60),
            }),
            driver: DriverKind::Process,
            rollout: RolloutMeta {
                strategy: Strategy::BlueGreen,
                health_timeout: Duration::from_secs(10),
                drain_timeout: Duration::from_secs(120),
            },
            positions: MetaPositions {
                service: at(1, 10),
                port: at(2, 7),
                domains: at(3, 1),
                driver: at(18, 9),
                networking_domain: None,
                container_port: None,
            },
        }
    );
}

#[test]
fn short_forms_and_defaults() {
    let meta = ok("domains: [app.example.org]\nssl: true\nhealthcheck:\n  path: /\n");
    assert_eq!(
        meta.ssl,
        SslMeta {
            enabled: true,
            email: None
        }
    );
    assert_eq!(
        meta.healthcheck,
        Some(HttpCheck {
            path: "/".into(),
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(5),
            expected_status: None,
        })
    );
    assert_eq!(meta.driver, DriverKind::Auto);
    assert_eq!(ok("ssl: false\n").ssl, SslMeta::default());
}

#[test]
fn domains_are_checked_as_host_names() {
    let cases = [
        ("https://example.com", "has a scheme"),
        ("example.com:8080", "has a port"),
        ("example.com/x", "has a path"),
        ("example", "needs a dot"),
        ("-a.example.com", "starting or ending with `-`"),
        ("a_b.example.com", "holds `_`"),
        ("a..example.com", "label of 0 characters"),
        ("a.*.example.com", "wildcard is allowed only"),
        ("example.com.", "ends with a dot"),
        ("10.0.0.1", "looks like an IP address"),
    ];
    for (domain, message) in cases {
        let p = one(&format!("domains:\n  - {domain}\n"));
        assert_at(&p, 2, 5, "domains[0]", message);
    }
    let long_label = format!("{}.com", "a".repeat(64));
    assert!(super::domain(&long_label)
        .expect_err("an error")
        .contains("label of 64 characters"));
    let long_name = format!("{}com", "abcdefghi.".repeat(26));
    assert!(super::domain(&long_name)
        .expect_err("an error")
        .contains("at most 253"));
    assert_eq!(
        super::domain(" WWW.Example.com "),
        Ok("www.example.com".into())
    );

    let p = one("domains:\n  - example.com\n  - EXAMPLE.com\n");
    assert_at(&p, 3, 5, "domains[1]", "listed twice");
    let p = one("domains: example.com\n");
    assert_at(&p, 1, 10, "domains", "must be a list");
}

#[test]
fn bad_values_are_placed_exactly() {
    let p = parse(
        "service: [web]\nport: 70000\nssl:\n  email: nobody\n  enabled: yes\nhealthcheck:\n  path: health\n  expected_status: 700\nrate_limit:\n  requests: 0\n  window: 500ms\ndriver: kubernetes\ncolor: blue\n",
    )
    .expect_err("problems");
    assert_eq!(p.len(), 11, "{p:#?}");
    assert_at(&p[0], 1, 10, "service", "found a list");
    assert_at(&p[1], 2, 7, "port", "70000 is out of range");
    assert_at(&p[2], 3, 1, "ssl", "no domains are given");
    let p = &p[1..];
    assert_at(&p[2], 4, 10, "ssl.email", "not an email address");
    assert_at(
        &p[3],
        5,
        12,
        "ssl.enabled",
        "expected true or false, found `yes`",
    );
    assert_at(&p[4], 7, 9, "healthcheck.path", "must start with `/`");
    assert_at(
        &p[5],
        8,
        20,
        "healthcheck.expected_status",
        "from 100 to 599",
    );
    assert_at(&p[6], 10, 13, "rate_limit.requests", "out of range");
    assert_at(&p[7], 11, 11, "rate_limit.window", "at least 1s");
    assert_at(&p[8], 12, 9, "driver", "unknown driver `kubernetes`");
    assert_at(&p[9], 13, 1, "color", "unknown key `color` in service.yml");
}

#[test]
fn incomplete_sections_are_named() {
    let p = one("rate_limit:\n  requests: 10\n");
    assert_at(&p, 2, 3, "rate_limit", "needs window");
    let p = one("healthcheck:\n  interval: 5s\n");
    assert_at(&p, 2, 3, "healthcheck", "needs path");
    let p = one("ssl: true\n");
    assert_at(&p, 1, 1, "ssl", "no domains are given");
    let p = one("healthcheck:\n  path: /x\n  timeout: 0s\n");
    assert_at(&p, 3, 12, "healthcheck.timeout", "longer than 0s");
}

#[test]
fn yaml_errors_become_problems() {
    let p = one("port: 80\nport: 81\n");
    assert_at(&p, 2, 1, "", "the key `port` appears twice");
    let p = one("[a, b]\n");
    assert_at(&p, 1, 1, "", "top level");
    let p = one("service: &s web\n");
    assert_at(&p, 1, 10, "", "anchors and aliases");
}

/// `networking:` as FlatRun writes it (every key, unset ones empty).
const FLATRUN: &str = "networking:\n    expose: true\n    domain: App.Example.com\n    container_port: 80\n    protocol: http\n    proxy_type: \"\"\n";

#[test]
fn flatrun_networking_gives_the_domain_and_port() {
    let meta = ok(FLATRUN);
    assert_eq!(meta.domains, ["app.example.com"]);
    assert_eq!(meta.port, Some(80));
    assert_eq!(meta.protocol, AppProtocol::Http);
    assert_eq!(meta.positions.networking_domain, at(3, 13));
    assert_eq!(meta.positions.container_port, at(4, 21));
    assert_eq!(meta.positions.domains, None);
    assert_eq!(meta.positions.port, None);

    // The rest of the file as Fleetgate writes it.
    let meta = ok(&format!(
        "service: web\n{FLATRUN}ssl: true\nhealthcheck:\n  path: /\n"
    ));
    assert_eq!(meta.service.as_deref(), Some("web"));
    assert!(meta.ssl.enabled);
    assert_eq!(meta.domains, ["app.example.com"]);
}

#[test]
fn unset_networking_fields_are_left_out() {
    // What FlatRun writes for an app without a route.
    let meta = ok("networking:\n    expose: false\n    domain: \"\"\n    container_port: 0\n    protocol: \"\"\n    proxy_type: \"\"\n");
    assert_eq!(meta, ServiceMeta::default());
    let meta = ok("networking:\n  domain: ~\n  protocol:\n");
    assert_eq!(meta, ServiceMeta::default());
    // No `expose` with a domain: routed (FlatRun always writes `expose`).
    assert_eq!(
        ok("networking:\n  domain: a.example.com\n").domains,
        ["a.example.com"]
    );
}

#[test]
fn expose_false_means_no_route() {
    let meta =
        ok("networking:\n  expose: false\n  domain: a.example.com\n  container_port: 8080\n");
    assert!(meta.domains.is_empty(), "{meta:?}");
    assert_eq!(meta.positions.networking_domain, None);
    // The port stays: it is the app's, routed or not.
    assert_eq!(meta.port, Some(8080));
    let p = one("networking:\n  expose: false\n  domain: a.example.com\nssl: true\n");
    assert_at(&p, 4, 1, "ssl", "networking.expose is false");
}

#[test]
fn https_apps_are_reached_over_tls() {
    let meta =
        ok("networking:\n  domain: a.example.com\n  container_port: 8443\n  protocol: https\n");
    assert_eq!(meta.protocol, AppProtocol::Https);
    assert_eq!(AppProtocol::Https.scheme(), "https");
    assert_eq!(ok("").protocol.scheme(), "http");
}

#[test]
fn networking_conflicts_with_our_own_keys_are_named() {
    let p = one("domains: [a.example.com]\nnetworking:\n  domain: b.example.com\n");
    assert_at(
        &p,
        3,
        11,
        "networking.domain",
        "both `domains` and `networking.domain` are given",
    );
    let p = one("networking:\n  container_port: 80\nport: 8080\n");
    assert_at(
        &p,
        2,
        19,
        "networking.container_port",
        "both `port` and `networking.container_port` are given",
    );
    let p = one("domains: [a.example.com]\nnetworking:\n  expose: false\n");
    assert_at(
        &p,
        3,
        11,
        "networking.expose",
        "networking.expose is false (no route), but `domains` are given",
    );
    // Unset FlatRun fields conflict with nothing.
    let meta = ok("domains: [a.example.com]\nport: 8080\nnetworking:\n  expose: true\n  domain: \"\"\n  container_port: 0\n");
    assert_eq!(meta.domains, ["a.example.com"]);
    assert_eq!(meta.port, Some(8080));
    assert_eq!(meta.positions.container_port, None);
}

#[test]
fn bad_networking_values_are_placed_exactly() {
    let p = one("networking: [a]\n");
    assert_at(&p, 1, 13, "networking", "must be a mapping");
    let p = parse(
        "networking:\n  expose: \"yes\"\n  domain: https://a.example.com\n  container_port: 70000\n  protocol: tcp\n  proxy_type: [nginx]\n  tls: true\n",
    )
    .expect_err("problems");
    assert_eq!(p.len(), 6, "{p:#?}");
    assert_at(&p[0], 2, 11, "networking.expose", "expected true or false");
    assert_at(&p[1], 3, 11, "networking.domain", "has a scheme");
    assert_at(
        &p[2],
        4,
        19,
        "networking.container_port",
        "70000 is out of range",
    );
    assert_at(
        &p[3],
        5,
        13,
        "networking.protocol",
        "unknown protocol `tcp`",
    );
    assert_at(&p[4], 6, 15, "networking.proxy_type", "found a list");
    assert_at(&p[5], 7, 3, "networking", "unknown key `tls` in networking");
    let p = one("networking:\n  container_port: [80]\n");
    assert_at(&p, 2, 19, "networking.container_port", "found a list");
    let p = one("networking:\n  domain: {a: b}\n");
    assert_at(&p, 2, 12, "networking.domain", "found a mapping");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,200}|[ \\-:\n\\[\\]{}'\"a0#&*!|>]{0,120}") {
        if let Err(p) = parse(&text) {
            assert_positions_in_range(&text, &p);
        }
    }

    /// Every mix of FlatRun's `networking` fields (set, unset as FlatRun
    /// writes them, or left out) and Fleetgate's own keys: a conflict is
    /// always refused, and what is accepted routes exactly the domain given
    /// unless `expose` is false.
    #[test]
    fn networking_and_our_keys_agree(
        expose in prop::sample::select(vec!["", "  expose: true\n", "  expose: false\n"]),
        domain in prop::sample::select(vec!["", "  domain: \"\"\n", "  domain: N.example.com\n"]),
        port in prop::sample::select(vec!["", "  container_port: 0\n", "  container_port: 80\n"]),
        protocol in prop::sample::select(vec!["", "  protocol: \"\"\n", "  protocol: https\n"]),
        domains in any::<bool>(),
        own_port in any::<bool>(),
    ) {
        let mut text = format!("networking:\n{expose}{domain}{port}{protocol}  proxy_type: \"\"\n");
        if domains {
            text.push_str("domains: [d.example.com]\n");
        }
        if own_port {
            text.push_str("port: 8080\n");
        }
        let net_domain = domain.contains("N.example");
        let net_port = port.contains("80");
        let unexposed = expose.contains("false");
        let conflict = (domains && net_domain) || (own_port && net_port) || (domains && unexposed);
        match parse(&text) {
            Ok(meta) => {
                prop_assert!(!conflict, "accepted a conflict: {text}");
                let want: Vec<String> = match (unexposed, domains, net_domain) {
                    (true, _, _) => vec![],
                    (false, true, _) => vec!["d.example.com".into()],
                    (false, false, true) => vec!["n.example.com".into()],
                    (false, false, false) => vec![],
                };
                prop_assert_eq!(&meta.domains, &want, "{}", text);
                let port = match (own_port, net_port) {
                    (true, _) => Some(8080),
                    (false, true) => Some(80),
                    (false, false) => None,
                };
                prop_assert_eq!(meta.port, port, "{}", text);
                let https = protocol.contains("https");
                prop_assert_eq!(meta.protocol == AppProtocol::Https, https);
            }
            Err(p) => {
                prop_assert!(conflict, "refused {text}: {p:#?}");
                assert_positions_in_range(&text, &p);
                for p in &p {
                    prop_assert!(p.field.starts_with("networking."), "{p:#?}");
                }
            }
        }
    }

    #[test]
    fn yaml_shaped_text_never_panics(text in yamlish()) {
        if let Err(p) = parse(&text) {
            assert_positions_in_range(&text, &p);
        }
    }
}

#[test]
fn deploy_problems_name_the_field() {
    let problems = parse(
        "deploy:\n  strategy: rolling\n  drain_timeout: 0s\n  health_timeout: 2h\n  surge: 2\n",
    )
    .expect_err("problems");
    let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "deploy.strategy",
            "deploy.drain_timeout",
            "deploy.health_timeout",
            "deploy"
        ],
        "{problems:?}"
    );
    assert_eq!(problems[0].line, 2);
    assert!(problems[0].message.contains("blue-green"), "{problems:?}");
    assert_eq!(problems[3].line, 5);
    assert!(problems[3].message.contains("surge"), "{problems:?}");
}
