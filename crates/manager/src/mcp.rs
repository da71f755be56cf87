//! MCP servers as a tool source for agents: a server reached over stdio (a
//! command the manager starts) or over streamable HTTP, its tools listed with
//! `tools/list` and called with `tools/call`, through the `rmcp` client.
//!
//! Access rules decide which of a server's tools exist for Fleetgate at all: a
//! tool is allowed when its name matches one of the server's `allow` patterns
//! and none of its `deny` patterns (`*` matches any run of characters; a deny
//! wins; with no allow pattern nothing is allowed). The rules are applied when
//! tools are listed, when a run offers tools to its model, and again right
//! before every call, so a call of a tool they leave out is refused without
//! reaching the server, whatever the model asks for.
//!
//! A stdio server runs with an empty environment but `PATH` and the variables
//! registered for it (their values sealed at rest, opened only to start it); its
//! stderr is kept (the last few KiB) to explain a failure; a message longer than
//! [`MAX_MESSAGE`] ends the connection; the process is killed and reaped when
//! the connection ends. An HTTP server is reached under the manager's outbound
//! destination policy, with its registered headers; its messages too are held
//! to [`MAX_MESSAGE`] bytes. Connecting and each call
//! are bounded by the server's `timeout_ms`.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use fleetgate_store::McpServerRecord;
use futures::stream::BoxStream;
use futures::StreamExt;
use reqwest::header::ACCEPT;
use rmcp::model::{
    CallToolRequestParams, CallToolResult, ClientInfo, Implementation, PaginatedRequestParams, Tool,
};
use rmcp::model::{ClientJsonRpcMessage, ServerJsonRpcMessage};
use rmcp::service::RunningService;
use rmcp::transport::common::http_header::{
    EVENT_STREAM_MIME_TYPE, HEADER_LAST_EVENT_ID, HEADER_SESSION_ID, JSON_MIME_TYPE,
};
use rmcp::transport::streamable_http_client::{
    StreamableHttpClient, StreamableHttpClientTransportConfig, StreamableHttpError,
    StreamableHttpPostResponse,
};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::{RoleClient, ServiceExt};
use serde_json::{Map, Value};
use sse_stream::{Error as SseError, Sse, SseStream};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

use crate::AppState;

/// The longest message a stdio server may send (one JSON line).
pub const MAX_MESSAGE: usize = 1024 * 1024;
/// How much of a stdio server's stderr is kept to explain a failure.
const STDERR_TAIL: usize = 4096;
/// The most tools a listing keeps.
const MAX_TOOLS: usize = 500;

