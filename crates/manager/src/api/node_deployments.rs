//! Deployments on an edge, over the API: `/api/v1/nodes/{id}/deployments…`
//! sends the edge's deployment commands (Fleetgate additions to the node
//! protocol, see `fleetgate_protocol::node::EDGE_COMMANDS`) to the node wherever
//! it is connected, and answers with what the edge answered.
//!
//! As other node commands: 502 when the node is not connected, 504 when it does
//! not answer in time (the change may still complete on the edge: read the
//! deployment to see), 422 when it refuses; in particular, files that do not
//! check are 400 `VALIDATION_FAILED` with the edge's problems (file, line,
//! column and field) in `details.problems`, an unknown deployment 404, an
//! existing one 409, an If-Match that no longer matches 412. Changes need the
//! operator role; a caller limited to some nodes gets 403 for the others. Every
//! change the edge may have carried out is audited (`node.deployment.*`, target
//! `<node id>/<name>`) with the files' digests, never their contents.
//!
//! The edge routes its deployments' domains through its own gateway (route
//! `edge-deploy-<name>`); a deployment's `ssl` does not request a certificate
//! there (the edge serves the certificates the manager sends it).

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use fleetgate_core::user::Role;
use fleetgate_protocol::node::{validate_command, CommandAck, DeviceType};
use fleetgate_store::AuditEvent;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use super::nodes::{failure, remote_failure, visible_node};
use crate::auth::AuthContext;
use crate::error::{ApiError, ApiResult};
use crate::extract::{json_with_etag, IfMatch, JsonBody, ListEnvelope, OptionalJson, QueryParams};
use crate::nodes::replicas::RemoteFailure;
use crate::nodes::{CommandFailure, COMMAND_TIMEOUT};
use crate::AppState;

/// How long a change may take on the edge (a release waits for its health
/// check, a stop for the services' grace period) before the API answers 504.
pub const CHANGE_TIMEOUT: Duration = Duration::from_secs(120);
/// Log lines one request returns at most.
pub const MAX_LOG_LINES: i64 = 1000;

/// A deployment on an edge, as the edge reports it.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct EdgeDeployment {
    pub name: String,
    /// What an operator asked: `running` or `stopped`.
    #[serde(default)]
    pub desired: String,
    /// `running`, `starting`, `degraded`, `failed` or `stopped`.
    #[serde(default)]
    pub status: String,
    /// `process` or `docker`.
    #[serde(default)]
    pub driver: String,
    /// Each service's state, in file order.
    #[serde(default)]
    #[schema(value_type = Vec<Object>)]
    pub services: Vec<Value>,
    #[serde(default)]
    pub domains: Vec<String>,
    /// The edge-local port its traffic goes to.
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub ssl: bool,
    /// Goes up with every change of the files (If-Match of an update).
    #[serde(default)]
    pub version: i64,
    /// The release serving (0 before one went live).
    #[serde(default)]
    pub release: u64,
    /// `recreate` or `blue-green`.
    #[serde(default)]
    pub strategy: String,
    /// The live instance: its key, release, the edge-local port the gateway
    /// sends traffic to and each service's port.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub instance: Option<Value>,
    /// Replaced instances still finishing their requests and WebSockets.
    #[serde(default)]
    pub draining: Vec<String>,
    /// How the edge's gateway serves it.
    #[serde(default)]
    pub proxy: EdgeProxy,
    #[serde(default)]
    pub created_at: String,
    #[serde(default)]
    pub updated_at: String,
    #[serde(default)]
    pub compose_sha256: String,
    #[serde(default)]
    pub service_sha256: String,
    /// `compose.yml` (operators and admins only, on a single deployment).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compose: Option<String>,
    /// `service.yml` (operators and admins only, on a single deployment).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

/// A deployment's route on the edge's gateway.
#[derive(Serialize, Deserialize, ToSchema, Default)]
pub struct EdgeProxy {
    /// `edge-deploy-<name>`.
    #[serde(default)]
    pub route_id: String,
    /// Whether the edge's gateway input routes its domains.
    #[serde(default)]
    pub served: bool,
    /// Why it is not served: the manager's configuration has the same id, or a
    /// route that matches the same requests (the manager's configuration wins).
    #[serde(default)]
    pub error: Option<String>,
}

