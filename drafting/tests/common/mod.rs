//! Shared test fixtures: a request with variables and a locked section, and a tiny HTTP/1.1
//! server on 127.0.0.1 that records what it is sent and answers with a canned response
//! (or never answers). No test talks to anything but loopback.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use domain::template::{TemplateContent, TemplateVariable};
use drafting::{Brief, DraftRecord, DraftRequest, ProviderConfig, ProviderKind, Task};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const API_KEY: &str = "sk-test-0123456789abcdef";
pub const LOCKED_NAME: &str = "legal";
pub const LOCKED_BODY: &str =
    "\n<p style=\"font-size:11px\">Acme Ltd &middot; 1 Main Street &amp; Co. &lt;Springfield&gt;</p>\n";

pub fn locked_block() -> String {
    format!("{{# locked: {LOCKED_NAME} #}}{LOCKED_BODY}{{# endlocked #}}")
}

pub fn variables() -> Vec<TemplateVariable> {
    vec![
        TemplateVariable {
            name: "first_name".into(),
            required: true,
            default: None,
            description: Some("The customer's first name".into()),
        },
        TemplateVariable {
            name: "order_id".into(),
            required: true,
            default: None,
            description: Some("The order number".into()),
        },
        TemplateVariable {
            name: "coupon".into(),
            required: false,
            default: Some(json!("WELCOME10")),
            description: Some("Discount code for the next order".into()),
        },
    ]
}

pub fn brief() -> Brief {
    Brief {
        purpose: "Tell the customer that their order has shipped".into(),
        audience: Some("Customers who ordered in the web shop".into()),
        tone: Some("warm and brief".into()),
        call_to_action: Some("Track your parcel".into()),
        mandatory_facts: vec![
            "Delivery takes 2-3 business days".into(),
            "Returns are free for 30 days <with receipt> & tags".into(),
        ],
        prohibited_claims: vec!["Guaranteed next-day delivery".into()],
    }
}

pub fn request() -> DraftRequest {
    DraftRequest {
        template_key: "order_shipped".into(),
        template_name: "Order shipped".into(),
        category: "transactional".into(),
        task: Task::Generate(brief()),
        base: None,
        variables: variables(),
        locked_sections: BTreeMap::from([(LOCKED_NAME.to_string(), LOCKED_BODY.to_string())]),
        brand_voice: Some("Plain words. No exclamation marks.".into()),
        temperature: 0.4,
    }
}

/// A base version whose html holds the locked section in the middle.
pub fn base() -> TemplateContent {
    TemplateContent {
        subject: "Your order {{ order_id }} is on its way".into(),
        subject_variants: vec![],
        preview: Some("It left our warehouse today".into()),
        html: Some(format!(
            "<p>Hi {{{{ first_name }}}},</p>\n<p>Your order shipped.</p>\n{}\n<p>Thanks</p>\n",
            locked_block()
        )),
        text: Some("Hi {{ first_name }},\n\nYour order shipped.\n".into()),
        variables: variables(),
    }
}

/// What a well-behaved model answers: the JSON object asked for.
pub fn model_draft() -> String {
    json!({
        "subject": "Your order {{ order_id }} has shipped",
        "preview": "Delivery takes 2-3 business days",
        "html": format!("<p>Hi {{{{ first_name }}}},</p>\n<p>Delivery takes 2-3 business days.</p>\n{}\n", locked_block()),
        "text": "Hi {{ first_name }},\n\nDelivery takes 2-3 business days.\n"
    })
    .to_string()
}

pub fn config(kind: ProviderKind, base_url: &str) -> ProviderConfig {
    let mut cfg = ProviderConfig::defaults(kind);
    cfg.base_url = base_url.to_string();
    cfg.api_key = Some(API_KEY.to_string());
    cfg.timeout = Duration::from_secs(10);
    cfg
}

/// A full OpenAI chat.completion object, as documented.
pub fn openai_completion(content: &str) -> String {
    json!({
        "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
        "object": "chat.completion",
        "created": 1741570283,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content, "refusal": null, "annotations": []},
            "logprobs": null,
            "finish_reason": "stop"
        }],
        "usage": {
            "prompt_tokens": 1117,
            "completion_tokens": 46,
            "total_tokens": 1163,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0, "audio_tokens": 0,
                "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0
            }
        },
        "service_tier": "default",
        "system_fingerprint": "fp_06737a9306"
    })
    .to_string()
}