/// Whether `name` matches `pattern`: `*` matches any run of characters
/// (none included), everything else only itself.
pub fn glob(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    let (mut pi, mut ni) = (0, 0);
    // Where the last `*` was, and the name position it is matched up to.
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
        } else if pi < p.len() && p[pi] == n[ni] {
            pi += 1;
            ni += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Whether the server's access rules allow its tool `tool`.
pub fn allowed(server: &McpServerRecord, tool: &str) -> bool {
    server.allow.iter().any(|p| glob(p, tool)) && !server.deny.iter().any(|p| glob(p, tool))
}

/// An agent's reference to MCP tools, `mcp:<server>/<tool pattern>`, split.
pub fn parse_ref(entry: &str) -> Option<(&str, &str)> {
    entry.strip_prefix("mcp:")?.split_once('/')
}

/// The name a model calls an MCP tool by, `<server>__<tool>`; none when the
/// tool's name is not one every provider accepts (letters, digits, `_`, `-`,
/// at most 64 in all).
pub fn model_name(server: &str, tool: &str) -> Option<String> {
    let name = format!("{server}__{tool}");
    let ok = !tool.is_empty()
        && name.len() <= 64
        && tool
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'));
    ok.then_some(name)
}

/// A model-facing name split into server and tool (server names have no `_`).
pub fn split_model_name(name: &str) -> Option<(&str, &str)> {
    name.split_once("__")
}

/// What a failing stdio server left: its stderr's tail and whether it sent
/// a message over the limit.
#[derive(Default)]
struct Diag {
    stderr: Mutex<Vec<u8>>,
    overlong: AtomicBool,
}

/// The child's stdout, failing once a line runs past [`MAX_MESSAGE`] bytes.
struct CappedLines<R> {
    inner: R,
    line: usize,
    diag: Arc<Diag>,
}

impl<R: AsyncRead + Unpin> AsyncRead for CappedLines<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                for &b in &buf.filled()[before..] {
                    if b == b'\n' {
                        this.line = 0;
                    } else {
                        this.line += 1;
                    }
                }
                if this.line > MAX_MESSAGE {
                    this.diag.overlong.store(true, Ordering::Relaxed);
                    return Poll::Ready(Err(std::io::Error::other(format!(
                        "a message from the server is over {MAX_MESSAGE} bytes"
                    ))));
                }
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

/// The manager's reqwest client for streamable HTTP, with each message from
/// the server held to [`MAX_MESSAGE`] bytes: a JSON answer is read up to
/// that, and an SSE stream fails once one event runs past it.
#[derive(Clone)]
struct CappedHttp(reqwest::Client);

type HttpError = StreamableHttpError<reqwest::Error>;

fn over_limit() -> HttpError {
    StreamableHttpError::UnexpectedServerResponse(
        format!("a message from the server is over {MAX_MESSAGE} bytes").into(),
    )
}

/// A response body as SSE events, failing once one event is over the limit.
fn capped_sse(res: reqwest::Response) -> BoxStream<'static, Result<Sse, SseError>> {
    // Bytes since the last blank line (the end of an event), and whether the
    // last byte ended a line.
    let mut since = 0usize;
    let mut at_line_start = true;
    let bytes = res.bytes_stream().map(move |chunk| {
        let chunk = chunk.map_err(std::io::Error::other)?;
        for &b in chunk.iter() {
            match b {
                b'\n' if at_line_start => since = 0,
                b'\n' => at_line_start = true,
                b'\r' => {}
                _ => {
                    at_line_start = false;
                    since += 1;
                }
            }
        }
        if since > MAX_MESSAGE {
            return Err(std::io::Error::other(format!(
                "an event from the server is over {MAX_MESSAGE} bytes"
            )));
        }
        Ok(chunk)
    });
    SseStream::from_bytes_stream(bytes).boxed()
}

impl StreamableHttpClient for CappedHttp {
    type Error = reqwest::Error;

    async fn post_message(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        auth_header: Option<String>,
    ) -> Result<StreamableHttpPostResponse, HttpError> {
        let mut req = self
            .0
            .post(uri.as_ref())
            .header(ACCEPT, [EVENT_STREAM_MIME_TYPE, JSON_MIME_TYPE].join(", "));
        if let Some(token) = auth_header {
            req = req.bearer_auth(token);
        }
        if let Some(id) = session_id {
            req = req.header(HEADER_SESSION_ID, id.as_ref());
        }
        let mut res = req.json(&message).send().await?;
        let status = res.status();
        if matches!(
            status,
            reqwest::StatusCode::ACCEPTED | reqwest::StatusCode::NO_CONTENT
        ) {
            return Ok(StreamableHttpPostResponse::Accepted);
        }
        if !status.is_success() {
            return Err(StreamableHttpError::UnexpectedServerResponse(
                format!("the server answered {status}").into(),
            ));
        }
        let session = res
            .headers()
            .get(HEADER_SESSION_ID)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let content_type = res
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        match content_type.as_deref() {
            Some(ct) if ct.starts_with(EVENT_STREAM_MIME_TYPE) => {
                Ok(StreamableHttpPostResponse::Sse(capped_sse(res), session))
            }
            Some(ct) if ct.starts_with(JSON_MIME_TYPE) => {
                let mut body = Vec::new();
                while let Some(chunk) = res.chunk().await? {
                    if body.len() + chunk.len() > MAX_MESSAGE {
                        return Err(over_limit());
                    }
                    body.extend_from_slice(&chunk);
                }
                let message: ServerJsonRpcMessage = serde_json::from_slice(&body)?;
                Ok(StreamableHttpPostResponse::Json(message, session))
            }
            other => Err(StreamableHttpError::UnexpectedContentType(
                other.map(str::to_string),
            )),
        }
    }

