//! The node authentication lockout: 5 failures within a 60 s window (which starts
//! at the first failure) lock the key until the window ends; a success clears it.
//! Keys are a node id (reconnects) or `token:` and the first 8 characters of a
//! registration token. Checked before any store or hashing work.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const MAX_FAILURES: u32 = 5;
pub const WINDOW: Duration = Duration::from_secs(60);
/// Keys tracked at most; beyond it, windows that ended are swept first.
const MAX_KEYS: usize = 100_000;

#[derive(Debug, Default)]
pub struct Lockout {
    failures: Mutex<HashMap<String, (Instant, u32)>>,
}

impl Lockout {
    /// The lockout key of a registration token.
    pub fn token_key(token: &str) -> String {
        format!("token:{}", token.chars().take(8).collect::<String>())
    }

    pub fn is_locked(&self, key: &str) -> bool {
        self.is_locked_at(key, Instant::now())
    }

    fn is_locked_at(&self, key: &str, now: Instant) -> bool {
        self.failures.lock().is_ok_and(|f| {
            f.get(key)
                .is_some_and(|(start, n)| *n >= MAX_FAILURES && now.duration_since(*start) < WINDOW)
        })
    }

    pub fn fail(&self, key: &str) {
        self.fail_at(key, Instant::now());
    }

    fn fail_at(&self, key: &str, now: Instant) {
        if let Ok(mut f) = self.failures.lock() {
            if f.len() >= MAX_KEYS {
                f.retain(|_, (start, _)| now.duration_since(*start) < WINDOW);
            }
            let e = f.entry(key.to_string()).or_insert((now, 0));
            if now.duration_since(e.0) >= WINDOW {
                *e = (now, 0);
            }
            e.1 += 1;
        }
    }

    pub fn succeed(&self, key: &str) {
        if let Ok(mut f) = self.failures.lock() {
            f.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_failures_lock_until_the_window_ends() {
        let l = Lockout::default();
        let t0 = Instant::now();
        for _ in 0..4 {
            l.fail_at("n", t0);
        }
        assert!(!l.is_locked_at("n", t0));
        l.fail_at("n", t0);
        assert!(l.is_locked_at("n", t0 + Duration::from_secs(59)));
        assert!(!l.is_locked_at("n", t0 + WINDOW));
        assert!(!l.is_locked_at("other", t0));
        l.succeed("n");
        assert!(!l.is_locked_at("n", t0));
        assert_eq!(Lockout::token_key("abcdefghijkl"), "token:abcdefgh");
    }
}
