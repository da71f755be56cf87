//! The `fleetgate` binary's assembly: configuration, logging, and the roles it runs
//! (`serve` = manager + built-in gateway, `manager`), with graceful shutdown.

pub mod cli;
pub mod config;
pub mod flecto_agent;
pub mod relay_node;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use fleetgate_manager::{AppState, ManagerOptions};
use fleetgate_protocol::{ConfigFeed, DataPlaneConfig, RateLimitSettings};
use fleetgate_proxy::{Gateway, GatewayOptions};
use fleetgate_store::{SqlStore, Store, StoreOptions};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};

pub use config::Config;

/// How often the gateway reports its status when nothing asks or changes.
const STATUS_EVERY: Duration = Duration::from_secs(5);

/// Secrets read from the environment at first start.
#[derive(Debug, Clone, Default)]
pub struct BootstrapSecrets {
    pub admin_password: Option<String>,
    pub bootstrap_token: Option<String>,
}

impl BootstrapSecrets {
    pub fn from_env() -> Self {
        Self {
            admin_password: std::env::var("FLEETGATE_ADMIN_PASSWORD").ok(),
            bootstrap_token: std::env::var("FLEETGATE_BOOTSTRAP_TOKEN").ok(),
        }
    }
}

/// Opens the store named by the configuration and applies its migrations.
pub async fn open_store(config: &Config) -> anyhow::Result<SqlStore> {
    private_data_dir(config)?;
    let mut options = StoreOptions::new(config.database_url());
    options.max_connections = config.database.max_connections;
    let store = SqlStore::open(&options).await.with_context(|| {
        format!(
            "cannot open the store at {}",
            fleetgate_core::redact::redact_url(&options.url)
        )
    })?;
    store
        .migrate()
        .await
        .context("cannot apply store migrations")?;
    Ok(store)
}

/// Makes the data directory, its backups and the secret key private (0700
/// directories, 0600 files), creating the directory if needed; corrects what an
/// earlier version left world-readable. The SQLite files are the store's to fix.
fn private_data_dir(config: &Config) -> anyhow::Result<()> {
    use fleetgate_store::files;
    let dir = &config.data_dir;
    files::private_dir(dir)
        .with_context(|| format!("cannot make the data directory {} private", dir.display()))?;
    files::private_tree(&dir.join("backups"))
        .with_context(|| format!("cannot make {}/backups private", dir.display()))?;
    files::private_file_if_exists(&dir.join("secret.key"))
        .with_context(|| format!("cannot make {}/secret.key private", dir.display()))?;
    Ok(())
}

/// A running Fleetgate: its bound addresses and a handle to stop it.
pub struct Running {
    pub manager_addr: SocketAddr,
    /// The node listener (`/ws/node` over TLS).
    pub node_addr: SocketAddr,
    pub gateway_addr: Option<SocketAddr>,
    /// The HTTPS listener of the gateway.
    pub gateway_tls_addr: Option<SocketAddr>,
    pub state: AppState,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Stops accepting, drains in-flight requests, closes the store.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.task.await.context("server task panicked")?
    }

    /// Waits until the server ends by itself (for `main`).
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await.context("server task panicked")?
    }
}

