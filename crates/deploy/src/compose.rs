//! `compose.yml`: the services of a deployment, in a subset of the Compose file
//! format, checked into a [`ComposeFile`].
//!
//! Top level: `services` (required), `volumes` and `networks` (their names;
//! a named volume a service mounts must be declared under `volumes`, as Docker
//! Compose requires), `version` and `name` (ignored), `x-…` extensions
//! (ignored). Anything else is a problem.
//!
//! A service: `image`, `command`, `entrypoint`, `environment`, `ports`,
//! `volumes`, `healthcheck`, `depends_on`, `restart`, `working_dir`,
//! `stop_grace_period`, `stop_signal`, `network_mode` (the Docker driver's:
//! `host`, `none`, `bridge` or a network's name; without it a service joins
//! its deployment's own network, as Compose's default network; processes
//! always share the host's network). Keys that only mean something to Docker
//! itself — `container_name`, `labels`, `networks`, `hostname`, `expose` — and
//! `x-…` extensions are accepted and ignored, so that an existing compose file
//! loads. `env_file`, `user` and `build` are refused with a reason, since
//! ignoring them would run the service differently from what the file says;
//! any other key is refused as unknown.
//!
//! Every problem names its line, column and field; all of them are collected,
//! not just the first.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use marked_yaml::types::{MarkedMappingNode, MarkedScalarNode};
use marked_yaml::Node;

use crate::shell;
use crate::spec::{
    ComposeFile, Dependency, DependencyCondition, HealthCheck, HealthTest, PortMapping,
    PortProtocol, Position, Problem, RestartPolicy, ServiceSpec, VolumeMount,
};
use crate::yaml::{is_null, pos, scalar_pos, shorten, Checker};

/// The name problems give the file.
pub const FILE: &str = "compose.yml";
/// More services are refused.
pub const MAX_SERVICES: usize = 200;

/// Keys of a service that are accepted and ignored: they concern Docker's own
/// bookkeeping, not how the service runs.
const DOCKER_ONLY: &[&str] = &["container_name", "labels", "networks", "hostname", "expose"];

const SERVICE_KEYS: &str = "image, command, entrypoint, environment, ports, volumes, healthcheck, \
depends_on, restart, working_dir, stop_grace_period, stop_signal, network_mode";

/// Checks `text` as a `compose.yml`.
pub fn parse(text: &str) -> Result<ComposeFile, Vec<Problem>> {
    let mut c = Checker::new(FILE);
    let root = match c.load(text) {
        Ok(Some(root)) => root,
        Ok(None) => {
            c.whole("the file is empty; it needs `services:` with at least one service");
            return Err(c.into_problems());
        }
        Err(()) => return Err(c.into_problems()),
    };

    let mut services_entry = None;
    let mut declared_volumes = BTreeSet::new();
    for (key, value) in root.iter() {
        let field = shorten(key.as_str());
        if !c.checked(key, &field) {
            continue;
        }
        match key.as_str() {
            "services" => services_entry = Some((key, value)),
            "version" | "name" => {}
            "volumes" => declared_volumes = declared_names(&mut c, value, "volumes"),
            "networks" => {
                declared_names(&mut c, value, "networks");
            }
            k if k.starts_with("x-") => {}
            k => c.push(
                scalar_pos(key),
                &field,
                format!(
                    "unknown top-level key `{}`; expected services, volumes, networks, name, \
                     version or an x- extension",
                    shorten(k)
                ),
            ),
        }
    }

    let Some((services_key, services_node)) = services_entry else {
        c.push(
            Position { line: 1, column: 1 },
            "services",
            "`services:` is missing; declare at least one service",
        );
        return Err(c.into_problems());
    };
    let Some(services_map) = c.mapping(services_node, "services", "services") else {
        return Err(c.into_problems());
    };
    if services_map.is_empty() {
        c.push(
            scalar_pos(services_key),
            "services",
            "services is empty; declare at least one service",
        );
    }
    if services_map.len() > MAX_SERVICES {
        c.push(
            scalar_pos(services_key),
            "services",
            format!(
                "{} services are declared; at most {MAX_SERVICES} are allowed",
                services_map.len()
            ),
        );
        return Err(c.into_problems());
    }

    let mut services = Vec::new();
    let mut deps = Vec::new();
    let mut volume_refs = Vec::new();
    for (name_node, body) in services_map.iter() {
        let name = name_node.as_str();
        let field = format!("services.{}", shorten(name));
        if !c.checked(name_node, &field) {
            continue;
        }
        if !valid_name(name) {
            c.push(
                scalar_pos(name_node),
                &field,
                format!(
                    "`{}` is not a valid service name: use letters, digits, `_`, `.` and `-`, \
                     starting with a letter or digit",
                    shorten(name)
                ),
            );
        }
        let (spec, service_deps) = service(&mut c, name_node, body, &field, &mut volume_refs);
        services.push(spec);
        deps.push(service_deps);
    }

    check_dependencies(&mut c, &mut services, deps);
    for r in volume_refs {
        if !declared_volumes.contains(&r.name) {
            c.push(
                r.at,
                &r.field,
                format!(
                    "the named volume `{}` is not declared under the top-level `volumes:`; \
                     declare it there, or mount a path (./{})",
                    shorten(&r.name),
                    shorten(&r.name)
                ),
            );
        }
    }
    c.finish(ComposeFile { services })
}

