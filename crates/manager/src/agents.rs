//! Agents at work: a run's loop (model call → checked tool calls → results fed
//! back, until a final answer or the step limit), which version serves a run
//! (the promoted one, or an A/B split decided by the run key), the agent's
//! budget per calendar period, the lifecycle's legal transitions, schedules
//! executed by a background task (one replica per due schedule), and a run's
//! trace as OpenTelemetry spans with the GenAI semantic-convention names.
//!
//! Nothing a model writes is trusted: a tool call of a tool the agent does not
//! have, arguments that are not JSON or do not match the tool's JSON schema,
//! become a failed step whose error is fed back to the model; the tool is never
//! called. Tools are reached only under the manager's outbound destination
//! policy (the same as webhooks').

use std::collections::HashMap;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use chrono::{Datelike, TimeZone, Utc};
use fleetgate_ai::{
    ChatMessage, ChatRequest, PriceTable, ProviderKind, ToolCall, ToolDefinition, ToolResult,
};
use fleetgate_core::time::now_ms;
use fleetgate_store::{
    Actor, AgentBudget, AgentRunRecord, AgentScheduleRecord, AgentStepRecord, AgentToolRecord,
    AgentVersionRecord, AiAgentRecord, AiPreferencesRecord,
};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::error::{ApiError, ApiResult};
use crate::AppState;

/// The lifecycle's states, in order.
pub const STATUSES: [&str; 5] = ["draft", "testing", "active", "suspended", "archived"];

/// Where an agent in `from` may go.
pub fn next_statuses(from: &str) -> &'static [&'static str] {
    match from {
        "draft" => &["testing", "archived"],
        "testing" => &["draft", "active", "archived"],
        "active" => &["suspended", "archived"],
        "suspended" => &["active", "archived"],
        _ => &[],
    }
}

/// 409 unless `from` → `to` is a legal transition.
pub fn check_transition(from: &str, to: &str) -> ApiResult<()> {
    let allowed = next_statuses(from);
    if allowed.contains(&to) {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::CONFLICT,
        "INVALID_TRANSITION",
        format!(
            "an agent cannot go from {from} to {to} (from {from} it may go to: {})",
            if allowed.is_empty() {
                "nowhere".to_string()
            } else {
                allowed.join(", ")
            }
        ),
    )
    .with_details(json!({"from": from, "to": to, "allowed": allowed})))
}

/// Most tool-result bytes fed back to a model and kept in a trace.
const MAX_TOOL_OUTPUT: usize = 64 * 1024;

/// The start of the calendar period (UTC) that `now` is in, and the start of
/// the next one, in ms.
pub fn period_bounds(period: &str, now: i64) -> (i64, i64) {
    let t = Utc
        .timestamp_millis_opt(now)
        .single()
        .unwrap_or_else(Utc::now);
    let day = t.date_naive();
    let (start, next) = match period {
        "week" => {
            let monday = day - chrono::Days::new(u64::from(day.weekday().num_days_from_monday()));
            (monday, monday + chrono::Days::new(7))
        }
        "month" => {
            let first = day.with_day(1).unwrap_or(day);
            (first, first + chrono::Months::new(1))
        }
        _ => (day, day + chrono::Days::new(1)),
    };
    let ms = |d: chrono::NaiveDate| {
        d.and_hms_opt(0, 0, 0)
            .map(|dt| dt.and_utc().timestamp_millis())
            .unwrap_or(now)
    };
    (ms(start), ms(next))
}

/// Micro-USD as USD text with six decimals.
pub fn usd(micros: i64) -> String {
    fleetgate_ai::pricing::format_usd(micros.max(0) as u64)
}

/// How much longer than its provider's timeout a model call's reservation
/// lives: a call cannot still be running after it (the client gives up at the
/// timeout), so an older reservation is one a stopped replica left behind.
const RESERVATION_GRACE_MS: i64 = 10_000;

/// The refusal of a run (or of its next model call) by the agent's budget.
/// `spent` is what runs of the period recorded, `reserved` what model calls
/// under way hold; `need` is the worst-case cost of the call refused (none:
/// the run itself is refused, nothing being left).
fn budget_refusal(
    agent: &AiAgentRecord,
    b: &AgentBudget,
    spent: i64,
    reserved: i64,
    need: Option<i64>,
    now: i64,
) -> ApiError {
    let (_, resets) = period_bounds(&b.period, now);
    let left = (b.limit_micro_usd - spent - reserved).max(0);
    let held = if reserved > 0 {
        format!(", {} USD held by model calls under way", usd(reserved))
    } else {
        String::new()
    };
    let message = match need {
        None => format!(
            "the {} budget of agent {} ({} USD) is spent: {} USD used this {}{held}, {} USD left; it resets at {}",
            b.period,
            agent.name,
            usd(b.limit_micro_usd),
            usd(spent),
            b.period,
            usd(left),
            crate::api::rfc3339(resets)
        ),
        Some(need) => format!(
            "the {} budget of agent {} ({} USD) cannot cover the next model call, which may cost up to {} USD: {} USD used this {}{held}, {} USD left; it resets at {}",
            b.period,
            agent.name,
            usd(b.limit_micro_usd),
            usd(need),
            usd(spent),
            b.period,
            usd(left),
            crate::api::rfc3339(resets)
        ),
    };
    let mut e = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "AGENT_BUDGET_EXCEEDED",
        message,
    )
    .with_details(json!({
        "budget": format!("agent:{}:{}", agent.name, b.period),
        "period": b.period,
        "limit_usd": usd(b.limit_micro_usd),
        "spent_usd": usd(spent),
        "reserved_usd": usd(reserved),
        "remaining_usd": usd(left),
        "needed_usd": need.map(usd),
        "resets_at": crate::api::rfc3339(resets),
    }));
    e.retry_after = Some(((resets - now).max(0) as u64).div_ceil(1000));
    e
}

/// A model call's reservation of its agent's budget. Settled or released
/// explicitly; dropped while still held (the run's future was cancelled mid
/// call: its HTTP client went away), a task of its own releases it. A
/// replica that stops mid-call leaves it to expire ([`RESERVATION_GRACE_MS`]).
struct Hold {
    store: std::sync::Arc<dyn fleetgate_store::Store>,
    id: Option<String>,
}

