//! The manager's side of the AI gateway: the input the data plane enforces
//! (providers with their keys opened, the API keys that may call `ai` routes,
//! budgets with what they spent in their period), published on the data
//! plane's feed; and the usage records the data plane sends back, queued
//! without blocking it and written to the store in batches.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleetgate_ai::{ModelPrice, PriceTable, ProviderKind};
use fleetgate_core::ai_gateway::{BudgetAction, BudgetPeriod};
use fleetgate_protocol::ai::{
    AiBudgetInput, AiCallerKey, AiGatewayInput, AiProviderInput, AiUsageRecord, AiUsageSink,
    AllowanceFuture, AllowanceGrant, BudgetAllowances,
};
use fleetgate_store::{AiUsageRow, PageRequest, Store, StoreError};
use tokio::sync::{mpsc, watch};

use crate::AppState;

/// Most usage rows written in one transaction.
const BATCH: usize = 500;

/// How long the writer gathers records after the first of a batch before it
/// writes them: one transaction (and one disk sync) per half second at most
/// under steady traffic, instead of one per request, and no store work woken
/// between two requests of a caller.
const LINGER: Duration = Duration::from_millis(500);

/// Usage records on their way to the store. The data plane's end
/// ([`AiUsageSink::record`]) never blocks: records queue in memory while the
/// store is slow.
pub struct UsageQueue {
    tx: mpsc::UnboundedSender<AiUsageRecord>,
    rx: Mutex<Option<mpsc::UnboundedReceiver<AiUsageRecord>>>,
}

impl Default for UsageQueue {
    fn default() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Self {
            tx,
            rx: Mutex::new(Some(rx)),
        }
    }
}

impl AiUsageSink for UsageQueue {
    fn record(&self, r: AiUsageRecord) {
        if self.tx.send(r).is_err() {
            tracing::warn!("AI usage record dropped: the usage writer has stopped");
        }
    }
}

fn row(r: AiUsageRecord) -> AiUsageRow {
    let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    AiUsageRow {
        id: r.id,
        at_ms: r.at_ms,
        route_id: r.route_id,
        api_key_id: r.api_key_id,
        provider_id: r.provider_id,
        model: r.model,
        input_tokens: n(r.input_tokens),
        output_tokens: n(r.output_tokens),
        cached_input_tokens: n(r.cached_input_tokens),
        cache_write_input_tokens: n(r.cache_write_input_tokens),
        reasoning_tokens: n(r.reasoning_tokens),
        cost_micros: n(r.cost_micros),
        status: i64::from(r.status),
        outcome: r.outcome,
        latency_ms: n(r.latency_ms),
        streamed: r.streamed,
        estimated: r.estimated,
        budgets: r.budgets,
    }
}

impl UsageQueue {
    /// Writes queued records in batches (gathered for up to [`LINGER`] after
    /// the first) until `shutdown`, then writes what is left at once. A batch the store refuses is tried again (rows are written once
    /// by id, so a retry never counts twice), a few times, then logged and
    /// dropped.
    pub fn spawn_writer(
        self: &Arc<Self>,
        store: Arc<dyn Store>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let Some(mut rx) = self.rx.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return;
        };
        tokio::spawn(async move {
            loop {
                let (first, stopping) = tokio::select! {
                    r = rx.recv() => (r, false),
                    _ = shutdown.wait_for(|d| *d) => (None, true),
                };
                let first = if stopping {
                    // Write what is queued, then stop.
                    rx.close();
                    rx.recv().await
                } else {
                    first
                };
                let Some(first) = first else { return };
                let mut batch = vec![row(first)];
                let until = tokio::time::Instant::now() + LINGER;
                while batch.len() < BATCH {
                    if stopping || *shutdown.borrow() {
                        // No lingering on the way out: what is queued now goes.
                        match rx.try_recv() {
                            Ok(r) => batch.push(row(r)),
                            Err(_) => break,
                        }
                        continue;
                    }
                    tokio::select! {
                        r = rx.recv() => match r {
                            Some(r) => batch.push(row(r)),
                            None => break,
                        },
                        () = tokio::time::sleep_until(until) => break,
                        _ = shutdown.wait_for(|d| *d) => {}
                    }
                }
                write(store.as_ref(), &batch).await;
            }
        });
    }
}

