//! A real HTTP upstream for gateway tests, on its own port: it answers with what
//! it received, can be made slow, failing or unhealthy, echoes bytes after a
//! WebSocket upgrade, and can be stopped to simulate a dead target.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;

pub struct Upstream {
    pub addr: SocketAddr,
    /// Requests answered (health checks included).
    pub hits: Arc<AtomicU64>,
    /// Status every non-health request answers with (200 by default).
    pub status: Arc<AtomicU16>,
    /// Whether `/health` answers 200.
    pub healthy: Arc<AtomicBool>,
    /// Connections accepted.
    pub connections: Arc<AtomicU64>,
    /// `/sse` sends its first event, then waits for this before the second.
    pub release: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting and closes the listener: the target is now dead.
    pub fn kill(&self) {
        self.task.abort();
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn spawn(name: &str) -> Upstream {
    spawn_on(name, "127.0.0.1:0").await
}

/// Like [`spawn`], on a given address (to bring a target back on its old port).
pub async fn spawn_on(name: &str, addr: &str) -> Upstream {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .expect("bind upstream");
    let addr = listener.local_addr().expect("addr");
    let hits = Arc::new(AtomicU64::new(0));
    let status = Arc::new(AtomicU16::new(200));
    let healthy = Arc::new(AtomicBool::new(true));
    let (h, s, hl, n) = (
        hits.clone(),
        status.clone(),
        healthy.clone(),
        name.to_string(),
    );
    let connections = Arc::new(AtomicU64::new(0));
    let accepted = connections.clone();
    let release = Arc::new(tokio::sync::Notify::new());
    let gate = release.clone();
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            accepted.fetch_add(1, Ordering::Relaxed);
            let (h, s, hl, n) = (h.clone(), s.clone(), hl.clone(), n.clone());
            let gate = gate.clone();
            conns.spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (h, s, hl, n, gate) =
                        (h.clone(), s.clone(), hl.clone(), n.clone(), gate.clone());
                    async move {
                        if req.uri().path() == "/sse" {
                            return Ok::<_, Infallible>(event_stream(gate));
                        }
                        serve(req, h, s, hl, n).await.map(|r| r.map(|b| b.boxed()))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Upstream {
        addr,
        hits,
        status,
        healthy,
        connections,
        release,
        task,
    }
}

/// `text/event-stream` with one event now and one after `gate` is notified.
fn event_stream(gate: Arc<tokio::sync::Notify>) -> Response<BoxBody<Bytes, Infallible>> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    tokio::spawn(async move {
        let _ = tx.send(Bytes::from_static(b"data: first\n\n")).await;
        gate.notified().await;
        let _ = tx.send(Bytes::from_static(b"data: second\n\n")).await;
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(BoxBody::new(StreamBody::new(stream)))
        .expect("response")
}

async fn serve(
    mut req: Request<Incoming>,
    hits: Arc<AtomicU64>,
    status: Arc<AtomicU16>,
    healthy: Arc<AtomicBool>,
    name: String,
) -> Result<Response<Full<Bytes>>, Infallible> {
    hits.fetch_add(1, Ordering::Relaxed);
    let path = req.uri().path().to_string();
    if path == "/ws" {
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = on.await {
                let mut io = TokioIo::new(up);
                let (mut r, mut w) = tokio::io::split(&mut io);
                let _ = tokio::io::copy(&mut r, &mut w).await;
            }
        });
        let resp = Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("upgrade", "websocket")
            .header("connection", "upgrade")
            .body(Full::new(Bytes::new()))
            .expect("response");
        return Ok(resp);
    }
    if path == "/health" {
        let code = if healthy.load(Ordering::Relaxed) {
            200
        } else {
            503
        };
        return Ok(Response::builder()
            .status(code)
            .body(Full::new(Bytes::from_static(b"ok")))
            .expect("response"));
    }
    if let Some(ms) = path
        .strip_prefix("/slow/")
        .and_then(|v| v.parse::<u64>().ok())
    {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let headers: serde_json::Map<String, serde_json::Value> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), json!(v.to_str().unwrap_or(""))))
        .collect();
    let method = req.method().to_string();
    let uri = req.uri().to_string();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let code = status.load(Ordering::Relaxed);
    let out = json!({
        "server": name, "method": method, "uri": uri, "headers": headers,
        "body_len": body.len(),
    });
    Ok(Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .header("x-upstream", name)
        .header("connection", "keep-alive")
        .header("keep-alive", "timeout=5")
        .body(Full::new(Bytes::from(out.to_string())))
        .expect("response"))
}
