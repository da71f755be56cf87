//! A fake AI provider on 127.0.0.1, port 0, that answers the three formats
//! Fleetgate speaks, whole and streamed (SSE):
//!
//! - OpenAI: `POST /v1/chat/completions`, `GET /v1/models` (bearer key);
//! - Anthropic: `POST /v1/messages`, `GET /v1/models` with `anthropic-version`
//!   (`x-api-key`);
//! - Gemini: `POST /v1beta/models/{model}:generateContent` and
//!   `:streamGenerateContent?alt=sse`, `GET /v1beta/models` (`x-goog-api-key`).
//!
//! With no script it echoes the last user message. [`FakeLlm::push`] queues
//! answers for the next requests, whatever their endpoint: a given text with
//! given token counts, a provider error, a verbatim body (malformed JSON, an
//! HTML page), a stream cut after some events, a stream that sends the
//! format's error event after some events ([`Reply::error_event_after`]), a
//! delay, or tool calls
//! ([`Reply::tool_calls`]) in each format's own shape (OpenAI `tool_calls`,
//! Anthropic `tool_use` blocks, Gemini `functionCall` parts; whole and
//! streamed, the arguments of a streamed call in fragments where the format
//! streams them so). A wrong key gets each
//! provider's own refusal, with the key echoed back (as a careless provider
//! might) so that tests can check that it is scrubbed. Every request is
//! recorded for assertions.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use serde_json::{json, Value};

/// Token counts a scripted answer reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FakeUsage {
    /// The whole prompt, cached part included.
    pub input: u64,
    /// Everything generated, reasoning included.
    pub output: u64,
    pub cached: u64,
    /// Anthropic's cache writes (other formats have none).
    pub cache_write: u64,
    pub reasoning: u64,
}

/// Why a scripted answer stops, spelled in each format's own words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FakeFinish {
    #[default]
    Stop,
    Length,
}

#[derive(Debug, Clone)]
enum Scripted {
    Text {
        text: String,
        usage: Option<FakeUsage>,
        finish: FakeFinish,
        model: Option<String>,
        /// Tool calls asked for: a name and the arguments (a JSON string is
        /// sent as the arguments' text verbatim, so it may be invalid JSON).
        calls: Vec<(String, Value)>,
    },
    Error {
        status: u16,
        message: String,
    },
    Raw {
        status: u16,
        content_type: String,
        body: String,
    },
}

/// One scripted answer.
#[derive(Debug, Clone)]
pub struct Reply {
    body: Scripted,
    /// Before the answer starts.
    delay: Duration,
    /// Between the events of a streamed answer.
    chunk_delay: Duration,
    /// Streamed: how many pieces the text is cut into.
    pieces: usize,
    /// Streamed: stop after this many events, before the end marker.
    cut_after: Option<usize>,
    /// With `cut_after`: break the connection rather than end the body.
    abort: bool,
    /// With `cut_after`: send the format's error event with this message,
    /// then end the body.
    error_event: Option<String>,
}

impl Reply {
    fn of(body: Scripted) -> Self {
        Self {
            body,
            delay: Duration::ZERO,
            chunk_delay: Duration::ZERO,
            pieces: 3,
            cut_after: None,
            abort: false,
            error_event: None,
        }
    }

    /// This text, in the format asked, with counts made from the words.
    pub fn text(text: impl Into<String>) -> Self {
        Self::of(Scripted::Text {
            text: text.into(),
            usage: None,
            finish: FakeFinish::Stop,
            model: None,
            calls: Vec::new(),
        })
    }

    /// An answer asking for these tool calls (`(name, arguments)`), in the
    /// format asked: OpenAI `tool_calls` (arguments as a JSON string),
    /// Anthropic `tool_use` blocks (`input`), Gemini `functionCall` parts
    /// (`args`). Arguments given as a JSON string go verbatim in every format
    /// (a hostile model's invalid JSON).
    pub fn tool_calls(calls: Vec<(&str, Value)>) -> Self {
        Self::of(Scripted::Text {
            text: String::new(),
            usage: None,
            finish: FakeFinish::Stop,
            model: None,
            calls: calls.into_iter().map(|(n, a)| (n.to_string(), a)).collect(),
        })
    }

