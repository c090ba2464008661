//! Heart-beats and the silence watchdog of one session, as one timer.

use super::{HeartBeats, Timing};
use std::time::Duration;
use tokio::time::{Instant, Interval};

/// What [`Liveness::due`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Due {
    /// Time to send a heart-beat.
    HeartBeat,
    /// The other side has sent nothing for longer than this (the
    /// expected interval plus the network delay): end the session.
    Silent(Duration),
}

/// Sends heart-beats as negotiated and watches for silence: the other
/// side is given its expected interval plus the allowed network delay,
/// looked at every `watchdog_every`.
#[derive(Debug)]
pub struct Liveness {
    send: Option<Interval>,
    check: Interval,
    last_data: Instant,
    limit: Option<Duration>,
}

impl Liveness {
    pub fn new(beats: HeartBeats, timing: &Timing) -> Liveness {
        let start = Instant::now();
        Liveness {
            send: beats
                .send
                .map(|every| tokio::time::interval_at(start + every, every)),
            check: tokio::time::interval_at(start + timing.watchdog_every, timing.watchdog_every),
            last_data: start,
            limit: beats.expect.map(|e| e + timing.network_delay),
        }
    }

    /// Data (a frame or a heart-beat) arrived.
    pub fn fed(&mut self) {
        self.last_data = Instant::now();
    }

    /// Resolves when a heart-beat is due or the other side has been
    /// silent for too long. Cancel-safe.
    pub async fn due(&mut self) -> Due {
        loop {
            let beat = async {
                match self.send.as_mut() {
                    Some(i) => i.tick().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = beat => return Due::HeartBeat,
                _ = self.check.tick() => {
                    if let Some(limit) = self.limit.filter(|l| self.last_data.elapsed() > *l) {
                        return Due::Silent(limit);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing() -> Timing {
        Timing {
            heartbeat_send: Duration::from_millis(5000),
            heartbeat_recv: Duration::from_millis(30000),
            network_delay: Duration::from_millis(100),
            watchdog_every: Duration::from_millis(50),
            connect_timeout: Duration::from_secs(10),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn beats_on_time_and_notices_silence() {
        let beats = HeartBeats {
            send: Some(Duration::from_millis(200)),
            expect: Some(Duration::from_millis(300)),
        };
        let mut l = Liveness::new(beats, &timing());
        let t0 = Instant::now();
        assert_eq!(l.due().await, Due::HeartBeat);
        assert_eq!(t0.elapsed(), Duration::from_millis(200));
        l.fed();
        let mut beats_sent = 1;
        let silent = loop {
            match l.due().await {
                Due::HeartBeat => beats_sent += 1,
                silent => break silent,
            }
        };
        // Fed at 200 ms, silent past 200 + 300 + 100 ms: the first look
        // after that is at 650 ms, after beats at 200, 400 and 600 ms.
        assert_eq!(silent, Due::Silent(Duration::from_millis(400)));
        assert_eq!(t0.elapsed(), Duration::from_millis(650));
        assert_eq!(beats_sent, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn without_heart_beats_nothing_is_due() {
        let beats = HeartBeats {
            send: None,
            expect: None,
        };
        let mut l = Liveness::new(beats, &timing());
        let r = tokio::time::timeout(Duration::from_secs(3600), l.due()).await;
        assert!(r.is_err(), "nothing due without heart-beats");
    }
}
