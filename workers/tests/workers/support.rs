//! Shared helpers of the worker tests: a log in a temporary folder, appending the events
//! the workers follow (mail settings, queued messages, cancels, suppressions, signal
//! settings), reading a message's
//! timeline back, and a real SMTP server (`tests/smtp_sink.py`, aiosmtpd) as a child
//! process.
#![allow(dead_code)] // Each test file uses its own subset.

use std::time::{Duration, Instant};

use chrono::Utc;
use domain::mail_settings::{
    self, MailSettings, MailSettingsCommand, MailSettingsEvent, Relay, SenderProfile, TlsMode,
    MAIL_SETTINGS_STREAM,
};
use domain::message::{
    self, Category, Mailbox, MessageCommand, MessageEvent, MessageQueued, MessageState, Priority,
    MESSAGE_STREAM,
};
use domain::signals::{SignalEvent, SignalSettings, SIGNAL_SETTINGS_STREAM};
use domain::suppression::{
    self, AppliesTo, Reason, Scope, Source, Suppression, SuppressionEvent, GLOBAL_TENANT,
    SUPPRESSION_STREAM,
};
use domain::DomainEvent;
use eventlog::{Actor, EventLog, ExpectedVersion, Metadata, NewEvent, Options, StreamId};
use uuid::Uuid;
use workers::seal::MasterKey;

/// How long a test waits for something that should happen well within it.
pub const WAIT: Duration = Duration::from_secs(10);

pub fn master_key() -> MasterKey {
    MasterKey::from_bytes([42u8; 32])
}

/// A log (and a blob store beside it) in a fresh temporary folder.
pub struct TestLog {
    pub dir: tempfile::TempDir,
    pub log: EventLog,
}

impl TestLog {
    pub fn open() -> TestLog {
        let dir = tempfile::tempdir().expect("temp dir");
        let log =
            EventLog::open(&dir.path().join("log"), Options::new([7u8; 32])).expect("open log");
        TestLog { dir, log }
    }

    pub fn blobs(&self) -> eventlog::BlobStore {
        eventlog::BlobStore::open(&self.dir.path().join("blobs")).expect("open blob store")
    }

    pub fn outbox(&self) -> std::path::PathBuf {
        self.dir.path().join("outbox")
    }
}

pub fn open_log() -> (tempfile::TempDir, EventLog) {
    let t = TestLog::open();
    (t.dir, t.log)
}

pub fn new_event<E: DomainEvent>(e: &E) -> NewEvent {
    NewEvent {
        event_id: Uuid::now_v7(),
        event_type: e.event_type().to_string(),
        schema_version: e.schema_version(),
        payload: e.encode(),
    }
}

pub fn meta() -> Metadata {
    Metadata::new(Actor::System("test".into()), Uuid::now_v7())
}

pub fn settings_stream(tenant: Uuid) -> StreamId {
    StreamId::new(MAIL_SETTINGS_STREAM, tenant.to_string())
}

pub fn message_stream(id: Uuid) -> StreamId {
    StreamId::new(MESSAGE_STREAM, id.to_string())
}

/// The tenant's mail settings as the log has them.
pub fn mail_settings(log: &EventLog, tenant: Uuid) -> MailSettings {
    let mut s = MailSettings::default();
    for rec in log
        .read_stream(tenant, &settings_stream(tenant), 1, usize::MAX)
        .expect("read mail settings")
    {
        let e = MailSettingsEvent::decode(&rec.event_type, rec.schema_version, &rec.payload)
            .expect("decode mail settings event");
        mail_settings::apply(&mut s, &e);
    }
    s
}

/// Decides `cmd` against the current settings and appends the result.
pub async fn mail_settings_command(log: &EventLog, tenant: Uuid, cmd: MailSettingsCommand) {
    let state = mail_settings(log, tenant);
    let events = mail_settings::decide(&state, cmd).expect("mail settings command accepted");
    log.append(
        tenant,
        settings_stream(tenant),
        ExpectedVersion::Any,
        events.iter().map(new_event).collect(),
        meta(),
    )
    .await
    .expect("append mail settings");
}

