//! Suppression entries of every tenant, and the global ones (partition [`GLOBAL_TENANT`]),
//! for the API and for the check a send makes.
//!
//! Keys (`<p>` is the 16 bytes of the partition: the tenant id, or nil for global entries):
//! - `e/<p>/<address>` → the entry ([`Stored`], bincode), in address order for listing;
//! - `c/<p>/<canonical address>\0<address>` → `()`: the plus/Gmail-normalised index, so
//!   that with plus addressing on, `a+x@example.com` and `A.B@googlemail.com` find entries
//!   stored as `a@example.com` and `ab@gmail.com`. Only addresses that are not their own
//!   canonical form are indexed (`a+x@example.com`, `a.b@gmail.com`): the others are found
//!   by their entry key, and most addresses are canonical, so the index stays small and
//!   an entry costs one sled insert rather than two;
//! - `n/<p>` → `u64`: how many entries the partition holds, kept in the same batch.
//!
//! A look-up is one sled read per partition: a point get of the exact address. With plus
//! addressing it is a get of the canonical spelling and a one-item range read of the index
//! (and on an index hit, the entry). A miss decodes nothing.
//!
//! The send path's check ([`SuppressionsRead::lookup`]) is answered from a
//! [`SuppressionIndex`] kept in memory beside the tree when the server shares one between
//! the projector and the read side (see [`SuppressionIndex`]): from memory alone, with no
//! sled read (a sled get costs ~2 µs and has a long tail).
use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher};
use std::sync::{Arc, RwLock};

use chrono::{DateTime, Utc};
use domain::message::Category;
use domain::suppression::{
    AppliesTo, Reason, Scope, Source, Suppression, SuppressionEvent, GLOBAL_TENANT,
    SUPPRESSION_IMPORT_STREAM, SUPPRESSION_STREAM,
};
use domain::DomainEvent;
use eventlog::RecordedEvent;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::model::{decode, model_key, read_checkpoint, ModelRead, ModelWrite};
use crate::runner::Projector;

pub const NAME: &str = "suppressions";

/// Entries a `list` call reads at most, matching or not, before it hands back a cursor.
pub const SCAN_BUDGET: usize = 20_000;

/// Matching normalisation (lower-cased; with plus addressing, `+tag` dropped and Gmail's dots
/// and `googlemail.com` folded): the same function the webhooks and the dispatcher use.
pub use inbound::address::normalise;

fn partition_key(tag: u8, partition: Uuid, extra: usize) -> Vec<u8> {
    let mut k = Vec::with_capacity(19 + extra);
    k.push(tag);
    k.push(b'/');
    k.extend_from_slice(partition.as_bytes());
    k.push(b'/');
    k
}

/// `e/<p>/<address>`.
pub fn entry_key(partition: Uuid, address: &str) -> Vec<u8> {
    let mut k = partition_key(b'e', partition, address.len());
    k.extend_from_slice(address.as_bytes());
    k
}

/// `c/<p>/<canonical>\0` (the prefix of every index key of that canonical address).
fn canonical_prefix(partition: Uuid, canonical: &str) -> Vec<u8> {
    let mut k = partition_key(b'c', partition, canonical.len() + 1);
    k.extend_from_slice(canonical.as_bytes());
    k.push(0);
    k
}

/// `c/<p>/<normalise(address, true)>\0<address>`; `None` when the address is its own
/// canonical form (its entry key is found directly) or is implausible.
pub fn canonical_key(partition: Uuid, address: &str) -> Option<Vec<u8>> {
    let canonical = normalise(address, true)?;
    if canonical == address {
        return None;
    }
    let mut k = canonical_prefix(partition, &canonical);
    k.extend_from_slice(address.as_bytes());
    Some(k)
}

fn count_key(partition: Uuid) -> Vec<u8> {
    let mut k = partition_key(b'n', partition, 0);
    k.pop();
    k
}

/// The stored form of an entry. bincode cannot carry the domain type's skipped optional
/// fields, so it is mirrored field for field.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Stored {
    applies_to: AppliesTo,
    expires_at_us: Option<i64>,
    address: String,
    scope: Scope,
    reason: Reason,
    source: Source,
    created_by: String,
    created_at_us: i64,
    note: Option<String>,
    message_id: Option<Uuid>,
}

impl Stored {
    fn blocks(&self, category: Category, now_us: i64) -> bool {
        self.expires_at_us.is_none_or(|e| e > now_us)
            && (self.applies_to == AppliesTo::All || category == Category::Marketing)
    }
}

fn time(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap_or_default()
}

impl From<&Suppression> for Stored {
    fn from(s: &Suppression) -> Self {
        Stored {
            applies_to: s.applies_to,
            expires_at_us: s.expires_at.map(|t| t.timestamp_micros()),
            address: s.address.clone(),
            scope: s.scope,
            reason: s.reason,
            source: s.source,
            created_by: s.created_by.clone(),
            created_at_us: s.created_at.timestamp_micros(),
            note: s.note.clone(),
            message_id: s.message_id,
        }
    }
}

impl From<Stored> for Suppression {
    fn from(s: Stored) -> Self {
        Suppression {
            address: s.address,
            scope: s.scope,
            reason: s.reason,
            applies_to: s.applies_to,
            source: s.source,
            created_by: s.created_by,
            created_at: time(s.created_at_us),
            expires_at: s.expires_at_us.map(time),
            note: s.note,
            message_id: s.message_id,
        }
    }
}

/// The first two fields of [`Stored`]: all the index needs, decoded without the rest.
#[derive(Deserialize)]
struct StoredHead {
    applies_to: AppliesTo,
    expires_at_us: Option<i64>,
}

