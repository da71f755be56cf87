//! Agents (`/api/v1/agents`): definitions with a lifecycle
//! (draft → testing → active → suspended → archived), immutable versions with
//! promote and rollback, an A/B split between two versions, a budget per
//! period; their runs (`/api/v1/agents/{id}/runs`, `/api/v1/runs/{id}` with
//! step traces, `/api/v1/runs/{id}/trace?format=otel`), their schedules, and
//! the HTTP tools they call (`/api/v1/agent-tools`, header values sealed like
//! provider keys; MCP servers are in `api::mcp`). Every change is audited.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use fleetgate_core::time::now_ms;
use fleetgate_core::user::Role;
use fleetgate_store::{
    AgentBudget, AgentRunRecord, AgentScheduleRecord, AgentSplit, AgentStepRecord, AgentToolRecord,
    AgentVersionRecord, AiAgentRecord,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::ai::{check_model, double_option};
use super::rfc3339;
use crate::agents::{self as runtime, RunStart};
use crate::auth::AuthContext;
use crate::error::{ApiError, ApiResult};
use crate::extract::{json_with_etag, IfMatch, JsonBody, ListEnvelope, Pagination, QueryParams};
use crate::AppState;

/// Most model calls of a run by default.
const DEFAULT_MAX_STEPS: i64 = 10;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentBudgetInput {
    /// `day`, `week` or `month` (calendar periods in UTC).
    pub period: String,
    /// The most the agent's runs may cost in a period, in USD (at most six
    /// decimals), as a number or a string.
    #[schema(value_type = f64, minimum = 0.0)]
    pub limit_usd: Value,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentInput {
    /// 1 to 100 characters, unique among agents. Required on create.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 100)]
    pub name: Option<String>,
    #[serde(default)]
    #[schema(max_length = 2000)]
    pub description: Option<String>,
    /// At most 20 tags of 1 to 50 characters.
    #[serde(default)]
    pub tags: Option<Vec<String>>,
    /// The model asked. Required on create. Versioned.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 200, pattern = r"^[A-Za-z0-9._:/@+-]+$")]
    pub model: Option<String>,
    /// The AI provider (id or name); null or absent: the default provider. Versioned.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub provider: Option<Option<String>>,
    /// At most 100,000 characters. Versioned.
    #[serde(default)]
    #[schema(max_length = 100_000)]
    pub system_prompt: Option<String>,
    /// Names of tools (see /api/v1/agent-tools), and MCP tools as
    /// `mcp:<server>/<tool>` where the tool may be a pattern (`mcp:files/*`;
    /// see /api/v1/mcp-servers: only what the server's access rules allow is
    /// offered), at most 50 entries. Versioned.
    #[serde(default)]
    pub tools: Option<Vec<String>>,
    /// Most model calls of one run, 1 to 50 (default 10).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 50)]
    pub max_steps: Option<i64>,
    /// A spending limit per period; null removes it.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<AgentBudgetInput>)]
    pub budget: Option<Option<AgentBudgetInput>>,
    /// On update: promote the version this change makes at once (default false:
    /// it waits for `POST /agents/{id}/versions/{n}/promote`).
    #[serde(default)]
    pub promote: Option<bool>,
}

#[derive(Serialize, ToSchema)]
pub struct AgentBudgetView {
    pub period: String,
    pub limit_usd: String,
    /// Spent by the agent's runs in the current period.
    pub spent_usd: String,
    /// Held by model calls under way: each reserves its worst-case cost
    /// before it is sent and settles to its real cost when it ends.
    pub reserved_usd: String,
    /// What the limit leaves after the spend and the reservations.
    pub remaining_usd: String,
    pub resets_at: String,
}

#[derive(Serialize, ToSchema)]
pub struct AgentSplitView {
    pub a: i64,
    pub b: i64,
    pub percent_b: i64,
}

#[derive(Serialize, ToSchema)]
pub struct AiAgentView {
    pub id: String,
    pub name: String,
    pub description: String,
    pub tags: Vec<String>,
    /// `draft`, `testing`, `active`, `suspended` or `archived`.
    pub status: String,
    /// Where the status may go from here.
    pub allowed_transitions: Vec<String>,
    /// The promoted version's fields.
    pub model: String,
    pub provider_id: Option<String>,
    pub system_prompt: String,
    pub tools: Vec<String>,
    pub promoted_version: i64,
    pub latest_version: i64,
    pub split: Option<AgentSplitView>,
    pub budget: Option<AgentBudgetView>,
    pub max_steps: i64,
    pub version: i64,
    pub created_at: String,
    pub updated_at: String,
}

async fn agent(state: &AppState, id: &str) -> ApiResult<AiAgentRecord> {
    state
        .store
        .get_ai_agent(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("agent {id}")))
}

async fn version_of(state: &AppState, a: &AiAgentRecord, n: i64) -> ApiResult<AgentVersionRecord> {
    state
        .store
        .get_ai_agent_version(&a.id, n)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("version {n} of agent {}", a.id)))
}

async fn view(state: &AppState, a: &AiAgentRecord) -> ApiResult<AiAgentView> {
    let v = version_of(state, a, a.promoted_version).await?;
    let budget = match &a.budget {
        Some(b) => {
            let now = now_ms();
            let (since, resets) = runtime::period_bounds(&b.period, now);
            let spent = state.store.agent_spend_since(&a.id, since).await?;
            let reserved = state.store.agent_reserved(&a.id, now).await?;
            Some(AgentBudgetView {
                period: b.period.clone(),
                limit_usd: runtime::usd(b.limit_micro_usd),
                spent_usd: runtime::usd(spent),
                reserved_usd: runtime::usd(reserved),
                remaining_usd: runtime::usd(b.limit_micro_usd - spent - reserved),
                resets_at: rfc3339(resets),
            })
        }
        None => None,
    };
    Ok(AiAgentView {
        id: a.id.clone(),
        name: a.name.clone(),
        description: a.description.clone(),
        tags: a.tags.clone(),
        status: a.status.clone(),
        allowed_transitions: runtime::next_statuses(&a.status)
            .iter()
            .map(|s| s.to_string())
            .collect(),
        model: v.model,
        provider_id: v.provider_id,
        system_prompt: v.system_prompt,
        tools: v.tools,
        promoted_version: a.promoted_version,
        latest_version: a.latest_version,
        split: a.split.map(|s| AgentSplitView {
            a: s.a,
            b: s.b,
            percent_b: s.percent_b,
        }),
        budget,
        max_steps: a.max_steps,
        version: a.version,
        created_at: rfc3339(a.created_at),
        updated_at: rfc3339(a.updated_at),
    })
}

