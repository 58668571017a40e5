//! Subject A/B tests need a pick that is random across recipients but stable for one
//! recipient: a retried or re-rendered send must show the same subject. Hashing the key
//! gives both without storing anything.

/// Deterministic weighted pick: blake3 of `key`, its first 8 bytes as a little-endian u64,
/// modulo the weight sum, then the variant whose cumulative range holds that point. `None`
/// when `weights` is empty or sums to 0.
///
/// The modulo bias is below 2^-32 for any sum that fits 32 bits, far under sampling noise.
pub fn pick_variant(weights: &[u32], key: &str) -> Option<usize> {
    let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    if total == 0 {
        return None;
    }
    let hash = blake3::hash(key.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash.as_bytes()[..8]);
    let mut point = u64::from_le_bytes(first) % total;
    for (i, &w) in weights.iter().enumerate() {
        let w = u64::from(w);
        if point < w {
            return Some(i);
        }
        point -= w;
    }
    // Unreachable: point < total = sum of weights.
    None
}
