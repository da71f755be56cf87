//! The provider's answer on its way to the client, metered as it passes: each
//! chunk goes out as it arrives (nothing is held back), while an SSE decoder and
//! the provider's stream parser (or, for a whole answer, a copy of the JSON)
//! read the usage from it. When the body ends — completely, cut by the provider,
//! or dropped because the client went away — the request is priced, its budget
//! reservations settled and its usage record sent, exactly once.
//!
//! The stream of an Anthropic or Gemini provider is not relayed as it is but
//! rewritten into OpenAI's chunks by a [`ChunkRelay`] (`MeteredBody::relayed`),
//! which meters it as it reads it: each chunk of the provider gives its
//! OpenAI chunks as soon as its events are whole.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use fleetgate_ai::sse::SseDecoder;
use fleetgate_ai::wire::{parse_completion, ChunkRelay, RelayState, StreamParser};
use fleetgate_ai::{ProviderKind, Usage};
use futures::Stream;
use hyper::body::{Body, Frame, SizeHint};

use crate::pool::BoxError;

/// Chunks of the provider's body.
pub type ChunkStream = Pin<Box<dyn Stream<Item = Result<Bytes, BoxError>> + Send>>;

/// Largest whole (not streamed) answer kept to read its usage from; a larger
/// one is still relayed whole, its usage estimated.
const MAX_WHOLE: usize = 16 * 1024 * 1024;

/// How the answer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    Complete,
    /// The provider's body broke off or stalled.
    Cut,
    /// The client went away before the end.
    Cancelled,
    /// The provider sent an error in the middle of its stream.
    ProviderError,
}

impl Ending {
    pub fn as_str(self) -> &'static str {
        match self {
            Ending::Complete => "ok",
            Ending::Cut => "cut",
            Ending::Cancelled => "cancelled",
            Ending::ProviderError => "provider_error",
        }
    }
}

/// What the meter read, handed to the request's finisher once.
#[derive(Debug, Clone)]
pub struct Metered {
    pub usage: Usage,
    /// The provider reported no usage: `usage` is an estimate.
    pub estimated: bool,
    pub ending: Ending,
    /// The model the provider said answered, when it said.
    pub model: Option<String>,
}

struct SseReader {
    decoder: SseDecoder,
    parser: StreamParser,
    /// The decoder gave up (an oversized event): the rest is relayed unread.
    broken: bool,
}

enum Reader {
    Sse(Box<SseReader>),
    Whole {
        kind: ProviderKind,
        buf: Vec<u8>,
        overflow: bool,
    },
    /// A provider stream rewritten into OpenAI's chunks.
    Relay(Box<ChunkRelay>),
}

/// Called once with what was metered.
pub type Finisher = Box<dyn FnOnce(Metered) + Send>;

pub struct MeteredBody {
    inner: ChunkStream,
    reader: Reader,
    /// Bytes read from the provider.
    seen: u64,
    /// Prompt tokens estimated from the request, for when usage never comes.
    input_estimate: u64,
    finish: Option<Finisher>,
    /// Taken out of every chunk a relay writes (the provider's key, which an
    /// error event could echo); empty for none.
    secret: Bytes,
}

/// `body` with every occurrence of `secret` replaced by `[redacted]`.
pub fn redact(secret: &[u8], body: Bytes) -> Bytes {
    if secret.is_empty() || !body.windows(secret.len()).any(|w| w == secret) {
        return body;
    }
    let mut out = Vec::with_capacity(body.len());
    let mut rest = &body[..];
    while let Some(at) = rest.windows(secret.len()).position(|w| w == secret) {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(b"[redacted]");
        rest = &rest[at + secret.len()..];
    }
    out.extend_from_slice(rest);
    Bytes::from(out)
}

impl MeteredBody {
    pub fn new(
        inner: ChunkStream,
        kind: ProviderKind,
        model: &str,
        streamed: bool,
        input_estimate: u64,
        finish: Finisher,
    ) -> Self {
        let reader = if streamed {
            Reader::Sse(Box::new(SseReader {
                decoder: SseDecoder::default(),
                parser: StreamParser::new(kind, model),
                broken: false,
            }))
        } else {
            Reader::Whole {
                kind,
                buf: Vec::new(),
                overflow: false,
            }
        };
        Self {
            inner,
            reader,
            seen: 0,
            input_estimate,
            finish: Some(finish),
            secret: Bytes::new(),
        }
    }