/// A dependency as written, with where it was written.
struct DepAt {
    dep: Dependency,
    at: Position,
    field: String,
}

/// A named volume mounted by a service.
struct VolumeRef {
    name: String,
    at: Position,
    field: String,
}

/// `[a-zA-Z0-9][a-zA-Z0-9_.-]*`.
fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// The names under top-level `volumes:` or `networks:` (their options are
/// Docker's business).
fn declared_names(c: &mut Checker, node: &Node, what: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let map = match node {
        Node::Scalar(s) if is_null(s) => return names,
        Node::Mapping(m) => m,
        _ => {
            c.push(
                pos(node),
                what,
                format!("{what} must be a mapping of names to options"),
            );
            return names;
        }
    };
    for (key, value) in map.iter() {
        let field = format!("{what}.{}", shorten(key.as_str()));
        if !c.checked(key, &field) {
            continue;
        }
        if !valid_name(key.as_str()) {
            c.push(
                scalar_pos(key),
                &field,
                format!(
                    "`{}` is not a valid name: use letters, digits, `_`, `.` and `-`",
                    shorten(key.as_str())
                ),
            );
        }
        match value {
            Node::Mapping(_) => {}
            Node::Scalar(s) if is_null(s) => {}
            _ => c.push(
                pos(value),
                &field,
                format!(
                    "the options of {what} `{}` must be a mapping, or nothing",
                    shorten(key.as_str())
                ),
            ),
        }
        names.insert(key.as_str().to_string());
    }
    names
}

fn service(
    c: &mut Checker,
    name_node: &MarkedScalarNode,
    body: &Node,
    field: &str,
    volume_refs: &mut Vec<VolumeRef>,
) -> (ServiceSpec, Vec<DepAt>) {
    let name = shorten(name_node.as_str());
    let mut spec = ServiceSpec {
        name: name_node.as_str().to_string(),
        line: scalar_pos(name_node).line,
        image: None,
        command: None,
        entrypoint: None,
        environment: BTreeMap::new(),
        ports: Vec::new(),
        volumes: Vec::new(),
        healthcheck: None,
        depends_on: Vec::new(),
        restart: RestartPolicy::No,
        working_dir: None,
        stop_grace_period: Duration::from_secs(10),
        stop_signal: "SIGTERM".to_string(),
        network_mode: None,
    };
    let mut deps = Vec::new();
    let map = match body {
        Node::Mapping(m) => m,
        Node::Scalar(s) if is_null(s) => {
            c.push(
                scalar_pos(name_node),
                field,
                format!("service {name} is empty; give it an image or a command"),
            );
            return (spec, deps);
        }
        _ => {
            c.push(
                pos(body),
                field,
                format!("service {name} must be a mapping of keys (image, command, …)"),
            );
            return (spec, deps);
        }
    };
    // Whether image, command or entrypoint is written at all (a bad one is its
    // own problem; "needs an image or a command" would be noise then).
    let mut runs_something = false;
    for (key, value) in map.iter() {
        if !c.checked(key, field) {
            continue;
        }
        let f = format!("{field}.{}", shorten(key.as_str()));
        match key.as_str() {
            "image" => {
                runs_something = true;
                spec.image = c.string(value, &f);
            }
            "command" => {
                runs_something = true;
                spec.command = words(c, value, &f, "command");
            }
            "entrypoint" => {
                runs_something = true;
                spec.entrypoint = words(c, value, &f, "entrypoint");
            }
            "environment" => spec.environment = environment(c, value, &f),
            "ports" => spec.ports = ports(c, value, &f),
            "volumes" => spec.volumes = volumes(c, value, &f, volume_refs),
            "healthcheck" => spec.healthcheck = healthcheck(c, value, &f),
            "depends_on" => deps = depends_on(c, value, &f),
            "restart" => {
                if let Some(r) = restart(c, value, &f) {
                    spec.restart = r;
                }
            }
            "working_dir" => spec.working_dir = c.string(value, &f),
            "stop_grace_period" => {
                if let Some(d) = c.duration(value, &f) {
                    spec.stop_grace_period = d;
                }
            }
            "stop_signal" => {
                if let Some(s) = stop_signal(c, value, &f) {
                    spec.stop_signal = s;
                }
            }
            "network_mode" => {
                if let Some(mode) = c.string(value, &f) {
                    match check_network_mode(&mode) {
                        Ok(()) => spec.network_mode = Some(mode),
                        Err(why) => c.push(pos(value), &f, why),
                    }
                }
            }
            k if DOCKER_ONLY.contains(&k) || k.starts_with("x-") => {}
            "env_file" => c.push(
                scalar_pos(key),
                &f,
                "env_file is not supported; list the variables under environment",
            ),
            "user" => c.push(
                scalar_pos(key),
                &f,
                "user is not supported; services run as Fleetgate's user (processes) or the \
                 image's user (Docker)",
            ),
            "build" => c.push(
                scalar_pos(key),
                &f,
                "build is not supported; build the image beforehand and name it in image",
            ),
            other => c.push(
                scalar_pos(key),
                &f,
                format!(
                    "unknown key `{}` in service {name}; expected one of: {SERVICE_KEYS}",
                    shorten(other)
                ),
            ),
        }
    }
    if !runs_something {
        c.push(
            scalar_pos(name_node),
            field,
            format!("service {name} needs an image or a command"),
        );
    }
    (spec, deps)
}

