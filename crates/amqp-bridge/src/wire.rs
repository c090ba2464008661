//! The few AMQP 0-9-1 frames our own connections speak, encoded and
//! decoded by hand: the connection handshake, `channel.open`,
//! `confirm.select`, `basic.publish` with its content header and body,
//! and what comes back (`basic.ack` / `nack` / `return`, closes,
//! heartbeats); for consuming, `basic.qos`, `basic.consume`,
//! `basic.ack` / `reject`, and the `basic.deliver` with its content header
//! that come back; for checks and the topology, the declares and binds. Everything is appended to one
//! output buffer, so that a burst of frames leaves in one write.
//!
//! ```text
//!  frame   = type:u8  channel:u16  size:u32  payload[size]  0xCE
//!  method  = class:u16  method:u16  arguments
//!  header  = class:u16  weight:u16  body-size:u64  flags:u16  properties
//! ```

use crate::{HeaderValue, SmallestInt};
use std::io;
use tokio::io::{AsyncRead, AsyncReadExt};

pub(crate) const PROTOCOL_HEADER: &[u8] = b"AMQP\x00\x00\x09\x01";
pub(crate) const FRAME_METHOD: u8 = 1;
pub(crate) const FRAME_HEADER: u8 = 2;
pub(crate) const FRAME_BODY: u8 = 3;
pub(crate) const FRAME_HEARTBEAT: u8 = 8;
const FRAME_END: u8 = 0xCE;
/// Type, channel, size and the end octet: what a frame adds to its payload.
const FRAME_OVERHEAD: usize = 8;
/// The frame size we ask for (RabbitMQ's default); the broker may lower it.
pub(crate) const FRAME_MAX: u32 = 131_072;

/// `(class, method)` of the methods the link sends or expects.
pub(crate) mod method {
    pub const CONNECTION_START: (u16, u16) = (10, 10);
    pub const CONNECTION_START_OK: (u16, u16) = (10, 11);
    pub const CONNECTION_TUNE: (u16, u16) = (10, 30);
    pub const CONNECTION_TUNE_OK: (u16, u16) = (10, 31);
    pub const CONNECTION_OPEN: (u16, u16) = (10, 40);
    pub const CONNECTION_OPEN_OK: (u16, u16) = (10, 41);
    pub const CONNECTION_CLOSE: (u16, u16) = (10, 50);
    pub const CONNECTION_CLOSE_OK: (u16, u16) = (10, 51);
    pub const CONNECTION_BLOCKED: (u16, u16) = (10, 60);
    pub const CONNECTION_UNBLOCKED: (u16, u16) = (10, 61);
    pub const CHANNEL_OPEN: (u16, u16) = (20, 10);
    pub const CHANNEL_OPEN_OK: (u16, u16) = (20, 11);
    pub const CHANNEL_FLOW: (u16, u16) = (20, 20);
    pub const CHANNEL_FLOW_OK: (u16, u16) = (20, 21);
    pub const CHANNEL_CLOSE: (u16, u16) = (20, 40);
    pub const CHANNEL_CLOSE_OK: (u16, u16) = (20, 41);
    pub const CONFIRM_SELECT: (u16, u16) = (85, 10);
    pub const CONFIRM_SELECT_OK: (u16, u16) = (85, 11);
    pub const EXCHANGE_DECLARE: (u16, u16) = (40, 10);
    pub const EXCHANGE_DECLARE_OK: (u16, u16) = (40, 11);
    pub const EXCHANGE_BIND: (u16, u16) = (40, 30);
    pub const EXCHANGE_BIND_OK: (u16, u16) = (40, 31);
    pub const QUEUE_DECLARE: (u16, u16) = (50, 10);
    pub const QUEUE_DECLARE_OK: (u16, u16) = (50, 11);
    pub const QUEUE_BIND: (u16, u16) = (50, 20);
    pub const QUEUE_BIND_OK: (u16, u16) = (50, 21);
    pub const BASIC_QOS: (u16, u16) = (60, 10);
    pub const BASIC_QOS_OK: (u16, u16) = (60, 11);
    pub const BASIC_CONSUME: (u16, u16) = (60, 20);
    pub const BASIC_CONSUME_OK: (u16, u16) = (60, 21);
    pub const BASIC_CANCEL: (u16, u16) = (60, 30);
    pub const BASIC_PUBLISH: (u16, u16) = (60, 40);
    pub const BASIC_DELIVER: (u16, u16) = (60, 60);
    pub const BASIC_REJECT: (u16, u16) = (60, 90);
    pub const BASIC_RETURN: (u16, u16) = (60, 50);
    pub const BASIC_ACK: (u16, u16) = (60, 80);
    pub const BASIC_NACK: (u16, u16) = (60, 120);
}

