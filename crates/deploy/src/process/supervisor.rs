//! One service's supervisor: waits for its dependencies, spawns its process
//! (in a process group of its own), pumps its output into the log, runs its
//! health check, stops it (stop signal to the group, kill after the grace
//! period) and restarts it by its policy with backoff. Each supervisor is a
//! task that owns its child process; dropping the task kills the whole group.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::logs::{now_ms, LineSplitter, LogStore};
use crate::spec::{
    DependencyCondition, HealthCheck, HealthTest, RestartPolicy, ServiceSpec, ServiceState,
};

/// The first restart waits this long; each next one twice as long…
const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
/// …up to this.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A run at least this long counts as healthy: the backoff and the count of
/// failures in a row start over.
const STABLE_RUN: Duration = Duration::from_secs(10);
/// A health check every 0 s would spin; this is the shortest interval run.
const MIN_HEALTH_INTERVAL: Duration = Duration::from_millis(50);
/// How long a `service_healthy` dependent waits past the dependency's own
/// allowance (start period + retries × interval + timeout).
const HEALTHY_MARGIN: Duration = Duration::from_secs(5);
/// How long to wait for the output pipes to drain after the group is gone (a
/// process that left the group may hold them open forever).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// Variables of Fleetgate's own environment a service inherits; everything
/// else it gets from its `environment:`.
const INHERITED_ENV: [&str; 4] = ["PATH", "HOME", "LANG", "TZ"];

/// What dependents and `start` wait on; each flag, once set, stays set for the
/// run of the deployment.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Progress {
    /// The first attempt to start is over (spawned, failed, or a dependency
    /// failed).
    pub attempted: bool,
    /// The process was spawned at least once.
    pub spawned: bool,
    /// Its health check passed at least once.
    pub healthy: bool,
    /// A run exited with status 0.
    pub exited_ok: bool,
    /// The supervisor is done: nothing more will run.
    pub done: bool,
}

/// What `status` and `stats` read.
#[derive(Debug, Clone)]
pub(crate) struct Snapshot {
    pub state: ServiceState,
    /// The main process, which leads the service's process group.
    pub pid: Option<u32>,
    pub restarts: u32,
    pub started_at: Option<i64>,
    pub started: Option<Instant>,
    pub exit_code: Option<i32>,
    pub last_error: Option<String>,
}

/// One service of a started deployment.
pub(crate) struct Service {
    pub spec: ServiceSpec,
    /// The entrypoint and command, checked non-empty when the deployment was
    /// planned.
    pub argv: Vec<String>,
    pub stop_signal: Signal,
    pub snapshot: Mutex<Snapshot>,
    pub progress: watch::Sender<Progress>,
    /// Set once to ask the supervisor to stop.
    pub stop: watch::Sender<bool>,
}

impl Service {
    pub fn new(spec: ServiceSpec, argv: Vec<String>, stop_signal: Signal) -> Self {
        Self {
            spec,
            argv,
            stop_signal,
            snapshot: Mutex::new(Snapshot {
                state: ServiceState::Stopped,
                pid: None,
                restarts: 0,
                started_at: None,
                started: None,
                exit_code: None,
                last_error: None,
            }),
            progress: watch::Sender::new(Progress::default()),
            stop: watch::Sender::new(false),
        }
    }

    pub fn snapshot(&self) -> MutexGuard<'_, Snapshot> {
        // A poisoned lock means a panic elsewhere mid-update; the snapshot is
        // plain data and still worth reporting.
        self.snapshot.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What every supervisor of one deployment shares.
pub(crate) struct RunShared {
    pub name: String,
    pub dir: PathBuf,
    pub services: Vec<Arc<Service>>,
    pub logs: Arc<LogStore>,
}

impl RunShared {
    fn service(&self, name: &str) -> Option<&Arc<Service>> {
        self.services.iter().find(|s| s.spec.name == name)
    }

    fn note(&self, service: &Service, line: String) {
        self.logs
            .write(&self.name, &service.spec.name, "fleetgate", line);
    }

