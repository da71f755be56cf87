//! Gateway metrics per route and per upstream, kept across configuration
//! revisions and rendered in the Prometheus text format. Labels are route ids and
//! upstream names only, so cardinality is bounded by the configuration.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use fleetgate_core::metrics::{
    bucket_of, Histogram, RouteCounters, TrafficCounters, UpstreamCounters, BUCKETS,
    LATENCY_BUCKETS_US,
};
use fleetgate_core::prom::{Encoder, Kind};

/// A latency histogram written with relaxed atomic adds. Its count is the sum of
/// its buckets (read, not kept): one write less per observation.
pub struct AtomicHistogram {
    buckets: [AtomicU64; BUCKETS],
    sum_us: AtomicU64,
}

impl Default for AtomicHistogram {
    fn default() -> Self {
        Self {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_us: AtomicU64::new(0),
        }
    }
}

impl AtomicHistogram {
    pub fn record(&self, micros: u64) {
        self.buckets[bucket_of(micros)].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(micros, Ordering::Relaxed);
    }

    pub fn read(&self) -> Histogram {
        let mut h = Histogram::default();
        for (i, b) in self.buckets.iter().enumerate() {
            h.buckets[i] = b.load(Ordering::Relaxed);
        }
        h.sum_us = self.sum_us.load(Ordering::Relaxed);
        // The count is the buckets' sum, so a reading is consistent in itself even
        // while requests are being recorded.
        h.count = h.buckets.iter().sum();
        h
    }
}

#[derive(Default)]
pub struct RouteMetrics {
    /// Responses by status class 1xx..5xx.
    pub by_class: [AtomicU64; 5],
    pub rate_limited: AtomicU64,
    latency: AtomicHistogram,
}

impl RouteMetrics {
    pub fn observe(&self, status: u16, micros: u64) {
        let class = usize::from((status / 100).clamp(1, 5)) - 1;
        self.by_class[class].fetch_add(1, Ordering::Relaxed);
        self.latency.record(micros);
    }

    fn read(&self) -> RouteCounters {
        RouteCounters {
            by_class: std::array::from_fn(|i| self.by_class[i].load(Ordering::Relaxed)),
            rate_limited: self.rate_limited.load(Ordering::Relaxed),
            latency: self.latency.read(),
        }
    }
}

#[derive(Default)]
pub struct UpstreamMetrics {
    pub requests: AtomicU64,
    pub failures: AtomicU64,
    pub timeouts: AtomicU64,
    pub retries: AtomicU64,
    pub breaker_rejections: AtomicU64,
    /// Time from sending an attempt to the upstream's response head (or timeout).
    pub latency: AtomicHistogram,
}

impl UpstreamMetrics {
    fn read(&self) -> UpstreamCounters {
        UpstreamCounters {
            requests: self.requests.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            timeouts: self.timeouts.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            breaker_rejections: self.breaker_rejections.load(Ordering::Relaxed),
            latency: self.latency.read(),
        }
    }
}

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

    /// A reading of every counter.
    pub fn traffic(&self) -> TrafficCounters {
        let routes = self
            .routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let upstreams = self
            .upstreams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        TrafficCounters {
            routes: routes.iter().map(|(k, m)| (k.clone(), m.read())).collect(),
            upstreams: upstreams
                .iter()
                .map(|(k, m)| (k.clone(), m.read()))
                .collect(),
            unmatched: self.unmatched.load(Ordering::Relaxed),
        }
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
        let t = self.traffic();
        let mut e = Encoder::new(out);
        e.family(
            "fleetgate_gateway_requests_total",
            "Gateway responses by route and status class.",
            Kind::Counter,
        );
        for (id, m) in &t.routes {
            for (class, c) in CLASSES.iter().zip(m.by_class) {
                e.sample(
                    "fleetgate_gateway_requests_total",
                    &[("route", id.as_str()), ("class", class)],
                    c,
                );
            }
        }
        e.sample(
            "fleetgate_gateway_requests_total",
            &[("route", ""), ("class", "4xx")],
            t.unmatched,
        );
        e.family(
            "fleetgate_gateway_rate_limited_total",
            "Requests refused by a route's rate limit.",
            Kind::Counter,
        );
        for (id, m) in &t.routes {
            e.sample(
                "fleetgate_gateway_rate_limited_total",
                &[("route", id.as_str())],
                m.rate_limited,
            );
        }
        e.family(
            "fleetgate_gateway_request_duration_seconds",
            "Gateway latency by route.",
            Kind::Histogram,
        );
        for (id, m) in &t.routes {
            histogram(
                &mut e,
                "fleetgate_gateway_request_duration_seconds",
                ("route", id.as_str()),
                &m.latency,
            );
        }
        for (metric, help_text, get) in [
            (
                "fleetgate_upstream_requests_total",
                "Attempts sent to an upstream.",
                (|m: &UpstreamCounters| m.requests) as fn(&UpstreamCounters) -> u64,
            ),
            (
                "fleetgate_upstream_failures_total",
                "Failed attempts (errors, timeouts, 5xx).",
                |m| m.failures,
            ),
            (
                "fleetgate_upstream_timeouts_total",
                "Attempts without an answer within the request timeout.",
                |m| m.timeouts,
            ),
            (
                "fleetgate_upstream_retries_total",
                "Retried attempts.",
                |m| m.retries,
            ),
            (
                "fleetgate_upstream_breaker_rejections_total",
                "Requests refused by an open circuit breaker.",
                |m| m.breaker_rejections,
            ),
        ] {
            e.family(metric, help_text, Kind::Counter);
            for (name, m) in &t.upstreams {
                e.sample(metric, &[("upstream", name.as_str())], get(m));
            }
        }
        e.family(
            "fleetgate_upstream_response_seconds",
            "Time to an upstream's response head.",
            Kind::Histogram,
        );
        for (name, m) in &t.upstreams {
            histogram(
                &mut e,
                "fleetgate_upstream_response_seconds",
                ("upstream", name.as_str()),
                &m.latency,
            );
        }
    }
}

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// One latency histogram in seconds, its buckets made cumulative.
fn histogram(e: &mut Encoder<'_>, metric: &str, label: (&str, &str), h: &Histogram) {
    let mut cumulative = 0;
    let buckets = LATENCY_BUCKETS_US.iter().zip(h.buckets).map(|(bound, n)| {
        cumulative += n;
        (*bound as f64 / 1e6, cumulative)
    });
    e.histogram(metric, &[label], buckets, h.sum_us as f64 / 1e6, h.count);
}
