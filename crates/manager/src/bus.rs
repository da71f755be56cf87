//! The event bus between manager replicas: NATS JetStream.
//!
//! With a NATS URL configured, every event this manager stores is published on the
//! subject `fleetgate.events.<category>` (the category with anything but letters,
//! digits, `_` and `-` replaced by `_`) of the JetStream stream `FLEETGATE_EVENTS`
//! (subjects `fleetgate.events.>`, kept at most 24 hours and 100,000 messages, 256 MiB),
//! which the first manager to start creates. The payload is the event as JSON, as the
//! API shows it (its store `id`, `type`, `severity`, `category`, `message`, `details`,
//! `source`, `route_id`, `upstream`, `node_id`, `flow_id`, `created_at`), plus
//! `origin`, the publishing manager's instance id, and `cluster`, also sent in the
//! `Fleetgate-Origin` and `Fleetgate-Cluster` headers; `Nats-Msg-Id` is
//! `<origin>-<id>`, so a retried publish is stored once.
//!
//! The cluster id is derived from the secret key (HMAC-SHA256, it does not reveal the
//! key). Managers sharing one database must share that key anyway, and events whose
//! cluster differs are ignored: another installation using the same NATS server has
//! its own ids, which must not reach this one's streams.
//!
//! Publishing never holds up the event writer: events wait in a bounded queue for a
//! publisher task; when NATS is unreachable or the queue is full they are not
//! published (counted, and logged at most every 30 s), but they are still stored,
//! delivered to webhooks and streamed to this manager's clients. The client
//! reconnects by itself; publishing resumes when it does.
//!
//! On a PostgreSQL store (the only one several managers can share), each manager
//! also reads the stream with an ordered consumer and hands the events published by
//! other managers to its live subscribers (the SSE streams), so a client streaming
//! from one manager sees events raised on another. Their ids are store ids, global
//! across the managers; [`StreamOrder`] keeps every stream's ids increasing. Events
//! are never stored or sent to webhooks a second time by a manager that receives
//! them: the manager that stored an event queued its webhook deliveries.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::DeliverPolicy};
use fleetgate_core::events::{NewEvent, Severity};
use fleetgate_core::redact::redact_url;
use fleetgate_core::time::{now_ms, parse_rfc3339, rfc3339};
use fleetgate_store::EventRecord;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{mpsc, watch};

use crate::events::EventHub;

/// The JetStream stream that holds the events.
pub const STREAM: &str = "FLEETGATE_EVENTS";
/// The subjects of the stream; an event goes to `fleetgate.events.<category>`.
pub const SUBJECTS: &str = "fleetgate.events.>";
/// The header naming the manager that published an event.
pub const ORIGIN_HEADER: &str = "Fleetgate-Origin";
/// The header naming the installation (cluster) of that manager.
pub const CLUSTER_HEADER: &str = "Fleetgate-Cluster";
/// How long the stream keeps an event.
const MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// How many events the stream keeps at most (the oldest go first).
const MAX_MESSAGES: i64 = 100_000;
/// How many bytes the stream keeps at most.
const MAX_BYTES: i64 = 256 * 1024 * 1024;
/// Events waiting to be published; beyond this, new ones are not published.
const QUEUE: usize = 4096;
/// Publishes awaiting their acknowledgement at once.
const IN_FLIGHT: usize = 256;
/// Longest wait to hand one event to the client.
const SEND_TIMEOUT: Duration = Duration::from_secs(2);
/// Repeated failures are logged once per this interval.
const LOG_EVERY: Duration = Duration::from_secs(30);
/// How long a stream holds an event back for events with lower ids still on their
/// way from other managers (see [`StreamOrder`]).
pub const REORDER_WINDOW: Duration = Duration::from_millis(300);

/// The subject of an event category: `fleetgate.events.<token>`, where the token is
/// the category with characters a subject token may not hold replaced by `_`.
pub fn subject(category: &str) -> String {
    let token: String = category
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if token.is_empty() {
        "fleetgate.events._".into()
    } else {
        format!("fleetgate.events.{token}")
    }
}

/// The cluster id of the installation whose secret key is `key` (random without one:
/// such a manager has no key to share, so no cluster).
pub fn cluster_id(key: Option<&[u8; 32]>) -> String {
    use hmac::Mac;
    match key {
        Some(k) => {
            let mut mac =
                hmac::Hmac::<sha2::Sha256>::new_from_slice(k).expect("HMAC takes any key length");
            mac.update(b"fleetgate events bus cluster");
            hex::encode(&mac.finalize().into_bytes()[..12])
        }
        None => uuid::Uuid::new_v4().simple().to_string(),
    }
}

