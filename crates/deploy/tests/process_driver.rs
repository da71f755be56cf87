//! The process driver against real processes: `sh` scripts whose output,
//! exits, signals and timing the tests observe through the driver's API and
//! `/proc`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetgate_deploy::process::stats::parse_stat;
use fleetgate_deploy::process::ProcessDriver;
use fleetgate_deploy::spec::{
    ComposeFile, Dependency, DependencyCondition, Deployment, Driver, DriverError, HealthCheck,
    HealthTest, LogLine, LogQuery, RestartPolicy, ServiceMeta, ServiceSpec, ServiceState,
    ServiceStatus,
};

fn service(name: &str, script: &str) -> ServiceSpec {
    ServiceSpec {
        name: name.to_string(),
        line: 1,
        image: None,
        command: Some(vec!["sh".into(), "-c".into(), script.into()]),
        entrypoint: None,
        environment: BTreeMap::new(),
        ports: Vec::new(),
        volumes: Vec::new(),
        healthcheck: None,
        depends_on: Vec::new(),
        restart: RestartPolicy::No,
        working_dir: None,
        stop_grace_period: Duration::from_secs(10),
        stop_signal: "SIGTERM".into(),
        network_mode: None,
    }
}

/// A driver with its log root and a deployment directory, both temporary.
struct Fixture {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    driver: Arc<ProcessDriver>,
}

impl Fixture {
    fn new() -> Self {
        Self::with_rotation(10 * 1024 * 1024, 3)
    }

    fn with_rotation(max_bytes: u64, keep: usize) -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("app");
        std::fs::create_dir(&dir).expect("deployment dir");
        let driver = Arc::new(ProcessDriver::with_log_rotation(
            tmp.path().join("logs"),
            max_bytes,
            keep,
        ));
        Self {
            _tmp: tmp,
            dir,
            driver,
        }
    }

    fn logs_dir(&self) -> PathBuf {
        self._tmp.path().join("logs")
    }

    async fn start(&self, name: &str, services: Vec<ServiceSpec>) -> Result<(), DriverError> {
        let compose = ComposeFile { services };
        let meta = ServiceMeta::default();
        let deployment = Deployment {
            name,
            dir: &self.dir,
            compose: &compose,
            meta: &meta,
        };
        self.driver.start(&deployment).await
    }

    fn status_of(&self, name: &str, service: &str) -> ServiceStatus {
        self.driver
            .status(name)
            .into_iter()
            .find(|s| s.name == service)
            .expect("service in status")
    }

    async fn all_logs(&self, name: &str) -> Vec<LogLine> {
        self.driver
            .logs(
                name,
                &LogQuery {
                    tail: Some(10_000),
                    ..LogQuery::default()
                },
            )
            .await
            .expect("logs")
    }
}

/// Polls `check` every 50 ms until it holds or `limit` passes.
async fn wait_until(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Live (not zombie) processes of group `pgid`.
fn group_pids(pgid: u32) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        if let Some(stat) = parse_stat(&stat) {
            if i64::from(stat.pgrp) == i64::from(pgid) && stat.state != 'Z' {
                pids.push(stat.pid as u32);
            }
        }
    }
    pids
}

/// The process has exited (a zombie waiting for a reaper counts as gone).
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => parse_stat(&stat).is_none_or(|s| s.state == 'Z' || s.state == 'X'),
        Err(_) => true,
    }
}

