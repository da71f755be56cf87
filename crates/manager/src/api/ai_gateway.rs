//! The AI gateway's budgets (`/api/v1/ai/budgets`) and usage
//! (`/api/v1/ai/usage`). Budgets are enforced by the data plane from what the
//! manager publishes (see `crate::ai_gateway`); every change is audited and
//! published at once. Amounts are exact: USD with six decimals, kept as
//! integer micro-USD.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use fleetgate_ai::pricing::{format_usd, parse_usd, usd_from_f64};
use fleetgate_core::ai_gateway::{valid_budget_name, BudgetAction, BudgetPeriod};
use fleetgate_core::time::now_ms;
use fleetgate_core::user::Role;
use fleetgate_store::{AiBudgetRecord, UsageGroup, UsageTotals};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::rfc3339;
use crate::auth::AuthContext;
use crate::error::{ApiError, ApiResult};
use crate::extract::{json_with_etag, IfMatch, JsonBody, ListEnvelope, QueryParams};
use crate::AppState;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BudgetInput {
    /// 1 to 64 characters of letters, digits, `_`, `-` and `.`; unique. Routes
    /// name budgets by it (`ai.budgets`).
    #[schema(min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9_.-]+$")]
    pub name: String,
    pub period: BudgetPeriod,
    /// The cap in USD, more than 0: a number, or a decimal string with at most
    /// six decimals (`"12.50"`).
    pub limit_usd: UsdAmount,
    /// Share of the cap at which `ai.budget.threshold` is raised: a fraction
    /// (0.8) or a percentage above 1 (80). Default 0.8.
    #[serde(default)]
    #[schema(minimum = 0.01, maximum = 100.0)]
    pub alert_threshold: Option<f64>,
    /// `block` (default): a request whose worst-case cost does not fit in
    /// what is left is refused, 429 `AI_BUDGET_EXCEEDED` with `Retry-After`
    /// until the reset. `throttle`: past the alert threshold one request at a
    /// time (others 429 `AI_BUDGET_THROTTLED`, `Retry-After: 1`), past the
    /// limit refused as `block`. `alert_only`: never refused, events only.
    #[serde(default)]
    pub action_on_exceed: Option<BudgetAction>,
    /// Count only this API key's requests; all callers' when absent.
    #[serde(default)]
    pub api_key_id: Option<String>,
    #[serde(default)]
    #[schema(max_length = 1000)]
    pub description: Option<String>,
}

/// An amount of USD as a number (`12.5`) or an exact decimal string (`"12.50"`).
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
pub enum UsdAmount {
    Number(f64),
    Text(String),
}

#[derive(Serialize, ToSchema)]
pub struct BudgetView {
    pub id: String,
    pub name: String,
    pub period: String,
    /// USD, six decimals.
    pub limit_usd: String,
    pub limit_micros: i64,
    /// A fraction of the cap (0.8).
    pub alert_threshold: f64,
    pub action_on_exceed: String,
    pub api_key_id: Option<String>,
    pub description: String,
    /// Spent in the current period as recorded (the data plane's own count
    /// runs ahead by the requests not yet written).
    pub spent_usd: String,
    pub spent_micros: i64,
    pub remaining_usd: String,
    pub period_start: String,
    /// When the current period ends and the spend starts again from zero.
    pub resets_at: String,
    pub version: i64,
    pub created_at: String,
    pub updated_at: String,
}

async fn view(state: &AppState, b: &AiBudgetRecord) -> ApiResult<BudgetView> {
    let period = BudgetPeriod::parse(&b.period).unwrap_or(BudgetPeriod::Monthly);
    let (start, end) = period.window(now_ms());
    let spent = state.store.ai_budget_spent(&b.id, start).await?;
    let limit = u64::try_from(b.limit_micros).unwrap_or(0);
    let spent_u = u64::try_from(spent).unwrap_or(0);
    Ok(BudgetView {
        id: b.id.clone(),
        name: b.name.clone(),
        period: b.period.clone(),
        limit_usd: format_usd(limit),
        limit_micros: b.limit_micros,
        alert_threshold: b.alert_threshold_pct as f64 / 100.0,
        action_on_exceed: b.action.clone(),
        api_key_id: b.api_key_id.clone(),
        description: b.description.clone(),
        spent_usd: format_usd(spent_u),
        spent_micros: spent,
        remaining_usd: format_usd(limit.saturating_sub(spent_u)),
        period_start: rfc3339(start),
        resets_at: rfc3339(end),
        version: b.version,
        created_at: rfc3339(b.created_at),
        updated_at: rfc3339(b.updated_at),
    })
}

