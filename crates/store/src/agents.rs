//! AI agents: the agent, its immutable versions, the HTTP tools and MCP
//! servers agents call, runs with their step traces, and schedules.
//!
//! An agent's versioned fields (provider, model, system prompt, tools) live in
//! [`AgentVersionRecord`]s that are never changed once written; the agent row
//! says which version is promoted and keeps the promotions in order, so that a
//! rollback goes back to the one promoted before. Version numbers are given
//! here, under the agent's row lock, so two concurrent edits never take the
//! same number. A tool's header values arrive sealed by the manager and are
//! never written to the audit log. Schedules are claimed by a compare-and-set
//! on `next_run_at`: of several replicas that see one schedule due, exactly
//! one moves it on and runs it.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::sql::{check_version, SqlStore};
use crate::{Actor, AuditEvent, Page, PageRequest, Result, StoreError};

/// Traffic split between two versions of an agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentSplit {
    pub a: i64,
    pub b: i64,
    /// Share of runs served by `b`, 0 to 100.
    pub percent_b: i64,
}

/// A spending limit per period (`day`, `week` or `month`, calendar periods in UTC).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentBudget {
    pub period: String,
    pub limit_micro_usd: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AiAgentRecord {
    pub id: String,
    /// Unique among agents.
    pub name: String,
    pub description: String,
    pub tags: Vec<String>,
    /// `draft`, `testing`, `active`, `suspended` or `archived`.
    pub status: String,
    /// The version runs get (unless a split says otherwise).
    pub promoted_version: i64,
    /// The newest version.
    pub latest_version: i64,
    /// Every promotion in order, the current one last (a rollback pops it).
    pub promotions: Vec<i64>,
    pub split: Option<AgentSplit>,
    pub budget: Option<AgentBudget>,
    /// Most model calls of one run.
    pub max_steps: i64,
    pub version: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

impl AiAgentRecord {
    fn audit_view(&self) -> Value {
        json!({"id": self.id, "name": self.name, "description": self.description, "tags": self.tags,
               "status": self.status, "promoted_version": self.promoted_version,
               "latest_version": self.latest_version, "split": self.split, "budget": self.budget,
               "max_steps": self.max_steps})
    }
}

/// One immutable version of an agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentVersionRecord {
    pub agent_id: String,
    /// Given by the store (1 for the first).
    pub number: i64,
    /// The provider asked (none: the default provider).
    pub provider_id: Option<String>,
    pub model: String,
    pub system_prompt: String,
    /// Names of the tools the agent may call.
    pub tools: Vec<String>,
    pub created_by: String,
    pub created_at: i64,
}

impl AgentVersionRecord {
    fn audit_view(&self) -> Value {
        json!({"number": self.number, "provider_id": self.provider_id, "model": self.model,
               "system_prompt": self.system_prompt, "tools": self.tools})
    }
}

/// An HTTP endpoint an agent may call as a tool.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentToolRecord {
    pub id: String,
    /// Unique; what the model calls it by.
    pub name: String,
    pub description: String,
    pub url: String,
    /// `GET`, `POST`, `PUT`, `PATCH` or `DELETE`.
    pub method: String,
    /// JSON schema of the arguments.
    pub input_schema: Value,
    pub timeout_ms: i64,
    /// Header names and their values sealed by the manager.
    pub headers: Vec<(String, String)>,
    pub version: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

impl AgentToolRecord {
    /// Header names only: the values are secrets.
    fn audit_view(&self) -> Value {
        let names: Vec<&str> = self.headers.iter().map(|(k, _)| k.as_str()).collect();
        json!({"id": self.id, "name": self.name, "description": self.description, "url": self.url,
               "method": self.method, "input_schema": self.input_schema,
               "timeout_ms": self.timeout_ms, "header_names": names})
    }
}

/// An MCP server agents may use as a tool source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McpServerRecord {
    pub id: String,
    /// Unique; agents name its tools `mcp:<name>/<tool>`.
    pub name: String,
    pub description: String,
    /// `stdio` or `http`.
    pub transport: String,
    /// The command started (stdio; empty for http).
    pub command: String,
    pub args: Vec<String>,
    /// Environment variable names and their values sealed by the manager (stdio).
    pub env: Vec<(String, String)>,
    /// The streamable-HTTP endpoint (http; empty for stdio).
    pub url: String,
    /// Header names and their values sealed by the manager (http).
    pub headers: Vec<(String, String)>,
    /// Tool-name patterns allowed (`*` matches any run of characters).
    pub allow: Vec<String>,
    /// Tool-name patterns denied; a deny wins over an allow.
    pub deny: Vec<String>,
    /// The most a connection or one call may take.
    pub timeout_ms: i64,
    pub version: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

impl McpServerRecord {
    /// Environment and header names only: their values are secrets.
    fn audit_view(&self) -> Value {
        let env: Vec<&str> = self.env.iter().map(|(k, _)| k.as_str()).collect();
        let headers: Vec<&str> = self.headers.iter().map(|(k, _)| k.as_str()).collect();
        json!({"id": self.id, "name": self.name, "description": self.description,
               "transport": self.transport, "command": self.command, "args": self.args,
               "env_names": env, "url": self.url, "header_names": headers,
               "allow": self.allow, "deny": self.deny, "timeout_ms": self.timeout_ms})
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentRunRecord {
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
    pub steps: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    /// The sum of its steps' costs.
    pub cost_micro_usd: i64,
    pub started_at: i64,
    pub finished_at: Option<i64>,
    pub created_by: String,
}

/// One step of a run: a model call or a tool call.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentStepRecord {
    pub run_id: String,
    /// 1, 2, … in the order they happened.
    pub seq: i64,
    /// `model` or `tool`.
    pub kind: String,
    /// The model asked, or the tool's name.
    pub name: String,
    /// `ok` or `error`.
    pub status: String,
    /// The provider kind of a model step.
    pub provider: Option<String>,
    /// The model that answered (model steps).
    pub model: Option<String>,
    /// The model's id of a tool call.
    pub call_id: Option<String>,
    pub input: Value,
    pub output: Value,
    pub error: Option<String>,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cost_micro_usd: i64,
    pub latency_ms: i64,
    pub started_at: i64,
}

/// A model call's hold on its agent's budget while the call is under way: the
/// call's worst-case cost, until it settles to the real cost or fails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentReservation {
    pub id: String,
    pub agent_id: String,
    /// The run making the call.
    pub run_id: String,
    pub amount_micro_usd: i64,
    pub created_at: i64,
    /// After this the call cannot still be running (its timeout and a
    /// grace): the reservation is counted no more and is reclaimed.
    pub expires_at: i64,
}