    /// A provider stream rewritten into OpenAI's chunks by `relay` as it is
    /// read, metered from the usage the provider reports in it. `secret` (the
    /// provider's key) is taken out of every chunk written: the relay writes
    /// whole events, so a key inside one never straddles two chunks.
    pub fn relayed(
        inner: ChunkStream,
        relay: ChunkRelay,
        input_estimate: u64,
        finish: Finisher,
        secret: Bytes,
    ) -> Self {
        Self {
            inner,
            reader: Reader::Relay(Box::new(relay)),
            seen: 0,
            input_estimate,
            finish: Some(finish),
            secret,
        }
    }

    /// How a relayed stream that stopped ended.
    fn relay_ending(relay: &ChunkRelay) -> Ending {
        match (relay.state(), relay.error_code()) {
            (RelayState::Failed, Some("AI_PROVIDER_ERROR")) => Ending::ProviderError,
            (RelayState::Failed, _) => Ending::Cut,
            _ => Ending::Complete,
        }
    }

    fn read(&mut self, chunk: &[u8]) {
        self.seen += chunk.len() as u64;
        match &mut self.reader {
            Reader::Sse(r) => {
                if r.broken {
                    return;
                }
                match r.decoder.feed(chunk) {
                    Ok(events) => {
                        for ev in &events {
                            // An error event or a chunk that is not JSON leaves
                            // the usage read so far; the client sees it as is.
                            let _ = r.parser.feed(ev);
                        }
                    }
                    Err(_) => r.broken = true,
                }
            }
            // Read as it is rewritten, in `poll_frame`.
            Reader::Relay(_) => {}
            Reader::Whole { buf, overflow, .. } => {
                if !*overflow && buf.len() + chunk.len() <= MAX_WHOLE {
                    buf.extend_from_slice(chunk);
                } else {
                    *overflow = true;
                    buf.clear();
                }
            }
        }
    }

    fn end(&mut self, ending: Ending) {
        let Some(finish) = self.finish.take() else {
            return;
        };
        let (usage, model) = match &mut self.reader {
            Reader::Relay(r) => {
                let u = r.usage();
                let model = Some(r.model().to_string()).filter(|m| !m.is_empty());
                let reported = u.input_tokens > 0 || u.output_tokens > 0;
                if r.state() == RelayState::Done && reported {
                    (Some(u), model)
                } else if reported {
                    // Cut short: the provider's counts so far (Anthropic gives
                    // the prompt at the start and the output only at the end),
                    // the output at least what the text seen makes.
                    let metered = Metered {
                        usage: Usage {
                            input_tokens: if u.input_tokens > 0 {
                                u.input_tokens
                            } else {
                                self.input_estimate
                            },
                            output_tokens: u.output_tokens.max((r.text_len() as u64).div_ceil(4)),
                            ..u
                        },
                        estimated: true,
                        ending,
                        model,
                    };
                    finish(metered);
                    return;
                } else {
                    (None, model)
                }
            }
            Reader::Sse(r) => {
                if let Some(ev) = r.decoder.finish() {
                    let _ = r.parser.feed(&ev);
                }
                let c = r.parser.completion();
                let u = r.parser.usage();
                let reported = u.input_tokens > 0 || u.output_tokens > 0;
                (
                    reported.then_some(u),
                    Some(c.model).filter(|m| !m.is_empty()),
                )
            }
            Reader::Whole {
                kind,
                buf,
                overflow,
            } => {
                if *overflow || ending != Ending::Complete {
                    (None, None)
                } else {
                    match parse_completion(*kind, buf, "") {
                        Ok(c) => {
                            let u = c.usage;
                            let reported = u.input_tokens > 0 || u.output_tokens > 0;
                            (
                                reported.then_some(u),
                                Some(c.model).filter(|m| !m.is_empty()),
                            )
                        }
                        Err(_) => (None, None),
                    }
                }
            }
        };
        let metered = match usage {
            Some(usage) => Metered {
                usage,
                estimated: false,
                ending,
                model,
            },
            None => Metered {
                usage: self.estimate(),
                estimated: true,
                ending,
                model,
            },
        };
        finish(metered);
    }