/// One release of a deployment on an edge.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct EdgeRelease {
    pub number: u64,
    /// The files' version it was made from.
    #[serde(default)]
    pub version: i64,
    /// `deploying`, `live`, `failed` or `replaced`.
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub created_at: String,
    #[serde(default)]
    pub live_at: Option<String>,
    #[serde(default)]
    pub ended_at: Option<String>,
    /// Why it was dropped.
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub driver: String,
    #[serde(default)]
    pub strategy: String,
    /// The release whose files a rollback restored.
    #[serde(default)]
    pub rollback_of: Option<u64>,
    #[serde(default)]
    pub compose_sha256: String,
    #[serde(default)]
    pub service_sha256: String,
}

/// One line of a deployment's logs on an edge.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct EdgeLogLine {
    /// Unix milliseconds when the edge read it.
    pub at: i64,
    pub service: String,
    /// `stdout`, `stderr`, or `fleetgate` for the driver's own notes.
    pub stream: String,
    pub line: String,
}

/// The newest lines of a deployment's logs on an edge, oldest first.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct EdgeLogs {
    pub items: Vec<EdgeLogLine>,
    /// Older lines asked for were left out to keep the answer under 1 MiB.
    #[serde(default)]
    pub truncated: bool,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateEdgeDeployment {
    /// 1 to 48 of a-z, 0-9 and '-'.
    pub name: String,
    /// The text of `compose.yml`.
    pub compose: String,
    /// The text of `service.yml` (domains, health check, rate limit).
    #[serde(default)]
    pub service: String,
    /// Start it now (default true).
    #[serde(default = "yes")]
    pub start: bool,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateEdgeDeployment {
    /// The new `compose.yml`.
    pub compose: Option<String>,
    /// The new `service.yml`.
    pub service: Option<String>,
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct EdgeRollback {
    /// The release whose files come back (default: the newest release before
    /// the one serving that once served).
    pub release: Option<u64>,
}

fn digest(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// The edge answered something this manager cannot read.
fn bad_answer(id: &str, what: &str, e: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        "NODE_BAD_ANSWER",
        format!("node {id} answered {what} this manager cannot read: {e}"),
    )
}

/// A refusal of the edge as the API reports it.
fn refused(id: &str, name: Option<&str>, ack: CommandAck) -> ApiError {
    let message = ack
        .error
        .clone()
        .unwrap_or_else(|| "no reason given".into());
    let data = ack.data.clone().unwrap_or_else(|| json!({}));
    let what = |name: Option<&str>| match name {
        Some(n) => format!("deployment {n} on node {id}"),
        None => format!("node {id}"),
    };
    match ack.error_code.as_deref() {
        Some("VALIDATION_FAILED") => {
            ApiError::new(StatusCode::BAD_REQUEST, "VALIDATION_FAILED", message)
                .with_details(data)
                .and_details(json!({"node_id": id}))
        }
        // A parameter the edge (or, before sending, the command sheet) refused.
        Some("BAD_REQUEST" | "invalid_command") => {
            ApiError::new(StatusCode::BAD_REQUEST, "VALIDATION_FAILED", message)
                .with_details(data)
                .and_details(json!({"node_id": id}))
        }
        Some("NOT_FOUND") => ApiError::not_found(what(name)),
        Some("RELEASE_NOT_FOUND") => ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", message),
        Some("EXISTS") => ApiError::conflict(format!("{} already exists", what(name))),
        Some("VERSION_MISMATCH") => {
            let current = data.get("current_version").cloned().unwrap_or(Value::Null);
            ApiError::new(
                StatusCode::PRECONDITION_FAILED,
                "PRECONDITION_FAILED",
                format!("If-Match does not match the current version \"{current}\""),
            )
            .with_details(json!({ "current_version": current }))
        }
        _ => failure(id, CommandFailure::Refused(ack)),
    }
}

/// What became of a change sent to an edge.
enum Outcome {
    /// Carried out: the ack's data.
    Done(Value),
    /// Refused after changing something on the edge (`data.changed`).
    RefusedAfterChange(ApiError, Value),
    /// Not carried out.
    Refused(ApiError),
    /// The node did not answer: the change may or may not have been made.
    Unknown(ApiError),
}

async fn send(state: &AppState, id: &str, action: &Value, wait: Duration) -> Outcome {
    let name = action.get("name").and_then(Value::as_str);
    // Checked against the command sheet here, to name the request's field.
    if let Err(e) = validate_command(DeviceType::Edge, action) {
        let field = e.field();
        let field = field.strip_prefix("action.").unwrap_or(&field);
        return Outcome::Refused(ApiError::bad_request(field, e.to_string()));
    }
    match state.command_anywhere(id, action, wait).await {
        Ok(ack) => Outcome::Done(ack.data.unwrap_or(Value::Null)),
        Err(RemoteFailure::Node(CommandFailure::Refused(ack))) => {
            let data = ack.data.clone().unwrap_or(Value::Null);
            let changed = data.get("changed") == Some(&Value::Bool(true));
            let error = refused(id, name, ack);
            if changed {
                Outcome::RefusedAfterChange(error.and_details(json!({"edge": data.clone()})), data)
            } else {
                Outcome::Refused(error)
            }
        }
        Err(f @ (RemoteFailure::Timeout | RemoteFailure::Node(CommandFailure::Timeout))) => {
            let e = remote_failure(id, f);
            Outcome::Unknown(ApiError {
                message: format!(
                    "node {id} did not answer within {} s; the change may still be carried out (read the deployment to see)",
                    wait.as_secs()
                ),
                ..e
            })
        }
        Err(f @ RemoteFailure::Node(CommandFailure::Disconnected)) => {
            Outcome::Unknown(remote_failure(id, f))
        }
        Err(f) => Outcome::Refused(remote_failure(id, f)),
    }
}

/// A read: the ack's data, or the API's error.
async fn read(state: &AppState, id: &str, action: Value) -> ApiResult<Value> {
    match send(state, id, &action, COMMAND_TIMEOUT).await {
        Outcome::Done(data) => Ok(data),
        Outcome::RefusedAfterChange(e, _) | Outcome::Refused(e) | Outcome::Unknown(e) => Err(e),
    }
}

/// The node, visible to the caller and an edge.
async fn edge_node(state: &AppState, auth: &AuthContext, id: &str) -> ApiResult<()> {
    let n = visible_node(state, auth, id).await?;
    if DeviceType::parse(&n.device_type) != Some(DeviceType::Edge) {
        return Err(ApiError::bad_request(
            "id",
            format!("node {id} is a {}; deployments run on edges", n.device_type),
        ));
    }
    Ok(())
}

/// What the audit log keeps of a deployment the edge reported: its digests.
fn audit_view(id: &str, d: &Value) -> Value {
    let mut v = json!({"node_id": id});
    for key in [
        "name",
        "version",
        "desired",
        "domains",
        "compose_sha256",
        "service_sha256",
    ] {
        if let Some(x) = d.get(key) {
            v[key] = x.clone();
        }
    }
    if let Some(services) = d.get("services").and_then(Value::as_array) {
        v["services"] = json!(services
            .iter()
            .map(|s| s.get("name").cloned().unwrap_or_else(|| s.clone()))
            .collect::<Vec<_>>());
    }
    v
}

async fn audit(
    state: &AppState,
    auth: &AuthContext,
    action: &str,
    id: &str,
    name: &str,
    before: Option<Value>,
    after: Option<Value>,
) -> ApiResult<()> {
    let target = format!("{id}/{name}");
    let ev = AuditEvent {
        before,
        after,
        ..AuditEvent::new(
            &format!("node.deployment.{action}"),
            "node_deployment",
            Some(&target),
        )
    };
    state.store.append_audit(&auth.actor, ev).await?;
    Ok(())
}

/// Sends a change, audits what may have happened, and returns the ack's data.
/// `sent` is what the audit log keeps of the request (digests of the files sent).
async fn change(
    state: &AppState,
    auth: &AuthContext,
    id: &str,
    name: &str,
    verb: &str,
    action: Value,
    sent: Value,
) -> ApiResult<Value> {
    let mut sent = sent;
    sent["node_id"] = json!(id);
    sent["name"] = json!(name);
    match send(state, id, &action, CHANGE_TIMEOUT).await {
        Outcome::Done(data) => {
            let reported = data.get("deployment").filter(|d| d.is_object());
            let (before, after) = if verb == "delete" {
                (Some(reported.map_or(sent, |d| audit_view(id, d))), None)
            } else {
                let before = data
                    .get("previous")
                    .filter(|p| p.is_object())
                    .map(|p| audit_view(id, p));
                let mut after = reported.map_or(sent, |d| audit_view(id, d));
                if let Some(r) = data.get("restored_release") {
                    after["restored_release"] = r.clone();
                }
                (before, Some(after))
            };
            audit(state, auth, verb, id, name, before, after).await?;
            Ok(data)
        }
        Outcome::RefusedAfterChange(e, data) => {
            sent["outcome"] = json!("refused after a change");
            sent["error"] = json!(e.message);
            sent["edge"] = data;
            audit(state, auth, verb, id, name, None, Some(sent)).await?;
            Err(e)
        }
        Outcome::Unknown(e) => {
            sent["outcome"] = json!("no answer");
            sent["error"] = json!(e.message);
            audit(state, auth, verb, id, name, None, Some(sent)).await?;
            Err(e)
        }
        Outcome::Refused(e) => Err(e),
    }
}

fn deployment_of(id: &str, data: &Value) -> ApiResult<EdgeDeployment> {
    let d = data.get("deployment").cloned().unwrap_or(Value::Null);
    serde_json::from_value(d).map_err(|e| bad_answer(id, "a deployment", e))
}

#[utoipa::path(get, path = "/api/v1/nodes/{id}/deployments", operation_id = "list_edge_deployments", tag = "nodes",
    params(("id" = String, Path, description = "Node id (an edge)")),
    responses((status = 200, description = "The edge's deployments and each service's state", body = ListEnvelope<EdgeDeployment>),
              (status = 502, description = "The node is not connected"),
              (status = 504, description = "No answer within 10 s")))]
