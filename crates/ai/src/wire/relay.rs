//! A provider's stream (Anthropic's messages events, Gemini's
//! `streamGenerateContent?alt=sse` chunks) rewritten, as it arrives, into
//! OpenAI's `chat.completion.chunk` events: the gateway's `ai` route relays
//! Anthropic and Gemini streams to callers that speak OpenAI's API with it.
//!
//! Bytes go in as they are read from the provider, in pieces cut anywhere;
//! each provider event becomes its OpenAI chunks as soon as its blank line is
//! read (nothing waits for the end of the answer). The stream out is:
//!
//! 1. a first chunk giving the role (`{"role": "assistant", "content": ""}`);
//! 2. one chunk per piece of text, in order;
//! 3. a chunk with an empty delta and the finish reason in OpenAI's words
//!    (Anthropic's `end_turn`/`stop_sequence` and Gemini's `STOP` are `stop`,
//!    `max_tokens`/`MAX_TOKENS` `length`, `refusal`/`SAFETY`/… `content_filter`);
//! 4. a usage chunk (`choices: []`, `usage` with cached and reasoning tokens),
//!    always, as the gateway asks OpenAI providers for one on every stream;
//! 5. `data: [DONE]`.
//!
//! A stream that goes wrong ends with one OpenAI-shaped error chunk
//! (`{"error": {"message", "type", "code"}}`) and no `[DONE]`: an `error`
//! event of the provider (`AI_PROVIDER_ERROR`), an event that is not JSON or
//! is larger than the limit (`AI_PROVIDER_MALFORMED`), or a stream that breaks
//! off or ends before the provider said it was complete (`AI_PROVIDER_CUT`).
//! Nothing is read after the end.

use serde_json::{json, Value};

use super::StreamParser;
use crate::sse::{SseDecoder, SseEvent};
use crate::{AiError, FinishReason, ProviderKind, Usage};

/// Largest provider event relayed: a text chunk is a few kilobytes; a larger
/// one ends the stream with an error chunk rather than grow without bound.
pub const MAX_RELAY_EVENT_BYTES: usize = 1024 * 1024;

/// Where the relayed stream stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayState {
    /// More is expected from the provider.
    Open,
    /// The provider said the answer is complete; `[DONE]` went out.
    Done,
    /// It ended with an error chunk.
    Failed,
}

/// One provider stream being rewritten into OpenAI chunks.
#[derive(Debug)]
pub struct ChunkRelay {
    decoder: SseDecoder,
    parser: StreamParser,
    id: String,
    created: i64,
    role_sent: bool,
    finish_sent: bool,
    state: RelayState,
    /// The error code the stream ended with.
    error_code: Option<&'static str>,
}

/// OpenAI's usage object for `u`.
pub fn openai_usage(u: &Usage) -> Value {
    json!({
        "prompt_tokens": u.input_tokens,
        "completion_tokens": u.output_tokens,
        "total_tokens": u.total_tokens(),
        "prompt_tokens_details": {"cached_tokens": u.cached_input_tokens},
        "completion_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
    })
}

/// A finish reason in OpenAI's words (which has none for the reasons it
/// does not know: those are a `stop`).
fn openai_finish(f: &FinishReason) -> &'static str {
    match f {
        FinishReason::Length => "length",
        FinishReason::ToolCalls => "tool_calls",
        FinishReason::ContentFilter => "content_filter",
        FinishReason::Stop | FinishReason::Other(_) | FinishReason::Unknown => "stop",
    }
}

fn frame(out: &mut Vec<u8>, data: &Value) {
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(data.to_string().as_bytes());
    out.extend_from_slice(b"\n\n");
}

impl ChunkRelay {
    /// A relay of a `kind` stream answering `asked_model`; every chunk carries
    /// `id` and `created` (seconds), as OpenAI's chunks of one answer do.
    pub fn new(
        kind: ProviderKind,
        asked_model: &str,
        id: impl Into<String>,
        created: i64,
        max_event_bytes: usize,
    ) -> Self {
        Self {
            decoder: SseDecoder::new(max_event_bytes),
            parser: StreamParser::new(kind, asked_model),
            id: id.into(),
            created,
            role_sent: false,
            finish_sent: false,
            state: RelayState::Open,
            error_code: None,
        }
    }