impl Hold {
    /// Records the run's totals with the call's real cost in them and frees
    /// the reservation, at once.
    async fn settle(mut self, run_id: &str, input_tokens: i64, output_tokens: i64, cost: i64) {
        let Some(id) = self.id.take() else { return };
        match self
            .store
            .settle_agent_reservation(&id, run_id, input_tokens, output_tokens, cost)
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(run = %run_id, reservation = %id,
                    "agent run: the model call's reservation had expired before it settled")
            }
            Err(e) => {
                tracing::warn!(run = %run_id, reservation = %id, error = %e,
                    "agent run: the model call did not settle; its reservation expires instead");
                // The cost at least is recorded when the store is back.
                let _ = self
                    .store
                    .record_agent_run_progress(run_id, input_tokens, output_tokens, cost)
                    .await;
            }
        }
    }

    /// Frees the reservation of a call that failed.
    async fn release(mut self) {
        if let Some(id) = self.id.take() {
            if let Err(e) = self.store.release_agent_reservation(&id).await {
                tracing::warn!(reservation = %id, error = %e,
                    "agent run: a failed model call's reservation was not released; it expires instead");
            }
        }
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        let Some(id) = self.id.take() else { return };
        let store = self.store.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = store.release_agent_reservation(&id).await {
                    tracing::warn!(reservation = %id, error = %e,
                        "agent run: a cancelled model call's reservation was not released; it expires instead");
                }
            });
        }
    }
}

/// Which version serves a run, and which arm of the split chose it. With a
/// run key the choice is a hash of the agent and the key: the same key always
/// gets the same arm.
pub fn choose_version(agent: &AiAgentRecord, run_key: Option<&str>) -> (i64, Option<&'static str>) {
    let Some(split) = agent.split else {
        return (agent.promoted_version, None);
    };
    let bucket = match run_key {
        Some(k) => {
            let h = Sha256::digest(format!("{}\n{k}", agent.id).as_bytes());
            let mut b = [0u8; 8];
            b.copy_from_slice(&h[..8]);
            u64::from_be_bytes(b) % 100
        }
        None => u64::from(rand::random::<u32>() % 100),
    };
    if (bucket as i64) < split.percent_b {
        (split.b, Some("b"))
    } else {
        (split.a, Some("a"))
    }
}

/// How a run was started.
pub struct RunStart {
    pub input: String,
    pub run_key: Option<String>,
    /// `api` or `schedule`.
    pub trigger: &'static str,
    pub schedule_id: Option<String>,
    /// The caller may run an agent in `testing` (an admin).
    pub may_test: bool,
}

/// A tool ready to be called: what the model is told of it, its compiled
/// argument schema, and where a call goes.
struct ReadyTool {
    name: String,
    description: String,
    parameters: Value,
    schema: jsonschema::Validator,
    target: Target,
}

enum Target {
    /// An HTTP endpoint.
    Http(AgentToolRecord),
    /// A tool of an MCP server (by the server's name and the tool's own name).
    Mcp { server: String, tool: String },
}

/// The error that ends a run before it starts (not runnable, no provider).
fn not_runnable(message: String, status: &str) -> ApiError {
    ApiError::new(StatusCode::CONFLICT, "AGENT_NOT_RUNNABLE", message)
        .with_details(json!({"status": status}))
}

/// Runs `agent` once and returns the finished run with its steps. Refusals
/// before anything ran (status, budget, provider) are errors and record no run.
pub async fn run(
    state: &AppState,
    actor: &Actor,
    agent: &AiAgentRecord,
    start: RunStart,
) -> ApiResult<(AgentRunRecord, Vec<AgentStepRecord>)> {
    match agent.status.as_str() {
        "active" => {}
        "testing" if start.may_test => {}
        "testing" => {
            return Err(not_runnable(
                format!(
                    "agent {} is in testing: only an admin may run it",
                    agent.name
                ),
                &agent.status,
            ))
        }
        other => {
            return Err(not_runnable(
                format!(
                    "agent {} is {other}: only active agents run (and testing ones, by an admin)",
                    agent.name
                ),
                other,
            ))
        }
    }
    let (number, arm) = choose_version(agent, start.run_key.as_deref());
    let version = state
        .store
        .get_ai_agent_version(&agent.id, number)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("version {number} of agent {}", agent.id)))?;
    let now = now_ms();
    if let Some(b) = &agent.budget {
        // Nothing left (spent, or held by calls under way): the run is
        // refused before it starts. Otherwise each model call reserves its
        // worst case as it comes (see `Loop::reserve`).
        let (since, _) = period_bounds(&b.period, now);
        let spent = state.store.agent_spend_since(&agent.id, since).await?;
        let reserved = state.store.agent_reserved(&agent.id, now).await?;
        if spent.saturating_add(reserved) >= b.limit_micro_usd {
            return Err(budget_refusal(agent, b, spent, reserved, None, now));
        }
    }
    let providers = state.store.list_ai_providers().await?;
    let resolved = crate::ai::resolve(
        &providers,
        &AiPreferencesRecord::default(),
        version.provider_id.as_deref(),
    )
    .map_err(|_| {
        not_runnable(
            format!(
                "the provider of agent {} version {} no longer exists",
                agent.name, version.number
            ),
            &agent.status,
        )
    })?
    .ok_or_else(|| {
        not_runnable(
            "no AI provider can be chosen: add one at /api/v1/ai/providers".into(),
            &agent.status,
        )
    })?;
    if !resolved.provider.enabled {
        return Err(not_runnable(
            format!("AI provider {} is disabled", resolved.provider.name),
            &agent.status,
        ));
    }
    let client = crate::ai::client_for(state, &resolved.provider)
        .map_err(|e| crate::api::ai::provider_failure(&e))?;
    let mcp = McpTools::new(state, &version).await?;
    let mut opening = Vec::new();
    let tools = ready_tools(state, &version, &mcp, &mut opening).await?;
    // The built-in prices with the operators' overrides, as they are now.
    let prices = crate::ai_gateway::price_table(state.store.as_ref()).await?;

    let mut record = AgentRunRecord {
        id: uuid::Uuid::new_v4().to_string(),
        agent_id: agent.id.clone(),
        agent_version: version.number,
        split_arm: arm.map(str::to_string),
        run_key: start.run_key.clone(),
        trigger: start.trigger.to_string(),
        schedule_id: start.schedule_id.clone(),
        status: "running".into(),
        input: start.input.clone(),
        output: None,
        error: None,
        error_code: None,
        steps: 0,
        input_tokens: 0,
        output_tokens: 0,
        cost_micro_usd: 0,
        started_at: now,
        finished_at: None,
        created_by: actor.name.clone(),
    };
    state.store.start_agent_run(actor, &record).await?;

    let loop_ctx = Loop {
        state,
        agent,
        version: &version,
        client: &client,
        provider_kind: client.kind(),
        max_tokens: resolved.provider.max_tokens,
        temperature: resolved.provider.temperature,
        tools: &tools,
        prices: &prices,
        call_timeout_ms: resolved.provider.timeout_ms.max(1),
        mcp: &mcp,
    };
    let steps = loop_ctx.go(&mut record, opening).await;
    mcp.close().await;
    record.steps = steps.len() as i64;
    record.input_tokens = steps.iter().map(|s| s.input_tokens).sum();
    record.output_tokens = steps.iter().map(|s| s.output_tokens).sum();
    // The run's cost is the sum of its steps', exactly.
    record.cost_micro_usd = steps.iter().map(|s| s.cost_micro_usd).sum();
    record.finished_at = Some(now_ms());
    state.store.finish_agent_run(&record, &steps).await?;
    tracing::info!(agent = %agent.name, run = %record.id, status = %record.status,
        steps = record.steps, cost_micro_usd = record.cost_micro_usd, "agent run finished");
    Ok((record, steps))
}

