//! MCP servers agents use as a tool source (`/api/v1/mcp-servers`): a command
//! the manager starts (stdio) or a streamable-HTTP endpoint, with access rules
//! (`allow` and `deny` tool-name patterns; a deny wins; nothing is allowed
//! unless an allow pattern names it). Environment and header values are sealed
//! like provider keys and never shown. `GET /api/v1/mcp-servers/{id}/tools`
//! connects and lists the tools the rules allow. An agent names them in its
//! `tools` as `mcp:<server>/<tool>` (the tool may be a pattern such as
//! `mcp:files/*`); its model calls them as `<server>__<tool>`. A stdio
//! server runs a command on the manager's host: only a super admin may
//! register, change or remove one (an admin may for HTTP servers). Every
//! change is audited.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use fleetgate_core::time::now_ms;
use fleetgate_core::user::Role;
use fleetgate_store::McpServerRecord;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::ToSchema;

use super::rfc3339;
use crate::auth::AuthContext;
use crate::error::{ApiError, ApiResult};
use crate::extract::{json_with_etag, IfMatch, JsonBody, ListEnvelope};
use crate::AppState;

/// The default bound on connecting and on each call, in ms.
const DEFAULT_TIMEOUT_MS: i64 = 30_000;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct McpServerInput {
    /// 1 to 32 letters, digits or `-`; unique. Agents name its tools
    /// `mcp:<name>/<tool>`, and models call them `<name>__<tool>`.
    #[schema(min_length = 1, max_length = 32, pattern = r"^[A-Za-z0-9-]+$")]
    pub name: String,
    #[serde(default)]
    #[schema(max_length = 2000)]
    pub description: Option<String>,
    /// `stdio` (a command the manager starts) or `http` (streamable HTTP).
    pub transport: String,
    /// stdio: the program started (looked up on the manager's `PATH`).
    #[serde(default)]
    #[schema(max_length = 1024)]
    pub command: Option<String>,
    /// stdio: its arguments (at most 50).
    #[serde(default)]
    pub args: Option<Vec<String>>,
    /// stdio: its environment (besides `PATH`, nothing else of the manager's
    /// is passed on). Values are stored sealed and never shown; on update,
    /// absent keeps them, given replaces them.
    #[serde(default)]
    pub env: Option<BTreeMap<String, String>>,
    /// http: the endpoint, under the manager's outbound destination policy
    /// (non-public addresses only with `webhooks.allow_private_targets`).
    #[serde(default)]
    #[schema(max_length = 2048)]
    pub url: Option<String>,
    /// http: headers sent with each request (e.g. Authorization). Values are
    /// stored sealed and never shown; on update, absent keeps them.
    #[serde(default)]
    pub headers: Option<BTreeMap<String, String>>,
    /// Tool-name patterns allowed (`*` matches any run of characters), at
    /// most 100. With none, no tool is allowed.
    #[serde(default)]
    pub allow: Option<Vec<String>>,
    /// Tool-name patterns denied, at most 100; a deny wins over an allow.
    #[serde(default)]
    pub deny: Option<Vec<String>>,
    /// The bound on connecting and on each call: 100 to 120000 ms (default 30000).
    #[serde(default)]
    #[schema(minimum = 100, maximum = 120_000)]
    pub timeout_ms: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub struct McpServerView {
    pub id: String,
    pub name: String,
    pub description: String,
    /// `stdio` or `http`.
    pub transport: String,
    pub command: String,
    pub args: Vec<String>,
    /// Environment variable names; values are never shown.
    pub env_names: Vec<String>,
    pub url: String,
    /// Header names; values are never shown.
    pub header_names: Vec<String>,
    pub allow: Vec<String>,
    pub deny: Vec<String>,
    pub timeout_ms: i64,
    pub version: i64,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Serialize, ToSchema)]
pub struct McpToolView {
    /// The tool's name on its server.
    pub name: String,
    pub description: String,
    #[schema(value_type = Object)]
    pub input_schema: Value,
    /// The name a model calls it by (`<server>__<tool>`); null when the
    /// tool's name is not one every provider accepts (it is not offered).
    pub model_name: Option<String>,
    /// How an agent names it in its `tools`.
    pub reference: String,
}

