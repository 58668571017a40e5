//! The real adapters against a loopback server that answers in each provider's documented
//! format: what they send, what they make of the answer, and how failures are recorded.

mod common;

use std::time::{Duration, Instant};

use common::*;
use drafting::{DraftRecord, Drafter, ProviderConfig, ProviderKind};
use serde_json::json;

/// The record must never contain the API key, whatever happened.
fn assert_no_key(record: &DraftRecord) {
    let json = serde_json::to_string(record).expect("serialize");
    assert!(
        !json.contains(API_KEY),
        "the API key leaked into the record: {json}"
    );
    assert!(!format!("{record:?}").contains(API_KEY));
}

/// The system prompt states the declared variables and the locked block verbatim.
fn assert_rules_in_system(system: &str) {
    assert!(system.contains("{{ first_name }} (required"), "{system}");
    assert!(system.contains("The customer's first name"), "{system}");
    assert!(system.contains("{{ order_id }} (required"), "{system}");
    assert!(system.contains("{{ coupon }} (optional"), "{system}");
    assert!(system.contains("\"WELCOME10\""), "{system}");
    assert!(system.contains(&locked_block()), "{system}");
    assert!(system.contains("ONLY one JSON object"), "{system}");
}

fn assert_model_draft(record: &DraftRecord) {
    let content = record.content.as_ref().expect("a draft");
    assert_eq!(content.subject, "Your order {{ order_id }} has shipped");
    assert_eq!(
        content.preview.as_deref(),
        Some("Delivery takes 2-3 business days")
    );
    assert!(content
        .html
        .as_deref()
        .unwrap_or_default()
        .contains(&locked_block()));
    assert_eq!(
        content.text.as_deref(),
        Some("Hi {{ first_name }},\n\nDelivery takes 2-3 business days.\n")
    );
    assert_eq!(content.variables, variables());
    assert!(content.subject_variants.is_empty());
}

#[tokio::test]
async fn openai_success_sends_chat_completions_and_records_the_answer() {
    let server = FakeProvider::answering("/v1", 200, openai_completion(&model_draft())).await;
    let cfg = config(ProviderKind::OpenAi, &server.base_url);
    let record = Drafter::new().draft(&cfg, false, &request()).await;

    assert_model_draft(&record);
    assert_eq!(record.requested_provider, ProviderKind::OpenAi);
    assert_eq!(record.provider, ProviderKind::OpenAi);
    assert_eq!(record.model, "gpt-4o-mini-2024-07-18");
    assert!(!record.failed_over);
    assert_eq!(record.provider_error, None);
    assert_eq!(
        (record.usage.input_tokens, record.usage.output_tokens),
        (1117, 46)
    );
    assert_no_key(&record);

    let sent = server.only_request();
    assert_eq!(sent.method, "POST");
    assert_eq!(sent.path, "/v1/chat/completions");
    assert_eq!(
        sent.header("authorization"),
        Some(format!("Bearer {API_KEY}").as_str())
    );
    assert_eq!(sent.header("content-type"), Some("application/json"));
    assert_eq!(sent.header("x-api-key"), None);
    let body = sent.json();
    assert_eq!(body["model"], "gpt-4o-mini");
    assert_eq!(body["temperature"].as_f64(), Some(0.4));
    assert_eq!(body["max_tokens"], 4096);
    assert_eq!(body["response_format"], json!({"type": "json_object"}));
    let messages = body["messages"].as_array().expect("messages");
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[0]["role"], "system");
    assert_eq!(messages[1]["role"], "user");
    let system = messages[0]["content"].as_str().expect("system text");
    let user = messages[1]["content"].as_str().expect("user text");
    assert_rules_in_system(system);
    assert!(
        user.contains("Tell the customer that their order has shipped"),
        "{user}"
    );
    assert!(
        user.contains("Returns are free for 30 days <with receipt> & tags"),
        "{user}"
    );
    assert!(user.contains("Guaranteed next-day delivery"), "{user}");
    // The record holds exactly what was sent.
    assert_eq!(
        split_prompt(&record),
        (system.to_string(), user.to_string())
    );
}