pub async fn list(
    State(state): State<AppState>,
    auth: AuthContext,
    Path(id): Path<String>,
) -> ApiResult<Json<ListEnvelope<EdgeDeployment>>> {
    edge_node(&state, &auth, &id).await?;
    let data = read(&state, &id, json!({"type": "list_deployments"})).await?;
    let items: Vec<EdgeDeployment> =
        serde_json::from_value(data.get("items").cloned().unwrap_or(Value::Null))
            .map_err(|e| bad_answer(&id, "a list of deployments", e))?;
    Ok(Json(ListEnvelope::whole(items)))
}

#[utoipa::path(post, path = "/api/v1/nodes/{id}/deployments", operation_id = "create_edge_deployment", tag = "nodes",
    params(("id" = String, Path, description = "Node id (an edge)")), request_body = CreateEdgeDeployment,
    responses((status = 201, description = "Created on the edge (and started unless start is false); its domains are routed by the edge's gateway", body = EdgeDeployment),
              (status = 400, description = "The files do not check: details.problems lists each with file, line, column and field"),
              (status = 409, description = "The edge already has a deployment of this name"),
              (status = 422, description = "The edge refused (its error_code in details): e.g. created but it could not start (details.edge.created is true), or its route cannot be served beside the manager's (PROXY_REFUSED)"),
              (status = 502, description = "The node is not connected"),
              (status = 504, description = "No answer within 120 s (the change may still complete)")))]
