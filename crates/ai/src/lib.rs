//! Fleetgate's AI providers: one client ([`ProviderClient`]) that speaks
//! OpenAI's chat completions (OpenAI and any OpenAI-compatible server),
//! Anthropic's messages and Gemini's generateContent, streaming and not, and
//! returns the same [`Completion`] for each: the text, the token usage (input,
//! output, cached, reasoning), the model and why it stopped.
//!
//! It is a crate of its own, not a module of the manager, because two parts
//! use it: the manager (incident analysis, config generation, agents) calls
//! providers through [`ProviderClient`], and the gateway's `ai` route relays
//! requests to them and meters what it relays with the same wire formats
//! ([`wire`]) and SSE decoder ([`sse`]), without depending on the manager;
//! it rewrites Anthropic and Gemini streams into OpenAI's chunks with
//! [`wire::ChunkRelay`].

pub mod client;
pub mod error;
pub mod kind;
pub mod mask;
pub mod pricing;
pub mod sse;
pub mod types;
pub mod wire;

pub use client::{
    check_base_url, http_client, CompletionStream, ProviderClient, ProviderConfig, StreamEvent,
};
pub use error::AiError;
pub use kind::ProviderKind;
pub use mask::mask_key;
pub use pricing::{Micros, ModelPrice, PriceTable};
pub use types::{
    ChatMessage, ChatRequest, Completion, FinishReason, MessageRole, ToolCall, ToolDefinition,
    ToolResult, Usage,
};