async fn respond(state: &AppState, status: StatusCode, a: &AiAgentRecord) -> ApiResult<Response> {
    Ok(json_with_etag(status, a.version, view(state, a).await?))
}

fn check_text(field: &str, s: &str, max: usize, allow_newlines: bool) -> ApiResult<()> {
    if s.chars().count() > max {
        return Err(ApiError::bad_request(
            field,
            format!("must be at most {max} characters"),
        ));
    }
    if s.chars()
        .any(|c| c.is_control() && !(allow_newlines && matches!(c, '\n' | '\r' | '\t')))
    {
        return Err(ApiError::bad_request(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

fn check_tags(tags: &[String]) -> ApiResult<Vec<String>> {
    if tags.len() > 20 {
        return Err(ApiError::bad_request("tags", "at most 20 tags"));
    }
    tags.iter()
        .enumerate()
        .map(|(i, t)| {
            let t = t.trim();
            if t.is_empty() || t.chars().count() > 50 || t.chars().any(char::is_control) {
                return Err(ApiError::bad_request(
                    &format!("tags[{i}]"),
                    "must be 1 to 50 characters without control characters",
                ));
            }
            Ok(t.to_string())
        })
        .collect()
}

fn check_tool_name(field: &str, name: &str) -> ApiResult<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'));
    if !ok {
        return Err(ApiError::bad_request(
            field,
            "must be 1 to 64 letters, digits, '_' or '-' (a name every provider accepts)",
        ));
    }
    Ok(())
}

async fn check_tools(state: &AppState, tools: &[String]) -> ApiResult<Vec<String>> {
    if tools.len() > 50 {
        return Err(ApiError::bad_request("tools", "at most 50 tools"));
    }
    let mut out: Vec<String> = Vec::with_capacity(tools.len());
    for (i, name) in tools.iter().enumerate() {
        let field = format!("tools[{i}]");
        if let Some(rest) = name.strip_prefix("mcp:") {
            let Some((server, pattern)) = rest.split_once('/') else {
                return Err(ApiError::bad_request(
                    &field,
                    "an MCP tool is named mcp:<server>/<tool> (the tool may be a pattern such as *)",
                ));
            };
            super::mcp::check_server_name(&field, server)?;
            super::mcp::check_pattern(&field, pattern)?;
            if state.store.get_mcp_server_by_name(server).await?.is_none() {
                return Err(ApiError::bad_request(
                    &field,
                    format!("there is no MCP server named {server:?} (register it at /api/v1/mcp-servers)"),
                ));
            }
            if !out.contains(name) {
                out.push(name.clone());
            }
            continue;
        }
        check_tool_name(&field, name)?;
        if state.store.get_agent_tool_by_name(name).await?.is_none() {
            return Err(ApiError::bad_request(
                &field,
                format!("there is no tool named {name:?} (create it at /api/v1/agent-tools)"),
            ));
        }
        if !out.contains(name) {
            out.push(name.clone());
        }
    }
    Ok(out)
}

async fn check_provider(state: &AppState, p: &str) -> ApiResult<String> {
    state
        .store
        .list_ai_providers()
        .await?
        .into_iter()
        .find(|x| x.id == p || x.name == p)
        .map(|x| x.id)
        .ok_or_else(|| ApiError::bad_request("provider", format!("there is no AI provider {p:?}")))
}

fn check_budget(b: &AgentBudgetInput) -> ApiResult<AgentBudget> {
    if !matches!(b.period.as_str(), "day" | "week" | "month") {
        return Err(ApiError::bad_request(
            "budget.period",
            "must be day, week or month",
        ));
    }
    let micros = match &b.limit_usd {
        Value::Number(n) => n
            .as_f64()
            .ok_or_else(|| "not a number".to_string())
            .and_then(|f| fleetgate_ai::pricing::usd_from_f64(f).map_err(|e| e.to_string())),
        Value::String(s) => fleetgate_ai::pricing::parse_usd(s).map_err(|e| e.to_string()),
        _ => Err("must be a number or a string of USD".into()),
    }
    .map_err(|e| ApiError::bad_request("budget.limit_usd", e))?;
    Ok(AgentBudget {
        period: b.period.clone(),
        limit_micro_usd: i64::try_from(micros)
            .map_err(|_| ApiError::bad_request("budget.limit_usd", "too large"))?,
    })
}

fn check_max_steps(n: i64) -> ApiResult<i64> {
    if !(1..=50).contains(&n) {
        return Err(ApiError::bad_request("max_steps", "must be 1 to 50"));
    }
    Ok(n)
}

#[utoipa::path(get, path = "/api/v1/agents", operation_id = "list_agents", tag = "agents",
    params(crate::extract::PageParams),
    responses((status = 200, description = "Agents by name, each with its promoted version's model, prompt and tools", body = ListEnvelope<AiAgentView>)))]
pub async fn list(
    State(state): State<AppState>,
    _auth: AuthContext,
    Pagination(page): Pagination,
) -> ApiResult<Json<ListEnvelope<AiAgentView>>> {
    let p = state.store.list_ai_agents(page).await?;
    let mut items = Vec::with_capacity(p.items.len());
    for a in &p.items {
        items.push(view(&state, a).await?);
    }
    Ok(Json(ListEnvelope::new(items, p.total, page)))
}

#[utoipa::path(post, path = "/api/v1/agents", operation_id = "create_agent", tag = "agents", request_body = AgentInput,
    responses((status = 201, description = "Created in draft, with version 1 promoted", body = AiAgentView)))]