    /// Usage when the provider reported none: the prompt as estimated from
    /// the request, and about one output token for every four bytes of
    /// generated text (of the whole body when the text cannot be read).
    fn estimate(&self) -> Usage {
        let text_bytes = match &self.reader {
            Reader::Sse(r) => r.parser.completion().text.len() as u64,
            Reader::Relay(r) => r.text_len() as u64,
            Reader::Whole { .. } => self.seen,
        };
        Usage {
            input_tokens: self.input_estimate,
            output_tokens: text_bytes.div_ceil(4),
            ..Usage::default()
        }
    }
}

impl MeteredBody {
    /// `poll_frame` of a relayed stream: reads the provider's chunks until
    /// they make some OpenAI chunks (or the stream ends) and gives those. A
    /// provider body that breaks off ends in an error chunk, not a broken
    /// response: the caller learns why.
    fn poll_relayed(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            if self.finish.is_none() {
                return Poll::Ready(None);
            }
            let mut out = Vec::new();
            let polled = self.inner.as_mut().poll_next(cx);
            let Reader::Relay(relay) = &mut self.reader else {
                return Poll::Ready(None);
            };
            match polled {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(chunk))) => {
                    self.seen += chunk.len() as u64;
                    relay.feed(&chunk, &mut out);
                }
                Poll::Ready(Some(Err(e))) => {
                    relay.cut(
                        &format!("the AI provider's stream broke off: {e}"),
                        &mut out,
                    );
                }
                Poll::Ready(None) => relay.finish(&mut out),
            }
            if relay.state() != RelayState::Open {
                let ending = Self::relay_ending(relay);
                self.end(ending);
            }
            if !out.is_empty() {
                let out = redact(&self.secret, Bytes::from(out));
                return Poll::Ready(Some(Ok(Frame::data(out))));
            }
        }
    }
}

