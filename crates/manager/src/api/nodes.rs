//! Fleet nodes over the API: CRUD, the single-use registration token (shown only
//! when issued), the device types and their command sheets, commands sent to a
//! connected node (502 not connected, 504 no answer within 10 s, 422 refused by
//! the node, 413 body over 50 KiB), and the node's cached configuration. A caller
//! limited to some nodes (`allowed_node_ids`) sees only those and gets 403 for
//! the others.

use std::collections::HashMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use fleetgate_core::time::{now_ms, parse_rfc3339};
use fleetgate_core::user::Role;
use fleetgate_protocol::node::{validate_command, DeviceType, DEPLOYMENT_CHANGES};
use fleetgate_store::{AuditEvent, NodeFilter, NodeRecord};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::ToSchema;

use super::rfc3339;
use crate::auth::{hash_token, random_token, AuthContext};
use crate::error::{ApiError, ApiResult};
use crate::extract::{json_with_etag, IfMatch, JsonBody, ListEnvelope, Pagination, QueryParams};
use crate::nodes::replicas::{LiveView, Online, RemoteFailure, Whereabouts};
use crate::nodes::{CommandFailure, COMMAND_TIMEOUT, CONFIG_FETCH_TIMEOUT};
use crate::AppState;

/// Largest command body accepted.
pub const COMMAND_BODY_LIMIT: usize = 50 * 1024;
/// A registration token is valid this long unless `token_ttl_secs` says otherwise.
pub const DEFAULT_TOKEN_TTL_SECS: u64 = 24 * 3600;
const MAX_TOKEN_TTL_SECS: u64 = 30 * 24 * 3600;
const MIN_TOKEN_TTL_SECS: u64 = 60;

#[derive(Serialize, ToSchema)]
pub struct NodeView {
    pub id: String,
    pub name: String,
    pub description: Option<String>,
    /// `edge` or `relay`.
    pub device_type: String,
    /// `pending` (never registered), `online` (connected here) or `offline`.
    pub status: &'static str,
    pub software_version: Option<String>,
    pub protocol_version: Option<i64>,
    #[schema(value_type = Object)]
    pub metadata: Value,
    pub expires_at: Option<String>,
    pub registered_at: Option<String>,
    pub last_seen_at: Option<String>,
    /// Expiry of the registration token while it is unused.
    pub token_expires_at: Option<String>,
    pub version: i64,
    pub created_at: String,
    pub updated_at: String,
    /// The latest health message of a connected node.
    #[schema(value_type = Option<Object>)]
    pub last_health: Option<Value>,
    /// The latest stats message of a connected node (single node only).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub last_stats: Option<Value>,
    /// When the current connection began.
    pub connected_since: Option<String>,
    /// The manager replica holding the node's connection (its instance id).
    pub connected_to: Option<String>,
    /// Config sync of a Fleetgate edge (absent for nodes that do not take part).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config: Option<ConfigSyncView>,
}

/// A Fleetgate edge's configuration revisions.
#[derive(Serialize, ToSchema)]
pub struct ConfigSyncView {
    /// The revision the manager wants the edge to serve.
    pub desired_revision: Option<u64>,
    /// The revision the edge reports serving.
    pub applied_revision: Option<u64>,
    /// Whether the edge serves exactly the snapshot the manager wants.
    pub in_sync: bool,
    /// The revision last sent to the edge.
    pub sent_revision: Option<u64>,
    /// `snapshot` (whole) or `delta` (changes since what the edge held).
    pub sent_as: Option<String>,
    /// Why the edge refused a snapshot (until it applies a later one).
    pub last_error: Option<String>,
    pub error_revision: Option<u64>,
    pub updated_at: String,
}

fn sync_view(live: &LiveView) -> Option<ConfigSyncView> {
    let s = live.sync.as_ref()?;
    Some(ConfigSyncView {
        desired_revision: live.desired_revision,
        applied_revision: s.applied_revision,
        in_sync: live.desired_digest.is_some() && s.applied_digest == live.desired_digest,
        sent_revision: s.sent_revision,
        sent_as: s.sent_as.clone(),
        last_error: s.last_error.clone(),
        error_revision: s.error_revision,
        updated_at: rfc3339(s.updated_at),
    })
}