pub async fn create(
    State(state): State<AppState>,
    auth: AuthContext,
    JsonBody(body): JsonBody<AgentInput>,
) -> ApiResult<Response> {
    auth.require(Role::Operator)?;
    let name = super::ai::check_name(
        body.name
            .as_deref()
            .ok_or_else(|| ApiError::bad_request("name", "is required"))?,
    )?;
    let model = body
        .model
        .as_deref()
        .ok_or_else(|| ApiError::bad_request("model", "is required"))?;
    check_model("model", model, None)?;
    let description = body.description.clone().unwrap_or_default();
    check_text("description", &description, 2000, true)?;
    let system_prompt = body.system_prompt.clone().unwrap_or_default();
    check_text("system_prompt", &system_prompt, 100_000, true)?;
    let provider_id = match body.provider.clone().flatten() {
        Some(p) => Some(check_provider(&state, &p).await?),
        None => None,
    };
    let tools = check_tools(&state, body.tools.as_deref().unwrap_or_default()).await?;
    let now = now_ms();
    let a = AiAgentRecord {
        id: uuid::Uuid::new_v4().to_string(),
        name,
        description,
        tags: check_tags(body.tags.as_deref().unwrap_or_default())?,
        status: "draft".into(),
        promoted_version: 1,
        latest_version: 1,
        promotions: vec![1],
        split: None,
        budget: body
            .budget
            .as_ref()
            .and_then(Option::as_ref)
            .map(check_budget)
            .transpose()?,
        max_steps: check_max_steps(body.max_steps.unwrap_or(DEFAULT_MAX_STEPS))?,
        version: 1,
        created_at: now,
        updated_at: now,
    };
    let first = AgentVersionRecord {
        agent_id: a.id.clone(),
        number: 1,
        provider_id,
        model: model.to_string(),
        system_prompt,
        tools,
        created_by: auth.actor.name.clone(),
        created_at: now,
    };
    let a = state.store.create_ai_agent(&auth.actor, &a, &first).await?;
    respond(&state, StatusCode::CREATED, &a).await
}

#[utoipa::path(get, path = "/api/v1/agents/{id}", operation_id = "get_agent", tag = "agents",
    params(("id" = String, Path, description = "Agent id")),
    responses((status = 200, description = "The agent, with its budget's spend in the current period", body = AiAgentView)))]
pub async fn get(
    State(state): State<AppState>,
    _auth: AuthContext,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let a = agent(&state, &id).await?;
    respond(&state, StatusCode::OK, &a).await
}

#[utoipa::path(put, path = "/api/v1/agents/{id}", operation_id = "update_agent", tag = "agents",
    params(("id" = String, Path, description = "Agent id")), request_body = AgentInput,
    responses((status = 200, description = "Updated; fields left out keep their values. A change of model, provider, system prompt or tools makes a new version (promoted only with `promote: true`)", body = AiAgentView)))]
pub async fn update(
    State(state): State<AppState>,
    auth: AuthContext,
    Path(id): Path<String>,
    IfMatch(expected): IfMatch,
    JsonBody(body): JsonBody<AgentInput>,
) -> ApiResult<Response> {
    auth.require(Role::Operator)?;
    let mut a = agent(&state, &id).await?;
    let latest = version_of(&state, &a, a.latest_version).await?;
    if let Some(n) = &body.name {
        a.name = super::ai::check_name(n)?;
    }
    if let Some(d) = &body.description {
        check_text("description", d, 2000, true)?;
        a.description = d.clone();
    }
    if let Some(t) = &body.tags {
        a.tags = check_tags(t)?;
    }
    if let Some(n) = body.max_steps {
        a.max_steps = check_max_steps(n)?;
    }
    match &body.budget {
        Some(Some(b)) => a.budget = Some(check_budget(b)?),
        Some(None) => a.budget = None,
        None => {}
    }
    let mut next = AgentVersionRecord {
        created_by: auth.actor.name.clone(),
        created_at: now_ms(),
        ..latest.clone()
    };
    if let Some(m) = &body.model {
        check_model("model", m, None)?;
        next.model = m.clone();
    }
    match &body.provider {
        Some(Some(p)) => next.provider_id = Some(check_provider(&state, p).await?),
        Some(None) => next.provider_id = None,
        None => {}
    }
    if let Some(p) = &body.system_prompt {
        check_text("system_prompt", p, 100_000, true)?;
        next.system_prompt = p.clone();
    }
    if let Some(t) = &body.tools {
        next.tools = check_tools(&state, t).await?;
    }
    let changed = next.model != latest.model
        || next.provider_id != latest.provider_id
        || next.system_prompt != latest.system_prompt
        || next.tools != latest.tools;
    a.updated_at = now_ms();
    let a = state
        .store
        .update_ai_agent(
            &auth.actor,
            "agent.update",
            &a,
            changed.then_some(&next),
            body.promote.unwrap_or(false),
            expected,
        )
        .await?;
    respond(&state, StatusCode::OK, &a).await
}

#[utoipa::path(delete, path = "/api/v1/agents/{id}", operation_id = "delete_agent", tag = "agents",
    params(("id" = String, Path, description = "Agent id")),
    responses((status = 204, description = "Deleted with its versions, runs and schedules")))]
pub async fn delete(
    State(state): State<AppState>,
    auth: AuthContext,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    auth.require(Role::Operator)?;
    state.store.delete_ai_agent(&auth.actor, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentLifecycleInput {
    /// The new status: `draft`, `testing`, `active`, `suspended` or `archived`.
    pub status: String,
}

#[utoipa::path(post, path = "/api/v1/agents/{id}/lifecycle", operation_id = "transition_agent", tag = "agents",
    params(("id" = String, Path, description = "Agent id")), request_body = AgentLifecycleInput,
    responses(
        (status = 200, description = "Moved (draft→testing|archived, testing→draft|active|archived, active→suspended|archived, suspended→active|archived)", body = AiAgentView),
        (status = 409, description = "Not a legal transition (INVALID_TRANSITION; details: from, to, allowed)", body = crate::error::ErrorBody),
    ))]
pub async fn lifecycle(
    State(state): State<AppState>,
    auth: AuthContext,
    Path(id): Path<String>,
    IfMatch(expected): IfMatch,
    JsonBody(body): JsonBody<AgentLifecycleInput>,
) -> ApiResult<Response> {
    auth.require(Role::Operator)?;
    if !runtime::STATUSES.contains(&body.status.as_str()) {
        return Err(ApiError::bad_request(
            "status",
            format!("must be one of {}", runtime::STATUSES.join(", ")),
        ));
    }
    let mut a = agent(&state, &id).await?;
    runtime::check_transition(&a.status, &body.status)?;
    let seen = a.version;
    a.status = body.status.clone();
    a.updated_at = now_ms();
    let a = state
        .store
        .update_ai_agent(
            &auth.actor,
            "agent.lifecycle",
            &a,
            None,
            false,
            Some(expected.unwrap_or(seen)),
        )
        .await?;
    respond(&state, StatusCode::OK, &a).await
}

#[derive(Serialize, ToSchema)]
pub struct AgentVersionView {
    pub number: i64,
    pub model: String,
    pub provider_id: Option<String>,
    pub system_prompt: String,
    pub tools: Vec<String>,
    /// The version runs get now.
    pub promoted: bool,
    pub created_by: String,
    pub created_at: String,
}

