//! The exporter: spans go into a bounded queue (never waited on: when it is
//! full the span is dropped and counted), and one background task sends them in
//! batches to an OTLP receiver, over OTLP/HTTP (`POST /v1/traces`,
//! `application/x-protobuf`, HTTP/1.1) or OTLP/gRPC
//! (`TraceService/Export` over HTTP/2, h2c or TLS). A failed batch is retried
//! with backoff while the queue keeps filling — and dropping — behind it, so a
//! receiver that is down costs a bounded amount of memory and never a request's
//! time. On shutdown what is queued is sent once more, within a deadline.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::otlp;
use super::span::Span;

/// How spans travel to the receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP/gRPC: `opentelemetry.proto.collector.trace.v1.TraceService/Export`.
    Grpc,
    /// OTLP/HTTP with protobuf bodies: `POST /v1/traces`.
    HttpProtobuf,
}

impl Protocol {
    /// `grpc` or `http/protobuf`, OpenTelemetry's own names.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "grpc" => Ok(Protocol::Grpc),
            "http/protobuf" => Ok(Protocol::HttpProtobuf),
            other => Err(format!(
                "must be \"grpc\" or \"http/protobuf\", got {other:?}"
            )),
        }
    }
}

/// The gRPC method of trace export.
const GRPC_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
/// Where OTLP/HTTP receivers take traces when the endpoint names no path.
const HTTP_PATH: &str = "/v1/traces";

/// Where and how spans are exported.
#[derive(Clone)]
pub struct ExporterConfig {
    /// `http://host:port` or `https://host:port`, with a path for OTLP/HTTP when
    /// the receiver does not take traces at `/v1/traces`.
    pub endpoint: String,
    pub protocol: Protocol,
    /// Sent with every export (an API key, a tenant); secrets: never logged.
    pub headers: Vec<(String, String)>,
    /// Extra certificates (PEM) trusted for an `https://` endpoint, beside the
    /// system's roots.
    pub ca_pem: Option<String>,
    /// Resource attributes: `service.name` and the like.
    pub resource: Vec<(&'static str, String)>,
    /// One export may take this long, connecting included.
    pub timeout: Duration,
    /// Spans waiting for export at most; more are dropped.
    pub queue_size: usize,
    /// Spans per export at most.
    pub batch_size: usize,
    /// A span waits at most this long before its batch goes.
    pub interval: Duration,
}

impl std::fmt::Debug for ExporterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExporterConfig")
            .field("endpoint", &self.endpoint)
            .field("protocol", &self.protocol)
            .field(
                "headers",
                &self.headers.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .field("ca_pem", &self.ca_pem.is_some())
            .field("resource", &self.resource)
            .field("timeout", &self.timeout)
            .field("queue_size", &self.queue_size)
            .field("batch_size", &self.batch_size)
            .field("interval", &self.interval)
            .finish()
    }
}

impl ExporterConfig {
    /// Defaults for everything but where spans go.
    pub fn new(endpoint: impl Into<String>, protocol: Protocol) -> Self {
        Self {
            endpoint: endpoint.into(),
            protocol,
            headers: Vec::new(),
            ca_pem: None,
            resource: vec![("service.name", "fleetgate".into())],
            timeout: Duration::from_secs(10),
            queue_size: 2048,
            batch_size: 512,
            interval: Duration::from_secs(2),
        }
    }
}

/// The receiver's address as the client needs it.
#[derive(Debug, Clone)]
struct Endpoint {
    tls: bool,
    host: String,
    port: u16,
    authority: HeaderValue,
    path: String,
}

/// Checks an endpoint URL for `protocol`; the error says what is wrong with it.
pub fn check_endpoint(url: &str, protocol: Protocol) -> Result<(), String> {
    parse_endpoint(url, protocol).map(|_| ())
}