    /// The service's working directory: the deployment's, or `working_dir`
    /// from there.
    fn cwd(&self, spec: &ServiceSpec) -> PathBuf {
        match &spec.working_dir {
            Some(dir) => self.dir.join(dir),
            None => self.dir.clone(),
        }
    }
}

/// Parses a signal name as `stop_signal` gives it: `SIGTERM`, `TERM`,
/// `sigterm`, or a number.
pub(crate) fn parse_signal(name: &str) -> Option<Signal> {
    let name = name.trim();
    if let Ok(number) = name.parse::<i32>() {
        return Signal::try_from(number).ok();
    }
    let upper = name.to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    full.parse().ok()
}

/// A process group to signal; dropped while armed, it kills the group so that
/// no process of a service outlives its supervisor.
struct ProcessGroup {
    pgid: Pid,
    armed: bool,
}

impl ProcessGroup {
    fn new(pid: u32) -> Option<Self> {
        let pgid = i32::try_from(pid).ok()?;
        Some(Self {
            pgid: Pid::from_raw(pgid),
            armed: true,
        })
    }

    fn signal(&self, signal: Signal) {
        // ESRCH: the group is gone already, which is what we want.
        let _ = killpg(self.pgid, signal);
    }

    /// Kills what is left of the group and forgets it (its number may be
    /// reused once it is empty).
    fn kill_and_disarm(&mut self) {
        self.signal(Signal::SIGKILL);
        self.armed = false;
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        if self.armed {
            self.signal(Signal::SIGKILL);
        }
    }
}

/// A command with the service's directory and environment: Fleetgate's own
/// environment is not passed on beyond [`INHERITED_ENV`].
fn command(argv: &[String], cwd: &Path, environment: &BTreeMap<String, String>) -> Command {
    let (program, args) = match argv.split_first() {
        Some((program, args)) => (program.as_str(), args),
        None => ("", &[][..]),
    };
    let mut cmd = Command::new(program);
    cmd.args(args).current_dir(cwd).env_clear();
    for key in INHERITED_ENV {
        if let Some(value) = std::env::var_os(key) {
            cmd.env(key, value);
        }
    }
    cmd.envs(environment)
        .stdin(Stdio::null())
        // Its own group, so that a stop signal reaches its children too.
        .process_group(0)
        // The last resort if the supervisor is dropped mid-run; the group
        // guard takes the children.
        .kill_on_drop(true);
    cmd
}

/// `exited with status 3` / `killed by signal SIGKILL`, and the exit code
/// reported for it (128 + the signal for a signal, as shells do).
fn describe_exit(status: &ExitStatus) -> (String, Option<i32>) {
    use std::os::unix::process::ExitStatusExt;
    if let Some(code) = status.code() {
        return (format!("exited with status {code}"), Some(code));
    }
    if let Some(number) = status.signal() {
        let name = Signal::try_from(number)
            .map(|s| s.as_str().to_string())
            .unwrap_or_else(|_| format!("signal {number}"));
        return (format!("killed by signal {name}"), Some(128 + number));
    }
    (format!("ended ({status})"), None)
}

fn seconds(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs.fract() == 0.0 {
        format!("{secs:.0} s")
    } else {
        format!("{secs:.1} s")
    }
}

/// How one run of the process ended.
enum RunEnd {
    /// Stopped on request.
    Stopped,
    Exited {
        status: ExitStatus,
        lasted: Duration,
    },
    /// Could not be spawned, or could not be waited for.
    Error(String),
}

/// Sets `done` however the supervisor ends (a panic included), so that
/// `stop` and dependents never wait for it forever.
struct DoneOnDrop(Arc<Service>);

impl Drop for DoneOnDrop {
    fn drop(&mut self) {
        let service = &self.0;
        {
            let mut snap = service.snapshot();
            if !matches!(
                snap.state,
                ServiceState::Stopped | ServiceState::Exited | ServiceState::Failed
            ) {
                snap.state = ServiceState::Failed;
                snap.pid = None;
                snap.last_error = Some("its supervisor ended unexpectedly".into());
            }
        }
        service.progress.send_modify(|p| {
            p.attempted = true;
            p.done = true;
        });
    }
}

/// Runs service `index` of `run` until it is stopped or its policy gives up.
pub(crate) async fn supervise(run: Arc<RunShared>, index: usize) {
    let Some(service) = run.services.get(index).cloned() else {
        return;
    };
    let _done = DoneOnDrop(service.clone());
    let mut stop_rx = service.stop.subscribe();

    {
        let mut snap = service.snapshot();
        snap.state = ServiceState::Starting;
    }
    match wait_for_dependencies(&run, &service, &mut stop_rx).await {
        Ok(()) => {}
        Err(None) => {
            finish_stopped(&run, &service);
            return;
        }
        Err(Some(why)) => {
            run.note(&service, format!("not started: {why}"));
            let mut snap = service.snapshot();
            snap.state = ServiceState::Failed;
            snap.last_error = Some(why);
            return;
        }
    }

    let mut backoff = INITIAL_BACKOFF;
    // Restarts after failures in a row, for `on-failure:N`.
    let mut failures_in_a_row = 0u32;
    loop {
        let (failed, lasted, why) = match run_once(&run, &service, &mut stop_rx).await {
            RunEnd::Stopped => {
                finish_stopped(&run, &service);
                return;
            }
            RunEnd::Exited { status, lasted } => {
                let (what, _) = describe_exit(&status);
                (!status.success(), lasted, what)
            }
            RunEnd::Error(why) => {
                run.note(&service, why.clone());
                let mut snap = service.snapshot();
                snap.state = ServiceState::Failed;
                snap.pid = None;
                snap.last_error = Some(why.clone());
                drop(snap);
                service.progress.send_modify(|p| p.attempted = true);
                (true, Duration::ZERO, why)
            }
        };
        if lasted >= STABLE_RUN {
            backoff = INITIAL_BACKOFF;
            failures_in_a_row = 0;
        }
        let max = match service.spec.restart {
            RestartPolicy::No => {
                let mut snap = service.snapshot();
                if snap.state != ServiceState::Failed {
                    snap.state = ServiceState::Exited;
                }
                return;
            }
            RestartPolicy::OnFailure { .. } if !failed => {
                service.snapshot().state = ServiceState::Exited;
                return;
            }
            RestartPolicy::OnFailure { max_retries } => max_retries,
            RestartPolicy::Always | RestartPolicy::UnlessStopped => None,
        };
        if failed {
            if let Some(max) = max.filter(|&max| failures_in_a_row >= max) {
                let why = format!("gave up after {max} restarts: {why}");
                run.note(&service, why.clone());
                let mut snap = service.snapshot();
                snap.state = ServiceState::Failed;
                snap.last_error = Some(why);
                return;
            }
            failures_in_a_row += 1;
        }
        {
            let mut snap = service.snapshot();
            if snap.state != ServiceState::Failed {
                snap.state = ServiceState::Restarting;
            }
            snap.last_error = Some(why);
            let next = snap.restarts + 1;
            drop(snap);
            let of = match max {
                Some(max) if failed => {
                    format!(" (restart {next}, {failures_in_a_row} of {max} in a row)")
                }
                _ => format!(" (restart {next})"),
            };
            run.note(&service, format!("restarting in {}{of}", seconds(backoff)));
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = stop_requested(&mut stop_rx) => {
                finish_stopped(&run, &service);
                return;
            }
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
        service.snapshot().restarts += 1;
    }
}

/// Resolves once a stop is asked for (or the service is gone, which asks the
/// same). The watch guard is dropped here, before any caller's next await.
async fn stop_requested(stop_rx: &mut watch::Receiver<bool>) {
    let _ = stop_rx.wait_for(|stop| *stop).await;
}

fn finish_stopped(run: &RunShared, service: &Service) {
    {
        let mut snap = service.snapshot();
        snap.state = ServiceState::Stopped;
        snap.pid = None;
    }
    run.note(service, "stopped".into());
}

/// Waits for each dependency's condition. `Err(None)`: stopped meanwhile;
/// `Err(Some(why))`: a dependency failed or timed out.
async fn wait_for_dependencies(
    run: &RunShared,
    service: &Service,
    stop_rx: &mut watch::Receiver<bool>,
) -> Result<(), Option<String>> {
    for dep in &service.spec.depends_on {
        let Some(target) = run.service(&dep.service) else {
            return Err(Some(format!(
                "it depends on {}, which the deployment does not declare",
                dep.service
            )));
        };
        let name = &dep.service;
        let mut rx = target.progress.subscribe();
        // Every condition needs the dependency spawned first; the health
        // allowance counts from there, not from when this dependent started
        // waiting.
        let started = wait_progress(&mut rx, stop_rx, None, |p| {
            if p.spawned {
                Some(Ok(()))
            } else if p.attempted {
                Some(Err(format!("dependency {name} could not be started")))
            } else {
                None
            }
        });
        started.await?;
        match dep.condition {
            DependencyCondition::Started => {}
            DependencyCondition::Healthy => {
                let allowance = target
                    .spec
                    .healthcheck
                    .as_ref()
                    .map(|hc| {
                        // Saturating: durations from a file may be absurd,
                        // and a wait of "forever" beats a panic.
                        hc.interval
                            .max(MIN_HEALTH_INTERVAL)
                            .checked_mul(hc.retries.max(1))
                            .unwrap_or(Duration::MAX)
                            .saturating_add(hc.start_period)
                            .saturating_add(hc.timeout)
                            .saturating_add(HEALTHY_MARGIN)
                    })
                    .unwrap_or(HEALTHY_MARGIN);
                let healthy = wait_progress(&mut rx, stop_rx, Some(allowance), |p| {
                    if p.healthy {
                        Some(Ok(()))
                    } else if p.done {
                        Some(Err(format!(
                            "dependency {name} ended before its health check passed"
                        )))
                    } else {
                        None
                    }
                });
                healthy.await.map_err(|e| {
                    e.or_else(|| {
                        if *stop_rx.borrow() {
                            None
                        } else {
                            Some(format!(
                                "dependency {name} did not become healthy within {}",
                                seconds(allowance)
                            ))
                        }
                    })
                })?;
            }
            DependencyCondition::CompletedSuccessfully => {
                // No time limit: a migration may take as long as it takes; a
                // stop ends the wait.
                let completed = wait_progress(&mut rx, stop_rx, None, |p| {
                    if p.exited_ok {
                        Some(Ok(()))
                    } else if p.done {
                        Some(Err(format!(
                            "dependency {name} did not complete successfully"
                        )))
                    } else {
                        None
                    }
                });
                completed.await?;
            }
        }
    }
    Ok(())
}

/// Waits until `decide` gives an answer. `Err(None)` on a stop, or when
/// `limit` passes (the caller says why).
async fn wait_progress(
    rx: &mut watch::Receiver<Progress>,
    stop_rx: &mut watch::Receiver<bool>,
    limit: Option<Duration>,
    decide: impl Fn(&Progress) -> Option<Result<(), String>>,
) -> Result<(), Option<String>> {
    let deadline = async {
        match limit {
            Some(limit) => tokio::time::sleep(limit).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        progress = rx.wait_for(|p| decide(p).is_some()) => {
            let Ok(progress) = progress.map(|p| *p) else {
                return Err(Some("the dependency's supervisor is gone".into()));
            };
            match decide(&progress) {
                Some(Ok(())) => Ok(()),
                Some(Err(why)) => Err(Some(why)),
                None => Err(Some("the dependency's state is inconsistent".into())),
            }
        }
        () = stop_requested(stop_rx) => Err(None),
        () = deadline => Err(None),
    }
}

/// Spawns the process once and supervises it until it exits or is stopped.
async fn run_once(
    run: &Arc<RunShared>,
    service: &Arc<Service>,
    stop_rx: &mut watch::Receiver<bool>,
) -> RunEnd {
    if *stop_rx.borrow() {
        return RunEnd::Stopped;
    }
    let spec = &service.spec;
    let cwd = run.cwd(spec);
    if let Err(e) = std::fs::metadata(&cwd).and_then(|m| {
        if m.is_dir() {
            Ok(())
        } else {
            Err(std::io::Error::other("not a directory"))
        }
    }) {
        return RunEnd::Error(format!(
            "cannot start service {}: its working directory {} is unusable: {e}",
            spec.name,
            cwd.display()
        ));
    }
    let mut cmd = command(&service.argv, &cwd, &spec.environment);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let program = service.argv.first().map(String::as_str).unwrap_or("");
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            return RunEnd::Error(format!(
                "cannot run `{program}` for service {}: {e}",
                spec.name
            ))
        }
    };
    let Some(pid) = child.id() else {
        return RunEnd::Error(format!(
            "`{program}` of service {} exited before its pid was read",
            spec.name
        ));
    };
    let mut group = ProcessGroup::new(pid);
    let started = Instant::now();
    {
        let mut snap = service.snapshot();
        snap.state = if spec.healthcheck.is_some() {
            ServiceState::Starting
        } else {
            ServiceState::Running
        };
        snap.pid = Some(pid);
        snap.started_at = Some(now_ms());
        snap.started = Some(started);
        snap.exit_code = None;
    }
    run.note(
        service,
        format!("started (pid {pid}): {}", service.argv.join(" ")),
    );
    service.progress.send_modify(|p| {
        p.attempted = true;
        p.spawned = true;
    });

    // Output pumps and the health check live in this set: dropping it (this
    // run ends, or the supervisor is aborted) ends them.
    let mut pumps = JoinSet::new();
    if let Some(stdout) = child.stdout.take() {
        pumps.spawn(pump(run.clone(), spec.name.clone(), "stdout", stdout));
    }
    if let Some(stderr) = child.stderr.take() {
        pumps.spawn(pump(run.clone(), spec.name.clone(), "stderr", stderr));
    }
    let mut health = JoinSet::new();
    if let Some(hc) = &spec.healthcheck {
        health.spawn(health_loop(
            run.clone(),
            service.clone(),
            hc.clone(),
            cwd,
            started,
        ));
    }

    let mut stopped = false;
    let waited = tokio::select! {
        status = child.wait() => status,
        () = stop_requested(stop_rx) => {
            stopped = true;
            health.abort_all();
            let signal = service.stop_signal;
            let grace = spec.stop_grace_period;
            run.note(service, format!("stopping: sending {} to the process group, {} to exit", signal.as_str(), seconds(grace)));
            if let Some(group) = &group {
                group.signal(signal);
            }
            match tokio::time::timeout(grace, child.wait()).await {
                Ok(status) => status,
                Err(_) => {
                    run.note(service, format!("still running {} after {}: killing it", signal.as_str(), seconds(grace)));
                    if let Some(group) = &group {
                        group.signal(Signal::SIGKILL);
                    }
                    child.wait().await
                }
            }
        }
    };
    let lasted = started.elapsed();
    health.abort_all();
    // The main process is gone; whatever it left behind in its group goes
    // too, as when a container's main process exits.
    if let Some(group) = &mut group {
        group.kill_and_disarm();
    }
    // Let the pipes drain so that the exit note comes after the last line.
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while pumps.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        pumps.abort_all();
    }

