//! Budgets as hard caps, in memory: each budget's spend in its current period,
//! what requests in flight have reserved, and how many are in flight.
//!
//! A request reserves its worst-case cost before it is sent ([`BudgetLedger::acquire`]);
//! the reservation is a [`Hold`] that becomes the real cost when the answer is
//! metered ([`Hold::settle`]) and is released if it is dropped unsettled (a failed
//! exchange, a cancelled stream), so no reservation outlives its request. Spent plus
//! reserved never passes the limit for `block` and `throttle` budgets: a request
//! that would not fit is refused before it is sent. Nothing here touches the store.
//!
//! Processes sharing one store (two `fleetgate serve` on one PostgreSQL) are held
//! to the limit together by allowances ([`BudgetAllowances`]): with a source of
//! them, a `block` or `throttle` budget's requests reserve from what this process
//! was granted of the period, never from `limit - spent`, and the store grants no
//! more over all processes than the limit less what was spent. A grant is asked
//! for in chunks of a sixteenth of the limit (or what a request needs, if more):
//! in the background when less than half a chunk is left, and by the request
//! itself, waiting for it, when its reservation does not fit what is left (the
//! only case a budget decision waits for the store). When the store cannot be
//! reached, what does not fit is refused: the cap holds. Without a source (a
//! data plane tested alone), the limit is the process's own.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use fleetgate_core::ai_gateway::BudgetAction;
use fleetgate_protocol::ai::{AiBudgetInput, AllowanceFuture, BudgetAllowances};

/// Allowance is leased in chunks of this fraction of the limit.
const CHUNKS_PER_LIMIT: u64 = 16;

/// How long what a lease said was left unleased is trusted: a request that
/// needs more is refused without asking the store again meanwhile, so a spent
/// budget costs the store one query per this time, not one per request.
const UNLEASED_TRUSTED: std::time::Duration = std::time::Duration::from_millis(500);

/// A budget's state in this process.
pub struct BudgetLedger {
    state: Mutex<LedgerState>,
    /// Where allowance is leased from; `None`: this process's cap is the limit.
    allowances: Option<Arc<dyn BudgetAllowances>>,
    /// One lease at a time per budget.
    leasing: tokio::sync::Mutex<()>,
    /// A background top-up is under way.
    topping_up: AtomicBool,
}

struct LedgerState {
    def: AiBudgetInput,
    period_start: i64,
    period_end: i64,
    /// Spent in the period, as far as this process knows (its own spend, or
    /// the store's when that is larger).
    spent: u64,
    reserved: u64,
    in_flight: u32,
    threshold_raised: bool,
    exceeded_raised: bool,
    /// With allowances: what this process was granted in the period, what it
    /// spent of it, and what was still unleased at the last grant.
    allowance: u64,
    own_spent: u64,
    unleased: u64,
    /// When `unleased` was learned; other processes give back what they do
    /// not spend, so it is trusted for a moment only ([`UNLEASED_TRUSTED`]).
    unleased_at: Option<std::time::Instant>,
}

/// Why a request was refused, with what the refusal must name.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub budget: String,
    pub period: &'static str,
    pub action: BudgetAction,
    pub limit: u64,
    pub spent: u64,
    /// What is left to spend (limit − spent − reserved), micro-USD.
    pub left: u64,
    pub reset_at_ms: i64,
    /// Throttled (one request at a time past the threshold) rather than spent.
    pub throttled: bool,
}

/// Something worth an event that a reservation or a settlement brought about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Crossing {
    /// Spend reached the alert threshold (once per period).
    Threshold { spent: u64, limit: u64, pct: u8 },
    /// Spend reached the limit, or a request was refused for it (once per period).
    Exceeded { spent: u64, limit: u64 },
}

/// A budget's numbers as of now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reading {
    pub spent: u64,
    pub reserved: u64,
    pub in_flight: u32,
    pub period_start: i64,
}

