//! Fleetgate's manager: the admin API under `/api/v1`, authentication, the audit
//! log, configuration revisions, settings, backup, export/import, health and
//! metrics. It owns the path from a configuration change to the data plane: every
//! change becomes a revision, and the revision's document is published as an
//! `Arc<ConfigSnapshot>` on a watch channel that the gateway reads.

pub mod alerts;
pub mod api;
pub mod auth;
pub mod bus;
pub mod dashboard;
pub mod destination;
pub mod error;
pub mod events;
pub mod extract;
pub mod metrics;
pub mod middleware;
pub mod openapi;
pub mod ratelimit;
pub mod redirect_rules;
pub mod secrets;
pub mod server;
pub mod traffic;
pub mod webhooks;

use std::ops::Deref;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetgate_core::time::now_ms;
use fleetgate_core::user::Role;
use fleetgate_core::{ConfigDocument, ConfigSnapshot, Settings};
use fleetgate_store::{Actor, ApiKeyRecord, Store, StoreError, UserRecord};
use tokio::sync::watch;

/// Start-up options of the manager (from the configuration file and flags).
#[derive(Debug, Clone)]
pub struct ManagerOptions {
    /// Where backups are written (`<data_dir>/backups`).
    pub data_dir: PathBuf,
    /// Largest accepted request body, in bytes.
    pub max_body_bytes: usize,
    /// Mark cookies `Secure` (when the API is served over HTTPS).
    pub secure_cookies: bool,
    /// Serve `/metrics` and `/prometheus/metrics` without credentials. Off by
    /// default: the series name routes, upstreams and their error rates.
    pub metrics_public: bool,
    pub redis_url: Option<String>,
    pub nats_url: Option<String>,
    /// Key that encrypts secrets at rest; `None` makes an ephemeral one (tests).
    pub secret_key: Option<[u8; 32]>,
}

impl Default for ManagerOptions {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./fleetgate-data"),
            max_body_bytes: 1024 * 1024,
            secure_cookies: false,
            metrics_public: false,
            redis_url: None,
            nats_url: None,
            secret_key: None,
        }
    }
}

pub struct Inner {
    pub store: Arc<dyn Store>,
    pub options: ManagerOptions,
    pub snapshots: watch::Sender<Arc<ConfigSnapshot>>,
    pub limiter: ratelimit::ApiRateLimiter,
    pub metrics: metrics::HttpMetrics,
    pub started_at: Instant,
    pub redis: Option<redis::Client>,
    /// The gateway running in this process, if any, for its health and breaker views.
    pub data_plane: std::sync::OnceLock<Arc<dyn fleetgate_core::gateway::DataPlaneStatus>>,
    pub secrets: secrets::SecretBox,
    /// Certificates (with keys, in memory only) for the gateway's TLS listener.
    pub certificates: watch::Sender<Arc<Vec<fleetgate_core::tls::TlsBundle>>>,
    /// Compiled redirect and page rules of every project, by host, for the gateway.
    pub redirect_rules: watch::Sender<Arc<fleetgate_core::redirects::HostRules>>,
    /// Wakes the redirect compiler after a publish or a project change.
    pub redirects_changed: tokio::sync::Notify,
    /// Events of this process: stored, then streamed.
    pub events: Arc<events::EventHub>,
    /// Wakes the webhook worker when deliveries are queued.
    pub webhooks_wake: Arc<tokio::sync::Notify>,
    /// Outgoing HTTP (webhook deliveries), through the destination policy's resolver.
    pub http: reqwest::Client,
    /// The latest live traffic snapshot (renewed every second by the sampler).
    pub traffic: traffic::SnapshotWatch,
    /// Current metric values for the alert evaluator's metric rules; installed once
    /// by whoever owns the metrics snapshot. Unset: metric conditions never hold.
    pub metric_reader: std::sync::OnceLock<Arc<dyn alerts::MetricReader>>,
    /// Held from reading the configuration to writing its next revision, so that a
    /// change is validated against the document it actually replaces (two route
    /// creations that each compile alone cannot both pass against the same base).
    pub config_write: tokio::sync::Mutex<()>,
    /// The newest revision found not to compile (0: none), so that it is judged,
    /// and reported, once rather than on every poll.
    pub refused_revision: std::sync::atomic::AtomicI64,
    /// The newest revision this process wrote after compiling its whole document
    /// (0: none), so that publishing it does not compile it a second time.
    pub checked_revision: std::sync::atomic::AtomicI64,
}

