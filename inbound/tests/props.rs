//! Property tests: whatever arrives from the outside, the parsers return a result and never
//! panic. Bodies are arbitrary bytes, arbitrary JSON, JSON shaped with the providers' own
//! keys, fixtures with a subtree replaced, fixtures with bytes changed, and every prefix of
//! every fixture (a truncated upload).

use inbound::events::{normalise, Provider};
use inbound::{address, dsn, signature, unsubscribe, verp};
use proptest::prelude::*;
use serde_json::{Map, Number, Value};

const JSON_PROVIDERS: [Provider; 5] = [
    Provider::Generic,
    Provider::Postmark,
    Provider::SendGrid,
    Provider::Mailgun,
    Provider::Ses,
];

fn fixtures_dir(dir: &str) -> Vec<(String, Vec<u8>)> {
    let full = format!("{}/tests/fixtures/{dir}", env!("CARGO_MANIFEST_DIR"));
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&full)
        .unwrap()
        .map(|e| {
            let path = e.unwrap().path();
            (path.display().to_string(), std::fs::read(&path).unwrap())
        })
        .collect();
    out.sort();
    out
}

fn json_fixtures() -> Vec<(Provider, Value)> {
    let mut out = Vec::new();
    for (provider, dir) in [
        (Provider::Generic, "generic"),
        (Provider::Postmark, "postmark"),
        (Provider::SendGrid, "sendgrid"),
        (Provider::Mailgun, "mailgun"),
        (Provider::Ses, "ses"),
    ] {
        for (_, bytes) in fixtures_dir(dir) {
            out.push((provider, serde_json::from_slice(&bytes).unwrap()));
        }
    }
    out
}

/// Keys and values the parsers look at, so random JSON reaches past the first check.
const KEYS: &[&str] = &[
    "id",
    "type",
    "recipient",
    "message_id",
    "postledger_message_id",
    "occurred_at",
    "bounce",
    "hard",
    "status",
    "diagnostic",
    "url",
    "RecordType",
    "Type",
    "TypeCode",
    "ID",
    "MessageID",
    "Email",
    "Recipient",
    "Details",
    "Description",
    "BouncedAt",
    "DeliveredAt",
    "ReceivedAt",
    "ChangedAt",
    "Metadata",
    "Headers",
    "Name",
    "Value",
    "OriginalLink",
    "SuppressSending",
    "SuppressionReason",
    "event",
    "email",
    "timestamp",
    "sg_event_id",
    "sg_message_id",
    "smtp-id",
    "reason",
    "response",
    "unique_args",
    "event-data",
    "signature",
    "severity",
    "delivery-status",
    "code",
    "message",
    "enhanced-code",
    "headers",
    "message-id",
    "user-variables",
    "MessageId",
    "Message",
    "Timestamp",
    "SubscribeURL",
    "notificationType",
    "eventType",
    "mail",
    "messageId",
    "destination",
    "commonHeaders",
    "tags",
    "bouncedRecipients",
    "bounceType",
    "emailAddress",
    "diagnosticCode",
    "feedbackId",
    "complaint",
    "complainedRecipients",
    "delivery",
    "recipients",
    "open",
    "click",
    "link",
    "deliveryDelay",
    "delayedRecipients",
    "name",
    "value",
];
const WORDS: &[&str] = &[
    "delivered",
    "bounced",
    "complained",
    "opened",
    "clicked",
    "unsubscribed",
    "Delivery",
    "Bounce",
    "SpamComplaint",
    "Open",
    "Click",
    "SubscriptionChange",
    "HardBounce",
    "Transient",
    "bounce",
    "blocked",
    "deferred",
    "dropped",
    "processed",
    "failed",
    "permanent",
    "temporary",
    "Notification",
    "SubscriptionConfirmation",
    "Complaint",
    "DeliveryDelay",
    "Permanent",
    "a@b.example",
    "Jane <jane@example.com>",
    "5.1.1",
    "4.2.2",
    "smtp; 550 5.1.1 x",
    "2024-05-01T12:00:00Z",
    "0190c5a4-7b1e-7c3d-9f00-1234567890ab",
    "<0190c5a4-7b1e-7c3d-9f00-1234567890ab@x>",
    "X-Postledger-Message-Id",
    "Message-ID",
    "",
    " ",
    "{}",
    "[]",
    "{\"notificationType\":\"Bounce\"}",
];