/// Checks that `url` names a NATS server (`nats://`, `tls://`, `ws://` or `wss://`);
/// the error completes "the NATS URL …" and shows the URL redacted.
pub fn check_url(url: &str) -> Result<(), String> {
    let valid = url.contains("://") && url.parse::<async_nats::ServerAddr>().is_ok();
    if valid {
        Ok(())
    } else {
        Err(format!(
            "must be a URL such as nats://127.0.0.1:4222 (schemes nats, tls, ws, wss), got {:?}",
            redact_url(url)
        ))
    }
}

/// An event as published on the bus.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BusEvent {
    /// The store id (global on a shared PostgreSQL store).
    pub id: i64,
    /// The instance id of the manager that stored and published it.
    pub origin: String,
    /// The installation of that manager (see [`cluster_id`]).
    pub cluster: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub severity: Severity,
    pub category: String,
    pub message: String,
    #[serde(default)]
    pub details: Value,
    pub source: String,
    #[serde(default)]
    pub route_id: Option<String>,
    #[serde(default)]
    pub upstream: Option<String>,
    #[serde(default)]
    pub node_id: Option<String>,
    #[serde(default)]
    pub flow_id: Option<String>,
    /// RFC 3339, milliseconds.
    pub created_at: String,
}

impl BusEvent {
    pub fn of(r: &EventRecord, origin: &str, cluster: &str) -> Self {
        let e = &r.event;
        Self {
            id: r.id,
            origin: origin.to_string(),
            cluster: cluster.to_string(),
            event_type: e.event_type.clone(),
            severity: e.severity,
            category: e.category.clone(),
            message: e.message.clone(),
            details: e.details.clone(),
            source: e.source.clone(),
            route_id: e.route_id.clone(),
            upstream: e.upstream.clone(),
            node_id: e.node_id.clone(),
            flow_id: e.flow_id.clone(),
            created_at: rfc3339(e.created_at),
        }
    }

    /// The event as a record (not acknowledged: it was just stored).
    pub fn into_record(self) -> Result<EventRecord, String> {
        if self.id <= 0 {
            return Err(format!("id must be positive, got {}", self.id));
        }
        let created_at = parse_rfc3339(&self.created_at)
            .ok_or_else(|| format!("created_at is not RFC 3339: {:?}", self.created_at))?;
        Ok(EventRecord {
            id: self.id,
            event: NewEvent {
                event_type: self.event_type,
                severity: self.severity,
                category: self.category,
                message: self.message,
                details: self.details,
                source: self.source,
                route_id: self.route_id,
                upstream: self.upstream,
                node_id: self.node_id,
                flow_id: self.flow_id,
                created_at,
            },
            acknowledged_by: None,
            acknowledged_at: None,
        })
    }
}

