//! The fleet part of `/ws/dashboard`: Bilbycast's `dashboard_update`, a bare JSON
//! object (not the `{"type","data"}` frames of the rest of the feed) listing the
//! nodes connected to this manager with their latest stats and health:
//!
//! ```json
//! {"type":"dashboard_update","online_count":1,"nodes":[{"node_id":"…","name":"…",
//!  "device_type":"edge","status":"online","stats":{…},"health":{…},
//!  "software_version":"…","protocol_version":1,"uptime_secs":42,
//!  "driver_metrics":{"metrics":[["active_flows",1],…],"items":[…]}}]}
//! ```
//!
//! It is built every [`UPDATE_EVERY`] and shortly after nodes connect or
//! disconnect (changes within [`SETTLE`] of each other as one), not per stats
//! message: with thousands of nodes that would be thousands of updates a second.
//! It is serialized once and the text shared by every dashboard socket; a socket
//! limited to some nodes gets the same entries, cut from that text. Nothing is
//! built while no dashboard is open.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::Utf8Bytes;
use fleetgate_core::time::now_ms;
use fleetgate_protocol::node::DeviceType;
use fleetgate_store::{NodeFilter, PageRequest};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{watch, Notify};

use crate::nodes::NodeSession;
use crate::AppState;

/// A new update is built at least this often while a dashboard is open.
pub const UPDATE_EVERY: Duration = Duration::from_secs(5);
/// After a node connects or disconnects, the update waits this long: a burst of
/// connections (all nodes coming back after a restart) makes one update, and a
/// node that just connected has sent its first health and stats by then.
pub const SETTLE: Duration = Duration::from_secs(1);
/// Node names are read from the store again after this long (a rename made
/// through another manager shows within it).
const NAMES_TTL: Duration = Duration::from_secs(60);
/// Page size when reading the node names.
const NAMES_PAGE: i64 = 1000;

/// One `dashboard_update`, serialized once for every dashboard socket.
#[derive(Debug)]
pub struct FleetUpdate {
    /// The whole message, every connected node listed.
    text: Utf8Bytes,
    /// Each node's id and where its entry lies in `text`.
    entries: Vec<(String, Range<usize>)>,
    pub built_at: Instant,
}

const HEAD: &str = r#"{"type":"dashboard_update","online_count":"#;

impl FleetUpdate {
    /// The message as a caller limited to `allowed` node ids (`None`: all) sees
    /// it: only those nodes, and `online_count` counting only them.
    pub fn text_for(&self, allowed: Option<&[String]>) -> Utf8Bytes {
        let Some(allowed) = allowed else {
            return self.text.clone();
        };
        let allowed: HashSet<&str> = allowed.iter().map(String::as_str).collect();
        let mine: Vec<&Range<usize>> = self
            .entries
            .iter()
            .filter(|(id, _)| allowed.contains(id.as_str()))
            .map(|(_, r)| r)
            .collect();
        let mut out = String::with_capacity(64 + mine.iter().map(|r| r.len() + 1).sum::<usize>());
        out.push_str(&format!(r#"{HEAD}{},"nodes":["#, mine.len()));
        for (i, r) in mine.into_iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&self.text[r.clone()]);
        }
        out.push_str("]}");
        out.into()
    }
}

/// The latest update and who wants one.
#[derive(Debug)]
pub struct NodeFeed {
    latest: watch::Sender<Option<Arc<FleetUpdate>>>,
    /// Signalled by a dashboard socket that opened with no recent update to show.
    wanted: Notify,
    /// Set when a node is renamed through this manager.
    names_stale: std::sync::atomic::AtomicBool,
}

impl Default for NodeFeed {
    fn default() -> Self {
        Self {
            latest: watch::Sender::new(None),
            wanted: Notify::new(),
            names_stale: std::sync::atomic::AtomicBool::new(true),
        }
    }
}

impl NodeFeed {
    /// Follows the updates. The current one, if it is recent, is returned to be
    /// sent at once; otherwise one is built now and arrives through the receiver.
    pub fn subscribe(
        &self,
    ) -> (
        watch::Receiver<Option<Arc<FleetUpdate>>>,
        Option<Arc<FleetUpdate>>,
    ) {
        let rx = self.latest.subscribe();
        let current = rx
            .borrow()
            .clone()
            .filter(|u| u.built_at.elapsed() < UPDATE_EVERY);
        if current.is_none() {
            self.wanted.notify_one();
        }
        (rx, current)
    }

