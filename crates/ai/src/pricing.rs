//! What a model's tokens cost, in integer micro-USD (1 USD = 1,000,000).
//!
//! Prices are rates in micro-USD per million tokens, so that every published
//! price (down to $0.005 per million) is an integer and a cost is exact integer
//! arithmetic: the parts of a request (uncached input, cache reads, cache
//! writes, output, reasoning) are priced in pico-USD, added, and rounded *up*
//! to a micro-USD once. A request is never priced below what it cost; the sum
//! of many requests is at most one micro-USD per request above the exact sum.
//!
//! A model may have tiers: above a prompt size the whole request is priced at
//! other rates (long-context pricing). [`PriceTable::builtin`] holds list
//! prices of common models; operators add or replace entries
//! ([`PriceTable::with_overrides`]) — a model not in the table has no price and
//! a caller decides what that means (the gateway refuses to meter blind).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::types::Usage;

/// Micro-USD: 1 USD is 1,000,000.
pub type Micros = u64;

const PER_MILLION: u128 = 1_000_000;

/// The rates of one model, in micro-USD per million tokens. Rates left out
/// default to the plain one: cache reads and writes to `input`, reasoning to
/// `output`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelPrice {
    /// Prompt tokens not read from or written to a cache.
    pub input: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_input: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write_input: Option<u64>,
    pub output: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<u64>,
    /// Other rates for prompts above a size; the highest tier whose
    /// `above_input_tokens` the prompt exceeds prices the whole request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tiers: Vec<PriceTier>,
}

/// Rates for prompts of more than `above_input_tokens` tokens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceTier {
    pub above_input_tokens: u64,
    pub input: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_input: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write_input: Option<u64>,
    pub output: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<u64>,
}

/// The five rates that price one request, defaults resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rates {
    pub input: u64,
    pub cached_input: u64,
    pub cache_write_input: u64,
    pub output: u64,
    pub reasoning: u64,
}

impl Rates {
    fn of(
        input: u64,
        cached_input: Option<u64>,
        cache_write_input: Option<u64>,
        output: u64,
        reasoning: Option<u64>,
    ) -> Self {
        Self {
            input,
            cached_input: cached_input.unwrap_or(input),
            cache_write_input: cache_write_input.unwrap_or(input),
            output,
            reasoning: reasoning.unwrap_or(output),
        }
    }
}

/// Why a price was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct PriceError {
    /// Where, relative to the price (`tiers[1].above_input_tokens`).
    pub field: String,
    pub message: String,
}

/// Above any published price (USD 100,000 per million tokens): a rate this
/// high is a mistake in units, not a price.
pub const MAX_RATE: u64 = 100_000 * 1_000_000;

impl ModelPrice {
    /// The rates a request with a prompt of `input_tokens` is priced at.
    pub fn rates(&self, input_tokens: u64) -> Rates {
        let base = Rates::of(
            self.input,
            self.cached_input,
            self.cache_write_input,
            self.output,
            self.reasoning,
        );
        self.tiers
            .iter()
            .filter(|t| input_tokens > t.above_input_tokens)
            .max_by_key(|t| t.above_input_tokens)
            .map_or(base, |t| {
                Rates::of(
                    t.input,
                    t.cached_input,
                    t.cache_write_input,
                    t.output,
                    t.reasoning,
                )
            })
    }

    /// What `usage` cost, rounded up to a micro-USD.
    ///
    /// Cache reads and writes and reasoning are parts of the input and output
    /// counts ([`Usage`]); a report whose parts exceed their whole (a
    /// provider's mistake) is priced as if the whole were their sum, never
    /// below what the parts cost.
    pub fn cost(&self, usage: &Usage) -> Micros {
        let cached_parts = usage
            .cached_input_tokens
            .saturating_add(usage.cache_write_input_tokens);
        let input_tokens = usage.input_tokens.max(cached_parts);
        let r = self.rates(input_tokens);
        let uncached = u128::from(input_tokens - cached_parts);
        let output_tokens = usage.output_tokens.max(usage.reasoning_tokens);
        let plain_output = u128::from(output_tokens - usage.reasoning_tokens);
        let pico = uncached * u128::from(r.input)
            + u128::from(usage.cached_input_tokens) * u128::from(r.cached_input)
            + u128::from(usage.cache_write_input_tokens) * u128::from(r.cache_write_input)
            + plain_output * u128::from(r.output)
            + u128::from(usage.reasoning_tokens) * u128::from(r.reasoning);
        saturate(pico.div_ceil(PER_MILLION))
    }

