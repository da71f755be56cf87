//! The Docker endpoints and Docker deployments through the real server.
//!
//! Without an engine (a socket path to nothing): every endpoint answers 503
//! `DOCKER_UNAVAILABLE` within a second, and an image-only deployment says it
//! needs the engine. With `FLEETGATE_TEST_DOCKER=1` and Debian's `docker.io`
//! and `busybox-static`: a private `dockerd` (no default bridge, no iptables
//! rules), a busybox image imported through `POST /api/v1/images/import`, a
//! deployment of it on the host's network serving HTTP, the container, image,
//! volume and network endpoints, and a deployment on its own bridge network:
//! published on a host port of 127.0.0.1 (bound by the engine's userland
//! proxy, which needs no iptables rule), routed by its domain through the
//! gateway, its services reaching each other by name.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::support::{config_in, expect_error, send, spawn_with, unused_port, TestApp};

async fn spawn_with_socket(socket: impl FnOnce(&Path) -> PathBuf) -> TestApp {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = config_in(dir.path());
    config.docker.socket = socket(dir.path());
    spawn_with(config, dir).await
}

#[tokio::test]
async fn without_an_engine_every_docker_endpoint_answers_503_within_a_second() {
    let app = spawn_with_socket(|d| d.join("no-docker.sock")).await;
    let calls: Vec<(Method, &str, Option<Value>)> = vec![
        (Method::GET, "/api/v1/containers", None),
        (Method::POST, "/api/v1/containers/web/start", None),
        (Method::POST, "/api/v1/containers/web/stop", None),
        (Method::POST, "/api/v1/containers/web/restart", None),
        (Method::DELETE, "/api/v1/containers/web", None),
        (Method::GET, "/api/v1/containers/web/logs?tail=5", None),
        (Method::GET, "/api/v1/images", None),
        (
            Method::POST,
            "/api/v1/images/pull",
            Some(json!({"image": "busybox:1"})),
        ),
        (Method::DELETE, "/api/v1/images/busybox", None),
        (Method::GET, "/api/v1/volumes", None),
        (
            Method::POST,
            "/api/v1/volumes",
            Some(json!({"name": "data"})),
        ),
        (Method::DELETE, "/api/v1/volumes/data", None),
        (Method::GET, "/api/v1/networks", None),
        (
            Method::POST,
            "/api/v1/networks",
            Some(json!({"name": "apps"})),
        ),
        (Method::DELETE, "/api/v1/networks/apps", None),
    ];
    for (method, path, body) in calls {
        let mut req = app.admin(method.clone(), path);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let started = Instant::now();
        let r = req.send().await.expect("request");
        let took = started.elapsed();
        let body = expect_error(r, StatusCode::SERVICE_UNAVAILABLE, "DOCKER_UNAVAILABLE").await;
        assert!(
            took < Duration::from_secs(1),
            "{method} {path} took {took:?}"
        );
        assert!(
            body["error"]
                .as_str()
                .unwrap_or("")
                .contains("no-docker.sock"),
            "{method} {path}: {body}"
        );
    }
    let started = Instant::now();
    let r = app
        .admin(Method::POST, "/api/v1/images/import?repo=fgtest/x&tag=1")
        .header("content-type", "application/x-tar")
        .body(vec![0u8; 1024])
        .send()
        .await
        .expect("import");
    expect_error(r, StatusCode::SERVICE_UNAVAILABLE, "DOCKER_UNAVAILABLE").await;
    assert!(started.elapsed() < Duration::from_secs(1));

    // Names that would reach another engine URL are refused before.
    let r = app
        .admin(Method::POST, "/api/v1/containers/..%2Fimages/start")
        .send()
        .await
        .expect("request");
    expect_error(r, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await;
    let r = app
        .admin(Method::POST, "/api/v1/images/import?tag=1")
        .body(vec![0u8; 16])
        .send()
        .await
        .expect("request");
    expect_error(r, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await;

    // Viewers read but do not change.
    let viewer = app.key_for_role("viewer1", "viewer").await;
    let r = app
        .client
        .post(app.url("/api/v1/volumes"))
        .bearer_auth(&viewer)
        .json(&json!({"name": "x"}))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    // An image-only deployment needs the engine, and says so.
    let started = Instant::now();
    let r = app
        .admin(Method::POST, "/api/v1/deployments")
        .json(&json!({"name": "img", "compose": "services:\n  web:\n    image: nginx:1\n"}))
        .send()
        .await
        .expect("create");
    let body = expect_error(r, StatusCode::SERVICE_UNAVAILABLE, "DOCKER_UNAVAILABLE").await;
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(
        body["error"]
            .as_str()
            .unwrap_or("")
            .contains("no-docker.sock"),
        "{body}"
    );
    assert_eq!(body["details"]["created"], true, "{body}");
    let view = app.get_json("/api/v1/deployments/img").await;
    assert_eq!(view["driver"], "docker", "{view}");
    assert_eq!(view["desired"], "stopped", "{view}");

    // With a command too, `auto` runs it as processes when there is no engine.
    let r = app
        .admin(Method::POST, "/api/v1/deployments")
        .json(&json!({"name": "both", "start": false,
            "compose": "services:\n  web:\n    image: busybox\n    command: [\"sleep\", \"60\"]\n"}))
        .send()
        .await
        .expect("create");
    assert_eq!(r.status(), StatusCode::CREATED);
    let view: Value = r.json().await.expect("json");
    assert_eq!(view["driver"], "process", "{view}");
    // And `driver: docker` holds to Docker.
    let r = app
        .admin(Method::POST, "/api/v1/deployments")
        .json(&json!({"name": "pinned", "start": false, "service": "driver: docker\n",
            "compose": "services:\n  web:\n    image: busybox\n    command: [\"sleep\", \"60\"]\n"}))
        .send()
        .await
        .expect("create");
    assert_eq!(r.status(), StatusCode::CREATED);
    let view: Value = r.json().await.expect("json");
    assert_eq!(view["driver"], "docker", "{view}");
    app.stop().await;
}

/// Why the engine case cannot run here, if it cannot.
fn missing() -> Option<String> {
    if std::env::var("FLEETGATE_TEST_DOCKER").ok().as_deref() != Some("1") {
        return Some("FLEETGATE_TEST_DOCKER is not 1".into());
    }
    for tool in ["dockerd", "docker-proxy", "tar"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !found {
            return Some(format!("{tool} is not installed (Debian: docker.io)"));
        }
    }
    if !Path::new("/bin/busybox").exists() {
        return Some("no static busybox at /bin/busybox (Debian: busybox-static)".into());
    }
    None
}

/// A private engine, stopped when dropped.
struct Dockerd {
    child: Child,
    dir: tempfile::TempDir,
}

impl Dockerd {
    fn start() -> Dockerd {
        let dir = tempfile::Builder::new()
            .prefix("fgapi")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let log = std::fs::File::create(dir.path().join("dockerd.log")).expect("log");
        let child = Command::new("dockerd")
            .arg("--host")
            .arg(format!(
                "unix://{}",
                dir.path().join("docker.sock").display()
            ))
            .arg("--data-root")
            .arg(dir.path().join("data"))
            .arg("--exec-root")
            .arg(dir.path().join("exec"))
            .arg("--pidfile")
            .arg(dir.path().join("dockerd.pid"))
            .args(["--bridge", "none", "--iptables=false", "--ip6tables=false"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("dockerd starts");
        let d = Dockerd { child, dir };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !d.socket().exists() {
            assert!(Instant::now() < deadline, "dockerd did not listen");
            std::thread::sleep(Duration::from_millis(100));
        }
        d
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("docker.sock")
    }

    fn rootfs_tarball(&self) -> Vec<u8> {
        let root = self.dir.path().join("rootfs");
        for d in ["bin", "www", "tmp"] {
            std::fs::create_dir_all(root.join(d)).expect("mkdir");
        }
        std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("copy");
        for applet in ["sh", "httpd", "sleep", "echo", "wget"] {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).expect("link");
        }
        std::fs::write(root.join("www/index.html"), "served from a container\n").expect("write");
        let tarball = self.dir.path().join("rootfs.tar");
        let ok = Command::new("tar")
            .arg("-C")
            .arg(&root)
            .arg("-cf")
            .arg(&tarball)
            .arg(".")
            .status()
            .expect("tar")
            .success();
        assert!(ok, "tar failed");
        std::fs::read(tarball).expect("tarball")
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        // A case that failed half-way may leave containers and networks; the
        // networks' bridges would outlive the engine on the host.
        let host = format!("unix://{}", self.socket().display());
        let _ = Command::new("sh")
            .args([
                "-c",
                "docker -H \"$1\" ps -aq | xargs -r docker -H \"$1\" rm -f; docker -H \"$1\" network prune -f",
                "sh",
                &host,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline && !matches!(self.child.try_wait(), Ok(Some(_))) {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The engine leaves its network namespace file mounted.
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let mut points: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .filter(|p| Path::new(p).starts_with(self.dir.path()))
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in points {
            let _ = Command::new("umount").args(["-l", p]).status();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_docker_endpoints_and_a_docker_deployment_on_a_real_engine() {
    if let Some(why) = missing() {
        println!("skipped: {why}");
        return;
    }
    let engine = Dockerd::start();
    let socket = engine.socket();
    let app = spawn_with_socket(|_| socket.clone()).await;

    // The engine may take a moment to answer after its socket appears.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, _) = send(&app, Method::GET, "/api/v1/images", None).await;
        if status == StatusCode::OK {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the engine never answered: {status}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Import a busybox root filesystem as an image.
    let r = app
        .admin(
            Method::POST,
            "/api/v1/images/import?repo=fgtest/busybox&tag=1",
        )
        .header("content-type", "application/x-tar")
        .body(engine.rootfs_tarball())
        .send()
        .await
        .expect("import");
    assert_eq!(r.status(), StatusCode::CREATED);
    let imported: Value = r.json().await.expect("json");
    assert_eq!(imported["image"], "fgtest/busybox:1", "{imported}");
    assert!(
        imported["id"]
            .as_str()
            .is_some_and(|i| i.starts_with("sha256:")),
        "{imported}"
    );
    let images = app.get_json("/api/v1/images").await;
    assert!(
        images["items"]
            .as_array()
            .expect("items")
            .iter()
            .any(|i| i["tags"]
                .as_array()
                .is_some_and(|t| t.contains(&json!("fgtest/busybox:1")))),
        "{images}"
    );

    // A pull that cannot reach a registry fails clearly (the registry named
    // is on loopback, where nothing listens).
    let started = Instant::now();
    let port = unused_port();
    let r = app
        .admin(Method::POST, "/api/v1/images/pull")
        .json(&json!({"image": format!("127.0.0.1:{port}/nothing:1")}))
        .send()
        .await
        .expect("pull");
    let body = expect_error(r, StatusCode::BAD_GATEWAY, "DOCKER_PULL_FAILED").await;
    assert!(started.elapsed() < Duration::from_secs(60), "{body}");

    // A deployment of it: `auto` picks Docker (an image and a command, and an
    // engine that answers).
    let port = unused_port();
    let compose = format!(
        "services:\n  web:\n    image: fgtest/busybox:1\n    command: [\"/bin/busybox\", \"httpd\", \"-f\", \"-p\", \"127.0.0.1:{port}\", \"-h\", \"/www\"]\n    network_mode: host\n    restart: always\n    stop_grace_period: 1s\n"
    );
    let (status, view) = send(
        &app,
        Method::POST,
        "/api/v1/deployments",
        Some(json!({"name": "site", "compose": compose, "service": format!("port: {port}\n")})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{view}");
    assert_eq!(view["driver"], "docker", "{view}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let view = loop {
        let v = app.get_json("/api/v1/deployments/site").await;
        if v["status"] == "running" {
            break v;
        }
        assert!(Instant::now() < deadline, "never running: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let container_id = view["services"][0]["container_id"]
        .as_str()
        .expect("id")
        .to_string();
    let page = reqwest::get(format!("http://127.0.0.1:{port}/index.html"))
        .await
        .expect("httpd answers")
        .text()
        .await
        .expect("body");
    assert_eq!(page, "served from a container\n");

    // The container is listed with its deployment, restarted, and its logs read.
    let containers = app.get_json("/api/v1/containers").await;
    let web = containers["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|c| c["name"] == "fleetgate-site.1-web")
        .unwrap_or_else(|| panic!("{containers}"))
        .clone();
    assert_eq!(web["deployment"], "site");
    assert_eq!(web["instance"], "site.1");
    assert_eq!(web["service"], "web");
    assert_eq!(web["state"], "running");
    assert_eq!(web["id"], container_id.as_str());
    let (status, _) = send(
        &app,
        Method::POST,
        "/api/v1/containers/fleetgate-site.1-web/restart",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let logs = app
        .get_json("/api/v1/containers/fleetgate-site.1-web/logs?tail=10")
        .await;
    assert!(logs["items"].is_array(), "{logs}");
    // Just after the restart the engine may not have a reading yet.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stats = app.get_json("/api/v1/deployments/site/stats").await;
        if stats["memory_bytes"].as_u64().is_some_and(|m| m > 0) {
            break;
        }
        assert!(Instant::now() < deadline, "{stats}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The image is in use: refused until the deployment is gone.
    let (status, body) = send(
        &app,
        Method::DELETE,
        "/api/v1/images/fgtest%2Fbusybox:1",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (status, _) = send(&app, Method::DELETE, "/api/v1/deployments/site", None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = send(
        &app,
        Method::GET,
        "/api/v1/containers/fleetgate-site.1-web/logs",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

    // Volumes and networks.
    let (status, v) = send(
        &app,
        Method::POST,
        "/api/v1/volumes",
        Some(json!({"name": "fg-test-data"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    assert_eq!(v["name"], "fg-test-data");
    let vols = app.get_json("/api/v1/volumes").await;
    assert!(vols.to_string().contains("fg-test-data"), "{vols}");
    let (status, _) = send(&app, Method::DELETE, "/api/v1/volumes/fg-test-data", None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = send(&app, Method::DELETE, "/api/v1/volumes/fg-test-data", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // An internal network: no route out, and nothing is sent over it.
    let (status, n) = send(
        &app,
        Method::POST,
        "/api/v1/networks",
        Some(json!({"name": "fg-test-net", "driver": "bridge", "internal": true})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{n}");
    let nets = app.get_json("/api/v1/networks").await;
    assert!(nets.to_string().contains("fg-test-net"), "{nets}");
    let (status, _) = send(&app, Method::DELETE, "/api/v1/networks/fg-test-net", None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);

    let (status, _) = send(
        &app,
        Method::DELETE,
        "/api/v1/images/fgtest%2Fbusybox:1",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);

    let audit = app.get_json("/api/v1/audit?limit=200").await;
    let actions: Vec<&str> = audit["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    for a in [
        "image.import",
        "container.restart",
        "volume.create",
        "volume.delete",
        "network.create",
        "network.delete",
        "image.delete",
    ] {
        assert!(actions.contains(&a), "{a} not audited: {actions:?}");
    }
    app.stop().await;
}

/// Waits until the server reaches the engine, then imports the busybox image
/// as `fgtest/busybox:1`.
async fn import_busybox(app: &TestApp, engine: &Dockerd) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, _) = send(app, Method::GET, "/api/v1/images", None).await;
        if status == StatusCode::OK {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the engine never answered: {status}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let r = app
        .admin(
            Method::POST,
            "/api/v1/images/import?repo=fgtest/busybox&tag=1",
        )
        .header("content-type", "application/x-tar")
        .body(engine.rootfs_tarball())
        .send()
        .await
        .expect("import");
    assert_eq!(r.status(), StatusCode::CREATED);
}

/// GET through the gateway with a Host header.
async fn via_gateway(app: &TestApp, host: &str, path: &str) -> (StatusCode, String) {
    let gw = app.gateway.expect("gateway");
    let r = reqwest::Client::new()
        .get(format!("http://{gw}{path}"))
        .header("host", host)
        .send()
        .await
        .expect("gateway request");
    (r.status(), r.text().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_docker_deployment_on_its_own_network_is_routed_through_its_published_port() {
    if let Some(why) = missing() {
        println!("skipped: {why}");
        return;
    }
    let engine = Dockerd::start();
    let socket = engine.socket();
    let app = spawn_with_socket(|_| socket.clone()).await;
    import_busybox(&app, &engine).await;

    // web listens on port 80 of its container, published on a free port of
    // 127.0.0.1; probe reaches it by its service name. service.yml is
    // FlatRun's: its container_port is web's port 80, reached at the host
    // port.
    let port = unused_port();
    let compose = format!(
        r#"services:
  web:
    image: fgtest/busybox:1
    command: ["/bin/busybox", "httpd", "-f", "-p", "80", "-h", "/www"]
    ports: ["127.0.0.1:{port}:80"]
    restart: always
    stop_grace_period: 1s
  probe:
    image: fgtest/busybox:1
    command: ["/bin/sh", "-c", "until wget -q -O - http://web/index.html; do sleep 1; done; exec sleep 3600"]
    depends_on: [web]
    stop_grace_period: 1s
"#
    );
    let service = "networking:\n    expose: true\n    domain: bridged.example.test\n    container_port: 80\n    protocol: http\n    proxy_type: \"\"\n";
    let (status, view) = send(
        &app,
        Method::POST,
        "/api/v1/deployments",
        Some(json!({"name": "bridged", "compose": compose, "service": service})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{view}");
    assert_eq!(view["driver"], "docker", "{view}");
    assert_eq!(view["domains"], json!(["bridged.example.test"]), "{view}");
    // Each release publishes web's port 80 on a host port of its own (blue-green).
    assert_eq!(view["strategy"], "blue-green", "{view}");
    let live_port = view["port"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .expect("port");
    assert_ne!(live_port, port, "{view}");
    assert_eq!(view["instance"]["target"], live_port, "{view}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = app.get_json("/api/v1/deployments/bridged").await;
        if v["status"] == "running" {
            break;
        }
        assert!(Instant::now() < deadline, "never running: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Through the gateway by its domain, to the published port.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = via_gateway(&app, "bridged.example.test", "/index.html").await;
        if status == StatusCode::OK {
            assert_eq!(body, "served from a container\n");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway never reached the app: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, _) = via_gateway(&app, "other.example.test", "/index.html").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // The services share the deployment's network: probe fetched web's page
    // by name.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let logs = app
            .get_json("/api/v1/deployments/bridged/logs?service=probe&tail=20")
            .await;
        let fetched = logs["items"]
            .as_array()
            .is_some_and(|l| l.iter().any(|i| i["line"] == "served from a container"));
        if fetched {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "probe never reached web by name: {logs}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let nets = app.get_json("/api/v1/networks").await;
    assert!(nets.to_string().contains("fleetgate-bridged"), "{nets}");
    let stats = app.get_json("/api/v1/deployments/bridged/stats").await;
    assert!(
        stats["memory_bytes"].as_u64().is_some_and(|m| m > 0),
        "{stats}"
    );

    // Stop: the host port is free again and the network is gone.
    let (status, v) = send(&app, Method::POST, "/api/v1/deployments/bridged/stop", None).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    std::net::TcpListener::bind(("127.0.0.1", live_port)).expect("the published port is released");
    let nets = app.get_json("/api/v1/networks").await;
    assert!(!nets.to_string().contains("fleetgate-bridged"), "{nets}");
    let (status, _) = via_gateway(&app, "bridged.example.test", "/index.html").await;
    assert!(status.is_server_error(), "{status}");

    // Started again on the same files, then deleted with its route.
    let (status, v) = send(
        &app,
        Method::POST,
        "/api/v1/deployments/bridged/start",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while via_gateway(&app, "bridged.example.test", "/index.html")
        .await
        .0
        != StatusCode::OK
    {
        assert!(Instant::now() < deadline, "not served after a restart");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, _) = send(&app, Method::DELETE, "/api/v1/deployments/bridged", None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = via_gateway(&app, "bridged.example.test", "/index.html").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let restarted = v["port"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .expect("port");
    std::net::TcpListener::bind(("127.0.0.1", restarted)).expect("the published port is released");
    let containers = app.get_json("/api/v1/containers").await;
    assert!(
        !containers.to_string().contains("fleetgate-bridged"),
        "{containers}"
    );
    let nets = app.get_json("/api/v1/networks").await;
    assert!(!nets.to_string().contains("fleetgate-bridged"), "{nets}");

    // A routed port the engine would pick at each start is refused, naming
    // where.
    let (status, body) = send(
        &app,
        Method::POST,
        "/api/v1/deployments",
        Some(json!({"name": "picked", "start": false,
            "compose": "services:\n  web:\n    image: fgtest/busybox:1\n    ports: [\"80\"]\n",
            "service": "networking:\n  domain: picked.example.test\n  container_port: 80\n"})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let p = &body["details"]["problems"][0];
    assert_eq!(
        (&p["file"], &p["line"], &p["field"]),
        (
            &json!("service.yml"),
            &json!(3),
            &json!("networking.container_port")
        ),
        "{body}"
    );
    assert!(
        p["message"]
            .as_str()
            .is_some_and(|m| m.contains("without a host port (services.web.ports[0]")),
        "{body}"
    );
    app.stop().await;
}
