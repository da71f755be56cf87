//! Flow counters: atomics the packet paths bump, and the per-tick bitrate a
//! stats report computes from their byte deltas.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Instant;

/// What an input or output is doing, as reported in `stats`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    Stopped = 0,
    Running = 1,
    Listening = 2,
    Connecting = 3,
    Connected = 4,
    Error = 5,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Stopped => "stopped",
            State::Running => "running",
            State::Listening => "listening",
            State::Connecting => "connecting",
            State::Connected => "connected",
            State::Error => "error",
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            1 => State::Running,
            2 => State::Listening,
            3 => State::Connecting,
            4 => State::Connected,
            5 => State::Error,
            _ => State::Stopped,
        }
    }
}

/// A state shared between a task and the stats reporter.
#[derive(Debug, Default)]
pub struct SharedState(AtomicU8);

impl SharedState {
    pub fn set(&self, s: State) {
        self.0.store(s as u8, Relaxed);
    }

    pub fn get(&self) -> State {
        State::from_u8(self.0.load(Relaxed))
    }
}

/// Bits per second from the growth of a byte counter between two samples.
#[derive(Debug)]
pub struct RateMeter {
    last: Mutex<(Instant, u64)>,
}

impl Default for RateMeter {
    fn default() -> Self {
        RateMeter {
            last: Mutex::new((Instant::now(), 0)),
        }
    }
}

impl RateMeter {
    /// The rate since the previous sample, given the counter's total now.
    pub fn sample(&self, total: u64) -> u64 {
        let Ok(mut last) = self.last.lock() else {
            return 0;
        };
        let now = Instant::now();
        let secs = now.duration_since(last.0).as_secs_f64();
        let bytes = total.saturating_sub(last.1);
        *last = (now, total);
        if secs <= 0.0 {
            return 0;
        }
        // Bits per second, rounded down.
        (bytes as f64 * 8.0 / secs) as u64
    }
}

/// An input's counters.
#[derive(Debug, Default)]
pub struct InputCounters {
    pub state: SharedState,
    pub packets_received: AtomicU64,
    pub bytes_received: AtomicU64,
    pub packets_lost: AtomicU64,
    pub packets_filtered: AtomicU64,
    pub rate: RateMeter,
    /// The input's last failure, while it lasts.
    pub error: Mutex<Option<String>>,
}

impl InputCounters {
    /// Counts one packet of `bytes` read.
    pub fn received(&self, bytes: usize) {
        self.packets_received.fetch_add(1, Relaxed);
        self.bytes_received.fetch_add(bytes as u64, Relaxed);
    }

    pub fn fail(&self, why: String) {
        self.state.set(State::Error);
        if let Ok(mut e) = self.error.lock() {
            *e = Some(why);
        }
    }

    pub fn clear_error(&self) {
        if let Ok(mut e) = self.error.lock() {
            *e = None;
        }
    }

    pub fn error(&self) -> Option<String> {
        self.error.lock().ok().and_then(|e| e.clone())
    }
}

/// An output's counters.
#[derive(Debug, Default)]
pub struct OutputCounters {
    pub state: SharedState,
    pub packets_sent: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub packets_dropped: AtomicU64,
    pub rate: RateMeter,
    /// Dropped packets at the previous report, to tell a dropping output.
    pub dropped_reported: AtomicU64,
}

impl OutputCounters {
    pub fn sent(&self, bytes: usize) {
        self.packets_sent.fetch_add(1, Relaxed);
        self.bytes_sent.fetch_add(bytes as u64, Relaxed);
    }

    pub fn dropped(&self, packets: u64) {
        self.packets_dropped.fetch_add(packets, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_come_from_byte_deltas() {
        let m = RateMeter::default();
        std::thread::sleep(std::time::Duration::from_millis(100));
        let bps = m.sample(12_500);
        // 100 kbit in a little over 0.1 s: just under 1 Mbit/s.
        assert!((500_000..=1_000_000).contains(&bps), "{bps}");
        assert_eq!(m.sample(12_500), 0);
    }

    #[test]
    fn states_round_trip() {
        let s = SharedState::default();
        assert_eq!(s.get(), State::Stopped);
        for st in [
            State::Running,
            State::Listening,
            State::Connecting,
            State::Connected,
            State::Error,
        ] {
            s.set(st);
            assert_eq!(s.get(), st);
        }
    }
}
