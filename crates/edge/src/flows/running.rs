//! A running flow: its input task, its outputs and their counters.

use std::sync::Arc;
use std::time::Instant;

use tokio::task::JoinHandle;

use super::config::{FlowConfig, OutputConfig};
use super::input;
use super::output::{Fanout, RunningOutput};
use super::socket::BindError;
use super::stats::{InputCounters, State};

/// Why a flow or one of its outputs could not start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartError {
    pub bind: BindError,
    /// The output at fault; `None` for the input.
    pub output_id: Option<String>,
}

/// A flow whose sockets are open and whose tasks run.
#[derive(Debug)]
pub struct RunningFlow {
    fanout: Arc<Fanout>,
    pub input: Arc<InputCounters>,
    input_task: JoinHandle<()>,
    /// In the order of the flow's configuration.
    pub outputs: Vec<RunningOutput>,
    pub started: Instant,
}

impl RunningFlow {
    /// Starts the outputs, then the input (so its first packets have somewhere to go).
    pub async fn start(config: &FlowConfig) -> Result<Self, StartError> {
        let fanout = Arc::new(Fanout::default());
        let mut outputs = Vec::with_capacity(config.outputs.len());
        for o in &config.outputs {
            match RunningOutput::start(o.clone(), &fanout) {
                Ok(r) => outputs.push(r),
                Err(bind) => {
                    stop_all(outputs, &fanout).await;
                    return Err(StartError {
                        bind,
                        output_id: Some(o.id().to_string()),
                    });
                }
            }
        }
        let counters = Arc::new(InputCounters::default());
        match input::start(&config.input, fanout.clone(), counters.clone()) {
            Ok(input_task) => Ok(RunningFlow {
                fanout,
                input: counters,
                input_task,
                outputs,
                started: Instant::now(),
            }),
            Err(bind) => {
                stop_all(outputs, &fanout).await;
                Err(StartError {
                    bind,
                    output_id: None,
                })
            }
        }
    }

    /// Stops everything and waits until every socket is closed.
    pub async fn stop(self) {
        self.input_task.abort();
        let _ = self.input_task.await;
        self.input.state.set(State::Stopped);
        stop_all(self.outputs, &self.fanout).await;
    }

    /// Makes the running outputs those of `target`, touching only the outputs
    /// that differ: the others carry on uninterrupted.
    pub async fn set_outputs(&mut self, target: &[OutputConfig]) -> Result<(), StartError> {
        let (keep, gone): (Vec<_>, Vec<_>) = std::mem::take(&mut self.outputs)
            .into_iter()
            .partition(|r| target.contains(&r.config));
        stop_all(gone, &self.fanout).await;
        let mut keep: Vec<Option<RunningOutput>> = keep.into_iter().map(Some).collect();
        let mut next = Vec::with_capacity(target.len());
        let mut failure = None;
        for o in target {
            if let Some(r) = keep
                .iter_mut()
                .find(|r| r.as_ref().is_some_and(|r| &r.config == o))
                .and_then(Option::take)
            {
                next.push(r);
                continue;
            }
            match RunningOutput::start(o.clone(), &self.fanout) {
                Ok(r) => next.push(r),
                Err(bind) if failure.is_none() => {
                    failure = Some(StartError {
                        bind,
                        output_id: Some(o.id().to_string()),
                    })
                }
                Err(_) => {}
            }
        }
        self.outputs = next;
        failure.map_or(Ok(()), Err)
    }
}

async fn stop_all(outputs: Vec<RunningOutput>, fanout: &Fanout) {
    for o in outputs {
        o.stop(fanout).await;
    }
}
