//! One dispatch round of one message: read it back from the log, build the MIME, try the
//! tenant's relays in order (or write the file outbox), and record the round as one append.
//!
//! Right before each relay's SMTP transaction (once its connection slot is held, so that
//! no wait for the pool comes between the check and the send) and before writing the file
//! outbox, the recipients suppressed at that moment are dropped from the envelope. The
//! dropped ones are recorded with the round; when none is left the round sends nothing
//! and the message ends suppressed.
use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use domain::mail_settings::Relay;
use domain::message::{
    self, AttemptOutcome, DeliveryAttempted, DispatchResult, MessageCommand, MessageDeferred,
    MessageEvent, MessageFailed, MessageQueued, MessageSent, MessageState, RecipientsSuppressed,
    SuppressedRecipient, MESSAGE_STREAM,
};
use domain::DomainEvent;
use eventlog::{Actor, EventLog, ExpectedVersion, Metadata, NewEvent, StreamId};
use lettre::address::Envelope;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::extension::ClientId;
use lettre::transport::smtp::response::Response;
use tokio::sync::Semaphore;
use uuid::Uuid;

use super::mime::{self, Built};
use super::queue::MsgKey;
use super::rate::{RateLimiter, RelayKey};
use super::suppress::{Screen, Screened};
use super::DispatchConfig;
use crate::seal::relay_password_context;
use crate::smtp::{RelayPool, SendError};

/// The relay name recorded for the file outbox.
pub(super) const OUTBOX: &str = "outbox";
const OUTBOX_REPLY: &str = "written to the file outbox";
/// Used when the configured retry schedule is empty.
const DEFAULT_RETRY: Duration = Duration::from_secs(60);
/// Events after the known version that a round reads to catch a late cancel.
const TAIL_MAX: usize = 256;
/// Appends retried after a concurrent write to the message stream (a cancel).
const MAX_CONFLICTS: usize = 5;
/// When a round could not check suppressions (the index did not catch up with the log in
/// time), the message waits this long in memory before its next try.
const UNSCREENED_RETRY: Duration = Duration::from_secs(1);

/// What every round shares.
pub(super) struct Ctx {
    pub log: EventLog,
    pub config: DispatchConfig,
    pub rates: Mutex<RateLimiter>,
    /// The suppression index (the reader keeps it).
    screen: Arc<Screen>,
    transports: Mutex<HashMap<RelayKey, Arc<CachedRelay>>>,
}

/// A relay's connection pool and its connection limit, kept across rounds.
struct CachedRelay {
    relay: Relay,
    pool: RelayPool,
    permits: Arc<Semaphore>,
}

/// A poisoned lock only means another round panicked; the data behind it is counters and
/// a cache, which stay usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Ctx {
    pub fn new(log: EventLog, config: DispatchConfig, screen: Arc<Screen>) -> Ctx {
        Ctx {
            log,
            config,
            rates: Mutex::new(RateLimiter::default()),
            screen,
            transports: Mutex::new(HashMap::new()),
        }
    }

    /// The recipients of `envelope` that may receive `message` now, once the suppression
    /// index holds everything durable in the log. `None` when it could not catch up in
    /// time: the round must then send nothing.
    async fn screen(
        &self,
        key: MsgKey,
        message: &MessageQueued,
        envelope: &Envelope,
    ) -> Option<Screened> {
        if !self.screen.synced(&self.log).await {
            tracing::warn!(
                message_id = %key.1,
                "the suppression index is behind the log; the message waits"
            );
            return None;
        }
        let screened = self
            .screen
            .screen(key.0, message.category, envelope, Utc::now());
        if !screened.suppressed.is_empty() {
            // Masked: a log line never spells a recipient out.
            let masked: Vec<String> = screened
                .suppressed
                .iter()
                .map(|r| domain::suppression::mask(&r.address))
                .collect();
            tracing::info!(
                message_id = %key.1,
                category = message.category.as_str(),
                suppressed = %masked.join(", "),
                left = screened.envelope.as_ref().map_or(0, |e| e.to().len()),
                "suppressed recipients dropped"
            );
        }
        Some(screened)
    }

    pub fn rates(&self) -> MutexGuard<'_, RateLimiter> {
        lock(&self.rates)
    }

    /// Drops a relay's cached transport (it was updated or removed).
    pub fn forget_relay(&self, key: RelayKey) {
        lock(&self.transports).remove(&key);
    }

    fn transport(&self, tenant: Uuid, relay: &Relay) -> Result<Arc<CachedRelay>, String> {
        let mut cache = lock(&self.transports);
        if let Some(c) = cache.get(&(tenant, relay.id)) {
            if c.relay == *relay {
                return Ok(c.clone());
            }
        }
        let cached = Arc::new(CachedRelay {
            relay: relay.clone(),
            pool: build_pool(&self.config, tenant, relay)?,
            permits: Arc::new(Semaphore::new(relay.max_connections.max(1) as usize)),
        });
        cache.insert((tenant, relay.id), cached.clone());
        Ok(cached)
    }
}

