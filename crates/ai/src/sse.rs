//! An incremental decoder of server-sent events (the `text/event-stream`
//! format all three providers stream in): bytes go in as they arrive, whole
//! events come out. It never holds more than one event's bytes, up to a limit.

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseEvent {
    /// The `event:` field; empty when the event named none (a `message`).
    pub event: String,
    /// The `data:` lines, joined with `\n`.
    pub data: String,
}

/// The decoder's refusal: one event or line grew past the limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an event of the stream is larger than {0} bytes")]
pub struct TooLarge(pub usize);

/// Largest event accepted by default (a provider's chunk is a few kilobytes).
pub const DEFAULT_MAX_EVENT_BYTES: usize = 8 * 1024 * 1024;

#[derive(Debug)]
pub struct SseDecoder {
    /// Bytes of the line being read.
    line: Vec<u8>,
    /// The previous byte was a `\r`: a `\n` right after it ends nothing more.
    after_cr: bool,
    event: String,
    data: String,
    has_data: bool,
    max: usize,
}

impl Default for SseDecoder {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_EVENT_BYTES)
    }
}

impl SseDecoder {
    pub fn new(max_event_bytes: usize) -> Self {
        Self {
            line: Vec::new(),
            after_cr: false,
            event: String::new(),
            data: String::new(),
            has_data: false,
            max: max_event_bytes,
        }
    }

    /// Feeds bytes; returns the events they complete, in order. Lines end with
    /// `\n`, `\r\n` or `\r`; a blank line dispatches the event.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<SseEvent>, TooLarge> {
        let mut out = Vec::new();
        self.feed_into(bytes, &mut out)?;
        Ok(out)
    }

    /// [`feed`](SseDecoder::feed) appending to `out`: on a refusal, the events
    /// completed before the oversized one are in `out` all the same, so what
    /// comes out does not depend on how the bytes were cut.
    pub fn feed_into(&mut self, bytes: &[u8], out: &mut Vec<SseEvent>) -> Result<(), TooLarge> {
        for &b in bytes {
            match b {
                b'\n' if self.after_cr => self.after_cr = false,
                b'\n' | b'\r' => {
                    self.after_cr = b == b'\r';
                    self.end_line(out)?;
                }
                _ => {
                    self.after_cr = false;
                    if self.line.len() + self.data.len() >= self.max {
                        return Err(TooLarge(self.max));
                    }
                    self.line.push(b);
                }
            }
        }
        Ok(())
    }

    /// The end of the body: an event left without its blank line is dispatched
    /// (servers that close right after their last `data:` line lose nothing).
    pub fn finish(&mut self) -> Option<SseEvent> {
        let mut out = Vec::new();
        if !self.line.is_empty() {
            // The limit was checked as the bytes arrived.
            let _ = self.end_line(&mut out);
        }
        let _ = self.end_line(&mut out);
        out.pop()
    }

    fn end_line(&mut self, out: &mut Vec<SseEvent>) -> Result<(), TooLarge> {
        let line = std::mem::take(&mut self.line);
        if line.is_empty() {
            if self.has_data {
                out.push(SseEvent {
                    event: std::mem::take(&mut self.event),
                    data: std::mem::take(&mut self.data),
                });
            }
            self.event.clear();
            self.data.clear();
            self.has_data = false;
            return Ok(());
        }
        let text = String::from_utf8_lossy(&line);
        if text.starts_with(':') {
            return Ok(());
        }
        let (field, value) = match text.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (text.as_ref(), ""),
        };
        match field {
            "event" => self.event = value.to_string(),
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                if self.data.len() + value.len() > self.max {
                    return Err(TooLarge(self.max));
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            // `id` and `retry` mean nothing to a one-shot reader.
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ev(event: &str, data: &str) -> SseEvent {
        SseEvent {
            event: event.into(),
            data: data.into(),
        }
    }

    #[test]
    fn events_lines_and_comments() {
        let mut d = SseDecoder::default();
        let got = d
            .feed(b": keep-alive\n\nevent: ping\ndata: {}\n\ndata: a\ndata: b\r\n\r\ndata:x\rid: 3\r\r")
            .expect("feed");
        assert_eq!(got, vec![ev("ping", "{}"), ev("", "a\nb"), ev("", "x")]);
        assert_eq!(d.finish(), None);
    }

    #[test]
    fn an_event_without_data_is_not_dispatched() {
        let mut d = SseDecoder::default();
        assert!(d.feed(b"event: x\n\n").expect("feed").is_empty());
    }

    #[test]
    fn the_last_event_without_its_blank_line_is_kept() {
        let mut d = SseDecoder::default();
        assert!(d.feed(b"data: [DONE]").expect("feed").is_empty());
        assert_eq!(d.finish(), Some(ev("", "[DONE]")));
    }

    #[test]
    fn oversized_events_are_refused() {
        let mut d = SseDecoder::new(16);
        assert!(d.feed(&[b'a'; 32]).is_err());
        let mut d = SseDecoder::new(16);
        assert!(d.feed(b"data: 0123456789\ndata: 0123456789\n").is_err());
    }

    proptest! {
        /// However the bytes are cut, the same events come out.
        #[test]
        fn any_split_gives_the_same_events(cuts in proptest::collection::vec(0usize..200, 0..10)) {
            let body = b"event: a\ndata: {\"x\":1}\r\n\r\ndata: two\ndata: lines\n\n: c\n\ndata: last\n\n";
            let mut whole = SseDecoder::default();
            let expected = whole.feed(body).expect("feed");
            let mut d = SseDecoder::default();
            let mut got = Vec::new();
            let mut points: Vec<usize> = cuts.into_iter().map(|c| c % body.len()).collect();
            points.sort_unstable();
            let mut at = 0;
            for p in points.into_iter().chain([body.len()]) {
                got.extend(d.feed(&body[at..p]).expect("feed"));
                at = p;
            }
            prop_assert_eq!(got, expected);
        }
    }
}
