//! Send pipeline end to end: REST in, the real dispatcher, a real SMTP server (aiosmtpd) out,
//! the timeline from the log, delivery reports to a real HTTP receiver.
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use hmac::{Hmac, Mac};
use mail_parser::{MessageParser, MimeHeaders};
use serde_json::{json, Value};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::sink::{dead_port, Delivered, Sink};
use crate::support::{setup_tenant, wait_status, Server, SENDER};

/// Short schedules so that retries and callbacks happen within a test.
const CONFIG: &str = "retry_schedule_ms = [300]\n\
                      callback_retry_schedule_ms = [200, 200]\n\
                      smtp_timeout_ms = 5000\n";
/// How long a message may take to reach a final status (the machine is small and busy).
const SLOW: Duration = Duration::from_secs(20);

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The smallest valid message from [`SENDER`].
fn simple(to: &str, subject: &str) -> Value {
    json!({ "from": SENDER, "to": to, "subject": subject, "text": "Hello." })
}

fn types(events: &[Value]) -> Vec<&str> {
    events
        .iter()
        .map(|e| e["type"].as_str().unwrap_or("?"))
        .collect()
}

fn of_type<'a>(events: &'a [Value], t: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == t).collect()
}

/// `X-Postledger-Message-Id` of a delivered message (angle brackets, if any, removed).
fn pl_id(d: &Delivered) -> String {
    d.header("X-Postledger-Message-Id")
        .map(|v| v.trim_matches(['<', '>']).to_string())
        .unwrap_or_else(|| panic!("no X-Postledger-Message-Id in\n{}", d.text()))
}

/// Checks the error format and returns the code.
fn error_code(body: &Value) -> String {
    let e = &body["error"];
    assert!(e.is_object(), "not an error answer: {body}");
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty()),
        "an error needs a message: {body}"
    );
    assert!(
        e.as_object().unwrap().contains_key("details"),
        "an error carries details (maybe null): {body}"
    );
    e["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no code: {body}"))
        .to_string()
}

/// The field names of a `VALIDATION_FAILED` (or other field-level) error.
fn fields(body: &Value) -> Vec<String> {
    body["error"]["details"]["fields"]
        .as_array()
        .unwrap_or_else(|| panic!("no details.fields: {body}"))
        .iter()
        .map(|f| {
            assert!(
                f["message"].as_str().is_some_and(|m| !m.is_empty()),
                "a field error needs a message: {body}"
            );
            f["field"].as_str().expect("field").to_string()
        })
        .collect()
}

fn crlf_to_lf(s: &str) -> String {
    s.replace("\r\n", "\n")
}

async fn list(s: &Server, key: &str, query: &str) -> Value {
    let (status, body) = s
        .rest(
            "GET",
            &format!("/api/v1/messages/{query}"),
            Some(key),
            None,
            None,
        )
        .await;
    assert_eq!(status, 200, "list {query}: {body}");
    body
}

