//! Alert rules and incidents: what a rule watches (a count of matching events in a
//! window, or a metric compared with a threshold for a duration), how its input is
//! validated, and the two state machines that decide when a rule fires and when it
//! clears. No I/O: the manager's evaluator feeds them events, metric values and the
//! clock, and acts on the transitions they return.
//!
//! Firing and clearing:
//! - An **event** rule fires when at least `count` matching events were raised within
//!   the last `window_secs` seconds (checked as matching events arrive, and when the
//!   rule is loaded against the stored events of its window). It clears when no
//!   matching event has been raised for `window_secs` seconds.
//! - A **metric** rule fires when its comparison has held at every evaluation for
//!   `duration_secs` seconds, and clears when it has not held at any evaluation for
//!   `duration_secs` seconds (hysteresis: a single sample either way changes
//!   nothing). A metric without a value (no traffic yet, unknown route) does not hold.
//!
//! Events of the `alert` category (`alert.fired`, `alert.resolved`) never match an
//! event rule, so a rule cannot feed itself.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::events::NewEvent;
use crate::ValidationError;

/// Most matching events an event rule may require.
pub const MAX_COUNT: u32 = 10_000;
/// Longest window of an event rule and longest duration of a metric rule (one day).
pub const MAX_WINDOW_SECS: u64 = 86_400;
/// Longest route id, upstream or node id a rule may name.
pub const MAX_FILTER_LEN: usize = 200;

/// Lifecycle of an incident.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum IncidentStatus {
    Open,
    Acknowledged,
    Resolved,
}

impl IncidentStatus {
    pub const ALL: [IncidentStatus; 3] = [
        IncidentStatus::Open,
        IncidentStatus::Acknowledged,
        IncidentStatus::Resolved,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            IncidentStatus::Open => "open",
            IncidentStatus::Acknowledged => "acknowledged",
            IncidentStatus::Resolved => "resolved",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// Open or acknowledged: an incident someone still has to deal with.
    pub fn is_active(self) -> bool {
        self != IncidentStatus::Resolved
    }

    /// Whether an operator may move an incident from `self` to `to`: open ⇄
    /// acknowledged, either of them → resolved, resolved → open (reopen).
    pub fn may_become(self, to: IncidentStatus) -> bool {
        use IncidentStatus::*;
        matches!(
            (self, to),
            (Open, Acknowledged)
                | (Acknowledged, Open)
                | (Open, Resolved)
                | (Acknowledged, Resolved)
                | (Resolved, Open)
        )
    }
}

/// What a timeline entry of an incident records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum TimelineKind {
    /// A related event.
    Event,
    /// A status change (opened, acknowledged, resolved, reopened).
    Status,
    /// A note written by an operator.
    Note,
}

impl TimelineKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TimelineKind::Event => "event",
            TimelineKind::Status => "status",
            TimelineKind::Note => "note",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Event, Self::Status, Self::Note]
            .into_iter()
            .find(|v| v.as_str() == s)
    }
}

/// The metrics a metric rule can watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum MetricName {
    /// Share of responses that are 5xx, as a fraction (0.0 to 1.0).
    ErrorRate,
    RequestsPerSecond,
    LatencyP50Ms,
    LatencyP95Ms,
    LatencyP99Ms,
    RateLimitedPerSecond,
    /// Share of upstream attempts that failed, as a fraction (0.0 to 1.0).
    UpstreamFailureRate,
}

impl MetricName {
    pub const ALL: [MetricName; 7] = [
        MetricName::ErrorRate,
        MetricName::RequestsPerSecond,
        MetricName::LatencyP50Ms,
        MetricName::LatencyP95Ms,
        MetricName::LatencyP99Ms,
        MetricName::RateLimitedPerSecond,
        MetricName::UpstreamFailureRate,
    ];

