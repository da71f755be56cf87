//! `fleetgate config dump|diff|apply`: the real binary against the real server
//! (port 0, SQLite), with the key from the environment or a CLI config file.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::redirects::{gateway_until, location};
use crate::support::{spawn_app, TestApp, TOKEN};
use crate::tls::{cert, upload};

const BIN: &str = env!("CARGO_BIN_EXE_fleetgate");

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs the CLI against `app` with the key in FLEETGATE_TOKEN; no other
/// FLEETGATE_ variable, and a HOME of its own (no stray cli.toml).
async fn cli(app: &TestApp, home: &Path, args: &[&str]) -> Out {
    cli_env(app, home, args, &[("FLEETGATE_TOKEN", TOKEN)]).await
}

async fn cli_env(app: &TestApp, home: &Path, args: &[&str], env: &[(&str, &str)]) -> Out {
    let mut c = tokio::process::Command::new(BIN);
    for (k, _) in std::env::vars() {
        if k.starts_with("FLEETGATE_") || k == "XDG_CONFIG_HOME" {
            c.env_remove(k);
        }
    }
    c.env("HOME", home)
        .env("FLEETGATE_MANAGER", app.url(""))
        .args(args)
        .kill_on_drop(true);
    for (k, v) in env {
        c.env(k, v);
    }
    let out = tokio::time::timeout(std::time::Duration::from_secs(60), c.output())
        .await
        .expect("the CLI finishes")
        .expect("the CLI runs");
    Out {
        code: out.status.code().expect("exit code"),
        stdout: String::from_utf8(out.stdout).expect("utf-8"),
        stderr: String::from_utf8(out.stderr).expect("utf-8"),
    }
}

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/fleet.yaml")
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    p.display().to_string()
}

