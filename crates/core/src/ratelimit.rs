//! Fixed-window rate limiting, as the gateway's route limits and the manager's
//! admin API limit count: time is cut into windows of `window_ms`, and a key may
//! make `max` requests per window.
//!
//! [`FixedWindow`] counts in this process. Keys may be chosen by clients (an API
//! key, a header), so memory is bounded: at most [`MAX_KEYS`] keys are tracked;
//! past that, keys not seen in this window share one overflow counter (so
//! inventing keys buys nothing), and stale entries are swept at most once per
//! window (never a scan per request). Counts shared by several processes are
//! kept in Redis by the gateway and the manager, on the same [`Window`]s.

use std::collections::HashMap;
use std::sync::Mutex;

/// Keys a [`FixedWindow`] tracks before new ones share the overflow counter.
pub const MAX_KEYS: usize = 100_000;

/// The key that keys past the bound are counted under.
const OVERFLOW: &str = "\u{0}overflow";

/// The window an instant falls in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Windows since the clock's zero.
    pub index: u64,
    /// When the window ends (and the next starts), on the same clock.
    pub ends_at: u64,
}

impl Window {
    /// The window of `window_ms` (at least 1) holding `now_ms`.
    pub fn at(now_ms: u64, window_ms: u64) -> Self {
        let window_ms = window_ms.max(1);
        let index = now_ms / window_ms;
        Self {
            index,
            ends_at: index.saturating_add(1).saturating_mul(window_ms),
        }
    }
}

/// The answer for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    pub remaining: u32,
    /// When the window ends, on the clock the request was counted with.
    pub reset_at: u64,
}

impl Verdict {
    /// The verdict for the `count`-th request of a window that admits `max`.
    pub fn of(count: u32, max: u32, reset_at: u64) -> Self {
        Self {
            allowed: count <= max,
            remaining: max.saturating_sub(count),
            reset_at,
        }
    }
}

struct Counters {
    /// Per key: the window index and the count in it.
    map: HashMap<Box<str>, (u64, u32)>,
    /// The window in which stale entries were last swept.
    swept: u64,
}

/// Counts per key in fixed windows, in this process.
pub struct FixedWindow {
    window_ms: u64,
    max_keys: usize,
    counters: Mutex<Counters>,
}

impl FixedWindow {
    pub fn new(window_ms: u64) -> Self {
        Self::with_max_keys(window_ms, MAX_KEYS)
    }

    pub fn with_max_keys(window_ms: u64, max_keys: usize) -> Self {
        Self {
            window_ms: window_ms.max(1),
            max_keys: max_keys.max(1),
            counters: Mutex::new(Counters {
                map: HashMap::new(),
                swept: u64::MAX,
            }),
        }
    }

    pub fn window_ms(&self) -> u64 {
        self.window_ms
    }

    /// Keys tracked now (the overflow counter included).
    pub fn tracked_keys(&self) -> usize {
        self.counters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map
            .len()
    }

    /// Counts one request of `key` at `now_ms`: its count in the window (this one
    /// included) and the window.
    pub fn hit(&self, key: &str, now_ms: u64) -> (u32, Window) {
        let w = Window::at(now_ms, self.window_ms);
        let mut guard = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        let c = &mut *guard;
        let mut key = key;
        if !c.map.contains_key(key) && c.map.len() >= self.max_keys {
            if c.swept != w.index {
                c.swept = w.index;
                c.map.retain(|_, (i, _)| *i == w.index);
            }
            if c.map.len() >= self.max_keys {
                key = OVERFLOW;
            }
        }
        let count = match c.map.get_mut(key) {
            Some(entry) => {
                if entry.0 != w.index {
                    *entry = (w.index, 0);
                }
                entry.1 = entry.1.saturating_add(1);
                entry.1
            }
            None => {
                c.map.insert(key.into(), (w.index, 1));
                1
            }
        };
        (count, w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn windows_are_aligned() {
        assert_eq!(
            Window::at(0, 1000),
            Window {
                index: 0,
                ends_at: 1000
            }
        );
        assert_eq!(Window::at(999, 1000).index, 0);
        assert_eq!(
            Window::at(1000, 1000),
            Window {
                index: 1,
                ends_at: 2000
            }
        );
        assert_eq!(Window::at(5, 0).ends_at, 6, "a zero window counts as 1 ms");
        assert_eq!(Window::at(u64::MAX, 1).ends_at, u64::MAX);
    }

    #[test]
    fn counts_per_key_per_window() {
        let l = FixedWindow::new(1000);
        assert_eq!(l.hit("a", 10), (1, Window::at(10, 1000)));
        assert_eq!(l.hit("a", 20).0, 2);
        assert_eq!(l.hit("b", 30).0, 1);
        assert_eq!(l.hit("a", 1000).0, 1, "a new window starts over");
        assert_eq!(
            Verdict::of(2, 2, 7),
            Verdict {
                allowed: true,
                remaining: 0,
                reset_at: 7
            }
        );
        assert_eq!(
            Verdict::of(3, 2, 7),
            Verdict {
                allowed: false,
                remaining: 0,
                reset_at: 7
            }
        );
    }

    #[test]
    fn keys_a_client_invents_are_bounded_and_still_counted() {
        let l = FixedWindow::with_max_keys(1000, 100);
        for i in 0..100 {
            assert_eq!(l.hit(&format!("k{i}"), 10).0, 1);
        }
        // Past the bound, new keys share one counter.
        let admitted = (0..1000)
            .filter(|i| l.hit(&format!("new{i}"), 20).0 <= 3)
            .count();
        assert_eq!(admitted, 3);
        assert!(l.tracked_keys() <= 101, "{}", l.tracked_keys());
        // Keys already known keep their own counters.
        assert_eq!(l.hit("k0", 30).0, 2);
        // In the next window the stale entries are swept once and new keys fit again.
        assert_eq!(l.hit("fresh", 1500).0, 1);
        assert_eq!(l.tracked_keys(), 1);
    }

    proptest! {
        #[test]
        fn a_key_is_admitted_at_most_max_times_per_window(
            times in proptest::collection::vec(0u64..10_000, 1..300),
            max in 1u32..20,
            window_ms in 1u64..5_000,
        ) {
            let mut times = times;
            times.sort_unstable();
            let l = FixedWindow::new(window_ms);
            let mut per_window = HashMap::new();
            for t in times {
                let (count, w) = l.hit("k", t);
                prop_assert!(t < w.ends_at && w.ends_at - t <= window_ms);
                let v = Verdict::of(count, max, w.ends_at);
                if v.allowed {
                    *per_window.entry(w.index).or_insert(0u32) += 1;
                }
            }
            prop_assert!(per_window.values().all(|n| *n <= max));
        }
    }
}
