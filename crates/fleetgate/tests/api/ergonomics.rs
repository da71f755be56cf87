//! Operator ergonomics in the API: the "what does this URL do" tester of a redirect
//! project, the drafts-only filter, redirect hit counts from the gateway in this
//! process, a manual circuit-breaker reset (admins only, audited), and one event by
//! its id.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};

use crate::gateway::breaker_setup;
use crate::redirects::gateway_until;
use crate::support::{expect_error, spawn_app, TestApp};

const P: &str = "/api/v1/namespaces/web/projects/site";

async fn project(app: &TestApp) {
    app.post_ok("/api/v1/namespaces", json!({"name": "web"}))
        .await;
    app.post_ok(
        "/api/v1/namespaces/web/projects",
        json!({"name": "site", "hosts": ["site.test"]}),
    )
    .await;
}

async fn rule(app: &TestApp, kind: &str, body: Value) -> i64 {
    app.post_ok(&format!("{P}/{kind}"), body).await["id"]
        .as_i64()
        .expect("id")
}

/// A BASIC redirect from `source` to `/x`; its id.
async fn basic(app: &TestApp, source: &str) -> i64 {
    rule(
        app,
        "redirects",
        json!({"type": "BASIC", "source": source, "target": "/x"}),
    )
    .await
}

async fn try_url(app: &TestApp, query: &[(&str, &str)]) -> reqwest::Response {
    app.admin(Method::GET, &format!("{P}/test"))
        .query(query)
        .send()
        .await
        .expect("test")
}

async fn tested(app: &TestApp, url: &str, which: &str) -> Value {
    let r = try_url(app, &[("url", url), ("which", which)]).await;
    assert_eq!(r.status(), StatusCode::OK, "{url}");
    r.json().await.expect("json")
}

async fn publish(app: &TestApp) {
    let r = app
        .admin(Method::POST, &format!("{P}/publish"))
        .send()
        .await
        .expect("publish");
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn the_url_tester_names_the_rule_that_answers_in_the_draft_or_the_published_set() {
    let app = spawn_app().await;
    project(&app).await;
    let old = rule(
        &app,
        "redirects",
        json!({"type": "BASIC", "source": "/old", "target": "/new", "status": "MOVED_PERMANENT"}),
    )
    .await;
    let blog = rule(
        &app,
        "redirects",
        json!({"type": "REGEX", "source": "^/blog/(\\d+)$", "target": "/posts/$1"}),
    )
    .await;
    let robots = rule(
        &app,
        "pages",
        json!({"type": "BASIC", "path": "/robots.txt", "content": "User-agent: *"}),
    )
    .await;

    // The draft answers at once; nothing is published yet.
    let r = tested(&app, "http://site.test/old", "draft").await;
    assert_eq!(r["matched"], true);
    assert_eq!(r["rule"]["id"], old);
    assert_eq!(r["rule"]["kind"], "redirect");
    assert_eq!(
        (r["status"].as_u64(), r["location"].as_str()),
        (Some(301), Some("/new"))
    );
    let r = tested(&app, "https://site.test/blog/42", "draft").await;
    assert_eq!(
        (r["rule"]["id"].as_i64(), r["rule"]["source"].as_str()),
        (Some(blog), Some("^/blog/(\\d+)$"))
    );
    assert_eq!(r["location"], "/posts/42");
    assert_eq!(
        (r["host"].as_str(), r["uri"].as_str()),
        (Some("site.test"), Some("/blog/42"))
    );
    // A path alone is tried on the project's first host; a page answers 200.
    let r = tested(&app, "/robots.txt", "draft").await;
    assert_eq!(
        (r["rule"]["kind"].as_str(), r["rule"]["id"].as_i64()),
        (Some("page"), Some(robots))
    );
    assert_eq!(
        (r["status"].as_u64(), r["content"].as_str()),
        (Some(200), Some("User-agent: *"))
    );
    assert_eq!(r["content_type"], "text/plain");
    let r = tested(&app, "http://site.test/nothing?x=1", "draft").await;
    assert_eq!(
        (r["matched"].as_bool(), r["rule"].is_null()),
        (Some(false), true)
    );
    let r = tested(&app, "http://site.test/old", "published").await;
    assert_eq!(r["matched"], false, "not published yet: {r}");

    // Published, then changed in the draft: each set answers as it is.
    publish(&app).await;
    app.admin(Method::PUT, &format!("{P}/redirects/{old}"))
        .json(&json!({"type": "BASIC", "source": "/old", "target": "/newer"}))
        .send()
        .await
        .expect("update");
    let r = tested(&app, "http://site.test/old", "published").await;
    assert_eq!(
        (r["location"].as_str(), r["status"].as_u64()),
        (Some("/new"), Some(301))
    );
    let r = tested(&app, "http://site.test/old", "draft").await;
    assert_eq!(
        (r["location"].as_str(), r["status"].as_u64()),
        (Some("/newer"), Some(302))
    );
    assert_eq!(r["rule"]["id"], old);
    // `which` defaults to the draft.
    let r = try_url(&app, &[("url", "http://site.test/old")]).await;
    assert_eq!(r.json::<Value>().await.expect("json")["location"], "/newer");

    // Bad input is refused naming the field.
    let long = format!("http://site.test/{}", "a".repeat(5000));
    for url in [
        "",
        "ftp://site.test/x",
        "http:///x",
        "http://site.test/a b",
        "http://user@site.test/x",
        long.as_str(),
    ] {
        let e = expect_error(
            try_url(&app, &[("url", url)]).await,
            StatusCode::BAD_REQUEST,
            "VALIDATION_FAILED",
        )
        .await;
        assert_eq!(e["details"]["field"], "url", "{url} → {e}");
    }
    let e = expect_error(
        try_url(&app, &[("url", "/x"), ("which", "live")]).await,
        StatusCode::BAD_REQUEST,
        "VALIDATION_FAILED",
    )
    .await;
    assert_eq!(e["details"]["field"], "which");
    let r = app
        .admin(
            Method::GET,
            "/api/v1/namespaces/web/projects/nope/test?url=/x",
        )
        .send()
        .await
        .expect("test");
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    // A viewer may test a URL: it is a read.
    let key = app.key_for_role("vic", "viewer").await;
    let r = Client::new()
        .get(app.url(&format!("{P}/test")))
        .query(&[("url", "/old")])
        .bearer_auth(key)
        .send()
        .await
        .expect("test");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.expect("json")["location"], "/newer");
}