fn version_view(a: &AiAgentRecord, v: AgentVersionRecord) -> AgentVersionView {
    AgentVersionView {
        promoted: v.number == a.promoted_version,
        number: v.number,
        model: v.model,
        provider_id: v.provider_id,
        system_prompt: v.system_prompt,
        tools: v.tools,
        created_by: v.created_by,
        created_at: rfc3339(v.created_at),
    }
}

#[utoipa::path(get, path = "/api/v1/agents/{id}/versions", operation_id = "list_agent_versions", tag = "agents",
    params(("id" = String, Path, description = "Agent id")),
    responses((status = 200, description = "Every version, oldest first (versions never change)", body = ListEnvelope<AgentVersionView>)))]
pub async fn versions(
    State(state): State<AppState>,
    _auth: AuthContext,
    Path(id): Path<String>,
) -> ApiResult<Json<ListEnvelope<AgentVersionView>>> {
    let a = agent(&state, &id).await?;
    let items: Vec<AgentVersionView> = state
        .store
        .list_ai_agent_versions(&a.id)
        .await?
        .into_iter()
        .map(|v| version_view(&a, v))
        .collect();
    Ok(Json(ListEnvelope::whole(items)))
}

#[utoipa::path(post, path = "/api/v1/agents/{id}/versions/{n}/promote", operation_id = "promote_agent_version", tag = "agents",
    params(("id" = String, Path, description = "Agent id"), ("n" = i64, Path, description = "Version number")),
    responses((status = 200, description = "That version now serves runs (a split, if any, still decides between its two)", body = AiAgentView)))]
pub async fn promote(
    State(state): State<AppState>,
    auth: AuthContext,
    Path((id, n)): Path<(String, String)>,
    IfMatch(expected): IfMatch,
) -> ApiResult<Response> {
    auth.require(Role::Operator)?;
    let n: i64 = n
        .parse()
        .map_err(|_| ApiError::bad_request("n", "must be a version number"))?;
    let mut a = agent(&state, &id).await?;
    version_of(&state, &a, n).await?;
    if a.promoted_version == n {
        return Err(ApiError::conflict(format!(
            "version {n} of agent {} is already promoted",
            a.name
        )));
    }
    let seen = a.version;
    a.promoted_version = n;
    a.promotions.push(n);
    a.updated_at = now_ms();
    let a = state
        .store
        .update_ai_agent(
            &auth.actor,
            "agent.promote",
            &a,
            None,
            false,
            Some(expected.unwrap_or(seen)),
        )
        .await?;
    respond(&state, StatusCode::OK, &a).await
}

#[utoipa::path(post, path = "/api/v1/agents/{id}/rollback", operation_id = "rollback_agent", tag = "agents",
    params(("id" = String, Path, description = "Agent id")),
    responses(
        (status = 200, description = "The version promoted before the current one serves runs again", body = AiAgentView),
        (status = 409, description = "No earlier promotion to go back to", body = crate::error::ErrorBody),
    ))]
pub async fn rollback(
    State(state): State<AppState>,
    auth: AuthContext,
    Path(id): Path<String>,
    IfMatch(expected): IfMatch,
) -> ApiResult<Response> {
    auth.require(Role::Operator)?;
    let mut a = agent(&state, &id).await?;
    if a.promotions.len() < 2 {
        return Err(ApiError::conflict(format!(
            "agent {} has no earlier promoted version to roll back to",
            a.name
        )));
    }
    let seen = a.version;
    a.promotions.pop();
    a.promoted_version = *a.promotions.last().unwrap_or(&1);
    a.updated_at = now_ms();
    let a = state
        .store
        .update_ai_agent(
            &auth.actor,
            "agent.rollback",
            &a,
            None,
            false,
            Some(expected.unwrap_or(seen)),
        )
        .await?;
    respond(&state, StatusCode::OK, &a).await
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentSplitInput {
    /// A version number.
    pub a: i64,
    /// Another version number.
    pub b: i64,
    /// Share of runs served by `b`, 0 to 100. A run with a `run_key` always
    /// gets the same version for that key; one without gets a random one.
    #[schema(minimum = 0, maximum = 100)]
    pub percent_b: i64,
}

#[utoipa::path(put, path = "/api/v1/agents/{id}/split", operation_id = "put_agent_split", tag = "agents",
    params(("id" = String, Path, description = "Agent id")), request_body = AgentSplitInput,
    responses((status = 200, description = "Runs are split between the two versions", body = AiAgentView)))]
pub async fn put_split(
    State(state): State<AppState>,
    auth: AuthContext,
    Path(id): Path<String>,
    IfMatch(expected): IfMatch,
    JsonBody(body): JsonBody<AgentSplitInput>,
) -> ApiResult<Response> {
    auth.require(Role::Operator)?;
    let mut a = agent(&state, &id).await?;
    if !(0..=100).contains(&body.percent_b) {
        return Err(ApiError::bad_request("percent_b", "must be 0 to 100"));
    }
    if body.a == body.b {
        return Err(ApiError::bad_request("b", "must differ from a"));
    }
    for (field, n) in [("a", body.a), ("b", body.b)] {
        if state.store.get_ai_agent_version(&a.id, n).await?.is_none() {
            return Err(ApiError::bad_request(
                field,
                format!("agent {} has no version {n}", a.name),
            ));
        }
    }
    let seen = a.version;
    a.split = Some(AgentSplit {
        a: body.a,
        b: body.b,
        percent_b: body.percent_b,
    });
    a.updated_at = now_ms();
    let a = state
        .store
        .update_ai_agent(
            &auth.actor,
            "agent.split",
            &a,
            None,
            false,
            Some(expected.unwrap_or(seen)),
        )
        .await?;
    respond(&state, StatusCode::OK, &a).await
}

#[utoipa::path(delete, path = "/api/v1/agents/{id}/split", operation_id = "delete_agent_split", tag = "agents",
    params(("id" = String, Path, description = "Agent id")),
    responses((status = 200, description = "No split: the promoted version serves every run", body = AiAgentView)))]
