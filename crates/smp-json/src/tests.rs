use crate::schema::{Message, MessageType, SchemaError};
use crate::*;
use nodedata::{CertificateDer, NodeData, NodeType, PeerData, PeerState, StompManifest, Subnet};
use serde_json::{json, Value};

const TS: &str = "2023-01-01T12:00:00+00:00";

/// A valid sample of every type.
pub(crate) fn sample(t: MessageType) -> Value {
    let mut v = json!({"type": t.as_str(), "debtor_id": 0x1234abcd00000001_i64, "creditor_id": 0x0000080000000001_i64});
    let coordinator = json!({"coordinator_type": "direct", "coordinator_id": 0x0000080000000001_i64, "coordinator_request_id": 7});
    let note = json!({"transfer_note_format": "", "transfer_note": "a note"});
    let own = match t {
        MessageType::ConfigureAccount => {
            json!({"negligible_amount": 0.5, "config_data": "", "config_flags": 0, "seqnum": 1, "ts": TS})
        }
        MessageType::RejectedConfig => {
            json!({"config_ts": TS, "config_seqnum": 1, "config_flags": 0, "config_data": "",
            "negligible_amount": 1.0, "rejection_code": "X", "ts": TS})
        }
        MessageType::PrepareTransfer => {
            json!({"min_locked_amount": 1000, "max_locked_amount": 2000, "recipient": "r",
            "final_interest_rate_ts": TS, "max_commit_delay": 100, "ts": TS})
        }
        MessageType::FinalizeTransfer => json!({"transfer_id": 5, "committed_amount": 10, "ts": TS}),
        MessageType::RejectedTransfer => json!({"status_code": "FAIL", "total_locked_amount": 0, "ts": TS}),
        MessageType::PreparedTransfer => {
            json!({"transfer_id": 5, "locked_amount": 10, "recipient": "r", "prepared_at": TS,
            "demurrage_rate": -50.0, "deadline": TS, "final_interest_rate_ts": TS, "ts": TS})
        }
        MessageType::FinalizedTransfer => {
            json!({"transfer_id": 5, "committed_amount": 10, "status_code": "OK",
            "total_locked_amount": 0, "prepared_at": TS, "ts": TS})
        }
        MessageType::AccountUpdate => {
            json!({"creation_date": "2020-01-01", "last_change_ts": TS, "last_change_seqnum": 1,
            "principal": 100, "interest": 1.5, "interest_rate": 2.0, "last_interest_rate_change_ts": TS,
            "last_config_ts": TS, "last_config_seqnum": 1, "negligible_amount": 0.0, "config_flags": 0,
            "config_data": "", "account_id": "acc", "debtor_info_iri": "https://example.com/", "debtor_info_content_type": "text/plain",
            "debtor_info_sha256": "", "last_transfer_number": 3, "last_transfer_committed_at": TS, "demurrage_rate": 0.0,
            "commit_period": 100, "transfer_note_max_bytes": 500, "ts": TS, "ttl": 10000})
        }
        MessageType::AccountPurge => json!({"creation_date": "2020-01-01", "ts": TS}),
        MessageType::AccountTransfer => {
            json!({"coordinator_type": "direct", "creation_date": "2020-01-01", "transfer_number": 2,
            "sender": "s", "recipient": "r", "acquired_amount": -5, "committed_at": TS, "principal": 100, "ts": TS,
            "previous_transfer_number": 1})
        }
    };
    let obj = v.as_object_mut().unwrap();
    if matches!(
        t,
        MessageType::PrepareTransfer
            | MessageType::FinalizeTransfer
            | MessageType::RejectedTransfer
            | MessageType::PreparedTransfer
            | MessageType::FinalizedTransfer
    ) {
        obj.extend(coordinator.as_object().unwrap().clone());
    }
    if matches!(t, MessageType::FinalizeTransfer | MessageType::AccountTransfer) {
        obj.extend(note.as_object().unwrap().clone());
    }
    obj.extend(own.as_object().unwrap().clone());
    v
}

fn parse(v: &Value) -> Result<Message, SchemaError> {
    let t = MessageType::parse(v["type"].as_str().unwrap()).unwrap();
    Message::parse(t, &serde_json::to_vec(v).unwrap())
}

