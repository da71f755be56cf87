//! Sessions with CSRF, API keys, roles and the login limit.

use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};

use crate::support::{expect_error, spawn_app, TestApp, ADMIN_PASSWORD};

async fn login(app: &TestApp, client: &Client, user: &str, password: &str) -> reqwest::Response {
    client
        .post(app.url("/api/v1/auth/login"))
        .json(&json!({"username": user, "password": password}))
        .send()
        .await
        .expect("login request")
}

fn session_client() -> Client {
    Client::builder()
        .cookie_store(true)
        .build()
        .expect("client")
}

#[tokio::test]
async fn session_login_sets_cookies_and_csrf_guards_mutations() {
    let app = spawn_app().await;
    let c = session_client();
    let r = login(&app, &c, "admin", ADMIN_PASSWORD).await;
    assert_eq!(r.status(), StatusCode::OK);
    let cookies: Vec<String> = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().expect("ascii").to_string())
        .collect();
    let session = cookies
        .iter()
        .find(|c| c.starts_with("session="))
        .expect("session cookie");
    assert!(session.contains("HttpOnly"), "{session}");
    assert!(session.contains("SameSite=Lax"));
    let csrf_cookie = cookies
        .iter()
        .find(|c| c.starts_with("csrf_token="))
        .expect("csrf cookie");
    assert!(
        !csrf_cookie.contains("HttpOnly"),
        "the dashboard must read it: {csrf_cookie}"
    );
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["user"]["username"], "admin");
    assert_eq!(body["user"]["role"], "super_admin");
    assert!(body["user"].get("password_hash").is_none());
    let csrf = body["csrf_token"].as_str().expect("csrf").to_string();

    let me: Value = c
        .get(app.url("/api/v1/auth/me"))
        .send()
        .await
        .expect("me")
        .json()
        .await
        .expect("json");
    assert_eq!(me["auth_method"], "session");
    assert_eq!(me["user"]["username"], "admin");

    let settings = json!({"general": {"instance_name": "edge-eu"}});
    let r = c
        .put(app.url("/api/v1/settings"))
        .json(&settings)
        .send()
        .await
        .expect("put");
    expect_error(r, StatusCode::FORBIDDEN, "CSRF_FAILED").await;
    let r = c
        .put(app.url("/api/v1/settings"))
        .header("x-csrf-token", "wrong")
        .json(&settings)
        .send()
        .await
        .expect("put");
    expect_error(r, StatusCode::FORBIDDEN, "CSRF_FAILED").await;
    let r = c
        .put(app.url("/api/v1/settings"))
        .header("x-csrf-token", &csrf)
        .json(&settings)
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), StatusCode::OK);

    // The audit entry names the user and the client address.
    let audit = app.get_json("/api/v1/audit?action=settings.create").await;
    assert_eq!(audit["total"], 1);
    assert_eq!(audit["items"][0]["actor"], "admin");
    assert_eq!(audit["items"][0]["client_ip"], "127.0.0.1");

    let r = c
        .post(app.url("/api/v1/auth/logout"))
        .header("x-csrf-token", &csrf)
        .send()
        .await
        .expect("logout");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = c.get(app.url("/api/v1/auth/me")).send().await.expect("me");
    expect_error(r, StatusCode::UNAUTHORIZED, "UNAUTHORIZED").await;
    app.stop().await;
}

#[tokio::test]
async fn revoked_session_cookie_is_refused_even_when_replayed() {
    let app = spawn_app().await;
    let r = login(&app, &Client::new(), "admin", ADMIN_PASSWORD).await;
    let cookie = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with("session="))
        .and_then(|c| c.split(';').next())
        .expect("cookie")
        .to_string();
    let csrf = r.json::<Value>().await.expect("json")["csrf_token"]
        .as_str()
        .expect("csrf")
        .to_string();
    let plain = Client::new();
    let me = plain
        .get(app.url("/api/v1/auth/me"))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("me");
    assert_eq!(me.status(), StatusCode::OK);
    let out = plain
        .post(app.url("/api/v1/auth/logout"))
        .header("cookie", format!("{cookie}; csrf_token={csrf}"))
        .header("x-csrf-token", &csrf)
        .send()
        .await
        .expect("logout");
    assert_eq!(out.status(), StatusCode::NO_CONTENT);
    let me = plain
        .get(app.url("/api/v1/auth/me"))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("me");
    expect_error(me, StatusCode::UNAUTHORIZED, "UNAUTHORIZED").await;
    app.stop().await;
}