    /// The name the manager's metric reader is asked for.
    pub fn as_str(self) -> &'static str {
        match self {
            MetricName::ErrorRate => "error_rate",
            MetricName::RequestsPerSecond => "requests_per_second",
            MetricName::LatencyP50Ms => "latency_p50_ms",
            MetricName::LatencyP95Ms => "latency_p95_ms",
            MetricName::LatencyP99Ms => "latency_p99_ms",
            MetricName::RateLimitedPerSecond => "rate_limited_per_second",
            MetricName::UpstreamFailureRate => "upstream_failure_rate",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

/// How a metric is compared with the threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum CompareOp {
    #[serde(rename = ">")]
    Gt,
    #[serde(rename = ">=")]
    Ge,
    #[serde(rename = "<")]
    Lt,
    #[serde(rename = "<=")]
    Le,
}

impl CompareOp {
    pub fn as_str(self) -> &'static str {
        match self {
            CompareOp::Gt => ">",
            CompareOp::Ge => ">=",
            CompareOp::Lt => "<",
            CompareOp::Le => "<=",
        }
    }

    pub fn holds(self, value: f64, threshold: f64) -> bool {
        match self {
            CompareOp::Gt => value > threshold,
            CompareOp::Ge => value >= threshold,
            CompareOp::Lt => value < threshold,
            CompareOp::Le => value <= threshold,
        }
    }
}

/// The `kind` of an event condition: always `event`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Event,
}

/// The `kind` of a metric condition: always `metric`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum MetricKind {
    Metric,
}

/// Which events an event rule counts besides their type; all given fields must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct EventRuleFilter {
    /// Only events of this route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 200))]
    pub route_id: Option<String>,
    /// Only events of this upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 200))]
    pub upstream: Option<String>,
    /// Only events of this node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 200))]
    pub node_id: Option<String>,
}

/// Fires when at least `count` matching events were raised within `window_secs`;
/// clears when no matching event has been raised for `window_secs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct EventCondition {
    pub kind: EventKind,
    /// An event type (`circuit_breaker.opened`) or a prefix pattern
    /// (`circuit_breaker.*`, `*`); `alert.*` events never match.
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 100))]
    pub event_type: String,
    /// Matching events needed within the window (1 to 10000).
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 10000))]
    pub count: u32,
    /// The window, in seconds (1 to 86400).
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 86400))]
    pub window_secs: u64,
    #[serde(default)]
    pub filter: EventRuleFilter,
}

/// Fires when `metric op threshold` has held for `duration_secs`; clears when it
/// has not held for `duration_secs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct MetricCondition {
    pub kind: MetricKind,
    pub metric: MetricName,
    /// Only this route's series (none: the whole gateway).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 200))]
    pub route: Option<String>,
    /// Only this upstream's series (none: the whole gateway).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 200))]
    pub upstream: Option<String>,
    pub op: CompareOp,
    /// Non-negative; rates are fractions (0.05 is 5%), latencies milliseconds.
    #[cfg_attr(feature = "openapi", schema(minimum = 0))]
    pub threshold: f64,
    /// How long the comparison must hold before firing, and must not hold before
    /// clearing, in seconds (0 to 86400; 0 acts on the first evaluation).
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 86400))]
    pub duration_secs: u64,
}

/// What an alert rule watches, told apart by `kind`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(untagged)]
pub enum AlertCondition {
    Event(EventCondition),
    Metric(MetricCondition),
}

/// Whether `p` is `*`, an event type, or a prefix ending in `.*`.
pub fn valid_type_pattern(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 100
        && p.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'*')
        })
        && (p == "*" || !p.contains('*') || (p.ends_with(".*") && p.matches('*').count() == 1))
        && !p.starts_with('.')
        && !p.contains("..")
        && (p.ends_with(".*") || !p.ends_with('.'))
}

fn check_name(e: &mut ValidationError, field: &str, v: &Option<String>) {
    if let Some(v) = v {
        if v.is_empty() || v.chars().count() > MAX_FILTER_LEN {
            e.push(field, "must be 1 to 200 characters");
        } else if v.chars().any(char::is_control) {
            e.push(field, "must not contain control characters");
        }
    }
}