    /// A provider error: this status, the message in the format's error shape.
    pub fn error(status: u16, message: impl Into<String>) -> Self {
        Self::of(Scripted::Error {
            status,
            message: message.into(),
        })
    }

    /// This body verbatim, whatever was asked.
    pub fn raw(status: u16, content_type: &str, body: impl Into<String>) -> Self {
        Self::of(Scripted::Raw {
            status,
            content_type: content_type.into(),
            body: body.into(),
        })
    }

    /// Reports these counts instead of ones made from the words.
    pub fn usage(mut self, usage: FakeUsage) -> Self {
        if let Scripted::Text { usage: u, .. } = &mut self.body {
            *u = Some(usage);
        }
        self
    }

    pub fn finish(mut self, finish: FakeFinish) -> Self {
        if let Scripted::Text { finish: f, .. } = &mut self.body {
            *f = finish;
        }
        self
    }

    /// Names this model in the answer instead of the one asked for.
    pub fn model(mut self, model: &str) -> Self {
        if let Scripted::Text { model: m, .. } = &mut self.body {
            *m = Some(model.into());
        }
        self
    }

    pub fn delay(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }

    pub fn chunk_delay(mut self, d: Duration) -> Self {
        self.chunk_delay = d;
        self
    }

    /// Streamed: the text in `n` pieces (at least one).
    pub fn pieces(mut self, n: usize) -> Self {
        self.pieces = n.max(1);
        self
    }

    /// Streamed: only the first `n` events, then the body ends without the
    /// format's end marker.
    pub fn cut_after(mut self, n: usize) -> Self {
        self.cut_after = Some(n);
        self
    }

    /// Streamed: only the first `n` events, then the connection breaks.
    pub fn abort_after(mut self, n: usize) -> Self {
        self.cut_after = Some(n);
        self.abort = true;
        self
    }

    /// Streamed: the first `n` events, then the format's error event
    /// (Anthropic's `event: error`, an `{"error": …}` chunk for Gemini and
    /// OpenAI) saying `message`, then the body ends.
    pub fn error_event_after(mut self, n: usize, message: impl Into<String>) -> Self {
        self.cut_after = Some(n);
        self.error_event = Some(message.into());
        self
    }
}

/// A request the fake received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    /// Header names in lower case.
    pub headers: BTreeMap<String, String>,
    /// The JSON body (`Null` when there was none or it was not JSON).
    pub body: Value,
}

#[derive(Default)]
struct Shared {
    key: Option<String>,
    replies: Mutex<VecDeque<Reply>>,
    requests: Mutex<Vec<Recorded>>,
    models: Vec<String>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The running fake; dropping it stops it.
pub struct FakeLlm {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeLlm {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Which format a request is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    OpenAi,
    Anthropic,
    Gemini,
}

impl FakeLlm {
    /// Starts a fake on 127.0.0.1, port 0, that accepts only `key` (any key,
    /// or none, when `None`).
    pub async fn start(key: Option<&str>) -> FakeLlm {
        Self::start_on("127.0.0.1:0", key)
            .await
            .expect("bind the fake provider")
    }

