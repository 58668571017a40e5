//! The dispatcher's side of suppressions and unsubscribe, against a real log and the
//! aiosmtpd sink: recipients suppressed when a message is due are dropped right before its
//! SMTP transaction (all of them: nothing is sent and the message ends suppressed), by
//! category, with plus addressing, globally, and not after a removal; and marketing mail
//! carries one-click unsubscribe headers whose token the API can verify.

use std::time::Duration;

use chrono::Utc;
use domain::message::{
    self, Category, MessageEvent, MessageState, MessageStatus, RecipientsSuppressed,
    DELIVERY_ATTEMPTED, MESSAGE_QUEUED, MESSAGE_SENT, RECIPIENTS_SUPPRESSED,
};
use domain::suppression::{AppliesTo, Reason, Scope, GLOBAL_TENANT};
use eventlog::EventLog;
use uuid::Uuid;
use workers::dispatch::{DispatchConfig, Dispatcher, UnsubscribeLinks};
use workers::seal::UNSUBSCRIBE_KEY_CONTEXT;

use crate::support::*;

fn config(t: &TestLog) -> DispatchConfig {
    let mut c = DispatchConfig::new(t.outbox(), t.blobs(), master_key());
    c.retry_schedule = vec![Duration::from_millis(200)];
    c.jitter = 0.0;
    c.smtp_timeout = Duration::from_secs(5);
    c.concurrency = 8;
    c.hello_name = "suppression-test.localhost".into();
    c
}

async fn tenant_with_sink(log: &EventLog, sink: &Sink) -> Uuid {
    let tenant = Uuid::now_v7();
    put_relay(log, tenant, relay("sink", sink.port, 10)).await;
    tenant
}

fn marketing(to: &str, subject: &str) -> domain::message::MessageQueued {
    let mut m = message(to, subject);
    m.category = Category::Marketing;
    m
}

fn status_of(events: &[MessageEvent]) -> MessageStatus {
    let mut state = MessageState::default();
    for e in events {
        message::apply(&mut state, e);
    }
    state.status
}

fn suppression_of(events: &[MessageEvent]) -> &RecipientsSuppressed {
    events
        .iter()
        .find_map(|e| match e {
            MessageEvent::Suppressed(s) => Some(s),
            _ => None,
        })
        .expect("a RecipientsSuppressed")
}

