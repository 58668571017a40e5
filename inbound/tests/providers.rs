//! Every provider fixture (modelled on the providers' documented samples) through
//! `events::normalise`, checking the fields that decide suppressions and correlation.

use inbound::events::{normalise, EventKind, InboundError, InboundEvent, Provider};

const OURS: &str = "0190c5a4-7b1e-7c3d-9f00-1234567890ab";
const OUR_MESSAGE_ID: &str = "0190c5a4-7b1e-7c3d-9f00-1234567890ab@mail.example.com";

fn fixture(path: &str) -> Vec<u8> {
    let full = format!("{}/tests/fixtures/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&full).unwrap_or_else(|e| panic!("{full}: {e}"))
}

fn one(provider: Provider, path: &str) -> InboundEvent {
    let mut events = normalise(provider, &fixture(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert_eq!(events.len(), 1, "{path}: {events:?}");
    events.remove(0)
}

fn time(rfc3339: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    Some(
        chrono::DateTime::parse_from_rfc3339(rfc3339)
            .unwrap()
            .with_timezone(&chrono::Utc),
    )
}

fn bounce(hard: bool, status: Option<&str>, diagnostic: Option<&str>) -> EventKind {
    EventKind::Bounced {
        hard,
        smtp_status: status.map(str::to_string),
        diagnostic: diagnostic.map(str::to_string),
    }
}

/// Parsing twice gives the same ids (retries deduplicate), and every id is non-empty.
fn assert_stable(provider: Provider, path: &str) {
    let body = fixture(path);
    let a = normalise(provider, &body);
    let b = normalise(provider, &body);
    assert_eq!(a, b, "{path}");
    if let Ok(events) = a {
        for e in events {
            assert!(!e.provider_event_id.is_empty(), "{path}");
            assert_eq!(e.provider, provider);
        }
    }
}

// ---------------------------------------------------------------- generic

#[test]
fn generic_delivered() {
    let e = one(Provider::Generic, "generic/delivered.json");
    assert_eq!(e.kind, EventKind::Delivered);
    assert_eq!(e.provider_event_id, "evt_01HXA3Q5Z6M9V2K8T1D4R7B0C3");
    assert_eq!(e.recipient, "jane.doe@example.com");
    assert_eq!(e.message.message_id.as_deref(), Some(OUR_MESSAGE_ID));
    assert_eq!(
        e.message.postledger_id.as_deref(),
        Some(OURS),
        "from the Message-ID local part"
    );
    assert_eq!(e.occurred_at, time("2024-05-01T12:00:03Z"));
    assert_eq!(e.raw_type, "delivered");
}

#[test]
fn generic_bounced() {
    let e = one(Provider::Generic, "generic/bounced.json");
    assert_eq!(
        e.kind,
        bounce(
            true,
            Some("5.1.1"),
            Some("smtp; 550 5.1.1 <jane.doe@example.com>: Recipient address rejected: User unknown in virtual mailbox table")
        )
    );
    assert_eq!(e.message.postledger_id.as_deref(), Some(OURS));
    assert_eq!(e.occurred_at, time("2024-05-01T10:00:04Z"));
}

#[test]
fn generic_other_kinds() {
    assert_eq!(
        one(Provider::Generic, "generic/complained.json").kind,
        EventKind::Complained
    );
    assert_eq!(
        one(Provider::Generic, "generic/opened.json").kind,
        EventKind::Opened
    );
    assert_eq!(
        one(Provider::Generic, "generic/clicked.json").kind,
        EventKind::Clicked {
            url: Some("https://shop.example.com/orders/1234?utm_source=email".into())
        }
    );
    assert_eq!(
        one(Provider::Generic, "generic/unsubscribed.json").kind,
        EventKind::Unsubscribed
    );
}

#[test]
fn generic_batch_and_defaults() {
    let events = normalise(Provider::Generic, &fixture("generic/batch.json")).unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].provider_event_id, "evt_batch_1");
    // No `hard`: derived from the 4.x.x status, so soft.
    assert_eq!(
        events[1].kind,
        bounce(false, Some("4.2.2"), Some("smtp; 452 4.2.2 Mailbox full"))
    );
    // No `id`: a content hash.
    assert_eq!(events[1].provider_event_id.len(), 64);
    assert!(events[1]
        .provider_event_id
        .bytes()
        .all(|b| b.is_ascii_hexdigit()));
    assert_eq!(
        events[1].message.postledger_id.as_deref(),
        Some("0190c5a4-7b1e-7c3d-9f00-1234567890ac")
    );
}

#[test]
fn generic_hard_defaults_from_a_5xx_status() {
    let body = br#"{"type":"bounced","recipient":"a@b.example","bounce":{"status":"5.1.1"}}"#;
    assert_eq!(
        normalise(Provider::Generic, body).unwrap()[0].kind,
        bounce(true, Some("5.1.1"), None)
    );
    let body = br#"{"type":"bounced","recipient":"a@b.example"}"#;
    assert_eq!(
        normalise(Provider::Generic, body).unwrap()[0].kind,
        bounce(false, None, None)
    );
}

#[test]
fn generic_errors() {
    let cases: &[(&[u8], &str)] = &[
        (b"[]", "INBOUND_MALFORMED"),
        (b"{}", "INBOUND_MALFORMED"),
        (br#"{"type":"delivered"}"#, "INBOUND_MALFORMED"),
        (
            br#"{"type":"delivered","recipient":"not an address"}"#,
            "INBOUND_MALFORMED",
        ),
        (
            br#"{"type":"delivered","recipient":"a@b.example","occurred_at":"yesterday"}"#,
            "INBOUND_MALFORMED",
        ),
        (
            br#"{"type":"delivered","recipient":42}"#,
            "INBOUND_MALFORMED",
        ),
        (
            br#"{"type":"bounced","recipient":"a@b.example","bounce":{"hard":"yes"}}"#,
            "INBOUND_MALFORMED",
        ),
        (
            br#"{"type":"teleported","recipient":"a@b.example"}"#,
            "INBOUND_UNSUPPORTED_EVENT",
        ),
        (
            br#"[{"type":"delivered","recipient":"a@b.example"}, 3]"#,
            "INBOUND_MALFORMED",
        ),
        (b"\"delivered\"", "INBOUND_MALFORMED"),
    ];
    for (body, code) in cases {
        let err = normalise(Provider::Generic, body).unwrap_err();
        assert_eq!(
            err.code(),
            *code,
            "{}: {err}",
            String::from_utf8_lossy(body)
        );
    }
}

#[test]
fn errors_never_quote_the_recipient() {
    let body = br#"{"type":"delivered","recipient":"secret person@example.com"}"#;
    let err = normalise(Provider::Generic, body).unwrap_err();
    assert!(!err.to_string().contains("secret"), "{err}");
}

// ---------------------------------------------------------------- postmark

#[test]
fn postmark_delivery() {
    let e = one(Provider::Postmark, "postmark/delivery.json");
    assert_eq!(e.kind, EventKind::Delivered);
    assert_eq!(e.recipient, "john@example.com");
    assert_eq!(
        e.message.postledger_id.as_deref(),
        Some(OURS),
        "from Metadata"
    );
    assert_eq!(
        e.message.provider_message_id.as_deref(),
        Some("883953f4-6105-42a2-a16a-77a8eac79483")
    );
    assert_eq!(e.message.message_id, None);
    assert_eq!(e.occurred_at, time("2019-11-05T16:33:54.9070259Z"));
    assert_eq!(
        e.provider_event_id.len(),
        64,
        "no ID in Delivery records: hashed"
    );
}

#[test]
fn postmark_hard_bounce() {
    let e = one(Provider::Postmark, "postmark/bounce_hard.json");
    let EventKind::Bounced {
        hard,
        smtp_status,
        diagnostic,
    } = &e.kind
    else {
        panic!("{e:?}")
    };
    assert!(*hard);
    assert_eq!(smtp_status.as_deref(), Some("5.1.1"));
    assert!(diagnostic
        .as_deref()
        .unwrap()
        .starts_with("smtp;550 5.1.1 The email account"));
    assert_eq!(e.provider_event_id, "Bounce:4323372036854775807");
    assert_eq!(e.raw_type, "Bounce:HardBounce");
    assert_eq!(
        e.message.message_id.as_deref(),
        Some(OUR_MESSAGE_ID),
        "from Headers"
    );
    assert_eq!(e.message.postledger_id.as_deref(), Some(OURS));
}

#[test]
fn postmark_soft_bounce() {
    let e = one(Provider::Postmark, "postmark/bounce_soft.json");
    assert_eq!(
        e.kind,
        bounce(
            false,
            Some("4.2.2"),
            Some("smtp;452 4.2.2 The email account that you tried to reach is over quota.")
        )
    );
    assert_eq!(e.recipient, "jane@example.com");
    assert_eq!(e.message.postledger_id, None);
    assert_eq!(e.occurred_at, time("2019-11-05T21:40:01.1234567Z"));
}

#[test]
fn postmark_bounce_types() {
    let template = String::from_utf8(fixture("postmark/bounce_soft.json")).unwrap();
    let kind = |t: &str| {
        let body = template.replace("\"SoftBounce\"", &format!("\"{t}\""));
        normalise(Provider::Postmark, body.as_bytes()).map(|mut e| e.remove(0).kind)
    };
    for hard in ["HardBounce", "BadEmailAddress", "ManuallyDeactivated"] {
        assert!(
            matches!(kind(hard), Ok(EventKind::Bounced { hard: true, .. })),
            "{hard}"
        );
    }
    for soft in [
        "Transient",
        "DnsError",
        "Blocked",
        "SpamNotification",
        "DMARCPolicy",
        "Unknown",
        "SMTPApiError",
    ] {
        assert!(
            matches!(kind(soft), Ok(EventKind::Bounced { hard: false, .. })),
            "{soft}"
        );
    }
    assert_eq!(kind("Unsubscribe"), Ok(EventKind::Unsubscribed));
    assert_eq!(kind("SpamComplaint"), Ok(EventKind::Complained));
    for skip in [
        "AutoResponder",
        "AddressChange",
        "Subscribe",
        "ChallengeVerification",
        "OpenRelayTest",
    ] {
        assert_eq!(
            kind(skip),
            Err(InboundError::UnsupportedEvent {
                raw_type: format!("Bounce:{skip}")
            })
        );
    }
}

#[test]
fn postmark_spam_complaint_open_click() {
    let e = one(Provider::Postmark, "postmark/spam_complaint.json");
    assert_eq!(e.kind, EventKind::Complained);
    assert_eq!(e.provider_event_id, "SpamComplaint:42");
    assert_eq!(e.message.postledger_id.as_deref(), Some(OURS));

    let e = one(Provider::Postmark, "postmark/open.json");
    assert_eq!(e.kind, EventKind::Opened);
    assert_eq!(e.recipient, "john@example.com");

    let e = one(Provider::Postmark, "postmark/click.json");
    assert_eq!(
        e.kind,
        EventKind::Clicked {
            url: Some("https://example.com".into())
        }
    );
    assert_eq!(e.occurred_at, time("2017-10-25T15:21:11.9065619Z"));
}

#[test]
fn postmark_subscription_change() {
    let e = one(Provider::Postmark, "postmark/subscription_change.json");
    assert_eq!(e.kind, EventKind::Unsubscribed);
    assert_eq!(e.recipient, "bounced-address@wildbit.com");
    assert_eq!(e.occurred_at, time("2020-02-01T10:53:34.416071Z"));

    let template = String::from_utf8(fixture("postmark/subscription_change.json")).unwrap();
    let hard = template.replace("\"ManualSuppression\"", "\"HardBounce\"");
    assert_eq!(
        normalise(Provider::Postmark, hard.as_bytes()).unwrap()[0].kind,
        bounce(true, None, None)
    );
    let spam = template.replace("\"ManualSuppression\"", "\"SpamComplaint\"");
    assert_eq!(
        normalise(Provider::Postmark, spam.as_bytes()).unwrap()[0].kind,
        EventKind::Complained
    );
    let reactivated = template.replace("\"SuppressSending\": true", "\"SuppressSending\": false");
    assert_eq!(
        normalise(Provider::Postmark, reactivated.as_bytes())
            .unwrap_err()
            .code(),
        "INBOUND_UNSUPPORTED_EVENT"
    );
}

#[test]
fn postmark_errors() {
    let cases: &[(&[u8], &str)] = &[
        (b"[]", "INBOUND_MALFORMED"),
        (br#"[{"RecordType":"Delivery"}]"#, "INBOUND_MALFORMED"),
        (br#"{"Recipient":"a@b.example"}"#, "INBOUND_MALFORMED"),
        (br#"{"RecordType":"Delivery"}"#, "INBOUND_MALFORMED"),
        (
            br#"{"RecordType":"Bounce","Email":"a@b.example"}"#,
            "INBOUND_MALFORMED",
        ),
        (
            br#"{"RecordType":"Bounce","Type":"HardBounce","Email":"a@b.example","ID":1.5}"#,
            "INBOUND_MALFORMED",
        ),
        (
            br#"{"RecordType":"Delivery","Recipient":"a@b.example","Metadata":"x"}"#,
            "INBOUND_MALFORMED",
        ),
        (
            br#"{"RecordType":"SubscriptionChange","Recipient":"a@b.example"}"#,
            "INBOUND_MALFORMED",
        ),
        (
            br#"{"RecordType":"Inbound","FromFull":{"Email":"a@b.example"}}"#,
            "INBOUND_UNSUPPORTED_EVENT",
        ),
    ];
    for (body, code) in cases {
        let err = normalise(Provider::Postmark, body).unwrap_err();
        assert_eq!(
            err.code(),
            *code,
            "{}: {err}",
            String::from_utf8_lossy(body)
        );
    }
}

// ---------------------------------------------------------------- sendgrid

#[test]
fn sendgrid_each_event_type() {
    let e = one(Provider::SendGrid, "sendgrid/delivered.json");
    assert_eq!(e.kind, EventKind::Delivered);
    assert_eq!(e.provider_event_id, "rWVYmVk90MjZJ9iohOBa3w==");
    assert_eq!(e.recipient, "example@test.com");
    assert_eq!(e.message.message_id.as_deref(), Some(OUR_MESSAGE_ID));
    assert_eq!(e.message.postledger_id.as_deref(), Some(OURS));
    assert_eq!(
        e.message.provider_message_id.as_deref(),
        Some("14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.000000000000000000000")
    );
    assert_eq!(e.occurred_at, time("2017-12-15T00:59:29Z"));

    let e = one(Provider::SendGrid, "sendgrid/bounce.json");
    assert_eq!(
        e.kind,
        bounce(
            true,
            Some("5.1.1"),
            Some("550 5.1.1 The email account that you tried to reach does not exist.")
        )
    );
    assert_eq!(e.raw_type, "bounce");

    let e = one(Provider::SendGrid, "sendgrid/blocked.json");
    assert!(
        matches!(e.kind, EventKind::Bounced { hard: false, .. }),
        "blocked is soft: {e:?}"
    );
    assert_eq!(
        e.message.postledger_id.as_deref(),
        Some(OURS),
        "from the smtp-id local part"
    );

    let e = one(Provider::SendGrid, "sendgrid/deferred.json");
    assert_eq!(
        e.kind,
        bounce(false, Some("4.2.2"), Some("400 4.2.2 try again later"))
    );

    let e = one(Provider::SendGrid, "sendgrid/dropped.json");
    assert_eq!(e.kind, bounce(false, None, Some("Bounced Address")));

    assert_eq!(
        one(Provider::SendGrid, "sendgrid/open.json").kind,
        EventKind::Opened
    );
    assert_eq!(
        one(Provider::SendGrid, "sendgrid/click.json").kind,
        EventKind::Clicked {
            url: Some("http://www.sendgrid.com/".into())
        }
    );
    assert_eq!(
        one(Provider::SendGrid, "sendgrid/spamreport.json").kind,
        EventKind::Complained
    );
    assert_eq!(
        one(Provider::SendGrid, "sendgrid/unsubscribe.json").kind,
        EventKind::Unsubscribed
    );
    assert_eq!(
        one(Provider::SendGrid, "sendgrid/group_unsubscribe.json").kind,
        EventKind::Unsubscribed
    );
}

#[test]
fn sendgrid_processed_is_skipped_not_an_error() {
    assert_eq!(
        normalise(Provider::SendGrid, &fixture("sendgrid/processed.json")),
        Ok(vec![])
    );
}

#[test]
fn sendgrid_batch_keeps_order_and_skips_unmapped() {
    let events = normalise(Provider::SendGrid, &fixture("sendgrid/all_events.json")).unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e.raw_type.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "deferred",
            "delivered",
            "open",
            "click",
            "bounce",
            "dropped",
            "spamreport",
            "unsubscribe",
            "group_unsubscribe",
            "bounce"
        ]
    );
    let mut ids: Vec<&str> = events
        .iter()
        .map(|e| e.provider_event_id.as_str())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), events.len(), "distinct events have distinct ids");
}

#[test]
fn sendgrid_unknown_events_are_skipped() {
    let body = br#"[{"event":"account_status_change","email":"a@b.example"},{"event":"delivered","email":"a@b.example","timestamp":1}]"#;
    let events = normalise(Provider::SendGrid, body).unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].kind, EventKind::Delivered);
}

