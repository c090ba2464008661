//! The client against a scripted fake broker, for what a real RabbitMQ
//! will not do: a broker that never answers a call, that breaks the
//! protocol, that speaks another version, that refuses the handshake,
//! that offers a small frame_max, that stops a channel with
//! `channel.flow` or blocks the connection. The fake writes and reads its
//! frames with amq-protocol (the codec lapin is built on), not with ours.

use amq_protocol::frame::{gen_frame, parse_frame, AMQPContentHeader, AMQPFrame};
use amq_protocol::protocol::{basic, channel, confirm, connection, queue, AMQPClass, BasicProperties};
use amq_protocol::types::FieldTable;
use amqp_bridge::{
    check_queue, BridgeError, BrokerSettings, Consumer, HeaderValue, OutMessage, SharedConnection,
};
use std::future::Future;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The broker's side of one connection.
struct Peer {
    io: TcpStream,
    buf: Vec<u8>,
}

impl Peer {
    async fn send(&mut self, frame: AMQPFrame) {
        let bytes = cookie_factory::gen_simple(gen_frame(&frame), Vec::new()).unwrap();
        self.io.write_all(&bytes).await.unwrap();
    }

    async fn method(&mut self, channel: u16, class: AMQPClass) {
        self.send(AMQPFrame::Method(channel, class)).await;
    }