/// An address of a partition, as a 128-bit keyed digest (two SipHash-1-3 with random
/// per-process keys: never stored, and not predictable by whoever chooses addresses).
#[derive(Clone, Copy, PartialEq, Eq)]
struct Digest(u64, u64);

impl Hash for Digest {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Already a keyed hash: hashed again by nothing (see `PassThrough`).
        state.write_u64(self.0);
    }
}

/// A `Hasher` for [`Digest`] keys, which are already uniformly distributed.
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not used by `Digest`; folds anything else in rather than losing it.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type DigestMap<V> = HashMap<Digest, V, BuildHasherDefault<PassThrough>>;

/// What the index keeps of an entry: what decides whether it stops a send, and the
/// entry's stored bytes (the sled value), decoded only when it does.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Compact {
    /// `i64::MAX` when the entry does not expire.
    expires_at_us: i64,
    marketing_only: bool,
    stored: Box<[u8]>,
}

impl Compact {
    fn new(applies_to: AppliesTo, expires_at_us: Option<i64>, stored: Box<[u8]>) -> Self {
        Compact {
            expires_at_us: expires_at_us.unwrap_or(i64::MAX),
            marketing_only: applies_to != AppliesTo::All,
            stored,
        }
    }

    fn of(s: &Suppression) -> Result<Self> {
        let stored = crate::model::encode(&Stored::from(s))?;
        Ok(Compact::new(
            s.applies_to,
            s.expires_at.map(|t| t.timestamp_micros()),
            stored.into_boxed_slice(),
        ))
    }

    /// The same decision as [`Stored::blocks`].
    fn blocks(&self, category: Category, now_us: i64) -> bool {
        self.expires_at_us > now_us && (!self.marketing_only || category == Category::Marketing)
    }
}

#[derive(Default)]
struct Maps {
    /// Every entry, by the digest of (partition, address).
    entries: DigestMap<Compact>,
    /// By the digest of (partition, canonical address): the stored addresses that are not
    /// their own canonical form, in address order (the sled `c/` index, in memory).
    canonical: DigestMap<Vec<Box<str>>>,
    /// The position of the last event applied to the index (the tree's checkpoint when it
    /// was loaded): an event at or before it means the tree was cleared for a rebuild.
    last_position: u64,
}

/// The suppression entries of every partition, in memory, for [`SuppressionsRead::lookup`].
///
/// One is loaded from the tree at start ([`SuppressionIndex::open`], before the projections
/// start, so no event is applied meanwhile) and shared by the [`SuppressionsProjector`],
/// which updates it in `apply`, and the [`SuppressionsRead`], which answers from it.
///
/// It holds, per entry, a 128-bit digest of (partition, address), what decides whether the
/// entry stops a send, and the entry's stored bytes (decoded only on a hit, and checked
/// against the address); plus, for addresses that are not their own canonical form, the
/// canonical index.
///
/// **The index can be a moment ahead of sled**: `apply` updates it as each event is
/// applied, and the projector's sled batch (with the checkpoint) commits after the chunk,
/// so a look-up may see an entry (or miss a removed one) a moment before sled and the
/// checkpoint do. That is acceptable: the read model is disposable and rebuilt from the
/// log, and an event being projected is already durable in the log. If a chunk then fails
/// to commit, the projection halts until a rebuild, which resets the index too.
///
/// Rebuilds: both `Projections::rebuild` and `rebuild_offline` clear the tree and replay
/// from position 1, and `apply` never otherwise sees a position at or before one it has
/// applied (replayed chunks skip applied events), so the first suppression event at or
/// before `last_position` clears the index. Between the tree being cleared and that event
/// the index still answers with the pre-rebuild entries.
pub struct SuppressionIndex {
    keys: (RandomState, RandomState),
    maps: RwLock<Maps>,
}

impl SuppressionIndex {
    /// An empty index, for an empty tree at position 0.
    pub fn empty() -> Arc<SuppressionIndex> {
        Arc::new(SuppressionIndex {
            keys: (RandomState::new(), RandomState::new()),
            maps: RwLock::new(Maps::default()),
        })
    }

    /// Loads the index of the suppressions tree of `log` (`rm.suppressions`). Call it before
    /// the projections start.
    pub fn open(log: &eventlog::EventLog) -> Result<Arc<SuppressionIndex>> {
        let tree = log.models_db().open_tree(format!("rm.{NAME}"))?;
        Self::load(&tree)
    }

    /// Loads the index from a suppressions tree (one pass over its entries).
    pub(crate) fn load(tree: &sled::Tree) -> Result<Arc<SuppressionIndex>> {
        let index = Self::empty();
        {
            let mut maps = index.write();
            let prefix = model_key(b"e/");
            // `me/` + partition + `/`.
            let base = prefix.len() + 17;
            for item in tree.scan_prefix(&prefix) {
                let (k, v) = item?;
                let partition = k
                    .get(prefix.len()..prefix.len() + 16)
                    .and_then(|b| Uuid::from_slice(b).ok());
                let address = k.get(base..).and_then(|a| std::str::from_utf8(a).ok());
                let (Some(partition), Some(address)) = (partition, address) else {
                    return Err(Error::Corrupt(format!("suppression key {k:?}")));
                };
                let head: StoredHead = decode(&v)?;
                let c = Compact::new(head.applies_to, head.expires_at_us, v.as_ref().into());
                index.insert(&mut maps, partition, address, c);
            }
            maps.last_position = read_checkpoint(tree)?;
        }
        Ok(index)
    }