/// What is known live of `nodes` (see [`AppState::online`]); nodes never
/// registered cannot be connected and are not looked for.
pub(crate) async fn online(
    state: &AppState,
    nodes: &[NodeRecord],
    with_stats: bool,
) -> HashMap<String, Online> {
    let ids: Vec<String> = nodes
        .iter()
        .filter(|n| n.secret_hash.is_some())
        .map(|n| n.id.clone())
        .collect();
    state.online(&ids, with_stats).await
}

pub(crate) fn view(n: &NodeRecord, online: Option<&Online>) -> NodeView {
    let live = online.map(|o| &o.live);
    let status = if online.is_some() {
        "online"
    } else if n.secret_hash.is_none() {
        "pending"
    } else {
        "offline"
    };
    NodeView {
        id: n.id.clone(),
        name: n.name.clone(),
        description: n.description.clone(),
        device_type: n.device_type.clone(),
        status,
        software_version: live
            .and_then(|l| l.software_version.clone())
            .or_else(|| n.software_version.clone()),
        protocol_version: live
            .and_then(|l| l.protocol_version.map(i64::from))
            .or(n.protocol_version),
        metadata: n.metadata.clone(),
        expires_at: n.expires_at.map(rfc3339),
        registered_at: n.registered_at.map(rfc3339),
        last_seen_at: n.last_seen_at.map(rfc3339),
        token_expires_at: n
            .token_usable(now_ms())
            .then_some(n.token_expires_at)
            .flatten()
            .map(rfc3339),
        version: n.version,
        created_at: rfc3339(n.created_at),
        updated_at: rfc3339(n.updated_at),
        last_health: live.and_then(|l| l.health.clone()),
        last_stats: live.and_then(|l| l.stats.clone()),
        connected_since: live.map(|l| rfc3339(l.connected_at)),
        connected_to: online.map(|o| o.replica.clone()),
        config: live.and_then(sync_view),
    }
}

/// The view of one node, live parts included.
async fn view_one(state: &AppState, n: &NodeRecord) -> NodeView {
    let online = online(state, std::slice::from_ref(n), true).await;
    view(n, online.get(&n.id))
}

/// The node ids the caller is limited to, or `None` for all.
pub(crate) fn allowed(auth: &AuthContext) -> Option<&Vec<String>> {
    auth.user.as_ref().and_then(|u| u.allowed_node_ids.as_ref())
}

/// The node, if it exists and the caller may see it.
pub(crate) async fn visible_node(
    state: &AppState,
    auth: &AuthContext,
    id: &str,
) -> ApiResult<NodeRecord> {
    if allowed(auth).is_some_and(|ids| !ids.iter().any(|i| i == id)) {
        return Err(ApiError::forbidden(format!(
            "you are not allowed to access node {id}"
        )));
    }
    state
        .store
        .get_node(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("node {id}")))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateNode {
    /// 1 to 128 characters.
    pub name: String,
    /// At most 512 characters.
    #[serde(default)]
    pub description: Option<String>,
    /// `edge` (default) or `relay`.
    #[serde(default)]
    pub device_type: Option<String>,
    /// RFC 3339; after it the node may no longer connect. Must be in the future.
    #[serde(default)]
    pub expires_at: Option<String>,
    /// Free-form JSON object.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    /// How long the registration token is valid (60 s to 30 days; default 24 h).
    #[serde(default)]
    pub token_ttl_secs: Option<u64>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateNode {
    #[serde(default)]
    pub name: Option<String>,
    /// Null clears it.
    #[serde(default, with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub description: Option<Option<String>>,
    /// RFC 3339; null clears it.
    #[serde(default, with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub expires_at: Option<Option<String>>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
}

/// Tells a missing field (`None`) from an explicit null (`Some(None)`).
mod double_option {
    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
    where
        D: Deserializer<'de>,
        T: Deserialize<'de>,
    {
        Option::<T>::deserialize(d).map(Some)
    }
}

#[derive(Serialize, ToSchema)]
pub struct CreatedNode {
    #[serde(flatten)]
    pub node: NodeView,
    /// The single-use registration token. Shown only in this response.
    pub registration_token: String,
    pub registration_token_expires_at: String,
}

#[derive(Serialize, ToSchema)]
pub struct NewToken {
    /// The single-use registration token. Shown only in this response.
    pub registration_token: String,
    pub registration_token_expires_at: String,
}

/// A display name: 1 to 128 characters, no control characters (nodes, tunnels).
pub(crate) fn check_name(name: &str) -> ApiResult<String> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 128 || name.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "name",
            "must be 1 to 128 characters without control characters",
        ));
    }
    Ok(name.to_string())
}