    /// The next frame but heartbeats; `None` when the client closed the
    /// socket, or sent nothing within `within`.
    async fn recv_within(&mut self, within: Duration) -> Option<AMQPFrame> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Ok((rest, frame)) = parse_frame(&self.buf[..]) {
                let used = self.buf.len() - rest.len();
                self.buf.drain(..used);
                if matches!(frame, AMQPFrame::Heartbeat(_)) {
                    continue;
                }
                return Some(frame);
            }
            self.buf.reserve(64 * 1024);
            match tokio::time::timeout_at(deadline, self.io.read_buf(&mut self.buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return None,
            }
        }
    }

    /// Whether the client shut its side of the socket within `within`
    /// (frames read meanwhile are dropped).
    async fn eof_within(&mut self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            self.buf.clear();
            match tokio::time::timeout_at(deadline, self.io.read_buf(&mut self.buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
                Err(_) => return false,
            }
        }
    }

    /// How the client closes: `channel.close` (answered), then
    /// `connection.close`; the socket must stay open until our
    /// `close-ok`, and be shut after it.
    async fn clean_close(&mut self) -> Vec<&'static str> {
        let mut seen = Vec::new();
        loop {
            match self.recv().await {
                AMQPFrame::Method(ch, AMQPClass::Channel(channel::AMQPMethod::Close(_))) => {
                    seen.push("channel.close");
                    self.method(
                        ch,
                        AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
                    )
                    .await;
                }
                AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Close(_))) => {
                    seen.push("connection.close");
                    break;
                }
                _ => {}
            }
        }
        if !self.eof_within(Duration::from_millis(500)).await {
            seen.push("open until close-ok");
        }
        let ok = AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {}));
        self.method(0, ok).await;
        if self.eof_within(Duration::from_secs(5)).await {
            seen.push("shut after close-ok");
        }
        seen
    }

    async fn recv(&mut self) -> AMQPFrame {
        self.recv_within(Duration::from_secs(10))
            .await
            .expect("a frame from the client")
    }

    /// The client's connection.close (answered with close-ok).
    async fn closed_with(&mut self) -> connection::Close {
        loop {
            match self.recv().await {
                AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Close(c))) => {
                    let ok = AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {}));
                    self.method(0, ok).await;
                    return c;
                }
                _ => continue,
            }
        }
    }

    /// The handshake as RabbitMQ does it, with `version` and `frame_max`;
    /// what the client sent instead of `start-ok`, if it did.
    async fn handshake_with(&mut self, version: (u8, u8), frame_max: u32) -> Result<(), Option<AMQPFrame>> {
        let mut header = [0u8; 8];
        self.io.read_exact(&mut header).await.unwrap();
        assert_eq!(&header, b"AMQP\x00\x00\x09\x01");
        let start = connection::Start {
            version_major: version.0,
            version_minor: version.1,
            server_properties: FieldTable::default(),
            mechanisms: "PLAIN AMQPLAIN".into(),
            locales: "en_US".into(),
        };
        self.method(0, AMQPClass::Connection(connection::AMQPMethod::Start(start)))
            .await;
        match self.recv_within(Duration::from_secs(5)).await {
            Some(AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::StartOk(_)))) => {}
            other => return Err(other),
        }
        let tune = connection::Tune {
            channel_max: 2047,
            frame_max,
            heartbeat: 0,
        };
        self.method(0, AMQPClass::Connection(connection::AMQPMethod::Tune(tune)))
            .await;
        assert!(matches!(
            self.recv().await,
            AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::TuneOk(_)))
        ));
        assert!(matches!(
            self.recv().await,
            AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Open(_)))
        ));
        Ok(())
    }

    async fn handshake(&mut self) {
        self.handshake_with((0, 9), 131_072).await.unwrap();
        self.method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::OpenOk(connection::OpenOk {})),
        )
        .await;
    }

    /// Answers channel.open (and confirm.select, for a publisher).
    async fn open_channel(&mut self) -> u16 {
        let AMQPFrame::Method(ch, AMQPClass::Channel(channel::AMQPMethod::Open(_))) = self.recv().await
        else {
            panic!("channel.open expected");
        };
        self.method(
            ch,
            AMQPClass::Channel(channel::AMQPMethod::OpenOk(channel::OpenOk {})),
        )
        .await;
        ch
    }

    async fn confirm_select(&mut self, ch: u16) {
        assert!(matches!(
            self.recv().await,
            AMQPFrame::Method(_, AMQPClass::Confirm(confirm::AMQPMethod::Select(_)))
        ));
        self.method(
            ch,
            AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(confirm::SelectOk {})),
        )
        .await;
    }

    /// Answers a consumer's set-up: a passive declare, qos and consume.
    async fn consumer_setup(&mut self) -> u16 {
        let ch = self.open_channel().await;
        let declare_ok = queue::DeclareOk {
            queue: "q".into(),
            message_count: 0,
            consumer_count: 0,
        };
        self.recv().await;
        self.method(ch, AMQPClass::Queue(queue::AMQPMethod::DeclareOk(declare_ok)))
            .await;
        self.recv().await;
        self.method(ch, AMQPClass::Basic(basic::AMQPMethod::QosOk(basic::QosOk {})))
            .await;
        self.recv().await;
        let ok = basic::ConsumeOk {
            consumer_tag: "ctag".into(),
        };
        self.method(ch, AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(ok)))
            .await;
        ch
    }

    async fn deliver(&mut self, ch: u16, tag: u64) {
        let d = basic::Deliver {
            consumer_tag: "ctag".into(),
            delivery_tag: tag,
            redelivered: false,
            exchange: "".into(),
            routing_key: "q".into(),
        };
        self.method(ch, AMQPClass::Basic(basic::AMQPMethod::Deliver(d)))
            .await;
    }

    async fn header(&mut self, ch: u16, size: u64) {
        let h = AMQPContentHeader {
            class_id: 60,
            body_size: size,
            properties: BasicProperties::default(),
        };
        self.send(AMQPFrame::Header(ch, 60, Box::new(h))).await;
    }
}

/// A fake broker on a free port running `script` for each connection
/// (the connection's number, from 0); returns its URL.
async fn fake<F, Fut>(script: F) -> String
where
    F: Fn(usize, Peer) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        for n in 0.. {
            let Ok((io, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(script(n, Peer { io, buf: Vec::new() }));
        }
    });
    format!("amqp://guest:guest@127.0.0.1:{port}/")
}

fn shared(url: &str, deadline: Duration) -> std::sync::Arc<SharedConnection> {
    SharedConnection::new(BrokerSettings::new(url, deadline))
}

