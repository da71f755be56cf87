//! The AI price table (`/api/v1/ai/prices`): the built-in list prices and the
//! operators' overrides, which replace a built-in price or price a model the
//! table does not know. Rates are shown and taken as USD per million tokens
//! and kept exactly, as integer micro-USD per million. Every change is audited
//! and published at once: the AI gateway meters with the new price from its
//! next request, agent runs from their next start.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use fleetgate_ai::pricing::{format_usd, parse_usd, usd_from_f64, ModelPrice, PriceTier, Rates};
use fleetgate_ai::PriceTable;
use fleetgate_core::time::now_ms;
use fleetgate_core::user::Role;
use fleetgate_store::AiPriceRecord;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::ai_gateway::UsdAmount;
use super::rfc3339;
use crate::auth::AuthContext;
use crate::error::{ApiError, ApiResult};
use crate::extract::{JsonBody, ListEnvelope};
use crate::AppState;

/// Most tiers one price may have.
const MAX_TIERS: usize = 8;
/// Largest prompt size a tier may start above (far beyond any context window).
const MAX_TIER_TOKENS: u64 = 1_000_000_000_000;

/// Rates of a model in USD per million tokens: a number (`2.5`) or an exact
/// decimal string with at most six decimals (`"2.50"`), 0 or more. Cache
/// reads and writes default to `input_usd_per_million`, reasoning to
/// `output_usd_per_million`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PriceInput {
    /// Prompt tokens not read from or written to a cache.
    pub input_usd_per_million: UsdAmount,
    #[serde(default)]
    pub cached_input_usd_per_million: Option<UsdAmount>,
    #[serde(default)]
    pub cache_write_input_usd_per_million: Option<UsdAmount>,
    pub output_usd_per_million: UsdAmount,
    #[serde(default)]
    pub reasoning_usd_per_million: Option<UsdAmount>,
    /// Other rates for long prompts: the tier with the highest
    /// `above_input_tokens` below the prompt's size prices the whole request.
    #[serde(default)]
    #[schema(max_items = 8)]
    pub tiers: Vec<TierInput>,
}

/// Rates for prompts of more than `above_input_tokens` tokens.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TierInput {
    /// More than 0 and at most 10^12; distinct among the tiers of one price.
    #[schema(minimum = 1, maximum = 1_000_000_000_000_i64)]
    pub above_input_tokens: u64,
    pub input_usd_per_million: UsdAmount,
    #[serde(default)]
    pub cached_input_usd_per_million: Option<UsdAmount>,
    #[serde(default)]
    pub cache_write_input_usd_per_million: Option<UsdAmount>,
    pub output_usd_per_million: UsdAmount,
    #[serde(default)]
    pub reasoning_usd_per_million: Option<UsdAmount>,
}

/// Five rates, defaults resolved, in USD per million tokens (six decimals).
#[derive(Serialize, ToSchema)]
pub struct RatesView {
    pub input_usd_per_million: String,
    pub cached_input_usd_per_million: String,
    pub cache_write_input_usd_per_million: String,
    pub output_usd_per_million: String,
    pub reasoning_usd_per_million: String,
}

#[derive(Serialize, ToSchema)]
pub struct TierView {
    pub above_input_tokens: u64,
    #[serde(flatten)]
    pub rates: RatesView,
}

/// One model's price as requests are priced.
#[derive(Serialize, ToSchema)]
pub struct PriceRow {
    /// Lower case. A model is priced by its name, or else by the longest name
    /// here it starts with followed by `-` (`gpt-4o-2024-08-06` as `gpt-4o`).
    pub model: String,
    /// `builtin` (the list price Fleetgate ships) or `override` (an operator's).
    pub source: String,
    /// An override that replaces a built-in price (rather than adding a model).
    pub replaces_builtin: bool,
    #[serde(flatten)]
    pub rates: RatesView,
    pub tiers: Vec<TierView>,
    /// The override's version (counts up with each change); absent on built-in rows.
    pub version: Option<i64>,
    pub updated_at: Option<String>,
}

fn rates_view(r: Rates) -> RatesView {
    RatesView {
        input_usd_per_million: format_usd(r.input),
        cached_input_usd_per_million: format_usd(r.cached_input),
        cache_write_input_usd_per_million: format_usd(r.cache_write_input),
        output_usd_per_million: format_usd(r.output),
        reasoning_usd_per_million: format_usd(r.reasoning),
    }
}

fn row(model: &str, price: &ModelPrice, over: Option<&AiPriceRecord>, builtin: bool) -> PriceRow {
    let mut tiers: Vec<TierView> = price
        .tiers
        .iter()
        .map(|t| TierView {
            above_input_tokens: t.above_input_tokens,
            rates: rates_view(price.rates(t.above_input_tokens.saturating_add(1))),
        })
        .collect();
    tiers.sort_by_key(|t| t.above_input_tokens);
    PriceRow {
        model: model.to_string(),
        source: if over.is_some() {
            "override"
        } else {
            "builtin"
        }
        .into(),
        replaces_builtin: over.is_some() && builtin,
        rates: rates_view(price.rates(0)),
        tiers,
        version: over.map(|o| o.version),
        updated_at: over.map(|o| rfc3339(o.updated_at)),
    }
}

