//! Settings, revisions (diff, rollback), export/import and backups.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::support::{expect_error, spawn_app, TestApp};

async fn put_settings(app: &TestApp, body: Value, if_match: Option<&str>) -> reqwest::Response {
    let mut r = app.admin(Method::PUT, "/api/v1/settings").json(&body);
    if let Some(m) = if_match {
        r = r.header("if-match", m);
    }
    r.send().await.expect("put settings")
}

#[tokio::test]
async fn settings_are_typed_versioned_and_reach_the_data_plane() {
    let app = spawn_app().await;
    let r = app
        .admin(Method::GET, "/api/v1/settings")
        .send()
        .await
        .expect("get");
    assert_eq!(r.headers()["etag"], "\"0\"");
    let defaults: Value = r.json().await.expect("json");
    assert_eq!(defaults["api"]["rate_limit_per_minute"], 100);
    assert_eq!(defaults["security"]["login_max_failures"], 5);

    let r = put_settings(
        &app,
        json!({"general": {"instance_name": "eu-1"}}),
        Some("\"0\""),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["etag"], "\"1\"");
    let r = put_settings(
        &app,
        json!({"general": {"instance_name": "eu-2"}}),
        Some("\"0\""),
    )
    .await;
    expect_error(r, StatusCode::PRECONDITION_FAILED, "PRECONDITION_FAILED").await;
    let got = app.get_json("/api/v1/settings").await;
    assert_eq!(got["general"]["instance_name"], "eu-1");

    // The in-process gateway received the new revision through the snapshot channel.
    let running = app.running.as_ref().expect("running");
    assert_eq!(running.state.subscribe().borrow().revision, 1);
    assert_eq!(running.state.settings().general.instance_name, "eu-1");
    let health = app.get_json("/health").await;
    assert_eq!(health["revision"], 1);
    app.stop().await;
}

#[tokio::test]
async fn revisions_list_show_diff_and_roll_back() {
    let app = spawn_app().await;
    for name in ["one", "two", "three"] {
        let r = put_settings(&app, json!({"general": {"instance_name": name}}), None).await;
        assert_eq!(r.status(), StatusCode::OK);
    }
    let list = app.get_json("/api/v1/revisions").await;
    assert_eq!(list["total"], 3);
    assert_eq!(list["items"][0]["number"], 3);
    assert_eq!(list["items"][0]["author"], "api_key:bootstrap");
    assert!(list["items"][0]["created_at"]
        .as_str()
        .expect("time")
        .ends_with('Z'));

    let rev2 = app.get_json("/api/v1/revisions/2").await;
    assert_eq!(
        rev2["document"]["settings"]["general"]["instance_name"],
        "two"
    );
    assert_eq!(rev2["document"]["format_version"], 1);

    let d = app.get_json("/api/v1/revisions/3/diff?against=1").await;
    assert_eq!((d["from"].clone(), d["to"].clone()), (json!(1), json!(3)));
    assert_eq!(
        d["changes"],
        json!([{"op": "replace", "path": "/settings/general/instance_name", "before": "one", "after": "three"}])
    );
    let d = app.get_json("/api/v1/revisions/2/diff").await;
    assert_eq!(d["from"], 1);

    let r = app
        .admin(Method::POST, "/api/v1/revisions/1/rollback")
        .send()
        .await
        .expect("rollback");
    assert_eq!(r.status(), StatusCode::OK);
    let rb: Value = r.json().await.expect("json");
    assert_eq!(rb["revision"], 4);
    assert_eq!(rb["rolled_back_to"], 1);
    assert_eq!(
        app.get_json("/api/v1/settings").await["general"]["instance_name"],
        "one"
    );
    let list = app.get_json("/api/v1/revisions").await;
    assert_eq!(list["items"][0]["message"], "rollback to revision 1");
    let audit = app.get_json("/api/v1/audit?action=config.rollback").await;
    assert_eq!(audit["total"], 1);

    for (path, status, code) in [
        ("/api/v1/revisions/99", StatusCode::NOT_FOUND, "NOT_FOUND"),
        (
            "/api/v1/revisions/0",
            StatusCode::BAD_REQUEST,
            "VALIDATION_FAILED",
        ),
        (
            "/api/v1/revisions/abc",
            StatusCode::BAD_REQUEST,
            "VALIDATION_FAILED",
        ),
        (
            "/api/v1/revisions/2/diff?against=77",
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
        ),
        (
            "/api/v1/revisions/2/diff?against=-1",
            StatusCode::BAD_REQUEST,
            "VALIDATION_FAILED",
        ),
    ] {
        let r = app.admin(Method::GET, path).send().await.expect("req");
        expect_error(r, status, code).await;
    }
    let r = app
        .admin(Method::POST, "/api/v1/revisions/99/rollback")
        .send()
        .await
        .expect("req");
    expect_error(r, StatusCode::NOT_FOUND, "NOT_FOUND").await;
    app.stop().await;
}

