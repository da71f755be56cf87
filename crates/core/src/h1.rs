//! HTTP/1.1 framing for the gateway (RFC 9112): request heads its client-facing
//! server reads, response heads and how their bodies are delimited for its upstream
//! client, and a streaming decoder for chunked bodies. No I/O: callers feed bytes as
//! they arrive, in any split.
//!
//! Upstream bytes are untrusted: every limit is explicit (head size, header count,
//! chunk-size digits, extension and trailer length) and every violation is an
//! error naming what was wrong, never a panic.

use std::fmt;

/// Most header lines an upstream response head may carry.
pub const MAX_HEADERS: usize = 100;
/// Longest response head accepted, in bytes (status line and headers).
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Longest run of chunk extensions or trailer lines accepted per chunk, in bytes.
pub const MAX_CHUNK_META_BYTES: usize = 16 * 1024;

/// Where one header line sits in the buffer the head was parsed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderSpan {
    pub name: (u32, u32),
    pub value: (u32, u32),
}

impl HeaderSpan {
    pub fn name<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        &buf[self.name.0 as usize..self.name.1 as usize]
    }

    pub fn value<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        &buf[self.value.0 as usize..self.value.1 as usize]
    }
}

/// How the body after a response head ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (HEAD request, 1xx, 204, 304).
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Everything until the upstream closes the connection.
    UntilClose,
}

/// A parsed response head; header positions refer to the parsed buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    /// `1` for HTTP/1.1, `0` for HTTP/1.0.
    pub minor: u8,
    /// Bytes of the head, including the blank line that ends it.
    pub len: usize,
    pub framing: Framing,
    /// Whether the connection may carry another request after this response's body.
    pub keep_alive: bool,
    /// The head has `Transfer-Encoding`: a `Content-Length` beside it does not
    /// describe the body (RFC 9112 §6.3).
    pub transfer_encoding: bool,
}

/// Why an upstream's bytes are not a usable HTTP/1 response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FramingError {
    Malformed(&'static str),
    HeadTooLarge,
    TooManyHeaders,
    BadContentLength,
    BadChunk(&'static str),
}

impl fmt::Display for FramingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FramingError::Malformed(what) => write!(f, "malformed response head: {what}"),
            FramingError::HeadTooLarge => {
                write!(f, "response head larger than {MAX_HEAD_BYTES} bytes")
            }
            FramingError::TooManyHeaders => {
                write!(f, "response head with more than {MAX_HEADERS} headers")
            }
            FramingError::BadContentLength => write!(f, "invalid or conflicting Content-Length"),
            FramingError::BadChunk(what) => write!(f, "invalid chunked body: {what}"),
        }
    }
}

impl std::error::Error for FramingError {}

fn httparse_reason(e: httparse::Error) -> FramingError {
    match e {
        httparse::Error::TooManyHeaders => FramingError::TooManyHeaders,
        httparse::Error::Status => FramingError::Malformed("status code"),
        httparse::Error::Version => FramingError::Malformed("HTTP version"),
        httparse::Error::HeaderName => FramingError::Malformed("header name"),
        httparse::Error::HeaderValue => FramingError::Malformed("header value"),
        httparse::Error::NewLine => FramingError::Malformed("line ending"),
        httparse::Error::Token => FramingError::Malformed("token"),
    }
}

