//! Walking the hash chains.
//!
//! The walk of every tenant is split into contiguous ranges of positions, one per core.
//! Each range is checked on its own, except the first record of each tenant in it, whose
//! link needs the tenant's chain state from the ranges before; those links are checked
//! while the ranges are merged in order. The outcome is exactly that of one sequential
//! walk, including which break is reported first.
use std::collections::HashMap;

use uuid::Uuid;

use crate::chain;
use crate::chunk;
use crate::error::{Error, Result};
use crate::keys;
use crate::record::RecordView;
use crate::writer::decode_tip;
use crate::EventLog;

/// The outcome of walking the chains.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VerifyReport {
    Ok {
        events: u64,
        tenants: u64,
    },
    /// The first place where the log is not what its chain says.
    Broken {
        position: u64,
        tenant: Option<Uuid>,
        tenant_seq: Option<u64>,
        reason: String,
    },
}

fn broken(
    position: u64,
    tenant: Option<Uuid>,
    seq: Option<u64>,
    reason: impl Into<String>,
) -> VerifyReport {
    VerifyReport::Broken {
        position,
        tenant,
        tenant_seq: seq,
        reason: reason.into(),
    }
}

fn position_of(report: &VerifyReport) -> u64 {
    match report {
        VerifyReport::Broken { position, .. } => *position,
        VerifyReport::Ok { .. } => u64::MAX,
    }
}

/// A tenant's stretch of chain within one range.
struct Span {
    first_position: u64,
    first_seq: u64,
    /// The first record's link inputs, checked at merge: header, payload digest, hash.
    first_link: (Vec<u8>, [u8; 32], [u8; 32]),
    last_seq: u64,
    last_hash: [u8; 32],
}

#[derive(Default)]
struct RangeResult {
    /// First and last position walked in this range.
    first: Option<u64>,
    last: u64,
    events: u64,
    spans: HashMap<Uuid, Span>,
    broken: Option<VerifyReport>,
}

/// Checks the chunks whose first position lies in `lo..=hi`, up to the durable `head`.
fn verify_range(
    tree: &sled::Tree,
    key: &[u8; 32],
    lo: u64,
    hi: u64,
    head: u64,
) -> Result<RangeResult> {
    let mut out = RangeResult::default();
    for item in tree.range(keys::global(lo)..=keys::global(hi)) {
        let (k, bytes) = item?;
        let first = keys::u64_value(&k[1..]).unwrap_or(0);
        match out.first {
            Some(_) if first != out.last + 1 => {
                out.broken = Some(broken(out.last + 1, None, None, "missing position"));
                return Ok(out);
            }
            Some(_) => {}
            None => out.first = Some(first),
        }
        let records = match chunk::records(first, &bytes) {
            Ok(r) => r,
            Err(reason) => {
                out.broken = Some(broken(
                    first,
                    None,
                    None,
                    format!("undecodable chunk: {reason}"),
                ));
                return Ok(out);
            }
        };
        for item in records {
            let (pos, _, record) = match item {
                Ok(r) => r,
                Err(reason) => {
                    out.broken = Some(broken(
                        out.last + 1,
                        None,
                        None,
                        format!("undecodable chunk: {reason}"),
                    ));
                    return Ok(out);
                }
            };
            if pos > head {
                return Ok(out);
            }
            if let Some(report) = check_record(key, pos, record, &mut out.spans) {
                out.broken = Some(report);
                return Ok(out);
            }
            out.last = pos;
            out.events += 1;
        }
    }
    Ok(out)
}

/// Checks one record against its tenant's span in the range (or opens the span).
fn check_record(
    key: &[u8; 32],
    pos: u64,
    bytes: &[u8],
    spans: &mut HashMap<Uuid, Span>,
) -> Option<VerifyReport> {
    match RecordView::parse(bytes) {
        Ok(v) => check_view(key, pos, &v, spans),
        Err(reason) => Some(broken(
            pos,
            None,
            None,
            format!("undecodable record: {reason}"),
        )),
    }
}

