//! Shared helpers of the worker tests: a log in a temporary folder, appending the events
//! the workers follow (mail settings, queued messages, cancels), reading a message's
//! timeline back, and a real SMTP server (`tests/smtp_sink.py`, aiosmtpd) as a child
//! process.
#![allow(dead_code)] // Each test file uses its own subset.

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use domain::mail_settings::{
    self, MailSettings, MailSettingsCommand, MailSettingsEvent, Relay, SenderProfile, TlsMode,
    MAIL_SETTINGS_STREAM,
};
use domain::message::{
    self, Category, Mailbox, MessageCommand, MessageEvent, MessageQueued, MessageState, Priority,
    MESSAGE_STREAM,
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

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/smtp_sink.py");
/// The sink's stderr goes here (a dot file, so never taken for a message).
const STDERR_LOG: &str = ".sink-stderr.log";

/// A running `smtp_sink.py` on a free loopback port, killed on drop.
///
/// The recipient's local part chooses the answer to RCPT: `tempfail<N>…` gets 451 for its
/// first N RCPTs (N=1 without digits), `reject…` gets 550, anything else 250.
pub struct Sink {
    pub port: u16,
    /// Where the sink writes `<seq>.json` and `<seq>.eml` for each accepted message.
    pub dir: tempfile::TempDir,
    child: Child,
}

/// One message the sink accepted.
#[derive(Debug, Clone)]
pub struct Delivered {
    pub mail_from: String,
    pub rcpt_tos: Vec<String>,
    /// Unix seconds, by the sink's clock (the same machine's).
    pub received_at: f64,
    /// The message bytes exactly as received after DATA.
    pub raw: Vec<u8>,
}

impl Sink {
    /// Starts the sink and waits (up to 20 s) for it to report its port.
    pub fn start() -> Sink {
        let dir = tempfile::tempdir().expect("sink temp dir");
        let stderr =
            std::fs::File::create(dir.path().join(STDERR_LOG)).expect("sink stderr log file");
        let mut child = Command::new("python3")
            .arg(SCRIPT)
            .arg("--dir")
            .arg(dir.path())
            .args(["--host", "127.0.0.1", "--port", "0", "--exit-on-stdin-eof"])
            // Never written to: when the test process dies, the pipe closes and the sink
            // exits.
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .spawn()
            .expect("spawn python3 tests/smtp_sink.py (is python3 installed?)");
        let stdout = child.stdout.take().expect("sink stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let _ = tx.send(reader.read_line(&mut line).map(|_| line));
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
        });
        let port = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(Ok(line)) => line
                .trim()
                .strip_prefix("PORT ")
                .and_then(|p| p.parse::<u16>().ok())
                .ok_or_else(|| format!("unexpected first line {line:?}")),
            Ok(Err(e)) => Err(format!("reading its stdout failed: {e}")),
            Err(_) => Err("no `PORT n` line within 20 s".to_string()),
        };
        match port {
            Ok(port) => Sink { port, dir, child },
            Err(why) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the SMTP sink did not start: {why}; its stderr:\n{}\n\
                     (it needs aiosmtpd: python3 -m pip install aiosmtpd==1.4.6)",
                    stderr_log(dir.path())
                );
            }
        }
    }

    /// Every message stored so far, in the order the sink accepted them. A message counts
    /// once its `.eml` exists; the sink renames its `.json` into place before that.
    pub fn delivered(&self) -> Vec<Delivered> {
        let dir = self.dir.path();
        let mut seqs: Vec<(u64, String)> = std::fs::read_dir(dir)
            .expect("read sink dir")
            .filter_map(|entry| {
                let name = entry.ok()?.file_name().into_string().ok()?;
                let stem = name.strip_suffix(".eml")?;
                if stem.is_empty() || !stem.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                Some((stem.parse().ok()?, stem.to_string()))
            })
            .collect();
        seqs.sort();
        seqs.into_iter()
            .map(|(_, stem)| {
                let meta_text = std::fs::read_to_string(dir.join(format!("{stem}.json")))
                    .expect("read the sink's .json");
                let meta: serde_json::Value =
                    serde_json::from_str(&meta_text).expect("parse the sink's .json");
                let raw = std::fs::read(dir.join(format!("{stem}.eml"))).expect("read .eml");
                Delivered {
                    mail_from: meta["mail_from"].as_str().unwrap_or_default().to_string(),
                    rcpt_tos: meta["rcpt_tos"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(|v| v.as_str().map(str::to_string))
                                .collect()
                        })
                        .unwrap_or_default(),
                    received_at: meta["received_at"].as_f64().unwrap_or_default(),
                    raw,
                }
            })
            .collect()
    }

    /// Waits until at least `n` messages were stored; panics after `timeout`.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Delivered> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.delivered();
            if got.len() >= n {
                return got;
            }
            if Instant::now() >= deadline {
                panic!(
                    "the SMTP sink got {} message(s) within {timeout:?}, expected at least {n}; \
                     its stderr:\n{}",
                    got.len(),
                    stderr_log(self.dir.path())
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Delivered {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.raw).into_owned()
    }

    pub fn parsed(&self) -> mail_parser::Message<'_> {
        mail_parser::MessageParser::default()
            .parse(&self.raw)
            .expect("the delivered bytes parse as a message")
    }

    /// The first header called `name` in the top-level header block, as sent (trimmed).
    pub fn header(&self, name: &str) -> Option<String> {
        self.parsed()
            .headers_raw()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
    }

    /// The X-Postledger-Message-Id header.
    pub fn message_id(&self) -> Option<Uuid> {
        self.header("X-Postledger-Message-Id")
            .and_then(|v| Uuid::parse_str(&v).ok())
    }

    pub fn received_at(&self) -> DateTime<Utc> {
        DateTime::from_timestamp_micros((self.received_at * 1e6) as i64).expect("a valid time")
    }
}

/// A loopback port on which nothing listens (bound once, then released).
pub fn dead_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

fn stderr_log(dir: &Path) -> String {
    let mut text = String::new();
    match std::fs::File::open(dir.join(STDERR_LOG)) {
        Ok(mut f) => {
            let _ = f.read_to_string(&mut text);
        }
        Err(e) => text = format!("(no stderr log: {e})"),
    }
    text
}
