//! The confirmed publisher: a publishing connection of its own, with one
//! confirming channel; publishes pipelined in call order, each with a
//! future that resolves on its confirmation.
//!
//! ```text
//!  publish ──encode──> outbox (bytes) ──one write per wake-up──> writer task ──> RabbitMQ
//!     │                                                                            │
//!     └──> pending (seq, fingerprint, sender) <── reader task: basic.ack / nack, <──┘
//!                                                 basic.return, closes, heartbeats
//! ```
//!
//! A publish is encoded straight into the connection's outbox under the
//! lock that numbers it (1, 2, ... as the broker numbers the channel's
//! messages), so the order on the wire is the call order, and a burst of
//! publishes from many sessions leaves in one write: on a client that
//! writes every publish with a system call of its own, those calls were the
//! largest part of the server's CPU. The frames themselves are in
//! [`crate::wire`]. Everything else of the gateway (consumers, topology,
//! the readiness probe) stays on the [`SharedConnection`]; the publishing
//! connection goes to the same broker node as it.
//!
//! `basic.ack` / `basic.nack` (`multiple` included) settle the pending
//! publishes. A `basic.return` (mandatory, unroutable) carries no delivery
//! tag: it is matched to the oldest unconfirmed message with the same
//! exchange, routing key and body (identical messages are routed alike),
//! whose confirmation then fails as `Returned`. A lost connection, a
//! channel or connection closed by RabbitMQ, or a confirmation overdue
//! fails everything pending, and the publisher with it.

use crate::connection::{program_name, try_urls, Endpoint};
use crate::wire::{self, method, Content, FrameReader};
use crate::{checked_name, BridgeError, BrokerSettings, HeaderValue, OutMessage, SharedConnection};
use futures::FutureExt;
use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::io;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{oneshot, Notify};
use tokio::task::JoinHandle;

/// A pending confirmation; await it to learn the message's fate.
pub type PendingConfirm = futures::future::BoxFuture<'static, Result<(), BridgeError>>;

/// The publishing channel's number.
const CHANNEL: u16 = 1;

/// Above this many unsent bytes, a publish waits for the writer.
const OUTBOX_LIMIT: usize = 1024 * 1024;

/// How long a closing publisher waits for RabbitMQ's `close-ok`.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

type Reader = Box<dyn AsyncRead + Send + Unpin>;
type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// One unconfirmed publish.
struct Unconfirmed {
    seq: u64,
    sent: Instant,
    fingerprint: u64,
    returned: Option<(String, String)>,
    settle: oneshot::Sender<Result<(), BridgeError>>,
}

impl Unconfirmed {
    /// Resolves the publish's future: acked (and not returned), or why not.
    fn finish(self, acked: bool) {
        let result = match (self.returned, acked) {
            (Some((exchange, routing_key)), _) => Err(BridgeError::Returned {
                exchange,
                routing_key,
            }),
            (None, true) => Ok(()),
            (None, false) => Err(BridgeError::Nacked),
        };
        let _ = self.settle.send(result);
    }
}

fn fingerprint(exchange: &str, routing_key: &str, body: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (exchange, routing_key, body).hash(&mut h);
    h.finish()
}

/// What the publisher, its writer and its reader share.
struct State {
    /// The number the broker gives the next publish.
    next_seq: u64,
    pending: VecDeque<Unconfirmed>,
    /// Why the publisher takes no more publishes, if it does not.
    closed: Option<String>,
    /// The connection is down: the reader has ended.
    gone: bool,
    /// Encoded frames not yet handed to the socket.
    outbox: Vec<u8>,
    frame_max: usize,
}

impl State {
    /// Settles the publish numbered `tag`, or every one up to it.
    fn settle(&mut self, tag: u64, multiple: bool, ok: bool) {
        if multiple {
            while self.pending.front().is_some_and(|u| u.seq <= tag) {
                if let Some(u) = self.pending.pop_front() {
                    u.finish(ok);
                }
            }
        } else if let Some(i) = self.pending.iter().position(|u| u.seq == tag) {
            if let Some(u) = self.pending.remove(i) {
                u.finish(ok);
            }
        }
    }

    /// Marks the oldest unconfirmed publish that a `basic.return` matches.
    fn mark_returned(&mut self, exchange: String, routing_key: String, body: &[u8]) {
        let fp = fingerprint(&exchange, &routing_key, body);
        if let Some(u) = self
            .pending
            .iter_mut()
            .find(|u| u.fingerprint == fp && u.returned.is_none())
        {
            u.returned = Some((exchange, routing_key));
        }
    }

