//! Fleetgate's HTTP gateway. It serves from one input, a watch channel of
//! [`DataPlaneConfig`] (routes, upstreams, certificates, redirect and page sets,
//! synced rules) — the built-in gateway of `fleetgate serve` gets it in-process, an
//! edge gets the same value over the node protocol — and never touches the store
//! or waits on the manager. It reports back on a status channel
//! ([`Gateway::report_status`]).
//!
//! Each part is validated and compiled when its version changes (the route table
//! and upstream runtimes into an immutable [`compiled::Compiled`], rule sets into
//! matchers) and swapped in atomically; requests in flight keep what they started
//! with, so a change never drops them. A part that does not compile is refused
//! with an event and the last good one keeps serving.

pub mod access_log;
pub mod ai;
mod clock;
pub mod compiled;
mod forward;
pub mod limit;
pub mod metrics;
pub mod pool;
mod server;
mod stall;
pub mod tls;
pub mod upstream;

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use fleetgate_core::events::{emit, EventSink, NewEvent, Severity};
use fleetgate_core::gateway::{BreakerStatus, TargetHealth};
use fleetgate_core::redirects::matcher::RuleSet;
use fleetgate_core::redirects::HostRules;
use fleetgate_core::ConfigDocument;
use fleetgate_protocol::{AppliedVersions, ConfigFault, LimiterStatus, Site, UpstreamStatus};
pub use fleetgate_protocol::{DataPlaneConfig, DataPlaneStatus, StatusLink};
use hyper::body::Incoming;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use compiled::Compiled;
pub use forward::ProxyBody;
use metrics::MetricsRegistry;

/// Start-up options of the gateway.
#[derive(Clone)]
pub struct GatewayOptions {
    /// Print one JSON line per proxied request on standard output.
    pub access_log: Option<access_log::AccessLog>,
    /// Share rate-limit counters with other gateways through this Redis (whether
    /// requests are admitted while it cannot answer is configuration:
    /// [`DataPlaneConfig::rate_limits`]).
    pub redis_url: Option<String>,
    /// A client must send its request headers within this time (slow clients are cut off).
    pub header_read_timeout: Duration,
    /// A client may pause this long between two parts of its request body.
    pub client_body_timeout: Duration,
    /// A client that reads nothing of its response for this long is cut off.
    pub client_send_timeout: Duration,
    /// Where the gateway's events go (the manager's event hub).
    pub events: Option<Arc<dyn EventSink>>,
    /// Where `ai` routes send a usage record per relayed request (the
    /// manager's batch writer).
    pub ai_usage: Option<fleetgate_protocol::ai::UsageSink>,
    /// Where `ai` routes' `block` and `throttle` budgets lease allowance from
    /// (the store shared by every gateway process); without it a budget's
    /// limit is this process's own.
    pub ai_allowances: Option<Arc<dyn fleetgate_protocol::ai::BudgetAllowances>>,
    /// Where the spans of traced requests go (OpenTelemetry); `None` traces
    /// nothing. Which requests are traced is the revision's
    /// `settings.tracing`.
    pub tracer: Option<fleetgate_shared::otel::Tracer>,
}

impl std::fmt::Debug for GatewayOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayOptions")
            .field("access_log", &self.access_log)
            .field("redis_url", &self.redis_url.as_ref().map(|_| "<set>"))
            .field("header_read_timeout", &self.header_read_timeout)
            .field("client_body_timeout", &self.client_body_timeout)
            .field("client_send_timeout", &self.client_send_timeout)
            .field("events", &self.events)
            .field("ai_usage", &self.ai_usage.is_some())
            .field("ai_allowances", &self.ai_allowances.is_some())
            .field("tracer", &self.tracer.is_some())
            .finish()
    }
}

impl Default for GatewayOptions {
    fn default() -> Self {
        Self {
            access_log: None,
            redis_url: None,
            header_read_timeout: Duration::from_secs(10),
            client_body_timeout: Duration::from_secs(60),
            client_send_timeout: Duration::from_secs(60),
            events: None,
            ai_usage: None,
            ai_allowances: None,
            tracer: None,
        }
    }
}