#[test]
fn every_sample_passes_and_round_trips() {
    for t in MessageType::ALL {
        let mut v = sample(t);
        v["unknown_field"] = json!("dropped");
        let m = parse(&v).unwrap_or_else(|e| panic!("{t:?}: {e}"));
        assert!(!m.fields.contains_key("unknown_field"));
        let again = Message::parse(t, &m.to_json()).unwrap();
        assert_eq!(again, m);
        v.as_object_mut().unwrap().remove("unknown_field");
        assert_eq!(serde_json::from_slice::<Value>(&m.to_json()).unwrap(), v, "{t:?}");
    }
}

#[test]
fn every_field_is_required() {
    for t in MessageType::ALL {
        let v = sample(t);
        for name in v.as_object().unwrap().keys() {
            let mut w = v.clone();
            w.as_object_mut().unwrap().remove(name);
            assert!(
                Message::parse(t, &serde_json::to_vec(&w).unwrap()).is_err(),
                "{t:?} without {name}"
            );
        }
    }
}

/// Values at a field's limit (must pass) and one past it (must fail),
/// derived from the field's kind.
fn boundary_cases(t: MessageType, name: &str) -> (Vec<Value>, Vec<Value>) {
    use crate::schema::test_support::{kind_of, KindInfo};
    match kind_of(t, name) {
        KindInfo::Int(min, max) => {
            let mut fail = vec![json!(1.0), json!("1"), json!(null)];
            if min > i64::MIN {
                fail.push(json!(min - 1));
            } else {
                fail.push(json!(-9223372036854775809.0));
            }
            if max < i64::MAX {
                fail.push(json!(max + 1));
            } else {
                fail.push(json!(9223372036854775808_u64));
            }
            (vec![json!(min), json!(max)], fail)
        }
        KindInfo::NonZero => (
            vec![json!(i64::MIN), json!(i64::MAX), json!(1)],
            vec![json!(0), json!(1.5)],
        ),
        KindInfo::Float(min, max) => {
            let mut pass = vec![json!(0.0f64.clamp(min, max))];
            let mut fail = vec![json!("1.0"), json!(true)];
            if min.is_finite() {
                pass.push(json!(min));
                fail.push(json!(min - 0.001));
            }
            if max.is_finite() {
                pass.push(json!(max));
                fail.push(json!(max + 0.001));
            }
            // Integers are numbers too.
            pass.push(json!(max.min(1.0).max(min) as i64));
            (pass, fail)
        }
        KindInfo::Str { min, max, ascii } => {
            let mut pass = vec![json!("a".repeat(max))];
            let mut fail = vec![json!("a".repeat(max + 1)), json!(1)];
            if ascii {
                fail.push(json!("é"));
            } else {
                // Characters, not bytes.
                pass.push(json!("é".repeat(max)));
                fail.push(json!("é".repeat(max + 1)));
            }
            if min > 0 {
                fail.push(json!(""));
            } else {
                pass.push(json!(""));
            }
            (pass, fail)
        }
        KindInfo::Bytes(max) => (
            vec![json!("a".repeat(max)), json!("é".repeat(max / 2)), json!("")],
            vec![
                json!("a".repeat(max + 1)),
                json!(format!("{}a", "é".repeat(max / 2))),
                json!(0),
            ],
        ),
        KindInfo::Status { not_ok } => {
            let mut pass = vec![json!("A".repeat(30)), json!("")];
            let mut fail = vec![json!("A".repeat(31)), json!("É")];
            if not_ok {
                fail.push(json!("OK"));
            } else {
                pass.push(json!("OK"));
            }
            (pass, fail)
        }
        KindInfo::Timestamp => (
            vec![
                json!("9999-12-31T23:59:59.999999+00:00"),
                json!("2023-01-01T00:00:00Z"),
                json!("0001-01-01T00:00:00-23:59"),
            ],
            vec![
                json!("2023-01-01T12:00:00"),
                json!("2023-02-30T12:00:00Z"),
                json!(1672574400),
                json!(""),
            ],
        ),
        KindInfo::Date => (
            vec![json!("2020-02-29"), json!("9999-12-31")],
            vec![
                json!("2021-02-29"),
                json!("2020-01-01T00:00:00Z"),
                json!(20200101),
            ],
        ),
        KindInfo::NoteFormat => (
            vec![json!("aZ09.-xy"), json!("")],
            vec![json!("aZ09.-xyz"), json!("a_b"), json!("é")],
        ),
        KindInfo::Sha256 => (
            vec![json!("A".repeat(64)), json!("0f".repeat(32)), json!("")],
            vec![
                json!("a".repeat(63)),
                json!(format!("A{}", "a".repeat(63))),
                json!("g".repeat(64)),
            ],
        ),
    }
}

