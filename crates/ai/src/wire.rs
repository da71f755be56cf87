//! The three wire formats: how a [`ChatRequest`] is written for each provider,
//! and how its answers — whole, streamed, listed models, errors — are read back
//! into a [`Completion`]. Pure functions over bytes and JSON, no I/O: the
//! client sends what they build, and the gateway can meter what it relays with
//! the same [`StreamParser`].

mod anthropic;
mod gemini;
mod openai;
mod relay;

pub use anthropic::API_VERSION as ANTHROPIC_VERSION;
pub use relay::{openai_usage, ChunkRelay, RelayState, MAX_RELAY_EVENT_BYTES};

use serde_json::Value;

use crate::sse::SseEvent;
use crate::{AiError, ChatRequest, Completion, FinishReason, ProviderKind, ToolCall, Usage};

/// The request to send: where, and the JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatCall {
    pub url: String,
    pub body: Value,
}

/// The chat request for `kind` at `base` (no trailing slash).
pub fn chat_call(
    kind: ProviderKind,
    base: &str,
    req: &ChatRequest,
    stream: bool,
) -> Result<ChatCall, AiError> {
    match kind {
        ProviderKind::OpenAi | ProviderKind::OpenAiCompatible => {
            Ok(openai::chat_call(kind, base, req, stream))
        }
        ProviderKind::Anthropic => Ok(anthropic::chat_call(base, req, stream)),
        ProviderKind::Gemini => gemini::chat_call(base, req, stream),
    }
}

/// Reads a whole (not streamed) answer. `asked` is the model asked for, used
/// when the answer does not name one.
pub fn parse_completion(
    kind: ProviderKind,
    body: &[u8],
    asked: &str,
) -> Result<Completion, AiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| AiError::Malformed(format!("the answer is not JSON ({e})")))?;
    if let Some(message) = embedded_error(&v) {
        return Err(AiError::Provider {
            status: None,
            message,
        });
    }
    let mut c = match kind {
        ProviderKind::OpenAi | ProviderKind::OpenAiCompatible => openai::parse_completion(&v)?,
        ProviderKind::Anthropic => anthropic::parse_completion(&v)?,
        ProviderKind::Gemini => gemini::parse_completion(&v)?,
    };
    if c.model.is_empty() {
        c.model = asked.to_string();
    }
    Ok(c)
}

/// Where the provider lists its models (the cheap call a health check makes).
pub fn models_url(kind: ProviderKind, base: &str) -> String {
    match kind {
        ProviderKind::OpenAi | ProviderKind::OpenAiCompatible => format!("{base}/models"),
        ProviderKind::Anthropic => format!("{base}/v1/models"),
        ProviderKind::Gemini => format!("{base}/v1beta/models"),
    }
}

/// The model ids of a model listing.
pub fn parse_models(kind: ProviderKind, body: &[u8]) -> Result<Vec<String>, AiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| AiError::Malformed(format!("the model list is not JSON ({e})")))?;
    let (list, field) = match kind {
        ProviderKind::Gemini => (v.get("models"), "name"),
        _ => (v.get("data"), "id"),
    };
    let Some(list) = list.and_then(Value::as_array) else {
        return Err(AiError::Malformed(
            "the model list has no list of models".into(),
        ));
    };
    Ok(list
        .iter()
        .filter_map(|m| m.get(field).and_then(Value::as_str))
        .map(|id| id.strip_prefix("models/").unwrap_or(id).to_string())
        .collect())
}

/// The message of an error answer, in any of the three formats (all put it at
/// `error.message`), or the start of the body when it is not JSON.
pub fn error_message(body: &[u8]) -> String {
    const MAX: usize = 500;
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        if let Some(m) = embedded_error(&v) {
            return truncate(&m, MAX);
        }
        if let Some(m) = v.get("message").and_then(Value::as_str) {
            return truncate(m, MAX);
        }
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        "no details given".into()
    } else {
        truncate(text, MAX)
    }
}

