//! The edge's deployments: apps deployed on this edge by command from its
//! manager, as the all-in-one server deploys them on its own host
//! ([`fleetgate_deploy::host::Deployments`], under this edge's data directory;
//! supervised processes always, Docker when `docker.socket` reaches an engine).
//!
//! The commands (`create_deployment` … `list_deployment_releases`, Fleetgate
//! additions to the node protocol, see `fleetgate_protocol::node::EDGE_COMMANDS`)
//! are carried out in the background and acked when done, with the deployment
//! in the ack's `data`; a refusal has an `error_code` and, where it helps, its
//! `data` (`VALIDATION_FAILED`: `problems`, each with its file, line, column and
//! field). A refusal after something changed on the edge (a deployment created
//! whose start failed, say) says so with `data.changed: true`.
//!
//! # Routing on the edge
//!
//! The edge's gateway serves each deployment's domains to its local instance.
//! The manager's snapshot cannot (it knows nothing of the edge's ports), so the
//! edge merges a route and an upstream per deployment into the gateway's input
//! on top of the manager's snapshot ([`EdgeFeed`]): again with every snapshot
//! adopted, and alone (the same revision, a new `local` version) when a
//! deployment is routed or switched. Their id is **`edge-deploy-<name>`**
//! ([`route_id`]; the manager's own deployments use `deploy-<name>`, so the two
//! never meet by name).
//!
//! The manager's configuration wins: a deployment whose route or upstream id is
//! already in the manager's snapshot, or whose route cannot be served beside
//! the manager's routes (the same hosts, path and methods as one of them, say),
//! is left out of the gateway's input — never the manager's object — and the
//! edge says so: a change that would be left out is refused (nothing changes),
//! a deployment left out by a later snapshot is reported to the manager as a
//! warning `event` (category `deployment`) and in its view (`proxy.error`), and
//! served again once the conflict is gone.
//!
//! Blue-green releases switch as on the all-in-one server: the route to both
//! instances with their weights, applied by the edge's gateway before the
//! release counts as live, then the replaced instance drains while the gateway
//! reports connections to it ([`EdgeRouter::in_flight`]).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleetgate_core::config::ConfigDocument;
use fleetgate_core::gateway::{Route, Upstream};
use fleetgate_core::time::{now_ms, rfc3339};
use fleetgate_deploy::host::{self, DeployError, Deployments, Desired, Loaded, Release, Router};
use fleetgate_deploy::spec::{DriverError, LogQuery};
use fleetgate_protocol::{AppliedVersions, ConfigFeed, DataPlaneConfig, StatusLink};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

/// The actions this module answers.
pub const ACTIONS: &[&str] = &[
    "create_deployment",
    "update_deployment",
    "delete_deployment",
    "start_deployment",
    "stop_deployment",
    "restart_deployment",
    "rollback_deployment",
    "list_deployments",
    "get_deployment",
    "get_deployment_logs",
    "list_deployment_releases",
];

/// Log lines a `get_deployment_logs` answers by default, and at most.
pub const DEFAULT_LOG_LINES: usize = 200;
pub const MAX_LOG_LINES: usize = 1000;
/// The lines of one answer take at most this many bytes of JSON (the newest
/// kept), well under the node protocol's frame limit.
pub const MAX_LOG_BYTES: usize = 1024 * 1024;
/// How long a switch may take the edge's gateway to apply.
const ROUTE_TIMEOUT: Duration = Duration::from_secs(10);

/// The id of the route and the upstream of an edge deployment.
pub fn route_id(name: &str) -> String {
    format!("edge-deploy-{name}")
}

// ---------------------------------------------------------------------------
// The gateway's input.

/// The edge gateway's input: the manager's configuration with the routes of
/// this edge's deployments merged on top (see the module's doc).
pub struct EdgeFeed {
    feed: ConfigFeed,
    state: Mutex<Overlay>,
}

