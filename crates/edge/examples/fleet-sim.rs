//! A fleet of simulated edges against one manager, for `bench/fleet.sh`.
//!
//! Creates `--sessions` nodes through the manager's API, then runs one WebSocket
//! session per node on a single-threaded runtime, each as a Fleetgate edge would:
//! registers with its token, sends `config_status`, answers every
//! `config_snapshot` (joined and checked with the protocol crate, the digest
//! compared with the digest of the configuration as parsed; a frame identical to
//! one already checked by another session is taken as checked unless
//! `--verify-each`) and every `config_delta` (applied to the configuration held and
//! checked against its digest; else `config_status` asks for the whole snapshot)
//! with `config_ack`,
//! sends `stats` every second (two flows) and `health` every 15 s. It then measures
//! the manager's CPU and memory over a steady window and times `--changes` route
//! creations from the API write to the last `config_ack` of the fleet.
//!
//! Prints one JSON object of results on stdout; progress goes to stderr.
//!
//! ```text
//! fleet-sim --api 127.0.0.1:8080 --token T --node 127.0.0.1:3443 --pid 1234 \
//!     --sessions 1000 [--steady 30] [--changes 5] [--connect-parallel 256] \
//!     [--create-parallel 8] [--upstream up] [--verify-each]
//! ```

use std::collections::HashMap;
use std::error::Error;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleetgate_edge::tls::{client_config, Trust};
use fleetgate_protocol::delta::{self, ConfigDelta};
use fleetgate_protocol::sync::{self, AppliedConfig, SnapshotAssembler};
use fleetgate_protocol::DataPlaneConfig;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::{watch, Semaphore};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

type BoxError = Box<dyn Error + Send + Sync>;
type Result<T, E = BoxError> = std::result::Result<T, E>;

const STATS_EVERY: Duration = Duration::from_secs(1);
const HEALTH_EVERY: Duration = Duration::from_secs(15);

#[derive(Debug, Clone)]
struct Options {
    api: String,
    token: String,
    node: String,
    pid: Option<u32>,
    sessions: usize,
    steady_secs: u64,
    changes: usize,
    connect_parallel: usize,
    create_parallel: usize,
    upstream: String,
    verify_each: bool,
}