fn check_description(d: Option<String>) -> ApiResult<Option<String>> {
    match d {
        Some(d) if d.chars().count() > 512 => Err(ApiError::bad_request(
            "description",
            "must be at most 512 characters",
        )),
        Some(d) if d.trim().is_empty() => Ok(None),
        other => Ok(other),
    }
}

fn check_expiry(v: Option<String>) -> ApiResult<Option<i64>> {
    let Some(text) = v else { return Ok(None) };
    let ms = parse_rfc3339(&text).ok_or_else(|| {
        ApiError::bad_request("expires_at", format!("{text:?} is not an RFC 3339 time"))
    })?;
    if ms <= now_ms() {
        return Err(ApiError::bad_request("expires_at", "must be in the future"));
    }
    Ok(Some(ms))
}

fn check_metadata(v: Option<Value>) -> ApiResult<Option<Value>> {
    match v {
        Some(m @ Value::Object(_)) if m.to_string().len() <= 16 * 1024 => Ok(Some(m)),
        Some(Value::Object(_)) => Err(ApiError::bad_request(
            "metadata",
            "must be at most 16 KiB of JSON",
        )),
        Some(_) => Err(ApiError::bad_request("metadata", "must be a JSON object")),
        None => Ok(None),
    }
}

fn token_ttl(v: Option<u64>) -> ApiResult<u64> {
    let ttl = v.unwrap_or(DEFAULT_TOKEN_TTL_SECS);
    if !(MIN_TOKEN_TTL_SECS..=MAX_TOKEN_TTL_SECS).contains(&ttl) {
        return Err(ApiError::bad_request(
            "token_ttl_secs",
            format!("must be between {MIN_TOKEN_TTL_SECS} and {MAX_TOKEN_TTL_SECS}"),
        ));
    }
    Ok(ttl)
}

/// A new registration token: (token, its hash, its lockout prefix).
fn new_token() -> (String, String, String) {
    let token = random_token(32);
    let hash = hash_token(&token);
    let prefix = token.chars().take(8).collect();
    (token, hash, prefix)
}

#[utoipa::path(get, path = "/api/v1/nodes", operation_id = "list_nodes", tag = "nodes",
    params(crate::extract::PageParams, ("device_type" = Option<String>, Query, description = "edge or relay")),
    responses((status = 200, description = "Nodes the caller may see", body = ListEnvelope<NodeView>)))]
pub async fn list(
    State(state): State<AppState>,
    auth: AuthContext,
    Pagination(page): Pagination,
    query: QueryParams,
) -> ApiResult<Json<ListEnvelope<NodeView>>> {
    let device_type = match query.text("device_type") {
        Some(t) => Some(
            DeviceType::parse(t)
                .ok_or_else(|| {
                    ApiError::bad_request("device_type", format!("{t:?} is not edge or relay"))
                })?
                .as_str()
                .to_string(),
        ),
        None => None,
    };
    let filter = NodeFilter {
        device_type,
        ids: allowed(&auth).cloned(),
    };
    let p = state.store.list_nodes(&filter, page).await?;
    let online = online(&state, &p.items, false).await;
    Ok(Json(ListEnvelope::new(
        p.items.iter().map(|n| view(n, online.get(&n.id))).collect(),
        p.total,
        page,
    )))
}

#[utoipa::path(post, path = "/api/v1/nodes", operation_id = "create_node", tag = "nodes", request_body = CreateNode,
    responses((status = 201, description = "Created; the registration token is in this response only", body = CreatedNode)))]