pub async fn delete_split(
    State(state): State<AppState>,
    auth: AuthContext,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    auth.require(Role::Operator)?;
    let mut a = agent(&state, &id).await?;
    let seen = a.version;
    a.split = None;
    a.updated_at = now_ms();
    let a = state
        .store
        .update_ai_agent(&auth.actor, "agent.split", &a, None, false, Some(seen))
        .await?;
    respond(&state, StatusCode::OK, &a).await
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentRunInput {
    /// The user's message, 1 to 100,000 characters.
    #[schema(min_length = 1, max_length = 100_000)]
    pub input: String,
    /// Decides the A/B arm deterministically (same key, same version); 1 to 200 characters.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 200)]
    pub run_key: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct AgentStepView {
    pub seq: i64,
    /// `model` or `tool`.
    pub kind: String,
    /// The model asked, or the tool called.
    pub name: String,
    /// `ok` or `error`.
    pub status: String,
    pub provider: Option<String>,
    pub model: Option<String>,
    pub call_id: Option<String>,
    #[schema(value_type = Object)]
    pub input: Value,
    #[schema(value_type = Object)]
    pub output: Value,
    pub error: Option<String>,
    pub input_tokens: i64,
    pub output_tokens: i64,
    /// In integer micro-USD.
    pub cost_micro_usd: i64,
    pub latency_ms: i64,
    pub started_at: String,
}

#[derive(Serialize, ToSchema)]
pub struct AgentRunView {
    pub id: String,
    pub agent_id: String,
    /// The version that served the run.
    pub agent_version: i64,
    /// `a` or `b` when a split chose the version.
    pub split_arm: Option<String>,
    pub run_key: Option<String>,
    /// `api` or `schedule`.
    pub trigger: String,
    pub schedule_id: Option<String>,
    /// `running`, `succeeded`, `failed`, `max_steps` or `budget_exceeded`.
    pub status: String,
    pub input: String,
    pub output: Option<String>,
    pub error: Option<String>,
    pub error_code: Option<String>,
    pub steps_count: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    /// The sum of the steps' costs, in integer micro-USD.
    pub cost_micro_usd: i64,
    pub cost_usd: String,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub created_by: String,
    /// The step trace (only on a single run).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps: Option<Vec<AgentStepView>>,
}

fn step_view(s: AgentStepRecord) -> AgentStepView {
    AgentStepView {
        seq: s.seq,
        kind: s.kind,
        name: s.name,
        status: s.status,
        provider: s.provider,
        model: s.model,
        call_id: s.call_id,
        input: s.input,
        output: s.output,
        error: s.error,
        input_tokens: s.input_tokens,
        output_tokens: s.output_tokens,
        cost_micro_usd: s.cost_micro_usd,
        latency_ms: s.latency_ms,
        started_at: rfc3339(s.started_at),
    }
}

fn run_view(r: AgentRunRecord, steps: Option<Vec<AgentStepRecord>>) -> AgentRunView {
    AgentRunView {
        cost_usd: runtime::usd(r.cost_micro_usd),
        id: r.id,
        agent_id: r.agent_id,
        agent_version: r.agent_version,
        split_arm: r.split_arm,
        run_key: r.run_key,
        trigger: r.trigger,
        schedule_id: r.schedule_id,
        status: r.status,
        input: r.input,
        output: r.output,
        error: r.error,
        error_code: r.error_code,
        steps_count: r.steps,
        input_tokens: r.input_tokens,
        output_tokens: r.output_tokens,
        cost_micro_usd: r.cost_micro_usd,
        started_at: rfc3339(r.started_at),
        finished_at: r.finished_at.map(rfc3339),
        created_by: r.created_by,
        steps: steps.map(|s| s.into_iter().map(step_view).collect()),
    }
}

#[utoipa::path(post, path = "/api/v1/agents/{id}/runs", operation_id = "create_agent_run", tag = "agents",
    params(("id" = String, Path, description = "Agent id")), request_body = AgentRunInput,
    responses(
        (status = 201, description = "The run, finished, with its step trace (its status says how it ended: succeeded, failed, max_steps or budget_exceeded)", body = AgentRunView),
        (status = 409, description = "The agent does not run now (AGENT_NOT_RUNNABLE: not active, or testing and the caller is not an admin; or no provider)", body = crate::error::ErrorBody),
        (status = 429, description = "The agent's budget for the period is spent (AGENT_BUDGET_EXCEEDED; details name the budget, period, amount left and reset time)", body = crate::error::ErrorBody),
    ))]
pub async fn create_run(
    State(state): State<AppState>,
    auth: AuthContext,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<AgentRunInput>,
) -> ApiResult<Response> {
    auth.require(Role::Operator)?;
    if body.input.is_empty() || body.input.chars().count() > 100_000 {
        return Err(ApiError::bad_request(
            "input",
            "must be 1 to 100000 characters",
        ));
    }
    if let Some(k) = &body.run_key {
        if k.is_empty() || k.chars().count() > 200 || k.chars().any(char::is_control) {
            return Err(ApiError::bad_request(
                "run_key",
                "must be 1 to 200 characters without control characters",
            ));
        }
    }
    let a = agent(&state, &id).await?;
    let start = RunStart {
        input: body.input,
        run_key: body.run_key,
        trigger: "api",
        schedule_id: None,
        may_test: auth.role >= Role::Admin,
    };
    // Once started, a run is the server's work: a caller that goes away (a
    // client timeout, a closed tab) does not cut it short, and its record ends
    // as the run did instead of staying `running`.
    let (task_state, actor) = (state.clone(), auth.actor.clone());
    let (run, steps) =
        tokio::spawn(async move { runtime::run(&task_state, &actor, &a, start).await })
            .await
            .map_err(|e| ApiError::internal("agent run task", e))??;
    Ok((StatusCode::CREATED, Json(run_view(run, Some(steps)))).into_response())
}

#[utoipa::path(get, path = "/api/v1/agents/{id}/runs", operation_id = "list_agent_runs", tag = "agents",
    params(("id" = String, Path, description = "Agent id"), crate::extract::PageParams),
    responses((status = 200, description = "The agent's runs, newest first (without their steps)", body = ListEnvelope<AgentRunView>)))]
pub async fn list_runs(
    State(state): State<AppState>,
    _auth: AuthContext,
    Path(id): Path<String>,
    Pagination(page): Pagination,
) -> ApiResult<Json<ListEnvelope<AgentRunView>>> {
    agent(&state, &id).await?;
    let p = state.store.list_agent_runs(&id, page).await?;
    let items = p.items.into_iter().map(|r| run_view(r, None)).collect();
    Ok(Json(ListEnvelope::new(items, p.total, page)))
}