    /// Fails everything pending, and the publisher: the connection is
    /// gone or no longer to be trusted.
    fn fail_all(&mut self, error: BridgeError) {
        if self.closed.is_none() {
            self.closed = Some(error.to_string());
        }
        for u in self.pending.drain(..) {
            let _ = u.settle.send(Err(error.clone()));
        }
    }
}

/// The shared part of one publishing connection.
struct Link {
    state: Mutex<State>,
    /// Something is in the outbox, or the publisher is closing.
    wake_writer: Notify,
    /// The writer emptied the outbox (publishers waiting for room).
    drained: Notify,
}

impl Link {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a frame of the link's own (a reply) for the writer.
    fn send(&self, frame: impl FnOnce(&mut Vec<u8>)) {
        frame(&mut self.state().outbox);
        self.wake_writer.notify_one();
    }

    /// Takes no more publishes; the writer closes the connection once the
    /// outbox is out.
    fn close(&self, why: &str) {
        let mut state = self.state();
        if state.closed.is_none() {
            state.closed = Some(why.to_string());
        }
        drop(state);
        self.wake_writer.notify_one();
        self.drained.notify_waiters();
    }
}

/// A publisher with confirms on a connection of its own. One task
/// publishes with it (the message numbers follow the call order); see
/// [`SharedPublisher`] for many.
pub struct Publisher {
    link: Arc<Link>,
    reader: Option<JoinHandle<()>>,
}

impl Publisher {
    /// Opens a publishing connection to the broker node `conn` is on, and
    /// a confirming channel on it.
    pub async fn new(conn: &SharedConnection, confirm_timeout: Duration) -> Result<Publisher, BridgeError> {
        let start = conn.url_index().await?;
        let broker = conn.broker();
        let (opened, _) = try_urls(broker, start, |url| async move { open(&url, broker).await }).await?;
        let Opened {
            reader,
            writer,
            frame_max,
            heartbeat,
        } = opened;
        let link = Arc::new(Link {
            state: Mutex::new(State {
                next_seq: 1,
                pending: VecDeque::new(),
                closed: None,
                gone: false,
                outbox: Vec::with_capacity(16 * 1024),
                frame_max,
            }),
            wake_writer: Notify::new(),
            drained: Notify::new(),
        });
        let writer = tokio::spawn(write_loop(link.clone(), writer, heartbeat));
        let reader = tokio::spawn(read_loop(link.clone(), reader, heartbeat, writer));
        tokio::spawn(watchdog(Arc::downgrade(&link), confirm_timeout));
        Ok(Publisher {
            link,
            reader: Some(reader),
        })
    }

    /// Publishes one message (persistent, mandatory, `app_id
    /// swpt_stomp`). The frames are queued for the connection's writer
    /// when this returns, so messages go out in call order without
    /// waiting for each other; the returned future resolves when RabbitMQ
    /// confirms the message, or fails on a nack, a return, a closed
    /// channel, a lost connection or the confirmation timeout.
    pub async fn publish(&mut self, m: &OutMessage<'_>) -> PendingConfirm {
        match self.send(m).await {
            Ok(settled) => Box::pin(settled.map(|r| r.unwrap_or(Err(BridgeError::ConnectionLost)))),
            Err(e) => Box::pin(futures::future::ready(Err(e))),
        }
    }

    async fn send(
        &mut self,
        m: &OutMessage<'_>,
    ) -> Result<oneshot::Receiver<Result<(), BridgeError>>, BridgeError> {
        let (exchange, routing_key) = (checked_name(m.exchange)?, checked_name(m.routing_key)?);
        let msg_type = checked_name(m.msg_type)?;
        for (name, value) in &m.headers {
            checked_name(name)?;
            if let HeaderValue::Str(s) = value {
                if u32::try_from(s.len()).is_err() {
                    return Err(BridgeError::Name(s.clone()));
                }
            }
        }
        let content = Content {
            content_type: "application/json",
            msg_type,
            app_id: "swpt_stomp",
            persistent: true,
            headers: &m.headers,
            body: m.body,
        };
        let (settle, settled) = oneshot::channel();
        let (wake, full) = {
            let mut state = self.link.state();
            if let Some(why) = &state.closed {
                return Err(BridgeError::Amqp(why.clone()));
            }
            let wake = state.outbox.is_empty();
            let frame_max = state.frame_max;
            wire::publish(
                &mut state.outbox,
                CHANNEL,
                exchange,
                routing_key,
                &content,
                frame_max,
            );
            let seq = state.next_seq;
            state.next_seq += 1;
            state.pending.push_back(Unconfirmed {
                seq,
                sent: Instant::now(),
                fingerprint: fingerprint(exchange, routing_key, m.body),
                returned: None,
                settle,
            });
            (wake, state.outbox.len() > OUTBOX_LIMIT)
        };
        if wake {
            self.link.wake_writer.notify_one();
        }
        if full {
            self.room().await;
        }
        Ok(settled)
    }

