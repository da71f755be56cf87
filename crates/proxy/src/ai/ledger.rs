//! Budgets as hard caps, in memory: each budget's spend in its current period,
//! what requests in flight have reserved, and how many are in flight.
//!
//! A request reserves its worst-case cost before it is sent ([`BudgetLedger::reserve`]);
//! the reservation is a [`Hold`] that becomes the real cost when the answer is
//! metered ([`Hold::settle`]) and is released if it is dropped unsettled (a failed
//! exchange, a cancelled stream), so no reservation outlives its request. Spent plus
//! reserved never passes the limit for `block` and `throttle` budgets: a request
//! that would not fit is refused before it is sent. Nothing here touches the store.
//!
//! The cap holds within one gateway process. Processes sharing one store (two
//! `fleetgate serve` on one PostgreSQL) each start from the spend the store
//! recorded and take the larger of theirs and the store's whenever the manager
//! publishes again, but do not coordinate requests in flight: together they
//! can pass the limit by what the others spent since their last publish.
//! Making that exact means spending from an allowance leased atomically from
//! the store's remainder instead of from `limit - spent` (see the AI gateway
//! notes of issue 18).

use std::sync::{Arc, Mutex};

use fleetgate_core::ai_gateway::BudgetAction;
use fleetgate_protocol::ai::AiBudgetInput;

/// A budget's state in this process.
pub struct BudgetLedger {
    state: Mutex<LedgerState>,
}

struct LedgerState {
    def: AiBudgetInput,
    period_start: i64,
    period_end: i64,
    spent: u64,
    reserved: u64,
    in_flight: u32,
    threshold_raised: bool,
    exceeded_raised: bool,
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

impl BudgetLedger {
    pub fn new(def: AiBudgetInput, now_ms: i64) -> Arc<Self> {
        let (start, end) = def.period.window(now_ms);
        let spent = if def.period_start_ms == start {
            def.spent_micros
        } else {
            0
        };
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
            }),
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
    /// `Exceeded` crossing the first time). An `alert_only` budget never refuses.
    pub fn reserve(
        self: &Arc<Self>,
        amount: u64,
        now_ms: i64,
    ) -> Result<Hold, (Refusal, Option<Crossing>)> {
        let mut s = self.lock();
        s.roll(now_ms);
        let limit = s.def.limit_micros;
        let committed = s.spent.saturating_add(s.reserved);
        let fits = committed.saturating_add(amount) <= limit;
        let action = s.def.action;
        let past_threshold = s.spent >= s.threshold_amount();
        let refuse = |s: &LedgerState, throttled: bool| Refusal {
            budget: s.def.name.clone(),
            period: s.def.period.as_str(),
            action,
            limit,
            spent: s.spent,
            left: limit.saturating_sub(committed),
            reset_at_ms: s.period_end,
            throttled,
        };
        match action {
            BudgetAction::Block | BudgetAction::Throttle if !fits => {
                let crossing = (!s.exceeded_raised).then(|| Crossing::Exceeded {
                    spent: s.spent,
                    limit,
                });
                s.exceeded_raised = true;
                return Err((refuse(&s, false), crossing));
            }
            BudgetAction::Throttle if past_threshold && s.in_flight > 0 => {
                return Err((refuse(&s, true), None));
            }
            // An `alert_only` budget says it is exceeded when its spend is
            // (see `finish`), not when a worst case merely might be.
            _ => {}
        }
        s.reserved = s.reserved.saturating_add(amount);
        s.in_flight += 1;
        Ok(Hold {
            ledger: Some(self.clone()),
            amount,
            period_start: s.period_start,
        })
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
    use proptest::prelude::*;

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

    proptest! {
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
