//! Delivery reports against a real log on disk and a real HTTP receiver on loopback: what
//! is POSTed, how it is signed, what is recorded, retries, giving up, restarts and tenant
//! isolation.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use domain::delivery_report::{CallbackAttempted, DeliveryReportEvent, DELIVERY_REPORT_STREAM};
use domain::mail_settings::{DeliveryCallback, MailSettingsEvent, MAIL_SETTINGS_STREAM};
use domain::message::{
    self, Category, DispatchResult, Mailbox, MessageCommand, MessageDeferred, MessageEvent,
    MessageFailed, MessageQueued, MessageSent, MessageState, Priority, RecipientsSuppressed,
    SuppressedRecipient, MESSAGE_STREAM,
};
use domain::suppression::{Reason, Scope};
use domain::DomainEvent;
use eventlog::{
    Actor, EventLog, ExpectedVersion, Metadata, NewEvent, Options, RecordedEvent, StreamId,
};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use uuid::Uuid;
use workers::reports::{signature, DeliveryReports, ReportConfig};
use workers::seal::{callback_secret_context, MasterKey};

const SECRET: &str = "whsec_reports_test_5e5f7c0a";
const WAIT: Duration = Duration::from_secs(10);

fn master_key() -> MasterKey {
    MasterKey::from_bytes([42u8; 32])
}

fn config(schedule_ms: &[u64]) -> ReportConfig {
    let mut c = ReportConfig::new(master_key());
    c.retry_schedule = schedule_ms
        .iter()
        .copied()
        .map(Duration::from_millis)
        .collect();
    c.timeout = Duration::from_secs(2);
    c.concurrency = 4;
    c
}

fn open_log() -> (tempfile::TempDir, EventLog) {
    let dir = tempfile::tempdir().unwrap();
    let log = EventLog::open(dir.path(), Options::new([7u8; 32])).unwrap();
    (dir, log)
}

fn meta(correlation_id: Uuid) -> Metadata {
    Metadata::new(Actor::System("test".into()), correlation_id)
}

fn new_event<E: DomainEvent>(e: &E) -> NewEvent {
    NewEvent {
        event_id: Uuid::now_v7(),
        event_type: e.event_type().to_string(),
        schema_version: e.schema_version(),
        payload: e.encode(),
    }
}

async fn set_callback(log: &EventLog, tenant: Uuid, url: &str) {
    let sealed = master_key()
        .seal(SECRET.as_bytes(), &callback_secret_context(tenant))
        .unwrap();
    let event = MailSettingsEvent::CallbackSet(DeliveryCallback {
        url: url.to_string(),
        secret: sealed,
    });
    log.append(
        tenant,
        StreamId::new(MAIL_SETTINGS_STREAM, tenant.to_string()),
        ExpectedVersion::Any,
        vec![new_event(&event)],
        meta(Uuid::now_v7()),
    )
    .await
    .unwrap();
}

fn message_stream(id: Uuid) -> StreamId {
    StreamId::new(MESSAGE_STREAM, id.to_string())
}

/// Queues a message with these tags and metadata; returns its id.
async fn queue(log: &EventLog, tenant: Uuid, tags: &[&str], metadata: Value) -> Uuid {
    let id = Uuid::now_v7();
    let now = Utc::now();
    let queued = MessageQueued {
        message_id: id,
        sender_id: Uuid::now_v7(),
        from: Mailbox {
            email: "news@example.test".into(),
            name: None,
        },
        reply_to: None,
        to: vec![Mailbox {
            email: "alice@example.test".into(),
            name: Some("Alice".into()),
        }],
        cc: Vec::new(),
        bcc: Vec::new(),
        subject: "Hello".into(),
        html: None,
        text: Some("Hi".into()),
        html_blob: None,
        text_blob: None,
        headers: Default::default(),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        metadata,
        attachments: Vec::new(),
        priority: Priority::Normal,
        category: Category::Transactional,
        scheduled_at: None,
        idempotency_key: None,
        request_digest: "00".repeat(32),
        queued_at: now,
        template: None,
    };
    let events = message::decide(
        &MessageState::default(),
        MessageCommand::Queue {
            message: Box::new(queued),
            now,
        },
    )
    .unwrap();
    log.append(
        tenant,
        message_stream(id),
        ExpectedVersion::NoStream,
        events.iter().map(new_event).collect(),
        meta(Uuid::now_v7()),
    )
    .await
    .unwrap();
    id
}

