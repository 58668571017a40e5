use std::collections::HashMap;

use uuid::Uuid;

use crate::chain;
use crate::error::{Error, Result};
use crate::keys;
use crate::writer::decode_tip;
use crate::{EventLog, RecordedEvent};

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

struct ChainState {
    seq: u64,
    hash: [u8; 32],
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

/// Checks one record against the chain state of its tenant; advances the state on success.
fn check(
    key: &[u8; 32],
    expected_position: u64,
    bytes: &[u8],
    chains: &mut HashMap<Uuid, ChainState>,
) -> Option<VerifyReport> {
    let (rec, header_len) = match RecordedEvent::decode(bytes) {
        Ok(r) => r,
        Err(reason) => {
            return Some(broken(
                expected_position,
                None,
                None,
                format!("undecodable record: {reason}"),
            ))
        }
    };
    let (t, s) = (Some(rec.tenant), Some(rec.tenant_seq));
    if rec.position != expected_position {
        return Some(broken(
            expected_position,
            t,
            s,
            format!("record claims position {}", rec.position),
        ));
    }
    let state = chains.entry(rec.tenant).or_insert_with(|| ChainState {
        seq: 0,
        hash: chain::genesis(rec.tenant),
    });
    if rec.tenant_seq != state.seq + 1 {
        return Some(broken(
            expected_position,
            t,
            s,
            format!("tenant sequence {} follows {}", rec.tenant_seq, state.seq),
        ));
    }
    if chain::payload_digest(key, rec.tenant, &rec.payload) != rec.payload_digest {
        return Some(broken(
            expected_position,
            t,
            s,
            "payload does not match its digest",
        ));
    }
    let Some(header) = bytes.get(..header_len) else {
        return Some(broken(expected_position, t, s, "truncated header"));
    };
    if chain::link(&state.hash, header, &rec.payload_digest) != rec.hash {
        return Some(broken(expected_position, t, s, "chain hash mismatch"));
    }
    state.seq = rec.tenant_seq;
    state.hash = rec.hash;
    None
}

pub(crate) fn verify(log: &EventLog, only: Option<Uuid>) -> Result<VerifyReport> {
    let head = log.head();
    let tree = log.tree();
    let key = log.payload_key();
    let mut chains: HashMap<Uuid, ChainState> = HashMap::new();
    let mut events = 0u64;
    match only {
        None => {
            let mut expected = 1u64;
            for item in tree.range(keys::global(1)..=keys::global(head.max(1))) {
                let (k, v) = item?;
                let pos = keys::u64_value(&k[1..]).unwrap_or(0);
                if pos > head {
                    break;
                }
                if pos != expected {
                    return Ok(broken(expected, None, None, "missing position"));
                }
                if let Some(b) = check(key, pos, &v, &mut chains) {
                    return Ok(b);
                }
                expected += 1;
                events += 1;
            }
            if events < head {
                return Ok(broken(events + 1, None, None, "missing position"));
            }
        }
        Some(tenant) => {
            for item in tree.scan_prefix(keys::tenant_prefix(keys::TENANT_SEQ, tenant)) {
                let (_, v) = item?;
                let pos = keys::u64_value(&v).ok_or_else(|| Error::Storage("bad index".into()))?;
                if pos > head {
                    break;
                }
                let Some(bytes) = tree.get(keys::global(pos))? else {
                    return Ok(broken(pos, Some(tenant), None, "indexed record is missing"));
                };
                if let Some(b) = check(key, pos, &bytes, &mut chains) {
                    return Ok(b);
                }
                if chains.len() > 1 || !chains.contains_key(&tenant) {
                    return Ok(broken(
                        pos,
                        Some(tenant),
                        None,
                        "record of another tenant in this tenant's index",
                    ));
                }
                events += 1;
            }
        }
    }
    // The chain cannot see a cut tail by itself; the stored tip can.
    for (tenant, state) in &chains {
        if let Some(tip) = tree.get(keys::tenant_tip(*tenant))? {
            let (seq, hash) = decode_tip(&tip)?;
            if seq == state.seq && hash != state.hash {
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
                .get(keys::tenant_seq(*tenant, state.seq + 1))?
                .and_then(|v| keys::u64_value(&v))
                .is_some_and(|pos| pos > head);
            if seq > state.seq && !next_in_flight {
                return Ok(broken(
                    0,
                    Some(*tenant),
                    Some(state.seq + 1),
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