    let status = match waited {
        Ok(status) => status,
        Err(e) => {
            return RunEnd::Error(format!(
                "cannot wait for `{program}` (pid {pid}) of service {}: {e}",
                spec.name
            ))
        }
    };
    let (what, exit_code) = describe_exit(&status);
    run.note(service, what);
    {
        let mut snap = service.snapshot();
        snap.pid = None;
        snap.exit_code = exit_code;
    }
    if status.success() {
        service.progress.send_modify(|p| p.exited_ok = true);
    }
    if stopped {
        RunEnd::Stopped
    } else {
        RunEnd::Exited { status, lasted }
    }
}

/// Copies one output stream into the log, line by line.
async fn pump(
    run: Arc<RunShared>,
    service: String,
    stream: &'static str,
    mut reader: impl AsyncRead + Unpin,
) {
    let mut splitter = LineSplitter::default();
    let mut buf = vec![0u8; 8192];
    loop {
        let n = match reader.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(deployment = %run.name, service, stream, error = %e, "output pipe failed");
                break;
            }
        };
        for line in splitter.push(&buf[..n]) {
            run.logs.write(&run.name, &service, stream, line);
        }
    }
    if let Some(line) = splitter.finish() {
        run.logs.write(&run.name, &service, stream, line);
    }
}