async fn write(store: &dyn Store, batch: &[AiUsageRow]) {
    let mut wait = Duration::from_millis(200);
    for attempt in 1..=5 {
        match store.record_ai_usage(batch).await {
            Ok(()) => return,
            Err(e) if attempt < 5 => {
                tracing::warn!(error = %e, rows = batch.len(), attempt, "could not write AI usage; retrying");
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
            Err(e) => {
                tracing::error!(error = %e, rows = batch.len(), "AI usage rows lost: the store refused them five times");
            }
        }
    }
}

/// Budget allowances leased from the store for this process's gateway
/// (`holder` is the manager's instance id).
pub struct StoreAllowances {
    pub store: Arc<dyn Store>,
    pub holder: String,
}

impl BudgetAllowances for StoreAllowances {
    fn lease(
        &self,
        budget_id: &str,
        period_start: i64,
        need: u64,
        want: u64,
    ) -> AllowanceFuture<AllowanceGrant> {
        let store = self.store.clone();
        let holder = self.holder.clone();
        let budget_id = budget_id.to_string();
        Box::pin(async move {
            let need = i64::try_from(need).unwrap_or(i64::MAX);
            let want = i64::try_from(want).unwrap_or(i64::MAX);
            let now = fleetgate_core::time::now_ms();
            let (granted, left) = store
                .lease_ai_allowance(&budget_id, period_start, &holder, need, want, now)
                .await
                .map_err(|e| e.to_string())?;
            Ok(AllowanceGrant {
                granted: u64::try_from(granted).unwrap_or(0),
                left: u64::try_from(left).unwrap_or(0),
            })
        })
    }

    fn give_back(&self, budget_id: &str, period_start: i64, amount: u64) -> AllowanceFuture<()> {
        let store = self.store.clone();
        let holder = self.holder.clone();
        let budget_id = budget_id.to_string();
        Box::pin(async move {
            let amount = i64::try_from(amount).unwrap_or(i64::MAX);
            let now = fleetgate_core::time::now_ms();
            store
                .return_ai_allowance(&budget_id, period_start, &holder, amount, now)
                .await
                .map_err(|e| e.to_string())
        })
    }
}

/// The endpoint requests to `p` go to.
pub fn endpoint(p: &fleetgate_store::AiProviderRecord) -> Option<String> {
    p.base_url.clone().or_else(|| {
        p.kind
            .parse::<ProviderKind>()
            .ok()
            .and_then(|k| k.default_base_url())
            .map(str::to_string)
    })
}

/// A stored budget as the data plane enforces it, with its spend in the
/// period holding `now_ms`; `None` when the stored record is not readable.
pub async fn budget_input(
    store: &dyn Store,
    b: &fleetgate_store::AiBudgetRecord,
    now_ms: i64,
) -> Result<Option<AiBudgetInput>, StoreError> {
    let (Some(period), Some(action)) = (
        BudgetPeriod::parse(&b.period),
        BudgetAction::parse(&b.action),
    ) else {
        tracing::error!(budget = %b.name, "stored AI budget has an unknown period or action; not enforced");
        return Ok(None);
    };
    let (start, _) = period.window(now_ms);
    let spent = store.ai_budget_spent(&b.id, start).await?;
    Ok(Some(AiBudgetInput {
        id: b.id.clone(),
        name: b.name.clone(),
        period,
        limit_micros: u64::try_from(b.limit_micros).unwrap_or(0),
        alert_threshold_pct: u8::try_from(b.alert_threshold_pct.clamp(1, 100)).unwrap_or(100),
        action,
        api_key_id: b.api_key_id.clone(),
        period_start_ms: start,
        spent_micros: u64::try_from(spent).unwrap_or(0),
    }))
}

/// The operators' price overrides as a price table. A stored override that
/// no longer reads as a price is left out (the built-in price, if any, holds)
/// and logged.
pub async fn price_overrides(store: &dyn Store) -> Result<PriceTable, StoreError> {
    let mut table = PriceTable::new();
    for p in store.list_ai_prices().await? {
        match serde_json::from_value::<ModelPrice>(p.price) {
            Ok(price) if price.validate().is_ok() => table.insert(p.model, price),
            _ => {
                tracing::error!(model = %p.model, "stored AI price override does not read as a price; not used")
            }
        }
    }
    Ok(table)
}

/// The built-in price table with the operators' overrides.
pub async fn price_table(store: &dyn Store) -> Result<PriceTable, StoreError> {
    Ok(PriceTable::builtin().with_overrides(&price_overrides(store).await?))
}

impl AppState {
    /// Where this process's gateway leases budget allowance from.
    pub fn ai_allowances(&self) -> Arc<dyn BudgetAllowances> {
        Arc::new(StoreAllowances {
            store: self.store.clone(),
            holder: self.instance.clone(),
        })
    }

    /// Builds the AI gateway's input from the store and publishes it if it
    /// changed. A provider whose key does not open is left out (its routes
    /// answer 503) and logged.
    pub async fn publish_ai(&self) -> Result<(), StoreError> {
        let _one_at_a_time = self.ai_publish.lock().await;
        let store = self.store.as_ref();
        let mut providers = Vec::new();
        for p in store.list_ai_providers().await? {
            if !p.enabled {
                continue;
            }
            let Some(base_url) = endpoint(&p) else {
                continue;
            };
            let api_key = match &p.api_key_sealed {
                None => None,
                Some(sealed) => match self.secrets.open(sealed).map(String::from_utf8) {
                    Ok(Ok(k)) => Some(k),
                    _ => {
                        tracing::error!(provider = %p.name, "the provider's API key does not open; its ai routes answer 503");
                        continue;
                    }
                },
            };
            providers.push(AiProviderInput {
                id: p.id.clone(),
                name: p.name.clone(),
                kind: p.kind.clone(),
                base_url,
                api_key,
                timeout_ms: u64::try_from(p.timeout_ms).unwrap_or(60_000),
            });
        }
        // Keys of disabled or deleted users call nothing, as on the API.
        let mut active_users = std::collections::HashSet::new();
        let mut offset = 0;
        loop {
            let page = store.list_users(PageRequest { limit: 500, offset }).await?;
            let n = page.items.len() as i64;
            active_users.extend(page.items.into_iter().filter(|u| !u.disabled).map(|u| u.id));
            offset += n;
            if n == 0 || offset >= page.total {
                break;
            }
        }
        let mut keys = Vec::new();
        let mut offset = 0;
        loop {
            let page = store
                .list_api_keys(None, PageRequest { limit: 500, offset })
                .await?;
            let n = page.items.len() as i64;
            for k in page.items {
                if k.user_id.as_ref().is_none_or(|u| active_users.contains(u)) {
                    keys.push(AiCallerKey {
                        id: k.id,
                        name: k.name,
                        key_hash: k.key_hash,
                    });
                }
            }
            offset += n;
            if n == 0 || offset >= page.total {
                break;
            }
        }
        let now = fleetgate_core::time::now_ms();
        let mut budgets = Vec::new();
        for b in store.list_ai_budgets().await? {
            if let Some(input) = budget_input(store, &b, now).await? {
                budgets.push(input);
            }
        }
        let prices = price_overrides(store).await?;
        self.feed.publish_ai(AiGatewayInput {
            version: 0,
            providers,
            keys,
            budgets,
            prices,
        });
        Ok(())
    }

    /// After a change to providers, budgets or API keys made here: the data
    /// plane gets it now, other managers' at their next look at the store.
    pub async fn refresh_ai(&self) {
        if let Err(e) = self.publish_ai().await {
            tracing::warn!(error = %e, "could not publish the AI gateway input");
        }
        self.refresh_data_plane();
    }
}
