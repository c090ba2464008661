//! Content: the properties of a content header ([`Properties`], one
//! encoder and one decoder), and the [`Assembler`] that joins a
//! content-carrying method (`basic.deliver`, `basic.return`), its header
//! and its body frames into one [`Arrival`], the only place that does.
//! The spec's order is enforced: a header only after such a method, body
//! frames only after the header and never past the size it declared, and
//! no other frame on the channel until the content is complete (505).

use super::codec::{put_short_str, put_u16, put_u64, Dec, Table};
use super::{method, Frame, Violation, FRAME_BODY, FRAME_HEADER, FRAME_METHOD, UNEXPECTED_FRAME};
use std::collections::HashMap;

/// The flag bits of basic's properties, in the spec's order.
mod flag {
    pub const CONTENT_TYPE: u16 = 0x8000;
    pub const CONTENT_ENCODING: u16 = 0x4000;
    pub const HEADERS: u16 = 0x2000;
    pub const DELIVERY_MODE: u16 = 0x1000;
    pub const PRIORITY: u16 = 0x0800;
    pub const CORRELATION_ID: u16 = 0x0400;
    pub const REPLY_TO: u16 = 0x0200;
    pub const EXPIRATION: u16 = 0x0100;
    pub const MESSAGE_ID: u16 = 0x0080;
    pub const TIMESTAMP: u16 = 0x0040;
    pub const TYPE: u16 = 0x0020;
    pub const USER_ID: u16 = 0x0010;
    pub const APP_ID: u16 = 0x0008;
    pub const CLUSTER_ID: u16 = 0x0004;
}

/// The properties of a basic content header; `None` is absent.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Properties<'a> {
    pub content_type: Option<&'a str>,
    pub content_encoding: Option<&'a str>,
    pub headers: Option<Table<'a>>,
    pub delivery_mode: Option<u8>,
    pub priority: Option<u8>,
    pub correlation_id: Option<&'a str>,
    pub reply_to: Option<&'a str>,
    pub expiration: Option<&'a str>,
    pub message_id: Option<&'a str>,
    pub timestamp: Option<u64>,
    pub kind: Option<&'a str>,
    pub user_id: Option<&'a str>,
    pub app_id: Option<&'a str>,
    pub cluster_id: Option<&'a str>,
}

impl<'a> Properties<'a> {
    /// Writes a content header's payload (class basic, weight 0).
    pub fn encode(&self, o: &mut Vec<u8>, body_size: u64) {
        use flag::*;
        put_u16(o, 60);
        put_u16(o, 0);
        put_u64(o, body_size);
        let bit = |present: bool, bit: u16| if present { bit } else { 0 };
        let flags = bit(self.content_type.is_some(), CONTENT_TYPE)
            | bit(self.content_encoding.is_some(), CONTENT_ENCODING)
            | bit(self.headers.is_some(), HEADERS)
            | bit(self.delivery_mode.is_some(), DELIVERY_MODE)
            | bit(self.priority.is_some(), PRIORITY)
            | bit(self.correlation_id.is_some(), CORRELATION_ID)
            | bit(self.reply_to.is_some(), REPLY_TO)
            | bit(self.expiration.is_some(), EXPIRATION)
            | bit(self.message_id.is_some(), MESSAGE_ID)
            | bit(self.timestamp.is_some(), TIMESTAMP)
            | bit(self.kind.is_some(), TYPE)
            | bit(self.user_id.is_some(), USER_ID)
            | bit(self.app_id.is_some(), APP_ID)
            | bit(self.cluster_id.is_some(), CLUSTER_ID);
        put_u16(o, flags);
        let text = |o: &mut Vec<u8>, s: Option<&str>| s.into_iter().for_each(|s| put_short_str(o, s));
        text(o, self.content_type);
        text(o, self.content_encoding);
        if let Some(h) = &self.headers {
            h.encode(o);
        }
        o.extend(self.delivery_mode);
        o.extend(self.priority);
        text(o, self.correlation_id);
        text(o, self.reply_to);
        text(o, self.expiration);
        text(o, self.message_id);
        if let Some(t) = self.timestamp {
            put_u64(o, t);
        }
        text(o, self.kind);
        text(o, self.user_id);
        text(o, self.app_id);
        text(o, self.cluster_id);
    }

