//! Start-up configuration: defaults, then the TOML file (`--config`), then
//! `FLEETGATE_*` environment variables, then command-line flags — each later
//! source overriding the earlier ones.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use fleetgate_core::redact::redact_url;
use serde::{Deserialize, Serialize};

/// Everything Fleetgate needs to start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the SQLite database, backups and certificates live.
    pub data_dir: PathBuf,
    pub manager: ManagerSection,
    pub gateway: GatewaySection,
    pub database: DatabaseSection,
    pub redis: UrlSection,
    pub nats: UrlSection,
    pub flecto: FlectoSection,
    pub edge: EdgeSection,
    pub relay: RelaySection,
    pub docker: DockerSection,
    pub shutdown: ShutdownSection,
    pub log: LogSection,
    pub acme: AcmeSection,
    pub tracing: TracingSection,
}

/// Where this process sends its OpenTelemetry traces (the gateway's spans, the
/// manager API's spans). Which requests are traced is the runtime setting
/// `settings.tracing` (sample ratio, parent-based), carried by revisions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TracingSection {
    /// The OTLP receiver (an OpenTelemetry Collector): `http://host:4318` for
    /// `http/protobuf` (spans go to `/v1/traces` unless the URL has a path),
    /// `http://host:4317` for `grpc`; `https://` for TLS. Unset: no tracing.
    pub endpoint: Option<String>,
    /// `http/protobuf` (the default) or `grpc`.
    pub protocol: String,
    /// Headers sent with every export (an API key, a tenant). Secrets: never
    /// printed or logged.
    pub headers: std::collections::BTreeMap<String, String>,
    /// The `service.name` of the spans.
    pub service_name: String,
    /// PEM certificate(s) trusted for an `https://` endpoint besides the
    /// system's roots.
    pub ca_cert: Option<PathBuf>,
    /// One export may take this long, connecting included.
    pub timeout_ms: u64,
    /// Spans waiting for export at most; more are dropped (and counted).
    pub queue_size: usize,
    /// Spans per export at most.
    pub batch_size: usize,
    /// A span waits at most this long before its batch is sent.
    pub interval_ms: u64,
}

impl Default for TracingSection {
    fn default() -> Self {
        Self {
            endpoint: None,
            protocol: "http/protobuf".into(),
            headers: Default::default(),
            service_name: "fleetgate".into(),
            ca_cert: None,
            timeout_ms: 10_000,
            queue_size: 2048,
            batch_size: 512,
            interval_ms: 2000,
        }
    }
}

impl TracingSection {
    /// The exporter's settings, or `None` without an endpoint; `role` is the
    /// command (`serve`, `manager`, `edge`), a resource attribute.
    pub fn exporter(
        &self,
        role: &str,
    ) -> anyhow::Result<Option<fleetgate_shared::otel::ExporterConfig>> {
        use fleetgate_shared::otel::{ExporterConfig, Protocol};
        let Some(endpoint) = &self.endpoint else {
            return Ok(None);
        };
        let protocol =
            Protocol::parse(&self.protocol).map_err(|e| anyhow::anyhow!("tracing.protocol {e}"))?;
        let ca_pem = match &self.ca_cert {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read tracing.ca_cert {}", path.display()))?,
            ),
            None => None,
        };
        let mut c = ExporterConfig::new(endpoint.clone(), protocol);
        c.headers = self
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        c.ca_pem = ca_pem;
        c.resource = vec![
            ("service.name", self.service_name.clone()),
            ("service.version", env!("CARGO_PKG_VERSION").to_string()),
            ("service.instance.id", uuid::Uuid::new_v4().to_string()),
            ("fleetgate.role", role.to_string()),
        ];
        c.timeout = std::time::Duration::from_millis(self.timeout_ms);
        c.queue_size = self.queue_size;
        c.batch_size = self.batch_size;
        c.interval = std::time::Duration::from_millis(self.interval_ms);
        Ok(Some(c))
    }

    fn validate(&self) -> anyhow::Result<()> {
        use fleetgate_shared::otel::{check_endpoint, check_headers, Protocol};
        let protocol =
            Protocol::parse(&self.protocol).map_err(|e| anyhow::anyhow!("tracing.protocol {e}"))?;
        if let Some(url) = &self.endpoint {
            check_endpoint(url, protocol).map_err(|e| anyhow::anyhow!("tracing.endpoint {e}"))?;
        }
        let pairs: Vec<(String, String)> = self
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        check_headers(&pairs).map_err(|e| anyhow::anyhow!("tracing.headers: {e}"))?;
        let name = &self.service_name;
        if name.trim().is_empty() || name.len() > 200 || name.chars().any(char::is_control) {
            bail!("tracing.service_name must be 1 to 200 characters without control characters");
        }
        if !(100..=120_000).contains(&self.timeout_ms) {
            bail!("tracing.timeout_ms must be between 100 and 120000");
        }
        if !(1..=1_000_000).contains(&self.queue_size) {
            bail!("tracing.queue_size must be between 1 and 1000000");
        }
        if !(1..=10_000).contains(&self.batch_size) {
            bail!("tracing.batch_size must be between 1 and 10000");
        }
        if !(100..=60_000).contains(&self.interval_ms) {
            bail!("tracing.interval_ms must be between 100 and 60000");
        }
        Ok(())
    }
}

/// ACME certificates (`POST /api/v1/certificates/request` and renewals).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AcmeSection {
    /// The CA's directory; Let's Encrypt production by default.
    pub directory_url: String,
    /// Extra roots (PEM bundle) trusted for the directory's TLS, e.g. a test CA.
    pub ca_cert: Option<PathBuf>,
    /// Contact of the ACME account.
    pub email: Option<String>,
    /// Renew a certificate this many days before it expires.
    pub renew_before_days: u64,
    /// How often the renewal task looks for due certificates.
    pub check_interval_secs: u64,
    /// How long one order may take.
    pub order_timeout_secs: u64,
}

