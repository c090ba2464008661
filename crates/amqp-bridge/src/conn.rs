//! The connection core, shared by the publisher's connection and the one
//! a process's channels share: the handshake ([`open`]), the writer task
//! (a whole outbox per wake-up, heartbeats when idle, nothing of the
//! outbox while RabbitMQ blocks a publisher), the reader loop (frames
//! joined with their content, connection-level methods, channel closes
//! and flow, silence and protocol violations), and the close: the
//! outbox out, `connection.close`, and the socket shut only after
//! `close-ok` or [`CLOSE_WAIT`]. What the other methods mean is the
//! owner's ([`ConnState`], the handler given to [`Opened::start`]).
//!
//! ```text
//!  callers ──encode under the state's lock──> outbox ──write_loop──> socket ──> RabbitMQ
//!                                             control ─┘                          │
//!  callers <──settled / delivered── handler (the owner's) <──read_loop── socket <──┘
//! ```

use crate::endpoint::{program_name, Auth, BrokerSettings, Endpoint};
use crate::wire::codec::{FieldValue, Table};
use crate::wire::content::{Arrival, Assembler};
use crate::wire::method::{Reason, Tune};
use crate::wire::{self, id, FrameReader, Method, ReadError, Violation};
use crate::BridgeError;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// Above this many unsent bytes, a publisher waits for the writer.
pub(crate) const OUTBOX_LIMIT: usize = 1024 * 1024;

/// How long a closing connection (or channel) waits for RabbitMQ's
/// `close-ok`.
pub(crate) const CLOSE_WAIT: Duration = Duration::from_secs(5);

type Reader = Box<dyn AsyncRead + Send + Unpin>;
type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// How the connection is to be closed.
struct CloseRequest {
    code: u16,
    text: String,
    /// Write the outbox first (a normal close); a violation does not.
    flush_first: bool,
}

/// What every connection's state holds for its writer and reader.
pub(crate) struct Out {
    /// Frames of the connection's users, in call order.
    pub outbox: Vec<u8>,
    /// The connection's own replies (`close-ok`, `flow-ok`): written even
    /// while the outbox is held.
    control: Vec<u8>,
    /// Why the connection takes no more work, if it does not.
    pub closed: Option<String>,
    close: Option<CloseRequest>,
    /// `connection.close` was written (the reader's deadline runs).
    close_sent: Option<Instant>,
    /// The connection is down: the reader has ended.
    pub gone: bool,
    /// RabbitMQ's reply code and text, when it closed the connection.
    pub refused: Option<(u16, String)>,
    /// RabbitMQ blocks publishing on the connection (`connection.blocked`):
    /// its reason and since when.
    pub blocked: Option<(String, Instant)>,
    /// When RabbitMQ last unblocked the connection.
    pub unblocked_at: Option<Instant>,
}

impl Out {
    pub fn new() -> Out {
        Out {
            outbox: Vec::with_capacity(16 * 1024),
            control: Vec::new(),
            closed: None,
            close: None,
            close_sent: None,
            gone: false,
            refused: None,
            blocked: None,
            unblocked_at: None,
        }
    }

    /// Takes no more work, for the first reason given.
    pub fn stop(&mut self, why: &dyn std::fmt::Display) {
        if self.closed.is_none() {
            self.closed = Some(why.to_string());
        }
    }

    /// Closes the connection: `connection.close` with `code` once the
    /// outbox is out (`flush_first`), or at once.
    fn request_close(&mut self, code: u16, text: &str, flush_first: bool) {
        self.stop(&text);
        let flush_first = flush_first && self.close.as_ref().is_none_or(|c| c.flush_first);
        if self.close.is_none() || !flush_first {
            self.close = Some(CloseRequest {
                code,
                text: text.to_string(),
                flush_first,
            });
        }
    }
}

/// A channel as the reader sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ChannelState {
    Open,
    /// We sent `channel.close`: everything but its `close-ok` (or
    /// RabbitMQ's own close) is dropped.
    Closing,
    Unknown,
}

