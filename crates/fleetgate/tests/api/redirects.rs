//! Redirects and pages: the management API (namespaces, projects, drafts, publish,
//! import/export, tokens, agents), the Flecto agent sync API used as a black-box agent
//! would, and the gateway answering a project's hosts.

use std::time::{Duration, Instant};

use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};

use crate::support::{expect_error, spawn_app, TestApp};

const P: &str = "/api/v1/namespaces/prod/projects/site";

async fn project(app: &TestApp, hosts: &[&str]) {
    let r = app
        .admin(Method::POST, "/api/v1/namespaces")
        .json(&json!({"name": "prod", "description": "production"}))
        .send()
        .await
        .expect("namespace");
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = app
        .admin(Method::POST, "/api/v1/namespaces/prod/projects")
        .json(&json!({"name": "site", "hosts": hosts}))
        .send()
        .await
        .expect("project");
    assert_eq!(r.status(), StatusCode::CREATED, "{:?}", r.text().await);
}

async fn post(app: &TestApp, path: &str, body: Value) -> reqwest::Response {
    app.admin(Method::POST, &format!("{P}{path}"))
        .json(&body)
        .send()
        .await
        .expect("request")
}

async fn publish(app: &TestApp) -> Value {
    let r = post(app, "/publish", json!({})).await;
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.expect("json")
}

