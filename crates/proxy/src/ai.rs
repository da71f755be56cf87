//! The AI gateway: what an `ai` route does instead of the exchange with an
//! upstream. It takes OpenAI-compatible requests (`POST …/chat/completions`,
//! `GET …/models`) from callers holding a Fleetgate API key, and relays them to
//! the route's AI provider with the provider's own key:
//!
//! 1. the caller is identified by its API key (`Authorization: Bearer` or
//!    `x-api-key`), hashed and looked up among the keys the manager published
//!    (the same SHA-256 the store keeps); the key never goes further;
//! 2. the request body is read (it is small JSON), its model checked against the
//!    route's list and the price table, `max_tokens` set to the route's default
//!    when absent, and, on a stream, `stream_options.include_usage` asked for;
//! 3. every budget the route names (and that applies to the caller) reserves the
//!    request's worst-case cost — its whole body counted as prompt tokens plus
//!    `max_tokens` of output — or refuses it with 429 (see [`ledger`]);
//! 4. the answer is relayed chunk by chunk while [`meter`] reads its usage; at
//!    its end (or when it is cut or the client leaves) the real cost settles the
//!    reservations and a usage record goes to the manager through the
//!    [`AiUsageSink`](fleetgate_protocol::ai::AiUsageSink).
//!
//! Providers speaking OpenAI's chat completions (`openai`, `openai_compatible`)
//! get the request as sent (plus the fields above) and their answer is relayed
//! as it comes, streams included. For Anthropic and Gemini providers the
//! request is translated (`translate_request`, text chat only: no tools, no
//! images, one choice) with `fleetgate_ai::wire` and the answer given back in
//! OpenAI's shape. A whole answer is read whole and rewritten; a stream
//! (Anthropic's messages with `stream: true`, Gemini's
//! `streamGenerateContent?alt=sse`) is rewritten event by event into OpenAI
//! `chat.completion.chunk` events as it arrives
//! ([`ChunkRelay`](fleetgate_ai::wire::ChunkRelay)), ending with a usage chunk
//! and `data: [DONE]`, or with an OpenAI-shaped error chunk when the provider
//! sends an error event, something unreadable, or breaks off. Such a stream is
//! metered from the provider's own counts; one cut or abandoned is priced
//! from what it sent so far. Nothing here touches the store.

pub mod ledger;
pub mod meter;

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fleetgate_ai::pricing::{format_usd, PriceTable};
use fleetgate_ai::ProviderKind;
use fleetgate_core::ai_gateway::AiRoute;
use fleetgate_core::events::{emit, NewEvent, Severity};
use fleetgate_protocol::ai::{AiGatewayInput, AiUsageRecord, BudgetAllowances};
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Method, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Incoming;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::forward::{json_error, ProxyBody};
use crate::pool::{BoxError, PooledBody};
use crate::GatewayInner;
use ledger::{BudgetLedger, Crossing, Hold, Refusal};
use meter::{Metered, MeteredBody};

/// Largest request body an `ai` route reads when the route sets no limit.
const DEFAULT_MAX_BODY: usize = 4 * 1024 * 1024;

/// One provider, ready to relay to.
struct ProviderRt {
    id: String,
    name: String,
    kind: Option<ProviderKind>,
    kind_name: String,
    base_url: String,
    /// `Bearer <key>`, for providers speaking OpenAI's API.
    auth: Option<HeaderValue>,
    /// The key alone, for Anthropic's `x-api-key` and Gemini's `x-goog-api-key`.
    key: Option<HeaderValue>,
    timeout: Duration,
}

impl ProviderRt {
    /// `body` without the provider's key: a provider that refuses a key may
    /// echo it in its error, which goes back to the caller.
    fn scrubbed(&self, body: Bytes) -> Bytes {
        meter::redact(self.key_bytes(), body)
    }

    /// The provider's key as sent, or nothing.
    fn key_bytes(&self) -> &[u8] {
        self.key.as_ref().map_or(&[], HeaderValue::as_bytes)
    }

    /// The provider's key on `rb`, the way its kind expects it.
    fn authorized(&self, rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match self.kind {
            Some(ProviderKind::Anthropic) => match &self.key {
                Some(k) => rb
                    .header("x-api-key", k.clone())
                    .header("anthropic-version", fleetgate_ai::wire::ANTHROPIC_VERSION),
                None => rb,
            },
            Some(ProviderKind::Gemini) => match &self.key {
                Some(k) => rb.header("x-goog-api-key", k.clone()),
                None => rb,
            },
            _ => match &self.auth {
                Some(a) => rb.header(header::AUTHORIZATION, a.clone()),
                None => rb,
            },
        }
    }
}

struct Caller {
    id: String,
}

struct BudgetRt {
    ledger: Arc<BudgetLedger>,
    api_key_id: Option<String>,
}

/// The AI gateway input compiled: providers by name and id, callers by key
/// hash, budgets by name with their ledgers (kept across inputs).
pub struct AiRuntime {
    pub version: u64,
    providers: HashMap<String, Arc<ProviderRt>>,
    callers: HashMap<String, Caller>,
    budgets: HashMap<String, Arc<BudgetRt>>,
    ledgers_by_id: HashMap<String, Arc<BudgetLedger>>,
    prices: PriceTable,
}

impl Default for AiRuntime {
    fn default() -> Self {
        Self {
            version: 0,
            providers: HashMap::new(),
            callers: HashMap::new(),
            budgets: HashMap::new(),
            ledgers_by_id: HashMap::new(),
            prices: PriceTable::builtin(),
        }
    }
}

