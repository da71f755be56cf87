//! The node protocol on `/ws/node`, version 1, as Bilbycast edges and relays speak
//! it: the first frame authenticates (registration with a single-use token, or the
//! node id and secret), every later frame is a JSON envelope
//! `{"type", "timestamp", "payload"}`. Unknown message types and unknown fields are
//! accepted and ignored, in both directions, so newer nodes keep working.
//!
//! This module parses what nodes send (untrusted text: it never panics and bounds
//! what it keeps), renders what the manager sends, and holds the command sheet the
//! manager validates REST commands against before sending them.

use fleetgate_core::events::Severity;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

/// The protocol version this manager speaks (Bilbycast's `WS_PROTOCOL_VERSION`).
pub const PROTOCOL_VERSION: u32 = 1;
/// Text frames longer than this are dropped (the connection stays open).
pub const MAX_MESSAGE_BYTES: usize = 5 * 1024 * 1024;
/// Node event messages are kept up to this many bytes.
pub const MAX_EVENT_MESSAGE_BYTES: usize = 10_000;
/// Node event categories are kept up to this many bytes.
pub const MAX_EVENT_CATEGORY_BYTES: usize = 256;
/// A node's reported software version is kept up to this many bytes.
pub const MAX_VERSION_BYTES: usize = 256;

/// What kind of device a node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum DeviceType {
    Edge,
    Relay,
}

impl DeviceType {
    pub const ALL: [DeviceType; 2] = [DeviceType::Edge, DeviceType::Relay];

    pub fn as_str(self) -> &'static str {
        match self {
            DeviceType::Edge => "edge",
            DeviceType::Relay => "relay",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.as_str() == s)
    }

    pub fn display_name(self) -> &'static str {
        match self {
            DeviceType::Edge => "Edge node",
            DeviceType::Relay => "Relay server",
        }
    }

    /// The commands this kind of node accepts.
    pub fn commands(self) -> &'static [CommandSpec] {
        match self {
            DeviceType::Edge => EDGE_COMMANDS,
            DeviceType::Relay => RELAY_COMMANDS,
        }
    }
}

/// Truncates `s` to at most `max` bytes on a character boundary.
pub fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

// ---------------------------------------------------------------------------
// The first frame: authentication.

/// What a node's first frame asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthRequest {
    /// First contact, with the registration token.
    Register {
        token: String,
        software_version: Option<String>,
        protocol_version: Option<u32>,
        hostname: Option<String>,
    },
    /// A registered node coming back.
    Reconnect {
        node_id: String,
        node_secret: String,
        software_version: Option<String>,
        protocol_version: Option<u32>,
    },
}

/// Why a first frame is refused; its text is what `auth_error` says.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthFrameError {
    #[error("First message must be a text auth frame")]
    NotJson,
    #[error("Expected 'auth' message type, got '{0}'")]
    NotAuth(String),
    #[error("Missing node_id in auth payload")]
    MissingNodeId,
    #[error("Missing node_secret in auth payload")]
    MissingNodeSecret,
}