#[derive(Serialize, ToSchema)]
pub struct McpToolsView {
    pub server: String,
    /// The tools the access rules allow.
    pub tools: Vec<McpToolView>,
    /// How many tools the server has that the rules leave out.
    pub hidden: usize,
}

fn view(m: &McpServerRecord) -> McpServerView {
    McpServerView {
        id: m.id.clone(),
        name: m.name.clone(),
        description: m.description.clone(),
        transport: m.transport.clone(),
        command: m.command.clone(),
        args: m.args.clone(),
        env_names: m.env.iter().map(|(k, _)| k.clone()).collect(),
        url: m.url.clone(),
        header_names: m.headers.iter().map(|(k, _)| k.clone()).collect(),
        allow: m.allow.clone(),
        deny: m.deny.clone(),
        timeout_ms: m.timeout_ms,
        version: m.version,
        created_at: rfc3339(m.created_at),
        updated_at: rfc3339(m.updated_at),
    }
}

/// A server name: 1 to 32 letters, digits or `-`.
pub fn check_server_name(field: &str, name: &str) -> ApiResult<()> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if !ok {
        return Err(ApiError::bad_request(
            field,
            "must be 1 to 32 letters, digits or '-'",
        ));
    }
    Ok(())
}

/// A tool-name pattern: 1 to 128 letters, digits, `_`, `-`, `.`, `/`, `:` or `*`.
pub fn check_pattern(field: &str, p: &str) -> ApiResult<()> {
    let ok = !p.is_empty()
        && p.len() <= 128
        && p.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'/' | b':' | b'*')
        });
    if !ok {
        return Err(ApiError::bad_request(
            field,
            "must be 1 to 128 letters, digits, '_', '-', '.', '/', ':' or '*' (any run of characters)",
        ));
    }
    Ok(())
}

