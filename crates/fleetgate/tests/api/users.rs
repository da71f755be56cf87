//! Users CRUD with ETags, validation and role rules.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::support::{expect_error, spawn_app};

#[tokio::test]
async fn create_read_update_delete_with_etags() {
    let app = spawn_app().await;
    let r = app
        .admin(Method::POST, "/api/v1/users")
        .json(&json!({"username": "ops", "password": "password-123", "role": "operator", "email": "ops@example.com", "allowed_node_ids": ["n1"]}))
        .send()
        .await
        .expect("create");
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(r.headers()["etag"], "\"1\"");
    let user: Value = r.json().await.expect("json");
    let id = user["id"].as_str().expect("id").to_string();
    assert_eq!(user["allowed_node_ids"], json!(["n1"]));
    assert!(user.get("password_hash").is_none() && user.get("password").is_none());

    let r = app
        .admin(Method::GET, &format!("/api/v1/users/{id}"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.headers()["etag"], "\"1\"");

    let r = app
        .admin(Method::PUT, &format!("/api/v1/users/{id}"))
        .header("if-match", "\"1\"")
        .json(&json!({"display_name": "Ops Team", "allowed_node_ids": null}))
        .send()
        .await
        .expect("update");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["etag"], "\"2\"");
    let updated: Value = r.json().await.expect("json");
    assert_eq!(updated["display_name"], "Ops Team");
    assert_eq!(updated["allowed_node_ids"], Value::Null);
    assert_eq!(
        updated["email"], "ops@example.com",
        "absent fields are kept"
    );

    // A stale ETag is refused and changes nothing.
    let r = app
        .admin(Method::PUT, &format!("/api/v1/users/{id}"))
        .header("if-match", "\"1\"")
        .json(&json!({"display_name": "Lost update"}))
        .send()
        .await
        .expect("update");
    let e = expect_error(r, StatusCode::PRECONDITION_FAILED, "PRECONDITION_FAILED").await;
    assert_eq!(e["details"]["current_version"], 2);
    let r = app
        .admin(Method::DELETE, &format!("/api/v1/users/{id}"))
        .header("if-match", "\"7\"")
        .send()
        .await
        .expect("delete");
    expect_error(r, StatusCode::PRECONDITION_FAILED, "PRECONDITION_FAILED").await;
    let r = app
        .admin(Method::PUT, &format!("/api/v1/users/{id}"))
        .header("if-match", "garbage")
        .json(&json!({}))
        .send()
        .await
        .expect("update");
    expect_error(r, StatusCode::PRECONDITION_FAILED, "PRECONDITION_FAILED").await;

    let list = app.get_json("/api/v1/users?limit=1&offset=1").await;
    assert_eq!(list["total"], 2);
    assert_eq!(list["limit"], 1);
    assert_eq!(list["offset"], 1);
    assert_eq!(list["items"][0]["username"], "ops");

    let r = app
        .admin(Method::DELETE, &format!("/api/v1/users/{id}"))
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = app
        .admin(Method::GET, &format!("/api/v1/users/{id}"))
        .send()
        .await
        .expect("get");
    expect_error(r, StatusCode::NOT_FOUND, "NOT_FOUND").await;

    let audit = app.get_json("/api/v1/audit?target_type=user").await;
    let actions: Vec<&str> = audit["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|e| e["action"].as_str().expect("action"))
        .collect();
    assert_eq!(
        actions,
        ["user.delete", "user.update", "user.create", "user.create"]
    );
    let upd = &audit["items"][1];
    assert_eq!(upd["actor"], "api_key:bootstrap");
    assert!(upd["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .any(|c| c["path"] == "/display_name"));
    app.stop().await;
}

#[tokio::test]
async fn validation_names_the_field() {
    let app = spawn_app().await;
    let cases = [
        (
            json!({"username": "a b", "password": "password-123"}),
            "username",
        ),
        (json!({"username": "ok", "password": "short"}), "password"),
        (
            json!({"username": "ok", "password": "password-123", "role": "root"}),
            "role",
        ),
        (
            json!({"username": "ok", "password": "password-123", "email": "not-an-email"}),
            "email",
        ),
        (
            json!({"username": "ok", "password": "password-123", "nickname": "x"}),
            "nickname",
        ),
        (
            json!({"username": 5, "password": "password-123"}),
            "username",
        ),
        (json!({"password": "password-123"}), "body"),
        (
            json!({"username": "ok", "password": "password-123", "allowed_node_ids": [""]}),
            "allowed_node_ids[0]",
        ),
    ];
    for (body, field) in cases {
        let r = app
            .admin(Method::POST, "/api/v1/users")
            .json(&body)
            .send()
            .await
            .expect("create");
        let e = expect_error(r, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await;
        let got = e["details"]["field"].as_str().expect("field");
        assert_eq!(got, field, "{body}: {e}");
    }
    // Nothing was half-written.
    assert_eq!(app.get_json("/api/v1/users").await["total"], 1);
    let r = app
        .admin(Method::POST, "/api/v1/users")
        .json(&json!({"username": "admin", "password": "password-123"}))
        .send()
        .await
        .expect("dup");
    expect_error(r, StatusCode::CONFLICT, "CONFLICT").await;
    app.stop().await;
}

#[tokio::test]
async fn only_super_admins_manage_super_admins_and_one_always_remains() {
    let app = spawn_app().await;
    let admin_key = app.key_for_role("adele", "admin").await;
    let r = app
        .anon(Method::POST, "/api/v1/users")
        .bearer_auth(&admin_key)
        .json(&json!({"username": "boss", "password": "password-123", "role": "super_admin"}))
        .send()
        .await
        .expect("create");
    expect_error(r, StatusCode::FORBIDDEN, "FORBIDDEN").await;
    let users = app.get_json("/api/v1/users").await;
    let admin_id = users["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|u| u["username"] == "admin")
        .expect("admin")["id"]
        .as_str()
        .expect("id")
        .to_string();
    let r = app
        .anon(Method::DELETE, &format!("/api/v1/users/{admin_id}"))
        .bearer_auth(&admin_key)
        .send()
        .await
        .expect("delete");
    expect_error(r, StatusCode::FORBIDDEN, "FORBIDDEN").await;
    // The super admin cannot remove the last super admin either.
    let r = app
        .admin(Method::DELETE, &format!("/api/v1/users/{admin_id}"))
        .send()
        .await
        .expect("delete");
    expect_error(r, StatusCode::CONFLICT, "CONFLICT").await;
    let r = app
        .admin(Method::PUT, &format!("/api/v1/users/{admin_id}"))
        .json(&json!({"role": "viewer"}))
        .send()
        .await
        .expect("demote");
    expect_error(r, StatusCode::CONFLICT, "CONFLICT").await;
    app.stop().await;
}

#[tokio::test]
async fn a_password_change_ends_sessions_and_disabled_users_cannot_log_in() {
    let app = spawn_app().await;
    let r = app
        .admin(Method::POST, "/api/v1/users")
        .json(&json!({"username": "sam", "password": "password-123", "role": "operator"}))
        .send()
        .await
        .expect("create");
    let id = r.json::<Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .to_string();
    let c = reqwest::Client::builder()
        .cookie_store(true)
        .build()
        .expect("client");
    let login = |pw: &'static str| {
        let c = c.clone();
        let url = app.url("/api/v1/auth/login");
        async move {
            c.post(url)
                .json(&json!({"username": "sam", "password": pw}))
                .send()
                .await
                .expect("login")
        }
    };
    assert_eq!(login("password-123").await.status(), StatusCode::OK);
    assert_eq!(
        c.get(app.url("/api/v1/auth/me"))
            .send()
            .await
            .expect("me")
            .status(),
        StatusCode::OK
    );
    let r = app
        .admin(Method::PUT, &format!("/api/v1/users/{id}"))
        .json(&json!({"password": "new-password-456"}))
        .send()
        .await
        .expect("update");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        c.get(app.url("/api/v1/auth/me"))
            .send()
            .await
            .expect("me")
            .status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        login("password-123").await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(login("new-password-456").await.status(), StatusCode::OK);
    app.admin(Method::PUT, &format!("/api/v1/users/{id}"))
        .json(&json!({"disabled": true}))
        .send()
        .await
        .expect("disable");
    assert_eq!(
        c.get(app.url("/api/v1/auth/me"))
            .send()
            .await
            .expect("me")
            .status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        login("new-password-456").await.status(),
        StatusCode::UNAUTHORIZED
    );
    app.stop().await;
}

#[tokio::test]
async fn a_demoted_users_keys_lose_the_role_too() {
    let app = spawn_app().await;
    let key = app.key_for_role("ops", "admin").await;
    let with_key = |method: Method, path: &str| {
        reqwest::Client::new()
            .request(method, app.url(path))
            .bearer_auth(&key)
    };
    let me: Value = with_key(Method::GET, "/api/v1/auth/me")
        .send()
        .await
        .expect("me")
        .json()
        .await
        .expect("json");
    assert_eq!(me["role"], "admin");
    let users = app.get_json("/api/v1/users").await;
    let id = users["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|u| u["username"] == "ops")
        .and_then(|u| u["id"].as_str())
        .expect("ops")
        .to_string();
    let r = app
        .admin(Method::PUT, &format!("/api/v1/users/{id}"))
        .json(&json!({"role": "viewer"}))
        .send()
        .await
        .expect("demote");
    assert_eq!(r.status(), StatusCode::OK);
    // The admin key now acts as a viewer: it reads, and changes nothing.
    let me: Value = with_key(Method::GET, "/api/v1/auth/me")
        .send()
        .await
        .expect("me")
        .json()
        .await
        .expect("json");
    assert_eq!(me["role"], "viewer");
    let r = with_key(Method::PUT, "/api/v1/settings")
        .json(&json!({"general": {"instance_name": "taken-over"}}))
        .send()
        .await
        .expect("put");
    expect_error(r, StatusCode::FORBIDDEN, "FORBIDDEN").await;
    app.stop().await;
}
