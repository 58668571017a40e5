//! The one thread that appends, and the one that makes appends durable.
//!
//! sled 0.34 serialises every batch on one global lock anyway, so a single writer costs no
//! parallelism and buys a lot: expected versions are checked against the store by the only
//! party that changes it, and positions and sequences are assigned gaplessly.
//!
//! Durability is pipelined. The writer stages a group of appends and applies it as one sled
//! batch, then hands the group to the syncer and goes on with the next group. The syncer
//! takes every group applied so far, makes them durable with one `flush` + `fdatasync`,
//! publishes the new durable head and only then answers. Staging and applying (CPU) thus
//! overlap with flushing and fsyncing (mostly IO wait), and one fsync covers many appends.
//!
//! Why this is safe:
//! - Nobody reads past the durable head, so applied-but-not-durable events are invisible.
//! - sled recovers a prefix of its batches, so a crash keeps a prefix of the groups.
//! - Every reply goes through the syncer in group order, so an answer that depended on an
//!   applied-but-not-durable group (a duplicate, a conflict) waits until that group is
//!   durable.
//! - After any storage failure both threads refuse all further work until restart.
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch};
use uuid::Uuid;

use crate::chain;
use crate::chunk;
use crate::error::{Error, Result};
use crate::keys;
use crate::record::{
    Metadata, NewEvent, RecordedEvent, StreamId, MAX_ACTOR_ID, MAX_EVENT_TYPE, MAX_PAYLOAD,
};
use crate::{AppendOutcome, ExpectedVersion};

/// Most events one append may carry: a group must stay small enough to flush quickly.
pub const MAX_EVENTS_PER_APPEND: usize = 1000;

pub(crate) struct AppendCmd {
    pub tenant: Uuid,
    pub stream: StreamId,
    pub expected: ExpectedVersion,
    pub events: Vec<NewEvent>,
    pub meta: Metadata,
    pub reply: oneshot::Sender<Result<AppendOutcome>>,
}

impl AppendCmd {
    /// A request and the receiver of its answer.
    pub fn new(
        tenant: Uuid,
        stream: StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        meta: Metadata,
    ) -> (Self, oneshot::Receiver<Result<AppendOutcome>>) {
        let (reply, rx) = oneshot::channel();
        let cmd = AppendCmd {
            tenant,
            stream,
            expected,
            events,
            meta,
            reply,
        };
        (cmd, rx)
    }
}

pub(crate) struct Writer {
    pub tree: sled::Tree,
    pub payload_key: [u8; 32],
    /// Last applied global position (durable or not yet).
    pub applied: u64,
    /// Last `recorded_at`; clamped so it never decreases along the log, which lets a
    /// tenant's time range be found by binary search over its sequence.
    pub last_recorded_us: i64,
    pub max_group: usize,
    /// Chain tips of the tenants seen so far, as applied. Only this thread changes tips, so
    /// the cache cannot go stale; it saves a point read per append.
    pub tips: HashMap<Uuid, (u64, [u8; 32])>,
    /// Set after a storage failure by either thread: the in-memory view may then be ahead
    /// of the disk, so every later append is refused until the process restarts.
    pub failed: Arc<AtomicBool>,
    /// The last chunk while it is small enough to be extended (first position, bytes); a
    /// copy, so that extending it needs no read.
    pub tail: Option<(u64, Vec<u8>)>,
    /// `applied`, published for readers that must tell an append in flight (applied, not
    /// yet durable) from a missing one.
    pub applied_shared: Arc<std::sync::atomic::AtomicU64>,
}

/// A group applied to sled, waiting to be made durable and answered.
struct Applied {
    /// The applied head when the group was sealed; durable once a sync covers it.
    position: u64,
    replies: Vec<(
        oneshot::Sender<Result<AppendOutcome>>,
        Result<AppendOutcome>,
    )>,
}

pub(crate) struct Syncer {
    pub db: sled::Db,
    /// The file sled writes to; sled's `flush` only `sync_file_range`s it, which survives a
    /// process crash but not a power loss, so every sync also `fdatasync`s it.
    pub db_file: File,
    pub durable: watch::Sender<u64>,
    pub failed: Arc<AtomicBool>,
}

