//! The Docker driver against a real engine: a private `dockerd` started for
//! each case (its own socket, data and exec roots in a temporary directory) and
//! an image imported from a busybox root filesystem made on the spot.
//!
//! The engine runs with `--bridge none --iptables=false`: no default bridge
//! and no iptables rules, so nothing of the host's firewall changes. A
//! deployment's own network is a user-defined bridge all the same (the host
//! has its `br-…` interface while the network exists; it goes with the
//! network at stop), its services find each other by name through the
//! engine's DNS, and published ports are bound on the host by the engine's
//! userland proxy (`docker-proxy`), which needs no iptables rule. The
//! engine's default bridge (`network_mode: bridge`) does not exist on such an
//! engine, so that mode is not exercised here.
//!
//! The cases that need the engine run when `FLEETGATE_TEST_DOCKER=1` and
//! `dockerd`, `docker-proxy`, `tar` and a static busybox are installed
//! (Debian: `docker.io`, `busybox-static`); otherwise they print why and pass.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bollard::models::NetworkCreateRequest;
use bollard::query_parameters::{
    CreateImageOptions, InspectContainerOptions, InspectNetworkOptions, ListContainersOptions,
};
use bollard::Docker;
use fleetgate_deploy::check::parse_files;
use fleetgate_deploy::docker::{network_name, DockerDriver, LABEL_DEPLOYMENT};
use fleetgate_deploy::spec::{
    Deployment, Driver, DriverError, LogQuery, ServiceState, ServiceStatus,
};
use futures::StreamExt;

const IMAGE: &str = "fgtest/busybox:1";

/// Why the engine cases cannot run here, if they cannot.
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
    if busybox().is_none() {
        return Some("no static busybox at /bin/busybox (Debian: busybox-static)".into());
    }
    None
}