/// The tools of a version that exist, with their schemas compiled. A tool
/// deleted since is left out (a call of it is an unknown tool). The MCP
/// servers the version names are connected to and listed: the tools offered
/// are those the server's access rules allow and the version's patterns
/// name. A server that cannot be reached adds a failed step to `opening`
/// (the run goes on without its tools).
async fn ready_tools(
    state: &AppState,
    version: &AgentVersionRecord,
    mcp: &McpTools,
    opening: &mut Vec<AgentStepRecord>,
) -> ApiResult<HashMap<String, ReadyTool>> {
    let mut out = HashMap::new();
    for (server, rec) in &mcp.servers {
        let started = now_ms();
        let clock = Instant::now();
        let listed = match crate::mcp::Session::connect(state, rec).await {
            Ok(mut session) => {
                let listed = session.list_tools().await;
                if listed.is_ok() {
                    mcp.sessions.lock().await.insert(server.clone(), session);
                } else {
                    session.close().await;
                }
                listed
            }
            Err(e) => Err(e),
        };
        let listed = match listed {
            Ok(l) => l,
            Err(e) => {
                opening.push(AgentStepRecord {
                    run_id: String::new(),
                    seq: 0,
                    kind: "tool".into(),
                    name: format!("mcp:{server}"),
                    status: "error".into(),
                    provider: None,
                    model: None,
                    call_id: None,
                    input: json!({"mcp_server": server, "method": "tools/list"}),
                    output: Value::Null,
                    error: Some(format!("{e}; its tools are not offered in this run")),
                    input_tokens: 0,
                    output_tokens: 0,
                    cost_micro_usd: 0,
                    latency_ms: clock.elapsed().as_millis() as i64,
                    started_at: started,
                });
                continue;
            }
        };
        for t in listed {
            let tool = t.name.to_string();
            if !mcp.permits(server, &tool) {
                continue;
            }
            let Some(name) = crate::mcp::model_name(server, &tool) else {
                continue;
            };
            let listed = crate::mcp::listed_tool(t);
            match jsonschema::validator_for(&listed.input_schema) {
                Ok(schema) => {
                    out.insert(
                        name.clone(),
                        ReadyTool {
                            name,
                            description: listed.description,
                            parameters: listed.input_schema,
                            schema,
                            target: Target::Mcp {
                                server: server.clone(),
                                tool,
                            },
                        },
                    );
                }
                Err(e) => {
                    tracing::warn!(server = %server, tool = %tool, error = %e, "an MCP tool's schema does not compile; the tool is left out")
                }
            }
        }
    }
    for name in &version.tools {
        if crate::mcp::parse_ref(name).is_some() {
            continue;
        }
        let Some(record) = state.store.get_agent_tool_by_name(name).await? else {
            continue;
        };
        match jsonschema::validator_for(&record.input_schema) {
            Ok(schema) => {
                out.insert(
                    name.clone(),
                    ReadyTool {
                        name: record.name.clone(),
                        description: record.description.clone(),
                        parameters: record.input_schema.clone(),
                        schema,
                        target: Target::Http(record),
                    },
                );
            }
            Err(e) => {
                tracing::warn!(tool = %name, error = %e, "stored tool schema does not compile; the tool is left out")
            }
        }
    }
    Ok(out)
}

/// The MCP servers a run's version names, the version's patterns per
/// server, and the connections opened during the run.
struct McpTools {
    servers: HashMap<String, fleetgate_store::McpServerRecord>,
    patterns: HashMap<String, Vec<String>>,
    sessions: tokio::sync::Mutex<HashMap<String, crate::mcp::Session>>,
}

impl McpTools {
    async fn new(state: &AppState, version: &AgentVersionRecord) -> ApiResult<McpTools> {
        let mut servers = HashMap::new();
        let mut patterns: HashMap<String, Vec<String>> = HashMap::new();
        for entry in &version.tools {
            let Some((server, pattern)) = crate::mcp::parse_ref(entry) else {
                continue;
            };
            if !servers.contains_key(server) {
                // A server deleted since is left out: a call of its tools is refused.
                let Some(rec) = state.store.get_mcp_server_by_name(server).await? else {
                    continue;
                };
                servers.insert(server.to_string(), rec);
            }
            patterns
                .entry(server.to_string())
                .or_default()
                .push(pattern.to_string());
        }
        Ok(McpTools {
            servers,
            patterns,
            sessions: tokio::sync::Mutex::default(),
        })
    }