fn check_plain(field: &str, s: &str, max: usize) -> ApiResult<()> {
    if s.len() > max {
        return Err(ApiError::bad_request(
            field,
            format!("must be at most {max} bytes"),
        ));
    }
    if s.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

fn patterns(field: &str, list: &[String]) -> ApiResult<Vec<String>> {
    if list.len() > 100 {
        return Err(ApiError::bad_request(field, "at most 100 patterns"));
    }
    for (i, p) in list.iter().enumerate() {
        check_pattern(&format!("{field}[{i}]"), p)?;
    }
    Ok(list.to_vec())
}

async fn apply(state: &AppState, m: &mut McpServerRecord, body: &McpServerInput) -> ApiResult<()> {
    check_server_name("name", &body.name)?;
    m.name = body.name.clone();
    if let Some(d) = &body.description {
        if d.chars().count() > 2000 {
            return Err(ApiError::bad_request(
                "description",
                "must be at most 2000 characters",
            ));
        }
        m.description = d.clone();
    }
    match body.transport.as_str() {
        "stdio" => {
            for (field, given) in [
                ("url", body.url.is_some()),
                ("headers", body.headers.is_some()),
            ] {
                if given {
                    return Err(ApiError::bad_request(
                        field,
                        "is for the http transport only",
                    ));
                }
            }
            let command = body.command.as_deref().unwrap_or("").trim();
            if command.is_empty() {
                return Err(ApiError::bad_request(
                    "command",
                    "is required for the stdio transport",
                ));
            }
            check_plain("command", command, 1024)?;
            m.command = command.to_string();
            let args = body.args.clone().unwrap_or_default();
            if args.len() > 50 {
                return Err(ApiError::bad_request("args", "at most 50 arguments"));
            }
            for (i, a) in args.iter().enumerate() {
                check_plain(&format!("args[{i}]"), a, 4096)?;
            }
            m.args = args;
            if let Some(env) = &body.env {
                if env.len() > 50 {
                    return Err(ApiError::bad_request("env", "at most 50 variables"));
                }
                let mut sealed = Vec::with_capacity(env.len());
                for (k, v) in env {
                    let field = format!("env.{k}");
                    let name_ok = !k.is_empty()
                        && k.len() <= 128
                        && !k.as_bytes()[0].is_ascii_digit()
                        && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
                    if !name_ok {
                        return Err(ApiError::bad_request(
                            &field,
                            "is not a variable name (letters, digits and '_', not starting with a digit)",
                        ));
                    }
                    if k == "PATH" {
                        return Err(ApiError::bad_request(
                            &field,
                            "PATH is the manager's and cannot be set",
                        ));
                    }
                    if v.len() > 8192 || v.contains('\0') {
                        return Err(ApiError::bad_request(
                            &field,
                            "must be at most 8192 bytes without NUL",
                        ));
                    }
                    sealed.push((k.clone(), state.secrets.seal(v.as_bytes())));
                }
                m.env = sealed;
            }
            m.url = String::new();
            m.headers = Vec::new();
        }
        "http" => {
            for (field, given) in [
                ("command", body.command.is_some()),
                ("args", body.args.is_some()),
                ("env", body.env.is_some()),
            ] {
                if given {
                    return Err(ApiError::bad_request(
                        field,
                        "is for the stdio transport only",
                    ));
                }
            }
            let url = body.url.as_deref().unwrap_or("");
            if url.is_empty() {
                return Err(ApiError::bad_request(
                    "url",
                    "is required for the http transport",
                ));
            }
            if url.len() > 2048 {
                return Err(ApiError::bad_request(
                    "url",
                    "must be at most 2048 characters",
                ));
            }
            let allow = state.settings().webhooks.allow_private_targets;
            crate::webhooks::check_destination(url, allow)
                .await
                .map_err(|e| ApiError::bad_request("url", e))?;
            m.url = url.to_string();
            if let Some(h) = &body.headers {
                m.headers = super::agents::seal_headers(state, h)?;
            }
            m.command = String::new();
            m.args = Vec::new();
            m.env = Vec::new();
        }
        _ => return Err(ApiError::bad_request("transport", "must be stdio or http")),
    }
    m.transport = body.transport.clone();
    m.allow = patterns("allow", body.allow.as_deref().unwrap_or(&[]))?;
    m.deny = patterns("deny", body.deny.as_deref().unwrap_or(&[]))?;
    if let Some(ms) = body.timeout_ms {
        if !(100..=120_000).contains(&ms) {
            return Err(ApiError::bad_request("timeout_ms", "must be 100 to 120000"));
        }
        m.timeout_ms = ms;
    }
    Ok(())
}

/// Who may change a server: a stdio server runs a command on the manager's
/// host, which only a super admin may set; an HTTP one needs an admin.
fn require_for(auth: &AuthContext, transport: &str) -> ApiResult<()> {
    if transport == "stdio" {
        auth.require(Role::SuperAdmin)
    } else {
        auth.require(Role::Admin)
    }
}

async fn server(state: &AppState, id: &str) -> ApiResult<McpServerRecord> {
    state
        .store
        .get_mcp_server(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("MCP server {id}")))
}

#[utoipa::path(get, path = "/api/v1/mcp-servers", operation_id = "list_mcp_servers", tag = "agents",
    responses((status = 200, description = "MCP servers, by name (environment and header values never shown)", body = ListEnvelope<McpServerView>)))]
pub async fn list(
    State(state): State<AppState>,
    _auth: AuthContext,
) -> ApiResult<Json<ListEnvelope<McpServerView>>> {
    let items: Vec<McpServerView> = state
        .store
        .list_mcp_servers()
        .await?
        .iter()
        .map(view)
        .collect();
    Ok(Json(ListEnvelope::whole(items)))
}

#[utoipa::path(post, path = "/api/v1/mcp-servers", operation_id = "create_mcp_server", tag = "agents", request_body = McpServerInput,
    responses((status = 201, description = "Registered (environment and header values stored sealed)", body = McpServerView),
              (status = 403, description = "A stdio server needs a super admin, an HTTP one an admin")))]