fn busybox() -> Option<PathBuf> {
    ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// A private engine; stopped (and its containers with it) when dropped.
struct Engine {
    child: Child,
    dir: tempfile::TempDir,
    socket: PathBuf,
}

impl Engine {
    fn start() -> Engine {
        let dir = tempfile::Builder::new()
            .prefix("fgdk")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let socket = dir.path().join("docker.sock");
        let log = std::fs::File::create(dir.path().join("dockerd.log")).expect("log file");
        let child = Command::new("dockerd")
            .arg("--host")
            .arg(format!("unix://{}", socket.display()))
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
        let engine = Engine { child, dir, socket };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !engine.socket.exists() {
            assert!(
                Instant::now() < deadline,
                "dockerd did not listen within 60 s: {}",
                engine.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        engine
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default()
    }

    async fn client(&self) -> Docker {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let docker = Docker::connect_with_unix(
                &self.socket.to_string_lossy(),
                60,
                bollard::API_DEFAULT_VERSION,
            )
            .expect("client");
            if let Ok(docker) = docker.negotiate_version().await {
                if docker.ping().await.is_ok() {
                    return docker;
                }
            }
            assert!(Instant::now() < deadline, "dockerd does not answer");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Imports a busybox root filesystem as [`IMAGE`].
    async fn import_busybox(&self, docker: &Docker) {
        let root = self.dir.path().join("rootfs");
        for d in ["bin", "www", "tmp", "data"] {
            std::fs::create_dir_all(root.join(d)).expect("mkdir");
        }
        std::fs::copy(busybox().expect("busybox"), root.join("bin/busybox")).expect("copy");
        for applet in ["sh", "httpd", "sleep", "echo", "cat", "wget", "ls"] {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).expect("link");
        }
        std::fs::write(root.join("www/index.html"), "from the image\n").expect("write");
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
        let bytes = std::fs::read(&tarball).expect("read tarball");
        let mut progress = docker.create_image(
            Some(CreateImageOptions {
                from_src: Some("-".into()),
                repo: Some("fgtest/busybox".into()),
                tag: Some("1".into()),
                ..Default::default()
            }),
            Some(bollard::body_full(bytes.into())),
            None,
        );
        while let Some(step) = progress.next().await {
            step.expect("import");
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // A case that failed half-way may leave containers and networks; the
        // networks' bridges would outlive the engine on the host.
        let host = format!("unix://{}", self.socket.display());
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
        let pid = self.child.id();
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                unmount_under(self.dir.path());
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        unmount_under(self.dir.path());
    }
}

/// Unmounts what the engine left under `dir` (its network namespace file, a
/// container's rootfs after a kill), so that the directory can be removed.
fn unmount_under(dir: &Path) {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut points: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|p| Path::new(p).starts_with(dir))
        .collect();
    // Deepest first.
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let _ = Command::new("umount").args(["-l", p]).status();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn http_get(port: u16) -> std::io::Result<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET /index.html HTTP/1.0\r\nHost: x\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

async fn wait_until(
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> Option<Vec<ServiceStatus>>,
) -> Vec<ServiceStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(s) = check() {
            return s;
        }
        assert!(Instant::now() < deadline, "{what} within {limit:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn containers(docker: &Docker, deployment: &str) -> Vec<String> {
    let filters = HashMap::from([(
        "label".to_string(),
        vec![format!("{LABEL_DEPLOYMENT}={deployment}")],
    )]);
    docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        }))
        .await
        .expect("list")
        .into_iter()
        .filter_map(|c| c.names.and_then(|n| n.first().cloned()))
        .collect()
}

fn files(
    compose: &str,
) -> (
    fleetgate_deploy::spec::ComposeFile,
    fleetgate_deploy::spec::ServiceMeta,
) {
    parse_files(compose, "driver: docker\n").unwrap_or_else(|p| panic!("{p:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_runs_in_containers_with_health_logs_stats_and_stop() {
    if let Some(why) = missing() {
        println!("skipped: {why}");
        return;
    }
    let engine = Engine::start();
    let docker = engine.client().await;
    engine.import_busybox(&docker).await;

    let app = tempfile::tempdir().expect("app dir");
    std::fs::create_dir(app.path().join("site")).expect("site");
    std::fs::write(app.path().join("site/index.html"), "hello from fleetgate\n").expect("index");
    let port = free_port();
    let compose = format!(
        r#"services:
  web:
    image: {IMAGE}
    command: ["/bin/busybox", "httpd", "-f", "-v", "-p", "127.0.0.1:{port}", "-h", "/www"]
    network_mode: host
    volumes: ["./site:/www:ro"]
    healthcheck:
      test: ["CMD", "/bin/busybox", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:{port}/index.html"]
      interval: 1s
      timeout: 2s
      retries: 5
    stop_grace_period: 2s
  client:
    image: {IMAGE}
    entrypoint: ["/bin/sh", "-c"]
    command: ["echo client up; echo to stderr >&2; echo saved > /data/file; exec sleep 3600"]
    network_mode: host
    environment:
      GREETING: hi
    volumes: ["data:/data"]
    depends_on:
      web:
        condition: service_healthy
    stop_grace_period: 1s
volumes:
  data: {{}}
"#
    );
    let (compose, meta) = files(&compose);
    let driver = DockerDriver::new(&engine.socket);
    let deployment = Deployment {
        name: "app",
        dir: app.path(),
        compose: &compose,
        meta: &meta,
    };
    let mut follow = driver.follow("app");
    driver.start(&deployment).await.expect("start");

    let status = wait_until("both services running", Duration::from_secs(30), || {
        let s = driver.status("app");
        s.iter()
            .all(|x| x.state == ServiceState::Running)
            .then_some(s)
    })
    .await;
    assert_eq!(status.len(), 2);
    for s in &status {
        assert!(s.container_id.is_some(), "{s:?}");
        assert!(s.pid.is_some(), "{s:?}");
        assert!(s.started_at.is_some(), "{s:?}");
        assert_eq!(s.restarts, 0);
    }
    assert!(containers(&docker, "app")
        .await
        .contains(&"/fleetgate-app-web".to_string()));

    let page = http_get(port).expect("httpd answers");
    assert!(
        page.starts_with("HTTP/1.") && page.contains("hello from fleetgate"),
        "{page}"
    );

    // The named volume was made for the deployment.
    docker
        .inspect_volume("fleetgate-app-data")
        .await
        .expect("volume fleetgate-app-data");

    // Logs: the client's lines, each with its stream, oldest first.
    let deadline = Instant::now() + Duration::from_secs(10);
    let lines = loop {
        let lines = driver
            .logs("app", &LogQuery::default())
            .await
            .expect("logs");
        if lines.iter().any(|l| l.line == "to stderr") || Instant::now() > deadline {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let up = lines
        .iter()
        .find(|l| l.line == "client up")
        .unwrap_or_else(|| panic!("{lines:?}"));
    assert_eq!((up.service.as_str(), up.stream), ("client", "stdout"));
    let err = lines
        .iter()
        .find(|l| l.line == "to stderr")
        .unwrap_or_else(|| panic!("{lines:?}"));
    assert_eq!(err.stream, "stderr");
    assert!(lines.windows(2).all(|w| w[0].at <= w[1].at));
    let only_web = driver
        .logs(
            "app",
            &LogQuery {
                service: Some("web".into()),
                tail: Some(1000),
                since: None,
            },
        )
        .await
        .expect("logs");
    assert!(only_web.iter().all(|l| l.service == "web"));
    let one = driver
        .logs(
            "app",
            &LogQuery {
                service: Some("client".into()),
                tail: Some(1),
                since: None,
            },
        )
        .await
        .expect("logs");
    assert_eq!(one.len(), 1);

    // Followed: the driver's notes and the containers' lines as they come.
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !seen
        .iter()
        .any(|l: &fleetgate_deploy::spec::LogLine| l.line == "client up")
    {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, follow.recv()).await {
            Ok(Ok(line)) => seen.push(line),
            other => panic!("follow ended without the client's line: {other:?} after {seen:?}"),
        }
    }
    assert!(
        seen.iter()
            .any(|l| l.stream == "fleetgate"
                && l.line.contains("started container fleetgate-app-web"))
    );

    // Stats: one reading per service, from the engine.
    let stats = driver.stats("app").await;
    assert_eq!(stats.len(), 2);
    for s in &stats {
        assert!(s.memory_bytes > 0, "{s:?}");
        assert!(s.processes >= 1, "{s:?}");
        assert!(s.cpu_percent >= 0.0, "{s:?}");
    }

    // Stop: dependents first, then every container is removed.
    driver.stop("app").await.expect("stop");
    assert!(containers(&docker, "app").await.is_empty());
    assert!(driver.status("app").is_empty());
    assert!(http_get(port).is_err(), "httpd still answers after stop");
    // Stopping again is not an error.
    driver.stop("app").await.expect("stop again");
}

/// Polls `GET /index.html` on a published port until the page holds `want`
/// (the engine's proxy accepts connections before the server in the
/// container listens).
async fn page_on(port: u16, want: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let page = tokio::task::spawn_blocking(move || http_get(port))
            .await
            .expect("join");
        match page {
            Ok(p) if p.contains(want) => return p,
            other => assert!(
                Instant::now() < deadline,
                "port {port} never served {want:?}: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_share_a_network_by_name_and_publish_ports_on_the_host() {
    if let Some(why) = missing() {
        println!("skipped: {why}");
        return;
    }
    let engine = Engine::start();
    let docker = engine.client().await;
    engine.import_busybox(&docker).await;
    let dir = tempfile::tempdir().expect("dir");
    let driver = DockerDriver::new(&engine.socket);

    // web publishes its port 80 twice: on a host port chosen here, and on one
    // the engine picks. client reaches web by its service name.
    let port = free_port();
    let (compose, meta) = files(&format!(
        r#"services:
  web:
    image: {IMAGE}
    command: ["/bin/busybox", "httpd", "-f", "-p", "80", "-h", "/www"]
    ports: ["127.0.0.1:{port}:80", "127.0.0.1::80"]
    stop_grace_period: 1s
  client:
    image: {IMAGE}
    command: ["/bin/sh", "-c", "until wget -q -O /tmp/page http://web/index.html; do sleep 0.2; done; echo fetched: $(cat /tmp/page); exec sleep 3600"]
    depends_on: [web]
    stop_grace_period: 1s
"#
    ));
    let deployment = Deployment {
        name: "net",
        dir: dir.path(),
        compose: &compose,
        meta: &meta,
    };
    driver.start(&deployment).await.expect("start");
    wait_until("both services running", Duration::from_secs(30), || {
        let s = driver.status("net");
        s.iter()
            .all(|x| x.state == ServiceState::Running)
            .then_some(s)
    })
    .await;

    // The deployment's network, labelled as its.
    let network = docker
        .inspect_network(&network_name("net"), None::<InspectNetworkOptions>)
        .await
        .expect("network fleetgate-net");
    assert_eq!(network.driver.as_deref(), Some("bridge"));
    assert_eq!(
        network
            .labels
            .as_ref()
            .and_then(|l| l.get(LABEL_DEPLOYMENT))
            .map(String::as_str),
        Some("net")
    );

    // Published on the host port asked for, and on one the engine chose.
    let page = page_on(port, "from the image").await;
    assert!(page.starts_with("HTTP/1."), "{page}");
    let web = docker
        .inspect_container("fleetgate-net-web", None::<InspectContainerOptions>)
        .await
        .expect("inspect web");
    let bindings = web
        .network_settings
        .and_then(|n| n.ports)
        .and_then(|p| p.get("80/tcp").cloned().flatten())
        .unwrap_or_default();
    let host_ports: Vec<u16> = bindings
        .iter()
        .filter(|b| b.host_ip.as_deref() == Some("127.0.0.1"))
        .filter_map(|b| b.host_port.as_deref()?.parse().ok())
        .collect();
    assert_eq!(host_ports.len(), 2, "{bindings:?}");
    assert!(host_ports.contains(&port), "{bindings:?}");
    let picked = host_ports
        .iter()
        .copied()
        .find(|p| *p != port)
        .expect("a picked port");
    page_on(picked, "from the image").await;

    // client fetched web's page by its service name.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let lines = driver
            .logs(
                "net",
                &LogQuery {
                    service: Some("client".into()),
                    ..Default::default()
                },
            )
            .await
            .expect("logs");
        if lines.iter().any(|l| l.line == "fetched: from the image") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "client never reached web by name: {lines:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Stop: the containers, the network and the host ports go.
    driver.stop("net").await.expect("stop");
    assert!(containers(&docker, "net").await.is_empty());
    let gone = docker
        .inspect_network(&network_name("net"), None::<InspectNetworkOptions>)
        .await;
    assert!(
        gone.is_err(),
        "the network outlived the deployment: {gone:?}"
    );
    assert!(http_get(port).is_err(), "port {port} still answers");
    std::net::TcpListener::bind(("127.0.0.1", port)).expect("the host port is free again");

    // A network of that name that is not the deployment's is not joined.
    docker
        .create_network(NetworkCreateRequest {
            name: network_name("squat"),
            driver: Some("bridge".into()),
            ..Default::default()
        })
        .await
        .expect("create network");
    let (compose, meta) = files(&format!(
        "services:\n  web:\n    image: {IMAGE}\n    command: [\"/bin/busybox\", \"sleep\", \"60\"]\n"
    ));
    let err = driver
        .start(&Deployment {
            name: "squat",
            dir: dir.path(),
            compose: &compose,
            meta: &meta,
        })
        .await
        .expect_err("a network that is not the deployment's");
    assert!(
        err.to_string()
            .contains("network fleetgate-squat exists and is not deployment squat's"),
        "{err}"
    );
    assert!(containers(&docker, "squat").await.is_empty());
    driver.stop("squat").await.expect("stop");
    // Not the deployment's: left alone.
    docker
        .inspect_network(&network_name("squat"), None::<InspectNetworkOptions>)
        .await
        .expect("the other network stays");
    docker
        .remove_network(&network_name("squat"))
        .await
        .expect("remove");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_policies_and_refusals_come_from_the_engine() {
    if let Some(why) = missing() {
        println!("skipped: {why}");
        return;
    }
    let engine = Engine::start();
    let docker = engine.client().await;
    engine.import_busybox(&docker).await;
    let dir = tempfile::tempdir().expect("dir");
    let driver = DockerDriver::new(&engine.socket);

    let (compose, meta) = files(&format!(
        r#"services:
  flaky:
    image: {IMAGE}
    command: ["/bin/sh", "-c", "echo boom; exit 3"]
    network_mode: none
    restart: on-failure:2
  steady:
    image: {IMAGE}
    command: ["/bin/sh", "-c", "sleep 1; exit 0"]
    network_mode: none
    restart: always
"#
    ));
    let deployment = Deployment {
        name: "crashy",
        dir: dir.path(),
        compose: &compose,
        meta: &meta,
    };
    driver.start(&deployment).await.expect("start");
    let status = wait_until(
        "flaky gives up after 2 restarts, steady restarts",
        Duration::from_secs(60),
        || {
            let s = driver.status("crashy");
            let flaky = s.iter().find(|x| x.name == "flaky")?;
            let steady = s.iter().find(|x| x.name == "steady")?;
            (flaky.state == ServiceState::Failed && steady.restarts >= 1).then_some(s)
        },
    )
    .await;
    let flaky = status.iter().find(|x| x.name == "flaky").expect("flaky");
    assert_eq!(flaky.restarts, 2, "{flaky:?}");
    assert_eq!(flaky.exit_code, Some(3), "{flaky:?}");
    assert_eq!(
        flaky.last_error.as_deref(),
        Some("exited with status 3"),
        "{flaky:?}"
    );
    let boom = driver
        .logs(
            "crashy",
            &LogQuery {
                service: Some("flaky".into()),
                ..Default::default()
            },
        )
        .await
        .expect("logs");
    assert!(
        boom.iter().filter(|l| l.line == "boom").count() >= 3,
        "{boom:?}"
    );
    driver.stop("crashy").await.expect("stop");
    assert!(containers(&docker, "crashy").await.is_empty());

    // An image that is not on the host: named, nothing created.
    let (compose, meta) = files("services:\n  web:\n    image: nowhere/none:1\n");
    let err = driver
        .start(&Deployment {
            name: "missing",
            dir: dir.path(),
            compose: &compose,
            meta: &meta,
        })
        .await
        .expect_err("no such image");
    assert!(
        err.to_string()
            .contains("image nowhere/none:1 is not present on this host"),
        "{err}"
    );
    assert!(containers(&docker, "missing").await.is_empty());

    // A service without an image is not the Docker driver's.
    let (compose, meta) = files("services:\n  job:\n    command: [\"true\"]\n");
    let err = driver
        .start(&Deployment {
            name: "cmd",
            dir: dir.path(),
            compose: &compose,
            meta: &meta,
        })
        .await
        .expect_err("no image");
    assert!(matches!(err, DriverError::Unsupported(_)), "{err:?}");
}

#[tokio::test]
async fn without_an_engine_every_call_says_so_within_a_second() {
    let dir = tempfile::tempdir().expect("dir");
    let driver = DockerDriver::new(dir.path().join("nothing.sock"));
    let (compose, meta) = files("services:\n  web:\n    image: busybox\n");
    let started = Instant::now();
    let err = driver
        .start(&Deployment {
            name: "app",
            dir: Path::new("/"),
            compose: &compose,
            meta: &meta,
        })
        .await
        .expect_err("no engine");
    assert!(started.elapsed() < Duration::from_secs(1));
    match err {
        DriverError::Unavailable(why) => assert!(why.contains("no socket at"), "{why}"),
        other => panic!("{other:?}"),
    }
    let err = driver
        .logs("app", &LogQuery::default())
        .await
        .expect_err("no engine");
    assert!(matches!(err, DriverError::Unavailable(_)), "{err:?}");
    // Nothing was started here, so there is nothing to stop.
    driver.stop("app").await.expect("stop");
    assert!(driver.status("app").is_empty());
    assert!(driver.stats("app").await.is_empty());
}

/// A router that remembers what it was asked to route.
#[derive(Default)]
struct Recorder {
    routes: std::sync::Mutex<Vec<Vec<(u16, u32)>>>,
}

#[async_trait::async_trait]
impl fleetgate_deploy::host::Router for Recorder {
    async fn route(
        &self,
        _loaded: &fleetgate_deploy::host::Loaded,
        targets: &[(u16, u32)],
    ) -> Result<(), String> {
        self.routes.lock().expect("routes").push(targets.to_vec());
        Ok(())
    }

    async fn in_flight(&self, _name: &str, _port: u16) -> Option<u64> {
        Some(0)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_run_of_fleetgate_takes_over_from_the_containers_an_earlier_one_left() {
    use fleetgate_deploy::host::{Deployments, Desired, Router};
    use std::sync::Arc;
    if let Some(why) = missing() {
        println!("skipped: {why}");
        return;
    }
    let engine = Engine::start();
    let docker = engine.client().await;
    engine.import_busybox(&docker).await;
    let data = tempfile::tempdir().expect("data dir");
    let port = free_port();
    let compose = format!(
        "services:\n  web:\n    image: {IMAGE}\n    command: [\"/bin/busybox\", \"httpd\", \"-f\", \"-p\", \"80\", \"-h\", \"/www\"]\n    ports: [\"127.0.0.1:{port}:80\"]\n    stop_grace_period: 1s\n"
    );
    let service = "domains: [left.example.test]\nport: 80\ndriver: docker\n";
    let recorder = Arc::new(Recorder::default());
    let router: Arc<dyn Router> = recorder.clone();

    // The first run starts release 1 and then ends without stopping it (a
    // crash): its containers outlive it.
    let first = Arc::new(Deployments::new(data.path(), &engine.socket));
    let loaded = first
        .create("left", &compose, service, Desired::Running)
        .await
        .expect("create");
    let one = first.start(&loaded, &router).await.expect("start");
    let old_port = one.target.expect("a target");
    assert_ne!(old_port, port, "blue-green: a host port of its own");
    assert!(http_get(old_port)
        .expect("served")
        .contains("from the image"));
    drop(first);
    assert_eq!(containers(&docker, "left.1").await.len(), 1);

    // The next run finds them, serves on from them while its own instance
    // starts, switches and stops them.
    let second = Arc::new(Deployments::new(data.path(), &engine.socket));
    let loaded = second.load("left").await.expect("load");
    assert_eq!(loaded.record.serving_port, Some(old_port));
    let two = second.start(&loaded, &router).await.expect("start again");
    assert_eq!(two.key, "left.2");
    let new_port = two.target.expect("a target");
    let routes = recorder.routes.lock().expect("routes").clone();
    assert!(
        routes.contains(&vec![(new_port, 1), (old_port, 0)]),
        "the left-over instance drains: {routes:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !containers(&docker, "left.1").await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "the left-over instance was not stopped"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        recorder.routes.lock().expect("routes").last(),
        Some(&vec![(new_port, 1)])
    );
    assert!(http_get(new_port)
        .expect("served")
        .contains("from the image"));
    second.stop(&loaded).await.expect("stop");
    assert!(containers(&docker, "left.2").await.is_empty());
}
