//! A configuration revision compiled for the data plane: the route table, each
//! route's runtime (limits, header rules, IP rules) and the upstream runtimes.
//! Immutable once built; the gateway swaps whole `Compiled` values atomically.

use std::collections::HashMap;
use std::sync::Arc;

use fleetgate_core::gateway::{parse_cidr, Route, Upstream};
use fleetgate_core::routing::RouteTable;
use fleetgate_core::ConfigDocument;
use http::{HeaderName, HeaderValue};
use ipnet::IpNet;

use crate::limit::RouteLimiter;
use crate::metrics::{MetricsRegistry, RouteMetrics, UpstreamMetrics};
use crate::upstream::UpstreamRuntime;

pub struct HeaderOps {
    pub set: Vec<(HeaderName, HeaderValue)>,
    pub remove: Vec<HeaderName>,
}

impl HeaderOps {
    fn new(rules: &fleetgate_core::gateway::HeaderRules) -> Self {
        Self {
            set: rules
                .set
                .iter()
                .filter_map(|(k, v)| {
                    Some((
                        HeaderName::from_bytes(k.as_bytes()).ok()?,
                        HeaderValue::from_str(v).ok()?,
                    ))
                })
                .collect(),
            remove: rules
                .remove
                .iter()
                .filter_map(|k| HeaderName::from_bytes(k.as_bytes()).ok())
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.remove.is_empty()
    }

    pub fn apply(&self, headers: &mut http::HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
    }
}

/// The upstream name `ai` routes are counted and logged under.
pub const AI_UPSTREAM: &str = "ai";

pub struct RouteRuntime {
    pub route: Route,
    /// `None` on an `ai` route, which relays to its AI provider instead.
    pub upstream: Option<Arc<UpstreamRuntime>>,
    pub upstream_metrics: Arc<UpstreamMetrics>,
    pub limiter: Option<Arc<RouteLimiter>>,
    pub allow: Vec<IpNet>,
    pub deny: Vec<IpNet>,
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
    pub metrics: Arc<RouteMetrics>,
}

pub struct Compiled {
    pub revision: u64,
    pub table: RouteTable,
    /// Parallel to the document's routes (disabled ones included, for indices).
    pub routes: Vec<RouteRuntime>,
    pub upstreams: HashMap<String, Arc<UpstreamRuntime>>,
    /// `settings.tracing.sample_ratio` as a bound on a random `u64`
    /// (`fleetgate_shared::otel::ratio_threshold`).
    pub trace_threshold: u64,
    /// `settings.tracing.parent_based`.
    pub trace_parent_based: bool,
}

impl Compiled {
    pub fn empty() -> Self {
        Self {
            revision: 0,
            table: RouteTable::default(),
            routes: Vec::new(),
            upstreams: HashMap::new(),
            trace_threshold: u64::MAX,
            trace_parent_based: true,
        }
    }

    /// Compiles revision `revision`'s document, reusing upstream runtimes from
    /// `previous` whose configuration did not change.
    pub fn build(
        revision: u64,
        doc: &ConfigDocument,
        previous: &Compiled,
        metrics: &MetricsRegistry,
        events: Option<&Arc<dyn fleetgate_core::events::EventSink>>,
    ) -> Result<Self, String> {
        let table = RouteTable::build(&doc.routes).map_err(|e| e.to_string())?;
        let mut upstreams: HashMap<String, Arc<UpstreamRuntime>> = HashMap::new();
        let reuse = |u: &Upstream| -> Arc<UpstreamRuntime> {
            match previous.upstreams.get(&u.name) {
                Some(old) if old.config == *u => old.clone(),
                old => UpstreamRuntime::new(u.clone(), events.cloned(), old.map(|o| &**o)),
            }
        };
        for u in &doc.upstreams {
            upstreams.insert(u.name.clone(), reuse(u));
        }
        let previous_limited: HashMap<&str, &RouteRuntime> = previous
            .routes
            .iter()
            .filter(|r| r.limiter.is_some())
            .map(|r| (r.route.id.as_str(), r))
            .collect();
        let mut routes = Vec::with_capacity(doc.routes.len());
        for r in &doc.routes {
            let upstream = if r.ai.is_some() {
                None
            } else if r.upstream.contains("://") {
                // A URL upstream: a one-target pool of its own, named after the route.
                let u = Upstream::single(format!("route:{}", r.id), r.upstream.clone());
                let rt = reuse(&u);
                upstreams.insert(u.name.clone(), rt.clone());
                Some(rt)
            } else {
                Some(upstreams.get(&r.upstream).cloned().ok_or_else(|| {
                    format!(
                        "route {:?} refers to unknown upstream {:?}",
                        r.id, r.upstream
                    )
                })?)
            };
            // A route whose limit did not change keeps its counters.
            let limiter = r.rate_limit.as_ref().filter(|l| l.enabled).map(|l| {
                previous_limited
                    .get(r.id.as_str())
                    .filter(|old| {
                        old.route.rate_limit.as_ref().is_some_and(|o| {
                            o.max == l.max && o.window_ms == l.window_ms && o.key == l.key
                        })
                    })
                    .and_then(|old| old.limiter.clone())
                    .unwrap_or_else(|| Arc::new(RouteLimiter::new(l.max, l.window_ms)))
            });
            routes.push(RouteRuntime {
                route: r.clone(),
                upstream_metrics: metrics
                    .upstream(upstream.as_ref().map_or(AI_UPSTREAM, |u| u.name.as_str())),
                upstream,
                limiter,
                allow: r.ip_allow.iter().filter_map(|c| parse_cidr(c)).collect(),
                deny: r.ip_deny.iter().filter_map(|c| parse_cidr(c)).collect(),
                request_headers: HeaderOps::new(&r.request_headers),
                response_headers: HeaderOps::new(&r.response_headers),
                metrics: metrics.route(&r.id),
            });
        }
        for u in upstreams.values() {
            u.start_health_checks();
        }
        let ai_routes = doc.routes.iter().any(|r| r.ai.is_some());
        metrics.retain(
            doc.routes.iter().map(|r| r.id.as_str()),
            upstreams
                .keys()
                .map(String::as_str)
                .chain(ai_routes.then_some(AI_UPSTREAM)),
        );
        let tracing = &doc.settings.tracing;
        Ok(Self {
            revision,
            table,
            routes,
            upstreams,
            trace_threshold: fleetgate_shared::otel::ratio_threshold(tracing.sample_ratio),
            trace_parent_based: tracing.parent_based,
        })
    }
}