pub struct GatewayInner {
    pub(crate) current: ArcSwap<Compiled>,
    /// Published redirect and page rules of the manager's projects, by host.
    pub(crate) redirects: ArcSwap<HostRules>,
    /// The same sets by site id with their version, for hit counts.
    pub(crate) site_sets: ArcSwap<HashMap<String, (i64, Arc<RuleSet>)>>,
    /// Rules synced from a Flecto-compatible manager, for every other host.
    pub(crate) remote_redirects: arc_swap::ArcSwapOption<RuleSet>,
    pub(crate) metrics: MetricsRegistry,
    pub(crate) access_log: Option<access_log::AccessLog>,
    pub(crate) shared_limits: Option<limit::SharedCounter>,
    pub(crate) header_read_timeout: Duration,
    pub(crate) client_body_timeout: Duration,
    pub(crate) client_send_timeout: Duration,
    pub(crate) events: Option<Arc<dyn EventSink>>,
    /// The AI gateway's providers, callers and budget ledgers.
    pub(crate) ai: ArcSwap<ai::AiRuntime>,
    pub(crate) ai_usage: Option<fleetgate_protocol::ai::UsageSink>,
    pub(crate) ai_allowances: Option<Arc<dyn fleetgate_protocol::ai::BudgetAllowances>>,
    /// Where traced requests' spans go (see `forward::trace`).
    pub(crate) tracer: Option<fleetgate_shared::otel::Tracer>,
    /// Port of the HTTPS listener once bound, for HTTP→HTTPS redirects (0 = none).
    pub(crate) https_port: std::sync::atomic::AtomicU16,
    /// Certificates of the HTTPS listener, by SNI name.
    pub(crate) tls: Arc<tls::SniResolver>,
    /// Pending ACME HTTP-01 answers, by token (see `forward::acme_challenge`).
    pub(crate) challenges: ArcSwap<fleetgate_protocol::AcmeChallenges>,
    /// What has been applied of the input, and what was refused; held while
    /// applying (one apply at a time).
    applied: Mutex<Applied>,
    /// The versions served and the faults kept, as of the last apply: what status
    /// reports read, never waiting for an apply in progress.
    reported: Mutex<(AppliedVersions, Vec<ConfigFault>)>,
    /// Signalled after each apply, so that a status report follows it.
    applied_notify: tokio::sync::Notify,
}

/// Faults kept for the status report.
const FAULTS_KEPT: usize = 8;

/// The gateway's memory of its input between applies.
#[derive(Default)]
struct Applied {
    versions: AppliedVersions,
    /// The document compiled last (or refused last), to skip it when it comes again.
    document: Option<Arc<ConfigDocument>>,
    /// The document served: its objects were validated when it was applied.
    served: Option<Arc<ConfigDocument>>,
    /// Compiled rule sets by site id, with the site they were built from.
    sites: HashMap<String, (Arc<Site>, Arc<RuleSet>)>,
    /// The synced site compiled last.
    synced: Option<Arc<Site>>,
    faults: VecDeque<ConfigFault>,
}

impl Applied {
    fn fault(&mut self, part: &str, version: i64, message: String) {
        if self.faults.len() == FAULTS_KEPT {
            self.faults.pop_front();
        }
        self.faults.push_back(ConfigFault {
            part: part.into(),
            version,
            message,
            at_ms: fleetgate_core::time::now_ms(),
        });
    }
}

/// Carries the hit counts of the rules a new version of a site kept (same type and
/// source, or same type and path) from the set it replaces.
fn carry_hits(old: &Site, old_set: &RuleSet, new: &Site, new_set: &RuleSet) {
    use fleetgate_core::redirects::matcher::RuleRef;
    fn redirect_key(r: &fleetgate_core::redirects::Redirect) -> (&str, &str) {
        (r.kind.as_str(), r.source.as_str())
    }
    fn page_key(p: &fleetgate_core::redirects::Page) -> (&str, &str) {
        (p.kind.as_str(), p.path.as_str())
    }
    carry(
        old.redirects.iter().map(redirect_key),
        &old_set.redirect_hits(),
        new.redirects.iter().map(redirect_key),
        |i, n| new_set.add_hits(RuleRef::Redirect(i), n),
    );
    carry(
        old.pages.iter().map(page_key),
        &old_set.page_hits(),
        new.pages.iter().map(page_key),
        |i, n| new_set.add_hits(RuleRef::Page(i), n),
    );
}