    async fn delete_session(
        &self,
        uri: Arc<str>,
        session_id: Arc<str>,
        auth_header: Option<String>,
    ) -> Result<(), HttpError> {
        self.0.delete_session(uri, session_id, auth_header).await
    }

    async fn get_stream(
        &self,
        uri: Arc<str>,
        session_id: Arc<str>,
        last_event_id: Option<String>,
        auth_header: Option<String>,
    ) -> Result<BoxStream<'static, Result<Sse, SseError>>, HttpError> {
        let mut req = self
            .0
            .get(uri.as_ref())
            .header(ACCEPT, [EVENT_STREAM_MIME_TYPE, JSON_MIME_TYPE].join(", "))
            .header(HEADER_SESSION_ID, session_id.as_ref());
        if let Some(id) = last_event_id {
            req = req.header(HEADER_LAST_EVENT_ID, id);
        }
        if let Some(token) = auth_header {
            req = req.bearer_auth(token);
        }
        let res = req.send().await?;
        if res.status() == reqwest::StatusCode::METHOD_NOT_ALLOWED {
            return Err(StreamableHttpError::ServerDoesNotSupportSse);
        }
        let res = res.error_for_status()?;
        let ct = res
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        match ct {
            Some(ct)
                if ct.starts_with(EVENT_STREAM_MIME_TYPE) || ct.starts_with(JSON_MIME_TYPE) =>
            {
                Ok(capped_sse(res))
            }
            other => Err(StreamableHttpError::UnexpectedContentType(other)),
        }
    }
}

/// A connection to one MCP server.
pub struct Session {
    server: String,
    timeout: Duration,
    service: RunningService<RoleClient, ClientInfo>,
    child: Option<Child>,
    stderr_task: Option<JoinHandle<()>>,
    diag: Arc<Diag>,
}

fn client_info() -> ClientInfo {
    ClientInfo {
        client_info: Implementation {
            name: "fleetgate".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            ..Implementation::from_build_env()
        },
        ..ClientInfo::default()
    }
}

/// The server's timeout as a duration (at least 1 ms).
fn timeout_of(rec: &McpServerRecord) -> Duration {
    Duration::from_millis(rec.timeout_ms.max(1) as u64)
}

impl Session {
    /// Connects to the server and completes the MCP handshake, within its timeout.
    pub async fn connect(state: &AppState, rec: &McpServerRecord) -> Result<Session, String> {
        match rec.transport.as_str() {
            "stdio" => Self::connect_stdio(state, rec).await,
            "http" => Self::connect_http(state, rec).await,
            other => Err(format!("transport {other:?} is not known")),
        }
    }

