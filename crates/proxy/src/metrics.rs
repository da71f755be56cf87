//! Gateway metrics per route and per upstream, kept across configuration
//! revisions and rendered in the Prometheus text format. Labels are route ids and
//! upstream names only, so cardinality is bounded by the configuration.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

const BUCKETS_MS: [u64; 12] = [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 10000];

#[derive(Default)]
pub struct RouteMetrics {
    /// Responses by status class 1xx..5xx.
    pub by_class: [AtomicU64; 5],
    pub rate_limited: AtomicU64,
    latency: [AtomicU64; BUCKETS_MS.len()],
    latency_sum_us: AtomicU64,
    count: AtomicU64,
}

impl RouteMetrics {
    pub fn observe(&self, status: u16, micros: u64) {
        let class = usize::from((status / 100).clamp(1, 5)) - 1;
        self.by_class[class].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us.fetch_add(micros, Ordering::Relaxed);
        let ms = micros / 1000;
        if let Some(i) = BUCKETS_MS.iter().position(|b| ms < *b) {
            self.latency[i].fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[derive(Default)]
pub struct UpstreamMetrics {
    pub requests: AtomicU64,
    pub failures: AtomicU64,
    pub retries: AtomicU64,
    pub breaker_rejections: AtomicU64,
}

/// Running totals by route id or upstream name.
pub type Counters = Vec<(String, u64)>;

/// All metric series of one gateway.
#[derive(Default)]
pub struct MetricsRegistry {
    routes: Mutex<BTreeMap<String, Arc<RouteMetrics>>>,
    upstreams: Mutex<BTreeMap<String, Arc<UpstreamMetrics>>>,
    pub unmatched: AtomicU64,
}

impl MetricsRegistry {
    pub fn route(&self, id: &str) -> Arc<RouteMetrics> {
        self.routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id.to_string())
            .or_default()
            .clone()
    }

    pub fn upstream(&self, name: &str) -> Arc<UpstreamMetrics> {
        self.upstreams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(name.to_string())
            .or_default()
            .clone()
    }

    /// Rate-limited responses per route and failed attempts per upstream, so far.
    pub fn event_counters(&self) -> (Counters, Counters) {
        let routes = self
            .routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, m)| (k.clone(), m.rate_limited.load(Ordering::Relaxed)))
            .collect();
        let upstreams = self
            .upstreams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, m)| (k.clone(), m.failures.load(Ordering::Relaxed)))
            .collect();
        (routes, upstreams)
    }

    /// Forgets series of routes and upstreams no longer configured.
    pub fn retain<'a>(
        &self,
        routes: impl Iterator<Item = &'a str>,
        upstreams: impl Iterator<Item = &'a str>,
    ) {
        let keep: std::collections::HashSet<&str> = routes.collect();
        self.routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|k, _| keep.contains(k.as_str()));
        let keep: std::collections::HashSet<&str> = upstreams.collect();
        self.upstreams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|k, _| keep.contains(k.as_str()));
    }

    pub fn render(&self, out: &mut String) {
        let routes = self
            .routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        out.push_str("# HELP fleetgate_gateway_requests_total Gateway responses by route and status class.\n");
        out.push_str("# TYPE fleetgate_gateway_requests_total counter\n");
        for (id, m) in &routes {
            for (i, c) in m.by_class.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "fleetgate_gateway_requests_total{{route=\"{}\",class=\"{}xx\"}} {}",
                    esc(id),
                    i + 1,
                    c.load(Ordering::Relaxed)
                );
            }
        }
        let _ = writeln!(
            out,
            "fleetgate_gateway_requests_total{{route=\"\",class=\"4xx\"}} {}",
            self.unmatched.load(Ordering::Relaxed)
        );
        out.push_str("# HELP fleetgate_gateway_rate_limited_total Requests refused by a route's rate limit.\n");
        out.push_str("# TYPE fleetgate_gateway_rate_limited_total counter\n");
        for (id, m) in &routes {
            let _ = writeln!(
                out,
                "fleetgate_gateway_rate_limited_total{{route=\"{}\"}} {}",
                esc(id),
                m.rate_limited.load(Ordering::Relaxed)
            );
        }
        out.push_str(
            "# HELP fleetgate_gateway_request_duration_seconds Gateway latency by route.\n",
        );
        out.push_str("# TYPE fleetgate_gateway_request_duration_seconds histogram\n");
        for (id, m) in &routes {
            let mut cumulative = 0;
            for (i, b) in BUCKETS_MS.iter().enumerate() {
                cumulative += m.latency[i].load(Ordering::Relaxed);
                let _ = writeln!(out, "fleetgate_gateway_request_duration_seconds_bucket{{route=\"{}\",le=\"{}\"}} {cumulative}", esc(id), *b as f64 / 1000.0);
            }
            let count = m.count.load(Ordering::Relaxed);
            let _ = writeln!(out, "fleetgate_gateway_request_duration_seconds_bucket{{route=\"{}\",le=\"+Inf\"}} {count}", esc(id));
            let _ = writeln!(
                out,
                "fleetgate_gateway_request_duration_seconds_sum{{route=\"{}\"}} {}",
                esc(id),
                m.latency_sum_us.load(Ordering::Relaxed) as f64 / 1e6
            );
            let _ = writeln!(
                out,
                "fleetgate_gateway_request_duration_seconds_count{{route=\"{}\"}} {count}",
                esc(id)
            );
        }
        let ups = self
            .upstreams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for (metric, help, get) in [
            (
                "fleetgate_upstream_requests_total",
                "Attempts sent to an upstream.",
                (|m: &UpstreamMetrics| m.requests.load(Ordering::Relaxed))
                    as fn(&UpstreamMetrics) -> u64,
            ),
            (
                "fleetgate_upstream_failures_total",
                "Failed attempts (errors, timeouts, 5xx).",
                |m| m.failures.load(Ordering::Relaxed),
            ),
            (
                "fleetgate_upstream_retries_total",
                "Retried attempts.",
                |m| m.retries.load(Ordering::Relaxed),
            ),
            (
                "fleetgate_upstream_breaker_rejections_total",
                "Requests refused by an open circuit breaker.",
                |m| m.breaker_rejections.load(Ordering::Relaxed),
            ),
        ] {
            let _ = writeln!(out, "# HELP {metric} {help}\n# TYPE {metric} counter");
            for (name, m) in &ups {
                let _ = writeln!(out, "{metric}{{upstream=\"{}\"}} {}", esc(name), get(m));
            }
        }
    }
}

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}
