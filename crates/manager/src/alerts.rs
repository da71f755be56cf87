//! The alert evaluator: a background task of every manager that turns alert rules
//! into incidents.
//!
//! - **Event rules** are fed the live events of the [`EventHub`](crate::events::EventHub)
//!   (stored events, with their ids) and fire once `count` of them fall in their window;
//!   they clear once no matching event has been raised for their window.
//! - **Metric rules** are evaluated every second against the [`MetricReader`] the
//!   process installs in [`Inner::metric_reader`](crate::Inner::metric_reader), by
//!   default the live traffic snapshot of this process's data plane
//!   ([`crate::traffic`]); without a value a metric condition does not hold.
//!
//! When a rule fires the evaluator opens an incident (timeline: the opening status and
//! the events that triggered it) and emits `alert.fired` with the rule's severity;
//! while it fires, further matching events are linked to the incident (up to
//! [`MAX_LINKED`]); when it clears, the incident is resolved with a timeline entry and
//! `alert.resolved` (info) is emitted.
//!
//! Several managers may evaluate the same rules against one store: the store admits
//! one active incident per rule, so the first manager opens it and the others adopt
//! it; resolving and linking events are idempotent. Only the manager whose write took
//! effect emits `alert.fired` / `alert.resolved`.
//!
//! State survives a restart: rules are reloaded from the store (every second, so
//! changes through any manager apply), a rule with an active incident starts firing,
//! and event rules recount the matching events of their window from the store (and
//! fire at once if those already reach the count: events raised between a rule's
//! creation and its first load are not lost).
//!
//! An operator who resolves an incident while its rule still fires silences the rule
//! until it clears; the next firing opens a new incident. A disabled or deleted rule
//! stops being evaluated; its active incident stays until an operator resolves it.
//!
//! Event rules see the events of this manager's hub. With several managers and no
//! shared event bus, each counts the events raised through it (the store still keeps
//! one incident per rule); once the hub carries the events of every manager (NATS),
//! every manager counts them all.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use fleetgate_core::alerts::{AlertCondition, EventWindow, IncidentStatus, MetricHold, Transition};
use fleetgate_core::events::{EventSink, NewEvent, Severity};
use fleetgate_core::time::now_ms;
use fleetgate_store::{
    Actor, AlertRuleRecord, EventFilter, EventRecord, IncidentRecord, NewTimelineEntry,
    PageRequest, Store, StoreError,
};
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::watch;

/// Current metric values, as the metrics snapshot of this process knows them.
///
/// `metric` is one of [`MetricName::as_str`](fleetgate_core::alerts::MetricName::as_str):
/// `error_rate` and `upstream_failure_rate` (fractions, 0.0 to 1.0),
/// `requests_per_second`, `rate_limited_per_second`, `latency_p50_ms`,
/// `latency_p95_ms`, `latency_p99_ms`. `route` and `upstream` narrow the series to
/// one route id or upstream name; with neither, the value is the whole gateway's.
/// `None` means no value (no traffic yet, unknown route): the condition does not hold.
///
/// Called once per metric rule per second from the evaluator task: must not block.
pub trait MetricReader: Send + Sync {
    fn value(&self, metric: &str, route: Option<&str>, upstream: Option<&str>) -> Option<f64>;

    /// Whether the state an event announced still holds now: `Some(true)` while
    /// the breaker of the upstream a `circuit_breaker.opened` reported is not
    /// closed. `None` when this reader cannot tell (another event type, no data
    /// plane in this process).
    fn still_holds(&self, _event_type: &str, _upstream: Option<&str>) -> Option<bool> {
        None
    }
}

/// How often rules are reloaded, metric rules evaluated and quiet event rules cleared.
pub const TICK: Duration = Duration::from_secs(1);
/// Events linked to one incident automatically at most (those that triggered it
/// and those that arrive while its rule fires); operators may link more.
pub const MAX_LINKED: usize = 100;
/// Stored events scanned per event rule when its window is recounted.
const RECOUNT_SCAN: i64 = 10_000;
const RECOUNT_PAGE: i64 = 500;

/// A matching event as the timeline keeps it.
#[derive(Debug, Clone)]
struct Seen {
    id: i64,
    at: i64,
    event_type: String,
    message: String,
    route: Option<String>,
    upstream: Option<String>,
    node: Option<String>,
}

impl Seen {
    fn of(r: &EventRecord) -> Self {
        Seen {
            id: r.id,
            at: r.event.created_at,
            event_type: r.event.event_type.clone(),
            message: r.event.message.clone(),
            route: r.event.route_id.clone(),
            upstream: r.event.upstream.clone(),
            node: r.event.node_id.clone(),
        }
    }

