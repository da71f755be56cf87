//! Deployments on a host: each is a directory `<data_dir>/deployments/<name>/`
//! holding its `compose.yml`, its `service.yml` and Fleetgate's record of it
//! (`deployment.json`: whether an operator wants it running, its version). The
//! files are the source of truth; a driver runs the services, and the domains of
//! `service.yml` become a gateway route and upstream (`deploy-<name>`) written as
//! one configuration revision, like any other change.
//!
//! Which driver runs a deployment is `driver:` of its `service.yml`; with
//! `auto` (the default): a deployment where some service has no image runs as
//! processes (only they can run it); one where some service has only an image
//! runs on Docker (only it can; without an engine its start answers
//! `DOCKER_UNAVAILABLE` saying why); one whose every service has both an image
//! and a command runs on Docker when the engine answers, as processes when it
//! does not. A started deployment stays with the driver that started it until
//! it is stopped, whatever the engine does meanwhile.
//!
//! Changes are serialised per host (one lock): files are written whole to a
//! temporary name and renamed, so a crash leaves either the old or the new file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::docker::DockerDriver;
use crate::process::ProcessDriver;
use crate::spec::{
    AppProtocol, ComposeFile, Deployment, Driver, DriverError, DriverKind, Problem, ServiceMeta,
};
use fleetgate_core::config::{ROUTE_KIND, UPSTREAM_KIND};
use fleetgate_core::gateway::{Route, Upstream};
use fleetgate_core::time::now_ms;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// The compose file of a deployment directory.
pub const COMPOSE_FILE: &str = "compose.yml";
/// Fleetgate's metadata file of a deployment directory.
pub const SERVICE_FILE: &str = "service.yml";
/// Fleetgate's record of the deployment.
const STATE_FILE: &str = "deployment.json";
/// Largest `compose.yml` or `service.yml` accepted.
pub const MAX_FILE_BYTES: usize = 1024 * 1024;

/// What an operator asked of a deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Desired {
    Running,
    Stopped,
}

/// `deployment.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeploymentRecord {
    pub name: String,
    pub desired: Desired,
    /// Goes up by one with every change of the files.
    pub version: i64,
    pub created_at: i64,
    pub updated_at: i64,
    /// The release serving now (0: none went live yet).
    #[serde(default)]
    pub release: u64,
    /// Instances started so far (the next one is this plus one).
    #[serde(default)]
    pub instances: u64,
    /// The local port the serving release receives its traffic on (with
    /// blue-green, each release's own).
    #[serde(default)]
    pub serving_port: Option<u16>,
}

/// A deployment read from its directory and checked.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub record: DeploymentRecord,
    pub compose_text: String,
    pub service_text: String,
    pub compose: ComposeFile,
    pub meta: ServiceMeta,
}

/// Why a deployment operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("deployment {0} not found")]
    NotFound(String),
    #[error("deployment {0} already exists")]
    Exists(String),
    /// The files do not check; every problem found.
    #[error("the deployment's files have {} problem(s)", .0.len())]
    Invalid(Vec<Problem>),
    /// The stored files no longer check (edited by hand, say).
    #[error("deployment {name}: {problems}")]
    Broken { name: String, problems: String },
    #[error("deployment {name} has no release {release}")]
    ReleaseNotFound { name: String, release: u64 },
    #[error("deployment {0} has no earlier release that served to roll back to")]
    NoRollback(String),
    /// The new release did not become ready; the running one (if any) serves on.
    #[error("release {release} of {name} was dropped: {why}")]
    ReleaseFailed {
        name: String,
        release: u64,
        why: String,
    },
    #[error("If-Match does not match the current version {0}")]
    VersionMismatch(i64),
    #[error(transparent)]
    Driver(#[from] crate::spec::DriverError),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// The deployments of this host and the drivers that run them.
pub struct Deployments {
    root: PathBuf,
    process: Arc<ProcessDriver>,
    docker: Arc<DockerDriver>,
    /// The instances each started deployment runs: the live one (whose
    /// status, logs and stop go to the driver that started it, whatever `auto`
    /// would choose now) and those draining.
    running: Mutex<HashMap<String, Running>>,
    /// Serialises the creation and removal of directories.
    lock: tokio::sync::Mutex<()>,
    /// One deployment's changes take turns (files, starts, stops, releases);
    /// other deployments go on.
    turns: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// One started instance of a deployment.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    /// The driver's key: `<deployment>.<n>`.
    pub key: String,
    pub kind: DriverKind,
    pub release: u64,
    /// Where its traffic goes.
    pub target: Option<u16>,
    pub ports: std::collections::BTreeMap<String, u16>,
    pub strategy: crate::spec::Strategy,
    pub started_at: i64,
}

/// A deployment's instances.
#[derive(Debug, Clone, Default)]
struct Running {
    live: Option<Instance>,
    /// Replaced instances finishing the requests and WebSockets they have.
    draining: Vec<Instance>,
}

/// `[a-z0-9]` then up to 47 of `[a-z0-9-]`, not ending with `-`: a directory name,
/// a host label and part of a route id.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = (1..=48).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a deployment name: 1 to 48 of a-z, 0-9 and '-', not starting or ending with '-'"
        ))
    }
}