/// A command as one string (split into words) or as a list of strings.
fn words(c: &mut Checker, node: &Node, field: &str, what: &str) -> Option<Vec<String>> {
    let words = match node {
        Node::Scalar(s) => {
            if !c.checked(s, field) {
                return None;
            }
            if is_null(s) {
                c.push(pos(node), field, format!("{what} is empty"));
                return None;
            }
            match shell::split(s.as_str()) {
                Ok(w) => w,
                Err(e) => {
                    c.push(pos(node), field, e);
                    return None;
                }
            }
        }
        Node::Sequence(list) => {
            let mut words = Vec::with_capacity(list.len());
            let mut ok = true;
            for (i, item) in list.iter().enumerate() {
                let f = format!("{field}[{i}]");
                match c.scalar(item, &f, "a string") {
                    Some(s) if is_null(s) => {
                        c.push(pos(item), &f, format!("an argument of {what} is empty"));
                        ok = false;
                    }
                    Some(s) => words.push(s.as_str().to_string()),
                    None => ok = false,
                }
            }
            if !ok {
                return None;
            }
            words
        }
        Node::Mapping(_) => {
            c.push(
                pos(node),
                field,
                format!("{what} must be a string or a list of strings, not a mapping"),
            );
            return None;
        }
    };
    if words.is_empty() {
        c.push(pos(node), field, format!("{what} is empty"));
        return None;
    }
    Some(words)
}

/// A variable's name: not empty, no `=` (it would end the name in `KEY=value`).
fn env_name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        Some("a variable needs a name".to_string())
    } else if name.contains('=') {
        Some(format!(
            "the variable name `{}` contains `=`",
            shorten(name)
        ))
    } else {
        None
    }
}

/// `environment:` as a mapping or a `KEY=value` list.
fn environment(c: &mut Checker, node: &Node, field: &str) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    // A bare name takes its value from Fleetgate's own environment, or is left
    // out when that has no such variable (as Compose does with the shell's).
    let inherited = |name: &str| std::env::var(name).ok();
    match node {
        Node::Scalar(s) if is_null(s) => {}
        Node::Mapping(map) => {
            for (key, value) in map.iter() {
                let f = format!("{field}.{}", shorten(key.as_str()));
                if !c.checked(key, &f) {
                    continue;
                }
                if let Some(problem) = env_name_problem(key.as_str()) {
                    c.push(scalar_pos(key), &f, problem);
                    continue;
                }
                let Some(s) = c.scalar(value, &f, "a string, number or boolean") else {
                    continue;
                };
                let value = if is_null(s) {
                    inherited(key.as_str())
                } else {
                    Some(s.as_str().to_string())
                };
                if let Some(value) = value {
                    env.insert(key.as_str().to_string(), value);
                }
            }
        }
        Node::Sequence(list) => {
            let mut seen = BTreeSet::new();
            for (i, item) in list.iter().enumerate() {
                let f = format!("{field}[{i}]");
                let Some(text) = c.string(item, &f) else {
                    continue;
                };
                let (name, value) = match text.split_once('=') {
                    Some((name, value)) => (name.to_string(), Some(value.to_string())),
                    None => (text.clone(), inherited(&text)),
                };
                if let Some(problem) = env_name_problem(&name) {
                    c.push(pos(item), &f, problem);
                    continue;
                }
                if !seen.insert(name.clone()) {
                    c.push(
                        pos(item),
                        &f,
                        format!("the variable {} is set twice", shorten(&name)),
                    );
                    continue;
                }
                if let Some(value) = value {
                    env.insert(name, value);
                }
            }
        }
        Node::Scalar(_) => c.push(
            pos(node),
            field,
            "environment must be a mapping (KEY: value) or a list of KEY=value",
        ),
    }
    env
}

fn ports(c: &mut Checker, node: &Node, field: &str) -> Vec<PortMapping> {
    let mut out = Vec::new();
    let list = match node {
        Node::Scalar(s) if is_null(s) => return out,
        Node::Sequence(list) => list,
        _ => {
            c.push(pos(node), field, "ports must be a list, like [\"8080:80\"]");
            return out;
        }
    };
    for (i, item) in list.iter().enumerate() {
        let f = format!("{field}[{i}]");
        let port = match item {
            Node::Mapping(map) => port_long(c, map, item, &f),
            _ => {
                let Some(s) = c.scalar(item, &f, "a port like \"8080:80\" or a mapping") else {
                    continue;
                };
                match port_short(s.as_str()) {
                    Ok(p) => Some(p),
                    Err(e) => {
                        c.push(pos(item), &f, e);
                        None
                    }
                }
            }
        };
        out.extend(port);
    }
    out
}