    /// Starts a fake listening on `addr`.
    pub async fn start_on(addr: &str, key: Option<&str>) -> std::io::Result<FakeLlm> {
        let shared = Arc::new(Shared {
            key: key.map(str::to_string),
            models: vec!["fake-model-1".into(), "fake-model-2".into()],
            ..Default::default()
        });
        let app = Router::new()
            .route("/v1/chat/completions", post(openai_chat))
            .route("/v1/messages", post(anthropic_messages))
            .route("/v1/models", get(models_v1))
            .route("/v1beta/models", get(gemini_models))
            .route("/v1beta/models/{action}", post(gemini_generate))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(FakeLlm { addr, shared, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>`: the base URL of Anthropic and Gemini.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://127.0.0.1:<port>/v1`: the base URL of OpenAI and compatible servers.
    pub fn openai_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Queues an answer for the next request.
    pub fn push(&self, reply: Reply) {
        lock(&self.shared.replies).push_back(reply);
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        lock(&self.shared.requests).clone()
    }

    /// How many scripted answers are still queued.
    pub fn pending(&self) -> usize {
        lock(&self.shared.replies).len()
    }
}

fn record(
    s: &Shared,
    method: Method,
    path: &str,
    query: Option<String>,
    headers: &HeaderMap,
    body: &Bytes,
) -> Value {
    let json: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    lock(&s.requests).push(Recorded {
        method: method.to_string(),
        path: path.to_string(),
        query,
        headers: headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: json.clone(),
    });
    json
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// The key the request carries in its format's place.
fn key_of(format: Format, h: &HeaderMap) -> Option<String> {
    match format {
        Format::OpenAi => header(h, "authorization")
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_string),
        Format::Anthropic => header(h, "x-api-key").map(str::to_string),
        Format::Gemini => header(h, "x-goog-api-key").map(str::to_string),
    }
}

fn json_response(status: u16, body: Value) -> Response {
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn error_body(format: Format, status: u16, message: &str) -> Value {
    match format {
        Format::OpenAi => {
            json!({"error": {"message": message, "type": "invalid_request_error", "code": status}})
        }
        Format::Anthropic => {
            json!({"type": "error", "error": {"type": "api_error", "message": message}})
        }
        Format::Gemini => {
            json!({"error": {"code": status, "message": message, "status": "FAILED"}})
        }
    }
}

/// The refusal of a missing or wrong key, or `None` when the key is right.
fn refuse(s: &Shared, format: Format, h: &HeaderMap) -> Option<Response> {
    let expected = s.key.as_deref()?;
    let given = key_of(format, h);
    if given.as_deref() == Some(expected) {
        if format == Format::Anthropic && header(h, "anthropic-version").is_none() {
            return Some(json_response(
                400,
                error_body(format, 400, "anthropic-version: header is required"),
            ));
        }
        return None;
    }
    let shown = given.unwrap_or_default();
    Some(match format {
        Format::OpenAi => json_response(
            401,
            json!({"error": {"message": format!("Incorrect API key provided: {shown}."), "type": "invalid_request_error", "code": "invalid_api_key"}}),
        ),
        Format::Anthropic => json_response(
            401,
            json!({"type": "error", "error": {"type": "authentication_error", "message": format!("invalid x-api-key {shown}")}}),
        ),
        Format::Gemini => json_response(
            400,
            json!({"error": {"code": 400, "message": "API key not valid. Please pass a valid API key.", "status": "INVALID_ARGUMENT"}}),
        ),
    })
}

fn next_reply(s: &Shared) -> Option<Reply> {
    lock(&s.replies).pop_front()
}

fn words(s: &str) -> u64 {
    s.split_whitespace().count() as u64
}

/// The prompt's text and the last user message, for echoes and word counts.
fn prompt_of(format: Format, body: &Value) -> (u64, String) {
    let mut all = String::new();
    let mut last = String::new();
    let push = |all: &mut String, t: &str| {
        all.push_str(t);
        all.push(' ');
    };
    match format {
        Format::OpenAi | Format::Anthropic => {
            if let Some(s) = body.get("system").and_then(Value::as_str) {
                push(&mut all, s);
            }
            for m in body["messages"].as_array().into_iter().flatten() {
                let t = m["content"].as_str().unwrap_or_default();
                push(&mut all, t);
                if m["role"] == "user" {
                    last = t.to_string();
                }
            }
        }
        Format::Gemini => {
            for p in body
                .pointer("/systemInstruction/parts")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                push(&mut all, p["text"].as_str().unwrap_or_default());
            }
            for c in body["contents"].as_array().into_iter().flatten() {
                let t: String = c["parts"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|p| p["text"].as_str())
                    .collect();
                push(&mut all, &t);
                if c["role"] == "user" || c.get("role").is_none() {
                    last = t;
                }
            }
        }
    }
    (words(&all), last)
}

/// Cuts `text` into at most `n` pieces on character boundaries.
fn pieces(text: &str, n: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    if chars.is_empty() {
        return Vec::new();
    }
    let n = n.min(chars.len()).max(1);
    let size = chars.len().div_ceil(n);
    chars.chunks(size).map(|c| c.iter().collect()).collect()
}

struct Answer {
    text: String,
    usage: FakeUsage,
    finish: FakeFinish,
    model: String,
    calls: Vec<(String, Value)>,
}

/// Arguments as OpenAI sends them: JSON text.
fn arguments_text(a: &Value) -> String {
    match a {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The error event a stream of `format` ends with when it fails midway.
fn error_event(format: Format, message: &str) -> String {
    match format {
        Format::Anthropic => format!(
            "event: error\ndata: {}\n\n",
            json!({"type": "error", "error": {"type": "overloaded_error", "message": message}})
        ),
        Format::Gemini => format!(
            "data: {}\r\n\r\n",
            json!({"error": {"code": 503, "message": message, "status": "UNAVAILABLE"}})
        ),
        Format::OpenAi => format!(
            "data: {}\n\n",
            json!({"error": {"message": message, "type": "server_error", "code": null}})
        ),
    }
}

fn sse(format: Format, events: Vec<String>, reply: &Reply) -> Response {
    let mut events = events;
    let mut abort = false;
    if let Some(n) = reply.cut_after {
        events.truncate(n);
        abort = reply.abort;
        if let Some(m) = &reply.error_event {
            events.push(error_event(format, m));
        }
    }
    let delay = reply.chunk_delay;
    let items = events.into_iter().map(Bytes::from).collect::<VecDeque<_>>();
    let stream = futures::stream::unfold(
        (items, abort, true),
        move |(mut items, abort, first)| async move {
            if !first && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            match items.pop_front() {
                Some(b) => Some((Ok(b), (items, abort, false))),
                None if abort => {
                    // Let what was sent reach the client first: the server writes
                    // out buffered bytes only when the body has nothing ready.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Some((
                        Err(std::io::Error::new(
                            std::io::ErrorKind::ConnectionReset,
                            "cut by the script",
                        )),
                        (items, false, false),
                    ))
                }
                None => None,
            }
        },
    );
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// Serves one chat request: the scripted reply or an echo, whole or streamed.
async fn answer(
    s: &Shared,
    format: Format,
    asked_model: &str,
    body: &Value,
    stream: bool,
    include_usage: bool,
) -> Response {
    let reply = next_reply(s).unwrap_or_else(|| {
        let (_, last) = prompt_of(format, body);
        Reply::text(format!("echo: {last}"))
    });
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let (text, usage, finish, model, calls) = match &reply.body {
        Scripted::Error { status, message } => {
            return json_response(*status, error_body(format, *status, message))
        }
        Scripted::Raw {
            status,
            content_type,
            body,
        } => {
            return Response::builder()
                .status(StatusCode::from_u16(*status).unwrap_or(StatusCode::OK))
                .header(header::CONTENT_TYPE, content_type.as_str())
                .body(Body::from(body.clone()))
                .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
        }
        Scripted::Text {
            text,
            usage,
            finish,
            model,
            calls,
        } => (text, usage, finish, model, calls),
    };
    let (prompt_words, _) = prompt_of(format, body);
    let a = Answer {
        text: text.clone(),
        usage: usage.unwrap_or(FakeUsage {
            input: prompt_words,
            output: words(text),
            ..Default::default()
        }),
        finish: *finish,
        model: model.clone().unwrap_or_else(|| asked_model.to_string()),
        calls: calls.clone(),
    };
    let parts = pieces(&a.text, reply.pieces);
    match (format, stream) {
        (Format::OpenAi, false) => json_response(200, openai_whole(&a)),
        (Format::OpenAi, true) => sse(
            Format::OpenAi,
            openai_events(&a, &parts, include_usage),
            &reply,
        ),
        (Format::Anthropic, false) => json_response(200, anthropic_whole(&a)),
        (Format::Anthropic, true) => sse(Format::Anthropic, anthropic_events(&a, &parts), &reply),
        (Format::Gemini, false) => json_response(200, gemini_chunk(&a, &a.text, true)),
        (Format::Gemini, true) => {
            let n = parts.len().max(1);
            let events = (0..n)
                .map(|i| {
                    let piece = parts.get(i).map(String::as_str).unwrap_or("");
                    format!("data: {}\r\n\r\n", gemini_chunk(&a, piece, i + 1 == n))
                })
                .collect();
            sse(Format::Gemini, events, &reply)
        }
    }
}

fn openai_usage(u: &FakeUsage) -> Value {
    json!({
        "prompt_tokens": u.input,
        "completion_tokens": u.output,
        "total_tokens": u.input + u.output,
        "prompt_tokens_details": {"cached_tokens": u.cached},
        "completion_tokens_details": {"reasoning_tokens": u.reasoning},
    })
}

fn openai_whole(a: &Answer) -> Value {
    let mut finish = match a.finish {
        FakeFinish::Stop => "stop",
        FakeFinish::Length => "length",
    };
    let mut message = json!({"role": "assistant", "content": a.text});
    if !a.calls.is_empty() {
        finish = "tool_calls";
        if a.text.is_empty() {
            message["content"] = Value::Null;
        }
        message["tool_calls"] = a
            .calls
            .iter()
            .enumerate()
            .map(|(i, (name, args))| {
                json!({"id": format!("call_fake_{i}"), "type": "function",
                       "function": {"name": name, "arguments": arguments_text(args)}})
            })
            .collect();
    }
    json!({
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 0,
        "model": a.model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": openai_usage(&a.usage),
    })
}

fn openai_events(a: &Answer, parts: &[String], include_usage: bool) -> Vec<String> {
    let chunk = |choices: Value| {
        format!(
            "data: {}\n\n",
            json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0, "model": a.model, "choices": choices})
        )
    };
    let mut finish = match a.finish {
        FakeFinish::Stop => "stop",
        FakeFinish::Length => "length",
    };
    let mut out = vec![chunk(
        json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]),
    )];
    for p in parts {
        out.push(chunk(
            json!([{"index": 0, "delta": {"content": p}, "finish_reason": null}]),
        ));
    }
    // Each call: its id and name first, then its arguments in two fragments.
    for (i, (name, args)) in a.calls.iter().enumerate() {
        finish = "tool_calls";
        let text = arguments_text(args);
        let cut = text
            .char_indices()
            .nth(text.chars().count() / 2)
            .map_or(0, |(b, _)| b);
        out.push(chunk(json!([{"index": 0, "delta": {"tool_calls": [{"index": i, "id": format!("call_fake_{i}"),
            "type": "function", "function": {"name": name, "arguments": ""}}]}, "finish_reason": null}])));
        for part in [&text[..cut], &text[cut..]] {
            out.push(chunk(
                json!([{"index": 0, "delta": {"tool_calls": [{"index": i,
                "function": {"arguments": part}}]}, "finish_reason": null}]),
            ));
        }
    }
    out.push(chunk(
        json!([{"index": 0, "delta": {}, "finish_reason": finish}]),
    ));
    if include_usage {
        out.push(format!(
            "data: {}\n\n",
            json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0, "model": a.model, "choices": [], "usage": openai_usage(&a.usage)})
        ));
    }
    out.push("data: [DONE]\n\n".into());
    out
}

