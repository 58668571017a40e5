//! The dispatcher against a real log on disk and a real SMTP server (aiosmtpd) on loopback:
//! the MIME it sends, deferral and failure by SMTP code, failover, scheduling, priorities,
//! restarts, rate limits, the file outbox and expiry.

use std::time::Duration;

use crate::sink::Delivered;
use chrono::{DateTime, Timelike, Utc};
use domain::mail_settings::{Relay, TlsMode};
use domain::message::{
    AttachmentRef, AttemptOutcome, DeliveryAttempted, Mailbox, MessageEvent, MessageFailed,
    MessageSent, Priority, DELIVERY_ATTEMPTED, MESSAGE_CANCELLED, MESSAGE_DEFERRED, MESSAGE_FAILED,
    MESSAGE_QUEUED, MESSAGE_SENT,
};
use eventlog::EventLog;
use mail_parser::MimeHeaders;
use uuid::Uuid;
use workers::dispatch::{DispatchConfig, Dispatcher};
use workers::seal::relay_password_context;

use crate::support::*;

fn config(t: &TestLog, retry_ms: u64) -> DispatchConfig {
    let mut c = DispatchConfig::new(t.outbox(), t.blobs(), master_key());
    c.retry_schedule = vec![Duration::from_millis(retry_ms)];
    c.jitter = 0.0;
    c.smtp_timeout = Duration::from_secs(5);
    c.concurrency = 8;
    c.hello_name = "dispatch-test.localhost".into();
    c
}

fn attempts(events: &[MessageEvent]) -> Vec<&DeliveryAttempted> {
    events
        .iter()
        .filter_map(|e| match e {
            MessageEvent::Attempted(a) => Some(a),
            _ => None,
        })
        .collect()
}

fn sent(events: &[MessageEvent]) -> &MessageSent {
    events
        .iter()
        .find_map(|e| match e {
            MessageEvent::Sent(s) => Some(s),
            _ => None,
        })
        .expect("a MessageSent")
}

fn failed(events: &[MessageEvent]) -> &MessageFailed {
    events
        .iter()
        .find_map(|e| match e {
            MessageEvent::Failed(f) => Some(f),
            _ => None,
        })
        .expect("a MessageFailed")
}

