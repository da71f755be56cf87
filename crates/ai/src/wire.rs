//! The three wire formats: how a [`ChatRequest`] is written for each provider,
//! and how its answers — whole, streamed, listed models, errors — are read back
//! into a [`Completion`]. Pure functions over bytes and JSON, no I/O: the
//! client sends what they build, and the gateway can meter what it relays with
//! the same [`StreamParser`].

mod anthropic;
mod gemini;
mod openai;

pub use anthropic::API_VERSION as ANTHROPIC_VERSION;

use serde_json::Value;

use crate::sse::SseEvent;
use crate::{AiError, ChatRequest, Completion, FinishReason, ProviderKind, Usage};

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
        }
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

    /// The answer as far as it went.
    pub fn completion(&self) -> Completion {
        Completion {
            text: self.text.clone(),
            model: self.model.clone(),
            finish_reason: self.finish.clone().unwrap_or(FinishReason::Unknown),
            usage: self.usage,
            response_id: self.response_id.clone(),
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