#[tokio::test]
async fn deepseek_success_uses_the_openai_compatible_endpoint() {
    let server = FakeProvider::answering("", 200, deepseek_completion(&model_draft())).await;
    // A trailing slash on the base URL must not double the slash.
    let cfg = config(ProviderKind::DeepSeek, &format!("{}/", server.base_url));
    let record = Drafter::new().draft(&cfg, false, &request()).await;

    assert_model_draft(&record);
    assert_eq!(record.provider, ProviderKind::DeepSeek);
    assert_eq!(record.model, "deepseek-chat");
    assert_eq!(
        (record.usage.input_tokens, record.usage.output_tokens),
        (842, 77)
    );
    assert_no_key(&record);

    let sent = server.only_request();
    assert_eq!(sent.path, "/chat/completions");
    assert_eq!(
        sent.header("authorization"),
        Some(format!("Bearer {API_KEY}").as_str())
    );
    let body = sent.json();
    assert_eq!(body["model"], "deepseek-chat");
    assert_eq!(body["temperature"].as_f64(), Some(0.4));
    assert_eq!(body["response_format"]["type"], "json_object");
    assert_rules_in_system(body["messages"][0]["content"].as_str().expect("system"));
}

#[tokio::test]
async fn anthropic_success_sends_messages_and_joins_text_blocks() {
    let draft = model_draft();
    let (first, second) = draft.split_at(draft.len() / 2);
    let server = FakeProvider::answering("/v1", 200, anthropic_message(&[first, second])).await;
    let cfg = config(ProviderKind::Anthropic, &server.base_url);
    let record = Drafter::new().draft(&cfg, false, &request()).await;

    assert_model_draft(&record);
    assert_eq!(record.provider, ProviderKind::Anthropic);
    assert_eq!(record.model, "claude-sonnet-4-5-20250929");
    assert_eq!(
        (record.usage.input_tokens, record.usage.output_tokens),
        (2095, 503)
    );
    assert_no_key(&record);

    let sent = server.only_request();
    assert_eq!(sent.method, "POST");
    assert_eq!(sent.path, "/v1/messages");
    assert_eq!(sent.header("x-api-key"), Some(API_KEY));
    assert_eq!(sent.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(sent.header("authorization"), None);
    let body = sent.json();
    assert_eq!(body["model"], "claude-sonnet-4-5");
    assert_eq!(body["max_tokens"], 4096);
    assert_eq!(body["temperature"].as_f64(), Some(0.4));
    assert!(body.get("response_format").is_none());
    let system = body["system"].as_str().expect("system is a string");
    assert_rules_in_system(system);
    let messages = body["messages"].as_array().expect("messages");
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0]["role"], "user");
    let user = messages[0]["content"].as_str().expect("user text");
    assert_eq!(
        split_prompt(&record),
        (system.to_string(), user.to_string())
    );
}

struct ErrorCase {
    kind: ProviderKind,
    prefix: &'static str,
    status: u16,
    headers: &'static [(&'static str, &'static str)],
    body: serde_json::Value,
    /// What provider_error must contain.
    expect: &'static [&'static str],
}

fn error_cases() -> Vec<ErrorCase> {
    vec![
        ErrorCase {
            kind: ProviderKind::OpenAi,
            prefix: "/v1",
            status: 401,
            headers: &[("x-request-id", "req_4f1c2a")],
            body: json!({"error": {
                "message": "Incorrect API key provided: sk-test-************cdef. You can find your API key at https://platform.openai.com/account/api-keys.",
                "type": "invalid_request_error", "param": null, "code": "invalid_api_key"}}),
            expect: &[
                "openai answered HTTP 401",
                "Incorrect API key provided",
                "code invalid_api_key",
                "request id req_4f1c2a",
            ],
        },
        ErrorCase {
            kind: ProviderKind::OpenAi,
            prefix: "/v1",
            status: 429,
            headers: &[("retry-after", "20")],
            body: json!({"error": {
                "message": "Rate limit reached for gpt-4o-mini in organization org-abc on requests per min (RPM): Limit 3, Used 3, Requested 1. Please try again in 20s.",
                "type": "requests", "param": null, "code": "rate_limit_exceeded"}}),
            expect: &[
                "HTTP 429",
                "Rate limit reached for gpt-4o-mini",
                "retry after 20 s",
            ],
        },
        ErrorCase {
            kind: ProviderKind::OpenAi,
            prefix: "/v1",
            status: 500,
            headers: &[],
            body: json!({"error": {
                "message": "The server had an error while processing your request. Sorry about that!",
                "type": "server_error", "param": null, "code": null}}),
            expect: &[
                "HTTP 500",
                "The server had an error while processing your request",
            ],
        },
        ErrorCase {
            kind: ProviderKind::Anthropic,
            prefix: "/v1",
            status: 401,
            headers: &[],
            body: json!({"type": "error",
                "error": {"type": "authentication_error", "message": "invalid x-api-key"},
                "request_id": "req_011CSHoEeqs5C35K2UUqR7Fy"}),
            expect: &[
                "anthropic answered HTTP 401",
                "invalid x-api-key",
                "type authentication_error",
                "request id req_011CSHoEeqs5C35K2UUqR7Fy",
            ],
        },
        ErrorCase {
            kind: ProviderKind::Anthropic,
            prefix: "/v1",
            status: 429,
            headers: &[("retry-after", "7")],
            body: json!({"type": "error", "error": {"type": "rate_limit_error",
                "message": "This request would exceed the rate limit for your organization of 50 requests per minute."}}),
            expect: &[
                "HTTP 429",
                "exceed the rate limit",
                "type rate_limit_error",
                "retry after 7 s",
            ],
        },
        ErrorCase {
            kind: ProviderKind::Anthropic,
            prefix: "/v1",
            status: 500,
            headers: &[],
            body: json!({"type": "error", "error": {"type": "api_error", "message": "Internal server error"}}),
            expect: &["HTTP 500", "Internal server error", "type api_error"],
        },
        ErrorCase {
            kind: ProviderKind::DeepSeek,
            prefix: "",
            status: 401,
            headers: &[],
            // A provider echoing the full key: it must be scrubbed.
            body: json!({"error": {
                "message": format!("Authentication Fails, Your api key: {API_KEY} is invalid"),
                "type": "authentication_error", "param": null, "code": "invalid_request_error"}}),
            expect: &[
                "deepseek answered HTTP 401",
                "Authentication Fails",
                "[redacted]",
            ],
        },
        ErrorCase {
            kind: ProviderKind::DeepSeek,
            prefix: "",
            status: 429,
            headers: &[],
            body: json!({"error": {"message": "Rate Limit Reached", "type": "rate_limit_error",
                "param": null, "code": "rate_limit_exceeded"}}),
            expect: &["HTTP 429", "Rate Limit Reached"],
        },
        ErrorCase {
            kind: ProviderKind::DeepSeek,
            prefix: "",
            status: 500,
            headers: &[],
            body: json!({"error": {"message": "Server Error", "type": "server_error",
                "param": null, "code": "internal_error"}}),
            expect: &["HTTP 500", "Server Error"],
        },
    ]
}

