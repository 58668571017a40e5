//! The tenant-partitioned, hash-chained, append-only event log on sled.
//!
//! Layout:
//! - `record`: the envelope (`RecordedEvent`) and its hand-written, versioned binary layout.
//! - `keys`: the key layout of the one `log` tree.
//! - `chunk`: consecutive records stored together under one key.
//! - `chain`: the per-tenant blake3 hash chain.
//! - `writer`: the single writer thread, group commit and fsync.
//! - `subscription`: catch-up-then-live following of the log.
//! - `verify`: walking the chains.
//!
//! Guarantees the rest of Postledger relies on:
//! - **An append returns Ok only after its events are fsynced; a crash never loses an
//!   acknowledged event and never leaves part of an append.**
//! - **Stream versions, tenant sequences and global positions are gapless, and commit order
//!   equals position order.**
//! - **No read and no subscription passes the durable head.**
//! - **Every tenant-scoped key starts with the tenant id: a read for one tenant cannot
//!   return another's events.**
pub mod blobs;
mod chain;
mod chunk;
mod error;
mod keys;
mod record;
mod subscription;
mod verify;
mod writer;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

pub use blobs::BlobStore;
pub use chunk::record_location;
pub use error::{Error, Result};
pub use record::{Actor, Metadata, NewEvent, RecordedEvent, StreamId, FORMAT_VERSION, MAX_PAYLOAD};
pub use subscription::Subscription;
pub use verify::VerifyReport;
pub use writer::MAX_EVENTS_PER_APPEND;

/// What the caller believes the stream's version is; checked by the writer itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpectedVersion {
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream must be at exactly this version (its last event's version).
    Exact(u64),
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any"),
            ExpectedVersion::NoStream => f.write_str("no stream"),
            ExpectedVersion::Exact(v) => write!(f, "{v}"),
        }
    }
}

/// Where an append landed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppendOutcome {
    pub first_position: u64,
    pub last_position: u64,
    /// The stream's version after the append.
    pub stream_version: u64,
    /// The tenant sequence of the last event.
    pub tenant_seq: u64,
    /// Every event id was already in the log, so nothing new was written.
    pub duplicate: bool,
}

/// How to open the log.
#[derive(Clone, Debug)]
pub struct Options {
    /// Key of the payload digests (derived from the server secret). Without it the chain can
    /// still be walked, but payloads cannot be checked against their digests.
    pub payload_key: [u8; 32],
    /// sled's page cache, in bytes.
    pub cache_capacity: u64,
    /// Most appends that share one fsync.
    pub max_group: usize,
}

impl Options {
    pub fn new(payload_key: [u8; 32]) -> Self {
        Options {
            payload_key,
            cache_capacity: 64 * 1024 * 1024,
            max_group: 512,
        }
    }
}

/// A handle on the log; cheap to clone, shared by the API, the projectors and the workers.
#[derive(Clone)]
pub struct EventLog {
    inner: Arc<Inner>,
}

