use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::{EventLog, RecordedEvent};

/// Follows the log in position order from an exclusive checkpoint: stored events first,
/// then live ones as they become durable. Never yields past the durable head, never skips
/// and never repeats a position.
pub struct Subscription {
    log: EventLog,
    after: u64,
    head: watch::Receiver<u64>,
    linger: Option<(std::time::Duration, u64)>,
}

impl Subscription {
    pub(crate) fn new(log: EventLog, after: u64) -> Self {
        let head = log.watch_head();
        Subscription {
            log,
            after,
            head,
            linger: None,
        }
    }

    /// When fewer than `below` new events are durable, waits up to `wait` for more before
    /// reading. A follower that applies in batches (a projection) then reads a busy log a
    /// few hundred events at a time instead of one group commit (tens of events) at a
    /// time: fewer wake-ups, trips to the blocking pool and read-model commits, for at
    /// most `wait` more lag.
    pub fn linger(mut self, wait: std::time::Duration, below: u64) -> Self {
        self.linger = Some((wait, below));
        self
    }

    /// The position of the last event handed out.
    pub fn position(&self) -> u64 {
        self.after
    }

    /// The next events, at most `max`; waits while there is nothing new.
    pub async fn next_batch(&mut self, max: usize) -> Result<Vec<RecordedEvent>> {
        loop {
            let mut head = *self.head.borrow_and_update();
            if let Some((wait, below)) = self.linger {
                if head > self.after && head - self.after < below {
                    tokio::time::sleep(wait).await;
                    head = *self.head.borrow_and_update();
                }
            }
            if head > self.after {
                let log = self.log.clone();
                let after = self.after;
                let batch = tokio::task::spawn_blocking(move || log.read_all(after, max))
                    .await
                    .map_err(|e| Error::Storage(e.to_string()))??;
                if let Some(first) = batch.first() {
                    if first.position != self.after + 1 {
                        return Err(Error::Corrupt {
                            position: self.after + 1,
                            reason: "gap in the global log".into(),
                        });
                    }
                }
                if let Some(last) = batch.last() {
                    self.after = last.position;
                    return Ok(batch);
                }
            }
            self.head.changed().await.map_err(|_| Error::Closed)?;
        }
    }
}
