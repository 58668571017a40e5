//! VERP: the message id in the bounce address.
//!
//! Why: a bounce that comes back as a plain DSN often mangles or drops the original
//! headers, but the envelope sender (Return-Path) is what the remote MTA sends the bounce
//! to, and that survives. Encoding our message id in it (`bounces+<32 hex>@bounce.example`)
//! lets [`crate::dsn`] tie a bounce to its message even when nothing else does. The simple
//! (unhyphenated) UUID form keeps the local part short and free of characters some MTAs
//! rewrite. Decoding is case-insensitive because MTAs and mailbox providers may change the
//! case of addresses.

use uuid::Uuid;

/// `{local_prefix}+{uuid simple hex}@{domain}`.
///
/// `message_id` is expected to be a UUID string (any form the `uuid` crate reads). Anything
/// else is encoded lower-cased with characters other than ASCII letters and digits removed,
/// which [`decode`] will not turn back into an id.
pub fn encode(local_prefix: &str, message_id: &str, domain: &str) -> String {
    let tag = match Uuid::try_parse(message_id.trim()) {
        Ok(id) => id.simple().to_string(),
        Err(_) => message_id
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .collect::<String>()
            .to_ascii_lowercase(),
    };
    format!("{local_prefix}+{tag}@{domain}")
}

/// The hyphenated, lower-case UUID in a VERP address, or `None`.
///
/// Accepts surrounding whitespace and angle brackets. The tag is what follows the last `+`
/// of the local part and must be a UUID (32 hex digits, or the hyphenated form); the prefix
/// and the domain must be non-empty.
pub fn decode(address: &str) -> Option<String> {
    let address = crate::address::bare(address);
    let (local, domain) = address.rsplit_once('@')?;
    if domain.trim().is_empty() {
        return None;
    }
    let (prefix, tag) = local.rsplit_once('+')?;
    if prefix.is_empty() || !(tag.len() == 32 || tag.len() == 36) {
        return None;
    }
    let id = Uuid::try_parse(tag).ok()?;
    Some(id.hyphenated().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0190c5a4-7b1e-7c3d-9f00-1234567890ab";

    #[test]
    fn encodes_the_simple_form() {
        assert_eq!(
            encode("bounces", ID, "bounce.example.com"),
            "bounces+0190c5a47b1e7c3d9f001234567890ab@bounce.example.com"
        );
    }

    #[test]
    fn round_trips() {
        let a = encode("bounces", ID, "bounce.example.com");
        assert_eq!(decode(&a).as_deref(), Some(ID));
    }

    #[test]
    fn upper_case_input_id_is_normalised() {
        let a = encode("b", &ID.to_uppercase(), "x.example");
        assert_eq!(a, "b+0190c5a47b1e7c3d9f001234567890ab@x.example");
    }

    #[test]
    fn decoding_is_case_insensitive() {
        let a = encode("Bounces", ID, "Bounce.Example.com").to_uppercase();
        assert_eq!(decode(&a).as_deref(), Some(ID));
    }

    #[test]
    fn decoding_tolerates_brackets_and_a_plus_in_the_prefix() {
        let a = format!("<{}>", encode("my+bounces", ID, "b.example"));
        assert_eq!(decode(&a).as_deref(), Some(ID));
    }

    #[test]
    fn rejects_non_verp_addresses() {
        for bad in [
            "bounces@bounce.example.com",
            "bounces+@bounce.example.com",
            "+0190c5a47b1e7c3d9f001234567890ab@b.example",
            "bounces+0190c5a47b1e7c3d9f001234567890a@b.example",
            "bounces+0190c5a47b1e7c3d9f001234567890abc@b.example",
            "bounces+0190c5a47b1e7c3d9f001234567890zz@b.example",
            "bounces+0190c5a47b1e7c3d9f001234567890ab@",
            "bounces+0190c5a47b1e7c3d9f001234567890ab",
            "",
        ] {
            assert_eq!(decode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_non_uuid_id_does_not_decode() {
        let a = encode("b", "not-a-uuid", "x.example");
        assert_eq!(a, "b+notauuid@x.example");
        assert_eq!(decode(&a), None);
    }
}
