//! Delivery reports: a signed JSON POST to the tenant's callback URL for every sent,
//! deferred, failed, cancelled and suppressed message, retried on a schedule, each try recorded as a
//! `CallbackAttempted` event on `delivery-report/<message id>`.
//!
//! The worker follows the log from the start and keeps only what the log says (see
//! [`state`]): which tenants have a callback, which reports are owed, and when each is next
//! due. A report is owed when the tenant had a callback at that point in the log; it is
//! sent to the URL current when the try is made. A report whose last try was delivered or
//! gave up is done. Nothing is sent before the worker has caught up with the head as of
//! its start, so a report delivered before a restart is not sent again; a report whose try
//! was made but not yet recorded when the process died is sent again (at least once), and
//! receivers dedupe on `Postledger-Event-Id`.
//!
//! Receivers check `Postledger-Signature` against [`signature`] of `Postledger-Timestamp`
//! and the raw body, with the secret shown when the callback was set.

mod send;
mod state;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use eventlog::{EventLog, RecordedEvent};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::seal::MasterKey;

/// The actor of every `CallbackAttempted`.
const ACTOR: &str = "delivery-reports";
/// Events read from the log at a time.
const BATCH: usize = 512;
/// The longest single sleep; the due time is recomputed on waking, so this only bounds
/// how far a wall-clock jump can delay a try.
const MAX_SLEEP: Duration = Duration::from_secs(60);

#[derive(Clone, Debug)]
pub struct ReportConfig {
    pub master_key: MasterKey,
    /// The delay after try 1, 2, …; the try after the last delay is the last one.
    pub retry_schedule: Vec<Duration>,
    /// Per HTTP request, connecting included.
    pub timeout: Duration,
    /// Most requests in flight at once.
    pub concurrency: usize,
}

impl ReportConfig {
    /// Retries after 10 s, 1 min, 5 min, 30 min, 2 h and 6 h; 10 s per request; 16 at once.
    pub fn new(master_key: MasterKey) -> Self {
        ReportConfig {
            master_key,
            retry_schedule: [10, 60, 300, 1800, 7200, 21600]
                .into_iter()
                .map(Duration::from_secs)
                .collect(),
            timeout: Duration::from_secs(10),
            concurrency: 16,
        }
    }
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct ReportStatus {
    /// The worker has folded the log up to its head as of the start, and sends.
    pub caught_up: bool,
    /// Reports owed and neither delivered nor given up (in flight included).
    pub pending: usize,
    /// Tries answered 2xx since this worker started.
    pub delivered: u64,
    /// Tries that failed since this worker started.
    pub failed_tries: u64,
}

#[derive(Default)]
struct Counters {
    caught_up: AtomicBool,
    pending: AtomicUsize,
    delivered: AtomicU64,
    failed_tries: AtomicU64,
}

struct Shared {
    stop: watch::Sender<bool>,
    task: tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    counters: Arc<Counters>,
}

/// The running worker; clones share it.
#[derive(Clone)]
pub struct DeliveryReports {
    shared: Arc<Shared>,
}

impl DeliveryReports {
    /// Starts the worker on the current tokio runtime. It runs until [`DeliveryReports::stop`]
    /// (dropping every handle leaves it running).
    pub fn start(log: EventLog, config: ReportConfig) -> DeliveryReports {
        let start_head = log.head();
        let (stop, stop_rx) = watch::channel(false);
        let counters = Arc::new(Counters::default());
        let ctx = Arc::new(send::Context {
            log: log.clone(),
            client: send::client(config.timeout),
            master_key: config.master_key.clone(),
            schedule_len: config.retry_schedule.len(),
        });
        if let Err(e) = &ctx.client {
            tracing::error!(error = %e, "delivery reports cannot be sent");
        }
        let worker = Worker {
            log,
            ctx,
            state: state::State::new(config.retry_schedule.clone()),
            concurrency: config.concurrency.max(1),
            counters: counters.clone(),
            tries: JoinSet::new(),
            in_flight: HashMap::new(),
        };
        let task = tokio::spawn(worker.run(stop_rx, start_head));
        DeliveryReports {
            shared: Arc::new(Shared {
                stop,
                task: tokio::sync::Mutex::new(Some(task)),
                counters,
            }),
        }
    }

    /// Stops taking new tries, waits for the tries in flight to end and be recorded (each
    /// is bounded by the request timeout), and returns once the worker has ended.
    pub async fn stop(&self) {
        self.shared.stop.send_replace(true);
        let mut task = self.shared.task.lock().await;
        if let Some(handle) = task.take() {
            if let Err(e) = handle.await {
                tracing::error!(error = %e, "the delivery report worker ended abnormally");
            }
        }
    }

    pub fn status(&self) -> ReportStatus {
        let c = &self.shared.counters;
        ReportStatus {
            caught_up: c.caught_up.load(Ordering::Relaxed),
            pending: c.pending.load(Ordering::Relaxed),
            delivered: c.delivered.load(Ordering::Relaxed),
            failed_tries: c.failed_tries.load(Ordering::Relaxed),
        }
    }
}

/// The signature header value for a body; public so the docs/tests/receivers can check it.
/// `v1=` followed by the hex HMAC-SHA256, keyed with the secret, of `"{timestamp}.{body}"`.
pub fn signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        // HMAC takes a key of any length, so this cannot happen; an empty signature
        // verifies against nothing.
        return String::new();
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1={}", hex::encode(mac.finalize().into_bytes()))
}