fn lines_of<'a>(logs: &'a [LogLine], stream: &str) -> Vec<&'a str> {
    logs.iter()
        .filter(|l| l.stream == stream)
        .map(|l| l.line.as_str())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_keep_streams_and_filter_by_tail_and_since() {
    let fx = Fixture::new();
    std::fs::create_dir(fx.dir.join("sub")).expect("sub dir");
    let mut web = service(
        "web",
        "echo out1; echo err1 >&2; echo \"pwd=$(pwd)\"; echo 'say \"hi\"'; \
         echo \"foo=$FOO cargo=${CARGO_MANIFEST_DIR:-unset}\"; sleep 0.4; echo out2; echo out3",
    );
    web.environment.insert("FOO".into(), "bar".into());
    web.working_dir = Some("sub".into());
    fx.start("app", vec![web]).await.expect("start");
    assert!(
        wait_until(Duration::from_secs(5), || fx.status_of("app", "web").state
            == ServiceState::Exited)
        .await
    );
    let status = fx.status_of("app", "web");
    assert_eq!(status.exit_code, Some(0));
    assert_eq!(status.pid, None);

    let logs = fx.all_logs("app").await;
    let stdout = lines_of(&logs, "stdout");
    let expected_pwd = format!("pwd={}", fx.dir.join("sub").display());
    assert_eq!(
        stdout,
        vec![
            "out1",
            expected_pwd.as_str(),
            "say \"hi\"",
            "foo=bar cargo=unset",
            "out2",
            "out3"
        ]
    );
    assert_eq!(lines_of(&logs, "stderr"), vec!["err1"]);
    let notes = lines_of(&logs, "fleetgate");
    assert!(notes[0].starts_with("started (pid "), "{notes:?}");
    assert_eq!(notes.last(), Some(&"exited with status 0"));
    assert!(logs.iter().all(|l| l.service == "web"));
    assert!(logs.windows(2).all(|w| w[0].at <= w[1].at));

    // tail: the newest lines, oldest first.
    let tail = fx
        .driver
        .logs(
            "app",
            &LogQuery {
                tail: Some(2),
                ..LogQuery::default()
            },
        )
        .await
        .expect("tail");
    let tail: Vec<&str> = tail.iter().map(|l| l.line.as_str()).collect();
    assert_eq!(tail, vec!["out3", "exited with status 0"]);

    // since: from out2 on (it came 0.4 s after the first lines).
    let out2_at = logs.iter().find(|l| l.line == "out2").expect("out2").at;
    let since = fx
        .driver
        .logs(
            "app",
            &LogQuery {
                since: Some(out2_at),
                service: Some("web".into()),
                ..LogQuery::default()
            },
        )
        .await
        .expect("since");
    let since: Vec<&str> = since.iter().map(|l| l.line.as_str()).collect();
    assert_eq!(since, vec!["out2", "out3", "exited with status 0"]);

    let none = fx
        .driver
        .logs(
            "app",
            &LogQuery {
                service: Some("other".into()),
                ..LogQuery::default()
            },
        )
        .await
        .expect("other service");
    assert!(none.is_empty());
    assert!(fx
        .driver
        .logs(
            "app",
            &LogQuery {
                service: Some("../x".into()),
                ..LogQuery::default()
            }
        )
        .await
        .is_err());

    // Logs outlive the run; the directory is the owner's only.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(fx.logs_dir().join("app"))
        .expect("log dir")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_rotate_and_stay_readable_across_files() {
    let fx = Fixture::with_rotation(1000, 3);
    let web = service(
        "web",
        "i=1; while [ $i -le 60 ]; do echo line$i; i=$((i+1)); done; \
         head -c 20000 /dev/zero | tr '\\0' x; echo; printf 'bad\\377byte\\n'",
    );
    fx.start("app", vec![web]).await.expect("start");
    assert!(
        wait_until(Duration::from_secs(5), || fx.status_of("app", "web").state
            == ServiceState::Exited)
        .await
    );
    let dir = fx.logs_dir().join("app");
    for file in ["web.log", "web.log.1", "web.log.2", "web.log.3"] {
        let contents =
            std::fs::read_to_string(dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        // The cut 16 KiB line alone is over the limit: it gets a file of its
        // own; every other file stays under it.
        if contents.contains("xxxx") {
            assert_eq!(contents.lines().count(), 1, "{file}");
        } else {
            assert!(contents.len() <= 1000, "{file} is {} bytes", contents.len());
        }
    }
    assert!(!dir.join("web.log.4").exists());

    let logs = fx.all_logs("app").await;
    let current = std::fs::read_to_string(dir.join("web.log")).expect("current");
    assert!(logs.len() > current.lines().count());
    // What is left is in order, with no gap, and ends with the last lines.
    let numbers: Vec<u32> = lines_of(&logs, "stdout")
        .iter()
        .filter_map(|l| l.strip_prefix("line"))
        .map(|n| n.parse().expect("number"))
        .collect();
    assert!(!numbers.is_empty());
    assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "{numbers:?}");
    assert_eq!(numbers.last(), Some(&60));
    let long = logs
        .iter()
        .find(|l| l.line.starts_with("xxxx"))
        .expect("the long line");
    assert_eq!(long.line.len(), 16 * 1024);
    assert!(long.line.ends_with("[cut]"));
    assert!(logs.iter().any(|l| l.line == "bad\u{fffd}byte"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_receives_lines_written_after_subscribing() {
    let fx = Fixture::new();
    // Subscribed before the deployment exists.
    let mut rx = fx.driver.follow("app");
    let web = service("web", "echo hello; sleep 0.3; echo world >&2; sleep 1000");
    fx.start("app", vec![web]).await.expect("start");
    let mut seen = Vec::new();
    let got = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let line = rx.recv().await.expect("follow");
            seen.push((line.stream, line.line.clone()));
            if line.line == "world" {
                break;
            }
        }
    })
    .await;
    assert!(got.is_ok(), "saw only {seen:?}");
    assert!(seen.contains(&("stdout", "hello".to_string())));
    assert!(seen.contains(&("stderr", "world".to_string())));
    assert!(seen[0].1.starts_with("started"));
    fx.driver.stop("app").await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_failure_restarts_up_to_max_then_fails() {
    let fx = Fixture::new();
    let mut job = service("job", "echo run; exit 3");
    job.restart = RestartPolicy::OnFailure {
        max_retries: Some(2),
    };
    fx.start("app", vec![job]).await.expect("start");
    // Runs at 0 s, ~1 s and ~3 s (backoff 1 s then 2 s).
    assert!(
        wait_until(Duration::from_secs(8), || fx.status_of("app", "job").state
            == ServiceState::Failed)
        .await
    );
    let status = fx.status_of("app", "job");
    assert_eq!(status.restarts, 2);
    assert_eq!(status.exit_code, Some(3));
    let error = status.last_error.expect("last error");
    assert!(error.contains("gave up after 2 restarts"), "{error}");

    let logs = fx.all_logs("app").await;
    assert_eq!(lines_of(&logs, "stdout"), vec!["run", "run", "run"]);
    let notes = lines_of(&logs, "fleetgate");
    let restarting: Vec<_> = notes
        .iter()
        .filter(|n| n.starts_with("restarting in"))
        .collect();
    assert_eq!(restarting.len(), 2, "{notes:?}");
    assert!(restarting[0].starts_with("restarting in 1 s"));
    assert!(restarting[1].starts_with("restarting in 2 s"));
    assert_eq!(
        notes
            .iter()
            .filter(|n| **n == "exited with status 3")
            .count(),
        3
    );
    assert!(notes
        .last()
        .is_some_and(|n| n.starts_with("gave up after 2 restarts")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn always_restarts_a_clean_exit_with_growing_backoff() {
    let fx = Fixture::new();
    let mut tick = service("tick", "echo run; exit 0");
    tick.restart = RestartPolicy::Always;
    fx.start("app", vec![tick]).await.expect("start");
    // Restarts at ~1 s and ~3 s, the next not before ~7 s: at 5 s there were
    // two. Without backoff there would be many, with a fixed 1 s four.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let status = fx.status_of("app", "tick");
    assert_eq!(status.restarts, 2, "{status:?}");
    assert_eq!(status.state, ServiceState::Restarting);
    let logs = fx.all_logs("app").await;
    assert_eq!(lines_of(&logs, "stdout").len(), 3);
    fx.driver.stop("app").await.expect("stop");
    let status = fx.status_of("app", "tick");
    assert_eq!(status.state, ServiceState::Stopped);
    // No restart after a stop.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(fx.status_of("app", "tick").restarts, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_lets_a_graceful_service_exit_within_its_grace_period() {
    let fx = Fixture::new();
    let mut web = service(
        "web",
        "trap 'echo bye; exit 0' TERM; echo ready; while :; do sleep 0.1; done",
    );
    web.stop_grace_period = Duration::from_secs(5);
    let mut rx = fx.driver.follow("app");
    fx.start("app", vec![web]).await.expect("start");
    let _ = tokio::time::timeout(Duration::from_secs(3), async {
        while let Ok(line) = rx.recv().await {
            if line.line == "ready" {
                break;
            }
        }
    })
    .await;
    let pid = fx.status_of("app", "web").pid.expect("pid");
    let began = Instant::now();
    fx.driver.stop("app").await.expect("stop");
    assert!(
        began.elapsed() < Duration::from_secs(3),
        "{:?}",
        began.elapsed()
    );
    let status = fx.status_of("app", "web");
    assert_eq!(status.state, ServiceState::Stopped);
    assert_eq!(status.exit_code, Some(0));
    assert!(gone(pid));
    let logs = fx.all_logs("app").await;
    assert!(lines_of(&logs, "stdout").contains(&"bye"));
    let notes = lines_of(&logs, "fleetgate");
    assert!(notes
        .iter()
        .any(|n| n.starts_with("stopping: sending SIGTERM")));
    assert!(!notes.iter().any(|n| n.contains("killing")), "{notes:?}");
    // Stopping again, or what never ran, is fine.
    fx.driver.stop("app").await.expect("second stop");
    fx.driver.stop("nothing").await.expect("unknown stop");
    assert!(fx.driver.status("nothing").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_kills_a_service_ignoring_its_signal_and_its_children() {
    let fx = Fixture::new();
    let mut web = service("web", "trap '' TERM; sleep 1000 & sleep 1000");
    web.stop_grace_period = Duration::from_secs(1);
    fx.start("app", vec![web]).await.expect("start");
    let pid = fx.status_of("app", "web").pid.expect("pid");
    assert!(wait_until(Duration::from_secs(3), || group_pids(pid).len() >= 3).await);
    let pids = group_pids(pid);
    let began = Instant::now();
    fx.driver.stop("app").await.expect("stop");
    let took = began.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "{took:?}"
    );
    assert!(
        wait_until(Duration::from_secs(2), || pids.iter().all(|&p| gone(p))).await,
        "left running: {:?}",
        pids.iter().filter(|&&p| !gone(p)).collect::<Vec<_>>()
    );
    let status = fx.status_of("app", "web");
    assert_eq!(status.state, ServiceState::Stopped);
    assert_eq!(status.exit_code, Some(128 + 9));
    let logs = fx.all_logs("app").await;
    let notes = lines_of(&logs, "fleetgate");
    assert!(notes.iter().any(|n| n.contains("killing it")), "{notes:?}");
    assert!(notes.contains(&"killed by signal SIGKILL"), "{notes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_signal_other_than_sigterm_is_sent() {
    let fx = Fixture::new();
    let mut web = service(
        "web",
        "trap 'echo got-usr1; exit 0' USR1; trap '' TERM; while :; do sleep 0.1; done",
    );
    web.stop_signal = "SIGUSR1".into();
    web.stop_grace_period = Duration::from_secs(5);
    fx.start("app", vec![web]).await.expect("start");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let began = Instant::now();
    fx.driver.stop("app").await.expect("stop");
    assert!(began.elapsed() < Duration::from_secs(3));
    let logs = fx.all_logs("app").await;
    assert!(lines_of(&logs, "stdout").contains(&"got-usr1"));
}

fn healthy_dependency(on: &str) -> Dependency {
    Dependency {
        service: on.to_string(),
        condition: DependencyCondition::Healthy,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_healthy_dependent_starts_after_the_check_passes() {
    let fx = Fixture::new();
    let mut db = service(
        "db",
        "echo \"db $(date +%s%N)\" >> order; sleep 1; touch ready; sleep 1000",
    );
    db.healthcheck = Some(HealthCheck {
        test: HealthTest::Shell("test -f ready".into()),
        interval: Duration::from_millis(200),
        timeout: Duration::from_secs(1),
        retries: 3,
        start_period: Duration::ZERO,
    });
    // Declared first, started second.
    let mut web = service(
        "web",
        "echo \"web $(date +%s%N)\" >> order; test -f ready && echo saw-ready >> order; sleep 1000",
    );
    web.depends_on = vec![healthy_dependency("db")];
    fx.start("app", vec![web, db]).await.expect("start");

    assert!(
        wait_until(Duration::from_secs(2), || fx.dir.join("order").exists()
            && std::fs::read_to_string(fx.dir.join("order"))
                .is_ok_and(|o| o.contains("saw-ready")))
        .await
    );
    let order = std::fs::read_to_string(fx.dir.join("order")).expect("order");
    let lines: Vec<&str> = order.lines().collect();
    assert_eq!(lines.len(), 3, "{order}");
    assert!(lines[0].starts_with("db "));
    assert!(lines[1].starts_with("web "));
    assert_eq!(lines[2], "saw-ready");
    let at = |line: &str| -> u128 {
        line.split_once(' ')
            .and_then(|(_, ns)| ns.parse().ok())
            .expect("timestamp")
    };
    assert!(at(lines[1]) - at(lines[0]) >= 1_000_000_000);

    let status = fx.driver.status("app");
    assert_eq!(status[0].name, "web", "file order");
    assert_eq!(status[1].name, "db");
    assert_eq!(status[0].state, ServiceState::Running);
    assert_eq!(status[1].state, ServiceState::Running);
    fx.driver.stop("app").await.expect("stop");
    assert!(fx
        .driver
        .status("app")
        .iter()
        .all(|s| s.state == ServiceState::Stopped && s.pid.is_none()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dependency_that_never_gets_healthy_fails_its_dependent() {
    let fx = Fixture::new();
    let mut db = service("db", "sleep 1000");
    db.healthcheck = Some(HealthCheck {
        test: HealthTest::Cmd(vec!["false".into()]),
        interval: Duration::from_millis(100),
        timeout: Duration::from_millis(200),
        retries: 2,
        start_period: Duration::ZERO,
    });
    let mut web = service("web", "sleep 1000");
    web.depends_on = vec![healthy_dependency("db")];
    let began = Instant::now();
    let err = fx
        .start("app", vec![db, web])
        .await
        .expect_err("web cannot start");
    // The allowance: 0 s start period + 2 × 0.1 s + 0.2 s timeout + 5 s.
    assert!(began.elapsed() >= Duration::from_secs(5));
    assert!(
        err.to_string()
            .contains("dependency db did not become healthy"),
        "{err}"
    );
    let web = fx.status_of("app", "web");
    assert_eq!(web.state, ServiceState::Failed);
    assert!(web.pid.is_none());
    let db = fx.status_of("app", "db");
    assert_eq!(db.state, ServiceState::Unhealthy);
    assert!(db
        .last_error
        .is_some_and(|e| e.contains("health check failed 2 times in a row")));
    fx.driver.stop("app").await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_only_service_is_unsupported() {
    let fx = Fixture::new();
    let mut web = service("web", "");
    web.command = None;
    web.image = Some("nginx:1.27".into());
    let err = fx
        .start("app", vec![service("ok", "sleep 1000"), web])
        .await
        .expect_err("image only");
    assert!(matches!(err, DriverError::Unsupported(_)), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains("web") && message.contains("nginx:1.27"),
        "{message}"
    );
    // Nothing was started.
    assert!(fx.driver.status("app").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_dependencies_and_signals_are_refused_before_starting() {
    let fx = Fixture::new();
    let mut a = service("a", "true");
    let mut b = service("b", "true");
    a.depends_on = vec![Dependency {
        service: "b".into(),
        condition: DependencyCondition::Started,
    }];
    b.depends_on = vec![Dependency {
        service: "a".into(),
        condition: DependencyCondition::Started,
    }];
    let err = fx.start("app", vec![a, b]).await.expect_err("cycle");
    assert!(err.to_string().contains("cycle"), "{err}");

    let mut c = service("c", "true");
    c.depends_on = vec![healthy_dependency("d")];
    let err = fx
        .start("app", vec![c.clone(), service("d", "true")])
        .await
        .expect_err("no healthcheck");
    assert!(err.to_string().contains("d has no healthcheck"), "{err}");
    let err = fx.start("app", vec![c]).await.expect_err("unknown");
    assert!(err.to_string().contains("depends on d"), "{err}");

    let mut e = service("e", "true");
    e.stop_signal = "SIGBOGUS".into();
    let err = fx.start("app", vec![e]).await.expect_err("signal");
    assert!(err.to_string().contains("SIGBOGUS"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_program_fails_naming_it_and_does_not_spin() {
    let fx = Fixture::new();
    let mut web = service("web", "");
    web.command = Some(vec!["/nonexistent/fleetgate-prog".into(), "--flag".into()]);
    let err = fx
        .start("app", vec![web.clone()])
        .await
        .expect_err("missing");
    assert!(
        err.to_string().contains("/nonexistent/fleetgate-prog"),
        "{err}"
    );
    let status = fx.status_of("app", "web");
    assert_eq!(status.state, ServiceState::Failed);
    let error = status.last_error.expect("last error");
    assert!(
        error.contains("/nonexistent/fleetgate-prog") && error.contains("No such file"),
        "{error}"
    );

    // With `restart: always` it is retried, with backoff.
    web.restart = RestartPolicy::Always;
    let _ = fx.start("app", vec![web]).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let status = fx.status_of("app", "web");
    assert_eq!(status.restarts, 1, "{status:?}");
    assert_eq!(status.state, ServiceState::Failed);
    fx.driver.stop("app").await.expect("stop");
    assert_eq!(fx.status_of("app", "web").state, ServiceState::Stopped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_of_a_busy_loop() {
    let fx = Fixture::new();
    fx.start(
        "app",
        vec![
            service("spin", "while :; do :; done"),
            service("idle", "exit 0"),
        ],
    )
    .await
    .expect("start");
    let first = fx.driver.stats("app").await;
    assert_eq!(first.len(), 2);
    assert_eq!(first[0].name, "spin");
    assert_eq!(first[0].cpu_percent, 0.0);
    // A busy loop takes a whole core on an idle machine, but this one may be
    // shared (a VM's steal, other tests): pass on any of a few readings.
    let mut second = Vec::new();
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        second = fx.driver.stats("app").await;
        if second[0].cpu_percent > 20.0 {
            break;
        }
    }
    let spin = &second[0];
    assert!(spin.cpu_percent > 20.0, "{spin:?}");
    assert!(
        spin.cpu_percent < 150.0,
        "one process, one core at most: {spin:?}"
    );
    assert!(spin.memory_bytes > 0, "{spin:?}");
    assert_eq!(spin.processes, 1);
    assert!(spin.uptime_secs >= 1);
    let idle = &second[1];
    assert_eq!((idle.processes, idle.memory_bytes), (0, 0));
    fx.driver.stop("app").await.expect("stop");
    assert!(fx.driver.stats("nothing").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starting_again_replaces_the_running_deployment() {
    let fx = Fixture::new();
    fx.start("app", vec![service("web", "sleep 1000")])
        .await
        .expect("start");
    let first = fx.status_of("app", "web").pid.expect("pid");
    fx.start("app", vec![service("web", "sleep 1000")])
        .await
        .expect("restart");
    let second = fx.status_of("app", "web").pid.expect("pid");
    assert_ne!(first, second);
    assert!(gone(first));
    assert_eq!(fx.status_of("app", "web").restarts, 0);
    fx.driver.stop("app").await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_driver_leaves_no_process_behind() {
    let fx = Fixture::new();
    fx.start("app", vec![service("web", "sleep 1000 & sleep 1000")])
        .await
        .expect("start");
    let pid = fx.status_of("app", "web").pid.expect("pid");
    assert!(wait_until(Duration::from_secs(3), || group_pids(pid).len() >= 2).await);
    let pids = group_pids(pid);
    let Fixture { _tmp, driver, .. } = fx;
    drop(driver);
    assert!(
        wait_until(Duration::from_secs(3), || pids.iter().all(|&p| gone(p))).await,
        "left running: {pids:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entrypoint_takes_the_command_as_arguments() {
    let fx = Fixture::new();
    let mut web = service("web", "");
    web.entrypoint = Some(vec!["sh".into(), "-c".into()]);
    web.command = Some(vec!["echo \"$0 $1\"".into(), "zero".into(), "one".into()]);
    fx.start("app", vec![web]).await.expect("start");
    assert!(
        wait_until(Duration::from_secs(3), || fx.status_of("app", "web").state
            == ServiceState::Exited)
        .await
    );
    let logs = fx.all_logs("app").await;
    assert_eq!(lines_of(&logs, "stdout"), vec!["zero one"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completed_successfully_dependent_waits_for_the_exit() {
    let fx = Fixture::new();
    let migrate = service("migrate", "sleep 0.5; echo migrated >> order; exit 0");
    let mut web = service("web", "echo web >> order; sleep 1000");
    web.depends_on = vec![Dependency {
        service: "migrate".into(),
        condition: DependencyCondition::CompletedSuccessfully,
    }];
    fx.start("app", vec![web.clone(), migrate])
        .await
        .expect("start");
    let order = || std::fs::read_to_string(fx.dir.join("order")).unwrap_or_default();
    // `start` returns once web is spawned; its first line follows shortly.
    assert!(wait_until(Duration::from_secs(2), || order().contains("web")).await);
    assert_eq!(order(), "migrated\nweb\n");
    assert_eq!(fx.status_of("app", "migrate").state, ServiceState::Exited);
    assert_eq!(fx.status_of("app", "web").state, ServiceState::Running);

    // A failed migration: its dependent never runs.
    let broken = service("migrate", "exit 2");
    let err = fx
        .start("app", vec![web, broken])
        .await
        .expect_err("dependency failed");
    assert!(
        err.to_string()
            .contains("web: dependency migrate did not complete successfully"),
        "{err}"
    );
    assert_eq!(fx.status_of("app", "web").state, ServiceState::Failed);
    fx.driver.stop("app").await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_moves_between_starting_running_and_unhealthy() {
    let fx = Fixture::new();
    let mut web = service("web", "sleep 1000");
    web.healthcheck = Some(HealthCheck {
        test: HealthTest::Cmd(vec!["test".into(), "-f".into(), "healthy".into()]),
        interval: Duration::from_millis(100),
        timeout: Duration::from_secs(1),
        retries: 2,
        start_period: Duration::ZERO,
    });
    fx.start("app", vec![web]).await.expect("start");
    let state = || fx.status_of("app", "web").state;
    assert_eq!(state(), ServiceState::Starting);
    std::fs::write(fx.dir.join("healthy"), "").expect("mark healthy");
    assert!(wait_until(Duration::from_secs(3), || state() == ServiceState::Running).await);
    std::fs::remove_file(fx.dir.join("healthy")).expect("mark unhealthy");
    assert!(
        wait_until(Duration::from_secs(3), || state()
            == ServiceState::Unhealthy)
        .await
    );
    std::fs::write(fx.dir.join("healthy"), "").expect("mark healthy again");
    assert!(wait_until(Duration::from_secs(3), || state() == ServiceState::Running).await);
    let logs = fx.all_logs("app").await;
    let notes = lines_of(&logs, "fleetgate");
    assert!(notes.contains(&"health check passed"), "{notes:?}");
    assert!(notes.contains(&"health check passes again"), "{notes:?}");
    assert!(
        notes
            .iter()
            .any(|n| n.starts_with("health check failed 2 times in a row: exited with status 1")),
        "{notes:?}"
    );
    fx.driver.stop("app").await.expect("stop");
}

/// A router that refuses every switch after the first `allowed` ones, as a
/// gateway refusing a configuration would.
struct Refusing {
    allowed: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl fleetgate_deploy::host::Router for Refusing {
    async fn route(
        &self,
        _loaded: &fleetgate_deploy::host::Loaded,
        _targets: &[(u16, u32)],
    ) -> Result<(), String> {
        use std::sync::atomic::Ordering;
        let left = self.allowed.load(Ordering::SeqCst);
        if left == 0 {
            return Err("the gateway refused the configuration".into());
        }
        self.allowed.store(left - 1, Ordering::SeqCst);
        Ok(())
    }

    async fn in_flight(&self, _name: &str, _port: u16) -> Option<u64> {
        Some(0)
    }
}

/// A switch the gateway refuses never replaces the serving release: the new
/// instance is stopped, the old one serves on, and the release is recorded
/// failed with the gateway's reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_switch_leaves_the_serving_release_in_place() {
    use fleetgate_deploy::host::{DeployError, Deployments, Desired, ReleaseState, Router};
    let data = tempfile::tempdir().expect("data");
    let hosts = Arc::new(Deployments::new(
        data.path(),
        &data.path().join("no-docker.sock"),
    ));
    let compose = |release: &str| {
        format!(
            "services:\n  web:\n    command: [\"python3\", \"-m\", \"http.server\", \"$PORT\", \"--bind\", \"127.0.0.1\"]\n    environment:\n      RELEASE: \"{release}\"\n"
        )
    };
    let service = "domains: [refused.example.test]\nport: 8000\ndeploy:\n  health_timeout: 10s\n";
    let refusing = Arc::new(Refusing {
        allowed: std::sync::atomic::AtomicUsize::new(1),
    });
    let router: Arc<dyn Router> = refusing;
    let loaded = hosts
        .create("refused", &compose("1"), service, Desired::Running)
        .await
        .expect("create");
    let one = hosts.start(&loaded, &router).await.expect("release 1");
    let (_, after) = hosts
        .update("refused", Some(&compose("2")), None, None)
        .await
        .expect("update");
    let err = hosts
        .start(&after, &router)
        .await
        .expect_err("the switch is refused");
    match &err {
        DeployError::ReleaseFailed { release, why, .. } => {
            assert_eq!(*release, 2);
            assert!(why.contains("refused the configuration"), "{why}");
        }
        other => panic!("{other:?}"),
    }
    let live = hosts.live("refused").expect("still serving");
    assert_eq!(live.key, one.key);
    assert!(hosts.draining("refused").is_empty());
    let releases = hosts.releases("refused").await.expect("releases");
    assert_eq!(releases[0].state, ReleaseState::Failed);
    assert_eq!(releases[1].state, ReleaseState::Live);
    assert_eq!(hosts.load("refused").await.expect("load").record.release, 1);
    // The old instance answers; the new one is gone.
    let port = one.target.expect("port");
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    hosts.stop(&after).await.expect("stop");
}
