//! Downsampled history of the nodes' stats (every second) and health (every 15 s).
//!
//! Each message is reduced to numbers ([`metrics_of_stats`], [`metrics_of_health`]):
//! the top-level numeric fields, totals over the flows (bitrates, packets, losses,
//! drops, running flows) and tunnels, and whether health said `ok`. The replica
//! holding a node's connection adds them to the node's current minute and hour;
//! a minute is written to the store when it is over (at most [`FLUSH_EVERY`]
//! later), together with the hour so far. Rows at 60 s are kept 24 hours, rows at
//! 3600 s 30 days. A row of an edge with flows is about 1.2 KB of JSON (14 names
//! of ~85 bytes, estimated, not measured), so a node costs about 1.7 MB of minute
//! rows and 0.9 MB of hour rows: 10,000 nodes some 26 GB, which wants PostgreSQL
//! or shorter retention.
//!
//! A node sends what it likes: at most [`MAX_METRICS`] names per node are kept, of
//! at most [`MAX_NAME_BYTES`] bytes, and only finite numbers.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use fleetgate_core::time::now_ms;
use fleetgate_store::NodeSample;
use serde_json::{json, Map, Value};
use tokio::sync::watch;

use crate::AppState;

/// Resolutions kept, in seconds, with how long their rows are kept (ms).
pub const RESOLUTIONS: [(i64, i64); 2] = [(60, 24 * 3_600_000), (3600, 30 * 86_400_000)];
/// How often finished minutes are written.
pub const FLUSH_EVERY: Duration = Duration::from_secs(10);
/// Metric names kept per node at most.
pub const MAX_METRICS: usize = 64;
/// Longest metric name kept.
pub const MAX_NAME_BYTES: usize = 64;

/// Count, sum, extremes and last value of one metric over an interval.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Stat {
    n: u64,
    sum: f64,
    min: f64,
    max: f64,
    last: f64,
}

impl Stat {
    fn new(v: f64) -> Self {
        Self {
            n: 1,
            sum: v,
            min: v,
            max: v,
            last: v,
        }
    }

    fn add(&mut self, v: f64) {
        self.n += 1;
        self.sum += v;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
        self.last = v;
    }

    fn json(&self) -> Value {
        json!({"avg": self.sum / self.n as f64, "min": self.min, "max": self.max,
               "last": self.last, "n": self.n})
    }
}

/// One interval of one node.
#[derive(Debug, Default, Clone)]
struct Interval {
    /// Start, Unix ms.
    ts: i64,
    metrics: BTreeMap<String, Stat>,
}

impl Interval {
    fn add(&mut self, name: &str, v: f64) {
        let full = self.metrics.len() >= MAX_METRICS;
        match self.metrics.get_mut(name) {
            Some(s) => s.add(v),
            None if !full => {
                self.metrics.insert(name.to_string(), Stat::new(v));
            }
            None => {}
        }
    }

    fn sample(&self, node_id: &str, resolution: i64) -> NodeSample {
        NodeSample {
            node_id: node_id.to_string(),
            resolution,
            ts: self.ts,
            metrics: Value::Object(
                self.metrics
                    .iter()
                    .map(|(k, s)| (k.clone(), s.json()))
                    .collect(),
            ),
        }
    }
}

/// The current minute and hour of one node.
#[derive(Debug, Default)]
struct Series {
    minute: Interval,
    hour: Interval,
}

fn floor(at: i64, resolution: i64) -> i64 {
    at - at.rem_euclid(resolution * 1000)
}

/// The nodes' intervals in progress on this replica, and finished ones not yet
/// written.
#[derive(Debug, Default)]
pub struct History {
    series: Mutex<HashMap<String, Series>>,
    finished: Mutex<Vec<NodeSample>>,
}

impl History {
    /// Adds readings of `node_id` taken at `at` (Unix ms).
    pub fn observe(&self, node_id: &str, at: i64, readings: &[(String, f64)]) {
        if readings.is_empty() {
            return;
        }
        let mut done = Vec::new();
        if let Ok(mut all) = self.series.lock() {
            let s = all.entry(node_id.to_string()).or_default();
            let (minute, hour) = (floor(at, 60), floor(at, 3600));
            if s.minute.ts != minute {
                if !s.minute.metrics.is_empty() {
                    done.push(s.minute.sample(node_id, 60));
                }
                s.minute = Interval {
                    ts: minute,
                    ..Interval::default()
                };
            }
            if s.hour.ts != hour {
                if !s.hour.metrics.is_empty() {
                    done.push(s.hour.sample(node_id, 3600));
                }
                s.hour = Interval {
                    ts: hour,
                    ..Interval::default()
                };
            }
            for (name, v) in readings {
                s.minute.add(name, *v);
                s.hour.add(name, *v);
            }
        }
        if !done.is_empty() {
            if let Ok(mut f) = self.finished.lock() {
                f.extend(done);
            }
        }
    }

