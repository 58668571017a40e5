//! Key layout of the one `log` tree. One tree, so that one `apply_batch` covers every key of
//! an append atomically. A one-byte subspace tag first, then big-endian fixed-width fields,
//! so that byte order is numeric order and every tenant-scoped key starts with the tenant.
//!
//! | key                         | value          | for                                   |
//! |-----------------------------|----------------|---------------------------------------|
//! | `G` position                | the record     | primary storage, in commit order      |
//! | `E` tenant seq              | position       | one tenant's events, in chain order   |
//! | `S` tenant stream version   | position       | one stream; its last key is the head  |
//! | `T` tenant                  | seq ‖ hash     | tip of the tenant's chain             |
//! | `I` tenant event_id         | position       | idempotent append                     |
//! | `M` name                    | value          | metadata (format version)             |
use uuid::Uuid;

use crate::record::StreamId;

pub const GLOBAL: u8 = b'G';
pub const TENANT_SEQ: u8 = b'E';
pub const STREAM_EVENT: u8 = b'S';
pub const TENANT_TIP: u8 = b'T';
pub const EVENT_ID: u8 = b'I';
pub const META: u8 = b'M';

pub fn global(position: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = GLOBAL;
    k[1..].copy_from_slice(&position.to_be_bytes());
    k
}

pub fn tenant_seq(tenant: Uuid, seq: u64) -> [u8; 25] {
    let mut k = [0u8; 25];
    k[0] = TENANT_SEQ;
    k[1..17].copy_from_slice(tenant.as_bytes());
    k[17..].copy_from_slice(&seq.to_be_bytes());
    k
}

pub fn tenant_prefix(tag: u8, tenant: Uuid) -> Vec<u8> {
    let mut k = Vec::with_capacity(17);
    k.push(tag);
    k.extend_from_slice(tenant.as_bytes());
    k
}

pub fn stream_prefix(tenant: Uuid, stream: &StreamId) -> Vec<u8> {
    let mut k = tenant_prefix(STREAM_EVENT, tenant);
    stream.encode_into(&mut k);
    k
}

pub fn stream_event(tenant: Uuid, stream: &StreamId, version: u64) -> Vec<u8> {
    let mut k = stream_prefix(tenant, stream);
    k.extend_from_slice(&version.to_be_bytes());
    k
}

pub fn tenant_tip(tenant: Uuid) -> Vec<u8> {
    tenant_prefix(TENANT_TIP, tenant)
}

pub fn event_id(tenant: Uuid, event_id: Uuid) -> Vec<u8> {
    let mut k = tenant_prefix(EVENT_ID, tenant);
    k.extend_from_slice(event_id.as_bytes());
    k
}

pub fn meta(name: &str) -> Vec<u8> {
    let mut k = vec![META];
    k.extend_from_slice(name.as_bytes());
    k
}

pub fn u64_value(v: &[u8]) -> Option<u64> {
    let a: [u8; 8] = v.get(..8)?.try_into().ok()?;
    Some(u64::from_be_bytes(a))
}
