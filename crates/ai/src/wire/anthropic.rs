//! Anthropic's messages API.

use serde_json::{json, Map, Value};

use super::{arguments_text, arguments_value, made_up_id, text_of, ChatCall, StreamParser};
use crate::sse::SseEvent;
use crate::types::DEFAULT_MAX_TOKENS;
use crate::{AiError, ChatRequest, Completion, FinishReason, MessageRole, ToolCall, Usage};

/// The API version every request names (`anthropic-version`).
pub const API_VERSION: &str = "2023-06-01";

pub(super) fn chat_call(base: &str, req: &ChatRequest, stream: bool) -> ChatCall {
    let messages: Vec<Value> = req
        .messages
        .iter()
        .map(|m| match m.role {
            MessageRole::User => json!({"role": "user", "content": m.content}),
            MessageRole::Assistant if m.tool_calls.is_empty() => {
                json!({"role": "assistant", "content": m.content})
            }
            MessageRole::Assistant => {
                let mut blocks = Vec::new();
                if !m.content.is_empty() {
                    blocks.push(json!({"type": "text", "text": m.content}));
                }
                for c in &m.tool_calls {
                    blocks.push(json!({"type": "tool_use", "id": c.id, "name": c.name,
                                       "input": arguments_value(c)}));
                }
                json!({"role": "assistant", "content": blocks})
            }
            // Results go back in a user turn, one block per call.
            MessageRole::Tool => {
                let blocks: Vec<Value> = m
                    .tool_results
                    .iter()
                    .map(|r| {
                        json!({"type": "tool_result", "tool_use_id": r.call_id,
                               "content": r.content, "is_error": r.is_error})
                    })
                    .collect();
                json!({"role": "user", "content": blocks})
            }
        })
        .collect();
    let mut body = Map::new();
    body.insert("model".into(), json!(req.model));
    body.insert(
        "max_tokens".into(),
        json!(req.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS)),
    );
    if let Some(system) = &req.system {
        body.insert("system".into(), json!(system));
    }
    body.insert("messages".into(), Value::Array(messages));
    if let Some(t) = req.temperature {
        body.insert("temperature".into(), json!(t));
    }
    if !req.tools.is_empty() {
        let tools: Vec<Value> = req
            .tools
            .iter()
            .map(|t| json!({"name": t.name, "description": t.description, "input_schema": t.parameters}))
            .collect();
        body.insert("tools".into(), Value::Array(tools));
    }
    if stream {
        body.insert("stream".into(), json!(true));
    }
    ChatCall {
        url: format!("{base}/v1/messages"),
        body: Value::Object(body),
    }
}

fn finish_reason(s: &str) -> FinishReason {
    match s {
        "end_turn" | "stop_sequence" => FinishReason::Stop,
        "max_tokens" => FinishReason::Length,
        "tool_use" => FinishReason::ToolCalls,
        "refusal" => FinishReason::ContentFilter,
        other => FinishReason::Other(other.to_string()),
    }
}

/// Anthropic's counts as reported: the prompt's uncached part, cache reads and
/// writes (at the start of a stream, sometimes again at its end) and the output
/// (cumulative, at the end).
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Counts {
    input: u64,
    cache_read: u64,
    cache_write: u64,
    output: u64,
}

impl Counts {
    /// Takes the counts `u` reports, keeping the others.
    fn update(&mut self, u: &Value) {
        for (field, slot) in [
            ("input_tokens", &mut self.input),
            ("cache_read_input_tokens", &mut self.cache_read),
            ("cache_creation_input_tokens", &mut self.cache_write),
            ("output_tokens", &mut self.output),
        ] {
            if let Some(n) = u.get(field).and_then(Value::as_u64) {
                *slot = n;
            }
        }
    }

    fn usage(&self) -> Usage {
        Usage {
            input_tokens: self.input + self.cache_read + self.cache_write,
            output_tokens: self.output,
            cached_input_tokens: self.cache_read,
            cache_write_input_tokens: self.cache_write,
            reasoning_tokens: 0,
        }
    }
}

fn text_blocks(content: Option<&Value>) -> String {
    content
        .and_then(Value::as_array)
        .map(|blocks| {
            blocks
                .iter()
                .filter(|b| b.get("type").and_then(Value::as_str) == Some("text"))
                .filter_map(|b| b.get("text").and_then(Value::as_str))
                .collect()
        })
        .unwrap_or_default()
}

/// The `tool_use` blocks of an answer.
fn tool_uses(content: Option<&Value>) -> Vec<ToolCall> {
    content
        .and_then(Value::as_array)
        .map(|blocks| {
            blocks
                .iter()
                .filter(|b| b.get("type").and_then(Value::as_str) == Some("tool_use"))
                .enumerate()
                .map(|(i, b)| ToolCall {
                    id: text_of(b.get("id"))
                        .filter(|s| !s.is_empty())
                        .unwrap_or_else(|| made_up_id(i)),
                    name: text_of(b.get("name")).unwrap_or_default(),
                    arguments: arguments_text(b.get("input")),
                })
                .collect()
        })
        .unwrap_or_default()
}

pub(super) fn parse_completion(v: &Value) -> Result<Completion, AiError> {
    if !v.get("content").is_some_and(Value::is_array) {
        return Err(AiError::Malformed(
            "the answer has no list of content blocks".into(),
        ));
    }
    let mut counts = Counts::default();
    if let Some(u) = v.get("usage") {
        counts.update(u);
    }
    Ok(Completion {
        text: text_blocks(v.get("content")),
        model: text_of(v.get("model")).unwrap_or_default(),
        finish_reason: v
            .get("stop_reason")
            .and_then(Value::as_str)
            .map_or(FinishReason::Unknown, finish_reason),
        usage: counts.usage(),
        response_id: text_of(v.get("id")),
        tool_calls: tool_uses(v.get("content")),
    })
}

