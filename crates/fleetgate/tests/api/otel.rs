//! OpenTelemetry traces end to end: a local OTLP receiver started by each test
//! (OTLP/HTTP with protobuf bodies, or OTLP/gRPC over h2c), decoded here with a
//! protobuf reader of the test's own, against the real gateway and manager.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};

use crate::support::{config_in, put_settings, spawn_with, unused_port, TestApp};
use crate::upstream;

/// What one export carried, as the receiver saw it.
#[derive(Debug, Clone)]
struct Export {
    path: String,
    content_type: String,
    api_key: Option<String>,
    spans: Vec<SpanSeen>,
}

#[derive(Debug, Clone, PartialEq)]
enum Attr {
    Str(String),
    Int(i64),
    Bool(bool),
}

#[derive(Debug, Clone)]
struct SpanSeen {
    scope: String,
    resource: HashMap<String, Attr>,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent_span_id: Vec<u8>,
    name: String,
    kind: u64,
    attrs: HashMap<String, Attr>,
    /// `Status.code`: 0 unset, 2 error.
    status: u64,
}

impl SpanSeen {
    fn str(&self, key: &str) -> Option<&str> {
        match self.attrs.get(key) {
            Some(Attr::Str(s)) => Some(s),
            _ => None,
        }
    }

    fn int(&self, key: &str) -> Option<i64> {
        match self.attrs.get(key) {
            Some(Attr::Int(i)) => Some(*i),
            _ => None,
        }
    }
}

/// One protobuf field: number, varint value (or 0) and bytes (or empty).
type Field = (u32, u64, Vec<u8>);

/// A protobuf message's fields, read by the wire format alone.
fn fields(buf: &[u8]) -> Vec<Field> {
    fn varint(buf: &[u8], pos: &mut usize) -> u64 {
        let mut v = 0u64;
        let mut shift = 0;
        loop {
            let b = buf[*pos];
            *pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return v;
            }
            shift += 7;
        }
    }
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        let key = varint(buf, &mut pos);
        let field = (key >> 3) as u32;
        match key & 7 {
            0 => out.push((field, varint(buf, &mut pos), Vec::new())),
            1 => {
                out.push((field, 0, buf[pos..pos + 8].to_vec()));
                pos += 8;
            }
            5 => {
                out.push((field, 0, buf[pos..pos + 4].to_vec()));
                pos += 4;
            }
            2 => {
                let len = varint(buf, &mut pos) as usize;
                out.push((field, 0, buf[pos..pos + len].to_vec()));
                pos += len;
            }
            w => panic!("unexpected wire type {w}"),
        }
    }
    out
}

fn each(buf: &[u8], n: u32) -> impl Iterator<Item = Field> {
    fields(buf).into_iter().filter(move |f| f.0 == n)
}

fn bytes_of(buf: &[u8], n: u32) -> Vec<u8> {
    each(buf, n).next().map(|f| f.2).unwrap_or_default()
}

fn key_values(buf: &[u8], n: u32) -> HashMap<String, Attr> {
    each(buf, n)
        .map(|kv| {
            let key = String::from_utf8(bytes_of(&kv.2, 1)).expect("utf-8 key");
            let any = bytes_of(&kv.2, 2);
            let value = match fields(&any).first() {
                Some((1, _, s)) => Attr::Str(String::from_utf8(s.clone()).expect("utf-8")),
                Some((2, v, _)) => Attr::Bool(*v != 0),
                Some((3, v, _)) => Attr::Int(*v as i64),
                other => panic!("unexpected AnyValue {other:?}"),
            };
            (key, value)
        })
        .collect()
}

/// The spans of an `ExportTraceServiceRequest`.
fn decode_request(body: &[u8]) -> Vec<SpanSeen> {
    let mut spans = Vec::new();
    for rs in each(body, 1) {
        let resource = key_values(&bytes_of(&rs.2, 1), 1);
        for ss in each(&rs.2, 2) {
            let scope = String::from_utf8(bytes_of(&bytes_of(&ss.2, 1), 1)).expect("scope");
            for sp in each(&ss.2, 2) {
                let s = &sp.2;
                spans.push(SpanSeen {
                    scope: scope.clone(),
                    resource: resource.clone(),
                    trace_id: bytes_of(s, 1),
                    span_id: bytes_of(s, 2),
                    parent_span_id: bytes_of(s, 4),
                    name: String::from_utf8(bytes_of(s, 5)).expect("name"),
                    kind: each(s, 6).next().map_or(0, |f| f.1),
                    attrs: key_values(s, 9),
                    status: each(&bytes_of(s, 15), 3).next().map_or(0, |f| f.1),
                });
            }
        }
    }
    spans
}

