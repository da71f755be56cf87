//! OpenAI's chat completions, spoken by OpenAI and by OpenAI-compatible servers.

use serde_json::{json, Map, Value};

use super::{arguments_text, count, made_up_id, text_of, ChatCall, StreamParser};
use crate::sse::SseEvent;
use crate::{
    AiError, ChatRequest, Completion, FinishReason, MessageRole, ProviderKind, ToolCall, Usage,
};

pub(super) fn chat_call(
    kind: ProviderKind,
    base: &str,
    req: &ChatRequest,
    stream: bool,
) -> ChatCall {
    let mut messages = Vec::with_capacity(req.messages.len() + 1);
    if let Some(system) = &req.system {
        messages.push(json!({"role": "system", "content": system}));
    }
    for m in &req.messages {
        match m.role {
            MessageRole::User => messages.push(json!({"role": "user", "content": m.content})),
            MessageRole::Assistant if m.tool_calls.is_empty() => {
                messages.push(json!({"role": "assistant", "content": m.content}))
            }
            MessageRole::Assistant => {
                let calls: Vec<Value> = m
                    .tool_calls
                    .iter()
                    .map(|c| {
                        json!({"id": c.id, "type": "function",
                               "function": {"name": c.name, "arguments": c.arguments}})
                    })
                    .collect();
                let content = if m.content.is_empty() {
                    Value::Null
                } else {
                    json!(m.content)
                };
                messages
                    .push(json!({"role": "assistant", "content": content, "tool_calls": calls}));
            }
            // One `tool` message per result, each naming the call it answers.
            MessageRole::Tool => {
                for r in &m.tool_results {
                    messages.push(
                        json!({"role": "tool", "tool_call_id": r.call_id, "content": r.content}),
                    );
                }
            }
        }
    }
    let mut body = Map::new();
    body.insert("model".into(), json!(req.model));
    body.insert("messages".into(), Value::Array(messages));
    if let Some(n) = req.max_tokens {
        // OpenAI's own API has renamed the limit (its reasoning models refuse
        // the old name); compatible servers still read `max_tokens`.
        let name = if kind == ProviderKind::OpenAi {
            "max_completion_tokens"
        } else {
            "max_tokens"
        };
        body.insert(name.into(), json!(n));
    }
    if let Some(t) = req.temperature {
        body.insert("temperature".into(), json!(t));
    }
    if req.json_output {
        body.insert("response_format".into(), json!({"type": "json_object"}));
    }
    if !req.tools.is_empty() {
        let tools: Vec<Value> = req
            .tools
            .iter()
            .map(|t| {
                json!({"type": "function", "function": {
                    "name": t.name, "description": t.description, "parameters": t.parameters}})
            })
            .collect();
        body.insert("tools".into(), Value::Array(tools));
    }
    if stream {
        body.insert("stream".into(), json!(true));
        // Without it the stream carries no token counts.
        body.insert("stream_options".into(), json!({"include_usage": true}));
    }
    ChatCall {
        url: format!("{base}/chat/completions"),
        body: Value::Object(body),
    }
}

pub(super) fn finish_reason(s: &str) -> FinishReason {
    match s {
        "stop" => FinishReason::Stop,
        "length" => FinishReason::Length,
        "tool_calls" | "function_call" => FinishReason::ToolCalls,
        "content_filter" => FinishReason::ContentFilter,
        other => FinishReason::Other(other.to_string()),
    }
}

fn usage(u: &Value) -> Usage {
    Usage {
        input_tokens: count(u.get("prompt_tokens")),
        output_tokens: count(u.get("completion_tokens")),
        cached_input_tokens: count(u.pointer("/prompt_tokens_details/cached_tokens")),
        cache_write_input_tokens: 0,
        reasoning_tokens: count(u.pointer("/completion_tokens_details/reasoning_tokens")),
    }
}

/// A message's content: a string, or (some compatible servers) a list of parts.
fn content_text(c: Option<&Value>) -> String {
    match c {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter(|p| p.get("type").and_then(Value::as_str).unwrap_or("text") == "text")
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect(),
        _ => String::new(),
    }
}

/// The tool calls of an answer's message (`tool_calls`, or the older single
/// `function_call`).
fn tool_calls(message: &Value) -> Vec<ToolCall> {
    if let Some(calls) = message.get("tool_calls").and_then(Value::as_array) {
        return calls
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                let f = c.get("function")?;
                Some(ToolCall {
                    id: text_of(c.get("id"))
                        .filter(|s| !s.is_empty())
                        .unwrap_or_else(|| made_up_id(i)),
                    name: text_of(f.get("name")).unwrap_or_default(),
                    arguments: arguments_text(f.get("arguments")),
                })
            })
            .collect();
    }
    match message.get("function_call") {
        Some(f) if f.is_object() => vec![ToolCall {
            id: made_up_id(0),
            name: text_of(f.get("name")).unwrap_or_default(),
            arguments: arguments_text(f.get("arguments")),
        }],
        _ => Vec::new(),
    }
}

pub(super) fn parse_completion(v: &Value) -> Result<Completion, AiError> {
    let choice = v
        .get("choices")
        .and_then(Value::as_array)
        .ok_or_else(|| AiError::Malformed("the answer has no choices".into()))?
        .first()
        .ok_or_else(|| AiError::Malformed("the answer has an empty list of choices".into()))?;
    let message = choice
        .get("message")
        .ok_or_else(|| AiError::Malformed("the first choice has no message".into()))?;
    Ok(Completion {
        text: content_text(message.get("content")),
        model: text_of(v.get("model")).unwrap_or_default(),
        finish_reason: choice
            .get("finish_reason")
            .and_then(Value::as_str)
            .map_or(FinishReason::Unknown, finish_reason),
        usage: v.get("usage").map(usage).unwrap_or_default(),
        response_id: text_of(v.get("id")),
        tool_calls: tool_calls(message),
    })
}