/// Gives each new rule the count of the old rule with its key.
fn carry<'a>(
    old: impl Iterator<Item = (&'a str, &'a str)>,
    hits: &[u64],
    new: impl Iterator<Item = (&'a str, &'a str)>,
    add: impl Fn(usize, u64),
) {
    let before: HashMap<(&str, &str), u64> = old
        .zip(hits)
        .filter(|(_, &n)| n > 0)
        .map(|(k, &n)| (k, n))
        .collect();
    if before.is_empty() {
        return;
    }
    for (i, k) in new.enumerate() {
        if let Some(&n) = before.get(&k) {
            add(i, n);
        }
    }
}

/// Compiles one site's rules, logging those skipped.
fn compile_site(site: &Site) -> RuleSet {
    let set = RuleSet::build(site.redirects.clone(), site.pages.clone());
    for s in set.skipped() {
        tracing::warn!(site = %site.label, kind = s.kind, index = s.index, reason = %s.message, "rule skipped");
    }
    set
}

/// Seconds between the gateway's aggregated events.
pub const EVENT_WINDOW: Duration = Duration::from_secs(10);

/// Turns per-request counters into one event per route or upstream and window:
/// `rate_limit.exceeded` (rejections by a route's rate limit), `proxy.timeout`
/// (attempts an upstream did not answer in time) and `proxy.upstream_error` (other
/// failed attempts), never one per request.
async fn aggregate_events(inner: std::sync::Weak<GatewayInner>) {
    let mut last = fleetgate_core::metrics::TrafficCounters::default();
    let mut tick = tokio::time::interval(EVENT_WINDOW);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let now = inner.metrics.traffic();
        let d = now.since(&last);
        last = now;
        let secs = EVENT_WINDOW.as_secs();
        let sink = inner.events.as_ref();
        for (id, r) in &d.routes {
            let n = r.rate_limited;
            if n > 0 {
                emit(
                    sink,
                    NewEvent::new(
                        "rate_limit.exceeded",
                        Severity::Warning,
                        format!("route {id}: {n} requests refused by its rate limit in the last {secs} s"),
                    )
                    .route(id)
                    .details(serde_json::json!({"count": n, "window_secs": secs})),
                );
            }
        }
        for (name, u) in &d.upstreams {
            if u.timeouts > 0 {
                let n = u.timeouts;
                emit(
                    sink,
                    NewEvent::new(
                        "proxy.timeout",
                        Severity::Warning,
                        format!("upstream {name}: {n} attempts got no answer in time in the last {secs} s"),
                    )
                    .upstream(name)
                    .details(serde_json::json!({"count": n, "window_secs": secs})),
                );
            }
            let n = u.failures.saturating_sub(u.timeouts);
            if n > 0 {
                emit(
                    sink,
                    NewEvent::new(
                        "proxy.upstream_error",
                        Severity::Warning,
                        format!("upstream {name}: {n} failed attempts in the last {secs} s"),
                    )
                    .upstream(name)
                    .details(serde_json::json!({"count": n, "window_secs": secs})),
                );
            }
        }
    }
}

/// A random number fixed for the process, prefixing generated request ids.
pub(crate) fn process_nonce() -> u32 {
    static N: OnceLock<u32> = OnceLock::new();
    *N.get_or_init(|| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        t ^ std::process::id().rotate_left(16)
    })
}

/// The gateway: cheap to clone, all clones share one compiled configuration.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<GatewayInner>,
}