/// An OTLP receiver on loopback: HTTP/1.1 and h2c on one port (gRPC clients
/// speak HTTP/2 with prior knowledge).
struct Receiver {
    addr: SocketAddr,
    exports: Arc<Mutex<Vec<Export>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type ReplyBody =
    StreamBody<futures::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

async fn receive(req: Request<Incoming>, exports: Arc<Mutex<Vec<Export>>>) -> Response<ReplyBody> {
    let path = req.uri().path().to_string();
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let content_type = header("content-type").unwrap_or_default();
    let api_key = header("x-api-key");
    let body = req
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let grpc = content_type == "application/grpc";
    let message = if grpc {
        assert_eq!(body[0], 0, "uncompressed gRPC message");
        let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        assert_eq!(len, body.len() - 5, "gRPC length prefix");
        body.slice(5..)
    } else {
        body
    };
    exports.lock().expect("exports").push(Export {
        path,
        content_type: content_type.clone(),
        api_key,
        spans: decode_request(&message),
    });
    let frames: Vec<Result<Frame<Bytes>, Infallible>> = if grpc {
        // An empty ExportTraceServiceResponse, then grpc-status 0.
        let mut trailers = hyper::http::HeaderMap::new();
        trailers.insert("grpc-status", hyper::http::HeaderValue::from_static("0"));
        vec![
            Ok(Frame::data(Bytes::from_static(&[0, 0, 0, 0, 0]))),
            Ok(Frame::trailers(trailers)),
        ]
    } else {
        Vec::new()
    };
    Response::builder()
        .header(
            "content-type",
            if grpc {
                "application/grpc"
            } else {
                "application/x-protobuf"
            },
        )
        .body(StreamBody::new(futures::stream::iter(frames)))
        .expect("response")
}

impl Receiver {
    async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        let addr = listener.local_addr().expect("addr");
        let exports = Arc::new(Mutex::new(Vec::new()));
        let store = exports.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let store = store.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let store = store.clone();
                        async move { Ok::<_, Infallible>(receive(req, store).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Receiver {
            addr,
            exports,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn exports(&self) -> Vec<Export> {
        self.exports.lock().expect("exports").clone()
    }

    fn spans(&self, scope: &str) -> Vec<SpanSeen> {
        self.exports()
            .into_iter()
            .flat_map(|e| e.spans)
            .filter(|s| s.scope == scope)
            .collect()
    }

    /// Waits until a span of `scope` satisfies `want`.
    async fn wait_for(&self, scope: &str, want: impl Fn(&SpanSeen) -> bool) -> SpanSeen {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(s) = self.spans(scope).into_iter().find(|s| want(s)) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "no matching {scope} span; got {:#?}",
                self.spans(scope)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Fleetgate exporting to `endpoint` over `protocol`, batches sent every 100 ms.
async fn traced_app(endpoint: &str, protocol: &str) -> TestApp {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = config_in(dir.path());
    config.tracing.endpoint = Some(endpoint.to_string());
    config.tracing.protocol = protocol.into();
    config.tracing.interval_ms = 100;
    config.tracing.service_name = "fleetgate-test".into();
    config
        .tracing
        .headers
        .insert("x-api-key".into(), "k-123".into());
    spawn_with(config, dir).await
}

/// One upstream `svc` behind route `api` (`/api`).
async fn route_to(app: &TestApp, up: &upstream::Upstream) {
    app.post_ok(
        "/api/v1/upstreams",
        json!({"name": "svc", "targets": [{"url": up.url()}]}),
    )
    .await;
    app.post_ok(
        "/api/v1/routes",
        json!({"id": "api", "path": "/api", "upstream": "svc"}),
    )
    .await;
    app.settle().await;
}

fn client() -> Client {
    Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client")
}

/// The `traceparent` the upstream received (it echoes its request's headers).
fn upstream_traceparent(echo: &Value) -> Option<(String, String, String)> {
    let tp = echo["headers"]["traceparent"].as_str()?;
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "{tp}");
    assert_eq!(parts[0], "00", "{tp}");
    Some((parts[1].into(), parts[2].into(), parts[3].into()))
}

const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

#[tokio::test]
async fn a_proxied_request_is_one_span_over_otlp_http_and_its_upstream_gets_the_trace() {
    let receiver = Receiver::start().await;
    let app = traced_app(&receiver.url(), "http/protobuf").await;
    let up = upstream::spawn("one").await;
    route_to(&app, &up).await;

    let r = client()
        .get(app.gw("/api/items?secret=1"))
        .send()
        .await
        .expect("proxied");
    assert_eq!(r.status(), StatusCode::OK);
    let echo: Value = r.json().await.expect("echo");
    let (trace, parent, flags) = upstream_traceparent(&echo).expect("upstream got a traceparent");
    assert_eq!(flags, "01");

    let span = receiver
        .wait_for("fleetgate.gateway", |s| hex::encode(&s.trace_id) == trace)
        .await;
    assert_eq!(
        hex::encode(&span.span_id),
        parent,
        "the upstream's parent is the gateway span"
    );
    assert!(span.parent_span_id.is_empty(), "a new trace has no parent");
    assert_eq!(span.name, "GET api");
    assert_eq!(span.kind, 2, "SERVER");
    assert_eq!(span.status, 0);
    assert_eq!(span.str("http.request.method"), Some("GET"));
    assert_eq!(span.str("url.path"), Some("/api/items"));
    assert_eq!(span.str("url.scheme"), Some("http"));
    assert_eq!(span.int("http.response.status_code"), Some(200));
    assert_eq!(span.str("fleetgate.route"), Some("api"));
    assert_eq!(span.str("fleetgate.upstream"), Some("svc"));
    assert_eq!(span.str("fleetgate.target"), Some(up.url().as_str()));
    assert_eq!(span.int("fleetgate.attempts"), Some(1));
    assert_eq!(span.str("server.address"), Some("127.0.0.1"));
    assert!(
        span.attrs
            .values()
            .all(|v| *v != Attr::Str("secret=1".into())),
        "the query string is not recorded"
    );
    assert_eq!(
        span.resource.get("service.name"),
        Some(&Attr::Str("fleetgate-test".into()))
    );
    assert_eq!(
        span.resource.get("fleetgate.role"),
        Some(&Attr::Str("serve".into()))
    );
    let gateway_spans = receiver.spans("fleetgate.gateway");
    assert_eq!(
        gateway_spans.len(),
        1,
        "one span per request: {gateway_spans:#?}"
    );

    let exports = receiver.exports();
    assert!(exports.iter().all(|e| e.path == "/v1/traces"
        && e.content_type == "application/x-protobuf"
        && e.api_key.as_deref() == Some("k-123")));

    // A sampled caller's trace is continued: its trace id, its span as parent.
    let r = client()
        .get(app.gw("/api/continued"))
        .header("traceparent", format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01"))
        .header("tracestate", "congo=t61rcWkgMzE")
        .send()
        .await
        .expect("proxied");
    let echo: Value = r.json().await.expect("echo");
    let (trace, parent, _) = upstream_traceparent(&echo).expect("traceparent");
    assert_eq!(trace, CALLER_TRACE);
    assert_ne!(
        parent, CALLER_SPAN,
        "the upstream's parent is the gateway's span"
    );
    assert_eq!(echo["headers"]["tracestate"], "congo=t61rcWkgMzE");
    let span = receiver
        .wait_for("fleetgate.gateway", |s| {
            s.str("url.path") == Some("/api/continued")
        })
        .await;
    assert_eq!(hex::encode(&span.trace_id), CALLER_TRACE);
    assert_eq!(hex::encode(&span.parent_span_id), CALLER_SPAN);
    assert_eq!(hex::encode(&span.span_id), parent);

    // An invalid traceparent (upper-case hex) starts a new trace.
    let r = client()
        .get(app.gw("/api/invalid"))
        .header(
            "traceparent",
            format!("00-{}-{CALLER_SPAN}-01", CALLER_TRACE.to_uppercase()),
        )
        .header("tracestate", "congo=t61rcWkgMzE")
        .send()
        .await
        .expect("proxied");
    let echo: Value = r.json().await.expect("echo");
    let (trace, _, _) = upstream_traceparent(&echo).expect("traceparent");
    assert_ne!(trace, CALLER_TRACE);
    assert!(echo["headers"].get("tracestate").is_none(), "{echo}");

    // A failing upstream makes an error span.
    up.status.store(503, std::sync::atomic::Ordering::Relaxed);
    let r = client()
        .get(app.gw("/api/broken"))
        .send()
        .await
        .expect("proxied");
    let answered = i64::from(r.status().as_u16());
    assert!(r.status().is_server_error(), "{}", r.status());
    let span = receiver
        .wait_for("fleetgate.gateway", |s| {
            s.str("url.path") == Some("/api/broken")
        })
        .await;
    assert_eq!(span.status, 2, "ERROR");
    assert_eq!(span.int("http.response.status_code"), Some(answered));

    // The manager's API requests are spans too, named by route template, with
    // the actor and never a token.
    let r = app
        .admin(Method::GET, "/api/v1/routes/api")
        .send()
        .await
        .expect("get route");
    assert_eq!(r.status(), StatusCode::OK);
    let api = receiver
        .wait_for("fleetgate.manager", |s| s.name == "GET /api/v1/routes/{id}")
        .await;
    assert_eq!(api.kind, 2);
    assert_eq!(api.str("http.route"), Some("/api/v1/routes/{id}"));
    assert_eq!(api.str("url.path"), Some("/api/v1/routes/api"));
    assert_eq!(api.int("http.response.status_code"), Some(200));
    assert!(
        api.str("enduser.id").is_some_and(|a| !a.is_empty()),
        "{api:?}"
    );
    let all = format!("{:?}", receiver.exports());
    assert!(
        !all.contains(crate::support::TOKEN),
        "a token reached the receiver"
    );

    // The exporter's counters are in the Prometheus metrics.
    let text = app
        .admin(Method::GET, "/metrics")
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let exported = text
        .lines()
        .find_map(|l| l.strip_prefix("fleetgate_otel_spans_exported_total "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .expect("exported counter");
    assert!(exported >= 5, "{exported}");
    assert!(
        text.contains("fleetgate_otel_spans_dropped_total 0"),
        "{text}"
    );
    app.stop().await;
}

#[tokio::test]
async fn spans_go_over_otlp_grpc_and_are_flushed_when_fleetgate_stops() {
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = config_in(dir.path());
    config.tracing.endpoint = Some(receiver.url());
    config.tracing.protocol = "grpc".into();
    // Nothing is sent before the stop but what fills a batch.
    config.tracing.interval_ms = 60_000;
    let app = spawn_with(config, dir).await;
    let up = upstream::spawn("one").await;
    route_to(&app, &up).await;
    let r = client()
        .get(app.gw("/api/grpc"))
        .send()
        .await
        .expect("proxied");
    assert_eq!(r.status(), StatusCode::OK);
    let echo: Value = r.json().await.expect("echo");
    let (trace, parent, _) = upstream_traceparent(&echo).expect("traceparent");
    app.stop().await;

    let exports = receiver.exports();
    assert!(!exports.is_empty(), "the queue was flushed at shutdown");
    assert!(exports.iter().all(|e| e.path
        == "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
        && e.content_type == "application/grpc"));
    let spans = receiver.spans("fleetgate.gateway");
    assert_eq!(spans.len(), 1, "{spans:#?}");
    assert_eq!(hex::encode(&spans[0].trace_id), trace);
    assert_eq!(hex::encode(&spans[0].span_id), parent);
    assert_eq!(spans[0].str("fleetgate.route"), Some("api"));
    assert!(
        receiver
            .spans("fleetgate.manager")
            .iter()
            .any(|s| s.name == "POST /api/v1/routes"),
        "the manager's spans went the same way"
    );
}

#[tokio::test]
async fn the_sample_ratio_applies_from_the_next_revision_and_zero_sends_nothing() {
    let receiver = Receiver::start().await;
    let app = traced_app(&receiver.url(), "http/protobuf").await;
    let up = upstream::spawn("one").await;
    route_to(&app, &up).await;

    // Refused naming the field.
    let r = app
        .admin(Method::PUT, "/api/v1/settings")
        .json(&json!({"tracing": {"sample_ratio": 1.5}}))
        .send()
        .await
        .expect("settings");
    let body = crate::support::expect_error(r, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await;
    assert!(body.to_string().contains("tracing.sample_ratio"), "{body}");

    put_settings(&app, json!({"tracing": {"sample_ratio": 0.0}})).await;
    app.settle().await;
    let settings = app.get_json("/api/v1/settings").await;
    assert_eq!(settings["tracing"]["sample_ratio"], 0.0, "{settings}");
    for i in 0..20 {
        let r = client()
            .get(app.gw(&format!("/api/unsampled/{i}")))
            .send()
            .await
            .expect("proxied");
        let echo: Value = r.json().await.expect("echo");
        assert!(echo["headers"].get("traceparent").is_none(), "{echo}");
    }
    // A caller that sampled its trace is still followed (parent-based)...
    let r = client()
        .get(app.gw("/api/parent"))
        .header("traceparent", format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01"))
        .send()
        .await
        .expect("proxied");
    let echo: Value = r.json().await.expect("echo");
    assert_eq!(
        upstream_traceparent(&echo).expect("traceparent").0,
        CALLER_TRACE
    );
    receiver
        .wait_for("fleetgate.gateway", |s| {
            s.str("url.path") == Some("/api/parent")
        })
        .await;
    // ...and one that did not passes through untouched.
    let unsampled = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-00");
    let r = client()
        .get(app.gw("/api/parent-unsampled"))
        .header("traceparent", &unsampled)
        .send()
        .await
        .expect("proxied");
    let echo: Value = r.json().await.expect("echo");
    assert_eq!(echo["headers"]["traceparent"], unsampled.as_str());
    // Nothing else was recorded by the gateway.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let paths: Vec<_> = receiver
        .spans("fleetgate.gateway")
        .iter()
        .filter_map(|s| s.str("url.path").map(str::to_string))
        .collect();
    assert_eq!(paths, ["/api/parent"]);

    // Without parent_based the caller's flag no longer decides.
    put_settings(
        &app,
        json!({"tracing": {"sample_ratio": 0.0, "parent_based": false}}),
    )
    .await;
    app.settle().await;
    let r = client()
        .get(app.gw("/api/ignored-parent"))
        .header("traceparent", format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01"))
        .send()
        .await
        .expect("proxied");
    let echo: Value = r.json().await.expect("echo");
    assert_eq!(
        echo["headers"]["traceparent"],
        format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01").as_str(),
        "passed through, not ours"
    );

    // Back to 1: every request is traced again, without a restart.
    put_settings(&app, json!({"tracing": {"sample_ratio": 1.0}})).await;
    app.settle().await;
    let r = client()
        .get(app.gw("/api/again"))
        .send()
        .await
        .expect("proxied");
    let echo: Value = r.json().await.expect("echo");
    assert!(upstream_traceparent(&echo).is_some());
    receiver
        .wait_for("fleetgate.gateway", |s| {
            s.str("url.path") == Some("/api/again")
        })
        .await;
    app.stop().await;
}

#[tokio::test]
async fn a_receiver_that_is_down_neither_fails_nor_holds_requests() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = config_in(dir.path());
    config.tracing.endpoint = Some(format!("http://127.0.0.1:{}", unused_port()));
    config.tracing.interval_ms = 100;
    // A small queue: the exporter retries its first batch while requests go on.
    config.tracing.queue_size = 4;
    config.tracing.batch_size = 2;
    let app = spawn_with(config, dir).await;
    let up = upstream::spawn("one").await;
    route_to(&app, &up).await;
    for i in 0..50 {
        let started = Instant::now();
        let r = client()
            .get(app.gw(&format!("/api/down/{i}")))
            .send()
            .await
            .expect("proxied");
        assert_eq!(r.status(), StatusCode::OK);
        let echo: Value = r.json().await.expect("echo");
        assert!(upstream_traceparent(&echo).is_some());
        // The export timeout is 10 s: a request that waited on the exporter
        // would take that long.
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "request {i} was held"
        );
    }
    let text = app
        .admin(Method::GET, "/metrics")
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let dropped = text
        .lines()
        .find_map(|l| l.strip_prefix("fleetgate_otel_spans_dropped_total "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .expect("dropped counter");
    assert!(
        dropped > 0,
        "a full queue drops spans and counts them: {text}"
    );
    assert!(
        text.contains("fleetgate_otel_spans_exported_total 0"),
        "{text}"
    );
    app.stop().await;
}
