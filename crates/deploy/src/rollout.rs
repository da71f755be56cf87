//! How a release of a deployment replaces the running one.
//!
//! Every start of a deployment runs a new *instance* (`<deployment>.<n>`, see
//! [`crate::spec::instance_key`]). [`place`] decides the ports of the instance
//! and writes them into its services:
//!
//! - each service that publishes a port (and the routed service, whose port may
//!   come from `service.yml`) has a port; with the `blue-green` strategy every
//!   instance gets fresh ones from the operating system, with `recreate` they
//!   are the ports the files give;
//! - the services' environment gets `PORT` (the service's own port) and
//!   `PORT_<SERVICE>` for each service with a port (name upper-cased, `-` as
//!   `_`), and `$PORT`, `${PORT}`, `$PORT_<SERVICE>` and `${PORT_<SERVICE>}` in
//!   a command, an entrypoint or an environment value are replaced by the port;
//! - on Docker outside the host network, a moved service keeps its container
//!   port and `PORT` is that container port; only the host side of the mapping
//!   that publishes its port changes (bound on 127.0.0.1 unless the file names
//!   an address). Its other published ports stay as written, so a second
//!   instance cannot bind them: such a service is better `recreate`d.
//!
//! `auto` is `blue-green` when every service with a port can be moved that
//! way: on Docker outside the host network, or when the service refers to its
//! port variable; otherwise `recreate`.
//!
//! [`wait_ready`] is the gate a new instance must pass before traffic goes to
//! it: every service running (or exited with status 0), and the routed port
//! answering — the `service.yml` health check's path and status when there is
//! one, a TCP connect otherwise.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::check::{default_service, first_published, target_port};
use crate::spec::{
    ComposeFile, Driver, DriverKind, HttpCheck, ServiceMeta, ServiceSpec, ServiceState, Strategy,
};

/// The ports of one instance and its services as the driver gets them.
#[derive(Debug, Clone)]
pub struct Placement {
    pub compose: ComposeFile,
    /// Each service's port, by service name.
    pub ports: BTreeMap<String, u16>,
    /// Where the gateway sends the deployment's traffic.
    pub target: Option<u16>,
    /// `recreate` or `blue-green` (never `auto`).
    pub strategy: Strategy,
}

/// `PORT_<SERVICE>`.
pub fn port_variable(service: &str) -> String {
    format!("PORT_{}", service.to_ascii_uppercase().replace('-', "_"))
}

/// The service that receives the traffic.
fn routed<'a>(compose: &'a ComposeFile, meta: &ServiceMeta) -> Option<&'a ServiceSpec> {
    match &meta.service {
        Some(name) => compose.service(name),
        None => default_service(compose),
    }
}

fn on_bridge(kind: DriverKind, service: &ServiceSpec) -> bool {
    kind == DriverKind::Docker && service.network_mode.as_deref() != Some("host")
}

/// Whether `text` refers to variable `var` as `$VAR` or `${VAR}`.
fn mentions(text: &str, var: &str) -> bool {
    substitute(text, var, "\u{0}") != text
}

fn refers_to_port(service: &ServiceSpec) -> bool {
    let own = port_variable(&service.name);
    let words = service
        .command
        .iter()
        .chain(service.entrypoint.iter())
        .flatten()
        .chain(service.environment.values());
    words
        .into_iter()
        .any(|w| mentions(w, "PORT") || mentions(w, &own))
}

/// The strategy `auto` stands for with these files on this driver.
pub fn strategy(compose: &ComposeFile, meta: &ServiceMeta, kind: DriverKind) -> Strategy {
    match meta.rollout.strategy {
        Strategy::Auto => {}
        chosen => return chosen,
    }
    let ports = fixed_ports(compose, meta);
    let movable = !ports.is_empty()
        && ports.keys().all(|name| {
            compose
                .service(name)
                .is_some_and(|s| on_bridge(kind, s) || refers_to_port(s))
        });
    if movable {
        Strategy::BlueGreen
    } else {
        Strategy::Recreate
    }
}

/// The ports the files give each service: the routed one's is the traffic's
/// port, the others' their first published host port.
fn fixed_ports(compose: &ComposeFile, meta: &ServiceMeta) -> BTreeMap<String, u16> {
    let mut ports = BTreeMap::new();
    for s in &compose.services {
        if let Some(p) = first_published(s) {
            ports.insert(s.name.clone(), p);
        }
    }
    if let (Some(s), Some(p)) = (routed(compose, meta), target_port(compose, meta)) {
        ports.insert(s.name.clone(), p);
    }
    ports
}

