//! Traffic counters of a data plane and what the manager derives from them: rates,
//! error ratios and latency quantiles over a window, as the difference of two
//! readings of cumulative counters.
//!
//! Latency is kept in a fixed-bucket histogram (bounds in microseconds), so a data
//! plane records a request with a handful of relaxed atomic adds and any window's
//! quantiles can be estimated later from two readings.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Upper bounds (inclusive, µs) of the latency buckets; one more bucket counts the rest.
pub const LATENCY_BUCKETS_US: [u64; 18] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000, 30_000_000, 60_000_000,
];

/// Number of buckets including the overflow bucket.
pub const BUCKETS: usize = LATENCY_BUCKETS_US.len() + 1;

/// The bucket a latency of `micros` falls in.
pub fn bucket_of(micros: u64) -> usize {
    LATENCY_BUCKETS_US.partition_point(|b| *b < micros)
}

/// A reading of a latency histogram: per-bucket counts (not cumulative), their sum
/// and count.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Histogram {
    pub buckets: [u64; BUCKETS],
    pub sum_us: u64,
    pub count: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            buckets: [0; BUCKETS],
            sum_us: 0,
            count: 0,
        }
    }
}

impl Histogram {
    pub fn record(&mut self, micros: u64) {
        self.buckets[bucket_of(micros)] += 1;
        self.sum_us += micros;
        self.count += 1;
    }

    /// What was recorded after `earlier`, a reading of the same histogram. Counters
    /// that went backwards (a data plane restarted) count from zero.
    pub fn since(&self, earlier: &Histogram) -> Histogram {
        if self.count < earlier.count {
            return self.clone();
        }
        let mut out = Histogram::default();
        for (i, b) in out.buckets.iter_mut().enumerate() {
            *b = self.buckets[i].saturating_sub(earlier.buckets[i]);
        }
        out.sum_us = self.sum_us.saturating_sub(earlier.sum_us);
        out.count = self.count - earlier.count;
        out
    }

    pub fn add(&mut self, other: &Histogram) {
        for (i, b) in self.buckets.iter_mut().enumerate() {
            *b += other.buckets[i];
        }
        self.sum_us += other.sum_us;
        self.count += other.count;
    }

    /// The `q` quantile (0..=1) in milliseconds, interpolated linearly inside its
    /// bucket; `None` when nothing was recorded. Values in the overflow bucket are
    /// reported as the last bound.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        let total: u64 = self.buckets.iter().sum();
        if total == 0 {
            return None;
        }
        let q = q.clamp(0.0, 1.0);
        let rank = (q * total as f64).max(1.0);
        let mut seen = 0u64;
        for (i, n) in self.buckets.iter().enumerate() {
            if *n == 0 {
                continue;
            }
            if (seen + n) as f64 >= rank {
                let lower = if i == 0 {
                    0.0
                } else {
                    LATENCY_BUCKETS_US[i - 1] as f64
                };
                let Some(upper) = LATENCY_BUCKETS_US.get(i).map(|u| *u as f64) else {
                    return Some(lower / 1000.0);
                };
                let into = (rank - seen as f64) / *n as f64;
                return Some((lower + (upper - lower) * into) / 1000.0);
            }
            seen += n;
        }
        Some(*LATENCY_BUCKETS_US.last().unwrap_or(&0) as f64 / 1000.0)
    }

    pub fn mean_ms(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum_us as f64 / self.count as f64 / 1000.0)
    }
}

/// Cumulative counters of one route.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteCounters {
    /// Responses by status class 1xx..5xx.
    pub by_class: [u64; 5],
    pub rate_limited: u64,
    pub latency: Histogram,
}

impl RouteCounters {
    pub fn requests(&self) -> u64 {
        self.by_class.iter().sum()
    }