    fn digest(&self, partition: Uuid, address: &str) -> Digest {
        let one = |k: &RandomState| {
            let mut h = k.build_hasher();
            h.write(partition.as_bytes());
            h.write(address.as_bytes());
            h.finish()
        };
        Digest(one(&self.keys.0), one(&self.keys.1))
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Maps> {
        // A panic while holding the lock leaves maps that are still whole (every update is
        // a single map operation): carry on with them.
        self.maps
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Maps> {
        self.maps
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Puts (or replaces) an entry.
    fn insert(&self, maps: &mut Maps, partition: Uuid, address: &str, c: Compact) {
        let new = maps
            .entries
            .insert(self.digest(partition, address), c)
            .is_none();
        if new {
            if let Some(canonical) = normalise(address, true).filter(|n| n != address) {
                let list = maps
                    .canonical
                    .entry(self.digest(partition, &canonical))
                    .or_default();
                if let Err(at) = list.binary_search_by(|a| a.as_ref().cmp(address)) {
                    list.insert(at, address.into());
                }
            }
        }
    }

    fn remove(&self, maps: &mut Maps, partition: Uuid, address: &str) {
        if maps
            .entries
            .remove(&self.digest(partition, address))
            .is_none()
        {
            return;
        }
        if let Some(canonical) = normalise(address, true).filter(|n| n != address) {
            let d = self.digest(partition, &canonical);
            if let Some(list) = maps.canonical.get_mut(&d) {
                list.retain(|a| a.as_ref() != address);
                if list.is_empty() {
                    maps.canonical.remove(&d);
                }
            }
        }
    }

    /// Applies one decoded event at `position` (see the type's notes on rebuilds).
    fn apply(&self, position: u64, partition: Uuid, event: &SuppressionEvent) -> Result<()> {
        // Encoded before the lock is taken.
        let added: Vec<(&str, Compact)> = match event {
            SuppressionEvent::Added(s) => vec![(s.address.as_str(), Compact::of(s)?)],
            SuppressionEvent::Imported(i) => i
                .entries
                .iter()
                .map(|s| Ok((s.address.as_str(), Compact::of(s)?)))
                .collect::<Result<_>>()?,
            SuppressionEvent::Removed(_) => Vec::new(),
        };
        let mut maps = self.write();
        if position <= maps.last_position {
            *maps = Maps::default();
        }
        maps.last_position = position;
        if let SuppressionEvent::Removed(r) = event {
            self.remove(&mut maps, partition, &r.address);
        }
        for (address, c) in added {
            self.insert(&mut maps, partition, address, c);
        }
        Ok(())
    }

    /// The first entry of `partition` that stops `category` at `now` for `exact` (and,
    /// given, its canonical form), tried in the order [`SuppressionsRead::lookup_in_sled`]
    /// tries them, so the answer is the same.
    fn first_blocking(
        &self,
        partition: Uuid,
        exact: &str,
        canonical: Option<&str>,
        category: Category,
        now_us: i64,
    ) -> Result<Option<Suppression>> {
        let maps = self.read();
        let found = |a: &str| -> Result<Option<Suppression>> {
            let Some(c) = maps.entries.get(&self.digest(partition, a)) else {
                return Ok(None);
            };
            if !c.blocks(category, now_us) {
                return Ok(None);
            }
            let s: Stored = decode(&c.stored)?;
            // Digests of distinct addresses do not collide in practice; checked anyway.
            Ok((s.address == a).then(|| Suppression::from(s)))
        };
        match canonical {
            Some(c) => {
                if let Some(s) = found(c)? {
                    return Ok(Some(s));
                }
                if let Some(others) = maps.canonical.get(&self.digest(partition, c)) {
                    for a in others {
                        if let Some(s) = found(a)? {
                            return Ok(Some(s));
                        }
                    }
                }
                Ok(None)
            }
            None => found(exact),
        }
    }

    /// How many entries the index holds (every partition).
    pub fn len(&self) -> usize {
        self.read().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Projects suppression events into the tree, and into a shared [`SuppressionIndex`] when
/// it has one (the server's; the CLI's offline rebuild has none).
#[derive(Default)]
pub struct SuppressionsProjector {
    index: Option<Arc<SuppressionIndex>>,
}

impl SuppressionsProjector {
    /// A projector that keeps `index` up to date as it applies events.
    pub fn with_index(index: Arc<SuppressionIndex>) -> Self {
        SuppressionsProjector { index: Some(index) }
    }

    /// Puts one entry; returns whether the address is new in the partition.
    fn put(model: &mut ModelWrite<'_>, partition: Uuid, s: &Suppression) -> Result<bool> {
        let ek = entry_key(partition, &s.address);
        let new = model.get::<()>(&ek)?.is_none();
        model.put(&ek, &Stored::from(s))?;
        if new {
            if let Some(ck) = canonical_key(partition, &s.address) {
                model.put(&ck, &())?;
            }
        }
        Ok(new)
    }

    fn add_to_count(model: &mut ModelWrite<'_>, partition: Uuid, delta: i64) -> Result<()> {
        if delta == 0 {
            return Ok(());
        }
        let k = count_key(partition);
        let n = model.get::<u64>(&k)?.unwrap_or(0);
        let n = if delta < 0 {
            n.saturating_sub(delta.unsigned_abs())
        } else {
            n.saturating_add(delta.unsigned_abs())
        };
        model.put(&k, &n)
    }
}

impl Projector for SuppressionsProjector {
    fn name(&self) -> &'static str {
        NAME
    }

    fn apply(&self, e: &RecordedEvent, model: &mut ModelWrite<'_>) -> Result<()> {
        if e.stream.kind != SUPPRESSION_STREAM && e.stream.kind != SUPPRESSION_IMPORT_STREAM {
            return Ok(());
        }
        let event = SuppressionEvent::decode(&e.event_type, e.schema_version, &e.payload).map_err(
            |err| Error::Apply {
                projector: NAME.into(),
                position: e.position,
                reason: err.to_string(),
            },
        )?;
        let partition = e.tenant;
        if let Some(index) = &self.index {
            index.apply(e.position, partition, &event)?;
        }
        match event {
            SuppressionEvent::Added(s) => {
                let new = Self::put(model, partition, &s)?;
                Self::add_to_count(model, partition, i64::from(new))
            }
            SuppressionEvent::Imported(i) => {
                let mut added = 0i64;
                for s in &i.entries {
                    if Self::put(model, partition, s)? {
                        added += 1;
                    }
                }
                Self::add_to_count(model, partition, added)
            }
            SuppressionEvent::Removed(r) => {
                let ek = entry_key(partition, &r.address);
                if model.get::<()>(&ek)?.is_some() {
                    model.remove(&ek);
                    if let Some(ck) = canonical_key(partition, &r.address) {
                        model.remove(&ck);
                    }
                    Self::add_to_count(model, partition, -1)?;
                }
                Ok(())
            }
        }
    }
}

/// Which entries a listing shows; every field that is set must match.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SuppressionFilter {
    pub reason: Option<Reason>,
    pub source: Option<Source>,
    pub applies_to: Option<AppliesTo>,
    /// Lower-cased by the caller; entries whose address starts with it.
    pub address_prefix: Option<String>,
}

impl SuppressionFilter {
    fn matches(&self, s: &Stored) -> bool {
        self.reason.is_none_or(|r| r == s.reason)
            && self.source.is_none_or(|r| r == s.source)
            && self.applies_to.is_none_or(|a| a == s.applies_to)
    }
}

/// One page of a listing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SuppressionPage {
    pub entries: Vec<Suppression>,
    /// Where the next page starts (exclusive), when more entries may follow: the last
    /// address returned, or the last one read when the scan budget ran out first.
    pub next_after: Option<String>,
}

/// Queries over the model. Every call names one partition (a tenant, or
/// [`GLOBAL_TENANT`]); only [`SuppressionsRead::lookup`] reads two (the tenant's and the
/// global one).
#[derive(Clone)]
pub struct SuppressionsRead {
    model: ModelRead,
    index: Option<Arc<SuppressionIndex>>,
}

impl SuppressionsRead {
    /// Queries answered from sled alone.
    pub fn new(model: ModelRead) -> Self {
        SuppressionsRead { model, index: None }
    }

    /// Queries whose [`SuppressionsRead::lookup`] is answered from `index`, which the
    /// projector of the same tree must keep up to date
    /// ([`SuppressionsProjector::with_index`]).
    pub fn with_index(model: ModelRead, index: Arc<SuppressionIndex>) -> Self {
        SuppressionsRead {
            model,
            index: Some(index),
        }
    }

    /// The entry stored under exactly `address` (lower-cased here), expired or not.
    pub fn get(&self, partition: Uuid, address: &str) -> Result<Option<Suppression>> {
        let Some(address) = normalise(address, false) else {
            return Ok(None);
        };
        Ok(self
            .model
            .get::<Stored>(&entry_key(partition, &address))?
            .map(Suppression::from))
    }

    /// Addresses stored in `partition` whose canonical form is `canonical`.
    fn canonical_matches(&self, partition: Uuid, canonical: &str) -> Result<Vec<String>> {
        let prefix = canonical_prefix(partition, canonical);
        let keys = self.model.scan::<()>(&prefix, None, 64)?;
        Ok(keys
            .into_iter()
            .filter_map(|(k, ())| {
                k.get(prefix.len()..)
                    .and_then(|a| std::str::from_utf8(a).ok())
                    .map(str::to_string)
            })
            .collect())
    }

    /// The first entry among `addresses` of `partition` that stops `category` at `now`.
    /// One sled read per address; a miss decodes nothing.
    fn first_blocking<'a>(
        &self,
        partition: Uuid,
        addresses: impl IntoIterator<Item = &'a str>,
        category: Category,
        now_us: i64,
    ) -> Result<Option<Suppression>> {
        for a in addresses {
            if let Some(s) = self.model.get::<Stored>(&entry_key(partition, a))? {
                if s.blocks(category, now_us) {
                    return Ok(Some(Suppression::from(s)));
                }
            }
        }
        Ok(None)
    }

    /// The entry that stops mail of `category` to `address` at `now`, if any: the tenant's
    /// own first, then a global one. The address always matches exactly (case aside); with
    /// `plus_addressing` it also matches through the canonical index.
    pub fn lookup(
        &self,
        tenant: Uuid,
        address: &str,
        plus_addressing: bool,
        category: Category,
        now: DateTime<Utc>,
    ) -> Result<Option<Suppression>> {
        // Already lower-case printable ASCII: used as it is (an implausible address matches
        // no stored key, every one of which is valid), without allocating.
        let exact = if address
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b.is_ascii_uppercase())
        {
            std::borrow::Cow::Borrowed(address)
        } else {
            match normalise(address, false) {
                Some(a) => std::borrow::Cow::Owned(a),
                None => return Ok(None),
            }
        };
        let canonical = if plus_addressing {
            normalise(&exact, true)
        } else {
            None
        };
        let now_us = now.timestamp_micros();
        let partitions: &[Uuid] = if tenant == GLOBAL_TENANT {
            &[GLOBAL_TENANT]
        } else {
            &[tenant, GLOBAL_TENANT]
        };
        let Some(index) = &self.index else {
            return self.lookup_in_sled(partitions, &exact, canonical.as_deref(), category, now_us);
        };
        // From memory alone: no sled read (see `SuppressionIndex`).
        for &p in partitions {
            if let Some(s) =
                index.first_blocking(p, &exact, canonical.as_deref(), category, now_us)?
            {
                return Ok(Some(s));
            }
        }
        Ok(None)
    }

