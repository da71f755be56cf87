//! What every task of one tunnel end shares: its state word, its counters and the
//! link currently usable for traffic.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use tokio::sync::watch;

use fleetgate_protocol::tunnel::{TunnelConfig, TunnelStats, TunnelStatus};

#[derive(Default)]
pub(crate) struct Counters {
    pub packets_sent: AtomicU64,
    pub packets_received: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub bytes_received: AtomicU64,
    pub send_errors: AtomicU64,
    pub connections_total: AtomicU64,
    pub connections_active: AtomicU64,
}

/// The shared state of one tunnel end.
pub(crate) struct TunnelShared {
    state: Mutex<&'static str>,
    pub counters: Counters,
    /// The connection traffic goes on: set while the tunnel is ready.
    pub link: watch::Sender<Option<quinn::Connection>>,
    rate_mark: Mutex<(Instant, u64, u64)>,
}

impl TunnelShared {
    pub fn new(_config: &TunnelConfig) -> Self {
        TunnelShared {
            state: Mutex::new("connecting"),
            counters: Counters::default(),
            link: watch::channel(None).0,
            rate_mark: Mutex::new((Instant::now(), 0, 0)),
        }
    }

    pub fn set_state(&self, state: &'static str) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = state;
    }

    pub fn state(&self) -> &'static str {
        *self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes `connection` the link, or clears it.
    pub fn set_link(&self, connection: Option<quinn::Connection>) {
        self.link.send_replace(connection);
    }

    /// The usable link, if any.
    pub fn current_link(&self) -> Option<quinn::Connection> {
        self.link.borrow().clone()
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn error(&self) {
        self.counters.send_errors.fetch_add(1, Ordering::Relaxed);
    }

    pub fn status(&self, config: &TunnelConfig) -> TunnelStatus {
        let c = &self.counters;
        let bytes_sent = c.bytes_sent.load(Ordering::Relaxed);
        let bytes_received = c.bytes_received.load(Ordering::Relaxed);
        let (bitrate_out_bps, bitrate_in_bps) = self.rates(bytes_sent, bytes_received);
        TunnelStatus {
            id: config.id.clone(),
            name: config.name.clone(),
            protocol: config.protocol,
            mode: config.mode,
            direction: config.direction,
            local_addr: config.local_addr.clone(),
            state: self.state().to_owned(),
            stats: TunnelStats {
                packets_sent: c.packets_sent.load(Ordering::Relaxed),
                packets_received: c.packets_received.load(Ordering::Relaxed),
                bytes_sent,
                bytes_received,
                bitrate_in_bps,
                bitrate_out_bps,
                send_errors: c.send_errors.load(Ordering::Relaxed),
                connections_total: c.connections_total.load(Ordering::Relaxed),
                connections_active: c.connections_active.load(Ordering::Relaxed),
            },
        }
    }

    /// Bits per second sent and received since the previous call.
    fn rates(&self, sent: u64, received: u64) -> (u64, u64) {
        let mut mark = self.rate_mark.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let secs = now.duration_since(mark.0).as_secs_f64();
        let rate = |now_bytes: u64, then: u64| {
            if secs <= 0.0 {
                0
            } else {
                (now_bytes.saturating_sub(then) as f64 * 8.0 / secs) as u64
            }
        };
        let out = (rate(sent, mark.1), rate(received, mark.2));
        *mark = (now, sent, received);
        out
    }
}

/// Counts a connection as active for as long as it lives.
pub(crate) struct ActiveConnection<'a>(&'a Counters);

impl<'a> ActiveConnection<'a> {
    pub fn new(counters: &'a Counters) -> Self {
        counters.connections_total.fetch_add(1, Ordering::Relaxed);
        counters.connections_active.fetch_add(1, Ordering::Relaxed);
        ActiveConnection(counters)
    }
}

impl Drop for ActiveConnection<'_> {
    fn drop(&mut self) {
        self.0.connections_active.fetch_sub(1, Ordering::Relaxed);
    }
}
