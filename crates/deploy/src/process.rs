//! The process driver: runs a deployment's services as supervised processes
//! on this host, without containers. It owns the table of started
//! deployments, checks a deployment before starting it (commands, signals,
//! dependencies), orders its services, and answers status, stats and logs.
//! One service's life (spawn, health, stop, restart) is [`supervisor`]'s; the
//! log files are [`logs`]'; `/proc` reading is [`stats`]'.

pub mod logs;
pub mod stats;
mod supervisor;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::broadcast;
use tokio::task::JoinSet;

use crate::spec::{
    deployment_of, ComposeFile, DependencyCondition, Deployment, Driver, DriverError, DriverKind,
    LogLine, LogQuery, ServiceState, ServiceStats, ServiceStatus,
};
use logs::{check_name, LogStore};
use supervisor::{parse_signal, RunShared, Service};

/// A log file is rotated before it would pass this size…
pub const DEFAULT_LOG_MAX_BYTES: u64 = 10 * 1024 * 1024;
/// …and this many rotated files are kept.
pub const DEFAULT_LOG_KEEP: usize = 3;

/// A started deployment: its services and the supervisor tasks. Dropping it
/// aborts the tasks, and with them every process they own.
struct Run {
    shared: Arc<RunShared>,
    /// Indices into `shared.services`, each after its dependencies.
    order: Vec<usize>,
    tasks: Mutex<JoinSet<()>>,
}

/// The previous CPU reading of a service, for the next one's average.
struct CpuSample {
    pgid: i32,
    ticks: u64,
    at: Instant,
}

/// Runs services as processes. Share it in an `Arc`; every method takes
/// `&self`.
pub struct ProcessDriver {
    logs: Arc<LogStore>,
    runs: Mutex<HashMap<String, Arc<Run>>>,
    /// Start and stop of one deployment take turns; other deployments go on.
    lifecycle: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    cpu: Mutex<HashMap<(String, String), CpuSample>>,
    ticks_per_sec: u64,
    page_size: u64,
    proc_root: PathBuf,
}

/// A poisoned lock only says another thread panicked while holding it; the
/// tables stay consistent (each update is one insert or remove).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ProcessDriver {
    /// Logs go to `<logs_root>/<deployment>/<service>.log`, rotated at 10 MiB
    /// with 3 old files kept.
    pub fn new(logs_root: PathBuf) -> Self {
        Self::with_log_rotation(logs_root, DEFAULT_LOG_MAX_BYTES, DEFAULT_LOG_KEEP)
    }

    /// Like [`ProcessDriver::new`], rotating a log file before it passes
    /// `max_bytes` and keeping `keep` rotated files.
    pub fn with_log_rotation(logs_root: PathBuf, max_bytes: u64, keep: usize) -> Self {
        Self {
            logs: Arc::new(LogStore::new(logs_root, max_bytes, keep)),
            runs: Mutex::new(HashMap::new()),
            lifecycle: Mutex::new(HashMap::new()),
            cpu: Mutex::new(HashMap::new()),
            ticks_per_sec: stats::ticks_per_sec(),
            page_size: stats::page_size(),
            proc_root: PathBuf::from("/proc"),
        }
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

    /// Stops a run's services, dependents first, and waits for their
    /// supervisors.
    async fn stop_run(&self, run: &Run) {
        for &index in run.order.iter().rev() {
            let Some(service) = run.shared.services.get(index) else {
                continue;
            };
            service.stop.send_replace(true);
            let mut progress = service.progress.subscribe();
            // `done` is set however the supervisor ends; an error here means
            // the service is gone altogether, which is as good.
            let _ = progress.wait_for(|p| p.done).await;
        }
        let mut tasks = std::mem::take(&mut *lock(&run.tasks));
        while tasks.join_next().await.is_some() {}
    }
}

/// What `start` checked and worked out of a compose file.
struct Plan {
    services: Vec<Service>,
    order: Vec<usize>,
}