#[test]
fn every_field_rule_at_and_past_its_limit() {
    let mut checked = 0;
    for t in MessageType::ALL {
        let v = sample(t);
        for name in v.as_object().unwrap().keys() {
            if name == "type" {
                continue;
            }
            let (pass, fail) = boundary_cases(t, name);
            for p in pass {
                let mut w = v.clone();
                w[name.as_str()] = p.clone();
                match parse(&w) {
                    Ok(m) if crate::schema::test_support::is_timestamp(t, name) => {
                        assert!(m.fields[name.as_str()].is_string());
                    }
                    Ok(m) if m.fields[name.as_str()].is_f64() => {
                        assert_eq!(m.fields[name.as_str()].as_f64(), p.as_f64(), "{t:?}.{name}")
                    }
                    Ok(m) => assert_eq!(m.fields[name.as_str()], p, "{t:?}.{name}"),
                    // A cross-field rule may refuse an extreme value; the
                    // field itself passed.
                    Err(SchemaError::Rule(_)) => {}
                    Err(e) => panic!("{t:?}.{name} = {p}: {e}"),
                }
                checked += 1;
            }
            for f in fail {
                let mut w = v.clone();
                w[name.as_str()] = f.clone();
                assert_eq!(
                    parse(&w).err(),
                    Some(SchemaError::Invalid(crate::schema::test_support::static_name(
                        t, name
                    ))),
                    "{t:?}.{name} = {f}"
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 400, "{checked}");
}

#[test]
fn type_field_must_match() {
    let mut v = sample(MessageType::AccountPurge);
    v["type"] = json!("AccountUpdate");
    assert_eq!(
        Message::parse(MessageType::AccountPurge, &serde_json::to_vec(&v).unwrap()),
        Err(SchemaError::TypeMismatch)
    );
    assert!(matches!(
        Message::parse(MessageType::AccountPurge, b"\xff"),
        Err(SchemaError::Json(_))
    ));
    assert_eq!(
        Message::parse(MessageType::AccountPurge, b"[1]"),
        Err(SchemaError::NotObject)
    );
}

#[test]
fn the_body_is_written_with_sorted_keys_as_a_json_map_would_be() {
    for t in MessageType::ALL {
        let m = parse(&sample(t)).unwrap();
        // What serde_json writes for the same fields in a map (sorted keys).
        let map: serde_json::Map<String, Value> =
            m.fields.iter().map(|(n, v)| (n.to_string(), v.clone())).collect();
        assert_eq!(m.to_json(), serde_json::to_vec(&map).unwrap(), "{t:?}");
    }
}

#[test]
fn keys_are_read_as_json_reads_them() {
    let t = MessageType::AccountPurge;
    let text = serde_json::to_string(&sample(t)).unwrap();
    // An escaped key is the same key.
    let escaped = text.replacen("\"debtor_id\"", "\"debtor\\u005fid\"", 1);
    assert_ne!(escaped, text);
    assert_eq!(Message::parse(t, escaped.as_bytes()), parse(&sample(t)));
    // A repeated key keeps its last value.
    let repeated = text.replacen('{', "{\"creditor_id\":\"not a number\",", 1);
    assert_eq!(Message::parse(t, repeated.as_bytes()), parse(&sample(t)));
    let repeated = text.replacen('}', ",\"creditor_id\":\"not a number\"}", 1);
    assert_eq!(
        Message::parse(t, repeated.as_bytes()),
        Err(SchemaError::Invalid("creditor_id"))
    );
    // An unknown field is skipped, but must still be valid JSON and UTF-8.
    let with = |extra: &[u8]| {
        let mut b = text.as_bytes()[..text.len() - 1].to_vec();
        b.extend_from_slice(extra);
        Message::parse(t, &b)
    };
    assert!(with(b",\"x\":[1,{\"y\":null}]}").is_ok());
    assert!(matches!(with(b",\"x\":\"\xff\"}"), Err(SchemaError::Json(_))));
    assert!(matches!(with(b",\"x\":[1,}"), Err(SchemaError::Json(_))));
    assert!(matches!(with(b"} trailing"), Err(SchemaError::Json(_))));
    assert!(matches!(Message::parse(t, b""), Err(SchemaError::Json(_))));
    assert_eq!(Message::parse(t, b" \"text\" "), Err(SchemaError::NotObject));
    assert_eq!(Message::parse(t, b"{}"), Err(SchemaError::Missing("type")));
    let untyped = text.replacen("\"type\"", "\"kind\"", 1);
    assert_eq!(
        Message::parse(t, untyped.as_bytes()),
        Err(SchemaError::Missing("type"))
    );
}

#[test]
fn cross_field_rules() {
    let rule = |v: Value| matches!(parse(&v), Err(SchemaError::Rule(_)));
    let mut v = sample(MessageType::PrepareTransfer);
    v["min_locked_amount"] = json!(2001);
    assert!(rule(v.clone()));
    v["min_locked_amount"] = json!(2000);
    assert!(parse(&v).is_ok(), "min = max is fine");

    let mut v = sample(MessageType::PrepareTransfer);
    v["coordinator_id"] = json!(1);
    assert!(rule(v.clone()), "direct needs coordinator_id = creditor_id");
    v["coordinator_type"] = json!("agent");
    assert!(parse(&v).is_ok());
    v["coordinator_type"] = json!("issuing");
    assert!(rule(v.clone()));
    v["coordinator_id"] = v["debtor_id"].clone();
    assert!(rule(v.clone()), "issuing needs creditor_id = 0");
    v["creditor_id"] = json!(0);
    assert!(parse(&v).is_ok());

    let mut v = sample(MessageType::FinalizedTransfer);
    v["status_code"] = json!("TIMEOUT");
    assert!(rule(v.clone()));
    v["committed_amount"] = json!(0);
    assert!(parse(&v).is_ok());

    let mut v = sample(MessageType::AccountTransfer);
    v["previous_transfer_number"] = json!(2);
    assert!(rule(v.clone()));
    v["transfer_number"] = json!(3);
    assert!(parse(&v).is_ok());
}

#[test]
fn floats_are_written_as_floats() {
    let mut v = sample(MessageType::ConfigureAccount);
    v["negligible_amount"] = json!(0);
    let m = parse(&v).unwrap();
    assert!(String::from_utf8(m.to_json())
        .unwrap()
        .contains("\"negligible_amount\":0.0"));
}

#[test]
fn timestamps_keep_their_offset() {
    let mut v = sample(MessageType::AccountPurge);
    v["ts"] = json!("2023-06-01T10:00:00.25-03:30");
    let m = parse(&v).unwrap();
    assert_eq!(m.fields["ts"], json!("2023-06-01T10:00:00.250000-03:30"));
    v["ts"] = json!("2023-06-01T10:00:00Z");
    assert_eq!(
        parse(&v).unwrap().fields["ts"],
        json!("2023-06-01T10:00:00+00:00")
    );
}

#[test]
fn routing_key_vectors() {
    assert_eq!(
        routing_key(&[123]),
        "1.1.1.1.1.1.0.0.0.0.0.1.0.0.0.0.0.1.1.0.0.0.1.1"
    );
    assert_eq!(
        routing_key(&[-123]),
        "1.1.0.0.0.0.1.1.1.1.1.1.1.1.1.0.1.0.1.0.1.1.1.1"
    );
    assert_eq!(
        routing_key(&[123, 456]),
        "0.0.0.0.1.0.0.0.0.1.0.0.0.1.0.0.0.0.1.1.0.1.0.0"
    );
}

// --- the shared test network, as node data ---

fn manifest(dest: &str) -> StompManifest {
    nodedata::parse_manifest(
        &format!("servers = [\"127.0.0.1:1\"]\nhost = \"/\"\ndestination = \"{dest}\""),
        "x",
    )
    .unwrap()
}

fn sub(s: &str) -> Subnet {
    Subnet::parse(s).unwrap()
}

const CA_ID: &str = "5921983fe0e6eb987aeedca54ad3c708";
const DA_ID: &str = "060791aeca7637fa3357dfc0299fb4c5";

fn node(t: NodeType, id: &str, creditors: Subnet, debtors: Subnet) -> NodeData {
    NodeData {
        node_type: t,
        node_id: id.into(),
        root_cert: CertificateDer::from(vec![]),
        creditors_subnet: creditors,
        debtors_subnet: debtors,
    }
}

fn peer(t: NodeType, id: &str, creditors: Subnet, debtors: Subnet) -> PeerData {
    PeerData {
        node_type: t,
        node_id: id.into(),
        servers_manifest: manifest(&t.stomp_destination()),
        root_cert: CertificateDer::from(vec![]),
        sub_cert: CertificateDer::from(vec![]),
        creditors_subnet: creditors,
        debtors_subnet: debtors,
        state: PeerState::Active,
    }
}

/// AA 1234abcd as it sees its CA peer, and the CA as it sees the AA.
fn aa_and_ca() -> (NodeData, PeerData, NodeData, PeerData) {
    (
        node(NodeType::AA, "1234abcd", Subnet::UNIVERSAL, sub("1234abcd")),
        peer(NodeType::CA, CA_ID, sub("000001"), sub("1234abcd")),
        node(NodeType::CA, CA_ID, sub("000008"), Subnet::UNIVERSAL),
        peer(NodeType::AA, "1234abcd", sub("000001"), sub("1234abcd")),
    )
}

fn aa_and_da() -> (NodeData, PeerData, NodeData, PeerData) {
    (
        node(NodeType::AA, "1234abcd", Subnet::UNIVERSAL, sub("1234abcd")),
        peer(NodeType::DA, DA_ID, Subnet::ZERO, sub("1234abcd00")),
        node(NodeType::DA, DA_ID, Subnet::ZERO, sub("1234abcd00")),
        peer(NodeType::AA, "1234abcd", Subnet::ZERO, sub("1234abcd00")),
    )
}

fn body(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap()
}

const NOW: i64 = 1_700_000_000_000_000;

#[test]
fn spec_example_ca_to_aa() {
    let (aa, ca_peer, ca, aa_peer) = aa_and_ca();
    let msg = sample(MessageType::PrepareTransfer);
    // The CA's client masquerades the creditor and coordinator.
    let sent = client_process(&ca, &aa_peer, "PrepareTransfer", "application/json", &body(&msg)).unwrap();
    assert_eq!(sent.creditor_id, 0x0000010000000001);
    assert_eq!(sent.coordinator_id, Some(0x0000010000000001));
    // The AA's server publishes it.
    let p = server_process(
        &aa,
        &ca_peer,
        "PrepareTransfer",
        "application/json",
        &sent.to_json(),
        NOW,
    )
    .unwrap();
    let mut expected = msg.clone();
    expected["creditor_id"] = json!(0x0000010000000001_i64);
    expected["coordinator_id"] = json!(0x0000010000000001_i64);
    assert_eq!(serde_json::from_slice::<Value>(&p.body).unwrap(), expected);
    assert_eq!(
        p.headers,
        vec![
            ("message-type", HeaderValue::Str("PrepareTransfer".into())),
            ("debtor-id", HeaderValue::Int(0x1234abcd00000001)),
            ("creditor-id", HeaderValue::Int(0x0000010000000001)),
            ("coordinator-id", HeaderValue::Int(0x0000010000000001)),
            ("coordinator-type", HeaderValue::Str("direct".into())),
        ]
    );
    assert_eq!(
        p.routing_key,
        routing_key(&[0x1234abcd00000001, 0x0000010000000001])
    );
}

#[test]
fn aa_to_ca_unmasquerades_and_sets_trade_headers() {
    let (aa, ca_peer, ca, aa_peer) = aa_and_ca();
    // A regular account (creditor_id above the trade range).
    let mut msg = sample(MessageType::PreparedTransfer);
    msg["creditor_id"] = json!(0x0000010100000001_i64);
    msg["coordinator_id"] = json!(0x0000010100000001_i64);
    let sent = client_process(&aa, &ca_peer, "PreparedTransfer", "application/json", &body(&msg)).unwrap();
    let p = server_process(
        &ca,
        &aa_peer,
        "PreparedTransfer",
        "application/json",
        &sent.to_json(),
        NOW,
    )
    .unwrap();
    let v: Value = serde_json::from_slice(&p.body).unwrap();
    assert_eq!(v["creditor_id"], json!(0x0000080100000001_i64));
    assert_eq!(v["coordinator_id"], json!(0x0000080100000001_i64));
    assert!(p.headers.contains(&("ca-creditors", HeaderValue::Bool(true))));
    assert!(p.headers.contains(&("ca-trade", HeaderValue::Bool(false))));
    assert_eq!(p.routing_key, routing_key(&[0x0000080100000001]));

    // An agent transfer: routed by coordinator, trade only.
    msg["coordinator_type"] = json!("agent");
    msg["coordinator_id"] = json!(0x0000010000000002_i64);
    let p = server_process(
        &ca,
        &aa_peer,
        "PreparedTransfer",
        "application/json",
        &body(&msg),
        NOW,
    )
    .unwrap();
    assert_eq!(p.routing_key, routing_key(&[0x0000080000000002]));
    assert!(p.headers.contains(&("ca-creditors", HeaderValue::Bool(false))));
    assert!(p.headers.contains(&("ca-trade", HeaderValue::Bool(true))));
    assert!(p
        .headers
        .contains(&("coordinator-type", HeaderValue::Str("agent".into()))));

    // A trade-transfer notification to a regular account: both headers.
    let mut at = sample(MessageType::AccountTransfer);
    at["creditor_id"] = json!(0x0000010100000001_i64);
    at["coordinator_type"] = json!("agent");
    let p = server_process(
        &ca,
        &aa_peer,
        "AccountTransfer",
        "application/json",
        &body(&at),
        NOW,
    )
    .unwrap();
    assert!(p.headers.contains(&("ca-creditors", HeaderValue::Bool(true))));
    assert!(p.headers.contains(&("ca-trade", HeaderValue::Bool(true))));
    assert!(!p.headers.iter().any(|(n, _)| *n == "coordinator-id"));
}

#[test]
fn da_and_aa_flows() {
    let (aa, da_peer, da, aa_peer) = aa_and_da();
    let mut msg = sample(MessageType::PrepareTransfer);
    msg["coordinator_type"] = json!("issuing");
    msg["creditor_id"] = json!(0);
    msg["coordinator_id"] = msg["debtor_id"].clone();
    let sent = client_process(&da, &aa_peer, "PrepareTransfer", "application/json", &body(&msg)).unwrap();
    let p = server_process(
        &aa,
        &da_peer,
        "PrepareTransfer",
        "application/json",
        &sent.to_json(),
        NOW,
    )
    .unwrap();
    assert_eq!(p.routing_key, routing_key(&[0x1234abcd00000001, 0]));
    assert_eq!(serde_json::from_slice::<Value>(&p.body).unwrap(), msg);

    let mut out = sample(MessageType::AccountPurge);
    out["creditor_id"] = json!(0);
    let sent = client_process(&aa, &da_peer, "AccountPurge", "application/json", &body(&out)).unwrap();
    let p = server_process(
        &da,
        &aa_peer,
        "AccountPurge",
        "application/json",
        &sent.to_json(),
        NOW,
    )
    .unwrap();
    assert_eq!(p.routing_key, routing_key(&[0x1234abcd00000001]));
}

fn server_err(node: &NodeData, peer: &PeerData, t: &str, ct: &str, v: &Value) -> String {
    server_process(node, peer, t, ct, &body(v), NOW)
        .unwrap_err()
        .to_string()
}

#[test]
fn every_server_error_text() {
    let (aa, ca_peer, ca, aa_peer) = aa_and_ca();
    let (_, da_peer, _, _) = aa_and_da();
    let good = sample(MessageType::PrepareTransfer);
    let mut masq = good.clone();
    masq["creditor_id"] = json!(0x0000010000000001_i64);
    masq["coordinator_id"] = json!(0x0000010000000001_i64);

    assert_eq!(
        server_err(&aa, &ca_peer, "PrepareTransfer", "text/plain", &masq),
        "Unsupported content type: text/plain."
    );
    assert_eq!(
        server_err(&aa, &ca_peer, "Foo", "application/json", &masq),
        "Invalid message type: Foo."
    );
    // An AA accepts only in types; a CA only out types.
    assert_eq!(
        server_err(&aa, &ca_peer, "AccountPurge", "application/json", &masq),
        "Invalid message type: AccountPurge."
    );
    assert_eq!(
        server_err(&ca, &aa_peer, "PrepareTransfer", "application/json", &masq),
        "Invalid message type: PrepareTransfer."
    );
    let mut bad = masq.clone();
    bad["recipient"] = json!(5);
    assert_eq!(
        server_err(&aa, &ca_peer, "PrepareTransfer", "application/json", &bad),
        "Invalid PrepareTransfer message."
    );
    assert_eq!(
        server_process(&aa, &ca_peer, "PrepareTransfer", "application/json", b"{", NOW)
            .unwrap_err()
            .to_string(),
        "Invalid PrepareTransfer message."
    );

    let mut future = masq.clone();
    future["ts"] = json!(Timestamp::from_unix_micros(NOW + 7300 * 1_000_000).to_iso());
    assert_eq!(
        server_err(&aa, &ca_peer, "PrepareTransfer", "application/json", &future),
        "The message timestamp is 7300 seconds in the future."
    );
    future["ts"] = json!(Timestamp::from_unix_micros(NOW + 7200 * 1_000_000).to_iso());
    assert!(server_process(
        &aa,
        &ca_peer,
        "PrepareTransfer",
        "application/json",
        &body(&future),
        NOW
    )
    .is_ok());

    // The CA peer's creditors subnet is 000001: 000008... is outside.
    assert_eq!(
        server_err(&aa, &ca_peer, "PrepareTransfer", "application/json", &good),
        "Invalid creditor ID: 0x0000080000000001."
    );
    let mut d = masq.clone();
    d["debtor_id"] = json!(-2);
    assert_eq!(
        server_err(&aa, &ca_peer, "PrepareTransfer", "application/json", &d),
        "Invalid debtor ID: 0xfffffffffffffffe."
    );

    let mut ct = masq.clone();
    ct["coordinator_type"] = json!("issuing");
    ct["coordinator_id"] = ct["debtor_id"].clone();
    ct["creditor_id"] = json!(0);
    // Creditor 0 is not in the CA's subnet: use a DA-style check on the CA
    // with an in-subnet creditor and a non-direct, non-agent type instead.
    let mut other = masq.clone();
    other["coordinator_type"] = json!("other");
    assert_eq!(
        server_err(&aa, &ca_peer, "PrepareTransfer", "application/json", &other),
        "Invalid coordinator type: other."
    );
    let mut for_da = masq.clone();
    for_da["creditor_id"] = json!(0);
    for_da["coordinator_type"] = json!("agent");
    for_da["coordinator_id"] = json!(0);
    assert_eq!(
        server_err(&aa, &da_peer, "PrepareTransfer", "application/json", &for_da),
        "Invalid coordinator type: agent."
    );

    let mut agent = masq.clone();
    agent["coordinator_type"] = json!("agent");
    agent["coordinator_id"] = json!(0x0000020000000001_i64);
    assert_eq!(
        server_err(&aa, &ca_peer, "PrepareTransfer", "application/json", &agent),
        "Invalid coordinator ID."
    );
    let mut fin = sample(MessageType::FinalizeTransfer);
    fin["creditor_id"] = json!(0x0000010000000001_i64);
    fin["coordinator_id"] = json!(0x0000010000000002_i64);
    assert_eq!(
        server_err(&aa, &ca_peer, "FinalizeTransfer", "application/json", &fin),
        "Invalid coordinator ID."
    );
}

#[test]
fn every_client_error_text() {
    let (aa, ca_peer, ca, aa_peer) = aa_and_ca();
    let msg = sample(MessageType::PrepareTransfer);
    let err = |n: &NodeData, p: &PeerData, t: &str, v: &Value| {
        client_process(n, p, t, "application/json", &body(v))
            .unwrap_err()
            .to_string()
    };
    // A CA only sends in types; an AA only out types.
    assert_eq!(
        err(&ca, &aa_peer, "AccountPurge", &sample(MessageType::AccountPurge)),
        "Invalid message type: AccountPurge."
    );
    assert_eq!(
        err(&aa, &ca_peer, "PrepareTransfer", &msg),
        "Invalid message type: PrepareTransfer."
    );
    let mut outside = msg.clone();
    outside["creditor_id"] = json!(0x0000090000000001_i64);
    outside["coordinator_id"] = json!(0x0000090000000001_i64);
    assert_eq!(
        err(&ca, &aa_peer, "PrepareTransfer", &outside),
        "Invalid creditor ID: 0x0000090000000001."
    );
    let mut agent = msg.clone();
    agent["coordinator_type"] = json!("agent");
    agent["coordinator_id"] = json!(0x0000090000000001_i64);
    assert_eq!(
        err(&ca, &aa_peer, "PrepareTransfer", &agent),
        "Invalid coordinator ID: 0x0000090000000001."
    );
    let mut debtor = msg.clone();
    debtor["debtor_id"] = json!(1);
    assert_eq!(
        err(&ca, &aa_peer, "PrepareTransfer", &debtor),
        "Invalid debtor ID: 0x0000000000000001."
    );
    assert_eq!(
        client_process(&ca, &aa_peer, "PrepareTransfer", "text/plain", b"{}")
            .unwrap_err()
            .to_string(),
        "Unsupported content type: text/plain."
    );
}

#[test]
fn drainer_replies_pass_validation() {
    let (aa, ca_peer, ca, aa_peer) = aa_and_ca();
    let now = Timestamp::parse("2023-11-14T22:13:20Z").unwrap();

    // CA drains a ConfigureAccount: the RejectedConfig comes back with the
    // original creditor ID.
    let ca_msg = sample(MessageType::ConfigureAccount);
    let sent = client_process(
        &ca,
        &aa_peer,
        "ConfigureAccount",
        "application/json",
        &body(&ca_msg),
    )
    .unwrap();
    let reply = drainer_reply(&sent, now).unwrap();
    assert_eq!(reply.msg_type, MessageType::RejectedConfig);
    let p = publication_from(&ca, &aa_peer, reply, NOW).unwrap();
    let v: Value = serde_json::from_slice(&p.body).unwrap();
    assert_eq!(v["creditor_id"], ca_msg["creditor_id"]);
    assert_eq!(v["config_ts"], json!(TS));
    assert_eq!(v["config_seqnum"], ca_msg["seqnum"]);
    assert_eq!(v["negligible_amount"], ca_msg["negligible_amount"]);
    assert_eq!(v["rejection_code"], json!("NO_CONNECTION_TO_DEBTOR"));
    assert_eq!(v["ts"], json!("2023-11-14T22:13:20+00:00"));

    // AA drains a PreparedTransfer and an AccountUpdate.
    let mut pt = sample(MessageType::PreparedTransfer);
    pt["creditor_id"] = json!(0x0000010000000001_i64);
    pt["coordinator_type"] = json!("agent");
    pt["coordinator_id"] = json!(0x0000010000000005_i64);
    let sent = client_process(&aa, &ca_peer, "PreparedTransfer", "application/json", &body(&pt)).unwrap();
    let reply = drainer_reply(&sent, now).unwrap();
    assert_eq!(reply.msg_type, MessageType::FinalizeTransfer);
    let p = publication_from(&aa, &ca_peer, reply, NOW).unwrap();
    let v: Value = serde_json::from_slice(&p.body).unwrap();
    assert_eq!(v["committed_amount"], json!(0));
    for f in [
        "transfer_id",
        "coordinator_type",
        "coordinator_id",
        "coordinator_request_id",
        "debtor_id",
        "creditor_id",
    ] {
        assert_eq!(v[f], pt[f], "{f}");
    }
    let mut au = sample(MessageType::AccountUpdate);
    au["creditor_id"] = json!(0x0000010000000001_i64);
    let sent = client_process(&aa, &ca_peer, "AccountUpdate", "application/json", &body(&au)).unwrap();
    let reply = drainer_reply(&sent, now).unwrap();
    assert_eq!(reply.msg_type, MessageType::ConfigureAccount);
    assert_eq!(reply.fields["negligible_amount"], json!(1e30));
    assert_eq!(reply.fields["config_flags"], json!(1));
    assert!(publication_from(&aa, &ca_peer, reply, NOW).is_ok());

    // Other types get no reply.
    let sent = client_process(
        &ca,
        &aa_peer,
        "PrepareTransfer",
        "application/json",
        &body(&sample(MessageType::PrepareTransfer)),
    )
    .unwrap();
    assert!(drainer_reply(&sent, now).is_none());
}

#[test]
fn garbage_never_panics() {
    let (aa, ca_peer, _, _) = aa_and_ca();
    let inputs: [&[u8]; 8] = [
        b"",
        b"null",
        b"{}",
        b"[]",
        b"{\"type\":1}",
        b"\"x\"",
        b"{\"type\":\"PrepareTransfer\",\"debtor_id\":1e400}",
        b"\x00\xff",
    ];
    for t in MessageType::ALL {
        for input in inputs {
            let _ = server_process(&aa, &ca_peer, t.as_str(), "application/json", input, NOW);
        }
    }
}

#[test]
fn a_type_is_accepted_only_in_its_direction() {
    use NodeType::*;
    assert_eq!(Direction::received_by(AA), Direction::ToAa);
    assert_eq!(Direction::sent_by(AA), Direction::FromAa);
    for t in [CA, DA] {
        assert_eq!(Direction::received_by(t), Direction::FromAa);
        assert_eq!(Direction::sent_by(t), Direction::ToAa);
    }
    let json = "application/json";
    // The content type and the direction are checked before the body.
    let wrong = parse_message("AccountUpdate", json, b"{}", Direction::ToAa);
    assert!(matches!(wrong, Err(ProcessError::InvalidType(t)) if t == "AccountUpdate"));
    let wrong = parse_message("PrepareTransfer", json, b"{}", Direction::FromAa);
    assert!(matches!(wrong, Err(ProcessError::InvalidType(_))));
    let right = parse_message("PrepareTransfer", json, b"{}", Direction::ToAa);
    assert!(
        matches!(right, Err(ProcessError::InvalidMessage(..))),
        "{right:?}"
    );
}
