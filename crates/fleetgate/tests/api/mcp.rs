//! Agents' MCP tools over the API, against scripts/fake-mcp.mjs run over stdio
//! (the manager starts it from the registered command) and over streamable
//! HTTP (the test starts it), with the local fake provider: listings filtered
//! by the access rules, runs whose model calls an allowed tool (the result in
//! the trace and its OpenTelemetry export) and a denied one (refused, never
//! sent: the server's call log says so), a tool that hangs (a timeout, not a
//! hung run), hostile output (too big, not JSON, a crashing server with its
//! stderr in the step's error), bad registrations (400 naming the field) and
//! secrets never shown.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fleetgate_test_support::fake_llm::{FakeLlm, FakeUsage, Reply};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::io::AsyncBufReadExt;

use crate::support::{put_settings, send, spawn_app, TestApp};

const KEY: &str = "sk-mcp-test-0123456789";
const ENV_SECRET: &str = "env-secret-QWERTY-4242";
const HEADER_SECRET: &str = "Bearer mcp-header-secret-777";

fn script() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../scripts/fake-mcp.mjs")
        .to_string_lossy()
        .into_owned()
}

/// The calls a fake server logged: (tool name, arguments, authorization).
fn calls(log: &Path) -> Vec<(String, Value, Option<String>)> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|v| {
            (
                v["name"].as_str().unwrap_or("").to_string(),
                v["arguments"].clone(),
                v["authorization"].as_str().map(str::to_string),
            )
        })
        .collect()
}

fn usage() -> FakeUsage {
    FakeUsage {
        input: 100,
        output: 20,
        ..Default::default()
    }
}

