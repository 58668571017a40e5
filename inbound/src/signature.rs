//! Verification of Postledger-signed webhook requests.
//!
//! Why: the inbound endpoint changes suppressions, so a forged request could stop mail to
//! anyone. The scheme is the one Postledger uses for its own outbound delivery reports
//! (`workers::reports::signature`), so one piece of relay software can sign both ways:
//!
//! * `Postledger-Timestamp: <unix seconds>`
//! * `Postledger-Signature: v1=<hex HMAC-SHA256(secret, "{timestamp}.{body}")>`
//!
//! Several `v1=` values may be present, separated by commas or whitespace (that is how a
//! sender rotates its secret), and any one matching wins. Values of other schemes (`v0=`…)
//! are ignored. Comparison is constant-time (`hmac`'s `verify_slice`). The timestamp bounds
//! the replay window: a signature that matches but whose timestamp is more than
//! `tolerance_secs` away from `now_unix` (in either direction) is `Expired`. The signature
//! is checked before the time, so `Expired` always means "authentic, but too old or too far
//! in the future", never "forged".

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Why a request's signature was not accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the Postledger-Timestamp or Postledger-Signature header is missing")]
    Missing,
    #[error("the Postledger-Timestamp or Postledger-Signature header is malformed")]
    Malformed,
    #[error("the signature's timestamp is outside the accepted window")]
    Expired,
    #[error("the signature does not match")]
    Mismatch,
}

impl SignatureError {
    /// A stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            SignatureError::Missing => "SIGNATURE_MISSING",
            SignatureError::Malformed => "SIGNATURE_MALFORMED",
            SignatureError::Expired => "SIGNATURE_EXPIRED",
            SignatureError::Mismatch => "SIGNATURE_MISMATCH",
        }
    }
}

fn mac(secret: &[u8], timestamp: &str, body: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length, so `new_from_slice` cannot fail; the fallback keeps
    // this free of a panic path anyway (and an empty-key MAC still never matches a real
    // signature made with the real key).
    let mut mac = HmacSha256::new_from_slice(secret)
        .unwrap_or_else(|_| <HmacSha256 as hmac::digest::KeyInit>::new(&Default::default()));
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The `Postledger-Signature` header value for `body` sent at `timestamp`: `v1=<hex>`.
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let tag = mac(secret, &timestamp.to_string(), body)
        .finalize()
        .into_bytes();
    format!("v1={}", hex::encode(tag))
}

