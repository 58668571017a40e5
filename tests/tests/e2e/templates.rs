//! Templates end to end: versions and their review over REST and GraphQL, the validation
//! errors with their positions, locked sections, test renders, LLM drafting (the dummy
//! provider, and OpenAI's wire format served by a local HTTP server), and send-template
//! delivered to a real SMTP server.
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::sink::Sink;
use crate::support::{code, setup_tenant, wait_status, Server, SENDER};

const SLOW: Duration = Duration::from_secs(20);

/// Issues an API key with the approver role; returns its secret.
async fn approver_key(s: &Server, tenant: &str) -> String {
    let d = s
        .ok(
            &s.operator,
            "mutation($t: ID) { issueApiKey(tenantId: $t, label: \"reviewer\", role: APPROVER) { secret } }",
            json!({ "t": tenant }),
        )
        .await;
    d["issueApiKey"]["secret"]
        .as_str()
        .expect("secret")
        .to_string()
}

const FOOTER: &str = "<p>ACME Ltd, 1 Road, Town. Registered in England 123.</p>";

/// A realistic version: variables (one required, one with a default, one optional), a
/// loop, a conditional, escaping, and a locked legal footer.
fn version(subject: &str) -> Value {
    json!({
        "subject": subject,
        "preview": "Your order {{ order_id }} is on its way",
        "html": format!(
            "<h1>Hello {{{{ name }}}}</h1>\n<ul>{{% for i in items %}}<li>{{{{ i.title }}}} x{{{{ i.qty }}}}</li>{{% endfor %}}</ul>\n{{% if coupon %}}<p>Coupon: {{{{ coupon }}}}</p>{{% endif %}}\n{{# locked: footer #}}{FOOTER}{{# endlocked #}}"
        ),
        "text": "Hello {{ name }}\n{% for i in items %}- {{ i.title }} x{{ i.qty }}\n{% endfor %}Order {{ order_id }}",
        "variables": [
            { "name": "name", "required": true, "description": "first name" },
            { "name": "order_id", "required": true },
            { "name": "items", "default": [] },
            { "name": "coupon" }
        ]
    })
}

async fn create(s: &Server, key: &str, template: &str, category: &str) {
    let t = s
        .expect(
            "POST",
            "/templates/",
            key,
            Some(json!({
                "key": template,
                "name": "Order shipped",
                "category": category,
                "version": version("Order {{ order_id }} shipped"),
            })),
            201,
        )
        .await;
    assert_eq!(t["versions"][0]["status"], "draft", "{t}");
    assert_eq!(t["current_version"], Value::Null, "{t}");
}

/// Submits with `key` and approves with `approver`.
async fn approve(s: &Server, key: &str, approver: &str, template: &str, n: u32) -> Value {
    s.expect(
        "POST",
        &format!("/templates/{template}/versions/{n}/submit/"),
        key,
        None,
        200,
    )
    .await;
    s.expect(
        "POST",
        &format!("/templates/{template}/versions/{n}/approve/"),
        approver,
        Some(json!({ "note": "looks right" })),
        200,
    )
    .await
}

fn types(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["type"].as_str().unwrap_or("?").to_string())
        .collect()
}