/// `"80"`, `"8080:80"`, `"127.0.0.1:8080:80"`, `"[::1]:8080:80"`,
/// `"127.0.0.1::80"`, each with an optional `/tcp` or `/udp`.
fn port_short(text: &str) -> Result<PortMapping, String> {
    let t = text.trim();
    let shown = shorten(t);
    let (body, protocol) = match t.rsplit_once('/') {
        Some((body, proto)) => (body, port_protocol(proto)?),
        None => (t, PortProtocol::Tcp),
    };
    let (host_ip, parts): (Option<String>, Vec<&str>) = if let Some(rest) = body.strip_prefix('[') {
        let Some((ip, after)) = rest.split_once(']') else {
            return Err(format!(
                "`{shown}` opens `[` for an IPv6 address but never closes it"
            ));
        };
        let ip: Ipv6Addr = ip
            .parse()
            .map_err(|_| format!("`{}` in `{shown}` is not an IPv6 address", shorten(ip)))?;
        let Some(after) = after.strip_prefix(':') else {
            return Err(format!(
                "`{shown}`: expected `:` and the host port after the bracketed address"
            ));
        };
        let parts: Vec<&str> = after.split(':').collect();
        if parts.len() != 2 {
            return Err(format!(
                "`{shown}`: expected [address]:host-port:container-port"
            ));
        }
        (Some(ip.to_string()), parts)
    } else {
        let parts: Vec<&str> = body.split(':').collect();
        match parts.len() {
            1 | 2 => (None, parts),
            3 => {
                let ip: Ipv4Addr = parts[0].parse().map_err(|_| {
                    format!(
                        "`{}` in `{shown}` is not an IPv4 address (write an IPv6 one in brackets: \
                         [::1]:8080:80)",
                        shorten(parts[0])
                    )
                })?;
                (Some(ip.to_string()), parts[1..].to_vec())
            }
            _ => {
                return Err(format!(
                    "`{shown}` has too many `:`; write an IPv6 host address in brackets: \
                     [::1]:8080:80"
                ))
            }
        }
    };
    let (host, container) = match parts.as_slice() {
        [container] => (None, port_number(container, &shown)?),
        ["", container] => (None, port_number(container, &shown)?),
        [host, container] => (
            Some(port_number(host, &shown)?),
            port_number(container, &shown)?,
        ),
        _ => return Err(format!("`{shown}` is not a port mapping")),
    };
    Ok(PortMapping {
        host_ip,
        host,
        container,
        protocol,
    })
}

fn port_number(text: &str, whole: &str) -> Result<u16, String> {
    let t = text.trim();
    if t.contains('-') && !t.starts_with('-') {
        return Err(format!(
            "port ranges (`{}` in `{whole}`) are not supported; list each port",
            shorten(t)
        ));
    }
    match t.parse::<u32>() {
        Ok(n) if (1..=65535).contains(&n) => u16::try_from(n).map_err(|_| String::new()),
        Ok(n) => Err(format!(
            "port {n} in `{whole}` is out of range; ports are 1 to 65535"
        )),
        Err(_) if t.is_empty() => Err(format!("`{whole}` is missing a port number")),
        Err(_) => Err(format!(
            "`{}` in `{whole}` is not a port number (1 to 65535)",
            shorten(t)
        )),
    }
}

fn port_protocol(text: &str) -> Result<PortProtocol, String> {
    match text {
        "tcp" => Ok(PortProtocol::Tcp),
        "udp" => Ok(PortProtocol::Udp),
        other => Err(format!(
            "protocol `{}` is not supported; use tcp or udp",
            shorten(other)
        )),
    }
}

/// `{target, published, host_ip, protocol}` (`mode`, `name` and
/// `app_protocol` are Docker's and ignored).
fn port_long(
    c: &mut Checker,
    map: &MarkedMappingNode,
    node: &Node,
    field: &str,
) -> Option<PortMapping> {
    let known = [
        "target",
        "published",
        "host_ip",
        "protocol",
        "mode",
        "name",
        "app_protocol",
    ];
    let mut ok = true;
    let mut port = PortMapping {
        host_ip: None,
        host: None,
        container: 0,
        protocol: PortProtocol::Tcp,
    };
    let mut target = false;
    for (key, value) in map.iter() {
        if !c.known_key(key, field, &known, "a port") {
            ok = false;
            continue;
        }
        let f = format!("{field}.{}", key.as_str());
        let result = match key.as_str() {
            "target" => {
                target = true;
                match c.number(value, &f, 1, 65535) {
                    Some(n) => {
                        port.container = u16::try_from(n).unwrap_or_default();
                        Ok(())
                    }
                    None => {
                        ok = false;
                        Ok(())
                    }
                }
            }
            "published" => match c.scalar(value, &f, "a port number") {
                Some(s) if is_null(s) || s.as_str().is_empty() => Ok(()),
                Some(s) => port_number(s.as_str(), s.as_str()).map(|p| port.host = Some(p)),
                None => {
                    ok = false;
                    Ok(())
                }
            },
            "host_ip" => match c.string(value, &f) {
                Some(ip) => {
                    let bare = ip.trim_start_matches('[').trim_end_matches(']');
                    match bare.parse::<IpAddr>() {
                        Ok(ip) => {
                            port.host_ip = Some(ip.to_string());
                            Ok(())
                        }
                        Err(_) => Err(format!("`{}` is not an IP address", shorten(&ip))),
                    }
                }
                None => {
                    ok = false;
                    Ok(())
                }
            },
            "protocol" => match c.string(value, &f) {
                Some(p) => port_protocol(&p).map(|p| port.protocol = p),
                None => {
                    ok = false;
                    Ok(())
                }
            },
            _ => Ok(()),
        };
        if let Err(e) = result {
            c.push(pos(value), &f, e);
            ok = false;
        }
    }
    if !target {
        c.push(
            pos(node),
            field,
            "a port in the long form needs target (the container's port)",
        );
        ok = false;
    }
    ok.then_some(port)
}