/// Waits for `n` entries of type `t` in the timeline.
async fn wait_events(s: &Server, key: &str, id: &str, t: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + SLOW;
    loop {
        let events = s.timeline(key, id).await;
        if of_type(&events, t).len() >= n {
            return events;
        }
        assert!(
            Instant::now() < deadline,
            "no {n} {t} in the timeline of {id}: {:#}",
            Value::Array(events)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sent_message_arrives_with_every_header_body_and_attachment_intact() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start();
    let s = Server::start_with(dir.path(), CONFIG);
    let (_, key) = setup_tenant(&s, &[("primary", sink.port, 1)]).await;

    // Every byte value, CR/LF/NUL included, in an irregular order.
    let binary: Vec<u8> = (0..5000u32).map(|i| (i * 7 + i / 256) as u8).collect();
    let png: Vec<u8> = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"
        .iter()
        .copied()
        .chain((0..600u32).map(|i| (i * 13) as u8))
        .collect();
    let text = "Hello Ada,\n.a line that starts with a dot\nFrühling is here: 20 % off.\nBye";
    let html = "<p>Hello <b>Ada</b>,</p>\n<p>Frühling is here.</p><img src=\"cid:logo@news\">";
    let subject = "Frühling: the spring sale";
    let request = json!({
        "from": SENDER,
        "to": [{ "email": "ada@example.test", "name": "Ada Lovelace" }],
        "cc": "grace@example.test",
        "bcc": ["hidden@example.test"],
        "reply_to": { "email": "replies@example.test", "name": "Replies" },
        "subject": subject,
        "text": text,
        "html": html,
        "headers": { "X-Campaign": "spring" },
        "tags": ["spring", "newsletter"],
        "metadata": { "user": 42, "plan": "pro" },
        "attachments": [
            { "filename": "data.bin", "content_type": "application/octet-stream", "content": b64(&binary) },
            { "filename": "logo.png", "content_type": "image/png", "content": b64(&png), "content_id": "logo@news" },
        ],
    });
    let (status, receipt) = s.send(&key, request).await;
    assert_eq!(status, 202, "{receipt}");
    assert_eq!(receipt["status"], "queued");
    assert_eq!(receipt["duplicate"], false);
    let id = receipt["id"].as_str().expect("id").to_string();
    uuid::Uuid::parse_str(&id).expect("the id is a UUID");

    let m = wait_status(&s, &key, &id, "sent", SLOW).await;
    let got = sink.arrived(1, SLOW).await;
    assert_eq!(got.len(), 1, "exactly one message reaches the relay");
    let d = &got[0];

    // The envelope: every recipient, the bcc one included.
    assert_eq!(d.mail_from, SENDER);
    let mut rcpt = d.rcpt_tos.clone();
    rcpt.sort();
    assert_eq!(
        rcpt,
        [
            "ada@example.test",
            "grace@example.test",
            "hidden@example.test"
        ]
    );

    // The content.
    let raw_text = d.text();
    assert!(
        !raw_text.contains("hidden@example.test"),
        "the bcc address must not appear in the message itself:\n{raw_text}"
    );
    let parsed = MessageParser::default()
        .parse(&d.raw)
        .expect("the delivered message parses");
    assert!(parsed.bcc().is_none(), "a Bcc header was sent");
    let from = parsed.from().and_then(|a| a.first()).expect("From");
    assert_eq!(from.address(), Some(SENDER));
    assert_eq!(
        from.name(),
        Some("News"),
        "the sender profile's name is the default display name"
    );
    let to = parsed.to().and_then(|a| a.first()).expect("To");
    assert_eq!(
        (to.address(), to.name()),
        (Some("ada@example.test"), Some("Ada Lovelace"))
    );
    let cc: Vec<_> = parsed
        .cc()
        .expect("Cc")
        .iter()
        .filter_map(|a| a.address())
        .collect();
    assert_eq!(cc, ["grace@example.test"]);
    let reply_to = parsed.reply_to().and_then(|a| a.first()).expect("Reply-To");
    assert_eq!(reply_to.address(), Some("replies@example.test"));
    assert_eq!(parsed.subject(), Some(subject));
    assert_eq!(
        parsed.message_id(),
        Some(format!("{id}@example.test").as_str()),
        "Message-ID is <message id@from domain>"
    );
    assert_eq!(pl_id(d), id);
    assert_eq!(d.header("X-Campaign").as_deref(), Some("spring"));
    // A trailing line break is a MIME encoding artefact; everything else must be exact.
    let body_text = parsed.body_text(0).expect("a text body");
    assert_eq!(
        crlf_to_lf(&body_text).trim_end_matches('\n'),
        text,
        "the text body"
    );
    let body_html = parsed.body_html(0).expect("an html body");
    assert_eq!(
        crlf_to_lf(&body_html).trim_end_matches('\n'),
        html,
        "the html body"
    );
    let data = parsed
        .attachments()
        .find(|p| p.attachment_name() == Some("data.bin"))
        .unwrap_or_else(|| panic!("no attachment data.bin in\n{raw_text}"));
    assert_eq!(
        data.contents(),
        &binary[..],
        "the attachment's bytes come back exactly"
    );
    let ct = data.content_type().expect("the attachment's content type");
    assert_eq!(
        (ct.ctype(), ct.subtype()),
        ("application", Some("octet-stream"))
    );
    let logo = parsed
        .parts
        .iter()
        .find(|p| p.content_id().map(|c| c.trim_matches(['<', '>'])) == Some("logo@news"))
        .unwrap_or_else(|| panic!("no part with Content-ID <logo@news> in\n{raw_text}"));
    assert_eq!(logo.contents(), &png[..], "the inline image's bytes");
    let ct = logo
        .content_type()
        .expect("the inline image's content type");
    assert_eq!((ct.ctype(), ct.subtype()), ("image", Some("png")));

    // What the API says about it.
    assert_eq!(m["relay"], "primary");
    assert_eq!(m["attempts"], 1);
    assert_eq!(m["last_code"], 250);
    assert_eq!(m["to"], json!(["ada@example.test"]));
    assert_eq!(m["cc"], json!(["grace@example.test"]));
    assert_eq!(m["bcc_count"], 1);
    assert_eq!(m["subject"], subject);
    assert_eq!(m["tags"], json!(["spring", "newsletter"]));
    assert_eq!(m["metadata"], json!({ "user": 42, "plan": "pro" }));
    assert_eq!(m["attachments"], 2);
    assert!(m["sent_at"].is_string(), "{m}");

    let events = s.timeline(&key, &id).await;
    assert_eq!(
        types(&events),
        ["MessageQueued", "DeliveryAttempted", "MessageSent"],
        "{events:#?}"
    );
    let attempt = &events[1]["data"];
    assert_eq!(attempt["outcome"], "sent", "{attempt}");
    assert_eq!(attempt["code"], 250, "{attempt}");
    assert_eq!(attempt["attempt"], 1, "{attempt}");
    assert_eq!(attempt["relay"], "primary", "{attempt}");
    assert_eq!(events[2]["data"]["relay"], "primary");
    let positions: Vec<u64> = events
        .iter()
        .map(|e| e["position"].as_u64().unwrap())
        .collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "log order: {positions:?}"
    );
    s.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_451_is_retried_per_the_schedule_and_then_sent() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start();
    let s = Server::start_with(dir.path(), CONFIG);
    let (_, key) = setup_tenant(&s, &[("primary", sink.port, 1)]).await;
    let to = "tempfail1-later@example.test";
    let id = s.send_ok(&key, simple(to, "Try again")).await;
    let m = wait_status(&s, &key, &id, "sent", SLOW).await;
    assert_eq!(m["attempts"], 2, "{m}");
    assert_eq!(m["last_code"], 250, "{m}");

    let events = s.timeline(&key, &id).await;
    assert_eq!(
        types(&events),
        [
            "MessageQueued",
            "DeliveryAttempted",
            "MessageDeferred",
            "DeliveryAttempted",
            "MessageSent"
        ],
        "{events:#?}"
    );
    let first = &events[1]["data"];
    assert_eq!(
        (&first["outcome"], &first["code"], &first["attempt"]),
        (&json!("deferred"), &json!(451), &json!(1)),
        "{first}"
    );
    let deferred = &events[2]["data"];
    assert_eq!(deferred["code"], 451, "{deferred}");
    let second = &events[3]["data"];
    assert_eq!(
        (&second["outcome"], &second["code"], &second["attempt"]),
        (&json!("sent"), &json!(250), &json!(2)),
        "{second}"
    );
    // The retry waited for the schedule's 300 ms, and not much longer.
    let t = |v: &Value| {
        chrono::DateTime::parse_from_rfc3339(v.as_str().expect("a time")).expect("RFC 3339")
    };
    let delay = t(&deferred["next_attempt_at"]) - t(&first["at"]);
    assert!(
        (250..=1500).contains(&delay.num_milliseconds()),
        "next_attempt_at is {delay} after the deferral, the schedule says 300 ms"
    );
    assert!(
        t(&second["at"]) >= t(&deferred["next_attempt_at"]),
        "the retry came before next_attempt_at"
    );
    let got = sink.arrived(1, SLOW).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].rcpt_tos, [to]);
    assert_eq!(pl_id(&got[0]), id);
    s.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_550_fails_at_once_without_retry() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start();
    let s = Server::start_with(dir.path(), CONFIG);
    let (_, key) = setup_tenant(&s, &[("primary", sink.port, 1)]).await;
    let id = s
        .send_ok(&key, simple("reject-me@example.test", "Nope"))
        .await;
    let m = wait_status(&s, &key, &id, "failed", SLOW).await;
    assert_eq!(m["last_code"], 550, "{m}");
    assert_eq!(m["attempts"], 1, "{m}");
    // Longer than the retry schedule: nothing more happens.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let events = s.timeline(&key, &id).await;
    assert_eq!(
        types(&events),
        ["MessageQueued", "DeliveryAttempted", "MessageFailed"],
        "{events:#?}"
    );
    let attempt = &events[1]["data"];
    assert_eq!(
        (&attempt["outcome"], &attempt["code"]),
        (&json!("failed"), &json!(550)),
        "{attempt}"
    );
    let failed = &events[2]["data"];
    assert_eq!(failed["code"], 550, "{failed}");
    assert_eq!(failed["permanent"], true, "{failed}");
    assert!(sink.delivered().is_empty(), "nothing was delivered");
    s.stop();
}