    /// Node names changed in the store: read them again for the next update.
    pub fn names_changed(&self) {
        self.names_stale
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// What the store says of a node, as far as the update needs it.
struct Known {
    name: String,
    software_version: Option<String>,
}

/// Node names by id, read from the store now and then (never per update and node).
struct Names {
    by_id: Arc<HashMap<String, Known>>,
    read_at: Option<Instant>,
}

impl Names {
    /// Reads the names again when asked to, when they are old, or when a connected
    /// node is not among them (created since they were read).
    async fn refresh(&mut self, state: &AppState, sessions: &[Arc<NodeSession>]) {
        let stale = state
            .node_feed
            .names_stale
            .swap(false, std::sync::atomic::Ordering::Relaxed);
        let old = self.read_at.is_none_or(|t| t.elapsed() >= NAMES_TTL);
        let unknown = sessions
            .iter()
            .any(|s| !self.by_id.contains_key(&s.node_id));
        if !(stale || old || unknown) {
            return;
        }
        let mut by_id = HashMap::new();
        let mut offset = 0;
        loop {
            let page = state
                .store
                .list_nodes(
                    &NodeFilter::default(),
                    PageRequest {
                        limit: NAMES_PAGE,
                        offset,
                    },
                )
                .await;
            let page = match page {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, "could not read node names for the dashboard");
                    // Asked again next time; the names known so far stay.
                    state.node_feed.names_changed();
                    return;
                }
            };
            let n = page.items.len() as i64;
            for node in page.items {
                by_id.insert(
                    node.id,
                    Known {
                        name: node.name,
                        software_version: node.software_version,
                    },
                );
            }
            offset += n;
            if n < NAMES_PAGE || offset >= page.total {
                break;
            }
        }
        self.by_id = Arc::new(by_id);
        self.read_at = Some(Instant::now());
    }
}

/// One node's entry in the update.
#[derive(Serialize)]
struct Entry<'a> {
    node_id: &'a str,
    name: &'a str,
    device_type: &'static str,
    status: &'static str,
    stats: Option<&'a Value>,
    health: Option<&'a Value>,
    software_version: Option<&'a str>,
    protocol_version: Option<u32>,
    /// Seconds since the node's current connection began.
    uptime_secs: i64,
    driver_metrics: DriverMetrics<'a>,
}

#[derive(Serialize)]
struct DriverMetrics<'a> {
    /// `[name, value]` pairs.
    metrics: Vec<(&'static str, Value)>,
    items: &'a [Value],
}

fn array<'a>(v: Option<&'a Value>, key: &str) -> &'a [Value] {
    v.and_then(|v| v.get(key))
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// A number the node reported, or `fallback`.
fn number(v: Option<&Value>, key: &str, fallback: impl FnOnce() -> Value) -> Value {
    match v.and_then(|v| v.get(key)) {
        Some(n @ Value::Number(_)) => n.clone(),
        _ => fallback(),
    }
}

/// The metrics of an edge: flows and tunnels running and configured, the sum of
/// the flows' input bitrates, and the node's uptime; its items are its flows.
fn edge_metrics<'a>(stats: Option<&'a Value>, health: Option<&Value>) -> DriverMetrics<'a> {
    let flows = array(stats, "flows");
    let tunnels = array(stats, "tunnels");
    let running = || {
        flows
            .iter()
            .filter(|f| f.get("state").and_then(Value::as_str) == Some("running"))
            .count()
            .into()
    };
    let active_tunnels = tunnels
        .iter()
        .filter(|t| t.get("state").and_then(Value::as_str) == Some("ready"))
        .count();
    let bitrate: f64 = flows
        .iter()
        .filter_map(|f| f.pointer("/input/bitrate_bps").and_then(Value::as_f64))
        .sum();
    let uptime = number(stats, "uptime_secs", || {
        number(health, "uptime_secs", || 0.into())
    });
    DriverMetrics {
        metrics: vec![
            ("active_flows", number(stats, "active_flows", running)),
            (
                "total_flows",
                number(stats, "total_flows", || flows.len().into()),
            ),
            ("active_tunnels", active_tunnels.into()),
            ("total_tunnels", tunnels.len().into()),
            ("total_bitrate_bps", whole(bitrate)),
            ("uptime_secs", uptime),
        ],
        items: flows,
    }
}

