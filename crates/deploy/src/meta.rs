//! `service.yml`: how a deployment is reached through Fleetgate — which
//! compose service and port receive the traffic, the domains routed to it, its
//! certificate, the gateway's health check and rate limit, and which driver
//! runs it — checked into a [`ServiceMeta`]. An empty file is an app without
//! domains. What depends on `compose.yml` too is checked by
//! [`crate::check::cross_check`].
//!
//! `networking:` is read as FlatRun writes it: `expose` (false: no route,
//! whatever the domain; left out, a domain is routed), `domain` (one host
//! name, the same as `domains: [it]`), `container_port` (the same as
//! `port:`), `protocol` (`http`, or `https` when the app serves TLS itself)
//! and `proxy_type` (which proxy FlatRun puts in front; Fleetgate's gateway
//! is the proxy, so it is read and left aside). An empty string or a
//! `container_port` of 0 means "not set", as FlatRun writes unset fields.
//! Giving a value both there and in Fleetgate's own key (`domains` and
//! `networking.domain`, `port` and `networking.container_port`) is a problem,
//! not a choice between them.

use std::collections::BTreeSet;
use std::time::Duration;

use marked_yaml::Node;

use crate::spec::{
    AppProtocol, DriverKind, HttpCheck, Position, Problem, RateLimitMeta, RolloutMeta, ServiceMeta,
    SslMeta, Strategy,
};
use crate::yaml::{is_null, pos, scalar_pos, shorten, Checker};

/// The name problems give the file.
pub const FILE: &str = "service.yml";

const KEYS: &[&str] = &[
    "service",
    "port",
    "domains",
    "ssl",
    "healthcheck",
    "rate_limit",
    "driver",
    "deploy",
    "networking",
];

/// Checks `text` as a `service.yml`.
pub fn parse(text: &str) -> Result<ServiceMeta, Vec<Problem>> {
    let mut c = Checker::new(FILE);
    let root = match c.load(text) {
        Ok(Some(root)) => root,
        Ok(None) => return Ok(ServiceMeta::default()),
        Err(()) => return Err(c.into_problems()),
    };
    let mut meta = ServiceMeta::default();
    let mut ssl_at = None;
    let mut domains_ok = true;
    let mut net = None;
    for (key, value) in root.iter() {
        if !c.known_key(key, &shorten(key.as_str()), KEYS, "service.yml") {
            continue;
        }
        let f = key.as_str();
        match f {
            "service" => {
                meta.service = c.string(value, f);
                meta.positions.service = Some(pos(value));
            }
            "port" => {
                meta.port = c
                    .number(value, f, 1, 65535)
                    .and_then(|n| u16::try_from(n).ok());
                meta.positions.port = Some(pos(value));
            }
            "domains" => {
                meta.positions.domains = Some(scalar_pos(key));
                match domains(&mut c, value) {
                    Some(d) => meta.domains = d,
                    None => domains_ok = false,
                }
            }
            "ssl" => {
                ssl_at = Some(scalar_pos(key));
                meta.ssl = ssl(&mut c, value).unwrap_or_default();
            }
            "healthcheck" => meta.healthcheck = http_check(&mut c, value),
            "rate_limit" => meta.rate_limit = rate_limit(&mut c, value),
            "deploy" => meta.rollout = rollout(&mut c, value).unwrap_or_default(),
            "networking" => net = networking(&mut c, value),
            _ => {
                meta.positions.driver = Some(pos(value));
                if let Some(d) = driver(&mut c, value) {
                    meta.driver = d;
                }
            }
        }
    }
    let unexposed = net.as_ref().and_then(|n| n.expose).filter(|(e, _)| !e);
    if let Some(n) = net {
        merge_networking(&mut c, &mut meta, n, domains_ok);
    }
    if let Some(at) = ssl_at {
        if meta.ssl.enabled && meta.domains.is_empty() && domains_ok {
            let why = if unexposed.is_some() {
                "ssl is enabled but networking.expose is false, so no domain is routed; a \
                 certificate is for routed domains"
            } else {
                "ssl is enabled but no domains are given; a certificate is for domains"
            };
            c.push(at, "ssl", why);
        }
    }
    c.finish(meta)
}

/// `networking:` as read, before it meets the rest of the file.
#[derive(Default)]
struct Networking {
    expose: Option<(bool, Position)>,
    domain: Option<(String, Position)>,
    container_port: Option<(u16, Position)>,
    protocol: Option<AppProtocol>,
}