/// Starts a frame in `out`; returns where its size goes ([`end_frame`]).
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

/// A method frame: `args` writes the arguments.
pub(crate) fn method_frame(out: &mut Vec<u8>, channel: u16, m: (u16, u16), args: impl FnOnce(&mut Vec<u8>)) {
    let start = begin_frame(out, FRAME_METHOD, channel);
    out.extend_from_slice(&m.0.to_be_bytes());
    out.extend_from_slice(&m.1.to_be_bytes());
    args(out);
    end_frame(out, start);
}

/// `basic.ack` (`multiple`: every delivery up to `tag`) or, with
/// `ack` false, `basic.reject` of one delivery without requeueing it.
pub(crate) fn settle(out: &mut Vec<u8>, channel: u16, tag: u64, ack: bool) {
    let m = if ack {
        method::BASIC_ACK
    } else {
        method::BASIC_REJECT
    };
    method_frame(out, channel, m, |o| {
        o.extend_from_slice(&tag.to_be_bytes());
        o.push(u8::from(ack)); // multiple / requeue
    });
}

/// `channel.close` by us: a normal close.
pub(crate) fn channel_close(out: &mut Vec<u8>, channel: u16) {
    method_frame(out, channel, method::CHANNEL_CLOSE, |o| {
        o.extend_from_slice(&200u16.to_be_bytes());
        short_str(o, "");
        o.extend_from_slice(&[0; 4]);
    });
}

pub(crate) fn heartbeat(out: &mut Vec<u8>) {
    let start = begin_frame(out, FRAME_HEARTBEAT, 0);
    end_frame(out, start);
}

/// A short string (at most 255 bytes; the caller checks, longer is cut).
pub(crate) fn short_str(out: &mut Vec<u8>, s: &str) {
    let bytes = &s.as_bytes()[..s.len().min(255)];
    out.push(bytes.len() as u8);
    out.extend_from_slice(bytes);
}

pub(crate) fn long_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s);
}

/// A field table whose entries `entries` writes.
pub(crate) fn table(out: &mut Vec<u8>, entries: impl FnOnce(&mut Vec<u8>)) {
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    entries(out);
    let size = (out.len() - at - 4) as u32;
    out[at..at + 4].copy_from_slice(&size.to_be_bytes());
}

/// One table entry: name, type letter and value.
pub(crate) fn field(out: &mut Vec<u8>, name: &str, value: &HeaderValue) {
    short_str(out, name);
    match value {
        HeaderValue::Str(s) => {
            out.push(b'S');
            long_str(out, s.as_bytes());
        }
        HeaderValue::Bool(b) => out.extend_from_slice(&[b't', u8::from(*b)]),
        HeaderValue::Int(i) => {
            let mut typed = |letter: u8, bytes: &[u8]| {
                out.push(letter);
                out.extend_from_slice(bytes);
            };
            match SmallestInt::of(*i) {
                SmallestInt::I8(v) => typed(b'b', &v.to_be_bytes()),
                SmallestInt::I16(v) => typed(b's', &v.to_be_bytes()),
                SmallestInt::U16(v) => typed(b'u', &v.to_be_bytes()),
                SmallestInt::I32(v) => typed(b'I', &v.to_be_bytes()),
                SmallestInt::U32(v) => typed(b'i', &v.to_be_bytes()),
                SmallestInt::I64(v) => typed(b'l', &v.to_be_bytes()),
            }
        }
    }
}

