//! The per-tenant hash chain.
//!
//! `hash_n = blake3_derive("postledger chain v1", prev_hash ‖ header_n ‖ payload_digest_n)`,
//! with a genesis `prev_hash` derived from the tenant id so that chains cannot be spliced
//! between tenants. The payload enters only through a keyed digest: a low-entropy payload
//! (an address) cannot be guessed from the chain, and a payload can be erased later while
//! the chain still verifies.
use uuid::Uuid;

const CHAIN_CONTEXT: &str = "postledger eventlog chain v1";
const GENESIS_CONTEXT: &str = "postledger eventlog genesis v1";

pub fn genesis(tenant: Uuid) -> [u8; 32] {
    blake3::derive_key(GENESIS_CONTEXT, tenant.as_bytes())
}

pub fn link(prev: &[u8; 32], header: &[u8], payload_digest: &[u8; 32]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key(CHAIN_CONTEXT);
    h.update(prev);
    h.update(header);
    h.update(payload_digest);
    *h.finalize().as_bytes()
}

pub fn payload_digest(key: &[u8; 32], tenant: Uuid, payload: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_keyed(key);
    h.update(tenant.as_bytes());
    h.update(payload);
    *h.finalize().as_bytes()
}