/// `{expose, domain, container_port, protocol, proxy_type}`; `None` when it is
/// not a mapping (a problem recorded).
fn networking(c: &mut Checker, node: &Node) -> Option<Networking> {
    let map = c.mapping(node, "networking", "networking")?;
    let known = [
        "expose",
        "domain",
        "container_port",
        "protocol",
        "proxy_type",
    ];
    let mut out = Networking::default();
    for (key, value) in map.iter() {
        if !c.known_key(key, "networking", &known, "networking") {
            continue;
        }
        let f = format!("networking.{}", key.as_str());
        match key.as_str() {
            "expose" => {
                if let Some(b) = c.boolean(value, &f) {
                    out.expose = Some((b, pos(value)));
                }
            }
            "domain" => {
                let Some(text) = unset_or_string(c, value, &f) else {
                    continue;
                };
                match domain(&text) {
                    Ok(d) => out.domain = Some((d, pos(value))),
                    Err(e) => c.push(pos(value), &f, e),
                }
            }
            "container_port" => {
                let zero = matches!(value, Node::Scalar(s) if s.as_str().trim() == "0");
                let unset = matches!(value, Node::Scalar(s) if is_null(s) || s.as_str().is_empty());
                if zero || unset {
                    continue;
                }
                if let Some(n) = c.number(value, &f, 1, 65535) {
                    out.container_port = u16::try_from(n).ok().map(|p| (p, pos(value)));
                }
            }
            "protocol" => {
                let Some(text) = unset_or_string(c, value, &f) else {
                    continue;
                };
                match text.to_ascii_lowercase().as_str() {
                    "http" => out.protocol = Some(AppProtocol::Http),
                    "https" => out.protocol = Some(AppProtocol::Https),
                    _ => c.push(
                        pos(value),
                        &f,
                        format!(
                            "unknown protocol `{}`; use http, or https when the app serves \
                             TLS itself",
                            shorten(&text)
                        ),
                    ),
                }
            }
            // Which proxy FlatRun puts in front: here the gateway is.
            _ => {
                c.scalar(value, &f, "a string");
            }
        }
    }
    Some(out)
}

/// A string, or `None` for nothing or an empty string (FlatRun's "not set");
/// a problem when it is a list or a mapping.
fn unset_or_string(c: &mut Checker, node: &Node, field: &str) -> Option<String> {
    let s = c.scalar(node, field, "a string")?;
    if is_null(s) || s.as_str().trim().is_empty() {
        return None;
    }
    Some(s.as_str().to_string())
}

/// Puts what `networking:` says into `meta`, refusing what contradicts
/// Fleetgate's own keys.
fn merge_networking(c: &mut Checker, meta: &mut ServiceMeta, n: Networking, domains_ok: bool) {
    let exposed = n.expose.is_none_or(|(e, _)| e);
    if let Some((d, at)) = n.domain {
        if meta.positions.domains.is_some() {
            c.push(
                at,
                "networking.domain",
                "both `domains` and `networking.domain` are given; keep one (`domains` can \
                 list several host names)",
            );
        } else if exposed {
            meta.domains = vec![d];
            meta.positions.networking_domain = Some(at);
        }
    }
    if let Some((port, at)) = n.container_port {
        if meta.positions.port.is_some() {
            c.push(
                at,
                "networking.container_port",
                "both `port` and `networking.container_port` are given; keep one (both name \
                 the port the app listens on)",
            );
        } else {
            meta.port = Some(port);
            meta.positions.container_port = Some(at);
        }
    }
    if let Some((false, at)) = n.expose {
        if meta.positions.domains.is_some() && !meta.domains.is_empty() && domains_ok {
            c.push(
                at,
                "networking.expose",
                "networking.expose is false (no route), but `domains` are given; remove one",
            );
        }
    }
    if let Some(p) = n.protocol {
        meta.protocol = p;
    }
}

/// `None` when a problem was recorded.
fn domains(c: &mut Checker, node: &Node) -> Option<Vec<String>> {
    let list = match node {
        Node::Scalar(s) if is_null(s) => return Some(Vec::new()),
        Node::Sequence(list) => list,
        _ => {
            c.push(
                pos(node),
                "domains",
                "domains must be a list of host names, like [example.com, www.example.com]",
            );
            return None;
        }
    };
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    let mut ok = true;
    for (i, item) in list.iter().enumerate() {
        let f = format!("domains[{i}]");
        let Some(text) = c.string(item, &f) else {
            ok = false;
            continue;
        };
        match domain(&text) {
            Ok(d) if !seen.insert(d.clone()) => {
                c.push(pos(item), &f, format!("the domain {d} is listed twice"));
                ok = false;
            }
            Ok(d) => out.push(d),
            Err(e) => {
                c.push(pos(item), &f, e);
                ok = false;
            }
        }
    }
    ok.then_some(out)
}