#[tokio::test]
async fn a_call_without_an_answer_fails_by_the_deadline_names_the_method_and_reconnects() {
    let (seen, mut closes) = tokio::sync::mpsc::unbounded_channel();
    let url = fake(move |n, mut p| {
        let seen = seen.clone();
        async move {
            p.handshake().await;
            let ch = p.open_channel().await;
            let AMQPFrame::Method(_, AMQPClass::Queue(queue::AMQPMethod::Declare(_))) = p.recv().await else {
                panic!("queue.declare expected");
            };
            if n == 0 {
                // Hung: no answer, until the client closes.
                let _ = seen.send(p.closed_with().await.reply_code);
                return;
            }
            let ok = queue::DeclareOk {
                queue: "q".into(),
                message_count: 0,
                consumer_count: 0,
            };
            p.method(ch, AMQPClass::Queue(queue::AMQPMethod::DeclareOk(ok)))
                .await;
            while p.recv_within(Duration::from_secs(5)).await.is_some() {}
        }
    })
    .await;
    let conn = shared(&url, Duration::from_secs(1));
    let started = Instant::now();
    let err = tokio::time::timeout(Duration::from_secs(10), check_queue(&conn, "q"))
        .await
        .expect("fails by the deadline, never waits forever")
        .unwrap_err();
    let took = started.elapsed();
    assert!(
        matches!(&err, BridgeError::NoAnswer(t) if t.contains("queue.declare") && t.contains("1s")),
        "{err}"
    );
    assert!(took < Duration::from_secs(3), "failed after {took:?}");
    // The connection was dropped with a close, and a new one answers.
    assert_eq!(closes.recv().await, Some(200));
    check_queue(&conn, "q").await.unwrap();
}

/// Runs a consumer against a fake that misbehaves after the set-up with
/// `misbehave`; returns the client's close code and what the consumer got.
async fn consumer_against<F, Fut>(misbehave: F) -> (u16, Result<Vec<u8>, BridgeError>)
where
    F: Fn(Peer, u16) -> Fut + Send + Sync + Copy + 'static,
    Fut: Future<Output = Peer> + Send,
{
    let (seen, mut closes) = tokio::sync::mpsc::unbounded_channel();
    let url = fake(move |_, mut p| {
        let seen = seen.clone();
        async move {
            p.handshake().await;
            let ch = p.consumer_setup().await;
            let mut p = misbehave(p, ch).await;
            let _ = seen.send(p.closed_with().await);
        }
    })
    .await;
    let conn = shared(&url, Duration::from_secs(5));
    let mut consumer = Consumer::new(&conn, "q", 10).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .unwrap();
    let close = closes.recv().await.unwrap();
    (close.reply_code, got.map(|m| m.body))
}

#[tokio::test]
async fn a_deliver_before_the_previous_content_is_complete_is_505_and_nothing_is_delivered() {
    let (code, got) = consumer_against(|mut p, ch| async move {
        p.deliver(ch, 1).await;
        p.header(ch, 10).await;
        p.send(AMQPFrame::Body(ch, b"12345".to_vec())).await;
        p.deliver(ch, 2).await;
        p
    })
    .await;
    assert_eq!(code, 505);
    assert!(got.is_err(), "the first delivery must not surface: {got:?}");
}

#[tokio::test]
async fn a_body_longer_than_declared_is_505() {
    let (code, got) = consumer_against(|mut p, ch| async move {
        p.deliver(ch, 1).await;
        p.header(ch, 3).await;
        p.send(AMQPFrame::Body(ch, b"12345".to_vec())).await;
        p
    })
    .await;
    assert_eq!(code, 505);
    assert!(got.is_err(), "{got:?}");
}

#[tokio::test]
async fn an_unexpected_method_is_503_and_an_unknown_frame_type_501() {
    let (code, got) = consumer_against(|mut p, ch| async move {
        // A reply nobody asked for.
        p.method(ch, AMQPClass::Basic(basic::AMQPMethod::QosOk(basic::QosOk {})))
            .await;
        p
    })
    .await;
    assert_eq!(code, 503);
    assert!(got.is_err());
    let (code, got) = consumer_against(|mut p, _| async move {
        p.io.write_all(&[9, 0, 1, 0, 0, 0, 0, 0xCE]).await.unwrap();
        p
    })
    .await;
    assert_eq!(code, 501);
    assert!(got.is_err());
    // A complete delivery still arrives whole, as a control.
    let (_, got) = consumer_against(|mut p, ch| async move {
        p.deliver(ch, 1).await;
        p.header(ch, 5).await;
        p.send(AMQPFrame::Body(ch, b"12".to_vec())).await;
        p.send(AMQPFrame::Body(ch, b"345".to_vec())).await;
        // Read before the fake misbehaves (to end the exchange).
        tokio::time::sleep(Duration::from_millis(500)).await;
        p.method(ch, AMQPClass::Basic(basic::AMQPMethod::QosOk(basic::QosOk {})))
            .await;
        p
    })
    .await;
    assert_eq!(got.unwrap(), b"12345");
}

