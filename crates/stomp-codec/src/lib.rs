//! A STOMP 1.2 frame codec for the Swaptacular gateway.
//!
//! This crate owns the byte-level protocol: the [`Frame`] type, the
//! [`StompCodec`] that turns a byte stream into [`StompItem`]s (frames and
//! heart-beats) and back, header escaping, and the size limits of the
//! gateway. It knows nothing about sockets, tasks or what the frames mean;
//! wrap a stream in `tokio_util::codec::Framed<_, StompCodec>` to use it.
//!
//! Decoding rules (SPEC section 5):
//! - any number of EOLs (`\n` or `\r\n`) before a frame are heart-beats; a
//!   run of them is reported as one [`StompItem::HeartBeat`];
//! - `COMMAND\n`, then `name:value` lines (a `\r` before `\n` is allowed),
//!   then a blank line, the body and a NUL;
//! - header escapes `\r`, `\n`, `\c`, `\\` are decoded, any other escape is
//!   an error; names and values must be UTF-8; the first of repeated headers
//!   wins on lookup;
//! - with `content-length` the body is exactly that many octets, then NUL;
//! - limits are checked before more than the limit is buffered.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::fmt;
use tokio_util::codec::{Decoder, Encoder};

/// Default maximum length of a command, in octets.
pub const DEFAULT_MAX_COMMAND_LEN: usize = 50;
/// Default maximum size of the header section, in octets.
pub const DEFAULT_MAX_HEADERS_LEN: usize = 4096;
/// Default maximum size of a body, in octets.
pub const DEFAULT_MAX_BODY_LEN: usize = 8192;

/// One STOMP frame.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Frame {
    /// The command, e.g. `SEND`.
    pub command: String,
    /// Headers in wire order. Lookups return the first occurrence.
    pub headers: Vec<(String, String)>,
    /// The body (may be empty).
    pub body: Bytes,
}

impl Frame {
    /// A frame with this command, no headers and no body.
    pub fn new(command: impl Into<String>) -> Self {
        Frame {
            command: command.into(),
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    /// Builder: appends a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Builder: sets the body.
    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    /// The value of the first header with this name.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

impl fmt::Debug for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Frame")
            .field("command", &self.command)
            .field("headers", &self.headers)
            .field("body", &String::from_utf8_lossy(&self.body))
            .finish()
    }
}

/// What the decoder yields, and what the encoder accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StompItem {
    /// A run of one or more EOLs between frames.
    HeartBeat,
    /// A complete frame.
    Frame(Frame),
}

/// Why a byte stream is not valid STOMP.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("invalid command: must be 1 to {max} uppercase letters")]
    InvalidCommand { max: usize },
    #[error("the headers are longer than {max} octets")]
    HeadersTooLong { max: usize },
    #[error("the body is longer than {max} octets")]
    BodyTooLong { max: usize },
    #[error("invalid header line (no colon)")]
    InvalidHeaderLine,
    #[error("invalid escape sequence in a header")]
    InvalidEscape,
    #[error("a header is not valid UTF-8")]
    NonUtf8Header,
    #[error("invalid content-length header")]
    InvalidContentLength,
    #[error("the body is not followed by a NUL octet")]
    MissingNul,
}

/// Size limits of the decoder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Maximum command length in octets.
    pub max_command_len: usize,
    /// Maximum size of the header lines (including their EOLs and the
    /// blank line that ends them), in octets.
    pub max_headers_len: usize,
    /// Maximum body size in octets.
    pub max_body_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_command_len: DEFAULT_MAX_COMMAND_LEN,
            max_headers_len: DEFAULT_MAX_HEADERS_LEN,
            max_body_len: DEFAULT_MAX_BODY_LEN,
        }
    }
}

/// Where the decoder is within the current frame.
#[derive(Clone, Copy, Debug)]
enum State {
    /// Between frames: skipping heart-beat EOLs.
    Idle,
    /// Scanning the head (command and headers); `scanned` bytes of the
    /// buffer have already been searched for the end of the head.
    Head { scanned: usize },
    /// The head is parsed and `head_len` bytes long; waiting for the body.
    Body {
        head_len: usize,
        content_length: Option<usize>,
        scanned: usize,
    },
}