fn options() -> Result<Options> {
    let mut o = Options {
        api: String::new(),
        token: String::new(),
        node: String::new(),
        pid: None,
        sessions: 100,
        steady_secs: 30,
        changes: 5,
        connect_parallel: 256,
        create_parallel: 8,
        upstream: "up".into(),
        verify_each: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--api" => o.api = value()?,
            "--token" => o.token = value()?,
            "--node" => o.node = value()?,
            "--pid" => o.pid = Some(value()?.parse()?),
            "--sessions" => o.sessions = value()?.parse()?,
            "--steady" => o.steady_secs = value()?.parse()?,
            "--changes" => o.changes = value()?.parse()?,
            "--connect-parallel" => o.connect_parallel = value()?.parse::<usize>()?.max(1),
            "--create-parallel" => o.create_parallel = value()?.parse::<usize>()?.max(1),
            "--upstream" => o.upstream = value()?,
            "--verify-each" => o.verify_each = true,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    if o.api.is_empty() || o.token.is_empty() || o.node.is_empty() {
        return Err("--api, --token and --node are required".into());
    }
    Ok(o)
}

fn log(msg: impl AsRef<str>) {
    eprintln!(
        "[fleet-sim {}] {}",
        fleetgate_core::time::rfc3339(fleetgate_core::time::now_ms()),
        msg.as_ref()
    );
}

/// A kept-alive HTTP/1.1 connection to the manager's API (JSON in, JSON out).
struct Api {
    addr: String,
    token: String,
    conn: Option<BufReader<TcpStream>>,
}

impl Api {
    fn new(addr: &str, token: &str) -> Self {
        Self {
            addr: addr.to_string(),
            token: token.to_string(),
            conn: None,
        }
    }

    /// One request; a kept-alive connection the manager closed meanwhile is
    /// replaced once.
    async fn call(&mut self, method: &str, path: &str, body: &Value) -> Result<Value> {
        let reused = self.conn.is_some();
        match self.try_call(method, path, body).await {
            Err(e) if reused && e.downcast_ref::<std::io::Error>().is_some() => {
                self.conn = None;
                self.try_call(method, path, body).await
            }
            other => other,
        }
    }

    async fn try_call(&mut self, method: &str, path: &str, body: &Value) -> Result<Value> {
        let body = body.to_string();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.addr,
            self.token,
            body.len()
        );
        let mut conn = match self.conn.take() {
            Some(c) => c,
            None => {
                let s = TcpStream::connect(&self.addr).await?;
                s.set_nodelay(true)?;
                BufReader::new(s)
            }
        };
        conn.get_mut().write_all(request.as_bytes()).await?;
        let mut line = String::new();
        if conn.read_line(&mut line).await? == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .ok_or("no HTTP status line")?
            .parse()?;
        let mut length = 0usize;
        let mut close = false;
        loop {
            line.clear();
            conn.read_line(&mut line).await?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let (name, value) = l.split_once(':').unwrap_or((l, ""));
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse()?;
            } else if name.eq_ignore_ascii_case("connection") {
                close = value.trim().eq_ignore_ascii_case("close");
            }
        }
        let mut buf = vec![0; length];
        conn.read_exact(&mut buf).await?;
        if !close {
            self.conn = Some(conn);
        }
        if !(200..300).contains(&status) {
            return Err(format!(
                "{method} {path}: {status} {}",
                String::from_utf8_lossy(&buf)
            )
            .into());
        }
        Ok(serde_json::from_slice(&buf).unwrap_or(Value::Null))
    }
}

/// Creates `n` nodes; their registration tokens, in order.
async fn create_nodes(o: &Options, n: usize) -> Result<Vec<String>> {
    let next = Arc::new(AtomicUsize::new(0));
    let tokens = Arc::new(Mutex::new(vec![String::new(); n]));
    let mut workers = Vec::new();
    for _ in 0..o.create_parallel.min(n.max(1)) {
        let (next, tokens) = (next.clone(), tokens.clone());
        let mut api = Api::new(&o.api, &o.token);
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok::<(), BoxError>(());
                }
                let created = api
                    .call(
                        "POST",
                        "/api/v1/nodes",
                        &json!({"name": format!("sim-{i:05}"), "token_ttl_secs": 86_400}),
                    )
                    .await?;
                let token = created["registration_token"]
                    .as_str()
                    .ok_or("no registration_token in the answer")?
                    .to_string();
                if let Ok(mut t) = tokens.lock() {
                    t[i] = token;
                }
            }
        }));
    }
    for w in workers {
        w.await??;
    }
    let tokens = tokens.lock().map(|t| t.clone()).unwrap_or_default();
    Ok(tokens)
}

/// When the acks of one revision came.
#[derive(Debug, Clone, Copy)]
struct Acks {
    count: usize,
    first: Instant,
    last: Instant,
}

