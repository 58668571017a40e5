//! One-click unsubscribe tokens (RFC 8058 `List-Unsubscribe-Post`).
//!
//! Why: the unsubscribe link in a message must work without a login, so the link itself
//! has to prove which tenant, message and address it is for. A token is
//! `base64url(payload) "." base64url(tag)` (no padding), where the payload is the compact
//! JSON array `[1, tenant, message, address]` (1 is the format version) and the tag is the
//! first 16 bytes of HMAC-SHA256(key, payload bytes). 128 bits of tag are far beyond what
//! an online guesser can reach. Without the key nobody can make a token for another
//! address, and changing any character of a token makes it fail: base64 decoding is strict
//! (no padding, no non-canonical trailing bits) and the tag covers every payload byte.
//!
//! The key must be used for nothing else (it is not the webhook secret). The token is not
//! encrypted: the address is readable by whoever holds the link, which is the recipient.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

const VERSION: u8 = 1;
/// Bytes of HMAC output kept in a token.
pub const TAG_LEN: usize = 16;
/// Tokens longer than this are refused before any decoding.
pub const MAX_TOKEN_LEN: usize = 4096;

/// What a valid token says.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UnsubscribeClaim {
    pub tenant: String,
    pub message: String,
    pub address: String,
}

/// Why a token was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the unsubscribe token is malformed")]
    Malformed,
    #[error("the unsubscribe token's signature does not match")]
    BadSignature,
    #[error("the unsubscribe token has an unsupported version")]
    UnsupportedVersion,
}

impl TokenError {
    /// A stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            TokenError::Malformed => "UNSUBSCRIBE_TOKEN_MALFORMED",
            TokenError::BadSignature => "UNSUBSCRIBE_TOKEN_INVALID",
            TokenError::UnsupportedVersion => "UNSUBSCRIBE_TOKEN_UNSUPPORTED_VERSION",
        }
    }
}

fn mac(key: &[u8], payload: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length; the fallback only keeps a panic path out of the code.
    let mut mac = HmacSha256::new_from_slice(key)
        .unwrap_or_else(|_| <HmacSha256 as hmac::digest::KeyInit>::new(&Default::default()));
    mac.update(payload);
    mac
}

/// A URL-safe token for (`tenant`, `message`, `address`).
pub fn token(key: &[u8], tenant: &str, message: &str, address: &str) -> String {
    let payload = serde_json::json!([VERSION, tenant, message, address]).to_string();
    let tag = mac(key, payload.as_bytes()).finalize().into_bytes();
    format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(payload.as_bytes()),
        URL_SAFE_NO_PAD.encode(&tag[..TAG_LEN])
    )
}

