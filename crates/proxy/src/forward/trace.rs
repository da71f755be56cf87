//! Tracing of a routed request (OpenTelemetry): whether it is traced, the
//! `traceparent` the upstream gets, and the span recorded when it is answered.
//!
//! A caller's W3C `traceparent` is read strictly
//! ([`fleetgate_core::trace_context`]); with `settings.tracing.parent_based` its
//! `sampled` flag decides, otherwise (and without a valid one) the revision's
//! `sample_ratio` does. A traced request goes upstream with a `traceparent`
//! naming the gateway's span as parent, in place of the caller's; an invalid
//! one is removed with its `tracestate`.
//!
//! Cost when nothing is traced: without an exporter one branch on an `Option`;
//! with one, a header lookup and (for ratios strictly between 0 and 1) one
//! random number — no allocation, and the caller's headers go upstream as sent.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::Instant;

use fleetgate_core::trace_context::{tracestate_ok, TraceParent, FLAG_SAMPLED};
use fleetgate_shared::otel::{self, Scope, Span, SpanKind, Tracer};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;

use super::RequestCtx;
use crate::compiled::{Compiled, AI_UPSTREAM};

pub(crate) const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub(crate) const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// A traced request's span while the request runs.
pub(super) struct ActiveSpan {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    /// The caller's span, when it sent a valid `traceparent`.
    parent: Option<[u8; 8]>,
    trace_state: Option<String>,
    start_unix_ns: u64,
    /// The target the last attempt went to (`usize::MAX`: none).
    target: AtomicUsize,
    attempts: AtomicU32,
}

impl ActiveSpan {
    /// Notes that an attempt goes to target `index` of the route's upstream.
    #[inline]
    pub(super) fn attempt(&self, index: usize) {
        self.target.store(index, Ordering::Relaxed);
        self.attempts.fetch_add(1, Ordering::Relaxed);
    }
}

/// Decides whether a routed request is traced; when it is, puts the gateway's
/// `traceparent` on the headers the upstream will get and returns its span.
#[inline]
pub(super) fn start(
    compiled: &Compiled,
    headers: &mut HeaderMap,
    started: Instant,
) -> Option<ActiveSpan> {
    let incoming = headers
        .get(&TRACEPARENT)
        .map(|v| TraceParent::parse(v.as_bytes()));
    let parent = match incoming {
        None => None,
        Some(Ok(tp)) => Some(tp),
        Some(Err(_)) => {
            // Not the caller's trace to continue: its state goes with it.
            headers.remove(&TRACEPARENT);
            headers.remove(&TRACESTATE);
            None
        }
    };
    let sampled = match parent {
        Some(tp) if compiled.trace_parent_based => tp.sampled(),
        _ => otel::sample_root(compiled.trace_threshold),
    };
    if !sampled {
        return None;
    }
    begin(parent, headers, started)
}

#[cold]
fn begin(
    parent: Option<TraceParent>,
    headers: &mut HeaderMap,
    started: Instant,
) -> Option<ActiveSpan> {
    let span_id = otel::new_span_id();
    let trace_id = parent.map_or_else(otel::new_trace_id, |p| p.trace_id);
    // One `tracestate` line that may be forwarded stays with the trace; several
    // lines, or one that may not, are dropped.
    let trace_state = match parent {
        None => None,
        Some(_) => {
            let mut lines = headers.get_all(&TRACESTATE).iter();
            match (lines.next(), lines.next()) {
                (Some(v), None) if tracestate_ok(v.as_bytes()) => {
                    v.to_str().ok().map(str::to_string)
                }
                _ => None,
            }
        }
    };
    if trace_state.is_none() {
        headers.remove(&TRACESTATE);
    }
    let ours = TraceParent {
        trace_id,
        parent_id: span_id,
        flags: FLAG_SAMPLED,
    };
    let value = HeaderValue::from_bytes(&ours.encode()).ok()?;
    headers.insert(TRACEPARENT, value);
    let elapsed = u64::try_from(started.elapsed().as_nanos()).unwrap_or(0);
    Some(ActiveSpan {
        trace_id,
        span_id,
        parent: parent.map(|p| p.parent_id),
        trace_state,
        start_unix_ns: otel::unix_now_ns().saturating_sub(elapsed),
        target: AtomicUsize::new(usize::MAX),
        attempts: AtomicU32::new(0),
    })
}