impl AiRuntime {
    /// Compiles `input`; budgets known to `previous` keep their ledgers (the
    /// spend, reservations and allowance of requests in flight); new ones
    /// lease from `allowances`.
    pub fn build(
        input: &AiGatewayInput,
        previous: &AiRuntime,
        allowances: Option<&Arc<dyn BudgetAllowances>>,
    ) -> Self {
        let now = fleetgate_core::time::now_ms();
        let mut providers = HashMap::new();
        for p in &input.providers {
            let auth = p
                .api_key
                .as_ref()
                .and_then(|k| HeaderValue::from_str(&format!("Bearer {k}")).ok())
                .map(|mut v| {
                    v.set_sensitive(true);
                    v
                });
            let key = p
                .api_key
                .as_ref()
                .and_then(|k| HeaderValue::from_str(k).ok())
                .map(|mut v| {
                    v.set_sensitive(true);
                    v
                });
            let rt = Arc::new(ProviderRt {
                key,
                id: p.id.clone(),
                name: p.name.clone(),
                kind: p.kind.parse().ok(),
                kind_name: p.kind.clone(),
                base_url: p.base_url.trim_end_matches('/').to_string(),
                auth,
                timeout: Duration::from_millis(p.timeout_ms.max(1)),
            });
            providers.insert(p.name.clone(), rt.clone());
            providers.insert(p.id.clone(), rt);
        }
        let callers = input
            .keys
            .iter()
            .map(|k| (k.key_hash.clone(), Caller { id: k.id.clone() }))
            .collect();
        let mut budgets = HashMap::new();
        let mut ledgers_by_id = HashMap::new();
        for b in &input.budgets {
            let ledger = match previous.ledgers_by_id.get(&b.id) {
                Some(l) => {
                    l.update(b.clone(), now);
                    l.clone()
                }
                None => {
                    let l = BudgetLedger::with_allowances(b.clone(), now, allowances.cloned());
                    // A first share of the period, before the first request.
                    l.top_up_if_low();
                    l
                }
            };
            ledgers_by_id.insert(b.id.clone(), ledger.clone());
            budgets.insert(
                b.name.clone(),
                Arc::new(BudgetRt {
                    ledger,
                    api_key_id: b.api_key_id.clone(),
                }),
            );
        }
        Self {
            version: input.version,
            providers,
            callers,
            budgets,
            ledgers_by_id,
            prices: PriceTable::builtin().with_overrides(&input.prices),
        }
    }
}

impl AiRuntime {
    /// Gives back what every budget's allowance holds unspent and unreserved
    /// (the process is stopping); waits at most `within`.
    pub async fn give_back_allowances(&self, within: Duration) {
        let returns: Vec<_> = self
            .ledgers_by_id
            .values()
            .filter_map(|l| l.give_back())
            .collect();
        if returns.is_empty() {
            return;
        }
        match tokio::time::timeout(within, futures::future::join_all(returns)).await {
            Ok(results) => {
                for e in results.into_iter().filter_map(Result::err) {
                    tracing::warn!(error = %e, "could not give back an AI budget allowance; it stays leased until the period ends");
                }
            }
            Err(_) => tracing::warn!("giving back AI budget allowances timed out; what was not given back stays leased until the period ends"),
        }
    }
}

thread_local! {
    /// One HTTP client per gateway worker: its connections belong to the
    /// worker's runtime.
    static CLIENT: RefCell<Option<reqwest::Client>> = const { RefCell::new(None) };
}

fn client() -> Result<reqwest::Client, String> {
    CLIENT.with(|c| {
        let mut c = c.borrow_mut();
        if let Some(c) = c.as_ref() {
            return Ok(c.clone());
        }
        let built = fleetgate_ai::http_client().map_err(|e| e.to_string())?;
        *c = Some(built.clone());
        Ok(built)
    })
}

/// The caller's API key: `Authorization: Bearer <key>`, else `x-api-key`.
fn presented_key(parts: &Parts) -> Option<&str> {
    if let Some(v) = parts.headers.get(header::AUTHORIZATION) {
        let v = v.to_str().ok()?;
        let (scheme, rest) = v.split_once(' ')?;
        return scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim());
    }
    parts
        .headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

fn error(status: StatusCode, code: &str, message: &str) -> Response<ProxyBody> {
    json_error(status, code, message, None)
}

/// What a relayed request has to finish with when its answer ends.
struct Pending {
    gw_events: Option<Arc<dyn fleetgate_core::events::EventSink>>,
    sink: Option<fleetgate_protocol::ai::UsageSink>,
    holds: Vec<Hold>,
    /// The price table in force when the request came, and the model asked
    /// for (priced when the model that answered has no price of its own).
    runtime: Arc<AiRuntime>,
    asked_model: String,
    record: AiUsageRecord,
    started: Instant,
    /// Prompt tokens estimated from the request, for an answer that never came.
    input_estimate: u64,
    /// The record went out.
    done: bool,
}

impl Pending {
    /// Prices what was metered, settles the reservations and sends the record.
    fn finish(&mut self, m: Metered) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let now = fleetgate_core::time::now_ms();
        let r = &mut self.record;
        if r.status == 0 {
            // The client left before the provider's answer began (nginx's 499).
            r.status = 499;
        }
        if let Some(model) = m.model {
            r.model = model;
        }
        r.input_tokens = m.usage.input_tokens;
        r.output_tokens = m.usage.output_tokens;
        r.cached_input_tokens = m.usage.cached_input_tokens;
        r.cache_write_input_tokens = m.usage.cache_write_input_tokens;
        r.reasoning_tokens = m.usage.reasoning_tokens;
        r.estimated = m.estimated;
        r.outcome = m.ending.as_str().into();
        // The provider's own model name may be a dated snapshot; the price of
        // the model asked for applies when the answered one has none.
        let prices = &self.runtime.prices;
        r.cost_micros = prices
            .cost(&r.model, &m.usage)
            .or_else(|| prices.cost(&self.asked_model, &m.usage))
            .unwrap_or(0);
        r.latency_ms = self.started.elapsed().as_millis() as u64;
        let cost = r.cost_micros;
        let route = r.route_id.clone();
        for hold in std::mem::take(&mut self.holds) {
            let ledger = hold.ledger().cloned();
            let crossings = hold.settle(cost, now);
            if let Some(l) = ledger {
                raise(self.gw_events.as_ref(), &route, &l, &crossings, now);
            }
        }
        if let Some(sink) = &self.sink {
            sink.record(self.record.clone());
        }
    }

    /// A request that got no answer to meter: its reservations released
    /// (nothing generated, nothing charged), its record sent.
    fn fail(&mut self, status: StatusCode) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        self.holds.clear();
        self.record.status = status.as_u16();
        self.record.outcome = "provider_error".into();
        self.record.latency_ms = self.started.elapsed().as_millis() as u64;
        if let Some(sink) = &self.sink {
            sink.record(self.record.clone());
        }
    }
}

