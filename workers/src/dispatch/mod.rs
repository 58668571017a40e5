//! The SMTP dispatcher.
//!
//! It follows the log from the start and keeps, per pending message, only a small entry
//! (see `queue`). It sends nothing until it has caught up with the log head as of its
//! start: before that, a MessageSent further down the log may not have been seen yet, and
//! the message would go out twice.
//!
//! Tasks:
//! - a *reader* (`follow`) turns log records into small facts;
//! - the *core* (here) owns the queue and the tenants' mail settings, takes due messages
//!   in dispatch order, and sleeps until exactly the next due time;
//! - one task per *round* (`round`) reads the message back, builds the MIME (`mime`),
//!   sends through the tenant's relays or into the file outbox, and records the round as
//!   one append.
//!
//! Right before each SMTP transaction (and before writing the file outbox) a round drops
//! the recipients that are suppressed for the message's category at that moment
//! (`suppress`): the reader keeps the suppression index, and the round first waits until
//! the index holds everything durable in the log. The dropped recipients are recorded
//! (`RecipientsSuppressed`); when none is left, nothing is sent and the message ends
//! suppressed.
//!
//! A round's result is not applied to the queue directly: the entry stays in flight until
//! the core has followed the log past the round's append, and then takes whatever the log
//! says. The log stays the only source of truth, and a restart rebuilds exactly the same
//! queue.
mod follow;
mod mime;
mod queue;
mod rate;
mod round;
mod suppress;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use domain::mail_settings::{self, MailSettings, MailSettingsEvent};
use eventlog::{BlobStore, EventLog};
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{sleep_until, Instant};
use uuid::Uuid;

use crate::seal::MasterKey;
use follow::{Batch, Fact, MessageFact};
use queue::{MsgKey, Queue};
use rate::RelayKey;
use round::{Concluded, Ctx, Done, Job};
use suppress::Screen;

/// How long `stop` waits for rounds in flight to be recorded before abandoning them.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Batches the reader may be ahead of the core.
const FACT_CHANNEL: usize = 4;

#[derive(Clone, Debug)]
pub struct DispatchConfig {
    /// The file outbox: `<outbox_dir>/<tenant>/<message id>.eml`, used by tenants without
    /// any relay.
    pub outbox_dir: PathBuf,
    /// Attachment bytes, by digest.
    pub blobs: BlobStore,
    /// Opens the relay passwords.
    pub master_key: MasterKey,
    /// The delay after the 1st, 2nd, … deferral; the last entry repeats.
    pub retry_schedule: Vec<Duration>,
    /// A message still deferred this long after it became due fails (permanent = false).
    pub max_age: Duration,
    /// Each delay is multiplied by a random factor in [1 - jitter, 1 + jitter].
    pub jitter: f64,
    /// Messages in flight at once, over all relays.
    pub concurrency: usize,
    /// Per SMTP command and connection.
    pub smtp_timeout: Duration,
    /// The EHLO name.
    pub hello_name: String,
    /// One-click unsubscribe links (RFC 8058) in marketing mail; `None` adds no header.
    pub unsubscribe: Option<UnsubscribeLinks>,
    /// When set, the envelope sender (return path) is `bounces+<message id>@<this domain>`
    /// (VERP), so a bounce names its message even when it quotes no headers.
    pub bounce_domain: Option<String>,
    /// Extra trust anchors (DER) for relays' TLS certificates, beside the webpki roots.
    pub relay_roots: Vec<Vec<u8>>,
}

/// Where the `List-Unsubscribe` header of marketing mail points, and the key that signs
/// its tokens (`inbound::unsubscribe::token` over tenant, message id and recipient).
#[derive(Clone)]
pub struct UnsubscribeLinks {
    /// The public base URL of the API, e.g. `http://127.0.0.1:8080` (a trailing slash is
    /// ignored): the link is `{base_url}/unsubscribe/{token}`.
    pub base_url: String,
    /// With a domain, a second URI `mailto:unsubscribe+{token}@{domain}` is offered.
    pub mailto_domain: Option<String>,
    /// The token key: the master key derived with
    /// [`crate::seal::UNSUBSCRIBE_KEY_CONTEXT`], the same key the API verifies with.
    pub key: [u8; 32],
}