/// Anthropic reports the uncached prompt apart from cache reads and writes.
fn anthropic_usage(u: &FakeUsage) -> Value {
    json!({
        "input_tokens": u.input.saturating_sub(u.cached + u.cache_write),
        "cache_read_input_tokens": u.cached,
        "cache_creation_input_tokens": u.cache_write,
        "output_tokens": u.output,
    })
}

fn anthropic_stop(f: FakeFinish) -> &'static str {
    match f {
        FakeFinish::Stop => "end_turn",
        FakeFinish::Length => "max_tokens",
    }
}

fn anthropic_whole(a: &Answer) -> Value {
    let mut content = Vec::new();
    if !a.text.is_empty() || a.calls.is_empty() {
        content.push(json!({"type": "text", "text": a.text}));
    }
    for (i, (name, args)) in a.calls.iter().enumerate() {
        content.push(
            json!({"type": "tool_use", "id": format!("toolu_fake_{i}"), "name": name, "input": args}),
        );
    }
    let stop = if a.calls.is_empty() {
        anthropic_stop(a.finish)
    } else {
        "tool_use"
    };
    json!({
        "id": "msg_fake",
        "type": "message",
        "role": "assistant",
        "model": a.model,
        "content": content,
        "stop_reason": stop,
        "stop_sequence": null,
        "usage": anthropic_usage(&a.usage),
    })
}

