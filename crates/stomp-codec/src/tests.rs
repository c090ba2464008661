use super::*;
use rand::{Rng, SeedableRng};

fn decode_all(codec: &mut StompCodec, bytes: &[u8]) -> Result<Vec<StompItem>, CodecError> {
    let mut buf = BytesMut::from(bytes);
    let mut out = Vec::new();
    while let Some(item) = codec.decode(&mut buf)? {
        out.push(item);
    }
    Ok(out)
}

fn frames(items: &[StompItem]) -> Vec<&Frame> {
    items
        .iter()
        .filter_map(|i| match i {
            StompItem::Frame(f) => Some(f),
            StompItem::HeartBeat => None,
        })
        .collect()
}

fn send_frame() -> Frame {
    Frame::new("SEND")
        .header("destination", "/exchange/accounts_in")
        .header("type", "PrepareTransfer")
        .header("content-type", "application/json")
        .header("persistent", "true")
        .header("receipt", "42")
        .body(&br#"{"type":"PrepareTransfer","debtor_id":1}"#[..])
}

/// `send_frame()` as the decoder returns it (the encoder added the length).
fn decoded_send_frame() -> Frame {
    let f = send_frame();
    let n = f.body.len().to_string();
    f.header("content-length", n)
}

#[test]
fn decodes_a_simple_frame() {
    let items = decode_all(
        &mut StompCodec::default(),
        b"CONNECT\naccept-version:1.2\nhost:/\n\n\0",
    )
    .unwrap();
    assert_eq!(items.len(), 1);
    let f = frames(&items)[0];
    assert_eq!(f.command, "CONNECT");
    assert_eq!(f.get("accept-version"), Some("1.2"));
    assert_eq!(f.get("host"), Some("/"));
    assert!(f.body.is_empty());
}

#[test]
fn split_at_every_byte_boundary() {
    let wire = encode_to_bytes(&send_frame());
    let mut stream = Vec::new();
    stream.extend_from_slice(b"\n\r\n");
    stream.extend_from_slice(&wire);
    stream.extend_from_slice(b"\n");
    stream.extend_from_slice(&wire);
    for split in 0..=stream.len() {
        let mut codec = StompCodec::default();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for chunk in [&stream[..split], &stream[split..]] {
            buf.extend_from_slice(chunk);
            while let Some(item) = codec.decode(&mut buf).unwrap() {
                got.push(item);
            }
        }
        let fs = frames(&got);
        assert_eq!(fs.len(), 2, "split at {split}");
        assert_eq!(*fs[0], decoded_send_frame());
        assert_eq!(*fs[1], decoded_send_frame());
        assert!(buf.is_empty());
    }
}

#[test]
fn byte_by_byte_feeding() {
    let wire = encode_to_bytes(&send_frame());
    let mut codec = StompCodec::default();
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    for b in wire.iter() {
        buf.extend_from_slice(&[*b]);
        while let Some(item) = codec.decode(&mut buf).unwrap() {
            got.push(item);
        }
    }
    assert_eq!(got, vec![StompItem::Frame(decoded_send_frame())]);
}

#[test]
fn several_frames_in_one_read_and_heartbeats_around() {
    let mut stream = b"\n\n".to_vec();
    stream.extend_from_slice(b"ACK\nid:1\n\n\0");
    stream.extend_from_slice(b"\r\n\n");
    stream.extend_from_slice(b"NACK\nid:2\n\n\0");
    stream.extend_from_slice(b"\n");
    let items = decode_all(&mut StompCodec::default(), &stream).unwrap();
    let kinds: Vec<String> = items
        .iter()
        .map(|i| match i {
            StompItem::HeartBeat => "HB".to_string(),
            StompItem::Frame(f) => f.command.clone(),
        })
        .collect();
    assert_eq!(kinds, ["HB", "ACK", "HB", "NACK", "HB"]);
}

#[test]
fn heartbeat_only_stream_is_never_a_frame() {
    let items = decode_all(&mut StompCodec::default(), b"\n\r\n\n\n").unwrap();
    assert_eq!(items, vec![StompItem::HeartBeat]);
    // A lone CR waits for its LF.
    let mut codec = StompCodec::default();
    let mut buf = BytesMut::from(&b"\r"[..]);
    assert!(codec.decode(&mut buf).unwrap().is_none());
    buf.extend_from_slice(b"\n");
    assert_eq!(codec.decode(&mut buf).unwrap(), Some(StompItem::HeartBeat));
}

#[test]
fn crlf_line_ends() {
    let items = decode_all(
        &mut StompCodec::default(),
        b"SEND\r\ndestination:/a\r\nreceipt:1\r\n\r\nhello\0",
    )
    .unwrap();
    let f = frames(&items)[0];
    assert_eq!(f.command, "SEND");
    assert_eq!(f.get("destination"), Some("/a"));
    assert_eq!(f.get("receipt"), Some("1"));
    assert_eq!(&f.body[..], b"hello");
}

#[test]
fn every_escape_is_decoded_and_encoded() {
    let items = decode_all(
        &mut StompCodec::default(),
        b"MESSAGE\na\\cb:x\\ny\\rz\\\\w\\c\n\n\0",
    )
    .unwrap();
    let f = frames(&items)[0];
    assert_eq!(f.headers, vec![("a:b".to_string(), "x\ny\rz\\w:".to_string())]);
    let wire = encode_to_bytes(f);
    assert_eq!(&wire[..], &b"MESSAGE\na\\cb:x\\ny\\rz\\\\w\\c\n\n\0"[..]);
}

#[test]
fn invalid_escape_is_an_error() {
    for bad in [
        &b"SEND\na:\\t\n\n\0"[..],
        b"SEND\na:x\\\n\n\0",
        b"SEND\n\\x:1\n\n\0",
    ] {
        let err = decode_all(&mut StompCodec::default(), bad).unwrap_err();
        assert!(matches!(err, CodecError::InvalidEscape), "{err:?}");
    }
}

#[test]
fn repeated_headers_first_wins() {
    let items = decode_all(&mut StompCodec::default(), b"SEND\nfoo:1\nfoo:2\n\n\0").unwrap();
    let f = frames(&items)[0];
    assert_eq!(f.get("foo"), Some("1"));
    assert_eq!(f.headers.len(), 2);
}

#[test]
fn content_length_with_nul_in_body() {
    let items = decode_all(
        &mut StompCodec::default(),
        b"SEND\ncontent-length:5\n\na\0b\0c\0CONNECT\n\n\0",
    )
    .unwrap();
    let fs = frames(&items);
    assert_eq!(&fs[0].body[..], b"a\0b\0c");
    assert_eq!(fs[1].command, "CONNECT");
}

#[test]
fn content_length_not_followed_by_nul() {
    let err = decode_all(&mut StompCodec::default(), b"SEND\ncontent-length:2\n\nabc\0").unwrap_err();
    assert!(matches!(err, CodecError::MissingNul));
}

#[test]
fn bad_content_length() {
    for bad in [
        &b"SEND\ncontent-length:x\n\n\0"[..],
        b"SEND\ncontent-length:\n\n\0",
        b"SEND\ncontent-length:-1\n\n\0",
    ] {
        let err = decode_all(&mut StompCodec::default(), bad).unwrap_err();
        assert!(matches!(err, CodecError::InvalidContentLength), "{err:?}");
    }
}

#[test]
fn header_line_without_colon() {
    let err = decode_all(&mut StompCodec::default(), b"SEND\nfoo\n\n\0").unwrap_err();
    assert!(matches!(err, CodecError::InvalidHeaderLine));
}

#[test]
fn non_utf8_header() {
    let err = decode_all(&mut StompCodec::default(), b"SEND\nfoo:\xff\xfe\n\n\0").unwrap_err();
    assert!(matches!(err, CodecError::NonUtf8Header));
    let err = decode_all(&mut StompCodec::default(), b"SEND\nfoo:\\c\xff\n\n\0").unwrap_err();
    assert!(matches!(err, CodecError::NonUtf8Header));
}

#[test]
fn command_limits() {
    let ok = format!("{}\n\n\0", "A".repeat(50));
    let items = decode_all(&mut StompCodec::default(), ok.as_bytes()).unwrap();
    assert_eq!(frames(&items)[0].command.len(), 50);

    let too_long = format!("{}\n\n\0", "A".repeat(51));
    assert!(matches!(
        decode_all(&mut StompCodec::default(), too_long.as_bytes()).unwrap_err(),
        CodecError::InvalidCommand { .. }
    ));
    // A long command with no newline yet is refused without waiting.
    let mut codec = StompCodec::default();
    let mut buf = BytesMut::from("B".repeat(60).as_bytes());
    assert!(matches!(
        codec.decode(&mut buf).unwrap_err(),
        CodecError::InvalidCommand { .. }
    ));

    for bad in [&b"send\n\n\0"[..], b"SE ND\n\n\0", b"SEND1\n\n\0", b"\0"] {
        assert!(matches!(
            decode_all(&mut StompCodec::default(), bad).unwrap_err(),
            CodecError::InvalidCommand { .. }
        ));
    }
}

/// A head whose header section (header lines plus the blank line) is
/// exactly `n` octets.
fn head_with_headers_len(n: usize) -> Vec<u8> {
    // "x:" + value + "\n" + "\n" = n  =>  value = n - 4
    let mut v = b"SEND\nx:".to_vec();
    v.extend(std::iter::repeat_n(b'v', n - 4));
    v.extend_from_slice(b"\n\n\0");
    v
}

#[test]
fn headers_limit() {
    let items = decode_all(&mut StompCodec::default(), &head_with_headers_len(4096)).unwrap();
    assert_eq!(frames(&items)[0].get("x").unwrap().len(), 4092);
    let err = decode_all(&mut StompCodec::default(), &head_with_headers_len(4097)).unwrap_err();
    assert!(matches!(err, CodecError::HeadersTooLong { max: 4096 }));
    // Without an end in sight, the decoder refuses once past the limit
    // instead of buffering on.
    let mut endless = b"SEND\nx:".to_vec();
    endless.extend(std::iter::repeat_n(b'v', 10_000));
    let mut codec = StompCodec::default();
    let mut buf = BytesMut::from(&endless[..]);
    assert!(matches!(
        codec.decode(&mut buf).unwrap_err(),
        CodecError::HeadersTooLong { .. }
    ));
}

#[test]
fn body_limit_with_and_without_content_length() {
    let body = vec![b'a'; 8192];
    let ok = encode_to_bytes(&Frame::new("SEND").body(body.clone()));
    let items = decode_all(&mut StompCodec::default(), &ok).unwrap();
    assert_eq!(frames(&items)[0].body.len(), 8192);

    let mut no_len = b"SEND\n\n".to_vec();
    no_len.extend_from_slice(&body);
    no_len.push(0);
    let items = decode_all(&mut StompCodec::default(), &no_len).unwrap();
    assert_eq!(frames(&items)[0].body.len(), 8192);

    let too_big = encode_to_bytes(&Frame::new("SEND").body(vec![b'a'; 8193]));
    assert!(matches!(
        decode_all(&mut StompCodec::default(), &too_big).unwrap_err(),
        CodecError::BodyTooLong { max: 8192 }
    ));
    // content-length past the limit is refused from the head alone.
    let mut codec = StompCodec::default();
    let mut buf = BytesMut::from(&b"SEND\ncontent-length:8193\n\n"[..]);
    assert!(matches!(
        codec.decode(&mut buf).unwrap_err(),
        CodecError::BodyTooLong { .. }
    ));
    // Without content-length, a body past the limit is refused as soon as
    // the limit is passed, before any NUL arrives.
    let mut codec = StompCodec::default();
    let mut buf = BytesMut::from(&b"SEND\n\n"[..]);
    buf.extend_from_slice(&vec![b'a'; 8193]);
    assert!(matches!(
        codec.decode(&mut buf).unwrap_err(),
        CodecError::BodyTooLong { .. }
    ));
}

#[test]
fn custom_limits() {
    let mut codec = StompCodec::new(Limits {
        max_command_len: 4,
        max_headers_len: 10,
        max_body_len: 3,
    });
    assert!(decode_all(&mut codec, b"SEND\n\nabc\0").is_ok());
    let mut codec = StompCodec::new(Limits {
        max_command_len: 4,
        max_headers_len: 10,
        max_body_len: 3,
    });
    assert!(matches!(
        decode_all(&mut codec, b"SEND\n\nabcd\0").unwrap_err(),
        CodecError::BodyTooLong { max: 3 }
    ));
}

#[test]
fn encoder_adds_content_length_only_for_a_body() {
    let wire = encode_to_bytes(&Frame::new("RECEIPT").header("receipt-id", "7"));
    assert_eq!(&wire[..], b"RECEIPT\nreceipt-id:7\n\n\0");
    let wire = encode_to_bytes(&Frame::new("ERROR").header("message", "x").body(&b"ab"[..]));
    assert_eq!(&wire[..], b"ERROR\nmessage:x\ncontent-length:2\n\nab\0");
    // A stale content-length header is replaced by the true one.
    let wire = encode_to_bytes(&Frame::new("SEND").header("content-length", "99").body(&b"ab"[..]));
    assert_eq!(&wire[..], b"SEND\ncontent-length:2\n\nab\0");
}

#[test]
fn heartbeat_encodes_as_one_eol() {
    let mut codec = StompCodec::default();
    let mut buf = BytesMut::new();
    codec.encode(StompItem::HeartBeat, &mut buf).unwrap();
    assert_eq!(&buf[..], b"\n");
}

fn random_string(rng: &mut impl Rng, max: usize) -> String {
    let alphabet: Vec<char> = "ab:\\\r\n é€0-_/".chars().collect();
    let n = rng.gen_range(0..max);
    (0..n)
        .map(|_| alphabet[rng.gen_range(0..alphabet.len())])
        .collect()
}

#[test]
fn random_frames_round_trip() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5317);
    for _ in 0..2000 {
        let cmd_len = rng.gen_range(1..=50);
        let command: String = (0..cmd_len).map(|_| rng.gen_range(b'A'..=b'Z') as char).collect();
        let mut frame = Frame::new(command);
        for _ in 0..rng.gen_range(0..6) {
            let mut name = random_string(&mut rng, 12);
            if name == "content-length" {
                name.push('x');
            }
            frame = frame.header(name, random_string(&mut rng, 30));
        }
        let body: Vec<u8> = (0..rng.gen_range(0..300)).map(|_| rng.gen()).collect();
        frame = frame.body(body);
        let wire = encode_to_bytes(&frame);
        let items = decode_all(&mut StompCodec::default(), &wire).unwrap();
        let fs = frames(&items);
        assert_eq!(fs.len(), 1);
        let mut expected = frame.clone();
        if !expected.body.is_empty() {
            let n = expected.body.len().to_string();
            expected = expected.header("content-length", n);
        }
        assert_eq!(*fs[0], expected);
    }
}

#[test]
fn random_garbage_never_panics() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(99);
    for _ in 0..5000 {
        let len = rng.gen_range(0..200);
        let alphabet = b"SENDCONT\n\r:\\\0abc-length0123456789";
        let bytes: Vec<u8> = (0..len)
            .map(|_| alphabet[rng.gen_range(0..alphabet.len())])
            .collect();
        let _ = decode_all(&mut StompCodec::default(), &bytes);
    }
}
