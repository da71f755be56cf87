//! What a deployment declares, once its files are checked, and what a driver
//! reports of it. Every problem found in a file is a [`Problem`] naming the file,
//! the line and column, and the field (`services.web.ports[0]`).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One thing wrong with a deployment's files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// `compose.yml` or `service.yml`.
    pub file: String,
    /// 1-based; 0 when the problem is of the whole file (it is empty, say).
    pub line: usize,
    /// 1-based; 0 with line 0.
    pub column: usize,
    /// Where in the document: `services.web.ports[0]`; empty for the whole file.
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.line, self.field.is_empty()) {
            (0, true) => write!(f, "{}: {}", self.file, self.message),
            (0, false) => write!(f, "{}: {}: {}", self.file, self.field, self.message),
            (_, true) => write!(
                f,
                "{}:{}:{}: {}",
                self.file, self.line, self.column, self.message
            ),
            (_, false) => write!(
                f,
                "{}:{}:{}: {}: {}",
                self.file, self.line, self.column, self.field, self.message
            ),
        }
    }
}

/// A checked `compose.yml`: its services in file order.
#[derive(Debug, Clone, PartialEq)]
pub struct ComposeFile {
    pub services: Vec<ServiceSpec>,
}

impl ComposeFile {
    pub fn service(&self, name: &str) -> Option<&ServiceSpec> {
        self.services.iter().find(|s| s.name == name)
    }
}

/// One service of `compose.yml`.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceSpec {
    pub name: String,
    /// The line the service's key is on.
    pub line: usize,
    /// A container image (the Docker driver); the process driver refuses a
    /// service that has only an image.
    pub image: Option<String>,
    /// The program and its arguments. A string command in the file is split as a
    /// POSIX shell would split words (quotes and backslashes), without expansion.
    pub command: Option<Vec<String>>,
    pub entrypoint: Option<Vec<String>>,
    /// `environment:` as a map or a `KEY=value` list (a bare `KEY` takes the
    /// value of the variable in Fleetgate's own environment, or is left out).
    pub environment: BTreeMap<String, String>,
    pub ports: Vec<PortMapping>,
    pub volumes: Vec<VolumeMount>,
    pub healthcheck: Option<HealthCheck>,
    pub depends_on: Vec<Dependency>,
    pub restart: RestartPolicy,
    /// Relative paths are from the deployment directory.
    pub working_dir: Option<String>,
    /// `stop_grace_period`: how long a stop waits after the stop signal before
    /// killing (default 10 s).
    pub stop_grace_period: Duration,
    /// `stop_signal` (default `SIGTERM`), as a signal name.
    pub stop_signal: String,
    /// `network_mode` (Docker only): `host`, `none`, `bridge` (the engine's
    /// default bridge) or a network's name; `None` puts the service on its
    /// deployment's own network, where the other services reach it by name.
    pub network_mode: Option<String>,
}

/// A published port: `"8080:80"`, `"127.0.0.1:8080:80/udp"`, `"80"`, `80`, or the
/// long form (`target`, `published`, `host_ip`, `protocol`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortMapping {
    pub host_ip: Option<String>,
    /// `None` when only the container port is given (the host picks).
    pub host: Option<u16>,
    pub container: u16,
    pub protocol: PortProtocol,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PortProtocol {
    Tcp,
    Udp,
}

/// `"./data:/var/lib/data:ro"`, `"named:/data"`, or the long form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeMount {
    /// A host path (starting with `/`, `./` or `../`) or a volume name; `None`
    /// for an anonymous volume.
    pub source: Option<String>,
    pub target: String,
    pub read_only: bool,
}

/// `healthcheck:` of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// `["CMD", prog, args…]` or `["CMD-SHELL", "line"]` (a string test is
    /// `CMD-SHELL`); `disable: true` or `["NONE"]` gives no health check at all.
    pub test: HealthTest,
    pub interval: Duration,
    pub timeout: Duration,
    pub retries: u32,
    pub start_period: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthTest {
    /// A program and its arguments, run directly.
    Cmd(Vec<String>),
    /// A line for `/bin/sh -c`.
    Shell(String),
}

/// `depends_on:` as a list of names or a map with `condition`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dependency {
    pub service: String,
    pub condition: DependencyCondition,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DependencyCondition {
    /// `service_started` (the default).
    Started,
    /// `service_healthy`: the dependency's health check passes.
    Healthy,
    /// `service_completed_successfully`: it exited with status 0.
    CompletedSuccessfully,
}

/// `restart:` of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    /// `"no"` (the default): never restarted.
    No,
    /// `always`: restarted whatever the exit status.
    Always,
    /// `on-failure[:N]`: restarted after a non-zero exit, at most N times in a row.
    OnFailure { max_retries: Option<u32> },
    /// `unless-stopped`: like `always`; an operator's stop holds.
    UnlessStopped,
}

