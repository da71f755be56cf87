use super::*;

fn route(id: &str, hosts: &[&str], upstream: &str) -> Route {
    serde_json::from_value(json!({"id": id, "path": "/", "hosts": hosts, "upstream": upstream}))
        .expect("route")
}

fn upstream(name: &str, port: u16) -> Upstream {
    serde_json::from_value(
        json!({"name": name, "targets": [{"url": format!("http://127.0.0.1:{port}")}]}),
    )
    .expect("upstream")
}

/// The objects of deployment `name` serving `host` at `port`.
fn objects(name: &str, host: &str, port: u16) -> (Route, Upstream) {
    let id = route_id(name);
    (route(&id, &[host], &id), upstream(&id, port))
}

/// A manager configuration of revision `revision` with these routes (each to
/// an upstream of its own name).
fn manager(revision: u64, routes: &[(&str, &str)]) -> DataPlaneConfig {
    let doc = ConfigDocument {
        routes: routes.iter().map(|(id, h)| route(id, &[h], id)).collect(),
        upstreams: routes.iter().map(|(id, _)| upstream(id, 9)).collect(),
        ..ConfigDocument::default()
    };
    DataPlaneConfig {
        revision,
        gateway: Arc::new(doc),
        ..DataPlaneConfig::default()
    }
}

fn route_ids(feed: &ConfigFeed) -> Vec<String> {
    feed.current()
        .gateway
        .routes
        .iter()
        .map(|r| r.id.clone())
        .collect()
}

#[test]
fn deployment_routes_go_on_top_of_every_snapshot() {
    let feed = ConfigFeed::default();
    let edge = EdgeFeed::new(feed.clone());
    let (v, left) = edge.adopt(&manager(3, &[("m", "m.test")]));
    assert!(left.is_empty());
    assert_eq!((v.revision, v.local), (3, 0));

    let v = edge
        .set("web", Some(objects("web", "web.test", 8000)))
        .expect("served");
    assert_eq!(
        (v.revision, v.local),
        (3, 1),
        "the same revision, a new local version"
    );
    assert_eq!(route_ids(&feed), ["edge-deploy-web", "m"]);
    assert_eq!(edge.proxy_state("web"), (true, None));
    // The same objects again change nothing.
    let again = edge
        .set("web", Some(objects("web", "web.test", 8000)))
        .expect("served");
    assert_eq!(again.local, 1);

    // A new snapshot keeps them; the stored snapshot is the manager's alone.
    let (v, left) = edge.adopt(&manager(4, &[("m", "m.test"), ("n", "n.test")]));
    assert!(left.is_empty());
    assert_eq!((v.revision, v.local), (4, 1));
    assert_eq!(route_ids(&feed), ["edge-deploy-web", "m", "n"]);
    let upstreams: Vec<String> = feed
        .current()
        .gateway
        .upstreams
        .iter()
        .map(|u| u.name.clone())
        .collect();
    assert_eq!(upstreams, ["edge-deploy-web", "m", "n"]);

    // Unrouted.
    let v = edge.set("web", None).expect("unrouted");
    assert_eq!((v.revision, v.local), (4, 2));
    assert_eq!(route_ids(&feed), ["m", "n"]);
    assert_eq!(edge.proxy_state("web"), (false, None));
}

#[test]
fn the_managers_configuration_wins_and_the_edge_says_so() {
    let feed = ConfigFeed::default();
    let edge = EdgeFeed::new(feed.clone());
    edge.adopt(&manager(1, &[("m", "m.test")]));
    edge.set("web", Some(objects("web", "web.test", 8000)))
        .expect("served");

    // The manager's next snapshot has a route with the deployment's id: the
    // manager's route is served, the deployment's left out and reported.
    let mut taken = manager(2, &[("m", "m.test")]);
    let doc = Arc::make_mut(&mut taken.gateway);
    doc.routes
        .push(route("edge-deploy-web", &["other.test"], "m"));
    doc.normalize();
    let (_, left) = edge.adopt(&taken);
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0].0, "web");
    assert!(
        left[0].1.contains("manager's configuration"),
        "{}",
        left[0].1
    );
    let current = feed.current();
    let served = current
        .gateway
        .routes
        .iter()
        .find(|r| r.id == "edge-deploy-web")
        .expect("the manager's route");
    assert_eq!(served.hosts, ["other.test"], "never overridden");
    assert!(current
        .gateway
        .upstreams
        .iter()
        .all(|u| u.name != "edge-deploy-web"));
    let (served, why) = edge.proxy_state("web");
    assert!(!served && why.is_some());
    // Told once, not with every snapshot.
    let (_, left) = edge.adopt(&taken);
    assert!(left.is_empty());

    // The conflict gone, the deployment is served again.
    let (_, left) = edge.adopt(&manager(3, &[("m", "m.test")]));
    assert!(left.is_empty());
    assert_eq!(edge.proxy_state("web"), (true, None));
    assert_eq!(route_ids(&feed), ["edge-deploy-web", "m"]);
}

