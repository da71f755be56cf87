//! Events: listing with filters, acknowledgement (one or by filter), unacknowledged
//! counts, and live streams over SSE that resume from `Last-Event-ID`.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::Json;
use fleetgate_core::events::Severity;
use fleetgate_core::time::now_ms;
use fleetgate_store::{EventFilter, EventRecord, UnackedCounts};
use futures::Stream;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::broadcast::error::RecvError;
use utoipa::ToSchema;

use super::rfc3339;
use crate::auth::AuthContext;
use crate::bus::{Release, StreamOrder};
use crate::error::{ApiError, ApiResult};
use crate::extract::{JsonBody, ListEnvelope, Pagination, QueryParams};
use crate::AppState;

/// Heartbeat comment interval of the streams, so proxies keep idle streams open.
const HEARTBEAT: Duration = Duration::from_secs(15);
/// Events read from the store per query while a stream catches up.
const RESUME_BATCH: i64 = 500;

#[derive(Serialize, ToSchema)]
pub struct EventView {
    pub id: i64,
    #[serde(rename = "type")]
    pub event_type: String,
    /// `critical`, `warning` or `info`.
    pub severity: String,
    pub category: String,
    pub message: String,
    #[schema(value_type = Object)]
    pub details: Value,
    /// `manager`, `gateway` or a node id.
    pub source: String,
    pub route_id: Option<String>,
    pub upstream: Option<String>,
    pub node_id: Option<String>,
    pub flow_id: Option<String>,
    pub created_at: String,
    pub acknowledged_by: Option<String>,
    pub acknowledged_at: Option<String>,
}

pub fn event_view(r: &EventRecord) -> EventView {
    let e = &r.event;
    EventView {
        id: r.id,
        event_type: e.event_type.clone(),
        severity: e.severity.as_str().into(),
        category: e.category.clone(),
        message: e.message.clone(),
        details: e.details.clone(),
        source: e.source.clone(),
        route_id: e.route_id.clone(),
        upstream: e.upstream.clone(),
        node_id: e.node_id.clone(),
        flow_id: e.flow_id.clone(),
        created_at: rfc3339(e.created_at),
        acknowledged_by: r.acknowledged_by.clone(),
        acknowledged_at: r.acknowledged_at.map(rfc3339),
    }
}

/// `filter`, kept to the events a caller limited to some nodes may see: those of
/// no node and of its nodes.
pub(crate) fn limited(mut filter: EventFilter, auth: &AuthContext) -> EventFilter {
    filter.node_ids = super::nodes::allowed(auth).cloned();
    filter
}

/// The filter named by query parameters (`severity`, `category`, `type`, `node_id`,
/// `route_id`, `upstream`, `since`, `until`, `acknowledged`).
fn filter_of(q: &QueryParams) -> ApiResult<EventFilter> {
    let severity = q
        .text("severity")
        .map(|s| {
            Severity::parse(s).ok_or_else(|| {
                ApiError::bad_request("severity", "must be critical, warning or info")
            })
        })
        .transpose()?;
    let acknowledged = match q.text("acknowledged") {
        None => None,
        Some("true") => Some(false),
        Some("false") => Some(true),
        Some(_) => {
            return Err(ApiError::bad_request(
                "acknowledged",
                "must be true or false",
            ))
        }
    };
    Ok(EventFilter {
        severity,
        category: q.text("category").map(str::to_string),
        event_type: q.text("type").map(str::to_string),
        node_id: q.text("node_id").map(str::to_string),
        route_id: q.text("route_id").map(str::to_string),
        upstream: q.text("upstream").map(str::to_string),
        since: q.time("since")?,
        until: q.time("until")?,
        unacknowledged: acknowledged,
        ..Default::default()
    })
}

