//! Live traffic metrics: the manager reads its data plane's cumulative counters
//! every second, derives a snapshot of the last ten seconds (rates, error ratios,
//! latency quantiles per route and upstream, breaker states) that the API, the live
//! streams and alert rules share, and every ten seconds adds the interval's totals
//! to the stored series, which are pruned per resolution by age.

use std::collections::VecDeque;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use fleetgate_core::gateway::BreakerStatus;
use fleetgate_core::metrics::{
    ratio, round3, Quantiles, RouteCounters, TrafficCounters, UpstreamCounters,
};
use fleetgate_core::time::{now_ms, rfc3339};
use fleetgate_protocol::DataPlaneStatus;
use fleetgate_store::{MetricPoint, RESOLUTIONS};
use serde::Serialize;
use tokio::sync::watch;
use utoipa::ToSchema;

use crate::AppState;

/// Seconds of traffic a snapshot describes.
pub const SNAPSHOT_WINDOW_SECS: u64 = 10;
/// Interval of the stored series' finest resolution, ms.
const SERIES_INTERVAL_MS: i64 = 10_000;
/// How often rows past their resolution's retention are deleted.
const PRUNE_EVERY_MS: i64 = 10 * 60 * 1000;

/// Traffic of all routes, or of one route, over the snapshot's window.
#[derive(Debug, Clone, Default, Serialize, ToSchema, PartialEq)]
pub struct TrafficView {
    pub requests: u64,
    pub requests_per_second: f64,
    /// 5xx answers.
    pub errors: u64,
    /// Share of requests answered 5xx (0..1).
    pub error_rate: f64,
    /// 4xx answers (rate-limited and unmatched requests included).
    pub client_errors: u64,
    pub rate_limited: u64,
    pub rate_limited_per_second: f64,
    /// Latency quantiles in ms; null without requests.
    #[schema(value_type = Object)]
    pub latency_ms: Quantiles,
}

impl TrafficView {
    fn of(c: &RouteCounters, secs: f64) -> Self {
        let requests = c.requests();
        Self {
            requests,
            requests_per_second: per_second(requests, secs),
            errors: c.by_class[4],
            error_rate: ratio(c.by_class[4], requests),
            client_errors: c.by_class[3],
            rate_limited: c.rate_limited,
            rate_limited_per_second: per_second(c.rate_limited, secs),
            latency_ms: Quantiles::of(&c.latency),
        }
    }
}

#[derive(Debug, Clone, Serialize, ToSchema, PartialEq)]
pub struct RouteTraffic {
    pub route: String,
    #[serde(flatten)]
    pub traffic: TrafficView,
}

#[derive(Debug, Clone, Serialize, ToSchema, PartialEq)]
pub struct UpstreamTraffic {
    pub upstream: String,
    /// Attempts sent, retries included.
    pub requests: u64,
    pub requests_per_second: f64,
    /// Failed attempts: connection errors, timeouts, 5xx answers.
    pub failures: u64,
    pub failure_rate: f64,
    pub timeouts: u64,
    pub retries: u64,
    pub breaker_rejections: u64,
    /// Time to the response head, ms.
    #[schema(value_type = Object)]
    pub latency_ms: Quantiles,
    /// `closed`, `open` or `half_open`; null when the upstream has no breaker state yet.
    pub breaker: Option<String>,
}

/// What the data plane did in the last seconds.
#[derive(Debug, Clone, Serialize, ToSchema, PartialEq)]
pub struct MetricsSnapshot {
    /// When the snapshot was taken (RFC 3339).
    pub at: String,
    /// Seconds of traffic the counts cover (up to 10; less just after start).
    pub window_secs: f64,
    /// Whether this process runs a data plane; a manager alone has no traffic.
    pub data_plane: bool,
    /// Configuration revision the data plane serves.
    pub revision: Option<u64>,
    pub totals: TrafficView,
    /// Routes that served requests in the window, busiest first.
    pub routes: Vec<RouteTraffic>,
    /// Every upstream of the data plane, by name.
    pub upstreams: Vec<UpstreamTraffic>,
    #[schema(value_type = Vec<Object>)]
    pub breakers: Vec<BreakerStatus>,
}