/// A relay whose certificate comes from a private CA: the CA is trusted through
/// `relay_ca_file`, and mail goes over STARTTLS. A broken CA file stops the server at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_starttls_relay_with_a_private_ca_is_trusted_through_relay_ca_file() {
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/tls");
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start_tls("starttls");
    let config = format!("{CONFIG}relay_ca_file = \"{fixtures}/ca.pem\"\n");
    let s = Server::start_with(dir.path(), &config);
    let (_, key) = setup_tenant(&s, &[]).await;
    let (status, body) = s
        .rest(
            "POST",
            "/api/v1/relays/",
            Some(&key),
            None,
            Some(json!({
                "name": "private-ca",
                "host": "127.0.0.1",
                "port": sink.port,
                "tls": "starttls",
            })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let id = s
        .send_ok(&key, simple("ada@example.test", "Private CA"))
        .await;
    let m = wait_status(&s, &key, &id, "sent", SLOW).await;
    assert_eq!(m["relay"], "private-ca", "{m}");
    let got = sink.delivered();
    assert_eq!(got.len(), 1);
    assert!(got[0].tls.is_some(), "delivered in clear");
    s.stop();

    // A file without a certificate is refused at start, not at the first send.
    let bad = dir.path().join("not-a-ca.pem");
    std::fs::write(&bad, "no certificate here\n").unwrap();
    let data = dir.path().join("other");
    std::fs::create_dir(&data).unwrap();
    let out = std::process::Command::new(crate::support::BIN)
        .arg("--data-dir")
        .arg(&data)
        .arg("--config")
        .arg({
            let c = dir.path().join("bad.toml");
            std::fs::write(&c, format!("relay_ca_file = \"{}\"\n", bad.display())).unwrap();
            c
        })
        .args(["serve", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("holds no certificate"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_relay_fails_over_to_the_next_by_priority() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start();
    let s = Server::start_with(dir.path(), CONFIG);
    // Created in the opposite order of their priority: the priority decides, not the order.
    let (_, key) = setup_tenant(&s, &[("backup", sink.port, 2), ("dead", dead_port(), 1)]).await;
    let id = s
        .send_ok(&key, simple("ada@example.test", "Failover"))
        .await;
    let m = wait_status(&s, &key, &id, "sent", SLOW).await;
    assert_eq!(m["relay"], "backup", "{m}");
    let events = s.timeline(&key, &id).await;
    assert_eq!(
        types(&events),
        [
            "MessageQueued",
            "DeliveryAttempted",
            "DeliveryAttempted",
            "MessageSent"
        ],
        "{events:#?}"
    );
    let (first, second) = (&events[1]["data"], &events[2]["data"]);
    assert_eq!(first["relay"], "dead", "{first}");
    assert_eq!(first["outcome"], "unreachable", "{first}");
    assert!(first["code"].is_null(), "no SMTP code: {first}");
    assert_eq!(first["attempt"], 1, "{first}");
    assert_eq!(second["relay"], "backup", "{second}");
    assert_eq!(
        (&second["outcome"], &second["code"], &second["attempt"]),
        (&json!("sent"), &json!(250), &json!(1)),
        "failover happens within the round: {second}"
    );
    assert_eq!(events[3]["data"]["relay"], "backup");
    let got = sink.arrived(1, SLOW).await;
    assert_eq!(got.len(), 1);
    assert_eq!(pl_id(&got[0]), id);
    s.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_message_waits_for_its_time_and_a_past_time_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start();
    let s = Server::start_with(dir.path(), CONFIG);
    let (_, key) = setup_tenant(&s, &[("primary", sink.port, 1)]).await;

    let past = (chrono::Utc::now() - chrono::Duration::seconds(5)).to_rfc3339();
    let mut body = simple("ada@example.test", "Too late");
    body["scheduled_at"] = json!(past);
    let (status, answer) = s.send(&key, body).await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(error_code(&answer), "VALIDATION_FAILED");
    assert_eq!(fields(&answer), ["scheduled_at"]);
    let mut body = simple("ada@example.test", "Not a time");
    body["scheduled_at"] = json!("tomorrow at noon");
    let (status, answer) = s.send(&key, body).await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(fields(&answer), ["scheduled_at"]);

    let at = chrono::Utc::now() + chrono::Duration::seconds(3);
    let mut body = simple("ada@example.test", "Later");
    body["scheduled_at"] = json!(at.to_rfc3339());
    let id = s.send_ok(&key, body).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(sink.delivered().is_empty(), "delivered before scheduled_at");
    let m = s.message(&key, &id).await;
    assert_eq!(m["status"], "queued", "{m}");
    let scheduled = chrono::DateTime::parse_from_rfc3339(m["scheduled_at"].as_str().unwrap())
        .expect("scheduled_at is echoed");
    assert_eq!(scheduled.timestamp_micros(), at.timestamp_micros());

    let m = wait_status(&s, &key, &id, "sent", SLOW).await;
    let sent = chrono::DateTime::parse_from_rfc3339(m["sent_at"].as_str().unwrap()).unwrap();
    assert!(sent >= at, "sent at {sent}, scheduled for {at}");
    let got = sink.arrived(1, SLOW).await;
    assert_eq!(pl_id(&got[0]), id);
    let events = s.timeline(&key, &id).await;
    let attempt = chrono::DateTime::parse_from_rfc3339(
        of_type(&events, "DeliveryAttempted")[0]["data"]["at"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert!(attempt >= at, "tried at {attempt}, scheduled for {at}");
    s.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn due_messages_leave_by_priority_then_age() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start();
    let s = Server::start_with(dir.path(), &format!("{CONFIG}dispatch_concurrency = 1\n"));
    let (_, key) = setup_tenant(&s, &[("primary", sink.port, 1)]).await;
    // All due at the same moment, queued lowest priority first, so that age alone would
    // give the opposite order.
    let at = (chrono::Utc::now() + chrono::Duration::seconds(3)).to_rfc3339();
    let mut queued = Vec::new();
    for (n, priority) in [
        "low",
        "low",
        "normal",
        "normal",
        "high",
        "high",
        "immediate",
    ]
    .iter()
    .enumerate()
    {
        let mut body = simple("ada@example.test", &format!("{priority} {n}"));
        body["priority"] = json!(priority);
        body["scheduled_at"] = json!(at);
        queued.push((s.send_ok(&key, body).await, *priority));
    }
    assert!(
        chrono::Utc::now() < chrono::DateTime::parse_from_rfc3339(&at).unwrap(),
        "queueing took too long for this test to mean anything"
    );
    let rank = |p: &str| {
        ["immediate", "high", "normal", "low"]
            .iter()
            .position(|x| *x == p)
    };
    let mut expected = queued.clone();
    // Stable: within a priority, the older first.
    expected.sort_by_key(|(_, p)| rank(p));
    let expected: Vec<&str> = expected.iter().map(|(id, _)| id.as_str()).collect();

    let got = sink.arrived(queued.len(), SLOW).await;
    let order: Vec<String> = got.iter().map(pl_id).collect();
    let subjects: Vec<String> = got
        .iter()
        .map(|d| d.header("Subject").unwrap_or_default())
        .collect();
    assert_eq!(order, expected, "arrival order by subject: {subjects:?}");
    s.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_makes_a_retried_send_harmless() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start();
    let s = Server::start_with(dir.path(), CONFIG);
    let (_, key) = setup_tenant(&s, &[("primary", sink.port, 1)]).await;
    let body = simple("ada@example.test", "Order 42 confirmed");
    let bytes = serde_json::to_vec(&body).unwrap();
    let send = |bytes: Vec<u8>, idem: &'static str| {
        let s = &s;
        let key = key.clone();
        async move {
            s.rest_raw(
                "POST",
                "/api/v1/messages/send/",
                Some(&key),
                None,
                &[("Idempotency-Key", idem)],
                Some(bytes),
            )
            .await
        }
    };
    let (status, first) = send(bytes.clone(), "order-42").await;
    assert_eq!(status, 202, "{first}");
    assert_eq!(first["duplicate"], false, "{first}");
    let id = first["id"].as_str().unwrap().to_string();

    let (status, again) = send(bytes.clone(), "order-42").await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["id"], id.as_str(), "{again}");
    assert_eq!(again["duplicate"], true, "{again}");

    let m = wait_status(&s, &key, &id, "sent", SLOW).await;
    assert_eq!(m["idempotency_key"], "order-42");
    // After it was sent, a retry still answers with the same message and its status.
    let (status, late) = send(bytes.clone(), "order-42").await;
    assert_eq!(status, 200, "{late}");
    assert_eq!(
        (&late["id"], &late["duplicate"], &late["status"]),
        (&json!(id), &json!(true), &json!("sent")),
        "{late}"
    );

    let mut other = body.clone();
    other["subject"] = json!("Order 43 confirmed");
    let (status, clash) = send(serde_json::to_vec(&other).unwrap(), "order-42").await;
    assert_eq!(status, 409, "{clash}");
    assert_eq!(error_code(&clash), "IDEMPOTENCY_KEY_REUSED");

    // Another key is another message.
    let (status, fresh) = send(bytes, "order-42b").await;
    assert_eq!(status, 202, "{fresh}");
    assert_ne!(fresh["id"], id.as_str());
    let fresh_id = fresh["id"].as_str().unwrap().to_string();
    wait_status(&s, &key, &fresh_id, "sent", SLOW).await;

    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = sink.delivered();
    let ids: Vec<String> = got.iter().map(pl_id).collect();
    assert_eq!(
        ids.iter().filter(|x| **x == id).count(),
        1,
        "order-42 is delivered exactly once: {ids:?}"
    );
    assert_eq!(got.len(), 2, "{ids:?}");
    let listed = list(&s, &key, "").await;
    assert_eq!(listed["data"].as_array().unwrap().len(), 2, "{listed}");
    s.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_sends_say_why_in_one_format_and_queue_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start();
    let s = Server::start_with(dir.path(), &format!("{CONFIG}max_body_mb = 1\n"));
    let (tenant, key) = setup_tenant(&s, &[("primary", sink.port, 1)]).await;

    async fn nothing_queued(s: &Server, key: &str, after: &str) {
        let listed = list(s, key, "").await;
        assert_eq!(
            listed["data"],
            json!([]),
            "after {after}, a message exists: {listed}"
        );
    }

    // Several invalid fields at once: each is named.
    let (status, body) = s
        .send(
            &key,
            json!({
                "from": SENDER,
                "to": ["not-an-address"],
                "cc": ["ok@example.test", "also bad"],
                "priority": "urgent",
            }),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(error_code(&body), "VALIDATION_FAILED");
    let named = fields(&body);
    for want in ["to[0]", "cc[1]", "subject", "priority"] {
        assert!(
            named.iter().any(|f| f == want),
            "{want} is not named: {body}"
        );
    }
    assert!(
        named.iter().any(|f| f == "html" || f == "text"),
        "the missing body is not named: {body}"
    );
    nothing_queued(&s, &key, "invalid fields").await;

    // A wrong JSON type names its field.
    let (status, body) = s
        .send(
            &key,
            json!({ "from": SENDER, "to": 5, "subject": "x", "text": "y" }),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(error_code(&body), "VALIDATION_FAILED");
    assert_eq!(fields(&body), ["to"], "{body}");
    nothing_queued(&s, &key, "a wrong type").await;

    // An unknown field is refused, not ignored.
    let mut body = simple("ada@example.test", "x");
    body["subjet"] = json!("typo");
    let (status, answer) = s.send(&key, body).await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(error_code(&answer), "VALIDATION_FAILED");
    nothing_queued(&s, &key, "an unknown field").await;

    // Not a sender profile of this tenant.
    let mut body = simple("ada@example.test", "x");
    body["from"] = json!("someone@elsewhere.test");
    let (status, answer) = s.send(&key, body).await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(error_code(&answer), "UNKNOWN_SENDER");
    nothing_queued(&s, &key, "an unknown sender").await;

    // Over max_body_mb = 1.
    let mut body = simple("ada@example.test", "Big");
    body["text"] = json!("a".repeat(1_200_000));
    let (status, answer) = s.send(&key, body).await;
    assert_eq!(status, 413, "{answer}");
    assert_eq!(error_code(&answer), "PAYLOAD_TOO_LARGE");
    nothing_queued(&s, &key, "a body over the limit").await;
    // Without a key, or with a wrong one.
    let (status, answer) = s
        .rest(
            "POST",
            "/api/v1/messages/send/",
            None,
            None,
            Some(simple("ada@example.test", "x")),
        )
        .await;
    assert_eq!(status, 401, "{answer}");
    assert_eq!(error_code(&answer), "UNAUTHENTICATED");
    let (status, answer) = s
        .send("pl_not_a_real_key", simple("ada@example.test", "x"))
        .await;
    assert_eq!(status, 401, "{answer}");
    assert_eq!(error_code(&answer), "UNAUTHENTICATED");

    // Not JSON.
    for raw in [&b"{\"from\": "[..], b"not json", b""] {
        let (status, answer) = s
            .rest_raw(
                "POST",
                "/api/v1/messages/send/",
                Some(&key),
                None,
                &[],
                Some(raw.to_vec()),
            )
            .await;
        assert_eq!(status, 400, "{:?}: {answer}", String::from_utf8_lossy(raw));
        assert_eq!(error_code(&answer), "BAD_REQUEST");
    }

    nothing_queued(&s, &key, "the refusals").await;

    // A suspended tenant cannot send.
    s.ok(
        &s.operator,
        "mutation($t: ID!) { suspendTenant(tenantId: $t, reason: \"unpaid\") { status } }",
        json!({ "t": tenant }),
    )
    .await;
    let (status, answer) = s.send(&key, simple("ada@example.test", "x")).await;
    assert_eq!(status, 403, "{answer}");
    assert_eq!(error_code(&answer), "TENANT_SUSPENDED");
    // Not even the operator on its behalf.
    let (status, answer) = s
        .rest(
            "POST",
            "/api/v1/messages/send/",
            Some(&s.operator),
            Some(&tenant),
            Some(simple("ada@example.test", "x")),
        )
        .await;
    assert_eq!(status, 403, "{answer}");
    assert_eq!(error_code(&answer), "TENANT_SUSPENDED");
    s.ok(
        &s.operator,
        "mutation($t: ID!) { reactivateTenant(tenantId: $t) { status } }",
        json!({ "t": tenant }),
    )
    .await;
    nothing_queued(&s, &key, "the suspension").await;
    // The tenant works again, and nothing refused went out meanwhile.
    let id = s
        .send_ok(&key, simple("ada@example.test", "Welcome back"))
        .await;
    wait_status(&s, &key, &id, "sent", SLOW).await;
    let got = sink.arrived(1, SLOW).await;
    let ids: Vec<String> = got.iter().map(pl_id).collect();
    assert_eq!(ids, [id], "only the accepted message went out");
    s.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_body_under_max_body_mb_is_queued_and_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start();
    let s = Server::start_with(dir.path(), &format!("{CONFIG}max_body_mb = 1\n"));
    let (_, key) = setup_tenant(&s, &[("primary", sink.port, 1)]).await;
    // A newsletter-sized HTML body (200 KB), and a text body just under the 1 MiB limit.
    let row = "<tr><td>Spring offer</td><td>20 % off everything in the garden shop</td></tr>\n";
    let html = format!("<table>\n{}</table>", row.repeat(200_000 / row.len()));
    let text = "a".repeat(900_000);
    let mut sent = Vec::new();
    for (subject, body) in [
        ("Newsletter", json!({ "html": html })),
        ("Just under the limit", json!({ "text": text })),
    ] {
        let mut request = json!({ "from": SENDER, "to": "ada@example.test", "subject": subject });
        for (k, v) in body.as_object().unwrap() {
            request[k] = v.clone();
        }
        let size = serde_json::to_vec(&request).unwrap().len();
        let (status, answer) = s.send(&key, request).await;
        assert_eq!(
            status, 202,
            "{subject}: a {size}-byte request under max_body_mb = 1 was refused: {answer}"
        );
        sent.push(answer["id"].as_str().unwrap().to_string());
    }
    for id in &sent {
        wait_status(&s, &key, id, "sent", SLOW).await;
    }
    let got = sink.arrived(2, SLOW).await;
    for d in &got {
        let parsed = MessageParser::default().parse(&d.raw).expect("parses");
        match parsed.subject() {
            Some("Newsletter") => assert_eq!(
                crlf_to_lf(&parsed.body_html(0).unwrap()).trim_end_matches('\n'),
                html
            ),
            Some("Just under the limit") => assert_eq!(
                crlf_to_lf(&parsed.body_text(0).unwrap()).trim_end_matches('\n'),
                text
            ),
            other => panic!("unexpected subject {other:?}"),
        }
    }
    s.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_answers_each_message_on_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start();
    let s = Server::start_with(dir.path(), CONFIG);
    let (_, key) = setup_tenant(&s, &[("primary", sink.port, 1)]).await;
    let (status, body) = s
        .rest(
            "POST",
            "/api/v1/messages/batch/",
            Some(&key),
            None,
            Some(json!({ "messages": [
                simple("ada@example.test", "Batch one"),
                { "from": SENDER, "to": "grace@example.test", "text": "no subject" },
                simple("linus@example.test", "Batch three"),
            ]})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (&body["accepted"], &body["rejected"]),
        (&json!(2), &json!(1))
    );
    let results = body["results"].as_array().expect("results");
    let statuses: Vec<_> = results.iter().map(|r| r["status"].clone()).collect();
    assert_eq!(statuses, [json!(202), json!(422), json!(202)], "{body}");
    let indexes: Vec<_> = results.iter().map(|r| r["index"].clone()).collect();
    assert_eq!(indexes, [json!(0), json!(1), json!(2)], "{body}");
    assert_eq!(results[1]["error"]["code"], "VALIDATION_FAILED", "{body}");
    assert!(
        results[1]["error"]["details"]["fields"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["field"] == "subject"),
        "{body}"
    );
    assert!(results[1]["id"].is_null(), "{body}");
    let ids: Vec<String> = [&results[0], &results[2]]
        .iter()
        .map(|r| r["id"].as_str().expect("id").to_string())
        .collect();
    for id in &ids {
        wait_status(&s, &key, id, "sent", SLOW).await;
    }
    let got = sink.arrived(2, SLOW).await;
    let mut subjects: Vec<String> = got
        .iter()
        .map(|d| d.header("Subject").unwrap_or_default())
        .collect();
    subjects.sort();
    assert_eq!(subjects, ["Batch one", "Batch three"]);
    let listed = list(&s, &key, "").await;
    assert_eq!(listed["data"].as_array().unwrap().len(), 2, "{listed}");

    // An empty batch, or one that is not a batch.
    let (status, body) = s
        .rest(
            "POST",
            "/api/v1/messages/batch/",
            Some(&key),
            None,
            Some(json!({ "messages": [] })),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(error_code(&body), "VALIDATION_FAILED");
    s.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_message_is_never_sent_and_a_sent_one_cannot_be_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start();
    let s = Server::start_with(dir.path(), CONFIG);
    let (_, key) = setup_tenant(&s, &[("primary", sink.port, 1)]).await;
    // Two messages due at the same moment; one is cancelled. Once the other has arrived,
    // the cancelled one would have too.
    let at = (chrono::Utc::now() + chrono::Duration::seconds(2)).to_rfc3339();
    let mut body = simple("ada@example.test", "Cancelled");
    body["scheduled_at"] = json!(at);
    let cancelled = s.send_ok(&key, body).await;
    let mut body = simple("ada@example.test", "Control");
    body["scheduled_at"] = json!(at);
    let control = s.send_ok(&key, body).await;
    // And one far ahead.
    let mut body = simple("ada@example.test", "Next month");
    body["scheduled_at"] = json!((chrono::Utc::now() + chrono::Duration::seconds(30)).to_rfc3339());
    let far = s.send_ok(&key, body).await;

    let (status, m) = s
        .rest(
            "POST",
            &format!("/api/v1/messages/{cancelled}/cancel/"),
            Some(&key),
            None,
            Some(json!({ "reason": "typo in the subject" })),
        )
        .await;
    assert_eq!(status, 200, "{m}");
    assert_eq!(m["status"], "cancelled", "{m}");
    let (status, m) = s
        .rest(
            "POST",
            &format!("/api/v1/messages/{far}/cancel/"),
            Some(&key),
            None,
            None,
        )
        .await;
    assert_eq!(status, 200, "{m}");
    assert_eq!(m["status"], "cancelled", "{m}");

    wait_status(&s, &key, &control, "sent", SLOW).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = sink.delivered();
    let ids: Vec<String> = got.iter().map(pl_id).collect();
    assert_eq!(
        ids,
        std::slice::from_ref(&control),
        "only the control message arrives"
    );
    for id in [&cancelled, &far] {
        assert_eq!(s.message(&key, id).await["status"], "cancelled");
        let events = s.timeline(&key, id).await;
        assert_eq!(
            types(&events),
            ["MessageQueued", "MessageCancelled"],
            "{events:#?}"
        );
    }
    let events = s.timeline(&key, &cancelled).await;
    assert_eq!(events[1]["data"]["reason"], "typo in the subject");

    // Final states are final.
    for id in [&cancelled, &control] {
        let (status, body) = s
            .rest(
                "POST",
                &format!("/api/v1/messages/{id}/cancel/"),
                Some(&key),
                None,
                None,
            )
            .await;
        assert_eq!(status, 409, "{body}");
        assert_eq!(error_code(&body), "MESSAGE_ALREADY_FINAL");
    }
    assert_eq!(s.message(&key, &control).await["status"], "sent");
    let events = s.timeline(&key, &control).await;
    assert_eq!(
        types(&events),
        ["MessageQueued", "DeliveryAttempted", "MessageSent"],
        "{events:#?}"
    );
    s.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listing_filters_and_pages_newest_first() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start();
    let s = Server::start_with(dir.path(), CONFIG);
    let (_, key) = setup_tenant(&s, &[("primary", sink.port, 1)]).await;
    let mut spring_sent = Vec::new();
    let mut all = Vec::new();
    for n in 0..9 {
        let (to, tag) = match n {
            2 | 6 => ("ada@example.test", "autumn"),
            4 => ("reject-nobody@example.test", "spring"),
            _ => ("ada@example.test", "spring"),
        };
        let mut body = simple(to, &format!("Message {n}"));
        body["tags"] = json!([tag, "all"]);
        let id = s.send_ok(&key, body).await;
        if to.starts_with("ada") && tag == "spring" {
            spring_sent.push(id.clone());
        }
        all.push((id, to));
    }
    for (id, to) in &all {
        let want = if to.starts_with("reject") {
            "failed"
        } else {
            "sent"
        };
        wait_status(&s, &key, id, want, SLOW).await;
    }
    spring_sent.reverse(); // newest first

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let query = match &cursor {
            None => "?status=sent&tag=spring&limit=1".to_string(),
            Some(c) => format!("?status=sent&tag=spring&limit=1&cursor={c}"),
        };
        let page = list(&s, &key, &query).await;
        let data = page["data"].as_array().expect("data");
        assert!(data.len() <= 1, "limit=1 gave {page}");
        for m in data {
            assert_eq!(m["status"], "sent", "{m}");
            assert!(
                m["tags"].as_array().unwrap().contains(&json!("spring")),
                "{m}"
            );
            seen.push(m["id"].as_str().unwrap().to_string());
        }
        pages += 1;
        assert!(pages <= spring_sent.len() + 1, "the pages never end");
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(seen, spring_sent, "every match once, newest first");

    // Without filters: everything, newest first, in one page.
    let page = list(&s, &key, "?limit=100").await;
    let ids: Vec<&str> = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    let newest_first: Vec<&str> = all.iter().rev().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, newest_first);
    assert!(page["next_cursor"].is_null(), "{page}");
    let failed = list(&s, &key, "?status=failed").await;
    assert_eq!(failed["data"].as_array().unwrap().len(), 1, "{failed}");
    assert_eq!(failed["data"][0]["id"], all[4].0.as_str());
    let autumn = list(&s, &key, "?tag=autumn").await;
    assert_eq!(autumn["data"].as_array().unwrap().len(), 2, "{autumn}");

    let (status, body) = s
        .rest(
            "GET",
            "/api/v1/messages/?status=lost",
            Some(&key),
            None,
            None,
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(error_code(&body), "VALIDATION_FAILED");
    let (status, body) = s
        .rest(
            "GET",
            "/api/v1/messages/?cursor=nope",
            Some(&key),
            None,
            None,
        )
        .await;
    assert_eq!(status, 422, "{body}");
    s.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_sees_and_touches_only_its_own_messages_and_senders() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start();
    let s = Server::start_with(dir.path(), CONFIG);
    let (a, a_key) = setup_tenant(&s, &[("primary", sink.port, 1)]).await;
    let (b, b_key) = setup_tenant(&s, &[("primary", sink.port, 1)]).await;
    let (status, body) = s
        .rest(
            "POST",
            "/api/v1/senders/",
            Some(&a_key),
            None,
            Some(json!({ "email": "alerts@a.example.test" })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let mut body = simple("ada@example.test", "A's scheduled secret");
    body["from"] = json!("alerts@a.example.test");
    body["scheduled_at"] = json!((chrono::Utc::now() + chrono::Duration::seconds(60)).to_rfc3339());
    let a_msg = s.send_ok(&a_key, body).await;

    let random = uuid::Uuid::now_v7().to_string();
    for (method, suffix) in [("GET", ""), ("GET", "events/"), ("POST", "cancel/")] {
        let mut answers = Vec::new();
        for id in [&a_msg, &random] {
            let (status, body) = s
                .rest(
                    method,
                    &format!("/api/v1/messages/{id}/{suffix}"),
                    Some(&b_key),
                    None,
                    None,
                )
                .await;
            assert_eq!(status, 404, "{method} {suffix} of {id} as B: {body}");
            assert_eq!(error_code(&body), "MESSAGE_NOT_FOUND");
            answers.push(body);
        }
        assert_eq!(
            answers[0], answers[1],
            "A's message and a random id must look the same to B"
        );
        // The operator acting for B is scoped to B as well.
        let (status, body) = s
            .rest(
                method,
                &format!("/api/v1/messages/{a_msg}/{suffix}"),
                Some(&s.operator),
                Some(&b),
                None,
            )
            .await;
        assert_eq!(status, 404, "operator for B: {body}");
    }
    // B naming A's tenant gets what a made-up tenant gets.
    let (status, body) = s
        .rest(
            "GET",
            &format!("/api/v1/messages/{a_msg}/"),
            Some(&b_key),
            Some(&a),
            None,
        )
        .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(error_code(&body), "TENANT_NOT_FOUND");
    let listed = list(&s, &b_key, "").await;
    assert_eq!(listed["data"], json!([]), "B lists A's messages: {listed}");
    let (_, senders) = s
        .rest("GET", "/api/v1/senders/", Some(&b_key), None, None)
        .await;
    assert!(
        !senders.to_string().contains("alerts@a.example.test"),
        "{senders}"
    );

    // B cannot send from A's address.
    let mut body = simple("ada@example.test", "Spoof");
    body["from"] = json!("alerts@a.example.test");
    let (status, answer) = s.send(&b_key, body).await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(error_code(&answer), "UNKNOWN_SENDER");

    // A's message is untouched and A still sees it.
    let m = s.message(&a_key, &a_msg).await;
    assert_eq!(m["status"], "queued", "{m}");
    let listed = list(&s, &a_key, "").await;
    assert_eq!(listed["data"].as_array().unwrap().len(), 1, "{listed}");
    let (status, _) = s
        .rest(
            "GET",
            &format!("/api/v1/messages/{a_msg}/"),
            Some(&s.operator),
            Some(&a),
            None,
        )
        .await;
    assert_eq!(status, 200, "the operator acting for A sees it");
    s.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_password_is_never_shown_stored_or_logged_in_clear() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let stderr_file = dir.path().join("server-stderr.log");
    let sink = Sink::start();
    let s = Server::start_logged(&data, CONFIG, &stderr_file, &[("POSTLEDGER_LOG", "info")]);
    let (_, key) = setup_tenant(&s, &[]).await;
    let password = format!("Pw-{}-zebra", uuid::Uuid::new_v4().simple());
    let (status, relay) = s
        .rest(
            "POST",
            "/api/v1/relays/",
            Some(&key),
            None,
            Some(json!({
                "name": "authed",
                "host": "127.0.0.1",
                "port": sink.port,
                "tls": "none",
                "priority": 1,
                "username": "mailer",
                "password": password,
            })),
        )
        .await;
    assert_eq!(status, 201, "{relay}");
    assert_eq!(relay["has_password"], true, "{relay}");
    assert_eq!(relay["username"], "mailer", "{relay}");
    assert!(!relay.to_string().contains(&password), "{relay}");
    let relay_id = relay["id"].as_str().unwrap().to_string();

    // A change that does not mention the password keeps it.
    let (status, patched) = s
        .rest(
            "PATCH",
            &format!("/api/v1/relays/{relay_id}/"),
            Some(&key),
            None,
            Some(json!({ "max_connections": 2 })),
        )
        .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["has_password"], true, "{patched}");
    for path in [
        format!("/api/v1/relays/{relay_id}/"),
        "/api/v1/relays/".to_string(),
    ] {
        let (status, body) = s.rest("GET", &path, Some(&key), None, None).await;
        assert_eq!(status, 200, "{body}");
        assert!(body.to_string().contains("\"has_password\":true"), "{body}");
        assert!(!body.to_string().contains(&password), "{body}");
    }

    // Mail goes out through it (authenticating), is deferred, and is refused.
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let sent_to = format!("ada.{tag}@example.test");
    let deferred_to = format!("tempfail1.{tag}@example.test");
    let rejected_to = format!("reject.{tag}@example.test");
    let sent = s.send_ok(&key, simple(&sent_to, "Through auth")).await;
    let deferred = s.send_ok(&key, simple(&deferred_to, "Twice")).await;
    let rejected = s.send_ok(&key, simple(&rejected_to, "Never")).await;
    wait_status(&s, &key, &sent, "sent", SLOW).await;
    wait_status(&s, &key, &deferred, "sent", SLOW).await;
    wait_status(&s, &key, &rejected, "failed", SLOW).await;
    assert_eq!(sink.arrived(2, SLOW).await.len(), 2);
    s.stop();

    // Nothing in the data folder holds the password: not the log, not a read model.
    let mut files = Vec::new();
    let mut stack = vec![data.clone()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                files.push(p);
            }
        }
    }
    let mut everything = Vec::new();
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        assert!(
            !contains(&bytes, password.as_bytes()),
            "{} holds the relay password in clear",
            f.display()
        );
        everything.extend_from_slice(&bytes);
    }
    // The search itself works: the log holds the recipient in clear.
    assert!(
        contains(&everything, sent_to.as_bytes()),
        "the data folder should hold the (clear) recipient; is the search blind?"
    );

    let log = std::fs::read_to_string(&stderr_file).unwrap();
    assert!(log.contains("listening on"), "stderr was captured: {log}");
    assert!(
        !log.contains(&password),
        "stderr holds the password:\n{log}"
    );
    for addr in [&sent_to, &deferred_to, &rejected_to] {
        assert!(!log.contains(addr.as_str()), "stderr holds {addr}:\n{log}");
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_relay_mail_goes_to_the_file_outbox() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_with(dir.path(), CONFIG);
    let (tenant, key) = setup_tenant(&s, &[]).await;
    let id = s
        .send_ok(&key, simple("ada@example.test", "Into the outbox"))
        .await;
    let m = wait_status(&s, &key, &id, "sent", SLOW).await;
    assert_eq!(m["relay"], "outbox", "{m}");
    let events = s.timeline(&key, &id).await;
    assert_eq!(
        types(&events),
        ["MessageQueued", "DeliveryAttempted", "MessageSent"],
        "{events:#?}"
    );
    assert_eq!(events[1]["data"]["relay"], "outbox");
    assert_eq!(events[1]["data"]["outcome"], "sent");
    assert!(events[1]["data"]["relay_id"].is_null(), "{}", events[1]);
    let path = dir
        .path()
        .join("outbox")
        .join(&tenant)
        .join(format!("{id}.eml"));
    let raw = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let parsed = MessageParser::default().parse(&raw).expect("parses");
    assert_eq!(parsed.subject(), Some("Into the outbox"));
    assert_eq!(
        parsed.message_id(),
        Some(format!("{id}@example.test").as_str())
    );
    assert_eq!(
        parsed
            .header_raw("X-Postledger-Message-Id")
            .map(|v| v.trim().trim_matches(['<', '>'])),
        Some(id.as_str())
    );
    assert_eq!(
        parsed
            .to()
            .and_then(|a| a.first())
            .and_then(|a| a.address()),
        Some("ada@example.test")
    );
    s.stop();
}

/// One request the test's HTTP receiver got.
#[derive(Clone, Debug)]
struct Hooked {
    request_line: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Hooked {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A minimal HTTP/1.1 receiver: answers 500 to the first `fail_first` requests, 200 after.
async fn start_receiver(fail_first: usize) -> (u16, Arc<Mutex<Vec<Hooked>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let got: Arc<Mutex<Vec<Hooked>>> = Arc::default();
    let seen = got.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                let head_end = loop {
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                    match conn.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
                let mut lines = head.split("\r\n");
                let request_line = lines.next().unwrap_or_default().to_string();
                let headers: Vec<(String, String)> = lines
                    .filter_map(|l| l.split_once(':'))
                    .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                    .collect();
                let len: usize = headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                    .and_then(|(_, v)| v.parse().ok())
                    .unwrap_or(0);
                while buf.len() < head_end + len {
                    match conn.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let body = buf[head_end..head_end + len].to_vec();
                let n = {
                    let mut seen = seen.lock().unwrap();
                    seen.push(Hooked {
                        request_line,
                        headers,
                        body,
                    });
                    seen.len()
                };
                let status = if n <= fail_first {
                    "500 Internal Server Error"
                } else {
                    "200 OK"
                };
                let answer =
                    format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                let _ = conn.write_all(answer.as_bytes()).await;
                let _ = conn.shutdown().await;
            });
        }
    });
    (port, got)
}

fn signature(secret: &str, timestamp: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1={}", hex::encode(mac.finalize().into_bytes()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_delivery_report_is_retried_until_the_receiver_takes_it() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start();
    let s = Server::start_with(dir.path(), CONFIG);
    let (_, key) = setup_tenant(&s, &[("primary", sink.port, 1)]).await;
    let (port, hooked) = start_receiver(1).await;
    let url = format!("http://127.0.0.1:{port}/hook");
    let (status, cb) = s
        .rest(
            "PUT",
            "/api/v1/callback/",
            Some(&key),
            None,
            Some(json!({ "url": url })),
        )
        .await;
    assert_eq!(status, 200, "{cb}");
    assert_eq!(cb["url"], url.as_str());
    let secret = cb["secret"].as_str().expect("the secret, once").to_string();
    assert!(secret.len() >= 32, "{secret}");
    let (status, shown) = s
        .rest("GET", "/api/v1/callback/", Some(&key), None, None)
        .await;
    assert_eq!(status, 200, "{shown}");
    assert_eq!(shown["url"], url.as_str());
    assert!(!shown.to_string().contains(&secret), "shown again: {shown}");

    let mut body = simple("ada@example.test", "Report me");
    body["tags"] = json!(["receipts"]);
    body["metadata"] = json!({ "order": 42 });
    let id = s.send_ok(&key, body).await;
    wait_status(&s, &key, &id, "sent", SLOW).await;
    let events = wait_events(&s, &key, &id, "CallbackAttempted", 2).await;
    // Longer than the callback schedule: no further try after the 200.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let got = hooked.lock().unwrap().clone();
    assert_eq!(got.len(), 2, "one 500, then one 200: {got:#?}");
    let sent_event = of_type(&events, "MessageSent")[0]["event_id"].clone();
    for h in &got {
        assert_eq!(h.request_line, "POST /hook HTTP/1.1");
        assert!(
            h.header("content-type")
                .is_some_and(|c| c.starts_with("application/json")),
            "{h:?}"
        );
        let ts = h.header("Postledger-Timestamp").expect("timestamp");
        let t: i64 = ts.parse().expect("unix seconds");
        assert!(
            (chrono::Utc::now().timestamp() - t).abs() < 60,
            "timestamp {t}"
        );
        let sig = h.header("Postledger-Signature").expect("signature");
        assert_eq!(
            sig,
            signature(&secret, ts, &h.body),
            "the signature verifies with the secret"
        );
        assert_ne!(sig, signature("whsec_wrong", ts, &h.body));
        let report: Value = serde_json::from_slice(&h.body).expect("a JSON body");
        assert_eq!(report["type"], "message.sent", "{report}");
        assert_eq!(report["message_id"], id.as_str(), "{report}");
        assert_eq!(report["tags"], json!(["receipts"]), "{report}");
        assert_eq!(report["metadata"], json!({ "order": 42 }), "{report}");
        assert_eq!(report["id"], sent_event, "{report}");
        assert_eq!(
            h.header("Postledger-Event-Id"),
            sent_event.as_str(),
            "{h:?}"
        );
    }
    assert_eq!(got[0].body, got[1].body, "a retry sends the same report");

    let events = s.timeline(&key, &id).await;
    let tries = of_type(&events, "CallbackAttempted");
    assert_eq!(tries.len(), 2, "{events:#?}");
    let (first, second) = (&tries[0]["data"], &tries[1]["data"]);
    assert_eq!(
        (
            &first["attempt"],
            &first["status"],
            &first["delivered"],
            &first["gave_up"]
        ),
        (&json!(1), &json!(500), &json!(false), &json!(false)),
        "{first}"
    );
    assert_eq!(
        (&second["attempt"], &second["status"], &second["delivered"]),
        (&json!(2), &json!(200), &json!(true)),
        "{second}"
    );
    for t in [first, second] {
        assert_eq!(t["report"], "sent", "{t}");
        assert_eq!(t["url"], url.as_str(), "{t}");
    }
    s.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_rate_limit_holds_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start();
    let s = Server::start_with(dir.path(), CONFIG);
    let (_, key) = setup_tenant(&s, &[]).await;
    let (status, relay) = s
        .rest(
            "POST",
            "/api/v1/relays/",
            Some(&key),
            None,
            Some(json!({
                "name": "metered",
                "host": "127.0.0.1",
                "port": sink.port,
                "tls": "none",
                "priority": 1,
                "per_minute": 2,
            })),
        )
        .await;
    assert_eq!(status, 201, "{relay}");
    assert_eq!(relay["per_minute"], 2);
    // The limit counts per calendar minute (UTC): the sends, the restart and the checks
    // must all fall inside one minute, or a new minute rightly lets the third through.
    let second = chrono::Utc::now().timestamp().rem_euclid(60);
    if second > 30 {
        tokio::time::sleep(Duration::from_millis(
            u64::try_from(60 - second).unwrap() * 1000 + 100,
        ))
        .await;
    }
    let started_minute = chrono::Utc::now().timestamp().div_euclid(60);
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(
            s.send_ok(&key, simple("ada@example.test", &format!("Metered {n}")))
                .await,
        );
    }
    sink.arrived(2, SLOW).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        sink.delivered().len(),
        2,
        "per_minute = 2 lets only 2 through"
    );
    let mut waiting = Vec::new();
    for id in &ids {
        let st = s.message(&key, id).await["status"]
            .as_str()
            .unwrap()
            .to_string();
        if st != "sent" {
            waiting.push((id.clone(), st));
        }
    }
    assert_eq!(waiting.len(), 1, "{waiting:?}");
    assert!(
        ["queued", "deferred"].contains(&waiting[0].1.as_str()),
        "a rate-limited message waits; it does not fail: {waiting:?}"
    );
    s.stop();

    let s = Server::start_with(dir.path(), CONFIG);
    let restarted = Instant::now();
    // The restarted dispatcher works: another tenant's unmetered relay delivers at once.
    let (_, other) = setup_tenant(&s, &[("open", sink.port, 1)]).await;
    let control = s
        .send_ok(&other, simple("grace@example.test", "Unmetered"))
        .await;
    wait_status(&s, &other, &control, "sent", SLOW).await;
    tokio::time::sleep(Duration::from_secs(2).saturating_sub(restarted.elapsed())).await;
    let ids: Vec<String> = sink.delivered().iter().map(pl_id).collect();
    assert_eq!(
        chrono::Utc::now().timestamp().div_euclid(60),
        started_minute,
        "the test crossed a minute boundary"
    );
    assert_eq!(ids.len(), 3, "{ids:?}");
    assert!(
        !ids.contains(&waiting[0].0),
        "a restart must not reset the relay's minute: {ids:?}"
    );
    let st = s.message(&key, &waiting[0].0).await;
    assert!(
        ["queued", "deferred"].contains(&st["status"].as_str().unwrap()),
        "{st}"
    );
    s.stop();
}