#[utoipa::path(get, path = "/api/v1/events", operation_id = "list_events", tag = "events",
    params(
        ("severity" = Option<String>, Query, description = "critical, warning or info"),
        ("category" = Option<String>, Query, description = "e.g. circuit_breaker"),
        ("type" = Option<String>, Query, description = "e.g. circuit_breaker.opened"),
        ("node_id" = Option<String>, Query, description = "Events of one node"),
        ("route_id" = Option<String>, Query, description = "Events of one route"),
        ("upstream" = Option<String>, Query, description = "Events of one upstream"),
        ("since" = Option<String>, Query, description = "RFC 3339 or Unix ms"),
        ("until" = Option<String>, Query, description = "RFC 3339 or Unix ms"),
        ("acknowledged" = Option<bool>, Query, description = "Only acknowledged (true) or unacknowledged (false) events"),
        crate::extract::PageParams),
    responses((status = 200, description = "Events, newest first", body = ListEnvelope<EventView>)))]
pub async fn list(
    State(state): State<AppState>,
    auth: AuthContext,
    q: QueryParams,
    Pagination(page): Pagination,
) -> ApiResult<Json<ListEnvelope<EventView>>> {
    let filter = limited(filter_of(&q)?, &auth);
    let p = state.store.list_events(&filter, page).await?;
    Ok(Json(ListEnvelope::new(
        p.items.iter().map(event_view).collect(),
        p.total,
        page,
    )))
}

#[utoipa::path(get, path = "/api/v1/events/count", operation_id = "count_events", tag = "events",
    responses((status = 200, description = "Unacknowledged events by severity", body = Object)))]
pub async fn count(
    State(state): State<AppState>,
    auth: AuthContext,
) -> ApiResult<Json<UnackedCounts>> {
    let filter = limited(EventFilter::default(), &auth);
    Ok(Json(state.store.count_unacked(&filter).await?))
}

fn event_id(raw: &str) -> ApiResult<i64> {
    raw.parse::<i64>().ok().filter(|n| *n > 0).ok_or_else(|| {
        ApiError::bad_request("id", format!("must be a positive integer, got {raw:?}"))
    })
}

/// The event `id` if the caller may see it (a node-scoped key sees its nodes' events).
async fn visible_event(state: &AppState, auth: &AuthContext, id: i64) -> ApiResult<EventRecord> {
    let e = state
        .store
        .get_event(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("event {id}")))?;
    if !limited(EventFilter::default(), auth)
        .node_ids
        .is_none_or(|ids| e.event.node_id.as_ref().is_none_or(|n| ids.contains(n)))
    {
        return Err(ApiError::not_found(format!("event {id}")));
    }
    Ok(e)
}

#[utoipa::path(get, path = "/api/v1/events/{id}", operation_id = "get_event", tag = "events",
    params(("id" = String, Path, description = "Event id")),
    responses((status = 200, description = "The event", body = EventView)))]
pub async fn get_one(
    State(state): State<AppState>,
    auth: AuthContext,
    Path(id): Path<String>,
) -> ApiResult<Json<EventView>> {
    let id = event_id(&id)?;
    Ok(Json(event_view(&visible_event(&state, &auth, id).await?)))
}

#[utoipa::path(post, path = "/api/v1/events/{id}/ack", operation_id = "ack_event", tag = "events",
    params(("id" = String, Path, description = "Event id")),
    responses((status = 200, description = "Acknowledged (or already acknowledged)", body = EventView)))]
pub async fn ack(
    State(state): State<AppState>,
    auth: AuthContext,
    Path(id): Path<String>,
) -> ApiResult<Json<EventView>> {
    let id = event_id(&id)?;
    visible_event(&state, &auth, id).await?;
    if state
        .store
        .ack_event(id, &auth.actor.name, now_ms())
        .await?
    {
        state
            .store
            .append_audit(
                &auth.actor,
                fleetgate_store::AuditEvent::new("event.ack", "event", Some(&id.to_string())),
            )
            .await?;
    }
    let e = state
        .store
        .get_event(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("event {id}")))?;
    Ok(Json(event_view(&e)))
}

