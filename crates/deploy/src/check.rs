//! What `service.yml` says that only makes sense against `compose.yml`: the
//! service it names exists, its domains have a port to route to, and the driver
//! it asks for can run the services. [`parse_files`] checks both files and then
//! these, in one call.
//!
//! Where the gateway sends a deployment's traffic ([`target_port`]): it always
//! connects to `127.0.0.1`, so the port must be one the routed service is
//! reached at on this host.
//!
//! - `port:` (or `networking.container_port:`) is the port the app listens
//!   on. When the service runs from an image off the host's network and
//!   publishes that container port (`ports: ["8080:80"]` for `port: 80`),
//!   traffic goes to the host port it is published on. A port that is one of
//!   the service's published host ports (`port: 8080` there) is taken as it
//!   is, as is any port of a service that only runs as processes or on
//!   `network_mode: host` (they listen on the host; `ports` mean nothing
//!   there).
//! - Without `port:`, traffic goes to the first host port the service
//!   publishes over TCP.
//!
//! With domains, the cross-check refuses a route that could not work: the
//! routed port published only without a host port (`"80"`,
//! `"127.0.0.1::80"` — the engine would pick another one at every start, and
//! the route, written from the files, could not follow it; publish a fixed
//! one), published only on an address other than `127.0.0.1` or every
//! address (the gateway would not reach it), or, on a deployment that runs on
//! Docker whatever the engine does, not published at all by a service on a
//! network of its own (the port is inside the container).

use std::net::IpAddr;

use crate::spec::{
    ComposeFile, DriverKind, PortMapping, PortProtocol, Position, Problem, ServiceMeta, ServiceSpec,
};
use crate::{compose, meta};

/// Problems (all in `service.yml`) of `meta` against `compose`, sorted by line.
pub fn cross_check(compose: &ComposeFile, meta: &ServiceMeta) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut push = |at: Option<Position>, field: &str, message: String| {
        let at = at.unwrap_or_default();
        problems.push(Problem {
            file: meta::FILE.to_string(),
            line: at.line,
            column: at.column,
            field: field.to_string(),
            message,
        });
    };
    let names = || {
        compose
            .services
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };

    let target: Option<&ServiceSpec> = match &meta.service {
        Some(name) => {
            let found = compose.service(name);
            if found.is_none() {
                push(
                    meta.positions.service,
                    "service",
                    format!(
                        "`{name}` is not a service of compose.yml; its services are: {}",
                        names()
                    ),
                );
            }
            found
        }
        None => default_service(compose),
    };

    // The key that asked for the route, and the one that named its port.
    let (domains_at, domains_field) = match meta.positions.networking_domain {
        Some(at) => (Some(at), "networking.domain"),
        None => (meta.positions.domains, "domains"),
    };
    let (port_at, port_field) = match meta.positions.container_port {
        Some(at) => (Some(at), "networking.container_port"),
        None => (meta.positions.port, "port"),
    };
    let (asked_at, asked_field) = if meta.port.is_some() {
        (port_at, port_field)
    } else {
        (domains_at, domains_field)
    };
    if !meta.domains.is_empty() {
        match (resolve(compose, meta), target, &meta.service) {
            (Resolved::Listening(port), Some(s), _) => {
                if s.image.is_some() && runs_in_docker(compose, meta) && !on_host_network(s) {
                    push(
                        port_at,
                        port_field,
                        format!(
                            "service {} runs in Docker on a network of its own, where port \
                             {port} is inside its container and the gateway does not reach it; \
                             publish it in compose.yml (ports: [\"127.0.0.1:8080:{port}\"]) or \
                             give the service network_mode: host",
                            s.name
                        ),
                    );
                }
            }
            (Resolved::Port(_) | Resolved::Listening(_), _, _) => {}
            (
                Resolved::NoHostPort {
                    service,
                    index,
                    port,
                },
                _,
                _,
            ) => push(
                asked_at,
                asked_field,
                format!(
                    "service {} publishes port {port} without a host port \
                     (services.{}.ports[{index}] in compose.yml): the engine picks another one \
                     at every start, and the gateway needs a fixed one to route to; publish it \
                     as \"127.0.0.1:8080:{port}\" (a free port of this host)",
                    service.name, service.name
                ),
            ),
            (
                Resolved::Unreachable {
                    service,
                    index,
                    port,
                    ip,
                },
                _,
                _,
            ) => push(
                asked_at,
                asked_field,
                format!(
                    "service {} publishes port {port} on {ip} only \
                     (services.{}.ports[{index}] in compose.yml), and the gateway connects to \
                     127.0.0.1; publish it on 127.0.0.1 (\"127.0.0.1:8080:{port}\") or on \
                     every address (\"8080:{port}\")",
                    service.name, service.name
                ),
            ),
            (Resolved::Nothing, Some(s), _) => push(
                domains_at,
                domains_field,
                format!(
                    "the domains need a port to route to: add `port:` to service.yml, or \
                     publish a port of service {} in compose.yml (ports: [\"8080:80\"])",
                    s.name
                ),
            ),
            (Resolved::Nothing, None, None) => push(
                domains_at,
                domains_field,
                format!(
                    "the domains need a service and a port to route to: compose.yml has \
                     several services ({}) and none publishes a port; add `service:` and \
                     `port:` to service.yml",
                    names()
                ),
            ),
            // The unknown service is already reported.
            (Resolved::Nothing, None, Some(_)) => {}
        }
    }

    if meta.driver == DriverKind::Process {
        for s in &compose.services {
            if s.image.is_some() && s.command.is_none() && s.entrypoint.is_none() {
                push(
                    meta.positions.driver,
                    "driver",
                    format!(
                        "the process driver runs commands; service {} has only an image \
                         (give it a command, or use driver: docker)",
                        s.name
                    ),
                );
            }
        }
    }
    problems.sort_by_key(|p| (p.line, p.column));
    problems
}