    /// What the event is about: `upstream shop`, `route api`, `node edge-1`.
    fn subject(&self) -> Option<String> {
        if let Some(u) = &self.upstream {
            Some(format!("upstream {u}"))
        } else if let Some(r) = &self.route {
            Some(format!("route {r}"))
        } else {
            self.node.as_ref().map(|n| format!("node {n}"))
        }
    }
}

/// An incident's title: the rule's name and what fired it, naming the routes,
/// upstreams or nodes of the events that did (`Breakers: circuit_breaker.opened
/// on upstream shop`), not only the condition.
fn incident_title(rule: &AlertRuleRecord, what: &str, trigger: &[Seen]) -> String {
    let mut types: Vec<&str> = Vec::new();
    let mut subjects: Vec<String> = Vec::new();
    for s in trigger {
        if !types.contains(&s.event_type.as_str()) {
            types.push(&s.event_type);
        }
        if let Some(x) = s.subject() {
            if !subjects.contains(&x) {
                subjects.push(x);
            }
        }
    }
    if subjects.is_empty() {
        return cut(&format!("{}: {what}", rule.name), 200);
    }
    let shown = subjects
        .iter()
        .take(3)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    let more = match subjects.len() {
        n if n > 3 => format!(" and {} more", n - 3),
        _ => String::new(),
    };
    cut(
        &format!("{}: {} on {shown}{more}", rule.name, types.join(", ")),
        200,
    )
}

enum Eval {
    Event(EventWindow),
    Metric(MetricHold),
}

impl Eval {
    fn is_firing(&self) -> bool {
        match self {
            Eval::Event(w) => w.is_firing(),
            Eval::Metric(m) => m.is_firing(),
        }
    }
}

struct Tracked {
    rule: AlertRuleRecord,
    eval: Eval,
    /// The newest matching events (event rules), for the timeline.
    seen: VecDeque<Seen>,
    /// The incident this rule opened or adopted while it fires.
    incident: Option<String>,
    /// Events linked to that incident by this evaluator.
    linked: usize,
    /// The rule fired but its incident could not be written yet (store error).
    needs_open: bool,
    /// The last metric value read (metric rules).
    last_value: Option<f64>,
    /// An event rule whose window went quiet while the state its events
    /// announced still holds (a breaker still open): its incident stays open
    /// until that state ends.
    deferred: bool,
}

impl Tracked {
    /// The first remembered event whose announced state still holds, per `reader`.
    fn holding(&self, reader: Option<&dyn MetricReader>) -> Option<&Seen> {
        let reader = reader?;
        self.seen
            .iter()
            .rev()
            .find(|s| reader.still_holds(&s.event_type, s.upstream.as_deref()) == Some(true))
    }
}

/// The evaluator's state: every enabled rule with its state machine.
pub struct Evaluator {
    store: Arc<dyn Store>,
    events: Arc<dyn EventSink>,
    rules: BTreeMap<String, Tracked>,
}

fn emit(sink: &Arc<dyn EventSink>, e: NewEvent) {
    fleetgate_core::events::emit(Some(sink), e.source("manager"));
}

fn system() -> Actor {
    Actor::system()
}

/// Text cut to `max` characters.
fn cut(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max - 1).collect();
        t.push('…');
        t
    }
}

impl Evaluator {
    pub fn new(store: Arc<dyn Store>, events: Arc<dyn EventSink>) -> Self {
        Self {
            store,
            events,
            rules: BTreeMap::new(),
        }
    }

    /// Whether the rule with `id` fires, as this evaluator sees it.
    pub fn is_firing(&self, id: &str) -> bool {
        self.rules.get(id).is_some_and(|t| t.eval.is_firing())
    }

    /// Picks up created, changed, disabled and deleted rules. A new or changed rule
    /// starts firing if it has an active incident; event rules recount their window.
    pub async fn reload(&mut self, now: i64) -> Result<(), StoreError> {
        let rules: BTreeMap<String, AlertRuleRecord> = self
            .store
            .all_alert_rules()
            .await?
            .into_iter()
            .filter(|r| r.enabled)
            .map(|r| (r.id.clone(), r))
            .collect();
        self.rules.retain(|id, _| rules.contains_key(id));
        let changed: Vec<AlertRuleRecord> = rules
            .into_values()
            .filter(|r| {
                self.rules
                    .get(&r.id)
                    .is_none_or(|t| t.rule.version != r.version)
            })
            .collect();
        if changed.is_empty() {
            return Ok(());
        }
        let active: BTreeMap<String, IncidentRecord> = self
            .store
            .active_rule_incidents()
            .await?
            .into_iter()
            .filter_map(|i| i.rule_id.clone().map(|r| (r, i)))
            .collect();
        let mut fired = Vec::new();
        for rule in changed {
            let incident = active.get(&rule.id).map(|i| i.id.clone());
            let firing = incident.is_some();
            let mut seen = VecDeque::new();
            let eval = match &rule.condition {
                AlertCondition::Event(c) => {
                    let mut w = EventWindow::new(c, firing);
                    for e in self.recount(c, now).await? {
                        w.remember(e.id, e.at);
                        seen.push_back(e);
                        if seen.len() > MAX_LINKED {
                            seen.pop_front();
                        }
                    }
                    // Events raised before the rule was loaded count too.
                    if w.evaluate(now) == Transition::Fire {
                        fired.push(rule.id.clone());
                    }
                    Eval::Event(w)
                }
                AlertCondition::Metric(c) => Eval::Metric(MetricHold::new(c, firing)),
            };
            self.rules.insert(
                rule.id.clone(),
                Tracked {
                    rule,
                    eval,
                    seen,
                    incident,
                    linked: 0,
                    needs_open: false,
                    last_value: None,
                    deferred: false,
                },
            );
        }
        for id in fired {
            if let Some(t) = self.rules.get_mut(&id) {
                t.needs_open = true;
            }
            self.open(&id, now).await;
        }
        Ok(())
    }

