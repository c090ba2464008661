//! Decodes a stream of typical SEND frames (five headers, a ~450-byte JSON
//! body) and reports throughput in bytes per second.
use bytes::BytesMut;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use stomp_codec::{encode_to_bytes, Frame, StompCodec};
use tokio_util::codec::Decoder;

fn typical_send(i: usize) -> Frame {
    let body = format!(
        concat!(
            r#"{{"type":"PrepareTransfer","creditor_id":{},"debtor_id":1311768467463790321,"#,
            r#""coordinator_type":"direct","coordinator_id":{},"coordinator_request_id":{},"#,
            r#""min_locked_amount":1000,"max_locked_amount":2000,"recipient":"5921983fe0e6eb987aeedca54ad3c708-0000080000000001","#,
            r#""final_interest_rate_ts":"2023-01-01T12:00:00+00:00","max_commit_delay":86400,"#,
            r#""ts":"2023-01-01T12:00:00.123456+00:00","padding":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}}"#
        ),
        i, i, i
    );
    Frame::new("SEND")
        .header("destination", "/exchange/accounts_in")
        .header("type", "PrepareTransfer")
        .header("content-type", "application/json")
        .header("persistent", "true")
        .header("receipt", i.to_string())
        .body(body)
}

fn bench_decode(c: &mut Criterion) {
    let mut stream = BytesMut::new();
    for i in 0..1000 {
        stream.extend_from_slice(&encode_to_bytes(&typical_send(i)));
    }
    let stream = stream.freeze();
    let mut group = c.benchmark_group("stomp-decode");
    group.throughput(Throughput::Bytes(stream.len() as u64));
    group.bench_function("1000 SEND frames", |b| {
        b.iter(|| {
            let mut codec = StompCodec::default();
            let mut buf = BytesMut::from(&stream[..]);
            let mut n = 0;
            while let Ok(Some(item)) = codec.decode(&mut buf) {
                black_box(&item);
                n += 1;
            }
            assert_eq!(n, 1000);
        })
    });
    group.finish();
}

criterion_group!(benches, bench_decode);
criterion_main!(benches);
