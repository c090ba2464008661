//! The frames layer: AMQP 0-9-1 as bytes, with no I/O policy. [`Frame`]s
//! are cut from a byte stream by [`parse`] (pure, so the fuzzer drives
//! it) through [`FrameReader`]; [`method`] has one typed home per method,
//! [`codec`] the primitive types and field tables, [`content`] the content
//! header's properties and the assembly of a method, its header and its
//! body frames into one message. Everything written goes through
//! [`method_frame`], [`publish`] and [`heartbeat`], appended to an output
//! buffer so that a burst of frames leaves in one write.
//!
//! ```text
//!  frame   = type:u8  channel:u16  size:u32  payload[size]  0xCE
//!  method  = class:u16  method:u16  arguments
//!  header  = class:u16  weight:u16  body-size:u64  flags:u16  properties
//! ```
//!
//! What breaks the protocol is a [`Violation`], with the reply code the
//! spec gives it; the connection closes with that code.

pub(crate) mod codec;
pub(crate) mod content;
pub(crate) mod method;
#[cfg(test)]
mod oracle_tests;

pub(crate) use content::Properties;
pub(crate) use method::{id, Method};
use std::io;
use tokio::io::{AsyncRead, AsyncReadExt};

pub(crate) const PROTOCOL_HEADER: &[u8] = b"AMQP\x00\x00\x09\x01";
pub(crate) const FRAME_METHOD: u8 = 1;
pub(crate) const FRAME_HEADER: u8 = 2;
pub(crate) const FRAME_BODY: u8 = 3;
pub(crate) const FRAME_HEARTBEAT: u8 = 8;
const FRAME_END: u8 = 0xCE;
/// Type, channel, size and the end octet: what a frame adds to its payload.
pub(crate) const FRAME_OVERHEAD: usize = 8;
/// The frame size we ask for (RabbitMQ's default); the broker may lower it.
pub(crate) const FRAME_MAX: u32 = 131_072;
/// The smallest frame_max the spec allows; frames this large are always
/// accepted (before tuning, too).
pub(crate) const FRAME_MIN_SIZE: u32 = 4096;

/// The reply codes of the spec that a client sends.
pub(crate) const REPLY_SUCCESS: u16 = 200;
pub(crate) const FRAME_ERROR: u16 = 501;
pub(crate) const SYNTAX_ERROR: u16 = 502;
pub(crate) const COMMAND_INVALID: u16 = 503;
pub(crate) const CHANNEL_ERROR: u16 = 504;
pub(crate) const UNEXPECTED_FRAME: u16 = 505;
pub(crate) const NOT_IMPLEMENTED: u16 = 540;

/// The broker broke the protocol: the connection is closed with `code`
/// (a connection exception of the spec) and `text` says why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Violation {
    pub code: u16,
    pub text: String,
}

impl Violation {
    pub fn new(code: u16, text: impl Into<String>) -> Violation {
        Violation {
            code,
            text: text.into(),
        }
    }

    pub fn syntax(text: impl Into<String>) -> Violation {
        Violation::new(SYNTAX_ERROR, text)
    }
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.text, self.code)
    }
}

/// One frame as read.
#[derive(Debug)]
pub(crate) struct Frame {
    pub kind: u8,
    pub channel: u16,
    pub payload: Vec<u8>,
}

impl Frame {
    /// The method of a method frame.
    pub fn method(&self) -> Result<Method<'_>, Violation> {
        Method::decode(&self.payload)
    }

    /// The `(class, method)` id of a method frame.
    pub fn method_id(&self) -> Option<(u16, u16)> {
        match (self.kind, self.payload.get(..4)) {
            (FRAME_METHOD, Some(p)) => {
                Some((u16::from_be_bytes([p[0], p[1]]), u16::from_be_bytes([p[2], p[3]])))
            }
            _ => None,
        }
    }
}

