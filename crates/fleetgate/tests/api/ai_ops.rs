//! AI operations over the API, against the local fake provider (never the
//! internet): incident analysis (the context sent, secrets stripped; stored,
//! shown and audited; a malformed answer refused with nothing stored).

use std::time::{Duration, Instant};

use fleetgate_core::events::{NewEvent, Severity};
use fleetgate_store::MetricPoint;
use fleetgate_test_support::fake_llm::{FakeLlm, Reply};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::support::{expect_error, send, spawn_app, TestApp};

pub(crate) const KEY: &str = "sk-live-0123456789abcdefWXYZ";
pub(crate) const ROUTE_SECRET: &str = "Bearer route-sekrit-4242";

/// The fake provider, made the default provider.
pub(crate) async fn with_provider(app: &TestApp) -> FakeLlm {
    let fake = FakeLlm::start(Some(KEY)).await;
    let (status, v) = send(
        app,
        Method::POST,
        "/api/v1/ai/providers",
        Some(
            json!({"name": "fake", "kind": "openai", "base_url": fake.openai_url(),
                    "api_key": KEY, "default_model": "gpt-test", "is_default": true}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    fake
}

/// An upstream `api` and a route `orders` whose request headers hold a secret.
pub(crate) async fn gateway_config(app: &TestApp) {
    for (path, body) in [
        (
            "/api/v1/upstreams",
            json!({"name": "api", "targets": [{"url": "http://127.0.0.1:9"}]}),
        ),
        (
            "/api/v1/routes",
            json!({"id": "orders", "path": "/orders", "upstream": "api",
                   "requestHeaders": {"set": {"authorization": ROUTE_SECRET}}}),
        ),
    ] {
        let (status, v) = send(app, Method::POST, path, Some(body)).await;
        assert_eq!(status, StatusCode::CREATED, "{v}");
    }
}

/// An incident with an event of route `orders` linked, and traffic around it.
async fn incident_with_traffic(app: &TestApp) -> String {
    let state = app.running.as_ref().expect("running").state.clone();
    let mut e = NewEvent::new(
        "route.errors_high",
        Severity::Critical,
        "route orders answers 5xx",
    )
    .details(json!({"error_rate": 0.4, "token": "event-sekrit-77"}));
    e.route_id = Some("orders".into());
    e.upstream = Some("api".into());
    state.emit(e);
    let deadline = Instant::now() + Duration::from_secs(10);
    let event_id = loop {
        let v = app
            .get_json("/api/v1/events?type=route.errors_high&limit=1")
            .await;
        if let Some(id) = v["items"][0]["id"].as_i64() {
            break id;
        }
        assert!(Instant::now() < deadline, "the event was not stored");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let now = fleetgate_core::time::now_ms();
    let ts = now - now.rem_euclid(10_000) - 60_000;
    state
        .store
        .record_metric_points(&[
            MetricPoint {
                ts,
                scope: "route:orders".into(),
                source: "gw1".into(),
                requests: 120,
                errors: 48,
                latency_count: 120,
                p95_weighted: 120.0 * 900.0,
                ..Default::default()
            },
            MetricPoint {
                ts,
                scope: String::new(),
                source: "gw1".into(),
                requests: 500,
                errors: 48,
                ..Default::default()
            },
        ])
        .await
        .expect("metrics");
    let (status, v) = send(
        app,
        Method::POST,
        "/api/v1/incidents",
        Some(json!({"title": "orders failing", "severity": "critical",
                    "note": "customers report errors", "event_ids": [event_id]})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    v["id"].as_str().expect("id").to_string()
}

#[tokio::test]
async fn incident_analysis_is_stored_shown_and_audited() {
    let app = spawn_app().await;
    let fake = with_provider(&app).await;
    gateway_config(&app).await;
    let id = incident_with_traffic(&app).await;
    fake.push(Reply::text(
        json!({"summary": "Route orders failed: upstream api refused connections.",
               "probable_cause": "The api pool has no healthy target.",
               "suggested_actions": ["Check the targets of upstream api", "Roll back the last deploy"]})
        .to_string(),
    ));
    let (status, v) = send(
        &app,
        Method::POST,
        &format!("/api/v1/incidents/{id}/analyze"),
        Some(json!({})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let a = &v["analysis"];
    assert_eq!(
        a["summary"],
        "Route orders failed: upstream api refused connections."
    );
    assert_eq!(a["probable_cause"], "The api pool has no healthy target.");
    assert_eq!(a["suggested_actions"][1], "Roll back the last deploy");
    assert_eq!(
        (a["provider"].as_str(), a["model"].as_str()),
        (Some("fake"), Some("gpt-test"))
    );
    assert!(a["usage"]["input_tokens"].as_i64() > Some(0));
    assert_eq!(a["created_by"], "api_key:bootstrap");
    assert_eq!(a["context"]["routes"], json!(["orders"]));
    assert_eq!(a["context"]["upstreams"], json!(["api"]));
    assert_eq!(a["context"]["events"], 1);

    // What the provider was sent: the events, the traffic, the route's
    // configuration, and no secret.
    let reqs = fake.requests();
    let sent = reqs.last().expect("a request").body.to_string();
    for needle in [
        "route orders answers 5xx",
        "customers report errors",
        "/orders",
        "errors_5xx",
        "\\\"requests\\\": 120",
    ] {
        assert!(sent.contains(needle), "{needle} not sent: {sent}");
    }
    for secret in [ROUTE_SECRET, "route-sekrit", "event-sekrit-77", KEY] {
        assert!(!sent.contains(secret), "{secret} was sent to the provider");
    }

    // GET shows it; the history keeps every analysis; it is audited.
    let got = app.get_json(&format!("/api/v1/incidents/{id}")).await;
    assert_eq!(got["analysis"], v["analysis"]);
    let history = app
        .get_json(&format!("/api/v1/incidents/{id}/analyses"))
        .await;
    assert_eq!(history.as_array().map(Vec::len), Some(1));
    let audit = app.get_json("/api/v1/audit?action=incident.analyze").await;
    assert_eq!(audit["total"], 1, "{audit}");
    assert_eq!(audit["items"][0]["target_id"], id.as_str());

    // A viewer may read it but not ask for one.
    let viewer = app.key_for_role("ai-viewer", "viewer").await;
    let r = app
        .client
        .post(app.url(&format!("/api/v1/incidents/{id}/analyze")))
        .bearer_auth(&viewer)
        .json(&json!({}))
        .send()
        .await
        .expect("post");
    expect_error(r, StatusCode::FORBIDDEN, "FORBIDDEN").await;
    app.stop().await;
}

#[tokio::test]
async fn malformed_analysis_is_refused_and_nothing_is_stored() {
    let app = spawn_app().await;
    let fake = with_provider(&app).await;
    let id = incident_with_traffic(&app).await;
    let before = app.get_json(&format!("/api/v1/incidents/{id}")).await;
    for (reply, named) in [
        (
            Reply::text("The incident was caused by a bad deploy."),
            "not JSON",
        ),
        (Reply::text("[1, 2]"), "not an object"),
        (
            Reply::text(json!({"summary": "s", "probable_cause": "c"}).to_string()),
            "`suggested_actions` is missing",
        ),
        (
            Reply::text(
                json!({"summary": "s", "probable_cause": 7, "suggested_actions": []}).to_string(),
            ),
            "`probable_cause` must be a string",
        ),
        (
            Reply::text(
                json!({"summary": "s", "probable_cause": "c", "suggested_actions": [{"do": "x"}]})
                    .to_string(),
            ),
            "`suggested_actions[0]` must be a string",
        ),
    ] {
        fake.push(reply);
        let r = app
            .admin(Method::POST, &format!("/api/v1/incidents/{id}/analyze"))
            .json(&json!({}))
            .send()
            .await
            .expect("post");
        let e = expect_error(r, StatusCode::BAD_GATEWAY, "AI_ANSWER_INVALID").await;
        let msg = e["error"].as_str().unwrap_or_default();
        assert!(msg.contains(named), "{named}: {e}");
        assert!(e["details"]["raw_response"].is_string());
    }
    // A provider error is a 502 of its own kind.
    fake.push(Reply::error(500, "overloaded"));
    let r = app
        .admin(Method::POST, &format!("/api/v1/incidents/{id}/analyze"))
        .json(&json!({}))
        .send()
        .await
        .expect("post");
    expect_error(r, StatusCode::BAD_GATEWAY, "AI_PROVIDER_ERROR").await;
    // An unknown provider or a bad model names the field.
    for (body, field) in [
        (json!({"provider": "nope"}), "provider"),
        (json!({"model": "bad model!"}), "model"),
        (json!({"temperature": 1}), "temperature"),
    ] {
        let r = app
            .admin(Method::POST, &format!("/api/v1/incidents/{id}/analyze"))
            .json(&body)
            .send()
            .await
            .expect("post");
        let e = expect_error(r, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await;
        assert!(e.to_string().contains(field), "{body}: {e}");
    }
    // Nothing was stored or audited.
    let after = app.get_json(&format!("/api/v1/incidents/{id}")).await;
    assert_eq!(after["analysis"], Value::Null);
    assert_eq!(after["version"], before["version"]);
    let audit = app.get_json("/api/v1/audit?action=incident.analyze").await;
    assert_eq!(audit["total"], 0);
    app.stop().await;
}

#[tokio::test]
async fn analysis_without_a_provider_is_a_conflict() {
    let app = spawn_app().await;
    let id = incident_with_traffic(&app).await;
    let r = app
        .admin(Method::POST, &format!("/api/v1/incidents/{id}/analyze"))
        .json(&json!({}))
        .send()
        .await
        .expect("post");
    expect_error(r, StatusCode::CONFLICT, "AI_PROVIDER_NOT_CONFIGURED").await;
    let r = app
        .admin(Method::POST, "/api/v1/incidents/nope/analyze")
        .json(&json!({}))
        .send()
        .await
        .expect("post");
    expect_error(r, StatusCode::NOT_FOUND, "NOT_FOUND").await;
    app.stop().await;
}

/// Asks generate-config with the fake provider answering `answer`.
async fn generate(app: &TestApp, fake: &FakeLlm, answer: &str) -> reqwest::Response {
    fake.push(Reply::text(answer));
    app.admin(Method::POST, "/api/v1/ai/generate-config")
        .json(&json!({"prompt": "route /shop to the api upstream", "provider": "fake"}))
        .send()
        .await
        .expect("post")
}

async fn revision_now(app: &TestApp) -> Value {
    app.get_json("/api/v1/export").await
}

#[tokio::test]
async fn generated_route_is_checked_and_diffed_and_changes_nothing_until_applied() {
    let app = spawn_app().await;
    let fake = with_provider(&app).await;
    gateway_config(&app).await;
    let before = revision_now(&app).await;
    let proposal = json!({"action": "create_route", "explanation": "a shop route",
        "route": {"id": "shop", "path": "/shop", "upstream": "api", "methods": ["GET"]}});
    let r = generate(&app, &fake, &proposal.to_string()).await;
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.expect("json");
    assert_eq!(
        (v["success"].as_bool(), v["applied"].as_bool()),
        (Some(true), Some(false))
    );
    assert_eq!(v["config"], proposal);
    assert_eq!(v["raw_response"], proposal.to_string());
    assert_eq!(v["destructive"], false);
    let changes = v["changes"].to_string();
    assert!(
        changes.contains("shop"),
        "the diff shows the route: {changes}"
    );
    // The model saw the configuration without its secrets.
    let sent = fake.requests().last().expect("request").body.to_string();
    assert!(
        sent.contains("/orders") && !sent.contains("route-sekrit"),
        "{sent}"
    );
    // Nothing changed.
    assert_eq!(revision_now(&app).await, before);
    let (status, _) = send(&app, Method::GET, "/api/v1/routes/shop", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // A viewer cannot apply it.
    let viewer = app.key_for_role("ai-viewer", "viewer").await;
    let r = app
        .client
        .post(app.url("/api/v1/ai/actions/apply"))
        .bearer_auth(&viewer)
        .json(&json!({"config": v["config"]}))
        .send()
        .await
        .expect("post");
    expect_error(r, StatusCode::FORBIDDEN, "FORBIDDEN").await;
    assert_eq!(revision_now(&app).await, before);

    // Applying writes one revision, audited.
    let revs = app.get_json("/api/v1/revisions?limit=1").await;
    let (status, applied) = send(
        &app,
        Method::POST,
        "/api/v1/ai/actions/apply",
        Some(json!({"config": v["config"]})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{applied}");
    assert_eq!(applied["applied"], true);
    let rev = applied["revision"].as_i64().expect("revision");
    assert_eq!(
        Some(rev),
        revs["items"][0]["number"].as_i64().map(|n| n + 1),
        "{revs}"
    );
    assert_eq!(applied["changes"], v["changes"]);
    let route = app.get_json("/api/v1/routes/shop").await;
    assert_eq!(route["upstream"], "api");
    let audit = app.get_json("/api/v1/audit?action=ai.apply").await;
    assert_eq!(audit["total"], 1, "{audit}");
    // Applying it again is refused: the route exists now.
    let r = app
        .admin(Method::POST, "/api/v1/ai/actions/apply")
        .json(&json!({"config": v["config"]}))
        .send()
        .await
        .expect("post");
    expect_error(r, StatusCode::CONFLICT, "CONFLICT").await;
    app.stop().await;
}

#[tokio::test]
async fn hostile_model_output_is_refused_and_changes_nothing() {
    let app = spawn_app().await;
    let fake = with_provider(&app).await;
    gateway_config(&app).await;
    let before = revision_now(&app).await;
    for (answer, named) in [
        ("Sure! Here is your route: create /shop".to_string(), "not JSON"),
        (json!({"action": "drop_database"}).to_string(), "is not an action"),
        (json!({"action": "delete_route", "id": "*"}).to_string(), "there is no route \\\"*\\\""),
        (
            json!({"action": "create_route", "route": {"id": "x", "path": "/x", "upstream": "nope"}}).to_string(),
            "nope",
        ),
        (
            json!({"action": "create_route", "route": {"id": "y", "path": "no-slash", "upstream": "api"}}).to_string(),
            "path",
        ),
        (
            json!({"action": "create_route", "apply_now": true, "route": {"id": "z", "path": "/z", "upstream": "api"}}).to_string(),
            "apply_now",
        ),
        (
            json!({"action": "multiple", "actions": [{"action": "multiple", "actions": []}]}).to_string(),
            "not an action inside multiple",
        ),
        (
            json!({"action": "start_flow", "flow_id": "f1"}).to_string(),
            "node_id",
        ),
    ] {
        let r = generate(&app, &fake, &answer).await;
        let e = expect_error(r, StatusCode::BAD_GATEWAY, "AI_ANSWER_INVALID").await;
        assert!(e.to_string().contains(named), "{answer}: {e}");
    }
    // A prompt-injected "delete everything" is only ever a proposal: shown as
    // destructive, with its diff, and nothing is deleted.
    let injected = json!({"action": "multiple", "actions": [
        {"action": "delete_route", "id": "orders"},
        {"action": "delete_upstream", "name": "api"}]});
    let r = generate(&app, &fake, &injected.to_string()).await;
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.expect("json");
    assert_eq!(
        (v["destructive"].as_bool(), v["applied"].as_bool()),
        (Some(true), Some(false))
    );
    assert!(v["changes"].to_string().contains("orders"));
    assert_eq!(revision_now(&app).await, before, "nothing changed");
    // Apply checks again: an invalid envelope is a 400 naming the field.
    for (config, field) in [
        (json!({"action": "delete_route"}), "config.id"),
        (
            json!({"action": "delete_upstream", "name": "api"}),
            "used by routes",
        ),
        (json!([1]), "config"),
    ] {
        let r = app
            .admin(Method::POST, "/api/v1/ai/actions/apply")
            .json(&json!({"config": config}))
            .send()
            .await
            .expect("post");
        assert!(r.status().is_client_error());
        let e: Value = r.json().await.expect("json");
        assert!(e.to_string().contains(field), "{config}: {e}");
    }
    assert_eq!(revision_now(&app).await, before, "nothing changed");
    let audit = app.get_json("/api/v1/audit?action=ai.apply").await;
    assert_eq!(audit["total"], 0);
    app.stop().await;
}

/// Generates `answer` and expects a checked proposal; returns it.
async fn proposal(app: &TestApp, fake: &FakeLlm, answer: &Value) -> Value {
    let r = generate(app, fake, &answer.to_string()).await;
    let status = r.status();
    let v: Value = r.json().await.expect("json");
    assert_eq!(status, StatusCode::OK, "{answer}: {v}");
    assert_eq!(v["applied"], false);
    v
}

async fn apply(app: &TestApp, config: &Value) -> Value {
    let (status, v) = send(
        app,
        Method::POST,
        "/api/v1/ai/actions/apply",
        Some(json!({"config": config})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{config}: {v}");
    assert_eq!(v["applied"], true);
    v
}

#[tokio::test]
async fn every_gateway_action_is_diffed_and_applied_as_one_revision() {
    let app = spawn_app().await;
    let fake = with_provider(&app).await;
    gateway_config(&app).await;
    let before = revision_now(&app).await;
    let build = json!({"action": "multiple", "actions": [
        {"action": "create_upstream", "upstream": {"name": "billing", "targets": [{"url": "http://127.0.0.1:7001"}]}},
        {"action": "update_upstream", "name": "api", "upstream": {"targets": [{"url": "http://127.0.0.1:7002"}]}},
        {"action": "update_route", "id": "orders", "route": {"path": "/orders", "upstream": "billing"}},
        {"action": "create_route", "route": {"id": "pay", "path": "/pay", "upstream": "billing"}}]});
    let v = proposal(&app, &fake, &build).await;
    assert_eq!(v["destructive"], false);
    let changes = v["changes"].to_string();
    for shown in ["billing", "7001", "7002", "pay"] {
        assert!(
            changes.contains(shown),
            "{shown} not in the diff: {changes}"
        );
    }
    assert_eq!(
        revision_now(&app).await,
        before,
        "generating changed nothing"
    );
    let applied = apply(&app, &v["config"]).await;
    assert!(applied["revision"].as_i64().is_some(), "{applied}");
    assert_eq!(applied["changes"], v["changes"]);
    assert_eq!(
        app.get_json("/api/v1/routes/orders").await["upstream"],
        "billing"
    );
    assert_eq!(
        app.get_json("/api/v1/routes/pay").await["upstream"],
        "billing"
    );
    let api = app.get_json("/api/v1/upstreams/api").await;
    assert_eq!(api["targets"][0]["url"], "http://127.0.0.1:7002", "{api}");
    // update_route replaces the route as PUT does: the header it did not repeat is gone.
    let orders = app.get_json("/api/v1/routes/orders").await;
    assert!(!orders.to_string().contains("route-sekrit"), "{orders}");

    // Deleting: destructive, diffed, and applied only when asked.
    let teardown = json!({"action": "multiple", "actions": [
        {"action": "delete_route", "id": "pay"},
        {"action": "delete_route", "id": "orders"},
        {"action": "delete_upstream", "name": "api"},
        {"action": "delete_upstream", "name": "billing"}]});
    let v = proposal(&app, &fake, &teardown).await;
    assert_eq!(v["destructive"], true);
    let ops: Vec<&str> = v["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .filter_map(|c| c["op"].as_str())
        .collect();
    assert!(ops.contains(&"remove"), "{ops:?}");
    let (status, _) = send(&app, Method::GET, "/api/v1/routes/pay", None).await;
    assert_eq!(status, StatusCode::OK, "not deleted before applying");
    apply(&app, &v["config"]).await;
    for path in [
        "/api/v1/routes/pay",
        "/api/v1/routes/orders",
        "/api/v1/upstreams/api",
        "/api/v1/upstreams/billing",
    ] {
        let (status, _) = send(&app, Method::GET, path, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
    }
    let audit = app.get_json("/api/v1/audit?action=ai.apply").await;
    assert_eq!(audit["total"], 2, "{audit}");

    // An upstream still in use cannot be deleted, even inside a proposal
    // that deletes something else first: nothing of it is applied.
    gateway_config(&app).await;
    let now = revision_now(&app).await;
    let r = generate(
        &app,
        &fake,
        &json!({"action": "multiple", "actions": [
            {"action": "create_upstream", "upstream": {"name": "spare", "targets": [{"url": "http://127.0.0.1:7003"}]}},
            {"action": "delete_upstream", "name": "api"}]})
        .to_string(),
    )
    .await;
    let e = expect_error(r, StatusCode::BAD_GATEWAY, "AI_ANSWER_INVALID").await;
    assert!(e.to_string().contains("used by routes"), "{e}");
    assert_eq!(revision_now(&app).await, now);
    let (status, _) = send(&app, Method::GET, "/api/v1/upstreams/spare", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    app.stop().await;
}

async fn redirects_project(app: &TestApp) {
    for (path, body) in [
        ("/api/v1/namespaces", json!({"name": "prod"})),
        (
            "/api/v1/namespaces/prod/projects",
            json!({"name": "site", "hosts": ["site.test"]}),
        ),
    ] {
        let (status, v) = send(app, Method::POST, path, Some(body)).await;
        assert_eq!(status, StatusCode::CREATED, "{v}");
    }
}

const RULES: &str = "/api/v1/namespaces/prod/projects/site/redirects";

#[tokio::test]
async fn redirect_actions_are_checked_diffed_and_applied_as_drafts() {
    let app = spawn_app().await;
    let fake = with_provider(&app).await;
    redirects_project(&app).await;
    let add = json!({"action": "add_redirect", "namespace": "prod", "project": "site",
        "explanation": "the old blog moved",
        "redirect": {"type": "BASIC", "source": "/old", "target": "/new", "status": "MOVED_PERMANENT"}});
    let v = proposal(&app, &fake, &add).await;
    assert_eq!(v["destructive"], false);
    assert_eq!(
        v["changes"],
        json!([{"op": "add", "path": "/redirects/prod/site/~1old",
                "after": {"type": "BASIC", "source": "/old", "target": "/new", "status": "MOVED_PERMANENT"}}])
    );
    // The model was told which projects there are.
    let sent = fake.requests().last().expect("request").body.to_string();
    assert!(
        sent.contains("redirect_projects") && sent.contains("site.test"),
        "{sent}"
    );
    assert_eq!(
        app.get_json(RULES).await["total"],
        0,
        "generating wrote nothing"
    );

    let applied = apply(&app, &v["config"]).await;
    assert_eq!(
        applied["revision"],
        Value::Null,
        "no gateway change: {applied}"
    );
    assert_eq!(applied["redirects"][0]["action"], "add_redirect");
    assert_eq!(applied["redirects"][0]["project"], "prod/site");
    let rules = app.get_json(RULES).await;
    assert_eq!(rules["total"], 1, "{rules}");
    let rule = &rules["items"][0];
    assert_eq!(
        (
            rule["source"].as_str(),
            rule["target"].as_str(),
            rule["state"].as_str()
        ),
        (Some("/old"), Some("/new"), Some("created")),
        "a draft, as the redirects API writes it"
    );
    assert_eq!(rule["id"], applied["redirects"][0]["id"]);
    for action in ["redirect.create", "ai.apply.redirect.add"] {
        let audit = app
            .get_json(&format!("/api/v1/audit?action={action}"))
            .await;
        assert_eq!(audit["total"], 1, "{action}: {audit}");
    }

    // Hostile or invalid redirect actions: refused with the validation error, nothing written.
    for (answer, named) in [
        (add.clone(), "already has a redirect from"),
        (
            json!({"action": "add_redirect", "namespace": "prod", "project": "site",
                   "redirect": {"type": "BASIC", "source": "old", "target": "/new"}}),
            "config.redirect.source",
        ),
        (
            json!({"action": "add_redirect", "namespace": "prod", "project": "site",
                   "redirect": {"type": "BASIC", "source": "/a", "target": "/b", "code": 301}}),
            "code",
        ),
        (
            json!({"action": "add_redirect", "namespace": "prod", "project": "nope",
                   "redirect": {"type": "BASIC", "source": "/a", "target": "/b"}}),
            "there is no redirects project prod/nope",
        ),
        (
            json!({"action": "remove_redirect", "namespace": "prod", "project": "site", "source": "*"}),
            "has no redirect from",
        ),
        (
            json!({"action": "remove_redirect", "namespace": "prod", "project": "site", "id": 1}),
            "config.id",
        ),
        (
            json!({"action": "multiple", "actions": [
                {"action": "remove_redirect", "namespace": "prod", "project": "site", "source": "/old"},
                {"action": "remove_redirect", "namespace": "prod", "project": "site", "source": "/old"}]}),
            "has no redirect from",
        ),
    ] {
        let r = generate(&app, &fake, &answer.to_string()).await;
        let e = expect_error(r, StatusCode::BAD_GATEWAY, "AI_ANSWER_INVALID").await;
        assert!(e.to_string().contains(named), "{answer}: {e}");
    }
    assert_eq!(app.get_json(RULES).await["total"], 1);

    // Removing is destructive, shows the rule removed, and happens on apply only.
    let remove = json!({"action": "remove_redirect", "namespace": "prod", "project": "site", "source": "/old"});
    let v = proposal(&app, &fake, &remove).await;
    assert_eq!(v["destructive"], true);
    assert_eq!(v["changes"][0]["op"], "remove");
    assert_eq!(v["changes"][0]["before"]["target"], "/new");
    assert_eq!(app.get_json(RULES).await["total"], 1);
    apply(&app, &v["config"]).await;
    assert_eq!(app.get_json(RULES).await["total"], 0);
    for action in ["redirect.delete", "ai.apply.redirect.remove"] {
        let audit = app
            .get_json(&format!("/api/v1/audit?action={action}"))
            .await;
        assert_eq!(audit["total"], 1, "{action}: {audit}");
    }
    // Applying the same removal again: the rule is gone, a 400 naming the field.
    let r = app
        .admin(Method::POST, "/api/v1/ai/actions/apply")
        .json(&json!({"config": remove}))
        .send()
        .await
        .expect("post");
    let e = expect_error(r, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await;
    assert_eq!(e["details"]["field"], "config.source", "{e}");
    app.stop().await;
}

/// Applying checks every action of a `multiple` before it changes anything:
/// a last part that does not validate (or a command to a node that is not
/// connected) leaves the gateway, the redirects and the audit as they were.
#[tokio::test]
async fn a_multiple_whose_last_part_is_invalid_changes_nothing() {
    let app = spawn_app().await;
    gateway_config(&app).await;
    redirects_project(&app).await;
    let before = revision_now(&app).await;
    let revisions = app.get_json("/api/v1/revisions?limit=1").await["total"].clone();
    let (offline, _) = crate::edge_sync::create_node(&app, "offline-edge").await;
    let parts = || {
        vec![
            json!({"action": "create_upstream", "upstream": {"name": "billing", "targets": [{"url": "http://127.0.0.1:7001"}]}}),
            json!({"action": "create_route", "route": {"id": "pay", "path": "/pay", "upstream": "billing"}}),
            json!({"action": "add_redirect", "namespace": "prod", "project": "site",
                   "redirect": {"type": "BASIC", "source": "/old", "target": "/new"}}),
        ]
    };
    for (last, status, named) in [
        (
            json!({"action": "delete_route", "id": "nope"}),
            StatusCode::BAD_REQUEST,
            "config.actions[3].id",
        ),
        (
            json!({"action": "create_route", "route": {"id": "x", "path": "/x", "upstream": "missing"}}),
            StatusCode::BAD_REQUEST,
            "missing",
        ),
        (
            json!({"action": "drop_everything"}),
            StatusCode::BAD_REQUEST,
            "config.actions[3].action",
        ),
        (
            json!({"action": "start_flow", "node_id": offline, "flow_id": "f1"}),
            StatusCode::BAD_GATEWAY,
            "not connected",
        ),
    ] {
        let mut actions = parts();
        actions.push(last.clone());
        let r = app
            .admin(Method::POST, "/api/v1/ai/actions/apply")
            .json(&json!({"config": {"action": "multiple", "actions": actions}}))
            .send()
            .await
            .expect("post");
        assert_eq!(r.status(), status, "{last}");
        let e: Value = r.json().await.expect("json");
        assert!(e.to_string().contains(named), "{last}: {e}");
        assert_eq!(
            revision_now(&app).await,
            before,
            "{last}: the gateway is unchanged"
        );
        assert_eq!(
            app.get_json("/api/v1/revisions?limit=1").await["total"],
            revisions,
            "{last}: no revision"
        );
        assert_eq!(
            app.get_json(RULES).await["total"],
            0,
            "{last}: no redirect draft"
        );
    }
    for action in [
        "ai.apply",
        "ai.apply.redirect.add",
        "redirect.create",
        "ai.apply.command",
    ] {
        let audit = app
            .get_json(&format!("/api/v1/audit?action={action}"))
            .await;
        assert_eq!(audit["total"], 0, "{action}: {audit}");
    }
    // The same parts without the bad one apply whole.
    let applied = apply(&app, &json!({"action": "multiple", "actions": parts()})).await;
    assert!(applied["revision"].as_i64().is_some(), "{applied}");
    assert_eq!(applied["redirects"].as_array().map(Vec::len), Some(1));
    app.stop().await;
}

#[tokio::test]
async fn every_ai_operation_is_documented() {
    let app = spawn_app().await;
    let spec = app.get_json("/api/v1/openapi.json").await;
    for (path, m, code) in [
        ("/api/v1/incidents/{id}/analyze", "post", "502"),
        ("/api/v1/incidents/{id}/analyses", "get", "200"),
        ("/api/v1/ai/generate-config", "post", "502"),
        ("/api/v1/ai/actions/apply", "post", "409"),
    ] {
        let op = &spec["paths"][path][m];
        assert!(op.is_object(), "{m} {path} is not documented");
        for c in ["200", "400", "401", "403", code] {
            assert!(op["responses"][c].is_object(), "{m} {path} lacks {c}");
        }
    }
    app.stop().await;
}