impl Gateway {
    /// Builds the gateway and follows `config`, its one input: each new value is
    /// applied (see [`Gateway::apply`]) off the async runtime's worker, since
    /// compiling large rule sets takes a while.
    pub fn new(mut config: watch::Receiver<Arc<DataPlaneConfig>>, options: GatewayOptions) -> Self {
        let first = config.borrow_and_update().clone();
        let inner = Arc::new(GatewayInner {
            current: ArcSwap::from_pointee(Compiled::empty()),
            redirects: ArcSwap::from_pointee(HostRules::default()),
            site_sets: ArcSwap::from_pointee(HashMap::new()),
            remote_redirects: arc_swap::ArcSwapOption::empty(),
            metrics: MetricsRegistry::default(),
            access_log: options.access_log,
            header_read_timeout: options.header_read_timeout,
            client_body_timeout: options.client_body_timeout,
            client_send_timeout: options.client_send_timeout,
            events: options.events.clone(),
            ai: ArcSwap::from_pointee(ai::AiRuntime::default()),
            ai_usage: options.ai_usage.clone(),
            ai_allowances: options.ai_allowances.clone(),
            tracer: options.tracer.clone(),
            https_port: std::sync::atomic::AtomicU16::new(0),
            tls: Arc::new(tls::SniResolver::default()),
            challenges: ArcSwap::from_pointee(Default::default()),
            applied: Mutex::new(Applied::default()),
            reported: Mutex::new(Default::default()),
            applied_notify: tokio::sync::Notify::new(),
            shared_limits: options.redis_url.as_deref().and_then(|url| {
                match limit::SharedCounter::new(
                    url,
                    first.rate_limits.fail_open,
                    options.events.clone(),
                ) {
                    Ok(c) => Some(c),
                    Err(e) => {
                        tracing::error!(error = %e, "shared rate limits disabled");
                        None
                    }
                }
            }),
        });
        let gw = Gateway { inner };
        gw.apply(&first);
        if gw.inner.events.is_some() {
            tokio::spawn(aggregate_events(Arc::downgrade(&gw.inner)));
        }
        let weak = Arc::downgrade(&gw.inner);
        tokio::spawn(async move {
            while config.changed().await.is_ok() {
                let next = config.borrow_and_update().clone();
                let Some(inner) = weak.upgrade() else { return };
                let gw = Gateway { inner };
                if tokio::task::spawn_blocking(move || gw.apply(&next))
                    .await
                    .is_err()
                {
                    tracing::error!(
                        "applying a configuration panicked; the previous one keeps serving"
                    );
                }
            }
        });
        gw
    }