    /// Waits until the outbox is below its limit (or the publisher closed).
    async fn room(&self) {
        loop {
            let drained = self.link.drained.notified();
            {
                let state = self.link.state();
                if state.outbox.len() <= OUTBOX_LIMIT || state.closed.is_some() {
                    return;
                }
            }
            drained.await;
        }
    }

    /// Whether the publisher can still publish (its connection is up,
    /// nothing failed it).
    pub fn usable(&self) -> bool {
        let state = self.link.state();
        state.closed.is_none() && !state.gone
    }

    /// Closes the connection, once what was published is written; waits
    /// (a few seconds at most) for RabbitMQ to acknowledge the close.
    pub async fn close(mut self) {
        self.link.close("the publisher was closed");
        if let Some(mut reader) = self.reader.take() {
            if tokio::time::timeout(CLOSE_WAIT, &mut reader).await.is_err() {
                // A broker that does not answer: drop the connection.
                reader.abort();
            }
        }
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.link.close("the publisher was closed");
    }
}

/// A publishing connection, open and tuned, with its confirming channel.
struct Opened {
    reader: FrameReader<Reader>,
    writer: Writer,
    frame_max: usize,
    heartbeat: Duration,
}

/// Opens a publishing connection to `url`, within the settings' timeout.
async fn open(url: &str, broker: &BrokerSettings) -> Result<Opened, BridgeError> {
    let err = |reason: String| BridgeError::Connect {
        url: crate::redact_url(url),
        reason,
    };
    let endpoint = Endpoint::parse(url).map_err(err)?;
    let timeout = broker.timeout;
    match tokio::time::timeout(timeout, handshake(&endpoint, broker)).await {
        Ok(Ok(opened)) => Ok(opened),
        Ok(Err(reason)) => Err(err(reason.to_string())),
        Err(_) => Err(err(format!("no answer within {timeout:?}"))),
    }
}

/// Connects (TCP, and TLS for `amqps://`), then the AMQP handshake:
/// protocol header, `start-ok` (PLAIN), `tune-ok`, `open`, `channel.open`
/// and `confirm.select`.
async fn handshake(e: &Endpoint, broker: &BrokerSettings) -> io::Result<Opened> {
    let tcp = tokio::net::TcpStream::connect((e.host.as_str(), e.port)).await?;
    tcp.set_nodelay(true)?;
    let (reader, mut writer): (Reader, Writer) = if e.tls {
        let connector = crate::tls::connector(broker.ca_file.as_deref()).map_err(io::Error::other)?;
        let name = rustls_pki_types::ServerName::try_from(e.host.clone())
            .map_err(|err| io::Error::other(format!("invalid host name \"{}\": {err}", e.host)))?;
        let tls = connector.connect(name, tcp).await?;
        let (r, w) = tokio::io::split(tls);
        (Box::new(r), Box::new(w))
    } else {
        let (r, w) = tcp.into_split();
        (Box::new(r), Box::new(w))
    };
    let mut reader = FrameReader::new(reader);
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(wire::PROTOCOL_HEADER);
    send(&mut writer, &mut out).await?;

    let start = expect(&mut reader, method::CONNECTION_START).await?;
    let mut a = start.args();
    let (_major, _minor) = (a.u8()?, a.u8()?);
    a.skip_table()?;
    let mechanisms = a.long_str()?;
    if !mechanisms.split(' ').any(|m| m == "PLAIN") {
        return Err(io::Error::other(format!(
            "the broker does not offer PLAIN authentication ({mechanisms})"
        )));
    }
    wire::method_frame(&mut out, 0, method::CONNECTION_START_OK, |o| {
        client_properties(o);
        wire::short_str(o, "PLAIN");
        wire::long_str(o, format!("\0{}\0{}", e.user, e.password).as_bytes());
        wire::short_str(o, "en_US");
    });
    send(&mut writer, &mut out).await?;

    let tune = expect(&mut reader, method::CONNECTION_TUNE).await?;
    let mut a = tune.args();
    let channel_max = a.u16()?;
    let frame_max = match a.u32()? {
        0 => wire::FRAME_MAX,
        n => n.min(wire::FRAME_MAX),
    };
    let heartbeat = e.heartbeat.unwrap_or(a.u16()?);
    wire::method_frame(&mut out, 0, method::CONNECTION_TUNE_OK, |o| {
        o.extend_from_slice(&channel_max.to_be_bytes());
        o.extend_from_slice(&frame_max.to_be_bytes());
        o.extend_from_slice(&heartbeat.to_be_bytes());
    });
    wire::method_frame(&mut out, 0, method::CONNECTION_OPEN, |o| {
        wire::short_str(o, &e.vhost);
        wire::short_str(o, "");
        o.push(0);
    });
    send(&mut writer, &mut out).await?;
    reader.frame_max = frame_max as usize;
    expect(&mut reader, method::CONNECTION_OPEN_OK).await?;

    wire::method_frame(&mut out, CHANNEL, method::CHANNEL_OPEN, |o| {
        wire::short_str(o, "")
    });
    send(&mut writer, &mut out).await?;
    expect(&mut reader, method::CHANNEL_OPEN_OK).await?;
    wire::method_frame(&mut out, CHANNEL, method::CONFIRM_SELECT, |o| o.push(0));
    send(&mut writer, &mut out).await?;
    expect(&mut reader, method::CONFIRM_SELECT_OK).await?;
    Ok(Opened {
        reader,
        writer,
        frame_max: frame_max as usize,
        heartbeat: Duration::from_secs(heartbeat.into()),
    })
}