/// Which unacknowledged events to acknowledge; an empty filter means all of them.
#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct AckFilter {
    pub severity: Option<Severity>,
    pub category: Option<String>,
    #[serde(rename = "type")]
    pub event_type: Option<String>,
    pub node_id: Option<String>,
    pub route_id: Option<String>,
    pub upstream: Option<String>,
    /// Unix milliseconds.
    pub since: Option<i64>,
    /// Unix milliseconds.
    pub until: Option<i64>,
    /// Only these events (up to 1000), e.g. a selection in the dashboard.
    #[schema(max_items = 1000)]
    pub ids: Option<Vec<i64>>,
}

/// Most event ids one acknowledgement may name.
const MAX_ACK_IDS: usize = 1000;

#[derive(Serialize, ToSchema)]
pub struct AckResult {
    pub acknowledged: u64,
}

#[utoipa::path(post, path = "/api/v1/events/ack", operation_id = "ack_events", tag = "events",
    request_body = AckFilter,
    responses((status = 200, description = "Every unacknowledged event the filter selects is acknowledged", body = AckResult)))]
pub async fn ack_many(
    State(state): State<AppState>,
    auth: AuthContext,
    JsonBody(body): JsonBody<AckFilter>,
) -> ApiResult<Json<AckResult>> {
    if let Some(ids) = &body.ids {
        if ids.len() > MAX_ACK_IDS {
            return Err(ApiError::bad_request(
                "ids",
                format!("at most {MAX_ACK_IDS} ids, got {}", ids.len()),
            ));
        }
        if let Some(bad) = ids.iter().find(|id| **id <= 0) {
            return Err(ApiError::bad_request(
                "ids",
                format!("event ids are positive integers, got {bad}"),
            ));
        }
    }
    let filter = EventFilter {
        severity: body.severity,
        category: body.category,
        event_type: body.event_type,
        node_id: body.node_id,
        route_id: body.route_id,
        upstream: body.upstream,
        since: body.since,
        until: body.until,
        ids: body.ids,
        ..Default::default()
    };
    let filter = limited(filter, &auth);
    let n = state
        .store
        .ack_events(&filter, &auth.actor.name, now_ms())
        .await?;
    state
        .store
        .append_audit(
            &auth.actor,
            fleetgate_store::AuditEvent::new("event.ack_many", "event", None)
                .after(serde_json::json!({"acknowledged": n})),
        )
        .await?;
    Ok(Json(AckResult { acknowledged: n }))
}

fn sse_event(r: &EventRecord) -> SseEvent {
    let data = serde_json::to_string(&event_view(r)).unwrap_or_else(|_| "{}".into());
    SseEvent::default()
        .id(r.id.to_string())
        .event(r.event.event_type.clone())
        .data(data)
}

/// An event that arrived after one with a higher id was sent (from another manager):
/// without an SSE id, so the client's `Last-Event-ID` stays at the highest id it got.
fn late_sse_event(r: &EventRecord) -> SseEvent {
    let data = serde_json::to_string(&event_view(r)).unwrap_or_else(|_| "{}".into());
    SseEvent::default()
        .event(r.event.event_type.clone())
        .data(data)
}