fn build_pool(config: &DispatchConfig, tenant: Uuid, relay: &Relay) -> Result<RelayPool, String> {
    let credentials = match &relay.username {
        None => None,
        Some(user) => {
            let password = match &relay.password {
                Some(sealed) => {
                    let bytes = config
                        .master_key
                        .open(sealed, &relay_password_context(tenant, relay.id))
                        .map_err(|_| {
                            "the relay password could not be opened with the configured master key"
                                .to_string()
                        })?;
                    String::from_utf8(bytes)
                        .map_err(|_| "the relay password is not UTF-8".to_string())?
                }
                None => String::new(),
            };
            Some(Credentials::new(user.clone(), password))
        }
    };
    Ok(RelayPool::new(
        &relay.host,
        relay.port,
        relay.tls,
        credentials,
        ClientId::Domain(config.hello_name.clone()),
        config.smtp_timeout,
        config.relay_roots.clone(),
    ))
}

/// What the core hands a round: a snapshot of the entry and of the tenant's relays.
pub(super) struct Job {
    pub key: MsgKey,
    /// This round's number (1-based).
    pub round: u32,
    pub state: MessageState,
    pub version: u64,
    pub relays: Vec<Relay>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Concluded {
    Sent,
    Deferred,
    Failed,
    Suppressed,
}

/// How a round ended, for the core.
pub(super) enum Done {
    /// Appended; the entry settles once the core has followed the log to `last_position`,
    /// and only then is the relay's rate-limit reservation (if any) released.
    Recorded {
        last_position: u64,
        concluded: Concluded,
        reserved: Option<RelayKey>,
    },
    /// Every relay is at its limit: wait in memory, nothing recorded.
    RateLimited { until: DateTime<Utc> },
    /// The log could not be read, or the suppressions could not be checked: try again
    /// later, nothing recorded.
    Retry { until: DateTime<Utc> },
    /// Nothing more to do for this entry: the message is final already, or the round
    /// could not be recorded.
    Dropped,
}

struct Loaded {
    message: Box<MessageQueued>,
    correlation_id: Uuid,
    causation_id: Uuid,
    state: MessageState,
    version: u64,
}

fn stream_of(id: Uuid) -> StreamId {
    StreamId::new(MESSAGE_STREAM, id.to_string())
}

fn new_event(e: &MessageEvent) -> NewEvent {
    NewEvent::new(e.event_type(), e.schema_version(), e.encode())
}

/// Folds `records` (the events after `version`) into `state`.
fn fold_tail(
    key: MsgKey,
    records: Vec<eventlog::RecordedEvent>,
    state: &mut MessageState,
    version: &mut u64,
) {
    for rec in records {
        match MessageEvent::decode(&rec.event_type, rec.schema_version, &rec.payload) {
            Ok(e) => message::apply(state, &e),
            Err(e) => {
                tracing::warn!(
                    message_id = %key.1,
                    position = rec.position,
                    error = e.code(),
                    "skipping an undecodable message event"
                )
            }
        }
        *version = rec.version;
    }
}

/// Reads the events after `version` and folds them into `state`.
async fn read_tail(
    log: &EventLog,
    key: MsgKey,
    state: &mut MessageState,
    version: &mut u64,
) -> Result<(), String> {
    let log = log.clone();
    let from = *version + 1;
    let tail = tokio::task::spawn_blocking(move || {
        log.read_stream(key.0, &stream_of(key.1), from, TAIL_MAX)
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())?;
    fold_tail(key, tail, state, version);
    Ok(())
}

/// The MessageQueued event, and anything recorded since the core last looked (so that a
/// cancel the core has not seen yet still stops the send). `None` when already final.
/// Both reads go in one trip to the blocking pool.
async fn load(log: &EventLog, job: &Job) -> Result<Option<Loaded>, String> {
    let (tenant, id) = job.key;
    let reader = log.clone();
    let from = job.version + 1;
    let (first, tail) = tokio::task::spawn_blocking(move || {
        let stream = stream_of(id);
        let first = reader.read_stream(tenant, &stream, 1, 1)?;
        let tail = reader.read_stream(tenant, &stream, from, TAIL_MAX)?;
        Ok::<_, eventlog::Error>((first, tail))
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())?;
    let rec = first
        .into_iter()
        .next()
        .ok_or_else(|| "the message stream is empty".to_string())?;
    let message = match MessageEvent::decode(&rec.event_type, rec.schema_version, &rec.payload) {
        Ok(MessageEvent::Queued(m)) => m,
        Ok(_) => return Err("the message stream does not start with MessageQueued".into()),
        Err(e) => return Err(format!("MessageQueued could not be decoded ({})", e.code())),
    };
    let mut state = job.state.clone();
    let mut version = job.version;
    fold_tail(job.key, tail, &mut state, &mut version);
    if state.status.is_final() {
        return Ok(None);
    }
    Ok(Some(Loaded {
        message,
        correlation_id: rec.correlation_id,
        causation_id: rec.event_id,
        state,
        version,
    }))
}

fn first_delay(config: &DispatchConfig) -> Duration {
    config
        .retry_schedule
        .first()
        .copied()
        .unwrap_or(DEFAULT_RETRY)
}

/// Now plus `d`, saturating instead of overflowing on an absurd configuration.
pub(super) fn after(d: Duration) -> DateTime<Utc> {
    let now = Utc::now();
    TimeDelta::from_std(d)
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// The delay after the `round`-th deferral: the schedule's entry (the last one repeats),
/// times a random factor in [1 - jitter, 1 + jitter] so that messages deferred together do
/// not all come back at the same instant.
pub(super) fn retry_delay(config: &DispatchConfig, round: u32) -> Duration {
    let schedule = &config.retry_schedule;
    let i = (round.max(1) as usize - 1).min(schedule.len().saturating_sub(1));
    let base = schedule.get(i).copied().unwrap_or(DEFAULT_RETRY);
    let jitter = if config.jitter.is_finite() {
        config.jitter.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let factor = 1.0 + jitter * (2.0 * fastrand::f64() - 1.0);
    Duration::try_from_secs_f64(base.as_secs_f64() * factor).unwrap_or(base)
}

/// A round that ends deferred: deferred again, or failed if the next try would come after
/// the message's maximum age. The age counts from when the message first became due (its
/// scheduled_at, else queued_at), so that a message scheduled far ahead does not expire on
/// its first deferral.
fn defer_or_expire(
    config: &DispatchConfig,
    message: &MessageQueued,
    round: u32,
    reason: String,
    code: Option<u16>,
) -> DispatchResult {
    let now = Utc::now();
    let next = after(retry_delay(config, round));
    let expires = TimeDelta::from_std(config.max_age)
        .ok()
        .and_then(|age| message.due_at().checked_add_signed(age))
        .unwrap_or(DateTime::<Utc>::MAX_UTC);
    if next > expires {
        DispatchResult::Failed(MessageFailed {
            reason: format!("expired after {round} rounds without delivery; last: {reason}"),
            code,
            permanent: false,
            at: now,
        })
    } else {
        DispatchResult::Deferred(MessageDeferred {
            reason,
            code,
            next_attempt_at: next,
        })
    }
}

fn reply_text(r: &Response) -> String {
    r.message().collect::<Vec<_>>().join(" ")
}

/// Classifies one relay's answer: (outcome, SMTP code, reply text).
fn classify(res: Result<Response, SendError>) -> (AttemptOutcome, Option<u16>, String) {
    match res {
        Ok(r) => {
            let code = u16::from(r.code());
            if (200..300).contains(&code) {
                (AttemptOutcome::Sent, Some(code), reply_text(&r))
            } else {
                (
                    AttemptOutcome::Unreachable,
                    Some(code),
                    format!("unexpected reply: {}", reply_text(&r)),
                )
            }
        }
        Err(SendError::Connect(reason)) => (AttemptOutcome::Unreachable, None, reason),
        Err(SendError::TimedOut(what)) => (
            AttemptOutcome::Unreachable,
            None,
            format!("{what} timed out"),
        ),
        Err(SendError::Smtp(e)) => {
            let code = e.status().map(u16::from);
            // For a 4xx/5xx the source is the server's reply text; otherwise the error
            // itself says what went wrong (refused, timed out, TLS).
            let reply = match std::error::Error::source(&e) {
                Some(s) if code.is_some() => s.to_string(),
                _ => e.to_string(),
            };
            if e.is_permanent() {
                (AttemptOutcome::Failed, code, reply)
            } else if e.is_transient() {
                (AttemptOutcome::Deferred, code, reply)
            } else {
                (AttemptOutcome::Unreachable, code, reply)
            }
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A partial suppression as the round records it; `None` when nobody was dropped.
fn partial(screened: &Screened) -> Option<RecipientsSuppressed> {
    (!screened.suppressed.is_empty()).then(|| RecipientsSuppressed {
        recipients: screened.suppressed.clone(),
        all: false,
        at: screened.at,
    })
}

/// How one relay try went.
enum Try {
    /// A transaction was attempted (or the relay could not even be set up).
    Answered {
        outcome: AttemptOutcome,
        code: Option<u16>,
        reply: String,
        duration_ms: u64,
        /// The recipients left out of this transaction.
        suppressed: Option<RecipientsSuppressed>,
    },
    /// Every recipient is suppressed: no transaction.
    AllSuppressed(Screened),
    /// The suppressions could not be checked: no transaction.
    Unscreened,
}

fn unreachable_try(reply: String) -> Try {
    Try::Answered {
        outcome: AttemptOutcome::Unreachable,
        code: None,
        reply,
        duration_ms: 0,
        suppressed: None,
    }
}

async fn try_relay(
    ctx: &Ctx,
    job: &Job,
    message: &MessageQueued,
    relay: &Relay,
    built: &Built,
) -> Try {
    let cached = match ctx.transport(job.key.0, relay) {
        Ok(c) => c,
        Err(reason) => return unreachable_try(reason),
    };
    let Ok(_permit) = cached.permits.clone().acquire_owned().await else {
        return unreachable_try("the relay's connection limit was closed".into());
    };
    let Some(screened) = ctx.screen(job.key, message, &built.envelope).await else {
        return Try::Unscreened;
    };
    let suppressed = partial(&screened);
    let Some(envelope) = screened.envelope.as_ref() else {
        return Try::AllSuppressed(screened);
    };
    let started = Instant::now();
    let res = cached.pool.send(envelope, &built.bytes).await;
    let duration_ms = millis(started.elapsed());
    let (outcome, code, reply) = classify(res);
    Try::Answered {
        outcome,
        code,
        reply,
        duration_ms,
        suppressed,
    }
}

enum Tried {
    Concluded {
        suppressed: Option<RecipientsSuppressed>,
        attempts: Vec<DeliveryAttempted>,
        result: DispatchResult,
        reserved: Option<RelayKey>,
    },
    /// No recipient left: nothing was sent. `attempts` are the round's earlier tries at
    /// relays that did not answer.
    Suppressed {
        attempts: Vec<DeliveryAttempted>,
        recipients: Vec<SuppressedRecipient>,
        at: DateTime<Utc>,
    },
    RateLimited(DateTime<Utc>),
    /// The suppressions could not be checked: nothing was sent, nothing is recorded.
    Unscreened,
}

async fn via_relays(ctx: &Ctx, job: &Job, message: &MessageQueued, built: &Built) -> Tried {
    let (tenant, id) = job.key;
    let mut attempts = Vec::new();
    let mut limited_until: Option<DateTime<Utc>> = None;
    let mut unreachable = Vec::new();
    // The recipients left out of the last transaction tried: the one the round's result
    // is about.
    let mut suppressed = None;
    for relay in &job.relays {
        if let Err(until) = ctx.rates().reserve(tenant, relay, Utc::now()) {
            tracing::debug!(
                message_id = %id,
                relay = %relay.name,
                "relay at its rate limit; skipped"
            );
            limited_until = Some(limited_until.map_or(until, |u| u.min(until)));
            continue;
        }
        let rkey = (tenant, relay.id);
        let holds = RateLimiter::holds(relay);
        let (outcome, code, reply, duration_ms) =
            match try_relay(ctx, job, message, relay, built).await {
                Try::Answered {
                    outcome,
                    code,
                    reply,
                    duration_ms,
                    suppressed: left_out,
                } => {
                    suppressed = left_out;
                    (outcome, code, reply, duration_ms)
                }
                other => {
                    // Nothing was sent through this relay: its slot is free again.
                    if holds {
                        ctx.rates().release(rkey);
                    }
                    return match other {
                        Try::AllSuppressed(screened) => Tried::Suppressed {
                            attempts,
                            recipients: screened.suppressed,
                            at: screened.at,
                        },
                        _ => Tried::Unscreened,
                    };
                }
            };
        let at = Utc::now();
        tracing::info!(
            message_id = %id,
            relay = %relay.name,
            round = job.round,
            outcome = outcome.as_str(),
            code,
            duration_ms,
            "delivery attempt"
        );
        attempts.push(DeliveryAttempted {
            attempt: job.round,
            relay_id: Some(relay.id),
            relay: relay.name.clone(),
            outcome,
            code,
            reply: reply.clone(),
            duration_ms,
            at,
        });
        if outcome == AttemptOutcome::Sent {
            return Tried::Concluded {
                suppressed,
                attempts,
                result: DispatchResult::Sent(MessageSent {
                    relay_id: Some(relay.id),
                    relay: relay.name.clone(),
                    reply,
                    at,
                }),
                reserved: holds.then_some(rkey),
            };
        }
        if holds {
            ctx.rates().release(rkey);
        }
        let result = match outcome {
            AttemptOutcome::Failed => DispatchResult::Failed(MessageFailed {
                reason: format!("relay '{}' rejected the message: {reply}", relay.name),
                code,
                permanent: true,
                at,
            }),
            AttemptOutcome::Deferred => defer_or_expire(
                &ctx.config,
                message,
                job.round,
                format!("relay '{}' deferred the message: {reply}", relay.name),
                code,
            ),
            AttemptOutcome::Unreachable | AttemptOutcome::Sent => {
                unreachable.push(format!("{}: {reply}", relay.name));
                continue;
            }
        };
        return Tried::Concluded {
            suppressed,
            attempts,
            result,
            reserved: None,
        };
    }
    if attempts.is_empty() {
        if let Some(until) = limited_until {
            return Tried::RateLimited(until);
        }
    }
    let mut reason = format!("no relay could be reached ({})", unreachable.join("; "));
    if limited_until.is_some() {
        reason.push_str("; the other relays are at their rate limits");
    }
    Tried::Concluded {
        suppressed,
        attempts,
        result: defer_or_expire(&ctx.config, message, job.round, reason, None),
        reserved: None,
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// `<outbox>/<tenant>/<message id>.eml`, whole or not at all: a temporary file, fsynced,
/// renamed into place, and the folder fsynced so that the rename itself is durable.
fn write_outbox(outbox: &Path, tenant: Uuid, id: Uuid, bytes: &[u8]) -> std::io::Result<()> {
    let folder = outbox.join(tenant.to_string());
    if !folder.exists() {
        fs::create_dir_all(&folder)?;
        sync_dir(outbox)?;
        if let Some(parent) = outbox.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
    }
    let tmp = folder.join(format!(".{id}.eml.tmp"));
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, folder.join(format!("{id}.eml")))?;
    sync_dir(&folder)
}

/// The file holds no envelope, but it stands for the send all the same: with every
/// recipient suppressed it is not written, and the recipients left out are recorded.
async fn via_outbox(ctx: &Ctx, job: &Job, message: &MessageQueued, built: Built) -> Tried {
    let (tenant, id) = job.key;
    let Some(screened) = ctx.screen(job.key, message, &built.envelope).await else {
        return Tried::Unscreened;
    };
    if screened.envelope.is_none() {
        return Tried::Suppressed {
            attempts: Vec::new(),
            recipients: screened.suppressed,
            at: screened.at,
        };
    }
    let suppressed = partial(&screened);
    let dir = ctx.config.outbox_dir.clone();
    let started = Instant::now();
    let written = tokio::task::spawn_blocking(move || write_outbox(&dir, tenant, id, &built.bytes))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
    let duration_ms = millis(started.elapsed());
    let at = Utc::now();
    let (outcome, code, reply) = match &written {
        Ok(()) => (AttemptOutcome::Sent, Some(250), OUTBOX_REPLY.to_string()),
        Err(e) => (
            AttemptOutcome::Unreachable,
            None,
            format!("the file outbox could not be written: {e}"),
        ),
    };
    tracing::info!(
        message_id = %id,
        relay = OUTBOX,
        round = job.round,
        outcome = outcome.as_str(),
        "delivery attempt"
    );
    let attempts = vec![DeliveryAttempted {
        attempt: job.round,
        relay_id: None,
        relay: OUTBOX.into(),
        outcome,
        code,
        reply: reply.clone(),
        duration_ms,
        at,
    }];
    let result = match written {
        Ok(()) => DispatchResult::Sent(MessageSent {
            relay_id: None,
            relay: OUTBOX.into(),
            reply,
            at,
        }),
        Err(_) => defer_or_expire(&ctx.config, message, job.round, reply, None),
    };
    Tried::Concluded {
        suppressed,
        attempts,
        result,
        reserved: None,
    }
}

/// What a round records.
enum Outcome {
    /// Sent, deferred or failed, perhaps after leaving some recipients out.
    Dispatched {
        suppressed: Option<RecipientsSuppressed>,
        attempts: Vec<DeliveryAttempted>,
        result: DispatchResult,
    },
    /// Every recipient suppressed: nothing sent.
    Suppressed {
        attempts: Vec<DeliveryAttempted>,
        recipients: Vec<SuppressedRecipient>,
        at: DateTime<Utc>,
    },
}

impl Outcome {
    fn command(&self) -> MessageCommand {
        match self {
            Outcome::Dispatched {
                suppressed,
                attempts,
                result,
            } => MessageCommand::RecordDispatch {
                suppressed: suppressed.clone(),
                attempts: attempts.clone(),
                result: result.clone(),
            },
            Outcome::Suppressed {
                attempts,
                recipients,
                at,
            } => MessageCommand::Suppress {
                attempts: attempts.clone(),
                recipients: recipients.clone(),
                at: *at,
            },
        }
    }
}

/// Appends the round. The expected version is the one the round read, so that a cancel
/// appended meanwhile is folded in and `decide` judges the round against it (a deferral
/// or a suppression must never follow a cancel); the conflict is retried a few times.
async fn record(
    log: &EventLog,
    key: MsgKey,
    loaded: &mut Loaded,
    outcome: &Outcome,
) -> Option<u64> {
    let meta = Metadata {
        actor: Actor::System("dispatcher".into()),
        correlation_id: loaded.correlation_id,
        causation_id: Some(loaded.causation_id),
    };
    for _ in 0..MAX_CONFLICTS {
        let events = match message::decide(&loaded.state, outcome.command()) {
            Ok(events) => events,
            Err(e) => {
                tracing::info!(
                    message_id = %key.1,
                    reason = %e,
                    "round not recorded: the message is final already"
                );
                return None;
            }
        };
        let events = events.iter().map(new_event).collect();
        match log
            .append(
                key.0,
                stream_of(key.1),
                ExpectedVersion::Exact(loaded.version),
                events,
                meta.clone(),
            )
            .await
        {
            Ok(outcome) => return Some(outcome.last_position),
            Err(eventlog::Error::WrongExpectedVersion { .. }) => {
                if let Err(e) = read_tail(log, key, &mut loaded.state, &mut loaded.version).await {
                    tracing::error!(
                        message_id = %key.1,
                        error = %e,
                        "re-reading the message stream failed; round not recorded"
                    );
                    return None;
                }
            }
            Err(e) => {
                tracing::error!(message_id = %key.1, error = %e, "recording the round failed");
                return None;
            }
        }
    }
    tracing::error!(message_id = %key.1, "the message stream kept changing; round not recorded");
    None
}

/// Runs one round to its end.
/// Whether building `message` reads files from the blob store.
fn reads_blobs(message: &MessageQueued) -> bool {
    !message.attachments.is_empty() || message.html_blob.is_some() || message.text_blob.is_some()
}

/// The MIME message and its envelope, with the VERP return path when configured.
fn build(ctx: &Ctx, tenant: Uuid, message: &MessageQueued) -> Result<Built, String> {
    let built = mime::build(
        message,
        &ctx.config.blobs,
        tenant,
        ctx.config.unsubscribe.as_ref(),
    )?;
    match &ctx.config.bounce_domain {
        Some(domain) => mime::with_return_path(built, message, domain),
        None => Ok(built),
    }
}

pub(super) async fn run(ctx: Arc<Ctx>, job: Job) -> Done {
    let (tenant, id) = job.key;
    let mut loaded = match load(&ctx.log, &job).await {
        Ok(Some(l)) => l,
        Ok(None) => {
            tracing::debug!(message_id = %id, "the message became final before its round");
            return Done::Dropped;
        }
        Err(e) => {
            tracing::error!(
                message_id = %id,
                error = %e,
                "reading the message back failed; will retry"
            );
            return Done::Retry {
                until: after(first_delay(&ctx.config)),
            };
        }
    };
    let built = if reads_blobs(&loaded.message) {
        // Attachments and big bodies are files: read them off the async workers.
        let message = loaded.message.clone();
        let ctx = ctx.clone();
        tokio::task::spawn_blocking(move || build(&ctx, tenant, &message))
            .await
            .unwrap_or_else(|e| Err(format!("building the message panicked: {e}")))
    } else {
        // Pure CPU, tens of microseconds: a trip to the blocking pool would cost more.
        build(&ctx, tenant, &loaded.message)
    };
    let tried = match built {
        Err(reason) => {
            tracing::warn!(
                message_id = %id,
                tenant = %tenant,
                reason = %reason,
                "the message cannot be built; it fails"
            );
            Tried::Concluded {
                suppressed: None,
                attempts: Vec::new(),
                result: DispatchResult::Failed(MessageFailed {
                    reason,
                    code: None,
                    permanent: true,
                    at: Utc::now(),
                }),
                reserved: None,
            }
        }
        Ok(built) if job.relays.is_empty() => via_outbox(&ctx, &job, &loaded.message, built).await,
        Ok(built) => via_relays(&ctx, &job, &loaded.message, &built).await,
    };
    let (outcome, reserved) = match tried {
        Tried::Concluded {
            suppressed,
            attempts,
            result,
            reserved,
        } => (
            Outcome::Dispatched {
                suppressed,
                attempts,
                result,
            },
            reserved,
        ),
        Tried::Suppressed {
            attempts,
            recipients,
            at,
        } => (
            Outcome::Suppressed {
                attempts,
                recipients,
                at,
            },
            None,
        ),
        Tried::RateLimited(until) => {
            tracing::debug!(
                message_id = %id,
                until = %until,
                "every relay is at its rate limit; waiting"
            );
            return Done::RateLimited { until };
        }
        Tried::Unscreened => {
            return Done::Retry {
                until: after(UNSCREENED_RETRY),
            };
        }
    };
    let concluded = match &outcome {
        Outcome::Dispatched { result, .. } => match result {
            DispatchResult::Sent(_) => Concluded::Sent,
            DispatchResult::Deferred(_) => Concluded::Deferred,
            DispatchResult::Failed(_) => Concluded::Failed,
        },
        Outcome::Suppressed { .. } => Concluded::Suppressed,
    };
    match record(&ctx.log, job.key, &mut loaded, &outcome).await {
        Some(last_position) => {
            tracing::debug!(message_id = %id, result = ?concluded, "round recorded");
            Done::Recorded {
                last_position,
                concluded,
                reserved,
            }
        }
        None => {
            if let Some(r) = reserved {
                ctx.rates().release(r);
            }
            Done::Dropped
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seal::MasterKey;

    fn config(schedule: &[u64], jitter: f64) -> DispatchConfig {
        let dir = tempfile::tempdir().unwrap();
        let mut c = DispatchConfig::new(
            dir.path().join("outbox"),
            eventlog::BlobStore::open(&dir.path().join("blobs")).unwrap(),
            MasterKey::from_bytes([1; 32]),
        );
        c.retry_schedule = schedule.iter().map(|s| Duration::from_secs(*s)).collect();
        c.jitter = jitter;
        c
    }

    #[test]
    fn the_schedule_is_followed_and_its_last_entry_repeats() {
        let c = config(&[10, 20, 40], 0.0);
        let got: Vec<u64> = (1..=5).map(|r| retry_delay(&c, r).as_secs()).collect();
        assert_eq!(got, [10, 20, 40, 40, 40]);
        assert_eq!(retry_delay(&config(&[], 0.0), 3), DEFAULT_RETRY);
    }

    #[test]
    fn jitter_stays_within_its_bounds_and_varies() {
        let c = config(&[100], 0.1);
        let samples: Vec<f64> = (0..200).map(|_| retry_delay(&c, 1).as_secs_f64()).collect();
        assert!(samples.iter().all(|s| (90.0..=110.0).contains(s)));
        assert!(samples.iter().any(|s| (*s - samples[0]).abs() > 0.01));
        let wild = config(&[100], f64::NAN);
        assert_eq!(retry_delay(&wild, 1).as_secs(), 100);
    }

    #[test]
    fn a_2xx_reply_is_sent_with_its_code_and_text() {
        use lettre::transport::smtp::response::{Category, Code, Detail, Severity};
        let ok = Response::new(
            Code::new(
                Severity::PositiveCompletion,
                Category::MailSystem,
                Detail::Zero,
            ),
            vec!["OK".into(), "queued".into()],
        );
        assert_eq!(
            classify(Ok(ok)),
            (AttemptOutcome::Sent, Some(250), "OK queued".to_string())
        );
        // A positive but not final reply never counts as sent.
        let odd = Response::new(
            Code::new(
                Severity::PositiveIntermediate,
                Category::MailSystem,
                Detail::Four,
            ),
            vec!["go ahead".into()],
        );
        assert_eq!(classify(Ok(odd)).0, AttemptOutcome::Unreachable);
    }
}