fn arb_scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| Value::Number(n.into())),
        any::<u64>().prop_map(|n| Value::Number(n.into())),
        any::<f64>().prop_filter_map("finite", |f| Number::from_f64(f).map(Value::Number)),
        ".{0,40}".prop_map(Value::String),
        proptest::sample::select(WORDS).prop_map(|w| Value::String(w.to_string())),
    ]
}

fn arb_json() -> impl Strategy<Value = Value> {
    arb_scalar().prop_recursive(5, 96, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec(
                (
                    prop::sample::select(KEYS).prop_map(str::to_string),
                    inner.clone()
                ),
                0..8
            )
            .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
            prop::collection::vec((".{0,12}", inner), 0..4)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// Replaces the node at `path` (indices into a pre-order walk) with `replacement`.
fn replace_nth(value: &mut Value, n: &mut usize, replacement: &Value) -> bool {
    if *n == 0 {
        *value = replacement.clone();
        return true;
    }
    *n -= 1;
    match value {
        Value::Array(items) => items.iter_mut().any(|v| replace_nth(v, n, replacement)),
        Value::Object(map) => map.values_mut().any(|v| replace_nth(v, n, replacement)),
        _ => false,
    }
}

/// Also tries the SNS path with the mutated notification inside `Message`.
fn wrap_in_sns(value: &Value) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({"Type": "Notification", "MessageId": "m", "Message": value.to_string()}))
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..512)) {
        for p in Provider::ALL {
            let _ = normalise(p, &body);
        }
        let _ = dsn::parse_dsn(&body);
    }

    #[test]
    fn arbitrary_json_never_panics(value in arb_json()) {
        let body = serde_json::to_vec(&value).unwrap();
        for p in JSON_PROVIDERS {
            let _ = normalise(p, &body);
        }
        let _ = normalise(Provider::Ses, &wrap_in_sns(&value));
        let _ = normalise(Provider::Mailgun, &serde_json::to_vec(&serde_json::json!({"event-data": value})).unwrap());
        let _ = normalise(Provider::SendGrid, &serde_json::to_vec(&serde_json::json!([value])).unwrap());
    }

    #[test]
    fn fixtures_with_a_subtree_replaced_never_panic(
        pick in any::<prop::sample::Index>(),
        node in 0usize..400,
        replacement in arb_json(),
    ) {
        let fixtures = json_fixtures();
        let (provider, original) = &fixtures[pick.index(fixtures.len())];
        let mut mutated = original.clone();
        let mut n = node;
        replace_nth(&mut mutated, &mut n, &replacement);
        let result = normalise(*provider, &serde_json::to_vec(&mutated).unwrap());
        if let Ok(events) = result {
            for e in events {
                prop_assert!(!e.provider_event_id.is_empty());
                prop_assert!(address::normalise(&e.recipient, false).as_deref() == Some(e.recipient.as_str()));
            }
        }
        // And the SES notification inside its SNS envelope, mutated.
        if *provider == Provider::Ses {
            if let Some(Value::String(inner)) = original.get("Message") {
                if let Ok(mut inner) = serde_json::from_str::<Value>(inner) {
                    let mut n = node;
                    replace_nth(&mut inner, &mut n, &replacement);
                    let _ = normalise(Provider::Ses, &wrap_in_sns(&inner));
                }
            }
        }
    }

    #[test]
    fn dsn_fixtures_with_bytes_changed_never_panic(
        pick in any::<prop::sample::Index>(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..12),
    ) {
        let fixtures = fixtures_dir("dsn");
        let mut raw = fixtures[pick.index(fixtures.len())].1.clone();
        for (at, byte, op) in edits {
            if raw.is_empty() {
                break;
            }
            let i = at.index(raw.len());
            match op {
                0 => raw[i] = byte,
                1 => raw.insert(i, byte),
                _ => { raw.remove(i); }
            }
        }
        if let Ok(d) = dsn::parse_dsn(&raw) {
            prop_assert!(!d.recipients.is_empty());
            let _ = dsn::to_events(&d);
        }
    }

    #[test]
    fn address_normalise_is_idempotent(s in ".{0,80}", plus in any::<bool>()) {
        if let Some(once) = address::normalise(&s, plus) {
            prop_assert_eq!(address::normalise(&once, plus), Some(once.clone()));
            prop_assert!(once.len() <= address::MAX_LEN);
            prop_assert_eq!(once.to_lowercase(), once.clone());
            prop_assert_eq!(once.matches('@').count(), 1);
        }
        let _ = address::redact(&s);
    }

    #[test]
    fn verp_round_trips(bytes in any::<[u8; 16]>(), prefix in "[a-z][a-z0-9.+-]{0,10}", domain in "[a-z0-9-]{1,10}\\.[a-z]{2,6}") {
        let id = uuid::Uuid::from_bytes(bytes).hyphenated().to_string();
        let address = verp::encode(&prefix, &id, &domain);
        prop_assert_eq!(verp::decode(&address), Some(id.clone()));
        prop_assert_eq!(verp::decode(&address.to_uppercase()), Some(id));
    }

    #[test]
    fn verp_decode_never_panics(s in ".{0,80}") {
        let _ = verp::decode(&s);
    }

    #[test]
    fn unsubscribe_tokens_round_trip(key in prop::collection::vec(any::<u8>(), 0..64), t in ".{0,30}", m in ".{0,30}", a in ".{0,60}") {
        let token = unsubscribe::token(&key, &t, &m, &a);
        let claim = unsubscribe::verify_token(&key, &token).unwrap();
        prop_assert_eq!((claim.tenant, claim.message, claim.address), (t, m, a));
    }

    #[test]
    fn unsubscribe_verify_never_panics(token in ".{0,200}") {
        let _ = unsubscribe::verify_token(b"k", &token);
    }

    #[test]
    fn signature_verify_never_panics(ts in ".{0,30}", sig in ".{0,200}", now in any::<i64>(), tol in any::<i64>()) {
        let _ = signature::verify(b"s", Some(&ts), Some(&sig), b"body", now, tol);
    }

    #[test]
    fn signatures_round_trip(secret in prop::collection::vec(any::<u8>(), 0..64), ts in any::<i64>(), body in prop::collection::vec(any::<u8>(), 0..128)) {
        let sig = signature::sign(&secret, ts, &body);
        prop_assert_eq!(signature::verify(&secret, Some(&ts.to_string()), Some(&sig), &body, ts, 0), Ok(()));
    }
}

