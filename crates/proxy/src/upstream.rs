//! An upstream at run time: its targets with live state, load balancing, the
//! circuit breaker, the retry budget, the connection pool and the active health
//! checker. A runtime outlives configuration revisions that leave its upstream
//! unchanged, so pools, breaker state and health survive unrelated changes.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use fleetgate_core::breaker::{Admission, BreakerState, CircuitBreaker, Transition};
use fleetgate_core::events::{emit, EventSink, NewEvent, Severity};
use fleetgate_core::gateway::{LoadBalancing, TargetHealth, Upstream};
use http::Uri;
use http_body_util::{Either, Empty, Limited};
use hyper::body::Incoming;

use crate::clock;

/// Bodies sent upstream: a client's body as is, with a size limit, or none.
pub type UpstreamBody = Either<
    crate::stall::StallBody<Incoming>,
    Either<Limited<crate::stall::StallBody<Incoming>>, Empty<Bytes>>,
>;

/// One target and what the gateway knows about it.
pub struct TargetState {
    pub url: String,
    pub scheme: http::uri::Scheme,
    pub authority: http::uri::Authority,
    /// `Host` header value sent to this target.
    pub host_header: http::HeaderValue,
    /// Keep-alive connections to this target.
    pub pool: Arc<crate::pool::Pool>,
    /// Path prefix of the target URL without a trailing slash (often empty).
    pub base_path: String,
    pub weight: u32,
    /// Requests in flight to this target, and upgraded connections (WebSockets)
    /// open to it. Shared with the runtimes that follow this one while they keep
    /// the target's URL, so a request sent before a revision is still counted
    /// after it (a draining target is done when this reaches 0).
    pub active: Arc<AtomicU64>,
    pub consecutive_failures: AtomicU32,
    pub ejected_until: AtomicU64,
    /// Result of active checks; true until a check says otherwise.
    pub healthy: AtomicBool,
    health_streak: AtomicU32,
    pub last_check: AtomicU64,
    pub last_error: Mutex<Option<String>>,
}

impl TargetState {
    fn new(
        url: &str,
        weight: u32,
        config: &Upstream,
        tls: Option<&Arc<rustls::ClientConfig>>,
        previous: Option<&UpstreamRuntime>,
    ) -> Option<Self> {
        let timeouts = &config.timeouts;
        let uri: Uri = fleetgate_core::gateway::parse_target_url(url).ok()?;
        let parts = uri.into_parts();
        let base_path = parts
            .path_and_query
            .map(|p| p.path().trim_end_matches('/').to_string())
            .unwrap_or_default();
        let authority = parts.authority?;
        let https = parts.scheme.as_ref().is_some_and(|s| s.as_str() == "https");
        let upstream_tls = if https {
            let name = config.tls.sni.clone().unwrap_or_else(|| {
                authority
                    .host()
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_string()
            });
            Some(crate::pool::UpstreamTls {
                config: tls?.clone(),
                server_name: rustls::pki_types::ServerName::try_from(name).ok()?,
            })
        } else {
            None
        };
        let same_target = previous.and_then(|p| p.targets.iter().find(|t| t.url == url));
        // A pool is kept when its connections were made the same way.
        let reused_pool = same_target
            .zip(previous)
            .filter(|(_, p)| p.config.timeouts == config.timeouts && p.config.tls == config.tls)
            .map(|(t, _)| t.pool.clone());
        let pool = reused_pool.unwrap_or_else(|| {
            crate::pool::Pool::new(
                &authority,
                upstream_tls,
                Duration::from_millis(timeouts.connect_ms),
                Duration::from_millis(timeouts.idle_ms),
                Duration::from_millis(timeouts.read_ms),
                Duration::from_millis(timeouts.send_ms),
            )
        });
        Some(Self {
            pool,
            url: url.to_string(),
            scheme: parts.scheme?,
            host_header: http::HeaderValue::from_str(authority.as_str()).ok()?,
            authority,
            base_path,
            weight,
            active: same_target.map(|t| t.active.clone()).unwrap_or_default(),
            consecutive_failures: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            healthy: AtomicBool::new(true),
            health_streak: AtomicU32::new(0),
            last_check: AtomicU64::new(0),
            last_error: Mutex::new(None),
        })
    }

    fn available(&self, now: u64) -> bool {
        self.weight > 0
            && self.healthy.load(Ordering::Relaxed)
            && self.ejected_until.load(Ordering::Relaxed) <= now
    }

    fn set_error(&self, e: impl Into<String>) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.into());
    }
}

/// Retries allowed as a share of recent requests, in two 10-second halves.
struct RetryBudget {
    percent: u64,
    epoch: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
}