/// Never shows the key.
impl std::fmt::Debug for UnsubscribeLinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnsubscribeLinks")
            .field("base_url", &self.base_url)
            .field("mailto_domain", &self.mailto_domain)
            .finish_non_exhaustive()
    }
}

impl DispatchConfig {
    pub fn new(outbox_dir: impl Into<PathBuf>, blobs: BlobStore, master_key: MasterKey) -> Self {
        let m = |n: u64| Duration::from_secs(60 * n);
        DispatchConfig {
            outbox_dir: outbox_dir.into(),
            blobs,
            master_key,
            retry_schedule: vec![m(1), m(5), m(15), m(30), m(60), m(120), m(240)],
            max_age: Duration::from_secs(24 * 3600),
            jitter: 0.1,
            concurrency: 64,
            smtp_timeout: Duration::from_secs(30),
            hello_name: "postledger.localhost".into(),
            unsubscribe: None,
            bounce_domain: None,
            relay_roots: Vec::new(),
        }
    }
}

/// What the dispatcher is doing; the counters count rounds recorded since start.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DispatchStatus {
    /// It has read the log up to the head as of its start, and sends.
    pub caught_up: bool,
    /// Messages waiting (due or not), not counting those in flight.
    pub pending: usize,
    pub in_flight: usize,
    pub sent: u64,
    pub deferred: u64,
    pub failed: u64,
    /// Rounds that found every recipient suppressed (and sent nothing).
    pub suppressed: u64,
}

#[derive(Default)]
struct Cells {
    caught_up: AtomicBool,
    pending: AtomicUsize,
    in_flight: AtomicUsize,
    sent: AtomicU64,
    deferred: AtomicU64,
    failed: AtomicU64,
    suppressed: AtomicU64,
}

struct Tasks {
    core: JoinHandle<()>,
    reader: JoinHandle<()>,
}

struct Handle {
    cells: Arc<Cells>,
    stop: watch::Sender<bool>,
    tasks: tokio::sync::Mutex<Option<Tasks>>,
}

/// The running dispatcher; clones share it.
#[derive(Clone)]
pub struct Dispatcher {
    inner: Arc<Handle>,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("status", &self.status())
            .finish()
    }
}

impl Dispatcher {
    /// Spawns the dispatcher's tasks on the current tokio runtime (so it must be called
    /// from within one).
    pub fn start(log: EventLog, config: DispatchConfig) -> Dispatcher {
        let cells = Arc::new(Cells::default());
        let (stop_tx, stop_rx) = watch::channel(false);
        let (facts_tx, facts_rx) = mpsc::channel(FACT_CHANNEL);
        let target = log.head();
        let concurrency = config.concurrency.max(1);
        let screen = Arc::new(Screen::default());
        let reader = tokio::spawn(follow::follow(log.clone(), facts_tx, screen.clone()));
        let core = Core {
            ctx: Arc::new(Ctx::new(log, config, screen)),
            cells: cells.clone(),
            queue: Queue::default(),
            settings: HashMap::new(),
            rounds: JoinSet::new(),
            round_keys: HashMap::new(),
            settling: BTreeMap::new(),
            position: 0,
            target,
            caught_up: false,
            stopping: false,
            concurrency,
        };
        let core = tokio::spawn(core.run(facts_rx, stop_rx));
        Dispatcher {
            inner: Arc::new(Handle {
                cells,
                stop: stop_tx,
                tasks: tokio::sync::Mutex::new(Some(Tasks { core, reader })),
            }),
        }
    }

    /// Stops taking new messages, waits (a few seconds at most) for the rounds in flight
    /// to be recorded, and stops. Returns once no task of the dispatcher holds the log.
    pub async fn stop(&self) {
        let _ = self.inner.stop.send(true);
        let mut tasks = self.inner.tasks.lock().await;
        let Some(Tasks { mut core, reader }) = tasks.take() else {
            return;
        };
        if tokio::time::timeout(STOP_GRACE, &mut core).await.is_err() {
            tracing::warn!("rounds still in flight after {STOP_GRACE:?}; abandoning them");
            core.abort();
            let _ = core.await;
        }
        reader.abort();
        let _ = reader.await;
        self.inner.cells.in_flight.store(0, Ordering::Relaxed);
        tracing::info!("dispatcher stopped");
    }

