//! What `service.yml` says that only makes sense against `compose.yml`: the
//! service it names exists, its domains have a port to route to, and the driver
//! it asks for can run the services. [`parse_files`] checks both files and then
//! these, in one call.

use crate::spec::{ComposeFile, DriverKind, Position, Problem, ServiceMeta, ServiceSpec};
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

    if !meta.domains.is_empty() && meta.port.is_none() {
        match (target, &meta.service) {
            (Some(s), _) if first_published(s).is_none() => push(
                meta.positions.domains,
                "domains",
                format!(
                    "the domains need a port to route to: add `port:` to service.yml, or \
                     publish a port of service {} in compose.yml (ports: [\"8080:80\"])",
                    s.name
                ),
            ),
            (None, None) => push(
                meta.positions.domains,
                "domains",
                format!(
                    "the domains need a service and a port to route to: compose.yml has \
                     several services ({}) and none publishes a port; add `service:` and \
                     `port:` to service.yml",
                    names()
                ),
            ),
            // Routed, or the unknown service is already reported.
            _ => {}
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

/// The first host port a service publishes.
pub fn first_published(service: &ServiceSpec) -> Option<u16> {
    service.ports.iter().find_map(|p| p.host)
}

/// Where a deployment's traffic goes: `service.yml`'s `port`, or the first host
/// port of the service receiving the traffic (the one it names, else
/// [`default_service`]). The cross-check's "domains need a port" follows the
/// same rule.
pub fn target_port(compose: &ComposeFile, meta: &ServiceMeta) -> Option<u16> {
    if meta.port.is_some() {
        return meta.port;
    }
    let service = match &meta.service {
        Some(name) => compose.service(name),
        None => default_service(compose),
    }?;
    first_published(service)
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
    }
}
