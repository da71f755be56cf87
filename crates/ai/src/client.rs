//! [`ProviderClient`]: one provider at one base URL with one key, asked for a
//! whole answer ([`ProviderClient::complete`]), a streamed one
//! ([`ProviderClient::stream`]) or its list of models
//! ([`ProviderClient::list_models`], the cheap call a health check makes).
//!
//! The key travels only in a request header (OpenAI's bearer token,
//! Anthropic's `x-api-key`, Gemini's `x-goog-api-key`), never in a URL, so that
//! no error or log line that names the URL shows it; anything a provider
//! echoes back is scrubbed of it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::CONTENT_TYPE;

use crate::mask::scrub;
use crate::sse::{SseDecoder, TooLarge};
use crate::wire::{self, StreamParser};
use crate::{AiError, ChatRequest, Completion, ProviderKind};

/// Largest whole answer read (a model's answer is kilobytes; a listing of
/// models tens of kilobytes).
const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// What a client needs to know about its provider.
#[derive(Clone)]
pub struct ProviderConfig {
    pub kind: ProviderKind,
    /// Overrides the vendor's endpoint; required for an OpenAI-compatible server.
    pub base_url: Option<String>,
    pub api_key: Option<String>,
    /// How long to wait for an answer: the whole of a non-streamed one, and
    /// each next chunk of a streamed one.
    pub timeout: Duration,
}

impl std::fmt::Debug for ProviderConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderConfig")
            .field("kind", &self.kind)
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// An HTTP client fit for providers: no redirects (a key must not follow one
/// to another host) and rustls with the system's roots.
pub fn http_client() -> Result<reqwest::Client, AiError> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| AiError::Config(format!("cannot build the HTTP client: {e}")))
}

