//! Deployments on an edge, by command from the manager: a real manager and a
//! real `fleetgate::start_edge` registered with it; a small app (a copy of
//! bench/lib/release_app.py, listening on `$PORT`) deployed on the edge with
//! the process driver through `/api/v1/nodes/{id}/deployments`, reached through
//! the EDGE's gateway by its Host header (not the manager's), kept served when
//! the manager sends a new snapshot, its status, logs and releases read through
//! the manager; a redeploy switched blue-green under load without a failed
//! request, a rollback, stop, delete (unrouted on the edge); files that do not
//! check answered with file, line and field; viewers and users limited to other
//! nodes refused; every change audited without the files.

use std::time::{Duration, Instant};

use fleetgate::RunningEdge;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::edge_sync::{create_node, edge_config, node_until};
use crate::support::{send, unused_port, GatewayLoad, TestApp};

const HOST: &str = "edge-app.example.test";

/// A copy of bench/lib/release_app.py of the test's own.
fn app_script(dir: &std::path::Path) -> String {
    let source =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/lib/release_app.py");
    let copy = dir.join("release_app.py");
    std::fs::copy(&source, &copy).expect("bench/lib/release_app.py");
    copy.display().to_string()
}

/// `web` listens on `$PORT` and answers `release <release>`.
fn files(app: &str, release: &str, port: u16) -> (String, String) {
    let compose = format!(
        "services:\n  web:\n    command: [\"python3\", \"-u\", \"{app}\", \"$PORT\"]\n    environment:\n      RELEASE: \"{release}\"\n      GRACE: \"1\"\n"
    );
    let service = format!(
        "domains: [{HOST}]\nport: {port}\nhealthcheck:\n  path: /health\n  interval: 1s\n  timeout: 1s\ndeploy:\n  drain_timeout: 5s\n"
    );
    (compose, service)
}

