//! Fleetgate's manager: the admin API under `/api/v1`, authentication, the audit
//! log, configuration revisions, settings, backup, export/import, health and
//! metrics. It owns the path from a configuration change to the data plane
//! ([`revisions`]): every change becomes a revision, and the committed document is
//! published as that revision on the data-plane input (a
//! [`fleetgate_protocol::ConfigFeed`]), together with the certificates and the
//! published redirect and page sets.

pub mod acme;
pub mod agents;
pub mod ai;
pub mod ai_gateway;
pub mod alerts;
pub mod api;
pub mod api_tokens;
pub mod auth;
pub mod bus;
pub mod dashboard;
pub mod deployments;
pub mod destination;
pub mod error;
pub mod events;
pub mod extract;
pub mod logging;
pub mod mcp;
pub mod metrics;
pub mod middleware;
pub mod nginx_export;
pub mod node_feed;
pub mod nodes;
pub mod openapi;
pub mod ratelimit;
pub mod revisions;
pub mod secrets;
pub mod server;
pub mod templates;
pub mod traffic;
pub mod tunnels;
pub mod webhooks;

use std::ops::Deref;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetgate_core::time::now_ms;
use fleetgate_core::user::Role;
use fleetgate_core::Settings;
use fleetgate_protocol::{ConfigFeed, Site, StatusLink};
use fleetgate_store::{Actor, ApiKeyRecord, Store, StoreError, UserRecord};
use tokio::sync::watch;

/// Start-up options of the manager (from the configuration file and flags).
#[derive(Debug, Clone)]
pub struct ManagerOptions {
    /// Where backups are written (`<data_dir>/backups`).
    pub data_dir: PathBuf,
    /// The Docker engine's unix socket (deployments on Docker, `/api/v1/containers`…).
    pub docker_socket: PathBuf,
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
    /// ACME: the CA, its trust, the account contact and the renewal schedule.
    pub acme: acme::AcmeOptions,
    /// Where the spans of traced API requests go (OpenTelemetry); `None`
    /// traces nothing. Which are traced is the revision's `settings.tracing`.
    pub tracer: Option<fleetgate_shared::otel::Tracer>,
}

impl Default for ManagerOptions {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./fleetgate-data"),
            docker_socket: PathBuf::from(fleetgate_deploy::docker::DEFAULT_SOCKET),
            max_body_bytes: 1024 * 1024,
            secure_cookies: false,
            metrics_public: false,
            redis_url: None,
            nats_url: None,
            secret_key: None,
            acme: acme::AcmeOptions::default(),
            tracer: None,
        }
    }
}

/// The data plane running in this process, as the manager sees it: its status
/// reports and its Prometheus lines.
#[derive(Clone)]
pub struct DataPlane {
    pub status: StatusLink,
    pub metrics: Arc<dyn Fn(&mut String) + Send + Sync>,
    /// Breaker resets and redirect hit counts, asked of the data plane directly.
    pub control: Arc<dyn fleetgate_protocol::DataPlaneControl>,
}

impl DataPlane {
    /// A report made now (or the newest, if none comes within a second).
    pub async fn fresh(&self) -> Arc<fleetgate_protocol::DataPlaneStatus> {
        self.status.fresh(Duration::from_secs(1)).await
    }
}

