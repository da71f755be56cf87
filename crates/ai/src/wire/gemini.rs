//! Google's Gemini generateContent.

use serde_json::{json, Map, Value};

use super::{arguments_text, arguments_value, count, made_up_id, text_of, ChatCall, StreamParser};
use crate::sse::SseEvent;
use crate::{AiError, ChatRequest, Completion, FinishReason, MessageRole, ToolCall, Usage};

/// The model's id as it goes in the URL: `models/` dropped, and only
/// characters that cannot change the path (`/`, `?`, `:` would).
fn model_path(model: &str) -> Result<&str, AiError> {
    let m = model.strip_prefix("models/").unwrap_or(model);
    if m.is_empty()
        || !m
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
    {
        return Err(AiError::Config(format!(
            "{model:?} is not a Gemini model id (letters, digits, '-', '.', '_')"
        )));
    }
    Ok(m)
}

pub(super) fn chat_call(base: &str, req: &ChatRequest, stream: bool) -> Result<ChatCall, AiError> {
    let model = model_path(&req.model)?;
    let contents: Vec<Value> = req
        .messages
        .iter()
        .map(|m| match m.role {
            MessageRole::User => json!({"role": "user", "parts": [{"text": m.content}]}),
            MessageRole::Assistant if m.tool_calls.is_empty() => {
                json!({"role": "model", "parts": [{"text": m.content}]})
            }
            MessageRole::Assistant => {
                let mut parts = Vec::new();
                if !m.content.is_empty() {
                    parts.push(json!({"text": m.content}));
                }
                for c in &m.tool_calls {
                    parts.push(json!({"functionCall": {"id": c.id, "name": c.name, "args": arguments_value(c)}}));
                }
                json!({"role": "model", "parts": parts})
            }
            // Gemini wants an object as the response: the text under `result`
            // (or `error` when the call failed).
            MessageRole::Tool => {
                let parts: Vec<Value> = m
                    .tool_results
                    .iter()
                    .map(|r| {
                        let key = if r.is_error { "error" } else { "result" };
                        json!({"functionResponse": {"id": r.call_id, "name": r.name,
                                                    "response": {key: r.content}}})
                    })
                    .collect();
                json!({"role": "user", "parts": parts})
            }
        })
        .collect();
    let mut body = Map::new();
    body.insert("contents".into(), Value::Array(contents));
    if let Some(system) = &req.system {
        body.insert(
            "systemInstruction".into(),
            json!({"parts": [{"text": system}]}),
        );
    }
    let mut config = Map::new();
    if let Some(n) = req.max_tokens {
        config.insert("maxOutputTokens".into(), json!(n));
    }
    if let Some(t) = req.temperature {
        config.insert("temperature".into(), json!(t));
    }
    if req.json_output {
        config.insert("responseMimeType".into(), json!("application/json"));
    }
    if !config.is_empty() {
        body.insert("generationConfig".into(), Value::Object(config));
    }
    if !req.tools.is_empty() {
        let decls: Vec<Value> = req
            .tools
            .iter()
            .map(|t| json!({"name": t.name, "description": t.description, "parameters": t.parameters}))
            .collect();
        body.insert("tools".into(), json!([{"functionDeclarations": decls}]));
    }
    let url = if stream {
        format!("{base}/v1beta/models/{model}:streamGenerateContent?alt=sse")
    } else {
        format!("{base}/v1beta/models/{model}:generateContent")
    };
    Ok(ChatCall {
        url,
        body: Value::Object(body),
    })
}

fn finish_reason(s: &str) -> FinishReason {
    match s {
        "STOP" => FinishReason::Stop,
        "MAX_TOKENS" => FinishReason::Length,
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY" => {
            FinishReason::ContentFilter
        }
        "MALFORMED_FUNCTION_CALL" | "UNEXPECTED_TOOL_CALL" => FinishReason::ToolCalls,
        other => FinishReason::Other(other.to_ascii_lowercase()),
    }
}