async fn respond(state: &AppState, status: StatusCode, b: &AiBudgetRecord) -> ApiResult<Response> {
    Ok(json_with_etag(status, b.version, view(state, b).await?))
}

fn limit_of(v: &UsdAmount) -> ApiResult<i64> {
    let micros = match v {
        UsdAmount::Number(f) => usd_from_f64(*f),
        UsdAmount::Text(s) => parse_usd(s),
    }
    .map_err(|e| ApiError::bad_request("limit_usd", e.to_string()))?;
    if micros == 0 {
        return Err(ApiError::bad_request("limit_usd", "must be more than 0"));
    }
    i64::try_from(micros).map_err(|_| ApiError::bad_request("limit_usd", "is too large"))
}

fn threshold_of(v: Option<f64>) -> ApiResult<i64> {
    let Some(t) = v else { return Ok(80) };
    if !(t.is_finite() && (0.01..=100.0).contains(&t)) {
        return Err(ApiError::bad_request(
            "alert_threshold",
            "must be a fraction of the limit (0.01 to 1) or a percentage (above 1, up to 100)",
        ));
    }
    let pct = if t <= 1.0 { t * 100.0 } else { t };
    Ok((pct.round() as i64).clamp(1, 100))
}

async fn apply(state: &AppState, b: &mut AiBudgetRecord, body: &BudgetInput) -> ApiResult<()> {
    let name = body.name.as_str();
    if !valid_budget_name(name) {
        return Err(ApiError::bad_request(
            "name",
            "must be 1 to 64 characters of letters, digits, _ - .",
        ));
    }
    b.name = name.to_string();
    b.period = body.period.as_str().to_string();
    b.limit_micros = limit_of(&body.limit_usd)?;
    b.alert_threshold_pct = threshold_of(body.alert_threshold)?;
    b.action = body
        .action_on_exceed
        .unwrap_or(BudgetAction::Block)
        .as_str()
        .to_string();
    b.api_key_id = match body.api_key_id.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(id) => {
            if state.store.get_api_key(id).await?.is_none() {
                return Err(ApiError::bad_request(
                    "api_key_id",
                    format!("no API key has the id {id:?}"),
                ));
            }
            Some(id.to_string())
        }
    };
    let description = body.description.clone().unwrap_or_default();
    if description.chars().count() > 1000 {
        return Err(ApiError::bad_request(
            "description",
            "must be at most 1000 characters",
        ));
    }
    b.description = description;
    Ok(())
}

async fn budget(state: &AppState, id: &str) -> ApiResult<AiBudgetRecord> {
    state
        .store
        .get_ai_budget(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("AI budget {id}")))
}

#[utoipa::path(get, path = "/api/v1/ai/budgets", operation_id = "list_ai_budgets", tag = "ai",
    responses((status = 200, description = "AI budgets by name, with their spend in the current period", body = ListEnvelope<BudgetView>)))]
pub async fn list(
    State(state): State<AppState>,
    _auth: AuthContext,
) -> ApiResult<axum::Json<ListEnvelope<BudgetView>>> {
    let mut items = Vec::new();
    for b in state.store.list_ai_budgets().await? {
        items.push(view(&state, &b).await?);
    }
    Ok(axum::Json(ListEnvelope::whole(items)))
}

#[utoipa::path(post, path = "/api/v1/ai/budgets", operation_id = "create_ai_budget", tag = "ai", request_body = BudgetInput,
    responses((status = 201, description = "Created and enforced at once", body = BudgetView)))]
pub async fn create(
    State(state): State<AppState>,
    auth: AuthContext,
    JsonBody(body): JsonBody<BudgetInput>,
) -> ApiResult<Response> {
    auth.require(Role::Admin)?;
    let now = now_ms();
    let mut b = AiBudgetRecord {
        id: uuid::Uuid::new_v4().to_string(),
        name: String::new(),
        period: String::new(),
        limit_micros: 0,
        alert_threshold_pct: 80,
        action: String::new(),
        api_key_id: None,
        description: String::new(),
        version: 1,
        created_at: now,
        updated_at: now,
    };
    apply(&state, &mut b, &body).await?;
    state.store.create_ai_budget(&auth.actor, &b).await?;
    state.refresh_ai().await;
    respond(&state, StatusCode::CREATED, &b).await
}