    /// Validates, compiles and swaps in every part of `config` whose version
    /// differs from what is served. A part that does not compile is refused — a
    /// critical `config.rejected` event, a fault in the status report — and the
    /// one in force keeps serving; the other parts still apply. Returns whether
    /// anything changed.
    pub fn apply(&self, config: &DataPlaneConfig) -> bool {
        let mut applied = self.inner.applied.lock().unwrap_or_else(|p| p.into_inner());
        let mut changed = self.apply_revision(&mut applied, config);
        if config.certificates.version != applied.versions.certificates {
            self.inner.tls.update(&config.certificates.bundles);
            applied.versions.certificates = config.certificates.version;
            changed = true;
        }
        if config.sites.version != applied.versions.sites {
            self.apply_sites(&mut applied, config);
            changed = true;
        }
        if config.ai.version != applied.versions.ai {
            let previous = self.inner.ai.load_full();
            self.inner.ai.store(Arc::new(ai::AiRuntime::build(
                &config.ai,
                &previous,
                self.inner.ai_allowances.as_ref(),
            )));
            applied.versions.ai = config.ai.version;
            changed = true;
        }
        if config.challenges.version != applied.versions.challenges {
            self.inner.challenges.store(config.challenges.clone());
            applied.versions.challenges = config.challenges.version;
            changed = true;
        }
        let same_synced = match (&applied.synced, &config.synced) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b) || a == b,
            (None, None) => true,
            _ => false,
        };
        if !same_synced {
            let set = config.synced.as_ref().map(|s| Arc::new(compile_site(s)));
            self.inner.remote_redirects.store(set);
            applied.synced = config.synced.clone();
            applied.versions.synced = config.synced.as_ref().map(|s| s.version);
            changed = true;
        }
        if let Some(counter) = &self.inner.shared_limits {
            counter.set_fail_open(config.rate_limits.fail_open);
        }
        if changed {
            *self
                .inner
                .reported
                .lock()
                .unwrap_or_else(|p| p.into_inner()) =
                (applied.versions, applied.faults.iter().cloned().collect());
        }
        drop(applied);
        if changed {
            self.inner.applied_notify.notify_one();
        }
        changed
    }

    /// The routes, upstreams and settings part: compiled when the revision is newer
    /// than the one served (or, before the first revision, when it differs), or
    /// when the host's own objects merged into it changed (`local`, an edge's
    /// deployments) at the revision served.
    fn apply_revision(&self, applied: &mut Applied, config: &DataPlaneConfig) -> bool {
        let previous = self.inner.current.load_full();
        if applied
            .document
            .as_ref()
            .is_some_and(|d| Arc::ptr_eq(d, &config.gateway) || **d == *config.gateway)
            && applied.versions.revision == config.revision
            && applied.versions.local == config.local
        {
            return false;
        }
        let local_only =
            config.revision == previous.revision && config.local != applied.versions.local;
        if config.revision != 0 && config.revision <= previous.revision && !local_only {
            return false;
        }
        // What arrives is checked as the manager checked it before committing (an
        // edge may be sent anything); objects unchanged since the document served
        // were checked when it was applied.
        let served = applied.served.clone();
        applied.document = Some(config.gateway.clone());
        let events = self.inner.events.as_ref();
        let built = config
            .gateway
            .validate_objects_since(served.as_deref())
            .map_err(|e| e.to_string())
            .and_then(|()| {
                Compiled::build(
                    config.revision,
                    &config.gateway,
                    &previous,
                    &self.inner.metrics,
                    events,
                )
            });
        match built {
            Ok(c) => {
                emit(
                    events,
                    NewEvent::new(
                        "config.applied",
                        Severity::Info,
                        format!(
                            "gateway applied revision {} ({} routes)",
                            config.revision,
                            c.table.len()
                        ),
                    )
                    .details(
                        serde_json::json!({"revision": config.revision, "routes": c.table.len()}),
                    ),
                );
                self.inner.current.store(Arc::new(c));
                applied.versions.revision = config.revision;
                applied.versions.local = config.local;
                applied.served = Some(config.gateway.clone());
                true
            }
            Err(e) => {
                emit(
                    events,
                    NewEvent::new(
                        "config.rejected",
                        Severity::Critical,
                        format!(
                            "gateway rejected revision {}: {e}; the previous one keeps serving",
                            config.revision
                        ),
                    )
                    .details(serde_json::json!({"revision": config.revision, "error": e})),
                );
                // Refused host objects alone are a fault of their own: the
                // revision served is still the one it was.
                let (part, version) = if local_only {
                    ("local", config.local)
                } else {
                    ("revision", config.revision)
                };
                applied.fault(part, i64::try_from(version).unwrap_or(i64::MAX), e);
                true
            }
        }
    }

    /// The published redirect and page sets: sites whose version is unchanged keep
    /// their compiled rules; the host map is rebuilt and swapped whole.
    fn apply_sites(&self, applied: &mut Applied, config: &DataPlaneConfig) {
        let mut compiled = HashMap::with_capacity(config.sites.sites.len());
        let mut by_site = HashMap::with_capacity(config.sites.sites.len());
        let mut rules = HostRules::default();
        for site in &config.sites.sites {
            let set = match applied.sites.remove(&site.id) {
                Some((old, set)) if old.version == site.version => set,
                before => {
                    let started = std::time::Instant::now();
                    let set = Arc::new(compile_site(site));
                    tracing::info!(
                        site = %site.label,
                        version = site.version,
                        redirects = set.redirect_count(),
                        pages = set.page_count(),
                        ms = started.elapsed().as_millis() as u64,
                        "compiled published rules"
                    );
                    if let Some((old, old_set)) = before {
                        carry_hits(&old, &old_set, site, &set);
                    }
                    set
                }
            };
            for h in &site.hosts {
                rules.by_host.insert(h.clone(), set.clone());
            }
            by_site.insert(site.id.clone(), (site.version, set.clone()));
            compiled.insert(site.id.clone(), (site.clone(), set));
        }
        applied.sites = compiled;
        self.inner.redirects.store(Arc::new(rules));
        self.inner.site_sets.store(Arc::new(by_site));
        applied.versions.sites = config.sites.version;
    }

    /// A report of what the gateway serves and how its upstreams and limits fare.
    pub fn status(&self) -> DataPlaneStatus {
        let compiled = self.inner.current.load();
        let (versions, errors) = self
            .inner
            .reported
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let traffic = self.inner.metrics.traffic();
        let mut upstreams: Vec<UpstreamStatus> = compiled
            .upstreams
            .values()
            .map(|u| UpstreamStatus {
                name: u.name.clone(),
                targets: u.health(),
                breaker: breaker_status(u),
            })
            .collect();
        upstreams.sort_by(|a, b| a.name.cmp(&b.name));
        let limiter = LimiterStatus {
            local_keys: compiled
                .routes
                .iter()
                .filter_map(|r| r.limiter.as_ref())
                .map(|l| l.tracked_keys())
                .sum(),
            shared: self.inner.shared_limits.is_some(),
            shared_reachable: self
                .inner
                .shared_limits
                .as_ref()
                .is_some_and(|c| !c.failing()),
            rejected: traffic.routes.values().map(|r| r.rate_limited).sum(),
        };
        DataPlaneStatus {
            seq: 0,
            at_ms: fleetgate_core::time::now_ms(),
            applied: versions,
            routes: compiled.table.len(),
            errors,
            upstreams,
            limiter,
            traffic,
        }
    }

    /// Starts reporting status: a report after every apply, whenever the reader
    /// asks for a fresh one, and every `every` otherwise. Returns the reader's end.
    pub fn report_status(&self, every: Duration) -> StatusLink {
        let (reporter, link) = fleetgate_protocol::status_link();
        let weak = Arc::downgrade(&self.inner);
        reporter.publish(self.status());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                let Some(inner) = weak.upgrade() else { return };
                tokio::select! {
                    _ = tick.tick() => {}
                    () = reporter.asked() => {}
                    () = inner.applied_notify.notified() => {}
                }
                if reporter.is_closed() {
                    return;
                }
                reporter.publish(Gateway { inner }.status());
            }
        });
        link
    }

    /// The revision currently served.
    pub fn revision(&self) -> u64 {
        self.inner.current.load().revision
    }

    /// Handles one request (used by the server and by in-process callers).
    pub async fn handle(
        &self,
        req: Request<Incoming>,
        client: SocketAddr,
    ) -> hyper::Response<ProxyBody> {
        forward::materialize(
            forward::handle(
                self.inner.clone(),
                req.map(Some),
                Arc::new(forward::Peer::new(client)),
                false,
            )
            .await,
        )
    }

    /// Serves on `workers` dedicated threads, each running its own single-threaded
    /// runtime and accepting from the same listener, until `stop` turns true.
    /// Requests never hop between threads, which is what makes one worker per core
    /// fast. Returns when every worker has drained.
    pub async fn serve_on_threads(
        self,
        listener: std::net::TcpListener,
        tls: bool,
        workers: usize,
        stop: watch::Receiver<bool>,
        drain: Duration,
    ) -> std::io::Result<()> {
        listener.set_nonblocking(true)?;
        // The certificates are configuration: the resolver follows what is applied.
        let acceptor = if tls {
            let config =
                tls::server_config(self.inner.tls.clone()).map_err(std::io::Error::other)?;
            if let Ok(addr) = listener.local_addr() {
                self.inner
                    .https_port
                    .store(addr.port(), std::sync::atomic::Ordering::Relaxed);
            }
            Some(tokio_rustls::TlsAcceptor::from(config))
        } else {
            None
        };
        let mut threads = Vec::new();
        for i in 0..workers.max(1) {
            let l = listener.try_clone()?;
            let gw = self.clone();
            let acceptor = acceptor.clone();
            let mut stop = stop.clone();
            let handle = std::thread::Builder::new()
                .name(format!("fleetgate-gw-{i}"))
                .spawn(move || -> std::io::Result<()> {
                    // This worker's sockets are registered with its own runtime: it
                    // keeps its own idle upstream connections.
                    crate::pool::set_worker(i);
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?;
                    rt.block_on(async move {
                        let l = TcpListener::from_std(l)?;
                        let shutdown = async move {
                            let _ = stop.wait_for(|s| *s).await;
                        };
                        gw.accept_loop(l, acceptor, shutdown, drain).await
                    })
                })?;
            threads.push(handle);
        }
        tokio::task::spawn_blocking(move || {
            for t in threads {
                match t.join() {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::warn!(error = %e, "gateway worker failed"),
                    Err(_) => tracing::error!("gateway worker panicked"),
                }
            }
        })
        .await
        .map_err(std::io::Error::other)
    }

    async fn accept_loop(
        self,
        listener: TcpListener,
        tls: Option<tokio_rustls::TlsAcceptor>,
        shutdown: impl Future<Output = ()>,
        drain: Duration,
    ) -> std::io::Result<()> {
        let mut conns = JoinSet::new();
        let (stop_tx, stop_rx) = watch::channel(false);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            tracing::warn!(error = %e, "gateway accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    let gw = self.clone();
                    let stop = stop_rx.clone();
                    match &tls {
                        None => {
                            conns.spawn(server::serve(gw, stream, peer, false, stop));
                        }
                        Some(acceptor) => {
                            let acceptor = acceptor.clone();
                            let limit = self.inner.header_read_timeout;
                            conns.spawn(async move {
                                match tokio::time::timeout(limit, acceptor.accept(stream)).await {
                                    // HTTP/2 is hyper's; HTTP/1.1 is served like plain connections.
                                    Ok(Ok(tls_stream)) if tls_stream.get_ref().1.alpn_protocol() == Some(b"h2") => {
                                        gw.connection(tls_stream, peer, true, stop).await
                                    }
                                    Ok(Ok(tls_stream)) => server::serve(gw, tls_stream, peer, true, stop).await,
                                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                                }
                            });
                        }
                    }
                }
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
                () = &mut shutdown => break,
            }
        }
        drop(listener);
        let _ = stop_tx.send(true);
        let drained =
            tokio::time::timeout(drain, async { while conns.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            tracing::warn!(
                remaining = conns.len(),
                "gateway drain timed out; closing connections"
            );
            conns.abort_all();
        }
        Ok(())
    }

    /// Serves a connection with hyper (HTTP/1.1 and HTTP/2): TLS connections that
    /// negotiated h2, and connections the gateway's own HTTP/1.1 server handed over
    /// (see `server.rs`).
    async fn connection<I>(
        self,
        io: I,
        peer: SocketAddr,
        tls: bool,
        mut stop: watch::Receiver<bool>,
    ) where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let inner = self.inner.clone();
        let client = Arc::new(forward::Peer::new(peer));
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let inner = inner.clone();
            let client = client.clone();
            async move {
                let resp = forward::handle(inner, req.map(Some), client, tls).await;
                Ok::<_, Infallible>(forward::materialize(resp))
            }
        });
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(self.inner.header_read_timeout)
            .max_buf_size(64 * 1024);
        // A client that stops reading is cut after the send timeout, on HTTP/1 and
        // HTTP/2 alike (hyper's server has no write timeout of its own).
        let io = crate::stall::WriteStall::new(io, self.inner.client_send_timeout);
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
        tokio::pin!(conn);
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(%peer, error = %e, "gateway connection ended with an error");
                }
            }
            _ = async { let _ = stop.wait_for(|s| *s).await; } => {
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
            }
        }
    }

    /// Prometheus lines of the gateway's metrics (and of its trace exporter's).
    pub fn render_metrics(&self, out: &mut String) {
        self.inner.metrics.render(out);
        if let Some(t) = &self.inner.tracer {
            t.render_metrics(out);
        }
        let mut e = fleetgate_core::prom::Encoder::new(out);
        e.family(
            "fleetgate_circuit_breaker_state",
            "Circuit breaker state per upstream (0 closed, 1 half-open, 2 open).",
            fleetgate_core::prom::Kind::Gauge,
        );
        for b in self.breakers() {
            let v = match b.state.as_str() {
                "open" => 2,
                "half_open" => 1,
                _ => 0,
            };
            e.sample(
                "fleetgate_circuit_breaker_state",
                &[("upstream", b.upstream.as_str())],
                v,
            );
        }
    }
}