    /// [`SuppressionsRead::lookup`] from sled alone.
    fn lookup_in_sled(
        &self,
        partitions: &[Uuid],
        exact: &str,
        canonical: Option<&str>,
        category: Category,
        now_us: i64,
    ) -> Result<Option<Suppression>> {
        for &p in partitions {
            let found = match canonical {
                // The entry stored under the canonical spelling itself, then the others the
                // index knows (the exact spelling is one of the two).
                Some(c) => match self.first_blocking(p, [c], category, now_us)? {
                    Some(s) => Some(s),
                    None => self.first_blocking(
                        p,
                        self.canonical_matches(p, c)?.iter().map(String::as_str),
                        category,
                        now_us,
                    )?,
                },
                None => self.first_blocking(p, [exact], category, now_us)?,
            };
            if found.is_some() {
                return Ok(found);
            }
        }
        Ok(None)
    }

    /// Every entry of `partition` that `address` matches (exactly, and with
    /// `plus_addressing` through the canonical index), expired ones included; the exact
    /// one first.
    pub fn matches(
        &self,
        partition: Uuid,
        address: &str,
        plus_addressing: bool,
    ) -> Result<Vec<Suppression>> {
        let Some(exact) = normalise(address, false) else {
            return Ok(Vec::new());
        };
        let mut addresses = vec![exact.clone()];
        if plus_addressing {
            if let Some(c) = normalise(&exact, true) {
                let others = self.canonical_matches(partition, &c)?;
                if c != exact {
                    addresses.push(c);
                }
                addresses.extend(others.into_iter().filter(|a| *a != exact));
            }
        }
        let mut out = Vec::new();
        for a in addresses {
            if let Some(s) = self.model.get::<Stored>(&entry_key(partition, &a))? {
                out.push(Suppression::from(s));
            }
        }
        Ok(out)
    }