#[test]
fn a_route_that_cannot_be_served_is_refused_and_nothing_changes() {
    let feed = ConfigFeed::default();
    let edge = EdgeFeed::new(feed.clone());
    edge.adopt(&manager(1, &[("m", "m.test")]));
    edge.set("web", Some(objects("web", "web.test", 8000)))
        .expect("served");
    let before = feed.current();

    // The same hosts and path as the manager's route.
    let why = edge
        .set("clash", Some(objects("clash", "m.test", 8001)))
        .expect_err("refused");
    assert!(why.contains("edge-deploy-clash"), "{why}");
    // The same hosts as another deployment served now.
    let why = edge
        .set("again", Some(objects("again", "web.test", 8002)))
        .expect_err("refused");
    assert!(!why.is_empty());
    assert_eq!(feed.current(), before, "nothing published");
    assert_eq!(edge.proxy_state("web"), (true, None));
    assert_eq!(edge.proxy_state("clash"), (false, None));

    // A snapshot the gateway cannot serve on its own takes nothing out: the
    // gateway refuses it whole and the agent takes the served one back.
    let mut broken = manager(2, &[("m", "m.test")]);
    Arc::make_mut(&mut broken.gateway).routes[0].upstream = "missing".into();
    let (_, left) = edge.adopt(&broken);
    assert!(left.is_empty(), "{left:?}");
    edge.restore(Arc::new(manager(1, &[("m", "m.test")])));
    assert_eq!(feed.current().revision, 1);
    assert_eq!(route_ids(&feed), ["edge-deploy-web", "m"]);
}

#[test]
fn refusals_carry_the_problems_of_the_files() {
    let r = Refusal::from(host::check_files("services: [\n", "").expect_err("invalid"));
    assert_eq!(r.code, "VALIDATION_FAILED");
    let data = r.data.expect("data");
    assert_eq!(data["field"], "compose");
    let problem = &data["problems"][0];
    assert_eq!(problem["file"], "compose.yml");
    assert!(problem["line"].as_u64().is_some(), "{problem}");
    assert!(problem.get("field").is_some(), "{problem}");
    let r = Refusal::from(DeployError::NotFound("x".into())).after_change(json!({"a": 1}));
    assert_eq!(r.code, "NOT_FOUND");
    assert_eq!(r.data, Some(json!({"changed": true, "a": 1})));
}

#[test]
fn payloads_are_checked_before_anything_is_done() {
    assert_eq!(
        name(&json!({})).expect_err("missing").message,
        "Missing name"
    );
    assert_eq!(
        name(&json!({"name": 3})).expect_err("wrong").data,
        Some(json!({"field": "name"}))
    );
    assert_eq!(
        text(&json!({"service": ""}), "service"),
        Ok(Some(String::new()))
    );
    assert!(flag(&json!({"start": "yes"}), "start").is_err());
    assert!(count(&json!({"tail": -1}), "tail").is_err());
    assert_eq!(count(&json!({"tail": 5}), "tail"), Ok(Some(5)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_a_bounded_tail_and_changes_answer_with_the_deployment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let feed = Arc::new(EdgeFeed::new(ConfigFeed::default()));
    let (_reporter, status) = fleetgate_protocol::status_link();
    let (events, _rx) = mpsc::channel(8);
    let engine = EdgeDeployments::open(
        dir.path(),
        &dir.path().join("no-docker.sock"),
        feed,
        status,
        events,
    );
    // 200 lines of 15,000 characters: 3 MB, more than one answer holds.
    let compose = "services:\n  talk:\n    command: [\"python3\", \"-c\", \"[print('x' * 15000, flush=True) for _ in range(200)]\"]\n";
    let created = engine
        .execute(
            "create_deployment",
            &json!({"type": "create_deployment", "name": "talk", "compose": compose}),
        )
        .await
        .expect("created");
    assert_eq!(created["deployment"]["name"], "talk", "{created}");
    assert_eq!(created["deployment"]["driver"], "process");
    assert!(created["deployment"].get("compose").is_none());
    let deadline = Instant::now() + Duration::from_secs(20);
    let logs = loop {
        let logs = engine
            .execute(
                "get_deployment_logs",
                &json!({"name": "talk", "tail": 1000, "service": "talk"}),
            )
            .await
            .expect("logs");
        if logs["truncated"] == true {
            break logs;
        }
        assert!(
            Instant::now() < deadline,
            "never more than fits: {}",
            logs["items"].as_array().map_or(0, Vec::len)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let text = serde_json::to_string(&logs).expect("json");
    assert!(text.len() <= MAX_LOG_BYTES + 100, "{}", text.len());
    assert!(logs["items"].as_array().expect("items").len() > 10);
    let refused = engine
        .execute(
            "get_deployment_logs",
            &json!({"name": "talk", "tail": 5000}),
        )
        .await
        .expect_err("too many");
    assert_eq!(refused.code, "BAD_REQUEST");
    let got = engine
        .execute("get_deployment", &json!({"name": "talk", "files": true}))
        .await
        .expect("get");
    assert_eq!(got["deployment"]["compose"], compose);
    let gone = engine
        .execute("delete_deployment", &json!({"name": "talk"}))
        .await
        .expect("deleted");
    assert_eq!(gone["deployment"]["name"], "talk");
    let missing = engine
        .execute("get_deployment", &json!({"name": "talk"}))
        .await
        .expect_err("gone");
    assert_eq!(missing.code, "NOT_FOUND");
}
