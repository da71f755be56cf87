//! The AI gateway end to end: an `ai` route on the real gateway listener,
//! callers holding Fleetgate API keys, the local fake provider behind it (never
//! the internet); usage and cost read back from `/api/v1/ai/usage`, budgets
//! from `/api/v1/ai/budgets`, events from `/api/v1/events`.

use std::time::{Duration, Instant};

use fleetgate_ai::pricing::PriceTable;
use fleetgate_ai::Usage;
use fleetgate_test_support::fake_llm::{FakeLlm, FakeUsage, Reply};
use futures::StreamExt;
use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};

use crate::support::{audit_actions, expect_error, send, spawn_app, TestApp};

const PROVIDER_KEY: &str = "sk-provider-secret-0123456789abcdef";
const MODEL: &str = "gpt-4o-mini";

/// An app with the fake as provider `fake`, a caller key, and route `llm`
/// (`/v1`, relaying to `fake`) naming `budgets`.
struct Setup {
    app: TestApp,
    fake: FakeLlm,
    key: String,
    key_id: String,
}

async fn setup(budgets: &[Value]) -> Setup {
    setup_on(spawn_app().await, budgets).await
}

async fn setup_on(app: TestApp, budgets: &[Value]) -> Setup {
    let fake = FakeLlm::start(Some(PROVIDER_KEY)).await;
    app.post_ok(
        "/api/v1/ai/providers",
        json!({"name": "fake", "kind": "openai_compatible", "base_url": fake.openai_url(),
               "api_key": PROVIDER_KEY, "default_model": MODEL}),
    )
    .await;
    let created = app
        .post_ok(
            "/api/v1/api-keys",
            json!({"name": "caller", "role": "viewer"}),
        )
        .await;
    let key = created["key"].as_str().expect("key").to_string();
    let key_id = created["id"].as_str().expect("id").to_string();
    let mut names = Vec::new();
    for b in budgets {
        let mut b = b.clone();
        if b["api_key_id"] == "caller" {
            b["api_key_id"] = json!(key_id);
        }
        names.push(app.post_ok("/api/v1/ai/budgets", b).await["name"].clone());
    }
    app.post_ok(
        "/api/v1/routes",
        json!({"id": "llm", "path": "/v1", "ai": {"provider": "fake", "models": [MODEL, "gpt-4o"], "budgets": names}}),
    )
    .await;
    app.settle().await;
    settle_ai(&app).await;
    Setup {
        app,
        fake,
        key,
        key_id,
    }
}

