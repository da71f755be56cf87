//! API conventions: error envelope, 404/405/413/415, bad bodies and queries,
//! request ids, pagination limits, the admin rate limit, OpenAPI and docs.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::support::{config_in, expect_error, login_cookies, spawn_app, spawn_with};

#[tokio::test]
async fn unknown_paths_and_methods_get_json_errors() {
    let app = spawn_app().await;
    let r = app
        .admin(Method::GET, "/api/v1/nope")
        .send()
        .await
        .expect("req");
    expect_error(r, StatusCode::NOT_FOUND, "NOT_FOUND").await;
    let r = app
        .anon(Method::GET, "/api/v2/anything/../x")
        .send()
        .await
        .expect("req");
    expect_error(r, StatusCode::NOT_FOUND, "NOT_FOUND").await;
    let r = app
        .admin(Method::PATCH, "/api/v1/settings")
        .send()
        .await
        .expect("req");
    expect_error(r, StatusCode::METHOD_NOT_ALLOWED, "METHOD_NOT_ALLOWED").await;
    app.stop().await;
}

#[tokio::test]
async fn bad_bodies_get_4xx_naming_the_problem() {
    let app = spawn_app().await;
    let put = |body: reqwest::Body, ct: Option<&str>| {
        let mut r = app.admin(Method::PUT, "/api/v1/settings").body(body);
        if let Some(ct) = ct {
            r = r.header("content-type", ct);
        }
        r.send()
    };
    let r = put("{\"api\": ".into(), Some("application/json"))
        .await
        .expect("req");
    let e = expect_error(r, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await;
    assert!(
        e["error"].as_str().expect("msg").contains("malformed JSON"),
        "{e}"
    );
    let r = put("{}".into(), Some("text/plain")).await.expect("req");
    expect_error(
        r,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "UNSUPPORTED_MEDIA_TYPE",
    )
    .await;
    let r = put("{}".into(), None).await.expect("req");
    expect_error(
        r,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "UNSUPPORTED_MEDIA_TYPE",
    )
    .await;
    let r = put(
        vec![b'{', b'"', 0xff, 0xfe, b'"', b':', b'1', b'}'].into(),
        Some("application/json"),
    )
    .await
    .expect("req");
    expect_error(r, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await;
    let r = put(
        r#"{"api": {"rate_limit_per_minute": -1}}"#.into(),
        Some("application/json"),
    )
    .await
    .expect("req");
    let e = expect_error(r, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await;
    assert_eq!(e["details"]["field"], "api.rate_limit_per_minute");
    let r = put(
        r#"{"security": {"login_window_secs": 1}}"#.into(),
        Some("application/json"),
    )
    .await
    .expect("req");
    let e = expect_error(r, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await;
    assert_eq!(e["details"]["field"], "security.login_window_secs");
    let r = put(r#"{"secrity": {}}"#.into(), Some("application/json"))
        .await
        .expect("req");
    expect_error(r, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await;
    let r = put(r#"[1, 2, 3]"#.into(), Some("application/json"))
        .await
        .expect("req");
    expect_error(r, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await;
    // Oversize bodies: 413 before anything is parsed.
    let huge = format!(
        "{{\"general\":{{\"instance_name\":\"{}\"}}}}",
        "x".repeat(2 * 1024 * 1024)
    );
    let r = put(huge.into(), Some("application/json"))
        .await
        .expect("req");
    expect_error(r, StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE").await;
    // None of that changed anything.
    assert_eq!(app.get_json("/api/v1/revisions").await["total"], 0);
    app.stop().await;
}

#[tokio::test]
async fn pagination_is_validated_and_clamped() {
    let app = spawn_app().await;
    let list = app.get_json("/api/v1/audit?limit=999999999&offset=0").await;
    assert_eq!(list["limit"], 1000);
    let list = app.get_json("/api/v1/audit?offset=99999999999").await;
    assert_eq!(list["items"], json!([]));
    assert!(list["total"].as_i64().expect("total") >= 1);
    for (q, field) in [
        ("limit=-1", "limit"),
        ("offset=-5", "offset"),
        ("limit=ten", "limit"),
        ("offset=99999999999999999999999", "offset"),
        ("since=yesterday", "since"),
    ] {
        let r = app
            .admin(Method::GET, &format!("/api/v1/audit?{q}"))
            .send()
            .await
            .expect("req");
        let e = expect_error(r, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await;
        assert_eq!(e["details"]["field"], field, "{q}");
    }
    // SQL metacharacters are just text.
    let list = app
        .get_json("/api/v1/audit?actor=%27%20OR%201%3D1%20--")
        .await;
    assert_eq!(list["total"], 0);
    app.stop().await;
}

#[tokio::test]
async fn request_ids_are_echoed_or_generated() {
    let app = spawn_app().await;
    let r = app
        .anon(Method::GET, "/health")
        .header("x-request-id", "abc-123")
        .send()
        .await
        .expect("req");
    assert_eq!(r.headers()["x-request-id"], "abc-123");
    let r = app.anon(Method::GET, "/health").send().await.expect("req");
    let generated = r.headers()["x-request-id"]
        .to_str()
        .expect("ascii")
        .to_string();
    assert_eq!(generated.len(), 36, "{generated}");
    let r = app
        .anon(Method::GET, "/health")
        .header("x-request-id", "bad id with spaces")
        .send()
        .await
        .expect("req");
    assert_ne!(r.headers()["x-request-id"], "bad id with spaces");
    // Audit entries carry the id of the request that made them.
    app.admin(Method::PUT, "/api/v1/settings")
        .header("x-request-id", "change-42")
        .json(&json!({}))
        .send()
        .await
        .expect("put");
    let audit = app.get_json("/api/v1/audit?target_type=settings").await;
    assert_eq!(audit["items"][0]["request_id"], "change-42");
    app.stop().await;
}

#[tokio::test]
async fn admin_api_is_rate_limited_per_key() {
    let app = spawn_app().await;
    let r = app
        .admin(Method::PUT, "/api/v1/settings")
        .json(&json!({"api": {"rate_limit_per_minute": 5}}))
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), StatusCode::OK);
    let mut statuses = Vec::new();
    let mut last_remaining = None;
    for _ in 0..8 {
        let r = app
            .admin(Method::GET, "/api/v1/auth/me")
            .send()
            .await
            .expect("req");
        assert_eq!(r.headers()["x-ratelimit-limit"], "5");
        assert!(r.headers().contains_key("x-ratelimit-reset"));
        last_remaining = Some(
            r.headers()["x-ratelimit-remaining"]
                .to_str()
                .expect("ascii")
                .to_string(),
        );
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            assert!(r.headers().contains_key("retry-after"));
        }
        statuses.push(r.status().as_u16());
    }
    // The PUT above counted once in this minute's window (or the window rolled over).
    let allowed = statuses.iter().filter(|s| **s == 200).count();
    assert!((4..=5).contains(&allowed), "{statuses:?}");
    assert!(statuses.ends_with(&[429, 429]), "{statuses:?}");
    assert_eq!(last_remaining.as_deref(), Some("0"));
    // Another caller has its own budget; health is not limited.
    let r = app
        .anon(Method::GET, "/api/v1/auth/status")
        .send()
        .await
        .expect("req");
    assert_eq!(r.status(), StatusCode::OK);
    let r = app.anon(Method::GET, "/health").send().await.expect("req");
    assert!(!r.headers().contains_key("x-ratelimit-limit"));
    app.stop().await;
}

#[tokio::test]
async fn dashboard_sessions_count_under_their_own_allowance() {
    let app = spawn_app().await;
    let r = app
        .admin(Method::PUT, "/api/v1/settings")
        .json(&json!({"api": {"rate_limit_per_minute": 3, "session_rate_limit_per_minute": 40}}))
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), StatusCode::OK);
    let (cookie, _) = login_cookies(&app.url("/api/v1/auth/login")).await;
    let client = reqwest::Client::new();
    let mut statuses = Vec::new();
    for _ in 0..45 {
        let r = client
            .get(app.url("/api/v1/auth/me"))
            .header("cookie", &cookie)
            .send()
            .await
            .expect("req");
        assert_eq!(r.headers()["x-ratelimit-limit"], "40");
        statuses.push(r.status().as_u16());
    }
    // Far more than an API key's 3, up to the session's 40 (the window may
    // roll over once during the loop).
    let allowed = statuses.iter().filter(|s| **s == 200).count();
    assert!((40..=45).contains(&allowed), "{statuses:?}");
    if allowed < 45 {
        assert_eq!(statuses[40], 429, "{statuses:?}");
    }
    // 0 lifts the limit for sessions only.
    let r = app
        .admin(Method::PUT, "/api/v1/settings")
        .json(&json!({"api": {"rate_limit_per_minute": 3, "session_rate_limit_per_minute": 0}}))
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), StatusCode::OK);
    for _ in 0..50 {
        let r = client
            .get(app.url("/api/v1/auth/me"))
            .header("cookie", &cookie)
            .send()
            .await
            .expect("req");
        assert_eq!(r.status(), StatusCode::OK);
        assert!(!r.headers().contains_key("x-ratelimit-limit"));
    }
    let r = app
        .admin(Method::PUT, "/api/v1/settings")
        .json(&json!({"api": {"session_rate_limit_per_minute": 1000001}}))
        .send()
        .await
        .expect("put");
    let e = expect_error(r, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await;
    assert_eq!(e["details"]["field"], "api.session_rate_limit_per_minute");
    // An API key still has the smaller limit (it made three calls above).
    let mut key_statuses = Vec::new();
    for _ in 0..5 {
        let r = app
            .admin(Method::GET, "/api/v1/auth/me")
            .send()
            .await
            .expect("req");
        assert_eq!(r.headers()["x-ratelimit-limit"], "3");
        key_statuses.push(r.status().as_u16());
    }
    assert!(key_statuses.contains(&429), "{key_statuses:?}");
    app.stop().await;
}

#[tokio::test]
async fn openapi_document_and_offline_docs() {
    let app = spawn_app().await;
    let spec: Value = app
        .anon(Method::GET, "/api/v1/openapi.json")
        .send()
        .await
        .expect("req")
        .json()
        .await
        .expect("json");
    assert!(spec["openapi"]
        .as_str()
        .expect("version")
        .starts_with("3.1"));
    for path in [
        "/api/v1/users",
        "/api/v1/users/{id}",
        "/api/v1/revisions/{n}/diff",
        "/api/v1/import",
        "/api/v1/config/apply",
        "/api/v1/config/declared",
        "/health/deep",
        "/api/v1/auth/login",
    ] {
        assert!(spec["paths"][path].is_object(), "{path} missing");
    }
    assert!(spec["paths"]["/api/v1/users"]["post"]["responses"]["400"].is_object());
    assert!(spec["components"]["schemas"]["UserView"].is_object());
    let r = app
        .anon(Method::GET, "/api/v1/docs")
        .send()
        .await
        .expect("req");
    assert_eq!(r.status(), StatusCode::OK);
    let html = r.text().await.expect("html");
    assert!(html.contains("/api/v1/openapi.json"));
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "the docs page must not load anything from elsewhere"
    );
    app.stop().await;
}

#[tokio::test]
async fn small_body_limit_from_configuration() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = config_in(dir.path());
    config.manager.max_body_bytes = 2048;
    let app = spawn_with(config, dir).await;
    let body = json!({"general": {"instance_name": "x".repeat(3000)}});
    let r = app
        .admin(Method::PUT, "/api/v1/settings")
        .json(&body)
        .send()
        .await
        .expect("req");
    expect_error(r, StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE").await;
    app.stop().await;
}

#[tokio::test]
async fn nul_characters_are_refused_with_a_400() {
    let app = spawn_app().await;
    // In a JSON string (no store keeps NUL in text; PostgreSQL refuses it).
    let r = app
        .admin(Method::POST, "/api/v1/webhooks")
        .header("content-type", "application/json")
        .body(r#"{"url":"https://hooks.example.com/x","events":["*"],"secret":"a\u0000b"}"#)
        .send()
        .await
        .expect("post");
    let body = expect_error(r, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await;
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("body:")),
        "{body}"
    );
    // In a path or a query.
    for path in ["/api/v1/alert-rules/x%00y", "/api/v1/events?type=a%00"] {
        let r = app.admin(Method::GET, path).send().await.expect("get");
        let body = expect_error(r, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await;
        assert!(
            body["error"].as_str().is_some_and(|e| e.contains("NUL")),
            "{path}: {body}"
        );
    }
    app.stop().await;
}