    pub fn state(&self) -> RelayState {
        self.state
    }

    /// The code of the error chunk the stream ended with, if it did.
    pub fn error_code(&self) -> Option<&'static str> {
        self.error_code
    }

    /// The provider's usage as reported so far (zero when it reported none).
    pub fn usage(&self) -> Usage {
        self.parser.usage()
    }

    /// The model answering (the one the provider named, else the one asked).
    pub fn model(&self) -> &str {
        self.parser.model()
    }

    /// Bytes of answer text relayed so far.
    pub fn text_len(&self) -> usize {
        self.parser.text_len()
    }

    /// Reads bytes of the provider's body; appends to `out` the OpenAI
    /// events they complete. Once the stream ended, bytes are ignored.
    pub fn feed(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        if self.state != RelayState::Open {
            return;
        }
        let mut events = Vec::new();
        let decoded = self.decoder.feed_into(bytes, &mut events);
        for ev in &events {
            if self.state != RelayState::Open {
                return;
            }
            self.event(ev, out);
        }
        if let Err(e) = decoded {
            self.fail("AI_PROVIDER_MALFORMED", &e.to_string(), out);
        }
    }

    /// The provider's body ended: an event left without its blank line is
    /// read, and a stream the provider never said was complete ends with an
    /// `AI_PROVIDER_CUT` error chunk.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.state != RelayState::Open {
            return;
        }
        if let Some(ev) = self.decoder.finish() {
            self.event(&ev, out);
        }
        self.cut(
            "the AI provider's stream ended before its answer was complete",
            out,
        );
    }

    /// The provider's body broke off (or stalled) for `reason`: an
    /// `AI_PROVIDER_CUT` error chunk ends the stream, unless it had ended.
    pub fn cut(&mut self, reason: &str, out: &mut Vec<u8>) {
        self.fail("AI_PROVIDER_CUT", reason, out);
    }

    fn chunk(&self, delta: Value, finish: Option<&str>, out: &mut Vec<u8>) {
        frame(
            out,
            &json!({
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.parser.model(),
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }),
        );
    }

    fn event(&mut self, ev: &SseEvent, out: &mut Vec<u8>) {
        let delta = match self.parser.feed(ev) {
            Ok(d) => d,
            Err(AiError::Provider { message, .. }) => {
                return self.fail("AI_PROVIDER_ERROR", &message, out);
            }
            Err(e) => return self.fail("AI_PROVIDER_MALFORMED", &e.to_string(), out),
        };
        if !self.role_sent {
            self.role_sent = true;
            self.chunk(json!({"role": "assistant", "content": ""}), None, out);
        }
        if !delta.is_empty() {
            self.chunk(json!({"content": delta}), None, out);
        }
        if !self.finish_sent {
            if let Some(f) = self.parser.finish_reason() {
                let f = openai_finish(f);
                self.finish_sent = true;
                self.chunk(json!({}), Some(f), out);
            }
        }
        if self.parser.is_done() {
            if !self.finish_sent {
                self.finish_sent = true;
                self.chunk(json!({}), Some("stop"), out);
            }
            frame(
                out,
                &json!({
                    "id": self.id,
                    "object": "chat.completion.chunk",
                    "created": self.created,
                    "model": self.parser.model(),
                    "choices": [],
                    "usage": openai_usage(&self.parser.usage()),
                }),
            );
            out.extend_from_slice(b"data: [DONE]\n\n");
            self.state = RelayState::Done;
        }
    }

    fn fail(&mut self, code: &'static str, message: &str, out: &mut Vec<u8>) {
        if self.state != RelayState::Open {
            return;
        }
        self.state = RelayState::Failed;
        self.error_code = Some(code);
        frame(
            out,
            &json!({"error": {"message": message, "type": "provider_error", "code": code}}),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ANTHROPIC: &str = concat!(
        "event: message_start\r\n",
        "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"model\":\"claude-x-1\",\"content\":[],",
        "\"usage\":{\"input_tokens\":20,\"cache_read_input_tokens\":100,\"cache_creation_input_tokens\":5,\"output_tokens\":1}}}\r\n\r\n",
        ": a comment\n\n",
        "event: content_block_start\n",
        "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
        "event: ping\ndata: {\"type\":\"ping\"}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Héllo\"}}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\", world\"}}\n\n",
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
        "event: message_delta\n",
        "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"max_tokens\"},\"usage\":{\"output_tokens\":42}}\n\n",
        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
    );

    const GEMINI: &str = concat!(
        "data: {\"candidates\":[{\"content\":{\"role\":\"model\",\"parts\":[{\"text\":\"Hel\"}]}}],",
        "\"usageMetadata\":{\"promptTokenCount\":9,\"candidatesTokenCount\":1},\"modelVersion\":\"gemini-x-001\"}\r\n\r\n",
        "data: {\"candidates\":[{\"content\":{\"role\":\"model\",\"parts\":[{\"text\":\"thinking\",\"thought\":true},{\"text\":\"lo\"}]},",
        "\"finishReason\":\"SAFETY\"}],\"usageMetadata\":{\"promptTokenCount\":9,\"candidatesTokenCount\":2,",
        "\"thoughtsTokenCount\":30,\"cachedContentTokenCount\":4},\"modelVersion\":\"gemini-x-001\"}\r\n\r\n",
    );

    fn relay(kind: ProviderKind) -> ChunkRelay {
        ChunkRelay::new(kind, "asked", "chatcmpl-1", 1700, MAX_RELAY_EVENT_BYTES)
    }

    /// Runs `body` through a relay in the given pieces, then ends it.
    fn run(kind: ProviderKind, pieces: &[&[u8]]) -> (ChunkRelay, String) {
        let mut r = relay(kind);
        let mut out = Vec::new();
        for p in pieces {
            r.feed(p, &mut out);
        }
        r.finish(&mut out);
        (r, String::from_utf8(out).expect("utf-8 out"))
    }

    /// The JSON of each `data:` event, `[DONE]` as a string.
    fn events(out: &str) -> Vec<Value> {
        assert!(out.is_empty() || out.ends_with("\n\n"), "{out}");
        out.split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| {
                let data = e.strip_prefix("data: ").expect("a data line");
                assert!(!data.contains('\n'), "one line per event: {data}");
                if data == "[DONE]" {
                    Value::String(data.into())
                } else {
                    serde_json::from_str(data).expect("JSON")
                }
            })
            .collect()
    }

    #[test]
    fn an_anthropic_stream_becomes_openai_chunks() {
        let (r, out) = run(ProviderKind::Anthropic, &[ANTHROPIC.as_bytes()]);
        assert_eq!(r.state(), RelayState::Done);
        let ev = events(&out);
        assert_eq!(ev.len(), 6, "{out}");
        assert_eq!(ev[0]["object"], "chat.completion.chunk");
        assert_eq!(ev[0]["id"], "chatcmpl-1");
        assert_eq!(ev[0]["created"], 1700);
        assert_eq!(ev[0]["model"], "claude-x-1");
        assert_eq!(
            ev[0]["choices"][0]["delta"],
            json!({"role": "assistant", "content": ""})
        );
        assert_eq!(ev[1]["choices"][0]["delta"]["content"], "Héllo");
        assert_eq!(ev[2]["choices"][0]["delta"]["content"], ", world");
        assert_eq!(ev[2]["choices"][0]["finish_reason"], Value::Null);
        assert_eq!(ev[3]["choices"][0]["delta"], json!({}));
        assert_eq!(ev[3]["choices"][0]["finish_reason"], "length");
        assert_eq!(ev[4]["choices"], json!([]));
        assert_eq!(
            ev[4]["usage"],
            json!({"prompt_tokens": 125, "completion_tokens": 42, "total_tokens": 167,
                   "prompt_tokens_details": {"cached_tokens": 100},
                   "completion_tokens_details": {"reasoning_tokens": 0}})
        );
        assert_eq!(ev[5], "[DONE]");
        assert_eq!(r.usage().cache_write_input_tokens, 5);
    }

    #[test]
    fn a_gemini_stream_becomes_openai_chunks() {
        let (r, out) = run(ProviderKind::Gemini, &[GEMINI.as_bytes()]);
        assert_eq!(r.state(), RelayState::Done);
        let ev = events(&out);
        assert_eq!(ev.len(), 6, "{out}");
        assert_eq!(ev[0]["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(ev[1]["choices"][0]["delta"]["content"], "Hel");
        assert_eq!(ev[2]["choices"][0]["delta"]["content"], "lo");
        assert_eq!(ev[2]["model"], "gemini-x-001");
        assert_eq!(ev[3]["choices"][0]["finish_reason"], "content_filter");
        assert_eq!(ev[4]["usage"]["prompt_tokens"], 9);
        assert_eq!(ev[4]["usage"]["completion_tokens"], 32);
        assert_eq!(
            ev[4]["usage"]["completion_tokens_details"]["reasoning_tokens"],
            30
        );
        assert_eq!(ev[4]["usage"]["prompt_tokens_details"]["cached_tokens"], 4);
        assert_eq!(ev[5], "[DONE]");
    }

    #[test]
    fn finish_reasons_in_openai_words() {
        for (anthropic, openai) in [
            ("end_turn", "stop"),
            ("stop_sequence", "stop"),
            ("max_tokens", "length"),
            ("refusal", "content_filter"),
            ("pause_turn", "stop"),
        ] {
            let body = ANTHROPIC.replace("\"max_tokens\"", &format!("\"{anthropic}\""));
            let (_, out) = run(ProviderKind::Anthropic, &[body.as_bytes()]);
            assert_eq!(events(&out)[3]["choices"][0]["finish_reason"], openai);
        }
        for (gemini, openai) in [
            ("STOP", "stop"),
            ("MAX_TOKENS", "length"),
            ("RECITATION", "content_filter"),
            ("PROHIBITED_CONTENT", "content_filter"),
            ("OTHER", "stop"),
        ] {
            let body = GEMINI.replace("SAFETY", gemini);
            let (_, out) = run(ProviderKind::Gemini, &[body.as_bytes()]);
            assert_eq!(events(&out)[3]["choices"][0]["finish_reason"], openai);
        }
    }

    #[test]
    fn an_error_event_ends_the_stream_with_an_error_chunk() {
        let cut = ANTHROPIC.find("event: content_block_stop").expect("cut");
        let body = format!(
            "{}event: error\ndata: {{\"type\":\"error\",\"error\":{{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}}}\n\n{}",
            &ANTHROPIC[..cut],
            &ANTHROPIC[cut..]
        );
        let (r, out) = run(ProviderKind::Anthropic, &[body.as_bytes()]);
        assert_eq!(r.state(), RelayState::Failed);
        assert_eq!(r.error_code(), Some("AI_PROVIDER_ERROR"));
        let ev = events(&out);
        assert_eq!(ev.len(), 4, "{out}");
        assert_eq!(
            ev[3],
            json!({"error": {"message": "Overloaded", "type": "provider_error", "code": "AI_PROVIDER_ERROR"}})
        );
        // The usage read before the error stays for the meter.
        assert_eq!(r.usage().input_tokens, 125);
        assert_eq!(r.text_len(), "Héllo, world".len());

        let body =
            "data: {\"error\":{\"code\":500,\"message\":\"internal\",\"status\":\"INTERNAL\"}}\n\n";
        let (r, out) = run(ProviderKind::Gemini, &[body.as_bytes()]);
        assert_eq!(r.error_code(), Some("AI_PROVIDER_ERROR"));
        assert_eq!(events(&out)[0]["error"]["message"], "internal");
    }

    #[test]
    fn invalid_json_oversized_events_and_cut_streams_end_with_an_error_chunk() {
        let (r, out) = run(
            ProviderKind::Gemini,
            &[b"data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"a\"}]}}]}\n\ndata: {nope\n\ndata: {}\n\n"],
        );
        assert_eq!(r.error_code(), Some("AI_PROVIDER_MALFORMED"));
        let ev = events(&out);
        assert_eq!(ev.len(), 3, "nothing after the error: {out}");
        assert_eq!(ev[1]["choices"][0]["delta"]["content"], "a");
        assert!(ev[2]["error"]["message"]
            .as_str()
            .expect("message")
            .contains("not JSON"));

        let mut r = ChunkRelay::new(ProviderKind::Anthropic, "m", "c", 0, 64);
        let mut out = Vec::new();
        r.feed(b"data: {\"type\":\"ping\"}\n\ndata: ", &mut out);
        r.feed(&[b'x'; 100], &mut out);
        r.feed(b"\n\n", &mut out);
        r.finish(&mut out);
        let ev = events(&String::from_utf8(out).expect("utf-8"));
        assert_eq!(ev.len(), 2);
        assert_eq!(ev[1]["error"]["code"], "AI_PROVIDER_MALFORMED");
        assert!(ev[1]["error"]["message"]
            .as_str()
            .expect("message")
            .contains("larger than 64 bytes"));

        // The body ends before message_stop: cut.
        let cut = ANTHROPIC.find("event: message_delta").expect("cut");
        let (r, out) = run(ProviderKind::Anthropic, &[&ANTHROPIC.as_bytes()[..cut]]);
        assert_eq!(r.error_code(), Some("AI_PROVIDER_CUT"));
        let ev = events(&out);
        assert_eq!(ev.last().expect("last")["error"]["code"], "AI_PROVIDER_CUT");
        assert!(!out.contains("[DONE]"));
        assert_eq!(r.usage().output_tokens, 1, "as far as the provider said");

        // The last event without its blank line still counts.
        let trimmed = GEMINI.trim_end();
        let (r, out) = run(ProviderKind::Gemini, &[trimmed.as_bytes()]);
        assert_eq!(r.state(), RelayState::Done);
        assert!(out.ends_with("data: [DONE]\n\n"));

        // Broken off: one error chunk, nothing after.
        let mut r = relay(ProviderKind::Gemini);
        let mut out = Vec::new();
        r.feed(&GEMINI.as_bytes()[..40], &mut out);
        r.cut("connection reset", &mut out);
        r.feed(&GEMINI.as_bytes()[40..], &mut out);
        r.finish(&mut out);
        let ev = events(&String::from_utf8(out).expect("utf-8"));
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0]["error"]["message"], "connection reset");
    }

    fn split<'a>(body: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (body.len() + 1)).collect();
        points.sort_unstable();
        let mut pieces = Vec::new();
        let mut at = 0;
        for p in points.into_iter().chain([body.len()]) {
            pieces.push(&body[at..p]);
            at = p;
        }
        pieces
    }

    fn kind() -> impl Strategy<Value = ProviderKind> {
        prop_oneof![Just(ProviderKind::Anthropic), Just(ProviderKind::Gemini)]
    }

    proptest! {
        /// However a valid stream is cut across reads (inside a CRLF, inside a
        /// multi-byte character), the same chunks come out.
        #[test]
        fn any_split_gives_the_same_chunks(kind in kind(), cuts in proptest::collection::vec(0usize..2000, 0..24)) {
            let body = if kind == ProviderKind::Anthropic { ANTHROPIC } else { GEMINI };
            let (_, whole) = run(kind, &[body.as_bytes()]);
            let (r, got) = run(kind, &split(body.as_bytes(), &cuts));
            prop_assert_eq!(r.state(), RelayState::Done);
            prop_assert_eq!(got, whole);
        }

        /// Random bytes, cut anywhere: never a panic; what comes out is whole
        /// `data:` events of JSON (or `[DONE]`), and the stream ends.
        #[test]
        fn random_bytes_never_panic(kind in kind(), bytes in proptest::collection::vec(any::<u8>(), 0..600),
                                    cuts in proptest::collection::vec(0usize..600, 0..8), max in 1usize..256) {
            let mut r = ChunkRelay::new(kind, "m", "c", 0, max);
            let mut out = Vec::new();
            for p in split(&bytes, &cuts) {
                r.feed(p, &mut out);
            }
            r.finish(&mut out);
            prop_assert_ne!(r.state(), RelayState::Open);
            let text = String::from_utf8(out).expect("utf-8");
            let _ = events(&text);
        }

        /// A valid stream with junk spliced in somewhere: never a panic, and
        /// every chunk before the end is well formed.
        #[test]
        fn spliced_junk_never_panics(kind in kind(), at in 0usize..2000,
                                     junk in proptest::collection::vec(any::<u8>(), 0..64)) {
            let body = if kind == ProviderKind::Anthropic { ANTHROPIC } else { GEMINI };
            let at = at % (body.len() + 1);
            let mut bytes = body.as_bytes()[..at].to_vec();
            bytes.extend_from_slice(&junk);
            bytes.extend_from_slice(&body.as_bytes()[at..]);
            let (r, out) = run(kind, &[&bytes]);
            prop_assert_ne!(r.state(), RelayState::Open);
            let _ = events(&out);
        }
    }
}
