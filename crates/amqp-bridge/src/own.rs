//! The AMQP connections of our own (the publisher's, and the one the
//! consumers of a process share): the handshake, the writer task that
//! sends a whole outbox per wake-up and heartbeats when idle, and the
//! reader loop that hands each frame to its owner and notices a dead
//! broker. What the frames mean is the owner's: [`crate::publisher`],
//! [`crate::consumer`].
//!
//! ```text
//!  callers ──encode under the state's lock──> outbox ──write_loop──> socket ──> RabbitMQ
//!                                                                                  │
//!  callers <──settled / delivered── handler (the owner's) <──read_loop── socket <──┘
//! ```

use crate::connection::{program_name, try_urls, Endpoint};
use crate::wire::{self, method, FrameReader};
use crate::{BridgeError, BrokerSettings, HeaderValue, SharedConnection};
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// Above this many unsent bytes, a publisher waits for the writer.
pub(crate) const OUTBOX_LIMIT: usize = 1024 * 1024;

/// How long a closing connection waits for RabbitMQ's `close-ok`.
pub(crate) const CLOSE_WAIT: Duration = Duration::from_secs(5);

type Reader = Box<dyn AsyncRead + Send + Unpin>;
type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// What every connection's state holds for its writer.
pub(crate) struct Out {
    /// Encoded frames not yet handed to the socket.
    pub outbox: Vec<u8>,
    /// Why the connection takes no more work, if it does not: the writer
    /// closes the connection once the outbox is out.
    pub closed: Option<String>,
    /// The connection is down: the reader has ended.
    pub gone: bool,
    /// RabbitMQ's reply code and text, when it closed the connection.
    pub refused: Option<(u16, String)>,
}

impl Out {
    /// Takes no more work, for the first reason given.
    pub fn stop(&mut self, why: &dyn std::fmt::Display) {
        if self.closed.is_none() {
            self.closed = Some(why.to_string());
        }
    }

    pub fn new() -> Out {
        Out {
            outbox: Vec::with_capacity(16 * 1024),
            closed: None,
            gone: false,
            refused: None,
        }
    }
}

/// The state of one connection, as its owner keeps it.
pub(crate) trait ConnState: Send + 'static {
    fn out(&mut self) -> &mut Out;
    /// The connection failed or ended: fail everything that waits on it.
    fn fail_all(&mut self, error: BridgeError);
}

/// One connection of our own, shared by its callers, its writer and its
/// reader.
pub(crate) struct Conn<S> {
    state: Mutex<S>,
    /// Something is in the outbox, or the connection is closing.
    pub wake_writer: Notify,
    /// The writer emptied the outbox (callers waiting for room).
    pub drained: Notify,
    /// The reader ended: the connection is gone.
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

    /// Takes no more work; the writer closes the connection once the
    /// outbox is out.
    pub fn close(&self, why: &str) {
        self.state().out().stop(&why);
        self.wake_writer.notify_one();
        self.drained.notify_waiters();
    }

    /// Resolves once the connection is gone.
    pub async fn gone(&self) {
        loop {
            let ended = self.ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            if self.state().out().gone {
                return;
            }
            ended.await;
        }
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
    pub reader: FrameReader<Reader>,
    pub writer: Writer,
    pub frame_max: usize,
    /// The highest channel number the broker allows.
    pub channel_max: u16,
    pub heartbeat: Duration,
}

impl Opened {
    /// Opens a channel in confirm mode (the publisher's) before the
    /// connection's tasks start.
    pub async fn open_confirming_channel(&mut self, channel: u16) -> io::Result<()> {
        let mut out = Vec::with_capacity(64);
        wire::method_frame(&mut out, channel, method::CHANNEL_OPEN, |o| {
            wire::short_str(o, "")
        });
        send(&mut self.writer, &mut out).await?;
        expect(&mut self.reader, method::CHANNEL_OPEN_OK).await?;
        wire::method_frame(&mut out, channel, method::CONFIRM_SELECT, |o| o.push(0));
        send(&mut self.writer, &mut out).await?;
        expect(&mut self.reader, method::CONFIRM_SELECT_OK).await?;
        Ok(())
    }

