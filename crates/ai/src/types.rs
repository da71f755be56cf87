//! What is asked of a model and what comes back, the same whatever the provider.

use serde::{Deserialize, Serialize};

/// Who said a message of the conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageRole {
    User,
    Assistant,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: MessageRole,
    pub content: String,
}

impl ChatMessage {
    pub fn user(content: impl Into<String>) -> Self {
        Self {
            role: MessageRole::User,
            content: content.into(),
        }
    }

    pub fn assistant(content: impl Into<String>) -> Self {
        Self {
            role: MessageRole::Assistant,
            content: content.into(),
        }
    }
}

/// One request to a model: a system prompt and a conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    pub model: String,
    /// Instructions ahead of the conversation (OpenAI's system message,
    /// Anthropic's `system`, Gemini's `systemInstruction`).
    pub system: Option<String>,
    pub messages: Vec<ChatMessage>,
    /// Most tokens to generate; Anthropic requires one, so
    /// [`DEFAULT_MAX_TOKENS`] is sent there when this is `None`.
    pub max_tokens: Option<u32>,
    pub temperature: Option<f32>,
    /// Ask for a JSON object as the answer, where the provider can be told so
    /// (OpenAI's `response_format`, Gemini's `responseMimeType`; Anthropic has
    /// no such switch and relies on the prompt).
    pub json_output: bool,
}

/// Sent as Anthropic's required `max_tokens` when a request sets none.
pub const DEFAULT_MAX_TOKENS: u32 = 1024;

impl ChatRequest {
    /// A request of one user message.
    pub fn new(model: impl Into<String>, prompt: impl Into<String>) -> Self {
        Self {
            model: model.into(),
            system: None,
            messages: vec![ChatMessage::user(prompt)],
            max_tokens: None,
            temperature: None,
            json_output: false,
        }
    }

    pub fn system(mut self, system: impl Into<String>) -> Self {
        self.system = Some(system.into());
        self
    }

    pub fn max_tokens(mut self, n: u32) -> Self {
        self.max_tokens = Some(n);
        self
    }

    pub fn temperature(mut self, t: f32) -> Self {
        self.temperature = Some(t);
        self
    }

    pub fn json_output(mut self) -> Self {
        self.json_output = true;
        self
    }
}

/// Tokens counted by the provider, normalised.
///
/// `input_tokens` counts the whole prompt, cached or not (Anthropic reports
/// cache reads and writes apart from its `input_tokens`; they are added in).
/// `output_tokens` counts everything generated, reasoning included (Gemini
/// reports its thoughts apart; they are added in). The other counts are parts
/// of those two, for pricing: cache reads, cache writes and reasoning.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Part of `input_tokens` read from the provider's prompt cache.
    pub cached_input_tokens: u64,
    /// Part of `input_tokens` written to the provider's prompt cache (Anthropic).
    pub cache_write_input_tokens: u64,
    /// Part of `output_tokens` spent reasoning, where the provider says
    /// (OpenAI's reasoning tokens, Gemini's thoughts; Anthropic does not tell).
    pub reasoning_tokens: u64,
}

impl Usage {
    pub fn total_tokens(&self) -> u64 {
        self.input_tokens + self.output_tokens
    }
}

/// Why the model stopped. Serialised as its [`as_str`](FinishReason::as_str) spelling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FinishReason {
    /// It finished (or hit a stop sequence).
    Stop,
    /// It reached the token limit.
    Length,
    /// It asked for a tool call.
    ToolCalls,
    /// The provider's safety filter stopped it.
    ContentFilter,
    /// Any other reason, as the provider spelled it.
    Other(String),
    /// The provider named none (a stream that ended without saying).
    Unknown,
}

impl FinishReason {
    pub fn as_str(&self) -> &str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::ToolCalls => "tool_calls",
            FinishReason::ContentFilter => "content_filter",
            FinishReason::Other(s) => s,
            FinishReason::Unknown => "unknown",
        }
    }

    /// The reason spelled as [`as_str`](FinishReason::as_str) spells it.
    pub fn parse(s: &str) -> Self {
        match s {
            "stop" => FinishReason::Stop,
            "length" => FinishReason::Length,
            "tool_calls" => FinishReason::ToolCalls,
            "content_filter" => FinishReason::ContentFilter,
            "unknown" | "" => FinishReason::Unknown,
            other => FinishReason::Other(other.to_string()),
        }
    }
}

impl Serialize for FinishReason {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for FinishReason {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(FinishReason::parse(&s))
    }
}

/// A model's whole answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Completion {
    /// The generated text (reasoning summaries left out).
    pub text: String,
    /// The model that answered, as the provider named it (falls back to the
    /// model asked for when the answer does not say).
    pub model: String,
    pub finish_reason: FinishReason,
    pub usage: Usage,
    /// The provider's id of the answer, when it gives one.
    pub response_id: Option<String>,
}