    /// The most a request with a prompt of `input_tokens` tokens and at most
    /// `max_output_tokens` generated can cost: every prompt token at the
    /// dearest input rate (a cache write may cost more than plain input),
    /// every generated one at the dearer of output and reasoning. What a
    /// budget reserves before the request is sent.
    pub fn worst_case(&self, input_tokens: u64, max_output_tokens: u64) -> Micros {
        let r = self.rates(input_tokens);
        let in_rate = r.input.max(r.cached_input).max(r.cache_write_input);
        let out_rate = r.output.max(r.reasoning);
        let pico = u128::from(input_tokens) * u128::from(in_rate)
            + u128::from(max_output_tokens) * u128::from(out_rate);
        saturate(pico.div_ceil(PER_MILLION))
    }

    /// Checks rates and tiers: every rate at most [`MAX_RATE`], tier
    /// thresholds distinct.
    pub fn validate(&self) -> Result<(), PriceError> {
        let check = |field: &str, v: Option<u64>| {
            match v {
            Some(v) if v > MAX_RATE => Err(PriceError {
                field: field.to_string(),
                message: format!(
                    "{v} micro-USD per million tokens is above the largest rate accepted ({MAX_RATE}); rates are in micro-USD per million tokens (USD 2.50 per million is 2500000)"
                ),
            }),
            _ => Ok(()),
        }
        };
        let rates = |prefix: &str, i, ci, cw, o, r| -> Result<(), PriceError> {
            check(&format!("{prefix}input"), Some(i))?;
            check(&format!("{prefix}cached_input"), ci)?;
            check(&format!("{prefix}cache_write_input"), cw)?;
            check(&format!("{prefix}output"), Some(o))?;
            check(&format!("{prefix}reasoning"), r)
        };
        rates(
            "",
            self.input,
            self.cached_input,
            self.cache_write_input,
            self.output,
            self.reasoning,
        )?;
        let mut seen = std::collections::BTreeSet::new();
        for (n, t) in self.tiers.iter().enumerate() {
            let prefix = format!("tiers[{n}].");
            if !seen.insert(t.above_input_tokens) {
                return Err(PriceError {
                    field: format!("{prefix}above_input_tokens"),
                    message: format!(
                        "another tier already starts above {} input tokens",
                        t.above_input_tokens
                    ),
                });
            }
            rates(
                &prefix,
                t.input,
                t.cached_input,
                t.cache_write_input,
                t.output,
                t.reasoning,
            )?;
        }
        Ok(())
    }
}

fn saturate(v: u128) -> u64 {
    u64::try_from(v).unwrap_or(u64::MAX)
}

/// Prices by model name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PriceTable {
    models: BTreeMap<String, ModelPrice>,
}