fn volumes(
    c: &mut Checker,
    node: &Node,
    field: &str,
    refs: &mut Vec<VolumeRef>,
) -> Vec<VolumeMount> {
    let mut out = Vec::new();
    let list = match node {
        Node::Scalar(s) if is_null(s) => return out,
        Node::Sequence(list) => list,
        _ => {
            c.push(
                pos(node),
                field,
                "volumes must be a list, like [\"./data:/data\"]",
            );
            return out;
        }
    };
    for (i, item) in list.iter().enumerate() {
        let f = format!("{field}[{i}]");
        let mount = match item {
            Node::Mapping(map) => volume_long(c, map, item, &f),
            _ => {
                let Some(s) = c.scalar(item, &f, "a volume like \"./data:/data\" or a mapping")
                else {
                    continue;
                };
                match volume_short(s.as_str()) {
                    Ok(v) => Some(v),
                    Err(e) => {
                        c.push(pos(item), &f, e);
                        None
                    }
                }
            }
        };
        if let Some(mount) = mount {
            if let Some(name) = mount.source.as_deref().filter(|s| !is_path(s)) {
                refs.push(VolumeRef {
                    name: name.to_string(),
                    at: pos(item),
                    field: f.clone(),
                });
            }
            out.push(mount);
        }
    }
    out
}

/// A host path rather than a volume name.
fn is_path(source: &str) -> bool {
    source.starts_with('/') || source.starts_with("./") || source.starts_with("../")
}

/// A source as written: a path (`.` and `..` become `./` and `../`), or a
/// volume name.
fn volume_source(text: &str, whole: &str) -> Result<String, String> {
    match text {
        "" => Err(format!("`{whole}` has an empty source")),
        "." => Ok("./".to_string()),
        ".." => Ok("../".to_string()),
        s if is_path(s) => Ok(s.to_string()),
        s if s.starts_with('~') => Err(format!(
            "`{whole}`: `~` is not expanded; write the home directory out"
        )),
        s if valid_name(s) => Ok(s.to_string()),
        s => Err(format!(
            "`{}` in `{whole}` is neither a path (/…, ./…, ../…) nor a volume name",
            shorten(s)
        )),
    }
}

fn volume_target(text: &str, whole: &str) -> Result<String, String> {
    if text.starts_with('/') {
        Ok(text.to_string())
    } else {
        Err(format!(
            "the target `{}` in `{whole}` must be an absolute path inside the service",
            shorten(text)
        ))
    }
}

/// `target`, `source:target` or `source:target:mode`.
fn volume_short(text: &str) -> Result<VolumeMount, String> {
    let shown = shorten(text);
    let parts: Vec<&str> = text.split(':').collect();
    let (source, target, mode) = match parts.as_slice() {
        [target] => (None, *target, None),
        [source, target] => (Some(*source), *target, None),
        [source, target, mode] => (Some(*source), *target, Some(*mode)),
        _ => {
            return Err(format!(
                "`{shown}` has too many `:`; expected source:target[:ro|rw]"
            ))
        }
    };
    let mut read_only = false;
    if let Some(mode) = mode {
        let (mut ro, mut rw) = (false, false);
        for option in mode.split(',') {
            match option {
                "ro" => ro = true,
                "rw" => rw = true,
                // SELinux labels and macOS consistency: Docker's business.
                "z" | "Z" | "cached" | "delegated" | "consistent" | "nocopy" => {}
                other => {
                    return Err(format!(
                        "unknown volume option `{}` in `{shown}`; use ro or rw",
                        shorten(other)
                    ))
                }
            }
        }
        if ro && rw {
            return Err(format!("`{shown}` is both ro and rw"));
        }
        read_only = ro;
    }
    Ok(VolumeMount {
        source: source.map(|s| volume_source(s, &shown)).transpose()?,
        target: volume_target(target, &shown)?,
        read_only,
    })
}