/// A tenant whose only relay is the sink.
async fn tenant_with_sink(log: &EventLog, sink: &Sink) -> Uuid {
    let tenant = Uuid::now_v7();
    put_relay(log, tenant, relay("sink", sink.port, 10)).await;
    tenant
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sent_message_carries_its_headers_parts_and_attachment() {
    let t = TestLog::open();
    let sink = Sink::start();
    let tenant = tenant_with_sink(&t.log, &sink).await;
    let pdf: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
    let logo = b"\x89PNG\r\n\x1a\n not really a png".to_vec();
    let blobs = t.blobs();
    let mut m = message("ada@example.test", "Quarterly report");
    m.from = Mailbox {
        email: "news@example.test".into(),
        name: Some("News Desk".into()),
    };
    m.to = vec![Mailbox {
        email: "ada@example.test".into(),
        name: Some("Ada".into()),
    }];
    m.cc = vec![mailbox("grace@example.test")];
    m.bcc = vec![mailbox("secret-bcc@example.test")];
    m.reply_to = Some(mailbox("help@example.test"));
    m.text = Some("Plain body".into());
    m.html = Some("<p>HTML body <img src=\"cid:logo\"></p>".into());
    m.headers.insert("X-Campaign".into(), "spring-2026".into());
    m.attachments = vec![
        AttachmentRef {
            digest: blobs.put(&pdf).unwrap(),
            size: pdf.len() as u64,
            filename: "report.pdf".into(),
            content_type: "application/pdf".into(),
            content_id: None,
        },
        AttachmentRef {
            digest: blobs.put(&logo).unwrap(),
            size: logo.len() as u64,
            filename: "logo.png".into(),
            content_type: "image/png".into(),
            content_id: Some("logo".into()),
        },
    ];
    let id = queue(&t.log, tenant, m).await;
    let d = Dispatcher::start(t.log.clone(), config(&t, 200));

    let events = wait_for_event(&t.log, tenant, id, MESSAGE_SENT, WAIT).await;
    let got = sink.arrived(1, WAIT).await;
    d.stop().await;
    assert_eq!(got.len(), 1);
    let msg = &got[0];
    let parsed = msg.parsed();

    let from = parsed.from().and_then(|a| a.first()).unwrap();
    assert_eq!(
        (from.name(), from.address()),
        (Some("News Desk"), Some("news@example.test"))
    );
    let to = parsed.to().and_then(|a| a.first()).unwrap();
    assert_eq!(to.address(), Some("ada@example.test"));
    assert_eq!(
        parsed
            .cc()
            .and_then(|a| a.first())
            .and_then(|a| a.address()),
        Some("grace@example.test")
    );
    assert_eq!(
        parsed
            .reply_to()
            .and_then(|a| a.first())
            .and_then(|a| a.address()),
        Some("help@example.test")
    );
    assert_eq!(parsed.subject(), Some("Quarterly report"));
    assert_eq!(
        parsed.message_id(),
        Some(format!("{id}@example.test").as_str())
    );
    assert_eq!(msg.message_id(), Some(id));
    assert_eq!(msg.header("X-Campaign").as_deref(), Some("spring-2026"));
    assert!(msg.header("Date").is_some());
    assert!(parsed.body_text(0).unwrap().contains("Plain body"));
    assert!(parsed.body_html(0).unwrap().contains("HTML body"));
    assert!(msg.text().contains("multipart/alternative"));
    assert!(msg.text().contains("multipart/related"));
    assert!(msg.text().contains("multipart/mixed"));

    let report = parsed
        .attachments()
        .find(|p| p.attachment_name() == Some("report.pdf"))
        .expect("the report attachment");
    assert_eq!(report.contents(), pdf.as_slice());
    assert!(report
        .content_disposition()
        .is_some_and(|c| c.is_attachment()));
    let inline = parsed
        .attachments()
        .find(|p| p.content_id() == Some("logo"))
        .expect("the inline logo");
    assert_eq!(inline.contents(), logo.as_slice());
    assert!(inline.content_disposition().is_some_and(|c| c.is_inline()));

    // Bcc: in the envelope, nowhere in the bytes.
    assert!(msg.header("Bcc").is_none());
    assert!(!msg.text().contains("secret-bcc"));
    let mut rcpt = msg.rcpt_tos.clone();
    rcpt.sort();
    assert_eq!(
        rcpt,
        [
            "ada@example.test",
            "grace@example.test",
            "secret-bcc@example.test"
        ]
    );
    assert_eq!(msg.mail_from, "news@example.test");

    assert_eq!(
        event_types(&events),
        [MESSAGE_QUEUED, DELIVERY_ATTEMPTED, MESSAGE_SENT]
    );
    let a = attempts(&events)[0];
    assert_eq!(
        (a.attempt, a.outcome, a.code, a.relay.as_str()),
        (1, AttemptOutcome::Sent, Some(250), "sink")
    );
    assert!(a.relay_id.is_some());
    assert_eq!(sent(&events).relay, "sink");
    assert_eq!(sent(&events).relay_id, a.relay_id);
    let s = d.status();
    assert_eq!((s.sent, s.deferred, s.failed), (1, 0, 0));
    assert!(s.caught_up);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_451_defers_and_the_next_round_sends() {
    let t = TestLog::open();
    let sink = Sink::start();
    let tenant = tenant_with_sink(&t.log, &sink).await;
    let id = queue(
        &t.log,
        tenant,
        message("tempfail1-bob@example.test", "Deferred once"),
    )
    .await;
    let d = Dispatcher::start(t.log.clone(), config(&t, 200));
    let events = wait_for_event(&t.log, tenant, id, MESSAGE_SENT, WAIT).await;
    d.stop().await;

    assert_eq!(
        event_types(&events),
        [
            MESSAGE_QUEUED,
            DELIVERY_ATTEMPTED,
            MESSAGE_DEFERRED,
            DELIVERY_ATTEMPTED,
            MESSAGE_SENT
        ]
    );
    let a = attempts(&events);
    assert_eq!(
        (a[0].attempt, a[0].outcome, a[0].code),
        (1, AttemptOutcome::Deferred, Some(451))
    );
    assert!(a[0].reply.contains("Temporary failure"), "{}", a[0].reply);
    assert_eq!(
        (a[1].attempt, a[1].outcome, a[1].code),
        (2, AttemptOutcome::Sent, Some(250))
    );
    let MessageEvent::Deferred(def) = &events[2] else {
        panic!("expected MessageDeferred")
    };
    assert_eq!(def.code, Some(451));
    // No jitter: exactly the schedule's 200 ms after the attempt, and never retried early.
    let delay = def.next_attempt_at - a[0].at;
    assert!((190..=400).contains(&delay.num_milliseconds()), "{delay:?}");
    assert!(a[1].at >= def.next_attempt_at);
    assert_eq!(sink.delivered().len(), 1);
    let s = d.status();
    assert_eq!((s.sent, s.deferred, s.failed), (1, 1, 0));
}

/// The dispatcher keeps SMTP connections open between messages. When the relay drops one
/// (here: it restarts), the next message must not pay for it with a deferral: a connection
/// idle for a while is checked with NOOP before it carries a message, and replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_the_relay_dropped_is_replaced_without_a_deferral() {
    let t = TestLog::open();
    let sink = Sink::start();
    let port = sink.port;
    let tenant = tenant_with_sink(&t.log, &sink).await;
    let d = Dispatcher::start(t.log.clone(), config(&t, 200));
    let first = queue(&t.log, tenant, message("bob@example.test", "First")).await;
    wait_for_event(&t.log, tenant, first, MESSAGE_SENT, WAIT).await;

    drop(sink);
    let sink = Sink::start_on(port);
    // Longer than the pool's idle time before a check (2 s).
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let second = queue(&t.log, tenant, message("carol@example.test", "Second")).await;
    let events = wait_for_event(&t.log, tenant, second, MESSAGE_SENT, WAIT).await;
    d.stop().await;

    assert_eq!(
        event_types(&events),
        [MESSAGE_QUEUED, DELIVERY_ATTEMPTED, MESSAGE_SENT]
    );
    let got = sink.delivered();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].rcpt_tos, ["carol@example.test"]);
}

