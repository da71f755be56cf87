use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;

use super::*;

fn ok(text: &str) -> ComposeFile {
    parse(text).unwrap_or_else(|p| panic!("unexpected problems: {p:#?}"))
}

fn problems(text: &str) -> Vec<Problem> {
    match parse(text) {
        Ok(c) => panic!("expected problems, parsed {c:#?}"),
        Err(p) => p,
    }
}

/// The only problem of `text`.
fn one(text: &str) -> Problem {
    let p = problems(text);
    assert_eq!(p.len(), 1, "expected one problem: {p:#?}");
    p.into_iter().next().expect("one")
}

#[track_caller]
fn assert_at(p: &Problem, line: usize, column: usize, field: &str, message: &str) {
    assert_eq!(p.file, "compose.yml", "{p:#?}");
    assert_eq!((p.line, p.column), (line, column), "{p:#?}");
    assert_eq!(p.field, field, "{p:#?}");
    assert!(
        p.message.contains(message),
        "message {:?} lacks {message:?}",
        p.message
    );
}

fn service(text: &str) -> ServiceSpec {
    let file = ok(text);
    assert_eq!(file.services.len(), 1);
    file.services.into_iter().next().expect("one service")
}

/// A service named web with `body` indented under it.
fn web(body: &str) -> String {
    let mut text = String::from("services:\n  web:\n");
    for line in body.lines() {
        text.push_str("    ");
        text.push_str(line);
        text.push('\n');
    }
    text
}

fn spec(name: &str, line: usize) -> ServiceSpec {
    ServiceSpec {
        name: name.to_string(),
        line,
        image: None,
        command: None,
        entrypoint: None,
        environment: BTreeMap::new(),
        ports: Vec::new(),
        volumes: Vec::new(),
        healthcheck: None,
        depends_on: Vec::new(),
        restart: RestartPolicy::No,
        working_dir: None,
        stop_grace_period: Duration::from_secs(10),
        stop_signal: "SIGTERM".to_string(),
        network_mode: None,
    }
}

#[test]
fn an_image_alone_gets_every_default() {
    let file = ok("version: '3.8'\nname: app\nservices:\n  web:\n    image: nginx:1.27\n");
    let mut expected = spec("web", 4);
    expected.image = Some("nginx:1.27".into());
    assert_eq!(
        file,
        ComposeFile {
            services: vec![expected]
        }
    );
}

#[test]
fn services_keep_file_order() {
    let file = ok("services:\n  b:\n    image: x\n  a:\n    image: y\n  c:\n    command: z\n");
    let names: Vec<_> = file.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["b", "a", "c"]);
    assert_eq!(file.service("a").map(|s| s.line), Some(4));
}

#[test]
fn commands_split_like_a_shell_or_come_as_lists() {
    let s = service(&web(
        "command: python -m http.server 'my dir' \"a \\\"b\\\"\"\nentrypoint: [\"/bin/sh\", \"-c\"]",
    ));
    assert_eq!(
        s.command,
        Some(vec![
            "python".into(),
            "-m".into(),
            "http.server".into(),
            "my dir".into(),
            "a \"b\"".into()
        ])
    );
    assert_eq!(s.entrypoint, Some(vec!["/bin/sh".into(), "-c".into()]));
    assert_eq!(s.image, None);

    let s = service(&web("command:\n  - sleep\n  - 10\n  - 'true'"));
    assert_eq!(
        s.command,
        Some(vec!["sleep".into(), "10".into(), "true".into()])
    );
}

#[test]
fn bad_commands_are_named() {
    let p = one(&web("command: echo 'unfinished"));
    assert_at(&p, 3, 14, "services.web.command", "single quote");
    let p = one(&web("command: ''"));
    assert_at(&p, 3, 14, "services.web.command", "command is empty");
    let p = one(&web("command: []"));
    assert_at(&p, 3, 14, "services.web.command", "command is empty");
    let p = one(&web("command: {a: 1}"));
    assert_at(&p, 3, 15, "services.web.command", "not a mapping");
    let p = one(&web("command:\n  - ls\n  - [x]"));
    assert_at(&p, 5, 9, "services.web.command[1]", "found a list");
}

