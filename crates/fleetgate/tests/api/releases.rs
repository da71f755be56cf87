//! Releases of a deployment on the process driver: a two-service app whose
//! services listen on `$PORT` is redeployed blue-green under load with
//! WebSockets open (no failed request, no WebSocket closed, the old instances
//! drain and stop); a release that fails its health check is dropped while the
//! running one serves on; a rollback restores the files of an earlier release
//! and serves them.

use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};

use crate::support::{send, spawn_app, unused_port, GatewayLoad, TestApp};

const HOST: &str = "rel.example.test";

/// A copy of bench/lib/release_app.py of the test's own (its path tells the
/// test's processes from another test's).
fn app_script(dir: &std::path::Path) -> String {
    let source =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/lib/release_app.py");
    let copy = dir.join("release_app.py");
    std::fs::copy(&source, &copy).expect("bench/lib/release_app.py");
    copy.display().to_string()
}

/// `web` (routed) asks `api` on every request; both listen on `$PORT`.
fn files(
    app: &str,
    release: &str,
    web_port: u16,
    api_port: u16,
    extra_web_env: &str,
    deploy: &str,
) -> (String, String) {
    let compose = format!(
        "services:\n  web:\n    command: [\"python3\", \"-u\", \"{app}\", \"$PORT\"]\n    environment:\n      RELEASE: \"{release}\"\n      BACKEND_URL: \"http://127.0.0.1:${{PORT_API}}/\"\n      GRACE: \"30\"\n{extra_web_env}    depends_on: [api]\n  api:\n    command: [\"python3\", \"-u\", \"{app}\", \"$PORT\"]\n    environment:\n      RELEASE: \"api-{release}\"\n    ports: [\"{api_port}:{api_port}\"]\n"
    );
    let service = format!(
        "domains: [{HOST}]\nservice: web\nport: {web_port}\nhealthcheck:\n  path: /health\n  interval: 1s\n  timeout: 1s\n{deploy}"
    );
    (compose, service)
}

async fn via_gateway(client: &reqwest::Client, gw: std::net::SocketAddr) -> Result<String, String> {
    let r = client
        .get(format!("http://{gw}/"))
        .header("host", HOST)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = r.status();
    let body = r.text().await.map_err(|e| e.to_string())?;
    if status == StatusCode::OK {
        Ok(body)
    } else {
        Err(format!("{status}: {body}"))
    }
}

async fn until_answer(app: &TestApp, want: &str) {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = via_gateway(&client, app.gateway.expect("gateway")).await;
        if got.as_deref() == Ok(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway never answered {want:?}: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn open_ws(app: &TestApp) -> Ws {
    let gw = app.gateway.expect("gateway");
    let mut req = format!("ws://{gw}/ws")
        .into_client_request()
        .expect("request");
    req.headers_mut()
        .insert("host", HOST.parse().expect("host"));
    let (ws, resp) = tokio_tungstenite::connect_async(req)
        .await
        .expect("websocket through the gateway");
    assert_eq!(resp.status(), 101);
    ws
}

async fn echo(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text.to_string()))
        .await
        .expect("send on the websocket");
    let got = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("an echo within 5 s")
        .expect("the websocket is open")
        .expect("a frame");
    assert_eq!(got, Message::text(text.to_string()));
}

async fn releases(app: &TestApp, name: &str) -> Vec<Value> {
    let v = app
        .get_json(&format!("/api/v1/deployments/{name}/releases"))
        .await;
    v["items"].as_array().expect("items").clone()
}