#[test]
fn sendgrid_legacy_unique_args() {
    let body = format!(
        r#"[{{"event":"open","email":"a@b.example","unique_args":{{"postledger_message_id":"{OURS}"}}}}]"#
    );
    assert_eq!(
        normalise(Provider::SendGrid, body.as_bytes()).unwrap()[0]
            .message
            .postledger_id
            .as_deref(),
        Some(OURS)
    );
}

#[test]
fn sendgrid_errors() {
    let cases: &[&[u8]] = &[
        b"[]",
        br#"{"event":"delivered","email":"a@b.example"}"#,
        br#"[{"email":"a@b.example"}]"#,
        br#"[{"event":7,"email":"a@b.example"}]"#,
        br#"[{"event":"delivered"}]"#,
        br#"[{"event":"delivered","email":"a@b.example","timestamp":"soon"}]"#,
        br#"[{"event":"delivered","email":"a@b.example"}, "x"]"#,
    ];
    for body in cases {
        let err = normalise(Provider::SendGrid, body).unwrap_err();
        assert_eq!(
            err.code(),
            "INBOUND_MALFORMED",
            "{}: {err}",
            String::from_utf8_lossy(body)
        );
    }
}

// ---------------------------------------------------------------- mailgun

#[test]
fn mailgun_each_event_type() {
    let e = one(Provider::Mailgun, "mailgun/delivered.json");
    assert_eq!(e.kind, EventKind::Delivered);
    assert_eq!(e.provider_event_id, "CPgfbmQMTCKtHW6uIWtuVe");
    assert_eq!(e.recipient, "alice@example.com");
    assert_eq!(e.message.message_id.as_deref(), Some(OUR_MESSAGE_ID));
    assert_eq!(e.message.postledger_id.as_deref(), Some(OURS));
    let t = e.occurred_at.unwrap();
    assert_eq!(
        (t.timestamp(), t.timestamp_subsec_micros()),
        (1521472262, 908181)
    );

    let e = one(Provider::Mailgun, "mailgun/failed_permanent.json");
    let EventKind::Bounced {
        hard,
        smtp_status,
        diagnostic,
    } = &e.kind
    else {
        panic!("{e:?}")
    };
    assert!(*hard);
    assert_eq!(smtp_status.as_deref(), Some("5.1.1"));
    assert!(diagnostic
        .as_deref()
        .unwrap()
        .starts_with("550 5.1.1 The email account"));

    let e = one(Provider::Mailgun, "mailgun/failed_temporary.json");
    assert_eq!(
        e.kind,
        bounce(
            false,
            Some("4.2.2"),
            Some("452 4.2.2 The email account that you tried to reach is over quota.")
        )
    );

    assert_eq!(
        one(Provider::Mailgun, "mailgun/complained.json").kind,
        EventKind::Complained
    );
    assert_eq!(
        one(Provider::Mailgun, "mailgun/opened.json").kind,
        EventKind::Opened
    );
    assert_eq!(
        one(Provider::Mailgun, "mailgun/clicked.json").kind,
        EventKind::Clicked {
            url: Some("https://shop.example.com/orders/1234".into())
        }
    );
    assert_eq!(
        one(Provider::Mailgun, "mailgun/unsubscribed.json").kind,
        EventKind::Unsubscribed
    );
}