    /// The samples to write at `now`: minutes finished (each with its hour so far),
    /// hours finished. Nodes for which `connected` is false and whose minute is
    /// over are forgotten once their hour so far is taken.
    pub fn take(&self, now: i64, connected: impl Fn(&str) -> bool) -> Vec<NodeSample> {
        let mut out = self
            .finished
            .lock()
            .map(|mut f| std::mem::take(&mut *f))
            .unwrap_or_default();
        let minute = floor(now, 60);
        if let Ok(mut all) = self.series.lock() {
            all.retain(|id, s| {
                if s.minute.ts < minute && !s.minute.metrics.is_empty() {
                    out.push(s.minute.sample(id, 60));
                    out.push(s.hour.sample(id, 3600));
                    s.minute.metrics.clear();
                }
                connected(id) || s.minute.ts >= minute
            });
        }
        out
    }

    /// The interval in progress of a node, as a sample (not yet stored).
    pub fn current(&self, node_id: &str, resolution: i64) -> Option<NodeSample> {
        let all = self.series.lock().ok()?;
        let s = all.get(node_id)?;
        let i = if resolution == 3600 {
            &s.hour
        } else {
            &s.minute
        };
        (!i.metrics.is_empty()).then(|| i.sample(node_id, resolution))
    }
}

fn number(v: &Value) -> Option<f64> {
    v.as_f64().filter(|f| f.is_finite())
}

/// Top-level numeric fields of `obj`, named `prefix` + field.
fn scalars(obj: &Map<String, Value>, prefix: &str, out: &mut Vec<(String, f64)>) {
    for (k, v) in obj {
        if let Some(f) = number(v) {
            if prefix.len() + k.len() <= MAX_NAME_BYTES {
                out.push((format!("{prefix}{k}"), f));
            }
        }
    }
}

/// The sum of `path` over `items` (missing or non-numeric values count as 0).
fn total(items: &[Value], path: &[&str]) -> f64 {
    items
        .iter()
        .filter_map(|i| path.iter().try_fold(i, |v, k| v.get(k)).and_then(number))
        .sum()
}

/// The numbers a stats message gives.
pub fn metrics_of_stats(stats: &Value) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    let Some(obj) = stats.as_object() else {
        return out;
    };
    scalars(obj, "", &mut out);
    if let Some(flows) = obj.get("flows").and_then(Value::as_array) {
        let outputs: Vec<Value> = flows
            .iter()
            .filter_map(|f| f.get("outputs").and_then(Value::as_array))
            .flatten()
            .cloned()
            .collect();
        let running = flows.iter().filter(|f| f["state"] == "running").count();
        out.extend([
            ("flows.running".to_string(), running as f64),
            (
                "flows.input_bitrate_bps".into(),
                total(flows, &["input", "bitrate_bps"]),
            ),
            (
                "flows.packets_received".into(),
                total(flows, &["input", "packets_received"]),
            ),
            (
                "flows.packets_lost".into(),
                total(flows, &["input", "packets_lost"]),
            ),
            (
                "flows.output_bitrate_bps".into(),
                total(&outputs, &["bitrate_bps"]),
            ),
            (
                "flows.packets_sent".into(),
                total(&outputs, &["packets_sent"]),
            ),
            (
                "flows.packets_dropped".into(),
                total(&outputs, &["packets_dropped"]),
            ),
        ]);
    }
    if let Some(tunnels) = obj.get("tunnels").and_then(Value::as_array) {
        let ready = tunnels.iter().filter(|t| t["state"] == "ready").count();
        out.extend([
            ("tunnels.ready".to_string(), ready as f64),
            (
                "tunnels.bitrate_in_bps".into(),
                total(tunnels, &["stats", "bitrate_in_bps"]),
            ),
            (
                "tunnels.bitrate_out_bps".into(),
                total(tunnels, &["stats", "bitrate_out_bps"]),
            ),
        ]);
    }
    out
}

/// The numbers a health message gives: its numeric fields as `health.<field>`, and
/// `health.ok`, 1 when its status is `ok` (or `healthy`), else 0.
pub fn metrics_of_health(health: &Value) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    let Some(obj) = health.as_object() else {
        return out;
    };
    scalars(obj, "health.", &mut out);
    if let Some(status) = obj.get("status").and_then(Value::as_str) {
        let ok = matches!(status, "ok" | "healthy");
        out.push(("health.ok".into(), if ok { 1.0 } else { 0.0 }));
    }
    out
}