fn str_field(payload: &Map<String, Value>, key: &str) -> Option<String> {
    payload
        .get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// Parses a node's first frame. A registration token wins only when no node id and
/// secret are given (a registered node sends those).
pub fn parse_auth(text: &str) -> Result<AuthRequest, AuthFrameError> {
    let v: Value = serde_json::from_str(text).map_err(|_| AuthFrameError::NotJson)?;
    let obj = v.as_object().ok_or(AuthFrameError::NotJson)?;
    let kind = obj.get("type").and_then(Value::as_str).unwrap_or("");
    if kind != "auth" {
        return Err(AuthFrameError::NotAuth(truncate(kind.to_string(), 64)));
    }
    let empty = Map::new();
    let payload = obj
        .get("payload")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let software_version =
        str_field(payload, "software_version").map(|s| truncate(s, MAX_VERSION_BYTES));
    let protocol_version = payload
        .get("protocol_version")
        .and_then(Value::as_u64)
        .and_then(|n| u32::try_from(n).ok());
    let node_id = str_field(payload, "node_id");
    let node_secret = str_field(payload, "node_secret");
    if let (Some(node_id), Some(node_secret)) = (&node_id, &node_secret) {
        return Ok(AuthRequest::Reconnect {
            node_id: node_id.clone(),
            node_secret: node_secret.clone(),
            software_version,
            protocol_version,
        });
    }
    if let Some(token) = str_field(payload, "registration_token") {
        return Ok(AuthRequest::Register {
            token,
            software_version,
            protocol_version,
            hostname: str_field(payload, "hostname").map(|s| truncate(s, 256)),
        });
    }
    match node_id {
        None => Err(AuthFrameError::MissingNodeId),
        Some(_) => Err(AuthFrameError::MissingNodeSecret),
    }
}

// ---------------------------------------------------------------------------
// Node → manager.

/// A message a node sent after authenticating.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeMessage {
    Health(Value),
    Stats(Value),
    Event(NodeEvent),
    CommandAck(CommandAck),
    /// The reply to `get_config`: the node's whole configuration.
    ConfigResponse(Value),
    Pong,
    /// A Fleetgate edge's applied snapshot, right after authenticating
    /// (`config_status`, see [`crate::sync`]).
    ConfigStatus(crate::sync::AppliedConfig),
    /// A Fleetgate edge applied a snapshot (`config_ack`).
    ConfigAck(crate::sync::AppliedConfig),
    /// A Fleetgate edge refused a snapshot (`config_nack`).
    ConfigNack(crate::sync::ConfigNack),
    /// A type this manager does not know (ignored).
    Unknown(String),
}

/// An event a node reports.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeEvent {
    pub severity: Severity,
    pub category: String,
    pub message: String,
    pub flow_id: Option<String>,
    pub input_id: Option<String>,
    pub output_id: Option<String>,
    pub details: Value,
}

/// A node's answer to a command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandAck {
    pub command_id: String,
    pub success: bool,
    pub error: Option<String>,
    pub error_code: Option<String>,
    pub data: Option<Value>,
}

/// Why a frame after authentication is dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("message is larger than {MAX_MESSAGE_BYTES} bytes")]
    TooLarge,
    #[error("message is not a JSON object: {0}")]
    NotJson(String),
    #[error("message has no string \"type\"")]
    NoType,
    #[error("{kind} message is not valid: {reason}")]
    Invalid { kind: &'static str, reason: String },
}

fn invalid(kind: &'static str, reason: impl Into<String>) -> FrameError {
    FrameError::Invalid {
        kind,
        reason: reason.into(),
    }
}

/// Parses one text frame from an authenticated node. `timestamp` is not required
/// (nothing depends on it); `payload` defaults to null.
pub fn parse_node_message(text: &str) -> Result<NodeMessage, FrameError> {
    if text.len() > MAX_MESSAGE_BYTES {
        return Err(FrameError::TooLarge);
    }
    let v: Value = serde_json::from_str(text).map_err(|e| FrameError::NotJson(e.to_string()))?;
    let Value::Object(mut obj) = v else {
        return Err(FrameError::NotJson("not an object".into()));
    };
    let kind = match obj.get("type") {
        Some(Value::String(s)) => s.clone(),
        _ => return Err(FrameError::NoType),
    };
    let payload = obj.remove("payload").unwrap_or(Value::Null);
    Ok(match kind.as_str() {
        "health" => NodeMessage::Health(payload),
        "stats" => NodeMessage::Stats(payload),
        "config_response" => NodeMessage::ConfigResponse(payload),
        "pong" => NodeMessage::Pong,
        "event" => NodeMessage::Event(parse_event(payload)?),
        "command_ack" => NodeMessage::CommandAck(parse_ack(payload)?),
        crate::sync::CONFIG_STATUS => NodeMessage::ConfigStatus(
            crate::sync::parse_applied(payload).map_err(|e| invalid("config_status", e))?,
        ),
        crate::sync::CONFIG_ACK => NodeMessage::ConfigAck(
            crate::sync::parse_applied(payload).map_err(|e| invalid("config_ack", e))?,
        ),
        crate::sync::CONFIG_NACK => NodeMessage::ConfigNack(
            crate::sync::parse_nack(payload).map_err(|e| invalid("config_nack", e))?,
        ),
        _ => NodeMessage::Unknown(truncate(kind, 64)),
    })
}