/// GET `/` through the edge's gateway with the app's Host header.
async fn via_edge(client: &reqwest::Client, edge: &RunningEdge) -> Result<String, String> {
    let r = client
        .get(format!("http://{}/", edge.gateway_addr))
        .header("host", HOST)
        .timeout(Duration::from_secs(5))
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

async fn until_edge(edge: &RunningEdge, what: &str, ok: impl Fn(&Result<String, String>) -> bool) {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = via_edge(&client, edge).await;
        if ok(&got) {
            return;
        }
        assert!(Instant::now() < deadline, "the edge never {what}: {got:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn as_key(
    app: &TestApp,
    key: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> StatusCode {
    let mut req = app.anon(method, path).bearer_auth(key);
    if let Some(b) = body {
        req = req.json(&b);
    }
    req.send().await.expect("request").status()
}

async fn until_deployment(
    app: &TestApp,
    path: &str,
    what: &str,
    ok: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (s, v) = send(app, Method::GET, path, None).await;
        if s == StatusCode::OK && ok(&v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "deployment never {what}: {s} {v}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_is_deployed_on_an_edge_by_command_and_served_by_the_edges_gateway() {
    let (app, _mdir) = crate::edge_sync::start_unlimited_manager().await;
    let (node, token) = create_node(&app, "deploy-edge").await;
    let edir = tempfile::tempdir().expect("tempdir");
    let mut edge = fleetgate::start_edge(
        edge_config(&app, edir.path(), Some(token)),
        std::future::pending(),
    )
    .await
    .expect("edge starts");
    node_until(&app, &node, "online", |v| v["status"] == "online").await;
    let base = format!("/api/v1/nodes/{node}/deployments");
    let one = format!("{base}/web");
    let scratch = tempfile::tempdir().expect("tempdir");
    let script = app_script(scratch.path());
    let port = unused_port();

    // Files that do not check: the edge's problems, with file, line and field.
    let (s, v) = send(
        &app,
        Method::POST,
        &base,
        Some(json!({"name": "web", "compose": "services:\n  web:\n    comand: [x]\n", "service": ""})),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["code"], "VALIDATION_FAILED", "{v}");
    let problems = v["details"]["problems"].as_array().expect("problems");
    assert!(
        problems.iter().any(|p| p["file"] == "compose.yml"
            && p["line"] == 3
            && p["field"] == "services.web.comand"),
        "{v}"
    );
    let (compose, _) = files(&script, "1", port);
    let (s, v) = send(
        &app,
        Method::POST,
        &base,
        Some(json!({"name": "web", "compose": compose, "service": "domains: [not a domain!]\n"})),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["details"]["problems"][0]["file"], "service.yml", "{v}");
    assert_eq!(v["details"]["problems"][0]["line"], 1, "{v}");

    for bad in ["", "Not_A_Name"] {
        let (s, v) = send(
            &app,
            Method::POST,
            &base,
            Some(json!({"name": bad, "compose": compose})),
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad:?}: {v}");
        assert_eq!(v["details"]["field"], "name", "{v}");
    }

    // Deployed: started, health-checked and routed on the edge before the answer.
    let (compose, service) = files(&script, "1", port);
    let (s, v) = send(
        &app,
        Method::POST,
        &base,
        Some(json!({"name": "web", "compose": compose, "service": service})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["driver"], "process", "{v}");
    assert_eq!(v["status"], "running", "{v}");
    assert_eq!(v["release"], 1, "{v}");
    assert_eq!(v["strategy"], "blue-green", "{v}");
    assert_eq!(v["proxy"]["route_id"], "edge-deploy-web", "{v}");
    assert_eq!(v["proxy"]["served"], true, "{v}");
    assert!(v.get("compose").is_none(), "{v}");
    let client = reqwest::Client::new();
    assert_eq!(via_edge(&client, &edge).await.as_deref(), Ok("release 1"));
    // The manager's own gateway knows nothing of it.
    let gw = app.gateway.expect("manager gateway");
    let r = client
        .get(format!("http://{gw}/"))
        .header("host", HOST)
        .send()
        .await
        .expect("manager gateway");
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // Its state, files and logs, read through the manager.
    let (s, v) = send(&app, Method::GET, &one, None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["compose"], compose, "operators see the files");
    assert_eq!(v["services"][0]["name"], "web");
    assert!(v["services"][0]["pid"].as_u64().is_some(), "{v}");
    let list = app.get_json(&base).await;
    assert_eq!(list["total"], 1, "{list}");
    assert_eq!(list["items"][0]["name"], "web");
    let logs = until_deployment(&app, &format!("{one}/logs?tail=50"), "logged", |v| {
        v["items"].as_array().is_some_and(|l| {
            l.iter().any(|l| {
                l["stream"] == "stdout" && l["line"].as_str().unwrap_or("").contains("listening on")
            })
        })
    })
    .await;
    assert!(
        logs["items"]
            .as_array()
            .expect("items")
            .iter()
            .any(|l| l["stream"] == "fleetgate"),
        "{logs}"
    );
    let (s, v) = send(&app, Method::GET, &format!("{one}/logs?tail=5000"), None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, v) = send(&app, Method::GET, &format!("{one}/logs?service=nope"), None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");

    // A new snapshot from the manager keeps the deployment served on the edge.
    let up = crate::upstream::spawn("svc").await;
    let (s, v) = send(
        &app,
        Method::POST,
        "/api/v1/routes",
        Some(json!({"id": "managed", "path": "/", "hosts": ["managed.example.test"], "upstream": up.url()})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let revision = app.running.as_ref().expect("running").state.revision();
    node_until(&app, &node, "applied the new route", |v| {
        v["config"]["applied_revision"] == revision
    })
    .await;
    let r = client
        .get(format!("http://{}/", edge.gateway_addr))
        .header("host", "managed.example.test")
        .send()
        .await
        .expect("managed route");
    assert_eq!(r.status(), StatusCode::OK, "the manager's route is served");
    assert_eq!(via_edge(&client, &edge).await.as_deref(), Ok("release 1"));

    // A manager route matching the same requests wins on the edge: the
    // deployment is left out (said in its view and by an event), and served
    // again once the manager's route is gone.
    let (s, v) = send(
        &app,
        Method::POST,
        "/api/v1/routes",
        Some(json!({"id": "clash", "path": "/", "hosts": [HOST], "upstream": up.url()})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let revision = app.running.as_ref().expect("running").state.revision();
    node_until(&app, &node, "applied the clashing route", |v| {
        v["config"]["applied_revision"] == revision
    })
    .await;
    let served = via_edge(&client, &edge).await.expect("the manager's route");
    assert_ne!(served, "release 1");
    let v = app.get_json(&one).await;
    assert_eq!(v["proxy"]["served"], false, "{v}");
    assert!(
        v["proxy"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("manager")),
        "{v}"
    );
    let events = until_deployment(
        &app,
        &format!("/api/v1/events?node_id={node}&category=deployment"),
        "reported",
        |v| v["items"].as_array().is_some_and(|i| !i.is_empty()),
    )
    .await;
    assert_eq!(events["items"][0]["severity"], "warning", "{events}");
    let (s, _) = send(&app, Method::DELETE, "/api/v1/routes/clash", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    until_edge(&edge, "served the deployment again", |r| {
        r.as_deref() == Ok("release 1")
    })
    .await;
    assert_eq!(app.get_json(&one).await["proxy"]["served"], true);

    // Redeployed under load: blue-green on the edge, no request fails.
    let load = GatewayLoad::start(edge.gateway_addr, HOST, 2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (compose2, _) = files(&script, "2", port);
    let (s, v) = send(
        &app,
        Method::PUT,
        &one,
        Some(json!({ "compose": compose2 })),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        (v["release"].clone(), v["version"].clone()),
        (json!(2), json!(2)),
        "{v}"
    );
    assert_eq!(via_edge(&client, &edge).await.as_deref(), Ok("release 2"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (ok, failures) = load.finish().await;
    assert!(ok > 10, "{ok} requests");
    assert!(
        failures.is_empty(),
        "{} failed: {failures:?}",
        failures.len()
    );
    until_deployment(&app, &one, "drained", |v| {
        v["draining"].as_array().is_some_and(|d| d.is_empty())
    })
    .await;

    // If-Match of another version, and new files that do not check: refused,
    // release 2 serves on.
    let r = app
        .admin(Method::PUT, &one)
        .header("if-match", "\"1\"")
        .json(&json!({ "compose": compose }))
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), StatusCode::PRECONDITION_FAILED);
    let (s, v) = send(
        &app,
        Method::PUT,
        &one,
        Some(json!({"service": "domains: [edge-app.example.test]\nport: nope\n"})),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let problem = &v["details"]["problems"][0];
    assert_eq!(
        (
            problem["file"].as_str(),
            problem["line"].as_u64(),
            problem["field"].as_str()
        ),
        (Some("service.yml"), Some(2), Some("port")),
        "{v}"
    );
    assert_eq!(via_edge(&client, &edge).await.as_deref(), Ok("release 2"));

    // Rolled back: release 1's files serve again, as release 3.
    let (s, v) = send(&app, Method::POST, &format!("{one}/rollback"), None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["release"], 3, "{v}");
    assert_eq!(via_edge(&client, &edge).await.as_deref(), Ok("release 1"));
    let releases = app.get_json(&format!("{one}/releases")).await;
    let items = releases["items"].as_array().expect("items");
    assert_eq!(items.len(), 3, "{releases}");
    assert_eq!(
        (items[0]["number"].clone(), items[0]["state"].clone()),
        (json!(3), json!("live"))
    );
    assert_eq!(items[0]["rollback_of"], 1);
    assert_eq!(items[0]["compose_sha256"], items[2]["compose_sha256"]);
    assert_eq!(items[1]["state"], "replaced");

    // The edge restarts: its deployments run and are served again.
    edge.shutdown().await.expect("edge stops");
    edge = fleetgate::start_edge(edge_config(&app, edir.path(), None), std::future::pending())
        .await
        .expect("edge starts again");
    until_edge(&edge, "served after a restart", |r| {
        r.as_deref() == Ok("release 1")
    })
    .await;
    node_until(&app, &node, "online again", |v| v["status"] == "online").await;

    // Viewers read, never change; a user limited to another node gets 403.
    let viewer = app.key_for_role("viewer-edge", "viewer").await;
    let r = app
        .anon(Method::GET, &one)
        .bearer_auth(&viewer)
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.expect("json");
    assert!(v.get("compose").is_none() && v["name"] == "web", "{v}");
    for (method, path) in [
        (Method::POST, format!("{one}/stop")),
        (Method::POST, format!("{one}/restart")),
        (Method::DELETE, one.clone()),
    ] {
        assert_eq!(
            as_key(&app, &viewer, method, &path, None).await,
            StatusCode::FORBIDDEN
        );
    }
    assert_eq!(
        as_key(
            &app,
            &viewer,
            Method::POST,
            &base,
            Some(json!({"name": "x", "compose": compose}))
        )
        .await,
        StatusCode::FORBIDDEN
    );
    let (other, _) = create_node(&app, "other-edge").await;
    let limited = crate::nodes::limited_key(&app, "limited-edge", &[&other]).await;
    for (method, path) in [
        (Method::GET, base.clone()),
        (Method::GET, one.clone()),
        (Method::POST, format!("{one}/stop")),
    ] {
        assert_eq!(
            as_key(&app, &limited, method, &path, None).await,
            StatusCode::FORBIDDEN
        );
    }
    // The other node is not connected: 502, as other node commands.
    let r = app
        .anon(Method::GET, &format!("/api/v1/nodes/{other}/deployments"))
        .bearer_auth(&limited)
        .send()
        .await
        .expect("list");
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    // Changes go through these endpoints only (which audit them).
    let (s, v) = send(
        &app,
        Method::POST,
        &format!("/api/v1/nodes/{node}/command"),
        Some(json!({"action": {"type": "stop_deployment", "name": "web"}})),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, v) = send(&app, Method::GET, &format!("{base}/nope"), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");

    // Stopped: the app is down, the route stays.
    let (s, v) = send(&app, Method::POST, &format!("{one}/stop"), None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        (v["status"].as_str(), v["desired"].as_str()),
        (Some("stopped"), Some("stopped")),
        "{v}"
    );
    until_edge(&edge, "stopped serving", |r| r.is_err()).await;
    let (s, v) = send(&app, Method::POST, &format!("{one}/start"), None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    until_edge(&edge, "served again", |r| r.as_deref() == Ok("release 1")).await;

    // Deleted: unrouted on the edge (404 there), gone from the list.
    let (s, _) = send(&app, Method::DELETE, &one, None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let r = client
        .get(format!("http://{}/", edge.gateway_addr))
        .header("host", HOST)
        .send()
        .await
        .expect("edge");
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(app.get_json(&base).await["total"], 0);
    let (s, _) = send(&app, Method::GET, &one, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // Every change audited, with digests, never the files.
    let audit = app
        .get_json("/api/v1/audit?target_type=node_deployment&limit=100")
        .await;
    let items = audit["items"].as_array().expect("items");
    let actions: Vec<&str> = items.iter().filter_map(|e| e["action"].as_str()).collect();
    for a in [
        "node.deployment.create",
        "node.deployment.update",
        "node.deployment.rollback",
        "node.deployment.stop",
        "node.deployment.start",
        "node.deployment.delete",
    ] {
        assert!(actions.contains(&a), "{a} in {actions:?}");
    }
    let target = format!("{node}/web");
    assert!(
        items.iter().all(|e| e["target_id"] == target.as_str()),
        "{audit}"
    );
    let text = audit.to_string();
    assert!(text.contains("compose_sha256"), "{text}");
    assert!(
        !text.contains("release_app.py"),
        "files are not audited: {text}"
    );

    // Documented, with their error codes and the edge's deployment schema.
    let spec: Value = app
        .anon(Method::GET, "/api/v1/openapi.json")
        .send()
        .await
        .expect("openapi")
        .json()
        .await
        .expect("json");
    let paths = &spec["paths"];
    for (path, method, code) in [
        ("/api/v1/nodes/{id}/deployments", "post", "400"),
        ("/api/v1/nodes/{id}/deployments", "get", "502"),
        ("/api/v1/nodes/{id}/deployments/{name}", "put", "412"),
        ("/api/v1/nodes/{id}/deployments/{name}", "delete", "504"),
        (
            "/api/v1/nodes/{id}/deployments/{name}/rollback",
            "post",
            "422",
        ),
        ("/api/v1/nodes/{id}/deployments/{name}/logs", "get", "404"),
        (
            "/api/v1/nodes/{id}/deployments/{name}/releases",
            "get",
            "200",
        ),
    ] {
        assert!(
            paths[path][method]["responses"][code].is_object(),
            "{method} {path} {code}"
        );
    }
    for schema in [
        "EdgeDeployment",
        "EdgeRelease",
        "EdgeLogs",
        "CreateEdgeDeployment",
    ] {
        assert!(
            spec["components"]["schemas"][schema].is_object(),
            "{schema}"
        );
    }

    edge.shutdown().await.expect("edge stops");
    app.stop().await;
}