    /// Whether the server's access rules allow `tool` and the version names it.
    fn permits(&self, server: &str, tool: &str) -> bool {
        let (Some(rec), Some(patterns)) = (self.servers.get(server), self.patterns.get(server))
        else {
            return false;
        };
        crate::mcp::allowed(rec, tool) && patterns.iter().any(|p| crate::mcp::glob(p, tool))
    }

    /// Calls a tool, checking the rules again first: a tool they leave out
    /// is never sent. A connection that failed or timed out is closed (a
    /// later call connects anew).
    async fn call(
        &self,
        state: &AppState,
        server: &str,
        tool: &str,
        args: &Value,
    ) -> Result<Value, (Value, String)> {
        if !self.permits(server, tool) {
            return Err((Value::Null, refusal(server, tool)));
        }
        let Some(rec) = self.servers.get(server) else {
            return Err((Value::Null, refusal(server, tool)));
        };
        let mut sessions = self.sessions.lock().await;
        let mut session = match sessions.remove(server) {
            Some(s) => s,
            None => crate::mcp::Session::connect(state, rec)
                .await
                .map_err(|e| (Value::Null, e))?,
        };
        let args = args.as_object().cloned().unwrap_or_default();
        match session.call(tool, args).await {
            Ok(r) => {
                sessions.insert(server.to_string(), session);
                let text = crate::mcp::result_text(&r);
                let truncated = text.len() > MAX_TOOL_OUTPUT;
                let text = clip_bytes(&text, MAX_TOOL_OUTPUT);
                let structured = r
                    .structured_content
                    .as_ref()
                    .filter(|v| v.to_string().len() <= MAX_TOOL_OUTPUT);
                let out = json!({"mcp_server": server, "tool": tool, "body": text,
                                 "truncated": truncated, "structured_content": structured,
                                 "is_error": r.is_error.unwrap_or(false)});
                if r.is_error == Some(true) {
                    let why = format!(
                        "MCP server {server} answered that {tool} failed: {}",
                        crate::ai::clip(&text, 500)
                    );
                    Err((out, why))
                } else {
                    Ok(out)
                }
            }
            Err(e) => {
                session.close().await;
                Err((Value::Null, e))
            }
        }
    }

    /// Ends every connection (stdio servers' processes are killed and reaped).
    async fn close(&self) {
        let sessions: Vec<crate::mcp::Session> =
            self.sessions.lock().await.drain().map(|(_, s)| s).collect();
        for s in sessions {
            s.close().await;
        }
    }
}

/// Why a call of an MCP tool the rules leave out is refused.
fn refusal(server: &str, tool: &str) -> String {
    format!(
        "tool {:?} of MCP server {server} is not allowed for this agent (the server's access rules \
         or the agent's tools leave it out); the call was refused and not sent to the server",
        crate::ai::clip(tool, 100)
    )
}

/// At most `max` bytes of `s`, cut at a character boundary.
fn clip_bytes(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

struct Loop<'a> {
    state: &'a AppState,
    agent: &'a AiAgentRecord,
    version: &'a AgentVersionRecord,
    client: &'a fleetgate_ai::ProviderClient,
    provider_kind: ProviderKind,
    max_tokens: i64,
    temperature: f64,
    tools: &'a HashMap<String, ReadyTool>,
    prices: &'a PriceTable,
    /// The provider's timeout of one call: how long a reservation may be
    /// needed.
    call_timeout_ms: i64,
    mcp: &'a McpTools,
}

/// What a tool call came to: the result fed back, and the step's trace.
struct Called {
    result: ToolResult,
    step: AgentStepRecord,
}