#[utoipa::path(get, path = "/api/v1/runs/{id}", operation_id = "get_agent_run", tag = "agents",
    params(("id" = String, Path, description = "Run id")),
    responses((status = 200, description = "The run with its step trace: each model call and tool call with inputs, outputs, tokens, latency and cost", body = AgentRunView)))]
pub async fn get_run(
    State(state): State<AppState>,
    _auth: AuthContext,
    Path(id): Path<String>,
) -> ApiResult<Json<AgentRunView>> {
    let (run, steps) = state
        .store
        .get_agent_run(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("run {id}")))?;
    Ok(Json(run_view(run, Some(steps))))
}

#[utoipa::path(get, path = "/api/v1/runs/{id}/trace", operation_id = "get_agent_run_trace", tag = "agents",
    params(("id" = String, Path, description = "Run id"),
           ("format" = Option<String>, Query, description = "`otel` (the default and only format): OTLP-JSON resourceSpans")),
    responses((status = 200, description = "The run as OpenTelemetry spans with GenAI semantic-convention attributes (gen_ai.operation.name, gen_ai.system, gen_ai.request.model, gen_ai.usage.input_tokens, gen_ai.usage.output_tokens, gen_ai.tool.name, …)", body = Object)))]
pub async fn run_trace(
    State(state): State<AppState>,
    _auth: AuthContext,
    Path(id): Path<String>,
    query: QueryParams,
) -> ApiResult<Json<Value>> {
    match query.text("format") {
        None | Some("otel") => {}
        Some(_) => return Err(ApiError::bad_request("format", "must be otel")),
    }
    let (run, steps) = state
        .store
        .get_agent_run(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("run {id}")))?;
    let a = agent(&state, &run.agent_id).await?;
    Ok(Json(runtime::otel_trace(&a, &run, &steps)))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentScheduleInput {
    /// A cron expression in UTC: 5 fields, or 6 with seconds first. Give this or `interval_seconds`.
    #[serde(default)]
    #[schema(max_length = 200)]
    pub cron: Option<String>,
    /// Run every this many seconds (1 to 31536000). Give this or `cron`.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 31_536_000)]
    pub interval_seconds: Option<i64>,
    /// The input of each run, 1 to 100,000 characters.
    #[schema(min_length = 1, max_length = 100_000)]
    pub input: String,
    #[serde(default)]
    #[schema(min_length = 1, max_length = 200)]
    pub run_key: Option<String>,
    /// Default true.
    #[serde(default)]
    pub enabled: Option<bool>,
}

#[derive(Serialize, ToSchema)]
pub struct AgentScheduleView {
    pub id: String,
    pub agent_id: String,
    pub cron: Option<String>,
    pub interval_seconds: Option<i64>,
    pub input: String,
    pub run_key: Option<String>,
    pub enabled: bool,
    pub next_run_at: Option<String>,
    pub last_run_at: Option<String>,
    pub last_run_id: Option<String>,
    /// How the last run ended (`running` while it runs).
    pub last_status: Option<String>,
    pub version: i64,
    pub created_at: String,
}

fn schedule_view(s: AgentScheduleRecord) -> AgentScheduleView {
    AgentScheduleView {
        id: s.id,
        agent_id: s.agent_id,
        cron: s.cron,
        interval_seconds: s.interval_ms.map(|ms| ms / 1000),
        input: s.input,
        run_key: s.run_key,
        enabled: s.enabled,
        next_run_at: s.next_run_at.map(rfc3339),
        last_run_at: s.last_run_at.map(rfc3339),
        last_run_id: s.last_run_id.filter(|r| !r.is_empty()),
        last_status: s.last_status,
        version: s.version,
        created_at: rfc3339(s.created_at),
    }
}

#[utoipa::path(get, path = "/api/v1/agents/{id}/schedules", operation_id = "list_agent_schedules", tag = "agents",
    params(("id" = String, Path, description = "Agent id")),
    responses((status = 200, description = "The agent's schedules with their last and next run times", body = ListEnvelope<AgentScheduleView>)))]
pub async fn list_schedules(
    State(state): State<AppState>,
    _auth: AuthContext,
    Path(id): Path<String>,
) -> ApiResult<Json<ListEnvelope<AgentScheduleView>>> {
    agent(&state, &id).await?;
    let items: Vec<AgentScheduleView> = state
        .store
        .list_agent_schedules(&id)
        .await?
        .into_iter()
        .map(schedule_view)
        .collect();
    Ok(Json(ListEnvelope::whole(items)))
}

#[utoipa::path(post, path = "/api/v1/agents/{id}/schedules", operation_id = "create_agent_schedule", tag = "agents",
    params(("id" = String, Path, description = "Agent id")), request_body = AgentScheduleInput,
    responses((status = 201, description = "Created; the manager runs it when due (one replica per due time)", body = AgentScheduleView)))]
pub async fn create_schedule(
    State(state): State<AppState>,
    auth: AuthContext,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<AgentScheduleInput>,
) -> ApiResult<Response> {
    auth.require(Role::Operator)?;
    agent(&state, &id).await?;
    let now = now_ms();
    let mut s = AgentScheduleRecord {
        id: uuid::Uuid::new_v4().to_string(),
        agent_id: id,
        cron: None,
        interval_ms: None,
        input: String::new(),
        run_key: None,
        enabled: true,
        next_run_at: None,
        last_run_at: None,
        last_run_id: None,
        last_status: None,
        version: 1,
        created_at: now,
        updated_at: now,
    };
    apply_schedule(&mut s, body, now)?;
    state.store.create_agent_schedule(&auth.actor, &s).await?;
    Ok(json_with_etag(
        StatusCode::CREATED,
        s.version,
        schedule_view(s),
    ))
}

