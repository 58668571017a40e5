//! HTTP adapters for the real providers. Each turns (system, user) into one request in the
//! provider's own format and returns the reply text and token usage, or a
//! [`ProviderError`] whose message says what the provider said (status, its error message,
//! type/code, request id) so an operator can act on it, with the API key scrubbed out.
//!
//! OpenAI and DeepSeek share the chat-completions format; Anthropic has the messages
//! format. Redirects are not followed: an API endpoint never redirects, and following one
//! could send the `x-api-key` header to another host.

use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use reqwest::{Client, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;

use crate::config::{ProviderConfig, ProviderKind};
use crate::record::Usage;

/// The version of the Anthropic messages API this adapter speaks.
const ANTHROPIC_VERSION: &str = "2023-06-01";
/// Longest provider error message kept in a record.
const MAX_ERROR_CHARS: usize = 600;

/// Why a provider gave no answer. The messages end up in `DraftRecord::provider_error`.
#[derive(Debug, Error, Clone, PartialEq)]
pub(crate) enum ProviderError {
    #[error("no API key is configured for {0}")]
    MissingApiKey(ProviderKind),
    #[error("the API key for {0} contains characters that cannot be sent in an HTTP header")]
    InvalidApiKey(ProviderKind),
    #[error("{provider} did not answer within {timeout_ms} ms")]
    Timeout {
        provider: ProviderKind,
        timeout_ms: u64,
    },
    #[error("{provider} could not be reached: {reason}")]
    Unreachable {
        provider: ProviderKind,
        reason: String,
    },
    #[error("{provider} answered HTTP {status}: {message}")]
    Status {
        provider: ProviderKind,
        status: u16,
        message: String,
    },
    #[error("{provider} answered in an unexpected format: {reason}")]
    Malformed {
        provider: ProviderKind,
        reason: String,
    },
    #[error("the HTTP client is unavailable: {0}")]
    Client(String),
    #[error("the dummy provider is not called over HTTP")]
    NotRemote,
}

/// A provider's successful answer.
#[derive(Debug)]
pub(crate) struct Answer {
    /// The reply text (the model's JSON, hopefully).
    pub text: String,
    /// The model the provider says answered.
    pub model: Option<String>,
    pub usage: Usage,
    /// The model stopped at `max_tokens`, so the reply is probably cut off.
    pub truncated: bool,
    /// The model declined to answer, with its explanation.
    pub refusal: Option<String>,
}

/// Sends one drafting request to a real provider (the dummy is refused).
pub(crate) async fn call(
    client: &Client,
    cfg: &ProviderConfig,
    system: &str,
    user: &str,
    temperature: f32,
) -> Result<Answer, ProviderError> {
    if cfg.kind == ProviderKind::Dummy {
        return Err(ProviderError::NotRemote);
    }
    let key = cfg
        .api_key
        .as_deref()
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .ok_or(ProviderError::MissingApiKey(cfg.kind))?;
    let base = cfg.base_url.trim_end_matches('/');
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    match cfg.kind {
        ProviderKind::Dummy => Err(ProviderError::NotRemote),
        ProviderKind::OpenAi | ProviderKind::DeepSeek => {
            headers.insert(
                AUTHORIZATION,
                secret_header(cfg.kind, &format!("Bearer {key}"))?,
            );
            let body = ChatRequest {
                model: &cfg.model,
                temperature: clamp_temperature(temperature, 2.0),
                max_tokens: cfg.max_tokens,
                response_format: ResponseFormat {
                    kind: "json_object",
                },
                messages: [
                    ChatMessage {
                        role: "system",
                        content: system,
                    },
                    ChatMessage {
                        role: "user",
                        content: user,
                    },
                ],
            };
            let url = format!("{base}/chat/completions");
            let (status, response_headers, text) =
                send(client, cfg, key, &url, headers, &body).await?;
            if !status.is_success() {
                return Err(status_error(
                    cfg.kind,
                    key,
                    status,
                    &response_headers,
                    &text,
                ));
            }
            parse_chat_completion(cfg.kind, &text)
        }
        ProviderKind::Anthropic => {
            headers.insert("x-api-key", secret_header(cfg.kind, key)?);
            headers.insert(
                "anthropic-version",
                HeaderValue::from_static(ANTHROPIC_VERSION),
            );
            let body = MessagesRequest {
                model: &cfg.model,
                max_tokens: cfg.max_tokens,
                temperature: clamp_temperature(temperature, 1.0),
                system,
                messages: [ChatMessage {
                    role: "user",
                    content: user,
                }],
            };
            let url = format!("{base}/messages");
            let (status, response_headers, text) =
                send(client, cfg, key, &url, headers, &body).await?;
            if !status.is_success() {
                return Err(status_error(
                    cfg.kind,
                    key,
                    status,
                    &response_headers,
                    &text,
                ));
            }
            parse_anthropic_message(&text)
        }
    }
}

fn secret_header(kind: ProviderKind, value: &str) -> Result<HeaderValue, ProviderError> {
    let mut header =
        HeaderValue::from_str(value).map_err(|_| ProviderError::InvalidApiKey(kind))?;
    header.set_sensitive(true);
    Ok(header)
}

/// Temperatures outside what the provider accepts are clamped; NaN becomes 0.7.
fn clamp_temperature(t: f32, max: f32) -> f32 {
    if t.is_finite() {
        t.clamp(0.0, max)
    } else {
        0.7
    }
}

async fn send<B: Serialize>(
    client: &Client,
    cfg: &ProviderConfig,
    key: &str,
    url: &str,
    headers: HeaderMap,
    body: &B,
) -> Result<(StatusCode, HeaderMap, String), ProviderError> {
    let transport = |e: reqwest::Error| transport_error(cfg.kind, cfg.timeout, key, &e);
    let response = client
        .post(url)
        .headers(headers)
        .timeout(cfg.timeout)
        .json(body)
        .send()
        .await
        .map_err(transport)?;
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await.map_err(transport)?;
    Ok((status, headers, text))
}

fn transport_error(
    provider: ProviderKind,
    timeout: Duration,
    key: &str,
    e: &reqwest::Error,
) -> ProviderError {
    if e.is_timeout() {
        return ProviderError::Timeout {
            provider,
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        };
    }
    // The top-level message is generic ("error sending request"); the cause is in the chain.
    let mut reason = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        reason.push_str(": ");
        reason.push_str(&cause.to_string());
        source = cause.source();
    }
    ProviderError::Unreachable {
        provider,
        reason: scrub(&reason, key),
    }
}

