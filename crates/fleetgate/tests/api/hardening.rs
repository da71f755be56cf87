//! Findings of the security review (issue 13) on the manager, each checked through
//! the real server: slow clients, the login limit, API keys of disabled owners on
//! the Flecto sync API, file modes and metrics access, outbound destinations.

use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};

use crate::support::{spawn_app, TestApp};

/// The id of the user called `username`.
async fn user_id(app: &TestApp, username: &str) -> String {
    let users = app.get_json("/api/v1/users?limit=1000").await;
    users["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|u| u["username"] == username)
        .and_then(|u| u["id"].as_str())
        .expect("user exists")
        .to_string()
}

async fn update_user(app: &TestApp, id: &str, body: Value) {
    let r = app
        .admin(Method::PUT, &format!("/api/v1/users/{id}"))
        .json(&body)
        .send()
        .await
        .expect("update user");
    assert_eq!(r.status(), StatusCode::OK, "{:?}", r.text().await);
}

// ---------------------------------------------------------------------------
// Item 14: the Flecto sync API applies the same owner checks to API keys as /api/v1.

#[tokio::test]
async fn sync_api_refuses_keys_of_disabled_owners_and_demotes_keys_of_demoted_ones() {
    let app = spawn_app().await;
    for (path, body) in [
        ("/api/v1/namespaces", json!({"name": "prod"})),
        (
            "/api/v1/namespaces/prod/projects",
            json!({"name": "site", "hosts": ["site.test"]}),
        ),
    ] {
        let r = app
            .admin(Method::POST, path)
            .json(&body)
            .send()
            .await
            .expect("create");
        assert_eq!(r.status(), StatusCode::CREATED, "{path}");
    }
    let key = app.key_for_role("sync-operator", "operator").await;
    let id = user_id(&app, "sync-operator").await;
    let base = app.url("/api/namespace/prod/project/site");
    let c = Client::new();
    let read = || c.get(format!("{base}/version")).bearer_auth(&key).send();
    let write = || {
        c.patch(format!("{base}/agents/edge-1/hit"))
            .bearer_auth(&key)
            .send()
    };
    assert_eq!(read().await.expect("read").status(), StatusCode::OK);
    assert_eq!(write().await.expect("write").status(), StatusCode::OK);

    // Demoted to viewer: the key may still read, no longer write (as on /api/v1).
    update_user(&app, &id, json!({"role": "viewer"})).await;
    assert_eq!(read().await.expect("read").status(), StatusCode::OK);
    assert_eq!(
        write().await.expect("write").status(),
        StatusCode::FORBIDDEN
    );

    // Disabled: the key is refused outright, on both APIs.
    update_user(&app, &id, json!({"role": "operator", "disabled": true})).await;
    let r = read().await.expect("read");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let body: Value = r.json().await.expect("flecto error body");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("disabled")),
        "{body}"
    );
    assert_eq!(
        write().await.expect("write").status(),
        StatusCode::UNAUTHORIZED
    );
    let r = c
        .get(app.url("/api/v1/auth/me"))
        .bearer_auth(&key)
        .send()
        .await
        .expect("me");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // Enabled again, the key works again: nothing was revoked, only checked.
    update_user(&app, &id, json!({"disabled": false})).await;
    assert_eq!(read().await.expect("read").status(), StatusCode::OK);
    app.stop().await;
}