/// Applies a schedule's input, validated, and works out its next time.
fn apply_schedule(
    s: &mut AgentScheduleRecord,
    body: AgentScheduleInput,
    now: i64,
) -> ApiResult<()> {
    if body.input.is_empty() || body.input.chars().count() > 100_000 {
        return Err(ApiError::bad_request(
            "input",
            "must be 1 to 100000 characters",
        ));
    }
    if let Some(k) = &body.run_key {
        if k.is_empty() || k.chars().count() > 200 || k.chars().any(char::is_control) {
            return Err(ApiError::bad_request(
                "run_key",
                "must be 1 to 200 characters without control characters",
            ));
        }
    }
    let (cron, interval_ms) = match (&body.cron, body.interval_seconds) {
        (Some(c), None) => {
            if c.len() > 200 {
                return Err(ApiError::bad_request(
                    "cron",
                    "must be at most 200 characters",
                ));
            }
            runtime::parse_cron(c).map_err(|e| {
                ApiError::bad_request("cron", format!("is not a cron expression: {e}"))
            })?;
            (Some(c.trim().to_string()), None)
        }
        (None, Some(secs)) => {
            if !(1..=31_536_000).contains(&secs) {
                return Err(ApiError::bad_request(
                    "interval_seconds",
                    "must be 1 to 31536000",
                ));
            }
            (None, Some(secs * 1000))
        }
        _ => {
            return Err(ApiError::bad_request(
                "cron",
                "give exactly one of cron and interval_seconds",
            ))
        }
    };
    s.cron = cron;
    s.interval_ms = interval_ms;
    s.input = body.input;
    s.run_key = body.run_key;
    s.enabled = body.enabled.unwrap_or(true);
    s.updated_at = now;
    s.next_run_at = runtime::next_due(s, now);
    Ok(())
}

#[utoipa::path(put, path = "/api/v1/agents/{id}/schedules/{sid}", operation_id = "update_agent_schedule", tag = "agents",
    params(("id" = String, Path, description = "Agent id"), ("sid" = String, Path, description = "Schedule id")),
    request_body = AgentScheduleInput,
    responses((status = 200, description = "Replaced (the next time worked out anew from now; the last run kept); `enabled: false` pauses it", body = AgentScheduleView)))]
pub async fn update_schedule(
    State(state): State<AppState>,
    auth: AuthContext,
    Path((id, sid)): Path<(String, String)>,
    IfMatch(expected): IfMatch,
    JsonBody(body): JsonBody<AgentScheduleInput>,
) -> ApiResult<Response> {
    auth.require(Role::Operator)?;
    let mut s = schedule_of(&state, &id, &sid).await?;
    apply_schedule(&mut s, body, now_ms())?;
    let s = state
        .store
        .update_agent_schedule(&auth.actor, &s, expected)
        .await?;
    Ok(json_with_etag(StatusCode::OK, s.version, schedule_view(s)))
}

async fn schedule_of(state: &AppState, id: &str, sid: &str) -> ApiResult<AgentScheduleRecord> {
    state
        .store
        .get_agent_schedule(sid)
        .await?
        .filter(|s| s.agent_id == id)
        .ok_or_else(|| ApiError::not_found(format!("schedule {sid} of agent {id}")))
}

#[utoipa::path(get, path = "/api/v1/agents/{id}/schedules/{sid}", operation_id = "get_agent_schedule", tag = "agents",
    params(("id" = String, Path, description = "Agent id"), ("sid" = String, Path, description = "Schedule id")),
    responses((status = 200, description = "The schedule with its last and next run times", body = AgentScheduleView)))]
pub async fn get_schedule(
    State(state): State<AppState>,
    _auth: AuthContext,
    Path((id, sid)): Path<(String, String)>,
) -> ApiResult<Json<AgentScheduleView>> {
    Ok(Json(schedule_view(schedule_of(&state, &id, &sid).await?)))
}

#[utoipa::path(delete, path = "/api/v1/agents/{id}/schedules/{sid}", operation_id = "delete_agent_schedule", tag = "agents",
    params(("id" = String, Path, description = "Agent id"), ("sid" = String, Path, description = "Schedule id")),
    responses((status = 204, description = "Deleted")))]
pub async fn delete_schedule(
    State(state): State<AppState>,
    auth: AuthContext,
    Path((id, sid)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    auth.require(Role::Operator)?;
    schedule_of(&state, &id, &sid).await?;
    state.store.delete_agent_schedule(&auth.actor, &sid).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentToolInput {
    /// What the model calls it: 1 to 64 letters, digits, `_` or `-`; unique.
    #[schema(min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9_-]+$")]
    pub name: String,
    /// What it does, for the model (at most 2000 characters).
    #[serde(default)]
    #[schema(max_length = 2000)]
    pub description: Option<String>,
    /// The endpoint: http or https, under the manager's outbound destination
    /// policy (non-public addresses only with `webhooks.allow_private_targets`).
    #[schema(max_length = 2048)]
    pub url: String,
    /// GET, POST, PUT, PATCH or DELETE (default POST). GET and DELETE send the
    /// arguments as query parameters, the others as a JSON body.
    #[serde(default)]
    pub method: Option<String>,
    /// The JSON schema of the arguments (an object schema).
    #[schema(value_type = Object)]
    pub input_schema: Value,
    /// 100 to 120000 ms (default 10000).
    #[serde(default)]
    #[schema(minimum = 100, maximum = 120_000)]
    pub timeout_ms: Option<i64>,
    /// Headers sent with each call (e.g. Authorization); values stored sealed
    /// and never shown. On update: absent keeps them, given replaces them.
    #[serde(default)]
    pub headers: Option<BTreeMap<String, String>>,
}

#[derive(Serialize, ToSchema)]
pub struct AgentToolView {
    pub id: String,
    pub name: String,
    pub description: String,
    pub url: String,
    pub method: String,
    #[schema(value_type = Object)]
    pub input_schema: Value,
    pub timeout_ms: i64,
    /// Header names; values are never shown.
    pub header_names: Vec<String>,
    pub version: i64,
    pub created_at: String,
    pub updated_at: String,
}

fn tool_view(t: &AgentToolRecord) -> AgentToolView {
    AgentToolView {
        id: t.id.clone(),
        name: t.name.clone(),
        description: t.description.clone(),
        url: t.url.clone(),
        method: t.method.clone(),
        input_schema: t.input_schema.clone(),
        timeout_ms: t.timeout_ms,
        header_names: t.headers.iter().map(|(k, _)| k.clone()).collect(),
        version: t.version,
        created_at: rfc3339(t.created_at),
        updated_at: rfc3339(t.updated_at),
    }
}

async fn apply_tool(
    state: &AppState,
    t: &mut AgentToolRecord,
    body: &AgentToolInput,
) -> ApiResult<()> {
    check_tool_name("name", &body.name)?;
    t.name = body.name.clone();
    if let Some(d) = &body.description {
        check_text("description", d, 2000, true)?;
        t.description = d.clone();
    }
    if body.url.len() > 2048 {
        return Err(ApiError::bad_request(
            "url",
            "must be at most 2048 characters",
        ));
    }
    let allow = state.settings().webhooks.allow_private_targets;
    crate::webhooks::check_destination(&body.url, allow)
        .await
        .map_err(|e| ApiError::bad_request("url", e))?;
    t.url = body.url.clone();
    let method = body
        .method
        .as_deref()
        .unwrap_or("POST")
        .to_ascii_uppercase();
    if !matches!(method.as_str(), "GET" | "POST" | "PUT" | "PATCH" | "DELETE") {
        return Err(ApiError::bad_request(
            "method",
            "must be GET, POST, PUT, PATCH or DELETE",
        ));
    }
    t.method = method;
    if !body.input_schema.is_object() {
        return Err(ApiError::bad_request(
            "input_schema",
            "must be a JSON schema object",
        ));
    }
    if body.input_schema.to_string().len() > 64 * 1024 {
        return Err(ApiError::bad_request(
            "input_schema",
            "must be at most 64 KiB",
        ));
    }
    if let Some(ty) = body.input_schema.get("type") {
        if ty != "object" {
            return Err(ApiError::bad_request(
                "input_schema",
                "must describe an object (\"type\": \"object\"): arguments are named",
            ));
        }
    }
    jsonschema::validator_for(&body.input_schema).map_err(|e| {
        ApiError::bad_request("input_schema", format!("is not a valid JSON schema: {e}"))
    })?;
    t.input_schema = body.input_schema.clone();
    if let Some(ms) = body.timeout_ms {
        if !(100..=120_000).contains(&ms) {
            return Err(ApiError::bad_request("timeout_ms", "must be 100 to 120000"));
        }
        t.timeout_ms = ms;
    }
    if let Some(h) = &body.headers {
        t.headers = seal_headers(state, h)?;
    }
    Ok(())
}

/// Checks the headers an outbound call (an HTTP tool, an MCP server) is to send
/// and seals their values: at most 20, valid names, visible values of at most
/// 4096 characters; names lower-cased.
pub(crate) fn seal_headers(
    state: &AppState,
    headers: &BTreeMap<String, String>,
) -> ApiResult<Vec<(String, String)>> {
    if headers.len() > 20 {
        return Err(ApiError::bad_request("headers", "at most 20 headers"));
    }
    let mut sealed = Vec::with_capacity(headers.len());
    for (k, v) in headers {
        let field = format!("headers.{k}");
        if axum::http::HeaderName::from_bytes(k.as_bytes()).is_err() {
            return Err(ApiError::bad_request(&field, "is not a valid header name"));
        }
        if v.len() > 4096 || axum::http::HeaderValue::from_str(v).is_err() {
            return Err(ApiError::bad_request(
                &field,
                "must be a header value of at most 4096 visible characters",
            ));
        }
        sealed.push((k.to_ascii_lowercase(), state.secrets.seal(v.as_bytes())));
    }
    Ok(sealed)
}

async fn tool(state: &AppState, id: &str) -> ApiResult<AgentToolRecord> {
    state
        .store
        .get_agent_tool(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("tool {id}")))
}

#[utoipa::path(get, path = "/api/v1/agent-tools", operation_id = "list_agent_tools", tag = "agents",
    responses((status = 200, description = "HTTP tools agents may call, by name (header values never shown)", body = ListEnvelope<AgentToolView>)))]