impl Default for AcmeSection {
    fn default() -> Self {
        Self {
            directory_url: fleetgate_manager::acme::LETS_ENCRYPT_PRODUCTION.into(),
            ca_cert: None,
            email: None,
            renew_before_days: 30,
            check_interval_secs: 86_400,
            order_timeout_secs: 90,
        }
    }
}

impl AcmeSection {
    /// The manager's ACME options.
    pub fn options(&self) -> fleetgate_manager::acme::AcmeOptions {
        fleetgate_manager::acme::AcmeOptions {
            directory_url: self.directory_url.clone(),
            ca_cert: self.ca_cert.clone(),
            email: self.email.clone(),
            renew_before: std::time::Duration::from_secs(self.renew_before_days * 86_400),
            check_interval: std::time::Duration::from_secs(self.check_interval_secs),
            order_timeout: std::time::Duration::from_secs(self.order_timeout_secs),
        }
    }
}

/// The Docker engine that runs deployments with `driver: docker` (or `auto`)
/// and answers the container, image, volume and network endpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DockerSection {
    /// The engine's unix socket; Fleetgate connects when it first needs it, so
    /// the engine may start later (or never, on a host without Docker).
    pub socket: PathBuf,
}

impl Default for DockerSection {
    fn default() -> Self {
        Self {
            socket: PathBuf::from(fleetgate_deploy::docker::DEFAULT_SOCKET),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ManagerSection {
    /// Address of the manager API and dashboard.
    pub listen: SocketAddr,
    /// Largest accepted API request body, in bytes.
    pub max_body_bytes: usize,
    /// Mark session cookies `Secure` (set when the API is behind HTTPS).
    pub secure_cookies: bool,
    /// Serve `/metrics` and `/prometheus/metrics` to anyone; by default they need
    /// an API key or session (any role).
    pub metrics_public: bool,
    /// A connection waiting for a request must send the whole head within this
    /// many milliseconds (counted from when the wait began); otherwise it is closed.
    pub header_read_timeout_ms: u64,
    /// While a request body is read, some of it must arrive this often (ms), or
    /// the request ends with 408.
    pub body_read_timeout_ms: u64,
    /// Most connections open at once that have not yet sent a complete request;
    /// more are closed as soon as they are accepted.
    pub max_pending_connections: usize,
    /// Address of the node listener (`/ws/node`, always TLS).
    pub node_listen: SocketAddr,
    /// Certificate chain (PEM) of the node listener; unset: the one in the data
    /// directory, generated self-signed on first start.
    pub node_tls_cert: Option<PathBuf>,
    /// Private key (PEM) of `node_tls_cert`.
    pub node_tls_key: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewaySection {
    /// Address of the HTTP gateway (`fleetgate serve` only).
    pub listen: SocketAddr,
    /// Address of the HTTPS gateway, serving the uploaded certificates by SNI.
    pub tls_listen: SocketAddr,
    /// Print one JSON line per proxied request on standard output.
    pub access_log: bool,
    /// Fields of the access log lines; empty means all of them.
    pub access_log_fields: Vec<String>,
    /// With `redis.url` set and Redis not answering: admit requests on
    /// rate-limited routes (true, the default) or refuse them with 503.
    pub rate_limit_fail_open: bool,
    /// Clients must send their request headers within this many milliseconds.
    pub header_read_timeout_ms: u64,
    /// A client sending a request body may pause at most this long between two
    /// reads (nginx's `client_body_timeout`).
    pub client_body_timeout_ms: u64,
    /// A client that stops reading its response is cut after this long without
    /// progress (nginx's `send_timeout`); the upstream connection goes with it.
    pub client_send_timeout_ms: u64,
    /// Gateway worker threads, each with its own single-threaded runtime;
    /// 0 means one per CPU.
    pub workers: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseSection {
    /// `postgres://…` or `sqlite://…`; defaults to `sqlite://<data_dir>/fleetgate.db`.
    pub url: Option<String>,
    pub max_connections: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UrlSection {
    pub url: Option<String>,
}

/// `fleetgate edge` managed by a Fleetgate manager over `/ws/node`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EdgeSection {
    /// The manager's node listener, `wss://host:3443` (TLS only); unset turns
    /// this off.
    pub manager_url: Option<String>,
    /// The single-use registration token from `POST /api/v1/nodes`; needed only
    /// until the edge has registered (its identity is then kept in the data
    /// directory). Never printed.
    pub token: Option<String>,
    /// PEM file of the certificate(s) to trust for the manager: its CA, or the
    /// manager's own `node-tls.crt` when it is self-signed. Checked against the
    /// URL's host.
    pub ca_cert: Option<PathBuf>,
    /// SHA-256 fingerprint (hex) of the manager's node listener certificate, as
    /// `GET /api/v1/settings/tls` shows it: only that certificate is accepted.
    pub manager_fingerprint: Option<String>,
    /// Accept any certificate from the manager (encrypted but unauthenticated).
    /// For trials only; prefer `ca_cert` or `manager_fingerprint`.
    pub insecure_skip_verify: bool,
}

/// `fleetgate relay`: the QUIC relay joining tunnel ends between edges. It reaches
/// its manager with the `edge.*` settings (the same node protocol).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RelaySection {
    /// The QUIC address edges connect to (ALPN `bilbycast-relay`).
    pub quic_listen: SocketAddr,
}

impl Default for RelaySection {
    fn default() -> Self {
        Self {
            quic_listen: SocketAddr::from(([0, 0, 0, 0], 4433)),
        }
    }
}

/// Sync redirects and pages from a Flecto-compatible manager, as one of its agents.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FlectoSection {
    /// The manager's base URL (`https://flecto.example.com`); unset turns this off.
    pub url: Option<String>,
    pub namespace: String,
    pub project: String,
    /// The project token (sent as `Bearer`); never printed.
    pub token: Option<String>,
    /// Time between version checks, in milliseconds (100 to 86400000; default 5 min).
    pub interval_ms: u64,
    /// Name this agent reports (`[A-Za-z0-9_-]`); default `fleetgate-<hostname>`.
    pub agent_name: String,
    /// Header carrying the token (default `Authorization`).
    pub auth_header: String,
}

impl Default for FlectoSection {
    fn default() -> Self {
        Self {
            url: None,
            namespace: String::new(),
            project: String::new(),
            token: None,
            interval_ms: 300_000,
            agent_name: String::new(),
            auth_header: "Authorization".into(),
        }
    }
}

impl FlectoSection {
    /// The agent name in force: the configured one or `fleetgate-<hostname>` with
    /// characters Flecto refuses replaced by `-`.
    pub fn effective_agent_name(&self) -> String {
        if !self.agent_name.is_empty() {
            return self.agent_name.clone();
        }
        let host =
            std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_else(|_| "host".into());
        let clean: String = host
            .trim()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        format!("fleetgate-{clean}").chars().take(100).collect()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownSection {
    /// How long in-flight requests may take to finish after SIGINT/SIGTERM.
    pub drain_timeout_secs: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    /// A tracing filter such as `info` or `fleetgate_manager=debug,info`.
    pub level: String,
    /// `text` or `json`.
    pub format: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./fleetgate-data"),
            manager: ManagerSection::default(),
            gateway: GatewaySection::default(),
            database: DatabaseSection::default(),
            redis: UrlSection::default(),
            nats: UrlSection::default(),
            flecto: FlectoSection::default(),
            edge: EdgeSection::default(),
            relay: RelaySection::default(),
            docker: DockerSection::default(),
            shutdown: ShutdownSection::default(),
            log: LogSection::default(),
            acme: AcmeSection::default(),
            tracing: TracingSection::default(),
        }
    }
}

impl Default for ManagerSection {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 3001)),
            max_body_bytes: 1024 * 1024,
            secure_cookies: false,
            metrics_public: false,
            header_read_timeout_ms: 10_000,
            body_read_timeout_ms: 60_000,
            max_pending_connections: 1024,
            node_listen: SocketAddr::from(([0, 0, 0, 0], 3443)),
            node_tls_cert: None,
            node_tls_key: None,
        }
    }
}

