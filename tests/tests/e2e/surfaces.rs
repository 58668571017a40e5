//! The send pipeline through its other surfaces: GraphQL (sender profiles, relays,
//! `sendEmail`, `message` with its timeline, `messages`, `cancelMessage`) and the CLI
//! (`send --eml` through the running server, `messages list|show` through it and directly
//! on the folder).
use std::time::Duration;

use serde_json::json;

use crate::sink::Sink;
use crate::support::{run, stderr, stdout, Server};

const CONFIG: &str = "retry_schedule_ms = [300]\n";

#[tokio::test]
async fn graphql_manages_senders_and_relays_and_sends() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = Sink::start();
    let s = Server::start_with(dir.path(), CONFIG);
    let tenant = s.create_tenant("Gql").await;
    let (_, key) = s.issue_key(&tenant, "gql", None).await;

    let d = s
        .ok(
            &key,
            "mutation { createSenderProfile(input: { email: \"Hello@Example.test\", name: \"Hello\", category: MARKETING }) { id email name category } }",
            json!({}),
        )
        .await;
    assert_eq!(d["createSenderProfile"]["email"], "hello@example.test");
    assert_eq!(d["createSenderProfile"]["category"], "MARKETING");
    let relay = s
        .ok(
            &key,
            "mutation($p: Int!) { createRelay(input: { name: \"sink\", host: \"127.0.0.1\", port: $p, tls: NONE, username: \"u\", password: \"s3cret-pass\" }) { id name hasPassword priority tls } }",
            json!({ "p": sink.port }),
        )
        .await;
    assert_eq!(relay["createRelay"]["hasPassword"], true);
    assert_eq!(relay["createRelay"]["tls"], "NONE");
    // The password is write-only: it is not even a field of the type.
    let code = s.err_code(&key, "{ relays { password } }", json!({})).await;
    assert!(!code.is_empty());
    // An update that leaves the password out keeps it. The sink offers AUTH and takes any
    // login, so the delivery below also shows the dispatcher could open the sealed password.
    let relay_id = relay["createRelay"]["id"].as_str().expect("id").to_string();
    let d = s
        .ok(
            &key,
            "mutation($id: ID!) { updateRelay(id: $id, input: { priority: 5 }) { hasPassword username priority } }",
            json!({ "id": relay_id }),
        )
        .await;
    assert_eq!(d["updateRelay"]["hasPassword"], true);
    assert_eq!(d["updateRelay"]["username"], "u");
    assert_eq!(d["updateRelay"]["priority"], 5);

    let d = s
        .ok(
            &key,
            "mutation { sendEmail(input: { from: { email: \"hello@example.test\" }, to: [{ email: \"gql@example.test\", name: \"G\" }], subject: \"Via GraphQL\", text: \"plain\", html: \"<b>rich</b>\", tags: [\"gql\"], priority: HIGH, metadata: { order: 7 }, idempotencyKey: \"g-1\" }) { id status duplicate } }",
            json!({}),
        )
        .await;
    let id = d["sendEmail"]["id"].as_str().expect("id").to_string();
    assert_eq!(d["sendEmail"]["status"], "QUEUED");
    assert_eq!(d["sendEmail"]["duplicate"], false);
    let delivered = sink.arrived(1, Duration::from_secs(20)).await;
    assert_eq!(
        delivered[0].header("Subject").as_deref(),
        Some("Via GraphQL")
    );

    // The same idempotency key again: the same message, no second delivery.
    let d = s
        .ok(
            &key,
            "mutation { sendEmail(input: { from: { email: \"hello@example.test\" }, to: [{ email: \"gql@example.test\", name: \"G\" }], subject: \"Via GraphQL\", text: \"plain\", html: \"<b>rich</b>\", tags: [\"gql\"], priority: HIGH, metadata: { order: 7 }, idempotencyKey: \"g-1\" }) { id duplicate } }",
            json!({}),
        )
        .await;
    assert_eq!(d["sendEmail"]["id"], id.as_str());
    assert_eq!(d["sendEmail"]["duplicate"], true);

    // message(id): state and timeline from the log.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let m = loop {
        let d = s
            .ok(
                &key,
                "query($id: ID!) { message(id: $id) { status category priority tags metadata relay lastCode timeline { type actor summary } } }",
                json!({ "id": id }),
            )
            .await;
        if d["message"]["status"] == "SENT" || std::time::Instant::now() > deadline {
            break d["message"].clone();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(m["status"], "SENT", "{m}");
    assert_eq!(
        m["category"], "MARKETING",
        "the sender profile's category: {m}"
    );
    assert_eq!(m["priority"], "HIGH");
    assert_eq!(m["metadata"]["order"], 7);
    assert_eq!(m["relay"], "sink");
    assert_eq!(m["lastCode"], 250);
    let types: Vec<&str> = m["timeline"]
        .as_array()
        .expect("timeline")
        .iter()
        .filter_map(|e| e["type"].as_str())
        .collect();
    assert_eq!(types, ["MessageQueued", "DeliveryAttempted", "MessageSent"]);
    assert_eq!(m["timeline"][2]["actor"], "system:dispatcher");
    assert!(m["timeline"][1]["summary"]
        .as_str()
        .unwrap_or_default()
        .contains("250"));

    // messages(filter): by status and tag; unknown sender refused with a stable code.
    let d = s
        .ok(
            &key,
            "{ messages(filter: { status: SENT, tag: \"gql\" }, first: 10) { edges { node { id } } pageInfo { hasNextPage } } }",
            json!({}),
        )
        .await;
    assert_eq!(d["messages"]["edges"][0]["node"]["id"], id.as_str());
    assert_eq!(d["messages"]["pageInfo"]["hasNextPage"], false);
    let d = s
        .ok(
            &key,
            "{ messages(filter: { status: FAILED }) { edges { node { id } } } }",
            json!({}),
        )
        .await;
    assert_eq!(d["messages"]["edges"].as_array().map(Vec::len), Some(0));
    let code = s
        .err_code(
            &key,
            "mutation { sendEmail(input: { from: { email: \"nobody@example.test\" }, to: [{ email: \"a@example.test\" }], subject: \"x\", text: \"y\" }) { id } }",
            json!({}),
        )
        .await;
    assert_eq!(code, "UNKNOWN_SENDER");

    // cancelMessage: a scheduled message is cancelled; a sent one cannot be.
    let later = (chrono::Utc::now() + chrono::Duration::seconds(60)).to_rfc3339();
    let d = s
        .ok(
            &key,
            "mutation($at: DateTime) { sendEmail(input: { from: { email: \"hello@example.test\" }, to: [{ email: \"later@example.test\" }], subject: \"later\", text: \"y\", scheduledAt: $at }) { id } }",
            json!({ "at": later }),
        )
        .await;
    let later_id = d["sendEmail"]["id"].as_str().expect("id").to_string();
    let d = s
        .ok(
            &key,
            "mutation($id: ID!) { cancelMessage(id: $id, reason: \"changed my mind\") { status } }",
            json!({ "id": later_id }),
        )
        .await;
    assert_eq!(d["cancelMessage"]["status"], "CANCELLED");
    let code = s
        .err_code(
            &key,
            "mutation($id: ID!) { cancelMessage(id: $id) { status } }",
            json!({ "id": id }),
        )
        .await;
    assert_eq!(code, "MESSAGE_ALREADY_FINAL");

    // Another tenant cannot see the message, nor tell it exists.
    let other = s.create_tenant("Other").await;
    let (_, other_key) = s.issue_key(&other, "other", None).await;
    let code = s
        .err_code(
            &other_key,
            "query($id: ID!) { message(id: $id) { id } }",
            json!({ "id": id }),
        )
        .await;
    assert_eq!(code, "MESSAGE_NOT_FOUND");
    let d = s
        .ok(
            &other_key,
            "{ senderProfiles { email } relays { name } }",
            json!({}),
        )
        .await;
    assert_eq!(d["senderProfiles"].as_array().map(Vec::len), Some(0));
    assert_eq!(d["relays"].as_array().map(Vec::len), Some(0));
}