/// Revisions looked back at, at most, for one that compiles when the newest does
/// not: each is a whole document to compile, and with writes checked only a few
/// can be bad in a row.
const FALLBACK_SEARCH: i64 = 100;

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

impl Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    /// Builds the state and loads the current configuration snapshot.
    pub async fn new(store: Arc<dyn Store>, options: ManagerOptions) -> anyhow::Result<Self> {
        let redis = match &options.redis_url {
            Some(url) => Some(
                redis::Client::open(url.as_str())
                    .map_err(|e| anyhow::anyhow!("invalid Redis URL: {e}"))?,
            ),
            None => None,
        };
        let (snapshots, _) = watch::channel(Arc::new(ConfigSnapshot::default()));
        // Webhook deliveries connect only to addresses the destination policy
        // admitted, with the opt-in read live from the settings in force.
        let live = snapshots.subscribe();
        let resolver = destination::PolicyResolver::new(move || {
            live.borrow()
                .document
                .settings
                .webhooks
                .allow_private_targets
        });
        let (certificates, _) = watch::channel(Arc::new(Vec::new()));
        let key = options.secret_key.unwrap_or_else(|| {
            let mut k = [0u8; 32];
            rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut k);
            k
        });
        let state = AppState(Arc::new(Inner {
            store,
            options,
            snapshots,
            limiter: ratelimit::ApiRateLimiter::new(redis.clone()),
            metrics: metrics::HttpMetrics::default(),
            started_at: Instant::now(),
            redis,
            data_plane: std::sync::OnceLock::new(),
            secrets: secrets::SecretBox::new(&key),
            certificates,
            redirect_rules: watch::channel(Arc::new(Default::default())).0,
            redirects_changed: tokio::sync::Notify::new(),
            events: Arc::new(events::EventHub::default()),
            webhooks_wake: Arc::new(tokio::sync::Notify::new()),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .dns_resolver(Arc::new(resolver))
                // No pooled connections: a kept-alive connection would skip the
                // resolver's check, e.g. after the opt-in was turned off.
                .pool_max_idle_per_host(0)
                .build()
                .map_err(|e| anyhow::anyhow!("HTTP client: {e}"))?,
            traffic: watch::channel(Arc::new(traffic::MetricsSnapshot::empty())).0,
            metric_reader: std::sync::OnceLock::new(),
            config_write: tokio::sync::Mutex::new(()),
            refused_revision: std::sync::atomic::AtomicI64::new(0),
            checked_revision: std::sync::atomic::AtomicI64::new(0),
        }));
        state.publish_current().await?;
        state.publish_certificates().await?;
        Ok(state)
    }

    /// The snapshot channel the data plane subscribes to.
    pub fn subscribe(&self) -> watch::Receiver<Arc<ConfigSnapshot>> {
        self.snapshots.subscribe()
    }

    /// The settings in force (those of the latest published snapshot).
    pub fn settings(&self) -> Settings {
        self.snapshots.borrow().document.settings.clone()
    }

    /// Reads the latest revision from the store and publishes it if it is newer
    /// than the one published. Called after every change and periodically, so
    /// changes made through another manager replica arrive too.
    ///
    /// A revision whose document the gateway cannot compile (say, regex routes too
    /// large together, stored before writes checked that) is never published: the
    /// one in force keeps serving, or, when nothing is published yet (at start), the
    /// newest earlier revision that compiles. Either way a critical
    /// `config.revision_refused` event names the revision and the routes at fault.
    pub async fn publish_current(&self) -> Result<(), StoreError> {
        use std::sync::atomic::Ordering;
        let revision = self.store.latest_revision().await?;
        let published = self.snapshots.borrow().revision;
        if revision as u64 == published && revision != 0 {
            return Ok(());
        }
        if revision != 0 && self.refused_revision.load(Ordering::Relaxed) == revision {
            return Ok(());
        }
        let set = self.store.resource_set().await?;
        let document = match ConfigDocument::from_resources(&set) {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(revision, error = %e, "stored configuration does not validate; keeping the previous snapshot");
                return Ok(());
            }
        };
        let compiles = if self.checked_revision.load(Ordering::Relaxed) == revision {
            Ok(())
        } else {
            let checked = document.clone();
            tokio::task::spawn_blocking(move || checked.check_compiles())
                .await
                .map_err(|e| StoreError::Invalid(format!("configuration check failed: {e}")))?
        };
        match compiles {
            Ok(()) => {
                self.send_snapshot(ConfigSnapshot {
                    revision: revision as u64,
                    document,
                });
            }
            Err(e) => {
                self.refused_revision.store(revision, Ordering::Relaxed);
                let fallback = if published == 0 {
                    self.newest_compiling_before(revision).await?
                } else {
                    None
                };
                let served = match fallback {
                    Some(snap) => {
                        let n = snap.revision;
                        self.send_snapshot(snap);
                        Some(n)
                    }
                    None => (published != 0).then_some(published),
                };
                let serving = match served {
                    Some(n) => format!("revision {n} keeps serving"),
                    None => "no earlier revision compiles; the gateway serves no routes".into(),
                };
                self.emit(
                    fleetgate_core::events::NewEvent::new(
                        "config.revision_refused",
                        fleetgate_core::events::Severity::Critical,
                        format!("revision {revision} cannot be compiled by the gateway ({e}); {serving}"),
                    )
                    .details(serde_json::json!({
                        "revision": revision,
                        "serving_revision": served,
                        "errors": e.errors,
                    })),
                );
            }
        }
        Ok(())
    }

    /// Records that `revision` was written by this process after its whole document
    /// was checked to compile (under [`Inner::config_write`]).
    pub fn mark_checked(&self, revision: i64) {
        self.checked_revision
            .store(revision, std::sync::atomic::Ordering::Relaxed);
    }

    /// Swaps `snap` in unless a newer revision is already published.
    fn send_snapshot(&self, snap: ConfigSnapshot) {
        let snap = Arc::new(snap);
        self.snapshots.send_if_modified(|cur| {
            // Before the first revision the number cannot tell a new
            // document from the one published: compare the documents,
            // or every periodic call would wake the data plane again.
            let first = cur.revision == 0 && snap.revision == 0 && cur.document != snap.document;
            if cur.revision < snap.revision || first {
                *cur = snap.clone();
                true
            } else {
                false
            }
        });
    }

    /// The newest revision before `revision` whose document compiles, looking back
    /// at most [`FALLBACK_SEARCH`] revisions.
    async fn newest_compiling_before(
        &self,
        revision: i64,
    ) -> Result<Option<ConfigSnapshot>, StoreError> {
        let oldest = (revision - FALLBACK_SEARCH).max(1);
        for n in (oldest..revision).rev() {
            let Some(rec) = self.store.get_revision(n).await? else {
                continue;
            };
            let Ok(document) = ConfigDocument::from_resources(
                rec.snapshot.as_ref().unwrap_or(&Default::default()),
            ) else {
                continue;
            };
            let checked = document.clone();
            let ok = tokio::task::spawn_blocking(move || checked.check_compiles().is_ok())
                .await
                .unwrap_or(false);
            if ok {
                return Ok(Some(ConfigSnapshot {
                    revision: n as u64,
                    document,
                }));
            }
        }
        Ok(None)
    }

    /// The certificate channel the gateway's TLS listener subscribes to.
    pub fn subscribe_certificates(
        &self,
    ) -> watch::Receiver<Arc<Vec<fleetgate_core::tls::TlsBundle>>> {
        self.certificates.subscribe()
    }

    /// Loads and decrypts every certificate and publishes the set if it changed.
    /// A certificate whose key does not decrypt is left out and logged.
    pub async fn publish_certificates(&self) -> Result<(), StoreError> {
        let mut set = Vec::new();
        for rec in self.store.list_certificates().await? {
            match self.secrets.open(&rec.key_encrypted).map(String::from_utf8) {
                Ok(Ok(key_pem)) => set.push(fleetgate_core::tls::TlsBundle {
                    name: rec.name,
                    cert_pem: rec.cert_pem,
                    key_pem,
                }),
                Ok(Err(_)) => {
                    tracing::error!(certificate = %rec.name, "stored key is not text; not served")
                }
                Err(e) => {
                    tracing::error!(certificate = %rec.name, error = %e, "certificate key does not decrypt; not served")
                }
            }
        }
        self.certificates.send_if_modified(|cur| {
            if **cur == set {
                false
            } else {
                *cur = Arc::new(set);
                true
            }
        });
        Ok(())
    }

    /// Where the gateway in this process sends its events.
    pub fn event_sink(&self) -> Arc<dyn fleetgate_core::events::EventSink> {
        Arc::new(events::HubSink(self.events.clone()))
    }

    /// Logs, stores and streams an event raised by the manager.
    pub fn emit(&self, event: fleetgate_core::events::NewEvent) {
        fleetgate_core::events::emit(Some(&self.event_sink()), event.source("manager"));
    }

    /// Publishes the configuration after a change made by `actor` and records a
    /// `config.changed` event naming the new revision.
    pub async fn publish_change(&self, actor: &Actor) -> Result<(), StoreError> {
        let revision = self.store.latest_revision().await?;
        self.publish_current().await?;
        self.emit(
            fleetgate_core::events::NewEvent::new(
                "config.changed",
                fleetgate_core::events::Severity::Info,
                format!("{} made revision {revision}", actor.name),
            )
            .details(serde_json::json!({"revision": revision, "actor": actor.name})),
        );
        Ok(())
    }

    /// The compiled redirect rules the data plane subscribes to.
    pub fn subscribe_redirects(
        &self,
    ) -> watch::Receiver<Arc<fleetgate_core::redirects::HostRules>> {
        self.redirect_rules.subscribe()
    }

    /// Asks the redirect compiler to look for changes now.
    pub fn refresh_redirects(&self) {
        self.redirects_changed.notify_one();
    }

    /// Compiles published redirect sets after each change here and once a second
    /// for changes made through other replicas. Ends when `shutdown` flips to true.
    fn spawn_redirect_compiler(&self, mut shutdown: watch::Receiver<bool>) {
        let state = self.clone();
        tokio::spawn(async move {
            let mut compiler = redirect_rules::Compiler::default();
            loop {
                match compiler.run(state.store.as_ref()).await {
                    Ok(Some(rules)) => {
                        state.redirect_rules.send_replace(Arc::new(rules));
                    }
                    Ok(None) => {}
                    Err(e) => tracing::warn!(error = %e, "could not compile redirect rules"),
                }
                tokio::select! {
                    _ = state.redirects_changed.notified() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shutdown.changed() => return,
                }
                if *shutdown.borrow() {
                    return;
                }
            }
        });
    }

    /// Background work: follow revisions made elsewhere, prune expired sessions
    /// and old audit entries. Ends when `shutdown` flips to true.
    pub fn spawn_background(
        &self,
        mut shutdown: watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        self.spawn_redirect_compiler(shutdown.clone());
        if let Some(url) = &self.options.nats_url {
            // Other managers' events are forwarded only on a store they can share.
            let shared = self.store.backend() == fleetgate_store::Backend::Postgres;
            let cluster = bus::cluster_id(self.options.secret_key.as_ref());
            if let Err(e) = bus::attach(&self.events, url, cluster, shared, shutdown.clone()) {
                tracing::error!(error = %e, "nats.url is not usable; events are not published");
            }
        }
        self.events.spawn_writer(
            self.store.clone(),
            self.webhooks_wake.clone(),
            shutdown.clone(),
        );
        webhooks::spawn_worker(self.clone(), self.webhooks_wake.clone(), shutdown.clone());
        traffic::spawn_sampler(self.clone(), shutdown.clone());
        alerts::spawn_evaluator(self.clone(), shutdown.clone());
        let state = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let mut last_prune = Instant::now() - Duration::from_secs(3600);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = shutdown.changed() => return,
                }
                if *shutdown.borrow() {
                    return;
                }
                if let Err(e) = state.publish_current().await {
                    tracing::warn!(error = %e, "could not read the latest revision");
                }
                if let Err(e) = state.publish_certificates().await {
                    tracing::warn!(error = %e, "could not read the certificates");
                }
                if last_prune.elapsed() >= Duration::from_secs(3600) {
                    last_prune = Instant::now();
                    let now = now_ms();
                    let keep_days = i64::from(state.settings().audit.retention_days);
                    if let Err(e) = state.store.prune_sessions(now).await {
                        tracing::warn!(error = %e, "session pruning failed");
                    }
                    let ev = state.settings().events;
                    let before = now - i64::from(ev.retention_days) * 86_400_000;
                    match state
                        .store
                        .prune_events(before, i64::from(ev.max_events))
                        .await
                    {
                        Ok(n) if n > 0 => {
                            tracing::info!(removed = n, "pruned events past retention")
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "event pruning failed"),
                    }
                    match state.store.prune_audit(now - keep_days * 86_400_000).await {
                        Ok(n) if n > 0 => {
                            tracing::info!(removed = n, "pruned audit entries past retention")
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "audit pruning failed"),
                    }
                }
            }
        })
    }
}