#[utoipa::path(get, path = "/api/v1/ai/budgets/{id}", operation_id = "get_ai_budget", tag = "ai",
    params(("id" = String, Path, description = "Budget id")),
    responses((status = 200, description = "The budget with its current spend", body = BudgetView)))]
pub async fn get(
    State(state): State<AppState>,
    _auth: AuthContext,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let b = budget(&state, &id).await?;
    respond(&state, StatusCode::OK, &b).await
}

#[utoipa::path(put, path = "/api/v1/ai/budgets/{id}", operation_id = "update_ai_budget", tag = "ai",
    params(("id" = String, Path, description = "Budget id")), request_body = BudgetInput,
    responses((status = 200, description = "Updated and enforced at once (the spend so far is kept)", body = BudgetView)))]
pub async fn update(
    State(state): State<AppState>,
    auth: AuthContext,
    Path(id): Path<String>,
    IfMatch(expected): IfMatch,
    JsonBody(body): JsonBody<BudgetInput>,
) -> ApiResult<Response> {
    auth.require(Role::Admin)?;
    let mut b = budget(&state, &id).await?;
    apply(&state, &mut b, &body).await?;
    b.updated_at = now_ms();
    let b = state
        .store
        .update_ai_budget(&auth.actor, &b, expected)
        .await?;
    state.refresh_ai().await;
    respond(&state, StatusCode::OK, &b).await
}

#[utoipa::path(delete, path = "/api/v1/ai/budgets/{id}", operation_id = "delete_ai_budget", tag = "ai",
    params(("id" = String, Path, description = "Budget id")),
    responses((status = 204, description = "Deleted; routes that name it refuse requests (503) until it exists again")))]
pub async fn delete(
    State(state): State<AppState>,
    auth: AuthContext,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    auth.require(Role::Admin)?;
    state.store.delete_ai_budget(&auth.actor, &id).await?;
    state.refresh_ai().await;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize, ToSchema)]
pub struct UsageSums {
    /// The group's key: an API key id, a model, a route id, a provider id, or
    /// a day (`2026-12-07`).
    pub key: String,
    pub requests: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cached_input_tokens: i64,
    pub cache_write_input_tokens: i64,
    pub reasoning_tokens: i64,
    /// USD, six decimals.
    pub cost_usd: String,
    pub cost_micros: i64,
    /// Requests whose counts were estimated (the provider reported none).
    pub estimated_requests: i64,
}

#[derive(Serialize, ToSchema)]
pub struct UsageRowView {
    pub id: String,
    pub at: String,
    pub route_id: String,
    pub api_key_id: String,
    pub provider_id: String,
    pub model: String,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cached_input_tokens: i64,
    pub cache_write_input_tokens: i64,
    pub reasoning_tokens: i64,
    pub cost_usd: String,
    pub cost_micros: i64,
    pub status: i64,
    /// `ok`, `provider_error`, `cut` or `cancelled`.
    pub outcome: String,
    pub latency_ms: i64,
    pub streamed: bool,
    pub estimated: bool,
}

#[derive(Serialize, ToSchema)]
pub struct UsageReport {
    pub from: String,
    pub to: String,
    pub group_by: Option<String>,
    /// Sums over the whole window.
    pub totals: UsageSums,
    /// Sums per group, biggest spend first (empty without `group_by`).
    pub groups: Vec<UsageSums>,
    /// The newest requests of the window, newest first (at most `limit`).
    pub recent: Vec<UsageRowView>,
}

fn sums(t: UsageTotals, day: bool) -> UsageSums {
    let key = if day {
        t.key
            .parse::<i64>()
            .map(|ms| rfc3339(ms).chars().take(10).collect())
            .unwrap_or(t.key)
    } else {
        t.key
    };
    UsageSums {
        key,
        requests: t.requests,
        input_tokens: t.input_tokens,
        output_tokens: t.output_tokens,
        cached_input_tokens: t.cached_input_tokens,
        cache_write_input_tokens: t.cache_write_input_tokens,
        reasoning_tokens: t.reasoning_tokens,
        cost_usd: format_usd(u64::try_from(t.cost_micros).unwrap_or(0)),
        cost_micros: t.cost_micros,
        estimated_requests: t.estimated,
    }
}

