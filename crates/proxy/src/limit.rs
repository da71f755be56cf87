//! Per-route rate limits: a fixed window per key (`fleetgate_core::ratelimit`),
//! counted in this process or, with Redis configured, across every gateway.
//!
//! A route's counters live as long as its limit stays the same: a new revision
//! that keeps the route's `rate_limit` keeps them (see `compiled.rs`), so a
//! configuration change does not hand every client a fresh window.

use std::time::Duration;

use fleetgate_core::ratelimit::{FixedWindow, Window};
pub use fleetgate_core::ratelimit::{Verdict, MAX_KEYS};
use fleetgate_shared::RedisCounter;

/// Counters of one route.
pub struct RouteLimiter {
    pub max: u32,
    pub window_ms: u64,
    counts: FixedWindow,
}

impl RouteLimiter {
    pub fn new(max: u32, window_ms: u64) -> Self {
        Self::with_max_keys(max, window_ms, MAX_KEYS)
    }

    pub fn with_max_keys(max: u32, window_ms: u64, max_keys: usize) -> Self {
        let counts = FixedWindow::with_max_keys(window_ms, max_keys);
        Self {
            max,
            window_ms: counts.window_ms(),
            counts,
        }
    }

    /// Keys tracked now (the overflow counter included).
    pub fn tracked_keys(&self) -> usize {
        self.counts.tracked_keys()
    }