struct Inner {
    db: sled::Db,
    /// The read models' own database (`<dir>/readmodels`). Kept apart so that the log's
    /// per-append `flush` writes only the log's pages: read models are rebuildable, their
    /// checkpoint is atomic with them, and sled flushes them in the background.
    models: sled::Db,
    tree: sled::Tree,
    path: PathBuf,
    payload_key: [u8; 32],
    tx: Mutex<Option<mpsc::Sender<AppendCmd>>>,
    durable: watch::Receiver<u64>,
    /// The writer's last applied position: at or ahead of the durable head.
    applied: Arc<AtomicU64>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

use writer::AppendCmd;

impl Drop for Inner {
    fn drop(&mut self) {
        // Close the channel, then wait for the writer to finish its last group, so that a
        // dropped log has released everything before the folder is opened again.
        if let Ok(mut tx) = self.tx.lock() {
            tx.take();
        }
        if let Ok(mut w) = self.writer.lock() {
            if let Some(handle) = w.take() {
                let _ = handle.join();
            }
        }
    }
}

impl EventLog {
    /// Opens (or creates) the log in `dir`. Fails with [`Error::Locked`] when another
    /// process holds the folder.
    pub fn open(dir: &Path, options: Options) -> Result<EventLog> {
        std::fs::create_dir_all(dir)?;
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(options.cache_capacity)
            .mode(sled::Mode::HighThroughput)
            .open()
            .map_err(|e| match e {
                sled::Error::Io(io) if io.to_string().contains("could not acquire lock") => {
                    Error::Locked
                }
                other => Error::from(other),
            })?;
        let models = sled::Config::new()
            .path(dir.join("readmodels"))
            .cache_capacity(options.cache_capacity)
            .mode(sled::Mode::HighThroughput)
            .flush_every_ms(Some(1000))
            .open()?;
        let tree = db.open_tree("log")?;
        let format_key = keys::meta("format");
        match tree.get(&format_key)? {
            Some(v) if v.as_ref() != [FORMAT_VERSION] => {
                return Err(Error::UnsupportedFormat {
                    found: v.first().copied().unwrap_or(0),
                    supported: FORMAT_VERSION,
                })
            }
            Some(_) => {}
            None => {
                tree.insert(&format_key, &[FORMAT_VERSION])?;
            }
        }
        // A check value of the payload key: a wrong key would otherwise look exactly like a
        // tampered payload at the first event.
        let check_key = keys::meta("payload_key_check");
        let check = blake3::keyed_hash(&options.payload_key, b"postledger payload key check v1");
        match tree.get(&check_key)? {
            Some(v) if v.as_ref() != check.as_bytes() => return Err(Error::WrongKey),
            Some(_) => {}
            None => {
                tree.insert(&check_key, check.as_bytes())?;
            }
        }
        let db_file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(dir.join("db"))?;
        // Everything on disk at open is durable: it survived whatever came before.
        let (head, last_recorded_us, tail) = match tree
            .range(keys::global(0)..=keys::global(u64::MAX))
            .next_back()
        {
            Some(item) => {
                let (k, v) = item?;
                let first = keys::u64_value(&k[1..]).unwrap_or(0);
                let mut last = None;
                for r in chunk::entry_records(&k, &v)? {
                    last = Some(r?);
                }
                let (position, bytes) = last.ok_or_else(|| Error::Corrupt {
                    position: first,
                    reason: "empty chunk".into(),
                })?;
                let (rec, _) = RecordedEvent::decode(bytes)
                    .map_err(|reason| Error::Corrupt { position, reason })?;
                let tail = (v.len() < chunk::CHUNK_COALESCE).then(|| (first, v.to_vec()));
                (position, rec.recorded_at_us, tail)
            }
            None => (0, 0, None),
        };
        let (durable_tx, durable_rx) = watch::channel(head);
        let (tx, rx) = mpsc::channel(4096);
        let failed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let applied = Arc::new(AtomicU64::new(head));
        let w = writer::Writer {
            tree: tree.clone(),
            payload_key: options.payload_key,
            applied: head,
            last_recorded_us,
            max_group: options.max_group.max(1),
            tips: std::collections::HashMap::new(),
            failed: failed.clone(),
            tail,
            applied_shared: applied.clone(),
        };
        let syncer = writer::Syncer {
            db: db.clone(),
            db_file,
            durable: durable_tx,
            failed,
        };
        let handle = std::thread::Builder::new()
            .name("eventlog-writer".into())
            .spawn(move || w.run(rx, syncer))?;
        Ok(EventLog {
            inner: Arc::new(Inner {
                db,
                models,
                tree,
                path: dir.to_path_buf(),
                payload_key: options.payload_key,
                tx: Mutex::new(Some(tx)),
                durable: durable_rx,
                applied,
                writer: Mutex::new(Some(handle)),
            }),
        })
    }

    /// The sled database, so that read models live in trees beside the log and one process
    /// holds one lock.
    pub fn db(&self) -> &sled::Db {
        &self.inner.db
    }

    /// The read models' database, beside the log in the same folder (and under its lock).
    pub fn models_db(&self) -> &sled::Db {
        &self.inner.models
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    fn sender(&self) -> Result<mpsc::Sender<AppendCmd>> {
        self.inner
            .tx
            .lock()
            .map_err(|_| Error::Closed)?
            .clone()
            .ok_or(Error::Closed)
    }

    /// Appends `events` to `stream` of `tenant`, all or nothing, once `expected` holds.
    /// Returns after the events are durable.
    pub async fn append(
        &self,
        tenant: Uuid,
        stream: StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        meta: Metadata,
    ) -> Result<AppendOutcome> {
        let (cmd, rx) = AppendCmd::new(tenant, stream, expected, events, meta);
        self.sender()?.send(cmd).await.map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)?
    }