/// Waits until the built-in gateway serves the newest AI gateway input.
async fn settle_ai(app: &TestApp) {
    let state = &app.running.as_ref().expect("running").state;
    let want = state.subscribe().borrow().ai.version;
    let link = &state.data_plane.get().expect("data plane").status;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if link.fresh(Duration::from_secs(1)).await.applied.ai >= want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway never applied AI input {want}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Asserts a 200, showing the body otherwise.
async fn expect_ok(r: reqwest::Response) -> reqwest::Response {
    if r.status() != StatusCode::OK {
        let status = r.status();
        panic!("{status}: {}", r.text().await.unwrap_or_default());
    }
    r
}

fn client() -> Client {
    Client::builder().build().expect("client")
}

/// A chat request of about `pad` bytes of prompt.
fn chat(model: &str, pad: usize, extra: Value) -> Value {
    let mut body =
        json!({"model": model, "messages": [{"role": "user", "content": "x".repeat(pad)}]});
    if let (Value::Object(b), Value::Object(e)) = (&mut body, extra) {
        b.extend(e);
    }
    body
}

async fn post_chat(s: &Setup, body: &Value) -> reqwest::Response {
    client()
        .post(s.app.gw("/v1/chat/completions"))
        .bearer_auth(&s.key)
        .json(body)
        .send()
        .await
        .expect("gateway answers")
}

/// Polls `/api/v1/ai/usage` until it holds `n` requests.
async fn usage_with(app: &TestApp, n: i64, query: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = app
            .get_json(&format!("/api/v1/ai/usage?limit=500{query}"))
            .await;
        if v["totals"]["requests"].as_i64() == Some(n) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "usage never reached {n} requests: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_event(app: &TestApp, event_type: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = app
            .get_json(&format!("/api/v1/events?type={event_type}&limit=5"))
            .await;
        if let Some(e) = v["items"].as_array().and_then(|a| a.first()) {
            return e.clone();
        }
        assert!(Instant::now() < deadline, "no {event_type} event");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn cost(model: &str, u: FakeUsage) -> i64 {
    PriceTable::builtin()
        .cost(
            model,
            &Usage {
                input_tokens: u.input,
                output_tokens: u.output,
                cached_input_tokens: u.cached,
                cache_write_input_tokens: u.cache_write,
                reasoning_tokens: u.reasoning,
            },
        )
        .expect("priced") as i64
}

/// What the worst case of a request reserves: its body's bytes as prompt
/// tokens, `max_tokens` of output.
fn worst(model: &str, body: &Value, max_tokens: u64) -> i64 {
    let bytes = serde_json::to_vec(body).expect("json").len() as u64;
    PriceTable::builtin()
        .worst_case(model, bytes, max_tokens)
        .expect("priced") as i64
}

#[tokio::test]
async fn relays_whole_and_streamed_answers_and_records_their_cost() {
    let s = setup(&[]).await;
    let whole_usage = FakeUsage {
        input: 1200,
        output: 300,
        cached: 400,
        cache_write: 0,
        reasoning: 100,
    };
    s.fake.push(
        Reply::text("hello there")
            .usage(whole_usage)
            .model("gpt-4o-2024-08-06"),
    );
    let r = post_chat(&s, &chat("gpt-4o", 10, json!({}))).await;
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["choices"][0]["message"]["content"], "hello there");

    // The provider got its own key, never the caller's, and a max_tokens.
    let seen = s.fake.requests();
    assert_eq!(
        seen[0].headers["authorization"],
        format!("Bearer {PROVIDER_KEY}")
    );
    assert!(!format!("{:?}", seen[0]).contains(&s.key));
    assert_eq!(seen[0].body["max_tokens"], 4096);

    let stream_usage = FakeUsage {
        input: 50,
        output: 4,
        ..Default::default()
    };
    s.fake.push(
        Reply::text("one two three four")
            .usage(stream_usage)
            .pieces(4),
    );
    let r = post_chat(
        &s,
        &chat(MODEL, 10, json!({"stream": true, "max_tokens": 64})),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let text = r.text().await.expect("body");
    assert!(text.contains("\"usage\""), "{text}");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    let seen = s.fake.requests();
    assert_eq!(seen[1].body["stream_options"]["include_usage"], true);
    assert_eq!(seen[1].body["max_tokens"], 64);

    let v = usage_with(&s.app, 2, "").await;
    let want_whole = cost("gpt-4o", whole_usage);
    let want_stream = cost(MODEL, stream_usage);
    assert!(want_whole > 0 && want_stream > 0);
    assert_eq!(
        v["totals"]["cost_micros"].as_i64(),
        Some(want_whole + want_stream),
        "{v}"
    );
    let recent = v["recent"].as_array().expect("recent");
    let whole = recent
        .iter()
        .find(|r| !r["streamed"].as_bool().unwrap_or(true))
        .expect("whole row");
    assert_eq!(
        whole["model"], "gpt-4o-2024-08-06",
        "the model that answered"
    );
    assert_eq!(whole["cost_micros"].as_i64(), Some(want_whole));
    assert_eq!(
        (
            whole["input_tokens"].as_i64(),
            whole["cached_input_tokens"].as_i64(),
            whole["reasoning_tokens"].as_i64()
        ),
        (Some(1200), Some(400), Some(100))
    );
    assert_eq!(whole["api_key_id"], s.key_id.as_str());
    assert_eq!(whole["route_id"], "llm");
    assert_eq!(whole["outcome"], "ok");
    let streamed = recent
        .iter()
        .find(|r| r["streamed"] == true)
        .expect("streamed row");
    assert_eq!(streamed["cost_micros"].as_i64(), Some(want_stream));
    assert_eq!(streamed["estimated"], false);

    // Grouped views of the same numbers.
    let by_model = s.app.get_json("/api/v1/ai/usage?group_by=model").await;
    let groups = by_model["groups"].as_array().expect("groups");
    assert_eq!(groups.len(), 2);
    assert!(groups
        .iter()
        .any(|g| g["key"] == MODEL && g["cost_micros"].as_i64() == Some(want_stream)));
    let by_key = s.app.get_json("/api/v1/ai/usage?group_by=key").await;
    assert_eq!(by_key["groups"][0]["key"], s.key_id.as_str());
    assert_eq!(by_key["groups"][0]["requests"], 2);
    let by_day = s.app.get_json("/api/v1/ai/usage?group_by=day").await;
    assert_eq!(by_day["groups"][0]["key"].as_str().map(str::len), Some(10));
    for bad in [
        "group_by=colour",
        "from=-5",
        "to=99999999999999999",
        "from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z",
        "limit=501",
    ] {
        let r = s
            .app
            .admin(Method::GET, &format!("/api/v1/ai/usage?{bad}"))
            .send()
            .await
            .expect("get");
        expect_error(r, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await;
    }

    // The model list is relayed.
    let r = client()
        .get(s.app.gw("/v1/models"))
        .bearer_auth(&s.key)
        .send()
        .await
        .expect("models");
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.text().await.expect("body").contains("fake-model-1"));

    // The endpoints and the route's `ai` block are in the API description.
    let spec = s.app.get_json("/api/v1/openapi.json").await;
    for path in [
        "/api/v1/ai/budgets",
        "/api/v1/ai/budgets/{id}",
        "/api/v1/ai/usage",
    ] {
        assert!(spec["paths"][path].is_object(), "{path} missing");
    }
    for schema in ["BudgetView", "BudgetInput", "UsageReport", "AiRoute"] {
        assert!(
            spec["components"]["schemas"][schema].is_object(),
            "{schema} missing"
        );
    }

    // Neither key is in the revision, the route, the usage or the audit log.
    for path in [
        "/api/v1/routes/llm",
        "/api/v1/revisions",
        "/api/v1/export",
        "/api/v1/ai/usage",
        "/api/v1/audit?limit=200",
        "/api/v1/ai/providers",
    ] {
        let r = s.app.admin(Method::GET, path).send().await.expect("get");
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        let text = r.text().await.expect("body");
        assert!(
            !text.contains(PROVIDER_KEY),
            "{path} shows the provider key"
        );
        assert!(!text.contains(&s.key), "{path} shows the caller key");
    }
    s.app.stop().await;
}

#[tokio::test]
async fn callers_models_and_bodies_are_checked_before_anything_is_sent() {
    let s = setup(&[]).await;
    let anon = client()
        .post(s.app.gw("/v1/chat/completions"))
        .json(&chat(MODEL, 1, json!({})))
        .send()
        .await
        .expect("post");
    expect_error(anon, StatusCode::UNAUTHORIZED, "AI_KEY_REQUIRED").await;
    let wrong = client()
        .post(s.app.gw("/v1/chat/completions"))
        .header("x-api-key", "fgk_not-a-key")
        .json(&chat(MODEL, 1, json!({})))
        .send()
        .await
        .expect("post");
    expect_error(wrong, StatusCode::UNAUTHORIZED, "AI_KEY_INVALID").await;
    let e = expect_error(
        post_chat(&s, &chat("o3", 1, json!({}))).await,
        StatusCode::BAD_REQUEST,
        "AI_MODEL_NOT_ALLOWED",
    )
    .await;
    assert!(
        e["error"].as_str().expect("message").contains("\"o3\""),
        "{e}"
    );
    for bad in [
        json!({"messages": []}),
        json!({"model": MODEL, "stream": "yes"}),
        json!({"model": MODEL, "max_tokens": -3}),
        json!([1, 2]),
    ] {
        expect_error(
            post_chat(&s, &bad).await,
            StatusCode::BAD_REQUEST,
            "BAD_REQUEST",
        )
        .await;
    }
    let r = client()
        .post(s.app.gw("/v1/chat/completions"))
        .bearer_auth(&s.key)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("post");
    expect_error(r, StatusCode::BAD_REQUEST, "BAD_REQUEST").await;
    let r = client()
        .post(s.app.gw("/v1/embeddings"))
        .bearer_auth(&s.key)
        .json(&json!({}))
        .send()
        .await
        .expect("post");
    expect_error(r, StatusCode::NOT_FOUND, "AI_ENDPOINT_NOT_FOUND").await;
    assert!(s.fake.requests().is_empty(), "nothing reached the provider");

    // A deleted key is refused once the change is published.
    let (status, _) = send(
        &s.app,
        Method::DELETE,
        &format!("/api/v1/api-keys/{}", s.key_id),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    settle_ai(&s.app).await;
    expect_error(
        post_chat(&s, &chat(MODEL, 1, json!({}))).await,
        StatusCode::UNAUTHORIZED,
        "AI_KEY_INVALID",
    )
    .await;

    // Routes and budgets are validated with the field named.
    let e = expect_error(
        s.app
            .admin(Method::POST, "/api/v1/routes")
            .json(&json!({"id": "bad", "path": "/bad", "upstream": "x", "ai": {"provider": "", "budgets": ["no spaces"]}}))
            .send()
            .await
            .expect("post"),
        StatusCode::BAD_REQUEST,
        "VALIDATION_FAILED",
    )
    .await;
    let text = e.to_string();
    for field in ["upstream", "ai.provider", "ai.budgets[0]"] {
        assert!(text.contains(field), "{field} not named: {text}");
    }
    for (body, field) in [
        (
            json!({"name": "b", "period": "daily", "limit_usd": -1}),
            "limit_usd",
        ),
        (
            json!({"name": "b", "period": "daily", "limit_usd": "1.0000001"}),
            "limit_usd",
        ),
        (
            json!({"name": "b", "period": "daily", "limit_usd": 0}),
            "limit_usd",
        ),
        (
            json!({"name": "b c", "period": "daily", "limit_usd": 1}),
            "name",
        ),
        (
            json!({"name": "b", "period": "daily", "limit_usd": 1, "alert_threshold": 0}),
            "alert_threshold",
        ),
        (
            json!({"name": "b", "period": "daily", "limit_usd": 1, "api_key_id": "nope"}),
            "api_key_id",
        ),
    ] {
        let e = expect_error(
            s.app
                .admin(Method::POST, "/api/v1/ai/budgets")
                .json(&body)
                .send()
                .await
                .expect("post"),
            StatusCode::BAD_REQUEST,
            "VALIDATION_FAILED",
        )
        .await;
        assert!(e.to_string().contains(field), "{body} -> {e}");
    }
    let r = s
        .app
        .admin(Method::POST, "/api/v1/ai/budgets")
        .json(&json!({"name": "b", "period": "yearly", "limit_usd": 1}))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    s.app.stop().await;
}

#[tokio::test]
async fn anthropic_and_gemini_providers_answer_whole_requests_in_openai_shape() {
    let s = setup(&[]).await;
    for (name, kind, base, model) in [
        ("claude", "anthropic", s.fake.url(), "claude-sonnet-4"),
        ("gemini", "gemini", s.fake.url(), "gemini-2.0-flash"),
    ] {
        s.app
            .post_ok(
                "/api/v1/ai/providers",
                json!({"name": name, "kind": kind, "base_url": base, "api_key": PROVIDER_KEY, "default_model": model}),
            )
            .await;
        s.app
            .post_ok(
                "/api/v1/routes",
                json!({"id": name, "path": format!("/{name}"), "ai": {"provider": name}}),
            )
            .await;
    }
    s.app.settle().await;
    settle_ai(&s.app).await;
    let mut costs = 0;
    for (name, model, header) in [
        ("claude", "claude-sonnet-4", "x-api-key"),
        ("gemini", "gemini-2.0-flash", "x-goog-api-key"),
    ] {
        let usage = FakeUsage {
            input: 700,
            output: 120,
            cached: 200,
            ..Default::default()
        };
        s.fake
            .push(Reply::text(format!("hi from {name}")).usage(usage));
        let before = s.fake.requests().len();
        let r = client()
            .post(s.app.gw(&format!("/{name}/v1/chat/completions")))
            .bearer_auth(&s.key)
            .json(&json!({"model": model, "max_tokens": 200, "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "hello"}]}]}))
            .send()
            .await
            .expect("post");
        let v: Value = expect_ok(r).await.json().await.expect("json");
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(
            v["choices"][0]["message"]["content"],
            format!("hi from {name}")
        );
        assert_eq!(v["usage"]["prompt_tokens"], 700);
        assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 200);
        let sent = &s.fake.requests()[before];
        assert_eq!(
            sent.headers[header], PROVIDER_KEY,
            "{name} got its own key header"
        );
        assert!(!format!("{sent:?}").contains(&s.key));
        costs += cost(model, usage);

        // Tools are not translated (yet): refused naming why.
        let r = client()
            .post(s.app.gw(&format!("/{name}/v1/chat/completions")))
            .bearer_auth(&s.key)
            .json(&chat(model, 1, json!({"tools": [{"type": "function"}]})))
            .send()
            .await
            .expect("post");
        expect_error(r, StatusCode::BAD_REQUEST, "AI_REQUEST_UNSUPPORTED").await;
    }
    // The provider's refusal comes back in OpenAI's error shape.
    s.fake.push(Reply::error(429, "slow down"));
    let r = client()
        .post(s.app.gw("/claude/v1/chat/completions"))
        .bearer_auth(&s.key)
        .json(&chat("claude-sonnet-4", 1, json!({})))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["error"]["message"], "slow down");
    let v = usage_with(&s.app, 3, "").await;
    assert_eq!(v["totals"]["cost_micros"].as_i64(), Some(costs));
    s.app.stop().await;
}

#[tokio::test]
async fn sse_frames_reach_the_client_before_the_provider_finishes() {
    let s = setup(&[]).await;
    let gap = Duration::from_millis(300);
    s.fake
        .push(Reply::text("a b c d e").pieces(5).chunk_delay(gap));
    let started = Instant::now();
    let r = post_chat(&s, &chat(MODEL, 1, json!({"stream": true}))).await;
    assert_eq!(r.status(), StatusCode::OK);
    let mut body = r.bytes_stream();
    let first = body.next().await.expect("a frame").expect("bytes");
    let first_at = started.elapsed();
    assert!(String::from_utf8_lossy(&first).starts_with("data: "));
    let mut frames = 1;
    while let Some(chunk) = body.next().await {
        chunk.expect("bytes");
        frames += 1;
    }
    let total = started.elapsed();
    // 5 pieces, the finish and usage events and [DONE]: 8 events, 7 gaps.
    assert!(total >= gap * 6, "the fake paced its events: {total:?}");
    assert!(
        first_at < gap * 3,
        "the first frame came at {first_at:?} of {total:?}: the gateway held it back"
    );
    assert!(frames >= 5, "frames arrived as they came: {frames}");
    s.app.stop().await;
}

/// The text of a streamed OpenAI answer (its deltas joined), and whether it
/// ended with `[DONE]` after a usage event.
fn stream_text(body: &str) -> (String, bool) {
    let mut text = String::new();
    let mut usage = false;
    let mut done = false;
    for event in body.split("\n\n").filter(|e| !e.trim().is_empty()) {
        let data = event.strip_prefix("data: ").expect("a data event");
        assert!(!done, "an event after [DONE]: {data}");
        if data == "[DONE]" {
            done = true;
            continue;
        }
        let v: Value = serde_json::from_str(data).expect("an event is JSON");
        if let Some(t) = v["choices"][0]["delta"]["content"].as_str() {
            text.push_str(t);
        }
        usage |= v["usage"].is_object();
    }
    (text, done && usage)
}

#[tokio::test]
async fn a_thousand_concurrent_streams_lose_no_frame() {
    const STREAMS: usize = 1000;
    let s = setup(&[]).await;
    let mut sent = std::collections::BTreeSet::new();
    for i in 0..STREAMS {
        let text = format!("stream {i} says one two three four five six seven");
        s.fake.push(
            Reply::text(text.clone())
                .pieces(8)
                .chunk_delay(Duration::from_millis(5)),
        );
        sent.insert(text);
    }
    // One connection per stream, all open at once.
    let c = Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    let url = s.app.gw("/v1/chat/completions");
    let mut tasks = Vec::new();
    for _ in 0..STREAMS {
        let (c, url, key) = (c.clone(), url.clone(), s.key.clone());
        tasks.push(tokio::spawn(async move {
            let r = c
                .post(url)
                .bearer_auth(key)
                .json(&chat(MODEL, 1, json!({"stream": true})))
                .send()
                .await
                .expect("post");
            assert_eq!(r.status(), StatusCode::OK);
            String::from_utf8(r.bytes().await.expect("body").to_vec()).expect("utf-8")
        }));
    }
    let mut got = std::collections::BTreeSet::new();
    for t in tasks {
        let (text, complete) = stream_text(&t.await.expect("task"));
        assert!(
            complete,
            "a stream ended without usage and [DONE]: {text:?}"
        );
        assert!(got.insert(text.clone()), "a stream came twice: {text:?}");
    }
    // Every stream whole: each text the provider sent arrived exactly, once.
    assert_eq!(got, sent);
    let v = usage_with(&s.app, STREAMS as i64, "").await;
    assert_eq!(v["totals"]["requests"].as_i64(), Some(STREAMS as i64));
    s.app.stop().await;
}

/// Each request of these tests: a prompt of 2,000 bytes, 500 prompt tokens
/// and 1,000 output tokens reported, `max_tokens` 1,000.
fn priced_usage() -> FakeUsage {
    FakeUsage {
        input: 500,
        output: 1000,
        ..Default::default()
    }
}

fn priced_request() -> Value {
    chat(MODEL, 2000, json!({"max_tokens": 1000}))
}

async fn budget(app: &TestApp, name: &str) -> Value {
    let list = app.get_json("/api/v1/ai/budgets").await;
    list["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|b| b["name"] == name)
        .cloned()
        .expect("budget listed")
}

#[tokio::test]
async fn a_blocking_budget_refuses_naming_budget_period_reset_and_what_is_left() {
    let per = cost(MODEL, priced_usage());
    let reserve = worst(MODEL, &priced_request(), 1000);
    assert!(per < reserve);
    // Two requests fit; the third's worst case does not.
    let limit = 2 * per + reserve - 1;
    let s = setup(&[
        json!({"name": "team", "period": "daily", "limit_usd": format!("0.{limit:06}"),
                             "alert_threshold": 0.5, "action_on_exceed": "block"}),
    ])
    .await;
    for _ in 0..3 {
        s.fake.push(Reply::text("ok").usage(priced_usage()));
    }
    for _ in 0..2 {
        let r = post_chat(&s, &priced_request()).await;
        assert_eq!(r.status(), StatusCode::OK);
        r.bytes().await.expect("body");
    }
    let r = post_chat(&s, &priced_request()).await;
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .expect("text")
        .parse()
        .expect("secs");
    let e = expect_error(r, StatusCode::TOO_MANY_REQUESTS, "AI_BUDGET_EXCEEDED").await;
    let d = &e["details"];
    assert_eq!(d["budget"], "team");
    assert_eq!(d["period"], "daily");
    assert_eq!(d["action"], "block");
    assert_eq!(d["left_usd"], format!("0.{:06}", limit - 2 * per));
    let now = fleetgate_core::time::now_ms();
    let day = 86_400_000;
    let reset = (now / day + 1) * day;
    assert_eq!(d["reset_at"], fleetgate_core::time::rfc3339(reset));
    let to_reset = u64::try_from((reset - now) / 1000).expect("ahead");
    assert!(
        retry.abs_diff(to_reset) <= 2,
        "Retry-After {retry} s, reset in {to_reset} s"
    );
    let msg = e["error"].as_str().expect("message");
    assert!(
        msg.contains("team") && msg.contains("daily") && msg.contains("left"),
        "{msg}"
    );
    assert_eq!(
        s.fake.requests().len(),
        2,
        "the refused request was never sent"
    );

    // Events at the threshold (50%) and on exceeding.
    let t = wait_event(&s.app, "ai.budget.threshold").await;
    assert_eq!(t["details"]["budget"], "team");
    assert_eq!(t["route_id"], "llm");
    let x = wait_event(&s.app, "ai.budget.exceeded").await;
    assert_eq!(x["severity"], "critical");

    // The spend as the API reports it.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let b = budget(&s.app, "team").await;
        if b["spent_micros"].as_i64() == Some(2 * per) {
            assert_eq!(b["remaining_usd"], format!("0.{:06}", limit - 2 * per));
            assert_eq!(b["resets_at"], fleetgate_core::time::rfc3339(reset));
            break;
        }
        assert!(Instant::now() < deadline, "spend never recorded: {b}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.app.stop().await;
}

#[tokio::test]
async fn a_throttled_budget_lets_one_request_at_a_time_past_its_threshold() {
    let per = cost(MODEL, priced_usage());
    let s = setup(&[
        json!({"name": "slow", "period": "weekly", "limit_usd": format!("0.{:06}", 10 * per),
                             "alert_threshold": 0.1, "action_on_exceed": "throttle"}),
    ])
    .await;
    // Past the threshold (a tenth of the limit) after one request.
    s.fake.push(Reply::text("ok").usage(priced_usage()));
    let r = post_chat(&s, &priced_request()).await;
    assert_eq!(r.status(), StatusCode::OK);
    r.bytes().await.expect("body");
    // One slow request in flight; a second one is throttled.
    s.fake.push(
        Reply::text("slow")
            .usage(priced_usage())
            .delay(Duration::from_millis(800)),
    );
    let slow = tokio::spawn({
        let url = s.app.gw("/v1/chat/completions");
        let key = s.key.clone();
        async move {
            client()
                .post(url)
                .bearer_auth(key)
                .json(&priced_request())
                .send()
                .await
                .expect("post")
                .status()
        }
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while s.fake.requests().len() < 2 {
        assert!(
            Instant::now() < deadline,
            "the slow request never reached the fake"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let r = post_chat(&s, &priced_request()).await;
    assert_eq!(r.headers()["retry-after"], "1");
    let e = expect_error(r, StatusCode::TOO_MANY_REQUESTS, "AI_BUDGET_THROTTLED").await;
    assert_eq!(e["details"]["budget"], "slow");
    assert_eq!(e["details"]["period"], "weekly");
    assert!(e["details"]["reset_at"].is_string() && e["details"]["left_usd"].is_string());
    assert_eq!(slow.await.expect("task"), StatusCode::OK);
    // With nothing in flight, the next one goes through.
    s.fake.push(Reply::text("ok").usage(priced_usage()));
    let r = post_chat(&s, &priced_request()).await;
    assert_eq!(r.status(), StatusCode::OK);
    s.app.stop().await;
}

#[tokio::test]
async fn an_alert_only_budget_lets_requests_through_and_raises_its_events() {
    let per = cost(MODEL, priced_usage());
    let s = setup(&[
        json!({"name": "watch", "period": "monthly", "limit_usd": format!("0.{:06}", per + 1),
                             "action_on_exceed": "alert_only", "api_key_id": "caller"}),
    ])
    .await;
    for _ in 0..3 {
        s.fake.push(Reply::text("ok").usage(priced_usage()));
        let r = post_chat(&s, &priced_request()).await;
        assert_eq!(r.status(), StatusCode::OK);
        r.bytes().await.expect("body");
    }
    wait_event(&s.app, "ai.budget.threshold").await;
    let e = wait_event(&s.app, "ai.budget.exceeded").await;
    assert_eq!(e["details"]["budget"], "watch");
    let v = usage_with(&s.app, 3, "").await;
    assert_eq!(v["totals"]["cost_micros"].as_i64(), Some(3 * per));
    let b = budget(&s.app, "watch").await;
    assert_eq!(b["api_key_id"], s.key_id.as_str());
    assert_eq!(b["action_on_exceed"], "alert_only");
    s.app.stop().await;
}

#[tokio::test]
async fn two_hundred_concurrent_requests_never_spend_past_the_limit() {
    let per = cost(MODEL, priced_usage());
    let reserve = worst(MODEL, &priced_request(), 1000);
    // Room for about 20 worst cases at once.
    let limit = 20 * reserve + reserve / 2;
    let s = setup(&[json!({"name": "tight", "period": "daily",
                             "limit_usd": format!("0.{limit:06}"), "action_on_exceed": "block"})])
    .await;
    let urls = vec![s.app.gw("/v1/chat/completions"); 200];
    let tasks = priced_burst(&s, urls);
    let mut ok = 0i64;
    let mut refused = 0i64;
    for t in tasks {
        match t.await.expect("task").0 {
            StatusCode::OK => ok += 1,
            StatusCode::TOO_MANY_REQUESTS => refused += 1,
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(ok + refused, 200);
    assert!(refused > 0, "the budget refused none");
    assert!(
        ok * per <= limit,
        "{ok} requests of {per} passed a limit of {limit}"
    );
    // Every admitted request was recorded, and the spend is exactly theirs.
    let v = usage_with(&s.app, ok, "").await;
    assert_eq!(v["totals"]["cost_micros"].as_i64(), Some(ok * per));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let b = budget(&s.app, "tight").await;
        if b["spent_micros"].as_i64() == Some(ok * per) {
            break;
        }
        assert!(Instant::now() < deadline, "budget spend: {b}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Nothing is left reserved: what remains is usable again.
    if limit - ok * per >= reserve {
        s.fake.push(Reply::text("ok").usage(priced_usage()));
        assert_eq!(
            post_chat(&s, &priced_request()).await.status(),
            StatusCode::OK
        );
    }
    s.app.stop().await;
}

/// One priced request (answered after 20 ms) to each of `urls` at once; each
/// task gives the status and the JSON body.
fn priced_burst(s: &Setup, urls: Vec<String>) -> Vec<tokio::task::JoinHandle<(StatusCode, Value)>> {
    for _ in 0..=urls.len() {
        s.fake.push(
            Reply::text("ok")
                .usage(priced_usage())
                .delay(Duration::from_millis(20)),
        );
    }
    let c = client();
    urls.into_iter()
        .map(|url| {
            let (c, key) = (c.clone(), s.key.clone());
            tokio::spawn(async move {
                let r = c
                    .post(url)
                    .bearer_auth(key)
                    .json(&priced_request())
                    .send()
                    .await
                    .expect("post");
                let status = r.status();
                (status, r.json().await.expect("json body"))
            })
        })
        .collect()
}

/// Waits until `app`'s gateway serves the route `llm` and an AI input with
/// `budgets` budgets and the caller `key_id` (learned from the store, as a
/// replica does).
async fn wait_for_replica(app: &TestApp, key_id: &str, budgets: usize) {
    let state = &app.running.as_ref().expect("running").state;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let ready = {
            let input = state.subscribe().borrow().clone();
            input.ai.budgets.len() == budgets
                && input.ai.keys.iter().any(|k| k.id == key_id)
                && !input.ai.providers.is_empty()
                && input.gateway.routes.iter().any(|r| r.id == "llm")
        };
        if ready {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the replica never learned of the AI setup"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.settle().await;
    settle_ai(app).await;
}

#[tokio::test]
async fn two_gateway_processes_never_spend_past_a_budget_together() {
    let Some(url) = crate::support::postgres_schema_url().await else {
        return;
    };
    let (a, b) = crate::scale_out::pair_on(&url, None).await;
    let per = cost(MODEL, priced_usage());
    let reserve = worst(MODEL, &priced_request(), 1000);
    // Room for about 20 worst cases at once, over both processes.
    let limit = 20 * reserve + reserve / 2;
    let s = setup_on(
        a,
        &[json!({"name": "shared", "period": "daily",
                  "limit_usd": format!("0.{limit:06}"), "action_on_exceed": "block"})],
    )
    .await;
    wait_for_replica(&b, &s.key_id, 1).await;
    let urls = (0..200)
        .map(|i| {
            if i % 2 == 0 {
                s.app.gw("/v1/chat/completions")
            } else {
                b.gw("/v1/chat/completions")
            }
        })
        .collect();
    let tasks = priced_burst(&s, urls);
    let mut ok = [0i64; 2];
    let mut refused = 0i64;
    for (i, t) in tasks.into_iter().enumerate() {
        let which = i % 2;
        let (status, body) = t.await.expect("task");
        match status {
            StatusCode::OK => ok[which] += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                refused += 1;
                assert_eq!(body["details"]["budget"], "shared", "{body}");
                let m = body["error"].as_str().unwrap_or_default();
                assert!(
                    m.contains("\"shared\" (daily)"),
                    "the refusal names the budget: {body}"
                );
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    let total = ok[0] + ok[1];
    assert_eq!(total + refused, 200);
    assert!(refused > 0, "the budget refused none");
    assert!(
        ok[0] > 0 && ok[1] > 0,
        "both processes relayed requests: {ok:?}"
    );
    // Zero overshoot: together they spent no more than the limit.
    assert!(
        total * per <= limit,
        "{total} requests of {per} passed a limit of {limit} (by process: {ok:?})"
    );
    let v = usage_with(&s.app, total, "").await;
    assert_eq!(v["totals"]["cost_micros"].as_i64(), Some(total * per));
    // The replica stops and gives back what it holds unspent: what is left
    // of the budget is usable from the other process.
    b.stop().await;
    // (The other trusts for a moment that too little was unleased.)
    tokio::time::sleep(Duration::from_millis(600)).await;
    if limit - total * per >= reserve {
        assert_eq!(
            post_chat(&s, &priced_request()).await.status(),
            StatusCode::OK
        );
    }
    s.app.stop().await;
}

#[tokio::test]
async fn cancelled_and_cut_streams_release_their_reservation_and_get_a_usage_row() {
    let reserve = worst(MODEL, &priced_request(), 1000);
    // One worst case at a time.
    let limit = reserve + reserve / 2;
    let s = setup(&[json!({"name": "one", "period": "hourly",
                             "limit_usd": format!("0.{limit:06}")})])
    .await;
    s.fake.push(
        Reply::text("a b c d e f g h")
            .pieces(8)
            .chunk_delay(Duration::from_millis(300)),
    );
    let r = post_chat(
        &s,
        &chat(MODEL, 2000, json!({"max_tokens": 1000, "stream": true})),
    )
    .await;
    let r = expect_ok(r).await;
    let mut body = r.bytes_stream();
    body.next().await.expect("a frame").expect("bytes");
    // While it runs, its reservation leaves no room for another.
    let e = expect_error(
        post_chat(&s, &priced_request()).await,
        StatusCode::TOO_MANY_REQUESTS,
        "AI_BUDGET_EXCEEDED",
    )
    .await;
    assert_eq!(e["details"]["period"], "hourly");
    drop(body);
    let v = usage_with(&s.app, 1, "").await;
    let row = &v["recent"][0];
    assert_eq!(row["outcome"], "cancelled");
    assert_eq!(row["estimated"], true);
    assert!(row["input_tokens"].as_i64().unwrap_or(0) > 0, "{row}");
    // Released: another request fits again.
    s.fake.push(Reply::text("ok").usage(priced_usage()));
    let r = post_chat(&s, &priced_request()).await;
    assert_eq!(r.status(), StatusCode::OK);
    r.bytes().await.expect("body");

    // A stream the provider breaks off is cut, priced from what it sent.
    s.fake.push(Reply::text("x y z").pieces(3).abort_after(2));
    let r = post_chat(
        &s,
        &chat(MODEL, 10, json!({"stream": true, "max_tokens": 10})),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let _ = r.bytes().await;
    let v = usage_with(&s.app, 3, "").await;
    let cut = v["recent"]
        .as_array()
        .expect("rows")
        .iter()
        .find(|r| r["outcome"] == "cut")
        .cloned()
        .unwrap_or_else(|| panic!("no cut row: {v}"));
    assert_eq!(cut["estimated"], true);
    assert!(cut["cost_micros"].as_i64().unwrap_or(0) > 0);
    s.app.stop().await;
}

#[tokio::test]
async fn provider_errors_and_callers_leaving_early_release_their_reservation() {
    let reserve = worst(MODEL, &priced_request(), 1000);
    let limit = reserve + reserve / 2;
    let s = setup(&[json!({"name": "one", "period": "daily",
                             "limit_usd": format!("0.{limit:06}")})])
    .await;
    // The provider refuses: its error is relayed, nothing is charged.
    s.fake.push(Reply::error(503, "overloaded"));
    let r = post_chat(&s, &priced_request()).await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.text().await.expect("body").contains("overloaded"));
    // The caller gives up before the provider answers at all.
    s.fake.push(
        Reply::text("late")
            .usage(priced_usage())
            .delay(Duration::from_millis(1500)),
    );
    let gave_up = Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .expect("client")
        .post(s.app.gw("/v1/chat/completions"))
        .bearer_auth(&s.key)
        .json(&priced_request())
        .send()
        .await;
    assert!(gave_up.is_err(), "the caller timed out");
    let v = usage_with(&s.app, 2, "").await;
    let rows = v["recent"].as_array().expect("rows");
    let error = rows
        .iter()
        .find(|r| r["outcome"] == "provider_error")
        .expect("error row");
    assert_eq!(
        (error["status"].as_i64(), error["cost_micros"].as_i64()),
        (Some(503), Some(0))
    );
    let left = rows
        .iter()
        .find(|r| r["outcome"] == "cancelled")
        .expect("cancelled row");
    assert_eq!(left["status"], 499);
    assert_eq!(left["estimated"], true);
    assert!(
        left["cost_micros"].as_i64().unwrap_or(0) > 0,
        "the prompt was sent: {left}"
    );
    // Both reservations were released: a whole worst case fits again.
    s.fake.push(Reply::text("ok").usage(priced_usage()));
    let r = expect_ok(post_chat(&s, &priced_request()).await).await;
    r.bytes().await.expect("body");
    s.app.stop().await;
}

/// Sets the price of `model` through the API.
async fn set_price(app: &TestApp, model: &str, body: Value) -> reqwest::Response {
    app.admin(Method::PUT, &format!("/api/v1/ai/prices/{model}"))
        .json(&body)
        .send()
        .await
        .expect("put price")
}

#[tokio::test]
async fn a_price_override_prices_the_next_metered_request_and_dropping_it_restores_the_list_price()
{
    let s = setup(&[]).await;
    let usage = FakeUsage {
        input: 1000,
        output: 500,
        ..Default::default()
    };
    let list_price = cost(MODEL, usage);
    // USD 1 per million prompt tokens and USD 2 per million generated:
    // 1,000 × $1/M + 500 × $2/M = $0.002.
    let overridden = 2_000;
    assert_ne!(list_price, overridden);

    let r = expect_ok(
        set_price(
            &s.app,
            "GPT-4o-Mini",
            json!({"input_usd_per_million": "1.00", "output_usd_per_million": 2}),
        )
        .await,
    )
    .await;
    let row: Value = r.json().await.expect("json");
    assert_eq!(row["model"], MODEL);
    assert_eq!(row["source"], "override");
    assert_eq!(row["replaces_builtin"], true);
    assert_eq!(row["input_usd_per_million"], "1.000000");
    assert_eq!(row["cached_input_usd_per_million"], "1.000000");
    assert_eq!(row["output_usd_per_million"], "2.000000");
    assert_eq!(row["version"], 1);
    let table = s.app.get_json("/api/v1/ai/prices").await;
    let rows = table["items"].as_array().expect("items");
    let find = |m: &str| rows.iter().find(|r| r["model"] == m).cloned();
    assert_eq!(find(MODEL).expect("listed")["source"], "override");
    let builtin = find("gpt-4o").expect("builtin listed");
    assert_eq!(builtin["source"], "builtin");
    assert_eq!(builtin["input_usd_per_million"], "2.500000");
    assert!(builtin["version"].is_null());
    settle_ai(&s.app).await;

    s.fake
        .push(Reply::text("priced by the override").usage(usage));
    expect_ok(post_chat(&s, &chat(MODEL, 10, json!({}))).await).await;
    let v = usage_with(&s.app, 1, "").await;
    assert_eq!(v["totals"]["cost_micros"].as_i64(), Some(overridden), "{v}");

    // Dropped: the list price holds again from the next request; a second
    // drop finds nothing.
    for want in [StatusCode::NO_CONTENT, StatusCode::NOT_FOUND] {
        let r = s
            .app
            .admin(Method::DELETE, &format!("/api/v1/ai/prices/{MODEL}"))
            .send()
            .await
            .expect("delete");
        assert_eq!(r.status(), want);
    }
    settle_ai(&s.app).await;
    s.fake.push(Reply::text("list price").usage(usage));
    expect_ok(post_chat(&s, &chat(MODEL, 10, json!({}))).await).await;
    let v = usage_with(&s.app, 2, "").await;
    assert_eq!(
        v["totals"]["cost_micros"].as_i64(),
        Some(overridden + list_price),
        "{v}"
    );

    // Both changes are audited.
    let actions = audit_actions(&s.app, "target_type=ai_price&limit=10").await;
    assert!(actions.iter().any(|a| a == "ai_price.set"), "{actions:?}");
    assert!(
        actions.iter().any(|a| a == "ai_price.delete"),
        "{actions:?}"
    );
}

#[tokio::test]
async fn bad_prices_are_refused_naming_the_field_and_viewers_change_nothing() {
    let app = spawn_app().await;
    for (model, body, field) in [
        (
            "m1",
            json!({"input_usd_per_million": -1, "output_usd_per_million": 1}),
            "input_usd_per_million",
        ),
        (
            "m1",
            json!({"input_usd_per_million": "1.1234567", "output_usd_per_million": 1}),
            "input_usd_per_million",
        ),
        (
            "m1",
            json!({"input_usd_per_million": 1, "output_usd_per_million": "1,5"}),
            "output_usd_per_million",
        ),
        (
            "m1",
            json!({"input_usd_per_million": 1, "output_usd_per_million": 1,
                   "tiers": [{"above_input_tokens": 100, "input_usd_per_million": 2, "output_usd_per_million": 2},
                             {"above_input_tokens": 100, "input_usd_per_million": 3, "output_usd_per_million": 3}]}),
            "tiers[1].above_input_tokens",
        ),
        (
            "m1",
            json!({"input_usd_per_million": 1, "output_usd_per_million": 1,
                   "tiers": [{"above_input_tokens": 10, "input_usd_per_million": 1, "output_usd_per_million": 1,
                              "cached_input_usd_per_million": "999999999"}]}),
            "tiers[0].cached_input_usd_per_million",
        ),
        (
            "a%20b",
            json!({"input_usd_per_million": 1, "output_usd_per_million": 1}),
            "model",
        ),
    ] {
        let r = set_price(&app, model, body.clone()).await;
        let e = expect_error(r, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await;
        assert_eq!(e["details"]["field"], field, "{body}: {e}");
    }
    let key = app.key_for_role("watcher", "viewer").await;
    let r = client()
        .put(app.url("/api/v1/ai/prices/m1"))
        .bearer_auth(&key)
        .json(&json!({"input_usd_per_million": 1, "output_usd_per_million": 1}))
        .send()
        .await
        .expect("put");
    expect_error(r, StatusCode::FORBIDDEN, "FORBIDDEN").await;
    let table = app.get_json("/api/v1/ai/prices").await;
    assert!(
        table["items"]
            .as_array()
            .expect("items")
            .iter()
            .all(|r| r["source"] == "builtin"),
        "{table}"
    );
}

/// Adds providers `claude` (Anthropic) and `gemini` (Gemini), both the fake,
/// with routes `/claude` and `/gemini` naming the budgets given for each.
async fn add_translated(s: &Setup, budgets: [&[&str]; 2]) {
    for ((name, kind, model), budgets) in [
        ("claude", "anthropic", "claude-sonnet-4"),
        ("gemini", "gemini", "gemini-2.0-flash"),
    ]
    .into_iter()
    .zip(budgets)
    {
        s.app
            .post_ok(
                "/api/v1/ai/providers",
                json!({"name": name, "kind": kind, "base_url": s.fake.url(), "api_key": PROVIDER_KEY, "default_model": model}),
            )
            .await;
        s.app
            .post_ok(
                "/api/v1/routes",
                json!({"id": name, "path": format!("/{name}"), "ai": {"provider": name, "budgets": budgets}}),
            )
            .await;
    }
    s.app.settle().await;
    settle_ai(&s.app).await;
}

async fn post_to(s: &Setup, route: &str, body: &Value) -> reqwest::Response {
    client()
        .post(s.app.gw(&format!("/{route}/v1/chat/completions")))
        .bearer_auth(&s.key)
        .json(body)
        .send()
        .await
        .expect("gateway answers")
}

/// The events of an OpenAI stream: each `data:` as JSON, `[DONE]` as a string.
fn stream_events(body: &str) -> Vec<Value> {
    assert!(body.ends_with("\n\n"), "whole events: {body:?}");
    body.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            let data = e
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("a data event: {e:?}"));
            if data == "[DONE]" {
                Value::String(data.into())
            } else {
                serde_json::from_str(data).unwrap_or_else(|_| panic!("JSON: {data}"))
            }
        })
        .collect()
}

fn holds(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// A worst-case request to `route` fits (nothing is left reserved) and is
/// charged `usage`.
async fn fits(s: &Setup, route: &str, body: &Value, usage: FakeUsage) {
    s.fake.push(Reply::text("ok").usage(usage));
    let r = expect_ok(post_to(s, route, body).await).await;
    r.bytes().await.expect("body");
}

/// The row of `route` with `outcome` among the `n` recorded so far.
async fn row_of(app: &TestApp, n: i64, route: &str, outcome: &str) -> Value {
    let v = usage_with(app, n, "").await;
    v["recent"]
        .as_array()
        .expect("rows")
        .iter()
        .find(|r| r["route_id"] == route && r["outcome"] == outcome)
        .cloned()
        .unwrap_or_else(|| panic!("no {outcome} row of {route}: {v}"))
}

#[tokio::test]
async fn anthropic_and_gemini_streams_arrive_as_openai_chunks_priced_from_their_usage() {
    let s = setup(&[]).await;
    s.app
        .post_ok(
            "/api/v1/ai/budgets",
            json!({"name": "big", "period": "daily", "limit_usd": "100"}),
        )
        .await;
    add_translated(&s, [&["big"], &["big"]]).await;
    let text = "The quick brown fox jumps over the lazy dog";
    let mut total = 0;
    for (i, (route, model, usage)) in [
        (
            "claude",
            "claude-sonnet-4",
            FakeUsage {
                input: 900,
                output: 120,
                cached: 300,
                cache_write: 100,
                reasoning: 0,
            },
        ),
        (
            "gemini",
            "gemini-2.0-flash",
            FakeUsage {
                input: 800,
                output: 150,
                cached: 200,
                cache_write: 0,
                reasoning: 50,
            },
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let gap = Duration::from_millis(250);
        s.fake
            .push(Reply::text(text).usage(usage).pieces(6).chunk_delay(gap));
        let before = s.fake.requests().len();
        let started = Instant::now();
        let r = expect_ok(
            post_to(
                &s,
                route,
                &json!({"model": model, "stream": true, "max_tokens": 300, "messages": [
                    {"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]}),
            )
            .await,
        )
        .await;
        assert_eq!(r.headers()["content-type"], "text/event-stream");
        // Read as it comes: the first piece of text arrives long before the
        // provider's last event.
        let mut body = r.bytes_stream();
        let mut raw = Vec::new();
        let mut first_text_at = None;
        while let Some(chunk) = body.next().await {
            raw.extend_from_slice(&chunk.expect("bytes"));
            if first_text_at.is_none() && holds(&raw, b"\"content\":\"T") {
                first_text_at = Some(started.elapsed());
            }
        }
        let all_at = started.elapsed();
        let first_text_at = first_text_at.expect("text arrived");
        assert!(all_at >= gap * 5, "the fake paced its events: {all_at:?}");
        assert!(
            first_text_at < all_at - gap * 3,
            "{route}: the first text came at {first_text_at:?} of {all_at:?}: held back"
        );
        let body = String::from_utf8(raw).expect("utf-8");
        let events = stream_events(&body);
        let n = events.len();
        assert_eq!(events[n - 1], "[DONE]", "{body}");
        let id = events[0]["id"].as_str().expect("id");
        assert!(id.starts_with("chatcmpl-"), "{id}");
        let mut got = String::new();
        let mut finishes = Vec::new();
        for e in &events[..n - 1] {
            assert_eq!(e["object"], "chat.completion.chunk", "{e}");
            assert_eq!(e["id"], id, "one id for the whole answer");
            assert_eq!(e["model"], model);
            if let Some(c) = e["choices"][0]["delta"]["content"].as_str() {
                got.push_str(c);
            }
            if let Some(f) = e["choices"][0]["finish_reason"].as_str() {
                finishes.push(f.to_string());
            }
        }
        assert_eq!(events[0]["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(got, text, "{route}: the exact text, in order");
        assert!(
            n >= 10,
            "the role, a chunk per piece (6), the finish, the usage, [DONE]: {body}"
        );
        assert_eq!(finishes, ["stop"]);
        let last = &events[n - 2];
        assert_eq!(last["choices"], json!([]));
        assert_eq!(
            last["usage"],
            json!({"prompt_tokens": usage.input, "completion_tokens": usage.output,
                   "total_tokens": usage.input + usage.output,
                   "prompt_tokens_details": {"cached_tokens": usage.cached},
                   "completion_tokens_details": {"reasoning_tokens": usage.reasoning}}),
            "{route}"
        );
        // The provider was asked for its own stream.
        let sent = &s.fake.requests()[before];
        if route == "claude" {
            assert_eq!(sent.path, "/v1/messages");
            assert_eq!(sent.body["stream"], true);
            assert_eq!(sent.body["system"], "be brief");
            assert_eq!(sent.body["max_tokens"], 300);
        } else {
            assert_eq!(
                sent.path,
                "/v1beta/models/gemini-2.0-flash:streamGenerateContent"
            );
            assert_eq!(sent.query.as_deref(), Some("alt=sse"));
            assert_eq!(sent.body["generationConfig"]["maxOutputTokens"], 300);
        }
        // Its usage row: priced from the provider's own counts.
        let want = cost(model, usage);
        assert!(want > 0);
        total += want;
        let row = row_of(&s.app, i as i64 + 1, route, "ok").await;
        assert_eq!(row["cost_micros"].as_i64(), Some(want), "{row}");
        assert_eq!(row["streamed"], true);
        assert_eq!(row["estimated"], false);
        assert_eq!(row["status"], 200);
        assert_eq!(row["model"], model);
        assert_eq!(
            (
                row["input_tokens"].as_i64(),
                row["output_tokens"].as_i64(),
                row["cached_input_tokens"].as_i64(),
                row["cache_write_input_tokens"].as_i64(),
                row["reasoning_tokens"].as_i64()
            ),
            (
                Some(usage.input as i64),
                Some(usage.output as i64),
                Some(usage.cached as i64),
                Some(usage.cache_write as i64),
                Some(usage.reasoning as i64)
            )
        );
    }
    // The budget settled at exactly what the rows cost.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let b = budget(&s.app, "big").await;
        if b["spent_micros"].as_i64() == Some(total) {
            break;
        }
        assert!(Instant::now() < deadline, "budget spend {b}, want {total}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.app.stop().await;
}

#[tokio::test]
async fn cut_failing_and_abandoned_anthropic_and_gemini_streams_are_priced_and_release_their_reservation(
) {
    let s = setup(&[]).await;
    let models = [
        ("claude", "claude-sonnet-4"),
        ("gemini", "gemini-2.0-flash"),
    ];
    let streamed = |m: &str| chat(m, 2000, json!({"max_tokens": 1000, "stream": true}));
    let whole = |m: &str| chat(m, 2000, json!({"max_tokens": 1000}));
    // Each route's budget has room for one worst case at a time.
    for (route, model) in models {
        let reserve = worst(model, &streamed(model), 1000);
        let limit = reserve + reserve / 2;
        s.app
            .post_ok(
                "/api/v1/ai/budgets",
                json!({"name": format!("one-{route}"), "period": "daily",
                       "limit_usd": format!("0.{limit:06}")}),
            )
            .await;
    }
    add_translated(&s, [&["one-claude"], &["one-gemini"]]).await;
    let usage = FakeUsage {
        input: 120,
        output: 30,
        ..Default::default()
    };
    let small = FakeUsage {
        input: 50,
        output: 5,
        ..Default::default()
    };
    let mut rows = 0;
    for (route, model) in models {
        // Where each format's stream is cut: after the second piece of text
        // (Anthropic: message_start, content_block_start, ping, then text).
        let after = if route == "claude" { 5 } else { 2 };
        // The provider breaks the connection midway.
        s.fake.push(
            Reply::text("abc def ghi jkl")
                .usage(usage)
                .pieces(4)
                .abort_after(after),
        );
        let r = expect_ok(post_to(&s, route, &streamed(model)).await).await;
        let body = r.text().await.expect("an error chunk ends the body");
        let events = stream_events(&body);
        let last = events.last().expect("events");
        assert_eq!(last["error"]["code"], "AI_PROVIDER_CUT", "{body}");
        assert!(!body.contains("[DONE]"), "{body}");
        let text: String = events
            .iter()
            .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(text, "abc def ", "{route}: what was sent, in order");
        rows += 1;
        let cut = row_of(&s.app, rows, route, "cut").await;
        assert_eq!(cut["estimated"], true, "{cut}");
        assert_eq!(cut["streamed"], true);
        assert_eq!(cut["input_tokens"].as_i64(), Some(usage.input as i64));
        // At least what the text seen makes (8 bytes: 2 tokens), though
        // Anthropic had reported 1 so far.
        assert!(cut["output_tokens"].as_i64().unwrap_or(0) >= 2, "{cut}");
        assert!(cut["cost_micros"].as_i64().unwrap_or(0) > 0, "{cut}");
        fits(&s, route, &whole(model), small).await;
        rows += 1;

        // The provider sends an error event midway.
        s.fake.push(
            Reply::text("abc def ghi jkl")
                .usage(usage)
                .pieces(4)
                .error_event_after(after, "Overloaded"),
        );
        let r = expect_ok(post_to(&s, route, &streamed(model)).await).await;
        let body = r.text().await.expect("body");
        let events = stream_events(&body);
        assert_eq!(
            events.last().expect("events")["error"],
            json!({"message": "Overloaded", "type": "provider_error", "code": "AI_PROVIDER_ERROR"}),
            "{body}"
        );
        assert!(!body.contains("[DONE]"), "{body}");
        rows += 1;
        let failed = row_of(&s.app, rows, route, "provider_error").await;
        assert_eq!(failed["estimated"], true, "{failed}");
        assert_eq!(failed["input_tokens"].as_i64(), Some(usage.input as i64));
        assert!(failed["cost_micros"].as_i64().unwrap_or(0) > 0, "{failed}");
        fits(&s, route, &whole(model), small).await;
        rows += 1;

        // The client goes away midway.
        s.fake.push(
            Reply::text("a b c d e f g h")
                .usage(usage)
                .pieces(8)
                .chunk_delay(Duration::from_millis(300)),
        );
        let r = expect_ok(post_to(&s, route, &streamed(model)).await).await;
        let mut body = r.bytes_stream();
        let mut seen = Vec::new();
        while !holds(&seen, b"\"content\":\"a") {
            seen.extend_from_slice(&body.next().await.expect("a frame").expect("bytes"));
        }
        // While it runs, its reservation leaves no room for another.
        let e = expect_error(
            post_to(&s, route, &whole(model)).await,
            StatusCode::TOO_MANY_REQUESTS,
            "AI_BUDGET_EXCEEDED",
        )
        .await;
        assert_eq!(e["details"]["budget"], format!("one-{route}"));
        drop(body);
        rows += 1;
        let left = row_of(&s.app, rows, route, "cancelled").await;
        assert_eq!(left["estimated"], true, "{left}");
        assert_eq!(left["input_tokens"].as_i64(), Some(usage.input as i64));
        assert!(left["cost_micros"].as_i64().unwrap_or(0) > 0, "{left}");
        fits(&s, route, &whole(model), small).await;
        rows += 1;
    }
    // Each budget spent exactly what its rows cost.
    let v = usage_with(&s.app, rows, "").await;
    for (route, _) in models {
        let want: i64 = v["recent"]
            .as_array()
            .expect("rows")
            .iter()
            .filter(|r| r["route_id"] == route)
            .map(|r| r["cost_micros"].as_i64().unwrap_or(0))
            .sum();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let b = budget(&s.app, &format!("one-{route}")).await;
            if b["spent_micros"].as_i64() == Some(want) {
                break;
            }
            assert!(Instant::now() < deadline, "budget spend {b}, want {want}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    s.app.stop().await;
}