/// A plain relay on loopback without limits.
pub fn relay(name: &str, port: u16, priority: u32) -> Relay {
    Relay {
        id: Uuid::now_v7(),
        name: name.into(),
        host: "127.0.0.1".into(),
        port,
        tls: TlsMode::None,
        username: None,
        password: None,
        priority,
        max_connections: 4,
        per_minute: None,
        per_hour: None,
        per_day: None,
    }
}

pub async fn put_relay(log: &EventLog, tenant: Uuid, relay: Relay) {
    mail_settings_command(log, tenant, MailSettingsCommand::PutRelay(relay)).await;
}

pub async fn put_sender(log: &EventLog, tenant: Uuid, email: &str) -> Uuid {
    let id = Uuid::now_v7();
    mail_settings_command(
        log,
        tenant,
        MailSettingsCommand::PutSender(SenderProfile {
            id,
            email: email.to_ascii_lowercase(),
            name: None,
            reply_to: None,
            category: Category::Transactional,
        }),
    )
    .await;
    id
}

pub fn mailbox(email: &str) -> Mailbox {
    Mailbox {
        email: email.into(),
        name: None,
    }
}

/// A valid text-only message from news@example.test to `to`; adjust fields as needed.
pub fn message(to: &str, subject: &str) -> MessageQueued {
    MessageQueued {
        message_id: Uuid::now_v7(),
        sender_id: Uuid::now_v7(),
        from: mailbox("news@example.test"),
        reply_to: None,
        to: vec![mailbox(to)],
        cc: Vec::new(),
        bcc: Vec::new(),
        subject: subject.into(),
        html: None,
        text: Some(format!("Body of {subject}")),
        html_blob: None,
        text_blob: None,
        headers: Default::default(),
        tags: Vec::new(),
        metadata: serde_json::Value::Null,
        attachments: Vec::new(),
        priority: Priority::Normal,
        category: Category::Transactional,
        scheduled_at: None,
        idempotency_key: None,
        request_digest: "00".repeat(32),
        queued_at: Utc::now(),
        template: None,
    }
}

/// Queues `m` (through `decide`, so it must be valid); returns its id.
pub async fn queue(log: &EventLog, tenant: Uuid, m: MessageQueued) -> Uuid {
    let id = m.message_id;
    let events = message::decide(
        &MessageState::default(),
        MessageCommand::Queue {
            message: Box::new(m),
            now: Utc::now(),
        },
    )
    .expect("message accepted");
    log.append(
        tenant,
        message_stream(id),
        ExpectedVersion::NoStream,
        events.iter().map(new_event).collect(),
        meta(),
    )
    .await
    .expect("append MessageQueued");
    id
}

/// The message's timeline, decoded.
pub fn message_events(log: &EventLog, tenant: Uuid, id: Uuid) -> Vec<MessageEvent> {
    log.read_stream(tenant, &message_stream(id), 1, usize::MAX)
        .expect("read message stream")
        .iter()
        .map(|r| {
            MessageEvent::decode(&r.event_type, r.schema_version, &r.payload)
                .expect("decode message event")
        })
        .collect()
}

pub fn event_types(events: &[MessageEvent]) -> Vec<&'static str> {
    events.iter().map(|e| e.event_type()).collect()
}

/// `n` events on a stream no worker follows, in one append.
pub async fn append_filler(log: &EventLog, tenant: Uuid, n: usize) {
    let events = (0..n)
        .map(|i| NewEvent {
            event_id: Uuid::now_v7(),
            event_type: "Filler".into(),
            schema_version: 1,
            payload: format!("{{\"i\":{i}}}").into_bytes(),
        })
        .collect();
    log.append(
        tenant,
        StreamId::new("test-filler", Uuid::now_v7().to_string()),
        ExpectedVersion::NoStream,
        events,
        meta(),
    )
    .await
    .expect("append filler");
}

