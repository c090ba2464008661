//! Cumulative confirmations, gathered: the server's RECEIPTs and the
//! client's acks both confirm "everything up to here", so a few can
//! stand in for many.

use std::pin::Pin;
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// The last of the confirmations not yet passed on, with how many it
/// covers. A batch is due once a quarter of the buffer has gathered, or
/// [`Batch::DELAY`] after its oldest confirmation, whichever comes first
/// (callers also flush when nothing is left in flight). Fewer RECEIPTs
/// mean fewer writes at the server and fewer acks at the client.
#[derive(Debug)]
pub struct Batch<T> {
    last: Option<T>,
    count: usize,
    size: usize,
    since: Option<Instant>,
    /// The timer of [`Batch::due`], kept from one call to the next (a
    /// select loop calls it once per turn): set once per batch rather than
    /// made, registered and dropped on every turn.
    timer: Option<Pin<Box<Sleep>>>,
}

impl<T> Batch<T> {
    pub const DELAY: Duration = Duration::from_millis(2);

    /// A batch for a window of `buffer` messages.
    pub fn new(buffer: usize) -> Batch<T> {
        Batch {
            last: None,
            count: 0,
            size: (buffer / 4).max(1),
            since: None,
            timer: None,
        }
    }

    /// `count` more confirmations, the last of them `last`.
    pub fn add(&mut self, last: T, count: usize) {
        self.last = Some(last);
        self.count += count;
        self.since.get_or_insert_with(Instant::now);
    }

    /// Whether a quarter of the buffer has gathered.
    pub fn full(&self) -> bool {
        self.count >= self.size
    }

    /// Empties the batch: the confirmation that covers all of it.
    pub fn take(&mut self) -> Option<T> {
        self.count = 0;
        self.since = None;
        self.last.take()
    }

    /// Resolves when the oldest confirmation is due; never when the batch
    /// is empty. Cancel-safe.
    pub async fn due(&mut self) {
        let Some(since) = self.since else {
            return std::future::pending().await;
        };
        let deadline = since + Self::DELAY;
        let timer = match &mut self.timer {
            Some(t) => {
                if t.deadline() != deadline {
                    t.as_mut().reset(deadline);
                }
                t
            }
            None => self.timer.insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        timer.as_mut().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn fills_at_a_quarter_and_falls_due_after_the_delay() {
        let mut b = Batch::new(8);
        b.add(1u64, 1);
        assert!(!b.full());
        b.add(3, 2);
        assert!(b.full());
        let t0 = Instant::now();
        b.due().await;
        assert_eq!(t0.elapsed(), Batch::<u64>::DELAY);
        assert_eq!(b.take(), Some(3));
        assert_eq!(b.take(), None);
        let never = tokio::time::timeout(Duration::from_secs(60), b.due()).await;
        assert!(never.is_err(), "an empty batch is never due");

        // The next batch falls due after its own delay, though a turn is
        // cut short (a select loop drops `due` on every turn; the clock
        // counts whole milliseconds).
        b.add(4, 1);
        let t1 = Instant::now();
        let cut = tokio::time::timeout(Duration::from_millis(1), b.due()).await;
        assert!(cut.is_err(), "not due yet");
        b.due().await;
        assert_eq!(t1.elapsed(), Batch::<u64>::DELAY);
        assert_eq!(b.take(), Some(4));
    }
}