/// The state of one connection, as its owner keeps it.
pub(crate) trait ConnState: Send + 'static {
    fn out(&mut self) -> &mut Out;
    /// The connection failed or ended: fail everything that waits on it.
    fn fail_all(&mut self, error: BridgeError);
    /// Whether the outbox must wait (a publisher that RabbitMQ blocks).
    fn held(&mut self) -> bool {
        false
    }
    /// `channel.flow` asks to stop (or resume) sending content.
    fn flow(&mut self, _channel: u16, _active: bool) {}
    fn channel(&self, channel: u16) -> ChannelState;
    /// A channel closed: by RabbitMQ (its reply code and text), or by the
    /// `close-ok` of ours (`None`).
    fn channel_closed(&mut self, channel: u16, by_broker: Option<(u16, String)>);
}

/// One connection of our own, shared by its callers, its writer and its
/// reader.
pub(crate) struct Conn<S> {
    state: Mutex<S>,
    /// Something is in the outbox, or the connection is closing.
    pub wake_writer: Notify,
    /// The writer emptied the outbox (callers waiting for room).
    pub drained: Notify,
    /// The reader ended, or `connection.close` was written.
    ended: Notify,
}

impl<S: ConnState> Conn<S> {
    pub fn new(state: S) -> Conn<S> {
        Conn {
            state: Mutex::new(state),
            wake_writer: Notify::new(),
            drained: Notify::new(),
            ended: Notify::new(),
        }
    }

    pub fn state(&self) -> MutexGuard<'_, S> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a frame for the writer.
    pub fn send(&self, frame: impl FnOnce(&mut Vec<u8>)) {
        frame(&mut self.state().out().outbox);
        self.wake_writer.notify_one();
    }

    fn send_control(&self, m: &Method) {
        wire::method_frame(&mut self.state().out().control, 0, m);
        self.wake_writer.notify_one();
    }

    fn wake_all(&self) {
        self.wake_writer.notify_one();
        self.drained.notify_waiters();
        self.ended.notify_waiters();
    }

    /// Takes no more work; the writer closes the connection once the
    /// outbox is out (at once when it is held).
    pub fn close(&self, why: &str) {
        self.state().out().request_close(wire::REPLY_SUCCESS, why, true);
        self.wake_all();
    }

    /// Closes the connection at once with a connection exception: what
    /// waits on it fails (with the returned error), the outbox is dropped.
    fn close_for(&self, v: &Violation) -> BridgeError {
        let error = BridgeError::Amqp(format!("RabbitMQ broke the AMQP protocol: {v}"));
        tracing::error!("{error}; closing the connection");
        let mut state = self.state();
        state.out().request_close(v.code, &v.text, false);
        state.fail_all(error.clone());
        drop(state);
        self.wake_all();
        error
    }

    /// Resolves once `done` holds of the connection's state (looked at
    /// again whenever the connection's life or a channel's changes).
    pub async fn until_state(&self, done: impl Fn(&mut S) -> bool) {
        loop {
            let ended = self.ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            if done(&mut self.state()) {
                return;
            }
            ended.await;
        }
    }

    /// Resolves once `done` holds of the connection's [`Out`].
    async fn until(&self, done: impl Fn(&Out) -> bool) {
        self.until_state(|s| done(s.out())).await
    }

    /// Resolves once the connection is gone.
    pub async fn gone(&self) {
        self.until(|o| o.gone).await
    }

    /// Whether the connection still takes work.
    pub fn usable(&self) -> bool {
        let mut state = self.state();
        let out = state.out();
        out.closed.is_none() && !out.gone
    }
}

/// A connection, open and tuned, before its tasks start.
pub(crate) struct Opened {
    reader: FrameReader<Reader>,
    writer: Writer,
    pub frame_max: usize,
    /// The highest channel number the broker allows.
    pub channel_max: u16,
    heartbeat: Duration,
}