impl PriceTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// List prices of common OpenAI, Anthropic and Google models as their
    /// providers published them in 2025 (USD per million tokens, written here
    /// in micro-USD). Providers change prices: an operator's overrides win.
    pub fn builtin() -> Self {
        let mut t = Self::new();
        for &(name, input, cached, cache_write, output) in BUILTIN {
            t.insert(
                name,
                ModelPrice {
                    input,
                    cached_input: Some(cached),
                    cache_write_input: cache_write,
                    output,
                    reasoning: None,
                    tiers: Vec::new(),
                },
            );
        }
        // Long-context rates: the whole request above 200k prompt tokens.
        for (name, tier) in [
            (
                "claude-sonnet-4",
                tier(200_000, 6_000_000, 600_000, Some(7_500_000), 22_500_000),
            ),
            (
                "claude-sonnet-4-5",
                tier(200_000, 6_000_000, 600_000, Some(7_500_000), 22_500_000),
            ),
            (
                "gemini-2.5-pro",
                tier(200_000, 2_500_000, 625_000, None, 15_000_000),
            ),
        ] {
            if let Some(p) = t.models.get_mut(name) {
                p.tiers.push(tier);
            }
        }
        t
    }

    /// This table with `overrides` added, replacing entries of the same name.
    pub fn with_overrides(mut self, overrides: &PriceTable) -> Self {
        for (name, price) in &overrides.models {
            self.insert(name.clone(), price.clone());
        }
        self
    }

    pub fn insert(&mut self, model: impl Into<String>, price: ModelPrice) {
        self.models.insert(model.into().to_ascii_lowercase(), price);
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &ModelPrice)> {
        self.models.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn len(&self) -> usize {
        self.models.len()
    }

    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }

    /// Validates every entry; the field is `<model>.<field>`.
    pub fn validate(&self) -> Result<(), PriceError> {
        for (name, price) in &self.models {
            if name.is_empty() || name.len() > 128 || name.chars().any(|c| c.is_control()) {
                return Err(PriceError {
                    field: name.clone(),
                    message: "a model name is 1 to 128 characters without control characters"
                        .into(),
                });
            }
            price.validate().map_err(|e| PriceError {
                field: format!("{name}.{}", e.field),
                message: e.message,
            })?;
        }
        Ok(())
    }

    /// The price of `model` and the entry that gave it: the entry of that
    /// name (any case), else the longest entry the name starts with followed
    /// by `-` (`gpt-4o-2024-08-06` → `gpt-4o`, a dated snapshot priced as its
    /// family), after dropping a `provider/` prefix (`openai/gpt-4o`).
    pub fn get(&self, model: &str) -> Option<(&str, &ModelPrice)> {
        let lower = model.to_ascii_lowercase();
        let name = lower.rsplit_once('/').map_or(lower.as_str(), |(_, m)| m);
        if let Some((k, v)) = self.models.get_key_value(name) {
            return Some((k.as_str(), v));
        }
        let mut end = name.len();
        while let Some(dash) = name[..end].rfind('-') {
            if let Some((k, v)) = self.models.get_key_value(&name[..dash]) {
                return Some((k.as_str(), v));
            }
            end = dash;
        }
        None
    }

    /// What `usage` on `model` cost; `None` when the model has no price.
    pub fn cost(&self, model: &str, usage: &Usage) -> Option<Micros> {
        self.get(model).map(|(_, p)| p.cost(usage))
    }

    /// [`ModelPrice::worst_case`] of `model`; `None` when it has no price.
    pub fn worst_case(
        &self,
        model: &str,
        input_tokens: u64,
        max_output_tokens: u64,
    ) -> Option<Micros> {
        self.get(model)
            .map(|(_, p)| p.worst_case(input_tokens, max_output_tokens))
    }
}

fn tier(above: u64, input: u64, cached: u64, cache_write: Option<u64>, output: u64) -> PriceTier {
    PriceTier {
        above_input_tokens: above,
        input,
        cached_input: Some(cached),
        cache_write_input: cache_write,
        output,
        reasoning: None,
    }
}

/// (model, input, cache read, cache write, output) in micro-USD per million
/// tokens; a cache write of `None` costs as plain input.
#[rustfmt::skip]
const BUILTIN: &[(&str, u64, u64, Option<u64>, u64)] = &[
    ("gpt-4o",            2_500_000,  1_250_000, None,  10_000_000),
    ("gpt-4o-mini",         150_000,     75_000, None,     600_000),
    ("gpt-4.1",           2_000_000,    500_000, None,   8_000_000),
    ("gpt-4.1-mini",        400_000,    100_000, None,   1_600_000),
    ("gpt-4.1-nano",        100_000,     25_000, None,     400_000),
    ("gpt-5",             1_250_000,    125_000, None,  10_000_000),
    ("gpt-5-mini",          250_000,     25_000, None,   2_000_000),
    ("gpt-5-nano",           50_000,      5_000, None,     400_000),
    ("o3",                2_000_000,    500_000, None,   8_000_000),
    ("o4-mini",           1_100_000,    275_000, None,   4_400_000),
    ("claude-opus-4",    15_000_000,  1_500_000, Some(18_750_000), 75_000_000),
    ("claude-opus-4-1",  15_000_000,  1_500_000, Some(18_750_000), 75_000_000),
    ("claude-sonnet-4",   3_000_000,    300_000, Some(3_750_000),  15_000_000),
    ("claude-sonnet-4-5", 3_000_000,    300_000, Some(3_750_000),  15_000_000),
    ("claude-haiku-4-5",  1_000_000,    100_000, Some(1_250_000),   5_000_000),
    ("claude-3-5-haiku",    800_000,     80_000, Some(1_000_000),   4_000_000),
    ("gemini-2.5-pro",    1_250_000,    310_000, None,  10_000_000),
    ("gemini-2.5-flash",    300_000,     75_000, None,   2_500_000),
    ("gemini-2.5-flash-lite", 100_000,   25_000, None,     400_000),
    ("gemini-2.0-flash",    100_000,     25_000, None,     400_000),
];