#[test]
fn mailgun_accepted_is_unsupported() {
    assert_eq!(
        normalise(Provider::Mailgun, &fixture("mailgun/accepted.json")),
        Err(InboundError::UnsupportedEvent {
            raw_type: "accepted".into()
        })
    );
}

#[test]
fn mailgun_errors() {
    let cases: &[&[u8]] = &[
        b"[]",
        br#"{"signature":{}}"#,
        br#"{"event-data":[]}"#,
        br#"{"event-data":{"recipient":"a@b.example"}}"#,
        br#"{"event-data":{"event":"delivered"}}"#,
        br#"{"event-data":{"event":"delivered","recipient":"a@b.example","timestamp":"x"}}"#,
        br#"{"event-data":{"event":"failed","recipient":"a@b.example","delivery-status":"550"}}"#,
    ];
    for body in cases {
        let err = normalise(Provider::Mailgun, body).unwrap_err();
        assert_eq!(
            err.code(),
            "INBOUND_MALFORMED",
            "{}: {err}",
            String::from_utf8_lossy(body)
        );
    }
}

// ---------------------------------------------------------------- ses

#[test]
fn ses_permanent_bounce_one_event_per_recipient() {
    let events = normalise(Provider::Ses, &fixture("ses/sns_bounce_permanent.json")).unwrap();
    assert_eq!(events.len(), 2);
    let recipients: Vec<&str> = events.iter().map(|e| e.recipient.as_str()).collect();
    assert_eq!(recipients, ["jane@example.com", "richard@example.com"]);
    assert_eq!(
        events[0].provider_event_id,
        "19ba9823-d7f2-53c1-860e-cb10e0d13dfc:0"
    );
    assert_eq!(
        events[1].provider_event_id,
        "19ba9823-d7f2-53c1-860e-cb10e0d13dfc:1"
    );
    assert_eq!(
        events[0].kind,
        bounce(
            true,
            Some("5.1.1"),
            Some("smtp; 550 5.1.1 <jane@example.com>... User unknown")
        )
    );
    let m = &events[0].message;
    assert_eq!(m.postledger_id.as_deref(), Some(OURS));
    assert_eq!(m.message_id.as_deref(), Some(OUR_MESSAGE_ID));
    assert_eq!(
        m.provider_message_id.as_deref(),
        Some("00000138111222aa-33322211-cccc-cccc-cccc-ddddaaaa0680-000000")
    );
    assert_eq!(events[0].occurred_at, time("2016-01-27T14:59:44.101Z"));
    assert_eq!(events[0].raw_type, "Bounce");
}