pub struct Inner {
    pub store: Arc<dyn Store>,
    pub options: ManagerOptions,
    /// The data-plane input: the revision in force and the other parts.
    pub feed: ConfigFeed,
    pub limiter: ratelimit::ApiRateLimiter,
    pub metrics: metrics::HttpMetrics,
    pub started_at: Instant,
    pub redis: Option<redis::Client>,
    /// The gateway running in this process, if any.
    pub data_plane: std::sync::OnceLock<DataPlane>,
    pub secrets: secrets::SecretBox,
    /// The certificates (name, version) last published, to skip decrypting an
    /// unchanged set.
    pub certificates_seen: std::sync::Mutex<Option<Vec<(String, i64)>>>,
    /// Published rule sets by project id, as last published.
    pub sites: tokio::sync::Mutex<std::collections::HashMap<String, Arc<Site>>>,
    /// Wakes the store follower after a change made here.
    pub store_changed: tokio::sync::Notify,
    /// Word from other managers that a revision was written.
    pub peers: revisions::Peers,
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
    /// The newest revision found not to compile (0: none), so that it is judged,
    /// and reported, once rather than on every poll.
    pub refused_revision: std::sync::atomic::AtomicI64,
    /// The nodes connected to this manager.
    pub nodes: nodes::NodeHub,
    /// This manager process's id among the replicas sharing its store (random).
    pub instance: String,
    /// The `dashboard_update` of `/ws/dashboard`, shared by every dashboard socket.
    pub node_feed: node_feed::NodeFeed,
    /// Nodes taking part in tunnels (see [`tunnels::TunnelNodes`]).
    pub tunnel_nodes: tunnels::TunnelNodes,
    /// The deployments of this host and their drivers.
    pub deployments: Arc<deployments::Deployments>,
    /// Signs the short-lived tokens traded for API keys.
    pub tokens: api_tokens::TokenSigner,
    /// The app templates deployments start from.
    pub templates: templates::Catalogue,
    /// The ACME client: account, pending challenges, renewals.
    pub acme: Arc<acme::Acme>,
    /// Outgoing HTTP to AI providers (see [`ai`]): no redirects, no pooled
    /// state shared with the webhook client and its destination policy, since
    /// a provider's base URL is set by an admin and may be a model server on
    /// this host.
    pub ai_http: reqwest::Client,
    /// Usage records of the AI gateway's data plane, on their way to the store.
    pub ai_usage: Arc<ai_gateway::UsageQueue>,
    /// Held while the AI gateway input is read and published, so that an
    /// input read earlier is never published over one read later.
    pub ai_publish: tokio::sync::Mutex<()>,
}

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
        let feed = ConfigFeed::default();
        // Webhook deliveries connect only to addresses the destination policy
        // admitted, with the opt-in read live from the settings in force.
        let live = feed.subscribe();
        let resolver = destination::PolicyResolver::new(move || {
            live.borrow()
                .gateway
                .settings
                .webhooks
                .allow_private_targets
        });
        let key = options.secret_key.unwrap_or_else(|| {
            let mut k = [0u8; 32];
            rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut k);
            k
        });
        let deployments = Arc::new(deployments::Deployments::new(
            &options.data_dir,
            &options.docker_socket,
        ));
        let templates = templates::Catalogue::load(&options.data_dir);
        let acme = Arc::new(acme::Acme::new(options.acme.clone())?);
        let state = AppState(Arc::new(Inner {
            store,
            options,
            feed,
            limiter: ratelimit::ApiRateLimiter::new(redis.clone()),
            metrics: metrics::HttpMetrics::default(),
            started_at: Instant::now(),
            redis,
            data_plane: std::sync::OnceLock::new(),
            secrets: secrets::SecretBox::new(&key),
            tokens: api_tokens::TokenSigner::new(&key),
            templates,
            certificates_seen: std::sync::Mutex::new(None),
            sites: tokio::sync::Mutex::new(Default::default()),
            store_changed: tokio::sync::Notify::new(),
            peers: revisions::Peers::default(),
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
            refused_revision: std::sync::atomic::AtomicI64::new(0),
            nodes: nodes::NodeHub::default(),
            instance: uuid::Uuid::new_v4().simple().to_string(),
            node_feed: node_feed::NodeFeed::default(),
            tunnel_nodes: tunnels::TunnelNodes::default(),
            deployments,
            acme,
            ai_http: fleetgate_ai::http_client().map_err(|e| anyhow::anyhow!("{e}"))?,
            ai_usage: Arc::new(ai_gateway::UsageQueue::default()),
            ai_publish: tokio::sync::Mutex::new(()),
        }));
        state.publish_latest().await?;
        state.publish_certificates().await?;
        state.publish_sites().await?;
        state.publish_ai().await?;
        Ok(state)
    }

    /// The data-plane input (for the gateway in this process).
    pub fn subscribe(&self) -> watch::Receiver<Arc<fleetgate_protocol::DataPlaneConfig>> {
        self.feed.subscribe()
    }

    /// The settings in force (those of the published revision).
    pub fn settings(&self) -> Settings {
        self.feed.current().gateway.settings.clone()
    }

    /// The revision published to the data plane.
    pub fn revision(&self) -> u64 {
        self.feed.current().revision
    }

    /// Where the gateway in this process sends its events.
    pub fn event_sink(&self) -> Arc<dyn fleetgate_core::events::EventSink> {
        Arc::new(events::HubSink(self.events.clone()))
    }

    /// Where the built-in gateway sends the usage records of its `ai` routes.
    pub fn ai_usage_sink(&self) -> fleetgate_protocol::ai::UsageSink {
        self.ai_usage.clone()
    }

    /// Logs, stores and streams an event raised by the manager.
    pub fn emit(&self, event: fleetgate_core::events::NewEvent) {
        fleetgate_core::events::emit(Some(&self.event_sink()), event.source("manager"));
    }

    /// Background work: keep the data-plane input in step with the store (see
    /// [`revisions`]), prune expired sessions and old audit entries. Ends when `shutdown` flips to true.
    pub async fn spawn_background(
        &self,
        mut shutdown: watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        if let Some(url) = &self.options.nats_url {
            // Other managers' events are forwarded only on a store they can share.
            let shared = self.store.backend() == fleetgate_store::Backend::Postgres;
            let cluster = bus::cluster_id(self.options.secret_key.as_ref());
            if shared {
                // Word of new revisions, so that replicas need not poll every second.
                if let Err(e) = self.peers.attach(url, &cluster, shutdown.clone()).await {
                    tracing::error!(error = %e, "nats.url is not usable; other managers' revisions are polled for");
                }
            }
            if let Err(e) = bus::attach(&self.events, url, cluster, shared, shutdown.clone()) {
                tracing::error!(error = %e, "nats.url is not usable; events are not published");
            }
        }
        nodes::replicas::spawn(self.clone(), shutdown.clone()).await;
        nodes::history::spawn(self.clone(), shutdown.clone());
        tunnels::spawn_retry(self.clone(), shutdown.clone());
        self.follow_store(shutdown.clone());
        self.ai_usage
            .spawn_writer(self.store.clone(), shutdown.clone());
        // Deployments left running start again, and stop with the manager.
        let deployments = self.deployments.clone();
        let router =
            api::deployments::GatewayRouter::shared(self, &fleetgate_store::Actor::system());
        let mut down = shutdown.clone();
        tokio::spawn(async move {
            deployments.resume(&router).await;
            while !*down.borrow() {
                if down.changed().await.is_err() {
                    break;
                }
            }
            deployments.stop_all().await;
        });
        self.events.spawn_writer(
            self.store.clone(),
            self.webhooks_wake.clone(),
            shutdown.clone(),
        );
        webhooks::spawn_worker(self.clone(), self.webhooks_wake.clone(), shutdown.clone());
        acme::spawn_renewals(self.clone(), shutdown.clone());
        traffic::spawn_sampler(self.clone(), shutdown.clone());
        alerts::spawn_evaluator(self.clone(), shutdown.clone());
        agents::spawn_scheduler(self.clone(), Duration::from_secs(1), shutdown.clone());
        node_feed::spawn_builder(self.clone(), shutdown.clone());
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
            state.publish_latest().await.expect("publish");
            state.publish_sites().await.expect("publish sites");
            state
                .publish_certificates()
                .await
                .expect("publish certificates");
        }
        assert!(
            !rx.has_changed().expect("channel open"),
            "revision 0 was published again although nothing changed"
        );
        state.store.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    }
}