pub async fn create(
    State(state): State<AppState>,
    auth: AuthContext,
    JsonBody(body): JsonBody<CreateNode>,
) -> ApiResult<(StatusCode, Json<CreatedNode>)> {
    auth.require(Role::Operator)?;
    if allowed(&auth).is_some() {
        return Err(ApiError::forbidden(
            "a user limited to some nodes cannot create nodes",
        ));
    }
    let name = check_name(&body.name)?;
    let description = check_description(body.description)?;
    let device_type = match body.device_type.as_deref() {
        None => DeviceType::Edge,
        Some(t) => DeviceType::parse(t).ok_or_else(|| {
            ApiError::bad_request("device_type", format!("{t:?} is not edge or relay"))
        })?,
    };
    let expires_at = check_expiry(body.expires_at)?;
    let metadata = check_metadata(body.metadata)?.unwrap_or_else(|| json!({}));
    let ttl = token_ttl(body.token_ttl_secs)?;
    let (token, token_hash, prefix) = new_token();
    let now = now_ms();
    let token_expires_at = now + (ttl as i64) * 1000;
    let record = NodeRecord {
        id: uuid::Uuid::new_v4().to_string(),
        name,
        description,
        device_type: device_type.as_str().to_string(),
        secret_hash: None,
        token_hash: Some(token_hash),
        token_prefix: Some(prefix),
        token_expires_at: Some(token_expires_at),
        token_used_at: None,
        expires_at,
        metadata,
        software_version: None,
        protocol_version: None,
        registered_at: None,
        last_seen_at: None,
        version: 1,
        created_at: now,
        updated_at: now,
    };
    state.store.create_node(&auth.actor, &record).await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedNode {
            node: view(&record, None),
            registration_token: token,
            registration_token_expires_at: rfc3339(token_expires_at),
        }),
    ))
}

#[utoipa::path(get, path = "/api/v1/nodes/{id}", operation_id = "get_node", tag = "nodes",
    params(("id" = String, Path, description = "Node id")),
    responses((status = 200, description = "The node, with its latest health and stats when connected", body = NodeView)))]
pub async fn get(
    State(state): State<AppState>,
    auth: AuthContext,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let n = visible_node(&state, &auth, &id).await?;
    Ok(json_with_etag(
        StatusCode::OK,
        n.version,
        view_one(&state, &n).await,
    ))
}

#[utoipa::path(put, path = "/api/v1/nodes/{id}", operation_id = "update_node", tag = "nodes",
    params(("id" = String, Path, description = "Node id")), request_body = UpdateNode,
    responses((status = 200, description = "Updated", body = NodeView)))]
pub async fn update(
    State(state): State<AppState>,
    auth: AuthContext,
    Path(id): Path<String>,
    IfMatch(expected): IfMatch,
    JsonBody(body): JsonBody<UpdateNode>,
) -> ApiResult<Response> {
    auth.require(Role::Operator)?;
    let mut n = visible_node(&state, &auth, &id).await?;
    if let Some(name) = &body.name {
        n.name = check_name(name)?;
    }
    if let Some(d) = body.description {
        n.description = check_description(d)?;
    }
    if let Some(e) = body.expires_at {
        n.expires_at = check_expiry(e)?;
    }
    if let Some(m) = check_metadata(body.metadata)? {
        n.metadata = m;
    }
    n.updated_at = now_ms();
    let saved = state.store.update_node(&auth.actor, &n, expected).await?;
    state.node_feed.names_changed();
    Ok(json_with_etag(
        StatusCode::OK,
        saved.version,
        view_one(&state, &saved).await,
    ))
}

#[utoipa::path(delete, path = "/api/v1/nodes/{id}", operation_id = "delete_node", tag = "nodes",
    params(("id" = String, Path, description = "Node id")),
    responses((status = 204, description = "Deleted; its connection, if any, is closed")))]
pub async fn delete(
    State(state): State<AppState>,
    auth: AuthContext,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    auth.require(Role::Operator)?;
    visible_node(&state, &auth, &id).await?;
    // Where it is connected goes with the node: ask first.
    let remote = state.remote_presence(std::slice::from_ref(&id)).await;
    state.store.delete_node(&auth.actor, &id).await?;
    state.disconnect_everywhere(&id, &remote).await;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/v1/nodes/{id}/token", operation_id = "regenerate_node_token", tag = "nodes",
    params(("id" = String, Path, description = "Node id"),
           ("token_ttl_secs" = Option<u64>, Query, description = "Validity (60 s to 30 days; default 24 h)")),
    responses((status = 200, description = "A new single-use token, shown only here; the previous one no longer works", body = NewToken)))]