impl Loop<'_> {
    fn definitions(&self) -> Vec<ToolDefinition> {
        let mut defs: Vec<ToolDefinition> = self
            .tools
            .values()
            .map(|t| ToolDefinition {
                name: t.name.clone(),
                description: t.description.clone(),
                parameters: t.parameters.clone(),
            })
            .collect();
        defs.sort_by(|a, b| a.name.cmp(&b.name));
        defs
    }

    /// Reserves the worst-case cost of `req` in the agent's budget: every
    /// byte of the request counted as a prompt token (more than it can hold)
    /// and all of `max_tokens` generated, at the model's price with the
    /// operators' overrides. The error is the refusal that stops the run:
    /// the budget cannot cover it, the model has no price (so the budget
    /// could not be enforced), or the store could not be asked (the call is
    /// not made unchecked).
    async fn reserve(
        &self,
        b: &AgentBudget,
        run_id: &str,
        req: &ChatRequest,
    ) -> Result<Hold, Box<ApiError>> {
        let bytes = serde_json::to_vec(req)
            .map(|v| v.len())
            .unwrap_or(usize::MAX) as u64;
        let max_out = u64::from(req.max_tokens.unwrap_or(u32::MAX));
        let Some(worst) = self.prices.worst_case(&self.version.model, bytes, max_out) else {
            return Err(Box::new(ApiError::new(
                StatusCode::CONFLICT,
                "AGENT_MODEL_UNPRICED",
                format!(
                    "model {:?} has no price, so the {} budget of agent {} cannot be enforced: set its price at /api/v1/ai/prices",
                    self.version.model, b.period, self.agent.name
                ),
            )));
        };
        let worst = worst.min(i64::MAX as u64) as i64;
        let now = now_ms();
        let (since, _) = period_bounds(&b.period, now);
        let r = fleetgate_store::AgentReservation {
            id: uuid::Uuid::new_v4().to_string(),
            agent_id: self.agent.id.clone(),
            run_id: run_id.to_string(),
            amount_micro_usd: worst,
            created_at: now,
            expires_at: now
                .saturating_add(self.call_timeout_ms)
                .saturating_add(RESERVATION_GRACE_MS),
        };
        match self
            .state
            .store
            .reserve_agent_budget(&r, since, b.limit_micro_usd)
            .await
        {
            Ok(fleetgate_store::AgentReserve::Reserved { .. }) => Ok(Hold {
                store: self.state.store.clone(),
                id: Some(r.id),
            }),
            Ok(fleetgate_store::AgentReserve::Refused { spent, reserved }) => Err(Box::new(
                budget_refusal(self.agent, b, spent, reserved, Some(worst), now),
            )),
            Err(e) => Err(Box::new(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "AGENT_BUDGET_UNCHECKED",
                format!(
                    "the {} budget of agent {} could not be checked ({e}), so no model call was made",
                    b.period, self.agent.name
                ),
            ))),
        }
    }

    /// Model calls until a final answer, a failure, the step limit or the
    /// budget; sets the run's status, output and error; returns the steps.
    /// `opening` are steps recorded before the first model call (MCP servers
    /// that could not be listed).
    async fn go(
        &self,
        run: &mut AgentRunRecord,
        opening: Vec<AgentStepRecord>,
    ) -> Vec<AgentStepRecord> {
        let mut steps: Vec<AgentStepRecord> = opening;
        for (i, s) in steps.iter_mut().enumerate() {
            s.run_id = run.id.clone();
            s.seq = i as i64 + 1;
        }
        let mut messages = vec![ChatMessage::user(run.input.clone())];
        let defs = self.definitions();
        let mut model_calls = 0;
        // How many messages earlier model steps' traces already hold: each
        // step keeps only what is new to it, not the whole conversation again.
        let mut traced = 0;
        loop {
            if model_calls >= self.agent.max_steps {
                run.status = "max_steps".into();
                run.error_code = Some("MAX_STEPS".into());
                run.error = Some(format!(
                    "stopped after {} model calls without a final answer (max_steps)",
                    self.agent.max_steps
                ));
                return steps;
            }
            model_calls += 1;
            let mut req = ChatRequest::new(self.version.model.clone(), "")
                .max_tokens(self.max_tokens.clamp(1, i64::from(u32::MAX)) as u32)
                .temperature(self.temperature as f32)
                .tools(defs.clone());
            req.messages = messages.clone();
            if !self.version.system_prompt.is_empty() {
                req.system = Some(self.version.system_prompt.clone());
            }
            let seq = steps.len() as i64 + 1;
            let hold = match &self.agent.budget {
                Some(b) => match self.reserve(b, &run.id, &req).await {
                    Ok(hold) => Some(hold),
                    Err(refused) => {
                        let refused = *refused;
                        steps.push(AgentStepRecord {
                            run_id: run.id.clone(),
                            seq,
                            kind: "model".into(),
                            name: self.version.model.clone(),
                            status: "error".into(),
                            provider: Some(self.provider_kind.as_str().into()),
                            model: Some(self.version.model.clone()),
                            call_id: None,
                            input: json!({"messages_total": req.messages.len()}),
                            output: json!({"refused": refused.details}),
                            error: Some(refused.message.clone()),
                            input_tokens: 0,
                            output_tokens: 0,
                            cost_micro_usd: 0,
                            latency_ms: 0,
                            started_at: now_ms(),
                        });
                        run.status = if refused.code == "AGENT_BUDGET_EXCEEDED" {
                            "budget_exceeded".into()
                        } else {
                            "failed".into()
                        };
                        run.error_code = Some(refused.code.to_string());
                        run.error = Some(format!(
                            "stopped before the next model call: {}",
                            refused.message
                        ));
                        return steps;
                    }
                },
                None => None,
            };
            let started = now_ms();
            let clock = Instant::now();
            let answer = self.client.complete(&req).await;
            let latency_ms = clock.elapsed().as_millis() as i64;
            let input = json!({"system": if traced == 0 { req.system.clone() } else { None },
                               "new_messages": &req.messages[traced..],
                               "messages_total": req.messages.len(),
                               "tools": defs.iter().map(|d| d.name.clone()).collect::<Vec<_>>()});
            traced = req.messages.len();
            let c = match answer {
                Ok(c) => c,
                Err(e) => {
                    if let Some(hold) = hold {
                        hold.release().await;
                    }
                    steps.push(AgentStepRecord {
                        run_id: run.id.clone(),
                        seq,
                        kind: "model".into(),
                        name: self.version.model.clone(),
                        status: "error".into(),
                        provider: Some(self.provider_kind.as_str().into()),
                        model: Some(self.version.model.clone()),
                        call_id: None,
                        input,
                        output: Value::Null,
                        error: Some(e.to_string()),
                        input_tokens: 0,
                        output_tokens: 0,
                        cost_micro_usd: 0,
                        latency_ms,
                        started_at: started,
                    });
                    run.status = "failed".into();
                    run.error_code = Some(crate::ai::error_code(&e).into());
                    run.error = Some(format!("the model call failed: {e}"));
                    return steps;
                }
            };
            let priced = self
                .prices
                .cost(&c.model, &c.usage)
                .or_else(|| self.prices.cost(&self.version.model, &c.usage));
            steps.push(AgentStepRecord {
                run_id: run.id.clone(),
                seq,
                kind: "model".into(),
                name: self.version.model.clone(),
                status: "ok".into(),
                provider: Some(self.provider_kind.as_str().into()),
                model: Some(c.model.clone()),
                call_id: None,
                input,
                output: json!({"text": c.text, "tool_calls": c.tool_calls,
                               "finish_reason": c.finish_reason, "response_id": c.response_id,
                               "priced": priced.is_some()}),
                error: None,
                input_tokens: c.usage.input_tokens as i64,
                output_tokens: c.usage.output_tokens as i64,
                cost_micro_usd: priced.unwrap_or(0).min(i64::MAX as u64) as i64,
                latency_ms,
                started_at: started,
            });
            if let Some(hold) = hold {
                let sum = |f: fn(&AgentStepRecord) -> i64| steps.iter().map(f).sum::<i64>();
                hold.settle(
                    &run.id,
                    sum(|s| s.input_tokens),
                    sum(|s| s.output_tokens),
                    sum(|s| s.cost_micro_usd),
                )
                .await;
            }
            if c.tool_calls.is_empty() {
                run.status = "succeeded".into();
                run.output = Some(c.text);
                return steps;
            }
            let mut results = Vec::with_capacity(c.tool_calls.len());
            for call in &c.tool_calls {
                let seq = steps.len() as i64 + 1;
                let done = self.call_tool(&run.id, seq, call).await;
                results.push(done.result);
                steps.push(done.step);
            }
            messages.push(ChatMessage::assistant_calls(c.text, c.tool_calls));
            messages.push(ChatMessage::tool_results(results));
        }
    }

    /// Checks a call the model asked for and, when it is sound, makes it.
    async fn call_tool(&self, run_id: &str, seq: i64, call: &ToolCall) -> Called {
        let started = now_ms();
        let clock = Instant::now();
        let (status, output, error) = match self.checked(call) {
            Err(why) => ("error", Value::Null, Some(why)),
            Ok((tool, args)) => match self.send(tool, &args).await {
                Ok(out) => ("ok", out, None),
                Err((out, why)) => ("error", out, Some(why)),
            },
        };
        let input = match serde_json::from_str::<Value>(&call.arguments) {
            Ok(v) => json!({"arguments": v}),
            Err(_) => json!({"arguments_text": crate::ai::clip(&call.arguments, 4000)}),
        };
        let content = match &error {
            Some(e) => format!("error: {e}"),
            None => output
                .get("body")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
        };
        Called {
            result: ToolResult {
                call_id: call.id.clone(),
                name: call.name.clone(),
                content,
                is_error: error.is_some(),
            },
            step: AgentStepRecord {
                run_id: run_id.to_string(),
                seq,
                kind: "tool".into(),
                name: call.name.clone(),
                status: status.into(),
                provider: None,
                model: None,
                call_id: Some(call.id.clone()),
                input,
                output,
                error,
                input_tokens: 0,
                output_tokens: 0,
                cost_micro_usd: 0,
                latency_ms: clock.elapsed().as_millis() as i64,
                started_at: started,
            },
        }
    }

    /// The tool and its parsed arguments, or why the call is refused.
    fn checked(&self, call: &ToolCall) -> Result<(&ReadyTool, Value), String> {
        let Some(tool) = self.tools.get(&call.name) else {
            if let Some((server, tool)) = crate::mcp::split_model_name(&call.name) {
                if self.mcp.servers.contains_key(server) {
                    return Err(refusal(server, tool));
                }
            }
            let mut names: Vec<&str> = self.tools.keys().map(String::as_str).collect();
            names.sort_unstable();
            return Err(format!(
                "the agent has no tool named {:?} (its tools: {})",
                crate::ai::clip(&call.name, 100),
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                }
            ));
        };
        let args: Value = serde_json::from_str(&call.arguments).map_err(|e| {
            format!(
                "the arguments of {} are not JSON ({e}); the tool was not called",
                call.name
            )
        })?;
        if !args.is_object() {
            return Err(format!(
                "the arguments of {} must be a JSON object; the tool was not called",
                call.name
            ));
        }
        let errors: Vec<String> = tool
            .schema
            .iter_errors(&args)
            .take(10)
            .map(|e| {
                let at = e.instance_path().to_string();
                format!("{}: {e}", if at.is_empty() { "/" } else { at.as_str() })
            })
            .collect();
        if !errors.is_empty() {
            return Err(format!(
                "the arguments of {} do not match its input schema ({}); the tool was not called",
                call.name,
                errors.join("; ")
            ));
        }
        Ok((tool, args))
    }

    /// Calls the tool's endpoint: the arguments as a JSON body (as query
    /// parameters for GET and DELETE), its headers opened for the call.
    async fn send(&self, tool: &ReadyTool, args: &Value) -> Result<Value, (Value, String)> {
        let t = match &tool.target {
            Target::Http(record) => record,
            Target::Mcp { server, tool } => {
                return self.mcp.call(self.state, server, tool, args).await
            }
        };
        let allow = self.state.settings().webhooks.allow_private_targets;
        crate::webhooks::check_before_send(&t.url, allow).map_err(|e| (Value::Null, e))?;
        let method = reqwest::Method::from_bytes(t.method.as_bytes())
            .map_err(|_| (Value::Null, format!("method {} is not valid", t.method)))?;
        let mut req = self
            .state
            .http
            .request(method.clone(), &t.url)
            .timeout(Duration::from_millis(t.timeout_ms.max(1) as u64))
            .header(
                "user-agent",
                concat!("fleetgate-agents/", env!("CARGO_PKG_VERSION")),
            );
        for (name, sealed) in &t.headers {
            match self.state.secrets.open(sealed) {
                Ok(v) => req = req.header(name.as_str(), v),
                Err(e) => return Err((Value::Null, format!("header {name} unreadable: {e}"))),
            }
        }
        req = if method == reqwest::Method::GET || method == reqwest::Method::DELETE {
            let pairs: Vec<(String, String)> = args
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| {
                    let v = match v {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    (k.clone(), v)
                })
                .collect();
            req.query(&pairs)
        } else {
            req.json(args)
        };
        let res = req.send().await.map_err(|e| {
            let why = if e.is_timeout() {
                format!("the tool did not answer within {} ms", t.timeout_ms)
            } else {
                let mut text = format!("the tool could not be reached: {e}");
                let mut cause = std::error::Error::source(&e);
                while let Some(c) = cause {
                    text.push_str(&format!(": {c}"));
                    cause = c.source();
                }
                text
            };
            (Value::Null, why)
        })?;
        let status = res.status();
        let body = read_clipped(res).await;
        let out = json!({"status": status.as_u16(), "body": body});
        if status.is_success() {
            Ok(out)
        } else {
            Err((
                out,
                format!(
                    "the tool answered {status}: {}",
                    crate::ai::clip(&body, 500)
                ),
            ))
        }
    }
}