pub async fn create(
    State(state): State<AppState>,
    auth: AuthContext,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<CreateEdgeDeployment>,
) -> ApiResult<Response> {
    auth.require(Role::Operator)?;
    edge_node(&state, &auth, &id).await?;
    let mut action = json!({"type": "create_deployment", "name": body.name,
        "compose": body.compose, "start": body.start});
    if !body.service.is_empty() {
        action["service"] = json!(body.service);
    }
    let sent = json!({"compose_sha256": digest(&body.compose),
        "service_sha256": digest(&body.service), "start": body.start});
    let data = change(&state, &auth, &id, &body.name, "create", action, sent).await?;
    let d = deployment_of(&id, &data)?;
    Ok(json_with_etag(StatusCode::CREATED, d.version, d))
}

#[utoipa::path(get, path = "/api/v1/nodes/{id}/deployments/{name}", operation_id = "get_edge_deployment", tag = "nodes",
    params(("id" = String, Path, description = "Node id (an edge)"), ("name" = String, Path, description = "Deployment name")),
    responses((status = 200, description = "The deployment, its services' states and (for operators) its files", body = EdgeDeployment),
              (status = 404, description = "No such deployment on the edge"),
              (status = 502, description = "The node is not connected"),
              (status = 504, description = "No answer within 10 s")))]