/// The metrics of a relay: the edges attached, its tunnels, the bandwidth it
/// forwards, its uptime; its items are its tunnels.
fn relay_metrics<'a>(stats: Option<&'a Value>, health: Option<&Value>) -> DriverMetrics<'a> {
    let tunnels = array(stats, "tunnels");
    let reported = |key: &str| number(stats, key, || number(health, key, || 0.into()));
    DriverMetrics {
        metrics: vec![
            ("connected_edges", reported("connected_edges")),
            ("active_tunnels", reported("active_tunnels")),
            (
                "total_tunnels",
                number(stats, "total_tunnels", || tunnels.len().into()),
            ),
            ("total_bandwidth_bps", reported("total_bandwidth_bps")),
            ("total_bytes_forwarded", reported("total_bytes_forwarded")),
            ("uptime_secs", reported("uptime_secs")),
        ],
        items: tunnels,
    }
}

/// A float as an integer JSON number when it is one (bitrates are whole numbers).
fn whole(v: f64) -> Value {
    if v.fract() == 0.0 && v.abs() < 9.0e15 {
        Value::from(v as i64)
    } else {
        Value::from(v)
    }
}

/// Serializes the update for `sessions` (sorted by name, then id).
fn build(mut sessions: Vec<Arc<NodeSession>>, names: &HashMap<String, Known>) -> FleetUpdate {
    let now = now_ms();
    let name_of = |s: &NodeSession| names.get(&s.node_id).map_or("", |k| k.name.as_str());
    sessions.sort_by(|a, b| {
        name_of(a)
            .cmp(name_of(b))
            .then_with(|| a.node_id.cmp(&b.node_id))
    });
    // The entries, comma-separated, with where each lies.
    let mut body = String::with_capacity(sessions.len() * 1024);
    let mut entries = Vec::with_capacity(sessions.len());
    for s in &sessions {
        // A session's values stay readable even if a writer panicked.
        let latest = s.latest.lock().unwrap_or_else(|e| e.into_inner());
        let stats = latest.stats.as_ref().map(|r| &r.value);
        let health = latest.health.as_ref().map(|r| &r.value);
        let known = names.get(&s.node_id);
        let entry = Entry {
            node_id: &s.node_id,
            name: known.map_or("", |k| k.name.as_str()),
            device_type: s.device_type.as_str(),
            status: "online",
            stats,
            health,
            software_version: latest
                .software_version
                .as_deref()
                .or_else(|| known.and_then(|k| k.software_version.as_deref())),
            protocol_version: s.protocol_version,
            uptime_secs: ((now - s.connected_at) / 1000).max(0),
            driver_metrics: match s.device_type {
                DeviceType::Relay => relay_metrics(stats, health),
                DeviceType::Edge => edge_metrics(stats, health),
            },
        };
        let json = match serde_json::to_string(&entry) {
            Ok(j) => j,
            Err(e) => {
                tracing::warn!(node = %s.node_id, error = %e, "left a node out of the dashboard update");
                continue;
            }
        };
        drop(latest);
        if !entries.is_empty() {
            body.push(',');
        }
        let start = body.len();
        body.push_str(&json);
        entries.push((s.node_id.clone(), start..body.len()));
    }
    let head = format!(r#"{HEAD}{},"nodes":["#, entries.len());
    for (_, r) in &mut entries {
        *r = r.start + head.len()..r.end + head.len();
    }
    let text = format!("{head}{body}]}}");
    FleetUpdate {
        text: text.into(),
        entries,
        built_at: Instant::now(),
    }
}

/// Keeps [`NodeFeed`] current while dashboards are open: an update every
/// [`UPDATE_EVERY`], one [`SETTLE`] after nodes connect or disconnect, and one at
/// once for a dashboard that opens with none recent, until `shutdown`.
pub fn spawn_builder(
    state: AppState,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let mut membership = state.nodes.membership();
    tokio::spawn(async move {
        let mut names = Names {
            by_id: Arc::default(),
            read_at: None,
        };
        let mut tick = tokio::time::interval(UPDATE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let settle = tokio::select! {
                _ = tick.tick() => false,
                changed = membership.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    true
                }
                () = state.node_feed.wanted.notified() => false,
                () = stopped(&mut shutdown) => return,
            };
            if settle {
                tokio::select! {
                    () = tokio::time::sleep(SETTLE) => {}
                    () = stopped(&mut shutdown) => return,
                }
                membership.borrow_and_update();
                tick.reset();
            }
            if state.node_feed.latest.receiver_count() == 0 {
                continue;
            }
            let sessions = state.nodes.sessions();
            names.refresh(&state, &sessions).await;
            let by_id = names.by_id.clone();
            match tokio::task::spawn_blocking(move || build(sessions, &by_id)).await {
                Ok(update) => {
                    state.node_feed.latest.send_replace(Some(Arc::new(update)));
                }
                Err(e) => tracing::error!(error = %e, "building the dashboard update failed"),
            }
        }
    })
}