/// The service receiving the traffic when `service.yml` does not say: the only
/// one, or the first publishing a port.
pub fn default_service(compose: &ComposeFile) -> Option<&ServiceSpec> {
    match compose.services.as_slice() {
        [only] => Some(only),
        all => all.iter().find(|s| first_published(s).is_some()),
    }
}

/// The first host port a service publishes over TCP.
pub fn first_published(service: &ServiceSpec) -> Option<u16> {
    tcp_ports(service).find_map(|(_, p)| p.host)
}

/// Where a deployment's traffic goes on this host (see the module's doc):
/// `None` without a port, or when the routed port has no host port
/// `127.0.0.1` reaches (which the cross-check refuses when there are domains).
pub fn target_port(compose: &ComposeFile, meta: &ServiceMeta) -> Option<u16> {
    match resolve(compose, meta) {
        Resolved::Port(p) | Resolved::Listening(p) => Some(p),
        _ => None,
    }
}

/// What [`target_port`] found.
enum Resolved<'a> {
    /// The host port the gateway connects to, published by the service.
    Port(u16),
    /// The port asked for, which the service does not publish: the app is
    /// taken to listen on it on the host.
    Listening(u16),
    /// No port asked for, and none published with a host port.
    Nothing,
    /// The port is published only without a host port (`ports[index]`).
    NoHostPort {
        service: &'a ServiceSpec,
        index: usize,
        port: u16,
    },
    /// The port is published only on `ip`, which `127.0.0.1` does not reach.
    Unreachable {
        service: &'a ServiceSpec,
        index: usize,
        port: u16,
        ip: &'a str,
    },
}

fn resolve<'a>(compose: &'a ComposeFile, meta: &ServiceMeta) -> Resolved<'a> {
    let service = match &meta.service {
        Some(name) => compose.service(name),
        None => default_service(compose),
    };
    match (meta.port, service) {
        (Some(port), None) => Resolved::Listening(port),
        (Some(port), Some(s)) => {
            // The port the app listens on; published, it is reached at the
            // host port. Processes and the host's network ignore `ports`.
            if s.image.is_none() || on_host_network(s) {
                return Resolved::Listening(port);
            }
            match published(s, |p| p.container == port) {
                // Named by its host port, as `port:` was first meant.
                Resolved::Nothing if tcp_ports(s).any(|(_, p)| p.host == Some(port)) => {
                    Resolved::Port(port)
                }
                Resolved::Nothing => Resolved::Listening(port),
                found => found,
            }
        }
        (None, Some(s)) => published(s, |_| true),
        (None, None) => Resolved::Nothing,
    }
}

