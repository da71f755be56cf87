//! Events a tunnel end or a relay reports to its manager (category `tunnel`), and
//! the throttle that keeps a repeated problem from flooding the event queue.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::mpsc;

/// The shortest time between two events of one kind of problem.
pub const PROBLEM_EVERY: Duration = Duration::from_secs(10);
/// Keys a throttle remembers before it forgets the quiet ones.
const MAX_KEYS: usize = 4096;

/// Queues an event for the manager; a full queue drops it (logged at debug).
pub(crate) fn emit(
    events: Option<&mpsc::Sender<Value>>,
    severity: &str,
    message: String,
    details: Value,
) {
    let Some(events) = events else { return };
    let event = json!({"severity": severity, "category": "tunnel",
                       "message": message, "details": details});
    if events.try_send(event).is_err() {
        tracing::debug!("event queue full; a tunnel event was dropped");
    }
}

/// Lets one occurrence of each key through every [`PROBLEM_EVERY`], counting the
/// ones held back.
#[derive(Default)]
pub(crate) struct Throttle<K> {
    /// Per key: when it was last reported, and how many occurred since.
    seen: Mutex<HashMap<K, (Instant, u64)>>,
}

impl<K: Hash + Eq> Throttle<K> {
    /// Records an occurrence of `key`; how many occurred since the last report
    /// (this one included) when this one is to be reported.
    pub fn hit(&self, key: K) -> Option<u64> {
        let now = Instant::now();
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() >= MAX_KEYS && !seen.contains_key(&key) {
            seen.retain(|_, (at, _)| now.duration_since(*at) < PROBLEM_EVERY);
        }
        match seen.get_mut(&key) {
            None => {
                seen.insert(key, (now, 0));
                Some(1)
            }
            Some((at, held)) if now.duration_since(*at) < PROBLEM_EVERY => {
                *held += 1;
                None
            }
            Some((at, held)) => {
                let count = *held + 1;
                *at = now;
                *held = 0;
                Some(count)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_occurrence_is_reported_and_the_rest_counted() {
        let t = Throttle::default();
        assert_eq!(t.hit("a"), Some(1));
        assert_eq!(t.hit("a"), None);
        assert_eq!(t.hit("a"), None);
        assert_eq!(t.hit("b"), Some(1), "keys are apart");
        // Ten seconds later the next one reports the two held back and itself.
        t.seen.lock().expect("lock").get_mut("a").expect("a").0 -= PROBLEM_EVERY;
        assert_eq!(t.hit("a"), Some(3));
        assert_eq!(t.hit("a"), None);
    }

    #[test]
    fn it_forgets_quiet_keys_when_full() {
        let t = Throttle::default();
        for i in 0..MAX_KEYS {
            t.hit(i);
        }
        for (at, _) in t.seen.lock().expect("lock").values_mut() {
            *at -= PROBLEM_EVERY;
        }
        assert_eq!(t.hit(MAX_KEYS), Some(1));
        assert_eq!(t.seen.lock().expect("lock").len(), 1);
    }
}