impl MetricsSnapshot {
    pub fn empty() -> Self {
        Self {
            at: rfc3339(now_ms()),
            window_secs: 0.0,
            data_plane: false,
            revision: None,
            totals: TrafficView::default(),
            routes: Vec::new(),
            upstreams: Vec::new(),
            breakers: Vec::new(),
        }
    }

    /// The value an alert rule or a dashboard asks for: `metric` of all traffic,
    /// of one route or of one upstream.
    pub fn value(&self, metric: &str, route: Option<&str>, upstream: Option<&str>) -> Option<f64> {
        if !self.data_plane {
            return None;
        }
        if let Some(name) = upstream {
            let u = self.upstreams.iter().find(|u| u.upstream == name)?;
            return Some(match metric {
                "requests" => u.requests as f64,
                "requests_per_second" => u.requests_per_second,
                "upstream_failures" => u.failures as f64,
                "upstream_failure_rate" | "error_rate" => u.failure_rate,
                "upstream_timeouts" => u.timeouts as f64,
                "upstream_retries" => u.retries as f64,
                "latency_p50_ms" => u.latency_ms.p50?,
                "latency_p95_ms" => u.latency_ms.p95?,
                "latency_p99_ms" => u.latency_ms.p99?,
                _ => return None,
            });
        }
        let t = match route {
            Some(id) => match self.routes.iter().find(|r| r.route == id) {
                Some(r) => &r.traffic,
                // A route without requests in the window.
                None => &TrafficView::default(),
            },
            None => &self.totals,
        };
        Some(match metric {
            "requests" => t.requests as f64,
            "requests_per_second" => t.requests_per_second,
            "errors" => t.errors as f64,
            "error_rate" => t.error_rate,
            "client_errors" => t.client_errors as f64,
            "rate_limited" => t.rate_limited as f64,
            "rate_limited_per_second" => t.rate_limited_per_second,
            "latency_p50_ms" => t.latency_ms.p50?,
            "latency_p95_ms" => t.latency_ms.p95?,
            "latency_p99_ms" => t.latency_ms.p99?,
            _ => return None,
        })
    }
}

/// Alert rules' metric values from the latest snapshot of this process.
pub struct SnapshotReader(pub watch::Receiver<Arc<MetricsSnapshot>>);

impl crate::alerts::MetricReader for SnapshotReader {
    fn value(&self, metric: &str, route: Option<&str>, upstream: Option<&str>) -> Option<f64> {
        self.0.borrow().value(metric, route, upstream)
    }

    fn still_holds(&self, event_type: &str, upstream: Option<&str>) -> Option<bool> {
        let snap = self.0.borrow();
        if !snap.data_plane || event_type != "circuit_breaker.opened" {
            return None;
        }
        let upstream = upstream?;
        Some(
            snap.breakers
                .iter()
                .any(|b| b.upstream == upstream && b.state != "closed"),
        )
    }
}

fn per_second(n: u64, secs: f64) -> f64 {
    if secs <= 0.0 {
        0.0
    } else {
        round3(n as f64 / secs)
    }
}