/// The first of a service's TCP mappings chosen by `wanted` that has a host
/// port `127.0.0.1` reaches; else why none does.
fn published<'a>(s: &'a ServiceSpec, wanted: impl Fn(&PortMapping) -> bool) -> Resolved<'a> {
    let mut why = Resolved::Nothing;
    for (index, p) in tcp_ports(s).filter(|(_, p)| wanted(p)) {
        match (p.host, p.host_ip.as_deref()) {
            (Some(host), ip) if ip.is_none_or(loopback_reaches) => return Resolved::Port(host),
            (Some(_), Some(ip)) => {
                if !matches!(why, Resolved::Unreachable { .. }) {
                    why = Resolved::Unreachable {
                        service: s,
                        index,
                        port: p.container,
                        ip,
                    };
                }
            }
            _ => {
                if matches!(why, Resolved::Nothing) {
                    why = Resolved::NoHostPort {
                        service: s,
                        index,
                        port: p.container,
                    };
                }
            }
        }
    }
    why
}

/// A service's TCP mappings with their index in its `ports`.
fn tcp_ports(s: &ServiceSpec) -> impl Iterator<Item = (usize, &PortMapping)> {
    s.ports
        .iter()
        .enumerate()
        .filter(|(_, p)| p.protocol == PortProtocol::Tcp)
}

/// Whether a connection to `127.0.0.1` reaches a port bound on `ip`: that
/// address, or every address.
fn loopback_reaches(ip: &str) -> bool {
    match ip.parse::<IpAddr>() {
        Ok(IpAddr::V4(v4)) => v4 == std::net::Ipv4Addr::LOCALHOST || v4.is_unspecified(),
        Ok(IpAddr::V6(v6)) => v6.is_unspecified(),
        Err(_) => false,
    }
}

fn on_host_network(s: &ServiceSpec) -> bool {
    s.network_mode.as_deref() == Some("host")
}

/// Whether the deployment runs on Docker whatever the engine does: asked
/// for, or `auto` with a service that has only an image (see
/// `host::Deployments::choose`).
fn runs_in_docker(compose: &ComposeFile, meta: &ServiceMeta) -> bool {
    match meta.driver {
        DriverKind::Docker => true,
        DriverKind::Process => false,
        DriverKind::Auto => {
            compose.services.iter().all(|s| s.image.is_some())
                && compose
                    .services
                    .iter()
                    .any(|s| s.command.is_none() && s.entrypoint.is_none())
        }
    }
}