pub(super) fn feed(p: &mut StreamParser, event: &SseEvent) -> Result<String, AiError> {
    let v = StreamParser::json(event)?;
    let kind = v
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or(event.event.as_str());
    let mut delta = String::new();
    match kind {
        "message_start" => {
            let m = v.get("message").unwrap_or(&Value::Null);
            if let Some(model) = text_of(m.get("model")).filter(|m| !m.is_empty()) {
                p.model = model;
            }
            p.response_id = text_of(m.get("id"));
            if let Some(u) = m.get("usage") {
                p.anthropic.update(u);
            }
        }
        "content_block_start" => {
            let b = v.get("content_block").unwrap_or(&Value::Null);
            match b.get("type").and_then(Value::as_str) {
                Some("text") => delta = text_of(b.get("text")).unwrap_or_default(),
                Some("tool_use") => {
                    let index = v.get("index").and_then(Value::as_u64).unwrap_or(u64::MAX);
                    let call = p.tool_slot(index, text_of(b.get("id")));
                    call.name = text_of(b.get("name")).unwrap_or_default();
                    // The input comes in `input_json_delta` fragments; one
                    // given whole here (not the empty `{}`) is kept.
                    if let Some(input) = b
                        .get("input")
                        .filter(|i| !i.is_null() && i.as_object().is_none_or(|o| !o.is_empty()))
                    {
                        call.arguments = arguments_text(Some(input));
                    }
                }
                _ => {}
            }
        }
        "content_block_delta" => {
            let d = v.get("delta").unwrap_or(&Value::Null);
            match d.get("type").and_then(Value::as_str) {
                Some("text_delta") => delta = text_of(d.get("text")).unwrap_or_default(),
                Some("input_json_delta") => {
                    let index = v.get("index").and_then(Value::as_u64).unwrap_or(u64::MAX);
                    let part = text_of(d.get("partial_json")).unwrap_or_default();
                    p.tool_slot(index, None).arguments.push_str(&part);
                }
                _ => {}
            }
        }
        "message_delta" => {
            if let Some(r) = v.pointer("/delta/stop_reason").and_then(Value::as_str) {
                p.finish = Some(finish_reason(r));
            }
            if let Some(u) = v.get("usage") {
                p.anthropic.update(u);
            }
        }
        "message_stop" => p.done = true,
        // `ping`, `content_block_stop` and kinds added later carry nothing to keep.
        _ => {}
    }
    p.usage = p.anthropic.usage();
    Ok(delta)
}

#[cfg(test)]
mod tests {
    use super::super::*;
    use crate::sse::SseEvent;

    #[test]
    fn request_body() {
        let req = ChatRequest::new("claude-x", "hi").system("sys");
        let call = chat_call(ProviderKind::Anthropic, "http://a", &req, false).expect("call");
        assert_eq!(call.url, "http://a/v1/messages");
        assert_eq!(call.body["system"], "sys");
        assert_eq!(call.body["max_tokens"], 1024);
        assert_eq!(call.body["messages"][0]["role"], "user");
    }

    #[test]
    fn whole_answer_with_cache_counts() {
        let body = br#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-x-1",
            "content":[{"type":"thinking","thinking":"hmm"},{"type":"text","text":"Hi "},{"type":"text","text":"there"}],
            "stop_reason":"max_tokens","usage":{"input_tokens":10,"cache_read_input_tokens":100,"cache_creation_input_tokens":5,"output_tokens":7}}"#;
        let c = parse_completion(ProviderKind::Anthropic, body, "claude-x").expect("parse");
        assert_eq!(c.text, "Hi there");
        assert_eq!(c.finish_reason, FinishReason::Length);
        assert_eq!(
            c.usage,
            Usage {
                input_tokens: 115,
                output_tokens: 7,
                cached_input_tokens: 100,
                cache_write_input_tokens: 5,
                reasoning_tokens: 0
            }
        );
    }

    #[test]
    fn streamed_answer() {
        let mut p = StreamParser::new(ProviderKind::Anthropic, "claude-x");
        let events = [
            (
                "message_start",
                r#"{"type":"message_start","message":{"id":"msg_1","model":"claude-x-1","content":[],"usage":{"input_tokens":25,"output_tokens":1}}}"#,
            ),
            (
                "content_block_start",
                r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
            ),
            ("ping", r#"{"type":"ping"}"#),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hel"}}"#,
            ),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"lo"}}"#,
            ),
            (
                "content_block_stop",
                r#"{"type":"content_block_stop","index":0}"#,
            ),
            (
                "message_delta",
                r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":15}}"#,
            ),
            ("message_stop", r#"{"type":"message_stop"}"#),
        ];
        let mut text = String::new();
        for (event, data) in events {
            text.push_str(
                &p.feed(&SseEvent {
                    event: event.into(),
                    data: data.into(),
                })
                .expect("feed"),
            );
        }
        assert_eq!(text, "Hello");
        assert!(p.is_done());
        let c = p.completion();
        assert_eq!(c.finish_reason, FinishReason::Stop);
        assert_eq!((c.usage.input_tokens, c.usage.output_tokens), (25, 15));
        assert_eq!(c.response_id.as_deref(), Some("msg_1"));
    }

    #[test]
    fn an_error_event() {
        let mut p = StreamParser::new(ProviderKind::Anthropic, "m");
        let r = p.feed(&SseEvent {
            event: "error".into(),
            data: r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#
                .into(),
        });
        assert_eq!(
            r,
            Err(AiError::Provider {
                status: None,
                message: "Overloaded".into()
            })
        );
    }
}
