//! The Docker driver: runs a deployment's services as containers of a Docker
//! engine reached over its unix socket ([`engine`]). Each service becomes the
//! container `fleetgate-<deployment>-<service>`, labelled
//! `fleetgate.deployment` and `fleetgate.service`, made from an image already
//! on the host (nothing is pulled at start: a host may have no registry); its
//! named volumes are the engine's volumes `fleetgate-<deployment>-<name>`.
//! Runs are known by instance key (`<deployment>.<n>`, see
//! [`crate::spec::instance_key`]): containers are named and labelled after the
//! instance, while volumes and log followers belong to the deployment, so a new
//! instance finds the data and the followers of the one it replaces.
//!
//! Networks follow Compose: the services of a deployment that name no
//! `network_mode` share the deployment's own bridge network
//! `fleetgate-<deployment>` (made at start, labelled `fleetgate.deployment`,
//! removed at stop once its containers are gone), where each is reached by its
//! service name; their published `ports` are bound on the host by the engine.
//! A service with `network_mode` gets exactly that (`host`, `none`, `bridge` —
//! the engine's default bridge — or an existing network's name). The gateway
//! reaches a routed service through the host port it publishes
//! ([`crate::check::target_port`]), never through its address on a network.
//!
//! Restarts are the engine's (the compose restart policy becomes the
//! container's), so the restart count and states come from container inspect;
//! a watcher per started deployment keeps a snapshot of them for `status`,
//! which must not wait on the engine. Logs are the engine's too: they last as
//! long as the containers do, and `stop` removes the containers. `follow`
//! streams every container's log from its start, picking the stream up again
//! after each restart.

pub mod engine;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerStateStatusEnum, EndpointSettings,
    HealthConfig, HealthStatusEnum, HostConfig, NetworkCreateRequest, NetworkingConfig,
    PortBinding, RestartPolicy as DockerRestart, RestartPolicyNameEnum, VolumeCreateOptions,
};
use bollard::query_parameters::{
    CreateContainerOptions, InspectContainerOptions, InspectNetworkOptions, ListContainersOptions,
    LogsOptions, RemoveContainerOptions, StartContainerOptions, StatsOptions, StopContainerOptions,
};
use bollard::Docker;
use futures::StreamExt;
use tokio::sync::broadcast;
use tokio::task::JoinSet;

use crate::process::logs::{cut, MAX_LINE_BYTES, MAX_TAIL};
use crate::process::{dependency_order, logs::check_name};
use crate::spec::{
    deployment_of, DependencyCondition, Deployment, Driver, DriverError, DriverKind, HealthTest,
    LogLine, LogQuery, PortProtocol, RestartPolicy, ServiceSpec, ServiceState, ServiceStats,
    ServiceStatus,
};
pub use engine::{Engine, EngineError, CALL_TIMEOUT, DEFAULT_SOCKET};

/// The label naming a container's deployment.
pub const LABEL_DEPLOYMENT: &str = "fleetgate.deployment";
/// The label naming a container's service.
pub const LABEL_SERVICE: &str = "fleetgate.service";

/// `LogQuery::tail` when none is asked for (as the process driver).
const DEFAULT_TAIL: usize = 200;
/// Lines a follower may fall behind before it misses some.
const FOLLOW_CAPACITY: usize = 1024;
/// How often the watcher refreshes the states.
const WATCH_EVERY: Duration = Duration::from_millis(1000);
/// The longest wait for a dependency's condition (healthy, completed).
const MAX_DEPENDENCY_WAIT: Duration = Duration::from_secs(300);

/// The container of a service of a deployment.
pub fn container_name(deployment: &str, service: &str) -> String {
    format!("fleetgate-{deployment}-{service}")
}

/// The engine volume of a deployment's named volume.
pub fn volume_name(deployment: &str, volume: &str) -> String {
    format!("fleetgate-{deployment}-{volume}")
}

/// The network shared by a deployment's services that name no `network_mode`.
pub fn network_name(deployment: &str) -> String {
    format!("fleetgate-{deployment}")
}

/// Whether a service joins its deployment's network (it names no
/// `network_mode`, as a Compose service joins its project's default network).
fn on_deployment_network(spec: &ServiceSpec) -> bool {
    spec.network_mode.is_none()
}

/// A service of a started deployment.
struct RunService {
    name: String,
    container: String,
    grace: Duration,
    restart: RestartPolicy,
    status: Mutex<ServiceStatus>,
}

/// A started deployment. Dropping it aborts the watcher and the log
/// followers (the containers stay until `stop`).
struct Run {
    services: Vec<Arc<RunService>>,
    /// Indices into `services`, each after its dependencies.
    order: Vec<usize>,
    tasks: Mutex<JoinSet<()>>,
}

/// A poisoned lock only says another thread panicked while holding it; the
/// tables stay consistent (each update is one insert, remove or replace).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs services as Docker containers. Share it in an `Arc`.
pub struct DockerDriver {
    engine: Arc<Engine>,
    runs: Mutex<HashMap<String, Arc<Run>>>,
    /// Start and stop of one deployment take turns; other deployments go on.
    lifecycle: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    follows: Mutex<HashMap<String, broadcast::Sender<LogLine>>>,
}

impl DockerDriver {
    /// A driver for the engine listening on `socket` (not connected until
    /// used).
    pub fn new(socket: impl Into<std::path::PathBuf>) -> Self {
        Self {
            engine: Arc::new(Engine::new(socket)),
            runs: Mutex::new(HashMap::new()),
            lifecycle: Mutex::new(HashMap::new()),
            follows: Mutex::new(HashMap::new()),
        }
    }