#[tokio::test]
async fn provider_error_formats_are_read_into_provider_error() {
    let drafter = Drafter::new();
    for case in error_cases() {
        let server = FakeProvider::answering_with(
            case.prefix,
            case.status,
            case.headers,
            case.body.to_string(),
        )
        .await;
        let cfg = config(case.kind, &server.base_url);
        let record = drafter.draft(&cfg, false, &request()).await;
        let label = format!("{} {}", case.kind, case.status);

        let error = record
            .provider_error
            .clone()
            .unwrap_or_else(|| panic!("{label}: no error"));
        for part in case.expect {
            assert!(
                error.contains(part),
                "{label}: {part:?} missing from {error:?}"
            );
        }
        let reason = record.content.clone().expect_err(&label);
        assert!(reason.contains(&error), "{label}: {reason}");
        assert_eq!(record.provider, case.kind, "{label}");
        assert!(!record.failed_over, "{label}");
        assert_eq!(
            record.usage.input_tokens + record.usage.output_tokens,
            0,
            "{label}"
        );
        assert_eq!(
            server.requests().len(),
            1,
            "{label}: errors are not retried"
        );
        assert_no_key(&record);
    }
}

#[tokio::test]
async fn failover_uses_the_dummy_draft_and_keeps_the_reason() {
    let drafter = Drafter::new();
    let request = request();
    let dummy = drafter
        .draft(
            &ProviderConfig::defaults(ProviderKind::Dummy),
            false,
            &request,
        )
        .await;
    let expected = dummy.content.clone().expect("the dummy drafts");

    for kind in [
        ProviderKind::OpenAi,
        ProviderKind::Anthropic,
        ProviderKind::DeepSeek,
    ] {
        let server = FakeProvider::answering(
            "/v1",
            500,
            json!({"type": "error", "error": {"type": "api_error", "message": "Internal server error"}})
                .to_string(),
        )
        .await;
        let cfg = config(kind, &server.base_url);
        let record = drafter.draft(&cfg, true, &request).await;
        assert_eq!(record.requested_provider, kind);
        assert_eq!(record.provider, ProviderKind::Dummy, "{kind}");
        assert_eq!(record.model, "dummy-1");
        assert!(record.failed_over);
        let error = record
            .provider_error
            .as_deref()
            .expect("the reason is kept");
        assert!(
            error.contains("HTTP 500") && error.contains("Internal server error"),
            "{error}"
        );
        assert_eq!(record.content.as_ref(), Ok(&expected), "{kind}");
        assert_eq!(
            record.prompt, dummy.prompt,
            "the same prompt, whoever answers"
        );
        assert_eq!(record.usage, dummy.usage);
        assert_no_key(&record);
    }
}