    /// [`EventLog::append`] for callers outside an async runtime (the CLI, tools).
    pub fn append_blocking(
        &self,
        tenant: Uuid,
        stream: StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        meta: Metadata,
    ) -> Result<AppendOutcome> {
        let (cmd, rx) = AppendCmd::new(tenant, stream, expected, events, meta);
        self.sender()?
            .blocking_send(cmd)
            .map_err(|_| Error::Closed)?;
        rx.blocking_recv().map_err(|_| Error::Closed)?
    }

    /// The last durable global position.
    pub fn head(&self) -> u64 {
        *self.inner.durable.borrow()
    }

    /// Watches the durable head.
    pub fn watch_head(&self) -> watch::Receiver<u64> {
        self.inner.durable.clone()
    }

    fn get_record(&self, position: u64) -> Result<Option<RecordedEvent>> {
        match chunk::record_bytes(&self.inner.tree, position)? {
            None => Ok(None),
            Some(bytes) => RecordedEvent::decode(&bytes)
                .map(|(r, _)| Some(r))
                .map_err(|reason| Error::Corrupt { position, reason }),
        }
    }

    /// The writer's last applied position; beyond the durable head only while a group is
    /// being made durable.
    pub(crate) fn applied(&self) -> u64 {
        self.inner.applied.load(Ordering::SeqCst)
    }

    /// The records at `positions` (ascending), up to the durable head. Consecutive positions
    /// often share a chunk, so the last chunk read is kept.
    fn records_at(
        &self,
        positions: impl Iterator<Item = Result<u64>>,
        max: usize,
    ) -> Result<Vec<RecordedEvent>> {
        let head = self.head();
        let mut out = Vec::new();
        let mut cache = chunk::ChunkCache::default();
        for pos in positions {
            let pos = pos?;
            if pos > head || out.len() >= max {
                break;
            }
            let found = cache.record(&self.inner.tree, pos)?;
            let bytes = found.ok_or_else(|| Error::Corrupt {
                position: pos,
                reason: "indexed record is missing".into(),
            })?;
            let (rec, _) = RecordedEvent::decode(&bytes).map_err(|reason| Error::Corrupt {
                position: pos,
                reason,
            })?;
            out.push(rec);
        }
        Ok(out)
    }

    /// Events of every tenant after `after` (exclusive), in position order, up to the durable
    /// head. For projectors, replication and operators only: never for a tenant's caller.
    pub fn read_all(&self, after: u64, max: usize) -> Result<Vec<RecordedEvent>> {
        let head = self.head();
        if after >= head || max == 0 {
            return Ok(Vec::new());
        }
        let start = match chunk::chunk_at(&self.inner.tree, after + 1)? {
            Some((first, _)) => first,
            None => 1,
        };
        let mut out = Vec::with_capacity(max.min(4096));
        for item in self
            .inner
            .tree
            .range(keys::global(start)..=keys::global(head))
        {
            let (k, v) = item?;
            for r in chunk::entry_records(&k, &v)? {
                let (position, bytes) = r?;
                if position <= after {
                    continue;
                }
                if position > head || out.len() >= max {
                    return Ok(out);
                }
                let (rec, _) = RecordedEvent::decode(bytes)
                    .map_err(|reason| Error::Corrupt { position, reason })?;
                out.push(rec);
            }
        }
        Ok(out)
    }

    /// One stream of one tenant from `from_version` (inclusive).
    pub fn read_stream(
        &self,
        tenant: Uuid,
        stream: &StreamId,
        from_version: u64,
        max: usize,
    ) -> Result<Vec<RecordedEvent>> {
        stream.validate()?;
        let prefix = keys::stream_prefix(tenant, stream);
        let start = keys::stream_event(tenant, stream, from_version.max(1));
        let mut end = prefix.clone();
        end.extend_from_slice(&u64::MAX.to_be_bytes());
        let positions = self
            .inner
            .tree
            .range(start..=end)
            .map(|item| -> Result<u64> {
                let (_, v) = item?;
                keys::u64_value(&v).ok_or_else(|| Error::Storage("bad stream index".into()))
            });
        self.records_at(positions, max)
    }