/// The checks of one parsed record: its position, its payload digest, and its link to the
/// tenant's span (a tenant without a span opens one; its first link is checked at merge).
fn check_view(
    key: &[u8; 32],
    pos: u64,
    v: &RecordView<'_>,
    spans: &mut HashMap<Uuid, Span>,
) -> Option<VerifyReport> {
    let (t, s) = (Some(v.tenant), Some(v.tenant_seq));
    if v.position != pos {
        return Some(broken(
            pos,
            t,
            s,
            format!("record claims position {}", v.position),
        ));
    }
    if chain::payload_digest(key, v.tenant, v.payload) != v.payload_digest {
        return Some(broken(pos, t, s, "payload does not match its digest"));
    }
    match spans.get_mut(&v.tenant) {
        None => {
            spans.insert(
                v.tenant,
                Span {
                    first_position: pos,
                    first_seq: v.tenant_seq,
                    first_link: (v.header.to_vec(), v.payload_digest, v.hash),
                    last_seq: v.tenant_seq,
                    last_hash: v.hash,
                },
            );
        }
        Some(span) => {
            if v.tenant_seq != span.last_seq + 1 {
                return Some(broken(
                    pos,
                    t,
                    s,
                    format!("tenant sequence {} follows {}", v.tenant_seq, span.last_seq),
                ));
            }
            if chain::link(&span.last_hash, v.header, &v.payload_digest) != v.hash {
                return Some(broken(pos, t, s, "chain hash mismatch"));
            }
            span.last_seq = v.tenant_seq;
            span.last_hash = v.hash;
        }
    }
    None
}

/// Below this many events one thread is quicker than splitting.
const PARALLEL_FROM: u64 = 50_000;

/// Walks with as many threads as cores, or one for a small log.
pub(crate) fn verify(log: &EventLog, only: Option<Uuid>) -> Result<VerifyReport> {
    let threads = if log.head() >= PARALLEL_FROM {
        std::thread::available_parallelism().map_or(1, |n| n.get().min(8))
    } else {
        1
    };
    verify_with_threads(log, only, threads)
}