/// The STOMP codec: a `Decoder` of [`StompItem`]s and an `Encoder` of
/// frames and heart-beats.
#[derive(Debug)]
pub struct StompCodec {
    limits: Limits,
    state: State,
    /// The parsed head of the frame whose body is awaited.
    pending: Option<(String, Vec<(String, String)>)>,
}

impl Default for StompCodec {
    fn default() -> Self {
        Self::new(Limits::default())
    }
}

impl StompCodec {
    /// A codec enforcing these limits.
    pub fn new(limits: Limits) -> Self {
        StompCodec {
            limits,
            state: State::Idle,
            pending: None,
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The maximum length of a head: command line plus header section.
    fn max_head_len(&self) -> usize {
        // command + "\r\n" + headers (which include the final blank line).
        self.limits.max_command_len + 2 + self.limits.max_headers_len
    }

    /// The one rule for a command line: uppercase letters only and, once
    /// the line is `complete`, 1 to `max_command_len` of them.
    fn check_command(&self, line: &[u8], complete: bool) -> Result<(), CodecError> {
        let max = self.limits.max_command_len;
        let chars_ok = line.iter().all(|b| b.is_ascii_uppercase());
        let len_ok = !complete || (!line.is_empty() && line.len() <= max);
        if chars_ok && len_ok {
            Ok(())
        } else {
            Err(CodecError::InvalidCommand { max })
        }
    }

    fn parse_head(&self, head: &[u8]) -> Result<ParsedHead, CodecError> {
        let mut lines = head.split(|&b| b == b'\n').map(strip_cr);
        let command = lines.next().unwrap_or_default();
        self.check_command(command, true)?;
        // Safe: checked to be ASCII above.
        let command = String::from_utf8_lossy(command).into_owned();
        let header_bytes = head.len() - command.len() - 1;
        if header_bytes > self.limits.max_headers_len {
            return Err(CodecError::HeadersTooLong {
                max: self.limits.max_headers_len,
            });
        }
        let mut headers = Vec::new();
        let mut content_length = None;
        let mut seen_content_length = false;
        for line in lines {
            if line.is_empty() {
                // The blank line that ends the head (the last one).
                continue;
            }
            let colon = line
                .iter()
                .position(|&b| b == b':')
                .ok_or(CodecError::InvalidHeaderLine)?;
            let name = unescape(&line[..colon])?;
            let value = unescape(&line[colon + 1..])?;
            if name == "content-length" && !seen_content_length {
                seen_content_length = true;
                if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(CodecError::InvalidContentLength);
                }
                let n: usize = value.parse().map_err(|_| CodecError::BodyTooLong {
                    max: self.limits.max_body_len,
                })?;
                if n > self.limits.max_body_len {
                    return Err(CodecError::BodyTooLong {
                        max: self.limits.max_body_len,
                    });
                }
                content_length = Some(n);
            }
            headers.push((name, value));
        }
        Ok((command, headers, content_length))
    }
}

/// A parsed head: command, headers, content-length.
type ParsedHead = (String, Vec<(String, String)>, Option<usize>);

fn strip_cr(line: &[u8]) -> &[u8] {
    match line.last() {
        Some(b'\r') => &line[..line.len() - 1],
        _ => line,
    }
}

/// Decodes the STOMP header escapes of one header name or value.
fn unescape(raw: &[u8]) -> Result<String, CodecError> {
    if !raw.contains(&b'\\') {
        return std::str::from_utf8(raw)
            .map(str::to_owned)
            .map_err(|_| CodecError::NonUtf8Header);
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut it = raw.iter();
    while let Some(&b) = it.next() {
        if b == b'\\' {
            match it.next() {
                Some(b'r') => out.push(b'\r'),
                Some(b'n') => out.push(b'\n'),
                Some(b'c') => out.push(b':'),
                Some(b'\\') => out.push(b'\\'),
                _ => return Err(CodecError::InvalidEscape),
            }
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).map_err(|_| CodecError::NonUtf8Header)
}

/// Appends a header name or value with the STOMP escapes applied.
fn put_escaped(dst: &mut BytesMut, s: &str) {
    if !s.bytes().any(|b| matches!(b, b'\\' | b'\r' | b'\n' | b':')) {
        dst.put_slice(s.as_bytes());
        return;
    }
    for b in s.bytes() {
        match b {
            b'\\' => dst.put_slice(b"\\\\"),
            b'\r' => dst.put_slice(b"\\r"),
            b'\n' => dst.put_slice(b"\\n"),
            b':' => dst.put_slice(b"\\c"),
            _ => dst.put_u8(b),
        }
    }
}

/// Finds the end of the head (the blank line) in `buf`, starting the
/// search at `from`. Returns the length of the head including the blank
/// line's EOL.
fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while let Some(pos) = memchr::memchr(b'\n', &buf[i..]) {
        let nl = i + pos;
        // The head ends at "\n\n" or "\n\r\n".
        let rest = &buf[nl + 1..];
        match rest.first() {
            Some(b'\n') => return Some(nl + 2),
            Some(b'\r') => match rest.get(1) {
                Some(b'\n') => return Some(nl + 3),
                Some(_) => {}
                None => return None,
            },
            Some(_) => {}
            None => return None,
        }
        i = nl + 1;
    }
    None
}

/// What one decoding step did: moved to the next state (decode on), or
/// has an answer for the caller (an item, or `None`: more bytes needed).
enum Step {
    Next,
    Out(Option<StompItem>),
}

impl Decoder for StompCodec {
    type Item = StompItem;
    type Error = CodecError;

    /// Runs the states in turn: heart-beats between frames, the head (the
    /// command line and the headers), the body up to its NUL.
    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<StompItem>, CodecError> {
        loop {
            let step = match self.state {
                State::Idle => self.skip_heart_beats(src),
                State::Head { scanned } => self.read_head(src, scanned)?,
                State::Body {
                    head_len,
                    content_length,
                    scanned,
                } => self.read_body(src, head_len, content_length, scanned)?,
            };
            if let Step::Out(item) = step {
                return Ok(item);
            }
        }
    }
}

impl StompCodec {
    /// Between frames: the EOLs there are heart-beats (one item for a run
    /// of them); anything else starts a head.
    fn skip_heart_beats(&mut self, src: &mut BytesMut) -> Step {
        let mut skipped = 0;
        let mut beat = false;
        loop {
            match src.get(skipped) {
                Some(b'\n') => {
                    skipped += 1;
                    beat = true;
                }
                Some(b'\r') => match src.get(skipped + 1) {
                    Some(b'\n') => {
                        skipped += 2;
                        beat = true;
                    }
                    Some(_) => break,
                    None => {
                        // A lone "\r" so far: wait for more.
                        src.advance(skipped);
                        return Step::Out(beat.then_some(StompItem::HeartBeat));
                    }
                },
                _ => break,
            }
        }
        src.advance(skipped);
        if beat {
            return Step::Out(Some(StompItem::HeartBeat));
        }
        if src.is_empty() {
            return Step::Out(None);
        }
        self.state = State::Head { scanned: 0 };
        Step::Next
    }

    /// The head, up to its blank line: a bad command line fails as soon as
    /// it is seen, a head longer than the limit fails without waiting for
    /// its end; `scanned` is where the search for the blank line resumes.
    fn read_head(&mut self, src: &mut BytesMut, scanned: usize) -> Result<Step, CodecError> {
        // The command line must end early.
        let cmd_window = self.limits.max_command_len + 2;
        let newline = memchr::memchr(b'\n', &src[..src.len().min(cmd_window)]);
        if scanned == 0 {
            // Fail fast on a command line that cannot be valid.
            let line = &src[..newline.unwrap_or(src.len().min(cmd_window))];
            let line = match newline {
                Some(_) => strip_cr(line),
                None => line.strip_suffix(b"\r").unwrap_or(line),
            };
            self.check_command(line, false)?;
        }
        if newline.is_none() {
            if src.len() >= cmd_window {
                return Err(CodecError::InvalidCommand {
                    max: self.limits.max_command_len,
                });
            }
            return Ok(Step::Out(None));
        }
        let max_head = self.max_head_len() + 1;
        let window = &src[..src.len().min(max_head)];
        let Some(head_len) = find_head_end(window, scanned) else {
            if src.len() >= max_head {
                // Report a bad command line before the size.
                let first = memchr::memchr(b'\n', src).unwrap_or(0);
                self.check_command(strip_cr(&src[..first]), true)?;
                return Err(CodecError::HeadersTooLong {
                    max: self.limits.max_headers_len,
                });
            }
            // Rescan the last two bytes next time: the blank line may
            // straddle the boundary.
            self.state = State::Head {
                scanned: src.len().saturating_sub(2),
            };
            src.reserve(max_head.saturating_sub(src.len()).min(4096));
            return Ok(Step::Out(None));
        };
        let (command, headers, content_length) = self.parse_head(&src[..head_len])?;
        self.pending = Some((command, headers));
        self.state = State::Body {
            head_len,
            content_length,
            scanned: 0,
        };
        Ok(Step::Next)
    }

    /// The body: `content-length` bytes and a NUL, or (without that
    /// header) up to the first NUL, within the size limit; then the frame.
    fn read_body(
        &mut self,
        src: &mut BytesMut,
        head_len: usize,
        content_length: Option<usize>,
        scanned: usize,
    ) -> Result<Step, CodecError> {
        let body_len = match content_length {
            Some(n) => {
                if src.len() < head_len + n + 1 {
                    src.reserve(head_len + n + 1 - src.len());
                    return Ok(Step::Out(None));
                }
                if src[head_len + n] != 0 {
                    return Err(CodecError::MissingNul);
                }
                n
            }
            None => {
                let avail = &src[head_len..];
                let limit = self.limits.max_body_len + 1;
                let window = &avail[..avail.len().min(limit)];
                match memchr::memchr(0, &window[scanned.min(window.len())..]) {
                    Some(pos) => scanned + pos,
                    None => {
                        if avail.len() >= limit {
                            return Err(CodecError::BodyTooLong {
                                max: self.limits.max_body_len,
                            });
                        }
                        self.state = State::Body {
                            head_len,
                            content_length,
                            scanned: avail.len(),
                        };
                        return Ok(Step::Out(None));
                    }
                }
            }
        };
        let mut frame_bytes = src.split_to(head_len + body_len + 1);
        frame_bytes.advance(head_len);
        frame_bytes.truncate(body_len);
        let (command, headers) = self.pending.take().unwrap_or_default();
        self.state = State::Idle;
        Ok(Step::Out(Some(StompItem::Frame(Frame {
            command,
            headers,
            body: frame_bytes.freeze(),
        }))))
    }

    fn encode_frame(frame: &Frame, dst: &mut BytesMut) {
        let headers_len: usize = frame.headers.iter().map(|(n, v)| n.len() + v.len() + 2).sum();
        dst.reserve(frame.command.len() + headers_len + frame.body.len() + 40);
        dst.put_slice(frame.command.as_bytes());
        dst.put_u8(b'\n');
        let mut has_length = false;
        for (name, value) in &frame.headers {
            if name == "content-length" {
                if has_length || frame.body.is_empty() {
                    continue;
                }
                has_length = true;
                // Always write the true length.
                dst.put_slice(b"content-length:");
                dst.put_slice(frame.body.len().to_string().as_bytes());
                dst.put_u8(b'\n');
                continue;
            }
            put_escaped(dst, name);
            dst.put_u8(b':');
            put_escaped(dst, value);
            dst.put_u8(b'\n');
        }
        if !has_length && !frame.body.is_empty() {
            dst.put_slice(b"content-length:");
            dst.put_slice(frame.body.len().to_string().as_bytes());
            dst.put_u8(b'\n');
        }
        dst.put_u8(b'\n');
        dst.put_slice(&frame.body);
        dst.put_u8(0);
    }
}

impl Encoder<Frame> for StompCodec {
    type Error = CodecError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), CodecError> {
        Self::encode_frame(&frame, dst);
        Ok(())
    }
}

impl Encoder<&Frame> for StompCodec {
    type Error = CodecError;

    fn encode(&mut self, frame: &Frame, dst: &mut BytesMut) -> Result<(), CodecError> {
        Self::encode_frame(frame, dst);
        Ok(())
    }
}

impl Encoder<StompItem> for StompCodec {
    type Error = CodecError;

    fn encode(&mut self, item: StompItem, dst: &mut BytesMut) -> Result<(), CodecError> {
        match item {
            StompItem::HeartBeat => dst.put_u8(b'\n'),
            StompItem::Frame(frame) => Self::encode_frame(&frame, dst),
        }
        Ok(())
    }
}

/// Encodes one frame into a fresh buffer (handy for tests and tools).
pub fn encode_to_bytes(frame: &Frame) -> Bytes {
    let mut buf = BytesMut::new();
    StompCodec::encode_frame(frame, &mut buf);
    buf.freeze()
}

#[cfg(test)]
mod tests;