#[tokio::test]
async fn drafts_only_lists_the_unpublished_changes() {
    let app = spawn_app().await;
    project(&app).await;
    let a = basic(&app, "/a").await;
    let b = basic(&app, "/b").await;
    publish(&app).await;
    let c = basic(&app, "/c").await;
    app.admin(Method::PUT, &format!("{P}/redirects/{a}"))
        .json(&json!({"type": "BASIC", "source": "/a", "target": "/y"}))
        .send()
        .await
        .expect("update");
    let ids = |v: Value| -> Vec<i64> {
        v["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|r| r["id"].as_i64().expect("id"))
            .collect()
    };
    assert_eq!(
        ids(app.get_json(&format!("{P}/redirects?drafts=true")).await),
        vec![a, c]
    );
    assert_eq!(
        ids(app.get_json(&format!("{P}/redirects?drafts=false")).await),
        vec![a, b, c]
    );
    let r = app
        .admin(Method::GET, &format!("{P}/redirects?drafts=maybe"))
        .send()
        .await
        .expect("list");
    assert_eq!(
        expect_error(r, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await["details"]["field"],
        "drafts"
    );
}

/// Sends `n` requests for `uri` on `host` to the gateway, waiting first until the
/// gateway answers it with `status` (an answer without a rule counts no hit).
async fn hit(app: &TestApp, host: &str, uri: &str, status: u16, n: usize) {
    for _ in 0..n {
        gateway_until(app, host, uri, |r| r.status().as_u16() == status).await;
    }
}

fn hits_of(list: &Value, key: &str, value: &str) -> Value {
    list["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|r| r[key] == value)
        .map(|r| r["hits"].clone())
        .unwrap_or(Value::Null)
}

#[tokio::test]
async fn the_gateway_counts_hits_per_published_rule_and_keeps_them_over_a_publish() {
    let app = spawn_app().await;
    project(&app).await;
    basic(&app, "/a").await;
    rule(
        &app,
        "redirects",
        json!({"type": "REGEX", "source": "^/r/(.*)$", "target": "/y/$1"}),
    )
    .await;
    basic(&app, "/quiet").await;
    rule(
        &app,
        "pages",
        json!({"type": "BASIC", "path": "/robots.txt", "content": "x"}),
    )
    .await;
    let list = app.get_json(&format!("{P}/redirects")).await;
    assert_eq!(
        hits_of(&list, "source", "/a"),
        Value::Null,
        "never published"
    );
    publish(&app).await;
    hit(&app, "site.test", "/a", 302, 3).await;
    hit(&app, "site.test", "/r/1", 302, 2).await;
    hit(&app, "site.test:8080", "/r/2", 302, 1).await;
    hit(&app, "site.test", "/robots.txt", 200, 4).await;
    let list = app.get_json(&format!("{P}/redirects")).await;
    assert_eq!(hits_of(&list, "source", "/a"), 3, "{list}");
    assert_eq!(hits_of(&list, "source", "^/r/(.*)$"), 3);
    assert_eq!(hits_of(&list, "source", "/quiet"), 0);
    let pages = app.get_json(&format!("{P}/pages")).await;
    assert_eq!(hits_of(&pages, "path", "/robots.txt"), 4, "{pages}");

    // A new version keeps the counts of the rules it kept; a new rule starts at 0.
    basic(&app, "/b").await;
    publish(&app).await;
    hit(&app, "site.test", "/b", 302, 1).await;
    hit(&app, "site.test", "/a", 302, 1).await;
    let list = app.get_json(&format!("{P}/redirects")).await;
    assert_eq!(hits_of(&list, "source", "/a"), 4, "{list}");
    assert_eq!(hits_of(&list, "source", "/b"), 1);
    assert_eq!(hits_of(&list, "source", "^/r/(.*)$"), 3);
}

async fn breaker_state(app: &TestApp) -> String {
    let breakers = app.get_json("/api/v1/circuit-breakers").await;
    breakers[0]["state"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn an_admin_resets_an_open_breaker_audited_and_others_may_not() {
    let app = spawn_app().await;
    let up = breaker_setup(&app, 600_000).await;
    let c = Client::new();
    up.status.store(500, Ordering::Relaxed);
    for _ in 0..10 {
        c.get(app.gw("/x")).send().await.expect("req");
    }
    assert_eq!(breaker_state(&app).await, "open");
    assert_eq!(
        c.get(app.gw("/x")).send().await.expect("req").status(),
        StatusCode::SERVICE_UNAVAILABLE
    );

    // Viewers and operators are refused, and nothing changes.
    for role in ["viewer", "operator"] {
        let key = app.key_for_role(&format!("{role}-user"), role).await;
        let r = Client::new()
            .post(app.url("/api/v1/circuit-breakers/svc/reset"))
            .bearer_auth(key)
            .send()
            .await
            .expect("reset");
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{role}");
    }
    assert_eq!(breaker_state(&app).await, "open");

    let r = app
        .admin(Method::POST, "/api/v1/circuit-breakers/svc/reset")
        .send()
        .await
        .expect("reset");
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.expect("json");
    assert_eq!(
        (v["was"].as_str(), v["changed"].as_bool()),
        (Some("open"), Some(true))
    );
    assert_eq!(v["breaker"]["state"], "closed");
    assert_eq!(breaker_state(&app).await, "closed");
    up.status.store(200, Ordering::Relaxed);
    assert_eq!(
        c.get(app.gw("/x")).send().await.expect("req").status(),
        StatusCode::OK
    );

    // Audited with who did it and the states.
    let audit = app
        .get_json("/api/v1/audit?action=circuit_breaker.reset")
        .await;
    let entry = &audit["items"][0];
    assert_eq!(entry["target_id"], "svc", "{audit}");
    assert!(
        entry["actor"].as_str().is_some_and(|a| !a.is_empty()),
        "{entry}"
    );
    assert_eq!(entry["before"]["state"], "open");
    assert_eq!(entry["after"]["state"], "closed");

    // A closed breaker resets to closed, unchanged; an unknown upstream is a 404.
    let v: Value = app
        .admin(Method::POST, "/api/v1/circuit-breakers/svc/reset")
        .send()
        .await
        .expect("reset")
        .json()
        .await
        .expect("json");
    assert_eq!(
        (v["was"].as_str(), v["changed"].as_bool()),
        (Some("closed"), Some(false))
    );
    let r = app
        .admin(Method::POST, "/api/v1/circuit-breakers/nope/reset")
        .send()
        .await
        .expect("reset");
    expect_error(r, StatusCode::NOT_FOUND, "NOT_FOUND").await;
}

#[tokio::test]
async fn one_event_is_read_by_its_id() {
    let app = spawn_app().await;
    // Any mutation raises an event (config.changed); wait until one is stored.
    app.post_ok(
        "/api/v1/upstreams",
        json!({"name": "svc", "targets": [{"url": "http://127.0.0.1:9"}]}),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(5);
    let first = loop {
        let list = app.get_json("/api/v1/events?limit=1").await;
        if let Some(e) = list["items"].as_array().and_then(|a| a.first()) {
            break e.clone();
        }
        assert!(Instant::now() < deadline, "no event stored");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let id = first["id"].as_i64().expect("id");
    let one = app.get_json(&format!("/api/v1/events/{id}")).await;
    assert_eq!(one, first);
    let r = app
        .admin(Method::GET, &format!("/api/v1/events/{}", id + 1_000_000))
        .send()
        .await
        .expect("get");
    expect_error(r, StatusCode::NOT_FOUND, "NOT_FOUND").await;
    let r = app
        .admin(Method::GET, "/api/v1/events/abc")
        .send()
        .await
        .expect("get");
    assert_eq!(
        expect_error(r, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await["details"]["field"],
        "id"
    );
}
