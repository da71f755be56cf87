//! Questions about live data (`POST /api/v1/ai/query`) and anomaly analysis of
//! a time window (`POST /api/v1/ai/analyze`), against the local fake provider.

use std::time::{Duration, Instant};

use fleetgate_core::events::{NewEvent, Severity};
use fleetgate_store::MetricPoint;
use fleetgate_test_support::fake_llm::Reply;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::ai_ops::{gateway_config, with_provider, KEY, ROUTE_SECRET};
use crate::nodes::create_node;
use crate::support::{expect_error, send, spawn_app, TestApp};

const EVENT_SECRET: &str = "event-sekrit-31337";

/// Emits `e` and waits until it is stored; its id.
async fn stored_event(app: &TestApp, e: NewEvent) -> i64 {
    let state = app.running.as_ref().expect("running").state.clone();
    let (t, msg) = (e.event_type.clone(), e.message.clone());
    state.emit(e);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = app
            .get_json(&format!("/api/v1/events?type={t}&limit=100"))
            .await;
        let found = v["items"]
            .as_array()
            .and_then(|items| items.iter().find(|i| i["message"] == msg.as_str()))
            .and_then(|i| i["id"].as_i64());
        if let Some(id) = found {
            return id;
        }
        assert!(Instant::now() < deadline, "event {t} was not stored");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn query(app: &TestApp, body: Value) -> reqwest::RequestBuilder {
    app.admin(Method::POST, "/api/v1/ai/query").json(&body)
}

#[tokio::test]
async fn questions_are_answered_from_live_state_without_secrets() {
    let app = spawn_app().await;
    let fake = with_provider(&app).await;
    gateway_config(&app).await;
    let node = create_node(&app, json!({"name": "edge-berlin", "device_type": "edge"})).await;
    let node_id = node["id"].as_str().expect("node id").to_string();
    let mut e = NewEvent::new(
        "circuit_breaker.opened",
        Severity::Critical,
        "circuit breaker of upstream api: closed -> open",
    )
    .upstream("api")
    .details(json!({"token": EVENT_SECRET}));
    e.route_id = Some("orders".into());
    let event_id = stored_event(&app, e).await;

    fake.push(Reply::text(
        json!({"answer": "Route orders sends /orders to upstream api, whose breaker opened."})
            .to_string(),
    ));
    let r = query(
        &app,
        json!({"question": "Where does route orders send its traffic?"}),
    )
    .send()
    .await
    .expect("post");
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.expect("json");
    assert_eq!(
        v["answer"],
        "Route orders sends /orders to upstream api, whose breaker opened."
    );
    assert_eq!(
        (v["provider"].as_str(), v["model"].as_str()),
        (Some("fake"), Some("gpt-test"))
    );
    assert!(v["usage"]["input_tokens"].as_u64() > Some(0), "{v}");
    assert_eq!(v["note"], Value::Null, "nothing was cut");
    let sources = v["sources"].as_array().expect("sources");
    for (kind, id) in [
        ("route", "orders".to_string()),
        ("upstream", "api".to_string()),
        ("node", node_id.clone()),
        ("event", event_id.to_string()),
    ] {
        assert!(
            sources.contains(&json!({"kind": kind, "id": id})),
            "{kind} {id} not in {sources:?}"
        );
    }

    // What the provider got: the live state (the upstream's targets as the
    // data plane sees them, the node's status, the event) and no secret.
    let sent = fake.requests().last().expect("request").body.to_string();
    for needle in [
        "/orders",
        "live_targets",
        "live_breaker",
        "edge-berlin",
        "pending",
        "closed -> open",
        "Where does route orders send its traffic?",
    ] {
        assert!(sent.contains(needle), "{needle} not sent: {sent}");
    }
    for secret in [ROUTE_SECRET, "route-sekrit", EVENT_SECRET, KEY] {
        assert!(!sent.contains(secret), "{secret} was sent to the provider");
    }
    // Asking stores nothing.
    let audit = app.get_json("/api/v1/audit?limit=100").await;
    assert!(
        !audit.to_string().contains("ai.query"),
        "a question is not a mutation: {audit}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_large_state_is_cut_to_fit_and_the_answer_says_so() {
    let app = spawn_app().await;
    let fake = with_provider(&app).await;
    gateway_config(&app).await;
    // 400 routes: far more than the context holds.
    let mut doc = app.get_json("/api/v1/export").await;
    let routes = doc["routes"].as_array_mut().expect("routes");
    for i in 0..400 {
        routes.push(json!({"id": format!("bulk-{i:03}"), "path": format!("/bulk/{i:03}/items"),
            "upstream": "api", "methods": ["GET", "POST"], "hosts": [format!("bulk-{i}.example.test")]}));
    }
    let (status, v) = send(&app, Method::POST, "/api/v1/import", Some(doc)).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    fake.push(Reply::text(
        json!({"answer": "Route bulk-399 goes to api."}).to_string(),
    ));
    let (status, v) = send(
        &app,
        Method::POST,
        "/api/v1/ai/query",
        Some(json!({"question": "which upstream serves bulk-399?"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let note = v["note"].as_str().expect("a note says what was cut");
    assert!(note.contains("of 401 routes"), "{note}");
    let sent_routes: Vec<&str> = v["sources"]
        .as_array()
        .expect("sources")
        .iter()
        .filter(|s| s["kind"] == "route")
        .filter_map(|s| s["id"].as_str())
        .collect();
    assert!(
        sent_routes.len() < 401 && !sent_routes.is_empty(),
        "{}",
        sent_routes.len()
    );
    // The route the question names is kept, first.
    assert_eq!(sent_routes[0], "bulk-399");
    let req = fake.requests();
    let body = &req.last().expect("request").body;
    let sent = body.to_string();
    assert!(
        sent.contains("the live state was cut"),
        "the model is told too"
    );
    assert!(
        sent.len() < 64 * 1024,
        "the context is bounded: {} bytes",
        sent.len()
    );
    app.stop().await;
}

#[tokio::test]
async fn bad_questions_and_bad_answers_are_refused() {
    let app = spawn_app().await;
    // No provider: a conflict naming it.
    let r = query(&app, json!({"question": "how many routes?"}))
        .send()
        .await
        .expect("post");
    expect_error(r, StatusCode::CONFLICT, "AI_PROVIDER_NOT_CONFIGURED").await;
    let fake = with_provider(&app).await;
    for (body, field) in [
        (json!({"question": ""}), "question"),
        (json!({"question": "  "}), "question"),
        (json!({"question": "x".repeat(4001)}), "question"),
        (json!({"question": "a\u{7}b"}), "question"),
        (json!({}), "question"),
        (json!({"question": "q", "provider": "nope"}), "provider"),
        (json!({"question": "q", "model": "bad model!"}), "model"),
        (json!({"question": "q", "temperature": 1}), "temperature"),
    ] {
        let r = query(&app, body.clone()).send().await.expect("post");
        let e = expect_error(r, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await;
        assert!(e.to_string().contains(field), "{body}: {e}");
    }
    for (reply, named) in [
        (Reply::text("Three routes."), "not JSON"),
        (
            Reply::text(json!({"answer": 3}).to_string()),
            "`answer` must be a string",
        ),
        (
            Reply::text(json!({"reply": "x"}).to_string()),
            "`answer` is missing",
        ),
    ] {
        fake.push(reply);
        let r = query(&app, json!({"question": "how many routes?"}))
            .send()
            .await
            .expect("post");
        let e = expect_error(r, StatusCode::BAD_GATEWAY, "AI_ANSWER_INVALID").await;
        assert!(e.to_string().contains(named), "{named}: {e}");
    }
    fake.push(Reply::error(500, "overloaded"));
    let r = query(&app, json!({"question": "how many routes?"}))
        .send()
        .await
        .expect("post");
    expect_error(r, StatusCode::BAD_GATEWAY, "AI_PROVIDER_ERROR").await;
    // A viewer may not spend the provider's tokens.
    let viewer = app.key_for_role("ai-viewer", "viewer").await;
    let r = app
        .client
        .post(app.url("/api/v1/ai/query"))
        .bearer_auth(&viewer)
        .json(&json!({"question": "how many routes?"}))
        .send()
        .await
        .expect("post");
    expect_error(r, StatusCode::FORBIDDEN, "FORBIDDEN").await;
    app.stop().await;
}

/// 30 minutes of traffic of route `orders` (upstream `api`) ending at the
/// current minute: about 1% errors and 40 ms p99, with an error spike at
/// minutes 10-11, a p99 jump at minute 20 and a rate-limit burst at minute 25
/// (in all traffic too);
/// and a breaker opening and a flapping target of `api`. Returns the window's start.
async fn troubled_window(app: &TestApp) -> i64 {
    let state = app.running.as_ref().expect("running").state.clone();
    let now = fleetgate_core::time::now_ms();
    let start = now - now.rem_euclid(60_000) - 30 * 60_000;
    let mut points = Vec::new();
    for m in 0..30i64 {
        let (errors, p99, limited) = match m {
            10 => (45, 40.0, 0),
            11 => (30, 40.0, 0),
            20 => (1, 900.0, 0),
            25 => (1, 40.0, 80),
            _ => (1, 40.0, 0),
        };
        for scope in ["route:orders", ""] {
            points.push(MetricPoint {
                ts: start + m * 60_000,
                scope: scope.into(),
                source: "gw1".into(),
                requests: 100,
                errors,
                rate_limited: limited,
                latency_count: 100,
                p50_weighted: 100.0 * 10.0,
                p95_weighted: 100.0 * 30.0,
                p99_weighted: 100.0 * p99,
                ..Default::default()
            });
        }
    }
    state
        .store
        .record_metric_points(&points)
        .await
        .expect("metrics");
    stored_event(
        app,
        NewEvent::new(
            "circuit_breaker.opened",
            Severity::Critical,
            "circuit breaker of upstream api: closed -> open",
        )
        .upstream("api"),
    )
    .await;
    for (i, t) in [
        "health.target_down",
        "health.target_up",
        "health.target_down",
    ]
    .into_iter()
    .enumerate()
    {
        stored_event(
            app,
            NewEvent::new(t, Severity::Warning, format!("target flap {i}"))
                .upstream("api")
                .details(json!({"target": "http://127.0.0.1:9"})),
        )
        .await;
    }
    start
}

fn analyze(app: &TestApp, body: Value) -> reqwest::RequestBuilder {
    app.admin(Method::POST, "/api/v1/ai/analyze").json(&body)
}

fn kinds(v: &Value) -> Vec<(String, String)> {
    v["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .map(|f| {
            (
                f["kind"].as_str().unwrap_or_default().to_string(),
                f["scope"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn anomalies_are_found_without_a_provider() {
    let app = spawn_app().await;
    gateway_config(&app).await;
    let start = troubled_window(&app).await;
    let to = fleetgate_core::time::now_ms() + 1000;
    let r = analyze(&app, json!({"from": start, "to": to}))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.expect("json");
    let found = kinds(&v);
    for (kind, scope) in [
        ("error_rate_spike", "route:orders"),
        ("error_rate_spike", "all"),
        ("latency_p99_jump", "route:orders"),
        ("latency_p99_jump", "all"),
        ("rate_limit_burst", "route:orders"),
        ("rate_limit_burst", "all"),
        ("breaker_opened", "upstream:api"),
        ("health_flap", "upstream:api"),
    ] {
        assert!(
            found.contains(&(kind.to_string(), scope.to_string())),
            "{kind} {scope} not in {found:?}"
        );
    }
    assert_eq!(found.len(), 8, "nothing else: {found:?}");
    let spike = v["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .find(|f| f["kind"] == "error_rate_spike" && f["scope"] == "route:orders")
        .expect("spike");
    assert_eq!(spike["value"], 0.45);
    assert_eq!(spike["baseline"], 0.01);
    assert_eq!(spike["route_id"], "orders");
    assert_eq!(spike["evidence"]["intervals"], 2);
    assert_eq!(
        spike["from"].as_str(),
        Some(rfc(start + 10 * 60_000).as_str())
    );
    assert_eq!(v["interval_secs"], 60);
    assert_eq!(v["ai"]["status"], "not_configured");
    assert_eq!(v["explanation"], Value::Null);
    let answer = v["answer"].as_str().expect("answer");
    assert!(
        answer.contains("8 anomalies") && answer.contains("no AI provider is configured"),
        "{answer}"
    );
    assert_eq!(v["events"]["circuit_breaker.opened"], 1);
    assert!(v["scopes"]
        .as_array()
        .expect("scopes")
        .contains(&json!("upstream:api")));
    // One route only (and its upstream).
    let (status, v) = send(
        &app,
        Method::POST,
        "/api/v1/ai/analyze",
        Some(json!({"from": rfc(start), "to": rfc(to), "route": "orders"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert!(!kinds(&v).iter().any(|(_, s)| s == "all"), "{v}");
    assert_eq!(v["scopes"], json!(["route:orders", "upstream:api"]));
    // One upstream: its series and its events only.
    let (status, v) = send(
        &app,
        Method::POST,
        "/api/v1/ai/analyze",
        Some(json!({"from": start, "to": to, "upstream": "api"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["scopes"], json!(["upstream:api"]));
    let mut found = kinds(&v);
    found.sort();
    assert_eq!(
        found,
        [
            ("breaker_opened".to_string(), "upstream:api".to_string()),
            ("health_flap".to_string(), "upstream:api".to_string())
        ]
    );
    // Both: no scope twice.
    let (status, v) = send(
        &app,
        Method::POST,
        "/api/v1/ai/analyze",
        Some(json!({"from": start, "to": to, "route": "orders", "upstream": "api"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["scopes"], json!(["route:orders", "upstream:api"]));
    // A quiet window has no anomalies and asks no one.
    let (status, v) = send(
        &app,
        Method::POST,
        "/api/v1/ai/analyze",
        Some(json!({"from": start - 3_600_000, "to": start - 1_800_000})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["findings"], json!([]));
    assert_eq!(v["ai"]["status"], "skipped");
    app.stop().await;
}

fn rfc(ms: i64) -> String {
    fleetgate_core::time::rfc3339(ms)
}

#[tokio::test]
async fn a_provider_explains_the_findings_and_its_failures_keep_them() {
    let app = spawn_app().await;
    let fake = with_provider(&app).await;
    gateway_config(&app).await;
    let start = troubled_window(&app).await;
    let to = fleetgate_core::time::now_ms() + 1000;
    let window = json!({"from": start, "to": to});

    fake.push(Reply::text(
        json!({"summary": "Upstream api failed at minute 10: errors, then its breaker opened.",
               "likely_causes": ["target 127.0.0.1:9 flapping"],
               "suggested_actions": ["check the api targets"]})
        .to_string(),
    ));
    let (status, v) = send(
        &app,
        Method::POST,
        "/api/v1/ai/analyze",
        Some(window.clone()),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["ai"]["status"], "ok");
    assert_eq!(
        (v["ai"]["provider"].as_str(), v["ai"]["model"].as_str()),
        (Some("fake"), Some("gpt-test"))
    );
    assert_eq!(
        v["answer"],
        "Upstream api failed at minute 10: errors, then its breaker opened."
    );
    assert_eq!(
        v["explanation"]["likely_causes"][0],
        "target 127.0.0.1:9 flapping"
    );
    assert_eq!(kinds(&v).len(), 8);
    // The model was given the findings computed here.
    let sent = fake.requests().last().expect("request").body.to_string();
    for needle in ["error_rate_spike", "health_flap", "route:orders"] {
        assert!(sent.contains(needle), "{needle} not sent: {sent}");
    }
    assert!(!sent.contains(KEY));

    // The provider fails, or answers nonsense: the findings still come back.
    for (reply, code) in [
        (Reply::error(500, "overloaded"), "AI_PROVIDER_ERROR"),
        (Reply::text("It looks bad."), "AI_ANSWER_INVALID"),
        (
            Reply::text(json!({"summary": "s", "likely_causes": "many"}).to_string()),
            "AI_ANSWER_INVALID",
        ),
    ] {
        fake.push(reply);
        let (status, v) = send(
            &app,
            Method::POST,
            "/api/v1/ai/analyze",
            Some(window.clone()),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{v}");
        assert_eq!(v["ai"]["status"], "failed", "{v}");
        assert_eq!(v["ai"]["code"], code, "{v}");
        assert_eq!(kinds(&v).len(), 8);
        assert_eq!(v["explanation"], Value::Null);
        let answer = v["answer"].as_str().expect("answer");
        assert!(
            answer.contains("8 anomalies") && answer.contains("No AI summary"),
            "{answer}"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn bad_windows_are_a_400_naming_the_field() {
    let app = spawn_app().await;
    gateway_config(&app).await;
    let day = 86_400_000i64;
    let now = fleetgate_core::time::now_ms();
    for (body, field) in [
        (json!({"from": now, "to": now}), "to"),
        (json!({"from": now, "to": now - 1}), "to"),
        (json!({"from": now - 8 * day, "to": now}), "to"),
        (json!({"from": "yesterday", "to": now}), "from"),
        (json!({"from": now - day, "to": "soon"}), "to"),
        (json!({"from": -5, "to": now}), "from"),
        (json!({"from": true, "to": now}), "from"),
        (json!({"to": now}), "from"),
        (json!({"from": now - day}), "to"),
        (
            json!({"from": now - day, "to": now, "route": "nope"}),
            "route",
        ),
        (
            json!({"from": now - day, "to": now, "upstream": "nope"}),
            "upstream",
        ),
        (
            json!({"from": now - day, "to": now, "model": "bad model!"}),
            "model",
        ),
        (json!({"from": now - day, "to": now, "extra": 1}), "extra"),
    ] {
        let r = analyze(&app, body.clone()).send().await.expect("post");
        let e = expect_error(r, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await;
        assert!(e.to_string().contains(field), "{body}: {e}");
    }
    // An unknown provider is bad input too, even with findings to explain.
    troubled_window(&app).await;
    let r = analyze(
        &app,
        json!({"from": now - 3_600_000, "to": now + 1000, "provider": "nope"}),
    )
    .send()
    .await
    .expect("post");
    let e = expect_error(r, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await;
    assert!(e.to_string().contains("provider"), "{e}");
    let viewer = app.key_for_role("ai-viewer", "viewer").await;
    let r = app
        .client
        .post(app.url("/api/v1/ai/analyze"))
        .bearer_auth(&viewer)
        .json(&json!({"from": now - day, "to": now}))
        .send()
        .await
        .expect("post");
    expect_error(r, StatusCode::FORBIDDEN, "FORBIDDEN").await;
    app.stop().await;
}

#[tokio::test]
async fn query_and_analyze_are_documented() {
    let app = spawn_app().await;
    let spec = app.get_json("/api/v1/openapi.json").await;
    for (path, extra) in [
        ("/api/v1/ai/query", Some("502")),
        ("/api/v1/ai/analyze", None),
    ] {
        let op = &spec["paths"][path]["post"];
        assert!(op.is_object(), "post {path} is not documented");
        for c in ["200", "400", "401", "403"].into_iter().chain(extra) {
            assert!(op["responses"][c].is_object(), "post {path} lacks {c}");
        }
        assert!(op["requestBody"].is_object(), "{path}");
    }
    app.stop().await;
}