impl AlertCondition {
    /// Checks every bound; field paths are relative to the condition.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let mut e = ValidationError::new();
        match self {
            AlertCondition::Event(c) => {
                if !valid_type_pattern(&c.event_type) {
                    e.push(
                        "event_type",
                        "must be *, an event type such as circuit_breaker.opened, or a prefix such as proxy.*",
                    );
                } else if c.event_type == "alert" || c.event_type.starts_with("alert.") {
                    e.push(
                        "event_type",
                        "alert.* events are raised by rules and cannot trigger one",
                    );
                }
                if !(1..=MAX_COUNT).contains(&c.count) {
                    e.push("count", "must be between 1 and 10000");
                }
                if !(1..=MAX_WINDOW_SECS).contains(&c.window_secs) {
                    e.push("window_secs", "must be between 1 and 86400");
                }
                check_name(&mut e, "filter.route_id", &c.filter.route_id);
                check_name(&mut e, "filter.upstream", &c.filter.upstream);
                check_name(&mut e, "filter.node_id", &c.filter.node_id);
            }
            AlertCondition::Metric(c) => {
                if !c.threshold.is_finite() || c.threshold < 0.0 {
                    e.push("threshold", "must be a non-negative number");
                }
                if c.duration_secs > MAX_WINDOW_SECS {
                    e.push("duration_secs", "must be between 0 and 86400");
                }
                check_name(&mut e, "route", &c.route);
                check_name(&mut e, "upstream", &c.upstream);
            }
        }
        e.into_result()
    }

    /// One line for incident titles and event messages.
    pub fn describe(&self) -> String {
        match self {
            AlertCondition::Event(c) => {
                let mut s = format!("{} × {} within {} s", c.count, c.event_type, c.window_secs);
                for (k, v) in [
                    ("route", &c.filter.route_id),
                    ("upstream", &c.filter.upstream),
                    ("node", &c.filter.node_id),
                ] {
                    if let Some(v) = v {
                        s.push_str(&format!(", {k} {v}"));
                    }
                }
                s
            }
            AlertCondition::Metric(c) => {
                let mut s = c.metric.as_str().to_string();
                if let Some(r) = &c.route {
                    s.push_str(&format!(" of route {r}"));
                }
                if let Some(u) = &c.upstream {
                    s.push_str(&format!(" of upstream {u}"));
                }
                s.push_str(&format!(
                    " {} {} for {} s",
                    c.op.as_str(),
                    c.threshold,
                    c.duration_secs
                ));
                s
            }
        }
    }
}

impl EventCondition {
    /// Whether a stored event counts for this condition.
    pub fn matches(&self, e: &NewEvent) -> bool {
        e.category != "alert"
            && crate::events::type_matches(&self.event_type, &e.event_type)
            && same(&self.filter.route_id, &e.route_id)
            && same(&self.filter.upstream, &e.upstream)
            && same(&self.filter.node_id, &e.node_id)
    }
}

fn same(want: &Option<String>, got: &Option<String>) -> bool {
    want.as_ref().is_none_or(|w| got.as_deref() == Some(w))
}

/// What a state machine asks its evaluator to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Nothing changes.
    Stay,
    /// The rule fires: open an incident.
    Fire,
    /// The rule clears: resolve its incident.
    Clear,
}

/// The state of an event rule: the newest matching events (at most `count` of
/// them, as `(event id, created_at ms)`), the time of the newest, and whether it fires.
#[derive(Debug, Clone)]
pub struct EventWindow {
    count: usize,
    window_ms: i64,
    recent: VecDeque<(i64, i64)>,
    last_match_at: Option<i64>,
    firing: bool,
}

impl EventWindow {
    /// `firing` is whether the rule has an active incident (after a restart).
    pub fn new(c: &EventCondition, firing: bool) -> Self {
        Self {
            count: c.count.max(1) as usize,
            window_ms: c.window_secs as i64 * 1000,
            recent: VecDeque::new(),
            last_match_at: None,
            firing,
        }
    }

    pub fn is_firing(&self) -> bool {
        self.firing
    }

    /// Remembers a matching event raised earlier (loaded from the store when the rule
    /// is loaded); [`EventWindow::evaluate`] then tells whether they make it fire.
    pub fn remember(&mut self, id: i64, at: i64) {
        self.push(id, at);
    }

    /// Fires if enough remembered events fall within the window at `now` (a rule
    /// created or reloaded after the events that satisfy it were raised).
    pub fn evaluate(&mut self, now: i64) -> Transition {
        if self.firing {
            return Transition::Stay;
        }
        let since = now - self.window_ms;
        if self.recent.iter().filter(|(_, t)| *t > since).count() >= self.count {
            self.firing = true;
            Transition::Fire
        } else {
            Transition::Stay
        }
    }

