//! L4 flows: an input (UDP, RTP over UDP, or TCP) fanned out to outputs (UDP,
//! RTP, TCP), configured by the manager with the node protocol's flow commands
//! and kept in the data directory (`edge-flows.json`) so they run again after a
//! restart, with or without the manager.
//!
//! [`FlowEngine`] owns the flows; commands go through it one at a time. A
//! command that fails leaves the flow as it was (a new configuration that
//! cannot bind is rolled back), except `restart_flow`, which leaves it stopped
//! with the error in its stats; `update_config` applies each flow on its own. Bind
//! failures are also reported as `event`s (category `flow`) with a stable
//! `details.error_code`: `port_conflict` when the address is taken, else
//! `bind_failed`.

pub mod commands;
pub mod config;
mod input;
mod output;
mod report;
pub mod rtp;
mod running;
mod socket;
mod stats;

use std::path::PathBuf;

use serde_json::{json, Value};
use tokio::sync::{mpsc, Mutex};

use crate::files::{self, StoredFlows};
use config::{FlowConfig, OutputConfig};
use running::{RunningFlow, StartError};

pub use config::{INPUT_TYPES, OUTPUT_TYPES};

/// Flows one edge runs at most.
pub const MAX_FLOWS: usize = 256;
/// Events waiting for the manager; past this many, new ones are dropped.
pub const EVENT_QUEUE: usize = 256;

/// Why a flow command failed: the text for `command_ack.error`, and a stable
/// `error_code` where there is one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct FlowError {
    pub message: String,
    pub code: Option<&'static str>,
}

impl FlowError {
    pub fn new(message: impl Into<String>) -> Self {
        FlowError {
            message: message.into(),
            code: None,
        }
    }
}

impl From<config::ConfigError> for FlowError {
    fn from(e: config::ConfigError) -> Self {
        FlowError::new(e.0)
    }
}

/// One configured flow and, while it runs, its tasks.
#[derive(Debug)]
struct Flow {
    config: FlowConfig,
    running: Option<RunningFlow>,
    /// Why the flow is not running although enabled.
    error: Option<String>,
}

/// The flows of this edge.
#[derive(Debug)]
pub struct FlowEngine {
    flows: Mutex<Vec<Flow>>,
    data_dir: PathBuf,
    events: mpsc::Sender<Value>,
}

fn not_found(id: &str) -> FlowError {
    FlowError::new(format!("Flow not found: {id}"))
}

impl FlowEngine {
    /// An engine with the flows stored in `data_dir` (not started yet: see
    /// [`FlowEngine::start_stored`]); events go to `events`.
    pub fn open(data_dir: PathBuf, events: mpsc::Sender<Value>) -> Self {
        let stored = match files::load_flows(&data_dir) {
            Ok(s) => s.map(|s| s.flows).unwrap_or_default(),
            Err(e) => {
                // Kept aside, so that storing the next flows does not destroy it.
                let file = data_dir.join(files::FLOWS_FILE);
                let aside = file.with_extension("json.invalid");
                let _ = std::fs::rename(&file, &aside);
                tracing::error!(error = %e, kept_as = %aside.display(), "cannot load the stored flows; starting without them");
                Vec::new()
            }
        };
        let flows = stored
            .into_iter()
            .filter(|f| match f.validate() {
                Ok(()) => true,
                Err(e) => {
                    tracing::error!(flow = %f.id, error = %e, "skipping an invalid stored flow");
                    false
                }
            })
            .map(|config| Flow {
                config,
                running: None,
                error: None,
            })
            .collect();
        FlowEngine {
            flows: Mutex::new(flows),
            data_dir,
            events,
        }
    }

    /// Starts the enabled stored flows (failures are shown on the flow and
    /// reported as events).
    pub async fn start_stored(&self) {
        let mut flows = self.flows.lock().await;
        for f in flows.iter_mut().filter(|f| f.config.enabled) {
            let _ = self.run(f).await;
        }
        let running = flows.iter().filter(|f| f.running.is_some()).count();
        if !flows.is_empty() {
            tracing::info!(flows = flows.len(), running, "started the stored flows");
        }
    }

    /// Stops every flow (the configuration stays stored).
    pub async fn shutdown(&self) {
        let mut flows = self.flows.lock().await;
        for f in flows.iter_mut() {
            if let Some(r) = f.running.take() {
                r.stop().await;
            }
        }
    }

    /// The flows' configurations, in creation order.
    pub async fn configs(&self) -> Vec<FlowConfig> {
        self.flows
            .lock()
            .await
            .iter()
            .map(|f| f.config.clone())
            .collect()
    }

    /// (running, configured) flows.
    pub async fn counts(&self) -> (usize, usize) {
        let flows = self.flows.lock().await;
        (
            flows.iter().filter(|f| f.running.is_some()).count(),
            flows.len(),
        )
    }