/// What [`AgentStore::reserve_agent_budget`] decided. `spent` is the period's
/// recorded spend and `reserved` what other calls' live reservations held, as
/// they were under the agent's lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentReserve {
    /// The reservation is held.
    Reserved { spent: i64, reserved: i64 },
    /// It does not fit under the limit: nothing is held.
    Refused { spent: i64, reserved: i64 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentScheduleRecord {
    pub id: String,
    pub agent_id: String,
    /// A cron expression (5 or 6 fields, UTC), or
    pub cron: Option<String>,
    /// a fixed interval.
    pub interval_ms: Option<i64>,
    /// The input of each run it starts.
    pub input: String,
    pub run_key: Option<String>,
    pub enabled: bool,
    /// When it is due next (none: never again).
    pub next_run_at: Option<i64>,
    pub last_run_at: Option<i64>,
    pub last_run_id: Option<String>,
    pub last_status: Option<String>,
    pub version: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

impl AgentScheduleRecord {
    fn audit_view(&self) -> Value {
        json!({"id": self.id, "agent_id": self.agent_id, "cron": self.cron,
               "interval_ms": self.interval_ms, "input": self.input, "run_key": self.run_key,
               "enabled": self.enabled})
    }
}

#[async_trait]
pub trait AgentStore: Send + Sync {
    /// Saves a new agent and its first version (numbered 1 here, promoted).
    /// [`StoreError::Conflict`] when the name is taken.
    async fn create_ai_agent(
        &self,
        actor: &Actor,
        agent: &AiAgentRecord,
        first: &AgentVersionRecord,
    ) -> Result<AiAgentRecord>;
    async fn get_ai_agent(&self, id: &str) -> Result<Option<AiAgentRecord>>;
    /// Agents by name.
    async fn list_ai_agents(&self, page: PageRequest) -> Result<Page<AiAgentRecord>>;
    /// Saves the agent's fields (the version goes up by one), audited as
    /// `action`. With `new_version`, that version is added with the next
    /// number, and promoted when `promote` is set. `expected_version` is
    /// checked under the row lock.
    async fn update_ai_agent(
        &self,
        actor: &Actor,
        action: &str,
        agent: &AiAgentRecord,
        new_version: Option<&AgentVersionRecord>,
        promote: bool,
        expected_version: Option<i64>,
    ) -> Result<AiAgentRecord>;
    /// Removes the agent with its versions, schedules, runs and steps.
    async fn delete_ai_agent(&self, actor: &Actor, id: &str) -> Result<AiAgentRecord>;
    /// Its versions, oldest first.
    async fn list_ai_agent_versions(&self, agent_id: &str) -> Result<Vec<AgentVersionRecord>>;
    async fn get_ai_agent_version(
        &self,
        agent_id: &str,
        number: i64,
    ) -> Result<Option<AgentVersionRecord>>;

    /// [`StoreError::Conflict`] when the name is taken.
    async fn create_agent_tool(&self, actor: &Actor, tool: &AgentToolRecord) -> Result<()>;
    async fn get_agent_tool(&self, id: &str) -> Result<Option<AgentToolRecord>>;
    async fn get_agent_tool_by_name(&self, name: &str) -> Result<Option<AgentToolRecord>>;
    /// Every tool, by name.
    async fn list_agent_tools(&self) -> Result<Vec<AgentToolRecord>>;
    async fn update_agent_tool(
        &self,
        actor: &Actor,
        tool: &AgentToolRecord,
        expected_version: Option<i64>,
    ) -> Result<AgentToolRecord>;
    async fn delete_agent_tool(&self, actor: &Actor, id: &str) -> Result<AgentToolRecord>;

    /// [`StoreError::Conflict`] when the name is taken.
    async fn create_mcp_server(&self, actor: &Actor, server: &McpServerRecord) -> Result<()>;
    async fn get_mcp_server(&self, id: &str) -> Result<Option<McpServerRecord>>;
    async fn get_mcp_server_by_name(&self, name: &str) -> Result<Option<McpServerRecord>>;
    /// Every MCP server, by name.
    async fn list_mcp_servers(&self) -> Result<Vec<McpServerRecord>>;
    /// Saves its fields (the version goes up by one); `expected_version` is
    /// checked under the row lock.
    async fn update_mcp_server(
        &self,
        actor: &Actor,
        server: &McpServerRecord,
        expected_version: Option<i64>,
    ) -> Result<McpServerRecord>;
    async fn delete_mcp_server(&self, actor: &Actor, id: &str) -> Result<McpServerRecord>;

    /// Records a run as started (audited: who ran which agent with what input).
    async fn start_agent_run(&self, actor: &Actor, run: &AgentRunRecord) -> Result<()>;
    /// Notes a running run's cost and tokens so far, so that the agent's spend
    /// ([`AgentStore::agent_spend_since`]) counts runs still under way.
    async fn record_agent_run_progress(
        &self,
        run_id: &str,
        input_tokens: i64,
        output_tokens: i64,
        cost_micro_usd: i64,
    ) -> Result<()>;
    /// Writes the run's outcome and all its steps in one transaction.
    async fn finish_agent_run(&self, run: &AgentRunRecord, steps: &[AgentStepRecord])
        -> Result<()>;
    /// A run and its steps in order.
    async fn get_agent_run(
        &self,
        id: &str,
    ) -> Result<Option<(AgentRunRecord, Vec<AgentStepRecord>)>>;
    /// An agent's runs, newest first.
    async fn list_agent_runs(
        &self,
        agent_id: &str,
        page: PageRequest,
    ) -> Result<Page<AgentRunRecord>>;
    /// The cost of the agent's runs started at or after `since`, in micro-USD.
    async fn agent_spend_since(&self, agent_id: &str, since: i64) -> Result<i64>;
    /// Holds `r.amount_micro_usd` of the agent's budget for one model call,
    /// only if the spend of runs started at or after `since`, plus every live
    /// reservation of the agent (`expires_at` after `r.created_at`), plus it
    /// is at most `limit_micro_usd`. Decided under the agent's row lock, so
    /// replicas sharing the store never hold more than the limit together;
    /// expired reservations of the agent are deleted on the way.
    /// [`StoreError::NotFound`] when the agent does not exist.
    async fn reserve_agent_budget(
        &self,
        r: &AgentReservation,
        since: i64,
        limit_micro_usd: i64,
    ) -> Result<AgentReserve>;
    /// Settles a reservation: notes the running run's cost and tokens so far
    /// (as [`AgentStore::record_agent_run_progress`]) and deletes the
    /// reservation, in one transaction: the call's cost is never counted
    /// twice, nor missed, by a reservation deciding meanwhile.
    /// `false` when the reservation was no longer there (reclaimed).
    async fn settle_agent_reservation(
        &self,
        reservation_id: &str,
        run_id: &str,
        input_tokens: i64,
        output_tokens: i64,
        cost_micro_usd: i64,
    ) -> Result<bool>;
    /// Deletes a reservation whose call failed; `false` when it was gone.
    async fn release_agent_reservation(&self, reservation_id: &str) -> Result<bool>;
    /// What the agent's live reservations (`expires_at` after `now`) hold.
    async fn agent_reserved(&self, agent_id: &str, now: i64) -> Result<i64>;

    async fn create_agent_schedule(&self, actor: &Actor, s: &AgentScheduleRecord) -> Result<()>;
    async fn get_agent_schedule(&self, id: &str) -> Result<Option<AgentScheduleRecord>>;
    /// An agent's schedules, oldest first.
    async fn list_agent_schedules(&self, agent_id: &str) -> Result<Vec<AgentScheduleRecord>>;
    /// Saves a schedule's definition and next time (the version goes up by
    /// one); its last run is kept.
    async fn update_agent_schedule(
        &self,
        actor: &Actor,
        s: &AgentScheduleRecord,
        expected_version: Option<i64>,
    ) -> Result<AgentScheduleRecord>;
    async fn delete_agent_schedule(&self, actor: &Actor, id: &str) -> Result<AgentScheduleRecord>;
    /// Enabled schedules due at `now`, most overdue first.
    async fn due_agent_schedules(&self, now: i64, limit: i64) -> Result<Vec<AgentScheduleRecord>>;
    /// Moves a due schedule from `expected_next` to `next` and marks it run at
    /// `now`; `true` for the one caller that did it, `false` when another
    /// replica claimed it first.
    async fn claim_agent_schedule(
        &self,
        id: &str,
        expected_next: i64,
        next: Option<i64>,
        now: i64,
    ) -> Result<bool>;
    /// Notes the run a schedule started and how it ended.
    async fn record_agent_schedule_run(&self, id: &str, run_id: &str, status: &str) -> Result<()>;
}

fn corrupt(e: serde_json::Error) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

fn to_json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

fn opt_json<T: Serialize>(v: &Option<T>) -> Option<String> {
    v.as_ref().map(to_json)
}

fn from_json<T: for<'de> Deserialize<'de>>(s: &str) -> Result<T> {
    serde_json::from_str(s).map_err(corrupt)
}

const AGENT_COLS: &str = "id, name, description, tags, status, promoted_version, latest_version, \
     promotions, split, budget, max_steps, version, created_at, updated_at";

fn agent_from_row(r: &AnyRow) -> Result<AiAgentRecord> {
    let tags: String = r.try_get("tags")?;
    let promotions: String = r.try_get("promotions")?;
    let split: Option<String> = r.try_get("split")?;
    let budget: Option<String> = r.try_get("budget")?;
    Ok(AiAgentRecord {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        description: r.try_get("description")?,
        tags: from_json(&tags)?,
        status: r.try_get("status")?,
        promoted_version: r.try_get("promoted_version")?,
        latest_version: r.try_get("latest_version")?,
        promotions: from_json(&promotions)?,
        split: split.as_deref().map(from_json).transpose()?,
        budget: budget.as_deref().map(from_json).transpose()?,
        max_steps: r.try_get("max_steps")?,
        version: r.try_get("version")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

type Query<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

/// Binds the agent's columns after `id`, in [`AGENT_COLS`] order.
fn bind_agent<'q>(q: Query<'q>, a: &AiAgentRecord) -> Query<'q> {
    q.bind(a.name.clone())
        .bind(a.description.clone())
        .bind(to_json(&a.tags))
        .bind(a.status.clone())
        .bind(a.promoted_version)
        .bind(a.latest_version)
        .bind(to_json(&a.promotions))
        .bind(opt_json(&a.split))
        .bind(opt_json(&a.budget))
        .bind(a.max_steps)
        .bind(a.version)
        .bind(a.created_at)
        .bind(a.updated_at)
}

const VERSION_COLS: &str =
    "agent_id, number, provider_id, model, system_prompt, tools, created_by, created_at";

fn version_from_row(r: &AnyRow) -> Result<AgentVersionRecord> {
    let tools: String = r.try_get("tools")?;
    Ok(AgentVersionRecord {
        agent_id: r.try_get("agent_id")?,
        number: r.try_get("number")?,
        provider_id: r.try_get("provider_id")?,
        model: r.try_get("model")?,
        system_prompt: r.try_get("system_prompt")?,
        tools: from_json(&tools)?,
        created_by: r.try_get("created_by")?,
        created_at: r.try_get("created_at")?,
    })
}

async fn insert_version(conn: &mut sqlx::AnyConnection, v: &AgentVersionRecord) -> Result<()> {
    sqlx::query(&format!(
        "INSERT INTO ai_agent_versions ({VERSION_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
    ))
    .bind(v.agent_id.clone())
    .bind(v.number)
    .bind(v.provider_id.clone())
    .bind(v.model.clone())
    .bind(v.system_prompt.clone())
    .bind(to_json(&v.tools))
    .bind(v.created_by.clone())
    .bind(v.created_at)
    .execute(conn)
    .await?;
    Ok(())
}

async fn locked_agent(conn: &mut sqlx::AnyConnection, id: &str) -> Result<AiAgentRecord> {
    // A no-op write takes the row's lock on PostgreSQL before it is read.
    sqlx::query("UPDATE ai_agents SET version = version WHERE id = $1")
        .bind(id.to_string())
        .execute(&mut *conn)
        .await?;
    sqlx::query(&format!("SELECT {AGENT_COLS} FROM ai_agents WHERE id = $1"))
        .bind(id.to_string())
        .fetch_optional(conn)
        .await?
        .as_ref()
        .map(agent_from_row)
        .transpose()?
        .ok_or_else(|| StoreError::NotFound(format!("agent {id}")))
}

fn agent_name_taken(e: sqlx::Error, name: &str) -> StoreError {
    if crate::sql::is_unique_violation(&e) {
        StoreError::Conflict(format!("an agent named {name:?} already exists"))
    } else {
        e.into()
    }
}

const TOOL_COLS: &str = "id, name, description, url, method, input_schema, timeout_ms, headers, \
     version, created_at, updated_at";

fn tool_from_row(r: &AnyRow) -> Result<AgentToolRecord> {
    let schema: String = r.try_get("input_schema")?;
    let headers: String = r.try_get("headers")?;
    Ok(AgentToolRecord {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        description: r.try_get("description")?,
        url: r.try_get("url")?,
        method: r.try_get("method")?,
        input_schema: from_json(&schema)?,
        timeout_ms: r.try_get("timeout_ms")?,
        headers: from_json(&headers)?,
        version: r.try_get("version")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

fn bind_tool<'q>(q: Query<'q>, t: &AgentToolRecord) -> Query<'q> {
    q.bind(t.name.clone())
        .bind(t.description.clone())
        .bind(t.url.clone())
        .bind(t.method.clone())
        .bind(t.input_schema.to_string())
        .bind(t.timeout_ms)
        .bind(to_json(&t.headers))
        .bind(t.version)
        .bind(t.created_at)
        .bind(t.updated_at)
}

fn tool_name_taken(e: sqlx::Error, name: &str) -> StoreError {
    if crate::sql::is_unique_violation(&e) {
        StoreError::Conflict(format!("a tool named {name:?} already exists"))
    } else {
        e.into()
    }
}

const MCP_COLS: &str = "id, name, description, transport, command, args, env, url, headers, \
     allow_tools, deny_tools, timeout_ms, version, created_at, updated_at";

fn mcp_from_row(r: &AnyRow) -> Result<McpServerRecord> {
    let text = |c: &str| -> Result<String> { Ok(r.try_get::<String, _>(c)?) };
    Ok(McpServerRecord {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        description: r.try_get("description")?,
        transport: r.try_get("transport")?,
        command: r.try_get("command")?,
        args: from_json(&text("args")?)?,
        env: from_json(&text("env")?)?,
        url: r.try_get("url")?,
        headers: from_json(&text("headers")?)?,
        allow: from_json(&text("allow_tools")?)?,
        deny: from_json(&text("deny_tools")?)?,
        timeout_ms: r.try_get("timeout_ms")?,
        version: r.try_get("version")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

/// Binds the server's columns after `id`, in [`MCP_COLS`] order.
fn bind_mcp<'q>(q: Query<'q>, m: &McpServerRecord) -> Query<'q> {
    q.bind(m.name.clone())
        .bind(m.description.clone())
        .bind(m.transport.clone())
        .bind(m.command.clone())
        .bind(to_json(&m.args))
        .bind(to_json(&m.env))
        .bind(m.url.clone())
        .bind(to_json(&m.headers))
        .bind(to_json(&m.allow))
        .bind(to_json(&m.deny))
        .bind(m.timeout_ms)
        .bind(m.version)
        .bind(m.created_at)
        .bind(m.updated_at)
}

fn mcp_name_taken(e: sqlx::Error, name: &str) -> StoreError {
    if crate::sql::is_unique_violation(&e) {
        StoreError::Conflict(format!("an MCP server named {name:?} already exists"))
    } else {
        e.into()
    }
}

async fn mcp_by_id(conn: &mut sqlx::AnyConnection, id: &str) -> Result<McpServerRecord> {
    sqlx::query(&format!(
        "SELECT {MCP_COLS} FROM ai_mcp_servers WHERE id = $1"
    ))
    .bind(id.to_string())
    .fetch_optional(conn)
    .await?
    .as_ref()
    .map(mcp_from_row)
    .transpose()?
    .ok_or_else(|| StoreError::NotFound(format!("MCP server {id}")))
}

const RUN_COLS: &str =
    "id, agent_id, agent_version, split_arm, run_key, trigger_kind, schedule_id, \
     status, input, output, error, error_code, steps, input_tokens, output_tokens, cost_micro_usd, \
     started_at, finished_at, created_by";

fn run_from_row(r: &AnyRow) -> Result<AgentRunRecord> {
    Ok(AgentRunRecord {
        id: r.try_get("id")?,
        agent_id: r.try_get("agent_id")?,
        agent_version: r.try_get("agent_version")?,
        split_arm: r.try_get("split_arm")?,
        run_key: r.try_get("run_key")?,
        trigger: r.try_get("trigger_kind")?,
        schedule_id: r.try_get("schedule_id")?,
        status: r.try_get("status")?,
        input: r.try_get("input")?,
        output: r.try_get("output")?,
        error: r.try_get("error")?,
        error_code: r.try_get("error_code")?,
        steps: r.try_get("steps")?,
        input_tokens: r.try_get("input_tokens")?,
        output_tokens: r.try_get("output_tokens")?,
        cost_micro_usd: r.try_get("cost_micro_usd")?,
        started_at: r.try_get("started_at")?,
        finished_at: r.try_get("finished_at")?,
        created_by: r.try_get("created_by")?,
    })
}

const STEP_COLS: &str =
    "run_id, seq, kind, name, status, provider, model, call_id, input, output, \
     error, input_tokens, output_tokens, cost_micro_usd, latency_ms, started_at";

fn step_from_row(r: &AnyRow) -> Result<AgentStepRecord> {
    let input: String = r.try_get("input")?;
    let output: String = r.try_get("output")?;
    Ok(AgentStepRecord {
        run_id: r.try_get("run_id")?,
        seq: r.try_get("seq")?,
        kind: r.try_get("kind")?,
        name: r.try_get("name")?,
        status: r.try_get("status")?,
        provider: r.try_get("provider")?,
        model: r.try_get("model")?,
        call_id: r.try_get("call_id")?,
        input: from_json(&input)?,
        output: from_json(&output)?,
        error: r.try_get("error")?,
        input_tokens: r.try_get("input_tokens")?,
        output_tokens: r.try_get("output_tokens")?,
        cost_micro_usd: r.try_get("cost_micro_usd")?,
        latency_ms: r.try_get("latency_ms")?,
        started_at: r.try_get("started_at")?,
    })
}

const SCHEDULE_COLS: &str =
    "id, agent_id, cron, interval_ms, input, run_key, enabled, next_run_at, \
     last_run_at, last_run_id, last_status, version, created_at, updated_at";

fn schedule_from_row(r: &AnyRow) -> Result<AgentScheduleRecord> {
    let enabled: i64 = r.try_get("enabled")?;
    Ok(AgentScheduleRecord {
        id: r.try_get("id")?,
        agent_id: r.try_get("agent_id")?,
        cron: r.try_get("cron")?,
        interval_ms: r.try_get("interval_ms")?,
        input: r.try_get("input")?,
        run_key: r.try_get("run_key")?,
        enabled: enabled != 0,
        next_run_at: r.try_get("next_run_at")?,
        last_run_at: r.try_get("last_run_at")?,
        last_run_id: r.try_get("last_run_id")?,
        last_status: r.try_get("last_status")?,
        version: r.try_get("version")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

fn marks(n: usize) -> String {
    (1..=n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `col = $1, col2 = $2, …` for the columns after the first of `cols`.
fn sets(cols: &str) -> (String, usize) {
    let parts: Vec<String> = cols
        .split(',')
        .skip(1)
        .enumerate()
        .map(|(i, c)| format!("{} = ${}", c.trim(), i + 1))
        .collect();
    let n = parts.len();
    (parts.join(", "), n)
}

#[async_trait]
impl AgentStore for SqlStore {
    async fn create_ai_agent(
        &self,
        actor: &Actor,
        agent: &AiAgentRecord,
        first: &AgentVersionRecord,
    ) -> Result<AiAgentRecord> {
        let agent = AiAgentRecord {
            promoted_version: 1,
            latest_version: 1,
            promotions: vec![1],
            ..agent.clone()
        };
        let first = AgentVersionRecord {
            agent_id: agent.id.clone(),
            number: 1,
            ..first.clone()
        };
        let mut tx = self.begin_audited().await?;
        let sql = format!(
            "INSERT INTO ai_agents ({AGENT_COLS}) VALUES ({})",
            marks(14)
        );
        bind_agent(sqlx::query(&sql).bind(agent.id.clone()), &agent)
            .execute(&mut *tx)
            .await
            .map_err(|e| agent_name_taken(e, &agent.name))?;
        insert_version(&mut tx, &first).await?;
        let mut after = agent.audit_view();
        after["version_1"] = first.audit_view();
        tx.commit(
            actor,
            &AuditEvent::new("agent.create", "agent", Some(&agent.id)).after(after),
        )
        .await?;
        Ok(agent)
    }

    async fn get_ai_agent(&self, id: &str) -> Result<Option<AiAgentRecord>> {
        sqlx::query(&format!("SELECT {AGENT_COLS} FROM ai_agents WHERE id = $1"))
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(agent_from_row)
            .transpose()
    }

    async fn list_ai_agents(&self, page: PageRequest) -> Result<Page<AiAgentRecord>> {
        let total = self.count("SELECT COUNT(*) FROM ai_agents", &[]).await?;
        let items = sqlx::query(&format!(
            "SELECT {AGENT_COLS} FROM ai_agents ORDER BY name, id LIMIT $1 OFFSET $2"
        ))
        .bind(page.limit)
        .bind(page.offset)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(agent_from_row)
        .collect::<Result<Vec<_>>>()?;
        Ok(Page { items, total })
    }

    async fn update_ai_agent(
        &self,
        actor: &Actor,
        action: &str,
        agent: &AiAgentRecord,
        new_version: Option<&AgentVersionRecord>,
        promote: bool,
        expected_version: Option<i64>,
    ) -> Result<AiAgentRecord> {
        let mut tx = self.begin_audited().await?;
        let before = locked_agent(&mut tx, &agent.id).await?;
        check_version(expected_version, before.version)?;
        let mut after = AiAgentRecord {
            id: before.id.clone(),
            version: before.version + 1,
            created_at: before.created_at,
            latest_version: before.latest_version.max(agent.latest_version),
            ..agent.clone()
        };
        let mut added = None;
        if let Some(v) = new_version {
            let v = AgentVersionRecord {
                agent_id: before.id.clone(),
                number: before.latest_version + 1,
                ..v.clone()
            };
            insert_version(&mut tx, &v).await?;
            after.latest_version = v.number;
            if promote {
                after.promoted_version = v.number;
                after.promotions.push(v.number);
            }
            added = Some(v);
        }
        let (set, n) = sets(AGENT_COLS);
        let sql = format!("UPDATE ai_agents SET {set} WHERE id = ${}", n + 1);
        bind_agent(sqlx::query(&sql), &after)
            .bind(after.id.clone())
            .execute(&mut *tx)
            .await
            .map_err(|e| agent_name_taken(e, &after.name))?;
        let mut after_view = after.audit_view();
        if let Some(v) = &added {
            after_view["new_version"] = v.audit_view();
        }
        tx.commit(
            actor,
            &AuditEvent::new(action, "agent", Some(&after.id))
                .before(before.audit_view())
                .after(after_view),
        )
        .await?;
        Ok(after)
    }

    async fn delete_ai_agent(&self, actor: &Actor, id: &str) -> Result<AiAgentRecord> {
        let mut tx = self.begin_audited().await?;
        let before = locked_agent(&mut tx, id).await?;
        for sql in [
            "DELETE FROM ai_agent_run_steps WHERE run_id IN (SELECT id FROM ai_agent_runs WHERE agent_id = $1)",
            "DELETE FROM ai_agent_runs WHERE agent_id = $1",
            "DELETE FROM ai_agent_reservations WHERE agent_id = $1",
            "DELETE FROM ai_agent_schedules WHERE agent_id = $1",
            "DELETE FROM ai_agent_versions WHERE agent_id = $1",
            "DELETE FROM ai_agents WHERE id = $1",
        ] {
            sqlx::query(sql)
                .bind(id.to_string())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit(
            actor,
            &AuditEvent::new("agent.delete", "agent", Some(id)).before(before.audit_view()),
        )
        .await?;
        Ok(before)
    }

    async fn list_ai_agent_versions(&self, agent_id: &str) -> Result<Vec<AgentVersionRecord>> {
        sqlx::query(&format!(
            "SELECT {VERSION_COLS} FROM ai_agent_versions WHERE agent_id = $1 ORDER BY number"
        ))
        .bind(agent_id.to_string())
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(version_from_row)
        .collect()
    }

    async fn get_ai_agent_version(
        &self,
        agent_id: &str,
        number: i64,
    ) -> Result<Option<AgentVersionRecord>> {
        sqlx::query(&format!(
            "SELECT {VERSION_COLS} FROM ai_agent_versions WHERE agent_id = $1 AND number = $2"
        ))
        .bind(agent_id.to_string())
        .bind(number)
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(version_from_row)
        .transpose()
    }

    async fn create_agent_tool(&self, actor: &Actor, tool: &AgentToolRecord) -> Result<()> {
        let mut tx = self.begin_audited().await?;
        let sql = format!(
            "INSERT INTO ai_agent_tools ({TOOL_COLS}) VALUES ({})",
            marks(11)
        );
        bind_tool(sqlx::query(&sql).bind(tool.id.clone()), tool)
            .execute(&mut *tx)
            .await
            .map_err(|e| tool_name_taken(e, &tool.name))?;
        tx.commit(
            actor,
            &AuditEvent::new("agent_tool.create", "agent_tool", Some(&tool.id))
                .after(tool.audit_view()),
        )
        .await
    }

    async fn get_agent_tool(&self, id: &str) -> Result<Option<AgentToolRecord>> {
        sqlx::query(&format!(
            "SELECT {TOOL_COLS} FROM ai_agent_tools WHERE id = $1"
        ))
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(tool_from_row)
        .transpose()
    }

    async fn get_agent_tool_by_name(&self, name: &str) -> Result<Option<AgentToolRecord>> {
        sqlx::query(&format!(
            "SELECT {TOOL_COLS} FROM ai_agent_tools WHERE name = $1"
        ))
        .bind(name.to_string())
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(tool_from_row)
        .transpose()
    }

    async fn list_agent_tools(&self) -> Result<Vec<AgentToolRecord>> {
        sqlx::query(&format!(
            "SELECT {TOOL_COLS} FROM ai_agent_tools ORDER BY name"
        ))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(tool_from_row)
        .collect()
    }

    async fn update_agent_tool(
        &self,
        actor: &Actor,
        tool: &AgentToolRecord,
        expected_version: Option<i64>,
    ) -> Result<AgentToolRecord> {
        let mut tx = self.begin_audited().await?;
        sqlx::query("UPDATE ai_agent_tools SET version = version WHERE id = $1")
            .bind(tool.id.clone())
            .execute(&mut *tx)
            .await?;
        let before = sqlx::query(&format!(
            "SELECT {TOOL_COLS} FROM ai_agent_tools WHERE id = $1"
        ))
        .bind(tool.id.clone())
        .fetch_optional(&mut *tx)
        .await?
        .as_ref()
        .map(tool_from_row)
        .transpose()?
        .ok_or_else(|| StoreError::NotFound(format!("tool {}", tool.id)))?;
        check_version(expected_version, before.version)?;
        let after = AgentToolRecord {
            version: before.version + 1,
            created_at: before.created_at,
            ..tool.clone()
        };
        let (set, n) = sets(TOOL_COLS);
        let sql = format!("UPDATE ai_agent_tools SET {set} WHERE id = ${}", n + 1);
        bind_tool(sqlx::query(&sql), &after)
            .bind(after.id.clone())
            .execute(&mut *tx)
            .await
            .map_err(|e| tool_name_taken(e, &after.name))?;
        let mut ev = AuditEvent::new("agent_tool.update", "agent_tool", Some(&after.id))
            .before(before.audit_view())
            .after(after.audit_view());
        if before.headers != after.headers {
            if let Some(Value::Object(o)) = ev.after.as_mut() {
                o.insert("headers_changed".into(), Value::Bool(true));
            }
        }
        tx.commit(actor, &ev).await?;
        Ok(after)
    }

    async fn delete_agent_tool(&self, actor: &Actor, id: &str) -> Result<AgentToolRecord> {
        let mut tx = self.begin_audited().await?;
        let before = sqlx::query(&format!(
            "SELECT {TOOL_COLS} FROM ai_agent_tools WHERE id = $1"
        ))
        .bind(id.to_string())
        .fetch_optional(&mut *tx)
        .await?
        .as_ref()
        .map(tool_from_row)
        .transpose()?
        .ok_or_else(|| StoreError::NotFound(format!("tool {id}")))?;
        sqlx::query("DELETE FROM ai_agent_tools WHERE id = $1")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit(
            actor,
            &AuditEvent::new("agent_tool.delete", "agent_tool", Some(id))
                .before(before.audit_view()),
        )
        .await?;
        Ok(before)
    }

    async fn create_mcp_server(&self, actor: &Actor, server: &McpServerRecord) -> Result<()> {
        let mut tx = self.begin_audited().await?;
        let sql = format!(
            "INSERT INTO ai_mcp_servers ({MCP_COLS}) VALUES ({})",
            marks(15)
        );
        bind_mcp(sqlx::query(&sql).bind(server.id.clone()), server)
            .execute(&mut *tx)
            .await
            .map_err(|e| mcp_name_taken(e, &server.name))?;
        tx.commit(
            actor,
            &AuditEvent::new("mcp_server.create", "mcp_server", Some(&server.id))
                .after(server.audit_view()),
        )
        .await
    }

    async fn get_mcp_server(&self, id: &str) -> Result<Option<McpServerRecord>> {
        sqlx::query(&format!(
            "SELECT {MCP_COLS} FROM ai_mcp_servers WHERE id = $1"
        ))
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(mcp_from_row)
        .transpose()
    }

    async fn get_mcp_server_by_name(&self, name: &str) -> Result<Option<McpServerRecord>> {
        sqlx::query(&format!(
            "SELECT {MCP_COLS} FROM ai_mcp_servers WHERE name = $1"
        ))
        .bind(name.to_string())
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(mcp_from_row)
        .transpose()
    }

    async fn list_mcp_servers(&self) -> Result<Vec<McpServerRecord>> {
        sqlx::query(&format!(
            "SELECT {MCP_COLS} FROM ai_mcp_servers ORDER BY name"
        ))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(mcp_from_row)
        .collect()
    }

    async fn update_mcp_server(
        &self,
        actor: &Actor,
        server: &McpServerRecord,
        expected_version: Option<i64>,
    ) -> Result<McpServerRecord> {
        let mut tx = self.begin_audited().await?;
        // A no-op write takes the row's lock on PostgreSQL before it is read.
        sqlx::query("UPDATE ai_mcp_servers SET version = version WHERE id = $1")
            .bind(server.id.clone())
            .execute(&mut *tx)
            .await?;
        let before = mcp_by_id(&mut tx, &server.id).await?;
        check_version(expected_version, before.version)?;
        let after = McpServerRecord {
            version: before.version + 1,
            created_at: before.created_at,
            ..server.clone()
        };
        let (set, n) = sets(MCP_COLS);
        let sql = format!("UPDATE ai_mcp_servers SET {set} WHERE id = ${}", n + 1);
        bind_mcp(sqlx::query(&sql), &after)
            .bind(after.id.clone())
            .execute(&mut *tx)
            .await
            .map_err(|e| mcp_name_taken(e, &after.name))?;
        let mut ev = AuditEvent::new("mcp_server.update", "mcp_server", Some(&after.id))
            .before(before.audit_view())
            .after(after.audit_view());
        if let Some(Value::Object(o)) = ev.after.as_mut() {
            if before.env != after.env {
                o.insert("env_changed".into(), Value::Bool(true));
            }
            if before.headers != after.headers {
                o.insert("headers_changed".into(), Value::Bool(true));
            }
        }
        tx.commit(actor, &ev).await?;
        Ok(after)
    }

    async fn delete_mcp_server(&self, actor: &Actor, id: &str) -> Result<McpServerRecord> {
        let mut tx = self.begin_audited().await?;
        let before = mcp_by_id(&mut tx, id).await?;
        sqlx::query("DELETE FROM ai_mcp_servers WHERE id = $1")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit(
            actor,
            &AuditEvent::new("mcp_server.delete", "mcp_server", Some(id))
                .before(before.audit_view()),
        )
        .await?;
        Ok(before)
    }

    async fn start_agent_run(&self, actor: &Actor, run: &AgentRunRecord) -> Result<()> {
        let mut tx = self.begin_audited().await?;
        sqlx::query(&format!(
            "INSERT INTO ai_agent_runs ({RUN_COLS}) VALUES ({})",
            marks(19)
        ))
        .bind(run.id.clone())
        .bind(run.agent_id.clone())
        .bind(run.agent_version)
        .bind(run.split_arm.clone())
        .bind(run.run_key.clone())
        .bind(run.trigger.clone())
        .bind(run.schedule_id.clone())
        .bind(run.status.clone())
        .bind(run.input.clone())
        .bind(run.output.clone())
        .bind(run.error.clone())
        .bind(run.error_code.clone())
        .bind(run.steps)
        .bind(run.input_tokens)
        .bind(run.output_tokens)
        .bind(run.cost_micro_usd)
        .bind(run.started_at)
        .bind(run.finished_at)
        .bind(run.created_by.clone())
        .execute(&mut *tx)
        .await?;
        tx.commit(
            actor,
            &AuditEvent::new("agent_run.start", "agent", Some(&run.agent_id)).after(json!({
                "run_id": run.id, "agent_version": run.agent_version, "split_arm": run.split_arm,
                "run_key": run.run_key, "trigger": run.trigger, "schedule_id": run.schedule_id,
                "input": run.input})),
        )
        .await
    }

    async fn record_agent_run_progress(
        &self,
        run_id: &str,
        input_tokens: i64,
        output_tokens: i64,
        cost_micro_usd: i64,
    ) -> Result<()> {
        let mut conn = self.pool.acquire().await?;
        run_progress_in(
            &mut conn,
            run_id,
            input_tokens,
            output_tokens,
            cost_micro_usd,
        )
        .await
    }

    async fn finish_agent_run(
        &self,
        run: &AgentRunRecord,
        steps: &[AgentStepRecord],
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let done = sqlx::query(
            "UPDATE ai_agent_runs SET status = $2, output = $3, error = $4, error_code = $5, \
             steps = $6, input_tokens = $7, output_tokens = $8, cost_micro_usd = $9, \
             finished_at = $10 WHERE id = $1",
        )
        .bind(run.id.clone())
        .bind(run.status.clone())
        .bind(run.output.clone())
        .bind(run.error.clone())
        .bind(run.error_code.clone())
        .bind(run.steps)
        .bind(run.input_tokens)
        .bind(run.output_tokens)
        .bind(run.cost_micro_usd)
        .bind(run.finished_at)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("run {}", run.id)));
        }
        for s in steps {
            sqlx::query(&format!(
                "INSERT INTO ai_agent_run_steps ({STEP_COLS}) VALUES ({})",
                marks(16)
            ))
            .bind(s.run_id.clone())
            .bind(s.seq)
            .bind(s.kind.clone())
            .bind(s.name.clone())
            .bind(s.status.clone())
            .bind(s.provider.clone())
            .bind(s.model.clone())
            .bind(s.call_id.clone())
            .bind(s.input.to_string())
            .bind(s.output.to_string())
            .bind(s.error.clone())
            .bind(s.input_tokens)
            .bind(s.output_tokens)
            .bind(s.cost_micro_usd)
            .bind(s.latency_ms)
            .bind(s.started_at)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn get_agent_run(
        &self,
        id: &str,
    ) -> Result<Option<(AgentRunRecord, Vec<AgentStepRecord>)>> {
        let Some(run) = sqlx::query(&format!(
            "SELECT {RUN_COLS} FROM ai_agent_runs WHERE id = $1"
        ))
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(run_from_row)
        .transpose()?
        else {
            return Ok(None);
        };
        let steps = sqlx::query(&format!(
            "SELECT {STEP_COLS} FROM ai_agent_run_steps WHERE run_id = $1 ORDER BY seq"
        ))
        .bind(id.to_string())
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(step_from_row)
        .collect::<Result<Vec<_>>>()?;
        Ok(Some((run, steps)))
    }

    async fn list_agent_runs(
        &self,
        agent_id: &str,
        page: PageRequest,
    ) -> Result<Page<AgentRunRecord>> {
        let total = self
            .count(
                "SELECT COUNT(*) FROM ai_agent_runs WHERE agent_id = $1",
                &[crate::sql::Arg::Text(agent_id.to_string())],
            )
            .await?;
        let items = sqlx::query(&format!(
            "SELECT {RUN_COLS} FROM ai_agent_runs WHERE agent_id = $1 \
             ORDER BY started_at DESC, id LIMIT $2 OFFSET $3"
        ))
        .bind(agent_id.to_string())
        .bind(page.limit)
        .bind(page.offset)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(run_from_row)
        .collect::<Result<Vec<_>>>()?;
        Ok(Page { items, total })
    }

    async fn agent_spend_since(&self, agent_id: &str, since: i64) -> Result<i64> {
        // COALESCE(SUM) is numeric on PostgreSQL; cast to BIGINT for the Any driver.
        let row = sqlx::query(
            "SELECT CAST(COALESCE(SUM(cost_micro_usd), 0) AS BIGINT) AS spent FROM ai_agent_runs \
             WHERE agent_id = $1 AND started_at >= $2",
        )
        .bind(agent_id.to_string())
        .bind(since)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get("spent")?)
    }

    async fn reserve_agent_budget(
        &self,
        r: &AgentReservation,
        since: i64,
        limit_micro_usd: i64,
    ) -> Result<AgentReserve> {
        if r.amount_micro_usd < 0 {
            return Err(StoreError::Invalid(format!(
                "a reservation of {} micro-USD cannot be held",
                r.amount_micro_usd
            )));
        }
        let mut tx = self.begin_write().await?;
        // The agent's lock: reservations of one agent take turns.
        locked_agent(&mut tx, &r.agent_id).await?;
        sqlx::query("DELETE FROM ai_agent_reservations WHERE agent_id = $1 AND expires_at <= $2")
            .bind(r.agent_id.clone())
            .bind(r.created_at)
            .execute(&mut *tx)
            .await?;
        // One statement, so one snapshot: a settlement committing meanwhile
        // (its cost recorded and its reservation gone together) is seen
        // whole or not at all.
        let row = sqlx::query(
            "SELECT CAST(COALESCE((SELECT SUM(cost_micro_usd) FROM ai_agent_runs \
             WHERE agent_id = $1 AND started_at >= $2), 0) AS BIGINT) AS spent, \
             CAST(COALESCE((SELECT SUM(amount_micro_usd) FROM ai_agent_reservations \
             WHERE agent_id = $3 AND expires_at > $4), 0) AS BIGINT) AS reserved",
        )
        .bind(r.agent_id.clone())
        .bind(since)
        .bind(r.agent_id.clone())
        .bind(r.created_at)
        .fetch_one(&mut *tx)
        .await?;
        let (spent, reserved): (i64, i64) = (row.try_get("spent")?, row.try_get("reserved")?);
        let total = spent
            .saturating_add(reserved)
            .saturating_add(r.amount_micro_usd);
        if total > limit_micro_usd {
            tx.commit().await?;
            return Ok(AgentReserve::Refused { spent, reserved });
        }
        sqlx::query(
            "INSERT INTO ai_agent_reservations (id, agent_id, run_id, amount_micro_usd, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(r.id.clone())
        .bind(r.agent_id.clone())
        .bind(r.run_id.clone())
        .bind(r.amount_micro_usd)
        .bind(r.created_at)
        .bind(r.expires_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(AgentReserve::Reserved { spent, reserved })
    }

    async fn settle_agent_reservation(
        &self,
        reservation_id: &str,
        run_id: &str,
        input_tokens: i64,
        output_tokens: i64,
        cost_micro_usd: i64,
    ) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        run_progress_in(&mut tx, run_id, input_tokens, output_tokens, cost_micro_usd).await?;
        let gone = sqlx::query("DELETE FROM ai_agent_reservations WHERE id = $1")
            .bind(reservation_id.to_string())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(gone > 0)
    }

    async fn release_agent_reservation(&self, reservation_id: &str) -> Result<bool> {
        let gone = sqlx::query("DELETE FROM ai_agent_reservations WHERE id = $1")
            .bind(reservation_id.to_string())
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(gone > 0)
    }

    async fn agent_reserved(&self, agent_id: &str, now: i64) -> Result<i64> {
        let row = sqlx::query(
            "SELECT CAST(COALESCE(SUM(amount_micro_usd), 0) AS BIGINT) AS reserved \
             FROM ai_agent_reservations WHERE agent_id = $1 AND expires_at > $2",
        )
        .bind(agent_id.to_string())
        .bind(now)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get("reserved")?)
    }

    async fn create_agent_schedule(&self, actor: &Actor, s: &AgentScheduleRecord) -> Result<()> {
        let mut tx = self.begin_audited().await?;
        let exists = sqlx::query("SELECT 1 FROM ai_agents WHERE id = $1")
            .bind(s.agent_id.clone())
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_none() {
            return Err(StoreError::NotFound(format!("agent {}", s.agent_id)));
        }
        sqlx::query(&format!(
            "INSERT INTO ai_agent_schedules ({SCHEDULE_COLS}) VALUES ({})",
            marks(14)
        ))
        .bind(s.id.clone())
        .bind(s.agent_id.clone())
        .bind(s.cron.clone())
        .bind(s.interval_ms)
        .bind(s.input.clone())
        .bind(s.run_key.clone())
        .bind(i64::from(s.enabled))
        .bind(s.next_run_at)
        .bind(s.last_run_at)
        .bind(s.last_run_id.clone())
        .bind(s.last_status.clone())
        .bind(s.version)
        .bind(s.created_at)
        .bind(s.updated_at)
        .execute(&mut *tx)
        .await?;
        tx.commit(
            actor,
            &AuditEvent::new("agent_schedule.create", "agent_schedule", Some(&s.id))
                .after(s.audit_view()),
        )
        .await
    }

    async fn get_agent_schedule(&self, id: &str) -> Result<Option<AgentScheduleRecord>> {
        sqlx::query(&format!(
            "SELECT {SCHEDULE_COLS} FROM ai_agent_schedules WHERE id = $1"
        ))
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(schedule_from_row)
        .transpose()
    }

    async fn list_agent_schedules(&self, agent_id: &str) -> Result<Vec<AgentScheduleRecord>> {
        sqlx::query(&format!(
            "SELECT {SCHEDULE_COLS} FROM ai_agent_schedules WHERE agent_id = $1 ORDER BY created_at, id"
        ))
        .bind(agent_id.to_string())
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(schedule_from_row)
        .collect()
    }

    async fn update_agent_schedule(
        &self,
        actor: &Actor,
        s: &AgentScheduleRecord,
        expected_version: Option<i64>,
    ) -> Result<AgentScheduleRecord> {
        let mut tx = self.begin_audited().await?;
        sqlx::query("UPDATE ai_agent_schedules SET version = version WHERE id = $1")
            .bind(s.id.clone())
            .execute(&mut *tx)
            .await?;
        let before = sqlx::query(&format!(
            "SELECT {SCHEDULE_COLS} FROM ai_agent_schedules WHERE id = $1"
        ))
        .bind(s.id.clone())
        .fetch_optional(&mut *tx)
        .await?
        .as_ref()
        .map(schedule_from_row)
        .transpose()?
        .ok_or_else(|| StoreError::NotFound(format!("schedule {}", s.id)))?;
        check_version(expected_version, before.version)?;
        let after = AgentScheduleRecord {
            agent_id: before.agent_id.clone(),
            last_run_at: before.last_run_at,
            last_run_id: before.last_run_id.clone(),
            last_status: before.last_status.clone(),
            version: before.version + 1,
            created_at: before.created_at,
            ..s.clone()
        };
        sqlx::query(
            "UPDATE ai_agent_schedules SET cron = $2, interval_ms = $3, input = $4, run_key = $5, \
             enabled = $6, next_run_at = $7, version = $8, updated_at = $9 WHERE id = $1",
        )
        .bind(after.id.clone())
        .bind(after.cron.clone())
        .bind(after.interval_ms)
        .bind(after.input.clone())
        .bind(after.run_key.clone())
        .bind(i64::from(after.enabled))
        .bind(after.next_run_at)
        .bind(after.version)
        .bind(after.updated_at)
        .execute(&mut *tx)
        .await?;
        tx.commit(
            actor,
            &AuditEvent::new("agent_schedule.update", "agent_schedule", Some(&after.id))
                .before(before.audit_view())
                .after(after.audit_view()),
        )
        .await?;
        Ok(after)
    }

    async fn delete_agent_schedule(&self, actor: &Actor, id: &str) -> Result<AgentScheduleRecord> {
        let mut tx = self.begin_audited().await?;
        let before = sqlx::query(&format!(
            "SELECT {SCHEDULE_COLS} FROM ai_agent_schedules WHERE id = $1"
        ))
        .bind(id.to_string())
        .fetch_optional(&mut *tx)
        .await?
        .as_ref()
        .map(schedule_from_row)
        .transpose()?
        .ok_or_else(|| StoreError::NotFound(format!("schedule {id}")))?;
        sqlx::query("DELETE FROM ai_agent_schedules WHERE id = $1")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit(
            actor,
            &AuditEvent::new("agent_schedule.delete", "agent_schedule", Some(id))
                .before(before.audit_view()),
        )
        .await?;
        Ok(before)
    }

    async fn due_agent_schedules(&self, now: i64, limit: i64) -> Result<Vec<AgentScheduleRecord>> {
        sqlx::query(&format!(
            "SELECT {SCHEDULE_COLS} FROM ai_agent_schedules \
             WHERE enabled <> 0 AND next_run_at IS NOT NULL AND next_run_at <= $1 \
             ORDER BY next_run_at LIMIT $2"
        ))
        .bind(now)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(schedule_from_row)
        .collect()
    }

    async fn claim_agent_schedule(
        &self,
        id: &str,
        expected_next: i64,
        next: Option<i64>,
        now: i64,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE ai_agent_schedules SET next_run_at = $3, last_run_at = $4, \
             last_status = 'running' WHERE id = $1 AND next_run_at = $2 AND enabled <> 0",
        )
        .bind(id.to_string())
        .bind(expected_next)
        .bind(next)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn record_agent_schedule_run(&self, id: &str, run_id: &str, status: &str) -> Result<()> {
        sqlx::query(
            "UPDATE ai_agent_schedules SET last_run_id = $2, last_status = $3 WHERE id = $1",
        )
        .bind(id.to_string())
        .bind(run_id.to_string())
        .bind(status.to_string())
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

/// Notes a running run's tokens and cost so far (a finished run is left as it is).
async fn run_progress_in(
    conn: &mut sqlx::AnyConnection,
    run_id: &str,
    input_tokens: i64,
    output_tokens: i64,
    cost_micro_usd: i64,
) -> Result<()> {
    sqlx::query(
        "UPDATE ai_agent_runs SET input_tokens = $2, output_tokens = $3, cost_micro_usd = $4 \
         WHERE id = $1 AND status = 'running'",
    )
    .bind(run_id.to_string())
    .bind(input_tokens)
    .bind(output_tokens)
    .bind(cost_micro_usd)
    .execute(conn)
    .await?;
    Ok(())
}