/// One line, bounded, with the key (should a provider echo it) replaced.
fn scrub(message: &str, key: &str) -> String {
    let replaced = if key.is_empty() {
        message.to_string()
    } else {
        message.replace(key, "[redacted]")
    };
    let line = replaced.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.chars().count() <= MAX_ERROR_CHARS {
        line
    } else {
        let mut cut: String = line.chars().take(MAX_ERROR_CHARS).collect();
        cut.push('…');
        cut
    }
}

/// Reads both error shapes: OpenAI/DeepSeek `{"error":{"message","type","param","code"}}`
/// and Anthropic `{"type":"error","error":{"type","message"},"request_id"}`.
fn status_error(
    provider: ProviderKind,
    key: &str,
    status: StatusCode,
    headers: &HeaderMap,
    body: &str,
) -> ProviderError {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_string)
    };
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let error = parsed.as_ref().and_then(|v| v.get("error"));
    let text_of = |v: Option<&Value>| match v {
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s.trim().to_string()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };

    let mut message = text_of(error.and_then(|e| e.get("message")))
        .or_else(|| text_of(error))
        .or_else(|| text_of(parsed.as_ref().and_then(|v| v.get("message"))))
        .or_else(|| {
            let raw = body.trim();
            (!raw.is_empty()).then(|| raw.to_string())
        })
        .unwrap_or_else(|| "(empty response body)".to_string());
    if let Some(reason) = status.canonical_reason() {
        message = format!("{reason}: {message}");
    }

    let mut details = Vec::new();
    if let Some(kind) = text_of(error.and_then(|e| e.get("type"))) {
        details.push(format!("type {kind}"));
    }
    if let Some(code) = text_of(error.and_then(|e| e.get("code"))) {
        details.push(format!("code {code}"));
    }
    if let Some(param) = text_of(error.and_then(|e| e.get("param"))) {
        details.push(format!("param {param}"));
    }
    let request_id = text_of(parsed.as_ref().and_then(|v| v.get("request_id")))
        .or_else(|| header("x-request-id"))
        .or_else(|| header("request-id"));
    if let Some(id) = request_id {
        details.push(format!("request id {id}"));
    }
    if let Some(retry) = header(RETRY_AFTER.as_str()) {
        details.push(format!("retry after {retry} s"));
    }
    if !details.is_empty() {
        message = format!("{message} ({})", details.join(", "));
    }
    ProviderError::Status {
        provider,
        status: status.as_u16(),
        message: scrub(&message, key),
    }
}

#[derive(Serialize)]
struct ChatRequest<'a> {
    model: &'a str,
    temperature: f32,
    max_tokens: u32,
    response_format: ResponseFormat,
    messages: [ChatMessage<'a>; 2],
}

#[derive(Serialize)]
struct ResponseFormat {
    #[serde(rename = "type")]
    kind: &'static str,
}

#[derive(Serialize)]
struct ChatMessage<'a> {
    role: &'static str,
    content: &'a str,
}

#[derive(Serialize)]
struct MessagesRequest<'a> {
    model: &'a str,
    max_tokens: u32,
    temperature: f32,
    system: &'a str,
    messages: [ChatMessage<'a>; 1],
}

#[derive(Deserialize)]
struct ChatCompletion {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    choices: Vec<ChatChoice>,
    #[serde(default)]
    usage: Option<ChatUsage>,
}