/// Runs the health check every interval while the process runs, and keeps
/// the service's state by its results.
async fn health_loop(
    run: Arc<RunShared>,
    service: Arc<Service>,
    hc: HealthCheck,
    cwd: PathBuf,
    started: Instant,
) {
    let interval = hc.interval.max(MIN_HEALTH_INTERVAL);
    // `retries: 0` would make a service unhealthy before any failure.
    let retries = hc.retries.max(1);
    let mut failures = 0u32;
    loop {
        tokio::time::sleep(interval).await;
        let result = check_once(&hc, &cwd, &service.spec.environment).await;
        match result {
            Ok(()) => {
                failures = 0;
                let previous = {
                    let mut snap = service.snapshot();
                    let previous = snap.state;
                    if matches!(previous, ServiceState::Starting | ServiceState::Unhealthy) {
                        snap.state = ServiceState::Running;
                    }
                    previous
                };
                match previous {
                    ServiceState::Starting => run.note(&service, "health check passed".into()),
                    ServiceState::Unhealthy => {
                        run.note(&service, "health check passes again".into())
                    }
                    _ => {}
                }
                service.progress.send_modify(|p| p.healthy = true);
            }
            // Failures while the service boots do not count.
            Err(_) if started.elapsed() < hc.start_period => {}
            Err(why) => {
                failures += 1;
                if failures < retries {
                    continue;
                }
                let why = format!("health check failed {failures} times in a row: {why}");
                let became = {
                    let mut snap = service.snapshot();
                    let became =
                        matches!(snap.state, ServiceState::Starting | ServiceState::Running);
                    if became {
                        snap.state = ServiceState::Unhealthy;
                        snap.last_error = Some(why.clone());
                    }
                    became
                };
                if became {
                    run.note(&service, why);
                }
            }
        }
    }
}

