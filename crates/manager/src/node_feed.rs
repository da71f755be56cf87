//! The fleet part of `/ws/dashboard`: Bilbycast's `dashboard_update`, a bare JSON
//! object (not the `{"type","data"}` frames of the rest of the feed) listing the
//! connected nodes with their latest stats and health: those connected here, and
//! in a cluster those held by the other live replicas (as those report them):
//!
//! ```json
//! {"type":"dashboard_update","online_count":1,"nodes":[{"node_id":"…","name":"…",
//!  "device_type":"edge","status":"online","stats":{…},"health":{…},
//!  "software_version":"…","protocol_version":1,"uptime_secs":42,
//!  "driver_metrics":{"metrics":[["active_flows",1],…],"items":[…]}}]}
//! ```
//!
//! It is built every [`UPDATE_EVERY`] and shortly after nodes connect to or
//! disconnect from this replica (changes within [`SETTLE`] of each other as one;
//! those of other replicas show at the next period), not per stats
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

use crate::nodes::replicas::{self, LiveView};
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
    device_type: DeviceType,
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
    async fn refresh<'a>(&mut self, state: &AppState, connected: impl Iterator<Item = &'a str>) {
        let stale = state
            .node_feed
            .names_stale
            .swap(false, std::sync::atomic::Ordering::Relaxed);
        let old = self.read_at.is_none_or(|t| t.elapsed() >= NAMES_TTL);
        let mut connected = connected;
        let unknown = connected.any(|id| !self.by_id.contains_key(id));
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
                        device_type: DeviceType::parse(&node.device_type)
                            .unwrap_or(DeviceType::Edge),
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

/// A connected node: its connection here, or the view of the replica holding it.
enum Connected {
    Here(Arc<NodeSession>),
    Elsewhere(String, Box<LiveView>),
}

impl Connected {
    fn node_id(&self) -> &str {
        match self {
            Connected::Here(s) => &s.node_id,
            Connected::Elsewhere(id, _) => id,
        }
    }
}

/// What one node's entry is made of.
struct NodeLive<'a> {
    node_id: &'a str,
    device_type: DeviceType,
    connected_at: i64,
    protocol_version: Option<u32>,
    software_version: Option<&'a str>,
    stats: Option<&'a Value>,
    health: Option<&'a Value>,
}

fn entry_json(n: &NodeLive<'_>, known: Option<&Known>, now: i64) -> serde_json::Result<String> {
    serde_json::to_string(&Entry {
        node_id: n.node_id,
        name: known.map_or("", |k| k.name.as_str()),
        device_type: n.device_type.as_str(),
        status: "online",
        stats: n.stats,
        health: n.health,
        software_version: n
            .software_version
            .or_else(|| known.and_then(|k| k.software_version.as_deref())),
        protocol_version: n.protocol_version,
        uptime_secs: ((now - n.connected_at) / 1000).max(0),
        driver_metrics: match n.device_type {
            DeviceType::Relay => relay_metrics(n.stats, n.health),
            DeviceType::Edge => edge_metrics(n.stats, n.health),
        },
    })
}