/// The event that ends a dispatch round or cancels a message, as recorded.
async fn conclude(log: &EventLog, tenant: Uuid, id: Uuid, cmd: MessageCommand) -> RecordedEvent {
    let stream = message_stream(id);
    let history = log.read_stream(tenant, &stream, 1, 1000).unwrap();
    let mut state = MessageState::default();
    for rec in &history {
        let e = MessageEvent::decode(&rec.event_type, rec.schema_version, &rec.payload).unwrap();
        message::apply(&mut state, &e);
    }
    let events = message::decide(&state, cmd).unwrap();
    let version = history.last().unwrap().version;
    let correlation = Uuid::now_v7();
    log.append(
        tenant,
        stream.clone(),
        ExpectedVersion::Exact(version),
        events.iter().map(new_event).collect(),
        meta(correlation),
    )
    .await
    .unwrap();
    log.read_stream(tenant, &stream, 1, 1000)
        .unwrap()
        .pop()
        .unwrap()
}

fn sent() -> MessageCommand {
    MessageCommand::RecordDispatch {
        suppressed: None,
        attempts: Vec::new(),
        result: DispatchResult::Sent(MessageSent {
            relay_id: None,
            relay: "mx.example.test".into(),
            reply: "250 2.0.0 Ok: queued as 4F2".into(),
            at: Utc::now(),
        }),
    }
}

/// A queued message that was then sent; returns the message id and the `MessageSent`.
async fn send_one(log: &EventLog, tenant: Uuid) -> (Uuid, RecordedEvent) {
    let id = queue(log, tenant, &["t"], json!({})).await;
    let rec = conclude(log, tenant, id, sent()).await;
    (id, rec)
}

fn attempts(
    log: &EventLog,
    tenant: Uuid,
    message: Uuid,
) -> Vec<(RecordedEvent, CallbackAttempted)> {
    log.read_stream(
        tenant,
        &StreamId::new(DELIVERY_REPORT_STREAM, message.to_string()),
        1,
        1000,
    )
    .unwrap()
    .into_iter()
    .map(|rec| {
        let DeliveryReportEvent::CallbackAttempted(a) =
            DeliveryReportEvent::decode(&rec.event_type, rec.schema_version, &rec.payload).unwrap();
        (rec, a)
    })
    .collect()
}

/// Polls `f` until it gives a value; fails the test after [`WAIT`].
async fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn wait_attempts(
    log: &EventLog,
    tenant: Uuid,
    message: Uuid,
    n: usize,
) -> Vec<(RecordedEvent, CallbackAttempted)> {
    eventually(&format!("{n} recorded tries"), || {
        let a = attempts(log, tenant, message);
        (a.len() >= n).then_some(a)
    })
    .await
}

#[derive(Clone, Debug)]
struct Received {
    method: String,
    path: String,
    /// Lower-cased names.
    headers: HashMap<String, String>,
    body: Vec<u8>,
    at: Instant,
}

impl Received {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    fn event_id(&self) -> String {
        self.headers["postledger-event-id"].clone()
    }
}

/// A minimal HTTP/1.1 server: answers request n with `script[n]` (the last entry once the
/// script runs out) and records every request.
struct Receiver {
    url: String,
    requests: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    async fn start(script: &[u16]) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://{}/hooks/postledger?src=test",
            listener.local_addr().unwrap()
        );
        let requests = Arc::new(Mutex::new(Vec::new()));
        let script = script.to_vec();
        let recorded = requests.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let recorded = recorded.clone();
                let script = script.clone();
                tokio::spawn(async move {
                    let _ = serve(stream, &recorded, &script).await;
                });
            }
        });
        Receiver {
            url,
            requests,
            task,
        }
    }

    fn requests(&self) -> Vec<Received> {
        self.requests.lock().unwrap().clone()
    }

    async fn wait_requests(&self, n: usize) -> Vec<Received> {
        eventually(&format!("{n} requests"), || {
            let r = self.requests();
            (r.len() >= n).then_some(r)
        })
        .await
    }
}