fn anthropic_events(a: &Answer, parts: &[String]) -> Vec<String> {
    let ev = |name: &str, data: Value| format!("event: {name}\ndata: {data}\n\n");
    let mut start_usage = anthropic_usage(&a.usage);
    start_usage["output_tokens"] = json!(1);
    let mut out = vec![
        ev(
            "message_start",
            json!({"type": "message_start", "message": {"id": "msg_fake", "type": "message", "role": "assistant", "model": a.model, "content": [], "stop_reason": null, "usage": start_usage}}),
        ),
        ev(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
        ev("ping", json!({"type": "ping"})),
    ];
    for p in parts {
        out.push(ev(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}}),
        ));
    }
    out.push(ev(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": 0}),
    ));
    // Each call a `tool_use` block whose input comes in two JSON fragments.
    for (i, (name, args)) in a.calls.iter().enumerate() {
        let index = i + 1;
        let text = arguments_text(args);
        let cut = text
            .char_indices()
            .nth(text.chars().count() / 2)
            .map_or(0, |(b, _)| b);
        out.push(ev(
            "content_block_start",
            json!({"type": "content_block_start", "index": index, "content_block": {"type": "tool_use",
                   "id": format!("toolu_fake_{i}"), "name": name, "input": {}}}),
        ));
        for part in [&text[..cut], &text[cut..]] {
            out.push(ev(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": index,
                       "delta": {"type": "input_json_delta", "partial_json": part}}),
            ));
        }
        out.push(ev(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": index}),
        ));
    }
    let stop = if a.calls.is_empty() {
        anthropic_stop(a.finish)
    } else {
        "tool_use"
    };
    out.push(ev(
        "message_delta",
        json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null}, "usage": {"output_tokens": a.usage.output}}),
    ));
    out.push(ev("message_stop", json!({"type": "message_stop"})));
    out
}

