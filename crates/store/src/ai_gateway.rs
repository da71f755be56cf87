//! The AI gateway's records: budgets (audited like every configuration
//! change), usage rows written in batches with their hourly rollups and the
//! spend of each budget per period, and the sums the API reads. A key's spend
//! over a window is a sum over hourly rollups, never over usage rows.

use async_trait::async_trait;
use serde_json::{json, Value};
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::sql::{check_version, SqlStore};
use crate::{Actor, AuditEvent, Result, StoreError};

/// A budget: a cap on what `ai` routes spend per period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AiBudgetRecord {
    pub id: String,
    /// Unique; routes name budgets by it.
    pub name: String,
    /// `hourly`, `daily`, `weekly` or `monthly`.
    pub period: String,
    pub limit_micros: i64,
    /// 1–100.
    pub alert_threshold_pct: i64,
    /// `block`, `throttle` or `alert_only`.
    pub action: String,
    /// Only this API key's requests count (all callers' when `None`).
    pub api_key_id: Option<String>,
    pub description: String,
    pub version: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

impl AiBudgetRecord {
    fn audit_view(&self) -> Value {
        json!({"id": self.id, "name": self.name, "period": self.period,
               "limit_micros": self.limit_micros, "alert_threshold_pct": self.alert_threshold_pct,
               "action": self.action, "api_key_id": self.api_key_id, "description": self.description})
    }
}

/// An operator's price for one model, replacing or adding to the built-in
/// table: `price` is a model price's JSON (rates in micro-USD per million
/// tokens), checked by the manager before it is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AiPriceRecord {
    /// Lower case; unique.
    pub model: String,
    pub price: Value,
    pub version: i64,
    pub updated_at: i64,
}

/// One relayed request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AiUsageRow {
    pub id: String,
    pub at_ms: i64,
    pub route_id: String,
    pub api_key_id: String,
    pub provider_id: String,
    pub model: String,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cached_input_tokens: i64,
    pub cache_write_input_tokens: i64,
    pub reasoning_tokens: i64,
    pub cost_micros: i64,
    pub status: i64,
    pub outcome: String,
    pub latency_ms: i64,
    pub streamed: bool,
    pub estimated: bool,
    /// Budget ids charged, with the start of the period charged.
    pub budgets: Vec<(String, i64)>,
}

/// How usage is grouped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageGroup {
    Key,
    Model,
    Route,
    Provider,
    /// UTC days.
    Day,
}

impl UsageGroup {
    fn expr(self) -> &'static str {
        match self {
            UsageGroup::Key => "api_key_id",
            UsageGroup::Model => "model",
            UsageGroup::Route => "route_id",
            UsageGroup::Provider => "provider_id",
            UsageGroup::Day => "CAST((hour_ms / 86400000) * 86400000 AS TEXT)",
        }
    }
}

/// The sums of one group.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UsageTotals {
    /// The group's key (for `Day`, the day's start in ms since the epoch).
    pub key: String,
    pub requests: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cached_input_tokens: i64,
    pub cache_write_input_tokens: i64,
    pub reasoning_tokens: i64,
    pub cost_micros: i64,
    /// Requests whose counts were estimated.
    pub estimated: i64,
}

#[async_trait]
pub trait AiGatewayStore: Send + Sync {
    /// [`StoreError::Conflict`] when the name or id is taken.
    async fn create_ai_budget(&self, actor: &Actor, b: &AiBudgetRecord) -> Result<()>;
    async fn get_ai_budget(&self, id: &str) -> Result<Option<AiBudgetRecord>>;
    /// By name, oldest first.
    async fn list_ai_budgets(&self) -> Result<Vec<AiBudgetRecord>>;
    async fn update_ai_budget(
        &self,
        actor: &Actor,
        b: &AiBudgetRecord,
        expected_version: Option<i64>,
    ) -> Result<AiBudgetRecord>;
    /// Deletes the budget and its recorded spend.
    async fn delete_ai_budget(&self, actor: &Actor, id: &str) -> Result<AiBudgetRecord>;

