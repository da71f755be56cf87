//! Runtime settings kept in the store and changed through `/api/v1/settings`.
//!
//! Listen addresses and database URLs are start-up configuration (the TOML file);
//! everything here can change while Fleetgate runs and is part of every revision.

use serde::{Deserialize, Serialize};

use crate::ValidationError;

/// All runtime settings. Missing sections and fields take their defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub general: GeneralSettings,
    pub security: SecuritySettings,
    pub api: ApiSettings,
    pub audit: AuditSettings,
    pub webhooks: WebhookSettings,
    pub redirects: RedirectSettings,
    pub events: EventSettings,
    pub metrics: MetricSettings,
    pub tracing: TracingSettings,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields, default)]
pub struct GeneralSettings {
    /// Shown in the dashboard title and in exported documents' context;
    /// 1 to 100 characters without control characters.
    #[cfg_attr(
        feature = "openapi",
        schema(
            min_length = 1,
            max_length = 100,
            pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
        )
    )]
    pub instance_name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields, default)]
pub struct SecuritySettings {
    /// Lifetime of a browser session, in seconds (300 s to 30 days).
    #[cfg_attr(feature = "openapi", schema(minimum = 300, maximum = 2_592_000))]
    pub session_ttl_secs: u64,
    /// Failed logins allowed per client IP within `login_window_secs` (1 to 100).
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 100))]
    pub login_max_failures: u32,
    /// Window of the login limit, in seconds (10 to 3600).
    #[cfg_attr(feature = "openapi", schema(minimum = 10, maximum = 3600))]
    pub login_window_secs: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields, default)]
pub struct ApiSettings {
    /// Requests per minute per API key or session on `/api/*` (the agent sync API
    /// under `/api/namespace/` has its own limit); 0 turns the limit off.
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 1_000_000))]
    pub rate_limit_per_minute: u32,
    /// Requests per minute per signed-in dashboard session: the dashboard's own
    /// pages (live views, detail pages in several tabs) need more than an
    /// automation key; 0 turns the limit off for sessions.
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 1_000_000))]
    pub session_rate_limit_per_minute: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields, default)]
pub struct AuditSettings {
    /// Days an audit entry is kept (1 to 3650).
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 3650))]
    pub retention_days: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields, default)]
pub struct WebhookSettings {
    /// Allow webhook destinations on loopback and private addresses.
    pub allow_private_targets: bool,
    /// Attempts per delivery, the first included (1 to 10; default 4: three retries).
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 10))]
    pub max_attempts: u32,
    /// Delay before the first retry, in ms; doubled for each next one, with jitter
    /// (10 to 600000; default 1000).
    #[cfg_attr(feature = "openapi", schema(minimum = 10, maximum = 600_000))]
    pub retry_base_ms: u64,
    /// A webhook is disabled after this many failed attempts in a row (1 to 1000;
    /// default 20).
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 1000))]
    pub disable_after_failures: u32,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self {
            allow_private_targets: false,
            max_attempts: 4,
            retry_base_ms: 1000,
            disable_after_failures: 20,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields, default)]
pub struct RedirectSettings {
    /// Largest page body, in bytes (1 to 16777216; default 1 MiB).
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 16_777_216))]
    pub page_size_limit_bytes: u64,
    /// An agent that has not checked in for this long is stale, in seconds
    /// (60 to 2592000; default 6 hours).
    #[cfg_attr(feature = "openapi", schema(minimum = 60, maximum = 2_592_000))]
    pub agent_stale_after_secs: u64,
    /// The request header agents send their token in (default `Authorization`).
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 64))]
    pub agent_auth_header: String,
    /// Requests per minute per agent token on the agent sync API
    /// (`/api/namespace/…`), counted apart from the admin API's limit; 0 turns it
    /// off (0 to 1000000; default 600). A token shared by a fleet shares the budget.
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 1_000_000))]
    pub agent_rate_limit_per_minute: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields, default)]
pub struct EventSettings {
    /// Days an event is kept (1 to 3650; default 30).
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 3650))]
    pub retention_days: u32,
    /// Most events kept; the oldest go first (1000 to 10000000; default 100000).
    #[cfg_attr(feature = "openapi", schema(minimum = 1000, maximum = 10_000_000))]
    pub max_events: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields, default)]