async fn setup() -> (TestApp, FakeLlm, tempfile::TempDir) {
    let app = spawn_app().await;
    put_settings(&app, json!({"webhooks": {"allow_private_targets": true}})).await;
    let fake = FakeLlm::start(Some(KEY)).await;
    let (status, v) = send(
        &app,
        Method::POST,
        "/api/v1/ai/providers",
        Some(json!({"name": "p", "kind": "openai", "base_url": fake.openai_url(), "api_key": KEY})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    (app, fake, tempfile::tempdir().expect("tempdir"))
}

/// Registers the stdio fake as `name`, logging its calls to `log`.
async fn stdio_server(app: &TestApp, name: &str, log: &Path, extra: Value) -> Value {
    let mut body = json!({
        "name": name, "transport": "stdio", "command": "node", "args": [script()],
        "env": {"FAKE_MCP_LOG": log.to_string_lossy(), "FAKE_MCP_TOKEN": ENV_SECRET},
        "allow": ["*"], "deny": ["delete_*"], "timeout_ms": 5000,
    });
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            b.insert(k.clone(), v.clone());
        }
    }
    let (status, v) = send(app, Method::POST, "/api/v1/mcp-servers", Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    v
}

/// An active agent with these tools.
async fn agent(app: &TestApp, name: &str, tools: Value) -> String {
    let (status, v) = send(
        app,
        Method::POST,
        "/api/v1/agents",
        Some(json!({"name": name, "model": "gpt-4o-mini", "tools": tools})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let id = v["id"].as_str().expect("id").to_string();
    for to in ["testing", "active"] {
        let (status, v) = send(
            app,
            Method::POST,
            &format!("/api/v1/agents/{id}/lifecycle"),
            Some(json!({"status": to})),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{v}");
    }
    id
}

async fn run(app: &TestApp, id: &str) -> Value {
    let (status, v) = send(
        app,
        Method::POST,
        &format!("/api/v1/agents/{id}/runs"),
        Some(json!({"input": "go"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    v
}

fn steps(r: &Value) -> Vec<Value> {
    r["steps"].as_array().cloned().unwrap_or_default()
}

/// The names of the tools the model was offered in its first request.
fn offered(fake: &FakeLlm) -> Vec<String> {
    let first = fake.requests().first().cloned().expect("a model request");
    let mut names: Vec<String> = first.body["tools"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|t| t["function"]["name"].as_str().map(str::to_string))
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn registrations_are_validated_and_secrets_never_shown() {
    let (app, _fake, dir) = setup().await;
    let log = dir.path().join("calls.jsonl");
    for (body, field) in [
        (
            json!({"name": "bad name", "transport": "stdio", "command": "node"}),
            "name",
        ),
        (
            json!({"name": "x", "transport": "carrier-pigeon"}),
            "transport",
        ),
        (json!({"name": "x", "transport": "stdio"}), "command"),
        (
            json!({"name": "x", "transport": "stdio", "command": "node", "url": "http://127.0.0.1:1/mcp"}),
            "url",
        ),
        (
            json!({"name": "x", "transport": "stdio", "command": "node", "env": {"1BAD": "v"}}),
            "env.1BAD",
        ),
        (
            json!({"name": "x", "transport": "stdio", "command": "node", "env": {"PATH": "/tmp"}}),
            "env.PATH",
        ),
        (
            json!({"name": "x", "transport": "stdio", "command": "node", "allow": ["ok", "no spaces"]}),
            "allow[1]",
        ),
        (
            json!({"name": "x", "transport": "stdio", "command": "node", "deny": [""]}),
            "deny[0]",
        ),
        (
            json!({"name": "x", "transport": "stdio", "command": "node", "timeout_ms": 5}),
            "timeout_ms",
        ),
        (json!({"name": "x", "transport": "http"}), "url"),
        (
            json!({"name": "x", "transport": "http", "url": "ftp://127.0.0.1/mcp"}),
            "url",
        ),
        (
            json!({"name": "x", "transport": "http", "url": "http://127.0.0.1:1/mcp", "command": "node"}),
            "command",
        ),
        (
            json!({"name": "x", "transport": "http", "url": "http://127.0.0.1:1/mcp", "headers": {"bad header": "v"}}),
            "headers.bad header",
        ),
    ] {
        let (status, e) = send(
            &app,
            Method::POST,
            "/api/v1/mcp-servers",
            Some(body.clone()),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body} -> {e}");
        assert_eq!(e["details"]["field"], field, "{body} -> {e}");
    }
    let (status, e) = send(
        &app,
        Method::POST,
        "/api/v1/mcp-servers",
        Some(json!({"name": "x", "transport": "stdio", "command": "node", "surprise": 1})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{e}");

    // A stdio server runs a command on the manager's host: an admin may not
    // register one (a super admin may), but may register an HTTP one.
    let admin = app.key_for_role("mcp-admin", "admin").await;
    let r = app
        .anon(Method::POST, "/api/v1/mcp-servers")
        .bearer_auth(&admin)
        .json(&json!({"name": "sneaky", "transport": "stdio", "command": "sh"}))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = app
        .anon(Method::POST, "/api/v1/mcp-servers")
        .bearer_auth(&admin)
        .json(&json!({"name": "remote", "transport": "http", "url": "http://127.0.0.1:1/mcp"}))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), StatusCode::CREATED);
    let created = stdio_server(&app, "files", &log, json!({})).await;
    assert_eq!(
        created["env_names"],
        json!(["FAKE_MCP_LOG", "FAKE_MCP_TOKEN"])
    );
    let id = created["id"].as_str().expect("id");
    let (status, dup) = send(
        &app,
        Method::POST,
        "/api/v1/mcp-servers",
        Some(json!({"name": "files", "transport": "stdio", "command": "node"})),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{dup}");
    // An update without env keeps the sealed values; a rename is audited.
    let (status, updated) = send(
        &app,
        Method::PUT,
        &format!("/api/v1/mcp-servers/{id}"),
        Some(
            json!({"name": "files", "transport": "stdio", "command": "node", "args": [script()],
                    "allow": ["echo"], "timeout_ms": 4000}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_eq!(updated["version"], 2);
    assert_eq!(updated["env_names"], created["env_names"]);
    let http = send(
        &app,
        Method::POST,
        "/api/v1/mcp-servers",
        Some(
            json!({"name": "web", "transport": "http", "url": "http://127.0.0.1:1/mcp",
                    "headers": {"Authorization": HEADER_SECRET}, "allow": ["*"]}),
        ),
    )
    .await;
    assert_eq!(http.0, StatusCode::CREATED, "{}", http.1);
    assert_eq!(http.1["header_names"], json!(["authorization"]));
    // Agents name MCP tools as mcp:<server>/<tool>; a wrong one names the field.
    for (tools, field) in [
        (json!(["mcp:nowhere/echo"]), "tools[0]"),
        (json!(["mcp:files"]), "tools[0]"),
        (json!(["mcp:files/echo", "mcp:files/bad tool"]), "tools[1]"),
    ] {
        let (status, e) = send(
            &app,
            Method::POST,
            "/api/v1/agents",
            Some(json!({"name": "a", "model": "gpt-4o-mini", "tools": tools})),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{tools} -> {e}");
        assert_eq!(e["details"]["field"], field, "{tools} -> {e}");
    }
    // Secret values appear in no answer and not in the audit log.
    let shown = [
        app.get_json("/api/v1/mcp-servers").await.to_string(),
        app.get_json(&format!("/api/v1/mcp-servers/{id}"))
            .await
            .to_string(),
        created.to_string(),
        updated.to_string(),
        http.1.to_string(),
    ];
    for text in &shown {
        assert!(
            !text.contains(ENV_SECRET) && !text.contains("header-secret"),
            "{text}"
        );
    }
    let audit = app.get_json("/api/v1/audit?limit=500").await.to_string();
    assert!(!audit.contains(ENV_SECRET) && !audit.contains("header-secret"));
    assert!(audit.contains("mcp_server.create") && audit.contains("mcp_server.update"));
    let (status, _) = send(
        &app,
        Method::DELETE,
        &format!("/api/v1/mcp-servers/{id}"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let audit = app.get_json("/api/v1/audit?limit=500").await.to_string();
    assert!(audit.contains("mcp_server.delete"));
    // The OpenAPI document describes the endpoints.
    let doc = app.get_json("/api/v1/openapi.json").await;
    for path in [
        "/api/v1/mcp-servers",
        "/api/v1/mcp-servers/{id}",
        "/api/v1/mcp-servers/{id}/tools",
    ] {
        assert!(
            doc["paths"][path].is_object(),
            "{path} in the OpenAPI document"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn listing_shows_only_the_tools_the_rules_allow() {
    let (app, fake, dir) = setup().await;
    let log = dir.path().join("calls.jsonl");
    let s = stdio_server(
        &app,
        "files",
        &log,
        json!({"allow": ["*"], "deny": ["delete_*", "hang", "crash", "big"]}),
    )
    .await;
    let listed = app
        .get_json(&format!(
            "/api/v1/mcp-servers/{}/tools",
            s["id"].as_str().expect("id")
        ))
        .await;
    let names: Vec<&str> = listed["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!(names, ["echo", "add", "env_names"], "{listed}");
    assert_eq!(listed["hidden"], 4);
    assert_eq!(listed["tools"][0]["model_name"], "files__echo");
    assert_eq!(listed["tools"][0]["reference"], "mcp:files/echo");
    assert_eq!(
        listed["tools"][0]["input_schema"]["required"],
        json!(["text"])
    );
    // With no allow pattern nothing is allowed.
    let none = stdio_server(&app, "closed", &log, json!({"allow": [], "deny": []})).await;
    let listed = app
        .get_json(&format!(
            "/api/v1/mcp-servers/{}/tools",
            none["id"].as_str().expect("id")
        ))
        .await;
    assert_eq!(listed["tools"], json!([]));
    assert_eq!(listed["hidden"], 7);
    // A command that does not start is a 502 that says why.
    let broken = stdio_server(
        &app,
        "broken",
        &log,
        json!({"command": "/nonexistent/mcp-server", "args": []}),
    )
    .await;
    let r = app
        .admin(
            Method::GET,
            &format!(
                "/api/v1/mcp-servers/{}/tools",
                broken["id"].as_str().expect("id")
            ),
        )
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    let e: Value = r.json().await.expect("json");
    assert_eq!(e["code"], "MCP_SERVER_FAILED", "{e}");
    assert!(
        e["error"]
            .as_str()
            .unwrap_or("")
            .contains("could not be started"),
        "{e}"
    );
    // A run of an agent using it goes on without its tools, the failure in a step.
    let id = agent(&app, "mcp-broken", json!(["mcp:broken/*"])).await;
    fake.push(Reply::text("fine without").usage(usage()));
    let r = run(&app, &id).await;
    assert_eq!(r["status"], "succeeded", "{r}");
    let st = steps(&r);
    assert_eq!(st.len(), 2, "{r}");
    assert_eq!(
        (
            st[0]["kind"].as_str(),
            st[0]["status"].as_str(),
            st[0]["name"].as_str()
        ),
        (Some("tool"), Some("error"), Some("mcp:broken"))
    );
    let e = st[0]["error"].as_str().unwrap_or("");
    assert!(
        e.contains("could not be started") && e.contains("not offered"),
        "{e}"
    );
    assert_eq!(st[1]["kind"], "model");
    assert_eq!(offered(&fake), Vec::<String>::new());
    // Listing calls no tool.
    assert!(calls(&log).is_empty());
    app.stop().await;
}

#[tokio::test]
async fn a_run_calls_allowed_mcp_tools_and_refuses_denied_ones_without_sending_them() {
    let (app, fake, dir) = setup().await;
    let log = dir.path().join("calls.jsonl");
    stdio_server(&app, "files", &log, json!({})).await;
    // The agent names every tool of files; the rules deny delete_*.
    let id = agent(&app, "mcp-runner", json!(["mcp:files/*"])).await;
    fake.push(
        Reply::tool_calls(vec![
            ("files__echo", json!({"text": "hello"})),
            ("files__delete_everything", json!({})),
            ("files__env_names", json!({})),
        ])
        .usage(usage()),
    );
    fake.push(Reply::text("done").usage(usage()));
    let r = run(&app, &id).await;
    assert_eq!(r["status"], "succeeded", "{r}");
    let offered = offered(&fake);
    assert!(offered.contains(&"files__echo".to_string()), "{offered:?}");
    assert!(
        !offered.iter().any(|n| n.contains("delete")),
        "a denied tool was offered: {offered:?}"
    );
    let s = steps(&r);
    assert_eq!(s.len(), 5, "{r}");
    assert_eq!(
        (s[1]["kind"].as_str(), s[1]["status"].as_str()),
        (Some("tool"), Some("ok"))
    );
    assert_eq!(s[1]["name"], "files__echo");
    assert_eq!(s[1]["input"]["arguments"], json!({"text": "hello"}));
    assert_eq!(s[1]["output"]["body"], "echo: hello", "{}", s[1]);
    assert_eq!(s[1]["output"]["mcp_server"], "files");
    assert!(s[1]["latency_ms"].as_i64().is_some());
    assert_eq!(s[2]["status"], "error");
    let refused = s[2]["error"].as_str().unwrap_or("");
    assert!(
        refused.contains("not allowed") && refused.contains("not sent"),
        "{refused}"
    );
    // The server got its environment (and the secret value), nothing else of the manager's.
    let env = s[3]["output"]["body"].as_str().unwrap_or("");
    assert!(
        env.contains("FAKE_MCP_TOKEN") && env.contains("PATH"),
        "{env}"
    );
    assert!(!env.contains("FLEETGATE"), "{env}");
    // The server saw the allowed calls only.
    let seen: Vec<String> = calls(&log).into_iter().map(|c| c.0).collect();
    assert_eq!(seen, ["echo", "env_names"]);
    // The model got the result and the refusal.
    let last = fake.requests().last().expect("request").body.to_string();
    assert!(
        last.contains("echo: hello") && last.contains("not allowed"),
        "{last}"
    );
    // The OpenTelemetry export has the tool spans.
    let rid = r["id"].as_str().expect("run id");
    let trace = app
        .get_json(&format!("/api/v1/runs/{rid}/trace?format=otel"))
        .await
        .to_string();
    assert!(trace.contains("\"gen_ai.tool.name\""), "{trace}");
    assert!(trace.contains("execute_tool files__echo"), "{trace}");
    assert!(trace.contains("fleetgate.mcp.server"), "{trace}");

    // An agent naming one tool only is offered that one, and a call of
    // another tool the rules allow is refused all the same.
    let narrow = agent(&app, "mcp-narrow", json!(["mcp:files/echo"])).await;
    let before = fake.requests().len();
    fake.push(Reply::tool_calls(vec![("files__add", json!({"a": 1, "b": 2}))]).usage(usage()));
    fake.push(Reply::text("ok").usage(usage()));
    let r = run(&app, &narrow).await;
    let first = &fake.requests()[before];
    let names: Vec<&str> = first.body["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .filter_map(|t| t["function"]["name"].as_str())
        .collect();
    assert_eq!(names, ["files__echo"]);
    let s = steps(&r);
    assert_eq!(s[1]["status"], "error", "{r}");
    assert!(s[1]["error"].as_str().unwrap_or("").contains("not allowed"));
    assert_eq!(
        calls(&log).len(),
        2,
        "the add call never reached the server"
    );

    // Rules changed after the version was made apply to the next run.
    let servers = app.get_json("/api/v1/mcp-servers").await;
    let sid = servers["items"][0]["id"].as_str().expect("id");
    let (status, v) = send(
        &app,
        Method::PUT,
        &format!("/api/v1/mcp-servers/{sid}"),
        Some(
            json!({"name": "files", "transport": "stdio", "command": "node", "args": [script()],
                    "allow": ["*"], "deny": ["echo"]}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    fake.push(Reply::tool_calls(vec![("files__echo", json!({"text": "again"}))]).usage(usage()));
    fake.push(Reply::text("ok").usage(usage()));
    let r = run(&app, &narrow).await;
    let s = steps(&r);
    assert_eq!(s[1]["status"], "error", "{r}");
    assert!(s[1]["error"].as_str().unwrap_or("").contains("not allowed"));
    assert_eq!(calls(&log).len(), 2);
    app.stop().await;
}

#[tokio::test]
async fn a_hanging_tool_times_out_and_the_run_ends() {
    let (app, fake, dir) = setup().await;
    let log = dir.path().join("calls.jsonl");
    // A tag in the arguments finds the server's processes afterwards.
    let tag = format!("--tag={}", uuid_like());
    stdio_server(
        &app,
        "slow",
        &log,
        json!({"args": [script(), tag], "timeout_ms": 500}),
    )
    .await;
    let id = agent(&app, "mcp-hang", json!(["mcp:slow/*"])).await;
    fake.push(
        Reply::tool_calls(vec![
            ("slow__hang", json!({})),
            ("slow__echo", json!({"text": "after"})),
        ])
        .usage(usage()),
    );
    fake.push(Reply::text("gave up").usage(usage()));
    let clock = Instant::now();
    let r = run(&app, &id).await;
    assert!(
        clock.elapsed() < Duration::from_secs(10),
        "{:?}",
        clock.elapsed()
    );
    assert_eq!(r["status"], "succeeded", "{r}");
    let s = steps(&r);
    assert_eq!(s[1]["status"], "error");
    let e = s[1]["error"].as_str().unwrap_or("");
    assert!(e.contains("did not answer") && e.contains("500 ms"), "{e}");
    let latency = s[1]["latency_ms"].as_i64().unwrap_or(0);
    assert!((400..5000).contains(&latency), "{latency}");
    // The next call connects anew and works.
    assert_eq!(s[2]["status"], "ok", "{}", s[2]);
    assert_eq!(s[2]["output"]["body"], "echo: after");
    // No server process is left once the run is over.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(processes_with(&tag), 0, "a server process outlived its run");
    app.stop().await;
}

#[tokio::test]
async fn hostile_output_is_cut_refused_or_explained() {
    let (app, fake, dir) = setup().await;
    let log = dir.path().join("calls.jsonl");
    stdio_server(&app, "wild", &log, json!({})).await;
    let id = agent(&app, "mcp-wild", json!(["mcp:wild/*"])).await;
    fake.push(
        Reply::tool_calls(vec![
            ("wild__big", json!({"bytes": 200_000})),
            ("wild__big", json!({"bytes": 3_000_000})),
            ("wild__crash", json!({})),
            ("wild__echo", json!({"text": "still here"})),
            ("wild__echo", json!({"text": 5})),
        ])
        .usage(usage()),
    );
    fake.push(Reply::text("done").usage(usage()));
    let r = run(&app, &id).await;
    assert_eq!(r["status"], "succeeded", "{r}");
    let s = steps(&r);
    // Big but under the message limit: kept, cut to 64 KiB for the model and the trace.
    assert_eq!(s[1]["status"], "ok");
    assert_eq!(
        s[1]["output"]["body"].as_str().map(str::len),
        Some(64 * 1024)
    );
    assert_eq!(s[1]["output"]["truncated"], true);
    // Over the message limit: the connection is dropped with the reason.
    assert_eq!(s[2]["status"], "error");
    let e = s[2]["error"].as_str().unwrap_or("");
    assert!(e.contains("over 1048576 bytes"), "{e}");
    // Not JSON, then an exit: the step says so with the server's stderr.
    assert_eq!(s[3]["status"], "error");
    let e = s[3]["error"].as_str().unwrap_or("");
    assert!(e.contains("fatal: crashed on purpose"), "{e}");
    assert!(e.contains("exited"), "{e}");
    // A later call starts the server again.
    assert_eq!(s[4]["status"], "ok", "{}", s[4]);
    assert_eq!(s[4]["output"]["body"], "echo: still here");
    // Arguments that do not match the tool's schema are refused before sending.
    assert_eq!(s[5]["status"], "error");
    assert!(s[5]["error"]
        .as_str()
        .unwrap_or("")
        .contains("input schema"));
    let seen: Vec<String> = calls(&log).into_iter().map(|c| c.0).collect();
    assert_eq!(seen, ["big", "big", "crash", "echo"]);
    app.stop().await;
}

#[tokio::test]
async fn a_streamable_http_server_is_listed_and_called_with_its_headers() {
    let (app, fake, dir) = setup().await;
    let log = dir.path().join("http-calls.jsonl");
    let mut child = tokio::process::Command::new("node")
        .arg(script())
        .arg("--http")
        .arg("0")
        .env("FAKE_MCP_LOG", &log)
        .env("FAKE_MCP_AUTH", HEADER_SECRET)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the HTTP fake");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let url = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .expect("the fake said where it listens")
        .expect("read")
        .expect("a line");
    let (status, s) = send(
        &app,
        Method::POST,
        "/api/v1/mcp-servers",
        Some(json!({"name": "web", "transport": "http", "url": url,
                    "headers": {"Authorization": HEADER_SECRET},
                    "allow": ["echo", "add", "hang", "big"], "timeout_ms": 800})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{s}");
    assert!(!s.to_string().contains("header-secret"));
    let sid = s["id"].as_str().expect("id");
    let listed = app
        .get_json(&format!("/api/v1/mcp-servers/{sid}/tools"))
        .await;
    let names: Vec<&str> = listed["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!(names, ["echo", "add", "hang", "big"], "{listed}");
    assert_eq!(listed["hidden"], 3);
    let id = agent(&app, "mcp-http", json!(["mcp:web/*"])).await;
    fake.push(
        Reply::tool_calls(vec![
            ("web__add", json!({"a": 2, "b": 3})),
            ("web__delete_everything", json!({})),
            ("web__hang", json!({})),
            ("web__big", json!({"bytes": 3_000_000})),
            ("web__echo", json!({"text": "still here"})),
        ])
        .usage(usage()),
    );
    fake.push(Reply::text("5").usage(usage()));
    let clock = Instant::now();
    let r = run(&app, &id).await;
    assert!(clock.elapsed() < Duration::from_secs(10));
    assert_eq!(r["status"], "succeeded", "{r}");
    let st = steps(&r);
    assert_eq!(st[1]["status"], "ok", "{}", st[1]);
    assert_eq!(st[1]["output"]["body"], "5");
    assert_eq!(st[1]["output"]["structured_content"], json!({"sum": 5}));
    assert_eq!(st[2]["status"], "error");
    assert!(st[2]["error"]
        .as_str()
        .unwrap_or("")
        .contains("not allowed"));
    assert_eq!(st[3]["status"], "error");
    assert!(
        st[3]["error"].as_str().unwrap_or("").contains("800 ms"),
        "{}",
        st[3]
    );
    // An answer over the message limit is not read past it.
    assert_eq!(st[4]["status"], "error");
    let e = st[4]["error"].as_str().unwrap_or("");
    assert!(e.contains("over 1048576 bytes"), "{e}");
    assert_eq!(st[5]["status"], "ok", "{}", st[5]);
    assert_eq!(st[5]["output"]["body"], "echo: still here");
    let seen = calls(&log);
    let names: Vec<&str> = seen.iter().map(|c| c.0.as_str()).collect();
    assert_eq!(
        names,
        ["add", "hang", "big", "echo"],
        "the denied call never reached the server"
    );
    assert_eq!(seen[0].1, json!({"a": 2, "b": 3}));
    assert_eq!(seen[0].2.as_deref(), Some(HEADER_SECRET));
    // Without the header the server refuses: the listing says so.
    let (status, bare) = send(
        &app,
        Method::POST,
        "/api/v1/mcp-servers",
        Some(json!({"name": "bare", "transport": "http", "url": url, "allow": ["*"]})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{bare}");
    let r = app
        .admin(
            Method::GET,
            &format!(
                "/api/v1/mcp-servers/{}/tools",
                bare["id"].as_str().expect("id")
            ),
        )
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    let _ = child.kill().await;
    app.stop().await;
}

/// A value unique enough to tag one test's processes.
fn uuid_like() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    )
}

/// How many live processes have `tag` among their arguments.
fn processes_with(tag: &str) -> usize {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p: &PathBuf| {
            std::fs::read(p.join("cmdline"))
                .map(|c| c.split(|&b| b == 0).any(|arg| arg == tag.as_bytes()))
                .unwrap_or(false)
        })
        .count()
}