struct Worker {
    log: EventLog,
    ctx: Arc<send::Context>,
    state: state::State,
    concurrency: usize,
    counters: Arc<Counters>,
    tries: JoinSet<domain::delivery_report::CallbackAttempted>,
    /// The report each running try belongs to, so a try whose task dies is not lost.
    in_flight: HashMap<tokio::task::Id, Uuid>,
}

impl Worker {
    async fn run(mut self, mut stop: watch::Receiver<bool>, start_head: u64) {
        let (batch_tx, mut batches) = mpsc::channel(4);
        let reader = tokio::spawn(follow(self.log.clone(), batch_tx));
        let mut caught_up = start_head == 0;
        let mut stopping = *stop.borrow_and_update();
        let mut stop_open = true;
        self.counters.caught_up.store(caught_up, Ordering::Relaxed);
        loop {
            if caught_up && !stopping {
                self.launch_due();
            }
            self.counters
                .pending
                .store(self.state.pending(), Ordering::Relaxed);
            if stopping && self.tries.is_empty() {
                break;
            }
            let wake = match self.state.next_due() {
                Some(due) if caught_up && !stopping && self.tries.len() < self.concurrency => {
                    Some(deadline(due))
                }
                _ => None,
            };
            tokio::select! {
                changed = stop.changed(), if stop_open && !stopping => match changed {
                    Ok(()) => stopping = *stop.borrow_and_update(),
                    // Every handle is gone: nobody can stop the worker any more, and it
                    // keeps running.
                    Err(_) => stop_open = false,
                },
                batch = batches.recv(), if !stopping => match batch {
                    Some(batch) => {
                        self.fold(&batch);
                        if !caught_up && batch.last().is_some_and(|r| r.position >= start_head) {
                            caught_up = true;
                            self.counters.caught_up.store(true, Ordering::Relaxed);
                            tracing::info!(
                                pending = self.state.pending(),
                                "delivery reports caught up with the log"
                            );
                        }
                    }
                    None => {
                        tracing::warn!("the log closed; delivery reports stop");
                        stopping = true;
                    }
                },
                Some(joined) = self.tries.join_next_with_id(), if !self.tries.is_empty() => {
                    self.finished(joined);
                }
                () = sleep_until(wake), if wake.is_some() => {}
            }
        }
        reader.abort();
        self.counters.caught_up.store(false, Ordering::Relaxed);
    }

    fn fold(&mut self, batch: &[RecordedEvent]) {
        for rec in batch {
            self.state.fold(rec);
        }
    }

    fn launch_due(&mut self) {
        let now = Utc::now();
        while self.tries.len() < self.concurrency {
            let Some(job) = self.state.take_due(now) else {
                break;
            };
            let report_of = job.event_id;
            let handle = self.tries.spawn(send::attempt(self.ctx.clone(), job));
            self.in_flight.insert(handle.id(), report_of);
        }
    }

    fn finished(
        &mut self,
        joined: Result<
            (tokio::task::Id, domain::delivery_report::CallbackAttempted),
            tokio::task::JoinError,
        >,
    ) {
        match joined {
            Ok((id, attempt)) => {
                self.in_flight.remove(&id);
                let counter = if attempt.delivered {
                    &self.counters.delivered
                } else {
                    &self.counters.failed_tries
                };
                counter.fetch_add(1, Ordering::Relaxed);
                self.state.finish(&attempt);
            }
            Err(e) => {
                tracing::error!(error = %e, "a delivery report try ended without an outcome");
                self.counters.failed_tries.fetch_add(1, Ordering::Relaxed);
                if let Some(report_of) = self.in_flight.remove(&e.id()) {
                    self.state.abandon(report_of, Utc::now());
                }
            }
        }
    }
}

/// Reads the log from its start into `tx`, so that the worker's select never cancels a
/// read half-way.
async fn follow(log: EventLog, tx: mpsc::Sender<Vec<RecordedEvent>>) {
    // Reports may wait a few milliseconds for more events rather than wake at every group
    // commit (see `eventlog::Subscription::linger`).
    let mut subscription = log
        .subscribe(0)
        .linger(std::time::Duration::from_millis(5), 256);
    loop {
        match subscription.next_batch(BATCH).await {
            Ok(batch) => {
                if tx.send(batch).await.is_err() {
                    return;
                }
            }
            Err(eventlog::Error::Closed) => return,
            Err(e) => {
                // The subscription does not advance past a failed read, so retrying is
                // safe; the pause keeps a persistent failure from spinning.
                tracing::error!(error = %e, "delivery reports could not read the log; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// The monotonic instant at which `due` (wall clock) arrives, at most [`MAX_SLEEP`] away.
fn deadline(due: DateTime<Utc>) -> tokio::time::Instant {
    let wait = (due - Utc::now())
        .to_std()
        .unwrap_or(Duration::ZERO)
        .min(MAX_SLEEP);
    tokio::time::Instant::now() + wait
}

async fn sleep_until(wake: Option<tokio::time::Instant>) {
    if let Some(at) = wake {
        tokio::time::sleep_until(at).await;
    }
}