/// Why an amount of USD was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UsdError(String);

/// Most USD an amount may be: far above any budget, far below `u64::MAX` micro-USD.
pub const MAX_USD: u64 = 1_000_000_000;

/// `12.5` or `"12.50"` → 12,500,000 micro-USD, exactly: a plain decimal of
/// at most six decimals, not negative, at most [`MAX_USD`]. No exponent, sign,
/// or spaces.
pub fn parse_usd(s: &str) -> Result<Micros, UsdError> {
    let bad = |why: &str| UsdError(format!("{s:?} is not an amount of USD: {why}"));
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("write digits, with at most six after a `.` (12.50)"));
    }
    if s.ends_with('.') || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("write digits, with at most six after a `.` (12.50)"));
    }
    if frac.len() > 6 {
        return Err(bad("at most six decimals (a micro-USD)"));
    }
    let whole: u64 = whole
        .trim_start_matches('0')
        .parse::<u64>()
        .or_else(|e| {
            if whole.bytes().all(|b| b == b'0') {
                Ok(0)
            } else {
                Err(e)
            }
        })
        .ok()
        .filter(|w| *w <= MAX_USD)
        .ok_or_else(|| bad(&format!("more than {MAX_USD}")))?;
    let mut micros = 0u64;
    for (i, d) in frac.bytes().enumerate() {
        micros += u64::from(d - b'0') * 10u64.pow(5 - i as u32);
    }
    let total = whole * 1_000_000 + micros;
    if total > MAX_USD * 1_000_000 {
        return Err(bad(&format!("more than {MAX_USD}")));
    }
    Ok(total)
}

/// A JSON number of USD → micro-USD, through its shortest decimal spelling
/// (`12.5` → 12,500,000), so that `0.1` is exactly 100,000.
pub fn usd_from_f64(v: f64) -> Result<Micros, UsdError> {
    if !v.is_finite() || v < 0.0 {
        return Err(UsdError(format!(
            "{v} is not an amount of USD: a number from 0 up"
        )));
    }
    let s = format!("{v}");
    parse_usd(&s)
}