    /// Entries of `partition` in address order, after `after` (exclusive), at most `first`
    /// that match `filter`. Reads at most [`SCAN_BUDGET`] entries.
    pub fn list(
        &self,
        partition: Uuid,
        filter: &SuppressionFilter,
        after: Option<&str>,
        first: usize,
    ) -> Result<SuppressionPage> {
        let address_prefix = filter.address_prefix.as_deref().unwrap_or("");
        let prefix = entry_key(partition, address_prefix);
        // A cursor before the prefix's range would end the scan at once: start at the prefix.
        let mut cursor = after
            .filter(|a| *a >= address_prefix)
            .map(|a| entry_key(partition, a));
        let base = entry_key(partition, "").len();
        let mut page = SuppressionPage::default();
        let mut scanned = 0;
        if first == 0 {
            return Ok(page);
        }
        loop {
            let want = (SCAN_BUDGET - scanned).min(512);
            let batch = self
                .model
                .scan::<Stored>(&prefix, cursor.as_deref(), want)?;
            let exhausted = batch.len() < want;
            for (k, s) in batch {
                scanned += 1;
                let last = k.get(base..).and_then(|a| std::str::from_utf8(a).ok());
                if filter.matches(&s) {
                    page.entries.push(Suppression::from(s));
                    if page.entries.len() >= first {
                        page.next_after = last.map(str::to_string);
                        return Ok(page);
                    }
                }
                cursor = Some(k);
            }
            if exhausted {
                return Ok(page);
            }
            if scanned >= SCAN_BUDGET {
                page.next_after = cursor
                    .as_deref()
                    .and_then(|k| k.get(base..))
                    .and_then(|a| std::str::from_utf8(a).ok())
                    .map(str::to_string);
                return Ok(page);
            }
        }
    }

    /// Reads the whole model once, so that sled has every page in memory before the first
    /// look-ups (sled loads pages lazily: the first look-up into a cold page costs a disk
    /// read). Answers how many keys it read; meant for a background thread at start.
    pub fn warm(&self) -> Result<u64> {
        let mut after: Option<Vec<u8>> = None;
        let mut n = 0u64;
        loop {
            let page = self.model.scan::<()>(b"", after.as_deref(), 8192)?;
            n += page.len() as u64;
            match page.into_iter().last() {
                Some((k, ())) => after = Some(k),
                None => return Ok(n),
            }
        }
    }