    /// Operators' price overrides, by model name.
    async fn list_ai_prices(&self) -> Result<Vec<AiPriceRecord>>;
    /// Sets the override of `p.model` (created or replaced; the version counts
    /// up from the replaced one's), audited; returns what was stored.
    async fn put_ai_price(&self, actor: &Actor, p: &AiPriceRecord) -> Result<AiPriceRecord>;
    /// Drops the override of `model`, audited; [`StoreError::NotFound`] when
    /// there is none.
    async fn delete_ai_price(&self, actor: &Actor, model: &str) -> Result<AiPriceRecord>;

    /// Writes a batch of usage rows, their hourly rollups and the spend of the
    /// budgets they were charged to, in one transaction. A row whose id is
    /// already stored is skipped with its sums (a batch retried after an
    /// unclear failure counts once).
    async fn record_ai_usage(&self, rows: &[AiUsageRow]) -> Result<()>;
    /// What `budget_id` spent in the period starting at `period_start`.
    async fn ai_budget_spent(&self, budget_id: &str, period_start: i64) -> Result<i64>;
    /// Grants `holder` up to `want` micro-USD more of `budget_id`'s period
    /// starting at `period_start`, in one transaction holding the budget's
    /// lock: never more than the limit less what the period's holders were
    /// granted (and what it had recorded as spent before its first grant), and
    /// nothing when that is less than `need`. Returns what was granted and what is left
    /// unleased after it. Grants of other periods of
    /// the budget are dropped on the way. [`StoreError::NotFound`] when the
    /// budget does not exist.
    async fn lease_ai_allowance(
        &self,
        budget_id: &str,
        period_start: i64,
        holder: &str,
        need: i64,
        want: i64,
        now_ms: i64,
    ) -> Result<(i64, i64)>;
    /// Takes back up to `amount` of `holder`'s grant in the period (what it
    /// will not spend).
    async fn return_ai_allowance(
        &self,
        budget_id: &str,
        period_start: i64,
        holder: &str,
        amount: i64,
        now_ms: i64,
    ) -> Result<()>;
    /// One key's spend over `[from_ms, to_ms)`, summed over whole hours (the
    /// hour holding `from_ms` and those up to `to_ms`).
    async fn ai_key_spend(&self, api_key_id: &str, from_ms: i64, to_ms: i64) -> Result<i64>;
    /// Sums over `[from_ms, to_ms)` by hour, grouped; biggest spend first.
    async fn ai_usage_totals(
        &self,
        from_ms: i64,
        to_ms: i64,
        group: Option<UsageGroup>,
    ) -> Result<Vec<UsageTotals>>;
    /// The newest usage rows in `[from_ms, to_ms)`, newest first.
    async fn recent_ai_usage(
        &self,
        from_ms: i64,
        to_ms: i64,
        limit: i64,
    ) -> Result<Vec<AiUsageRow>>;
}

const COLS: &str = "id, name, period, limit_micros, alert_threshold_pct, action, api_key_id, \
     description, version, created_at, updated_at";