impl RetryBudget {
    fn roll(&self, now: u64) {
        let epoch = now / 10_000;
        // Read first: a write every request would move the line between workers.
        if self.epoch.load(Ordering::Relaxed) != epoch
            && self.epoch.swap(epoch, Ordering::Relaxed) != epoch
        {
            self.requests.store(0, Ordering::Relaxed);
            self.retries.store(0, Ordering::Relaxed);
        }
    }

    fn record_request(&self, now: u64) {
        self.roll(now);
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes one retry from the budget if there is room (always at least 3 per window).
    fn try_retry(&self) -> bool {
        let allowed = (self.requests.load(Ordering::Relaxed) * self.percent / 100).max(3);
        if self.retries.fetch_add(1, Ordering::Relaxed) < allowed {
            true
        } else {
            self.retries.fetch_sub(1, Ordering::Relaxed);
            false
        }
    }
}

/// Aborts the task when dropped, so a replaced upstream stops its health checks.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub struct UpstreamRuntime {
    pub name: String,
    pub config: Upstream,
    pub targets: Vec<TargetState>,
    rr: AtomicUsize,
    swrr: Mutex<Vec<i64>>,
    ring: Vec<(u64, usize)>,
    pub(crate) breaker: Mutex<CircuitBreaker>,
    /// Set while the breaker admits every request without changing (it is closed or
    /// disabled), written under `breaker`'s lock: admission then reads only this.
    breaker_closed: AtomicBool,
    budget: RetryBudget,

    health_task: Mutex<Option<AbortOnDrop>>,
    events: Option<Arc<dyn EventSink>>,
}

/// The event of a breaker transition: opened (critical), half_open (warning) or
/// closed (info).
fn transition_event(upstream: &str, t: &Transition) -> NewEvent {
    let (kind, severity) = match t.to {
        BreakerState::Open => ("circuit_breaker.opened", Severity::Critical),
        BreakerState::HalfOpen => ("circuit_breaker.half_open", Severity::Warning),
        BreakerState::Closed => ("circuit_breaker.closed", Severity::Info),
    };
    NewEvent::new(
        kind,
        severity,
        format!(
            "circuit breaker of upstream {upstream}: {} -> {}",
            t.from.as_str(),
            t.to.as_str()
        ),
    )
    .upstream(upstream)
    .details(serde_json::json!({"from": t.from.as_str(), "to": t.to.as_str()}))
}

fn hash64(v: impl Hash) -> u64 {
    let mut h = DefaultHasher::new();
    v.hash(&mut h);
    h.finish()
}

impl UpstreamRuntime {
    /// Builds the runtime; targets whose URL does not parse are skipped (validation
    /// rejects them before they get here). Targets `previous` (the runtime of the
    /// upstream's earlier configuration) also has keep their in-flight count and,
    /// when timeouts and TLS settings are unchanged, their pool of connections.
    pub fn new(
        config: Upstream,
        events: Option<Arc<dyn EventSink>>,
        previous: Option<&UpstreamRuntime>,
    ) -> Arc<Self> {
        let needs_tls = config.targets.iter().any(|t| t.url.starts_with("https://"));
        let tls = if needs_tls {
            match crate::pool::client_config(&config.tls) {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::error!(upstream = %config.name, error = %e, "TLS settings unusable; https targets are skipped");
                    None
                }
            }
        } else {
            None
        };
        let targets: Vec<TargetState> = config
            .targets
            .iter()
            .filter_map(|t| TargetState::new(&t.url, t.weight, &config, tls.as_ref(), previous))
            .collect();
        let mut ring = Vec::new();
        for (i, t) in targets.iter().enumerate() {
            // 100 virtual nodes per weight unit (at least one set) keep the spread even.
            for v in 0..(100 * t.weight.max(1)) {
                ring.push((hash64((&t.url, v)), i));
            }
        }
        ring.sort_unstable();