impl Default for GatewaySection {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            tls_listen: SocketAddr::from(([0, 0, 0, 0], 8443)),
            access_log: false,
            access_log_fields: Vec::new(),
            rate_limit_fail_open: true,
            header_read_timeout_ms: 10_000,
            client_body_timeout_ms: 60_000,
            client_send_timeout_ms: 60_000,
            workers: 0,
        }
    }
}

impl Default for DatabaseSection {
    fn default() -> Self {
        Self {
            url: None,
            max_connections: 8,
        }
    }
}

impl Default for ShutdownSection {
    fn default() -> Self {
        Self {
            drain_timeout_secs: 30,
        }
    }
}

impl Default for LogSection {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: "text".into(),
        }
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Text,
    /// Comma-separated values.
    List,
    Int,
    Bool,
    /// Comma-separated `name=value` pairs, into a table.
    Pairs,
}

/// The environment variables that override configuration keys.
const ENV_KEYS: &[(&str, &str, Kind)] = &[
    ("FLEETGATE_DATA_DIR", "data_dir", Kind::Text),
    ("FLEETGATE_MANAGER_LISTEN", "manager.listen", Kind::Text),
    (
        "FLEETGATE_MANAGER_MAX_BODY_BYTES",
        "manager.max_body_bytes",
        Kind::Int,
    ),
    (
        "FLEETGATE_MANAGER_SECURE_COOKIES",
        "manager.secure_cookies",
        Kind::Bool,
    ),
    (
        "FLEETGATE_MANAGER_METRICS_PUBLIC",
        "manager.metrics_public",
        Kind::Bool,
    ),
    (
        "FLEETGATE_MANAGER_HEADER_READ_TIMEOUT_MS",
        "manager.header_read_timeout_ms",
        Kind::Int,
    ),
    (
        "FLEETGATE_MANAGER_BODY_READ_TIMEOUT_MS",
        "manager.body_read_timeout_ms",
        Kind::Int,
    ),
    (
        "FLEETGATE_MANAGER_MAX_PENDING_CONNECTIONS",
        "manager.max_pending_connections",
        Kind::Int,
    ),
    (
        "FLEETGATE_MANAGER_NODE_LISTEN",
        "manager.node_listen",
        Kind::Text,
    ),
    (
        "FLEETGATE_MANAGER_NODE_TLS_CERT",
        "manager.node_tls_cert",
        Kind::Text,
    ),
    (
        "FLEETGATE_MANAGER_NODE_TLS_KEY",
        "manager.node_tls_key",
        Kind::Text,
    ),
    ("FLEETGATE_GATEWAY_LISTEN", "gateway.listen", Kind::Text),
    (
        "FLEETGATE_GATEWAY_TLS_LISTEN",
        "gateway.tls_listen",
        Kind::Text,
    ),
    (
        "FLEETGATE_GATEWAY_ACCESS_LOG",
        "gateway.access_log",
        Kind::Bool,
    ),
    (
        "FLEETGATE_GATEWAY_RATE_LIMIT_FAIL_OPEN",
        "gateway.rate_limit_fail_open",
        Kind::Bool,
    ),
    (
        "FLEETGATE_GATEWAY_HEADER_READ_TIMEOUT_MS",
        "gateway.header_read_timeout_ms",
        Kind::Int,
    ),
    (
        "FLEETGATE_GATEWAY_CLIENT_BODY_TIMEOUT_MS",
        "gateway.client_body_timeout_ms",
        Kind::Int,
    ),
    (
        "FLEETGATE_GATEWAY_CLIENT_SEND_TIMEOUT_MS",
        "gateway.client_send_timeout_ms",
        Kind::Int,
    ),
    ("FLEETGATE_GATEWAY_WORKERS", "gateway.workers", Kind::Int),
    (
        "FLEETGATE_GATEWAY_ACCESS_LOG_FIELDS",
        "gateway.access_log_fields",
        Kind::List,
    ),
    ("FLEETGATE_DATABASE_URL", "database.url", Kind::Text),
    (
        "FLEETGATE_DATABASE_MAX_CONNECTIONS",
        "database.max_connections",
        Kind::Int,
    ),
    ("FLEETGATE_REDIS_URL", "redis.url", Kind::Text),
    ("FLEETGATE_NATS_URL", "nats.url", Kind::Text),
    ("FLEETGATE_FLECTO_URL", "flecto.url", Kind::Text),
    ("FLEETGATE_FLECTO_NAMESPACE", "flecto.namespace", Kind::Text),
    ("FLEETGATE_FLECTO_PROJECT", "flecto.project", Kind::Text),
    ("FLEETGATE_FLECTO_TOKEN", "flecto.token", Kind::Text),
    (
        "FLEETGATE_FLECTO_INTERVAL_MS",
        "flecto.interval_ms",
        Kind::Int,
    ),
    (
        "FLEETGATE_FLECTO_AGENT_NAME",
        "flecto.agent_name",
        Kind::Text,
    ),
    (
        "FLEETGATE_FLECTO_AUTH_HEADER",
        "flecto.auth_header",
        Kind::Text,
    ),
    ("FLEETGATE_EDGE_MANAGER_URL", "edge.manager_url", Kind::Text),
    ("FLEETGATE_EDGE_TOKEN", "edge.token", Kind::Text),
    ("FLEETGATE_EDGE_CA_CERT", "edge.ca_cert", Kind::Text),
    (
        "FLEETGATE_EDGE_MANAGER_FINGERPRINT",
        "edge.manager_fingerprint",
        Kind::Text,
    ),
    (
        "FLEETGATE_EDGE_INSECURE_SKIP_VERIFY",
        "edge.insecure_skip_verify",
        Kind::Bool,
    ),
    (
        "FLEETGATE_RELAY_QUIC_LISTEN",
        "relay.quic_listen",
        Kind::Text,
    ),
    (
        "FLEETGATE_SHUTDOWN_DRAIN_TIMEOUT_SECS",
        "shutdown.drain_timeout_secs",
        Kind::Int,
    ),
    (
        "FLEETGATE_ACME_DIRECTORY_URL",
        "acme.directory_url",
        Kind::Text,
    ),
    ("FLEETGATE_ACME_CA_CERT", "acme.ca_cert", Kind::Text),
    ("FLEETGATE_ACME_EMAIL", "acme.email", Kind::Text),
    (
        "FLEETGATE_ACME_RENEW_BEFORE_DAYS",
        "acme.renew_before_days",
        Kind::Int,
    ),
    (
        "FLEETGATE_ACME_CHECK_INTERVAL_SECS",
        "acme.check_interval_secs",
        Kind::Int,
    ),
    (
        "FLEETGATE_ACME_ORDER_TIMEOUT_SECS",
        "acme.order_timeout_secs",
        Kind::Int,
    ),
    ("FLEETGATE_DOCKER_SOCKET", "docker.socket", Kind::Text),
    ("FLEETGATE_LOG_LEVEL", "log.level", Kind::Text),
    ("FLEETGATE_LOG_FORMAT", "log.format", Kind::Text),
    ("FLEETGATE_TRACING_ENDPOINT", "tracing.endpoint", Kind::Text),
    ("FLEETGATE_TRACING_PROTOCOL", "tracing.protocol", Kind::Text),
    ("FLEETGATE_TRACING_HEADERS", "tracing.headers", Kind::Pairs),
    (
        "FLEETGATE_TRACING_SERVICE_NAME",
        "tracing.service_name",
        Kind::Text,
    ),
    ("FLEETGATE_TRACING_CA_CERT", "tracing.ca_cert", Kind::Text),
    (
        "FLEETGATE_TRACING_TIMEOUT_MS",
        "tracing.timeout_ms",
        Kind::Int,
    ),
    (
        "FLEETGATE_TRACING_QUEUE_SIZE",
        "tracing.queue_size",
        Kind::Int,
    ),
    (
        "FLEETGATE_TRACING_BATCH_SIZE",
        "tracing.batch_size",
        Kind::Int,
    ),
    (
        "FLEETGATE_TRACING_INTERVAL_MS",
        "tracing.interval_ms",
        Kind::Int,
    ),
];