/// The properties the gateway publishes with, by flag bit.
const CONTENT_TYPE: u16 = 0x8000;
const HEADERS: u16 = 0x2000;
const DELIVERY_MODE: u16 = 0x1000;
const TYPE: u16 = 0x0020;
const APP_ID: u16 = 0x0008;

/// What one publish carries besides its exchange and routing key.
pub(crate) struct Content<'a> {
    pub content_type: &'a str,
    pub msg_type: &'a str,
    pub app_id: &'a str,
    pub persistent: bool,
    pub headers: &'a [(&'static str, HeaderValue)],
    pub body: &'a [u8],
}

/// `basic.publish` (mandatory), its content header and body frames of at
/// most `frame_max` bytes each.
pub(crate) fn publish(
    out: &mut Vec<u8>,
    channel: u16,
    exchange: &str,
    routing_key: &str,
    c: &Content,
    frame_max: usize,
) {
    method_frame(out, channel, method::BASIC_PUBLISH, |out| {
        out.extend_from_slice(&0u16.to_be_bytes());
        short_str(out, exchange);
        short_str(out, routing_key);
        out.push(0b01); // mandatory, not immediate
    });
    let start = begin_frame(out, FRAME_HEADER, channel);
    out.extend_from_slice(&60u16.to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&(c.body.len() as u64).to_be_bytes());
    out.extend_from_slice(&(CONTENT_TYPE | HEADERS | DELIVERY_MODE | TYPE | APP_ID).to_be_bytes());
    short_str(out, c.content_type);
    table(out, |out| {
        for (name, value) in c.headers {
            field(out, name, value);
        }
    });
    out.push(if c.persistent { 2 } else { 1 });
    short_str(out, c.msg_type);
    short_str(out, c.app_id);
    end_frame(out, start);
    for chunk in c.body.chunks(frame_max.saturating_sub(FRAME_OVERHEAD).max(1)) {
        let start = begin_frame(out, FRAME_BODY, channel);
        out.extend_from_slice(chunk);
        end_frame(out, start);
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
    /// The `(class, method)` of a method frame and a reader of its
    /// arguments.
    pub fn method(&self) -> Option<((u16, u16), Args<'_>)> {
        if self.kind != FRAME_METHOD || self.payload.len() < 4 {
            return None;
        }
        let p = &self.payload;
        let m = (u16::from_be_bytes([p[0], p[1]]), u16::from_be_bytes([p[2], p[3]]));
        Some((m, self.args()))
    }

    /// The arguments of a method frame.
    pub fn args(&self) -> Args<'_> {
        Args(self.payload.get(4..).unwrap_or_default())
    }

    /// The body size of a content header frame.
    pub fn body_size(&self) -> Option<u64> {
        let size = self.payload.get(4..12)?;
        Some(u64::from_be_bytes(size.try_into().ok()?))
    }

    /// A content header frame's body size, `content_type` and `type`
    /// (empty when absent); the properties before `type` are skipped.
    pub fn content_header(&self) -> io::Result<(u64, String, String)> {
        let mut a = Args(&self.payload);
        let (_class, _weight, size) = (a.u16()?, a.u16()?, a.u64()?);
        let flags = a.u16()?;
        let mut more = flags;
        while more & 1 == 1 {
            more = a.u16()?; // further flag words: properties we never read
        }
        let has = |bit: u16| flags & bit != 0;
        let text = |a: &mut Args, bit: u16| {
            if has(bit) {
                a.short_str()
            } else {
                Ok(String::new())
            }
        };
        let content_type = text(&mut a, CONTENT_TYPE)?;
        text(&mut a, 0x4000)?; // content_encoding
        if has(HEADERS) {
            a.skip_table()?;
        }
        for (bit, octets) in [(DELIVERY_MODE, 1), (0x0800, 1)] {
            if has(bit) {
                a.take(octets)?; // delivery_mode, priority
            }
        }
        for bit in [0x0400, 0x0200, 0x0100, 0x0080] {
            text(&mut a, bit)?; // correlation_id, reply_to, expiration, message_id
        }
        if has(0x0040) {
            a.u64()?; // timestamp
        }
        let msg_type = text(&mut a, TYPE)?;
        Ok((size, content_type, msg_type))
    }
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
            frame_max: FRAME_MAX as usize,
        }
    }

    /// Reads until `n` bytes are buffered after `pos`.
    async fn fill(&mut self, n: usize) -> io::Result<()> {
        while self.buf.len() - self.pos < n {
            if self.pos > 0 {
                self.buf.drain(..self.pos);
                self.pos = 0;
            }
            if self.buf.capacity() - self.buf.len() < 4096 {
                self.buf.reserve(8 * 1024);
            }
            if self.io.read_buf(&mut self.buf).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        Ok(())
    }

    /// The next frame.
    pub async fn next(&mut self) -> io::Result<Frame> {
        self.fill(7).await?;
        let h = &self.buf[self.pos..self.pos + 7];
        let kind = h[0];
        let channel = u16::from_be_bytes([h[1], h[2]]);
        let size = u32::from_be_bytes([h[3], h[4], h[5], h[6]]) as usize;
        if size + FRAME_OVERHEAD > self.frame_max.max(4096) {
            return Err(invalid(format!(
                "a frame of {size} bytes (at most {} allowed)",
                self.frame_max
            )));
        }
        self.fill(7 + size + 1).await?;
        let start = self.pos + 7;
        if self.buf[start + size] != FRAME_END {
            return Err(invalid("a frame without its end octet".into()));
        }
        let payload = self.buf[start..start + size].to_vec();
        self.pos = start + size + 1;
        Ok(Frame {
            kind,
            channel,
            payload,
        })
    }
}