/// Checks that the process driver can run `compose` and orders its services
/// dependencies first (file order among equals).
fn plan(compose: &ComposeFile) -> Result<Plan, DriverError> {
    let mut services = Vec::with_capacity(compose.services.len());
    let mut index = HashMap::new();
    for spec in &compose.services {
        check_name("service", &spec.name)?;
        if index.insert(spec.name.as_str(), services.len()).is_some() {
            return Err(DriverError::Failed(format!(
                "service {} is declared twice",
                spec.name
            )));
        }
        // Compose semantics: with an entrypoint, the command is its
        // arguments.
        let argv: Vec<String> = spec
            .entrypoint
            .iter()
            .flatten()
            .chain(spec.command.iter().flatten())
            .cloned()
            .collect();
        if spec.entrypoint.is_none() && spec.command.is_none() {
            let image = spec.image.as_deref().unwrap_or("none");
            return Err(DriverError::Unsupported(format!(
                "service {} has only an image ({image}); the process driver runs a `command:` or `entrypoint:`",
                spec.name
            )));
        }
        if argv.first().is_none_or(|program| program.is_empty()) {
            return Err(DriverError::Unsupported(format!(
                "service {} has an empty command: nothing to run",
                spec.name
            )));
        }
        let Some(signal) = parse_signal(&spec.stop_signal) else {
            return Err(DriverError::Failed(format!(
                "service {}: stop_signal {:?} is not a signal name (SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGKILL, SIGUSR1, SIGUSR2…)",
                spec.name, spec.stop_signal
            )));
        };
        services.push(Service::new(spec.clone(), argv, signal));
    }
    let order = dependency_order(compose)?;
    Ok(Plan { services, order })
}

/// Checks the services' names and dependencies and orders them dependencies
/// first (file order among equals); shared with the Docker driver.
pub(crate) fn dependency_order(compose: &ComposeFile) -> Result<Vec<usize>, DriverError> {
    let mut index = HashMap::new();
    for (i, spec) in compose.services.iter().enumerate() {
        if index.insert(spec.name.as_str(), i).is_some() {
            return Err(DriverError::Failed(format!(
                "service {} is declared twice",
                spec.name
            )));
        }
    }
    for spec in &compose.services {
        for dep in &spec.depends_on {
            let Some(&target) = index.get(dep.service.as_str()) else {
                return Err(DriverError::Failed(format!(
                    "service {} depends on {}, which is not a service of this deployment",
                    spec.name, dep.service
                )));
            };
            if dep.service == spec.name {
                return Err(DriverError::Failed(format!(
                    "service {} depends on itself",
                    spec.name
                )));
            }
            if dep.condition == DependencyCondition::Healthy
                && compose.services[target].healthcheck.is_none()
            {
                return Err(DriverError::Failed(format!(
                    "service {} waits for {} to be healthy, but {} has no healthcheck",
                    spec.name, dep.service, dep.service
                )));
            }
        }
    }
    // Kahn's algorithm, always taking the first ready service in file order.
    let count = compose.services.len();
    let mut placed = vec![false; count];
    let mut order = Vec::with_capacity(count);
    while order.len() < count {
        let ready = (0..count).find(|&i| {
            !placed[i]
                && compose.services[i].depends_on.iter().all(|d| {
                    index
                        .get(d.service.as_str())
                        .is_some_and(|&target| placed[target])
                })
        });
        let Some(next) = ready else {
            let cycle: Vec<&str> = (0..count)
                .filter(|&i| !placed[i])
                .map(|i| compose.services[i].name.as_str())
                .collect();
            return Err(DriverError::Failed(format!(
                "services {} depend on each other in a cycle",
                cycle.join(", ")
            )));
        };
        placed[next] = true;
        order.push(next);
    }
    Ok(order)
}

#[async_trait::async_trait]
impl Driver for ProcessDriver {
    fn kind(&self) -> DriverKind {
        DriverKind::Process
    }

    /// Starts every service and waits until each has been tried (after its
    /// dependencies' conditions). Services that could not start are named in
    /// the error; the rest keep running and the deployment stays known, so
    /// `status` and `logs` show what happened and `stop` ends it.
    async fn start(&self, deployment: &Deployment<'_>) -> Result<(), DriverError> {
        let name = deployment.name;
        check_name("deployment", name)?;
        let plan = plan(deployment.compose)?;
        let run = {
            let lifecycle = self.lifecycle_lock(name);
            let _turn = lifecycle.lock().await;
            if let Some(old) = self.run(name) {
                self.stop_run(&old).await;
            }
            lock(&self.cpu).retain(|(deployment, _), _| deployment != name);
            let shared = Arc::new(RunShared {
                // Every instance of a deployment writes to its one log.
                name: deployment_of(name).to_string(),
                dir: deployment.dir.to_path_buf(),
                services: plan.services.into_iter().map(Arc::new).collect(),
                logs: self.logs.clone(),
            });
            let mut tasks = JoinSet::new();
            for &index in &plan.order {
                tasks.spawn(supervisor::supervise(shared.clone(), index));
            }
            let run = Arc::new(Run {
                shared,
                order: plan.order,
                tasks: Mutex::new(tasks),
            });
            lock(&self.runs).insert(name.to_string(), run.clone());
            run
        };
        // Outside the turn: a stop may come while dependents wait.
        let mut failures = Vec::new();
        for service in &run.shared.services {
            let mut progress = service.progress.subscribe();
            let progress = progress
                .wait_for(|p| p.attempted || p.done)
                .await
                .map(|p| *p)
                .unwrap_or_default();
            if progress.spawned {
                continue;
            }
            if *service.stop.borrow() {
                return Err(DriverError::Failed(format!(
                    "deployment {name} was stopped while it started"
                )));
            }
            let why = service
                .snapshot()
                .last_error
                .clone()
                .unwrap_or_else(|| "it did not start".into());
            failures.push(format!("{}: {why}", service.spec.name));
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(DriverError::Failed(format!(
                "deployment {name}: {}",
                failures.join("; ")
            )))
        }
    }