#[test]
fn environment_as_a_mapping() {
    let s = service(&web(
        "image: x\nenvironment:\n  A: text\n  B: 5\n  C: true\n  D: 1.50\n  E: ''\n  PATH:\n  FLEETGATE_SURELY_UNSET_VAR_42:",
    ));
    let mut expected = BTreeMap::new();
    for (k, v) in [
        ("A", "text"),
        ("B", "5"),
        ("C", "true"),
        ("D", "1.50"),
        ("E", ""),
    ] {
        expected.insert(k.to_string(), v.to_string());
    }
    expected.insert("PATH".into(), std::env::var("PATH").expect("PATH is set"));
    assert_eq!(s.environment, expected);
}

#[test]
fn environment_as_a_list() {
    let s = service(&web(
        "image: x\nenvironment:\n  - A=1\n  - B=\n  - C=x=y\n  - PATH\n  - FLEETGATE_SURELY_UNSET_VAR_42",
    ));
    let mut expected = BTreeMap::new();
    for (k, v) in [("A", "1"), ("B", ""), ("C", "x=y")] {
        expected.insert(k.to_string(), v.to_string());
    }
    expected.insert("PATH".into(), std::env::var("PATH").expect("PATH is set"));
    assert_eq!(s.environment, expected);
}

#[test]
fn bad_environment_is_named() {
    let p = problems(&web(
        "image: x\nenvironment:\n  - A=1\n  - A=2\n  - =3\n  - [x]",
    ));
    assert_eq!(p.len(), 3, "{p:#?}");
    assert_at(&p[0], 6, 9, "services.web.environment[1]", "A is set twice");
    assert_at(&p[1], 7, 9, "services.web.environment[2]", "needs a name");
    assert_at(&p[2], 8, 9, "services.web.environment[3]", "found a list");
    let p = one(&web("image: x\nenvironment:\n  A: [1]"));
    assert_at(&p, 5, 10, "services.web.environment.A", "found a list");
    let p = one(&web("image: x\nenvironment: A=1"));
    assert_at(
        &p,
        4,
        18,
        "services.web.environment",
        "mapping (KEY: value)",
    );
}

fn port(host_ip: Option<&str>, host: Option<u16>, container: u16, udp: bool) -> PortMapping {
    PortMapping {
        host_ip: host_ip.map(str::to_string),
        host,
        container,
        protocol: if udp {
            PortProtocol::Udp
        } else {
            PortProtocol::Tcp
        },
    }
}

#[test]
fn ports_in_the_short_syntax() {
    let s = service(&web(
        "image: x\nports:\n  - \"8080:80\"\n  - 127.0.0.1:8081:81\n  - \"82\"\n  - 83\n  - 8084:84/udp\n  - \"[::1]:8085:85\"\n  - 127.0.0.1::86\n  - \"[2001:db8::1]:8087:87/tcp\"",
    ));
    assert_eq!(
        s.ports,
        vec![
            port(None, Some(8080), 80, false),
            port(Some("127.0.0.1"), Some(8081), 81, false),
            port(None, None, 82, false),
            port(None, None, 83, false),
            port(None, Some(8084), 84, true),
            port(Some("::1"), Some(8085), 85, false),
            port(Some("127.0.0.1"), None, 86, false),
            port(Some("2001:db8::1"), Some(8087), 87, false),
        ]
    );
}

#[test]
fn ports_in_the_long_syntax() {
    let s = service(&web(
        "image: x\nports:\n  - target: 80\n    published: 8080\n    host_ip: 127.0.0.1\n    protocol: udp\n    mode: host\n  - target: 81\n  - target: 82\n    published: \"8082\"",
    ));
    assert_eq!(
        s.ports,
        vec![
            port(Some("127.0.0.1"), Some(8080), 80, true),
            port(None, None, 81, false),
            port(None, Some(8082), 82, false),
        ]
    );
}

