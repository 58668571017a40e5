//! What goes into a drafting call and what comes out of it. The record is designed to be
//! stored verbatim as an event: it says which provider answered, with what prompt, at what
//! cost, and why a draft is missing, without ever containing an API key.

use domain::template::{LockedSections, TemplateContent, TemplateVariable};
use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};

use crate::brief::Brief;
use crate::config::ProviderKind;

/// What the model is asked to do.
#[derive(Clone, Debug, PartialEq)]
pub enum Task {
    /// Write a new draft from a brief (using the base, if any, as a reference).
    Generate(Brief),
    /// Change the base version as instructed. Needs `DraftRequest::base`.
    Revise { instruction: String },
}

/// One drafting request for one template.
#[derive(Clone, Debug, PartialEq)]
pub struct DraftRequest {
    pub template_key: String,
    pub template_name: String,
    /// `transactional` or `marketing`.
    pub category: String,
    pub task: Task,
    /// The version being revised, or the template's current version when generating a new
    /// draft for an existing template.
    pub base: Option<TemplateContent>,
    /// The declared variables the draft may use; the draft's `variables` are always these.
    pub variables: Vec<TemplateVariable>,
    /// Sections that must appear verbatim, with their markers.
    pub locked_sections: LockedSections,
    /// The tenant's standing style guide, if any.
    pub brand_voice: Option<String>,
    /// Sampling temperature; clamped to what the provider accepts (0..=2 for OpenAI and
    /// DeepSeek, 0..=1 for Anthropic), 0.7 when not finite.
    pub temperature: f32,
}

/// Tokens spent. For the dummy: whitespace-separated words of the prompt and the answer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
}

/// The outcome of one drafting call.
///
/// Serialized with serde as an object with the fields below; `content` is serialized as
/// `{"ok": <TemplateContent>}` when there is a draft and `{"error": "<reason>"}` when
/// there is none.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DraftRecord {
    /// The provider the caller asked for.
    pub requested_provider: ProviderKind,
    /// The provider whose answer is used: the requested one, or the dummy after failover.
    pub provider: ProviderKind,
    /// The model that answered, as the provider reports it (for example
    /// `gpt-4o-mini-2024-07-18`), else the configured model; `dummy-1` after failover.
    pub model: String,
    /// The requested provider failed and the dummy's draft was used instead.
    pub failed_over: bool,
    /// Why the requested provider failed (HTTP status and the provider's own error message,
    /// or a transport error). `None` when it answered, even if the answer was unusable.
    pub provider_error: Option<String>,
    /// Exactly what was sent (for the dummy: what would have been sent), as
    /// `"[system]\n" + system + "\n\n[user]\n" + user`.
    pub prompt: String,
    pub usage: Usage,
    pub latency_ms: u64,
    /// The draft, or why there is none: the provider failed and failover was off, the
    /// model's answer was not the JSON object asked for, or the request itself was unusable
    /// (an invalid brief, a revision without a base).
    #[serde(serialize_with = "serialize_content")]
    pub content: Result<TemplateContent, String>,
}

fn serialize_content<S: Serializer>(
    content: &Result<TemplateContent, String>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let mut map = serializer.serialize_map(Some(1))?;
    match content {
        Ok(content) => map.serialize_entry("ok", content)?,
        Err(reason) => map.serialize_entry("error", reason)?,
    }
    map.end()
}

/// How [`DraftRecord::prompt`] joins the two messages.
pub(crate) fn join_prompt(system: &str, user: &str) -> String {
    format!("[system]\n{system}\n\n[user]\n{user}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(content: Result<TemplateContent, String>) -> DraftRecord {
        DraftRecord {
            requested_provider: ProviderKind::OpenAi,
            provider: ProviderKind::Dummy,
            model: "dummy-1".into(),
            failed_over: true,
            provider_error: Some("openai answered HTTP 500".into()),
            prompt: "p".into(),
            usage: Usage {
                input_tokens: 3,
                output_tokens: 4,
            },
            latency_ms: 5,
            content,
        }
    }

    #[test]
    fn content_serializes_as_ok_or_error() {
        let ok = serde_json::to_value(record(Ok(TemplateContent {
            subject: "Hi".into(),
            ..TemplateContent::default()
        })))
        .expect("serialize");
        assert_eq!(ok["content"]["ok"]["subject"], "Hi");
        assert_eq!(ok["content"].as_object().map(|m| m.len()), Some(1));
        assert_eq!(ok["requested_provider"], "openai");
        assert_eq!(ok["provider"], "dummy");
        assert_eq!(ok["usage"]["output_tokens"], 4);

        let err = serde_json::to_value(record(Err("no draft".into()))).expect("serialize");
        assert_eq!(err["content"], serde_json::json!({"error": "no draft"}));
    }
}