impl Syncer {
    fn run(self, rx: std::sync::mpsc::Receiver<Applied>) {
        let mut durable = *self.durable.borrow();
        while let Ok(first) = rx.recv() {
            let mut groups = vec![first];
            while let Ok(more) = rx.try_recv() {
                groups.push(more);
            }
            let target = groups.iter().map(|g| g.position).max().unwrap_or(durable);
            if target > durable && !self.failed.load(Ordering::SeqCst) {
                match self.sync() {
                    Ok(()) => {
                        durable = target;
                        self.durable.send_replace(durable);
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "event log sync failed; refusing writes until restart");
                        self.failed.store(true, Ordering::SeqCst);
                    }
                }
            }
            let ok = durable >= target;
            for group in groups {
                for (reply, result) in group.replies {
                    let result = match result {
                        Ok(_) if !ok => Err(Error::Unavailable),
                        other => other,
                    };
                    let _ = reply.send(result);
                }
            }
        }
        // The writer is gone: the log is being closed.
        let _ = self.sync();
    }

    fn sync(&self) -> Result<()> {
        self.db.flush()?;
        self.db_file.sync_data()?;
        Ok(())
    }
}

/// What the current group has staged but not yet made durable.
#[derive(Default)]
struct Pending {
    batch: sled::Batch,
    /// The chunks this group writes: (first position, value). The first may be a copy of
    /// the tail chunk, extended.
    chunks: Vec<(u64, Vec<u8>)>,
    /// Stream prefix → version staged in this group.
    stream_heads: HashMap<Vec<u8>, u64>,
    tips: HashMap<Uuid, (u64, [u8; 32])>,
    /// (tenant, event id) → (position, stream version, tenant seq)
    ids: HashMap<(Uuid, Uuid), (u64, u64, u64)>,
}