/// Records the span of an answered request.
#[cold]
pub(super) fn finish(
    tracer: &Tracer,
    span: &ActiveSpan,
    ctx: &RequestCtx<'_>,
    req: &Parts,
    status: u16,
) {
    let rt = ctx.rt;
    let method = req.method.as_str();
    let mut s = Span {
        scope: Scope::Gateway,
        trace_id: span.trace_id,
        span_id: span.span_id,
        parent_span_id: span.parent.unwrap_or([0; 8]),
        remote_parent: span.parent.is_some(),
        trace_state: span.trace_state.clone(),
        name: format!("{method} {}", rt.route.id),
        kind: SpanKind::Server,
        start_unix_ns: span.start_unix_ns,
        end_unix_ns: otel::unix_now_ns(),
        attributes: Vec::with_capacity(14),
        error: (status >= 500).then(|| format!("answered {status}")),
    };
    s.attr("http.request.method", method.to_string());
    s.attr("url.scheme", if ctx.tls { "https" } else { "http" });
    s.attr("url.path", req.uri.path().to_string());
    let (host, port) = split_host(ctx.host);
    s.attr("server.address", host.to_string());
    if let Some(p) = port {
        s.attr("server.port", i64::from(p));
    }
    s.attr("client.address", ctx.peer.addr.ip().to_string());
    s.attr(
        "network.protocol.version",
        match req.version {
            http::Version::HTTP_10 => "1.0",
            http::Version::HTTP_2 => "2",
            _ => "1.1",
        },
    );
    s.attr("http.response.status_code", status);
    s.attr("fleetgate.route", rt.route.id.clone());
    s.attr(
        "fleetgate.request_id",
        ctx.rid.to_str().unwrap_or("").to_string(),
    );
    match &rt.upstream {
        Some(up) => {
            s.attr("fleetgate.upstream", up.name.clone());
            let ti = span.target.load(Ordering::Relaxed);
            if let Some(t) = up.targets.get(ti) {
                s.attr("fleetgate.target", t.url.clone());
            }
            s.attr(
                "fleetgate.attempts",
                i64::from(span.attempts.load(Ordering::Relaxed)),
            );
        }
        None => s.attr("fleetgate.upstream", AI_UPSTREAM),
    }
    tracer.record(s);
}

/// `host` and `port` of a `Host` value (`name`, `name:port`, `[v6]:port`).
fn split_host(h: &str) -> (&str, Option<u16>) {
    if let Some(rest) = h.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((ip, tail)) => (ip, tail.strip_prefix(':').and_then(|p| p.parse().ok())),
            None => (h, None),
        };
    }
    match h.rsplit_once(':') {
        Some((name, p)) if !name.contains(':') => match p.parse() {
            Ok(port) => (name, Some(port)),
            Err(_) => (h, None),
        },
        _ => (h, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compiled(ratio: f64, parent_based: bool) -> Compiled {
        let mut c = Compiled::empty();
        c.trace_threshold = otel::ratio_threshold(ratio);
        c.trace_parent_based = parent_based;
        c
    }

    const CALLER: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    const UNSAMPLED: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";

    fn headers(pairs: &[(&HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append((*k).clone(), HeaderValue::from_str(v).expect("value"));
        }
        h
    }

    #[test]
    fn a_sampled_caller_is_continued_with_our_span_as_parent() {
        let mut h = headers(&[(&TRACEPARENT, CALLER), (&TRACESTATE, "congo=t61rcWkgMzE")]);
        let span = start(&compiled(0.0, true), &mut h, Instant::now()).expect("traced");
        let sent = TraceParent::parse(h[&TRACEPARENT].as_bytes()).expect("valid");
        assert_eq!(sent.trace_id, span.trace_id);
        assert_eq!(sent.parent_id, span.span_id);
        assert!(sent.sampled());
        assert_eq!(
            fleetgate_core::trace_context::hex_id(&span.parent.expect("parent")),
            "00f067aa0ba902b7"
        );
        assert_eq!(h[&TRACESTATE], "congo=t61rcWkgMzE");
        assert_eq!(span.trace_state.as_deref(), Some("congo=t61rcWkgMzE"));
    }

    #[test]
    fn an_unsampled_caller_passes_through_untouched() {
        let mut h = headers(&[(&TRACEPARENT, UNSAMPLED)]);
        assert!(start(&compiled(1.0, true), &mut h, Instant::now()).is_none());
        assert_eq!(h[&TRACEPARENT], UNSAMPLED);
        // Without parent_based the ratio decides, and the trace is continued.
        let span = start(&compiled(1.0, false), &mut h, Instant::now()).expect("ratio 1");
        assert_eq!(
            fleetgate_core::trace_context::hex_id(&span.trace_id),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
    }

    #[test]
    fn an_invalid_traceparent_starts_a_new_trace_without_its_state() {
        let bad = "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01";
        let mut h = headers(&[(&TRACEPARENT, bad), (&TRACESTATE, "a=b")]);
        let span = start(&compiled(1.0, true), &mut h, Instant::now()).expect("ratio 1");
        assert!(span.parent.is_none());
        assert!(h.get(&TRACESTATE).is_none());
        let sent = TraceParent::parse(h[&TRACEPARENT].as_bytes()).expect("ours");
        assert_eq!(sent.trace_id, span.trace_id);
        // At ratio 0 it is only removed.
        let mut h = headers(&[(&TRACEPARENT, bad), (&TRACESTATE, "a=b")]);
        assert!(start(&compiled(0.0, true), &mut h, Instant::now()).is_none());
        assert!(h.is_empty());
    }

    #[test]
    fn ratio_zero_without_a_caller_traces_nothing() {
        let mut h = HeaderMap::new();
        assert!(start(&compiled(0.0, true), &mut h, Instant::now()).is_none());
        assert!(h.is_empty());
    }

    #[test]
    fn hosts_split_into_name_and_port() {
        assert_eq!(split_host("a.test"), ("a.test", None));
        assert_eq!(split_host("a.test:8080"), ("a.test", Some(8080)));
        assert_eq!(split_host("[::1]:80"), ("::1", Some(80)));
        assert_eq!(split_host("[::1]"), ("::1", None));
    }
}