    /// The `FlowStats` of every flow (bitrates since the previous call).
    pub async fn stats(&self) -> Vec<Value> {
        let flows = self.flows.lock().await;
        flows
            .iter()
            .map(|f| report::flow_stats(&f.config, f.running.as_ref(), f.error.as_deref()))
            .collect()
    }

    /// `create_flow`: adds and (unless `enabled` is false) starts a flow.
    pub async fn create(&self, config: FlowConfig) -> Result<(), FlowError> {
        let mut flows = self.flows.lock().await;
        if flows.iter().any(|f| f.config.id == config.id) {
            return Err(FlowError::new(format!("Duplicate flow ID: {}", config.id)));
        }
        if flows.len() >= MAX_FLOWS {
            return Err(FlowError::new(format!(
                "this edge already has {MAX_FLOWS} flows, its maximum"
            )));
        }
        let mut flow = Flow {
            config,
            running: None,
            error: None,
        };
        if flow.config.enabled {
            self.run(&mut flow).await?;
        }
        flows.push(flow);
        self.persist(&flows).await
    }

    /// `update_flow`: replaces a flow's configuration, restarting it only when
    /// its input or name changed; a change of outputs alone touches only the
    /// outputs that changed.
    pub async fn update(&self, flow_id: Option<&str>, config: FlowConfig) -> Result<(), FlowError> {
        let id = flow_id.unwrap_or(&config.id).to_string();
        if config.id != id {
            return Err(FlowError::new(format!(
                "flow.id {:?} differs from flow_id {id:?}",
                config.id
            )));
        }
        let mut flows = self.flows.lock().await;
        let flow = flows
            .iter_mut()
            .find(|f| f.config.id == id)
            .ok_or_else(|| not_found(&id))?;
        let old = std::mem::replace(&mut flow.config, config);
        if let Err(e) = self.reconcile(flow, &old).await {
            // Back to what ran before.
            let new = std::mem::replace(&mut flow.config, old);
            let _ = self.reconcile(flow, &new).await;
            return Err(e);
        }
        self.persist(&flows).await
    }

    /// Brings a flow's tasks in line with its (new) configuration.
    async fn reconcile(&self, flow: &mut Flow, old: &FlowConfig) -> Result<(), FlowError> {
        let new = &flow.config;
        if !new.enabled {
            if let Some(r) = flow.running.take() {
                r.stop().await;
            }
            flow.error = None;
            return Ok(());
        }
        let same_input = new.input == old.input && new.name == old.name;
        match flow.running.as_mut() {
            Some(r) if same_input => {
                let outputs = new.outputs.clone();
                if let Err(e) = r.set_outputs(&outputs).await {
                    return Err(self.start_failed(&new.id, &e));
                }
                Ok(())
            }
            _ => {
                if let Some(r) = flow.running.take() {
                    r.stop().await;
                }
                self.run(flow).await
            }
        }
    }

    /// `delete_flow`.
    pub async fn delete(&self, id: &str) -> Result<(), FlowError> {
        let mut flows = self.flows.lock().await;
        let at = flows
            .iter()
            .position(|f| f.config.id == id)
            .ok_or_else(|| not_found(id))?;
        let flow = flows.remove(at);
        if let Some(r) = flow.running {
            r.stop().await;
        }
        self.persist(&flows).await
    }

    /// `start_flow`: starts a stored flow and marks it enabled.
    pub async fn start(&self, id: &str) -> Result<(), FlowError> {
        self.set_running(id, true, false).await
    }

    /// `stop_flow`: stops a flow and marks it disabled.
    pub async fn stop(&self, id: &str) -> Result<(), FlowError> {
        self.set_running(id, false, false).await
    }

    /// `restart_flow`: stops and starts a flow, marking it enabled.
    pub async fn restart(&self, id: &str) -> Result<(), FlowError> {
        self.set_running(id, true, true).await
    }

    async fn set_running(&self, id: &str, enabled: bool, restart: bool) -> Result<(), FlowError> {
        let mut flows = self.flows.lock().await;
        let flow = flows
            .iter_mut()
            .find(|f| f.config.id == id)
            .ok_or_else(|| not_found(id))?;
        let was = flow.config.enabled;
        flow.config.enabled = enabled;
        if restart || !enabled {
            if let Some(r) = flow.running.take() {
                r.stop().await;
            }
            flow.error = None;
        }
        let started = if enabled && flow.running.is_none() {
            self.run(flow).await
        } else {
            Ok(())
        };
        if started.is_err() && !restart {
            // A failed start_flow changes nothing stored.
            flow.config.enabled = was;
        }
        self.persist(&flows).await?;
        started
    }