/// Checks both files, problems sorted (compose first).
pub fn check_files(
    compose: &str,
    service: &str,
) -> Result<(ComposeFile, ServiceMeta), DeployError> {
    let mut problems = Vec::new();
    for (file, text) in [(COMPOSE_FILE, compose), (SERVICE_FILE, service)] {
        if text.len() > MAX_FILE_BYTES {
            problems.push(Problem {
                file: file.into(),
                line: 0,
                column: 0,
                field: String::new(),
                message: format!(
                    "the file is {} bytes; at most {MAX_FILE_BYTES} are accepted",
                    text.len()
                ),
            });
        }
    }
    if !problems.is_empty() {
        return Err(DeployError::Invalid(problems));
    }
    crate::check::parse_files(compose, service).map_err(DeployError::Invalid)
}

/// Writes `text` to `path` through a temporary file and a rename.
async fn write_whole(path: &Path, text: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp-{}", uuid::Uuid::new_v4().simple()));
    tokio::fs::write(&tmp, text).await?;
    match tokio::fs::rename(&tmp, path).await {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = tokio::fs::remove_file(&tmp).await;
            Err(e)
        }
    }
}

impl Deployments {
    /// The deployments under `<data_dir>/deployments`, the process driver's
    /// logs under `<data_dir>/deployment-logs`, Docker at `docker_socket`.
    pub fn new(data_dir: &Path, docker_socket: &Path) -> Self {
        Deployments {
            root: data_dir.join("deployments"),
            process: Arc::new(ProcessDriver::new(data_dir.join("deployment-logs"))),
            docker: Arc::new(DockerDriver::new(docker_socket)),
            running: Mutex::new(HashMap::new()),
            lock: tokio::sync::Mutex::new(()),
            turns: Mutex::new(HashMap::new()),
        }
    }

    fn turn(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.turns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(name.to_string())
            .or_default()
            .clone()
    }

    fn with_running<T>(&self, name: &str, f: impl FnOnce(&mut Running) -> T) -> T {
        let mut all = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let entry = all.entry(name.to_string()).or_default();
        let out = f(entry);
        if entry.live.is_none() && entry.draining.is_empty() {
            all.remove(name);
        }
        out
    }

    /// The instance serving a deployment now.
    pub fn live(&self, name: &str) -> Option<Instance> {
        self.with_running(name, |r| r.live.clone())
    }

    /// Replaced instances of a deployment still finishing their traffic.
    pub fn draining(&self, name: &str) -> Vec<Instance> {
        self.with_running(name, |r| r.draining.clone())
    }

    fn dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// The Docker driver (and through it the engine, for the resource
    /// endpoints).
    pub fn docker(&self) -> &Arc<DockerDriver> {
        &self.docker
    }

    fn started_kind(&self, name: &str) -> Option<DriverKind> {
        self.live(name).map(|i| i.kind)
    }

    fn by_kind(&self, kind: DriverKind) -> Arc<dyn Driver> {
        match kind {
            DriverKind::Docker => self.docker.clone(),
            _ => self.process.clone(),
        }
    }

    /// The driver a deployment would start on now (see the module's doc).
    pub async fn choose(&self, meta: &ServiceMeta, compose: &ComposeFile) -> DriverKind {
        match meta.driver {
            DriverKind::Process => DriverKind::Process,
            DriverKind::Docker => DriverKind::Docker,
            DriverKind::Auto => {
                let all_images = compose.services.iter().all(|s| s.image.is_some());
                let all_commands = compose
                    .services
                    .iter()
                    .all(|s| s.command.is_some() || s.entrypoint.is_some());
                if !all_images {
                    DriverKind::Process
                } else if !all_commands || self.docker.engine().reachable().await {
                    DriverKind::Docker
                } else {
                    DriverKind::Process
                }
            }
        }
    }

    /// The driver kind a deployment runs on: the one that started it, or the
    /// one it would start on now.
    pub async fn driver_kind(
        &self,
        name: &str,
        meta: &ServiceMeta,
        compose: &ComposeFile,
    ) -> DriverKind {
        match self.started_kind(name) {
            Some(kind) => kind,
            None => self.choose(meta, compose).await,
        }
    }

    /// The driver that runs a deployment and the key its live instance has
    /// there (the deployment's name when none runs: the driver then reports it
    /// stopped, and its logs are the deployment's).
    pub async fn driver(
        &self,
        name: &str,
        meta: &ServiceMeta,
        compose: &ComposeFile,
    ) -> (Arc<dyn Driver>, String) {
        match self.live(name) {
            Some(i) => (self.by_kind(i.kind), i.key),
            None => (
                self.by_kind(self.choose(meta, compose).await),
                name.to_string(),
            ),
        }
    }

