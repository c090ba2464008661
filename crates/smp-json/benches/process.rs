//! Validates and transforms a PrepareTransfer on the server path (AA
//! receiving from a CA) and reports the time per message.
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use nodedata::{parse_manifest, CertificateDer, NodeData, NodeType, PeerData, PeerState, Subnet};
use smp_json::server_process;

fn bench(c: &mut Criterion) {
    let sub = |s: &str| Subnet::parse(s).unwrap();
    let node = NodeData {
        node_type: NodeType::AA,
        node_id: "1234abcd".into(),
        root_cert: CertificateDer::from(vec![]),
        creditors_subnet: Subnet::UNIVERSAL,
        debtors_subnet: sub("1234abcd"),
    };
    let peer = PeerData {
        node_type: NodeType::CA,
        node_id: "5921983fe0e6eb987aeedca54ad3c708".into(),
        servers_manifest: parse_manifest("servers=[\"127.0.0.1:1\"]\nhost=\"/\"\ndestination=\"/d\"", "x")
            .unwrap(),
        root_cert: CertificateDer::from(vec![]),
        sub_cert: CertificateDer::from(vec![]),
        creditors_subnet: sub("000001"),
        debtors_subnet: sub("1234abcd"),
        state: PeerState::Active,
    };
    let body = br#"{"type":"PrepareTransfer","debtor_id":1311862288428302337,"creditor_id":1099511627777,"coordinator_type":"direct","coordinator_id":1099511627777,"coordinator_request_id":1,"min_locked_amount":1000,"max_locked_amount":2000,"recipient":"5921983fe0e6eb987aeedca54ad3c708-0000080000000001","final_interest_rate_ts":"2023-01-01T12:00:00+00:00","max_commit_delay":86400,"ts":"2023-01-01T12:00:00.123456+00:00"}"#;
    let now = smp_json::now_micros();
    server_process(&node, &peer, "PrepareTransfer", "application/json", body, now).unwrap();
    c.bench_function("server_process PrepareTransfer", |b| {
        b.iter(|| {
            black_box(server_process(
                &node,
                &peer,
                "PrepareTransfer",
                "application/json",
                black_box(body),
                now,
            ))
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