async fn serve(
    stream: tokio::net::TcpStream,
    recorded: &Mutex<Vec<Received>>,
    script: &[u16],
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).await?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or_default().to_string();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).await? == 0 {
            return Ok(());
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((name, value)) = h.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
        }
    }
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).await?;
    let status = {
        let mut r = recorded.lock().unwrap();
        let status = script
            .get(r.len())
            .or(script.last())
            .copied()
            .unwrap_or(200);
        r.push(Received {
            method,
            path,
            headers,
            body,
            at: Instant::now(),
        });
        status
    };
    let mut stream = reader.into_inner();
    stream
        .write_all(
            format!("HTTP/1.1 {status} Scripted\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await?;
    stream.shutdown().await
}

fn hmac_hex(secret: &[u8], message: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
    mac.update(message);
    hex::encode(mac.finalize().into_bytes())
}

#[tokio::test]
async fn a_sent_message_is_reported_signed_and_recorded() {
    let (_dir, log) = open_log();
    let tenant = Uuid::now_v7();
    let receiver = Receiver::start(&[200]).await;
    set_callback(&log, tenant, &receiver.url).await;
    let id = queue(
        &log,
        tenant,
        &["welcome", "beta"],
        json!({"user": 42, "plan": "pro"}),
    )
    .await;
    let reports = DeliveryReports::start(log.clone(), config(&[100]));
    let reported = conclude(&log, tenant, id, sent()).await;

    let requests = receiver.wait_requests(1).await;
    let r = &requests[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, "/hooks/postledger?src=test");
    assert_eq!(r.headers["content-type"], "application/json");
    assert_eq!(r.headers["user-agent"], "Postledger");
    assert_eq!(r.event_id(), reported.event_id.to_string());
    let timestamp: i64 = r.headers["postledger-timestamp"].parse().unwrap();
    assert!((Utc::now().timestamp() - timestamp).abs() < 60);
    let mut signed = format!("{timestamp}.").into_bytes();
    signed.extend_from_slice(&r.body);
    let expected = format!("v1={}", hmac_hex(SECRET.as_bytes(), &signed));
    assert_eq!(r.headers["postledger-signature"], expected);
    assert_eq!(signature(SECRET.as_bytes(), timestamp, &r.body), expected);
    assert_ne!(signature(b"whsec_other", timestamp, &r.body), expected);

    let body = r.json();
    assert_eq!(body["id"], reported.event_id.to_string());
    assert_eq!(body["type"], "message.sent");
    assert_eq!(body["message_id"], id.to_string());
    assert_eq!(body["tags"], json!(["welcome", "beta"]));
    assert_eq!(body["metadata"], json!({"user": 42, "plan": "pro"}));
    let occurred: DateTime<Utc> = body["occurred_at"].as_str().unwrap().parse().unwrap();
    assert_eq!(occurred, reported.recorded_at());
    assert_eq!(body["details"]["relay"], "mx.example.test");
    assert_eq!(body["details"]["reply"], "250 2.0.0 Ok: queued as 4F2");
    assert!(
        !String::from_utf8_lossy(&r.body).contains("alice@example.test"),
        "a report never carries the recipient"
    );

    let tries = wait_attempts(&log, tenant, id, 1).await;
    let (rec, a) = &tries[0];
    assert_eq!(a.report_of, reported.event_id);
    assert_eq!(a.report, "sent");
    assert_eq!(a.url, receiver.url);
    assert_eq!(a.attempt, 1);
    assert_eq!(a.status, Some(200));
    assert!(a.delivered && !a.gave_up && a.error.is_none());
    assert_eq!(rec.actor, Actor::System("delivery-reports".into()));
    assert_eq!(rec.correlation_id, reported.correlation_id);
    assert_eq!(rec.causation_id, Some(reported.event_id));
    assert!(!String::from_utf8_lossy(&rec.payload).contains(SECRET));

    let status = eventually("the status to show the delivery", || {
        let s = reports.status();
        (s.delivered == 1 && s.pending == 0).then_some(s)
    })
    .await;
    assert!(status.caught_up);
    assert_eq!(status.failed_tries, 0);
    reports.stop().await;
    assert_eq!(receiver.requests().len(), 1);
}

#[tokio::test]
async fn a_failed_try_is_retried_after_the_delay() {
    let (_dir, log) = open_log();
    let tenant = Uuid::now_v7();
    let receiver = Receiver::start(&[500, 200]).await;
    set_callback(&log, tenant, &receiver.url).await;
    let reports = DeliveryReports::start(log.clone(), config(&[150, 150]));
    let (id, reported) = send_one(&log, tenant).await;

    let tries = wait_attempts(&log, tenant, id, 2).await;
    assert_eq!(tries.len(), 2);
    let (first, second) = (&tries[0].1, &tries[1].1);
    assert_eq!((first.attempt, first.status), (1, Some(500)));
    assert!(!first.delivered && !first.gave_up);
    assert_eq!((second.attempt, second.status), (2, Some(200)));
    assert!(second.delivered && !second.gave_up);
    assert!(second.at - first.at >= chrono::TimeDelta::milliseconds(150));

    let requests = receiver.requests();
    assert_eq!(requests.len(), 2);
    assert!(requests[1].at - requests[0].at >= Duration::from_millis(140));
    for r in &requests {
        assert_eq!(r.event_id(), reported.event_id.to_string());
    }
    assert_eq!(requests[0].body, requests[1].body);
    // The try is recorded before the worker takes in its outcome.
    eventually("the status to show both tries", || {
        let s = reports.status();
        ((s.delivered, s.failed_tries, s.pending) == (1, 1, 0)).then_some(())
    })
    .await;
    reports.stop().await;
}

#[tokio::test]
async fn the_last_try_of_the_schedule_gives_up() {
    let (_dir, log) = open_log();
    let tenant = Uuid::now_v7();
    let receiver = Receiver::start(&[500]).await;
    set_callback(&log, tenant, &receiver.url).await;
    let reports = DeliveryReports::start(log.clone(), config(&[50, 50]));
    let (id, _) = send_one(&log, tenant).await;

    let tries = wait_attempts(&log, tenant, id, 3).await;
    let summary: Vec<_> = tries
        .iter()
        .map(|(_, a)| (a.attempt, a.status, a.delivered, a.gave_up))
        .collect();
    assert_eq!(
        summary,
        [
            (1, Some(500), false, false),
            (2, Some(500), false, false),
            (3, Some(500), false, true)
        ]
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(receiver.requests().len(), 3);
    assert_eq!(attempts(&log, tenant, id).len(), 3);
    let s = reports.status();
    assert_eq!((s.delivered, s.failed_tries, s.pending), (0, 3, 0));
    reports.stop().await;
}

#[tokio::test]
async fn an_unreachable_receiver_is_a_failed_try_with_the_error() {
    let (_dir, log) = open_log();
    let tenant = Uuid::now_v7();
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", closed.local_addr().unwrap());
    drop(closed);
    set_callback(&log, tenant, &url).await;
    // An empty schedule: the first try is the last.
    let reports = DeliveryReports::start(log.clone(), config(&[]));
    let (id, _) = send_one(&log, tenant).await;

    let tries = wait_attempts(&log, tenant, id, 1).await;
    let a = &tries[0].1;
    assert_eq!(a.status, None);
    assert!(!a.delivered && a.gave_up);
    let error = a.error.as_deref().unwrap();
    assert!(error.starts_with("could not connect"), "{error}");
    assert!(!error.contains(&url), "{error}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(attempts(&log, tenant, id).len(), 1);
    reports.stop().await;
}

#[tokio::test]
async fn a_restart_neither_repeats_a_delivered_report_nor_forgets_a_pending_one() {
    let (_dir, log) = open_log();
    let tenant = Uuid::now_v7();
    // Delivered, then the first try of the second report fails, then its retry succeeds.
    let receiver = Receiver::start(&[200, 500, 200]).await;
    set_callback(&log, tenant, &receiver.url).await;

    // A long delay, so that the first worker does not retry before it is stopped.
    let first = DeliveryReports::start(log.clone(), config(&[60_000]));
    let (delivered_id, delivered) = send_one(&log, tenant).await;
    wait_attempts(&log, tenant, delivered_id, 1).await;
    let (pending_id, pending) = send_one(&log, tenant).await;
    let tries = wait_attempts(&log, tenant, pending_id, 1).await;
    assert_eq!(tries[0].1.status, Some(500));
    eventually("the first worker to see the failed try", || {
        (first.status().failed_tries == 1).then_some(())
    })
    .await;
    assert_eq!(first.status().pending, 1);
    first.stop().await;
    assert_eq!(receiver.requests().len(), 2);

    let second = DeliveryReports::start(log.clone(), config(&[300]));
    let tries = wait_attempts(&log, tenant, pending_id, 2).await;
    assert_eq!((tries[1].1.attempt, tries[1].1.status), (2, Some(200)));
    assert!(tries[1].1.delivered);
    // The retry waited for its delay, counted from the recorded try, across the restart.
    assert!(tries[1].1.at - tries[0].1.at >= chrono::TimeDelta::milliseconds(300));
    tokio::time::sleep(Duration::from_millis(300)).await;

    let ids: Vec<String> = receiver.requests().iter().map(Received::event_id).collect();
    assert_eq!(
        ids,
        [
            delivered.event_id.to_string(),
            pending.event_id.to_string(),
            pending.event_id.to_string()
        ]
    );
    assert_eq!(attempts(&log, tenant, delivered_id).len(), 1);
    let s = second.status();
    assert!(s.caught_up);
    assert_eq!((s.delivered, s.failed_tries, s.pending), (1, 0, 0));
    second.stop().await;
}

#[tokio::test]
async fn reports_go_only_to_the_reporting_tenants_callback() {
    let (_dir, log) = open_log();
    let (a, b, late, none) = (
        Uuid::now_v7(),
        Uuid::now_v7(),
        Uuid::now_v7(),
        Uuid::now_v7(),
    );
    let (ra, rb, rlate) = (
        Receiver::start(&[200]).await,
        Receiver::start(&[200]).await,
        Receiver::start(&[200]).await,
    );
    set_callback(&log, a, &ra.url).await;
    set_callback(&log, b, &rb.url).await;
    // Sent before its tenant had a callback: never owed.
    let (early_id, _) = send_one(&log, late).await;
    set_callback(&log, late, &rlate.url).await;
    let reports = DeliveryReports::start(log.clone(), config(&[100]));

    let (none_id, _) = send_one(&log, none).await;
    let (a_id, _) = send_one(&log, a).await;
    let (b_id, _) = send_one(&log, b).await;
    let (late_id, _) = send_one(&log, late).await;

    let got_a = ra.wait_requests(1).await;
    let got_b = rb.wait_requests(1).await;
    let got_late = rlate.wait_requests(1).await;
    wait_attempts(&log, a, a_id, 1).await;
    wait_attempts(&log, b, b_id, 1).await;
    wait_attempts(&log, late, late_id, 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let message_ids = |r: &Receiver| -> Vec<String> {
        r.requests()
            .iter()
            .map(|q| q.json()["message_id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(message_ids(&ra), [a_id.to_string()]);
    assert_eq!(message_ids(&rb), [b_id.to_string()]);
    assert_eq!(message_ids(&rlate), [late_id.to_string()]);
    assert_eq!(got_a.len() + got_b.len() + got_late.len(), 3);
    assert!(attempts(&log, none, none_id).is_empty());
    assert!(attempts(&log, late, early_id).is_empty());
    // The same message id under another tenant's streams does not exist either.
    assert!(attempts(&log, b, a_id).is_empty() && attempts(&log, a, b_id).is_empty());
    assert_eq!(reports.status().delivered, 3);
    reports.stop().await;
}

#[tokio::test]
async fn failed_cancelled_and_deferred_messages_are_reported_after_catching_up() {
    let (_dir, log) = open_log();
    let tenant = Uuid::now_v7();
    let receiver = Receiver::start(&[200]).await;
    set_callback(&log, tenant, &receiver.url).await;

    let failed_id = queue(&log, tenant, &["f"], json!(null)).await;
    let failed = conclude(
        &log,
        tenant,
        failed_id,
        MessageCommand::RecordDispatch {
            suppressed: None,
            attempts: Vec::new(),
            result: DispatchResult::Failed(MessageFailed {
                reason: "550 5.1.1 mailbox unavailable".into(),
                code: Some(550),
                permanent: true,
                at: Utc::now(),
            }),
        },
    )
    .await;
    let cancelled_id = queue(&log, tenant, &["c"], json!({"k": "v"})).await;
    let cancelled = conclude(
        &log,
        tenant,
        cancelled_id,
        MessageCommand::Cancel {
            reason: Some("changed my mind".into()),
            now: Utc::now(),
        },
    )
    .await;
    let deferred_id = queue(&log, tenant, &[], json!({})).await;
    let next_attempt_at = Utc::now() + chrono::TimeDelta::minutes(5);
    let deferred = conclude(
        &log,
        tenant,
        deferred_id,
        MessageCommand::RecordDispatch {
            suppressed: None,
            attempts: Vec::new(),
            result: DispatchResult::Deferred(MessageDeferred {
                reason: "451 try later".into(),
                code: Some(451),
                next_attempt_at,
            }),
        },
    )
    .await;

    // Everything above is in the log before the worker starts: it is sent after catch-up.
    let reports = DeliveryReports::start(log.clone(), config(&[100]));
    let requests = receiver.wait_requests(3).await;
    let by_message: HashMap<String, Value> = requests
        .iter()
        .map(|r| {
            let body = r.json();
            (body["message_id"].as_str().unwrap().to_string(), body)
        })
        .collect();

    let f = &by_message[&failed_id.to_string()];
    assert_eq!(f["type"], "message.failed");
    assert_eq!(f["id"], failed.event_id.to_string());
    assert_eq!(f["tags"], json!(["f"]));
    assert_eq!(f["metadata"], Value::Null);
    assert_eq!(f["details"]["code"], 550);
    assert_eq!(f["details"]["permanent"], true);
    assert_eq!(f["details"]["reason"], "550 5.1.1 mailbox unavailable");

    let c = &by_message[&cancelled_id.to_string()];
    assert_eq!(c["type"], "message.cancelled");
    assert_eq!(c["id"], cancelled.event_id.to_string());
    assert_eq!(c["metadata"], json!({"k": "v"}));
    assert_eq!(c["details"]["reason"], "changed my mind");

    let d = &by_message[&deferred_id.to_string()];
    assert_eq!(d["type"], "message.deferred");
    assert_eq!(d["id"], deferred.event_id.to_string());
    assert_eq!(d["tags"], json!([]));
    let at: DateTime<Utc> = d["details"]["next_attempt_at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(at, next_attempt_at);

    for (id, report) in [
        (failed_id, "failed"),
        (cancelled_id, "cancelled"),
        (deferred_id, "deferred"),
    ] {
        let tries = wait_attempts(&log, tenant, id, 1).await;
        assert_eq!(tries.len(), 1);
        assert_eq!(tries[0].1.report, report);
        assert!(tries[0].1.delivered);
    }
    reports.stop().await;
    assert_eq!(receiver.requests().len(), 3);
}

#[tokio::test]
async fn nothing_is_sent_before_catching_up_with_the_log() {
    let (_dir, log) = open_log();
    let tenant = Uuid::now_v7();
    let receiver = Receiver::start(&[200]).await;
    set_callback(&log, tenant, &receiver.url).await;
    let (done_id, done) = send_one(&log, tenant).await;
    // More events than the worker reads at a time, so that the report and the try that
    // settled it reach the worker in different batches.
    let filler: Vec<NewEvent> = (0..700)
        .map(|i| NewEvent {
            event_id: Uuid::now_v7(),
            event_type: "Filler".into(),
            schema_version: 1,
            payload: format!("{{\"i\":{i}}}").into_bytes(),
        })
        .collect();
    log.append(
        tenant,
        StreamId::new("filler", "1"),
        ExpectedVersion::Any,
        filler,
        meta(Uuid::now_v7()),
    )
    .await
    .unwrap();
    // The try an earlier run made and recorded.
    let earlier = DeliveryReportEvent::CallbackAttempted(CallbackAttempted {
        report_of: done.event_id,
        report: "sent".into(),
        url: receiver.url.clone(),
        attempt: 1,
        status: Some(204),
        error: None,
        duration_ms: 3,
        delivered: true,
        gave_up: false,
        at: Utc::now(),
    });
    log.append(
        tenant,
        StreamId::new(DELIVERY_REPORT_STREAM, done_id.to_string()),
        ExpectedVersion::Any,
        vec![new_event(&earlier)],
        meta(done.correlation_id),
    )
    .await
    .unwrap();

    let reports = DeliveryReports::start(log.clone(), config(&[100]));
    eventually("the worker to catch up", || {
        reports.status().caught_up.then_some(())
    })
    .await;
    // A report made after the start goes out; the settled one never does.
    let (live_id, _) = send_one(&log, tenant).await;
    let requests = receiver.wait_requests(1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(receiver.requests().len(), 1);
    assert_eq!(requests[0].json()["message_id"], live_id.to_string());
    assert_eq!(attempts(&log, tenant, done_id).len(), 1);
    reports.stop().await;
}

#[tokio::test]
async fn a_suppressed_message_is_reported_and_a_partial_suppression_is_not_a_report() {
    let (_dir, log) = open_log();
    let tenant = Uuid::now_v7();
    let receiver = Receiver::start(&[200]).await;
    set_callback(&log, tenant, &receiver.url).await;
    let recipient = |address: &str| SuppressedRecipient {
        address: address.into(),
        reason: Reason::Unsubscribe,
        scope: Scope::Tenant,
    };

    let suppressed_id = queue(&log, tenant, &["s"], json!({"k": 1})).await;
    let suppressed = conclude(
        &log,
        tenant,
        suppressed_id,
        MessageCommand::Suppress {
            attempts: Vec::new(),
            recipients: vec![recipient("ada@example.test")],
            at: Utc::now(),
        },
    )
    .await;
    let partial_id = queue(&log, tenant, &[], json!({})).await;
    let partial_sent = conclude(
        &log,
        tenant,
        partial_id,
        MessageCommand::RecordDispatch {
            suppressed: Some(RecipientsSuppressed {
                recipients: vec![recipient("cc@example.test")],
                all: false,
                at: Utc::now(),
            }),
            attempts: Vec::new(),
            result: DispatchResult::Sent(MessageSent {
                relay_id: None,
                relay: "mx.example.test".into(),
                reply: "250 ok".into(),
                at: Utc::now(),
            }),
        },
    )
    .await;

    let reports = DeliveryReports::start(log.clone(), config(&[100]));
    let requests = receiver.wait_requests(2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.requests().len(), 2, "one report per message");
    let by_message: HashMap<String, Value> = requests
        .iter()
        .map(|r| {
            let body = r.json();
            (body["message_id"].as_str().unwrap().to_string(), body)
        })
        .collect();
    let s = &by_message[&suppressed_id.to_string()];
    assert_eq!(s["type"], "message.suppressed");
    assert_eq!(s["id"], suppressed.event_id.to_string());
    assert_eq!(s["tags"], json!(["s"]));
    assert_eq!(s["details"]["all"], true);
    assert_eq!(s["details"]["recipients"][0]["address"], "ada@example.test");
    assert_eq!(s["details"]["recipients"][0]["reason"], "unsubscribe");
    let p = &by_message[&partial_id.to_string()];
    assert_eq!(p["type"], "message.sent");
    assert_eq!(p["id"], partial_sent.event_id.to_string());

    let tries = wait_attempts(&log, tenant, suppressed_id, 1).await;
    assert_eq!(tries[0].1.report, "suppressed");
    assert!(tries[0].1.delivered);
    assert_eq!(
        wait_attempts(&log, tenant, partial_id, 1).await[0].1.report,
        "sent"
    );
    reports.stop().await;
}