fn opt_string(p: &Map<String, Value>, key: &str) -> Option<String> {
    p.get(key)
        .and_then(Value::as_str)
        .map(|s| truncate(s.to_string(), 256))
}

fn parse_event(payload: Value) -> Result<NodeEvent, FrameError> {
    let Value::Object(p) = payload else {
        return Err(invalid("event", "payload must be an object"));
    };
    Ok(NodeEvent {
        // Unknown severities are kept as info, as Bilbycast does.
        severity: p
            .get("severity")
            .and_then(Value::as_str)
            .and_then(Severity::parse)
            .unwrap_or(Severity::Info),
        category: truncate(
            p.get("category")
                .and_then(Value::as_str)
                .unwrap_or("unknown")
                .to_string(),
            MAX_EVENT_CATEGORY_BYTES,
        ),
        message: truncate(
            p.get("message")
                .and_then(Value::as_str)
                .unwrap_or("Unknown event")
                .to_string(),
            MAX_EVENT_MESSAGE_BYTES,
        ),
        flow_id: opt_string(&p, "flow_id"),
        input_id: opt_string(&p, "input_id"),
        output_id: opt_string(&p, "output_id"),
        details: match p.get("details") {
            Some(d @ Value::Object(_)) => d.clone(),
            _ => json!({}),
        },
    })
}

fn parse_ack(payload: Value) -> Result<CommandAck, FrameError> {
    let Value::Object(mut p) = payload else {
        return Err(invalid("command_ack", "payload must be an object"));
    };
    let command_id = match p.get("command_id") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => return Err(invalid("command_ack", "command_id must be a string")),
    };
    let success = match p.get("success") {
        Some(Value::Bool(b)) => *b,
        _ => return Err(invalid("command_ack", "success must be true or false")),
    };
    Ok(CommandAck {
        command_id,
        success,
        error: p
            .get("error")
            .and_then(Value::as_str)
            .map(|s| truncate(s.to_string(), MAX_EVENT_MESSAGE_BYTES)),
        error_code: opt_string(&p, "error_code"),
        data: p.remove("data").filter(|d| !d.is_null()),
    })
}

// ---------------------------------------------------------------------------
// Manager → node.

fn timestamp() -> String {
    fleetgate_core::time::rfc3339(fleetgate_core::time::now_ms())
}

/// `register_ack`: the node's id and its secret (sent this once).
pub fn register_ack(node_id: &str, node_secret: &str) -> String {
    json!({"type": "register_ack", "timestamp": timestamp(),
           "payload": {"node_id": node_id, "node_secret": node_secret}})
    .to_string()
}

/// `auth_ok`: a reconnect was accepted (no payload key, as in protocol v1).
pub fn auth_ok() -> String {
    json!({"type": "auth_ok", "timestamp": timestamp()}).to_string()
}

/// `auth_error`: the message is top level, with no timestamp or payload.
pub fn auth_error(message: &str) -> String {
    json!({"type": "auth_error", "message": message}).to_string()
}

/// An application-level `ping` (the node answers `pong`).
pub fn ping() -> String {
    json!({"type": "ping", "timestamp": timestamp(), "payload": null}).to_string()
}

/// A `command` envelope carrying `action` (an object with its `type`).
pub fn command(command_id: &str, action: &Value) -> String {
    json!({"type": "command", "timestamp": timestamp(),
           "payload": {"command_id": command_id, "action": action}})
    .to_string()
}

// ---------------------------------------------------------------------------
// The command sheet.

/// The JSON kind a command parameter must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamKind {
    /// A non-empty string.
    String,
    Object,
    /// Any string, empty included (a file's text).
    Text,
    Bool,
    /// A whole number from 0 up.
    Count,
}

/// A command a kind of node accepts, and what it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandSpec {
    pub name: &'static str,
    pub description: &'static str,
    /// Parameters that must be present, with their kind.
    pub required: &'static [(&'static str, ParamKind)],
    /// Parameters that may be present, with their kind.
    pub optional: &'static [(&'static str, ParamKind)],
    /// Answered with `config_response` instead of `command_ack`.
    pub answered_by_config: bool,
}

const fn spec(
    name: &'static str,
    description: &'static str,
    required: &'static [(&'static str, ParamKind)],
) -> CommandSpec {
    CommandSpec {
        name,
        description,
        required,
        optional: &[],
        answered_by_config: false,
    }
}

