//! The `stats` entries of flows (`FlowStats` of the node protocol), computed
//! from the counters once per report: bitrates are the byte deltas since the
//! previous report.

use std::sync::atomic::Ordering::Relaxed;

use serde_json::{json, Map, Value};

use super::config::{FlowConfig, InputConfig, OutputConfig};
use super::output::RunningOutput;
use super::running::RunningFlow;
use super::stats::State;

/// A flow's `FlowStats`; `error` is why it is not running, if it should be.
pub fn flow_stats(
    config: &FlowConfig,
    running: Option<&RunningFlow>,
    error: Option<&str>,
) -> Value {
    let Some(r) = running else {
        return idle(config, error);
    };
    let input_error = r.input.error();
    let mut input = input_base(&config.input, r.input.state.get());
    let bytes = r.input.bytes_received.load(Relaxed);
    extend(
        &mut input,
        json!({
            "packets_received": r.input.packets_received.load(Relaxed),
            "bytes_received": bytes,
            "bitrate_bps": r.input.rate.sample(bytes),
            "packets_lost": r.input.packets_lost.load(Relaxed),
            "packets_filtered": r.input.packets_filtered.load(Relaxed),
            "packets_recovered_fec": 0,
        }),
    );
    let outputs: Vec<Value> = r.outputs.iter().map(output_stats).collect();
    let troubled = r.outputs.iter().any(troubled);
    let health = if r.input.state.get() == State::Error {
        "error"
    } else if troubled || input_error.is_some() {
        "warning"
    } else {
        "healthy"
    };
    let mut v = json!({
        "flow_id": config.id,
        "flow_name": config.name,
        "state": "running",
        "enabled": config.enabled,
        "input": input,
        "outputs": outputs,
        "uptime_secs": r.started.elapsed().as_secs(),
        "health": health,
    });
    if let Some(e) = input_error {
        v["error"] = json!(e);
    }
    v
}

/// A flow that is not running: stopped, or failed to start (`error`).
fn idle(config: &FlowConfig, error: Option<&str>) -> Value {
    let state = if error.is_some() {
        State::Error
    } else {
        State::Stopped
    };
    let mut input = input_base(&config.input, state);
    extend(
        &mut input,
        json!({"packets_received": 0, "bytes_received": 0, "bitrate_bps": 0,
               "packets_lost": 0, "packets_filtered": 0, "packets_recovered_fec": 0}),
    );
    let outputs: Vec<Value> = config
        .outputs
        .iter()
        .map(|o| {
            let mut v = output_base(o, State::Stopped);
            extend(
                &mut v,
                json!({"packets_sent": 0, "bytes_sent": 0, "bitrate_bps": 0,
                       "packets_dropped": 0, "fec_packets_sent": 0}),
            );
            v
        })
        .collect();
    let mut v = json!({
        "flow_id": config.id,
        "flow_name": config.name,
        "state": "idle",
        "enabled": config.enabled,
        "input": input,
        "outputs": outputs,
        "uptime_secs": 0,
        "health": if error.is_some() { "error" } else { "healthy" },
    });
    if let Some(e) = error {
        v["error"] = json!(e);
    }
    v
}

fn extend(target: &mut Value, more: Value) {
    if let (Value::Object(t), Value::Object(m)) = (target, more) {
        t.extend(m);
    }
}

fn input_base(input: &InputConfig, state: State) -> Value {
    let mut m = Map::new();
    m.insert("input_type".into(), json!(input.type_name()));
    m.insert("state".into(), json!(state.as_str()));
    match input {
        InputConfig::Udp(u) => {
            m.insert("bind_addr".into(), json!(u.bind_addr));
        }
        InputConfig::Rtp(r) => {
            m.insert("bind_addr".into(), json!(r.bind_addr));
        }
        InputConfig::Tcp(t) => {
            if let Some(l) = &t.listen_addr {
                m.insert("mode".into(), json!("listener"));
                m.insert("listen_addr".into(), json!(l));
            }
            if let Some(c) = &t.connect_addr {
                m.insert("mode".into(), json!("caller"));
                m.insert("remote_addr".into(), json!(c));
            }
        }
    }
    Value::Object(m)
}

fn output_base(o: &OutputConfig, state: State) -> Value {
    json!({
        "output_id": o.id(),
        "output_name": o.name(),
        "output_type": o.type_name(),
        "state": state.as_str(),
        "dest_addr": o.dest_addr(),
    })
}

fn output_stats(r: &RunningOutput) -> Value {
    let mut v = output_base(&r.config, r.counters.state.get());
    let c = &r.counters;
    let bytes = c.bytes_sent.load(Relaxed);
    extend(
        &mut v,
        json!({
            "packets_sent": c.packets_sent.load(Relaxed),
            "bytes_sent": bytes,
            "bitrate_bps": c.rate.sample(bytes),
            "packets_dropped": c.packets_dropped.load(Relaxed),
            "fec_packets_sent": 0,
        }),
    );
    v
}

/// An output that cannot reach its destination, or dropped packets since the
/// previous report.
fn troubled(r: &RunningOutput) -> bool {
    let dropped = r.counters.packets_dropped.load(Relaxed);
    let before = r.counters.dropped_reported.swap(dropped, Relaxed);
    matches!(r.counters.state.get(), State::Connecting | State::Error) || dropped > before
}
