//! The manager's event hub: events from the gateway and the manager are queued without
//! blocking their producer, written to the store in batches by one task, then handed
//! to webhooks (queued deliveries) and live subscribers (SSE streams) with their
//! store ids. With NATS configured, stored events are also published on the bus, and
//! other managers' events reach the live subscribers too (see [`crate::bus`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use fleetgate_core::events::{EventSink, NewEvent};
use fleetgate_store::{EventRecord, Store};
use tokio::sync::{broadcast, mpsc, watch};

/// Events waiting to be written; beyond this, new events are dropped (and counted).
const QUEUE: usize = 10_000;
/// Events written per transaction at most.
const BATCH: usize = 500;
/// Live events a subscriber may fall behind by before it is dropped.
pub const LIVE_BUFFER: usize = 1024;

#[derive(Debug)]
pub struct EventHub {
    tx: mpsc::Sender<NewEvent>,
    rx: Mutex<Option<mpsc::Receiver<NewEvent>>>,
    live: broadcast::Sender<Arc<EventRecord>>,
    /// Events lost because the queue was full.
    pub dropped: AtomicU64,
    /// The NATS event bus, when configured.
    pub bus: OnceLock<Arc<crate::bus::Bus>>,
}

impl Default for EventHub {
    fn default() -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        Self {
            tx,
            rx: Mutex::new(Some(rx)),
            live: broadcast::channel(LIVE_BUFFER).0,
            dropped: AtomicU64::new(0),
            bus: OnceLock::new(),
        }
    }
}

/// The hub as the gateway and handlers see it.
#[derive(Debug, Clone)]
pub struct HubSink(pub Arc<EventHub>);

impl EventSink for HubSink {
    fn emit(&self, event: NewEvent) {
        if self.0.tx.try_send(event).is_err() {
            self.0.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl EventHub {
    /// Live events as they are stored: this manager's, and with the NATS bus those
    /// other managers stored (which are not this manager's to deliver to webhooks).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<EventRecord>> {
        self.live.subscribe()
    }

    /// Hands an event stored by another manager to the live subscribers.
    pub(crate) fn broadcast(&self, e: Arc<EventRecord>) {
        let _ = self.live.send(e);
    }

    /// How long a live stream holds an event back for lower ids still on their way
    /// from other managers: zero unless other managers' events arrive here.
    pub fn reorder_window(&self) -> Duration {
        match self.bus.get() {
            Some(b) if b.forwarding => crate::bus::REORDER_WINDOW,
            _ => Duration::ZERO,
        }
    }

    /// Starts the writer; a second call does nothing. It drains the queue after
    /// `shutdown` turns true, then ends.
    pub fn spawn_writer(
        self: &Arc<Self>,
        store: Arc<dyn Store>,
        webhooks: Arc<tokio::sync::Notify>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let Some(mut rx) = self.rx.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return;
        };
        let hub = self.clone();
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(BATCH);
            loop {
                let stopping = tokio::select! {
                    e = rx.recv() => match e {
                        Some(e) => {
                            batch.push(e);
                            false
                        }
                        None => return,
                    },
                    _ = shutdown.wait_for(|d| *d) => true,
                };
                if stopping {
                    // Take what is queued, then stop.
                    rx.close();
                }
                let first = if stopping {
                    rx.recv().await
                } else {
                    batch.pop()
                };
                let Some(first) = first else { return };
                batch.push(first);
                while batch.len() < BATCH {
                    match rx.try_recv() {
                        Ok(e) => batch.push(e),
                        Err(_) => break,
                    }
                }
                match store.insert_events(&batch).await {
                    Ok(stored) => {
                        if let Err(e) =
                            crate::webhooks::fan_out(store.as_ref(), &stored, &webhooks).await
                        {
                            tracing::error!(error = %e, "could not queue webhook deliveries");
                        }
                        let bus = hub.bus.get();
                        for e in stored {
                            let e = Arc::new(e);
                            if let Some(bus) = bus {
                                bus.publish(&e);
                            }
                            let _ = hub.live.send(e);
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, lost = batch.len(), "could not store events");
                    }
                }
                batch.clear();
            }
        });
    }
}
