//! Deployments on the all-in-one server with the process driver: a small HTTP app
//! (python3's http.server) deployed from compose.yml + service.yml, routed by its
//! domain through the real gateway, its logs (tail and followed over SSE) and
//! stats; a crashing service restarted by its policy; files that do not check
//! refused with file, line and field; the proxy endpoints; delete unroutes it.

use std::time::{Duration, Instant};

use futures::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::support::{send, spawn_app, unused_port, TestApp};

/// Polls the deployment until `pred` holds.
async fn until(app: &TestApp, name: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = app.get_json(&format!("/api/v1/deployments/{name}")).await;
        if pred(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "deployment never {what}: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// GET through the gateway with a Host header.
async fn via_gateway(app: &TestApp, host: &str, path: &str) -> (u16, String) {
    let gw = app.gateway.expect("gateway");
    let r = reqwest::Client::new()
        .get(format!("http://{gw}{path}"))
        .header("host", host)
        .send()
        .await
        .expect("gateway request");
    (r.status().as_u16(), r.text().await.unwrap_or_default())
}

fn web_app(port: u16, root: &std::path::Path) -> (String, String) {
    let compose = format!(
        "services:\n  web:\n    command: [\"python3\", \"-u\", \"-m\", \"http.server\", \"{port}\", \"--bind\", \"127.0.0.1\", \"--directory\", \"{}\"]\n    restart: always\n    healthcheck:\n      test: [\"CMD\", \"python3\", \"-c\", \"import urllib.request; urllib.request.urlopen('http://127.0.0.1:{port}/')\"]\n      interval: 1s\n      timeout: 2s\n      retries: 3\n",
        root.display()
    );
    let service = format!("domains: [app.example.test]\nport: {port}\nhealthcheck:\n  path: /\n  interval: 2s\n  timeout: 1s\n");
    (compose, service)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_is_deployed_routed_logged_and_removed() {
    let app = spawn_app().await;
    let site = tempfile::tempdir().expect("site");
    std::fs::write(
        site.path().join("index.html"),
        "hello from the deployed app",
    )
    .expect("index");
    let port = unused_port();
    let (compose, service) = web_app(port, site.path());
    let (s, v) = send(
        &app,
        Method::POST,
        "/api/v1/deployments",
        Some(json!({"name": "site", "compose": compose, "service": service})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["desired"], "running");
    assert_eq!(v["driver"], "process");
    assert_eq!(v["domains"], json!(["app.example.test"]));
    let v = until(&app, "site", "running", |v| v["status"] == "running").await;
    assert_eq!(v["services"][0]["name"], "web");
    assert!(v["services"][0]["pid"].as_u64().is_some(), "{v}");

    // Routed by its domain through the gateway, as one revision.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = via_gateway(&app, "app.example.test", "/index.html").await;
        if status == 200 {
            assert_eq!(body, "hello from the deployed app");
            break;
        }
        assert!(Instant::now() < deadline, "not routed: {status} {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, _) = via_gateway(&app, "other.example.test", "/index.html").await;
    assert_eq!(status, 404, "another host is not routed to the app");
    let p = app.get_json("/api/v1/proxy/status/site").await;
    assert_eq!(p["configured"], true, "{p}");
    assert_eq!(p["up_to_date"], true, "{p}");
    assert_eq!(p["route_id"], "deploy-site");
    let vh = app.get_json("/api/v1/proxy/vhosts").await;
    assert_eq!(vh["items"][0]["domain"], "app.example.test", "{vh}");
    assert_eq!(vh["items"][0]["deployment"], "site");

    // The request is in the app's log (http.server logs to stderr).
    let logs = app
        .get_json("/api/v1/deployments/site/logs?service=web&tail=50")
        .await;
    let lines = logs["items"].as_array().expect("items");
    assert!(
        lines.iter().any(|l| l["stream"] == "stderr"
            && l["line"].as_str().unwrap_or("").contains("GET /index.html")),
        "{logs}"
    );
    assert!(lines.iter().any(|l| l["stream"] == "fleetgate"), "{logs}");

    // Followed: a new request's line arrives as an SSE event.
    let r = app
        .admin(
            Method::GET,
            "/api/v1/deployments/site/logs?follow=true&tail=0",
        )
        .send()
        .await
        .expect("follow");
    assert_eq!(r.status(), StatusCode::OK);
    let mut events = r.bytes_stream();
    via_gateway(&app, "app.example.test", "/followed-path").await;
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !seen.contains("/followed-path") {
        let left = deadline.saturating_duration_since(Instant::now());
        let chunk = tokio::time::timeout(left, events.next())
            .await
            .expect("a followed line in time")
            .expect("stream open")
            .expect("chunk");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(seen.contains("event: log"), "{seen}");
    drop(events);

    let stats = app.get_json("/api/v1/deployments/site/stats").await;
    assert!(
        stats["memory_bytes"].as_u64().unwrap_or(0) > 1_000_000,
        "{stats}"
    );
    assert_eq!(stats["services"][0]["name"], "web");

    // Viewers see the state, not the files.
    let key = app.key_for_role("viewer-d", "viewer").await;
    let r = app
        .anon(Method::GET, "/api/v1/deployments/site")
        .bearer_auth(&key)
        .send()
        .await
        .expect("get");
    let v: Value = r.json().await.expect("json");
    assert!(
        v.get("compose").is_none() && v["status"] == "running",
        "{v}"
    );
    let r = app
        .anon(Method::POST, "/api/v1/deployments/site/stop")
        .bearer_auth(&key)
        .send()
        .await
        .expect("stop");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    // Stop: stopped and not serving; start again.
    let (s, v) = send(&app, Method::POST, "/api/v1/deployments/site/stop", None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let v = until(&app, "site", "stopped", |v| v["status"] == "stopped").await;
    assert_eq!(v["desired"], "stopped");
    let (status, _) = via_gateway(&app, "app.example.test", "/index.html").await;
    assert!(
        status == 502 || status == 503,
        "the route stays, the app is down: {status}"
    );
    let (s, _) = send(&app, Method::POST, "/api/v1/deployments/site/start", None).await;
    assert_eq!(s, StatusCode::OK);
    until(&app, "site", "running again", |v| v["status"] == "running").await;

    // Every change was audited, without the files.
    let audit = app.get_json("/api/v1/audit?target_type=deployment").await;
    let actions: Vec<&str> = audit["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    for a in ["deployment.create", "deployment.stop", "deployment.start"] {
        assert!(actions.contains(&a), "{actions:?}");
    }
    assert!(
        !audit.to_string().contains("http.server"),
        "files are not audited"
    );

    // Delete: stopped, unrouted, gone.
    let pid = app.get_json("/api/v1/deployments/site").await["services"][0]["pid"]
        .as_u64()
        .expect("pid");
    let r = app
        .admin(Method::DELETE, "/api/v1/deployments/site")
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "the app's process is gone"
    );
    let (status, _) = via_gateway(&app, "app.example.test", "/index.html").await;
    assert_eq!(status, 404);
    let routes = app.get_json("/api/v1/routes").await;
    assert!(!routes.to_string().contains("deploy-site"), "{routes}");
    let (s, _) = send(&app, Method::GET, "/api/v1/deployments/site", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashing_service_is_restarted_by_its_policy() {
    let app = spawn_app().await;
    let compose = "services:\n  worker:\n    command: sh -c 'echo working; sleep 0.3; exit 3'\n    restart: on-failure:2\n";
    let (s, v) = send(
        &app,
        Method::POST,
        "/api/v1/deployments",
        Some(json!({"name": "crashy", "compose": compose})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let v = until(&app, "crashy", "failed", |v| v["status"] == "failed").await;
    let w = &v["services"][0];
    assert_eq!(w["restarts"], 2, "{v}");
    assert_eq!(w["exit_code"], 3, "{v}");
    let logs = app.get_json("/api/v1/deployments/crashy/logs").await;
    let working = logs["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|l| l["line"] == "working")
        .count();
    assert_eq!(working, 3, "the first run and two restarts: {logs}");
    app.stop().await;
}

#[tokio::test]
async fn files_that_do_not_check_are_refused_with_file_line_and_field() {
    let app = spawn_app().await;
    let compose =
        "services:\n  web:\n    command: [\"true\"]\n    ports:\n      - \"8080:99999\"\n";
    let (s, v) = send(
        &app,
        Method::POST,
        "/api/v1/deployments",
        Some(json!({"name": "bad", "compose": compose})),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["code"], "VALIDATION_FAILED");
    assert_eq!(v["details"]["field"], "compose");
    let p = &v["details"]["problems"][0];
    assert_eq!(p["file"], "compose.yml", "{v}");
    assert_eq!(p["line"], 5, "{v}");
    assert_eq!(p["field"], "services.web.ports[0]", "{v}");

    let service = "domains: [\"not a domain\"]\n";
    let (s, v) = send(
        &app,
        Method::POST,
        "/api/v1/deployments",
        Some(json!({"name": "bad", "compose": "services:\n  web:\n    command: [\"true\"]\n", "service": service})),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["details"]["field"], "service", "{v}");
    assert_eq!(v["details"]["problems"][0]["line"], 1, "{v}");

    for name in ["Bad", "-x", "a/b", ""] {
        let (s, v) = send(
            &app,
            Method::POST,
            "/api/v1/deployments",
            Some(json!({"name": name, "compose": "services:\n  web:\n    command: [\"true\"]\n"})),
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{name}: {v}");
        assert_eq!(v["details"]["field"], "name", "{v}");
    }
    // An image-only service cannot run on the process driver: refused with
    // the line of `driver:`, naming the service. (With `auto` it goes to
    // Docker: tests/api/docker.rs.)
    let (s, v) = send(
        &app,
        Method::POST,
        "/api/v1/deployments",
        Some(json!({"name": "img", "service": "driver: process\n",
            "compose": "services:\n  db:\n    image: postgres:16\n"})),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["details"]["problems"][0]["field"], "driver", "{v}");
    assert!(
        v["error"].as_str().unwrap_or("").contains("service db"),
        "{v}"
    );
    let list = app.get_json("/api/v1/deployments").await;
    assert_eq!(list["total"], 0, "nothing was created: {list}");
    app.stop().await;
}

/// The template catalogue: categories, a template's files, and a deployment made
/// from the static-site template that serves its files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_is_listed_and_deployed() {
    let app = spawn_app().await;
    let list = app.get_json("/api/v1/templates").await;
    let ids: Vec<&str> = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|t| t["id"].as_str())
        .collect();
    for id in ["static-site", "worker", "postgres", "wordpress"] {
        assert!(ids.contains(&id), "{ids:?}");
    }
    let dbs = app.get_json("/api/v1/templates?category=database").await;
    assert!(dbs["items"]
        .as_array()
        .expect("items")
        .iter()
        .all(|t| t["category"] == "database"));
    let cats = app.get_json("/api/v1/templates/categories").await;
    assert!(cats["items"]
        .as_array()
        .expect("items")
        .iter()
        .any(|c| c["name"] == "web" && c["count"].as_u64() >= Some(2)));
    let wp = app.get_json("/api/v1/templates/wordpress").await;
    assert_eq!(wp["source"], "builtin");
    let (s, _) = send(&app, Method::GET, "/api/v1/templates/nope/compose", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // The static site, on a free port, serving a file the operator put in public/.
    let files = app.get_json("/api/v1/templates/static-site/compose").await;
    let port = unused_port();
    let compose = files["compose"]
        .as_str()
        .expect("compose")
        .replace("8070", &port.to_string());
    let service = files["service"]
        .as_str()
        .expect("service")
        .replace("8070", &port.to_string())
        .replace("site.example.com", "static.example.test");
    let (s, v) = send(
        &app,
        Method::POST,
        "/api/v1/deployments",
        Some(json!({"name": "static", "compose": compose, "service": service, "start": false})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let public = app.config.data_dir.join("deployments/static/public");
    std::fs::create_dir_all(&public).expect("public");
    std::fs::write(public.join("index.html"), "from the template").expect("index");
    let (s, v) = send(&app, Method::POST, "/api/v1/deployments/static/start", None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    until(&app, "static", "running", |v| v["status"] == "running").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = via_gateway(&app, "static.example.test", "/index.html").await;
        if status == 200 {
            assert_eq!(body, "from the template");
            break;
        }
        assert!(Instant::now() < deadline, "not served: {status} {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (s, v) = send(&app, Method::POST, "/api/v1/templates/refresh", None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["problems"], json!([]));
    app.stop().await;
}