    /// Adds an event; `false` when it was already counted (seen live and loaded).
    fn push(&mut self, id: i64, at: i64) -> bool {
        if self.recent.iter().any(|(i, _)| *i == id) {
            return false;
        }
        self.recent.push_back((id, at));
        while self.recent.len() > self.count {
            self.recent.pop_front();
        }
        self.last_match_at = Some(self.last_match_at.map_or(at, |t| t.max(at)));
        true
    }

    /// A matching event arrived at `now`. An event already counted changes nothing.
    pub fn observe(&mut self, id: i64, at: i64, now: i64) -> Transition {
        if !self.push(id, at) {
            return Transition::Stay;
        }
        self.evaluate(now)
    }

    /// The clock moved to `now`: a firing rule clears after a window without events.
    pub fn tick(&mut self, now: i64) -> Transition {
        if self.firing && self.last_match_at.is_none_or(|t| now - t >= self.window_ms) {
            self.firing = false;
            self.recent.clear();
            Transition::Clear
        } else {
            Transition::Stay
        }
    }

    /// Ids of the events within the window at `now`: those that made the rule fire.
    pub fn triggering(&self, now: i64) -> Vec<i64> {
        let since = now - self.window_ms;
        self.recent
            .iter()
            .filter(|(_, t)| *t > since)
            .map(|(id, _)| *id)
            .collect()
    }

    /// The newest matching event's time.
    pub fn last_match_at(&self) -> Option<i64> {
        self.last_match_at
    }
}

/// Where a metric rule stands between evaluations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldState {
    Inactive,
    /// Has held since this time; fires once it has held for the duration.
    Pending(i64),
    Firing,
    /// Firing, but has not held since this time; clears after the duration.
    Clearing(i64),
}

/// The state of a metric rule: fire after holding for `duration`, clear after not
/// holding for `duration`.
#[derive(Debug, Clone)]
pub struct MetricHold {
    duration_ms: i64,
    state: HoldState,
}

impl MetricHold {
    pub fn new(c: &MetricCondition, firing: bool) -> Self {
        Self {
            duration_ms: c.duration_secs as i64 * 1000,
            state: if firing {
                HoldState::Firing
            } else {
                HoldState::Inactive
            },
        }
    }

    pub fn state(&self) -> HoldState {
        self.state
    }

    pub fn is_firing(&self) -> bool {
        matches!(self.state, HoldState::Firing | HoldState::Clearing(_))
    }