/// Writes finished intervals every [`FLUSH_EVERY`] and prunes rows past their
/// retention every hour, until `shutdown` (when what is finished is written).
pub fn spawn(state: AppState, mut shutdown: watch::Receiver<bool>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(FLUSH_EVERY);
        let mut last_prune = 0i64;
        loop {
            let stopping = tokio::select! {
                _ = tick.tick() => false,
                _ = shutdown.wait_for(|d| *d) => true,
            };
            let now = now_ms();
            let samples = state
                .nodes
                .history
                .take(now, |id| state.nodes.session(id).is_some());
            if let Err(e) = state.store.record_node_samples(&samples).await {
                tracing::warn!(error = %e, rows = samples.len(), "could not write node history");
            }
            if stopping {
                return;
            }
            if now - last_prune >= 3_600_000 {
                last_prune = now;
                for (resolution, keep) in RESOLUTIONS {
                    if let Err(e) = state.store.prune_node_samples(resolution, now - keep).await {
                        tracing::warn!(error = %e, "could not prune node history");
                    }
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn named(v: &[(String, f64)], name: &str) -> Option<f64> {
        v.iter().find(|(n, _)| n == name).map(|(_, x)| *x)
    }

    #[test]
    fn stats_give_totals_over_flows_and_tunnels() {
        let stats = json!({"uptime_secs": 12, "active_flows": 2, "total_flows": 3,
            "flows": [
                {"state": "running", "input": {"bitrate_bps": 1000, "packets_received": 10, "packets_lost": 1},
                 "outputs": [{"bitrate_bps": 900, "packets_sent": 9, "packets_dropped": 1},
                             {"bitrate_bps": 1000, "packets_sent": 10}]},
                {"state": "idle", "input": {"bitrate_bps": "bad"}, "outputs": "bad"}
            ],
            "tunnels": [{"state": "ready", "stats": {"bitrate_in_bps": 5, "bitrate_out_bps": 7}}, {"state": "down"}]});
        let m = metrics_of_stats(&stats);
        assert_eq!(named(&m, "active_flows"), Some(2.0));
        assert_eq!(named(&m, "flows.running"), Some(1.0));
        assert_eq!(named(&m, "flows.input_bitrate_bps"), Some(1000.0));
        assert_eq!(named(&m, "flows.output_bitrate_bps"), Some(1900.0));
        assert_eq!(named(&m, "flows.packets_sent"), Some(19.0));
        assert_eq!(named(&m, "flows.packets_dropped"), Some(1.0));
        assert_eq!(named(&m, "flows.packets_lost"), Some(1.0));
        assert_eq!(named(&m, "tunnels.ready"), Some(1.0));
        assert_eq!(named(&m, "tunnels.bitrate_out_bps"), Some(7.0));
        let h = metrics_of_health(&json!({"status": "ok", "active_flows": 2, "version": "1"}));
        assert_eq!(named(&h, "health.ok"), Some(1.0));
        assert_eq!(named(&h, "health.active_flows"), Some(2.0));
        assert_eq!(named(&h, "health.version"), None);
    }

    #[test]
    fn minutes_close_with_their_hour_and_departed_nodes_are_forgotten() {
        let h = History::default();
        let t0 = 1_700_000_000_000 - 1_700_000_000_000 % 3_600_000;
        for i in 0..3 {
            h.observe("n", t0 + i * 1000, &[("x".into(), i as f64)]);
        }
        assert!(h.take(t0 + 59_000, |_| true).is_empty(), "minute not over");
        h.observe("n", t0 + 61_000, &[("x".into(), 10.0)]);
        let rows = h.take(t0 + 61_500, |_| true);
        assert_eq!(rows.len(), 1, "{rows:?}");
        let m = &rows[0].metrics["x"];
        assert_eq!((rows[0].resolution, rows[0].ts), (60, t0));
        assert_eq!(
            (
                m["avg"].as_f64(),
                m["max"].as_f64(),
                m["last"].as_f64(),
                m["n"].as_u64()
            ),
            (Some(1.0), Some(2.0), Some(2.0), Some(3))
        );
        let cur = h.current("n", 3600).expect("hour so far");
        assert_eq!(cur.metrics["x"]["n"], 4);
        // The node left: its last minute and the hour so far are written, then it is gone.
        let rows = h.take(t0 + 125_000, |_| false);
        assert_eq!(
            rows.iter().map(|r| r.resolution).collect::<Vec<_>>(),
            [60, 3600]
        );
        assert_eq!(rows[1].metrics["x"]["n"], 4);
        assert!(h.current("n", 60).is_none());
    }

    proptest! {
        /// Whatever a node sends, at most MAX_METRICS names of bounded length and
        /// only finite numbers are kept.
        #[test]
        fn hostile_payloads_are_bounded(keys in proptest::collection::vec("[a-z.]{1,90}", 0..200),
                                        vals in proptest::collection::vec(any::<f64>(), 200)) {
            let obj: Map<String, Value> = keys.iter().zip(&vals)
                .map(|(k, v)| (k.clone(), json!(v))).collect();
            let stats = Value::Object(obj);
            let h = History::default();
            let readings = metrics_of_stats(&stats);
            for (n, v) in &readings {
                prop_assert!(n.len() <= MAX_NAME_BYTES);
                prop_assert!(v.is_finite());
            }
            h.observe("n", 0, &readings);
            h.observe("n", 60_000, &metrics_of_health(&stats));
            let rows = h.take(120_000, |_| false);
            for r in rows {
                prop_assert!(r.metrics.as_object().map_or(0, Map::len) <= MAX_METRICS);
            }
        }
    }
}
