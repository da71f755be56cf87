//! Alert rules: CRUD of the conditions the alert evaluator watches
//! ([`crate::alerts`]). Changes apply within a second on every manager.

use std::collections::HashMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use fleetgate_core::alerts::{AlertCondition, EventCondition, MetricCondition};
use fleetgate_core::events::Severity;
use fleetgate_core::time::now_ms;
use fleetgate_core::user::Role;
use fleetgate_core::ValidationError;
use fleetgate_store::AlertRuleRecord;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::rfc3339;
use crate::auth::AuthContext;
use crate::error::{ApiError, ApiResult};
use crate::extract::{IfMatch, JsonBody, ListEnvelope, Pagination};
use crate::AppState;

/// Whether `id` could be a stored id: ids are generated UUIDs, and text with control
/// characters (a NUL cannot even be bound on PostgreSQL) can only be "not found".
pub(crate) fn storable_id(id: &str) -> bool {
    !id.chars().any(char::is_control)
}

/// Whether `s` has nothing but white space (as JSON Schema's `\s` counts it).
pub(crate) fn blank(s: &str) -> bool {
    s.chars().all(|c| c.is_whitespace() || c == '\u{feff}')
}

/// Checks a one-line text field (names, titles) of 1 to `max` characters.
pub(crate) fn check_line(field: &str, v: &str, max: usize) -> ApiResult<String> {
    if blank(v) || v.chars().count() > max {
        return Err(ApiError::bad_request(
            field,
            format!("must be 1 to {max} characters, not only spaces"),
        ));
    }
    if v.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            field,
            "must not contain control characters",
        ));
    }
    Ok(v.to_string())
}

/// Checks a free-text field of at most `max` characters (tabs and line breaks allowed).
pub(crate) fn check_text(field: &str, v: &str, max: usize) -> ApiResult<String> {
    if v.chars().count() > max {
        return Err(ApiError::bad_request(
            field,
            format!("must be at most {max} characters"),
        ));
    }
    if v.chars()
        .any(|c| matches!(c, '\x00'..='\x08' | '\x0b' | '\x0c' | '\x0e'..='\x1f' | '\x7f'))
    {
        return Err(ApiError::bad_request(
            field,
            "must not contain control characters other than tab and line breaks",
        ));
    }
    Ok(v.to_string())
}

/// An alert rule to create, or to replace one with (absent optional fields keep
/// their current value on replace).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AlertRuleInput {
    /// 1 to 100 characters.
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    pub name: String,
    /// At most 1000 characters (default empty).
    #[serde(default)]
    #[schema(max_length = 1000, pattern = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$")]
    pub description: Option<String>,
    /// Disabled rules are not evaluated (default true).
    #[serde(default)]
    pub enabled: Option<bool>,
    /// The severity of the incidents and `alert.fired` events (default warning).
    #[serde(default)]
    pub severity: Option<Severity>,
    /// What the rule watches: `{"kind": "event", …}` or `{"kind": "metric", …}`.
    #[schema(value_type = AlertCondition)]
    pub condition: Value,
}

#[derive(Serialize, ToSchema)]
pub struct AlertRuleView {
    pub id: String,
    pub name: String,
    pub description: String,
    pub enabled: bool,
    pub severity: Severity,
    pub condition: AlertCondition,
    /// The open or acknowledged incident this rule opened, if any.
    pub active_incident_id: Option<String>,
    /// The version an `If-Match` header refers to.
    pub version: i64,
    pub created_at: String,
    pub updated_at: String,
}

fn view(r: &AlertRuleRecord, active_incident_id: Option<String>) -> AlertRuleView {
    AlertRuleView {
        id: r.id.clone(),
        name: r.name.clone(),
        description: r.description.clone(),
        enabled: r.enabled,
        severity: r.severity,
        condition: r.condition.clone(),
        active_incident_id,
        version: r.version,
        created_at: rfc3339(r.created_at),
        updated_at: rfc3339(r.updated_at),
    }
}

/// Deserializes `v` as `T`, naming the failing field under `prefix`.
fn parse_at<T: DeserializeOwned>(prefix: &str, v: &Value) -> ApiResult<T> {
    serde_path_to_error::deserialize(v.clone()).map_err(|err| {
        let path = err.path().to_string();
        let field = if path == "." || path.is_empty() {
            prefix.to_string()
        } else {
            format!("{prefix}.{path}")
        };
        ApiError::bad_request(&field, err.into_inner().to_string())
    })
}