/// Cancels the message (through `decide`).
pub async fn cancel(log: &EventLog, tenant: Uuid, id: Uuid) {
    let mut state = MessageState::default();
    for e in message_events(log, tenant, id) {
        message::apply(&mut state, &e);
    }
    let events = message::decide(
        &state,
        MessageCommand::Cancel {
            reason: Some("test".into()),
            now: Utc::now(),
        },
    )
    .expect("cancel accepted");
    log.append(
        tenant,
        message_stream(id),
        ExpectedVersion::Any,
        events.iter().map(new_event).collect(),
        meta(),
    )
    .await
    .expect("append MessageCancelled");
}

/// Polls until the message's stream holds an event of `event_type`; returns the timeline.
pub async fn wait_for_event(
    log: &EventLog,
    tenant: Uuid,
    id: Uuid,
    event_type: &str,
    timeout: Duration,
) -> Vec<MessageEvent> {
    let deadline = Instant::now() + timeout;
    loop {
        let events = message_events(log, tenant, id);
        if events.iter().any(|e| e.event_type() == event_type) {
            return events;
        }
        if Instant::now() >= deadline {
            panic!(
                "message {id} has no {event_type} within {timeout:?}; its timeline: {:#?}",
                event_types(&events)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `cond` every 20 ms until it holds; panics with `what` after `timeout`.
pub async fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        if Instant::now() >= deadline {
            panic!("not within {timeout:?}: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub use crate::sink::{dead_port, Sink};

/// Appends a suppression entry for `address` (lower-cased, as the API stores it) in
/// `partition`: a tenant's id, or `GLOBAL_TENANT` for the global list.
pub async fn suppress(log: &EventLog, partition: Uuid, address: &str, applies_to: AppliesTo) {
    let scope = if partition == GLOBAL_TENANT {
        Scope::Global
    } else {
        Scope::Tenant
    };
    let entry = Suppression {
        address: address.to_ascii_lowercase(),
        scope,
        reason: Reason::Unsubscribe,
        applies_to,
        source: Source::Api,
        created_by: "test".into(),
        created_at: Utc::now(),
        expires_at: None,
        note: None,
        message_id: None,
    };
    let events = suppression::add(None, entry, Utc::now()).expect("suppression accepted");
    append_suppression(log, partition, &events).await;
}

/// Removes the entry for `address` in `partition` (the test knows what it added).
pub async fn unsuppress(log: &EventLog, partition: Uuid, address: &str) {
    let original = Suppression {
        address: address.to_ascii_lowercase(),
        scope: if partition == GLOBAL_TENANT {
            Scope::Global
        } else {
            Scope::Tenant
        },
        reason: Reason::Unsubscribe,
        applies_to: AppliesTo::All,
        source: Source::Api,
        created_by: "test".into(),
        created_at: Utc::now(),
        expires_at: None,
        note: None,
        message_id: None,
    };
    let events = suppression::remove(
        Some(original),
        "test".into(),
        "asked to receive mail again".into(),
        Utc::now(),
    )
    .expect("removal accepted");
    append_suppression(log, partition, &events).await;
}

async fn append_suppression(log: &EventLog, partition: Uuid, events: &[SuppressionEvent]) {
    log.append(
        partition,
        StreamId::new(SUPPRESSION_STREAM, partition.to_string()),
        ExpectedVersion::Any,
        events.iter().map(new_event).collect(),
        meta(),
    )
    .await
    .expect("append suppression event");
}

/// Sets the tenant's signal settings with plus-address matching on or off.
pub async fn set_plus_addressing(log: &EventLog, tenant: Uuid, on: bool) {
    let event = SignalEvent::SettingsSet(SignalSettings {
        plus_addressing: on,
        ..SignalSettings::default()
    });
    log.append(
        tenant,
        StreamId::new(SIGNAL_SETTINGS_STREAM, tenant.to_string()),
        ExpectedVersion::Any,
        vec![new_event(&event)],
        meta(),
    )
    .await
    .expect("append signal settings");
}
