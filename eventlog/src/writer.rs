//! The one thread that appends.
//!
//! sled 0.34 serialises every batch on one global lock anyway, so a single writer costs no
//! parallelism and buys a lot: expected versions are checked against the store by the only
//! party that changes it, positions and sequences are assigned gaplessly, and many appends
//! share one `flush` + `fdatasync` (group commit). Requests that arrive while a group is
//! being made durable form the next group, so a lone appender pays one fsync and 64
//! concurrent appenders share one between them.
use std::collections::{HashMap, HashSet};
use std::fs::File;

use tokio::sync::{mpsc, oneshot, watch};
use uuid::Uuid;

use crate::chain;
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

pub(crate) struct Writer {
    pub db: sled::Db,
    pub tree: sled::Tree,
    /// The file sled writes to; sled's `flush` only `sync_file_range`s it, which survives a
    /// process crash but not a power loss, so every group is `fdatasync`ed through this.
    pub db_file: File,
    pub payload_key: [u8; 32],
    /// Last durable global position.
    pub head: u64,
    /// Last `recorded_at`; clamped so it never decreases along the log, which lets a
    /// tenant's time range be found by binary search over its sequence.
    pub last_recorded_us: i64,
    pub durable: watch::Sender<u64>,
    pub max_group: usize,
    /// Set after a storage failure: the in-memory view may then be ahead of the disk, so
    /// every later append is refused until the process restarts and rereads the disk.
    pub failed: bool,
}

/// What the current group has staged but not yet made durable.
#[derive(Default)]
struct Pending {
    batch: sled::Batch,
    stream_heads: HashMap<Vec<u8>, u64>,
    tips: HashMap<Uuid, (u64, [u8; 32])>,
    /// (tenant, event id) → (position, stream version, tenant seq)
    ids: HashMap<(Uuid, Uuid), (u64, u64, u64)>,
}

impl Writer {
    pub fn run(mut self, mut rx: mpsc::Receiver<AppendCmd>) {
        while let Some(first) = rx.blocking_recv() {
            let mut group = vec![first];
            while group.len() < self.max_group {
                match rx.try_recv() {
                    Ok(cmd) => group.push(cmd),
                    Err(_) => break,
                }
            }
            self.commit_group(group);
        }
        // Every sender is gone: the log is being closed.
        let _ = self.db.flush();
        let _ = self.db_file.sync_data();
    }

    fn commit_group(&mut self, group: Vec<AppendCmd>) {
        if self.failed {
            for cmd in group {
                let _ = cmd.reply.send(Err(Error::Unavailable));
            }
            return;
        }
        let mut pending = Pending::default();
        let mut position = self.head;
        let now = chrono::Utc::now()
            .timestamp_micros()
            .max(self.last_recorded_us);
        let mut replies = Vec::with_capacity(group.len());
        for cmd in group {
            let result = self.stage(&cmd, &mut pending, &mut position, now);
            replies.push((cmd.reply, result));
        }
        if position > self.head {
            if let Err(e) = self.make_durable(pending.batch) {
                tracing::error!(error = %e, "event log storage failure; refusing writes until restart");
                self.failed = true;
                for (reply, _) in replies {
                    let _ = reply.send(Err(Error::Storage(e.to_string())));
                }
                return;
            }
            self.head = position;
            self.last_recorded_us = now;
            self.durable.send_replace(position);
        }
        for (reply, result) in replies {
            let _ = reply.send(result);
        }
    }

    fn make_durable(&self, batch: sled::Batch) -> Result<()> {
        self.tree.apply_batch(batch)?;
        self.db.flush()?;
        self.db_file.sync_data()?;
        Ok(())
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
        let mut found = Vec::new();
        for ev in &cmd.events {
            if let Some(hit) = pending.ids.get(&(tenant, ev.event_id)) {
                found.push(*hit);
            } else if let Some(pos) = self.tree.get(keys::event_id(tenant, ev.event_id))? {
                let pos = keys::u64_value(&pos).ok_or_else(|| corrupt(0, "bad event id index"))?;
                let rec = self.read_committed(pos)?;
                found.push((pos, rec.version, rec.tenant_seq));
            }
        }
        if found.len() == cmd.events.len() {
            let first = found.first().copied().unwrap_or_default();
            let last = found.last().copied().unwrap_or_default();
            return Ok(AppendOutcome {
                first_position: first.0,
                last_position: last.0,
                stream_version: last.1,
                tenant_seq: last.2,
                duplicate: true,
            });
        }
        if let Some(ev) = cmd.events.iter().find(|ev| {
            pending.ids.contains_key(&(tenant, ev.event_id))
                || self
                    .tree
                    .contains_key(keys::event_id(tenant, ev.event_id))
                    .unwrap_or(false)
        }) {
            return Err(Error::DuplicateMismatch {
                event_id: ev.event_id,
            });
        }

        let head_key = keys::stream_head(tenant, &cmd.stream);
        let current = match pending.stream_heads.get(&head_key) {
            Some(v) => *v,
            None => match self.tree.get(&head_key)? {
                Some(v) => keys::u64_value(&v).ok_or_else(|| corrupt(0, "bad stream head"))?,
                None => 0,
            },
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

        let (mut seq, mut prev) = match pending.tips.get(&tenant) {
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
            pending.batch.insert(&keys::global(*position), rec.encode());
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
        pending
            .batch
            .insert(head_key.clone(), &version.to_be_bytes());
        pending.stream_heads.insert(head_key, version);
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

    fn read_committed(&self, position: u64) -> Result<RecordedEvent> {
        let bytes = self
            .tree
            .get(keys::global(position))?
            .ok_or_else(|| corrupt(position, "indexed record is missing"))?;
        RecordedEvent::decode(&bytes)
            .map(|(r, _)| r)
            .map_err(|reason| Error::Corrupt { position, reason })
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