pub async fn get(
    State(state): State<AppState>,
    auth: AuthContext,
    Path((id, name)): Path<(String, String)>,
) -> ApiResult<Response> {
    edge_node(&state, &auth, &id).await?;
    let files = auth.role >= Role::Operator;
    let data = read(
        &state,
        &id,
        json!({"type": "get_deployment", "name": name, "files": files}),
    )
    .await?;
    let mut d = deployment_of(&id, &data)?;
    if !files {
        d.compose = None;
        d.service = None;
    }
    Ok(json_with_etag(StatusCode::OK, d.version, d))
}

#[utoipa::path(put, path = "/api/v1/nodes/{id}/deployments/{name}", operation_id = "update_edge_deployment", tag = "nodes",
    params(("id" = String, Path, description = "Node id (an edge)"), ("name" = String, Path, description = "Deployment name")),
    request_body = UpdateEdgeDeployment,
    responses((status = 200, description = "Updated; a running deployment serves the new files as a new release (blue-green when it can)", body = EdgeDeployment),
              (status = 400, description = "The files do not check: details.problems lists each with file, line, column and field"),
              (status = 404, description = "No such deployment on the edge"),
              (status = 412, description = "If-Match does not match the deployment's version on the edge"),
              (status = 422, description = "The edge refused (its error_code in details), e.g. the new release did not become ready (RELEASE_FAILED; the files are saved, details.edge.saved, and the release serving before serves on)"),
              (status = 502, description = "The node is not connected"),
              (status = 504, description = "No answer within 120 s (the change may still complete)")))]
pub async fn update(
    State(state): State<AppState>,
    auth: AuthContext,
    Path((id, name)): Path<(String, String)>,
    IfMatch(expected): IfMatch,
    JsonBody(body): JsonBody<UpdateEdgeDeployment>,
) -> ApiResult<Response> {
    auth.require(Role::Operator)?;
    edge_node(&state, &auth, &id).await?;
    let mut action = json!({"type": "update_deployment", "name": name});
    let mut sent = json!({});
    if let Some(c) = &body.compose {
        action["compose"] = json!(c);
        sent["compose_sha256"] = json!(digest(c));
    }
    if let Some(s) = &body.service {
        action["service"] = json!(s);
        sent["service_sha256"] = json!(digest(s));
    }
    if let Some(v) = expected {
        action["version"] = json!(v.max(0));
    }
    let data = change(&state, &auth, &id, &name, "update", action, sent).await?;
    let d = deployment_of(&id, &data)?;
    Ok(json_with_etag(StatusCode::OK, d.version, d))
}

#[utoipa::path(delete, path = "/api/v1/nodes/{id}/deployments/{name}", operation_id = "delete_edge_deployment", tag = "nodes",
    params(("id" = String, Path, description = "Node id (an edge)"), ("name" = String, Path, description = "Deployment name")),
    responses((status = 204, description = "Unrouted on the edge, stopped and removed (its logs are kept)"),
              (status = 404, description = "No such deployment on the edge"),
              (status = 502, description = "The node is not connected"),
              (status = 504, description = "No answer within 120 s (the change may still complete)")))]