    /// The stored events of the rule's window that match it, oldest first.
    async fn recount(
        &self,
        c: &fleetgate_core::alerts::EventCondition,
        now: i64,
    ) -> Result<Vec<Seen>, StoreError> {
        let filter = EventFilter {
            since: Some(now - c.window_secs as i64 * 1000),
            route_id: c.filter.route_id.clone(),
            upstream: c.filter.upstream.clone(),
            node_id: c.filter.node_id.clone(),
            ..Default::default()
        };
        let keep = (c.count as usize).max(MAX_LINKED);
        let mut found = Vec::new();
        let mut offset = 0;
        while offset < RECOUNT_SCAN && found.len() < keep {
            let page = self
                .store
                .list_events(
                    &filter,
                    PageRequest {
                        limit: RECOUNT_PAGE,
                        offset,
                    },
                )
                .await?;
            let n = page.items.len() as i64;
            found.extend(
                page.items
                    .into_iter()
                    .filter(|r| c.matches(&r.event))
                    .map(|r| Seen::of(&r)),
            );
            if n < RECOUNT_PAGE {
                break;
            }
            offset += n;
        }
        found.truncate(keep);
        found.reverse();
        Ok(found)
    }

    /// A stored event arrived (from the hub) at `now`.
    pub async fn on_event(&mut self, e: &EventRecord, now: i64) {
        let ids: Vec<String> = self
            .rules
            .iter()
            .filter(|(_, t)| matches!(&t.rule.condition, AlertCondition::Event(c) if c.matches(&e.event)))
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            let Some(t) = self.rules.get_mut(&id) else {
                continue;
            };
            let Eval::Event(w) = &mut t.eval else {
                continue;
            };
            let seen = Seen::of(e);
            let was_firing = w.is_firing();
            let transition = w.observe(e.id, e.event.created_at, now);
            if !t.seen.iter().any(|s| s.id == e.id) {
                t.seen.push_back(seen.clone());
                if t.seen.len() > MAX_LINKED {
                    t.seen.pop_front();
                }
            }
            match transition {
                // Quiet but held open: the same incident goes on.
                Transition::Fire if t.deferred => {
                    t.deferred = false;
                    self.link(&id, &seen).await;
                }
                Transition::Fire => {
                    t.needs_open = true;
                    self.open(&id, now).await;
                }
                _ if was_firing || t.deferred => self.link(&id, &seen).await,
                _ => {}
            }
        }
    }

    /// One evaluation at `now`: metric rules read their value, quiet event rules
    /// clear, incidents that could not be written are retried.
    pub async fn tick(&mut self, now: i64, reader: Option<&dyn MetricReader>) {
        let ids: Vec<String> = self.rules.keys().cloned().collect();
        for id in ids {
            let Some(t) = self.rules.get_mut(&id) else {
                continue;
            };
            let transition = match (&mut t.eval, &t.rule.condition) {
                (Eval::Event(w), _) => w.tick(now),
                (Eval::Metric(m), AlertCondition::Metric(c)) => {
                    let value = reader.and_then(|r| {
                        r.value(c.metric.as_str(), c.route.as_deref(), c.upstream.as_deref())
                    });
                    t.last_value = value;
                    let holds = value.is_some_and(|v| c.op.holds(v, c.threshold));
                    m.observe(holds, now)
                }
                (Eval::Metric(_), AlertCondition::Event(_)) => Transition::Stay,
            };
            match transition {
                Transition::Fire if t.deferred => t.deferred = false,
                Transition::Fire => {
                    t.needs_open = true;
                    self.open(&id, now).await;
                }
                Transition::Clear => {
                    let held = t.incident.as_ref().and_then(|_| t.holding(reader)).cloned();
                    match held {
                        // The window is quiet but what its events reported is
                        // not over (the breaker is still open): keep the
                        // incident, and say so on its timeline once.
                        Some(seen) => {
                            t.deferred = true;
                            self.note_held(&id, &seen, now).await;
                        }
                        None => self.clear(&id, now).await,
                    }
                }
                Transition::Stay if t.deferred => {
                    if t.holding(reader).is_none() {
                        t.deferred = false;
                        self.clear(&id, now).await;
                    }
                }
                Transition::Stay if t.needs_open && t.eval.is_firing() => self.open(&id, now).await,
                Transition::Stay => {}
            }
        }
    }

    /// A timeline note on the rule's incident: it stays open while `seen`'s state holds.
    async fn note_held(&mut self, id: &str, seen: &Seen, now: i64) {
        let Some(incident) = self.rules.get(id).and_then(|t| t.incident.clone()) else {
            return;
        };
        let what = match (seen.event_type.as_str(), seen.subject()) {
            ("circuit_breaker.opened", Some(s)) => {
                format!("the circuit breaker of {s} is still open")
            }
            (t, Some(s)) => format!("{t} on {s} still holds"),
            (t, None) => format!("{t} still holds"),
        };
        let entry = NewTimelineEntry::note(
            now,
            format!("no new matching event, but {what}: the incident stays open until it ends"),
            "system",
        );
        if let Err(e) = self
            .store
            .append_incident_timeline(&system(), &incident, &[entry], None)
            .await
        {
            tracing::warn!(error = %e, incident = %incident, "could not note a held incident");
        }
    }

    /// Opens the rule's incident, or adopts the one another manager opened.
    async fn open(&mut self, id: &str, now: i64) {
        let Some(t) = self.rules.get_mut(id) else {
            return;
        };
        let rule = t.rule.clone();
        let what = rule.condition.describe();
        let (trigger, detail): (Vec<Seen>, String) = match &t.eval {
            Eval::Event(w) => {
                let ids = w.triggering(now);
                let trigger: Vec<Seen> = t
                    .seen
                    .iter()
                    .filter(|s| ids.contains(&s.id))
                    .cloned()
                    .collect();
                let detail = format!("{} matching events", ids.len());
                (trigger, detail)
            }
            Eval::Metric(_) => (
                Vec::new(),
                match t.last_value {
                    Some(v) => format!("value {v}"),
                    None => "no value".into(),
                },
            ),
        };
        let incident_id = uuid::Uuid::new_v4().to_string();
        let record = IncidentRecord {
            id: incident_id.clone(),
            title: incident_title(&rule, &what, &trigger),
            status: IncidentStatus::Open,
            severity: rule.severity,
            rule_id: Some(rule.id.clone()),
            created_at: now,
            updated_at: now,
            acknowledged_by: None,
            acknowledged_at: None,
            resolved_by: None,
            resolved_at: None,
            analysis: None,
            version: 1,
        };
        let mut timeline = vec![NewTimelineEntry::status(
            now,
            IncidentStatus::Open,
            format!("alert rule {:?} fired: {what} ({detail})", rule.name),
            "system",
        )];
        timeline.extend(
            trigger.iter().map(|s| {
                NewTimelineEntry::event(s.at, s.id, &s.event_type, s.message.clone(), None)
            }),
        );
        match self
            .store
            .create_incident(&system(), &record, &timeline)
            .await
        {
            Ok(()) => {
                t.incident = Some(incident_id.clone());
                t.linked = trigger.len();
                t.needs_open = false;
                let mut e = NewEvent::new(
                    "alert.fired",
                    rule.severity,
                    format!("alert rule {:?} fired: {what} ({detail})", rule.name),
                )
                .details(json!({
                    "rule_id": rule.id,
                    "rule_name": rule.name,
                    "incident_id": incident_id,
                    "condition": rule.condition,
                    "value": t.last_value.filter(|_| matches!(t.eval, Eval::Metric(_))),
                    "event_ids": trigger.iter().map(|s| s.id).collect::<Vec<_>>(),
                }));
                scope(&mut e, &rule.condition);
                emit(&self.events, e);
            }
            Err(StoreError::Conflict(_)) => {
                // Another manager opened it first: follow that one.
                match self.store.active_incident_of_rule(&rule.id).await {
                    Ok(Some(active)) => {
                        t.incident = Some(active.id.clone());
                        t.needs_open = false;
                        t.linked = 0;
                        let links: Vec<NewTimelineEntry> = timeline.split_off(1);
                        if !links.is_empty() {
                            t.linked = links.len();
                            if let Err(e) = self
                                .store
                                .append_incident_timeline(&system(), &active.id, &links, None)
                                .await
                            {
                                tracing::warn!(error = %e, incident = %active.id, "could not link events to an incident");
                            }
                        }
                    }
                    // Resolved in between: try again at the next tick.
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, rule = %rule.id, "could not read the rule's incident")
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, rule = %rule.id, "could not open an incident; retrying");
            }
        }
    }

    /// Links a matching event to the incident of a firing rule.
    async fn link(&mut self, id: &str, seen: &Seen) {
        let Some(t) = self.rules.get_mut(id) else {
            return;
        };
        let Some(incident) = t.incident.clone() else {
            return;
        };
        if t.linked >= MAX_LINKED {
            return;
        }
        let entry = NewTimelineEntry::event(
            seen.at,
            seen.id,
            &seen.event_type,
            seen.message.clone(),
            None,
        );
        match self
            .store
            .append_incident_timeline(&system(), &incident, &[entry], None)
            .await
        {
            Ok((_, added)) => t.linked += added as usize,
            // Deleted by an operator: nothing to link to until the rule fires again.
            Err(StoreError::NotFound(_)) => t.incident = None,
            Err(e) => {
                tracing::warn!(error = %e, incident = %incident, "could not link an event to an incident")
            }
        }
    }

    /// Resolves the incident of a rule that cleared.
    async fn clear(&mut self, id: &str, now: i64) {
        let Some(t) = self.rules.get_mut(id) else {
            return;
        };
        t.needs_open = false;
        t.seen.clear();
        let Some(incident) = t.incident.take() else {
            return;
        };
        let rule = t.rule.clone();
        let why = match &rule.condition {
            AlertCondition::Event(c) => {
                format!("no {} event for {} s", c.event_type, c.window_secs)
            }
            AlertCondition::Metric(c) => format!(
                "{} {} {} has not held for {} s",
                c.metric.as_str(),
                c.op.as_str(),
                c.threshold,
                c.duration_secs
            ),
        };
        let message = format!("alert rule {:?} cleared: {why}", rule.name);
        match self
            .store
            .resolve_incident(&system(), &incident, now, &message)
            .await
        {
            Ok(Some(_)) => {
                let mut e = NewEvent::new("alert.resolved", Severity::Info, message).details(
                    json!({"rule_id": rule.id, "rule_name": rule.name, "incident_id": incident}),
                );
                scope(&mut e, &rule.condition);
                emit(&self.events, e);
            }
            // Resolved by an operator or another manager already.
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, incident = %incident, "could not resolve an incident")
            }
        }
    }
}