#[test]
fn ses_transient_bounce_is_soft() {
    let e = one(Provider::Ses, "ses/sns_bounce_transient.json");
    assert_eq!(
        e.kind,
        bounce(false, Some("4.2.2"), Some("smtp; 452 4.2.2 Mailbox full"))
    );
    assert_eq!(e.recipient, "mary@example.com");
}

#[test]
fn ses_complaint_delivery() {
    let e = one(Provider::Ses, "ses/sns_complaint.json");
    assert_eq!(e.kind, EventKind::Complained);
    assert_eq!(e.recipient, "richard@example.com");
    assert_eq!(
        e.provider_event_id,
        "2a4bc0f1-7e7a-5c1c-9d2e-0f1d2e3c4b5a:0"
    );

    let e = one(Provider::Ses, "ses/sns_delivery.json");
    assert_eq!(e.kind, EventKind::Delivered);
    assert_eq!(e.recipient, "jane@example.com");
}

#[test]
fn ses_event_publishing() {
    let e = one(Provider::Ses, "ses/sns_event_open.json");
    assert_eq!(e.kind, EventKind::Opened);
    assert_eq!(e.recipient, "recipient@example.com");
    assert_eq!(
        e.message.postledger_id.as_deref(),
        Some(OURS),
        "from the message tag"
    );
    assert_eq!(e.message.message_id, None);
    assert_eq!(e.occurred_at, time("2017-08-09T22:00:19.652Z"));

    let e = one(Provider::Ses, "ses/sns_event_click.json");
    assert_eq!(
        e.kind,
        EventKind::Clicked {
            url: Some(
                "http://docs.aws.amazon.com/ses/latest/DeveloperGuide/send-email-smtp.html".into()
            )
        }
    );

    let e = one(Provider::Ses, "ses/sns_event_delivery_delay.json");
    assert_eq!(
        e.kind,
        bounce(
            false,
            Some("4.4.1"),
            Some("smtp; 421 4.4.1 Unable to connect to remote host")
        )
    );

    assert_eq!(
        normalise(Provider::Ses, &fixture("ses/sns_event_send.json")),
        Err(InboundError::UnsupportedEvent {
            raw_type: "Send".into()
        })
    );
}