pub async fn delete(
    State(state): State<AppState>,
    auth: AuthContext,
    Path((id, name)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    auth.require(Role::Operator)?;
    edge_node(&state, &auth, &id).await?;
    let action = json!({"type": "delete_deployment", "name": name});
    change(&state, &auth, &id, &name, "delete", action, json!({})).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn act(
    state: &AppState,
    auth: &AuthContext,
    id: &str,
    name: &str,
    verb: &str,
) -> ApiResult<Json<EdgeDeployment>> {
    auth.require(Role::Operator)?;
    edge_node(state, auth, id).await?;
    let action = json!({"type": format!("{verb}_deployment"), "name": name});
    let data = change(state, auth, id, name, verb, action, json!({})).await?;
    Ok(Json(deployment_of(id, &data)?))
}

#[utoipa::path(post, path = "/api/v1/nodes/{id}/deployments/{name}/start", operation_id = "start_edge_deployment", tag = "nodes",
    params(("id" = String, Path, description = "Node id (an edge)"), ("name" = String, Path, description = "Deployment name")),
    responses((status = 200, description = "Started on the edge", body = EdgeDeployment),
              (status = 404, description = "No such deployment on the edge"),
              (status = 422, description = "The edge refused (its error_code in details), e.g. RELEASE_FAILED"),
              (status = 502, description = "The node is not connected"),
              (status = 504, description = "No answer within 120 s (the change may still complete)")))]
pub async fn start(
    State(state): State<AppState>,
    auth: AuthContext,
    Path((id, name)): Path<(String, String)>,
) -> ApiResult<Json<EdgeDeployment>> {
    act(&state, &auth, &id, &name, "start").await
}

#[utoipa::path(post, path = "/api/v1/nodes/{id}/deployments/{name}/stop", operation_id = "stop_edge_deployment", tag = "nodes",
    params(("id" = String, Path, description = "Node id (an edge)"), ("name" = String, Path, description = "Deployment name")),
    responses((status = 200, description = "Stopped on the edge (stop signal, then a kill after the grace period)", body = EdgeDeployment),
              (status = 404, description = "No such deployment on the edge"),
              (status = 502, description = "The node is not connected"),
              (status = 504, description = "No answer within 120 s (the change may still complete)")))]
pub async fn stop(
    State(state): State<AppState>,
    auth: AuthContext,
    Path((id, name)): Path<(String, String)>,
) -> ApiResult<Json<EdgeDeployment>> {
    act(&state, &auth, &id, &name, "stop").await
}

#[utoipa::path(post, path = "/api/v1/nodes/{id}/deployments/{name}/restart", operation_id = "restart_edge_deployment", tag = "nodes",
    params(("id" = String, Path, description = "Node id (an edge)"), ("name" = String, Path, description = "Deployment name")),
    responses((status = 200, description = "Served from a new instance on the edge", body = EdgeDeployment),
              (status = 404, description = "No such deployment on the edge"),
              (status = 422, description = "The edge refused (its error_code in details), e.g. RELEASE_FAILED"),
              (status = 502, description = "The node is not connected"),
              (status = 504, description = "No answer within 120 s (the change may still complete)")))]
pub async fn restart(
    State(state): State<AppState>,
    auth: AuthContext,
    Path((id, name)): Path<(String, String)>,
) -> ApiResult<Json<EdgeDeployment>> {
    act(&state, &auth, &id, &name, "restart").await
}

#[utoipa::path(post, path = "/api/v1/nodes/{id}/deployments/{name}/rollback", operation_id = "rollback_edge_deployment", tag = "nodes",
    params(("id" = String, Path, description = "Node id (an edge)"), ("name" = String, Path, description = "Deployment name")),
    request_body = EdgeRollback,
    responses((status = 200, description = "The release's files are the deployment's again, and a running deployment serves them as a new release", body = EdgeDeployment),
              (status = 404, description = "No such deployment or release on the edge"),
              (status = 422, description = "The edge refused (its error_code in details): NO_ROLLBACK, RELEASE_FAILED…"),
              (status = 502, description = "The node is not connected"),
              (status = 504, description = "No answer within 120 s (the change may still complete)")))]
