//! Chunks: how records are laid out in the `G` subspace.
//!
//! Consecutive records are stored together in one sled value, keyed by the position of the
//! first: `G first → u8 format | (u32 len | record)*`. A record's position is its chunk's
//! key plus its index, and the record repeats it (so verify checks that the two agree).
//!
//! Why: sled 0.34 costs about a microsecond per item iterated and splits a leaf every 16
//! new keys. One item per group of appends instead of one per event makes replay and
//! verify several times faster and takes most of the tree work off the append path.
//! A chunk never exceeds [`CHUNK_MAX`], well under the size where sled moves values to blob
//! files that it never fsyncs.
use std::ops::Range;

use crate::error::{Error, Result};
use crate::keys;

pub const CHUNK_FORMAT: u8 = 1;
/// A chunk being filled by one group is closed once it reaches this size.
pub const CHUNK_TARGET: usize = 32 * 1024;
/// The last chunk is extended by later groups (rewritten whole) while it is smaller than
/// this, so that appends made one at a time still share chunks.
pub const CHUNK_COALESCE: usize = 4 * 1024;
/// No chunk grows beyond this; a single record is at most `MAX_PAYLOAD` plus its header.
pub const CHUNK_MAX: usize = 100 * 1024;

/// Adds a record to a chunk value.
pub fn push(chunk: &mut Vec<u8>, record: &[u8]) {
    if chunk.is_empty() {
        chunk.push(CHUNK_FORMAT);
    }
    // Records are bounded by MAX_PAYLOAD plus a small header, far below u32::MAX.
    chunk.extend_from_slice(
        &u32::try_from(record.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    chunk.extend_from_slice(record);
}

/// Whether `record` may still go into `chunk`, given the chunk's size limit.
pub fn fits(chunk: &[u8], record_len: usize, limit: usize) -> bool {
    chunk.is_empty() || (chunk.len() < limit && chunk.len() + 4 + record_len <= CHUNK_MAX)
}

/// The records of one chunk with their positions.
pub struct Records<'a> {
    bytes: &'a [u8],
    at: usize,
    next: u64,
}

pub fn records(first: u64, bytes: &[u8]) -> Result<Records<'_>, String> {
    match bytes.first() {
        Some(&CHUNK_FORMAT) => Ok(Records {
            bytes,
            at: 1,
            next: first,
        }),
        Some(f) => Err(format!("unknown chunk format {f}")),
        None => Err("empty chunk".into()),
    }
}

impl<'a> Iterator for Records<'a> {
    /// (position, byte range in the chunk, record bytes)
    type Item = Result<(u64, Range<usize>, &'a [u8]), String>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.at >= self.bytes.len() {
            return None;
        }
        let len = self
            .bytes
            .get(self.at..self.at + 4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(u32::from_be_bytes)
            .and_then(|l| usize::try_from(l).ok());
        let Some(len) = len else {
            self.at = self.bytes.len();
            return Some(Err(format!("chunk truncated at position {}", self.next)));
        };
        let start = self.at + 4;
        let Some(record) = start
            .checked_add(len)
            .and_then(|end| self.bytes.get(start..end))
        else {
            self.at = self.bytes.len();
            return Some(Err(format!("chunk truncated at position {}", self.next)));
        };
        self.at = start + len;
        let position = self.next;
        self.next += 1;
        Some(Ok((position, start..start + len, record)))
    }
}

/// The records of one stored `G` entry (its sled key and value), with their positions; a
/// damaged chunk is an [`Error::Corrupt`].
pub fn entry_records<'a>(
    key: &[u8],
    value: &'a [u8],
) -> Result<impl Iterator<Item = Result<(u64, &'a [u8])>> + 'a> {
    let first = key.get(1..).and_then(keys::u64_value).unwrap_or(0);
    let corrupt = move |reason| Error::Corrupt {
        position: first,
        reason,
    };
    let records = records(first, value).map_err(corrupt)?;
    Ok(records.map(move |r| {
        r.map(|(position, _, bytes)| (position, bytes))
            .map_err(corrupt)
    }))
}

/// The chunk holding `position`, if any: (first position, value).
pub fn chunk_at(tree: &sled::Tree, position: u64) -> Result<Option<(u64, sled::IVec)>> {
    match tree
        .range(keys::global(0)..=keys::global(position))
        .next_back()
    {
        Some(item) => {
            let (k, v) = item?;
            let first =
                keys::u64_value(&k[1..]).ok_or_else(|| Error::Storage("bad chunk key".into()))?;
            Ok(Some((first, v)))
        }
        None => Ok(None),
    }
}

/// The stored bytes of the record at `position`.
pub fn record_bytes(tree: &sled::Tree, position: u64) -> Result<Option<Vec<u8>>> {
    let Some((first, chunk)) = chunk_at(tree, position)? else {
        return Ok(None);
    };
    find(first, &chunk, position).map(|r| r.map(|(_, b)| b.to_vec()))
}

/// The byte range and bytes of `position` within a chunk starting at `first`.
pub fn find(first: u64, chunk: &[u8], position: u64) -> Result<Option<(Range<usize>, &[u8])>> {
    if position < first {
        return Ok(None);
    }
    for item in records(first, chunk).map_err(|reason| Error::Corrupt { position, reason })? {
        let (pos, range, bytes) = item.map_err(|reason| Error::Corrupt { position, reason })?;
        if pos == position {
            return Ok(Some((range, bytes)));
        }
    }
    Ok(None)
}

/// Where the record at `position` is stored: the sled key of its chunk in the `log` tree and
/// the record's byte range in that value. For forensics, and for tests that alter stored
/// bytes on purpose.
pub fn record_location(
    tree: &sled::Tree,
    position: u64,
) -> Result<Option<(Vec<u8>, Range<usize>)>> {
    let Some((first, chunk)) = chunk_at(tree, position)? else {
        return Ok(None);
    };
    Ok(find(first, &chunk, position)?.map(|(range, _)| (keys::global(first).to_vec(), range)))
}

/// Point reads of records that keep the last chunk read: consecutive positions of one
/// tenant or stream often share a chunk.
#[derive(Default)]
pub struct ChunkCache {
    cached: Option<(u64, sled::IVec)>,
}

impl ChunkCache {
    pub fn record(&mut self, tree: &sled::Tree, position: u64) -> Result<Option<Vec<u8>>> {
        if let Some((first, bytes)) = &self.cached {
            if let Some((_, b)) = find(*first, bytes, position)? {
                return Ok(Some(b.to_vec()));
            }
        }
        self.cached = chunk_at(tree, position)?;
        match &self.cached {
            Some((first, bytes)) => Ok(find(*first, bytes, position)?.map(|(_, b)| b.to_vec())),
            None => Ok(None),
        }
    }
}