/// A model name an override may have: lower-cased; 1 to 128 characters,
/// no spaces, control characters or `/` (a `provider/` prefix is dropped
/// when a request is priced, so a name holding one would never match).
fn model_name(raw: &str) -> ApiResult<String> {
    let ok = !raw.is_empty()
        && raw.chars().count() <= 128
        && !raw
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || c == '/');
    if !ok {
        return Err(ApiError::bad_request(
            "model",
            "must be 1 to 128 characters without spaces, control characters or / (name the model as the provider does, without a provider/ prefix)",
        ));
    }
    Ok(raw.to_ascii_lowercase())
}

/// A rate in USD per million tokens → micro-USD per million tokens.
fn rate(field: &str, v: &UsdAmount) -> ApiResult<u64> {
    match v {
        UsdAmount::Number(f) => usd_from_f64(*f),
        UsdAmount::Text(s) => parse_usd(s),
    }
    .map_err(|e| ApiError::bad_request(field, format!("{e} (USD per million tokens)")))
}

fn opt_rate(field: &str, v: &Option<UsdAmount>) -> ApiResult<Option<u64>> {
    v.as_ref().map(|v| rate(field, v)).transpose()
}

/// The price `body` describes, checked; errors name the body's field.
fn price_of(body: &PriceInput) -> ApiResult<ModelPrice> {
    if body.tiers.len() > MAX_TIERS {
        return Err(ApiError::bad_request(
            "tiers",
            format!("at most {MAX_TIERS} tiers"),
        ));
    }
    let mut tiers = Vec::with_capacity(body.tiers.len());
    for (n, t) in body.tiers.iter().enumerate() {
        let f = |name: &str| format!("tiers[{n}].{name}");
        if t.above_input_tokens == 0 || t.above_input_tokens > MAX_TIER_TOKENS {
            return Err(ApiError::bad_request(
                &f("above_input_tokens"),
                format!("must be more than 0 and at most {MAX_TIER_TOKENS}: a tier prices prompts above a size (the base rates price the rest)"),
            ));
        }
        tiers.push(PriceTier {
            above_input_tokens: t.above_input_tokens,
            input: rate(&f("input_usd_per_million"), &t.input_usd_per_million)?,
            cached_input: opt_rate(
                &f("cached_input_usd_per_million"),
                &t.cached_input_usd_per_million,
            )?,
            cache_write_input: opt_rate(
                &f("cache_write_input_usd_per_million"),
                &t.cache_write_input_usd_per_million,
            )?,
            output: rate(&f("output_usd_per_million"), &t.output_usd_per_million)?,
            reasoning: opt_rate(
                &f("reasoning_usd_per_million"),
                &t.reasoning_usd_per_million,
            )?,
        });
    }
    let price = ModelPrice {
        input: rate("input_usd_per_million", &body.input_usd_per_million)?,
        cached_input: opt_rate(
            "cached_input_usd_per_million",
            &body.cached_input_usd_per_million,
        )?,
        cache_write_input: opt_rate(
            "cache_write_input_usd_per_million",
            &body.cache_write_input_usd_per_million,
        )?,
        output: rate("output_usd_per_million", &body.output_usd_per_million)?,
        reasoning: opt_rate("reasoning_usd_per_million", &body.reasoning_usd_per_million)?,
        tiers,
    };
    price.validate().map_err(|e| {
        // The price's own field names are its rates in micro-USD; the API's
        // are in USD per million tokens.
        let field = if e.field.ends_with("above_input_tokens") {
            e.field.clone()
        } else {
            format!("{}_usd_per_million", e.field)
        };
        let message = if e.message.contains("above the largest rate") {
            format!(
                "is above the largest rate accepted (USD {} per million tokens)",
                format_usd(fleetgate_ai::pricing::MAX_RATE)
            )
        } else {
            e.message
        };
        ApiError::bad_request(&field, message)
    })?;
    Ok(price)
}

async fn rows(state: &AppState) -> ApiResult<Vec<PriceRow>> {
    let builtin = PriceTable::builtin();
    let overrides = state.store.list_ai_prices().await?;
    let mut out = Vec::new();
    for o in &overrides {
        match serde_json::from_value::<ModelPrice>(o.price.clone()) {
            Ok(p) => out.push(row(
                &o.model,
                &p,
                Some(o),
                builtin.iter().any(|(m, _)| m == o.model),
            )),
            Err(e) => {
                tracing::error!(model = %o.model, error = %e, "stored AI price override does not read as a price")
            }
        }
    }
    for (model, price) in builtin.iter() {
        if !overrides.iter().any(|o| o.model == model) {
            out.push(row(model, price, None, true));
        }
    }
    out.sort_by(|a, b| a.model.cmp(&b.model));
    Ok(out)
}

