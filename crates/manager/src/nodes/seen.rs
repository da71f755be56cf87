//! When nodes were last seen, written to the store in batches: sessions record it
//! here (at connect, at close, and at most once a minute in between) and a writer
//! stores what accumulated every [`FLUSH_EVERY`], in a few statements. One
//! write per node and event would, with thousands of nodes connecting at once,
//! keep SQLite's single writer busy and configuration writes waiting behind it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use fleetgate_store::NodeSeen;
use tokio::sync::watch;

use crate::AppState;

/// How often what sessions recorded is written.
pub const FLUSH_EVERY: Duration = Duration::from_secs(5);

/// Sightings not yet written, by node id.
#[derive(Debug, Default)]
pub struct SeenBuffer {
    pending: Mutex<HashMap<String, NodeSeen>>,
}

impl SeenBuffer {
    /// Records that `id` was seen at `at`; versions reported earlier and not yet
    /// written are kept unless replaced.
    pub fn record(
        &self,
        id: &str,
        at: i64,
        software_version: Option<String>,
        protocol_version: Option<i64>,
    ) {
        let Ok(mut pending) = self.pending.lock() else {
            return;
        };
        match pending.get_mut(id) {
            Some(seen) => {
                seen.at = seen.at.max(at);
                if software_version.is_some() {
                    seen.software_version = software_version;
                }
                if protocol_version.is_some() {
                    seen.protocol_version = protocol_version;
                }
            }
            None => {
                pending.insert(
                    id.to_string(),
                    NodeSeen {
                        id: id.to_string(),
                        at,
                        software_version,
                        protocol_version,
                    },
                );
            }
        }
    }

    /// Writes everything pending.
    pub async fn flush(&self, state: &AppState) {
        let batch: Vec<NodeSeen> = match self.pending.lock() {
            Ok(mut pending) => pending.drain().map(|(_, v)| v).collect(),
            Err(_) => return,
        };
        if batch.is_empty() {
            return;
        }
        if let Err(e) = state.store.nodes_seen(&batch).await {
            tracing::warn!(nodes = batch.len(), error = %e, "could not record when nodes were seen");
        }
    }
}

/// Writes the hub's sightings every [`FLUSH_EVERY`] until `shutdown`.
pub fn spawn_writer(
    state: AppState,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(FLUSH_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = every.tick() => state.nodes.seen.flush(&state).await,
                () = async { let _ = shutdown.wait_for(|down| *down).await; } => return,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_sightings_keep_earlier_versions() {
        let b = SeenBuffer::default();
        b.record("n", 10, Some("0.5.3".into()), Some(1));
        b.record("n", 20, None, None);
        let pending = b.pending.lock().expect("lock");
        assert_eq!(pending.len(), 1);
        assert_eq!(
            pending["n"],
            NodeSeen {
                id: "n".into(),
                at: 20,
                software_version: Some("0.5.3".into()),
                protocol_version: Some(1),
            }
        );
    }
}