fn parse_endpoint(url: &str, protocol: Protocol) -> Result<Endpoint, String> {
    let uri: Uri = url
        .parse()
        .map_err(|_| format!("must be an http:// or https:// URL, got {url:?}"))?;
    let tls = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err(format!("must be an http:// or https:// URL, got {url:?}")),
    };
    let authority = uri
        .authority()
        .ok_or_else(|| format!("must name a host, got {url:?}"))?;
    if authority.as_str().contains('@') {
        return Err("must not carry user information (send credentials as headers)".into());
    }
    let host = authority.host().trim_matches(['[', ']']).to_string();
    if host.is_empty() {
        return Err(format!("must name a host, got {url:?}"));
    }
    let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let given = uri.path_and_query().map_or("", |p| p.as_str());
    let path = match protocol {
        Protocol::Grpc if given.is_empty() || given == "/" => GRPC_PATH.to_string(),
        Protocol::Grpc => {
            return Err(format!(
                "takes no path with protocol grpc (the method is {GRPC_PATH}), got {given:?}"
            ))
        }
        Protocol::HttpProtobuf if given.is_empty() || given == "/" => HTTP_PATH.to_string(),
        Protocol::HttpProtobuf => given.to_string(),
    };
    Ok(Endpoint {
        tls,
        host,
        port,
        authority: HeaderValue::from_str(authority.as_str())
            .map_err(|_| format!("has an invalid host, got {url:?}"))?,
        path,
    })
}

/// Checks export headers: names and values HTTP can carry. The error names the
/// header, never its value.
pub fn check_headers(headers: &[(String, String)]) -> Result<HeaderMap, String> {
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        let name = HeaderName::from_bytes(k.trim().as_bytes())
            .map_err(|_| format!("{k:?} is not a valid header name"))?;
        if matches!(
            name.as_str(),
            "host" | "content-type" | "content-length" | "te" | "connection" | "transfer-encoding"
        ) || name.as_str().starts_with("grpc-")
        {
            return Err(format!("{name} is set by the exporter itself"));
        }
        let mut value = HeaderValue::from_str(v.trim())
            .map_err(|_| format!("the value of {name} is not a valid header value"))?;
        value.set_sensitive(true);
        map.append(name, value);
    }
    Ok(map)
}

/// The exporter's counters, as Prometheus shows them.
#[derive(Debug, Default)]
pub struct ExportStats {
    /// Spans the receiver accepted.
    pub exported: AtomicU64,
    /// Spans dropped because the queue was full.
    pub dropped: AtomicU64,
    /// Spans given up on: refused by the receiver, or not sent after every retry.
    pub failed: AtomicU64,
}

struct Shared {
    queue: mpsc::Sender<Span>,
    stats: ExportStats,
}

/// Where finished spans go: cheap to clone; [`Tracer::record`] never waits.
#[derive(Clone)]
pub struct Tracer {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Tracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tracer")
    }
}

/// The running export task; [`ExportTask::shutdown`] flushes and stops it.
pub struct ExportTask {
    stop: watch::Sender<bool>,
    join: tokio::task::JoinHandle<()>,
}

impl Tracer {
    /// Checks `config` and starts exporting on the current Tokio runtime.
    pub fn start(config: ExporterConfig) -> Result<(Tracer, ExportTask), String> {
        let endpoint = parse_endpoint(&config.endpoint, config.protocol)
            .map_err(|e| format!("endpoint {e}"))?;
        let headers = check_headers(&config.headers).map_err(|e| format!("headers: {e}"))?;
        let tls = if endpoint.tls {
            Some(tls_config(config.protocol, config.ca_pem.as_deref())?)
        } else {
            None
        };
        let (queue, rx) = mpsc::channel(config.queue_size.max(1));
        let shared = Arc::new(Shared {
            queue,
            stats: ExportStats::default(),
        });
        let (stop, stopped) = watch::channel(false);
        let client = Client {
            endpoint,
            protocol: config.protocol,
            headers,
            tls,
            timeout: config.timeout,
            conn: None,
        };
        let join = tokio::spawn(run(
            rx,
            stopped,
            client,
            config.resource.clone(),
            config.batch_size.max(1),
            config.interval,
            Arc::downgrade(&shared),
        ));
        Ok((Tracer { shared }, ExportTask { stop, join }))
    }