/// Checks `token` and returns what it claims. The tag is checked (in constant time) before
/// the payload is parsed.
pub fn verify_token(key: &[u8], token: &str) -> Result<UnsubscribeClaim, TokenError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::Malformed);
    }
    let (payload_b64, tag_b64) = token.split_once('.').ok_or(TokenError::Malformed)?;
    if tag_b64.contains('.') {
        return Err(TokenError::Malformed);
    }
    let payload = URL_SAFE_NO_PAD
        .decode(payload_b64)
        .map_err(|_| TokenError::Malformed)?;
    let tag = URL_SAFE_NO_PAD
        .decode(tag_b64)
        .map_err(|_| TokenError::Malformed)?;
    if tag.len() != TAG_LEN || payload.is_empty() {
        return Err(TokenError::Malformed);
    }
    mac(key, &payload)
        .verify_truncated_left(&tag)
        .map_err(|_| TokenError::BadSignature)?;
    let (version, tenant, message, address): (u8, String, String, String) =
        serde_json::from_slice(&payload).map_err(|_| TokenError::Malformed)?;
    if version != VERSION {
        return Err(TokenError::UnsupportedVersion);
    }
    Ok(UnsubscribeClaim {
        tenant,
        message,
        address,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"unsub-key";
    const TENANT: &str = "0190c5a4-0000-7000-8000-000000000001";
    const MESSAGE: &str = "0190c5a4-7b1e-7c3d-9f00-1234567890ab";

    fn claim(address: &str) -> UnsubscribeClaim {
        UnsubscribeClaim {
            tenant: TENANT.into(),
            message: MESSAGE.into(),
            address: address.into(),
        }
    }

    #[test]
    fn round_trips() {
        let t = token(KEY, TENANT, MESSAGE, "jane@example.com");
        assert_eq!(verify_token(KEY, &t), Ok(claim("jane@example.com")));
    }

    #[test]
    fn is_url_safe() {
        let t = token(KEY, TENANT, MESSAGE, "j+ä?&/=@example.com");
        assert!(
            t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.'),
            "{t}"
        );
        assert_eq!(verify_token(KEY, &t), Ok(claim("j+ä?&/=@example.com")));
    }

    #[test]
    fn values_with_json_metacharacters_round_trip() {
        let t = token(KEY, "a\",\"b", "[]", "\"x\"@example.com");
        let c = verify_token(KEY, &t).unwrap();
        assert_eq!(
            (c.tenant.as_str(), c.message.as_str(), c.address.as_str()),
            ("a\",\"b", "[]", "\"x\"@example.com")
        );
    }

    #[test]
    fn matches_an_independent_computation() {
        // Computed with Python's base64 and hmac modules, not with this code.
        assert_eq!(
            token(KEY, "t", "m", "a@b.example"),
            "WzEsInQiLCJtIiwiYUBiLmV4YW1wbGUiXQ.P7ynrMVCUR3a6tpYxbwaRA"
        );
    }

    #[test]
    fn wrong_key_fails() {
        let t = token(KEY, TENANT, MESSAGE, "jane@example.com");
        assert_eq!(verify_token(b"other", &t), Err(TokenError::BadSignature));
    }

    #[test]
    fn changing_any_character_fails() {
        let t = token(KEY, TENANT, MESSAGE, "jane@example.com");
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ ";
        for i in 0..t.len() {
            for &c in alphabet {
                let mut bytes = t.clone().into_bytes();
                if bytes[i] == c {
                    continue;
                }
                bytes[i] = c;
                let changed = String::from_utf8(bytes).unwrap();
                assert!(
                    verify_token(KEY, &changed).is_err(),
                    "position {i} -> {}",
                    c as char
                );
            }
        }
    }

    #[test]
    fn forging_another_address_fails() {
        let t = token(KEY, TENANT, MESSAGE, "jane@example.com");
        let (_, tag) = t.split_once('.').unwrap();
        let other =
            URL_SAFE_NO_PAD.encode(format!(r#"[1,"{TENANT}","{MESSAGE}","john@example.com"]"#));
        assert_eq!(
            verify_token(KEY, &format!("{other}.{tag}")),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn truncation_and_junk_are_malformed() {
        let t = token(KEY, TENANT, MESSAGE, "jane@example.com");
        for bad in [
            "".to_string(),
            ".".to_string(),
            "abc".to_string(),
            t[..t.len() - 1].to_string(),
            t[..t.len() - 4].to_string(),
            format!("{t}.x"),
            format!("{t}="),
            "x".repeat(MAX_TOKEN_LEN + 1),
        ] {
            assert!(verify_token(KEY, &bad).is_err(), "{bad}");
        }
        assert_eq!(verify_token(KEY, "abc"), Err(TokenError::Malformed));
    }

    #[test]
    fn an_authentic_but_unknown_version_is_refused() {
        let payload = br#"[2,"t","m","a@b.example"]"#;
        let tag = mac(KEY, payload).finalize().into_bytes();
        let t = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(payload),
            URL_SAFE_NO_PAD.encode(&tag[..16])
        );
        assert_eq!(verify_token(KEY, &t), Err(TokenError::UnsupportedVersion));
    }

    #[test]
    fn an_authentic_but_unparseable_payload_is_malformed() {
        let payload = br#"{"tenant":"t"}"#;
        let tag = mac(KEY, payload).finalize().into_bytes();
        let t = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(payload),
            URL_SAFE_NO_PAD.encode(&tag[..16])
        );
        assert_eq!(verify_token(KEY, &t), Err(TokenError::Malformed));
    }

    #[test]
    fn codes_are_stable() {
        assert_eq!(TokenError::Malformed.code(), "UNSUBSCRIBE_TOKEN_MALFORMED");
        assert_eq!(TokenError::BadSignature.code(), "UNSUBSCRIBE_TOKEN_INVALID");
        assert_eq!(
            TokenError::UnsupportedVersion.code(),
            "UNSUBSCRIBE_TOKEN_UNSUPPORTED_VERSION"
        );
    }
}