async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|down| *down).await;
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::nodes::{NodeHub, Reported};

    fn connect(
        hub: &NodeHub,
        id: &str,
        device: DeviceType,
        stats: Option<Value>,
    ) -> Arc<NodeSession> {
        let (session, _rx, _) = hub.attach(id, device, Some(1), "127.0.0.1:9".into());
        if let Some(v) = stats {
            session.latest.lock().expect("lock").stats = Some(Reported { at: 0, value: v });
        }
        session
    }

    fn names(pairs: &[(&str, &str)]) -> HashMap<String, Known> {
        pairs
            .iter()
            .map(|(id, name)| {
                (
                    id.to_string(),
                    Known {
                        name: name.to_string(),
                        software_version: Some("0.5.3".into()),
                    },
                )
            })
            .collect()
    }

    #[test]
    fn an_update_lists_every_node_and_a_limited_caller_only_theirs() {
        let hub = NodeHub::default();
        let stats = json!({"flows": [
            {"flow_id": "a", "state": "running", "input": {"bitrate_bps": 1_000_000}},
            {"flow_id": "b", "state": "idle", "input": {"bitrate_bps": 500}}],
            "tunnels": [{"id": "t", "state": "ready"}, {"id": "u", "state": "connecting"}],
            "uptime_secs": 7});
        connect(&hub, "n2", DeviceType::Edge, Some(stats));
        connect(&hub, "n1", DeviceType::Relay, None);
        let u = build(
            hub.sessions(),
            &names(&[("n1", "b-relay"), ("n2", "a-edge")]),
        );
        let all: Value = serde_json::from_str(u.text_for(None).as_str()).expect("json");
        assert_eq!(all["type"], "dashboard_update");
        assert_eq!(all["online_count"], 2);
        let edge = &all["nodes"][0];
        assert_eq!(edge["node_id"], "n2", "sorted by name: {all}");
        assert_eq!(edge["name"], "a-edge");
        assert_eq!(edge["status"], "online");
        assert_eq!(edge["device_type"], "edge");
        assert_eq!(edge["software_version"], "0.5.3");
        assert_eq!(edge["protocol_version"], 1);
        assert!(edge["health"].is_null());
        assert_eq!(
            edge["driver_metrics"]["metrics"],
            json!([
                ["active_flows", 1],
                ["total_flows", 2],
                ["active_tunnels", 1],
                ["total_tunnels", 2],
                ["total_bitrate_bps", 1_000_500],
                ["uptime_secs", 7]
            ])
        );
        assert_eq!(edge["driver_metrics"]["items"][1]["flow_id"], "b");
        let relay = &all["nodes"][1];
        assert!(relay["stats"].is_null());
        assert_eq!(relay["driver_metrics"]["items"], json!([]));

        let mine: Value = serde_json::from_str(
            u.text_for(Some(&["n1".to_string(), "gone".to_string()]))
                .as_str(),
        )
        .expect("json");
        assert_eq!(mine["online_count"], 1);
        assert_eq!(mine["nodes"], json!([relay]));
        let none: Value = serde_json::from_str(u.text_for(Some(&[])).as_str()).expect("json");
        assert_eq!(
            none,
            json!({"type": "dashboard_update", "online_count": 0, "nodes": []})
        );
    }

    #[test]
    fn membership_changes_on_connect_and_on_the_last_disconnect() {
        let hub = NodeHub::default();
        let mut m = hub.membership();
        let first = connect(&hub, "n", DeviceType::Edge, None);
        assert!(m.has_changed().expect("open"));
        m.borrow_and_update();
        let second = connect(&hub, "n", DeviceType::Edge, None);
        m.borrow_and_update();
        // The replaced connection ends: the node is still connected.
        assert!(!hub.detach(&first));
        assert!(!m.has_changed().expect("open"));
        assert!(hub.detach(&second));
        assert!(m.has_changed().expect("open"));
        let u = build(hub.sessions(), &HashMap::new());
        assert_eq!(
            u.text_for(None).as_str(),
            r#"{"type":"dashboard_update","online_count":0,"nodes":[]}"#
        );
    }
}