/// A response body as text, at most [`MAX_TOOL_OUTPUT`] bytes of it.
async fn read_clipped(mut res: reqwest::Response) -> String {
    let mut buf = Vec::new();
    while let Ok(Some(chunk)) = res.chunk().await {
        let room = MAX_TOOL_OUTPUT - buf.len();
        buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if buf.len() >= MAX_TOOL_OUTPUT {
            break;
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// When a schedule is due next after `after` (ms): the interval added, or the
/// cron expression's next time (UTC). `None` when the expression has no next time.
pub fn next_due(s: &AgentScheduleRecord, after: i64) -> Option<i64> {
    if let Some(every) = s.interval_ms {
        return Some(after + every.max(1));
    }
    let cron = parse_cron(s.cron.as_deref()?).ok()?;
    let from = Utc.timestamp_millis_opt(after).single()?;
    cron.find_next_occurrence(&from, false)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// A cron expression of 5 fields (or 6, seconds first).
pub fn parse_cron(expr: &str) -> Result<croner::Cron, String> {
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Optional)
        .build()
        .parse(expr)
        .map_err(|e| e.to_string())
}

/// The actor of a scheduled run.
fn schedule_actor(s: &AgentScheduleRecord) -> Actor {
    Actor {
        name: format!("schedule:{}", s.id),
        ..Actor::system()
    }
}

/// Runs the due schedules every `tick` until shutdown. Each replica runs this;
/// a schedule's claim (a compare-and-set on its next time) lets one replica
/// run it.
pub fn spawn_scheduler(state: AppState, tick: Duration, mut shutdown: watch::Receiver<bool>) {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(tick);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = every.tick() => {}
                _ = shutdown.changed() => return,
            }
            if *shutdown.borrow() {
                return;
            }
            if let Err(e) = run_due(&state).await {
                tracing::warn!(error = %e, "agent schedules: a pass failed");
            }
        }
    });
}