/// `{type, source, target, read_only}`.
fn volume_long(
    c: &mut Checker,
    map: &MarkedMappingNode,
    node: &Node,
    field: &str,
) -> Option<VolumeMount> {
    let known = [
        "type",
        "source",
        "target",
        "read_only",
        "bind",
        "volume",
        "tmpfs",
        "consistency",
    ];
    let mut ok = true;
    let mut kind = None;
    let mut source = None;
    let mut target = None;
    let mut read_only = false;
    for (key, value) in map.iter() {
        if !c.known_key(key, field, &known, "a volume") {
            ok = false;
            continue;
        }
        let f = format!("{field}.{}", key.as_str());
        let (value_text, at) = match key.as_str() {
            "read_only" => {
                match c.boolean(value, &f) {
                    Some(b) => read_only = b,
                    None => ok = false,
                }
                continue;
            }
            "type" | "source" | "target" => match c.string(value, &f) {
                Some(s) => (s, pos(value)),
                None => {
                    ok = false;
                    continue;
                }
            },
            // Docker's options of each type.
            _ => continue,
        };
        match key.as_str() {
            "type" => match value_text.as_str() {
                "bind" | "volume" | "tmpfs" => kind = Some((value_text, at, f)),
                other => {
                    c.push(
                        at,
                        &f,
                        format!(
                            "volume type `{}` is not supported; use bind, volume or tmpfs",
                            shorten(other)
                        ),
                    );
                    ok = false;
                }
            },
            "source" => source = Some((value_text, at, f)),
            _ => match volume_target(&value_text, &value_text) {
                Ok(t) => target = Some(t),
                Err(e) => {
                    c.push(at, &f, e);
                    ok = false;
                }
            },
        }
    }
    let Some((kind, _, _)) = kind else {
        if ok {
            c.push(
                pos(node),
                field,
                "a volume in the long form needs type (bind, volume or tmpfs)",
            );
        }
        return None;
    };
    let Some(target) = target else {
        if ok {
            c.push(
                pos(node),
                field,
                "a volume in the long form needs target (an absolute path)",
            );
        }
        return None;
    };
    let source = match (kind.as_str(), source) {
        ("tmpfs", Some((_, at, f))) => {
            c.push(at, &f, "a tmpfs volume has no source");
            return None;
        }
        ("bind", None) => {
            c.push(pos(node), field, "a bind volume needs source (a host path)");
            return None;
        }
        (_, None) => None,
        // A bind source is always a path; a relative one is from the
        // deployment directory.
        ("bind", Some((s, _, _))) if !is_path(&s) && s != "." && s != ".." => {
            Some(format!("./{s}"))
        }
        (_, Some((s, at, f))) => match volume_source(&s, &s) {
            Ok(s) => Some(s),
            Err(e) => {
                c.push(at, &f, e);
                return None;
            }
        },
    };
    ok.then_some(VolumeMount {
        source,
        target,
        read_only,
    })
}

/// `healthcheck:`; `None` when disabled (or wrong: the problem is recorded).
fn healthcheck(c: &mut Checker, node: &Node, field: &str) -> Option<HealthCheck> {
    let map = c.mapping(node, field, "healthcheck")?;
    let known = [
        "test",
        "interval",
        "timeout",
        "retries",
        "start_period",
        "start_interval",
        "disable",
    ];
    let mut check = HealthCheck {
        test: HealthTest::Cmd(Vec::new()),
        interval: Duration::from_secs(30),
        timeout: Duration::from_secs(30),
        retries: 3,
        start_period: Duration::ZERO,
    };
    let mut test_given = false;
    let mut disabled = false;
    let mut ok = true;
    for (key, value) in map.iter() {
        if !c.known_key(key, field, &known, "healthcheck") {
            ok = false;
            continue;
        }
        let f = format!("{field}.{}", key.as_str());
        match key.as_str() {
            "test" => {
                test_given = true;
                match health_test(c, value, &f) {
                    Some(Some(test)) => check.test = test,
                    Some(None) => disabled = true,
                    None => ok = false,
                }
            }
            "interval" | "timeout" => match c.duration(value, &f) {
                Some(d) if d.is_zero() => {
                    c.push(
                        pos(value),
                        &f,
                        format!("{} must be longer than 0s", key.as_str()),
                    );
                    ok = false;
                }
                Some(d) if key.as_str() == "interval" => check.interval = d,
                Some(d) => check.timeout = d,
                None => ok = false,
            },
            "start_period" => match c.duration(value, &f) {
                Some(d) => check.start_period = d,
                None => ok = false,
            },
            "retries" => match c.number(value, &f, 0, u64::from(u32::MAX)) {
                Some(n) => check.retries = u32::try_from(n).unwrap_or(u32::MAX),
                None => ok = false,
            },
            "disable" => match c.boolean(value, &f) {
                Some(d) => disabled |= d,
                None => ok = false,
            },
            // Docker's probe rate during start_period; the drivers use interval.
            _ => {
                c.duration(value, &f);
            }
        }
    }
    if !test_given && !disabled {
        c.push(
            pos(node),
            field,
            "healthcheck needs a test (or disable: true)",
        );
        return None;
    }
    (ok && !disabled).then_some(check)
}