/// Checks both files of a deployment and the one against the other. Problems
/// of `compose.yml` come first, each file's sorted by line; the cross-checks
/// run only when both files are fine on their own.
pub fn parse_files(
    compose_text: &str,
    meta_text: &str,
) -> Result<(ComposeFile, ServiceMeta), Vec<Problem>> {
    match (compose::parse(compose_text), meta::parse(meta_text)) {
        (Ok(c), Ok(m)) => {
            let problems = cross_check(&c, &m);
            if problems.is_empty() {
                Ok((c, m))
            } else {
                Err(problems)
            }
        }
        (c, m) => {
            let mut all = c.err().unwrap_or_default();
            all.extend(m.err().unwrap_or_default());
            Err(all)
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::compose::tests::{assert_positions_in_range, yamlish};

    const TWO: &str = "services:\n  web:\n    command: ./web --port 8080\n    ports: [\"8080:8080\"]\n    depends_on:\n      db:\n        condition: service_healthy\n  db:\n    image: postgres:16\n    healthcheck:\n      test: pg_isready\n";

    fn problems(compose: &str, meta: &str) -> Vec<Problem> {
        parse_files(compose, meta).expect_err("expected problems")
    }

    #[track_caller]
    fn assert_at(p: &Problem, file: &str, line: usize, field: &str, message: &str) {
        assert_eq!(
            (p.file.as_str(), p.line, p.field.as_str()),
            (file, line, field),
            "{p:#?}"
        );
        assert!(
            p.message.contains(message),
            "{:?} lacks {message:?}",
            p.message
        );
    }

    #[test]
    fn both_files_parse_and_agree() {
        let (compose, meta) =
            parse_files(TWO, "service: web\ndomains: [app.example.com]\n").expect("valid");
        assert_eq!(compose.services.len(), 2);
        assert_eq!(meta.service.as_deref(), Some("web"));
        // Without `service:`, the first service publishing a port is chosen.
        let (compose, meta) = parse_files(TWO, "domains: [app.example.com]\n").expect("valid");
        assert_eq!(
            default_service(&compose).map(|s| s.name.as_str()),
            Some("web")
        );
        assert!(cross_check(&compose, &meta).is_empty());
        // An explicit port needs nothing published.
        parse_files(
            "services:\n  api:\n    command: ./api\n  worker:\n    command: ./w\n",
            "service: api\nport: 3000\ndomains: [api.example.com]\ndriver: process\n",
        )
        .expect("valid");
    }

    #[test]
    fn the_service_must_exist() {
        let p = problems(TWO, "# routing\nservice: api\n");
        assert_eq!(p.len(), 1, "{p:#?}");
        assert_at(
            &p[0],
            "service.yml",
            2,
            "service",
            "`api` is not a service of compose.yml; its services are: web, db",
        );
        assert_eq!(p[0].column, 10);
    }

    #[test]
    fn domains_need_a_port() {
        let p = problems(TWO, "service: db\ndomains: [db.example.com]\n");
        assert_eq!(p.len(), 1, "{p:#?}");
        assert_at(
            &p[0],
            "service.yml",
            2,
            "domains",
            "add `port:` to service.yml, or publish a port of service db",
        );
        let p = problems(
            "services:\n  a:\n    command: ./a\n  b:\n    command: ./b\n",
            "domains: [x.example.com]\n",
        );
        assert_at(
            &p[0],
            "service.yml",
            1,
            "domains",
            "add `service:` and `port:`",
        );
    }

    /// A file the cross-check accepts always has the port it found: the first
    /// service publishing only a container port is passed over for the one
    /// publishing a host port.
    #[test]
    fn the_target_port_is_the_one_the_check_accepted() {
        let compose = "services:\n  a:\n    command: ./a\n    ports: [\"80\"]\n  b:\n    command: ./b\n    ports: [\"8080:80\"]\n";
        let (c, m) = parse_files(compose, "domains: [x.example.com]\n").expect("checks");
        assert_eq!(target_port(&c, &m), Some(8080));
        let (c, m) = parse_files(compose, "service: a\nport: 9000\n").expect("checks");
        assert_eq!(target_port(&c, &m), Some(9000));
        let (c, m) = parse_files(compose, "service: a\n").expect("checks");
        assert_eq!(target_port(&c, &m), None);
    }

    /// One image service with `ports` (a YAML flow list's items).
    fn bridged(ports: &str) -> String {
        format!("services:\n  web:\n    image: app:1\n    ports: [{ports}]\n")
    }

    #[test]
    fn a_published_port_is_reached_at_its_host_port() {
        let compose = bridged("\"127.0.0.1:18080:80\"");
        // The first host port; the container port named by `port:` or
        // `networking.container_port:`; the host port itself.
        for meta in [
            "domains: [a.example.com]\n",
            "domains: [a.example.com]\nport: 80\n",
            "networking:\n  expose: true\n  domain: a.example.com\n  container_port: 80\n",
            "domains: [a.example.com]\nport: 18080\n",
        ] {
            let (c, m) = parse_files(&compose, meta).unwrap_or_else(|p| panic!("{meta}: {p:#?}"));
            assert_eq!(target_port(&c, &m), Some(18080), "{meta}");
        }
        // On every address, or the first of several that 127.0.0.1 reaches;
        // UDP is never the route.
        for (ports, want) in [
            ("\"18080:80\"", 18080),
            ("\"0.0.0.0:18080:80\"", 18080),
            ("\"[::]:18080:80\"", 18080),
            ("\"192.0.2.7:8080:80\", \"127.0.0.1:8081:80\"", 8081),
            ("\"5353:53/udp\", \"8080:80\"", 8080),
            ("\"80\", \"8080:80\"", 8080),
        ] {
            let (c, m) = parse_files(&bridged(ports), "domains: [a.example.com]\nport: 80\n")
                .unwrap_or_else(|p| panic!("{ports}: {p:#?}"));
            assert_eq!(target_port(&c, &m), Some(want), "{ports}");
        }
        // Processes and the host's network listen on the port itself.
        let (c, m) = parse_files(
            "services:\n  web:\n    command: ./web\n    ports: [\"8080:80\"]\n",
            "domains: [a.example.com]\nport: 80\n",
        )
        .expect("checks");
        assert_eq!(target_port(&c, &m), Some(80));
        let (c, m) = parse_files(
            "services:\n  web:\n    image: app:1\n    network_mode: host\n    ports: [\"8080:80\"]\n",
            "domains: [a.example.com]\nport: 80\n",
        )
        .expect("checks");
        assert_eq!(target_port(&c, &m), Some(80));
    }

    #[test]
    fn a_routed_port_without_a_host_port_is_refused() {
        for (compose, meta, line, field) in [
            (
                bridged("\"80\""),
                "domains: [a.example.com]\n",
                1,
                "domains",
            ),
            (
                bridged("\"127.0.0.1::80\""),
                "domains: [a.example.com]\nport: 80\n",
                2,
                "port",
            ),
            (
                bridged("\"8080:8080\", \"80\""),
                "networking:\n  domain: a.example.com\n  container_port: 80\n",
                3,
                "networking.container_port",
            ),
            (
                bridged("\"80\""),
                "networking:\n  domain: a.example.com\n",
                2,
                "networking.domain",
            ),
        ] {
            let p = problems(&compose, meta);
            assert_eq!(p.len(), 1, "{meta}: {p:#?}");
            assert_at(
                &p[0],
                "service.yml",
                line,
                field,
                "service web publishes port 80 without a host port (services.web.ports[",
            );
            assert!(p[0].message.contains("\"127.0.0.1:8080:80\""), "{p:#?}");
        }
        // Not routed: the engine may pick the port.
        let (c, m) = parse_files(&bridged("\"80\""), "port: 80\n").expect("no domains");
        assert_eq!(target_port(&c, &m), None);
    }

    #[test]
    fn a_routed_port_on_an_address_the_gateway_does_not_reach_is_refused() {
        for (ports, ip) in [
            ("\"192.0.2.7:8080:80\"", "192.0.2.7"),
            ("\"[::1]:8080:80\"", "::1"),
            ("\"127.0.0.2:8080:80\"", "127.0.0.2"),
        ] {
            let p = problems(&bridged(ports), "domains: [a.example.com]\n");
            assert_eq!(p.len(), 1, "{p:#?}");
            assert_at(
                &p[0],
                "service.yml",
                1,
                "domains",
                &format!("service web publishes port 80 on {ip} only (services.web.ports[0]"),
            );
        }
    }

    #[test]
    fn a_docker_port_that_is_not_published_is_refused() {
        // Only an image: Docker whatever the engine does.
        let p = problems(
            "services:\n  web:\n    image: app:1\n",
            "domains: [a.example.com]\nport: 3000\n",
        );
        assert_eq!(p.len(), 1, "{p:#?}");
        assert_at(
            &p[0],
            "service.yml",
            2,
            "port",
            "service web runs in Docker on a network of its own, where port 3000 is inside its container",
        );
        // Unless it is on the host's network, or may run as a process.
        for (compose, meta) in [
            (
                "services:\n  web:\n    image: app:1\n    network_mode: host\n",
                "domains: [a.example.com]\nport: 3000\n",
            ),
            (
                "services:\n  web:\n    image: app:1\n    command: [./web]\n",
                "domains: [a.example.com]\nport: 3000\n",
            ),
            (
                "services:\n  web:\n    command: [./web]\n",
                "domains: [a.example.com]\nport: 3000\n",
            ),
        ] {
            let (c, m) = parse_files(compose, meta).unwrap_or_else(|p| panic!("{p:#?}"));
            assert_eq!(target_port(&c, &m), Some(3000));
        }
        let p = problems(
            "services:\n  web:\n    image: app:1\n    command: [./web]\n",
            "driver: docker\nnetworking:\n  domain: a.example.com\n  container_port: 3000\n",
        );
        assert_at(
            &p[0],
            "service.yml",
            4,
            "networking.container_port",
            "runs in Docker on a network of its own",
        );
    }

    #[test]
    fn the_route_goes_to_the_published_port_over_the_app_protocol() {
        let (c, m) = parse_files(
            &bridged("\"127.0.0.1:18443:443\""),
            "networking:\n  domain: a.example.com\n  container_port: 443\n  protocol: https\n",
        )
        .expect("checks");
        let (route, upstream) = crate::host::proxy_objects("app", &c, &m, &[])
            .expect("valid")
            .expect("routed");
        assert_eq!(route.hosts, ["a.example.com"]);
        assert_eq!(upstream.targets[0].url, "https://127.0.0.1:18443");
        assert!(!upstream.tls.verify);
        let (c, m) =
            parse_files(&bridged("\"18080:80\""), "domains: [a.example.com]\n").expect("checks");
        let (_, upstream) = crate::host::proxy_objects("app", &c, &m, &[])
            .expect("valid")
            .expect("routed");
        assert_eq!(upstream.targets[0].url, "http://127.0.0.1:18080");
        assert!(upstream.tls.verify);
        // Not exposed: no route, whatever the domain.
        let (c, m) = parse_files(
            &bridged("\"18080:80\""),
            "networking:\n  expose: false\n  domain: a.example.com\n",
        )
        .expect("checks");
        assert!(crate::host::proxy_objects("app", &c, &m, &[])
            .expect("valid")
            .is_none());
    }

    /// One service's `ports` and `network_mode`, and how `service.yml` asks
    /// for a route.
    fn routed_files() -> impl Strategy<Value = (String, String)> {
        let mapping = prop::sample::select(vec![
            "\"80\"",
            "\"8080:80\"",
            "\"127.0.0.1:8081:80\"",
            "\"127.0.0.1::80\"",
            "\"192.0.2.7:8082:80\"",
            "\"[::1]:8083:80\"",
            "\"5353:53/udp\"",
            "\"9000:9000\"",
            "\"9001\"",
        ]);
        let service = (
            prop::collection::vec(mapping, 0..4),
            prop::sample::select(vec![
                "",
                "    network_mode: host\n",
                "    network_mode: bridge\n",
            ]),
            prop::sample::select(vec![
                "    image: app:1\n",
                "    image: app:1\n    command: [./a]\n",
                "    command: [./a]\n",
            ]),
        )
            .prop_map(|(ports, mode, run)| {
                format!(
                    "services:\n  web:\n{run}{mode}    ports: [{}]\n",
                    ports.join(", ")
                )
            });
        let meta = (
            prop::sample::select(vec![
                "domains: [a.example.com]\n",
                "networking:\n  domain: a.example.com\n",
                "networking:\n  expose: false\n  domain: a.example.com\n",
                "",
            ]),
            prop::sample::select(vec!["", "port: 80\n", "port: 8080\n", "port: 3000\n"]),
            prop::sample::select(vec!["", "driver: docker\n", "driver: process\n"]),
        )
            .prop_map(|(d, p, r)| format!("{d}{p}{r}"));
        (service, meta)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn parse_files_never_panics(compose in yamlish(), meta in yamlish()) {
            if let Err(p) = parse_files(&compose, &meta) {
                for p in &p {
                    let text = if p.file == "compose.yml" { &compose } else { &meta };
                    assert_positions_in_range(text, std::slice::from_ref(p));
                }
            }
        }

        /// A routed deployment the check accepts has a port the gateway
        /// reaches: one it publishes on a host port 127.0.0.1 reaches, or the
        /// one `port:` names.
        #[test]
        fn an_accepted_route_always_has_a_reachable_port((compose, meta) in routed_files()) {
            match parse_files(&compose, &meta) {
                Ok((c, m)) if !m.domains.is_empty() => {
                    let port = target_port(&c, &m);
                    prop_assert!(port.is_some(), "no port for {compose}{meta}");
                    let web = &c.services[0];
                    let published = web.ports.iter().any(|p| {
                        p.protocol == PortProtocol::Tcp
                            && p.host == port
                            && p.host_ip.as_deref().is_none_or(loopback_reaches)
                    });
                    prop_assert!(published || m.port == port, "{port:?} for {compose}{meta}");
                }
                Ok(_) => {}
                Err(p) => {
                    for p in &p {
                        prop_assert!(p.line >= 1, "{p:#?}");
                    }
                }
            }
        }
    }

    #[test]
    fn the_process_driver_needs_commands() {
        let p = problems(TWO, "driver: process\n");
        assert_eq!(p.len(), 1, "{p:#?}");
        assert_at(
            &p[0],
            "service.yml",
            1,
            "driver",
            "the process driver runs commands; service db has only an image",
        );
        parse_files(TWO, "driver: docker\n").expect("docker runs images");
    }

    #[test]
    fn problems_of_both_files_come_compose_first() {
        let p = problems(
            "services:\n  web:\n    image: x\n    restart: maybe\n",
            "port: 0\n",
        );
        let files: Vec<_> = p.iter().map(|p| (p.file.as_str(), p.line)).collect();
        assert_eq!(files, [("compose.yml", 4), ("service.yml", 1)]);
        let p = problems("", "");
        assert_eq!(p.len(), 1);
        assert_at(&p[0], "compose.yml", 0, "", "the file is empty");
    }
}