    /// Reads a content header's payload: the body size and the properties.
    pub fn decode(payload: &'a [u8]) -> Result<(u64, Properties<'a>), Violation> {
        use flag::*;
        let mut d = Dec::new(payload);
        let (class, weight, size, flags) = (d.u16()?, d.u16()?, d.u64()?, d.u16()?);
        if class != 60 || weight != 0 {
            return Err(Violation::new(
                UNEXPECTED_FRAME,
                format!("a content header of class {class}, weight {weight} (basic, 0 expected)"),
            ));
        }
        if flags & 0x0003 != 0 {
            return Err(Violation::syntax("a content header with unknown property flags"));
        }
        let has = |bit: u16| flags & bit != 0;
        let mut p = Properties::default();
        let text = |d: &mut Dec<'a>, bit: u16| has(bit).then(|| d.short_str()).transpose();
        p.content_type = text(&mut d, CONTENT_TYPE)?;
        p.content_encoding = text(&mut d, CONTENT_ENCODING)?;
        p.headers = has(HEADERS).then(|| d.table()).transpose()?;
        p.delivery_mode = has(DELIVERY_MODE).then(|| d.u8()).transpose()?;
        p.priority = has(PRIORITY).then(|| d.u8()).transpose()?;
        p.correlation_id = text(&mut d, CORRELATION_ID)?;
        p.reply_to = text(&mut d, REPLY_TO)?;
        p.expiration = text(&mut d, EXPIRATION)?;
        p.message_id = text(&mut d, MESSAGE_ID)?;
        p.timestamp = has(TIMESTAMP).then(|| d.u64()).transpose()?;
        p.kind = text(&mut d, TYPE)?;
        p.user_id = text(&mut d, USER_ID)?;
        p.app_id = text(&mut d, APP_ID)?;
        p.cluster_id = text(&mut d, CLUSTER_ID)?;
        Ok((size, p))
    }
}

fn unexpected(what: String) -> Violation {
    Violation::new(UNEXPECTED_FRAME, what)
}

/// A method frame, with its content when it carries one.
#[derive(Debug)]
pub(crate) struct Arrival {
    pub method: Frame,
    /// The content header's frame and the whole body.
    pub content: Option<(Frame, Vec<u8>)>,
}

/// Content still coming on a channel.
struct Partial {
    method: Frame,
    header: Option<(Frame, u64)>,
    body: Vec<u8>,
}

/// Joins methods with their content, channel by channel.
#[derive(Default)]
pub(crate) struct Assembler {
    partial: HashMap<u16, Partial>,
}

impl Assembler {
    /// Takes one frame (not a heartbeat); returns a method that is
    /// complete with its content, if this frame completed one.
    pub fn push(&mut self, frame: Frame) -> Result<Option<Arrival>, Violation> {
        match frame.kind {
            FRAME_METHOD => self.method(frame),
            FRAME_HEADER => self.header(frame),
            FRAME_BODY => self.body(frame),
            other => Err(unexpected(format!(
                "a frame of type {other} in the content stream"
            ))),
        }
    }

    /// A method: passed on, or held until its content is complete.
    fn method(&mut self, frame: Frame) -> Result<Option<Arrival>, Violation> {
        if let Some(p) = self.partial.get(&frame.channel) {
            return Err(unexpected(format!(
                "a method frame on channel {} before the content of {} was complete",
                frame.channel,
                method::name(p.method.method_id().unwrap_or_default()),
            )));
        }
        let id = frame
            .method_id()
            .ok_or_else(|| Violation::syntax("a method frame shorter than its ids"))?;
        if !method::carries_content(id) {
            return Ok(Some(Arrival {
                method: frame,
                content: None,
            }));
        }
        let p = Partial {
            method: frame,
            header: None,
            body: Vec::new(),
        };
        self.partial.insert(p.method.channel, p);
        Ok(None)
    }

    fn header(&mut self, frame: Frame) -> Result<Option<Arrival>, Violation> {
        let Some(p) = self
            .partial
            .get_mut(&frame.channel)
            .filter(|p| p.header.is_none())
        else {
            return Err(unexpected(format!(
                "a content header on channel {} without a method before it",
                frame.channel
            )));
        };
        let (channel, (size, _)) = (frame.channel, Properties::decode(&frame.payload)?);
        p.header = Some((frame, size));
        Ok(self.complete_if_full(channel))
    }

    fn body(&mut self, frame: Frame) -> Result<Option<Arrival>, Violation> {
        let Some(p) = self
            .partial
            .get_mut(&frame.channel)
            .filter(|p| p.header.is_some())
        else {
            return Err(unexpected(format!(
                "a body frame on channel {} without a content header before it",
                frame.channel
            )));
        };
        let size = p.header.as_ref().map_or(0, |h| h.1);
        let got = p.body.len() as u64 + frame.payload.len() as u64;
        if got > size {
            return Err(unexpected(format!(
                "a body longer than its content header declared ({got} bytes of {size})"
            )));
        }
        if p.body.is_empty() {
            p.body = frame.payload;
        } else {
            p.body.extend_from_slice(&frame.payload);
        }
        Ok(self.complete_if_full(frame.channel))
    }

    /// The channel's content, when all of its body is in.
    fn complete_if_full(&mut self, channel: u16) -> Option<Arrival> {
        let p = self.partial.get(&channel)?;
        let size = p.header.as_ref()?.1;
        if (p.body.len() as u64) < size {
            return None;
        }
        let p = self.partial.remove(&channel)?;
        let (header, _) = p.header?;
        Some(Arrival {
            method: p.method,
            content: Some((header, p.body)),
        })
    }

    /// Drops what was coming on a channel that closed.
    pub fn forget(&mut self, channel: u16) {
        self.partial.remove(&channel);
    }
}