pub async fn rollback(
    State(state): State<AppState>,
    auth: AuthContext,
    Path((id, name)): Path<(String, String)>,
    OptionalJson(body): OptionalJson<EdgeRollback>,
) -> ApiResult<Response> {
    auth.require(Role::Operator)?;
    edge_node(&state, &auth, &id).await?;
    let mut action = json!({"type": "rollback_deployment", "name": name});
    if let Some(r) = body.unwrap_or_default().release {
        action["release"] = json!(r);
    }
    let sent = json!({"release": action.get("release")});
    let data = change(&state, &auth, &id, &name, "rollback", action, sent).await?;
    let d = deployment_of(&id, &data)?;
    Ok(json_with_etag(StatusCode::OK, d.version, d))
}

#[utoipa::path(get, path = "/api/v1/nodes/{id}/deployments/{name}/logs", operation_id = "edge_deployment_logs", tag = "nodes",
    params(("id" = String, Path, description = "Node id (an edge)"), ("name" = String, Path, description = "Deployment name"),
        ("service" = Option<String>, Query, description = "Only this service's lines"),
        ("tail" = Option<i64>, Query, description = "The newest lines, at most this many (default 200, at most 1000; at most 1 MiB of them)"),
        ("since" = Option<String>, Query, description = "Only lines from this time on (RFC 3339 or Unix milliseconds)")),
    responses((status = 200, description = "Lines oldest first", body = EdgeLogs),
              (status = 404, description = "No such deployment on the edge"),
              (status = 502, description = "The node is not connected"),
              (status = 504, description = "No answer within 10 s")))]
pub async fn logs(
    State(state): State<AppState>,
    auth: AuthContext,
    Path((id, name)): Path<(String, String)>,
    q: QueryParams,
) -> ApiResult<Json<EdgeLogs>> {
    edge_node(&state, &auth, &id).await?;
    let mut action = json!({"type": "get_deployment_logs", "name": name});
    match q.int("tail")? {
        Some(n) if n > MAX_LOG_LINES => {
            return Err(ApiError::bad_request(
                "tail",
                format!("must be from 0 to {MAX_LOG_LINES}"),
            ))
        }
        Some(n) => action["tail"] = json!(n),
        None => {}
    }
    if let Some(s) = q.text("service") {
        action["service"] = json!(s);
    }
    if let Some(t) = q.time("since")? {
        action["since"] = json!(t.max(0));
    }
    let data = read(&state, &id, action).await?;
    let logs = serde_json::from_value(data).map_err(|e| bad_answer(&id, "logs", e))?;
    Ok(Json(logs))
}

#[utoipa::path(get, path = "/api/v1/nodes/{id}/deployments/{name}/releases", operation_id = "list_edge_deployment_releases", tag = "nodes",
    params(("id" = String, Path, description = "Node id (an edge)"), ("name" = String, Path, description = "Deployment name")),
    responses((status = 200, description = "Its releases on the edge, newest first (the last 20, and the one serving)", body = ListEnvelope<EdgeRelease>),
              (status = 404, description = "No such deployment on the edge"),
              (status = 502, description = "The node is not connected"),
              (status = 504, description = "No answer within 10 s")))]
pub async fn releases(
    State(state): State<AppState>,
    auth: AuthContext,
    Path((id, name)): Path<(String, String)>,
) -> ApiResult<Json<ListEnvelope<EdgeRelease>>> {
    edge_node(&state, &auth, &id).await?;
    let data = read(
        &state,
        &id,
        json!({"type": "list_deployment_releases", "name": name}),
    )
    .await?;
    let items: Vec<EdgeRelease> =
        serde_json::from_value(data.get("items").cloned().unwrap_or(Value::Null))
            .map_err(|e| bad_answer(&id, "a list of releases", e))?;
    Ok(Json(ListEnvelope::whole(items)))
}