#[tokio::test]
async fn a_wrong_protocol_version_and_a_handshake_refusal_are_closed_properly() {
    let (seen, mut closes) = tokio::sync::mpsc::unbounded_channel();
    let url = fake(move |_, mut p| {
        let seen = seen.clone();
        async move {
            if let Err(Some(AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Close(c))))) =
                p.handshake_with((0, 8), 131_072).await
            {
                let _ = seen.send(c.reply_code);
            }
        }
    })
    .await;
    let err = check_queue(&shared(&url, Duration::from_secs(5)), "q")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("AMQP 0-8"), "{err}");
    assert_eq!(closes.recv().await, Some(503));

    let (seen, mut oks) = tokio::sync::mpsc::unbounded_channel();
    let url = fake(move |_, mut p| {
        let seen = seen.clone();
        async move {
            p.handshake_with((0, 9), 131_072).await.unwrap();
            let close = connection::Close {
                reply_code: 530,
                reply_text: "NOT_ALLOWED - vhost / not found".into(),
                class_id: 10,
                method_id: 40,
            };
            p.method(0, AMQPClass::Connection(connection::AMQPMethod::Close(close)))
                .await;
            let answered = matches!(
                p.recv().await,
                AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::CloseOk(_)))
            );
            let _ = seen.send(answered);
        }
    })
    .await;
    let err = check_queue(&shared(&url, Duration::from_secs(5)), "q")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("530 NOT_ALLOWED"), "{err}");
    assert_eq!(oks.recv().await, Some(true), "the refusal got its close-ok");
}

fn message<'a>(headers: Vec<(&'static str, HeaderValue)>) -> OutMessage<'a> {
    OutMessage {
        exchange: "ex",
        routing_key: "rk",
        msg_type: "T",
        body: b"{}",
        headers,
    }
}

/// The publishes the fake reads (method + header + body each) until
/// `within` passes without one.
async fn publishes(p: &mut Peer, within: Duration) -> usize {
    let mut n = 0;
    while let Some(f) = p.recv_within(within).await {
        if matches!(
            f,
            AMQPFrame::Method(_, AMQPClass::Basic(basic::AMQPMethod::Publish(_)))
        ) {
            n += 1;
            p.recv().await; // header
            p.recv().await; // body
            return n;
        }
    }
    n
}

