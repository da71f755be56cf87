//! Traffic metrics: the live snapshot, stored series and the snapshot stream.

use std::convert::Infallible;

use axum::extract::State;
use axum::response::sse::{Event as SseEvent, Sse};
use axum::Json;
use fleetgate_core::metrics::{ratio, round3, SERIES_METRICS};
use fleetgate_core::time::now_ms;
use fleetgate_store::{MetricPoint, RESOLUTIONS};
use futures::Stream;
use serde::Serialize;
use utoipa::ToSchema;

use super::events::{async_stream, sse};
use super::rfc3339;
use crate::auth::AuthContext;
use crate::error::{ApiError, ApiResult};
use crate::extract::QueryParams;
use crate::traffic::MetricsSnapshot;
use crate::AppState;

/// Most points one series answer may hold.
pub const MAX_POINTS: i64 = 5000;
/// Largest step accepted: a year.
const MAX_STEP_SECS: i64 = 366 * 86_400;
/// Points a series answer aims at when no step is given.
const DEFAULT_POINTS: i64 = 360;

#[utoipa::path(get, path = "/api/v1/metrics", operation_id = "metrics_snapshot", tag = "metrics",
    responses((status = 200, description = "Traffic of the last seconds: rates, error ratios, latency quantiles per route and upstream, breaker states", body = MetricsSnapshot)))]
pub async fn snapshot(State(state): State<AppState>, _auth: AuthContext) -> Json<MetricsSnapshot> {
    Json((*state.traffic.borrow().clone()).clone())
}

/// One point of a series; `value` is null where it is undefined (latency without
/// requests).
#[derive(Serialize, ToSchema)]
pub struct SeriesPoint {
    /// Start of the step (RFC 3339).
    pub t: String,
    /// Start of the step, Unix ms.
    pub ts: i64,
    pub value: Option<f64>,
}

#[derive(Serialize, ToSchema)]
pub struct Series {
    pub metric: String,
    pub route: Option<String>,
    pub upstream: Option<String>,
    pub from: String,
    pub to: String,
    /// Seconds per point.
    pub step: i64,
    /// Seconds per stored row the points were built from (10, 60 or 3600).
    pub resolution: i64,
    pub points: Vec<SeriesPoint>,
}

/// Metrics that describe a route or all traffic, and those that describe an upstream.
const ROUTE_METRICS: [&str; 10] = [
    "requests",
    "requests_per_second",
    "errors",
    "error_rate",
    "client_errors",
    "rate_limited",
    "rate_limited_per_second",
    "latency_p50_ms",
    "latency_p95_ms",
    "latency_p99_ms",
];
const UPSTREAM_METRICS: [&str; 9] = [
    "requests",
    "requests_per_second",
    "upstream_failures",
    "upstream_failure_rate",
    "upstream_timeouts",
    "upstream_retries",
    "latency_p50_ms",
    "latency_p95_ms",
    "latency_p99_ms",
];

fn value_of(metric: &str, p: &MetricPoint, step_secs: i64) -> Option<f64> {
    let latency = |w: f64| (p.latency_count > 0).then(|| round3(w / p.latency_count as f64));
    let per_second = |n: i64| round3(n as f64 / step_secs as f64);
    Some(match metric {
        "requests" => p.requests as f64,
        "requests_per_second" => per_second(p.requests),
        "errors" | "upstream_failures" => p.errors as f64,
        "error_rate" | "upstream_failure_rate" => {
            ratio(p.errors.max(0) as u64, p.requests.max(0) as u64)
        }
        "client_errors" => p.client_errors as f64,
        "rate_limited" => p.rate_limited as f64,
        "rate_limited_per_second" => per_second(p.rate_limited),
        "upstream_timeouts" => p.timeouts as f64,
        "upstream_retries" => p.retries as f64,
        "latency_p50_ms" => return latency(p.p50_weighted),
        "latency_p95_ms" => return latency(p.p95_weighted),
        "latency_p99_ms" => return latency(p.p99_weighted),
        _ => return None,
    })
}

/// `a / b` rounded up, for `a >= 0` and `b > 0`.
fn div_ceil(a: i64, b: i64) -> i64 {
    a / b + i64::from(a % b != 0)
}