    async fn stop(&self, name: &str) -> Result<(), DriverError> {
        let lifecycle = self.lifecycle_lock(name);
        let _turn = lifecycle.lock().await;
        if let Some(run) = self.run(name) {
            self.stop_run(&run).await;
        }
        Ok(())
    }

    fn status(&self, name: &str) -> Vec<ServiceStatus> {
        let Some(run) = self.run(name) else {
            return Vec::new();
        };
        run.shared
            .services
            .iter()
            .map(|service| {
                let snap = service.snapshot();
                ServiceStatus {
                    name: service.spec.name.clone(),
                    state: snap.state,
                    pid: snap.pid,
                    container_id: None,
                    restarts: snap.restarts,
                    started_at: snap.started_at,
                    exit_code: snap.exit_code,
                    last_error: snap.last_error.clone(),
                }
            })
            .collect()
    }

    async fn stats(&self, name: &str) -> Vec<ServiceStats> {
        let Some(run) = self.run(name) else {
            return Vec::new();
        };
        let services: Vec<_> = run
            .shared
            .services
            .iter()
            .map(|service| {
                let snap = service.snapshot();
                let running = snap.pid.is_some()
                    && matches!(
                        snap.state,
                        ServiceState::Starting | ServiceState::Running | ServiceState::Unhealthy
                    );
                let pgid = snap
                    .pid
                    .filter(|_| running)
                    .and_then(|p| i32::try_from(p).ok());
                let uptime = snap
                    .started
                    .filter(|_| running)
                    .map(|s| s.elapsed().as_secs())
                    .unwrap_or(0);
                (service.spec.name.clone(), pgid, snap.restarts, uptime)
            })
            .collect();
        let pgids: Vec<i32> = services.iter().filter_map(|s| s.1).collect();
        let proc_root = self.proc_root.clone();
        let usage = tokio::task::spawn_blocking(move || {
            stats::usage_by_group(Path::new(&proc_root), &pgids)
        })
        .await
        .unwrap_or_default();
        let now = Instant::now();
        let mut samples = lock(&self.cpu);
        services
            .into_iter()
            .map(|(service, pgid, restarts, uptime_secs)| {
                let key = (name.to_string(), service.clone());
                let group = pgid
                    .and_then(|p| usage.get(&p).copied())
                    .unwrap_or_default();
                let cpu_percent = match (pgid, samples.get(&key)) {
                    (Some(pgid), Some(prev)) if prev.pgid == pgid => stats::cpu_percent(
                        prev.ticks,
                        group.cpu_ticks,
                        self.ticks_per_sec,
                        now.duration_since(prev.at).as_secs_f64(),
                    ),
                    _ => 0.0,
                };
                match pgid {
                    Some(pgid) => {
                        samples.insert(
                            key,
                            CpuSample {
                                pgid,
                                ticks: group.cpu_ticks,
                                at: now,
                            },
                        );
                    }
                    None => {
                        samples.remove(&key);
                    }
                }
                ServiceStats {
                    name: service,
                    cpu_percent,
                    memory_bytes: group.resident_pages.saturating_mul(self.page_size),
                    processes: group.processes,
                    restarts,
                    uptime_secs,
                }
            })
            .collect()
    }

    async fn logs(&self, name: &str, query: &LogQuery) -> Result<Vec<LogLine>, DriverError> {
        let store = self.logs.clone();
        let name = deployment_of(name).to_string();
        let query = query.clone();
        tokio::task::spawn_blocking(move || store.read(&name, &query))
            .await
            .map_err(|e| DriverError::Failed(format!("reading the logs failed: {e}")))?
    }

    fn follow(&self, name: &str) -> broadcast::Receiver<LogLine> {
        self.logs.follow(deployment_of(name))
    }
}