#[test]
fn ses_bare_notifications() {
    let events = normalise(Provider::Ses, &fixture("ses/bare_bounce.json")).unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(
        events[0].provider_event_id,
        "00000138111222aa-44455566-cccc-cccc-cccc-ddddaaaa068a-000000:0"
    );
    assert!(matches!(
        events[1].kind,
        EventKind::Bounced { hard: true, .. }
    ));
    let e = one(Provider::Ses, "ses/bare_complaint.json");
    assert_eq!(e.kind, EventKind::Complained);
}

#[test]
fn ses_bare_without_feedback_id_is_hashed_per_recipient() {
    let body = br#"{"eventType":"Open","mail":{"messageId":"m","destination":["a@b.example","c@d.example"]},"open":{}}"#;
    let events = normalise(Provider::Ses, body).unwrap();
    assert_eq!(events.len(), 2);
    assert_ne!(events[0].provider_event_id, events[1].provider_event_id);
    assert_eq!(events[0].provider_event_id.len(), 64);
}

#[test]
fn ses_subscription_confirmation_is_reported_not_fetched() {
    let err = normalise(
        Provider::Ses,
        &fixture("ses/sns_subscription_confirmation.json"),
    )
    .unwrap_err();
    let InboundError::SubscriptionConfirmation { subscribe_url } = &err else {
        panic!("{err:?}")
    };
    assert!(subscribe_url
        .starts_with("https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription&TopicArn="));
    assert_eq!(err.code(), "INBOUND_SUBSCRIPTION_CONFIRMATION");
}