/// `Some(None)` for `["NONE"]`; `None` when wrong.
fn health_test(c: &mut Checker, node: &Node, field: &str) -> Option<Option<HealthTest>> {
    match node {
        Node::Scalar(_) => {
            let line = c.string(node, field)?;
            Some(Some(HealthTest::Shell(line)))
        }
        Node::Sequence(list) => {
            let mut items = Vec::with_capacity(list.len());
            for (i, item) in list.iter().enumerate() {
                items.push(c.string(item, &format!("{field}[{i}]"))?);
            }
            let Some((first, rest)) = items.split_first() else {
                c.push(
                    pos(node),
                    field,
                    "test is empty; start it with CMD, CMD-SHELL or NONE",
                );
                return None;
            };
            match first.as_str() {
                "CMD" if !rest.is_empty() => Some(Some(HealthTest::Cmd(rest.to_vec()))),
                "CMD-SHELL" if rest.len() == 1 => Some(Some(HealthTest::Shell(rest[0].clone()))),
                "NONE" => Some(None),
                "CMD" => {
                    c.push(
                        pos(node),
                        field,
                        "test [\"CMD\"] needs the program to run after CMD",
                    );
                    None
                }
                "CMD-SHELL" => {
                    c.push(
                        pos(node),
                        field,
                        "test [\"CMD-SHELL\", …] takes exactly one command line after CMD-SHELL",
                    );
                    None
                }
                other => {
                    c.push(
                        pos(node),
                        field,
                        format!(
                            "a test list must start with CMD, CMD-SHELL or NONE, not `{}`",
                            shorten(other)
                        ),
                    );
                    None
                }
            }
        }
        Node::Mapping(_) => {
            c.push(
                pos(node),
                field,
                "test must be a command line or a list starting with CMD, CMD-SHELL or NONE",
            );
            None
        }
    }
}

fn depends_on(c: &mut Checker, node: &Node, field: &str) -> Vec<DepAt> {
    let mut deps: Vec<DepAt> = Vec::new();
    let mut add = |c: &mut Checker, dep: Dependency, at: Position, field: String| {
        if deps.iter().any(|d| d.dep.service == dep.service) {
            c.push(
                at,
                &field,
                format!("{} is listed twice", shorten(&dep.service)),
            );
        } else {
            deps.push(DepAt { dep, at, field });
        }
    };
    match node {
        Node::Scalar(s) if is_null(s) => {}
        Node::Sequence(list) => {
            for (i, item) in list.iter().enumerate() {
                let f = format!("{field}[{i}]");
                if let Some(service) = c.string(item, &f) {
                    let dep = Dependency {
                        service,
                        condition: DependencyCondition::Started,
                    };
                    add(c, dep, pos(item), f);
                }
            }
        }
        Node::Mapping(map) => {
            for (key, value) in map.iter() {
                let f = format!("{field}.{}", shorten(key.as_str()));
                if !c.checked(key, &f) {
                    continue;
                }
                let mut condition = Some(DependencyCondition::Started);
                match value {
                    Node::Scalar(s) if is_null(s) => {}
                    Node::Mapping(options) => {
                        for (okey, ovalue) in options.iter() {
                            if !c.known_key(
                                okey,
                                &f,
                                &["condition", "required", "restart"],
                                "depends_on",
                            ) {
                                continue;
                            }
                            let of = format!("{f}.{}", okey.as_str());
                            if okey.as_str() == "condition" {
                                condition = c.string(ovalue, &of).and_then(|t| {
                                    let cond = match t.as_str() {
                                        "service_started" => Some(DependencyCondition::Started),
                                        "service_healthy" => Some(DependencyCondition::Healthy),
                                        "service_completed_successfully" => {
                                            Some(DependencyCondition::CompletedSuccessfully)
                                        }
                                        _ => None,
                                    };
                                    if cond.is_none() {
                                        c.push(
                                            pos(ovalue),
                                            &of,
                                            format!(
                                                "unknown condition `{}`; use service_started, \
                                                 service_healthy or service_completed_successfully",
                                                shorten(&t)
                                            ),
                                        );
                                    }
                                    cond
                                });
                            } else {
                                // `required` and `restart` concern Docker's
                                // own restarts; they are checked, not used.
                                c.boolean(ovalue, &of);
                            }
                        }
                    }
                    _ => {
                        c.push(
                            pos(value),
                            &f,
                            "expected a mapping with condition, or nothing",
                        );
                        condition = None;
                    }
                }
                if let Some(condition) = condition {
                    let dep = Dependency {
                        service: key.as_str().to_string(),
                        condition,
                    };
                    add(c, dep, scalar_pos(key), f);
                }
            }
        }
        Node::Scalar(_) => c.push(
            pos(node),
            field,
            "depends_on must be a list of service names or a mapping of names to a condition",
        ),
    }
    deps
}

