//! The circuit breaker state machine, with FlexGate's semantics: it opens when at
//! least `failure_rate_percent` of at least `min_requests` requests failed in the
//! rolling window; stays open for `open_ms`; then lets `half_open_requests` trial
//! requests through — all succeeding closes it, any failure reopens it.
//!
//! Time is passed in (milliseconds on any monotonic clock), so the machine is
//! deterministic and tested without sleeping.

use std::collections::VecDeque;

use crate::gateway::BreakerConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// A state change, reported so it can become an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub from: BreakerState,
    pub to: BreakerState,
}

/// Whether a request may go to the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Allowed,
    /// Refused; retry after this many milliseconds.
    Rejected {
        retry_after_ms: u64,
    },
}

#[derive(Debug)]
pub struct CircuitBreaker {
    config: BreakerConfig,
    state: BreakerState,
    /// Outcomes in the window, in 1-second buckets: (bucket start, total, failures).
    buckets: VecDeque<(u64, u32, u32)>,
    opened_at: u64,
    /// Requests and failures of the window that opened the breaker.
    opened_with: (u32, u32),
    trials_started: u32,
    trials_succeeded: u32,
}

const BUCKET_MS: u64 = 1000;

impl CircuitBreaker {
    pub fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            state: BreakerState::Closed,
            buckets: VecDeque::new(),
            opened_at: 0,
            opened_with: (0, 0),
            trials_started: 0,
            trials_succeeded: 0,
        }
    }

    pub fn state(&self) -> BreakerState {
        self.state
    }

    pub fn config(&self) -> &BreakerConfig {
        &self.config
    }

    /// When the breaker last opened (meaningful while open or half-open).
    pub fn opened_at(&self) -> Option<u64> {
        (self.state != BreakerState::Closed).then_some(self.opened_at)
    }

    /// Requests and failures counted: of the current window while closed, of the
    /// window that opened it while open or half-open (its own window starts empty).
    pub fn reported_window(&mut self, now: u64) -> (u32, u32) {
        if self.state == BreakerState::Closed {
            self.window(now)
        } else {
            self.opened_with
        }
    }

    /// When an open breaker will admit trials.
    pub fn next_trial_at(&self) -> Option<u64> {
        (self.state == BreakerState::Open).then_some(self.opened_at + self.config.open_ms)
    }

    fn prune(&mut self, now: u64) {
        let window = self.config.window_ms.max(BUCKET_MS);
        while let Some(&(start, _, _)) = self.buckets.front() {
            if now >= start + window {
                self.buckets.pop_front();
            } else {
                break;
            }
        }
    }

    /// Requests and failures in the window ending at `now`.
    pub fn window(&mut self, now: u64) -> (u32, u32) {
        self.prune(now);
        self.buckets
            .iter()
            .fold((0, 0), |(t, f), &(_, bt, bf)| (t + bt, f + bf))
    }

    /// Asks to send one request at `now`. Moves open → half-open when due.
    pub fn admit(&mut self, now: u64) -> (Admission, Option<Transition>) {
        if !self.config.enabled {
            return (Admission::Allowed, None);
        }
        match self.state {
            BreakerState::Closed => (Admission::Allowed, None),
            BreakerState::Open => {
                let due = self.opened_at + self.config.open_ms;
                if now < due {
                    return (
                        Admission::Rejected {
                            retry_after_ms: due - now,
                        },
                        None,
                    );
                }
                self.state = BreakerState::HalfOpen;
                self.trials_started = 1;
                self.trials_succeeded = 0;
                (
                    Admission::Allowed,
                    Some(Transition {
                        from: BreakerState::Open,
                        to: BreakerState::HalfOpen,
                    }),
                )
            }
            BreakerState::HalfOpen => {
                if self.trials_started < self.config.half_open_requests {
                    self.trials_started += 1;
                    (Admission::Allowed, None)
                } else {
                    // All trials are in flight; wait for their outcome.
                    (
                        Admission::Rejected {
                            retry_after_ms: 1000,
                        },
                        None,
                    )
                }
            }
        }
    }

    /// Records the outcome of an admitted request.
    pub fn record(&mut self, now: u64, success: bool) -> Option<Transition> {
        if !self.config.enabled {
            return None;
        }
        match self.state {
            BreakerState::HalfOpen => {
                if success {
                    self.trials_succeeded += 1;
                    if self.trials_succeeded >= self.config.half_open_requests {
                        self.state = BreakerState::Closed;
                        self.buckets.clear();
                        return Some(Transition {
                            from: BreakerState::HalfOpen,
                            to: BreakerState::Closed,
                        });
                    }
                    None
                } else {
                    self.open(now);
                    Some(Transition {
                        from: BreakerState::HalfOpen,
                        to: BreakerState::Open,
                    })
                }
            }
            BreakerState::Open => None,
            BreakerState::Closed => {
                let bucket = now - now % BUCKET_MS;
                match self.buckets.back_mut() {
                    Some(b) if b.0 == bucket => {
                        b.1 += 1;
                        b.2 += u32::from(!success);
                    }
                    _ => self.buckets.push_back((bucket, 1, u32::from(!success))),
                }
                let (total, failed) = self.window(now);
                let tripped = total >= self.config.min_requests
                    && u64::from(failed) * 100
                        >= u64::from(self.config.failure_rate_percent) * u64::from(total);
                if tripped {
                    self.open(now);
                    return Some(Transition {
                        from: BreakerState::Closed,
                        to: BreakerState::Open,
                    });
                }
                None
            }
        }
    }

    /// Closes the breaker by hand (an operator's reset): the window starts empty and
    /// requests flow at once. The transition, if it was not closed already.
    pub fn reset(&mut self) -> Option<Transition> {
        let from = self.state;
        self.state = BreakerState::Closed;
        self.buckets.clear();
        self.opened_with = (0, 0);
        self.trials_started = 0;
        self.trials_succeeded = 0;
        (from != BreakerState::Closed).then_some(Transition {
            from,
            to: BreakerState::Closed,
        })
    }

    fn open(&mut self, now: u64) {
        // From half-open the window is empty: the failed trial and those before it.
        let w = self.window(now);
        self.opened_with = if w.0 > 0 {
            w
        } else {
            (self.trials_succeeded + 1, 1)
        };
        self.state = BreakerState::Open;
        self.opened_at = now;
        self.buckets.clear();
        self.trials_started = 0;
        self.trials_succeeded = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn breaker() -> CircuitBreaker {
        CircuitBreaker::new(BreakerConfig::default())
    }

    #[test]
    fn a_reset_closes_an_open_or_half_open_breaker_with_an_empty_window() {
        let mut b = breaker();
        assert_eq!(b.reset(), None, "a closed breaker has nothing to reset");
        for i in 0..10 {
            b.admit(i);
            b.record(i, false);
        }
        assert_eq!(b.state(), BreakerState::Open);
        assert!(matches!(b.admit(11).0, Admission::Rejected { .. }));
        assert_eq!(
            b.reset(),
            Some(Transition {
                from: BreakerState::Open,
                to: BreakerState::Closed
            })
        );
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.admit(12).0, Admission::Allowed);
        assert_eq!(b.window(12), (0, 0));
        // Nine failures after the reset are below the minimum again.
        for i in 13..22 {
            assert_eq!(b.record(i, false), None);
        }
        // Half-open resets too.
        b.record(22, false);
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.admit(22 + 30_000).0, Admission::Allowed);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert_eq!(b.reset().map(|t| t.from), Some(BreakerState::HalfOpen));
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn an_open_breaker_reports_the_window_that_opened_it() {
        let mut b = breaker();
        for i in 0..10 {
            b.admit(i);
            b.record(i, i % 2 == 0);
        }
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.reported_window(20), (10, 5));
        assert_eq!(b.window(20), (0, 0), "its own window starts empty");
    }

    #[test]
    fn opens_at_half_failures_of_ten_requests() {
        let mut b = breaker();
        for i in 0..9 {
            assert_eq!(b.admit(i).0, Admission::Allowed);
            assert_eq!(
                b.record(i, i % 2 == 0),
                None,
                "9 requests are below the minimum"
            );
        }
        // The 10th request makes 5 failures of 10: exactly 50%.
        assert_eq!(b.admit(9).0, Admission::Allowed);
        assert_eq!(
            b.record(9, false),
            Some(Transition {
                from: BreakerState::Closed,
                to: BreakerState::Open
            })
        );
        assert_eq!(
            b.admit(10).0,
            Admission::Rejected {
                retry_after_ms: 29_999
            }
        );
        assert_eq!(b.next_trial_at(), Some(30_009));
    }

    #[test]
    fn four_failures_of_ten_stay_closed_and_old_outcomes_expire() {
        let mut b = breaker();
        for i in 0..10 {
            b.admit(i);
            assert_eq!(b.record(i, i >= 4), None);
        }
        assert_eq!(b.state(), BreakerState::Closed);
        // 10 s later the window is empty: 5 new failures are below the minimum.
        for i in 0..5 {
            assert_eq!(b.record(10_500 + i, false), None);
        }
        assert_eq!(b.window(10_600), (5, 5));
    }

    #[test]
    fn half_open_lets_three_trials_through() {
        let mut b = breaker();
        for i in 0..10 {
            b.record(i, false);
        }
        assert_eq!(b.state(), BreakerState::Open);
        let t = 30_010;
        assert_eq!(
            b.admit(t),
            (
                Admission::Allowed,
                Some(Transition {
                    from: BreakerState::Open,
                    to: BreakerState::HalfOpen
                })
            )
        );
        assert_eq!(b.admit(t).0, Admission::Allowed);
        assert_eq!(b.admit(t).0, Admission::Allowed);
        assert!(
            matches!(b.admit(t).0, Admission::Rejected { .. }),
            "only 3 trials"
        );
        assert_eq!(b.record(t, true), None);
        assert_eq!(b.record(t, true), None);
        assert_eq!(
            b.record(t, true),
            Some(Transition {
                from: BreakerState::HalfOpen,
                to: BreakerState::Closed
            })
        );
        assert_eq!(b.admit(t).0, Admission::Allowed);
    }

    #[test]
    fn a_failed_trial_reopens() {
        let mut b = breaker();
        for i in 0..10 {
            b.record(i, false);
        }
        b.admit(40_000);
        assert_eq!(
            b.record(40_001, false),
            Some(Transition {
                from: BreakerState::HalfOpen,
                to: BreakerState::Open
            })
        );
        assert_eq!(
            b.admit(40_002).0,
            Admission::Rejected {
                retry_after_ms: 29_999
            }
        );
    }

    proptest! {
        #[test]
        fn never_opens_below_the_minimum(outcomes in prop::collection::vec(any::<bool>(), 0..9)) {
            let mut b = breaker();
            for (i, ok) in outcomes.iter().enumerate() {
                prop_assert_eq!(b.record(i as u64, *ok), None);
            }
        }

        #[test]
        fn opens_exactly_when_the_rule_first_holds(outcomes in prop::collection::vec(any::<bool>(), 0..60)) {
            // All outcomes fall inside one window, so the rule is a plain count.
            let mut b = breaker();
            let (mut total, mut failed) = (0u32, 0u32);
            let mut expected_open_at = None;
            for (i, ok) in outcomes.iter().enumerate() {
                total += 1;
                failed += u32::from(!ok);
                if expected_open_at.is_none() && total >= 10 && failed * 2 >= total {
                    expected_open_at = Some(i);
                }
            }
            let mut opened_at = None;
            for (i, ok) in outcomes.iter().enumerate() {
                if let Some(t) = b.record(i as u64 * 10, *ok) {
                    prop_assert_eq!(t.to, BreakerState::Open);
                    opened_at = Some(i);
                    break;
                }
            }
            prop_assert_eq!(opened_at, expected_open_at);
        }
    }
}