/// What the sessions share with the main task.
struct Fleet {
    tls: tokio_rustls::TlsConnector,
    node_addr: String,
    connect: Semaphore,
    connected: AtomicUsize,
    /// Session setup times (TCP connect to `register_ack`), in ms.
    connect_ms: Mutex<Vec<f64>>,
    acks: Mutex<HashMap<u64, Acks>>,
    refused_snapshots: AtomicUsize,
    digest_mismatches: AtomicUsize,
    disconnects: AtomicUsize,
    /// The largest `config_snapshot` frame received, in bytes.
    snapshot_frame_bytes: AtomicUsize,
    /// The last single-frame snapshot or delta verified, what it leads to, and the
    /// configuration (a delta applies to it).
    verified: Mutex<Option<(String, AppliedConfig, Arc<DataPlaneConfig>)>>,
    /// Every session parses and checks every snapshot itself.
    verify_each: bool,
    stop: watch::Receiver<bool>,
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>;

async fn connect(fleet: &Fleet) -> Result<Ws> {
    let tcp = TcpStream::connect(&fleet.node_addr).await?;
    tcp.set_nodelay(true)?;
    let host = fleet
        .node_addr
        .rsplit_once(':')
        .map_or(fleet.node_addr.as_str(), |(h, _)| h)
        .to_string();
    let name = rustls::pki_types::ServerName::try_from(host)?;
    let tls = fleet.tls.connect(name, tcp).await?;
    // Small buffers: ten thousand sessions live in this process.
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_message_size(Some(8 << 20))
        .max_frame_size(Some(8 << 20));
    let url = format!("wss://{}/ws/node", fleet.node_addr);
    let (ws, _) = tokio_tungstenite::client_async_with_config(url, tls, Some(config)).await?;
    Ok(ws)
}

async fn next_text(ws: &mut Ws) -> Result<Option<String>> {
    loop {
        match ws.next().await {
            None | Some(Ok(Message::Close(_))) => return Ok(None),
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(Message::Text(t))) => return Ok(Some(t.to_string())),
            Some(Ok(_)) => {}
        }
    }
}

fn envelope(kind: &str, payload: &str) -> String {
    format!(
        r#"{{"type":"{kind}","timestamp":"{}","payload":{payload}}}"#,
        fleetgate_core::time::rfc3339(fleetgate_core::time::now_ms())
    )
}

/// A stats payload of an edge carrying two flows (an SRT input to an RTP and an
/// SRT output, and a UDP input to one RTP output), counters growing each second.
fn stats_payload(node: usize, tick: u64) -> String {
    let pkts = tick * 1_190;
    let bytes = pkts * 1_316;
    format!(
        r#"{{"flows":[{{"flow_id":"flow-{node}-a","flow_name":"Camera A","state":"running","input":{{"input_type":"srt","state":"connected","mode":"listener","local_addr":"0.0.0.0:9000","remote_addr":"198.51.100.7:40112","packets_received":{pkts},"bytes_received":{bytes},"bitrate_bps":12524000,"packets_lost":3,"packets_filtered":0,"packets_recovered_fec":0,"srt_stats":{{"rtt_ms":23.4,"send_rate_mbps":0.0,"recv_rate_mbps":12.5,"pkt_loss_total":3,"pkt_retransmit_total":5}}}},"outputs":[{{"output_id":"out-rtp","output_name":"Playout RTP","output_type":"rtp","state":"active","dest_addr":"239.1.1.1:5004","packets_sent":{pkts},"bytes_sent":{bytes},"bitrate_bps":12524000,"packets_dropped":0,"fec_packets_sent":0}},{{"output_id":"out-srt","output_name":"Backup SRT","output_type":"srt","state":"connected","mode":"caller","remote_addr":"203.0.113.9:9100","packets_sent":{pkts},"bytes_sent":{bytes},"bitrate_bps":12524000,"packets_dropped":0,"fec_packets_sent":0}}],"uptime_secs":{tick},"health":"healthy","iat":{{"min_us":2,"max_us":1810,"avg_us":840}},"pdv_jitter_us":310}},{{"flow_id":"flow-{node}-b","flow_name":"Studio feed","state":"running","input":{{"input_type":"udp","state":"receiving","bind_addr":"0.0.0.0:5000","packets_received":{pkts},"bytes_received":{bytes},"bitrate_bps":8000000,"packets_lost":0,"packets_filtered":12,"packets_recovered_fec":0}},"outputs":[{{"output_id":"out-b","output_name":"Encoder","output_type":"rtp","state":"active","dest_addr":"10.0.0.20:5004","packets_sent":{pkts},"bytes_sent":{bytes},"bitrate_bps":8000000,"packets_dropped":0,"fec_packets_sent":0}}],"uptime_secs":{tick},"health":"healthy"}}],"tunnels":[],"uptime_secs":{tick},"active_flows":2,"total_flows":2}}"#
    )
}