/// The snapshot of the traffic between two readings `secs` apart.
pub fn snapshot_of(
    now: &TrafficCounters,
    earlier: &TrafficCounters,
    secs: f64,
    status: &DataPlaneStatus,
) -> MetricsSnapshot {
    let d = now.since(earlier);
    let breakers = status.breakers();
    let mut routes: Vec<RouteTraffic> = d
        .routes
        .iter()
        .filter(|(_, c)| c.requests() > 0 || c.rate_limited > 0)
        .map(|(id, c)| RouteTraffic {
            route: id.clone(),
            traffic: TrafficView::of(c, secs),
        })
        .collect();
    routes.sort_by(|a, b| {
        b.traffic
            .requests
            .cmp(&a.traffic.requests)
            .then_with(|| a.route.cmp(&b.route))
    });
    let upstreams = d
        .upstreams
        .iter()
        .map(|(name, u)| UpstreamTraffic {
            upstream: name.clone(),
            requests: u.requests,
            requests_per_second: per_second(u.requests, secs),
            failures: u.failures,
            failure_rate: ratio(u.failures, u.requests),
            timeouts: u.timeouts,
            retries: u.retries,
            breaker_rejections: u.breaker_rejections,
            latency_ms: Quantiles::of(&u.latency),
            breaker: breakers
                .iter()
                .find(|b| &b.upstream == name)
                .map(|b| b.state.clone()),
        })
        .collect();
    MetricsSnapshot {
        at: rfc3339(now_ms()),
        window_secs: round3(secs),
        data_plane: true,
        revision: Some(status.applied.revision),
        totals: TrafficView::of(&d.total(), secs),
        routes,
        upstreams,
        breakers,
    }
}

/// The rows one 10-second interval adds to the series: all traffic, then routes
/// and upstreams with traffic, at most `max_scopes` of them (the busiest).
pub fn series_points(
    d: &TrafficCounters,
    ts: i64,
    source: &str,
    max_scopes: usize,
) -> Vec<MetricPoint> {
    fn route_point(c: &RouteCounters, ts: i64, scope: String, source: &str) -> MetricPoint {
        let q = Quantiles::of(&c.latency);
        let n = c.latency.count as i64;
        MetricPoint {
            ts,
            scope,
            source: source.to_string(),
            requests: c.requests() as i64,
            errors: c.by_class[4] as i64,
            client_errors: c.by_class[3] as i64,
            rate_limited: c.rate_limited as i64,
            timeouts: 0,
            retries: 0,
            latency_count: n,
            p50_weighted: q.p50.unwrap_or(0.0) * n as f64,
            p95_weighted: q.p95.unwrap_or(0.0) * n as f64,
            p99_weighted: q.p99.unwrap_or(0.0) * n as f64,
        }
    }
    let total = d.total();
    let mut out = Vec::new();
    if total.requests() > 0 || total.rate_limited > 0 {
        out.push(route_point(&total, ts, String::new(), source));
    }
    let mut scoped: Vec<MetricPoint> = d
        .routes
        .iter()
        .filter(|(_, c)| c.requests() > 0 || c.rate_limited > 0)
        .map(|(id, c)| route_point(c, ts, format!("route:{id}"), source))
        .chain(
            d.upstreams
                .iter()
                .filter(|(_, u)| u.requests > 0 || u.breaker_rejections > 0)
                .map(|(name, u)| {
                    let q = Quantiles::of(&u.latency);
                    let n = u.latency.count as i64;
                    MetricPoint {
                        ts,
                        scope: format!("upstream:{name}"),
                        source: source.to_string(),
                        requests: u.requests as i64,
                        errors: u.failures as i64,
                        client_errors: 0,
                        rate_limited: 0,
                        timeouts: u.timeouts as i64,
                        retries: u.retries as i64,
                        latency_count: n,
                        p50_weighted: q.p50.unwrap_or(0.0) * n as f64,
                        p95_weighted: q.p95.unwrap_or(0.0) * n as f64,
                        p99_weighted: q.p99.unwrap_or(0.0) * n as f64,
                    }
                }),
        )
        .collect();
    if scoped.len() > max_scopes {
        scoped.sort_by(|a, b| b.requests.cmp(&a.requests).then(a.scope.cmp(&b.scope)));
        scoped.truncate(max_scopes);
    }
    out.extend(scoped);
    out
}

/// Names this process in the series it writes, so several gateways on one store
/// add up instead of overwriting each other.
pub fn instance_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        let mut b = [0u8; 6];
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut b);
        hex::encode(b)
    })
}