/// The length of a head httparse found complete, `None` while it is partial and
/// within [`MAX_HEAD_BYTES`], or why it is refused.
fn head_len(
    parsed: httparse::Result<usize>,
    buffered: usize,
) -> Result<Option<usize>, FramingError> {
    match parsed {
        Ok(httparse::Status::Complete(n)) if n <= MAX_HEAD_BYTES => Ok(Some(n)),
        Ok(httparse::Status::Complete(_)) => Err(FramingError::HeadTooLarge),
        Ok(httparse::Status::Partial) if buffered >= MAX_HEAD_BYTES => {
            Err(FramingError::HeadTooLarge)
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(e) => Err(httparse_reason(e)),
    }
}

fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|b| *b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// Parses a response head at the start of `buf`; `headers` gets where each header
/// line is (it is cleared first, and reused across calls to save allocations).
/// `Ok(None)`: more bytes are needed (and fewer than [`MAX_HEAD_BYTES`] arrived so
/// far). `head_request`: the request was `HEAD`, so the response has no body whatever
/// its headers say.
pub fn parse_response_head(
    buf: &[u8],
    head_request: bool,
    headers: &mut Vec<HeaderSpan>,
) -> Result<Option<ResponseHead>, FramingError> {
    headers.clear();
    let mut raw = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, buf, &mut raw);
    let Some(len) = head_len(parsed, buf.len())? else {
        return Ok(None);
    };
    let status = resp.code.ok_or(FramingError::Malformed("status code"))?;
    let minor = resp
        .version
        .ok_or(FramingError::Malformed("HTTP version"))?;
    let base = buf.as_ptr() as usize;
    let offset = |s: &[u8]| (s.as_ptr() as usize - base) as u32;
    headers.reserve(resp.headers.len());
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut transfer_encoding = false;
    let mut close = minor == 0;
    for h in resp.headers.iter() {
        let name = h.name.as_bytes();
        let n0 = offset(name);
        let v0 = offset(h.value);
        headers.push(HeaderSpan {
            name: (n0, n0 + name.len() as u32),
            value: (v0, v0 + h.value.len() as u32),
        });
        if name.eq_ignore_ascii_case(b"content-length") {
            // Repeated values (or a list of them) must all agree.
            for part in h.value.split(|b| *b == b',') {
                let part = part.trim_ascii();
                if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
                    return Err(FramingError::BadContentLength);
                }
                let n = part
                    .iter()
                    .fold(0u64, |acc, d| acc * 10 + u64::from(d - b'0'));
                if length.is_some_and(|l| l != n) {
                    return Err(FramingError::BadContentLength);
                }
                length = Some(n);
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            transfer_encoding = true;
            // Only the last coding decides whether the body is chunked.
            chunked = h
                .value
                .rsplit(|b| *b == b',')
                .next()
                .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name.eq_ignore_ascii_case(b"connection") {
            if has_token(h.value, "close") {
                close = true;
            } else if minor == 0 && has_token(h.value, "keep-alive") {
                close = false;
            }
        }
    }
    let framing = if head_request || (100..200).contains(&status) || status == 204 || status == 304
    {
        Framing::Empty
    } else if transfer_encoding {
        if chunked {
            Framing::Chunked
        } else {
            Framing::UntilClose
        }
    } else {
        match length {
            Some(0) => Framing::Empty,
            Some(n) => Framing::Length(n),
            None => Framing::UntilClose,
        }
    };
    // Both lengths: the body is framed by the coding, but a peer that framed it by
    // the length would read the stream differently; never send another request
    // on such a connection (RFC 9112 §6.3).
    let ambiguous = transfer_encoding && length.is_some();
    Ok(Some(ResponseHead {
        status,
        minor,
        len,
        framing,
        keep_alive: !close && !ambiguous && framing != Framing::UntilClose,
        transfer_encoding,
    }))
}

/// A parsed request head; positions refer to the parsed buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: (u32, u32),
    /// The request-target as sent (origin form `/path?query`, or absolute form).
    pub target: (u32, u32),
    /// `1` for HTTP/1.1, `0` for HTTP/1.0.
    pub minor: u8,
    /// Bytes of the head, including the blank line that ends it.
    pub len: usize,
    /// A body follows (`Transfer-Encoding`, or a `Content-Length` above 0).
    pub has_body: bool,
    /// The client asks to switch protocols (`Upgrade`) or to be told to go on (`Expect`).
    pub upgrade_or_expect: bool,
    /// The client wants the connection closed after the response (`Connection: close`,
    /// or HTTP/1.0 without `keep-alive`).
    pub close: bool,
}

impl RequestHead {
    pub fn method<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        &buf[self.method.0 as usize..self.method.1 as usize]
    }

    pub fn target<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        &buf[self.target.0 as usize..self.target.1 as usize]
    }
}