#[tokio::test]
async fn the_cli_sends_an_eml_and_shows_the_queue() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let sink = Sink::start();
    let s = Server::start_with(d, CONFIG);
    let (tenant, _key) = crate::support::setup_tenant(&s, &[("sink", sink.port, 1)]).await;
    let eml = d.join("hello.eml");
    std::fs::write(
        &eml,
        "From: News <news@example.test>\r\nTo: Ada <ada@example.test>\r\nSubject: From a file\r\nX-Campaign: cli\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nHello from an eml.\r\n--b1\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=\"data.bin\"\r\nContent-Transfer-Encoding: base64\r\n\r\nAAECAwQF/w==\r\n--b1--\r\n",
    )
    .expect("write eml");
    let o = run(
        d,
        &[
            "send",
            "--tenant",
            &tenant,
            "--eml",
            eml.to_str().expect("path"),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("working through its API"),
        "{}",
        stderr(&o)
    );
    let id = stdout(&o);
    uuid::Uuid::parse_str(&id).expect("prints the message id");
    let delivered = sink.arrived(1, Duration::from_secs(20)).await;
    let msg = &delivered[0];
    assert_eq!(msg.header("Subject").as_deref(), Some("From a file"));
    assert_eq!(msg.header("X-Campaign").as_deref(), Some("cli"));
    assert_eq!(msg.rcpt_tos, ["ada@example.test"]);
    assert!(msg.text().contains("Hello from an eml."));
    assert!(msg.text().contains("filename=\"data.bin\""));
    assert!(msg.text().contains("AAECAwQF/w=="), "{}", msg.text());

    // A file whose From is not a sender profile is refused with the reason.
    let bad = d.join("bad.eml");
    std::fs::write(
        &bad,
        "From: x@elsewhere.test\r\nTo: a@example.test\r\nSubject: s\r\n\r\nbody\r\n",
    )
    .expect("write eml");
    let o = run(
        d,
        &[
            "send",
            "--tenant",
            &tenant,
            "--eml",
            bad.to_str().expect("path"),
        ],
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("UNKNOWN_SENDER"), "{}", stderr(&o));

    // messages list / show through the server.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let o = run(
            d,
            &["messages", "list", "--tenant", &tenant, "--status", "sent"],
        );
        assert!(o.status.success(), "{}", stderr(&o));
        if stdout(&o).contains(&id) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{}", stdout(&o));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let o = run(d, &["messages", "show", "--tenant", &tenant, &id]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("MessageQueued") && out.contains("MessageSent"),
        "{out}"
    );
    assert!(out.contains("system:dispatcher"), "{out}");

    // Directly on the folder once the server has stopped.
    s.stop();
    let o = run(d, &["messages", "show", "--tenant", &tenant, &id]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("working directly"), "{}", stderr(&o));
    assert!(stdout(&o).contains("MessageSent"), "{}", stdout(&o));
    let o = run(d, &["messages", "list", "--tenant", &tenant]);
    assert!(stdout(&o).contains(&id), "{}", stdout(&o));
}