use ParamKind::{Bool as B, Count as N, Object as O, String as S, Text as T};

/// Commands of an edge: protocol v1's, then Fleetgate's additions (deployments).
pub const EDGE_COMMANDS: &[CommandSpec] = &[
    CommandSpec {
        answered_by_config: true,
        ..spec(
            "get_config",
            "Fetch the node's configuration (secrets removed)",
            &[],
        )
    },
    spec(
        "update_config",
        "Replace the node's whole configuration",
        &[("config", O)],
    ),
    spec(
        "create_flow",
        "Create a flow (started unless it says enabled: false)",
        &[("flow", O)],
    ),
    CommandSpec {
        optional: &[("flow_id", S)],
        ..spec(
            "update_flow",
            "Update a flow (restarts it only when needed)",
            &[("flow", O)],
        )
    },
    spec("delete_flow", "Stop and remove a flow", &[("flow_id", S)]),
    spec("start_flow", "Start a stored flow", &[("flow_id", S)]),
    spec("stop_flow", "Stop a flow", &[("flow_id", S)]),
    spec("restart_flow", "Restart a flow", &[("flow_id", S)]),
    spec(
        "add_output",
        "Add an output to a running flow",
        &[("flow_id", S), ("output", O)],
    ),
    spec(
        "remove_output",
        "Remove an output from a flow",
        &[("flow_id", S), ("output_id", S)],
    ),
    spec(
        "create_tunnel",
        "Create or replace a tunnel",
        &[("tunnel", O)],
    ),
    spec(
        "delete_tunnel",
        "Stop and remove a tunnel",
        &[("tunnel_id", S)],
    ),
    // Fleetgate additions (not in protocol v1): the deployments of the edge
    // (see `fleetgate_deploy::host`), answered with the deployment in the ack's
    // `data`, or refused with an `error_code` (`VALIDATION_FAILED` with
    // `data.problems`, each naming its file, line and field, `NOT_FOUND`,
    // `EXISTS`, …). A node without them answers "Unknown command".
    CommandSpec {
        optional: &[("service", T), ("start", B)],
        ..spec(
            "create_deployment",
            "Create a deployment from its compose.yml and service.yml (started unless start is false)",
            &[("name", S), ("compose", T)],
        )
    },
    CommandSpec {
        optional: &[("compose", T), ("service", T), ("version", N)],
        ..spec(
            "update_deployment",
            "Replace a deployment's files (version: only if it is still this one); a running deployment serves them as a new release",
            &[("name", S)],
        )
    },
    spec(
        "delete_deployment",
        "Stop a deployment, unroute it and remove it",
        &[("name", S)],
    ),
    spec(
        "start_deployment",
        "Start a deployment",
        &[("name", S)],
    ),
    spec("stop_deployment", "Stop a deployment", &[("name", S)]),
    spec(
        "restart_deployment",
        "Serve a deployment from a new instance",
        &[("name", S)],
    ),
    CommandSpec {
        optional: &[("release", N)],
        ..spec(
            "rollback_deployment",
            "Restore the files of an earlier release (default: the one that served before) and serve them",
            &[("name", S)],
        )
    },
    spec(
        "list_deployments",
        "List the deployments and their state",
        &[],
    ),
    CommandSpec {
        optional: &[("files", B)],
        ..spec(
            "get_deployment",
            "A deployment's state (and, with files, its compose.yml and service.yml)",
            &[("name", S)],
        )
    },
    CommandSpec {
        optional: &[("service", S), ("tail", N), ("since", N)],
        ..spec(
            "get_deployment_logs",
            "The newest lines of a deployment's logs (a bounded tail)",
            &[("name", S)],
        )
    },
    spec(
        "list_deployment_releases",
        "A deployment's releases, newest first",
        &[("name", S)],
    ),
];

/// The edge commands that change a deployment: the manager sends them through
/// its deployments endpoints only, which audit them.
pub const DEPLOYMENT_CHANGES: &[&str] = &[
    "create_deployment",
    "update_deployment",
    "delete_deployment",
    "start_deployment",
    "stop_deployment",
    "restart_deployment",
    "rollback_deployment",
];

