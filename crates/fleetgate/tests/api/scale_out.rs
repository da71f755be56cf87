//! Scale-out: two managers over one PostgreSQL and NATS JetStream. Events raised on
//! one manager reach SSE clients of the other, with increasing ids and no repeats;
//! webhook deliveries happen once although both managers run delivery workers.
//!
//! Other runs may share the NATS server: each pair of managers here has its own
//! secret key (so its own cluster id on the bus) and its own schema, and the tests
//! look for markers of their own (a user name, a revision's instance name).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use futures::StreamExt;
use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};

use crate::support::{config_in, postgres_schema_url, spawn_with, TestApp, TOKEN};

/// Two managers sharing a fresh PostgreSQL schema, NATS and a secret key, each
/// receiving the other's events; `None` (with the reason printed) without PostgreSQL
/// or NATS.
async fn pair() -> Option<(TestApp, TestApp)> {
    let Ok(nats) = std::env::var("FLEETGATE_TEST_NATS_URL") else {
        eprintln!("skipping scale-out case: FLEETGATE_TEST_NATS_URL is not set");
        return None;
    };
    let url = postgres_schema_url().await?;
    Some(pair_on(&url, Some(&nats)).await)
}

/// Two managers (each with its gateway) sharing the PostgreSQL schema `url` and a
/// secret key; with `nats`, connected to it (and waited for until their bus is up).
pub(crate) async fn pair_on(url: &str, nats: Option<&str>) -> (TestApp, TestApp) {
    // Replicas sharing a database share the key that encrypts secrets at rest.
    let key = hex::encode(rand_bytes());
    let mut apps = Vec::new();
    for _ in 0..2 {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("secret.key"), &key).expect("key file");
        let mut c = config_in(dir.path());
        c.database.url = Some(url.to_string());
        c.nats.url = nats.map(str::to_string);
        apps.push((c, dir));
    }
    let (cb, db) = apps.pop().expect("b");
    let (ca, da) = apps.pop().expect("a");
    let (a, b) = tokio::join!(spawn_with(ca, da), spawn_with(cb, db));
    if nats.is_some() {
        for app in [&a, &b] {
            wait_for_bus(app, Duration::from_secs(15)).await;
        }
    }
    (a, b)
}

/// The event bus's state as `/health/deep` shows it.
async fn bus_status(app: &TestApp) -> Value {
    let r = app
        .anon(Method::GET, "/health/deep")
        .send()
        .await
        .expect("deep health");
    let deep: Value = r.json().await.expect("json");
    deep["checks"]["nats"]["details"]["events_bus"].clone()
}

/// Waits until the manager is connected to NATS and receives other managers' events.
pub(crate) async fn wait_for_bus(app: &TestApp, wait: Duration) {
    let deadline = Instant::now() + wait;
    loop {
        let bus = bus_status(app).await;
        if bus["subscribed"] == true && bus["connected"] == true {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the manager never (re)subscribed to the event stream: {bus}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn rand_bytes() -> [u8; 32] {
    let mut k = [0u8; 32];
    for chunk in k.chunks_mut(16) {
        chunk.copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    }
    k
}

/// One SSE message: its id (absent for an event that arrived after a higher id was
/// sent), its event type and its JSON.
#[derive(Debug, Clone)]
struct Msg {
    id: Option<i64>,
    kind: String,
    data: Value,
}

struct Sse {
    buf: String,
    body: std::pin::Pin<Box<dyn futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
}

impl Sse {
    async fn open(app: &TestApp, path: &str, last_event_id: Option<i64>) -> Self {
        let mut req = Client::new().get(app.url(path)).bearer_auth(TOKEN);
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id.to_string());
        }
        let r = req.send().await.expect("stream");
        assert_eq!(r.status(), StatusCode::OK);
        Self {
            buf: String::new(),
            body: Box::pin(r.bytes_stream()),
        }
    }

    /// The next message within `wait` (heartbeats skipped).
    async fn next(&mut self, wait: Duration) -> Option<Msg> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let (mut id, mut kind, mut data) = (None, String::new(), String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = Some(v.trim().parse().expect("numeric SSE id"));
                    } else if let Some(v) = line.strip_prefix("event:") {
                        kind = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim());
                    }
                }
                if data.is_empty() {
                    continue;
                }
                return Some(Msg {
                    id,
                    kind,
                    data: serde_json::from_str(&data).expect("event JSON"),
                });
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            match tokio::time::timeout(left, self.body.next()).await {
                Ok(Some(Ok(chunk))) => self.buf.push_str(&String::from_utf8_lossy(&chunk)),
                _ => return None,
            }
        }
    }

    /// Messages until `done` holds for the ones read so far, within `wait`.
    async fn until(&mut self, wait: Duration, mut done: impl FnMut(&[Msg]) -> bool) -> Vec<Msg> {
        let deadline = Instant::now() + wait;
        let mut got = Vec::new();
        while !done(&got) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left).await {
                Some(m) => got.push(m),
                None => panic!(
                    "stream ended or went quiet after {} messages: {got:?}",
                    got.len()
                ),
            }
        }
        got
    }
}