/// Parses a request head at the start of `buf` (HTTP/1.0 or 1.1); `headers` gets where
/// each header line is. `Ok(None)`: more bytes are needed and fewer than
/// [`MAX_HEAD_BYTES`] arrived so far.
pub fn parse_request_head(
    buf: &[u8],
    headers: &mut Vec<HeaderSpan>,
) -> Result<Option<RequestHead>, FramingError> {
    headers.clear();
    let mut raw = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let parsed = httparse::ParserConfig::default()
        .parse_request_with_uninit_headers(&mut req, buf, &mut raw);
    let Some(len) = head_len(parsed, buf.len())? else {
        return Ok(None);
    };
    let (Some(method), Some(path), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(FramingError::Malformed("request line"));
    };
    let base = buf.as_ptr() as usize;
    let span = |s: &[u8]| {
        let start = (s.as_ptr() as usize - base) as u32;
        (start, start + s.len() as u32)
    };
    headers.reserve(req.headers.len());
    let mut has_body = false;
    let mut upgrade_or_expect = false;
    let mut close = minor == 0;
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        headers.push(HeaderSpan {
            name: span(name),
            value: span(h.value),
        });
        if name.eq_ignore_ascii_case(b"content-length") {
            has_body |= h.value.trim_ascii() != b"0";
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            has_body = true;
        } else if name.eq_ignore_ascii_case(b"upgrade") || name.eq_ignore_ascii_case(b"expect") {
            upgrade_or_expect = true;
        } else if name.eq_ignore_ascii_case(b"connection") {
            if has_token(h.value, "close") {
                close = true;
            } else if minor == 0 && has_token(h.value, "keep-alive") {
                close = false;
            }
        }
    }
    Ok(Some(RequestHead {
        method: span(method.as_bytes()),
        target: span(path.as_bytes()),
        minor,
        len,
        has_body,
        upgrade_or_expect,
        close,
    }))
}

/// What the next bytes of a chunked body are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoded {
    /// `framing` bytes of framing, then `data` bytes of payload (both within the input).
    Data { framing: usize, data: usize },
    /// All `framing` bytes given were framing; more input is needed.
    NeedMore { framing: usize },
    /// The body (last chunk and trailers) ended after `framing` bytes.
    End { framing: usize },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading chunk-size hex digits (`digits` so far).
    Size {
        value: u64,
        digits: u8,
    },
    /// After the size: extensions up to CR.
    Extension {
        size: u64,
    },
    /// Expecting the LF that ends the size line.
    SizeLf {
        size: u64,
    },
    /// Inside a chunk's payload.
    Data(u64),
    /// Expecting CR then LF after a payload.
    DataCr,
    DataLf,
    /// At the start of a trailer line (or of the final blank line).
    TrailerStart,
    /// Inside a trailer line, up to CR.
    Trailer,
    /// Expecting LF after a trailer line's CR.
    TrailerLf,
    /// Expecting the LF of the final blank line.
    EndLf,
    Done,
}