/// Variables read elsewhere (secrets, the config path, tests), not config keys.
const OTHER_VARS: &[&str] = &[
    "FLEETGATE_CONFIG",
    "FLEETGATE_ADMIN_PASSWORD",
    "FLEETGATE_BOOTSTRAP_TOKEN",
    "FLEETGATE_SECRET_KEY",
    "FLEETGATE_MASTER_KEY",
    // The command line against a running manager (`cli`), not the server.
    "FLEETGATE_MANAGER",
    "FLEETGATE_TOKEN",
    "FLEETGATE_CLI_CONFIG",
];

/// Flags that override the file and environment.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Overrides {
    /// Data directory (SQLite database, backups).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Manager API address.
    #[arg(long = "listen", value_name = "ADDR")]
    pub manager_listen: Option<SocketAddr>,
    /// Node listener address (`/ws/node`, TLS).
    #[arg(long, value_name = "ADDR")]
    pub node_listen: Option<SocketAddr>,
    /// Gateway address (`serve` only).
    #[arg(long, value_name = "ADDR")]
    pub gateway_listen: Option<SocketAddr>,
    /// Gateway HTTPS address (`serve` only).
    #[arg(long, value_name = "ADDR")]
    pub gateway_tls_listen: Option<SocketAddr>,
    /// Store URL: postgres://… or sqlite://…
    #[arg(long, value_name = "URL")]
    pub database_url: Option<String>,
    /// Redis URL for cluster-wide rate limits.
    #[arg(long, value_name = "URL")]
    pub redis_url: Option<String>,
    /// NATS URL for the event bus between manager replicas.
    #[arg(long, value_name = "URL")]
    pub nats_url: Option<String>,
    /// `edge`: the Fleetgate manager's node listener (`wss://host:3443`).
    #[arg(long = "manager", value_name = "URL")]
    pub edge_manager_url: Option<String>,
    /// `edge`: the registration token (also FLEETGATE_EDGE_TOKEN).
    #[arg(long = "token", value_name = "TOKEN")]
    pub edge_token: Option<String>,
    /// `edge`: PEM certificate(s) to trust for the manager.
    #[arg(long = "manager-ca-cert", value_name = "FILE")]
    pub edge_ca_cert: Option<PathBuf>,
    /// `edge`: SHA-256 fingerprint of the manager's certificate to pin.
    #[arg(long = "manager-fingerprint", value_name = "HEX")]
    pub edge_manager_fingerprint: Option<String>,
    /// `edge`: accept any manager certificate (trials only).
    #[arg(long = "insecure-skip-verify")]
    pub edge_insecure_skip_verify: bool,
    /// `relay`: the QUIC address edges connect to (default 0.0.0.0:4433).
    #[arg(long = "relay-listen", value_name = "ADDR")]
    pub relay_quic_listen: Option<SocketAddr>,
    /// Sync redirects and pages from this Flecto-compatible manager.
    #[arg(long, value_name = "URL")]
    pub flecto_url: Option<String>,
    /// Namespace of the synced project.
    #[arg(long, value_name = "NAME")]
    pub flecto_namespace: Option<String>,
    /// The synced project.
    #[arg(long, value_name = "NAME")]
    pub flecto_project: Option<String>,
    /// Project token (prefer FLEETGATE_FLECTO_TOKEN: flags show in process lists).
    #[arg(long, value_name = "TOKEN")]
    pub flecto_token: Option<String>,
}