/// The stored resolution a query reads: the coarsest one that divides `step`,
/// then finer ones are preferred while they still cover `from` (are not pruned yet).
fn resolution_for(step: i64, from: i64, now: i64, retention_ms: impl Fn(i64) -> i64) -> i64 {
    let usable: Vec<i64> = RESOLUTIONS
        .iter()
        .copied()
        .filter(|r| step % r == 0)
        .collect();
    // The finest usable resolution still holding `from`, else the coarsest.
    usable
        .iter()
        .copied()
        .find(|r| from >= now - retention_ms(*r))
        .or_else(|| usable.last().copied())
        .unwrap_or(RESOLUTIONS[0])
}

#[utoipa::path(get, path = "/api/v1/metrics/series", operation_id = "metrics_series", tag = "metrics",
    params(
        ("metric" = String, Query, description = "requests, requests_per_second, errors, error_rate, client_errors, rate_limited, rate_limited_per_second, latency_p50_ms, latency_p95_ms, latency_p99_ms; for an upstream also upstream_failures, upstream_failure_rate, upstream_timeouts, upstream_retries"),
        ("route" = Option<String>, Query, description = "One route's series (default: all traffic)"),
        ("upstream" = Option<String>, Query, description = "One upstream's series"),
        ("from" = Option<String>, Query, description = "RFC 3339 or Unix ms (default: one hour before `to`)"),
        ("to" = Option<String>, Query, description = "RFC 3339 or Unix ms (default: now)"),
        ("step" = Option<i64>, Query, description = "Seconds per point, a multiple of 10 (default: about 360 points)")),
    responses((status = 200, description = "The series, one point per step from `from` to `to`", body = Series)))]
pub async fn series(
    State(state): State<AppState>,
    _auth: AuthContext,
    q: QueryParams,
) -> ApiResult<Json<Series>> {
    let metric = q
        .text("metric")
        .ok_or_else(|| ApiError::bad_request("metric", "is required"))?
        .to_string();
    if !SERIES_METRICS.contains(&metric.as_str()) {
        return Err(ApiError::bad_request(
            "metric",
            format!(
                "unknown metric {metric:?}; one of {}",
                SERIES_METRICS.join(", ")
            ),
        ));
    }
    let route = q.text("route").map(str::to_string);
    let upstream = q.text("upstream").map(str::to_string);
    let scope = match (&route, &upstream) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "upstream",
                "give a route or an upstream, not both",
            ))
        }
        (Some(r), None) => format!("route:{r}"),
        (None, Some(u)) => format!("upstream:{u}"),
        (None, None) => String::new(),
    };
    let allowed: &[&str] = if upstream.is_some() {
        &UPSTREAM_METRICS
    } else {
        &ROUTE_METRICS
    };
    if !allowed.contains(&metric.as_str()) {
        return Err(ApiError::bad_request(
            "metric",
            format!(
                "{metric:?} does not describe {}; one of {}",
                if upstream.is_some() {
                    "an upstream"
                } else {
                    "a route or all traffic"
                },
                allowed.join(", ")
            ),
        ));
    }
    let now = now_ms();
    let to = q.time("to")?.unwrap_or(now);
    let from = q.time("from")?.unwrap_or(to.saturating_sub(3_600_000));
    if from < 0 || to < 0 {
        return Err(ApiError::bad_request("from", "times must not be negative"));
    }
    if from >= to {
        return Err(ApiError::bad_request("from", "must be before `to`"));
    }
    let span_secs = div_ceil(to - from, 1000);
    let step = match q.int("step")? {
        Some(s) if s > MAX_STEP_SECS => {
            return Err(ApiError::bad_request(
                "step",
                format!("must be at most {MAX_STEP_SECS} seconds (one year), got {s}"),
            ))
        }
        Some(s) if s < 10 || s % 10 != 0 => {
            return Err(ApiError::bad_request(
                "step",
                format!("must be a positive multiple of 10 seconds, got {s}"),
            ))
        }
        Some(s) => s,
        None => {
            // About DEFAULT_POINTS points, rounded up to a step a resolution divides.
            let raw = (span_secs / DEFAULT_POINTS).max(10);
            [10, 30, 60, 300, 600, 1800, 3600, 21_600, 86_400]
                .into_iter()
                .find(|s| *s >= raw)
                .unwrap_or_else(|| div_ceil(raw, 3600) * 3600)
        }
    };
    let points_wanted = div_ceil(span_secs, step);
    if points_wanted > MAX_POINTS {
        return Err(ApiError::bad_request(
            "step",
            format!(
                "{step} s over this range gives {points_wanted} points; at most {MAX_POINTS} (choose a larger step or a shorter range)"
            ),
        ));
    }
    let step_ms = step * 1000;
    let settings = state.settings().metrics;
    let resolution = resolution_for(step, from, now, |r| settings.retention_ms(r));
    let start = from - from.rem_euclid(step_ms);
    let rows = state
        .store
        .metric_points(resolution, &scope, start, to)
        .await?;
    let binned = MetricPoint::bin(&rows, step_ms);
    let mut at = binned.iter().peekable();
    let mut points = Vec::with_capacity(points_wanted as usize + 1);
    let mut t = start;
    while t < to {
        let empty = MetricPoint {
            ts: t,
            ..Default::default()
        };
        let p = match at.peek() {
            Some(p) if p.ts == t => at.next().unwrap_or(&empty),
            _ => &empty,
        };
        points.push(SeriesPoint {
            t: rfc3339(t),
            ts: t,
            value: value_of(&metric, p, step),
        });
        match t.checked_add(step_ms) {
            Some(next) => t = next,
            None => break,
        }
    }
    Ok(Json(Series {
        metric,
        route,
        upstream,
        from: rfc3339(from),
        to: rfc3339(to),
        step,
        resolution,
        points,
    }))
}