    /// One evaluation at `now`: whether the comparison held.
    pub fn observe(&mut self, holds: bool, now: i64) -> Transition {
        use HoldState::*;
        let (next, t) = match (self.state, holds) {
            (Inactive, true) | (Pending(_), true) => {
                let since = match self.state {
                    Pending(s) => s,
                    _ => now,
                };
                if now - since >= self.duration_ms {
                    (Firing, Transition::Fire)
                } else {
                    (Pending(since), Transition::Stay)
                }
            }
            (Inactive, false) | (Pending(_), false) => (Inactive, Transition::Stay),
            (Firing, true) | (Clearing(_), true) => (Firing, Transition::Stay),
            (Firing, false) | (Clearing(_), false) => {
                let since = match self.state {
                    Clearing(s) => s,
                    _ => now,
                };
                if now - since >= self.duration_ms {
                    (Inactive, Transition::Clear)
                } else {
                    (Clearing(since), Transition::Stay)
                }
            }
        };
        self.state = next;
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Severity;

    fn event_cond(count: u32, window_secs: u64) -> EventCondition {
        EventCondition {
            kind: EventKind::Event,
            event_type: "auth.login_failed".into(),
            count,
            window_secs,
            filter: EventRuleFilter::default(),
        }
    }

    fn metric_cond(duration_secs: u64) -> MetricCondition {
        MetricCondition {
            kind: MetricKind::Metric,
            metric: MetricName::ErrorRate,
            route: Some("r1".into()),
            upstream: None,
            op: CompareOp::Gt,
            threshold: 0.05,
            duration_secs,
        }
    }

    #[test]
    fn event_rules_fire_on_the_nth_event_within_the_window_and_clear_after_a_quiet_window() {
        let mut w = EventWindow::new(&event_cond(3, 10), false);
        assert_eq!(w.observe(1, 0, 0), Transition::Stay);
        assert_eq!(w.observe(2, 4_000, 4_000), Transition::Stay);
        // The first one has left the window by the time the third arrives.
        assert_eq!(w.observe(3, 10_500, 10_500), Transition::Stay);
        assert_eq!(w.observe(4, 11_000, 11_000), Transition::Fire);
        assert_eq!(w.triggering(11_000), vec![2, 3, 4]);
        // While firing, more events keep it firing and never fire again.
        assert_eq!(w.observe(5, 15_000, 15_000), Transition::Stay);
        assert_eq!(w.tick(24_999), Transition::Stay);
        assert_eq!(w.tick(25_000), Transition::Clear);
        assert!(!w.is_firing());
        assert_eq!(w.tick(99_000), Transition::Stay);
        // After clearing, it takes `count` fresh events to fire again.
        assert_eq!(w.observe(6, 99_000, 99_000), Transition::Stay);
    }

    #[test]
    fn a_count_of_one_fires_on_every_first_event() {
        let mut w = EventWindow::new(&event_cond(1, 1), false);
        assert_eq!(w.observe(7, 100, 100), Transition::Fire);
        assert_eq!(w.tick(1_100), Transition::Clear);
        assert_eq!(w.observe(8, 2_000, 2_000), Transition::Fire);
    }

    #[test]
    fn remembered_events_count_once_and_an_idle_restarted_rule_clears() {
        let mut w = EventWindow::new(&event_cond(2, 60), false);
        w.remember(1, 1_000);
        assert_eq!(w.evaluate(2_000), Transition::Stay);
        assert_eq!(w.tick(2_000), Transition::Stay);
        // The same event seen live after it was loaded counts once.
        assert_eq!(w.observe(1, 1_000, 2_000), Transition::Stay);
        assert_eq!(w.observe(2, 2_000, 2_000), Transition::Fire);
        // Restarted with an active incident but no matching event in the window.
        let mut w = EventWindow::new(&event_cond(2, 60), true);
        assert_eq!(w.tick(5_000), Transition::Clear);
        let mut w = EventWindow::new(&event_cond(2, 60), true);
        w.remember(9, 4_000);
        w.remember(10, 4_500);
        assert_eq!(w.evaluate(5_000), Transition::Stay, "already firing");
        assert_eq!(w.tick(5_000), Transition::Stay);
        assert_eq!(w.tick(64_500), Transition::Clear);
        // Events that satisfy a rule loaded after them fire it at load.
        let mut w = EventWindow::new(&event_cond(2, 60), false);
        w.remember(1, 1_000);
        w.remember(2, 2_000);
        assert_eq!(
            w.evaluate(61_000),
            Transition::Stay,
            "the first left the window"
        );
        assert_eq!(w.evaluate(3_000), Transition::Fire);
    }

    #[test]
    fn metric_rules_need_the_duration_both_ways() {
        let mut m = MetricHold::new(&metric_cond(5), false);
        assert_eq!(m.observe(true, 0), Transition::Stay);
        assert_eq!(m.observe(true, 4_000), Transition::Stay);
        // One sample below resets the pending time.
        assert_eq!(m.observe(false, 4_500), Transition::Stay);
        assert_eq!(m.observe(true, 5_000), Transition::Stay);
        assert_eq!(m.observe(true, 9_999), Transition::Stay);
        assert_eq!(m.observe(true, 10_000), Transition::Fire);
        assert!(m.is_firing());
        assert_eq!(m.observe(false, 11_000), Transition::Stay);
        // Holding again while clearing keeps it firing without firing again.
        assert_eq!(m.observe(true, 12_000), Transition::Stay);
        assert_eq!(m.state(), HoldState::Firing);
        assert_eq!(m.observe(false, 13_000), Transition::Stay);
        assert_eq!(m.observe(false, 17_999), Transition::Stay);
        assert_eq!(m.observe(false, 18_000), Transition::Clear);
        assert_eq!(m.state(), HoldState::Inactive);
        // A duration of 0 acts on the first evaluation.
        let mut m = MetricHold::new(&metric_cond(0), false);
        assert_eq!(m.observe(true, 1), Transition::Fire);
        assert_eq!(m.observe(false, 2), Transition::Clear);
        // Restarted while firing.
        let mut m = MetricHold::new(&metric_cond(3), true);
        assert_eq!(m.observe(true, 0), Transition::Stay);
        assert_eq!(m.observe(false, 1_000), Transition::Stay);
        assert_eq!(m.observe(false, 4_000), Transition::Clear);
    }

    #[test]
    fn comparisons() {
        assert!(CompareOp::Gt.holds(2.0, 1.0) && !CompareOp::Gt.holds(1.0, 1.0));
        assert!(CompareOp::Ge.holds(1.0, 1.0));
        assert!(CompareOp::Lt.holds(0.5, 1.0) && !CompareOp::Lt.holds(1.0, 1.0));
        assert!(CompareOp::Le.holds(1.0, 1.0));
    }

    #[test]
    fn validation_names_the_field() {
        let field = |c: AlertCondition| {
            c.validate()
                .expect_err("invalid")
                .first_field()
                .map(str::to_string)
        };
        let mut c = event_cond(0, 10);
        assert_eq!(
            field(AlertCondition::Event(c.clone())).as_deref(),
            Some("count")
        );
        c.count = 1;
        c.event_type = "proxy.**".into();
        assert_eq!(
            field(AlertCondition::Event(c.clone())).as_deref(),
            Some("event_type")
        );
        c.event_type = "alert.fired".into();
        assert_eq!(
            field(AlertCondition::Event(c.clone())).as_deref(),
            Some("event_type")
        );
        c.event_type = "proxy.*".into();
        c.window_secs = 0;
        assert_eq!(
            field(AlertCondition::Event(c.clone())).as_deref(),
            Some("window_secs")
        );
        c.window_secs = 5;
        c.filter.route_id = Some(String::new());
        assert_eq!(
            field(AlertCondition::Event(c.clone())).as_deref(),
            Some("filter.route_id")
        );
        c.filter.route_id = Some("r1".into());
        assert!(AlertCondition::Event(c).validate().is_ok());
        let mut m = metric_cond(10);
        m.threshold = -1.0;
        assert_eq!(
            field(AlertCondition::Metric(m.clone())).as_deref(),
            Some("threshold")
        );
        m.threshold = 1.0;
        m.duration_secs = 86_401;
        assert_eq!(
            field(AlertCondition::Metric(m.clone())).as_deref(),
            Some("duration_secs")
        );
        m.duration_secs = 0;
        assert!(AlertCondition::Metric(m).validate().is_ok());
        for ok in ["*", "proxy.*", "circuit_breaker.opened", "a.b.*"] {
            assert!(valid_type_pattern(ok), "{ok}");
        }
        for bad in ["", "Proxy.*", "proxy*", "*.x", ".x", "a..b", "a.", "a b"] {
            assert!(!valid_type_pattern(bad), "{bad}");
        }
    }

    #[test]
    fn event_matching_uses_type_patterns_and_filters_and_skips_alerts() {
        let mut c = event_cond(1, 10);
        c.event_type = "circuit_breaker.*".into();
        c.filter.upstream = Some("api".into());
        let e = NewEvent::new("circuit_breaker.opened", Severity::Critical, "m").upstream("api");
        assert!(c.matches(&e));
        let other = NewEvent::new("circuit_breaker.opened", Severity::Critical, "m").upstream("b");
        assert!(!c.matches(&other));
        c.event_type = "*".into();
        c.filter.upstream = None;
        assert!(!c.matches(&NewEvent::new("alert.fired", Severity::Critical, "m")));
    }

    #[test]
    fn conditions_round_trip_through_json_by_kind() {
        let e = AlertCondition::Event(event_cond(3, 60));
        let text = serde_json::to_string(&e).expect("json");
        assert!(text.contains("\"kind\":\"event\""), "{text}");
        assert_eq!(
            serde_json::from_str::<AlertCondition>(&text).expect("back"),
            e
        );
        let m = AlertCondition::Metric(metric_cond(30));
        let text = serde_json::to_string(&m).expect("json");
        assert!(text.contains("\"op\":\">\""), "{text}");
        assert_eq!(
            serde_json::from_str::<AlertCondition>(&text).expect("back"),
            m
        );
    }
}