        let n = targets.len();
        Arc::new(Self {
            name: config.name.clone(),
            breaker: Mutex::new(CircuitBreaker::new(config.circuit_breaker.clone())),
            breaker_closed: AtomicBool::new(true),
            budget: RetryBudget {
                percent: u64::from(config.retries.budget_percent),
                epoch: AtomicU64::new(0),
                requests: AtomicU64::new(0),
                retries: AtomicU64::new(0),
            },
            config,
            targets,
            rr: AtomicUsize::new(0),
            swrr: Mutex::new(vec![0; n]),
            ring,
            health_task: Mutex::new(None),
            events,
        })
    }

    /// Starts active health checks if configured (idempotent).
    pub fn start_health_checks(self: &Arc<Self>) {
        let Some(active) = self.config.health_check.active.clone() else {
            return;
        };
        let mut slot = self.health_task.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_some() {
            return;
        }
        let weak = Arc::downgrade(self);
        let handle = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(active.interval_ms));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(up) = weak.upgrade() else { return };
                up.check_all(&active).await;
            }
        });
        *slot = Some(AbortOnDrop(handle));
    }

    async fn check_all(&self, active: &fleetgate_core::gateway::ActiveCheck) {
        let checks = self.targets.iter().map(|t| async move {
                        let req = http::Request::get(format!("{}{}", t.base_path, active.path))
                .header(http::header::HOST, t.host_header.clone())
                .header(http::header::USER_AGENT, "fleetgate-health-check")
                .body(Either::Right(Either::Right(Empty::<Bytes>::new())));
            let outcome = match req {
                                Ok(req) => match tokio::time::timeout(Duration::from_millis(active.timeout_ms), async {
                    // Read the (small) body so the connection goes back to the pool.
                    let resp = t.pool.send(req).await?;
                    let status = resp.status();
                    let _ = http_body_util::BodyExt::collect(resp.into_body()).await;
                    Ok::<_, crate::pool::SendError>(status)
                })
                .await
                {
                    Ok(Ok(status)) if active.expected_statuses.contains(&status.as_u16()) => Ok(()),
                    Ok(Ok(status)) => Err(format!("health check answered {status}")),
                    Ok(Err(e)) => Err(format!("health check failed: {e}")),
                    Err(_) => Err(format!("health check timed out after {} ms", active.timeout_ms)),
                },
                Err(e) => Err(format!("bad health check request: {e}")),
            };
            t.last_check.store(clock::now_ms(), Ordering::Relaxed);
            let healthy = t.healthy.load(Ordering::Relaxed);
            match outcome {
                Ok(()) => {
                    let streak = if healthy { 0 } else { t.health_streak.fetch_add(1, Ordering::Relaxed) + 1 };
                    if !healthy && streak >= active.healthy_threshold {
                        t.healthy.store(true, Ordering::Relaxed);
                        t.health_streak.store(0, Ordering::Relaxed);
                        emit(
                            self.events.as_ref(),
                            NewEvent::new("health.target_up", Severity::Info, format!("target {} of upstream {} is healthy again", t.url, self.name))
                                .upstream(&self.name)
                                .details(serde_json::json!({"target": t.url})),
                        );
                    } else if healthy {
                        t.health_streak.store(0, Ordering::Relaxed);
                    }
                }
                Err(e) => {
                    t.set_error(e.clone());
                    let streak = if healthy { t.health_streak.fetch_add(1, Ordering::Relaxed) + 1 } else { 0 };
                    if healthy && streak >= active.unhealthy_threshold {
                        t.healthy.store(false, Ordering::Relaxed);
                        t.health_streak.store(0, Ordering::Relaxed);
                        emit(
                            self.events.as_ref(),
                            NewEvent::new("health.target_down", Severity::Warning, format!("target {} of upstream {} is unhealthy: {e}", t.url, self.name))
                                .upstream(&self.name)
                                .details(serde_json::json!({"target": t.url, "reason": "active", "error": e.to_string()})),
                        );
                    } else if !healthy {
                        t.health_streak.store(0, Ordering::Relaxed);
                    }
                }
            }
        });
        futures::future::join_all(checks).await;
    }

    /// Chooses a target, skipping unavailable ones and those in `tried`. When every
    /// target is unavailable, any untried target is used rather than none.
    pub fn pick(&self, hash_key: Option<&[u8]>, tried: &[usize]) -> Option<usize> {
        let n = self.targets.len();
        if n == 0 {
            return None;
        }
        let now = clock::now_ms();
        let usable = |i: usize, strict: bool| -> bool {
            !tried.contains(&i)
                && self.targets[i].weight > 0
                && (!strict || self.targets[i].available(now))
        };
        for strict in [true, false] {
            let pick = match self.config.load_balancing {
                LoadBalancing::RoundRobin => {
                    // With one target there is no turn to take (and no counter to write).
                    let start = if n > 1 {
                        self.rr.fetch_add(1, Ordering::Relaxed)
                    } else {
                        0
                    };
                    (0..n).map(|k| (start + k) % n).find(|&i| usable(i, strict))
                }
                LoadBalancing::LeastConnections => {
                    let start = self.rr.fetch_add(1, Ordering::Relaxed);
                    (0..n)
                        .map(|k| (start + k) % n)
                        .filter(|&i| usable(i, strict))
                        .min_by_key(|&i| {
                            self.targets[i].active.load(Ordering::Relaxed) * 1000
                                / u64::from(self.targets[i].weight.max(1))
                        })
                }
                LoadBalancing::Weighted => {
                    let mut cw = self.swrr.lock().unwrap_or_else(|p| p.into_inner());
                    let mut total = 0i64;
                    let mut best: Option<usize> = None;
                    for i in 0..n {
                        if !usable(i, strict) {
                            continue;
                        }
                        let w = i64::from(self.targets[i].weight);
                        cw[i] += w;
                        total += w;
                        if best.is_none_or(|b| cw[i] > cw[b]) {
                            best = Some(i);
                        }
                    }
                    if let Some(b) = best {
                        cw[b] -= total;
                    }
                    best
                }
                LoadBalancing::ConsistentHash => {
                    let h = hash64(hash_key.unwrap_or_default());
                    let start = self.ring.partition_point(|(k, _)| *k < h);
                    let len = self.ring.len();
                    (0..len)
                        .map(|k| self.ring[(start + k) % len].1)
                        .find(|&i| usable(i, strict))
                }
            };
            if pick.is_some() {
                return pick;
            }
        }
        None
    }

    pub fn admit(&self) -> Admission {
        let now = clock::now_ms();
        self.budget.record_request(now);
        // A closed (or disabled) breaker admits without changing: no lock to take.
        if self.breaker_closed.load(Ordering::Relaxed) {
            return Admission::Allowed;
        }
        let (adm, t) = {
            let mut b = self.breaker.lock().unwrap_or_else(|p| p.into_inner());
            let out = b.admit(now);
            self.note_state(&b);
            out
        };
        if let Some(t) = t {
            emit(self.events.as_ref(), transition_event(&self.name, &t));
        }
        adm
    }

    /// Closes the breaker by hand; the transition (also raised as an event) if it
    /// was open or half-open.
    pub fn reset_breaker(&self) -> Option<Transition> {
        let t = {
            let mut b = self.breaker.lock().unwrap_or_else(|p| p.into_inner());
            let t = b.reset();
            self.note_state(&b);
            t
        };
        if let Some(t) = &t {
            emit(self.events.as_ref(), transition_event(&self.name, t));
        }
        t
    }

    /// Mirrors the breaker's state into `breaker_closed` (called under its lock).
    #[inline]
    fn note_state(&self, b: &CircuitBreaker) {
        let closed = !b.config().enabled || b.state() == BreakerState::Closed;
        if self.breaker_closed.load(Ordering::Relaxed) != closed {
            self.breaker_closed.store(closed, Ordering::Relaxed);
        }
    }

    /// Records an attempt's outcome on the breaker and the target's passive health.
    pub fn record(&self, target: usize, success: bool, error: Option<String>) {
        let now = clock::now_ms();
        // A disabled breaker records nothing.
        let t = if self.config.circuit_breaker.enabled {
            let mut b = self.breaker.lock().unwrap_or_else(|p| p.into_inner());
            let t = b.record(now, success);
            self.note_state(&b);
            t
        } else {
            None
        };
        if let Some(t) = t {
            emit(self.events.as_ref(), transition_event(&self.name, &t));
        }
        let Some(ts) = self.targets.get(target) else {
            return;
        };
        if success {
            // Only a change is written, so successes leave the line shared.
            if ts.consecutive_failures.load(Ordering::Relaxed) != 0 {
                ts.consecutive_failures.store(0, Ordering::Relaxed);
            }
            return;
        }
        if let Some(e) = error {
            ts.set_error(e);
        }
        let failures = ts.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(p) = &self.config.health_check.passive {
            if failures >= p.max_failures {
                ts.ejected_until.store(now + p.eject_ms, Ordering::Relaxed);
                ts.consecutive_failures.store(0, Ordering::Relaxed);
                emit(
                    self.events.as_ref(),
                    NewEvent::new(
                        "health.target_down",
                        Severity::Warning,
                        format!("target {} of upstream {} ejected after {failures} consecutive failures", ts.url, self.name),
                    )
                    .upstream(&self.name)
                    .details(serde_json::json!({"target": ts.url, "reason": "passive", "failures": failures})),
                );
            }
        }
    }

    pub fn try_retry(&self) -> bool {
        self.budget.try_retry()
    }

    pub fn health(&self) -> Vec<TargetHealth> {
        let now = clock::now_ms();
        self.targets
            .iter()
            .map(|t| {
                let state = if t.ejected_until.load(Ordering::Relaxed) > now {
                    "ejected"
                } else if t.healthy.load(Ordering::Relaxed) {
                    "healthy"
                } else {
                    "unhealthy"
                };
                let last = t.last_check.load(Ordering::Relaxed);
                TargetHealth {
                    url: t.url.clone(),
                    state: state.into(),
                    last_check: (last > 0).then(|| clock::rfc3339(last)),
                    consecutive_failures: t.consecutive_failures.load(Ordering::Relaxed),
                    active_connections: t.active.load(Ordering::Relaxed),
                    last_error: t
                        .last_error
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .clone(),
                }
            })
            .collect()
    }
}