/// One pass: claims each due schedule and starts its run.
pub async fn run_due(state: &AppState) -> Result<(), fleetgate_store::StoreError> {
    let now = now_ms();
    for s in state.store.due_agent_schedules(now, 50).await? {
        let Some(expected) = s.next_run_at else {
            continue;
        };
        // Missed times are skipped: the next one is after now.
        let next = next_due(&s, expected.max(now));
        if !state
            .store
            .claim_agent_schedule(&s.id, expected, next, now)
            .await?
        {
            continue;
        }
        let state = state.clone();
        tokio::spawn(async move {
            let agent = match state.store.get_ai_agent(&s.agent_id).await {
                Ok(Some(a)) => a,
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(schedule = %s.id, error = %e, "agent schedule: the agent could not be read");
                    return;
                }
            };
            let start = RunStart {
                input: s.input.clone(),
                run_key: s.run_key.clone(),
                trigger: "schedule",
                schedule_id: Some(s.id.clone()),
                may_test: false,
            };
            let (run_id, status) = match run(&state, &schedule_actor(&s), &agent, start).await {
                Ok((r, _)) => (r.id, r.status),
                Err(e) => (String::new(), format!("refused: {}", e.message)),
            };
            if let Err(e) = state
                .store
                .record_agent_schedule_run(&s.id, &run_id, &crate::ai::clip(&status, 500))
                .await
            {
                tracing::warn!(schedule = %s.id, error = %e, "agent schedule: the outcome was not recorded");
            }
        });
    }
    Ok(())
}

/// `gen_ai.system` of a provider kind, as the semantic conventions spell it.
fn gen_ai_system(kind: &str) -> &str {
    match kind {
        "openai" | "openai_compatible" => "openai",
        "anthropic" => "anthropic",
        "gemini" => "gcp.gemini",
        other => other,
    }
}

fn attr(key: &str, v: Value) -> Value {
    let value = match v {
        Value::String(s) => json!({"stringValue": s}),
        Value::Bool(b) => json!({"boolValue": b}),
        Value::Number(n) if n.is_i64() || n.is_u64() => json!({"intValue": n.to_string()}),
        Value::Number(n) => json!({"doubleValue": n}),
        Value::Array(items) => {
            json!({"arrayValue": {"values": items.into_iter().map(|i| match i {
                Value::String(s) => json!({"stringValue": s}),
                other => json!({"stringValue": other.to_string()}),
            }).collect::<Vec<_>>()}})
        }
        other => json!({"stringValue": other.to_string()}),
    };
    json!({"key": key, "value": value})
}

/// 16 hex digits of a span id made from the run and a step number.
fn span_id(run_id: &str, n: i64) -> String {
    let h = Sha256::digest(format!("{run_id}/{n}").as_bytes());
    hex::encode(&h[..8])
}

fn nanos(ms: i64) -> String {
    (i128::from(ms) * 1_000_000).to_string()
}