impl Drop for Pending {
    /// The client went away while the provider was still to answer: the
    /// prompt was sent and may be billed, so it is charged as estimated.
    fn drop(&mut self) {
        if !self.done {
            let usage = fleetgate_ai::Usage {
                input_tokens: self.input_estimate,
                ..Default::default()
            };
            self.finish(Metered {
                usage,
                estimated: true,
                ending: meter::Ending::Cancelled,
                model: None,
            });
        }
    }
}

fn raise(
    sink: Option<&Arc<dyn fleetgate_core::events::EventSink>>,
    route: &str,
    ledger: &BudgetLedger,
    crossings: &[Crossing],
    now: i64,
) {
    if crossings.is_empty() {
        return;
    }
    let name = ledger.name();
    let period_start = ledger.reading(now).period_start;
    for c in crossings {
        let ev = match *c {
            Crossing::Threshold { spent, limit, pct } => NewEvent::new(
                "ai.budget.threshold",
                Severity::Warning,
                format!(
                    "AI budget {name}: ${} spent of ${} ({pct}% threshold reached)",
                    format_usd(spent),
                    format_usd(limit)
                ),
            )
            .details(json!({"budget": name, "spent_usd": format_usd(spent), "limit_usd": format_usd(limit),
                            "threshold_pct": pct, "period_start": fleetgate_core::time::rfc3339(period_start)})),
            Crossing::Exceeded { spent, limit } => NewEvent::new(
                "ai.budget.exceeded",
                Severity::Critical,
                format!(
                    "AI budget {name} is exceeded: ${} spent of ${}",
                    format_usd(spent),
                    format_usd(limit)
                ),
            )
            .details(json!({"budget": name, "spent_usd": format_usd(spent), "limit_usd": format_usd(limit),
                            "period_start": fleetgate_core::time::rfc3339(period_start)})),
        };
        emit(sink, ev.route(route));
    }
}

/// The 429 of a budget that refuses a request: it names the budget, its
/// period, when it resets and what is left; `Retry-After` says when to come
/// back (the reset, or a second for a throttled request).
fn refusal(r: &Refusal, now_ms: i64) -> Response<ProxyBody> {
    let reset_secs = ((r.reset_at_ms - now_ms).max(0) as u64)
        .div_ceil(1000)
        .max(1);
    let (code, message, retry) = if r.throttled {
        (
            "AI_BUDGET_THROTTLED",
            format!(
                "AI budget {:?} ({}) is past its alert threshold and throttled to one request at a time; ${} left until it resets at {}",
                r.budget, r.period, format_usd(r.left), fleetgate_core::time::rfc3339(r.reset_at_ms)
            ),
            1,
        )
    } else {
        (
            "AI_BUDGET_EXCEEDED",
            format!(
                "AI budget {:?} ({}) cannot cover this request: ${} left of ${} until it resets at {}",
                r.budget,
                r.period,
                format_usd(r.left),
                format_usd(r.limit),
                fleetgate_core::time::rfc3339(r.reset_at_ms)
            ),
            reset_secs,
        )
    };
    let mut resp = json_error(
        StatusCode::TOO_MANY_REQUESTS,
        code,
        &message,
        Some((
            "details",
            json!({
                "budget": r.budget,
                "period": r.period,
                "action": r.action.as_str(),
                "limit_usd": format_usd(r.limit),
                "spent_usd": format_usd(r.spent),
                "left_usd": format_usd(r.left),
                "reset_at": fleetgate_core::time::rfc3339(r.reset_at_ms),
            }),
        )),
    );
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(retry));
    resp
}

/// A chat request checked and made ready for the provider.
#[derive(Debug)]
pub struct PreparedChat {
    /// The body to send.
    pub body: Vec<u8>,
    pub model: String,
    pub streamed: bool,
    /// The most output tokens the answer can have: the token limit (the
    /// route's default when the request sets none, the larger one when it
    /// sets both spellings) times the number of choices asked for.
    pub output_bound: u64,
}

/// Most choices (`n`) a request may ask for.
const MAX_CHOICES: u64 = 128;