/// The test relay CA (`tests/fixtures/tls/ca.pem`) as DER, the way `relay_ca_file` is read.
fn test_relay_ca() -> Vec<Vec<u8>> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/tls/ca.pem");
    workers::smtp::roots_from_pem(&std::fs::read(path).unwrap()).unwrap()
}

/// A message to a relay over TLS, in the given mode; returns what the sink received and
/// the message's events.
async fn send_over_tls(
    mode: &str,
    tls: TlsMode,
    trust: bool,
) -> (Vec<Delivered>, Vec<MessageEvent>) {
    let t = TestLog::open();
    let sink = Sink::start_tls(mode);
    let tenant = Uuid::now_v7();
    put_relay(
        &t.log,
        tenant,
        Relay {
            tls,
            ..relay("tls-relay", sink.port, 10)
        },
    )
    .await;
    let mut c = config(&t, 60_000);
    if trust {
        c.relay_roots = test_relay_ca();
    }
    let d = Dispatcher::start(t.log.clone(), c);
    let id = queue(&t.log, tenant, message("bob@example.test", "Over TLS")).await;
    let want = if trust {
        MESSAGE_SENT
    } else {
        MESSAGE_DEFERRED
    };
    let events = wait_for_event(&t.log, tenant, id, want, WAIT).await;
    d.stop().await;
    (sink.delivered(), events)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_to_a_relay_carries_the_message_encrypted() {
    let (got, events) = send_over_tls("starttls", TlsMode::Starttls, true).await;
    assert_eq!(
        event_types(&events),
        [MESSAGE_QUEUED, DELIVERY_ATTEMPTED, MESSAGE_SENT]
    );
    assert_eq!(got.len(), 1);
    assert!(
        got[0]
            .tls
            .as_deref()
            .is_some_and(|v| v.starts_with("TLSv1.")),
        "{:?}",
        got[0].tls
    );
    assert_eq!(got[0].rcpt_tos, ["bob@example.test"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn implicit_tls_to_a_relay_carries_the_message_encrypted() {
    let (got, events) = send_over_tls("implicit", TlsMode::Tls, true).await;
    assert_eq!(
        event_types(&events),
        [MESSAGE_QUEUED, DELIVERY_ATTEMPTED, MESSAGE_SENT]
    );
    assert_eq!(got.len(), 1);
    assert!(
        got[0]
            .tls
            .as_deref()
            .is_some_and(|v| v.starts_with("TLSv1.")),
        "{:?}",
        got[0].tls
    );
}

/// Without `relay_ca_file` the relay's certificate (from a private CA) is not trusted:
/// nothing is sent, in clear or otherwise, and the round defers as unreachable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_certificate_that_is_not_trusted_stops_the_send() {
    for (mode, tls) in [("starttls", TlsMode::Starttls), ("implicit", TlsMode::Tls)] {
        let (got, events) = send_over_tls(mode, tls, false).await;
        assert!(got.is_empty(), "{mode}: {got:?}");
        let a = attempts(&events);
        assert_eq!(a[0].outcome, AttemptOutcome::Unreachable, "{mode}");
        assert!(
            a[0].reply.contains("TLS") || a[0].reply.contains("certificate"),
            "{mode}: {}",
            a[0].reply
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_550_fails_at_once_without_another_round() {
    let t = TestLog::open();
    let sink = Sink::start();
    let tenant = tenant_with_sink(&t.log, &sink).await;
    // A second relay must not be tried after a permanent refusal.
    put_relay(&t.log, tenant, relay("backup", sink.port, 20)).await;
    let id = queue(
        &t.log,
        tenant,
        message("reject-carol@example.test", "Refused"),
    )
    .await;
    let d = Dispatcher::start(t.log.clone(), config(&t, 100));
    wait_for_event(&t.log, tenant, id, MESSAGE_FAILED, WAIT).await;
    // Several retry periods: nothing more may happen.
    tokio::time::sleep(Duration::from_millis(500)).await;
    d.stop().await;
    let events = message_events(&t.log, tenant, id);
    assert_eq!(
        event_types(&events),
        [MESSAGE_QUEUED, DELIVERY_ATTEMPTED, MESSAGE_FAILED]
    );
    let a = attempts(&events)[0];
    assert_eq!(
        (a.outcome, a.code, a.relay.as_str()),
        (AttemptOutcome::Failed, Some(550), "sink")
    );
    let f = failed(&events);
    assert!(f.permanent);
    assert_eq!(f.code, Some(550));
    assert!(f.reason.contains("User unknown"), "{}", f.reason);
    assert!(sink.delivered().is_empty());
    assert_eq!(d.status().failed, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_relay_fails_over_to_the_next_in_the_same_round() {
    let t = TestLog::open();
    let sink = Sink::start();
    let tenant = Uuid::now_v7();
    put_relay(&t.log, tenant, relay("dead", dead_port(), 1)).await;
    put_relay(&t.log, tenant, relay("sink", sink.port, 2)).await;
    let id = queue(&t.log, tenant, message("dave@example.test", "Failover")).await;
    let d = Dispatcher::start(t.log.clone(), config(&t, 200));
    let events = wait_for_event(&t.log, tenant, id, MESSAGE_SENT, WAIT).await;
    d.stop().await;
    assert_eq!(
        event_types(&events),
        [
            MESSAGE_QUEUED,
            DELIVERY_ATTEMPTED,
            DELIVERY_ATTEMPTED,
            MESSAGE_SENT
        ]
    );
    let a = attempts(&events);
    assert_eq!(
        (a[0].attempt, a[0].relay.as_str(), a[0].outcome, a[0].code),
        (1, "dead", AttemptOutcome::Unreachable, None)
    );
    assert!(!a[0].reply.is_empty());
    assert_eq!(
        (a[1].attempt, a[1].relay.as_str(), a[1].outcome),
        (1, "sink", AttemptOutcome::Sent)
    );
    assert_eq!(sent(&events).relay, "sink");
    assert_eq!(sink.arrived(1, WAIT).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_relay_is_unreachable_the_round_defers() {
    let t = TestLog::open();
    let tenant = Uuid::now_v7();
    put_relay(&t.log, tenant, relay("dead-1", dead_port(), 1)).await;
    put_relay(&t.log, tenant, relay("dead-2", dead_port(), 2)).await;
    let id = queue(&t.log, tenant, message("erin@example.test", "Nowhere")).await;
    let d = Dispatcher::start(t.log.clone(), config(&t, 60_000));
    let events = wait_for_event(&t.log, tenant, id, MESSAGE_DEFERRED, WAIT).await;
    d.stop().await;
    let a = attempts(&events);
    assert_eq!(a.len(), 2);
    assert!(a
        .iter()
        .all(|a| a.outcome == AttemptOutcome::Unreachable && a.attempt == 1));
    let MessageEvent::Deferred(def) = events.last().unwrap() else {
        panic!("expected MessageDeferred last")
    };
    assert!(def.reason.contains("dead-1") && def.reason.contains("dead-2"));
    assert_eq!(def.code, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_message_waits_for_its_time() {
    let t = TestLog::open();
    let sink = Sink::start();
    let tenant = tenant_with_sink(&t.log, &sink).await;
    let scheduled_at = Utc::now() + chrono::TimeDelta::milliseconds(1500);
    let mut later = message("frank@example.test", "Later");
    later.scheduled_at = Some(scheduled_at);
    let later = queue(&t.log, tenant, later).await;
    let now = queue(&t.log, tenant, message("frank@example.test", "Now")).await;
    let d = Dispatcher::start(t.log.clone(), config(&t, 200));

    // The unscheduled one goes at once, the scheduled one not before its time.
    let first = sink.arrived(1, WAIT).await;
    assert_eq!(first[0].message_id(), Some(now));
    let events = wait_for_event(&t.log, tenant, later, MESSAGE_SENT, WAIT).await;
    d.stop().await;
    let got = sink.delivered();
    assert_eq!(got.len(), 2);
    assert_eq!(got[1].message_id(), Some(later));
    assert!(
        got[1].received_time() >= scheduled_at,
        "received {} before {scheduled_at}",
        got[1].received_time()
    );
    assert!(attempts(&events)[0].at >= scheduled_at);
    // Woken when due, not by a coarse poll.
    let late = got[1].received_time() - scheduled_at;
    assert!(late.num_milliseconds() < 1000, "{late:?} late");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn due_messages_go_by_priority_then_age() {
    let t = TestLog::open();
    let sink = Sink::start();
    let tenant = tenant_with_sink(&t.log, &sink).await;
    for (subject, priority) in [
        ("low", Priority::Low),
        ("normal-1", Priority::Normal),
        ("high", Priority::High),
        ("normal-2", Priority::Normal),
        ("immediate", Priority::Immediate),
    ] {
        let mut m = message("gina@example.test", subject);
        m.priority = priority;
        queue(&t.log, tenant, m).await;
    }
    let mut c = config(&t, 200);
    c.concurrency = 1;
    let d = Dispatcher::start(t.log.clone(), c);
    let got = sink.arrived(5, WAIT).await;
    d.stop().await;
    let order: Vec<String> = got
        .iter()
        .map(|m| m.parsed().subject().unwrap_or_default().to_string())
        .collect();
    assert_eq!(order, ["immediate", "high", "normal-1", "normal-2", "low"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_neither_resends_nor_forgets() {
    let t = TestLog::open();
    let sink = Sink::start();
    let tenant = tenant_with_sink(&t.log, &sink).await;
    let first = queue(&t.log, tenant, message("hank@example.test", "First")).await;
    // Unrelated events between the message and its MessageSent, more than the dispatcher
    // reads at once: on restart the MessageQueued arrives a batch before the MessageSent.
    append_filler(&t.log, tenant, 600).await;
    let d = Dispatcher::start(t.log.clone(), config(&t, 200));
    wait_for_event(&t.log, tenant, first, MESSAGE_SENT, WAIT).await;
    d.stop().await;
    // Stopped: nothing is sent, but it is not lost either.
    let second = queue(&t.log, tenant, message("hank@example.test", "Second")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sink.delivered().len(), 1);
    assert_eq!(
        event_types(&message_events(&t.log, tenant, second)),
        [MESSAGE_QUEUED]
    );

    let d = Dispatcher::start(t.log.clone(), config(&t, 200));
    wait_for_event(&t.log, tenant, second, MESSAGE_SENT, WAIT).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = d.status();
    d.stop().await;
    let ids: Vec<_> = sink.delivered().iter().map(|m| m.message_id()).collect();
    assert_eq!(ids, [Some(first), Some(second)]);
    let first_events = message_events(&t.log, tenant, first);
    assert_eq!(
        event_types(&first_events),
        [MESSAGE_QUEUED, DELIVERY_ATTEMPTED, MESSAGE_SENT]
    );
    assert!(status.caught_up);
    assert_eq!((status.sent, status.pending, status.in_flight), (1, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_before_the_send_keeps_the_message_back() {
    let t = TestLog::open();
    let sink = Sink::start();
    let tenant = tenant_with_sink(&t.log, &sink).await;
    let mut m = message("ivy@example.test", "Cancelled");
    m.scheduled_at = Some(Utc::now() + chrono::TimeDelta::milliseconds(600));
    let id = queue(&t.log, tenant, m).await;
    let d = Dispatcher::start(t.log.clone(), config(&t, 200));
    wait_until("caught up", WAIT, || d.status().caught_up).await;
    cancel(&t.log, tenant, id).await;
    let control = queue(&t.log, tenant, message("ivy@example.test", "Control")).await;
    wait_for_event(&t.log, tenant, control, MESSAGE_SENT, WAIT).await;
    tokio::time::sleep(Duration::from_millis(900)).await;
    let status = d.status();
    d.stop().await;
    assert_eq!(
        event_types(&message_events(&t.log, tenant, id)),
        [MESSAGE_QUEUED, MESSAGE_CANCELLED]
    );
    let ids: Vec<_> = sink.delivered().iter().map(|m| m.message_id()).collect();
    assert_eq!(ids, [Some(control)]);
    assert_eq!(status.pending, 0);
}

/// The first second of a calendar minute with at least `need` seconds left in it.
async fn away_from_a_minute_boundary(need: u32) {
    let s = Utc::now().second();
    if s + need >= 60 {
        let wait = Duration::from_millis(u64::from(60 - s) * 1000 + 100);
        tokio::time::sleep(wait).await;
    }
}

fn minute_of(at: DateTime<Utc>) -> i64 {
    at.timestamp().div_euclid(60)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_minute_limit_holds_within_the_minute_and_across_a_restart() {
    let t = TestLog::open();
    let sink = Sink::start();
    let tenant = Uuid::now_v7();
    let mut r = relay("limited", sink.port, 1);
    r.per_minute = Some(2);
    put_relay(&t.log, tenant, r).await;
    // The assertions below need the whole test inside one calendar minute.
    away_from_a_minute_boundary(8).await;
    let started_minute = minute_of(Utc::now());
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            queue(
                &t.log,
                tenant,
                message("jack@example.test", &format!("limited {i}")),
            )
            .await,
        );
    }
    let d = Dispatcher::start(t.log.clone(), config(&t, 200));
    sink.arrived(2, WAIT).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let status = d.status();
    d.stop().await;
    assert_eq!(sink.delivered().len(), 2);
    assert_eq!((status.sent, status.pending, status.in_flight), (2, 1, 0));
    let timelines: Vec<Vec<&str>> = ids
        .iter()
        .map(|id| event_types(&message_events(&t.log, tenant, *id)))
        .collect();
    let sent_count = timelines
        .iter()
        .filter(|t| t.contains(&MESSAGE_SENT))
        .count();
    assert_eq!(sent_count, 2, "{timelines:?}");
    // The one held back waits in memory: nothing recorded for it.
    assert!(
        timelines.iter().any(|t| t == &[MESSAGE_QUEUED]),
        "{timelines:?}"
    );

    // After a restart the count comes back from the log.
    let d = Dispatcher::start(t.log.clone(), config(&t, 200));
    wait_until("caught up", WAIT, || d.status().caught_up).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let status = d.status();
    d.stop().await;
    assert_eq!(
        minute_of(Utc::now()),
        started_minute,
        "the test crossed a minute boundary"
    );
    assert_eq!(sink.delivered().len(), 2);
    assert_eq!((status.sent, status.pending), (0, 1));
    for m in sink.delivered() {
        assert_eq!(minute_of(m.received_time()), started_minute);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_relay_the_message_goes_to_the_file_outbox() {
    let t = TestLog::open();
    let sink = Sink::start();
    let with_relay = tenant_with_sink(&t.log, &sink).await;
    let without = Uuid::now_v7();
    put_sender(&t.log, without, "news@example.test").await;
    let to_outbox = queue(
        &t.log,
        without,
        message("kim@example.test", "To the outbox"),
    )
    .await;
    let to_sink = queue(
        &t.log,
        with_relay,
        message("kim@example.test", "To the sink"),
    )
    .await;
    let d = Dispatcher::start(t.log.clone(), config(&t, 200));
    let events = wait_for_event(&t.log, without, to_outbox, MESSAGE_SENT, WAIT).await;
    wait_for_event(&t.log, with_relay, to_sink, MESSAGE_SENT, WAIT).await;
    d.stop().await;

    let folder = t.outbox().join(without.to_string());
    let file = folder.join(format!("{to_outbox}.eml"));
    let bytes = std::fs::read(&file).expect("the .eml in the outbox");
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.contains("Subject: To the outbox"), "{text}");
    assert!(text.contains(&format!("X-Postledger-Message-Id: {to_outbox}")));
    let names: Vec<_> = std::fs::read_dir(&folder)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(
        names,
        [format!("{to_outbox}.eml")],
        "no temporary file left"
    );
    // The other tenant's message went to its relay, not to the outbox.
    assert!(!t.outbox().join(with_relay.to_string()).exists());
    let ids: Vec<_> = sink.delivered().iter().map(|m| m.message_id()).collect();
    assert_eq!(ids, [Some(to_sink)]);

    let a = attempts(&events)[0];
    assert_eq!(
        (a.relay.as_str(), a.relay_id, a.outcome, a.code),
        ("outbox", None, AttemptOutcome::Sent, Some(250))
    );
    let s = sent(&events);
    assert_eq!(
        (s.relay.as_str(), s.relay_id, s.reply.as_str()),
        ("outbox", None, "written to the file outbox")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_deferred_past_its_max_age_fails() {
    let t = TestLog::open();
    let sink = Sink::start();
    let tenant = tenant_with_sink(&t.log, &sink).await;
    let id = queue(
        &t.log,
        tenant,
        message("tempfail99-lee@example.test", "Never"),
    )
    .await;
    let mut c = config(&t, 150);
    c.max_age = Duration::from_millis(700);
    let d = Dispatcher::start(t.log.clone(), c);
    let events = wait_for_event(&t.log, tenant, id, MESSAGE_FAILED, WAIT).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    d.stop().await;
    let f = failed(&events);
    assert!(!f.permanent);
    assert_eq!(f.code, Some(451));
    assert!(f.reason.contains("expired"), "{}", f.reason);
    let a = attempts(&events);
    assert!(a.len() >= 2, "{:?}", event_types(&events));
    assert!(a.iter().all(|a| a.outcome == AttemptOutcome::Deferred));
    let rounds: Vec<u32> = a.iter().map(|a| a.attempt).collect();
    assert_eq!(rounds, (1..=a.len() as u32).collect::<Vec<_>>());
    assert!(
        f.reason.contains(&format!("after {} rounds", a.len())),
        "{}",
        f.reason
    );
    // Failed is final: no further round.
    assert_eq!(message_events(&t.log, tenant, id).len(), events.len());
    assert!(sink.delivered().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_cannot_be_built_fails_permanently() {
    let t = TestLog::open();
    let sink = Sink::start();
    let tenant = tenant_with_sink(&t.log, &sink).await;
    let mut m = message("mia@example.test", "Missing blob");
    m.attachments = vec![AttachmentRef {
        digest: "cd".repeat(32),
        size: 10,
        filename: "gone.pdf".into(),
        content_type: "application/pdf".into(),
        content_id: None,
    }];
    let id = queue(&t.log, tenant, m).await;
    let d = Dispatcher::start(t.log.clone(), config(&t, 200));
    let events = wait_for_event(&t.log, tenant, id, MESSAGE_FAILED, WAIT).await;
    d.stop().await;
    assert_eq!(event_types(&events), [MESSAGE_QUEUED, MESSAGE_FAILED]);
    let f = failed(&events);
    assert!(f.permanent);
    assert!(f.reason.contains("gone.pdf"), "{}", f.reason);
    assert!(sink.delivered().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_passwords_are_opened_only_in_their_own_context() {
    const PASSWORD: &str = "relay-pass-7d1e0b";
    let t = TestLog::open();
    let sink = Sink::start();
    let good = Uuid::now_v7();
    let mut r = relay("with-auth", sink.port, 1);
    r.username = Some("mailer".into());
    r.password = Some(
        master_key()
            .seal(PASSWORD.as_bytes(), &relay_password_context(good, r.id))
            .unwrap(),
    );
    put_relay(&t.log, good, r.clone()).await;
    // The same sealed password copied to another tenant's relay must not open there.
    let other = Uuid::now_v7();
    let mut copied = relay("copied", sink.port, 1);
    copied.username = r.username.clone();
    copied.password = r.password.clone();
    put_relay(&t.log, other, copied).await;

    let ok = queue(&t.log, good, message("nia@example.test", "Authenticated")).await;
    let refused = queue(&t.log, other, message("nia@example.test", "Wrong context")).await;
    let d = Dispatcher::start(t.log.clone(), config(&t, 60_000));
    wait_for_event(&t.log, good, ok, MESSAGE_SENT, WAIT).await;
    let events = wait_for_event(&t.log, other, refused, MESSAGE_DEFERRED, WAIT).await;
    d.stop().await;
    let a = attempts(&events)[0];
    assert_eq!(a.outcome, AttemptOutcome::Unreachable);
    assert!(a.reply.contains("master key"), "{}", a.reply);
    let ids: Vec<_> = sink.delivered().iter().map(|m| m.message_id()).collect();
    assert_eq!(ids, [Some(ok)]);
    // The clear password is nowhere in the log.
    let all = t.log.read_all(0, usize::MAX).unwrap();
    assert!(!all.is_empty());
    assert!(all
        .iter()
        .all(|r| !String::from_utf8_lossy(&r.payload).contains(PASSWORD)));
}
