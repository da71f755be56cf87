//! Alert rules and incidents through the real server: an event rule fed by real failed
//! logins opens exactly one incident holding those events and resolves it after its
//! window; state survives a restart; manual incidents go through their lifecycle with
//! notes and linked events; bad input names the field; viewers cannot change anything.

use std::future::Future;
use std::time::{Duration, Instant};

use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};

use crate::support::{config_in, expect_error, postgres_schema_url, spawn_with, TestApp};

/// Polls `f` until it yields a value or `secs` pass.
async fn eventually<T, F, Fut>(what: &str, secs: u64, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn failed_login(app: &TestApp) {
    let r = Client::new()
        .post(app.url("/api/v1/auth/login"))
        .json(&json!({"username": "admin", "password": "not-the-password"}))
        .send()
        .await
        .expect("login");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

async fn send(app: &TestApp, method: Method, path: &str, body: Value) -> reqwest::Response {
    app.admin(method, path)
        .json(&body)
        .send()
        .await
        .expect("request")
}

/// Creates a rule counting failed logins; returns its id.
async fn login_rule(app: &TestApp, count: u32, window_secs: u64) -> String {
    let r = send(
        app,
        Method::POST,
        "/api/v1/alert-rules",
        json!({
            "name": "Login failures",
            "description": "someone is guessing passwords",
            "severity": "critical",
            "condition": {"kind": "event", "event_type": "auth.*", "count": count, "window_secs": window_secs}
        }),
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(r.headers()["etag"], "\"1\"");
    let rule: Value = r.json().await.expect("json");
    assert_eq!(rule["enabled"], true);
    assert_eq!(rule["condition"]["kind"], "event");
    assert_eq!(rule["active_incident_id"], Value::Null);
    rule["id"].as_str().expect("id").to_string()
}

async fn incidents_of(app: &TestApp, rule: &str) -> Value {
    app.get_json(&format!("/api/v1/incidents?rule_id={rule}"))
        .await
}

/// The data directory outlives the app so that it can be started again on it.
async fn start(dir: &std::path::Path, database_url: Option<String>) -> TestApp {
    let mut config = config_in(dir);
    config.database.url = database_url;
    spawn_with(config, tempfile::tempdir().expect("tempdir")).await
}

async fn event_rule_fires_once_and_resolves(database_url: Option<String>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = start(dir.path(), database_url).await;
    let rule = login_rule(&app, 3, 4).await;

    // Two failures are not enough; the third within the window fires the rule.
    failed_login(&app).await;
    failed_login(&app).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(incidents_of(&app, &rule).await["total"], 0);
    failed_login(&app).await;
    let id = eventually("an incident", 10, || async {
        let list = incidents_of(&app, &rule).await;
        (list["total"] == 1).then(|| list["items"][0]["id"].as_str().map(str::to_string))?
    })
    .await;
    let incident = app.get_json(&format!("/api/v1/incidents/{id}")).await;
    assert_eq!(
        (incident["status"].as_str(), incident["severity"].as_str()),
        (Some("open"), Some("critical"))
    );
    assert_eq!(incident["rule_id"], rule.as_str());
    assert_eq!(incident["analysis"], Value::Null);
    assert!(
        incident["title"]
            .as_str()
            .is_some_and(|t| t.starts_with("Login failures")),
        "{incident}"
    );
    let logins = app.get_json("/api/v1/events?type=auth.login_failed").await;
    let mut login_ids: Vec<i64> = logins["items"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["id"].as_i64())
        .collect();
    login_ids.sort();
    assert_eq!(login_ids.len(), 3);
    let timeline = incident["timeline"].as_array().expect("timeline");
    assert_eq!(timeline[0]["kind"], "status");
    assert_eq!(timeline[0]["status"], "open");
    assert_eq!(timeline[0]["actor"], "system");
    let linked: Vec<i64> = timeline
        .iter()
        .filter(|e| e["kind"] == "event")
        .filter_map(|e| e["event_id"].as_i64())
        .collect();
    assert_eq!(
        linked, login_ids,
        "the triggering events are on the timeline"
    );
    assert!(timeline
        .iter()
        .filter(|e| e["kind"] == "event")
        .all(|e| e["event_type"] == "auth.login_failed"));
    // The incident is stored before its `alert.fired` event reaches the store
    // (events are written by their own task): wait for the event.
    let deadline = Instant::now() + Duration::from_secs(5);
    let fired = loop {
        let fired = app.get_json("/api/v1/events?type=alert.fired").await;
        if fired["total"] != 0 || Instant::now() > deadline {
            break fired;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(fired["total"], 1);
    assert_eq!(fired["items"][0]["severity"], "critical");
    assert_eq!(fired["items"][0]["details"]["incident_id"], id.as_str());
    let r = app
        .admin(Method::GET, &format!("/api/v1/alert-rules/{rule}"))
        .send()
        .await
        .expect("rule");
    assert_eq!(
        r.json::<Value>().await.expect("json")["active_incident_id"],
        id.as_str()
    );

    // Another failure while it fires joins the same incident.
    failed_login(&app).await;
    eventually("the fourth event on the timeline", 10, || async {
        let i = app.get_json(&format!("/api/v1/incidents/{id}")).await;
        let events = i["timeline"]
            .as_array()?
            .iter()
            .filter(|e| e["kind"] == "event")
            .count();
        (events == 4).then_some(())
    })
    .await;
    assert_eq!(
        incidents_of(&app, &rule).await["total"],
        1,
        "no second incident"
    );

    // A quiet window: resolved by the rule, with a timeline entry and an event.
    let resolved = eventually("the incident to resolve", 15, || async {
        let i = app.get_json(&format!("/api/v1/incidents/{id}")).await;
        (i["status"] == "resolved").then_some(i)
    })
    .await;
    assert_eq!(resolved["resolved_by"], "system");
    let last = resolved["timeline"]
        .as_array()
        .and_then(|t| t.last().cloned())
        .expect("entry");
    assert_eq!(
        (last["kind"].as_str(), last["status"].as_str()),
        (Some("status"), Some("resolved"))
    );
    assert!(
        last["message"]
            .as_str()
            .is_some_and(|m| m.contains("cleared")),
        "{last}"
    );
    let resolved_events = eventually("alert.resolved", 10, || async {
        let e = app.get_json("/api/v1/events?type=alert.resolved").await;
        (e["total"] == 1).then_some(e)
    })
    .await;
    assert_eq!(
        resolved_events["items"][0]["details"]["rule_id"],
        rule.as_str()
    );
    let audit = app.get_json("/api/v1/audit?target_type=incident").await;
    let actions: Vec<&str> = audit["items"]
        .as_array()
        .expect("audit")
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert_eq!(actions, vec!["incident.resolve", "incident.create"]);
    app.stop().await;
}

#[tokio::test]
async fn an_event_rule_fed_by_failed_logins_opens_one_incident_and_resolves_it() {
    event_rule_fires_once_and_resolves(None).await;
}

#[tokio::test]
async fn an_event_rule_opens_and_resolves_incidents_on_postgres() {
    let Some(url) = postgres_schema_url().await else {
        return;
    };
    event_rule_fires_once_and_resolves(Some(url)).await;
}

#[tokio::test]
async fn a_firing_rule_keeps_its_incident_across_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = start(dir.path(), None).await;
    let rule = login_rule(&app, 1, 600).await;
    failed_login(&app).await;
    let id = eventually("an incident", 10, || async {
        let list = incidents_of(&app, &rule).await;
        (list["total"] == 1).then(|| list["items"][0]["id"].as_str().map(str::to_string))?
    })
    .await;
    app.stop().await;

    let app = start(dir.path(), None).await;
    // Give the restarted evaluator its first load.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    failed_login(&app).await;
    eventually("the new event on the same incident", 10, || async {
        let i = app.get_json(&format!("/api/v1/incidents/{id}")).await;
        let events = i["timeline"]
            .as_array()?
            .iter()
            .filter(|e| e["kind"] == "event")
            .count();
        (events == 2).then_some(())
    })
    .await;
    let list = incidents_of(&app, &rule).await;
    assert_eq!(list["total"], 1, "{list}");
    assert_eq!(list["items"][0]["status"], "open");
    assert_eq!(
        app.get_json("/api/v1/events?type=alert.fired").await["total"],
        1
    );
    app.stop().await;
}

#[tokio::test]
async fn manual_incident_lifecycle_with_notes_and_linked_events() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = start(dir.path(), None).await;
    failed_login(&app).await;
    let event_id = eventually("a stored event", 10, || async {
        app.get_json("/api/v1/events?type=auth.login_failed").await["items"][0]["id"].as_i64()
    })
    .await;
    let r = send(
        &app,
        Method::POST,
        "/api/v1/incidents",
        json!({"title": "Checkout is slow", "severity": "warning", "note": "customers report timeouts\nsince 10:00", "event_ids": [event_id]}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(r.headers()["etag"], "\"1\"");
    let i: Value = r.json().await.expect("json");
    let id = i["id"].as_str().expect("id").to_string();
    assert_eq!(
        (i["status"].as_str(), i["rule_id"].clone()),
        (Some("open"), Value::Null)
    );
    let kinds: Vec<&str> = i["timeline"]
        .as_array()
        .expect("timeline")
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert_eq!(kinds, vec!["status", "note", "event"]);
    assert_eq!(
        i["notes"][0]["message"],
        "customers report timeouts\nsince 10:00"
    );
    assert_eq!(i["notes"][0]["actor"], "api_key:bootstrap");
    let path = format!("/api/v1/incidents/{id}");

    // Acknowledge with If-Match; a stale one is refused.
    let r = app
        .admin(Method::PATCH, &path)
        .header("if-match", "\"1\"")
        .json(&json!({"status": "acknowledged", "note": "on it"}))
        .send()
        .await
        .expect("ack");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["etag"], "\"2\"");
    let i: Value = r.json().await.expect("json");
    assert_eq!(
        (i["status"].as_str(), i["acknowledged_by"].as_str()),
        (Some("acknowledged"), Some("api_key:bootstrap"))
    );
    assert!(i["acknowledged_at"].is_string());
    let r = app
        .admin(Method::PATCH, &path)
        .header("if-match", "\"1\"")
        .json(&json!({"title": "stale"}))
        .send()
        .await
        .expect("stale");
    expect_error(r, StatusCode::PRECONDITION_FAILED, "PRECONDITION_FAILED").await;

    // Resolve; a resolved incident must be reopened before it is acknowledged.
    let r = send(
        &app,
        Method::PATCH,
        &path,
        json!({"status": "resolved", "severity": "critical", "title": "Checkout was slow"}),
    )
    .await;
    let i: Value = r.json().await.expect("json");
    assert_eq!(
        (
            i["status"].as_str(),
            i["severity"].as_str(),
            i["title"].as_str()
        ),
        (
            Some("resolved"),
            Some("critical"),
            Some("Checkout was slow")
        )
    );
    assert!(i["resolved_at"].is_string());
    let r = send(
        &app,
        Method::PATCH,
        &path,
        json!({"status": "acknowledged"}),
    )
    .await;
    expect_error(r, StatusCode::CONFLICT, "CONFLICT").await;
    let r = send(&app, Method::PATCH, &path, json!({"status": "open"})).await;
    let i: Value = r.json().await.expect("json");
    assert_eq!(i["status"], "open");
    assert_eq!(
        (i["resolved_at"].clone(), i["acknowledged_by"].clone()),
        (Value::Null, Value::Null)
    );
    let statuses: Vec<&str> = i["timeline"]
        .as_array()
        .expect("timeline")
        .iter()
        .filter(|e| e["kind"] == "status")
        .filter_map(|e| e["message"].as_str())
        .collect();
    assert_eq!(
        statuses,
        vec![
            "opened by api_key:bootstrap",
            "acknowledged by api_key:bootstrap",
            "resolved by api_key:bootstrap",
            "reopened by api_key:bootstrap"
        ]
    );

    // Notes and linked events.
    let r = send(
        &app,
        Method::POST,
        &format!("{path}/notes"),
        json!({"message": "root cause: the DB pool"}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let i: Value = r.json().await.expect("json");
    assert_eq!(i["notes"].as_array().map(Vec::len), Some(3));
    failed_login(&app).await;
    let second = eventually("a second event", 10, || async {
        let e = app.get_json("/api/v1/events?type=auth.login_failed").await;
        e["items"][0]["id"].as_i64().filter(|id| *id != event_id)
    })
    .await;
    for _ in 0..2 {
        let r = send(
            &app,
            Method::POST,
            &format!("{path}/events"),
            json!({"event_id": second}),
        )
        .await;
        assert_eq!(r.status(), StatusCode::OK);
    }
    let i = app.get_json(&path).await;
    let linked: Vec<i64> = i["timeline"]
        .as_array()
        .expect("timeline")
        .iter()
        .filter_map(|e| e["event_id"].as_i64())
        .collect();
    assert_eq!(linked, vec![event_id, second], "linked once each");
    let r = send(
        &app,
        Method::POST,
        &format!("{path}/events"),
        json!({"event_id": 999_999}),
    )
    .await;
    let e = expect_error(r, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await;
    assert_eq!(e["details"]["field"], "event_id");

    // Listing with filters; a second manual incident.
    send(
        &app,
        Method::POST,
        "/api/v1/incidents",
        json!({"title": "Disk filling up", "severity": "info"}),
    )
    .await;
    let all = app.get_json("/api/v1/incidents?limit=1").await;
    assert_eq!(
        (all["total"].as_i64(), all["items"].as_array().map(Vec::len)),
        (Some(2), Some(1))
    );
    assert_eq!(all["items"][0]["title"], "Disk filling up", "newest first");
    assert!(
        all["items"][0].get("timeline").is_none(),
        "listings leave timelines out"
    );
    let critical = app
        .get_json("/api/v1/incidents?severity=critical&status=open")
        .await;
    assert_eq!(critical["total"], 1);
    assert_eq!(critical["items"][0]["id"], id.as_str());
    assert_eq!(
        app.get_json("/api/v1/incidents?status=resolved").await["total"],
        0
    );

    // Delete; every change was audited.
    let r = app
        .admin(Method::DELETE, &path)
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = app.admin(Method::GET, &path).send().await.expect("gone");
    expect_error(r, StatusCode::NOT_FOUND, "NOT_FOUND").await;
    let audit = app
        .get_json("/api/v1/audit?target_type=incident&limit=100")
        .await;
    let mut actions: Vec<&str> = audit["items"]
        .as_array()
        .expect("audit")
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    actions.sort();
    actions.dedup();
    assert_eq!(
        actions,
        vec![
            "incident.create",
            "incident.delete",
            "incident.link_event",
            "incident.note",
            "incident.update"
        ]
    );
    app.stop().await;
}

#[tokio::test]
async fn alert_rule_crud_and_validation_errors_name_the_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = start(dir.path(), None).await;
    let good = json!({"kind": "metric", "metric": "error_rate", "route": "r1", "op": ">", "threshold": 0.05, "duration_secs": 60});
    for (body, field) in [
        (json!({"name": "", "condition": good}), "name"),
        (
            json!({"name": "x", "condition": good, "colour": "red"}),
            "colour",
        ),
        (
            json!({"name": "x", "severity": "urgent", "condition": good}),
            "severity",
        ),
        (json!({"name": "x"}), "body"),
        (
            json!({"name": "x", "condition": {"kind": "log"}}),
            "condition.kind",
        ),
        (
            json!({"name": "x", "condition": {"kind": "event", "event_type": "proxy.*", "count": 0, "window_secs": 10}}),
            "condition.count",
        ),
        (
            json!({"name": "x", "condition": {"kind": "event", "event_type": "proxy.**", "count": 1, "window_secs": 10}}),
            "condition.event_type",
        ),
        (
            json!({"name": "x", "condition": {"kind": "event", "event_type": "alert.fired", "count": 1, "window_secs": 10}}),
            "condition.event_type",
        ),
        (
            json!({"name": "x", "condition": {"kind": "event", "event_type": "proxy.*", "count": 1, "window_secs": 0}}),
            "condition.window_secs",
        ),
        (
            json!({"name": "x", "condition": {"kind": "event", "event_type": "proxy.*", "count": 1, "window_secs": 5, "filter": {"node": "n1"}}}),
            "condition.filter.node",
        ),
        (
            json!({"name": "x", "condition": {"kind": "metric", "metric": "cpu", "op": ">", "threshold": 1, "duration_secs": 1}}),
            "condition.metric",
        ),
        (
            json!({"name": "x", "condition": {"kind": "metric", "metric": "error_rate", "op": ">", "threshold": -1, "duration_secs": 1}}),
            "condition.threshold",
        ),
        (
            json!({"name": "x", "condition": {"kind": "metric", "metric": "error_rate", "op": "!=", "threshold": 1, "duration_secs": 1}}),
            "condition.op",
        ),
        (
            json!({"name": "x", "condition": {"kind": "metric", "metric": "error_rate", "op": ">", "threshold": 1, "duration_secs": 86401}}),
            "condition.duration_secs",
        ),
    ] {
        let r = send(&app, Method::POST, "/api/v1/alert-rules", body.clone()).await;
        let e = expect_error(r, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await;
        let got = e["details"]["field"].as_str().unwrap_or_default();
        assert!(
            got == field || (field == "body" && got == "condition"),
            "{body}: {e}"
        );
    }
    assert_eq!(
        app.get_json("/api/v1/alert-rules").await["total"],
        0,
        "nothing was created"
    );

    // A metric rule, replaced with If-Match, listed, deleted; all audited.
    let r = send(
        &app,
        Method::POST,
        "/api/v1/alert-rules",
        json!({"name": "5xx on r1", "condition": good}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let created: Value = r.json().await.expect("json");
    assert_eq!(created["severity"], "warning", "the default");
    assert_eq!(created["condition"], good);
    let path = format!(
        "/api/v1/alert-rules/{}",
        created["id"].as_str().expect("id")
    );
    let r = app
        .admin(Method::PUT, &path)
        .header("if-match", "\"1\"")
        .json(&json!({"name": "5xx on r1", "enabled": false, "severity": "critical", "condition": {"kind": "event", "event_type": "proxy.upstream_error", "count": 5, "window_secs": 60, "filter": {"route_id": "r1"}}}))
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["etag"], "\"2\"");
    let updated: Value = r.json().await.expect("json");
    assert_eq!(
        (updated["enabled"].as_bool(), updated["severity"].as_str()),
        (Some(false), Some("critical"))
    );
    assert_eq!(updated["condition"]["filter"]["route_id"], "r1");
    assert_eq!(updated["description"], "", "kept");
    let r = app
        .admin(Method::PUT, &path)
        .header("if-match", "\"1\"")
        .json(&json!({"name": "late", "condition": good}))
        .send()
        .await
        .expect("stale");
    expect_error(r, StatusCode::PRECONDITION_FAILED, "PRECONDITION_FAILED").await;
    let list = app.get_json("/api/v1/alert-rules").await;
    assert_eq!(list["total"], 1);
    assert_eq!(list["items"][0]["version"], 2);
    let r = app
        .admin(Method::DELETE, &path)
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = app.admin(Method::GET, &path).send().await.expect("gone");
    expect_error(r, StatusCode::NOT_FOUND, "NOT_FOUND").await;
    let audit = app.get_json("/api/v1/audit?target_type=alert_rule").await;
    let actions: Vec<&str> = audit["items"]
        .as_array()
        .expect("audit")
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert_eq!(
        actions,
        vec![
            "alert_rule.delete",
            "alert_rule.update",
            "alert_rule.create"
        ]
    );

    // Incident input names its fields too.
    for (method, path, body, field) in [
        (
            Method::POST,
            "/api/v1/incidents".to_string(),
            json!({"title": "   "}),
            "title",
        ),
        (
            Method::POST,
            "/api/v1/incidents".to_string(),
            json!({"title": "x", "event_ids": [0]}),
            "event_ids[0]",
        ),
        (
            Method::POST,
            "/api/v1/incidents".to_string(),
            json!({"title": "x", "note": "bell\u{7}"}),
            "note",
        ),
    ] {
        let r = send(&app, method, &path, body.clone()).await;
        let e = expect_error(r, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await;
        assert_eq!(e["details"]["field"], field, "{body}");
    }
    let r = send(
        &app,
        Method::POST,
        "/api/v1/incidents",
        json!({"title": "ok"}),
    )
    .await;
    let id = r.json::<Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .to_string();
    for (path, body, field) in [
        (
            format!("/api/v1/incidents/{id}"),
            json!({"status": "closed"}),
            "status",
        ),
        (
            format!("/api/v1/incidents/{id}/notes"),
            json!({"message": ""}),
            "message",
        ),
        (
            format!("/api/v1/incidents/{id}/events"),
            json!({"event_id": "one"}),
            "event_id",
        ),
    ] {
        let method = if path.ends_with(&id) {
            Method::PATCH
        } else {
            Method::POST
        };
        let r = send(&app, method, &path, body.clone()).await;
        let e = expect_error(r, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await;
        assert_eq!(e["details"]["field"], field, "{body}");
    }
    let r = app
        .admin(Method::GET, "/api/v1/incidents?status=closed")
        .send()
        .await
        .expect("list");
    let e = expect_error(r, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await;
    assert_eq!(e["details"]["field"], "status");
    let r = send(
        &app,
        Method::POST,
        "/api/v1/incidents/nope/notes",
        json!({"message": "x"}),
    )
    .await;
    expect_error(r, StatusCode::NOT_FOUND, "NOT_FOUND").await;
    app.stop().await;
}

#[tokio::test]
async fn viewers_read_alerts_and_incidents_but_cannot_change_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = start(dir.path(), None).await;
    let rule = login_rule(&app, 5, 60).await;
    let r = send(
        &app,
        Method::POST,
        "/api/v1/incidents",
        json!({"title": "x"}),
    )
    .await;
    let incident = r.json::<Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .to_string();
    let viewer_key = app.key_for_role("vic", "viewer").await;
    let operator_key = app.key_for_role("olga", "operator").await;
    let as_role = |key: &str, m: Method, p: &str| app.anon(m, p).bearer_auth(key.to_string());
    for p in [
        "/api/v1/alert-rules".to_string(),
        format!("/api/v1/alert-rules/{rule}"),
        "/api/v1/incidents".to_string(),
        format!("/api/v1/incidents/{incident}"),
    ] {
        let r = as_role(&viewer_key, Method::GET, &p)
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), StatusCode::OK, "{p}");
    }
    let rule_body = json!({"name": "x", "condition": {"kind": "event", "event_type": "proxy.*", "count": 1, "window_secs": 5}});
    let writes = [
        (
            Method::POST,
            "/api/v1/alert-rules".to_string(),
            rule_body.clone(),
        ),
        (
            Method::PUT,
            format!("/api/v1/alert-rules/{rule}"),
            rule_body.clone(),
        ),
        (
            Method::DELETE,
            format!("/api/v1/alert-rules/{rule}"),
            json!({}),
        ),
        (
            Method::POST,
            "/api/v1/incidents".to_string(),
            json!({"title": "x"}),
        ),
        (
            Method::PATCH,
            format!("/api/v1/incidents/{incident}"),
            json!({"status": "acknowledged"}),
        ),
        (
            Method::POST,
            format!("/api/v1/incidents/{incident}/notes"),
            json!({"message": "x"}),
        ),
        (
            Method::POST,
            format!("/api/v1/incidents/{incident}/events"),
            json!({"event_id": 1}),
        ),
        (
            Method::DELETE,
            format!("/api/v1/incidents/{incident}"),
            json!({}),
        ),
    ];
    for (m, p, body) in &writes {
        let r = as_role(&viewer_key, m.clone(), p)
            .json(body)
            .send()
            .await
            .expect("write");
        expect_error(r, StatusCode::FORBIDDEN, "FORBIDDEN").await;
    }
    // Operators work incidents but do not change rules or delete incidents.
    for (i, (m, p, body)) in writes.iter().enumerate() {
        let r = as_role(&operator_key, m.clone(), p)
            .json(body)
            .send()
            .await
            .expect("write");
        let allowed = matches!(i, 3..=5);
        if allowed {
            assert!(r.status().is_success(), "{m} {p}: {}", r.status());
        } else if i != 6 {
            expect_error(r, StatusCode::FORBIDDEN, "FORBIDDEN").await;
        }
    }
    let i = app.get_json(&format!("/api/v1/incidents/{incident}")).await;
    assert_eq!(i["acknowledged_by"], "api_key:olga-key");
    assert_eq!(app.get_json("/api/v1/alert-rules").await["total"], 1);
    app.stop().await;
}

/// A metric reader whose error rate for route `checkout` the test sets.
#[derive(Default)]
struct FakeMetrics(std::sync::Mutex<Option<f64>>);

impl fleetgate_manager::alerts::MetricReader for FakeMetrics {
    fn value(&self, metric: &str, route: Option<&str>, upstream: Option<&str>) -> Option<f64> {
        match (metric, route, upstream) {
            ("error_rate", Some("checkout"), None) => *self.0.lock().expect("lock"),
            _ => None,
        }
    }
}

#[tokio::test]
async fn a_metric_rule_fires_and_clears_from_the_installed_metric_reader() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = start(dir.path(), None).await;
    let metrics = std::sync::Arc::new(FakeMetrics::default());
    let state = &app.running.as_ref().expect("running").state;
    assert!(state.metric_reader.set(metrics.clone()).is_ok());
    let r = send(
        &app,
        Method::POST,
        "/api/v1/alert-rules",
        json!({"name": "Checkout errors", "severity": "warning", "condition": {"kind": "metric", "metric": "error_rate", "route": "checkout", "op": ">=", "threshold": 0.1, "duration_secs": 1}}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let rule = r.json::<Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .to_string();
    *metrics.0.lock().expect("lock") = Some(0.25);
    let id = eventually("an incident", 10, || async {
        let list = incidents_of(&app, &rule).await;
        (list["total"] == 1).then(|| list["items"][0]["id"].as_str().map(str::to_string))?
    })
    .await;
    let fired = app.get_json("/api/v1/events?type=alert.fired").await;
    assert_eq!(fired["items"][0]["severity"], "warning");
    assert_eq!(fired["items"][0]["route_id"], "checkout");
    assert_eq!(fired["items"][0]["details"]["value"], 0.25);
    *metrics.0.lock().expect("lock") = Some(0.0);
    eventually("the incident to resolve", 10, || async {
        let i = app.get_json(&format!("/api/v1/incidents/{id}")).await;
        (i["status"] == "resolved").then_some(())
    })
    .await;
    assert_eq!(incidents_of(&app, &rule).await["total"], 1);
    app.stop().await;
}