    async fn connect_stdio(state: &AppState, rec: &McpServerRecord) -> Result<Session, String> {
        let mut cmd = Command::new(&rec.command);
        cmd.args(&rec.args)
            .env_clear()
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        if let Some(path) = std::env::var_os("PATH") {
            cmd.env("PATH", path);
        }
        for (name, sealed) in &rec.env {
            let value = state
                .secrets
                .open(sealed)
                .map_err(|e| format!("environment variable {name} unreadable: {e}"))?;
            cmd.env(name, String::from_utf8_lossy(&value).as_ref());
        }
        let mut child = cmd.spawn().map_err(|e| {
            format!(
                "MCP server {} could not be started ({}): {e}",
                rec.name, rec.command
            )
        })?;
        let diag = Arc::new(Diag::default());
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            let _ = child.kill().await;
            return Err("the server's standard streams could not be opened".into());
        };
        let stderr_task = tokio::spawn(keep_tail(stderr, diag.clone()));
        let reader = CappedLines {
            inner: stdout,
            line: 0,
            diag: diag.clone(),
        };
        let timeout = timeout_of(rec);
        let served = tokio::time::timeout(timeout, client_info().serve((reader, stdin))).await;
        let mut session_parts = (Some(child), Some(stderr_task));
        let service = match served {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                let why = format!("MCP server {} failed its handshake: {e}", rec.name);
                return Err(finish_failed(&mut session_parts, &diag, why).await);
            }
            Err(_) => {
                let why = format!(
                    "MCP server {} did not complete its handshake within {} ms",
                    rec.name, rec.timeout_ms
                );
                return Err(finish_failed(&mut session_parts, &diag, why).await);
            }
        };
        Ok(Session {
            server: rec.name.clone(),
            timeout,
            service,
            child: session_parts.0,
            stderr_task: session_parts.1,
            diag,
        })
    }

    async fn connect_http(state: &AppState, rec: &McpServerRecord) -> Result<Session, String> {
        let allow = state.settings().webhooks.allow_private_targets;
        crate::webhooks::check_before_send(&rec.url, allow)?;
        let mut headers = reqwest::header::HeaderMap::new();
        for (name, sealed) in &rec.headers {
            let value = state
                .secrets
                .open(sealed)
                .map_err(|e| format!("header {name} unreadable: {e}"))?;
            let name = reqwest::header::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("header name {name} is not valid"))?;
            let mut value = reqwest::header::HeaderValue::from_bytes(&value)
                .map_err(|_| format!("the value of header {name} is not valid"))?;
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        let live = state.clone();
        let timeout = timeout_of(rec);
        let client = reqwest::Client::builder()
            .default_headers(headers)
            .user_agent(concat!("fleetgate-agents/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(Arc::new(crate::destination::PolicyResolver::new(
                move || live.settings().webhooks.allow_private_targets,
            )))
            .build()
            .map_err(|e| format!("the HTTP client could not be built: {e}"))?;
        let transport = StreamableHttpClientTransport::with_client(
            CappedHttp(client),
            StreamableHttpClientTransportConfig::with_uri(rec.url.clone()),
        );
        let service = match tokio::time::timeout(timeout, client_info().serve(transport)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                return Err(format!(
                    "MCP server {} failed its handshake: {}",
                    rec.name,
                    error_chain(&e)
                ))
            }
            Err(_) => {
                return Err(format!(
                    "MCP server {} did not complete its handshake within {} ms",
                    rec.name, rec.timeout_ms
                ))
            }
        };
        Ok(Session {
            server: rec.name.clone(),
            timeout,
            service,
            child: None,
            stderr_task: None,
            diag: Arc::new(Diag::default()),
        })
    }

    /// The server's tools (every page, at most [`MAX_TOOLS`]), unfiltered.
    pub async fn list_tools(&mut self) -> Result<Vec<Tool>, String> {
        let mut tools = Vec::new();
        let mut cursor = None;
        loop {
            let page = tokio::time::timeout(
                self.timeout,
                self.service
                    .list_tools(Some(PaginatedRequestParams { meta: None, cursor })),
            )
            .await;
            let page = match page {
                Ok(Ok(p)) => p,
                Ok(Err(e)) => {
                    let why = format!("MCP server {} failed tools/list: {e}", self.server);
                    return Err(self.failed(why).await);
                }
                Err(_) => {
                    let why = format!(
                        "MCP server {} did not answer tools/list within {} ms",
                        self.server,
                        self.timeout.as_millis()
                    );
                    return Err(self.failed(why).await);
                }
            };
            tools.extend(page.tools);
            if tools.len() >= MAX_TOOLS {
                tools.truncate(MAX_TOOLS);
                break;
            }
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        Ok(tools)
    }

    /// Calls `tool` with `args` within the server's timeout. An `Err` means
    /// the connection is no longer usable (the caller closes it).
    pub async fn call(
        &mut self,
        tool: &str,
        args: Map<String, Value>,
    ) -> Result<CallToolResult, String> {
        let params = CallToolRequestParams {
            meta: None,
            name: tool.to_string().into(),
            arguments: Some(args),
            task: None,
        };
        match tokio::time::timeout(self.timeout, self.service.call_tool(params)).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(rmcp::ServiceError::McpError(e))) => Err(format!(
                "MCP server {} refused the call of {tool}: {} (code {})",
                self.server, e.message, e.code.0
            )),
            Ok(Err(rmcp::ServiceError::TransportClosed)) => {
                let why = format!(
                    "MCP server {} closed the connection during the call of {tool}",
                    self.server
                );
                Err(self.failed(why).await)
            }
            Ok(Err(e)) => {
                let why = format!("MCP server {} failed the call of {tool}: {e}", self.server);
                Err(self.failed(why).await)
            }
            Err(_) => Err(format!(
                "MCP server {} did not answer the call of {tool} within {} ms",
                self.server,
                self.timeout.as_millis()
            )),
        }
    }

    /// `why` with what the server left behind (its exit status, the end of
    /// its stderr, an over-long message).
    async fn failed(&mut self, why: String) -> String {
        let mut parts = (self.child.take(), self.stderr_task.take());
        finish_failed(&mut parts, &self.diag, why).await
    }

    /// Ends the connection; a stdio server's process is killed if it has not
    /// exited, and reaped.
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.service.cancel()).await;
        if let Some(mut child) = self.child.take() {
            // Its stdin is closed now: give it a moment to exit on its own.
            if tokio::time::timeout(Duration::from_millis(300), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }
        if let Some(t) = self.stderr_task.take() {
            t.abort();
        }
    }
}