/// A server with the example file applied, and a HOME for the CLI.
async fn with_example() -> (TestApp, tempfile::TempDir) {
    let app = spawn_app().await;
    let home = tempfile::tempdir().expect("home");
    let example = example().display().to_string();
    let o = cli(&app, home.path(), &["config", "apply", "-f", &example]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    (app, home)
}

async fn revisions(app: &TestApp) -> i64 {
    app.get_json("/api/v1/revisions").await["total"]
        .as_i64()
        .expect("total")
}

#[tokio::test]
async fn dump_apply_dump_round_trips_and_unchanged_files_make_no_revision() {
    let app = spawn_app().await;
    let home = tempfile::tempdir().expect("home");
    let h = home.path();
    let example = example().display().to_string();

    // The example differs from an empty manager: exit 2, each resource named.
    let o = cli(&app, h, &["config", "diff", "-f", &example]).await;
    assert_eq!(o.code, 2, "{}{}", o.stdout, o.stderr);
    assert!(o.stdout.contains("+ upstream orders"), "{}", o.stdout);
    assert!(
        o.stdout.contains("+ route site: www.example.com / → web"),
        "{}",
        o.stdout
    );
    assert!(
        o.stdout.contains(
            "+ redirect_project marketing/old-shop: shop.example.com (2 redirects, 1 page)\n"
        ),
        "{}",
        o.stdout
    );

    // A dry run writes nothing.
    let before = revisions(&app).await;
    let o = cli(&app, h, &["config", "apply", "--dry-run", "-f", &example]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(
        o.stdout.contains("dry run: 5 resources would change"),
        "{}",
        o.stdout
    );
    assert_eq!(revisions(&app).await, before);
    assert_eq!(
        app.get_json("/api/v1/namespaces").await["total"],
        json!(0),
        "a dry run creates no project"
    );

    // Apply: one revision, its number printed; the upload's progress in
    // plain lines on standard error (a pipe here).
    let o = cli(&app, h, &["config", "apply", "-f", &example]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    // (One chunk: no `uploading … of …` line before it is all sent.)
    let progress: Vec<&str> = o.stderr.lines().collect();
    assert_eq!(progress.len(), 2, "{}", o.stderr);
    assert!(progress[0].starts_with("uploaded "), "{}", o.stderr);
    assert_eq!(progress[1], "the manager is applying the configuration");
    let after = revisions(&app).await;
    assert_eq!(after, before + 1);
    let top = app.get_json("/api/v1/revisions?limit=1").await;
    let n = top["items"][0]["number"].as_i64().expect("number");
    assert!(
        o.stdout.contains(&format!("applied: revision {n}\n")),
        "{}",
        o.stdout
    );
    assert!(
        o.stdout.contains(
            "applied: redirect project marketing/old-shop (create), published version 2\n"
        ),
        "{}",
        o.stdout
    );
    // The project's rules are published and served by the gateway.
    let r = gateway_until(&app, "shop.example.com", "/catalog", |r| {
        r.status().is_redirection()
    })
    .await;
    assert_eq!(
        (r.status().as_u16(), location(&r)),
        (301, "https://www.example.com/products")
    );
    let r = gateway_until(&app, "shop.example.com", "/item/7", |_| true).await;
    assert_eq!(
        (r.status().as_u16(), location(&r)),
        (302, "https://www.example.com/products/7")
    );
    let r = gateway_until(&app, "shop.example.com", "/robots.txt", |_| true).await;
    assert_eq!(
        r.text().await.expect("body"),
        "User-agent: *\nDisallow: /\n"
    );
    assert_eq!(
        app.get_json("/api/v1/export").await["routes"]
            .as_array()
            .expect("routes")
            .len(),
        2
    );

    // The same file again: no differences, no revision.
    let o = cli(&app, h, &["config", "diff", "-f", &example]).await;
    assert_eq!(
        (o.code, o.stdout.as_str()),
        (0, "no differences\n"),
        "{}",
        o.stderr
    );
    let o = cli(&app, h, &["config", "apply", "-f", &example]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(o.stdout, "no changes: no revision made\n");
    assert_eq!(revisions(&app).await, after);

    // A certificate, by reference: its name and names, never its key.
    let c = cert(&["www.example.com"], 90);
    assert!(upload(&app, "www", &c).await.status().is_success());

    // dump → apply → dump is byte for byte the same, and makes no revision.
    let d1 = cli(&app, h, &["config", "dump"]).await;
    assert_eq!(d1.code, 0, "{}", d1.stderr);
    assert!(
        d1.stdout.starts_with("format_version: 1\nsettings:\n"),
        "{}",
        d1.stdout
    );
    assert!(
        d1.stdout
            .contains("certificates:\n  - name: www\n    sans:\n      - www.example.com\n"),
        "{}",
        d1.stdout
    );
    assert!(!d1.stdout.contains("PRIVATE KEY"));
    let dumped = write(h, "dump.yaml", &d1.stdout);
    let revs = revisions(&app).await;
    let o = cli(&app, h, &["config", "apply", "-f", &dumped]).await;
    assert_eq!(
        (o.code, o.stdout.as_str()),
        (0, "no changes: no revision made\n"),
        "{}",
        o.stderr
    );
    let d2 = cli(&app, h, &["config", "dump"]).await;
    assert_eq!(d1.stdout, d2.stdout);
    assert_eq!(revisions(&app).await, revs);

    // JSON too.
    let j = cli(&app, h, &["config", "dump", "-o", "json"]).await;
    assert_eq!(j.code, 0, "{}", j.stderr);
    let v: Value = serde_json::from_str(&j.stdout).expect("json dump");
    assert_eq!(
        v["certificates"],
        json!([{"name": "www", "sans": ["www.example.com"]}])
    );
    let jf = write(h, "dump.json", &j.stdout);
    let o = cli(&app, h, &["config", "diff", "-f", &jf]).await;
    assert_eq!(o.code, 0, "{}{}", o.stdout, o.stderr);

    assert!(
        d1.stdout
            .contains("redirect_projects:\n  - namespace: marketing\n    name: old-shop\n"),
        "{}",
        d1.stdout
    );

    // A change shows field by field, and applies as one revision; the
    // project's rules are changed, added and deleted by source, and published.
    let changed = write(
        h,
        "changed.yaml",
        &d1.stdout
            .replace("path: /api/orders", "path: /api/v2/orders")
            .replace("rate_limit_per_minute: 100", "rate_limit_per_minute: 250")
            .replace(
                "target: https://www.example.com/products\n",
                "target: https://www.example.com/catalog\n",
            )
            .replace(
                "      - type: REGEX\n        source: \"^/item/(\\\\d+)$\"\n        target: \"https://www.example.com/products/$1\"\n        status: FOUND\n",
                "      - type: BASIC\n        source: /sale\n        target: https://www.example.com/offers\n        status: TEMPORARY_REDIRECT\n",
            ),
    );
    assert_ne!(
        std::fs::read_to_string(&changed)
            .expect("read")
            .matches("/sale")
            .count(),
        0,
        "the regex rule was replaced in the file: {}",
        d1.stdout
    );
    let o = cli(&app, h, &["config", "diff", "-f", &changed]).await;
    assert_eq!(o.code, 2, "{}", o.stderr);
    assert!(
        o.stdout
            .contains("~ route orders-api\n    ~ path: \"/api/orders\" → \"/api/v2/orders\"\n"),
        "{}",
        o.stdout
    );
    assert!(
        o.stdout
            .contains("~ settings\n    ~ api.rate_limit_per_minute: 100 → 250\n"),
        "{}",
        o.stdout
    );
    assert!(
        o.stdout.contains(concat!(
            "~ redirect_project marketing/old-shop\n",
            "    ~ redirect /catalog: target: \"https://www.example.com/products\" → \"https://www.example.com/catalog\"\n",
            "    - redirect ^/item/(\\d+)$ → https://www.example.com/products/$1 (FOUND)\n",
            "    + redirect /sale → https://www.example.com/offers (TEMPORARY_REDIRECT)\n",
        )),
        "{}",
        o.stdout
    );
    let o = cli(&app, h, &["config", "apply", "-f", &changed]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(
        o.stdout.contains(
            "applied: redirect project marketing/old-shop (update), published version 3\n"
        ),
        "{}",
        o.stdout
    );
    assert_eq!(revisions(&app).await, revs + 1);
    let d3 = cli(&app, h, &["config", "dump"]).await;
    assert_eq!(d3.stdout, std::fs::read_to_string(&changed).expect("read"));
    let r = gateway_until(&app, "shop.example.com", "/sale", |r| {
        r.status().is_redirection()
    })
    .await;
    assert_eq!(
        (r.status().as_u16(), location(&r)),
        (307, "https://www.example.com/offers")
    );
    let r = gateway_until(&app, "shop.example.com", "/catalog", |r| {
        location(r) == "https://www.example.com/catalog"
    })
    .await;
    assert_eq!(r.status().as_u16(), 301);
    let r = gateway_until(&app, "shop.example.com", "/item/7", |r| {
        !r.status().is_redirection()
    })
    .await;
    assert_eq!(r.status().as_u16(), 404);
    // Only the rules changed (the configuration as it is): a publish, no revision.
    let only_rules = write(h, "rules.yaml", &d3.stdout.replace("/offers", "/deals"));
    let revs = revisions(&app).await;
    let o = cli(&app, h, &["config", "apply", "-f", &only_rules]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(
        o.stdout.ends_with(concat!(
            "applied: redirect project marketing/old-shop (update), published version 4\n",
            "the configuration is unchanged: no revision made\n"
        )),
        "{}",
        o.stdout
    );
    assert_eq!(revisions(&app).await, revs);
    let o = cli(&app, h, &["config", "apply", "-f", &only_rules]).await;
    assert_eq!(o.stdout, "no changes: no revision made\n", "{}", o.stderr);
    let versions = app
        .get_json("/api/v1/namespaces/marketing/projects/old-shop")
        .await;
    assert_eq!(
        versions["version"],
        json!(4),
        "an unchanged file publishes nothing"
    );
    app.stop().await;
}

#[tokio::test]
async fn select_tag_applies_the_routes_of_one_tag_and_leaves_the_others() {
    let (app, home) = with_example().await;
    let h = home.path();
    let orders_before = app.get_json("/api/v1/routes/orders-api").await;

    // The web team's part: its routes only, the tag written in the file.
    let d = cli(&app, h, &["config", "dump", "--select-tag", "team-web"]).await;
    assert_eq!(d.code, 0, "{}", d.stderr);
    assert!(
        d.stdout
            .starts_with("format_version: 1\nselect_tag: team-web\nroutes:\n  - id: site\n"),
        "{}",
        d.stdout
    );
    assert!(!d.stdout.contains("orders"), "{}", d.stdout);
    assert!(!d.stdout.contains("upstreams:"), "{}", d.stdout);

    // Change its route, add one: the orders team's route is untouched.
    let added = "  - id: blog\n    path: /blog\n    upstream: web\n    tags: [team-web]\n";
    let web = write(
        h,
        "web.yaml",
        &format!("{}{added}", d.stdout.replace("path: /\n", "path: /home\n")),
    );
    let revs = revisions(&app).await;
    let o = cli(&app, h, &["config", "apply", "-f", &web]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.contains("+ route blog"), "{}", o.stdout);
    assert!(!o.stdout.contains("orders"), "{}", o.stdout);
    assert_eq!(revisions(&app).await, revs + 1);
    assert_eq!(
        app.get_json("/api/v1/routes/orders-api").await,
        orders_before
    );
    assert_eq!(app.get_json("/api/v1/routes/site").await["path"], "/home");

    // A route left out of the tagged file is deleted; others stay.
    let only_blog = write(
        h,
        "blog.yaml",
        &format!("format_version: 1\nselect_tag: team-web\nroutes:\n{added}"),
    );
    let o = cli(&app, h, &["config", "diff", "-f", &only_blog]).await;
    assert_eq!(o.code, 2);
    assert!(o.stdout.contains("- route site"), "{}", o.stdout);
    let o = cli(&app, h, &["config", "apply", "-f", &only_blog]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let ids: Vec<Value> = app.get_json("/api/v1/export").await["routes"]
        .as_array()
        .expect("routes")
        .iter()
        .map(|r| r["id"].clone())
        .collect();
    assert_eq!(ids, vec![json!("blog"), json!("orders-api")]);

    // Refused: a route without the tag, a route of another team, other
    // sections, a flag that disagrees with the file; nothing is written.
    let revs = revisions(&app).await;
    let bad = write(
        h,
        "bad-tag.yaml",
        "format_version: 1\nselect_tag: team-web\nupstreams: []\nroutes:\n  - id: x\n    path: /x\n    upstream: web\n  - id: orders-api\n    path: /o\n    upstream: orders\n    tags: [team-web]\n",
    );
    let o = cli(&app, h, &["config", "apply", "-f", &bad]).await;
    assert_eq!(o.code, 1, "{}", o.stdout);
    assert!(
        o.stderr
            .contains(&format!("{bad}:3:1: upstreams: upstreams carry no tags")),
        "{}",
        o.stderr
    );
    assert!(
        o.stderr.contains(&format!(
            "{bad}:5:5: routes[0].tags: route \"x\" does not carry the tag \"team-web\""
        )),
        "{}",
        o.stderr
    );
    assert!(o.stderr.contains(&format!("{bad}:8:5: routes[1].id: route \"orders-api\" exists on the manager without the tag \"team-web\"")), "{}", o.stderr);
    assert!(o.stderr.contains("refused (3 problems)"), "{}", o.stderr);
    let o = cli(
        &app,
        h,
        &[
            "config",
            "apply",
            "--select-tag",
            "team-orders",
            "-f",
            &only_blog,
        ],
    )
    .await;
    assert_eq!(o.code, 1);
    assert!(o.stderr.contains("select_tag: the file owns the routes tagged \"team-web\" but --select-tag asks for \"team-orders\""), "{}", o.stderr);
    assert_eq!(revisions(&app).await, revs);
    app.stop().await;
}

#[tokio::test]
async fn bad_files_are_refused_with_file_line_and_field() {
    let app = spawn_app().await;
    let home = tempfile::tempdir().expect("home");
    let h = home.path();
    let revs = revisions(&app).await;
    let cases: &[(&str, &str, &str)] = &[
        (
            "unknown.yaml",
            "format_version: 1\nroutes:\n  - id: a\n    path: /a\n    upstream: http://127.0.0.1:9\n    pathh: /b\n",
            ":6:5: routes[0].pathh: unknown field `pathh`",
        ),
        (
            "nested.yaml",
            "format_version: 1\nsettings:\n  api:\n    rate_limit: 5\n",
            ":4:5: settings.api.rate_limit: unknown field `rate_limit`",
        ),
        (
            "reference.yaml",
            "format_version: 1\nupstreams: []\nroutes:\n  - id: a\n    path: /a\n    upstream: nowhere\n",
            ":6:5: routes[0].upstream: no upstream named \"nowhere\"",
        ),
        (
            "certificate.yaml",
            "format_version: 1\ncertificates:\n  - name: absent\n",
            ":3:5: certificates[0].name: the manager holds no certificate named \"absent\"",
        ),
        (
            "type.yaml",
            "format_version: 1\nupstreams:\n  - name: u\n    targets: nope\n",
            ":4:5: upstreams[0].targets: invalid type: string \"nope\", expected a sequence",
        ),
        (
            "syntax.yaml",
            "format_version: 1\nroutes:\n  - id: a\n   path: [\n",
            ":4:",
        ),
        (
            "version.yaml",
            "format_version: 7\n",
            ":1:1: format_version: unsupported format version 7",
        ),
        (
            "anchor.json",
            "{\"format_version\": 1,\n \"routes\": [&r {\"id\": \"a\"}]}\n",
            ":2:13: anchors and aliases",
        ),
    ];
    for (name, text, expected) in cases {
        let path = write(h, name, text);
        for cmd in ["diff", "apply"] {
            let o = cli(&app, h, &["config", cmd, "-f", &path]).await;
            assert_eq!(o.code, 1, "{name} {cmd}: {}{}", o.stdout, o.stderr);
            assert!(
                o.stderr.contains(&format!("error: {path}{expected}")),
                "{name} {cmd}: {}",
                o.stderr
            );
            assert!(o.stderr.contains("nothing was changed"), "{}", o.stderr);
        }
    }
    // The manager's own refusals are placed in the file as well.
    let path = write(
        h,
        "invalid.yaml",
        "format_version: 1\nroutes:\n  - id: a\n    path: no-slash\n    upstream: http://127.0.0.1:9\n",
    );
    let o = cli(&app, h, &["config", "apply", "-f", &path]).await;
    assert_eq!(o.code, 1);
    assert!(
        o.stderr.contains(&format!("{path}:4:5: routes[0].path:")),
        "{}",
        o.stderr
    );
    assert_eq!(revisions(&app).await, revs);
    app.stop().await;
}

#[tokio::test]
async fn the_key_comes_from_a_private_cli_config_file_and_is_never_echoed() {
    let app = spawn_app().await;
    let home = tempfile::tempdir().expect("home");
    let h = home.path();
    let dir = h.join(".config/fleetgate");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let file = dir.join("cli.toml");
    std::fs::write(&file, format!("token = \"{TOKEN}\"\n")).expect("write");
    use std::os::unix::fs::PermissionsExt;
    let mode = |m: u32| {
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(m)).expect("chmod")
    };

    // Readable by others: refused, as ssh refuses such a key file.
    mode(0o644);
    let o = cli_env(&app, h, &["config", "dump"], &[]).await;
    assert_eq!(o.code, 1, "{}", o.stdout);
    assert!(
        o.stderr.contains("is readable by others (mode 0644)"),
        "{}",
        o.stderr
    );
    assert!(o.stderr.contains("chmod 600"), "{}", o.stderr);
    assert!(!o.stderr.contains(TOKEN) && !o.stdout.contains(TOKEN));

    // Private: used (the default path under HOME, and one named by flag).
    mode(0o600);
    let o = cli_env(&app, h, &["config", "dump"], &[]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let named = h.join("other.toml");
    std::fs::rename(&file, &named).expect("move");
    let named = named.display().to_string();
    let o = cli_env(&app, h, &["config", "dump", "--cli-config", &named], &[]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);

    // A bad key: the manager's refusal, without the key.
    let o = cli_env(
        &app,
        h,
        &["config", "dump"],
        &[("FLEETGATE_TOKEN", "wrong-key-abcdef")],
    )
    .await;
    assert_eq!(o.code, 1);
    assert!(
        o.stderr.contains("the manager answered 401"),
        "{}",
        o.stderr
    );
    assert!(!o.stderr.contains("wrong-key-abcdef"), "{}", o.stderr);

    // No key at all, no manager at all: say where they come from.
    let o = cli_env(&app, h, &["config", "dump"], &[]).await;
    assert_eq!(o.code, 1);
    assert!(
        o.stderr.contains("no API key given: set FLEETGATE_TOKEN"),
        "{}",
        o.stderr
    );
    let o = cli_env(
        &app,
        h,
        &["config", "dump"],
        &[("FLEETGATE_MANAGER", ""), ("FLEETGATE_TOKEN", TOKEN)],
    )
    .await;
    assert_eq!(o.code, 1);
    assert!(o.stderr.contains("--manager"), "{}", o.stderr);

    // A viewer's key dumps but cannot apply.
    let key = app.key_for_role("reader", "viewer").await;
    let o = cli_env(
        &app,
        h,
        &["config", "dump", "-o", "json"],
        &[("FLEETGATE_TOKEN", &key)],
    )
    .await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let f = write(h, "all.json", &o.stdout);
    let o = cli_env(
        &app,
        h,
        &["config", "apply", "-f", &f],
        &[("FLEETGATE_TOKEN", &key)],
    )
    .await;
    assert_eq!(o.code, 1);
    assert!(
        o.stderr.contains("the manager answered 403"),
        "{}",
        o.stderr
    );
    app.stop().await;
}

#[tokio::test]
async fn routes_upstreams_revisions_and_events_commands() {
    let (app, home) = with_example().await;
    let h = home.path();

    let o = cli(&app, h, &["routes", "list"]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let lines: Vec<&str> = o.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", o.stdout);
    assert!(lines[0].starts_with("ID "), "{}", o.stdout);
    assert!(
        lines[1].starts_with("orders-api  /api/orders "),
        "{}",
        o.stdout
    );
    assert!(lines[2].ends_with("team-web"), "{}", o.stdout);
    let o = cli(&app, h, &["routes", "list", "-o", "json"]).await;
    let v: Value = serde_json::from_str(&o.stdout).expect("json");
    assert_eq!(v.as_array().expect("array").len(), 2);
    let o = cli(&app, h, &["routes", "get", "site", "-o", "json"]).await;
    let v: Value = serde_json::from_str(&o.stdout).expect("json");
    assert_eq!(v["hosts"], json!(["www.example.com"]));
    let o = cli(&app, h, &["upstreams", "list"]).await;
    assert!(
        o.stdout
            .contains("orders  least_connections  http://127.0.0.1:9101,http://127.0.0.1:9102"),
        "{}",
        o.stdout
    );
    let o = cli(&app, h, &["upstreams", "get", "web", "-o", "json"]).await;
    let v: Value = serde_json::from_str(&o.stdout).expect("json");
    assert_eq!(v["targets"][0]["url"], "http://127.0.0.1:9200");

    // Delete: a revision; then the route is gone, and a second delete says so.
    let o = cli(&app, h, &["routes", "delete", "site"]).await;
    assert_eq!(
        (o.code, o.stdout.as_str()),
        (0, "deleted route site\n"),
        "{}",
        o.stderr
    );
    let o = cli(&app, h, &["routes", "get", "site"]).await;
    assert_eq!(o.code, 1);
    assert!(
        o.stderr.contains("the manager answered 404"),
        "{}",
        o.stderr
    );

    // Revisions: 1 (apply) and 2 (delete); the diff names the route; rollback to 1.
    let o = cli(&app, h, &["revisions", "list"]).await;
    let lines: Vec<&str> = o.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", o.stdout);
    assert!(lines[1].starts_with("2 "), "{}", o.stdout);
    let o = cli(&app, h, &["revisions", "diff", "2"]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(
        o.stdout
            .starts_with("revision 2 against 1\n  - routes[1]: "),
        "{}",
        o.stdout
    );
    let o = cli(&app, h, &["revisions", "rollback", "1"]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(
        o.stdout
            .ends_with("rolled back to revision 1: revision 3\n"),
        "{}",
        o.stdout
    );
    assert_eq!(app.get_json("/api/v1/routes/site").await["path"], "/");
    let o = cli(&app, h, &["revisions", "rollback", "3"]).await;
    assert_eq!(
        o.stdout,
        "revision 3 is already in force: no revision made\n"
    );

    // The event stream from the first stored event: the revisions made above.
    let o = cli(
        &app,
        h,
        &[
            "events",
            "tail",
            "--after",
            "0",
            "--type",
            "config.changed",
            "--count",
            "3",
            "-o",
            "json",
        ],
    )
    .await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let events: Vec<Value> = o
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("one event a line"))
        .collect();
    assert_eq!(events.len(), 3);
    assert!(events.iter().all(|e| e["type"] == "config.changed"));
    assert!(
        events[2]["message"]
            .as_str()
            .expect("message")
            .contains("revision 3"),
        "{events:?}"
    );
    app.stop().await;
}

#[tokio::test]
async fn routes_and_upstreams_are_created_updated_and_deleted() {
    let app = spawn_app().await;
    let home = tempfile::tempdir().expect("home");
    let h = home.path();

    // An upstream from flags: -o json prints the created object.
    let o = cli(
        &app,
        h,
        &[
            "upstreams",
            "create",
            "--name",
            "api",
            "--target",
            "http://127.0.0.1:9301",
            "--target",
            "http://127.0.0.1:9302",
            "--balancing",
            "least_connections",
            "-o",
            "json",
        ],
    )
    .await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let v: Value = serde_json::from_str(&o.stdout).expect("json");
    assert_eq!(v["name"], "api");
    assert_eq!(v["load_balancing"], "least_connections");
    assert_eq!(v["targets"][1]["url"], "http://127.0.0.1:9302");
    assert_eq!(app.get_json("/api/v1/upstreams/api").await["name"], "api");

    // From a YAML file, as a table.
    let file = write(
        h,
        "web.yaml",
        "name: web\ntargets:\n  - url: http://127.0.0.1:9400\n    weight: 3\n",
    );
    let o = cli(&app, h, &["upstreams", "create", "-f", &file]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(
        o.stdout,
        "created upstream web\nNAME  BALANCING    TARGETS\nweb   round_robin  http://127.0.0.1:9400\n"
    );

    // The manager's refusal names the field; the exit code is 1.
    let o = cli(
        &app,
        h,
        &[
            "upstreams",
            "create",
            "--name",
            "bad",
            "--target",
            "ftp://x",
        ],
    )
    .await;
    assert_eq!(o.code, 1, "{}", o.stdout);
    assert!(
        o.stderr.contains("the manager answered 400") && o.stderr.contains("\n  targets[0].url: "),
        "{}",
        o.stderr
    );
    let o = cli(
        &app,
        h,
        &[
            "upstreams",
            "create",
            "--name",
            "api",
            "--target",
            "http://127.0.0.1:1",
        ],
    )
    .await;
    assert_eq!(o.code, 1);
    assert!(
        o.stderr.contains("the manager answered 409"),
        "{}",
        o.stderr
    );
    let o = cli(&app, h, &["upstreams", "create", "--name", "x"]).await;
    assert_eq!(o.code, 1);
    assert!(o.stderr.contains("at least one --target"), "{}", o.stderr);

    // A route from flags.
    let o = cli(
        &app,
        h,
        &[
            "routes",
            "create",
            "--id",
            "api",
            "--path",
            "/api",
            "--host",
            "api.example.com",
            "--host",
            "*.api.example.com",
            "--methods",
            "GET,post",
            "--upstream",
            "api",
            "--strip-path",
            "--tag",
            "team-api",
            "-o",
            "json",
        ],
    )
    .await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let r: Value = serde_json::from_str(&o.stdout).expect("json");
    assert_eq!(r["hosts"], json!(["api.example.com", "*.api.example.com"]));
    assert_eq!(r["methods"], json!(["GET", "POST"]));
    assert_eq!(r["strip_path"], true);
    assert_eq!(r["tags"], json!(["team-api"]));
    assert_eq!(app.get_json("/api/v1/routes/api").await["upstream"], "api");

    // From a JSON file, a flag changing one of its fields; the id generated.
    let file = write(
        h,
        "route.json",
        r#"{"path": "/web", "upstream": "web", "description": "from a file"}"#,
    );
    let o = cli(
        &app,
        h,
        &[
            "routes", "create", "-f", &file, "--match", "exact", "-o", "json",
        ],
    )
    .await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let r: Value = serde_json::from_str(&o.stdout).expect("json");
    assert!(r["id"].as_str().expect("id").starts_with("route-"), "{r}");
    assert_eq!(
        (r["match"].as_str(), r["description"].as_str()),
        (Some("exact"), Some("from a file"))
    );

    // Refusals: a field of the file unknown to the manager, an unknown
    // upstream, a taken id, a missing path.
    let bad = write(h, "bad.yaml", "path: /x\nupstream: web\ncolour: blue\n");
    let o = cli(&app, h, &["routes", "create", "-f", &bad]).await;
    assert_eq!(o.code, 1);
    assert!(o.stderr.contains("colour"), "{}", o.stderr);
    let o = cli(
        &app,
        h,
        &["routes", "create", "--path", "/y", "--upstream", "nowhere"],
    )
    .await;
    assert_eq!(o.code, 1);
    assert!(o.stderr.contains("upstream"), "{}", o.stderr);
    assert!(o.stderr.contains("nowhere"), "{}", o.stderr);
    let o = cli(
        &app,
        h,
        &[
            "routes",
            "create",
            "--id",
            "api",
            "--path",
            "/z",
            "--upstream",
            "web",
        ],
    )
    .await;
    assert_eq!(o.code, 1);
    assert!(
        o.stderr.contains("the manager answered 409"),
        "{}",
        o.stderr
    );
    let o = cli(&app, h, &["routes", "create", "--upstream", "web"]).await;
    assert_eq!(o.code, 1);
    assert!(o.stderr.contains("a route needs --path"), "{}", o.stderr);

    // Update: the flags given change those fields, the others stay.
    let o = cli(
        &app,
        h,
        &[
            "routes",
            "update",
            "api",
            "--path",
            "/v2/api",
            "--strip-path=false",
        ],
    )
    .await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(
        o.stdout.starts_with("updated route api\nID "),
        "{}",
        o.stdout
    );
    let r = app.get_json("/api/v1/routes/api").await;
    assert_eq!(
        (r["path"].as_str(), r["strip_path"].as_bool()),
        (Some("/v2/api"), Some(false))
    );
    assert_eq!(r["hosts"], json!(["api.example.com", "*.api.example.com"]));
    let o = cli(&app, h, &["routes", "update", "api"]).await;
    assert_eq!(o.code, 1);
    assert!(o.stderr.contains("nothing to change"), "{}", o.stderr);
    let o = cli(&app, h, &["routes", "update", "nope", "--path", "/n"]).await;
    assert_eq!(o.code, 1);
    assert!(
        o.stderr.contains("the manager answered 404"),
        "{}",
        o.stderr
    );

    // An upstream in use is not deleted; once its route is gone, it is.
    let o = cli(&app, h, &["upstreams", "delete", "api"]).await;
    assert_eq!(o.code, 1);
    assert!(
        o.stderr.contains("the manager answered 409") && o.stderr.contains("used by routes api"),
        "{}",
        o.stderr
    );
    let o = cli(&app, h, &["routes", "delete", "api"]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let o = cli(&app, h, &["upstreams", "delete", "api", "-o", "json"]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(
        serde_json::from_str::<Value>(&o.stdout).expect("json"),
        json!({"deleted": "api"})
    );
    let o = cli(&app, h, &["upstreams", "get", "api"]).await;
    assert!(
        o.stderr.contains("the manager answered 404"),
        "{}",
        o.stderr
    );
    app.stop().await;
}

/// Plain progress lines on standard error when it is a pipe, the result alone
/// on standard output.
#[tokio::test]
async fn redirects_import_uploads_with_plain_progress_lines_on_a_pipe() {
    let app = spawn_app().await;
    let home = tempfile::tempdir().expect("home");
    let h = home.path();
    for (path, body) in [
        ("/api/v1/namespaces", json!({"name": "shop"})),
        (
            "/api/v1/namespaces/shop/projects",
            json!({"name": "site", "hosts": ["shop.test"]}),
        ),
    ] {
        let r = app
            .admin(reqwest::Method::POST, path)
            .json(&body)
            .send()
            .await
            .expect("send");
        assert!(r.status().is_success(), "{path}: {}", r.status());
    }
    let mut csv = String::from("type,source,target,status\n");
    for i in 0..20_000 {
        csv.push_str(&format!(
            "BASIC,/old/page-{i}.html,/new/{i},MOVED_PERMANENT\n"
        ));
    }
    let file = write(h, "rules.csv", &csv);
    let size = csv.len();
    let args = |extra: &[&'static str]| {
        let mut a = vec![
            "redirects",
            "import",
            "--namespace",
            "shop",
            "--project",
            "site",
            "-f",
        ];
        a.push(Box::leak(file.clone().into_boxed_str()));
        a.extend_from_slice(extra);
        a
    };

    // A dry run checks every row and writes nothing.
    let o = cli(&app, h, &args(&["--dry-run"])).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(
        o.stdout,
        "dry run: 20000 rows are valid; nothing was written\n"
    );
    assert!(
        o.stderr.contains("the manager is checking the rows\n"),
        "{}",
        o.stderr
    );

    let o = cli(&app, h, &args(&[])).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(
        o.stdout,
        "imported 20000 rows into the drafts of shop/site: 20000 created, 0 updated, 0 unchanged, 0 deleted\n"
    );
    let total = format!("{:.2} MB", size as f64 / 1e6);
    let lines: Vec<&str> = o.stderr.lines().collect();
    // No bar, no terminal escapes: lines, the first as soon as bytes move.
    assert!(
        !o.stderr.contains('\u{1b}') && !o.stderr.contains('\r'),
        "{:?}",
        o.stderr
    );
    assert!(
        lines[0].starts_with("uploading ") && lines[0].ends_with(&format!(" of {total}")),
        "{lines:?}"
    );
    let done = lines.iter().position(|l| *l == format!("uploaded {total}"));
    let done = done.unwrap_or_else(|| panic!("an `uploaded {total}` line: {lines:?}"));
    assert_eq!(
        lines.get(done + 1),
        Some(&"the manager is importing the rows"),
        "{lines:?}"
    );
    assert_eq!(lines.len(), done + 2, "{lines:?}");
    let drafts = app
        .get_json("/api/v1/namespaces/shop/projects/site/drafts")
        .await;
    assert_eq!(drafts["total"], 20000, "{drafts}");

    // Again, as JSON: nothing changes.
    let o = cli(&app, h, &args(&["-o", "json"])).await;
    let v: Value = serde_json::from_str(&o.stdout).expect("json");
    assert_eq!(
        (v["rows"].as_u64(), v["unchanged"].as_u64()),
        (Some(20000), Some(20000))
    );

    // A bad row: nothing imported, the line and the field named.
    let bad = write(
        h,
        "bad.csv",
        "type,source,target,status\nBASIC,/a,/b,FOUND\nBASIC,/a,/c,FOUND\n",
    );
    let o = cli(
        &app,
        h,
        &[
            "redirects",
            "import",
            "--namespace",
            "shop",
            "--project",
            "site",
            "-f",
            &bad,
        ],
    )
    .await;
    assert_eq!(o.code, 1, "{}", o.stdout);
    assert!(
        o.stderr.contains("the manager answered 400")
            && o.stderr
                .contains("\n  line 3: source: duplicate source \"/a\" (first on line 2)"),
        "{}",
        o.stderr
    );
    app.stop().await;
}

#[tokio::test]
async fn backup_is_made_and_downloaded_with_progress_and_never_overwrites() {
    let app = spawn_app().await;
    let home = tempfile::tempdir().expect("home");
    let h = home.path();
    let out = h.join("store.sqlite");
    let out_s = out.display().to_string();
    let o = cli(&app, h, &["backup", "--name", "nightly", "--out", &out_s]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let data = std::fs::read(&out).expect("the backup was written");
    assert!(data.starts_with(b"SQLite format 3\0"), "a SQLite database");
    // The size shown is the bytes written, in the progress lines' units.
    let size = o
        .stdout
        .strip_prefix(&format!("backup nightly saved to {out_s} ("))
        .and_then(|s| s.strip_suffix(")\n"))
        .unwrap_or_else(|| panic!("{}", o.stdout));
    assert_eq!(size, indicatif::DecimalBytes(data.len() as u64).to_string());
    assert!(
        o.stderr.starts_with(
            "the manager is writing the backup\nbackup nightly written on the manager ("
        ),
        "{}",
        o.stderr
    );
    assert!(
        o.stderr.ends_with(&format!("\ndownloaded {size}\n")),
        "{}",
        o.stderr
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&out).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    // An existing file is left alone, and no backup is made for it.
    std::fs::write(&out, b"keep").expect("write");
    let o = cli(&app, h, &["backup", "--out", &out_s]).await;
    assert_eq!(o.code, 1);
    assert!(
        o.stderr.contains("an existing file is never overwritten"),
        "{}",
        o.stderr
    );
    assert_eq!(std::fs::read(&out).expect("read"), b"keep");
    assert_eq!(app.get_json("/api/v1/settings/backups").await["total"], 1);

    // On the manager only.
    let o = cli(
        &app,
        h,
        &[
            "backup",
            "--name",
            "only-here",
            "--no-download",
            "-o",
            "json",
        ],
    )
    .await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let v: Value = serde_json::from_str(&o.stdout).expect("json");
    assert_eq!(v["file"], "only-here.sqlite");
    let listed = app.get_json("/api/v1/settings/backups").await;
    assert_eq!(listed["total"], 2, "{listed}");
    app.stop().await;
}

/// The example's project as the API lists it, and its published version.
async fn shop_project(app: &TestApp) -> (Value, Value) {
    let p = app
        .get_json("/api/v1/namespaces/marketing/projects/old-shop")
        .await;
    let r = app
        .get_json("/api/v1/namespaces/marketing/projects/old-shop/redirects")
        .await;
    (p["version"].clone(), r["items"].clone())
}

#[tokio::test]
async fn redirect_projects_apply_all_or_nothing() {
    let (app, home) = with_example().await;
    let h = home.path();
    let d = cli(&app, h, &["config", "dump"]).await;
    assert_eq!(d.code, 0, "{}", d.stderr);
    assert_eq!(d.stderr, "", "no drafts, no note");
    let revs = revisions(&app).await;
    let before = shop_project(&app).await;
    let export = app.get_json("/api/v1/export").await;

    // A bad rule next to a route change: refused by the CLI with the file's
    // line and field, and nothing is written.
    let bad = write(
        h,
        "bad-rule.yaml",
        &d.stdout
            .replace("path: /api/orders", "path: /api/v2/orders")
            .replace(
                "target: https://www.example.com/products\n",
                "target: \"\"\n",
            ),
    );
    let line = d
        .stdout
        .lines()
        .position(|l| l == "        target: https://www.example.com/products")
        .expect("the target's line")
        + 1;
    let o = cli(&app, h, &["config", "apply", "-f", &bad]).await;
    assert_eq!(o.code, 1, "{}", o.stdout);
    assert!(
        o.stderr.contains(&format!(
            "{bad}:{line}:9: redirect_projects[0].redirects[0].target: "
        )),
        "{}",
        o.stderr
    );
    assert!(o.stderr.contains("nothing was changed"), "{}", o.stderr);

    // The manager checks the same on its own, every rule named by field.
    let mut body = json!({
        "config": export,
        "redirect_projects": [{
            "namespace": "marketing", "name": "old-shop", "hosts": ["shop.example.com"],
            "redirects": [
                {"type": "BASIC", "source": "/ok", "target": "/fine"},
                {"type": "BASIC", "source": "/bad", "target": ""},
                {"type": "BASIC", "source": "/ok", "target": "/twice"},
            ],
        }],
    });
    body["config"]["routes"][0]["path"] = json!("/api/v3/orders");
    let r = app
        .admin(reqwest::Method::POST, "/api/v1/config/apply")
        .json(&body)
        .send()
        .await
        .expect("apply");
    let e = crate::support::expect_error(r, reqwest::StatusCode::BAD_REQUEST, "VALIDATION_FAILED")
        .await;
    let fields: Vec<&str> = e["details"]["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .filter_map(|x| x["field"].as_str())
        .collect();
    assert!(
        fields.contains(&"redirect_projects[0].redirects[1].target"),
        "{e}"
    );
    assert!(
        fields.contains(&"redirect_projects[0].redirects[2].source"),
        "{e}"
    );

    // A project to change holds drafts: 409, and the route change that came
    // with it in the same file is not written either (one transaction).
    let r = app
        .admin(
            reqwest::Method::POST,
            "/api/v1/namespaces/marketing/projects/old-shop/redirects",
        )
        .json(&json!({"type": "BASIC", "source": "/draft", "target": "/d"}))
        .send()
        .await
        .expect("draft");
    assert_eq!(r.status(), reqwest::StatusCode::CREATED);
    let changed = write(
        h,
        "changed.yaml",
        &d.stdout
            .replace("path: /api/orders", "path: /api/v2/orders")
            .replace("/products\n", "/everything\n"),
    );
    let o = cli(&app, h, &["config", "apply", "-f", &changed]).await;
    assert_eq!(o.code, 1, "{}", o.stdout);
    assert!(
        o.stderr
            .contains("project marketing/old-shop has 1 unpublished redirect change(s)"),
        "{}",
        o.stderr
    );
    assert_eq!(revisions(&app).await, revs);
    assert_eq!(app.get_json("/api/v1/export").await, export);
    assert_eq!(shop_project(&app).await.0, before.0);
    // The dump says why: the drafts are not in the file.
    let d2 = cli(&app, h, &["config", "dump"]).await;
    assert_eq!(d2.stdout, d.stdout);
    assert_eq!(
        d2.stderr,
        "note: redirect project marketing/old-shop has 1 unpublished change (the file holds its published rules)\n"
    );
    // A file that leaves the project's rules as published applies around the drafts.
    let route_only = write(
        h,
        "route.yaml",
        &d.stdout
            .replace("path: /api/orders", "path: /api/v2/orders"),
    );
    let o = cli(&app, h, &["config", "apply", "-f", &route_only]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(revisions(&app).await, revs + 1);
    let r = app
        .admin(
            reqwest::Method::POST,
            "/api/v1/namespaces/marketing/projects/old-shop/discard",
        )
        .send()
        .await
        .expect("discard");
    assert!(r.status().is_success(), "{}", r.status());

    // Leaving a project out of `redirect_projects` deletes it; an empty
    // list deletes all; without the section they are left alone.
    let no_section = write(
        h,
        "no-section.yaml",
        &d.stdout[..d.stdout.find("redirect_projects:").expect("section")],
    );
    let o = cli(&app, h, &["config", "diff", "-f", &no_section]).await;
    assert!(!o.stdout.contains("redirect_project"), "{}", o.stdout);
    let empty = write(
        h,
        "empty.yaml",
        &format!("{}redirect_projects: []\n", &route_only_text(&d.stdout)),
    );
    let o = cli(&app, h, &["config", "diff", "-f", &empty]).await;
    assert_eq!(o.code, 2);
    assert_eq!(
        o.stdout,
        "- redirect_project marketing/old-shop: shop.example.com (2 redirects, 1 page)\n"
    );
    let revs = revisions(&app).await;
    let o = cli(&app, h, &["config", "apply", "-f", &empty]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(
        o.stdout,
        concat!(
            "- redirect_project marketing/old-shop: shop.example.com (2 redirects, 1 page)\n",
            "applied: redirect project marketing/old-shop (delete)\n",
            "the configuration is unchanged: no revision made\n"
        )
    );
    assert_eq!(revisions(&app).await, revs);
    let r = app
        .admin(
            reqwest::Method::GET,
            "/api/v1/namespaces/marketing/projects/old-shop",
        )
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), reqwest::StatusCode::NOT_FOUND);
    let r = gateway_until(&app, "shop.example.com", "/catalog", |r| {
        !r.status().is_redirection()
    })
    .await;
    assert_eq!(r.status().as_u16(), 404);
    let actions = crate::support::audit_actions(&app, "").await;
    assert!(actions.iter().any(|a| a == "project.delete"), "{actions:?}");
    app.stop().await;
}

/// The dump with the route change of the test above, without its projects.
fn route_only_text(dump: &str) -> String {
    dump[..dump.find("redirect_projects:").expect("section")]
        .replace("path: /api/orders", "path: /api/v2/orders")
}

#[tokio::test]
async fn a_change_made_since_the_file_was_read_is_a_conflict() {
    let (app, home) = with_example().await;
    let h = home.path();
    let declared = app.get_json("/api/v1/config/declared").await;
    let read = declared["revision"].as_i64().expect("revision");
    assert_eq!(read, revisions(&app).await);

    // Someone changes a route after the file was read.
    let mut route = app.get_json("/api/v1/routes/site").await;
    route["path"] = json!("/elsewhere");
    let r = app
        .admin(reqwest::Method::PUT, "/api/v1/routes/site")
        .json(&route)
        .send()
        .await
        .expect("put");
    assert!(r.status().is_success(), "{}", r.status());
    let revs = revisions(&app).await;

    // An apply or import made against the revision read is refused: 409,
    // nothing written, the other change kept.
    let mut config = declared["config"].clone();
    config["routes"][0]["path"] = json!("/api/v2/orders");
    let r = app
        .admin(reqwest::Method::POST, "/api/v1/config/apply")
        .json(&json!({"expected_revision": read, "config": config}))
        .send()
        .await
        .expect("apply");
    let e = crate::support::expect_error(r, reqwest::StatusCode::CONFLICT, "CONFLICT").await;
    assert!(
        e["error"]
            .as_str()
            .is_some_and(|m| m.contains(&format!("not {read}"))),
        "{e}"
    );
    let r = app
        .admin(
            reqwest::Method::POST,
            &format!("/api/v1/import?expected_revision={read}"),
        )
        .json(&config)
        .send()
        .await
        .expect("import");
    assert_eq!(r.status(), reqwest::StatusCode::CONFLICT);
    let r = app
        .admin(reqwest::Method::POST, "/api/v1/import")
        .header("if-match", format!("\"{read}\""))
        .json(&config)
        .send()
        .await
        .expect("import");
    assert_eq!(r.status(), reqwest::StatusCode::CONFLICT);
    assert_eq!(revisions(&app).await, revs);
    assert_eq!(
        app.get_json("/api/v1/routes/site").await["path"],
        "/elsewhere"
    );

    // Against the revision in force it applies.
    let r = app
        .admin(
            reqwest::Method::POST,
            &format!("/api/v1/import?expected_revision={revs}"),
        )
        .json(&config)
        .send()
        .await
        .expect("import");
    assert!(r.status().is_success(), "{}", r.status());
    assert_eq!(revisions(&app).await, revs + 1);

    // A tagged file may not hold redirect projects: they carry no tags.
    let tagged = write(
        h,
        "tagged.yaml",
        "format_version: 1\nselect_tag: team-web\nroutes: []\nredirect_projects: []\n",
    );
    let o = cli(&app, h, &["config", "apply", "-f", &tagged]).await;
    assert_eq!(o.code, 1);
    assert!(
        o.stderr.contains(&format!(
            "{tagged}:4:1: redirect_projects: redirect_projects carry no tags"
        )),
        "{}",
        o.stderr
    );
    let d = cli(&app, h, &["config", "dump", "--select-tag", "team-web"]).await;
    assert!(!d.stdout.contains("redirect_projects"), "{}", d.stdout);
    app.stop().await;
}
