//! Events: what the gateway and the manager tell operators about (a breaker that
//! opened, a target that went down, a rejected configuration, a failed login), with a
//! severity and a category, stored, acknowledged, streamed and sent to webhooks.
//!
//! Producers call [`emit`] with the [`EventSink`] they were given (the manager's, which
//! stores and streams events): the event is logged (target `fleetgate::events`) and
//! handed over. Emitting never blocks and never fails.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// How urgent an event is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub const ALL: [Severity; 3] = [Severity::Info, Severity::Warning, Severity::Critical];

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

/// An event as produced, before the store gives it an id.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NewEvent {
    /// `circuit_breaker.opened`, `rate_limit.exceeded`, `health.target_down`, …
    pub event_type: String,
    pub severity: Severity,
    /// The part of the type before its first dot (`circuit_breaker`).
    pub category: String,
    pub message: String,
    pub details: Value,
    /// `manager`, `gateway` or a node id.
    pub source: String,
    pub route_id: Option<String>,
    pub upstream: Option<String>,
    pub node_id: Option<String>,
    pub flow_id: Option<String>,
    /// Unix milliseconds.
    pub created_at: i64,
}

impl NewEvent {
    pub fn new(event_type: &str, severity: Severity, message: impl Into<String>) -> Self {
        Self {
            event_type: event_type.to_string(),
            severity,
            category: category_of(event_type).to_string(),
            message: message.into(),
            details: Value::Object(Default::default()),
            source: "gateway".into(),
            route_id: None,
            upstream: None,
            node_id: None,
            flow_id: None,
            created_at: crate::time::now_ms(),
        }
    }

    pub fn source(mut self, s: &str) -> Self {
        self.source = s.into();
        self
    }

    pub fn details(mut self, d: Value) -> Self {
        self.details = d;
        self
    }

    pub fn route(mut self, id: &str) -> Self {
        self.route_id = Some(id.into());
        self
    }

    pub fn upstream(mut self, name: &str) -> Self {
        self.upstream = Some(name.into());
        self
    }

    pub fn node(mut self, id: &str) -> Self {
        self.node_id = Some(id.into());
        self
    }
}

/// The category of an event type: the text before its first dot.
pub fn category_of(event_type: &str) -> &str {
    event_type.split('.').next().unwrap_or(event_type)
}

/// Whether `event_type` matches a webhook or filter pattern: `*`, an exact type, or a
/// prefix ending in `.*` (`circuit_breaker.*`).
pub fn type_matches(pattern: &str, event_type: &str) -> bool {
    match pattern.strip_suffix(".*") {
        _ if pattern == "*" => true,
        Some(prefix) => event_type
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('.')),
        None => pattern == event_type,
    }
}

/// Where emitted events go besides the log.
pub trait EventSink: Send + Sync + std::fmt::Debug {
    /// Takes one event; must not block.
    fn emit(&self, event: NewEvent);
}

/// Logs `event` (target `fleetgate::events`) and hands it to `sink`, if any.
pub fn emit(sink: Option<&Arc<dyn EventSink>>, event: NewEvent) {
    match event.severity {
        Severity::Info => {
            tracing::info!(target: "fleetgate::events", event = %event.event_type, details = %event.details, "{}", event.message)
        }
        Severity::Warning => {
            tracing::warn!(target: "fleetgate::events", event = %event.event_type, details = %event.details, "{}", event.message)
        }
        Severity::Critical => {
            tracing::error!(target: "fleetgate::events", event = %event.event_type, details = %event.details, "{}", event.message)
        }
    }
    if let Some(sink) = sink {
        sink.emit(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categories_and_patterns() {
        assert_eq!(category_of("circuit_breaker.opened"), "circuit_breaker");
        assert_eq!(category_of("plain"), "plain");
        assert!(type_matches("*", "anything.at_all"));
        assert!(type_matches("circuit_breaker.*", "circuit_breaker.opened"));
        assert!(!type_matches(
            "circuit_breaker.*",
            "circuit_breakers.opened"
        ));
        assert!(!type_matches("circuit_breaker.*", "circuit_breaker"));
        assert!(type_matches("health.target_down", "health.target_down"));
        assert!(!type_matches("health.target_down", "health.target_up"));
        let e = NewEvent::new("rate_limit.exceeded", Severity::Warning, "m").route("r1");
        assert_eq!(
            (e.category.as_str(), e.route_id.as_deref()),
            ("rate_limit", Some("r1"))
        );
        assert_eq!(Severity::parse("critical"), Some(Severity::Critical));
        assert!(Severity::Critical > Severity::Warning);
    }
}