impl Opened {
    /// Calls `m` on `channel` before the connection's tasks start (the
    /// publisher's channel), within `deadline`.
    pub async fn call(
        &mut self,
        channel: u16,
        m: &Method<'_>,
        want: (u16, u16),
        deadline: Duration,
    ) -> Result<(), String> {
        let mut out = Vec::with_capacity(64);
        wire::method_frame(&mut out, channel, m);
        let call = async {
            send(&mut self.writer, &mut out)
                .await
                .map_err(|e| e.to_string())?;
            expect(&mut self.reader, &mut self.writer, want).await.map(|_| ())
        };
        match tokio::time::timeout(deadline, call).await {
            Ok(done) => done,
            Err(_) => Err(no_answer(m.id(), deadline)),
        }
    }

    /// Starts the writer and the reader of `conn`; `handle` takes every
    /// method (with its content) that is not the connection's, and says
    /// when RabbitMQ broke the protocol. Returns the reader's task, which
    /// ends with the connection.
    pub fn start<S, H>(self, conn: &Arc<Conn<S>>, handle: H) -> JoinHandle<()>
    where
        S: ConnState,
        H: FnMut(&Conn<S>, Arrival) -> Result<(), Violation> + Send + 'static,
    {
        let writer = tokio::spawn(write_loop(conn.clone(), self.writer, self.heartbeat));
        tokio::spawn(read_loop(
            conn.clone(),
            self.reader,
            self.heartbeat,
            writer,
            handle,
        ))
    }
}

/// "RabbitMQ did not answer queue.declare within 5s".
pub(crate) fn no_answer(m: (u16, u16), deadline: Duration) -> String {
    format!(
        "RabbitMQ did not answer {} within {deadline:?}",
        wire::method::name(m)
    )
}

/// Opens a connection to `url`, within the URL's `timeout` or the
/// settings' deadline.
pub(crate) async fn open(url: &str, broker: &BrokerSettings) -> Result<Opened, BridgeError> {
    let err = |reason: String| BridgeError::Connect {
        url: crate::redact_url(url),
        reason,
    };
    let endpoint = Endpoint::parse(url).map_err(err)?;
    // A missing or bad certificate file is said before anything is tried.
    let tls = match endpoint.tls {
        true => Some(crate::tls::connector(broker.ca_file.as_deref(), &endpoint.tls_options).map_err(err)?),
        false => None,
    };
    let timeout = endpoint.timeout.unwrap_or(broker.timeout);
    match tokio::time::timeout(timeout, handshake(&endpoint, tls)).await {
        Ok(Ok(opened)) => Ok(opened),
        Ok(Err(reason)) => Err(err(client_certificate_hint(&endpoint, reason))),
        Err(_) => Err(err(format!("no answer within {timeout:?}"))),
    }
}

/// Under TLS 1.3 a broker refuses a client certificate after the TLS
/// handshake: the connection just ends (reset, or an alert). Says so.
fn client_certificate_hint(e: &Endpoint, reason: String) -> String {
    let ended = ["reset", "alert", "closed the connection", "broken pipe", "eof"];
    match &e.tls_options.certfile {
        Some(cert) if e.tls && ended.iter().any(|w| reason.to_lowercase().contains(w)) => format!(
            "{reason} (the connection ended before RabbitMQ spoke: does it trust the client certificate {}?)",
            cert.display()
        ),
        _ => reason,
    }
}

/// Connects (TCP, and TLS for `amqps://`), then the AMQP handshake:
/// protocol header, `start-ok`, `tune-ok`, `open`.
async fn handshake(e: &Endpoint, tls: Option<tokio_rustls::TlsConnector>) -> Result<Opened, String> {
    let (reader, mut writer) = connect(e, tls).await?;
    let mut reader = FrameReader::new(reader);
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(wire::PROTOCOL_HEADER);
    send(&mut writer, &mut out).await.map_err(|err| err.to_string())?;
    start_ok(e, &mut reader, &mut writer).await?;
    tune_and_open(e, reader, writer).await
}