/// A port no one listens on now, from the operating system.
pub fn free_port() -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    Ok(listener.local_addr()?.port())
}

/// Replaces `$var` (not followed by a name character) and `${var}` in `text`.
pub fn substitute(text: &str, var: &str, value: &str) -> String {
    let braced = format!("${{{var}}}");
    let text = text.replace(&braced, value);
    let bare = format!("${var}");
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(at) = rest.find(&bare) {
        let after = &rest[at + bare.len()..];
        let continues = after
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        out.push_str(&rest[..at]);
        out.push_str(if continues { &bare } else { value });
        rest = after;
    }
    out.push_str(rest);
    out
}

/// The ports of a new instance and the files its driver runs (see the module's
/// doc).
pub fn place(
    compose: &ComposeFile,
    meta: &ServiceMeta,
    kind: DriverKind,
) -> std::io::Result<Placement> {
    let strategy = strategy(compose, meta, kind);
    let fixed = fixed_ports(compose, meta);
    let mut ports = BTreeMap::new();
    for (name, port) in &fixed {
        let port = match strategy {
            Strategy::BlueGreen => free_port()?,
            _ => *port,
        };
        ports.insert(name.clone(), port);
    }
    let routed_name = routed(compose, meta).map(|s| s.name.clone());
    let target = routed_name.as_ref().and_then(|n| ports.get(n)).copied();
    let mut compose = compose.clone();
    for s in &mut compose.services {
        let bridge = on_bridge(kind, s);
        // Inside a container on a bridge the service listens on its container
        // port; only the host side moves.
        let own = match (ports.get(&s.name), bridge) {
            (Some(host), true) => {
                let moved = strategy == Strategy::BlueGreen;
                // The mapping the files' port is published by (the first, failing that).
                let fixed_port = fixed.get(&s.name).copied();
                let at = s
                    .ports
                    .iter()
                    .position(|m| m.host.is_some() && m.host == fixed_port)
                    .unwrap_or(0);
                match s.ports.get_mut(at) {
                    Some(mapping) => {
                        if moved {
                            mapping.host = Some(*host);
                            mapping
                                .host_ip
                                .get_or_insert_with(|| "127.0.0.1".to_string());
                        }
                        Some(mapping.container)
                    }
                    None => Some(*host),
                }
            }
            (Some(port), false) => Some(*port),
            (None, _) => None,
        };
        let mut vars: Vec<(String, u16)> = ports
            .iter()
            .map(|(name, port)| (port_variable(name), *port))
            .collect();
        if let Some(own) = own {
            vars.push(("PORT".to_string(), own));
        }
        // Longer names first: `$PORT_WEB` before `$PORT`.
        vars.sort_by_key(|(name, _)| std::cmp::Reverse(name.len()));
        let fill = |word: &mut String| {
            for (name, port) in &vars {
                if word.contains('$') {
                    *word = substitute(word, name, &port.to_string());
                }
            }
        };
        for word in s
            .command
            .iter_mut()
            .chain(s.entrypoint.iter_mut())
            .flatten()
        {
            fill(word);
        }
        for value in s.environment.values_mut() {
            fill(value);
        }
        for (name, port) in &vars {
            s.environment.insert(name.clone(), port.to_string());
        }
    }
    Ok(Placement {
        compose,
        ports,
        target,
        strategy,
    })
}