/// An `{"error": …}` object: every provider's way of saying it failed.
fn embedded_error(v: &Value) -> Option<String> {
    let e = v.get("error")?;
    match e {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => Some(
            o.get("message")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| e.to_string()),
        ),
        _ => None,
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Reads a streamed answer event by event, as it arrives: each event gives
/// the text it adds, and at the end the whole [`Completion`] (text, usage,
/// model, finish reason), even when the stream was cut short.
#[derive(Debug)]
pub struct StreamParser {
    kind: ProviderKind,
    text: String,
    model: String,
    response_id: Option<String>,
    finish: Option<FinishReason>,
    usage: Usage,
    /// The provider said the answer is over.
    done: bool,
    /// Anthropic reports the prompt at the start and the output at the end.
    anthropic: anthropic::Counts,
    /// Tool calls as they arrive: OpenAI and Anthropic stream a call's
    /// arguments in fragments, appended here until the answer ends.
    tool_calls: Vec<ToolCall>,
    /// The stream's index of each call (OpenAI's `index`, Anthropic's content
    /// block index) → its place in `tool_calls`.
    tool_slots: Vec<(u64, usize)>,
}

impl StreamParser {
    /// `asked` is the model asked for, used when the stream never names one.
    pub fn new(kind: ProviderKind, asked: &str) -> Self {
        Self {
            kind,
            text: String::new(),
            model: asked.to_string(),
            response_id: None,
            finish: None,
            usage: Usage::default(),
            done: false,
            anthropic: anthropic::Counts::default(),
            tool_calls: Vec::new(),
            tool_slots: Vec::new(),
        }
    }

    /// The call at stream index `index`, made (with `id` or a made-up one)
    /// when it is new.
    fn tool_slot(&mut self, index: u64, id: Option<String>) -> &mut ToolCall {
        let pos = match self.tool_slots.iter().find(|(i, _)| *i == index) {
            Some((_, pos)) => *pos,
            None => {
                let pos = self.tool_calls.len();
                self.tool_calls.push(ToolCall {
                    id: id
                        .filter(|s| !s.is_empty())
                        .unwrap_or_else(|| made_up_id(pos)),
                    name: String::new(),
                    arguments: String::new(),
                });
                self.tool_slots.push((index, pos));
                pos
            }
        };
        &mut self.tool_calls[pos]
    }

    /// Reads one event; returns the text it adds (empty when it adds none). An
    /// error the provider sends inside the stream is an [`AiError::Provider`].
    pub fn feed(&mut self, event: &SseEvent) -> Result<String, AiError> {
        let delta = match self.kind {
            ProviderKind::OpenAi | ProviderKind::OpenAiCompatible => openai::feed(self, event)?,
            ProviderKind::Anthropic => anthropic::feed(self, event)?,
            ProviderKind::Gemini => gemini::feed(self, event)?,
        };
        self.text.push_str(&delta);
        Ok(delta)
    }

    /// Whether the provider said the answer is complete.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// The usage counted so far.
    pub fn usage(&self) -> Usage {
        self.usage
    }

    /// The model answering: the one the stream named, else the one asked for.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// Bytes of text read so far.
    pub fn text_len(&self) -> usize {
        self.text.len()
    }

    /// Why the answer stopped, once the provider said.
    pub fn finish_reason(&self) -> Option<&FinishReason> {
        self.finish.as_ref()
    }

    /// The answer as far as it went.
    pub fn completion(&self) -> Completion {
        Completion {
            text: self.text.clone(),
            model: self.model.clone(),
            finish_reason: self.finish.clone().unwrap_or(FinishReason::Unknown),
            usage: self.usage,
            response_id: self.response_id.clone(),
            tool_calls: self
                .tool_calls
                .iter()
                .map(|c| ToolCall {
                    // A call whose arguments never came has none.
                    arguments: if c.arguments.is_empty() {
                        "{}".into()
                    } else {
                        c.arguments.clone()
                    },
                    ..c.clone()
                })
                .collect(),
        }
    }

    fn json(event: &SseEvent) -> Result<Value, AiError> {
        let v: Value = serde_json::from_str(&event.data)
            .map_err(|e| AiError::Malformed(format!("a stream event is not JSON ({e})")))?;
        if let Some(message) = embedded_error(&v) {
            return Err(AiError::Provider {
                status: None,
                message: truncate(&message, 500),
            });
        }
        Ok(v)
    }
}

/// A JSON number as a token count (absent, negative or not a number: 0).
fn count(v: Option<&Value>) -> u64 {
    v.and_then(Value::as_u64).unwrap_or(0)
}

fn text_of(v: Option<&Value>) -> Option<String> {
    v.and_then(Value::as_str).map(str::to_string)
}

/// Arguments as JSON text: a string is taken as the model wrote it (OpenAI
/// sends them so; a misbehaving server may do it in the other formats too),
/// anything else is written out as JSON.
fn arguments_text(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        None | Some(Value::Null) => "{}".into(),
        Some(other) => other.to_string(),
    }
}

