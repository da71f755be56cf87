//! Why a call to a provider failed. Messages never carry the API key: the
//! client sends it in a header (never in a URL) and scrubs it from anything a
//! provider echoes back.

use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AiError {
    /// The provider's configuration cannot work (a bad base URL, no key).
    #[error("{0}")]
    Config(String),
    /// The provider could not be reached, or the connection broke.
    #[error("cannot reach the provider: {0}")]
    Transport(String),
    /// No answer (or, streaming, no next chunk) within the time allowed.
    #[error("the provider did not answer within {} ms", .0.as_millis())]
    Timeout(Duration),
    /// The provider answered with an error: its HTTP status (none for an
    /// error sent inside a stream) and its message.
    #[error("{}", provider_message(*.status, .message))]
    Provider {
        status: Option<u16>,
        message: String,
    },
    /// The answer is not what the provider's format says it is.
    #[error("malformed answer from the provider: {0}")]
    Malformed(String),
    /// The stream ended before the provider said it was done.
    #[error("the stream ended before the provider finished its answer")]
    Truncated,
}

fn provider_message(status: Option<u16>, message: &str) -> String {
    match status {
        Some(s) => format!("the provider answered {s}: {message}"),
        None => format!("the provider reported an error: {message}"),
    }
}

impl AiError {
    /// Whether the provider refused the credentials (401 or 403).
    pub fn is_auth(&self) -> bool {
        matches!(
            self,
            AiError::Provider {
                status: Some(401 | 403),
                ..
            }
        )
    }
}