#[derive(Deserialize)]
struct ChatChoice {
    message: ChatReply,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct ChatReply {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    refusal: Option<String>,
}

#[derive(Deserialize)]
struct ChatUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

fn parse_chat_completion(provider: ProviderKind, body: &str) -> Result<Answer, ProviderError> {
    let malformed = |reason: String| ProviderError::Malformed { provider, reason };
    let completion: ChatCompletion =
        serde_json::from_str(body).map_err(|e| malformed(format!("not a chat completion: {e}")))?;
    let choice = completion
        .choices
        .into_iter()
        .next()
        .ok_or_else(|| malformed("the completion has no choices".to_string()))?;
    let refusal = choice.message.refusal.filter(|r| !r.trim().is_empty());
    let text = match (choice.message.content, &refusal) {
        (Some(text), _) => text,
        (None, Some(_)) => String::new(),
        (None, None) => return Err(malformed("the first choice has no content".to_string())),
    };
    let usage = completion.usage.map_or_else(Usage::default, |u| Usage {
        input_tokens: u.prompt_tokens,
        output_tokens: u.completion_tokens,
    });
    Ok(Answer {
        text,
        model: completion.model.filter(|m| !m.is_empty()),
        usage,
        truncated: choice.finish_reason.as_deref() == Some("length"),
        refusal,
    })
}

#[derive(Deserialize)]
struct AnthropicMessage {
    #[serde(default)]
    model: Option<String>,
    content: Vec<AnthropicBlock>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    usage: Option<AnthropicUsage>,
}

#[derive(Deserialize)]
struct AnthropicBlock {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Deserialize)]
struct AnthropicUsage {
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
}

fn parse_anthropic_message(body: &str) -> Result<Answer, ProviderError> {
    let provider = ProviderKind::Anthropic;
    let message: AnthropicMessage =
        serde_json::from_str(body).map_err(|e| ProviderError::Malformed {
            provider,
            reason: format!("not a message: {e}"),
        })?;
    let text: String = message
        .content
        .iter()
        .filter(|block| block.kind == "text")
        .filter_map(|block| block.text.as_deref())
        .collect();
    let stop = message.stop_reason.as_deref();
    let refusal = (stop == Some("refusal")).then(|| {
        if text.trim().is_empty() {
            "the model declined to answer".to_string()
        } else {
            text.clone()
        }
    });
    if text.is_empty() && refusal.is_none() {
        return Err(ProviderError::Malformed {
            provider,
            reason: "the message has no text content".to_string(),
        });
    }
    let usage = message.usage.map_or_else(Usage::default, |u| Usage {
        input_tokens: u.input_tokens,
        output_tokens: u.output_tokens,
    });
    Ok(Answer {
        text,
        model: message.model.filter(|m| !m.is_empty()),
        usage,
        truncated: stop == Some("max_tokens"),
        refusal,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temperature_is_clamped_per_provider() {
        assert_eq!(clamp_temperature(1.5, 1.0), 1.0);
        assert_eq!(clamp_temperature(1.5, 2.0), 1.5);
        assert_eq!(clamp_temperature(-1.0, 2.0), 0.0);
        assert_eq!(clamp_temperature(f32::NAN, 2.0), 0.7);
    }

    #[test]
    fn f32_temperatures_serialize_without_float_noise() {
        let body = MessagesRequest {
            model: "m",
            max_tokens: 1,
            temperature: 0.4,
            system: "s",
            messages: [ChatMessage {
                role: "user",
                content: "u",
            }],
        };
        let json = serde_json::to_string(&body).expect("serialize");
        assert!(json.contains("\"temperature\":0.4,"), "{json}");
    }

    #[test]
    fn scrub_removes_the_key_and_bounds_the_message() {
        assert_eq!(
            scrub("bad key sk-123\nreally", "sk-123"),
            "bad key [redacted] really"
        );
        let long = scrub(&"x".repeat(MAX_ERROR_CHARS * 2), "k");
        assert_eq!(long.chars().count(), MAX_ERROR_CHARS + 1);
    }

    #[test]
    fn error_bodies_without_json_still_say_something() {
        let headers = HeaderMap::new();
        let e = status_error(
            ProviderKind::OpenAi,
            "k",
            StatusCode::BAD_GATEWAY,
            &headers,
            "<html>upstream down</html>",
        );
        assert_eq!(
            e.to_string(),
            "openai answered HTTP 502: Bad Gateway: <html>upstream down</html>"
        );
        let e = status_error(
            ProviderKind::Anthropic,
            "k",
            StatusCode::BAD_GATEWAY,
            &headers,
            "",
        );
        assert!(
            e.to_string()
                .ends_with("Bad Gateway: (empty response body)"),
            "{e}"
        );
    }

    #[test]
    fn refusals_are_reported_not_treated_as_text() {
        let body = r#"{"model":"gpt","choices":[{"index":0,"message":{"role":"assistant","content":null,"refusal":"I can't help with that."},"finish_reason":"stop"}]}"#;
        let a = parse_chat_completion(ProviderKind::OpenAi, body).expect("parses");
        assert_eq!(a.refusal.as_deref(), Some("I can't help with that."));
        let body = r#"{"choices":[]}"#;
        assert!(matches!(
            parse_chat_completion(ProviderKind::DeepSeek, body),
            Err(ProviderError::Malformed { .. })
        ));
    }
}