#[utoipa::path(get, path = "/api/v1/ai/prices", operation_id = "list_ai_prices", tag = "ai",
    responses((status = 200, description = "The price table requests and agent runs are priced with: built-in list prices and operators' overrides, by model", body = ListEnvelope<PriceRow>)))]
pub async fn list(
    State(state): State<AppState>,
    _auth: AuthContext,
) -> ApiResult<axum::Json<ListEnvelope<PriceRow>>> {
    let items = rows(&state).await?;
    Ok(axum::Json(ListEnvelope::whole(items)))
}

#[utoipa::path(put, path = "/api/v1/ai/prices/{model}", operation_id = "put_ai_price", tag = "ai",
    params(("model" = String, Path, description = "Model name as the provider spells it (any case; kept in lower case)")),
    request_body = PriceInput,
    responses((status = 200, description = "The override is set and used from the next request", body = PriceRow)))]
pub async fn put(
    State(state): State<AppState>,
    auth: AuthContext,
    Path(model): Path<String>,
    JsonBody(body): JsonBody<PriceInput>,
) -> ApiResult<axum::Json<PriceRow>> {
    auth.require(Role::Admin)?;
    let model = model_name(&model)?;
    let price = price_of(&body)?;
    let value =
        serde_json::to_value(&price).map_err(|e| ApiError::internal("price serialization", e))?;
    let stored = state
        .store
        .put_ai_price(
            &auth.actor,
            &AiPriceRecord {
                model: model.clone(),
                price: value,
                version: 0,
                updated_at: now_ms(),
            },
        )
        .await?;
    state.refresh_ai().await;
    let builtin = PriceTable::builtin().iter().any(|(m, _)| m == model);
    Ok(axum::Json(row(&model, &price, Some(&stored), builtin)))
}

#[utoipa::path(delete, path = "/api/v1/ai/prices/{model}", operation_id = "delete_ai_price", tag = "ai",
    params(("model" = String, Path, description = "Model name of the override")),
    responses((status = 204, description = "The override is dropped: the built-in price (if any) holds again from the next request")))]
pub async fn delete(
    State(state): State<AppState>,
    auth: AuthContext,
    Path(model): Path<String>,
) -> ApiResult<StatusCode> {
    auth.require(Role::Admin)?;
    let model = model_name(&model)?;
    state.store.delete_ai_price(&auth.actor, &model).await?;
    state.refresh_ai().await;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(v: serde_json::Value) -> PriceInput {
        serde_json::from_value(v).expect("input")
    }

    fn field_of(r: ApiResult<ModelPrice>) -> String {
        let e = r.expect_err("refused");
        e.details["field"].as_str().unwrap_or_default().to_string()
    }

    #[test]
    fn prices_are_taken_in_usd_per_million_exactly() {
        let p = price_of(&input(serde_json::json!({
            "input_usd_per_million": "2.50", "output_usd_per_million": 10,
            "tiers": [{"above_input_tokens": 200000, "input_usd_per_million": 0.1,
                       "output_usd_per_million": "0"}]})))
        .expect("valid");
        assert_eq!((p.input, p.output), (2_500_000, 10_000_000));
        assert_eq!((p.tiers[0].input, p.tiers[0].output), (100_000, 0));
    }

    #[test]
    fn bad_prices_are_refused_naming_the_field() {
        let cases = [
            (
                serde_json::json!({"input_usd_per_million": -1, "output_usd_per_million": 1}),
                "input_usd_per_million",
            ),
            (
                serde_json::json!({"input_usd_per_million": "1", "output_usd_per_million": "1e3"}),
                "output_usd_per_million",
            ),
            (
                serde_json::json!({"input_usd_per_million": 1, "output_usd_per_million": 1,
                                   "reasoning_usd_per_million": "200000"}),
                "reasoning_usd_per_million",
            ),
            (
                serde_json::json!({"input_usd_per_million": 1, "output_usd_per_million": 1,
                    "tiers": [{"above_input_tokens": 0, "input_usd_per_million": 1, "output_usd_per_million": 1}]}),
                "tiers[0].above_input_tokens",
            ),
            (
                serde_json::json!({"input_usd_per_million": 1, "output_usd_per_million": 1,
                    "tiers": [{"above_input_tokens": 5, "input_usd_per_million": 1, "output_usd_per_million": 1},
                              {"above_input_tokens": 5, "input_usd_per_million": 2, "output_usd_per_million": 2}]}),
                "tiers[1].above_input_tokens",
            ),
        ];
        for (body, field) in cases {
            assert_eq!(field_of(price_of(&input(body.clone()))), field, "{body}");
        }
    }

    #[test]
    fn model_names_are_checked_and_lower_cased() {
        assert_eq!(model_name("GPT-4o").expect("ok"), "gpt-4o");
        for bad in ["", "a b", "openai/gpt-4o", "x\u{7}", &"m".repeat(129)] {
            assert!(model_name(bad).is_err(), "{bad:?}");
        }
    }
}