/// A host name, lower-cased: labels of 1–63 `[a-z0-9-]` neither starting nor
/// ending with `-`, at most 253 characters, with a dot (or `localhost`); a
/// leading `*.` for a wildcard.
pub fn domain(text: &str) -> Result<String, String> {
    let lower = text.trim().to_lowercase();
    let shown = shorten(&lower);
    if lower.contains("://") {
        return Err(format!(
            "`{shown}` has a scheme; give the host name alone, like example.com"
        ));
    }
    if lower.contains('/') {
        return Err(format!(
            "`{shown}` has a path; give the host name alone, like example.com"
        ));
    }
    if lower.contains(':') {
        return Err(format!(
            "`{shown}` has a port; give the host name alone (the port goes in `port:`)"
        ));
    }
    if lower.ends_with('.') {
        return Err(format!("`{shown}` ends with a dot; leave it out"));
    }
    if lower.len() > 253 {
        return Err(format!(
            "`{shown}` is {} characters long; a host name has at most 253",
            lower.len()
        ));
    }
    let name = lower.strip_prefix("*.").unwrap_or(&lower);
    if name != "localhost" && !name.contains('.') {
        return Err(format!(
            "`{shown}` is not a full host name; it needs a dot (example.com), or to be localhost"
        ));
    }
    for label in name.split('.') {
        if label.contains('*') {
            return Err(format!(
                "`{shown}`: a wildcard is allowed only as the whole first label (*.example.com)"
            ));
        }
        if label.is_empty() || label.len() > 63 {
            return Err(format!(
                "`{shown}` has a label of {} characters; each part between dots has 1 to 63",
                label.len()
            ));
        }
        if let Some(bad) = label
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
        {
            return Err(format!(
                "`{shown}` holds `{bad}`; host names have letters, digits, `-` and dots \
                 (write international names as xn--…)"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("`{shown}` has a part starting or ending with `-`"));
        }
    }
    if name
        .rsplit('.')
        .next()
        .is_some_and(|tld| tld.chars().all(|c| c.is_ascii_digit()))
    {
        return Err(format!(
            "`{shown}` looks like an IP address; domains are host names"
        ));
    }
    Ok(lower)
}

/// `ssl: true` or `{enabled, email}` (`enabled` defaults to true when the
/// mapping is written: asking for an email only makes sense with a certificate).
fn ssl(c: &mut Checker, node: &Node) -> Option<SslMeta> {
    if let Node::Scalar(_) = node {
        let enabled = c.boolean(node, "ssl")?;
        return Some(SslMeta {
            enabled,
            email: None,
        });
    }
    let map = c.mapping(node, "ssl", "ssl")?;
    let mut out = SslMeta {
        enabled: true,
        email: None,
    };
    for (key, value) in map.iter() {
        if !c.known_key(key, "ssl", &["enabled", "email"], "ssl") {
            continue;
        }
        let f = format!("ssl.{}", key.as_str());
        if key.as_str() == "enabled" {
            if let Some(b) = c.boolean(value, &f) {
                out.enabled = b;
            }
        } else if let Some(email) = c.string(value, &f) {
            let valid = email.split_once('@').is_some_and(|(user, host)| {
                !user.is_empty() && !host.is_empty() && !host.contains('@')
            }) && !email.contains(char::is_whitespace);
            if valid {
                out.email = Some(email);
            } else {
                c.push(
                    pos(value),
                    &f,
                    format!(
                        "`{}` is not an email address (name@example.com)",
                        shorten(&email)
                    ),
                );
            }
        }
    }
    Some(out)
}

fn positive_duration(c: &mut Checker, node: &Node, field: &str) -> Option<Duration> {
    let d = c.duration(node, field)?;
    if d.is_zero() {
        c.push(pos(node), field, "this must be longer than 0s");
        return None;
    }
    Some(d)
}

/// `{path, interval, timeout, expected_status}`.
fn http_check(c: &mut Checker, node: &Node) -> Option<HttpCheck> {
    let map = c.mapping(node, "healthcheck", "healthcheck")?;
    let known = ["path", "interval", "timeout", "expected_status"];
    let mut check = HttpCheck {
        path: String::new(),
        interval: Duration::from_secs(10),
        timeout: Duration::from_secs(5),
        expected_status: None,
    };
    let mut ok = true;
    for (key, value) in map.iter() {
        if !c.known_key(key, "healthcheck", &known, "healthcheck") {
            ok = false;
            continue;
        }
        let f = format!("healthcheck.{}", key.as_str());
        match key.as_str() {
            "path" => match c.string(value, &f) {
                Some(p) if p.starts_with('/') && !p.contains(char::is_whitespace) => {
                    check.path = p;
                }
                Some(p) => {
                    c.push(
                        pos(value),
                        &f,
                        format!(
                            "the path `{}` must start with `/` and hold no blanks (like /health)",
                            shorten(&p)
                        ),
                    );
                    ok = false;
                }
                None => ok = false,
            },
            "interval" => match positive_duration(c, value, &f) {
                Some(d) => check.interval = d,
                None => ok = false,
            },
            "timeout" => match positive_duration(c, value, &f) {
                Some(d) => check.timeout = d,
                None => ok = false,
            },
            _ => match c.number(value, &f, 100, 599) {
                Some(n) => check.expected_status = u16::try_from(n).ok(),
                None => ok = false,
            },
        }
    }
    if check.path.is_empty() && ok {
        let at = map
            .keys()
            .next()
            .map(scalar_pos)
            .unwrap_or_else(|| pos(node));
        c.push(at, "healthcheck", "healthcheck needs path (like /health)");
        return None;
    }
    ok.then_some(check)
}

/// `{requests, window}`.
fn rate_limit(c: &mut Checker, node: &Node) -> Option<RateLimitMeta> {
    let map = c.mapping(node, "rate_limit", "rate_limit")?;
    let mut requests = None;
    let mut window = None;
    let mut ok = true;
    for (key, value) in map.iter() {
        if !c.known_key(key, "rate_limit", &["requests", "window"], "rate_limit") {
            ok = false;
            continue;
        }
        let f = format!("rate_limit.{}", key.as_str());
        if key.as_str() == "requests" {
            requests = c
                .number(value, &f, 1, 1_000_000)
                .and_then(|n| u32::try_from(n).ok());
            ok &= requests.is_some();
        } else {
            match c.duration(value, &f) {
                Some(d) if d < Duration::from_secs(1) => {
                    c.push(pos(value), &f, "the window must be at least 1s");
                    ok = false;
                }
                Some(d) => window = Some(d),
                None => ok = false,
            }
        }
    }
    if !ok {
        return None;
    }
    let at = map
        .keys()
        .next()
        .map(scalar_pos)
        .unwrap_or_else(|| pos(node));
    match (requests, window) {
        (Some(requests), Some(window)) => Some(RateLimitMeta { requests, window }),
        (None, _) => {
            c.push(
                at,
                "rate_limit",
                "rate_limit needs requests (how many per window)",
            );
            None
        }
        (_, None) => {
            c.push(
                at,
                "rate_limit",
                "rate_limit needs window (a duration such as 1m)",
            );
            None
        }
    }
}

/// `{strategy, health_timeout, drain_timeout}`.
fn rollout(c: &mut Checker, node: &Node) -> Option<RolloutMeta> {
    let map = c.mapping(node, "deploy", "deploy")?;
    let mut out = RolloutMeta::default();
    let known = ["strategy", "health_timeout", "drain_timeout"];
    let mut ok = true;
    for (key, value) in map.iter() {
        if !c.known_key(key, "deploy", &known, "deploy") {
            ok = false;
            continue;
        }
        let f = format!("deploy.{}", key.as_str());
        match key.as_str() {
            "strategy" => {
                let Some(text) = c.string(value, &f) else {
                    ok = false;
                    continue;
                };
                out.strategy = match text.as_str() {
                    "auto" => Strategy::Auto,
                    "recreate" => Strategy::Recreate,
                    "blue-green" => Strategy::BlueGreen,
                    _ => {
                        c.push(
                            pos(value),
                            &f,
                            format!(
                                "unknown strategy `{}`; use auto, recreate or blue-green",
                                shorten(&text)
                            ),
                        );
                        ok = false;
                        continue;
                    }
                };
            }
            which => {
                let limit = Duration::from_secs(3600);
                match positive_duration(c, value, &f) {
                    Some(d) if d > limit => {
                        c.push(pos(value), &f, "this must be at most 1h");
                        ok = false;
                    }
                    Some(d) if which == "health_timeout" => out.health_timeout = d,
                    Some(d) => out.drain_timeout = d,
                    None => ok = false,
                }
            }
        }
    }
    ok.then_some(out)
}

fn driver(c: &mut Checker, node: &Node) -> Option<DriverKind> {
    let text = c.string(node, "driver")?;
    let kind = match text.as_str() {
        "auto" => Some(DriverKind::Auto),
        "process" => Some(DriverKind::Process),
        "docker" => Some(DriverKind::Docker),
        _ => None,
    };
    if kind.is_none() {
        c.push(
            pos(node),
            "driver",
            format!(
                "unknown driver `{}`; use auto, process or docker",
                shorten(&text)
            ),
        );
    }
    kind
}

#[cfg(test)]
mod tests;
