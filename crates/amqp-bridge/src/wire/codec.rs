//! AMQP's primitive types: [`Dec`] reads a payload (every read checked,
//! a short payload is a syntax error, never a panic), the `put_*`
//! functions write one, and [`FieldValue`] / [`Table`] / [`Array`] are the
//! field tables of method arguments and message headers, with every value
//! type RabbitMQ speaks.
//!
//! A decoded table is kept as its raw bytes, checked once when read
//! ([`Table::Raw`]); its entries are decoded only when asked for
//! ([`Table::entries`]), so a delivery's headers cost one walk, not a map.

use super::Violation;
use crate::{HeaderValue, SmallestInt};

/// How deep tables and arrays may nest in what we read (a frame of
/// nested empty tables must not exhaust the stack).
const MAX_DEPTH: usize = 32;

pub(crate) fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_be_bytes());
}

pub(crate) fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

pub(crate) fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_be_bytes());
}

/// Bits packed into one octet, the first in the lowest bit.
pub(crate) fn put_bits(out: &mut Vec<u8>, bits: &[bool]) {
    out.push(bits.iter().rev().fold(0, |acc, b| (acc << 1) | u8::from(*b)));
}

/// A short string (at most 255 bytes: callers check names with
/// `checked_name`; anything longer is cut).
pub(crate) fn put_short_str(out: &mut Vec<u8>, s: &str) {
    let bytes = &s.as_bytes()[..s.len().min(255)];
    out.push(bytes.len() as u8);
    out.extend_from_slice(bytes);
}

pub(crate) fn put_long_str(out: &mut Vec<u8>, s: &[u8]) {
    put_u32(out, s.len() as u32);
    out.extend_from_slice(s);
}

/// Writes a length-prefixed block whose content `body` writes.
fn put_sized(out: &mut Vec<u8>, body: impl FnOnce(&mut Vec<u8>)) {
    let at = out.len();
    put_u32(out, 0);
    body(out);
    let size = (out.len() - at - 4) as u32;
    out[at..at + 4].copy_from_slice(&size.to_be_bytes());
}

/// A field table: as read, as built from values, or the gateway's
/// message headers (integers in their smallest type, see [`SmallestInt`]).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Table<'a> {
    /// The bytes of a table as read (checked when read).
    Raw(&'a [u8]),
    Fields(&'a [(&'a str, FieldValue<'a>)]),
    Headers(&'a [(&'static str, HeaderValue)]),
}

impl<'a> Table<'a> {
    pub const EMPTY: Table<'static> = Table::Fields(&[]);

    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Table::Raw(bytes) => put_long_str(out, bytes),
            Table::Fields(fields) => put_sized(out, |o| {
                for (name, value) in fields.iter() {
                    put_short_str(o, name);
                    value.encode(o);
                }
            }),
            Table::Headers(headers) => put_sized(out, |o| {
                for (name, value) in headers.iter() {
                    put_short_str(o, name);
                    header_value(o, value);
                }
            }),
        }
    }

    /// The entries of a table as read, in order (empty for a table
    /// built here: its entries are at hand).
    pub fn entries(&self) -> Vec<(&'a str, FieldValue<'a>)> {
        let Table::Raw(bytes) = *self else {
            return Vec::new();
        };
        let mut d = Dec::new(bytes);
        let mut out = Vec::new();
        // Checked when read: these reads cannot fail.
        while !d.is_empty() {
            match (d.short_str(), d.field_value(0)) {
                (Ok(name), Ok(value)) => out.push((name, value)),
                _ => break,
            }
        }
        out
    }
}

/// A field array: as read, or as built.
#[derive(Clone, Copy, Debug)]
#[allow(dead_code)] // Values: built by the tests
pub(crate) enum Array<'a> {
    Raw(&'a [u8]),
    Values(&'a [FieldValue<'a>]),
}

impl<'a> Array<'a> {
    /// The values of an array as read.
    pub fn values(&self) -> Vec<FieldValue<'a>> {
        match *self {
            Array::Values(values) => values.to_vec(),
            Array::Raw(bytes) => {
                let mut d = Dec::new(bytes);
                let mut out = Vec::new();
                while let (false, Ok(v)) = (d.is_empty(), d.field_value(0)) {
                    out.push(v);
                }
                out
            }
        }
    }
}