#[test]
fn ses_errors() {
    let cases: &[(&[u8], &str)] = &[
        (b"[]", "INBOUND_MALFORMED"),
        (br#"{"foo":1}"#, "INBOUND_MALFORMED"),
        (br#"{"Type":"Notification","MessageId":"x"}"#, "INBOUND_MALFORMED"),
        (br#"{"Type":"Notification","MessageId":"x","Message":"not json"}"#, "INBOUND_MALFORMED"),
        (br#"{"Type":"Notification","MessageId":"x","Message":"[1]"}"#, "INBOUND_MALFORMED"),
        (br#"{"Type":"Notification","Message":"{}"}"#, "INBOUND_MALFORMED"),
        (br#"{"Type":"SubscriptionConfirmation"}"#, "INBOUND_MALFORMED"),
        (br#"{"Type":"UnsubscribeConfirmation","MessageId":"x"}"#, "INBOUND_UNSUPPORTED_EVENT"),
        (br#"{"notificationType":"Bounce"}"#, "INBOUND_MALFORMED"),
        (br#"{"notificationType":"Bounce","mail":{},"bounce":{"bouncedRecipients":[]}}"#, "INBOUND_MALFORMED"),
        (br#"{"notificationType":"Bounce","mail":{},"bounce":{"bouncedRecipients":[{"status":"5.1.1"}]}}"#, "INBOUND_MALFORMED"),
        (br#"{"notificationType":"Delivery","mail":{},"delivery":{"recipients":[1]}}"#, "INBOUND_MALFORMED"),
        (br#"{"eventType":"Open","mail":{"destination":[]},"open":{}}"#, "INBOUND_MALFORMED"),
        (br#"{"eventType":"Reject","mail":{},"reject":{}}"#, "INBOUND_UNSUPPORTED_EVENT"),
    ];
    for (body, code) in cases {
        let err = normalise(Provider::Ses, body).unwrap_err();
        assert_eq!(
            err.code(),
            *code,
            "{}: {err}",
            String::from_utf8_lossy(body)
        );
    }
}

// ---------------------------------------------------------------- all

const ALL_JSON_FIXTURES: &[(Provider, &str)] = &[
    (Provider::Generic, "generic"),
    (Provider::Postmark, "postmark"),
    (Provider::SendGrid, "sendgrid"),
    (Provider::Mailgun, "mailgun"),
    (Provider::Ses, "ses"),
];

fn fixture_names(dir: &str) -> Vec<String> {
    let full = format!("{}/tests/fixtures/{dir}", env!("CARGO_MANIFEST_DIR"));
    let mut names: Vec<String> = std::fs::read_dir(&full)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert!(names.len() >= 6, "{dir} has too few fixtures");
    names
}

#[test]
fn every_fixture_is_stable_and_round_trips_through_serde() {
    for (provider, dir) in ALL_JSON_FIXTURES {
        for name in fixture_names(dir) {
            let path = format!("{dir}/{name}");
            assert_stable(*provider, &path);
            if let Ok(events) = normalise(*provider, &fixture(&path)) {
                for e in events {
                    let json = serde_json::to_string(&e).unwrap();
                    let back: InboundEvent = serde_json::from_str(&json).unwrap();
                    assert_eq!(back, e, "{path}");
                }
            }
        }
    }
}

#[test]
fn a_fixture_for_one_provider_is_not_accepted_as_another() {
    for (provider, dir) in ALL_JSON_FIXTURES {
        for name in fixture_names(dir) {
            let body = fixture(&format!("{dir}/{name}"));
            for (other, _) in ALL_JSON_FIXTURES {
                if other == provider {
                    continue;
                }
                assert!(
                    normalise(*other, &body).is_err(),
                    "{dir}/{name} accepted as {other}"
                );
            }
        }
    }
}