/// Arguments as the JSON object Anthropic's `input` and Gemini's `args` must
/// be (both refuse anything else): the parsed arguments when they are an
/// object, else the text the model wrote under `_invalid_arguments`, so that
/// the conversation stays acceptable and the model still sees what it wrote.
fn arguments_value(call: &ToolCall) -> Value {
    match serde_json::from_str::<Value>(&call.arguments) {
        Ok(v @ Value::Object(_)) => v,
        _ => serde_json::json!({ "_invalid_arguments": call.arguments }),
    }
}

/// A call id for a provider that gives none: its place in the answer.
fn made_up_id(i: usize) -> String {
    format!("call_{i}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_messages_of_every_format() {
        assert_eq!(
            error_message(br#"{"error":{"message":"Incorrect API key provided","type":"invalid_request_error"}}"#),
            "Incorrect API key provided"
        );
        assert_eq!(
            error_message(br#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}"#),
            "invalid x-api-key"
        );
        assert_eq!(
            error_message(br#"{"error":{"code":400,"message":"API key not valid","status":"INVALID_ARGUMENT"}}"#),
            "API key not valid"
        );
        assert_eq!(
            error_message(b"<html>bad gateway</html>"),
            "<html>bad gateway</html>"
        );
        assert_eq!(error_message(b""), "no details given");
        assert!(error_message(&[b'x'; 2000]).chars().count() <= 501);
    }

    #[test]
    fn model_lists() {
        let oa = br#"{"object":"list","data":[{"id":"gpt-4o","object":"model"},{"id":"o3"}]}"#;
        assert_eq!(
            parse_models(ProviderKind::OpenAi, oa).expect("list"),
            ["gpt-4o", "o3"]
        );
        let g = br#"{"models":[{"name":"models/gemini-2.0-flash"}]}"#;
        assert_eq!(
            parse_models(ProviderKind::Gemini, g).expect("list"),
            ["gemini-2.0-flash"]
        );
        assert!(matches!(
            parse_models(ProviderKind::Anthropic, b"{}"),
            Err(AiError::Malformed(_))
        ));
        assert!(matches!(
            parse_models(ProviderKind::Anthropic, b"not json"),
            Err(AiError::Malformed(_))
        ));
    }

    #[test]
    fn an_error_object_in_a_success_body_is_an_error() {
        let r = parse_completion(
            ProviderKind::OpenAi,
            br#"{"error":{"message":"overloaded"}}"#,
            "m",
        );
        assert_eq!(
            r,
            Err(AiError::Provider {
                status: None,
                message: "overloaded".into()
            })
        );
    }
}

#[cfg(test)]
mod tool_tests {
    use super::*;
    use crate::{ChatMessage, ToolDefinition, ToolResult};
    use proptest::prelude::*;
    use serde_json::json;

    fn conversation() -> ChatRequest {
        let call = ToolCall {
            id: "c1".into(),
            name: "lookup".into(),
            arguments: r#"{"host":"a"}"#.into(),
        };
        let mut req = ChatRequest::new("m-1", "find a").tools(vec![ToolDefinition {
            name: "lookup".into(),
            description: "Looks a host up".into(),
            parameters: json!({"type": "object", "properties": {"host": {"type": "string"}}}),
        }]);
        req.messages
            .push(ChatMessage::assistant_calls("", vec![call]));
        req.messages
            .push(ChatMessage::tool_results(vec![ToolResult {
                call_id: "c1".into(),
                name: "lookup".into(),
                content: "10.0.0.1".into(),
                is_error: false,
            }]));
        req
    }

    #[test]
    fn requests_carry_tools_calls_and_results_in_each_format() {
        let req = conversation();
        let oa = chat_call(ProviderKind::OpenAi, "http://x/v1", &req, false).expect("openai");
        assert_eq!(oa.body["tools"][0]["function"]["name"], "lookup");
        assert_eq!(oa.body["messages"][1]["tool_calls"][0]["id"], "c1");
        assert_eq!(
            oa.body["messages"][1]["tool_calls"][0]["function"]["arguments"],
            r#"{"host":"a"}"#
        );
        assert_eq!(oa.body["messages"][2]["role"], "tool");
        assert_eq!(oa.body["messages"][2]["tool_call_id"], "c1");

        let an = chat_call(ProviderKind::Anthropic, "http://x", &req, false).expect("anthropic");
        assert_eq!(an.body["tools"][0]["input_schema"]["type"], "object");
        assert_eq!(an.body["messages"][1]["content"][0]["type"], "tool_use");
        assert_eq!(an.body["messages"][1]["content"][0]["input"]["host"], "a");
        assert_eq!(an.body["messages"][2]["role"], "user");
        assert_eq!(an.body["messages"][2]["content"][0]["tool_use_id"], "c1");

        let ge = chat_call(ProviderKind::Gemini, "http://x", &req, false).expect("gemini");
        assert_eq!(
            ge.body["tools"][0]["functionDeclarations"][0]["name"],
            "lookup"
        );
        assert_eq!(
            ge.body["contents"][1]["parts"][0]["functionCall"]["args"]["host"],
            "a"
        );
        assert_eq!(
            ge.body["contents"][2]["parts"][0]["functionResponse"]["response"]["result"],
            "10.0.0.1"
        );
        // Invalid arguments echoed back stay an object where one is required.
        let mut bad = conversation();
        bad.messages[1].tool_calls[0].arguments = "{not json".into();
        for kind in [ProviderKind::Anthropic, ProviderKind::Gemini] {
            let call = chat_call(kind, "http://x", &bad, false).expect("call");
            let text = call.body.to_string();
            assert!(
                text.contains(r#"{"_invalid_arguments":"{not json"}"#),
                "{kind}: {text}"
            );
        }
    }

    #[test]
    fn tool_calls_are_read_from_each_format() {
        let oa = br#"{"choices":[{"message":{"role":"assistant","content":null,"tool_calls":[
            {"id":"call_a","type":"function","function":{"name":"lookup","arguments":"{\"host\":\"a\"}"}},
            {"id":"call_b","type":"function","function":{"name":"ping","arguments":"not json"}}]},
            "finish_reason":"tool_calls"}]}"#;
        let c = parse_completion(ProviderKind::OpenAi, oa, "m").expect("openai");
        assert_eq!(c.finish_reason, FinishReason::ToolCalls);
        assert_eq!(c.tool_calls.len(), 2);
        assert_eq!(c.tool_calls[0].arguments, r#"{"host":"a"}"#);
        assert_eq!(c.tool_calls[1].arguments, "not json");

        let an = br#"{"content":[{"type":"text","text":"Let me look."},
            {"type":"tool_use","id":"toolu_1","name":"lookup","input":{"host":"a"}}],"stop_reason":"tool_use"}"#;
        let c = parse_completion(ProviderKind::Anthropic, an, "m").expect("anthropic");
        assert_eq!(c.text, "Let me look.");
        assert_eq!(
            c.tool_calls,
            vec![ToolCall {
                id: "toolu_1".into(),
                name: "lookup".into(),
                arguments: r#"{"host":"a"}"#.into()
            }]
        );

        let ge = br#"{"candidates":[{"content":{"role":"model","parts":[
            {"functionCall":{"name":"lookup","args":{"host":"a"}}}]},"finishReason":"STOP"}]}"#;
        let c = parse_completion(ProviderKind::Gemini, ge, "m").expect("gemini");
        assert_eq!(c.finish_reason, FinishReason::ToolCalls);
        assert_eq!(c.tool_calls[0].id, "call_0");
        assert_eq!(c.tool_calls[0].name, "lookup");
    }

    /// An answer asking for `calls`, in `kind`'s format.
    fn answer_with(kind: ProviderKind, calls: &[(String, Value)]) -> Value {
        match kind {
            ProviderKind::Anthropic => {
                let blocks: Vec<Value> = calls
                    .iter()
                    .enumerate()
                    .map(|(i, (n, a))| json!({"type": "tool_use", "id": format!("t{i}"), "name": n, "input": a}))
                    .collect();
                json!({"content": blocks, "stop_reason": "tool_use"})
            }
            ProviderKind::Gemini => {
                let parts: Vec<Value> = calls
                    .iter()
                    .map(|(n, a)| json!({"functionCall": {"name": n, "args": a}}))
                    .collect();
                json!({"candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": "STOP"}]})
            }
            _ => {
                let tc: Vec<Value> = calls
                    .iter()
                    .enumerate()
                    .map(|(i, (n, a))| json!({"id": format!("t{i}"), "type": "function", "function": {"name": n, "arguments": a.to_string()}}))
                    .collect();
                json!({"choices": [{"message": {"role": "assistant", "content": null, "tool_calls": tc}, "finish_reason": "tool_calls"}]})
            }
        }
    }

    fn json_leaf() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            ".{0,12}".prop_map(Value::String),
        ]
    }

    fn json_object() -> impl Strategy<Value = Value> {
        let value = json_leaf().prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map("[a-z]{1,6}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        });
        proptest::collection::btree_map("[a-zA-Z_]{1,8}", value, 0..5)
            .prop_map(|m| Value::Object(m.into_iter().collect()))
    }

    fn kind() -> impl Strategy<Value = ProviderKind> {
        prop_oneof![
            Just(ProviderKind::OpenAi),
            Just(ProviderKind::Anthropic),
            Just(ProviderKind::Gemini),
        ]
    }

    proptest! {
        /// Whatever calls a provider's answer holds, they are read back with
        /// their names and arguments, in order.
        #[test]
        fn tool_calls_round_trip(kind in kind(),
                                 calls in proptest::collection::vec(("[a-zA-Z0-9_-]{1,20}", json_object()), 1..4)) {
            let body = answer_with(kind, &calls).to_string();
            let c = parse_completion(kind, body.as_bytes(), "m").expect("parses");
            prop_assert_eq!(c.tool_calls.len(), calls.len());
            for (got, (name, args)) in c.tool_calls.iter().zip(&calls) {
                prop_assert_eq!(&got.name, name);
                let parsed: Value = serde_json::from_str(&got.arguments).expect("JSON arguments");
                prop_assert_eq!(&parsed, args);
                prop_assert!(!got.id.is_empty());
            }
        }

        /// Arbitrary JSON in the places a tool call is read from never panics
        /// the parsers: it is a completion or a `Malformed` error.
        #[test]
        fn hostile_answers_never_panic(kind in kind(), junk in json_object(), name in json_leaf(), args in json_leaf()) {
            let shapes = [
                json!({"choices": [{"message": {"tool_calls": [junk.clone(), {"function": {"name": name.clone(), "arguments": args.clone()}}]}}]}),
                json!({"choices": [{"message": {"function_call": junk.clone()}}]}),
                json!({"content": [junk.clone(), {"type": "tool_use", "name": name.clone(), "input": args.clone()}]}),
                json!({"candidates": [{"content": {"parts": [junk.clone(), {"functionCall": {"name": name.clone(), "args": args.clone()}}]}}]}),
                junk.clone(),
            ];
            for s in shapes {
                let r = parse_completion(kind, s.to_string().as_bytes(), "m");
                if let Err(e) = r {
                    prop_assert!(matches!(e, AiError::Malformed(_) | AiError::Provider { .. }), "{e:?}");
                }
            }
        }

        /// A call's arguments streamed in any fragments come back whole, in
        /// the formats that stream fragments (OpenAI, Anthropic).
        #[test]
        fn streamed_arguments_any_fragments(args in json_object(), cuts in proptest::collection::vec(0usize..400, 0..6), anthropic in any::<bool>()) {
            let text = args.to_string();
            let mut points: Vec<usize> = cuts.into_iter().map(|c| c % (text.len() + 1)).filter(|c| text.is_char_boundary(*c)).collect();
            points.sort_unstable();
            points.dedup();
            let mut pieces = Vec::new();
            let mut last = 0;
            for p in points.into_iter().chain([text.len()]) {
                pieces.push(&text[last..p]);
                last = p;
            }
            let ev = |data: Value| SseEvent { event: String::new(), data: data.to_string() };
            let (kind, events): (ProviderKind, Vec<SseEvent>) = if anthropic {
                let mut e = vec![ev(json!({"type": "content_block_start", "index": 1,
                    "content_block": {"type": "tool_use", "id": "t1", "name": "f", "input": {}}}))];
                e.extend(pieces.iter().map(|p| ev(json!({"type": "content_block_delta", "index": 1,
                    "delta": {"type": "input_json_delta", "partial_json": p}}))));
                e.push(ev(json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}})));
                (ProviderKind::Anthropic, e)
            } else {
                let mut e = vec![ev(json!({"choices": [{"index": 0, "delta": {"tool_calls": [
                    {"index": 0, "id": "c1", "function": {"name": "f", "arguments": ""}}]}}]}))];
                e.extend(pieces.iter().map(|p| ev(json!({"choices": [{"index": 0, "delta": {"tool_calls": [
                    {"index": 0, "function": {"arguments": p}}]}}]}))));
                e.push(ev(json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]})));
                (ProviderKind::OpenAi, e)
            };
            let mut p = StreamParser::new(kind, "m");
            for e in &events {
                p.feed(e).expect("feed");
            }
            let c = p.completion();
            prop_assert_eq!(c.tool_calls.len(), 1);
            prop_assert_eq!(&c.tool_calls[0].name, "f");
            let back: Value = serde_json::from_str(&c.tool_calls[0].arguments).expect("JSON");
            prop_assert_eq!(back, args);
            prop_assert_eq!(c.finish_reason, FinishReason::ToolCalls);
        }

        /// Arbitrary JSON events never panic a stream parser.
        #[test]
        fn hostile_stream_events_never_panic(kind in kind(), events in proptest::collection::vec(json_object(), 0..6)) {
            let mut p = StreamParser::new(kind, "m");
            for e in events {
                for data in [e.clone(), json!({"type": "content_block_start", "index": 0, "content_block": e.clone()}),
                             json!({"choices": [{"delta": {"tool_calls": [e.clone()]}}]}),
                             json!({"candidates": [{"content": {"parts": [{"functionCall": e}]}}]})] {
                    let _ = p.feed(&SseEvent { event: String::new(), data: data.to_string() });
                }
            }
            let _ = p.completion();
        }

        /// Arbitrary bytes are a parse error, never a panic.
        #[test]
        fn arbitrary_bytes_never_panic(kind in kind(), bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse_completion(kind, &bytes, "m");
        }
    }
}