/// Starts the manager (and the gateway when `with_gateway`) on the configured
/// addresses; returns once both listen. `shutdown` ends them gracefully. Without
/// `with_gateway` (the `manager` role) no gateway is built and no gateway port opened.
pub async fn start(
    config: Config,
    secrets: BootstrapSecrets,
    with_gateway: bool,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<Running> {
    let store = Arc::new(open_store(&config).await?);
    let boot = fleetgate_manager::bootstrap(
        store.as_ref(),
        secrets.admin_password.as_deref(),
        secrets.bootstrap_token.as_deref(),
    )
    .await
    .context("first-start setup failed")?;
    if let Some(pw) = &boot.generated_admin_password {
        // Shown exactly once, at the start that created the account.
        eprintln!(
            "\n  Fleetgate created the user `admin` with the generated password:\n\n      {pw}\n\n  It is not shown again. Log in and change it, or set FLEETGATE_ADMIN_PASSWORD before the first start.\n"
        );
        tracing::warn!("created user admin with a generated password (printed once on stderr)");
    } else if boot.created_admin {
        tracing::info!("created user admin with the password from FLEETGATE_ADMIN_PASSWORD");
    }
    if boot.created_bootstrap_key {
        tracing::info!("created the bootstrap API key from FLEETGATE_BOOTSTRAP_TOKEN");
    }

    let secret_key = fleetgate_manager::secrets::load_or_create_key_from_env(
        std::env::var("FLEETGATE_SECRET_KEY").ok().as_deref(),
        std::env::var("FLEETGATE_MASTER_KEY").ok().as_deref(),
        &config.data_dir,
    )
    .map_err(anyhow::Error::msg)?;
    let role = if with_gateway { "serve" } else { "manager" };
    let (tracer, export) = start_tracing(&config, role)?;
    let options = ManagerOptions {
        data_dir: config.data_dir.clone(),
        docker_socket: config.docker.socket.clone(),
        max_body_bytes: config.manager.max_body_bytes,
        secure_cookies: config.manager.secure_cookies,
        metrics_public: config.manager.metrics_public,
        redis_url: config.redis.url.clone(),
        nats_url: config.nats.url.clone(),
        secret_key: Some(secret_key),
        acme: config.acme.options(),
        tracer: tracer.clone(),
    };
    let dyn_store: Arc<dyn Store> = store.clone();
    let state = AppState::new(dyn_store, options).await?;

    let manager_listener = TcpListener::bind(config.manager.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (manager.listen)",
                config.manager.listen
            )
        })?;
    let manager_addr = manager_listener.local_addr()?;
    let node_listener = TcpListener::bind(config.manager.node_listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (manager.node_listen)",
                config.manager.node_listen
            )
        })?;
    let node_addr = node_listener.local_addr()?;
    let configured_tls = config
        .manager
        .node_tls_cert
        .as_deref()
        .zip(config.manager.node_tls_key.as_deref());
    let node_tls =
        fleetgate_manager::nodes::tls::NodeTls::load_or_create(&config.data_dir, configured_tls)
            .map_err(|e| anyhow::anyhow!("node listener certificate: {e}"))?;
    fleetgate_manager::nodes::listener::install_tls(&state, node_tls);
    let gateway = if with_gateway {
        let l = TcpListener::bind(config.gateway.listen)
            .await
            .with_context(|| {
                format!(
                    "cannot listen on {} (gateway.listen)",
                    config.gateway.listen
                )
            })?;
        Some(l)
    } else {
        None
    };
    let gateway_addr = gateway.as_ref().map(TcpListener::local_addr).transpose()?;
    let gateway = gateway.map(TcpListener::into_std).transpose()?;
    let gateway_tls = if with_gateway {
        Some(
            TcpListener::bind(config.gateway.tls_listen)
                .await
                .with_context(|| {
                    format!(
                        "cannot listen on {} (gateway.tls_listen)",
                        config.gateway.tls_listen
                    )
                })?,
        )
    } else {
        None
    };
    let gateway_tls_addr = gateway_tls
        .as_ref()
        .map(TcpListener::local_addr)
        .transpose()?;
    let gateway_tls = gateway_tls.map(TcpListener::into_std).transpose()?;
    let workers = gateway_workers(&config);

    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let (down_tx, down_rx) = watch::channel(false);
    let background = state.spawn_background(down_rx.clone()).await;
    let drain = Duration::from_secs(config.shutdown.drain_timeout_secs);
    let app = fleetgate_manager::router(state.clone());
    // The manager role builds no gateway at all: a gateway compiles every revision,
    // runs the upstreams' active health checks and raises `config.applied` and
    // `health.*` events, none of which a manager without a data plane may do. Its
    // API then reports that no data plane runs here (`data_plane` stays unset).
    let gw = if with_gateway {
        // One input: the manager's revisions, certificates and published sets, the
        // rate-limit behaviour, and the Flecto agent's synced rules.
        state.feed.publish_rate_limits(RateLimitSettings {
            fail_open: config.gateway.rate_limit_fail_open,
        });
        let mut options = gateway_options(&config, Some(state.event_sink()))?;
        options.tracer = tracer.clone();
        options.ai_usage = Some(state.ai_usage_sink());
        options.ai_allowances = Some(state.ai_allowances());
        let gw = Gateway::new(state.subscribe(), options);
        if config.flecto.url.is_some() {
            let mut cfg = config.flecto.clone();
            cfg.agent_name = cfg.effective_agent_name();
            let agent = flecto_agent::Agent::new(cfg, state.feed.clone())?;
            tokio::spawn(agent.run(down_rx.clone()));
        }
        let metrics = gw.clone();
        let _ = state.data_plane.set(fleetgate_manager::DataPlane {
            status: gw.report_status(STATUS_EVERY),
            metrics: Arc::new(move |out: &mut String| metrics.render_metrics(out)),
            control: Arc::new(gw.clone()),
        });
        Some(gw)
    } else {
        None
    };
    let task_state = state.clone();
    let stopping_gateway = gw.clone();
    let manager_limits = fleetgate_manager::server::ServerLimits {
        header_read_timeout: Duration::from_millis(config.manager.header_read_timeout_ms),
        body_read_timeout: Duration::from_millis(config.manager.body_read_timeout_ms),
        max_pending_connections: config.manager.max_pending_connections,
    };

    let task = tokio::spawn(async move {
        let manager = fleetgate_manager::server::serve(
            manager_listener,
            app,
            manager_limits,
            down_rx.clone(),
        );
        let manager_task = tokio::spawn(manager);
        let node_task = fleetgate_manager::nodes::listener::spawn(
            node_listener,
            task_state.clone(),
            down_rx.clone(),
        );
        // The listeners exist exactly when the gateway does (`with_gateway`).
        let tls_task = gw.clone().zip(gateway_tls).map(|(gw, l)| {
            tokio::spawn(gw.serve_on_threads(l, true, workers, down_rx.clone(), drain))
        });
        let gateway_task = gw.zip(gateway).map(|(gw, l)| {
            tokio::spawn(gw.serve_on_threads(l, false, workers, down_rx.clone(), drain))
        });
        tokio::select! {
            () = shutdown => {}
            _ = stop_rx => {}
        }
        tracing::info!("shutting down: no new connections; draining in-flight requests");
        let _ = down_tx.send(true);
        match tokio::time::timeout(drain, manager_task).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "manager server task failed"),
            Err(_) => tracing::warn!("manager drain timed out; closing remaining connections"),
        }
        for t in [gateway_task, tls_task].into_iter().flatten() {
            let _ = t.await;
        }
        if let Some(gw) = stopping_gateway {
            // Drained: what this process leased of AI budgets and will not
            // spend goes back for the other processes.
            gw.give_back_ai_allowances().await;
        }
        let _ = node_task.await;
        let _ = background.await;
        if let Some(export) = export {
            export.shutdown(TRACE_FLUSH).await;
        }
        task_state.store.close().await;
        tracing::info!("stopped");
        Ok(())
    });

    tracing::info!(%manager_addr, %node_addr, gateway = ?gateway_addr, store = store.backend().as_str(), "fleetgate is running");
    Ok(Running {
        manager_addr,
        node_addr,
        gateway_addr,
        gateway_tls_addr,
        state,
        stop: Some(stop_tx),
        task,
    })
}