#[utoipa::path(get, path = "/api/v1/ai/usage", operation_id = "ai_usage", tag = "ai",
    params(
        ("from" = Option<String>, Query, description = "Start (RFC 3339 or Unix ms); default 30 days ago. Sums are by whole hours: the hour holding `from` counts whole."),
        ("to" = Option<String>, Query, description = "End, exclusive (RFC 3339 or Unix ms); default now"),
        ("group_by" = Option<String>, Query, description = "key, model, route, provider or day"),
        ("limit" = Option<i64>, Query, description = "Recent requests listed (0 to 500, default 50)"),
    ),
    responses((status = 200, description = "Tokens and cost of the AI gateway's requests", body = UsageReport)))]
pub async fn usage(
    State(state): State<AppState>,
    _auth: AuthContext,
    q: QueryParams,
) -> ApiResult<axum::Json<UsageReport>> {
    // Year 0 to 9999: beyond that no usage exists and the hour arithmetic
    // of the sums would overflow.
    const LATEST: i64 = 253_402_300_799_999;
    let in_range = |name: &str, v: Option<i64>| -> ApiResult<Option<i64>> {
        match v {
            Some(t) if !(0..=LATEST).contains(&t) => Err(ApiError::bad_request(
                name,
                "must be between 1970-01-01 and 9999-12-31",
            )),
            v => Ok(v),
        }
    };
    let now = now_ms();
    let to = in_range("to", q.time("to")?)?.unwrap_or(now + 1);
    let from = in_range("from", q.time("from")?)?.unwrap_or((to - 30 * 86_400_000).max(0));
    if from >= to {
        return Err(ApiError::bad_request("from", "must be before to"));
    }
    let group = match q.text("group_by") {
        None => None,
        Some("key" | "api_key") => Some(UsageGroup::Key),
        Some("model") => Some(UsageGroup::Model),
        Some("route") => Some(UsageGroup::Route),
        Some("provider") => Some(UsageGroup::Provider),
        Some("day") => Some(UsageGroup::Day),
        Some(other) => {
            return Err(ApiError::bad_request(
                "group_by",
                format!("must be key, model, route, provider or day, got {other:?}"),
            ))
        }
    };
    let limit = q.int("limit")?.unwrap_or(50);
    if limit > 500 {
        return Err(ApiError::bad_request("limit", "must be 0 to 500"));
    }
    let totals = state
        .store
        .ai_usage_totals(from, to, None)
        .await?
        .into_iter()
        .next()
        .unwrap_or_default();
    let groups = match group {
        Some(g) => state
            .store
            .ai_usage_totals(from, to, Some(g))
            .await?
            .into_iter()
            .map(|t| sums(t, g == UsageGroup::Day))
            .collect(),
        None => Vec::new(),
    };
    let recent = state
        .store
        .recent_ai_usage(from, to, limit)
        .await?
        .into_iter()
        .map(|r| UsageRowView {
            id: r.id,
            at: rfc3339(r.at_ms),
            route_id: r.route_id,
            api_key_id: r.api_key_id,
            provider_id: r.provider_id,
            model: r.model,
            input_tokens: r.input_tokens,
            output_tokens: r.output_tokens,
            cached_input_tokens: r.cached_input_tokens,
            cache_write_input_tokens: r.cache_write_input_tokens,
            reasoning_tokens: r.reasoning_tokens,
            cost_usd: format_usd(u64::try_from(r.cost_micros).unwrap_or(0)),
            cost_micros: r.cost_micros,
            status: r.status,
            outcome: r.outcome,
            latency_ms: r.latency_ms,
            streamed: r.streamed,
            estimated: r.estimated,
        })
        .collect();
    Ok(axum::Json(UsageReport {
        from: rfc3339(from),
        to: rfc3339(to),
        group_by: q.text("group_by").map(str::to_string),
        totals: sums(totals, false),
        groups,
        recent,
    }))
}