impl Writer {
    /// Runs the writer on this thread and the syncer on another until every sender of
    /// `rx` is gone; returns after the last group is durable and answered.
    pub fn run(mut self, mut rx: mpsc::Receiver<AppendCmd>, syncer: Syncer) {
        let (to_syncer, from_writer) = std::sync::mpsc::channel();
        let sync_thread = std::thread::Builder::new()
            .name("eventlog-syncer".into())
            .spawn(move || syncer.run(from_writer));
        let sync_thread = match sync_thread {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, "cannot start the event log syncer");
                self.failed.store(true, Ordering::SeqCst);
                while let Some(cmd) = rx.blocking_recv() {
                    let _ = cmd.reply.send(Err(Error::Unavailable));
                }
                return;
            }
        };
        while let Some(first) = rx.blocking_recv() {
            let mut group = vec![first];
            while group.len() < self.max_group {
                match rx.try_recv() {
                    Ok(cmd) => group.push(cmd),
                    Err(_) => break,
                }
            }
            let applied = self.apply_group(group);
            if to_syncer.send(applied).is_err() {
                break;
            }
        }
        drop(to_syncer);
        let _ = sync_thread.join();
    }

    fn apply_group(&mut self, group: Vec<AppendCmd>) -> Applied {
        if self.failed.load(Ordering::SeqCst) {
            return Applied {
                position: self.applied,
                replies: group
                    .into_iter()
                    .map(|cmd| (cmd.reply, Err(Error::Unavailable)))
                    .collect(),
            };
        }
        let mut pending = Pending::default();
        let mut position = self.applied;
        let now = chrono::Utc::now()
            .timestamp_micros()
            .max(self.last_recorded_us);
        let mut replies = Vec::with_capacity(group.len());
        for cmd in group {
            let result = self.stage(&cmd, &mut pending, &mut position, now);
            replies.push((cmd.reply, result));
        }
        if position > self.applied {
            for (first, chunk) in &pending.chunks {
                pending
                    .batch
                    .insert(&keys::global(*first), chunk.as_slice());
            }
            if let Err(e) = self.tree.apply_batch(pending.batch) {
                tracing::error!(error = %e, "event log storage failure; refusing writes until restart");
                self.failed.store(true, Ordering::SeqCst);
                return Applied {
                    position: self.applied,
                    replies: replies
                        .into_iter()
                        .map(|(reply, _)| (reply, Err(Error::Storage(e.to_string()))))
                        .collect(),
                };
            }
            self.applied = position;
            self.last_recorded_us = now;
            self.tips.extend(pending.tips);
            self.tail = pending
                .chunks
                .pop()
                .filter(|(_, c)| c.len() < chunk::CHUNK_COALESCE);
            self.applied_shared.store(position, Ordering::SeqCst);
        }
        Applied {
            position: self.applied,
            replies,
        }
    }

    /// Checks one append in full, then stages it. Nothing is staged unless every check
    /// passes, so a rejected append leaves no trace in the group.
    fn stage(
        &self,
        cmd: &AppendCmd,
        pending: &mut Pending,
        position: &mut u64,
        now: i64,
    ) -> Result<AppendOutcome> {
        validate(cmd)?;
        let tenant = cmd.tenant;

        // Idempotency first: a retry of an append that did land must succeed even though its
        // expected version is now stale.
        let mut found = Vec::with_capacity(cmd.events.len());
        for ev in &cmd.events {
            let hit = match pending.ids.get(&(tenant, ev.event_id)) {
                Some(hit) => Some(*hit),
                None => match self.tree.get(keys::event_id(tenant, ev.event_id))? {
                    Some(pos) => {
                        let pos = keys::u64_value(&pos)
                            .ok_or_else(|| corrupt(0, "bad event id index"))?;
                        let rec = self.read_committed(pos)?;
                        Some((pos, rec.version, rec.tenant_seq))
                    }
                    None => None,
                },
            };
            found.push((ev.event_id, hit));
        }
        let hits: Vec<_> = found.iter().filter_map(|(_, h)| *h).collect();
        if hits.len() == cmd.events.len() {
            let first = hits.first().copied().unwrap_or_default();
            let last = hits.last().copied().unwrap_or_default();
            return Ok(AppendOutcome {
                first_position: first.0,
                last_position: last.0,
                stream_version: last.1,
                tenant_seq: last.2,
                duplicate: true,
            });
        }
        if let Some((event_id, _)) = found.iter().find(|(_, h)| h.is_some()) {
            return Err(Error::DuplicateMismatch {
                event_id: *event_id,
            });
        }

        let stream_prefix = keys::stream_prefix(tenant, &cmd.stream);
        let current = match pending.stream_heads.get(&stream_prefix) {
            Some(v) => *v,
            None => self.stream_head(&stream_prefix)?,
        };
        let ok = match cmd.expected {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => current == 0,
            ExpectedVersion::Exact(v) => current == v,
        };
        if !ok {
            return Err(Error::WrongExpectedVersion {
                stream: cmd.stream.clone(),
                expected: cmd.expected.to_string(),
                actual: current,
            });
        }

        let (mut seq, mut prev) = match pending.tips.get(&tenant).or(self.tips.get(&tenant)) {
            Some(tip) => *tip,
            None => match self.tree.get(keys::tenant_tip(tenant))? {
                Some(v) => decode_tip(&v)?,
                None => (0, chain::genesis(tenant)),
            },
        };

        // Every check passed: stage.
        let first_position = *position + 1;
        let mut version = current;
        let mut header = Vec::with_capacity(192);
        for ev in &cmd.events {
            *position += 1;
            version += 1;
            seq += 1;
            let mut rec = RecordedEvent {
                event_id: ev.event_id,
                tenant,
                stream: cmd.stream.clone(),
                version,
                tenant_seq: seq,
                position: *position,
                recorded_at_us: now,
                actor: cmd.meta.actor.clone(),
                correlation_id: cmd.meta.correlation_id,
                causation_id: cmd.meta.causation_id,
                event_type: ev.event_type.clone(),
                schema_version: ev.schema_version,
                payload_digest: chain::payload_digest(&self.payload_key, tenant, &ev.payload),
                hash: [0; 32],
                payload: ev.payload.clone(),
            };
            header.clear();
            rec.encode_header(&mut header);
            rec.hash = chain::link(&prev, &header, &rec.payload_digest);
            prev = rec.hash;
            let pos_bytes = position.to_be_bytes();
            let record = rec.encode();
            self.add_to_chunk(pending, *position, &record);
            pending
                .batch
                .insert(&keys::tenant_seq(tenant, seq), &pos_bytes);
            pending
                .batch
                .insert(keys::stream_event(tenant, &cmd.stream, version), &pos_bytes);
            pending
                .batch
                .insert(keys::event_id(tenant, ev.event_id), &pos_bytes);
            pending
                .ids
                .insert((tenant, ev.event_id), (*position, version, seq));
        }
        pending.stream_heads.insert(stream_prefix, version);
        pending
            .batch
            .insert(keys::tenant_tip(tenant), encode_tip(seq, &prev));
        pending.tips.insert(tenant, (seq, prev));
        Ok(AppendOutcome {
            first_position,
            last_position: *position,
            stream_version: version,
            tenant_seq: seq,
            duplicate: false,
        })
    }

    /// The stream's last applied version: the version in its last `S` key. (A separate
    /// head key would cost a new sled key per stream, and sled splits a leaf every 16.)
    fn stream_head(&self, stream_prefix: &[u8]) -> Result<u64> {
        match self.tree.scan_prefix(stream_prefix).next_back() {
            Some(item) => {
                let (k, _) = item?;
                k.get(stream_prefix.len()..)
                    .and_then(keys::u64_value)
                    .ok_or_else(|| corrupt(0, "bad stream key"))
            }
            None => Ok(0),
        }
    }

    fn read_committed(&self, position: u64) -> Result<RecordedEvent> {
        let bytes = chunk::record_bytes(&self.tree, position)?
            .ok_or_else(|| corrupt(position, "indexed record is missing"))?;
        RecordedEvent::decode(&bytes)
            .map(|(r, _)| r)
            .map_err(|reason| Error::Corrupt { position, reason })
    }

    /// Puts a record into the group's current chunk, opening a new one when it is full. A
    /// group's first record may extend the small tail chunk of the groups before.
    fn add_to_chunk(&self, pending: &mut Pending, position: u64, record: &[u8]) {
        if pending.chunks.is_empty() {
            match &self.tail {
                Some((first, bytes)) if chunk::fits(bytes, record.len(), chunk::CHUNK_COALESCE) => {
                    pending.chunks.push((*first, bytes.clone()));
                }
                _ => pending.chunks.push((position, Vec::new())),
            }
        } else if let Some((_, last)) = pending.chunks.last() {
            if !chunk::fits(last, record.len(), chunk::CHUNK_TARGET) {
                pending.chunks.push((position, Vec::new()));
            }
        }
        if let Some((_, last)) = pending.chunks.last_mut() {
            chunk::push(last, record);
        }
    }
}