    /// How many entries `partition` holds (expired ones included).
    pub fn count(&self, partition: Uuid) -> Result<u64> {
        Ok(self.model.get::<u64>(&count_key(partition))?.unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use domain::suppression::{SuppressionRemoved, SuppressionsImported};
    use eventlog::{Actor, StreamId};

    fn at(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + s, 0).single().unwrap()
    }

    fn entry(address: &str) -> Suppression {
        Suppression {
            address: address.into(),
            scope: Scope::Tenant,
            reason: Reason::HardBounce,
            applies_to: AppliesTo::All,
            source: Source::Api,
            created_by: "operator:operator".into(),
            created_at: at(0),
            expires_at: None,
            note: Some("from a test".into()),
            message_id: Some(Uuid::now_v7()),
        }
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        tree: sled::Tree,
        position: u64,
        index: Arc<SuppressionIndex>,
        projector: SuppressionsProjector,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let db = sled::open(dir.path().join("db")).unwrap();
            let tree = db.open_tree("rm.suppressions").unwrap();
            let index = SuppressionIndex::load(&tree).unwrap();
            Fixture {
                _dir: dir,
                tree,
                position: 0,
                projector: SuppressionsProjector::with_index(index.clone()),
                index,
            }
        }

        fn apply(&mut self, partition: Uuid, events: &[SuppressionEvent]) {
            let mut model = ModelWrite::new(&self.tree);
            for ev in events {
                self.position += 1;
                let kind = match ev {
                    SuppressionEvent::Imported(_) => SUPPRESSION_IMPORT_STREAM,
                    _ => SUPPRESSION_STREAM,
                };
                let recorded = RecordedEvent {
                    event_id: Uuid::now_v7(),
                    tenant: partition,
                    stream: StreamId::new(kind, partition.to_string()),
                    version: self.position,
                    tenant_seq: self.position,
                    position: self.position,
                    recorded_at_us: 0,
                    actor: Actor::System("test".into()),
                    correlation_id: Uuid::nil(),
                    causation_id: None,
                    event_type: ev.event_type().into(),
                    schema_version: ev.schema_version(),
                    payload_digest: [0; 32],
                    hash: [0; 32],
                    payload: ev.encode(),
                };
                self.projector.apply(&recorded, &mut model).unwrap();
            }
            model.commit(self.position).unwrap();
        }

        /// Look-ups answered from the index the projector keeps.
        fn read(&self) -> SuppressionsRead {
            SuppressionsRead::with_index(ModelRead::new(self.tree.clone()), self.index.clone())
        }

        /// Look-ups answered from sled alone.
        fn sled_read(&self) -> SuppressionsRead {
            SuppressionsRead::new(ModelRead::new(self.tree.clone()))
        }
    }

    fn removed(s: &Suppression) -> SuppressionEvent {
        SuppressionEvent::Removed(Box::new(SuppressionRemoved {
            address: s.address.clone(),
            scope: s.scope,
            removed_by: "operator:operator".into(),
            note: "asked".into(),
            removed_at: at(5),
            original: s.clone(),
        }))
    }

    #[test]
    fn keys_have_the_documented_layout() {
        let p = Uuid::from_u128(0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10);
        let mut want = b"e/".to_vec();
        want.extend_from_slice(p.as_bytes());
        want.extend_from_slice(b"/a+x@example.com");
        assert_eq!(entry_key(p, "a+x@example.com"), want);
        let mut want = b"c/".to_vec();
        want.extend_from_slice(p.as_bytes());
        want.extend_from_slice(b"/ab@gmail.com\0a.b+news@googlemail.com");
        assert_eq!(canonical_key(p, "a.b+news@googlemail.com").unwrap(), want);
        let mut want = b"n/".to_vec();
        want.extend_from_slice(p.as_bytes());
        assert_eq!(count_key(p), want);
        assert_eq!(canonical_key(p, "not an address"), None);
        // A canonical address is found by its entry key and has no index key.
        assert_eq!(canonical_key(p, "a@example.com"), None);
        assert_eq!(canonical_key(p, "ab@gmail.com"), None);
    }

    #[test]
    fn stored_entries_round_trip() {
        let mut s = entry("a@example.com");
        s.expires_at = Some(at(10));
        s.applies_to = AppliesTo::Marketing;
        let bytes = crate::model::encode(&Stored::from(&s)).unwrap();
        let back: Stored = crate::model::decode(&bytes).unwrap();
        assert_eq!(Suppression::from(back), s);
        let stored: Stored = crate::model::decode(&bytes).unwrap();
        assert!(stored.blocks(Category::Marketing, at(9).timestamp_micros()));
        assert!(!stored.blocks(Category::Transactional, at(9).timestamp_micros()));
        assert!(!stored.blocks(Category::Marketing, at(10).timestamp_micros()));
    }

    #[test]
    fn lookup_matches_exactly_and_canonically_only_with_plus_addressing() {
        let tenant = Uuid::now_v7();
        let mut f = Fixture::new();
        f.apply(
            tenant,
            &[
                SuppressionEvent::Added(entry("a@example.com")),
                SuppressionEvent::Added(entry("ab@gmail.com")),
            ],
        );
        let r = f.read();
        let now = at(1);
        let t = Category::Transactional;
        // Exact, whatever the case.
        assert!(r
            .lookup(tenant, "A@Example.COM", false, t, now)
            .unwrap()
            .is_some());
        assert!(r
            .lookup(tenant, " a@example.com ", false, t, now)
            .unwrap()
            .is_some());
        // Plus and Gmail spellings only with plus addressing.
        for other in [
            "a+x@example.com",
            "A.B@googlemail.com",
            "a.b+news@gmail.com",
        ] {
            assert!(
                r.lookup(tenant, other, false, t, now).unwrap().is_none(),
                "{other}"
            );
            let hit = r.lookup(tenant, other, true, t, now).unwrap();
            assert!(hit.is_some(), "{other}");
        }
        assert_eq!(
            r.lookup(tenant, "A.B@googlemail.com", true, t, now)
                .unwrap()
                .unwrap()
                .address,
            "ab@gmail.com"
        );
        // Not a tag: nothing before the `+`; other domains keep their dots.
        assert!(r
            .lookup(tenant, "a.b@example.com", true, t, now)
            .unwrap()
            .is_none());
        assert!(r
            .lookup(tenant, "b@example.com", true, t, now)
            .unwrap()
            .is_none());
        assert!(r
            .lookup(tenant, "not an address", true, t, now)
            .unwrap()
            .is_none());
        // Another tenant sees none of it.
        let other = Uuid::now_v7();
        assert!(r
            .lookup(other, "a@example.com", true, t, now)
            .unwrap()
            .is_none());
        assert!(r.get(other, "a@example.com").unwrap().is_none());
        assert_eq!(r.count(tenant).unwrap(), 2);
        assert_eq!(r.count(other).unwrap(), 0);
    }