/// Copies the route, upstream and node a condition is about onto an alert event.
fn scope(e: &mut NewEvent, c: &AlertCondition) {
    match c {
        AlertCondition::Event(c) => {
            e.route_id = c.filter.route_id.clone();
            e.upstream = c.filter.upstream.clone();
            e.node_id = c.filter.node_id.clone();
        }
        AlertCondition::Metric(c) => {
            e.route_id = c.route.clone();
            e.upstream = c.upstream.clone();
        }
    }
}

/// Runs the evaluator of this manager until `shutdown`.
pub fn spawn_evaluator(state: crate::AppState, mut shutdown: watch::Receiver<bool>) {
    tokio::spawn(async move {
        // Subscribe before the first load, so no event falls between the two.
        let mut live = state.events.subscribe();
        let mut evaluator = Evaluator::new(state.store.clone(), state.event_sink());
        let snapshot_reader = crate::traffic::SnapshotReader(state.traffic.subscribe());
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                e = live.recv() => match e {
                    Ok(e) => evaluator.on_event(&e, now_ms()).await,
                    Err(RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "the alert evaluator fell behind the live events; event rules may miss some");
                    }
                    Err(RecvError::Closed) => return,
                },
                _ = tick.tick() => {
                    let now = now_ms();
                    if let Err(e) = evaluator.reload(now).await {
                        tracing::warn!(error = %e, "could not load alert rules");
                    }
                    let reader = state.metric_reader.get().cloned();
                    let reader = reader.as_deref().unwrap_or(&snapshot_reader);
                    evaluator.tick(now, Some(reader)).await;
                }
                _ = shutdown.changed() => {
                    if *shutdown.borrow() {
                        return;
                    }
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetgate_core::alerts::{
        CompareOp, EventCondition, EventKind, EventRuleFilter, MetricCondition, MetricKind,
        MetricName,
    };
    use fleetgate_store::{AlertStore, EventStore, SqlStore, StoreOptions};
    use std::sync::Mutex;

    #[derive(Debug, Default)]
    struct Collect(Mutex<Vec<NewEvent>>);

    impl EventSink for Collect {
        fn emit(&self, event: NewEvent) {
            self.0.lock().expect("lock").push(event);
        }
    }

    impl Collect {
        fn types(&self) -> Vec<String> {
            self.0
                .lock()
                .expect("lock")
                .iter()
                .map(|e| e.event_type.clone())
                .collect()
        }
    }

    /// A metric reader whose value the test sets.
    #[derive(Default)]
    struct Fake(Mutex<Option<f64>>);

    impl MetricReader for Fake {
        fn value(&self, metric: &str, route: Option<&str>, upstream: Option<&str>) -> Option<f64> {
            assert_eq!((metric, route, upstream), ("error_rate", Some("r1"), None));
            *self.0.lock().expect("lock")
        }
    }

    async fn store() -> (Arc<SqlStore>, tempfile_dir::Dir) {
        let dir = tempfile_dir::Dir::new();
        let url = format!("sqlite://{}", dir.0.join("t.db").display());
        let s = SqlStore::open_and_migrate(&StoreOptions::new(url))
            .await
            .expect("store");
        (Arc::new(s), dir)
    }

    /// A temporary directory removed on drop (the manager has no tempfile dependency).
    mod tempfile_dir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Self {
                let p =
                    std::env::temp_dir().join(format!("fleetgate-alerts-{}", uuid::Uuid::new_v4()));
                std::fs::create_dir_all(&p).expect("temp dir");
                Dir(p)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    fn rule(id: &str, condition: AlertCondition, now: i64) -> AlertRuleRecord {
        AlertRuleRecord {
            id: id.into(),
            name: format!("rule {id}"),
            description: String::new(),
            enabled: true,
            severity: Severity::Critical,
            condition,
            version: 1,
            created_at: now,
            updated_at: now,
        }
    }

    fn metric_rule(now: i64) -> AlertRuleRecord {
        rule(
            "m1",
            AlertCondition::Metric(MetricCondition {
                kind: MetricKind::Metric,
                metric: MetricName::ErrorRate,
                route: Some("r1".into()),
                upstream: None,
                op: CompareOp::Gt,
                threshold: 0.1,
                duration_secs: 3,
            }),
            now,
        )
    }

    #[tokio::test]
    async fn a_metric_rule_opens_one_incident_and_resolves_it_with_hysteresis() {
        let (s, _dir) = store().await;
        let sink = Arc::new(Collect::default());
        let t0 = now_ms();
        s.create_alert_rule(&Actor::system(), &metric_rule(t0))
            .await
            .expect("rule");
        let mut ev = Evaluator::new(s.clone(), sink.clone());
        ev.reload(t0).await.expect("reload");
        let fake = Fake::default();
        let at = |secs: i64| t0 + secs * 1000;
        // No reader, or no value: the condition does not hold.
        ev.tick(at(0), None).await;
        ev.tick(at(1), Some(&fake)).await;
        *fake.0.lock().expect("lock") = Some(0.5);
        for secs in 2..5 {
            ev.tick(at(secs), Some(&fake)).await;
        }
        assert!(!ev.is_firing("m1"), "has held for 2 s of 3");
        ev.tick(at(5), Some(&fake)).await;
        assert!(ev.is_firing("m1"));
        assert_eq!(sink.types(), vec!["alert.fired"]);
        let fired = sink.0.lock().expect("lock")[0].clone();
        assert_eq!(fired.severity, Severity::Critical);
        assert_eq!(fired.route_id.as_deref(), Some("r1"));
        assert_eq!(fired.details["value"], 0.5);
        let incident = s
            .active_incident_of_rule("m1")
            .await
            .expect("read")
            .expect("open");
        assert_eq!(incident.severity, Severity::Critical);
        assert!(
            incident.title.contains("error_rate of route r1 > 0.1"),
            "{}",
            incident.title
        );
        // Still holding: nothing new. A dip shorter than the duration changes nothing.
        ev.tick(at(6), Some(&fake)).await;
        *fake.0.lock().expect("lock") = Some(0.01);
        ev.tick(at(7), Some(&fake)).await;
        *fake.0.lock().expect("lock") = Some(0.9);
        ev.tick(at(8), Some(&fake)).await;
        assert_eq!(sink.types(), vec!["alert.fired"]);

        // A restart keeps the firing state (the incident is active in the store).
        let mut ev = Evaluator::new(s.clone(), sink.clone());
        ev.reload(at(9)).await.expect("reload");
        assert!(ev.is_firing("m1"));
        *fake.0.lock().expect("lock") = None;
        for secs in 9..12 {
            ev.tick(at(secs), Some(&fake)).await;
        }
        assert!(s
            .active_incident_of_rule("m1")
            .await
            .expect("read")
            .is_some());
        ev.tick(at(12), Some(&fake)).await;
        assert_eq!(sink.types(), vec!["alert.fired", "alert.resolved"]);
        assert!(s
            .active_incident_of_rule("m1")
            .await
            .expect("read")
            .is_none());
        let resolved = s
            .get_incident(&incident.id)
            .await
            .expect("read")
            .expect("kept");
        assert_eq!(resolved.status, IncidentStatus::Resolved);
        let timeline = s.incident_timeline(&incident.id).await.expect("timeline");
        assert_eq!(timeline.len(), 2, "opened and resolved");
        assert!(
            timeline[1].message.contains("has not held for 3 s"),
            "{:?}",
            timeline[1]
        );
    }

    #[tokio::test]
    async fn managers_sharing_a_store_open_one_incident_and_resolve_it_once() {
        let (s, _dir) = store().await;
        let t0 = now_ms();
        s.create_alert_rule(&Actor::system(), &metric_rule(t0))
            .await
            .expect("rule");
        let (sink_a, sink_b) = (Arc::new(Collect::default()), Arc::new(Collect::default()));
        let mut a = Evaluator::new(s.clone(), sink_a.clone());
        let mut b = Evaluator::new(s.clone(), sink_b.clone());
        a.reload(t0).await.expect("a");
        b.reload(t0).await.expect("b");
        let fake = Fake(Mutex::new(Some(1.0)));
        for secs in 0..4 {
            let now = t0 + secs * 1000;
            a.tick(now, Some(&fake)).await;
            b.tick(now, Some(&fake)).await;
        }
        assert!(a.is_firing("m1") && b.is_firing("m1"));
        let all = s
            .list_incidents(
                &Default::default(),
                PageRequest {
                    limit: 10,
                    offset: 0,
                },
            )
            .await
            .expect("list");
        assert_eq!(all.total, 1, "one incident for two managers");
        assert_eq!(
            sink_a.types().len() + sink_b.types().len(),
            1,
            "one alert.fired"
        );
        *fake.0.lock().expect("lock") = Some(0.0);
        for secs in 4..8 {
            let now = t0 + secs * 1000;
            a.tick(now, Some(&fake)).await;
            b.tick(now, Some(&fake)).await;
        }
        let resolved: Vec<String> = sink_a
            .types()
            .into_iter()
            .chain(sink_b.types())
            .filter(|t| t == "alert.resolved")
            .collect();
        assert_eq!(resolved.len(), 1, "one alert.resolved");
    }

    #[tokio::test]
    async fn an_event_rule_counts_events_links_them_and_clears_after_a_quiet_window() {
        let (s, _dir) = store().await;
        let sink = Arc::new(Collect::default());
        let t0 = now_ms();
        s.create_alert_rule(
            &Actor::system(),
            &rule(
                "e1",
                AlertCondition::Event(EventCondition {
                    kind: EventKind::Event,
                    event_type: "proxy.*".into(),
                    count: 3,
                    window_secs: 10,
                    filter: EventRuleFilter {
                        upstream: Some("api".into()),
                        ..Default::default()
                    },
                }),
                t0,
            ),
        )
        .await
        .expect("rule");
        let event = |i: i64, t: &str, up: &str| {
            let mut e = NewEvent::new(t, Severity::Warning, format!("e{i}")).upstream(up);
            e.created_at = t0 + i;
            e
        };
        let first = s
            .insert_events(&[event(0, "proxy.upstream_error", "api")])
            .await
            .expect("first");
        let mut ev = Evaluator::new(s.clone(), sink.clone());
        // Loaded after the first event was stored: it is recounted, and counted once
        // when it also arrives live.
        ev.reload(t0 + 1).await.expect("reload");
        let rest = s
            .insert_events(&[
                event(1, "proxy.upstream_error", "other"),
                event(2, "proxy.upstream_error", "api"),
                event(5, "proxy.timeout", "api"),
            ])
            .await
            .expect("events");
        let stored: Vec<EventRecord> = first.into_iter().chain(rest).collect();
        for e in &stored[..3] {
            ev.on_event(e, t0 + 10).await;
        }
        assert!(!ev.is_firing("e1"), "two matching events of three");
        ev.on_event(&stored[3], t0 + 10).await;
        assert!(ev.is_firing("e1"));
        let incident = s
            .active_incident_of_rule("e1")
            .await
            .expect("read")
            .expect("open");
        let linked: Vec<Option<i64>> = s
            .incident_timeline(&incident.id)
            .await
            .expect("timeline")
            .iter()
            .map(|e| e.event_id)
            .collect();
        assert_eq!(
            linked,
            vec![
                None,
                Some(stored[0].id),
                Some(stored[2].id),
                Some(stored[3].id)
            ]
        );
        // More matching events while it fires are linked; the rule fires once.
        let more = s
            .insert_events(&[
                NewEvent::new("proxy.timeout", Severity::Warning, "more").upstream("api")
            ])
            .await
            .expect("more");
        ev.on_event(&more[0], more[0].event.created_at).await;
        assert_eq!(
            s.incident_timeline(&incident.id)
                .await
                .expect("timeline")
                .len(),
            5
        );
        assert_eq!(sink.types(), vec!["alert.fired"]);
        let fired = sink.0.lock().expect("lock")[0].clone();
        assert_eq!(fired.upstream.as_deref(), Some("api"));
        // Quiet for the window: resolved.
        let last = more[0].event.created_at;
        ev.tick(last + 9_999, None).await;
        assert!(ev.is_firing("e1"));
        ev.tick(last + 10_000, None).await;
        assert!(!ev.is_firing("e1"));
        assert_eq!(sink.types(), vec!["alert.fired", "alert.resolved"]);
        // Disabling a rule drops it from evaluation.
        let mut r = s.get_alert_rule("e1").await.expect("get").expect("rule");
        r.enabled = false;
        s.update_alert_rule(&Actor::system(), &r, None)
            .await
            .expect("disable");
        ev.reload(last + 11_000).await.expect("reload");
        assert!(ev.rules.is_empty());
    }

    /// Breaker states as a data plane would report them.
    #[derive(Default)]
    struct Breakers(Mutex<Vec<String>>);

    impl MetricReader for Breakers {
        fn value(&self, _: &str, _: Option<&str>, _: Option<&str>) -> Option<f64> {
            None
        }
        fn still_holds(&self, event_type: &str, upstream: Option<&str>) -> Option<bool> {
            (event_type == "circuit_breaker.opened").then(|| {
                let open = self.0.lock().expect("lock");
                upstream.is_some_and(|u| open.iter().any(|o| o == u))
            })
        }
    }

    #[tokio::test]
    async fn a_breaker_incident_names_its_upstream_and_stays_open_while_the_breaker_does() {
        let (s, _dir) = store().await;
        let sink = Arc::new(Collect::default());
        let t0 = now_ms();
        s.create_alert_rule(
            &Actor::system(),
            &rule(
                "b1",
                AlertCondition::Event(EventCondition {
                    kind: EventKind::Event,
                    event_type: "circuit_breaker.opened".into(),
                    count: 1,
                    window_secs: 5,
                    filter: EventRuleFilter::default(),
                }),
                t0,
            ),
        )
        .await
        .expect("rule");
        let mut ev = Evaluator::new(s.clone(), sink.clone());
        ev.reload(t0).await.expect("reload");
        let mut opened =
            NewEvent::new("circuit_breaker.opened", Severity::Critical, "opened").upstream("shop");
        opened.created_at = t0 + 1;
        let stored = s.insert_events(&[opened]).await.expect("event");
        ev.on_event(&stored[0], t0 + 1).await;
        assert!(ev.is_firing("b1"));
        let incident = s
            .active_incident_of_rule("b1")
            .await
            .expect("read")
            .expect("open");
        assert_eq!(
            incident.title,
            "rule b1: circuit_breaker.opened on upstream shop"
        );

        // The window goes quiet while the breaker is still open: no resolve.
        let reader = Breakers::default();
        reader.0.lock().expect("lock").push("shop".into());
        ev.tick(t0 + 6_001, Some(&reader)).await;
        ev.tick(t0 + 7_000, Some(&reader)).await;
        assert_eq!(sink.types(), vec!["alert.fired"]);
        let still = s
            .active_incident_of_rule("b1")
            .await
            .expect("read")
            .expect("still open");
        assert_eq!(still.id, incident.id);
        let notes: Vec<String> = s
            .incident_timeline(&incident.id)
            .await
            .expect("timeline")
            .into_iter()
            .map(|e| e.message)
            .collect();
        assert!(
            notes
                .iter()
                .any(|m| m.contains("the circuit breaker of upstream shop is still open")),
            "{notes:?}"
        );
        assert_eq!(
            notes.iter().filter(|m| m.contains("still open")).count(),
            1,
            "noted once: {notes:?}"
        );
        // The breaker closes: resolved at the next evaluation.
        reader.0.lock().expect("lock").clear();
        ev.tick(t0 + 8_000, Some(&reader)).await;
        assert_eq!(sink.types(), vec!["alert.fired", "alert.resolved"]);
        assert!(s
            .active_incident_of_rule("b1")
            .await
            .expect("read")
            .is_none());

        // Without a reader that can tell (no data plane here), a quiet window
        // resolves as before.
        let mut again =
            NewEvent::new("circuit_breaker.opened", Severity::Critical, "again").upstream("cart");
        again.created_at = t0 + 9_000;
        let stored = s.insert_events(&[again]).await.expect("event");
        ev.on_event(&stored[0], t0 + 9_000).await;
        ev.tick(t0 + 14_001, None).await;
        assert_eq!(
            sink.types(),
            vec![
                "alert.fired",
                "alert.resolved",
                "alert.fired",
                "alert.resolved"
            ]
        );
    }
}