    /// Queues a finished span for export; when the queue is full it is dropped
    /// and counted.
    pub fn record(&self, span: Span) {
        if self.shared.queue.try_send(span).is_err() {
            self.shared.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn stats(&self) -> &ExportStats {
        &self.shared.stats
    }

    /// Prometheus lines of the exporter's counters.
    pub fn render_metrics(&self, out: &mut String) {
        use fleetgate_core::prom::{Encoder, Kind};
        let s = &self.shared.stats;
        let mut e = Encoder::new(out);
        for (name, help, v) in [
            (
                "fleetgate_otel_spans_exported_total",
                "Spans the OTLP receiver accepted.",
                &s.exported,
            ),
            (
                "fleetgate_otel_spans_dropped_total",
                "Spans dropped because the export queue was full.",
                &s.dropped,
            ),
            (
                "fleetgate_otel_spans_failed_total",
                "Spans the OTLP receiver refused or that could not be sent after every retry.",
                &s.failed,
            ),
        ] {
            e.family(name, help, Kind::Counter);
            e.sample(name, &[], v.load(Ordering::Relaxed));
        }
    }
}

impl ExportTask {
    /// Sends what is queued (once, no retries) and stops, within `deadline`.
    pub async fn shutdown(self, deadline: Duration) {
        let _ = self.stop.send(true);
        let mut join = self.join;
        if tokio::time::timeout(deadline, &mut join).await.is_err() {
            tracing::warn!("trace export did not finish in time; queued spans are lost");
            join.abort();
        }
    }
}

/// Retries of one batch after its first attempt.
const RETRIES: u32 = 5;
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(16);

async fn run(
    mut rx: mpsc::Receiver<Span>,
    mut stopped: watch::Receiver<bool>,
    mut client: Client,
    resource: Vec<(&'static str, String)>,
    batch_size: usize,
    interval: Duration,
    shared: std::sync::Weak<Shared>,
) {
    let mut batch: Vec<Span> = Vec::with_capacity(batch_size);
    let mut failing = false;
    loop {
        // Wait for a first span, then fill the batch until it is full or its
        // first span has waited `interval`.
        let mut stopping = false;
        tokio::select! {
            s = rx.recv() => match s {
                Some(s) => batch.push(s),
                None => stopping = true,
            },
            _ = stopped.wait_for(|s| *s) => stopping = true,
        }
        if !stopping {
            let deadline = Instant::now() + interval;
            while batch.len() < batch_size {
                tokio::select! {
                    s = rx.recv() => match s {
                        Some(s) => batch.push(s),
                        None => { stopping = true; break; }
                    },
                    () = tokio::time::sleep_until(deadline) => break,
                    _ = stopped.wait_for(|s| *s) => { stopping = true; break; }
                }
            }
        }
        if !batch.is_empty() {
            let body = otlp::encode_request(&resource, &batch);
            let n = batch.len() as u64;
            batch.clear();
            let retries = if stopping { 0 } else { RETRIES };
            let outcome = send_with_retries(&mut client, body, retries, &mut stopped).await;
            let Some(shared) = shared.upgrade() else {
                return;
            };
            let stats = &shared.stats;
            match outcome {
                Ok(rejected) => {
                    let rejected = rejected.min(n);
                    stats.exported.fetch_add(n - rejected, Ordering::Relaxed);
                    stats.failed.fetch_add(rejected, Ordering::Relaxed);
                    if failing {
                        tracing::info!("trace export works again");
                        failing = false;
                    }
                }
                Err(e) => {
                    stats.failed.fetch_add(n, Ordering::Relaxed);
                    if !failing {
                        tracing::warn!(error = %e, spans = n, "trace export failed; spans dropped");
                        failing = true;
                    }
                }
            }
        }
        if stopping {
            // Flush what is still queued, batch by batch, once each.
            let mut rest = Vec::new();
            while let Ok(s) = rx.try_recv() {
                rest.push(s);
            }
            for chunk in rest.chunks(batch_size) {
                let body = otlp::encode_request(&resource, chunk);
                let outcome = client.export(body).await;
                if let Some(shared) = shared.upgrade() {
                    let n = chunk.len() as u64;
                    match outcome {
                        Ok(r) => {
                            let r = r.min(n);
                            shared.stats.exported.fetch_add(n - r, Ordering::Relaxed);
                            shared.stats.failed.fetch_add(r, Ordering::Relaxed);
                        }
                        Err(_) => {
                            shared.stats.failed.fetch_add(n, Ordering::Relaxed);
                        }
                    }
                }
            }
            return;
        }
    }
}

/// One batch, tried again after retryable failures with growing delays (cut
/// short when the exporter stops). Returns the spans the receiver refused.
async fn send_with_retries(
    client: &mut Client,
    body: Vec<u8>,
    retries: u32,
    stopped: &mut watch::Receiver<bool>,
) -> Result<u64, ExportError> {
    let body = Bytes::from(body);
    let mut backoff = FIRST_BACKOFF;
    let mut attempt = 0;
    loop {
        match client.export(body.clone()).await {
            Ok(rejected) => return Ok(rejected),
            Err(e) if !e.retryable || attempt >= retries || *stopped.borrow() => return Err(e),
            Err(e) => {
                tracing::debug!(error = %e, attempt, "trace export failed; retrying");
                attempt += 1;
                let jitter = Duration::from_millis(u64::from(rand::random::<u16>()) % 250);
                tokio::select! {
                    () = tokio::time::sleep(backoff + jitter) => {}
                    _ = stopped.wait_for(|s| *s) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Why an export failed, and whether trying again may help.
#[derive(Debug)]
struct ExportError {
    retryable: bool,
    message: String,
}

impl std::fmt::Display for ExportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl ExportError {
    fn retry(message: impl Into<String>) -> Self {
        Self {
            retryable: true,
            message: message.into(),
        }
    }

    fn fatal(message: impl Into<String>) -> Self {
        Self {
            retryable: false,
            message: message.into(),
        }
    }
}

enum Conn {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

/// One connection to the receiver, made again after it fails.
struct Client {
    endpoint: Endpoint,
    protocol: Protocol,
    headers: HeaderMap,
    tls: Option<tokio_rustls::TlsConnector>,
    timeout: Duration,
    conn: Option<Conn>,
}

/// Largest answer read from a receiver.
const MAX_ANSWER: usize = 64 * 1024;

trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static> Io for T {}

impl Client {
    /// Sends one encoded `ExportTraceServiceRequest`; the connection is dropped
    /// after any failure so that the next attempt starts afresh.
    async fn export(&mut self, body: impl Into<Bytes>) -> Result<u64, ExportError> {
        let body = body.into();
        let out = match tokio::time::timeout(self.timeout, self.try_export(body)).await {
            Ok(r) => r,
            Err(_) => Err(ExportError::retry(format!(
                "no answer from the receiver within {} ms",
                self.timeout.as_millis()
            ))),
        };
        if out.is_err() {
            self.conn = None;
        }
        out
    }

    async fn connect(&self) -> Result<Conn, ExportError> {
        let e = &self.endpoint;
        let tcp = TcpStream::connect((e.host.as_str(), e.port))
            .await
            .map_err(|err| {
                ExportError::retry(format!("cannot connect to {}:{}: {err}", e.host, e.port))
            })?;
        let _ = tcp.set_nodelay(true);
        let io: Box<dyn Io> = match &self.tls {
            None => Box::new(tcp),
            Some(connector) => {
                let name = rustls::pki_types::ServerName::try_from(e.host.clone())
                    .map_err(|_| ExportError::fatal(format!("{:?} is not a TLS name", e.host)))?;
                Box::new(connector.connect(name, tcp).await.map_err(|err| {
                    ExportError::retry(format!("TLS with {}:{} failed: {err}", e.host, e.port))
                })?)
            }
        };
        let io = TokioIo::new(io);
        match self.protocol {
            Protocol::HttpProtobuf => {
                let (send, conn) = hyper::client::conn::http1::handshake(io)
                    .await
                    .map_err(|err| ExportError::retry(format!("HTTP/1.1 handshake: {err}")))?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                Ok(Conn::H1(send))
            }
            Protocol::Grpc => {
                let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                    .await
                    .map_err(|err| ExportError::retry(format!("HTTP/2 handshake: {err}")))?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                Ok(Conn::H2(send))
            }
        }
    }

    async fn try_export(&mut self, body: Bytes) -> Result<u64, ExportError> {
        let usable = match &mut self.conn {
            Some(Conn::H1(s)) => s.ready().await.is_ok(),
            Some(Conn::H2(s)) => s.ready().await.is_ok(),
            None => false,
        };
        if !usable {
            self.conn = Some(self.connect().await?);
        }
        let e = &self.endpoint;
        let scheme = if e.tls { "https" } else { "http" };
        let mut req = Request::builder().method(Method::POST);
        let (content_type, body) = match self.protocol {
            Protocol::HttpProtobuf => {
                req = req
                    .uri(&e.path)
                    .header(http::header::HOST, e.authority.clone());
                ("application/x-protobuf", body)
            }
            Protocol::Grpc => {
                req = req
                    .uri(format!(
                        "{scheme}://{}{}",
                        e.authority.to_str().unwrap_or(""),
                        e.path
                    ))
                    .header(http::header::TE, "trailers");
                // Length-prefixed message: not compressed, 4-byte big-endian length.
                let mut framed = Vec::with_capacity(5 + body.len());
                framed.push(0);
                framed.extend_from_slice(&(body.len() as u32).to_be_bytes());
                framed.extend_from_slice(&body);
                ("application/grpc", Bytes::from(framed))
            }
        };
        let mut req = req
            .header(http::header::CONTENT_TYPE, content_type)
            .body(Full::new(body))
            .map_err(|err| ExportError::fatal(format!("cannot build the request: {err}")))?;
        for (k, v) in &self.headers {
            req.headers_mut().append(k, v.clone());
        }
        let resp = match &mut self.conn {
            Some(Conn::H1(s)) => s.send_request(req).await,
            Some(Conn::H2(s)) => s.send_request(req).await,
            None => return Err(ExportError::retry("no connection")),
        }
        .map_err(|err| ExportError::retry(format!("sending to the receiver failed: {err}")))?;
        let status = resp.status();
        let grpc_in_headers = grpc_status(resp.headers());
        let collected = Limited::new(resp.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|err| ExportError::retry(format!("reading the receiver's answer: {err}")))?;
        let trailers = collected.trailers().cloned();
        let mut answer = collected.to_bytes();
        match self.protocol {
            Protocol::HttpProtobuf => {
                if status.is_success() {
                    return Ok(otlp::decode_partial_success(&answer).0);
                }
                let message = format!("the receiver answered {status}");
                if matches!(
                    status,
                    StatusCode::TOO_MANY_REQUESTS
                        | StatusCode::BAD_GATEWAY
                        | StatusCode::SERVICE_UNAVAILABLE
                        | StatusCode::GATEWAY_TIMEOUT
                ) {
                    Err(ExportError::retry(message))
                } else {
                    Err(ExportError::fatal(message))
                }
            }
            Protocol::Grpc => {
                if status != StatusCode::OK {
                    return Err(ExportError::retry(format!(
                        "the receiver answered HTTP {status} to gRPC"
                    )));
                }
                let (code, message) = trailers
                    .as_ref()
                    .and_then(grpc_status)
                    .or(grpc_in_headers)
                    .ok_or_else(|| {
                        ExportError::retry("the receiver's answer has no grpc-status")
                    })?;
                if code != 0 {
                    let text = format!("the receiver answered grpc-status {code}: {message}");
                    // CANCELLED, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ABORTED,
                    // OUT_OF_RANGE, UNAVAILABLE and DATA_LOSS may pass.
                    return if matches!(code, 1 | 4 | 8 | 10 | 11 | 14 | 15) {
                        Err(ExportError::retry(text))
                    } else {
                        Err(ExportError::fatal(text))
                    };
                }
                if answer.len() >= 5 {
                    answer.advance(5);
                }
                Ok(otlp::decode_partial_success(&answer).0)
            }
        }
    }
}

/// `grpc-status` and `grpc-message` of a header block, when it has them.
fn grpc_status(h: &HeaderMap) -> Option<(u32, String)> {
    let code = h.get("grpc-status")?.to_str().ok()?.trim().parse().ok()?;
    let message = h
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .chars()
        .take(200)
        .collect();
    Some((code, message))
}

/// TLS to the receiver: the system's roots plus `ca_pem`, ALPN for the protocol.
fn tls_config(
    protocol: Protocol,
    ca_pem: Option<&str>,
) -> Result<tokio_rustls::TlsConnector, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if let Some(pem) = ca_pem {
        for der in
            fleetgate_core::tls::pem_certificates(pem).map_err(|e| format!("ca_cert: {e}"))?
        {
            roots
                .add(rustls::pki_types::CertificateDer::from(der))
                .map_err(|e| format!("ca_cert: {e}"))?;
        }
    }
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![match protocol {
        Protocol::Grpc => b"h2".to_vec(),
        Protocol::HttpProtobuf => b"http/1.1".to_vec(),
    }];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_checked_for_their_protocol() {
        let e = parse_endpoint("http://127.0.0.1:4318", Protocol::HttpProtobuf).expect("http");
        assert_eq!(
            (e.port, e.path.as_str(), e.tls),
            (4318, "/v1/traces", false)
        );
        let e = parse_endpoint(
            "https://otel.example/otlp/v1/traces",
            Protocol::HttpProtobuf,
        )
        .expect("custom path");
        assert_eq!(
            (e.port, e.path.as_str(), e.tls),
            (443, "/otlp/v1/traces", true)
        );
        let e = parse_endpoint("http://[::1]:4317", Protocol::Grpc).expect("grpc");
        assert_eq!((e.host.as_str(), e.path.as_str()), ("::1", GRPC_PATH));
        assert!(parse_endpoint("http://c:4317/v1/traces", Protocol::Grpc)
            .expect_err("path with grpc")
            .contains("no path"));
        assert!(parse_endpoint("ftp://c", Protocol::Grpc).is_err());
        assert!(parse_endpoint("c:4317", Protocol::Grpc).is_err());
        assert!(parse_endpoint("http://u:p@c:4318", Protocol::HttpProtobuf)
            .expect_err("credentials")
            .contains("user information"));
        assert_eq!(Protocol::parse("grpc"), Ok(Protocol::Grpc));
        assert!(Protocol::parse("http/json").is_err());
    }

    #[test]
    fn header_errors_never_quote_values() {
        let bad = check_headers(&[("authorization".into(), "Bearer s3\ncret".into())])
            .expect_err("newline in value");
        assert!(!bad.contains("s3"), "{bad}");
        assert!(check_headers(&[("bad name".into(), "x".into())]).is_err());
        assert!(check_headers(&[("content-type".into(), "x".into())]).is_err());
        let ok = check_headers(&[("x-api-key".into(), "k".into())]).expect("valid");
        assert!(ok.get("x-api-key").is_some_and(HeaderValue::is_sensitive));
        let dbg = format!(
            "{:?}",
            ExporterConfig {
                headers: vec![("x-api-key".into(), "s3cret".into())],
                ..ExporterConfig::new("http://c:4318", Protocol::HttpProtobuf)
            }
        );
        assert!(!dbg.contains("s3cret"), "{dbg}");
    }
}
