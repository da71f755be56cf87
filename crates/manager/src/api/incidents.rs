//! Incidents (FlexGate's incidents): opened by alert rules or by hand, moved through
//! open → acknowledged → resolved (and reopened), with a timeline of related events,
//! status changes and notes.
//!
//! `analysis` is reserved for the AI analysis of an incident (a later module will
//! write it through the store); it is `null` until then.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use fleetgate_core::alerts::{IncidentStatus, TimelineKind};
use fleetgate_core::events::Severity;
use fleetgate_core::time::now_ms;
use fleetgate_core::user::Role;
use fleetgate_store::{IncidentFilter, IncidentRecord, NewTimelineEntry, TimelineEntry};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::alert_rules::{check_line, check_text};
use super::rfc3339;
use crate::auth::AuthContext;
use crate::error::{ApiError, ApiResult};
use crate::extract::{IfMatch, JsonBody, ListEnvelope, Pagination, QueryParams};
use crate::AppState;

/// Events an operator may link in one request.
const MAX_EVENT_IDS: usize = 100;

#[derive(Serialize, ToSchema)]
pub struct TimelineEntryView {
    pub id: i64,
    pub at: String,
    pub kind: TimelineKind,
    pub message: String,
    /// Who changed the status or wrote the note (`system` for alert rules).
    pub actor: Option<String>,
    /// The related event (kind `event`); it may have been pruned from the event log since.
    pub event_id: Option<i64>,
    pub event_type: Option<String>,
    /// The status the incident moved to (kind `status`).
    pub status: Option<IncidentStatus>,
}

fn entry_view(e: &TimelineEntry) -> TimelineEntryView {
    TimelineEntryView {
        id: e.id,
        at: rfc3339(e.at),
        kind: e.kind,
        message: e.message.clone(),
        actor: e.actor.clone(),
        event_id: e.event_id,
        event_type: e.event_type.clone(),
        status: e.status,
    }
}

/// An incident without its timeline (listings).
#[derive(Serialize, ToSchema)]
pub struct IncidentSummaryView {
    pub id: String,
    pub title: String,
    pub status: IncidentStatus,
    pub severity: Severity,
    /// The alert rule that opened it; null for incidents opened by hand.
    pub rule_id: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    pub acknowledged_by: Option<String>,
    pub acknowledged_at: Option<String>,
    pub resolved_by: Option<String>,
    pub resolved_at: Option<String>,
    /// The version an `If-Match` header refers to.
    pub version: i64,
}

/// An incident with its timeline and notes.
#[derive(Serialize, ToSchema)]
pub struct IncidentView {
    pub id: String,
    pub title: String,
    pub status: IncidentStatus,
    pub severity: Severity,
    /// The alert rule that opened it; null for incidents opened by hand.
    pub rule_id: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    pub acknowledged_by: Option<String>,
    pub acknowledged_at: Option<String>,
    pub resolved_by: Option<String>,
    pub resolved_at: Option<String>,
    /// Reserved for the AI analysis of the incident; null until that exists.
    #[schema(value_type = Option<Object>)]
    pub analysis: Option<Value>,
    /// The version an `If-Match` header refers to.
    pub version: i64,
    /// Related events, status changes and notes, oldest first.
    pub timeline: Vec<TimelineEntryView>,
    /// The notes of the timeline, oldest first.
    pub notes: Vec<TimelineEntryView>,
}

fn summary(i: &IncidentRecord) -> IncidentSummaryView {
    IncidentSummaryView {
        id: i.id.clone(),
        title: i.title.clone(),
        status: i.status,
        severity: i.severity,
        rule_id: i.rule_id.clone(),
        created_at: rfc3339(i.created_at),
        updated_at: rfc3339(i.updated_at),
        acknowledged_by: i.acknowledged_by.clone(),
        acknowledged_at: i.acknowledged_at.map(rfc3339),
        resolved_by: i.resolved_by.clone(),
        resolved_at: i.resolved_at.map(rfc3339),
        version: i.version,
    }
}