#[tokio::test]
async fn drafts_publish_and_versions() {
    let app = spawn_app().await;
    let r = app
        .admin(Method::POST, "/api/v1/namespaces")
        .json(&json!({"name": "Bad Name"}))
        .send()
        .await
        .expect("request");
    assert_eq!(
        expect_error(r, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await["details"]["field"],
        "name"
    );
    project(&app, &["www.example.test"]).await;
    let r = app
        .admin(Method::POST, "/api/v1/namespaces/prod/projects")
        .json(&json!({"name": "other", "hosts": ["WWW.example.test"]}))
        .send()
        .await
        .expect("request");
    expect_error(r, StatusCode::CONFLICT, "CONFLICT").await;

    // Bad rules are refused naming the field; nothing is written.
    for (body, field) in [
        (
            json!({"type": "BASIC", "source": "old", "target": "/new"}),
            "source",
        ),
        (
            json!({"type": "BASIC_HOST", "source": "/old", "target": "https://x.test/"}),
            "source",
        ),
        (
            json!({"type": "BASIC_HOST", "source": "a.test/old", "target": "/rel"}),
            "target",
        ),
        (
            json!({"type": "REGEX", "source": "^/a/(", "target": "/b"}),
            "source",
        ),
        (
            json!({"type": "BASIC", "source": "/loop", "target": "/loop"}),
            "target",
        ),
        (
            json!({"type": "BASIC", "source": "/a", "target": "/b", "status": "SEE_OTHER"}),
            "status",
        ),
        (
            json!({"type": "PREFIX", "source": "/a", "target": "/b"}),
            "type",
        ),
    ] {
        let r = post(&app, "/redirects", body.clone()).await;
        let e = expect_error(r, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await;
        assert_eq!(e["details"]["field"], field, "{body} → {e}");
    }
    let big = "x".repeat(1024 * 1024 + 1);
    let r = post(
        &app,
        "/pages",
        json!({"type": "BASIC", "path": "/big", "content": big}),
    )
    .await;
    assert_eq!(
        expect_error(r, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await["details"]["field"],
        "content"
    );

    let r = post(
        &app,
        "/redirects",
        json!({"type": "BASIC", "source": "/old", "target": "/new", "status": "MOVED_PERMANENT"}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let old: Value = r.json().await.expect("json");
    assert_eq!(old["state"], "created");
    assert_eq!(old["status"], "MOVED_PERMANENT");
    let r = post(
        &app,
        "/redirects",
        json!({"type": "REGEX", "source": "^/blog/(\\d+)$", "target": "/posts/$1"}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = post(
        &app,
        "/redirects",
        json!({"type": "BASIC_HOST", "source": "/old", "target": "https://x.test/"}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let dup = post(
        &app,
        "/redirects",
        json!({"type": "BASIC", "source": "/old", "target": "/other"}),
    )
    .await;
    assert_eq!(
        expect_error(dup, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await["details"]["field"],
        "source"
    );
    let r = post(&app, "/pages", json!({"type": "BASIC", "path": "/robots.txt", "content": "User-agent: *", "contentType": "TEXT_PLAIN"})).await;
    assert_eq!(r.status(), StatusCode::CREATED);

    let list = app.get_json(&format!("{P}/redirects?type=REGEX")).await;
    assert_eq!(list["total"], 1);
    assert_eq!(list["items"][0]["target"], "/posts/$1");
    let list = app.get_json(&format!("{P}/redirects?q=OLD")).await;
    assert_eq!(list["total"], 1);
    let r = app
        .admin(Method::GET, &format!("{P}/redirects?type=NOPE"))
        .send()
        .await
        .expect("req");
    expect_error(r, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await;

    let drafts = app.get_json(&format!("{P}/drafts")).await;
    assert_eq!(drafts["total"], 3);
    assert_eq!(drafts["redirects"]["created"], 2);
    // A new project is at version 1, as in Flecto; the first publish makes it 2.
    assert_eq!(app.get_json(P).await["version"], 1);

    let published = publish(&app).await;
    assert_eq!(published["version"], 2);
    assert_eq!(published["summary"]["redirects"]["created"], 2);
    let r = post(&app, "/publish", json!({})).await;
    expect_error(r, StatusCode::CONFLICT, "CONFLICT").await;

    // An edit is a draft with before and after; discard restores the published rule.
    let id = old["id"].as_i64().expect("id");
    let r = app
        .admin(Method::PUT, &format!("{P}/redirects/{id}"))
        .json(&json!({"type": "BASIC", "source": "/old", "target": "/newer", "status": "FOUND"}))
        .send()
        .await
        .expect("update");
    let edited: Value = r.json().await.expect("json");
    assert_eq!(
        (
            edited["state"].as_str(),
            edited["published"]["target"].as_str()
        ),
        (Some("updated"), Some("/new"))
    );
    let drafts = app.get_json(&format!("{P}/drafts")).await;
    assert_eq!(drafts["changes"][0]["before"]["value"], "/new");
    assert_eq!(drafts["changes"][0]["after"]["value"], "/newer");
    let r = post(&app, "/discard", json!({})).await;
    assert_eq!(r.json::<Value>().await.expect("json")["discarded"], 1);
    let back = app.get_json(&format!("{P}/redirects/{id}")).await;
    assert_eq!(
        (back["target"].as_str(), back["state"].as_str()),
        (Some("/new"), Some("published"))
    );

    let r = app
        .admin(Method::DELETE, &format!("{P}/redirects/{id}"))
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let second = publish(&app).await;
    assert_eq!(
        (
            second["version"].as_i64(),
            second["summary"]["redirects"]["deleted"].as_i64()
        ),
        (Some(3), Some(1))
    );
    let versions = app.get_json(&format!("{P}/versions")).await;
    assert_eq!(versions["items"][0]["version"], 3);
    assert_eq!(versions["total"], 2);
    let r = app
        .admin(Method::GET, &format!("{P}/redirects/abc"))
        .send()
        .await
        .expect("req");
    expect_error(r, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await;
    let r = app
        .admin(
            Method::GET,
            "/api/v1/namespaces/prod/projects/nope/redirects",
        )
        .send()
        .await
        .expect("req");
    expect_error(r, StatusCode::NOT_FOUND, "NOT_FOUND").await;
    let audit = app.get_json("/api/v1/audit?action=project.publish").await;
    assert_eq!(audit["total"], 2);
    app.stop().await;
}

fn csv_body(rows: &[&str]) -> String {
    let mut s = String::from("type,source,target,status\n");
    for r in rows {
        s.push_str(r);
        s.push('\n');
    }
    s
}

async fn import(app: &TestApp, query: &str, content_type: &str, body: String) -> reqwest::Response {
    app.admin(Method::POST, &format!("{P}/redirects/import{query}"))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .expect("import")
}

#[tokio::test]
async fn csv_import_is_all_or_nothing_and_export_round_trips() {
    let app = spawn_app().await;
    project(&app, &[]).await;
    let bad = csv_body(&[
        "BASIC,/a,/b,MOVED_PERMANENT",
        "REGEX,^/x/(,/y,FOUND",
        "BASIC,/c,/d,",
        "BASIC,/a,/e,FOUND",
        "BASIC,/f,/g,MOVED_TEMPORARILY",
    ]);
    let r = import(&app, "", "text/csv", bad).await;
    let e = expect_error(r, StatusCode::BAD_REQUEST, "IMPORT_REJECTED").await;
    let lines: Vec<(i64, String)> = e["details"]["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|x| {
            (
                x["line"].as_i64().unwrap_or(0),
                x["field"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(
        lines,
        vec![
            (3, "source".to_string()),
            (5, "source".to_string()),
            (6, "status".to_string())
        ],
        "rows that do not parse and rows that do not validate are listed together"
    );
    assert!(
        e["error"]
            .as_str()
            .is_some_and(|m| m.starts_with("3 of 5 rows are invalid")),
        "{e}"
    );
    assert_eq!(
        app.get_json(&format!("{P}/redirects")).await["total"],
        0,
        "nothing half-imported"
    );

    let good = csv_body(&[
        "BASIC,/a,/b,MOVED_PERMANENT",
        "BASIC_HOST,shop.example.test/x,https://example.test/shop,FOUND",
        "REGEX,\"^/blog/(\\d+),(.*)$\",/posts/$1?s=$2,PERMANENT_REDIRECT",
        "BASIC,/c,/d,",
    ]);
    let r = import(&app, "?dry_run=true", "text/csv", good.clone()).await;
    assert_eq!(r.json::<Value>().await.expect("json")["dry_run"], true);
    assert_eq!(app.get_json(&format!("{P}/redirects")).await["total"], 0);
    let r = import(&app, "", "text/csv", good).await;
    let sum: Value = r.json().await.expect("json");
    assert_eq!(
        (sum["rows"].as_i64(), sum["created"].as_i64()),
        (Some(4), Some(4))
    );

    let csv = app
        .admin(Method::GET, &format!("{P}/redirects/export?format=csv"))
        .send()
        .await
        .expect("export");
    assert!(csv.headers()["content-type"]
        .to_str()
        .expect("ct")
        .starts_with("text/csv"));
    let exported = csv.text().await.expect("text");
    assert!(exported.contains("\"^/blog/(\\d+),(.*)$\""), "{exported}");
    assert!(exported.contains("BASIC,/c,/d,FOUND"), "{exported}");
    // Importing the export again changes nothing.
    let r = import(&app, "", "text/csv", exported).await;
    let again: Value = r.json().await.expect("json");
    assert_eq!(
        (again["created"].as_i64(), again["unchanged"].as_i64()),
        (Some(0), Some(4))
    );

    // JSON arrays too; replace mode deletes what the file lacks.
    let body = json!([{"type": "BASIC", "source": "/a", "target": "/z"}]).to_string();
    let r = import(&app, "?mode=replace", "application/json", body).await;
    let sum: Value = r.json().await.expect("json");
    assert_eq!(
        (sum["updated"].as_i64(), sum["deleted"].as_i64()),
        (Some(1), Some(3))
    );
    let exported: Value = app
        .get_json(&format!("{P}/redirects/export?format=json"))
        .await;
    assert_eq!(
        exported,
        json!([{"type": "BASIC", "source": "/a", "target": "/z", "status": "FOUND"}])
    );
    let r = import(
        &app,
        "",
        "application/json",
        "[{\"type\":\"BASIC\",\"source\":\"/q\",\"target\":\"/r\",\"status\":301}]".into(),
    )
    .await;
    let e = expect_error(r, StatusCode::BAD_REQUEST, "IMPORT_REJECTED").await;
    assert_eq!(e["details"]["errors"][0]["line"], 1);
    assert_eq!(e["details"]["errors"][0]["field"], "status");
    let r = import(&app, "", "application/xml", "<x/>".into()).await;
    assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    app.stop().await;
}

/// An agent as Flecto's Go client behaves: Bearer token, version polls, paginated
/// fetches with limit=100, a status report and heartbeats.
struct Agent {
    base: String,
    token: String,
    http: Client,
}

impl Agent {
    fn req(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .header("authorization", format!("Bearer {}", self.token))
            .header("user-agent", "Go-http-client/1.1")
            .header("accept-encoding", "gzip")
    }

    async fn version(&self) -> i64 {
        let r = self
            .req(Method::GET, "/version")
            .send()
            .await
            .expect("version");
        assert_eq!(r.status(), StatusCode::OK);
        let text = r.text().await.expect("text");
        // The Go client trims and parses a bare integer: a quoted string breaks it.
        text.trim()
            .parse()
            .unwrap_or_else(|_| panic!("version body {text:?} is not a bare integer"))
    }

    async fn fetch_all(&self, what: &str) -> Vec<Value> {
        let mut items = Vec::new();
        let mut offset = 0;
        loop {
            let r = self
                .req(Method::GET, &format!("/{what}?limit=100&offset={offset}"))
                .send()
                .await
                .expect("list");
            assert_eq!(r.status(), StatusCode::OK);
            let page: Value = r.json().await.expect("json");
            assert_eq!(page["limit"], 100, "a limit of 100 is honoured in full");
            assert_eq!(page["offset"], offset);
            items.extend(page["items"].as_array().expect("items").iter().cloned());
            offset += 100;
            if offset >= page["total"].as_i64().expect("total") {
                return items;
            }
        }
    }
}

#[tokio::test]
async fn a_flecto_agent_syncs_from_fleetgate() {
    let app = spawn_app().await;
    project(&app, &[]).await;
    let mut csv = String::from("type,source,target,status\n");
    for i in 0..145 {
        csv.push_str(&format!("BASIC,/old/{i},/new/{i},MOVED_PERMANENT\n"));
    }
    csv.push_str("REGEX,^/blog/(\\d+)/(.*)$,/articles/$1?slug=$2,TEMPORARY_REDIRECT\n");
    import(&app, "", "text/csv", csv).await;
    post(&app, "/pages", json!({"type": "BASIC", "path": "/robots.txt", "content": "User-agent: *\nAllow: /", "content_type": "TEXT_PLAIN"})).await;
    post(&app, "/pages", json!({"type": "BASIC_HOST", "path": "shop.example.test/sitemap.xml", "content": "<urlset/>", "contentType": "XML"})).await;
    let r = post(&app, "/tokens", json!({"name": "edge"})).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let token: Value = r.json().await.expect("json");
    let secret = token["token"]
        .as_str()
        .expect("token shown once")
        .to_string();
    assert!(
        secret.starts_with("flecto_") && secret.len() == 50,
        "{secret}"
    );
    let listed = app.get_json(&format!("{P}/tokens")).await;
    assert!(
        listed["items"][0].get("token").is_none(),
        "the token is never shown again"
    );
    assert_eq!(listed["items"][0]["preview"], token["preview"]);

    let base = format!("http://{}/api/namespace/prod/project/site", app.addr);
    let agent = Agent {
        base: base.clone(),
        token: secret.clone(),
        http: Client::new(),
    };
    // Before the first publish the version is 1 (never 0, which Flecto's client
    // takes for "nothing to load") and nothing is served.
    assert_eq!(agent.version().await, 1);
    assert!(agent.fetch_all("redirects").await.is_empty());
    publish(&app).await;

    // The exact sequence of a first load.
    let raw = agent
        .req(Method::GET, "/version")
        .send()
        .await
        .expect("version");
    assert!(raw.headers()["content-type"]
        .to_str()
        .expect("ct")
        .starts_with("application/json"));
    assert_eq!(raw.text().await.expect("body"), "2\n");
    let v = agent.version().await;
    let redirects = agent.fetch_all("redirects").await;
    let pages = agent.fetch_all("pages").await;
    assert_eq!(redirects.len(), 146);
    assert_eq!(
        redirects[0],
        json!({"type": "BASIC", "source": "/old/0", "target": "/new/0", "status": "MOVED_PERMANENT"})
    );
    assert_eq!(redirects[145]["source"], "^/blog/(\\d+)/(.*)$");
    assert_eq!(pages.len(), 2);
    assert_eq!(
        pages[0],
        json!({"type": "BASIC", "path": "/robots.txt", "content": "User-agent: *\nAllow: /", "contentType": "TEXT_PLAIN"})
    );
    assert_eq!(pages[1]["contentType"], "XML");
    let r = agent
        .req(Method::POST, "/agents")
        .header("content-type", "application/json")
        .body(format!(r#"{{"name":"probe-agent","status":"success","type":"default","version":{v},"load_duration":183712889,"error":""}}"#))
        .send()
        .await
        .expect("report");
    assert_eq!(r.status(), StatusCode::OK, "exactly 200, not 204");
    assert_eq!(r.text().await.expect("body"), "");
    assert_eq!(agent.version().await, v);
    let r = agent
        .req(Method::PATCH, "/agents/probe-agent/hit")
        .header("content-length", "0")
        .send()
        .await
        .expect("hit");
    assert_eq!(r.status(), StatusCode::OK);

    let agents = app.get_json(&format!("{P}/agents")).await;
    let a = &agents["items"][0];
    assert_eq!(
        (
            a["name"].as_str(),
            a["type"].as_str(),
            a["version"].as_i64()
        ),
        (Some("probe-agent"), Some("default"), Some(2))
    );
    assert_eq!(
        (
            a["status"].as_str(),
            a["load_duration_ns"].as_i64(),
            a["stale"].as_bool()
        ),
        (Some("success"), Some(183_712_889), Some(false))
    );
    // A publish the agent has not loaded makes it stale.
    post(
        &app,
        "/redirects",
        json!({"type": "BASIC", "source": "/fresh", "target": "/x"}),
    )
    .await;
    assert_eq!(publish(&app).await["version"], 3);
    let agents = app.get_json(&format!("{P}/agents")).await;
    assert_eq!(
        (
            agents["items"][0]["stale"].as_bool(),
            agents["items"][0]["stale_reason"].as_str()
        ),
        (Some(true), Some("behind"))
    );
    assert_eq!(agent.version().await, 3);

    // Limits: default 500; any limit is honoured in full, as Flecto does.
    let page: Value = agent
        .req(Method::GET, "/redirects")
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(
        (page["limit"].as_i64(), page["total"].as_i64()),
        (Some(500), Some(147))
    );
    let page: Value = agent
        .req(Method::GET, "/redirects?limit=1000000")
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(
        (
            page["limit"].as_i64(),
            page["items"].as_array().map(Vec::len)
        ),
        (Some(1_000_000), Some(147))
    );
    let r = agent
        .req(Method::GET, "/redirects?limit=abc")
        .send()
        .await
        .expect("list");
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.json::<Value>().await.expect("json")["message"]
        .as_str()
        .is_some_and(|m| m.contains("limit")));

    // Authentication and scopes.
    let anon = Client::new();
    let r = anon
        .get(format!("{base}/version"))
        .send()
        .await
        .expect("anon");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(r.json::<Value>().await.expect("json")["message"].is_string());
    let r = anon
        .get(format!("{base}/version"))
        .header("authorization", "Bearer flecto_nope")
        .send()
        .await
        .expect("bad");
    assert_eq!(
        r.json::<Value>().await.expect("json"),
        json!({"message": "invalid API token"})
    );
    let other = format!("http://{}/api/namespace/prod/project/other", app.addr);
    let r = anon
        .get(format!("{other}/version"))
        .header("authorization", format!("Bearer {secret}"))
        .send()
        .await
        .expect("other");
    assert_eq!(
        r.status(),
        StatusCode::FORBIDDEN,
        "a token is scoped to its project"
    );
    assert_eq!(r.text().await.expect("body"), "");
    let r = anon
        .get(format!("{other}/version"))
        .bearer_auth(crate::support::TOKEN)
        .send()
        .await
        .expect("unknown");
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = post(
        &app,
        "/tokens",
        json!({"name": "read-only", "scopes": [{"resource": "redirect", "action": "read"}]}),
    )
    .await;
    let read_only = r.json::<Value>().await.expect("json")["token"]
        .as_str()
        .expect("token")
        .to_string();
    let ro = Agent {
        base: base.clone(),
        token: read_only,
        http: Client::new(),
    };
    assert_eq!(
        ro.req(Method::GET, "/redirects")
            .send()
            .await
            .expect("ok")
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        ro.req(Method::GET, "/pages")
            .send()
            .await
            .expect("page")
            .status(),
        StatusCode::FORBIDDEN
    );
    let r = ro
        .req(Method::PATCH, "/agents/x/hit")
        .send()
        .await
        .expect("hit");
    assert_eq!(
        r.status(),
        StatusCode::FORBIDDEN,
        "read does not grant agent:write"
    );
    // Bad reports are 400 with Flecto's message shape.
    let r = agent
        .req(Method::POST, "/agents")
        .header("content-type", "application/json")
        .body(r#"{"name":"host.example","status":"success","type":"default","version":1,"load_duration":5}"#)
        .send()
        .await
        .expect("report");
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.json::<Value>().await.expect("json")["message"]
        .as_str()
        .is_some_and(|m| m.starts_with("invalid agent")));
    // Revoked tokens stop working.
    let id = token["id"].as_str().expect("id");
    let r = app
        .admin(Method::DELETE, &format!("{P}/tokens/{id}"))
        .send()
        .await
        .expect("revoke");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        agent
            .req(Method::GET, "/version")
            .send()
            .await
            .expect("v")
            .status(),
        StatusCode::UNAUTHORIZED
    );
    let ping = anon
        .get(format!("http://{}/health/ping", app.addr))
        .send()
        .await
        .expect("ping");
    assert_eq!(ping.status(), StatusCode::NO_CONTENT);
    app.stop().await;
}

/// Polls the gateway until `check` accepts its answer for `host` + `uri`.
pub(crate) async fn gateway_until(
    app: &TestApp,
    host: &str,
    uri: &str,
    check: impl Fn(&reqwest::Response) -> bool,
) -> reqwest::Response {
    let gw = app.gateway.expect("gateway");
    let http = Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = http
            .get(format!("http://{gw}{uri}"))
            .header("host", host)
            .send()
            .await
            .expect("gateway request");
        if check(&r) {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "gateway never answered as expected for {host}{uri}: {}",
            r.status()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub(crate) fn location(r: &reqwest::Response) -> &str {
    r.headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

#[tokio::test]
async fn the_gateway_answers_a_projects_hosts() {
    let app = spawn_app().await;
    project(&app, &["redirects.test"]).await;
    for body in [
        json!({"type": "BASIC", "source": "/old", "target": "/new", "status": "MOVED_PERMANENT"}),
        json!({"type": "BASIC", "source": "/q?x=1", "target": "/query-hit", "status": "FOUND"}),
        json!({"type": "BASIC_HOST", "source": "redirects.test/hosted", "target": "https://elsewhere.test/h", "status": "PERMANENT_REDIRECT"}),
        json!({"type": "REGEX", "source": "^/blog/(\\d+)/(.*)$", "target": "/articles/$1?slug=$2", "status": "TEMPORARY_REDIRECT"}),
        json!({"type": "REGEX", "source": "^/a/(.*)$", "target": "/short/$1"}),
        json!({"type": "REGEX", "source": "^/a/(.*)/(.*)$", "target": "/long/$1/$2"}),
    ] {
        assert_eq!(
            post(&app, "/redirects", body).await.status(),
            StatusCode::CREATED
        );
    }
    post(&app, "/pages", json!({"type": "BASIC", "path": "/robots.txt", "content": "User-agent: *", "content_type": "TEXT_PLAIN"})).await;
    post(&app, "/pages", json!({"type": "BASIC", "path": "/old", "content": "a redirect wins over this page", "content_type": "TEXT_PLAIN"})).await;
    post(&app, "/pages", json!({"type": "BASIC_HOST", "path": "redirects.test/sitemap.xml", "content": "<urlset/>", "content_type": "XML"})).await;
    // Nothing is served before publishing.
    let gw = app.gateway.expect("gateway");
    let r = Client::new()
        .get(format!("http://{gw}/robots.txt"))
        .header("host", "redirects.test")
        .send()
        .await
        .expect("req");
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    publish(&app).await;

    let r = gateway_until(&app, "redirects.test", "/robots.txt", |r| {
        r.status() == StatusCode::OK
    })
    .await;
    assert_eq!(r.headers()["content-type"], "text/plain");
    assert_eq!(r.text().await.expect("body"), "User-agent: *");
    let r = gateway_until(&app, "redirects.test", "/sitemap.xml", |_| true).await;
    assert_eq!(
        (r.status(), r.headers()["content-type"].to_str().ok()),
        (StatusCode::OK, Some("application/xml"))
    );
    // Redirects come before pages, as Flecto's Traefik middleware answers.
    let r = gateway_until(&app, "redirects.test", "/old", |_| true).await;
    assert_eq!(
        (r.status(), location(&r)),
        (StatusCode::MOVED_PERMANENTLY, "/new")
    );
    let cases: &[(&str, &str, u16, &str)] = &[
        ("redirects.test", "/q?x=1", 302, "/query-hit"),
        ("redirects.test", "/hosted", 308, "https://elsewhere.test/h"),
        (
            "redirects.test",
            "/blog/42/hello",
            307,
            "/articles/42?slug=hello",
        ),
        ("redirects.test", "/a/b/c", 302, "/long/b/c"),
        ("redirects.test", "/a/b", 302, "/short/b"),
        ("REDIRECTS.test:80", "/a/b", 302, "/short/b"),
    ];
    for (host, uri, status, loc) in cases {
        let r = gateway_until(&app, host, uri, |_| true).await;
        assert_eq!(
            (r.status().as_u16(), location(&r)),
            (*status, *loc),
            "{host}{uri}"
        );
    }
    // Exact keys include the query string; the host rule includes the port as sent.
    for (host, uri) in [
        ("redirects.test", "/q?x=2"),
        ("redirects.test:8080", "/hosted"),
        ("redirects.test", "/robots.txt?x=1"),
        ("other.test", "/old"),
    ] {
        let r = gateway_until(&app, host, uri, |_| true).await;
        assert_eq!(
            r.status(),
            StatusCode::NOT_FOUND,
            "{host}{uri} must fall through to routing"
        );
    }
    // A new publish is swapped in.
    post(
        &app,
        "/redirects",
        json!({"type": "BASIC", "source": "/later", "target": "/x"}),
    )
    .await;
    publish(&app).await;
    let r = gateway_until(&app, "redirects.test", "/later", |r| {
        r.status() == StatusCode::FOUND
    })
    .await;
    assert_eq!(location(&r), "/x");
    app.stop().await;
}

#[tokio::test]
async fn fleetgate_syncs_from_a_flecto_manager_and_survives_its_outage() {
    let manager = spawn_app().await;
    project(&manager, &[]).await;
    post(
        &manager,
        "/redirects",
        json!({"type": "BASIC", "source": "/old", "target": "/new", "status": "MOVED_PERMANENT"}),
    )
    .await;
    post(&manager, "/pages", json!({"type": "BASIC", "path": "/robots.txt", "content": "User-agent: *", "content_type": "TEXT_PLAIN"})).await;
    publish(&manager).await;
    let token: Value = post(&manager, "/tokens", json!({"name": "edge"}))
        .await
        .json()
        .await
        .expect("json");

    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = crate::support::config_in(dir.path());
    config.flecto.url = Some(format!("http://{}", manager.addr));
    config.flecto.namespace = "prod".into();
    config.flecto.project = "site".into();
    config.flecto.token = token["token"].as_str().map(str::to_string);
    config.flecto.interval_ms = 200;
    config.flecto.agent_name = "edge-a".into();
    let edge = crate::support::spawn_with(config, dir).await;

    // Any host: the synced project is not bound to this gateway's own projects.
    let r = gateway_until(&edge, "anything.test", "/old", |r| {
        r.status() == StatusCode::MOVED_PERMANENTLY
    })
    .await;
    assert_eq!(location(&r), "/new");
    let r = gateway_until(&edge, "anything.test", "/robots.txt", |_| true).await;
    assert_eq!(r.text().await.expect("body"), "User-agent: *");

    // The manager sees the agent with its loaded version and a load time.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let agents = manager.get_json(&format!("{P}/agents")).await;
        let a = &agents["items"][0];
        if a["name"] == "edge-a" {
            assert_eq!(
                (
                    a["type"].as_str(),
                    a["version"].as_i64(),
                    a["status"].as_str()
                ),
                (Some("fleetgate"), Some(2), Some("success"))
            );
            assert!(a["load_duration_ns"].as_i64().is_some_and(|n| n > 0));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the agent never registered: {agents}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A new publish reaches the agent.
    post(
        &manager,
        "/redirects",
        json!({"type": "BASIC", "source": "/later", "target": "/there"}),
    )
    .await;
    publish(&manager).await;
    let r = gateway_until(&edge, "anything.test", "/later", |r| {
        r.status() == StatusCode::FOUND
    })
    .await;
    assert_eq!(location(&r), "/there");

    // The manager goes away: the last good set keeps serving.
    manager.stop().await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let r = gateway_until(&edge, "anything.test", "/old", |_| true).await;
    assert_eq!(
        (r.status(), location(&r)),
        (StatusCode::MOVED_PERMANENTLY, "/new")
    );
    edge.stop().await;
}

#[tokio::test]
async fn an_edge_serves_a_flecto_project_without_a_store_of_its_own() {
    let manager = spawn_app().await;
    project(&manager, &[]).await;
    post(
        &manager,
        "/redirects",
        json!({"type": "BASIC_HOST", "source": "shop.test/sale", "target": "https://shop.test/offers", "status": "TEMPORARY_REDIRECT"}),
    )
    .await;
    publish(&manager).await;
    let token: Value = post(&manager, "/tokens", json!({"name": "edge"}))
        .await
        .json()
        .await
        .expect("json");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = crate::support::config_in(dir.path());
    config.flecto.url = Some(format!("http://{}", manager.addr));
    config.flecto.namespace = "prod".into();
    config.flecto.project = "site".into();
    config.flecto.token = token["token"].as_str().map(str::to_string);
    config.flecto.interval_ms = 200;
    config.flecto.agent_name = "edge-b".into();
    let edge = fleetgate::start_edge(config, std::future::pending())
        .await
        .expect("edge starts");
    let http = Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let get = |host: &'static str, uri: &'static str| {
        http.get(format!("http://{}{uri}", edge.gateway_addr))
            .header("host", host)
            .send()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = get("shop.test", "/sale").await.expect("edge request");
        if r.status() == StatusCode::TEMPORARY_REDIRECT {
            assert_eq!(location(&r), "https://shop.test/offers");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the edge never synced: {}",
            r.status()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Other hosts and paths: the gateway's JSON 404 (the edge has no routes).
    let r = get("other.test", "/sale").await.expect("edge request");
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    // The manager lists the edge as an agent; the edge keeps nothing on disk.
    let deadline = Instant::now() + Duration::from_secs(5);
    while manager.get_json(&format!("{P}/agents")).await["items"][0]["name"] != "edge-b" {
        assert!(Instant::now() < deadline, "the edge never registered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        std::fs::read_dir(dir.path()).expect("dir").count(),
        0,
        "an edge has no store"
    );
    // Without its manager the edge serves the last good set.
    manager.stop().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = get("shop.test", "/sale").await.expect("edge request");
    assert_eq!(r.status(), StatusCode::TEMPORARY_REDIRECT);
    edge.shutdown().await.expect("clean shutdown");
}

/// A project token with the scopes an agent needs.
async fn agent_token(app: &TestApp, name: &str) -> String {
    let r = post(app, "/tokens", json!({"name": name})).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    r.json::<Value>().await.expect("json")["token"]
        .as_str()
        .expect("token")
        .to_string()
}

fn agent(app: &TestApp, token: &str) -> Agent {
    Agent {
        base: format!("http://{}/api/namespace/prod/project/site", app.addr),
        token: token.to_string(),
        http: Client::new(),
    }
}

#[tokio::test]
async fn a_redirect_wins_over_a_page_it_covers_at_the_gateway() {
    let app = spawn_app().await;
    project(&app, &["collide.test"]).await;
    post(&app, "/pages", json!({"type": "BASIC", "path": "/collide", "content": "the page under the redirect", "content_type": "TEXT_PLAIN"})).await;
    post(&app, "/pages", json!({"type": "BASIC", "path": "/plain", "content": "no redirect covers me", "content_type": "TEXT_PLAIN"})).await;
    post(&app, "/pages", json!({"type": "BASIC_HOST", "path": "collide.test/hosted", "content": "host page", "content_type": "TEXT_PLAIN"})).await;
    for body in [
        json!({"type": "REGEX", "source": "^/col(.*)$", "target": "/elsewhere/$1", "status": "FOUND"}),
        json!({"type": "BASIC", "source": "/hosted", "target": "/hosted-redirect", "status": "MOVED_PERMANENT"}),
    ] {
        assert_eq!(
            post(&app, "/redirects", body).await.status(),
            StatusCode::CREATED
        );
    }
    publish(&app).await;
    let r = gateway_until(&app, "collide.test", "/collide", |r| {
        r.status() != StatusCode::NOT_FOUND
    })
    .await;
    assert_eq!(
        (r.status(), location(&r)),
        (StatusCode::FOUND, "/elsewhere/lide"),
        "a REGEX redirect is tried before a BASIC page"
    );
    let r = gateway_until(&app, "collide.test", "/hosted", |_| true).await;
    assert_eq!(
        (r.status(), location(&r)),
        (StatusCode::MOVED_PERMANENTLY, "/hosted-redirect"),
        "a BASIC redirect is tried before a BASIC_HOST page"
    );
    let r = gateway_until(&app, "collide.test", "/plain", |_| true).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.text().await.expect("body"), "no redirect covers me");
    app.stop().await;
}

#[tokio::test]
async fn an_agent_registers_on_a_never_published_project() {
    let app = spawn_app().await;
    project(&app, &[]).await;
    let agent = agent(&app, &agent_token(&app, "edge").await);
    // What Flecto's client does on Init(): the version is 1, so it loads (an empty
    // set) and registers; with 0 it would only ever send heartbeats.
    let v = agent.version().await;
    assert_eq!(v, 1);
    for what in ["redirects", "pages"] {
        let page: Value = agent
            .req(Method::GET, &format!("/{what}?limit=100&offset=0"))
            .send()
            .await
            .expect("list")
            .json()
            .await
            .expect("json");
        assert_eq!(page["items"], json!([]), "{what}: {page}");
        assert_eq!(page["total"], 0);
    }
    let r = agent
        .req(Method::POST, "/agents")
        .header("content-type", "application/json")
        .body(format!(r#"{{"name":"fresh-agent","status":"success","type":"traefik","version":{v},"load_duration":1200,"error":""}}"#))
        .send()
        .await
        .expect("report");
    assert_eq!(r.status(), StatusCode::OK);
    let agents = app.get_json(&format!("{P}/agents")).await;
    assert_eq!(agents["items"][0]["name"], "fresh-agent");
    assert_eq!(agents["items"][0]["version"], 1);
    assert_eq!(agents["items"][0]["stale"], false);
    assert_eq!(app.get_json(P).await["version"], 1);
    app.stop().await;
}

#[tokio::test]
async fn non_ascii_locations_are_percent_encoded() {
    let app = spawn_app().await;
    project(&app, &["intl.test"]).await;
    for body in [
        json!({"type": "BASIC", "source": "/umlaut", "target": "/über/ça%20va?q=é&x=[1]", "status": "FOUND"}),
        json!({"type": "REGEX", "source": "^/r/(.*)$", "target": "https://intl.test/ré/$1", "status": "FOUND"}),
        json!({"type": "BASIC", "source": "/ascii", "target": "/a/b?c=d&e=%2F#frag", "status": "FOUND"}),
    ] {
        let r = post(&app, "/redirects", body.clone()).await;
        assert_eq!(r.status(), StatusCode::CREATED, "{body}");
    }
    publish(&app).await;
    for (uri, want) in [
        ("/umlaut", "/%C3%BCber/%C3%A7a%20va?q=%C3%A9&x=[1]"),
        ("/r/x%20y", "https://intl.test/r%C3%A9/x%20y"),
        ("/ascii", "/a/b?c=d&e=%2F#frag"),
    ] {
        let r = gateway_until(&app, "intl.test", uri, |r| {
            r.status() != StatusCode::NOT_FOUND
        })
        .await;
        let raw = r.headers()["location"].as_bytes().to_vec();
        assert_eq!(
            (r.status(), String::from_utf8_lossy(&raw).into_owned()),
            (StatusCode::FOUND, want.to_string()),
            "{uri}"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn limit_zero_lists_every_published_rule() {
    let app = spawn_app().await;
    project(&app, &[]).await;
    let mut csv = String::from("type,source,target,status\n");
    for i in 0..620 {
        csv.push_str(&format!("BASIC,/old/{i},/new/{i},FOUND\n"));
    }
    assert_eq!(
        import(&app, "", "text/csv", csv).await.status(),
        StatusCode::OK
    );
    publish(&app).await;
    let agent = agent(&app, &agent_token(&app, "edge").await);
    let list = |q: &'static str| {
        let r = agent.req(Method::GET, &format!("/redirects{q}"));
        async move {
            let r = r.send().await.expect("list");
            assert_eq!(r.status(), StatusCode::OK);
            r.json::<Value>().await.expect("json")
        }
    };
    let all = list("?limit=0").await;
    assert_eq!(
        (
            all["items"].as_array().map(Vec::len),
            all["total"].as_i64(),
            all["limit"].as_i64()
        ),
        (Some(620), Some(620), Some(0)),
        "limit=0 means every row, as with Flecto"
    );
    assert_eq!(all["items"][619]["source"], "/old/619");
    let tail = list("?limit=0&offset=600").await;
    assert_eq!(tail["items"].as_array().map(Vec::len), Some(20));
    let default = list("").await;
    assert_eq!(default["items"].as_array().map(Vec::len), Some(500));
    app.stop().await;
}

/// One full sync as Flecto's client does it after a version change, then a heartbeat;
/// returns every status seen.
async fn full_sync(agent: &Agent, name: &str) -> Vec<StatusCode> {
    let mut seen = Vec::new();
    for path in [
        "/version",
        "/version",
        "/redirects?limit=100&offset=0",
        "/pages?limit=100&offset=0",
    ] {
        seen.push(
            agent
                .req(Method::GET, path)
                .send()
                .await
                .expect("sync")
                .status(),
        );
    }
    let r = agent
        .req(Method::POST, "/agents")
        .header("content-type", "application/json")
        .body(format!(r#"{{"name":"{name}","status":"success","type":"traefik","version":2,"load_duration":1000,"error":""}}"#))
        .send()
        .await
        .expect("report");
    seen.push(r.status());
    let r = agent
        .req(Method::PATCH, &format!("/agents/{name}/hit"))
        .header("content-length", "0")
        .send()
        .await
        .expect("hit");
    seen.push(r.status());
    seen
}

#[tokio::test]
async fn a_fleet_behind_one_address_syncs_under_its_own_per_token_limit() {
    let app = spawn_app().await;
    project(&app, &[]).await;
    post(
        &app,
        "/redirects",
        json!({"type": "BASIC", "source": "/old", "target": "/new"}),
    )
    .await;
    publish(&app).await;
    // 30 agents, all from 127.0.0.1: 15 share one token, 15 have their own. Three
    // full syncs each are 540 requests from one address, far over the admin API's
    // 100 per minute per IP.
    let shared = agent_token(&app, "shared").await;
    let mut tokens = vec![shared.clone(); 15];
    for i in 0..15 {
        tokens.push(agent_token(&app, &format!("own-{i}")).await);
    }
    let mut tasks = Vec::new();
    for (i, token) in tokens.into_iter().enumerate() {
        let agent = agent(&app, &token);
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..3 {
                seen.extend(full_sync(&agent, &format!("agent-{i}")).await);
            }
            seen
        }));
    }
    let mut total = 0;
    for t in tasks {
        let seen = t.await.expect("agent task");
        total += seen.len();
        assert!(
            seen.iter().all(|s| *s == StatusCode::OK),
            "every sync request succeeds: {seen:?}"
        );
    }
    assert_eq!(total, 30 * 3 * 6);
    let agents = app.get_json(&format!("{P}/agents")).await;
    assert_eq!(agents["total"], 30, "every agent registered");
    // The admin API's own budget was not spent by the agents.
    let r = app
        .admin(Method::GET, "/api/v1/namespaces")
        .send()
        .await
        .expect("admin");
    assert_eq!(r.status(), StatusCode::OK);

    // A token over its limit gets 429 in Flecto's shape, with Retry-After; other
    // tokens keep syncing.
    let r = app
        .admin(Method::PUT, "/api/v1/settings")
        .json(&json!({"redirects": {"agent_rate_limit_per_minute": 5}}))
        .send()
        .await
        .expect("settings");
    assert_eq!(r.status(), StatusCode::OK, "{:?}", r.text().await);
    let greedy = agent(&app, &agent_token(&app, "greedy").await);
    let mut limited = None;
    // Fixed one-minute windows: 11 requests cannot all fit in two windows of 5.
    for _ in 0..11 {
        let r = greedy
            .req(Method::GET, "/version")
            .send()
            .await
            .expect("version");
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(r);
            break;
        }
        assert_eq!(r.status(), StatusCode::OK);
    }
    let r = limited.expect("the greedy token is limited");
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .expect("retry-after")
        .parse()
        .expect("seconds");
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(r.headers()["x-ratelimit-limit"], "5");
    let body: Value = r.json().await.expect("json");
    let obj = body.as_object().expect("object");
    assert_eq!(obj.len(), 1, "only a message, as Flecto's errors: {body}");
    assert!(obj["message"]
        .as_str()
        .is_some_and(|m| m.contains("rate limit")));
    let other = agent(&app, &agent_token(&app, "patient").await);
    assert_eq!(other.version().await, 2, "another token has its own budget");
    // Unknown tokens count per client IP, so guessing tokens is limited too.
    let mut statuses = Vec::new();
    for i in 0..11 {
        let r = Client::new()
            .get(format!(
                "http://{}/api/namespace/prod/project/site/version",
                app.addr
            ))
            .bearer_auth(format!("flecto_guess{i}"))
            .send()
            .await
            .expect("guess");
        statuses.push(r.status());
    }
    assert!(statuses.contains(&StatusCode::UNAUTHORIZED), "{statuses:?}");
    assert!(
        statuses.contains(&StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
    app.stop().await;
}