#[tokio::test]
async fn wrong_passwords_are_limited_per_ip() {
    let app = spawn_app().await;
    let c = Client::new();
    for _ in 0..5 {
        let r = login(&app, &c, "admin", "wrong-password").await;
        expect_error(r, StatusCode::UNAUTHORIZED, "UNAUTHORIZED").await;
    }
    // The sixth attempt is refused before the password is checked, even a right one.
    let r = login(&app, &c, "admin", ADMIN_PASSWORD).await;
    let retry: u64 = r
        .headers()
        .get("retry-after")
        .expect("Retry-After")
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((1..=60).contains(&retry), "{retry}");
    expect_error(r, StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED").await;
    // Unknown users count the same and leave an audit trail.
    let audit = app.get_json("/api/v1/audit?action=auth.login_failed").await;
    assert_eq!(audit["total"], 5);
    app.stop().await;
}

#[tokio::test]
async fn unknown_user_and_bad_credentials_get_401() {
    let app = spawn_app().await;
    let r = login(&app, &Client::new(), "nobody", "whatever-123").await;
    expect_error(r, StatusCode::UNAUTHORIZED, "UNAUTHORIZED").await;
    let r = app
        .anon(Method::GET, "/api/v1/users")
        .bearer_auth("fgk_not-a-key")
        .send()
        .await
        .expect("req");
    expect_error(r, StatusCode::UNAUTHORIZED, "UNAUTHORIZED").await;
    let r = app
        .anon(Method::GET, "/api/v1/users")
        .header("cookie", "session=forged")
        .send()
        .await
        .expect("req");
    expect_error(r, StatusCode::UNAUTHORIZED, "UNAUTHORIZED").await;
    let status: Value = app
        .anon(Method::GET, "/api/v1/auth/status")
        .send()
        .await
        .expect("req")
        .json()
        .await
        .expect("json");
    assert_eq!(status["auth_enabled"], true);
    app.stop().await;
}

#[tokio::test]
async fn api_keys_are_shown_once_and_stored_hashed() {
    let app = spawn_app().await;
    let r = app
        .admin(Method::POST, "/api/v1/api-keys")
        .json(&json!({"name": "ci", "role": "operator"}))
        .send()
        .await
        .expect("create");
    assert_eq!(r.status(), StatusCode::CREATED);
    let created: Value = r.json().await.expect("json");
    let key = created["key"].as_str().expect("key").to_string();
    assert!(key.starts_with("fgk_"));
    assert!(key.starts_with(created["prefix"].as_str().expect("prefix")));
    let id = created["id"].as_str().expect("id").to_string();

    let list = app.get_json("/api/v1/api-keys").await;
    let listed = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|k| k["id"] == id.as_str())
        .expect("listed")
        .clone();
    assert!(
        listed.get("key").is_none(),
        "the key is never listed: {listed}"
    );
    assert_eq!(listed["role"], "operator");
    assert!(!list.to_string().contains(&key));

    // The key works without any CSRF header, with its own role.
    let me: Value = app
        .anon(Method::GET, "/api/v1/auth/me")
        .bearer_auth(&key)
        .send()
        .await
        .expect("me")
        .json()
        .await
        .expect("json");
    assert_eq!(me["role"], "operator");
    let listed = app.get_json("/api/v1/api-keys").await;
    let used = listed["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|k| k["id"] == id.as_str())
        .expect("listed")
        .clone();
    assert!(used["last_used_at"].is_string(), "{used}");
    // An operator key cannot mint an admin key.
    let r = app
        .anon(Method::POST, "/api/v1/api-keys")
        .bearer_auth(&key)
        .json(&json!({"name": "escalate", "role": "admin"}))
        .send()
        .await
        .expect("req");
    expect_error(r, StatusCode::FORBIDDEN, "FORBIDDEN").await;

    let r = app
        .admin(Method::DELETE, &format!("/api/v1/api-keys/{id}"))
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = app
        .anon(Method::GET, "/api/v1/auth/me")
        .bearer_auth(&key)
        .send()
        .await
        .expect("me");
    expect_error(r, StatusCode::UNAUTHORIZED, "UNAUTHORIZED").await;
    let r = app
        .admin(Method::DELETE, &format!("/api/v1/api-keys/{id}"))
        .send()
        .await
        .expect("delete");
    expect_error(r, StatusCode::NOT_FOUND, "NOT_FOUND").await;
    let r = app
        .admin(Method::POST, "/api/v1/api-keys")
        .json(&json!({"name": ""}))
        .send()
        .await
        .expect("req");
    let e = expect_error(r, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await;
    assert_eq!(e["details"]["field"], "name");
    app.stop().await;
}

#[tokio::test]
async fn viewers_can_read_everything_and_change_nothing() {
    let app = spawn_app().await;
    let viewer_key = app.key_for_role("vera", "viewer").await;
    let viewer = |m: Method, p: &str| app.anon(m, p).bearer_auth(&viewer_key);
    for path in [
        "/api/v1/settings",
        "/api/v1/revisions",
        "/api/v1/audit",
        "/api/v1/export",
        "/api/v1/auth/me",
    ] {
        let r = viewer(Method::GET, path).send().await.expect("get");
        assert_eq!(r.status(), StatusCode::OK, "{path}");
    }
    let mutations = [
        (Method::PUT, "/api/v1/settings", json!({})),
        (
            Method::POST,
            "/api/v1/users",
            json!({"username": "x", "password": "password-123"}),
        ),
        (Method::POST, "/api/v1/api-keys", json!({"name": "k"})),
        (Method::POST, "/api/v1/import", json!({"format_version": 1})),
        (Method::POST, "/api/v1/config/apply", json!({})),
        (Method::POST, "/api/v1/revisions/1/rollback", json!({})),
        (Method::POST, "/api/v1/settings/backup", json!({})),
        (Method::DELETE, "/api/v1/users/someone", json!({})),
    ];
    for (m, path, body) in mutations {
        let r = viewer(m.clone(), path)
            .json(&body)
            .send()
            .await
            .expect("mutation");
        expect_error(r, StatusCode::FORBIDDEN, "FORBIDDEN").await;
    }
    // Viewers with a session are refused the same way.
    let c = session_client();
    let body: Value = login(&app, &c, "vera", "password-123")
        .await
        .json()
        .await
        .expect("json");
    let csrf = body["csrf_token"].as_str().expect("csrf");
    let r = c
        .put(app.url("/api/v1/settings"))
        .header("x-csrf-token", csrf)
        .json(&json!({}))
        .send()
        .await
        .expect("put");
    expect_error(r, StatusCode::FORBIDDEN, "FORBIDDEN").await;
    let r = c
        .post(app.url("/api/v1/auth/logout"))
        .header("x-csrf-token", csrf)
        .send()
        .await
        .expect("logout");
    assert_eq!(
        r.status(),
        StatusCode::NO_CONTENT,
        "a viewer may still log out"
    );
    app.stop().await;
}

#[tokio::test]
async fn operators_cannot_administer() {
    let app = spawn_app().await;
    let key = app.key_for_role("otto", "operator").await;
    let r = app
        .anon(Method::GET, "/api/v1/users")
        .bearer_auth(&key)
        .send()
        .await
        .expect("req");
    expect_error(r, StatusCode::FORBIDDEN, "FORBIDDEN").await;
    let r = app
        .anon(Method::PUT, "/api/v1/settings")
        .bearer_auth(&key)
        .json(&json!({}))
        .send()
        .await
        .expect("req");
    expect_error(r, StatusCode::FORBIDDEN, "FORBIDDEN").await;
    // An operator sees only its own keys.
    let keys: Value = app
        .anon(Method::GET, "/api/v1/api-keys")
        .bearer_auth(&key)
        .send()
        .await
        .expect("req")
        .json()
        .await
        .expect("json");
    assert_eq!(keys["total"], 1);
    app.stop().await;
}

/// FlatRun clients log in with an API key and get a short-lived token, send it as
/// a bearer credential, and validate it; the token dies with its key.
#[tokio::test]
async fn an_api_key_is_traded_for_a_token_that_dies_with_it() {
    let app = spawn_app().await;
    let key = app.key_for_role("deployer", "operator").await;
    let c = Client::new();
    let r = c
        .post(app.url("/api/v1/auth/login"))
        .json(&json!({ "api_key": key }))
        .send()
        .await
        .expect("login");
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        r.headers().get("set-cookie").is_none(),
        "no session is made"
    );
    let v: Value = r.json().await.expect("json");
    let token = v["token"].as_str().expect("token").to_string();
    assert_eq!(v["token_type"], "Bearer");
    assert_eq!(v["expires_in"], 3600);
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
    assert!(!token.contains(&key), "the key is not in the token");

    // The token acts as the key: reads, and an operator's mutation.
    let r = c
        .get(app.url("/api/v1/auth/validate"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("validate");
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.expect("json");
    assert_eq!(
        (
            v["valid"].as_bool(),
            v["auth_method"].as_str(),
            v["role"].as_str()
        ),
        (Some(true), Some("token"), Some("operator")),
        "{v}"
    );
    assert!(v["expires_at"].is_string(), "{v}");
    let r = c
        .post(app.url("/api/v1/upstreams"))
        .bearer_auth(&token)
        .json(&json!({"name": "via-token", "targets": [{"url": "http://127.0.0.1:9"}]}))
        .send()
        .await
        .expect("create");
    assert_eq!(r.status(), StatusCode::CREATED);

    // Tampered, or not a credential at all: 401.
    let mut forged = token.clone();
    forged.pop();
    forged.push(if token.ends_with('A') { 'B' } else { 'A' });
    for bad in [forged.as_str(), "eyJ.e30.x"] {
        let r = c
            .get(app.url("/api/v1/auth/validate"))
            .bearer_auth(bad)
            .send()
            .await
            .expect("validate");
        expect_error(r, StatusCode::UNAUTHORIZED, "UNAUTHORIZED").await;
    }
    // A wrong key, or both forms at once, is refused.
    let r = c
        .post(app.url("/api/v1/auth/login"))
        .json(&json!({ "api_key": "fg_not_a_key" }))
        .send()
        .await
        .expect("login");
    expect_error(r, StatusCode::UNAUTHORIZED, "UNAUTHORIZED").await;
    let r = c
        .post(app.url("/api/v1/auth/login"))
        .json(&json!({ "api_key": key, "username": "admin" }))
        .send()
        .await
        .expect("login");
    expect_error(r, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await;

    // Deleting the key ends its tokens.
    let keys = app.get_json("/api/v1/api-keys").await;
    let id = keys["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|k| k["name"] == "deployer-key")
        .and_then(|k| k["id"].as_str())
        .expect("the key")
        .to_string();
    let r = app
        .admin(Method::DELETE, &format!("/api/v1/api-keys/{id}"))
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = c
        .get(app.url("/api/v1/auth/validate"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("validate");
    expect_error(r, StatusCode::UNAUTHORIZED, "UNAUTHORIZED").await;
}

/// `X-Response-Envelope: data` wraps successful JSON answers as FlatRun's
/// `{"data", "message"}`; errors keep `{"error", "code"}`; without the header
/// nothing changes.
#[tokio::test]
async fn the_flatrun_envelope_is_given_to_clients_that_ask() {
    let app = spawn_app().await;
    let plain = app.get_json("/api/v1/auth/me").await;
    assert!(plain.get("data").is_none(), "{plain}");
    let r = app
        .admin(Method::GET, "/api/v1/auth/me")
        .header("x-response-envelope", "data")
        .send()
        .await
        .expect("me");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.headers()
            .get("x-response-envelope")
            .and_then(|v| v.to_str().ok()),
        Some("data")
    );
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["message"], "Success");
    assert_eq!(v["data"], plain);
    let r = app
        .admin(Method::GET, "/api/v1/deployments/nope")
        .header("x-response-envelope", "data")
        .send()
        .await
        .expect("missing");
    let e = expect_error(r, StatusCode::NOT_FOUND, "NOT_FOUND").await;
    assert!(e.get("data").is_none(), "{e}");
}
