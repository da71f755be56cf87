//! The admin API's rate limit: a fixed one-minute window per API key, session or
//! (for anonymous calls) client IP (`fleetgate_core::ratelimit`). Counters live in
//! this process, or in Redis when one is configured so that every manager replica
//! shares them. Redis errors fail open: the admin API stays usable when Redis is
//! down, counting locally meanwhile.

use std::time::Duration;

use fleetgate_core::ratelimit::{FixedWindow, Verdict, Window};
use fleetgate_shared::RedisCounter;

/// What the limiter decided for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub limit: u32,
    pub remaining: u32,
    /// Unix seconds at which the window resets.
    pub reset: i64,
}

pub struct ApiRateLimiter {
    local: FixedWindow,
    redis: Option<RedisCounter>,
}

const WINDOW_MS: u64 = 60_000;

impl ApiRateLimiter {
    pub fn new(redis: Option<redis::Client>) -> Self {
        Self {
            local: FixedWindow::new(WINDOW_MS),
            redis: redis
                .map(|c| RedisCounter::new(c, Duration::from_secs(1), Duration::from_secs(1))),
        }
    }

    /// Counts one request of `key` at `now_ms` (Unix milliseconds) against `limit`
    /// per minute.
    pub async fn check(&self, key: &str, limit: u32, now_ms: i64) -> Decision {
        let now = now_ms.max(0) as u64;
        let window = Window::at(now, WINDOW_MS);
        let count = match self.redis_count(key, window).await {
            Some(n) => n,
            None => self.local.hit(key, now).0,
        };
        let v = Verdict::of(count, limit, window.ends_at);
        Decision {
            allowed: v.allowed,
            limit,
            remaining: v.remaining,
            reset: (v.reset_at / 1000) as i64,
        }
    }

    async fn redis_count(&self, key: &str, window: Window) -> Option<u32> {
        let redis = self.redis.as_ref()?;
        let rkey = format!("fleetgate:api_rl:{key}:{}", window.index);
        match redis.incr(&rkey, 2 * WINDOW_MS).await {
            Ok(n) => Some(n),
            Err(e) => {
                tracing::warn!(error = %e, "redis unavailable for the API rate limit; counting locally");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn counts_per_key_and_window() {
        let l = ApiRateLimiter::new(None);
        let t = 120_000;
        for i in 1..=3 {
            let d = l.check("a", 3, t).await;
            assert!(d.allowed);
            assert_eq!(d.remaining, 3 - i);
            assert_eq!(d.reset, 180);
        }
        assert!(!l.check("a", 3, t + 1).await.allowed);
        assert!(l.check("b", 3, t).await.allowed);
        assert!(
            l.check("a", 3, t + WINDOW_MS as i64).await.allowed,
            "a new window starts over"
        );
    }

    #[tokio::test]
    async fn replicas_on_one_redis_share_the_count_and_fall_back_locally() {
        let Ok(url) = std::env::var("FLEETGATE_TEST_REDIS_URL") else {
            eprintln!("skipping: FLEETGATE_TEST_REDIS_URL is not set");
            return;
        };
        let client = || Some(redis::Client::open(url.as_str()).expect("URL"));
        let (a, b) = (ApiRateLimiter::new(client()), ApiRateLimiter::new(client()));
        let key = format!(
            "test-{}-{}",
            std::process::id(),
            fleetgate_core::time::now_ms()
        );
        let t = fleetgate_core::time::now_ms();
        assert!(a.check(&key, 2, t).await.allowed);
        assert_eq!(b.check(&key, 2, t).await.remaining, 0);
        assert!(
            !a.check(&key, 2, t).await.allowed,
            "the third call of the minute"
        );
        // Without Redis (nothing listens on port 1) the count is local: fail-open.
        let down = ApiRateLimiter::new(Some(
            redis::Client::open("redis://127.0.0.1:1").expect("URL"),
        ));
        assert!(down.check(&key, 1, t).await.allowed);
        assert!(!down.check(&key, 1, t).await.allowed);
    }
}