#[utoipa::path(get, path = "/api/v1/stream/metrics", operation_id = "stream_metrics", tag = "metrics",
    responses((status = 200, description = "Server-sent `metrics` events: the live snapshot every second", content_type = "text/event-stream", body = String)))]
pub async fn stream(
    State(state): State<AppState>,
    _auth: AuthContext,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let mut rx = state.traffic.subscribe();
    sse(async_stream(move |tx| async move {
        loop {
            let snap = rx.borrow_and_update().clone();
            let data = serde_json::to_string(&*snap).unwrap_or_else(|_| "{}".into());
            if tx
                .send(SseEvent::default().event("metrics").data(data))
                .await
                .is_err()
            {
                return;
            }
            // A client that reads slowly gets the latest snapshot, never a backlog.
            if rx.changed().await.is_err() {
                return;
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolution_prefers_fine_rows_that_still_exist() {
        let hour = 3_600_000;
        let retention = |r: i64| match r {
            10 => 24 * hour,
            60 => 7 * 24 * hour,
            _ => 90 * 24 * hour,
        };
        let now = 1_000 * 24 * hour;
        assert_eq!(resolution_for(10, now - hour, now, retention), 10);
        assert_eq!(resolution_for(60, now - hour, now, retention), 10);
        assert_eq!(resolution_for(60, now - 48 * hour, now, retention), 60);
        assert_eq!(
            resolution_for(3600, now - 30 * 24 * hour, now, retention),
            3600
        );
        // A step only 10 s divides reads 10 s rows even past their retention.
        assert_eq!(resolution_for(30, now - 48 * hour, now, retention), 10);
    }

    #[test]
    fn latency_is_undefined_without_requests() {
        let p = MetricPoint::default();
        assert_eq!(value_of("latency_p99_ms", &p, 10), None);
        assert_eq!(value_of("requests_per_second", &p, 10), Some(0.0));
        let p = MetricPoint {
            requests: 20,
            errors: 5,
            latency_count: 20,
            p99_weighted: 20.0 * 12.5,
            ..Default::default()
        };
        assert_eq!(value_of("latency_p99_ms", &p, 10), Some(12.5));
        assert_eq!(value_of("error_rate", &p, 10), Some(0.25));
        assert_eq!(value_of("requests_per_second", &p, 10), Some(2.0));
    }
}