async fn until_drained(app: &TestApp, name: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = app.get_json(&format!("/api/v1/deployments/{name}")).await;
        if v["draining"].as_array().is_some_and(|d| d.is_empty()) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "old instances never drained: {v}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Whether any process runs a command line holding `needle`.
fn processes_with(needle: &str) -> usize {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .filter(|c| String::from_utf8_lossy(c).contains(needle))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeploys_switch_without_a_failed_request_or_a_closed_websocket() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let script = app_script(dir.path());
    let (web_port, api_port) = (unused_port(), unused_port());
    let (compose, service) = files(&script, "1", web_port, api_port, "", "");
    let (s, v) = send(
        &app,
        Method::POST,
        "/api/v1/deployments",
        Some(json!({"name": "rel", "compose": compose, "service": service})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["strategy"], "blue-green", "{v}");
    assert_eq!(v["release"], 1, "{v}");
    let first_port = v["port"].as_u64().expect("port");
    assert_ne!(
        first_port,
        u64::from(web_port),
        "each instance gets a port of its own"
    );
    until_answer(&app, "release 1 release api-1").await;

    let load = GatewayLoad::start(app.gateway.expect("gateway"), HOST, 4);
    let mut sockets = Vec::new();
    for _ in 0..5 {
        let mut ws = open_ws(&app).await;
        echo(&mut ws, "before").await;
        sockets.push(ws);
    }
    for release in 2..=4 {
        let (compose, _) = files(&script, &release.to_string(), web_port, api_port, "", "");
        let started = Instant::now();
        let (s, v) = send(
            &app,
            Method::PUT,
            "/api/v1/deployments/rel",
            Some(json!({ "compose": compose })),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["release"], release, "{v}");
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{:?}",
            started.elapsed()
        );
        until_answer(&app, &format!("release {release} release api-{release}")).await;
        // The sockets opened before stay with their instance, open.
        for ws in &mut sockets {
            echo(ws, &format!("during {release}")).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (ok, failures) = load.finish().await;
    assert!(
        failures.is_empty(),
        "{} failed of {}: {:?}",
        failures.len(),
        ok + failures.len() as u64,
        &failures[..failures.len().min(5)]
    );
    assert!(ok > 50, "the load ran ({ok} requests)");

    // The first instance still serves its sockets; once they close it drains.
    let v = app.get_json("/api/v1/deployments/rel").await;
    assert!(
        !v["draining"].as_array().expect("draining").is_empty(),
        "{v}"
    );
    for mut ws in sockets {
        echo(&mut ws, "last").await;
        ws.close(None).await.expect("close");
    }
    let v = until_drained(&app, "rel").await;
    assert_eq!(v["release"], 4);
    assert_eq!(v["instance"]["release"], 4, "{v}");
    // Only the live instance's two services still run.
    let deadline = Instant::now() + Duration::from_secs(10);
    while processes_with(&script) != 2 {
        assert!(
            Instant::now() < deadline,
            "old instances still run: {}",
            processes_with(&script)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let list = releases(&app, "rel").await;
    let states: Vec<(u64, &str)> = list
        .iter()
        .map(|r| {
            (
                r["number"].as_u64().expect("number"),
                r["state"].as_str().expect("state"),
            )
        })
        .collect();
    assert_eq!(
        states,
        [
            (4, "live"),
            (3, "replaced"),
            (2, "replaced"),
            (1, "replaced")
        ]
    );
    assert_eq!(list[0]["strategy"], "blue-green");

    // The route points at the live instance only.
    let route = app.get_json("/api/v1/upstreams/deploy-rel").await;
    let targets = route["targets"].as_array().expect("targets");
    assert_eq!(targets.len(), 1, "{route}");
    assert_eq!(targets[0]["url"], format!("http://127.0.0.1:{}", v["port"]));

    let (s, _) = send(&app, Method::DELETE, "/api/v1/deployments/rel", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_eq!(processes_with(&script), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_release_is_dropped_and_a_rollback_restores_an_earlier_one() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let script = app_script(dir.path());
    let (web_port, api_port) = (unused_port(), unused_port());
    let deploy = "deploy:\n  health_timeout: 3s\n  drain_timeout: 10s\n";
    let (compose1, service) = files(&script, "1", web_port, api_port, "", deploy);
    let (s, v) = send(
        &app,
        Method::POST,
        "/api/v1/deployments",
        Some(json!({"name": "fall", "compose": compose1, "service": service})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    until_answer(&app, "release 1 release api-1").await;
    let (compose2, _) = files(&script, "2", web_port, api_port, "", deploy);
    let (s, v) = send(
        &app,
        Method::PUT,
        "/api/v1/deployments/fall",
        Some(json!({ "compose": compose2 })),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    until_answer(&app, "release 2 release api-2").await;
    let live_key = v["instance"]["key"].clone();

    // Release 3 never passes its health check: dropped within its 3 s, with no
    // failed request meanwhile.
    let load = GatewayLoad::start(app.gateway.expect("gateway"), HOST, 3);
    let (compose3, _) = files(
        &script,
        "3",
        web_port,
        api_port,
        "      FAIL_HEALTH: \"1\"\n",
        deploy,
    );
    let started = Instant::now();
    let (s, v) = send(
        &app,
        Method::PUT,
        "/api/v1/deployments/fall",
        Some(json!({ "compose": compose3 })),
    )
    .await;
    let took = started.elapsed();
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(v["code"], "RELEASE_FAILED", "{v}");
    assert!(
        v["error"].as_str().expect("text").contains("/health"),
        "{v}"
    );
    assert_eq!(v["details"]["release"], 3);
    assert_eq!(v["details"]["saved"], true);
    assert!(took < Duration::from_secs(30), "dropped after {took:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (ok, failures) = load.finish().await;
    assert!(failures.is_empty(), "{failures:?}");
    assert!(ok > 10);
    until_answer(&app, "release 2 release api-2").await;
    let v = app.get_json("/api/v1/deployments/fall").await;
    assert_eq!(v["release"], 2, "{v}");
    assert_eq!(v["instance"]["key"], live_key, "{v}");
    let list = releases(&app, "fall").await;
    assert_eq!(list[0]["number"], 3);
    assert_eq!(list[0]["state"], "failed");
    assert!(
        list[0]["error"].as_str().expect("text").contains("503"),
        "{}",
        list[0]
    );
    // The failed instance was stopped (and release 1's, drained, too).
    let deadline = Instant::now() + Duration::from_secs(15);
    while processes_with(&script) != 2 {
        assert!(
            Instant::now() < deadline,
            "instances other than the serving one still run: {}",
            processes_with(&script)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The drop is an event (events are written in the background).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let events = app
            .get_json("/api/v1/events?type=deployment.release_failed")
            .await;
        let items = events["items"].as_array().expect("items");
        if let Some(e) = items.first() {
            assert_eq!(e["severity"], "warning", "{e}");
            assert_eq!(e["details"]["release"], 3, "{e}");
            assert!(
                e["message"].as_str().expect("message").contains("503"),
                "{e}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no deployment.release_failed event"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Roll back (to release 1, the newest before the one serving): files,
    // answer and route come back together, within 5 s.
    let routes_before = app.get_json("/api/v1/routes/deploy-fall").await;
    let started = Instant::now();
    let (s, v) = send(
        &app,
        Method::POST,
        "/api/v1/deployments/fall/rollback",
        Some(json!({})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    until_answer(&app, "release 1 release api-1").await;
    let took = started.elapsed();
    assert!(took <= Duration::from_secs(5), "rollback took {took:?}");
    assert_eq!(
        v["compose"],
        json!(compose1),
        "the files are release 1's again"
    );
    assert_eq!(v["release"], 4);
    let list = releases(&app, "fall").await;
    assert_eq!(list[0]["rollback_of"], 1);
    assert_eq!(list[0]["state"], "live");
    let one = list.iter().find(|r| r["number"] == 1).expect("release 1");
    assert_eq!(list[0]["compose_sha256"], one["compose_sha256"]);
    assert_eq!(list[0]["service_sha256"], one["service_sha256"]);
    let routes_after = app.get_json("/api/v1/routes/deploy-fall").await;
    assert_eq!(routes_after["hosts"], routes_before["hosts"]);
    assert_eq!(routes_after["rate_limit"], routes_before["rate_limit"]);
    let (s, r) = send(
        &app,
        Method::GET,
        "/api/v1/deployments/fall/releases/1",
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(r["compose"], json!(compose1));

    // Explicit: back to 2; a release that does not exist is a 404.
    let (s, v) = send(
        &app,
        Method::POST,
        "/api/v1/deployments/fall/rollback",
        Some(json!({"release": 99})),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    let (s, v) = send(
        &app,
        Method::POST,
        "/api/v1/deployments/fall/rollback",
        Some(json!({"release": 2})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    until_answer(&app, "release 2 release api-2").await;

    // Every step is in the audit log.
    let audit = app
        .get_json("/api/v1/audit?target_type=deployment&action=deployment.rollback")
        .await;
    let actions: Vec<&str> = audit["items"]
        .as_array()
        .expect("test value")
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert_eq!(
        actions
            .iter()
            .filter(|a| **a == "deployment.rollback")
            .count(),
        2,
        "{actions:?}"
    );
    let (s, _) = send(&app, Method::DELETE, "/api/v1/deployments/fall", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_deployments_release_says_so_and_is_live_again_on_start() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let script = app_script(dir.path());
    let (web_port, api_port) = (unused_port(), unused_port());
    let (compose1, service) = files(&script, "1", web_port, api_port, "", "");
    let (s, v) = send(
        &app,
        Method::POST,
        "/api/v1/deployments",
        Some(json!({"name": "halt", "compose": compose1, "service": service})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    until_answer(&app, "release 1 release api-1").await;
    let list = releases(&app, "halt").await;
    assert_eq!(
        (list[0]["number"].as_u64(), list[0]["state"].as_str()),
        (Some(1), Some("live"))
    );
    assert_eq!(list[0]["ended_at"], Value::Null);

    // Stopped: the release that served says it no longer does.
    let (s, v) = send(&app, Method::POST, "/api/v1/deployments/halt/stop", None).await;
    assert!(s.is_success(), "{s}: {v}");
    let list = releases(&app, "halt").await;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["state"], "stopped", "{}", list[0]);
    assert!(list[0]["ended_at"].is_string(), "{}", list[0]);
    let (s, one) = send(
        &app,
        Method::GET,
        "/api/v1/deployments/halt/releases/1",
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(one["state"], "stopped");

    // Started again with the same files: the same release is live again.
    let (s, v) = send(&app, Method::POST, "/api/v1/deployments/halt/start", None).await;
    assert!(s.is_success(), "{s}: {v}");
    until_answer(&app, "release 1 release api-1").await;
    let list = releases(&app, "halt").await;
    assert_eq!(list.len(), 1, "a restart is no new release");
    assert_eq!(list[0]["state"], "live", "{}", list[0]);
    assert_eq!(list[0]["ended_at"], Value::Null, "{}", list[0]);

    // Stopped, given new files, started: the new release is live and the
    // stopped one is replaced.
    let (s, _) = send(&app, Method::POST, "/api/v1/deployments/halt/stop", None).await;
    assert!(s.is_success());
    let (compose2, _) = files(&script, "2", web_port, api_port, "", "");
    let (s, v) = send(
        &app,
        Method::PUT,
        "/api/v1/deployments/halt",
        Some(json!({ "compose": compose2 })),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(releases(&app, "halt").await[0]["state"], "stopped");
    let (s, v) = send(&app, Method::POST, "/api/v1/deployments/halt/start", None).await;
    assert!(s.is_success(), "{s}: {v}");
    until_answer(&app, "release 2 release api-2").await;
    let states: Vec<(u64, String)> = releases(&app, "halt")
        .await
        .iter()
        .map(|r| {
            (
                r["number"].as_u64().expect("number"),
                r["state"].as_str().expect("state").to_string(),
            )
        })
        .collect();
    assert_eq!(
        states,
        [(2, "live".to_string()), (1, "replaced".to_string())]
    );
    let (s, _) = send(&app, Method::DELETE, "/api/v1/deployments/halt", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    app.stop().await;
}

#[tokio::test]
async fn a_service_that_keeps_exiting_drops_its_release_without_waiting_out_the_health_timeout() {
    let app = crate::support::spawn_app().await;
    let port = unused_port();
    let started = std::time::Instant::now();
    let r = app
        .admin(reqwest::Method::POST, "/api/v1/deployments")
        .json(&serde_json::json!({
            "name": "crashloop",
            "compose": format!("services:\n  web:\n    command: [\"sh\", \"-c\", \"exit 3\"]\n    ports: [\"127.0.0.1:{port}:{port}\"]\n    restart: always\n"),
        }))
        .send()
        .await
        .expect("create");
    let status = r.status();
    let body: serde_json::Value = r.json().await.expect("json");
    assert!(
        status.is_client_error() || status.is_server_error(),
        "{status} {body}"
    );
    assert_eq!(body["code"], "RELEASE_FAILED", "{body}");
    let error = body["error"].as_str().expect("error");
    assert!(error.contains("service web keeps exiting"), "{error}");
    assert!(error.contains("exited with status 3"), "{error}");
    // Well under the 30 s health timeout.
    assert!(started.elapsed() < std::time::Duration::from_secs(25));
    app.stop().await;
}