/// Checks a chat request's body (a JSON object naming a model the route
/// allows, well-typed `stream`, token limits and `n`), sets the token limit
/// when it has none and, on a stream, asks for usage in the last chunk.
/// Errors are `(code, message naming the field)`.
pub fn prepare_chat(
    raw: &[u8],
    ai: &AiRoute,
    kind: ProviderKind,
) -> Result<PreparedChat, (&'static str, String)> {
    let bad = |m: String| ("BAD_REQUEST", m);
    let mut doc: serde_json::Map<String, Value> = match serde_json::from_slice(raw) {
        Ok(Value::Object(o)) => o,
        Ok(_) => return Err(bad("the request body must be a JSON object".into())),
        Err(e) => return Err(bad(format!("the request body is not JSON: {e}"))),
    };
    let model = match doc.get("model").and_then(Value::as_str) {
        Some(m) if !m.is_empty() && m.len() <= 256 => m.to_string(),
        _ => return Err(bad("model: must name a model".into())),
    };
    if !ai.allows(&model) {
        return Err((
            "AI_MODEL_NOT_ALLOWED",
            format!(
                "model: {model:?} is not allowed on this route (allowed: {})",
                ai.models.join(", ")
            ),
        ));
    }
    let streamed = match doc.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(bad("stream: must be true or false".into())),
    };
    let positive = |field: &str, max: u64| -> Result<Option<u64>, (&'static str, String)> {
        match doc.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .filter(|n| (1..=max).contains(n))
                .map(Some)
                .ok_or_else(|| bad(format!("{field}: must be an integer from 1 to {max}"))),
        }
    };
    let limit = u64::from(u32::MAX);
    let asked = match (
        positive("max_completion_tokens", limit)?,
        positive("max_tokens", limit)?,
    ) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    let choices = positive("n", MAX_CHOICES)?.unwrap_or(1);
    let max_tokens = match asked {
        Some(n) => n,
        None => {
            let n = u64::from(ai.default_max_tokens);
            let field = if kind == ProviderKind::OpenAi {
                "max_completion_tokens"
            } else {
                "max_tokens"
            };
            doc.insert(field.into(), json!(n));
            n
        }
    };
    if streamed {
        match doc.entry("stream_options").or_insert_with(|| json!({})) {
            Value::Object(o) => {
                o.insert("include_usage".into(), Value::Bool(true));
            }
            _ => return Err(bad("stream_options: must be an object".into())),
        }
    }
    let body = serde_json::to_vec(&Value::Object(doc))
        .map_err(|_| bad("the request body cannot be encoded again".into()))?;
    Ok(PreparedChat {
        body,
        model,
        streamed,
        output_bound: max_tokens * choices,
    })
}