/// Each event once, and the SSE ids of a stream strictly increasing.
fn assert_well_ordered(stream: &str, msgs: &[Msg]) {
    let late = msgs.iter().filter(|m| m.id.is_none()).count();
    eprintln!("{stream}: {} events, {late} late", msgs.len());
    let mut seen = HashSet::new();
    let mut last = 0;
    for m in msgs {
        let id = m.data["id"].as_i64().expect("event id");
        assert!(seen.insert(id), "{stream}: event {id} sent twice: {msgs:?}");
        if let Some(sse) = m.id {
            assert_eq!(sse, id, "{stream}: the SSE id is the event id");
            assert!(sse > last, "{stream}: id {sse} after {last}: {msgs:?}");
            last = sse;
        } else {
            assert!(
                id < last,
                "{stream}: only a late event goes without an SSE id"
            );
        }
    }
}

async fn failed_login(app: &TestApp, username: &str) {
    let r = Client::new()
        .post(app.url("/api/v1/auth/login"))
        .json(&json!({"username": username, "password": "wrong-password"}))
        .send()
        .await
        .expect("login");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

async fn put_settings(app: &TestApp, body: Value) {
    let r = app
        .admin(Method::PUT, "/api/v1/settings")
        .json(&body)
        .send()
        .await
        .expect("settings");
    assert_eq!(r.status(), StatusCode::OK, "{:?}", r.text().await);
}

/// Waits until `app` follows a settings change made on the other manager.
async fn wait_for_settings(
    app: &TestApp,
    what: &str,
    ok: impl Fn(&fleetgate_core::Settings) -> bool,
) {
    let state = app.running.as_ref().expect("running").state.clone();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ok(&state.settings()) {
        assert!(Instant::now() < deadline, "the manager never saw {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn events_raised_on_one_manager_stream_from_the_other() {
    let Some((a, b)) = pair().await else {
        return;
    };
    let marker = format!("scale-{}", uuid::Uuid::new_v4().simple());
    let mut b_all = Sse::open(&b, "/api/v1/stream/events", None).await;
    let mut b_alerts = Sse::open(&b, "/api/v1/stream/alerts", None).await;
    let mut a_auth = Sse::open(&a, "/api/v1/stream/events?category=auth", None).await;

    // A failed login on A is seen on B's streams, within about a second.
    let raised = Instant::now();
    failed_login(&a, &format!("{marker}-a")).await;
    let is_a = |m: &Msg| m.data["details"]["username"] == format!("{marker}-a");
    let got = b_all
        .until(Duration::from_secs(10), |ms| ms.iter().any(is_a))
        .await;
    let latency = raised.elapsed();
    eprintln!("an event raised on A reached B's stream after {latency:?}");
    assert!(
        latency < Duration::from_secs(3),
        "too slow: {latency:?} (the target is about 1 s)"
    );
    let seen = got.iter().find(|m| is_a(m)).expect("the event").clone();
    assert_eq!(seen.kind, "auth.login_failed");
    assert_eq!(
        (seen.data["severity"].as_str(), seen.data["source"].as_str()),
        (Some("warning"), Some("manager"))
    );
    // The id is the store's: B lists the same event under that id.
    let id = seen.data["id"].as_i64().expect("id");
    let listed = b
        .get_json("/api/v1/events?type=auth.login_failed&limit=100")
        .await;
    assert!(
        listed["items"]
            .as_array()
            .expect("items")
            .iter()
            .any(|e| e["id"] == id && e["details"]["username"] == format!("{marker}-a")),
        "{listed}"
    );
    let alerts = b_alerts
        .until(Duration::from_secs(10), |ms| ms.iter().any(is_a))
        .await;
    assert_eq!(
        alerts.iter().filter(|m| is_a(m)).count(),
        1,
        "once on B's alert stream"
    );

    // One raised on B reaches A, and B's own stream has it once, not again from NATS.
    failed_login(&b, &format!("{marker}-b")).await;
    let is_b = |m: &Msg| m.data["details"]["username"] == format!("{marker}-b");
    let on_a = a_auth
        .until(Duration::from_secs(10), |ms| {
            ms.iter().any(is_a) && ms.iter().any(is_b)
        })
        .await;
    assert_well_ordered("A auth", &on_a);
    let mut on_b = got;
    on_b.extend(
        b_all
            .until(Duration::from_secs(10), |ms| ms.iter().any(is_b))
            .await,
    );

    // Configuration changes made on both at once, interleaving in the store: each
    // stream gets every one once, in increasing id order (or late, without an id).
    put_settings(&a, json!({"api": {"rate_limit_per_minute": 0}})).await;
    wait_for_settings(&b, "the rate limit change", |s| {
        s.api.rate_limit_per_minute == 0
    })
    .await;
    let mut a_config = Sse::open(&a, "/api/v1/stream/events?type=config.changed", None).await;
    let mut b_config = Sse::open(&b, "/api/v1/stream/events?type=config.changed", None).await;
    const N: usize = 16;
    let writes = (0..N).map(|i| {
        let app = if i % 2 == 0 { &a } else { &b };
        put_settings(
            app,
            json!({"general": {"instance_name": format!("{marker}-{i}")}, "api": {"rate_limit_per_minute": 0}}),
        )
    });
    futures::future::join_all(writes).await;
    for (name, stream) in [("A", &mut a_config), ("B", &mut b_config)] {
        let msgs = stream
            .until(Duration::from_secs(10), |ms| ms.len() >= N)
            .await;
        assert_well_ordered(&format!("{name} config"), &msgs);
        // Nothing more comes: no event is sent a second time.
        let extra = stream.next(Duration::from_millis(800)).await;
        assert!(extra.is_none(), "{name}: unexpected {extra:?}");
    }
    on_b.extend(
        b_all
            .until(Duration::from_secs(10), |ms| {
                ms.iter().filter(|m| m.kind == "config.changed").count() > N
            })
            .await,
    );
    // Once quiet, B's stream has had every event stored since it opened, once.
    while let Some(m) = b_all.next(Duration::from_millis(1000)).await {
        on_b.push(m);
    }
    assert_well_ordered("B all", &on_b);
    let mut streamed: Vec<i64> = on_b
        .iter()
        .map(|m| m.data["id"].as_i64().expect("id"))
        .collect();
    streamed.sort_unstable();
    let mut stored: Vec<i64> = b.get_json("/api/v1/events?limit=1000").await["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|e| e["id"].as_i64().expect("id"))
        .filter(|id| *id >= streamed[0])
        .collect();
    stored.sort_unstable();
    assert_eq!(streamed, stored, "B's stream has what the store has");

    // Resuming on B from the middle replays what the store holds after that id, in
    // order, whichever manager raised it.
    let from = stored[stored.len() / 2];
    let want: Vec<i64> = stored.into_iter().filter(|id| *id > from).collect();
    let mut resumed = Sse::open(&b, "/api/v1/stream/events", Some(from)).await;
    let replayed = resumed
        .until(Duration::from_secs(10), |ms| ms.len() >= want.len())
        .await;
    let got: Vec<i64> = replayed
        .iter()
        .map(|m| m.id.expect("replayed with ids"))
        .collect();
    assert_eq!(got, want);
    a.stop().await;
    b.stop().await;
}

#[derive(Clone, Default)]
struct Receiver {
    /// Deliveries by X-Webhook-Delivery, and by event id.
    by_delivery: Arc<Mutex<HashMap<String, usize>>>,
    by_event: Arc<Mutex<BTreeMap<i64, usize>>>,
}

async fn receiver() -> (Receiver, String) {
    let r = Receiver::default();
    let state = r.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: String| {
            let state = state.clone();
            async move {
                let delivery = headers["x-webhook-delivery"]
                    .to_str()
                    .expect("delivery id")
                    .to_string();
                let event: Value = serde_json::from_str(&body).expect("json body");
                *state
                    .by_delivery
                    .lock()
                    .expect("lock")
                    .entry(delivery)
                    .or_default() += 1;
                *state
                    .by_event
                    .lock()
                    .expect("lock")
                    .entry(event["id"].as_i64().expect("event id"))
                    .or_default() += 1;
                // A slow receiver keeps deliveries in flight while the other manager
                // looks for work.
                tokio::time::sleep(Duration::from_millis(50)).await;
                StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (r, url)
}

#[tokio::test]
async fn webhook_deliveries_happen_once_across_managers() {
    let Some((a, b)) = pair().await else {
        return;
    };
    put_settings(
        &a,
        json!({"api": {"rate_limit_per_minute": 0}, "webhooks": {"allow_private_targets": true}}),
    )
    .await;
    wait_for_settings(&b, "allow_private_targets", |s| {
        s.webhooks.allow_private_targets && s.api.rate_limit_per_minute == 0
    })
    .await;
    let config_ids = |v: Value| -> Vec<i64> {
        v["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|e| e["id"].as_i64().expect("id"))
            .collect()
    };
    let before = config_ids(
        a.get_json("/api/v1/events?type=config.changed&limit=200")
            .await,
    );
    let (rx, url) = receiver().await;
    let hook = a
        .admin(Method::POST, "/api/v1/webhooks")
        .json(&json!({"url": url, "events": ["config.changed"], "secret": "shared-secret-1"}))
        .send()
        .await
        .expect("create");
    assert_eq!(hook.status(), StatusCode::CREATED);
    let hook: Value = hook.json().await.expect("json");
    let hook_id = hook["id"].as_str().expect("id").to_string();

    // Changes through both managers, at once: each stores its event and queues its
    // delivery; both workers look for due deliveries.
    const N: usize = 30;
    let marker = uuid::Uuid::new_v4().simple().to_string();
    // In waves of one change on each manager, so both workers have work at once;
    // then a burst. (A PUT replaces all settings: each keeps private targets allowed.)
    let change = |app: &'static str, i: usize| {
        let app = if app == "a" { &a } else { &b };
        put_settings(
            app,
            json!({"general": {"instance_name": format!("{marker}-{i}")}, "api": {"rate_limit_per_minute": 0}, "webhooks": {"allow_private_targets": true}}),
        )
    };
    for wave in 0..N / 4 {
        tokio::join!(change("a", 2 * wave), change("b", 2 * wave + 1));
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    let burst = (N / 4 * 2..N).map(|i| change(if i % 2 == 0 { "a" } else { "b" }, i));
    futures::future::join_all(burst).await;
    // Every change after the webhook was made, whichever manager stored it (the
    // writers store events a moment after the requests return).
    let deadline = Instant::now() + Duration::from_secs(10);
    let after: Vec<i64> = loop {
        let after: Vec<i64> = config_ids(
            a.get_json("/api/v1/events?type=config.changed&limit=200")
                .await,
        )
        .into_iter()
        .filter(|id| !before.contains(id))
        .collect();
        if after.len() >= N || Instant::now() > deadline {
            break after;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(after.len(), N, "{after:?}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while rx.by_event.lock().expect("lock").len() < N {
        if Instant::now() > deadline {
            let log = a
                .get_json(&format!("/api/v1/webhooks/{hook_id}/deliveries?limit=100"))
                .await;
            panic!(
                "only {} of {N} events delivered: {log}",
                rx.by_event.lock().expect("lock").len()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Time for a second delivery by the other manager, if there were to be one.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let by_event = rx.by_event.lock().expect("lock").clone();
    let by_delivery = rx.by_delivery.lock().expect("lock").clone();
    assert_eq!(
        by_event.keys().copied().collect::<HashSet<_>>(),
        after.iter().copied().collect::<HashSet<_>>(),
        "each change delivered"
    );
    assert!(
        by_event.values().all(|n| *n == 1),
        "an event was delivered twice: {by_event:?}"
    );
    assert!(
        by_delivery.values().all(|n| *n == 1),
        "a delivery was sent twice: {by_delivery:?}"
    );
    // The log agrees: every delivery succeeded at its first attempt.
    let log = b
        .get_json(&format!("/api/v1/webhooks/{hook_id}/deliveries?limit=100"))
        .await;
    let items = log["items"].as_array().expect("items");
    assert_eq!(items.len(), N, "{log}");
    for d in items {
        assert_eq!(
            (d["status"].as_str(), d["attempts"].as_i64()),
            (Some("success"), Some(1)),
            "{d}"
        );
    }
    a.stop().await;
    b.stop().await;
}

/// The claim itself, hammered: many claimers on two connection pools take every
/// queued delivery exactly once.
#[tokio::test]
async fn concurrent_claims_take_each_delivery_once() {
    use fleetgate_store::{DeliveryRecord, SqlStore, StoreOptions, WebhookStore};
    let Some(url) = postgres_schema_url().await else {
        return;
    };
    let first = SqlStore::open_and_migrate(&StoreOptions::new(url.clone()))
        .await
        .expect("store");
    let second = SqlStore::open(&StoreOptions::new(url))
        .await
        .expect("store");
    let now = fleetgate_core::time::now_ms();
    const N: usize = 400;
    let queued: Vec<DeliveryRecord> = (0..N)
        .map(|i| DeliveryRecord {
            id: format!("d{i:04}"),
            webhook_id: "w".into(),
            event_id: Some(i as i64 + 1),
            event_type: "config.changed".into(),
            payload: "{}".into(),
            status: "pending".into(),
            attempts: 0,
            next_attempt_at: now - 1000,
            last_status_code: None,
            last_error: None,
            last_latency_ms: None,
            created_at: now,
            updated_at: now,
        })
        .collect();
    first.enqueue_deliveries(&queued).await.expect("enqueue");
    let stores = [Arc::new(first), Arc::new(second)];
    let claimers = (0..8).map(|i| {
        let store = stores[i % 2].clone();
        tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let batch = store
                    .claim_deliveries(fleetgate_core::time::now_ms(), 60_000, 7)
                    .await
                    .expect("claim");
                if batch.is_empty() {
                    return mine;
                }
                mine.extend(batch.into_iter().map(|d| d.id));
            }
        })
    });
    let mut claimed: HashMap<String, usize> = HashMap::new();
    let mut claimers_with_work = 0;
    for c in futures::future::join_all(claimers).await {
        let mine = c.expect("claimer");
        claimers_with_work += usize::from(!mine.is_empty());
        for id in mine {
            *claimed.entry(id).or_default() += 1;
        }
    }
    assert_eq!(claimed.len(), N, "every delivery was claimed");
    let twice: Vec<_> = claimed.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "claimed more than once: {twice:?}");
    assert!(claimers_with_work > 1, "the claimers ran concurrently");
    for s in stores {
        fleetgate_store::Store::close(s.as_ref()).await;
    }
}

/// A NATS server of this test's own (JetStream, files in `dir`) on `port`.
async fn nats_server(port: u16, dir: &std::path::Path) -> tokio::process::Child {
    let child = tokio::process::Command::new("nats-server")
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start nats-server");
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "nats-server did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child
}

/// Raises a `test.bus` event on `app` with a marker in its details.
fn raise(app: &TestApp, marker: &str) {
    let state = &app.running.as_ref().expect("running").state;
    state.emit(
        fleetgate_core::events::NewEvent::new(
            "test.bus",
            fleetgate_core::events::Severity::Info,
            marker,
        )
        .details(json!({ "marker": marker })),
    );
}

#[tokio::test]
async fn the_bus_survives_a_nats_restart() {
    if std::process::Command::new("nats-server")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipping: no nats-server on PATH to restart");
        return;
    }
    let Some(url) = postgres_schema_url().await else {
        return;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let store = tempfile::tempdir().expect("tempdir");
    let mut server = nats_server(port, store.path()).await;
    let (a, b) = pair_on(&url, Some(&format!("nats://127.0.0.1:{port}"))).await;
    let marker = format!("restart-{}", uuid::Uuid::new_v4().simple());
    let mut a_test = Sse::open(&a, "/api/v1/stream/events?category=test", None).await;
    let mut b_test = Sse::open(&b, "/api/v1/stream/events?category=test", None).await;
    let named = |n: usize| {
        let name = format!("{marker}-{n}");
        move |ms: &[Msg]| ms.iter().any(|m| m.data["details"]["marker"] == name)
    };
    raise(&a, &format!("{marker}-1"));
    b_test.until(Duration::from_secs(10), named(1)).await;

    // NATS goes away: A still stores its events and streams them to its clients,
    // at once; it counts what it could not publish.
    server.kill().await.expect("stop nats-server");
    let deadline = Instant::now() + Duration::from_secs(10);
    while bus_status(&a).await["connected"] != false {
        assert!(Instant::now() < deadline, "A never noticed NATS was gone");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let raised = Instant::now();
    raise(&a, &format!("{marker}-2"));
    a_test.until(Duration::from_secs(5), named(2)).await;
    assert!(
        raised.elapsed() < Duration::from_secs(2),
        "{:?}",
        raised.elapsed()
    );
    let listed = a.get_json("/api/v1/events?type=test.bus").await;
    assert!(
        listed["items"]
            .as_array()
            .expect("items")
            .iter()
            .any(|e| e["details"]["marker"] == format!("{marker}-2")),
        "stored during the outage: {listed}"
    );
    let bus = bus_status(&a).await;
    assert!(bus["not_published"].as_u64() >= Some(1), "{bus}");

    // NATS comes back: both reconnect and forward again by themselves.
    let back = Instant::now();
    let _server = nats_server(port, store.path()).await;
    for app in [&a, &b] {
        wait_for_bus(app, Duration::from_secs(30)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut n = 3;
    // The consumer may be rebuilt a moment after the connection: raise events until
    // one arrives.
    'resumed: loop {
        raise(&a, &format!("{marker}-{n}"));
        let wait = Instant::now() + Duration::from_secs(2);
        while let Some(m) = b_test
            .next(wait.saturating_duration_since(Instant::now()))
            .await
        {
            let from_a = m.data["details"]["marker"]
                .as_str()
                .and_then(|v| v.strip_prefix(&format!("{marker}-")))
                .and_then(|v| v.parse::<usize>().ok())
                .is_some_and(|k| k >= 3);
            if from_a {
                eprintln!(
                    "forwarding resumed {:?} after NATS came back",
                    back.elapsed()
                );
                break 'resumed;
            }
        }
        assert!(
            Instant::now() < deadline,
            "B never received A's events again: {}",
            bus_status(&b).await
        );
        n += 1;
    }
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn unreachable_nats_slows_nothing_down() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = config_in(dir.path());
    // Nothing listens there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    config.nats.url = Some(format!("nats://user:hunter2@{closed}"));
    let app = spawn_with(config, dir).await;
    let mut all = Sse::open(&app, "/api/v1/stream/events?type=test.nats_down", None).await;
    let state = app.running.as_ref().expect("running").state.clone();
    const N: usize = 200;
    let started = Instant::now();
    for i in 0..N {
        state.emit(fleetgate_core::events::NewEvent::new(
            "test.nats_down",
            fleetgate_core::events::Severity::Info,
            format!("event {i}"),
        ));
    }
    let got = all.until(Duration::from_secs(10), |ms| ms.len() >= N).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_well_ordered("local", &got);
    assert_eq!(
        app.get_json("/api/v1/events?type=test.nats_down&limit=1")
            .await["total"],
        N
    );
    let bus = bus_status(&app).await;
    assert_eq!(bus["connected"], false, "{bus}");
    assert!(bus["not_published"].as_u64() >= Some(N as u64), "{bus}");
    // SQLite cannot be shared: this manager only publishes.
    assert_eq!(bus["forwarding"], false, "{bus}");
    // The password is not shown.
    let deep = app
        .anon(Method::GET, "/health/deep")
        .send()
        .await
        .expect("deep")
        .text()
        .await
        .expect("text");
    assert!(!deep.contains("hunter2"), "{deep}");
    app.stop().await;
}