#[test]
fn a_bad_port_is_placed_exactly() {
    let text = "services:\n  web:\n    image: nginx\n    ports:\n      - \"8080:80\"\n      - \"9090:90\"\n      - \"70000:80\"\n";
    let p = one(text);
    assert_at(&p, 7, 9, "services.web.ports[2]", "port 70000");
    assert!(p.message.contains("1 to 65535"), "{}", p.message);
}

#[test]
fn bad_ports_are_all_reported() {
    let p = problems(&web(
        "image: x\nports:\n  - 0\n  - \"8000-8010:8000-8010\"\n  - \"::1:80:80\"\n  - 80/sctp\n  - abc\n  - 1.2.3:80:80\n  - \"[::1:80:80\"\n  - target: 0\n  - published: 80\n  - target: 80\n    color: red",
    ));
    let fields: Vec<_> = p.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "services.web.ports[0]",
            "services.web.ports[1]",
            "services.web.ports[2]",
            "services.web.ports[3]",
            "services.web.ports[4]",
            "services.web.ports[5]",
            "services.web.ports[6]",
            "services.web.ports[7].target",
            "services.web.ports[8]",
            "services.web.ports[9]",
        ],
        "{p:#?}"
    );
    assert!(p[0].message.contains("port 0"));
    assert!(p[1].message.contains("port ranges"));
    assert!(p[2].message.contains("brackets"));
    assert!(p[3].message.contains("protocol `sctp`"));
    assert!(p[4].message.contains("not a port number"));
    assert!(p[5].message.contains("not an IPv4 address"));
    assert!(p[6].message.contains("never closes"));
    assert!(p[7].message.contains("out of range"));
    assert!(p[8].message.contains("needs target"));
    assert_at(&p[9], 15, 9, "services.web.ports[9]", "unknown key `color`");
}

#[test]
fn volumes_short_and_long() {
    let s = ok(
        "services:\n  web:\n    image: x\n    volumes:\n      - ./data:/var/lib/data:ro\n      - cache:/cache\n      - /anon\n      - /etc/hosts:/etc/hosts:rw,z\n      - .:/app\n      - type: bind\n        source: conf\n        target: /conf\n        read_only: true\n      - type: volume\n        source: cache\n        target: /c2\n      - type: tmpfs\n        target: /tmp\nvolumes:\n  cache:\n  other:\n    driver: local\n",
    );
    let mount = |source: Option<&str>, target: &str, read_only| VolumeMount {
        source: source.map(str::to_string),
        target: target.to_string(),
        read_only,
    };
    assert_eq!(
        s.services[0].volumes,
        vec![
            mount(Some("./data"), "/var/lib/data", true),
            mount(Some("cache"), "/cache", false),
            mount(None, "/anon", false),
            mount(Some("/etc/hosts"), "/etc/hosts", false),
            mount(Some("./"), "/app", false),
            mount(Some("./conf"), "/conf", true),
            mount(Some("cache"), "/c2", false),
            mount(None, "/tmp", false),
        ]
    );
}

#[test]
fn bad_volumes_are_named() {
    let p = problems(
        "services:\n  web:\n    image: x\n    volumes:\n      - data:/data\n      - ./x:relative\n      - ./x:/y:rx\n      - ~/x:/y\n      - a:b:c:d\n      - type: bind\n        target: /b\n      - type: nfs\n        target: /n\n",
    );
    assert_eq!(p.len(), 7, "{p:#?}");
    assert_at(
        &p[0],
        5,
        9,
        "services.web.volumes[0]",
        "`data` is not declared",
    );
    assert_at(&p[1], 6, 9, "services.web.volumes[1]", "absolute path");
    assert_at(
        &p[2],
        7,
        9,
        "services.web.volumes[2]",
        "unknown volume option `rx`",
    );
    assert_at(
        &p[3],
        8,
        9,
        "services.web.volumes[3]",
        "`~` is not expanded",
    );
    assert_at(&p[4], 9, 9, "services.web.volumes[4]", "too many `:`");
    assert_at(&p[5], 10, 9, "services.web.volumes[5]", "needs source");
    assert_at(
        &p[6],
        12,
        15,
        "services.web.volumes[6].type",
        "`nfs` is not supported",
    );
}

