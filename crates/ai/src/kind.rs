//! The kinds of provider Fleetgate speaks to, and what each needs by default.

use std::fmt;
use std::str::FromStr;

/// Which wire format a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProviderKind {
    /// OpenAI's chat completions (`POST {base}/chat/completions`).
    OpenAi,
    /// Anthropic's messages (`POST {base}/v1/messages`).
    Anthropic,
    /// Google's Gemini generateContent (`POST {base}/v1beta/models/{model}:generateContent`).
    Gemini,
    /// Any server speaking OpenAI's chat completions at a base URL of its own
    /// (a local model server, a router, another vendor's compatible endpoint).
    OpenAiCompatible,
}

impl ProviderKind {
    pub const ALL: [ProviderKind; 4] = [
        ProviderKind::OpenAi,
        ProviderKind::Anthropic,
        ProviderKind::Gemini,
        ProviderKind::OpenAiCompatible,
    ];

    /// The canonical spelling (`openai`, `anthropic`, `gemini`, `openai_compatible`).
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::OpenAi => "openai",
            ProviderKind::Anthropic => "anthropic",
            ProviderKind::Gemini => "gemini",
            ProviderKind::OpenAiCompatible => "openai_compatible",
        }
    }

    /// A name for people.
    pub fn display_name(self) -> &'static str {
        match self {
            ProviderKind::OpenAi => "OpenAI",
            ProviderKind::Anthropic => "Anthropic",
            ProviderKind::Gemini => "Google Gemini",
            ProviderKind::OpenAiCompatible => "OpenAI-compatible",
        }
    }

    /// The vendor's public endpoint; `None` for an OpenAI-compatible server,
    /// whose base URL must be given.
    pub fn default_base_url(self) -> Option<&'static str> {
        match self {
            ProviderKind::OpenAi => Some("https://api.openai.com/v1"),
            ProviderKind::Anthropic => Some("https://api.anthropic.com"),
            ProviderKind::Gemini => Some("https://generativelanguage.googleapis.com"),
            ProviderKind::OpenAiCompatible => None,
        }
    }

    /// The model used when a provider names none; `None` for an
    /// OpenAI-compatible server, whose models are its own.
    pub fn default_model(self) -> Option<&'static str> {
        match self {
            ProviderKind::OpenAi => Some("gpt-4o-mini"),
            ProviderKind::Anthropic => Some("claude-3-5-haiku-latest"),
            ProviderKind::Gemini => Some("gemini-2.0-flash"),
            ProviderKind::OpenAiCompatible => None,
        }
    }

    /// Whether requests need an API key (a local OpenAI-compatible server may not).
    pub fn needs_api_key(self) -> bool {
        !matches!(self, ProviderKind::OpenAiCompatible)
    }

    /// Whether the request and response bodies are OpenAI's.
    pub fn speaks_openai(self) -> bool {
        matches!(self, ProviderKind::OpenAi | ProviderKind::OpenAiCompatible)
    }
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ProviderKind {
    type Err = String;

    /// The canonical spellings, and the ones other tools use (`claude` for
    /// Anthropic, `google` for Gemini, `openai-compatible`, `custom`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "openai" => Ok(ProviderKind::OpenAi),
            "anthropic" | "claude" => Ok(ProviderKind::Anthropic),
            "gemini" | "google" => Ok(ProviderKind::Gemini),
            "openai_compatible" | "openai-compatible" | "custom" => {
                Ok(ProviderKind::OpenAiCompatible)
            }
            _ => Err(format!(
                "unknown provider kind {s:?}; expected openai, anthropic, gemini or openai_compatible"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_round_trip() {
        for k in ProviderKind::ALL {
            assert_eq!(k.as_str().parse::<ProviderKind>(), Ok(k));
        }
        assert_eq!("Claude".parse(), Ok(ProviderKind::Anthropic));
        assert_eq!(
            "openai-compatible".parse(),
            Ok(ProviderKind::OpenAiCompatible)
        );
        assert!("azure".parse::<ProviderKind>().is_err());
    }
}