/// The client properties of `start-ok`: who we are, and the capabilities
/// RabbitMQ then uses (nacks, blocked notices, a clear error on a wrong
/// password).
fn client_properties(out: &mut Vec<u8>) {
    let text = |s: &str| HeaderValue::Str(s.to_string());
    wire::table(out, |o| {
        wire::field(o, "product", &text("swpt-gateway"));
        wire::field(o, "version", &text(env!("CARGO_PKG_VERSION")));
        wire::field(o, "platform", &text("Rust"));
        wire::field(o, "connection_name", &text(&program_name()));
        wire::short_str(o, "capabilities");
        o.push(b'F');
        wire::table(o, |o| {
            for c in [
                "publisher_confirms",
                "basic.nack",
                "connection.blocked",
                "authentication_failure_close",
            ] {
                wire::field(o, c, &HeaderValue::Bool(true));
            }
        });
    });
}

/// Writes and empties `out`.
async fn send(writer: &mut Writer, out: &mut Vec<u8>) -> io::Result<()> {
    writer.write_all(out).await?;
    writer.flush().await?;
    out.clear();
    Ok(())
}

/// The next method during the handshake, which must be `want`; a
/// `connection.close` instead is RabbitMQ's refusal, with its reason.
async fn expect(reader: &mut FrameReader<Reader>, want: (u16, u16)) -> io::Result<wire::Frame> {
    loop {
        let frame = reader.next().await.map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => {
                io::Error::other("the broker closed the connection during the handshake")
            }
            _ => e,
        })?;
        if frame.kind == wire::FRAME_HEARTBEAT {
            continue;
        }
        return match frame.method() {
            Some((m, _)) if m == want => Ok(frame),
            Some((method::CONNECTION_CLOSE, mut a)) | Some((method::CHANNEL_CLOSE, mut a)) => {
                let (code, text) = (a.u16()?, a.short_str()?);
                Err(io::Error::other(format!("{code} {text}")))
            }
            Some((m, _)) => Err(io::Error::other(format!(
                "unexpected AMQP method {m:?} (expected {want:?})"
            ))),
            None => Err(io::Error::other(format!(
                "unexpected AMQP frame of type {}",
                frame.kind
            ))),
        };
    }
}