#[test]
fn healthchecks_in_every_form() {
    let s = service(&web(
        "image: x\nhealthcheck:\n  test: curl -f http://localhost/ || exit 1\n  interval: 1m30s\n  timeout: 500ms\n  retries: 5\n  start_period: 1h",
    ));
    assert_eq!(
        s.healthcheck,
        Some(HealthCheck {
            test: HealthTest::Shell("curl -f http://localhost/ || exit 1".into()),
            interval: Duration::from_secs(90),
            timeout: Duration::from_millis(500),
            retries: 5,
            start_period: Duration::from_secs(3600),
        })
    );
    let s = service(&web(
        "image: x\nhealthcheck:\n  test: [\"CMD\", \"pg_isready\", \"-U\", \"app\"]",
    ));
    assert_eq!(
        s.healthcheck,
        Some(HealthCheck {
            test: HealthTest::Cmd(vec!["pg_isready".into(), "-U".into(), "app".into()]),
            interval: Duration::from_secs(30),
            timeout: Duration::from_secs(30),
            retries: 3,
            start_period: Duration::ZERO,
        })
    );
    let s = service(&web(
        "image: x\nhealthcheck:\n  test: [CMD-SHELL, \"true && true\"]",
    ));
    assert_eq!(
        s.healthcheck.map(|h| h.test),
        Some(HealthTest::Shell("true && true".into()))
    );
    let s = service(&web("image: x\nhealthcheck:\n  test: [NONE]"));
    assert_eq!(s.healthcheck, None);
    let s = service(&web("image: x\nhealthcheck:\n  disable: true"));
    assert_eq!(s.healthcheck, None);
}

#[test]
fn bad_healthchecks_are_named() {
    let p = one(&web(
        "image: x\nhealthcheck:\n  test: [CMD]\n  interval: 10s",
    ));
    assert_at(
        &p,
        5,
        13,
        "services.web.healthcheck.test",
        "needs the program",
    );
    let p = problems(&web(
        "image: x\nhealthcheck:\n  test: [CMD, x]\n  interval: 10\n  timeout: 0s\n  retries: -1\n  start_period: soon",
    ));
    assert_eq!(p.len(), 4, "{p:#?}");
    assert_at(
        &p[0],
        6,
        17,
        "services.web.healthcheck.interval",
        "has no unit",
    );
    assert_at(
        &p[1],
        7,
        16,
        "services.web.healthcheck.timeout",
        "longer than 0s",
    );
    assert_at(
        &p[2],
        8,
        16,
        "services.web.healthcheck.retries",
        "whole number",
    );
    assert_at(
        &p[3],
        9,
        21,
        "services.web.healthcheck.start_period",
        "not a duration",
    );
    let p = one(&web("image: x\nhealthcheck:\n  interval: 10s"));
    assert_at(&p, 5, 7, "services.web.healthcheck", "needs a test");
    let p = one(&web("image: x\nhealthcheck:\n  test: [RUN, x]"));
    assert_at(
        &p,
        5,
        13,
        "services.web.healthcheck.test",
        "CMD, CMD-SHELL or NONE",
    );
}

#[test]
fn depends_on_as_a_list_and_a_mapping() {
    let file = ok(
        "services:\n  web:\n    command: ./web\n    depends_on:\n      db:\n        condition: service_healthy\n      migrate:\n        condition: service_completed_successfully\n      cache:\n  worker:\n    command: ./worker\n    depends_on: [db, cache]\n  db:\n    image: postgres\n  migrate:\n    command: ./migrate\n  cache:\n    image: redis\n",
    );
    let dep = |service: &str, condition| Dependency {
        service: service.into(),
        condition,
    };
    assert_eq!(
        file.services[0].depends_on,
        vec![
            dep("db", DependencyCondition::Healthy),
            dep("migrate", DependencyCondition::CompletedSuccessfully),
            dep("cache", DependencyCondition::Started),
        ]
    );
    assert_eq!(
        file.services[1].depends_on,
        vec![
            dep("db", DependencyCondition::Started),
            dep("cache", DependencyCondition::Started)
        ]
    );
}