    pub fn status(&self) -> DispatchStatus {
        let c = &self.inner.cells;
        DispatchStatus {
            caught_up: c.caught_up.load(Ordering::Relaxed),
            pending: c.pending.load(Ordering::Relaxed),
            in_flight: c.in_flight.load(Ordering::Relaxed),
            sent: c.sent.load(Ordering::Relaxed),
            deferred: c.deferred.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            suppressed: c.suppressed.load(Ordering::Relaxed),
        }
    }
}

/// A recorded round waiting for the core to follow the log past it.
struct Settle {
    key: MsgKey,
    reserved: Option<RelayKey>,
}

struct Core {
    ctx: Arc<Ctx>,
    cells: Arc<Cells>,
    queue: Queue,
    settings: HashMap<Uuid, MailSettings>,
    rounds: JoinSet<Done>,
    round_keys: HashMap<tokio::task::Id, MsgKey>,
    /// By the position of the round's last event.
    settling: BTreeMap<u64, Vec<Settle>>,
    /// How far the core has followed the log.
    position: u64,
    /// The log head when the dispatcher started: nothing is sent before reaching it.
    target: u64,
    caught_up: bool,
    stopping: bool,
    concurrency: usize,
}

fn instant_of(at: DateTime<Utc>) -> Instant {
    let wait = (at - Utc::now()).to_std().unwrap_or(Duration::ZERO);
    Instant::now() + wait
}

impl Core {
    async fn run(mut self, mut facts: mpsc::Receiver<Batch>, mut stop: watch::Receiver<bool>) {
        tracing::info!(
            head = self.target,
            "dispatcher started; catching up with the log"
        );
        if self.target == 0 {
            self.mark_caught_up();
        }
        loop {
            if self.caught_up && !self.stopping {
                self.dispatch();
            }
            self.publish();
            if self.stopping && self.rounds.is_empty() {
                break;
            }
            let wake = if self.caught_up && !self.stopping {
                self.queue.next_wake().map(instant_of)
            } else {
                None
            };
            tokio::select! {
                changed = stop.changed(), if !self.stopping => {
                    if changed.is_err() || *stop.borrow() {
                        self.stopping = true;
                    }
                }
                Some(joined) = self.rounds.join_next_with_id(), if !self.rounds.is_empty() => {
                    self.finish_round(joined);
                }
                batch = facts.recv(), if !self.stopping => match batch {
                    Some(batch) => self.apply(batch),
                    None => {
                        tracing::warn!("the log reader ended; the dispatcher stops");
                        self.stopping = true;
                    }
                },
                () = sleep_until(wake.unwrap_or_else(Instant::now)), if wake.is_some() => {}
            }
        }
        self.publish();
    }

    fn mark_caught_up(&mut self) {
        self.caught_up = true;
        self.cells.caught_up.store(true, Ordering::Relaxed);
        tracing::info!(
            position = self.position,
            pending = self.queue.len(),
            "dispatcher caught up with the log"
        );
    }

    fn publish(&self) {
        let in_flight = self.queue.in_flight();
        self.cells.pending.store(
            self.queue.len().saturating_sub(in_flight),
            Ordering::Relaxed,
        );
        self.cells
            .in_flight
            .store(self.rounds.len(), Ordering::Relaxed);
    }

    fn apply(&mut self, batch: Batch) {
        for fact in batch.facts {
            match fact {
                Fact::Settings { tenant, event } => self.apply_settings(tenant, event),
                Fact::Message {
                    key,
                    version,
                    position,
                    fact,
                } => self.apply_message(key, version, position, fact),
            }
        }
        self.position = batch.position;
        // Rounds whose append the core has now read: the queue has their outcome, and the
        // rate counts include their send, so their reservation goes.
        while let Some(entry) = self.settling.first_entry() {
            if *entry.key() > self.position {
                break;
            }
            for s in entry.remove() {
                self.settle(s);
            }
        }
        if !self.caught_up && self.position >= self.target {
            self.mark_caught_up();
        }
    }