/// Commands of a relay (protocol v1).
pub const RELAY_COMMANDS: &[CommandSpec] = &[
    CommandSpec {
        answered_by_config: true,
        ..spec(
            "get_config",
            "Fetch the relay's configuration (secrets redacted)",
            &[],
        )
    },
    spec(
        "disconnect_edge",
        "Disconnect an edge from the relay",
        &[("edge_id", S)],
    ),
    spec("close_tunnel", "Close a tunnel", &[("tunnel_id", S)]),
    spec("list_tunnels", "List the relay's tunnels", &[]),
    spec("list_edges", "List the edges connected to the relay", &[]),
    spec(
        "authorize_tunnel",
        "Pre-authorize a tunnel's HMAC-SHA256 bind tokens",
        &[("tunnel_id", S), ("ingress_token", S), ("egress_token", S)],
    ),
    spec(
        "revoke_tunnel",
        "Remove a tunnel's bind authorization",
        &[("tunnel_id", S)],
    ),
];

/// Why a command is refused before it is sent; the text names what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("action must be a JSON object with a \"type\"")]
    NotObject,
    #[error("action.type must be a string naming the command")]
    NoType,
    #[error("unknown command {name:?} for a {device}: expected one of {expected}")]
    Unknown {
        name: String,
        device: &'static str,
        expected: String,
    },
    #[error("{command} needs {param} ({kind})")]
    Missing {
        command: &'static str,
        param: &'static str,
        kind: &'static str,
    },
    #[error("{command}: {param} must be {kind}")]
    WrongKind {
        command: &'static str,
        param: &'static str,
        kind: &'static str,
    },
}

impl CommandError {
    /// The parameter at fault (`action.flow_id`), for the API's error details.
    pub fn field(&self) -> String {
        match self {
            CommandError::Missing { param, .. } | CommandError::WrongKind { param, .. } => {
                format!("action.{param}")
            }
            CommandError::NotObject => "action".into(),
            _ => "action.type".into(),
        }
    }
}

fn kind_name(k: ParamKind) -> &'static str {
    match k {
        ParamKind::String => "a non-empty string",
        ParamKind::Object => "an object",
        ParamKind::Text => "a string",
        ParamKind::Bool => "true or false",
        ParamKind::Count => "a whole number from 0 up",
    }
}

fn kind_ok(k: ParamKind, v: &Value) -> bool {
    match k {
        ParamKind::String => v.as_str().is_some_and(|s| !s.is_empty()),
        ParamKind::Object => v.is_object(),
        ParamKind::Text => v.is_string(),
        ParamKind::Bool => v.is_boolean(),
        ParamKind::Count => v.is_u64(),
    }
}