/// The stream after `after`: stored events first (resume), then live ones; ends when
/// the client falls more than the live buffer behind (a slow client is dropped).
///
/// SSE ids are store ids and only go up on a stream. With several managers (NATS),
/// live events are put in id order by [`StreamOrder`]: an event arriving after a
/// higher id was sent is sent without an SSE id, and none is sent twice.
fn event_stream(
    state: AppState,
    filter: EventFilter,
    after: Option<i64>,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    // Subscribing first means nothing stored meanwhile is missed; ids dedupe.
    let mut live = state.events.subscribe();
    let mut order = StreamOrder::new(after, state.events.reorder_window());
    async_stream(move |tx| async move {
        if let Some(mut last) = after {
            loop {
                let batch = match state.store.events_after(last, &filter, RESUME_BATCH).await {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::warn!(error = %e, "event stream could not resume");
                        return;
                    }
                };
                let n = batch.len();
                for r in batch {
                    last = r.id;
                    order.passed(r.id);
                    if tx.send(sse_event(&r)).await.is_err() {
                        return;
                    }
                }
                if (n as i64) < RESUME_BATCH {
                    break;
                }
            }
        }
        let mut out = Vec::new();
        loop {
            let due = order.deadline().map(tokio::time::Instant::from_std);
            tokio::select! {
                r = live.recv() => match r {
                    Ok(r) => order.push(r, std::time::Instant::now(), &mut out),
                    Err(RecvError::Lagged(missed)) => {
                        tracing::info!(missed, "dropping a slow event stream client");
                        return;
                    }
                    Err(RecvError::Closed) => return,
                },
                _ = tokio::time::sleep_until(due.unwrap_or_else(tokio::time::Instant::now)), if due.is_some() => {
                    order.release_due(std::time::Instant::now(), &mut out);
                }
            }
            for release in out.drain(..) {
                let (r, event) = match &release {
                    Release::InOrder(r) => (r, sse_event(r)),
                    Release::Late(r) => (r, late_sse_event(r)),
                };
                if !filter.accepts(&r.event, r.acknowledged_at.is_some()) {
                    continue;
                }
                if tx.send(event).await.is_err() {
                    return;
                }
            }
        }
    })
}

/// A stream fed by a task through a one-slot channel: the task waits while the client
/// does not read, so an unread stream holds one event, not a growing queue.
pub(crate) fn async_stream<F, Fut>(f: F) -> impl Stream<Item = Result<SseEvent, Infallible>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<SseEvent>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(f(tx));
    futures::stream::unfold(
        rx,
        |mut rx| async move { rx.recv().await.map(|e| (Ok(e), rx)) },
    )
}

fn last_event_id(headers: &HeaderMap, q: &QueryParams) -> ApiResult<Option<i64>> {
    let raw = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| q.text("last_event_id").map(str::to_string));
    raw.map(|v| {
        v.trim()
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .ok_or_else(|| ApiError::bad_request("Last-Event-ID", "must be an event id"))
    })
    .transpose()
}

pub(crate) fn sse(
    stream: impl Stream<Item = Result<SseEvent, Infallible>> + Send + 'static,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    Sse::new(stream).keep_alive(KeepAlive::new().interval(HEARTBEAT).text("heartbeat"))
}

#[utoipa::path(get, path = "/api/v1/stream/events", operation_id = "stream_events", tag = "events",
    params(
        ("severity" = Option<String>, Query, description = "critical, warning or info"),
        ("category" = Option<String>, Query, description = "e.g. circuit_breaker"),
        ("type" = Option<String>, Query, description = "e.g. circuit_breaker.opened"),
        ("last_event_id" = Option<i64>, Query, description = "Resume after this id (or send the Last-Event-ID header)")),
    responses((status = 200, description = "Server-sent events: each event's id, type and JSON", content_type = "text/event-stream", body = String)))]
pub async fn stream_events(
    State(state): State<AppState>,
    auth: AuthContext,
    headers: HeaderMap,
    q: QueryParams,
) -> ApiResult<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>> {
    let filter = limited(filter_of(&q)?, &auth);
    let after = last_event_id(&headers, &q)?;
    Ok(sse(event_stream(state, filter, after)))
}

#[utoipa::path(get, path = "/api/v1/stream/alerts", operation_id = "stream_alerts", tag = "events",
    params(("last_event_id" = Option<i64>, Query, description = "Resume after this id (or send the Last-Event-ID header)")),
    responses((status = 200, description = "Server-sent warning and critical events", content_type = "text/event-stream", body = String)))]
pub async fn stream_alerts(
    State(state): State<AppState>,
    auth: AuthContext,
    headers: HeaderMap,
    q: QueryParams,
) -> ApiResult<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>> {
    let filter = limited(
        EventFilter {
            min_severity: Some(Severity::Warning),
            ..Default::default()
        },
        &auth,
    );
    let after = last_event_id(&headers, &q)?;
    Ok(sse(event_stream(state, filter, after)))
}