    /// The engine connection, for the resource endpoints.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    fn lifecycle_lock(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.lifecycle)
            .entry(name.to_string())
            .or_default()
            .clone()
    }

    fn run(&self, name: &str) -> Option<Arc<Run>> {
        lock(&self.runs).get(name).cloned()
    }

    /// The followers' channel of a deployment, shared by all its instances.
    fn sender(&self, name: &str) -> broadcast::Sender<LogLine> {
        lock(&self.follows)
            .entry(deployment_of(name).to_string())
            .or_insert_with(|| broadcast::channel(FOLLOW_CAPACITY).0)
            .clone()
    }

    /// Whether a deployment was started by this driver (and not stopped).
    pub fn is_running(&self, name: &str) -> bool {
        self.run(name).is_some()
    }

    /// The containers of a deployment, by service (label filter, stopped ones
    /// too).
    async fn containers_of(
        &self,
        docker: &Docker,
        name: &str,
    ) -> Result<Vec<(String, String)>, EngineError> {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![format!("{LABEL_DEPLOYMENT}={name}")],
        )]);
        let list = self
            .engine
            .call(
                &format!("listing the containers of {name}"),
                CALL_TIMEOUT,
                docker.list_containers(Some(ListContainersOptions {
                    all: true,
                    filters: Some(filters),
                    ..Default::default()
                })),
            )
            .await?;
        Ok(list
            .into_iter()
            .filter_map(|c| {
                let service = c.labels.as_ref()?.get(LABEL_SERVICE)?.clone();
                Some((service, c.id?))
            })
            .collect())
    }

    /// The instance keys of `deployment` that have containers on the engine
    /// (running or not): those an earlier run of Fleetgate left, say. Empty
    /// when the engine cannot be reached.
    pub async fn instance_keys(&self, deployment: &str) -> Vec<String> {
        let Ok(docker) = self.engine.client().await else {
            return Vec::new();
        };
        let filters = HashMap::from([("label".to_string(), vec![LABEL_DEPLOYMENT.to_string()])]);
        let listed = self
            .engine
            .call(
                &format!("listing the containers of {deployment}"),
                CALL_TIMEOUT,
                docker.list_containers(Some(ListContainersOptions {
                    all: true,
                    filters: Some(filters),
                    ..Default::default()
                })),
            )
            .await;
        let mut keys: Vec<String> = listed
            .unwrap_or_default()
            .into_iter()
            .filter_map(|c| c.labels?.remove(LABEL_DEPLOYMENT))
            .filter(|key| deployment_of(key) == deployment)
            .collect();
        keys.sort();
        keys.dedup();
        keys
    }

    /// Stops then removes one container (gone already is fine).
    async fn stop_and_remove(
        &self,
        docker: &Docker,
        container: &str,
        grace: Duration,
    ) -> Result<(), EngineError> {
        let secs = i32::try_from(grace.as_secs().max(1)).unwrap_or(i32::MAX);
        let stopped = self
            .engine
            .call(
                &format!("stopping container {container}"),
                grace + CALL_TIMEOUT,
                docker.stop_container(
                    container,
                    Some(StopContainerOptions {
                        t: Some(secs),
                        signal: None,
                    }),
                ),
            )
            .await;
        match stopped {
            Ok(()) | Err(EngineError::NotFound(_)) => {}
            // 304: already stopped.
            Err(EngineError::Failed(m)) if m.contains("304") => {}
            Err(e) => return Err(e),
        }
        match self
            .engine
            .call(
                &format!("removing container {container}"),
                CALL_TIMEOUT,
                docker.remove_container(
                    container,
                    Some(RemoveContainerOptions {
                        force: true,
                        v: true,
                        link: false,
                    }),
                ),
            )
            .await
        {
            Ok(()) | Err(EngineError::NotFound(_)) => Ok(()),
            // "removal of container … is already in progress".
            Err(EngineError::Conflict(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Stops a deployment's containers, dependents first, and removes them.
    async fn stop_containers(
        &self,
        docker: &Docker,
        name: &str,
        run: Option<&Run>,
    ) -> Result<(), EngineError> {
        let mut remaining = self.containers_of(docker, name).await?;
        if let Some(run) = run {
            for &index in run.order.iter().rev() {
                let Some(service) = run.services.get(index) else {
                    continue;
                };
                let mine: Vec<String> = remaining
                    .iter()
                    .filter(|(s, _)| *s == service.name)
                    .map(|(_, id)| id.clone())
                    .collect();
                remaining.retain(|(s, _)| *s != service.name);
                for id in mine {
                    self.stop_and_remove(docker, &id, service.grace).await?;
                }
            }
        }
        // Containers of services no longer in the file, or of a run this
        // process did not start (before a restart of Fleetgate).
        for (_, id) in remaining {
            self.stop_and_remove(docker, &id, Duration::from_secs(10))
                .await?;
        }
        Ok(())
    }
}

/// Reads one container's state into the service's snapshot.
async fn refresh(engine: &Engine, docker: &Docker, service: &RunService) {
    let inspected = engine
        .call(
            &format!("inspecting container {}", service.container),
            CALL_TIMEOUT,
            docker.inspect_container(&service.container, None::<InspectContainerOptions>),
        )
        .await;
    let mut status = lock(&service.status);
    match inspected {
        Ok(info) => *status = status_of(&service.name, &info, service.restart),
        Err(EngineError::NotFound(_)) => {
            status.state = ServiceState::Stopped;
            status.pid = None;
            status.last_error = Some(format!(
                "container {} is gone (removed outside Fleetgate)",
                service.container
            ));
        }
        Err(e) => status.last_error = Some(e.to_string()),
    }
}

/// Checks that the Docker driver can run the deployment's services.
fn check_services(deployment: &Deployment<'_>) -> Result<Vec<usize>, DriverError> {
    check_name("deployment", deployment.name)?;
    for spec in &deployment.compose.services {
        check_name("service", &spec.name)?;
        if spec.image.is_none() {
            return Err(DriverError::Unsupported(format!(
                "service {} has no image; the Docker driver runs images (set `driver: process` in service.yml to run commands)",
                spec.name
            )));
        }
        if let Some(dir) = &spec.working_dir {
            if !dir.starts_with('/') {
                return Err(DriverError::Failed(format!(
                    "service {}: working_dir {dir:?} must be an absolute path inside the container with the Docker driver",
                    spec.name
                )));
            }
        }
    }
    dependency_order(deployment.compose)
}

/// Whether a volume source is a host path (as the compose parser decides);
/// anything else names a volume.
fn is_host_path(source: &str) -> bool {
    source.starts_with('/')
        || source.starts_with("./")
        || source.starts_with("../")
        || source == "."
}

/// Nanoseconds, as the engine counts durations.
fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// The engine's form of a compose health check.
fn health_config(spec: &ServiceSpec) -> Option<HealthConfig> {
    let h = spec.healthcheck.as_ref()?;
    let test = match &h.test {
        HealthTest::Cmd(argv) => std::iter::once("CMD".to_string())
            .chain(argv.iter().cloned())
            .collect(),
        HealthTest::Shell(line) => vec!["CMD-SHELL".to_string(), line.clone()],
    };
    Some(HealthConfig {
        test: Some(test),
        interval: Some(nanos(h.interval)),
        timeout: Some(nanos(h.timeout)),
        retries: Some(i64::from(h.retries)),
        start_period: Some(nanos(h.start_period)),
        start_interval: None,
    })
}

fn restart_policy(policy: RestartPolicy) -> DockerRestart {
    let (name, max) = match policy {
        RestartPolicy::No => (RestartPolicyNameEnum::NO, None),
        RestartPolicy::Always => (RestartPolicyNameEnum::ALWAYS, None),
        RestartPolicy::OnFailure { max_retries } => (
            RestartPolicyNameEnum::ON_FAILURE,
            max_retries.map(i64::from),
        ),
        RestartPolicy::UnlessStopped => (RestartPolicyNameEnum::UNLESS_STOPPED, None),
    };
    DockerRestart {
        name: Some(name),
        maximum_retry_count: max,
    }
}

/// What the engine is asked to create for one service.
fn container_body(deployment: &Deployment<'_>, spec: &ServiceSpec) -> ContainerCreateBody {
    let labels = HashMap::from([
        (LABEL_DEPLOYMENT.to_string(), deployment.name.to_string()),
        (LABEL_SERVICE.to_string(), spec.name.clone()),
    ]);
    let env: Vec<String> = spec
        .environment
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    // Published ports mean nothing on the host's network (the engine drops
    // them with a warning): leave them out there.
    let host_network = spec.network_mode.as_deref() == Some("host");
    let mut exposed = HashMap::new();
    let mut bindings: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
    if !host_network {
        for p in &spec.ports {
            let proto = match p.protocol {
                PortProtocol::Tcp => "tcp",
                PortProtocol::Udp => "udp",
            };
            let key = format!("{}/{proto}", p.container);
            exposed.insert(key.clone(), HashMap::new());
            bindings
                .entry(key)
                .or_insert_with(|| Some(Vec::new()))
                .get_or_insert_with(Vec::new)
                .push(PortBinding {
                    host_ip: p.host_ip.clone(),
                    host_port: p.host.map(|h| h.to_string()),
                });
        }
    }
    let mut binds = Vec::new();
    let mut anonymous = HashMap::new();
    for v in &spec.volumes {
        let mode = if v.read_only { ":ro" } else { "" };
        match v.source.as_deref() {
            None => {
                anonymous.insert(v.target.clone(), HashMap::new());
            }
            Some(src) if src.starts_with('/') => binds.push(format!("{src}:{}{mode}", v.target)),
            Some(src) if is_host_path(src) => {
                // The engine wants absolute paths; relative ones are from the
                // deployment's directory.
                let path = deployment.dir.join(src);
                binds.push(format!("{}:{}{mode}", path.display(), v.target));
            }
            Some(named) => binds.push(format!(
                "{}:{}{mode}",
                volume_name(deployment_of(deployment.name), named),
                v.target
            )),
        }
    }
    // On the deployment's network the service is known by its name, as in
    // Compose.
    let (network_mode, networking_config) = if on_deployment_network(spec) {
        let network = network_name(deployment.name);
        let endpoint = EndpointSettings {
            aliases: Some(vec![spec.name.clone()]),
            ..Default::default()
        };
        (
            Some(network.clone()),
            Some(NetworkingConfig {
                endpoints_config: Some(HashMap::from([(network, endpoint)])),
            }),
        )
    } else {
        (spec.network_mode.clone(), None)
    };
    ContainerCreateBody {
        image: spec.image.clone(),
        cmd: spec.command.clone(),
        entrypoint: spec.entrypoint.clone(),
        env: Some(env),
        labels: Some(labels),
        working_dir: spec.working_dir.clone(),
        healthcheck: health_config(spec),
        stop_signal: Some(spec.stop_signal.clone()),
        stop_timeout: Some(i64::try_from(spec.stop_grace_period.as_secs().max(1)).unwrap_or(10)),
        exposed_ports: (!exposed.is_empty()).then_some(exposed),
        volumes: (!anonymous.is_empty()).then_some(anonymous),
        host_config: Some(HostConfig {
            binds: (!binds.is_empty()).then_some(binds),
            port_bindings: (!bindings.is_empty()).then_some(bindings),
            restart_policy: Some(restart_policy(spec.restart)),
            network_mode,
            ..Default::default()
        }),
        networking_config,
        ..Default::default()
    }
}

/// Unix nanoseconds of an RFC 3339 UTC time as the engine writes them
/// (`2026-12-07T05:28:36.361793134Z`); `None` for the engine's zero time
/// (year 1) or anything else.
fn parse_time_ns(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' {
        return None;
    }
    let num = |s: &str| s.parse::<i64>().ok();
    let year = num(text.get(0..4)?)?;
    let month = num(text.get(5..7)?)?;
    let day = num(text.get(8..10)?)?;
    let hour = num(text.get(11..13)?)?;
    let minute = num(text.get(14..16)?)?;
    let second = num(text.get(17..19)?)?;
    if year < 1970 || !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    let rest = text.get(19..)?;
    let (frac, zone) = match rest.strip_prefix('.') {
        Some(r) => {
            let digits = r.bytes().take_while(u8::is_ascii_digit).count();
            (r.get(..digits)?, r.get(digits..)?)
        }
        None => ("", rest),
    };
    let mut nanos: i64 = 0;
    for (i, c) in frac.bytes().take(9).enumerate() {
        nanos += i64::from(c - b'0') * 10i64.pow(8 - i as u32);
    }
    let offset_secs = match zone {
        "Z" | "z" => 0,
        z if z.len() == 6 && (z.starts_with('+') || z.starts_with('-')) => {
            let h = num(z.get(1..3)?)?;
            let m = num(z.get(4..6)?)?;
            let s = (h * 60 + m) * 60;
            if z.starts_with('+') {
                s
            } else {
                -s
            }
        }
        _ => return None,
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_secs;
    Some(secs * 1_000_000_000 + nanos)
}

/// The state a service is in, from its container's inspect.
fn status_of(
    service: &str,
    info: &ContainerInspectResponse,
    policy: RestartPolicy,
) -> ServiceStatus {
    let state = info.state.clone().unwrap_or_default();
    let error = state.error.clone().filter(|e| !e.is_empty());
    let exit_code = state.exit_code.and_then(|c| i32::try_from(c).ok());
    let restarts = info
        .restart_count
        .and_then(|c| u32::try_from(c).ok())
        .unwrap_or(0);
    let running = state.running.unwrap_or(false);
    let health = state.health.as_ref().and_then(|h| h.status);
    let kind = match state.status {
        Some(ContainerStateStatusEnum::RESTARTING) => ServiceState::Restarting,
        Some(ContainerStateStatusEnum::RUNNING) if running => match health {
            Some(HealthStatusEnum::STARTING) => ServiceState::Starting,
            Some(HealthStatusEnum::UNHEALTHY) => ServiceState::Unhealthy,
            _ => ServiceState::Running,
        },
        Some(ContainerStateStatusEnum::EXITED) | Some(ContainerStateStatusEnum::DEAD) => {
            let gave_up = match policy {
                RestartPolicy::OnFailure {
                    max_retries: Some(max),
                } => exit_code != Some(0) && restarts >= max,
                _ => false,
            };
            if error.is_some() || gave_up {
                ServiceState::Failed
            } else {
                ServiceState::Exited
            }
        }
        Some(ContainerStateStatusEnum::CREATED) if error.is_some() => ServiceState::Failed,
        Some(ContainerStateStatusEnum::CREATED) => ServiceState::Starting,
        _ => ServiceState::Stopped,
    };
    let last_error = error.or_else(|| match kind {
        ServiceState::Exited | ServiceState::Failed | ServiceState::Restarting
            if exit_code.is_some_and(|c| c != 0) =>
        {
            Some(format!(
                "exited with status {}",
                exit_code.unwrap_or_default()
            ))
        }
        ServiceState::Unhealthy => state
            .health
            .as_ref()
            .and_then(|h| h.log.as_ref())
            .and_then(|log| log.last())
            .and_then(|r| r.output.clone())
            .map(|o| format!("health check failing: {}", o.trim())),
        _ => None,
    });
    let pid = state
        .pid
        .filter(|p| *p > 0 && running)
        .and_then(|p| u32::try_from(p).ok());
    ServiceStatus {
        name: service.to_string(),
        state: kind,
        pid,
        container_id: info.id.clone(),
        restarts,
        started_at: state
            .started_at
            .as_deref()
            .and_then(parse_time_ns)
            .map(|ns| ns / 1_000_000),
        exit_code: if running { None } else { exit_code },
        last_error,
    }
}

/// One line of `docker logs --timestamps`: the time, then the text.
fn log_line(service: &str, stream: &'static str, raw: &str) -> Option<(i64, LogLine)> {
    let raw = raw.strip_suffix('\n').unwrap_or(raw);
    let raw = raw.strip_suffix('\r').unwrap_or(raw);
    let (stamp, text) = raw.split_once(' ').unwrap_or((raw, ""));
    let ns = parse_time_ns(stamp)?;
    let line = if text.len() > MAX_LINE_BYTES {
        cut(text)
    } else {
        text.to_string()
    };
    Some((
        ns,
        LogLine {
            at: ns / 1_000_000,
            service: service.to_string(),
            stream,
            line,
        },
    ))
}

/// The lines of one frame of the engine's log stream (`docker logs --timestamps`),
/// each with its time.
pub fn frame_lines(service: &str, frame: bollard::container::LogOutput) -> Vec<(i64, LogLine)> {
    use bollard::container::LogOutput;
    let (stream, bytes) = match frame {
        LogOutput::StdOut { message } | LogOutput::Console { message } => ("stdout", message),
        LogOutput::StdErr { message } => ("stderr", message),
        LogOutput::StdIn { .. } => return Vec::new(),
    };
    String::from_utf8_lossy(&bytes)
        .split_inclusive('\n')
        .filter_map(|raw| log_line(service, stream, raw))
        .collect()
}

/// Follows one container's log into the deployment's channel, from `since_ns`
/// on, again after each restart, until the run is dropped (the task aborted).
async fn follow_container(
    engine: Arc<Engine>,
    service: String,
    container: String,
    mut since_ns: i64,
    tx: broadcast::Sender<LogLine>,
) {
    loop {
        if let Ok(docker) = engine.client().await {
            let since = i32::try_from(since_ns / 1_000_000_000).unwrap_or(0);
            let mut stream = docker.logs(
                &container,
                Some(LogsOptions {
                    follow: true,
                    stdout: true,
                    stderr: true,
                    timestamps: true,
                    since,
                    ..Default::default()
                }),
            );
            while let Some(frame) = stream.next().await {
                let Ok(frame) = frame else { break };
                for (ns, line) in frame_lines(&service, frame) {
                    // `since` is in whole seconds: lines already sent come again.
                    if ns <= since_ns {
                        continue;
                    }
                    since_ns = ns;
                    // No follower is not an error.
                    let _ = tx.send(line);
                }
            }
        }
        // The stream ends when the container stops; it may be restarted.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Refreshes every service's snapshot until the run is dropped.
async fn watch(engine: Arc<Engine>, services: Vec<Arc<RunService>>) {
    loop {
        tokio::time::sleep(WATCH_EVERY).await;
        let docker = match engine.client().await {
            Ok(d) => d,
            Err(e) => {
                for s in &services {
                    lock(&s.status).last_error = Some(e.to_string());
                }
                continue;
            }
        };
        for s in &services {
            refresh(&engine, &docker, s).await;
        }
    }
}

impl DockerDriver {
    /// Makes sure an image is on the host; names the service if not.
    async fn require_image(
        &self,
        docker: &Docker,
        service: &str,
        image: &str,
    ) -> Result<(), DriverError> {
        match self
            .engine
            .call(
                &format!("inspecting image {image}"),
                CALL_TIMEOUT,
                docker.inspect_image(image),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(EngineError::NotFound(_)) => Err(DriverError::Failed(format!(
                "service {service}: image {image} is not present on this host; import or pull it first (POST /api/v1/images/import or /api/v1/images/pull)"
            ))),
            Err(e) => Err(e.into()),
        }
    }

    /// Creates the deployment's named volumes that do not exist yet.
    async fn ensure_volumes(
        &self,
        docker: &Docker,
        deployment: &Deployment<'_>,
    ) -> Result<(), DriverError> {
        let mut named: Vec<&str> = deployment
            .compose
            .services
            .iter()
            .flat_map(|s| &s.volumes)
            .filter_map(|v| v.source.as_deref())
            .filter(|s| !is_host_path(s))
            .collect();
        named.sort_unstable();
        named.dedup();
        for volume in named {
            let full = volume_name(deployment_of(deployment.name), volume);
            match self
                .engine
                .call(
                    &format!("inspecting volume {full}"),
                    CALL_TIMEOUT,
                    docker.inspect_volume(&full),
                )
                .await
            {
                Ok(_) => continue,
                Err(EngineError::NotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
            let labels = HashMap::from([(
                LABEL_DEPLOYMENT.to_string(),
                deployment_of(deployment.name).to_string(),
            )]);
            self.engine
                .call(
                    &format!("creating volume {full}"),
                    CALL_TIMEOUT,
                    docker.create_volume(VolumeCreateOptions {
                        name: Some(full.clone()),
                        labels: Some(labels),
                        ..Default::default()
                    }),
                )
                .await
                .map_err(|e| DriverError::Failed(format!("volume {volume}: {e}")))?;
        }
        Ok(())
    }

    /// Makes the deployment's network when a service joins it; one left by an
    /// earlier run of the deployment is used again. A network of that name
    /// that is not the deployment's is refused rather than joined.
    async fn ensure_network(
        &self,
        docker: &Docker,
        deployment: &Deployment<'_>,
    ) -> Result<(), DriverError> {
        if !deployment
            .compose
            .services
            .iter()
            .any(on_deployment_network)
        {
            return Ok(());
        }
        let name = deployment.name;
        let network = network_name(name);
        match self
            .engine
            .call(
                &format!("inspecting network {network}"),
                CALL_TIMEOUT,
                docker.inspect_network(&network, None::<InspectNetworkOptions>),
            )
            .await
        {
            Ok(found) => {
                let owner = found.labels.as_ref().and_then(|l| l.get(LABEL_DEPLOYMENT));
                return if owner.map(String::as_str) == Some(name) {
                    Ok(())
                } else {
                    Err(DriverError::Failed(format!(
                        "network {network} exists and is not deployment {name}'s (it has no \
                         label {LABEL_DEPLOYMENT}={name}); remove or rename it, or give the \
                         services a network_mode"
                    )))
                };
            }
            Err(EngineError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
        let labels = HashMap::from([(LABEL_DEPLOYMENT.to_string(), name.to_string())]);
        self.engine
            .call(
                &format!("creating network {network}"),
                CALL_TIMEOUT,
                docker.create_network(NetworkCreateRequest {
                    name: network.clone(),
                    driver: Some("bridge".into()),
                    labels: Some(labels),
                    ..Default::default()
                }),
            )
            .await
            .map(|_| ())
            .map_err(|e| match e {
                EngineError::Unavailable(why) => DriverError::Unavailable(why),
                other => DriverError::Failed(format!("network {network}: {other}")),
            })
    }

    /// Removes the deployment's network once its containers are gone (none
    /// made, or gone already, is fine). One that something else still uses is
    /// left, with a warning: the deployment itself is stopped.
    async fn remove_network(&self, docker: &Docker, name: &str) {
        let network = network_name(name);
        let found = self
            .engine
            .call(
                &format!("inspecting network {network}"),
                CALL_TIMEOUT,
                docker.inspect_network(&network, None::<InspectNetworkOptions>),
            )
            .await;
        let ours = match found {
            Ok(n) => {
                n.labels
                    .as_ref()
                    .and_then(|l| l.get(LABEL_DEPLOYMENT))
                    .map(String::as_str)
                    == Some(name)
            }
            Err(EngineError::NotFound(_)) => return,
            Err(e) => {
                tracing::warn!(deployment = %name, error = %e, "the deployment's network was not removed");
                return;
            }
        };
        if !ours {
            return;
        }
        match self
            .engine
            .call(
                &format!("removing network {network}"),
                CALL_TIMEOUT,
                docker.remove_network(&network),
            )
            .await
        {
            Ok(()) | Err(EngineError::NotFound(_)) => {}
            Err(e) => {
                tracing::warn!(deployment = %name, network = %network, error = %e, "the deployment's network was not removed")
            }
        }
    }

    /// Waits until `dependency`'s container meets `condition`.
    async fn wait_for(
        &self,
        docker: &Docker,
        deployment: &str,
        dependent: &str,
        dependency: &ServiceSpec,
        condition: DependencyCondition,
    ) -> Result<(), DriverError> {
        let container = container_name(deployment, &dependency.name);
        let limit = match (&dependency.healthcheck, condition) {
            (Some(h), DependencyCondition::Healthy) => (h.start_period
                + (h.interval + h.timeout) * (h.retries + 1)
                + Duration::from_secs(5))
            .min(MAX_DEPENDENCY_WAIT),
            _ => MAX_DEPENDENCY_WAIT,
        };
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let info = self
                .engine
                .call(
                    &format!("inspecting container {container}"),
                    CALL_TIMEOUT,
                    docker.inspect_container(&container, None::<InspectContainerOptions>),
                )
                .await
                .map_err(DriverError::from)?;
            let status = status_of(&dependency.name, &info, dependency.restart);
            match condition {
                DependencyCondition::Started => return Ok(()),
                DependencyCondition::Healthy => match status.state {
                    ServiceState::Running => return Ok(()),
                    ServiceState::Unhealthy | ServiceState::Failed | ServiceState::Exited => {
                        return Err(DriverError::Failed(format!(
                            "service {dependent} waits for {} to be healthy, but it is {}{}",
                            dependency.name,
                            state_word(status.state),
                            status
                                .last_error
                                .map(|e| format!(" ({e})"))
                                .unwrap_or_default()
                        )))
                    }
                    _ => {}
                },
                DependencyCondition::CompletedSuccessfully => {
                    let running = info.state.as_ref().and_then(|s| s.running).unwrap_or(false);
                    if !running && status.state != ServiceState::Restarting {
                        return match status.exit_code {
                            Some(0) => Ok(()),
                            code => Err(DriverError::Failed(format!(
                                "service {dependent} waits for {} to complete successfully, but it exited with status {}",
                                dependency.name,
                                code.map(|c| c.to_string()).unwrap_or_else(|| "unknown".into())
                            ))),
                        };
                    }
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(DriverError::Failed(format!(
                    "service {dependent} waited {} s for {} to be {}; it is {}",
                    limit.as_secs(),
                    dependency.name,
                    match condition {
                        DependencyCondition::Healthy => "healthy",
                        _ => "completed",
                    },
                    state_word(status.state)
                )));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Creates and starts one service's container, replacing one of the same
    /// name; returns its id.
    async fn launch(
        &self,
        docker: &Docker,
        deployment: &Deployment<'_>,
        spec: &ServiceSpec,
    ) -> Result<String, DriverError> {
        let name = container_name(deployment.name, &spec.name);
        self.stop_and_remove(docker, &name, Duration::from_secs(1))
            .await
            .map_err(DriverError::from)?;
        let created = self
            .engine
            .call(
                &format!("creating container {name}"),
                CALL_TIMEOUT,
                docker.create_container(
                    Some(CreateContainerOptions {
                        name: Some(name.clone()),
                        platform: String::new(),
                    }),
                    container_body(deployment, spec),
                ),
            )
            .await
            .map_err(|e| DriverError::Failed(format!("service {}: {e}", spec.name)))?;
        match self
            .engine
            .call(
                &format!("starting container {name}"),
                CALL_TIMEOUT,
                docker.start_container(&created.id, None::<StartContainerOptions>),
            )
            .await
        {
            Ok(()) => Ok(created.id),
            Err(EngineError::Unavailable(why)) => Err(DriverError::Unavailable(why)),
            Err(e) => Err(DriverError::Failed(format!(
                "service {}: the container did not start: {e}",
                spec.name
            ))),
        }
    }
}

fn state_word(state: ServiceState) -> &'static str {
    match state {
        ServiceState::Stopped => "stopped",
        ServiceState::Starting => "starting",
        ServiceState::Running => "running",
        ServiceState::Unhealthy => "unhealthy",
        ServiceState::Restarting => "restarting",
        ServiceState::Exited => "exited",
        ServiceState::Failed => "failed",
    }
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// CPU use of one reading, in % of one core, from the engine's cpu and
/// precpu counters (as `docker stats` computes it).
fn cpu_percent(stats: &bollard::models::ContainerStatsResponse) -> f64 {
    let (Some(cpu), Some(pre)) = (&stats.cpu_stats, &stats.precpu_stats) else {
        return 0.0;
    };
    let total = |c: &bollard::models::ContainerCpuStats| {
        c.cpu_usage
            .as_ref()
            .and_then(|u| u.total_usage)
            .unwrap_or(0)
    };
    let cpu_delta = total(cpu).saturating_sub(total(pre)) as f64;
    let system_delta = cpu
        .system_cpu_usage
        .unwrap_or(0)
        .saturating_sub(pre.system_cpu_usage.unwrap_or(0)) as f64;
    if cpu_delta <= 0.0 || system_delta <= 0.0 {
        return 0.0;
    }
    let cpus = cpu
        .online_cpus
        .filter(|n| *n > 0)
        .map(f64::from)
        .or_else(|| {
            cpu.cpu_usage
                .as_ref()
                .and_then(|u| u.percpu_usage.as_ref())
                .map(|p| p.len() as f64)
        })
        .unwrap_or(1.0);
    cpu_delta / system_delta * cpus * 100.0
}

/// Memory in use without the page cache that can be dropped (as `docker
/// stats` counts it).
fn memory_bytes(stats: &bollard::models::ContainerStatsResponse) -> u64 {
    let Some(m) = &stats.memory_stats else {
        return 0;
    };
    let usage = m.usage.unwrap_or(0);
    let inactive = m
        .stats
        .as_ref()
        .and_then(|s| {
            s.get("total_inactive_file")
                .or_else(|| s.get("inactive_file"))
        })
        .copied()
        .unwrap_or(0);
    usage.saturating_sub(inactive)
}

#[async_trait::async_trait]
impl Driver for DockerDriver {
    fn kind(&self) -> DriverKind {
        DriverKind::Docker
    }

    /// Creates and starts every service's container, dependencies first. On a
    /// failure the services started so far keep running and the deployment
    /// stays known, so `status` shows what happened and `stop` ends it.
    async fn start(&self, deployment: &Deployment<'_>) -> Result<(), DriverError> {
        let name = deployment.name;
        let order = check_services(deployment)?;
        let docker = self.engine.client().await.map_err(DriverError::from)?;
        let services = &deployment.compose.services;
        for spec in services {
            if let Some(image) = &spec.image {
                self.require_image(&docker, &spec.name, image).await?;
            }
        }
        let lifecycle = self.lifecycle_lock(name);
        let _turn = lifecycle.lock().await;
        let old = lock(&self.runs).remove(name);
        self.stop_containers(&docker, name, old.as_deref())
            .await
            .map_err(DriverError::from)?;
        drop(old);
        self.ensure_volumes(&docker, deployment).await?;
        self.ensure_network(&docker, deployment).await?;

        let run_services: Vec<Arc<RunService>> = services
            .iter()
            .map(|s| {
                Arc::new(RunService {
                    name: s.name.clone(),
                    container: container_name(name, &s.name),
                    grace: s.stop_grace_period,
                    restart: s.restart,
                    status: Mutex::new(ServiceStatus {
                        name: s.name.clone(),
                        state: ServiceState::Stopped,
                        pid: None,
                        container_id: None,
                        restarts: 0,
                        started_at: None,
                        exit_code: None,
                        last_error: None,
                    }),
                })
            })
            .collect();
        let run = Arc::new(Run {
            services: run_services.clone(),
            order: order.clone(),
            tasks: Mutex::new(JoinSet::new()),
        });
        lock(&self.runs).insert(name.to_string(), run.clone());
        let tx = self.sender(name);
        let started_ns = now_ns();
        lock(&run.tasks).spawn(watch(self.engine.clone(), run_services.clone()));

        for &index in &order {
            let (Some(spec), Some(service)) = (services.get(index), run_services.get(index)) else {
                continue;
            };
            for dep in &spec.depends_on {
                let Some(dependency) = deployment.compose.service(&dep.service) else {
                    continue;
                };
                if let Err(e) = self
                    .wait_for(&docker, name, &spec.name, dependency, dep.condition)
                    .await
                {
                    let mut status = lock(&service.status);
                    status.state = ServiceState::Failed;
                    status.last_error = Some(e.to_string());
                    return Err(e);
                }
            }
            match self.launch(&docker, deployment, spec).await {
                Ok(id) => {
                    let _ = tx.send(LogLine {
                        at: now_ns() / 1_000_000,
                        service: spec.name.clone(),
                        stream: "fleetgate",
                        line: format!(
                            "started container {} ({}) from image {}",
                            service.container,
                            id.get(..12).unwrap_or(&id),
                            spec.image.as_deref().unwrap_or_default()
                        ),
                    });
                    lock(&run.tasks).spawn(follow_container(
                        self.engine.clone(),
                        spec.name.clone(),
                        service.container.clone(),
                        started_ns,
                        tx.clone(),
                    ));
                    refresh(&self.engine, &docker, service).await;
                }
                Err(e) => {
                    let mut status = lock(&service.status);
                    status.state = ServiceState::Failed;
                    status.last_error = Some(e.to_string());
                    return Err(match e {
                        DriverError::Unavailable(_) => e,
                        other => DriverError::Failed(format!("deployment {name}: {other}")),
                    });
                }
            }
        }
        Ok(())
    }

    async fn stop(&self, name: &str) -> Result<(), DriverError> {
        let lifecycle = self.lifecycle_lock(name);
        let _turn = lifecycle.lock().await;
        let run = lock(&self.runs).remove(name);
        let docker = match self.engine.client().await {
            Ok(d) => d,
            // Nothing this driver started can be running on an engine it
            // cannot reach, unless it started the deployment itself.
            Err(e) if run.is_none() => {
                tracing::debug!(deployment = %name, error = %e, "no engine to stop on");
                return Ok(());
            }
            Err(e) => {
                // Kept, so that a later stop tries again.
                if let Some(run) = run {
                    lock(&self.runs).insert(name.to_string(), run);
                }
                return Err(e.into());
            }
        };
        let stopped = self.stop_containers(&docker, name, run.as_deref()).await;
        if let Err(e) = stopped {
            if let Some(run) = run {
                lock(&self.runs).insert(name.to_string(), run);
            }
            return Err(e.into());
        }
        self.remove_network(&docker, name).await;
        Ok(())
    }

    fn status(&self, name: &str) -> Vec<ServiceStatus> {
        let Some(run) = self.run(name) else {
            return Vec::new();
        };
        run.services
            .iter()
            .map(|s| lock(&s.status).clone())
            .collect()
    }

    async fn stats(&self, name: &str) -> Vec<ServiceStats> {
        let Some(run) = self.run(name) else {
            return Vec::new();
        };
        let Ok(docker) = self.engine.client().await else {
            return run
                .services
                .iter()
                .map(|s| ServiceStats {
                    name: s.name.clone(),
                    cpu_percent: 0.0,
                    memory_bytes: 0,
                    processes: 0,
                    restarts: lock(&s.status).restarts,
                    uptime_secs: 0,
                })
                .collect();
        };
        let readings = futures::future::join_all(run.services.iter().map(|s| {
            let docker = docker.clone();
            let engine = self.engine.clone();
            async move {
                let status = lock(&s.status).clone();
                let running = matches!(
                    status.state,
                    ServiceState::Starting | ServiceState::Running | ServiceState::Unhealthy
                );
                let reading = if running {
                    // Not one-shot: the engine waits for a second reading so
                    // that precpu holds the previous one and the delta means
                    // something.
                    let mut stream = docker.stats(
                        &s.container,
                        Some(StatsOptions {
                            stream: false,
                            one_shot: false,
                        }),
                    );
                    engine
                        .call(
                            &format!("reading the stats of {}", s.container),
                            CALL_TIMEOUT,
                            async move { stream.next().await.transpose() },
                        )
                        .await
                        .ok()
                        .flatten()
                } else {
                    None
                };
                let uptime_secs = match (running, status.started_at) {
                    (true, Some(at)) => {
                        u64::try_from((now_ns() / 1_000_000 - at) / 1000).unwrap_or(0)
                    }
                    _ => 0,
                };
                ServiceStats {
                    name: s.name.clone(),
                    cpu_percent: reading.as_ref().map(cpu_percent).unwrap_or(0.0),
                    memory_bytes: reading.as_ref().map(memory_bytes).unwrap_or(0),
                    processes: reading
                        .as_ref()
                        .and_then(|r| r.pids_stats.as_ref())
                        .and_then(|p| p.current)
                        .and_then(|c| u32::try_from(c).ok())
                        .unwrap_or(0),
                    restarts: status.restarts,
                    uptime_secs,
                }
            }
        }))
        .await;
        readings
    }

    async fn logs(&self, name: &str, query: &LogQuery) -> Result<Vec<LogLine>, DriverError> {
        let tail = query.tail.unwrap_or(DEFAULT_TAIL).min(MAX_TAIL);
        let docker = self.engine.client().await.map_err(DriverError::from)?;
        let containers = self
            .containers_of(&docker, name)
            .await
            .map_err(DriverError::from)?;
        let mut lines: Vec<(i64, LogLine)> = Vec::new();
        for (service, id) in containers {
            if query.service.as_ref().is_some_and(|s| *s != service) {
                continue;
            }
            let since = query
                .since
                .map(|ms| i32::try_from(ms.div_euclid(1000)).unwrap_or(0))
                .unwrap_or(0);
            let stream = docker.logs(
                &id,
                Some(LogsOptions {
                    follow: false,
                    stdout: true,
                    stderr: true,
                    timestamps: true,
                    since,
                    tail: tail.to_string(),
                    ..Default::default()
                }),
            );
            let frames: Vec<_> = self
                .engine
                .call(
                    &format!("reading the log of {service}"),
                    CALL_TIMEOUT,
                    async move {
                        let frames: Vec<_> = stream.collect().await;
                        frames.into_iter().collect::<Result<Vec<_>, _>>()
                    },
                )
                .await
                .map_err(DriverError::from)?;
            for frame in frames {
                lines.extend(frame_lines(&service, frame));
            }
        }
        if let Some(since) = query.since {
            lines.retain(|(_, l)| l.at >= since);
        }
        lines.sort_by_key(|(ns, _)| *ns);
        let skip = lines.len().saturating_sub(tail);
        Ok(lines.into_iter().skip(skip).map(|(_, l)| l).collect())
    }

    fn follow(&self, name: &str) -> broadcast::Receiver<LogLine> {
        self.sender(name).subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_times_parse() {
        assert_eq!(parse_time_ns("1970-01-01T00:00:01Z"), Some(1_000_000_000));
        assert_eq!(
            parse_time_ns("2026-12-07T05:28:36.361793134Z"),
            Some(1_796_621_316_361_793_134)
        );
        assert_eq!(
            parse_time_ns("2026-12-07T06:28:36.5+01:00"),
            Some(1_796_621_316_500_000_000)
        );
        assert_eq!(parse_time_ns("0001-01-01T00:00:00Z"), None);
        assert_eq!(parse_time_ns("yesterday"), None);
    }

    #[test]
    fn log_lines_split_time_and_text() {
        let (ns, line) = log_line(
            "web",
            "stderr",
            "2026-12-07T05:28:36.000000001Z hello world\n",
        )
        .expect("a line");
        assert_eq!(ns, 1_796_621_316_000_000_001);
        assert_eq!(line.line, "hello world");
        assert_eq!(line.stream, "stderr");
        assert_eq!(line.at, 1_796_621_316_000);
    }

    #[test]
    fn restart_policies_map_to_the_engine() {
        let p = restart_policy(RestartPolicy::OnFailure {
            max_retries: Some(3),
        });
        assert_eq!(p.name, Some(RestartPolicyNameEnum::ON_FAILURE));
        assert_eq!(p.maximum_retry_count, Some(3));
        assert_eq!(
            restart_policy(RestartPolicy::No).name,
            Some(RestartPolicyNameEnum::NO)
        );
    }
}