/// Logs a repeated failure at most once per interval.
#[derive(Debug)]
struct Throttle {
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    const fn new() -> Self {
        Self {
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(n)` when a message may be logged now, `n` being how many were held back
    /// since the last one.
    fn check(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(t) if now.duration_since(t) < LOG_EVERY => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

fn throttled(t: &Mutex<Throttle>) -> Option<u64> {
    t.lock()
        .unwrap_or_else(|p| p.into_inner())
        .check(Instant::now())
}

/// Counters of the bus, for the health check.
#[derive(Debug, Default)]
pub struct BusStats {
    /// Events acknowledged by JetStream.
    pub published: AtomicU64,
    /// Events not published: NATS unreachable, the queue full, or no acknowledgement.
    pub not_published: AtomicU64,
    /// Events of other managers handed to this manager's streams.
    pub forwarded: AtomicU64,
    /// Messages that were not events of this format (ignored).
    pub rejected: AtomicU64,
    /// Events of another installation (cluster id) on the same stream (ignored).
    pub foreign: AtomicU64,
}

/// This manager's end of the bus.
#[derive(Debug)]
pub struct Bus {
    /// This manager's instance id (random per process), the `origin` of its events.
    pub instance: String,
    /// The installation's id (see [`cluster_id`]).
    pub cluster: String,
    /// Whether events of other managers are received (PostgreSQL store).
    pub forwarding: bool,
    pub stats: BusStats,
    connected: AtomicBool,
    subscribed: AtomicBool,
    /// Counts connections to NATS (the consumer is made again after each).
    connections: watch::Sender<u64>,
    tx: mpsc::Sender<Arc<EventRecord>>,
    full: Mutex<Throttle>,
    url: String,
}

impl Bus {
    /// Queues a stored event for publishing; never waits.
    pub fn publish(&self, e: &Arc<EventRecord>) {
        if self.tx.try_send(e.clone()).is_err() {
            self.stats.not_published.fetch_add(1, Ordering::Relaxed);
            if let Some(more) = throttled(&self.full) {
                tracing::warn!(url = %self.url, id = e.id, suppressed = more, "NATS publish queue full; event stored but not published");
            }
        }
    }

    /// Connected to NATS now.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Receiving other managers' events now.
    pub fn subscribed(&self) -> bool {
        self.subscribed.load(Ordering::Relaxed)
    }

    /// The state for the health check.
    pub fn status(&self) -> Value {
        serde_json::json!({
            "instance": self.instance,
            "cluster": self.cluster,
            "stream": STREAM,
            "connected": self.connected(),
            "forwarding": self.forwarding,
            "subscribed": self.subscribed(),
            "published": self.stats.published.load(Ordering::Relaxed),
            "not_published": self.stats.not_published.load(Ordering::Relaxed),
            "forwarded": self.stats.forwarded.load(Ordering::Relaxed),
            "rejected": self.stats.rejected.load(Ordering::Relaxed),
            "foreign": self.stats.foreign.load(Ordering::Relaxed),
        })
    }
}

/// Attaches the bus to the hub, unless one is attached: connects to NATS (in the
/// background, reconnecting for as long as it runs), ensures the stream, and
/// publishes the hub's stored events; with `forwarding`, also hands the events of
/// other managers of the `cluster` to the hub's live subscribers. Ends when
/// `shutdown` turns true.
pub fn attach(
    hub: &Arc<EventHub>,
    url: &str,
    cluster: String,
    forwarding: bool,
    shutdown: watch::Receiver<bool>,
) -> Result<(), String> {
    check_url(url)?;
    if hub.bus.get().is_some() {
        return Ok(());
    }
    let (tx, rx) = mpsc::channel(QUEUE);
    let bus = Arc::new(Bus {
        instance: uuid::Uuid::new_v4().simple().to_string(),
        cluster,
        forwarding,
        stats: BusStats::default(),
        connected: AtomicBool::new(false),
        subscribed: AtomicBool::new(false),
        connections: watch::channel(0).0,
        tx,
        full: Mutex::new(Throttle::new()),
        url: redact_url(url),
    });
    if hub.bus.set(bus.clone()).is_err() {
        return Ok(());
    }
    let started = now_ms();
    let url = url.to_string();
    let hub = hub.clone();
    let b = bus.clone();
    tokio::spawn(async move {
        let client = match connect(&url, &b).await {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(url = %b.url, error = %e, "cannot use NATS; events are not published");
                return;
            }
        };
        let js = jetstream::new(client.clone());
        tokio::spawn(publish_loop(
            client.clone(),
            js.clone(),
            b.clone(),
            rx,
            shutdown.clone(),
        ));
        ensure_loop(&js, &b, shutdown.clone()).await;
        if b.forwarding {
            forward_loop(js, hub, b, started, shutdown).await;
        }
    });
    Ok(())
}

async fn connect(
    url: &str,
    bus: &Arc<Bus>,
) -> Result<async_nats::Client, async_nats::ConnectError> {
    let b = bus.clone();
    let errors = Arc::new(Mutex::new(Throttle::new()));
    async_nats::ConnectOptions::new()
        .name("fleetgate-manager")
        .connection_timeout(Duration::from_secs(5))
        .retry_on_initial_connect()
        .event_callback(move |event| {
            let b = b.clone();
            let errors = errors.clone();
            async move {
                match event {
                    async_nats::Event::Connected => {
                        b.connected.store(true, Ordering::Relaxed);
                        b.connections.send_modify(|n| *n += 1);
                        tracing::info!(url = %b.url, "connected to NATS");
                    }
                    async_nats::Event::Disconnected => {
                        b.connected.store(false, Ordering::Relaxed);
                        b.subscribed.store(false, Ordering::Relaxed);
                        tracing::warn!(url = %b.url, "lost the connection to NATS; reconnecting (events are still stored and streamed here)");
                    }
                    async_nats::Event::Closed => {
                        b.connected.store(false, Ordering::Relaxed);
                    }
                    other => {
                        if let Some(more) = throttled(&errors) {
                            tracing::warn!(url = %b.url, event = %other, suppressed = more, "NATS");
                        }
                    }
                }
            }
        })
        .connect(url)
        .await
}

/// Resolves once `shutdown` is true (holding no borrow of it across awaits).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|d| *d).await;
}

fn stream_config() -> jetstream::stream::Config {
    jetstream::stream::Config {
        name: STREAM.into(),
        description: Some("Fleetgate events, published by every manager".into()),
        subjects: vec![SUBJECTS.into()],
        max_age: MAX_AGE,
        max_messages: MAX_MESSAGES,
        max_bytes: MAX_BYTES,
        ..Default::default()
    }
}

/// Creates the stream unless it exists. A stream made elsewhere is used as it is.
async fn ensure_stream(js: &jetstream::Context) -> Result<(), String> {
    let mut stream = js
        .get_or_create_stream(stream_config())
        .await
        .map_err(|e| e.to_string())?;
    let info = stream.info().await.map_err(|e| e.to_string())?;
    if !info.config.subjects.iter().any(|s| s == SUBJECTS) {
        tracing::warn!(
            stream = STREAM,
            subjects = ?info.config.subjects,
            "the existing JetStream stream does not take {SUBJECTS}; events may not be stored in it"
        );
    }
    Ok(())
}

/// Tries to ensure the stream until it succeeds or the manager stops.
async fn ensure_loop(js: &jetstream::Context, bus: &Bus, mut shutdown: watch::Receiver<bool>) {
    let mut log = Throttle::new();
    let mut wait = Duration::from_millis(500);
    loop {
        match ensure_stream(js).await {
            Ok(()) => return,
            Err(e) => {
                if let Some(more) = log.check(Instant::now()) {
                    tracing::warn!(url = %bus.url, stream = STREAM, error = %e, suppressed = more, "cannot create the JetStream stream; retrying");
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stopped(&mut shutdown) => return,
        }
        wait = (wait * 2).min(Duration::from_secs(10));
    }
}

type AckFuture = std::pin::Pin<
    Box<
        dyn std::future::Future<
                Output = Result<jetstream::publish::PublishAck, jetstream::context::PublishError>,
            > + Send,
    >,
>;

/// Publishes queued events, several awaiting their acknowledgement at once.
async fn publish_loop(
    client: async_nats::Client,
    js: jetstream::Context,
    bus: Arc<Bus>,
    mut rx: mpsc::Receiver<Arc<EventRecord>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut acks: FuturesUnordered<AckFuture> = FuturesUnordered::new();
    let mut log = Throttle::new();
    let mut last_ensure: Option<Instant> = None;
    let mut stopping = false;
    loop {
        let next = tokio::select! {
            Some(ack) = acks.next(), if !acks.is_empty() => {
                match ack {
                    Ok(_) => {
                        bus.stats.published.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        bus.stats.not_published.fetch_add(1, Ordering::Relaxed);
                        if let Some(more) = log.check(Instant::now()) {
                            tracing::warn!(url = %bus.url, error = %e, suppressed = more, "an event was not acknowledged by JetStream; it is stored but other managers may not see it");
                        }
                        let missing = e.kind() == jetstream::context::PublishErrorKind::StreamNotFound;
                        if missing && last_ensure.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                            last_ensure = Some(Instant::now());
                            if let Err(e) = ensure_stream(&js).await {
                                tracing::warn!(stream = STREAM, error = %e, "cannot create the JetStream stream");
                            }
                        }
                    }
                }
                continue;
            }
            e = rx.recv(), if acks.len() < IN_FLIGHT => e,
            _ = stopped(&mut shutdown), if !stopping => {
                stopping = true;
                continue;
            }
            // Stopping: the writer stores and hands over its last events; once
            // none came for a moment, stop.
            _ = tokio::time::sleep(Duration::from_millis(500)), if stopping => break,
        };
        let Some(e) = next else { break };
        if client.connection_state() != async_nats::connection::State::Connected {
            bus.stats.not_published.fetch_add(1, Ordering::Relaxed);
            if let Some(more) = log.check(Instant::now()) {
                tracing::warn!(url = %bus.url, id = e.id, suppressed = more, "NATS is not connected; event stored but not published");
            }
        } else {
            match publish_one(&js, &bus, &e).await {
                Ok(ack) => acks.push(ack),
                Err(err) => {
                    bus.stats.not_published.fetch_add(1, Ordering::Relaxed);
                    if let Some(more) = log.check(Instant::now()) {
                        tracing::warn!(url = %bus.url, id = e.id, error = %err, suppressed = more, "cannot publish an event on NATS; it is stored");
                    }
                }
            }
        }
    }
    // Wait briefly for the acknowledgements still due, then let the client go.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(ack) = acks.next().await {
            if ack.is_ok() {
                bus.stats.published.fetch_add(1, Ordering::Relaxed);
            }
        }
    })
    .await;
    let _ = tokio::time::timeout(Duration::from_secs(1), client.flush()).await;
}

async fn publish_one(
    js: &jetstream::Context,
    bus: &Bus,
    e: &EventRecord,
) -> Result<AckFuture, String> {
    let payload = serde_json::to_vec(&BusEvent::of(e, &bus.instance, &bus.cluster))
        .map_err(|e| e.to_string())?;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(ORIGIN_HEADER, bus.instance.as_str());
    headers.insert(CLUSTER_HEADER, bus.cluster.as_str());
    headers.insert(
        async_nats::header::NATS_MESSAGE_ID,
        format!("{}-{}", bus.instance, e.id).as_str(),
    );
    match tokio::time::timeout(
        SEND_TIMEOUT,
        js.publish_with_headers(subject(&e.event.category), headers, payload.into()),
    )
    .await
    {
        Ok(Ok(ack)) => Ok(std::future::IntoFuture::into_future(ack)),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("timed out after {} s", SEND_TIMEOUT.as_secs())),
    }
}

/// What a bus message is to this manager.
#[derive(Debug, PartialEq)]
enum Received {
    /// An event of another manager of its cluster: to forward.
    Event(Box<EventRecord>),
    /// One of its own events.
    Own,
    /// An event of another installation.
    Foreign,
}

fn received(
    payload: &[u8],
    headers: Option<&async_nats::HeaderMap>,
    bus: &Bus,
) -> Result<Received, String> {
    let header = |name: &str| {
        headers
            .and_then(|h| h.get(name))
            .map(|v| v.as_str().to_string())
    };
    if header(ORIGIN_HEADER).is_some_and(|o| o == bus.instance) {
        return Ok(Received::Own);
    }
    if header(CLUSTER_HEADER).is_some_and(|c| c != bus.cluster) {
        return Ok(Received::Foreign);
    }
    let e: BusEvent = serde_json::from_slice(payload).map_err(|e| format!("not an event: {e}"))?;
    if e.origin == bus.instance {
        Ok(Received::Own)
    } else if e.cluster != bus.cluster {
        Ok(Received::Foreign)
    } else {
        e.into_record().map(|r| Received::Event(Box::new(r)))
    }
}

/// Reads the stream with an ordered consumer and forwards other managers' events to
/// the hub's live subscribers. The consumer is made again, from where it stopped,
/// after an error and after every reconnection (a restarted server may have lost
/// it); when the stream was emptied meanwhile (a new server), from its end.
async fn forward_loop(
    js: jetstream::Context,
    hub: Arc<EventHub>,
    bus: Arc<Bus>,
    started_ms: i64,
    mut shutdown: watch::Receiver<bool>,
) {
    // From this manager's start: events published while the consumer was being
    // made are not missed.
    let start = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(started_ms) * 1_000_000)
        .unwrap_or_else(|_| time::OffsetDateTime::now_utc());
    let mut policy = DeliverPolicy::ByStartTime { start_time: start };
    let mut connections = bus.connections.subscribe();
    let mut log = Throttle::new();
    let mut bad = Throttle::new();
    loop {
        let generation = *connections.borrow_and_update();
        let made = async {
            let mut stream = js
                .get_or_create_stream(stream_config())
                .await
                .map_err(|e| e.to_string())?;
            if let DeliverPolicy::ByStartSequence { start_sequence } = policy {
                let last = stream
                    .info()
                    .await
                    .map_err(|e| e.to_string())?
                    .state
                    .last_sequence;
                if last + 1 < start_sequence {
                    // Fewer messages than were read: a new stream.
                    policy = DeliverPolicy::New;
                }
            }
            let consumer = stream
                .create_consumer(jetstream::consumer::pull::OrderedConfig {
                    filter_subject: SUBJECTS.into(),
                    deliver_policy: policy,
                    ..Default::default()
                })
                .await
                .map_err(|e| e.to_string())?;
            consumer.messages().await.map_err(|e| e.to_string())
        }
        .await;
        match made {
            Ok(mut messages) => {
                bus.subscribed.store(true, Ordering::Relaxed);
                tracing::info!(url = %bus.url, stream = STREAM, "receiving the events of other managers");
                loop {
                    let m = tokio::select! {
                        m = messages.next() => m,
                        changed = connections.changed() => {
                            if changed.is_err() || *connections.borrow_and_update() != generation {
                                tracing::debug!("reconnected to NATS; making the event consumer again");
                                break;
                            }
                            continue;
                        }
                        _ = stopped(&mut shutdown) => {
                            bus.subscribed.store(false, Ordering::Relaxed);
                            return;
                        }
                    };
                    match m {
                        Some(Ok(msg)) => {
                            if let Ok(info) = msg.info() {
                                policy = DeliverPolicy::ByStartSequence {
                                    start_sequence: info.stream_sequence + 1,
                                };
                            }
                            match received(&msg.payload, msg.headers.as_ref(), &bus) {
                                Ok(Received::Event(r)) => {
                                    bus.stats.forwarded.fetch_add(1, Ordering::Relaxed);
                                    hub.broadcast(Arc::new(*r));
                                }
                                Ok(Received::Own) => {}
                                Ok(Received::Foreign) => {
                                    bus.stats.foreign.fetch_add(1, Ordering::Relaxed);
                                }
                                Err(e) => {
                                    bus.stats.rejected.fetch_add(1, Ordering::Relaxed);
                                    if let Some(more) = bad.check(Instant::now()) {
                                        tracing::warn!(subject = %msg.subject, error = %e, suppressed = more, "ignored a message on the event stream");
                                    }
                                }
                            }
                        }
                        Some(Err(e)) => {
                            if let Some(more) = log.check(Instant::now()) {
                                tracing::warn!(url = %bus.url, error = %e, suppressed = more, "the event stream consumer failed; making a new one");
                            }
                            break;
                        }
                        None => break,
                    }
                }
                bus.subscribed.store(false, Ordering::Relaxed);
                continue_after(&mut shutdown, Duration::from_millis(100)).await;
            }
            Err(e) => {
                if let Some(more) = log.check(Instant::now()) {
                    tracing::warn!(url = %bus.url, stream = STREAM, error = %e, suppressed = more, "cannot read the event stream; retrying");
                }
                continue_after(&mut shutdown, Duration::from_secs(1)).await;
            }
        }
        if *shutdown.borrow() {
            return;
        }
    }
}

/// Waits `pause`, or until the manager stops.
async fn continue_after(shutdown: &mut watch::Receiver<bool>, pause: Duration) {
    tokio::select! {
        _ = tokio::time::sleep(pause) => {}
        _ = stopped(shutdown) => {}
    }
}

/// What a live stream sends for an event.
#[derive(Debug, Clone, PartialEq)]
pub enum Release {
    /// In id order: sent with its id as the SSE id.
    InOrder(Arc<EventRecord>),
    /// After an event with a higher id was sent: sent without an SSE id, so the
    /// client's resume point (`Last-Event-ID`) does not move back.
    Late(Arc<EventRecord>),
}

/// Ids a stream remembers, to recognise an event it already passed.
const SEEN: usize = 4096;
/// Events a stream holds back at most.
const HELD: usize = 1024;

/// Keeps the ids of one live stream increasing and free of repeats.
///
/// Events reach a manager in the order they were stored only when they all come
/// from this manager. With several managers on one store, ids are given out by
/// PostgreSQL across all of them, and an event of another manager can arrive after
/// a later one of this manager (its transaction committed later, or the bus took a
/// few milliseconds). So, with a `window`:
///
/// - an event whose id follows the last one passed goes out at once, as do the
///   events held back behind it;
/// - an event after a gap is held back until the gap fills or it has waited
///   `window` (ids also go missing for good: a rolled-back insert, an event not
///   published);
/// - an event whose id is below one already sent goes out as [`Release::Late`];
/// - an event already passed, or at or below the resume point, is dropped.
///
/// Without a window (one manager), events go out as they come. A resumed stream
/// reads the store first ([`StreamOrder::passed`]), so the client gets everything
/// stored after its `Last-Event-ID` that was committed by then, and later arrivals
/// live.
#[derive(Debug)]
pub struct StreamOrder {
    last: Option<i64>,
    floor: i64,
    seen: BTreeSet<i64>,
    held: BTreeMap<i64, (Instant, Arc<EventRecord>)>,
    window: Duration,
}

impl StreamOrder {
    /// A stream that resumes after `after` (or starts with the first event it gets).
    pub fn new(after: Option<i64>, window: Duration) -> Self {
        Self {
            last: after,
            floor: after.unwrap_or(0),
            seen: BTreeSet::new(),
            held: BTreeMap::new(),
            window,
        }
    }

    /// The highest id passed so far.
    pub fn last(&self) -> Option<i64> {
        self.last
    }

    /// Records an id as passed (sent, or read from the store while resuming).
    pub fn passed(&mut self, id: i64) {
        self.last = Some(self.last.map_or(id, |l| l.max(id)));
        self.remember(id);
    }

    fn remember(&mut self, id: i64) {
        self.seen.insert(id);
        while self.seen.len() > SEEN {
            if let Some(old) = self.seen.pop_first() {
                self.floor = self.floor.max(old);
            }
        }
    }

    /// Takes one live event; what may go out now is appended to `out`.
    pub fn push(&mut self, r: Arc<EventRecord>, now: Instant, out: &mut Vec<Release>) {
        let id = r.id;
        if id <= self.floor || self.seen.contains(&id) || self.held.contains_key(&id) {
            return;
        }
        match self.last {
            Some(last) if id <= last => {
                self.remember(id);
                out.push(Release::Late(r));
            }
            Some(last) if id > last + 1 && !self.window.is_zero() => {
                self.held.insert(id, (now, r));
                if self.held.len() > HELD {
                    self.release_first(out);
                }
            }
            _ => {
                self.passed(id);
                out.push(Release::InOrder(r));
            }
        }
        self.release_following(out);
    }

    /// Releases the events that have waited their window; call at
    /// [`StreamOrder::deadline`].
    pub fn release_due(&mut self, now: Instant, out: &mut Vec<Release>) {
        while self
            .held
            .first_key_value()
            .is_some_and(|(_, (at, _))| now.duration_since(*at) >= self.window)
        {
            self.release_first(out);
            self.release_following(out);
        }
    }

    /// When the first held event is due.
    pub fn deadline(&self) -> Option<Instant> {
        self.held
            .first_key_value()
            .map(|(_, (at, _))| *at + self.window)
    }

    fn release_first(&mut self, out: &mut Vec<Release>) {
        if let Some((id, (_, r))) = self.held.pop_first() {
            self.passed(id);
            out.push(Release::InOrder(r));
        }
    }

    fn release_following(&mut self, out: &mut Vec<Release>) {
        while let (Some(last), Some((&id, _))) = (self.last, self.held.first_key_value()) {
            if id != last + 1 {
                break;
            }
            self.release_first(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(id: i64) -> Arc<EventRecord> {
        Arc::new(EventRecord {
            id,
            event: NewEvent::new("config.changed", Severity::Info, format!("e{id}")),
            acknowledged_by: None,
            acknowledged_at: None,
        })
    }

    fn ids(out: &mut Vec<Release>) -> Vec<(i64, bool)> {
        out.drain(..)
            .map(|r| match r {
                Release::InOrder(r) => (r.id, true),
                Release::Late(r) => (r.id, false),
            })
            .collect()
    }

    #[test]
    fn subjects_are_valid_tokens() {
        assert_eq!(
            subject("circuit_breaker"),
            "fleetgate.events.circuit_breaker"
        );
        assert_eq!(subject("a b.c*>"), "fleetgate.events.a_b_c__");
        assert_eq!(subject(""), "fleetgate.events._");
        assert_eq!(subject("é"), "fleetgate.events._");
        assert_eq!(
            subject(&"x".repeat(100)).len(),
            "fleetgate.events.".len() + 64
        );
    }

    #[test]
    fn urls_are_checked() {
        assert!(check_url("nats://127.0.0.1:4222").is_ok());
        assert!(check_url("tls://nats.example.com").is_ok());
        let e = check_url("http://u:pw@127.0.0.1:4222").expect_err("scheme");
        assert!(!e.contains("pw"), "{e}");
        assert!(check_url("127.0.0.1:4222").is_err());
        assert!(check_url("nats://host:notaport").is_err());
    }

    #[test]
    fn bus_events_round_trip() {
        let mut r = (*ev(42)).clone();
        r.event.details = serde_json::json!({"revision": 3});
        r.event.route_id = Some("r1".into());
        r.event.created_at = 1_700_000_000_123;
        let wire = serde_json::to_string(&BusEvent::of(&r, "abc", "k1")).expect("json");
        let v: Value = serde_json::from_str(&wire).expect("json");
        assert_eq!(
            (v["id"].as_i64(), v["origin"].as_str(), v["type"].as_str()),
            (Some(42), Some("abc"), Some("config.changed"))
        );
        assert_eq!(
            (v["severity"].as_str(), v["cluster"].as_str()),
            (Some("info"), Some("k1"))
        );
        let back: BusEvent = serde_json::from_str(&wire).expect("parse");
        assert_eq!(back.into_record().expect("record"), r);
        let bad: BusEvent =
            serde_json::from_value(serde_json::json!({"id": 0, "origin": "o", "cluster": "k1", "type": "t", "severity": "info", "category": "t", "message": "", "source": "manager", "created_at": "2024-01-01T00:00:00Z"}))
                .expect("parse");
        assert!(bad.into_record().is_err());

        // What a manager makes of messages: its own, another installation's, a peer's.
        let (tx, _rx) = mpsc::channel(1);
        let bus = Bus {
            instance: "me".into(),
            cluster: "k1".into(),
            forwarding: true,
            stats: BusStats::default(),
            connected: AtomicBool::new(true),
            subscribed: AtomicBool::new(true),
            connections: watch::channel(0).0,
            tx,
            full: Mutex::new(Throttle::new()),
            url: String::new(),
        };
        let msg = |origin: &str, cluster: &str| {
            serde_json::to_vec(&BusEvent::of(&r, origin, cluster)).expect("json")
        };
        assert_eq!(received(&msg("me", "k1"), None, &bus), Ok(Received::Own));
        assert_eq!(received(&msg("b", "k2"), None, &bus), Ok(Received::Foreign));
        assert_eq!(
            received(&msg("b", "k1"), None, &bus),
            Ok(Received::Event(Box::new(r.clone())))
        );
        let mut h = async_nats::HeaderMap::new();
        h.insert(CLUSTER_HEADER, "k2");
        assert_eq!(received(b"not json", Some(&h), &bus), Ok(Received::Foreign));
        assert!(received(b"not json", None, &bus).is_err());
        let k = [7u8; 32];
        assert_eq!(cluster_id(Some(&k)), cluster_id(Some(&k)));
        assert_ne!(cluster_id(Some(&k)), cluster_id(Some(&[8u8; 32])));
        assert_ne!(cluster_id(None), cluster_id(None));
    }

    #[test]
    fn without_a_window_events_go_out_as_they_come() {
        let now = Instant::now();
        let mut o = StreamOrder::new(None, Duration::ZERO);
        let mut out = Vec::new();
        for id in [5, 9, 7, 9, 10] {
            o.push(ev(id), now, &mut out);
        }
        assert_eq!(
            ids(&mut out),
            vec![(5, true), (9, true), (7, false), (10, true)]
        );
        assert_eq!(o.deadline(), None);
    }

    #[test]
    fn gaps_are_held_until_filled_or_due() {
        let t0 = Instant::now();
        let w = Duration::from_millis(300);
        let mut o = StreamOrder::new(None, w);
        let mut out = Vec::new();
        o.push(ev(10), t0, &mut out);
        assert_eq!(ids(&mut out), vec![(10, true)]);
        // 12 and 13 wait for 11, which comes: all three go out in order.
        o.push(ev(12), t0, &mut out);
        o.push(ev(13), t0, &mut out);
        assert!(out.is_empty());
        assert_eq!(o.deadline(), Some(t0 + w));
        o.push(ev(11), t0, &mut out);
        assert_eq!(ids(&mut out), vec![(11, true), (12, true), (13, true)]);
        // 15 waits for 14, which never comes; 16 follows it at once.
        o.push(ev(15), t0, &mut out);
        o.push(ev(16), t0 + Duration::from_millis(100), &mut out);
        o.release_due(t0 + Duration::from_millis(299), &mut out);
        assert!(out.is_empty());
        o.release_due(t0 + w, &mut out);
        assert_eq!(ids(&mut out), vec![(15, true), (16, true)]);
        // 14 arrives after all: late, once; repeats are dropped.
        o.push(ev(14), t0 + w, &mut out);
        o.push(ev(14), t0 + w, &mut out);
        o.push(ev(16), t0 + w, &mut out);
        assert_eq!(ids(&mut out), vec![(14, false)]);
        assert_eq!(o.last(), Some(16));
    }

    #[test]
    fn a_resumed_stream_skips_what_it_read_and_what_came_before() {
        let t0 = Instant::now();
        let mut o = StreamOrder::new(Some(100), Duration::from_millis(300));
        let mut out = Vec::new();
        // Read from the store while resuming.
        for id in [101, 103] {
            o.passed(id);
        }
        // Live copies of what was read, and events before the resume point.
        for id in [90, 100, 101, 103] {
            o.push(ev(id), t0, &mut out);
        }
        assert!(out.is_empty());
        // 102 was not committed when the store was read: it comes late.
        o.push(ev(102), t0, &mut out);
        o.push(ev(104), t0, &mut out);
        assert_eq!(ids(&mut out), vec![(102, false), (104, true)]);
    }

    #[test]
    fn held_events_are_bounded() {
        let t0 = Instant::now();
        let mut o = StreamOrder::new(Some(0), Duration::from_secs(60));
        let mut out = Vec::new();
        for id in 0..(HELD as i64 + 10) {
            o.push(ev(2 + id * 2), t0, &mut out);
        }
        assert!(o.held.len() <= HELD);
        assert_eq!(out.len(), 10);
        // Remembered ids are bounded too.
        let mut o = StreamOrder::new(None, Duration::ZERO);
        for id in 1..=(SEEN as i64 * 2) {
            o.push(ev(id), t0, &mut out);
        }
        assert!(o.seen.len() <= SEEN);
        out.clear();
        o.push(ev(1), t0, &mut out);
        assert!(out.is_empty(), "forgotten ids below the floor are not sent");
    }
}