#[tokio::test]
async fn export_then_import_into_an_empty_instance_is_stable() {
    let a = spawn_app().await;
    put_settings(
        &a,
        json!({"general": {"instance_name": "exported"}, "api": {"rate_limit_per_minute": 250}, "webhooks": {"allow_private_targets": true}}),
        None,
    )
    .await;
    let r = a
        .admin(Method::GET, "/api/v1/export")
        .send()
        .await
        .expect("export");
    assert_eq!(r.status(), StatusCode::OK);
    let exported = r.text().await.expect("text");
    a.stop().await;

    let b = spawn_app().await;
    let doc: Value = serde_json::from_str(&exported).expect("json");
    let dry: Value = b
        .admin(Method::POST, "/api/v1/import?dry_run=true")
        .json(&doc)
        .send()
        .await
        .expect("dry run")
        .json()
        .await
        .expect("json");
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["revision"], Value::Null);
    assert_eq!(
        dry["changes"].as_array().expect("changes").len(),
        3,
        "{dry}"
    );
    assert_eq!(
        b.get_json("/api/v1/revisions").await["total"],
        0,
        "a dry run writes nothing"
    );

    let r = b
        .admin(Method::POST, "/api/v1/import")
        .json(&doc)
        .send()
        .await
        .expect("import");
    assert_eq!(r.status(), StatusCode::OK);
    let imported: Value = r.json().await.expect("json");
    assert_eq!(imported["revision"], 1);
    let again = b
        .admin(Method::GET, "/api/v1/export")
        .send()
        .await
        .expect("export")
        .text()
        .await
        .expect("text");
    assert_eq!(
        again, exported,
        "export -> import -> export must give the same document"
    );
    // Importing the same document again changes nothing and makes no revision.
    let same: Value = b
        .admin(Method::POST, "/api/v1/import")
        .json(&doc)
        .send()
        .await
        .expect("import")
        .json()
        .await
        .expect("json");
    assert_eq!(same["revision"], Value::Null);
    assert_eq!(same["changes"], json!([]));
    b.stop().await;
}