/// A checked `service.yml`: how the deployment is reached.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ServiceMeta {
    /// The compose service that receives the traffic (default: the only service,
    /// or the first one publishing a port).
    pub service: Option<String>,
    /// The port it listens on (`port:` or `networking.container_port:`):
    /// inside its container when it publishes that port, the gateway then
    /// going to the host port it is published on (see `check::target_port`).
    /// Default: the first host port that service publishes.
    pub port: Option<u16>,
    /// Host names routed to it through the gateway (lower-case, no port), from
    /// `domains:` or `networking.domain:`; none when `networking.expose` is
    /// false.
    pub domains: Vec<String>,
    /// How the gateway speaks to the app (`networking.protocol`).
    pub protocol: AppProtocol,
    pub ssl: SslMeta,
    pub healthcheck: Option<HttpCheck>,
    pub rate_limit: Option<RateLimitMeta>,
    /// Which driver runs it (default [`DriverKind::Auto`]).
    pub driver: DriverKind,
    /// How a new release replaces the running one (`deploy:`).
    pub rollout: RolloutMeta,
    /// Where some keys were in `service.yml`, so that problems found later (by
    /// `check::cross_check`, against `compose.yml`) can still name a line.
    pub positions: MetaPositions,
}

/// A 1-based line and column in a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

/// The positions of the keys of `service.yml` that `check::cross_check`
/// reports on; `None` when the key is absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MetaPositions {
    pub service: Option<Position>,
    pub port: Option<Position>,
    pub domains: Option<Position>,
    pub driver: Option<Position>,
    /// `networking.domain`, when it gave the domain.
    pub networking_domain: Option<Position>,
    /// `networking.container_port`, when it gave the port.
    pub container_port: Option<Position>,
}

/// How the gateway speaks to a deployment's app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AppProtocol {
    /// Plain HTTP (the default).
    #[default]
    Http,
    /// The app serves HTTPS itself; the gateway connects over TLS without
    /// checking the app's certificate (the hop is this host's loopback, and
    /// an app's certificate names its domains, not `127.0.0.1`).
    Https,
}

impl AppProtocol {
    /// The scheme of the upstream URL.
    pub fn scheme(self) -> &'static str {
        match self {
            AppProtocol::Http => "http",
            AppProtocol::Https => "https",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SslMeta {
    /// Serve the domains over HTTPS with a certificate (ACME unless one is
    /// uploaded).
    pub enabled: bool,
    /// The ACME account's contact address.
    pub email: Option<String>,
}

/// The gateway's health check of the app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpCheck {
    /// Starts with `/`.
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    /// Status codes counted healthy (default 200–399).
    pub expected_status: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitMeta {
    pub requests: u32,
    pub window: Duration,
}

/// `deploy:` of `service.yml`: how a new release replaces the running one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutMeta {
    pub strategy: Strategy,
    /// How long a new instance has to pass its checks before the release is
    /// dropped (default 30 s).
    pub health_timeout: Duration,
    /// How long a replaced instance keeps serving the requests and WebSockets
    /// it already has before it is stopped (default 30 s).
    pub drain_timeout: Duration,
}

impl Default for RolloutMeta {
    fn default() -> Self {
        RolloutMeta {
            strategy: Strategy::Auto,
            health_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(30),
        }
    }
}

/// `deploy.strategy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// `blue-green` when each instance can be given its own port (see
    /// [`crate::host`]), `recreate` otherwise.
    #[default]
    Auto,
    /// Stop the running instance, then start the new one.
    Recreate,
    /// Start the new instance beside the running one on ports of its own, switch
    /// the traffic once it passes its checks, drain and stop the old one.
    BlueGreen,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Auto => "auto",
            Strategy::Recreate => "recreate",
            Strategy::BlueGreen => "blue-green",
        }
    }
}

/// The key a driver knows one running instance of a deployment by:
/// `<deployment>.<instance>`. Deployment names hold no `.`, so the deployment is
/// what comes before it ([`deployment_of`]).
pub fn instance_key(deployment: &str, instance: u64) -> String {
    format!("{deployment}.{instance}")
}

/// The deployment an instance key (or a bare deployment name) belongs to.
pub fn deployment_of(key: &str) -> &str {
    key.split_once('.').map_or(key, |(d, _)| d)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DriverKind {
    /// Docker when every service has an image and an engine is reachable,
    /// processes otherwise.
    #[default]
    Auto,
    Process,
    Docker,
}

/// A deployment as a driver runs it.
#[derive(Debug, Clone)]
pub struct Deployment<'a> {
    pub name: &'a str,
    /// The deployment's directory (relative paths of the files are from here).
    pub dir: &'a Path,
    pub compose: &'a ComposeFile,
    pub meta: &'a ServiceMeta,
}