    /// `add_output`: adds an output, to the running flow too.
    pub async fn add_output(&self, id: &str, output: OutputConfig) -> Result<(), FlowError> {
        self.edit_outputs(id, |outputs| {
            if outputs.iter().any(|o| o.id() == output.id()) {
                return Err(FlowError::new(format!(
                    "Duplicate output ID: {} in flow {id}",
                    output.id()
                )));
            }
            if outputs.len() >= config::MAX_OUTPUTS {
                return Err(FlowError::new(format!(
                    "flow {id} already has {} outputs",
                    config::MAX_OUTPUTS
                )));
            }
            outputs.push(output);
            Ok(())
        })
        .await
    }

    /// `remove_output`: removes an output, from the running flow too.
    pub async fn remove_output(&self, id: &str, output_id: &str) -> Result<(), FlowError> {
        self.edit_outputs(id, |outputs| {
            let at = outputs
                .iter()
                .position(|o| o.id() == output_id)
                .ok_or_else(|| {
                    FlowError::new(format!("Output not found: {output_id} in flow {id}"))
                })?;
            outputs.remove(at);
            Ok(())
        })
        .await
    }

    async fn edit_outputs(
        &self,
        id: &str,
        edit: impl FnOnce(&mut Vec<OutputConfig>) -> Result<(), FlowError>,
    ) -> Result<(), FlowError> {
        let config = {
            let flows = self.flows.lock().await;
            let flow = flows
                .iter()
                .find(|f| f.config.id == id)
                .ok_or_else(|| not_found(id))?;
            let mut c = flow.config.clone();
            edit(&mut c.outputs)?;
            c
        };
        self.update(Some(id), config).await
    }

    /// `update_config`: makes the flows those of `target` (validated as a
    /// whole first), creating, removing or updating only the flows that differ.
    pub async fn replace_all(&self, target: Vec<FlowConfig>) -> Result<(), FlowError> {
        if target.len() > MAX_FLOWS {
            return Err(FlowError::new(format!(
                "config.flows has {} flows; this edge runs at most {MAX_FLOWS}",
                target.len()
            )));
        }
        for (i, f) in target.iter().enumerate() {
            f.validate()?;
            if target[..i].iter().any(|p| p.id == f.id) {
                return Err(FlowError::new(format!("Duplicate flow ID: {}", f.id)));
            }
        }
        let current = self.configs().await;
        let mut failures = Vec::new();
        for old in current
            .iter()
            .filter(|c| !target.iter().any(|t| t.id == c.id))
        {
            if let Err(e) = self.delete(&old.id).await {
                failures.push(e);
            }
        }
        for t in target {
            let result = match current.iter().find(|c| c.id == t.id) {
                Some(c) if *c == t => Ok(()),
                Some(_) => self.update(None, t).await,
                None => self.create(t).await,
            };
            if let Err(e) = result {
                failures.push(e);
            }
        }
        match failures.len() {
            0 => Ok(()),
            1 => Err(failures.remove(0)),
            _ => Err(FlowError {
                code: failures[0].code,
                message: failures
                    .iter()
                    .map(|e| e.message.as_str())
                    .collect::<Vec<_>>()
                    .join("; "),
            }),
        }
    }

    /// Starts `flow`; on failure records why and reports it.
    async fn run(&self, flow: &mut Flow) -> Result<(), FlowError> {
        match RunningFlow::start(&flow.config).await {
            Ok(r) => {
                flow.running = Some(r);
                flow.error = None;
                Ok(())
            }
            Err(e) => {
                let err = self.start_failed(&flow.config.id, &e);
                flow.error = Some(err.message.clone());
                Err(err)
            }
        }
    }

    /// Reports a start failure as an event and turns it into a command error.
    fn start_failed(&self, flow_id: &str, e: &StartError) -> FlowError {
        let message = match &e.output_id {
            Some(o) => format!("flow {flow_id}, output {o}: {}", e.bind.message),
            None => format!("flow {flow_id}: {}", e.bind.message),
        };
        tracing::warn!(flow = flow_id, error = %message, "a flow cannot start");
        let mut event = json!({
            "severity": if e.output_id.is_some() { "warning" } else { "critical" },
            "category": "flow",
            "message": message,
            "flow_id": flow_id,
            "details": {"error_code": e.bind.code},
        });
        if let Some(o) = &e.output_id {
            event["output_id"] = json!(o);
        }
        if self.events.try_send(event).is_err() {
            tracing::debug!("event queue full; an event was dropped");
        }
        FlowError {
            message,
            code: Some(e.bind.code),
        }
    }

    /// Stores the flows (0600, atomically).
    async fn persist(&self, flows: &[Flow]) -> Result<(), FlowError> {
        let stored = StoredFlows {
            version: 1,
            flows: flows.iter().map(|f| f.config.clone()).collect(),
        };
        let dir = self.data_dir.clone();
        let saved = tokio::task::spawn_blocking(move || files::save_flows(&dir, &stored)).await;
        match saved {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(FlowError::new(format!("cannot store the flows: {e}"))),
            Err(e) => Err(FlowError::new(format!("storing the flows failed: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests;