/// The condition of a rule, parsed by its `kind` and validated.
pub fn parse_condition(v: &Value) -> ApiResult<AlertCondition> {
    let Some(obj) = v.as_object() else {
        return Err(ApiError::bad_request(
            "condition",
            "must be an object with kind event or metric",
        ));
    };
    // serde would fill the filter struct from an array, field by field.
    if obj.get("filter").is_some_and(Value::is_array) {
        return Err(ApiError::bad_request(
            "condition.filter",
            "must be an object",
        ));
    }
    let condition = match obj.get("kind").and_then(Value::as_str) {
        Some("event") => AlertCondition::Event(parse_at::<EventCondition>("condition", v)?),
        Some("metric") => AlertCondition::Metric(parse_at::<MetricCondition>("condition", v)?),
        _ => {
            return Err(ApiError::bad_request(
                "condition.kind",
                "must be event or metric",
            ))
        }
    };
    if let Err(e) = condition.validate() {
        let mut prefixed = ValidationError::new();
        prefixed.extend_prefixed("condition", e);
        return Err(prefixed.into());
    }
    Ok(condition)
}

fn with_etag(status: StatusCode, v: AlertRuleView) -> Response {
    crate::extract::json_with_etag(status, v.version, &v)
}

async fn rule(state: &AppState, id: &str) -> ApiResult<AlertRuleRecord> {
    if !storable_id(id) {
        return Err(ApiError::not_found(format!("alert rule {id:?}")));
    }
    state
        .store
        .get_alert_rule(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("alert rule {id}")))
}

async fn active_incident(state: &AppState, rule_id: &str) -> ApiResult<Option<String>> {
    Ok(state
        .store
        .active_incident_of_rule(rule_id)
        .await?
        .map(|i| i.id))
}

#[utoipa::path(get, path = "/api/v1/alert-rules", operation_id = "list_alert_rules", tag = "alerts",
    params(crate::extract::PageParams),
    responses((status = 200, description = "Alert rules in creation order", body = ListEnvelope<AlertRuleView>)))]
pub async fn list(
    State(state): State<AppState>,
    _auth: AuthContext,
    Pagination(page): Pagination,
) -> ApiResult<Json<ListEnvelope<AlertRuleView>>> {
    let p = state.store.list_alert_rules(page).await?;
    let active: HashMap<String, String> = state
        .store
        .active_rule_incidents()
        .await?
        .into_iter()
        .filter_map(|i| i.rule_id.map(|r| (r, i.id)))
        .collect();
    Ok(Json(ListEnvelope::new(
        p.items
            .iter()
            .map(|r| view(r, active.get(&r.id).cloned()))
            .collect(),
        p.total,
        page,
    )))
}

#[utoipa::path(post, path = "/api/v1/alert-rules", operation_id = "create_alert_rule", tag = "alerts",
    request_body = AlertRuleInput,
    responses((status = 201, description = "Created; evaluated from the next second on", body = AlertRuleView)))]
pub async fn create(
    State(state): State<AppState>,
    auth: AuthContext,
    JsonBody(body): JsonBody<AlertRuleInput>,
) -> ApiResult<Response> {
    auth.require(Role::Admin)?;
    let name = check_line("name", &body.name, 100)?;
    let description = check_text(
        "description",
        body.description.as_deref().unwrap_or(""),
        1000,
    )?;
    let condition = parse_condition(&body.condition)?;
    let now = now_ms();
    let r = AlertRuleRecord {
        id: uuid::Uuid::new_v4().to_string(),
        name,
        description,
        enabled: body.enabled.unwrap_or(true),
        severity: body.severity.unwrap_or(Severity::Warning),
        condition,
        version: 1,
        created_at: now,
        updated_at: now,
    };
    state.store.create_alert_rule(&auth.actor, &r).await?;
    Ok(with_etag(StatusCode::CREATED, view(&r, None)))
}

#[utoipa::path(get, path = "/api/v1/alert-rules/{id}", operation_id = "get_alert_rule", tag = "alerts",
    params(("id" = String, Path, description = "Alert rule id")),
    responses((status = 200, description = "The alert rule", body = AlertRuleView)))]
pub async fn get(
    State(state): State<AppState>,
    _auth: AuthContext,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let r = rule(&state, &id).await?;
    let active = active_incident(&state, &r.id).await?;
    Ok(with_etag(StatusCode::OK, view(&r, active)))
}

#[utoipa::path(put, path = "/api/v1/alert-rules/{id}", operation_id = "update_alert_rule", tag = "alerts",
    params(("id" = String, Path, description = "Alert rule id")), request_body = AlertRuleInput,
    responses((status = 200, description = "Replaced; a changed rule is evaluated afresh (firing again only if it has an active incident)", body = AlertRuleView)))]