/// Why a reservation was not made.
enum Shortfall {
    Refused(Refusal, Option<Crossing>),
    /// It does not fit this process's allowance.
    Allowance,
}

impl BudgetLedger {
    /// A ledger whose cap is the limit, in this process alone.
    pub fn new(def: AiBudgetInput, now_ms: i64) -> Arc<Self> {
        Self::with_allowances(def, now_ms, None)
    }

    /// A ledger spending from allowances leased from `allowances` (for
    /// `block` and `throttle` budgets), or from the limit without one.
    pub fn with_allowances(
        def: AiBudgetInput,
        now_ms: i64,
        allowances: Option<Arc<dyn BudgetAllowances>>,
    ) -> Arc<Self> {
        let (start, end) = def.period.window(now_ms);
        let spent = if def.period_start_ms == start {
            def.spent_micros
        } else {
            0
        };
        let unleased = def.limit_micros;
        Arc::new(Self {
            state: Mutex::new(LedgerState {
                def,
                period_start: start,
                period_end: end,
                spent,
                reserved: 0,
                in_flight: 0,
                threshold_raised: false,
                exceeded_raised: false,
                allowance: 0,
                own_spent: 0,
                unleased,
                unleased_at: None,
            }),
            allowances,
            leasing: tokio::sync::Mutex::new(()),
            topping_up: AtomicBool::new(false),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LedgerState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a new definition of the same budget: the limit and action change;
    /// the spend kept is the larger of this process's and the store's for the
    /// same period (the store's lags behind what this process spent).
    pub fn update(&self, def: AiBudgetInput, now_ms: i64) {
        let mut s = self.lock();
        s.roll(now_ms);
        if def.period != s.def.period {
            // A new period, as when one turns: requests in flight settle into
            // the old one (see `finish`).
            let (start, end) = def.period.window(now_ms);
            s.period_start = start;
            s.period_end = end;
            s.spent = 0;
            s.reserved = 0;
            s.in_flight = 0;
            s.threshold_raised = false;
            s.exceeded_raised = false;
            s.allowance = 0;
            s.own_spent = 0;
            s.unleased = def.limit_micros;
            s.unleased_at = None;
        }
        if def.period_start_ms == s.period_start {
            s.spent = s.spent.max(def.spent_micros);
        }
        if def.limit_micros != s.def.limit_micros
            || def.alert_threshold_pct != s.def.alert_threshold_pct
        {
            s.threshold_raised = false;
            s.exceeded_raised = false;
        }
        s.def = def;
    }

    pub fn id(&self) -> String {
        self.lock().def.id.clone()
    }

    pub fn name(&self) -> String {
        self.lock().def.name.clone()
    }

    pub fn reading(&self, now_ms: i64) -> Reading {
        let mut s = self.lock();
        s.roll(now_ms);
        Reading {
            spent: s.spent,
            reserved: s.reserved,
            in_flight: s.in_flight,
            period_start: s.period_start,
        }
    }

    /// Reserves `amount` micro-USD for a request, or refuses it (with the
    /// `Exceeded` crossing the first time), leasing more allowance when its
    /// share does not hold it (see the module's notes). An `alert_only`
    /// budget never refuses.
    pub async fn acquire(
        self: &Arc<Self>,
        amount: u64,
        now_ms: i64,
    ) -> Result<Hold, (Refusal, Option<Crossing>)> {
        // A lease may be used up by this process's other requests before this
        // one reserves from it: a few turns, then refused.
        for _ in 0..3 {
            match self.try_reserve(amount, now_ms) {
                Ok(hold) => {
                    self.top_up_if_low();
                    return Ok(hold);
                }
                Err(Shortfall::Refused(r, c)) => return Err((r, c)),
                Err(Shortfall::Allowance) => {
                    if !self.lease(amount).await {
                        break;
                    }
                }
            }
        }
        Err(self.refusal(amount, now_ms))
    }

    /// [`BudgetLedger::acquire`] without waiting: what does not fit the
    /// allowance held now is refused.
    pub fn reserve(
        self: &Arc<Self>,
        amount: u64,
        now_ms: i64,
    ) -> Result<Hold, (Refusal, Option<Crossing>)> {
        match self.try_reserve(amount, now_ms) {
            Ok(hold) => Ok(hold),
            Err(Shortfall::Refused(r, c)) => Err((r, c)),
            Err(Shortfall::Allowance) => Err(self.refusal(amount, now_ms)),
        }
    }

    fn leases(s: &LedgerState, allowances: &Option<Arc<dyn BudgetAllowances>>) -> bool {
        allowances.is_some() && s.def.action != BudgetAction::AlertOnly
    }

    fn try_reserve(self: &Arc<Self>, amount: u64, now_ms: i64) -> Result<Hold, Shortfall> {
        let mut s = self.lock();
        s.roll(now_ms);
        let limit = s.def.limit_micros;
        let committed = s.spent.saturating_add(s.reserved);
        let fits = committed.saturating_add(amount) <= limit;
        let action = s.def.action;
        let past_threshold = s.spent >= s.threshold_amount();
        let leases = Self::leases(&s, &self.allowances);
        match action {
            BudgetAction::Block | BudgetAction::Throttle if !fits => {
                return Err(Shortfall::Refused(
                    s.refusal(false, leases),
                    s.exceeded_crossing(),
                ));
            }
            BudgetAction::Throttle if past_threshold && s.in_flight > 0 => {
                return Err(Shortfall::Refused(s.refusal(true, leases), None));
            }
            // An `alert_only` budget says it is exceeded when its spend is
            // (see `finish`), not when a worst case merely might be.
            _ => {}
        }
        if leases {
            let own = s
                .own_spent
                .saturating_add(s.reserved)
                .saturating_add(amount);
            if own > s.allowance {
                return Err(Shortfall::Allowance);
            }
        }
        s.reserved = s.reserved.saturating_add(amount);
        s.in_flight += 1;
        Ok(Hold {
            ledger: Some(self.clone()),
            amount,
            period_start: s.period_start,
        })
    }

    /// The refusal of a request of `amount` that found no room in this
    /// process's allowance, raising `Exceeded` the first time the budget has
    /// none left for it (not when the store could not be asked).
    fn refusal(&self, amount: u64, now_ms: i64) -> (Refusal, Option<Crossing>) {
        let mut s = self.lock();
        s.roll(now_ms);
        let leases = Self::leases(&s, &self.allowances);
        let refusal = s.refusal(false, leases);
        let crossing = if refusal.left < amount {
            s.exceeded_crossing()
        } else {
            None
        };
        (refusal, crossing)
    }

    /// Leases what a reservation of `amount` needs beyond this process's
    /// allowance (at least a chunk); true when it now fits. One lease at a
    /// time: a request that waited for another's may find it fits already.
    async fn lease(&self, amount: u64) -> bool {
        let Some(source) = self.allowances.clone() else {
            return false;
        };
        let _turn = self.leasing.lock().await;
        let (id, period_start, need, want) = {
            let s = self.lock();
            let need = s
                .own_spent
                .saturating_add(s.reserved)
                .saturating_add(amount)
                .saturating_sub(s.allowance);
            if need == 0 {
                return true;
            }
            if s.known_unleased().is_some_and(|u| u < need) {
                // Not even all that is unleased would do.
                return false;
            }
            (s.def.id.clone(), s.period_start, need, need.max(s.chunk()))
        };
        match source.lease(&id, period_start, need, want).await {
            Ok(grant) => {
                let mut s = self.lock();
                if s.period_start == period_start {
                    s.allowance = s.allowance.saturating_add(grant.granted);
                    s.unleased = grant.left;
                    s.unleased_at = Some(std::time::Instant::now());
                }
                s.own_spent
                    .saturating_add(s.reserved)
                    .saturating_add(amount)
                    <= s.allowance
            }
            Err(e) => {
                tracing::warn!(budget = %id, error = %e, "could not lease AI budget allowance; what does not fit is refused");
                false
            }
        }
    }

    /// Leases another chunk in the background when less than half of one is
    /// left of this process's allowance (and some is unleased).
    pub fn top_up_if_low(self: &Arc<Self>) {
        if self.allowances.is_none() {
            return;
        }
        {
            let s = self.lock();
            if !Self::leases(&s, &self.allowances) || s.known_unleased() == Some(0) {
                return;
            }
            let left = s
                .allowance
                .saturating_sub(s.own_spent.saturating_add(s.reserved));
            if left >= s.chunk() / 2 {
                return;
            }
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.topping_up.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = self.clone();
        runtime.spawn(async move {
            let chunk = me.lock().chunk();
            // Asks for what keeps a whole chunk free beside what is committed.
            me.lease(chunk).await;
            me.topping_up.store(false, Ordering::Release);
        });
    }

    /// Returns to the store what this process was granted and has neither
    /// spent nor reserved, as it stops; `None` when there is nothing to give.
    pub fn give_back(&self) -> Option<AllowanceFuture<()>> {
        let source = self.allowances.as_ref()?;
        let mut s = self.lock();
        let spare = s
            .allowance
            .saturating_sub(s.own_spent.saturating_add(s.reserved));
        if spare == 0 {
            return None;
        }
        s.allowance -= spare;
        Some(source.give_back(&s.def.id, s.period_start, spare))
    }

    /// Ends a reservation: `charge` (the real cost) is added to the spend
    /// when the reservation was made in the current period.
    fn finish(
        &self,
        amount: u64,
        period_start: i64,
        charge: Option<u64>,
        now_ms: i64,
    ) -> Vec<Crossing> {
        let mut s = self.lock();
        s.roll(now_ms);
        let mut out = Vec::new();
        if period_start != s.period_start {
            // The period turned while the request ran: its reservation was
            // dropped with the old period, and its cost belongs to that period.
            return out;
        }
        s.reserved = s.reserved.saturating_sub(amount);
        s.in_flight = s.in_flight.saturating_sub(1);
        let Some(cost) = charge else { return out };
        s.spent = s.spent.saturating_add(cost);
        s.own_spent = s.own_spent.saturating_add(cost);
        let limit = s.def.limit_micros;
        if !s.threshold_raised && s.spent >= s.threshold_amount() {
            s.threshold_raised = true;
            out.push(Crossing::Threshold {
                spent: s.spent,
                limit,
                pct: s.def.alert_threshold_pct,
            });
        }
        if !s.exceeded_raised && s.spent >= limit {
            s.exceeded_raised = true;
            out.push(Crossing::Exceeded {
                spent: s.spent,
                limit,
            });
        }
        out
    }
}

impl LedgerState {
    /// A new period starts afresh: nothing spent, nothing reserved (requests of
    /// the old one settle into it, not this one), no event raised.
    fn roll(&mut self, now_ms: i64) {
        if now_ms < self.period_end {
            return;
        }
        let (start, end) = self.def.period.window(now_ms);
        self.period_start = start;
        self.period_end = end;
        self.spent = 0;
        self.reserved = 0;
        self.in_flight = 0;
        self.threshold_raised = false;
        self.exceeded_raised = false;
        self.allowance = 0;
        self.own_spent = 0;
        self.unleased = self.def.limit_micros;
        self.unleased_at = None;
    }

    /// What is unleased in the period, if learned lately (see
    /// [`UNLEASED_TRUSTED`]).
    fn known_unleased(&self) -> Option<u64> {
        self.unleased_at
            .filter(|at| at.elapsed() < UNLEASED_TRUSTED)
            .map(|_| self.unleased)
    }

    fn chunk(&self) -> u64 {
        (self.def.limit_micros / CHUNKS_PER_LIMIT).max(1)
    }

    /// What is left to reserve: of the limit, and with allowances
    /// (`leases`), of what this process holds and could still lease.
    fn left(&self, leases: bool) -> u64 {
        let left = self
            .def
            .limit_micros
            .saturating_sub(self.spent.saturating_add(self.reserved));
        if !leases {
            return left;
        }
        let own_left = self
            .allowance
            .saturating_sub(self.own_spent.saturating_add(self.reserved));
        left.min(own_left.saturating_add(self.unleased))
    }

    fn refusal(&self, throttled: bool, leases: bool) -> Refusal {
        let limit = self.def.limit_micros;
        let left = self.left(leases);
        Refusal {
            budget: self.def.name.clone(),
            period: self.def.period.as_str(),
            action: self.def.action,
            limit,
            spent: self.spent,
            left,
            reset_at_ms: self.period_end,
            throttled,
        }
    }

    /// `Exceeded`, the first time in the period.
    fn exceeded_crossing(&mut self) -> Option<Crossing> {
        let c = (!self.exceeded_raised).then_some(Crossing::Exceeded {
            spent: self.spent,
            limit: self.def.limit_micros,
        });
        self.exceeded_raised = true;
        c
    }

    fn threshold_amount(&self) -> u64 {
        let pct = u128::from(self.def.alert_threshold_pct.clamp(1, 100));
        (u128::from(self.def.limit_micros) * pct).div_ceil(100) as u64
    }
}

/// A reservation on one budget. Dropped unsettled, it is released.
pub struct Hold {
    ledger: Option<Arc<BudgetLedger>>,
    amount: u64,
    period_start: i64,
}

impl Hold {
    /// Turns the reservation into the real cost; returns the crossings it caused.
    pub fn settle(mut self, cost: u64, now_ms: i64) -> Vec<Crossing> {
        match self.ledger.take() {
            Some(l) => l.finish(self.amount, self.period_start, Some(cost), now_ms),
            None => Vec::new(),
        }
    }

    pub fn ledger(&self) -> Option<&Arc<BudgetLedger>> {
        self.ledger.as_ref()
    }

    pub fn period_start(&self) -> i64 {
        self.period_start
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        if let Some(l) = self.ledger.take() {
            l.finish(
                self.amount,
                self.period_start,
                None,
                fleetgate_core::time::now_ms(),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetgate_core::ai_gateway::BudgetPeriod;
    use fleetgate_protocol::ai::AllowanceGrant;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn def(limit: u64, action: BudgetAction) -> AiBudgetInput {
        AiBudgetInput {
            id: "b1".into(),
            name: "team".into(),
            period: BudgetPeriod::Daily,
            limit_micros: limit,
            alert_threshold_pct: 80,
            action,
            api_key_id: None,
            period_start_ms: 0,
            spent_micros: 0,
        }
    }

    const NOW: i64 = 1_800_000_000_000;

    #[test]
    fn block_refuses_what_does_not_fit_and_names_what_is_left() {
        let l = BudgetLedger::new(def(1_000, BudgetAction::Block), NOW);
        let a = l.reserve(600, NOW).expect("fits");
        let (refusal, crossing) = l.reserve(500, NOW).err().expect("refused");
        assert_eq!(refusal.left, 400);
        assert_eq!(refusal.reset_at_ms, BudgetPeriod::Daily.window(NOW).1);
        assert_eq!(
            crossing,
            Some(Crossing::Exceeded {
                spent: 0,
                limit: 1_000
            })
        );
        // Settled below the reservation, the rest is free again.
        let c = a.settle(300, NOW);
        assert!(c.is_empty());
        let b = l.reserve(700, NOW).expect("fits now");
        assert_eq!(
            b.settle(700, NOW),
            vec![Crossing::Threshold {
                spent: 1_000,
                limit: 1_000,
                pct: 80
            }]
        );
        assert_eq!(l.reading(NOW).spent, 1_000);
    }

    #[test]
    fn dropped_holds_are_released() {
        let l = BudgetLedger::new(def(1_000, BudgetAction::Block), NOW);
        {
            let _h = l.reserve(1_000, NOW).expect("fits");
            assert!(l.reserve(1, NOW).is_err());
        }
        let r = l.reading(NOW);
        assert_eq!((r.reserved, r.in_flight, r.spent), (0, 0, 0));
    }

    #[test]
    fn throttle_lets_one_request_at_a_time_past_the_threshold() {
        let mut d = def(1_000, BudgetAction::Throttle);
        d.spent_micros = 850;
        d.period_start_ms = BudgetPeriod::Daily.window(NOW).0;
        let l = BudgetLedger::new(d, NOW);
        let h = l.reserve(10, NOW).expect("first");
        let (r, _) = l.reserve(10, NOW).err().expect("second waits");
        assert!(r.throttled);
        drop(h);
        assert!(l.reserve(10, NOW).is_ok());
    }

    #[test]
    fn alert_only_lets_everything_through_and_says_so_once() {
        let l = BudgetLedger::new(def(100, BudgetAction::AlertOnly), NOW);
        let h = l.reserve(150, NOW).expect("through");
        let h2 = l.reserve(150, NOW).expect("through");
        assert_eq!(
            h.settle(150, NOW),
            vec![
                Crossing::Threshold {
                    spent: 150,
                    limit: 100,
                    pct: 80
                },
                Crossing::Exceeded {
                    spent: 150,
                    limit: 100
                }
            ]
        );
        assert!(h2.settle(150, NOW).is_empty(), "once per period");
    }

    #[test]
    fn a_new_period_starts_from_nothing() {
        let l = BudgetLedger::new(def(100, BudgetAction::Block), NOW);
        l.reserve(100, NOW).expect("fits").settle(100, NOW);
        assert!(l.reserve(1, NOW).is_err());
        let next = BudgetPeriod::Daily.window(NOW).1;
        assert!(l.reserve(100, next).is_ok());
    }

    #[test]
    fn a_changed_period_leaves_nothing_reserved() {
        let l = BudgetLedger::new(def(1_000, BudgetAction::Block), NOW);
        let h = l.reserve(900, NOW).expect("fits");
        let mut d = def(1_000, BudgetAction::Block);
        d.period = BudgetPeriod::Hourly;
        l.update(d, NOW);
        drop(h);
        let r = l.reading(NOW);
        assert_eq!((r.reserved, r.in_flight), (0, 0));
        assert!(l.reserve(1_000, NOW).is_ok());
    }

    /// A store's allowances in memory, shared by the "processes" of a test:
    /// never grants past `limit` in total; `down` makes every call fail.
    struct Pool {
        limit: u64,
        state: Mutex<(u64, HashMap<String, u64>)>,
        down: AtomicBool,
        leases: std::sync::atomic::AtomicU32,
    }

    impl Pool {
        fn new(limit: u64) -> Arc<Self> {
            Arc::new(Self {
                limit,
                state: Mutex::new((0, HashMap::new())),
                down: AtomicBool::new(false),
                leases: std::sync::atomic::AtomicU32::new(0),
            })
        }
        fn granted(&self) -> u64 {
            self.state.lock().expect("pool").0
        }
        fn holder(self: &Arc<Self>, name: &str) -> Arc<dyn BudgetAllowances> {
            Arc::new(Holder {
                pool: self.clone(),
                name: name.into(),
            })
        }
    }

    struct Holder {
        pool: Arc<Pool>,
        name: String,
    }

    impl BudgetAllowances for Holder {
        fn lease(&self, _: &str, _: i64, need: u64, want: u64) -> AllowanceFuture<AllowanceGrant> {
            let pool = self.pool.clone();
            let name = self.name.clone();
            Box::pin(async move {
                pool.leases.fetch_add(1, Ordering::Relaxed);
                if pool.down.load(Ordering::Relaxed) {
                    return Err("store unreachable".into());
                }
                let mut s = pool.state.lock().expect("pool");
                let left = pool.limit - s.0;
                let granted = if left < need { 0 } else { want.min(left) };
                s.0 += granted;
                *s.1.entry(name).or_default() += granted;
                Ok(AllowanceGrant {
                    granted,
                    left: pool.limit - s.0,
                })
            })
        }
        fn give_back(&self, _: &str, _: i64, amount: u64) -> AllowanceFuture<()> {
            let pool = self.pool.clone();
            let name = self.name.clone();
            Box::pin(async move {
                let mut s = pool.state.lock().expect("pool");
                let held = s.1.entry(name).or_default();
                let back = amount.min(*held);
                *held -= back;
                s.0 -= back;
                Ok(())
            })
        }
    }

    /// A ledger of `def(limit, action)` leasing from `pool` as `holder`.
    fn leased(
        pool: &Arc<Pool>,
        limit: u64,
        action: BudgetAction,
        holder: &str,
    ) -> Arc<BudgetLedger> {
        BudgetLedger::with_allowances(def(limit, action), NOW, Some(pool.holder(holder)))
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
    }

    #[test]
    fn two_processes_leasing_from_one_store_never_pass_the_limit_together() {
        rt().block_on(async {
            let pool = Pool::new(1_000);
            let a = leased(&pool, 1_000, BudgetAction::Block, "a");
            let b = leased(&pool, 1_000, BudgetAction::Block, "b");
            // Each alone sees the whole limit free; together they get 1,000.
            let mut held = Vec::new();
            let mut exceeded = 0;
            for _ in 0..10 {
                for l in [&a, &b] {
                    match l.acquire(150, NOW).await {
                        Ok(h) => held.push(h),
                        Err((r, c)) => {
                            assert!(r.left < 150, "{r:?}");
                            exceeded += usize::from(matches!(c, Some(Crossing::Exceeded { .. })));
                        }
                    }
                }
            }
            assert!(
                exceeded >= 1,
                "a refusal for want of budget says it is exceeded"
            );
            let reserved: u64 = [&a, &b].iter().map(|l| l.reading(NOW).reserved).sum();
            assert!(reserved <= 1_000, "{reserved}");
            assert!(
                reserved >= 1_000 - 150 - 2 * 1_000 / CHUNKS_PER_LIMIT,
                "{reserved}"
            );
            assert!(pool.granted() <= 1_000);
            // Settled below the reservations, what is freed is usable again
            // by the process that holds it.
            for h in held {
                h.settle(100, NOW);
            }
            assert!(a.acquire(40, NOW).await.is_ok() || b.acquire(40, NOW).await.is_ok());
        });
    }

    #[test]
    fn what_a_stopping_process_gives_back_another_can_lease() {
        rt().block_on(async {
            let pool = Pool::new(1_000);
            let a = leased(&pool, 1_000, BudgetAction::Block, "a");
            let b = leased(&pool, 1_000, BudgetAction::Block, "b");
            let h = a.acquire(900, NOW).await.expect("fits");
            h.settle(300, NOW);
            assert!(b.acquire(500, NOW).await.is_err(), "a holds 900 of it");
            a.give_back()
                .expect("something to give")
                .await
                .expect("given");
            assert!(a.give_back().is_none(), "nothing more");
            assert_eq!(pool.granted(), 300);
            // b was just told that too little was left, and believes it for
            // a moment without asking again.
            let asked = pool.leases.load(Ordering::Relaxed);
            assert!(b.acquire(500, NOW).await.is_err());
            assert_eq!(pool.leases.load(Ordering::Relaxed), asked);
            std::thread::sleep(UNLEASED_TRUSTED);
            assert!(b.acquire(500, NOW).await.is_ok());
        });
    }

    #[test]
    fn an_unreachable_store_refuses_what_does_not_fit_without_saying_exceeded() {
        rt().block_on(async {
            let pool = Pool::new(1_000);
            pool.down.store(true, Ordering::Relaxed);
            let a = leased(&pool, 1_000, BudgetAction::Block, "a");
            let (r, crossing) = a.acquire(10, NOW).await.err().expect("refused");
            assert_eq!(r.budget, "team");
            assert_eq!(crossing, None, "the budget is not spent");
            pool.down.store(false, Ordering::Relaxed);
            assert!(a.acquire(10, NOW).await.is_ok());
            // An alert_only budget leases nothing and refuses nothing.
            let before = pool.leases.load(Ordering::Relaxed);
            let o = leased(&pool, 100, BudgetAction::AlertOnly, "o");
            assert!(o.acquire(500, NOW).await.is_ok());
            assert_eq!(pool.leases.load(Ordering::Relaxed), before);
        });
    }

    #[test]
    fn requests_within_the_allowance_decide_without_the_store() {
        rt().block_on(async {
            let pool = Pool::new(16_000);
            let a = leased(&pool, 16_000, BudgetAction::Block, "a");
            // The first request leases a chunk (a sixteenth of the limit);
            // the next ones fit it and ask the store nothing.
            a.acquire(100, NOW).await.expect("fits").settle(100, NOW);
            let after_first = pool.leases.load(Ordering::Relaxed);
            for _ in 0..4 {
                a.acquire(100, NOW).await.expect("fits").settle(100, NOW);
            }
            assert_eq!(pool.leases.load(Ordering::Relaxed), after_first);
        });
    }

    proptest! {
        /// Two processes leasing from one store, with any mix of requests,
        /// settlements (at most what was reserved), releases and give-backs:
        /// what they spend together never passes the limit, and the store
        /// never grants past it.
        #[test]
        fn processes_sharing_a_store_never_spend_past_the_limit(ops in proptest::collection::vec((any::<bool>(), 1u64..400, 0u64..=100, 0u8..10), 1..150)) {
            rt().block_on(async {
                let pool = Pool::new(1_000);
                let ledgers = [
                    leased(&pool, 1_000, BudgetAction::Block, "a"),
                    leased(&pool, 1_000, BudgetAction::Block, "b"),
                ];
                let mut held = Vec::new();
                let mut spent = 0;
                for (which, amount, pct, what) in ops {
                    let l = &ledgers[usize::from(which)];
                    if let Ok(h) = l.acquire(amount, NOW).await {
                        held.push((h, amount * pct / 100));
                    }
                    if what == 0 {
                        if let Some(f) = l.give_back() { f.await.expect("given back"); }
                    }
                    if (held.len() > 4 || what == 1) && !held.is_empty() {
                        let (h, cost) = held.remove(0);
                        if what % 2 == 0 { spent += cost; h.settle(cost, NOW); } else { drop(h); }
                    }
                    prop_assert!(pool.granted() <= 1_000);
                    let reserved: u64 = ledgers.iter().map(|l| l.reading(NOW).reserved).sum();
                    prop_assert!(spent + reserved <= 1_000, "{spent} + {reserved}");
                }
                Ok(())
            })?;
        }

        /// Whatever mix of reservations, settlements (at most what was
        /// reserved) and releases, a blocking budget never spends past its limit
        /// and ends with nothing reserved.
        #[test]
        fn spend_never_passes_the_limit(ops in proptest::collection::vec((1u64..400, 0u64..=100, any::<bool>()), 1..200)) {
            let l = BudgetLedger::new(def(1_000, BudgetAction::Block), NOW);
            let mut held = Vec::new();
            for (amount, pct, settle) in ops {
                if let Ok(h) = l.reserve(amount, NOW) {
                    held.push((h, amount * pct / 100, settle));
                }
                if held.len() > 5 {
                    let (h, cost, settle) = held.remove(0);
                    if settle { h.settle(cost, NOW); } else { drop(h); }
                }
                let r = l.reading(NOW);
                prop_assert!(r.spent + r.reserved <= 1_000);
            }
            for (h, cost, _) in held { h.settle(cost, NOW); }
            let r = l.reading(NOW);
            prop_assert_eq!((r.reserved, r.in_flight), (0, 0));
            prop_assert!(r.spent <= 1_000);
        }
    }
}