struct Overlay {
    /// The manager's configuration as adopted last.
    base: Arc<DataPlaneConfig>,
    /// Each routed deployment's route and upstream, by deployment name.
    objects: BTreeMap<String, (Route, Upstream)>,
    /// Goes up with every change of `objects` (the input's `local`).
    version: u64,
    /// Deployments left out of the input, and why.
    left_out: BTreeMap<String, String>,
}

impl EdgeFeed {
    /// The gateway's input `feed`, holding the manager's configuration (or none).
    pub fn new(feed: ConfigFeed) -> Self {
        let base = feed.current();
        EdgeFeed {
            feed,
            state: Mutex::new(Overlay {
                base,
                objects: BTreeMap::new(),
                version: 0,
                left_out: BTreeMap::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Overlay> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Publishes the manager's configuration `config` with the deployments'
    /// routes on top; returns the versions the gateway reports once it serves
    /// them, and the deployments this configuration leaves out (newly) with why.
    pub fn adopt(&self, config: &DataPlaneConfig) -> (AppliedVersions, Vec<(String, String)>) {
        let mut st = self.lock();
        st.base = Arc::new(config.clone());
        let (doc, left_out) = merge(&st.base.gateway, &st.objects);
        let newly = left_out
            .iter()
            .filter(|(n, why)| st.left_out.get(*n) != Some(*why))
            .map(|(n, why)| (n.clone(), why.clone()))
            .collect();
        st.left_out = left_out;
        (self.publish(&st, doc), newly)
    }

    /// Takes `config` (the manager's configuration the gateway serves) as the
    /// base again, after the gateway refused a newer one.
    pub fn restore(&self, config: Arc<DataPlaneConfig>) {
        let mut st = self.lock();
        st.base = config;
        let (doc, left_out) = merge(&st.base.gateway, &st.objects);
        st.left_out = left_out;
        self.publish(&st, doc);
    }

    /// Serves deployment `name` with `objects` (or stops serving it, with
    /// `None`); returns the versions the gateway reports once it does. `Err`
    /// (why) when the route could not be served beside the manager's
    /// configuration or the other deployments' routes: then nothing changes.
    pub fn set(
        &self,
        name: &str,
        objects: Option<(Route, Upstream)>,
    ) -> Result<AppliedVersions, String> {
        let mut st = self.lock();
        if st.objects.get(name) == objects.as_ref() {
            return match st.left_out.get(name) {
                Some(why) => Err(why.clone()),
                None => Ok(self.feed.current().versions()),
            };
        }
        let mut next = st.objects.clone();
        match objects {
            Some(o) => next.insert(name.to_string(), o),
            None => next.remove(name),
        };
        let (doc, left_out) = merge(&st.base.gateway, &next);
        if let Some(why) = left_out.get(name) {
            return Err(why.clone());
        }
        // Never at the expense of a deployment served now.
        if let Some(other) = left_out
            .keys()
            .find(|n| *n != name && !st.left_out.contains_key(*n))
        {
            return Err(format!(
                "its route cannot be served beside the route of deployment {other}"
            ));
        }
        st.objects = next;
        st.left_out = left_out;
        st.version += 1;
        Ok(self.publish(&st, doc))
    }

    /// Whether the gateway's input serves deployment `name`, and if it is left
    /// out, why.
    pub fn proxy_state(&self, name: &str) -> (bool, Option<String>) {
        let st = self.lock();
        let why = st.left_out.get(name).cloned();
        (st.objects.contains_key(name) && why.is_none(), why)
    }

    fn publish(&self, st: &Overlay, doc: ConfigDocument) -> AppliedVersions {
        let mut config = (*st.base).clone();
        config.gateway = Arc::new(doc);
        config.local = st.version;
        self.feed.adopt(&config)
    }
}

/// Whether `doc` (replacing `previous`, valid) can be served.
fn checks(doc: &ConfigDocument, previous: &ConfigDocument) -> Result<(), String> {
    doc.validate_objects_since(Some(previous))
        .and_then(|()| doc.check_compiles())
        .map_err(|e| e.to_string())
}

fn with(doc: &ConfigDocument, route: &Route, upstream: &Upstream) -> ConfigDocument {
    let mut out = doc.clone();
    out.routes.push(route.clone());
    out.upstreams.push(upstream.clone());
    out.normalize();
    out
}

/// The manager's document `base` with the deployments' objects that fit on
/// top, and those that do not with why.
fn merge(
    base: &ConfigDocument,
    objects: &BTreeMap<String, (Route, Upstream)>,
) -> (ConfigDocument, BTreeMap<String, String>) {
    let mut left_out = BTreeMap::new();
    let mut fitting = Vec::new();
    for (name, (route, upstream)) in objects {
        let taken = if base.routes.iter().any(|r| r.id == route.id) {
            Some(format!("route {:?}", route.id))
        } else if base.upstreams.iter().any(|u| u.name == upstream.name) {
            Some(format!("upstream {:?}", upstream.name))
        } else {
            None
        };
        match taken {
            Some(what) => {
                left_out.insert(
                    name.clone(),
                    format!("the manager's configuration has a {what} of its own, which is served instead"),
                );
            }
            None => fitting.push((name, route, upstream)),
        }
    }
    let mut all = base.clone();
    for (_, route, upstream) in &fitting {
        all.routes.push((*route).clone());
        all.upstreams.push((*upstream).clone());
    }
    all.normalize();
    if fitting.is_empty() || checks(&all, base).is_ok() || checks(base, base).is_err() {
        // All fit; or the manager's own configuration cannot be served, which
        // the gateway says when it refuses it, whatever is added.
        return (all, left_out);
    }
    // One by one: those that fit with those before them.
    let mut doc = base.clone();
    for (name, route, upstream) in fitting {
        let candidate = with(&doc, route, upstream);
        match checks(&candidate, &doc) {
            Ok(()) => doc = candidate,
            Err(e) => {
                left_out.insert(
                    name.clone(),
                    format!(
                        "its route {:?} cannot be served beside the manager's routes: {e}",
                        route.id
                    ),
                );
            }
        }
    }
    (doc, left_out)
}

// ---------------------------------------------------------------------------
// The router.

/// The edge's gateway as a deployment's [`Router`]: a switch is a change of the
/// gateway's input ([`EdgeFeed::set`]), done once the gateway reports serving it.
pub struct EdgeRouter {
    feed: Arc<EdgeFeed>,
    status: StatusLink,
}

impl EdgeRouter {
    pub fn new(feed: Arc<EdgeFeed>, status: StatusLink) -> Self {
        EdgeRouter { feed, status }
    }

    /// Waits until the gateway serves `want` (its revision and local version).
    async fn applied(&self, want: AppliedVersions, since: i64) -> Result<(), String> {
        let deadline = Instant::now() + ROUTE_TIMEOUT;
        loop {
            let r = self.status.fresh(Duration::from_millis(100)).await;
            if r.applied.local >= want.local && r.applied.revision >= want.revision {
                return Ok(());
            }
            let refused = r.errors.iter().rev().find(|f| {
                let v = u64::try_from(f.version).unwrap_or(0);
                f.at_ms >= since
                    && ((f.part == "local" && v >= want.local)
                        || (f.part == "revision" && v >= want.revision))
            });
            if let Some(f) = refused {
                return Err(format!(
                    "the edge's gateway refused the route: {}",
                    f.message
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "the edge's gateway did not apply the route within {} s",
                    ROUTE_TIMEOUT.as_secs()
                ));
            }
        }
    }
}

/// A deployment's proxy objects under the edge's ids.
fn edge_objects(
    loaded: &Loaded,
    targets: &[(u16, u32)],
) -> Result<Option<(Route, Upstream)>, String> {
    let name = &loaded.record.name;
    let objects = host::proxy_objects(name, &loaded.compose, &loaded.meta, targets)?;
    Ok(objects.map(|(mut route, mut upstream)| {
        let id = route_id(name);
        route.id.clone_from(&id);
        route.upstream.clone_from(&id);
        route.description = format!("deployment {name} on this edge");
        upstream.name = id;
        (route, upstream)
    }))
}

#[async_trait::async_trait]
impl Router for EdgeRouter {
    async fn route(&self, loaded: &Loaded, targets: &[(u16, u32)]) -> Result<(), String> {
        let objects = edge_objects(loaded, targets)?;
        let since = now_ms();
        let want = self.feed.set(&loaded.record.name, objects)?;
        self.applied(want, since).await
    }

    async fn in_flight(&self, name: &str, port: u16) -> Option<u64> {
        let report = self.status.fresh(Duration::from_millis(500)).await;
        let suffix = format!(":{port}");
        report
            .upstream_health(&route_id(name))?
            .iter()
            .find(|t| t.url.trim_end_matches('/').ends_with(&suffix))
            .map(|t| t.active_connections)
    }
}

// ---------------------------------------------------------------------------
// The commands.

/// Why a deployment command was refused: the `command_ack`'s `error`,
/// `error_code` and `data`.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub message: String,
    pub code: &'static str,
    pub data: Option<Value>,
}

impl Refusal {
    fn new(code: &'static str, message: impl Into<String>) -> Self {
        Refusal {
            message: message.into(),
            code,
            data: None,
        }
    }

    /// Adds the fields of `more` to the data (an object).
    fn and_data(mut self, more: Value) -> Self {
        let mut data = match self.data.take() {
            Some(Value::Object(m)) => m,
            _ => serde_json::Map::new(),
        };
        if let Value::Object(more) = more {
            for (k, v) in more {
                data.entry(k).or_insert(v);
            }
        }
        self.data = Some(Value::Object(data));
        self
    }

    /// The refusal of a command that changed something on the edge first.
    fn after_change(self, more: Value) -> Self {
        self.and_data(json!({"changed": true})).and_data(more)
    }
}

impl From<DeployError> for Refusal {
    fn from(e: DeployError) -> Self {
        match e {
            DeployError::NotFound(name) => {
                Refusal::new("NOT_FOUND", format!("deployment {name} not found"))
            }
            DeployError::Exists(name) => {
                Refusal::new("EXISTS", format!("deployment {name} already exists"))
            }
            DeployError::Invalid(problems) => {
                let first = problems.first();
                let message = first
                    .map(ToString::to_string)
                    .unwrap_or_else(|| "the files do not check".into());
                let field = first
                    .map(|p| {
                        if p.file.is_empty() {
                            p.field.clone()
                        } else {
                            p.file.trim_end_matches(".yml").to_string()
                        }
                    })
                    .unwrap_or_else(|| "compose".into());
                Refusal::new("VALIDATION_FAILED", message)
                    .and_data(json!({"field": field, "problems": problems}))
            }
            DeployError::Broken { name, problems } => Refusal::new(
                "BROKEN",
                format!("the stored files of deployment {name} do not check: {problems}"),
            ),
            DeployError::ReleaseNotFound { name, release } => Refusal::new(
                "RELEASE_NOT_FOUND",
                format!("deployment {name} has no release {release}"),
            ),
            DeployError::NoRollback(name) => Refusal::new(
                "NO_ROLLBACK",
                format!("deployment {name} has no earlier release that served to roll back to"),
            ),
            DeployError::ReleaseFailed { name, release, why } => Refusal::new(
                "RELEASE_FAILED",
                format!("release {release} of deployment {name} was dropped: {why}"),
            )
            .and_data(json!({"release": release})),
            DeployError::VersionMismatch(current) => Refusal::new(
                "VERSION_MISMATCH",
                format!("the deployment is at version {current}, not the one given"),
            )
            .and_data(json!({"current_version": current})),
            DeployError::Driver(DriverError::Unavailable(m)) => Refusal::new(
                "DOCKER_UNAVAILABLE",
                format!("the edge's Docker engine is unavailable: {m}"),
            ),
            DeployError::Driver(DriverError::Unsupported(m)) => {
                Refusal::new("UNSUPPORTED_BY_DRIVER", m)
            }
            DeployError::Driver(DriverError::NotRunning(name)) => {
                Refusal::new("NOT_RUNNING", format!("deployment {name} is not running"))
            }
            DeployError::Driver(e) => Refusal::new("DEPLOYMENT_FAILED", e.to_string()),
            DeployError::Io(e) => Refusal::new(
                "IO_ERROR",
                format!("the edge cannot read or write the deployment's files: {e}"),
            ),
        }
    }
}

/// The deployments of this edge and the router that serves them.
pub struct EdgeDeployments {
    host: Arc<Deployments>,
    feed: Arc<EdgeFeed>,
    router: Arc<dyn Router>,
    events: mpsc::Sender<Value>,
}

impl EdgeDeployments {
    /// The deployments under `<data_dir>/deployments`, Docker at
    /// `docker_socket`, routed through `feed` (whose gateway reports on
    /// `status`); events for the manager go to `events`.
    pub fn open(
        data_dir: &Path,
        docker_socket: &Path,
        feed: Arc<EdgeFeed>,
        status: StatusLink,
        events: mpsc::Sender<Value>,
    ) -> Self {
        let router: Arc<dyn Router> = Arc::new(EdgeRouter::new(feed.clone(), status));
        EdgeDeployments {
            host: Arc::new(Deployments::new(data_dir, docker_socket)),
            feed,
            router,
            events,
        }
    }

    /// The deployments on the host.
    pub fn host(&self) -> &Arc<Deployments> {
        &self.host
    }

    /// After a start of the edge: every deployment's domains are routed (at
    /// the port its files give), then those an operator left running start.
    pub async fn start_stored(&self) {
        let names = match self.host.names().await {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(error = %e, "cannot list the deployments");
                return;
            }
        };
        for name in &names {
            match self.host.load(name).await {
                Ok(l) => {
                    if let Err(e) = self.router.route(&l, &[]).await {
                        tracing::warn!(deployment = %name, error = %e, "a deployment is not routed");
                    }
                }
                Err(e) => {
                    tracing::error!(deployment = %name, error = %e, "a deployment cannot be read")
                }
            }
        }
        self.host.resume(&self.router).await;
    }

    /// Stops every deployment (at shutdown; they start again with the edge).
    pub async fn shutdown(&self) {
        self.host.stop_all().await;
    }

    /// Reports deployments a new manager configuration leaves out.
    pub fn report_left_out(&self, left_out: Vec<(String, String)>) {
        for (name, why) in left_out {
            tracing::warn!(deployment = %name, reason = %why, "a deployment is not served");
            let _ = self.events.try_send(json!({
                "severity": "warning",
                "category": "deployment",
                "message": format!("deployment {name} on this edge is not served: {why}"),
                "details": {"deployment": name, "route_id": route_id(&name)},
            }));
        }
    }

    /// How many deployments this edge holds.
    pub async fn count(&self) -> usize {
        self.host.names().await.map(|n| n.len()).unwrap_or(0)
    }

    /// Carries out `action` (whose `type` is one of [`ACTIONS`]); the ack's data.
    pub async fn execute(&self, kind: &str, action: &Value) -> Result<Value, Refusal> {
        match kind {
            "list_deployments" => self.list().await,
            "create_deployment" => self.create(action).await,
            "update_deployment" => self.update(action).await,
            "delete_deployment" => self.delete(&name(action)?).await,
            "start_deployment" | "restart_deployment" => self.start(&name(action)?, kind).await,
            "stop_deployment" => self.stop(&name(action)?).await,
            "rollback_deployment" => self.rollback(action).await,
            "get_deployment" => {
                let l = self.host.load(&name(action)?).await?;
                let files = flag(action, "files")?.unwrap_or(false);
                Ok(json!({"deployment": self.view(&l, files).await}))
            }
            "get_deployment_logs" => self.logs(action).await,
            "list_deployment_releases" => self.releases(&name(action)?).await,
            other => Err(Refusal::new(
                "UNKNOWN_COMMAND",
                format!("Unknown command: {other}"),
            )),
        }
    }

    async fn list(&self) -> Result<Value, Refusal> {
        let mut items = Vec::new();
        for name in self.host.names().await? {
            match self.host.load(&name).await {
                Ok(l) => items.push(self.view(&l, false).await),
                Err(e) => {
                    tracing::warn!(deployment = %name, error = %e, "a deployment cannot be read")
                }
            }
        }
        Ok(json!({ "items": items }))
    }

    async fn create(&self, action: &Value) -> Result<Value, Refusal> {
        let name = name(action)?;
        let compose = text(action, "compose")?.ok_or_else(|| missing("compose"))?;
        let service = text(action, "service")?.unwrap_or_default();
        let start = flag(action, "start")?.unwrap_or(true);
        let desired = if start {
            Desired::Running
        } else {
            Desired::Stopped
        };
        let l = self.host.create(&name, &compose, &service, desired).await?;
        if let Err(why) = self.router.route(&l, &[]).await {
            // Nothing half-made: the deployment goes with its refused route.
            let _ = self.host.remove(&name).await;
            let _ = self.feed.set(&name, None);
            return Err(Refusal::new(
                "PROXY_REFUSED",
                format!("the edge cannot serve deployment {name}: {why}"),
            ));
        }
        if start {
            if let Err(e) = self.host.start(&l, &self.router).await {
                let _ = self.host.stop(&l).await;
                let _ = self.host.set_desired(&name, Desired::Stopped).await;
                return Err(Refusal::from(e).after_change(json!({"created": true, "name": name})));
            }
        }
        let l = self.host.load(&name).await?;
        Ok(json!({"deployment": self.view(&l, false).await}))
    }

    async fn update(&self, action: &Value) -> Result<Value, Refusal> {
        let name = name(action)?;
        let compose = text(action, "compose")?;
        let service = text(action, "service")?;
        let expected = count(action, "version")?.map(|v| i64::try_from(v).unwrap_or(i64::MAX));
        let (before, after) = self
            .host
            .update(&name, compose.as_deref(), service.as_deref(), expected)
            .await?;
        let previous = summary(&before);
        let saved = json!({"saved": true, "version": after.record.version, "previous": previous});
        let targets = self.host.targets(&name);
        if let Err(why) = self.router.route(&after, &targets).await {
            return Err(Refusal::new(
                "PROXY_REFUSED",
                format!("the edge cannot serve the new files of deployment {name}: {why}"),
            )
            .after_change(saved));
        }
        if after.record.desired == Desired::Running {
            if let Err(e) = self.host.start(&after, &self.router).await {
                // The new files are saved; the release serving before serves on.
                return Err(Refusal::from(e).after_change(saved));
            }
        }
        let l = self.host.load(&name).await?;
        Ok(json!({"deployment": self.view(&l, false).await, "previous": previous}))
    }

    async fn delete(&self, name: &str) -> Result<Value, Refusal> {
        let l = self.host.load(name).await?;
        self.feed.set(name, None).map_err(|why| {
            Refusal::new(
                "PROXY_REFUSED",
                format!("deployment {name} cannot be unrouted: {why}"),
            )
        })?;
        let gone = match self.host.remove(name).await {
            Ok(gone) => gone,
            Err(e) => {
                // Still there: routed again as it was.
                let _ = self.router.route(&l, &self.host.targets(name)).await;
                return Err(e.into());
            }
        };
        Ok(json!({ "deployment": summary(&gone) }))
    }

    async fn start(&self, name: &str, kind: &str) -> Result<Value, Refusal> {
        let l = self.host.set_desired(name, Desired::Running).await?;
        // A new instance replaces the running one as a release does.
        if let Err(e) = self.host.start(&l, &self.router).await {
            return Err(
                Refusal::from(e).after_change(json!({"desired": "running", "action": kind}))
            );
        }
        let l = self.host.load(name).await?;
        Ok(json!({"deployment": self.view(&l, false).await}))
    }

    async fn stop(&self, name: &str) -> Result<Value, Refusal> {
        let l = self.host.set_desired(name, Desired::Stopped).await?;
        if let Err(e) = self.host.stop(&l).await {
            return Err(Refusal::from(e).after_change(json!({"desired": "stopped"})));
        }
        let l = self.host.load(name).await?;
        Ok(json!({"deployment": self.view(&l, false).await}))
    }

    async fn rollback(&self, action: &Value) -> Result<Value, Refusal> {
        let name = name(action)?;
        let wanted = count(action, "release")?;
        let (before, after, restored) = self.host.rollback(&name, wanted).await?;
        let previous = summary(&before);
        let saved = json!({"saved": true, "version": after.record.version,
                           "previous": previous, "restored_release": restored});
        let targets = self.host.targets(&name);
        if let Err(why) = self.router.route(&after, &targets).await {
            return Err(Refusal::new(
                "PROXY_REFUSED",
                format!("the edge cannot serve the restored files of deployment {name}: {why}"),
            )
            .after_change(saved));
        }
        if after.record.desired == Desired::Running {
            if let Err(e) = self
                .host
                .start_rollback(&after, restored, &self.router)
                .await
            {
                return Err(Refusal::from(e).after_change(saved));
            }
        }
        let l = self.host.load(&name).await?;
        Ok(
            json!({"deployment": self.view(&l, false).await, "previous": previous,
                  "restored_release": restored}),
        )
    }

    async fn logs(&self, action: &Value) -> Result<Value, Refusal> {
        let name = name(action)?;
        let l = self.host.load(&name).await?;
        let tail = match count(action, "tail")? {
            None => DEFAULT_LOG_LINES,
            Some(n) if n <= MAX_LOG_LINES as u64 => n as usize,
            Some(_) => {
                return Err(Refusal::new(
                    "BAD_REQUEST",
                    format!("tail must be from 0 to {MAX_LOG_LINES}"),
                )
                .and_data(json!({"field": "tail"})))
            }
        };
        let service = match action.get("service") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if l.compose.service(s).is_some() => Some(s.clone()),
            Some(other) => {
                return Err(Refusal::new(
                    "BAD_REQUEST",
                    format!("deployment {name} has no service {other}"),
                )
                .and_data(json!({"field": "service"})))
            }
        };
        let since = count(action, "since")?.map(|v| i64::try_from(v).unwrap_or(i64::MAX));
        let query = LogQuery {
            service,
            tail: Some(tail),
            since,
        };
        let (driver, key) = self.host.driver(&name, &l.meta, &l.compose).await;
        let mut lines = driver.logs(&key, &query).await.map_err(DeployError::from)?;
        // The newest lines that fit, counted as they are sent (JSON).
        let mut bytes = 0;
        let mut keep = lines.len();
        while keep > 0 {
            let size = serde_json::to_string(&lines[keep - 1]).map_or(0, |t| t.len()) + 1;
            if bytes + size > MAX_LOG_BYTES {
                break;
            }
            bytes += size;
            keep -= 1;
        }
        let truncated = keep > 0;
        let lines = lines.split_off(keep);
        Ok(json!({"items": lines, "truncated": truncated}))
    }

    async fn releases(&self, name: &str) -> Result<Value, Refusal> {
        let mut items = Vec::new();
        for r in self.host.releases(name).await? {
            let (r, compose, service) = self.host.release(name, r.number).await?;
            items.push(release_view(&r, &compose, &service));
        }
        Ok(json!({ "items": items }))
    }

    /// A deployment as the manager shows it (its files only with `files`).
    async fn view(&self, l: &Loaded, files: bool) -> Value {
        let d = &self.host;
        let name = &l.record.name;
        let kind = d.driver_kind(name, &l.meta, &l.compose).await;
        let services = d.statuses(l).await;
        let live = d.live(name);
        let (served, error) = self.feed.proxy_state(name);
        let mut v = json!({
            "name": name,
            "desired": l.record.desired,
            "status": fleetgate_deploy::spec::overall(&services),
            "driver": kind,
            "services": services,
            "domains": l.meta.domains,
            "port": live.as_ref().map_or_else(|| host::target_port(&l.compose, &l.meta), |i| i.target),
            "ssl": l.meta.ssl.enabled,
            "version": l.record.version,
            "release": l.record.release,
            "strategy": fleetgate_deploy::rollout::strategy(&l.compose, &l.meta, kind).as_str(),
            "instance": live.map(|i| json!({"key": i.key, "release": i.release, "target": i.target,
                "ports": i.ports, "started_at": rfc3339(i.started_at)})),
            "draining": d.draining(name).into_iter().map(|i| i.key).collect::<Vec<_>>(),
            "proxy": {"route_id": route_id(name), "served": served, "error": error},
            "created_at": rfc3339(l.record.created_at),
            "updated_at": rfc3339(l.record.updated_at),
            "compose_sha256": digest(&l.compose_text),
            "service_sha256": digest(&l.service_text),
        });
        if files {
            v["compose"] = json!(l.compose_text);
            v["service"] = json!(l.service_text);
        }
        v
    }
}

fn digest(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// What is said of a deployment's files without them: their digests.
fn summary(l: &Loaded) -> Value {
    json!({"name": l.record.name, "version": l.record.version, "desired": l.record.desired,
           "services": l.compose.services.iter().map(|s| &s.name).collect::<Vec<_>>(),
           "domains": l.meta.domains,
           "compose_sha256": digest(&l.compose_text), "service_sha256": digest(&l.service_text)})
}

fn release_view(r: &Release, compose: &str, service: &str) -> Value {
    json!({"number": r.number, "version": r.version, "state": r.state,
           "created_at": rfc3339(r.created_at), "live_at": r.live_at.map(rfc3339),
           "ended_at": r.ended_at.map(rfc3339), "error": r.error, "driver": r.driver,
           "strategy": r.strategy, "rollback_of": r.rollback_of,
           "compose_sha256": digest(compose), "service_sha256": digest(service)})
}

fn missing(param: &str) -> Refusal {
    Refusal::new("BAD_REQUEST", format!("Missing {param}")).and_data(json!({"field": param}))
}

fn wrong(param: &str, kind: &str) -> Refusal {
    Refusal::new("BAD_REQUEST", format!("{param} must be {kind}")).and_data(json!({"field": param}))
}

fn name(action: &Value) -> Result<String, Refusal> {
    match action.get("name") {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        None | Some(Value::Null) => Err(missing("name")),
        Some(_) => Err(wrong("name", "a non-empty string")),
    }
}

fn text(action: &Value, param: &str) -> Result<Option<String>, Refusal> {
    match action.get(param) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(wrong(param, "a string")),
    }
}

fn flag(action: &Value, param: &str) -> Result<Option<bool>, Refusal> {
    match action.get(param) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(wrong(param, "true or false")),
    }
}

fn count(action: &Value, param: &str) -> Result<Option<u64>, Refusal> {
    match action.get(param) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| wrong(param, "a whole number from 0 up")),
    }
}

#[cfg(test)]
mod tests;
