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

use crate::docker::DockerDriver;
use crate::process::ProcessDriver;
use crate::spec::{AppProtocol, ComposeFile, Deployment, Driver, DriverKind, Problem, ServiceMeta};
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
    /// The driver each started deployment runs on, so that its status, logs
    /// and stop go there whatever `auto` would choose now.
    started: Mutex<HashMap<String, DriverKind>>,
    /// Serialises changes (files, starts and stops).
    lock: tokio::sync::Mutex<()>,
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
            started: Mutex::new(HashMap::new()),
            lock: tokio::sync::Mutex::new(()),
        }
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
        self.started
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .copied()
    }

    fn set_started(&self, name: &str, kind: Option<DriverKind>) {
        let mut started = self.started.lock().unwrap_or_else(|e| e.into_inner());
        match kind {
            Some(k) => started.insert(name.to_string(), k),
            None => started.remove(name),
        };
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

    /// The driver that runs a deployment.
    pub async fn driver(
        &self,
        name: &str,
        meta: &ServiceMeta,
        compose: &ComposeFile,
    ) -> Arc<dyn Driver> {
        self.by_kind(self.driver_kind(name, meta, compose).await)
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
        let _guard = self.lock.lock().await;
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
        let mut loaded = self.load(name).await?;
        if loaded.record.desired != desired {
            loaded.record.desired = desired;
            loaded.record.updated_at = now_ms();
            self.save_record(&loaded.record).await?;
        }
        Ok(loaded)
    }

    /// Starts (or restarts) a deployment's services.
    pub async fn start(&self, loaded: &Loaded) -> Result<(), DeployError> {
        let _guard = self.lock.lock().await;
        let dir = self.dir(&loaded.record.name);
        let deployment = Deployment {
            name: &loaded.record.name,
            dir: &dir,
            compose: &loaded.compose,
            meta: &loaded.meta,
        };
        let name = &loaded.record.name;
        let kind = self.choose(&loaded.meta, &loaded.compose).await;
        if let Some(previous) = self.started_kind(name).filter(|p| *p != kind) {
            // Moving to the other driver: the old instance goes first.
            self.by_kind(previous).stop(name).await?;
            self.set_started(name, None);
        }
        // Known to the driver even when it fails (it keeps what started, to
        // show and to stop).
        self.set_started(name, Some(kind));
        self.by_kind(kind).start(&deployment).await?;
        Ok(())
    }

    /// Stops a deployment's services.
    pub async fn stop(&self, loaded: &Loaded) -> Result<(), DeployError> {
        let _guard = self.lock.lock().await;
        let name = &loaded.record.name;
        let kind = self.driver_kind(name, &loaded.meta, &loaded.compose).await;
        self.by_kind(kind).stop(name).await?;
        self.set_started(name, None);
        Ok(())
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
    pub async fn resume(&self) {
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
                    if let Err(e) = self.start(&l).await {
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
}

/// The route and upstream ids of a deployment's proxy.
pub fn proxy_id(name: &str) -> String {
    format!("deploy-{name}")
}

pub use crate::check::target_port;

/// The gateway route and upstream serving a deployment's domains; `None` without
/// domains or a port.
pub fn proxy_objects(
    name: &str,
    compose: &ComposeFile,
    meta: &ServiceMeta,
) -> Result<Option<(Route, Upstream)>, String> {
    if meta.domains.is_empty() {
        return Ok(None);
    }
    let Some(port) = target_port(compose, meta) else {
        return Ok(None);
    };
    let id = proxy_id(name);
    let scheme = meta.protocol.scheme();
    let mut upstream =
        json!({"name": id, "targets": [{"url": format!("{scheme}://127.0.0.1:{port}")}]});
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