#[tokio::test]
async fn invalid_imports_are_rejected_whole() {
    let app = spawn_app().await;
    put_settings(&app, json!({"general": {"instance_name": "before"}}), None).await;
    let bad_docs = [
        (json!({"format_version": 2}), "format_version"),
        (
            json!({"format_version": 1, "settings": {"general": {"instance_name": "after"}, "audit": {"retention_days": 0}}}),
            "settings.audit.retention_days",
        ),
        (json!({"format_version": 1, "listeners": []}), "listeners"),
        (
            json!({"format_version": 1, "routes": [{"id": "r", "path": "/", "upstream": "missing"}]}),
            "routes[0].upstream",
        ),
        (
            json!({"format_version": 1, "settings": {"api": {"rate_limit_per_minute": "many"}}}),
            "settings.api.rate_limit_per_minute",
        ),
    ];
    for (doc, field) in bad_docs {
        for q in ["", "?dry_run=true"] {
            let r = app
                .admin(Method::POST, &format!("/api/v1/import{q}"))
                .json(&doc)
                .send()
                .await
                .expect("import");
            let e = expect_error(r, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await;
            let got = e["details"]["field"].as_str().expect("field");
            assert_eq!(got, field, "{doc}");
        }
    }
    let r = app
        .admin(Method::POST, "/api/v1/import?dry_run=maybe")
        .json(&json!({"format_version": 1}))
        .send()
        .await
        .expect("import");
    let e = expect_error(r, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await;
    assert_eq!(e["details"]["field"], "dry_run");
    assert_eq!(
        app.get_json("/api/v1/settings").await["general"]["instance_name"],
        "before"
    );
    assert_eq!(app.get_json("/api/v1/revisions").await["total"], 1);
    app.stop().await;
}

#[tokio::test]
async fn backups_are_consistent_files_with_safe_names() {
    let app = spawn_app().await;
    put_settings(
        &app,
        json!({"general": {"instance_name": "backed-up"}}),
        None,
    )
    .await;
    let r = app
        .admin(Method::POST, "/api/v1/settings/backup")
        .json(&json!({"name": "nightly-1"}))
        .send()
        .await
        .expect("backup");
    assert_eq!(r.status(), StatusCode::CREATED);
    let b: Value = r.json().await.expect("json");
    assert_eq!(b["file"], "nightly-1.sqlite");
    assert!(b["size_bytes"].as_u64().expect("size") > 0);
    let path = app.config.data_dir.join("backups").join("nightly-1.sqlite");
    // The copy is a complete database: open it as a store and read the settings back.
    let copy = fleetgate_store::SqlStore::open(&fleetgate_store::StoreOptions::new(format!(
        "sqlite://{}",
        path.display()
    )))
    .await
    .expect("open backup");
    let set = fleetgate_store::ConfigStore::resource_set(&copy)
        .await
        .expect("read backup");
    assert_eq!(
        set["settings"]["global"]["general"]["instance_name"],
        "backed-up"
    );
    fleetgate_store::Store::close(&copy).await;

    let r = app
        .admin(Method::POST, "/api/v1/settings/backup")
        .send()
        .await
        .expect("backup");
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "an empty body picks a name"
    );
    let r = app
        .admin(Method::POST, "/api/v1/settings/backup")
        .json(&json!({"name": "nightly-1"}))
        .send()
        .await
        .expect("backup");
    expect_error(r, StatusCode::CONFLICT, "CONFLICT").await;
    for name in [
        "../../etc/passwd",
        "..",
        ".hidden",
        "a/b",
        "x".repeat(65).as_str(),
        "",
    ] {
        let r = app
            .admin(Method::POST, "/api/v1/settings/backup")
            .json(&json!({"name": name}))
            .send()
            .await
            .expect("backup");
        let e = expect_error(r, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await;
        assert_eq!(e["details"]["field"], "name");
    }
    let list = app.get_json("/api/v1/settings/backups").await;
    assert_eq!(list["total"], 2);
    let audit = app.get_json("/api/v1/audit?action=backup.create").await;
    assert_eq!(audit["total"], 2);

    // A backup downloads whole, as an attachment, and the download is audited.
    let r = app
        .admin(Method::GET, "/api/v1/settings/backups/nightly-1")
        .send()
        .await
        .expect("download");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.headers()["content-disposition"],
        "attachment; filename=\"nightly-1.sqlite\""
    );
    assert_eq!(r.headers()["cache-control"], "no-store");
    let body = r.bytes().await.expect("body");
    assert_eq!(body, std::fs::read(&path).expect("backup file"));
    assert!(body.starts_with(b"SQLite format 3\0"));
    let audit = app.get_json("/api/v1/audit?action=backup.download").await;
    assert_eq!(audit["total"], 1);
    assert_eq!(audit["items"][0]["target_id"], "nightly-1");
    for name in ["nope", ".hidden", "nightly-1.sqlite", "a..b"] {
        let r = app
            .admin(Method::GET, &format!("/api/v1/settings/backups/{name}"))
            .send()
            .await
            .expect("download");
        expect_error(r, StatusCode::NOT_FOUND, "NOT_FOUND").await;
    }
    // Encoded traversal is refused before or by the handler, never served.
    for name in [
        "%2E%2E%2Fconfig",
        "%2E%2E",
        "x%00y",
        "..%2F..%2Fetc%2Fpasswd",
    ] {
        let r = app
            .admin(Method::GET, &format!("/api/v1/settings/backups/{name}"))
            .send()
            .await
            .expect("download");
        assert!(
            [StatusCode::BAD_REQUEST, StatusCode::NOT_FOUND].contains(&r.status()),
            "{name}: {}",
            r.status()
        );
    }
    let viewer = app.key_for_role("backup-viewer", "viewer").await;
    let r = reqwest::Client::new()
        .get(app.url("/api/v1/settings/backups/nightly-1"))
        .bearer_auth(viewer)
        .send()
        .await
        .expect("download");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    tokio::time::sleep(Duration::from_millis(1)).await;
    app.stop().await;
}
