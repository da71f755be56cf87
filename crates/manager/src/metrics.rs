//! Prometheus metrics of the manager: request counts and latency histograms of the
//! admin API by method, route template and status (bounded labels), and the store's
//! connection pool.

use std::collections::BTreeMap;
use std::sync::Mutex;

use fleetgate_core::prom::{Encoder, Kind};
use fleetgate_store::PoolStats;

const BUCKETS: [f64; 12] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Default, Clone)]
struct Series {
    count: u64,
    sum: f64,
    buckets: [u64; BUCKETS.len()],
}

/// Request counters and latency histograms.
#[derive(Default)]
pub struct HttpMetrics {
    series: Mutex<BTreeMap<(String, String, u16), Series>>,
}

/// Methods outside this list are counted as `other`, keeping label values bounded.
pub fn method_label(m: &http::Method) -> &'static str {
    match *m {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::PATCH => "PATCH",
        http::Method::DELETE => "DELETE",
        http::Method::HEAD => "HEAD",
        http::Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

impl HttpMetrics {
    pub fn observe(&self, method: &str, route: &str, status: u16, seconds: f64) {
        let mut map = self.series.lock().unwrap_or_else(|p| p.into_inner());
        let s = map
            .entry((method.to_string(), route.to_string(), status))
            .or_default();
        s.count += 1;
        s.sum += seconds;
        for (i, b) in BUCKETS.iter().enumerate() {
            if seconds <= *b {
                s.buckets[i] += 1;
            }
        }
    }

    /// Prometheus text exposition format.
    pub fn render(&self, pool: PoolStats, uptime_secs: f64) -> String {
        let map = self
            .series
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut out = String::with_capacity(4096);
        let mut e = Encoder::new(&mut out);
        e.family(
            "fleetgate_api_requests_total",
            "Admin API requests by method, route and status.",
            Kind::Counter,
        );
        for ((m, r, st), s) in &map {
            e.sample(
                "fleetgate_api_requests_total",
                &[
                    ("method", m.as_str()),
                    ("route", r.as_str()),
                    ("status", &st.to_string()),
                ],
                s.count,
            );
        }
        e.family(
            "fleetgate_api_request_duration_seconds",
            "Admin API latency.",
            Kind::Histogram,
        );
        let mut by_route: BTreeMap<(String, String), Series> = BTreeMap::new();
        for ((m, r, _), s) in &map {
            let agg = by_route.entry((m.clone(), r.clone())).or_default();
            agg.count += s.count;
            agg.sum += s.sum;
            for i in 0..BUCKETS.len() {
                agg.buckets[i] += s.buckets[i];
            }
        }
        for ((m, r), s) in &by_route {
            e.histogram(
                "fleetgate_api_request_duration_seconds",
                &[("method", m.as_str()), ("route", r.as_str())],
                BUCKETS.into_iter().zip(s.buckets),
                s.sum,
                s.count,
            );
        }
        e.family(
            "fleetgate_store_pool_connections",
            "Store connections by state.",
            Kind::Gauge,
        );
        for (state, n) in [("open", pool.size), ("idle", pool.idle), ("max", pool.max)] {
            e.sample("fleetgate_store_pool_connections", &[("state", state)], n);
        }
        e.family(
            "fleetgate_uptime_seconds",
            "Seconds since this process started.",
            Kind::Gauge,
        );
        e.sample(
            "fleetgate_uptime_seconds",
            &[],
            format_args!("{uptime_secs:.3}"),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histograms() {
        let m = HttpMetrics::default();
        m.observe("GET", "/api/v1/users", 200, 0.003);
        m.observe("GET", "/api/v1/users", 200, 0.2);
        m.observe("GET", "/api/v1/users", 404, 0.002);
        let text = m.render(
            PoolStats {
                size: 2,
                idle: 1,
                max: 8,
            },
            1.0,
        );
        assert!(text.contains(
            "fleetgate_api_requests_total{method=\"GET\",route=\"/api/v1/users\",status=\"200\"} 2"
        ));
        assert!(text.contains("fleetgate_api_request_duration_seconds_bucket{method=\"GET\",route=\"/api/v1/users\",le=\"0.005\"} 2"));
        assert!(text.contains("fleetgate_api_request_duration_seconds_count{method=\"GET\",route=\"/api/v1/users\"} 3"));
        assert!(text.contains("fleetgate_store_pool_connections{state=\"max\"} 8"));
    }
}