    #[test]
    fn a_stored_plus_address_is_found_from_its_base_and_siblings() {
        let tenant = Uuid::now_v7();
        let mut f = Fixture::new();
        f.apply(
            tenant,
            &[SuppressionEvent::Added(entry("jane+news@example.com"))],
        );
        let r = f.read();
        let t = Category::Transactional;
        assert!(r
            .lookup(tenant, "jane@example.com", false, t, at(1))
            .unwrap()
            .is_none());
        assert!(r
            .lookup(tenant, "jane@example.com", true, t, at(1))
            .unwrap()
            .is_some());
        assert!(r
            .lookup(tenant, "jane+other@example.com", true, t, at(1))
            .unwrap()
            .is_some());
        assert_eq!(
            r.matches(tenant, "jane@example.com", true).unwrap().len(),
            1
        );
        assert_eq!(
            r.matches(tenant, "jane@example.com", false).unwrap().len(),
            0
        );
    }

    #[test]
    fn lookup_honours_category_expiry_and_global_entries() {
        let tenant = Uuid::now_v7();
        let mut f = Fixture::new();
        let mut marketing = entry("m@example.com");
        marketing.applies_to = AppliesTo::Marketing;
        let mut expiring = entry("x@example.com");
        expiring.expires_at = Some(at(10));
        f.apply(
            tenant,
            &[
                SuppressionEvent::Added(marketing),
                SuppressionEvent::Added(expiring),
            ],
        );
        let mut global = entry("g@example.com");
        global.scope = Scope::Global;
        f.apply(GLOBAL_TENANT, &[SuppressionEvent::Added(global)]);
        let r = f.read();
        let (t, m) = (Category::Transactional, Category::Marketing);
        assert!(r
            .lookup(tenant, "m@example.com", false, t, at(1))
            .unwrap()
            .is_none());
        assert!(r
            .lookup(tenant, "m@example.com", false, m, at(1))
            .unwrap()
            .is_some());
        assert!(r
            .lookup(tenant, "x@example.com", false, t, at(9))
            .unwrap()
            .is_some());
        assert!(r
            .lookup(tenant, "x@example.com", false, t, at(10))
            .unwrap()
            .is_none());
        let g = r
            .lookup(tenant, "G@example.com", false, t, at(1))
            .unwrap()
            .unwrap();
        assert_eq!(g.scope, Scope::Global);
        let other = Uuid::now_v7();
        assert!(r
            .lookup(other, "g@example.com", true, t, at(1))
            .unwrap()
            .is_some());
        // The global entry is not in the tenant's own partition.
        assert!(r.get(tenant, "g@example.com").unwrap().is_none());
        assert_eq!(r.count(GLOBAL_TENANT).unwrap(), 1);
    }

    #[test]
    fn removal_deletes_both_keys_and_imports_put_all() {
        let tenant = Uuid::now_v7();
        let mut f = Fixture::new();
        let a = entry("a.b@gmail.com");
        f.apply(tenant, &[SuppressionEvent::Added(a.clone())]);
        // Adding again (changed) does not count twice.
        let mut again = a.clone();
        again.reason = Reason::Complaint;
        f.apply(tenant, &[SuppressionEvent::Added(again)]);
        assert_eq!(f.read().count(tenant).unwrap(), 1);
        assert_eq!(
            f.read()
                .get(tenant, "a.b@gmail.com")
                .unwrap()
                .unwrap()
                .reason,
            Reason::Complaint
        );
        let mut index = b"mc/".to_vec();
        index.extend_from_slice(tenant.as_bytes());
        assert_eq!(f.tree.scan_prefix(&index).count(), 1);
        f.apply(tenant, &[removed(&a)]);
        let r = f.read();
        assert!(r.get(tenant, "a.b@gmail.com").unwrap().is_none());
        assert!(r
            .lookup(tenant, "ab@gmail.com", true, Category::Transactional, at(6))
            .unwrap()
            .is_none());
        assert_eq!(r.count(tenant).unwrap(), 0);
        // No key of the partition is left but the count.
        let mut prefix = b"mc/".to_vec();
        prefix.extend_from_slice(tenant.as_bytes());
        assert_eq!(f.tree.scan_prefix(&prefix).count(), 0);
        // Removing what is not there changes nothing.
        f.apply(tenant, &[removed(&a)]);
        assert_eq!(f.read().count(tenant).unwrap(), 0);

        let entries: Vec<_> = (0..300)
            .map(|i| entry(&format!("user{i:04}@example.com")))
            .collect();
        f.apply(
            tenant,
            &[SuppressionEvent::Imported(SuppressionsImported {
                import_id: Uuid::now_v7(),
                chunk: 1,
                entries,
            })],
        );
        let r = f.read();
        assert_eq!(r.count(tenant).unwrap(), 300);
        assert!(r.get(tenant, "user0299@example.com").unwrap().is_some());
    }

