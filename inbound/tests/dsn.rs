//! RFC 3464 bounce fixtures through `dsn::parse_dsn`, `dsn::to_events` and
//! `events::normalise(Provider::Dsn, …)`.

use inbound::dsn::{parse_dsn, to_events, DsnAction};
use inbound::events::{normalise, EventKind, Provider};

fn fixture(name: &str) -> Vec<u8> {
    let full = format!("{}/tests/fixtures/dsn/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&full).unwrap_or_else(|e| panic!("{full}: {e}"))
}

fn malformed_message(raw: &[u8]) -> String {
    let err = parse_dsn(raw).unwrap_err();
    assert_eq!(err.code(), "INBOUND_MALFORMED", "{err}");
    err.to_string()
}

#[test]
fn postfix_hard_bounce() {
    let dsn = parse_dsn(&fixture("postfix_5_1_1.eml")).unwrap();
    assert_eq!(dsn.recipients.len(), 2);
    let r = &dsn.recipients[0];
    assert_eq!(r.recipient, "jane.doe@example.org");
    assert_eq!(
        r.original_recipient.as_deref(),
        Some("Jane.Doe@example.org")
    );
    assert_eq!(r.action, DsnAction::Failed);
    assert_eq!(r.status.as_deref(), Some("5.1.1"));
    assert!(r.hard);
    assert_eq!(
        r.diagnostic.as_deref(),
        Some("smtp; 550 5.1.1 <jane.doe@example.org>: Recipient address rejected: User unknown in virtual mailbox table")
    );
    assert_eq!(r.remote_mta.as_deref(), Some("mx.example.org"));
    assert_eq!(dsn.recipients[1].recipient, "old.account@example.org");
    assert_eq!(dsn.recipients[1].status.as_deref(), Some("5.2.1"));
    assert!(dsn.recipients[1].hard);

    assert_eq!(
        dsn.original_message_id.as_deref(),
        Some("0190c5a4-7b1e-7c3d-9f00-1234567890ab@mail.example.com")
    );
    assert_eq!(
        dsn.postledger_message_id.as_deref(),
        Some("0190c5a4-7b1e-7c3d-9f00-1234567890ab")
    );
    assert_eq!(
        dsn.verp_message_id.as_deref(),
        Some("0190c5a4-7b1e-7c3d-9f00-1234567890ab")
    );
    assert_eq!(dsn.reporting_mta.as_deref(), Some("mail.example.com"));
    assert_eq!(
        dsn.dsn_message_id.as_deref(),
        Some("20240501120004.4VXk2D1N5Kz9sT@mail.example.com")
    );
    assert_eq!(
        dsn.date.map(|d| d.to_rfc3339()).as_deref(),
        Some("2024-05-01T12:00:04+00:00")
    );
    assert_eq!(dsn.raw_sha256.len(), 64);
}

#[test]
fn postfix_delayed_mailbox_full() {
    let dsn = parse_dsn(&fixture("postfix_4_2_2_delayed.eml")).unwrap();
    assert_eq!(dsn.recipients.len(), 1);
    let r = &dsn.recipients[0];
    assert_eq!(r.recipient, "full.box@example.net");
    assert_eq!(r.action, DsnAction::Delayed);
    assert_eq!(r.status.as_deref(), Some("4.2.2"));
    assert!(!r.hard);
    // From the text/rfc822-headers part; no VERP on this one.
    assert_eq!(
        dsn.original_message_id.as_deref(),
        Some("0190c5a4-7b1e-7c3d-9f00-00000000beef@mail.example.com")
    );
    assert_eq!(
        dsn.postledger_message_id.as_deref(),
        Some("0190c5a4-7b1e-7c3d-9f00-00000000beef")
    );
    assert_eq!(dsn.verp_message_id, None);
}

#[test]
fn exchange_with_rfc822_headers() {
    let dsn = parse_dsn(&fixture("exchange_rfc822_headers.eml")).unwrap();
    assert_eq!(dsn.recipients.len(), 1);
    let r = &dsn.recipients[0];
    assert_eq!(r.recipient, "bob.smith@corp.example.net");
    assert_eq!(r.status.as_deref(), Some("5.1.10"));
    assert!(r.hard);
    assert_eq!(
        dsn.reporting_mta.as_deref(),
        Some("EXCH02.corp.example.net")
    );
    assert_eq!(
        dsn.original_message_id.as_deref(),
        Some("0190c5a4-7b1e-7c3d-9f00-abcdefabcdef@mail.example.com")
    );
    assert_eq!(
        dsn.postledger_message_id, None,
        "no X-Postledger-Message-Id in the returned headers"
    );
    assert_eq!(
        dsn.verp_message_id.as_deref(),
        Some("0190c5a4-7b1e-7c3d-9f00-abcdefabcdef"),
        "from To: <…>"
    );
}

#[test]
fn events_from_a_hard_bounce() {
    let dsn = parse_dsn(&fixture("postfix_5_1_1.eml")).unwrap();
    let events = to_events(&dsn);
    assert_eq!(events.len(), 2);
    let e = &events[0];
    assert_eq!(e.provider, Provider::Dsn);
    assert_eq!(e.recipient, "jane.doe@example.org");
    assert_eq!(e.raw_type, "failed");
    assert!(
        matches!(&e.kind, EventKind::Bounced { hard: true, smtp_status: Some(s), diagnostic: Some(_) } if s == "5.1.1")
    );
    assert_eq!(
        e.message.postledger_id.as_deref(),
        Some("0190c5a4-7b1e-7c3d-9f00-1234567890ab")
    );
    assert_eq!(
        e.message.message_id.as_deref(),
        Some("0190c5a4-7b1e-7c3d-9f00-1234567890ab@mail.example.com")
    );
    assert_eq!(e.occurred_at, dsn.date);
    assert_ne!(events[0].provider_event_id, events[1].provider_event_id);
    assert_eq!(e.provider_event_id.len(), 64);
}

#[test]
fn events_from_a_delay_are_soft() {
    let events = to_events(&parse_dsn(&fixture("postfix_4_2_2_delayed.eml")).unwrap());
    assert_eq!(events.len(), 1);
    assert!(matches!(
        events[0].kind,
        EventKind::Bounced { hard: false, .. }
    ));
    assert_eq!(events[0].raw_type, "delayed");
    assert_eq!(
        events[0].message.postledger_id.as_deref(),
        Some("0190c5a4-7b1e-7c3d-9f00-00000000beef")
    );
}

#[test]
fn message_ref_precedence_header_then_verp_then_message_id() {
    // The Exchange fixture has no X-Postledger-Message-Id: VERP wins over the Message-ID.
    let raw = String::from_utf8(fixture("exchange_rfc822_headers.eml")).unwrap();
    let other_verp = raw.replace(
        "To: <bounces+0190c5a47b1e7c3d9f00abcdefabcdef@bounce.example.com>",
        "To: <bounces+0190c5a47b1e7c3d9f0011112222cccc@bounce.example.com>",
    );
    assert_ne!(other_verp, raw);
    let events = to_events(&parse_dsn(other_verp.as_bytes()).unwrap());
    assert_eq!(
        events[0].message.postledger_id.as_deref(),
        Some("0190c5a4-7b1e-7c3d-9f00-11112222cccc")
    );

    // Without VERP, the Message-ID's UUID local part.
    let no_verp = raw.replace(
        "To: <bounces+0190c5a47b1e7c3d9f00abcdefabcdef@bounce.example.com>",
        "To: <billing@shop.example.com>",
    );
    let events = to_events(&parse_dsn(no_verp.as_bytes()).unwrap());
    assert_eq!(
        events[0].message.postledger_id.as_deref(),
        Some("0190c5a4-7b1e-7c3d-9f00-abcdefabcdef")
    );

    // The Postfix fixture has all three; the returned X-Postledger-Message-Id wins.
    let raw = String::from_utf8(fixture("postfix_5_1_1.eml")).unwrap();
    let header_differs = raw.replace(
        "X-Postledger-Message-Id: 0190c5a4-7b1e-7c3d-9f00-1234567890ab",
        "X-Postledger-Message-Id: 0190c5a4-7b1e-7c3d-9f00-999999999999",
    );
    assert_ne!(header_differs, raw);
    let events = to_events(&parse_dsn(header_differs.as_bytes()).unwrap());
    assert_eq!(
        events[0].message.postledger_id.as_deref(),
        Some("0190c5a4-7b1e-7c3d-9f00-999999999999")
    );
}

#[test]
fn normalise_with_the_dsn_provider_matches_to_events() {
    for name in [
        "postfix_5_1_1.eml",
        "postfix_4_2_2_delayed.eml",
        "exchange_rfc822_headers.eml",
    ] {
        let raw = fixture(name);
        assert_eq!(
            normalise(Provider::Dsn, &raw).unwrap(),
            to_events(&parse_dsn(&raw).unwrap()),
            "{name}"
        );
    }
}

#[test]
fn ids_are_stable_and_depend_on_the_dsn() {
    let a = to_events(&parse_dsn(&fixture("postfix_5_1_1.eml")).unwrap());
    let b = to_events(&parse_dsn(&fixture("postfix_5_1_1.eml")).unwrap());
    assert_eq!(a, b);
    let raw = String::from_utf8(fixture("postfix_5_1_1.eml")).unwrap();
    let other = raw.replace(
        "20240501120004.4VXk2D1N5Kz9sT@mail.example.com",
        "20240501120009.XXXX@mail.example.com",
    );
    let c = to_events(&parse_dsn(other.as_bytes()).unwrap());
    assert_ne!(a[0].provider_event_id, c[0].provider_event_id);
}

#[test]
fn without_a_message_id_the_raw_bytes_give_the_id() {
    let raw = String::from_utf8(fixture("postfix_5_1_1.eml")).unwrap();
    let no_id = raw.replace(
        "Message-Id: <20240501120004.4VXk2D1N5Kz9sT@mail.example.com>\r\n",
        "",
    );
    assert_ne!(no_id, raw);
    let dsn = parse_dsn(no_id.as_bytes()).unwrap();
    assert_eq!(dsn.dsn_message_id, None);
    let a = to_events(&dsn);
    let changed = no_id.replace(
        "This is a MIME-encapsulated message.",
        "This is a MIME-encapsulated message!",
    );
    let b = to_events(&parse_dsn(changed.as_bytes()).unwrap());
    assert_ne!(a[0].provider_event_id, b[0].provider_event_id);
    assert_ne!(a[0].provider_event_id, a[1].provider_event_id);
}

#[test]
fn relayed_and_delivered_actions() {
    let raw = String::from_utf8(fixture("postfix_5_1_1.eml")).unwrap();
    let mixed = raw
        .replacen("Action: failed", "Action: delivered", 1)
        .replacen("Action: failed", "Action: relayed", 1);
    let dsn = parse_dsn(mixed.as_bytes()).unwrap();
    assert_eq!(dsn.recipients[0].action, DsnAction::Delivered);
    assert!(!dsn.recipients[0].hard, "only failed can be hard");
    let events = to_events(&dsn);
    assert_eq!(events.len(), 1, "relayed gives no event");
    assert_eq!(events[0].kind, EventKind::Delivered);
}

#[test]
fn a_feedback_report_is_not_a_dsn() {
    let message = malformed_message(&fixture("arf_feedback_report_not_dsn.eml"));
    assert!(message.contains("report-type feedback-report"), "{message}");
}

#[test]
fn plain_mail_is_not_a_dsn() {
    let message =
        malformed_message(b"From: a@b.example\r\nTo: c@d.example\r\nSubject: hi\r\n\r\nhello\r\n");
    assert!(
        message.contains("no message/delivery-status part"),
        "{message}"
    );
}

#[test]
fn empty_and_headerless_input() {
    assert!(malformed_message(b"").contains("empty"));
    assert!(malformed_message(b"  \r\n").contains("empty"));
    malformed_message(b"\x00\x01\x02 not mail at all");
}

#[test]
fn report_without_boundary_is_broken_mime() {
    let raw = String::from_utf8(fixture("postfix_5_1_1.eml")).unwrap();
    let broken = raw.replace(
        "\tboundary=\"4VXk2D1N5Kz9sT.1714564804/mail.example.com\"",
        "\tcharset=us-ascii",
    );
    assert_ne!(broken, raw);
    let message = malformed_message(broken.as_bytes());
    assert!(message.contains("delivery-status"), "{message}");
}

#[test]
fn delivery_status_without_recipients_is_malformed() {
    let raw = String::from_utf8(fixture("postfix_4_2_2_delayed.eml")).unwrap();
    let start = raw.find("Final-Recipient").unwrap();
    let end = raw.find("Will-Retry-Until").unwrap();
    let stripped = format!("{}{}", &raw[..start], &raw[end..]);
    let message = malformed_message(stripped.as_bytes());
    assert!(
        message.contains("no usable per-recipient fields"),
        "{message}"
    );
}

#[test]
fn dsn_serde_round_trip() {
    let dsn = parse_dsn(&fixture("exchange_rfc822_headers.eml")).unwrap();
    let back: inbound::dsn::Dsn =
        serde_json::from_str(&serde_json::to_string(&dsn).unwrap()).unwrap();
    assert_eq!(back, dsn);
}
