//! Delivery signals end to end: provider webhooks (each provider's sample payloads), the
//! signature modes and replay window, duplicates, bounce messages (RFC 3464), the webhook
//! log and its replay, suppressions that follow, malformed input, and one-click
//! unsubscribe from a link a real delivered message carries.
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use crate::sink::Sink;
use crate::support::{setup_tenant, wait_status, Server, SENDER};

const SLOW: Duration = Duration::from_secs(20);

fn fixture(path: &str) -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../inbound/tests/fixtures")
        .join(path);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn sign(secret: &str, ts: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(ts.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1={}", hex::encode(mac.finalize().into_bytes()))
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

async fn post(
    s: &Server,
    path: &str,
    key: Option<&str>,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Value) {
    s.rest_raw("POST", path, key, None, headers, Some(body.to_vec()))
        .await
}

async fn webhook_log(s: &Server, key: &str) -> Vec<Value> {
    let (status, body) = s
        .rest(
            "GET",
            "/api/v1/webhooks/log/?limit=500",
            Some(key),
            None,
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["data"].as_array().unwrap().clone()
}

async fn settings(s: &Server, key: &str, body: Value) -> Value {
    let (status, answer) = s
        .rest(
            "PUT",
            "/api/v1/signals/settings/",
            Some(key),
            None,
            Some(body),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    answer
}

fn generic(event_id: &str, kind: &str, recipient: &str, message: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "id": event_id,
        "type": kind,
        "recipient": recipient,
        "postledger_message_id": message,
        "bounce": { "hard": true, "status": "5.1.1", "diagnostic": "550 5.1.1 user unknown" }
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_provider_format_is_accepted_and_recorded_once() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let (_, key) = setup_tenant(&s, &[]).await;
    let cases: &[(&str, &str)] = &[
        ("generic", "generic/bounced.json"),
        ("generic", "generic/batch.json"),
        ("postmark", "postmark/bounce_hard.json"),
        ("postmark", "postmark/delivery.json"),
        ("postmark", "postmark/spam_complaint.json"),
        ("postmark", "postmark/open.json"),
        ("postmark", "postmark/click.json"),
        ("sendgrid", "sendgrid/all_events.json"),
        ("sendgrid", "sendgrid/bounce.json"),
        ("mailgun", "mailgun/failed_permanent.json"),
        ("mailgun", "mailgun/delivered.json"),
        ("mailgun", "mailgun/complained.json"),
        ("ses", "ses/sns_bounce_permanent.json"),
        ("ses", "ses/sns_complaint.json"),
        ("ses", "ses/sns_delivery.json"),
        ("ses", "ses/bare_bounce.json"),
    ];
    for (provider, file) in cases {
        let body = fixture(file);
        let path = format!("/api/v1/webhooks/inbound/{provider}");
        let (status, out) = post(&s, &path, Some(&key), &[], &body).await;
        assert_eq!(status, 202, "{file}: {out}");
        // (A sample may repeat an event of an earlier sample: that one is a duplicate.)
        let seen = out["recorded"].as_u64().unwrap() + out["duplicates"].as_u64().unwrap();
        assert!(seen >= 1, "{file} carried no event: {out}");
        // The messages are not ours: recorded, and answered 202 so providers stop retrying.
        assert_eq!(out["unmatched"].as_u64(), Some(seen), "{file}: {out}");
        // The same payload again is a duplicate of every event.
        let (status, again) = post(&s, &path, Some(&key), &[], &body).await;
        assert_eq!(status, 202, "{file}: {again}");
        assert_eq!(again["recorded"], 0, "{file}: {again}");
        assert_eq!(again["duplicates"].as_u64(), Some(seen), "{file}: {again}");
    }
    // An SNS subscription confirmation is accepted without signals.
    let (status, out) = post(
        &s,
        "/api/v1/webhooks/inbound/ses",
        Some(&key),
        &[],
        &fixture("ses/sns_subscription_confirmation.json"),
    )
    .await;
    assert_eq!((status, out["recorded"].as_u64()), (202, Some(0)), "{out}");
    let (status, out) = post(&s, "/api/v1/webhooks/inbound/nope", Some(&key), &[], b"{}").await;
    assert_eq!(
        (status, out["error"]["code"].as_str()),
        (404, Some("UNKNOWN_PROVIDER")),
        "{out}"
    );
    let log = webhook_log(&s, &key).await;
    assert_eq!(
        log.len(),
        cases.len() * 2 + 1,
        "every call is in the webhook log"
    );
    assert!(log.iter().all(|w| w["outcome"] == "accepted"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signature_modes_and_the_replay_window() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let (tenant, key) = setup_tenant(&s, &[]).await;
    let id = uuid::Uuid::now_v7().to_string();
    let path = "/api/v1/webhooks/inbound/generic";

    // Enforce: a secret is issued once; unsigned and badly signed calls are refused.
    let answer = settings(&s, &key, json!({ "signature_mode": "enforce" })).await;
    let secret = answer["webhook_secret"]
        .as_str()
        .expect("a secret")
        .to_string();
    assert_eq!(answer["signature_mode"], "enforce");
    let again = settings(&s, &key, json!({ "tolerance_secs": 300 })).await;
    assert!(again.get("webhook_secret").is_none(), "shown once: {again}");

    let body = generic("e-1", "delivered", "a@example.test", &id);
    let (status, out) = post(&s, path, Some(&key), &[], &body).await;
    assert_eq!(
        (status, out["error"]["code"].as_str()),
        (401, Some("UNAUTHENTICATED")),
        "{out}"
    );
    let ts = now().to_string();
    let bad = sign("not-the-secret", now(), &body);
    let (status, _) = post(
        &s,
        path,
        Some(&key),
        &[
            ("Postledger-Timestamp", &ts),
            ("Postledger-Signature", &bad),
        ],
        &body,
    )
    .await;
    assert_eq!(status, 401);
    // Outside the replay window, even a good signature is refused.
    let old = now() - 3600;
    let good_old = sign(&secret, old, &body);
    let (status, out) = post(
        &s,
        path,
        Some(&key),
        &[
            ("Postledger-Timestamp", &old.to_string()),
            ("Postledger-Signature", &good_old),
        ],
        &body,
    )
    .await;
    assert_eq!(status, 401, "{out}");
    assert_eq!(out["error"]["details"]["signature"], "expired", "{out}");
    // A good, fresh signature; with no API key at all, naming the tenant in the URL.
    let good = sign(&secret, now(), &body);
    let (status, out) = post(
        &s,
        &format!("{path}?tenant={tenant}"),
        None,
        &[
            ("Postledger-Timestamp", &ts),
            ("Postledger-Signature", &good),
        ],
        &body,
    )
    .await;
    assert_eq!(status, 202, "{out}");
    assert_eq!(
        (out["recorded"].as_u64(), out["signature"].as_str()),
        (Some(1), Some("ok")),
        "{out}"
    );
    // Refused calls recorded nothing but the refusal.
    let log = webhook_log(&s, &key).await;
    let outcomes: Vec<_> = log
        .iter()
        .map(|w| {
            (
                w["outcome"].as_str().unwrap(),
                w["signature"].as_str().unwrap(),
                w["recorded"].as_u64().unwrap(),
                w["payload_bytes"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            ("accepted", "ok", 1, body.len() as u64),
            ("rejected", "expired", 0, 0),
            ("rejected", "mismatch", 0, 0),
            ("rejected", "missing", 0, 0),
        ]
    );

    // Warn: a bad signature is accepted and marked.
    settings(&s, &key, json!({ "signature_mode": "warn" })).await;
    let body2 = generic("e-2", "opened", "a@example.test", &id);
    let (status, out) = post(
        &s,
        path,
        Some(&key),
        &[
            ("Postledger-Timestamp", &ts),
            ("Postledger-Signature", &bad),
        ],
        &body2,
    )
    .await;
    assert_eq!(
        (status, out["signature"].as_str()),
        (202, Some("mismatch")),
        "{out}"
    );
    // Off: not checked with a key; without a key there is no way in.
    settings(&s, &key, json!({ "signature_mode": "off" })).await;
    let body3 = generic("e-3", "clicked", "a@example.test", &id);
    let (status, out) = post(&s, path, Some(&key), &[], &body3).await;
    assert_eq!(
        (status, out["signature"].as_str()),
        (202, Some("not_checked")),
        "{out}"
    );
    let (status, _) = post(&s, &format!("{path}?tenant={tenant}"), None, &[], &body3).await;
    assert_eq!(status, 401);
    // Another tenant's id in the URL with this tenant's signature gets nowhere.
    let (other, _) = setup_tenant(&s, &[]).await;
    let (status, _) = post(
        &s,
        &format!("{path}?tenant={other}"),
        None,
        &[
            ("Postledger-Timestamp", &ts),
            ("Postledger-Signature", &good),
        ],
        &body,
    )
    .await;
    assert_eq!(status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hard_bounce_suppresses_the_address_and_the_next_send_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start();
    let s = Server::start_with(dir.path(), "retry_schedule_ms = [300]\n");
    let (_, key) = setup_tenant(&s, &[("sink", sink.port, 1)]).await;
    let id = s
        .send_ok(
            &key,
            json!({ "from": SENDER, "to": "Gone@Example.test", "subject": "Hi", "text": "x" }),
        )
        .await;
    wait_status(&s, &key, &id, "sent", SLOW).await;

    let body = generic("bounce-1", "bounced", "gone@example.test", &id);
    let (status, out) = post(
        &s,
        "/api/v1/webhooks/inbound/generic",
        Some(&key),
        &[],
        &body,
    )
    .await;
    assert_eq!(status, 202, "{out}");
    assert_eq!(
        (out["recorded"].as_u64(), out["unmatched"].as_u64()),
        (Some(1), Some(0)),
        "{out}"
    );

    // The signal is on the message's timeline.
    let events = s.timeline(&key, &id).await;
    let signal = events
        .iter()
        .find(|e| e["type"] == "SignalReceived")
        .unwrap_or_else(|| panic!("no signal in {events:#?}"));
    assert_eq!(signal["data"]["kind"], "bounced", "{signal}");
    assert_eq!(signal["data"]["hard"], true, "{signal}");

    // The address is suppressed, and a send to it (any case) is refused.
    let (status, answer) = s
        .send(
            &key,
            json!({ "from": SENDER, "to": "GONE@example.test", "subject": "Again", "text": "x" }),
        )
        .await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(answer["error"]["code"], "RECIPIENTS_SUPPRESSED", "{answer}");
    assert_eq!(
        answer["error"]["details"]["suppressed"][0]["reason"], "hard_bounce",
        "{answer}"
    );
    // With another recipient beside it, the message goes, and the answer says who was left out.
    let (status, answer) = s
        .send(
            &key,
            json!({ "from": SENDER, "to": ["ok@example.test", "gone@example.test"], "subject": "Both", "text": "x" }),
        )
        .await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(
        answer["suppressed"][0]["address"], "gone@example.test",
        "{answer}"
    );
    let id2 = answer["id"].as_str().unwrap().to_string();
    wait_status(&s, &key, &id2, "sent", SLOW).await;
    let delivered = sink.arrived(2, SLOW).await;
    assert_eq!(
        delivered[1].rcpt_tos,
        ["ok@example.test"],
        "only the other recipient"
    );

    // A soft bounce is recorded and suppresses nothing.
    let mut soft: Value =
        serde_json::from_slice(&generic("soft-1", "bounced", "ok@example.test", &id2)).unwrap();
    soft["bounce"]["hard"] = json!(false);
    let (status, _) = post(
        &s,
        "/api/v1/webhooks/inbound/generic",
        Some(&key),
        &[],
        &serde_json::to_vec(&soft).unwrap(),
    )
    .await;
    assert_eq!(status, 202);
    s.send_ok(
        &key,
        json!({ "from": SENDER, "to": "ok@example.test", "subject": "Still", "text": "x" }),
    )
    .await;

    // A complaint suppresses too, and counts toward the complaint rate.
    let body = generic("complaint-1", "complained", "ok@example.test", &id2);
    let (status, _) = post(
        &s,
        "/api/v1/webhooks/inbound/generic",
        Some(&key),
        &[],
        &body,
    )
    .await;
    assert_eq!(status, 202);
    let (status, answer) = s
        .send(
            &key,
            json!({ "from": SENDER, "to": "ok@example.test", "subject": "No", "text": "x" }),
        )
        .await;
    assert_eq!(
        (
            status,
            answer["error"]["details"]["suppressed"][0]["reason"].as_str()
        ),
        (422, Some("complaint")),
        "{answer}"
    );
    let (status, stats) = s
        .rest("GET", "/api/v1/signals/stats/", Some(&key), None, None)
        .await;
    assert_eq!(status, 200, "{stats}");
    assert_eq!(
        (
            stats["hard_bounces"].as_u64(),
            stats["soft_bounces"].as_u64(),
            stats["complaints"].as_u64()
        ),
        (Some(1), Some(1), Some(1)),
        "{stats}"
    );
    let sent = stats["sent"].as_u64().unwrap();
    assert!(sent >= 2, "{stats}");
    assert_eq!(
        stats["complaint_rate"].as_f64(),
        Some(1.0 / sent as f64),
        "{stats}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounce_messages_are_parsed_matched_by_verp_and_replayable_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start();
    let s = Server::start_with(
        dir.path(),
        "retry_schedule_ms = [300]\nbounce_domain = \"bounce.example.com\"\n",
    );
    let (tenant, key) = setup_tenant(&s, &[("sink", sink.port, 1)]).await;
    let id = s
        .send_ok(
            &key,
            json!({ "from": SENDER, "to": ["jane.doe@example.org", "old.account@example.org"], "subject": "Hi", "text": "x" }),
        )
        .await;
    wait_status(&s, &key, &id, "sent", SLOW).await;
    // The return path is the VERP address that names the message.
    let simple = uuid::Uuid::parse_str(&id).unwrap().simple().to_string();
    let d = sink.arrived(1, SLOW).await;
    assert_eq!(
        d[0].mail_from,
        format!("bounces+{simple}@bounce.example.com")
    );
    let raw = String::from_utf8(fixture("dsn/postfix_5_1_1.eml"))
        .unwrap()
        .replace(
            "0190c5a47b1e7c3d9f001234567890ab",
            &uuid::Uuid::parse_str(&id).unwrap().simple().to_string(),
        );
    let (status, out) = post(&s, "/api/v1/bounces/raw", Some(&key), &[], raw.as_bytes()).await;
    assert_eq!(status, 202, "{out}");
    assert_eq!(
        (out["recorded"].as_u64(), out["unmatched"].as_u64()),
        (Some(2), Some(0)),
        "{out}"
    );
    let (status, answer) = s
        .send(
            &key,
            json!({ "from": SENDER, "to": "jane.doe@example.org", "subject": "x", "text": "x" }),
        )
        .await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (422, Some("RECIPIENTS_SUPPRESSED")),
        "{answer}"
    );

    // Broken MIME is a clear 400 and only a rejection in the log.
    let (status, out) = post(
        &s,
        "/api/v1/bounces/raw",
        Some(&key),
        &[],
        b"not a bounce at all",
    )
    .await;
    assert_eq!(status, 400, "{out}");
    assert!(out["error"]["code"].as_str().is_some(), "{out}");

    // The operator replays the accepted DSN: everything in it is a duplicate now.
    let log = webhook_log(&s, &key).await;
    let accepted = log.iter().find(|w| w["outcome"] == "accepted").unwrap();
    let wid = accepted["webhook_id"].as_str().unwrap();
    let (status, _) = s
        .rest(
            "POST",
            &format!("/api/v1/webhooks/log/{wid}/replay/"),
            Some(&key),
            None,
            None,
        )
        .await;
    assert_eq!(status, 403, "a tenant key may not replay");
    let (status, out) = s
        .rest(
            "POST",
            &format!("/api/v1/webhooks/log/{wid}/replay/"),
            Some(&s.operator),
            Some(&tenant),
            None,
        )
        .await;
    assert_eq!(status, 202, "{out}");
    assert_eq!(
        (out["recorded"].as_u64(), out["duplicates"].as_u64()),
        (Some(0), Some(2)),
        "{out}"
    );
    let log = webhook_log(&s, &key).await;
    assert_eq!(log[0]["replay_of"], wid, "{:#?}", log[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_gets_a_clear_4xx_and_records_only_the_rejection() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let (_, key) = setup_tenant(&s, &[]).await;
    // A deterministic generator of bad bodies: broken JSON, wrong types, truncations of
    // real payloads, random bytes.
    let mut bodies: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"{".to_vec(),
        b"null".to_vec(),
        b"[]".to_vec(),
        b"42".to_vec(),
        b"\"x\"".to_vec(),
        br#"{"type": 7, "recipient": []}"#.to_vec(),
        br#"{"RecordType": "Bounce", "Email": 12}"#.to_vec(),
        br#"[{"event": "bounce", "email": {"a": 1}}]"#.to_vec(),
        br#"{"event-data": "nope"}"#.to_vec(),
        br#"{"Type": "Notification", "Message": "{not json"}"#.to_vec(),
        vec![0xff, 0xfe, 0x00, 0x7b],
    ];
    let real = fixture("postmark/bounce_hard.json");
    for cut in [1, real.len() / 3, real.len() / 2, real.len() - 2] {
        bodies.push(real[..cut].to_vec());
    }
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for n in 0..40 {
        let len = (n * 37) % 300 + 1;
        bodies.push(
            (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect(),
        );
    }
    let providers = ["generic", "postmark", "sendgrid", "mailgun", "ses"];
    let mut calls = 0;
    for (i, body) in bodies.iter().enumerate() {
        let provider = providers[i % providers.len()];
        let (status, out) = post(
            &s,
            &format!("/api/v1/webhooks/inbound/{provider}"),
            Some(&key),
            &[],
            body,
        )
        .await;
        calls += 1;
        assert!(
            (400..500).contains(&status),
            "{provider} body {i}: {status} {out}"
        );
        assert!(
            out["error"]["code"].is_string(),
            "{provider} body {i}: {out}"
        );
        let (status, out) = post(&s, "/api/v1/bounces/raw", Some(&key), &[], body).await;
        calls += 1;
        assert!((400..500).contains(&status), "dsn body {i}: {status} {out}");
    }
    // Too big is refused before it is read in full.
    let huge = vec![b'{'; 2 * 1024 * 1024];
    let (status, _) = post(
        &s,
        "/api/v1/webhooks/inbound/generic",
        Some(&key),
        &[],
        &huge,
    )
    .await;
    assert_eq!(status, 413);
    let log = webhook_log(&s, &key).await;
    assert_eq!(log.len(), calls, "one rejection per bad call");
    assert!(log
        .iter()
        .all(|w| w["outcome"] == "rejected" && w["recorded"] == 0 && w["payload_bytes"] == 0));
    // Paged newest first, 50 at a time, the pages add up to the whole log.
    let mut paged = Vec::new();
    let mut cursor: Option<u64> = None;
    loop {
        let q = cursor.map_or(String::new(), |c| format!("&cursor={c}"));
        let (status, body) = s
            .rest(
                "GET",
                &format!("/api/v1/webhooks/log/?limit=50{q}"),
                Some(&key),
                None,
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let data = body["data"].as_array().unwrap();
        assert!(data.len() <= 50);
        paged.extend(data.iter().cloned());
        match body["next_cursor"].as_u64() {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(paged, log, "the pages are the log, in the same order");
    // The server is still well.
    let (status, _) = s.rest("GET", "/healthz", None, None, None).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_click_unsubscribe_from_a_delivered_marketing_message() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start();
    let s = Server::start_with(dir.path(), "retry_schedule_ms = [300]\n");
    let (_, key) = setup_tenant(&s, &[("sink", sink.port, 1)]).await;
    let id = s
        .send_ok(
            &key,
            json!({ "from": SENDER, "to": "reader@example.test", "subject": "Sale", "text": "x", "category": "marketing" }),
        )
        .await;
    wait_status(&s, &key, &id, "sent", SLOW).await;
    let d = &sink.arrived(1, SLOW).await[0];
    assert_eq!(
        d.header("List-Unsubscribe-Post").as_deref(),
        Some("List-Unsubscribe=One-Click")
    );
    let header = d.header("List-Unsubscribe").expect("List-Unsubscribe");
    let url = header
        .split(['<', '>'])
        .find(|p| p.starts_with("http"))
        .unwrap_or_else(|| panic!("no https link in {header}"))
        .to_string();
    let path = url
        .split_once("/unsubscribe/")
        .map(|(_, t)| format!("/unsubscribe/{t}"))
        .unwrap();

    // A forged token is refused.
    let mut forged = path.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == 'A' { 'B' } else { 'A' });
    let (status, _) = s
        .rest_raw(
            "POST",
            &forged,
            None,
            None,
            &[],
            Some(b"List-Unsubscribe=One-Click".to_vec()),
        )
        .await;
    assert_eq!(status, 400);

    // GET changes nothing; the RFC 8058 POST unsubscribes at once, twice is once.
    let (status, page) = s.rest_raw("GET", &path, None, None, &[], None).await;
    assert_eq!(status, 200);
    assert!(
        page.as_str().unwrap().contains("id=\"unsubscribe\""),
        "{page}"
    );
    s.send_ok(&key, json!({ "from": SENDER, "to": "reader@example.test", "subject": "Sale 2", "text": "x", "category": "marketing" }))
        .await;
    for _ in 0..2 {
        let (status, page) = s
            .rest_raw(
                "POST",
                &path,
                None,
                None,
                &[],
                Some(b"List-Unsubscribe=One-Click".to_vec()),
            )
            .await;
        assert_eq!(status, 200, "{page}");
        assert!(page.as_str().unwrap().contains("id=\"done\""), "{page}");
    }
    // Marketing to the address is refused now; transactional mail still goes.
    let (status, answer) = s
        .send(&key, json!({ "from": SENDER, "to": "reader@example.test", "subject": "Sale 3", "text": "x", "category": "marketing" }))
        .await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (422, Some("RECIPIENTS_SUPPRESSED")),
        "{answer}"
    );
    assert_eq!(
        answer["error"]["details"]["suppressed"][0]["reason"], "unsubscribe",
        "{answer}"
    );
    let receipt = s
        .send_ok(&key, json!({ "from": SENDER, "to": "reader@example.test", "subject": "Receipt", "text": "x" }))
        .await;
    wait_status(&s, &key, &receipt, "sent", SLOW).await;
    let delivered = sink.delivered();
    let r = delivered
        .iter()
        .find(|d| d.parsed().subject() == Some("Receipt"))
        .expect("the receipt arrived");
    assert!(
        r.header("List-Unsubscribe").is_none(),
        "transactional mail has no unsubscribe link"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_unsubscribe_page_works_in_a_real_browser() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start();
    let s = Server::start_with(dir.path(), "retry_schedule_ms = [300]\n");
    let (_, key) = setup_tenant(&s, &[("sink", sink.port, 1)]).await;
    let id = s
        .send_ok(
            &key,
            json!({ "from": SENDER, "to": "browser@example.test", "subject": "News", "text": "x", "category": "marketing" }),
        )
        .await;
    wait_status(&s, &key, &id, "sent", SLOW).await;
    let header = sink.arrived(1, SLOW).await[0]
        .header("List-Unsubscribe")
        .expect("List-Unsubscribe");
    let url = header
        .split(['<', '>'])
        .find(|p| p.starts_with("http"))
        .expect("a link")
        .to_string();
    let browser = crate::browser::Browser::start().await;
    browser.goto(&url).await;
    assert!(browser.text("body").await.contains("browser@example.test"));
    browser.click("#unsubscribe").await;
    let done = browser.text("#done").await;
    assert!(done.contains("no more marketing email"), "{done}");
    let (status, answer) = s
        .send(&key, json!({ "from": SENDER, "to": "browser@example.test", "subject": "More", "text": "x", "category": "marketing" }))
        .await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (422, Some("RECIPIENTS_SUPPRESSED")),
        "{answer}"
    );
    // Coming back to the link shows the done page, with no button.
    browser.goto(&url).await;
    assert!(browser
        .text("#done")
        .await
        .contains("no more marketing email"));
}