/// A full DeepSeek chat completion (OpenAI-compatible, with its cache counters).
pub fn deepseek_completion(content: &str) -> String {
    json!({
        "id": "930c60df-bf64-41c9-a88e-3ec75f81e00e",
        "object": "chat.completion",
        "created": 1705651092,
        "model": "deepseek-chat",
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content},
            "logprobs": null,
            "finish_reason": "stop"
        }],
        "usage": {
            "prompt_tokens": 842,
            "completion_tokens": 77,
            "total_tokens": 919,
            "prompt_tokens_details": {"cached_tokens": 0},
            "prompt_cache_hit_tokens": 0,
            "prompt_cache_miss_tokens": 842
        },
        "system_fingerprint": "fp_3a5770e1b4_prod0225"
    })
    .to_string()
}

/// A full Anthropic message object, as documented; the text may come in several blocks.
pub fn anthropic_message(texts: &[&str]) -> String {
    let content: Vec<Value> = texts
        .iter()
        .map(|t| json!({"type": "text", "text": t}))
        .collect();
    json!({
        "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5-20250929",
        "content": content,
        "stop_reason": "end_turn",
        "stop_sequence": null,
        "usage": {
            "input_tokens": 2095,
            "output_tokens": 503,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "service_tier": "standard"
        }
    })
    .to_string()
}

/// One request as the fake server saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    /// Lower-cased names.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).expect("the adapter sent a JSON body")
    }
}

#[derive(Clone)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

/// A loopback HTTP server standing in for a provider.
pub struct FakeProvider {
    /// `http://127.0.0.1:PORT` plus the prefix given at start.
    pub base_url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl FakeProvider {
    /// Answers every request with `status` and a JSON `body`.
    pub async fn answering(prefix: &str, status: u16, body: String) -> FakeProvider {
        Self::start(
            prefix,
            Some(Reply {
                status,
                headers: vec![],
                body,
            }),
        )
        .await
    }

    /// Like [`answering`](Self::answering), with extra response headers.
    pub async fn answering_with(
        prefix: &str,
        status: u16,
        headers: &[(&str, &str)],
        body: String,
    ) -> FakeProvider {
        let headers = headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        Self::start(
            prefix,
            Some(Reply {
                status,
                headers,
                body,
            }),
        )
        .await
    }

    /// Reads requests and never answers.
    pub async fn silent(prefix: &str) -> FakeProvider {
        Self::start(prefix, None).await
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }

    /// The single request the adapter sent.
    pub fn only_request(&self) -> Seen {
        let seen = self.requests();
        assert_eq!(seen.len(), 1, "expected exactly one request, got {seen:?}");
        seen.into_iter().next().expect("one request")
    }

    async fn start(prefix: &str, reply: Option<Reply>) -> FakeProvider {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let log = Arc::clone(&log);
                let reply = reply.clone();
                tokio::spawn(async move { serve(stream, log, reply).await });
            }
        });
        FakeProvider {
            base_url: format!("http://{addr}{prefix}"),
            seen,
        }
    }
}

async fn serve(mut stream: TcpStream, log: Arc<Mutex<Vec<Seen>>>, reply: Option<Reply>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let header_end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..header_end]).to_string();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap_or_default().split(' ');
    let method = request_line.next().unwrap_or_default().to_string();
    let path = request_line.next().unwrap_or_default().to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[header_end + 4..].to_vec();
    while body.len() < length {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    log.lock().expect("lock").push(Seen {
        method,
        path,
        headers,
        body: String::from_utf8_lossy(&body).to_string(),
    });

    let Some(reply) = reply else {
        // Hold the connection open without answering.
        tokio::time::sleep(Duration::from_secs(3600)).await;
        drop(stream);
        return;
    };
    let mut response = format!(
        "HTTP/1.1 {} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
        reply.status,
        reply.body.len()
    );
    for (name, value) in &reply.headers {
        response.push_str(&format!("{name}: {value}\r\n"));
    }
    response.push_str("\r\n");
    response.push_str(&reply.body);
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// The record as JSON with the latency zeroed, for byte comparisons.
pub fn without_latency(record: &DraftRecord) -> String {
    let mut record = record.clone();
    record.latency_ms = 0;
    serde_json::to_string(&record).expect("record serializes")
}

/// The system and user messages the record says were sent.
pub fn split_prompt(record: &DraftRecord) -> (String, String) {
    let rest = record
        .prompt
        .strip_prefix("[system]\n")
        .expect("prompt starts with [system]");
    let (system, user) = rest
        .split_once("\n\n[user]\n")
        .expect("prompt has a [user] part");
    (system.to_string(), user.to_string())
}
