//! Two managers on one PostgreSQL: no state lives only in one process.

use std::time::{Duration, Instant};

use reqwest::{Client, Method, StatusCode};
use serde_json::json;

use crate::support::{config_in, login_cookies, postgres_schema_url, spawn_with, ADMIN_PASSWORD};

#[tokio::test]
async fn two_managers_share_sessions_limits_and_revisions() {
    let Some(url) = postgres_schema_url().await else {
        return;
    };
    let (dir_a, dir_b) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    let mut ca = config_in(dir_a.path());
    ca.database.url = Some(url.clone());
    let mut cb = config_in(dir_b.path());
    cb.database.url = Some(url);
    // Both start at once: first-start setup must not trip over itself.
    let (a, b) = tokio::join!(spawn_with(ca, dir_a), spawn_with(cb, dir_b));
    assert_eq!(a.get_json("/health").await["store"], "postgres");
    assert_eq!(
        a.get_json("/api/v1/users").await["total"],
        1,
        "exactly one admin was created"
    );

    // A session made on A works on B, CSRF included.
    // reqwest's jar is per host:port, so replay the cookies to B by hand.
    let jar_cookies = login_cookies(&a.url("/api/v1/auth/login")).await;
    let me = Client::new()
        .get(b.url("/api/v1/auth/me"))
        .header("cookie", &jar_cookies.0)
        .send()
        .await
        .expect("me on B");
    assert_eq!(me.status(), StatusCode::OK);
    let put = Client::new()
        .put(b.url("/api/v1/settings"))
        .header("cookie", &jar_cookies.0)
        .header("x-csrf-token", &jar_cookies.1)
        .json(&json!({"general": {"instance_name": "from-b"}}))
        .send()
        .await
        .expect("put on B");
    assert_eq!(put.status(), StatusCode::OK);

    // A sees B's change at once through the store, and its data plane follows.
    assert_eq!(
        a.get_json("/api/v1/settings").await["general"]["instance_name"],
        "from-b"
    );
    let state_a = a.running.as_ref().expect("running").state.clone();
    let deadline = Instant::now() + Duration::from_secs(5);
    while state_a.settings().general.instance_name != "from-b" {
        assert!(
            Instant::now() < deadline,
            "manager A never picked up revision made on B"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Concurrent changes through both managers get distinct, dense revision numbers.
    let writes = (0..10).map(|i| {
        let app = if i % 2 == 0 { &a } else { &b };
        app.admin(Method::PUT, "/api/v1/settings")
            .json(&json!({"general": {"instance_name": format!("w{i}")}}))
            .send()
    });
    for r in futures::future::join_all(writes).await {
        assert_eq!(r.expect("put").status(), StatusCode::OK);
    }
    let revs = a.get_json("/api/v1/revisions?limit=100").await;
    let mut numbers: Vec<i64> = revs["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|r| r["number"].as_i64().expect("n"))
        .collect();
    numbers.sort_unstable();
    assert_eq!(numbers, (1..=11).collect::<Vec<_>>());

    // Failed logins count across managers: 3 on A and 2 on B use up the budget.
    for (app, n) in [(&a, 3), (&b, 2)] {
        for _ in 0..n {
            let r = Client::new()
                .post(app.url("/api/v1/auth/login"))
                .json(&json!({"username": "admin", "password": "nope-nope"}))
                .send()
                .await
                .expect("login");
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        }
    }
    let r = Client::new()
        .post(a.url("/api/v1/auth/login"))
        .json(&json!({"username": "admin", "password": ADMIN_PASSWORD}))
        .send()
        .await
        .expect("login");
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    a.stop().await;
    b.stop().await;
}

/// Logs in and returns the `Cookie` header value and the CSRF token.

#[tokio::test]
async fn api_rate_limit_is_shared_through_redis() {
    let Ok(redis) = std::env::var("FLEETGATE_TEST_REDIS_URL") else {
        eprintln!("skipping: FLEETGATE_TEST_REDIS_URL is not set");
        return;
    };
    let Some(url) = postgres_schema_url().await else {
        return;
    };
    let (dir_a, dir_b) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    let mut ca = config_in(dir_a.path());
    ca.database.url = Some(url.clone());
    ca.redis.url = Some(redis.clone());
    let mut cb = config_in(dir_b.path());
    cb.database.url = Some(url);
    cb.redis.url = Some(redis);
    let a = spawn_with(ca, dir_a).await;
    let b = spawn_with(cb, dir_b).await;
    let r = a
        .admin(Method::PUT, "/api/v1/settings")
        .json(&json!({"api": {"rate_limit_per_minute": 6}}))
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), StatusCode::OK);
    // B follows the settings revision within its polling interval.
    let state_b = b.running.as_ref().expect("running").state.clone();
    let deadline = Instant::now() + Duration::from_secs(5);
    while state_b.settings().api.rate_limit_per_minute != 6 {
        assert!(Instant::now() < deadline, "B never saw the new limit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // One key, alternating managers: together they admit the limit once.
    let mut ok = 0;
    let mut limited = 0;
    for i in 0..12 {
        let app = if i % 2 == 0 { &a } else { &b };
        let r = app
            .admin(Method::GET, "/api/v1/auth/me")
            .send()
            .await
            .expect("req");
        match r.status() {
            StatusCode::OK => ok += 1,
            StatusCode::TOO_MANY_REQUESTS => limited += 1,
            s => panic!("unexpected {s}"),
        }
    }
    // The PUT counted too, unless the minute rolled over in between.
    assert!((5..=6).contains(&ok), "ok={ok} limited={limited}");
    assert_eq!(ok + limited, 12);
    a.stop().await;
    b.stop().await;
}