    /// Each service's state on the driver that runs the deployment, in file
    /// order; all `stopped` when it does not run.
    pub async fn statuses(&self, l: &Loaded) -> Vec<crate::spec::ServiceStatus> {
        let (driver, key) = self.driver(&l.record.name, &l.meta, &l.compose).await;
        let services = driver.status(&key);
        if !services.is_empty() {
            return services;
        }
        l.compose
            .services
            .iter()
            .map(|s| crate::spec::ServiceStatus {
                name: s.name.clone(),
                state: crate::spec::ServiceState::Stopped,
                pid: None,
                container_id: None,
                restarts: 0,
                started_at: None,
                exit_code: None,
                last_error: None,
            })
            .collect()
    }

    /// Reads and checks one deployment.
    pub async fn load(&self, name: &str) -> Result<Loaded, DeployError> {
        if check_name(name).is_err() {
            return Err(DeployError::NotFound(name.into()));
        }
        let dir = self.dir(name);
        let state = match tokio::fs::read(dir.join(STATE_FILE)).await {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(DeployError::NotFound(name.into()))
            }
            Err(e) => return Err(e.into()),
        };
        let record: DeploymentRecord =
            serde_json::from_slice(&state).map_err(|e| DeployError::Broken {
                name: name.into(),
                problems: format!("{STATE_FILE}: {e}"),
            })?;
        let compose_text = tokio::fs::read_to_string(dir.join(COMPOSE_FILE)).await?;
        let service_text = match tokio::fs::read_to_string(dir.join(SERVICE_FILE)).await {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e.into()),
        };
        let (compose, meta) = check_files(&compose_text, &service_text).map_err(|e| match e {
            DeployError::Invalid(problems) => DeployError::Broken {
                name: name.into(),
                problems: problems
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; "),
            },
            other => other,
        })?;
        Ok(Loaded {
            record,
            compose_text,
            service_text,
            compose,
            meta,
        })
    }

    /// Every deployment's name, sorted.
    pub async fn names(&self) -> Result<Vec<String>, DeployError> {
        let mut names = Vec::new();
        let mut entries = match tokio::fs::read_dir(&self.root).await {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(names),
            Err(e) => return Err(e.into()),
        };
        while let Some(entry) = entries.next_entry().await? {
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if check_name(&name).is_ok() && entry.path().join(STATE_FILE).exists() {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    /// Creates a deployment from checked files; it is not started.
    pub async fn create(
        &self,
        name: &str,
        compose: &str,
        service: &str,
        desired: Desired,
    ) -> Result<Loaded, DeployError> {
        check_name(name).map_err(|m| {
            DeployError::Invalid(vec![Problem {
                file: String::new(),
                line: 0,
                column: 0,
                field: "name".into(),
                message: m,
            }])
        })?;
        let (compose_file, meta) = check_files(compose, service)?;
        let _guard = self.lock.lock().await;
        let dir = self.dir(name);
        if dir.exists() {
            return Err(DeployError::Exists(name.into()));
        }
        // Written in a directory of another name, renamed into place whole.
        tokio::fs::create_dir_all(&self.root).await?;
        let tmp = self
            .root
            .join(format!(".new-{name}-{}", uuid::Uuid::new_v4().simple()));
        tokio::fs::create_dir(&tmp).await?;
        let now = now_ms();
        let record = DeploymentRecord {
            name: name.into(),
            desired,
            version: 1,
            created_at: now,
            updated_at: now,
            release: 0,
            instances: 0,
            serving_port: None,
        };
        let written = async {
            tokio::fs::write(tmp.join(COMPOSE_FILE), compose).await?;
            tokio::fs::write(tmp.join(SERVICE_FILE), service).await?;
            let state = serde_json::to_vec_pretty(&record).map_err(std::io::Error::other)?;
            tokio::fs::write(tmp.join(STATE_FILE), state).await?;
            tokio::fs::rename(&tmp, &dir).await
        };
        if let Err(e) = written.await {
            let _ = tokio::fs::remove_dir_all(&tmp).await;
            return Err(e.into());
        }
        Ok(Loaded {
            record,
            compose_text: compose.into(),
            service_text: service.into(),
            compose: compose_file,
            meta,
        })
    }

    /// Replaces the files of a deployment (those given), after checking them.
    pub async fn update(
        &self,
        name: &str,
        compose: Option<&str>,
        service: Option<&str>,
        expected_version: Option<i64>,
    ) -> Result<(Loaded, Loaded), DeployError> {
        let turn = self.turn(name);
        let _turn = turn.lock().await;
        let before = self.load(name).await?;
        if let Some(v) = expected_version {
            if v != before.record.version {
                return Err(DeployError::VersionMismatch(before.record.version));
            }
        }
        let compose_text = compose.unwrap_or(&before.compose_text).to_string();
        let service_text = service.unwrap_or(&before.service_text).to_string();
        let (compose_file, meta) = check_files(&compose_text, &service_text)?;
        let dir = self.dir(name);
        write_whole(&dir.join(COMPOSE_FILE), compose_text.as_bytes()).await?;
        write_whole(&dir.join(SERVICE_FILE), service_text.as_bytes()).await?;
        let record = DeploymentRecord {
            version: before.record.version + 1,
            updated_at: now_ms(),
            ..before.record.clone()
        };
        self.save_record(&record).await?;
        let after = Loaded {
            record,
            compose_text,
            service_text,
            compose: compose_file,
            meta,
        };
        Ok((before, after))
    }

    async fn save_record(&self, record: &DeploymentRecord) -> Result<(), DeployError> {
        let state = serde_json::to_vec_pretty(record).map_err(std::io::Error::other)?;
        write_whole(&self.dir(&record.name).join(STATE_FILE), &state).await?;
        Ok(())
    }

    /// Records what an operator wants of the deployment (kept across restarts).
    pub async fn set_desired(&self, name: &str, desired: Desired) -> Result<Loaded, DeployError> {
        let turn = self.turn(name);
        let _turn = turn.lock().await;
        let mut loaded = self.load(name).await?;
        if loaded.record.desired != desired {
            loaded.record.desired = desired;
            loaded.record.updated_at = now_ms();
            self.save_record(&loaded.record).await?;
        }
        Ok(loaded)
    }

    /// Starts a new instance of a deployment's current files as a release and
    /// makes it the one serving (see [`crate::rollout`] and the module's doc):
    /// with `blue-green`, beside the running instance, which keeps serving until
    /// the new one is ready, then drains; with `recreate`, after stopping it. A
    /// release that is not ready within `deploy.health_timeout` is dropped
    /// (stopped, marked failed) and the running instance keeps serving.
    pub async fn start(
        self: &Arc<Self>,
        loaded: &Loaded,
        router: &Arc<dyn Router>,
    ) -> Result<Instance, DeployError> {
        self.start_release(loaded, router, None).await
    }

    async fn start_release(
        self: &Arc<Self>,
        loaded: &Loaded,
        router: &Arc<dyn Router>,
        rollback_of: Option<u64>,
    ) -> Result<Instance, DeployError> {
        let name = loaded.record.name.clone();
        let turn = self.turn(&name);
        let _turn = turn.lock().await;
        let mut record = self.load(&name).await?.record;
        let kind = self.choose(&loaded.meta, &loaded.compose).await;
        let mut release = self.release_for(&name, loaded, kind, rollback_of).await?;
        record.instances += 1;
        self.save_record(&record).await?;
        let placement = crate::rollout::place(&loaded.compose, &loaded.meta, kind)?;
        let instance = Instance {
            key: crate::spec::instance_key(&name, record.instances),
            kind,
            release: release.number,
            target: placement.target,
            ports: placement.ports.clone(),
            strategy: placement.strategy,
            started_at: now_ms(),
        };
        let mut old = self.live(&name);
        if old.is_none() && kind == DriverKind::Docker {
            old = self.adopt_leftovers(&loaded.record, kind).await;
        }
        let side_by_side = old.as_ref().is_some_and(|o| {
            placement.strategy == crate::spec::Strategy::BlueGreen && o.kind == kind
        });
        if !side_by_side {
            if let Some(old) = &old {
                // Recreate (or a move to the other driver): the old instance goes first.
                self.by_kind(old.kind).stop(&old.key).await?;
                self.with_running(&name, |r| r.live = None);
            }
        }
        let dir = self.dir(&name);
        let deployment = Deployment {
            name: &instance.key,
            dir: &dir,
            compose: &placement.compose,
            meta: &loaded.meta,
        };
        let driver = self.by_kind(kind);
        let ready = match driver.start(&deployment).await {
            Ok(()) => {
                crate::rollout::wait_ready(
                    driver.as_ref(),
                    &instance.key,
                    &placement,
                    loaded.meta.healthcheck.as_ref(),
                    loaded.meta.rollout.health_timeout,
                )
                .await
            }
            Err(DriverError::Unavailable(why)) => {
                let _ = driver.stop(&instance.key).await;
                self.finish_release(router, &name, &mut release, Err(why.clone()))
                    .await;
                return Err(DriverError::Unavailable(why).into());
            }
            Err(e) => Err(e.to_string()),
        };
        if let Err(why) = ready {
            if side_by_side {
                // The running instance keeps serving; the new one goes.
                let _ = driver.stop(&instance.key).await;
            } else {
                // Nothing else serves: what started stays, to show and to stop.
                self.with_running(&name, |r| r.live = Some(instance.clone()));
                let targets = self.targets(&name);
                let _ = router.route(loaded, &targets).await;
            }
            self.finish_release(router, &name, &mut release, Err(why.clone()))
                .await;
            return Err(DeployError::ReleaseFailed {
                name,
                release: release.number,
                why,
            });
        }
        self.with_running(&name, |r| {
            if let Some(old) = r.live.replace(instance.clone()) {
                r.draining.push(old);
            }
        });
        if let Err(why) = router.route(loaded, &self.targets(&name)).await {
            // Back as it was: the gateway refused the switch.
            let _ = driver.stop(&instance.key).await;
            self.with_running(&name, |r| {
                r.live = r.draining.pop();
            });
            self.finish_release(router, &name, &mut release, Err(why.clone()))
                .await;
            return Err(DeployError::ReleaseFailed {
                name,
                release: release.number,
                why,
            });
        }
        self.finish_release(router, &name, &mut release, Ok(()))
            .await;
        if side_by_side {
            if let Some(old) = old {
                let me = self.clone();
                let router = router.clone();
                let loaded = loaded.clone();
                tokio::spawn(async move { me.drain(&loaded, old, &router).await });
            }
        }
        Ok(instance)
    }

    /// Containers an earlier run of Fleetgate left on the engine (they outlive
    /// it): the newest instance is taken as the one serving — at the port the
    /// record says it served on — so that the new release replaces it as any
    /// other (blue-green: without a gap); older ones are stopped.
    async fn adopt_leftovers(
        &self,
        record: &DeploymentRecord,
        kind: DriverKind,
    ) -> Option<Instance> {
        let name = &record.name;
        let mut keys = self.docker.instance_keys(name).await;
        let number = |k: &str| k.rsplit_once('.').and_then(|(_, n)| n.parse::<u64>().ok());
        keys.sort_by_key(|k| number(k).unwrap_or(0));
        let newest = keys.pop()?;
        for stale in keys {
            if let Err(e) = self.docker.stop(&stale).await {
                tracing::warn!(deployment = %name, instance = %stale, error = %e, "a left-over instance did not stop");
            }
        }
        let adopted = Instance {
            key: newest,
            kind,
            release: record.release,
            target: record.serving_port,
            ports: Default::default(),
            strategy: crate::spec::Strategy::BlueGreen,
            started_at: now_ms(),
        };
        self.with_running(name, |r| r.live = Some(adopted.clone()));
        Some(adopted)
    }

    /// Where the gateway sends a deployment's traffic: the live instance's
    /// port (weight 1) and the draining ones' (weight 0: no new requests).
    pub fn targets(&self, name: &str) -> Vec<(u16, u32)> {
        self.with_running(name, |r| {
            let mut out: Vec<(u16, u32)> = Vec::new();
            for (i, weight) in r
                .live
                .iter()
                .map(|i| (i, 1))
                .chain(r.draining.iter().map(|i| (i, 0)))
            {
                if let Some(port) = i.target {
                    if !out.iter().any(|(p, _)| *p == port) {
                        out.push((port, weight));
                    }
                }
            }
            out
        })
    }

    /// Waits until the gateway has nothing in flight to a replaced instance (or
    /// `deploy.drain_timeout` passes), takes it out of the route and stops it.
    async fn drain(self: &Arc<Self>, loaded: &Loaded, old: Instance, router: &Arc<dyn Router>) {
        let name = &loaded.record.name;
        let deadline = tokio::time::Instant::now() + loaded.meta.rollout.drain_timeout;
        if let Some(port) = old.target {
            // The switch is applied: new requests go to the new instance. Give
            // requests already sent a moment to be counted, then wait for 0.
            tokio::time::sleep(DRAIN_SETTLE).await;
            loop {
                match router.in_flight(name, port).await {
                    Some(0) | None => break,
                    Some(_) if tokio::time::Instant::now() >= deadline => {
                        tracing::info!(deployment = %name, instance = %old.key, "drain timeout; stopping with traffic in flight");
                        break;
                    }
                    Some(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        }
        let turn = self.turn(name);
        let _turn = turn.lock().await;
        self.with_running(name, |r| r.draining.retain(|i| i.key != old.key));
        if let Ok(current) = self.load(name).await {
            if let Err(e) = router.route(&current, &self.targets(name)).await {
                tracing::warn!(deployment = %name, error = %e, "the drained instance could not be taken out of the route");
            }
        }
        if let Err(e) = self.by_kind(old.kind).stop(&old.key).await {
            tracing::warn!(deployment = %name, instance = %old.key, error = %e, "a drained instance did not stop cleanly");
        }
    }

    /// Stops a deployment's services: its live instance and any draining.
    pub async fn stop(&self, loaded: &Loaded) -> Result<(), DeployError> {
        let name = &loaded.record.name;
        let turn = self.turn(name);
        let _turn = turn.lock().await;
        let running = self.with_running(name, std::mem::take);
        let mut first_error = None;
        for i in running.live.iter().chain(running.draining.iter()) {
            if let Err(e) = self.by_kind(i.kind).stop(&i.key).await {
                first_error.get_or_insert(e);
            }
        }
        if running.live.is_none() {
            // Started by an earlier version of Fleetgate under the bare name.
            let kind = self.choose(&loaded.meta, &loaded.compose).await;
            self.by_kind(kind).stop(name).await?;
        }
        // The release that served says it no longer does.
        if let Ok(all) = self.releases(name).await {
            for mut r in all {
                if r.state == ReleaseState::Live {
                    r.state = ReleaseState::Stopped;
                    r.ended_at = Some(now_ms());
                    if let Err(e) = self.save_release(name, &r).await {
                        tracing::warn!(deployment = %name, error = %e, "a release's record could not be saved");
                    }
                }
            }
        }
        match first_error {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }

    /// Stops a deployment and removes its directory (its logs are kept).
    pub async fn remove(&self, name: &str) -> Result<Loaded, DeployError> {
        let loaded = self.load(name).await?;
        self.stop(&loaded).await?;
        let _guard = self.lock.lock().await;
        // Renamed away first, so a half-removed directory is never taken for a
        // deployment.
        let dir = self.dir(name);
        let gone = self
            .root
            .join(format!(".gone-{name}-{}", uuid::Uuid::new_v4().simple()));
        tokio::fs::rename(&dir, &gone).await?;
        tokio::fs::remove_dir_all(&gone).await?;
        Ok(loaded)
    }

    /// Starts the deployments an operator left running (at manager start).
    pub async fn resume(self: &Arc<Self>, router: &Arc<dyn Router>) {
        let names = match self.names().await {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(error = %e, "cannot list the deployments");
                return;
            }
        };
        for name in names {
            match self.load(&name).await {
                Ok(l) if l.record.desired == Desired::Running => {
                    if let Err(e) = self.start(&l, router).await {
                        tracing::error!(deployment = %name, error = %e, "a deployment cannot start");
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(deployment = %name, error = %e, "a deployment cannot be read")
                }
            }
        }
    }

    /// Stops every running deployment (at shutdown).
    pub async fn stop_all(&self) {
        let Ok(names) = self.names().await else {
            return;
        };
        for name in names {
            if let Ok(l) = self.load(&name).await {
                if let Err(e) = self.stop(&l).await {
                    tracing::warn!(deployment = %name, error = %e, "a deployment did not stop cleanly");
                }
            }
        }
    }

    // ----- releases -----

    fn releases_dir(&self, name: &str) -> PathBuf {
        self.dir(name).join(RELEASES_DIR)
    }

    /// A deployment's releases, newest first.
    pub async fn releases(&self, name: &str) -> Result<Vec<Release>, DeployError> {
        self.load(name).await?;
        let mut out = Vec::new();
        let mut entries = match tokio::fs::read_dir(self.releases_dir(name)).await {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e.into()),
        };
        while let Some(entry) = entries.next_entry().await? {
            let Ok(bytes) = tokio::fs::read(entry.path().join(RELEASE_FILE)).await else {
                continue;
            };
            if let Ok(r) = serde_json::from_slice::<Release>(&bytes) {
                out.push(r);
            }
        }
        out.sort_by_key(|r| std::cmp::Reverse(r.number));
        Ok(out)
    }

    /// One release and its files (`compose.yml`, `service.yml`).
    pub async fn release(
        &self,
        name: &str,
        number: u64,
    ) -> Result<(Release, String, String), DeployError> {
        let dir = self.releases_dir(name).join(number.to_string());
        let missing = || DeployError::ReleaseNotFound {
            name: name.to_string(),
            release: number,
        };
        let bytes = tokio::fs::read(dir.join(RELEASE_FILE))
            .await
            .map_err(|_| missing())?;
        let release: Release = serde_json::from_slice(&bytes).map_err(|_| missing())?;
        let compose = tokio::fs::read_to_string(dir.join(COMPOSE_FILE)).await?;
        let service = tokio::fs::read_to_string(dir.join(SERVICE_FILE))
            .await
            .unwrap_or_default();
        Ok((release, compose, service))
    }

    async fn save_release(&self, name: &str, release: &Release) -> Result<(), DeployError> {
        let dir = self.releases_dir(name).join(release.number.to_string());
        let bytes = serde_json::to_vec_pretty(release).map_err(std::io::Error::other)?;
        write_whole(&dir.join(RELEASE_FILE), &bytes).await?;
        Ok(())
    }

    /// The release a start runs: the newest one when it was made from these
    /// files (a restart), a new one otherwise (its files kept beside it).
    async fn release_for(
        &self,
        name: &str,
        loaded: &Loaded,
        kind: DriverKind,
        rollback_of: Option<u64>,
    ) -> Result<Release, DeployError> {
        let releases = self.releases(name).await?;
        let now = now_ms();
        if let Some(newest) = releases.first() {
            if newest.version == loaded.record.version && rollback_of.is_none() {
                let mut again = newest.clone();
                again.state = ReleaseState::Deploying;
                again.error = None;
                again.driver = kind;
                self.save_release(name, &again).await?;
                return Ok(again);
            }
        }
        let number = releases.first().map_or(1, |r| r.number + 1);
        let release = Release {
            number,
            version: loaded.record.version,
            state: ReleaseState::Deploying,
            created_at: now,
            live_at: None,
            ended_at: None,
            error: None,
            driver: kind,
            strategy: crate::rollout::strategy(&loaded.compose, &loaded.meta, kind),
            rollback_of,
        };
        let dir = self.releases_dir(name).join(number.to_string());
        tokio::fs::create_dir_all(&dir).await?;
        write_whole(&dir.join(COMPOSE_FILE), loaded.compose_text.as_bytes()).await?;
        write_whole(&dir.join(SERVICE_FILE), loaded.service_text.as_bytes()).await?;
        self.save_release(name, &release).await?;
        // Old releases go, except the one serving (or that served until a stop).
        let serving = releases
            .iter()
            .find(|r| matches!(r.state, ReleaseState::Live | ReleaseState::Stopped))
            .map(|r| r.number);
        for old in releases.iter().skip(KEEP_RELEASES - 1) {
            if Some(old.number) != serving {
                let _ =
                    tokio::fs::remove_dir_all(self.releases_dir(name).join(old.number.to_string()))
                        .await;
            }
        }
        Ok(release)
    }

    /// Records how a release ended: live (the one before it replaced) or
    /// failed.
    async fn finish_release(
        &self,
        router: &Arc<dyn Router>,
        name: &str,
        release: &mut Release,
        outcome: Result<(), String>,
    ) {
        let now = now_ms();
        match outcome {
            Ok(()) => {
                release.state = ReleaseState::Live;
                release.live_at = Some(now);
                release.ended_at = None;
                release.error = None;
                if let Ok(all) = self.releases(name).await {
                    for mut r in all {
                        if r.number != release.number
                            && matches!(r.state, ReleaseState::Live | ReleaseState::Stopped)
                        {
                            r.state = ReleaseState::Replaced;
                            r.ended_at = Some(now);
                            let _ = self.save_release(name, &r).await;
                        }
                    }
                }
                if let Ok(mut l) = self.load(name).await {
                    l.record.release = release.number;
                    l.record.serving_port = self.live(name).and_then(|i| i.target);
                    let _ = self.save_record(&l.record).await;
                }
            }
            Err(why) => {
                release.state = ReleaseState::Failed;
                release.ended_at = Some(now);
                release.error = Some(why);
            }
        }
        if let Err(e) = self.save_release(name, release).await {
            tracing::warn!(deployment = %name, error = %e, "a release's record could not be saved");
        }
        router.released(name, release);
    }

    /// Makes the files of release `number` the deployment's files again (a new
    /// version); without `number`, those of the newest release before the one
    /// serving that once served. Returns the files before and after, and the
    /// release restored; [`Deployments::start_rollback`] then serves them.
    pub async fn rollback(
        &self,
        name: &str,
        number: Option<u64>,
    ) -> Result<(Loaded, Loaded, u64), DeployError> {
        let current = self.load(name).await?;
        let number = match number {
            Some(n) => n,
            None => {
                let serving = current.record.release;
                self.releases(name)
                    .await?
                    .into_iter()
                    .find(|r| r.number < serving && r.live_at.is_some())
                    .map(|r| r.number)
                    .ok_or_else(|| DeployError::NoRollback(name.to_string()))?
            }
        };
        let (_, compose, service) = self.release(name, number).await?;
        let (before, after) = self
            .update(name, Some(&compose), Some(&service), None)
            .await?;
        Ok((before, after, number))
    }

    /// Starts restored files (see [`Deployments::rollback`]) as a new release
    /// that records the release it restored.
    pub async fn start_rollback(
        self: &Arc<Self>,
        loaded: &Loaded,
        restored: u64,
        router: &Arc<dyn Router>,
    ) -> Result<Instance, DeployError> {
        self.start_release(loaded, router, Some(restored)).await
    }
}

/// Time between a switch and the first look at what the replaced instance
/// still has in flight.
const DRAIN_SETTLE: Duration = Duration::from_millis(250);
/// Release directories kept per deployment (the serving one always).
const KEEP_RELEASES: usize = 20;
/// Where a deployment's releases are kept, one directory each.
pub const RELEASES_DIR: &str = "releases";
const RELEASE_FILE: &str = "release.json";

/// What a release is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ReleaseState {
    /// Starting; not serving yet.
    Deploying,
    /// Serving.
    Live,
    /// Did not become ready (or the gateway refused it); it was dropped.
    Failed,
    /// Served, then replaced by a newer release.
    Replaced,
    /// Was serving when the deployment was stopped; serves again (live) when
    /// the deployment starts with the same files.
    Stopped,
}

/// One release of a deployment: a version of its files that was started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Release {
    pub number: u64,
    /// The files' version it was made from.
    pub version: i64,
    pub state: ReleaseState,
    pub created_at: i64,
    pub live_at: Option<i64>,
    pub ended_at: Option<i64>,
    /// Why it failed.
    pub error: Option<String>,
    pub driver: DriverKind,
    /// `recreate` or `blue-green`.
    pub strategy: crate::spec::Strategy,
    /// The release whose files it restored, for a rollback.
    pub rollback_of: Option<u64>,
}

/// How a host's deployments reach the gateway: the manager writes a revision,
/// an edge its local configuration.
#[async_trait::async_trait]
pub trait Router: Send + Sync {
    /// Serves the deployment's domains from these local ports (weight 0: no new
    /// requests, the instance drains), and returns once the gateway does.
    async fn route(&self, loaded: &Loaded, targets: &[(u16, u32)]) -> Result<(), String>;
    /// Requests and upgraded connections the gateway has in flight to a port
    /// of the deployment (`None`: unknown, taken as none).
    async fn in_flight(&self, name: &str, port: u16) -> Option<u64>;
    /// A release went live or was dropped (to raise an event, say).
    fn released(&self, _name: &str, _release: &Release) {}
}

/// The route and upstream ids of a deployment's proxy.
pub fn proxy_id(name: &str) -> String {
    format!("deploy-{name}")
}

pub use crate::check::target_port;

/// The gateway route and upstream serving a deployment's domains; `None` without
/// domains or a port. `targets` are the local ports of its instances with their
/// weights (see [`Router::route`]); empty, the port its files give.
pub fn proxy_objects(
    name: &str,
    compose: &ComposeFile,
    meta: &ServiceMeta,
    targets: &[(u16, u32)],
) -> Result<Option<(Route, Upstream)>, String> {
    if meta.domains.is_empty() {
        return Ok(None);
    }
    let scheme = meta.protocol.scheme();
    let targets: Vec<Value> = if targets.is_empty() {
        let Some(port) = target_port(compose, meta) else {
            return Ok(None);
        };
        vec![json!({"url": format!("{scheme}://127.0.0.1:{port}")})]
    } else {
        targets
            .iter()
            .map(|(port, weight)| json!({"url": format!("{scheme}://127.0.0.1:{port}"), "weight": weight}))
            .collect()
    };
    let id = proxy_id(name);
    let mut upstream = json!({"name": id, "targets": targets});
    if meta.protocol == AppProtocol::Https {
        // The hop is this host's loopback, and the app's certificate names its
        // domains, not 127.0.0.1 (see `AppProtocol::Https`).
        upstream["tls"] = json!({"verify": false});
    }
    if let Some(h) = &meta.healthcheck {
        let mut active = json!({"path": h.path,
            "interval_ms": h.interval.as_millis() as u64,
            "timeout_ms": h.timeout.as_millis() as u64});
        if let Some(status) = h.expected_status {
            active["expected_statuses"] = json!([status]);
        }
        upstream["health_check"] = json!({ "active": active });
    }
    let mut route = json!({"id": id, "path": "/", "upstream": id, "hosts": meta.domains,
        "description": format!("deployment {name}"), "tags": ["deployment"]});
    if let Some(r) = &meta.rate_limit {
        route["rate_limit"] = json!({"max": r.requests, "window_ms": r.window.as_millis() as u64});
    }
    let upstream: Upstream =
        serde_json::from_value(upstream).map_err(|e| format!("the upstream of {name}: {e}"))?;
    let route: Route =
        serde_json::from_value(route).map_err(|e| format!("the route of {name}: {e}"))?;
    Ok(Some((route, upstream)))
}

/// The configuration edit that makes the gateway serve a deployment as
/// `objects` says (or stop serving it, with `None`).
pub fn proxy_edit(name: &str, objects: Option<&(Route, Upstream)>) -> ProxyEdit {
    let id = proxy_id(name);
    match objects {
        Some((route, upstream)) => ProxyEdit {
            puts: vec![
                (
                    UPSTREAM_KIND,
                    id.clone(),
                    serde_json::to_value(upstream).unwrap_or(Value::Null),
                ),
                (
                    ROUTE_KIND,
                    id,
                    serde_json::to_value(route).unwrap_or(Value::Null),
                ),
            ],
            deletes: Vec::new(),
        },
        None => ProxyEdit {
            puts: Vec::new(),
            deletes: vec![(ROUTE_KIND, id.clone()), (UPSTREAM_KIND, id)],
        },
    }
}

/// Objects to put and delete for a deployment's proxy (owned, to borrow into a
/// configuration edit).
pub struct ProxyEdit {
    pub puts: Vec<(&'static str, String, Value)>,
    pub deletes: Vec<(&'static str, String)>,
}
