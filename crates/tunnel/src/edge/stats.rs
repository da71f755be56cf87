//! What every task of one tunnel end shares: its state word, its counters, the
//! link currently usable for traffic, and its events.
//!
//! Events (category `tunnel`) go to the node's event queue on transitions only:
//! the tunnel up, the tunnel lost (once, with why, until it is up again), and
//! problems with traffic (a target refusing, an oversized datagram, a peer failing
//! authentication) at most once per kind every [`PROBLEM_EVERY`](crate::events::PROBLEM_EVERY).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};

use crate::events::{emit, Throttle};

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
    events: Option<mpsc::Sender<Value>>,
    /// The tunnel's id and name, as events name it.
    id: String,
    name: String,
    /// What the last up/lost event said (`None` before the first).
    reported_up: Mutex<Option<bool>>,
    /// Traffic problems reported, by kind.
    problems: Throttle<&'static str>,
    /// Why it is not up, or the latest traffic problem; cleared when it is up.
    last_error: Mutex<Option<String>>,
}

impl TunnelShared {
    pub fn new(config: &TunnelConfig, events: Option<mpsc::Sender<Value>>) -> Self {
        TunnelShared {
            state: Mutex::new("connecting"),
            counters: Counters::default(),
            link: watch::channel(None).0,
            rate_mark: Mutex::new((Instant::now(), 0, 0)),
            events,
            id: config.id.clone(),
            name: config.name.clone(),
            reported_up: Mutex::new(None),
            problems: Throttle::default(),
            last_error: Mutex::new(None),
        }
    }

    fn emit(&self, severity: &str, message: String, mut details: Value) {
        details["tunnel_id"] = json!(self.id);
        details["tunnel_name"] = json!(self.name);
        emit(self.events.as_ref(), severity, message, details);
    }

    fn set_error(&self, error: Option<String>) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = error;
    }

    /// The tunnel carries traffic: state `ready`, and an event if the last one
    /// said otherwise.
    pub fn up(&self) {
        self.set_state("ready");
        self.set_error(None);
        let was = self
            .reported_up
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(true);
        if was != Some(true) {
            self.emit(
                "info",
                format!("tunnel {} is up", self.name),
                json!({"state": "ready"}),
            );
        }
    }

    /// The tunnel cannot carry traffic (`state` says how), because of `why`: an
    /// event the first time after it was up (or ever), not on every retry.
    pub fn lost(&self, state: &'static str, why: &str) {
        self.set_state(state);
        self.set_error(Some(why.to_owned()));
        let was = self
            .reported_up
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(false);
        if was != Some(false) {
            let severity = if state == "down" {
                "critical"
            } else {
                "warning"
            };
            self.emit(
                severity,
                format!("tunnel {} is {state}: {why}", self.name),
                json!({"state": state, "error": why}),
            );
        }
    }

    /// The other end is not there: state `waiting`; an event only if the tunnel
    /// was up (a new tunnel waits for its other end without a warning).
    pub fn waiting(&self, why: &str) {
        self.set_state("waiting");
        self.set_error(Some(why.to_owned()));
        let mut reported = self.reported_up.lock().unwrap_or_else(|p| p.into_inner());
        if *reported == Some(true) {
            *reported = Some(false);
            drop(reported);
            self.emit(
                "warning",
                format!("tunnel {} is waiting: {why}", self.name),
                json!({"state": "waiting", "error": why}),
            );
        }
    }

    /// A traffic problem of `kind` (also counted as a send error); reported at
    /// most once every [`PROBLEM_EVERY`](crate::events::PROBLEM_EVERY), with how
    /// many happened since the last report.
    pub fn problem(&self, kind: &'static str, message: impl FnOnce() -> String) {
        self.error();
        let Some(count) = self.problems.hit(kind) else {
            return;
        };
        let message = message();
        self.set_error(Some(message.clone()));
        self.emit(
            "warning",
            format!("tunnel {}: {message}", self.name),
            json!({"error_code": kind, "occurrences": count}),
        );
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
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
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