pub async fn regenerate_token(
    State(state): State<AppState>,
    auth: AuthContext,
    Path(id): Path<String>,
    query: QueryParams,
) -> ApiResult<Json<NewToken>> {
    auth.require(Role::Operator)?;
    visible_node(&state, &auth, &id).await?;
    // Present but empty (`?token_ttl_secs=`) is a bad value, not the default.
    let ttl = match query.0.get("token_ttl_secs").map(String::as_str) {
        Some(v) => token_ttl(Some(v.parse().map_err(|_| {
            ApiError::bad_request(
                "token_ttl_secs",
                format!("{v:?} is not a number of seconds"),
            )
        })?))?,
        None => token_ttl(None)?,
    };
    let (token, token_hash, prefix) = new_token();
    let expires = now_ms() + (ttl as i64) * 1000;
    state
        .store
        .set_node_token(&auth.actor, &id, &token_hash, &prefix, Some(expires))
        .await?;
    Ok(Json(NewToken {
        registration_token: token,
        registration_token_expires_at: rfc3339(expires),
    }))
}

#[derive(Serialize, ToSchema)]
pub struct CommandInfo {
    pub name: &'static str,
    pub description: &'static str,
    pub requires_role: &'static str,
}

#[derive(Serialize, ToSchema)]
pub struct DeviceTypeInfo {
    pub device_type: &'static str,
    pub display_name: &'static str,
    pub supported_commands: Vec<CommandInfo>,
}

#[derive(Serialize, ToSchema)]
pub struct DeviceTypes {
    pub device_types: Vec<DeviceTypeInfo>,
}

#[utoipa::path(get, path = "/api/v1/device-types", operation_id = "list_device_types", tag = "nodes",
    responses((status = 200, description = "Kinds of node and the commands each accepts", body = DeviceTypes)))]
pub async fn device_types(_auth: AuthContext) -> Json<DeviceTypes> {
    Json(DeviceTypes {
        device_types: DeviceType::ALL
            .into_iter()
            .map(|d| DeviceTypeInfo {
                device_type: d.as_str(),
                display_name: d.display_name(),
                supported_commands: d
                    .commands()
                    .iter()
                    .map(|c| CommandInfo {
                        name: c.name,
                        description: c.description,
                        requires_role: Role::Operator.as_str(),
                    })
                    .collect(),
            })
            .collect(),
    })
}

#[derive(Deserialize, ToSchema)]
pub struct CommandRequest {
    /// The command: `{"type": "<command>", ...its parameters}`.
    #[schema(value_type = Object)]
    pub action: Value,
}

#[derive(Serialize, ToSchema)]
pub struct CommandResult {
    pub command_id: String,
    pub success: bool,
    /// What the node returned (for `get_config`, its configuration).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub data: Option<Value>,
}

pub(crate) fn failure(id: &str, f: CommandFailure) -> ApiError {
    match f {
        CommandFailure::NotConnected => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "NODE_NOT_CONNECTED",
            format!("node {id} is not connected"),
        ),
        CommandFailure::Timeout => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "NODE_TIMEOUT",
            format!(
                "node {id} did not answer within {} s",
                COMMAND_TIMEOUT.as_secs()
            ),
        ),
        CommandFailure::Refused(ack) => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "NODE_REFUSED",
            format!(
                "node {id} refused the command: {}",
                ack.error.as_deref().unwrap_or("no reason given")
            ),
        )
        .with_details(
            json!({"command_id": ack.command_id, "node_error": ack.error,
                             "error_code": ack.error_code, "data": ack.data}),
        ),
        CommandFailure::Disconnected => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "NODE_DISCONNECTED",
            format!("node {id} disconnected before answering"),
        ),
    }
}

/// A command's failure on another replica, as the API reports it.
pub(crate) fn remote_failure(id: &str, f: RemoteFailure) -> ApiError {
    match f {
        RemoteFailure::Node(f) => failure(id, f),
        RemoteFailure::Timeout => failure(id, CommandFailure::Timeout),
        RemoteFailure::Unreachable(why) => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "NODE_UNREACHABLE",
            format!("node {id} cannot be reached: {why}"),
        ),
    }
}

#[utoipa::path(post, path = "/api/v1/nodes/{id}/command", operation_id = "send_node_command", tag = "nodes",
    params(("id" = String, Path, description = "Node id")), request_body = CommandRequest,
    responses((status = 200, description = "The node carried the command out", body = CommandResult),
              (status = 400, description = "Not a command of this kind of node, a parameter is missing, or a deployment change (sent through /api/v1/nodes/{id}/deployments)"),
              (status = 413, description = "Body over 50 KiB"),
              (status = 422, description = "The node refused (its error is in the message and details)"),
              (status = 502, description = "The node is not connected"),
              (status = 504, description = "No answer within 10 s")))]