impl Body for MeteredBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Reader::Relay(_) = this.reader {
            return this.poll_relayed(cx);
        }
        if this.finish.is_none() {
            return Poll::Ready(None);
        }
        match this.inner.as_mut().poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(chunk))) => {
                this.read(&chunk);
                Poll::Ready(Some(Ok(Frame::data(chunk))))
            }
            Poll::Ready(Some(Err(e))) => {
                this.end(Ending::Cut);
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                this.end(Ending::Complete);
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.finish.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

impl Drop for MeteredBody {
    fn drop(&mut self) {
        self.end(Ending::Cancelled);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::sync::{Arc, Mutex};

    fn stream_of(chunks: Vec<Result<&'static str, &'static str>>) -> ChunkStream {
        Box::pin(futures::stream::iter(chunks.into_iter().map(|c| {
            c.map(Bytes::from_static_str)
                .map_err(|e| -> BoxError { e.into() })
        })))
    }

    trait FromStatic {
        fn from_static_str(s: &'static str) -> Bytes;
    }
    impl FromStatic for Bytes {
        fn from_static_str(s: &'static str) -> Bytes {
            Bytes::from_static(s.as_bytes())
        }
    }

    fn body(
        chunks: Vec<Result<&'static str, &'static str>>,
        streamed: bool,
    ) -> (MeteredBody, Arc<Mutex<Vec<Metered>>>) {
        let out = Arc::new(Mutex::new(Vec::new()));
        let o = out.clone();
        let b = MeteredBody::new(
            stream_of(chunks),
            ProviderKind::OpenAiCompatible,
            "m",
            streamed,
            7,
            Box::new(move |m| o.lock().expect("lock").push(m)),
        );
        (b, out)
    }

    /// The provider key the relayed bodies of these tests take out.
    const SECRET: &str = "sk-ant-provider-secret";

    #[tokio::test]
    async fn a_provider_key_echoed_in_an_error_event_is_redacted() {
        let (b, _out) = relayed(vec![
            Ok(START),
            Ok("event: error\ndata: {\"type\":\"error\",\"error\":{\"message\":\"key sk-ant-provider-secret is not valid\"}}\n\n"),
        ]);
        let text =
            String::from_utf8(b.collect().await.expect("body").to_bytes().to_vec()).expect("utf-8");
        assert!(text.contains("AI_PROVIDER_ERROR"), "{text}");
        assert!(text.contains("key [redacted] is not valid"), "{text}");
        assert!(!text.contains(SECRET), "{text}");
    }

    #[tokio::test]
    async fn a_stream_with_usage_is_metered_once() {
        let (b, out) = body(
            vec![
                Ok("data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n"),
                Ok("data: {\"choices\":[{\"delta\":{\"content\":\"lo\"},\"finish_reason\":\"stop\"}]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2}}\n\n"),
                Ok("data: [DONE]\n\n"),
            ],
            true,
        );
        let bytes = b.collect().await.expect("body").to_bytes();
        assert!(bytes.ends_with(b"[DONE]\n\n"));
        let out = out.lock().expect("lock");
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].ending, Ending::Complete);
        assert!(!out[0].estimated);
        assert_eq!(
            (out[0].usage.input_tokens, out[0].usage.output_tokens),
            (5, 2)
        );
    }

    #[tokio::test]
    async fn a_cut_stream_is_estimated() {
        let (b, out) = body(
            vec![
                Ok("data: {\"choices\":[{\"delta\":{\"content\":\"12345678\"}}]}\n\n"),
                Err("reset"),
            ],
            true,
        );
        assert!(b.collect().await.is_err());
        let out = out.lock().expect("lock");
        assert_eq!(out[0].ending, Ending::Cut);
        assert!(out[0].estimated);
        assert_eq!(
            (out[0].usage.input_tokens, out[0].usage.output_tokens),
            (7, 2)
        );
    }

    #[tokio::test]
    async fn a_dropped_body_is_cancelled() {
        let (mut b, out) = body(vec![Ok("{\"choices\":"), Ok("[]}")], false);
        let _ = b.frame().await;
        drop(b);
        let out = out.lock().expect("lock");
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].ending, Ending::Cancelled);
        assert!(out[0].estimated);
    }

    #[tokio::test]
    async fn a_whole_answer_reads_its_usage() {
        let (b, out) = body(
            vec![Ok("{\"model\":\"m-1\",\"choices\":[{\"message\":{\"content\":\"hi\"}}],"), Ok("\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1,\"prompt_tokens_details\":{\"cached_tokens\":2}}}")],
            false,
        );
        b.collect().await.expect("body");
        let out = out.lock().expect("lock");
        assert_eq!(out[0].usage.cached_input_tokens, 2);
        assert_eq!(out[0].model.as_deref(), Some("m-1"));
    }

    fn relayed(
        chunks: Vec<Result<&'static str, &'static str>>,
    ) -> (MeteredBody, Arc<Mutex<Vec<Metered>>>) {
        let out = Arc::new(Mutex::new(Vec::new()));
        let o = out.clone();
        let b = MeteredBody::relayed(
            stream_of(chunks),
            ChunkRelay::new(
                ProviderKind::Anthropic,
                "claude-x",
                "chatcmpl-t",
                0,
                1 << 20,
            ),
            7,
            Box::new(move |m| o.lock().expect("lock").push(m)),
            Bytes::from_static(SECRET.as_bytes()),
        );
        (b, out)
    }

    const START: &str = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-x-1\",\"usage\":{\"input_tokens\":30,\"output_tokens\":1}}}\n\n";
    const DELTA: &str = "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"0123456789abcdef0123\"}}\n\n";

    #[tokio::test]
    async fn a_relayed_stream_is_rewritten_and_metered_from_the_provider() {
        let (b, out) = relayed(vec![
            Ok(START),
            Ok("event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,"),
            Ok("\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n"),
            Ok("event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":9}}\n\n"),
            Ok("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"),
        ]);
        let bytes = b.collect().await.expect("body").to_bytes();
        let text = String::from_utf8(bytes.to_vec()).expect("utf-8");
        assert!(text.contains("\"content\":\"Hi\""), "{text}");
        assert!(text.contains("\"finish_reason\":\"stop\""), "{text}");
        assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
        let out = out.lock().expect("lock");
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].ending, Ending::Complete);
        assert!(!out[0].estimated);
        assert_eq!(
            (out[0].usage.input_tokens, out[0].usage.output_tokens),
            (30, 9)
        );
        assert_eq!(out[0].model.as_deref(), Some("claude-x-1"));
    }

    #[tokio::test]
    async fn a_relayed_stream_cut_or_failing_ends_with_an_error_chunk() {
        // Broken off after 20 bytes of text: the prompt as the provider
        // counted it, the output from the text seen.
        let (b, out) = relayed(vec![Ok(START), Ok(DELTA), Err("reset")]);
        let bytes = b
            .collect()
            .await
            .expect("an error chunk, not a broken body")
            .to_bytes();
        let text = String::from_utf8(bytes.to_vec()).expect("utf-8");
        assert!(
            text.contains("AI_PROVIDER_CUT") && !text.contains("[DONE]"),
            "{text}"
        );
        {
            let out = out.lock().expect("lock");
            assert_eq!(out[0].ending, Ending::Cut);
            assert!(out[0].estimated);
            assert_eq!(
                (out[0].usage.input_tokens, out[0].usage.output_tokens),
                (30, 5)
            );
        }
        let (b, out) = relayed(vec![
            Ok(DELTA),
            Ok("event: error\ndata: {\"type\":\"error\",\"error\":{\"message\":\"Overloaded\"}}\n\n"),
            Ok(DELTA),
        ]);
        let text =
            String::from_utf8(b.collect().await.expect("body").to_bytes().to_vec()).expect("utf-8");
        assert!(text.ends_with("\"code\":\"AI_PROVIDER_ERROR\",\"message\":\"Overloaded\",\"type\":\"provider_error\"}}\n\n"), "{text}");
        let out = out.lock().expect("lock");
        assert_eq!(out[0].ending, Ending::ProviderError);
        assert_eq!(
            (out[0].usage.input_tokens, out[0].usage.output_tokens),
            (7, 5),
            "nothing reported: the request's estimate and the text"
        );
    }

    #[tokio::test]
    async fn a_dropped_relayed_stream_is_cancelled() {
        let (mut b, out) = relayed(vec![Ok(START), Ok(DELTA), Ok(DELTA)]);
        let _ = b.frame().await;
        let _ = b.frame().await;
        drop(b);
        let out = out.lock().expect("lock");
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].ending, Ending::Cancelled);
        assert!(out[0].estimated);
        assert_eq!(
            (out[0].usage.input_tokens, out[0].usage.output_tokens),
            (30, 5)
        );
    }

    proptest::proptest! {
        /// Any bytes, cut anywhere: relayed unchanged, metered exactly once, no panic.
        #[test]
        fn any_bytes_are_relayed_unchanged(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2000), cut in 0usize..2000, streamed in proptest::prelude::any::<bool>()) {
            let rt = tokio::runtime::Builder::new_current_thread().build().expect("rt");
            let cut = cut.min(data.len());
            let (a, b) = data.split_at(cut);
            let chunks: Vec<Result<Bytes, BoxError>> = vec![Ok(Bytes::copy_from_slice(a)), Ok(Bytes::copy_from_slice(b))];
            let out = Arc::new(Mutex::new(0));
            let o = out.clone();
            let body = MeteredBody::new(Box::pin(futures::stream::iter(chunks)), ProviderKind::OpenAi, "m", streamed, 0, Box::new(move |_| *o.lock().expect("lock") += 1));
            let got = rt.block_on(body.collect()).expect("body").to_bytes();
            proptest::prop_assert_eq!(&got[..], &data[..]);
            proptest::prop_assert_eq!(*out.lock().expect("lock"), 1);
        }
    }
}