impl Config {
    /// Loads the configuration from its sources in order of precedence.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        flags: &Overrides,
    ) -> anyhow::Result<Self> {
        let mut table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read config file {}", path.display()))?;
                text.parse::<toml::Table>()
                    .with_context(|| format!("config file {} is not valid TOML", path.display()))?
            }
            None => toml::Table::new(),
        };
        for (name, value) in env {
            if !name.starts_with("FLEETGATE_")
                || name.starts_with("FLEETGATE_TEST_")
                || OTHER_VARS.contains(&name.as_str())
            {
                continue;
            }
            let Some((_, key, kind)) = ENV_KEYS.iter().find(|(n, _, _)| *n == name) else {
                bail!(
                    "unknown environment variable {name}: known are {}",
                    env_names()
                );
            };
            let v = match kind {
                Kind::Text => toml::Value::String(value),
                Kind::List => toml::Value::Array(
                    value
                        .split(',')
                        .map(str::trim)
                        .filter(|v| !v.is_empty())
                        .map(|v| toml::Value::String(v.to_string()))
                        .collect(),
                ),
                Kind::Int => toml::Value::Integer(
                    value
                        .trim()
                        .parse()
                        .with_context(|| format!("{name} must be an integer, got {value:?}"))?,
                ),
                Kind::Pairs => {
                    let mut t = toml::Table::new();
                    for pair in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                        // The value is never quoted back: it may be a secret.
                        let Some((k, v)) = pair.split_once('=') else {
                            bail!("{name} must be name=value pairs separated by commas");
                        };
                        t.insert(
                            k.trim().to_string(),
                            toml::Value::String(v.trim().to_string()),
                        );
                    }
                    toml::Value::Table(t)
                }
                Kind::Bool => toml::Value::Boolean(match value.trim() {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    other => bail!("{name} must be true or false, got {other:?}"),
                }),
            };
            set_path(&mut table, key, v);
        }
        let mut config: Config = serde_path_to_error::deserialize(toml::Value::Table(table))
            .map_err(|e| {
                let path = e.path().to_string();
                let inner = e.into_inner();
                let msg = inner.message().trim().to_string();
                if path == "." {
                    anyhow::anyhow!("invalid configuration: {msg}")
                } else {
                    anyhow::anyhow!("invalid configuration at {path}: {msg}")
                }
            })?;
        if let Some(v) = &flags.data_dir {
            config.data_dir = v.clone();
        }
        if let Some(v) = flags.manager_listen {
            config.manager.listen = v;
        }
        if let Some(v) = flags.node_listen {
            config.manager.node_listen = v;
        }
        if let Some(v) = flags.gateway_listen {
            config.gateway.listen = v;
        }
        if let Some(v) = flags.gateway_tls_listen {
            config.gateway.tls_listen = v;
        }
        if let Some(v) = &flags.database_url {
            config.database.url = Some(v.clone());
        }
        if let Some(v) = &flags.redis_url {
            config.redis.url = Some(v.clone());
        }
        if let Some(v) = &flags.nats_url {
            config.nats.url = Some(v.clone());
        }
        if let Some(v) = &flags.edge_manager_url {
            config.edge.manager_url = Some(v.clone());
        }
        if let Some(v) = &flags.edge_token {
            config.edge.token = Some(v.clone());
        }
        if let Some(v) = &flags.edge_ca_cert {
            config.edge.ca_cert = Some(v.clone());
        }
        if let Some(v) = &flags.edge_manager_fingerprint {
            config.edge.manager_fingerprint = Some(v.clone());
        }
        if let Some(v) = flags.relay_quic_listen {
            config.relay.quic_listen = v;
        }
        if flags.edge_insecure_skip_verify {
            config.edge.insecure_skip_verify = true;
        }
        if let Some(v) = &flags.flecto_url {
            config.flecto.url = Some(v.clone());
        }
        if let Some(v) = &flags.flecto_namespace {
            config.flecto.namespace = v.clone();
        }
        if let Some(v) = &flags.flecto_project {
            config.flecto.project = v.clone();
        }
        if let Some(v) = &flags.flecto_token {
            config.flecto.token = Some(v.clone());
        }
        config.validate()?;
        Ok(config)
    }

    /// Checks values serde cannot check.
    pub fn validate(&self) -> anyhow::Result<()> {
        if let Some(url) = &self.database.url {
            fleetgate_store::Backend::from_url(url)
                .map_err(|e| anyhow::anyhow!("database.url: {e}"))?;
        }
        if self.database.max_connections == 0 || self.database.max_connections > 1000 {
            bail!("database.max_connections must be between 1 and 1000");
        }
        if self.docker.socket.as_os_str().is_empty() {
            bail!("docker.socket must be the path of the Docker engine's unix socket");
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            bail!(
                "log.format must be \"text\" or \"json\", got {:?}",
                self.log.format
            );
        }
        if !(100..=600_000).contains(&self.gateway.header_read_timeout_ms) {
            bail!("gateway.header_read_timeout_ms must be between 100 and 600000");
        }
        if !(100..=3_600_000).contains(&self.gateway.client_body_timeout_ms) {
            bail!("gateway.client_body_timeout_ms must be between 100 and 3600000");
        }
        if !(100..=3_600_000).contains(&self.gateway.client_send_timeout_ms) {
            bail!("gateway.client_send_timeout_ms must be between 100 and 3600000");
        }
        fleetgate_proxy::access_log::AccessLog::new(&self.gateway.access_log_fields)
            .map_err(|e| anyhow::anyhow!("gateway.access_log_fields: {e}"))?;
        if !(self.acme.directory_url.starts_with("https://")
            || self.acme.directory_url.starts_with("http://"))
        {
            bail!(
                "acme.directory_url must be an http(s) URL, got {:?}",
                self.acme.directory_url
            );
        }
        if self.acme.renew_before_days > 3650 {
            bail!("acme.renew_before_days must be between 0 and 3650");
        }
        if !(1..=604_800).contains(&self.acme.check_interval_secs) {
            bail!("acme.check_interval_secs must be between 1 and 604800");
        }
        if !(5..=3600).contains(&self.acme.order_timeout_secs) {
            bail!("acme.order_timeout_secs must be between 5 and 3600");
        }
        if self.gateway.workers > 256 {
            bail!("gateway.workers must be between 0 (one per CPU) and 256");
        }
        if !(100..=600_000).contains(&self.manager.header_read_timeout_ms) {
            bail!("manager.header_read_timeout_ms must be between 100 and 600000");
        }
        if !(100..=3_600_000).contains(&self.manager.body_read_timeout_ms) {
            bail!("manager.body_read_timeout_ms must be between 100 and 3600000");
        }
        if !(1..=1_000_000).contains(&self.manager.max_pending_connections) {
            bail!("manager.max_pending_connections must be between 1 and 1000000");
        }
        if self.manager.node_tls_cert.is_some() != self.manager.node_tls_key.is_some() {
            bail!("manager.node_tls_cert and manager.node_tls_key must be set together");
        }
        if self.manager.max_body_bytes < 1024 {
            bail!("manager.max_body_bytes must be at least 1024");
        }
        let f = &self.flecto;
        if let Some(url) = &f.url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                bail!("flecto.url must be an http:// or https:// URL, got {url:?}");
            }
            let code = |s: &str| {
                !s.is_empty()
                    && s.len() <= 100
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            };
            if !code(&f.namespace) || !code(&f.project) {
                bail!("flecto.namespace and flecto.project are required with flecto.url ([A-Za-z0-9_-])");
            }
            if f.token.as_deref().is_none_or(str::is_empty) {
                bail!("flecto.token is required with flecto.url (FLEETGATE_FLECTO_TOKEN)");
            }
            if !f.agent_name.is_empty() && !code(&f.agent_name) {
                bail!(
                    "flecto.agent_name must match ^[a-zA-Z0-9_-]+$, got {:?}",
                    f.agent_name
                );
            }
            if f.auth_header.is_empty()
                || !f
                    .auth_header
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            {
                bail!(
                    "flecto.auth_header must be an HTTP header name, got {:?}",
                    f.auth_header
                );
            }
        }
        let e = &self.edge;
        if let Some(url) = &e.manager_url {
            fleetgate_edge::ManagerUrl::parse(url)
                .map_err(|err| anyhow::anyhow!("edge.manager_url {err}"))?;
            let ways = usize::from(e.ca_cert.is_some())
                + usize::from(e.manager_fingerprint.is_some())
                + usize::from(e.insecure_skip_verify);
            if ways > 1 {
                bail!("set at most one of edge.ca_cert, edge.manager_fingerprint and edge.insecure_skip_verify");
            }
            if let Some(fp) = &e.manager_fingerprint {
                if fleetgate_edge::tls::normalize_fingerprint(fp).is_none() {
                    bail!("edge.manager_fingerprint must be a SHA-256 fingerprint: 64 hex digits");
                }
            }
        }
        if !(100..=86_400_000).contains(&f.interval_ms) {
            bail!("flecto.interval_ms must be between 100 and 86400000");
        }
        if let Some(u) = &self.redis.url {
            if !u.contains("://") {
                bail!(
                    "redis.url must be a URL such as redis://127.0.0.1:6379, got {:?}",
                    redact_url(u)
                );
            }
        }
        if let Some(u) = &self.nats.url {
            fleetgate_manager::bus::check_url(u).map_err(|e| anyhow::anyhow!("nats.url {e}"))?;
        }
        self.tracing.validate()?;
        Ok(())
    }

    /// The store URL in force.
    pub fn database_url(&self) -> String {
        match &self.database.url {
            Some(u) => u.clone(),
            None => format!("sqlite://{}", self.data_dir.join("fleetgate.db").display()),
        }
    }

    /// The effective configuration as TOML, with passwords in URLs replaced by `***`.
    pub fn redacted_toml(&self) -> String {
        let mut c = self.clone();
        c.database.url = Some(redact_url(&self.database_url()));
        c.redis.url = c.redis.url.as_deref().map(redact_url);
        c.nats.url = c.nats.url.as_deref().map(redact_url);
        if c.flecto.token.is_some() {
            c.flecto.token = Some("***".into());
        }
        if c.edge.token.is_some() {
            c.edge.token = Some("***".into());
        }
        for v in c.tracing.headers.values_mut() {
            *v = "***".into();
        }
        toml::to_string_pretty(&c).unwrap_or_default()
    }
}