pub async fn command(
    State(state): State<AppState>,
    auth: AuthContext,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<CommandRequest>,
) -> ApiResult<Json<CommandResult>> {
    auth.require(Role::Operator)?;
    let sent = send_command(&state, &auth, &id, &body.action).await;
    let name = body
        .action
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("");
    if !READ_ONLY_COMMANDS.contains(&name) {
        // What may have changed the node: carried out, or sent and unanswered.
        let outcome = match &sent {
            Ok(r) => Some(json!({"outcome": "done", "command_id": r.command_id})),
            Err(e) if matches!(e.code, "NODE_TIMEOUT" | "NODE_DISCONNECTED") => {
                Some(json!({"outcome": "no answer", "error": e.message}))
            }
            Err(_) => None,
        };
        if let Some(mut after) = outcome {
            let mut command = body.action.clone();
            crate::ai::strip_secrets(&mut command);
            after["command"] = command;
            state
                .store
                .append_audit(
                    &auth.actor,
                    AuditEvent::new("node.command", "node", Some(&id)).after(after),
                )
                .await?;
        }
    }
    Ok(Json(sent?))
}

/// Commands that only read: carried out unaudited (they change nothing).
const READ_ONLY_COMMANDS: &[&str] = &[
    "get_config",
    "list_deployments",
    "get_deployment",
    "get_deployment_logs",
    "list_deployment_releases",
    "list_tunnels",
    "list_edges",
];

/// Validates `action` for node `id` (visible to the caller) and has the node
/// carry it out, wherever it is connected.
pub(crate) async fn send_command(
    state: &AppState,
    auth: &AuthContext,
    id: &str,
    action: &Value,
) -> ApiResult<CommandResult> {
    let n = visible_node(state, auth, id).await?;
    let device = DeviceType::parse(&n.device_type).unwrap_or(DeviceType::Edge);
    let spec = validate_command(device, action)
        .map_err(|e| ApiError::bad_request(&e.field(), e.to_string()))?;
    if DEPLOYMENT_CHANGES.contains(&spec.name) {
        // They are audited there (with the files' digests).
        return Err(ApiError::bad_request(
            "action.type",
            format!(
                "{} is sent through /api/v1/nodes/{id}/deployments, which audits it",
                spec.name
            ),
        ));
    }
    let ack = match state.whereabouts(id).await {
        Whereabouts::Local(_) => state
            .nodes
            .command(id, spec, action, COMMAND_TIMEOUT)
            .await
            .map_err(|f| failure(id, f))?,
        Whereabouts::Remote(p) => state
            .remote_command(&p, action, COMMAND_TIMEOUT)
            .await
            .map_err(|f| remote_failure(id, f))?,
        Whereabouts::Offline => return Err(failure(id, CommandFailure::NotConnected)),
    };
    tracing::info!(node = %id, command = spec.name, actor = %auth.actor.name, "node command carried out");
    Ok(CommandResult {
        command_id: ack.command_id,
        success: true,
        data: ack.data,
    })
}

#[utoipa::path(get, path = "/api/v1/nodes/{id}/config", operation_id = "get_node_config", tag = "nodes",
    params(("id" = String, Path, description = "Node id")),
    responses((status = 200, description = "The node's configuration as it last reported it (fetched now when none is cached)"),
              (status = 404, description = "The node sent no configuration, or none is cached and the node is not connected")))]