/// One Gemini answer (or chunk of one); `last` carries the finish reason.
/// Gemini counts thoughts apart from the candidates.
fn gemini_chunk(a: &Answer, text: &str, last: bool) -> Value {
    let mut parts = vec![json!({"text": text})];
    if last && !a.calls.is_empty() {
        if text.is_empty() {
            parts.clear();
        }
        for (name, args) in &a.calls {
            parts.push(json!({"functionCall": {"name": name, "args": args}}));
        }
    }
    let mut candidate = json!({"content": {"role": "model", "parts": parts}, "index": 0});
    if last {
        candidate["finishReason"] = json!(match a.finish {
            FakeFinish::Stop => "STOP",
            FakeFinish::Length => "MAX_TOKENS",
        });
    }
    let u = &a.usage;
    json!({
        "candidates": [candidate],
        "usageMetadata": {
            "promptTokenCount": u.input,
            "candidatesTokenCount": u.output.saturating_sub(u.reasoning),
            "thoughtsTokenCount": u.reasoning,
            "cachedContentTokenCount": u.cached,
            "totalTokenCount": u.input + u.output,
        },
        "modelVersion": a.model,
        "responseId": "fake-response",
    })
}

/// A scripted error or verbatim body, if one is queued (model listings obey
/// the script too, so that a health check can be made to fail).
fn scripted_failure(s: &Shared, format: Format) -> Option<Response> {
    let mut q = lock(&s.replies);
    match q.front().map(|r| &r.body) {
        Some(Scripted::Error { .. } | Scripted::Raw { .. }) => {}
        _ => return None,
    }
    let reply = q.pop_front()?;
    drop(q);
    match reply.body {
        Scripted::Error { status, message } => {
            Some(json_response(status, error_body(format, status, &message)))
        }
        Scripted::Raw {
            status,
            content_type,
            body,
        } => Some(
            Response::builder()
                .status(StatusCode::from_u16(status).unwrap_or(StatusCode::OK))
                .header(header::CONTENT_TYPE, content_type)
                .body(Body::from(body))
                .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()),
        ),
        Scripted::Text { .. } => None,
    }
}

