//! Phase 3 of the pipeline, the upstream side: the upstream's circuit breaker
//! admits the request (or answers `503` while it is open), then each attempt of the
//! exchange takes a target its load balancing picks among those not tried yet.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use fleetgate_core::breaker::Admission;
use fleetgate_core::gateway::LoadBalancing;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};

use super::{json_error, ProxyBody, RequestCtx};
use crate::upstream::UpstreamRuntime;

/// Asks the upstream's circuit breaker to admit the request: `None`, or the `503`
/// (with `Retry-After`) of an open breaker.
#[inline]
pub(super) fn circuit_breaker(ctx: &RequestCtx<'_>) -> Option<Response<ProxyBody>> {
    let up = ctx.rt.upstream.as_ref()?;
    match up.admit() {
        Admission::Allowed => None,
        Admission::Rejected { retry_after_ms } => {
            ctx.rt
                .upstream_metrics
                .breaker_rejections
                .fetch_add(1, Ordering::Relaxed);
            let secs = retry_after_ms.div_ceil(1000).max(1);
            let mut r = json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "CIRCUIT_OPEN",
                &format!(
                    "upstream {} is failing; its circuit breaker is open",
                    up.name
                ),
                Some(("retryAfter", secs.into())),
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            Some(r)
        }
    }
}

/// The targets one request has tried, for the attempts of its exchange to pick
/// among the others.
pub(super) struct Targets {
    /// What consistent hashing hashes (`None` for the other load balancings).
    key: Option<Vec<u8>>,
    /// Targets already tried (at most 1 + 5 retries): a fixed array, no allocation.
    tried: [usize; 6],
    tried_len: usize,
}

impl Targets {
    /// The request's key for `up`'s load balancing, read from its headers or client.
    pub(super) fn new(up: &UpstreamRuntime, headers: &HeaderMap, client: &SocketAddr) -> Self {
        let key = match up.config.load_balancing {
            LoadBalancing::ConsistentHash => hash_key(&up.config.hash_on, headers, client),
            _ => None,
        };
        Self {
            key,
            tried: [usize::MAX; 6],
            tried_len: 0,
        }
    }

    /// The next target to try, if any is left.
    #[inline]
    pub(super) fn pick(&mut self, up: &UpstreamRuntime) -> Option<usize> {
        let ti = up.pick(self.key.as_deref(), &self.tried[..self.tried_len])?;
        if self.tried_len < self.tried.len() {
            self.tried[self.tried_len] = ti;
            self.tried_len += 1;
        }
        Some(ti)
    }
}

fn hash_key(spec: &str, headers: &HeaderMap, client: &SocketAddr) -> Option<Vec<u8>> {
    if let Some(name) = spec.strip_prefix("header:") {
        return headers.get(name).map(|v| v.as_bytes().to_vec());
    }
    if let Some(name) = spec.strip_prefix("cookie:") {
        return headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|kv| kv.trim().split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_bytes().to_vec());
    }
    Some(client.ip().to_string().into_bytes())
}
