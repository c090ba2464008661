//! The capped, jittered exponential back-off between two attempts of a
//! long-running loop (the client's links, the drainer's broker sessions).

use crate::shutdown::Shutdown;
use rand::Rng;
use std::time::Duration;

/// Waits that start at 0.5 s, double up to 60 s, and start over after an
/// attempt that ran for more than a minute; each wait is jittered by
/// ±50 %, so that many processes cut off together do not return together.
pub struct Backoff {
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(500);
    const MAX: Duration = Duration::from_secs(60);
    const HEALTHY: Duration = Duration::from_secs(60);

    pub fn new() -> Backoff {
        Backoff { next: Self::FIRST }
    }

    /// The wait before the next attempt, after one that ran for `lasted`.
    pub fn wait(&mut self, lasted: Duration) -> Duration {
        if lasted > Self::HEALTHY {
            self.next = Self::FIRST;
        }
        let wait = self.next.mul_f64(rand::thread_rng().gen_range(0.5..1.5));
        self.next = (self.next * 2).min(Self::MAX);
        wait
    }

    /// Logs `what` (why the attempt ended) with the wait, then waits
    /// before the next attempt, after one that ran for `lasted`. Returns
    /// `false` when shutdown came first.
    pub async fn pause(&mut self, lasted: Duration, what: &str, shutdown: &mut Shutdown) -> bool {
        let wait = self.wait(lasted);
        tracing::warn!("{what}; trying again in {:.1}s", wait.as_secs_f64());
        tokio::select! {
            _ = tokio::time::sleep(wait) => true,
            _ = shutdown.requested() => false,
        }
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_with_jitter_and_starts_over_after_a_long_attempt() {
        let mut b = Backoff::new();
        let short = Duration::from_secs(1);
        let mut base = 0.5;
        for _ in 0..12 {
            let w = b.wait(short).as_secs_f64();
            assert!(w >= base * 0.5 && w <= base * 1.5, "{w} s for a base of {base} s");
            base = (base * 2.0_f64).min(60.0);
        }
        assert_eq!(base, 60.0);
        let w = b.wait(Duration::from_secs(61)).as_secs_f64();
        assert!((0.25..=0.75).contains(&w), "{w} s after a healthy attempt");
    }
}