/// Runs the health check once: `Ok` on exit status 0.
async fn check_once(
    hc: &HealthCheck,
    cwd: &Path,
    environment: &BTreeMap<String, String>,
) -> Result<(), String> {
    let argv = match &hc.test {
        HealthTest::Cmd(argv) => argv.clone(),
        HealthTest::Shell(line) => vec!["/bin/sh".into(), "-c".into(), line.clone()],
    };
    let mut cmd = command(&argv, cwd, environment);
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    let program = argv.first().map(String::as_str).unwrap_or("");
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run `{program}`: {e}"))?;
    let mut group = child.id().and_then(ProcessGroup::new);
    let result = match tokio::time::timeout(hc.timeout, child.wait()).await {
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => Err(describe_exit(&status).0),
        Ok(Err(e)) => Err(format!("cannot wait for `{program}`: {e}")),
        Err(_) => {
            if let Some(group) = &group {
                group.signal(Signal::SIGKILL);
            }
            let _ = child.wait().await;
            Err(format!("timed out after {}", seconds(hc.timeout)))
        }
    };
    if let Some(group) = &mut group {
        group.kill_and_disarm();
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_signal_names() {
        assert_eq!(parse_signal("SIGTERM"), Some(Signal::SIGTERM));
        assert_eq!(parse_signal("term"), Some(Signal::SIGTERM));
        assert_eq!(parse_signal("SIGINT"), Some(Signal::SIGINT));
        assert_eq!(parse_signal("QUIT"), Some(Signal::SIGQUIT));
        assert_eq!(parse_signal("SIGHUP"), Some(Signal::SIGHUP));
        assert_eq!(parse_signal("SIGKILL"), Some(Signal::SIGKILL));
        assert_eq!(parse_signal("SIGUSR1"), Some(Signal::SIGUSR1));
        assert_eq!(parse_signal("usr2"), Some(Signal::SIGUSR2));
        assert_eq!(parse_signal("9"), Some(Signal::SIGKILL));
        assert_eq!(parse_signal("SIGNOPE"), None);
        assert_eq!(parse_signal(""), None);
        assert_eq!(parse_signal("0"), None);
    }

    #[test]
    fn describes_durations() {
        assert_eq!(seconds(Duration::from_secs(2)), "2 s");
        assert_eq!(seconds(Duration::from_millis(1500)), "1.5 s");
    }
}