    /// The current (durable) version of a stream; 0 when it does not exist.
    pub fn stream_version(&self, tenant: Uuid, stream: &StreamId) -> Result<u64> {
        stream.validate()?;
        let head = self.head();
        let prefix = keys::stream_prefix(tenant, stream);
        for item in self.inner.tree.scan_prefix(&prefix).rev() {
            let (k, v) = item?;
            let pos = keys::u64_value(&v).unwrap_or(u64::MAX);
            if pos <= head {
                return Ok(keys::u64_value(&k[prefix.len()..]).unwrap_or(0));
            }
        }
        Ok(0)
    }

    /// One tenant's events after tenant sequence `after` (exclusive).
    pub fn read_tenant(&self, tenant: Uuid, after: u64, max: usize) -> Result<Vec<RecordedEvent>> {
        let start = keys::tenant_seq(tenant, after.saturating_add(1));
        let end = keys::tenant_seq(tenant, u64::MAX);
        let positions = self
            .inner
            .tree
            .range(start..=end)
            .map(|item| -> Result<u64> {
                let (_, v) = item?;
                keys::u64_value(&v).ok_or_else(|| Error::Storage("bad tenant index".into()))
            });
        self.records_at(positions, max)
    }

    /// One tenant's events recorded in `[from, to)`, after tenant sequence `after`.
    pub fn read_tenant_range(
        &self,
        tenant: Uuid,
        from: Option<DateTime<Utc>>,
        to: Option<DateTime<Utc>>,
        after: u64,
        max: usize,
    ) -> Result<Vec<RecordedEvent>> {
        let start_seq = match from {
            Some(from) => self.first_seq_at_or_after(tenant, from.timestamp_micros())?,
            None => 1,
        };
        let after = after.max(start_seq.saturating_sub(1));
        let mut out = self.read_tenant(tenant, after, max)?;
        if let Some(to) = to {
            let to = to.timestamp_micros();
            out.retain(|e| e.recorded_at_us < to);
        }
        Ok(out)
    }

    /// `recorded_at` never decreases along a tenant's sequence, so binary search applies.
    fn first_seq_at_or_after(&self, tenant: Uuid, at_us: i64) -> Result<u64> {
        let last = self.tenant_seq_head(tenant)?;
        let (mut lo, mut hi) = (1u64, last.saturating_add(1));
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let rec = self
                .inner
                .tree
                .get(keys::tenant_seq(tenant, mid))?
                .and_then(|v| keys::u64_value(&v))
                .map(|pos| self.get_record(pos))
                .transpose()?
                .flatten();
            match rec {
                Some(r) if r.recorded_at_us < at_us => lo = mid + 1,
                _ => hi = mid,
            }
        }
        Ok(lo)
    }

    /// The tenant's last durable sequence number; 0 when it has no events.
    pub fn tenant_seq_head(&self, tenant: Uuid) -> Result<u64> {
        let head = self.head();
        let prefix = keys::tenant_prefix(keys::TENANT_SEQ, tenant);
        for item in self.inner.tree.scan_prefix(&prefix).rev() {
            let (k, v) = item?;
            if keys::u64_value(&v).unwrap_or(u64::MAX) <= head {
                return Ok(keys::u64_value(&k[prefix.len()..]).unwrap_or(0));
            }
        }
        Ok(0)
    }

    /// Follows the log from `after` (exclusive): first what is stored, then live.
    pub fn subscribe(&self, after: u64) -> Subscription {
        Subscription::new(self.clone(), after)
    }

    /// Walks the hash chains (every tenant's, or one) and reports the first break.
    pub fn verify(&self, tenant: Option<Uuid>) -> Result<VerifyReport> {
        verify::verify(self, tenant)
    }

    /// [`EventLog::verify`] with a chosen number of threads (the walk of every tenant is
    /// split into that many ranges); for tests of the split itself.
    pub fn verify_with_threads(
        &self,
        tenant: Option<Uuid>,
        threads: usize,
    ) -> Result<VerifyReport> {
        verify::verify_with_threads(self, tenant, threads)
    }

    pub(crate) fn tree(&self) -> &sled::Tree {
        &self.inner.tree
    }

    pub(crate) fn payload_key(&self) -> &[u8; 32] {
        &self.inner.payload_key
    }
}