pub(crate) fn verify_with_threads(
    log: &EventLog,
    only: Option<Uuid>,
    threads: usize,
) -> Result<VerifyReport> {
    let head = log.head();
    let tree = log.tree();
    let key = log.payload_key();
    let mut chains: HashMap<Uuid, (u64, [u8; 32])> = HashMap::new();
    let mut events = 0u64;
    match only {
        None if head > 0 => {
            let threads = threads.max(1);
            let per = head.div_ceil(u64::try_from(threads).unwrap_or(1));
            let ranges: Vec<(u64, u64)> = (0..threads)
                .filter_map(|i| {
                    let lo = u64::try_from(i).ok()? * per + 1;
                    (lo <= head).then(|| (lo, (lo + per - 1).min(head)))
                })
                .collect();
            let results: Vec<Result<RangeResult>> = std::thread::scope(|scope| {
                let handles: Vec<_> = ranges
                    .iter()
                    .map(|&(lo, hi)| scope.spawn(move || verify_range(tree, key, lo, hi, head)))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.join().unwrap_or_else(|_| {
                            Err(Error::Storage("verify thread panicked".into()))
                        })
                    })
                    .collect()
            });
            let mut walked = 0u64;
            for result in results {
                let part = result?;
                let Some(part_first) = part.first else {
                    // No chunk starts in this range: its records belong to the range before.
                    continue;
                };
                if part_first != walked + 1 {
                    return Ok(broken(walked + 1, None, None, "missing position"));
                }
                // The links into this range, checked in order of position.
                let mut firsts: Vec<_> = part.spans.iter().collect();
                firsts.sort_by_key(|(_, s)| s.first_position);
                let mut failure: Option<VerifyReport> = None;
                for (tenant, span) in firsts {
                    let (seq, prev) = chains
                        .get(tenant)
                        .copied()
                        .unwrap_or((0, chain::genesis(*tenant)));
                    let (header, digest, hash) = &span.first_link;
                    let (t, s) = (Some(*tenant), Some(span.first_seq));
                    if span.first_seq != seq + 1 {
                        failure = Some(broken(
                            span.first_position,
                            t,
                            s,
                            format!("tenant sequence {} follows {seq}", span.first_seq),
                        ));
                        break;
                    }
                    if chain::link(&prev, header, digest) != *hash {
                        failure = Some(broken(span.first_position, t, s, "chain hash mismatch"));
                        break;
                    }
                }
                let earliest = [failure, part.broken]
                    .into_iter()
                    .flatten()
                    .min_by_key(position_of);
                if let Some(report) = earliest {
                    return Ok(report);
                }
                for (tenant, span) in part.spans {
                    chains.insert(tenant, (span.last_seq, span.last_hash));
                }
                events += part.events;
                walked = part.last;
            }
            if walked != head {
                return Ok(broken(walked + 1, None, None, "missing position"));
            }
        }
        None => {}
        Some(tenant) => {
            // A span at the genesis state: the first record links to genesis like any other.
            let mut spans = HashMap::from([(
                tenant,
                Span {
                    first_position: 0,
                    first_seq: 0,
                    first_link: (Vec::new(), [0; 32], [0; 32]),
                    last_seq: 0,
                    last_hash: chain::genesis(tenant),
                },
            )]);
            let mut cache = chunk::ChunkCache::default();
            for item in tree.scan_prefix(keys::tenant_prefix(keys::TENANT_SEQ, tenant)) {
                let (_, v) = item?;
                let pos = keys::u64_value(&v).ok_or_else(|| Error::Storage("bad index".into()))?;
                if pos > head {
                    break;
                }
                let Some(bytes) = cache.record(tree, pos)? else {
                    return Ok(broken(pos, Some(tenant), None, "indexed record is missing"));
                };
                let v = match RecordView::parse(&bytes) {
                    Ok(v) => v,
                    Err(reason) => {
                        return Ok(broken(
                            pos,
                            Some(tenant),
                            None,
                            format!("undecodable record: {reason}"),
                        ))
                    }
                };
                if v.tenant != tenant {
                    return Ok(broken(
                        pos,
                        Some(tenant),
                        Some(v.tenant_seq),
                        "record of another tenant in this tenant's index",
                    ));
                }
                if let Some(report) = check_view(key, pos, &v, &mut spans) {
                    return Ok(report);
                }
                events += 1;
            }
            if events > 0 {
                if let Some(span) = spans.get(&tenant) {
                    chains.insert(tenant, (span.last_seq, span.last_hash));
                }
            }
        }
    }
    // The chain cannot see a cut tail by itself; the stored tip can.
    for (tenant, (seq_walked, hash_walked)) in &chains {
        if let Some(tip) = tree.get(keys::tenant_tip(*tenant))? {
            let (seq, hash) = decode_tip(&tip)?;
            if seq == *seq_walked && hash != *hash_walked {
                return Ok(broken(
                    0,
                    Some(*tenant),
                    Some(seq),
                    "tenant tip does not match the chain",
                ));
            }
            // A tip ahead of the walk is a cut tail, unless the next event is simply not
            // durable yet (a group being fsynced while we walk).
            let next_in_flight = tree
                .get(keys::tenant_seq(*tenant, seq_walked + 1))?
                .and_then(|v| keys::u64_value(&v))
                .is_some_and(|pos| pos > head && pos <= log.applied());
            if seq > *seq_walked && !next_in_flight {
                return Ok(broken(
                    0,
                    Some(*tenant),
                    Some(seq_walked + 1),
                    "events missing from the end of the chain",
                ));
            }
        }
    }
    Ok(VerifyReport::Ok {
        events,
        tenants: u64::try_from(chains.len()).unwrap_or(u64::MAX),
    })
}