pub struct MetricSettings {
    /// Hours the 10-second series are kept (1 to 168; default 24).
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 168))]
    pub raw_retention_hours: u32,
    /// Days the 1-minute series are kept (1 to 90; default 7).
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 90))]
    pub minute_retention_days: u32,
    /// Days the 1-hour series are kept (1 to 3650; default 90).
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 3650))]
    pub hour_retention_days: u32,
    /// Most routes and upstreams with their own series; the busiest are kept
    /// (10 to 10000; default 500).
    #[cfg_attr(feature = "openapi", schema(minimum = 10, maximum = 10_000))]
    pub max_series_scopes: u32,
}

impl Default for MetricSettings {
    fn default() -> Self {
        Self {
            raw_retention_hours: 24,
            minute_retention_days: 7,
            hour_retention_days: 90,
            max_series_scopes: 500,
        }
    }
}

/// Which requests are traced (OpenTelemetry). Where spans are sent is each
/// process's start-up configuration (`[tracing]`: endpoint, protocol, headers);
/// these apply to every gateway and manager of the installation as soon as a
/// revision carries them, without a restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields, default)]
pub struct TracingSettings {
    /// Share of requests that start a new trace, from 0.0 (none) to 1.0 (all;
    /// the default). Decided per trace, so a trace is whole or absent.
    #[cfg_attr(feature = "openapi", schema(minimum = 0.0, maximum = 1.0))]
    pub sample_ratio: f64,
    /// A request whose caller sent a valid W3C `traceparent` follows the
    /// caller's decision (its `sampled` flag) instead of the ratio (default true).
    pub parent_based: bool,
}

// `sample_ratio` is never NaN once validated (and JSON cannot spell one).
impl Eq for TracingSettings {}

impl Default for TracingSettings {
    fn default() -> Self {
        Self {
            sample_ratio: 1.0,
            parent_based: true,
        }
    }
}

impl MetricSettings {
    /// How long rows of a resolution (seconds) are kept, in ms.
    pub fn retention_ms(&self, resolution: i64) -> i64 {
        let hours = match resolution {
            10 => i64::from(self.raw_retention_hours),
            60 => i64::from(self.minute_retention_days) * 24,
            _ => i64::from(self.hour_retention_days) * 24,
        };
        hours * 3_600_000
    }
}

impl Default for EventSettings {
    fn default() -> Self {
        Self {
            retention_days: 30,
            max_events: 100_000,
        }
    }
}

impl Default for RedirectSettings {
    fn default() -> Self {
        Self {
            page_size_limit_bytes: crate::redirects::DEFAULT_PAGE_SIZE_LIMIT as u64,
            agent_stale_after_secs: 6 * 3600,
            agent_auth_header: "Authorization".into(),
            agent_rate_limit_per_minute: 600,
        }
    }
}

impl Default for GeneralSettings {
    fn default() -> Self {
        Self {
            instance_name: "fleetgate".into(),
        }
    }
}

impl Default for SecuritySettings {
    fn default() -> Self {
        Self {
            session_ttl_secs: 12 * 3600,
            login_max_failures: 5,
            login_window_secs: 60,
        }
    }
}

impl Default for ApiSettings {
    fn default() -> Self {
        Self {
            rate_limit_per_minute: 100,
            session_rate_limit_per_minute: 1200,
        }
    }
}

impl Default for AuditSettings {
    fn default() -> Self {
        Self { retention_days: 90 }
    }
}