async fn template_events(s: &Server, key: &str, template: &str) -> Vec<Value> {
    let a = s
        .expect(
            "GET",
            &format!("/templates/{template}/events/"),
            key,
            None,
            200,
        )
        .await;
    a["events"].as_array().expect("events").clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_goes_through_review_is_immutable_once_approved_and_rolls_back() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let (tenant, key) = setup_tenant(&s, &[]).await;
    let approver = approver_key(&s, &tenant).await;
    create(&s, &key, "order_shipped", "transactional").await;

    // A draft cannot be approved; a sending key cannot approve at all.
    let a = s
        .expect(
            "POST",
            "/templates/order_shipped/versions/1/approve/",
            &approver,
            None,
            409,
        )
        .await;
    assert_eq!(code(&a), "TEMPLATE_VERSION_STATE", "{a}");
    s.expect(
        "POST",
        "/templates/order_shipped/versions/1/submit/",
        &key,
        None,
        200,
    )
    .await;
    let a = s
        .expect(
            "POST",
            "/templates/order_shipped/versions/1/approve/",
            &key,
            None,
            403,
        )
        .await;
    assert_eq!(code(&a), "FORBIDDEN", "{a}");
    let v1 = s
        .expect(
            "POST",
            "/templates/order_shipped/versions/1/approve/",
            &approver,
            Some(json!({ "note": "legal checked" })),
            200,
        )
        .await;
    assert_eq!(v1["status"], "approved", "{v1}");
    assert_eq!(v1["current"], true, "{v1}");
    assert_eq!(v1["reviewed"]["note"], "legal checked", "{v1}");
    assert!(
        v1["reviewed"]["by"]
            .as_str()
            .unwrap()
            .starts_with("api_key:"),
        "{v1}"
    );

    // Approved is immutable: editing it is refused, and an edit makes a new draft.
    let a = s
        .expect(
            "PUT",
            "/templates/order_shipped/versions/1/",
            &key,
            Some(version("Changed")),
            409,
        )
        .await;
    assert_eq!(code(&a), "TEMPLATE_VERSION_STATE", "{a}");
    let v2 = s
        .expect(
            "POST",
            "/templates/order_shipped/versions/",
            &key,
            Some(json!({ "version": version("Shipped: {{ order_id }}") })),
            201,
        )
        .await;
    assert_eq!(
        (v2["version"].as_u64(), v2["based_on"].as_u64()),
        (Some(2), Some(1)),
        "{v2}"
    );
    assert_eq!(v2["status"], "draft", "{v2}");
    // The draft can be edited as often as needed.
    let v2 = s
        .expect(
            "PUT",
            "/templates/order_shipped/versions/2/",
            &key,
            Some(version("Shipped now: {{ order_id }}")),
            200,
        )
        .await;
    assert_eq!(v2["subject"], "Shipped now: {{ order_id }}", "{v2}");
    approve(&s, &key, &approver, "order_shipped", 2).await;
    let t = s
        .expect("GET", "/templates/order_shipped/", &key, None, 200)
        .await;
    assert_eq!(t["current_version"], 2, "{t}");
    assert_eq!(t["versions"][0]["status"], "archived", "{t}");
    assert_eq!(
        t["versions"][0]["subject"], "Order {{ order_id }} shipped",
        "{t}"
    );

    // Rollback: one call makes version 1 current again; 2 is archived.
    s.expect(
        "POST",
        "/templates/order_shipped/versions/1/make-current/",
        &key,
        None,
        403,
    )
    .await;
    let v1 = s
        .expect(
            "POST",
            "/templates/order_shipped/versions/1/make-current/",
            &approver,
            None,
            200,
        )
        .await;
    assert_eq!(v1["current"], true, "{v1}");
    let t = s
        .expect("GET", "/templates/order_shipped/", &key, None, 200)
        .await;
    assert_eq!(t["current_version"], 1, "{t}");
    assert_eq!(t["versions"][1]["status"], "archived", "{t}");
    // Making the current version current again changes nothing and is no error.
    let again = s
        .expect(
            "POST",
            "/templates/order_shipped/versions/1/make-current/",
            &approver,
            None,
            200,
        )
        .await;
    assert_eq!(again["current"], true, "{again}");

    // A rejected version records who and why, and cannot be approved afterwards.
    s.expect(
        "POST",
        "/templates/order_shipped/versions/",
        &key,
        Some(json!({ "version": version("v3 {{ order_id }}") })),
        201,
    )
    .await;
    s.expect(
        "POST",
        "/templates/order_shipped/versions/3/submit/",
        &key,
        None,
        200,
    )
    .await;
    let v3 = s
        .expect(
            "POST",
            "/templates/order_shipped/versions/3/reject/",
            &approver,
            Some(json!({ "note": "tone is off" })),
            200,
        )
        .await;
    assert_eq!(v3["status"], "rejected", "{v3}");
    assert_eq!(v3["reviewed"]["note"], "tone is off", "{v3}");
    s.expect(
        "POST",
        "/templates/order_shipped/versions/3/approve/",
        &approver,
        None,
        409,
    )
    .await;

    // The whole story is in the log, in order.
    let events = template_events(&s, &key, "order_shipped").await;
    assert_eq!(
        types(&events),
        [
            "TemplateCreated",
            "TemplateVersionDrafted",
            "TemplateVersionSubmitted",
            "TemplateVersionApproved",
            "TemplateVersionMadeCurrent",
            "TemplateVersionDrafted",
            "TemplateDraftEdited",
            "TemplateVersionSubmitted",
            "TemplateVersionApproved",
            "TemplateVersionMadeCurrent",
            "TemplateVersionMadeCurrent",
            "TemplateVersionDrafted",
            "TemplateVersionSubmitted",
            "TemplateVersionRejected",
        ]
    );

    // The listing, and another tenant sees nothing of it.
    let list = s.expect("GET", "/templates/", &key, None, 200).await;
    assert_eq!(list["data"][0]["key"], "order_shipped", "{list}");
    let (_, other) = setup_tenant(&s, &[]).await;
    let a = s
        .expect("GET", "/templates/order_shipped/", &other, None, 404)
        .await;
    assert_eq!(code(&a), "TEMPLATE_NOT_FOUND", "{a}");
    let list = s.expect("GET", "/templates/", &other, None, 200).await;
    assert_eq!(list["data"], json!([]), "{list}");
    // Creating the same key in the other tenant is fine: keys are per tenant.
    create(&s, &other, "order_shipped", "marketing").await;
    let a = s
        .expect(
            "POST",
            "/templates/order_shipped/versions/1/submit/",
            &other,
            None,
            200,
        )
        .await;
    assert_eq!(a["status"], "submitted", "{a}");
    let t = s
        .expect("GET", "/templates/order_shipped/", &key, None, 200)
        .await;
    assert_eq!(
        t["current_version"], 1,
        "the first tenant's template is untouched: {t}"
    );
    assert_eq!(t["category"], "transactional", "{t}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_templates_are_refused_with_part_line_and_column_and_locked_sections_hold() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let (tenant, key) = setup_tenant(&s, &[]).await;
    let approver = approver_key(&s, &tenant).await;

    // A syntax error on line 3 of the HTML.
    let mut bad = version("Hi");
    bad["html"] = json!("<p>one</p>\n<p>two</p>\n<p>{{ name </p>");
    let a = s
        .expect(
            "POST",
            "/templates/",
            &key,
            Some(json!({ "key": "broken", "name": "Broken", "version": bad })),
            422,
        )
        .await;
    assert_eq!(code(&a), "TEMPLATE_INVALID", "{a}");
    let issue = &a["error"]["details"]["issues"][0];
    assert_eq!(issue["part"], "html", "{a}");
    assert_eq!(issue["line"], 3, "{a}");
    assert!(issue["column"].as_u64().is_some_and(|c| c > 1), "{a}");
    assert_eq!(issue["code"], "TEMPLATE_SYNTAX", "{a}");
    // Nothing was saved.
    s.expect("GET", "/templates/broken/", &key, None, 404).await;

    // An undeclared variable in the text part.
    let mut bad = version("Hi");
    bad["text"] = json!("Hello {{ nmae }}");
    let a = s
        .expect(
            "POST",
            "/templates/",
            &key,
            Some(json!({ "key": "broken", "name": "Broken", "version": bad })),
            422,
        )
        .await;
    let issue = &a["error"]["details"]["issues"][0];
    assert_eq!(
        (issue["part"].as_str(), issue["code"].as_str()),
        (Some("text"), Some("UNDECLARED_VARIABLE")),
        "{a}"
    );
    assert!(issue["message"].as_str().unwrap().contains("nmae"), "{a}");

    // Locked sections: version 2 must keep version 1's footer.
    create(&s, &key, "legal", "marketing").await;
    approve(&s, &key, &approver, "legal", 1).await;
    let mut changed = version("Order {{ order_id }} shipped");
    changed["html"] = json!(changed["html"]
        .as_str()
        .unwrap()
        .replace("Registered in England 123", "Registered nowhere"));
    let a = s
        .expect(
            "POST",
            "/templates/legal/versions/",
            &key,
            Some(json!({ "version": changed.clone() })),
            422,
        )
        .await;
    assert_eq!(code(&a), "VALIDATION_FAILED", "{a}");
    assert_eq!(
        a["error"]["details"]["fields"][0]["field"], "locked_sections.footer",
        "{a}"
    );
    // Removing the section is caught too.
    let mut removed = version("x");
    removed["html"] = json!("<p>no footer</p>");
    let a = s
        .expect(
            "POST",
            "/templates/legal/versions/",
            &key,
            Some(json!({ "version": removed })),
            422,
        )
        .await;
    assert_eq!(
        a["error"]["details"]["fields"][0]["field"], "locked_sections.footer",
        "{a}"
    );
    // Saying so is not enough without the right: a sending key may not edit locked text.
    changed["edit_locked"] = json!(true);
    let a = s
        .expect(
            "POST",
            "/templates/legal/versions/",
            &key,
            Some(json!({ "version": changed.clone() })),
            403,
        )
        .await;
    assert_eq!(code(&a), "LOCKED_SECTION_EDIT_FORBIDDEN", "{a}");
    // An approver may, on purpose.
    let v2 = s
        .expect(
            "POST",
            "/templates/legal/versions/",
            &approver,
            Some(json!({ "version": changed })),
            201,
        )
        .await;
    assert!(
        v2["locked_sections"]["footer"]
            .as_str()
            .unwrap()
            .contains("Registered nowhere"),
        "{v2}"
    );
    let events = template_events(&s, &key, "legal").await;
    let drafted = events.last().unwrap();
    assert_eq!(drafted["type"], "TemplateVersionDrafted");
    assert_eq!(drafted["data"]["locked_edit"], true, "{drafted}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_renders_escape_html_record_their_context_and_pick_variants_per_recipient() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let (_, key) = setup_tenant(&s, &[]).await;
    let mut v = version("A: {{ order_id }}");
    v["subject_variants"] = json!([
        { "subject": "A: {{ order_id }}", "weight": 1 },
        { "subject": "B: your order {{ order_id }}", "weight": 1 }
    ]);
    s.expect(
        "POST",
        "/templates/",
        &key,
        Some(json!({ "key": "ab", "name": "AB", "version": v })),
        201,
    )
    .await;

    let ctx = json!({
        "name": "<script>alert(1)</script>",
        "order_id": "A-17",
        "items": [{ "title": "Tea & Biscuits", "qty": 2 }]
    });
    let r = s
        .expect(
            "POST",
            "/templates/ab/versions/1/render/",
            &key,
            Some(json!({ "context": ctx, "to": "ada@example.test" })),
            200,
        )
        .await;
    let html = r["html"].as_str().unwrap();
    assert!(html.contains("&lt;script&gt;"), "HTML is escaped: {html}");
    assert!(html.contains("Tea &amp; Biscuits x2"), "{html}");
    assert!(html.contains(FOOTER), "{html}");
    let text = r["text"].as_str().unwrap();
    assert!(
        text.contains("Hello <script>alert(1)</script>"),
        "text is not escaped: {text}"
    );
    assert_eq!(r["preview"], "Your order A-17 is on its way", "{r}");
    // The optional variable without a default was none; the context recorded shows it.
    assert_eq!(r["context"]["coupon"], Value::Null, "{r}");

    // The same recipient always gets the same variant; many recipients get both.
    let mut seen = [0u32; 2];
    for i in 0..40 {
        let to = format!("user{i}@example.test");
        let mut first = None;
        for _ in 0..2 {
            let r = s
                .expect(
                    "POST",
                    "/templates/ab/versions/1/render/",
                    &key,
                    Some(json!({ "context": ctx, "to": to })),
                    200,
                )
                .await;
            let variant = r["variant"].as_u64().expect("variant");
            let subject = r["subject"].as_str().unwrap();
            assert_eq!(subject.starts_with("B:"), variant == 1, "{r}");
            match first {
                None => first = Some(variant),
                Some(f) => assert_eq!(f, variant, "{to} got two variants"),
            }
        }
        seen[first.unwrap() as usize] += 1;
    }
    assert!(
        seen[0] >= 8 && seen[1] >= 8,
        "both variants are used: {seen:?}"
    );

    // Missing required variables are named; a runaway template stops with a clear error.
    let a = s
        .expect(
            "POST",
            "/templates/ab/versions/1/render/",
            &key,
            Some(json!({ "context": { "items": [] } })),
            422,
        )
        .await;
    assert_eq!(code(&a), "MISSING_VARIABLES", "{a}");
    assert_eq!(
        a["error"]["details"]["missing"],
        json!(["name", "order_id"]),
        "{a}"
    );

    let mut runaway = version("x");
    runaway["text"] =
        json!("{% for a in range(100000) %}{% for b in range(100000) %}x{% endfor %}{% endfor %}");
    runaway["variables"] = json!([]);
    runaway["html"] = json!("<p>hi</p>");
    runaway["preview"] = Value::Null;
    s.expect(
        "POST",
        "/templates/",
        &key,
        Some(json!({ "key": "runaway", "name": "Runaway", "version": runaway })),
        201,
    )
    .await;
    let started = std::time::Instant::now();
    let a = s
        .expect(
            "POST",
            "/templates/runaway/versions/1/render/",
            &key,
            None,
            422,
        )
        .await;
    assert_eq!(code(&a), "RENDER_LIMIT_EXCEEDED", "{a}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the limit stopped it"
    );

    // Each successful test render is on the log with the exact context used.
    let events = template_events(&s, &key, "ab").await;
    let renders: Vec<_> = events
        .iter()
        .filter(|e| e["type"] == "TemplateRendered")
        .collect();
    assert_eq!(renders.len(), 81, "one record per successful render");
    assert_eq!(
        renders[0]["data"]["context"]["name"],
        "<script>alert(1)</script>"
    );
    assert_eq!(renders[0]["data"]["version"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_template_renders_the_current_approved_version_and_delivers_it() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start();
    let s = Server::start_with(dir.path(), "retry_schedule_ms = [300]\n");
    let (tenant, key) = setup_tenant(&s, &[("sink", sink.port, 1)]).await;
    let approver = approver_key(&s, &tenant).await;
    create(&s, &key, "order_shipped", "transactional").await;

    let send = |context: Value| {
        json!({
            "template": "order_shipped",
            "from": SENDER,
            "to": "ada@example.test",
            "context": context,
            "tags": ["orders"],
        })
    };
    let ctx = json!({
        "name": "Ada & co",
        "order_id": "A-17",
        "items": [{ "title": "Tea", "qty": 2 }, { "title": "Cups", "qty": 6 }],
        "coupon": "SPRING"
    });
    // Only an approved version is ever sent; a draft is not.
    let a = s
        .expect(
            "POST",
            "/messages/send-template/",
            &key,
            Some(send(ctx.clone())),
            422,
        )
        .await;
    assert_eq!(code(&a), "TEMPLATE_NOT_APPROVED", "{a}");
    approve(&s, &key, &approver, "order_shipped", 1).await;
    // A new draft does not change what is sent.
    s.expect(
        "POST",
        "/templates/order_shipped/versions/",
        &key,
        Some(json!({ "version": version("DRAFT {{ order_id }}") })),
        201,
    )
    .await;

    let a = s
        .expect(
            "POST",
            "/messages/send-template/",
            &key,
            Some(send(json!({ "items": [] }))),
            422,
        )
        .await;
    assert_eq!(code(&a), "MISSING_VARIABLES", "{a}");
    assert_eq!(
        a["error"]["details"]["missing"],
        json!(["name", "order_id"]),
        "{a}"
    );
    let a = s
        .expect(
            "POST",
            "/messages/send-template/",
            &key,
            Some(json!({ "template": "nope", "from": SENDER, "to": "a@example.test" })),
            422,
        )
        .await;
    assert_eq!(code(&a), "TEMPLATE_NOT_FOUND", "{a}");

    let (status, receipt) = s
        .rest_raw(
            "POST",
            "/api/v1/messages/send-template/",
            Some(&key),
            None,
            &[("Idempotency-Key", "ship-A-17")],
            Some(serde_json::to_vec(&send(ctx.clone())).unwrap()),
        )
        .await;
    assert_eq!(status, 202, "{receipt}");
    let id = receipt["id"].as_str().unwrap().to_string();
    // A retry with the same key and body is the same message.
    let (status, again) = s
        .rest_raw(
            "POST",
            "/api/v1/messages/send-template/",
            Some(&key),
            None,
            &[("Idempotency-Key", "ship-A-17")],
            Some(serde_json::to_vec(&send(ctx.clone())).unwrap()),
        )
        .await;
    assert_eq!(
        (status, again["id"].as_str()),
        (200, Some(id.as_str())),
        "{again}"
    );

    wait_status(&s, &key, &id, "sent", SLOW).await;
    let delivered = sink.arrived(1, SLOW).await;
    assert_eq!(delivered.len(), 1, "exactly one delivery");
    let d = &delivered[0];
    let parsed = d.parsed();
    assert_eq!(parsed.subject(), Some("Order A-17 shipped"));
    let html = parsed.body_html(0).expect("html part").to_string();
    assert!(html.contains("<h1>Hello Ada &amp; co</h1>"), "{html}");
    assert!(html.contains("<li>Tea x2</li><li>Cups x6</li>"), "{html}");
    assert!(html.contains("Coupon: SPRING"), "{html}");
    assert!(html.contains(FOOTER), "{html}");
    assert!(
        html.contains("Your order A-17 is on its way"),
        "the preheader: {html}"
    );
    let text = parsed.body_text(0).expect("text part").to_string();
    assert!(text.contains("Hello Ada & co"), "{text}");
    assert!(text.contains("- Cups x6"), "{text}");

    // MessageQueued names the template, version and variant.
    let events = s.timeline(&key, &id).await;
    let queued = &events[0];
    assert_eq!(queued["type"], "MessageQueued");
    assert_eq!(
        queued["data"]["template"],
        json!({ "key": "order_shipped", "version": 1 }),
        "{queued}"
    );
}

/// Answers every HTTP request with `status` and `body`, like OpenAI's API would.
async fn fake_openai(status: u16, body: Value) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let body = serde_json::to_vec(&body).unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            let body = body.clone();
            tokio::spawn(async move {
                // Read the request head and body (Content-Length) before answering.
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                loop {
                    let Ok(n) = conn.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text[..end]
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case("content-length")
                                    .then(|| v.trim().parse::<usize>().ok())?
                            })
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + len {
                            break;
                        }
                    }
                }
                let head = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = conn.write_all(head.as_bytes()).await;
                let _ = conn.write_all(&body).await;
            });
        }
    });
    port
}