/// The run as OTLP-JSON (`resourceSpans`): a root `invoke_agent` span and one
/// child per step (`chat` for model calls, `execute_tool` for tool calls), with
/// the OpenTelemetry GenAI semantic-convention attribute names.
pub fn otel_trace(agent: &AiAgentRecord, run: &AgentRunRecord, steps: &[AgentStepRecord]) -> Value {
    let trace_id = hex::encode(&Sha256::digest(run.id.as_bytes())[..16]);
    let root = span_id(&run.id, 0);
    let end = run.finished_at.unwrap_or(run.started_at);
    let status = |ok: bool, message: Option<&str>| {
        if ok {
            json!({"code": 1})
        } else {
            json!({"code": 2, "message": message.unwrap_or("error")})
        }
    };
    let mut spans = vec![json!({
        "traceId": trace_id,
        "spanId": root,
        "name": format!("invoke_agent {}", agent.name),
        "kind": 1,
        "startTimeUnixNano": nanos(run.started_at),
        "endTimeUnixNano": nanos(end),
        "attributes": [
            attr("gen_ai.operation.name", json!("invoke_agent")),
            attr("gen_ai.agent.id", json!(agent.id)),
            attr("gen_ai.agent.name", json!(agent.name)),
            attr("gen_ai.conversation.id", json!(run.id)),
            attr("gen_ai.usage.input_tokens", json!(run.input_tokens)),
            attr("gen_ai.usage.output_tokens", json!(run.output_tokens)),
            attr("fleetgate.agent.version", json!(run.agent_version)),
            attr("fleetgate.run.status", json!(run.status)),
            attr("fleetgate.cost.micro_usd", json!(run.cost_micro_usd)),
        ],
        "status": status(run.status == "succeeded", run.error.as_deref()),
    })];
    for s in steps {
        let mut attrs = Vec::new();
        let name = if s.kind == "model" {
            attrs.push(attr("gen_ai.operation.name", json!("chat")));
            attrs.push(attr(
                "gen_ai.system",
                json!(gen_ai_system(s.provider.as_deref().unwrap_or(""))),
            ));
            attrs.push(attr("gen_ai.request.model", json!(s.name)));
            if let Some(m) = &s.model {
                attrs.push(attr("gen_ai.response.model", json!(m)));
            }
            if let Some(r) = s.output.get("finish_reason").and_then(Value::as_str) {
                attrs.push(attr("gen_ai.response.finish_reasons", json!([r])));
            }
            if let Some(id) = s.output.get("response_id").and_then(Value::as_str) {
                attrs.push(attr("gen_ai.response.id", json!(id)));
            }
            attrs.push(attr("gen_ai.usage.input_tokens", json!(s.input_tokens)));
            attrs.push(attr("gen_ai.usage.output_tokens", json!(s.output_tokens)));
            format!("chat {}", s.name)
        } else {
            attrs.push(attr("gen_ai.operation.name", json!("execute_tool")));
            attrs.push(attr("gen_ai.tool.name", json!(s.name)));
            attrs.push(attr("gen_ai.tool.type", json!("extension")));
            if let Some(id) = &s.call_id {
                attrs.push(attr("gen_ai.tool.call.id", json!(id)));
            }
            if let Some(server) = s.output.get("mcp_server").and_then(Value::as_str) {
                attrs.push(attr("fleetgate.mcp.server", json!(server)));
            }
            format!("execute_tool {}", s.name)
        };
        attrs.push(attr("fleetgate.cost.micro_usd", json!(s.cost_micro_usd)));
        if let Some(e) = &s.error {
            attrs.push(attr("error.type", json!(crate::ai::clip(e, 200))));
        }
        spans.push(json!({
            "traceId": trace_id,
            "spanId": span_id(&run.id, s.seq),
            "parentSpanId": root,
            "name": name,
            "kind": 3,
            "startTimeUnixNano": nanos(s.started_at),
            "endTimeUnixNano": nanos(s.started_at + s.latency_ms),
            "attributes": attrs,
            "status": status(s.status == "ok", s.error.as_deref()),
        }));
    }
    json!({"resourceSpans": [{
        "resource": {"attributes": [attr("service.name", json!("fleetgate"))]},
        "scopeSpans": [{"scope": {"name": "fleetgate.agents", "version": env!("CARGO_PKG_VERSION")},
                        "spans": spans}],
    }]})
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetgate_store::AgentSplit;

    fn agent(split: Option<AgentSplit>) -> AiAgentRecord {
        AiAgentRecord {
            id: "a1".into(),
            name: "n".into(),
            description: String::new(),
            tags: Vec::new(),
            status: "active".into(),
            promoted_version: 3,
            latest_version: 4,
            promotions: vec![1, 3],
            split,
            budget: None,
            max_steps: 5,
            version: 1,
            created_at: 0,
            updated_at: 0,
        }
    }

    #[test]
    fn transitions() {
        for (from, to) in [
            ("draft", "testing"),
            ("testing", "active"),
            ("active", "suspended"),
            ("suspended", "active"),
            ("active", "archived"),
        ] {
            assert!(check_transition(from, to).is_ok(), "{from} -> {to}");
        }
        for (from, to) in [
            ("draft", "active"),
            ("archived", "active"),
            ("active", "draft"),
            ("suspended", "testing"),
        ] {
            let e = check_transition(from, to).expect_err("illegal");
            assert_eq!(e.status, StatusCode::CONFLICT);
            assert!(e.message.contains(from) && e.message.contains(to));
        }
    }

    #[test]
    fn split_is_deterministic_by_key() {
        assert_eq!(choose_version(&agent(None), Some("k")), (3, None));
        let a = agent(Some(AgentSplit {
            a: 3,
            b: 4,
            percent_b: 30,
        }));
        let mut b = 0;
        for i in 0..2000 {
            let key = format!("user-{i}");
            let first = choose_version(&a, Some(&key));
            assert_eq!(first, choose_version(&a, Some(&key)));
            if first.0 == 4 {
                b += 1;
            }
        }
        assert!((500..700).contains(&b), "{b} of 2000 went to b");
    }

    #[test]
    fn periods() {
        // 2026-12-09 (a Wednesday) 15:00 UTC.
        let t = Utc
            .with_ymd_and_hms(2026, 12, 9, 15, 0, 0)
            .single()
            .expect("time")
            .timestamp_millis();
        let at = |y, m, d| {
            Utc.with_ymd_and_hms(y, m, d, 0, 0, 0)
                .single()
                .expect("time")
                .timestamp_millis()
        };
        assert_eq!(period_bounds("day", t), (at(2026, 12, 9), at(2026, 12, 10)));
        assert_eq!(
            period_bounds("week", t),
            (at(2026, 12, 7), at(2026, 12, 14))
        );
        assert_eq!(period_bounds("month", t), (at(2026, 12, 1), at(2027, 1, 1)));
    }

    #[test]
    fn cron_and_interval_next_times() {
        let mut s = AgentScheduleRecord {
            id: "s".into(),
            agent_id: "a".into(),
            cron: None,
            interval_ms: Some(1000),
            input: String::new(),
            run_key: None,
            enabled: true,
            next_run_at: None,
            last_run_at: None,
            last_run_id: None,
            last_status: None,
            version: 1,
            created_at: 0,
            updated_at: 0,
        };
        assert_eq!(next_due(&s, 5000), Some(6000));
        s.interval_ms = None;
        s.cron = Some("*/15 * * * *".into());
        let t = Utc
            .with_ymd_and_hms(2026, 12, 9, 15, 1, 0)
            .single()
            .expect("t")
            .timestamp_millis();
        assert_eq!(next_due(&s, t), Some(t + 14 * 60_000));
        assert!(parse_cron("not a cron").is_err());
        assert!(parse_cron("0 */5 * * * *").is_ok());
    }
}