    pub fn check(&self, key: &str, now: u64) -> Verdict {
        let (count, window) = self.counts.hit(key, now);
        Verdict::of(count, self.max, window.ends_at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_key_per_window() {
        let l = RouteLimiter::new(2, 1000);
        assert_eq!(
            l.check("a", 10),
            Verdict {
                allowed: true,
                remaining: 1,
                reset_at: 1000
            }
        );
        assert!(l.check("a", 20).allowed);
        assert_eq!(
            l.check("a", 30),
            Verdict {
                allowed: false,
                remaining: 0,
                reset_at: 1000
            }
        );
        assert!(l.check("b", 30).allowed);
        assert!(l.check("a", 1000).allowed);
    }

    #[test]
    fn keys_a_client_invents_are_bounded_and_still_limited() {
        let l = RouteLimiter::with_max_keys(3, 1000, 100);
        for i in 0..100 {
            assert!(l.check(&format!("k{i}"), 10).allowed);
        }
        // Past the bound, new keys share one counter of the same limit.
        let admitted = (0..1000)
            .filter(|i| l.check(&format!("new{i}"), 20).allowed)
            .count();
        assert_eq!(admitted, 3);
        assert!(l.tracked_keys() <= 101, "{}", l.tracked_keys());
    }
}

/// Rate-limit counters shared by every gateway on one Redis: one atomic `INCR`
/// per request on a key per route, caller and window, so all gateways together
/// admit exactly the limit. When Redis cannot answer, the request is admitted
/// (fail-open) or refused (fail-closed) as configured, and an event is logged.
pub struct SharedCounter {
    counter: RedisCounter,
    /// Set from the configuration (`rate_limits.fail_open`); may change at any time.
    fail_open: std::sync::atomic::AtomicBool,
    last_error_report: std::sync::atomic::AtomicU64,
    last_event: std::sync::atomic::AtomicU64,
    failing: std::sync::atomic::AtomicBool,
    events: Option<std::sync::Arc<dyn fleetgate_core::events::EventSink>>,
}

/// While Redis stays unavailable, `rate_limit.redis_unavailable` is repeated this often.
const REDIS_EVENT_REPEAT_MS: u64 = 5 * 60 * 1000;

/// Why a shared count could not be taken.
#[derive(Debug)]
pub struct SharedCounterError(pub String);

impl SharedCounter {
    pub fn new(
        url: &str,
        fail_open: bool,
        events: Option<std::sync::Arc<dyn fleetgate_core::events::EventSink>>,
    ) -> Result<Self, String> {
        Ok(Self {
            counter: RedisCounter::open(
                url,
                Duration::from_millis(500),
                Duration::from_millis(250),
            )
            .map_err(|e| e.0)?,
            fail_open: std::sync::atomic::AtomicBool::new(fail_open),
            last_error_report: std::sync::atomic::AtomicU64::new(0),
            last_event: std::sync::atomic::AtomicU64::new(0),
            failing: std::sync::atomic::AtomicBool::new(false),
            events,
        })
    }

    /// Whether requests are admitted while Redis cannot answer.
    pub fn fail_open(&self) -> bool {
        self.fail_open.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn set_fail_open(&self, fail_open: bool) {
        self.fail_open
            .store(fail_open, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether the last request to Redis failed.
    pub fn failing(&self) -> bool {
        self.failing.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Counts one request of `key` in the window of `limiter` at `now`.
    pub async fn check(
        &self,
        route: &str,
        limiter: &RouteLimiter,
        key: &str,
        now: u64,
        wall_ms: i64,
    ) -> Result<Verdict, SharedCounterError> {
        // Windows are aligned on wall time so that every gateway agrees on them.
        let wall = wall_ms.max(0) as u64;
        let window = Window::at(wall, limiter.window_ms);
        let rkey = format!("fleetgate:rl:{route}:{}:{key}", window.index);
        match self.counter.incr(&rkey, limiter.window_ms * 2).await {
            Ok(count) => {
                self.recovered();
                let until_reset = window.ends_at.saturating_sub(wall);
                Ok(Verdict::of(count, limiter.max, now + until_reset))
            }
            Err(e) => Err(SharedCounterError(e.0)),
        }
    }

    /// After an outage: one `rate_limit.redis_recovered` event.
    fn recovered(&self) {
        use fleetgate_core::events::{emit, NewEvent, Severity};
        use std::sync::atomic::Ordering;
        if self.failing.load(Ordering::Relaxed) && self.failing.swap(false, Ordering::Relaxed) {
            self.last_event.store(0, Ordering::Relaxed);
            emit(
                self.events.as_ref(),
                NewEvent::new(
                    "rate_limit.redis_recovered",
                    Severity::Info,
                    "shared rate limits are available again",
                ),
            );
        }
    }

    /// Logs `rate_limit.redis_unavailable` at most every 10 seconds, and raises it
    /// as an event when an outage starts and every 5 minutes while it lasts.
    pub fn report(&self, err: &SharedCounterError, now: u64) {
        use fleetgate_core::events::{emit, NewEvent, Severity};
        use std::sync::atomic::Ordering;
        self.failing.store(true, Ordering::Relaxed);
        let last = self.last_event.load(Ordering::Relaxed);
        if (last == 0 || now.saturating_sub(last) >= REDIS_EVENT_REPEAT_MS)
            && self
                .last_event
                .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let (severity, outcome) = if self.fail_open() {
                (Severity::Warning, "admitted (fail-open)")
            } else {
                (Severity::Critical, "refused (fail-closed)")
            };
            emit(
                self.events.as_ref(),
                NewEvent::new(
                    "rate_limit.redis_unavailable",
                    severity,
                    format!("shared rate limits unavailable; requests are {outcome}"),
                )
                .details(serde_json::json!({"fail_open": self.fail_open(), "error": err.0})),
            );
        }
        let last = self
            .last_error_report
            .load(std::sync::atomic::Ordering::Relaxed);
        if last == 0 || now.saturating_sub(last) >= 10_000 {
            self.last_error_report
                .store(now, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(
                target: "fleetgate::events",
                event = "rate_limit.redis_unavailable",
                fail_open = self.fail_open(),
                error = %err.0,
                "shared rate limits unavailable; requests are {}",
                if self.fail_open() { "admitted (fail-open)" } else { "refused (fail-closed)" }
            );
        }
    }
}