    pub fn since(&self, earlier: &RouteCounters) -> RouteCounters {
        if self.requests() < earlier.requests() {
            return self.clone();
        }
        let mut by_class = [0; 5];
        for (i, c) in by_class.iter_mut().enumerate() {
            *c = self.by_class[i].saturating_sub(earlier.by_class[i]);
        }
        RouteCounters {
            by_class,
            rate_limited: self.rate_limited.saturating_sub(earlier.rate_limited),
            latency: self.latency.since(&earlier.latency),
        }
    }

    pub fn add(&mut self, other: &RouteCounters) {
        for (i, c) in self.by_class.iter_mut().enumerate() {
            *c += other.by_class[i];
        }
        self.rate_limited += other.rate_limited;
        self.latency.add(&other.latency);
    }
}

/// Cumulative counters of one upstream (per attempt, retries included).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpstreamCounters {
    pub requests: u64,
    /// Failed attempts: connection errors, timeouts and 5xx answers.
    pub failures: u64,
    /// Attempts that got no answer within the request timeout (also failures).
    pub timeouts: u64,
    pub retries: u64,
    pub breaker_rejections: u64,
    /// Time to the upstream's response head.
    pub latency: Histogram,
}

impl UpstreamCounters {
    pub fn since(&self, earlier: &UpstreamCounters) -> UpstreamCounters {
        if self.requests < earlier.requests {
            return self.clone();
        }
        UpstreamCounters {
            requests: self.requests - earlier.requests,
            failures: self.failures.saturating_sub(earlier.failures),
            timeouts: self.timeouts.saturating_sub(earlier.timeouts),
            retries: self.retries.saturating_sub(earlier.retries),
            breaker_rejections: self
                .breaker_rejections
                .saturating_sub(earlier.breaker_rejections),
            latency: self.latency.since(&earlier.latency),
        }
    }
}

/// One reading of every counter of a data plane.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrafficCounters {
    pub routes: BTreeMap<String, RouteCounters>,
    pub upstreams: BTreeMap<String, UpstreamCounters>,
    /// Requests no route matched.
    pub unmatched: u64,
}

impl TrafficCounters {
    /// Everything counted after `earlier`; routes and upstreams that appeared since
    /// count from zero, those that disappeared are left out.
    pub fn since(&self, earlier: &TrafficCounters) -> TrafficCounters {
        TrafficCounters {
            routes: self
                .routes
                .iter()
                .map(|(k, v)| {
                    let d = match earlier.routes.get(k) {
                        Some(e) => v.since(e),
                        None => v.clone(),
                    };
                    (k.clone(), d)
                })
                .collect(),
            upstreams: self
                .upstreams
                .iter()
                .map(|(k, v)| {
                    let d = match earlier.upstreams.get(k) {
                        Some(e) => v.since(e),
                        None => v.clone(),
                    };
                    (k.clone(), d)
                })
                .collect(),
            unmatched: self.unmatched.saturating_sub(earlier.unmatched),
        }
    }

    /// All routes together; unmatched requests count as 4xx answers without latency.
    pub fn total(&self) -> RouteCounters {
        let mut t = RouteCounters::default();
        for r in self.routes.values() {
            t.add(r);
        }
        t.by_class[3] += self.unmatched;
        t
    }
}

/// Latency quantiles of a window, in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Quantiles {
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
}

impl Quantiles {
    pub fn of(h: &Histogram) -> Self {
        Self {
            p50: h.quantile_ms(0.50).map(round3),
            p95: h.quantile_ms(0.95).map(round3),
            p99: h.quantile_ms(0.99).map(round3),
        }
    }
}

/// Rounds to three decimals, enough for milliseconds and ratios in JSON.
pub fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// `part / whole`, 0 when `whole` is 0.
pub fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        round3(part as f64 / whole as f64)
    }
}