#[test]
fn bad_dependencies_are_named() {
    let p = problems(
        "services:\n  web:\n    image: x\n    depends_on: [web, nope, db, db]\n  db:\n    image: y\n    depends_on:\n      web:\n        condition: service_ready\n",
    );
    assert_eq!(p.len(), 4, "{p:#?}");
    assert_at(
        &p[0],
        4,
        18,
        "services.web.depends_on[0]",
        "web depends on itself",
    );
    assert_at(
        &p[1],
        4,
        23,
        "services.web.depends_on[1]",
        "`nope`, which is not a service",
    );
    assert_at(
        &p[2],
        4,
        33,
        "services.web.depends_on[3]",
        "db is listed twice",
    );
    assert_at(
        &p[3],
        9,
        20,
        "services.db.depends_on.web.condition",
        "unknown condition",
    );
}

#[test]
fn a_dependency_cycle_names_its_services() {
    let p = one(
        "services:\n  a:\n    image: x\n    depends_on: [b]\n  b:\n    image: x\n    depends_on: [c]\n  c:\n    image: x\n    depends_on: [a]\n  d:\n    image: x\n    depends_on: [a]\n",
    );
    assert_at(
        &p,
        10,
        18,
        "services.c.depends_on[0]",
        "cycle: a → b → c → a",
    );
}

#[test]
fn restart_policies_and_stopping() {
    let cases = [
        ("\"no\"", RestartPolicy::No),
        ("no", RestartPolicy::No),
        ("always", RestartPolicy::Always),
        ("on-failure", RestartPolicy::OnFailure { max_retries: None }),
        (
            "on-failure:5",
            RestartPolicy::OnFailure {
                max_retries: Some(5),
            },
        ),
        ("unless-stopped", RestartPolicy::UnlessStopped),
    ];
    for (text, policy) in cases {
        let s = service(&web(&format!("image: x\nrestart: {text}")));
        assert_eq!(s.restart, policy, "{text}");
    }
    for (text, signal) in [
        ("SIGINT", "SIGINT"),
        ("TERM", "SIGTERM"),
        ("sigquit", "SIGQUIT"),
        ("HUP", "SIGHUP"),
        ("SIGKILL", "SIGKILL"),
        ("usr1", "SIGUSR1"),
        ("SIGUSR2", "SIGUSR2"),
    ] {
        let s = service(&web(&format!("image: x\nstop_signal: {text}")));
        assert_eq!(s.stop_signal, signal);
    }
    let s = service(&web(
        "image: x\nstop_grace_period: 1m30s\nworking_dir: ./app",
    ));
    assert_eq!(s.stop_grace_period, Duration::from_secs(90));
    assert_eq!(s.working_dir.as_deref(), Some("./app"));

    let p = problems(&web(
        "image: x\nrestart: sometimes\nstop_signal: SIGFOO\nstop_grace_period: 10",
    ));
    assert_eq!(p.len(), 3, "{p:#?}");
    assert_at(
        &p[0],
        4,
        14,
        "services.web.restart",
        "unknown restart policy `sometimes`",
    );
    assert_at(
        &p[1],
        5,
        18,
        "services.web.stop_signal",
        "unknown signal `SIGFOO`",
    );
    assert_at(
        &p[2],
        6,
        24,
        "services.web.stop_grace_period",
        "has no unit",
    );
}

#[test]
fn keys_docker_alone_uses_are_ignored_and_unknown_ones_refused() {
    let s = service(&web(
        "image: x\ncontainer_name: w\nlabels: {a: b}\nnetworks: [front]\nhostname: h\nexpose: [80]\nx-note: hi",
    ));
    assert_eq!(s.image.as_deref(), Some("x"));
    let p = problems(&web(
        "image: x\nfoo: 1\nenv_file: .env\nuser: root\nbuild: .",
    ));
    assert_eq!(p.len(), 4, "{p:#?}");
    assert_at(
        &p[0],
        4,
        5,
        "services.web.foo",
        "unknown key `foo` in service web",
    );
    assert_at(
        &p[1],
        5,
        5,
        "services.web.env_file",
        "env_file is not supported",
    );
    assert_at(&p[2], 6, 5, "services.web.user", "user is not supported");
    assert_at(&p[3], 7, 5, "services.web.build", "build is not supported");
}