pub async fn update(
    State(state): State<AppState>,
    auth: AuthContext,
    Path(id): Path<String>,
    IfMatch(expected): IfMatch,
    JsonBody(body): JsonBody<AlertRuleInput>,
) -> ApiResult<Response> {
    auth.require(Role::Admin)?;
    let mut r = rule(&state, &id).await?;
    r.name = check_line("name", &body.name, 100)?;
    if let Some(d) = &body.description {
        r.description = check_text("description", d, 1000)?;
    }
    r.condition = parse_condition(&body.condition)?;
    if let Some(e) = body.enabled {
        r.enabled = e;
    }
    if let Some(s) = body.severity {
        r.severity = s;
    }
    r.updated_at = now_ms();
    let r = state
        .store
        .update_alert_rule(&auth.actor, &r, expected)
        .await?;
    let active = active_incident(&state, &r.id).await?;
    Ok(with_etag(StatusCode::OK, view(&r, active)))
}

#[utoipa::path(delete, path = "/api/v1/alert-rules/{id}", operation_id = "delete_alert_rule", tag = "alerts",
    params(("id" = String, Path, description = "Alert rule id")),
    responses((status = 204, description = "Deleted; its incidents are kept")))]
pub async fn delete(
    State(state): State<AppState>,
    auth: AuthContext,
    Path(id): Path<String>,
    IfMatch(expected): IfMatch,
) -> ApiResult<StatusCode> {
    auth.require(Role::Admin)?;
    rule(&state, &id).await?;
    state
        .store
        .delete_alert_rule(&auth.actor, &id, expected)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn field(v: Value) -> String {
        parse_condition(&v).expect_err("invalid").details["field"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    #[test]
    fn conditions_name_the_failing_field() {
        let ok = json!({"kind": "event", "event_type": "auth.login_failed", "count": 3, "window_secs": 60});
        assert!(matches!(
            parse_condition(&ok),
            Ok(AlertCondition::Event(c)) if c.count == 3 && c.filter == Default::default()
        ));
        assert_eq!(field(json!(3)), "condition");
        assert_eq!(field(json!({"kind": "nope"})), "condition.kind");
        assert_eq!(field(json!({"event_type": "x"})), "condition.kind");
        assert_eq!(
            field(json!({"kind": "event", "event_type": "a", "count": "3", "window_secs": 1})),
            "condition.count"
        );
        assert_eq!(
            field(json!({"kind": "event", "event_type": "a", "count": 0, "window_secs": 1})),
            "condition.count"
        );
        assert_eq!(
            field(
                json!({"kind": "event", "event_type": "a", "count": 1, "window_secs": 1, "filter": [null]})
            ),
            "condition.filter"
        );
        assert_eq!(
            field(json!({"kind": "event", "event_type": "a b", "count": 1, "window_secs": 1})),
            "condition.event_type"
        );
        assert_eq!(
            field(
                json!({"kind": "event", "event_type": "a", "count": 1, "window_secs": 1, "filter": {"route_id": 5}})
            ),
            "condition.filter.route_id"
        );
        assert_eq!(
            field(
                json!({"kind": "event", "event_type": "a", "count": 1, "window_secs": 1, "metric": "error_rate"})
            ),
            "condition.metric",
            "an unknown field is named"
        );
        let metric = json!({"kind": "metric", "metric": "latency_p99_ms", "op": ">=", "threshold": 250, "duration_secs": 30, "route": "r1"});
        assert!(matches!(
            parse_condition(&metric),
            Ok(AlertCondition::Metric(_))
        ));
        assert_eq!(
            field(
                json!({"kind": "metric", "metric": "cpu", "op": ">", "threshold": 1, "duration_secs": 1})
            ),
            "condition.metric"
        );
        assert_eq!(
            field(
                json!({"kind": "metric", "metric": "error_rate", "op": "=", "threshold": 1, "duration_secs": 1})
            ),
            "condition.op"
        );
        assert_eq!(
            field(
                json!({"kind": "metric", "metric": "error_rate", "op": ">", "threshold": -0.5, "duration_secs": 1})
            ),
            "condition.threshold"
        );
        assert_eq!(
            field(json!({"kind": "metric", "metric": "error_rate", "op": ">", "threshold": 0.5})),
            "condition"
        );
    }

    #[test]
    fn text_checks_match_the_documented_patterns() {
        for s in ["a", " x ", "ünïcode", "\u{a0}x"] {
            assert!(check_line("f", s, 100).is_ok(), "{s:?}");
        }
        for s in ["", "  ", "\u{feff}", "a\nb", "a\u{85}"] {
            assert!(check_line("f", s, 100).is_err(), "{s:?}");
        }
        for s in ["", "two\nlines\ttab\r"] {
            assert!(check_text("f", s, 100).is_ok(), "{s:?}");
        }
        for s in ["nul\0", "bell\x07", "del\x7f"] {
            assert!(check_text("f", s, 100).is_err(), "{s:?}");
        }
    }
}
