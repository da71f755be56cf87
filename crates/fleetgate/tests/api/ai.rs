//! AI providers over the API, against the local fake provider (never the
//! internet): CRUD with keys sealed at rest and shown masked (never in a
//! response, the audit log or the database in clear), roles, validation naming
//! the field, health checks, per-user model preferences, and the seeds'
//! `/api/v1/ai/keys` and `/api/v1/settings/ai` shapes on the same records.

use fleetgate_store::{AiStore, SqlStore, StoreOptions};
use fleetgate_test_support::fake_llm::FakeLlm;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::support::{expect_error, send, spawn_app, TestApp};

const KEY: &str = "sk-live-0123456789abcdefWXYZ";
const OTHER_KEY: &str = "sk-live-9876543210zyxwvuQRST";

async fn create(app: &TestApp, body: Value) -> Value {
    let (status, v) = send(
        app,
        Method::POST,
        "/api/v1/ai/providers",
        Some(body.clone()),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body} -> {v}");
    v
}

/// Reads the database files as bytes: a key in clear would show.
fn db_bytes(app: &TestApp) -> Vec<u8> {
    let mut all = Vec::new();
    for f in ["fleetgate.db", "fleetgate.db-wal"] {
        if let Ok(b) = std::fs::read(app.config.data_dir.join(f)) {
            all.extend(b);
        }
    }
    all
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[tokio::test]
async fn providers_crud_keeps_keys_sealed_and_masked() {
    let app = spawn_app().await;
    let fake = FakeLlm::start(Some(KEY)).await;
    let r = app
        .admin(Method::POST, "/api/v1/ai/providers")
        .json(
            &json!({"name": "openai-main", "kind": "openai", "base_url": fake.openai_url(),
                      "api_key": KEY, "default_model": "gpt-4.1", "is_default": true}),
        )
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(r.headers()["etag"], "\"1\"");
    let text = r.text().await.expect("body");
    assert!(!text.contains(KEY), "the key came back: {text}");
    let p: Value = serde_json::from_str(&text).expect("json");
    let id = p["id"].as_str().expect("id").to_string();
    assert_eq!(p["api_key_masked"], "sk-…WXYZ");
    assert_eq!(p["api_key_set"], true);
    assert_eq!(p["endpoint"], fake.openai_url());
    assert_eq!(p["is_default"], true);
    assert_eq!(
        (p["max_tokens"].as_i64(), p["timeout_ms"].as_i64()),
        (Some(1024), Some(60000))
    );

    // A vendor provider without a base URL uses the vendor's endpoint.
    let g = create(&app, json!({"name": "gemini", "kind": "gemini"})).await;
    assert_eq!(g["base_url"], Value::Null);
    assert_eq!(g["endpoint"], "https://generativelanguage.googleapis.com");
    assert_eq!(g["default_model"], "gemini-2.0-flash");
    assert_eq!(g["api_key_set"], false);

    // Listing and reading show the mask, never the key.
    let r = app
        .admin(Method::GET, "/api/v1/ai/providers")
        .send()
        .await
        .expect("list");
    let text = r.text().await.expect("body");
    assert!(!text.contains(KEY));
    let list: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(list["total"], 2);
    assert_eq!(list["items"][0]["name"], "openai-main");

    // Update: a missing api_key keeps the key; If-Match guards the write.
    let path = format!("/api/v1/ai/providers/{id}");
    let r = app
        .admin(Method::PUT, &path)
        .header("if-match", "\"7\"")
        .json(&json!({"name": "openai-renamed", "kind": "openai"}))
        .send()
        .await
        .expect("put");
    expect_error(r, StatusCode::PRECONDITION_FAILED, "PRECONDITION_FAILED").await;
    let r = app
        .admin(Method::PUT, &path)
        .header("if-match", "\"1\"")
        .json(&json!({"name": "openai-renamed", "kind": "openai", "temperature": 0.7}))
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), StatusCode::OK);
    let p: Value = r.json().await.expect("json");
    assert_eq!(
        (p["name"].as_str(), p["version"].as_i64()),
        (Some("openai-renamed"), Some(2))
    );
    assert_eq!(p["api_key_masked"], "sk-…WXYZ", "the key is kept");
    assert_eq!(p["base_url"], fake.openai_url(), "the base URL is kept");
    assert_eq!(p["default_model"], "gpt-4.1");
    assert_eq!(p["temperature"], 0.7);
    // The name is unique.
    let r = app
        .admin(Method::POST, "/api/v1/ai/providers")
        .json(&json!({"name": "gemini", "kind": "gemini"}))
        .send()
        .await
        .expect("post");
    expect_error(r, StatusCode::CONFLICT, "CONFLICT").await;

    // The key is sealed with the installation's secret key, in the row and
    // nowhere in clear in the database files.
    let store = SqlStore::open(&StoreOptions::new(format!(
        "sqlite://{}",
        app.config.data_dir.join("fleetgate.db").display()
    )))
    .await
    .expect("open the database");
    let row = store
        .get_ai_provider(&id)
        .await
        .expect("read")
        .expect("row");
    let sealed = row.api_key_sealed.clone().expect("sealed key");
    assert!(sealed.starts_with("v1:") && !sealed.contains(KEY));
    assert_eq!(row.api_key_hint.as_deref(), Some("sk-…WXYZ"));
    let key = fleetgate_manager::secrets::load_or_create_key(None, &app.config.data_dir)
        .expect("the key file");
    let opened = fleetgate_manager::secrets::SecretBox::new(&key)
        .open(&sealed)
        .expect("opens with the installation's key");
    assert_eq!(opened, KEY.as_bytes());
    assert!(
        !contains(&db_bytes(&app), KEY),
        "the key is in the database in clear"
    );

    // A new key replaces it; null removes it.
    let p = send(
        &app,
        Method::PUT,
        &path,
        Some(json!({"name": "openai-renamed", "kind": "openai", "api_key": OTHER_KEY})),
    )
    .await
    .1;
    assert_eq!(p["api_key_masked"], "sk-…QRST");
    let p = send(
        &app,
        Method::PUT,
        &path,
        Some(json!({"name": "openai-renamed", "kind": "openai", "api_key": null})),
    )
    .await
    .1;
    assert_eq!(
        (p["api_key_set"].as_bool(), &p["api_key_masked"]),
        (Some(false), &Value::Null)
    );

    // Delete.
    let (status, _) = send(&app, Method::DELETE, &path, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let r = app.admin(Method::GET, &path).send().await.expect("get");
    expect_error(r, StatusCode::NOT_FOUND, "NOT_FOUND").await;
    let (status, _) = send(&app, Method::DELETE, &path, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Every change was audited, without a key.
    let r = app
        .admin(
            Method::GET,
            "/api/v1/audit?target_type=ai_provider&limit=100",
        )
        .send()
        .await
        .expect("audit");
    let text = r.text().await.expect("body");
    assert!(!text.contains(KEY) && !text.contains(OTHER_KEY), "{text}");
    assert!(!text.contains(&sealed), "the sealed key is not audited");
    let audit: Value = serde_json::from_str(&text).expect("json");
    let actions: Vec<&str> = audit["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    for a in [
        "ai_provider.create",
        "ai_provider.update",
        "ai_provider.delete",
    ] {
        assert!(actions.contains(&a), "{a} missing from {actions:?}");
    }
    assert_eq!(
        actions.len(),
        6,
        "create ×2, update ×3, delete: {actions:?}"
    );
    assert!(!contains(&db_bytes(&app), OTHER_KEY));
    fleetgate_store::Store::close(&store).await;
    app.stop().await;
}

#[tokio::test]
async fn bad_input_is_a_400_naming_the_field() {
    let app = spawn_app().await;
    let cases = [
        (json!({"name": "", "kind": "openai"}), "name"),
        (json!({"name": "   ", "kind": "openai"}), "name"),
        (json!({"name": "x".repeat(101), "kind": "openai"}), "name"),
        (json!({"name": "a\u{7}b", "kind": "openai"}), "name"),
        (json!({"name": "p", "kind": "azure"}), "kind"),
        (json!({"name": "p", "kind": 3}), "kind"),
        (json!({"name": "p"}), "body"),
        (
            json!({"name": "p", "kind": "openai", "base_url": "ftp://x"}),
            "base_url",
        ),
        (
            json!({"name": "p", "kind": "openai", "base_url": "not a url"}),
            "base_url",
        ),
        (
            json!({"name": "p", "kind": "openai", "base_url": "http://u:pw@host/v1"}),
            "base_url",
        ),
        (
            json!({"name": "p", "kind": "openai", "base_url": "http://host/v1?key=1"}),
            "base_url",
        ),
        (
            json!({"name": "p", "kind": "openai_compatible", "default_model": "m"}),
            "base_url",
        ),
        (
            json!({"name": "p", "kind": "openai_compatible", "base_url": "http://127.0.0.1:9/v1"}),
            "default_model",
        ),
        (
            json!({"name": "p", "kind": "openai", "api_key": "has space"}),
            "api_key",
        ),
        (
            json!({"name": "p", "kind": "openai", "api_key": ""}),
            "api_key",
        ),
        (
            json!({"name": "p", "kind": "openai", "api_key": "k".repeat(513)}),
            "api_key",
        ),
        (
            json!({"name": "p", "kind": "openai", "default_model": "gpt 4"}),
            "default_model",
        ),
        (
            json!({"name": "p", "kind": "gemini", "default_model": "a/b"}),
            "default_model",
        ),
        (
            json!({"name": "p", "kind": "openai", "max_tokens": 0}),
            "max_tokens",
        ),
        (
            json!({"name": "p", "kind": "openai", "temperature": 2.5}),
            "temperature",
        ),
        (
            json!({"name": "p", "kind": "openai", "temperature": "hot"}),
            "temperature",
        ),
        (
            json!({"name": "p", "kind": "openai", "timeout_ms": 10}),
            "timeout_ms",
        ),
    ];
    for (body, field) in cases {
        let r = app
            .admin(Method::POST, "/api/v1/ai/providers")
            .json(&body)
            .send()
            .await
            .expect("post");
        let e = expect_error(r, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await;
        assert_eq!(e["details"]["field"], field, "{body} -> {e}");
    }
    let r = app
        .admin(Method::POST, "/api/v1/ai/providers")
        .json(&json!({"name": "p", "kind": "openai", "apikey": "x"}))
        .send()
        .await
        .expect("post");
    let e = expect_error(r, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await;
    assert!(
        e["error"].as_str().is_some_and(|m| m.contains("apikey")),
        "{e}"
    );
    // Nothing was created by any of them.
    assert_eq!(app.get_json("/api/v1/ai/providers").await["total"], 0);
    let r = app
        .admin(Method::GET, "/api/v1/ai/health?timeout_ms=5")
        .send()
        .await
        .expect("health");
    let e = expect_error(r, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await;
    assert_eq!(e["details"]["field"], "timeout_ms");
    app.stop().await;
}

#[tokio::test]
async fn only_admins_change_providers_and_keys() {
    let app = spawn_app().await;
    let p = create(
        &app,
        json!({"name": "openai", "kind": "openai", "api_key": KEY}),
    )
    .await;
    let id = p["id"].as_str().expect("id");
    for role in ["viewer", "operator"] {
        let key = app.key_for_role(&format!("ai-{role}"), role).await;
        let as_role =
            |m: Method, path: &str| app.client.request(m, app.url(path)).bearer_auth(&key);
        // Reading is allowed, and masked.
        let r = as_role(Method::GET, "/api/v1/ai/providers")
            .send()
            .await
            .expect("list");
        assert_eq!(r.status(), StatusCode::OK);
        assert!(!r.text().await.expect("body").contains(KEY));
        let r = as_role(Method::GET, "/api/v1/ai/keys")
            .send()
            .await
            .expect("keys");
        assert_eq!(r.status(), StatusCode::OK);
        let r = as_role(Method::GET, "/api/v1/settings/ai")
            .send()
            .await
            .expect("settings");
        assert_eq!(r.status(), StatusCode::OK);
        for (m, path, body) in [
            (
                Method::POST,
                "/api/v1/ai/providers".to_string(),
                json!({"name": "x", "kind": "openai"}),
            ),
            (
                Method::PUT,
                format!("/api/v1/ai/providers/{id}"),
                json!({"name": "x", "kind": "openai"}),
            ),
            (
                Method::DELETE,
                format!("/api/v1/ai/providers/{id}"),
                Value::Null,
            ),
            (
                Method::POST,
                "/api/v1/ai/keys".to_string(),
                json!({"provider": "openai", "api_key": OTHER_KEY}),
            ),
            (
                Method::DELETE,
                "/api/v1/ai/keys".to_string(),
                json!({"provider": "openai"}),
            ),
            (
                Method::PUT,
                "/api/v1/settings/ai".to_string(),
                json!({"apiKey": OTHER_KEY}),
            ),
        ] {
            let mut req = as_role(m.clone(), &path);
            if !body.is_null() {
                req = req.json(&body);
            }
            let r = req.send().await.expect("send");
            expect_error(r, StatusCode::FORBIDDEN, "FORBIDDEN").await;
        }
        // An operator's model preference is theirs to set; viewers change nothing.
        let r = as_role(Method::PUT, "/api/v1/ai/preferences")
            .json(&json!({"provider_id": id, "model": "gpt-4.1-mini"}))
            .send()
            .await
            .expect("prefs");
        let want = if role == "viewer" {
            StatusCode::FORBIDDEN
        } else {
            StatusCode::OK
        };
        assert_eq!(r.status(), want, "{role}");
    }
    // Nothing changed.
    let p2 = app.get_json(&format!("/api/v1/ai/providers/{id}")).await;
    assert_eq!(
        (p2["version"].as_i64(), &p2["api_key_masked"]),
        (Some(1), &p["api_key_masked"])
    );
    app.stop().await;
}

#[tokio::test]
async fn health_checks_each_provider() {
    let app = spawn_app().await;
    let fake = FakeLlm::start(Some(KEY)).await;
    let good = create(
        &app,
        json!({"name": "good", "kind": "openai", "base_url": fake.openai_url(), "api_key": KEY}),
    )
    .await;
    let bad = create(&app, json!({"name": "refused", "kind": "anthropic", "base_url": fake.url(), "api_key": OTHER_KEY})).await;
    create(&app, json!({"name": "off", "kind": "gemini", "base_url": fake.url(), "api_key": KEY, "enabled": false})).await;
    create(
        &app,
        json!({"name": "keyless", "kind": "gemini", "base_url": fake.url()}),
    )
    .await;
    let dead_port = crate::support::unused_port();
    create(&app, json!({"name": "gone", "kind": "openai_compatible",
                        "base_url": format!("http://127.0.0.1:{dead_port}/v1"), "default_model": "m"})).await;

    let r = app
        .admin(Method::GET, "/api/v1/ai/health")
        .send()
        .await
        .expect("health");
    assert_eq!(r.status(), StatusCode::OK);
    let text = r.text().await.expect("body");
    assert!(
        !text.contains(OTHER_KEY),
        "the refused key was echoed: {text}"
    );
    let h: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(h["status"], "degraded");
    let by_name = |n: &str| {
        h["providers"]
            .as_array()
            .expect("providers")
            .iter()
            .find(|p| p["name"] == n)
            .cloned()
            .unwrap_or_else(|| panic!("{n} missing from {h}"))
    };
    let g = by_name("good");
    assert_eq!(
        (g["status"].as_str(), g["models"].as_i64()),
        (Some("ok"), Some(2))
    );
    assert!(g["latency_ms"].as_i64().is_some());
    let b = by_name("refused");
    assert_eq!(
        (b["status"].as_str(), b["code"].as_str()),
        (Some("error"), Some("AUTH"))
    );
    assert!(
        b["error"].as_str().is_some_and(|e| e.contains("401")),
        "{b}"
    );
    assert_eq!(by_name("off")["status"], "disabled");
    let k = by_name("keyless");
    assert_eq!(
        (k["status"].as_str(), k["code"].as_str()),
        (Some("unconfigured"), Some("CONFIG"))
    );
    let d = by_name("gone");
    assert_eq!(
        (d["status"].as_str(), d["code"].as_str()),
        (Some("error"), Some("UNREACHABLE"))
    );
    // The disabled and keyless ones were never called; the fake saw the
    // refused key in Anthropic's header, and the good one's in OpenAI's.
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    assert!(reqs
        .iter()
        .any(|r| r.headers.get("x-api-key").map(String::as_str) == Some(OTHER_KEY)));
    assert!(reqs
        .iter()
        .any(|r| r.headers.get("authorization") == Some(&format!("Bearer {KEY}"))));

    // A provider's models, live; a refusal is a 502 naming why.
    let good_id = good["id"].as_str().expect("id");
    let m = app
        .get_json(&format!("/api/v1/ai/providers/{good_id}/models"))
        .await;
    assert_eq!(m["models"], json!(["fake-model-1", "fake-model-2"]));
    let r = app
        .admin(
            Method::GET,
            &format!(
                "/api/v1/ai/providers/{}/models",
                bad["id"].as_str().expect("id")
            ),
        )
        .send()
        .await
        .expect("models");
    let e = expect_error(r, StatusCode::BAD_GATEWAY, "AI_PROVIDER_ERROR").await;
    assert_eq!(e["details"]["reason"], "AUTH");
    assert!(!e.to_string().contains(OTHER_KEY));

    // Nothing enabled: unconfigured; only failing ones: down.
    let fresh = spawn_app().await;
    assert_eq!(
        fresh.get_json("/api/v1/ai/health").await["status"],
        "unconfigured"
    );
    create(&fresh, json!({"name": "gone", "kind": "openai_compatible",
                          "base_url": format!("http://127.0.0.1:{dead_port}/v1"), "default_model": "m"})).await;
    assert_eq!(fresh.get_json("/api/v1/ai/health").await["status"], "down");
    fresh.stop().await;
    app.stop().await;
}

#[tokio::test]
async fn model_preferences_are_per_user() {
    let app = spawn_app().await;
    let a = create(
        &app,
        json!({"name": "a", "kind": "openai", "api_key": KEY, "is_default": true}),
    )
    .await;
    let b = create(
        &app,
        json!({"name": "b", "kind": "anthropic", "api_key": KEY}),
    )
    .await;
    let (a_id, b_id) = (a["id"].as_str().expect("id"), b["id"].as_str().expect("id"));
    let op = app.key_for_role("ai-op", "operator").await;
    let as_op = |m: Method| {
        app.client
            .request(m, app.url("/api/v1/ai/preferences"))
            .bearer_auth(&op)
    };
    let r = as_op(Method::GET).send().await.expect("get");
    assert_eq!(r.headers()["etag"], "\"0\"");
    let p: Value = r.json().await.expect("json");
    assert_eq!(p["effective"]["provider_id"], a_id);
    assert_eq!(p["effective"]["model"], "gpt-4o-mini");

    let r = as_op(Method::PUT)
        .header("if-match", "\"0\"")
        .json(&json!({"provider_id": b_id, "model": "claude-sonnet-4-5", "models": {a_id: "gpt-4.1"}}))
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), StatusCode::OK);
    let p: Value = r.json().await.expect("json");
    assert_eq!(p["version"], 1);
    assert_eq!(p["model"], "claude-sonnet-4-5");
    assert_eq!(p["models"][a_id], "gpt-4.1");
    assert_eq!(
        (
            p["effective"]["provider_name"].as_str(),
            p["effective"]["model"].as_str()
        ),
        (Some("b"), Some("claude-sonnet-4-5"))
    );
    let r = as_op(Method::PUT)
        .header("if-match", "\"0\"")
        .json(&json!({}))
        .send()
        .await
        .expect("put");
    expect_error(r, StatusCode::PRECONDITION_FAILED, "PRECONDITION_FAILED").await;
    for (body, field) in [
        (json!({"provider_id": "nope"}), "provider_id".to_string()),
        (json!({"model": "x"}), "model".to_string()),
        (json!({"models": {"nope": "x"}}), "models.nope".to_string()),
        (
            json!({"provider_id": b_id, "model": "bad model"}),
            "model".to_string(),
        ),
    ] {
        let r = as_op(Method::PUT).json(&body).send().await.expect("put");
        let e = expect_error(r, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await;
        assert_eq!(e["details"]["field"], field, "{body}");
    }
    // The admin's preferences are their own.
    let mine = app.get_json("/api/v1/ai/preferences").await;
    assert_eq!(
        (mine["version"].as_i64(), &mine["effective"]["provider_id"]),
        (Some(0), &json!(a_id))
    );
    // The seed's key listing shows the caller's model preference.
    let r = app
        .client
        .get(app.url("/api/v1/ai/keys"))
        .bearer_auth(&op)
        .send()
        .await
        .expect("keys");
    let keys: Value = r.json().await.expect("json");
    let of_a = keys
        .as_array()
        .expect("array")
        .iter()
        .find(|k| k["id"] == a_id)
        .expect("a");
    assert_eq!(of_a["model_preference"], "gpt-4.1");
    // A deleted provider leaves the preferences that named it.
    send(
        &app,
        Method::DELETE,
        &format!("/api/v1/ai/providers/{b_id}"),
        None,
    )
    .await;
    let p: Value = as_op(Method::GET)
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(p["provider_id"], Value::Null);
    assert_eq!(p["effective"]["provider_id"], a_id);
    assert_eq!(p["effective"]["model"], "gpt-4.1");
    let audit = app
        .get_json("/api/v1/audit?target_type=ai_preferences")
        .await;
    assert_eq!(audit["total"], 1);
    app.stop().await;
}

#[tokio::test]
async fn seed_ai_keys_map_onto_providers() {
    let app = spawn_app().await;
    // Store: the vendor's provider is created, the key sealed, the model
    // preference saved as the caller's.
    let r = app
        .admin(Method::POST, "/api/v1/ai/keys")
        .json(&json!({"provider": "openai", "api_key": KEY, "model_preference": "gpt-4.1"}))
        .send()
        .await
        .expect("store");
    assert_eq!(r.status(), StatusCode::OK);
    let text = r.text().await.expect("body");
    assert!(!text.contains(KEY));
    let stored: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(
        (stored["success"].as_bool(), stored["created"].as_bool()),
        (Some(true), Some(true))
    );
    let id = stored["id"].as_str().expect("id").to_string();
    let r = app
        .admin(Method::GET, "/api/v1/ai/keys")
        .send()
        .await
        .expect("list");
    let text = r.text().await.expect("body");
    assert!(!text.contains(KEY));
    let keys: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(keys.as_array().map(Vec::len), Some(1));
    let k = &keys[0];
    assert_eq!(
        (
            k["id"].as_str(),
            k["provider"].as_str(),
            k["configured"].as_bool()
        ),
        (Some(id.as_str()), Some("openai"), Some(true))
    );
    assert_eq!(k["model_preference"], "gpt-4.1");
    assert_eq!(k["api_key_masked"], "sk-…WXYZ");
    assert!(k["updated_at"].is_string());
    // The same provider, seen through /api/v1/ai/providers.
    let p = app.get_json(&format!("/api/v1/ai/providers/{id}")).await;
    assert_eq!(
        (p["name"].as_str(), p["kind"].as_str()),
        (Some("openai"), Some("openai"))
    );

    // Storing again replaces the key on the same provider.
    let (_, again) = send(
        &app,
        Method::POST,
        "/api/v1/ai/keys",
        Some(json!({"provider": "openai", "api_key": OTHER_KEY})),
    )
    .await;
    assert_eq!(
        (again["id"].as_str(), again["created"].as_bool()),
        (Some(id.as_str()), Some(false))
    );
    assert_eq!(again["api_key_masked"], "sk-…QRST");
    // Another vendor's spelling.
    let (_, claude) = send(
        &app,
        Method::POST,
        "/api/v1/ai/keys",
        Some(json!({"provider": "claude", "api_key": KEY})),
    )
    .await;
    assert_eq!(claude["provider"], "anthropic");
    for (body, field) in [
        (json!({"provider": "azure", "api_key": KEY}), "provider"),
        (
            json!({"provider": "openai_compatible", "api_key": KEY}),
            "provider",
        ),
        (
            json!({"provider": "openai", "api_key": "two words"}),
            "api_key",
        ),
        (
            json!({"provider": "gemini", "api_key": KEY, "model_preference": "a/b"}),
            "model_preference",
        ),
    ] {
        let r = app
            .admin(Method::POST, "/api/v1/ai/keys")
            .json(&body)
            .send()
            .await
            .expect("store");
        let e = expect_error(r, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await;
        assert_eq!(e["details"]["field"], field, "{body}");
    }
    // Two Gemini providers, none named gemini: which key is meant is unclear.
    create(&app, json!({"name": "g1", "kind": "gemini"})).await;
    create(&app, json!({"name": "g2", "kind": "gemini"})).await;
    let r = app
        .admin(Method::POST, "/api/v1/ai/keys")
        .json(&json!({"provider": "gemini", "api_key": KEY}))
        .send()
        .await
        .expect("store");
    let e = expect_error(r, StatusCode::CONFLICT, "CONFLICT").await;
    assert!(
        e["error"]
            .as_str()
            .is_some_and(|m| m.contains("g1") && m.contains("g2")),
        "{e}"
    );

    // Delete removes the vendor's provider with its key.
    let r = app
        .admin(Method::DELETE, "/api/v1/ai/keys")
        .json(&json!({"provider": "openai"}))
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.expect("json");
    assert_eq!(
        (v["success"].as_bool(), v["id"].as_str()),
        (Some(true), Some(id.as_str()))
    );
    let r = app
        .admin(Method::GET, &format!("/api/v1/ai/providers/{id}"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = app
        .admin(Method::DELETE, "/api/v1/ai/keys")
        .json(&json!({"provider": "openai"}))
        .send()
        .await
        .expect("delete");
    expect_error(r, StatusCode::NOT_FOUND, "NOT_FOUND").await;
    let audit = app
        .get_json("/api/v1/audit?target_type=ai_provider&limit=100")
        .await;
    assert!(!audit.to_string().contains(KEY) && !audit.to_string().contains(OTHER_KEY));
    assert!(!contains(&db_bytes(&app), KEY) && !contains(&db_bytes(&app), OTHER_KEY));
    app.stop().await;
}

#[tokio::test]
async fn seed_settings_ai_is_the_default_provider() {
    let app = spawn_app().await;
    let s = app.get_json("/api/v1/settings/ai").await;
    assert_eq!(
        (s["success"].as_bool(), &s["provider"]),
        (Some(true), &Value::Null)
    );
    assert_eq!(
        (s["hasApiKey"].as_bool(), s["demoMode"].as_bool()),
        (Some(false), Some(true))
    );
    assert_eq!(s["apiKey"], "");
    assert_eq!(s["availableProviders"].as_array().map(Vec::len), Some(3));
    // Without a default provider the vendor must be named.
    let r = app
        .admin(Method::PUT, "/api/v1/settings/ai")
        .json(&json!({"apiKey": KEY}))
        .send()
        .await
        .expect("put");
    let e = expect_error(r, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await;
    assert_eq!(e["details"]["field"], "provider");

    let r = app
        .admin(Method::PUT, "/api/v1/settings/ai")
        .json(
            &json!({"provider": "gemini", "apiKey": KEY, "model": "gemini-2.5-flash",
                      "maxTokens": 2000, "temperature": 0.3, "demoMode": false}),
        )
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), StatusCode::OK);
    let text = r.text().await.expect("body");
    assert!(!text.contains(KEY));
    let saved: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(saved["success"], true);
    assert_eq!(
        saved["config"],
        json!({"provider": "gemini", "hasApiKey": true, "model": "gemini-2.5-flash",
               "maxTokens": 2000, "temperature": 0.3, "demoMode": false})
    );
    let s = app.get_json("/api/v1/settings/ai").await;
    assert_eq!(
        (s["provider"].as_str(), s["apiKey"].as_str()),
        (Some("gemini"), Some(""))
    );
    assert_eq!(s["apiKeyMasked"], "sk-…WXYZ");
    let list = app.get_json("/api/v1/ai/providers").await;
    assert_eq!(list["total"], 1);
    assert_eq!(
        (
            list["items"][0]["name"].as_str(),
            list["items"][0]["is_default"].as_bool()
        ),
        (Some("gemini"), Some(true))
    );

    // An empty apiKey keeps the key (clients send back what GET gave them);
    // POST does what PUT does.
    let r = app
        .admin(Method::POST, "/api/v1/settings/ai")
        .json(&json!({"apiKey": "", "model": "gemini-2.0-flash"}))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), StatusCode::OK);
    let s = app.get_json("/api/v1/settings/ai").await;
    assert_eq!(
        (s["hasApiKey"].as_bool(), s["model"].as_str()),
        (Some(true), Some("gemini-2.0-flash"))
    );

    // Naming another vendor makes its provider the default.
    let (_, saved) = send(
        &app,
        Method::PUT,
        "/api/v1/settings/ai",
        Some(json!({"provider": "claude"})),
    )
    .await;
    assert_eq!(saved["config"]["provider"], "anthropic");
    assert_eq!(saved["config"]["hasApiKey"], false);
    assert_eq!(saved["config"]["model"], "claude-3-5-haiku-latest");
    let list = app.get_json("/api/v1/ai/providers").await;
    let defaults: Vec<&str> = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|p| p["is_default"] == true)
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(defaults, ["anthropic"]);
    for (body, field) in [
        (json!({"provider": "groq"}), "provider"),
        (json!({"maxTokens": 0}), "maxTokens"),
        (json!({"temperature": 9}), "temperature"),
        (json!({"apiKey": "a b"}), "apiKey"),
    ] {
        let r = app
            .admin(Method::PUT, "/api/v1/settings/ai")
            .json(&body)
            .send()
            .await
            .expect("put");
        let e = expect_error(r, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await;
        assert_eq!(e["details"]["field"], field, "{body}");
    }
    app.stop().await;
}

#[tokio::test]
async fn every_ai_endpoint_is_documented() {
    let app = spawn_app().await;
    let spec = app.get_json("/api/v1/openapi.json").await;
    for (path, methods) in [
        ("/api/v1/ai/providers", &["get", "post"][..]),
        ("/api/v1/ai/providers/{id}", &["get", "put", "delete"][..]),
        ("/api/v1/ai/providers/{id}/models", &["get"][..]),
        ("/api/v1/ai/health", &["get"][..]),
        ("/api/v1/ai/preferences", &["get", "put"][..]),
        ("/api/v1/ai/keys", &["get", "post", "delete"][..]),
        ("/api/v1/settings/ai", &["get", "put", "post"][..]),
    ] {
        for m in methods {
            let op = &spec["paths"][path][m];
            assert!(op.is_object(), "{m} {path} is not documented");
            assert_eq!(op["tags"][0], "ai", "{m} {path}");
            for code in ["400", "401", "403"] {
                assert!(op["responses"][code].is_object(), "{m} {path} lacks {code}");
            }
        }
    }
    assert!(
        spec["paths"]["/api/v1/ai/providers/{id}/models"]["get"]["responses"]["502"].is_object()
    );
    app.stop().await;
}