fn env_names() -> String {
    ENV_KEYS
        .iter()
        .map(|(n, _, _)| *n)
        .collect::<Vec<_>>()
        .join(", ")
}

fn set_path(table: &mut toml::Table, path: &str, value: toml::Value) {
    match path.split_once('.') {
        None => {
            table.insert(path.to_string(), value);
        }
        Some((head, rest)) => {
            let entry = table
                .entry(head.to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if !entry.is_table() {
                *entry = toml::Value::Table(toml::Table::new());
            }
            if let toml::Value::Table(t) = entry {
                set_path(t, rest, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_match_the_documented_ports() {
        let c = Config::load(None, env(&[]), &Overrides::default()).expect("defaults");
        assert_eq!(c.manager.listen.to_string(), "127.0.0.1:3001");
        assert_eq!(c.gateway.listen.to_string(), "0.0.0.0:8080");
        assert!(c.database_url().starts_with("sqlite://"));
    }

    #[test]
    fn file_then_env_then_flags() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f.toml");
        std::fs::write(&path, "data_dir = \"/from/file\"\n[manager]\nlisten = \"127.0.0.1:1111\"\n[shutdown]\ndrain_timeout_secs = 5\n").expect("write");
        let c = Config::load(Some(&path), env(&[]), &Overrides::default()).expect("file");
        assert_eq!(c.manager.listen.port(), 1111);
        assert_eq!(c.shutdown.drain_timeout_secs, 5);
        let e = env(&[
            ("FLEETGATE_MANAGER_LISTEN", "127.0.0.1:2222"),
            ("FLEETGATE_SHUTDOWN_DRAIN_TIMEOUT_SECS", "9"),
            ("FLEETGATE_ADMIN_PASSWORD", "x"),
            ("FLEETGATE_SECRET_KEY", "y"),
            ("PATH", "/bin"),
        ]);
        let c = Config::load(Some(&path), e.clone(), &Overrides::default()).expect("env");
        assert_eq!(c.manager.listen.port(), 2222);
        assert_eq!(c.shutdown.drain_timeout_secs, 9);
        assert_eq!(c.data_dir, PathBuf::from("/from/file"));
        let flags = Overrides {
            manager_listen: Some("127.0.0.1:3333".parse().expect("addr")),
            ..Default::default()
        };
        let c = Config::load(Some(&path), e, &flags).expect("flags");
        assert_eq!(c.manager.listen.port(), 3333);
    }

    #[test]
    fn rejects_bad_input_naming_it() {
        let bad = Config::load(
            None,
            env(&[("FLEETGATE_SHUTDOWN_DRAIN_TIMEOUT_SECS", "soon")]),
            &Overrides::default(),
        );
        assert!(format!("{:#}", bad.expect_err("bad int"))
            .contains("FLEETGATE_SHUTDOWN_DRAIN_TIMEOUT_SECS"));
        let bad = Config::load(None, env(&[("FLEETGATE_NOPE", "1")]), &Overrides::default());
        assert!(format!("{:#}", bad.expect_err("unknown")).contains("FLEETGATE_NOPE"));
        // The command line's own variables may stay exported where a server starts.
        let cli = env(&[
            ("FLEETGATE_MANAGER", "http://127.0.0.1:3001"),
            ("FLEETGATE_TOKEN", "key"),
            ("FLEETGATE_CLI_CONFIG", "cli.toml"),
        ]);
        assert!(Config::load(None, cli, &Overrides::default()).is_ok());
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f.toml");
        std::fs::write(&path, "[manager]\nlisten = 5\n").expect("write");
        let err = format!(
            "{:#}",
            Config::load(Some(&path), env(&[]), &Overrides::default()).expect_err("type")
        );
        assert!(err.contains("listen"), "{err}");
        std::fs::write(&path, "[managr]\n").expect("write");
        let err = format!(
            "{:#}",
            Config::load(Some(&path), env(&[]), &Overrides::default()).expect_err("unknown")
        );
        assert!(err.contains("managr"), "{err}");
        let bad = Config::load(
            None,
            env(&[("FLEETGATE_DATABASE_URL", "mysql://x")]),
            &Overrides::default(),
        );
        assert!(format!("{:#}", bad.expect_err("scheme")).contains("database.url"));
        for url in [
            "http://127.0.0.1:4222",
            "127.0.0.1:4222",
            "nats://u:pw@h:port",
        ] {
            let bad = Config::load(
                None,
                env(&[("FLEETGATE_NATS_URL", url)]),
                &Overrides::default(),
            );
            let err = format!("{:#}", bad.expect_err("bad NATS URL"));
            assert!(err.contains("nats.url"), "{err}");
            assert!(!err.contains("pw"), "credentials are not shown: {err}");
        }
    }

    #[test]
    fn tracing_from_env_is_checked_and_its_headers_never_printed() {
        let c = Config::load(
            None,
            env(&[
                ("FLEETGATE_TRACING_ENDPOINT", "http://127.0.0.1:4317"),
                ("FLEETGATE_TRACING_PROTOCOL", "grpc"),
                (
                    "FLEETGATE_TRACING_HEADERS",
                    "x-api-key=s3cret, x-tenant=blue",
                ),
            ]),
            &Overrides::default(),
        )
        .expect("tracing config");
        assert_eq!(
            c.tracing.headers.get("x-tenant").map(String::as_str),
            Some("blue")
        );
        let text = c.redacted_toml();
        assert!(
            !text.contains("s3cret") && text.contains("x-api-key = \"***\""),
            "{text}"
        );
        let exporter = c.tracing.exporter("edge").expect("exporter").expect("on");
        assert!(!format!("{exporter:?}").contains("s3cret"));
        assert!(c.tracing.exporter("edge").is_ok());
        for (vars, field) in [
            (
                vec![("FLEETGATE_TRACING_PROTOCOL", "http/json")],
                "tracing.protocol",
            ),
            (
                vec![("FLEETGATE_TRACING_ENDPOINT", "127.0.0.1:4318")],
                "tracing.endpoint",
            ),
            (
                vec![("FLEETGATE_TRACING_HEADERS", "x-api-key")],
                "FLEETGATE_TRACING_HEADERS",
            ),
            (
                vec![("FLEETGATE_TRACING_HEADERS", "bad name=s3cret")],
                "tracing.headers",
            ),
            (
                vec![("FLEETGATE_TRACING_QUEUE_SIZE", "0")],
                "tracing.queue_size",
            ),
        ] {
            let err = Config::load(None, env(&vars), &Overrides::default())
                .expect_err("refused")
                .to_string();
            assert!(err.contains(field) && !err.contains("s3cret"), "{err}");
        }
        let off = Config::load(None, env(&[]), &Overrides::default()).expect("defaults");
        assert!(off
            .tracing
            .exporter("serve")
            .expect("no endpoint")
            .is_none());
    }

    #[test]
    fn redacts_secrets() {
        let c = Config {
            database: DatabaseSection {
                url: Some("postgres://u:hunter2@h/db".into()),
                max_connections: 8,
            },
            ..Default::default()
        };
        let text = c.redacted_toml();
        assert!(!text.contains("hunter2"));
        assert!(text.contains("u:***@h"));
        let mut c = Config::default();
        c.nats.url = Some("nats://s3cr3t-token@nats:4222".into());
        let text = c.redacted_toml();
        assert!(!text.contains("s3cr3t"), "{text}");
        assert!(text.contains("nats://***@nats:4222"), "{text}");
        let mut c = Config::default();
        c.edge.token = Some("reg-t0ken".into());
        assert!(!c.redacted_toml().contains("reg-t0ken"));
    }

    #[test]
    fn edge_settings_from_env_and_flags() {
        let c = Config::load(
            None,
            env(&[
                ("FLEETGATE_EDGE_MANAGER_URL", "wss://m:3443"),
                ("FLEETGATE_EDGE_TOKEN", "t"),
            ]),
            &Overrides {
                edge_manager_fingerprint: Some("ab".repeat(32)),
                ..Overrides::default()
            },
        )
        .expect("edge");
        assert_eq!(c.edge.manager_url.as_deref(), Some("wss://m:3443"));
        assert_eq!(c.edge.token.as_deref(), Some("t"));
        let plain = Config::load(
            None,
            env(&[("FLEETGATE_EDGE_MANAGER_URL", "ws://m:3443")]),
            &Overrides::default(),
        );
        assert!(plain.is_err());
        let both = Config::load(
            None,
            env(&[
                ("FLEETGATE_EDGE_MANAGER_URL", "wss://m:3443"),
                ("FLEETGATE_EDGE_INSECURE_SKIP_VERIFY", "true"),
            ]),
            &Overrides {
                edge_manager_fingerprint: Some("ab".repeat(32)),
                ..Overrides::default()
            },
        );
        assert!(both.is_err());
    }
}