/// One value of a field table or array, by RabbitMQ's type letters.
#[derive(Clone, Copy, Debug)]
pub(crate) enum FieldValue<'a> {
    Bool(bool),
    I8(i8),
    U8(u8),
    I16(i16),
    U16(u16),
    I32(i32),
    U32(u32),
    I64(i64),
    F32(f32),
    F64(f64),
    /// Scale (decimal places) and value.
    Decimal(u8, u32),
    LongStr(&'a [u8]),
    Bytes(&'a [u8]),
    Array(Array<'a>),
    Timestamp(u64),
    Table(Table<'a>),
    Void,
}

impl FieldValue<'_> {
    pub fn encode(&self, out: &mut Vec<u8>) {
        match *self {
            FieldValue::Bool(b) => out.extend_from_slice(&[b't', u8::from(b)]),
            FieldValue::I8(v) => typed(out, b'b', &v.to_be_bytes()),
            FieldValue::U8(v) => typed(out, b'B', &[v]),
            FieldValue::I16(v) => typed(out, b's', &v.to_be_bytes()),
            FieldValue::U16(v) => typed(out, b'u', &v.to_be_bytes()),
            FieldValue::I32(v) => typed(out, b'I', &v.to_be_bytes()),
            FieldValue::U32(v) => typed(out, b'i', &v.to_be_bytes()),
            FieldValue::I64(v) => typed(out, b'l', &v.to_be_bytes()),
            FieldValue::F32(v) => typed(out, b'f', &v.to_be_bytes()),
            FieldValue::F64(v) => typed(out, b'd', &v.to_be_bytes()),
            FieldValue::Decimal(scale, v) => {
                out.extend_from_slice(&[b'D', scale]);
                put_u32(out, v);
            }
            FieldValue::LongStr(s) => {
                out.push(b'S');
                put_long_str(out, s);
            }
            FieldValue::Bytes(s) => {
                out.push(b'x');
                put_long_str(out, s);
            }
            FieldValue::Array(Array::Raw(bytes)) => {
                out.push(b'A');
                put_long_str(out, bytes);
            }
            FieldValue::Array(Array::Values(values)) => {
                out.push(b'A');
                put_sized(out, |o| values.iter().for_each(|v| v.encode(o)));
            }
            FieldValue::Timestamp(t) => typed(out, b'T', &t.to_be_bytes()),
            FieldValue::Table(t) => {
                out.push(b'F');
                t.encode(out);
            }
            FieldValue::Void => out.push(b'V'),
        }
    }
}

fn typed(out: &mut Vec<u8>, letter: u8, bytes: &[u8]) {
    out.push(letter);
    out.extend_from_slice(bytes);
}

/// One of the gateway's header values, integers in their smallest type.
fn header_value(out: &mut Vec<u8>, value: &HeaderValue) {
    let v = match value {
        HeaderValue::Str(s) => FieldValue::LongStr(s.as_bytes()),
        HeaderValue::Bool(b) => FieldValue::Bool(*b),
        HeaderValue::Int(i) => match SmallestInt::of(*i) {
            SmallestInt::I8(v) => FieldValue::I8(v),
            SmallestInt::I16(v) => FieldValue::I16(v),
            SmallestInt::U16(v) => FieldValue::U16(v),
            SmallestInt::I32(v) => FieldValue::I32(v),
            SmallestInt::U32(v) => FieldValue::U32(v),
            SmallestInt::I64(v) => FieldValue::I64(v),
        },
    };
    v.encode(out);
}

/// A reader of a payload; every read fails on a short payload.
pub(crate) struct Dec<'a>(&'a [u8]);

impl<'a> Dec<'a> {
    pub fn new(bytes: &'a [u8]) -> Dec<'a> {
        Dec(bytes)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8], Violation> {
        if self.0.len() < n {
            return Err(Violation::syntax("a truncated AMQP method or header"));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Violation> {
        let mut a = [0; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    pub fn u8(&mut self) -> Result<u8, Violation> {
        Ok(self.take(1)?[0])
    }

    pub fn u16(&mut self) -> Result<u16, Violation> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    pub fn u32(&mut self) -> Result<u32, Violation> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    pub fn u64(&mut self) -> Result<u64, Violation> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// `N` bits packed in one octet, the first in the lowest bit.
    pub fn bits<const N: usize>(&mut self) -> Result<[bool; N], Violation> {
        let octet = self.u8()?;
        Ok(std::array::from_fn(|i| octet & (1 << i) != 0))
    }

    pub fn short_str(&mut self) -> Result<&'a str, Violation> {
        let n = self.u8()? as usize;
        std::str::from_utf8(self.take(n)?).map_err(|_| Violation::syntax("a short string that is not UTF-8"))
    }

    pub fn long_bytes(&mut self) -> Result<&'a [u8], Violation> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    /// A field table, checked entry by entry.
    pub fn table(&mut self) -> Result<Table<'a>, Violation> {
        self.table_at(0)
    }

    fn table_at(&mut self, depth: usize) -> Result<Table<'a>, Violation> {
        let bytes = self.long_bytes()?;
        let mut d = Dec(bytes);
        while !d.is_empty() {
            d.short_str()?;
            d.field_value(depth + 1)?;
        }
        Ok(Table::Raw(bytes))
    }

    pub fn field_value(&mut self, depth: usize) -> Result<FieldValue<'a>, Violation> {
        if depth > MAX_DEPTH {
            return Err(Violation::syntax("field tables nested too deep"));
        }
        Ok(match self.u8()? {
            b't' => FieldValue::Bool(self.u8()? != 0),
            b'b' => FieldValue::I8(self.u8()? as i8),
            b'B' => FieldValue::U8(self.u8()?),
            b's' => FieldValue::I16(self.u16()? as i16),
            b'u' => FieldValue::U16(self.u16()?),
            b'I' => FieldValue::I32(self.u32()? as i32),
            b'i' => FieldValue::U32(self.u32()?),
            b'l' => FieldValue::I64(self.u64()? as i64),
            b'f' => FieldValue::F32(f32::from_bits(self.u32()?)),
            b'd' => FieldValue::F64(f64::from_bits(self.u64()?)),
            b'D' => FieldValue::Decimal(self.u8()?, self.u32()?),
            b'S' => FieldValue::LongStr(self.long_bytes()?),
            b'x' => FieldValue::Bytes(self.long_bytes()?),
            b'A' => {
                let bytes = self.long_bytes()?;
                let mut d = Dec(bytes);
                while !d.is_empty() {
                    d.field_value(depth + 1)?;
                }
                FieldValue::Array(Array::Raw(bytes))
            }
            b'T' => FieldValue::Timestamp(self.u64()?),
            b'F' => FieldValue::Table(self.table_at(depth)?),
            b'V' => FieldValue::Void,
            other => {
                return Err(Violation::syntax(format!(
                    "an unknown field value type {:?}",
                    other as char
                )))
            }
        })
    }
}