fn usage(u: &Value) -> Usage {
    let thoughts = count(u.get("thoughtsTokenCount"));
    Usage {
        input_tokens: count(u.get("promptTokenCount")),
        output_tokens: count(u.get("candidatesTokenCount")) + thoughts,
        cached_input_tokens: count(u.get("cachedContentTokenCount")),
        cache_write_input_tokens: 0,
        reasoning_tokens: thoughts,
    }
}

/// The answer's text: the first candidate's parts, thought summaries left out.
fn candidate_text(c: &Value) -> String {
    c.pointer("/content/parts")
        .and_then(Value::as_array)
        .map(|parts| {
            parts
                .iter()
                .filter(|p| !p.get("thought").and_then(Value::as_bool).unwrap_or(false))
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect()
        })
        .unwrap_or_default()
}

/// The model's id as reported (`modelVersion`).
fn model_of(v: &Value) -> Option<String> {
    text_of(v.get("modelVersion")).filter(|m| !m.is_empty())
}

/// The `functionCall` parts of a candidate.
fn function_calls(c: &Value) -> Vec<ToolCall> {
    c.pointer("/content/parts")
        .and_then(Value::as_array)
        .map(|parts| {
            parts
                .iter()
                .filter_map(|p| p.get("functionCall"))
                .enumerate()
                .map(|(i, f)| ToolCall {
                    id: text_of(f.get("id"))
                        .filter(|s| !s.is_empty())
                        .unwrap_or_else(|| made_up_id(i)),
                    name: text_of(f.get("name")).unwrap_or_default(),
                    arguments: arguments_text(f.get("args")),
                })
                .collect()
        })
        .unwrap_or_default()
}

pub(super) fn parse_completion(v: &Value) -> Result<Completion, AiError> {
    let candidates = v.get("candidates").and_then(Value::as_array);
    let first = candidates.and_then(|c| c.first());
    let calls = first.map(function_calls).unwrap_or_default();
    let (text, finish) = match first {
        Some(c) => (
            candidate_text(c),
            c.get("finishReason")
                .and_then(Value::as_str)
                .map_or(FinishReason::Unknown, finish_reason),
        ),
        // The prompt itself was blocked: no candidate, and a reason why.
        None if v.pointer("/promptFeedback/blockReason").is_some() => {
            (String::new(), FinishReason::ContentFilter)
        }
        None => {
            return Err(AiError::Malformed("the answer has no candidates".into()));
        }
    };
    // Gemini says STOP when it asks for calls; say what it did.
    let finish = if calls.is_empty() {
        finish
    } else {
        FinishReason::ToolCalls
    };
    Ok(Completion {
        text,
        model: model_of(v).unwrap_or_default(),
        finish_reason: finish,
        usage: v.get("usageMetadata").map(usage).unwrap_or_default(),
        response_id: text_of(v.get("responseId")),
        tool_calls: calls,
    })
}

pub(super) fn feed(p: &mut StreamParser, event: &SseEvent) -> Result<String, AiError> {
    let v = StreamParser::json(event)?;
    if let Some(m) = model_of(&v) {
        p.model = m;
    }
    if p.response_id.is_none() {
        p.response_id = text_of(v.get("responseId"));
    }
    // Each chunk's counts are the totals so far.
    if let Some(u) = v.get("usageMetadata").filter(|u| u.is_object()) {
        p.usage = usage(u);
    }
    let mut delta = String::new();
    if let Some(c) = v
        .get("candidates")
        .and_then(Value::as_array)
        .and_then(|c| c.first())
    {
        delta = candidate_text(c);
        // Gemini streams each call whole, in some chunk's parts.
        for f in c
            .pointer("/content/parts")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|part| part.get("functionCall"))
        {
            let index = p.tool_calls.len() as u64;
            let slot = p.tool_slot(index, text_of(f.get("id")));
            slot.name = text_of(f.get("name")).unwrap_or_default();
            slot.arguments = arguments_text(f.get("args"));
        }
        if let Some(r) = c.get("finishReason").and_then(Value::as_str) {
            p.finish = Some(if p.tool_calls.is_empty() {
                finish_reason(r)
            } else {
                FinishReason::ToolCalls
            });
            p.done = true;
        }
    } else if v.pointer("/promptFeedback/blockReason").is_some() {
        p.finish = Some(FinishReason::ContentFilter);
        p.done = true;
    }
    Ok(delta)
}