/// Checks a request's `Postledger-Timestamp` and `Postledger-Signature` header values.
///
/// The MAC is computed over the timestamp exactly as sent (after trimming surrounding
/// whitespace), so a sender's formatting is what is signed. A negative `tolerance_secs`
/// counts as 0.
pub fn verify(
    secret: &[u8],
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now_unix: i64,
    tolerance_secs: i64,
) -> Result<(), SignatureError> {
    let timestamp = timestamp.map(str::trim).filter(|t| !t.is_empty());
    let signature = signature.map(str::trim).filter(|s| !s.is_empty());
    let (Some(timestamp), Some(signature)) = (timestamp, signature) else {
        return Err(SignatureError::Missing);
    };
    if !timestamp
        .bytes()
        .enumerate()
        .all(|(i, b)| b.is_ascii_digit() || (i == 0 && b == b'-'))
    {
        return Err(SignatureError::Malformed);
    }
    let sent: i64 = timestamp.parse().map_err(|_| SignatureError::Malformed)?;

    let candidates: Vec<Vec<u8>> = signature
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter_map(|item| item.strip_prefix("v1="))
        .filter_map(|hex_tag| hex::decode(hex_tag).ok())
        .filter(|tag| tag.len() == 32)
        .collect();
    if candidates.is_empty() {
        return Err(SignatureError::Malformed);
    }

    let expected = mac(secret, timestamp, body);
    let matched = candidates
        .iter()
        .any(|tag| expected.clone().verify_slice(tag).is_ok());
    if !matched {
        return Err(SignatureError::Mismatch);
    }

    let skew = (i128::from(now_unix) - i128::from(sent)).unsigned_abs();
    let tolerance = u128::try_from(tolerance_secs.max(0)).unwrap_or(0);
    if skew > tolerance {
        return Err(SignatureError::Expired);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"whsec_test";
    const BODY: &[u8] = br#"{"hello":"world"}"#;
    const TS: i64 = 1_700_000_000;

    #[test]
    fn sign_matches_an_independent_hmac_vector() {
        // Computed with Python's hmac module, not with this code.
        assert_eq!(
            sign(SECRET, TS, BODY),
            "v1=f592bbf3951cfc94e560eecfb5d9dd4da6b0fff2e626235f8ab4b54860925d0b"
        );
    }

    #[test]
    fn a_fresh_signature_verifies() {
        let sig = sign(SECRET, TS, BODY);
        assert_eq!(
            verify(SECRET, Some("1700000000"), Some(&sig), BODY, TS + 10, 300),
            Ok(())
        );
        assert_eq!(
            verify(SECRET, Some("1700000000"), Some(&sig), BODY, TS - 10, 300),
            Ok(())
        );
    }

    #[test]
    fn missing_headers() {
        let sig = sign(SECRET, TS, BODY);
        assert_eq!(
            verify(SECRET, None, Some(&sig), BODY, TS, 300),
            Err(SignatureError::Missing)
        );
        assert_eq!(
            verify(SECRET, Some("1700000000"), None, BODY, TS, 300),
            Err(SignatureError::Missing)
        );
        assert_eq!(
            verify(SECRET, Some("  "), Some(&sig), BODY, TS, 300),
            Err(SignatureError::Missing)
        );
        assert_eq!(
            verify(SECRET, Some("1700000000"), Some(""), BODY, TS, 300),
            Err(SignatureError::Missing)
        );
    }

    #[test]
    fn malformed_headers() {
        let sig = sign(SECRET, TS, BODY);
        for ts in [
            "17e8",
            "+1700000000",
            "1700000000.0",
            "abc",
            "99999999999999999999999",
        ] {
            assert_eq!(
                verify(SECRET, Some(ts), Some(&sig), BODY, TS, 300),
                Err(SignatureError::Malformed),
                "{ts}"
            );
        }
        for s in [
            "f592bbf3",
            "v1=zz",
            "v0=f592bbf3951cfc94e560eecfb5d9dd4da6b0fff2e626235f8ab4b54860925d0b",
            "v1=f592bb",
            "sha256=abc",
        ] {
            assert_eq!(
                verify(SECRET, Some("1700000000"), Some(s), BODY, TS, 300),
                Err(SignatureError::Malformed),
                "{s}"
            );
        }
    }

    #[test]
    fn any_of_several_values_may_match() {
        let good = sign(SECRET, TS, BODY);
        let other = sign(b"old secret", TS, BODY);
        for header in [
            format!("{other},{good}"),
            format!("{other} {good}"),
            format!("{other}, {good}"),
            format!("v0=abcd, {good}"),
            format!("v1=nothex {good}"),
        ] {
            assert_eq!(
                verify(SECRET, Some("1700000000"), Some(&header), BODY, TS, 300),
                Ok(()),
                "{header}"
            );
        }
        let only_other = format!("{other} {other}");
        assert_eq!(
            verify(SECRET, Some("1700000000"), Some(&only_other), BODY, TS, 300),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn mismatch_on_any_change() {
        let sig = sign(SECRET, TS, BODY);
        assert_eq!(
            verify(b"wrong", Some("1700000000"), Some(&sig), BODY, TS, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(SECRET, Some("1700000001"), Some(&sig), BODY, TS, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(SECRET, Some("1700000000"), Some(&sig), b"{}", TS, 300),
            Err(SignatureError::Mismatch)
        );
        let mut flipped = sig.clone().into_bytes();
        let last = flipped.len() - 1;
        flipped[last] = if flipped[last] == b'0' { b'1' } else { b'0' };
        let flipped = String::from_utf8(flipped).unwrap();
        assert_eq!(
            verify(SECRET, Some("1700000000"), Some(&flipped), BODY, TS, 300),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn replay_window_both_ways() {
        let sig = sign(SECRET, TS, BODY);
        assert_eq!(
            verify(SECRET, Some("1700000000"), Some(&sig), BODY, TS + 300, 300),
            Ok(())
        );
        assert_eq!(
            verify(SECRET, Some("1700000000"), Some(&sig), BODY, TS - 300, 300),
            Ok(())
        );
        assert_eq!(
            verify(SECRET, Some("1700000000"), Some(&sig), BODY, TS + 301, 300),
            Err(SignatureError::Expired)
        );
        assert_eq!(
            verify(SECRET, Some("1700000000"), Some(&sig), BODY, TS - 301, 300),
            Err(SignatureError::Expired)
        );
        assert_eq!(
            verify(SECRET, Some("1700000000"), Some(&sig), BODY, TS + 1, -5),
            Err(SignatureError::Expired)
        );
        assert_eq!(
            verify(SECRET, Some("1700000000"), Some(&sig), BODY, TS, -5),
            Ok(())
        );
    }

    #[test]
    fn a_forged_old_request_is_a_mismatch_not_expired() {
        let forged = sign(b"attacker", TS, BODY);
        assert_eq!(
            verify(
                SECRET,
                Some("1700000000"),
                Some(&forged),
                BODY,
                TS + 10_000,
                300
            ),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn extreme_times_do_not_overflow() {
        let sig = sign(SECRET, i64::MIN, BODY);
        let ts = i64::MIN.to_string();
        assert_eq!(
            verify(SECRET, Some(&ts), Some(&sig), BODY, i64::MAX, i64::MAX),
            Err(SignatureError::Expired)
        );
    }

    #[test]
    fn codes_are_stable() {
        assert_eq!(SignatureError::Missing.code(), "SIGNATURE_MISSING");
        assert_eq!(SignatureError::Malformed.code(), "SIGNATURE_MALFORMED");
        assert_eq!(SignatureError::Expired.code(), "SIGNATURE_EXPIRED");
        assert_eq!(SignatureError::Mismatch.code(), "SIGNATURE_MISMATCH");
    }
}