/// Relays one request of an `ai` route.
pub(crate) async fn forward(
    gw: &GatewayInner,
    route_id: &str,
    ai: &AiRoute,
    parts: &mut Parts,
    body: Option<Incoming>,
    max_body: Option<u64>,
) -> Response<ProxyBody> {
    let started = Instant::now();
    let at_ms = fleetgate_core::time::now_ms();
    let rt = gw.ai.load_full();
    let path = parts.uri.path();
    let chat = path.ends_with("/chat/completions");
    let models = path.ends_with("/models");
    if !chat && !models {
        return error(
            StatusCode::NOT_FOUND,
            "AI_ENDPOINT_NOT_FOUND",
            &format!("{path} is not an endpoint of this AI route; it serves …/chat/completions and …/models"),
        );
    }
    // 1. The caller.
    let Some(key) = presented_key(parts) else {
        return error(
            StatusCode::UNAUTHORIZED,
            "AI_KEY_REQUIRED",
            "an API key is required: Authorization: Bearer <key> or x-api-key",
        );
    };
    let hash = hex::encode(Sha256::digest(key.as_bytes()));
    let Some(caller) = rt.callers.get(&hash) else {
        return error(
            StatusCode::UNAUTHORIZED,
            "AI_KEY_INVALID",
            "the API key is not valid",
        );
    };
    let Some(provider) = rt.providers.get(&ai.provider).cloned() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "AI_PROVIDER_UNAVAILABLE",
            &format!(
                "AI provider {:?} is not available here: it is not configured or is disabled, or this data plane is a remote edge (ai routes are served by the built-in gateway of the manager's process only, for now)",
                ai.provider
            ),
        );
    };
    let Some(kind) = provider.kind else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "AI_PROVIDER_UNAVAILABLE",
            &format!(
                "AI provider {} is of an unknown kind {:?}",
                provider.name, provider.kind_name
            ),
        );
    };
    let client = match client() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "no HTTP client for the AI gateway");
            return error(
                StatusCode::BAD_GATEWAY,
                "AI_PROVIDER_UNREACHABLE",
                "the gateway cannot build its HTTP client",
            );
        }
    };
    if models {
        if parts.method != Method::GET {
            return error(
                StatusCode::METHOD_NOT_ALLOWED,
                "METHOD_NOT_ALLOWED",
                "…/models takes GET",
            );
        }
        let url = fleetgate_ai::wire::models_url(kind, &provider.base_url);
        let req = provider.authorized(client.get(url));
        return match tokio::time::timeout(provider.timeout, async {
            let resp = req.send().await?;
            let status = resp.status();
            let ct = resp.headers().get(header::CONTENT_TYPE).cloned();
            resp.bytes().await.map(|b| (status, ct, b))
        })
        .await
        {
            Ok(Ok((status, _, bytes))) if !kind.speaks_openai() => {
                let bytes = provider.scrubbed(bytes);
                translated_answer(status, kind, &bytes, |b| {
                    let ids = fleetgate_ai::wire::parse_models(kind, b).ok()?;
                    Some(json!({"object": "list", "data": ids.iter()
                        .map(|id| json!({"id": id, "object": "model", "owned_by": provider.kind_name}))
                        .collect::<Vec<_>>()}))
                })
            }
            Ok(Ok((status, ct, bytes))) => {
                let mut r = Response::new(Either::Right(Full::new(provider.scrubbed(bytes))));
                *r.status_mut() = status;
                if let Some(ct) = ct {
                    r.headers_mut().insert(header::CONTENT_TYPE, ct);
                }
                r
            }
            _ => error(
                StatusCode::BAD_GATEWAY,
                "AI_PROVIDER_UNREACHABLE",
                &format!("AI provider {} did not answer", provider.name),
            ),
        };
    }
    if parts.method != Method::POST {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            "METHOD_NOT_ALLOWED",
            "…/chat/completions takes POST",
        );
    }

    // 2. The request.
    let limit = max_body
        .map(|m| m.min(usize::MAX as u64) as usize)
        .unwrap_or(DEFAULT_MAX_BODY);
    let raw = match body {
        None => Bytes::new(),
        Some(b) => {
            match tokio::time::timeout(gw.client_body_timeout, Limited::new(b, limit).collect())
                .await
            {
                Ok(Ok(c)) => c.to_bytes(),
                Ok(Err(e))
                    if e.downcast_ref::<http_body_util::LengthLimitError>()
                        .is_some() =>
                {
                    return error(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "PAYLOAD_TOO_LARGE",
                        &format!("request bodies on this route are limited to {limit} bytes"),
                    )
                }
                _ => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "BAD_REQUEST",
                        "the request body could not be read",
                    )
                }
            }
        }
    };
    let chat = match prepare_chat(&raw, ai, kind) {
        Ok(c) => c,
        Err((code, message)) => return error(StatusCode::BAD_REQUEST, code, &message),
    };
    let PreparedChat {
        body: out,
        model,
        streamed,
        output_bound,
    } = chat;
    // Every byte of the body counted as a prompt token: more than a text
    // prompt can hold, so the reservation is never below the real cost.
    let input_bound = raw.len() as u64;
    // Other providers' requests are written from the OpenAI one: text only.
    let translated = if kind.speaks_openai() {
        None
    } else {
        match translate_request(&raw, &model, output_bound).and_then(|r| {
            fleetgate_ai::wire::chat_call(kind, &provider.base_url, &r, streamed)
                .map_err(|e| e.to_string())
        }) {
            Ok(call) => Some(call),
            Err(m) => return error(StatusCode::BAD_REQUEST, "AI_REQUEST_UNSUPPORTED", &m),
        }
    };

    // 3. Budgets.
    let applicable: Vec<&Arc<BudgetRt>> = {
        let mut v = Vec::with_capacity(ai.budgets.len());
        for name in &ai.budgets {
            match rt.budgets.get(name) {
                Some(b) if b.api_key_id.as_ref().is_none_or(|k| *k == caller.id) => v.push(b),
                Some(_) => {}
                None => {
                    return error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "AI_BUDGET_UNKNOWN",
                        &format!("AI budget {name:?} named by this route does not exist; requests are refused until it does"),
                    )
                }
            }
        }
        v
    };
    let worst = match rt.prices.worst_case(&model, input_bound, output_bound) {
        Some(w) => w,
        None if applicable.is_empty() => 0,
        None => {
            return error(
                StatusCode::BAD_REQUEST,
                "AI_MODEL_UNPRICED",
                &format!(
                "model: {model:?} has no price, so the budgets of this route cannot be enforced"
            ),
            )
        }
    };
    let mut holds = Vec::with_capacity(applicable.len());
    for b in &applicable {
        match b.ledger.acquire(worst, at_ms).await {
            Ok(hold) => holds.push(hold),
            Err((r, crossing)) => {
                if let Some(c) = crossing {
                    raise(gw.events.as_ref(), route_id, &b.ledger, &[c], at_ms);
                }
                // The holds taken so far are released as they drop.
                return refusal(&r, at_ms);
            }
        }
    }
    let budgets_charged = holds
        .iter()
        .filter_map(|h| h.ledger().map(|l| (l.id(), h.period_start())))
        .collect();

    // 4. The exchange.
    let record = AiUsageRecord {
        id: uuid::Uuid::new_v4().to_string(),
        at_ms,
        route_id: route_id.to_string(),
        api_key_id: caller.id.clone(),
        provider_id: provider.id.clone(),
        model: model.clone(),
        input_tokens: 0,
        output_tokens: 0,
        cached_input_tokens: 0,
        cache_write_input_tokens: 0,
        reasoning_tokens: 0,
        cost_micros: 0,
        status: 0,
        outcome: String::new(),
        latency_ms: 0,
        streamed,
        estimated: false,
        budgets: budgets_charged,
    };
    let pending = Pending {
        gw_events: gw.events.clone(),
        sink: gw.ai_usage.clone(),
        holds,
        runtime: rt.clone(),
        asked_model: model.clone(),
        record,
        started,
        input_estimate: input_bound.div_ceil(4),
        done: false,
    };
    if let Some(call) = translated {
        if streamed {
            return relay_translated_stream(pending, &client, &provider, kind, call, &model).await;
        }
        return relay_translated(pending, &client, &provider, kind, call, &model).await;
    }
    let mut req = provider.authorized(
        client
            .post(format!("{}/chat/completions", provider.base_url))
            .header(header::CONTENT_TYPE, "application/json")
            .body(out),
    );
    if streamed {
        req = req.header(header::ACCEPT, "text/event-stream");
    }
    let (mut pending, resp) = match send(pending, &provider, req).await {
        Ok(sent) => sent,
        Err(answer) => return answer,
    };
    let status = resp.status();
    pending.record.status = status.as_u16();
    let content_type = resp.headers().get(header::CONTENT_TYPE).cloned();
    if !status.is_success() {
        // The provider refused: nothing generated, nothing charged; its error
        // body is relayed as it is.
        pending.fail(status);
        let bytes = tokio::time::timeout(provider.timeout, resp.bytes())
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        let bytes = provider.scrubbed(bytes);
        let mut r = Response::new(Either::Right(Full::new(bytes)));
        *r.status_mut() = status;
        if let Some(ct) = content_type {
            r.headers_mut().insert(header::CONTENT_TYPE, ct);
        }
        return r;
    }
    let chunks = provider_chunks(resp, provider.timeout);
    let body = MeteredBody::new(
        chunks,
        kind,
        &model,
        streamed,
        input_bound.div_ceil(4),
        Box::new(move |m| {
            let mut pending = pending;
            pending.finish(m);
        }),
    );
    let mut r = Response::new(Either::Left(PooledBody::Relayed(Box::pin(body))));
    *r.status_mut() = status;
    let h = r.headers_mut();
    if let Some(ct) = content_type {
        h.insert(header::CONTENT_TYPE, ct);
    }
    if streamed {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    }
    r
}

