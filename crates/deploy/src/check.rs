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