#[test]
fn the_top_level_is_checked() {
    ok("x-common: {a: 1}\nnetworks:\n  front:\nservices:\n  web:\n    image: x\n");
    let p = one("services:\n  web:\n    image: x\nconfigs: {}\n");
    assert_at(&p, 4, 1, "configs", "unknown top-level key `configs`");
    let p = one("version: '3'\n");
    assert_at(&p, 1, 1, "services", "`services:` is missing");
    let p = one("services: {}\n");
    assert_at(&p, 1, 1, "services", "services is empty");
    let p = one("services: [web]\n");
    assert_at(&p, 1, 11, "services", "must be a mapping");
}

#[test]
fn services_need_something_to_run_and_a_valid_name() {
    let p = problems("services:\n  web:\n    ports: [80]\n  -bad:\n    image: x\n  empty:\n");
    assert_eq!(p.len(), 3, "{p:#?}");
    assert_at(&p[0], 2, 3, "services.web", "needs an image or a command");
    assert_at(&p[1], 4, 3, "services.-bad", "not a valid service name");
    assert_at(&p[2], 6, 3, "services.empty", "service empty is empty");
}

#[test]
fn yaml_errors_become_problems() {
    let p = one("");
    assert_at(&p, 0, 0, "", "the file is empty");
    let p = one("# only a comment\n\n");
    assert_at(&p, 0, 0, "", "the file is empty");
    let p = one("services:\n  web:\n    image: [x\n");
    assert_eq!(p.field, "");
    assert!(p.message.contains("not valid YAML"), "{p:#?}");
    assert!(p.line >= 3, "{p:#?}");
    let p = one("services:\n  web: &w\n    image: x\n  api: *w\n");
    assert_at(&p, 2, 8, "", "anchors and aliases");
    let p = one("services:\n  web:\n    image: x\n    image: y\n");
    assert_at(
        &p,
        4,
        5,
        "",
        "the key `image` appears twice in one mapping (first on line 3)",
    );
    let p = one("- a\n- b\n");
    assert_at(&p, 1, 1, "", "mapping of keys to values at the top level");
    let p = one("services:\n  web:\n    image: !!str x\n");
    assert_at(&p, 3, 12, "", "tags");
    let p = one("services:\n  web:\n    image: x\n---\nservices: {}\n");
    assert_at(&p, 4, 1, "", "a second YAML document");
}

#[test]
fn hostile_input_is_bounded() {
    let p = one(&format!("services: {{}}\n#{}", "x".repeat(1 << 20)));
    assert_at(&p, 0, 0, "", "at most 1048576 (1 MiB)");

    let mut many = String::from("services:\n");
    for i in 0..201 {
        many.push_str(&format!("  s{i}:\n    image: x\n"));
    }
    let p = one(&many);
    assert_at(
        &p,
        1,
        1,
        "services",
        "201 services are declared; at most 200",
    );

    let p = one(&web(&format!("image: {}", "x".repeat(70_000))));
    assert_at(&p, 3, 12, "services.web.image", "at most 65536 (64 KiB)");

    let deep = format!(
        "services:\n  web:\n    image: x\n    labels: {}1\n",
        "[".repeat(200)
    );
    let p = one(&deep);
    assert_eq!((p.line, p.field.as_str()), (4, ""));
    assert!(p.message.contains("nest more than 32"), "{p:#?}");

    let deep = format!("services:\n  web:\n    labels:\n{}", "- ".repeat(100_000));
    let p = one(&deep);
    assert!(p.message.contains("nest more than 32"), "{p:#?}");
}

