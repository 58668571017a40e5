//! Canonical JSON and hashing for provider event ids that the provider did not give.
//!
//! Why: retries of the same webhook must produce the same `provider_event_id` so that the
//! event log can drop duplicates. Keys are sorted here explicitly rather than relying on
//! `serde_json::Map`'s ordering, which changes to insertion order when any crate in the
//! build enables serde_json's `preserve_order` feature.

use serde_json::Value;
use sha2::{Digest, Sha256};

/// Appends the canonical form of `value`: objects with keys in byte order, no whitespace,
/// strings and numbers as serde_json writes them.
pub(crate) fn write(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                if let Some(v) = map.get(key) {
                    write(v, out);
                }
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write(v, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// Lower-case hex SHA-256 of the parts, each followed by a NUL separator.
pub(crate) fn sha256_hex(parts: &[&[u8]]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part);
        hasher.update([0u8]);
    }
    hex::encode(hasher.finalize())
}

/// The id of an event that has none of its own: SHA-256 of the provider name, the
/// canonical JSON of the provider's event object, and a discriminator (a recipient index
/// when one object yields several events).
pub(crate) fn event_hash(provider: &str, value: &Value, discriminator: &str) -> String {
    let mut canonical = String::new();
    write(value, &mut canonical);
    sha256_hex(&[
        provider.as_bytes(),
        canonical.as_bytes(),
        discriminator.as_bytes(),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_order_does_not_matter() {
        let a: Value = serde_json::from_str(r#"{"b":1,"a":{"y":[1,"x"],"x":null}}"#).unwrap();
        let b: Value =
            serde_json::from_str(r#"{ "a": {"x": null, "y": [1, "x"]}, "b": 1 }"#).unwrap();
        let mut ca = String::new();
        write(&a, &mut ca);
        assert_eq!(ca, r#"{"a":{"x":null,"y":[1,"x"]},"b":1}"#);
        assert_eq!(event_hash("p", &a, ""), event_hash("p", &b, ""));
    }

    #[test]
    fn content_provider_and_discriminator_matter() {
        let a: Value = serde_json::from_str(r#"{"a":1}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"a":2}"#).unwrap();
        assert_ne!(event_hash("p", &a, ""), event_hash("p", &b, ""));
        assert_ne!(event_hash("p", &a, ""), event_hash("q", &a, ""));
        assert_ne!(event_hash("p", &a, "0"), event_hash("p", &a, "1"));
        assert_eq!(event_hash("p", &a, "").len(), 64);
    }

    #[test]
    fn parts_are_separated() {
        assert_ne!(sha256_hex(&[b"ab", b"c"]), sha256_hex(&[b"a", b"bc"]));
    }
}