/// Serializes the update for the `connected` nodes (sorted by name, then id).
fn build(mut connected: Vec<Connected>, names: &HashMap<String, Known>) -> FleetUpdate {
    let now = now_ms();
    let name_of = |c: &Connected| names.get(c.node_id()).map_or("", |k| k.name.as_str());
    connected.sort_by(|a, b| {
        name_of(a)
            .cmp(name_of(b))
            .then_with(|| a.node_id().cmp(b.node_id()))
    });
    // The entries, comma-separated, with where each lies.
    let mut body = String::with_capacity(connected.len() * 1024);
    let mut entries = Vec::with_capacity(connected.len());
    for c in &connected {
        let known = names.get(c.node_id());
        let json = match c {
            Connected::Here(s) => {
                // A session's values stay readable even if a writer panicked.
                let latest = s.latest.lock().unwrap_or_else(|e| e.into_inner());
                entry_json(
                    &NodeLive {
                        node_id: &s.node_id,
                        device_type: s.device_type,
                        connected_at: s.connected_at,
                        protocol_version: s.protocol_version,
                        software_version: latest.software_version.as_deref(),
                        stats: latest.stats.as_ref().map(|r| &r.value),
                        health: latest.health.as_ref().map(|r| &r.value),
                    },
                    known,
                    now,
                )
            }
            Connected::Elsewhere(id, v) => entry_json(
                &NodeLive {
                    node_id: id,
                    device_type: known.map_or(DeviceType::Edge, |k| k.device_type),
                    connected_at: v.connected_at,
                    protocol_version: v.protocol_version,
                    software_version: v.software_version.as_deref(),
                    stats: v.stats.as_ref(),
                    health: v.health.as_ref(),
                },
                known,
                now,
            ),
        };
        let json = match json {
            Ok(j) => j,
            Err(e) => {
                tracing::warn!(node = %c.node_id(), error = %e, "left a node out of the dashboard update");
                continue;
            }
        };
        if !entries.is_empty() {
            body.push(',');
        }
        let start = body.len();
        body.push_str(&json);
        entries.push((c.node_id().to_string(), start..body.len()));
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

/// The nodes connected to other live replicas of this installation (not also
/// connected here), with what their replicas report of them; a node whose
/// replica does not answer in time is listed without stats and health.
async fn elsewhere(state: &AppState, here: &[Arc<NodeSession>]) -> Vec<Connected> {
    let presence = match state
        .store
        .node_presence(None, now_ms() - replicas::ALIVE_MS)
        .await
    {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "could not read node presence for the dashboard");
            return Vec::new();
        }
    };
    let here: HashSet<&str> = here.iter().map(|s| s.node_id.as_str()).collect();
    let remote: Vec<_> = presence
        .into_iter()
        .filter(|p| p.replica != state.instance && !here.contains(p.node_id.as_str()))
        .collect();
    if remote.is_empty() {
        return Vec::new();
    }
    let mut views = state.remote_views(&remote, true).await;
    remote
        .into_iter()
        .map(|p| {
            let view = views.remove(&p.node_id).unwrap_or_else(|| LiveView {
                connected_at: p.connected_at,
                protocol_version: p.protocol_version.and_then(|v| u32::try_from(v).ok()),
                ..LiveView::default()
            });
            Connected::Elsewhere(p.node_id, Box::new(view))
        })
        .collect()
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
            let mut connected = elsewhere(&state, &sessions).await;
            connected.extend(sessions.into_iter().map(Connected::Here));
            names
                .refresh(&state, connected.iter().map(Connected::node_id))
                .await;
            let by_id = names.by_id.clone();
            match tokio::task::spawn_blocking(move || build(connected, &by_id)).await {
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

    fn here(hub: &NodeHub) -> Vec<Connected> {
        hub.sessions().into_iter().map(Connected::Here).collect()
    }

    fn names(pairs: &[(&str, &str)]) -> HashMap<String, Known> {
        pairs
            .iter()
            .map(|(id, name)| {
                (
                    id.to_string(),
                    Known {
                        name: name.to_string(),
                        device_type: DeviceType::Edge,
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
        let u = build(here(&hub), &names(&[("n1", "b-relay"), ("n2", "a-edge")]));
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
        let u = build(here(&hub), &HashMap::new());
        assert_eq!(
            u.text_for(None).as_str(),
            r#"{"type":"dashboard_update","online_count":0,"nodes":[]}"#
        );
    }

    #[test]
    fn nodes_held_by_other_replicas_are_listed_with_their_view() {
        let hub = NodeHub::default();
        connect(&hub, "n1", DeviceType::Edge, None);
        let mut known = names(&[("n1", "b-here"), ("r1", "a-there")]);
        if let Some(k) = known.get_mut("r1") {
            k.device_type = DeviceType::Relay;
        }
        let mut connected = here(&hub);
        connected.push(Connected::Elsewhere(
            "r1".into(),
            Box::new(LiveView {
                connected_at: now_ms() - 61_000,
                protocol_version: Some(1),
                software_version: Some("0.2.3".into()),
                stats: Some(json!({"tunnels": [{"id": "t"}], "connected_edges": 2,
                                   "total_bandwidth_bps": 8000, "uptime_secs": 90})),
                ..LiveView::default()
            }),
        ));
        let u = build(connected, &known);
        let all: Value = serde_json::from_str(u.text_for(None).as_str()).expect("json");
        assert_eq!(all["online_count"], 2);
        let relay = &all["nodes"][0];
        assert_eq!(relay["node_id"], "r1");
        assert_eq!(relay["device_type"], "relay");
        assert_eq!(relay["software_version"], "0.2.3");
        assert!(
            relay["uptime_secs"].as_i64().is_some_and(|s| s >= 60),
            "{relay}"
        );
        assert_eq!(
            relay["driver_metrics"]["metrics"],
            json!([
                ["connected_edges", 2],
                ["active_tunnels", 0],
                ["total_tunnels", 1],
                ["total_bandwidth_bps", 8000],
                ["total_bytes_forwarded", 0],
                ["uptime_secs", 90]
            ])
        );
        assert_eq!(relay["driver_metrics"]["items"], json!([{"id": "t"}]));
        assert_eq!(all["nodes"][1]["node_id"], "n1");
    }
}