/// Micro-USD written as USD with six decimals: `12500000` → `"12.500000"`.
pub fn format_usd(micros: Micros) -> String {
    format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn usage(input: u64, cached: u64, cache_write: u64, output: u64, reasoning: u64) -> Usage {
        Usage {
            input_tokens: input,
            output_tokens: output,
            cached_input_tokens: cached,
            cache_write_input_tokens: cache_write,
            reasoning_tokens: reasoning,
        }
    }

    #[test]
    fn costs_match_a_hand_calculation() {
        let t = PriceTable::builtin();
        // gpt-4o: 1,000 prompt tokens of which 400 cached, 500 generated.
        // 600 × $2.50/M + 400 × $1.25/M + 500 × $10/M
        //   = $0.0015 + $0.0005 + $0.005 = $0.007 = 7,000 µUSD.
        assert_eq!(t.cost("gpt-4o", &usage(1_000, 400, 0, 500, 0)), Some(7_000));
        // o3 with reasoning (priced as output): 2,000 in, 3,000 out of which
        // 2,500 reasoning: 2,000 × $2 + 3,000 × $8 = $0.004 + $0.024.
        assert_eq!(
            t.cost("o3", &usage(2_000, 0, 0, 3_000, 2_500)),
            Some(28_000)
        );
        // claude-sonnet-4 with cache reads and writes: 10,000 in = 6,000 plain
        // + 3,000 read + 1,000 written; 1,000 out.
        // 6,000 × $3 + 3,000 × $0.30 + 1,000 × $3.75 + 1,000 × $15
        //   = 18,000 + 900 + 3,750 + 15,000 µUSD.
        assert_eq!(
            t.cost("claude-sonnet-4", &usage(10_000, 3_000, 1_000, 1_000, 0)),
            Some(37_650)
        );
        // Above 200k prompt tokens the whole request takes the tier's rates:
        // 250,000 × $6 + 1,000 × $22.50 = 1,500,000 + 22,500 µUSD.
        assert_eq!(
            t.cost("claude-sonnet-4", &usage(250_000, 0, 0, 1_000, 0)),
            Some(1_522_500)
        );
        // At exactly 200k the base rates still apply.
        assert_eq!(
            t.cost("claude-sonnet-4", &usage(200_000, 0, 0, 0, 0)),
            Some(600_000)
        );
        // gemini-2.5-pro, long context: 300,000 × $2.50 + 100 × $15.
        assert_eq!(
            t.cost("gemini-2.5-pro", &usage(300_000, 0, 0, 100, 0)),
            Some(751_500)
        );
    }

    #[test]
    fn a_fraction_of_a_micro_usd_rounds_up() {
        let t = PriceTable::builtin();
        // One gpt-5-nano prompt token: $0.05/M = 0.05 µUSD → 1 µUSD.
        assert_eq!(t.cost("gpt-5-nano", &usage(1, 0, 0, 0, 0)), Some(1));
        assert_eq!(t.cost("gpt-5-nano", &usage(0, 0, 0, 0, 0)), Some(0));
        // 21 tokens: 1.05 µUSD → 2.
        assert_eq!(t.cost("gpt-5-nano", &usage(21, 0, 0, 0, 0)), Some(2));
    }

    #[test]
    fn names_find_their_family() {
        let t = PriceTable::builtin();
        assert_eq!(t.get("gpt-4o-2024-08-06").expect("present").0, "gpt-4o");
        assert_eq!(
            t.get("gpt-4o-mini-2024-07-18").expect("present").0,
            "gpt-4o-mini"
        );
        assert_eq!(t.get("GPT-4o").expect("present").0, "gpt-4o");
        assert_eq!(
            t.get("openai/gpt-4.1-mini").expect("present").0,
            "gpt-4.1-mini"
        );
        assert_eq!(
            t.get("claude-sonnet-4-5-20250929").expect("present").0,
            "claude-sonnet-4-5"
        );
        assert_eq!(
            t.get("claude-sonnet-4-20250514").expect("present").0,
            "claude-sonnet-4"
        );
        assert!(t.get("gpt-4").is_none());
        assert!(t.get("unknown-model").is_none());
        assert!(t.get("").is_none());
        assert_eq!(t.cost("nope", &Usage::default()), None);
    }

    #[test]
    fn overrides_replace_and_add() {
        let mut o = PriceTable::new();
        o.insert(
            "gpt-4o",
            ModelPrice {
                input: 1_000_000,
                cached_input: None,
                cache_write_input: None,
                output: 2_000_000,
                reasoning: None,
                tiers: vec![],
            },
        );
        o.insert(
            "Local-Llama",
            ModelPrice {
                input: 0,
                cached_input: None,
                cache_write_input: None,
                output: 1,
                reasoning: None,
                tiers: vec![],
            },
        );
        let t = PriceTable::builtin().with_overrides(&o);
        // Cached tokens default to the input rate when the override has none.
        assert_eq!(
            t.cost("gpt-4o", &usage(1_000, 500, 0, 1_000, 0)),
            Some(3_000)
        );
        assert_eq!(t.get("local-llama").expect("present").0, "local-llama");
        assert_eq!(t.len(), PriceTable::builtin().len() + 1);
    }

    #[test]
    fn prices_read_from_json_and_are_checked() {
        let t: PriceTable = serde_json::from_str(
            r#"{"m": {"input": 1000000, "output": 2000000,
                      "tiers": [{"above_input_tokens": 10, "input": 3000000, "output": 4000000}]}}"#,
        )
        .expect("present");
        t.validate().expect("present");
        assert_eq!(t.cost("m", &usage(11, 0, 0, 1, 0)), Some(37));
        let err =
            serde_json::from_str::<PriceTable>(r#"{"m": {"input": 1, "output": 1, "inptu": 2}}"#)
                .expect_err("refused");
        assert!(err.to_string().contains("inptu"), "{err}");
        let t: PriceTable = serde_json::from_str(
            r#"{"m": {"input": 1, "output": 1, "tiers": [
                {"above_input_tokens": 5, "input": 1, "output": 1},
                {"above_input_tokens": 5, "input": 2, "output": 2}]}}"#,
        )
        .expect("present");
        assert_eq!(
            t.validate().expect_err("refused").field,
            "m.tiers[1].above_input_tokens"
        );
        let t: PriceTable =
            serde_json::from_str(r#"{"m": {"input": 1, "output": 100000000000001}}"#)
                .expect("present");
        assert_eq!(t.validate().expect_err("refused").field, "m.output");
    }

    #[test]
    fn usd_amounts_parse_exactly() {
        assert_eq!(parse_usd("12.50"), Ok(12_500_000));
        assert_eq!(parse_usd("0"), Ok(0));
        assert_eq!(parse_usd("000"), Ok(0));
        assert_eq!(parse_usd("0.000001"), Ok(1));
        assert_eq!(parse_usd("1000000000"), Ok(MAX_USD * 1_000_000));
        for bad in [
            "",
            ".5",
            "5.",
            "-1",
            "+1",
            "1e3",
            "1.0000001",
            " 1",
            "1 ",
            "1,5",
            "NaN",
            "1000000000.000001",
            "99999999999999999999999",
        ] {
            assert!(parse_usd(bad).is_err(), "{bad:?}");
        }
        assert_eq!(usd_from_f64(0.1), Ok(100_000));
        assert_eq!(usd_from_f64(12.5), Ok(12_500_000));
        assert_eq!(usd_from_f64(3.0), Ok(3_000_000));
        assert!(usd_from_f64(-0.5).is_err());
        assert!(usd_from_f64(f64::NAN).is_err());
        assert!(usd_from_f64(f64::INFINITY).is_err());
        assert!(usd_from_f64(1e-7).is_err());
        assert_eq!(format_usd(12_500_000), "12.500000");
        assert_eq!(format_usd(1), "0.000001");
    }

    fn price() -> impl Strategy<Value = ModelPrice> {
        let rate = 0u64..200_000_000;
        (
            rate.clone(),
            proptest::option::of(rate.clone()),
            proptest::option::of(rate.clone()),
            rate.clone(),
            proptest::option::of(rate.clone()),
            proptest::collection::vec((0u64..1_000_000, rate.clone(), rate), 0..3),
        )
            .prop_map(|(input, ci, cw, output, r, tiers)| ModelPrice {
                input,
                cached_input: ci,
                cache_write_input: cw,
                output,
                reasoning: r,
                tiers: tiers
                    .into_iter()
                    .map(|(above, i, o)| PriceTier {
                        above_input_tokens: above,
                        input: i,
                        cached_input: None,
                        cache_write_input: None,
                        output: o,
                        reasoning: None,
                    })
                    .collect(),
            })
    }

    fn any_usage() -> impl Strategy<Value = Usage> {
        let n = 0u64..2_000_000;
        (n.clone(), n.clone(), n.clone(), n.clone(), n).prop_map(|(i, c, w, o, r)| Usage {
            input_tokens: i,
            output_tokens: o,
            cached_input_tokens: c,
            cache_write_input_tokens: w,
            reasoning_tokens: r,
        })
    }

    proptest! {
        /// The cost is the exact sum of the parts, rounded up once (the parts
        /// here stay below 2^53, so the float sum is exact).
        #[test]
        fn cost_is_the_rounded_up_exact_sum(p in price(), u in any_usage()) {
            let input = u.input_tokens.max(u.cached_input_tokens + u.cache_write_input_tokens);
            let output = u.output_tokens.max(u.reasoning_tokens);
            let r = p.rates(input);
            let part = |tokens: u64, rate: u64| tokens as f64 * rate as f64;
            let exact = part(input - u.cached_input_tokens - u.cache_write_input_tokens, r.input)
                + part(u.cached_input_tokens, r.cached_input)
                + part(u.cache_write_input_tokens, r.cache_write_input)
                + part(output - u.reasoning_tokens, r.output)
                + part(u.reasoning_tokens, r.reasoning);
            prop_assert!(exact < 9.0e15);
            prop_assert_eq!(p.cost(&u), (exact as u64).div_ceil(1_000_000));
        }

        /// A request never costs more than what was reserved for it.
        #[test]
        fn worst_case_bounds_the_cost(p in price(), u in any_usage()) {
            let input = u.input_tokens.max(u.cached_input_tokens + u.cache_write_input_tokens);
            let output = u.output_tokens.max(u.reasoning_tokens);
            prop_assert!(p.cost(&u) <= p.worst_case(input, output));
        }

        #[test]
        fn usd_round_trips(m in 0u64..=MAX_USD * 1_000_000) {
            prop_assert_eq!(parse_usd(&format_usd(m)), Ok(m));
        }

        #[test]
        fn usd_parsing_never_panics(s in "\\PC{0,30}") {
            let _ = parse_usd(&s);
        }
    }
}