/// What the first start created.
#[derive(Debug, Default)]
pub struct Bootstrap {
    /// The generated admin password, when none was given: to be shown once.
    pub generated_admin_password: Option<String>,
    pub created_admin: bool,
    pub created_bootstrap_key: bool,
}

/// First-start setup: the `admin` user when no user exists (password from
/// `admin_password` or generated), and a super_admin API key whose value is
/// `bootstrap_token` when no key with that value exists. Safe to run on several
/// replicas at once.
pub async fn bootstrap(
    store: &dyn Store,
    admin_password: Option<&str>,
    bootstrap_token: Option<&str>,
) -> anyhow::Result<Bootstrap> {
    let mut out = Bootstrap::default();
    let system = Actor::system();
    if store.count_users().await? == 0 {
        let (password, generated) = match admin_password {
            Some(p) if !p.is_empty() => (p.to_string(), false),
            _ => (auth::random_token(18), true),
        };
        let hash = auth::hash_password_blocking(password.clone())
            .await
            .map_err(|e| anyhow::anyhow!(e.message))?;
        let now = now_ms();
        let admin = UserRecord {
            id: uuid::Uuid::new_v4().to_string(),
            username: "admin".into(),
            display_name: "Administrator".into(),
            email: None,
            role: Role::SuperAdmin,
            password_hash: hash,
            allowed_node_ids: None,
            disabled: false,
            version: 1,
            created_at: now,
            updated_at: now,
            last_login_at: None,
        };
        match store.create_user(&system, &admin).await {
            Ok(()) => {
                out.created_admin = true;
                if generated {
                    out.generated_admin_password = Some(password);
                }
            }
            // Another replica created it first.
            Err(StoreError::Conflict(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    if let Some(token) = bootstrap_token.filter(|t| !t.is_empty()) {
        let hash = auth::hash_token(token);
        if store.find_api_key_by_hash(&hash).await?.is_none() {
            let key = ApiKeyRecord {
                id: uuid::Uuid::new_v4().to_string(),
                name: "bootstrap".into(),
                prefix: "bootstrap".into(),
                key_hash: hash,
                role: Role::SuperAdmin,
                user_id: None,
                created_at: now_ms(),
                last_used_at: None,
            };
            match store.create_api_key(&system, &key).await {
                Ok(()) => out.created_bootstrap_key = true,
                Err(StoreError::Conflict(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(out)
}

/// The whole manager HTTP application.
pub fn router(state: AppState) -> axum::Router {
    api::router(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetgate_store::{SqlStore, StoreOptions};

    #[tokio::test]
    async fn an_unchanged_configuration_is_published_once() {
        let dir = std::env::temp_dir().join(format!("fleetgate-manager-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let url = format!("sqlite://{}", dir.join("t.db").display());
        let store = SqlStore::open_and_migrate(&StoreOptions::new(url))
            .await
            .expect("store");
        let state = AppState::new(Arc::new(store), ManagerOptions::default())
            .await
            .expect("state");
        let mut rx = state.subscribe();
        rx.borrow_and_update();
        for _ in 0..3 {
            state.publish_current().await.expect("publish");
        }
        assert!(
            !rx.has_changed().expect("channel open"),
            "revision 0 was published again although nothing changed"
        );
        state.store.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    }
}