#[test]
fn problems_are_collected_and_sorted_by_line() {
    let p = problems(
        "services:\n  b:\n    image: x\n    ports: [\"99999\"]\n  a:\n    restart: maybe\n    image: y\n    stop_signal: NOPE\nextra: 1\n",
    );
    let lines: Vec<_> = p.iter().map(|p| p.line).collect();
    assert_eq!(lines, [4, 6, 8, 9], "{p:#?}");
}

#[test]
fn a_realistic_two_service_app() {
    let text = r#"# The app and its database.
services:
  web:
    command: ["./server", "--listen", "0.0.0.0:8080"]
    working_dir: ./app
    environment:
      DATABASE_URL: postgres://app@db/app
      WORKERS: 4
    ports:
      - "8080:8080"
    healthcheck:
      test: ["CMD", "curl", "-fsS", "http://localhost:8080/health"]
      interval: 10s
      timeout: 2s
      retries: 5
      start_period: 5s
    depends_on:
      db:
        condition: service_healthy
    restart: on-failure:3
    stop_grace_period: 20s
    stop_signal: SIGINT
  db:
    image: postgres:16
    environment:
      - POSTGRES_USER=app
      - POSTGRES_DB=app
    volumes:
      - pgdata:/var/lib/postgresql/data
    healthcheck:
      test: pg_isready -U app
      interval: 5s
    restart: unless-stopped

volumes:
  pgdata:
"#;
    let file = ok(text);
    let mut web = spec("web", 3);
    web.command = Some(vec![
        "./server".into(),
        "--listen".into(),
        "0.0.0.0:8080".into(),
    ]);
    web.working_dir = Some("./app".into());
    web.environment = BTreeMap::from([
        ("DATABASE_URL".into(), "postgres://app@db/app".into()),
        ("WORKERS".into(), "4".into()),
    ]);
    web.ports = vec![port(None, Some(8080), 8080, false)];
    web.healthcheck = Some(HealthCheck {
        test: HealthTest::Cmd(vec![
            "curl".into(),
            "-fsS".into(),
            "http://localhost:8080/health".into(),
        ]),
        interval: Duration::from_secs(10),
        timeout: Duration::from_secs(2),
        retries: 5,
        start_period: Duration::from_secs(5),
    });
    web.depends_on = vec![Dependency {
        service: "db".into(),
        condition: DependencyCondition::Healthy,
    }];
    web.restart = RestartPolicy::OnFailure {
        max_retries: Some(3),
    };
    web.stop_grace_period = Duration::from_secs(20);
    web.stop_signal = "SIGINT".into();

    let mut db = spec("db", 23);
    db.image = Some("postgres:16".into());
    db.environment = BTreeMap::from([
        ("POSTGRES_USER".into(), "app".into()),
        ("POSTGRES_DB".into(), "app".into()),
    ]);
    db.volumes = vec![VolumeMount {
        source: Some("pgdata".into()),
        target: "/var/lib/postgresql/data".into(),
        read_only: false,
    }];
    db.healthcheck = Some(HealthCheck {
        test: HealthTest::Shell("pg_isready -U app".into()),
        interval: Duration::from_secs(5),
        timeout: Duration::from_secs(30),
        retries: 3,
        start_period: Duration::ZERO,
    });
    db.restart = RestartPolicy::UnlessStopped;
    assert_eq!(
        file,
        ComposeFile {
            services: vec![web, db]
        }
    );
}