/// Cuts the first frame off `buf`: the frame and how many bytes it took,
/// `None` when more bytes are needed, or the violation.
pub(crate) fn parse(buf: &[u8], frame_max: usize) -> Result<Option<(Frame, usize)>, Violation> {
    let Some(h) = buf.get(..7) else {
        return Ok(None);
    };
    let kind = h[0];
    if h.starts_with(b"AMQP") {
        return Err(Violation::new(
            FRAME_ERROR,
            "the broker answered with a protocol header: it does not speak AMQP 0-9-1",
        ));
    }
    if !matches!(kind, FRAME_METHOD | FRAME_HEADER | FRAME_BODY | FRAME_HEARTBEAT) {
        return Err(Violation::new(
            FRAME_ERROR,
            format!("a frame of unknown type {kind}"),
        ));
    }
    let channel = u16::from_be_bytes([h[1], h[2]]);
    let size = u32::from_be_bytes([h[3], h[4], h[5], h[6]]) as usize;
    let limit = frame_max.max(FRAME_MIN_SIZE as usize);
    if size + FRAME_OVERHEAD > limit {
        return Err(Violation::new(
            FRAME_ERROR,
            format!(
                "a frame of {} bytes (at most {limit} allowed)",
                size + FRAME_OVERHEAD
            ),
        ));
    }
    let Some(&end) = buf.get(7 + size) else {
        return Ok(None);
    };
    if end != FRAME_END {
        return Err(Violation::new(FRAME_ERROR, "a frame without its end octet"));
    }
    if kind == FRAME_HEARTBEAT && (channel != 0 || size != 0) {
        return Err(Violation::new(
            FRAME_ERROR,
            "a heartbeat frame off channel 0 or with a payload",
        ));
    }
    let payload = buf[7..7 + size].to_vec();
    Ok(Some((
        Frame {
            kind,
            channel,
            payload,
        },
        7 + size + 1,
    )))
}

/// Why reading a frame failed.
#[derive(Debug)]
pub(crate) enum ReadError {
    Io(io::Error),
    Violation(Violation),
}

/// Reads frames from a byte stream, refusing any over `frame_max`.
pub(crate) struct FrameReader<R> {
    io: R,
    buf: Vec<u8>,
    pos: usize,
    pub frame_max: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(io: R) -> FrameReader<R> {
        FrameReader {
            io,
            buf: Vec::with_capacity(8 * 1024),
            pos: 0,
            frame_max: FRAME_MIN_SIZE as usize,
        }
    }

    /// The next frame.
    pub async fn next(&mut self) -> Result<Frame, ReadError> {
        loop {
            match parse(&self.buf[self.pos..], self.frame_max) {
                Ok(Some((frame, used))) => {
                    self.pos += used;
                    return Ok(frame);
                }
                Ok(None) => {}
                Err(v) => return Err(ReadError::Violation(v)),
            }
            if self.pos > 0 {
                self.buf.drain(..self.pos);
                self.pos = 0;
            }
            if self.buf.capacity() - self.buf.len() < 4096 {
                self.buf.reserve(8 * 1024);
            }
            match self.io.read_buf(&mut self.buf).await {
                Ok(0) => return Err(ReadError::Io(io::ErrorKind::UnexpectedEof.into())),
                Ok(_) => {}
                Err(e) => return Err(ReadError::Io(e)),
            }
        }
    }
}

/// Starts a frame in `out`; returns where its payload starts ([`end_frame`]).
fn begin_frame(out: &mut Vec<u8>, kind: u8, channel: u16) -> usize {
    out.push(kind);
    out.extend_from_slice(&channel.to_be_bytes());
    out.extend_from_slice(&[0; 4]);
    out.len()
}

/// Writes the size of the frame begun at `start` and its end octet.
fn end_frame(out: &mut Vec<u8>, start: usize) {
    let size = (out.len() - start) as u32;
    out[start - 4..start].copy_from_slice(&size.to_be_bytes());
    out.push(FRAME_END);
}

/// A method frame.
pub(crate) fn method_frame(out: &mut Vec<u8>, channel: u16, m: &Method) {
    let start = begin_frame(out, FRAME_METHOD, channel);
    m.encode(out);
    end_frame(out, start);
}

pub(crate) fn heartbeat(out: &mut Vec<u8>) {
    let start = begin_frame(out, FRAME_HEARTBEAT, 0);
    end_frame(out, start);
}

/// `basic.publish`, its content header and body frames of at most
/// `frame_max` bytes each; nothing is written when the content header
/// cannot fit in one frame (the error says how large it is).
pub(crate) fn publish(
    out: &mut Vec<u8>,
    channel: u16,
    publish: &Method,
    properties: &Properties,
    body: &[u8],
    frame_max: usize,
) -> Result<(), String> {
    let at = out.len();
    method_frame(out, channel, publish);
    let start = begin_frame(out, FRAME_HEADER, channel);
    properties.encode(out, body.len() as u64);
    end_frame(out, start);
    let header = out.len() - (start - 7);
    if header > frame_max {
        out.truncate(at);
        return Err(format!(
            "the message's content header (properties and headers) takes {header} bytes, \
             more than the connection's frame size of {frame_max}"
        ));
    }
    for chunk in body.chunks(frame_max.saturating_sub(FRAME_OVERHEAD).max(1)) {
        let start = begin_frame(out, FRAME_BODY, channel);
        out.extend_from_slice(chunk);
        end_frame(out, start);
    }
    Ok(())
}
