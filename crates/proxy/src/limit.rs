//! Per-route rate limits counted in this process: a fixed window per key.
//!
//! A route's counters live as long as its limit stays the same: a new revision
//! that keeps the route's `rate_limit` keeps them (see `compiled.rs`), so a
//! configuration change does not hand every client a fresh window.
//!
//! Keys may be chosen by clients (`api_key`, `header:<name>`), so memory is
//! bounded: a route tracks at most [`MAX_KEYS`] keys; past that, keys it has not
//! seen in this window share one overflow counter (so inventing keys buys nothing),
//! and stale entries are swept at most once per window (never a scan per request).

use std::collections::HashMap;
use std::sync::Mutex;

/// Keys one route tracks before new ones share the overflow counter.
pub const MAX_KEYS: usize = 100_000;

/// The key that keys past [`MAX_KEYS`] are counted under.
const OVERFLOW: &str = "\u{0}overflow";

struct Counters {
    map: HashMap<Box<str>, (u64, u32)>,
    /// The window in which stale entries were last swept.
    swept: u64,
}

/// Counters of one route.
pub struct RouteLimiter {
    pub max: u32,
    pub window_ms: u64,
    max_keys: usize,
    counters: Mutex<Counters>,
}

/// The limiter's answer for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    pub remaining: u32,
    /// Monotonic milliseconds at which the window ends.
    pub reset_at: u64,
}

impl RouteLimiter {
    pub fn new(max: u32, window_ms: u64) -> Self {
        Self::with_max_keys(max, window_ms, MAX_KEYS)
    }

    pub fn with_max_keys(max: u32, window_ms: u64, max_keys: usize) -> Self {
        Self {
            max,
            window_ms: window_ms.max(1),
            max_keys: max_keys.max(1),
            counters: Mutex::new(Counters {
                map: HashMap::new(),
                swept: u64::MAX,
            }),
        }
    }

    /// Keys tracked now (the overflow counter included).
    pub fn tracked_keys(&self) -> usize {
        self.counters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map
            .len()
    }

    pub fn check(&self, key: &str, now: u64) -> Verdict {
        let window = now / self.window_ms;
        let reset_at = (window + 1) * self.window_ms;
        let mut guard = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        let c = &mut *guard;
        let mut key = key;
        if !c.map.contains_key(key) && c.map.len() >= self.max_keys {
            if c.swept != window {
                c.swept = window;
                c.map.retain(|_, (w, _)| *w == window);
            }
            if c.map.len() >= self.max_keys {
                key = OVERFLOW;
            }
        }
        let count = match c.map.get_mut(key) {
            Some(entry) => {
                if entry.0 != window {
                    *entry = (window, 0);
                }
                entry.1 = entry.1.saturating_add(1);
                entry.1
            }
            None => {
                c.map.insert(key.into(), (window, 1));
                1
            }
        };
        Verdict {
            allowed: count <= self.max,
            remaining: self.max.saturating_sub(count),
            reset_at,
        }
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
        // Keys already known keep their own counters.
        assert!(l.check("k0", 30).allowed);
        // In the next window the stale entries are swept once and new keys fit again.
        assert!(l.check("fresh", 1500).allowed);
        assert_eq!(l.tracked_keys(), 1);
    }
}

/// Rate-limit counters shared by every gateway on one Redis: one atomic `INCR`
/// per request on a key per route, caller and window, so all gateways together
/// admit exactly the limit. When Redis cannot answer, the request is admitted
/// (fail-open) or refused (fail-closed) as configured, and an event is logged.
pub struct SharedCounter {
    client: redis::Client,
    conn: tokio::sync::Mutex<Option<redis::aio::MultiplexedConnection>>,
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
            client: redis::Client::open(url).map_err(|e| format!("invalid Redis URL: {e}"))?,
            conn: tokio::sync::Mutex::new(None),
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

    async fn connection(&self) -> Result<redis::aio::MultiplexedConnection, SharedCounterError> {
        let mut guard = self.conn.lock().await;
        if let Some(c) = guard.as_ref() {
            return Ok(c.clone());
        }
        let c = tokio::time::timeout(
            std::time::Duration::from_millis(500),
            self.client.get_multiplexed_async_connection(),
        )
        .await
        .map_err(|_| SharedCounterError("connecting to Redis timed out".into()))?
        .map_err(|e| SharedCounterError(format!("cannot connect to Redis: {e}")))?;
        *guard = Some(c.clone());
        Ok(c)
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
        let window = (wall_ms.max(0) as u64) / limiter.window_ms;
        let rkey = format!("fleetgate:rl:{route}:{window}:{key}");
        let mut conn = self.connection().await?;
        let res: redis::RedisResult<(u32,)> = tokio::time::timeout(
            std::time::Duration::from_millis(250),
            redis::pipe()
                .atomic()
                .incr(&rkey, 1u32)
                .pexpire(&rkey, (limiter.window_ms * 2) as i64)
                .ignore()
                .query_async(&mut conn),
        )
        .await
        .unwrap_or_else(|_| {
            Err(redis::RedisError::from((
                redis::ErrorKind::IoError,
                "Redis timed out",
            )))
        });
        match res {
            Ok((count,)) => {
                self.recovered();
                let wall_reset = (window + 1) * limiter.window_ms;
                let until_reset = wall_reset.saturating_sub(wall_ms.max(0) as u64);
                Ok(Verdict {
                    allowed: count <= limiter.max,
                    remaining: limiter.max.saturating_sub(count),
                    reset_at: now + until_reset,
                })
            }
            Err(e) => {
                *self.conn.lock().await = None;
                Err(SharedCounterError(format!("Redis error: {e}")))
            }
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