#[test]
fn every_prefix_of_every_json_fixture_never_panics() {
    for (provider, dir) in [
        (Provider::Generic, "generic"),
        (Provider::Postmark, "postmark"),
        (Provider::SendGrid, "sendgrid"),
        (Provider::Mailgun, "mailgun"),
        (Provider::Ses, "ses"),
    ] {
        for (name, bytes) in fixtures_dir(dir) {
            for len in 0..bytes.len() {
                let prefix = &bytes[..len];
                let result = normalise(provider, prefix);
                // A strict prefix of a JSON document is never a complete one, except when
                // only trailing whitespace was cut.
                if !bytes[len..].iter().all(u8::is_ascii_whitespace) {
                    assert!(result.is_err(), "{name} accepted at {len} bytes");
                }
            }
        }
    }
}

#[test]
fn every_prefix_of_every_dsn_fixture_never_panics() {
    for (name, bytes) in fixtures_dir("dsn") {
        for len in 0..bytes.len() {
            if let Ok(d) = dsn::parse_dsn(&bytes[..len]) {
                assert!(!d.recipients.is_empty(), "{name} at {len}");
            }
        }
        // Short prefixes (headers only) must be refused.
        assert!(
            dsn::parse_dsn(&bytes[..bytes.len().min(200)]).is_err(),
            "{name}"
        );
    }
}