async fn openai_chat(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let json = record(
        &s,
        Method::POST,
        "/v1/chat/completions",
        None,
        &headers,
        &body,
    );
    if let Some(r) = refuse(&s, Format::OpenAi, &headers) {
        return r;
    }
    let Some(model) = json.get("model").and_then(Value::as_str) else {
        return json_response(
            400,
            error_body(Format::OpenAi, 400, "you must provide a model parameter"),
        );
    };
    if !json.get("messages").is_some_and(Value::is_array) {
        return json_response(400, error_body(Format::OpenAi, 400, "messages is required"));
    }
    let stream = json["stream"].as_bool().unwrap_or(false);
    let include_usage = json
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    answer(&s, Format::OpenAi, model, &json, stream, include_usage).await
}

async fn anthropic_messages(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let json = record(&s, Method::POST, "/v1/messages", None, &headers, &body);
    if let Some(r) = refuse(&s, Format::Anthropic, &headers) {
        return r;
    }
    let Some(model) = json.get("model").and_then(Value::as_str) else {
        return json_response(
            400,
            error_body(Format::Anthropic, 400, "model: Field required"),
        );
    };
    if !json.get("max_tokens").is_some_and(Value::is_u64) {
        return json_response(
            400,
            error_body(Format::Anthropic, 400, "max_tokens: Field required"),
        );
    }
    let stream = json["stream"].as_bool().unwrap_or(false);
    answer(&s, Format::Anthropic, model, &json, stream, true).await
}

async fn gemini_generate(
    State(s): State<Arc<Shared>>,
    Path(action): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = format!("/v1beta/models/{action}");
    let json = record(&s, Method::POST, &path, query.clone(), &headers, &body);
    if let Some(r) = refuse(&s, Format::Gemini, &headers) {
        return r;
    }
    let (model, stream) = match action.rsplit_once(':') {
        Some((m, "generateContent")) => (m.to_string(), false),
        Some((m, "streamGenerateContent")) => (m.to_string(), true),
        _ => return json_response(404, error_body(Format::Gemini, 404, "unknown method")),
    };
    if stream && query.as_deref() != Some("alt=sse") {
        return json_response(
            400,
            error_body(Format::Gemini, 400, "this fake streams only with alt=sse"),
        );
    }
    if !json.get("contents").is_some_and(Value::is_array) {
        return json_response(400, error_body(Format::Gemini, 400, "contents is required"));
    }
    answer(&s, Format::Gemini, &model, &json, stream, true).await
}

async fn models_v1(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let anthropic = headers.contains_key("anthropic-version") || headers.contains_key("x-api-key");
    let format = if anthropic {
        Format::Anthropic
    } else {
        Format::OpenAi
    };
    record(&s, Method::GET, "/v1/models", None, &headers, &Bytes::new());
    if let Some(r) = refuse(&s, format, &headers) {
        return r;
    }
    if let Some(r) = scripted_failure(&s, format) {
        return r;
    }
    let data: Vec<Value> = s
        .models
        .iter()
        .map(|m| {
            if anthropic {
                json!({"type": "model", "id": m, "display_name": m, "created_at": "2025-01-01T00:00:00Z"})
            } else {
                json!({"id": m, "object": "model", "created": 0, "owned_by": "fake"})
            }
        })
        .collect();
    let body = if anthropic {
        json!({"data": data, "has_more": false, "first_id": s.models.first(), "last_id": s.models.last()})
    } else {
        json!({"object": "list", "data": data})
    };
    json_response(200, body)
}

async fn gemini_models(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    record(
        &s,
        Method::GET,
        "/v1beta/models",
        None,
        &headers,
        &Bytes::new(),
    );
    if let Some(r) = refuse(&s, Format::Gemini, &headers) {
        return r;
    }
    if let Some(r) = scripted_failure(&s, Format::Gemini) {
        return r;
    }
    let models: Vec<Value> = s
        .models
        .iter()
        .map(|m| json!({"name": format!("models/{m}"), "displayName": m, "supportedGenerationMethods": ["generateContent"]}))
        .collect();
    json_response(200, json!({"models": models}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_cover_the_text() {
        assert_eq!(pieces("Hello", 2), ["Hel", "lo"]);
        assert_eq!(pieces("héllo wörld", 3).concat(), "héllo wörld");
        assert!(pieces("", 3).is_empty());
        assert_eq!(pieces("ab", 5), ["a", "b"]);
    }
}