/// Decodes `Transfer-Encoding: chunked` incrementally: framing bytes are consumed as
/// they come, payload bytes are pointed at (never copied) for the caller to take.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
    /// Extension and trailer bytes seen since the last payload.
    meta: usize,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedDecoder {
    pub fn new() -> Self {
        Self {
            state: State::Size {
                value: 0,
                digits: 0,
            },
            meta: 0,
        }
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    fn meta_byte(&mut self) -> Result<(), FramingError> {
        self.meta += 1;
        if self.meta > MAX_CHUNK_META_BYTES {
            return Err(FramingError::BadChunk("extensions or trailers too long"));
        }
        Ok(())
    }

    /// Reads framing from the start of `input` up to the next payload bytes, the end
    /// of the body, or the end of `input`.
    pub fn decode(&mut self, input: &[u8]) -> Result<Decoded, FramingError> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                State::Size { value, digits } => {
                    let d = match b {
                        b'0'..=b'9' => Some(b - b'0'),
                        b'a'..=b'f' => Some(b - b'a' + 10),
                        b'A'..=b'F' => Some(b - b'A' + 10),
                        _ => None,
                    };
                    match d {
                        Some(d) => {
                            // 15 hex digits keep every size below 2^60.
                            if digits >= 15 {
                                return Err(FramingError::BadChunk("chunk size too large"));
                            }
                            self.state = State::Size {
                                value: value << 4 | u64::from(d),
                                digits: digits + 1,
                            };
                        }
                        None if digits == 0 => {
                            return Err(FramingError::BadChunk("chunk size is not hexadecimal"))
                        }
                        None => {
                            self.state = match b {
                                b'\r' => State::SizeLf { size: value },
                                b';' | b' ' | b'\t' => {
                                    self.meta_byte()?;
                                    State::Extension { size: value }
                                }
                                _ => {
                                    return Err(FramingError::BadChunk(
                                        "unexpected byte after the chunk size",
                                    ))
                                }
                            };
                        }
                    }
                }
                State::Extension { size } => match b {
                    b'\r' => self.state = State::SizeLf { size },
                    b'\n' => return Err(FramingError::BadChunk("bare LF in chunk extension")),
                    _ => self.meta_byte()?,
                },
                State::SizeLf { size } => {
                    if b != b'\n' {
                        return Err(FramingError::BadChunk("chunk size line without CRLF"));
                    }
                    self.state = if size == 0 {
                        State::TrailerStart
                    } else {
                        self.meta = 0;
                        State::Data(size)
                    };
                }
                State::Data(left) => {
                    let avail = (input.len() - i) as u64;
                    let take = left.min(avail);
                    self.state = if take == left {
                        State::DataCr
                    } else {
                        State::Data(left - take)
                    };
                    return Ok(Decoded::Data {
                        framing: i,
                        data: take as usize,
                    });
                }
                State::DataCr => {
                    if b != b'\r' {
                        return Err(FramingError::BadChunk("chunk payload longer than its size"));
                    }
                    self.state = State::DataLf;
                }
                State::DataLf => {
                    if b != b'\n' {
                        return Err(FramingError::BadChunk("chunk payload without CRLF"));
                    }
                    self.state = State::Size {
                        value: 0,
                        digits: 0,
                    };
                }
                State::TrailerStart => {
                    self.state = match b {
                        b'\r' => State::EndLf,
                        b'\n' => return Err(FramingError::BadChunk("bare LF in trailers")),
                        _ => {
                            self.meta_byte()?;
                            State::Trailer
                        }
                    };
                }
                State::Trailer => match b {
                    b'\r' => self.state = State::TrailerLf,
                    b'\n' => return Err(FramingError::BadChunk("bare LF in trailers")),
                    _ => self.meta_byte()?,
                },
                State::TrailerLf => {
                    if b != b'\n' {
                        return Err(FramingError::BadChunk("trailer line without CRLF"));
                    }
                    self.state = State::TrailerStart;
                }
                State::EndLf => {
                    if b != b'\n' {
                        return Err(FramingError::BadChunk("body end without CRLF"));
                    }
                    self.state = State::Done;
                    return Ok(Decoded::End { framing: i + 1 });
                }
                State::Done => return Ok(Decoded::End { framing: i }),
            }
            i += 1;
        }
        if self.state == State::Done {
            return Ok(Decoded::End { framing: i });
        }
        Ok(Decoded::NeedMore { framing: i })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn head(text: &str) -> ResponseHead {
        head_and_spans(text).0
    }

    fn head_and_spans(text: &str) -> (ResponseHead, Vec<HeaderSpan>) {
        let mut spans = Vec::new();
        match parse_response_head(text.as_bytes(), false, &mut spans) {
            Ok(Some(h)) => (h, spans),
            other => panic!("{text:?}: {other:?}"),
        }
    }

    #[test]
    fn frames_responses_as_rfc_9112_says() {
        let (h, spans) =
            head_and_spans("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello");
        assert_eq!(
            (h.status, h.minor, h.framing, h.keep_alive),
            (200, 1, Framing::Length(5), true)
        );
        assert_eq!(h.len, 46);
        let buf = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello";
        assert_eq!(spans[1].name(buf), b"X-A");
        assert_eq!(spans[1].value(buf), b"b");
        let h = head(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 9\r\n\r\n",
        );
        assert_eq!(h.framing, Framing::Chunked);
        let h = head("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive), (Framing::UntilClose, false));
        let h = head("HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive), (Framing::UntilClose, false));
        for status in ["204 No Content", "304 Not Modified", "103 Early Hints"] {
            assert_eq!(
                head(&format!("HTTP/1.1 {status}\r\nContent-Length: 7\r\n\r\n")).framing,
                Framing::Empty
            );
        }
        let h = parse_response_head(
            b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n",
            true,
            &mut Vec::new(),
        )
        .expect("parses")
        .expect("complete");
        assert_eq!(h.framing, Framing::Empty);
        assert!(
            !head("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n").keep_alive
        );
        assert!(!head("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n").keep_alive);
        assert!(
            head("HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 1\r\n\r\n")
                .keep_alive
        );
        assert_eq!(
            head("HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\n\r\n").framing,
            Framing::Length(3)
        );
    }

    #[test]
    fn refuses_what_cannot_be_framed() {
        let err = |t: &[u8]| parse_response_head(t, false, &mut Vec::new()).expect_err("refused");
        assert_eq!(
            err(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n"),
            FramingError::BadContentLength
        );
        assert_eq!(
            err(b"HTTP/1.1 200 OK\r\nContent-Length: -3\r\n\r\n"),
            FramingError::BadContentLength
        );
        assert_eq!(
            err(b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n"),
            FramingError::BadContentLength
        );
        assert!(matches!(
            err(b"HTTP/9 200 OK\r\n\r\n"),
            FramingError::Malformed(_)
        ));
        assert!(matches!(
            err(b"HTTP/1.1 2x0 OK\r\n\r\n"),
            FramingError::Malformed(_)
        ));
        let many = format!(
            "HTTP/1.1 200 OK\r\n{}\r\n",
            "A: b\r\n".repeat(MAX_HEADERS + 1)
        );
        assert_eq!(err(many.as_bytes()), FramingError::TooManyHeaders);
        let big = format!("HTTP/1.1 200 OK\r\nA: {}", "b".repeat(MAX_HEAD_BYTES));
        assert_eq!(err(big.as_bytes()), FramingError::HeadTooLarge);
        assert_eq!(
            parse_response_head(b"HTTP/1.1 200 OK\r\nA: b", false, &mut Vec::new()),
            Ok(None)
        );
    }

    #[test]
    fn reads_request_heads_and_what_they_ask_for() {
        let buf = b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\nGET";
        let mut spans = Vec::new();
        let h = parse_request_head(buf, &mut spans)
            .expect("valid")
            .expect("complete");
        assert_eq!(
            (h.method(buf), h.target(buf), h.minor),
            (&b"GET"[..], &b"/a?b=1"[..], 1)
        );
        assert_eq!(h.len, buf.len() - 3);
        assert!(!h.has_body && !h.upgrade_or_expect && !h.close);
        assert_eq!(spans[0].value(buf), b"x");
        let ask = |t: &str| {
            parse_request_head(t.as_bytes(), &mut Vec::new())
                .expect("valid")
                .expect("complete")
        };
        assert!(ask("POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\n").has_body);
        assert!(ask("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n").has_body);
        assert!(ask("GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n").upgrade_or_expect);
        assert!(ask("GET / HTTP/1.1\r\nConnection: Close\r\n\r\n").close);
        assert!(ask("GET / HTTP/1.0\r\n\r\n").close);
        assert!(!ask("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").close);
        assert_eq!(
            parse_request_head(b"GET / HTTP/1.1\r\nHost", &mut Vec::new()),
            Ok(None)
        );
        assert!(parse_request_head(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", &mut Vec::new()).is_err());
        assert!(
            parse_request_head(b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n", &mut Vec::new())
                .is_err()
        );
        let big = format!("GET / HTTP/1.1\r\nA: {}", "b".repeat(MAX_HEAD_BYTES));
        assert_eq!(
            parse_request_head(big.as_bytes(), &mut Vec::new()),
            Err(FramingError::HeadTooLarge)
        );
    }

    fn decode_all(
        dec: &mut ChunkedDecoder,
        mut input: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<bool, FramingError> {
        loop {
            match dec.decode(input)? {
                Decoded::Data { framing, data } => {
                    out.extend_from_slice(&input[framing..framing + data]);
                    input = &input[framing + data..];
                }
                Decoded::NeedMore { framing } => {
                    assert_eq!(framing, input.len());
                    return Ok(false);
                }
                Decoded::End { framing } => {
                    assert!(framing <= input.len());
                    return Ok(true);
                }
            }
        }
    }

    #[test]
    fn decodes_chunks_extensions_and_trailers() {
        let body = b"5;name=v\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\nNEXT";
        let mut dec = ChunkedDecoder::new();
        let mut out = Vec::new();
        assert_eq!(decode_all(&mut dec, body, &mut out), Ok(true));
        assert_eq!(out, b"hello world");
        assert!(dec.is_done());
        let bad: [&[u8]; 6] = [
            b"x\r\n",
            b"5\r\nhelloX",
            b"5\nhello",
            b"1234567890abcdef0\r\n",
            b"0\r\nA\nB",
            b"5 x\r\n",
        ];
        for b in bad.iter().take(5) {
            assert!(
                decode_all(&mut ChunkedDecoder::new(), b, &mut Vec::new()).is_err(),
                "{:?}",
                String::from_utf8_lossy(b)
            );
        }
        // Extension bytes after whitespace are accepted (and bounded).
        assert_eq!(
            decode_all(&mut ChunkedDecoder::new(), bad[5], &mut Vec::new()),
            Ok(false)
        );
        let long = format!("1;{}\r\n", "e".repeat(MAX_CHUNK_META_BYTES));
        assert!(decode_all(&mut ChunkedDecoder::new(), long.as_bytes(), &mut Vec::new()).is_err());
    }

    fn encode(chunks: &[Vec<u8>], ext: bool, trailers: bool) -> Vec<u8> {
        let mut out = Vec::new();
        for c in chunks.iter().filter(|c| !c.is_empty()) {
            out.extend_from_slice(format!("{:x}", c.len()).as_bytes());
            if ext {
                out.extend_from_slice(b";a=b");
            }
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(c);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\n");
        if trailers {
            out.extend_from_slice(b"Digest: x\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out
    }

    proptest! {
        #[test]
        fn chunked_bodies_decode_whatever_the_split(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..8),
            ext in any::<bool>(),
            trailers in any::<bool>(),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6),
        ) {
            let wire = encode(&chunks, ext, trailers);
            let mut points: Vec<usize> = cuts.iter().map(|c| c.index(wire.len() + 1)).collect();
            points.push(wire.len());
            points.sort_unstable();
            let mut dec = ChunkedDecoder::new();
            let mut out = Vec::new();
            let mut start = 0;
            let mut ended = false;
            for p in points {
                if p < start { continue; }
                ended = decode_all(&mut dec, &wire[start..p], &mut out).expect("valid encoding");
                start = p;
            }
            prop_assert!(ended);
            prop_assert_eq!(out, chunks.concat());
        }

        #[test]
        fn arbitrary_bytes_never_panic_or_overrun(data in proptest::collection::vec(any::<u8>(), 0..512), head in any::<bool>()) {
            let mut spans = Vec::new();
            if let Ok(Some(h)) = parse_response_head(&data, head, &mut spans) {
                prop_assert!(h.len <= data.len());
                for s in &spans {
                    prop_assert!(s.value.1 as usize <= h.len && s.name.1 as usize <= h.len);
                }
            }
            if let Ok(Some(h)) = parse_request_head(&data, &mut spans) {
                prop_assert!(h.len <= data.len() && h.target.1 as usize <= h.len);
                for s in &spans {
                    prop_assert!(s.value.1 as usize <= h.len && s.name.1 as usize <= h.len);
                }
            }
            let mut dec = ChunkedDecoder::new();
            let mut rest: &[u8] = &data;
            loop {
                match dec.decode(rest) {
                    Ok(Decoded::Data { framing, data }) => {
                        prop_assert!(data > 0 && framing + data <= rest.len());
                        rest = &rest[framing + data..];
                    }
                    Ok(Decoded::NeedMore { framing }) => { prop_assert_eq!(framing, rest.len()); break; }
                    Ok(Decoded::End { framing }) => { prop_assert!(framing <= rest.len()); break; }
                    Err(_) => break,
                }
            }
        }
    }
}
