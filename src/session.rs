//! What both STOMP sides share: timing, heart-beat negotiation, the
//! silence watchdog, and the frames the protocol texts live in.

use std::time::{Duration, Instant};
use stomp_codec::Frame;

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

    /// Negotiates with the other side's `heart-beat` (cx, cy): returns
    /// (how often we send, how often we expect data), `None` for off.
    pub fn negotiate(&self, theirs: (u64, u64)) -> (Option<Duration>, Option<Duration>) {
        let (cx, cy) = theirs;
        let ours_send = self.heartbeat_send.as_millis() as u64;
        let ours_recv = self.heartbeat_recv.as_millis() as u64;
        let send = (ours_send != 0 && cy != 0).then(|| Duration::from_millis(ours_send.max(cy)));
        let recv = (cx != 0 && ours_recv != 0).then(|| Duration::from_millis(cx.max(ours_recv)));
        (send, recv)
    }
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

/// Tracks when data last arrived.
#[derive(Debug)]
pub struct Watchdog {
    last: Instant,
    limit: Option<Duration>,
}

impl Watchdog {
    /// `expect`: the negotiated receive interval (`None`: no watchdog).
    pub fn new(expect: Option<Duration>, timing: &Timing) -> Watchdog {
        Watchdog {
            last: Instant::now(),
            limit: expect.map(|e| e + timing.network_delay),
        }
    }

    pub fn fed(&mut self) {
        self.last = Instant::now();
    }

    /// Whether the other side has been silent for too long.
    pub fn starved(&self) -> bool {
        self.limit.is_some_and(|l| self.last.elapsed() > l)
    }
}

/// An `ERROR` frame with `message`.
pub fn error_frame(message: &str) -> Frame {
    Frame::new("ERROR").header("message", message)
}

/// A `RECEIPT` frame.
pub fn receipt_frame(receipt_id: &str) -> Frame {
    Frame::new("RECEIPT").header("receipt-id", receipt_id)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(t.negotiate((0, 0)), (None, None));
        assert_eq!(t.negotiate((1000, 1000)), (ms(5000), ms(30000)));
        assert_eq!(t.negotiate((60000, 20000)), (ms(20000), ms(60000)));
        assert_eq!(t.negotiate((0, 7000)), (ms(7000), None));
        assert_eq!(parse_heartbeat(Some("10,20")), Some((10, 20)));
        assert_eq!(parse_heartbeat(None), Some((0, 0)));
        for bad in ["", "1", "a,b", "-1,2", "1,2,3", "1,"] {
            assert_eq!(parse_heartbeat(Some(bad)), None, "{bad}");
        }
    }
}
