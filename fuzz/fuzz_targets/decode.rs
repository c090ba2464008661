//! Feeds arbitrary bytes to the STOMP decoder, in arbitrary chunks: it
//! must never panic, never hold more than the limits allow, and every
//! frame it returns must survive an encode/decode round trip.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use stomp_codec::{encode_to_bytes, Limits, StompCodec, StompItem};
use tokio_util::codec::Decoder;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the chunk size, so splits are explored too.
    let (chunk, input) = match data.split_first() {
        Some((c, rest)) => ((*c as usize % 64) + 1, rest),
        None => return,
    };
    let mut codec = StompCodec::default();
    let limits = codec.limits();
    let mut buf = BytesMut::new();
    for piece in input.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(StompItem::Frame(frame))) => {
                    assert!(frame.body.len() <= limits.max_body_len);
                    let wire = encode_to_bytes(&frame);
                    // Re-encoding may add a content-length header, so the
                    // round trip is checked without the tight limits.
                    let mut again = StompCodec::new(Limits {
                        max_command_len: limits.max_command_len,
                        max_headers_len: limits.max_headers_len * 2 + 64,
                        max_body_len: limits.max_body_len,
                    });
                    let mut wbuf = BytesMut::from(&wire[..]);
                    match again.decode(&mut wbuf) {
                        Ok(Some(StompItem::Frame(f))) => {
                            assert_eq!(f.command, frame.command);
                            assert_eq!(f.body, frame.body);
                        }
                        other => panic!("round trip failed: {other:?}"),
                    }
                }
                Ok(Some(StompItem::HeartBeat)) => {}
                Ok(None) => break,
                Err(_) => return,
            }
        }
        // Never more buffered than one frame's limits allow.
        assert!(buf.len() <= limits.max_command_len + 2 + limits.max_headers_len + limits.max_body_len + 64 + chunk);
    }
});
