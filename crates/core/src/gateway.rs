//! Gateway configuration: upstreams (pools of targets with balancing, health
//! checks, circuit breaker, timeouts, retries) and routes (host + path + method
//! matching to an upstream, with rate limits, header rules, CORS and IP rules).
//!
//! Inputs accept FlexGate's camelCase spellings (`stripPath`, `rateLimit.windowMs`)
//! as aliases; output is always snake_case.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ValidationError;

/// A pool of targets that routes send traffic to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// 1–64 characters of `[A-Za-z0-9_.-]`.
    pub name: String,
    pub targets: Vec<Target>,
    #[serde(default, alias = "loadBalancing")]
    pub load_balancing: LoadBalancing,
    /// Key of `consistent_hash`: `ip`, `header:<name>` or `cookie:<name>`.
    #[serde(default = "default_hash_on", alias = "hashOn")]
    pub hash_on: String,
    #[serde(default, alias = "healthCheck")]
    pub health_check: HealthCheck,
    #[serde(default, alias = "circuitBreaker")]
    pub circuit_breaker: BreakerConfig,
    #[serde(default)]
    pub timeouts: Timeouts,
    #[serde(default)]
    pub retries: Retries,
    #[serde(default)]
    pub tls: UpstreamTls,
}

fn default_hash_on() -> String {
    "ip".into()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// `http://host:port` or `https://host:port` (an optional path prefix is kept).
    pub url: String,
    /// Relative share of traffic for `weighted` (1–1000; 0 drains the target).
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum LoadBalancing {
    #[default]
    #[serde(alias = "round-robin", alias = "roundRobin")]
    RoundRobin,
    #[serde(alias = "least-connections", alias = "leastConnections")]
    LeastConnections,
    Weighted,
    #[serde(alias = "consistent-hash", alias = "consistentHash")]
    ConsistentHash,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields, default)]
pub struct HealthCheck {
    /// Probes sent to every target on a schedule.
    pub active: Option<ActiveCheck>,
    /// Ejection of targets that fail real traffic.
    pub passive: Option<PassiveCheck>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields, default)]
pub struct ActiveCheck {
    pub path: String,
    #[serde(alias = "intervalMs")]
    pub interval_ms: u64,
    #[serde(alias = "timeoutMs")]
    pub timeout_ms: u64,
    #[serde(alias = "healthyThreshold")]
    pub healthy_threshold: u32,
    #[serde(alias = "unhealthyThreshold")]
    pub unhealthy_threshold: u32,
    #[serde(alias = "expectedStatuses")]
    pub expected_statuses: Vec<u16>,
}

impl Default for ActiveCheck {
    fn default() -> Self {
        Self {
            path: "/health".into(),
            interval_ms: 5_000,
            timeout_ms: 2_000,
            healthy_threshold: 2,
            unhealthy_threshold: 3,
            expected_statuses: vec![200],
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields, default)]
pub struct PassiveCheck {
    /// Consecutive failures (connect errors, 5xx, timeouts) that eject a target.
    #[serde(alias = "maxFailures")]
    pub max_failures: u32,
    /// How long an ejected target gets no traffic.
    #[serde(alias = "ejectMs")]
    pub eject_ms: u64,
}

impl Default for PassiveCheck {
    fn default() -> Self {
        Self {
            max_failures: 5,
            eject_ms: 30_000,
        }
    }
}

/// Circuit breaker thresholds (defaults: FlexGate's 50% of ≥10 requests in 10 s,
/// open 30 s, 3 half-open trials).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    pub enabled: bool,
    /// Percentage of failed requests in the window that opens the breaker.
    #[serde(alias = "failureThreshold", alias = "failure_threshold")]
    pub failure_rate_percent: u32,
    /// Requests the window must hold before the rate counts.
    #[serde(alias = "minimumRequests", alias = "volumeThreshold")]
    pub min_requests: u32,
    #[serde(alias = "windowMs")]
    pub window_ms: u64,
    /// How long the breaker stays open before trial requests.
    #[serde(alias = "openMs", alias = "timeout")]
    pub open_ms: u64,
    /// Trial requests let through while half-open.
    #[serde(alias = "halfOpenRequests")]
    pub half_open_requests: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            failure_rate_percent: 50,
            min_requests: 10,
            window_ms: 10_000,
            open_ms: 30_000,
            half_open_requests: 3,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    #[serde(alias = "connectMs")]
    pub connect_ms: u64,
    /// Until the upstream's response headers arrive.
    #[serde(alias = "requestMs")]
    pub request_ms: u64,
    /// Idle keep-alive connections to the upstream are closed after this.
    #[serde(alias = "idleMs")]
    pub idle_ms: u64,
    /// The longest pause between two reads of an upstream's response body (nginx's
    /// `proxy_read_timeout`); a stalled upstream is cut and so is its client.
    #[serde(alias = "readMs")]
    pub read_ms: u64,
    /// The longest a write may stall: request body bytes to the upstream, response
    /// bytes to a client that stopped reading (nginx's `proxy_send_timeout` and
    /// `send_timeout`). Both connections of the exchange are then closed.
    #[serde(alias = "sendMs")]
    pub send_ms: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect_ms: 5_000,
            request_ms: 30_000,
            idle_ms: 60_000,
            read_ms: 60_000,
            send_ms: 60_000,
        }
    }
}