/// `counters` without the routes and upstreams that have counted nothing yet, for
/// a reading kept only to be subtracted from later ones: [`TrafficCounters::since`]
/// counts what is missing from the earlier reading from zero, so the result is the
/// same. With a large route table of which few routes carry traffic, the window of
/// readings would otherwise hold a copy of every route's counters per second.
fn without_idle(counters: &TrafficCounters) -> TrafficCounters {
    TrafficCounters {
        routes: counters
            .routes
            .iter()
            .filter(|(_, c)| **c != RouteCounters::default())
            .map(|(k, c)| (k.clone(), c.clone()))
            .collect(),
        upstreams: counters
            .upstreams
            .iter()
            .filter(|(_, c)| **c != UpstreamCounters::default())
            .map(|(k, c)| (k.clone(), c.clone()))
            .collect(),
        unmatched: counters.unmatched,
    }
}

/// The latest snapshot, renewed every second.
pub type SnapshotWatch = watch::Sender<Arc<MetricsSnapshot>>;

/// Reads the data plane every second: publishes snapshots, writes the series every
/// 10 s and prunes them every 10 minutes. Ends when `shutdown` turns true.
pub fn spawn_sampler(state: AppState, mut shutdown: watch::Receiver<bool>) {
    tokio::spawn(async move {
        let mut readings: VecDeque<(i64, TrafficCounters)> = VecDeque::new();
        let mut series_base: Option<(i64, TrafficCounters)> = None;
        let mut last_prune = 0i64;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
            let now = now_ms();
            if now - last_prune >= PRUNE_EVERY_MS {
                last_prune = now;
                let settings = state.settings().metrics;
                for r in RESOLUTIONS {
                    if let Err(e) = state
                        .store
                        .prune_metric_points(r, now - settings.retention_ms(r))
                        .await
                    {
                        tracing::warn!(error = %e, resolution = r, "metric series pruning failed");
                    }
                }
            }
            let Some(dp) = state.data_plane.get().cloned() else {
                continue;
            };
            let status = dp.fresh().await;
            let reading = status.traffic.clone();
            readings.push_back((now, without_idle(&reading)));
            while readings.len() > SNAPSHOT_WINDOW_SECS as usize + 1 {
                readings.pop_front();
            }
            let (then, earlier) = readings.front().cloned().unwrap_or_default();
            let secs = if then == now {
                0.0
            } else {
                (now - then) as f64 / 1000.0
            };
            let snap = snapshot_of(&reading, &earlier, secs, &status);
            state.traffic.send_replace(Arc::new(snap));

            // Series: one row set per finished 10 s interval of wall time.
            let interval = now - now.rem_euclid(SERIES_INTERVAL_MS);
            match &series_base {
                None => series_base = Some((interval, without_idle(&reading))),
                Some((start, base)) if *start < interval => {
                    let d = reading.since(base);
                    let max = state.settings().metrics.max_series_scopes as usize;
                    let points = series_points(&d, *start, instance_id(), max);
                    series_base = Some((interval, without_idle(&reading)));
                    if !points.is_empty() {
                        if let Err(e) = state.store.record_metric_points(&points).await {
                            tracing::warn!(error = %e, "could not store metric series");
                        }
                    }
                }
                Some(_) => {}
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reading_without_idle_counters_subtracts_the_same() {
        let mut earlier = TrafficCounters::default();
        let mut busy = RouteCounters::default();
        busy.by_class[1] = 7;
        busy.latency.record(1200);
        earlier.routes.insert("busy".into(), busy.clone());
        earlier
            .routes
            .insert("idle".into(), RouteCounters::default());
        earlier
            .upstreams
            .insert("up".into(), UpstreamCounters::default());
        earlier.unmatched = 3;
        let mut now = earlier.clone();
        if let Some(r) = now.routes.get_mut("busy") {
            r.by_class[1] = 9;
        }
        if let Some(r) = now.routes.get_mut("idle") {
            r.by_class[3] = 2;
        }
        if let Some(u) = now.upstreams.get_mut("up") {
            u.requests = 4;
        }
        now.unmatched = 5;
        let kept = without_idle(&earlier);
        assert_eq!(kept.routes.len(), 1);
        assert!(kept.upstreams.is_empty());
        assert_eq!(now.since(&kept), now.since(&earlier));
    }
}
