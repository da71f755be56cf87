//! What the AI gateway's data plane needs beside the revision, and what it
//! reports back.
//!
//! [`AiGatewayInput`] is resolved by the manager when it publishes: each
//! provider with its endpoint and its key opened, the hashes of the API keys
//! that may call `ai` routes, and the budgets with what they had spent in
//! their current period. It is never part of a revision (provider keys must
//! not be in the revision document) and never serialized: it reaches the
//! built-in gateway of `fleetgate serve` in-process only.
//!
//! [`AiUsageRecord`]s go the other way, one per relayed request, through an
//! [`AiUsageSink`]; the manager writes them in batches, off the request path.

use std::sync::Arc;

use fleetgate_core::ai_gateway::{BudgetAction, BudgetPeriod};

/// The AI gateway's input; `version` changes whenever anything else does.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct AiGatewayInput {
    pub version: u64,
    pub providers: Vec<AiProviderInput>,
    /// API keys that may call `ai` routes.
    pub keys: Vec<AiCallerKey>,
    pub budgets: Vec<AiBudgetInput>,
    /// The operators' price overrides (`/api/v1/ai/prices`): they replace or
    /// add to the built-in price table when requests are priced.
    pub prices: fleetgate_ai::PriceTable,
}

impl std::fmt::Debug for AiGatewayInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AiGatewayInput")
            .field("version", &self.version)
            .field("providers", &self.providers)
            .field("keys", &self.keys.len())
            .field("budgets", &self.budgets)
            .field("prices", &self.prices.len())
            .finish()
    }
}

/// One enabled provider, ready to call.
#[derive(Clone, PartialEq, Eq)]
pub struct AiProviderInput {
    pub id: String,
    pub name: String,
    /// `openai`, `anthropic`, `gemini` or `openai_compatible`.
    pub kind: String,
    /// The endpoint requests go to (the provider's base URL, or its vendor's).
    pub base_url: String,
    /// The key in clear; shown by nothing (see the `Debug` impl).
    pub api_key: Option<String>,
    pub timeout_ms: u64,
}

impl std::fmt::Debug for AiProviderInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AiProviderInput")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<set>"))
            .finish()
    }
}

/// An API key allowed to call `ai` routes: its id and the SHA-256 hex of the
/// key, as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AiCallerKey {
    pub id: String,
    pub name: String,
    pub key_hash: String,
}

/// A budget as the data plane enforces it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AiBudgetInput {
    pub id: String,
    pub name: String,
    pub period: BudgetPeriod,
    /// The cap, in micro-USD.
    pub limit_micros: u64,
    /// Percent of the cap at which `ai.budget.threshold` is raised (1–100).
    pub alert_threshold_pct: u8,
    pub action: BudgetAction,
    /// Only this API key's requests count against it (all callers' when `None`).
    pub api_key_id: Option<String>,
    /// The start of the period `spent_micros` was counted in.
    pub period_start_ms: i64,
    /// What the store had recorded as spent in that period when published.
    pub spent_micros: u64,
}

/// One relayed request, metered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AiUsageRecord {
    pub id: String,
    /// When the request arrived, ms since the epoch.
    pub at_ms: i64,
    pub route_id: String,
    pub api_key_id: String,
    pub provider_id: String,
    pub model: String,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_input_tokens: u64,
    pub cache_write_input_tokens: u64,
    pub reasoning_tokens: u64,
    /// Micro-USD, rounded up.
    pub cost_micros: u64,
    /// The status the client got.
    pub status: u16,
    /// `ok`, `provider_error`, `cut` (the provider's stream broke) or
    /// `cancelled` (the client went away).
    pub outcome: String,
    pub latency_ms: u64,
    pub streamed: bool,
    /// The provider never reported usage: the counts are estimated from the
    /// bytes relayed (about four bytes a token).
    pub estimated: bool,
    /// Ids of the budgets the cost was charged to, with their period start.
    pub budgets: Vec<(String, i64)>,
}

/// Where the data plane sends usage records. Must not block.
pub trait AiUsageSink: Send + Sync {
    fn record(&self, r: AiUsageRecord);
}

impl<F: Fn(AiUsageRecord) + Send + Sync> AiUsageSink for F {
    fn record(&self, r: AiUsageRecord) {
        self(r)
    }
}

/// A shared sink.
pub type UsageSink = Arc<dyn AiUsageSink>;

/// What a lease of budget allowance got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllowanceGrant {
    /// Micro-USD added to this process's allowance (0 up to what was asked).
    pub granted: u64,
    /// What is still unleased in the period after this grant, micro-USD.
    pub left: u64,
}

/// A future returned by [`BudgetAllowances`].
pub type AllowanceFuture<T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, String>> + Send>>;

/// Where the data plane leases budget allowance from, so that gateway
/// processes sharing one store never spend past a `block` or `throttle`
/// budget's limit together: each process spends only from what it was granted,
/// and the store never grants more, over all processes, than the limit less
/// what was already spent. Only a process that runs out of allowance waits for
/// a lease; the rest of its requests decide in memory.
pub trait BudgetAllowances: Send + Sync {
    /// Grants this process up to `want` micro-USD more of `budget_id`'s period
    /// starting at `period_start`, or nothing when less than `need` is left
    /// (a grant too small to use would be stranded here).
    fn lease(
        &self,
        budget_id: &str,
        period_start: i64,
        need: u64,
        want: u64,
    ) -> AllowanceFuture<AllowanceGrant>;
    /// Returns `amount` of this process's allowance it will not spend (it is
    /// stopping), so that other processes may lease it.
    fn give_back(&self, budget_id: &str, period_start: i64, amount: u64) -> AllowanceFuture<()>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_shows_a_provider_key() {
        let input = AiGatewayInput {
            version: 3,
            providers: vec![AiProviderInput {
                id: "p1".into(),
                name: "openai".into(),
                kind: "openai".into(),
                base_url: "https://api.openai.com/v1".into(),
                api_key: Some("sk-live-SECRET-123".into()),
                timeout_ms: 1000,
            }],
            keys: vec![AiCallerKey {
                id: "k1".into(),
                name: "caller".into(),
                key_hash: "abcdef".into(),
            }],
            budgets: vec![],
            prices: Default::default(),
        };
        let config = crate::DataPlaneConfig {
            ai: Arc::new(input.clone()),
            ..Default::default()
        };
        for text in [
            format!("{input:?}"),
            format!("{config:?}"),
            format!("{config:#?}"),
        ] {
            assert!(!text.contains("SECRET"), "{text}");
            assert!(!text.contains("abcdef"), "{text}");
            assert!(text.contains("<set>"), "{text}");
        }
        // Nor is it serialized with the rest of the input (edges never get it).
        let json = serde_json::to_string(&config).expect("json");
        assert!(
            !json.contains("SECRET") && !json.contains("openai"),
            "{json}"
        );
    }
}