pub async fn create(
    State(state): State<AppState>,
    auth: AuthContext,
    JsonBody(body): JsonBody<McpServerInput>,
) -> ApiResult<Response> {
    require_for(&auth, &body.transport)?;
    let now = now_ms();
    let mut m = McpServerRecord {
        id: uuid::Uuid::new_v4().to_string(),
        name: String::new(),
        description: String::new(),
        transport: String::new(),
        command: String::new(),
        args: Vec::new(),
        env: Vec::new(),
        url: String::new(),
        headers: Vec::new(),
        allow: Vec::new(),
        deny: Vec::new(),
        timeout_ms: DEFAULT_TIMEOUT_MS,
        version: 1,
        created_at: now,
        updated_at: now,
    };
    apply(&state, &mut m, &body).await?;
    state.store.create_mcp_server(&auth.actor, &m).await?;
    Ok(json_with_etag(StatusCode::CREATED, m.version, view(&m)))
}

#[utoipa::path(get, path = "/api/v1/mcp-servers/{id}", operation_id = "get_mcp_server", tag = "agents",
    params(("id" = String, Path, description = "MCP server id")),
    responses((status = 200, description = "The server (environment and header values never shown)", body = McpServerView)))]
pub async fn get(
    State(state): State<AppState>,
    _auth: AuthContext,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let m = server(&state, &id).await?;
    Ok(json_with_etag(StatusCode::OK, m.version, view(&m)))
}

#[utoipa::path(put, path = "/api/v1/mcp-servers/{id}", operation_id = "update_mcp_server", tag = "agents",
    params(("id" = String, Path, description = "MCP server id")), request_body = McpServerInput,
    responses((status = 200, description = "Updated (runs started from now on use it)", body = McpServerView)))]
pub async fn update(
    State(state): State<AppState>,
    auth: AuthContext,
    Path(id): Path<String>,
    IfMatch(expected): IfMatch,
    JsonBody(body): JsonBody<McpServerInput>,
) -> ApiResult<Response> {
    let mut m = server(&state, &id).await?;
    require_for(&auth, &m.transport)?;
    require_for(&auth, &body.transport)?;
    if m.transport != body.transport {
        // Secrets of the other transport do not carry over.
        m.env = Vec::new();
        m.headers = Vec::new();
    }
    apply(&state, &mut m, &body).await?;
    m.updated_at = now_ms();
    let m = state
        .store
        .update_mcp_server(&auth.actor, &m, expected)
        .await?;
    Ok(json_with_etag(StatusCode::OK, m.version, view(&m)))
}

#[utoipa::path(delete, path = "/api/v1/mcp-servers/{id}", operation_id = "delete_mcp_server", tag = "agents",
    params(("id" = String, Path, description = "MCP server id")),
    responses((status = 204, description = "Deleted (a run's call of its tools is refused)")))]
pub async fn delete(
    State(state): State<AppState>,
    auth: AuthContext,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let m = server(&state, &id).await?;
    require_for(&auth, &m.transport)?;
    state.store.delete_mcp_server(&auth.actor, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v1/mcp-servers/{id}/tools", operation_id = "list_mcp_server_tools", tag = "agents",
    params(("id" = String, Path, description = "MCP server id")),
    responses((status = 200, description = "Connects to the server and lists the tools its access rules allow", body = McpToolsView),
              (status = 502, description = "The server could not be reached or failed (the error says why, with the end of a stdio server's stderr)")))]
pub async fn tools(
    State(state): State<AppState>,
    auth: AuthContext,
    Path(id): Path<String>,
) -> ApiResult<Json<McpToolsView>> {
    // Listing starts the server's command or connects to it.
    auth.require(Role::Operator)?;
    let m = server(&state, &id).await?;
    let (tools, hidden) = crate::mcp::allowed_tools(&state, &m).await.map_err(|e| {
        ApiError::new(StatusCode::BAD_GATEWAY, "MCP_SERVER_FAILED", e)
            .with_details(json!({"server": m.name, "transport": m.transport}))
    })?;
    let tools = tools
        .into_iter()
        .map(|t| McpToolView {
            model_name: crate::mcp::model_name(&m.name, &t.name),
            reference: format!("mcp:{}/{}", m.name, t.name),
            name: t.name,
            description: t.description,
            input_schema: t.input_schema,
        })
        .collect();
    Ok(Json(McpToolsView {
        server: m.name,
        tools,
        hidden,
    }))
}