impl Gateway {
    /// Gives back the AI budget allowance this process leased and will not
    /// spend (call once it has drained, as it stops).
    pub async fn give_back_ai_allowances(&self) {
        self.inner
            .ai
            .load_full()
            .give_back_allowances(Duration::from_secs(2))
            .await;
    }

    /// Target health of one upstream, or `None` when the gateway has no such upstream.
    pub fn upstream_health(&self, upstream: &str) -> Option<Vec<TargetHealth>> {
        self.inner
            .current
            .load()
            .upstreams
            .get(upstream)
            .map(|u| u.health())
    }

    /// Every upstream's circuit breaker, by upstream name.
    pub fn breakers(&self) -> Vec<BreakerStatus> {
        let compiled = self.inner.current.load();
        let mut out: Vec<BreakerStatus> = compiled
            .upstreams
            .values()
            .map(|u| breaker_status(u))
            .collect();
        out.sort_by(|a, b| a.upstream.cmp(&b.upstream));
        out
    }

    /// Closes `upstream`'s circuit breaker by hand; `None` without such an upstream.
    pub fn reset_breaker(&self, upstream: &str) -> Option<fleetgate_protocol::BreakerReset> {
        let compiled = self.inner.current.load();
        let u = compiled.upstreams.get(upstream)?;
        let was = {
            let b = u.breaker.lock().unwrap_or_else(|p| p.into_inner());
            b.state().as_str().to_string()
        };
        let was = match u.reset_breaker() {
            Some(t) => t.from.as_str().to_string(),
            None => was,
        };
        Some(fleetgate_protocol::BreakerReset {
            was,
            breaker: breaker_status(u),
        })
    }