fn invalid(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

/// A reader of method arguments; every read fails on a short payload.
pub(crate) struct Args<'a>(&'a [u8]);

impl<'a> Args<'a> {
    fn take(&mut self, n: usize) -> io::Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(invalid("a truncated AMQP method".into()));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    pub fn u8(&mut self) -> io::Result<u8> {
        Ok(self.take(1)?[0])
    }

    pub fn u16(&mut self) -> io::Result<u16> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub fn u32(&mut self) -> io::Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn u64(&mut self) -> io::Result<u64> {
        let b = self.take(8)?;
        let mut a = [0; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    pub fn short_str(&mut self) -> io::Result<String> {
        let n = self.u8()? as usize;
        Ok(String::from_utf8_lossy(self.take(n)?).into_owned())
    }

    pub fn long_str(&mut self) -> io::Result<String> {
        let n = self.u32()? as usize;
        Ok(String::from_utf8_lossy(self.take(n)?).into_owned())
    }

    /// Skips a field table.
    pub fn skip_table(&mut self) -> io::Result<()> {
        let n = self.u32()? as usize;
        self.take(n).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(mut bytes: &[u8]) -> Vec<Frame> {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            let mut r = FrameReader::new(&mut bytes);
            let mut out = Vec::new();
            while let Ok(f) = r.next().await {
                out.push(f);
            }
            out
        })
    }

    #[test]
    fn a_publish_is_a_method_a_header_and_bounded_body_frames() {
        let headers = [
            ("a", HeaderValue::Int(-5)),
            ("b", HeaderValue::Int(40_000)),
            ("c", HeaderValue::Bool(true)),
            ("d", HeaderValue::Str("xy".into())),
        ];
        let body = vec![7u8; 250];
        let content = Content {
            content_type: "application/json",
            msg_type: "T",
            app_id: "swpt_stomp",
            persistent: true,
            headers: &headers,
            body: &body,
        };
        let mut out = Vec::new();
        publish(&mut out, 1, "ex", "k.1", &content, 108);
        let got = frames(&out);
        assert_eq!(got.len(), 2 + 3, "250 bytes in frames of 100");
        let (m, mut a) = got[0].method().unwrap();
        assert_eq!(m, method::BASIC_PUBLISH);
        assert_eq!(a.u16().unwrap(), 0);
        assert_eq!(a.short_str().unwrap(), "ex");
        assert_eq!(a.short_str().unwrap(), "k.1");
        assert_eq!(a.u8().unwrap(), 1, "mandatory");
        assert_eq!((got[1].kind, got[1].channel), (FRAME_HEADER, 1));
        assert_eq!(got[1].body_size(), Some(250));
        let p = &got[1].payload;
        assert_eq!(
            u16::from_be_bytes([p[12], p[13]]),
            0x8000 | 0x2000 | 0x1000 | 0x20 | 0x8
        );
        let mut a = Args(&p[14..]);
        assert_eq!(a.short_str().unwrap(), "application/json");
        let table_len = a.u32().unwrap() as usize;
        let t = a.take(table_len).unwrap();
        let want: &[u8] = b"\x01ab\xfb\x01bu\x9c\x40\x01ct\x01\x01dS\x00\x00\x00\x02xy";
        assert_eq!(t, want);
        assert_eq!(a.u8().unwrap(), 2, "persistent");
        assert_eq!(a.short_str().unwrap(), "T");
        assert_eq!(a.short_str().unwrap(), "swpt_stomp");
        let sizes: Vec<usize> = got[2..].iter().map(|f| f.payload.len()).collect();
        assert_eq!(sizes, [100, 100, 50]);
        assert!(got[2..].iter().all(|f| f.kind == FRAME_BODY));
    }

    #[test]
    fn a_content_header_gives_its_size_content_type_and_type() {
        let mut p = Vec::new();
        p.extend_from_slice(&60u16.to_be_bytes());
        p.extend_from_slice(&0u16.to_be_bytes());
        p.extend_from_slice(&5u64.to_be_bytes());
        // Every property up to `user_id`, each before `type` skipped.
        p.extend_from_slice(&0xFFF0u16.to_be_bytes());
        short_str(&mut p, "application/json");
        short_str(&mut p, "gzip");
        table(&mut p, |o| field(o, "h", &HeaderValue::Int(1)));
        p.extend_from_slice(&[2, 9]);
        for s in ["corr", "reply", "60000", "id"] {
            short_str(&mut p, s);
        }
        p.extend_from_slice(&77u64.to_be_bytes());
        short_str(&mut p, "AccountPurge");
        short_str(&mut p, "guest");
        let frame = |payload: Vec<u8>| Frame {
            kind: FRAME_HEADER,
            channel: 3,
            payload,
        };
        let (size, content_type, msg_type) = frame(p.clone()).content_header().unwrap();
        assert_eq!(
            (size, content_type.as_str(), msg_type.as_str()),
            (5, "application/json", "AccountPurge")
        );
        // Only `type`: the rest are absent.
        let mut only = p[..12].to_vec();
        only.extend_from_slice(&0x0020u16.to_be_bytes());
        short_str(&mut only, "T");
        let (_, content_type, msg_type) = frame(only).content_header().unwrap();
        assert_eq!((content_type.as_str(), msg_type.as_str()), ("", "T"));
        // Cut short: an error, not a panic.
        assert!(frame(p[..p.len() - 20].to_vec()).content_header().is_err());
    }

    #[test]
    fn broken_frames_are_errors_not_panics() {
        let mut out = Vec::new();
        heartbeat(&mut out);
        assert_eq!(out, [8, 0, 0, 0, 0, 0, 0, 0xCE]);
        out[7] = 0;
        assert!(frames(&out).is_empty(), "no end octet");
        let huge = [1, 0, 0, 0xff, 0xff, 0xff, 0xff];
        assert!(frames(&huge).is_empty(), "over the frame size");
        let mut short = Vec::new();
        method_frame(&mut short, 0, method::BASIC_ACK, |o| o.push(1));
        let f = &frames(&short)[0];
        let (_, mut a) = f.method().unwrap();
        assert!(a.u64().is_err(), "a truncated ack");
    }
}