async fn full(state: &AppState, i: &IncidentRecord) -> ApiResult<IncidentView> {
    let timeline = state.store.incident_timeline(&i.id).await?;
    let s = summary(i);
    Ok(IncidentView {
        id: s.id,
        title: s.title,
        status: s.status,
        severity: s.severity,
        rule_id: s.rule_id,
        created_at: s.created_at,
        updated_at: s.updated_at,
        acknowledged_by: s.acknowledged_by,
        acknowledged_at: s.acknowledged_at,
        resolved_by: s.resolved_by,
        resolved_at: s.resolved_at,
        analysis: i.analysis.clone(),
        version: s.version,
        notes: timeline
            .iter()
            .filter(|e| e.kind == TimelineKind::Note)
            .map(entry_view)
            .collect(),
        timeline: timeline.iter().map(entry_view).collect(),
    })
}

async fn respond(state: &AppState, status: StatusCode, i: &IncidentRecord) -> ApiResult<Response> {
    let v = full(state, i).await?;
    Ok(crate::extract::json_with_etag(status, v.version, &v))
}

async fn incident(state: &AppState, id: &str) -> ApiResult<IncidentRecord> {
    if !super::alert_rules::storable_id(id) {
        return Err(ApiError::not_found(format!("incident {id:?}")));
    }
    state
        .store
        .get_incident(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("incident {id}")))
}

/// Timeline entries linking the events `ids` (which must exist), as `actor`.
/// `field` names the list (`event_ids`, errors name `event_ids[i]`) or, for a
/// single id, the field itself.
async fn event_links(
    state: &AppState,
    field: &str,
    ids: &[i64],
    actor: &str,
) -> ApiResult<Vec<NewTimelineEntry>> {
    let mut out = Vec::with_capacity(ids.len());
    for (i, id) in ids.iter().enumerate() {
        let name = if field == "event_id" {
            field.to_string()
        } else {
            format!("{field}[{i}]")
        };
        if *id < 1 {
            return Err(ApiError::bad_request(&name, "must be a positive event id"));
        }
        let e = state.store.get_event(*id).await?.ok_or_else(|| {
            ApiError::bad_request(
                &name,
                format!("there is no event {id} (it may have been pruned)"),
            )
        })?;
        out.push(NewTimelineEntry::event(
            e.event.created_at,
            e.id,
            &e.event.event_type,
            e.event.message.clone(),
            Some(actor),
        ));
    }
    Ok(out)
}

#[utoipa::path(get, path = "/api/v1/incidents", operation_id = "list_incidents", tag = "incidents",
    params(
        ("status" = Option<IncidentStatus>, Query, description = "open, acknowledged or resolved"),
        ("severity" = Option<Severity>, Query, description = "critical, warning or info"),
        ("rule_id" = Option<String>, Query, description = "Incidents opened by one alert rule"),
        crate::extract::PageParams),
    responses((status = 200, description = "Incidents, newest first, without their timelines", body = ListEnvelope<IncidentSummaryView>)))]
pub async fn list(
    State(state): State<AppState>,
    _auth: AuthContext,
    q: QueryParams,
    Pagination(page): Pagination,
) -> ApiResult<Json<ListEnvelope<IncidentSummaryView>>> {
    // A parameter given empty is not a value of its enum: refused like any other.
    let param = |name: &str| q.0.get(name).map(String::as_str);
    let rule_id = param("rule_id").map(str::to_string);
    if rule_id
        .as_deref()
        .is_some_and(|r| !super::alert_rules::storable_id(r))
    {
        return Err(ApiError::bad_request(
            "rule_id",
            "must not contain control characters",
        ));
    }
    let filter = IncidentFilter {
        status: param("status")
            .map(|s| {
                IncidentStatus::parse(s).ok_or_else(|| {
                    ApiError::bad_request("status", "must be open, acknowledged or resolved")
                })
            })
            .transpose()?,
        severity: param("severity")
            .map(|s| {
                Severity::parse(s).ok_or_else(|| {
                    ApiError::bad_request("severity", "must be critical, warning or info")
                })
            })
            .transpose()?,
        rule_id,
    };
    let p = state.store.list_incidents(&filter, page).await?;
    Ok(Json(ListEnvelope::new(
        p.items.iter().map(summary).collect(),
        p.total,
        page,
    )))
}

/// An incident opened by hand.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateIncident {
    /// 1 to 200 characters.
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    pub title: String,
    /// Default warning.
    #[serde(default)]
    pub severity: Option<Severity>,
    /// A first note (1 to 10000 characters).
    #[serde(default)]
    #[schema(
        min_length = 1,
        max_length = 10000,
        pattern = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$"
    )]
    pub note: Option<String>,
    /// Events to link (at most 100); each must exist.
    #[serde(default)]
    #[schema(max_items = 100)]
    pub event_ids: Option<Vec<i64>>,
}