/// Checks `action` against the sheet of `device`; returns the command's spec.
pub fn validate_command(
    device: DeviceType,
    action: &Value,
) -> Result<&'static CommandSpec, CommandError> {
    let obj = action.as_object().ok_or(CommandError::NotObject)?;
    let name = obj
        .get("type")
        .and_then(Value::as_str)
        .ok_or(CommandError::NoType)?;
    let spec = device
        .commands()
        .iter()
        .find(|c| c.name == name)
        .ok_or_else(|| CommandError::Unknown {
            name: truncate(name.to_string(), 64),
            device: device.as_str(),
            expected: device
                .commands()
                .iter()
                .map(|c| c.name)
                .collect::<Vec<_>>()
                .join(", "),
        })?;
    for (param, kind) in spec.required {
        match obj.get(*param) {
            None | Some(Value::Null) => {
                return Err(CommandError::Missing {
                    command: spec.name,
                    param,
                    kind: kind_name(*kind),
                })
            }
            Some(v) if !kind_ok(*kind, v) => {
                return Err(CommandError::WrongKind {
                    command: spec.name,
                    param,
                    kind: kind_name(*kind),
                })
            }
            Some(_) => {}
        }
    }
    for (param, kind) in spec.optional {
        if let Some(v) = obj.get(*param).filter(|v| !v.is_null()) {
            if !kind_ok(*kind, v) {
                return Err(CommandError::WrongKind {
                    command: spec.name,
                    param,
                    kind: kind_name(*kind),
                });
            }
        }
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn auth_frames_of_both_shapes() {
        let reg = parse_auth(
            r#"{"type":"auth","payload":{"registration_token":"t-1","software_version":"0.5.3","protocol_version":1}}"#,
        );
        assert_eq!(
            reg,
            Ok(AuthRequest::Register {
                token: "t-1".into(),
                software_version: Some("0.5.3".into()),
                protocol_version: Some(1),
                hostname: None
            })
        );
        let re = parse_auth(
            r#"{"type":"auth","payload":{"node_id":"n","node_secret":"s","registration_token":"old","extra":[1]}}"#,
        );
        assert!(matches!(re, Ok(AuthRequest::Reconnect { ref node_id, .. }) if node_id == "n"));
        assert_eq!(
            parse_auth(r#"{"type":"auth","payload":{}}"#),
            Err(AuthFrameError::MissingNodeId)
        );
        assert_eq!(
            parse_auth(r#"{"type":"auth"}"#),
            Err(AuthFrameError::MissingNodeId)
        );
        assert_eq!(
            parse_auth(r#"{"type":"auth","payload":{"node_id":"n"}}"#),
            Err(AuthFrameError::MissingNodeSecret)
        );
        assert_eq!(parse_auth("{nope"), Err(AuthFrameError::NotJson));
        assert_eq!(
            parse_auth(r#"{"type":"stats","payload":{}}"#).map_err(|e| e.to_string()),
            Err("Expected 'auth' message type, got 'stats'".to_string())
        );
    }

    #[test]
    fn node_messages() {
        let ack = parse_node_message(
            r#"{"type":"command_ack","timestamp":"2026-01-01T00:00:00Z","payload":{"command_id":"c1","success":false,"error":"Unknown command: x","data":null}}"#,
        );
        assert_eq!(
            ack,
            Ok(NodeMessage::CommandAck(CommandAck {
                command_id: "c1".into(),
                success: false,
                error: Some("Unknown command: x".into()),
                error_code: None,
                data: None
            }))
        );
        assert!(matches!(
            parse_node_message(r#"{"type":"command_ack","payload":{"success":true}}"#),
            Err(FrameError::Invalid {
                kind: "command_ack",
                ..
            })
        ));
        assert_eq!(
            parse_node_message(r#"{"type":"thumbnail","payload":{"x":1},"more":2}"#),
            Ok(NodeMessage::Unknown("thumbnail".into()))
        );
        assert_eq!(
            parse_node_message(r#"{"type":"pong","payload":null}"#),
            Ok(NodeMessage::Pong)
        );
        let ev =
            parse_node_message(r#"{"type":"event","payload":{"severity":"loud","flow_id":"f"}}"#);
        let Ok(NodeMessage::Event(ev)) = ev else {
            panic!("event: {ev:?}")
        };
        assert_eq!(
            (
                ev.severity,
                ev.category.as_str(),
                ev.message.as_str(),
                ev.flow_id.as_deref()
            ),
            (Severity::Info, "unknown", "Unknown event", Some("f"))
        );
        assert_eq!(
            parse_node_message("[1]"),
            Err(FrameError::NotJson("not an object".into()))
        );
        assert_eq!(parse_node_message(r#"{"type":5}"#), Err(FrameError::NoType));
    }

    #[test]
    fn truncation_keeps_characters_whole() {
        assert_eq!(truncate("héllo".into(), 2), "h");
        assert_eq!(truncate("abc".into(), 10), "abc");
        let long = parse_node_message(
            &json!({"type":"event","payload":{"message":"é".repeat(6000)}}).to_string(),
        );
        let Ok(NodeMessage::Event(ev)) = long else {
            panic!()
        };
        assert!(ev.message.len() <= MAX_EVENT_MESSAGE_BYTES);
    }

    #[test]
    fn commands_are_checked_against_the_sheet() {
        let ok = validate_command(
            DeviceType::Edge,
            &json!({"type":"stop_flow","flow_id":"f1"}),
        );
        assert_eq!(ok.map(|s| s.name), Ok("stop_flow"));
        assert!(matches!(
            validate_command(DeviceType::Edge, &json!({"type":"list_edges"})),
            Err(CommandError::Unknown { .. })
        ));
        assert!(validate_command(DeviceType::Relay, &json!({"type":"list_edges"})).is_ok());
        let e = validate_command(
            DeviceType::Edge,
            &json!({"type":"add_output","flow_id":"f"}),
        );
        assert_eq!(
            e.as_ref().map_err(CommandError::field),
            Err("action.output".to_string())
        );
        assert!(matches!(
            validate_command(
                DeviceType::Edge,
                &json!({"type":"update_flow","flow":{},"flow_id":3})
            ),
            Err(CommandError::WrongKind {
                param: "flow_id",
                ..
            })
        ));
        assert_eq!(
            validate_command(DeviceType::Edge, &json!([1])),
            Err(CommandError::NotObject)
        );
        assert!(
            validate_command(DeviceType::Edge, &json!({"type":"get_config"}))
                .is_ok_and(|s| s.answered_by_config)
        );
    }

    #[test]
    fn deployment_commands_check_their_payloads() {
        let ok = validate_command(
            DeviceType::Edge,
            &json!({"type":"create_deployment","name":"web","compose":"services: {}\n","service":"","start":false}),
        );
        assert_eq!(ok.map(|s| s.name), Ok("create_deployment"));
        let e = validate_command(
            DeviceType::Edge,
            &json!({"type":"create_deployment","name":"web"}),
        );
        assert_eq!(
            e.as_ref().map_err(CommandError::field),
            Err("action.compose".to_string())
        );
        let e = validate_command(
            DeviceType::Edge,
            &json!({"type":"create_deployment","name":"web","compose":"x","start":"yes"}),
        );
        assert!(
            matches!(e, Err(CommandError::WrongKind { param: "start", .. })),
            "{e:?}"
        );
        for bad in [json!(-1), json!(1.5), json!("10")] {
            let e = validate_command(
                DeviceType::Edge,
                &json!({"type":"get_deployment_logs","name":"web","tail":bad}),
            );
            assert!(
                matches!(e, Err(CommandError::WrongKind { param: "tail", .. })),
                "{e:?}"
            );
        }
        assert!(validate_command(DeviceType::Edge, &json!({"type":"list_deployments"})).is_ok());
        assert!(
            validate_command(DeviceType::Relay, &json!({"type":"list_deployments"})).is_err(),
            "relays run no deployments"
        );
        for name in DEPLOYMENT_CHANGES {
            assert!(
                EDGE_COMMANDS.iter().any(|c| c.name == *name),
                "{name} is on the sheet"
            );
        }
    }

    proptest! {
        #[test]
        fn parsers_never_panic_on_any_text(s in "\\PC{0,400}") {
            let _ = parse_auth(&s);
            let _ = parse_node_message(&s);
        }

        #[test]
        fn parsers_never_panic_on_json_shaped_text(
            kind in prop_oneof![Just("auth".to_string()), Just("event".to_string()), Just("command_ack".to_string()), Just("stats".to_string()), Just("config_status".to_string()), Just("config_ack".to_string()), Just("config_nack".to_string()), "[a-z_]{0,12}"],
            key in "[a-z_]{1,16}",
            val in prop_oneof![Just("null".to_string()), Just("true".to_string()), "-?[0-9]{1,20}", "\"\\PC{0,40}\"", Just("{}".to_string()), Just("[]".to_string())],
        ) {
            let text = format!(r#"{{"type":"{kind}","payload":{{"{key}":{val},"command_id":{val},"success":{val},"severity":{val}}}}}"#);
            let _ = parse_auth(&text);
            let _ = parse_node_message(&text);
        }

        #[test]
        fn unknown_fields_never_change_the_message(extra in "[a-z]{1,10}", n in any::<i64>()) {
            let text = json!({"type":"command_ack","timestamp":"x",extra.clone():n,
                "payload":{"command_id":"c","success":true,"error":null, format!("p_{extra}"): n}}).to_string();
            let parsed = parse_node_message(&text);
            prop_assert!(matches!(parsed, Ok(NodeMessage::CommandAck(ref a)) if a.command_id == "c" && a.success));
        }

        #[test]
        fn commands_validation_never_panics(name in "[a-z_]{0,20}", flow_id in prop_oneof![Just(json!(null)), Just(json!(1)), Just(json!("f")), Just(json!({}))]) {
            for d in DeviceType::ALL {
                let _ = validate_command(d, &json!({"type": name, "flow_id": flow_id, "tunnel_id": flow_id}));
            }
        }
    }
}