/// The TCP connection, and TLS over it for `amqps://`.
async fn connect(e: &Endpoint, tls: Option<tokio_rustls::TlsConnector>) -> Result<(Reader, Writer), String> {
    let tcp = tokio::net::TcpStream::connect((e.host.as_str(), e.port))
        .await
        .map_err(|err| err.to_string())?;
    tcp.set_nodelay(true).map_err(|err| err.to_string())?;
    let Some(connector) = tls else {
        let (r, w) = tcp.into_split();
        return Ok((Box::new(r), Box::new(w)));
    };
    let name = rustls_pki_types::ServerName::try_from(e.host.clone())
        .map_err(|err| format!("invalid host name \"{}\": {err}", e.host))?;
    let tls = connector
        .connect(name, tcp)
        .await
        .map_err(|err| err.to_string())?;
    let (r, w) = tokio::io::split(tls);
    Ok((Box::new(r), Box::new(w)))
}

/// `connection.start` (version 0-9 and our mechanism required), answered
/// with `start-ok`.
async fn start_ok(e: &Endpoint, reader: &mut FrameReader<Reader>, writer: &mut Writer) -> Result<(), String> {
    let start = expect(reader, writer, id::CONNECTION_START).await?;
    let Ok(Method::ConnectionStart {
        version, mechanisms, ..
    }) = start.method()
    else {
        return Err("a malformed connection.start".into());
    };
    if version != (0, 9) {
        let v = Violation::new(
            wire::COMMAND_INVALID,
            format!("the broker speaks AMQP {}-{}, not 0-9-1", version.0, version.1),
        );
        refuse(writer, &v).await;
        return Err(v.text);
    }
    let offered = String::from_utf8_lossy(mechanisms);
    if !offered.split(' ').any(|m| m == e.auth.name()) {
        return Err(format!(
            "the broker does not offer {} authentication (it offers: {offered})",
            e.auth.name()
        ));
    }
    let response = auth_response(e);
    let name = e.name.clone().unwrap_or_else(program_name);
    let start_ok = Method::ConnectionStartOk {
        client_properties: Table::Fields(&client_properties(&name)),
        mechanism: e.auth.name(),
        response: &response,
        locale: "en_US",
    };
    let mut out = Vec::with_capacity(256);
    wire::method_frame(&mut out, 0, &start_ok);
    send(writer, &mut out).await.map_err(|err| err.to_string())?;
    Ok(())
}

/// `connection.tune` answered with `tune-ok` (frame_max and heartbeat
/// agreed), then `open` of the vhost.
async fn tune_and_open(
    e: &Endpoint,
    mut reader: FrameReader<Reader>,
    mut writer: Writer,
) -> Result<Opened, String> {
    let mut out = Vec::with_capacity(256);
    let tune = expect(&mut reader, &mut writer, id::CONNECTION_TUNE).await?;
    let Ok(Method::ConnectionTune(offer)) = tune.method() else {
        return Err("a malformed connection.tune".into());
    };
    let frame_max = match offer.frame_max {
        0 => wire::FRAME_MAX,
        n if n < wire::FRAME_MIN_SIZE => {
            return Err(format!("the broker's frame_max of {n} is below the spec's 4096"))
        }
        n => n.min(wire::FRAME_MAX),
    };
    let heartbeat = e.heartbeat.unwrap_or(offer.heartbeat);
    let tuned = Tune {
        channel_max: offer.channel_max,
        frame_max,
        heartbeat,
    };
    wire::method_frame(&mut out, 0, &Method::ConnectionTuneOk(tuned));
    wire::method_frame(&mut out, 0, &Method::ConnectionOpen { vhost: &e.vhost });
    send(&mut writer, &mut out).await.map_err(|err| err.to_string())?;
    reader.frame_max = frame_max as usize;
    expect(&mut reader, &mut writer, id::CONNECTION_OPEN_OK).await?;
    Ok(Opened {
        reader,
        writer,
        frame_max: frame_max as usize,
        channel_max: if offer.channel_max == 0 {
            u16::MAX
        } else {
            offer.channel_max
        },
        heartbeat: Duration::from_secs(heartbeat.into()),
    })
}