#[cfg(test)]
mod tests {
    use super::super::*;
    use crate::sse::SseEvent;

    #[test]
    fn request_body_and_urls() {
        let req = ChatRequest {
            messages: vec![
                crate::ChatMessage::user("a"),
                crate::ChatMessage::assistant("b"),
                crate::ChatMessage::user("c"),
            ],
            ..ChatRequest::new("models/gemini-2.0-flash", "")
        }
        .system("sys")
        .temperature(0.5)
        .json_output();
        let call = chat_call(ProviderKind::Gemini, "http://g", &req, false).expect("call");
        assert_eq!(
            call.url,
            "http://g/v1beta/models/gemini-2.0-flash:generateContent"
        );
        assert_eq!(call.body["contents"][1]["role"], "model");
        assert_eq!(call.body["systemInstruction"]["parts"][0]["text"], "sys");
        assert_eq!(
            call.body["generationConfig"]["responseMimeType"],
            "application/json"
        );
        let s = chat_call(ProviderKind::Gemini, "http://g", &req, true).expect("call");
        assert!(s.url.ends_with(":streamGenerateContent?alt=sse"));
        for bad in ["a/b", "x?key=1", "m:generateContent", ""] {
            assert!(matches!(
                chat_call(
                    ProviderKind::Gemini,
                    "http://g",
                    &ChatRequest::new(bad, "p"),
                    false
                ),
                Err(AiError::Config(_))
            ));
        }
    }

    #[test]
    fn whole_answer_with_thoughts() {
        let body = br#"{"candidates":[{"content":{"role":"model","parts":[{"text":"thinking...","thought":true},{"text":"Hi"}]},"finishReason":"STOP"}],
            "usageMetadata":{"promptTokenCount":9,"candidatesTokenCount":3,"thoughtsTokenCount":40,"cachedContentTokenCount":4,"totalTokenCount":52},
            "modelVersion":"gemini-2.5-pro","responseId":"r1"}"#;
        let c = parse_completion(ProviderKind::Gemini, body, "gemini").expect("parse");
        assert_eq!(c.text, "Hi");
        assert_eq!(c.model, "gemini-2.5-pro");
        assert_eq!(
            c.usage,
            Usage {
                input_tokens: 9,
                output_tokens: 43,
                cached_input_tokens: 4,
                cache_write_input_tokens: 0,
                reasoning_tokens: 40
            }
        );
        let blocked = br#"{"promptFeedback":{"blockReason":"SAFETY"},"usageMetadata":{"promptTokenCount":3}}"#;
        let c = parse_completion(ProviderKind::Gemini, blocked, "g").expect("parse");
        assert_eq!(
            (c.text.as_str(), c.finish_reason),
            ("", FinishReason::ContentFilter)
        );
        assert!(matches!(
            parse_completion(ProviderKind::Gemini, b"{}", "g"),
            Err(AiError::Malformed(_))
        ));
    }

    #[test]
    fn streamed_answer() {
        let mut p = StreamParser::new(ProviderKind::Gemini, "gemini-x");
        let events = [
            r#"{"candidates":[{"content":{"role":"model","parts":[{"text":"Hel"}]}}],"usageMetadata":{"promptTokenCount":4,"candidatesTokenCount":1}}"#,
            r#"{"candidates":[{"content":{"role":"model","parts":[{"text":"lo"}]},"finishReason":"MAX_TOKENS"}],"usageMetadata":{"promptTokenCount":4,"candidatesTokenCount":2},"modelVersion":"gemini-x-001"}"#,
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
        assert_eq!(c.finish_reason, FinishReason::Length);
        assert_eq!(c.model, "gemini-x-001");
        assert_eq!((c.usage.input_tokens, c.usage.output_tokens), (4, 2));
    }
}