    fn settle(&mut self, s: Settle) {
        if let Some(r) = s.reserved {
            self.ctx.rates().release(r);
        }
        self.queue.settle(s.key);
    }

    fn apply_settings(&mut self, tenant: Uuid, event: MailSettingsEvent) {
        match &event {
            MailSettingsEvent::RelayUpdated(r) => self.ctx.forget_relay((tenant, r.id)),
            MailSettingsEvent::RelayRemoved(r) => self.ctx.forget_relay((tenant, r.id)),
            _ => {}
        }
        mail_settings::apply(self.settings.entry(tenant).or_default(), &event);
    }

    fn apply_message(&mut self, key: MsgKey, version: u64, position: u64, fact: MessageFact) {
        match fact {
            MessageFact::Queued { priority, due } => {
                self.queue.queued(key, priority, due, position, version)
            }
            MessageFact::Attempted {
                attempt,
                sent_via,
                at,
            } => {
                if let Some(relay) = sent_via {
                    self.ctx.rates().record_sent((key.0, relay), at);
                }
                self.queue.attempted(key, attempt, version);
            }
            MessageFact::Deferred { next_attempt_at } => {
                self.queue.deferred(key, next_attempt_at, version)
            }
            MessageFact::Finished(status) => self.queue.finished(key, status, version),
        }
    }

    /// Starts rounds for due messages, in dispatch order, up to the concurrency limit.
    fn dispatch(&mut self) {
        let now = Utc::now();
        self.queue.promote(now);
        while self.rounds.len() < self.concurrency && self.queue.has_ready() {
            let Some((key, entry)) = self.queue.take() else {
                break;
            };
            let relays: Vec<_> = self
                .settings
                .get(&key.0)
                .map(|s| s.relays_in_order().into_iter().cloned().collect())
                .unwrap_or_default();
            // Checked here too (each round reserves for itself), so that a message whose
            // relays are all full waits without taking a concurrency slot.
            if !relays.is_empty() {
                let rates = self.ctx.rates();
                let mut opens: Option<DateTime<Utc>> = None;
                let mut open_now = false;
                for r in &relays {
                    match rates.check(key.0, r, now) {
                        Ok(()) => {
                            open_now = true;
                            break;
                        }
                        Err(at) => opens = Some(opens.map_or(at, |o| o.min(at))),
                    }
                }
                drop(rates);
                if let (false, Some(at)) = (open_now, opens) {
                    tracing::debug!(
                        message_id = %key.1,
                        until = %at,
                        "every relay is at its rate limit; waiting"
                    );
                    self.queue.hold(key, at);
                    continue;
                }
            }
            let job = Job {
                key,
                round: entry.rounds.saturating_add(1),
                state: entry.state(),
                version: entry.version,
                relays,
            };
            let handle = self.rounds.spawn(round::run(self.ctx.clone(), job));
            self.round_keys.insert(handle.id(), key);
        }
    }

    fn finish_round(&mut self, joined: Result<(tokio::task::Id, Done), tokio::task::JoinError>) {
        let (id, done) = match joined {
            Ok((id, done)) => (id, done),
            Err(e) => {
                let id = e.id();
                tracing::error!(error = %e, "a dispatch round panicked; retrying it later");
                let until = round::after(round::retry_delay(&self.ctx.config, 1));
                (id, Done::Retry { until })
            }
        };
        let Some(key) = self.round_keys.remove(&id) else {
            return;
        };
        match done {
            Done::Recorded {
                last_position,
                concluded,
                reserved,
            } => {
                let counter = match concluded {
                    Concluded::Sent => &self.cells.sent,
                    Concluded::Deferred => &self.cells.deferred,
                    Concluded::Failed => &self.cells.failed,
                    Concluded::Suppressed => &self.cells.suppressed,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                let s = Settle { key, reserved };
                if last_position <= self.position {
                    self.settle(s);
                } else {
                    self.settling.entry(last_position).or_default().push(s);
                }
            }
            Done::RateLimited { until } | Done::Retry { until } => self.queue.hold(key, until),
            Done::Dropped => self.queue.remove(key),
        }
    }
}