/// The chain of an error's sources, as one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let s = c.to_string();
        if !text.contains(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        cause = c.source();
    }
    text
}

/// Reads a child's stderr to the end, keeping its last [`STDERR_TAIL`] bytes.
async fn keep_tail(mut stderr: tokio::process::ChildStderr, diag: Arc<Diag>) {
    let mut buf = [0u8; 4096];
    loop {
        match stderr.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let mut tail = diag.stderr.lock().unwrap_or_else(|e| e.into_inner());
                tail.extend_from_slice(&buf[..n]);
                if tail.len() > STDERR_TAIL {
                    let cut = tail.len() - STDERR_TAIL;
                    tail.drain(..cut);
                }
            }
        }
    }
}

/// Kills and reaps a failed server (after a moment for it to exit on its
/// own), and adds to `why` its exit status and the end of its stderr.
async fn finish_failed(
    parts: &mut (Option<Child>, Option<JoinHandle<()>>),
    diag: &Diag,
    mut why: String,
) -> String {
    if diag.overlong.load(Ordering::Relaxed) {
        why.push_str(&format!(
            " (it sent a message over {MAX_MESSAGE} bytes, the most accepted)"
        ));
    }
    if let Some(mut child) = parts.0.take() {
        match tokio::time::timeout(Duration::from_millis(500), child.wait()).await {
            Ok(Ok(status)) => why.push_str(&format!("; the server exited ({status})")),
            _ => {
                let _ = child.kill().await;
            }
        }
    }
    if let Some(task) = parts.1.take() {
        // Its stderr is at its end once the process is gone.
        let _ = tokio::time::timeout(Duration::from_millis(500), task).await;
    }
    let tail = diag
        .stderr
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let tail = String::from_utf8_lossy(&tail);
    let tail = tail.trim();
    if !tail.is_empty() {
        why.push_str(&format!(
            "; its stderr: {}",
            crate::ai::clip(tail, STDERR_TAIL)
        ));
    }
    why
}

