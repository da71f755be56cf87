//! Prometheus metrics of the manager: request counts and latency histograms of the
//! admin API by method, route template and status (bounded labels), and the store's
//! connection pool.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

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
        out.push_str(
            "# HELP fleetgate_api_requests_total Admin API requests by method, route and status.\n",
        );
        out.push_str("# TYPE fleetgate_api_requests_total counter\n");
        for ((m, r, st), s) in &map {
            let _ = writeln!(
                out,
                "fleetgate_api_requests_total{{method=\"{m}\",route=\"{}\",status=\"{st}\"}} {}",
                escape(r),
                s.count
            );
        }
        out.push_str("# HELP fleetgate_api_request_duration_seconds Admin API latency.\n");
        out.push_str("# TYPE fleetgate_api_request_duration_seconds histogram\n");
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
            let labels = format!("method=\"{m}\",route=\"{}\"", escape(r));
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "fleetgate_api_request_duration_seconds_bucket{{{labels},le=\"{b}\"}} {}",
                    s.buckets[i]
                );
            }
            let _ = writeln!(
                out,
                "fleetgate_api_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
                s.count
            );
            let _ = writeln!(
                out,
                "fleetgate_api_request_duration_seconds_sum{{{labels}}} {}",
                s.sum
            );
            let _ = writeln!(
                out,
                "fleetgate_api_request_duration_seconds_count{{{labels}}} {}",
                s.count
            );
        }
        out.push_str("# HELP fleetgate_store_pool_connections Store connections by state.\n");
        out.push_str("# TYPE fleetgate_store_pool_connections gauge\n");
        let _ = writeln!(
            out,
            "fleetgate_store_pool_connections{{state=\"open\"}} {}",
            pool.size
        );
        let _ = writeln!(
            out,
            "fleetgate_store_pool_connections{{state=\"idle\"}} {}",
            pool.idle
        );
        let _ = writeln!(
            out,
            "fleetgate_store_pool_connections{{state=\"max\"}} {}",
            pool.max
        );
        out.push_str("# HELP fleetgate_uptime_seconds Seconds since this process started.\n");
        out.push_str("# TYPE fleetgate_uptime_seconds gauge\n");
        let _ = writeln!(out, "fleetgate_uptime_seconds {uptime_secs:.3}");
        out
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
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