/// Writes what is queued, a heartbeat when nothing was written for half
/// the heartbeat interval, and `connection.close` once the publisher is
/// closed and everything before it is out.
async fn write_loop(link: Arc<Link>, mut writer: Writer, heartbeat: Duration) {
    let mut batch = Vec::with_capacity(16 * 1024);
    let mut last_write = tokio::time::Instant::now();
    let result: io::Result<()> = async {
        loop {
            let (closing, gone) = {
                let mut state = link.state();
                std::mem::swap(&mut state.outbox, &mut batch);
                (state.closed.is_some(), state.gone)
            };
            if !batch.is_empty() {
                send(&mut writer, &mut batch).await?;
                if batch.capacity() > OUTBOX_LIMIT {
                    batch = Vec::with_capacity(16 * 1024);
                }
                last_write = tokio::time::Instant::now();
                link.drained.notify_waiters();
                continue;
            }
            if gone {
                return Ok(());
            }
            if closing {
                wire::method_frame(&mut batch, 0, method::CONNECTION_CLOSE, |o| {
                    o.extend_from_slice(&200u16.to_be_bytes());
                    wire::short_str(o, "Goodbye");
                    o.extend_from_slice(&[0; 4]);
                });
                return send(&mut writer, &mut batch).await;
            }
            let beat = last_write + heartbeat / 2;
            tokio::select! {
                _ = link.wake_writer.notified() => {}
                _ = tokio::time::sleep_until(beat), if !heartbeat.is_zero() => {
                    wire::heartbeat(&mut batch);
                    send(&mut writer, &mut batch).await?;
                    last_write = tokio::time::Instant::now();
                }
            }
        }
    }
    .await;
    if let Err(e) = result {
        tracing::warn!("writing to RabbitMQ failed: {e}");
        link.state().fail_all(BridgeError::ConnectionLost);
        link.drained.notify_waiters();
    }
}

/// A `basic.return` whose content is still coming.
struct Returning {
    exchange: String,
    routing_key: String,
    size: Option<u64>,
    body: Vec<u8>,
}

/// Reads what RabbitMQ sends: confirmations, returns, closes, heartbeats.
/// Ends with the connection (a failure, a close, or silence longer than
/// two heartbeat intervals), failing what is pending; then waits a little
/// for the writer to send what is queued, and stops it.
async fn read_loop(
    link: Arc<Link>,
    mut reader: FrameReader<Reader>,
    heartbeat: Duration,
    writer: JoinHandle<()>,
) {
    // The writer ends with the reader, even when the reader is aborted.
    let mut writer = AbortOnDrop(writer);
    let silence = (!heartbeat.is_zero()).then(|| heartbeat * 2);
    let mut returning: Option<Returning> = None;
    let why = loop {
        let frame = match silence {
            Some(limit) => match tokio::time::timeout(limit, reader.next()).await {
                Ok(frame) => frame,
                Err(_) => {
                    tracing::warn!("RabbitMQ sent nothing for {limit:?}: the publishing connection is dead");
                    break BridgeError::ConnectionLost;
                }
            },
            None => reader.next().await,
        };
        let frame = match frame {
            Ok(frame) => frame,
            Err(e) => {
                if e.kind() != io::ErrorKind::UnexpectedEof {
                    tracing::warn!("reading from RabbitMQ failed: {e}");
                }
                break BridgeError::ConnectionLost;
            }
        };
        match handle(&link, &frame, &mut returning) {
            Ok(None) => {}
            Ok(Some(end)) => break end,
            Err(e) => {
                tracing::warn!("RabbitMQ sent a malformed frame: {e}");
                break BridgeError::Amqp(format!("a malformed frame from RabbitMQ: {e}"));
            }
        }
    };
    {
        let mut state = link.state();
        state.fail_all(why);
        state.gone = true;
    }
    link.wake_writer.notify_one();
    link.drained.notify_waiters();
    let _ = tokio::time::timeout(CLOSE_WAIT, &mut writer.0).await;
}