fn health_payload(tick: u64) -> String {
    format!(
        r#"{{"status":"ok","version":"{}","uptime_secs":{tick},"active_flows":2,"total_flows":2,"api_addr":"0.0.0.0:8080","monitor_addr":null}}"#,
        env!("CARGO_PKG_VERSION")
    )
}

/// One edge: registers, then serves until told to stop; reconnects with its
/// identity when the connection drops.
async fn edge(fleet: Arc<Fleet>, index: usize, token: String) {
    let mut identity: Option<(String, String)> = None;
    let mut stop = fleet.stop.clone();
    let mut applied = AppliedConfig::default();
    loop {
        let permit = fleet.connect.acquire().await;
        let started = Instant::now();
        let mut ws = match connect(&fleet).await {
            Ok(ws) => ws,
            Err(e) => {
                drop(permit);
                log(format!("session {index}: connect: {e}"));
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let auth = match &identity {
            Some((id, secret)) => {
                json!({"type": "auth", "payload": {"node_id": id, "node_secret": secret,
                        "software_version": env!("CARGO_PKG_VERSION"), "protocol_version": 1}})
            }
            None => json!({"type": "auth", "payload": {"registration_token": token,
                        "software_version": env!("CARGO_PKG_VERSION"), "protocol_version": 1}}),
        };
        if let Err(e) = ws.send(Message::Text(auth.to_string().into())).await {
            log(format!("session {index}: auth: {e}"));
            continue;
        }
        let reply = match next_text(&mut ws).await {
            Ok(Some(r)) => r,
            other => {
                log(format!("session {index}: no auth answer: {other:?}"));
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let reply: Value = serde_json::from_str(&reply).unwrap_or(Value::Null);
        match reply["type"].as_str() {
            Some("register_ack") => {
                let field = |k: &str| reply["payload"][k].as_str().unwrap_or_default().to_string();
                identity = Some((field("node_id"), field("node_secret")));
            }
            Some("auth_ok") => {}
            _ => {
                log(format!("session {index}: refused: {reply}"));
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        }
        drop(permit);
        if let Ok(mut c) = fleet.connect_ms.lock() {
            c.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        fleet.connected.fetch_add(1, Ordering::Relaxed);
        let ended = serve(&fleet, index, &mut ws, &mut applied, &mut stop).await;
        fleet.connected.fetch_sub(1, Ordering::Relaxed);
        let _ = ws.close(None).await;
        if ended {
            return;
        }
        fleet.disconnects.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The authenticated connection; `true` when told to stop, `false` when it broke.
async fn serve(
    fleet: &Fleet,
    index: usize,
    ws: &mut Ws,
    applied: &mut AppliedConfig,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    let status = serde_json::to_string(&*applied).unwrap_or_default();
    let mut tick = 0u64;
    for frame in [
        envelope(sync::CONFIG_STATUS, &status),
        envelope("health", &health_payload(tick)),
    ] {
        if ws.send(Message::Text(frame.into())).await.is_err() {
            return false;
        }
    }
    // Spread the fleet's stats over the second, as independent edges would.
    let offset = Duration::from_micros((index as u64).wrapping_mul(7_919) % 1_000_000);
    let mut stats = tokio::time::interval_at(tokio::time::Instant::now() + offset, STATS_EVERY);
    stats.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut health = tokio::time::interval_at(
        tokio::time::Instant::now() + HEALTH_EVERY + offset,
        HEALTH_EVERY,
    );
    let mut assembler = SnapshotAssembler::default();
    // The configuration `applied` names, which a config_delta applies to.
    let mut held: Option<Arc<DataPlaneConfig>> = None;
    loop {
        let text = tokio::select! {
            () = async { let _ = stop.wait_for(|s| *s).await; } => return true,
            _ = stats.tick() => {
                tick += 1;
                let frame = envelope("stats", &stats_payload(index, tick));
                if ws.send(Message::Text(frame.into())).await.is_err() {
                    return false;
                }
                continue;
            }
            _ = health.tick() => {
                let frame = envelope("health", &health_payload(tick));
                if ws.send(Message::Text(frame.into())).await.is_err() {
                    return false;
                }
                continue;
            }
            text = next_text(ws) => match text {
                Ok(Some(t)) => t,
                _ => return false,
            },
        };
        // A frame byte for byte like one another session verified gives the same
        // snapshot: unless --verify-each, its result is taken over, so that the
        // simulator's one core does not parse the same snapshot ten thousand times.
        let known = if fleet.verify_each {
            None
        } else {
            fleet.verified.lock().ok().and_then(|v| {
                v.as_ref()
                    .filter(|(frame, _, _)| *frame == text)
                    .map(|(_, a, c)| (a.clone(), c.clone()))
            })
        };
        let revision = if let Some((known, config)) = known {
            *applied = known;
            held = Some(config);
            applied.revision
        } else {
            let Ok(Value::Object(mut msg)) = serde_json::from_str::<Value>(&text) else {
                continue;
            };
            let kind = msg.get("type").and_then(Value::as_str).unwrap_or_default();
            if kind == delta::CONFIG_DELTA {
                let payload = msg.remove("payload").unwrap_or(Value::Null);
                match apply_delta(payload, applied, held.as_deref()) {
                    Ok((a, config)) => {
                        *applied = a;
                        held = Some(config.clone());
                        if let Ok(mut v) = fleet.verified.lock() {
                            *v = Some((text, applied.clone(), config));
                        }
                    }
                    Err(e) => {
                        // As an edge does: say what is held, and get the whole snapshot.
                        log(format!("session {index}: delta not applied: {e}"));
                        fleet.refused_snapshots.fetch_add(1, Ordering::Relaxed);
                        let status = serde_json::to_string(&*applied).unwrap_or_default();
                        let frame = envelope(sync::CONFIG_STATUS, &status);
                        if ws.send(Message::Text(frame.into())).await.is_err() {
                            return false;
                        }
                        continue;
                    }
                }
                let ack = envelope(
                    sync::CONFIG_ACK,
                    &serde_json::to_string(&*applied).unwrap_or_default(),
                );
                if ws.send(Message::Text(ack.into())).await.is_err() {
                    return false;
                }
                count_ack(fleet, applied.revision);
                continue;
            }
            if kind != sync::CONFIG_SNAPSHOT {
                continue;
            }
            fleet
                .snapshot_frame_bytes
                .fetch_max(text.len(), Ordering::Relaxed);
            let payload = msg.remove("payload").unwrap_or(Value::Null);
            let inline = payload.get("config").is_some();
            let snap = match assembler.accept(payload) {
                Ok(Some(s)) => s,
                Ok(None) => continue,
                Err(e) => {
                    log(format!("session {index}: snapshot refused: {e}"));
                    fleet.refused_snapshots.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            };
            // The digest is of the manager's JSON text; parsed and written again
            // the configuration must give the same text.
            let again = serde_json::to_string(&snap.config).unwrap_or_default();
            if sync::digest(&again) != snap.digest {
                fleet.digest_mismatches.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            *applied = AppliedConfig {
                revision: snap.revision,
                digest: Some(snap.digest),
            };
            let config = Arc::new(snap.config);
            held = Some(config.clone());
            if inline {
                if let Ok(mut v) = fleet.verified.lock() {
                    *v = Some((text, applied.clone(), config));
                }
            }
            applied.revision
        };
        let ack = envelope(
            sync::CONFIG_ACK,
            &serde_json::to_string(&*applied).unwrap_or_default(),
        );
        if ws.send(Message::Text(ack.into())).await.is_err() {
            return false;
        }
        count_ack(fleet, revision);
    }
}

/// Counts a `config_ack` of `revision`.
fn count_ack(fleet: &Fleet, revision: u64) {
    let now = Instant::now();
    if let Ok(mut acks) = fleet.acks.lock() {
        let a = acks.entry(revision).or_insert(Acks {
            count: 0,
            first: now,
            last: now,
        });
        a.count += 1;
        a.last = now;
    }
}

/// Applies a `config_delta` to the configuration held, as an edge does: only to
/// the snapshot it names as its base, and only if the result has its digest.
fn apply_delta(
    payload: Value,
    applied: &AppliedConfig,
    held: Option<&DataPlaneConfig>,
) -> Result<(AppliedConfig, Arc<DataPlaneConfig>)> {
    let d: ConfigDelta = serde_json::from_value(payload)?;
    let base = held
        .filter(|_| applied.digest.as_deref() == Some(d.base_digest.as_str()))
        .ok_or("it applies to another snapshot")?;
    let config = d.apply(base);
    if sync::digest(&serde_json::to_string(&config)?) != d.digest {
        return Err("the result does not have its digest".into());
    }
    Ok((
        AppliedConfig {
            revision: d.revision,
            digest: Some(d.digest),
        },
        Arc::new(config),
    ))
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which ends with the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Time the threads of a process spent runnable but waiting for a CPU, in ns
/// (the second field of /proc/<pid>/task/<tid>/schedstat, summed).
fn run_queue_wait_ns(pid: &str) -> Option<u64> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let Ok(task) = task else { continue };
        let Ok(stat) = std::fs::read_to_string(task.path().join("schedstat")) else {
            continue;
        };
        total += stat
            .split_whitespace()
            .nth(1)
            .and_then(|w| w.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Some(total)
}

/// A `kB` line of /proc/<pid>/status, in MiB.
fn status_mib(pid: &str, key: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Clock ticks per second of /proc/<pid>/stat (USER_HZ, 100 on Linux).
const TICKS_PER_SEC: f64 = 100.0;

/// CPU use of the manager and of this process over a window, in % of one core,
/// and how long the manager's threads waited for a CPU while runnable (behind
/// other processes or each other), in % of the window.
struct CpuWindow {
    pid: Option<String>,
    at: Instant,
    manager: Option<u64>,
    manager_wait: Option<u64>,
    me: Option<u64>,
}

impl CpuWindow {
    fn start(pid: Option<&String>) -> Self {
        Self {
            pid: pid.cloned(),
            at: Instant::now(),
            manager: pid.and_then(|p| cpu_ticks(p)),
            manager_wait: pid.and_then(|p| run_queue_wait_ns(p)),
            me: cpu_ticks("self"),
        }
    }

    /// (manager CPU, manager run-queue wait, simulator CPU)
    fn end(&self) -> (Option<f64>, Option<f64>, Option<f64>) {
        let secs = self.at.elapsed().as_secs_f64();
        let pct = |a: Option<u64>, b: Option<u64>| {
            Some((b?.saturating_sub(a?)) as f64 / TICKS_PER_SEC / secs * 100.0)
        };
        let pid = self.pid.as_deref();
        let wait = self
            .manager_wait
            .zip(pid.and_then(run_queue_wait_ns))
            .map(|(a, b)| b.saturating_sub(a) as f64 / 1e9 / secs * 100.0);
        (
            pct(self.manager, pid.and_then(cpu_ticks)),
            wait,
            pct(self.me, cpu_ticks("self")),
        )
    }
}

fn quantile(xs: &[f64], q: f64) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let k = ((v.len() - 1) as f64 * q).round() as usize;
    v[k.min(v.len() - 1)]
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn memory(pid: Option<&String>) -> Value {
    let Some(pid) = pid else { return Value::Null };
    json!({
        "rss_mib": status_mib(pid, "VmRSS:").map(round1),
        "hwm_mib": status_mib(pid, "VmHWM:").map(round1),
    })
}

/// Waits until `n` acks of a revision newer than `after` came; that revision.
async fn wait_acks(fleet: &Fleet, after: u64, n: usize, limit: Duration) -> Option<(u64, Acks)> {
    let deadline = Instant::now() + limit;
    loop {
        let done = fleet.acks.lock().ok().and_then(|a| {
            a.iter()
                .filter(|(r, x)| **r > after && x.count >= n)
                .max_by_key(|(r, _)| **r)
                .map(|(r, x)| (*r, *x))
        });
        if done.is_some() {
            return done;
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn latest_revision(fleet: &Fleet) -> u64 {
    fleet
        .acks
        .lock()
        .ok()
        .and_then(|a| a.keys().max().copied())
        .unwrap_or(0)
}

async fn run(o: Options) -> Result<Value> {
    let pid = o.pid.map(|p| p.to_string());
    let n = o.sessions;
    let mut out = json!({"sessions": n});

    log(format!("creating {n} nodes"));
    let t = Instant::now();
    let tokens = create_nodes(&o, n).await?;
    out["create_s"] = json!(round1(t.elapsed().as_secs_f64()));
    out["memory_idle"] = memory(pid.as_ref());

    let mut tls = (*client_config(&Trust::Insecure)?).clone();
    // Every edge's first connection is a full handshake.
    tls.resumption = rustls::client::Resumption::disabled();
    let (stop_tx, stop) = watch::channel(false);
    let fleet = Arc::new(Fleet {
        tls: tokio_rustls::TlsConnector::from(Arc::new(tls)),
        node_addr: o.node.clone(),
        connect: Semaphore::new(o.connect_parallel),
        connected: AtomicUsize::new(0),
        connect_ms: Mutex::new(Vec::with_capacity(n)),
        acks: Mutex::default(),
        refused_snapshots: AtomicUsize::new(0),
        digest_mismatches: AtomicUsize::new(0),
        disconnects: AtomicUsize::new(0),
        snapshot_frame_bytes: AtomicUsize::new(0),
        verified: Mutex::default(),
        verify_each: o.verify_each,
        stop,
    });

    log(format!("connecting {n} sessions"));
    let cpu = CpuWindow::start(pid.as_ref());
    let t = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for (i, token) in tokens.into_iter().enumerate() {
        tasks.push(tokio::spawn(edge(fleet.clone(), i, token)));
    }
    while fleet.connected.load(Ordering::Relaxed) < n {
        if t.elapsed() > Duration::from_secs(900) {
            return Err(format!(
                "only {} of {n} sessions connected in 900 s",
                fleet.connected.load(Ordering::Relaxed)
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let connect_s = t.elapsed().as_secs_f64();
    let synced = wait_acks(&fleet, 0, n, Duration::from_secs(300)).await;
    let synced_s = t.elapsed().as_secs_f64();
    let (m_cpu, m_wait, s_cpu) = cpu.end();
    let times = fleet
        .connect_ms
        .lock()
        .map(|c| c.clone())
        .unwrap_or_default();
    out["connect"] = json!({
        "all_connected_s": round1(connect_s),
        "all_synced_s": synced.map(|_| round1(synced_s)),
        "per_session_ms": {"p50": round1(quantile(&times, 0.5)), "p99": round1(quantile(&times, 0.99)), "max": round1(quantile(&times, 1.0))},
        "manager_cpu_pct": m_cpu.map(round1),
        "manager_wait_pct": m_wait.map(round1),
        "sim_cpu_pct": s_cpu.map(round1),
        "memory": memory(pid.as_ref()),
    });
    log(format!(
        "{n} connected in {connect_s:.1} s, all synced at {synced_s:.1} s"
    ));

    // Let the stats settle into their spread before measuring.
    tokio::time::sleep(Duration::from_secs(5)).await;
    log(format!("steady window of {} s", o.steady_secs));
    let cpu = CpuWindow::start(pid.as_ref());
    tokio::time::sleep(Duration::from_secs(o.steady_secs)).await;
    let (m_cpu, m_wait, s_cpu) = cpu.end();
    out["steady"] = json!({
        "secs": o.steady_secs,
        "manager_cpu_pct": m_cpu.map(round1),
        "manager_wait_pct": m_wait.map(round1),
        "sim_cpu_pct": s_cpu.map(round1),
        "memory": memory(pid.as_ref()),
    });

    let mut api = Api::new(&o.api, &o.token);
    let mut changes = Vec::new();
    let run_id = fleetgate_core::time::now_ms();
    for c in 0..o.changes {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let before = latest_revision(&fleet);
        let cpu = CpuWindow::start(pid.as_ref());
        let t0 = Instant::now();
        api.call(
            "POST",
            "/api/v1/routes",
            &json!({"id": format!("fleet-{run_id}-{c}"), "path": format!("/fleet-{run_id}-{c}"),
                    "upstream": o.upstream}),
        )
        .await?;
        let write_ms = t0.elapsed().as_secs_f64() * 1000.0;
        let done = wait_acks(&fleet, before, n, Duration::from_secs(60)).await;
        let (m_cpu, m_wait, s_cpu) = cpu.end();
        let entry = match done {
            Some((revision, a)) => {
                let first = a.first.duration_since(t0).as_secs_f64() * 1000.0;
                let last = a.last.duration_since(t0).as_secs_f64() * 1000.0;
                log(format!(
                    "change {c}: revision {revision}, write {write_ms:.1} ms, first ack {first:.1} ms, last ack {last:.1} ms"
                ));
                json!({"revision": revision, "write_ms": round1(write_ms), "first_ack_ms": round1(first),
                       "last_ack_ms": round1(last), "manager_cpu_pct": m_cpu.map(round1),
                       "manager_wait_pct": m_wait.map(round1),
                       "sim_cpu_pct": s_cpu.map(round1)})
            }
            None => {
                let got = fleet.acks.lock().ok().and_then(|a| {
                    a.iter()
                        .filter(|(r, _)| **r > before)
                        .map(|(_, x)| x.count)
                        .max()
                });
                log(format!(
                    "change {c}: not acked by all {n} within 60 s ({got:?})"
                ));
                json!({"write_ms": round1(write_ms), "last_ack_ms": null, "acked": got})
            }
        };
        changes.push(entry);
    }
    let lasts: Vec<f64> = changes
        .iter()
        .filter_map(|c| c["last_ack_ms"].as_f64())
        .collect();
    out["changes"] = json!({
        "each": changes,
        "last_ack_ms": {"p50": round1(quantile(&lasts, 0.5)), "max": round1(quantile(&lasts, 1.0))},
        "memory": memory(pid.as_ref()),
    });
    out["snapshot_frame_bytes"] = json!(fleet.snapshot_frame_bytes.load(Ordering::Relaxed));
    out["verify_each"] = json!(o.verify_each);
    out["refused_snapshots"] = json!(fleet.refused_snapshots.load(Ordering::Relaxed));
    out["digest_mismatches"] = json!(fleet.digest_mismatches.load(Ordering::Relaxed));
    out["disconnects"] = json!(fleet.disconnects.load(Ordering::Relaxed));

    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(20), async {
        for t in tasks {
            let _ = t.await;
        }
    })
    .await;
    Ok(out)
}

fn main() -> Result<()> {
    let o = options()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let out = rt.block_on(run(o))?;
    println!("{out}");
    Ok(())
}