/// Waits until the instance `key` runs on `driver`, every other service's
/// port accepts connections and its routed `target` answers (see the module's
/// doc), at most `timeout`. The error says what was still wrong.
pub async fn wait_ready(
    driver: &dyn Driver,
    key: &str,
    placement: &Placement,
    check: Option<&HttpCheck>,
    timeout: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let mut last;
    loop {
        match services_ready(driver, key) {
            Err(failed) => return Err(failed),
            Ok(Some(waiting)) => last = waiting,
            Ok(None) => match listening(placement, check).await {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            },
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "not ready within {} s: {last}",
                timeout.as_secs_f64()
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The services' ports accept connections, the routed one passing `check`.
async fn listening(placement: &Placement, check: Option<&HttpCheck>) -> Result<(), String> {
    for (service, port) in &placement.ports {
        if Some(*port) != placement.target {
            probe(*port, None)
                .await
                .map_err(|e| format!("service {service}: {e}"))?;
        }
    }
    match placement.target {
        Some(port) => probe(port, check).await,
        None => Ok(()),
    }
}

/// Restarts of a service, before its new instance was ready, after which the
/// release is dropped rather than waited for.
const CRASH_LOOP_RESTARTS: u32 = 3;

/// `Err` when a service failed for good (or crash-loops); `Ok(Some(why))`
/// while one is not running yet; `Ok(None)` when all run.
fn services_ready(driver: &dyn Driver, key: &str) -> Result<Option<String>, String> {
    let statuses = driver.status(key);
    if statuses.is_empty() {
        return Ok(Some("no service reported yet".into()));
    }
    for s in &statuses {
        let why = || s.last_error.clone().unwrap_or_default();
        match s.state {
            ServiceState::Running => {}
            ServiceState::Exited if s.exit_code == Some(0) => {}
            ServiceState::Failed => {
                return Err(format!("service {} failed: {}", s.name, why()));
            }
            ServiceState::Exited => {
                return Err(format!(
                    "service {} exited with status {}: {}",
                    s.name,
                    s.exit_code.unwrap_or(-1),
                    why()
                ));
            }
            // A service that keeps exiting before the instance was ever ready
            // will not become ready by waiting out the health timeout.
            ServiceState::Restarting if s.restarts >= CRASH_LOOP_RESTARTS => {
                return Err(format!(
                    "service {} keeps exiting ({} restarts before it was ready): {}",
                    s.name,
                    s.restarts,
                    why()
                ));
            }
            other => {
                return Ok(Some(format!(
                    "service {} is {}",
                    s.name,
                    serde_json::to_value(other)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default()
                )))
            }
        }
    }
    Ok(None)
}

/// One try of the routed port: the HTTP check, or a connect.
pub async fn probe(port: u16, check: Option<&HttpCheck>) -> Result<(), String> {
    let wait = check.map_or(Duration::from_secs(1), |c| c.timeout);
    let attempt = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| format!("port {port} does not accept connections: {e}"))?;
        let Some(check) = check else {
            return Ok(());
        };
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: fleetgate-release-check\r\nConnection: close\r\n\r\n",
            check.path
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("the health check could not be sent: {e}"))?;
        let mut head = Vec::with_capacity(64);
        let mut buf = [0u8; 256];
        while !head.contains(&b'\n') && head.len() < 4096 {
            let n = stream
                .read(&mut buf)
                .await
                .map_err(|e| format!("the health check got no answer: {e}"))?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        let line = String::from_utf8_lossy(&head);
        let status: Option<u16> = line
            .lines()
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|code| code.parse().ok());
        let Some(status) = status else {
            return Err(format!(
                "GET {} on port {port} did not answer HTTP",
                check.path
            ));
        };
        let good = match check.expected_status {
            Some(expected) => status == expected,
            None => (200..400).contains(&status),
        };
        if good {
            Ok(())
        } else {
            Err(format!(
                "GET {} on port {port} answered {status}",
                check.path
            ))
        }
    };
    tokio::time::timeout(wait, attempt)
        .await
        .unwrap_or_else(|_| Err(format!("port {port} did not answer within {wait:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::parse_files;

    #[test]
    fn substitutes_both_forms_and_only_whole_names() {
        assert_eq!(substitute("--port=$PORT", "PORT", "81"), "--port=81");
        assert_eq!(substitute("${PORT}x", "PORT", "81"), "81x");
        assert_eq!(substitute("$PORT_WEB $PORT", "PORT", "81"), "$PORT_WEB 81");
        assert_eq!(substitute("$$PORT", "PORT", "81"), "$81");
        assert_eq!(substitute("no vars", "PORT", "81"), "no vars");
    }

    #[test]
    fn blue_green_gives_fresh_ports_and_fills_them_in() {
        let (compose, meta) = parse_files(
            "services:\n  web:\n    command: serve --port $PORT --api http://127.0.0.1:${PORT_API}\n    ports: [\"8080:8080\"]\n  api:\n    command: api --listen 127.0.0.1:$PORT\n    ports: [\"9000:9000\"]\n",
            "domains: [app.example.com]\nservice: web\n",
        )
        .expect("test value");
        assert_eq!(
            strategy(&compose, &meta, DriverKind::Process),
            Strategy::BlueGreen
        );
        let p = place(&compose, &meta, DriverKind::Process).expect("test value");
        let web = p.ports["web"];
        let api = p.ports["api"];
        assert_ne!(web, 8080);
        assert_ne!(api, 9000);
        assert_eq!(p.target, Some(web));
        let cmd = p
            .compose
            .service("web")
            .expect("test value")
            .command
            .clone()
            .expect("test value");
        assert_eq!(
            cmd,
            vec![
                "serve".to_string(),
                "--port".into(),
                web.to_string(),
                "--api".into(),
                format!("http://127.0.0.1:{api}")
            ]
        );
        let env = &p.compose.service("api").expect("test value").environment;
        assert_eq!(env["PORT"], api.to_string());
        assert_eq!(env["PORT_WEB"], web.to_string());
    }

    #[test]
    fn a_fixed_port_app_is_recreated() {
        let (compose, meta) = parse_files(
            "services:\n  web:\n    command: serve --port 8080\n    ports: [\"8080:8080\"]\n",
            "domains: [app.example.com]\n",
        )
        .expect("test value");
        let p = place(&compose, &meta, DriverKind::Process).expect("test value");
        assert_eq!(p.strategy, Strategy::Recreate);
        assert_eq!(p.target, Some(8080));
        assert_eq!(
            p.compose.service("web").expect("test value").environment["PORT"],
            "8080"
        );
    }

    #[test]
    fn docker_bridge_moves_the_host_side_only() {
        let (compose, meta) = parse_files(
            "services:\n  web:\n    image: busybox\n    ports: [\"8080:80\"]\n",
            "domains: [app.example.com]\n",
        )
        .expect("test value");
        let p = place(&compose, &meta, DriverKind::Docker).expect("test value");
        assert_eq!(p.strategy, Strategy::BlueGreen);
        let web = p.compose.service("web").expect("test value");
        assert_eq!(web.ports[0].container, 80);
        assert_eq!(web.ports[0].host, p.target);
        assert_eq!(web.ports[0].host_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(web.environment["PORT"], "80");
    }

    #[test]
    fn docker_bridge_moves_the_routed_mapping() {
        let (compose, meta) = parse_files(
            "services:\n  web:\n    image: busybox\n    ports: [\"127.0.0.1:9000:9000\", \"127.0.0.1:8081:80\"]\n",
            "domains: [app.example.com]\nport: 80\n",
        )
        .expect("test value");
        let p = place(&compose, &meta, DriverKind::Docker).expect("test value");
        let web = p.compose.service("web").expect("test value");
        assert_eq!(web.ports[0].host, Some(9000), "left alone");
        assert_eq!(web.ports[1].host, p.target);
        assert_ne!(p.target, Some(8081));
        assert_eq!(web.environment["PORT"], "80");
    }

    #[test]
    fn an_explicit_strategy_wins() {
        let (compose, meta) = parse_files(
            "services:\n  web:\n    command: serve $PORT\n    ports: [\"8080:8080\"]\n",
            "domains: [app.example.com]\ndeploy:\n  strategy: recreate\n",
        )
        .expect("test value");
        assert_eq!(
            strategy(&compose, &meta, DriverKind::Process),
            Strategy::Recreate
        );
    }

    proptest::proptest! {
        #[test]
        fn substitute_leaves_text_without_the_variable_alone(text in "[^$]{0,40}") {
            proptest::prop_assert_eq!(substitute(&text, "PORT", "1"), text);
        }

        #[test]
        fn any_checked_files_are_placed(
            compose in crate::compose::tests::yamlish(),
            meta in crate::compose::tests::yamlish(),
        ) {
            if let Ok((compose, meta)) = parse_files(&compose, &meta) {
                for kind in [DriverKind::Process, DriverKind::Docker] {
                    let p = place(&compose, &meta, kind).expect("placed");
                    proptest::prop_assert!(p.strategy != Strategy::Auto);
                    if let Some(target) = p.target {
                        proptest::prop_assert!(p.ports.values().any(|port| *port == target));
                    }
                    proptest::prop_assert_eq!(p.compose.services.len(), compose.services.len());
                }
            }
        }
    }
}