impl Settings {
    /// Checks every bound; field paths are relative to the settings object.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let mut e = ValidationError::new();
        let name = &self.general.instance_name;
        if name.trim().is_empty() || name.chars().count() > 100 {
            e.push("general.instance_name", "must be 1 to 100 characters");
        } else if name.chars().any(char::is_control) {
            e.push(
                "general.instance_name",
                "must not contain control characters",
            );
        }
        let s = &self.security;
        if !(300..=30 * 86_400).contains(&s.session_ttl_secs) {
            e.push(
                "security.session_ttl_secs",
                "must be between 300 and 2592000",
            );
        }
        if !(1..=100).contains(&s.login_max_failures) {
            e.push("security.login_max_failures", "must be between 1 and 100");
        }
        if !(10..=3600).contains(&s.login_window_secs) {
            e.push("security.login_window_secs", "must be between 10 and 3600");
        }
        if self.api.rate_limit_per_minute > 1_000_000 {
            e.push(
                "api.rate_limit_per_minute",
                "must be at most 1000000 (0 turns the limit off)",
            );
        }
        if self.api.session_rate_limit_per_minute > 1_000_000 {
            e.push(
                "api.session_rate_limit_per_minute",
                "must be at most 1000000 (0 turns the limit off)",
            );
        }
        if !(1..=3650).contains(&self.audit.retention_days) {
            e.push("audit.retention_days", "must be between 1 and 3650");
        }
        let w = &self.webhooks;
        if !(1..=10).contains(&w.max_attempts) {
            e.push("webhooks.max_attempts", "must be between 1 and 10");
        }
        if !(10..=600_000).contains(&w.retry_base_ms) {
            e.push("webhooks.retry_base_ms", "must be between 10 and 600000");
        }
        if !(1..=1000).contains(&w.disable_after_failures) {
            e.push(
                "webhooks.disable_after_failures",
                "must be between 1 and 1000",
            );
        }
        if !(1..=3650).contains(&self.events.retention_days) {
            e.push("events.retention_days", "must be between 1 and 3650");
        }
        if !(1000..=10_000_000).contains(&self.events.max_events) {
            e.push("events.max_events", "must be between 1000 and 10000000");
        }
        let m = &self.metrics;
        if !(1..=168).contains(&m.raw_retention_hours) {
            e.push("metrics.raw_retention_hours", "must be between 1 and 168");
        }
        if !(1..=90).contains(&m.minute_retention_days) {
            e.push("metrics.minute_retention_days", "must be between 1 and 90");
        }
        if !(1..=3650).contains(&m.hour_retention_days) {
            e.push("metrics.hour_retention_days", "must be between 1 and 3650");
        }
        if !(10..=10_000).contains(&m.max_series_scopes) {
            e.push("metrics.max_series_scopes", "must be between 10 and 10000");
        }
        let r = &self.redirects;
        if !(1..=16_777_216).contains(&r.page_size_limit_bytes) {
            e.push(
                "redirects.page_size_limit_bytes",
                "must be between 1 and 16777216",
            );
        }
        if !(60..=2_592_000).contains(&r.agent_stale_after_secs) {
            e.push(
                "redirects.agent_stale_after_secs",
                "must be between 60 and 2592000",
            );
        }
        if r.agent_auth_header.is_empty()
            || r.agent_auth_header.len() > 64
            || http::HeaderName::from_bytes(r.agent_auth_header.as_bytes()).is_err()
        {
            e.push(
                "redirects.agent_auth_header",
                "must be a valid HTTP header name of at most 64 characters",
            );
        }
        if r.agent_rate_limit_per_minute > 1_000_000 {
            e.push(
                "redirects.agent_rate_limit_per_minute",
                "must be at most 1000000 (0 turns the limit off)",
            );
        }
        if !(0.0..=1.0).contains(&self.tracing.sample_ratio) {
            e.push(
                "tracing.sample_ratio",
                "must be a number between 0.0 and 1.0",
            );
        }
        e.into_result()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert_eq!(Settings::default().validate(), Ok(()));
    }

    #[test]
    fn partial_documents_take_defaults() {
        let s: Settings =
            serde_json::from_str(r#"{"api":{"rate_limit_per_minute":5}}"#).expect("valid settings");
        assert_eq!(s.api.rate_limit_per_minute, 5);
        assert_eq!(s.security, SecuritySettings::default());
    }

    #[test]
    fn names_the_failing_field() {
        let mut s = Settings::default();
        s.security.login_window_secs = 1;
        s.audit.retention_days = 0;
        let err = s.validate().expect_err("invalid");
        assert_eq!(err.first_field(), Some("security.login_window_secs"));
        assert_eq!(err.errors.len(), 2);
        assert!(serde_json::from_str::<Settings>(r#"{"api":{"nope":1}}"#).is_err());
        let mut s = Settings::default();
        s.tracing.sample_ratio = 1.5;
        let err = s.validate().expect_err("ratio above 1");
        assert_eq!(err.first_field(), Some("tracing.sample_ratio"));
        s.tracing.sample_ratio = f64::NAN;
        assert!(s.validate().is_err());
    }
}