    /// The hit counts of the published set `site_id`, as served now.
    pub fn site_hits(&self, site_id: &str) -> Option<fleetgate_protocol::SiteHits> {
        let sets = self.inner.site_sets.load();
        let (version, set) = sets.get(site_id)?;
        Some(fleetgate_protocol::SiteHits {
            version: *version,
            redirects: set.redirect_hits(),
            pages: set.page_hits(),
        })
    }

    /// A reading of the gateway's cumulative traffic counters.
    pub fn traffic(&self) -> fleetgate_core::metrics::TrafficCounters {
        self.inner.metrics.traffic()
    }
}

fn breaker_status(u: &upstream::UpstreamRuntime) -> BreakerStatus {
    let now = clock::now_ms();
    let mut b = u.breaker.lock().unwrap_or_else(|p| p.into_inner());
    let (total, failed) = b.reported_window(now);
    BreakerStatus {
        upstream: u.name.clone(),
        state: b.state().as_str().into(),
        failure_rate: if total == 0 {
            0.0
        } else {
            f64::from(failed) / f64::from(total)
        },
        requests_in_window: u64::from(total),
        opened_at: b.opened_at().map(clock::rfc3339),
        next_trial_at: b.next_trial_at().map(clock::rfc3339),
    }
}

impl fleetgate_protocol::DataPlaneControl for Gateway {
    fn reset_breaker(&self, upstream: &str) -> Option<fleetgate_protocol::BreakerReset> {
        Gateway::reset_breaker(self, upstream)
    }

    fn site_hits(&self, site_id: &str) -> Option<fleetgate_protocol::SiteHits> {
        Gateway::site_hits(self, site_id)
    }
}