/// Checks a base URL: http or https, a host, no credentials, no query or
/// fragment. Returns it without its trailing slash.
pub fn check_base_url(url: &str) -> Result<String, String> {
    let trimmed = url.trim().trim_end_matches('/');
    let parsed = reqwest::Url::parse(trimmed).map_err(|e| format!("not a URL ({e})"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err("must be an http:// or https:// URL".into());
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err("must name a host".into());
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("must not carry credentials; give the key as api_key".into());
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err("must not have a query or fragment".into());
    }
    Ok(trimmed.to_string())
}

/// One provider, ready to be asked. Cheap to clone.
#[derive(Clone)]
pub struct ProviderClient {
    kind: ProviderKind,
    base: String,
    key: Option<Arc<str>>,
    http: reqwest::Client,
    timeout: Duration,
}

impl std::fmt::Debug for ProviderClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderClient")
            .field("kind", &self.kind)
            .field("base", &self.base)
            .field("key", &self.key.as_ref().map(|_| "<redacted>"))
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl ProviderClient {
    /// A client of `config`'s provider. Fails when the base URL is missing or
    /// malformed, or when a provider that needs a key has none.
    pub fn new(http: reqwest::Client, config: ProviderConfig) -> Result<Self, AiError> {
        let base = match (&config.base_url, config.kind.default_base_url()) {
            (Some(u), _) => u.clone(),
            (None, Some(d)) => d.to_string(),
            (None, None) => {
                return Err(AiError::Config(format!(
                    "an {} provider needs a base URL",
                    config.kind
                )))
            }
        };
        let base = check_base_url(&base).map_err(|e| AiError::Config(format!("base URL {e}")))?;
        let key = config
            .api_key
            .filter(|k| !k.is_empty())
            .map(|k| Arc::<str>::from(k.as_str()));
        if key.is_none() && config.kind.needs_api_key() {
            return Err(AiError::Config(format!(
                "no API key is set for this {} provider",
                config.kind
            )));
        }
        Ok(Self {
            kind: config.kind,
            base,
            key,
            http,
            timeout: config.timeout,
        })
    }

    pub fn kind(&self) -> ProviderKind {
        self.kind
    }

    /// The base URL requests go to (without a trailing slash).
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// A whole answer, within the timeout.
    pub async fn complete(&self, req: &ChatRequest) -> Result<Completion, AiError> {
        let call = wire::chat_call(self.kind, &self.base, req, false)?;
        let work = async {
            let resp = self.send(self.post(&call.url).json(&call.body)).await?;
            let body = self.read_body(resp).await?;
            wire::parse_completion(self.kind, &body, &req.model).map_err(|e| self.scrubbed(e))
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| AiError::Timeout(self.timeout))?
    }

    /// A streamed answer: the text as it is generated, then the whole
    /// [`Completion`]. The answer must start within the timeout, and each next
    /// chunk must come within it too.
    pub async fn stream(&self, req: &ChatRequest) -> Result<CompletionStream, AiError> {
        let call = wire::chat_call(self.kind, &self.base, req, true)?;
        let sent = self.send(
            self.post(&call.url)
                .header(reqwest::header::ACCEPT, "text/event-stream")
                .json(&call.body),
        );
        let resp = tokio::time::timeout(self.timeout, sent)
            .await
            .map_err(|_| AiError::Timeout(self.timeout))??;
        let is_json = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        let mut stream = CompletionStream {
            resp: None,
            decoder: SseDecoder::default(),
            parser: StreamParser::new(self.kind, &req.model),
            queue: VecDeque::new(),
            idle: self.timeout,
            finished: false,
            key: self.key.clone(),
        };
        if is_json {
            // A server that ignores `stream` answers in one piece: that is the
            // whole answer, given as one chunk of text.
            let body = tokio::time::timeout(self.timeout, self.read_body(resp))
                .await
                .map_err(|_| AiError::Timeout(self.timeout))??;
            let c = wire::parse_completion(self.kind, &body, &req.model)
                .map_err(|e| self.scrubbed(e))?;
            if !c.text.is_empty() {
                stream.queue.push_back(StreamEvent::Text(c.text.clone()));
            }
            stream.queue.push_back(StreamEvent::Done(c));
            stream.finished = true;
        } else {
            stream.resp = Some(resp);
        }
        Ok(stream)
    }

    /// The ids of the models the provider offers (the health check's call).
    pub async fn list_models(&self) -> Result<Vec<String>, AiError> {
        let url = wire::models_url(self.kind, &self.base);
        let work = async {
            let resp = self.send(self.authorized(self.http.get(&url))).await?;
            let body = self.read_body(resp).await?;
            wire::parse_models(self.kind, &body).map_err(|e| self.scrubbed(e))
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| AiError::Timeout(self.timeout))?
    }

    fn post(&self, url: &str) -> reqwest::RequestBuilder {
        self.authorized(self.http.post(url))
    }

    fn authorized(&self, rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        let Some(key) = self.key.as_deref() else {
            return rb;
        };
        match self.kind {
            ProviderKind::OpenAi | ProviderKind::OpenAiCompatible => rb.bearer_auth(key),
            ProviderKind::Anthropic => rb
                .header("x-api-key", key)
                .header("anthropic-version", wire::ANTHROPIC_VERSION),
            ProviderKind::Gemini => rb.header("x-goog-api-key", key),
        }
    }

    /// Sends; an error status becomes [`AiError::Provider`] with the
    /// provider's message.
    async fn send(&self, rb: reqwest::RequestBuilder) -> Result<reqwest::Response, AiError> {
        let resp = rb.send().await.map_err(|e| self.transport(&e))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let body = self.read_body(resp).await.unwrap_or_default();
        Err(AiError::Provider {
            status: Some(status.as_u16()),
            message: scrub(&wire::error_message(&body), self.key.as_deref()),
        })
    }

    async fn read_body(&self, mut resp: reqwest::Response) -> Result<Bytes, AiError> {
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| self.transport(&e))? {
            if body.len() + chunk.len() > MAX_BODY_BYTES {
                return Err(AiError::Malformed(format!(
                    "the answer is larger than {MAX_BODY_BYTES} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Bytes::from(body))
    }

    fn transport(&self, e: &reqwest::Error) -> AiError {
        transport_error(e, self.key.as_deref())
    }

    fn scrubbed(&self, e: AiError) -> AiError {
        scrub_error(e, self.key.as_deref())
    }
}

/// A transport failure with its causes (`connection refused`…), keyless.
fn transport_error(e: &reqwest::Error, key: Option<&str>) -> AiError {
    let mut message = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let s_text = s.to_string();
        if !message.contains(&s_text) {
            message.push_str(": ");
            message.push_str(&s_text);
        }
        source = s.source();
    }
    AiError::Transport(scrub(&message, key))
}

fn scrub_error(e: AiError, key: Option<&str>) -> AiError {
    match e {
        AiError::Provider { status, message } => AiError::Provider {
            status,
            message: scrub(&message, key),
        },
        AiError::Malformed(m) => AiError::Malformed(scrub(&m, key)),
        other => other,
    }
}

/// What a streamed answer gives, in order: text as it comes, then the whole
/// answer once.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    Text(String),
    Done(Completion),
}

/// A streamed answer being read. Dropping it closes the connection.
pub struct CompletionStream {
    resp: Option<reqwest::Response>,
    decoder: SseDecoder,
    parser: StreamParser,
    queue: VecDeque<StreamEvent>,
    idle: Duration,
    finished: bool,
    key: Option<Arc<str>>,
}

impl std::fmt::Debug for CompletionStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompletionStream")
            .field("finished", &self.finished)
            .field("parser", &self.parser)
            .finish_non_exhaustive()
    }
}

impl CompletionStream {
    /// The next event; `None` after [`StreamEvent::Done`] or an error. A
    /// stream that ends before the provider said it was done is an
    /// [`AiError::Truncated`]; [`CompletionStream::partial`] then tells what
    /// arrived (and was counted).
    pub async fn next(&mut self) -> Option<Result<StreamEvent, AiError>> {
        loop {
            if let Some(e) = self.queue.pop_front() {
                return Some(Ok(e));
            }
            if self.finished {
                return None;
            }
            let Some(resp) = self.resp.as_mut() else {
                self.finished = true;
                return None;
            };
            let chunk = match tokio::time::timeout(self.idle, resp.chunk()).await {
                Err(_) => return Some(Err(self.fail(AiError::Timeout(self.idle)))),
                Ok(Err(e)) => {
                    let e = transport_error(&e, self.key.as_deref());
                    return Some(Err(self.fail(e)));
                }
                Ok(Ok(chunk)) => chunk,
            };
            let result = match chunk {
                Some(bytes) => self.take(&bytes),
                None => self.end(),
            };
            if let Err(e) = result {
                return Some(Err(self.fail(e)));
            }
        }
    }

    /// Reads the rest and returns the whole answer.
    pub async fn collect(mut self) -> Result<Completion, AiError> {
        while let Some(e) = self.next().await {
            if let StreamEvent::Done(c) = e? {
                return Ok(c);
            }
        }
        Err(AiError::Truncated)
    }

    /// The answer as far as it arrived: its text, and the usage the provider
    /// reported so far.
    pub fn partial(&self) -> Completion {
        self.parser.completion()
    }

    fn take(&mut self, bytes: &[u8]) -> Result<(), AiError> {
        let events = self.decoder.feed(bytes).map_err(|TooLarge(n)| {
            AiError::Malformed(format!("a stream event is larger than {n} bytes"))
        })?;
        for ev in events {
            let delta = self
                .parser
                .feed(&ev)
                .map_err(|e| scrub_error(e, self.key.as_deref()))?;
            if !delta.is_empty() {
                self.queue.push_back(StreamEvent::Text(delta));
            }
        }
        Ok(())
    }

    fn end(&mut self) -> Result<(), AiError> {
        if let Some(ev) = self.decoder.finish() {
            let delta = self
                .parser
                .feed(&ev)
                .map_err(|e| scrub_error(e, self.key.as_deref()))?;
            if !delta.is_empty() {
                self.queue.push_back(StreamEvent::Text(delta));
            }
        }
        self.resp = None;
        self.finished = true;
        if !self.parser.is_done() {
            return Err(AiError::Truncated);
        }
        self.queue
            .push_back(StreamEvent::Done(self.parser.completion()));
        Ok(())
    }

    fn fail(&mut self, e: AiError) -> AiError {
        self.resp = None;
        self.finished = true;
        // Text already queued is dropped with the failure: the caller gets the
        // error now and the text through `partial`.
        self.queue.clear();
        e
    }
}