/// A tool as a listing shows it.
#[derive(Debug, Clone)]
pub struct ListedTool {
    pub name: String,
    pub description: String,
    pub input_schema: Value,
}

/// Connects, lists the server's tools and keeps those its access rules
/// allow; returns them and how many were left out.
pub async fn allowed_tools(
    state: &AppState,
    rec: &McpServerRecord,
) -> Result<(Vec<ListedTool>, usize), String> {
    let mut session = Session::connect(state, rec).await?;
    let listed = session.list_tools().await;
    session.close().await;
    let all = listed?;
    let total = all.len();
    let kept: Vec<ListedTool> = all
        .into_iter()
        .filter(|t| allowed(rec, &t.name))
        .map(listed_tool)
        .collect();
    let hidden = total - kept.len();
    Ok((kept, hidden))
}

pub fn listed_tool(t: Tool) -> ListedTool {
    ListedTool {
        name: t.name.to_string(),
        description: crate::ai::clip(t.description.as_deref().unwrap_or(""), 2000),
        input_schema: Value::Object((*t.input_schema).clone()),
    }
}

/// The text a tool's result gives the model (its text parts joined, other
/// parts as JSON), and whether the server marked it an error.
pub fn result_text(r: &CallToolResult) -> String {
    let mut parts = Vec::with_capacity(r.content.len());
    for c in &r.content {
        match c.raw.as_text() {
            Some(t) => parts.push(t.text.clone()),
            None => parts.push(serde_json::to_string(c).unwrap_or_default()),
        }
    }
    if parts.is_empty() {
        if let Some(s) = &r.structured_content {
            parts.push(s.to_string());
        }
    }
    parts.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(allow: &[&str], deny: &[&str]) -> McpServerRecord {
        McpServerRecord {
            id: "m".into(),
            name: "files".into(),
            description: String::new(),
            transport: "stdio".into(),
            command: "x".into(),
            args: Vec::new(),
            env: Vec::new(),
            url: String::new(),
            headers: Vec::new(),
            allow: allow.iter().map(|s| s.to_string()).collect(),
            deny: deny.iter().map(|s| s.to_string()).collect(),
            timeout_ms: 1000,
            version: 1,
            created_at: 0,
            updated_at: 0,
        }
    }

    #[test]
    fn globs() {
        for (p, n) in [
            ("*", "anything"),
            ("*", ""),
            ("read_*", "read_file"),
            ("read_*", "read_"),
            ("*_file", "read_file"),
            ("r*d*e", "read_file_e"),
            ("echo", "echo"),
            ("a*b*c", "aXbYbZc"),
        ] {
            assert!(glob(p, n), "{p} matches {n}");
        }
        for (p, n) in [
            ("echo", "echo2"),
            ("read_*", "write_file"),
            ("*_file", "read_files"),
            ("a*b*c", "aXbYc_"),
            ("", "x"),
        ] {
            assert!(!glob(p, n), "{p} does not match {n}");
        }
    }

    #[test]
    fn deny_wins_and_nothing_is_allowed_by_default() {
        assert!(!allowed(&server(&[], &[]), "echo"));
        let s = server(&["*"], &["delete_*"]);
        assert!(allowed(&s, "echo"));
        assert!(!allowed(&s, "delete_everything"));
        let s = server(&["echo"], &["*"]);
        assert!(!allowed(&s, "echo"));
    }

    #[test]
    fn model_names() {
        assert_eq!(model_name("files", "read"), Some("files__read".into()));
        assert_eq!(model_name("files", "read.file"), None);
        assert_eq!(model_name("files", &"x".repeat(60)), None);
        assert_eq!(
            split_model_name("files__read_all"),
            Some(("files", "read_all"))
        );
        assert_eq!(parse_ref("mcp:files/read_*"), Some(("files", "read_*")));
        assert_eq!(parse_ref("files/read"), None);
    }
}
