//! Which model provider to ask and how. Kept free of any environment lookups: the caller
//! (the API's configuration) decides keys and URLs, which also lets tests point a real
//! adapter at a loopback server.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A model provider. Serialized (and parsed) as `dummy`, `openai`, `anthropic`, `deepseek`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// Deterministic, offline drafts built from the brief; the default and the fallback.
    Dummy,
    OpenAi,
    Anthropic,
    DeepSeek,
}

impl ProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Dummy => "dummy",
            ProviderKind::OpenAi => "openai",
            ProviderKind::Anthropic => "anthropic",
            ProviderKind::DeepSeek => "deepseek",
        }
    }

    /// Parses the names [`as_str`](Self::as_str) produces, ignoring ASCII case and
    /// surrounding whitespace.
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        [
            ProviderKind::Dummy,
            ProviderKind::OpenAi,
            ProviderKind::Anthropic,
            ProviderKind::DeepSeek,
        ]
        .into_iter()
        .find(|kind| kind.as_str().eq_ignore_ascii_case(s))
    }
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How to reach one provider. `Debug` redacts the API key.
#[derive(Clone)]
pub struct ProviderConfig {
    pub kind: ProviderKind,
    /// API root without the endpoint, e.g. `https://api.openai.com/v1`; a trailing `/` is
    /// ignored. Unused by the dummy.
    pub base_url: String,
    pub api_key: Option<String>,
    pub model: String,
    /// Limit for the whole exchange: connecting, sending and reading the answer.
    pub timeout: Duration,
    /// Most tokens the model may write.
    pub max_tokens: u32,
}

impl ProviderConfig {
    /// The provider's public endpoint and a sensible default model, no API key, a 60 s
    /// timeout and 4096 output tokens.
    pub fn defaults(kind: ProviderKind) -> ProviderConfig {
        let (base_url, model) = match kind {
            ProviderKind::Dummy => ("", "dummy-1"),
            ProviderKind::OpenAi => ("https://api.openai.com/v1", "gpt-4o-mini"),
            ProviderKind::Anthropic => ("https://api.anthropic.com/v1", "claude-sonnet-4-5"),
            ProviderKind::DeepSeek => ("https://api.deepseek.com", "deepseek-chat"),
        };
        ProviderConfig {
            kind,
            base_url: base_url.to_string(),
            api_key: None,
            model: model.to_string(),
            timeout: Duration::from_secs(60),
            max_tokens: 4096,
        }
    }
}

impl fmt::Debug for ProviderConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProviderConfig")
            .field("kind", &self.kind)
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("model", &self.model)
            .field("timeout", &self.timeout)
            .field("max_tokens", &self.max_tokens)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_through_names_and_serde() {
        for kind in [
            ProviderKind::Dummy,
            ProviderKind::OpenAi,
            ProviderKind::Anthropic,
            ProviderKind::DeepSeek,
        ] {
            assert_eq!(ProviderKind::parse(kind.as_str()), Some(kind));
            let json = serde_json::to_string(&kind).expect("serialize");
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
            let back: ProviderKind = serde_json::from_str(&json).expect("deserialize");
            assert_eq!(back, kind);
        }
        assert_eq!(ProviderKind::parse(" OpenAI "), Some(ProviderKind::OpenAi));
        assert_eq!(ProviderKind::parse("open_ai"), None);
        assert_eq!(ProviderKind::parse(""), None);
    }

    #[test]
    fn defaults_match_the_providers_public_endpoints() {
        let openai = ProviderConfig::defaults(ProviderKind::OpenAi);
        assert_eq!(openai.base_url, "https://api.openai.com/v1");
        assert_eq!(openai.model, "gpt-4o-mini");
        assert_eq!(openai.timeout, Duration::from_secs(60));
        assert_eq!(openai.max_tokens, 4096);
        assert_eq!(openai.api_key, None);
        let anthropic = ProviderConfig::defaults(ProviderKind::Anthropic);
        assert_eq!(anthropic.base_url, "https://api.anthropic.com/v1");
        assert_eq!(anthropic.model, "claude-sonnet-4-5");
        let deepseek = ProviderConfig::defaults(ProviderKind::DeepSeek);
        assert_eq!(deepseek.base_url, "https://api.deepseek.com");
        assert_eq!(deepseek.model, "deepseek-chat");
        assert_eq!(
            ProviderConfig::defaults(ProviderKind::Dummy).model,
            "dummy-1"
        );
    }

    #[test]
    fn debug_redacts_the_api_key() {
        let mut cfg = ProviderConfig::defaults(ProviderKind::OpenAi);
        cfg.api_key = Some("sk-very-secret-1234".into());
        let shown = format!("{cfg:?}");
        assert!(!shown.contains("sk-very-secret-1234"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
        assert!(shown.contains("gpt-4o-mini"), "{shown}");
    }
}