fn validate(cmd: &AppendCmd) -> Result<()> {
    cmd.stream.validate()?;
    if cmd.events.is_empty() || cmd.events.len() > MAX_EVENTS_PER_APPEND {
        return Err(Error::InvalidInput(format!(
            "an append carries 1..={MAX_EVENTS_PER_APPEND} events"
        )));
    }
    let actor_len = match &cmd.meta.actor {
        crate::Actor::ApiKey(_) => 16,
        crate::Actor::Operator(s) | crate::Actor::System(s) => s.len(),
    };
    if actor_len > MAX_ACTOR_ID {
        return Err(Error::InvalidInput("actor id too long".into()));
    }
    let mut seen = HashSet::new();
    for ev in &cmd.events {
        if ev.event_type.is_empty() || ev.event_type.len() > MAX_EVENT_TYPE {
            return Err(Error::InvalidInput(format!(
                "event type must be 1..={MAX_EVENT_TYPE} bytes"
            )));
        }
        if ev.payload.len() > MAX_PAYLOAD {
            return Err(Error::InvalidInput(format!(
                "payload of {} bytes exceeds {MAX_PAYLOAD}",
                ev.payload.len()
            )));
        }
        if !seen.insert(ev.event_id) {
            return Err(Error::InvalidInput(format!(
                "event id {} appears twice in one append",
                ev.event_id
            )));
        }
    }
    Ok(())
}

fn corrupt(position: u64, reason: &str) -> Error {
    Error::Corrupt {
        position,
        reason: reason.to_string(),
    }
}

pub(crate) fn encode_tip(seq: u64, hash: &[u8; 32]) -> Vec<u8> {
    let mut v = Vec::with_capacity(40);
    v.extend_from_slice(&seq.to_be_bytes());
    v.extend_from_slice(hash);
    v
}

pub(crate) fn decode_tip(v: &[u8]) -> Result<(u64, [u8; 32])> {
    let seq = keys::u64_value(v).ok_or_else(|| corrupt(0, "bad tenant tip"))?;
    let hash: [u8; 32] = v
        .get(8..40)
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| corrupt(0, "bad tenant tip"))?;
    Ok((seq, hash))
}