fn chat_completion(content: &str) -> Value {
    json!({
        "id": "chatcmpl-123",
        "object": "chat.completion",
        "created": 1_741_570_283,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [{
            "index": 0,
            "message": { "role": "assistant", "content": content, "refusal": null },
            "logprobs": null,
            "finish_reason": "stop"
        }],
        "usage": { "prompt_tokens": 512, "completion_tokens": 128, "total_tokens": 640 }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drafting_saves_valid_drafts_for_review_and_records_every_call() {
    // A model that invents a variable, and one that is down.
    let invents = fake_openai(
        200,
        chat_completion(
            &json!({
                "subject": "Order {{ order_id }}",
                "preview": "p",
                "html": "<p>Hi {{ first_name }}</p>",
                "text": "Hi {{ first_name }}"
            })
            .to_string(),
        ),
    )
    .await;
    let down = crate::sink::dead_port();
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_with(
        dir.path(),
        &format!(
            "[llm.openai]\nbase_url = \"http://127.0.0.1:{invents}/v1\"\napi_key = \"sk-test-not-real\"\n\
             [llm.anthropic]\nbase_url = \"http://127.0.0.1:{down}/v1\"\napi_key = \"sk-ant-test\"\ntimeout_ms = 2000\n"
        ),
    );
    let (tenant, key) = setup_tenant(&s, &[]).await;
    let approver = approver_key(&s, &tenant).await;
    create(&s, &key, "order_shipped", "transactional").await;
    approve(&s, &key, &approver, "order_shipped", 1).await;

    let brief = json!({
        "purpose": "Tell the customer their order shipped",
        "audience": "customers",
        "tone": "warm",
        "call_to_action": "Track the parcel",
        "mandatory_facts": ["Delivery takes 2-3 days"],
        "prohibited_claims": ["free shipping"]
    });
    // The default provider is the deterministic dummy: a valid draft is saved for review.
    let out = s
        .expect(
            "POST",
            "/templates/order_shipped/drafts/generate/",
            &key,
            Some(json!({ "brief": brief })),
            201,
        )
        .await;
    assert_eq!(
        (out["version"].as_u64(), out["provider"].as_str()),
        (Some(2), Some("dummy")),
        "{out}"
    );
    let v2 = s
        .expect(
            "GET",
            "/templates/order_shipped/versions/2/",
            &key,
            None,
            200,
        )
        .await;
    assert_eq!(
        (v2["status"].as_str(), v2["source"].as_str()),
        (Some("draft"), Some("llm")),
        "{v2}"
    );
    assert!(
        v2["html"]
            .as_str()
            .unwrap()
            .contains("Delivery takes 2-3 days"),
        "{v2}"
    );
    assert!(
        v2["html"].as_str().unwrap().contains(FOOTER),
        "the locked footer is kept: {v2}"
    );
    let t = s
        .expect("GET", "/templates/order_shipped/", &key, None, 200)
        .await;
    assert_eq!(
        t["current_version"], 1,
        "a draft is never current without approval: {t}"
    );

    // Revise a version with an instruction.
    let out = s
        .expect(
            "POST",
            "/templates/order_shipped/versions/2/revise/",
            &key,
            Some(json!({ "instruction": "Mention the tracking page" })),
            201,
        )
        .await;
    assert_eq!(out["version"], 3, "{out}");
    let v3 = s
        .expect(
            "GET",
            "/templates/order_shipped/versions/3/",
            &key,
            None,
            200,
        )
        .await;
    assert!(
        v3["html"]
            .as_str()
            .unwrap()
            .contains("Mention the tracking page"),
        "{v3}"
    );
    assert_eq!(v3["based_on"], 2, "{v3}");

    // OpenAI's answer uses an undeclared variable: not saved, but recorded.
    let a = s
        .expect(
            "POST",
            "/templates/order_shipped/drafts/generate/",
            &key,
            Some(json!({ "brief": brief, "provider": "openai" })),
            422,
        )
        .await;
    assert_eq!(code(&a), "DRAFT_INVALID", "{a}");
    let d = &a["error"]["details"];
    assert_eq!(
        (d["provider"].as_str(), d["version"].as_u64()),
        (Some("openai"), None),
        "{a}"
    );
    assert_eq!(d["model"], "gpt-4o-mini-2024-07-18", "{a}");
    assert_eq!(
        (d["input_tokens"].as_u64(), d["output_tokens"].as_u64()),
        (Some(512), Some(128)),
        "{a}"
    );
    assert!(d["issues"].to_string().contains("first_name"), "{a}");

    // Anthropic is down: with failover (the default) the dummy answers and the record says so.
    let out = s
        .expect(
            "POST",
            "/templates/order_shipped/drafts/generate/",
            &key,
            Some(json!({ "brief": brief, "provider": "anthropic" })),
            201,
        )
        .await;
    assert_eq!(
        (
            out["requested_provider"].as_str(),
            out["provider"].as_str(),
            out["failed_over"].as_bool()
        ),
        (Some("anthropic"), Some("dummy"), Some(true)),
        "{out}"
    );
    assert!(
        out["provider_error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "{out}"
    );
    // Without failover nothing is saved.
    s.expect(
        "PUT",
        "/drafting/",
        &key,
        Some(json!({ "provider": "anthropic", "failover": false, "brand_voice": "plain" })),
        200,
    )
    .await;
    let a = s
        .expect(
            "POST",
            "/templates/order_shipped/drafts/generate/",
            &key,
            Some(json!({ "brief": brief })),
            422,
        )
        .await;
    assert_eq!(
        a["error"]["details"]["requested_provider"], "anthropic",
        "{a}"
    );
    assert_eq!(a["error"]["details"]["failed_over"], false, "{a}");

    // Every call is on the log with provider, model, prompt, usage, latency and result.
    let events = template_events(&s, &key, "order_shipped").await;
    let records: Vec<_> = events
        .iter()
        .filter(|e| e["type"] == "TemplateDraftGenerated")
        .map(|e| &e["data"])
        .collect();
    assert_eq!(records.len(), 5, "{records:#?}");
    let saved: Vec<_> = records.iter().map(|r| r["saved_as"].as_u64()).collect();
    assert_eq!(saved, [Some(2), Some(3), None, Some(4), None]);
    assert!(records[0]["prompt"]
        .as_str()
        .unwrap()
        .contains("Delivery takes 2-3 days"));
    assert!(records[0]["prompt"]
        .as_str()
        .unwrap()
        .contains("free shipping"));
    assert_eq!(records[2]["provider"], "openai");
    assert_eq!(records[2]["input_tokens"], 512);
    assert!(records[2]["issues"].to_string().contains("first_name"));
    assert!(
        records[4]["prompt"].as_str().unwrap().contains("plain"),
        "brand voice: {}",
        records[4]
    );
    assert!(records.iter().all(|r| r["latency_ms"].is_u64()));
    // No key ever reaches the log.
    assert!(!events
        .iter()
        .any(|e| e.to_string().contains("sk-test-not-real")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graphql_covers_the_template_lifecycle_and_send_template() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start();
    let s = Server::start_with(dir.path(), "retry_schedule_ms = [300]\n");
    let (tenant, key) = setup_tenant(&s, &[("sink", sink.port, 1)]).await;
    let approver = approver_key(&s, &tenant).await;
    let d = s
        .ok(
            &key,
            r#"mutation($v: TemplateVersionInput!) {
                 createTemplate(input: { key: "welcome", name: "Welcome", category: TRANSACTIONAL, version: $v }) {
                   key currentVersion versions { number status source }
                 }
               }"#,
            json!({ "v": {
                "subject": "Welcome {{ name }}",
                "html": "<p>Hi {{ name }}</p>",
                "text": "Hi {{ name }}",
                "variables": [{ "name": "name", "required": true }]
            }}),
        )
        .await;
    assert_eq!(
        d["createTemplate"],
        json!({ "key": "welcome", "currentVersion": null, "versions": [{ "number": 1, "status": "DRAFT", "source": "HUMAN" }] })
    );
    s.ok(
        &key,
        r#"mutation { submitTemplateVersion(key: "welcome", version: 1) { status } }"#,
        json!({}),
    )
    .await;
    let code = s
        .err_code(
            &key,
            r#"mutation { approveTemplateVersion(key: "welcome", version: 1) { status } }"#,
            json!({}),
        )
        .await;
    assert_eq!(code, "FORBIDDEN");
    let d = s
        .ok(
            &approver,
            r#"mutation { approveTemplateVersion(key: "welcome", version: 1, note: "ok") { status current reviewed { note } } }"#,
            json!({}),
        )
        .await;
    assert_eq!(
        d["approveTemplateVersion"],
        json!({ "status": "APPROVED", "current": true, "reviewed": { "note": "ok" } })
    );
    let d = s
        .ok(
            &key,
            r#"mutation { renderTemplate(key: "welcome", version: 1, context: { name: "Ada" }) { subject html variant } }"#,
            json!({}),
        )
        .await;
    assert_eq!(
        d["renderTemplate"],
        json!({ "subject": "Welcome Ada", "html": "<p>Hi Ada</p>", "variant": null })
    );
    let code = s
        .err_code(
            &key,
            r#"mutation { sendTemplateEmail(input: { template: "welcome", from: { email: "news@example.test" }, to: [{ email: "ada@example.test" }], context: {} }) { id } }"#,
            json!({}),
        )
        .await;
    assert_eq!(code, "MISSING_VARIABLES");
    let d = s
        .ok(
            &key,
            r#"mutation { sendTemplateEmail(input: { template: "welcome", from: { email: "news@example.test" }, to: [{ email: "ada@example.test" }], context: { name: "Ada" } }) { id status } }"#,
            json!({}),
        )
        .await;
    let id = d["sendTemplateEmail"]["id"].as_str().unwrap().to_string();
    wait_status(&s, &key, &id, "sent", SLOW).await;
    let delivered = sink.arrived(1, SLOW).await;
    assert_eq!(delivered[0].parsed().subject(), Some("Welcome Ada"));

    let d = s
        .ok(
            &key,
            r#"{ template(key: "welcome") { currentVersion versions { number status } }
                 templates(first: 10) { edges { node { key } } pageInfo { hasNextPage } } }"#,
            json!({}),
        )
        .await;
    assert_eq!(d["template"]["currentVersion"], 1);
    assert_eq!(d["templates"]["edges"][0]["node"]["key"], "welcome");
    let code = s
        .err_code(&key, r#"{ template(key: "nope") { key } }"#, json!({}))
        .await;
    assert_eq!(code, "TEMPLATE_NOT_FOUND");
    let d = s
        .ok(
            &key,
            r#"mutation { generateTemplateDraft(key: "welcome", brief: { purpose: "Welcome new users" }) { version provider failedOver } }"#,
            json!({}),
        )
        .await;
    assert_eq!(
        d["generateTemplateDraft"],
        json!({ "version": 2, "provider": "dummy", "failedOver": false })
    );
}