/// How long stopping waits for the spans still queued to be sent.
const TRACE_FLUSH: Duration = Duration::from_secs(5);

/// The trace exporter of `tracing.endpoint`, when set.
fn start_tracing(
    config: &Config,
    role: &str,
) -> anyhow::Result<(
    Option<fleetgate_shared::otel::Tracer>,
    Option<fleetgate_shared::otel::ExportTask>,
)> {
    let Some(exporter) = config.tracing.exporter(role)? else {
        return Ok((None, None));
    };
    tracing::info!(endpoint = %fleetgate_core::redact::redact_url(&exporter.endpoint), protocol = %config.tracing.protocol, "exporting traces");
    let (tracer, task) = fleetgate_shared::otel::Tracer::start(exporter)
        .map_err(|e| anyhow::anyhow!("tracing.{e}"))?;
    Ok((Some(tracer), Some(task)))
}

/// The gateway's options from the configuration; `events` go to the manager's hub.
fn gateway_options(
    config: &Config,
    events: Option<Arc<dyn fleetgate_core::events::EventSink>>,
) -> anyhow::Result<GatewayOptions> {
    Ok(GatewayOptions {
        access_log: config
            .gateway
            .access_log
            .then(|| fleetgate_proxy::access_log::AccessLog::new(&config.gateway.access_log_fields))
            .transpose()
            .map_err(anyhow::Error::msg)?,
        redis_url: config.redis.url.clone(),
        header_read_timeout: Duration::from_millis(config.gateway.header_read_timeout_ms),
        client_body_timeout: Duration::from_millis(config.gateway.client_body_timeout_ms),
        client_send_timeout: Duration::from_millis(config.gateway.client_send_timeout_ms),
        events,
        ai_usage: None,
        ai_allowances: None,
        tracer: None,
    })
}

/// Gateway worker threads: `gateway.workers`, or one per CPU when it is 0.
fn gateway_workers(config: &Config) -> usize {
    match config.gateway.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}