#[tokio::test]
async fn a_header_over_frame_max_fails_alone_and_flow_control_holds_publishes() {
    let (seen, mut events) = tokio::sync::mpsc::unbounded_channel();
    let url = fake(move |n, mut p| {
        let seen = seen.clone();
        async move {
            if n == 0 {
                // The shared connection (which the publisher's follows).
                p.handshake().await;
                while p.recv_within(Duration::from_secs(30)).await.is_some() {}
                return;
            }
            p.handshake_with((0, 9), 4096).await.unwrap();
            p.method(
                0,
                AMQPClass::Connection(connection::AMQPMethod::OpenOk(connection::OpenOk {})),
            )
            .await;
            let ch = p.open_channel().await;
            p.confirm_select(ch).await;
            // The oversized publish never reaches the wire; the next one does.
            let _ = seen.send(("first", publishes(&mut p, Duration::from_secs(5)).await));
            let ack = |tag| {
                AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
                    delivery_tag: tag,
                    multiple: false,
                }))
            };
            p.method(ch, ack(1)).await;
            // channel.flow: nothing is written until it is active again.
            p.method(
                ch,
                AMQPClass::Channel(channel::AMQPMethod::Flow(channel::Flow { active: false })),
            )
            .await;
            let flow_ok = p.recv().await;
            let _ = seen.send((
                "flow-ok",
                matches!(
                    flow_ok,
                    AMQPFrame::Method(_, AMQPClass::Channel(channel::AMQPMethod::FlowOk(_)))
                ) as usize,
            ));
            let _ = seen.send((
                "while stopped",
                publishes(&mut p, Duration::from_millis(1500)).await,
            ));
            p.method(
                ch,
                AMQPClass::Channel(channel::AMQPMethod::Flow(channel::Flow { active: true })),
            )
            .await;
            p.recv().await; // flow-ok
            let _ = seen.send(("after flow", publishes(&mut p, Duration::from_secs(5)).await));
            p.method(ch, ack(2)).await;
            // connection.blocked likewise.
            let blocked = connection::Blocked {
                reason: "low on memory".into(),
            };
            p.method(0, AMQPClass::Connection(connection::AMQPMethod::Blocked(blocked)))
                .await;
            let _ = seen.send((
                "while blocked",
                publishes(&mut p, Duration::from_millis(1500)).await,
            ));
            p.method(
                0,
                AMQPClass::Connection(connection::AMQPMethod::Unblocked(connection::Unblocked {})),
            )
            .await;
            let _ = seen.send(("after unblock", publishes(&mut p, Duration::from_secs(5)).await));
            p.method(ch, ack(3)).await;
            let _ = p.closed_with().await;
        }
    })
    .await;
    let conn = shared(&url, Duration::from_secs(5));
    // A confirmation deadline shorter than the holds: it must not run.
    let mut publisher = conn.publisher(Duration::from_millis(700)).await.unwrap();
    let huge = vec![("h", HeaderValue::Str("x".repeat(5000)))];
    let err = publisher.publish(&message(huge)).await.await.unwrap_err();
    assert!(
        matches!(&err, BridgeError::TooLarge(t) if t.contains("4096")),
        "{err}"
    );
    publisher.publish(&message(vec![])).await.await.unwrap();
    assert_eq!(events.recv().await, Some(("first", 1)));

    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(events.recv().await, Some(("flow-ok", 1)));
    assert!(publisher.blocked().is_some_and(|r| r.contains("channel.flow")));
    let confirm = publisher.publish(&message(vec![])).await;
    assert_eq!(events.recv().await, Some(("while stopped", 0)));
    assert_eq!(events.recv().await, Some(("after flow", 1)));
    confirm.await.unwrap();

    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(publisher.blocked().as_deref(), Some("low on memory"));
    let confirm = publisher.publish(&message(vec![])).await;
    assert_eq!(events.recv().await, Some(("while blocked", 0)));
    assert_eq!(events.recv().await, Some(("after unblock", 1)));
    confirm.await.unwrap();
    assert_eq!(publisher.blocked(), None);
    publisher.close().await;
}

#[tokio::test]
async fn closes_are_clean_channels_then_the_connection_then_the_socket_after_close_ok() {
    let (seen, mut closes) = tokio::sync::mpsc::unbounded_channel();
    let url = fake(move |n, mut p| {
        let seen = seen.clone();
        async move {
            p.handshake().await;
            match n {
                0 => {
                    p.consumer_setup().await;
                }
                _ => {
                    let ch = p.open_channel().await;
                    p.confirm_select(ch).await;
                }
            }
            let _ = seen.send((n, p.clean_close().await));
        }
    })
    .await;
    let conn = shared(&url, Duration::from_secs(5));
    let consumer = Consumer::new(&conn, "q", 10).await.unwrap();
    let publisher = conn.publisher(Duration::from_secs(5)).await.unwrap();
    publisher.close().await;
    let want = vec![
        "channel.close",
        "connection.close",
        "open until close-ok",
        "shut after close-ok",
    ];
    assert_eq!(
        closes.recv().await,
        Some((1, want.clone())),
        "the publisher's close"
    );
    // The shared connection closes its consumer's channel first.
    conn.close().await;
    assert_eq!(
        closes.recv().await,
        Some((0, want)),
        "the shared connection's close"
    );
    drop(consumer);
}