/// The provider's body as it arrives; a pause longer than `idle` between two
/// chunks is an error (the provider stalled).
fn provider_chunks(resp: reqwest::Response, idle: Duration) -> meter::ChunkStream {
    Box::pin(futures::stream::unfold(
        Some(resp),
        move |state| async move {
            let mut resp = state?;
            match tokio::time::timeout(idle, resp.chunk()).await {
                Ok(Ok(Some(c))) => Some((Ok(c), Some(resp))),
                Ok(Ok(None)) => None,
                Ok(Err(e)) => Some((Err(BoxError::from(e)), None)),
                Err(_) => Some((
                    Err(BoxError::from("the AI provider stalled mid-answer")),
                    None,
                )),
            }
        },
    ))
}

/// Sends a streamed request written for an Anthropic or Gemini provider and
/// relays its stream as OpenAI chunks, event by event, metered from the
/// provider's own usage (see [`meter::MeteredBody::relayed`]). A refusal
/// before the stream starts comes back whole, in OpenAI's error shape.
async fn relay_translated_stream(
    pending: Pending,
    client: &reqwest::Client,
    provider: &ProviderRt,
    kind: ProviderKind,
    call: fleetgate_ai::wire::ChatCall,
    model: &str,
) -> Response<ProxyBody> {
    let req = provider.authorized(
        client
            .post(&call.url)
            .header(header::ACCEPT, "text/event-stream")
            .json(&call.body),
    );
    let (mut pending, resp) = match send(pending, provider, req).await {
        Ok(sent) => sent,
        Err(answer) => return answer,
    };
    let status = resp.status();
    pending.record.status = status.as_u16();
    if !status.is_success() {
        pending.fail(status);
        let bytes = tokio::time::timeout(provider.timeout, resp.bytes())
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        return translated_answer(status, kind, &provider.scrubbed(bytes), |_| None);
    }
    let relay = fleetgate_ai::wire::ChunkRelay::new(
        kind,
        model,
        format!("chatcmpl-{}", uuid::Uuid::new_v4().simple()),
        fleetgate_core::time::now_ms() / 1000,
        fleetgate_ai::wire::MAX_RELAY_EVENT_BYTES,
    );
    let input_estimate = pending.input_estimate;
    let body = MeteredBody::relayed(
        provider_chunks(resp, provider.timeout),
        relay,
        input_estimate,
        Box::new(move |m| {
            let mut pending = pending;
            pending.finish(m);
        }),
        Bytes::copy_from_slice(provider.key_bytes()),
    );
    let mut r = Response::new(Either::Left(PooledBody::Relayed(Box::pin(body))));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    r
}

/// A request that never got an answer: its reservations released, its usage
/// record (nothing generated; the prompt estimated) sent, the gateway's error.
/// An OpenAI chat request as Fleetgate's provider-neutral [`ChatRequest`]:
/// system (and developer) messages become the system prompt, user and
/// assistant messages the conversation; text only (a string, or `text`
/// parts), one choice, no tools.
pub fn translate_request(
    raw: &[u8],
    model: &str,
    max_tokens: u64,
) -> Result<fleetgate_ai::ChatRequest, String> {
    use fleetgate_ai::{ChatMessage, ChatRequest};
    let doc: serde_json::Map<String, Value> = match serde_json::from_slice(raw) {
        Ok(Value::Object(o)) => o,
        _ => return Err("the request body must be a JSON object".into()),
    };
    for field in ["tools", "functions", "tool_choice", "logprobs", "audio"] {
        if doc.get(field).is_some_and(|v| !v.is_null()) {
            return Err(format!(
                "{field}: not relayed to this provider (only text chat is, for now)"
            ));
        }
    }
    if doc.get("n").and_then(Value::as_u64).is_some_and(|n| n > 1) {
        return Err("n: this provider answers one choice".into());
    }
    let Some(messages) = doc.get("messages").and_then(Value::as_array) else {
        return Err("messages: must be a list of messages".into());
    };
    let mut system: Vec<String> = Vec::new();
    let mut conversation = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        let text = match m.get("content") {
            Some(Value::String(t)) => t.clone(),
            Some(Value::Array(parts)) => {
                let mut t = String::new();
                for (j, p) in parts.iter().enumerate() {
                    match (p.get("type").and_then(Value::as_str), p.get("text").and_then(Value::as_str)) {
                        (Some("text") | None, Some(x)) => t.push_str(x),
                        _ => {
                            return Err(format!(
                                "messages[{i}].content[{j}]: only text parts are relayed to this provider"
                            ))
                        }
                    }
                }
                t
            }
            _ => return Err(format!("messages[{i}].content: must be text")),
        };
        match m.get("role").and_then(Value::as_str) {
            Some("system" | "developer") => system.push(text),
            Some("user") => conversation.push(ChatMessage::user(text)),
            Some("assistant") => conversation.push(ChatMessage::assistant(text)),
            _ => {
                return Err(format!(
                    "messages[{i}].role: must be system, developer, user or assistant for this provider"
                ))
            }
        }
    }
    if conversation.is_empty() {
        return Err("messages: must hold a user message".into());
    }
    let temperature = match doc.get("temperature") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_f64()
                .filter(|t| (0.0..=2.0).contains(t))
                .ok_or("temperature: must be a number from 0 to 2")? as f32,
        ),
    };
    let json_output = doc
        .get("response_format")
        .and_then(|f| f.get("type"))
        .and_then(Value::as_str)
        .is_some_and(|t| t == "json_object" || t == "json_schema");
    Ok(ChatRequest {
        model: model.to_string(),
        system: (!system.is_empty()).then(|| system.join("\n\n")),
        messages: conversation,
        max_tokens: Some(u32::try_from(max_tokens).unwrap_or(u32::MAX)),
        temperature,
        json_output,
        tools: Vec::new(),
    })
}