/// Names of the series the store keeps and `/api/v1/metrics/series` answers.
pub const SERIES_METRICS: [&str; 14] = [
    "requests",
    "requests_per_second",
    "errors",
    "error_rate",
    "client_errors",
    "rate_limited",
    "rate_limited_per_second",
    "latency_p50_ms",
    "latency_p95_ms",
    "latency_p99_ms",
    "upstream_failures",
    "upstream_failure_rate",
    "upstream_timeouts",
    "upstream_retries",
];

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn buckets_are_inclusive_upper_bounds() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(100), 0);
        assert_eq!(bucket_of(101), 1);
        assert_eq!(bucket_of(60_000_000), LATENCY_BUCKETS_US.len() - 1);
        assert_eq!(bucket_of(60_000_001), LATENCY_BUCKETS_US.len());
        assert_eq!(bucket_of(u64::MAX), LATENCY_BUCKETS_US.len());
    }

    #[test]
    fn quantiles_of_known_distribution() {
        let mut h = Histogram::default();
        assert_eq!(h.quantile_ms(0.5), None);
        // 90 fast requests (≤100 µs) and 10 slow ones (between 50 and 100 ms).
        for _ in 0..90 {
            h.record(80);
        }
        for _ in 0..10 {
            h.record(75_000);
        }
        let p50 = h.quantile_ms(0.5).expect("p50");
        assert!(p50 <= 0.1, "p50 {p50}");
        let p99 = h.quantile_ms(0.99).expect("p99");
        assert!((50.0..=100.0).contains(&p99), "p99 {p99}");
        assert_eq!(
            h.mean_ms().map(round3),
            Some(round3((90.0 * 80.0 + 750_000.0) / 100.0 / 1000.0))
        );
    }

    #[test]
    fn a_restarted_counter_counts_from_zero() {
        let mut before = TrafficCounters::default();
        before.routes.insert(
            "r".into(),
            RouteCounters {
                by_class: [0, 50, 0, 0, 0],
                ..Default::default()
            },
        );
        let mut after = TrafficCounters::default();
        after.routes.insert(
            "r".into(),
            RouteCounters {
                by_class: [0, 7, 0, 0, 0],
                ..Default::default()
            },
        );
        assert_eq!(after.since(&before).routes["r"].requests(), 7);
    }

    proptest! {
        #[test]
        fn quantile_lies_within_the_recorded_range(
            values in proptest::collection::vec(0u64..100_000_000, 1..200),
            q in 0.0f64..=1.0,
        ) {
            let mut h = Histogram::default();
            for v in &values {
                h.record(*v);
            }
            let got = h.quantile_ms(q).expect("non-empty");
            let min = *values.iter().min().expect("min");
            let max = *values.iter().max().expect("max");
            // The estimate stays within the bounds of the buckets holding min and max.
            let lo = match bucket_of(min) { 0 => 0, i => LATENCY_BUCKETS_US[i - 1] };
            let hi = LATENCY_BUCKETS_US.get(bucket_of(max)).copied()
                .unwrap_or(*LATENCY_BUCKETS_US.last().expect("last"));
            prop_assert!(got * 1000.0 >= lo as f64 - 1e-6 && got * 1000.0 <= hi as f64 + 1e-6,
                "q{q} = {got} ms outside [{lo}, {hi}] µs");
        }

        #[test]
        fn quantiles_are_monotonic(values in proptest::collection::vec(0u64..10_000_000, 1..200)) {
            let mut h = Histogram::default();
            for v in &values {
                h.record(*v);
            }
            let q = Quantiles::of(&h);
            prop_assert!(q.p50 <= q.p95 && q.p95 <= q.p99);
        }

        #[test]
        fn since_then_add_gives_back_the_later_reading(
            a in proptest::collection::vec(0u64..10_000_000, 0..50),
            b in proptest::collection::vec(0u64..10_000_000, 0..50),
        ) {
            let mut earlier = Histogram::default();
            for v in &a { earlier.record(*v); }
            let mut later = earlier.clone();
            for v in &b { later.record(*v); }
            let mut d = later.since(&earlier);
            prop_assert_eq!(d.count, b.len() as u64);
            d.add(&earlier);
            prop_assert_eq!(d, later);
        }
    }
}