pub(super) fn feed(p: &mut StreamParser, event: &SseEvent) -> Result<String, AiError> {
    let data = event.data.trim();
    if data == "[DONE]" {
        p.done = true;
        return Ok(String::new());
    }
    let v = StreamParser::json(event)?;
    if let Some(m) = text_of(v.get("model")).filter(|m| !m.is_empty()) {
        p.model = m;
    }
    if p.response_id.is_none() {
        p.response_id = text_of(v.get("id"));
    }
    if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
        p.usage = usage(u);
    }
    let mut delta = String::new();
    if let Some(choice) = v
        .get("choices")
        .and_then(Value::as_array)
        .and_then(|c| c.first())
    {
        delta = content_text(choice.pointer("/delta/content"));
        for (i, tc) in choice
            .pointer("/delta/tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let index = tc.get("index").and_then(Value::as_u64).unwrap_or(i as u64);
            let call = p.tool_slot(index, text_of(tc.get("id")));
            if let Some(name) = tc.pointer("/function/name").and_then(Value::as_str) {
                call.name.push_str(name);
            }
            match tc.pointer("/function/arguments") {
                Some(Value::String(part)) => call.arguments.push_str(part),
                Some(v) if !v.is_null() => call.arguments.push_str(&v.to_string()),
                _ => {}
            }
        }
        if let Some(r) = choice.get("finish_reason").and_then(Value::as_str) {
            p.finish = Some(finish_reason(r));
            // Servers that send no `[DONE]` still said the answer is over;
            // OpenAI's usage chunk may still follow and is read if it does.
            p.done = true;
        }
    }
    Ok(delta)
}

#[cfg(test)]
mod tests {
    use super::super::*;
    use crate::sse::SseEvent;

    #[test]
    fn request_body() {
        let req = ChatRequest::new("gpt-4o", "hi")
            .system("be brief")
            .max_tokens(50)
            .json_output();
        let call = chat_call(ProviderKind::OpenAi, "http://x/v1", &req, true).expect("call");
        assert_eq!(call.url, "http://x/v1/chat/completions");
        assert_eq!(call.body["messages"][0]["role"], "system");
        assert_eq!(call.body["messages"][1]["content"], "hi");
        assert_eq!(call.body["max_completion_tokens"], 50);
        assert_eq!(call.body["stream_options"]["include_usage"], true);
        assert_eq!(call.body["response_format"]["type"], "json_object");
        let compat =
            chat_call(ProviderKind::OpenAiCompatible, "http://x/v1", &req, false).expect("call");
        assert_eq!(compat.body["max_tokens"], 50);
        assert!(compat.body.get("stream").is_none());
    }

    #[test]
    fn whole_answer() {
        let body = br#"{"id":"chatcmpl-1","model":"gpt-4o-2024","choices":[{"index":0,"message":{"role":"assistant","content":"Hello"},"finish_reason":"length"}],
            "usage":{"prompt_tokens":12,"completion_tokens":30,"prompt_tokens_details":{"cached_tokens":8},"completion_tokens_details":{"reasoning_tokens":20}}}"#;
        let c = parse_completion(ProviderKind::OpenAi, body, "gpt-4o").expect("parse");
        assert_eq!(c.text, "Hello");
        assert_eq!(c.model, "gpt-4o-2024");
        assert_eq!(c.finish_reason, FinishReason::Length);
        assert_eq!(
            c.usage,
            Usage {
                input_tokens: 12,
                output_tokens: 30,
                cached_input_tokens: 8,
                cache_write_input_tokens: 0,
                reasoning_tokens: 20
            }
        );
        assert!(matches!(
            parse_completion(ProviderKind::OpenAi, br#"{"choices":[]}"#, "m"),
            Err(AiError::Malformed(_))
        ));
    }

    #[test]
    fn streamed_answer() {
        let mut p = StreamParser::new(ProviderKind::OpenAi, "gpt-4o");
        let events = [
            r#"{"id":"c1","model":"gpt-4o-x","choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#,
            r#"{"id":"c1","choices":[{"index":0,"delta":{"content":"Hel"}}]}"#,
            r#"{"id":"c1","choices":[{"index":0,"delta":{"content":"lo"},"finish_reason":null}]}"#,
            r#"{"id":"c1","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#,
            r#"{"id":"c1","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2}}"#,
            "[DONE]",
        ];
        let mut text = String::new();
        for e in events {
            text.push_str(
                &p.feed(&SseEvent {
                    event: String::new(),
                    data: e.into(),
                })
                .expect("feed"),
            );
        }
        assert_eq!(text, "Hello");
        assert!(p.is_done());
        let c = p.completion();
        assert_eq!(
            (
                c.model.as_str(),
                c.finish_reason,
                c.usage.input_tokens,
                c.usage.output_tokens
            ),
            ("gpt-4o-x", FinishReason::Stop, 5, 2)
        );
    }

    #[test]
    fn an_error_inside_the_stream() {
        let mut p = StreamParser::new(ProviderKind::OpenAiCompatible, "m");
        let r = p.feed(&SseEvent {
            event: String::new(),
            data: r#"{"error":{"message":"model overloaded"}}"#.into(),
        });
        assert!(matches!(r, Err(AiError::Provider { status: None, .. })));
        let r = p.feed(&SseEvent {
            event: String::new(),
            data: "{not json".into(),
        });
        assert!(matches!(r, Err(AiError::Malformed(_))));
    }
}