fn budget_row(r: &AnyRow) -> Result<AiBudgetRecord> {
    Ok(AiBudgetRecord {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        period: r.try_get("period")?,
        limit_micros: r.try_get("limit_micros")?,
        alert_threshold_pct: r.try_get("alert_threshold_pct")?,
        action: r.try_get("action")?,
        api_key_id: r.try_get("api_key_id")?,
        description: r.try_get("description")?,
        version: r.try_get("version")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

type Query<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

/// Binds the columns after `id`, in [`COLS`] order.
fn bind_fields<'q>(q: Query<'q>, b: &AiBudgetRecord) -> Query<'q> {
    q.bind(b.name.clone())
        .bind(b.period.clone())
        .bind(b.limit_micros)
        .bind(b.alert_threshold_pct)
        .bind(b.action.clone())
        .bind(b.api_key_id.clone())
        .bind(b.description.clone())
        .bind(b.version)
        .bind(b.created_at)
        .bind(b.updated_at)
}

fn name_taken(e: sqlx::Error, b: &AiBudgetRecord) -> StoreError {
    if crate::sql::is_unique_violation(&e) {
        StoreError::Conflict(format!(
            "an AI budget named {:?} (or with id {}) already exists",
            b.name, b.id
        ))
    } else {
        e.into()
    }
}

async fn locked(conn: &mut sqlx::AnyConnection, id: &str) -> Result<AiBudgetRecord> {
    // A no-op write takes the row's lock on PostgreSQL before it is read.
    sqlx::query("UPDATE ai_budgets SET version = version WHERE id = $1")
        .bind(id.to_string())
        .execute(&mut *conn)
        .await?;
    sqlx::query(&format!("SELECT {COLS} FROM ai_budgets WHERE id = $1"))
        .bind(id.to_string())
        .fetch_optional(conn)
        .await?
        .as_ref()
        .map(budget_row)
        .transpose()?
        .ok_or_else(|| StoreError::NotFound(format!("AI budget {id}")))
}

fn price_row(r: &AnyRow) -> Result<AiPriceRecord> {
    let price: String = r.try_get("price")?;
    Ok(AiPriceRecord {
        model: r.try_get("model")?,
        price: serde_json::from_str(&price).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        version: r.try_get("version")?,
        updated_at: r.try_get("updated_at")?,
    })
}

async fn price_locked(
    conn: &mut sqlx::AnyConnection,
    model: &str,
) -> Result<Option<AiPriceRecord>> {
    sqlx::query("UPDATE ai_prices SET version = version WHERE model = $1")
        .bind(model.to_string())
        .execute(&mut *conn)
        .await?;
    sqlx::query("SELECT model, price, version, updated_at FROM ai_prices WHERE model = $1")
        .bind(model.to_string())
        .fetch_optional(conn)
        .await?
        .as_ref()
        .map(price_row)
        .transpose()
}

const HOUR: i64 = 3_600_000;

const SUMS: &str = "CAST(SUM(requests) AS BIGINT), CAST(SUM(input_tokens) AS BIGINT), \
     CAST(SUM(output_tokens) AS BIGINT), CAST(SUM(cached_input_tokens) AS BIGINT), \
     CAST(SUM(cache_write_input_tokens) AS BIGINT), CAST(SUM(reasoning_tokens) AS BIGINT), \
     CAST(SUM(cost_micros) AS BIGINT), CAST(SUM(estimated) AS BIGINT)";

fn totals_row(r: &AnyRow, key: String) -> Result<UsageTotals> {
    let get = |i: usize| -> Result<i64> { Ok(r.try_get::<Option<i64>, _>(i)?.unwrap_or(0)) };
    Ok(UsageTotals {
        key,
        requests: get(1)?,
        input_tokens: get(2)?,
        output_tokens: get(3)?,
        cached_input_tokens: get(4)?,
        cache_write_input_tokens: get(5)?,
        reasoning_tokens: get(6)?,
        cost_micros: get(7)?,
        estimated: get(8)?,
    })
}

const USAGE_COLS: &str = "id, at_ms, route_id, api_key_id, provider_id, model, input_tokens, \
     output_tokens, cached_input_tokens, cache_write_input_tokens, reasoning_tokens, cost_micros, \
     status, outcome, latency_ms, streamed, estimated";

#[async_trait]
impl AiGatewayStore for SqlStore {
    async fn create_ai_budget(&self, actor: &Actor, b: &AiBudgetRecord) -> Result<()> {
        let mut tx = self.begin_audited().await?;
        let marks: Vec<String> = (1..=11).map(|i| format!("${i}")).collect();
        let sql = format!(
            "INSERT INTO ai_budgets ({COLS}) VALUES ({})",
            marks.join(", ")
        );
        bind_fields(sqlx::query(&sql).bind(b.id.clone()), b)
            .execute(&mut *tx)
            .await
            .map_err(|e| name_taken(e, b))?;
        tx.commit(
            actor,
            &AuditEvent::new("ai_budget.create", "ai_budget", Some(&b.id)).after(b.audit_view()),
        )
        .await
    }

    async fn get_ai_budget(&self, id: &str) -> Result<Option<AiBudgetRecord>> {
        sqlx::query(&format!("SELECT {COLS} FROM ai_budgets WHERE id = $1"))
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(budget_row)
            .transpose()
    }

    async fn list_ai_budgets(&self) -> Result<Vec<AiBudgetRecord>> {
        sqlx::query(&format!("SELECT {COLS} FROM ai_budgets ORDER BY name, id"))
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(budget_row)
            .collect()
    }

    async fn update_ai_budget(
        &self,
        actor: &Actor,
        b: &AiBudgetRecord,
        expected_version: Option<i64>,
    ) -> Result<AiBudgetRecord> {
        let mut tx = self.begin_audited().await?;
        let before = locked(&mut tx, &b.id).await?;
        check_version(expected_version, before.version)?;
        let after = AiBudgetRecord {
            version: before.version + 1,
            created_at: before.created_at,
            ..b.clone()
        };
        let sets: Vec<String> = COLS
            .split(", ")
            .skip(1)
            .enumerate()
            .map(|(i, c)| format!("{} = ${}", c.trim(), i + 1))
            .collect();
        let sql = format!("UPDATE ai_budgets SET {} WHERE id = $11", sets.join(", "));
        bind_fields(sqlx::query(&sql), &after)
            .bind(after.id.clone())
            .execute(&mut *tx)
            .await
            .map_err(|e| name_taken(e, &after))?;
        tx.commit(
            actor,
            &AuditEvent::new("ai_budget.update", "ai_budget", Some(&b.id))
                .before(before.audit_view())
                .after(after.audit_view()),
        )
        .await?;
        Ok(after)
    }

    async fn delete_ai_budget(&self, actor: &Actor, id: &str) -> Result<AiBudgetRecord> {
        let mut tx = self.begin_audited().await?;
        let before = locked(&mut tx, id).await?;
        for sql in [
            "DELETE FROM ai_budget_spend WHERE budget_id = $1",
            "DELETE FROM ai_budget_allowances WHERE budget_id = $1",
            "DELETE FROM ai_budgets WHERE id = $1",
        ] {
            sqlx::query(sql)
                .bind(id.to_string())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit(
            actor,
            &AuditEvent::new("ai_budget.delete", "ai_budget", Some(id)).before(before.audit_view()),
        )
        .await?;
        Ok(before)
    }

    async fn list_ai_prices(&self) -> Result<Vec<AiPriceRecord>> {
        sqlx::query("SELECT model, price, version, updated_at FROM ai_prices ORDER BY model")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(price_row)
            .collect()
    }

    async fn put_ai_price(&self, actor: &Actor, p: &AiPriceRecord) -> Result<AiPriceRecord> {
        let mut tx = self.begin_audited().await?;
        let before = price_locked(&mut tx, &p.model).await?;
        let after = AiPriceRecord {
            version: before.as_ref().map_or(1, |b| b.version + 1),
            ..p.clone()
        };
        let body =
            serde_json::to_string(&after.price).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let sql = if before.is_some() {
            "UPDATE ai_prices SET price = $2, version = $3, updated_at = $4 WHERE model = $1"
        } else {
            "INSERT INTO ai_prices (model, price, version, updated_at) VALUES ($1, $2, $3, $4)"
        };
        sqlx::query(sql)
            .bind(after.model.clone())
            .bind(body)
            .bind(after.version)
            .bind(after.updated_at)
            .execute(&mut *tx)
            .await
            .map_err(|e| {
                crate::sql::conflict_if_unique(e, || {
                    format!(
                        "the price of {:?} was set by another request at the same time; try again",
                        after.model
                    )
                })
            })?;
        let mut event = AuditEvent::new("ai_price.set", "ai_price", Some(&after.model))
            .after(after.price.clone());
        if let Some(b) = before {
            event = event.before(b.price);
        }
        tx.commit(actor, &event).await?;
        Ok(after)
    }

    async fn delete_ai_price(&self, actor: &Actor, model: &str) -> Result<AiPriceRecord> {
        let mut tx = self.begin_audited().await?;
        let before = price_locked(&mut tx, model)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("AI price override of {model:?}")))?;
        sqlx::query("DELETE FROM ai_prices WHERE model = $1")
            .bind(model.to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit(
            actor,
            &AuditEvent::new("ai_price.delete", "ai_price", Some(model))
                .before(before.price.clone()),
        )
        .await?;
        Ok(before)
    }

    async fn record_ai_usage(&self, rows: &[AiUsageRow]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin_write().await?;
        let marks: Vec<String> = (1..=17).map(|i| format!("${i}")).collect();
        let insert = format!(
            "INSERT INTO ai_usage ({USAGE_COLS}) VALUES ({}) ON CONFLICT (id) DO NOTHING",
            marks.join(", ")
        );
        // One roll-up row and one spend row per group of the batch, not per
        // request: a batch of one caller's requests is its inserts plus two.
        let rollup = "INSERT INTO ai_usage_hourly (hour_ms, api_key_id, route_id, provider_id, model, \
             requests, input_tokens, output_tokens, cached_input_tokens, cache_write_input_tokens, \
             reasoning_tokens, cost_micros, estimated) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
             ON CONFLICT (hour_ms, api_key_id, route_id, provider_id, model) DO UPDATE SET \
             requests = ai_usage_hourly.requests + excluded.requests, \
             input_tokens = ai_usage_hourly.input_tokens + excluded.input_tokens, \
             output_tokens = ai_usage_hourly.output_tokens + excluded.output_tokens, \
             cached_input_tokens = ai_usage_hourly.cached_input_tokens + excluded.cached_input_tokens, \
             cache_write_input_tokens = ai_usage_hourly.cache_write_input_tokens + excluded.cache_write_input_tokens, \
             reasoning_tokens = ai_usage_hourly.reasoning_tokens + excluded.reasoning_tokens, \
             cost_micros = ai_usage_hourly.cost_micros + excluded.cost_micros, \
             estimated = ai_usage_hourly.estimated + excluded.estimated";
        let spend = "INSERT INTO ai_budget_spend (budget_id, period_start, spent_micros) \
             VALUES ($1, $2, $3) ON CONFLICT (budget_id, period_start) DO UPDATE SET \
             spent_micros = ai_budget_spend.spent_micros + excluded.spent_micros";
        // requests, input, output, cached input, cache write, reasoning, cost, estimated
        type Sums = [i64; 8];
        let mut hourly: std::collections::BTreeMap<(i64, &str, &str, &str, &str), Sums> =
            std::collections::BTreeMap::new();
        let mut spends: std::collections::BTreeMap<(&str, i64), i64> =
            std::collections::BTreeMap::new();
        for r in rows {
            let inserted = sqlx::query(&insert)
                .bind(r.id.clone())
                .bind(r.at_ms)
                .bind(r.route_id.clone())
                .bind(r.api_key_id.clone())
                .bind(r.provider_id.clone())
                .bind(r.model.clone())
                .bind(r.input_tokens)
                .bind(r.output_tokens)
                .bind(r.cached_input_tokens)
                .bind(r.cache_write_input_tokens)
                .bind(r.reasoning_tokens)
                .bind(r.cost_micros)
                .bind(r.status)
                .bind(r.outcome.clone())
                .bind(r.latency_ms)
                .bind(i64::from(r.streamed))
                .bind(i64::from(r.estimated))
                .execute(&mut *tx)
                .await?
                .rows_affected();
            // A row written before (a retried batch) is counted once, then.
            if inserted == 0 {
                continue;
            }
            let hour = r.at_ms.div_euclid(HOUR) * HOUR;
            let sums = hourly
                .entry((hour, &r.api_key_id, &r.route_id, &r.provider_id, &r.model))
                .or_default();
            for (sum, v) in sums.iter_mut().zip([
                1,
                r.input_tokens,
                r.output_tokens,
                r.cached_input_tokens,
                r.cache_write_input_tokens,
                r.reasoning_tokens,
                r.cost_micros,
                i64::from(r.estimated),
            ]) {
                *sum = sum.saturating_add(v);
            }
            if r.cost_micros > 0 {
                for (budget, start) in &r.budgets {
                    let spent = spends.entry((budget, *start)).or_default();
                    *spent = spent.saturating_add(r.cost_micros);
                }
            }
        }
        for ((hour, key, route, provider, model), sums) in hourly {
            let mut q = sqlx::query(rollup)
                .bind(hour)
                .bind(key.to_string())
                .bind(route.to_string())
                .bind(provider.to_string())
                .bind(model.to_string());
            for v in sums {
                q = q.bind(v);
            }
            q.execute(&mut *tx).await?;
        }
        for ((budget, start), amount) in spends {
            sqlx::query(spend)
                .bind(budget.to_string())
                .bind(start)
                .bind(amount)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn ai_budget_spent(&self, budget_id: &str, period_start: i64) -> Result<i64> {
        let v: Option<i64> = sqlx::query(
            "SELECT spent_micros FROM ai_budget_spend WHERE budget_id = $1 AND period_start = $2",
        )
        .bind(budget_id.to_string())
        .bind(period_start)
        .fetch_optional(&self.pool)
        .await?
        .map(|r| r.try_get(0))
        .transpose()?;
        Ok(v.unwrap_or(0))
    }

    async fn lease_ai_allowance(
        &self,
        budget_id: &str,
        period_start: i64,
        holder: &str,
        need: i64,
        want: i64,
        now_ms: i64,
    ) -> Result<(i64, i64)> {
        if need < 0 || want < need {
            return Err(StoreError::Invalid(format!(
                "an allowance of {need} to {want} micro-USD cannot be leased"
            )));
        }
        let mut tx = self.begin_write().await?;
        // The budget's lock: leases of one budget take turns.
        let budget = locked(&mut tx, budget_id).await?;
        sqlx::query("DELETE FROM ai_budget_allowances WHERE budget_id = $1 AND period_start <> $2")
            .bind(budget_id.to_string())
            .bind(period_start)
            .execute(&mut *tx)
            .await?;
        let row = sqlx::query(
            "SELECT COUNT(*), CAST(COALESCE(SUM(granted_micros), 0) AS BIGINT) FROM ai_budget_allowances \
             WHERE budget_id = $1 AND period_start = $2",
        )
        .bind(budget_id.to_string())
        .bind(period_start)
        .fetch_one(&mut *tx)
        .await?;
        let (holders, mut granted): (i64, i64) = (row.try_get(0)?, row.try_get(1)?);
        if holders == 0 {
            // The period's first lease: what it recorded as spent before
            // (spent while the budget only alerted, or before allowances
            // existed) is held by no process and leased to none.
            let spent: i64 = sqlx::query(
                "SELECT CAST(COALESCE(MAX(spent_micros), 0) AS BIGINT) FROM ai_budget_spend \
                 WHERE budget_id = $1 AND period_start = $2",
            )
            .bind(budget_id.to_string())
            .bind(period_start)
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
            sqlx::query(
                "INSERT INTO ai_budget_allowances (budget_id, period_start, holder, granted_micros, updated_at) \
                 VALUES ($1, $2, '', $3, $4)",
            )
            .bind(budget_id.to_string())
            .bind(period_start)
            .bind(spent.max(0))
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
            granted = spent.max(0);
        }
        let available = budget.limit_micros.saturating_sub(granted).max(0);
        let grant = if available < need {
            0
        } else {
            want.min(available)
        };
        if grant > 0 {
            sqlx::query(
                "INSERT INTO ai_budget_allowances (budget_id, period_start, holder, granted_micros, updated_at) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (budget_id, period_start, holder) DO UPDATE SET \
                 granted_micros = ai_budget_allowances.granted_micros + excluded.granted_micros, \
                 updated_at = excluded.updated_at",
            )
            .bind(budget_id.to_string())
            .bind(period_start)
            .bind(holder.to_string())
            .bind(grant)
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok((grant, available - grant))
    }

    async fn return_ai_allowance(
        &self,
        budget_id: &str,
        period_start: i64,
        holder: &str,
        amount: i64,
        now_ms: i64,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE ai_budget_allowances SET granted_micros = CASE WHEN granted_micros > $4 \
             THEN granted_micros - $4 ELSE 0 END, updated_at = $5 \
             WHERE budget_id = $1 AND period_start = $2 AND holder = $3",
        )
        .bind(budget_id.to_string())
        .bind(period_start)
        .bind(holder.to_string())
        .bind(amount.max(0))
        .bind(now_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn ai_key_spend(&self, api_key_id: &str, from_ms: i64, to_ms: i64) -> Result<i64> {
        let v: Option<i64> = sqlx::query(
            "SELECT CAST(SUM(cost_micros) AS BIGINT) FROM ai_usage_hourly \
             WHERE api_key_id = $1 AND hour_ms >= $2 AND hour_ms < $3",
        )
        .bind(api_key_id.to_string())
        .bind(from_ms.div_euclid(HOUR) * HOUR)
        .bind(to_ms)
        .fetch_one(&self.pool)
        .await?
        .try_get(0)?;
        Ok(v.unwrap_or(0))
    }

    async fn ai_usage_totals(
        &self,
        from_ms: i64,
        to_ms: i64,
        group: Option<UsageGroup>,
    ) -> Result<Vec<UsageTotals>> {
        let key = group.map_or("''", UsageGroup::expr);
        let sql = match group {
            Some(_) => format!(
                "SELECT {key} AS k, {SUMS} FROM ai_usage_hourly \
                 WHERE hour_ms >= $1 AND hour_ms < $2 GROUP BY {key} \
                 ORDER BY 8 DESC, 1"
            ),
            None => format!(
                "SELECT {key} AS k, {SUMS} FROM ai_usage_hourly WHERE hour_ms >= $1 AND hour_ms < $2"
            ),
        };
        let rows = sqlx::query(&sql)
            .bind(from_ms.div_euclid(HOUR) * HOUR)
            .bind(to_ms)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let k: Option<String> = r.try_get(0)?;
                totals_row(r, k.unwrap_or_default())
            })
            .collect()
    }

    async fn recent_ai_usage(
        &self,
        from_ms: i64,
        to_ms: i64,
        limit: i64,
    ) -> Result<Vec<AiUsageRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {USAGE_COLS} FROM ai_usage WHERE at_ms >= $1 AND at_ms < $2 \
             ORDER BY at_ms DESC, id LIMIT $3"
        ))
        .bind(from_ms)
        .bind(to_ms)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let streamed: i64 = r.try_get("streamed")?;
                let estimated: i64 = r.try_get("estimated")?;
                Ok(AiUsageRow {
                    id: r.try_get("id")?,
                    at_ms: r.try_get("at_ms")?,
                    route_id: r.try_get("route_id")?,
                    api_key_id: r.try_get("api_key_id")?,
                    provider_id: r.try_get("provider_id")?,
                    model: r.try_get("model")?,
                    input_tokens: r.try_get("input_tokens")?,
                    output_tokens: r.try_get("output_tokens")?,
                    cached_input_tokens: r.try_get("cached_input_tokens")?,
                    cache_write_input_tokens: r.try_get("cache_write_input_tokens")?,
                    reasoning_tokens: r.try_get("reasoning_tokens")?,
                    cost_micros: r.try_get("cost_micros")?,
                    status: r.try_get("status")?,
                    outcome: r.try_get("outcome")?,
                    latency_ms: r.try_get("latency_ms")?,
                    streamed: streamed != 0,
                    estimated: estimated != 0,
                    budgets: Vec::new(),
                })
            })
            .collect()
    }
}