/// The SASL response of the endpoint's mechanism.
fn auth_response(e: &Endpoint) -> Vec<u8> {
    match e.auth {
        Auth::Plain => format!("\0{}\0{}", e.user, e.password).into_bytes(),
        Auth::AmqPlain => {
            // RabbitMQ reads AMQPLAIN's response as a table's entries,
            // without the table's length.
            let mut t = Vec::new();
            let fields = [
                ("LOGIN", FieldValue::LongStr(e.user.as_bytes())),
                ("PASSWORD", FieldValue::LongStr(e.password.as_bytes())),
            ];
            Table::Fields(&fields).encode(&mut t);
            t.split_off(4)
        }
        // The identity is the client certificate's.
        Auth::External => Vec::new(),
    }
}

/// The client properties of `start-ok`: who we are, and the capabilities
/// RabbitMQ then uses (nacks, blocked notices, a `basic.cancel` when a
/// consumed queue is deleted, a clear error on a wrong password).
fn client_properties(name: &str) -> [(&str, FieldValue<'_>); 5] {
    const CAPABILITIES: &[(&str, FieldValue)] = &[
        ("publisher_confirms", FieldValue::Bool(true)),
        ("basic.nack", FieldValue::Bool(true)),
        ("connection.blocked", FieldValue::Bool(true)),
        ("consumer_cancel_notify", FieldValue::Bool(true)),
        ("authentication_failure_close", FieldValue::Bool(true)),
    ];
    [
        ("product", FieldValue::LongStr(b"swpt-gateway")),
        (
            "version",
            FieldValue::LongStr(env!("CARGO_PKG_VERSION").as_bytes()),
        ),
        ("platform", FieldValue::LongStr(b"Rust")),
        ("connection_name", FieldValue::LongStr(name.as_bytes())),
        ("capabilities", FieldValue::Table(Table::Fields(CAPABILITIES))),
    ]
}

/// Writes and empties `out`.
async fn send(writer: &mut Writer, out: &mut Vec<u8>) -> io::Result<()> {
    writer.write_all(out).await?;
    writer.flush().await?;
    out.clear();
    Ok(())
}

/// Says `connection.close` for a violation during the handshake, and
/// shuts the socket (best effort: the handshake fails anyway).
async fn refuse(writer: &mut Writer, v: &Violation) {
    let mut out = Vec::new();
    let (text, class, method) = (v.text.as_str(), 0, 0);
    let close = Method::ConnectionClose(Reason {
        code: v.code,
        text,
        class,
        method,
    });
    wire::method_frame(&mut out, 0, &close);
    let _ = send(writer, &mut out).await;
    let _ = writer.shutdown().await;
}

/// The next method before the connection's tasks start, which must be
/// `want`. A `connection.close` instead is RabbitMQ's refusal: answered
/// with `close-ok`, and its reason is the error.
async fn expect(
    reader: &mut FrameReader<Reader>,
    writer: &mut Writer,
    want: (u16, u16),
) -> Result<wire::Frame, String> {
    loop {
        let frame = match reader.next().await {
            Ok(frame) => frame,
            Err(ReadError::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err("the broker closed the connection during the handshake".into())
            }
            Err(ReadError::Io(e)) => return Err(e.to_string()),
            Err(ReadError::Violation(v)) => {
                refuse(writer, &v).await;
                return Err(v.text);
            }
        };
        if frame.kind == wire::FRAME_HEARTBEAT {
            continue;
        }
        let got = frame.method_id();
        if got == Some(want) {
            return Ok(frame);
        }
        let refusal = match frame.method() {
            Ok(Method::ConnectionClose(r)) | Ok(Method::ChannelClose(r)) => {
                Some((r.code, r.text.to_string()))
            }
            _ => None,
        };
        if let Some((code, text)) = refusal {
            let mut out = Vec::new();
            let ok = match got {
                Some(id::CHANNEL_CLOSE) => Method::ChannelCloseOk,
                _ => Method::ConnectionCloseOk,
            };
            wire::method_frame(&mut out, frame.channel, &ok);
            let _ = send(writer, &mut out).await;
            return Err(format!("{code} {text}"));
        }
        let v = Violation::new(
            wire::COMMAND_INVALID,
            format!(
                "{} where {} was expected",
                got.map_or_else(|| format!("a frame of type {}", frame.kind), wire::method::name),
                wire::method::name(want)
            ),
        );
        refuse(writer, &v).await;
        return Err(v.text);
    }
}

/// Writes what is queued (the control frames always, the outbox unless
/// held), a heartbeat when nothing was written for half the heartbeat
/// interval, and `connection.close` when asked; then keeps the socket
/// open until the reader has ended (RabbitMQ's `close-ok`, or the
/// deadline), and shuts it.
async fn write_loop<S: ConnState>(conn: Arc<Conn<S>>, mut writer: Writer, heartbeat: Duration) {
    let mut batch = Vec::with_capacity(16 * 1024);
    let mut last_write = tokio::time::Instant::now();
    let result: io::Result<()> = async {
        loop {
            let (close, gone) = take_batch(&conn, &mut batch);
            if !batch.is_empty() {
                send(&mut writer, &mut batch).await?;
                if batch.capacity() > OUTBOX_LIMIT {
                    batch = Vec::with_capacity(16 * 1024);
                }
                last_write = tokio::time::Instant::now();
                conn.drained.notify_waiters();
            }
            if let Some(c) = close {
                return send_close(&conn, &mut writer, &c).await;
            }
            if gone {
                return Ok(());
            }
            let beat = last_write + heartbeat / 2;
            tokio::select! {
                _ = conn.wake_writer.notified() => {}
                _ = tokio::time::sleep_until(beat), if !heartbeat.is_zero() => {
                    wire::heartbeat(&mut batch);
                    send(&mut writer, &mut batch).await?;
                    last_write = tokio::time::Instant::now();
                }
            }
        }
    }
    .await;
    match result {
        Ok(()) => {
            let _ = tokio::time::timeout(CLOSE_WAIT, writer.shutdown()).await;
        }
        Err(e) => {
            tracing::warn!("writing to RabbitMQ failed: {e}");
            conn.state().fail_all(BridgeError::ConnectionLost);
            conn.drained.notify_waiters();
        }
    }
}

/// Writes `connection.close`, then keeps the socket open until the
/// reader has ended (RabbitMQ's `close-ok`, or the deadline).
async fn send_close<S: ConnState>(conn: &Conn<S>, writer: &mut Writer, c: &CloseRequest) -> io::Result<()> {
    let reason = Reason {
        code: c.code,
        text: &c.text,
        class: 0,
        method: 0,
    };
    let mut out = Vec::with_capacity(64);
    wire::method_frame(&mut out, 0, &Method::ConnectionClose(reason));
    send(writer, &mut out).await?;
    conn.state().out().close_sent = Some(Instant::now());
    conn.ended.notify_waiters();
    conn.until(|o| o.gone).await;
    Ok(())
}

/// Moves what is to be written now into `batch`: the control frames, and
/// the outbox unless it is held (dropped when the connection closes for a
/// violation, or while held). Returns the close to send once that is out,
/// and whether the connection is gone.
fn take_batch<S: ConnState>(conn: &Conn<S>, batch: &mut Vec<u8>) -> (Option<CloseRequest>, bool) {
    let mut state = conn.state();
    let held = state.held();
    let out = state.out();
    std::mem::swap(&mut out.control, batch);
    let discard = out.close.as_ref().is_some_and(|c| !c.flush_first || held);
    if discard {
        out.outbox.clear();
    } else if !held {
        batch.append(&mut out.outbox);
    }
    let close = match out.outbox.is_empty() {
        true => out.close.take(),
        false => None,
    };
    (close, out.gone)
}

/// What ended a connection's reader.
enum End {
    /// The broker's `close-ok` to ours, or a deadline after it.
    Closed,
    Failed(BridgeError),
}

/// Reads what RabbitMQ sends: the connection's own methods here, the
/// rest to `handle`. Ends with the connection (a close, a failure, a
/// violation, or silence longer than two heartbeat intervals), failing
/// what waits on it; then waits a little for the writer and stops it.
async fn read_loop<S, H>(
    conn: Arc<Conn<S>>,
    mut reader: FrameReader<Reader>,
    heartbeat: Duration,
    writer: JoinHandle<()>,
    mut handle: H,
) where
    S: ConnState,
    H: FnMut(&Conn<S>, Arrival) -> Result<(), Violation>,
{
    // The writer ends with the reader, even when the reader is aborted.
    let mut writer = AbortOnDrop(writer);
    let silence = if heartbeat.is_zero() {
        Duration::from_secs(u32::MAX.into())
    } else {
        heartbeat * 2
    };
    let mut assembler = Assembler::default();
    let close_deadline = async {
        conn.until(|o| o.close_sent.is_some()).await;
        tokio::time::sleep(CLOSE_WAIT).await;
    };
    tokio::pin!(close_deadline);
    let quiet = tokio::time::sleep(silence);
    tokio::pin!(quiet);
    let end = loop {
        let frame = tokio::select! {
            biased;
            frame = reader.next() => frame,
            _ = &mut close_deadline => break End::Closed,
            _ = &mut quiet => {
                tracing::warn!("RabbitMQ sent nothing for {silence:?}: the connection is dead");
                break End::Failed(BridgeError::ConnectionLost);
            }
        };
        quiet.as_mut().reset(tokio::time::Instant::now() + silence);
        let frame = match frame {
            Ok(frame) => frame,
            Err(e) => break read_failed(&conn, e),
        };
        match on_frame(&conn, frame, &mut assembler, &mut handle) {
            Ok(None) => {}
            Ok(Some(end)) => break end,
            Err(v) => {
                conn.close_for(&v);
            }
        }
    };
    {
        let mut state = conn.state();
        state.fail_all(match end {
            End::Closed => BridgeError::ConnectionLost,
            End::Failed(e) => e,
        });
        state.out().gone = true;
    }
    conn.wake_all();
    let _ = tokio::time::timeout(CLOSE_WAIT, &mut writer.0).await;
}

/// A read that failed: the connection is lost, or (a frame that breaks
/// the protocol) closed with the violation's code, as the stream cannot
/// be read further.
fn read_failed<S: ConnState>(conn: &Conn<S>, e: ReadError) -> End {
    match e {
        ReadError::Io(e) => {
            if e.kind() != io::ErrorKind::UnexpectedEof {
                tracing::warn!("reading from RabbitMQ failed: {e}");
            }
            End::Failed(BridgeError::ConnectionLost)
        }
        ReadError::Violation(v) => End::Failed(conn.close_for(&v)),
    }
}

/// One frame: the connection's own (channel 0), a channel's close or
/// flow, or the owner's (with its content); frames of a closing
/// connection or channel are dropped, as the spec says.
fn on_frame<S, H>(
    conn: &Conn<S>,
    frame: wire::Frame,
    assembler: &mut Assembler,
    handle: &mut H,
) -> Result<Option<End>, Violation>
where
    S: ConnState,
    H: FnMut(&Conn<S>, Arrival) -> Result<(), Violation>,
{
    if frame.kind == wire::FRAME_HEARTBEAT {
        return Ok(None);
    }
    if frame.channel == 0 {
        return connection_method(conn, &frame);
    }
    let (closing, channel) = {
        let mut state = conn.state();
        let channel = state.channel(frame.channel);
        let out = state.out();
        (out.close.is_some() || out.close_sent.is_some(), channel)
    };
    let close_method = matches!(frame.method_id(), Some(id::CHANNEL_CLOSE | id::CHANNEL_CLOSE_OK));
    match channel {
        ChannelState::Unknown => {
            return Err(Violation::new(
                wire::CHANNEL_ERROR,
                format!("a frame on channel {}, which is not open", frame.channel),
            ))
        }
        ChannelState::Closing if !close_method => return Ok(None),
        _ if closing => return Ok(None),
        _ => {}
    }
    if close_method {
        assembler.forget(frame.channel);
    }
    let Some(arrival) = assembler.push(frame)? else {
        return Ok(None);
    };
    channel_method(conn, arrival, handle)?;
    Ok(None)
}

/// A channel's method: its close and flow are the connection's, the rest
/// the owner's.
fn channel_method<S, H>(conn: &Conn<S>, arrival: Arrival, handle: &mut H) -> Result<(), Violation>
where
    S: ConnState,
    H: FnMut(&Conn<S>, Arrival) -> Result<(), Violation>,
{
    let ch = arrival.method.channel;
    match arrival.method.method()? {
        Method::ChannelClose(r) => {
            if r.code != 404 {
                // 404 is the answer to a check (a passive declare).
                tracing::warn!("RabbitMQ closed channel {ch}: {} {}", r.code, r.text);
            }
            let mut state = conn.state();
            state.channel_closed(ch, Some((r.code, r.text.to_string())));
            wire::method_frame(&mut state.out().outbox, ch, &Method::ChannelCloseOk);
            drop(state);
            conn.wake_all();
        }
        Method::ChannelCloseOk => {
            conn.state().channel_closed(ch, None);
            conn.wake_all();
        }
        Method::ChannelFlow { active } => {
            conn.state().flow(ch, active);
            wire::method_frame(
                &mut conn.state().out().control,
                ch,
                &Method::ChannelFlowOk { active },
            );
            conn.wake_writer.notify_one();
        }
        _ => handle(conn, arrival)?,
    }
    Ok(())
}

/// The connection-level methods: RabbitMQ's close (answered; the
/// connection ends with its reason), the `close-ok` of ours, blocked and
/// unblocked.
fn connection_method<S: ConnState>(conn: &Conn<S>, frame: &wire::Frame) -> Result<Option<End>, Violation> {
    if frame.kind != wire::FRAME_METHOD {
        return Err(Violation::new(wire::UNEXPECTED_FRAME, "content on channel 0"));
    }
    match frame.method()? {
        Method::ConnectionClose(r) => {
            tracing::warn!("RabbitMQ closed the connection: {} {}", r.code, r.text);
            conn.state().out().refused = Some((r.code, r.text.to_string()));
            conn.send_control(&Method::ConnectionCloseOk);
            let error = BridgeError::Amqp(format!("RabbitMQ closed the connection: {} {}", r.code, r.text));
            Ok(Some(End::Failed(error)))
        }
        Method::ConnectionCloseOk if conn.state().out().close_sent.is_some() => Ok(Some(End::Closed)),
        Method::ConnectionBlocked { reason } => {
            tracing::warn!("RabbitMQ blocked publishing on the connection: {reason}");
            conn.state().out().blocked = Some((reason.to_string(), Instant::now()));
            conn.wake_all();
            Ok(None)
        }
        Method::ConnectionUnblocked => {
            let mut state = conn.state();
            let out = state.out();
            if let Some((reason, since)) = out.blocked.take() {
                tracing::warn!(
                    "RabbitMQ unblocked publishing on the connection after {:.1} s ({reason})",
                    since.elapsed().as_secs_f64()
                );
            }
            out.unblocked_at = Some(Instant::now());
            drop(state);
            conn.wake_all();
            Ok(None)
        }
        other => Err(Violation::new(
            wire::COMMAND_INVALID,
            format!("an unexpected {} on channel 0", wire::method::name(other.id())),
        )),
    }
}

/// A task aborted when this is dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