/// A running edge: a gateway without a manager of its own.
pub struct RunningEdge {
    pub gateway_addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl RunningEdge {
    /// Stops accepting and drains in-flight requests.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.task.await.context("edge task panicked")?
    }

    /// Waits until the edge ends by itself (for `main`).
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await.context("edge task panicked")?
    }
}

/// Starts an edge: the gateway alone on `gateway.listen`, no store and no admin
/// API. Its configuration comes from a Fleetgate manager (`edge.manager_url`: the
/// edge agent registers over `/ws/node`, applies the snapshots it is sent and
/// serves the last applied one from `data_dir` while the manager is away), and/or
/// its redirects and pages from a Flecto-compatible manager (`flecto.*`). One of
/// the two is required. With a Fleetgate manager the edge also runs the
/// deployments it is sent (under `data_dir`, Docker at `docker.socket`), routed by
/// this gateway (see `fleetgate_edge::deployments`).
pub async fn start_edge(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<RunningEdge> {
    if config.flecto.url.is_none() && config.edge.manager_url.is_none() {
        anyhow::bail!(
            "fleetgate edge needs a manager: set edge.manager_url (--manager wss://host:3443 \
             with --token on first start), or flecto.url (--flecto-url with \
             --flecto-namespace, --flecto-project and --flecto-token)"
        );
    }
    let listener = TcpListener::bind(config.gateway.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (gateway.listen)",
                config.gateway.listen
            )
        })?;
    let gateway_addr = listener.local_addr()?;
    let listener = listener.into_std()?;
    let workers = gateway_workers(&config);
    // Until a manager says otherwise: no routes (404 for every host no synced
    // rule answers), or the snapshot last applied.
    let feed = ConfigFeed::new(DataPlaneConfig {
        rate_limits: RateLimitSettings {
            fail_open: config.gateway.rate_limit_fail_open,
        },
        ..DataPlaneConfig::default()
    });
    let stored = match config.edge.manager_url {
        Some(_) => fleetgate_edge::stored_snapshot(&config.data_dir),
        None => None,
    };
    if let Some(s) = &stored {
        tracing::info!(
            revision = s.revision,
            "serving the configuration applied last"
        );
        feed.adopt(&s.config);
    }
    let (tracer, export) = start_tracing(&config, "edge")?;
    let mut options = gateway_options(&config, None)?;
    options.tracer = tracer;
    let gw = Gateway::new(feed.subscribe(), options);
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let (down_tx, down_rx) = watch::channel(false);
    let agent_task = match &config.flecto.url {
        Some(_) => {
            let mut cfg = config.flecto.clone();
            cfg.agent_name = cfg.effective_agent_name();
            let agent = flecto_agent::Agent::new(cfg, feed.clone())?;
            Some(tokio::spawn(agent.run(down_rx.clone())))
        }
        None => None,
    };
    let edge_task = match node_options(&config) {
        Some(options) => {
            let agent = fleetgate_edge::EdgeAgent::new(
                options,
                feed.clone(),
                gw.report_status(STATUS_EVERY),
                stored.as_ref(),
            )?;
            Some(tokio::spawn(agent.run(down_rx.clone())))
        }
        None => None,
    };
    let drain = Duration::from_secs(config.shutdown.drain_timeout_secs);
    let task = tokio::spawn(async move {
        let gateway_task =
            tokio::spawn(gw.serve_on_threads(listener, false, workers, down_rx.clone(), drain));
        tokio::select! {
            () = shutdown => {}
            _ = stop_rx => {}
        }
        tracing::info!("shutting down: no new connections; draining in-flight requests");
        let _ = down_tx.send(true);
        let _ = gateway_task.await;
        for t in [agent_task, edge_task].into_iter().flatten() {
            let _ = t.await;
        }
        if let Some(export) = export {
            export.shutdown(TRACE_FLUSH).await;
        }
        // The feed lives until here, so the gateway never sees its configuration end.
        drop(feed);
        tracing::info!("stopped");
        Ok(())
    });
    tracing::info!(gateway = %gateway_addr, "fleetgate edge is running");
    Ok(RunningEdge {
        gateway_addr,
        stop: Some(stop_tx),
        task,
    })
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