#[utoipa::path(post, path = "/api/v1/incidents", operation_id = "create_incident", tag = "incidents",
    request_body = CreateIncident,
    responses((status = 201, description = "Opened", body = IncidentView)))]
pub async fn create(
    State(state): State<AppState>,
    auth: AuthContext,
    JsonBody(body): JsonBody<CreateIncident>,
) -> ApiResult<Response> {
    auth.require(Role::Operator)?;
    let title = check_line("title", &body.title, 200)?;
    let note = body
        .note
        .as_deref()
        .map(|n| check_note("note", n))
        .transpose()?;
    // A repeated id is linked once (the store skips an event already linked).
    let ids = body.event_ids.clone().unwrap_or_default();
    if ids.len() > MAX_EVENT_IDS {
        return Err(ApiError::bad_request("event_ids", "at most 100 events"));
    }
    let actor = auth.actor.name.clone();
    let links = event_links(&state, "event_ids", &ids, &actor).await?;
    let now = now_ms();
    let mut timeline = vec![NewTimelineEntry::status(
        now,
        IncidentStatus::Open,
        format!("opened by {actor}"),
        &actor,
    )];
    if let Some(n) = note {
        timeline.push(NewTimelineEntry::note(now, n, &actor));
    }
    timeline.extend(links);
    let i = IncidentRecord {
        id: uuid::Uuid::new_v4().to_string(),
        title,
        status: IncidentStatus::Open,
        severity: body.severity.unwrap_or(Severity::Warning),
        rule_id: None,
        created_at: now,
        updated_at: now,
        acknowledged_by: None,
        acknowledged_at: None,
        resolved_by: None,
        resolved_at: None,
        analysis: None,
        version: 1,
    };
    state
        .store
        .create_incident(&auth.actor, &i, &timeline)
        .await?;
    respond(&state, StatusCode::CREATED, &i).await
}

fn check_note(field: &str, n: &str) -> ApiResult<String> {
    if n.is_empty() {
        return Err(ApiError::bad_request(field, "must not be empty"));
    }
    check_text(field, n, 10_000)
}

#[utoipa::path(get, path = "/api/v1/incidents/{id}", operation_id = "get_incident", tag = "incidents",
    params(("id" = String, Path, description = "Incident id")),
    responses((status = 200, description = "The incident with its timeline", body = IncidentView)))]
pub async fn get(
    State(state): State<AppState>,
    _auth: AuthContext,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let i = incident(&state, &id).await?;
    respond(&state, StatusCode::OK, &i).await
}

/// Changes to an incident; absent fields keep their value.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateIncident {
    /// 1 to 200 characters.
    #[serde(default)]
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    pub title: Option<String>,
    #[serde(default)]
    pub severity: Option<Severity>,
    /// open → acknowledged → resolved; acknowledged → open; resolved → open (reopen).
    /// A resolved incident must be reopened before it is acknowledged (409).
    #[serde(default)]
    pub status: Option<IncidentStatus>,
    /// A note added with the change (1 to 10000 characters).
    #[serde(default)]
    #[schema(
        min_length = 1,
        max_length = 10000,
        pattern = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$"
    )]
    pub note: Option<String>,
}

#[utoipa::path(patch, path = "/api/v1/incidents/{id}", operation_id = "update_incident", tag = "incidents",
    params(("id" = String, Path, description = "Incident id")), request_body = UpdateIncident,
    responses((status = 200, description = "Updated; status changes are on the timeline. 409 when the status cannot change that way, or when reopening an incident whose rule has another active one", body = IncidentView)))]
