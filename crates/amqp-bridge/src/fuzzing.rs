//! The reading side of the client, driven from bytes alone, for the fuzz
//! target (`fuzz/fuzz_targets/amqp_read.rs`): not part of the API.

use crate::wire::content::{Arrival, Assembler};
use crate::wire::{self, Properties};

/// What reading a byte stream came to: the frames cut from it, the
/// methods (with their content) assembled, and the violation that ended
/// it, if any.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Read {
    pub frames: usize,
    pub methods: Vec<((u16, u16), Option<usize>)>,
    pub violation: Option<(u16, String)>,
}

/// Reads `data` as RabbitMQ's side of a connection, handed over in
/// chunks that end at the offsets of `cuts`: frames cut, joined with
/// their content, methods, properties and every field table decoded, as
/// the connection's reader does. The result must not depend on the cuts.
pub fn read(data: &[u8], cuts: &[usize], frame_max: usize) -> Read {
    let mut read = Read::default();
    let mut buf = Vec::new();
    let mut assembler = Assembler::default();
    let mut ends: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
    ends.push(data.len());
    ends.sort_unstable();
    let mut from = 0;
    for end in ends {
        buf.extend_from_slice(&data[from..end]);
        from = end;
        loop {
            match wire::parse(&buf, frame_max) {
                Ok(None) => break,
                Ok(Some((frame, used))) => {
                    buf.drain(..used);
                    read.frames += 1;
                    if frame.kind == wire::FRAME_HEARTBEAT {
                        continue;
                    }
                    let arrived = assembler.push(frame).and_then(|a| a.map(decode).transpose());
                    match arrived {
                        Ok(Some(m)) => read.methods.push(m),
                        Ok(None) => {}
                        Err(v) => {
                            read.violation = Some((v.code, v.text));
                            return read;
                        }
                    }
                }
                Err(v) => {
                    read.violation = Some((v.code, v.text));
                    return read;
                }
            }
        }
    }
    read
}

/// Decodes an arrival as the owners do, every table entry included.
fn decode(a: Arrival) -> Result<((u16, u16), Option<usize>), wire::Violation> {
    let m = a.method.method()?;
    let mut tables = Vec::new();
    if let wire::Method::ConnectionStart {
        server_properties, ..
    } = m
    {
        tables.push(server_properties);
    }
    let mut size = None;
    if let Some((header, body)) = &a.content {
        let (declared, p) = Properties::decode(&header.payload)?;
        assert_eq!(
            declared,
            body.len() as u64,
            "assembled a body of another size than declared"
        );
        tables.extend(p.headers);
        size = Some(body.len());
    }
    for t in tables {
        for (_, v) in t.entries() {
            if let wire::codec::FieldValue::Array(a) = v {
                a.values();
            }
        }
    }
    Ok((m.id(), size))
}