/// YAML-shaped text: lines of indentation, list dashes, keys (some the
/// parser knows) and scalars (some meaningful to it).
pub(crate) fn yamlish() -> impl Strategy<Value = String> {
    let key = prop::sample::select(vec![
        "services",
        "web",
        "db",
        "image",
        "command",
        "ports",
        "volumes",
        "environment",
        "healthcheck",
        "test",
        "interval",
        "depends_on",
        "condition",
        "restart",
        "x-a",
        "target",
        "published",
        "type",
        "source",
        "domains",
        "ssl",
        "port",
        "service",
        "driver",
        "rate_limit",
        "requests",
        "window",
        "enabled",
        "email",
        "path",
        "networking",
        "expose",
        "domain",
        "container_port",
        "protocol",
        "proxy_type",
        "network_mode",
        "deploy",
        "strategy",
        "health_timeout",
        "drain_timeout",
    ]);
    let scalar = prop::sample::select(vec![
        "",
        "nginx",
        "8080:80",
        "80",
        "[::1]:80:80",
        "'a b'",
        "\"x\"",
        "[CMD, x]",
        "{a: 1}",
        "10s",
        "1m30s",
        "service_healthy",
        "blue-green",
        "$PORT",
        "true",
        "~",
        "&a x",
        "*a",
        "!t x",
        "- x",
        "[",
        "}",
        "./d:/d:ro",
        "example.com",
        "on-failure:3",
        "70000",
        "-1",
        "'",
        "\"\\q\"",
        "|",
        "\t",
        "#",
        "---",
        "a: b",
        "0",
        "https",
        "host",
        "127.0.0.1::80",
        "192.0.2.7:8080:80",
    ]);
    let line = (0usize..8, any::<bool>(), key, any::<bool>(), scalar).prop_map(
        |(indent, dash, key, with_key, scalar)| {
            let mut l = " ".repeat(indent);
            if dash {
                l.push_str("- ");
            }
            if with_key {
                l.push_str(key);
                l.push_str(": ");
            }
            l.push_str(scalar);
            l
        },
    );
    prop::collection::vec(line, 0..24).prop_map(|lines| lines.join("\n"))
}

#[track_caller]
pub(crate) fn assert_positions_in_range(text: &str, problems: &[Problem]) {
    let lines = crate::yaml::lines(text).count() + 1;
    for p in problems {
        if !p.field.is_empty() {
            assert!(p.line >= 1, "{p:#?} in {text:?}");
        }
        assert!(p.line <= lines, "{p:#?} past the end of {text:?}");
        assert!(!p.message.is_empty());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,200}|[ \\-:\n\\[\\]{}'\"a0#&*!|>]{0,120}") {
        if let Err(p) = parse(&text) {
            assert_positions_in_range(&text, &p);
        }
    }

    #[test]
    fn yaml_shaped_text_never_panics(text in yamlish()) {
        if let Err(p) = parse(&text) {
            assert_positions_in_range(&text, &p);
        }
    }

    #[test]
    fn services_with_random_scalars_never_panic(text in yamlish()) {
        let text = format!("services:\n  web:\n{}", text.lines().map(|l| format!("    {l}\n")).collect::<String>());
        if let Err(p) = parse(&text) {
            assert_positions_in_range(&text, &p);
        }
    }
}

#[test]
fn a_lone_carriage_return_ends_a_line_as_in_yaml() {
    // Found by fuzzing: YAML counts `\r` as a line break, str::lines does not.
    let text = "services:\r  web:\r    image: x\r    ports: [\"70000\"]\r";
    let p = one(text);
    assert_at(&p, 4, 13, "services.web.ports[0]", "port 70000");
    assert_positions_in_range(text, &[p]);
    let p = one("services:\r  web:\r    image: x\r---\rservices: {}\r");
    assert_at(&p, 4, 1, "", "a second YAML document");
}

#[test]
fn network_mode_is_a_mode_or_a_network_name() {
    for mode in ["host", "none", "bridge", "apps_net-1.x"] {
        let s = service(&web(&format!("image: x\nnetwork_mode: {mode}")));
        assert_eq!(s.network_mode.as_deref(), Some(mode));
    }
    assert_eq!(service(&web("image: x")).network_mode, None);
    let p = problems(&web("image: x\nnetwork_mode: \"service:db\""));
    assert_eq!(p.len(), 1, "{p:#?}");
    assert_at(
        &p[0],
        4,
        19,
        "services.web.network_mode",
        "is not supported",
    );
    let p = problems(&web("image: x\nnetwork_mode: \"a b\""));
    assert_eq!(p.len(), 1, "{p:#?}");
    assert!(p[0].message.contains("is not host, none, bridge"), "{p:#?}");
}