pub async fn update(
    State(state): State<AppState>,
    auth: AuthContext,
    Path(id): Path<String>,
    IfMatch(expected): IfMatch,
    JsonBody(body): JsonBody<UpdateIncident>,
) -> ApiResult<Response> {
    auth.require(Role::Operator)?;
    let before = incident(&state, &id).await?;
    let mut i = before.clone();
    if let Some(t) = &body.title {
        i.title = check_line("title", t, 200)?;
    }
    let note = body
        .note
        .as_deref()
        .map(|n| check_note("note", n))
        .transpose()?;
    if let Some(s) = body.severity {
        i.severity = s;
    }
    let actor = auth.actor.name.clone();
    let now = now_ms();
    let mut timeline = Vec::new();
    if let Some(to) = body.status.filter(|s| *s != before.status) {
        if !before.status.may_become(to) {
            return Err(ApiError::conflict(format!(
                "a {} incident cannot become {}; reopen it first",
                before.status.as_str(),
                to.as_str()
            )));
        }
        let what = match (before.status, to) {
            (_, IncidentStatus::Acknowledged) => {
                i.acknowledged_by = Some(actor.clone());
                i.acknowledged_at = Some(now);
                "acknowledged"
            }
            (_, IncidentStatus::Resolved) => {
                i.resolved_by = Some(actor.clone());
                i.resolved_at = Some(now);
                "resolved"
            }
            (IncidentStatus::Resolved, _) => {
                i.resolved_by = None;
                i.resolved_at = None;
                i.acknowledged_by = None;
                i.acknowledged_at = None;
                "reopened"
            }
            _ => {
                i.acknowledged_by = None;
                i.acknowledged_at = None;
                "returned to open"
            }
        };
        i.status = to;
        timeline.push(NewTimelineEntry::status(
            now,
            to,
            format!("{what} by {actor}"),
            &actor,
        ));
    }
    if let Some(n) = note {
        timeline.push(NewTimelineEntry::note(now, n, &actor));
    }
    if i == before && timeline.is_empty() {
        // Nothing to change; the precondition still applies.
        if expected.is_some_and(|v| v != before.version) {
            return Err(fleetgate_store::StoreError::VersionMismatch {
                current: before.version,
            }
            .into());
        }
        return respond(&state, StatusCode::OK, &before).await;
    }
    i.updated_at = now;
    let i = state
        .store
        .update_incident(&auth.actor, &i, expected, &timeline)
        .await?;
    respond(&state, StatusCode::OK, &i).await
}

#[utoipa::path(delete, path = "/api/v1/incidents/{id}", operation_id = "delete_incident", tag = "incidents",
    params(("id" = String, Path, description = "Incident id")),
    responses((status = 204, description = "Deleted with its timeline")))]
pub async fn delete(
    State(state): State<AppState>,
    auth: AuthContext,
    Path(id): Path<String>,
    IfMatch(expected): IfMatch,
) -> ApiResult<StatusCode> {
    auth.require(Role::Admin)?;
    incident(&state, &id).await?;
    state
        .store
        .delete_incident(&auth.actor, &id, expected)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NoteInput {
    /// 1 to 10000 characters; line breaks allowed.
    #[schema(
        min_length = 1,
        max_length = 10000,
        pattern = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$"
    )]
    pub message: String,
}

#[utoipa::path(post, path = "/api/v1/incidents/{id}/notes", operation_id = "add_incident_note", tag = "incidents",
    params(("id" = String, Path, description = "Incident id")), request_body = NoteInput,
    responses((status = 201, description = "Note added; the incident with its timeline", body = IncidentView)))]
pub async fn add_note(
    State(state): State<AppState>,
    auth: AuthContext,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<NoteInput>,
) -> ApiResult<Response> {
    auth.require(Role::Operator)?;
    let message = check_note("message", &body.message)?;
    incident(&state, &id).await?;
    let entry = NewTimelineEntry::note(now_ms(), message, &auth.actor.name);
    let (i, _) = state
        .store
        .append_incident_timeline(&auth.actor, &id, &[entry], Some("incident.note"))
        .await?;
    respond(&state, StatusCode::CREATED, &i).await
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LinkEvent {
    /// The id of a stored event.
    #[schema(minimum = 1)]
    pub event_id: i64,
}

#[utoipa::path(post, path = "/api/v1/incidents/{id}/events", operation_id = "link_incident_event", tag = "incidents",
    params(("id" = String, Path, description = "Incident id")), request_body = LinkEvent,
    responses((status = 200, description = "The event is on the timeline (linking it again changes nothing)", body = IncidentView)))]
pub async fn link_event(
    State(state): State<AppState>,
    auth: AuthContext,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<LinkEvent>,
) -> ApiResult<Response> {
    auth.require(Role::Operator)?;
    incident(&state, &id).await?;
    let links = event_links(&state, "event_id", &[body.event_id], &auth.actor.name).await?;
    let (i, _) = state
        .store
        .append_incident_timeline(&auth.actor, &id, &links, Some("incident.link_event"))
        .await?;
    respond(&state, StatusCode::OK, &i).await
}