/// A task aborted when this is dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Handles one frame from RabbitMQ; returns why the connection ends, if
/// it does.
fn handle(
    link: &Link,
    frame: &wire::Frame,
    returning: &mut Option<Returning>,
) -> io::Result<Option<BridgeError>> {
    match frame.kind {
        wire::FRAME_HEARTBEAT => return Ok(None),
        wire::FRAME_HEADER | wire::FRAME_BODY => {
            let Some(r) = returning.as_mut() else {
                return Ok(None);
            };
            if frame.kind == wire::FRAME_HEADER {
                r.size = frame.body_size();
            } else {
                r.body.extend_from_slice(&frame.payload);
            }
            if r.size.is_some_and(|size| r.body.len() as u64 >= size) {
                if let Some(r) = returning.take() {
                    link.state().mark_returned(r.exchange, r.routing_key, &r.body);
                }
            }
            return Ok(None);
        }
        _ => {}
    }
    let Some((m, mut a)) = frame.method() else {
        return Ok(None);
    };
    match m {
        method::BASIC_ACK | method::BASIC_NACK => {
            let (tag, bits) = (a.u64()?, a.u8()?);
            link.state().settle(tag, bits & 1 == 1, m == method::BASIC_ACK);
        }
        method::BASIC_RETURN => {
            let (_code, _text) = (a.u16()?, a.short_str()?);
            *returning = Some(Returning {
                exchange: a.short_str()?,
                routing_key: a.short_str()?,
                size: None,
                body: Vec::new(),
            });
        }
        method::CHANNEL_CLOSE => {
            let (code, text) = (a.u16()?, a.short_str()?);
            tracing::warn!("RabbitMQ closed the publishing channel: {code} {text}");
            link.send(|o| wire::method_frame(o, frame.channel, method::CHANNEL_CLOSE_OK, |_| {}));
            let why = BridgeError::Amqp(format!("the channel was closed: {code} {text}"));
            // The channel is gone; the connection is closed after it.
            link.state().fail_all(why);
            link.close("the channel was closed");
        }
        method::CONNECTION_CLOSE => {
            let (code, text) = (a.u16()?, a.short_str()?);
            tracing::warn!("RabbitMQ closed the publishing connection: {code} {text}");
            link.send(|o| wire::method_frame(o, 0, method::CONNECTION_CLOSE_OK, |_| {}));
            return Ok(Some(BridgeError::Amqp(format!(
                "RabbitMQ closed the connection: {code} {text}"
            ))));
        }
        method::CONNECTION_CLOSE_OK => return Ok(Some(BridgeError::ConnectionLost)),
        method::CONNECTION_BLOCKED => {
            tracing::warn!("RabbitMQ blocked the publishing connection: {}", a.short_str()?);
        }
        method::CONNECTION_UNBLOCKED => tracing::info!("RabbitMQ unblocked the publishing connection"),
        method::CHANNEL_FLOW => {
            let active = a.u8()?;
            link.send(|o| wire::method_frame(o, frame.channel, method::CHANNEL_FLOW_OK, |o| o.push(active)));
        }
        other => tracing::debug!("ignored AMQP method {other:?} on the publishing connection"),
    }
    Ok(None)
}

/// Fails a publisher's pending confirmations when the oldest has waited
/// longer than `timeout` (and closes its connection): one timer per
/// publisher, not one per message. Ends with the publisher.
async fn watchdog(link: Weak<Link>, timeout: Duration) {
    let every = (timeout / 4).max(Duration::from_millis(100));
    loop {
        tokio::time::sleep(every).await;
        let Some(link) = link.upgrade() else {
            return;
        };
        let mut state = link.state();
        if state.closed.is_some() {
            return;
        }
        if state.pending.front().is_some_and(|u| u.sent.elapsed() > timeout) {
            state.fail_all(BridgeError::ConfirmTimeout(timeout));
            drop(state);
            link.close("a confirmation was overdue");
            return;
        }
    }
}

/// One publisher (one connection, one confirming channel) for many
/// publishing tasks (a server's sessions): their publishes share the
/// outbox, so a turn in which many sessions publish still ends in one
/// write, and the broker keeps one connection, not one per session.
/// Opened at the first publish, and again after a failure.
pub struct SharedPublisher {
    conn: Arc<crate::SharedConnection>,
    confirm_timeout: Duration,
    publisher: tokio::sync::Mutex<Option<Publisher>>,
}

impl SharedPublisher {
    pub fn new(conn: Arc<crate::SharedConnection>, confirm_timeout: Duration) -> SharedPublisher {
        SharedPublisher {
            conn,
            confirm_timeout,
            publisher: tokio::sync::Mutex::new(None),
        }
    }

    /// Publishes one message, as [`Publisher::publish`]; fails when no
    /// publishing connection can be opened.
    pub async fn publish(&self, m: &OutMessage<'_>) -> Result<PendingConfirm, BridgeError> {
        let mut slot = self.publisher.lock().await;
        if !slot.as_ref().is_some_and(Publisher::usable) {
            *slot = Some(Publisher::new(&self.conn, self.confirm_timeout).await?);
        }
        match slot.as_mut() {
            Some(p) => Ok(p.publish(m).await),
            None => Err(BridgeError::ConnectionLost),
        }
    }

    /// Closes the publishing connection, if open.
    pub async fn close(&self) {
        if let Some(p) = self.publisher.lock().await.take() {
            p.close().await;
        }
    }
}
