//! A counter in Redis shared by every process using it: the gateway's route limits
//! and the manager's admin API limit count their fixed windows here when Redis is
//! configured, so that all gateways (or managers) together admit exactly the limit.
//!
//! One round trip per count: `INCR` and `PEXPIRE` in one `MULTI`/`EXEC`. The
//! connection is a [`ConnectionManager`] made on first use (Redis may be down at
//! startup) that reconnects by itself afterwards. Every count is bounded by the
//! timeouts given: a caller decides what a failure means (admit, refuse, count
//! locally).

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::OnceCell;

/// Why a count could not be taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisCounterError(pub String);

impl std::fmt::Display for RedisCounterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RedisCounterError {}

/// Counters in one Redis.
pub struct RedisCounter {
    client: redis::Client,
    conn: OnceCell<ConnectionManager>,
    connect_timeout: Duration,
    command_timeout: Duration,
}

impl RedisCounter {
    /// Counters in the Redis of `client`. Connecting (on first use, and each
    /// reconnection attempt) waits at most `connect_timeout`, a count at most
    /// `command_timeout` once connected.
    pub fn new(
        client: redis::Client,
        connect_timeout: Duration,
        command_timeout: Duration,
    ) -> Self {
        Self {
            client,
            conn: OnceCell::new(),
            connect_timeout,
            command_timeout,
        }
    }

    /// Counters in the Redis at `url` (`redis://…`); see [`RedisCounter::new`].
    pub fn open(
        url: &str,
        connect_timeout: Duration,
        command_timeout: Duration,
    ) -> Result<Self, RedisCounterError> {
        let client = redis::Client::open(url)
            .map_err(|e| RedisCounterError(format!("invalid Redis URL: {e}")))?;
        Ok(Self::new(client, connect_timeout, command_timeout))
    }

    async fn connection(&self) -> Result<ConnectionManager, RedisCounterError> {
        let connect = self.conn.get_or_try_init(|| {
            // Reconnections retry twice, quickly: a caller waiting on one gives up
            // after its command timeout anyway, and the next count starts another.
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(self.connect_timeout)
                .set_response_timeout(self.command_timeout)
                .set_number_of_retries(2)
                .set_factor(10)
                .set_max_delay(200);
            ConnectionManager::new_with_config(self.client.clone(), config)
        });
        match tokio::time::timeout(self.connect_timeout, connect).await {
            Ok(Ok(c)) => Ok(c.clone()),
            Ok(Err(e)) => Err(RedisCounterError(format!("cannot connect to Redis: {e}"))),
            Err(_) => Err(RedisCounterError("connecting to Redis timed out".into())),
        }
    }

    /// Adds one to `key` and answers its new value; the key expires `ttl_ms`
    /// after this count.
    pub async fn incr(&self, key: &str, ttl_ms: u64) -> Result<u32, RedisCounterError> {
        let mut conn = self.connection().await?;
        let ttl_ms = i64::try_from(ttl_ms.max(1)).unwrap_or(i64::MAX);
        let mut pipe = redis::pipe();
        pipe.atomic().incr(key, 1u32).pexpire(key, ttl_ms).ignore();
        let count = pipe.query_async::<(u64,)>(&mut conn);
        match tokio::time::timeout(self.command_timeout, count).await {
            Ok(Ok((n,))) => Ok(u32::try_from(n).unwrap_or(u32::MAX)),
            Ok(Err(e)) => Err(RedisCounterError(format!("Redis error: {e}"))),
            Err(_) => Err(RedisCounterError("Redis timed out".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counter(url: &str) -> RedisCounter {
        RedisCounter::open(url, Duration::from_millis(500), Duration::from_millis(500))
            .expect("URL")
    }

    #[tokio::test]
    async fn counts_and_expires_in_redis() {
        let Ok(url) = std::env::var("FLEETGATE_TEST_REDIS_URL") else {
            eprintln!("skipping: FLEETGATE_TEST_REDIS_URL is not set");
            return;
        };
        let c = counter(&url);
        let key = format!("fleetgate:test:counter:{}", std::process::id());
        assert_eq!(c.incr(&key, 300).await, Ok(1));
        assert_eq!(c.incr(&key, 300).await, Ok(2));
        // A second counter on the same Redis sees the same count.
        assert_eq!(counter(&url).incr(&key, 300).await, Ok(3));
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(c.incr(&key, 300).await, Ok(1), "the key expired");
    }

    #[tokio::test]
    async fn an_unreachable_redis_is_an_error_within_the_timeout() {
        // Nothing listens on port 1.
        let c = counter("redis://127.0.0.1:1");
        let started = std::time::Instant::now();
        let err = c.incr("k", 1000).await.expect_err("no Redis");
        assert!(err.0.contains("Redis"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(2));
        // The next count tries again rather than keeping the failure.
        assert!(c.incr("k", 1000).await.is_err());
    }
}