    /// Starts the writer and the reader of `conn`; `handle` takes every
    /// frame but heartbeats, and returns why the connection ends, if it
    /// does. Returns the reader's task, which ends with the connection.
    pub fn start<S, H>(self, conn: &Arc<Conn<S>>, handle: H) -> JoinHandle<()>
    where
        S: ConnState,
        H: FnMut(&Conn<S>, wire::Frame) -> io::Result<Option<BridgeError>> + Send + 'static,
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

/// Opens a connection to the broker node `conn` is on (the URLs tried in
/// turn from it).
pub(crate) async fn open_near(conn: &SharedConnection) -> Result<Opened, BridgeError> {
    let start = conn.url_index().await?;
    let broker = conn.broker();
    let (opened, _) = try_urls(broker, start, |url| async move { open(&url, broker).await }).await?;
    Ok(opened)
}

/// Opens a connection to `url`, within the settings' timeout.
pub(crate) async fn open(url: &str, broker: &BrokerSettings) -> Result<Opened, BridgeError> {
    let err = |reason: String| BridgeError::Connect {
        url: crate::redact_url(url),
        reason,
    };
    let endpoint = Endpoint::parse(url).map_err(err)?;
    // A missing or bad CA file is said before anything is tried.
    let tls = match endpoint.tls {
        true => Some(crate::tls::connector(broker.ca_file.as_deref()).map_err(err)?),
        false => None,
    };
    let timeout = broker.timeout;
    match tokio::time::timeout(timeout, handshake(&endpoint, tls)).await {
        Ok(Ok(opened)) => Ok(opened),
        Ok(Err(reason)) => Err(err(reason.to_string())),
        Err(_) => Err(err(format!("no answer within {timeout:?}"))),
    }
}

/// Connects (TCP, and TLS for `amqps://`), then the AMQP handshake:
/// protocol header, `start-ok` (PLAIN), `tune-ok`, `open`.
async fn handshake(e: &Endpoint, tls: Option<tokio_rustls::TlsConnector>) -> io::Result<Opened> {
    let tcp = tokio::net::TcpStream::connect((e.host.as_str(), e.port)).await?;
    tcp.set_nodelay(true)?;
    let (reader, mut writer): (Reader, Writer) = if let Some(connector) = tls {
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
    Ok(Opened {
        reader,
        writer,
        frame_max: frame_max as usize,
        channel_max: if channel_max == 0 { u16::MAX } else { channel_max },
        heartbeat: Duration::from_secs(heartbeat.into()),
    })
}

/// The client properties of `start-ok`: who we are, and the capabilities
/// RabbitMQ then uses (nacks, blocked notices, a `basic.cancel` when a
/// consumed queue is deleted, a clear error on a wrong password).
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
                "consumer_cancel_notify",
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
/// the heartbeat interval, and `connection.close` once the connection is
/// closed and everything before it is out.
async fn write_loop<S: ConnState>(conn: Arc<Conn<S>>, mut writer: Writer, heartbeat: Duration) {
    let mut batch = Vec::with_capacity(16 * 1024);
    let mut last_write = tokio::time::Instant::now();
    let result: io::Result<()> = async {
        loop {
            let (closing, gone) = {
                let mut state = conn.state();
                let out = state.out();
                std::mem::swap(&mut out.outbox, &mut batch);
                (out.closed.is_some(), out.gone)
            };
            if !batch.is_empty() {
                send(&mut writer, &mut batch).await?;
                if batch.capacity() > OUTBOX_LIMIT {
                    batch = Vec::with_capacity(16 * 1024);
                }
                last_write = tokio::time::Instant::now();
                conn.drained.notify_waiters();
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
    if let Err(e) = result {
        tracing::warn!("writing to RabbitMQ failed: {e}");
        conn.state().fail_all(BridgeError::ConnectionLost);
        conn.drained.notify_waiters();
    }
}

/// Reads what RabbitMQ sends and hands it to `handle`. Ends with the
/// connection (a failure, a close, or silence longer than two heartbeat
/// intervals), failing what waits on it; then waits a little for the
/// writer to send what is queued, and stops it.
async fn read_loop<S, H>(
    conn: Arc<Conn<S>>,
    mut reader: FrameReader<Reader>,
    heartbeat: Duration,
    writer: JoinHandle<()>,
    mut handle: H,
) where
    S: ConnState,
    H: FnMut(&Conn<S>, wire::Frame) -> io::Result<Option<BridgeError>>,
{
    // The writer ends with the reader, even when the reader is aborted.
    let mut writer = AbortOnDrop(writer);
    let silence = (!heartbeat.is_zero()).then(|| heartbeat * 2);
    let why = loop {
        let frame = match silence {
            Some(limit) => match tokio::time::timeout(limit, reader.next()).await {
                Ok(frame) => frame,
                Err(_) => {
                    tracing::warn!("RabbitMQ sent nothing for {limit:?}: the connection is dead");
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
        if frame.kind == wire::FRAME_HEARTBEAT {
            continue;
        }
        match handle(&conn, frame) {
            Ok(None) => {}
            Ok(Some(end)) => break end,
            Err(e) => {
                tracing::warn!("RabbitMQ sent a malformed frame: {e}");
                break BridgeError::Amqp(format!("a malformed frame from RabbitMQ: {e}"));
            }
        }
    };
    {
        let mut state = conn.state();
        state.fail_all(why);
        state.out().gone = true;
    }
    conn.wake_writer.notify_one();
    conn.drained.notify_waiters();
    conn.ended.notify_waiters();
    let _ = tokio::time::timeout(CLOSE_WAIT, &mut writer.0).await;
}

/// The connection-level methods every connection answers: RabbitMQ's
/// close (answered, and the connection ends with its reason), the
/// `close-ok` of ours, blocked / unblocked notices, and `channel.flow`.
/// Returns `None` for a method that is the owner's.
pub(crate) fn common<S: ConnState>(
    conn: &Conn<S>,
    what: &str,
    channel: u16,
    m: (u16, u16),
    mut a: wire::Args<'_>,
) -> io::Result<Option<Option<BridgeError>>> {
    match m {
        method::CONNECTION_CLOSE => {
            let (code, text) = (a.u16()?, a.short_str()?);
            tracing::warn!("RabbitMQ closed the {what} connection: {code} {text}");
            conn.state().out().refused = Some((code, text.clone()));
            conn.send(|o| wire::method_frame(o, 0, method::CONNECTION_CLOSE_OK, |_| {}));
            Ok(Some(Some(BridgeError::Amqp(format!(
                "RabbitMQ closed the connection: {code} {text}"
            )))))
        }
        method::CONNECTION_CLOSE_OK => Ok(Some(Some(BridgeError::ConnectionLost))),
        method::CONNECTION_BLOCKED => {
            tracing::warn!("RabbitMQ blocked the {what} connection: {}", a.short_str()?);
            Ok(Some(None))
        }
        method::CONNECTION_UNBLOCKED => {
            tracing::info!("RabbitMQ unblocked the {what} connection");
            Ok(Some(None))
        }
        method::CHANNEL_FLOW => {
            let active = a.u8()?;
            conn.send(|o| wire::method_frame(o, channel, method::CHANNEL_FLOW_OK, |o| o.push(active)));
            Ok(Some(None))
        }
        _ => Ok(None),
    }
}

/// A task aborted when this is dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