/// Every dependency names another service of the file, and none goes round in
/// a cycle (nothing could start first).
fn check_dependencies(c: &mut Checker, services: &mut [ServiceSpec], deps: Vec<Vec<DepAt>>) {
    let index = |name: &str| services.iter().position(|s| s.name == name);
    let mut edges: Vec<Vec<(usize, Position, String)>> = vec![Vec::new(); services.len()];
    for (i, list) in deps.iter().enumerate() {
        let me = shorten(&services[i].name);
        for d in list {
            match index(&d.dep.service) {
                Some(j) if j == i => {
                    c.push(d.at, &d.field, format!("service {me} depends on itself"));
                }
                Some(j) => edges[i].push((j, d.at, d.field.clone())),
                None => c.push(
                    d.at,
                    &d.field,
                    format!(
                        "service {me} depends on `{}`, which is not a service of this file",
                        shorten(&d.dep.service)
                    ),
                ),
            }
        }
    }
    for (cycle, at, field) in cycles(&edges) {
        let mut names: Vec<String> = cycle.iter().map(|&i| shorten(&services[i].name)).collect();
        if let Some(first) = names.first().cloned() {
            names.push(first);
        }
        c.push(
            at,
            &field,
            format!(
                "depends_on goes round in a cycle: {}; no service in it can start first",
                names.join(" → ")
            ),
        );
    }
    for (spec, list) in services.iter_mut().zip(deps) {
        spec.depends_on = list.into_iter().map(|d| d.dep).collect();
    }
}

/// Each cycle once (as the services on it, from where the search entered it),
/// with the dependency that closes it.
fn cycles(edges: &[Vec<(usize, Position, String)>]) -> Vec<(Vec<usize>, Position, String)> {
    struct Search<'a> {
        edges: &'a [Vec<(usize, Position, String)>],
        // 0: not seen, 1: on the path, 2: done.
        state: Vec<u8>,
        path: Vec<usize>,
        seen: BTreeSet<Vec<usize>>,
        found: Vec<(Vec<usize>, Position, String)>,
    }
    impl Search<'_> {
        // Recursion depth is bounded by the number of services (≤ 200).
        fn visit(&mut self, u: usize) {
            self.state[u] = 1;
            self.path.push(u);
            let edges = self.edges;
            for (v, at, field) in &edges[u] {
                match self.state[*v] {
                    0 => self.visit(*v),
                    1 => {
                        let start = self.path.iter().position(|x| x == v).unwrap_or(0);
                        let cycle = self.path[start..].to_vec();
                        let mut members = cycle.clone();
                        members.sort_unstable();
                        if self.seen.insert(members) {
                            self.found.push((cycle, *at, field.clone()));
                        }
                    }
                    _ => {}
                }
            }
            self.path.pop();
            self.state[u] = 2;
        }
    }
    let mut search = Search {
        edges,
        state: vec![0; edges.len()],
        path: Vec::new(),
        seen: BTreeSet::new(),
        found: Vec::new(),
    };
    for u in 0..edges.len() {
        if search.state[u] == 0 {
            search.visit(u);
        }
    }
    search.found
}

fn restart(c: &mut Checker, node: &Node, field: &str) -> Option<RestartPolicy> {
    let text = c.string(node, field)?;
    let policy = match text.as_str() {
        "no" => Some(RestartPolicy::No),
        "always" => Some(RestartPolicy::Always),
        "unless-stopped" => Some(RestartPolicy::UnlessStopped),
        "on-failure" => Some(RestartPolicy::OnFailure { max_retries: None }),
        other => other
            .strip_prefix("on-failure:")
            .and_then(|n| n.parse::<u32>().ok())
            .map(|n| RestartPolicy::OnFailure {
                max_retries: Some(n),
            }),
    };
    if policy.is_none() {
        c.push(
            pos(node),
            field,
            format!(
                "unknown restart policy `{}`; use \"no\", always, on-failure, on-failure:N or \
                 unless-stopped",
                shorten(&text)
            ),
        );
    }
    policy
}

/// The signals a stop may send, without `SIG`.
const SIGNALS: &[&str] = &[
    "HUP", "INT", "QUIT", "ABRT", "KILL", "USR1", "USR2", "ALRM", "TERM", "WINCH",
];

/// `host`, `none`, `bridge` or a network's name (`[A-Za-z0-9][A-Za-z0-9_.-]*`).
/// `service:…` and `container:…` are refused: they would tie the service to
/// another container's life, which the driver does not order.
fn check_network_mode(mode: &str) -> Result<(), String> {
    if mode.starts_with("service:") || mode.starts_with("container:") {
        return Err(format!(
            "network_mode {mode:?} is not supported; use host, none, bridge or a network's name"
        ));
    }
    let ok = mode.len() <= 128
        && mode
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && mode
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "network_mode {:?} is not host, none, bridge or a network's name (letters, digits, '_', '.', '-')",
            shorten(mode)
        ))
    }
}

fn stop_signal(c: &mut Checker, node: &Node, field: &str) -> Option<String> {
    let text = c.string(node, field)?;
    let upper = text.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    if SIGNALS.contains(&bare) {
        Some(format!("SIG{bare}"))
    } else {
        c.push(
            pos(node),
            field,
            format!(
                "unknown signal `{}`; use one of SIG{}",
                shorten(&text),
                SIGNALS.join(", SIG")
            ),
        );
        None
    }
}

#[cfg(test)]
pub(crate) mod tests;