/// An OpenAI answer (`convert` on a success), or the provider's error in
/// OpenAI's error shape, with the provider's status.
fn translated_answer(
    status: StatusCode,
    kind: ProviderKind,
    body: &[u8],
    convert: impl FnOnce(&[u8]) -> Option<Value>,
) -> Response<ProxyBody> {
    let (status, v) = if status.is_success() {
        match convert(body) {
            Some(v) => (status, v),
            None => (
                StatusCode::BAD_GATEWAY,
                json!({"error": {"message": format!("the {kind} provider's answer could not be read"), "type": "provider_error", "code": "AI_PROVIDER_MALFORMED"}}),
            ),
        }
    } else {
        (
            status,
            json!({"error": {"message": fleetgate_ai::wire::error_message(body), "type": "provider_error", "code": "AI_PROVIDER_ERROR"}}),
        )
    };
    let mut r = Response::new(Either::Right(Full::new(Bytes::from(v.to_string()))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// A completion in OpenAI's chat completion shape.
fn openai_completion(c: &fleetgate_ai::Completion) -> Value {
    let u = &c.usage;
    json!({
        "id": c.response_id.clone().unwrap_or_else(|| format!("chatcmpl-{}", uuid::Uuid::new_v4().simple())),
        "object": "chat.completion",
        "created": fleetgate_core::time::now_ms() / 1000,
        "model": c.model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": c.text},
                     "finish_reason": c.finish_reason.as_str()}],
        "usage": fleetgate_ai::wire::openai_usage(u),
    })
}

/// Sends a request written for an Anthropic or Gemini provider and answers
/// in OpenAI's shape, metered from the provider's own usage.
async fn relay_translated(
    mut pending: Pending,
    client: &reqwest::Client,
    provider: &ProviderRt,
    kind: ProviderKind,
    call: fleetgate_ai::wire::ChatCall,
    model: &str,
) -> Response<ProxyBody> {
    let req = provider.authorized(client.post(&call.url).json(&call.body));
    let answer = tokio::time::timeout(provider.timeout, async {
        let resp = req.send().await?;
        let status = resp.status();
        resp.bytes().await.map(|b| (status, b))
    })
    .await;
    let (status, bytes) = match answer {
        Ok(Ok((status, bytes))) => (status, provider.scrubbed(bytes)),
        Ok(Err(e)) => {
            tracing::warn!(provider = %provider.name, error = %e, "AI provider unreachable");
            return failed(
                pending,
                StatusCode::BAD_GATEWAY,
                "AI_PROVIDER_UNREACHABLE",
                &format!("AI provider {} could not be reached", provider.name),
            );
        }
        Err(_) => {
            return failed(
                pending,
                StatusCode::GATEWAY_TIMEOUT,
                "AI_PROVIDER_TIMEOUT",
                &format!("AI provider {} did not answer in time", provider.name),
            );
        }
    };
    pending.record.status = status.as_u16();
    if !status.is_success() {
        pending.fail(status);
        return translated_answer(status, kind, &bytes, |_| None);
    }
    match fleetgate_ai::wire::parse_completion(kind, &bytes, model) {
        Ok(c) => {
            let reported = c.usage.input_tokens > 0 || c.usage.output_tokens > 0;
            let usage = if reported {
                c.usage
            } else {
                fleetgate_ai::Usage {
                    input_tokens: pending.input_estimate,
                    output_tokens: (c.text.len() as u64).div_ceil(4),
                    ..Default::default()
                }
            };
            pending.finish(Metered {
                usage,
                estimated: !reported,
                ending: meter::Ending::Complete,
                model: Some(c.model.clone()).filter(|m| !m.is_empty()),
            });
            translated_answer(status, kind, &bytes, |_| Some(openai_completion(&c)))
        }
        Err(e) => {
            tracing::warn!(provider = %provider.name, error = %e, "AI provider answer unreadable");
            // Something was generated and may be billed: priced as estimated.
            pending.record.status = StatusCode::BAD_GATEWAY.as_u16();
            pending.finish(Metered {
                usage: fleetgate_ai::Usage {
                    input_tokens: pending.input_estimate,
                    output_tokens: (bytes.len() as u64).div_ceil(4),
                    ..Default::default()
                },
                estimated: true,
                ending: meter::Ending::Cut,
                model: None,
            });
            translated_answer(StatusCode::OK, kind, &bytes, |_| None)
        }
    }
}

/// Sends `req` to the provider within its timeout: the answer's head with
/// `pending` back, or the gateway's own answer when the provider could not be
/// reached or did not answer in time (the reservation released).
async fn send(
    pending: Pending,
    provider: &ProviderRt,
    req: reqwest::RequestBuilder,
) -> Result<(Pending, reqwest::Response), Response<ProxyBody>> {
    match tokio::time::timeout(provider.timeout, req.send()).await {
        Ok(Ok(r)) => Ok((pending, r)),
        Ok(Err(e)) => {
            tracing::warn!(provider = %provider.name, error = %e, "AI provider unreachable");
            Err(failed(
                pending,
                StatusCode::BAD_GATEWAY,
                "AI_PROVIDER_UNREACHABLE",
                &format!("AI provider {} could not be reached", provider.name),
            ))
        }
        Err(_) => Err(failed(
            pending,
            StatusCode::GATEWAY_TIMEOUT,
            "AI_PROVIDER_TIMEOUT",
            &format!(
                "AI provider {} did not answer within {} ms",
                provider.name,
                provider.timeout.as_millis()
            ),
        )),
    }
}

fn failed(
    mut pending: Pending,
    status: StatusCode,
    code: &str,
    message: &str,
) -> Response<ProxyBody> {
    pending.fail(status);
    error(status, code, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn route(models: &[&str]) -> AiRoute {
        AiRoute {
            provider: "p".into(),
            models: models.iter().map(|m| m.to_string()).collect(),
            budgets: vec![],
            default_max_tokens: 500,
        }
    }

    fn body_of(p: &PreparedChat) -> Value {
        serde_json::from_slice(&p.body).expect("json")
    }

    #[test]
    fn limits_and_stream_usage_are_set() {
        let r = route(&[]);
        let p = prepare_chat(
            br#"{"model":"m","stream":true,"messages":[]}"#,
            &r,
            ProviderKind::OpenAiCompatible,
        )
        .expect("ok");
        let b = body_of(&p);
        assert_eq!(b["max_tokens"], 500);
        assert_eq!(b["stream_options"]["include_usage"], true);
        assert_eq!((p.streamed, p.output_bound), (true, 500));
        let p = prepare_chat(
            br#"{"model":"m","max_tokens":10,"max_completion_tokens":300,"n":3,"stream_options":{"x":1}}"#,
            &r,
            ProviderKind::OpenAi,
        )
        .expect("ok");
        assert_eq!(p.output_bound, 900, "the larger limit, times the choices");
        assert!(!p.streamed);
        assert_eq!(body_of(&p)["stream_options"], json!({"x": 1}));
        let p = prepare_chat(br#"{"model":"m"}"#, &r, ProviderKind::OpenAi).expect("ok");
        assert_eq!(body_of(&p)["max_completion_tokens"], 500);
    }

    #[test]
    fn bad_bodies_name_their_field() {
        let r = route(&["gpt-4o"]);
        for (body, code, field) in [
            (&b"[1]"[..], "BAD_REQUEST", "JSON object"),
            (b"{", "BAD_REQUEST", "not JSON"),
            (br#"{"model":""}"#, "BAD_REQUEST", "model"),
            (br#"{"model":"o3"}"#, "AI_MODEL_NOT_ALLOWED", "model"),
            (br#"{"model":"gpt-4o","stream":1}"#, "BAD_REQUEST", "stream"),
            (
                br#"{"model":"gpt-4o","max_tokens":0}"#,
                "BAD_REQUEST",
                "max_tokens",
            ),
            (br#"{"model":"gpt-4o","n":1000}"#, "BAD_REQUEST", "n:"),
            (
                br#"{"model":"GPT-4o","stream":true,"stream_options":3}"#,
                "BAD_REQUEST",
                "stream_options",
            ),
        ] {
            let (c, m) = prepare_chat(body, &r, ProviderKind::OpenAi).expect_err("refused");
            assert_eq!(c, code, "{m}");
            assert!(m.contains(field), "{m}");
        }
    }

    #[test]
    fn openai_requests_translate_to_text_chat() {
        let r = translate_request(
            br#"{"model":"m","temperature":0.5,"response_format":{"type":"json_object"},"messages":[
                {"role":"system","content":"a"},{"role":"developer","content":"b"},
                {"role":"user","content":[{"type":"text","text":"x"},{"text":"y"}]},
                {"role":"assistant","content":"z"}]}"#,
            "m",
            300,
        )
        .expect("translated");
        assert_eq!(r.system.as_deref(), Some("a\n\nb"));
        assert_eq!(r.messages.len(), 2);
        assert_eq!(r.messages[0].content, "xy");
        assert_eq!((r.max_tokens, r.json_output), (Some(300), true));
        for (body, field) in [
            (
                &br#"{"messages":[{"role":"tool","content":"x"}]}"#[..],
                "messages[0].role",
            ),
            (
                br#"{"messages":[{"role":"user","content":[{"type":"image_url"}]}]}"#,
                "messages[0].content[0]",
            ),
            (
                br#"{"messages":[{"role":"system","content":"only"}]}"#,
                "user message",
            ),
            (
                br#"{"messages":[{"role":"user","content":"x"}],"n":2}"#,
                "n:",
            ),
            (
                br#"{"messages":[{"role":"user","content":"x"}],"temperature":9}"#,
                "temperature",
            ),
            (br#"{"tools":[],"messages":[]}"#, "tools"),
            (br#"{}"#, "messages"),
        ] {
            let e = translate_request(body, "m", 1).expect_err("refused");
            assert!(e.contains(field), "{e}");
        }
    }

    proptest! {
        /// Any bytes given to the translation: a request or a refusal, never a panic.
        #[test]
        fn any_body_translates_or_is_refused(raw in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = translate_request(&raw, "m", 10);
        }

        /// Any bytes: an answer, never a panic; whatever is accepted goes
        /// out as a JSON object with a token limit, asking for usage when
        /// streamed, and its output bound covers every choice.
        #[test]
        fn any_body_is_prepared_or_refused(
            raw in proptest::collection::vec(any::<u8>(), 0..300),
            max in proptest::option::of(0u64..5_000_000_000),
            n in proptest::option::of(0u64..300),
            stream in any::<bool>(),
        ) {
            let r = route(&[]);
            let _ = prepare_chat(&raw, &r, ProviderKind::OpenAi);
            let mut v = json!({"model": "m", "stream": stream});
            if let Some(m) = max { v["max_tokens"] = json!(m); }
            if let Some(n) = n { v["n"] = json!(n); }
            let raw = serde_json::to_vec(&v).expect("json");
            match prepare_chat(&raw, &r, ProviderKind::OpenAiCompatible) {
                Ok(p) => {
                    let b = body_of(&p);
                    let limit = b["max_tokens"].as_u64().expect("a limit");
                    prop_assert_eq!(p.output_bound, limit * n.unwrap_or(1));
                    prop_assert_eq!(b["stream_options"]["include_usage"] == true, stream);
                }
                Err((code, _)) => {
                    prop_assert_eq!(code, "BAD_REQUEST");
                    prop_assert!(max.is_some_and(|m| m == 0 || m > u64::from(u32::MAX)) || n.is_some_and(|n| n == 0 || n > MAX_CHOICES));
                }
            }
        }
    }
}