/// Installs the log subscriber (stderr, text or JSON lines).
pub fn init_logging(config: &Config) {
    use tracing_subscriber::EnvFilter;
    let (filter, level) = match std::env::var("RUST_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(&f).ok().map(|e| (e, f)))
    {
        Some(found) => found,
        None => match EnvFilter::try_new(&config.log.level) {
            Ok(e) => (e, config.log.level.clone()),
            Err(_) => (EnvFilter::new("info"), "info".into()),
        },
    };
    let builder = tracing_subscriber::fmt().with_writer(std::io::stderr);
    // The filter can be replaced while the process runs (`/api/v1/settings/logging`).
    let installed = if config.log.format == "json" {
        let b = builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_env_filter(filter)
            .with_filter_reloading();
        let handle = b.reload_handle();
        b.try_init().ok().map(|()| reloader(handle))
    } else {
        let b = builder.with_env_filter(filter).with_filter_reloading();
        let handle = b.reload_handle();
        b.try_init().ok().map(|()| reloader(handle))
    };
    if let Some(apply) = installed {
        let format = if config.log.format == "json" {
            "json"
        } else {
            "pretty"
        };
        fleetgate_manager::logging::install(&level, format, apply);
    }
}

/// Replaces the log filter through `handle` with a filter given as text.
fn reloader<S: 'static>(
    handle: tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, S>,
) -> fleetgate_manager::logging::ApplyFilter {
    Box::new(move |f: &str| {
        let e = tracing_subscriber::EnvFilter::try_new(f).map_err(|e| e.to_string())?;
        handle.reload(e).map_err(|e| e.to_string())
    })
}

/// How this node reaches its manager (`edge.*`), if it has one.
fn node_options(config: &Config) -> Option<fleetgate_edge::EdgeOptions> {
    let e = &config.edge;
    let url = e.manager_url.as_ref()?;
    let trust = if let Some(path) = &e.ca_cert {
        fleetgate_edge::Trust::CaFile(path.clone())
    } else if let Some(fp) = &e.manager_fingerprint {
        fleetgate_edge::Trust::Fingerprint(fp.clone())
    } else if e.insecure_skip_verify {
        tracing::warn!("edge.insecure_skip_verify: the manager's certificate is not checked");
        fleetgate_edge::Trust::Insecure
    } else {
        fleetgate_edge::Trust::System
    };
    Some(fleetgate_edge::EdgeOptions {
        manager_url: url.clone(),
        token: e.token.clone().filter(|t| !t.is_empty()),
        data_dir: config.data_dir.clone(),
        trust,
        docker_socket: config.docker.socket.clone(),
    })
}

/// A running relay.
pub struct RunningRelay {
    /// The QUIC address edges connect to.
    pub quic_addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl RunningRelay {
    /// Closes every edge connection and the endpoint.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.task.await.context("relay task panicked")?
    }

    /// Waits until the relay ends by itself (for `main`).
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await.context("relay task panicked")?
    }
}

/// Events a relay holds for its manager before dropping new ones.
const RELAY_EVENT_QUEUE: usize = 256;

/// Starts a relay: the QUIC tunnel relay on `relay.quic_listen`, and, with
/// `edge.manager_url`, its node connection to a Fleetgate manager (registration,
/// relay stats and health, the relay commands). Without a manager every tunnel
/// binds in open mode.
pub async fn start_relay(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<RunningRelay> {
    let (events_tx, events) = tokio::sync::mpsc::channel(RELAY_EVENT_QUEUE);
    let mut relay_config = fleetgate_tunnel::RelayConfig::new(config.relay.quic_listen);
    relay_config.events = Some(events_tx);
    let relay = fleetgate_tunnel::Relay::bind(relay_config).with_context(|| {
        format!(
            "cannot listen on {} (relay.quic_listen)",
            config.relay.quic_listen
        )
    })?;
    let link = match node_options(&config) {
        Some(options) => Some(fleetgate_edge::NodeLink::new(options)?),
        None => {
            tracing::warn!("no edge.manager_url: the relay accepts any tunnel (open mode)");
            None
        }
    };
    let node = relay_node::RelayNode::new(relay, config.edge.manager_url.clone(), events)?;
    let quic_addr = node.relay.local_addr()?;
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let (down_tx, mut down_rx) = watch::channel(false);
    let task = tokio::spawn(async move {
        let serve = async {
            match &link {
                Some(link) => link.run(&node, &mut down_rx).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = serve => {}
            () = shutdown => {}
            _ = stop_rx => {}
        }
        let _ = down_tx.send(true);
        node.relay.shutdown().await;
        tracing::info!("stopped");
        Ok(())
    });
    tracing::info!(quic = %quic_addr, "fleetgate relay is running");
    Ok(RunningRelay {
        quic_addr,
        stop: Some(stop_tx),
        task,
    })
}
