//! The flow commands of the node protocol, read from the manager's (untrusted)
//! `action` object and carried out on a [`FlowEngine`]. A missing or malformed
//! parameter is refused with the protocol's wording ("Missing flow_id").

use serde_json::Value;

use super::config::{FlowConfig, OutputConfig};
use super::{FlowEngine, FlowError};

/// The actions this module answers.
pub const ACTIONS: &[&str] = &[
    "create_flow",
    "update_flow",
    "delete_flow",
    "start_flow",
    "stop_flow",
    "restart_flow",
    "add_output",
    "remove_output",
    "update_config",
];

/// A non-empty string parameter, or "Missing <key>".
fn id_param<'a>(action: &'a Value, key: &str) -> Result<&'a str, FlowError> {
    action
        .get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| FlowError::new(format!("Missing {key}")))
}

/// An object parameter, or "Missing <key>".
fn object_param<'a>(action: &'a Value, key: &str) -> Result<&'a Value, FlowError> {
    action
        .get(key)
        .filter(|v| v.is_object())
        .ok_or_else(|| FlowError::new(format!("Missing {key}")))
}

/// Carries out `action` (whose `type` is one of [`ACTIONS`]).
pub async fn execute(engine: &FlowEngine, kind: &str, action: &Value) -> Result<(), FlowError> {
    match kind {
        "create_flow" => {
            engine
                .create(FlowConfig::parse(object_param(action, "flow")?)?)
                .await
        }
        "update_flow" => {
            let flow = FlowConfig::parse(object_param(action, "flow")?)?;
            let flow_id = match action.get("flow_id") {
                None | Some(Value::Null) => None,
                Some(_) => Some(id_param(action, "flow_id")?),
            };
            engine.update(flow_id, flow).await
        }
        "delete_flow" => engine.delete(id_param(action, "flow_id")?).await,
        "start_flow" => engine.start(id_param(action, "flow_id")?).await,
        "stop_flow" => engine.stop(id_param(action, "flow_id")?).await,
        "restart_flow" => engine.restart(id_param(action, "flow_id")?).await,
        "add_output" => {
            let id = id_param(action, "flow_id")?;
            let output = OutputConfig::parse(object_param(action, "output")?)?;
            engine.add_output(id, output).await
        }
        "remove_output" => {
            let id = id_param(action, "flow_id")?;
            engine
                .remove_output(id, id_param(action, "output_id")?)
                .await
        }
        "update_config" => update_config(engine, object_param(action, "config")?).await,
        other => Err(FlowError::new(format!("Unknown command: {other}"))),
    }
}

/// `update_config`: on this edge only the `flows` of the configuration are
/// taken (the gateway's configuration comes from the manager's snapshots); a
/// configuration without `flows` leaves them as they are.
async fn update_config(engine: &FlowEngine, config: &Value) -> Result<(), FlowError> {
    let Some(flows) = config.get("flows") else {
        return Ok(());
    };
    let list = flows
        .as_array()
        .ok_or_else(|| FlowError::new("config.flows must be an array"))?;
    let parsed = list
        .iter()
        .map(FlowConfig::parse)
        .collect::<Result<Vec<_>, _>>()?;
    engine.replace_all(parsed).await
}

#[cfg(test)]
mod tests {
    use super::ACTIONS;
    use fleetgate_protocol::node::DeviceType;

    #[test]
    fn every_action_is_on_the_edge_command_sheet() {
        let sheet: Vec<&str> = DeviceType::Edge.commands().iter().map(|c| c.name).collect();
        for a in ACTIONS {
            assert!(
                sheet.contains(a),
                "{a} is not an edge command of the protocol"
            );
        }
    }
}