/// When a failed attempt is retried on another target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(untagged)]
pub enum RetryOn {
    /// `connect_error`, `timeout`.
    Condition(RetryCondition),
    /// A response status such as 502.
    Status(u16),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum RetryCondition {
    ConnectError,
    Timeout,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields, default)]
pub struct Retries {
    /// Extra attempts after the first (0 to 5).
    pub attempts: u32,
    pub on: Vec<RetryOn>,
    /// Retries may add at most this percentage on top of the requests (1 to 100).
    #[serde(alias = "budgetPercent")]
    pub budget_percent: u32,
}

impl Default for Retries {
    fn default() -> Self {
        Self {
            attempts: 1,
            on: vec![
                RetryOn::Condition(RetryCondition::ConnectError),
                RetryOn::Status(502),
                RetryOn::Status(503),
                RetryOn::Status(504),
            ],
            budget_percent: 20,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamTls {
    /// Verify the upstream's certificate.
    pub verify: bool,
    /// Server name to send; defaults to the target's host.
    pub sni: Option<String>,
    /// Extra CA certificates (PEM) to trust.
    pub ca_pem: Option<String>,
}

impl Default for UpstreamTls {
    fn default() -> Self {
        Self {
            verify: true,
            sni: None,
            ca_pem: None,
        }
    }
}

/// How a route's `path` is compared with the request path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum PathMatch {
    /// The path or any path below it, on segment boundaries (`/api` matches `/api/x`, not `/apix`).
    #[default]
    Prefix,
    Exact,
    /// A regular expression matched against the path.
    Regex,
}

/// A route: which requests go to which upstream, and what happens on the way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// 1–64 characters of `[A-Za-z0-9_.-]`.
    pub id: String,
    pub path: String,
    /// An upstream's name, or a URL for a one-target upstream; empty (left
    /// out) on an `ai` route, which relays to its AI provider instead.
    #[serde(default)]
    pub upstream: String,
    /// Allowed methods; empty allows all.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Remove the matched prefix before forwarding.
    #[serde(default, alias = "stripPath")]
    pub strip_path: bool,
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default, alias = "rateLimit")]
    pub rate_limit: Option<RouteRateLimit>,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub tags: Vec<String>,
    /// Host names (`api.example.com`, `*.example.com`); empty matches any host.
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default, rename = "match", alias = "match_type", alias = "matchType")]
    pub match_type: PathMatch,
    /// Among equally specific matches, higher wins.
    #[serde(default)]
    pub priority: i32,
    #[serde(default, alias = "requestHeaders")]
    pub request_headers: HeaderRules,
    #[serde(default, alias = "responseHeaders")]
    pub response_headers: HeaderRules,
    #[serde(default)]
    pub cors: Option<Cors>,
    #[serde(default, alias = "ipAllow")]
    pub ip_allow: Vec<String>,
    #[serde(default, alias = "ipDeny")]
    pub ip_deny: Vec<String>,
    #[serde(default, alias = "maxBodyBytes")]
    pub max_body_bytes: Option<u64>,
    /// Allow WebSocket upgrades through this route.
    #[serde(default = "yes")]
    pub websocket: bool,
    /// Other protocols a client may switch to through this route (`Upgrade`
    /// tokens such as `h2c`). A request asking for any other upgrade is forwarded
    /// as a plain request, without its `Upgrade`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upgrades: Vec<String>,
    /// Answer plain-HTTP requests with a redirect to HTTPS.
    #[serde(default, alias = "httpsRedirect")]
    pub https_redirect: bool,
    /// Makes the route an AI gateway route: OpenAI-compatible requests relayed
    /// to an AI provider, metered and held to budgets (see [`crate::ai_gateway`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ai: Option<crate::ai_gateway::AiRoute>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RouteRateLimit {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Requests allowed per window.
    pub max: u32,
    #[serde(alias = "windowMs")]
    pub window_ms: u64,
    /// Body of the 429 response.
    #[serde(default = "default_limit_message")]
    pub message: String,
    /// Whom the limit counts: `ip`, `api_key` or `header:<name>`.
    #[serde(default = "default_hash_on")]
    pub key: String,
}

