//! The admin API's rate limit: a fixed one-minute window per API key, session or
//! (for anonymous calls) client IP. Counters live in this process, or in Redis when
//! one is configured so that every manager replica shares them. Redis errors fail
//! open: the admin API stays usable when Redis is down.

use std::collections::HashMap;
use std::sync::Mutex;

use redis::aio::MultiplexedConnection;

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
    local: Mutex<HashMap<String, (i64, u32)>>,
    redis: Option<redis::Client>,
    conn: tokio::sync::Mutex<Option<MultiplexedConnection>>,
}

const WINDOW_MS: i64 = 60_000;

impl ApiRateLimiter {
    pub fn new(redis: Option<redis::Client>) -> Self {
        Self {
            local: Mutex::new(HashMap::new()),
            redis,
            conn: tokio::sync::Mutex::new(None),
        }
    }

    /// Counts one request of `key` at `now_ms` against `limit` per minute.
    pub async fn check(&self, key: &str, limit: u32, now_ms: i64) -> Decision {
        let window = now_ms.div_euclid(WINDOW_MS);
        let reset = (window + 1) * WINDOW_MS / 1000;
        let count = match self.redis_count(key, window).await {
            Some(n) => n,
            None => self.local_count(key, window),
        };
        Decision {
            allowed: count <= limit,
            limit,
            remaining: limit.saturating_sub(count),
            reset,
        }
    }

    fn local_count(&self, key: &str, window: i64) -> u32 {
        let mut map = self.local.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > 100_000 {
            map.retain(|_, (w, _)| *w == window);
        }
        let entry = map.entry(key.to_string()).or_insert((window, 0));
        if entry.0 != window {
            *entry = (window, 0);
        }
        entry.1 = entry.1.saturating_add(1);
        entry.1
    }

    async fn redis_count(&self, key: &str, window: i64) -> Option<u32> {
        let client = self.redis.as_ref()?;
        let mut guard = self.conn.lock().await;
        if guard.is_none() {
            match tokio::time::timeout(
                std::time::Duration::from_secs(1),
                client.get_multiplexed_async_connection(),
            )
            .await
            {
                Ok(Ok(c)) => *guard = Some(c),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "redis unavailable for the API rate limit; counting locally");
                    return None;
                }
                Err(_) => {
                    tracing::warn!("redis connect timed out; counting the API rate limit locally");
                    return None;
                }
            }
        }
        let conn = guard.as_mut()?;
        let rkey = format!("fleetgate:api_rl:{key}:{window}");
        let res: redis::RedisResult<(u32,)> = redis::pipe()
            .atomic()
            .incr(&rkey, 1u32)
            .expire(&rkey, 120)
            .ignore()
            .query_async(conn)
            .await;
        match res {
            Ok((n,)) => Some(n),
            Err(e) => {
                tracing::warn!(error = %e, "redis error in the API rate limit; counting locally");
                *guard = None;
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
            l.check("a", 3, t + WINDOW_MS).await.allowed,
            "a new window starts over"
        );
    }
}
