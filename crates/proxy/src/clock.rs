//! Monotonic milliseconds for breakers, ejections and limits, convertible to wall time.

use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

struct Origin {
    mono: Instant,
    wall_ms: i64,
}

fn origin() -> &'static Origin {
    static O: OnceLock<Origin> = OnceLock::new();
    O.get_or_init(|| Origin {
        mono: Instant::now(),
        wall_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0),
    })
}

/// Milliseconds since the gateway's clock started (never 0 after start).
pub fn now_ms() -> u64 {
    origin().mono.elapsed().as_millis() as u64 + 1
}

/// Unix milliseconds of a monotonic timestamp.
pub fn to_wall_ms(mono: u64) -> i64 {
    origin().wall_ms + mono as i64 - 1
}

/// RFC 3339 text of a monotonic timestamp.
pub fn rfc3339(mono: u64) -> String {
    fleetgate_core::time::rfc3339(to_wall_ms(mono))
}