/// The message ids the sink received, in order.
fn delivered_ids(sink: &Sink) -> Vec<Option<Uuid>> {
    sink.delivered().iter().map(|m| m.message_id()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recipient_suppressed_after_queuing_gets_nothing_and_the_message_ends_suppressed() {
    let t = TestLog::open();
    let sink = Sink::start();
    let tenant = tenant_with_sink(&t.log, &sink).await;
    let scheduled_at = Utc::now() + chrono::TimeDelta::milliseconds(1500);
    let mut m = message("race@example.test", "Scheduled");
    m.scheduled_at = Some(scheduled_at);
    let id = queue(&t.log, tenant, m).await;
    let d = Dispatcher::start(t.log.clone(), config(&t));
    wait_until("caught up", WAIT, || d.status().caught_up).await;

    // The message waits in the dispatcher's queue; now its only recipient unsubscribes.
    suppress(&t.log, tenant, "race@example.test", AppliesTo::All).await;
    assert!(
        Utc::now() < scheduled_at,
        "the suppression must land before the message is due"
    );
    let control = queue(&t.log, tenant, message("other@example.test", "Control")).await;
    let events = wait_for_event(&t.log, tenant, id, RECIPIENTS_SUPPRESSED, WAIT).await;
    wait_for_event(&t.log, tenant, control, MESSAGE_SENT, WAIT).await;
    // Several retry periods: nothing more may happen to it.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let status = d.status();
    d.stop().await;

    assert_eq!(delivered_ids(&sink), [Some(control)]);
    let events_now = message_events(&t.log, tenant, id);
    assert_eq!(
        event_types(&events_now),
        [MESSAGE_QUEUED, RECIPIENTS_SUPPRESSED]
    );
    assert_eq!(status_of(&events_now), MessageStatus::Suppressed);
    let s = suppression_of(&events);
    assert!(s.all);
    assert!(s.at >= scheduled_at, "checked when due, not when queued");
    assert_eq!(s.recipients.len(), 1);
    assert_eq!(
        (
            s.recipients[0].address.as_str(),
            s.recipients[0].reason,
            s.recipients[0].scope
        ),
        ("race@example.test", Reason::Unsubscribe, Scope::Tenant)
    );
    assert_eq!((status.suppressed, status.sent, status.pending), (1, 1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_suppressed_recipient_is_left_out_and_the_rest_is_sent() {
    let t = TestLog::open();
    let sink = Sink::start();
    let tenant = tenant_with_sink(&t.log, &sink).await;
    suppress(&t.log, tenant, "gone@example.test", AppliesTo::All).await;
    let mut m = message("keep@example.test", "Partial");
    m.cc = vec![mailbox("Gone@Example.test")];
    let id = queue(&t.log, tenant, m).await;
    let d = Dispatcher::start(t.log.clone(), config(&t));
    let events = wait_for_event(&t.log, tenant, id, MESSAGE_SENT, WAIT).await;
    let got = sink.arrived(1, WAIT).await;
    d.stop().await;

    assert_eq!(got.len(), 1);
    assert_eq!(got[0].rcpt_tos, ["keep@example.test"]);
    assert_eq!(
        event_types(&events),
        [
            MESSAGE_QUEUED,
            RECIPIENTS_SUPPRESSED,
            DELIVERY_ATTEMPTED,
            MESSAGE_SENT
        ]
    );
    let s = suppression_of(&events);
    assert!(!s.all);
    let named: Vec<&str> = s.recipients.iter().map(|r| r.address.as_str()).collect();
    assert_eq!(named, ["Gone@Example.test"]);
    assert_eq!(status_of(&events), MessageStatus::Sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_marketing_only_entry_does_not_stop_transactional_mail() {
    let t = TestLog::open();
    let sink = Sink::start();
    let tenant = tenant_with_sink(&t.log, &sink).await;
    suppress(&t.log, tenant, "reader@example.test", AppliesTo::Marketing).await;
    let receipt = queue(&t.log, tenant, message("reader@example.test", "Receipt")).await;
    let newsletter = queue(&t.log, tenant, marketing("reader@example.test", "News")).await;
    let d = Dispatcher::start(t.log.clone(), config(&t));
    let sent = wait_for_event(&t.log, tenant, receipt, MESSAGE_SENT, WAIT).await;
    let stopped = wait_for_event(&t.log, tenant, newsletter, RECIPIENTS_SUPPRESSED, WAIT).await;
    d.stop().await;

    assert_eq!(
        event_types(&sent),
        [MESSAGE_QUEUED, DELIVERY_ATTEMPTED, MESSAGE_SENT]
    );
    assert_eq!(status_of(&stopped), MessageStatus::Suppressed);
    assert_eq!(delivered_ids(&sink), [Some(receipt)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plus_addresses_match_only_once_the_tenant_turns_plus_addressing_on() {
    let t = TestLog::open();
    let sink = Sink::start();
    let tenant = tenant_with_sink(&t.log, &sink).await;
    suppress(&t.log, tenant, "a@example.com", AppliesTo::All).await;
    let d = Dispatcher::start(t.log.clone(), config(&t));
    let before = queue(&t.log, tenant, message("A+x@Example.com", "Before")).await;
    wait_for_event(&t.log, tenant, before, MESSAGE_SENT, WAIT).await;

    set_plus_addressing(&t.log, tenant, true).await;
    let after = queue(&t.log, tenant, message("A+x@Example.com", "After")).await;
    let events = wait_for_event(&t.log, tenant, after, RECIPIENTS_SUPPRESSED, WAIT).await;
    // Exactly as written: plus-addressing off again, the tag counts again.
    set_plus_addressing(&t.log, tenant, false).await;
    let off_again = queue(&t.log, tenant, message("A+x@Example.com", "Off again")).await;
    wait_for_event(&t.log, tenant, off_again, MESSAGE_SENT, WAIT).await;
    d.stop().await;

    assert_eq!(status_of(&events), MessageStatus::Suppressed);
    assert_eq!(
        suppression_of(&events).recipients[0].address,
        "A+x@Example.com"
    );
    assert_eq!(delivered_ids(&sink), [Some(before), Some(off_again)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_global_entry_binds_every_tenant_and_a_tenants_entry_only_itself() {
    let t = TestLog::open();
    let sink = Sink::start();
    let tenant = tenant_with_sink(&t.log, &sink).await;
    let other = Uuid::now_v7();
    suppress(
        &t.log,
        GLOBAL_TENANT,
        "everyone-knows@example.test",
        AppliesTo::All,
    )
    .await;
    suppress(&t.log, other, "only-other@example.test", AppliesTo::All).await;
    let global = queue(
        &t.log,
        tenant,
        message("Everyone-Knows@example.test", "Global"),
    )
    .await;
    let not_ours = queue(
        &t.log,
        tenant,
        message("only-other@example.test", "Other tenant's entry"),
    )
    .await;
    let d = Dispatcher::start(t.log.clone(), config(&t));
    let events = wait_for_event(&t.log, tenant, global, RECIPIENTS_SUPPRESSED, WAIT).await;
    wait_for_event(&t.log, tenant, not_ours, MESSAGE_SENT, WAIT).await;
    d.stop().await;

    let s = suppression_of(&events);
    assert!(s.all);
    assert_eq!(s.recipients[0].scope, Scope::Global);
    assert_eq!(delivered_ids(&sink), [Some(not_ours)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_entry_no_longer_blocks() {
    let t = TestLog::open();
    let sink = Sink::start();
    let tenant = tenant_with_sink(&t.log, &sink).await;
    suppress(&t.log, tenant, "back@example.test", AppliesTo::All).await;
    let d = Dispatcher::start(t.log.clone(), config(&t));
    let blocked = queue(&t.log, tenant, message("back@example.test", "Blocked")).await;
    wait_for_event(&t.log, tenant, blocked, RECIPIENTS_SUPPRESSED, WAIT).await;

    unsuppress(&t.log, tenant, "back@example.test").await;
    let welcome = queue(&t.log, tenant, message("back@example.test", "Welcome back")).await;
    let events = wait_for_event(&t.log, tenant, welcome, MESSAGE_SENT, WAIT).await;
    d.stop().await;

    assert_eq!(
        event_types(&events),
        [MESSAGE_QUEUED, DELIVERY_ATTEMPTED, MESSAGE_SENT]
    );
    assert_eq!(delivered_ids(&sink), [Some(welcome)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_recipient_suppressed_writes_no_file_outbox() {
    let t = TestLog::open();
    let tenant = Uuid::now_v7();
    put_sender(&t.log, tenant, "news@example.test").await;
    suppress(&t.log, tenant, "nobody@example.test", AppliesTo::All).await;
    let id = queue(
        &t.log,
        tenant,
        message("nobody@example.test", "Not written"),
    )
    .await;
    let d = Dispatcher::start(t.log.clone(), config(&t));
    let events = wait_for_event(&t.log, tenant, id, RECIPIENTS_SUPPRESSED, WAIT).await;
    d.stop().await;
    assert_eq!(status_of(&events), MessageStatus::Suppressed);
    assert!(!t
        .outbox()
        .join(tenant.to_string())
        .join(format!("{id}.eml"))
        .exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marketing_mail_carries_one_click_unsubscribe_and_transactional_mail_does_not() {
    let t = TestLog::open();
    let sink = Sink::start();
    let tenant = tenant_with_sink(&t.log, &sink).await;
    let key = master_key().derive(UNSUBSCRIBE_KEY_CONTEXT);
    let mut c = config(&t);
    c.unsubscribe = Some(UnsubscribeLinks {
        base_url: "http://127.0.0.1:8080".into(),
        mailto_domain: Some("unsub.example.test".into()),
        key,
    });
    let mut news = marketing("Ada@Example.test", "Newsletter");
    news.cc = vec![mailbox("grace@example.test")];
    let news = queue(&t.log, tenant, news).await;
    let receipt = queue(&t.log, tenant, message("ada@example.test", "Receipt")).await;
    let d = Dispatcher::start(t.log.clone(), c);
    let got = sink.arrived(2, WAIT).await;
    d.stop().await;

    let by_id = |id: Uuid| {
        got.iter()
            .find(|m| m.message_id() == Some(id))
            .expect("the message arrived")
    };
    let n = by_id(news);
    let value = n.header("List-Unsubscribe").expect("List-Unsubscribe");
    let (https, mailto) = value
        .split_once(", ")
        .unwrap_or_else(|| panic!("two URIs: {value}"));
    let token = https
        .strip_prefix("<http://127.0.0.1:8080/unsubscribe/")
        .and_then(|v| v.strip_suffix('>'))
        .unwrap_or_else(|| panic!("an HTTP URI first: {value}"));
    assert_eq!(
        mailto,
        format!("<mailto:unsubscribe+{token}@unsub.example.test>")
    );
    let claim = inbound::unsubscribe::verify_token(&key, token).expect("a valid token");
    assert_eq!(claim.tenant, tenant.to_string());
    assert_eq!(claim.message, news.to_string());
    assert_eq!(claim.address, "ada@example.test");
    // Signed with the derived key, not with anything else.
    assert!(inbound::unsubscribe::verify_token(&[42u8; 32], token).is_err());
    assert_eq!(
        n.header("List-Unsubscribe-Post").as_deref(),
        Some("List-Unsubscribe=One-Click")
    );

    let r = by_id(receipt);
    assert_eq!(r.header("List-Unsubscribe"), None);
    assert_eq!(r.header("List-Unsubscribe-Post"), None);
}