    #[test]
    fn the_index_answers_as_sled_does_and_survives_reload_and_rebuild() {
        let tenant = Uuid::now_v7();
        let mut f = Fixture::new();
        let mut marketing = entry("m@example.com");
        marketing.applies_to = AppliesTo::Marketing;
        let mut expiring = entry("x@example.com");
        expiring.expires_at = Some(at(10));
        let plus = entry("jane+news@example.com");
        let gmail = entry("a.b@gmail.com");
        let gone = entry("gone@example.com");
        let tenant_events = vec![
            SuppressionEvent::Added(marketing),
            SuppressionEvent::Added(expiring),
            SuppressionEvent::Added(plus.clone()),
            SuppressionEvent::Added(gmail),
            SuppressionEvent::Added(gone.clone()),
            SuppressionEvent::Imported(SuppressionsImported {
                import_id: Uuid::now_v7(),
                chunk: 1,
                entries: (0..20)
                    .map(|i| entry(&format!("u{i}+t@example.com")))
                    .collect(),
            }),
            removed(&gone),
        ];
        f.apply(tenant, &tenant_events);
        let mut global = entry("g@example.com");
        global.scope = Scope::Global;
        f.apply(GLOBAL_TENANT, &[SuppressionEvent::Added(global)]);
        // 5 added, 1 removed, 20 imported, 1 global.
        assert_eq!(f.index.len(), 25);

        let probes = [
            "m@example.com",
            "x@example.com",
            "X@Example.com",
            "jane@example.com",
            "jane+other@example.com",
            "jane+news@example.com",
            "ab@gmail.com",
            "A.B+x@googlemail.com",
            "gone@example.com",
            "g@example.com",
            "g+x@example.com",
            "u7@example.com",
            "u7+t@example.com",
            "nobody@example.com",
            "not an address",
        ];
        let compare = |f: &Fixture, index: &Arc<SuppressionIndex>| {
            let fast = SuppressionsRead::with_index(ModelRead::new(f.tree.clone()), index.clone());
            let slow = f.sled_read();
            let mut hits = 0;
            for t in [tenant, Uuid::now_v7(), GLOBAL_TENANT] {
                for a in probes {
                    for plus in [false, true] {
                        for c in [Category::Transactional, Category::Marketing] {
                            for now in [at(1), at(10)] {
                                let want = slow.lookup(t, a, plus, c, now).unwrap();
                                let got = fast.lookup(t, a, plus, c, now).unwrap();
                                assert_eq!(got, want, "{t} {a} plus={plus} {c:?} {now}");
                                hits += usize::from(got.is_some());
                            }
                        }
                    }
                }
            }
            hits
        };
        let hits = compare(&f, &f.index);
        assert!(hits > 50, "{hits}");
        let r = f.read();
        let t = Category::Transactional;
        assert_eq!(
            r.lookup(tenant, "jane@example.com", true, t, at(1))
                .unwrap()
                .unwrap()
                .address,
            "jane+news@example.com"
        );
        assert!(r
            .lookup(tenant, "gone@example.com", false, t, at(1))
            .unwrap()
            .is_none());
        assert!(r
            .lookup(tenant, "x@example.com", false, t, at(10))
            .unwrap()
            .is_none());
        assert_eq!(
            r.lookup(tenant, "g@example.com", false, t, at(1))
                .unwrap()
                .unwrap()
                .scope,
            Scope::Global
        );

        // Loaded afresh from the tree (a restart), the index answers the same.
        let reloaded = SuppressionIndex::load(&f.tree).unwrap();
        assert_eq!(reloaded.len(), 25);
        assert_eq!(compare(&f, &reloaded), hits);

        // Removing the plus address takes it out of the canonical index too.
        f.apply(tenant, &[removed(&plus)]);
        assert!(r
            .lookup(tenant, "jane@example.com", true, t, at(1))
            .unwrap()
            .is_none());

        // A rebuild clears the tree and replays from the start: the index starts over.
        f.tree.clear().unwrap();
        f.position = 0;
        f.apply(
            tenant,
            &[SuppressionEvent::Added(entry("only@example.com"))],
        );
        assert_eq!(f.index.len(), 1);
        assert!(r
            .lookup(tenant, "g@example.com", false, t, at(1))
            .unwrap()
            .is_none());
        assert!(r
            .lookup(tenant, "only@example.com", false, t, at(1))
            .unwrap()
            .is_some());
        compare(&f, &f.index);
    }

    #[test]
    fn list_pages_in_address_order_with_filters() {
        let tenant = Uuid::now_v7();
        let mut f = Fixture::new();
        let mut events = Vec::new();
        for i in 0..50 {
            let mut e = entry(&format!("u{i:02}@example.com"));
            if i % 5 == 0 {
                e.reason = Reason::Complaint;
            }
            events.push(SuppressionEvent::Added(e));
        }
        f.apply(tenant, &events);
        f.apply(
            Uuid::now_v7(),
            &[SuppressionEvent::Added(entry("u00@other.example"))],
        );
        let r = f.read();
        let all = SuppressionFilter::default();
        let p1 = r.list(tenant, &all, None, 20).unwrap();
        assert_eq!(p1.entries.len(), 20);
        assert_eq!(p1.entries[0].address, "u00@example.com");
        assert_eq!(p1.next_after.as_deref(), Some("u19@example.com"));
        let p2 = r.list(tenant, &all, p1.next_after.as_deref(), 100).unwrap();
        assert_eq!(p2.entries.len(), 30);
        assert_eq!(p2.next_after, None);
        let complaints = SuppressionFilter {
            reason: Some(Reason::Complaint),
            ..SuppressionFilter::default()
        };
        let c = r.list(tenant, &complaints, None, 100).unwrap();
        assert_eq!(c.entries.len(), 10);
        assert!(c.entries.iter().all(|e| e.reason == Reason::Complaint));
        let prefixed = SuppressionFilter {
            address_prefix: Some("u3".into()),
            ..SuppressionFilter::default()
        };
        let p = r.list(tenant, &prefixed, None, 100).unwrap();
        assert_eq!(p.entries.len(), 10);
        assert_eq!(p.entries[0].address, "u30@example.com");
        // A cursor before the prefix starts at the prefix.
        let p = r
            .list(tenant, &prefixed, Some("u01@example.com"), 100)
            .unwrap();
        assert_eq!(p.entries.len(), 10);
        let p = r
            .list(tenant, &prefixed, Some("u35@example.com"), 100)
            .unwrap();
        assert_eq!(p.entries.len(), 4);
    }
}
