//! What both STOMP sides share (SPEC section 5), below the server's and
//! the client's session loops:
//!
//! - [`framed`]: a STOMP connection's buffers and when it writes;
//! - [`Timing`]: the timing constants and heart-beat negotiation;
//! - [`frames`]: incoming frames parsed once into typed commands, and the
//!   outgoing frames, where every protocol text lives;
//! - [`liveness`]: our heart-beats and the silence watchdog, as one timer;
//! - [`batch`]: cumulative confirmations gathered into few writes (the
//!   server's RECEIPTs, the client's acks).

pub mod batch;
pub mod frames;
pub mod liveness;

pub use batch::Batch;
pub use liveness::{Due, Liveness};

use std::time::Duration;
use stomp_codec::StompCodec;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_util::codec::Framed;

/// The buffers a STOMP connection starts with: small, since a server (or
/// a `--links` client) holds many mostly idle connections; they grow
/// under load.
const START_CAPACITY: usize = 1024;

/// How many bytes of frames gather before they are written without a
/// flush: a TLS record's worth (16 KiB of plaintext at most). A burst of
/// SENDs ends with a flush anyway.
const WRITE_BATCH: usize = 16 * 1024;

/// The STOMP frames to and from one peer over `T` (the server's or the
/// client's TLS stream): what both session loops read and write.
pub type PeerStream<T> = Framed<T, StompCodec>;

/// A STOMP connection over `io`, on both sides. (`Framed::with_capacity`
/// alone would also write at every [`START_CAPACITY`] bytes: a write per
/// two SENDs.)
pub fn framed<T: AsyncRead + AsyncWrite>(io: T) -> PeerStream<T> {
    let mut conn = Framed::with_capacity(io, StompCodec::default(), START_CAPACITY);
    conn.set_backpressure_boundary(WRITE_BATCH);
    conn
}

/// Resolves at `deadline`; never without one. Cancel-safe.
pub async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// The STOMP timing constants (SPEC section 5).
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// What we offer to send (5000 ms).
    pub heartbeat_send: Duration,
    /// What we want to receive (30000 ms).
    pub heartbeat_recv: Duration,
    /// Allowed network delay on top of the expected interval (10 s).
    pub network_delay: Duration,
    /// How often the watchdog looks (5 s).
    pub watchdog_every: Duration,
    /// CONNECT/CONNECTED deadline (10 s).
    pub connect_timeout: Duration,
}

impl Timing {
    /// Our `heart-beat` header value.
    pub fn offer(&self) -> String {
        format!(
            "{},{}",
            self.heartbeat_send.as_millis(),
            self.heartbeat_recv.as_millis()
        )
    }

    /// Negotiates with the other side's `heart-beat` (cx, cy).
    pub fn negotiate(&self, theirs: (u64, u64)) -> HeartBeats {
        let (cx, cy) = theirs;
        let ours_send = self.heartbeat_send.as_millis() as u64;
        let ours_recv = self.heartbeat_recv.as_millis() as u64;
        let send = (ours_send != 0 && cy != 0).then(|| Duration::from_millis(ours_send.max(cy)));
        let recv = (cx != 0 && ours_recv != 0).then(|| Duration::from_millis(cx.max(ours_recv)));
        HeartBeats { send, expect: recv }
    }
}

/// The negotiated heart-beats of a session; `None` for off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeartBeats {
    /// How often we send (at least) something.
    pub send: Option<Duration>,
    /// How often we expect data from the other side.
    pub expect: Option<Duration>,
}

/// Parses a `heart-beat` header: two non-negative integers.
pub fn parse_heartbeat(value: Option<&str>) -> Option<(u64, u64)> {
    let Some(v) = value else {
        return Some((0, 0));
    };
    let (a, b) = v.split_once(',')?;
    let parse = |s: &str| -> Option<u64> {
        let s = s.trim();
        (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit())).then(|| s.parse().ok())?
    };
    Some((parse(a)?, parse(b)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_burst_is_written_at_its_flush_not_every_kilobyte() {
        use futures::{FutureExt, SinkExt};
        use tokio::io::AsyncReadExt;
        let (ours, mut theirs) = tokio::io::duplex(64 * 1024);
        let mut conn = framed(ours);
        // Ten SENDs of ~600 bytes: past the starting capacity, short of a
        // TLS record.
        for tag in 0..10 {
            let frame = frames::send_frame("/exchange/smp", "AccountUpdate", tag, vec![b'x'; 600]);
            conn.feed(frame).await.unwrap();
        }
        let mut buf = vec![0; 64 * 1024];
        assert!(
            theirs.read(&mut buf).now_or_never().is_none(),
            "nothing written before the flush"
        );
        SinkExt::<stomp_codec::Frame>::flush(&mut conn).await.unwrap();
        let n = theirs.read(&mut buf).await.unwrap();
        assert!(n > 10 * 600, "the whole burst at once: {n} bytes");
    }

    #[test]
    fn heartbeat_negotiation() {
        let t = Timing {
            heartbeat_send: Duration::from_millis(5000),
            heartbeat_recv: Duration::from_millis(30000),
            network_delay: Duration::from_secs(10),
            watchdog_every: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(10),
        };
        assert_eq!(t.offer(), "5000,30000");
        let ms = |v| Some(Duration::from_millis(v));
        let hb = |send, expect| HeartBeats { send, expect };
        assert_eq!(t.negotiate((0, 0)), hb(None, None));
        assert_eq!(t.negotiate((1000, 1000)), hb(ms(5000), ms(30000)));
        assert_eq!(t.negotiate((60000, 20000)), hb(ms(20000), ms(60000)));
        assert_eq!(t.negotiate((0, 7000)), hb(ms(7000), None));
        assert_eq!(parse_heartbeat(Some("10,20")), Some((10, 20)));
        assert_eq!(parse_heartbeat(None), Some((0, 0)));
        for bad in ["", "1", "a,b", "-1,2", "1,2,3", "1,"] {
            assert_eq!(parse_heartbeat(Some(bad)), None, "{bad}");
        }
    }
}