/// What a service is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceState {
    /// Not started (or stopped by an operator).
    Stopped,
    /// Started; its health check has not passed yet.
    Starting,
    /// Running (and healthy, if it has a health check).
    Running,
    /// Running, but its health check fails.
    Unhealthy,
    /// Exited; waiting to be restarted by its policy.
    Restarting,
    /// Exited and not to be restarted (status 0, or its policy says so).
    Exited,
    /// Could not be started (the program is missing, say), or gave up
    /// restarting.
    Failed,
}

/// A service's state as a driver reports it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServiceStatus {
    pub name: String,
    pub state: ServiceState,
    /// The main process (process driver) while it runs.
    pub pid: Option<u32>,
    /// The container id (Docker driver).
    pub container_id: Option<String>,
    /// Restarts since the deployment was started.
    pub restarts: u32,
    /// Unix milliseconds of the current run's start.
    pub started_at: Option<i64>,
    pub exit_code: Option<i32>,
    /// Why it failed or was last restarted.
    pub last_error: Option<String>,
}

/// A deployment's state from its services': `stopped`, `failed`, `running`
/// (every service up and healthy), `starting` or `degraded`.
pub fn overall(services: &[ServiceStatus]) -> &'static str {
    let any = |s: ServiceState| services.iter().any(|x| x.state == s);
    let all = |f: &dyn Fn(ServiceState) -> bool| services.iter().all(|x| f(x.state));
    if services.is_empty() || all(&|s| matches!(s, ServiceState::Stopped | ServiceState::Exited)) {
        "stopped"
    } else if any(ServiceState::Failed) {
        "failed"
    } else if all(&|s| s == ServiceState::Running) {
        "running"
    } else if all(&|s| matches!(s, ServiceState::Running | ServiceState::Starting)) {
        "starting"
    } else {
        "degraded"
    }
}

/// A service's resource use.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServiceStats {
    pub name: String,
    /// Of one core, averaged since the previous reading (0 on the first).
    pub cpu_percent: f64,
    /// Resident memory of the service's processes.
    pub memory_bytes: u64,
    /// Processes in the service (the main one and its children).
    pub processes: u32,
    pub restarts: u32,
    pub uptime_secs: u64,
}

/// One line a service wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogLine {
    /// Unix milliseconds when Fleetgate read it.
    pub at: i64,
    pub service: String,
    /// `stdout` or `stderr`; `fleetgate` for the driver's own notes (started,
    /// exited with status 1, restarting in 2 s).
    pub stream: &'static str,
    /// The line without its newline, invalid UTF-8 replaced; at most 16 KiB.
    pub line: String,
}

/// Which lines to read.
#[derive(Debug, Clone, Default)]
pub struct LogQuery {
    /// Only this service's lines.
    pub service: Option<String>,
    /// At most this many, the newest (default 200, at most 10,000).
    pub tail: Option<usize>,
    /// Only lines read at or after this Unix millisecond.
    pub since: Option<i64>,
}

/// Why a driver could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The deployment cannot run on this driver (an image without a command on
    /// the process driver, say); names the service.
    #[error("{0}")]
    Unsupported(String),
    /// No deployment of that name runs here.
    #[error("deployment {0} is not running")]
    NotRunning(String),
    /// The Docker engine cannot be reached.
    #[error("the Docker engine is unavailable: {0}")]
    Unavailable(String),
    #[error("{0}")]
    Failed(String),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Runs deployments' services.
#[async_trait::async_trait]
pub trait Driver: Send + Sync {
    /// `process` or `docker`.
    fn kind(&self) -> DriverKind;

    /// Starts every service (dependencies first, waiting for the condition each
    /// dependent asks for); replaces a running instance of the deployment.
    async fn start(&self, deployment: &Deployment<'_>) -> Result<(), DriverError>;

    /// Stops every service (dependents first): the stop signal, then a kill after
    /// the grace period. Stopping what is not running is not an error.
    async fn stop(&self, name: &str) -> Result<(), DriverError>;

    /// The services' states (all `Stopped` when not running), in file order.
    fn status(&self, name: &str) -> Vec<ServiceStatus>;

    /// The services' resource use.
    async fn stats(&self, name: &str) -> Vec<ServiceStats>;

    /// Lines written so far, oldest first.
    async fn logs(&self, name: &str, query: &LogQuery) -> Result<Vec<LogLine>, DriverError>;

    /// Lines as they are written from now on.
    fn follow(&self, name: &str) -> tokio::sync::broadcast::Receiver<LogLine>;
}