fn default_limit_message() -> String {
    "Too many requests, please try again later.".into()
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields, default)]
pub struct HeaderRules {
    /// Headers set (replacing any value).
    pub set: BTreeMap<String, String>,
    /// Headers removed.
    pub remove: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields, default)]
pub struct Cors {
    /// Origins allowed (`*` for any).
    #[serde(alias = "allowOrigins", alias = "origins")]
    pub allow_origins: Vec<String>,
    #[serde(alias = "allowMethods")]
    pub allow_methods: Vec<String>,
    #[serde(alias = "allowHeaders")]
    pub allow_headers: Vec<String>,
    #[serde(alias = "exposeHeaders")]
    pub expose_headers: Vec<String>,
    #[serde(alias = "allowCredentials", alias = "credentials")]
    pub allow_credentials: bool,
    #[serde(alias = "maxAgeSecs", alias = "maxAge")]
    pub max_age_secs: u64,
}

impl Default for Cors {
    fn default() -> Self {
        Self {
            allow_origins: vec!["*".into()],
            allow_methods: vec!["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
                .into_iter()
                .map(String::from)
                .collect(),
            allow_headers: vec!["*".into()],
            expose_headers: Vec::new(),
            allow_credentials: false,
            max_age_secs: 600,
        }
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// Whether `s` is an HTTP header name (an RFC 9110 token).
pub fn valid_header_name(s: &str) -> bool {
    http::HeaderName::from_bytes(s.as_bytes()).is_ok()
}

/// Whether `s` is a host pattern: a DNS name, optionally starting with `*.`, or an IP.
pub fn valid_host(s: &str) -> bool {
    let name = s.strip_prefix("*.").unwrap_or(s);
    if name.parse::<std::net::IpAddr>().is_ok() {
        return !s.starts_with("*.");
    }
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// An upstream URL: `http(s)://host[:port][/prefix]`, no query or fragment.
pub fn parse_target_url(s: &str) -> Result<http::Uri, String> {
    let uri: http::Uri = s.parse().map_err(|e| format!("not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => return Err("must start with http:// or https://".into()),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err("must name a host".into());
    }
    if uri.query().is_some() {
        return Err("must not have a query".into());
    }
    Ok(uri)
}

const METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT",
];

impl Upstream {
    /// A pool of one target with every other setting at its default.
    pub fn single(name: String, url: String) -> Self {
        Self {
            name,
            targets: vec![Target { url, weight: 1 }],
            load_balancing: LoadBalancing::default(),
            hash_on: default_hash_on(),
            health_check: HealthCheck::default(),
            circuit_breaker: BreakerConfig::default(),
            timeouts: Timeouts::default(),
            retries: Retries::default(),
            tls: UpstreamTls::default(),
        }
    }

    pub fn validate(&self) -> Result<(), ValidationError> {
        let mut e = ValidationError::new();
        if !valid_name(&self.name) {
            e.push(
                "name",
                "must be 1 to 64 characters of letters, digits, _ - .",
            );
        }
        if self.targets.is_empty() {
            e.push("targets", "needs at least one target");
        }
        if self.targets.len() > 1000 {
            e.push("targets", "at most 1000 targets");
        }
        for (i, t) in self.targets.iter().enumerate() {
            if let Err(m) = parse_target_url(&t.url) {
                e.push(format!("targets[{i}].url"), m);
            }
            if t.weight > 1000 {
                e.push(format!("targets[{i}].weight"), "must be between 0 and 1000");
            }
        }
        if !self.targets.is_empty() && self.targets.iter().all(|t| t.weight == 0) {
            e.push("targets", "at least one target needs a weight above 0");
        }
        validate_key(
            "hash_on",
            &self.hash_on,
            &["ip"],
            &["header:", "cookie:"],
            &mut e,
        );
        if let Some(a) = &self.health_check.active {
            if !a.path.starts_with('/') {
                e.push("health_check.active.path", "must start with /");
            }
            if !(100..=3_600_000).contains(&a.interval_ms) {
                e.push(
                    "health_check.active.interval_ms",
                    "must be between 100 and 3600000",
                );
            }
            if a.timeout_ms == 0 || a.timeout_ms > 60_000 {
                e.push(
                    "health_check.active.timeout_ms",
                    "must be between 1 and 60000",
                );
            }
            if !(1..=100).contains(&a.healthy_threshold) {
                e.push(
                    "health_check.active.healthy_threshold",
                    "must be between 1 and 100",
                );
            }
            if !(1..=100).contains(&a.unhealthy_threshold) {
                e.push(
                    "health_check.active.unhealthy_threshold",
                    "must be between 1 and 100",
                );
            }
            if a.expected_statuses.is_empty()
                || a.expected_statuses.iter().any(|s| !(100..=599).contains(s))
            {
                e.push(
                    "health_check.active.expected_statuses",
                    "must list HTTP statuses (100 to 599)",
                );
            }
        }
        if let Some(p) = &self.health_check.passive {
            if !(1..=1000).contains(&p.max_failures) {
                e.push(
                    "health_check.passive.max_failures",
                    "must be between 1 and 1000",
                );
            }
            if !(100..=3_600_000).contains(&p.eject_ms) {
                e.push(
                    "health_check.passive.eject_ms",
                    "must be between 100 and 3600000",
                );
            }
        }
        let b = &self.circuit_breaker;
        if !(1..=100).contains(&b.failure_rate_percent) {
            e.push(
                "circuit_breaker.failure_rate_percent",
                "must be between 1 and 100",
            );
        }
        if !(1..=1_000_000).contains(&b.min_requests) {
            e.push(
                "circuit_breaker.min_requests",
                "must be between 1 and 1000000",
            );
        }
        if !(100..=3_600_000).contains(&b.window_ms) {
            e.push(
                "circuit_breaker.window_ms",
                "must be between 100 and 3600000",
            );
        }
        if !(100..=86_400_000).contains(&b.open_ms) {
            e.push(
                "circuit_breaker.open_ms",
                "must be between 100 and 86400000",
            );
        }
        if !(1..=1000).contains(&b.half_open_requests) {
            e.push(
                "circuit_breaker.half_open_requests",
                "must be between 1 and 1000",
            );
        }
        let t = &self.timeouts;
        for (field, v, max) in [
            ("timeouts.connect_ms", t.connect_ms, 600_000),
            ("timeouts.request_ms", t.request_ms, 86_400_000),
            ("timeouts.idle_ms", t.idle_ms, 86_400_000),
            ("timeouts.read_ms", t.read_ms, 86_400_000),
            ("timeouts.send_ms", t.send_ms, 86_400_000),
        ] {
            if v == 0 || v > max {
                e.push(field, format!("must be between 1 and {max}"));
            }
        }
        if self.retries.attempts > 5 {
            e.push("retries.attempts", "must be between 0 and 5");
        }
        if !(1..=100).contains(&self.retries.budget_percent) {
            e.push("retries.budget_percent", "must be between 1 and 100");
        }
        for (i, on) in self.retries.on.iter().enumerate() {
            if let RetryOn::Status(s) = on {
                if !(500..=599).contains(s) && *s != 429 {
                    e.push(
                        format!("retries.on[{i}]"),
                        "statuses retried must be 429 or 5xx",
                    );
                }
            }
        }
        if let Some(sni) = &self.tls.sni {
            if !valid_host(sni) {
                e.push("tls.sni", "must be a host name");
            }
        }
        if let Some(pem) = &self.tls.ca_pem {
            if !pem.contains("-----BEGIN CERTIFICATE-----") {
                e.push("tls.ca_pem", "must be PEM certificates");
            }
        }
        e.into_result()
    }
}

fn validate_key(field: &str, v: &str, exact: &[&str], prefixed: &[&str], e: &mut ValidationError) {
    if exact.contains(&v) {
        return;
    }
    for p in prefixed {
        if let Some(name) = v.strip_prefix(p) {
            if valid_header_name(name) {
                return;
            }
        }
    }
    let mut forms: Vec<String> = exact.iter().map(|s| s.to_string()).collect();
    forms.extend(prefixed.iter().map(|p| format!("{p}<name>")));
    e.push(field, format!("must be one of {}", forms.join(", ")));
}

impl Route {
    /// Checks the route on its own; references to upstreams are checked by the document.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let mut e = ValidationError::new();
        if !valid_name(&self.id) {
            e.push("id", "must be 1 to 64 characters of letters, digits, _ - .");
        }
        match self.match_type {
            PathMatch::Regex => {
                if self.path.is_empty() || self.path.len() > 1024 {
                    e.push("path", "must be 1 to 1024 characters");
                } else if let Err(err) = regex::RegexBuilder::new(&self.path)
                    .size_limit(1 << 20)
                    .build()
                {
                    e.push("path", format!("invalid regular expression: {err}"));
                }
                if self.strip_path {
                    e.push("strip_path", "cannot strip a regular expression match");
                }
            }
            PathMatch::Prefix | PathMatch::Exact => {
                if !self.path.starts_with('/') || self.path.len() > 1024 {
                    e.push("path", "must start with / and be at most 1024 characters");
                } else if let Some(canonical) = crate::request_target::normalize_path(&self.path)
                    .ok()
                    .filter(|c| *c != self.path.as_str())
                {
                    // Requests are routed on their canonical path: another form
                    // of the same path would never match.
                    e.push(
                        "path",
                        format!("must be in canonical form ({canonical:?}): requests are matched after '.', '..', '//' and encoded unreserved characters are resolved"),
                    );
                } else if crate::request_target::normalize_path(&self.path).is_err() {
                    e.push(
                        "path",
                        "must not contain '..' above '/', an encoded '/', '\\' or NUL, or a bad %-escape",
                    );
                } else if self
                    .path
                    .chars()
                    .any(|c| c.is_control() || c.is_whitespace() || c == '?' || c == '#')
                {
                    e.push(
                        "path",
                        "must not contain spaces, control characters, ? or #",
                    );
                }
            }
        }
        if let Some(ai) = &self.ai {
            if !self.upstream.is_empty() {
                e.push(
                    "upstream",
                    "must be left out on an ai route (it relays to its AI provider)",
                );
            }
            if let Err(err) = ai.validate() {
                e.extend_prefixed("ai", err);
            }
        } else if self.upstream.contains("://") {
            if let Err(m) = parse_target_url(&self.upstream) {
                e.push("upstream", m);
            }
        } else if !valid_name(&self.upstream) {
            e.push("upstream", "must be an upstream name or an http(s) URL");
        }
        for (i, m) in self.methods.iter().enumerate() {
            if !METHODS.contains(&m.to_ascii_uppercase().as_str()) {
                e.push(format!("methods[{i}]"), format!("unknown method {m:?}"));
            }
        }
        for (i, u) in self.upgrades.iter().enumerate() {
            if !valid_header_name(u) || u.len() > 64 {
                e.push(
                    format!("upgrades[{i}]"),
                    "must be a protocol token such as h2c (at most 64 characters)",
                );
            }
        }
        for (i, h) in self.hosts.iter().enumerate() {
            if !valid_host(&h.to_ascii_lowercase()) {
                e.push(
                    format!("hosts[{i}]"),
                    "must be a host name, *.domain or an IP address",
                );
            }
        }
        if let Some(rl) = &self.rate_limit {
            if rl.max == 0 || rl.max > 100_000_000 {
                e.push("rate_limit.max", "must be between 1 and 100000000");
            }
            if !(100..=86_400_000).contains(&rl.window_ms) {
                e.push("rate_limit.window_ms", "must be between 100 and 86400000");
            }
            if rl.message.len() > 4096 {
                e.push("rate_limit.message", "must be at most 4096 bytes");
            }
            validate_key(
                "rate_limit.key",
                &rl.key,
                &["ip", "api_key"],
                &["header:"],
                &mut e,
            );
        }
        for (prefix, rules) in [
            ("request_headers", &self.request_headers),
            ("response_headers", &self.response_headers),
        ] {
            for (name, value) in &rules.set {
                if !valid_header_name(name) {
                    e.push(format!("{prefix}.set.{name}"), "is not a valid header name");
                } else if http::HeaderValue::from_str(value).is_err() {
                    e.push(
                        format!("{prefix}.set.{name}"),
                        "is not a valid header value",
                    );
                }
            }
            for (i, name) in rules.remove.iter().enumerate() {
                if !valid_header_name(name) {
                    e.push(
                        format!("{prefix}.remove[{i}]"),
                        "is not a valid header name",
                    );
                }
            }
        }
        for (field, list) in [("ip_allow", &self.ip_allow), ("ip_deny", &self.ip_deny)] {
            for (i, cidr) in list.iter().enumerate() {
                if parse_cidr(cidr).is_none() {
                    e.push(
                        format!("{field}[{i}]"),
                        format!("{cidr:?} is not an IP address or CIDR block"),
                    );
                }
            }
        }
        if let Some(cors) = &self.cors {
            for (i, m) in cors.allow_methods.iter().enumerate() {
                if !METHODS.contains(&m.to_ascii_uppercase().as_str()) {
                    e.push(
                        format!("cors.allow_methods[{i}]"),
                        format!("unknown method {m:?}"),
                    );
                }
            }
            if cors.allow_credentials && cors.allow_origins.iter().any(|o| o == "*") {
                e.push(
                    "cors.allow_origins",
                    "\"*\" cannot be combined with allow_credentials",
                );
            }
        }
        if self.description.len() > 1024 {
            e.push("description", "must be at most 1024 bytes");
        }
        if self.tags.len() > 64 || self.tags.iter().any(|t| t.is_empty() || t.len() > 64) {
            e.push("tags", "at most 64 tags of 1 to 64 characters");
        }
        e.into_result()
    }

    /// What makes two routes indistinguishable for the router.
    pub fn match_key(&self) -> (Vec<String>, PathMatch, String, Vec<String>) {
        let mut hosts: Vec<String> = self.hosts.iter().map(|h| h.to_ascii_lowercase()).collect();
        hosts.sort();
        hosts.dedup();
        let mut methods: Vec<String> = self
            .methods
            .iter()
            .map(|m| m.to_ascii_uppercase())
            .collect();
        methods.sort();
        methods.dedup();
        (hosts, self.match_type, self.path.clone(), methods)
    }
}

/// An address or a CIDR block (`10.0.0.0/8`, `::1`).
pub fn parse_cidr(s: &str) -> Option<ipnet::IpNet> {
    if let Ok(net) = s.parse::<ipnet::IpNet>() {
        return Some(net.trunc());
    }
    s.parse::<std::net::IpAddr>().ok().map(ipnet::IpNet::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn route(v: serde_json::Value) -> Route {
        serde_json::from_value(v).expect("route parses")
    }

    #[test]
    fn accepts_flexgate_spellings() {
        let r = route(json!({
            "id": "users", "path": "/api/users", "upstream": "http://localhost:9000",
            "stripPath": true, "rateLimit": {"max": 100, "windowMs": 60000}, "methods": ["GET"]
        }));
        assert!(r.strip_path);
        assert_eq!(r.rate_limit.as_ref().expect("limit").window_ms, 60_000);
        assert_eq!(r.rate_limit.as_ref().expect("limit").key, "ip");
        assert!(r.enabled && r.websocket);
        assert_eq!(r.validate(), Ok(()));
        let out = serde_json::to_value(&r).expect("serialize");
        assert_eq!(out["strip_path"], true);
        assert_eq!(out["match"], "prefix");
    }

    #[test]
    fn names_bad_fields() {
        let r = route(json!({
            "id": "bad id", "path": "(", "match": "regex", "upstream": "ftp://x",
            "ip_allow": ["10.0.0.0/33", "1.2.3.4"], "methods": ["FETCH"], "hosts": ["*.ok.com", "bad host"],
            "request_headers": {"set": {"bad header": "v"}}
        }));
        let err = r.validate().expect_err("invalid");
        let fields: Vec<&str> = err.errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "id",
                "path",
                "upstream",
                "methods[0]",
                "hosts[1]",
                "request_headers.set.bad header",
                "ip_allow[0]"
            ]
        );
    }

    #[test]
    fn upstream_defaults_follow_flexgate() {
        let u: Upstream = serde_json::from_value(
            json!({"name": "api", "targets": [{"url": "http://127.0.0.1:9000"}]}),
        )
        .expect("parses");
        assert_eq!(u.validate(), Ok(()));
        assert_eq!(u.circuit_breaker.failure_rate_percent, 50);
        assert_eq!(u.circuit_breaker.min_requests, 10);
        assert_eq!(u.circuit_breaker.window_ms, 10_000);
        assert_eq!(u.circuit_breaker.open_ms, 30_000);
        assert_eq!(u.circuit_breaker.half_open_requests, 3);
        let bad: Upstream =
            serde_json::from_value(json!({"name": "api", "targets": [], "hash_on": "body"}))
                .expect("parses");
        let err = bad.validate().expect_err("invalid");
        assert_eq!(err.errors[0].field, "targets");
        assert_eq!(err.errors[1].field, "hash_on");
        let retry: Upstream = serde_json::from_value(json!({"name": "a", "targets": [{"url": "http://h"}], "retries": {"on": ["connect_error", 502, "timeout"]}})).expect("parses");
        assert_eq!(
            retry.retries.on[2],
            RetryOn::Condition(RetryCondition::Timeout)
        );
    }

    #[test]
    fn hosts_and_cidrs() {
        assert!(valid_host("api.example.com"));
        assert!(valid_host("*.example.com"));
        assert!(valid_host("127.0.0.1"));
        assert!(!valid_host("*.127.0.0.1"));
        assert!(!valid_host("a..b"));
        assert!(parse_cidr("10.1.2.3/8")
            .expect("cidr")
            .contains(&"10.200.0.1".parse::<std::net::IpAddr>().expect("ip")));
        assert!(parse_cidr("::1").is_some());
        assert!(parse_cidr("300.1.1.1").is_none());
    }
}

/// Health of one upstream target as the data plane sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TargetHealth {
    pub url: String,
    /// `healthy`, `unhealthy` (active checks) or `ejected` (passive ejection).
    pub state: String,
    /// RFC 3339 time of the last active check, if any ran.
    pub last_check: Option<String>,
    /// Consecutive failures counted against the target.
    pub consecutive_failures: u32,
    pub active_connections: u64,
    pub last_error: Option<String>,
}

/// A circuit breaker's state as the data plane sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BreakerStatus {
    pub upstream: String,
    /// `closed`, `open` or `half_open`.
    pub state: String,
    /// Failed share of the requests in the current window, 0 to 1; for an open or
    /// half-open breaker, of the window that opened it.
    pub failure_rate: f64,
    pub requests_in_window: u64,
    pub opened_at: Option<String>,
    /// When an open breaker lets trial requests through.
    pub next_trial_at: Option<String>,
}
