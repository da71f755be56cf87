//! Per-route rate limits counted in this process: a fixed window per key.

use std::collections::HashMap;
use std::sync::Mutex;

/// Counters of one route.
pub struct RouteLimiter {
    pub max: u32,
    pub window_ms: u64,
    counters: Mutex<HashMap<Box<str>, (u64, u32)>>,
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
        Self {
            max,
            window_ms: window_ms.max(1),
            counters: Mutex::new(HashMap::new()),
        }
    }

    pub fn check(&self, key: &str, now: u64) -> Verdict {
        let window = now / self.window_ms;
        let reset_at = (window + 1) * self.window_ms;
        let mut map = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > 200_000 {
            map.retain(|_, (w, _)| *w == window);
        }
        let count = match map.get_mut(key) {
            Some(entry) => {
                if entry.0 != window {
                    *entry = (window, 0);
                }
                entry.1 = entry.1.saturating_add(1);
                entry.1
            }
            None => {
                map.insert(key.into(), (window, 1));
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
}