#[tokio::test]
async fn unreachable_provider_fails_over_or_fails() {
    // A port that was just free: nothing listens there.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let cfg = config(ProviderKind::OpenAi, &format!("http://{addr}/v1"));
    let drafter = Drafter::new();

    let record = drafter.draft(&cfg, true, &request()).await;
    assert!(record.failed_over);
    assert!(record.content.is_ok());
    let error = record.provider_error.as_deref().expect("reason");
    assert!(error.starts_with("openai could not be reached"), "{error}");

    let record = drafter.draft(&cfg, false, &request()).await;
    assert!(!record.failed_over);
    assert_eq!(record.provider, ProviderKind::OpenAi);
    let reason = record.content.expect_err("no draft without failover");
    assert!(reason.contains("could not be reached"), "{reason}");
}

#[tokio::test]
async fn a_missing_api_key_is_a_provider_error_without_a_request() {
    let server = FakeProvider::answering("/v1", 200, openai_completion(&model_draft())).await;
    let mut cfg = config(ProviderKind::Anthropic, &server.base_url);
    cfg.api_key = None;
    let drafter = Drafter::new();

    let record = drafter.draft(&cfg, false, &request()).await;
    assert_eq!(
        record.provider_error.as_deref(),
        Some("no API key is configured for anthropic")
    );
    assert!(record.content.is_err());

    cfg.api_key = Some("   ".into());
    let record = drafter.draft(&cfg, true, &request()).await;
    assert!(record.failed_over);
    assert!(record.content.is_ok());
    assert!(
        server.requests().is_empty(),
        "nothing may be sent without a key"
    );
}

#[tokio::test]
async fn fenced_replies_parse() {
    let fenced = format!("```json\n{}\n```", model_draft());
    let server = FakeProvider::answering("/v1", 200, openai_completion(&fenced)).await;
    let record = Drafter::new()
        .draft(
            &config(ProviderKind::OpenAi, &server.base_url),
            false,
            &request(),
        )
        .await;
    assert_model_draft(&record);

    let prose = format!(
        "Here is your template:\n```\n{}\n```\nLet me know!",
        model_draft()
    );
    let server = FakeProvider::answering("/v1", 200, anthropic_message(&[&prose])).await;
    let record = Drafter::new()
        .draft(
            &config(ProviderKind::Anthropic, &server.base_url),
            false,
            &request(),
        )
        .await;
    assert_model_draft(&record);
}

#[tokio::test]
async fn a_reply_that_is_not_json_is_no_draft_and_no_failover() {
    let server = FakeProvider::answering(
        "/v1",
        200,
        openai_completion("Sorry, I can only answer in prose today."),
    )
    .await;
    let cfg = config(ProviderKind::OpenAi, &server.base_url);
    // Failover is on, but the provider did answer: its answer is just unusable.
    let record = Drafter::new().draft(&cfg, true, &request()).await;
    let reason = record.content.as_ref().expect_err("not a draft");
    assert!(reason.contains("not the JSON object asked for"), "{reason}");
    assert!(
        reason.contains("Sorry, I can only answer in prose"),
        "{reason}"
    );
    assert!(!record.failed_over);
    assert_eq!(record.provider, ProviderKind::OpenAi);
    assert_eq!(record.provider_error, None);
    assert_eq!(record.usage.input_tokens, 1117, "usage is still recorded");

    let server = FakeProvider::answering(
        "/v1",
        200,
        anthropic_message(&[r#"{"html": "<p>no subject</p>"}"#]),
    )
    .await;
    let cfg = config(ProviderKind::Anthropic, &server.base_url);
    let record = Drafter::new().draft(&cfg, false, &request()).await;
    let reason = record.content.expect_err("no subject");
    assert!(reason.contains("no \"subject\""), "{reason}");
}

#[tokio::test]
async fn a_provider_that_never_answers_times_out() {
    let server = FakeProvider::silent("/v1").await;
    let mut cfg = config(ProviderKind::Anthropic, &server.base_url);
    cfg.timeout = Duration::from_millis(300);
    let drafter = Drafter::new();

    let started = Instant::now();
    let record = drafter.draft(&cfg, false, &request()).await;
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(300), "{took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(
        record.provider_error.as_deref(),
        Some("anthropic did not answer within 300 ms")
    );
    assert!(record.content.is_err());
    assert!(record.latency_ms >= 300);
    assert_eq!(server.requests().len(), 1, "the request was sent");

    let record = drafter.draft(&cfg, true, &request()).await;
    assert!(record.failed_over);
    assert!(record.content.is_ok());
}