pub async fn config(
    State(state): State<AppState>,
    auth: AuthContext,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    visible_node(&state, &auth, &id).await?;
    let fetched = match state.whereabouts(&id).await {
        Whereabouts::Local(_) => state
            .node_config_here(&id, CONFIG_FETCH_TIMEOUT)
            .await
            .map_err(RemoteFailure::Node),
        Whereabouts::Remote(p) => state.remote_config(&p, CONFIG_FETCH_TIMEOUT).await,
        // A node that left may still have told this replica its configuration.
        Whereabouts::Offline => match state.nodes.cached_config(&id) {
            Some(c) => return Ok(Json(c.value)),
            None => Err(RemoteFailure::Node(CommandFailure::NotConnected)),
        },
    };
    match fetched {
        Ok(ack) => Ok(Json(ack.data.unwrap_or(Value::Null))),
        // Nothing to show is not a failure of the manager: no such configuration.
        Err(RemoteFailure::Node(CommandFailure::NotConnected)) => Err(ApiError::not_found(
            format!("configuration of node {id} (none cached, and the node is not connected)"),
        )),
        Err(RemoteFailure::Unreachable(why)) => Err(ApiError::not_found(format!(
            "configuration of node {id} (none cached here, and {why})"
        ))),
        Err(_) => Err(ApiError::not_found(format!(
            "configuration of node {id} (it sent none within {} s)",
            CONFIG_FETCH_TIMEOUT.as_secs()
        ))),
    }
}

/// One interval of a node's history.
#[derive(Serialize, ToSchema)]
pub struct HistoryPoint {
    /// Start of the interval.
    pub ts: String,
    /// `{"<metric>": {"avg", "min", "max", "last", "n"}}`.
    #[schema(value_type = Object)]
    pub metrics: Value,
    /// The interval is still in progress (not yet stored).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub partial: bool,
}

#[derive(Serialize, ToSchema)]
pub struct NodeHistory {
    pub node_id: String,
    /// Interval length in seconds: 60 or 3600.
    pub resolution: i64,
    pub from: String,
    pub to: String,
    pub points: Vec<HistoryPoint>,
}

/// Most intervals one history request returns.
const MAX_HISTORY_POINTS: i64 = 2000;

#[utoipa::path(get, path = "/api/v1/nodes/{id}/history", operation_id = "get_node_history", tag = "nodes",
    params(("id" = String, Path, description = "Node id"),
           ("resolution" = Option<i64>, Query, description = "60 (default, kept 24 h) or 3600 (kept 30 days)"),
           ("from" = Option<String>, Query, description = "RFC 3339; default 3 hours (60) or 7 days (3600) before `to`"),
           ("to" = Option<String>, Query, description = "RFC 3339; default now")),
    responses((status = 200, description = "The node's stats and health, downsampled: the top-level numbers of its messages, totals over its flows and tunnels, and health.ok", body = NodeHistory)))]
pub async fn history(
    State(state): State<AppState>,
    auth: AuthContext,
    Path(id): Path<String>,
    query: QueryParams,
) -> ApiResult<Json<NodeHistory>> {
    visible_node(&state, &auth, &id).await?;
    let resolution = match query.int("resolution")? {
        None => 60,
        Some(r @ (60 | 3600)) => r,
        Some(r) => {
            return Err(ApiError::bad_request(
                "resolution",
                format!("{r} is not 60 or 3600"),
            ))
        }
    };
    // Times outside years 1970 to 9999 mean the edge of that range.
    let clamp = |t: i64| t.clamp(0, 253_402_300_799_999);
    let to = clamp(query.time("to")?.unwrap_or_else(now_ms));
    let from = clamp(query.time("from")?.unwrap_or_else(|| {
        to.saturating_sub(if resolution == 60 {
            3 * 3_600_000
        } else {
            7 * 86_400_000
        })
    }));
    if from >= to {
        return Err(ApiError::bad_request("from", "must be before `to`"));
    }
    if (to - from) / (resolution * 1000) > MAX_HISTORY_POINTS {
        return Err(ApiError::bad_request(
            "from",
            format!("the window holds more than {MAX_HISTORY_POINTS} intervals of {resolution} s"),
        ));
    }
    let mut points: Vec<HistoryPoint> = state
        .store
        .node_samples(&id, resolution, from, to)
        .await?
        .into_iter()
        .map(|s| HistoryPoint {
            ts: rfc3339(s.ts),
            metrics: s.metrics,
            partial: false,
        })
        .collect();
    // The interval in progress, when this replica holds the node.
    if let Some(cur) = state.nodes.history.current(&id, resolution) {
        if (from..to).contains(&cur.ts) {
            let ts = rfc3339(cur.ts);
            points.retain(|p| p.ts != ts);
            points.push(HistoryPoint {
                ts,
                metrics: cur.metrics,
                partial: true,
            });
        }
    }
    Ok(Json(NodeHistory {
        node_id: id,
        resolution,
        from: rfc3339(from),
        to: rfc3339(to),
        points,
    }))
}
