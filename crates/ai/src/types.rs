//! What is asked of a model and what comes back, the same whatever the provider.

use serde::{Deserialize, Serialize};

/// Who said a message of the conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageRole {
    User,
    Assistant,
    /// The results of tool calls the assistant asked for, sent back to it
    /// (OpenAI's `tool` messages, Anthropic's `tool_result` blocks in a user
    /// turn, Gemini's `functionResponse` parts).
    Tool,
}

/// A tool the model may ask to call: its name, what it does, and the JSON
/// schema of its arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolDefinition {
    pub name: String,
    pub description: String,
    /// A JSON schema (an object schema) of the arguments.
    pub parameters: serde_json::Value,
}

/// A call of a tool the model asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    /// The provider's id of the call (made up as `call_<n>` when the provider
    /// gives none, as Gemini may not), echoed with its result.
    pub id: String,
    pub name: String,
    /// The arguments as the model wrote them: JSON text, not yet checked (a
    /// model can write anything here, invalid JSON included).
    pub arguments: String,
}

/// The result of one tool call, sent back to the model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolResult {
    /// The [`ToolCall::id`] it answers.
    pub call_id: String,
    /// The tool's name (Gemini matches results by name).
    pub name: String,
    /// What the tool returned, or why the call failed.
    pub content: String,
    /// The call failed (refused arguments, an unknown tool, an error answer).
    pub is_error: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: MessageRole,
    pub content: String,
    /// An assistant message: the tool calls it asked for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// A tool message: the results of the previous assistant message's calls.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_results: Vec<ToolResult>,
}

impl ChatMessage {
    pub fn user(content: impl Into<String>) -> Self {
        Self {
            role: MessageRole::User,
            content: content.into(),
            tool_calls: Vec::new(),
            tool_results: Vec::new(),
        }
    }

    pub fn assistant(content: impl Into<String>) -> Self {
        Self {
            role: MessageRole::Assistant,
            content: content.into(),
            tool_calls: Vec::new(),
            tool_results: Vec::new(),
        }
    }

    /// The assistant's turn that asked for tool calls (with any text it said).
    pub fn assistant_calls(content: impl Into<String>, calls: Vec<ToolCall>) -> Self {
        Self {
            tool_calls: calls,
            ..Self::assistant(content)
        }
    }

    /// The results of the previous turn's tool calls.
    pub fn tool_results(results: Vec<ToolResult>) -> Self {
        Self {
            role: MessageRole::Tool,
            content: String::new(),
            tool_calls: Vec::new(),
            tool_results: results,
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
    /// Tools the model may ask to call (none: a plain chat).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<ToolDefinition>,
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
            tools: Vec::new(),
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

    pub fn tools(mut self, tools: Vec<ToolDefinition>) -> Self {
        self.tools = tools;
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
    /// The tool calls the model asked for, in its order (none: a final answer).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
}