pub async fn list_tools(
    State(state): State<AppState>,
    _auth: AuthContext,
) -> ApiResult<Json<ListEnvelope<AgentToolView>>> {
    let items: Vec<AgentToolView> = state
        .store
        .list_agent_tools()
        .await?
        .iter()
        .map(tool_view)
        .collect();
    Ok(Json(ListEnvelope::whole(items)))
}

#[utoipa::path(post, path = "/api/v1/agent-tools", operation_id = "create_agent_tool", tag = "agents", request_body = AgentToolInput,
    responses((status = 201, description = "Created (header values stored sealed)", body = AgentToolView)))]
pub async fn create_tool(
    State(state): State<AppState>,
    auth: AuthContext,
    JsonBody(body): JsonBody<AgentToolInput>,
) -> ApiResult<Response> {
    auth.require(Role::Admin)?;
    let now = now_ms();
    let mut t = AgentToolRecord {
        id: uuid::Uuid::new_v4().to_string(),
        name: String::new(),
        description: String::new(),
        url: String::new(),
        method: String::new(),
        input_schema: Value::Null,
        timeout_ms: 10_000,
        headers: Vec::new(),
        version: 1,
        created_at: now,
        updated_at: now,
    };
    apply_tool(&state, &mut t, &body).await?;
    state.store.create_agent_tool(&auth.actor, &t).await?;
    Ok(json_with_etag(
        StatusCode::CREATED,
        t.version,
        tool_view(&t),
    ))
}

#[utoipa::path(get, path = "/api/v1/agent-tools/{id}", operation_id = "get_agent_tool", tag = "agents",
    params(("id" = String, Path, description = "Tool id")),
    responses((status = 200, description = "The tool (header values never shown)", body = AgentToolView)))]
pub async fn get_tool(
    State(state): State<AppState>,
    _auth: AuthContext,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let t = tool(&state, &id).await?;
    Ok(json_with_etag(StatusCode::OK, t.version, tool_view(&t)))
}

#[utoipa::path(put, path = "/api/v1/agent-tools/{id}", operation_id = "update_agent_tool", tag = "agents",
    params(("id" = String, Path, description = "Tool id")), request_body = AgentToolInput,
    responses((status = 200, description = "Updated (agents naming the old name no longer find it)", body = AgentToolView)))]
pub async fn update_tool(
    State(state): State<AppState>,
    auth: AuthContext,
    Path(id): Path<String>,
    IfMatch(expected): IfMatch,
    JsonBody(body): JsonBody<AgentToolInput>,
) -> ApiResult<Response> {
    auth.require(Role::Admin)?;
    let mut t = tool(&state, &id).await?;
    apply_tool(&state, &mut t, &body).await?;
    t.updated_at = now_ms();
    let t = state
        .store
        .update_agent_tool(&auth.actor, &t, expected)
        .await?;
    Ok(json_with_etag(StatusCode::OK, t.version, tool_view(&t)))
}

#[utoipa::path(delete, path = "/api/v1/agent-tools/{id}", operation_id = "delete_agent_tool", tag = "agents",
    params(("id" = String, Path, description = "Tool id")),
    responses((status = 204, description = "Deleted (a run's call of it becomes a failed step: unknown tool)")))]
pub async fn delete_tool(
    State(state): State<AppState>,
    auth: AuthContext,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    auth.require(Role::Admin)?;
    state.store.delete_agent_tool(&auth.actor, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
